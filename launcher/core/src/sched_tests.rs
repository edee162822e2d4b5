//! The backfill reservation computed from the release index equals the one
//! computed by walking every member node (the reference below, the way the
//! scheduler did it before the index), over random event sequences; and the
//! pass's arithmetic job shape matches the block distribution.

use super::*;
use crate::{Config, Record, SubmitOutcome};
use launcher_proto::{
    AdminOp, CeDef, ExitStatus, FromAgent, Inventory, JobReport, LaunchMsg, NodeSelector, QueueDef, RegisterMsg,
    ToAgent,
};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

#[derive(Default)]
struct Fx {
    sent: Vec<(NodeId, ToAgent)>,
}

impl crate::Effects for Fx {
    fn send(&mut self, node: NodeId, msg: ToAgent) {
        self.sent.push((node, msg));
    }
    fn persist(&mut self, _: Record) {}
    fn job_changed(&mut self, _: JobId) {}
}

/// Earliest time `n` has `cpus` and `mem` free: sort the node's running jobs
/// by deadline and add them back one by one.
fn ref_free_at(core: &Core, now: Time, n: &Node, cpus: u32, mem: u64) -> u64 {
    if n.free_cpus() >= cpus && n.free_mem() >= mem {
        return now.0;
    }
    let mut ends: Vec<(u64, u32, u64)> = n
        .jobs
        .iter()
        .filter_map(|j| core.jobs.get(j))
        .filter_map(|j| {
            let a = j.alloc.iter().find(|a| a.node == n.rec.id)?;
            Some((j.deadline().unwrap_or(NEVER), a.cpus, a.mem_mib))
        })
        .collect();
    ends.sort_unstable();
    let (mut free, mut fmem) = (n.free_cpus(), n.free_mem());
    for (t, c, m) in ends {
        if t == NEVER {
            return NEVER;
        }
        free += c;
        fmem += m;
        if free >= cpus && fmem >= mem {
            return t;
        }
    }
    NEVER
}

/// The reservation by walking every member node of every compute environment.
fn reference(core: &Core, now: Time, id: JobId, qname: &str) -> Option<(u64, BTreeSet<NodeId>, u32)> {
    let spec = &core.jobs[&id].spec;
    let shape = Shape::of(spec);
    let q = core.queues.get(qname)?;
    let mut best: Option<(u64, Vec<NodeId>)> = None;
    for ce in &q.def.ces {
        if !core.ces.get(ce).is_some_and(|c| c.enabled) {
            continue;
        }
        let Some(members) = core.ce_members.get(ce) else { continue };
        let mut times: Vec<(u64, NodeId)> = members
            .iter()
            .filter_map(|nid| {
                let n = &core.nodes[nid];
                let inv = &n.rec.inventory;
                if !n.connected() || inv.cpus < shape.big || inv.mem_mib < shape.mem || !gres_fit_ever(n, spec) {
                    return None;
                }
                Some((ref_free_at(core, now, n, shape.big, shape.mem), *nid))
            })
            .collect();
        let k = shape.nodes as usize;
        if times.len() < k {
            continue;
        }
        times.sort_unstable();
        let t = times[k - 1].0;
        times.retain(|(x, _)| *x <= t);
        times.sort_unstable_by_key(|(x, n)| (Reverse(*x), *n));
        times.truncate(k);
        if best.as_ref().is_none_or(|(b, _)| t < *b) {
            best = Some((t, times.into_iter().map(|(_, n)| n).collect()));
        }
    }
    best.map(|(t, nodes)| (t, nodes.into_iter().collect(), shape.big))
}

