//! The driver: the only owner of [`Core`] and of the store.
//!
//! It runs on its own OS thread. Each turn it takes every input that is
//! waiting (up to a bound), feeds them to the core, runs timeouts and a
//! scheduling pass, commits everything the core asked to persist in **one**
//! SQLite transaction, and only then sends messages to agents, replies to
//! clients and wakes watchers. So an acknowledgement never leaves before the
//! state behind it is on disk, a launch never leaves before it is committed,
//! and concurrent submissions share an fsync (group commit). Batches of agent
//! news alone (task starts and ends) are committed without an fsync of their
//! own; the next durable commit, or a sync at most `SYNC_WITHIN` later, puts
//! them on disk (store.rs, Durability).
//!
//! Fair-share history changes with every finished attempt, which at array
//! speeds is thousands of times a second; it is saved as one snapshot
//! (`share_usage`) at most every [`USAGE_EVERY`] when it changed, and at a
//! clean shutdown, so a crash forgets at most that much of it.

use super::pki::{token_hash, Pki};
use super::store::{CertIdentity, Store, SYNC_WITHIN};
use launcher_core::{Core, Effects, Record, SubmitOutcome, Time};
use launcher_proto::{
    CancelOutcome, ErrorKind, ErrorMsg, ExecMsg, ExitStatus, FromAgent, JobId, JobInfo, JobSpec, JobState, NodeId,
    NodeInfo, RegisterMsg, Response, TaskBinding, ToAgent,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc::UnboundedSender, oneshot};

/// `show --bindings` answers for this many of the newest jobs (job ids grow).
const BINDINGS_KEPT: usize = 10_000;

/// The longest a change of fair-share history waits to be saved.
pub const USAGE_EVERY: Duration = Duration::from_secs(10);

/// Identities of issued certificates, shared with the network layer.
pub type Identities = Arc<RwLock<HashMap<[u8; 32], CertIdentity>>>;

/// A job changed (state or output): watchers re-check it.
#[derive(Clone, Copy, Debug)]
pub struct JobEvent {
    /// The job.
    pub job: JobId,
}

/// Work for the driver.
pub enum Input {
    /// Submit.
    Submit { spec: Box<JobSpec>, key: Option<u128>, reply: oneshot::Sender<Response> },
    /// List jobs.
    Queue { all: bool, reply: oneshot::Sender<Vec<JobInfo>> },
    /// One job.
    Show { job: JobId, reply: oneshot::Sender<Option<JobInfo>> },
    /// Cancel, on behalf of `user` (admins may cancel anyone's jobs).
    Cancel { jobs: Vec<JobId>, user: String, admin: bool, reply: oneshot::Sender<Vec<(JobId, CancelOutcome)>> },
    /// Nodes.
    Nodes { reply: oneshot::Sender<Vec<NodeInfo>> },
    /// An agent registered on a new connection.
    AgentUp { reg: RegisterMsg, tx: UnboundedSender<ToAgent>, reply: oneshot::Sender<(NodeId, u64)> },
    /// A message from a registered agent.
    Agent { node: NodeId, msg: FromAgent },
    /// An agent's connection ended.
    AgentDown { node: NodeId, generation: u64 },
    /// Create a join token.
    Token { ttl_s: u64, reply: oneshot::Sender<Result<String, String>> },
    /// Create a user credential.
    AddUser { name: String, role: String, reply: oneshot::Sender<Result<String, String>> },
    /// An agent joins with a token.
    /// Ok: (agent certificate, CA certificate), both PEM.
    Join { token: String, name: String, public_key: Vec<u8>, reply: oneshot::Sender<Result<(String, String), String>> },
    /// Anything else: run `f` on the core in this batch; its effects commit
    /// with the batch, and the reply leaves after the commit.
    Call { f: CoreCall, reply: oneshot::Sender<Response> },
    /// Stop the driver.
    Shutdown,
}

/// A closure run on the core by [`Input::Call`].
pub type CoreCall = Box<dyn FnOnce(&mut Core, Time, &mut Fx) -> Response + Send>;

/// Wall clock as core time.
pub fn now() -> Time {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Time(d.as_micros() as u64)
}

/// The effects of one batch.
#[derive(Default)]
pub struct Fx {
    records: Vec<Record>,
    sends: Vec<(NodeId, ToAgent)>,
    changed: Vec<JobId>,
}

impl Effects for Fx {
    fn send(&mut self, node: NodeId, msg: ToAgent) {
        self.sends.push((node, msg));
    }
    fn persist(&mut self, record: Record) {
        self.records.push(record);
    }
    fn job_changed(&mut self, job: JobId) {
        self.changed.push(job);
    }
}

