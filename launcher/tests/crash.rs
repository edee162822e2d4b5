//! Durability: 500 jobs submitted by concurrent clients while the controller
//! is `kill -9`ed and restarted twice. Every acknowledged job must reach a
//! terminal state exactly once: its side effect (appending its id to a file)
//! happens once, and `queue --json` agrees.

mod common;

use common::{bin, stderr, stdout};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_controller(dir: &Path, port: u16) -> Child {
    Command::new(bin())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--node-timeout",
            "60",
            "--kill-grace",
            "2",
            "--state-dir",
        ])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start controller")
}

/// A loopback agent running tasks as itself (the admin credential has no local account).
fn start_agent(port: u16, token: &str, name: &str, cpus: u32, dir: &Path) -> Child {
    Command::new(bin())
        .args(["__agent", "--run-as-self", "--controller", &format!("127.0.0.1:{port}"), "--token", token])
        .args(["--cpus", &cpus.to_string(), "--name", name, "--state-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start agent")
}

fn cli(cred: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env("LAUNCHER_CRED", cred)
        .env("LAUNCHER_CONNECT_TIMEOUT", "60")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn wait_for_cred(dir: &Path) -> PathBuf {
    let cred = dir.join("admin.cred");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cred.exists() {
        assert!(Instant::now() < deadline, "controller never wrote its credential");
        std::thread::sleep(Duration::from_millis(20));
    }
    cred
}

struct Killer(Vec<Child>);
impl Drop for Killer {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn kill_9_of_the_controller_loses_no_acknowledged_job_and_runs_none_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("controller");
    let effects = tmp.path().join("effects.txt");
    std::fs::write(&effects, "").unwrap();
    let port = free_udp_port();
    let mut procs = Killer(vec![start_controller(&state, port)]);
    let cred = wait_for_cred(&state);

    // Two agents on loopback, 4 slots each.
    for i in 1..=2 {
        let out = cli(&cred, &["token", "create", "--ttl", "10m"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let token = stdout(&out).trim().to_string();
        let agent = start_agent(port, &token, &format!("n{i}"), 4, &tmp.path().join(format!("agent{i}")));
        procs.0.push(agent);
    }

    const CLIENTS: usize = 5;
    const PER_CLIENT: usize = 100;
    let acked: Arc<Mutex<Vec<u64>>> = Default::default();
    let failed_submits = Arc::new(AtomicUsize::new(0));
    let submitted = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for _ in 0..CLIENTS {
        let (cred, effects, acked, failed, submitted) =
            (cred.clone(), effects.clone(), acked.clone(), failed_submits.clone(), submitted.clone());
        threads.push(std::thread::spawn(move || {
            for _ in 0..PER_CLIENT {
                let cmd = format!("echo $LAUNCHER_JOB_ID >> {}", effects.display());
                let out = cli(&cred, &["submit", "--parsable", "--", "sh", "-c", &cmd]);
                submitted.fetch_add(1, Ordering::SeqCst);
                if out.status.success() {
                    acked.lock().unwrap().push(stdout(&out).trim().parse().expect("job id"));
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    eprintln!("submit failed: {}", stderr(&out));
                }
            }
        }));
    }
    // Kill -9 the controller twice while submissions are in flight.
    for at in [120, 330] {
        while submitted.load(Ordering::SeqCst) < at {
            std::thread::sleep(Duration::from_millis(5));
        }
        procs.0[0].kill().unwrap(); // std's kill is SIGKILL: no chance to flush anything
        procs.0[0].wait().unwrap();
        procs.0[0] = start_controller(&state, port);
        eprintln!("controller killed with SIGKILL and restarted after {at} submissions");
    }
    for t in threads {
        t.join().unwrap();
    }
    let acked: Vec<u64> = acked.lock().unwrap().clone();
    assert_eq!(
        failed_submits.load(Ordering::SeqCst),
        0,
        "every submission is eventually acknowledged (clients retry with an idempotency key)"
    );
    assert_eq!(acked.len(), CLIENTS * PER_CLIENT);
    let unique: BTreeSet<u64> = acked.iter().copied().collect();
    assert_eq!(unique.len(), acked.len(), "every submission got its own job id");

    // Wait until every acknowledged job is terminal.
    let deadline = Instant::now() + Duration::from_secs(120);
    let jobs = loop {
        let out = cli(&cred, &["queue", "--all", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let states: BTreeMap<u64, String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|j| (j["id"].as_u64().unwrap(), j["state"].as_str().unwrap().to_string()))
            .collect();
        let pending = unique
            .iter()
            .filter(|id| states.get(id).is_none_or(|s| !["Succeeded", "Failed", "Cancelled"].contains(&s.as_str())))
            .count();
        if pending == 0 {
            break states;
        }
        assert!(Instant::now() < deadline, "{pending} acknowledged jobs still not terminal");
        std::thread::sleep(Duration::from_millis(200));
    };
    for id in &unique {
        assert_eq!(jobs.get(id).map(String::as_str), Some("Succeeded"), "job {id}");
    }
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for line in std::fs::read_to_string(&effects).unwrap().lines() {
        *counts.entry(line.trim().parse().unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "jobs whose side effect happened more than once: {twice:?}");
    for id in &unique {
        assert_eq!(counts.get(id), Some(&1), "job {id} side effect count");
    }
    assert_eq!(jobs.len(), unique.len(), "no job exists that no client was told about");
}

#[test]
fn task_output_written_while_the_controller_is_down_is_not_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("controller");
    let port = free_udp_port();
    let mut procs = Killer(vec![start_controller(&state, port)]);
    let cred = wait_for_cred(&state);
    let token = stdout(&cli(&cred, &["token", "create"])).trim().to_string();
    procs.0.push(start_agent(port, &token, "n1", 2, &tmp.path().join("agent")));
    let out = cli(
        &cred,
        &[
            "submit",
            "--parsable",
            "-n",
            "2",
            "--",
            "sh",
            "-c",
            "for i in $(seq 1 20); do echo tick $i; echo err $i >&2; sleep 0.1; done",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    // Let it print a few lines, then kill the controller while it keeps printing.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs = stdout(&cli(&cred, &["logs", &id]));
        if logs.lines().count() >= 6 {
            break;
        }
        assert!(Instant::now() < deadline, "job printed nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();
    std::thread::sleep(Duration::from_millis(1200)); // the job keeps printing into the void
    procs.0[0] = start_controller(&state, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value = serde_json::from_slice(&cli(&cred, &["show", &id, "--json"]).stdout).unwrap();
        if v["state"] == "Succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "job did not finish: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for rank in ["0", "1"] {
        let out = cli(&cred, &["logs", &id, "--rank", rank]);
        let want_out: Vec<String> = (1..=20).map(|i| format!("tick {i}")).collect();
        let want_err: Vec<String> = (1..=20).map(|i| format!("err {i}")).collect();
        assert_eq!(stdout(&out).lines().map(String::from).collect::<Vec<_>>(), want_out, "rank {rank} stdout");
        assert_eq!(stderr(&out).lines().map(String::from).collect::<Vec<_>>(), want_err, "rank {rank} stderr");
    }
}

#[test]
fn fair_share_history_survives_a_kill_9_of_the_controller() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("controller");
    let port = free_udp_port();
    let mut procs = Killer(vec![start_controller(&state, port)]);
    let cred = wait_for_cred(&state);
    let ok = |args: &[&str]| {
        let out = cli(&cred, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    let show = |id: &str| -> serde_json::Value { serde_json::from_str(&ok(&["show", id, "--json"])).unwrap() };
    let wait = |id: &str, what: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let j = show(id);
            if pred(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} never got {what}: {j}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let token = ok(&["token", "create"]);
    procs.0.push(start_agent(port, &token, "n1", 2, &tmp.path().join("agent")));
    ok(&["policy", "create", "fair", "--share-decay", "600"]);
    ok(&["queue-admin", "create", "research", "--ce", "default", "--policy", "fair"]);

    // teamA uses both CPUs for a second; teamB uses nothing.
    let used = ok(&["submit", "--parsable", "-q", "research", "--share", "teamA", "-c", "2", "--", "sleep", "1"]);
    wait(&used, "Succeeded", &|j| j["state"] == "Succeeded");
    // The first change is saved at once (later ones at most every 10 s): wait
    // until the snapshot is in the database, then kill the controller.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let db = rusqlite::Connection::open(state.join("state.db")).unwrap();
        let hist: Option<f64> = rusqlite::OptionalExtension::optional(db.query_row(
            "SELECT hist FROM share_usage WHERE queue = 'research' AND share = 'teamA'",
            [],
            |r| r.get(0),
        ))
        .unwrap();
        if let Some(h) = hist {
            assert!(h > 1.0, "2 CPUs for a second: {h} CPU-seconds");
            break;
        }
        assert!(Instant::now() < deadline, "the fair-share history was never saved");
        std::thread::sleep(Duration::from_millis(50));
    }
    procs.0[0].kill().unwrap(); // SIGKILL
    procs.0[0].wait().unwrap();
    procs.0[0] = start_controller(&state, port);

    // A job in another queue holds the node while one job of each share waits,
    // teamA's first: it would win a tie (earlier, and its name sorts first).
    let go = tmp.path().join("go");
    let hold = format!("while [ ! -e {} ]; do sleep 0.1; done", go.display());
    let blocker = ok(&["submit", "--parsable", "-c", "2", "--", "sh", "-c", &hold]);
    wait(&blocker, "Running", &|j| j["state"] == "Running");
    let a = ok(&["submit", "--parsable", "-q", "research", "--share", "teamA", "-c", "2", "--", "true"]);
    let b = ok(&["submit", "--parsable", "-q", "research", "--share", "teamB", "-c", "2", "--", "true"]);
    let j = show(&a);
    assert_eq!(j["reason"], "FairShare", "teamA's usage came back from before the crash: {j}");
    assert!(j["reason_text"].as_str().unwrap().contains("above share \"teamB\""), "{j}");
    std::fs::write(&go, b"").unwrap();
    let done = |j: &serde_json::Value| j["state"] == "Succeeded";
    let (ja, jb) = (wait(&a, "Succeeded", &done), wait(&b, "Succeeded", &done));
    let start = |j: &serde_json::Value| j["start_time"].as_u64().unwrap_or_else(|| panic!("no start time: {j}"));
    assert!(start(&jb) < start(&ja), "teamB, which used less, starts first: {jb} {ja}");
}
