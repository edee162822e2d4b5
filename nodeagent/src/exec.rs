//! Starting, watching and stopping the tasks of a job on this node.
//!
//! Each task is a process in its own process group (so a signal reaches
//! everything it started), with stdin closed and stdout/stderr piped. Its
//! output is forwarded in order as `Output` messages (and appended to the
//! `--output` file when one was asked for); only after both pipes reach end
//! of file is `TaskExited` sent, so the controller has all of a task's output
//! on disk before it learns that the task ended.

use crate::hostlist;
use launcher_proto::{ExitStatus, FromAgent, JobId, LaunchMsg, Stream};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::UnboundedSender;

/// How far a task got with PMI (direct MPI launch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PmiProgress {
    /// It never spoke PMI (not an MPI program, or PMI not served).
    #[default]
    None,
    /// It spoke PMI (`MPI_Init`) and has not finalized.
    Started,
    /// It sent `cmd=finalize` (`MPI_Finalize`).
    Finalized,
}

/// Where a task stands.
#[derive(Debug, Clone, Default)]
pub struct TaskRun {
    /// Process group id once spawned.
    pub pgid: Option<i32>,
    /// How it ended.
    pub exit: Option<ExitStatus>,
    /// PMI progress.
    pub pmi: PmiProgress,
    /// Killed by `--finalize-grace` (the grace in seconds): report a clean exit.
    pub grace_killed: Option<u32>,
}

/// The local part of one job attempt.
#[derive(Debug, Default)]
pub struct JobRun {
    /// Tasks by global rank.
    pub tasks: BTreeMap<u32, TaskRun>,
    /// Where the job's scratch files live (the script copy, the output spool).
    pub dir: Option<Arc<AttemptDir>>,
    /// The controller (or an abort) asked to stop the tasks.
    pub killing: bool,
    /// What `launcher exec` needs to run commands for this job here.
    pub exec: Option<crate::remote::JobExec>,
    /// PUs its tasks are bound to (other steps avoid them).
    pub cpus: std::collections::BTreeSet<u32>,
    /// GPUs its tasks were given (never shared with another step).
    pub gpus: std::collections::BTreeSet<u32>,
}

/// Every job attempt this agent holds, keyed by (job, attempt).
pub type JobTable = Arc<Mutex<BTreeMap<(JobId, u32), JobRun>>>;

/// Static facts about this node that go into every task's environment.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// The node's name in the cluster.
    pub name: String,
    /// Scratch directory for job files.
    pub state_dir: PathBuf,
    /// Whose identity tasks run under.
    pub users: crate::users::Policy,
    /// PMI steps running here.
    pub pmi: crate::pmi::driver::Routes,
    /// `launcher exec` requests relayed for local callers.
    pub exec: crate::remote::Pending,
    /// The node's hardware, for binding plans.
    pub topo: Arc<crate::topo::Topology>,
    /// Per-task cpuset cgroups, where the host has them.
    pub cpusets: Option<crate::cpuset::Cpusets>,
    /// The `launcher exec` socket, `rsh` script and shared hostfiles.
    pub remote: crate::remote::Remote,
}

/// Expand an output pattern: `%j` (`%J`) job, `%t` rank, `%N` node, `%n` node rank, `%x` name, `%u` user, `%A` array id, `%a` array index, `%%`.
pub fn expand_pattern(p: &str, job: JobId, rank: u32, node: &str, node_rank: u32, name: &str, user: &str) -> String {
    let mut out = String::with_capacity(p.len() + 8);
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('j') | Some('J') => out += &job.to_string(),
            // Slurm's array spellings: the array's id, and the child's index
            // (nothing for a job that is not an array child).
            Some('A') => out += &job.parent().to_string(),
            Some('a') => {
                if let Some(i) = job.index() {
                    out += &i.to_string();
                }
            }
            Some('u') => out += user,
            Some('t') => out += &rank.to_string(),
            Some('N') => out += node,
            Some('n') => out += &node_rank.to_string(),
            Some('x') => out += name,
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The environment every task of `msg` gets, for global rank `rank` / local rank `local`.
pub fn task_env(msg: &LaunchMsg, facts: &NodeFacts, rank: u32, local: u32) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(64);
    put_task_env(msg, facts, rank, local, |k, v| out.push((k.to_string(), v.to_string())));
    out
}

/// [`task_env`], handed to `put` one variable at a time, in order (the
/// user's `--env` last, so it can override ours: MASTER_PORT, say).
fn put_task_env(msg: &LaunchMsg, facts: &NodeFacts, rank: u32, local: u32, mut put: impl FnMut(&str, &str)) {
    let spec = &msg.spec;
    let job = msg.job.to_string();
    let world = spec.tasks.to_string();
    let nnodes = msg.nodelist.len().to_string();
    let node_rank = msg.node_rank.to_string();
    let local_size = msg.tasks.len().to_string();
    let attempt = msg.attempt.to_string();
    let rank_s = rank.to_string();
    let local_s = local.to_string();
    let cpt = spec.cpus_per_task.to_string();
    let master_port = (29500 + msg.job.0 % 2000).to_string();
    let nodelist_csv = msg.nodelist.join(",");
    let compressed = hostlist::compress(&msg.nodelist);
    let main_addr = msg.node_addrs.first().map(String::as_str).unwrap_or_default();
    let tasks_per_node = msg.tasks_per_node.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    put("LAUNCHER_JOB_ID", &job);
    put("LAUNCHER_JOB_NAME", &spec.name);
    put("LAUNCHER_JOB_ATTEMPT", &attempt);
    put("LAUNCHER_RANK", &rank_s);
    put("LAUNCHER_LOCAL_RANK", &local_s);
    put("LAUNCHER_LOCAL_SIZE", &local_size);
    put("LAUNCHER_NODE_RANK", &node_rank);
    put("LAUNCHER_NNODES", &nnodes);
    put("LAUNCHER_WORLD_SIZE", &world);
    put("LAUNCHER_NODELIST", &nodelist_csv);
    put("LAUNCHER_NODENAME", &facts.name);
    put("LAUNCHER_CPUS_PER_TASK", &cpt);
    put("AWS_BATCH_JOB_ID", &job);
    put("AWS_BATCH_JOB_ATTEMPT", &attempt);
    put("AWS_BATCH_JQ_NAME", &spec.queue);
    put("AWS_BATCH_JOB_NODE_INDEX", &node_rank);
    put("AWS_BATCH_JOB_NUM_NODES", &nnodes);
    put("AWS_BATCH_JOB_MAIN_NODE_INDEX", "0");
    put("SLURM_JOB_ID", &job);
    put("SLURM_JOBID", &job);
    put("SLURM_JOB_NAME", &spec.name);
    put("SLURM_PROCID", &rank_s);
    put("SLURM_LOCALID", &local_s);
    put("SLURM_NODEID", &node_rank);
    put("SLURM_NTASKS", &world);
    put("SLURM_NPROCS", &world);
    put("SLURM_NNODES", &nnodes);
    put("SLURM_JOB_NUM_NODES", &nnodes);
    put("SLURM_JOB_NODELIST", &compressed);
    put("SLURM_NODELIST", &compressed);
    put("SLURM_TASKS_PER_NODE", &tasks_per_node);
    put("SLURM_NTASKS_PER_NODE", &local_size);
    put("SLURM_CPUS_PER_TASK", &cpt);
    put("SLURM_CPUS_ON_NODE", &(msg.tasks.len() as u64 * u64::from(spec.cpus_per_task)).to_string());
    put("SLURM_JOB_PARTITION", &spec.queue);
    put("SLURM_JOB_USER", &spec.user);
    put("SLURM_SUBMIT_DIR", &spec.cwd);
    put("SLURM_RESTART_COUNT", &msg.attempt.saturating_sub(1).to_string());
    put("MASTER_ADDR", main_addr);
    put("MASTER_PORT", &master_port);
    put("RANK", &rank_s);
    put("WORLD_SIZE", &world);
    put("LOCAL_RANK", &local_s);
    put("LOCAL_WORLD_SIZE", &local_size);
    put("NODE_RANK", &node_rank);
    if msg.node_rank != 0 {
        put("AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS", main_addr);
    }
    // Array children: `P:i` carries the index.
    if let Some(index) = msg.job.index() {
        let (parent, index) = (msg.job.parent().to_string(), index.to_string());
        put("LAUNCHER_ARRAY_JOB_ID", &parent);
        put("LAUNCHER_ARRAY_INDEX", &index);
        put("AWS_BATCH_JOB_ARRAY_INDEX", &index);
        put("SLURM_ARRAY_JOB_ID", &parent);
        put("SLURM_ARRAY_TASK_ID", &index);
        if let Some(a) = &msg.array {
            let size = a.len().to_string();
            put("LAUNCHER_ARRAY_SIZE", &size);
            put("SLURM_ARRAY_TASK_COUNT", &size);
            put("SLURM_ARRAY_TASK_MIN", &a.start.to_string());
            put("SLURM_ARRAY_TASK_MAX", &a.index_at(a.len().saturating_sub(1)).to_string());
            put("SLURM_ARRAY_TASK_STEP", &a.step.to_string());
        }
    }
    for (k, v) in &spec.env {
        put(k, v);
    }
}

