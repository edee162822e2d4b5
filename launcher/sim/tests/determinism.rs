//! The simulator is deterministic, and the core survives it: the same seed
//! gives the same journal, another seed another one, every job ends, and the
//! core's invariants hold throughout (checked every 50 batches) and at the end.

use launcher_sim::journal::fnv1a;
use launcher_sim::{Arrival, Sim, SimConfig, WorkloadConfig};

fn small(seed: u64) -> SimConfig {
    SimConfig {
        workload: WorkloadConfig { nodes: 200, cpus_per_node: 8, jobs: 2000, seed, ..WorkloadConfig::default() },
        check_every: 50,
        ..SimConfig::default()
    }
}

#[test]
fn same_seed_same_journal_other_seed_other_journal() {
    let path = std::env::temp_dir().join(format!("launcher-sim-journal-{}.txt", std::process::id()));
    let file = std::fs::File::create(&path).expect("create the journal file");
    let mut a = Sim::new(small(7), Some(Box::new(std::io::BufWriter::new(file))));
    let ra = a.run();
    a.core().sanity_check();

    // Every job ended, each exactly once in the journal.
    assert_eq!(ra.finished, ra.jobs, "every job finished");
    assert!(ra.timed_out > 0, "the overrunning jobs were killed at their limit");
    assert!(ra.succeeded > ra.jobs * 9 / 10, "most jobs succeed: {}", ra.succeeded);
    assert!(ra.utilisation > 0.3 && ra.utilisation <= 1.0, "utilisation {}", ra.utilisation);

    // The file holds exactly what was hashed.
    let text = std::fs::read_to_string(&path).expect("read the journal back");
    std::fs::remove_file(&path).ok();
    assert_eq!(fnv1a(0xcbf2_9ce4_8422_2325, text.as_bytes()), ra.journal_hash);
    assert_eq!(text.lines().count() as u64, ra.journal_lines);
    let count = |word: &str| text.lines().filter(|l| l.split(' ').nth(1) == Some(word)).count();
    assert_eq!(count("submit"), 2000);
    assert_eq!(count("end"), 2000);
    assert!(count("launch") >= 2000, "every job launched at least once");
    assert!(count("kill") >= ra.timed_out, "a kill for every timeout");

    let rb = Sim::new(small(7), None).run();
    assert_eq!(ra.journal_hash, rb.journal_hash, "same seed, same journal");
    assert_eq!(ra.journal_lines, rb.journal_lines);

    let rc = Sim::new(small(8), None).run();
    assert_ne!(ra.journal_hash, rc.journal_hash, "another seed, another journal");
    assert_eq!(rc.finished, rc.jobs);
}

#[test]
fn burst_arrivals_all_finish() {
    let mut cfg = small(3);
    cfg.workload.jobs = 600;
    cfg.workload.nodes = 100;
    cfg.workload.arrival = Arrival::Burst;
    let mut sim = Sim::new(cfg, None);
    let r = sim.run();
    sim.core().sanity_check();
    assert_eq!(r.finished, 600);
    // With every job queued at once the cluster stays busy: backfill keeps it packed.
    assert!(r.utilisation > 0.5, "utilisation {}", r.utilisation);
    assert!(r.wait_us.max > 0);
}