/// Everything the driver owns.
pub struct Driver {
    /// The scheduler state.
    pub core: Core,
    /// The database.
    pub store: Store,
    /// The CA.
    pub pki: Pki,
    /// Shared identity table.
    pub ids: Identities,
    /// Job change notifications.
    pub events: broadcast::Sender<JobEvent>,
    /// Address users should put in credentials.
    pub public_addr: String,
    /// Task placements the agents reported, per job: (attempt, rank → binding).
    /// Kept in memory only, for the newest [`BINDINGS_KEPT`] jobs: after a
    /// controller restart `show --bindings` is empty for jobs started before it.
    pub bindings: BTreeMap<JobId, (u32, BTreeMap<u32, TaskBinding>)>,
}

type Reply = Box<dyn FnOnce() + Send>;

impl Driver {
    /// Run until `Shutdown` or every sender is gone.
    pub fn run(mut self, rx: Receiver<Input>) {
        let mut agents: HashMap<NodeId, (u64, UnboundedSender<ToAgent>)> = HashMap::new();
        let mut unsynced_since: Option<Instant> = None;
        // Fair-share history: the snapshot on disk, the core's version of it
        // then, and when one was last taken (the first change is saved at once).
        let mut usage_saved = self.core.share_history();
        let mut usage_version = self.core.share_history_version();
        let mut usage_checked: Option<Instant> = None;
        loop {
            let after = |since: Instant, within: Duration| {
                Time(now().0 + within.saturating_sub(since.elapsed()).as_micros() as u64)
            };
            // Relaxed commits reach the disk within SYNC_WITHIN, even when nothing else happens;
            // changed fair-share history within USAGE_EVERY.
            let sync_at = unsynced_since.map(|t| after(t, SYNC_WITHIN));
            let usage_changed = self.core.share_history_version() != usage_version;
            let usage_at = usage_checked.filter(|_| usage_changed).map(|t| after(t, USAGE_EVERY));
            let wake = [self.core.next_timeout(), sync_at, usage_at].into_iter().flatten().min();
            let first = match wake {
                Some(t) => {
                    let wait = Duration::from_micros(t.0.saturating_sub(now().0)).max(Duration::from_millis(1));
                    match rx.recv_timeout(wait) {
                        Ok(i) => Some(i),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                None => match rx.recv() {
                    Ok(i) => Some(i),
                    Err(_) => return,
                },
            };
            let mut batch: Vec<Input> = first.into_iter().collect();
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(i) => batch.push(i),
                    Err(_) => break,
                }
            }
            let t = now();
            let mut fx = Fx::default();
            let mut replies: Vec<Reply> = Vec::new();
            let mut stop = false;
            // Anything a client is told must be on disk first; agents' news
            // alone may wait for the next fsync (store.rs, Durability).
            let mut durable = false;
            for input in batch {
                if let Input::Shutdown = input {
                    stop = true;
                    durable = true;
                    continue;
                }
                durable |= !matches!(
                    input,
                    Input::Agent { .. }
                        | Input::AgentDown { .. }
                        | Input::Nodes { .. }
                        | Input::Queue { .. }
                        | Input::Show { .. }
                );
                self.handle(t, input, &mut fx, &mut replies, &mut agents);
            }
            self.core.on_timeout(t, &mut fx);
            self.core.schedule(t, &mut fx);
            durable |= unsynced_since.is_some_and(|s| s.elapsed() >= SYNC_WITHIN);
            let mut saved = Ok(());
            if self.core.share_history_version() != usage_version
                && (stop || usage_checked.is_none_or(|c| c.elapsed() >= USAGE_EVERY))
            {
                usage_checked = Some(Instant::now());
                usage_version = self.core.share_history_version();
                let usage = self.core.share_history();
                if usage != usage_saved {
                    saved = self.store.save_share_usage(&usage);
                    usage_saved = usage;
                }
            }
            let synced = saved.and_then(|()| self.store.commit(&fx.records, durable));
            if synced.is_ok() {
                if !self.store.unsynced() {
                    unsynced_since = None;
                } else if unsynced_since.is_none() {
                    unsynced_since = Some(Instant::now());
                }
            }
            if let Err(e) = synced {
                // Nothing from this batch may leave: the clients see an error
                // and retry; the agents get nothing. Exit so a supervisor restarts
                // us from the last consistent state.
                tracing::error!("cannot commit state, stopping the controller: {e}");
                std::process::exit(70);
            }
            for (node, msg) in fx.sends {
                if let Some((_, tx)) = agents.get(&node) {
                    let _ = tx.send(msg);
                }
            }
            for r in replies {
                r();
            }
            for job in fx.changed {
                let _ = self.events.send(JobEvent { job });
            }
            if stop {
                return;
            }
        }
    }