/// Compare, for every waiting plain job, the indexed reservation with the reference.
fn check_all(core: &Core, now: Time) {
    for (qname, q) in &core.queues {
        for set in q.waiting.values() {
            for &(_, id) in set {
                let got = core.compute_reservation(now, id, id, qname).map(|r| (r.time, r.nodes, r.need_cpus));
                let want = reference(core, now, id, qname);
                assert_eq!(got, want, "reservation for job {id} in queue {qname} at {}", now.0);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Ev {
    Submit {
        nodes: u32,
        per: u32,
        cpt: u32,
        mem: u64,
        limit: Option<u64>,
        gpus: u32,
        queue: usize,
    },
    Schedule,
    /// Every task of one running attempt exits.
    Exit(usize),
    /// Time passes (time limits expire; unreachable nodes go down).
    Tick(u64),
    /// Agents answer the kills sent so far.
    AnswerKills,
    Disconnect(usize),
    Reconnect(usize),
}

fn ev() -> impl proptest::strategy::Strategy<Value = Ev> {
    prop_oneof![
        4 => (1u32..4, 1u32..5, 1u32..3, prop_oneof![Just(0u64), Just(512), Just(1500)],
              prop::option::of(1u64..120), prop_oneof![4 => Just(0u32), 1 => Just(1)], 0usize..2)
            .prop_map(|(nodes, per, cpt, mem, limit, gpus, queue)| Ev::Submit { nodes, per, cpt, mem, limit, gpus, queue }),
        3 => Just(Ev::Schedule),
        3 => (0usize..64).prop_map(Ev::Exit),
        2 => (1u64..40_000).prop_map(Ev::Tick),
        1 => Just(Ev::AnswerKills),
        1 => (0usize..8).prop_map(Ev::Disconnect),
        1 => (0usize..8).prop_map(Ev::Reconnect),
    ]
}

/// Node i: CPUs, memory, features, GPUs.
fn inventory(i: usize) -> Inventory {
    Inventory {
        cpus: [4, 8, 2, 8, 4, 6, 8, 4][i],
        mem_mib: [2048, 4096, 1024, 2048, 4096, 2048, 1024, 2048][i],
        features: if i % 3 == 0 { vec!["fast".into()] } else { vec![] },
        gpus: u32::from(i % 4 == 1),
        addr: format!("10.0.0.{i}"),
        ..Default::default()
    }
}

fn name(i: usize) -> String {
    format!("n{i}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn indexed_reservation_equals_walking_every_node(events in proptest::collection::vec(ev(), 1..120)) {
        let mut core = Core::new(Config { kill_grace_ms: 1000, node_timeout_ms: 20_000, ..Config::default() });
        let mut fx = Fx::default();
        let mut now = Time(1_000_000_000);
        // Two compute environments: the "fast" nodes, tried first, then all.
        let fast = CeDef { name: "fast".into(), enabled: true, selector: NodeSelector::Feature("fast".into()), strategy: launcher_proto::Strategy::BestFit };
        core.on_admin(now, &mut fx, AdminOp::CeCreate(fast)).expect("ce");
        let q = QueueDef { name: "two".into(), priority: 1, enabled: true, ces: vec!["fast".into(), "default".into()], policy: None };
        core.on_admin(now, &mut fx, AdminOp::QueueCreate(q)).expect("queue");
        let queues = ["default", "two"];
        let mut gens: Vec<(NodeId, Option<u64>)> = Vec::new();
        for i in 0..8 {
            let reg = RegisterMsg { name: name(i), inventory: inventory(i), jobs: vec![] };
            let (id, g) = core.on_register(now, &mut fx, reg);
            gens.push((id, Some(g)));
        }
        let mut running: Vec<(NodeId, LaunchMsg)> = Vec::new();
        let mut kills: Vec<(NodeId, JobId, u32)> = Vec::new();
        for (i, ev) in events.into_iter().enumerate() {
            match ev {
                Ev::Submit { nodes, per, cpt, mem, limit, gpus, queue } => {
                    let spec = JobSpec {
                        name: format!("j{i}"),
                        queue: queues[queue].into(),
                        nodes,
                        tasks: nodes * per,
                        cpus_per_task: cpt,
                        mem_mib: mem,
                        gpus_per_node: gpus,
                        time_limit_s: limit,
                        command: vec!["true".into()],
                        ..Default::default()
                    };
                    let _: SubmitOutcome = core.on_submit(now, &mut fx, spec, None);
                }
                Ev::Schedule => {
                    core.schedule(now, &mut fx);
                }
                Ev::Exit(pick) if !running.is_empty() => {
                    let job = running[pick % running.len()].1.job;
                    let mine: Vec<(NodeId, LaunchMsg)> = running.iter().filter(|(_, l)| l.job == job).cloned().collect();
                    running.retain(|(_, l)| l.job != job);
                    for (n, l) in mine {
                        for t in &l.tasks {
                            let status = ExitStatus::Code(0);
                            core.on_agent(now, &mut fx, n, FromAgent::TaskExited { job, attempt: l.attempt, rank: t.rank, status });
                        }
                    }
                }
                Ev::Tick(ms) => {
                    now = now.plus_ms(ms);
                    core.on_timeout(now, &mut fx);
                }
                Ev::AnswerKills => {
                    for (n, job, attempt) in std::mem::take(&mut kills) {
                        let dying: Vec<LaunchMsg> = running.iter().filter(|(rn, l)| *rn == n && l.job == job && l.attempt == attempt).map(|(_, l)| l.clone()).collect();
                        running.retain(|(rn, l)| !(*rn == n && l.job == job && l.attempt == attempt));
                        for l in dying {
                            for t in &l.tasks {
                                let status = ExitStatus::Signal(15);
                                core.on_agent(now, &mut fx, n, FromAgent::TaskExited { job, attempt, rank: t.rank, status });
                            }
                        }
                    }
                }
                Ev::Disconnect(i) => {
                    if let (id, Some(g)) = gens[i] {
                        core.on_disconnect(now, id, g);
                        gens[i].1 = None;
                    }
                }
                Ev::Reconnect(i) if gens[i].1.is_none() => {
                    let id = gens[i].0;
                    let jobs = running
                        .iter()
                        .filter(|(n, _)| *n == id)
                        .map(|(_, l)| JobReport { job: l.job, attempt: l.attempt, exits: vec![], running: l.tasks.iter().map(|t| t.rank).collect() })
                        .collect();
                    let (_, g) = core.on_register(now, &mut fx, RegisterMsg { name: name(i), inventory: inventory(i), jobs });
                    gens[i].1 = Some(g);
                }
                _ => {}
            }
            loop {
                let sent = std::mem::take(&mut fx.sent);
                if sent.is_empty() {
                    break;
                }
                for (n, m) in sent {
                    match m {
                        ToAgent::Launch(l)
                            if !running.iter().any(|(rn, rl)| *rn == n && rl.job == l.job && rl.attempt == l.attempt) =>
                        {
                            core.on_agent(now, &mut fx, n, FromAgent::Started { job: l.job, attempt: l.attempt });
                            running.push((n, *l));
                        }
                        ToAgent::Kill(k) => kills.push((n, k.job, k.attempt)),
                        ToAgent::Forget { job, attempt } => {
                            running.retain(|(rn, l)| !(*rn == n && l.job == job && l.attempt == attempt))
                        }
                        _ => {}
                    }
                }
            }
            core.sanity_check();
            check_all(&core, now);
        }
    }
}

/// `Shape::of` (arithmetic) agrees with the block distribution it summarises.
#[test]
fn shape_matches_the_block_distribution() {
    for nodes in 1..12u32 {
        for tasks in 1..60 {
            for cpt in 1..4 {
                let spec = JobSpec { nodes, tasks, cpus_per_task: cpt, mem_mib: 7, ..Default::default() };
                let per = crate::core::tasks_per_node(tasks, nodes);
                let big = per[0];
                let want = Shape {
                    nodes,
                    big: big * cpt,
                    small: per[per.len() - 1] * cpt,
                    extra: per.iter().filter(|&&t| t == big).count() as u32,
                    mem: 7,
                };
                assert_eq!(Shape::of(&spec), want, "{tasks} tasks on {nodes} nodes, {cpt} CPUs each");
            }
        }
    }
}
