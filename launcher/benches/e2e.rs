//! End-to-end figures on a local cluster of 4 agents × 2 slots (each agent in
//! its own network namespace when run as root). Prints numbers; asserts nothing
//! about time. Run: `cargo bench -p launcher --bench e2e`.
//!
//! 1. sequential CLI submissions per second (`launcher submit -- true`, one process each);
//! 2. end-to-end throughput: 1,000 `true` jobs submitted over one connection
//!    (64 in flight) until the last one has ended;
//! 3. `launcher run` latency, median of 10: `-N 2 -n 4 true` and `-N 1 -n 1 true`;
//! 4. direct MPI launch against `mpiexec.hydra` (when MPICH is installed);
//! 5. array throughput: `--array 1-N -- true` (N from `BENCH_ARRAYS`, default
//!    `1000,10000`), submit to the parent's end, with the CPU time the whole
//!    cluster (controller, agents, tasks) spent on it.
//!
//! `BENCH_ONLY=5` runs only part 5 (any comma-separated list of parts).

use launcher::cli::client::Client;
use launcher_proto::{JobSpec, Request, Response};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_launcher")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let n_submit: usize = std::env::var("BENCH_SUBMITS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let n_jobs: usize = std::env::var("BENCH_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let only: Option<Vec<u32>> =
        std::env::var("BENCH_ONLY").ok().map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let part = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));
    let dir = tempfile::tempdir().unwrap();
    let mut up = Command::new(bin());
    // The cluster as a user starts it from a shell: without what cargo adds to
    // our environment. Tasks inherit the agents' variables, and cargo's
    // LD_LIBRARY_PATH alone sends the loader of every `true` through a dozen
    // failed opens in target/ before it finds libc.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO") || k.starts_with("RUSTUP") || k == "LD_LIBRARY_PATH" {
            up.env_remove(&*k);
        }
    }
    let mut up = up
        .args(["up", "--nodes", "4", "--cpus-per-node", "2", "--state-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stderr.take().unwrap()).lines();
    let mut mode = String::new();
    let cred: PathBuf = loop {
        let line = lines.next().expect("launcher up exited").unwrap();
        if line.contains("node agents running") {
            mode = line.clone();
        }
        if let Some(p) = line.trim().strip_prefix("export LAUNCHER_CRED=") {
            break p.into();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    println!("cluster: {}", mode.trim_start_matches("launcher up: "));

    // 1. Sequential CLI submissions.
    let cli = |args: &[&str]| {
        let out = Command::new(bin()).args(args).env("LAUNCHER_CRED", &cred).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    std::env::set_var("LAUNCHER_CRED", &cred);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if part(1) {
        part1(&cli, n_submit, &cred);
    }
    if part(2) {
        part2(&rt, n_jobs);
    }
    if part(3) {
        part3(&cli);
    }
    if part(4) {
        part4(&cli, dir.path());
    }
    if part(5) {
        let sizes: Vec<u32> = std::env::var("BENCH_ARRAYS")
            .unwrap_or_else(|_| "1000,10000".into())
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        for n in sizes {
            part5(&rt, n, up.id() as i32);
        }
    }

    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(up.id() as i32, libc::SIGTERM);
    }
    let _ = up.wait();
}

/// CPU seconds (user + system) used so far by `pid` and every process below
/// it, living or reaped.
fn tree_cpu_s(pid: i32) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    let mut stack = vec![pid];
    let all: Vec<(i32, i32, f64)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| {
            let st = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let rest = &st[st.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            // Fields after the name: 0 state, 1 ppid, ... 11 utime, 12 stime, 13 cutime, 14 cstime.
            let ppid = f.get(1)?.parse().ok()?;
            let cpu: f64 = (11..=14).filter_map(|i| f.get(i)?.parse::<f64>().ok()).sum();
            Some((p, ppid, cpu / tick))
        })
        .collect();
    while let Some(p) = stack.pop() {
        for (c, pp, cpu) in &all {
            if *c == p {
                total += cpu;
            }
            if *pp == p {
                stack.push(*c);
            }
        }
    }
    total
}

/// One task of `true` on one CPU in the default queue.
fn true_job(name: &str) -> JobSpec {
    JobSpec {
        name: name.into(),
        queue: "default".into(),
        nodes: 1,
        tasks: 1,
        cpus_per_task: 1,
        command: vec!["true".into()],
        cwd: "/".into(),
        ..Default::default()
    }
}

fn part5(rt: &tokio::runtime::Runtime, n: u32, up: i32) {
    let (cpu0, t) = (tree_cpu_s(up), Instant::now());
    let (submit_ms, total_s) = rt.block_on(async {
        let client = Client::connect(None).await.unwrap();
        let spec = JobSpec {
            array: Some(launcher_proto::ArraySpec { start: 1, end: n, step: 1, max_running: None, sequential: false }),
            ..true_job("array")
        };
        let job = match client.call(&Request::Submit { spec: Box::new(spec), key: None }).await.unwrap() {
            Response::Submitted { job } => job,
            r => panic!("{r:?}"),
        };
        let submit_ms = t.elapsed().as_secs_f64() * 1000.0;
        // Wait as `launcher logs -f` does: the controller says when the job has ended.
        let info = launcher::cli::submit::follow(&client, job, None, false, true).await.unwrap();
        assert_eq!(info.state, launcher_proto::JobState::Succeeded, "{info:?}");
        (submit_ms, t.elapsed().as_secs_f64())
    });
    let cpu = tree_cpu_s(up) - cpu0;
    println!(
        "array --array 1-{n} -- true on 4 agents x 2 slots: {total_s:.2} s = {:.0} tasks/s (submit {submit_ms:.1} ms); cluster CPU {cpu:.2} s = {:.2} ms per task",
        n as f64 / total_s,
        cpu * 1000.0 / n as f64
    );
}

fn part1(cli: &dyn Fn(&[&str]) -> std::process::Output, n_submit: usize, cred: &PathBuf) {
    let t = Instant::now();
    for _ in 0..n_submit {
        cli(&["submit", "--parsable", "--", "true"]);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "sequential CLI submissions: {n_submit} in {secs:.2} s = {:.0} submissions/s ({:.2} ms each)",
        n_submit as f64 / secs,
        secs * 1000.0 / n_submit as f64
    );
    wait_idle(cred);
}

fn part2(rt: &tokio::runtime::Runtime, n_jobs: usize) {
    let (submit_s, total_s) = rt.block_on(async {
        let client = Arc::new(Client::connect(None).await.unwrap());
        let spec = true_job("true");
        let t = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut handles = Vec::with_capacity(n_jobs);
        for _ in 0..n_jobs {
            let (client, spec, permit) = (client.clone(), spec.clone(), sem.clone().acquire_owned().await.unwrap());
            handles.push(tokio::spawn(async move {
                let r = client.call(&Request::Submit { spec: Box::new(spec), key: None }).await.unwrap();
                drop(permit);
                assert!(matches!(r, Response::Submitted { .. }), "{r:?}");
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let submit_s = t.elapsed().as_secs_f64();
        loop {
            match client.call(&Request::Queue { all: false }).await.unwrap() {
                Response::Jobs(j) if j.is_empty() => break,
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        (submit_s, t.elapsed().as_secs_f64())
    });
    println!(
        "end to end: {n_jobs} `true` jobs on 4 agents x 2 slots in {total_s:.2} s = {:.0} jobs/s (submissions alone: {:.0}/s over one connection)",
        n_jobs as f64 / total_s,
        n_jobs as f64 / submit_s
    );
}

fn part3(cli: &dyn Fn(&[&str]) -> std::process::Output) {
    for (label, args) in [
        ("-N 2 -n 4 true", vec!["run", "-N", "2", "-n", "4", "--", "true"]),
        ("-N 1 -n 1 true", vec!["run", "-N", "1", "-n", "1", "--", "true"]),
    ] {
        cli(&args); // warm-up
        let v: Vec<f64> = (0..10)
            .map(|_| {
                let t = Instant::now();
                cli(&args);
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        let (min, max) = (v.iter().cloned().fold(f64::MAX, f64::min), v.iter().cloned().fold(0.0, f64::max));
        println!("launcher run {label}: median {:.1} ms (min {min:.1}, max {max:.1}, n=10)", median(v));
    }
}

fn part4(cli: &dyn Fn(&[&str]) -> std::process::Output, dir: &std::path::Path) {
    let hello = dir.join("hello_mpich");
    let built = Command::new("mpicc.mpich")
        .arg("-O2")
        .arg("-o")
        .arg(&hello)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../mpi-tests/c/hello.c"))
        .status()
        .is_ok_and(|s| s.success());
    if built {
        let h = hello.to_str().unwrap();
        let time10 = |f: &dyn Fn()| {
            f();
            median(
                (0..10)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        t.elapsed().as_secs_f64() * 1000.0
                    })
                    .collect(),
            )
        };
        let ours = time10(&|| {
            cli(&["run", "-N", "2", "-n", "4", h]);
        });
        let hydra = time10(&|| {
            let s = Command::new("mpiexec.hydra").args(["-n", "4", h]).stdout(Stdio::null()).status().unwrap();
            assert!(s.success());
        });
        println!(
            "MPI hello, 4 ranks: launcher run -N 2 -n 4 median {ours:.1} ms; mpiexec.hydra -n 4 (one host) median {hydra:.1} ms; ratio {:.2}",
            ours / hydra
        );
    } else {
        println!("MPI hello: SKIP (mpicc.mpich not found)");
    }
}

fn wait_idle(cred: &PathBuf) {
    loop {
        let out = Command::new(bin()).args(["queue", "--json"]).env("LAUNCHER_CRED", cred).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v.as_array().unwrap().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