    fn handle(
        &mut self,
        t: Time,
        input: Input,
        fx: &mut Fx,
        replies: &mut Vec<Reply>,
        agents: &mut HashMap<NodeId, (u64, UnboundedSender<ToAgent>)>,
    ) {
        match input {
            Input::Submit { spec, key, reply } => {
                let resp = match self.core.on_submit(t, fx, *spec, key) {
                    SubmitOutcome::Accepted(job) | SubmitOutcome::Duplicate(job) => Response::Submitted { job },
                    SubmitOutcome::Rejected(message) => {
                        Response::Error(ErrorMsg { kind: ErrorKind::BadRequest, message })
                    }
                };
                replies.push(Box::new(move || {
                    let _ = reply.send(resp);
                }));
            }
            Input::Queue { all, reply } => {
                let infos = self.core.job_infos(all);
                replies.push(Box::new(move || {
                    let _ = reply.send(infos);
                }));
            }
            Input::Show { job, reply } => {
                // Answer after this batch commits, so a reader never sees a state
                // that a crash could take back.
                let mut info = self.core.job_info(job);
                if let (Some(i), Some((attempt, b))) = (info.as_mut(), self.bindings.get(&job)) {
                    if *attempt == i.attempt {
                        i.bindings = b.values().cloned().collect();
                    }
                }
                replies.push(Box::new(move || {
                    let _ = reply.send(info);
                }));
            }
            Input::Cancel { jobs, user, admin, reply } => {
                let mine = |id: &JobId| admin || self.core.job(*id).is_none_or(|j| j.spec.user == user);
                let allowed: Vec<JobId> = jobs.iter().copied().filter(mine).collect();
                let mut done: HashMap<JobId, CancelOutcome> =
                    self.core.on_cancel(t, fx, &allowed).into_iter().collect();
                let out: Vec<(JobId, CancelOutcome)> =
                    jobs.iter().map(|id| (*id, done.remove(id).unwrap_or(CancelOutcome::NotYours))).collect();
                replies.push(Box::new(move || {
                    let _ = reply.send(out);
                }));
            }
            Input::Nodes { reply } => {
                let _ = reply.send(self.core.node_infos());
            }
            Input::AgentUp { reg, tx, reply } => {
                let (node, generation) = self.core.on_register(t, fx, reg);
                agents.insert(node, (generation, tx));
                replies.push(Box::new(move || {
                    let _ = reply.send((node, generation));
                }));
            }
            Input::Agent { node: _, msg: FromAgent::Bindings { job, attempt, tasks } } => {
                if self.core.job(job).is_some_and(|j| j.attempt == attempt) {
                    let e = self.bindings.entry(job).or_insert_with(|| (attempt, BTreeMap::new()));
                    if e.0 != attempt {
                        *e = (attempt, BTreeMap::new());
                    }
                    e.1.extend(tasks.into_iter().map(|b| (b.rank, b)));
                    // The newest jobs' placements only: an array of 100,000 must not keep 100,000.
                    while self.bindings.len() > BINDINGS_KEPT {
                        self.bindings.pop_first();
                    }
                }
            }
            Input::Agent { node, msg } => match msg {
                FromAgent::ExecStart { .. }
                | FromAgent::ExecOutput { .. }
                | FromAgent::ExecExited { .. }
                | FromAgent::ExecKill { .. } => self.route_exec(node, msg, fx),
                msg => self.core.on_agent(t, fx, node, msg),
            },
            Input::AgentDown { node, generation } => {
                if agents.get(&node).is_some_and(|(g, _)| *g == generation) {
                    agents.remove(&node);
                }
                self.core.on_disconnect(t, node, generation);
            }
            Input::Token { ttl_s, reply } => {
                let r = self.pki.new_token().map_err(|e| e.to_string()).and_then(|(tok, hash)| {
                    self.store
                        .add_token(&hash, t.0 + ttl_s.saturating_mul(1_000_000))
                        .map(|_| tok)
                        .map_err(|e| e.to_string())
                });
                let _ = reply.send(r);
            }
            Input::AddUser { name, role, reply } => {
                let r = self.add_user(&name, &role);
                let _ = reply.send(r);
            }
            Input::Join { token, name, public_key, reply } => {
                let r = self.join(t, &token, &name, &public_key);
                let _ = reply.send(r);
            }
            Input::Call { f, reply } => {
                let resp = f(&mut self.core, t, fx);
                replies.push(Box::new(move || {
                    let _ = reply.send(resp);
                }));
            }
            Input::Shutdown => {}
        }
    }

