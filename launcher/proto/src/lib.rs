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

pub use codec::{decode, encode, encode_frame, DecodeError, FrameDecoder, MAX_FRAME};
pub use ids::{JobId, NodeId};
pub use msg::*;

/// The protocol version this build speaks. Peers must match exactly (see
/// `docs/protocol.md` §2 for the compatibility window).
pub const PROTOCOL_VERSION: u32 = 2;

/// ALPN identifier negotiated on every QUIC connection.
pub const ALPN: &[u8] = b"launcher/1";

/// TLS server name the controller's certificate is issued for.
pub const SERVER_NAME: &str = "controller.launcher";
