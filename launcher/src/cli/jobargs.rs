//! Job options shared by `submit` and `run`, `#LAUNCHER` directives, and the
//! Slurm-style value formats (`--time`, `--mem`).

use anyhow::{anyhow, bail, Context, Result};
use launcher_proto::JobSpec;

/// Resource and I/O options of a job. Every field is optional so that
/// command-line values can override script directives field by field.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct JobArgs {
    /// Job name (default: the program or script name).
    #[arg(short = 'J', long, visible_alias = "job-name")]
    pub name: Option<String>,
    /// Queue to submit to.
    #[arg(short = 'q', long, visible_alias = "partition", visible_short_alias = 'p')]
    pub queue: Option<String>,
    /// Number of nodes, all allocated at once (gang).
    #[arg(short = 'N', long = "nodes", allow_hyphen_values = true, value_name = "N")]
    pub nodes: Option<String>,
    /// Number of tasks (ranks), spread block-wise over the nodes (default: one per node).
    #[arg(short = 'n', long = "ntasks", allow_hyphen_values = true, value_name = "N")]
    pub tasks: Option<String>,
    /// Tasks on each node (sbatch's --ntasks-per-node): -n becomes N x K.
    #[arg(long, value_name = "K")]
    pub ntasks_per_node: Option<u32>,
    /// CPUs per task.
    #[arg(short = 'c', long, value_name = "C")]
    pub cpus_per_task: Option<u32>,
    /// Memory per node: MiB, or with a unit (`512M`, `4G`).
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
    /// Memory per CPU (sbatch's): a node's request is SIZE x the CPUs the job holds on its busiest node.
    #[arg(long, value_name = "SIZE", conflicts_with = "mem")]
    pub mem_per_cpu: Option<String>,
    /// Time limit per attempt: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH[:MM[:SS]]`, or `90s`/`15m`/`2h`.
    #[arg(short = 't', long, value_name = "LIMIT")]
    pub time: Option<String>,
    /// Extra environment variable for every task, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Which of this shell's variables the tasks get, as Slurm's --export: `NONE` (the default), `ALL`, or
    /// a list of `NAME` and `NAME=VALUE` (`ALL,NAME=VALUE` adds to all). ALL leaves out the variables
    /// launcher sets per task (LAUNCHER_*, SLURM_*, RANK, ...). Default from $LAUNCHER_EXPORT.
    #[arg(long, value_name = "ALL|NONE|LIST")]
    pub export: Option<String>,
    /// Also write stdout to this file on the node (`%j` job, `%t` rank, `%N` node name, `%n` node index, `%x` job name, `%u` user, `%A`/`%a` array id/index, `%%`).
    #[arg(short = 'o', long, value_name = "PATTERN")]
    pub output: Option<String>,
    /// Also write stderr to this file on the node (default: the --output file).
    #[arg(short = 'e', long, value_name = "PATTERN")]
    pub error: Option<String>,
    /// Working directory of the tasks (default: the current directory).
    #[arg(short = 'D', long, value_name = "DIR")]
    pub chdir: Option<String>,
    /// PMI for direct MPI launch: `auto` (every job with more than one task), `pmi1`, or `none`.
    #[arg(long, value_name = "MODE")]
    pub mpi: Option<String>,
    /// Start only after other jobs: `afterok:ID[:ID]`, `afterany:ID`, `afternotok:ID`, `aftercorr:ID`
    /// (array N_TO_N), `sequential` (array children one after another); `,` joins (AND).
    /// An array child is `ID_INDEX`.
    #[arg(short = 'd', long = "depend", visible_alias = "dependency", value_name = "LIST")]
    pub depend: Option<String>,
    /// Array job: `START-END[:STEP][%MAX_RUNNING]` or a single index; children are `ID:INDEX`.
    #[arg(short = 'a', long, value_name = "SPEC")]
    pub array: Option<String>,
    /// Attempts in all (1-10); a failed attempt goes back to RUNNABLE. Timeouts and cancels are never retried.
    #[arg(long, value_name = "N")]
    pub attempts: Option<u32>,
    /// evaluateOnExit rule, first match wins (repeatable, up to 5): `ACTION:COND[,COND]`, ACTION `retry`
    /// or `exit`, COND `exit=GLOB`, `reason=GLOB` or `status=GLOB` (a trailing `*` matches any suffix).
    /// With no matching rule a failed attempt is retried.
    #[arg(long = "retry-on", value_name = "RULE")]
    pub retry_on: Vec<String>,
    /// Fair-share identifier (default in fair-share queues: your user name).
    #[arg(long, value_name = "ID")]
    pub share: Option<String>,
    /// Scheduling priority within a share, 0-9999, higher first.
    #[arg(long = "priority", value_name = "N")]
    pub scheduling_priority: Option<u32>,
    /// MPI jobs: once every rank has called MPI_Finalize and some rank has exited 0,
    /// ranks still running this many seconds later are killed and counted as exit 0
    /// (works around MPI libraries that hang while tearing down). 0 disables. Default: 10.
    #[arg(long, value_name = "SECONDS")]
    pub finalize_grace: Option<String>,
    /// GPUs every allocated node must have free for this job.
    #[arg(long, value_name = "G")]
    pub gpus_per_node: Option<u32>,
    /// Slurm's generic resources, GPUs only: `gpu:G` is --gpus-per-node G.
    #[arg(long, value_name = "gpu:G", conflicts_with = "gpus_per_node")]
    pub gres: Option<String>,
    /// GPUs per task (sets CUDA_VISIBLE_DEVICES; implies --gpus-per-node tasks-per-node x G).
    #[arg(long, value_name = "G")]
    pub gpus_per_task: Option<u32>,
    /// Only nodes with this feature (agent `--feature`); repeatable, all must match.
    #[arg(short = 'C', long = "constraint", value_name = "FEATURE")]
    pub constraint: Vec<String>,
    /// CPU binding per task: auto, none, cores, threads, numa, or map:LIST (OS CPU numbers).
    #[arg(long, value_name = "MODE")]
    pub cpu_bind: Option<String>,
    /// Task order over a node's sockets: block or cyclic.
    #[arg(short = 'm', long, value_name = "DIST")]
    pub distribution: Option<String>,
    /// GPU binding per task: closest, none (all the step's GPUs), or map:LIST (GPU indices).
    #[arg(long, value_name = "MODE")]
    pub gpu_bind: Option<String>,
    /// NIC for fabric hints (UCX_NET_DEVICES, NCCL_SOCKET_IFNAME, FI_PROVIDER...): closest, an interface name, or none.
    #[arg(long, value_name = "NIC")]
    pub nic: Option<String>,
}

