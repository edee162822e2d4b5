//! `launcher serve`: the controller process.
//!
//! [`start`] opens the state directory (CA, SQLite, logs), rebuilds the core
//! from the store, starts the driver thread and the QUIC endpoint, and returns
//! a handle; [`Controller::shutdown`] stops them. Everything is in-process so
//! `launcher up` and the tests run a real controller without a subprocess.

pub mod driver;
pub mod net;
pub mod pki;
pub mod store;

use anyhow::{Context, Result};
use driver::{Driver, Input};
use launcher_core::{Config, Core};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

/// How to run the controller.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// State directory (created if needed).
    pub state_dir: PathBuf,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Address written into credentials (default: loopback and the listen port).
    pub advertise: Option<String>,
    /// Cluster name used at first start.
    pub cluster: String,
    /// Core tunables.
    pub core: Config,
}

/// A running controller.
pub struct Controller {
    /// The bound address.
    pub addr: SocketAddr,
    /// Path of the admin credential.
    pub admin_cred: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    driver: Arc<net::Ctx>,
    endpoint: quinn::Endpoint,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Controller {
    /// Ask the driver something (used by `launcher up`).
    pub async fn ask<T>(&self, make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Input) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.driver
            .driver
            .lock()
            .expect("driver lock")
            .send(make(tx))
            .map_err(|_| anyhow::anyhow!("driver stopped"))?;
        rx.await.map_err(|_| anyhow::anyhow!("driver stopped"))
    }

    /// Stop accepting, let the driver finish its batch, and wait for it.
    pub fn shutdown(mut self) {
        self.endpoint.close(0u32.into(), b"controller shutting down");
        let _ = self.driver.driver.lock().expect("driver lock").send(Input::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start a controller inside the current tokio runtime.
pub fn start(cfg: ServeConfig) -> Result<Controller> {
    let dir = &cfg.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create state dir {}", dir.display()))?;
    let logs_dir = dir.join("logs");
    std::fs::create_dir_all(&logs_dir)?;
    let (pki, _created) = pki::Pki::load_or_init(dir, &cfg.cluster).context("cluster CA")?;
    let store = store::Store::open(&dir.join("state.db")).context("opening the state database")?;
    let (nodes, jobs) = store.load().context("loading state")?;
    let n_jobs = jobs.len();
    let defs = store.load_defs().context("loading queues and compute environments")?;
    let core = Core::restore(cfg.core.clone(), driver::now(), nodes, jobs, defs);
    let ids = Arc::new(RwLock::new(store.certs()?));
    let (events, _) = tokio::sync::broadcast::channel(4096);

    let server_cfg = pki.server_config()?;
    let endpoint = quinn::Endpoint::server(server_cfg, cfg.listen)
        .with_context(|| format!("cannot listen on UDP {} (in use? pass --listen)", cfg.listen))?;
    let addr = endpoint.local_addr()?;
    let public = cfg.advertise.clone().unwrap_or_else(|| {
        let ip = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
        format!("{ip}:{}", addr.port())
    });
    let cluster = pki.cluster().to_string();
    let mut drv = Driver {
        core,
        store,
        pki,
        ids: ids.clone(),
        events: events.clone(),
        public_addr: public.clone(),
        bindings: Default::default(),
    };

    // The admin credential: issued at first start, and again only if it is
    // missing, unreadable, or points at another address.
    let admin_cred = dir.join("admin.cred");
    let current = nodeagent::wire::Credential::load(&admin_cred).ok().filter(|c| c.controller == public);
    if current.is_none() {
        let cred_text = drv.add_user("admin", "admin").map_err(|e| anyhow::anyhow!(e))?;
        let cred: nodeagent::wire::Credential = serde_json::from_str(&cred_text)?;
        cred.save(&admin_cred)?;
    }
    let (tx, thread) = driver::spawn(drv);
    let ctx = Arc::new(net::Ctx {
        driver: Mutex::new(tx),
        ids,
        events,
        logs_dir,
        cluster,
        output_attempts: Default::default(),
    });
    tokio::spawn(net::serve(endpoint.clone(), ctx.clone()));
    tracing::info!(%addr, jobs = n_jobs, "controller listening");
    Ok(Controller { addr, admin_cred, state_dir: dir.clone(), driver: ctx, endpoint, thread: Some(thread) })
}