/// File name of the PMI-1 client library (the `launcher-pmi` crate).
pub const PMI_LIBRARY_NAME: &str = "liblauncher_pmi.so";

/// The PMI-1 client library handed to Open MPI ranks, found once per agent:
/// `$LAUNCHER_PMI_LIBRARY`, else next to this executable (also in its `deps/`,
/// where `cargo test` leaves it), else in `<exe dir>/../lib/launcher/`.
pub fn pmi_library() -> Option<PathBuf> {
    static LIB: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    LIB.get_or_init(|| {
        let found =
            find_pmi_library(std::env::var_os("LAUNCHER_PMI_LIBRARY").map(PathBuf::from), std::env::current_exe().ok());
        match &found {
            Some(p) => tracing::info!("PMI-1 client library for Open MPI: {}", p.display()),
            None => tracing::info!(
                "no {PMI_LIBRARY_NAME} found (set LAUNCHER_PMI_LIBRARY): Open MPI ranks cannot be launched directly"
            ),
        }
        found
    })
    .clone()
}

/// [`pmi_library`]'s search, given `$LAUNCHER_PMI_LIBRARY` and the executable's path.
pub fn find_pmi_library(explicit: Option<PathBuf>, exe: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        if p.is_file() {
            return std::fs::canonicalize(&p).ok().or(Some(p));
        }
        tracing::warn!("LAUNCHER_PMI_LIBRARY={} is not a file; looking next to the agent instead", p.display());
    }
    let dir = exe?.parent()?.to_path_buf();
    [
        dir.join(PMI_LIBRARY_NAME),
        dir.join("deps").join(PMI_LIBRARY_NAME),
        dir.join("../lib/launcher").join(PMI_LIBRARY_NAME),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .and_then(|p| std::fs::canonicalize(&p).ok())
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

/// Start every local task of `msg`. Returns once all are spawned (or failed to
/// spawn); exits arrive later through `out`.
pub fn launch(msg: LaunchMsg, facts: &NodeFacts, table: &JobTable, out: &UnboundedSender<FromAgent>) {
    let msg = Arc::new(msg);
    let key = (msg.job, msg.attempt);
    {
        let mut t = table.lock().expect("job table lock");
        if t.contains_key(&key) {
            // A resend after a reconnect: we already have it.
            let _ = out.send(FromAgent::Started { job: msg.job, attempt: msg.attempt });
            return;
        }
        let mut run = JobRun::default();
        for task in &msg.tasks {
            run.tasks.insert(task.rank, TaskRun::default());
        }
        t.insert(key, run);
    }
    let spec = &msg.spec;
    // Per-attempt directory: the script copy and the output spool, made when
    // the first of them is written (a command with no output needs none).
    let dir = Arc::new(AttemptDir { path: attempt_dir(facts, msg.job, msg.attempt), made: Default::default() });
    table.lock().expect("job table lock").get_mut(&key).expect("inserted above").dir = Some(dir.clone());
    let account = facts.users.account_for(&spec.user, &facts.name);
    let prepared = account.clone().and_then(|acct| program_for(spec, &dir, acct.as_ref()));
    let account = account.unwrap_or(None);
    let (program, mut setup_error) = match prepared {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e)),
    };
    // Direct MPI launch: a PMI-1 server for the ranks (research/mpi-wiring.md).
    let serve_pmi = match spec.mpi {
        launcher_proto::MpiMode::Pmi1 => true,
        launcher_proto::MpiMode::None => false,
        launcher_proto::MpiMode::Auto => spec.tasks > 1,
    };
    let mut pmi: Option<(crate::pmi::Engine, Vec<crate::pmi::driver::Pair>)> = None;
    let mut pmi_port: Option<(std::net::TcpListener, String)> = None;
    if serve_pmi && setup_error.is_none() {
        // PMI_PORT too, for ranks started by wrappers that close inherited descriptors.
        let host = msg.node_addrs.get(msg.node_rank as usize).cloned().unwrap_or_default();
        match crate::pmi::driver::port_listener(&host) {
            Ok(l) => pmi_port = Some(l),
            Err(e) => tracing::warn!(job = %msg.job, "no PMI_PORT for this step (PMI_FD still works): {e}"),
        }
        let info = crate::pmi::JobInfo {
            kvsname: format!("kvs_{}_{}", msg.job, msg.attempt),
            size: spec.tasks,
            universe_size: spec.tasks,
            appnum: 0,
            tasks_per_node: msg.tasks_per_node.clone(),
            local_ranks: msg.tasks.iter().map(|t| t.rank).collect(),
        };
        let ranks: Vec<u32> = msg.tasks.iter().map(|t| t.rank).collect();
        match crate::pmi::Engine::new(info)
            .map_err(|e| e.to_string())
            .and_then(|engine| crate::pmi::driver::socketpairs(&ranks).map(|p| (engine, p)).map_err(|e| e.to_string()))
        {
            Ok(x) => pmi = Some(x),
            Err(e) => setup_error = Some(format!("cannot set up the PMI server: {e}")),
        }
    }
    let cwd = if spec.cwd.is_empty() { PathBuf::from("/") } else { PathBuf::from(&spec.cwd) };
    if setup_error.is_none() && !cwd.is_dir() {
        setup_error = Some(format!("working directory {} does not exist on node {}", cwd.display(), facts.name));
    }
    // mpirun inside the allocation: hostfiles, and `launcher exec` for its remote starts.
    let mut mpirun_vars = None;
    if setup_error.is_none() {
        match crate::remote::prepare(&msg, facts, account.as_ref(), &cwd) {
            Ok(je) => {
                mpirun_vars = Some(crate::remote::task_vars(&je, facts));
                if let Some(run) = table.lock().expect("job table lock").get_mut(&key) {
                    run.exec = Some(je);
                }
            }
            Err(e) => tracing::warn!(job = %msg.job, "no hostfiles or launcher exec for this job: {e}"),
        }
    }
    // Placement: a pure plan from the topology, then applied per task below.
    let plans = match plan_step(&msg, facts, table, key) {
        Ok(p) => p,
        Err(e) => {
            setup_error.get_or_insert(format!("cannot place the tasks on node {}: {e}", facts.name));
            Vec::new()
        }
    };
    if setup_error.is_none() {
        let tasks = msg
            .tasks
            .iter()
            .zip(&plans)
            .map(|(t, p)| launcher_proto::TaskBinding {
                rank: t.rank,
                node: facts.name.clone(),
                cpus: p.cpus.as_deref().map(crate::topo::cpulist).unwrap_or_default(),
                numa: p.numa.clone(),
                gpus: p.gpus.clone(),
                nic: p.nic.clone(),
            })
            .collect();
        let _ = out.send(FromAgent::Bindings { job: msg.job, attempt: msg.attempt, tasks });
    }

    for (i, task) in msg.tasks.iter().enumerate() {
        let rank = task.rank;
        let fail = |e: String| {
            record_exit(table, key, rank, ExitStatus::LaunchFailed(e.clone()));
            let _ = out.send(FromAgent::TaskExited {
                job: msg.job,
                attempt: msg.attempt,
                rank,
                status: ExitStatus::LaunchFailed(e),
            });
        };
        if let Some(e) = &setup_error {
            fail(e.clone());
            continue;
        }
        let (prog, args) = program.clone().expect("program set when no setup error");
        let placed = &plans[i];
        // The environment: the agent's, then ours, the plan's hints, the
        // user's --env, the account, PMI and mpirun variables; later wins.
        let mut env = Env::inherited();
        put_task_env(&msg, facts, rank, task.local_rank, |k, v| env.set(k, v));
        // The plan's hints, where the user's --env (set last above) has no word.
        let user_sets = |k: &str| spec.env.iter().any(|(name, _)| name == k);
        env.extend(placed.env.iter().filter(|(k, _)| !user_sets(k)).cloned());
        if let Some(a) = &account {
            env.extend([("USER", &a.name), ("LOGNAME", &a.name), ("HOME", &a.home), ("SHELL", &a.shell)]);
        }
        let pmi_fd: Option<i32> = pmi
            .as_ref()
            .and_then(|(_, pairs)| pairs.iter().find(|(r, ..)| *r == rank))
            .map(|(_, theirs, _)| std::os::fd::AsRawFd::as_raw_fd(theirs));
        if let Some(fd) = pmi_fd {
            env.extend([
                ("PMI_FD", fd.to_string()),
                ("PMI_RANK", rank.to_string()),
                ("PMI_SIZE", spec.tasks.to_string()),
                ("PMI_JOBID", format!("kvs_{}_{}", msg.job, msg.attempt)),
            ]);
            // Open MPI 4.1 has no PMI-1 client of its own: with FLUX_JOB_ID set,
            // its pmix/flux component loads ours (docs/mpi.md). MPICH ignores both.
            // The user's --env wins, as for every variable.
            if let Some(lib) = pmi_library() {
                if !user_sets("FLUX_JOB_ID") {
                    env.set("FLUX_JOB_ID", msg.job.0.to_string());
                }
                if !user_sets("FLUX_PMI_LIBRARY_PATH") {
                    env.set("FLUX_PMI_LIBRARY_PATH", &lib);
                }
            }
            // MPICH's client uses PMI_FD when set, else connects to PMI_PORT and identifies with PMI_ID.
            if let Some((_, port)) = &pmi_port {
                env.extend([("PMI_PORT", port.clone()), ("PMI_ID", rank.to_string())]);
            }
        }
        if let Some(vars) = &mpirun_vars {
            env.extend(vars.iter().map(|(k, v)| (*k, v)));
        }
        let creds = account.as_ref().map(|a| crate::spawn::Creds { uid: a.uid, gid: a.gid, groups: a.groups.clone() });
        let affinity = placed.cpus.as_deref().map(cpu_set);
        // A cpuset cgroup for a pinned task, where the host has them (kept open until spawned).
        let cgroup = match (&facts.cpusets, &placed.cpus) {
            (Some(cs), Some(cpus)) => {
                let mems = crate::topo::cpulist(&placed.numa);
                match cs.for_task(msg.job.0, msg.attempt, rank, &crate::topo::cpulist(cpus), &mems) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        tracing::warn!(job = %msg.job, rank, "no cpuset cgroup for the task, pinning by affinity only: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let files =
            match crate::users::with_fs_identity(account.as_ref(), || open_output_files(&msg, facts, rank, &cwd)) {
                Ok(f) => f,
                Err(e) => {
                    fail(e);
                    continue;
                }
            };
        match start_task(&prog, &args, env, &cwd, creds.as_ref(), cgroup.as_ref(), affinity.as_ref(), pmi_fd) {
            Ok((child, stdout, stderr)) => {
                if let Some(t) =
                    table.lock().expect("job table lock").get_mut(&key).and_then(|j| j.tasks.get_mut(&rank))
                {
                    t.pgid = Some(child.id());
                }
                let spool = Spool { dir: dir.clone(), job: msg.job, attempt: msg.attempt, rank };
                tokio::spawn(watch_task(
                    child,
                    [stdout, stderr],
                    spool,
                    msg.attempt,
                    files,
                    table.clone(),
                    out.clone(),
                ));
            }
            Err(e) => fail(format!("cannot start {} on node {}: {e}", prog.display(), facts.name)),
        }
    }
    if let Some((engine, pairs)) = pmi {
        // Our copies of the tasks' ends close here; the tasks keep theirs.
        let conns = pairs.into_iter().map(|(r, _theirs, ours)| (r, ours)).collect();
        crate::pmi::driver::spawn(
            engine,
            conns,
            pmi_port.map(|(l, _)| l),
            crate::pmi::driver::StepCtx {
                job: msg.job,
                attempt: msg.attempt,
                single_node: msg.nodelist.len() == 1,
                out: out.clone(),
                routes: facts.pmi.clone(),
                table: table.clone(),
            },
        );
    }
    let _ = out.send(FromAgent::Started { job: msg.job, attempt: msg.attempt });
}

/// A task's environment under construction: later values replace earlier
/// ones, and a variable keeps the place where it first appeared.
///
/// Built for thousands of starts a second: the agent's own variables are
/// prepared once (as `K=V` strings execve can take as they are), a task's own
/// go back to back into one buffer, and the index is a small open-addressing
/// table, so building one costs a few allocations, not several per variable.
pub(crate) struct Env {
    base: &'static BaseEnv,
    /// `K=V\0` of every variable set here (a replaced one stays, unused).
    buf: Vec<u8>,
    /// Each variable, in order of first appearance.
    vars: Vec<Var>,
    /// Open addressing on the key's hash: a position in `vars` plus one, 0 for
    /// empty. Its length is a power of two, at least twice `vars`'.
    slots: Vec<u32>,
}

#[derive(Clone, Copy)]
enum Var {
    /// The agent's own variable number `i`.
    Inherited(u32),
    /// `buf[at..at + len]` holds `K=V\0`, with a `key`-byte key.
    Own { at: u32, key: u32, len: u32 },
}

/// The agent's own environment, read once.
pub(crate) struct BaseEnv {
    /// `K=V`, each.
    entries: Vec<std::ffi::CString>,
    /// Key length of each entry.
    keys: Vec<u32>,
    vars: Vec<Var>,
    slots: Vec<u32>,
}

/// FNV-1a: short keys, no hostile input worth a keyed hash (a task only
/// slows its own start), and far cheaper than SipHash for ~100 keys a task.
fn key_hash(k: &[u8]) -> usize {
    crate::remote::fnv1a(k) as usize
}

impl Env {
    /// The agent's own environment to start from.
    pub(crate) fn inherited() -> Env {
        static BASE: std::sync::OnceLock<BaseEnv> = std::sync::OnceLock::new();
        let base = BASE.get_or_init(|| {
            let mut b = Env::empty();
            for (k, v) in std::env::vars_os() {
                b.set(&k, &v);
            }
            // The same variables in the same places: only where they live changes.
            let entries = b
                .vars
                .iter()
                // environ strings have no NUL inside: the fallback is never taken.
                .map(|v| std::ffi::CString::from_vec_with_nul(b.entry(*v).to_vec()).unwrap_or_default())
                .collect();
            let keys = b.vars.iter().map(|v| b.key_of(*v).len() as u32).collect();
            let vars = (0..b.vars.len() as u32).map(Var::Inherited).collect();
            BaseEnv { entries, keys, vars, slots: b.slots }
        });
        Env { base, buf: Vec::with_capacity(4096), vars: base.vars.clone(), slots: base.slots.clone() }
    }

    /// An empty environment.
    fn empty() -> Env {
        static EMPTY: BaseEnv = BaseEnv { entries: Vec::new(), keys: Vec::new(), vars: Vec::new(), slots: Vec::new() };
        Env { base: &EMPTY, buf: Vec::new(), vars: Vec::new(), slots: vec![0; 16] }
    }

    /// `K=V\0` of a variable.
    fn entry(&self, v: Var) -> &[u8] {
        match v {
            Var::Inherited(i) => self.base.entries[i as usize].as_bytes_with_nul(),
            Var::Own { at, len, .. } => &self.buf[at as usize..(at + len) as usize],
        }
    }

    fn key_of(&self, v: Var) -> &[u8] {
        match v {
            Var::Inherited(i) => &self.base.entries[i as usize].as_bytes()[..self.base.keys[i as usize] as usize],
            Var::Own { at, key, .. } => &self.buf[at as usize..(at + key) as usize],
        }
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn slot_for(&self, key: &[u8]) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = key_hash(key) & mask;
        loop {
            match self.slots[i] {
                0 => return i,
                n if self.key_of(self.vars[n as usize - 1]) == key => return i,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Put `var` under `key`: in place if the key is there, else at the end.
    fn insert_var(&mut self, key: &[u8], var: Var) {
        let i = self.slot_for(key);
        match self.slots[i] {
            0 => {
                self.vars.push(var);
                self.slots[i] = self.vars.len() as u32;
                if self.vars.len() * 2 > self.slots.len() {
                    self.grow();
                }
            }
            n => self.vars[n as usize - 1] = var,
        }
    }

    fn grow(&mut self) {
        let mut slots = vec![0u32; self.slots.len() * 2];
        let mask = slots.len() - 1;
        for (n, v) in self.vars.iter().enumerate() {
            let mut i = key_hash(self.key_of(*v)) & mask;
            while slots[i] != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = n as u32 + 1;
        }
        self.slots = slots;
    }

    fn set(&mut self, k: impl AsRef<std::ffi::OsStr>, v: impl AsRef<std::ffi::OsStr>) {
        use std::os::unix::ffi::OsStrExt;
        let (k, v) = (k.as_ref().as_bytes(), v.as_ref().as_bytes());
        let at = self.buf.len();
        self.buf.extend_from_slice(k);
        self.buf.push(b'=');
        self.buf.extend_from_slice(v);
        self.buf.push(0);
        let var = Var::Own { at: at as u32, key: k.len() as u32, len: (self.buf.len() - at) as u32 };
        self.insert_var(k, var);
    }

    pub(crate) fn extend<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        &mut self,
        it: impl IntoIterator<Item = (K, V)>,
    ) {
        for (k, v) in it {
            self.set(k, v);
        }
    }

    fn get(&self, k: &str) -> Option<&std::ffi::OsStr> {
        use std::os::unix::ffi::OsStrExt;
        match self.slots[self.slot_for(k.as_bytes())] {
            0 => None,
            n => {
                let e = self.entry(self.vars[n as usize - 1]);
                // After `K=`, before the NUL.
                Some(std::ffi::OsStr::from_bytes(&e[k.len() + 1..e.len() - 1]))
            }
        }
    }

    /// `K=V` strings for execve, borrowed from `self` (a variable with a NUL
    /// byte cannot be passed and is left out).
    fn envp(&self) -> Vec<&std::ffi::CStr> {
        self.vars.iter().filter_map(|v| std::ffi::CStr::from_bytes_with_nul(self.entry(*v)).ok()).collect()
    }
}

/// Where `execvp` would find `prog` on `path`: a name with a slash is used as
/// it is (relative to the task's directory); a bare name is looked up in each
/// `PATH` directory for an executable file.
fn resolve_program(prog: &Path, path: Option<&std::ffi::OsStr>) -> std::io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    if prog.as_os_str().as_bytes().contains(&b'/') {
        return Ok(prog.to_path_buf());
    }
    if prog.as_os_str().is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "empty program name"));
    }
    let path = path.unwrap_or(std::ffi::OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in path.as_bytes().split(|&b| b == b':') {
        let dir = if dir.is_empty() { Path::new(".") } else { Path::new(std::ffi::OsStr::from_bytes(dir)) };
        let candidate = dir.join(prog);
        if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
            return Ok(candidate);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("not found in PATH ({})", path.to_string_lossy())))
}