impl JobArgs {
    /// Field by field: ours if set, else `other`'s. Env lists are concatenated
    /// (`other` first, so ours win for the same key).
    pub fn over(self, other: JobArgs) -> JobArgs {
        let (counts_tasks, counts_per_node) = (self.tasks.is_some(), self.ntasks_per_node.is_some());
        let (sizes_node, sizes_cpu) = (self.mem.is_some(), self.mem_per_cpu.is_some());
        JobArgs {
            name: self.name.or(other.name),
            queue: self.queue.or(other.queue),
            nodes: self.nodes.or(other.nodes),
            // -n and --ntasks-per-node both say how many tasks: the layer that
            // gives either decides both.
            tasks: if counts_per_node { self.tasks } else { self.tasks.or(other.tasks) },
            ntasks_per_node: if counts_tasks {
                self.ntasks_per_node
            } else {
                self.ntasks_per_node.or(other.ntasks_per_node)
            },
            cpus_per_task: self.cpus_per_task.or(other.cpus_per_task),
            // --mem and --mem-per-cpu both size memory: the layer that gives either decides.
            mem: if sizes_cpu { self.mem } else { self.mem.or(other.mem) },
            mem_per_cpu: if sizes_node { self.mem_per_cpu } else { self.mem_per_cpu.or(other.mem_per_cpu) },
            time: self.time.or(other.time),
            env: other.env.into_iter().chain(self.env).collect(),
            export: self.export.or(other.export),
            output: self.output.or(other.output),
            error: self.error.or(other.error),
            chdir: self.chdir.or(other.chdir),
            mpi: self.mpi.or(other.mpi),
            depend: self.depend.or(other.depend),
            array: self.array.or(other.array),
            attempts: self.attempts.or(other.attempts),
            retry_on: if self.retry_on.is_empty() { other.retry_on } else { self.retry_on },
            share: self.share.or(other.share),
            scheduling_priority: self.scheduling_priority.or(other.scheduling_priority),
            finalize_grace: self.finalize_grace.or(other.finalize_grace),
            gpus_per_node: self.gpus_per_node.or(other.gpus_per_node),
            gres: self.gres.clone().or(other.gres),
            gpus_per_task: self.gpus_per_task.or(other.gpus_per_task),
            constraint: if self.constraint.is_empty() { other.constraint } else { self.constraint },
            cpu_bind: self.cpu_bind.or(other.cpu_bind),
            distribution: self.distribution.or(other.distribution),
            gpu_bind: self.gpu_bind.or(other.gpu_bind),
            nic: self.nic.or(other.nic),
        }
    }

    /// Build the spec. `command` is the program and its arguments, or the
    /// script's arguments when `script` is given.
    pub fn to_spec(&self, command: Vec<String>, script: Option<(String, String)>) -> Result<JobSpec> {
        self.to_spec_over(None, command, script)
    }

