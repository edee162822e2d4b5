//! The launcher wire protocol: identifiers, messages, framing and versioning.
//!
//! Everything that crosses a QUIC stream between the controller, node agents and
//! the CLI is defined here and nowhere else. The crate has no I/O runtime: it
//! turns messages into length-delimited postcard frames and back, so the
//! controller, the agent, the pure scheduler core and the tests all share one
//! codec (see `docs/protocol.md` for the numbered spec).
//!
//! Theory of operation:
//! 1. A peer opens a connection (ALPN [`ALPN`]) and a bidirectional stream, and
//!    sends a [`Hello`] frame. [`Hello`] is frozen across protocol versions so
//!    that a mismatch is always reported with both version numbers.
//! 2. The controller answers [`HelloReply`]; on `Welcome` the stream continues
//!    with role-specific frames: agents keep it as their control stream
//!    ([`ToAgent`]/[`FromAgent`]), clients open one stream per [`Request`].
#![deny(missing_docs)]

mod codec;
mod ids;
mod msg;
mod sched;

pub use codec::{decode, encode, encode_frame, DecodeError, FrameDecoder, MAX_FRAME};
pub use ids::{JobId, NodeId};
pub use msg::*;
pub use sched::*;

/// The protocol version this build speaks. Peers must match exactly (see
/// `docs/protocol.md` §2 for the compatibility window).
pub const PROTOCOL_VERSION: u32 = 3;

/// Seconds a finalized MPI rank may linger once its whole step finalized and
/// some rank exited 0, when the job gives no `--finalize-grace`.
pub const DEFAULT_FINALIZE_GRACE_S: u32 = 10;

/// ALPN identifier negotiated on every QUIC connection.
pub const ALPN: &[u8] = b"launcher/1";

/// TLS server name the controller's certificate is issued for.
pub const SERVER_NAME: &str = "controller.launcher";

/// Whether the node agent sets `name` in every task itself: the job's
/// identity, ranks, placement and MPI wiring (`LAUNCHER_*`, `SLURM_*`,
/// `AWS_BATCH_*`, `PMI_*`, `RANK`, `MASTER_ADDR`, `CUDA_VISIBLE_DEVICES`...).
///
/// `--export=ALL` never carries such a variable from the submitting shell: in
/// a shell inside another job they hold that job's values, which would replace
/// the new job's. A variable named on its own (`--export=NAME`, `--env`) is
/// the user's explicit choice and is passed as asked.
pub fn is_task_var(name: &str) -> bool {
    const PREFIXES: [&str; 8] =
        ["LAUNCHER_", "SLURM_", "AWS_BATCH_", "PMI_", "PMIX_", "FLUX_", "OMPI_COMM_WORLD_", "TORCHELASTIC_"];
    const NAMES: [&str; 10] = [
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "NODE_RANK",
        "GROUP_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}