/// [`resolve_program`], remembered for a second per (PATH, name): an array
/// starting thousands of `true` walks PATH once a second, not once a task. A
/// program installed earlier on PATH is seen within that second.
fn resolve_cached(prog: &Path, path: Option<&std::ffi::OsStr>) -> std::io::Result<PathBuf> {
    type Cache = std::collections::HashMap<(std::ffi::OsString, PathBuf), (PathBuf, std::time::Instant)>;
    static CACHE: std::sync::Mutex<Option<Cache>> = std::sync::Mutex::new(None);
    use std::os::unix::ffi::OsStrExt;
    if prog.as_os_str().as_bytes().contains(&b'/') {
        return Ok(prog.to_path_buf());
    }
    let key = (path.unwrap_or_default().to_os_string(), prog.to_path_buf());
    let now = std::time::Instant::now();
    if let Some((p, at)) = CACHE.lock().expect("program cache lock").as_ref().and_then(|c| c.get(&key)) {
        if now.duration_since(*at) < Duration::from_secs(1) {
            return Ok(p.clone());
        }
    }
    let found = resolve_program(prog, path)?;
    let mut cache = CACHE.lock().expect("program cache lock");
    let c = cache.get_or_insert_with(Default::default);
    if c.len() >= 1024 {
        c.clear();
    }
    c.insert(key, (found.clone(), now));
    Ok(found)
}

