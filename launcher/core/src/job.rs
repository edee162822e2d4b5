//! Persistent records: a job with its current attempt, and a node's identity.
//!
//! These are exactly what the store keeps (postcard blobs); the core's live
//! indexes are rebuilt from them on restart.

use launcher_proto::{ExitStatus, Inventory, JobId, JobSpec, JobState, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One node's share of a job attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alloc {
    /// The node.
    pub node: NodeId,
    /// Its name at allocation time.
    pub name: String,
    /// Its address at allocation time.
    pub addr: String,
    /// First global rank on the node.
    pub first_rank: u32,
    /// Number of tasks on the node.
    pub tasks: u32,
    /// CPUs held.
    pub cpus: u32,
    /// Memory held, MiB.
    pub mem_mib: u64,
    /// The agent confirmed that it spawned every local task.
    pub started: bool,
}

/// Why a job failed (the first cause wins).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailReason {
    /// A task exited non-zero or was killed by a signal.
    NonZeroExit {
        /// Rank.
        rank: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// A task could not be started.
    LaunchFailed {
        /// Rank.
        rank: u32,
        /// Error text from the agent.
        error: String,
    },
    /// A node holding tasks was lost.
    NodeFail {
        /// Node name.
        node: String,
    },
    /// The attempt ran past `--time`.
    Timeout,
    /// Cancelled while running.
    Cancelled,
    /// A rank that had started PMI (`MPI_Init`) exited before `MPI_Finalize`.
    ExitBeforeFinalize {
        /// Rank.
        rank: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// A rank called `MPI_Abort`.
    MpiAbort {
        /// Rank.
        rank: u32,
        /// The code it asked for.
        code: i32,
        /// Its message.
        message: Option<String>,
    },
    /// A dependency can no longer be satisfied; the job never ran.
    DependencyNeverSatisfied {
        /// The dependency, as written (`afterok:12`).
        dep: String,
        /// Why not.
        why: String,
    },
    /// Some children of an array job failed.
    ChildrenFailed {
        /// How many.
        failed: u32,
        /// The first (lowest index) one.
        first: JobId,
    },
}

impl FailReason {
    /// Machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            FailReason::NonZeroExit { .. } => "NonZeroExit",
            FailReason::LaunchFailed { .. } => "LaunchFailed",
            FailReason::NodeFail { .. } => "NodeFail",
            FailReason::Timeout => "Timeout",
            FailReason::Cancelled => "Cancelled",
            FailReason::MpiAbort { .. } => "MpiAbort",
            FailReason::DependencyNeverSatisfied { .. } => "DependencyNeverSatisfied",
            FailReason::ChildrenFailed { .. } => "ChildrenFailed",
            FailReason::ExitBeforeFinalize { .. } => "ExitBeforeFinalize",
        }
    }

    /// One sentence for `launcher show`.
    pub fn text(&self) -> String {
        match self {
            FailReason::NonZeroExit { rank, status } => format!("rank {rank} ended with {status}"),
            FailReason::LaunchFailed { rank, error } => format!("rank {rank} could not start: {error}"),
            FailReason::NodeFail { node } => {
                format!("node {node} lost the job's tasks (its agent stayed away past the node timeout, or came back without them)")
            }
            FailReason::Timeout => "the attempt ran past its --time limit and was terminated".into(),
            FailReason::Cancelled => "cancelled while running; its tasks were terminated".into(),
            FailReason::ExitBeforeFinalize { rank, status } => {
                format!("rank {rank} ended with {status} after MPI_Init but before MPI_Finalize; the job's other ranks were stopped")
            }
            FailReason::MpiAbort { rank, code, message } => match message {
                Some(m) => format!("rank {rank} called MPI_Abort with code {code}: {m}"),
                None => format!("rank {rank} called MPI_Abort with code {code}"),
            },
            FailReason::DependencyNeverSatisfied { dep, why } => {
                format!("dependency {dep} can never be satisfied: {why}")
            }
            FailReason::ChildrenFailed { failed, first } => {
                format!(
                    "{failed} child job(s) failed or were cancelled, the first being {first} (see `launcher show {first}`)"
                )
            }
        }
    }
}

