//! Seeded synthetic workloads: job shapes, time limits, run times, arrivals.
//!
//! The mix follows what a general-purpose HPC cluster sees: most jobs are
//! small and short, a few are wide. Each job gets a time limit (`--time`) and
//! a run time drawn below it, so EASY backfill has honest limits to plan with;
//! a quarter of the jobs end far earlier than their limit (the usual
//! overestimate), and a small fraction run past it and are killed by the
//! core's timeout, which exercises the kill path.

use crate::rng::Rng;
use launcher_proto::JobSpec;

/// How jobs arrive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arrival {
    /// Every job is submitted at the start.
    Burst,
    /// A Poisson process whose rate offers `load` times the cluster's capacity
    /// (1.0 = exactly the CPU-seconds the cluster can deliver over the arrival span).
    Poisson {
        /// Offered load.
        load: f64,
    },
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Nodes in the cluster (job widths are capped to it).
    pub nodes: u32,
    /// CPUs of every node.
    pub cpus_per_node: u32,
    /// Jobs to generate.
    pub jobs: usize,
    /// Seed of every draw.
    pub seed: u64,
    /// Arrival process.
    pub arrival: Arrival,
    /// Share of jobs (0..=1) whose rank 0 exits 1.
    pub fail_share: f64,
    /// Share of jobs (0..=1) that would run past their time limit.
    pub overrun_share: f64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            nodes: 1000,
            cpus_per_node: 64,
            jobs: 10_000,
            seed: 1,
            arrival: Arrival::Poisson { load: 0.95 },
            fail_share: 0.02,
            overrun_share: 0.01,
        }
    }
}

/// One generated job.
#[derive(Clone, Debug)]
pub struct SimJob {
    /// Submission time, µs after the simulation starts.
    pub submit_at: u64,
    /// What is submitted.
    pub spec: JobSpec,
    /// How long its tasks run once launched, µs (may exceed the limit: then the core kills it).
    pub run_us: u64,
    /// Exit code of rank 0 (every other rank exits 0).
    pub exit_code: i32,
}

impl SimJob {
    /// CPUs the job holds while it runs.
    pub fn cpus(&self) -> u64 {
        u64::from(self.spec.tasks) * u64::from(self.spec.cpus_per_task)
    }
}

const MIN: u64 = 60;
const HOUR: u64 = 3600;

/// A realistic job spec (what `launcher submit` sends) with the given shape.
pub fn job_spec(i: usize, nodes: u32, tasks: u32, cpus_per_task: u32, time_limit_s: u64) -> JobSpec {
    let user = format!("user{:02}", i % 37);
    JobSpec {
        name: format!("job-{i}"),
        queue: "default".into(),
        nodes,
        tasks,
        cpus_per_task,
        time_limit_s: Some(time_limit_s),
        command: vec!["./app".into(), "--flag".into()],
        cwd: format!("/home/{user}/run"),
        user,
        ..Default::default()
    }
}

/// Generate the jobs of `cfg`, in submission order.
///
/// Mix: 70% one node with 1 to all of its CPUs (15 min to 4 h limits),
/// 20% 2 to 16 whole nodes, a task per CPU (1 to 8 h), 10% 64 to 512 whole
/// nodes, a task per node with all its CPUs (2 to 12 h);
/// widths are capped to the cluster (wide jobs to half of it).
pub fn generate(cfg: &WorkloadConfig) -> Vec<SimJob> {
    assert!(cfg.nodes >= 1 && cfg.cpus_per_node >= 1, "a cluster needs nodes and CPUs");
    let mut rng = Rng::new(cfg.seed);
    let c = cfg.cpus_per_node;
    let n = cfg.nodes;
    let mut jobs = Vec::with_capacity(cfg.jobs);
    for i in 0..cfg.jobs {
        let class = rng.unit();
        let (nodes, tasks, cpt, limit) = if class < 0.70 {
            // 1, 2, 4, ... up to a whole node.
            let max_pow = 31 - c.leading_zeros();
            let tasks = (1u32 << rng.range(0, u64::from(max_pow))).min(c);
            (1, tasks, 1, rng.pick(&[15 * MIN, 30 * MIN, HOUR, 2 * HOUR, 4 * HOUR]))
        } else if class < 0.90 {
            let nodes = (rng.range(2, 16) as u32).min(n);
            (nodes, nodes * c, 1, rng.pick(&[HOUR, 2 * HOUR, 4 * HOUR, 8 * HOUR]))
        } else {
            // Capped to half the cluster, so that a small test cluster is not drained for every wide job.
            let nodes = (rng.range(64, 512) as u32).min((n / 2).max(1));
            // Hybrid MPI + threads: one task per node holding all its CPUs.
            (nodes, nodes, c, rng.pick(&[2 * HOUR, 4 * HOUR, 8 * HOUR, 12 * HOUR]))
        };
        let limit_us = limit * 1_000_000;
        let run_us = if rng.chance(cfg.overrun_share) {
            limit_us + 10 * MIN * 1_000_000
        } else if rng.chance(0.25) {
            (limit_us as f64 * (0.01 + 0.19 * rng.unit())) as u64
        } else {
            (limit_us as f64 * (0.2 + 0.8 * rng.unit())) as u64
        }
        .max(1_000_000);
        let exit_code = i32::from(rng.chance(cfg.fail_share));
        jobs.push(SimJob { submit_at: 0, spec: job_spec(i, nodes, tasks, cpt, limit), run_us, exit_code });
    }
    if let Arrival::Poisson { load } = cfg.arrival {
        assert!(load > 0.0, "the offered load must be above zero");
        // Spread the arrivals so that the work offered per second is `load`
        // times what the cluster delivers.
        let work: f64 = jobs.iter().map(|j| j.cpus() as f64 * j.run_us.min(j.limit_us()) as f64).sum();
        let capacity = f64::from(n) * f64::from(c);
        let mean_gap = work / capacity / load / cfg.jobs.max(1) as f64;
        let mut t = 0f64;
        for j in &mut jobs {
            j.submit_at = t as u64;
            t += rng.exp(mean_gap);
        }
    }
    jobs
}

impl SimJob {
    /// Its time limit in µs.
    pub fn limit_us(&self) -> u64 {
        self.spec.time_limit_s.unwrap_or(u64::MAX / 1_000_000) * 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_valid() {
        let cfg = WorkloadConfig { nodes: 200, cpus_per_node: 32, jobs: 3000, ..Default::default() };
        let a = generate(&cfg);
        let b = generate(&cfg);
        assert_eq!(a.len(), 3000);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.submit_at, &x.spec, x.run_us, x.exit_code), (y.submit_at, &y.spec, y.run_us, y.exit_code));
        }
        let mut last = 0;
        for j in &a {
            assert!(j.spec.nodes >= 1 && j.spec.nodes <= 100);
            assert!(j.spec.tasks >= j.spec.nodes && j.cpus() <= u64::from(j.spec.nodes) * 32);
            assert!(j.submit_at >= last, "arrivals in order");
            last = j.submit_at;
            launcher_core::validate_spec(&j.spec).expect("the core accepts every generated job");
        }
        let wide = a.iter().filter(|j| j.spec.nodes >= 64).count();
        assert!(wide > 150 && wide < 450, "about 10% wide jobs, got {wide}");
        let other = generate(&WorkloadConfig { seed: 2, ..cfg });
        assert!(a.iter().zip(&other).any(|(x, y)| x.run_us != y.run_us), "another seed, another workload");
    }
}
