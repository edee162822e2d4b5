//! First-version node inventory from /proc and /sys (the hwloc-based topology
//! is its own piece of work). Every reader takes a root directory so tests run
//! on captured trees.

use launcher_proto::Inventory;
use std::collections::BTreeSet;
use std::path::Path;

/// Discover the machine under `root` (`/` for the live system).
pub fn discover(root: &Path) -> Inventory {
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let (sockets, cores, threads) = parse_cpuinfo(&cpuinfo);
    let meminfo = std::fs::read_to_string(root.join("proc/meminfo")).unwrap_or_default();
    let numa = std::fs::read_dir(root.join("sys/devices/system/node"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("node") && n[4..].parse::<u32>().is_ok()
                })
                .count() as u32
        })
        .unwrap_or(0);
    Inventory {
        cpus: threads,
        mem_mib: parse_meminfo_mib(&meminfo),
        sockets,
        cores,
        threads,
        numa_nodes: numa.max(1),
        ..Default::default()
    }
}

/// Fill the hardware fields from a topology (hwloc's counts are better than
/// /proc/cpuinfo's on VMs and SNC nodes) and add GPUs and NICs.
pub fn merge_topology(inv: &mut Inventory, topo: &crate::topo::Topology) {
    if !topo.cores.is_empty() {
        inv.sockets = topo.packages.len() as u32;
        inv.cores = topo.cores.len() as u32;
        inv.threads = topo.pus().len() as u32;
        inv.numa_nodes = topo.numa.len().max(1) as u32;
    }
    inv.gpus = topo.gpus.len() as u32;
    inv.gpu_models = topo.gpus.iter().map(|g| g.name.clone()).collect();
    inv.nics = topo.nics.iter().map(|n| format!("{}({})", n.name, n.kind.as_str())).collect();
}

/// CPUs this process may run on (its affinity mask), at least 1.
pub fn usable_cpus() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

/// (sockets, physical cores, hardware threads) from /proc/cpuinfo.
pub fn parse_cpuinfo(text: &str) -> (u32, u32, u32) {
    let mut threads = 0u32;
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut phys: Option<u32> = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => threads += 1,
            "physical id" => {
                phys = v.parse().ok();
                sockets.insert(phys.unwrap_or(0));
            }
            "core id" => {
                cores.insert((phys.unwrap_or(0), v.parse::<u32>().unwrap_or(0)));
            }
            _ => {}
        }
    }
    let sockets = (sockets.len() as u32).max(1);
    let cores = if cores.is_empty() { threads } else { cores.len() as u32 };
    (sockets, cores.max(1), threads.max(1))
}

/// MemTotal in MiB from /proc/meminfo.
pub fn parse_meminfo_mib(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_socket_hyperthreaded_cpuinfo() {
        let mut text = String::new();
        let mut p = 0;
        for sock in 0..2 {
            for core in 0..4 {
                for _ht in 0..2 {
                    text += &format!("processor\t: {p}\nphysical id\t: {sock}\ncore id\t\t: {core}\n\n");
                    p += 1;
                }
            }
        }
        assert_eq!(parse_cpuinfo(&text), (2, 8, 16));
    }

    #[test]
    fn vm_cpuinfo_without_topology_fields() {
        assert_eq!(parse_cpuinfo("processor : 0\n\nprocessor : 1\n"), (1, 2, 2));
    }

    #[test]
    fn meminfo() {
        assert_eq!(parse_meminfo_mib("MemTotal:       24576000 kB\nMemFree: 1 kB\n"), 24000);
    }

    #[test]
    fn discover_from_a_fixture_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc")).unwrap();
        std::fs::create_dir_all(d.path().join("sys/devices/system/node/node0")).unwrap();
        std::fs::create_dir_all(d.path().join("sys/devices/system/node/node1")).unwrap();
        std::fs::write(
            d.path().join("proc/cpuinfo"),
            "processor : 0\nphysical id : 0\ncore id : 0\n\nprocessor : 1\nphysical id : 1\ncore id : 0\n",
        )
        .unwrap();
        std::fs::write(d.path().join("proc/meminfo"), "MemTotal: 2097152 kB\n").unwrap();
        let inv = discover(d.path());
        assert_eq!((inv.sockets, inv.cores, inv.threads, inv.numa_nodes, inv.mem_mib), (2, 2, 2, 2, 2048));
    }
}