    /// Build the spec on top of a job definition's template: every option
    /// given here wins over the template, field by field.
    pub fn to_spec_over(
        &self,
        base: Option<&JobSpec>,
        command: Vec<String>,
        script: Option<(String, String)>,
    ) -> Result<JobSpec> {
        let nodes = match &self.nodes {
            Some(v) => parse_count(v, "-N/--nodes")?,
            None => base.map(|b| b.nodes).unwrap_or(1),
        };
        let tasks = match (&self.tasks, self.ntasks_per_node) {
            (_, Some(0)) => bail!("--ntasks-per-node 0: give at least 1"),
            (Some(v), Some(k)) => {
                let n = parse_count(v, "-n/--ntasks")?;
                if n != nodes.saturating_mul(k) {
                    bail!("-n {n} and --ntasks-per-node {k} on {nodes} node(s) disagree ({nodes} x {k} = {}); give one of them", nodes.saturating_mul(k));
                }
                n
            }
            (None, Some(k)) => nodes.checked_mul(k).ok_or_else(|| anyhow!("--ntasks-per-node {k}: too many tasks"))?,
            (Some(v), None) => parse_count(v, "-n/--ntasks")?,
            (None, None) => base.map(|b| b.tasks.max(nodes)).filter(|_| self.nodes.is_none()).unwrap_or(nodes),
        };
        // Lowest first: the shell's variables, the definition's, then --export's and --env's own values.
        let export = self.export.clone().or_else(|| std::env::var("LAUNCHER_EXPORT").ok());
        let (mut env, assigned) = match export.as_deref() {
            Some(e) => exported(e, std::env::vars_os())?,
            None => (Vec::new(), Vec::new()),
        };
        env.extend(base.map(|b| b.env.clone()).unwrap_or_default());
        env.extend(assigned);
        for kv in &self.env {
            let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--env {kv:?}: expected KEY=VALUE"))?;
            env.push((k.to_string(), v.to_string()));
        }
        let cwd = match &self.chdir {
            Some(d) => std::path::absolute(d).with_context(|| format!("--chdir {d}"))?.to_string_lossy().into_owned(),
            None => match base.map(|b| b.cwd.clone()).filter(|c| !c.is_empty()) {
                Some(c) => c,
                None => std::env::current_dir().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
            },
        };
        // The definition's command or script, unless this submission brings its own.
        let (command, script) = match (base, command.is_empty() && script.is_none()) {
            (Some(b), true) => (b.command.clone(), b.script.clone().map(|t| (String::new(), t))),
            _ => (command, script),
        };
        let default_name = match (&script, command.first(), base) {
            (_, _, Some(b)) => b.name.clone(),
            (Some((path, _)), _, _) => basename(path),
            (None, Some(c), _) => basename(c),
            (None, None, _) => "job".into(),
        };
        let mut retry = base.map(|b| b.retry.clone()).unwrap_or_default();
        if let Some(a) = self.attempts {
            retry.attempts = a;
        }
        if !self.retry_on.is_empty() {
            retry.evaluate_on_exit = self.retry_on.iter().map(|r| parse_retry_rule(r)).collect::<Result<_>>()?;
            if self.attempts.is_none() && retry.attempts == 1 {
                bail!("--retry-on needs --attempts N (2 or more) to have anything to retry");
            }
        }
        let (mut depends, mut sequential) = match &self.depend {
            Some(d) => parse_depend(d)?,
            None => (base.map(|b| b.depends.clone()).unwrap_or_default(), false),
        };
        depends.dedup();
        let mut array = match &self.array {
            Some(a) => Some(parse_array(a)?),
            None => base.and_then(|b| b.array.clone()),
        };
        match array.as_mut() {
            Some(a) => {
                sequential |= a.sequential;
                a.sequential = sequential;
            }
            None if sequential => bail!("--depend sequential applies to array jobs; add --array"),
            None => {}
        }
        let cpus_per_task = self.cpus_per_task.or(base.map(|b| b.cpus_per_task)).unwrap_or(1);
        // Tasks on the busiest node: what per-CPU memory and per-task GPUs multiply.
        let busiest = tasks.div_ceil(nodes.max(1));
        let spec = JobSpec {
            name: self.name.clone().unwrap_or(default_name),
            queue: self.queue.clone().or_else(|| base.map(|b| b.queue.clone())).unwrap_or_else(|| "default".into()),
            nodes,
            tasks,
            cpus_per_task,
            mem_mib: match (self.mem.as_deref(), self.mem_per_cpu.as_deref()) {
                (Some(m), _) => parse_mem_mib(m)?,
                (None, Some(m)) => parse_mem_mib(m)
                    .context("--mem-per-cpu")?
                    .saturating_mul(u64::from(busiest) * u64::from(cpus_per_task)),
                (None, None) => base.map(|b| b.mem_mib).unwrap_or(0),
            },
            time_limit_s: match self.time.as_deref() {
                Some(t) => Some(parse_time_s(t)?),
                None => base.and_then(|b| b.time_limit_s),
            },
            env,
            command,
            script: script.map(|(_, text)| text),
            cwd,
            output: self.output.clone().or_else(|| base.and_then(|b| b.output.clone())),
            error: self.error.clone().or_else(|| base.and_then(|b| b.error.clone())),
            user: String::new(),
            mpi: match self.mpi.as_deref() {
                None => base.map(|b| b.mpi).unwrap_or_default(),
                Some("auto") => launcher_proto::MpiMode::Auto,
                Some("pmi1") | Some("pmi") => launcher_proto::MpiMode::Pmi1,
                Some("none") => launcher_proto::MpiMode::None,
                Some(other) => bail!("--mpi {other:?}: expected auto, pmi1 or none"),
            },
            depends,
            array,
            retry,
            share: self.share.clone().or_else(|| base.and_then(|b| b.share.clone())),
            scheduling_priority: self.scheduling_priority.or(base.map(|b| b.scheduling_priority)).unwrap_or(0),
            jobdef: base.and_then(|b| b.jobdef.clone()),
            finalize_grace_s: match self.finalize_grace.as_deref() {
                Some(g) => Some(parse_grace_s(g)?),
                None => base.and_then(|b| b.finalize_grace_s),
            },
            gpus_per_node: 0,
            constraint: self.constraint.clone(),
            bind: launcher_proto::BindSpec {
                cpu: parse_or_default(self.cpu_bind.as_deref())?,
                distribution: parse_or_default(self.distribution.as_deref())?,
                gpus_per_task: self.gpus_per_task.unwrap_or(0),
                gpu: parse_or_default(self.gpu_bind.as_deref())?,
                nic: parse_or_default(self.nic.as_deref())?,
            },
        };
        // --gpus-per-task alone implies the per-node GPU count the scheduler must find.
        let mut spec = spec;
        let gres = self.gres.as_deref().map(parse_gres).transpose()?;
        spec.gpus_per_node = match self.gpus_per_node.or(gres) {
            Some(g) => g,
            None => busiest.saturating_mul(spec.bind.gpus_per_task),
        };
        // A job definition's placement stands unless this submission sets its own.
        if let Some(b) = base {
            if self.constraint.is_empty() {
                spec.constraint = b.constraint.clone();
            }
            let binds = [&self.cpu_bind, &self.distribution, &self.gpu_bind, &self.nic];
            if binds.iter().all(|o| o.is_none()) && self.gpus_per_task.is_none() {
                spec.bind = b.bind.clone();
                if self.gpus_per_node.is_none() && gres.is_none() {
                    spec.gpus_per_node = b.gpus_per_node;
                }
            }
        }
        launcher_core::validate_spec(&spec).map_err(|e| anyhow!(e))?;
        Ok(spec)
    }
}