/// Start one task: its own process group, stdin from /dev/null, stdout and
/// stderr on pipes (returned, for the pumps), pinned, as the account, in `cwd`,
/// with the PMI descriptor as the one it inherits, and killed if the agent dies.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_task(
    prog: &Path,
    args: &[String],
    env: Env,
    cwd: &Path,
    creds: Option<&crate::spawn::Creds>,
    cgroup: Option<&std::fs::File>,
    affinity: Option<&libc::cpu_set_t>,
    keep_fd: Option<i32>,
) -> std::io::Result<(crate::spawn::Child, tokio::net::unix::pipe::Receiver, tokio::net::unix::pipe::Receiver)> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let nul = |e: std::ffi::NulError| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let program = CString::new(resolve_cached(prog, env.get("PATH"))?.as_os_str().as_bytes()).map_err(nul)?;
    let mut argv = vec![CString::new(prog.as_os_str().as_bytes()).map_err(nul)?];
    for a in args {
        argv.push(CString::new(a.as_bytes()).map_err(nul)?);
    }
    let envp = env.envp();
    let cwd = CString::new(cwd.as_os_str().as_bytes()).map_err(nul)?;
    // Our read end non-blocking for tokio, the task's write end blocking:
    // one fcntl, where tokio's checked conversion costs three syscalls.
    let pipe = || -> std::io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both are fresh descriptors owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETFL on a descriptor we own; the read end keeps O_NONBLOCK (its own file description).
        if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((r, w))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut spec = crate::spawn::SpawnSpec::new(&program, &argv, &envp);
    spec.cwd = Some(&cwd);
    spec.stdout = Some(out_w.as_raw_fd());
    spec.stderr = Some(err_w.as_raw_fd());
    spec.new_pgroup = true;
    spec.creds = creds;
    spec.cgroup_procs_fd = cgroup.map(|f| f.as_raw_fd());
    spec.affinity = affinity;
    spec.keep_fd = keep_fd;
    // The launching thread is the agent's main thread, which lives as long as the agent.
    spec.pdeathsig = Some(libc::SIGKILL);
    let child = crate::spawn::spawn(&spec)?;
    drop((out_w, err_w));
    // Read ends of fresh pipes, non-blocking: what the unchecked conversion needs.
    let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(out_r)?;
    let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(err_r)?;
    Ok((child, stdout, stderr))
}

