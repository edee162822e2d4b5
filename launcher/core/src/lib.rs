//! launcher-core: the pure, deterministic heart of the controller.
//!
//! [`Core`] owns every job and node. It is driven by events (`on_*` handlers)
//! with the current [`Time`] passed in, and it talks to the world only through
//! the [`Effects`] trait: messages to agents, records to persist, and
//! notifications that a job changed. It never reads a clock, a socket or a
//! file, so the same sequence of events always produces the same effects; the
//! controller's driver replays it against SQLite and QUIC, and tests replay it
//! against a recorder (see `tests/`).
//!
//! Handlers first update state, then emit idempotent effects. The driver
//! commits every `persist` record of a batch of events in one transaction
//! *before* any message from that batch leaves the process, so an agent never
//! acts on a decision the store could forget.
//!
//! The scheduler (see `sched.rs`): job queues in priority order, each FIFO
//! or fair share, mapped to up to three compute environments; gang
//! allocation (N nodes in one decision or none) by the environment's
//! strategy; EASY backfill around one reservation; dependencies and arrays
//! (`deps.rs`); retries with `evaluateOnExit` rules (`retry.rs`); timeouts.
//! A job no node could ever hold is set aside (reason `NoEligibleNodes`)
//! instead of blocking its queue.

mod core;
mod defs;
mod deps;
pub mod fence;
mod job;
mod retry;
mod sched;
mod validate;

pub use crate::core::{Config, Core, Defs, Effects, Record, SubmitOutcome};
pub use defs::{default_ce, default_queue, expand_hostlist, share_weight};
pub use deps::MAX_DEPS;
pub use job::{Alloc, ArrayState, ChildEnd, ChildState, FailReason, Job, NodeRecord};
pub use retry::{glob_match, should_retry, validate_retry};
pub use sched::{Reservation, ShareHistory, NEVER};
pub use validate::{validate_spec, MAX_ARRAY, MAX_NODES, MAX_TASKS};

/// Microseconds since the Unix epoch. The driver maps the wall clock to it;
/// tests and the simulator tick it by hand.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    /// This time plus `ms` milliseconds.
    pub fn plus_ms(self, ms: u64) -> Time {
        Time(self.0.saturating_add(ms.saturating_mul(1000)))
    }
}