/// sbatch's `--gres`, for GPUs: `gpu:G` (or `gpu`, one) → GPUs per node.
fn parse_gres(v: &str) -> Result<u32> {
    let bad = || {
        anyhow!("--gres {v:?}: only GPUs are known here, as gpu:COUNT (e.g. gpu:2); GPU types are not (use --constraint with a node feature)")
    };
    match v.split(':').collect::<Vec<_>>().as_slice() {
        ["gpu"] => Ok(1),
        ["gpu", n] => n.parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// `afterok:12:13,afterany:14_2,sequential` → dependencies and the SEQUENTIAL flag.
pub fn parse_depend(v: &str) -> Result<(Vec<launcher_proto::Dependency>, bool)> {
    use launcher_proto::{DepKind, Dependency, JobId};
    let mut out = Vec::new();
    let mut sequential = false;
    let mut kind: Option<DepKind> = None;
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.eq_ignore_ascii_case("sequential") {
            sequential = true;
            continue;
        }
        let mut fields = part.split(':');
        let first = fields.next().unwrap_or_default();
        let ids: Vec<&str> = match first.to_ascii_lowercase().as_str() {
            "afterok" => {
                kind = Some(DepKind::AfterOk);
                fields.collect()
            }
            "afterany" => {
                kind = Some(DepKind::AfterAny);
                fields.collect()
            }
            "afternotok" => {
                kind = Some(DepKind::AfterNotOk);
                fields.collect()
            }
            "aftercorr" => {
                kind = Some(DepKind::AfterCorr);
                fields.collect()
            }
            _ if first.chars().next().is_some_and(|c| c.is_ascii_digit()) && kind.is_some() => {
                std::iter::once(first).chain(fields).collect()
            }
            _ => bail!(
                "--depend {part:?}: expected afterok:ID, afterany:ID, afternotok:ID, aftercorr:ID or sequential (join with ',')"
            ),
        };
        if ids.is_empty() {
            bail!("--depend {part:?}: name at least one job id, e.g. afterok:12");
        }
        for id in ids {
            let job: JobId =
                id.parse().map_err(|e: String| anyhow!("--depend {part:?}: {e}; an array child is ID_INDEX"))?;
            out.push(Dependency { kind: kind.expect("set above"), job });
        }
    }
    Ok((out, sequential))
}

/// `0-999`, `1-7:2`, `0-99%10`, `5`.
pub fn parse_array(v: &str) -> Result<launcher_proto::ArraySpec> {
    let bad = || anyhow!("--array {v:?}: expected START-END[:STEP][%MAX_RUNNING], e.g. 0-999, 1-7:2 or 0-99%10");
    let (range, max) = match v.split_once('%') {
        Some((r, m)) => (r, Some(m.trim().parse::<u32>().map_err(|_| bad())?)),
        None => (v, None),
    };
    let (range, step) = match range.split_once(':') {
        Some((r, s)) => (r, s.trim().parse::<u32>().map_err(|_| bad())?),
        None => (range, 1),
    };
    let (start, end) = match range.split_once('-') {
        Some((a, b)) => (a.trim().parse::<u32>().map_err(|_| bad())?, b.trim().parse::<u32>().map_err(|_| bad())?),
        None => {
            let x = range.trim().parse::<u32>().map_err(|_| bad())?;
            (x, x)
        }
    };
    Ok(launcher_proto::ArraySpec { start, end, step, max_running: max, sequential: false })
}

/// `retry:exit=137,reason=NonZero*` → an evaluateOnExit rule.
pub fn parse_retry_rule(v: &str) -> Result<launcher_proto::ExitRule> {
    let (action, conds) =
        v.split_once(':').ok_or_else(|| anyhow!("--retry-on {v:?}: expected ACTION:COND, e.g. retry:exit=137"))?;
    let action = match action.to_ascii_lowercase().as_str() {
        "retry" => launcher_proto::ExitAction::Retry,
        "exit" => launcher_proto::ExitAction::Exit,
        _ => bail!("--retry-on {v:?}: the action must be retry or exit"),
    };
    let mut rule = launcher_proto::ExitRule { action, on_exit_code: None, on_reason: None, on_status_reason: None };
    for c in conds.split(',') {
        let (k, val) = c.split_once('=').ok_or_else(|| anyhow!("--retry-on {v:?}: condition {c:?} needs KEY=GLOB"))?;
        let slot = match k.trim() {
            "exit" | "exit-code" => &mut rule.on_exit_code,
            "reason" => &mut rule.on_reason,
            "status" | "status-reason" => &mut rule.on_status_reason,
            other => bail!("--retry-on {v:?}: unknown condition {other:?}; use exit=, reason= or status="),
        };
        *slot = Some(val.to_string());
    }
    Ok(rule)
}

/// An option's value parsed with its type's own error text, or the default when absent.
fn parse_or_default<T: std::str::FromStr<Err = String> + Default>(v: Option<&str>) -> Result<T> {
    Ok(v.map(str::parse).transpose().map_err(|e: String| anyhow!(e))?.unwrap_or_default())
}

fn basename(p: &str) -> String {
    std::path::Path::new(p).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| p.to_string())
}

