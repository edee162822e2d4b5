//! `launcher up`: a complete cluster on this machine in one process tree.
//!
//! The controller runs in this process; each node agent is a child process
//! (this same binary, hidden subcommand `__agent`). As root, with iproute2,
//! every agent gets its own network namespace, address and hostname on a
//! private bridge (see [`netns`]); otherwise agents share loopback with
//! distinct names and state directories. Ctrl-C, SIGTERM, or the end of the
//! `-- CMD` given tears everything down, namespaces included.

/// A line on stderr that cannot fail: `up` (its teardown in [`netns`] too)
/// must run its command and tear down even when nobody reads its stderr any
/// more (`... 2>&1 | head -1`).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

pub mod netns;

use crate::controller::{self, driver::Input, ServeConfig};
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// Options of `launcher up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Number of node agents.
    #[arg(long, short = 'N', default_value_t = 4)]
    pub nodes: usize,
    /// CPUs (slots) each node offers (default: the CPUs of this machine).
    #[arg(long)]
    pub cpus_per_node: Option<u32>,
    /// Memory each node offers, MiB (default: this machine's).
    #[arg(long)]
    pub mem_per_node: Option<u64>,
    /// State directory (default: a fresh temporary directory, removed at the end).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Controller UDP port (default: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Never use network namespaces, even as root.
    #[arg(long)]
    pub no_netns: bool,
    /// Seconds between SIGTERM and SIGKILL when terminating tasks.
    #[arg(long, default_value_t = 5)]
    pub kill_grace: u64,
    /// Command to run against the cluster (with LAUNCHER_CRED set and this
    /// binary on PATH); the cluster is torn down when it exits, and `up` exits with its code.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// A running local cluster.
pub struct LocalCluster {
    /// The controller.
    pub controller: Option<controller::Controller>,
    /// Agent processes.
    pub agents: Vec<Child>,
    /// Namespaces, when used.
    pub netns: Option<netns::NetnsCluster>,
    /// State directory.
    pub dir: PathBuf,
    remove_dir: bool,
}