/// Plan this attempt's local tasks, avoiding CPUs and GPUs that other held
/// attempts' live tasks use, and record what it takes.
fn plan_step(
    msg: &LaunchMsg,
    facts: &NodeFacts,
    table: &JobTable,
    key: (JobId, u32),
) -> Result<Vec<crate::bind::TaskPlan>, crate::bind::PlanError> {
    let mut t = table.lock().expect("job table lock");
    let (mut busy_cpus, mut busy_gpus) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for (k, run) in t.iter() {
        if *k != key && run.tasks.values().any(|x| x.exit.is_none()) {
            busy_cpus.extend(run.cpus.iter().copied());
            busy_gpus.extend(run.gpus.iter().copied());
        }
    }
    let req = crate::bind::StepRequest {
        tasks: msg.tasks.len() as u32,
        cpus_per_task: msg.spec.cpus_per_task,
        bind: &msg.spec.bind,
        busy_cpus: &busy_cpus,
        busy_gpus: &busy_gpus,
    };
    let plans = crate::bind::plan(&facts.topo, &req)?;
    if let Some(run) = t.get_mut(&key) {
        for p in &plans {
            run.cpus.extend(p.cpus.iter().flatten().copied());
            run.gpus.extend(p.gpus.iter().copied());
        }
    }
    Ok(plans)
}

/// A kernel CPU mask of these CPUs (ids past CPU_SETSIZE are dropped: the planner only
/// hands out CPUs the topology has, and no machine here has more than 1024).
fn cpu_set(cpus: &[u32]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bitmask; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if (c as usize) < libc::CPU_SETSIZE as usize {
            // SAFETY: c is below CPU_SETSIZE, so the bit is inside `set`.
            unsafe { libc::CPU_SET(c as usize, &mut set) };
        }
    }
    set
}

/// What to exec: the command, or the job script (copied at submit time and
/// written out once per attempt; run by its shebang, else by /bin/sh).
fn program_for(
    spec: &launcher_proto::JobSpec,
    dir: &AttemptDir,
    acct: Option<&crate::users::Account>,
) -> Result<(PathBuf, Vec<String>), String> {
    let Some(script) = &spec.script else {
        let (first, rest) = spec.command.split_first().ok_or("nothing to run")?;
        return Ok((PathBuf::from(first), rest.to_vec()));
    };
    use std::os::unix::fs::PermissionsExt;
    dir.make().map_err(|e| format!("cannot create {}: {e}", dir.path.display()))?;
    let path = dir.path.join("script");
    std::fs::write(&path, script)
        .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)))
        .and_then(|()| match acct {
            // The task's user must be able to run it; the directory only lets
            // it through (0711), without listing the spool beside it.
            Some(a) => std::os::unix::fs::chown(&path, Some(a.uid), Some(a.gid)),
            None => Ok(()),
        })
        .map_err(|e| format!("cannot write the job script under {}: {e}", dir.path.display()))?;
    if script.starts_with("#!") {
        Ok((path, spec.command.clone()))
    } else {
        let mut args = vec![path.to_string_lossy().into_owned()];
        args.extend(spec.command.iter().cloned());
        Ok((PathBuf::from("/bin/sh"), args))
    }
}