/// A positive count with an error that names the flag.
pub fn parse_count(v: &str, flag: &str) -> Result<u32> {
    let v = v.trim();
    if v.starts_with('-') {
        bail!("{flag} {v}: must be a positive whole number");
    }
    let n: u64 = v.parse().map_err(|_| anyhow!("{flag} {v:?}: must be a positive whole number"))?;
    if n == 0 {
        bail!("{flag} 0: must be at least 1");
    }
    u32::try_from(n).map_err(|_| anyhow!("{flag} {v}: absurdly large"))
}

/// `--finalize-grace`: whole seconds (`10`), or with a unit (`30s`, `2m`).
pub fn parse_grace_s(v: &str) -> Result<u32> {
    let t = v.trim();
    let secs = match t.parse::<u64>() {
        Ok(n) => n,
        Err(_) if t.ends_with(|c: char| c.is_ascii_alphabetic()) => parse_time_s(t)
            .map_err(|_| anyhow!("--finalize-grace {v:?}: expected whole seconds (10) or a number with s/m/h"))?,
        Err(_) => bail!("--finalize-grace {v:?}: expected whole seconds (10) or a number with s/m/h"),
    };
    u32::try_from(secs).ok().filter(|&s| s <= 86_400).ok_or_else(|| anyhow!("--finalize-grace {v}: at most one day"))
}

