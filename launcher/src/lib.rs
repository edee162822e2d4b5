//! launcher: the controller (`launcher serve`), the CLI, and `launcher up`.
//!
//! The scheduler itself is the pure crate `launcher-core`; the wire protocol
//! is `launcher-proto`; node-side code is the `nodeagent` crate.

pub mod cli;
pub mod controller;
pub mod up;

/// `launcher serve`: run until SIGINT/SIGTERM (or, with `init`, set up the
/// state directory and exit).
pub async fn serve(cfg: controller::ServeConfig, init: bool) -> anyhow::Result<i32> {
    let c = controller::start(cfg)?;
    if init {
        println!("state dir:        {}", c.state_dir.display());
        println!("admin credential: {}", c.admin_cred.display());
        println!("next: export LAUNCHER_CRED={} && launcher token create", c.admin_cred.display());
        c.shutdown();
        return Ok(0);
    }
    eprintln!("launcher: controller listening on {} (admin credential: {})", c.addr, c.admin_cred.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    c.shutdown();
    Ok(0)
}