type OutFiles = (Option<std::fs::File>, Option<std::fs::File>);

fn open_output_files(msg: &LaunchMsg, facts: &NodeFacts, rank: u32, cwd: &Path) -> Result<OutFiles, String> {
    let spec = &msg.spec;
    let resolve = |p: &str| {
        let e = expand_pattern(p, msg.job, rank, &facts.name, msg.node_rank, &spec.name, &spec.user);
        let path = Path::new(&e);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            cwd.join(path)
        }
    };
    let open = |p: PathBuf| open_append(&p).map_err(|e| format!("cannot open output file {}: {e}", p.display()));
    let stdout = spec.output.as_deref().map(|p| open(resolve(p))).transpose()?;
    let stderr = match (&spec.error, &spec.output) {
        (Some(e), _) => Some(open(resolve(e))?),
        (None, Some(o)) => Some(open(resolve(o))?),
        (None, None) => None,
    };
    Ok((stdout, stderr))
}

fn record_exit(table: &JobTable, key: (JobId, u32), rank: u32, status: ExitStatus) {
    if let Some(t) = table.lock().expect("job table lock").get_mut(&key).and_then(|j| j.tasks.get_mut(&rank)) {
        t.exit = Some(status);
    }
}

/// An attempt's scratch directory, made when something is first written
/// there: most array tasks never need one, and then cost no mkdir and no
/// removal.
#[derive(Debug)]
pub struct AttemptDir {
    /// `<state>/jobs/<job>.<attempt>`.
    pub path: PathBuf,
    /// Made (by us, in this agent's life).
    made: std::sync::atomic::AtomicBool,
}

impl AttemptDir {
    /// Create it if it is not there yet: traversable (a task's user runs its
    /// script from here), not listable.
    fn make(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::Ordering;
        if self.made.load(Ordering::Acquire) {
            return Ok(());
        }
        match std::fs::DirBuilder::new().mode(0o711).create(&self.path) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                // The mode given to mkdir is masked by the umask; this one is not.
                std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o711))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        self.made.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether anything was written here.
    fn is_made(&self) -> bool {
        self.made.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The per-attempt scratch directory.
pub fn attempt_dir(facts: &NodeFacts, job: JobId, attempt: u32) -> PathBuf {
    facts.state_dir.join("jobs").join(format!("{job}.{attempt}"))
}

/// Where a task's output is spooled until the controller has recorded the
/// attempt: `<attempt dir>/<rank>.out|err`. After a reconnect the agent resends
/// the spool (with offsets) so output written while the controller was away
/// is not lost.
struct Spool {
    dir: Arc<AttemptDir>,
    job: JobId,
    attempt: u32,
    rank: u32,
}

fn spool_name(rank: u32, stream: Stream) -> String {
    format!("{rank}.{}", if stream == Stream::Stdout { "out" } else { "err" })
}

async fn pump(
    mut r: impl tokio::io::AsyncRead + Unpin,
    spool: &Spool,
    stream: Stream,
    mut file: Option<std::fs::File>,
    out: UnboundedSender<FromAgent>,
) {
    use std::io::Write;
    // Only the agent reads the spool (mode 0600): other users' output stays
    // private. Opened with the first byte: a silent task leaves no files.
    let open_spool = || {
        use std::os::unix::fs::OpenOptionsExt;
        spool.dir.make()?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(spool.dir.path.join(spool_name(spool.rank, stream)))
    };
    let mut spool_file: Option<std::fs::File> = None;
    let mut spool_failed = false;
    let mut offset = 0u64;
    // Small first: most tasks write little or nothing, and a 64 KiB buffer
    // per stream per task was most of the agent's allocation work. A read
    // that fills the buffer grows it for the rest of the stream.
    let mut buf = vec![0u8; 4 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if n == buf.len() && buf.len() < 64 * 1024 {
                    buf.resize(64 * 1024, 0);
                }
                if let Some(f) = file.as_mut() {
                    if f.write_all(&buf[..n]).is_err() {
                        file = None;
                    }
                }
                if spool_file.is_none() && !spool_failed {
                    match open_spool() {
                        Ok(f) => spool_file = Some(f),
                        Err(e) => {
                            tracing::warn!(job = %spool.job, rank = spool.rank, "output spool: {e}; output sent while the controller is away may be lost");
                            spool_failed = true;
                        }
                    }
                }
                if let Some(f) = spool_file.as_mut() {
                    if let Err(e) = f.write_all(&buf[..n]) {
                        spool_failed = true;
                        tracing::warn!(job = %spool.job, rank = spool.rank, "output spool: {e}; output sent while the controller is away may be lost");
                        spool_file = None;
                    }
                }
                let _ = out.send(FromAgent::Output {
                    job: spool.job,
                    attempt: spool.attempt,
                    rank: spool.rank,
                    stream,
                    offset,
                    data: buf[..n].to_vec(),
                });
                offset += n as u64;
            }
        }
    }
}

/// Every spooled chunk of every held attempt, for resending after a reconnect.
pub fn spooled_output(table: &JobTable) -> Vec<FromAgent> {
    let held: Vec<(JobId, u32, PathBuf, Vec<u32>)> = table
        .lock()
        .expect("job table lock")
        .iter()
        .filter_map(|(&(job, attempt), run)| {
            let d = run.dir.as_ref().filter(|d| d.is_made())?;
            Some((job, attempt, d.path.clone(), run.tasks.keys().copied().collect()))
        })
        .collect();
    let mut out = Vec::new();
    for (job, attempt, dir, ranks) in held {
        for rank in ranks {
            for stream in [Stream::Stdout, Stream::Stderr] {
                let Ok(data) = std::fs::read(dir.join(spool_name(rank, stream))) else { continue };
                for (i, chunk) in data.chunks(256 * 1024).enumerate() {
                    let offset = (i * 256 * 1024) as u64;
                    out.push(FromAgent::Output { job, attempt, rank, stream, offset, data: chunk.to_vec() });
                }
            }
        }
    }
    out
}