/// Memory in MiB: bare numbers are MiB; K, M, G, T suffixes (optionally with B), any case.
pub fn parse_mem_mib(v: &str) -> Result<u64> {
    let s = v.trim().to_ascii_uppercase();
    let s = s.strip_suffix('B').unwrap_or(&s);
    let (num, mult_kib): (&str, u64) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], 1),
        Some('M') => (&s[..s.len() - 1], 1024),
        Some('G') => (&s[..s.len() - 1], 1024 * 1024),
        Some('T') => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1024),
    };
    let n: u64 = num.trim().parse().map_err(|_| anyhow!("--mem {v:?}: expected MiB or a size like 512M, 4G"))?;
    Ok((n.saturating_mul(mult_kib)).div_ceil(1024))
}

/// Slurm time formats, plus `90s`, `15m`, `2h`, `1d`.
pub fn parse_time_s(v: &str) -> Result<u64> {
    let bad = || anyhow!("--time {v:?}: expected MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]], or a number with s/m/h/d");
    let s = v.trim();
    if let Some(last) = s.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        let n: u64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
        let mult = match last.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        return Ok(n * mult);
    }
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().map_err(|_| bad())?, Some(r)),
        None => (0, None),
    };
    let nums = |t: &str| t.split(':').map(|p| p.parse::<u64>().map_err(|_| bad())).collect::<Result<Vec<u64>>>();
    let secs = match rest {
        Some(r) => match nums(r)?.as_slice() {
            [h] => h * 3600,
            [h, m] => h * 3600 + m * 60,
            [h, m, sec] => h * 3600 + m * 60 + sec,
            _ => return Err(bad()),
        },
        None => match nums(s)?.as_slice() {
            [m] => m * 60,
            [m, sec] => m * 60 + sec,
            [h, m, sec] => h * 3600 + m * 60 + sec,
            _ => return Err(bad()),
        },
    };
    Ok(days * 86400 + secs)
}

