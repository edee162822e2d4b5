//! Binding plans: which CPUs, GPUs and NIC each local task of a step gets.
//!
//! A pure function of the node's [`Topology`] and the step's request (compute
//! first, apply second): [`plan`] returns one [`TaskPlan`] per local task, or
//! a [`PlanError`] naming what cannot be satisfied. `exec` applies a plan with
//! `sched_setaffinity` before exec and the plan's environment.
//!
//! Theory: GPUs are handed out first (in locality order, so a task's GPUs sit
//! together); a task with GPUs takes its CPUs from its first GPU's NUMA node
//! (then that package, then anywhere); its NIC is the one sharing the most PCI
//! bridges with that GPU (same PCIe switch), then the same NUMA node, preferring
//! RDMA-capable and faster NICs and spreading ties over the tasks.

use crate::topo::{cpulist, Locality, Nic, NicKind, Topology};
use launcher_proto::{BindSpec, CpuBind, Distribution, GpuBind, NicSelect};
use std::collections::BTreeSet;

/// What a step asks of this node.
#[derive(Clone, Debug)]
pub struct StepRequest<'a> {
    /// Local tasks.
    pub tasks: u32,
    /// CPUs per task (`-c`).
    pub cpus_per_task: u32,
    /// Placement options.
    pub bind: &'a BindSpec,
    /// PUs already bound by other steps on this node (avoided when possible).
    pub busy_cpus: &'a BTreeSet<u32>,
    /// GPUs already given to other steps on this node (never shared).
    pub busy_gpus: &'a BTreeSet<u32>,
}

/// One task's placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskPlan {
    /// Local rank.
    pub local_rank: u32,
    /// PUs to bind to; None = not bound.
    pub cpus: Option<Vec<u32>>,
    /// NUMA nodes of those PUs (or of the GPU when not bound).
    pub numa: Vec<u32>,
    /// GPU indices it sees.
    pub gpus: Vec<u32>,
    /// The NIC of its fabric hints.
    pub nic: Option<String>,
    /// Variables to set: `CUDA_VISIBLE_DEVICES`, fabric hints, `LAUNCHER_CPUS`.
    pub env: Vec<(String, String)>,
}

/// Why a plan is impossible on this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Not enough free GPUs.
    #[error("{tasks} task(s) x --gpus-per-task {per_task} need {need} GPU(s) on this node, but it has {have} free (of {total}); ask for fewer tasks per node or fewer GPUs per task")]
    NotEnoughGpus {
        /// Tasks.
        tasks: u32,
        /// Per task.
        per_task: u32,
        /// Total needed.
        need: u32,
        /// Free.
        have: u32,
        /// On the node.
        total: u32,
    },
    /// A `--gpu-bind map:` entry names a GPU the node does not have.
    #[error("--gpu-bind map: GPU {gpu} does not exist on this node (it has {have} GPU(s): 0-{})", have.saturating_sub(1))]
    NoSuchGpu {
        /// The index asked for.
        gpu: u32,
        /// GPUs on the node.
        have: u32,
    },
    /// Not enough cores or threads for an explicit binding.
    #[error("--cpu-bind {mode}: {tasks} task(s) x {per_task} need {need} {unit}, but this node has {have} free; use --cpu-bind none to share CPUs, or fewer tasks per node")]
    NotEnoughCpus {
        /// The mode.
        mode: &'static str,
        /// Tasks.
        tasks: u32,
        /// Units per task.
        per_task: u32,
        /// Total.
        need: u32,
        /// Free units.
        have: u32,
        /// `cores` or `threads`.
        unit: &'static str,
    },
    /// A `--cpu-bind map:` entry names a CPU the node does not have.
    #[error("--cpu-bind map: CPU {cpu} does not exist on this node (its CPUs: {have})")]
    NoSuchCpu {
        /// The CPU asked for.
        cpu: u32,
        /// The node's cpulist.
        have: String,
    },
    /// `--nic NAME` names no interface of this node.
    #[error("--nic {name}: no such interface on this node; it has: {have}")]
    NoSuchNic {
        /// The name.
        name: String,
        /// The node's NICs.
        have: String,
    },
}

