//! `launcher`: parse → dispatch → exit code. `serve` runs the controller;
//! `up` runs a whole cluster on this machine; the rest is the user CLI.

use clap::{Parser, Subcommand};
use launcher::cli::{self, client::CliError, jobargs::JobArgs, submit::Target};
use std::net::SocketAddr;
use std::path::PathBuf;

/// launcher: a self-hosted HPC batch system.
///
/// Exit codes: 0 ok, 1 internal failure, 2 usage error or refused request,
/// 3 cannot reach or authenticate to the controller. `run` exits with the
/// job's own exit code (its first failing rank's), like srun.
#[derive(Parser, Debug)]
#[command(name = "launcher", version, about, long_about)]
struct Cli {
    /// Credential file (default: $LAUNCHER_CRED, then ~/.config/launcher/cred.json).
    #[arg(long, global = true, value_name = "FILE")]
    cred: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the controller.
    Serve {
        /// State directory: cluster CA, SQLite database, job output.
        #[arg(long, default_value = "/var/lib/launcher")]
        state_dir: PathBuf,
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:7420")]
        listen: SocketAddr,
        /// host:port written into credentials (default: the listen address, with 127.0.0.1 for 0.0.0.0).
        #[arg(long)]
        advertise: Option<String>,
        /// Create the state directory and CA, print where the admin credential is, and exit.
        #[arg(long)]
        init: bool,
        /// Cluster name (first start only).
        #[arg(long, default_value = "launcher")]
        cluster: String,
        /// Seconds between SIGTERM and SIGKILL when terminating tasks.
        #[arg(long, default_value_t = 30)]
        kill_grace: u64,
        /// Seconds a node may stay unreachable before its jobs fail.
        #[arg(long, default_value_t = 60)]
        node_timeout: u64,
        /// A scheduling pass looks at no more than this many waiting jobs past the first one that cannot start.
        #[arg(long, default_value_t = 10_000)]
        max_backfill_scan: usize,
    },
    /// Submit a batch job: `submit [OPTIONS] SCRIPT [ARGS]` or `submit [OPTIONS] -- CMD [ARGS]`.
    ///
    /// A script's `#LAUNCHER` lines (before its first command) take the same
    /// options; options on the command line win.
    Submit {
        #[command(flatten)]
        job: JobArgs,
        /// Start from a registered job definition, `NAME[:REVISION]`; the options given here override it.
        #[arg(long, value_name = "NAME[:REV]")]
        jobdef: Option<String>,
        /// Print only the job id.
        #[arg(long)]
        parsable: bool,
        /// Wait for the job (every child, for an array) to end, then exit with its exit code, like
        /// `sbatch --wait`; its output stays in `launcher logs`.
        #[arg(short = 'W', long)]
        wait: bool,
        /// Script and its arguments, or `-- CMD ARGS`.
        #[arg(trailing_var_arg = true, value_name = "SCRIPT|-- CMD")]
        target: Vec<String>,
    },
    /// Submit, stream every task's output, and exit with the job's exit code (Ctrl-C cancels).
    Run {
        #[command(flatten)]
        job: JobArgs,
        /// Start from a registered job definition, `NAME[:REVISION]`; the options given here override it.
        #[arg(long, value_name = "NAME[:REV]")]
        jobdef: Option<String>,
        /// Prefix each output line with its rank (`3: ...`).
        #[arg(short = 'l', long)]
        label: bool,
        /// Script and its arguments, or `-- CMD ARGS`.
        #[arg(trailing_var_arg = true, value_name = "SCRIPT|-- CMD")]
        target: Vec<String>,
    },
    /// List jobs (waiting and running; --all adds finished ones).
    Queue {
        /// Include finished jobs.
        #[arg(short, long)]
        all: bool,
        #[command(flatten)]
        filter: cli::QueueFilter,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one job: state, why it is waiting or failed, nodes, per-task exits.
    Show {
        /// Job id.
        job: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Print where each rank runs: node, CPUs, NUMA nodes, GPUs, NIC.
        #[arg(long)]
        bindings: bool,
    },
    /// Cancel jobs: waiting ones are dropped, running ones terminated on every node.
    Cancel {
        /// Job ids (and/or the filters below, which pick among waiting and running jobs).
        #[arg(value_name = "JOB")]
        ids: Vec<String>,
        /// Filters, as `launcher queue` takes them (scancel's -u, -t, -p); without --user they pick your own jobs.
        #[command(flatten)]
        filter: cli::QueueFilter,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's output.
    Logs {
        /// Job id.
        job: String,
        /// Only this rank.
        #[arg(long)]
        rank: Option<u32>,
        /// Keep streaming until the job ends.
        #[arg(short, long)]
        follow: bool,
        /// Prefix each line with its rank.
        #[arg(short = 'l', long)]
        label: bool,
    },
    /// Run a command on a node of the calling job's own allocation, like ssh
    /// (for `mpirun`/`mpiexec` inside a job): `exec --node NAME -- CMD [ARGS]`, or
    /// the ssh-style `exec [-x] NAME CMD [ARGS]` that hydra's `-launcher-exec` and
    /// Open MPI's `plm_rsh_agent` use (words joined and run by /bin/sh, as ssh does).
    ///
    /// Output is streamed back and the exit code propagated (255 if it could not
    /// run); the command is killed if this process goes away. Works only inside a
    /// job (it uses LAUNCHER_EXEC_SOCK); nodes outside the job are refused.
    /// `$LAUNCHER_RSH` is a one-file wrapper for launchers that want a single executable.
    Exec {
        /// Node to run on (else the first word after any ssh-style options).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// `[ssh options] NAME CMD [ARGS]`, or `-- CMD [ARGS]` with --node.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// List nodes.
    Nodes {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Compute environments: named pools of nodes that queues map to (admin for changes).
    Ce {
        #[command(subcommand)]
        cmd: cli::admin::CeCmd,
    },
    /// Job queues: priority, state, compute environments, scheduling policy (admin for changes).
    #[command(name = "queue-admin")]
    QueueAdmin {
        #[command(subcommand)]
        cmd: cli::admin::QueueCmd,
    },
    /// Fair-share scheduling policies (admin for changes).
    Policy {
        #[command(subcommand)]
        cmd: cli::admin::PolicyCmd,
    },
    /// Job definitions: versioned templates for `submit --jobdef`.
    Jobdef {
        #[command(subcommand)]
        cmd: cli::admin::JobdefCmd,
    },
    /// Join tokens for node agents (admin).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// User credentials (admin).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// A whole cluster on this machine: a controller plus N node agents (each in its
    /// own network namespace when run as root). With `-- CMD`, run CMD against it and tear down.
    Up(launcher::up::UpArgs),
    /// Run a node agent (what `launcher up` starts; same as the `nodeagent` binary).
    #[command(hide = true, name = "__agent")]
    Agent(nodeagent::AgentArgs),
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Create a one-time join token.
    Create {
        /// How long it stays valid (`1h`, `30m`, `HH:MM:SS`).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Create a user credential.
    Add {
        /// User name.
        name: String,
        /// `user` or `admin`.
        #[arg(long, default_value = "user")]
        role: String,
        /// Write the credential here instead of printing it.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

/// A reader that goes away (`launcher queue | head`) ends a CLI command
/// quietly, as for any Unix tool. Not the daemons: `serve`, `up` and the agent
/// keep Rust's ignored SIGPIPE, so a closed stderr (a `| head` that is gone, a
/// restarted journal) cannot kill them before they tear down (`up` left its
/// network namespaces behind). Their children get the default back at exec.
fn default_sigpipe() {
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    // `launcher exec` takes ssh-style arguments (`-x HOST CMD...`) that clap would
    // refuse as unknown options: parse them ourselves; clap only renders its --help.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("exec")
        && !matches!(argv.get(2).map(String::as_str), None | Some("-h" | "--help"))
    {
        default_sigpipe();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let code = rt.block_on(nodeagent::remote::client(&argv[2..])).unwrap_or_else(|e| {
            eprintln!("launcher exec: {e:#}");
            255
        });
        std::process::exit(code);
    }
    let cli = Cli::parse();
    let quiet = matches!(cli.cmd, Cmd::Serve { .. } | Cmd::Agent(_));
    if !quiet && !matches!(cli.cmd, Cmd::Up(_)) {
        default_sigpipe();
    }
    nodeagent::init_tracing(if quiet { "info" } else { "warn" });
    let rt = if matches!(cli.cmd, Cmd::Agent(_)) {
        // The agent on one thread: see nodeagent's main for why.
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
    };
    let code = match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            let code = e.downcast_ref::<CliError>().map(|c| c.code).unwrap_or(cli::client::exit::JOB_FAILED);
            eprintln!("launcher: {e:#}");
            code
        }
    };
    // The runtime's workers send the CONNECTION_CLOSE of the clients just
    // dropped (see `Client`'s Drop) in microseconds: give them that long.
    std::thread::sleep(std::time::Duration::from_micros(300));
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let cred = cli.cred;
    match cli.cmd {
        Cmd::Serve { state_dir, listen, advertise, init, cluster, kill_grace, node_timeout, max_backfill_scan } => {
            let cfg = launcher::controller::ServeConfig {
                state_dir,
                listen,
                advertise,
                cluster,
                core: launcher_core::Config {
                    kill_grace_ms: kill_grace * 1000,
                    node_timeout_ms: node_timeout * 1000,
                    max_backfill_scan: max_backfill_scan.max(1),
                    ..Default::default()
                },
            };
            launcher::serve(cfg, init).await
        }
        Cmd::Submit { job, jobdef, parsable, wait, target } => {
            let argv: Vec<String> = std::env::args().collect();
            let t = Target { command_mode: cli::submit::command_mode(&argv, &target), args: target };
            cli::submit::submit(cred, job, t, parsable, wait, jobdef).await
        }
        Cmd::Run { job, jobdef, label, target } => {
            let argv: Vec<String> = std::env::args().collect();
            let t = Target { command_mode: cli::submit::command_mode(&argv, &target), args: target };
            cli::submit::run(cred, job, t, label, jobdef).await
        }
        Cmd::Ce { cmd } => cli::admin::ce(cred, cmd).await,
        Cmd::QueueAdmin { cmd } => cli::admin::queue_admin(cred, cmd).await,
        Cmd::Policy { cmd } => cli::admin::policy(cred, cmd).await,
        Cmd::Jobdef { cmd } => cli::admin::jobdef(cred, cmd).await,
        Cmd::Queue { all, filter, json } => cli::queue(cred, all, filter, json).await,
        Cmd::Show { job, json, bindings } => cli::show(cred, job, json, bindings).await,
        Cmd::Cancel { ids, filter, json } => cli::cancel(cred, ids, filter, json).await,
        Cmd::Logs { job, rank, follow, label } => cli::logs(cred, job, rank, follow, label).await,
        Cmd::Nodes { json } => cli::nodes(cred, json).await,
        Cmd::Exec { node, args } => {
            let mut all: Vec<String> =
                node.map(|n| vec!["--node".to_string(), n, "--".to_string()]).unwrap_or_default();
            all.extend(args);
            match nodeagent::remote::client(&all).await {
                Ok(code) => Ok(code),
                Err(e) => {
                    eprintln!("launcher exec: {e:#}");
                    Ok(255)
                }
            }
        }
        Cmd::Token { cmd: TokenCmd::Create { ttl } } => cli::token_create(cred, ttl).await,
        Cmd::User { cmd: UserCmd::Add { name, role, out } } => cli::user_add(cred, name, role, out).await,
        Cmd::Up(args) => launcher::up::up(args).await,
        Cmd::Agent(args) => nodeagent::run(args).await.map(|_| 0),
    }
}

#[cfg(test)]
mod tests {
    /// clap checks a command's definition (duplicate names, bad defaults) only
    /// when that command is parsed: check every one here, not in front of a user.
    #[test]
    fn every_command_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
