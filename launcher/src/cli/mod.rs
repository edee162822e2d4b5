//! The user and admin CLI. One module per concern: `submit` (submit, run),
//! read commands here (queue, show, cancel, logs, nodes), admin commands
//! (token, user), shared argument parsing in `jobargs`, rendering in `output`.

pub mod admin;
pub mod client;
pub mod jobargs;
pub mod output;
pub mod submit;

use anyhow::Result;
use client::{check, exit, unexpected, usage, Client};
use launcher_proto::{CancelOutcome, JobId, JobState, Request, Response};
use std::path::PathBuf;

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Parse job ids, naming the bad one.
pub fn parse_job_ids(ids: &[String]) -> Result<Vec<JobId>> {
    ids.iter()
        .map(|s| {
            s.parse::<JobId>().map_err(|_| {
                usage(format!(
                    "{s:?} is not a job id (job ids are numbers as printed by submit; an array child is ID:INDEX)"
                ))
            })
        })
        .collect()
}

/// Which jobs `launcher queue` lists and `launcher cancel` cancels (squeue's
/// and scancel's `-u`, `-t`, `-p`, `-j`); all that are given must match.
#[derive(clap::Args, Debug, Default)]
pub struct QueueFilter {
    /// Only these users' jobs (comma-separated).
    #[arg(short = 'u', long, value_delimiter = ',', value_name = "USER")]
    pub user: Vec<String>,
    /// Only your own jobs (the user of your credential).
    #[arg(long, conflicts_with = "user")]
    pub me: bool,
    /// Only jobs in these states, comma-separated, any case: submitted, pending, runnable, starting,
    /// running, succeeded, failed, cancelled, or `waiting` (the first three); a finished state implies --all.
    #[arg(short = 't', long = "state", value_delimiter = ',', value_name = "STATE")]
    pub state: Vec<String>,
    /// Only jobs of these queues (comma-separated).
    #[arg(
        short = 'q',
        long = "queue",
        visible_alias = "partition",
        visible_short_alias = 'p',
        value_delimiter = ',',
        value_name = "QUEUE"
    )]
    pub queue: Vec<String>,
    /// Only these jobs (comma-separated; an array's id includes its children).
    #[arg(short = 'j', long = "jobs", value_delimiter = ',', value_name = "ID")]
    pub jobs: Vec<String>,
}

impl QueueFilter {
    /// The states asked for, or None for any.
    fn states(&self) -> Result<Option<Vec<JobState>>> {
        if self.state.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for s in &self.state {
            let one = |st| vec![st];
            out.extend(match s.trim().to_ascii_lowercase().as_str() {
                "submitted" => one(JobState::Submitted),
                "pending" | "pd" => one(JobState::Pending),
                "runnable" => one(JobState::Runnable),
                "starting" => one(JobState::Starting),
                "running" | "r" => one(JobState::Running),
                "succeeded" | "cd" | "completed" => one(JobState::Succeeded),
                "failed" | "f" => one(JobState::Failed),
                "cancelled" | "ca" => one(JobState::Cancelled),
                "waiting" => vec![JobState::Submitted, JobState::Pending, JobState::Runnable],
                _ => {
                    return Err(usage(format!(
                        "--state {s:?}: expected submitted, pending, runnable, starting, running, succeeded, failed, cancelled or waiting"
                    )))
                }
            });
        }
        Ok(Some(out))
    }

    /// Check the filters (before dialing: usage errors never wait on the network).
    fn parse(self) -> Result<JobFilter> {
        Ok(JobFilter {
            states: self.states()?,
            ids: parse_job_ids(&self.jobs)?,
            any: self.me
                || !(self.user.is_empty() && self.state.is_empty() && self.queue.is_empty() && self.jobs.is_empty()),
            users: self.user,
            me: self.me,
            queues: self.queue,
        })
    }
}

/// A checked [`QueueFilter`].
struct JobFilter {
    users: Vec<String>,
    me: bool,
    /// None: any state.
    states: Option<Vec<JobState>>,
    queues: Vec<String>,
    ids: Vec<JobId>,
    /// Whether any filter was given.
    any: bool,
}

impl JobFilter {
    /// The jobs that match (`all`: finished ones too; `mine_by_default`:
    /// without --user, only the caller's).
    async fn pick(&self, client: &Client, all: bool, mine_by_default: bool) -> Result<Vec<launcher_proto::JobInfo>> {
        let all = all || self.states.as_ref().is_some_and(|v| v.iter().any(|s| s.is_terminal()));
        let mine = [client.user().to_string()];
        let users = if self.me || (mine_by_default && self.users.is_empty()) { &mine[..] } else { &self.users[..] };
        match check(client.call(&Request::Queue { all }).await?)? {
            Response::Jobs(mut jobs) => {
                jobs.retain(|j| {
                    (users.is_empty() || users.contains(&j.spec.user))
                        && (self.queues.is_empty() || self.queues.contains(&j.spec.queue))
                        && self.states.as_ref().is_none_or(|s| s.contains(&j.state))
                        && (self.ids.is_empty() || self.ids.iter().any(|id| *id == j.id || *id == j.id.parent()))
                });
                Ok(jobs)
            }
            r => Err(unexpected(r)),
        }
    }
}

/// `launcher queue`.
pub async fn queue(cred: Option<PathBuf>, all: bool, filter: QueueFilter, json: bool) -> Result<i32> {
    let filter = filter.parse()?;
    let client = Client::connect(cred).await?;
    let jobs = filter.pick(&client, all, false).await?;
    if json {
        print_json(&jobs)?;
    } else {
        print!("{}", output::jobs_table(&jobs));
    }
    Ok(exit::OK)
}