impl LocalCluster {
    /// Start the controller and `n` agents; wait until all registered.
    pub async fn start(args: &UpArgs) -> Result<LocalCluster> {
        if args.nodes == 0 || args.nodes > 200 {
            bail!("--nodes {} must be between 1 and 200", args.nodes);
        }
        let (dir, remove_dir) = match &args.state_dir {
            Some(d) => (d.clone(), false),
            None => {
                let d = std::env::temp_dir().join(format!("launcher-up-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&d);
                (d, true)
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let names: Vec<String> = (1..=args.nodes).map(|i| format!("node{i}")).collect();
        let use_netns = !args.no_netns
            && match netns::available() {
                Ok(()) => true,
                Err(why) => {
                    say!("launcher up: not using network namespaces ({why}); agents share loopback");
                    false
                }
            };
        let ns = if use_netns { Some(netns::NetnsCluster::create(&names)?) } else { None };
        let listen: SocketAddr = format!("0.0.0.0:{}", args.port).parse()?;
        let ctl = controller::start(ServeConfig {
            state_dir: dir.join("controller"),
            listen,
            advertise: None,
            cluster: "local".into(),
            core: launcher_core::Config {
                kill_grace_ms: args.kill_grace * 1000,
                node_timeout_ms: 30_000,
                ..Default::default()
            },
        })?;
        let port = ctl.addr.port();
        let exe = std::env::current_exe().context("cannot find my own executable")?;
        let mut cluster =
            LocalCluster { controller: Some(ctl), agents: Vec::new(), netns: ns, dir: dir.clone(), remove_dir };
        for (i, name) in names.iter().enumerate() {
            let token = cluster
                .controller
                .as_ref()
                .expect("controller running")
                .ask(|reply| Input::Token { ttl_s: 600, reply })
                .await?
                .map_err(|e| anyhow!(e))?;
            let ctl_addr = match &cluster.netns {
                Some(ns) => format!("{}:{port}", ns.gateway()),
                None => format!("127.0.0.1:{port}"),
            };
            let state = dir.join(name);
            let mut a: Vec<OsString> = vec![
                "__agent".into(),
                "--controller".into(),
                ctl_addr.into(),
                "--token".into(),
                token.into(),
                "--state-dir".into(),
                state.into(),
                "--name".into(),
                name.into(),
                // A personal cluster: every job runs as whoever started `up`.
                "--run-as-self".into(),
            ];
            if let Some(c) = args.cpus_per_node {
                a.push("--cpus".into());
                a.push(c.to_string().into());
            }
            if let Some(m) = args.mem_per_node {
                a.push("--mem-mib".into());
                a.push(m.to_string().into());
            }
            let mut cmd = match &cluster.netns {
                Some(ns) => ns.command(i, &exe, &a),
                None => {
                    let mut c = std::process::Command::new(&exe);
                    c.args(&a);
                    c
                }
            };
            cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
            cmd.stdin(std::process::Stdio::null());
            // SAFETY: prctl in the child before exec; if `up` dies, so do its agents.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let child = cmd.spawn().with_context(|| format!("cannot start agent {name}"))?;
            cluster.agents.push(child);
        }
        cluster.wait_for_nodes(args.nodes, Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    async fn wait_for_nodes(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let nodes = self.controller.as_ref().expect("running").ask(|reply| Input::Nodes { reply }).await?;
            let up = nodes.iter().filter(|n| n.state == launcher_proto::NodeState::Idle).count();
            if up >= n {
                return Ok(());
            }
            for (i, a) in self.agents.iter_mut().enumerate() {
                if let Some(st) = a.try_wait()? {
                    bail!("agent node{} exited during start-up ({st}); run with RUST_LOG=info to see why", i + 1);
                }
            }
            if start.elapsed() > timeout {
                bail!("only {up} of {n} agents registered within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Path of the admin credential.
    pub fn cred(&self) -> PathBuf {
        self.controller.as_ref().expect("running").admin_cred.clone()
    }

    /// Stop agents (SIGTERM, then SIGKILL), the controller, and namespaces.
    pub fn teardown(&mut self) {
        for a in &self.agents {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(a.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for a in &mut self.agents {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = a.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = a.kill();
            let _ = a.wait();
        }
        self.agents.clear();
        if let Some(c) = self.controller.take() {
            c.shutdown();
        }
        if let Some(mut ns) = self.netns.take() {
            ns.teardown();
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// `launcher up`.
pub async fn up(args: UpArgs) -> Result<i32> {
    let mut cluster = LocalCluster::start(&args).await?;
    let cred = cluster.cred();
    let mode = match &cluster.netns {
        Some(ns) => format!("each in its own network namespace on bridge {} ({}/24)", ns.bridge_name(), ns.gateway()),
        None => "on loopback".into(),
    };
    say!("launcher up: controller + {} node agents running, {mode}", args.nodes);
    let code = if args.command.is_empty() {
        say!("launcher up: point the CLI at it with:\n  export LAUNCHER_CRED={}", cred.display());
        say!("launcher up: Ctrl-C tears the cluster down");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        0
    } else {
        let exe = std::env::current_exe()?;
        let bin = exe.parent().map(|p| p.to_path_buf()).unwrap_or_default();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin];
        paths.extend(std::env::split_paths(&path));
        let status = tokio::process::Command::new(&args.command[0])
            .args(&args.command[1..])
            .env("LAUNCHER_CRED", &cred)
            .env("PATH", std::env::join_paths(paths)?)
            .status()
            .await
            .with_context(|| format!("cannot run {}", args.command[0]))?;
        status.code().unwrap_or(1)
    };
    say!("launcher up: tearing down");
    tokio::task::block_in_place(|| cluster.teardown());
    Ok(code)
}
