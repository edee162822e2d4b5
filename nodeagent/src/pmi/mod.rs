//! PMI-1 "simple" wire-protocol server, as a sans-I/O engine.
//!
//! This is how MPI ranks wire up through the node agent instead of `mpirun`: every
//! rank of a job step talks the PMI-1 line protocol to the agent on its node
//! (MPICH's built-in client over `PMI_FD` or `PMI_PORT`; Open MPI 4.1 through a
//! PMI-1 client shim loaded by its `pmix/flux` component), the agents allgather
//! the key-value puts at every barrier ("fence") through the controller, and each
//! agent answers `get`s from its own replica. The measured protocol, transcripts
//! and limits live in `shared/research/mpi-wiring.md` (§2, §4.2, §7.1).
//!
//! Theory of operation, in the style of flux-core's `libpmi/simple_server.c`:
//!
//! * [`wire`] turns one request line into a typed [`wire::Request`] and a
//!   [`wire::Reply`] into the exact bytes the clients expect (hydra's strings).
//! * [`Engine`] is one job step on one node. It owns no socket, task, or clock. The driver
//!   feeds it events: [`Engine::on_line`] (a line from a rank),
//!   [`Engine::on_initack`] (the first line on a `PMI_PORT` connection),
//!   [`Engine::on_fence_done`] (the controller's merged fence delta), and
//!   [`Engine::on_disconnect`] (a rank's socket hit EOF). Each call returns the
//!   [`Effect`]s in the order the driver must apply them: write a reply line to a
//!   rank, send this node's fence delta to the controller, kill the job on
//!   `abort`, note a `finalize`, or log a client protocol error.
//! * [`mapping`] builds and parses `PMI_process_mapping`, the virtual key that
//!   tells MPICH which ranks share a node, and computes cliques for the Open MPI
//!   shim.
//!
//! A fence works as in hydra and Slurm (research §4.2). When every local rank
//! has sent `barrier_in`, the engine emits [`Effect::FenceReady`] with the puts
//! made on this node since the last fence. The controller gathers the deltas from all nodes
//! and hands the concatenation back to each node through [`Engine::on_fence_done`]. The engine merges it into its
//! replica and releases the ranks with `barrier_out`. A single-node step can
//! short-circuit the controller by passing the `FenceReady` puts straight back.
//!
//! Only PMI-1 is served. A driver that also wants PMI-2 must look at a connection's
//! first line itself: PMI-2 clients also open with `cmd=init pmi_version=2`, and
//! the engine answers that line with `rc=-1`.

pub mod driver;
pub mod engine;
pub mod mapping;
pub mod wire;

pub use engine::{Effect, Engine, JobInfo};
pub use mapping::{clique, process_mapping, Block, ProcessMapping};
pub use wire::{Reply, Request};