/// `launcher show`.
pub async fn show(cred: Option<PathBuf>, job: String, json: bool, bindings: bool) -> Result<i32> {
    let job = parse_job_ids(&[job])?[0];
    let client = Client::connect(cred).await?;
    match check(client.call(&Request::Show { job }).await?)? {
        Response::Job(info) => {
            if bindings && json {
                print_json(&info.bindings)?;
            } else if bindings {
                if info.bindings.is_empty() {
                    eprintln!("job {job} has no bindings yet (it has not started, or it started before the controller last restarted)");
                }
                print!("{}", nodeagent::bind::table(&info.bindings));
            } else if json {
                print_json(&info)?;
            } else {
                print!("{}", output::job_details(&info));
            }
            Ok(exit::OK)
        }
        r => Err(unexpected(r)),
    }
}

/// `launcher cancel`.
pub async fn cancel(cred: Option<PathBuf>, jobs: Vec<String>, filter: QueueFilter, json: bool) -> Result<i32> {
    let mut ids = parse_job_ids(&jobs)?;
    let filter = filter.parse()?;
    if ids.is_empty() && !filter.any {
        return Err(usage(
            "nothing to cancel: give job ids, or filters (`launcher cancel --state waiting` cancels your waiting jobs)",
        ));
    }
    let client = Client::connect(cred).await?;
    if filter.any {
        let picked = filter.pick(&client, false, true).await?;
        // An array's children go with it: cancel the parent once.
        let parents: Vec<JobId> = picked.iter().filter(|j| j.array.is_some()).map(|j| j.id).collect();
        ids.extend(picked.iter().map(|j| j.id).filter(|id| id.index().is_none() || !parents.contains(&id.parent())));
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            if json {
                print_json(&Vec::<(JobId, CancelOutcome)>::new())?;
            } else {
                eprintln!("launcher: no waiting or running job matches");
            }
            return Ok(exit::OK);
        }
    }
    match check(client.call(&Request::Cancel { jobs: ids }).await?)? {
        Response::Cancelled(out) => {
            let mut code = exit::OK;
            if json {
                print_json(&out)?;
            }
            for (id, o) in &out {
                let text = match o {
                    CancelOutcome::Cancelled => "cancelled".to_string(),
                    CancelOutcome::Terminating => {
                        "terminating (SIGTERM, then SIGKILL after the grace period)".to_string()
                    }
                    CancelOutcome::AlreadyDone(s) => format!("already finished ({s})"),
                    CancelOutcome::NotFound => {
                        code = exit::USAGE;
                        "no such job".to_string()
                    }
                    CancelOutcome::NotYours => {
                        code = exit::USAGE;
                        "not your job (only its owner or an admin may cancel it)".to_string()
                    }
                };
                if !json {
                    if matches!(o, CancelOutcome::NotFound | CancelOutcome::NotYours) {
                        eprintln!("launcher: job {id}: {text}");
                    } else {
                        println!("job {id}: {text}");
                    }
                }
            }
            Ok(code)
        }
        r => Err(unexpected(r)),
    }
}

/// `launcher logs`.
pub async fn logs(cred: Option<PathBuf>, job: String, rank: Option<u32>, follow: bool, label: bool) -> Result<i32> {
    let job = parse_job_ids(&[job])?[0];
    let client = Client::connect(cred).await?;
    let info = submit::follow(&client, job, rank, label, follow).await?;
    if let Some(a) = info.array.as_ref().and_then(|a| a.spec.as_ref()) {
        // The parent runs nothing itself: say where the output is, on stderr so
        // scripts that wait with `logs --follow PARENT` see no change.
        eprintln!(
            "launcher: job {job} is an array job: it has no output of its own (each child has): `launcher logs {job}:{}`",
            a.start
        );
    }
    Ok(exit::OK)
}

/// `launcher nodes`.
pub async fn nodes(cred: Option<PathBuf>, json: bool) -> Result<i32> {
    let client = Client::connect(cred).await?;
    match check(client.call(&Request::Nodes).await?)? {
        Response::Nodes(nodes) => {
            if json {
                print_json(&nodes)?;
            } else {
                print!("{}", output::nodes_table(&nodes));
            }
            Ok(exit::OK)
        }
        r => Err(unexpected(r)),
    }
}

/// `launcher token create`.
pub async fn token_create(cred: Option<PathBuf>, ttl: String) -> Result<i32> {
    let ttl_s = jobargs::parse_time_s(&ttl).map_err(|e| usage(e.to_string().replace("--time", "--ttl")))?;
    let client = Client::connect(cred).await?;
    match check(client.call(&Request::CreateToken { ttl_s }).await?)? {
        Response::Token(t) => {
            println!("{t}");
            Ok(exit::OK)
        }
        r => Err(unexpected(r)),
    }
}

/// `launcher user add`.
pub async fn user_add(cred: Option<PathBuf>, name: String, role: String, out: Option<PathBuf>) -> Result<i32> {
    let client = Client::connect(cred).await?;
    match check(client.call(&Request::AddUser { name: name.clone(), role }).await?)? {
        Response::Credential(text) => {
            match out {
                Some(p) => {
                    let c: nodeagent::wire::Credential = serde_json::from_str(&text)?;
                    c.save(&p)?;
                    eprintln!(
                        "wrote credential for {name} to {} (give it to the user; it is their identity)",
                        p.display()
                    );
                }
                None => println!("{text}"),
            }
            Ok(exit::OK)
        }
        r => Err(unexpected(r)),
    }
}
