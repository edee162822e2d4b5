//! `nodeagent`: run the launcher node agent, or inspect this node.

use anyhow::{anyhow, Context};
use clap::Parser;
use nodeagent::topo::{self, gpu};
use std::path::PathBuf;

/// The launcher node agent: joins a controller, runs tasks, streams their output.
#[derive(Parser, Debug)]
#[command(
    name = "nodeagent",
    version,
    about,
    after_help = "Inspect a node without joining: `nodeagent inventory --help`, `nodeagent plan --help`."
)]
struct Cli {
    #[command(flatten)]
    args: nodeagent::AgentArgs,
}

/// Node inspection commands (they need no controller).
#[derive(Parser, Debug)]
#[command(name = "nodeagent", version)]
struct Tools {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Print this node's hardware (or a captured node's): packages, NUMA, cores, caches, GPUs, NICs.
    Inventory {
        #[command(flatten)]
        src: SourceArgs,
        /// JSON output (the full topology).
        #[arg(long)]
        json: bool,
    },
    /// Show where the tasks of a step would be placed on this node (or a captured node), without running anything.
    Plan {
        #[command(flatten)]
        src: SourceArgs,
        /// Tasks on the node.
        #[arg(short = 'n', long = "ntasks", default_value_t = 1)]
        tasks: u32,
        /// CPUs (hardware threads) per task.
        #[arg(short = 'c', long, default_value_t = 1)]
        cpus_per_task: u32,
        /// auto, none, cores, threads, numa or map:LIST.
        #[arg(long, default_value = "auto")]
        cpu_bind: String,
        /// block or cyclic.
        #[arg(short = 'm', long, default_value = "block")]
        distribution: String,
        /// GPUs per task.
        #[arg(long, default_value_t = 0)]
        gpus_per_task: u32,
        /// closest, none or map:LIST.
        #[arg(long, default_value = "closest")]
        gpu_bind: String,
        /// closest, an interface name, or none.
        #[arg(long, default_value = "closest")]
        nic: String,
        /// Also print each task's environment additions.
        #[arg(long)]
        env: bool,
    },
}

/// Where to read the node from (default: this machine).
#[derive(clap::Args, Debug)]
struct SourceArgs {
    /// hwloc XML file (from `lstopo --of xml`) instead of this machine.
    #[arg(long, value_name = "FILE", requires = "sysfs")]
    xml: Option<PathBuf>,
    /// sysfs root to read NICs from (with --xml).
    #[arg(long, value_name = "DIR")]
    sysfs: Option<PathBuf>,
    /// GPU list (JSON) instead of NVML; default with --xml: gpus.json beside the XML file, if present.
    #[arg(long, value_name = "FILE")]
    gpus: Option<PathBuf>,
}

impl SourceArgs {
    fn discover(&self) -> anyhow::Result<topo::Topology> {
        let gpus: Box<dyn gpu::GpuSource> = match (&self.gpus, &self.xml) {
            (Some(f), _) => Box::new(gpu::FixtureGpus(f.clone())),
            (None, Some(x)) => match x.parent().map(|d| d.join("gpus.json")).filter(|p| p.is_file()) {
                Some(f) => Box::new(gpu::FixtureGpus(f)),
                None => Box::new(gpu::NoGpus("no GPU list beside the XML file".into())),
            },
            (None, None) => gpu::nvml_or_none(),
        };
        let sysfs = self.sysfs.clone().unwrap_or_else(|| PathBuf::from("/sys"));
        if !sysfs.is_dir() {
            return Err(anyhow!("--sysfs {}: not a directory", sysfs.display()));
        }
        let src = topo::Source {
            xml: self.xml.as_deref(),
            sysfs: &sysfs,
            gpus: gpus.as_ref(),
            own_netns_only: self.xml.is_none(),
        };
        topo::discover(&src).context("cannot discover the node")
    }
}

fn main() -> anyhow::Result<()> {
    // `nodeagent exec ...` is `launcher exec ...` (the `rsh` wrapper of a job names this binary).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("exec") {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let code = rt.block_on(nodeagent::remote::client(&argv[2..])).unwrap_or_else(|e| {
            eprintln!("launcher exec: {e:#}");
            255
        });
        std::process::exit(code);
    }
    // The agent's own flags are required; the inspection commands take none of them.
    if !matches!(std::env::args().nth(1).as_deref(), Some("inventory" | "plan")) {
        let cli = Cli::parse();
        nodeagent::init_tracing("info");
        // One thread: the agent's work is short steps (start a task, move a
        // chunk of output, answer a PMI line) that never wait on each other,
        // and handing them between threads cost more CPU (futex wake-ups,
        // context switches) than the steps themselves. Tasks are started
        // from this thread, which lives as long as the agent: their
        // parent-death signal is tied to it.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return rt.block_on(nodeagent::run(cli.args));
    }
    match Tools::parse().cmd {
        Cmd::Inventory { src, json } => {
            let t = src.discover()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print!("{}", t.render());
            }
            Ok(())
        }
        Cmd::Plan { src, tasks, cpus_per_task, cpu_bind, distribution, gpus_per_task, gpu_bind, nic, env } => {
            let t = src.discover()?;
            let e = |s: String| anyhow!(s);
            let bind = launcher_proto::BindSpec {
                cpu: cpu_bind.parse().map_err(e)?,
                distribution: distribution.parse().map_err(e)?,
                gpus_per_task,
                gpu: gpu_bind.parse().map_err(e)?,
                nic: nic.parse().map_err(e)?,
            };
            let none = Default::default();
            let req =
                nodeagent::bind::StepRequest { tasks, cpus_per_task, bind: &bind, busy_cpus: &none, busy_gpus: &none };
            let plans = nodeagent::bind::plan(&t, &req)?;
            let node = if t.hostname.is_empty() { "localhost".to_string() } else { t.hostname.clone() };
            let rows: Vec<launcher_proto::TaskBinding> = plans
                .iter()
                .map(|p| launcher_proto::TaskBinding {
                    rank: p.local_rank,
                    node: node.clone(),
                    cpus: p.cpus.as_deref().map(topo::cpulist).unwrap_or_default(),
                    numa: p.numa.clone(),
                    gpus: p.gpus.clone(),
                    nic: p.nic.clone(),
                })
                .collect();
            print!("{}", nodeagent::bind::table(&rows));
            if env {
                for p in &plans {
                    let kv: Vec<String> = p.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!("rank {}: {}", p.local_rank, kv.join(" "));
                }
            }
            Ok(())
        }
    }
}
