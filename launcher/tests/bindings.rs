//! Live placement on this machine: every rank prints its own affinity
//! (`Cpus_allowed_list` from /proc/self/status), which must equal what the
//! agent planned and reported (`launcher show --bindings`). Also the GPU path
//! against real NVML when this machine has it.

mod common;

use common::{stderr, stdout, Cluster};
use std::collections::BTreeMap;

/// Run a 2-rank job on one node, return (rank → printed Cpus_allowed_list, rank → reported cpus).
fn affinity_run(c: &Cluster, extra: &[&str]) -> (BTreeMap<u64, String>, BTreeMap<u64, String>) {
    let mut args = vec!["run", "-n", "2"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--",
        "sh",
        "-c",
        "echo $LAUNCHER_RANK $(grep Cpus_allowed_list /proc/self/status | cut -f2)",
    ]);
    let out = c.cli(&args);
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    let printed: BTreeMap<u64, String> = stdout(&out)
        .lines()
        .map(|l| {
            let (r, cpus) = l.split_once(' ').unwrap_or_else(|| panic!("line {l:?}"));
            (r.parse().unwrap(), cpus.trim().to_string())
        })
        .collect();
    let jobs = c.json(&["queue", "--all", "--json"]);
    let id = jobs.as_array().unwrap().iter().map(|j| j["id"].as_u64().unwrap()).max().unwrap().to_string();
    let b = c.json(&["show", &id, "--bindings", "--json"]);
    let reported = b
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["rank"].as_u64().unwrap(), t["cpus"].as_str().unwrap().to_string()))
        .collect();
    let table = stdout(&c.cli(&["show", &id, "--bindings"]));
    assert!(table.starts_with("RANK  NODE"), "{table}");
    (printed, reported)
}

#[test]
fn each_rank_runs_on_the_cpus_its_binding_reports() {
    if nodeagent::inventory::usable_cpus() < 2 {
        println!("SKIP: needs 2 usable CPUs");
        return;
    }
    let c = Cluster::start(1, 2, false);
    let (printed, reported) = affinity_run(&c, &["--cpu-bind", "cores"]);
    assert_eq!(printed.len(), 2, "{printed:?}");
    assert_eq!(printed, reported, "affinity the tasks saw vs the bindings the agent reported");
    assert_ne!(printed[&0], printed[&1], "two ranks, two different cores");
    // An explicit map, reversed, is applied as given.
    let (printed, reported) = affinity_run(&c, &["--cpu-bind", "map:1,0"]);
    assert_eq!((printed[&0].as_str(), printed[&1].as_str()), ("1", "0"));
    assert_eq!(printed, reported);
    // No binding: the tasks keep the agent's whole mask; nothing is reported as bound.
    let (printed, reported) = affinity_run(&c, &["--cpu-bind", "none"]);
    assert_eq!(printed[&0], printed[&1]);
    assert_eq!(reported[&0], "");
    // The plan's variables are hints: the user's --env wins, once.
    let out = c.cli(&[
        "run",
        "--cpu-bind",
        "cores",
        "--env",
        "LAUNCHER_CPUS=mine",
        "--",
        "sh",
        "-c",
        "env | grep ^LAUNCHER_CPUS=",
    ]);
    assert_eq!(stdout(&out).trim(), "LAUNCHER_CPUS=mine", "{}", stderr(&out));
    let out = c.cli(&["run", "--cpu-bind", "cores", "--", "sh", "-c", "env | grep ^LAUNCHER_CPUS="]);
    let cpus = stdout(&out).trim().strip_prefix("LAUNCHER_CPUS=").map(str::to_string);
    assert!(cpus.is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit())), "{}", stderr(&out));
}

