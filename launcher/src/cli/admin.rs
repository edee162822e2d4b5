//! Compute environments (`launcher ce`), job queues (`launcher queue-admin`),
//! fair-share policies (`launcher policy`) and job definitions
//! (`launcher jobdef`).

use super::client::{check, exit, unexpected, usage, Client};
use super::jobargs::JobArgs;
use super::print_json;
use anyhow::{anyhow, Context, Result};
use launcher_proto::{
    AdminOp, CeDef, CeInfo, JobDef, JobSpec, NodeSelector, PolicyDef, QueueDef, QueueInfo, Request, Response,
    ShareWeight, Strategy,
};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// `ce create|update|delete|list|show`.
#[derive(clap::Subcommand, Debug)]
pub enum CeCmd {
    /// Create a compute environment: a named pool of nodes.
    Create {
        /// Name.
        name: String,
        #[command(flatten)]
        sel: CeSelect,
        /// Node choice: `best-fit` (pack), `spread`, or `topology` (prefer nodes sharing a `switch=NAME` feature).
        #[arg(long, default_value = "best-fit")]
        strategy: String,
        /// Create it DISABLED (it takes no new jobs until enabled).
        #[arg(long)]
        disabled: bool,
    },
    /// Change a compute environment (only what is given changes).
    Update {
        /// Name.
        name: String,
        #[command(flatten)]
        sel: CeSelect,
        /// New allocation strategy.
        #[arg(long)]
        strategy: Option<String>,
        /// ENABLE it.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// DISABLE it: running jobs go on, no new ones start there.
        #[arg(long)]
        disable: bool,
    },
    /// ENABLE a compute environment (same as `update NAME --enable`).
    Enable {
        /// Name.
        name: String,
    },
    /// DISABLE a compute environment: running jobs go on, no new ones start there (same as `update NAME --disable`).
    Disable {
        /// Name.
        name: String,
    },
    /// Delete a compute environment no queue uses.
    Delete {
        /// Name.
        name: String,
    },
    /// List compute environments.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one compute environment and its nodes.
    Show {
        /// Name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// Which nodes a compute environment holds.
#[derive(clap::Args, Debug, Default)]
pub struct CeSelect {
    /// Nodes by name, as a hostlist: `node[1-4],gpu7`.
    #[arg(long, value_name = "HOSTLIST", conflicts_with_all = ["feature", "all_nodes"])]
    pub nodes: Option<String>,
    /// Nodes whose agent was started with `--feature F`.
    #[arg(long, value_name = "F", conflicts_with = "all_nodes")]
    pub feature: Option<String>,
    /// Every node.
    #[arg(long = "all-nodes")]
    pub all_nodes: bool,
}

impl CeSelect {
    fn selector(&self) -> Result<Option<NodeSelector>> {
        Ok(match (&self.nodes, &self.feature, self.all_nodes) {
            (Some(h), _, _) => Some(NodeSelector::Nodes(launcher_core::expand_hostlist(h).map_err(usage)?)),
            (_, Some(f), _) => Some(NodeSelector::Feature(f.clone())),
            (_, _, true) => Some(NodeSelector::All),
            _ => None,
        })
    }
}

/// `queue-admin create|update|enable|disable|delete|list|show`.
#[derive(clap::Subcommand, Debug)]
pub enum QueueCmd {
    /// Create a job queue.
    Create {
        /// Name.
        name: String,
        /// Priority: queues with higher numbers are scheduled first.
        #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
        priority: i32,
        /// Compute environments, tried in order (1 to 3): `--ce CE1,CE2`.
        #[arg(long, required = true, value_delimiter = ',')]
        ce: Vec<String>,
        /// Fair-share policy (default: FIFO).
        #[arg(long)]
        policy: Option<String>,
        /// Create it DISABLED.
        #[arg(long)]
        disabled: bool,
    },
    /// Change a queue (only what is given changes).
    Update {
        /// Name.
        name: String,
        /// New priority.
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
        /// New compute environments, in order.
        #[arg(long, value_delimiter = ',')]
        ce: Option<Vec<String>>,
        /// Switch to this fair-share policy.
        #[arg(long, conflicts_with = "fifo")]
        policy: Option<String>,
        /// Switch back to FIFO.
        #[arg(long)]
        fifo: bool,
        /// ENABLE it.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// DISABLE it: its jobs stay RUNNABLE (reason QueueDisabled); running ones go on.
        #[arg(long)]
        disable: bool,
    },
    /// ENABLE a queue (same as `update NAME --enable`).
    Enable {
        /// Name.
        name: String,
    },
    /// DISABLE a queue: its jobs stay RUNNABLE (reason QueueDisabled); running ones go on (same as `update NAME --disable`).
    Disable {
        /// Name.
        name: String,
    },
    /// Delete a queue with no waiting or running jobs.
    Delete {
        /// Name.
        name: String,
    },
    /// List queues, highest priority first.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one queue.
    Show {
        /// Name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// `policy create|update|delete|list|show`.
#[derive(clap::Subcommand, Debug)]
pub enum PolicyCmd {
    /// Create a fair-share policy.
    Create {
        /// Name.
        name: String,
        #[command(flatten)]
        p: PolicyArgs,
    },
    /// Change a policy (only what is given changes; --share entries replace the list).
    Update {
        /// Name.
        name: String,
        #[command(flatten)]
        p: PolicyArgs,
    },
    /// Delete a policy no queue uses.
    Delete {
        /// Name.
        name: String,
    },
    /// List policies.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one policy.
    Show {
        /// Name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// Fair-share parameters (AWS Batch's names in parentheses).
#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    /// Usage half-life in seconds, 0 to 604800 (shareDecaySeconds); 0 counts only what runs now.
    #[arg(long, value_name = "SECONDS")]
    pub share_decay: Option<u64>,
    /// Percent of CPUs kept for shares with no jobs yet, 0-99 (computeReservation).
    #[arg(long, value_name = "PCT")]
    pub compute_reservation: Option<u8>,
    /// A share's weight, `ID=WEIGHT` (repeatable; weightFactor: lower gets more; `team*` matches a prefix).
    #[arg(long = "share", value_name = "ID=WEIGHT")]
    pub shares: Vec<String>,
}

/// `jobdef register|list|show|deregister`.
#[derive(clap::Subcommand, Debug)]
pub enum JobdefCmd {
    /// Register a job definition from a TOML or JSON file (a new revision each time).
    Register {
        /// The file (`.toml` or `.json`).
        file: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List job definitions (latest revisions; --all for every one, deregistered included).
    List {
        /// Every revision.
        #[arg(long)]
        all: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show a job definition: `NAME` (latest) or `NAME:REVISION`.
    Show {
        /// NAME or NAME:REVISION.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Deregister one revision: `NAME:REVISION`.
    Deregister {
        /// NAME:REVISION.
        name: String,
    },
}

async fn done(client: &Client, op: AdminOp) -> Result<i32> {
    match check(client.call(&Request::Admin(op)).await?)? {
        Response::Done(m) => {
            println!("{m}");
            Ok(exit::OK)
        }
        r => Err(unexpected(r)),
    }
}

async fn ces(client: &Client) -> Result<Vec<CeInfo>> {
    match check(client.call(&Request::Ces).await?)? {
        Response::Ces(v) => Ok(v),
        r => Err(unexpected(r)),
    }
}

async fn queues(client: &Client) -> Result<Vec<QueueInfo>> {
    match check(client.call(&Request::Queues).await?)? {
        Response::Queues(v) => Ok(v),
        r => Err(unexpected(r)),
    }
}

async fn policies(client: &Client) -> Result<Vec<PolicyDef>> {
    match check(client.call(&Request::Policies).await?)? {
        Response::Policies(v) => Ok(v),
        r => Err(unexpected(r)),
    }
}

fn state(enabled: bool) -> &'static str {
    if enabled {
        "ENABLED"
    } else {
        "DISABLED"
    }
}

fn selector_text(s: &NodeSelector) -> String {
    match s {
        NodeSelector::All => "all nodes".into(),
        NodeSelector::Nodes(v) => nodeagent::hostlist::compress(v),
        NodeSelector::Feature(f) => format!("feature {f}"),
    }
}

async fn ce_named(client: &Client, name: &str) -> Result<CeInfo> {
    ces(client)
        .await?
        .into_iter()
        .find(|c| c.def.name == name)
        .ok_or_else(|| usage(format!("no compute environment {name:?} (see `launcher ce list`)")))
}

async fn queue_named(client: &Client, name: &str) -> Result<QueueInfo> {
    queues(client)
        .await?
        .into_iter()
        .find(|q| q.def.name == name)
        .ok_or_else(|| usage(format!("no queue {name:?} (see `launcher queue-admin list`)")))
}

async fn policy_named(client: &Client, name: &str) -> Result<PolicyDef> {
    policies(client)
        .await?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| usage(format!("no policy {name:?} (see `launcher policy list`)")))
}

async fn set_ce_enabled(client: &Client, name: &str, enabled: bool) -> Result<i32> {
    let mut def = ce_named(client, name).await?.def;
    def.enabled = enabled;
    done(client, AdminOp::CeUpdate(def)).await
}

async fn set_queue_enabled(client: &Client, name: &str, enabled: bool) -> Result<i32> {
    let mut def = queue_named(client, name).await?.def;
    def.enabled = enabled;
    done(client, AdminOp::QueueUpdate(def)).await
}

/// `launcher ce ...`.
pub async fn ce(cred: Option<PathBuf>, cmd: CeCmd) -> Result<i32> {
    let client = Client::connect(cred).await?;
    match cmd {
        CeCmd::Create { name, sel, strategy, disabled } => {
            let selector =
                sel.selector()?.ok_or_else(|| usage("give the nodes: --nodes HOSTLIST, --feature F or --all-nodes"))?;
            let strategy: Strategy = strategy.parse().map_err(usage)?;
            done(&client, AdminOp::CeCreate(CeDef { name, enabled: !disabled, selector, strategy })).await
        }
        CeCmd::Enable { name } => set_ce_enabled(&client, &name, true).await,
        CeCmd::Disable { name } => set_ce_enabled(&client, &name, false).await,
        CeCmd::Update { name, sel, strategy, enable, disable } => {
            let mut def = ce_named(&client, &name).await?.def;
            if let Some(s) = sel.selector()? {
                def.selector = s;
            }
            if let Some(s) = strategy {
                def.strategy = s.parse().map_err(usage)?;
            }
            if enable || disable {
                def.enabled = enable;
            }
            done(&client, AdminOp::CeUpdate(def)).await
        }
        CeCmd::Delete { name } => done(&client, AdminOp::CeDelete(name)).await,
        CeCmd::List { json } => {
            let v = ces(&client).await?;
            if json {
                print_json(&v)?;
            } else {
                let mut out =
                    format!("{:<16} {:<9} {:<9} {:>5}  {}\n", "NAME", "STATE", "STRATEGY", "NODES", "SELECTOR");
                for c in &v {
                    let _ = writeln!(
                        out,
                        "{:<16} {:<9} {:<9} {:>5}  {}",
                        c.def.name,
                        state(c.def.enabled),
                        c.def.strategy.as_str(),
                        c.nodes.len(),
                        selector_text(&c.def.selector)
                    );
                }
                print!("{out}");
            }
            Ok(exit::OK)
        }
        CeCmd::Show { name, json } => {
            let c = ce_named(&client, &name).await?;
            if json {
                print_json(&c)?;
            } else {
                println!("Name:      {}", c.def.name);
                println!("State:     {}", state(c.def.enabled));
                println!("Strategy:  {}", c.def.strategy.as_str());
                println!("Selector:  {}", selector_text(&c.def.selector));
                println!(
                    "Nodes:     {}",
                    if c.nodes.is_empty() { "(none yet)".into() } else { nodeagent::hostlist::compress(&c.nodes) }
                );
            }
            Ok(exit::OK)
        }
    }
}

fn queue_line(q: &QueueInfo) -> String {
    format!(
        "{:<16} {:>8} {:<9} {:<24} {:<12} {:>8} {:>8}",
        q.def.name,
        q.def.priority,
        state(q.def.enabled),
        q.def.ces.join(","),
        q.def.policy.as_deref().unwrap_or("FIFO"),
        q.waiting,
        q.running
    )
}

/// `launcher queue-admin ...`.
pub async fn queue_admin(cred: Option<PathBuf>, cmd: QueueCmd) -> Result<i32> {
    let client = Client::connect(cred).await?;
    match cmd {
        QueueCmd::Create { name, priority, ce, policy, disabled } => {
            done(&client, AdminOp::QueueCreate(QueueDef { name, priority, enabled: !disabled, ces: ce, policy })).await
        }
        QueueCmd::Enable { name } => set_queue_enabled(&client, &name, true).await,
        QueueCmd::Disable { name } => set_queue_enabled(&client, &name, false).await,
        QueueCmd::Update { name, priority, ce, policy, fifo, enable, disable } => {
            let mut def = queue_named(&client, &name).await?.def;
            if let Some(p) = priority {
                def.priority = p;
            }
            if let Some(c) = ce {
                def.ces = c;
            }
            if policy.is_some() {
                def.policy = policy;
            }
            if fifo {
                def.policy = None;
            }
            if enable || disable {
                def.enabled = enable;
            }
            done(&client, AdminOp::QueueUpdate(def)).await
        }
        QueueCmd::Delete { name } => done(&client, AdminOp::QueueDelete(name)).await,
        QueueCmd::List { json } => {
            let v = queues(&client).await?;
            if json {
                print_json(&v)?;
            } else {
                println!(
                    "{:<16} {:>8} {:<9} {:<24} {:<12} {:>8} {:>8}",
                    "NAME", "PRIORITY", "STATE", "COMPUTE-ENVS", "POLICY", "WAITING", "RUNNING"
                );
                for q in &v {
                    println!("{}", queue_line(q));
                }
            }
            Ok(exit::OK)
        }
        QueueCmd::Show { name, json } => {
            let q = queue_named(&client, &name).await?;
            if json {
                print_json(&q)?;
            } else {
                println!("Name:          {}", q.def.name);
                println!("Priority:      {}", q.def.priority);
                println!("State:         {}", state(q.def.enabled));
                println!("Compute envs:  {}", q.def.ces.join(", "));
                println!("Policy:        {}", q.def.policy.as_deref().unwrap_or("FIFO"));
                println!("Jobs:          {} waiting, {} running", q.waiting, q.running);
            }
            Ok(exit::OK)
        }
    }
}

fn parse_shares(v: &[String]) -> Result<Vec<ShareWeight>> {
    v.iter()
        .map(|s| {
            let (id, w) =
                s.split_once('=').ok_or_else(|| usage(format!("--share {s:?}: expected ID=WEIGHT, e.g. teamA=0.5")))?;
            let w: f64 = w.parse().map_err(|_| usage(format!("--share {s:?}: the weight must be a number")))?;
            if !(0.0001..=999.9999).contains(&w) {
                return Err(usage(format!("--share {s:?}: the weight must be between 0.0001 and 999.9999")));
            }
            Ok(ShareWeight { share: id.to_string(), weight_x10k: (w * 10_000.0).round() as u32 })
        })
        .collect()
}

/// A share's weight as `--share` takes it: `ID=WEIGHT`.
fn share_text(s: &ShareWeight) -> String {
    format!("{}={}", s.share, f64::from(s.weight_x10k) / 10_000.0)
}

/// `launcher policy ...`.
pub async fn policy(cred: Option<PathBuf>, cmd: PolicyCmd) -> Result<i32> {
    let client = Client::connect(cred).await?;
    match cmd {
        PolicyCmd::Create { name, p } => {
            let def = PolicyDef {
                name,
                share_decay_s: p.share_decay.unwrap_or(0),
                compute_reservation: p.compute_reservation.unwrap_or(0),
                shares: parse_shares(&p.shares)?,
            };
            done(&client, AdminOp::PolicyCreate(def)).await
        }
        PolicyCmd::Update { name, p } => {
            let mut def = policy_named(&client, &name).await?;
            if let Some(d) = p.share_decay {
                def.share_decay_s = d;
            }
            if let Some(c) = p.compute_reservation {
                def.compute_reservation = c;
            }
            if !p.shares.is_empty() {
                def.shares = parse_shares(&p.shares)?;
            }
            done(&client, AdminOp::PolicyUpdate(def)).await
        }
        PolicyCmd::Delete { name } => done(&client, AdminOp::PolicyDelete(name)).await,
        PolicyCmd::Show { name, json } => {
            let p = policy_named(&client, &name).await?;
            if json {
                print_json(&p)?;
            } else {
                println!("Name:                 {}", p.name);
                println!("Share decay:          {} s", p.share_decay_s);
                println!("Compute reservation:  {} %", p.compute_reservation);
                if p.shares.is_empty() {
                    println!("Shares:               (none listed: every share has weight 1)");
                }
                for (i, s) in p.shares.iter().enumerate() {
                    let label = if i == 0 { "Shares:" } else { "" };
                    println!("{label:<22}{}", share_text(s));
                }
            }
            Ok(exit::OK)
        }
        PolicyCmd::List { json } => {
            let v = policies(&client).await?;
            if json {
                print_json(&v)?;
            } else {
                println!("{:<16} {:>12} {:>12}  SHARES (ID=WEIGHT)", "NAME", "DECAY(s)", "RESERVE(%)");
                for p in &v {
                    let shares: Vec<String> = p.shares.iter().map(share_text).collect();
                    println!(
                        "{:<16} {:>12} {:>12}  {}",
                        p.name,
                        p.share_decay_s,
                        p.compute_reservation,
                        shares.join(" ")
                    );
                }
            }
            Ok(exit::OK)
        }
    }
}

/// A job definition file: the `submit` options, by their long names.
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JobDefFile {
    /// Name (required).
    pub name: String,
    /// Program and arguments.
    #[serde(default)]
    pub command: Vec<String>,
    /// A batch script, relative to the file (its text is stored in the definition).
    pub script: Option<String>,
    /// Queue.
    pub queue: Option<String>,
    /// `-N`.
    pub nodes: Option<u32>,
    /// `-n`.
    pub ntasks: Option<u32>,
    /// `--ntasks-per-node`.
    pub ntasks_per_node: Option<u32>,
    /// `-c`.
    pub cpus_per_task: Option<u32>,
    /// `--mem`.
    pub mem: Option<String>,
    /// `--time`.
    pub time: Option<String>,
    /// Environment.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// `--output`.
    pub output: Option<String>,
    /// `--error`.
    pub error: Option<String>,
    /// `--chdir`.
    pub chdir: Option<String>,
    /// `--mpi`.
    pub mpi: Option<String>,
    /// `--array`.
    pub array: Option<String>,
    /// `--attempts`.
    pub attempts: Option<u32>,
    /// `--retry-on` rules.
    #[serde(default)]
    pub retry_on: Vec<String>,
    /// `--share`.
    pub share: Option<String>,
    /// `--priority`.
    pub priority: Option<u32>,
    /// `--finalize-grace`.
    pub finalize_grace: Option<String>,
    /// `--gpus-per-node`.
    pub gpus_per_node: Option<u32>,
    /// `--gpus-per-task`.
    pub gpus_per_task: Option<u32>,
    /// `--gres` (`gpu:G`).
    pub gres: Option<String>,
    /// `--constraint` features.
    #[serde(default)]
    pub constraint: Vec<String>,
    /// `--cpu-bind`.
    pub cpu_bind: Option<String>,
    /// `--distribution`.
    pub distribution: Option<String>,
    /// `--gpu-bind`.
    pub gpu_bind: Option<String>,
    /// `--nic`.
    pub nic: Option<String>,
}

/// Parse a job definition file into its template spec.
pub fn load_jobdef(path: &Path) -> Result<JobSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let f: JobDefFile = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(&text).map_err(|e| usage(format!("{}: {e}", path.display())))?,
        Some("toml") => toml::from_str(&text).map_err(|e| usage(format!("{}: {e}", path.display())))?,
        _ => return Err(usage(format!("{}: a job definition is a .toml or .json file", path.display()))),
    };
    let args = JobArgs {
        name: Some(f.name.clone()),
        queue: f.queue,
        nodes: f.nodes.map(|n| n.to_string()),
        tasks: f.ntasks.map(|n| n.to_string()),
        ntasks_per_node: f.ntasks_per_node,
        cpus_per_task: f.cpus_per_task,
        mem: f.mem,
        mem_per_cpu: None,
        time: f.time,
        env: f.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        // A definition never captures the registering shell (not even with $LAUNCHER_EXPORT set).
        export: Some("NONE".into()),
        output: f.output,
        error: f.error,
        chdir: f.chdir.clone(),
        mpi: f.mpi,
        depend: None,
        array: f.array,
        attempts: f.attempts,
        retry_on: f.retry_on,
        share: f.share,
        scheduling_priority: f.priority,
        finalize_grace: f.finalize_grace,
        gpus_per_node: f.gpus_per_node,
        gpus_per_task: f.gpus_per_task,
        gres: f.gres,
        constraint: f.constraint,
        cpu_bind: f.cpu_bind,
        distribution: f.distribution,
        gpu_bind: f.gpu_bind,
        nic: f.nic,
    };
    let script = match &f.script {
        Some(s) => {
            let p = path.parent().unwrap_or(Path::new(".")).join(s);
            let t =
                std::fs::read_to_string(&p).with_context(|| format!("script {} of {}", p.display(), path.display()))?;
            Some((s.clone(), t))
        }
        None => None,
    };
    if f.command.is_empty() && script.is_none() {
        return Err(usage(format!("{}: give a `command` (a list) or a `script`", path.display())));
    }
    let mut spec = args.to_spec(f.command, script).map_err(|e| usage(format!("{}: {e:#}", path.display())))?;
    if f.chdir.is_none() {
        spec.cwd = String::new(); // the submitter's directory at submit time
    }
    Ok(spec)
}

/// Find a job definition: `NAME` (latest active revision) or `NAME:REV`.
pub async fn fetch_jobdef(client: &Client, name: &str) -> Result<JobDef> {
    let (n, rev) = match name.split_once(':') {
        Some((n, r)) => (
            n,
            Some(r.parse::<u32>().map_err(|_| usage(format!("--jobdef {name:?}: expected NAME or NAME:REVISION")))?),
        ),
        None => (name, None),
    };
    let defs = match check(client.call(&Request::Jobdefs { name: Some(n.into()), all: true }).await?)? {
        Response::Jobdefs(v) => v,
        r => return Err(unexpected(r)),
    };
    let found = match rev {
        Some(r) => defs.into_iter().find(|d| d.revision == r),
        None => defs.into_iter().filter(|d| d.active).max_by_key(|d| d.revision),
    };
    let d = found.ok_or_else(|| usage(format!("no job definition {name} (see `launcher jobdef list`)")))?;
    if !d.active {
        return Err(usage(format!("job definition {}:{} was deregistered", d.name, d.revision)));
    }
    Ok(d)
}

/// `launcher jobdef ...`.
pub async fn jobdef(cred: Option<PathBuf>, cmd: JobdefCmd) -> Result<i32> {
    let client = Client::connect(cred).await?;
    match cmd {
        JobdefCmd::Register { file, json } => {
            let spec = load_jobdef(&file)?;
            let def = JobDef { name: spec.name.clone(), revision: 0, active: true, spec };
            match check(client.call(&Request::JobdefRegister(Box::new(def))).await?)? {
                Response::Jobdefs(v) if v.len() == 1 => {
                    if json {
                        print_json(&v[0])?;
                    } else {
                        println!("Registered job definition {}:{}", v[0].name, v[0].revision);
                    }
                    Ok(exit::OK)
                }
                r => Err(unexpected(r)),
            }
        }
        JobdefCmd::List { all, json } => {
            let mut v = match check(client.call(&Request::Jobdefs { name: None, all }).await?)? {
                Response::Jobdefs(v) => v,
                r => return Err(unexpected(r)),
            };
            if !all {
                // Latest active revision of each name.
                let mut latest: std::collections::BTreeMap<String, JobDef> = Default::default();
                for d in v {
                    latest.insert(d.name.clone(), d);
                }
                v = latest.into_values().collect();
            }
            if json {
                print_json(&v)?;
            } else {
                println!(
                    "{:<24} {:>4} {:<7} {:>5} {:>6} {:<12} COMMAND",
                    "NAME", "REV", "STATUS", "NODES", "TASKS", "QUEUE"
                );
                for d in &v {
                    let cmd = if d.spec.script.is_some() { "(script)".to_string() } else { d.spec.command.join(" ") };
                    println!(
                        "{:<24} {:>4} {:<7} {:>5} {:>6} {:<12} {}",
                        d.name,
                        d.revision,
                        if d.active { "ACTIVE" } else { "INACTIVE" },
                        d.spec.nodes,
                        d.spec.tasks,
                        d.spec.queue,
                        cmd
                    );
                }
            }
            Ok(exit::OK)
        }
        JobdefCmd::Show { name, json } => {
            let d = fetch_jobdef(&client, &name).await?;
            if json {
                print_json(&d)?;
            } else {
                println!("Job definition {}:{} ({})", d.name, d.revision, if d.active { "ACTIVE" } else { "INACTIVE" });
                print!("{}", super::output::spec_details(&d.spec));
            }
            Ok(exit::OK)
        }
        JobdefCmd::Deregister { name } => {
            let (n, r) = name
                .split_once(':')
                .and_then(|(n, r)| Some((n.to_string(), r.parse::<u32>().ok()?)))
                .ok_or_else(|| anyhow!(usage(format!("{name:?}: give NAME:REVISION"))))?;
            match check(client.call(&Request::JobdefDeregister { name: n, revision: r }).await?)? {
                Response::Done(m) => {
                    println!("{m}");
                    Ok(exit::OK)
                }
                r => Err(unexpected(r)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_definition_files_take_the_sbatch_task_and_gpu_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.toml");
        std::fs::write(&p, "name = \"d\"\ncommand = [\"true\"]\nnodes = 3\nntasks-per-node = 2\ngres = \"gpu:1\"\n")
            .unwrap();
        let spec = load_jobdef(&p).unwrap();
        assert_eq!((spec.nodes, spec.tasks, spec.gpus_per_node), (3, 6, 1));
        std::fs::write(&p, "name = \"d\"\ncommand = [\"true\"]\nntasks-per-nod = 2\n").unwrap();
        let e = format!("{:#}", load_jobdef(&p).unwrap_err());
        assert!(e.contains("unknown field `ntasks-per-nod`"), "{e}");
    }
}
