//! Scenario and property tests for the pure core. Every message the core
//! emits goes through the real codec, and `sanity_check` runs after every event.

mod common;

use common::*;
use launcher_core::{Record, SubmitOutcome, Time};
use launcher_proto::{
    CancelOutcome, ExitStatus, FromAgent, Inventory, JobId, JobReport, JobSpec, JobState, NodeId, NodeState,
    RegisterMsg, ToAgent,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[test]
fn gang_job_gets_all_nodes_in_one_decision_with_block_ranks() {
    let mut e = Env::new();
    for n in ["n1", "n2", "n3"] {
        e.add_node(n, 2);
    }
    let id = e.submit(spec(3, 6));
    assert_eq!(e.schedule(), 1);
    let l = e.launches();
    assert_eq!(l.len(), 3, "one launch per node");
    let mut ranks: Vec<(String, Vec<u32>)> = l
        .iter()
        .map(|(_, m)| (m.nodelist[m.node_rank as usize].clone(), m.tasks.iter().map(|t| t.rank).collect()))
        .collect();
    ranks.sort();
    assert_eq!(ranks, vec![("n1".into(), vec![0, 1]), ("n2".into(), vec![2, 3]), ("n3".into(), vec![4, 5])]);
    assert_eq!(e.state(id), JobState::Starting);
    e.run_all(&l, |_| 0);
    let info = e.core.job_info(id).unwrap();
    assert_eq!(info.state, JobState::Succeeded);
    assert_eq!(info.exit_code, Some(0));
    assert!(e.core.node_infos().iter().all(|n| n.state == NodeState::Idle));
}

#[test]
fn a_job_waits_until_all_its_nodes_are_free_and_blocks_fifo() {
    let mut e = Env::new();
    for n in ["a", "b", "c"] {
        e.add_node(n, 1);
    }
    let small = e.submit(spec(1, 1));
    let gang = e.submit(spec(3, 3));
    let after = e.submit(spec(1, 1));
    assert_eq!(e.schedule(), 1, "only the small job fits; the gang job waits; FIFO holds the rest");
    let l = e.launches();
    assert_eq!(l[0].1.job, small);
    let info = e.core.job_info(gang).unwrap();
    assert_eq!(info.reason.as_deref(), Some("Resources"));
    assert!(info.reason_text.unwrap().contains("3 node(s)"));
    // It would fit on a free node, but without a time limit it could delay the gang job.
    assert_eq!(e.core.job_info(after).unwrap().reason.as_deref(), Some("BackfillReserved"));
    e.run_all(&l, |_| 0);
    assert_eq!(e.schedule(), 1);
    let l = e.launches();
    assert_eq!(l.len(), 3);
    assert!(l.iter().all(|(_, m)| m.job == gang));
}

#[test]
fn one_failing_rank_fails_the_job_and_terminates_the_rest() {
    let mut e = Env::new();
    e.add_node("a", 2);
    e.add_node("b", 2);
    let id = e.submit(spec(2, 4));
    e.schedule();
    let l = e.launches();
    for (n, m) in &l {
        e.agent(*n, FromAgent::Started { job: id, attempt: m.attempt });
    }
    assert_eq!(e.state(id), JobState::Running);
    let (nb, _) = l.iter().find(|(_, m)| m.tasks.iter().any(|t| t.rank == 3)).unwrap();
    e.agent(*nb, FromAgent::TaskExited { job: id, attempt: 1, rank: 3, status: ExitStatus::Code(7) });
    let kills: Vec<NodeId> = e.fx.sent.iter().filter(|(_, m)| matches!(m, ToAgent::Kill(_))).map(|(n, _)| *n).collect();
    assert_eq!(kills.len(), 2, "every node with live tasks is told to stop");
    for r in [0u32, 1, 2] {
        let n = l.iter().find(|(_, m)| m.tasks.iter().any(|t| t.rank == r)).unwrap().0;
        e.agent(n, FromAgent::TaskExited { job: id, attempt: 1, rank: r, status: ExitStatus::Signal(15) });
    }
    let info = e.core.job_info(id).unwrap();
    assert_eq!(info.state, JobState::Failed);
    assert_eq!(info.reason.as_deref(), Some("NonZeroExit"));
    assert!(info.reason_text.unwrap().contains("rank 3 ended with exit 7"));
    assert_eq!(info.exit_code, Some(7), "the failing rank's code, not the 143 of the ranks terminated because of it");
}

#[test]
fn impossible_job_is_set_aside_and_does_not_block_the_queue() {
    let mut e = Env::new();
    e.add_node("a", 2);
    let huge = e.submit(spec(5, 5));
    let ok = e.submit(spec(1, 1));
    assert_eq!(e.schedule(), 1);
    let info = e.core.job_info(huge).unwrap();
    assert_eq!(info.reason.as_deref(), Some("NoEligibleNodes"));
    assert!(info.reason_text.unwrap().contains("needs 5 node(s)"));
    assert_eq!(e.launches()[0].1.job, ok);
    for n in ["b", "c", "d", "e"] {
        e.add_node(n, 2);
    }
    // Enough nodes joined: it is back in line, first, and starts on all five.
    assert_eq!(e.core.job_info(huge).unwrap().reason.as_deref(), Some("Resources"));
    assert_eq!(e.schedule(), 1);
    assert_eq!(e.launches().len(), 5);
    assert_eq!(e.state(huge), JobState::Starting);
}

#[test]
fn cancel_pending_and_running() {
    let mut e = Env::new();
    e.add_node("a", 1);
    let run = e.submit(spec(1, 1));
    let wait = e.submit(spec(1, 1));
    e.schedule();
    let l = e.launches();
    let out = e.core.on_cancel(e.now, &mut e.fx, &[wait, run, JobId(99)]);
    e.core.sanity_check();
    assert_eq!(
        out,
        vec![(wait, CancelOutcome::Cancelled), (run, CancelOutcome::Terminating), (JobId(99), CancelOutcome::NotFound)]
    );
    assert_eq!(e.state(wait), JobState::Cancelled);
    assert!(e.fx.sent.iter().any(|(_, m)| matches!(m, ToAgent::Kill(k) if k.job == run)));
    e.agent(l[0].0, FromAgent::TaskExited { job: run, attempt: 1, rank: 0, status: ExitStatus::Signal(15) });
    let info = e.core.job_info(run).unwrap();
    assert_eq!((info.state, info.reason.as_deref()), (JobState::Failed, Some("Cancelled")));
}

#[test]
fn time_limit_terminates_the_attempt() {
    let mut e = Env::new();
    e.add_node("a", 1);
    let mut s = spec(1, 1);
    s.time_limit_s = Some(2);
    let id = e.submit(s);
    e.schedule();
    let l = e.launches();
    e.run_all(&[], |_| 0);
    e.agent(l[0].0, FromAgent::Started { job: id, attempt: 1 });
    e.tick(1000);
    assert!(e.fx.sent.is_empty());
    assert_eq!(e.core.next_timeout(), Some(Time(1_000_000).plus_ms(2000)));
    e.tick(1000);
    assert!(matches!(&e.fx.sent[0].1, ToAgent::Kill(k) if k.reason == launcher_proto::KillReason::Timeout));
    e.agent(l[0].0, FromAgent::TaskExited { job: id, attempt: 1, rank: 0, status: ExitStatus::Code(0) });
    let info = e.core.job_info(id).unwrap();
    assert_eq!((info.state, info.reason.as_deref()), (JobState::Failed, Some("Timeout")));
}

#[test]
fn restart_readopts_running_tasks_and_relaunches_undelivered_ones() {
    let mut e = Env::new();
    let a = e.add_node("a", 1);
    e.add_node("b", 1);
    let j1 = e.submit(spec(1, 1));
    let j2 = e.submit(spec(1, 1));
    e.schedule();
    let l = e.launches();
    let (n1, l1) = l.iter().find(|(_, m)| m.job == j1).unwrap().clone();
    e.agent(n1, FromAgent::Started { job: j1, attempt: 1 });
    // Persist everything and restart from the records, as the store would.
    let mut core = restore_from(e.core.config().clone(), e.now, &e.fx.persisted);
    core.sanity_check();
    assert_eq!(core.job_info(j1).unwrap().state, JobState::Running);
    let mut fx = Rec::default();
    // Node of j1 comes back still running it: adopted, not relaunched.
    let n1_name = l1.nodelist[0].clone();
    let reg = RegisterMsg {
        name: n1_name,
        inventory: Inventory { cpus: 1, mem_mib: 1024, addr: "10.0.0.1".into(), ..Default::default() },
        jobs: vec![JobReport { job: j1, attempt: 1, exits: vec![], running: vec![0] }],
    };
    let (id1, _) = core.on_register(e.now, &mut fx, reg);
    assert!(!fx.sent.iter().any(|(_, m)| matches!(m, ToAgent::Launch(_))), "running job adopted, not relaunched");
    // The other node never got j2's launch (we "crashed" first): it is sent again.
    let other = if id1 == a { "b" } else { "a" };
    let reg = RegisterMsg {
        name: other.into(),
        inventory: Inventory { cpus: 1, mem_mib: 1024, addr: "10.0.0.2".into(), ..Default::default() },
        jobs: vec![],
    };
    fx.sent.clear();
    core.on_register(e.now, &mut fx, reg);
    assert!(fx.sent.iter().any(|(_, m)| matches!(m, ToAgent::Launch(l) if l.job == j2)));
    core.sanity_check();
    // Exits reported twice (before and after a reconnect) count once.
    core.on_agent(
        e.now,
        &mut fx,
        id1,
        FromAgent::TaskExited { job: j1, attempt: 1, rank: 0, status: ExitStatus::Code(0) },
    );
    core.on_agent(
        e.now,
        &mut fx,
        id1,
        FromAgent::TaskExited { job: j1, attempt: 1, rank: 0, status: ExitStatus::Code(1) },
    );
    assert_eq!(core.job_info(j1).unwrap().state, JobState::Succeeded);
    core.sanity_check();
}

#[test]
fn node_timeout_fails_its_jobs_and_stops_their_other_nodes() {
    let mut e = Env::new();
    let a = e.add_node("a", 1);
    e.add_node("b", 1);
    let id = e.submit(spec(2, 2));
    e.schedule();
    let l = e.launches();
    e.run_all(&[], |_| 0);
    for (n, m) in &l {
        e.agent(*n, FromAgent::Started { job: id, attempt: m.attempt });
    }
    e.core.on_disconnect(e.now, a, 1);
    e.tick(5_000);
    assert_eq!(e.state(id), JobState::Running, "within the node timeout the job is kept");
    let info = e.core.job_info(id).unwrap();
    assert_eq!(info.reason.as_deref(), Some("NodeUnreachable"), "show says why a running job may be stuck");
    assert!(info.reason_text.unwrap().starts_with("a stopped answering;"));
    e.tick(5_000);
    assert!(e.fx.sent.iter().any(|(_, m)| matches!(m, ToAgent::Kill(_))), "the surviving node is told to stop");
    let b_id = e.nodes["b"];
    let rank_b = l.iter().find(|(n, _)| *n == b_id).unwrap().1.tasks[0].rank;
    e.agent(b_id, FromAgent::TaskExited { job: id, attempt: 1, rank: rank_b, status: ExitStatus::Signal(15) });
    let info = e.core.job_info(id).unwrap();
    assert_eq!((info.state, info.reason.as_deref()), (JobState::Failed, Some("NodeFail")));
    assert!(e.core.node_infos().iter().any(|n| n.name == "a" && n.state == NodeState::Down));
}

#[test]
fn duplicate_idempotency_key_returns_the_same_job() {
    let mut e = Env::new();
    let a = e.core.on_submit(e.now, &mut e.fx, spec(1, 1), Some(42));
    let b = e.core.on_submit(e.now, &mut e.fx, spec(1, 1), Some(42));
    let SubmitOutcome::Accepted(id) = a else { panic!() };
    assert_eq!(b, SubmitOutcome::Duplicate(id));
    assert_eq!(e.core.job_count(), 1);
}

#[test]
fn invalid_and_unknown_queue_rejected_without_change() {
    let mut e = Env::new();
    let mut s = spec(1, 1);
    s.queue = "nope".into();
    let out = e.core.on_submit(e.now, &mut e.fx, s, None);
    assert!(matches!(out, SubmitOutcome::Rejected(ref m) if m.contains("unknown queue 'nope'")), "{out:?}");
    let out = e.core.on_submit(e.now, &mut e.fx, spec(3, 2), None);
    assert!(matches!(out, SubmitOutcome::Rejected(_)));
    assert_eq!(e.core.job_count(), 0);
    assert!(e.fx.persisted.is_empty());
}

// ----------------------------------------------------------------- property

#[derive(Debug, Clone)]
enum Ev {
    Submit { nodes: u32, tasks: u32, cpus: u32 },
    Schedule,
    Start(usize),
    Exit { pick: usize, code: i32 },
    Cancel(usize),
    Disconnect(usize),
    Reconnect(usize),
    Tick(u64),
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        (1u32..4, 0u32..4, 1u32..3).prop_map(|(n, extra, c)| Ev::Submit { nodes: n, tasks: n + extra, cpus: c }),
        Just(Ev::Schedule),
        Just(Ev::Schedule),
        (0usize..64).prop_map(Ev::Start),
        (0usize..64, prop_oneof![Just(0), Just(0), Just(1)]).prop_map(|(p, c)| Ev::Exit { pick: p, code: c }),
        (0usize..64).prop_map(Ev::Cancel),
        (0usize..4).prop_map(Ev::Disconnect),
        (0usize..4).prop_map(Ev::Reconnect),
        (1u64..20_000).prop_map(Ev::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_event_sequences_keep_invariants(events in proptest::collection::vec(ev(), 1..120)) {
        let mut e = Env::new();
        let names = ["a", "b", "c", "d"];
        let mut gens = BTreeMap::new();
        for n in names {
            let reg = RegisterMsg { name: n.into(), inventory: Inventory { cpus: 4, mem_mib: 1024, ..Default::default() }, jobs: vec![] };
            let (id, g) = e.core.on_register(e.now, &mut e.fx, reg);
            gens.insert(n, (id, g));
        }
        // Live tasks per node: (job, attempt, rank).
        let mut live: Vec<(NodeId, JobId, u32, u32)> = Vec::new();
        let mut launched: Vec<(NodeId, launcher_proto::LaunchMsg)> = Vec::new();
        for ev in events {
            match ev {
                Ev::Submit { nodes, tasks, cpus } => {
                    let mut s = spec(nodes, tasks);
                    s.cpus_per_task = cpus;
                    e.core.on_submit(e.now, &mut e.fx, s, None);
                }
                Ev::Schedule => { e.core.schedule(e.now, &mut e.fx); }
                Ev::Start(i) if !launched.is_empty() => {
                    let (n, l) = launched.remove(i % launched.len());
                    e.core.on_agent(e.now, &mut e.fx, n, FromAgent::Started { job: l.job, attempt: l.attempt });
                    for t in &l.tasks { live.push((n, l.job, l.attempt, t.rank)); }
                }
                Ev::Exit { pick, code } if !live.is_empty() => {
                    let (n, j, a, r) = live.remove(pick % live.len());
                    e.core.on_agent(e.now, &mut e.fx, n, FromAgent::TaskExited { job: j, attempt: a, rank: r, status: ExitStatus::Code(code) });
                }
                Ev::Cancel(i) => {
                    let id = JobId(1 + (i as u64 % 64));
                    e.core.on_cancel(e.now, &mut e.fx, &[id]);
                }
                Ev::Disconnect(i) => {
                    let (id, g) = gens[names[i]];
                    e.core.on_disconnect(e.now, id, g);
                }
                Ev::Reconnect(i) => {
                    let (id, _) = gens[names[i]];
                    let jobs: Vec<JobReport> = {
                        let mut by: BTreeMap<(JobId, u32), Vec<u32>> = BTreeMap::new();
                        for (n, j, a, r) in &live { if *n == id { by.entry((*j, *a)).or_default().push(*r); } }
                        by.into_iter().map(|((job, attempt), running)| JobReport { job, attempt, exits: vec![], running }).collect()
                    };
                    let reg = RegisterMsg { name: names[i].into(), inventory: Inventory { cpus: 4, mem_mib: 1024, ..Default::default() }, jobs };
                    let (id2, g) = e.core.on_register(e.now, &mut e.fx, reg);
                    gens.insert(names[i], (id2, g));
                }
                Ev::Tick(ms) => { e.now = e.now.plus_ms(ms); e.core.on_timeout(e.now, &mut e.fx); }
                _ => {}
            }
            e.core.sanity_check();
            while !e.fx.sent.is_empty() {
              let sent: Vec<_> = e.fx.sent.drain(..).collect();
              for (n, m) in sent {
                match m {
                    ToAgent::Launch(l) => launched.push((n, *l)),
                    ToAgent::Kill(k) => {
                        // The agent obeys: its tasks of that attempt die by SIGTERM.
                        let dying: Vec<_> = live.iter().filter(|(ln, j, a, _)| *ln == n && *j == k.job && *a == k.attempt).cloned().collect();
                        live.retain(|(ln, j, a, _)| !(*ln == n && *j == k.job && *a == k.attempt));
                        launched.retain(|(ln, l)| !(*ln == n && l.job == k.job));
                        for (n, j, a, r) in dying {
                            e.core.on_agent(e.now, &mut e.fx, n, FromAgent::TaskExited { job: j, attempt: a, rank: r, status: ExitStatus::Signal(15) });
                        }
                    }
                    _ => {}
                }
              }
            }
            e.core.sanity_check();
        }
    }
}

#[test]
fn pmi_fence_completes_when_every_node_arrived_and_merges_in_node_order() {
    let mut e = Env::new();
    for n in ["a", "b", "c"] {
        e.add_node(n, 2);
    }
    let id = e.submit(spec(3, 3));
    e.schedule();
    let l = e.launches();
    for (n, m) in &l {
        e.agent(*n, FromAgent::Started { job: id, attempt: m.attempt });
    }
    // Arrive in reverse node order: the answer is still in node-rank order.
    let mut by_rank: Vec<(u32, NodeId)> = l.iter().map(|(n, m)| (m.node_rank, *n)).collect();
    by_rank.sort();
    for (i, &(nr, node)) in by_rank.iter().rev().enumerate() {
        let puts = vec![(format!("k{nr}"), format!("v{nr}"))];
        e.agent(node, FromAgent::Fence { job: id, attempt: 1, seq: 1, span: 1, puts });
        let done: Vec<_> = e.fx.sent.iter().filter(|(_, m)| matches!(m, ToAgent::FenceDone { .. })).collect();
        if i < 2 {
            assert!(done.is_empty(), "no answer before every node arrived");
        } else {
            assert_eq!(done.len(), 3, "every node gets the result");
            for (_, m) in done {
                let ToAgent::FenceDone { seq, puts, .. } = m else { unreachable!() };
                assert_eq!(*seq, 1);
                let keys: Vec<&str> = puts.iter().map(|(k, _)| k.as_str()).collect();
                assert_eq!(keys, vec!["k0", "k1", "k2"]);
            }
        }
    }
    // A fence left half-way is dropped when the job ends (sanity_check verifies).
    e.agent(by_rank[0].1, FromAgent::Fence { job: id, attempt: 1, seq: 2, span: 1, puts: vec![] });
    e.agent(by_rank[1].1, FromAgent::MpiAbort { job: id, attempt: 1, rank: 1, code: 5, message: None });
    let kills = e.fx.sent.iter().filter(|(_, m)| matches!(m, ToAgent::Kill(_))).count();
    assert_eq!(kills, 3, "MPI_Abort terminates the job on every node");
    for (n, m) in &l {
        for t in &m.tasks {
            e.agent(*n, FromAgent::TaskExited { job: id, attempt: 1, rank: t.rank, status: ExitStatus::Signal(15) });
        }
    }
    let info = e.core.job_info(id).unwrap();
    assert_eq!((info.state, info.reason.as_deref(), info.exit_code), (JobState::Failed, Some("MpiAbort"), Some(5)));
    assert!(info.reason_text.unwrap().contains("rank 1 called MPI_Abort with code 5"));
}

/// Start a job of `tasks` ranks over `nodes` fresh nodes; returns the job and (node, its ranks) in node order.
fn started(e: &mut Env, nodes: u32, tasks: u32, grace: Option<u32>) -> (JobId, Vec<(NodeId, Vec<u32>)>) {
    for i in 0..nodes {
        e.add_node(&format!("m{i}"), tasks);
    }
    let id = e.submit(JobSpec { finalize_grace_s: grace, ..spec(nodes, tasks) });
    e.schedule();
    let mut l = e.launches();
    l.sort_by_key(|(_, m)| m.node_rank);
    for (n, m) in &l {
        e.agent(*n, FromAgent::Started { job: id, attempt: m.attempt });
    }
    (id, l.into_iter().map(|(n, m)| (n, m.tasks.iter().map(|t| t.rank).collect())).collect())
}

fn graces(e: &Env) -> Vec<(NodeId, u64)> {
    e.fx.sent
        .iter()
        .filter_map(|(n, m)| match m {
            ToAgent::FinalizeGrace { grace_ms, .. } => Some((*n, *grace_ms)),
            _ => None,
        })
        .collect()
}

#[test]
fn finalize_grace_starts_once_every_rank_finalized_and_one_exited_0() {
    let mut e = Env::new();
    let (id, nodes) = started(&mut e, 2, 4, Some(3));
    let ((a, _), (b, _)) = (nodes[0].clone(), nodes[1].clone());
    e.agent(a, FromAgent::PmiFinalized { job: id, attempt: 1, ranks: vec![0, 1] });
    e.agent(a, FromAgent::TaskExited { job: id, attempt: 1, rank: 0, status: ExitStatus::Code(0) });
    assert!(graces(&e).is_empty(), "ranks 2 and 3 have not finalized");
    e.agent(b, FromAgent::PmiFinalized { job: id, attempt: 1, ranks: vec![2, 3] });
    assert_eq!(graces(&e), vec![(a, 3000), (b, 3000)], "both nodes still run finalized ranks");
    assert!(e
        .fx
        .persisted
        .iter()
        .any(|r| matches!(r, Record::Event { text, .. } if text.contains("--finalize-grace 3s"))));
    // Sent once; the lingering ranks come back as killed-after-finalize, a success.
    e.agent(a, FromAgent::TaskExited { job: id, attempt: 1, rank: 1, status: ExitStatus::Code(0) });
    for r in [2, 3] {
        let status = ExitStatus::KilledAfterFinalize { grace_s: 3 };
        e.agent(b, FromAgent::TaskExited { job: id, attempt: 1, rank: r, status });
    }
    assert_eq!(graces(&e).len(), 2);
    let info = e.core.job_info(id).unwrap();
    assert_eq!((info.state, info.exit_code), (JobState::Succeeded, Some(0)));
    assert!(info.tasks[2].exit.as_ref().unwrap().to_string().contains("killed after --finalize-grace 3s"));

    // --finalize-grace 0: never.
    let mut e = Env::new();
    let (id, nodes) = started(&mut e, 1, 2, Some(0));
    e.agent(nodes[0].0, FromAgent::PmiFinalized { job: id, attempt: 1, ranks: vec![0, 1] });
    e.agent(nodes[0].0, FromAgent::TaskExited { job: id, attempt: 1, rank: 0, status: ExitStatus::Code(0) });
    assert!(graces(&e).is_empty());
}

#[test]
fn a_rank_gone_before_finalize_fails_the_job_even_with_exit_0() {
    let mut e = Env::new();
    let (id, nodes) = started(&mut e, 2, 4, None);
    let b = nodes[1].0;
    e.agent(b, FromAgent::PmiExitBeforeFinalize { job: id, attempt: 1, rank: 2, status: ExitStatus::Code(0) });
    let kills: Vec<NodeId> = e.fx.sent.iter().filter(|(_, m)| matches!(m, ToAgent::Kill(_))).map(|(n, _)| *n).collect();
    assert_eq!(kills.len(), 2, "the job is stopped on every node at once");
    for (n, ranks) in &nodes {
        for &r in ranks {
            let status = if r == 2 { ExitStatus::Code(0) } else { ExitStatus::Signal(15) };
            e.agent(*n, FromAgent::TaskExited { job: id, attempt: 1, rank: r, status });
        }
    }
    let info = e.core.job_info(id).unwrap();
    assert_eq!(
        (info.state, info.reason.as_deref(), info.exit_code),
        (JobState::Failed, Some("ExitBeforeFinalize"), Some(1))
    );
    assert!(info.reason_text.unwrap().contains("rank 2 ended with exit 0 after MPI_Init but before MPI_Finalize"));
}

#[test]
fn fence_contributions_may_cover_subtrees() {
    // What a fence tree over agents would send: subtree roots 0 and 2 each cover two node ranks.
    let mut e = Env::new();
    let (id, nodes) = started(&mut e, 4, 4, None);
    let delta =
        |first: usize| -> Vec<(String, String)> { (first..first + 2).map(|r| (format!("k{r}"), "v".into())).collect() };
    e.agent(nodes[2].0, FromAgent::Fence { job: id, attempt: 1, seq: 1, span: 2, puts: delta(2) });
    e.agent(nodes[0].0, FromAgent::Fence { job: id, attempt: 1, seq: 1, span: 2, puts: delta(0) });
    let done: Vec<(NodeId, Vec<String>)> =
        e.fx.sent
            .iter()
            .filter_map(|(n, m)| match m {
                ToAgent::FenceDone { puts, .. } => Some((*n, puts.iter().map(|(k, _)| k.clone()).collect())),
                _ => None,
            })
            .collect();
    let order: Vec<String> = (0..4).map(|r| format!("k{r}")).collect();
    assert_eq!(done, vec![(nodes[0].0, order.clone()), (nodes[2].0, order)], "only the contributors are answered");
}