#[test]
fn impossible_placements_are_refused_with_the_reason() {
    let c = Cluster::start(1, 2, false);
    // `launcher up` agents have no GPUs: refused at submit, naming the numbers.
    let out = c.cli(&["submit", "--gpus-per-task", "1", "--", "true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("1 GPU(s)") && stderr(&out).contains("most GPUs on a node: 0"), "{}", stderr(&out));
    let out = c.cli(&["submit", "-C", "h100", "--", "true"]);
    assert!(stderr(&out).contains("feature(s) h100"), "{}", stderr(&out));
    // A NIC the node does not have fails the launch with the planner's message.
    let out = c.cli(&["run", "--nic", "ib7", "--", "true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--nic ib7: no such interface on this node"), "{}", stderr(&out));
    let out = c.cli(&["submit", "--cpu-bind", "sockets", "--", "true"]);
    assert!(
        stderr(&out).contains("--cpu-bind \"sockets\": expected auto, none, cores, threads, numa or map:LIST"),
        "{}",
        stderr(&out)
    );
}

/// The NVML path needs a real GPU: discover this machine through NVML and hwloc
/// and check every GPU got a locality and a one-GPU-per-task plan names it.
#[test]
fn nvml_gpus_have_locality_and_plans() {
    let Ok(nvml) = nodeagent::topo::gpu::Nvml::init() else {
        println!("SKIP: no NVML (libnvidia-ml not loadable on this machine)");
        return;
    };
    let src =
        nodeagent::topo::Source { xml: None, sysfs: std::path::Path::new("/sys"), gpus: &nvml, own_netns_only: true };
    let t = nodeagent::topo::discover(&src).expect("discover with NVML");
    println!("{}", t.render());
    if t.gpus.is_empty() {
        println!("SKIP: NVML loaded but reports no GPUs");
        return;
    }
    for g in &t.gpus {
        assert!(g.pci.is_some(), "GPU {} has a PCI address", g.index);
        assert!(!g.locality.cpus.is_empty(), "GPU {} matched an hwloc PCI device (locality known)", g.index);
        assert!(g.uuid.starts_with("GPU-"), "{}", g.uuid);
    }
    let bind = launcher_proto::BindSpec { gpus_per_task: 1, ..Default::default() };
    let none = Default::default();
    let req = nodeagent::bind::StepRequest {
        tasks: t.gpus.len() as u32,
        cpus_per_task: 1,
        bind: &bind,
        busy_cpus: &none,
        busy_gpus: &none,
    };
    let plans = nodeagent::bind::plan(&t, &req).expect("one GPU per task fits");
    for p in &plans {
        assert_eq!(p.gpus.len(), 1);
        let g = &t.gpus[p.gpus[0] as usize];
        let cpus = p.cpus.as_ref().expect("bound");
        assert!(
            cpus.iter().all(|c| g.locality.cpus.contains(c)) || g.locality.cpus.len() < cpus.len(),
            "rank {} cores near GPU {}",
            p.local_rank,
            g.index
        );
    }
}

/// Where the host has cgroup v1 cpusets and the agent is root, each pinned task
/// also sits in its own cpuset cgroup holding exactly its CPUs.
#[test]
fn pinned_tasks_sit_in_their_own_cpuset_cgroup() {
    let root = std::path::Path::new("/sys/fs/cgroup/cpuset");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !root.join("cpuset.cpus").is_file() {
        println!("SKIP: needs root and a cgroup v1 cpuset hierarchy at /sys/fs/cgroup/cpuset");
        return;
    }
    if nodeagent::inventory::usable_cpus() < 2 {
        println!("SKIP: needs 2 usable CPUs");
        return;
    }
    let c = Cluster::start(1, 2, false);
    let script = "p=$(awk -F: '$2==\"cpuset\"{print $3}' /proc/self/cgroup); echo $LAUNCHER_RANK $p $(cat /sys/fs/cgroup/cpuset$p/cpuset.cpus) $LAUNCHER_CPUS";
    let out = c.cli(&["run", "-n", "2", "--cpu-bind", "cores", "--", "sh", "-c", script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{text}");
    for (rank, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 4, "{l}");
        assert!(
            f[1].starts_with("/launcher/node1.") && f[1].ends_with(&format!(".1/{rank}")),
            "cgroup of rank {rank}: {l}"
        );
        assert_eq!(f[2], f[3], "the cgroup holds exactly the planned CPUs: {l}");
    }
}
