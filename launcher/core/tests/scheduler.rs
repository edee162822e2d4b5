//! Scenario tests for the scheduler rules: queues and compute environments,
//! strategies, EASY backfill, fair share, dependencies, arrays, retries.
//! `sanity_check` (which includes "the reservation is never delayed") runs
//! after every event through the `Env` helpers.

mod common;

use common::*;
use launcher_core::{Record, SubmitOutcome};
use launcher_proto::{
    AdminOp, ArraySpec, CeDef, DepKind, Dependency, ExitAction, ExitRule, FromAgent, Inventory, JobId, JobSpec,
    JobState, LaunchMsg, NodeId, NodeSelector, PolicyDef, QueueDef, RegisterMsg, RetrySpec, ShareWeight,
    Strategy as CeStrategy, ToAgent,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn admin(e: &mut Env, op: AdminOp) {
    e.core.on_admin(e.now, &mut e.fx, op).expect("admin op accepted");
    e.core.sanity_check();
}

fn node_with(e: &mut Env, name: &str, cpus: u32, features: &[&str]) -> NodeId {
    e.register_with(name, cpus, features, vec![])
}

fn timed(nodes: u32, tasks: u32, secs: u64) -> JobSpec {
    JobSpec { time_limit_s: Some(secs), ..spec(nodes, tasks) }
}

fn reason(e: &Env, id: JobId) -> String {
    e.core.job_info(id).unwrap().reason.unwrap_or_default()
}

fn names(e: &Env, l: &LaunchMsg) -> Vec<String> {
    let _ = e;
    l.nodelist.clone()
}

/// Exit every task of one launched job with `code`.
fn finish(e: &mut Env, launches: &[(NodeId, LaunchMsg)], job: JobId, code: i32) {
    let mine: Vec<_> = launches.iter().filter(|(_, l)| l.job == job).cloned().collect();
    assert!(!mine.is_empty(), "job {job} was launched");
    e.run_all(&mine, |_| code);
}

fn queue(name: &str, priority: i32, ces: &[&str], policy: Option<&str>) -> QueueDef {
    QueueDef {
        name: name.into(),
        priority,
        enabled: true,
        ces: ces.iter().map(|s| s.to_string()).collect(),
        policy: policy.map(Into::into),
    }
}

// ------------------------------------------------------------ queues & CEs

#[test]
fn higher_priority_queue_goes_first_on_a_shared_ce() {
    let mut e = Env::new();
    e.add_node("a", 1);
    admin(&mut e, AdminOp::QueueCreate(queue("low", 1, &["default"], None)));
    admin(&mut e, AdminOp::QueueCreate(queue("high", 10, &["default"], None)));
    let blocker = e.submit(spec(1, 1));
    e.schedule();
    let l = e.launches();
    let low = e.submit(JobSpec { queue: "low".into(), ..spec(1, 1) });
    let high = e.submit(JobSpec { queue: "high".into(), ..spec(1, 1) });
    assert_eq!(e.schedule(), 0);
    finish(&mut e, &l, blocker, 0);
    assert_eq!(e.schedule(), 1);
    let l = e.launches();
    assert_eq!(l[0].1.job, high, "the high-priority queue's job starts first, though submitted later");
    assert_eq!(e.state(low), JobState::Runnable);
}

#[test]
fn disabled_queue_keeps_jobs_runnable_with_a_reason_until_enabled() {
    let mut e = Env::new();
    e.add_node("a", 4);
    let mut q = queue("batch", 1, &["default"], None);
    q.enabled = false;
    admin(&mut e, AdminOp::QueueCreate(q.clone()));
    let j = e.submit(JobSpec { queue: "batch".into(), ..spec(1, 1) });
    assert_eq!(e.schedule(), 0);
    assert_eq!(e.state(j), JobState::Runnable);
    assert_eq!(reason(&e, j), "QueueDisabled");
    q.enabled = true;
    admin(&mut e, AdminOp::QueueUpdate(q));
    assert_eq!(e.schedule(), 1);
}

#[test]
fn jobs_run_only_on_their_queues_ces_tried_in_order() {
    let mut e = Env::new();
    node_with(&mut e, "cpu1", 1, &[]);
    node_with(&mut e, "gpu1", 1, &["gpu"]);
    node_with(&mut e, "gpu2", 1, &["gpu"]);
    admin(
        &mut e,
        AdminOp::CeCreate(CeDef {
            name: "gpus".into(),
            enabled: true,
            selector: NodeSelector::Feature("gpu".into()),
            strategy: CeStrategy::BestFit,
        }),
    );
    admin(
        &mut e,
        AdminOp::CeCreate(CeDef {
            name: "cpus".into(),
            enabled: true,
            selector: NodeSelector::Nodes(vec!["cpu1".into()]),
            strategy: CeStrategy::BestFit,
        }),
    );
    admin(&mut e, AdminOp::QueueCreate(queue("gq", 1, &["gpus", "cpus"], None)));
    let ids: Vec<JobId> = (0..4).map(|_| e.submit(JobSpec { queue: "gq".into(), ..spec(1, 1) })).collect();
    assert_eq!(e.schedule(), 3);
    let l = e.launches();
    let by_job: BTreeMap<JobId, String> = l.iter().map(|(_, m)| (m.job, m.nodelist[0].clone())).collect();
    assert_eq!(by_job[&ids[0]], "gpu1");
    assert_eq!(by_job[&ids[1]], "gpu2");
    assert_eq!(by_job[&ids[2]], "cpu1", "the second CE is used once the first is full");
    assert_eq!(e.state(ids[3]), JobState::Runnable);
    // A 2-node job can never fit in one CE of a queue whose CEs have 1 node each... set aside, not blocking.
    admin(&mut e, AdminOp::QueueCreate(queue("cpuonly", 1, &["cpus"], None)));
    let big = e.submit(JobSpec { queue: "cpuonly".into(), ..spec(2, 2) });
    assert_eq!(reason(&e, big), "NoEligibleNodes");
    assert!(e.core.job_info(big).unwrap().reason_text.unwrap().contains("queue cpuonly"));
    // Deleting a CE a queue uses is refused with the queue's name.
    let err = e.core.on_admin(e.now, &mut e.fx, AdminOp::CeDelete("gpus".into())).unwrap_err();
    assert!(err.contains("queue gq uses"), "{err}");
}

#[test]
fn strategies_pack_spread_and_keep_to_one_switch() {
    for (strategy, want) in
        [(CeStrategy::BestFit, vec!["n2"]), (CeStrategy::Spread, vec!["n1"]), (CeStrategy::Topology, vec!["n2"])]
    {
        let mut e = Env::new();
        node_with(&mut e, "n1", 4, &["switch=s1"]);
        node_with(&mut e, "n2", 4, &["switch=s1"]);
        admin(
            &mut e,
            AdminOp::CeUpdate(CeDef { name: "default".into(), enabled: true, selector: NodeSelector::All, strategy }),
        );
        // Make n2 partly used, so n2 is the fuller node.
        let filler = e.submit(JobSpec { ..spec(1, 3) });
        e.schedule();
        let l = e.launches();
        assert_eq!(l.len(), 1);
        let on = l[0].1.nodelist[0].clone();
        let j = e.submit(spec(1, 1));
        e.schedule();
        let l2 = e.launches();
        let got = names(&e, &l2.iter().find(|(_, m)| m.job == j).unwrap().1);
        let _ = filler;
        // Best fit puts the small job next to the filler; spread on the emptier node.
        let expect_same = strategy != CeStrategy::Spread;
        assert_eq!(got[0] == on, expect_same, "{strategy:?}: filler on {on}, small job on {got:?}");
        let _ = &want;
    }
    // Topology: a 2-node job lands under one switch even when best fit would split it.
    let mut e = Env::new();
    node_with(&mut e, "a1", 2, &["switch=A"]);
    node_with(&mut e, "b1", 2, &["switch=B"]);
    node_with(&mut e, "b2", 2, &["switch=B"]);
    node_with(&mut e, "a2", 2, &["switch=A"]);
    admin(
        &mut e,
        AdminOp::CeUpdate(CeDef {
            name: "default".into(),
            enabled: true,
            selector: NodeSelector::All,
            strategy: CeStrategy::Topology,
        }),
    );
    let one = e.submit(spec(1, 1)); // occupies part of a node under some switch
    e.schedule();
    let first = e.launches()[0].1.nodelist[0].clone();
    let j = e.submit(spec(2, 2));
    e.schedule();
    let l = e.launches();
    let got = &l.iter().find(|(_, m)| m.job == j).unwrap().1.nodelist;
    let switch = |n: &str| n.chars().next().unwrap();
    assert_eq!(switch(&got[0]), switch(&got[1]), "both nodes under one switch: {got:?}");
    let _ = (one, first);
}

// ---------------------------------------------------------------- backfill

#[test]
fn easy_backfill_starts_short_jobs_around_the_reservation_only() {
    let mut e = Env::new();
    for n in ["a", "b", "c"] {
        e.add_node(n, 1);
    }
    let long = e.submit(timed(1, 1, 100));
    e.schedule();
    let l_long = e.launches();
    let gang = e.submit(timed(3, 3, 50));
    let fits_before = e.submit(timed(1, 1, 60)); // ends at +60 s, before the long job frees its node at +100 s
    let too_long = e.submit(timed(1, 1, 500));
    let unlimited = e.submit(spec(1, 1));
    assert_eq!(e.schedule(), 1, "only the short job backfills");
    let l = e.launches();
    assert_eq!(l[0].1.job, fits_before);
    assert_eq!(reason(&e, gang), "Resources");
    assert!(e.core.job_info(gang).unwrap().reason_text.unwrap().contains("reserved"));
    assert_eq!(reason(&e, too_long), "BackfillReserved");
    assert_eq!(reason(&e, unlimited), "BackfillReserved");
    // The short job ends; the 1-node gap is still reserved for the gang job.
    finish(&mut e, &l, fits_before, 0);
    assert_eq!(e.schedule(), 0);
    // The long job ends: the gang job gets all three nodes in one decision.
    finish(&mut e, &l_long, long, 0);
    assert_eq!(e.schedule(), 1);
    let l = e.launches();
    assert_eq!(l.len(), 3);
    assert!(l.iter().all(|(_, m)| m.job == gang));
}

#[test]
fn backfill_may_use_nodes_the_reservation_does_not_need() {
    let mut e = Env::new();
    for n in ["a", "b", "c", "d"] {
        e.add_node(n, 1);
    }
    let hold = e.submit(timed(2, 2, 100));
    e.schedule();
    e.launches();
    let gang = e.submit(timed(3, 3, 10)); // needs 3 of 4 nodes: 2 free now, 2 at +100 s → reserves one of those
    let long = e.submit(spec(1, 1)); // no limit: may run only on the free node the reservation leaves out
    assert_eq!(e.schedule(), 1);
    let l = e.launches();
    assert_eq!(l[0].1.job, long);
    assert_eq!(reason(&e, gang), "Resources");
    let _ = hold;
}

// --------------------------------------------------------------- fair share

#[test]
fn fair_share_favours_the_share_with_less_weighted_usage() {
    let mut e = Env::new();
    e.add_node("a", 4);
    admin(
        &mut e,
        AdminOp::PolicyCreate(PolicyDef {
            name: "fs".into(),
            share_decay_s: 0,
            compute_reservation: 0,
            shares: vec![
                ShareWeight { share: "big".into(), weight_x10k: 2_500 }, // weight 0.25: gets 4x
                ShareWeight { share: "small".into(), weight_x10k: 10_000 },
            ],
        }),
    );
    admin(&mut e, AdminOp::QueueCreate(queue("fair", 1, &["default"], Some("fs"))));
    let mut ids = BTreeMap::new();
    for share in ["small", "big"] {
        for _ in 0..5 {
            let id = e.submit(JobSpec { queue: "fair".into(), share: Some(share.into()), ..spec(1, 1) });
            ids.insert(id, share);
        }
    }
    assert_eq!(e.schedule(), 4);
    let l = e.launches();
    let mut count: BTreeMap<&str, u32> = BTreeMap::new();
    for (_, m) in &l {
        *count.entry(ids[&m.job]).or_default() += 1;
    }
    // Usage × weight: big's 0.25 per CPU lets it hold 3 before small's second (1.0 vs 0.75 ...).
    assert!(count["big"] >= 3 && count.get("small").copied().unwrap_or(0) >= 1, "{count:?}");
    let waiting_small = ids.iter().find(|(id, s)| **s == "small" && e.state(**id) == JobState::Runnable).unwrap().0;
    assert!(matches!(reason(&e, *waiting_small).as_str(), "FairShare" | "Priority" | "Resources"));
    // Default share: the submitter's name.
    let j = e.submit(JobSpec { queue: "fair".into(), user: "alice".into(), ..spec(1, 1) });
    assert_eq!(e.core.job_info(j).unwrap().spec.share.as_deref(), Some("alice"));
}

#[test]
fn compute_reservation_keeps_room_for_shares_without_jobs() {
    let mut e = Env::new();
    e.add_node("a", 4);
    admin(
        &mut e,
        AdminOp::PolicyCreate(PolicyDef {
            name: "fs".into(),
            share_decay_s: 0,
            compute_reservation: 50,
            shares: vec![],
        }),
    );
    admin(&mut e, AdminOp::QueueCreate(queue("fair", 1, &["default"], Some("fs"))));
    for _ in 0..4 {
        e.submit(JobSpec { queue: "fair".into(), share: Some("one".into()), ..spec(1, 1) });
    }
    // One active share may use 1 - 0.5^1 = 50 % of 4 CPUs.
    assert_eq!(e.schedule(), 2);
    let late = e.submit(JobSpec { queue: "fair".into(), share: Some("two".into()), ..spec(1, 1) });
    // Two active shares: 1 - 0.25 = 75 % → one more CPU, and share "two" has the lower usage.
    assert_eq!(e.schedule(), 1);
    let l = e.launches();
    assert!(l.iter().any(|(_, m)| m.job == late));
}

#[test]
fn fair_share_history_survives_a_restart() {
    let mut e = Env::new();
    e.add_node("a", 4);
    let fs = PolicyDef { name: "fs".into(), share_decay_s: 3600, compute_reservation: 0, shares: vec![] };
    admin(&mut e, AdminOp::PolicyCreate(fs));
    admin(&mut e, AdminOp::QueueCreate(queue("fair", 1, &["default"], Some("fs"))));
    // Share "heavy" holds all 4 CPUs for 10 minutes.
    let big = e.submit(JobSpec { queue: "fair".into(), share: Some("heavy".into()), ..spec(1, 4) });
    assert_eq!(e.schedule(), 1);
    let l = e.launches();
    e.now = e.now.plus_ms(600_000);
    let version = e.core.share_history_version();
    finish(&mut e, &l, big, 0);
    assert_ne!(e.core.share_history_version(), version, "an ended attempt tells the saver to look");
    let saved = e.core.share_history();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!((saved[0].queue.as_str(), saved[0].share.as_str(), saved[0].at), ("fair", "heavy", e.now));
    assert!((saved[0].hist - 2400.0).abs() < 1e-6, "4 CPUs x 600 s: {saved:?}");

    // A restart 30 s later; "heavy" submits first, then "light". Which starts?
    let later = e.now.plus_ms(30_000);
    let first = |usage: Vec<launcher_core::ShareHistory>| {
        let core = restore_with(e.core.config().clone(), later, &e.fx.persisted, usage.clone());
        assert_eq!(core.share_history(), usage, "restored as measured (it decays when read)");
        let mut r = Env { core, fx: Rec::default(), now: later, nodes: BTreeMap::new() };
        r.add_node("a", 4);
        let h = r.submit(JobSpec { queue: "fair".into(), share: Some("heavy".into()), ..spec(1, 4) });
        r.submit(JobSpec { queue: "fair".into(), share: Some("light".into()), ..spec(1, 4) });
        let why = r.core.job_info(h).unwrap().reason_text.unwrap_or_default();
        assert_eq!(r.schedule(), 1);
        (if r.launches()[0].1.job == h { "heavy" } else { "light" }, why)
    };
    let (went, why) = first(saved);
    assert_eq!(went, "light", "the history came back: the share that used less goes first");
    assert!(why.contains("share \"heavy\" has weighted usage 0.7, above share \"light\" (0.0)"), "{why}");
    // Without it both shares look unused: the tie goes to the first name and the earlier job.
    assert_eq!(first(Vec::new()).0, "heavy");
}

// ------------------------------------------------------------- dependencies

#[test]
fn afterok_afterany_afternotok() {
    let mut e = Env::new();
    e.add_node("a", 4);
    let a = e.submit(spec(1, 1));
    let ok = e.submit(JobSpec { depends: vec![Dependency { kind: DepKind::AfterOk, job: a }], ..spec(1, 1) });
    let any = e.submit(JobSpec { depends: vec![Dependency { kind: DepKind::AfterAny, job: a }], ..spec(1, 1) });
    let notok = e.submit(JobSpec { depends: vec![Dependency { kind: DepKind::AfterNotOk, job: a }], ..spec(1, 1) });
    let chained = e.submit(JobSpec { depends: vec![Dependency { kind: DepKind::AfterOk, job: notok }], ..spec(1, 1) });
    for j in [ok, any, notok, chained] {
        assert_eq!(e.state(j), JobState::Pending);
        assert_eq!(reason(&e, j), "Dependency");
    }
    assert!(e.core.job_info(ok).unwrap().reason_text.unwrap().contains(&format!("afterok:{a}")));
    assert_eq!(e.schedule(), 1);
    let l = e.launches();
    finish(&mut e, &l, a, 0);
    assert_eq!(e.state(ok), JobState::Runnable);
    assert_eq!(e.state(any), JobState::Runnable);
    assert_eq!(e.state(notok), JobState::Failed);
    assert_eq!(reason(&e, notok), "DependencyNeverSatisfied");
    assert_eq!(e.state(chained), JobState::Failed, "a never-satisfiable dependency cascades");
    assert_eq!(e.schedule(), 2);
}

#[test]
fn dependency_on_unknown_job_is_rejected_and_nothing_changes() {
    let mut e = Env::new();
    let before = e.core.job_count();
    let s = JobSpec { depends: vec![Dependency { kind: DepKind::AfterOk, job: JobId(99) }], ..spec(1, 1) };
    match e.core.on_submit(e.now, &mut e.fx, s, None) {
        SubmitOutcome::Rejected(m) => assert!(m.contains("no job 99"), "{m}"),
        o => panic!("{o:?}"),
    }
    assert_eq!(e.core.job_count(), before);
    assert!(e.fx.persisted.is_empty());
}

#[test]
fn a_long_dependency_chain_fails_without_recursion() {
    let mut e = Env::new();
    e.add_node("a", 1);
    let first = e.submit(spec(1, 1));
    let mut prev = first;
    for _ in 0..20_000 {
        let s = JobSpec { depends: vec![Dependency { kind: DepKind::AfterOk, job: prev }], ..spec(1, 1) };
        prev = match e.core.on_submit(e.now, &mut e.fx, s, None) {
            SubmitOutcome::Accepted(id) => id,
            o => panic!("{o:?}"),
        };
    }
    e.core.on_cancel(e.now, &mut e.fx, &[first]);
    assert_eq!(e.state(prev), JobState::Failed);
    e.core.sanity_check();
}

// ------------------------------------------------------------------- arrays

fn array(start: u32, end: u32, max: Option<u32>, sequential: bool) -> Option<ArraySpec> {
    Some(ArraySpec { start, end, step: 1, max_running: max, sequential })
}

#[test]
fn array_children_run_under_their_cap_and_the_parent_follows_aws_rules() {
    let mut e = Env::new();
    e.add_node("a", 8);
    let p = e.submit(JobSpec { array: array(0, 9, Some(3), false), ..spec(1, 1) });
    assert_eq!(e.state(p), JobState::Pending, "an array parent is never RUNNABLE");
    assert_eq!(e.schedule(), 3, "%3 caps concurrency");
    let l = e.launches();
    let kids: Vec<JobId> = l.iter().map(|(_, m)| m.job).collect();
    assert_eq!(kids, vec![p.child(0), p.child(1), p.child(2)]);
    assert_eq!(e.core.job_info(p.child(5)).unwrap().reason.as_deref(), Some("ArrayTaskLimit"));
    e.run_all(&l, |_| 0);
    let mut rounds = 0;
    while e.core.job_info(p).unwrap().state == JobState::Pending {
        e.schedule();
        let l = e.launches();
        let codes = |r: u32| r as i32; // rank 0 → exit 0
        e.run_all(&l, codes);
        rounds += 1;
        assert!(rounds < 10);
    }
    let info = e.core.job_info(p).unwrap();
    assert_eq!(info.state, JobState::Succeeded);
    assert_eq!(info.array.unwrap().succeeded, 10);
    assert_eq!(e.core.job_info(p.child(7)).unwrap().state, JobState::Succeeded);
}

#[test]
fn a_failed_child_fails_the_parent_and_cancel_reaches_every_child() {
    let mut e = Env::new();
    e.add_node("a", 2);
    let p = e.submit(JobSpec { array: array(1, 4, None, false), ..spec(1, 1) });
    e.schedule();
    let l = e.launches();
    assert_eq!(l.len(), 2);
    finish(&mut e, &l, p.child(1), 0);
    finish(&mut e, &l, p.child(2), 9);
    e.schedule();
    let l = e.launches();
    finish(&mut e, &l, p.child(3), 0);
    finish(&mut e, &l, p.child(4), 0);
    let info = e.core.job_info(p).unwrap();
    assert_eq!(info.state, JobState::Failed);
    assert_eq!(info.reason.as_deref(), Some("ChildrenFailed"));
    assert_eq!(info.exit_code, Some(9));
    // Cancel: waiting children CANCELLED, running ones terminated.
    let q = e.submit(JobSpec { array: array(0, 5, None, false), ..spec(1, 1) });
    e.schedule();
    let l = e.launches();
    assert_eq!(l.len(), 2);
    e.core.on_cancel(e.now, &mut e.fx, &[q]);
    e.core.sanity_check();
    assert_eq!(e.core.job_info(q.child(4)).unwrap().state, JobState::Cancelled);
    let kills = e.fx.sent.iter().filter(|(_, m)| matches!(m, ToAgent::Kill(_))).count();
    assert_eq!(kills, 2);
    for (n, m) in &l {
        e.agent(
            *n,
            FromAgent::TaskExited { job: m.job, attempt: 1, rank: 0, status: launcher_proto::ExitStatus::Signal(15) },
        );
    }
    assert_eq!(e.core.job_info(q).unwrap().state, JobState::Failed);
}

#[test]
fn sequential_and_n_to_n() {
    let mut e = Env::new();
    e.add_node("a", 8);
    let seq = e.submit(JobSpec { array: array(0, 3, None, true), ..spec(1, 1) });
    let corr = e.submit(JobSpec {
        array: array(0, 3, None, false),
        depends: vec![Dependency { kind: DepKind::AfterCorr, job: seq }],
        ..spec(1, 1)
    });
    assert_eq!(e.schedule(), 1, "SEQUENTIAL: only child 0; N_TO_N: nothing yet");
    let l = e.launches();
    assert_eq!(l[0].1.job, seq.child(0));
    assert_eq!(e.core.job_info(corr.child(0)).unwrap().reason.as_deref(), Some("Dependency"));
    finish(&mut e, &l, seq.child(0), 0);
    assert_eq!(e.schedule(), 2, "seq:1 and corr:0 become runnable together");
    let l = e.launches();
    let started: BTreeSet<JobId> = l.iter().map(|(_, m)| m.job).collect();
    assert_eq!(started, BTreeSet::from([seq.child(1), corr.child(0)]));
    // seq:1 fails: seq:2, seq:3 can never run, and neither can corr:1..3.
    finish(&mut e, &l, seq.child(1), 1);
    finish(&mut e, &l, corr.child(0), 0);
    assert_eq!(e.core.job_info(seq.child(3)).unwrap().state, JobState::Failed);
    assert_eq!(e.core.job_info(corr.child(2)).unwrap().state, JobState::Failed);
    assert_eq!(e.core.job_info(seq).unwrap().state, JobState::Failed);
    assert_eq!(e.core.job_info(corr).unwrap().state, JobState::Failed);
    assert_eq!(e.core.job_info(corr.child(0)).unwrap().state, JobState::Succeeded);
}

#[test]
fn a_huge_array_is_one_record() {
    let mut e = Env::new();
    e.add_node("a", 2);
    let p = e.submit(JobSpec { array: array(0, 99_999, None, false), ..spec(1, 1) });
    let records = e.fx.persisted.iter().filter(|r| matches!(r, Record::Job(_))).count();
    assert!(records <= 2, "{records} job records written at submit");
    // Child records before the parent's full record are subsumed by it (the
    // store skips them): the submit costs one row.
    let last_job = e.fx.persisted.iter().rposition(|r| matches!(r, Record::Job(_))).unwrap();
    assert!(!e.fx.persisted[last_job..].iter().any(|r| matches!(r, Record::Child { .. })));
    assert_eq!(e.core.job_count(), 1);
    assert_eq!(e.schedule(), 2);
    assert_eq!(e.core.job_count(), 3, "only running children have full records");
    assert_eq!(e.core.job_info(p).unwrap().array.unwrap().runnable, 99_998);
}

#[test]
fn array_children_survive_a_restart() {
    let mut e = Env::new();
    e.add_node("a", 2);
    let p = e.submit(JobSpec { array: array(0, 4, None, false), ..spec(1, 1) });
    e.schedule();
    let l = e.launches();
    finish(&mut e, &l, p.child(0), 0);
    let core = restore_from(e.core.config().clone(), e.now, &e.fx.persisted);
    core.sanity_check();
    let info = core.job_info(p).unwrap();
    let a = info.array.unwrap();
    assert_eq!((a.succeeded, a.running, a.runnable), (1, 1, 3));
    assert_eq!(core.job_info(p.child(1)).unwrap().state, JobState::Starting, "launched, never confirmed");
}

// ------------------------------------------------------------------ retries

fn retry(attempts: u32, rules: Vec<ExitRule>) -> RetrySpec {
    RetrySpec { attempts, evaluate_on_exit: rules }
}

fn on_code(action: ExitAction, code: &str) -> ExitRule {
    ExitRule { action, on_exit_code: Some(code.into()), on_reason: None, on_status_reason: None }
}

#[test]
fn retries_follow_evaluate_on_exit_and_count_attempts() {
    let mut e = Env::new();
    e.add_node("a", 1);
    let j = e.submit(JobSpec { retry: retry(3, vec![on_code(ExitAction::Retry, "3")]), ..spec(1, 1) });
    for attempt in 1..=2 {
        e.schedule();
        let l = e.launches();
        assert_eq!(l[0].1.attempt, attempt);
        finish(&mut e, &l, j, 3);
        assert_eq!(e.state(j), JobState::Runnable, "attempt {attempt} failed with a retry rule: RUNNABLE again");
    }
    e.schedule();
    let l = e.launches();
    assert_eq!(l[0].1.attempt, 3);
    finish(&mut e, &l, j, 0);
    assert_eq!(e.state(j), JobState::Succeeded);

    let stop = e.submit(JobSpec {
        retry: retry(3, vec![on_code(ExitAction::Exit, "4"), on_code(ExitAction::Retry, "*")]),
        ..spec(1, 1)
    });
    e.schedule();
    let l = e.launches();
    finish(&mut e, &l, stop, 4);
    assert_eq!(e.state(stop), JobState::Failed, "EXIT rule matched");
    assert_eq!(e.core.job_info(stop).unwrap().attempt, 1);
}

#[test]
fn timeouts_and_cancels_are_never_retried() {
    let mut e = Env::new();
    e.add_node("a", 1);
    let j = e.submit(JobSpec { retry: retry(5, vec![]), ..timed(1, 1, 2) });
    e.schedule();
    let l = e.launches();
    e.tick(2_000);
    assert!(e.fx.sent.iter().any(|(_, m)| matches!(m, ToAgent::Kill(_))));
    e.fx.sent.clear();
    finish(&mut e, &l, j, 143);
    assert_eq!(e.state(j), JobState::Failed);
    assert_eq!(reason(&e, j), "Timeout");
    let c = e.submit(JobSpec { retry: retry(5, vec![]), ..spec(1, 1) });
    e.schedule();
    let l = e.launches();
    e.core.on_cancel(e.now, &mut e.fx, &[c]);
    finish(&mut e, &l, c, 143);
    assert_eq!(e.state(c), JobState::Failed);
    assert_eq!(e.core.job_info(c).unwrap().attempt, 1);
}

#[test]
fn array_children_retry_one_by_one() {
    let mut e = Env::new();
    e.add_node("a", 1);
    let p = e.submit(JobSpec { array: array(0, 1, None, false), retry: retry(2, vec![]), ..spec(1, 1) });
    e.schedule();
    let l = e.launches();
    finish(&mut e, &l, p.child(0), 1);
    assert_eq!(e.core.job_info(p.child(0)).unwrap().state, JobState::Runnable);
    e.schedule();
    let l = e.launches();
    assert_eq!(l[0].1.job, p.child(0), "the retried child goes first (lowest index)");
    assert_eq!(l[0].1.attempt, 2);
    finish(&mut e, &l, p.child(0), 0);
    e.schedule();
    let l = e.launches();
    finish(&mut e, &l, p.child(1), 0);
    assert_eq!(e.core.job_info(p).unwrap().state, JobState::Succeeded);
}

// ----------------------------------------------------------------- property

#[derive(Debug, Clone)]
enum Ev {
    Submit { nodes: u32, queue: usize, limit: Option<u64>, dep: Option<(usize, u8)>, array: Option<(u32, bool)> },
    Schedule,
    Exit { pick: usize, code: i32 },
    Cancel(usize),
    Toggle(usize),
    Tick(u64),
    Restart,
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        (
            1u32..4,
            0usize..3,
            prop::option::of(1u64..60),
            prop::option::of((0usize..64, 0u8..3)),
            prop::option::of((1u32..6, any::<bool>())),
        )
            .prop_map(|(nodes, queue, limit, dep, array)| Ev::Submit { nodes, queue, limit, dep, array }),
        Just(Ev::Schedule),
        Just(Ev::Schedule),
        (0usize..64, prop_oneof![Just(0), Just(0), Just(3)]).prop_map(|(pick, code)| Ev::Exit { pick, code }),
        (0usize..64).prop_map(Ev::Cancel),
        (0usize..3).prop_map(Ev::Toggle),
        (1u64..20_000).prop_map(Ev::Tick),
        Just(Ev::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]
    /// Random submissions (gangs, limits, deps, arrays, retries, three queues
    /// of which one is fair share), exits, cancels, queue toggles, time and
    /// restarts: every invariant holds after every event, and a restarted
    /// core agrees with the one it replaces.
    #[test]
    fn random_scheduler_sequences_keep_invariants(events in proptest::collection::vec(ev(), 1..80)) {
        let mut e = Env::new();
        for n in ["a", "b", "c", "d"] {
            e.add_node(n, 2);
        }
        admin(&mut e, AdminOp::PolicyCreate(PolicyDef { name: "fs".into(), share_decay_s: 60, compute_reservation: 0, shares: vec![] }));
        let queues = ["default", "hi", "fair"];
        admin(&mut e, AdminOp::QueueCreate(queue("hi", 5, &["default"], None)));
        admin(&mut e, AdminOp::QueueCreate(queue("fair", 1, &["default"], Some("fs"))));
        let mut enabled = [true; 3];
        let mut submitted: Vec<JobId> = Vec::new();
        let mut running: Vec<(NodeId, LaunchMsg)> = Vec::new();
        for ev in events {
            match ev {
                Ev::Submit { nodes, queue: q, limit, dep, array: arr } => {
                    let mut s = JobSpec { queue: queues[q].into(), share: Some(format!("s{}", nodes % 2)), time_limit_s: limit, ..spec(nodes, nodes) };
                    s.retry = retry(2, vec![]);
                    if let Some((i, k)) = dep {
                        if !submitted.is_empty() {
                            let kind = [DepKind::AfterOk, DepKind::AfterAny, DepKind::AfterNotOk][k as usize];
                            s.depends = vec![Dependency { kind, job: submitted[i % submitted.len()] }];
                        }
                    }
                    if let Some((n, seq)) = arr {
                        s.array = Some(ArraySpec { start: 0, end: n - 1, step: 1, max_running: Some(2), sequential: seq });
                    }
                    if let SubmitOutcome::Accepted(id) = e.core.on_submit(e.now, &mut e.fx, s, None) {
                        submitted.push(id);
                    }
                }
                Ev::Schedule => { e.core.schedule(e.now, &mut e.fx); }
                Ev::Exit { pick, code } if !running.is_empty() => {
                    let (n, l) = running.remove(pick % running.len());
                    e.core.on_agent(e.now, &mut e.fx, n, FromAgent::Started { job: l.job, attempt: l.attempt });
                    for t in &l.tasks {
                        e.core.on_agent(e.now, &mut e.fx, n, FromAgent::TaskExited { job: l.job, attempt: l.attempt, rank: t.rank, status: launcher_proto::ExitStatus::Code(code) });
                    }
                }
                Ev::Cancel(i) if !submitted.is_empty() => {
                    let id = submitted[i % submitted.len()];
                    e.core.on_cancel(e.now, &mut e.fx, &[id]);
                }
                Ev::Toggle(q) if q > 0 => {
                    enabled[q] = !enabled[q];
                    let mut d = queue(queues[q], if q == 1 { 5 } else { 1 }, &["default"], if q == 2 { Some("fs") } else { None });
                    d.enabled = enabled[q];
                    admin(&mut e, AdminOp::QueueUpdate(d));
                }
                Ev::Tick(ms) => { e.now = e.now.plus_ms(ms); e.core.on_timeout(e.now, &mut e.fx); }
                Ev::Restart => {
                    // An array child's start is not written (thousands a second): it
                    // comes back starting, and running again when its agent re-reports.
                    let child_state = |i: &launcher_proto::JobInfo| match i.state {
                        JobState::Running if i.id.index().is_some() => JobState::Starting,
                        s => s,
                    };
                    let before: Vec<_> = e.core.job_infos(true).into_iter().map(|i| (i.id, child_state(&i), i.array.map(|a| (a.succeeded, a.failed, a.running)))).collect();
                    let core = restore_from(e.core.config().clone(), e.now, &e.fx.persisted);
                    core.sanity_check();
                    let after: Vec<_> = core.job_infos(true).into_iter().map(|i| (i.id, i.state, i.array.map(|a| (a.succeeded, a.failed, a.running)))).collect();
                    prop_assert_eq!(before, after);
                    e.core = core;
                    // Agents come back with what they run.
                    let mut by_node: BTreeMap<NodeId, Vec<launcher_proto::JobReport>> = BTreeMap::new();
                    for (n, l) in &running {
                        by_node.entry(*n).or_default().push(launcher_proto::JobReport { job: l.job, attempt: l.attempt, exits: vec![], running: l.tasks.iter().map(|t| t.rank).collect() });
                    }
                    for name in ["a", "b", "c", "d"] {
                        let id = e.nodes[name];
                        let reg = RegisterMsg { name: name.into(), inventory: Inventory { cpus: 2, mem_mib: 1024, addr: String::new(), ..Default::default() }, jobs: by_node.remove(&id).unwrap_or_default() };
                        e.core.on_register(e.now, &mut e.fx, reg);
                    }
                }
                _ => {}
            }
            e.core.sanity_check();
            let sent: Vec<_> = e.fx.sent.drain(..).collect();
            for (n, m) in sent {
                match m {
                    ToAgent::Launch(l)
                        if !running.iter().any(|(rn, rl)| *rn == n && rl.job == l.job && rl.attempt == l.attempt) =>
                    {
                        running.push((n, *l));
                    }
                    ToAgent::Kill(k) => {
                        let dying: Vec<_> = running.iter().filter(|(rn, l)| *rn == n && l.job == k.job && l.attempt == k.attempt).cloned().collect();
                        running.retain(|(rn, l)| !(*rn == n && l.job == k.job && l.attempt == k.attempt));
                        for (n, l) in dying {
                            for t in &l.tasks {
                                e.core.on_agent(e.now, &mut e.fx, n, FromAgent::TaskExited { job: l.job, attempt: l.attempt, rank: t.rank, status: launcher_proto::ExitStatus::Signal(15) });
                            }
                        }
                    }
                    _ => {}
                }
            }
            e.core.sanity_check();
        }
    }
}
