//! What starting a task costs from an agent-sized process: tokio's `Command`
//! with a (no-op) `pre_exec`, which must fork, against `nodeagent::spawn`
//! (`clone(CLONE_VM | CLONE_VFORK)`). Prints CPU time (this process and its
//! reaped children, user + system) and wall time per `/bin/true`, started
//! and waited one after the other from a task on a 4-worker tokio runtime,
//! after ~300 MB of memory has been touched (so fork has page tables to
//! copy). Asserts nothing about time.
//!
//! Run: `cargo bench -p nodeagent --bench spawn`. Knobs: `SPAWN_BENCH_N`
//! (spawns per round, 2000), `SPAWN_BENCH_MB` (memory touched, 300).

use nodeagent::spawn::{spawn, SpawnSpec};
use std::ffi::CString;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// User + system CPU seconds of this process and its reaped children.
fn cpu_secs() -> f64 {
    let get = |who| {
        // SAFETY: zeroed rusage is valid; getrusage fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: writes into the local.
        assert_eq!(unsafe { libc::getrusage(who, &mut ru) }, 0);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    get(libc::RUSAGE_SELF) + get(libc::RUSAGE_CHILDREN)
}

/// The environment and argv a task gets, built per spawn as the agent does.
fn task_env() -> Vec<CString> {
    std::env::vars().map(|(k, v)| CString::new(format!("{k}={v}")).unwrap()).collect()
}

async fn with_command() {
    let mut cmd = tokio::process::Command::new("/bin/true");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
    // SAFETY: the closure does nothing; it is there to force the fork path, as in exec.rs.
    unsafe { cmd.pre_exec(|| Ok(())) };
    let status = cmd.spawn().expect("spawn /bin/true").wait().await.unwrap();
    assert!(status.success());
}

async fn with_spawn() {
    let argv = [CString::new("true").unwrap()];
    let envp = task_env();
    let envp: Vec<&std::ffi::CStr> = envp.iter().map(|c| c.as_c_str()).collect();
    let mut spec = SpawnSpec::new(c"/bin/true", &argv, &envp);
    spec.new_pgroup = true;
    let status = spawn(&spec).expect("spawn /bin/true").wait().await.unwrap();
    assert!(status.success());
}

fn measure(
    rt: &tokio::runtime::Runtime,
    name: &str,
    n: usize,
    one: fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    let (cpu0, t0) = (cpu_secs(), Instant::now());
    rt.block_on(async move {
        tokio::spawn(async move {
            for _ in 0..n {
                one().await;
            }
        })
        .await
        .unwrap()
    });
    let (cpu, wall) = (cpu_secs() - cpu0, t0.elapsed());
    let per = |d: f64| d / n as f64 * 1e6;
    println!(
        "{name:<44} {n} spawns: cpu {:7.1} µs/spawn, wall {:7.1} µs/spawn ({:.2} s cpu, {:.2} s wall)",
        per(cpu),
        per(wall.as_secs_f64()),
        cpu,
        wall.as_secs_f64()
    );
}

fn main() {
    let n = env_or("SPAWN_BENCH_N", 2000);
    let mb = env_or("SPAWN_BENCH_MB", 300);
    // Touch every page, so the parent has ~`mb` MB of mapped, populated memory.
    let mut ballast = vec![0u8; mb << 20];
    for b in ballast.iter_mut().step_by(4096) {
        *b = 1;
    }
    std::hint::black_box(&ballast);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    // Something for the workers to hold, as the agent's tasks and connections do.
    let _ticker = rt.spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    println!("spawn bench: {mb} MB touched, 4 tokio workers, {n} sequential spawn+wait of /bin/true per round");
    for round in 1..=2 {
        println!("round {round}");
        measure(&rt, "tokio Command + pre_exec (fork)", n, || Box::pin(with_command()));
        measure(&rt, "nodeagent::spawn (clone VM|VFORK)", n, || Box::pin(with_spawn()));
    }
    drop(ballast);
}