/// A job and its current attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Id.
    pub id: JobId,
    /// The submission.
    pub spec: JobSpec,
    /// Idempotency key from the client.
    pub key: Option<u128>,
    /// State.
    pub state: JobState,
    /// Attempt number (0 before the first start).
    pub attempt: u32,
    /// Nodes of the current attempt, in node-rank order.
    pub alloc: Vec<Alloc>,
    /// Task exits of the current attempt, by rank.
    pub exits: BTreeMap<u32, ExitStatus>,
    /// First cause of failure.
    pub fail: Option<FailReason>,
    /// Termination requested (and why).
    pub killing: Option<FailReason>,
    /// Submit time, µs since epoch.
    pub submit_time: u64,
    /// Attempt start time.
    pub start_time: Option<u64>,
    /// End time.
    pub end_time: Option<u64>,
    /// Exit code once terminal.
    pub exit_code: Option<i32>,
    /// For an array parent: every child's state.
    pub array: Option<Box<ArrayState>>,
}

/// Where one array child stands; one byte per child in the parent's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum ChildState {
    /// Waiting on a dependency (the parent's, SEQUENTIAL's or N_TO_N's).
    Pending,
    /// Waiting for resources.
    Runnable,
    /// Starting or running: a full child [`Job`] record exists.
    Active,
    /// Done, exit 0.
    Succeeded,
    /// Done, failed all its attempts (or could never run).
    Failed,
    /// Cancelled before it started.
    Cancelled,
}

impl ChildState {
    /// Done, one way or another.
    pub fn is_terminal(self) -> bool {
        matches!(self, ChildState::Succeeded | ChildState::Failed | ChildState::Cancelled)
    }

    /// The job state it corresponds to.
    pub fn job_state(self) -> JobState {
        match self {
            ChildState::Pending => JobState::Pending,
            ChildState::Runnable => JobState::Runnable,
            ChildState::Active => JobState::Running,
            ChildState::Succeeded => JobState::Succeeded,
            ChildState::Failed => JobState::Failed,
            ChildState::Cancelled => JobState::Cancelled,
        }
    }
}

impl ArrayState {
    /// Apply a persisted child record (see `Record::Child`) to a loaded parent.
    pub fn apply_child(&mut self, pos: u32, state: ChildState, attempts: u32, end: Option<ChildEnd>) {
        let Some(slot) = self.states.get_mut(pos as usize) else { return };
        *slot = state;
        if attempts > 0 {
            self.attempts.insert(pos, attempts);
        }
        match end {
            Some(e) => {
                self.ends.insert(pos, e);
            }
            None => {
                self.ends.remove(&pos);
            }
        }
    }
}

/// How a failed child ended, kept sparse in the parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildEnd {
    /// Exit code.
    pub exit_code: i32,
    /// Why.
    pub fail: FailReason,
}

/// An array job's children, stored compactly: a 100,000-child array is one
/// record of ~100 KB, not 100,000 rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayState {
    /// Child states, by position (index = start + position × step).
    pub states: Vec<ChildState>,
    /// Attempts made, by position, for children that have started.
    pub attempts: BTreeMap<u32, u32>,
    /// Failed children's ends, by position.
    pub ends: BTreeMap<u32, ChildEnd>,
}

impl Job {
    /// Absolute deadline of the running attempt, µs since epoch.
    pub fn deadline(&self) -> Option<u64> {
        let start = self.start_time?;
        let limit = self.spec.time_limit_s?;
        Some(start.saturating_add(limit.saturating_mul(1_000_000)))
    }

    /// The allocation entry holding `rank`.
    pub fn alloc_of_rank(&self, rank: u32) -> Option<&Alloc> {
        self.alloc.iter().find(|a| rank >= a.first_rank && rank < a.first_rank + a.tasks)
    }
}

/// A node's identity and last inventory, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Id.
    pub id: NodeId,
    /// Name.
    pub name: String,
    /// Last reported inventory.
    pub inventory: Inventory,
}
