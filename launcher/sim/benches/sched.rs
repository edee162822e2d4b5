//! Scheduling figures for 10,000 nodes and 100,000 queued jobs.
//!
//! `cargo bench -p launcher-sim` prints, next to each target:
//! 1. submit-to-decision cost per job: 100,000 submissions with `schedule`
//!    after every 100 (as the driver does per batch), into an empty cluster
//!    and into a full one; cost = time in `on_submit` + `schedule` / jobs;
//! 2. an incremental pass after one job ends: the cluster full, 100,000
//!    waiting; end one running job (every task exits), then time `schedule`;
//!    200 times;
//! 3. memory per queued job: live heap bytes (a counting global allocator)
//!    before and after queueing 100,000 jobs into the full cluster;
//! 4. the end of one wide pure-MPI job (512 nodes × 64 ranks), rank by rank.
//!
//! The numbers are wall-clock on whatever machine runs this; builds and tests
//! running beside it inflate them.

use launcher_core::{Config, Core, SubmitOutcome, Time};
use launcher_proto::{ExitStatus, FromAgent, Inventory, JobId, JobSpec, NodeId, RegisterMsg, ToAgent};
use launcher_sim::rng::Rng;
use launcher_sim::stats::Summary;
use launcher_sim::workload::job_spec;
use launcher_sim::SimFx;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Instant;

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` with the same arguments; the
// counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NODES: u32 = 10_000;
const CPUS: u32 = 64;
const JOBS: usize = 100_000;
const BATCH: usize = 100;
const ENDS: usize = 200;

/// A running job as its agents see it: node → ranks.
type Running = BTreeMap<JobId, (u32, Vec<(NodeId, Vec<u32>)>)>;

fn cluster(nodes: u32, now: Time) -> (Core, SimFx) {
    let mut core = Core::new(Config::default());
    let mut fx = SimFx::default();
    for i in 1..=nodes {
        let name = format!("node{i:05}");
        let reg = RegisterMsg {
            name: name.clone(),
            inventory: Inventory {
                cpus: CPUS,
                mem_mib: 256 * 1024,
                hostname: name,
                addr: format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255),
                ..Default::default()
            },
            jobs: vec![],
        };
        core.on_register(now, &mut fx, reg);
    }
    fx.sends.clear();
    (core, fx)
}

/// What users submit: 1 to 4 nodes (mostly 1), 1 to 64 tasks per node, a time limit.
fn user_spec(rng: &mut Rng, i: usize) -> JobSpec {
    let u = rng.unit();
    let nodes = if u < 0.60 {
        1
    } else if u < 0.85 {
        2
    } else if u < 0.95 {
        3
    } else {
        4
    };
    let per = rng.pick(&[1u32, 2, 4, 8, 16, 32, 64]);
    let limit = rng.pick(&[900u64, 3600, 4 * 3600, 12 * 3600]);
    job_spec(i, nodes, nodes * per, 1, limit)
}

fn submit(core: &mut Core, fx: &mut SimFx, now: Time, spec: JobSpec, key: u128) -> JobId {
    match core.on_submit(now, fx, spec, Some(key)) {
        SubmitOutcome::Accepted(id) => id,
        o => panic!("submission refused: {o:?}"),
    }
}

/// Hand launches to the agents: every node reports Started at once.
fn deliver(core: &mut Core, fx: &mut SimFx, now: Time, running: &mut Running) {
    let sends = std::mem::take(&mut fx.sends);
    for (node, msg) in &sends {
        if let ToAgent::Launch(l) = msg {
            let e = running.entry(l.job).or_insert((l.attempt, Vec::new()));
            e.1.push((*node, l.tasks.iter().map(|t| t.rank).collect()));
        }
    }
    for (node, msg) in sends {
        if let ToAgent::Launch(l) = msg {
            core.on_agent(now, fx, node, FromAgent::Started { job: l.job, attempt: l.attempt });
        }
    }
    fx.sends.clear();
    fx.changed.clear();
}

/// Submit `JOBS` jobs in batches with a pass after each; (submit ns, schedule ns, passes).
fn submit_all(
    core: &mut Core,
    fx: &mut SimFx,
    now: Time,
    rng: &mut Rng,
    running: &mut Running,
) -> (u64, u64, Vec<u64>) {
    let specs: Vec<(JobSpec, u128)> =
        (0..JOBS).map(|i| (user_spec(rng, i), u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()))).collect();
    let (mut t_submit, mut t_sched) = (0u64, 0u64);
    let mut passes = Vec::with_capacity(JOBS / BATCH);
    let mut specs = specs.into_iter();
    for _ in 0..JOBS / BATCH {
        let batch: Vec<(JobSpec, u128)> = specs.by_ref().take(BATCH).collect();
        let t = Instant::now();
        for (spec, key) in batch {
            submit(core, fx, now, spec, key);
        }
        t_submit += t.elapsed().as_nanos() as u64;
        let t = Instant::now();
        core.schedule(now, fx);
        let d = t.elapsed().as_nanos() as u64;
        t_sched += d;
        passes.push(d);
        deliver(core, fx, now, running);
    }
    (t_submit, t_sched, passes)
}

fn us(ns: f64) -> f64 {
    ns / 1e3
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets"
    } else {
        "MISSES"
    }
}

fn print_cost(label: &str, jobs: usize, t_submit: u64, t_sched: u64, passes: &mut [u64], started: usize) {
    let per = (t_submit + t_sched) as f64 / jobs as f64;
    let p = Summary::of(passes);
    println!(
        "  {label}: {:.1} us/job (on_submit {:.1} + schedule {:.1}); {started} started; passes p50 {:.0} us, max {:.0} us — target <= 20 us: {}",
        us(per),
        us(t_submit as f64 / jobs as f64),
        us(t_sched as f64 / jobs as f64),
        us(p.p50 as f64),
        us(p.max as f64),
        verdict(per <= 20_000.0)
    );
}

fn run() {
    // LAUNCHER_SIM_BENCH_SKIP=1,4 leaves out parts (1a) and (4), e.g. to profile (2).
    let skip = std::env::var("LAUNCHER_SIM_BENCH_SKIP").unwrap_or_default();
    let skip = |part: &str| skip.split(',').any(|s| s.trim() == part);
    let now = Time(1_000_000_000);
    let mut rng = Rng::new(42);
    println!("launcher-sim bench: {NODES} nodes x {CPUS} CPUs, {JOBS} jobs, schedule after every {BATCH} submits");
    println!(
        "  (inline sizes: Job {} bytes, of which JobSpec {} bytes)",
        std::mem::size_of::<launcher_core::Job>(),
        std::mem::size_of::<JobSpec>()
    );

    // (1a) Into an empty cluster: the first jobs start, the rest queue.
    println!("(1) submit-to-decision cost per job");
    if !skip("1") {
        let (mut core, mut fx) = cluster(NODES, now);
        let mut running = Running::new();
        let (ts, tp, mut passes) = submit_all(&mut core, &mut fx, now, &mut rng, &mut running);
        print_cost("empty cluster", JOBS, ts, tp, &mut passes, running.len());
    }

    // (1b) + (3) Into a full cluster: fill every node with a whole-node job first.
    let (mut core, mut fx) = cluster(NODES, now);
    let mut running = Running::new();
    for i in 0..NODES as usize {
        let limit = rng.pick(&[3600u64, 4 * 3600, 8 * 3600, 12 * 3600]);
        let key = u128::from(rng.next_u64());
        submit(&mut core, &mut fx, now, job_spec(i, 1, CPUS, 1, limit), key);
    }
    core.schedule(now, &mut fx);
    deliver(&mut core, &mut fx, now, &mut running);
    assert_eq!(running.len(), NODES as usize, "every node runs a filler job");
    let before = LIVE.load(Relaxed);
    let (ts, tp, mut passes) = submit_all(&mut core, &mut fx, now, &mut rng, &mut running);
    let after = LIVE.load(Relaxed);
    print_cost("full cluster ", JOBS, ts, tp, &mut passes, running.len() - NODES as usize);
    let waiting = core.waiting_count();
    let per_job = (after - before) as f64 / JOBS as f64;
    println!("(3) memory per queued job");
    println!(
        "  {:.0} bytes/job ({:.1} MiB live for {JOBS} queued; {waiting} waiting) — target <= 1024: {}",
        per_job,
        (after - before) as f64 / (1 << 20) as f64,
        verdict(per_job <= 1024.0)
    );

    // (2) End one job at a time, time the next pass.
    let mut t = now;
    let (mut pass_ns, mut end_ns, mut started) = (Vec::with_capacity(ENDS), Vec::with_capacity(ENDS), 0usize);
    for _ in 0..ENDS {
        t = t.plus_ms(1000);
        let nth = rng.range(0, running.len() as u64 - 1) as usize;
        let id = *running.keys().nth(nth).expect("in range");
        let (attempt, nodes) = running.remove(&id).expect("present");
        let s = Instant::now();
        for (node, ranks) in nodes {
            for rank in ranks {
                let status = ExitStatus::Code(0);
                core.on_agent(t, &mut fx, node, FromAgent::TaskExited { job: id, attempt, rank, status });
            }
        }
        end_ns.push(s.elapsed().as_nanos() as u64);
        fx.sends.clear();
        let s = Instant::now();
        started += core.schedule(t, &mut fx);
        pass_ns.push(s.elapsed().as_nanos() as u64);
        deliver(&mut core, &mut fx, t, &mut running);
    }
    let p = Summary::of(&mut pass_ns);
    let e = Summary::of(&mut end_ns);
    println!("(2) incremental pass after one job ends ({ENDS} times, {} waiting at the end)", core.waiting_count());
    println!(
        "  schedule: mean {:.0} us, p50 {:.0} us, p99 {:.0} us, max {:.0} us; {started} jobs started — target < 10 ms: {}",
        us(p.mean),
        us(p.p50 as f64),
        us(p.p99 as f64),
        us(p.max as f64),
        verdict((p.p99 as f64) < 10e6)
    );
    println!(
        "  the job's end (every TaskExited): mean {:.0} us, p50 {:.0} us, max {:.0} us",
        us(e.mean),
        us(e.p50 as f64),
        us(e.max as f64)
    );
    drop(core);
    if skip("4") {
        return;
    }

    // (4) The end of one wide pure-MPI job: every rank reports its exit.
    let (mut core, mut fx) = cluster(512, now);
    let mut running = Running::new();
    let id = submit(&mut core, &mut fx, now, job_spec(0, 512, 512 * CPUS, 1, 3600), 1);
    core.schedule(now, &mut fx);
    deliver(&mut core, &mut fx, now, &mut running);
    let (attempt, nodes) = running.remove(&id).expect("the wide job started");
    let s = Instant::now();
    for (node, ranks) in nodes {
        for rank in ranks {
            let status = ExitStatus::Code(0);
            core.on_agent(now, &mut fx, node, FromAgent::TaskExited { job: id, attempt, rank, status });
        }
    }
    let d = s.elapsed();
    println!("(4) end of one 512-node x {CPUS}-rank job: {} TaskExited in {:.1} ms", 512 * CPUS, d.as_secs_f64() * 1e3);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this unoptimised without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("launcher-sim bench: skipped; run it with `cargo bench -p launcher-sim` (release build)");
        return;
    }
    run();
    println!("For comparison: Slurm's defaults look at 500 jobs per 30-second backfill cycle (bf_max_job_test, bf_interval).");
}
