//! The scheduler end to end: a real `launcher up` cluster (loopback agents,
//! so no root is needed), driven through the real CLI, states read back with
//! `launcher show --json`. Covers dependencies, arrays, retries with
//! evaluateOnExit rules, timeouts, queue priority, disabled queues, EASY
//! backfill around a gang job, and the scheduling examples in
//! `examples/scheduling/`.
//!
//! Jobs that must hold a slot for a while wait for a file to appear instead
//! of sleeping a fixed time, so each test runs as fast as the cluster allows.

mod common;

use common::{stderr, stdout, Cluster};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A command that runs until `flag` exists.
fn hold_until(flag: &Path) -> String {
    format!("while [ ! -e {} ]; do sleep 0.1; done", flag.display())
}

fn release(flag: &Path) {
    std::fs::write(flag, b"").unwrap();
}

fn state(j: &Value) -> &str {
    j["state"].as_str().unwrap_or_default()
}

fn reason(j: &Value) -> &str {
    j["reason"].as_str().unwrap_or_default()
}

fn us(j: &Value, field: &str) -> u64 {
    j[field].as_u64().unwrap_or_else(|| panic!("{field} missing: {j}"))
}

#[test]
fn dependencies_wait_for_their_jobs_and_fail_when_unsatisfiable() {
    let c = Cluster::start(2, 2, false);
    let tmp = tempfile::tempdir().unwrap();
    let go = tmp.path().join("go");
    let ok = c.submit(&["--", "sh", "-c", &hold_until(&go)]);
    let bad = c.submit(&["--", "sh", "-c", &format!("{}; exit 5", hold_until(&go))]);
    let after_ok = c.submit(&["--depend", &format!("afterok:{ok}"), "--", "true"]);
    let notok_on_success = c.submit(&["--depend", &format!("afternotok:{ok}"), "--", "true"]);
    let any_on_failure = c.submit(&["--depend", &format!("afterany:{bad}"), "--", "true"]);
    let notok_on_failure = c.submit(&["--depend", &format!("afternotok:{bad}"), "--", "true"]);
    let ok_on_failure = c.submit(&["--depend", &format!("afterok:{ok}:{bad}"), "--", "true"]);
    for id in [&after_ok, &notok_on_success, &any_on_failure, &notok_on_failure, &ok_on_failure] {
        let j = c.show(id);
        assert_eq!((state(&j), reason(&j)), ("Pending", "Dependency"), "job {id}: {j}");
        assert!(j["reason_text"].as_str().unwrap().contains("waiting for"), "{j}");
    }
    release(&go);

    let ok_j = c.wait_job(&ok, T);
    assert_eq!(state(&ok_j), "Succeeded");
    let bad_j = c.wait_job(&bad, T);
    assert_eq!((state(&bad_j), bad_j["exit_code"].as_i64()), ("Failed", Some(5)));

    let j = c.wait_job(&after_ok, T);
    assert_eq!(state(&j), "Succeeded", "{j}");
    assert!(us(&j, "start_time") >= us(&ok_j, "end_time"), "afterok started before its dependency ended");

    let j = c.wait_job(&notok_on_success, T);
    assert_eq!((state(&j), reason(&j)), ("Failed", "DependencyNeverSatisfied"), "{j}");
    assert_eq!(j["attempt"], 0, "it never ran: {j}");
    assert!(j["reason_text"].as_str().unwrap().contains(&format!("afternotok:{ok}")), "{j}");

    let j = c.wait_job(&any_on_failure, T);
    assert_eq!(state(&j), "Succeeded", "afterany runs after a failure too: {j}");
    assert!(us(&j, "start_time") >= us(&bad_j, "end_time"));
    assert_eq!(state(&c.wait_job(&notok_on_failure, T)), "Succeeded");
    let j = c.wait_job(&ok_on_failure, T);
    assert_eq!((state(&j), reason(&j)), ("Failed", "DependencyNeverSatisfied"), "{j}");

    // Submitted after the fact: decided at once.
    let late = c.submit(&["--depend", &format!("afternotok:{ok}"), "--", "true"]);
    let j = c.show(&late);
    assert_eq!((state(&j), reason(&j)), ("Failed", "DependencyNeverSatisfied"), "{j}");
    // An array child as a dependency: ID_INDEX.
    let arr = c.submit(&["--array", "0-1", "--", "sh", "-c", "[ $LAUNCHER_ARRAY_INDEX = 0 ]"]);
    let on_good = c.submit(&["--depend", &format!("afterok:{arr}_0"), "--", "true"]);
    let on_bad = c.submit(&["--depend", &format!("afterok:{arr}_1"), "--", "true"]);
    assert_eq!(state(&c.wait_job(&on_good, T)), "Succeeded");
    let j = c.wait_job(&on_bad, T);
    assert_eq!((state(&j), reason(&j)), ("Failed", "DependencyNeverSatisfied"), "{j}");

    let out = c.cli(&["submit", "--depend", "afterok:999", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "a dependency on a job that does not exist is refused");
    assert!(stderr(&out).contains("no job 999"), "{}", stderr(&out));
}

#[test]
fn array_children_run_with_their_own_index_under_the_limit() {
    let c = Cluster::start(2, 2, false);
    let id = c.submit(&[
        "--array",
        "0-9%2",
        "--",
        "sh",
        "-c",
        "echo index=$LAUNCHER_ARRAY_INDEX aws=$AWS_BATCH_JOB_ARRAY_INDEX parent=$LAUNCHER_ARRAY_JOB_ID; sleep 0.4",
    ]);
    // 4 slots, but never more than 2 children at once.
    let mut saw_limit = false;
    let j = loop {
        let j = c.show(&id);
        let running = j["array"]["running"].as_u64().unwrap();
        assert!(running <= 2, "more than 2 children run at once: {j}");
        if reason(&j) == "ArrayTaskLimit" {
            saw_limit = true;
        }
        if ["Succeeded", "Failed", "Cancelled"].contains(&state(&j)) {
            break j;
        }
        assert_ne!(state(&j), "Running", "an array parent is never RUNNING: {j}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(state(&j), "Succeeded", "{j}");
    assert_eq!(j["array"]["size"], 10);
    assert_eq!(j["array"]["succeeded"], 10);
    assert!(saw_limit, "a waiting child never showed reason ArrayTaskLimit");
    for i in 0..10 {
        let child = format!("{id}:{i}");
        assert_eq!(state(&c.show(&child)), "Succeeded", "child {child}");
        let out = c.cli(&["logs", &child]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), format!("index={i} aws={i} parent={id}\n"), "output of {child}");
    }
    // The parent has no output of its own, and `logs` says where it is.
    let out = c.cli(&["logs", &id]);
    assert!(out.status.success() && stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(stderr(&out).contains(&format!("`launcher logs {id}:0`")), "{}", stderr(&out));

    // One failing child fails the parent; the others still run.
    let id = c.submit(&["--array", "0-3", "--", "sh", "-c", "[ $LAUNCHER_ARRAY_INDEX != 2 ]"]);
    let j = c.wait_job(&id, T);
    assert_eq!((state(&j), reason(&j)), ("Failed", "ChildrenFailed"), "{j}");
    assert_eq!((j["array"]["succeeded"].as_u64(), j["array"]["failed"].as_u64()), (Some(3), Some(1)), "{j}");
    let child = c.show(&format!("{id}:2"));
    assert_eq!((state(&child), reason(&child)), ("Failed", "NonZeroExit"), "{child}");
    assert_eq!(child["exit_code"], 1);

    // --attempts applies to each child: each fails its first attempt and is retried on its own.
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let cmd = format!(
        "echo $LAUNCHER_ARRAY_INDEX:$AWS_BATCH_JOB_ATTEMPT >> {}; [ $AWS_BATCH_JOB_ATTEMPT = 2 ]",
        runs.display()
    );
    let id = c.submit(&["--array", "0-1", "--attempts", "3", "--", "sh", "-c", &cmd]);
    assert_eq!(state(&c.wait_job(&id, T)), "Succeeded");
    let mut seen: Vec<String> = std::fs::read_to_string(&runs).unwrap().lines().map(String::from).collect();
    seen.sort();
    assert_eq!(seen, ["0:1", "0:2", "1:1", "1:2"]);
}

#[test]
fn an_array_childs_attempt_counts_its_retries() {
    let c = Cluster::start(1, 2, false);
    let id = c.submit(&["--array", "0-1", "--attempts", "3", "--", "sh", "-c", "[ $AWS_BATCH_JOB_ATTEMPT = 2 ]"]);
    assert_eq!(state(&c.wait_job(&id, T)), "Succeeded");
    let child = c.show(&format!("{id}:1"));
    assert_eq!((state(&child), child["attempt"].as_u64()), ("Succeeded", Some(2)), "{child}");
    let id = c.submit(&["--array", "0-1", "--attempts", "3", "--", "sh", "-c", "exit 3"]);
    assert_eq!(state(&c.wait_job(&id, T)), "Failed");
    let child = c.show(&format!("{id}:1"));
    assert_eq!((state(&child), child["attempt"].as_u64()), ("Failed", Some(3)), "{child}");
}

#[test]
fn retries_follow_the_exit_code_rules() {
    let c = Cluster::start(2, 2, false);
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("count");
    let seen = tmp.path().join("attempts");
    // Fails with 3 twice, then succeeds; notes each attempt as run:AWS_BATCH_JOB_ATTEMPT.
    let flaky = format!(
        "n=$(cat {f} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {f}; \
         echo $n:$AWS_BATCH_JOB_ATTEMPT >> {s}; [ $n -ge 3 ] || exit 3",
        f = counter.display(),
        s = seen.display()
    );
    let id = c.submit(&["--attempts", "3", "--retry-on", "retry:exit=3", "--", "sh", "-c", &flaky]);
    let j = c.wait_job(&id, T);
    assert_eq!(state(&j), "Succeeded", "{j}");
    assert_eq!(j["attempt"], 3);
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "1:1\n2:2\n3:3\n", "attempts and AWS_BATCH_JOB_ATTEMPT");

    // An EXIT rule that matches stops at once.
    let id = c.submit(&["--attempts", "3", "--retry-on", "exit:exit=4", "--", "sh", "-c", "exit 4"]);
    let j = c.wait_job(&id, T);
    assert_eq!(
        (state(&j), reason(&j), j["attempt"].as_u64(), j["exit_code"].as_i64()),
        ("Failed", "NonZeroExit", Some(1), Some(4))
    );

    // First match wins: exit 4 matches the RETRY rule before the catch-all EXIT.
    std::fs::remove_file(&counter).unwrap();
    let count_and_fail =
        format!("n=$(cat {f} 2>/dev/null || echo 0); echo $((n+1)) > {f}; exit 4", f = counter.display());
    let id = c.submit(&[
        "--attempts",
        "2",
        "--retry-on",
        "retry:exit=4",
        "--retry-on",
        "exit:reason=*",
        "--",
        "sh",
        "-c",
        &count_and_fail,
    ]);
    let j = c.wait_job(&id, T);
    assert_eq!((state(&j), j["attempt"].as_u64()), ("Failed", Some(2)), "{j}");
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "2");

    // No rule matches: AWS's default is to retry.
    let id = c.submit(&["--attempts", "2", "--retry-on", "exit:exit=9", "--", "sh", "-c", "exit 4"]);
    let j = c.wait_job(&id, T);
    assert_eq!((state(&j), j["attempt"].as_u64()), ("Failed", Some(2)), "{j}");

    // --retry-on without --attempts is a usage error that says so.
    let out = c.cli(&["submit", "--retry-on", "retry:exit=3", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--attempts"), "{}", stderr(&out));
}

#[test]
fn logs_of_a_retried_job_show_the_last_attempt() {
    let c = Cluster::start(1, 1, false);
    let id = c.submit(&[
        "--attempts",
        "3",
        "--",
        "sh",
        "-c",
        "echo attempt $AWS_BATCH_JOB_ATTEMPT; [ $AWS_BATCH_JOB_ATTEMPT = 3 ]",
    ]);
    assert_eq!(state(&c.wait_job(&id, T)), "Succeeded");
    let out = stdout(&c.cli(&["logs", &id]));
    assert!(out.lines().any(|l| l == "attempt 3"), "the successful attempt's output is missing: {out:?}");

    // Following a job (`run`, `logs --follow`) shows every attempt's output in
    // order, each whole, and ends only when the last attempt does.
    let cmd = "echo attempt $LAUNCHER_JOB_ATTEMPT; sleep 0.3; echo end $LAUNCHER_JOB_ATTEMPT; exit 7";
    let out = c.cli(&["run", "--attempts", "3", "--", "sh", "-c", cmd]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let want = "attempt 1\nend 1\nattempt 2\nend 2\nattempt 3\nend 3\n";
    assert_eq!(stdout(&out), want, "run --attempts 3");
    let id = c.submit(&["--attempts", "3", "--", "sh", "-c", cmd]);
    let out = c.cli(&["logs", "--follow", &id]);
    assert_eq!(stdout(&out), want, "logs --follow");
}

#[test]
fn a_timeout_fails_the_job_and_is_never_retried() {
    let c = Cluster::start(1, 1, false);
    let id = c.submit(&["--time", "2s", "--attempts", "3", "--", "sleep", "30"]);
    let j = c.wait_job(&id, T);
    assert_eq!((state(&j), reason(&j)), ("Failed", "Timeout"), "{j}");
    assert_eq!(j["attempt"], 1, "timeouts are not retried: {j}");
    let ran = us(&j, "end_time") - us(&j, "start_time");
    assert!(ran >= 2_000_000, "ended after {ran} µs, before its 2 s limit");
}

#[test]
fn the_higher_priority_queue_starts_first_when_a_slot_frees() {
    let c = Cluster::start(1, 1, false);
    for (q, p) in [("low", "10"), ("high", "100")] {
        let out = c.cli(&["queue-admin", "create", q, "--priority", p, "--ce", "default"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let tmp = tempfile::tempdir().unwrap();
    let go = tmp.path().join("go");
    let blocker = c.submit(&["-q", "low", "--", "sh", "-c", &hold_until(&go)]);
    c.wait_state(&blocker, "Running", T);
    // Submitted first, but to the lower-priority queue.
    let low = c.submit(&["-q", "low", "--", "sleep", "0.3"]);
    let high = c.submit(&["-q", "high", "--", "sleep", "0.3"]);
    for id in [&low, &high] {
        let j = c.show(id);
        assert_eq!(state(&j), "Runnable", "{j}");
        assert!(["Resources", "Priority"].contains(&reason(&j)), "{j}");
    }
    let queues = c.json(&["queue-admin", "list", "--json"]);
    let names: Vec<&str> = queues.as_array().unwrap().iter().map(|q| q["def"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["high", "low", "default"], "highest priority first");
    release(&go);
    let h = c.wait_job(&high, T);
    let l = c.wait_job(&low, T);
    assert_eq!((state(&h), state(&l)), ("Succeeded", "Succeeded"));
    assert!(us(&l, "start_time") >= us(&h, "end_time"), "the low-priority job went first: high {h} low {l}");
}

#[test]
fn a_disabled_queue_holds_its_jobs_until_enabled() {
    let c = Cluster::start(1, 1, false);
    let out = c.cli(&["queue-admin", "create", "batch", "--ce", "default", "--disabled"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = c.submit(&["-q", "batch", "--", "true"]);
    let j = c.wait_for(&id, T, "reason QueueDisabled", |j| reason(j) == "QueueDisabled");
    assert_eq!(state(&j), "Runnable");
    assert!(j["reason_text"].as_str().unwrap().contains("queue-admin enable batch"), "{j}");
    // The cluster is idle, yet it stays.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state(&c.show(&id)), "Runnable");
    let q = c.json(&["queue-admin", "show", "batch", "--json"]);
    assert_eq!((q["def"]["enabled"].as_bool(), q["waiting"].as_u64()), (Some(false), Some(1)), "{q}");

    let out = c.cli(&["queue-admin", "enable", "batch"]);
    assert!(stdout(&out).contains("ENABLED"), "{}", stdout(&out));
    assert_eq!(state(&c.wait_job(&id, T)), "Succeeded");

    // Disabling does not touch a running job; it only stops new starts.
    let tmp = tempfile::tempdir().unwrap();
    let go = tmp.path().join("go");
    let running = c.submit(&["-q", "batch", "--", "sh", "-c", &hold_until(&go)]);
    c.wait_state(&running, "Running", T);
    assert!(c.cli(&["queue-admin", "update", "batch", "--disable"]).status.success());
    let waiting = c.submit(&["-q", "batch", "--", "true"]);
    release(&go);
    assert_eq!(state(&c.wait_job(&running, T)), "Succeeded");
    let j = c.wait_for(&waiting, T, "reason QueueDisabled", |j| reason(j) == "QueueDisabled");
    assert_eq!(state(&j), "Runnable", "a free slot does not start a job of a disabled queue");
}

/// Jobs of queue `q` by (share, state).
fn share_counts(c: &Cluster, q: &str) -> std::collections::BTreeMap<(String, String), usize> {
    let mut m = std::collections::BTreeMap::new();
    for j in c.json(&["queue", "--json"]).as_array().unwrap().iter().filter(|j| j["spec"]["queue"] == q) {
        let key = (j["spec"]["share"].as_str().unwrap().to_string(), state(j).to_string());
        *m.entry(key).or_default() += 1;
    }
    m
}

/// Poll until the jobs of queue `q` are, by (share, state), exactly `want`.
fn wait_counts(c: &Cluster, q: &str, want: &[(&str, &str, usize)]) {
    let want: std::collections::BTreeMap<(String, String), usize> =
        want.iter().map(|(s, st, n)| ((s.to_string(), st.to_string()), *n)).collect();
    let deadline = std::time::Instant::now() + T;
    loop {
        let now = share_counts(c, q);
        if now == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "queue {q}: want {want:?}, have {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn fair_share_splits_slots_by_weight_and_keeps_a_compute_reservation() {
    // One node with 8 slots: the worked examples of docs/scheduling.md.
    let c = Cluster::start(1, 8, false);
    let tmp = tempfile::tempdir().unwrap();
    let admin = |args: &[&str]| {
        let out = c.cli(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    admin(&["policy", "create", "fair", "--share-decay", "0", "--share", "teamA=0.5", "--share", "teamB=1"]);
    admin(&["queue-admin", "create", "research", "--ce", "default", "--policy", "fair"]);
    let p = c.json(&["policy", "show", "fair", "--json"]);
    assert_eq!((p["share_decay_s"].as_u64(), p["shares"][0]["weight_x10k"].as_u64()), (Some(0), Some(5_000)), "{p}");
    let go = tmp.path().join("go");
    let hold = hold_until(&tmp.path().join("end"));
    let blocker = c.submit(&["-q", "research", "--share", "teamB", "-c", "8", "--", "sh", "-c", &hold_until(&go)]);
    c.wait_state(&blocker, "Running", T);
    let mut last_b = String::new();
    for share in ["teamA", "teamB"] {
        for _ in 0..8 {
            last_b = c.submit(&["-q", "research", "--share", share, "--", "sh", "-c", &hold]);
        }
    }
    let j = c.wait_for(&last_b, T, "reason FairShare", |j| reason(j) == "FairShare");
    assert!(j["reason_text"].as_str().unwrap().contains("\"teamB\" has weighted usage 8.0"), "{j}");
    // The blocker ends: weight 0.5 gets about twice the slots of weight 1 (5 and 3 of 8).
    release(&go);
    let (run, wait) = ("Running", "Runnable");
    wait_counts(&c, "research", &[("teamA", run, 5), ("teamA", wait, 3), ("teamB", run, 3), ("teamB", wait, 5)]);
    release(&tmp.path().join("end"));
    wait_counts(&c, "research", &[]);

    // computeReservation 50: one active share may use half the CPUs, two 75 %.
    let hold = hold_until(&tmp.path().join("end2"));
    admin(&["policy", "create", "keep", "--compute-reservation", "50"]);
    admin(&["queue-admin", "create", "shared", "--ce", "default", "--policy", "keep"]);
    let mut last_a = String::new();
    for _ in 0..8 {
        last_a = c.submit(&["-q", "shared", "--share", "teamA", "--", "sh", "-c", &hold]);
    }
    let j = c.wait_for(&last_a, T, "reason FairShare", |j| reason(j) == "FairShare");
    assert!(j["reason_text"].as_str().unwrap().contains("computeReservation"), "{j}");
    wait_counts(&c, "shared", &[("teamA", run, 4), ("teamA", wait, 4)]);
    c.submit(&["-q", "shared", "--share", "teamB", "--", "sh", "-c", &hold]);
    wait_counts(&c, "shared", &[("teamA", run, 5), ("teamA", wait, 3), ("teamB", run, 1)]);
    release(&tmp.path().join("end2"));
    wait_counts(&c, "shared", &[]);
}

/// `run` says why its job waits (srun's "queued and waiting"), so a job no
/// node can ever run does not look hung; Ctrl-C then cancels it.
#[test]
fn run_says_why_its_job_waits_and_ctrl_c_cancels_it() {
    let c = Cluster::start(1, 2, false);
    let mut run = std::process::Command::new(common::bin())
        .args(["run", "-n", "3", "--", "true"])
        .env("LAUNCHER_CRED", &c.cred)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = run.stderr.take().unwrap();
    let seen = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut err, &mut text).unwrap();
        text
    });
    let jobs = || c.json(&["queue", "--json"]);
    let deadline = std::time::Instant::now() + T;
    while jobs().as_array().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the job never showed up");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1800));
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    let status = run.wait().unwrap();
    let text = seen.join().unwrap();
    assert!(text.contains("is RUNNABLE: NoEligibleNodes: no node can ever run it"), "{text}");
    assert_eq!(text.matches("NoEligibleNodes").count(), 1, "said once, not at every poll: {text}");
    assert!(text.contains("cancelling job"), "{text}");
    assert_ne!(status.code(), Some(0));
    assert!(jobs().as_array().unwrap().is_empty(), "Ctrl-C left the job waiting");
}

#[test]
fn a_job_no_compute_environment_can_hold_waits_until_one_can() {
    let c = Cluster::start(2, 2, false);
    for args in
        [&["ce", "create", "small", "--nodes", "node1"][..], &["queue-admin", "create", "smallq", "--ce", "small"]]
    {
        let out = c.cli(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let id = c.submit(&["-q", "smallq", "-N", "2", "--", "true"]);
    let j = c.wait_for(&id, T, "reason NoEligibleNodes", |j| reason(j) == "NoEligibleNodes");
    assert_eq!(state(&j), "Runnable");
    assert!(j["reason_text"].as_str().unwrap().contains("needs 2 node(s)"), "{j}");
    // Growing a disabled compute environment is not enough: the job waits
    // for it to be enabled again, and then runs.
    assert!(c.cli(&["ce", "disable", "small"]).status.success());
    assert!(c.cli(&["ce", "update", "small", "--nodes", "node[1-2]"]).status.success());
    let j = c.wait_for(&id, T, "reason Resources", |j| reason(j) == "Resources");
    assert!(j["reason_text"].as_str().unwrap().contains("`launcher ce enable CE`"), "{j}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(&c.show(&id)), "Runnable", "a disabled compute environment starts nothing");
    let out = c.cli(&["ce", "enable", "small"]);
    assert!(stdout(&out).contains("ENABLED"), "{}", stdout(&out));
    let j = c.wait_job(&id, T);
    assert_eq!(state(&j), "Succeeded", "{j}");
    let ce = c.json(&["ce", "show", "small", "--json"]);
    let mut nodes: Vec<&str> = ce["nodes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    nodes.sort();
    assert_eq!(nodes, ["node1", "node2"], "{ce}");
}

#[test]
fn easy_backfill_runs_short_jobs_around_a_waiting_gang_job() {
    // Three nodes with one slot each.
    let c = Cluster::start(3, 1, false);
    let tmp = tempfile::tempdir().unwrap();
    let go = tmp.path().join("go");
    let long = c.submit(&["--time", "60s", "--", "sh", "-c", &hold_until(&go)]);
    c.wait_state(&long, "Running", T);

    // The gang job needs all three nodes: it waits first in line, holding the reservation.
    let gang = c.submit(&["-N", "3", "--", "true"]);
    let g = c.wait_for(&gang, T, "reason Resources", |j| reason(j) == "Resources");
    assert_eq!(state(&g), "Runnable");
    assert!(g["reason_text"].as_str().unwrap().contains("reserved"), "{g}");

    // Short enough to end before the long job's limit: it backfills while the gang waits.
    let short = c.submit(&["--time", "10s", "--", "sleep", "0.5"]);
    let s = c.wait_job(&short, T);
    assert_eq!(state(&s), "Succeeded", "{s}");
    assert_eq!(state(&c.show(&gang)), "Runnable", "the gang job cannot have started yet");

    // Without a time limit (or with one past the reservation) a job would delay the gang: it waits.
    let unlimited = c.submit(&["--", "true"]);
    let too_long = c.submit(&["--time", "2h", "--", "true"]);
    for id in [&unlimited, &too_long] {
        let j = c.wait_for(id, T, "reason BackfillReserved", |j| reason(j) == "BackfillReserved");
        assert_eq!(state(&j), "Runnable", "{j}");
        assert!(j["reason_text"].as_str().unwrap().contains(&format!("reservation of job {gang}")), "{j}");
    }
    let jobs = c.json(&["queue", "--json"]);
    let waiting: Vec<(String, String)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "Runnable")
        .map(|j| (j["id"].to_string(), reason(j).to_string()))
        .collect();
    assert_eq!(waiting.len(), 3, "gang, unlimited and too_long wait: {waiting:?}");

    // The long job ends: the gang job starts before the ones that waited behind it.
    release(&go);
    let g = c.wait_job(&gang, T);
    assert_eq!(state(&g), "Succeeded", "{g}");
    assert_eq!(g["nodes"].as_array().unwrap().len(), 3);
    let l = c.wait_job(&long, T);
    assert!(us(&g, "start_time") >= us(&l, "end_time"));
    assert!(us(&s, "end_time") <= us(&g, "start_time"));
    for id in [&unlimited, &too_long] {
        let j = c.wait_job(id, T);
        assert_eq!(state(&j), "Succeeded", "{j}");
        assert!(us(&j, "start_time") >= us(&g, "start_time"), "{id} jumped the reservation");
    }
}

/// `#EXPECT k=v ...` of an example, as pairs.
fn expect_line(path: &Path) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix("#EXPECT "))?;
    Some(
        line.split_whitespace()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("bad #EXPECT in {}: {kv}", path.display()));
                (k.to_string(), v.to_string())
            })
            .collect(),
    )
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Check a finished example job: its state, and the stdout lines of its
/// `launcher logs` (of every child, for an array).
fn check_example_job(c: &Cluster, path: &Path, id: &str, kv: &[(String, String)]) {
    let j = c.wait_job(id, Duration::from_secs(60));
    let want = get(kv, "state").unwrap_or_else(|| panic!("{}: #EXPECT needs state=", path.display()));
    assert_eq!(state(&j).to_uppercase(), want, "{}: {j}", path.display());
    let Some(lines) = get(kv, "lines").map(|n| n.parse::<usize>().unwrap()) else { return };
    let ids: Vec<String> = match j["array"]["size"].as_u64() {
        Some(n) => {
            let spec = &j["array"]["spec"];
            let (start, step) = (spec["start"].as_u64().unwrap(), spec["step"].as_u64().unwrap());
            (0..n).map(|p| format!("{id}:{}", start + p * step)).collect()
        }
        None => vec![id.to_string()],
    };
    for i in ids {
        let out = c.cli(&["logs", &i]);
        assert_eq!(stdout(&out).lines().count(), lines, "{} job {i}: {}", path.display(), stdout(&out));
    }
}

#[test]
fn scheduling_examples_run_as_documented() {
    let c = Cluster::start(4, 2, false);
    let dir = common::repo_root().join("examples/scheduling");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    // Scripts named by a job definition are run through it.
    let referenced: Vec<String> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .flat_map(|p| {
            let def: toml::Value = toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            def.get("script").and_then(|s| s.as_str()).map(String::from)
        })
        .collect();
    let bin_dir = Path::new(common::bin()).parent().unwrap().to_path_buf();
    let path_env = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(kv) = expect_line(path) else {
            assert!(referenced.contains(&name), "{} has no #EXPECT line", path.display());
            continue;
        };
        let p = path.to_str().unwrap();
        if let Some(code) = get(&kv, "exit") {
            // A driver script, run on the "login node" with the CLI on PATH.
            let out = std::process::Command::new("sh")
                .arg(p)
                .env("LAUNCHER_CRED", &c.cred)
                .env("PATH", &path_env)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(code.parse().unwrap()), "{name}: {}", stderr(&out));
            let text = stdout(&out);
            if let Some(n) = get(&kv, "lines") {
                assert_eq!(text.lines().count(), n.parse::<usize>().unwrap(), "{name}: {text}");
            }
            // Every job it printed ended well.
            for id in text.lines().filter_map(|l| l.split("job ").nth(1)?.split_whitespace().next()) {
                assert_eq!(state(&c.wait_job(id, Duration::from_secs(60))), "Succeeded", "{name}: job {id}");
            }
        } else if name.ends_with(".toml") || name.ends_with(".json") {
            let def = c.json(&["jobdef", "register", p, "--json"]);
            let jobdef = format!("{}:{}", def["name"].as_str().unwrap(), def["revision"]);
            let id = c.submit(&["--jobdef", &jobdef]);
            assert_eq!(c.show(&id)["spec"]["jobdef"], jobdef.as_str());
            check_example_job(&c, path, &id, &kv);
        } else {
            let id = c.submit(&[p]);
            check_example_job(&c, path, &id, &kv);
        }
        ran += 1;
    }
    assert!(ran >= 3, "found only {ran} examples in {}", dir.display());
}
