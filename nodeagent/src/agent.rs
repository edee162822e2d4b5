//! The agent's controller connection: join, register, reconcile, dispatch.
//!
//! The agent keeps its tasks running whatever happens to the controller. When
//! the connection drops it reconnects with backoff, re-registers, and reports
//! every job attempt it still holds (running ranks and unacknowledged exits),
//! so a restarted controller adopts them instead of running them twice. An
//! attempt is forgotten only when the controller says it has recorded it
//! (`Forget`).

use crate::exec::{self, JobTable, NodeFacts};
use crate::inventory;
use crate::wire::{self, JoinToken};
use anyhow::{anyhow, bail, Context, Result};
use launcher_proto::{FromAgent, JobReport, JoinMsg, JoinReply, RegisterMsg, Role, ToAgent};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Command-line options of `nodeagent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Controller address, host:port.
    #[arg(long, env = "LAUNCHER_CONTROLLER")]
    pub controller: String,
    /// One-time join token (`launcher token create`); needed only on first start.
    #[arg(long, env = "LAUNCHER_JOIN_TOKEN")]
    pub token: Option<String>,
    /// Directory for the agent's certificate, key and job scratch files.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Node name (default: the hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// Schedulable CPUs to offer (default: the CPUs this process may use).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Schedulable memory to offer in MiB (default: MemTotal).
    #[arg(long)]
    pub mem_mib: Option<u64>,
    /// A feature label for this node (repeatable).
    #[arg(long = "feature")]
    pub features: Vec<String>,
    /// Run every task as the agent's own user instead of the submitter's local
    /// account (the default when the agent is not root; `launcher up` sets it).
    #[arg(long)]
    pub run_as_self: bool,
    /// Allow tasks of a submitter whose local account is root.
    #[arg(long)]
    pub allow_root_jobs: bool,
}

struct AgentCreds {
    ca: String,
    cert: String,
    key: String,
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Join with a token if we have no certificate yet; otherwise load it.
async fn ensure_creds(args: &AgentArgs, name: &str) -> Result<AgentCreds> {
    let dir = &args.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create state dir {}", dir.display()))?;
    let (ca_p, cert_p, key_p) = (dir.join("ca.pem"), dir.join("agent.pem"), dir.join("agent.key"));
    if cert_p.exists() && key_p.exists() && ca_p.exists() {
        return Ok(AgentCreds {
            ca: std::fs::read_to_string(&ca_p)?,
            cert: std::fs::read_to_string(&cert_p)?,
            key: std::fs::read_to_string(&key_p)?,
        });
    }
    let token: JoinToken = args
        .token
        .as_deref()
        .ok_or_else(|| anyhow!("no certificate in {} and no --token: create a join token with `launcher token create` and pass it with --token", dir.display()))?
        .parse()?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let ep = wire::client_endpoint(wire::join_client_config(&token)?)?;
    let addr = wire::resolve(&args.controller)?;
    let (_conn, mut s, _) = wire::connect(&ep, addr, Role::Join, Duration::from_secs(5)).await?;
    s.send(&JoinMsg { token: token.raw.clone(), name: name.to_string(), public_key: key.public_key_raw().to_vec() })
        .await?;
    let reply: JoinReply = s.recv().await?.ok_or_else(|| anyhow!("controller closed the join stream"))?;
    match reply {
        JoinReply::Accepted { cert_pem, ca_pem } => {
            wire::write_private(&key_p, key.serialize_pem().as_bytes())?;
            std::fs::write(&cert_p, &cert_pem)?;
            std::fs::write(&ca_p, &ca_pem)?;
            tracing::info!(name, "joined the cluster");
            Ok(AgentCreds { ca: ca_pem, cert: cert_pem, key: key.serialize_pem() })
        }
        JoinReply::Rejected(why) => bail!("join refused: {why}"),
    }
}

/// The address this host uses to reach the controller.
fn local_addr_towards(controller: std::net::SocketAddr) -> String {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect(controller)?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
}

/// This machine's topology: hwloc, /sys, and NVML when it loads. A failure
/// leaves an empty topology (tasks then run unbound) rather than no agent.
pub fn live_topology() -> crate::topo::Topology {
    let gpus = crate::topo::gpu::nvml_or_none();
    tracing::info!("GPU source: {}", gpus.describe());
    let src = crate::topo::Source { xml: None, sysfs: Path::new("/sys"), gpus: gpus.as_ref(), own_netns_only: true };
    crate::topo::discover(&src).unwrap_or_else(|e| {
        tracing::warn!("topology discovery failed, tasks will not be bound: {e}");
        Default::default()
    })
}

/// Run the agent until SIGTERM/SIGINT.
pub async fn run(mut args: AgentArgs) -> Result<()> {
    // Job scripts are exec'd after a chdir: every path we hand out must be absolute.
    args.state_dir =
        std::path::absolute(&args.state_dir).with_context(|| format!("--state-dir {}", args.state_dir.display()))?;
    // Descriptors inherited without close-on-exec (a shell's, a supervisor's)
    // would reach every task: mark them all close-on-exec (Linux 5.11+).
    // SAFETY: a plain syscall that only sets flags on descriptors.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
    }
    let name = args.name.clone().unwrap_or_else(hostname);
    let creds = ensure_creds(&args, &name).await?;
    // A fresh agent holds no tasks (they die with the agent that started them),
    // so attempt directories left by an earlier run are stale: remove them.
    let jobs_dir = args.state_dir.join("jobs");
    if jobs_dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&jobs_dir) {
            tracing::warn!("cannot clear stale {}: {e}", jobs_dir.display());
        }
    }
    let addr = wire::resolve(&args.controller)?;
    let ep = wire::client_endpoint(wire::client_config(&creds.ca, &creds.cert, &creds.key)?)?;
    let mut inv = inventory::discover(Path::new("/"));
    inv.cpus = args.cpus.unwrap_or_else(inventory::usable_cpus);
    if let Some(m) = args.mem_mib {
        inv.mem_mib = m;
    }
    inv.hostname = hostname();
    inv.features = args.features.clone();
    inv.agent_version = env!("CARGO_PKG_VERSION").into();
    let topo = live_topology();
    tracing::info!("topology: {}", topo.summary());
    inventory::merge_topology(&mut inv, &topo);
    let users = crate::users::Policy::default_for_agent(args.run_as_self, args.allow_root_jobs);
    tracing::info!(?users, "task identity policy");
    let table: JobTable = Default::default();
    let (out_tx, mut out_rx) = unbounded_channel::<FromAgent>();
    let exec_pending = crate::remote::Pending::default();
    let remote = crate::remote::Remote::start(&jobs_dir, exec_pending.clone(), out_tx.clone())
        .with_context(|| format!("cannot set up the launcher exec socket under {}", jobs_dir.display()))?;
    let facts = NodeFacts {
        name: name.clone(),
        state_dir: args.state_dir.clone(),
        users,
        pmi: Default::default(),
        exec: exec_pending,
        topo: std::sync::Arc::new(topo),
        cpusets: crate::cpuset::Cpusets::detect(Path::new("/sys/fs/cgroup/cpuset"), &name, &args.state_dir),
        remote,
    };
    if let Some(cs) = &facts.cpusets {
        tracing::info!("pinned tasks also get cpuset cgroups: {cs:?}");
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut backoff = Duration::from_millis(50);
    loop {
        inv.addr = local_addr_towards(addr);
        let session = session(&ep, addr, &name, &inv, &facts, &table, &out_tx, &mut out_rx);
        tokio::select! {
            r = session => match r {
                Ok(true) => backoff = Duration::from_millis(50),
                Ok(false) => {}
                Err(e) => tracing::warn!("controller connection: {e:#}"),
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    tracing::info!("shutting down: killing local tasks");
    exec::kill_all(&table);
    if let Some(cs) = &facts.cpusets {
        // The killed tasks take a moment to leave their cgroups.
        tokio::time::sleep(Duration::from_millis(200)).await;
        cs.remove_all();
    }
    Ok(())
}

fn reports(table: &JobTable) -> Vec<JobReport> {
    table
        .lock()
        .expect("job table lock")
        .iter()
        .map(|(&(job, attempt), run)| JobReport {
            job,
            attempt,
            exits: run.tasks.iter().filter_map(|(&r, t)| t.exit.clone().map(|e| (r, e))).collect(),
            running: run.tasks.iter().filter(|(_, t)| t.exit.is_none()).map(|(&r, _)| r).collect(),
        })
        .collect()
}

/// One connection's life. Ok(true) if we registered (reset backoff).
#[allow(clippy::too_many_arguments)]
async fn session(
    ep: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    name: &str,
    inv: &launcher_proto::Inventory,
    facts: &NodeFacts,
    table: &JobTable,
    out_tx: &UnboundedSender<FromAgent>,
    out_rx: &mut UnboundedReceiver<FromAgent>,
) -> Result<bool> {
    let (conn, mut ctl, _identity) = wire::connect(ep, addr, Role::Agent, Duration::from_secs(3)).await?;
    // Output first, then the report: the controller has every byte of a task's
    // output on disk before it can learn (from the report) that the task ended.
    let mut resend = Vec::new();
    for m in exec::spooled_output(table) {
        resend.extend_from_slice(&launcher_proto::encode_frame(&m));
    }
    ctl.send.write_all(&resend).await?;
    ctl.send(&FromAgent::Register(RegisterMsg {
        name: name.to_string(),
        inventory: inv.clone(),
        jobs: reports(table),
    }))
    .await?;
    let heartbeat = match ctl.recv::<ToAgent>().await? {
        Some(ToAgent::Registered { heartbeat_ms, node }) => {
            tracing::info!(%node, "registered with the controller");
            Duration::from_millis(heartbeat_ms.max(100))
        }
        Some(other) => bail!("expected Registered, got {other:?}"),
        None => bail!("controller closed the control stream during registration"),
    };
    // PMI fences the controller may not have seen (it may have restarted).
    for m in crate::pmi::driver::pending(&facts.pmi) {
        ctl.send(&m).await?;
    }
    let wire::FramedStream { mut send, mut recv } = ctl;
    let writer = async {
        let mut tick = tokio::time::interval(heartbeat);
        tick.tick().await;
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            tokio::select! {
                m = out_rx.recv() => {
                    let Some(m) = m else { return Ok::<(), anyhow::Error>(()) };
                    wire::batch_frames(&mut buf, &m, out_rx);
                    send.write_all(&buf).await?;
                }
                _ = tick.tick() => {
                    let running = reports(table).iter().map(|r| r.running.len() as u32).sum();
                    send.write_all(&launcher_proto::encode_frame(&FromAgent::Heartbeat { running_tasks: running })).await?;
                }
            }
        }
    };
    let reader = async {
        while let Some(msg) = recv.recv::<ToAgent>().await? {
            match msg {
                ToAgent::Launch(l) => exec::launch(*l, facts, table, out_tx),
                ToAgent::Kill(k) => exec::kill(table, k.job, k.attempt, Duration::from_millis(k.grace_ms)),
                ToAgent::Forget { job, attempt } => exec::forget(table, facts, job, attempt),
                ToAgent::FenceDone { job, attempt, seq, puts } => {
                    crate::pmi::driver::deliver(&facts.pmi, job, attempt, seq, puts)
                }
                ToAgent::FinalizeGrace { job, attempt, grace_ms } => {
                    exec::finalize_grace(table, job, attempt, Duration::from_millis(grace_ms))
                }
                m @ (ToAgent::Exec(_)
                | ToAgent::ExecOutput { .. }
                | ToAgent::ExecExited { .. }
                | ToAgent::ExecKill { .. }) => crate::remote::on_message(m, facts, table, out_tx),
                ToAgent::Registered { .. } => {}
            }
        }
        Ok::<(), anyhow::Error>(())
    };
    let r = tokio::select! {
        r = writer => r,
        r = reader => r,
    };
    conn.close(0u32.into(), b"agent reconnecting");
    r.map(|_| true).or_else(|e| {
        tracing::warn!("lost the controller: {e:#}");
        Ok(true)
    })
}