/// Everything that can go wrong between a PMI client, the engine and its driver.
///
/// Client-caused variants reach the driver as [`Effect::ProtocolError`]. When the
/// client is still waiting for a reply, it also gets an `rc=-1` reply whose `msg=`
/// token is [`PmiError::wire_msg`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PmiError {
    /// The line does not start with `cmd=<name>` (or `mcmd=<name>`), or a field has no `=`.
    #[error("malformed PMI line {line:?}: {reason}")]
    Malformed {
        /// The offending line, without its line terminator.
        line: String,
        /// What is wrong with it.
        reason: &'static str,
        /// The command name, when the line got far enough to have one.
        cmd: Option<String>,
    },
    /// A command lacks a field it cannot do without.
    #[error("PMI command {cmd:?} is missing the field {field:?}")]
    MissingField {
        /// The command (`put`, `init`, ...).
        cmd: String,
        /// The missing field.
        field: &'static str,
    },
    /// A field occurs twice on one line.
    #[error("PMI command {cmd:?} has the field {field:?} more than once")]
    DuplicateField {
        /// The command.
        cmd: String,
        /// The repeated field.
        field: String,
    },
    /// A field's value does not parse (e.g. `exitcode=abc`) or is empty where it must not be.
    #[error("PMI command {cmd:?}: {field}={value:?} is not {expected}")]
    BadField {
        /// The command.
        cmd: String,
        /// The field.
        field: &'static str,
        /// The value as sent.
        value: String,
        /// What the value should have been.
        expected: &'static str,
    },
    /// A command this server has never heard of.
    #[error("unknown PMI command {cmd:?}")]
    UnknownCommand {
        /// The command as sent.
        cmd: String,
    },
    /// A rank that this engine does not serve (not in [`JobInfo::local_ranks`]).
    #[error("rank {0} is not a local rank of this job step on this node")]
    UnknownRank(u32),
    /// A rank sent `barrier_in` while it was already waiting in the current fence.
    #[error("rank {rank} sent barrier_in twice in fence {fence} (one outstanding request per rank)")]
    DoubleBarrier {
        /// The rank.
        rank: u32,
        /// Index of the fence in progress, counting from 0.
        fence: u64,
    },
    /// The client asked for a PMI version this socket does not speak.
    #[error("client asked for PMI {version}.{subversion}; this server speaks PMI-1.1 only")]
    VersionMismatch {
        /// `pmi_version` as sent.
        version: u32,
        /// `pmi_subversion` as sent.
        subversion: u32,
    },
    /// A field or line exceeds a limit (the maxima advertised by `get_maxes`, or the request line cap).
    #[error("{what} is {len} bytes, longer than the maximum of {max}")]
    TooLong {
        /// What was too long (`key`, `value`, `kvsname`, `request line`).
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `put`/`get` named a KVS other than this job's (spawned jobs are not supported).
    #[error("kvsname {got:?} is not this job's ({expected:?})")]
    KvsnameMismatch {
        /// The name the client sent.
        got: String,
        /// This job's name.
        expected: String,
    },
    /// A rank sent a command after `finalize`.
    #[error("rank {rank} sent a command after finalize")]
    AfterFinalize {
        /// The rank.
        rank: u32,
    },
    /// `cmd=initack` arrived on an already identified connection (see [`Engine::on_initack`]).
    #[error("rank {rank} sent cmd=initack on an established connection")]
    UnexpectedInitack {
        /// The rank.
        rank: u32,
    },
    /// A second `cmd=initack` for the same rank.
    #[error("rank {0} already completed the PMI_PORT initack handshake")]
    DuplicateInitack(u32),
    /// The driver reported a fence result while no fence was in flight (a driver or controller bug).
    #[error("fence result arrived but no fence is in flight (completed fences: {completed})")]
    NoFenceInFlight {
        /// Fences completed so far.
        completed: u64,
    },
    /// A [`JobInfo`] names a rank outside `0..size`.
    #[error("job info: local rank {rank} is outside the job's {size} ranks")]
    RankOutOfRange {
        /// The rank.
        rank: u32,
        /// The job size.
        size: u32,
    },
    /// A [`JobInfo`] lists a local rank twice.
    #[error("job info: local rank {0} is listed twice")]
    DuplicateLocalRank(u32),
    /// A [`JobInfo`]'s `tasks_per_node` does not add up to its size.
    #[error("job info: tasks_per_node adds up to {sum}, but the job has {size} ranks")]
    TasksPerNodeMismatch {
        /// Sum of `tasks_per_node`.
        sum: u64,
        /// The job size.
        size: u32,
    },
    /// A `PMI_process_mapping` string that does not parse.
    #[error("bad PMI_process_mapping {mapping:?}: {reason}")]
    BadMapping {
        /// The string as given.
        mapping: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl PmiError {
    /// The command a client is waiting on a reply for, when this error is about a request line.
    ///
    /// The engine uses it to send `cmd=<reply> rc=-1 msg=...` so the client fails
    /// instead of blocking forever on its read.
    pub fn command(&self) -> Option<&str> {
        match self {
            PmiError::Malformed { cmd, .. } => cmd.as_deref(),
            PmiError::MissingField { cmd, .. }
            | PmiError::DuplicateField { cmd, .. }
            | PmiError::BadField { cmd, .. }
            | PmiError::UnknownCommand { cmd } => Some(cmd),
            _ => None,
        }
    }

    /// A one-token rendering for the `msg=` field of an `rc=-1` reply.
    ///
    /// Clients split reply lines on spaces (MPICH's `PMIU_parse_keyvals`), so the
    /// text uses `_` and never contains a space or an `=`.
    pub fn wire_msg(&self) -> String {
        let msg = match self {
            PmiError::Malformed { .. } => "malformed_line".to_string(),
            PmiError::MissingField { field, .. } => format!("missing_field_{field}"),
            PmiError::DuplicateField { field, .. } => format!("duplicate_field_{field}"),
            PmiError::BadField { field, .. } => format!("invalid_{field}"),
            PmiError::UnknownCommand { .. } => "unknown_command".to_string(),
            PmiError::VersionMismatch { version, subversion } => {
                format!("pmi_version_{version}.{subversion}_unsupported_this_server_speaks_1.1")
            }
            PmiError::TooLong { what, len, max } => format!("{what}_too_long_{len}_bytes_max_{max}"),
            PmiError::KvsnameMismatch { .. } => "unknown_kvsname".to_string(),
            PmiError::UnexpectedInitack { .. } => "unexpected_initack".to_string(),
            other => other.to_string(),
        };
        msg.replace([' ', '\t', '\r', '\n', '='], "_")
    }
}
