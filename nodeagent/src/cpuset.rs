//! A cpuset cgroup per pinned task, where the host has the cgroup v1 cpuset
//! controller and the agent is root: `<root>/launcher/<node>.<id>/<job>.<attempt>/<rank>`,
//! where `<id>` is a hash of the agent's state directory: several agents on
//! one host (`launcher up`, parallel test clusters) never share a directory,
//! while a restarted agent finds its own again
//! with the task's CPUs and NUMA nodes. Unlike `sched_setaffinity` alone, the
//! task cannot widen its own mask past it. The task joins its cgroup between
//! fork and exec (it writes `0`, "myself", to the cgroup's `cgroup.procs`,
//! opened beforehand), so nothing it runs ever sits outside.
//!
//! Best effort: when the controller is missing (cgroup v2-only hosts: not yet),
//! or anything here fails, tasks are still pinned by affinity and the agent
//! logs why. The root is injectable so tests can run on a plain directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The agent's part of the cpuset hierarchy.
#[derive(Debug, Clone)]
pub struct Cpusets {
    /// `<cpuset mount>/launcher/<node>.<id>`.
    dir: PathBuf,
}

fn read(p: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(p)?.trim().to_string())
}

/// cgroup v1 cpusets start empty: copy the parent's CPUs and memory nodes.
fn mkdir_inherit(dir: &Path) -> io::Result<()> {
    if !dir.is_dir() {
        fs::create_dir(dir)?;
    }
    let parent = dir.parent().ok_or_else(|| io::Error::other("cgroup dir has no parent"))?;
    for f in ["cpuset.cpus", "cpuset.mems"] {
        // cgroupfs makes these files with the directory; a plain directory
        // standing in for it in tests does not.
        let now = match read(&dir.join(f)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            r => r?,
        };
        if now.is_empty() {
            fs::write(dir.join(f), read(&parent.join(f))?)?;
        }
    }
    Ok(())
}

impl Cpusets {
    /// Use `<mount>/launcher/<node>.<id>` if `mount` is a cpuset v1 hierarchy and we are root.
    pub fn detect(mount: &Path, node: &str, state_dir: &Path) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !mount.join("cpuset.cpus").is_file() {
            return None;
        }
        // FNV-1a of the state directory: stable for this agent, distinct between agents.
        let id = state_dir
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3));
        let dir = mount.join("launcher").join(format!("{node}.{:08x}", id as u32));
        let made = mkdir_inherit(&mount.join("launcher")).and_then(|()| mkdir_inherit(&dir));
        match made {
            Ok(()) => {
                let c = Cpusets { dir };
                c.clear_stale();
                c.clear_dead_siblings();
                Some(c)
            }
            Err(e) => {
                tracing::warn!("cpuset cgroups unavailable under {}: {e}; pinning by affinity only", mount.display());
                None
            }
        }
    }

    /// Create the task's cgroup and open its `cgroup.procs` for the task to join.
    pub fn for_task(&self, job: u64, attempt: u32, rank: u32, cpus: &str, mems: &str) -> io::Result<fs::File> {
        let step = self.dir.join(format!("{job}.{attempt}"));
        if let Err(e) = mkdir_inherit(&step) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            // Another agent starting on this host swept our directory while
            // it held no task (see `clear_dead_siblings`): make it again.
            mkdir_inherit(&self.dir)?;
            mkdir_inherit(&step)?;
        }
        let task = step.join(rank.to_string());
        if !task.is_dir() {
            fs::create_dir(&task)?;
        }
        // Memory nodes first: a cpuset needs both before it may hold a task.
        let mems = if mems.is_empty() { read(&step.join("cpuset.mems"))? } else { mems.to_string() };
        fs::write(task.join("cpuset.mems"), mems)?;
        fs::write(task.join("cpuset.cpus"), cpus)?;
        fs::OpenOptions::new().write(true).create(true).truncate(false).open(task.join("cgroup.procs"))
    }

    /// Remove an attempt's cgroups (its tasks have ended).
    pub fn remove(&self, job: u64, attempt: u32) {
        let step = self.dir.join(format!("{job}.{attempt}"));
        remove_tree(&step);
    }

    /// At shutdown: remove this agent's cgroups, and `launcher/` if no other agent uses it.
    pub fn remove_all(&self) {
        self.clear_stale();
        let _ = fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }

    /// Remove other agents' empty directories: agents on this host that are
    /// gone (`launcher up` and test clusters each use their own, and one
    /// killed outright leaves it behind). Only an empty one goes (rmdir
    /// refuses the rest), so no step or task cgroup of a live agent is ever
    /// touched; a live agent whose directory went makes it again
    /// ([`Cpusets::for_task`]).
    fn clear_dead_siblings(&self) {
        let Some(parent) = self.dir.parent() else { return };
        let Ok(rd) = fs::read_dir(parent) else { return };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p != self.dir && p.is_dir() {
                let _ = fs::remove_dir(&p);
            }
        }
    }

    /// Remove what an earlier agent left (its tasks died with it).
    fn clear_stale(&self) {
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.filter_map(Result::ok) {
                if e.path().is_dir() {
                    remove_tree(&e.path());
                }
            }
        }
    }
}

/// rmdir the child cgroups, then the directory (cgroup files cannot be unlinked).
fn remove_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.filter_map(Result::ok) {
            if e.path().is_dir() {
                let _ = fs::remove_dir(e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a plain directory standing in for the cpuset mount.
    #[test]
    fn a_starting_agent_sweeps_dead_agents_directories_but_not_busy_ones() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIP: Cpusets::detect needs root");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let m = root.path();
        fs::write(m.join("cpuset.cpus"), "0-1").unwrap();
        fs::write(m.join("cpuset.mems"), "0").unwrap();
        let first = Cpusets::detect(m, "node1", Path::new("/state/a")).expect("detect");
        let (dead, busy) = (m.join("launcher/node9.00000000"), m.join("launcher/node8.00000000"));
        fs::create_dir_all(&dead).unwrap();
        fs::create_dir_all(busy.join("13.1/0")).unwrap();
        let second = Cpusets::detect(m, "node2", Path::new("/state/b")).expect("detect");
        assert!(!dead.exists(), "an agent directory with nothing in it is swept");
        assert!(busy.join("13.1/0").is_dir(), "another agent's step cgroups are never touched");
        assert!(second.dir.is_dir());
        // On cgroupfs the first agent's directory, holding no task, went too
        // (here its plain files keep it: remove it as the kernel would).
        fs::remove_dir_all(&first.dir).unwrap();
        let procs = first.for_task(7, 1, 0, "1", "0").expect("for_task after the sweep");
        drop(procs);
        assert_eq!(read(&first.dir.join("7.1/0/cpuset.cpus")).unwrap(), "1");
    }
}