/// Plan a step's local tasks.
pub fn plan(topo: &Topology, req: &StepRequest<'_>) -> Result<Vec<TaskPlan>, PlanError> {
    let n = req.tasks;
    let b = req.bind;
    let gpus = assign_gpus(topo, req)?;
    // Each task's "home": its first GPU's locality, if any.
    let home: Vec<Option<&Locality>> = gpus
        .iter()
        .map(|g| g.first().and_then(|i| topo.gpus.iter().find(|x| x.index == *i)).map(|g| &g.locality))
        .collect();
    let cpus = assign_cpus(topo, req, &home)?;
    let nics = assign_nics(topo, &b.nic, &home, &cpus)?;
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        let numa = match &cpus[i] {
            Some(c) => topo.numa_of(c),
            None => home[i].map(|l| l.numa.clone()).unwrap_or_default(),
        };
        let nic = nics[i].map(|k| &topo.nics[k]);
        let mut env = Vec::new();
        if let Some(c) = &cpus[i] {
            env.push(("LAUNCHER_CPUS".to_string(), cpulist(c)));
        }
        if b.gpus_per_task > 0 || !matches!(b.gpu, GpuBind::Closest) {
            let list = gpus[i].iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            env.push(("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into()));
            env.push(("CUDA_VISIBLE_DEVICES".into(), list.clone()));
            env.push(("LAUNCHER_GPUS".into(), list));
        }
        if let Some(nic) = nic {
            env.extend(fabric_env(nic));
        }
        out.push(TaskPlan {
            local_rank: i as u32,
            cpus: cpus[i].clone(),
            numa,
            gpus: gpus[i].clone(),
            nic: nic.map(|x| x.name.clone()),
            env,
        });
    }
    Ok(out)
}

/// Fabric hints for one NIC.
pub fn fabric_env(nic: &Nic) -> Vec<(String, String)> {
    let mut env = vec![("LAUNCHER_NIC".to_string(), nic.name.clone())];
    let ucx = match (&nic.rdma, &nic.netdev) {
        (Some(r), _) => format!("{r}:1"),
        (None, Some(n)) => n.clone(),
        (None, None) => String::new(),
    };
    if !ucx.is_empty() {
        env.push(("UCX_NET_DEVICES".into(), ucx));
    }
    if let Some(nd) = &nic.netdev {
        env.push(("NCCL_SOCKET_IFNAME".into(), nd.clone()));
        env.push(("OMPI_MCA_btl_tcp_if_include".into(), nd.clone()));
    }
    match nic.kind {
        NicKind::Efa => {
            env.push(("FI_PROVIDER".into(), "efa".into()));
            env.push(("FI_EFA_USE_DEVICE_RDMA".into(), "1".into()));
        }
        NicKind::InfiniBand => {
            if let Some(r) = &nic.rdma {
                env.push(("NCCL_IB_HCA".into(), r.clone()));
            }
        }
        NicKind::Ethernet => {}
    }
    env
}

fn assign_gpus(topo: &Topology, req: &StepRequest<'_>) -> Result<Vec<Vec<u32>>, PlanError> {
    let n = req.tasks as usize;
    let b = req.bind;
    let total = topo.gpus.len() as u32;
    if let GpuBind::Map(list) = &b.gpu {
        if let Some(&bad) = list.iter().find(|&&g| !topo.gpus.iter().any(|x| x.index == g)) {
            return Err(PlanError::NoSuchGpu { gpu: bad, have: total });
        }
        return Ok((0..n).map(|i| vec![list[i % list.len()]]).collect());
    }
    let per = b.gpus_per_task;
    if per == 0 {
        return Ok(vec![Vec::new(); n]);
    }
    // Locality order: by package, NUMA, then PCI address (= index order on real nodes).
    let mut free: Vec<&crate::topo::Gpu> = topo.gpus.iter().filter(|g| !req.busy_gpus.contains(&g.index)).collect();
    let need = per * req.tasks;
    if (free.len() as u32) < need {
        return Err(PlanError::NotEnoughGpus { tasks: req.tasks, per_task: per, need, have: free.len() as u32, total });
    }
    free.sort_by_key(|g| (g.locality.numa.first().copied().unwrap_or(u32::MAX), g.pci, g.index));
    if matches!(b.gpu, GpuBind::None) {
        let all: Vec<u32> = free[..need as usize].iter().map(|g| g.index).collect();
        return Ok(vec![all; n]);
    }
    let mut out = vec![Vec::new(); n];
    match b.distribution {
        Distribution::Block => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = free[i * per as usize..(i + 1) * per as usize].iter().map(|g| g.index).collect();
            }
        }
        Distribution::Cyclic => {
            // Round-robin over packages: task i prefers package i % P.
            let pk: Vec<u32> = topo.packages.iter().map(|p| p.index).collect();
            let pkg_of = |g: &crate::topo::Gpu| {
                let numa = g.locality.numa.first().copied();
                topo.numa.iter().find(|x| Some(x.index) == numa).map(|x| x.package).unwrap_or(0)
            };
            let mut left: Vec<&crate::topo::Gpu> = free;
            for (i, o) in out.iter_mut().enumerate() {
                let want = pk.get(i % pk.len().max(1)).copied().unwrap_or(0);
                for _ in 0..per {
                    let k = left.iter().position(|g| pkg_of(g) == want).unwrap_or(0);
                    o.push(left.remove(k).index);
                }
            }
        }
    }
    Ok(out)
}

