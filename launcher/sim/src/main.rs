//! `launcher-sim`: run the scheduler core against a seeded synthetic workload
//! and print utilisation, waits and the cost of scheduling (see the crate docs).

use clap::{Parser, ValueEnum};
use launcher_sim::{Arrival, Report, Sim, SimConfig, WorkloadConfig};
use std::io::BufWriter;
use std::process::ExitCode;

/// Drive launcher's scheduler core with simulated time and agents.
#[derive(Parser, Debug)]
#[command(name = "launcher-sim", version)]
struct Args {
    /// Nodes in the simulated cluster.
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    /// CPUs of every node.
    #[arg(long, default_value_t = 64)]
    cpus_per_node: u32,
    /// Jobs to submit.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Seed of the workload; the same seed gives the same journal.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How jobs arrive: all at the start, or as a Poisson process offering --load.
    #[arg(long, value_enum, default_value_t = ArrivalArg::Poisson)]
    arrival: ArrivalArg,
    /// Offered load for Poisson arrivals (1.0 = the cluster's capacity).
    #[arg(long, default_value_t = 0.95)]
    load: f64,
    /// Percentage of jobs whose rank 0 exits 1.
    #[arg(long, default_value_t = 2.0)]
    fail_pct: f64,
    /// Percentage of jobs that run past their time limit (the core kills them).
    #[arg(long, default_value_t = 1.0)]
    overrun_pct: f64,
    /// Write the event journal to this file.
    #[arg(long, value_name = "FILE")]
    journal: Option<std::path::PathBuf>,
    /// Run the core's sanity check every N batches and at the end (slow: O(jobs × nodes)).
    #[arg(long, value_name = "N", default_value_t = 0)]
    check_every: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ArrivalArg {
    /// Every job at time zero.
    Burst,
    /// Poisson arrivals.
    Poisson,
}

/// The run's configuration, or a message naming the bad flag.
fn config(a: &Args) -> Result<SimConfig, String> {
    if a.nodes == 0 || a.nodes > 1_000_000 {
        return Err(format!("--nodes {} must be between 1 and 1000000", a.nodes));
    }
    if a.cpus_per_node == 0 || a.cpus_per_node > 4096 {
        return Err(format!("--cpus-per-node {} must be between 1 and 4096", a.cpus_per_node));
    }
    if !(a.load > 0.0 && a.load.is_finite()) {
        return Err(format!("--load {} must be a number above 0 (1.0 offers exactly the capacity)", a.load));
    }
    for (flag, v) in [("--fail-pct", a.fail_pct), ("--overrun-pct", a.overrun_pct)] {
        if !(0.0..=100.0).contains(&v) {
            return Err(format!("{flag} {v} must be a percentage between 0 and 100"));
        }
    }
    let arrival = match a.arrival {
        ArrivalArg::Burst => Arrival::Burst,
        ArrivalArg::Poisson => Arrival::Poisson { load: a.load },
    };
    Ok(SimConfig {
        workload: WorkloadConfig {
            nodes: a.nodes,
            cpus_per_node: a.cpus_per_node,
            jobs: a.jobs,
            seed: a.seed,
            arrival,
            fail_share: a.fail_pct / 100.0,
            overrun_share: a.overrun_pct / 100.0,
        },
        check_every: a.check_every,
        ..SimConfig::default()
    })
}

fn print(a: &Args, r: &Report) {
    let s = |us: f64| us / 1e6;
    println!(
        "workload:     {} nodes x {} CPUs, {} jobs, seed {}, arrival {:?}{}",
        r.nodes,
        r.cpus_per_node,
        r.jobs,
        a.seed,
        a.arrival,
        if matches!(a.arrival, ArrivalArg::Poisson) { format!(" (load {})", a.load) } else { String::new() }
    );
    println!(
        "jobs:         {} finished ({} succeeded, {} timed out), {} unfinished",
        r.finished,
        r.succeeded,
        r.timed_out,
        r.jobs - r.finished
    );
    println!("makespan:     {:.2} h simulated", s(r.makespan_us as f64) / 3600.0);
    println!("utilisation:  {:.1}% (allocated CPU-time / capacity over the makespan)", r.utilisation * 100.0);
    println!(
        "wait:         mean {:.0} s, p50 {:.0} s, p95 {:.0} s, max {:.0} s (submit to start, simulated)",
        s(r.wait_us.mean),
        s(r.wait_us.p50 as f64),
        s(r.wait_us.p95 as f64),
        s(r.wait_us.max as f64)
    );
    let us = |ns: f64| ns / 1e3;
    println!(
        "scheduling:   {} passes: mean {:.1} us, p50 {:.1} us, p99 {:.1} us, max {:.1} us; {:.3} s in all",
        r.pass_ns.count,
        us(r.pass_ns.mean),
        us(r.pass_ns.p50 as f64),
        us(r.pass_ns.p99 as f64),
        us(r.pass_ns.max as f64),
        r.pass_ns.total as f64 / 1e9
    );
    println!(
        "decisions:    {} jobs started, {:.0} jobs/s of scheduling time; on_submit mean {:.1} us, p99 {:.1} us",
        r.started,
        r.decisions_per_s(),
        us(r.submit_ns.mean),
        us(r.submit_ns.p99 as f64)
    );
    println!(
        "run:          {} events in {} batches, {} records persisted, {:.2} s wall",
        r.events,
        r.batches,
        r.persisted,
        r.wall.as_secs_f64()
    );
    println!("journal:      {} lines, fnv1a64 {:016x}", r.journal_lines, r.journal_hash);
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(m) => {
            eprintln!("launcher-sim: error: {m}");
            return ExitCode::from(2);
        }
    };
    let journal: Option<Box<dyn std::io::Write>> = match &args.journal {
        None => None,
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Some(Box::new(BufWriter::new(f))),
            Err(e) => {
                eprintln!("launcher-sim: error: cannot create the journal file {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
    };
    if cfg!(debug_assertions) {
        eprintln!("launcher-sim: note: a debug build; scheduling costs are only meaningful with --release");
    }
    let mut sim = Sim::new(cfg, journal);
    let report = sim.run();
    print(&args, &report);
    if report.finished < report.jobs {
        eprintln!("launcher-sim: error: {} job(s) never finished", report.jobs - report.finished);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