async fn watch_task(
    child: crate::spawn::Child,
    [stdout, stderr]: [tokio::net::unix::pipe::Receiver; 2],
    spool: Spool,
    attempt: u32,
    files: OutFiles,
    table: JobTable,
    out: UnboundedSender<FromAgent>,
) {
    let (job, rank) = (spool.job, spool.rank);
    // The child and both pumps in this one task: no task spawned per stream.
    let (so, se) = files;
    let mut pumps = std::pin::pin!(async {
        tokio::join!(
            pump(stdout, &spool, Stream::Stdout, so, out.clone()),
            pump(stderr, &spool, Stream::Stderr, se, out.clone())
        )
    });
    let mut wait = std::pin::pin!(child.wait());
    let mut drained = false;
    let status = loop {
        tokio::select! {
            s = &mut wait => break s,
            _ = &mut pumps, if !drained => drained = true,
        }
    };
    if !drained {
        // A process that left a daemon holding its pipes open must not hang
        // its job: give the pumps a moment to drain, then drop them.
        let _ = tokio::time::timeout(PUMP_DRAIN, &mut pumps).await;
    }
    let status = exit_status(status, "task");
    let (pmi, grace_killed, killing) = table
        .lock()
        .expect("job table lock")
        .get(&(job, attempt))
        .and_then(|j| j.tasks.get(&rank).map(|t| (t.pmi, t.grace_killed, j.killing)))
        .unwrap_or_default();
    let status = match grace_killed {
        Some(grace_s) => ExitStatus::KilledAfterFinalize { grace_s },
        None => status,
    };
    if pmi == PmiProgress::Started && !killing {
        // An MPI rank gone before MPI_Finalize: its peers would wait for it
        // forever in the next PMI barrier. End the job everywhere, even on exit 0.
        tracing::info!(%job, rank, "rank ended ({status}) before MPI_Finalize: ending the job");
        let _ = out.send(FromAgent::PmiExitBeforeFinalize { job, attempt, rank, status: status.clone() });
        kill(&table, job, attempt, Duration::from_secs(2));
    }
    record_exit(&table, (job, attempt), rank, status.clone());
    let _ = out.send(FromAgent::TaskExited { job, attempt, rank, status });
}

/// `--finalize-grace`: every rank of the step finalized and some exited 0.
/// After `grace`, kill the local ranks that finalized but still run; they are
/// reported as [`ExitStatus::KilledAfterFinalize`].
pub fn finalize_grace(table: &JobTable, job: JobId, attempt: u32, grace: Duration) {
    let table = table.clone();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let grace_s = u32::try_from(grace.as_secs()).unwrap_or(u32::MAX);
        let mut t = table.lock().expect("job table lock");
        let Some(run) = t.get_mut(&(job, attempt)) else { return };
        for (rank, task) in run.tasks.iter_mut() {
            if task.exit.is_some() || task.pmi != PmiProgress::Finalized {
                continue;
            }
            let Some(pg) = task.pgid else { continue };
            tracing::info!(%job, rank, "still running {grace_s}s after the whole step finalized: killing it");
            task.grace_killed = Some(grace_s);
            // SAFETY: kill(2) with a negative pid signals a process group we created.
            unsafe {
                libc::kill(-pg, libc::SIGKILL);
            }
        }
    });
}

/// Signal every live task of an attempt: SIGTERM now, SIGKILL after `grace`.
pub fn kill(table: &JobTable, job: JobId, attempt: u32, grace: Duration) {
    if let Some(run) = table.lock().expect("job table lock").get_mut(&(job, attempt)) {
        run.killing = true;
    }
    crate::remote::kill_job(table, job, attempt);
    let pgids = live_pgids(table, job, attempt);
    for &pg in &pgids {
        // SAFETY: kill(2) with a negative pid signals a process group we created.
        unsafe {
            libc::kill(-pg, libc::SIGCONT);
            libc::kill(-pg, libc::SIGTERM);
        }
    }
    if pgids.is_empty() {
        return;
    }
    let table = table.clone();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        for pg in live_pgids(&table, job, attempt) {
            // SAFETY: as above.
            unsafe {
                libc::kill(-pg, libc::SIGKILL);
            }
        }
    });
}

fn live_pgids(table: &JobTable, job: JobId, attempt: u32) -> Vec<i32> {
    let t = table.lock().expect("job table lock");
    t.get(&(job, attempt))
        .map(|j| j.tasks.values().filter(|t| t.exit.is_none()).filter_map(|t| t.pgid).collect())
        .unwrap_or_default()
}

/// Kill everything (agent shutdown).
pub fn kill_all(table: &JobTable) {
    let keys: Vec<(JobId, u32)> = table.lock().expect("job table lock").keys().copied().collect();
    for (j, a) in keys {
        crate::remote::kill_job(table, j, a);
        for pg in live_pgids(table, j, a) {
            // SAFETY: as above.
            unsafe {
                libc::kill(-pg, libc::SIGKILL);
            }
        }
    }
}

/// Forget a finished attempt (the controller has recorded it).
pub fn forget(table: &JobTable, facts: &NodeFacts, job: JobId, attempt: u32) {
    let removed = {
        let mut t = table.lock().expect("job table lock");
        let done = t.get(&(job, attempt)).is_some_and(|j| j.tasks.values().all(|t| t.exit.is_some()));
        if done {
            t.remove(&(job, attempt))
        } else {
            None
        }
    };
    if let Some(run) = removed {
        crate::remote::forget_run(&run, facts);
        if let Some(cs) = &facts.cpusets {
            cs.remove(job.0, attempt);
        }
        if let Some(dir) = run.dir.filter(|d| d.is_made()) {
            let _ = std::fs::remove_dir_all(&dir.path);
        }
    }
}

/// How long output pumps may run on after their process ended.
const PUMP_DRAIN: Duration = Duration::from_secs(2);

/// A process that left a daemon holding its pipes open must not hang its
/// job: give its output pumps a moment to drain, then stop them.
pub(crate) async fn drain_pumps<T>(pumps: impl IntoIterator<Item = tokio::task::JoinHandle<T>>) {
    for h in pumps {
        let abort = h.abort_handle();
        if tokio::time::timeout(PUMP_DRAIN, h).await.is_err() {
            abort.abort();
        }
    }
}

