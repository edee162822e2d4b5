//! Discovery and binding plans on the checked-in fixture nodes
//! (`tests/fixtures/<node>/{topology.xml,sysfs/,gpus.json}`; see gen_fixtures.py).
#![cfg(feature = "hwloc")]

use launcher_proto::{BindSpec, CpuBind, Distribution, GpuBind, NicSelect};
use nodeagent::bind::{plan, PlanError, StepRequest, TaskPlan};
use nodeagent::topo::{self, cpulist, gpu::FixtureGpus, NicKind, Source, Topology};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn fixture(name: &str) -> Topology {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let gpus = FixtureGpus(dir.join("gpus.json"));
    let xml = dir.join("topology.xml");
    let sysfs = dir.join("sysfs");
    topo::discover(&Source { xml: Some(&xml), sysfs: &sysfs, gpus: &gpus, own_netns_only: false })
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn run(t: &Topology, tasks: u32, c: u32, bind: BindSpec) -> Result<Vec<TaskPlan>, PlanError> {
    let none = BTreeSet::new();
    plan(t, &StepRequest { tasks, cpus_per_task: c, bind: &bind, busy_cpus: &none, busy_gpus: &none })
}

fn env<'a>(p: &'a TaskPlan, k: &str) -> Option<&'a str> {
    p.env.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
}

#[test]
fn inventory_of_the_8_gpu_4_efa_node() {
    let t = fixture("gpu8-efa4");
    assert_eq!((t.packages.len(), t.numa.len(), t.cores.len(), t.pus().len()), (2, 2, 64, 128));
    assert_eq!(t.gpus.len(), 8);
    assert_eq!(cpulist(&t.numa[1].cpus), "32-63,96-127");
    assert_eq!(t.numa[0].memory_bytes, 1 << 40);
    for g in &t.gpus {
        assert_eq!(g.locality.numa, vec![g.index / 4], "GPU {} NUMA", g.index);
        assert_eq!(g.locality.pci_path.len(), 2, "GPU {} sits under a host bridge and a switch", g.index);
        assert_eq!(g.nvlink_peers.len(), 7);
    }
    let efa: Vec<_> = t.nics.iter().filter(|n| n.kind == NicKind::Efa).collect();
    assert_eq!(
        efa.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["rdmap19s0", "rdmap35s0", "rdmap51s0", "rdmap67s0"]
    );
    assert!(efa.iter().all(|n| n.driver == "efa" && n.speed_mbps == Some(100_000) && n.netdev.is_none()));
    let ens = t.nics.iter().find(|n| n.name == "ens32").expect("primary ENA");
    assert_eq!((ens.kind, ens.driver.as_str(), ens.locality.numa.clone()), (NicKind::Ethernet, "ena", vec![0]));
    assert!(t.render().contains("GPU 7  NVIDIA H100 80GB HBM3"));
}

#[test]
fn eight_ranks_one_gpu_each_get_their_socket_and_switch_efa() {
    let t = fixture("gpu8-efa4");
    let p = run(&t, 8, 1, BindSpec { gpus_per_task: 1, ..Default::default() }).unwrap();
    let efa = ["rdmap19s0", "rdmap19s0", "rdmap35s0", "rdmap35s0", "rdmap51s0", "rdmap51s0", "rdmap67s0", "rdmap67s0"];
    for (i, task) in p.iter().enumerate() {
        let i32_ = i as u32;
        assert_eq!(task.gpus, vec![i32_], "rank {i} GPU");
        // One whole core (both hyperthreads) on the GPU's socket: 0-3 on socket 0, 32-35 on socket 1.
        let core = if i < 4 { i32_ } else { 32 + i32_ - 4 };
        assert_eq!(task.cpus.as_deref(), Some(&[core, core + 64][..]), "rank {i} cpus");
        assert_eq!(task.numa, vec![i32_ / 4]);
        assert_eq!(task.nic.as_deref(), Some(efa[i]), "rank {i} NIC shares the GPU's PCIe switch");
        assert_eq!(env(task, "CUDA_VISIBLE_DEVICES"), Some(&*i.to_string()));
        assert_eq!(env(task, "FI_PROVIDER"), Some("efa"));
        assert_eq!(env(task, "FI_EFA_USE_DEVICE_RDMA"), Some("1"));
        assert_eq!(env(task, "UCX_NET_DEVICES"), Some(&*format!("{}:1", efa[i])));
    }
}

#[test]
fn gpu_tasks_with_more_cpus_stay_on_the_gpu_socket() {
    let t = fixture("gpu8-efa4");
    let p = run(&t, 2, 16, BindSpec { gpus_per_task: 4, ..Default::default() }).unwrap();
    assert_eq!(p[0].gpus, vec![0, 1, 2, 3]);
    assert_eq!(cpulist(p[0].cpus.as_ref().unwrap()), "0-7,64-71");
    assert_eq!(p[1].gpus, vec![4, 5, 6, 7]);
    assert_eq!(cpulist(p[1].cpus.as_ref().unwrap()), "32-39,96-103");
}

