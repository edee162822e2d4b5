//! launcher-sim: the scheduler core under simulated time and simulated agents.
//!
//! [`Sim`] drives the real `launcher-core` [`Core`](launcher_core::Core) — the
//! same state machine the controller runs — from a seeded synthetic workload
//! ([`workload`]): a mix of one-node and many-node jobs with time limits, run
//! times drawn below them, a few failures and a few overruns. Simulated agents
//! answer `Launch` with `Started` and, when the drawn run time is over, a
//! `TaskExited` for each task; they answer `Kill` with `TaskExited` by
//! SIGTERM. Time jumps from event to event (see [`sim`]), so a 10,000-node
//! cluster's day runs in seconds.
//!
//! Every event and every effect becomes a line of a [`journal::Journal`] whose
//! FNV-1a hash is printed: the same seed gives the same journal, byte for
//! byte, which is how a change to the core shows up as a change in
//! behaviour. Wall-clock costs (per scheduling pass, per submission) are
//! measured around the core's calls only and never enter the journal.
//!
//! Run it:
//!
//! ```text
//! cargo run --release -p launcher-sim -- --nodes 10000 --cpus-per-node 64 --jobs 100000 --seed 1
//! cargo run --release -p launcher-sim -- --nodes 200 --jobs 2000 --seed 7 --journal /tmp/j.txt
//! cargo bench -p launcher-sim          # 10,000 nodes, 100,000 queued jobs: pass time, submit cost, memory
//! ```
//!
//! It prints utilisation (allocated CPU-time over capacity × makespan), the
//! mean and 95th percentile of submit-to-start waits, jobs decided per second
//! of scheduling, and the distribution of the wall-clock time of `schedule`.

pub mod journal;
pub mod rng;
pub mod sim;
pub mod stats;
pub mod workload;

pub use sim::{Report, Sim, SimConfig, SimFx};
pub use workload::{generate, Arrival, SimJob, WorkloadConfig};