/// A placement unit: (package, NUMA node, its PUs) — a core, or one hardware thread.
type Unit = (u32, u32, Vec<u32>);

fn assign_cpus(
    topo: &Topology,
    req: &StepRequest<'_>,
    home: &[Option<&Locality>],
) -> Result<Vec<Option<Vec<u32>>>, PlanError> {
    let n = req.tasks as usize;
    let c = req.cpus_per_task.max(1);
    let all = topo.pus();
    match &req.bind.cpu {
        CpuBind::None => Ok(vec![None; n]),
        CpuBind::Map(list) => {
            if let Some(&bad) = list.iter().find(|x| !all.contains(x)) {
                return Err(PlanError::NoSuchCpu { cpu: bad, have: cpulist(&all) });
            }
            Ok((0..n).map(|i| Some(vec![list[i % list.len()]])).collect())
        }
        CpuBind::Numa => {
            let numas: Vec<&crate::topo::NumaNode> = topo.numa.iter().filter(|x| !x.cpus.is_empty()).collect();
            if numas.is_empty() {
                return Ok(vec![None; n]);
            }
            let k = numas.len();
            Ok((0..n)
                .map(|i| {
                    let by_gpu =
                        home[i].and_then(|l| l.numa.first()).and_then(|m| numas.iter().find(|x| x.index == *m));
                    let pick = by_gpu.copied().unwrap_or(match req.bind.distribution {
                        // Block: consecutive tasks share a NUMA node, spread evenly.
                        Distribution::Block => numas[i * k / n],
                        Distribution::Cyclic => numas[i % k],
                    });
                    Some(pick.cpus.clone())
                })
                .collect())
        }
        CpuBind::Cores | CpuBind::Threads | CpuBind::Auto => {
            let threads = matches!(req.bind.cpu, CpuBind::Threads);
            // Units: whole cores, or single PUs; free = no PU busy.
            let mut units: Vec<Unit> = Vec::new();
            for core in &topo.cores {
                if threads {
                    for &pu in &core.pus {
                        units.push((core.package, core.numa, vec![pu]));
                    }
                } else {
                    units.push((core.package, core.numa, core.pus.clone()));
                }
            }
            let free_units = units.iter().filter(|u| !u.2.iter().any(|p| req.busy_cpus.contains(p))).count();
            // `-c` counts hardware threads (as Slurm's does): whole cores enough to hold them.
            let tpc = topo.cores.iter().map(|x| x.pus.len()).max().unwrap_or(1).max(1) as u32;
            let per_task = if threads { c } else { c.div_ceil(tpc) };
            let need = per_task as usize * n;
            if free_units < need {
                if matches!(req.bind.cpu, CpuBind::Auto) {
                    return Ok(vec![None; n]);
                }
                return Err(PlanError::NotEnoughCpus {
                    mode: if threads { "threads" } else { "cores" },
                    tasks: req.tasks,
                    per_task,
                    need: need as u32,
                    have: free_units as u32,
                    unit: if threads { "threads" } else { "cores" },
                });
            }
            let mut taken = vec![false; units.len()];
            for (k, u) in units.iter().enumerate() {
                taken[k] = u.2.iter().any(|p| req.busy_cpus.contains(p));
            }
            let packages: Vec<u32> = topo.packages.iter().map(|p| p.index).collect();
            let mut out = Vec::with_capacity(n);
            for (i, h) in home.iter().enumerate().take(n) {
                // Preference tiers: the GPU's NUMA node, then its package; or, without a GPU,
                // the package the distribution names; then anywhere.
                let gpu_numa = h.and_then(|l| l.numa.first().copied());
                let gpu_pkg = gpu_numa.and_then(|m| topo.numa.iter().find(|x| x.index == m)).map(|x| x.package);
                let dist_pkg = match req.bind.distribution {
                    Distribution::Cyclic if !packages.is_empty() => Some(packages[i % packages.len()]),
                    _ => None,
                };
                let tiers: [&dyn Fn(&Unit) -> bool; 3] = [
                    &|u| gpu_numa.is_some_and(|m| u.1 == m),
                    &|u| gpu_pkg.or(dist_pkg).is_some_and(|p| u.0 == p),
                    &|_| true,
                ];
                let mut mine = Vec::new();
                let mut got = 0;
                for tier in tiers {
                    for (k, u) in units.iter().enumerate() {
                        if got == per_task {
                            break;
                        }
                        if !taken[k] && tier(u) {
                            taken[k] = true;
                            got += 1;
                            mine.extend(u.2.iter().copied());
                        }
                    }
                }
                mine.sort_unstable();
                out.push(Some(mine));
            }
            Ok(out)
        }
    }
}