/// How a waited-for `what` (task, command) ended, in protocol terms.
pub(crate) fn exit_status(waited: std::io::Result<std::process::ExitStatus>, what: &str) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match waited {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => ExitStatus::Code(c),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            (None, None) => ExitStatus::Code(255),
        },
        Err(e) => ExitStatus::LaunchFailed(format!("cannot wait for the {what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use launcher_proto::{JobSpec, TaskMsg};

    #[test]
    fn program_lookup_follows_the_tasks_path() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        use std::os::unix::fs::PermissionsExt;
        // Not executable in a, executable in b: b's wins.
        std::fs::write(a.join("tool"), b"").unwrap();
        std::fs::write(b.join("tool"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([&a, &b]).unwrap();
        assert_eq!(resolve_program(Path::new("tool"), Some(&path)).unwrap(), b.join("tool"));
        // A name with a slash is taken as it is; a missing name says where it looked.
        assert_eq!(resolve_program(Path::new("./x/y"), Some(&path)).unwrap(), Path::new("./x/y"));
        let e = resolve_program(Path::new("no-such-tool-xyz"), Some(&path)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains(&*a.to_string_lossy()), "{e}");
        // No PATH: the usual system directories.
        assert_eq!(resolve_program(Path::new("sh"), None).unwrap().file_name().unwrap(), "sh");
    }

    #[test]
    fn environment_later_values_win_in_place() {
        let mut env = Env::empty();
        env.extend([("A", "1"), ("B", "2")]);
        env.set("A", "3");
        env.set("C", "4");
        assert_eq!(env.get("A").unwrap(), "3");
        let envp: Vec<&str> = env.envp().into_iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(envp, ["A=3", "B=2", "C=4"]);
        // Many variables (the index grows), each found, replaced in place.
        for i in 0..300 {
            env.set(format!("V{i}"), i.to_string());
        }
        env.set("B", "5");
        for i in (0..300).step_by(7) {
            assert_eq!(env.get(&format!("V{i}")).unwrap(), &*i.to_string());
        }
        let envp = env.envp();
        assert_eq!(envp.len(), 303);
        assert_eq!(envp[1].to_str().unwrap(), "B=5");
        assert_eq!(envp[302].to_str().unwrap(), "V299=299");
        // A NUL byte cannot be passed: that variable is left out.
        env.set("D", std::ffi::OsStr::new("a\0b"));
        assert_eq!(env.envp().len(), 303);
        // The agent's own variables are the base.
        let mut inherited = Env::inherited();
        assert_eq!(inherited.get("PATH").map(|p| p.to_os_string()), std::env::var_os("PATH"));
        assert_eq!(inherited.envp().len(), std::env::vars_os().count());
        // Replacing an inherited variable keeps its place; new ones go last.
        let pos = inherited.envp().iter().position(|c| c.to_bytes().starts_with(b"PATH=")).unwrap();
        inherited.set("PATH", "/x");
        inherited.set("LAUNCHER_TEST_NEW", "1");
        let envp = inherited.envp();
        assert_eq!(envp[pos].to_str().unwrap(), "PATH=/x");
        assert_eq!(envp.last().unwrap().to_str().unwrap(), "LAUNCHER_TEST_NEW=1");
        assert_eq!(inherited.get("PATH").unwrap(), "/x");
    }

    #[test]
    fn patterns() {
        assert_eq!(expand_pattern("out-%j-%t-%N.%x.%%", JobId(7), 3, "n1", 0, "hello", "u"), "out-7-3-n1.hello.%");
        assert_eq!(expand_pattern("%q%", JobId(1), 0, "", 0, "", ""), "%q%");
        // Slurm's array and user spellings.
        let child = JobId(7).child(12);
        assert_eq!(expand_pattern("slurm-%A_%a.%u.out", child, 0, "", 0, "", "ann"), "slurm-7_12.ann.out");
        assert_eq!(expand_pattern("slurm-%A_%a.out", JobId(7), 0, "", 0, "", "ann"), "slurm-7_.out");
    }

    #[test]
    fn pmi_library_search_order() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir_all(bin.join("deps")).unwrap();
        std::fs::create_dir_all(d.path().join("lib/launcher")).unwrap();
        let exe = Some(bin.join("launcher"));
        assert_eq!(find_pmi_library(None, exe.clone()), None);
        let installed = d.path().join("lib/launcher").join(PMI_LIBRARY_NAME);
        std::fs::write(&installed, b"").unwrap();
        assert_eq!(find_pmi_library(None, exe.clone()), Some(installed.canonicalize().unwrap()));
        let in_deps = bin.join("deps").join(PMI_LIBRARY_NAME);
        std::fs::write(&in_deps, b"").unwrap();
        assert_eq!(find_pmi_library(None, exe.clone()), Some(in_deps.canonicalize().unwrap()));
        let beside = bin.join(PMI_LIBRARY_NAME);
        std::fs::write(&beside, b"").unwrap();
        assert_eq!(find_pmi_library(None, exe.clone()), Some(beside.canonicalize().unwrap()));
        let explicit = d.path().join("mine.so");
        std::fs::write(&explicit, b"").unwrap();
        assert_eq!(find_pmi_library(Some(explicit.clone()), exe.clone()), Some(explicit.canonicalize().unwrap()));
        // A wrong explicit path falls back to the search (with a warning).
        assert_eq!(find_pmi_library(Some(d.path().join("nope.so")), exe), Some(beside.canonicalize().unwrap()));
    }

    #[test]
    fn environment_sets() {
        let msg = LaunchMsg {
            job: JobId(12),
            attempt: 1,
            spec: JobSpec {
                name: "x".into(),
                queue: "default".into(),
                nodes: 2,
                tasks: 4,
                cpus_per_task: 1,
                ..Default::default()
            },
            node_rank: 1,
            nodelist: vec!["node1".into(), "node2".into()],
            node_addrs: vec!["10.0.0.2".into(), "10.0.0.3".into()],
            tasks_per_node: vec![2, 2],
            tasks: vec![TaskMsg { rank: 2, local_rank: 0 }, TaskMsg { rank: 3, local_rank: 1 }],
            array: None,
        };
        let facts = NodeFacts {
            name: "node2".into(),
            state_dir: "/tmp".into(),
            users: crate::users::Policy::RunAsSelf,
            pmi: Default::default(),
            exec: Default::default(),
            topo: Default::default(),
            cpusets: None,
            remote: Default::default(),
        };
        let env: BTreeMap<String, String> = task_env(&msg, &facts, 3, 1).into_iter().collect();
        assert_eq!(env["LAUNCHER_RANK"], "3");
        assert_eq!(env["LAUNCHER_LOCAL_RANK"], "1");
        assert_eq!(env["LAUNCHER_NODE_RANK"], "1");
        assert_eq!(env["LAUNCHER_WORLD_SIZE"], "4");
        assert_eq!(env["LAUNCHER_NODELIST"], "node1,node2");
        assert_eq!(env["SLURM_JOB_NODELIST"], "node[1-2]");
        assert_eq!(env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"], "10.0.0.2");
        assert_eq!(env["MASTER_ADDR"], "10.0.0.2");
        assert_eq!(env["RANK"], "3");
        assert_eq!((env["SLURM_CPUS_ON_NODE"].as_str(), env["SLURM_RESTART_COUNT"].as_str()), ("2", "0"));
        assert_eq!(env["SLURM_JOB_PARTITION"], "default");
        // An array child also learns its array's shape (indexes 1, 4, 7).
        let child = LaunchMsg {
            job: JobId(12).child(4),
            array: Some(launcher_proto::ArraySpec { start: 1, end: 8, step: 3, max_running: None, sequential: false }),
            ..msg.clone()
        };
        let c: BTreeMap<String, String> = task_env(&child, &facts, 3, 1).into_iter().collect();
        let shape = ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX"];
        assert_eq!(shape.map(|k| c[k].as_str()), ["4", "3", "1", "7"]);
        assert_eq!((c["SLURM_ARRAY_TASK_STEP"].as_str(), c["SLURM_ARRAY_JOB_ID"].as_str()), ("3", "12"));
        // `--export=ALL` leaves these out of what it takes from the submitting
        // shell, so a job submitted inside another job gets its own values.
        let pmi = ["PMI_FD", "PMI_RANK", "PMI_SIZE", "PMI_JOBID", "PMI_PORT", "PMI_ID", "FLUX_JOB_ID"];
        for k in env.keys().map(String::as_str).chain(pmi) {
            assert!(launcher_proto::is_task_var(k), "{k} is set per task, yet --export=ALL would carry a shell's {k}");
        }
    }
}