    /// `launcher exec` relay: a start goes to the target node only if both the
    /// caller's node and the target belong to the caller's running job; output,
    /// exits and kills travel between the two agents. Nothing is persisted: a
    /// relay lost in a controller restart ends like a dropped ssh connection.
    fn route_exec(&self, from: NodeId, msg: FromAgent, fx: &mut Fx) {
        let running =
            |job: JobId| self.core.job(job).filter(|j| matches!(j.state, JobState::Starting | JobState::Running));
        match msg {
            FromAgent::ExecStart { id, job, attempt, node, argv, shell, cwd, env } => {
                let refuse = |why: String| (from, ToAgent::ExecExited { id, status: ExitStatus::LaunchFailed(why) });
                let (to, m) = match running(job).filter(|j| j.attempt == attempt) {
                    None => refuse(format!("job {job} is not running")),
                    Some(j) if !j.alloc.iter().any(|a| a.node == from) => {
                        refuse(format!("job {job} has no tasks on the calling node"))
                    }
                    Some(j) => match j.alloc.iter().find(|a| a.name == node) {
                        None => refuse(format!(
                            "node {node:?} is not part of job {job}'s allocation (its nodes: {})",
                            j.alloc.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
                        )),
                        Some(a) => (
                            a.node,
                            ToAgent::Exec(Box::new(ExecMsg { origin: from, id, job, attempt, argv, shell, cwd, env })),
                        ),
                    },
                };
                fx.sends.push((to, m));
            }
            FromAgent::ExecOutput { origin, id, stream, data } => {
                fx.sends.push((origin, ToAgent::ExecOutput { id, stream, data }));
            }
            FromAgent::ExecExited { origin, id, status } => {
                fx.sends.push((origin, ToAgent::ExecExited { id, status }));
            }
            FromAgent::ExecKill { id, job, node } => {
                if let Some(a) = running(job).and_then(|j| j.alloc.iter().find(|a| a.name == node)) {
                    fx.sends.push((a.node, ToAgent::ExecKill { origin: from, id }));
                }
            }
            _ => {}
        }
    }

    /// Issue a user credential (JSON text).
    pub fn add_user(&mut self, name: &str, role: &str) -> Result<String, String> {
        if !matches!(role, "admin" | "user") {
            return Err(format!("unknown role {role:?}: use admin or user"));
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(format!("user name {name:?} must be letters, digits, '-', '_' or '.'"));
        }
        let (cred, fp) = self.pki.issue_user(name, &self.public_addr).map_err(|e| e.to_string())?;
        let id = CertIdentity { kind: "user".into(), name: name.into(), role: role.into() };
        self.store.add_cert(&fp, &id).map_err(|e| e.to_string())?;
        self.ids.write().expect("ids lock").insert(fp, id);
        serde_json::to_string_pretty(&cred).map_err(|e| e.to_string())
    }

    fn join(&mut self, t: Time, token: &str, name: &str, public_key: &[u8]) -> Result<(String, String), String> {
        if name.is_empty() || name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(format!("node name {name:?} must be 1-63 letters, digits, '-', '_' or '.'"));
        }
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err("bad public key: expected an uncompressed P-256 point (65 bytes)".into());
        }
        let issued = self.pki.issue_agent(name, public_key).map_err(|e| format!("bad public key: {e}"))?;
        if let Some(why) = self.store.use_token(&token_hash(token), t.0).map_err(|e| e.to_string())? {
            return Err(why.to_string());
        }
        // A node that joins again (re-imaged, lost its state dir) replaces its
        // old identity: the previous certificates for that name stop working.
        for fp in self.store.revoke_agent(name).map_err(|e| e.to_string())? {
            self.ids.write().expect("ids lock").remove(&fp);
        }
        let id = CertIdentity { kind: "agent".into(), name: name.into(), role: "agent".into() };
        self.store.add_cert(&issued.fingerprint, &id).map_err(|e| e.to_string())?;
        self.ids.write().expect("ids lock").insert(issued.fingerprint, id);
        Ok((issued.cert_pem, self.pki.ca_pem().to_string()))
    }
}

/// Start the driver thread.
pub fn spawn(driver: Driver) -> (Sender<Input>, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h =
        std::thread::Builder::new().name("driver".into()).spawn(move || driver.run(rx)).expect("spawn driver thread");
    (tx, h)
}