fn assign_nics(
    topo: &Topology,
    sel: &NicSelect,
    home: &[Option<&Locality>],
    cpus: &[Option<Vec<u32>>],
) -> Result<Vec<Option<usize>>, PlanError> {
    let n = home.len();
    match sel {
        NicSelect::None => Ok(vec![None; n]),
        NicSelect::Name(name) => {
            let k = topo
                .nics
                .iter()
                .position(|x| &x.name == name || x.netdev.as_ref() == Some(name) || x.rdma.as_ref() == Some(name))
                .ok_or_else(|| PlanError::NoSuchNic {
                    name: name.clone(),
                    have: if topo.nics.is_empty() {
                        "no NICs".into()
                    } else {
                        topo.nics.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(", ")
                    },
                })?;
            Ok(vec![Some(k); n])
        }
        NicSelect::Closest => {
            let cands: Vec<usize> = (0..topo.nics.len()).filter(|&k| topo.nics[k].pci.is_some()).collect();
            if cands.is_empty() {
                return Ok(vec![None; n]);
            }
            let mut used = vec![0u32; topo.nics.len()];
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let task_numa: Vec<u32> = match (&cpus[i], home[i]) {
                    (Some(c), _) => topo.numa_of(c),
                    (None, Some(l)) => l.numa.clone(),
                    (None, None) => Vec::new(),
                };
                let best = cands
                    .iter()
                    .copied()
                    .max_by_key(|&k| {
                        let nic = &topo.nics[k];
                        let shared = home[i].map(|l| l.shared_bridges(&nic.locality)).unwrap_or(0);
                        let same_numa = nic.locality.numa.iter().any(|m| task_numa.contains(m));
                        (
                            shared,
                            same_numa,
                            nic.rdma_capable(),
                            nic.speed_mbps.unwrap_or(0),
                            std::cmp::Reverse(used[k]),
                            std::cmp::Reverse(k),
                        )
                    })
                    .expect("candidates not empty");
                used[best] += 1;
                out.push(Some(best));
            }
            Ok(out)
        }
    }
}

/// Render bindings as the table `launcher show --bindings` prints.
pub fn table(rows: &[launcher_proto::TaskBinding]) -> String {
    use std::fmt::Write as _;
    let numa = |v: &[u32]| if v.is_empty() { "-".to_string() } else { cpulist(v) };
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|b| {
            [
                b.rank.to_string(),
                b.node.clone(),
                if b.cpus.is_empty() { "-".into() } else { b.cpus.clone() },
                numa(&b.numa),
                if b.gpus.is_empty() {
                    "-".into()
                } else {
                    b.gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
                },
                b.nic.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let head = ["RANK", "NODE", "CPUS", "NUMA", "GPUS", "NIC"];
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &cells {
        for (k, c) in r.iter().enumerate() {
            w[k] = w[k].max(c.len());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, r: &[&str]| {
        let parts: Vec<String> = r.iter().enumerate().map(|(k, c)| format!("{c:<width$}", width = w[k])).collect();
        let _ = writeln!(s, "{}", parts.join("  ").trim_end());
    };
    line(&mut s, &head);
    for r in &cells {
        line(&mut s, &r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    s
}