/// Split a directive line like a shell would (quotes and backslashes).
pub fn shell_split(line: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut have = false;
    let mut chars = line.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '"') | (None, '\'') => {
                quote = Some(c);
                have = true;
            }
            (None, c) if c.is_whitespace() => {
                if have || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            (None, '#') if cur.is_empty() && !have => break,
            (None, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        bail!("unterminated quote in {line:?}");
    }
    if have || !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Environment variables, in order.
type Vars = Vec<(String, String)>;

/// `--export` (Slurm's syntax): the variables taken from `shell`, then the
/// `NAME=VALUE` items, which rank with `--env`. Names that are not set are
/// skipped, as Slurm does, and so are variables that are not UTF-8; `ALL`
/// leaves out the variables launcher sets per task ([`launcher_proto::is_task_var`]).
fn exported(spec: &str, shell: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> Result<(Vars, Vars)> {
    let shell: Vec<(String, String)> =
        shell.filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    let (mut all, mut none) = (false, false);
    let (mut from_shell, mut assigned) = (Vec::new(), Vec::new());
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad_name =
            |n: &str| n.is_empty() || n.contains('\0') || n.chars().next().is_some_and(|c| c.is_ascii_digit());
        match item {
            "ALL" => all = true,
            "NONE" => none = true,
            _ => match item.split_once('=') {
                Some((k, v)) if !bad_name(k) => assigned.push((k.to_string(), v.to_string())),
                None if !bad_name(item) => {
                    if let Some(kv) = shell.iter().find(|(k, _)| k == item) {
                        from_shell.push(kv.clone());
                    }
                }
                _ => bail!("--export {spec:?}: {item:?} is not a variable name; expected ALL, NONE, NAME or NAME=VALUE items joined with ','"),
            },
        }
    }
    if all && none {
        bail!("--export {spec:?}: ALL and NONE contradict each other; give one of them");
    }
    if all {
        let mut every: Vec<(String, String)> =
            shell.into_iter().filter(|(k, _)| !launcher_proto::is_task_var(k)).collect();
        every.sort();
        from_shell.retain(|(k, _)| every.binary_search_by(|(e, _)| e.as_str().cmp(k)).is_err());
        every.extend(from_shell);
        from_shell = every;
    }
    Ok((from_shell, assigned))
}

/// The arguments of every `#LAUNCHER` line before the first command line.
pub fn directives(script: &str) -> Result<Vec<String>> {
    Ok(prefixed_lines(script, "#LAUNCHER")?.into_iter().flat_map(|(_, args)| args).collect())
}

/// Each `#SBATCH` line before the first command line: its line number and
/// arguments. Slurm scripts run as they are; the caller decides what to do
/// with the options launcher does not have.
pub fn sbatch_directives(script: &str) -> Result<Vec<(usize, Vec<String>)>> {
    prefixed_lines(script, "#SBATCH")
}

fn prefixed_lines(script: &str, prefix: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let mut out = Vec::new();
    for (i, line) in script.lines().enumerate() {
        let t = line.trim();
        if i == 0 && t.starts_with("#!") {
            continue;
        }
        // `#LAUNCHER -N 2`, not `#LAUNCHERS`: the prefix ends the word.
        match t.strip_prefix(prefix) {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => {
                out.push((i + 1, shell_split(rest).with_context(|| format!("script line {}", i + 1))?));
            }
            _ if t.is_empty() || t.starts_with('#') => continue,
            _ => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell() -> impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)> {
        [("PATH", "/venv/bin:/usr/bin"), ("LAUNCHER_JOB_ID", "7"), ("RANK", "3"), ("HOME", "/home/u"), ("A", "1")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
    }

    fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
        v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn the_layer_that_counts_tasks_decides() {
        let script = JobArgs { nodes: Some("2".into()), ntasks_per_node: Some(4), ..Default::default() };
        let cli = JobArgs { tasks: Some("3".into()), ..Default::default() };
        let m = cli.over(script.clone());
        assert_eq!((m.tasks.as_deref(), m.ntasks_per_node), (Some("3"), None));
        let cli = JobArgs { ntasks_per_node: Some(1), ..Default::default() };
        let m = cli.over(JobArgs { tasks: Some("8".into()), ..script });
        assert_eq!((m.tasks.as_deref(), m.ntasks_per_node), (None, Some(1)));
    }

    #[test]
    fn sbatch_task_and_gpu_spellings() {
        let spec = |a: JobArgs| a.to_spec(vec!["true".into()], None);
        let a = JobArgs { nodes: Some("3".into()), ntasks_per_node: Some(4), ..Default::default() };
        assert_eq!(spec(a).unwrap().tasks, 12);
        let a = JobArgs {
            nodes: Some("2".into()),
            tasks: Some("4".into()),
            ntasks_per_node: Some(2),
            ..Default::default()
        };
        assert_eq!(spec(a).unwrap().tasks, 4);
        let a = JobArgs {
            nodes: Some("2".into()),
            tasks: Some("5".into()),
            ntasks_per_node: Some(2),
            ..Default::default()
        };
        assert!(spec(a).unwrap_err().to_string().contains("disagree"));
        // --mem-per-cpu: per node, times the CPUs held on the busiest node (3 tasks x 2 CPUs).
        let a = JobArgs {
            nodes: Some("2".into()),
            tasks: Some("5".into()),
            cpus_per_task: Some(2),
            mem_per_cpu: Some("1G".into()),
            ..Default::default()
        };
        assert_eq!(spec(a).unwrap().mem_mib, 6 * 1024);
        let layered = JobArgs { mem: Some("100".into()), ..Default::default() }
            .over(JobArgs { mem_per_cpu: Some("1G".into()), ..Default::default() });
        assert_eq!(spec(layered).unwrap().mem_mib, 100, "the layer that sizes memory decides");
        let a = JobArgs { gres: Some("gpu:2".into()), ..Default::default() };
        assert_eq!(spec(a).unwrap().gpus_per_node, 2);
        assert_eq!(parse_gres("gpu").unwrap(), 1);
        for bad in ["gpu:a100:2", "mps:100", "gpu:x"] {
            assert!(parse_gres(bad).unwrap_err().to_string().contains("gpu:COUNT"), "{bad}");
        }
    }

    #[test]
    fn sbatch_lines_before_the_first_command() {
        let s = "#!/bin/bash\n#SBATCH -N 2\n#SBATCHX -N 9\n#LAUNCHER -n 4\n#SBATCH --job-name=\"a b\"\necho hi\n#SBATCH -N 7\n";
        let got = sbatch_directives(s).unwrap();
        assert_eq!(got, vec![(2, vec!["-N".to_string(), "2".into()]), (5, vec!["--job-name=a b".into()])]);
        assert_eq!(directives(s).unwrap(), ["-n", "4"]);
    }

    #[test]
    fn export_follows_slurm() {
        let (from, set) = exported("NONE", shell()).unwrap();
        assert!(from.is_empty() && set.is_empty());
        // ALL: everything but the variables launcher sets per task (an outer job's identity).
        let (from, set) = exported("ALL", shell()).unwrap();
        assert_eq!(pairs(&from), [("A", "1"), ("HOME", "/home/u"), ("PATH", "/venv/bin:/usr/bin")]);
        assert!(set.is_empty());
        // A list: only the names given (unset ones skipped), and NAME=VALUE items as --env.
        let (from, set) = exported("PATH,NOPE,B=2,C=x=y", shell()).unwrap();
        assert_eq!(pairs(&from), [("PATH", "/venv/bin:/usr/bin")]);
        assert_eq!(pairs(&set), [("B", "2"), ("C", "x=y")]);
        // Named on its own, even a per-task variable is passed: the user asked for it.
        let (from, _) = exported("ALL,RANK", shell()).unwrap();
        assert_eq!(from.iter().filter(|(k, _)| k == "RANK").count(), 1);
        assert!(!from.iter().any(|(k, _)| k == "LAUNCHER_JOB_ID"));
        for bad in ["ALL,NONE", "=x", "1A", "A,,=2"] {
            let e = exported(bad, shell()).unwrap_err().to_string();
            assert!(e.contains("--export"), "{bad}: {e}");
        }
    }

    #[test]
    fn export_ranks_below_the_definition_and_env() {
        let args =
            JobArgs { export: Some("ALL,Z=from-export".into()), env: vec!["PATH=/mine".into()], ..Default::default() };
        let spec = args.to_spec(vec!["true".into()], None).unwrap();
        let last = |k: &str| spec.env.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(last("PATH").as_deref(), Some("/mine"), "--env wins over the exported PATH");
        assert_eq!(last("Z").as_deref(), Some("from-export"));
        assert!(spec.env.iter().position(|(k, _)| k == "Z") > spec.env.iter().position(|(k, _)| k == "PATH"));
    }

    #[test]
    fn times() {
        assert_eq!(parse_time_s("10").unwrap(), 600);
        assert_eq!(parse_time_s("10:30").unwrap(), 630);
        assert_eq!(parse_time_s("01:00:00").unwrap(), 3600);
        assert_eq!(parse_time_s("1-02").unwrap(), 86400 + 7200);
        assert_eq!(parse_time_s("1-02:03:04").unwrap(), 86400 + 7200 + 184);
        assert_eq!(parse_time_s("90s").unwrap(), 90);
        assert_eq!(parse_time_s("2h").unwrap(), 7200);
        assert!(parse_time_s("abc").unwrap_err().to_string().contains("--time"));
    }

    #[test]
    fn grace() {
        assert_eq!(parse_grace_s("5").unwrap(), 5);
        assert_eq!(parse_grace_s("0").unwrap(), 0);
        assert_eq!(parse_grace_s("2m").unwrap(), 120);
        assert!(parse_grace_s("-1").unwrap_err().to_string().contains("--finalize-grace"));
        assert!(parse_grace_s("soon").unwrap_err().to_string().contains("whole seconds"));
        assert!(parse_grace_s("2d").unwrap_err().to_string().contains("at most one day"));
    }

    #[test]
    fn memory() {
        assert_eq!(parse_mem_mib("100").unwrap(), 100);
        assert_eq!(parse_mem_mib("1G").unwrap(), 1024);
        assert_eq!(parse_mem_mib("4GB").unwrap(), 4096);
        assert_eq!(parse_mem_mib("10g").unwrap(), 10240);
        assert_eq!(parse_mem_mib("954M").unwrap(), 954);
        assert_eq!(parse_mem_mib("1536K").unwrap(), 2);
        assert!(parse_mem_mib("lots").is_err());
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("3", "-N").unwrap(), 3);
        assert!(parse_count("-3", "-N/--nodes").unwrap_err().to_string().contains("-N/--nodes -3"));
        assert!(parse_count("99999999999", "-N").unwrap_err().to_string().contains("absurd"));
        assert!(parse_count("x", "-n").is_err());
    }

    #[test]
    fn directive_lines() {
        let s = "#!/bin/sh\n#LAUNCHER -N 2 -n 4\n# comment\n#LAUNCHER --name \"my job\" --env A=b # trailing\n\necho hi\n#LAUNCHER -N 9\n";
        assert_eq!(directives(s).unwrap(), vec!["-N", "2", "-n", "4", "--name", "my job", "--env", "A=b"]);
    }

    #[test]
    fn command_line_overrides_directives() {
        let d =
            JobArgs { nodes: Some("2".into()), name: Some("d".into()), env: vec!["A=1".into()], ..Default::default() };
        let c = JobArgs { nodes: Some("3".into()), env: vec!["A=2".into()], ..Default::default() };
        let m = c.over(d);
        assert_eq!(m.nodes.as_deref(), Some("3"));
        assert_eq!(m.name.as_deref(), Some("d"));
        assert_eq!(m.env, vec!["A=1", "A=2"]);
    }
}
