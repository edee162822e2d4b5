//! Topology without hwloc (the agent built without the `hwloc` feature):
//! packages, cores, hardware threads and NUMA nodes of this machine from
//! `/sys/devices/system`, no caches and no PCI tree. NICs still come from
//! sysfs and GPUs from NVML, but without PCI locality the planner falls back
//! to each device's NUMA node. XML topologies need hwloc.

use super::{parse_cpulist, Core, NumaNode, Package, Topology, TopologyError};
use std::collections::BTreeMap;
use std::path::Path;

fn read(p: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// Load this machine's CPU topology from sysfs.
pub fn load(xml: Option<&Path>) -> Result<Topology, TopologyError> {
    if let Some(p) = xml {
        return Err(TopologyError::Hwloc {
            what: "read the XML topology",
            path: Some(p.to_path_buf()),
            detail: "this build has no hwloc; install libhwloc-dev, libudev-dev and pkg-config and build with \
                     `--features hwloc`"
                .into(),
        });
    }
    load_from(Path::new("/sys/devices/system"), Path::new("/proc"))
}

/// Load from a sysfs `devices/system` directory and a procfs root.
pub fn load_from(system: &Path, proc_root: &Path) -> Result<Topology, TopologyError> {
    let online = read(system.join("cpu/online")).and_then(|s| parse_cpulist(&s).ok()).unwrap_or_default();
    let mut t =
        Topology { hostname: read(proc_root.join("sys/kernel/hostname")).unwrap_or_default(), ..Default::default() };
    // PU → (package, core id).
    let mut cores: BTreeMap<(u32, u32), Vec<u32>> = BTreeMap::new();
    let mut packages: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &pu in &online {
        let topo = system.join(format!("cpu/cpu{pu}/topology"));
        let pkg = read(topo.join("physical_package_id")).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0).max(0) as u32;
        let core = read(topo.join("core_id")).and_then(|s| s.parse::<i64>().ok()).unwrap_or(pu as i64).max(0) as u32;
        cores.entry((pkg, core)).or_default().push(pu);
        packages.entry(pkg).or_default().push(pu);
    }
    // NUMA nodes.
    let mut numa_of: BTreeMap<u32, u32> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(system.join("node")) {
        let mut nodes: Vec<u32> =
            dir.flatten().filter_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok()).collect();
        nodes.sort_unstable();
        for n in nodes {
            let d = system.join(format!("node/node{n}"));
            let cpus = read(d.join("cpulist")).and_then(|s| parse_cpulist(&s).ok()).unwrap_or_default();
            let kb = read(d.join("meminfo"))
                .and_then(|m| {
                    m.lines()
                        .find(|l| l.contains("MemTotal:"))
                        .and_then(|l| l.split_whitespace().rev().nth(1)?.parse::<u64>().ok())
                })
                .unwrap_or(0);
            for &c in &cpus {
                numa_of.insert(c, n);
            }
            let package = cpus
                .first()
                .and_then(|c| packages.iter().find(|(_, pus)| pus.contains(c)).map(|(p, _)| *p))
                .unwrap_or(0);
            t.numa.push(NumaNode { index: n, memory_bytes: kb * 1024, cpus, package });
        }
    }
    if t.numa.is_empty() {
        let kb = read(proc_root.join("meminfo"))
            .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
            .unwrap_or(0);
        t.numa.push(NumaNode { index: 0, memory_bytes: kb * 1024, cpus: online.clone(), package: 0 });
    }
    for (index, pus) in &packages {
        let mut numa: Vec<u32> = pus.iter().filter_map(|p| numa_of.get(p).copied()).collect();
        numa.sort_unstable();
        numa.dedup();
        if numa.is_empty() {
            numa.push(0);
        }
        t.packages.push(Package { index: *index, model: String::new(), cpus: pus.clone(), numa });
    }
    for (i, ((pkg, _), pus)) in cores.into_iter().enumerate() {
        let numa = pus.first().and_then(|p| numa_of.get(p).copied()).unwrap_or(0);
        t.cores.push(Core { index: i as u32, package: pkg, numa, pus });
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_two_socket_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("system");
        let w = |p: &str, v: &str| {
            let f = sys.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, v).unwrap();
        };
        w("cpu/online", "0-3\n");
        for (pu, pkg, core) in [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)] {
            w(&format!("cpu/cpu{pu}/topology/physical_package_id"), &pkg.to_string());
            w(&format!("cpu/cpu{pu}/topology/core_id"), &core.to_string());
        }
        w("node/node0/cpulist", "0-1\n");
        w("node/node0/meminfo", "Node 0 MemTotal:       1024 kB\n");
        w("node/node1/cpulist", "2-3\n");
        w("node/node1/meminfo", "Node 1 MemTotal:       2048 kB\n");
        let t = load_from(&sys, d.path()).unwrap();
        assert_eq!(t.packages.len(), 2);
        assert_eq!(t.cores.len(), 4);
        assert_eq!(t.numa[1].cpus, vec![2, 3]);
        assert_eq!(t.numa[1].memory_bytes, 2048 * 1024);
        assert_eq!(t.cores[2].package, 1);
        assert_eq!(t.cores[2].numa, 1);
    }

    #[test]
    fn this_machine_loads() {
        let t = load(None).unwrap();
        assert!(!t.cores.is_empty());
        assert!(load(Some(Path::new("/x.xml"))).unwrap_err().to_string().contains("--features hwloc"));
    }
}
