//! nodeagent: the per-node daemon of launcher.
//!
//! It joins the controller over QUIC with a one-time token, reports the
//! node's inventory, starts the tasks the controller asks for, streams their
//! output back and reports how they ended. It keeps tasks running while the
//! controller is away and re-reports them when it reconnects.
//!
//! Modules: [`agent`] (connection and dispatch), [`exec`] (tasks),
//! [`inventory`] (what the node offers), [`hostlist`] (Slurm hostlists),
//! [`wire`] (QUIC transport shared with the CLI), [`spawn`] (starting a task
//! without fork).

pub mod agent;
pub mod bind;
pub mod cpuset;
pub mod exec;
pub mod hostlist;
pub mod inventory;
pub mod pmi;
pub mod remote;
pub mod spawn;
pub mod topo;
pub mod users;
pub mod wire;

pub use agent::{run, AgentArgs};

/// Install the tracing subscriber used by the binaries (`RUST_LOG` overrides `default`).
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