#[test]
fn too_many_gpus_is_refused_with_the_numbers() {
    let t = fixture("gpu8-efa4");
    let e = run(&t, 9, 1, BindSpec { gpus_per_task: 1, ..Default::default() }).unwrap_err();
    assert_eq!(e, PlanError::NotEnoughGpus { tasks: 9, per_task: 1, need: 9, have: 8, total: 8 });
    assert!(e.to_string().contains("need 9 GPU(s) on this node, but it has 8 free"));
    let e = run(&t, 1, 1, BindSpec { gpu: GpuBind::Map(vec![8]), ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("GPU 8 does not exist"), "{e}");
}

#[test]
fn numa_binding_spreads_four_ranks_over_four_domains() {
    let t = fixture("cpu-4numa");
    assert_eq!((t.packages.len(), t.numa.len(), t.cores.len(), t.gpus.len()), (2, 4, 32, 0));
    let p = run(&t, 4, 1, BindSpec { cpu: CpuBind::Numa, ..Default::default() }).unwrap();
    let want = ["0-7,32-39", "8-15,40-47", "16-23,48-55", "24-31,56-63"];
    for (i, task) in p.iter().enumerate() {
        assert_eq!(cpulist(task.cpus.as_ref().unwrap()), want[i], "rank {i}");
        assert_eq!(task.numa, vec![i as u32]);
        assert!(task.gpus.is_empty() && env(task, "CUDA_VISIBLE_DEVICES").is_none());
    }
    // Eight ranks, block: two per domain; cyclic: round-robin.
    let p = run(&t, 8, 1, BindSpec { cpu: CpuBind::Numa, ..Default::default() }).unwrap();
    assert_eq!(p.iter().map(|x| x.numa[0]).collect::<Vec<_>>(), [0, 0, 1, 1, 2, 2, 3, 3]);
    let cyc = BindSpec { cpu: CpuBind::Numa, distribution: Distribution::Cyclic, ..Default::default() };
    let p = run(&t, 8, 1, cyc).unwrap();
    assert_eq!(p.iter().map(|x| x.numa[0]).collect::<Vec<_>>(), [0, 1, 2, 3, 0, 1, 2, 3]);
}

#[test]
fn cores_threads_cyclic_and_maps_on_the_cpu_node() {
    let t = fixture("cpu-4numa");
    let cores = run(&t, 2, 4, BindSpec { cpu: CpuBind::Cores, ..Default::default() }).unwrap();
    assert_eq!(cpulist(cores[0].cpus.as_ref().unwrap()), "0-1,32-33");
    assert_eq!(cpulist(cores[1].cpus.as_ref().unwrap()), "2-3,34-35");
    let thr = run(&t, 2, 2, BindSpec { cpu: CpuBind::Threads, ..Default::default() }).unwrap();
    assert_eq!(cpulist(thr[0].cpus.as_ref().unwrap()), "0,32");
    assert_eq!(cpulist(thr[1].cpus.as_ref().unwrap()), "1,33");
    let cyc = run(&t, 2, 1, BindSpec { cpu: CpuBind::Cores, distribution: Distribution::Cyclic, ..Default::default() })
        .unwrap();
    assert_eq!(cpulist(cyc[0].cpus.as_ref().unwrap()), "0,32");
    assert_eq!(cpulist(cyc[1].cpus.as_ref().unwrap()), "16,48", "second rank on the second socket");
    let map = run(&t, 3, 1, BindSpec { cpu: CpuBind::Map(vec![5, 7]), ..Default::default() }).unwrap();
    assert_eq!(map.iter().map(|x| x.cpus.clone().unwrap()).collect::<Vec<_>>(), [vec![5], vec![7], vec![5]]);
    let e = run(&t, 1, 1, BindSpec { cpu: CpuBind::Map(vec![64]), ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("CPU 64 does not exist on this node (its CPUs: 0-63)"), "{e}");
    let e = run(&t, 33, 1, BindSpec { cpu: CpuBind::Cores, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("need 33 cores, but this node has 32 free"), "{e}");
    // auto falls back to no binding instead of failing.
    let auto = run(&t, 33, 1, BindSpec::default()).unwrap();
    assert!(auto.iter().all(|x| x.cpus.is_none()));
    // The only NIC, on NUMA 2, is every task's closest; by name, or none.
    assert_eq!(cores[0].nic.as_deref(), Some("ens2f0"));
    assert_eq!(env(&cores[0], "NCCL_SOCKET_IFNAME"), Some("ens2f0"));
    assert_eq!(env(&cores[0], "OMPI_MCA_btl_tcp_if_include"), Some("ens2f0"));
    let none = run(&t, 1, 1, BindSpec { nic: NicSelect::None, ..Default::default() }).unwrap();
    assert!(none[0].nic.is_none() && env(&none[0], "UCX_NET_DEVICES").is_none());
    let e = run(&t, 1, 1, BindSpec { nic: NicSelect::Name("ib0".into()), ..Default::default() }).unwrap_err();
    assert_eq!(e.to_string(), "--nic ib0: no such interface on this node; it has: ens2f0");
}

#[test]
fn four_gpus_two_hcas() {
    let t = fixture("gpu4-ib2");
    assert_eq!((t.packages.len(), t.cores.len(), t.gpus.len()), (2, 32, 4));
    let ib: Vec<_> = t.nics.iter().filter(|n| n.kind == NicKind::InfiniBand).collect();
    assert_eq!(ib.len(), 2);
    assert_eq!((ib[0].name.as_str(), ib[0].rdma.as_deref(), ib[0].speed_mbps), ("ib0", Some("mlx5_0"), Some(200_000)));
    let p = run(&t, 4, 8, BindSpec { gpus_per_task: 1, ..Default::default() }).unwrap();
    let want = [("0-3,32-35", "ib0"), ("4-7,36-39", "ib0"), ("16-19,48-51", "ib1"), ("20-23,52-55", "ib1")];
    for (i, task) in p.iter().enumerate() {
        assert_eq!((cpulist(task.cpus.as_ref().unwrap()).as_str(), task.nic.as_deref().unwrap()), want[i]);
    }
    assert_eq!(env(&p[2], "UCX_NET_DEVICES"), Some("mlx5_1:1"));
    assert_eq!(env(&p[2], "NCCL_IB_HCA"), Some("mlx5_1"));
    assert_eq!(env(&p[2], "NCCL_SOCKET_IFNAME"), Some("ib1"));
    // gpu-bind none: every task sees all the step's GPUs.
    let p = run(&t, 2, 1, BindSpec { gpus_per_task: 2, gpu: GpuBind::None, ..Default::default() }).unwrap();
    assert_eq!(p[1].gpus, vec![0, 1, 2, 3]);
}

#[test]
fn this_vm_fixture() {
    let t = fixture("vm-2core");
    assert_eq!((t.packages.len(), t.numa.len(), t.cores.len(), t.pus(), t.gpus.len()), (1, 1, 2, vec![0, 1], 0));
    assert_eq!(t.nics.len(), 1);
    assert_eq!((t.nics[0].name.as_str(), t.nics[0].driver.as_str()), ("eth0", "virtio_net"));
    assert_eq!(t.nics[0].pci.map(|a| a.to_string()).as_deref(), Some("0000:00:03.0"));
    let p = run(&t, 2, 1, BindSpec::default()).unwrap();
    assert_eq!((p[0].cpus.clone(), p[1].cpus.clone()), (Some(vec![0]), Some(vec![1])));
}

#[test]
fn a_missing_xml_file_is_a_clear_error() {
    let g = FixtureGpus("/nonexistent/gpus.json".into());
    let e = topo::discover(&Source {
        xml: Some(std::path::Path::new("/nonexistent/node.xml")),
        sysfs: std::path::Path::new("/nonexistent"),
        gpus: &g,
        own_netns_only: false,
    })
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/node.xml"), "{e}");
}

#[test]
fn inventory_and_plan_commands_read_a_fixture() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpu4-ib2");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodeagent"))
            .args(args)
            .arg("--xml")
            .arg(dir.join("topology.xml"))
            .arg("--sysfs")
            .arg(dir.join("sysfs"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, text, err) = run(&["inventory"]);
    assert!(ok, "{err}");
    assert!(
        text.starts_with(
            "2 package(s), 2 NUMA node(s), 32 cores, 64 PUs, 512 GiB, 4 GPU(s), NICs: eno1(eth) ib0(ib) ib1(ib)"
        ),
        "{text}"
    );
    assert!(text.contains("NIC ib1  ib  driver mlx5_core  rdma mlx5_1  200 Gb/s  pci 0000:83:00.0"), "{text}");
    let (ok, json, _) = run(&["inventory", "--json"]);
    assert!(ok);
    let t: Topology = serde_json::from_str(&json).unwrap();
    assert_eq!(t.gpus.len(), 4);
    let (ok, table, _) = run(&["plan", "-n", "4", "-c", "8", "--gpus-per-task", "1"]);
    assert!(ok);
    assert_eq!(table.lines().nth(3).unwrap(), "2     gpu4-ib2  16-19,48-51  1     2     ib1");
    let (ok, _, err) = run(&["plan", "-n", "5", "--gpus-per-task", "1"]);
    assert!(!ok && err.contains("need 5 GPU(s) on this node, but it has 4 free"), "{err}");
}
