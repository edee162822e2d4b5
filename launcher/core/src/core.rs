//! The `Core` state machine: handlers, scheduling pass, queries, invariants.

use crate::job::{Alloc, FailReason, Job, NodeRecord};
use crate::validate::validate_spec;
use crate::Time;
use launcher_proto::{
    CancelOutcome, ExitStatus, FromAgent, Inventory, JobId, JobInfo, JobState, KillMsg, KillReason, LaunchMsg, NodeId,
    NodeInfo, NodeState, RegisterMsg, TaskInfo, TaskMsg, ToAgent,
};
use std::collections::{BTreeMap, BTreeSet};

/// PMI key-value puts, in put order.
type Puts = Vec<(String, String)>;

/// Tunables the driver passes in.
#[derive(Clone, Debug)]
pub struct Config {
    /// Milliseconds between SIGTERM and SIGKILL when terminating tasks.
    pub kill_grace_ms: u64,
    /// How long a node may stay unreachable before its jobs are failed.
    pub node_timeout_ms: u64,
    /// Heartbeat period agents are told to use.
    pub heartbeat_ms: u64,
    /// Queues that exist (the full queue model is the scheduler issue's).
    pub queues: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config { kill_grace_ms: 30_000, node_timeout_ms: 60_000, heartbeat_ms: 5_000, queues: vec!["default".into()] }
    }
}

/// What a handler persists. The driver commits these before sending messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Upsert a job's full record.
    Job(Box<Job>),
    /// Upsert a node's record.
    Node(NodeRecord),
    /// Append to a job's event history.
    Event {
        /// The job.
        job: JobId,
        /// When.
        time: Time,
        /// What happened.
        text: String,
    },
}

/// The only way out of the core.
pub trait Effects {
    /// Send a message to a node's agent (dropped by the driver if it is not connected:
    /// reconciliation on re-register repairs that).
    fn send(&mut self, node: NodeId, msg: ToAgent);
    /// Record state durably.
    fn persist(&mut self, record: Record);
    /// A job's state changed: wake whoever is watching it.
    fn job_changed(&mut self, job: JobId);
}

/// Result of a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// New job.
    Accepted(JobId),
    /// The idempotency key was seen before: the existing job.
    Duplicate(JobId),
    /// Refused; nothing changed.
    Rejected(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Conn {
    Connected { generation: u64 },
    Unreachable { since: Time },
    Down,
}

#[derive(Clone, Debug)]
struct Node {
    rec: NodeRecord,
    conn: Conn,
    alloc_cpus: u32,
    alloc_mem: u64,
    jobs: BTreeSet<JobId>,
}

impl Node {
    fn free_cpus(&self) -> u32 {
        self.rec.inventory.cpus.saturating_sub(self.alloc_cpus)
    }
    fn free_mem(&self) -> u64 {
        self.rec.inventory.mem_mib.saturating_sub(self.alloc_mem)
    }
    fn connected(&self) -> bool {
        matches!(self.conn, Conn::Connected { .. })
    }
}

/// The controller's whole state.
#[derive(Debug)]
pub struct Core {
    cfg: Config,
    jobs: BTreeMap<JobId, Job>,
    nodes: BTreeMap<NodeId, Node>,
    node_by_name: BTreeMap<String, NodeId>,
    keys: BTreeMap<u128, JobId>,
    /// RUNNABLE jobs that could run somewhere, FIFO by id.
    runnable: BTreeSet<JobId>,
    /// RUNNABLE jobs no current node could ever hold, with why.
    ineligible: BTreeMap<JobId, String>,
    /// (deadline µs, job) of running attempts with a time limit.
    deadlines: BTreeSet<(u64, JobId)>,
    /// (since, node) of unreachable nodes.
    unreachable: BTreeSet<(Time, NodeId)>,
    /// PMI fences in progress: (job, attempt, seq) → puts by node rank. Not
    /// persisted: agents resend an unanswered fence after reconnecting.
    fences: BTreeMap<(JobId, u32, u64), BTreeMap<u32, Puts>>,
    next_job: u64,
    next_node: u32,
    next_generation: u64,
}

/// Whether a node could ever hold the job's GPUs and has all its features.
fn gres_fit_ever(n: &Node, spec: &launcher_proto::JobSpec) -> bool {
    n.rec.inventory.gpus >= spec.gpus_per_node && spec.constraint.iter().all(|f| n.rec.inventory.features.contains(f))
}

/// Tasks per node for `tasks` spread block-wise over `nodes`.
fn tasks_per_node(tasks: u32, nodes: u32) -> Vec<u32> {
    let base = tasks / nodes;
    let extra = tasks % nodes;
    (0..nodes).map(|i| base + u32::from(i < extra)).collect()
}

impl Core {
    /// An empty cluster.
    pub fn new(cfg: Config) -> Self {
        Core {
            cfg,
            jobs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            node_by_name: BTreeMap::new(),
            keys: BTreeMap::new(),
            runnable: BTreeSet::new(),
            ineligible: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            unreachable: BTreeSet::new(),
            fences: BTreeMap::new(),
            next_job: 1,
            next_node: 1,
            next_generation: 1,
        }
    }

    /// Rebuild from persisted records after a restart. Every node starts
    /// unreachable at `now`: agents that come back within the node timeout
    /// re-report their tasks and keep them; the others' jobs fail.
    pub fn restore(cfg: Config, now: Time, nodes: Vec<NodeRecord>, jobs: Vec<Job>) -> Self {
        let mut core = Core::new(cfg);
        for rec in nodes {
            core.next_node = core.next_node.max(rec.id.0 + 1);
            core.node_by_name.insert(rec.name.clone(), rec.id);
            core.unreachable.insert((now, rec.id));
            core.nodes.insert(
                rec.id,
                Node {
                    rec,
                    conn: Conn::Unreachable { since: now },
                    alloc_cpus: 0,
                    alloc_mem: 0,
                    jobs: BTreeSet::new(),
                },
            );
        }
        for job in jobs {
            core.next_job = core.next_job.max(job.id.0 + 1);
            if let Some(k) = job.key {
                core.keys.insert(k, job.id);
            }
            match job.state {
                JobState::Submitted | JobState::Pending | JobState::Runnable => {
                    core.runnable.insert(job.id);
                }
                JobState::Starting | JobState::Running => {
                    for a in &job.alloc {
                        if let Some(n) = core.nodes.get_mut(&a.node) {
                            n.alloc_cpus += a.cpus;
                            n.alloc_mem += a.mem_mib;
                            n.jobs.insert(job.id);
                        }
                    }
                    if let Some(d) = job.deadline() {
                        core.deadlines.insert((d, job.id));
                    }
                }
                JobState::Succeeded | JobState::Failed | JobState::Cancelled => {}
            }
            core.jobs.insert(job.id, job);
        }
        core.refresh_eligibility();
        core
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    // ---------------------------------------------------------------- events

    /// A client submits a job.
    pub fn on_submit(
        &mut self,
        now: Time,
        fx: &mut impl Effects,
        spec: launcher_proto::JobSpec,
        key: Option<u128>,
    ) -> SubmitOutcome {
        if let Some(k) = key {
            if let Some(&id) = self.keys.get(&k) {
                return SubmitOutcome::Duplicate(id);
            }
        }
        if let Err(e) = validate_spec(&spec) {
            return SubmitOutcome::Rejected(e);
        }
        if !self.cfg.queues.contains(&spec.queue) {
            return SubmitOutcome::Rejected(format!(
                "unknown queue '{}'; queues: {}",
                spec.queue,
                self.cfg.queues.join(", ")
            ));
        }
        if let Some(why) = self.gres_refusal(&spec) {
            return SubmitOutcome::Rejected(why);
        }
        let id = JobId(self.next_job);
        self.next_job += 1;
        let job = Job {
            id,
            spec,
            key,
            state: JobState::Runnable,
            attempt: 0,
            alloc: Vec::new(),
            exits: BTreeMap::new(),
            fail: None,
            killing: None,
            submit_time: now.0,
            start_time: None,
            end_time: None,
            exit_code: None,
        };
        if let Some(k) = key {
            self.keys.insert(k, id);
        }
        match self.never_fits(&job) {
            Some(why) => {
                self.ineligible.insert(id, why);
            }
            None => {
                self.runnable.insert(id);
            }
        }
        fx.persist(Record::Job(Box::new(job.clone())));
        self.jobs.insert(id, job);
        fx.job_changed(id);
        SubmitOutcome::Accepted(id)
    }

    /// An agent (re)registered on a new connection. Returns its node id and
    /// the connection generation to pass to [`Core::on_disconnect`].
    pub fn on_register(&mut self, now: Time, fx: &mut impl Effects, reg: RegisterMsg) -> (NodeId, u64) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let id = match self.node_by_name.get(&reg.name) {
            Some(&id) => id,
            None => {
                let id = NodeId(self.next_node);
                self.next_node += 1;
                self.node_by_name.insert(reg.name.clone(), id);
                self.nodes.insert(
                    id,
                    Node {
                        rec: NodeRecord { id, name: reg.name.clone(), inventory: Inventory::default() },
                        conn: Conn::Down,
                        alloc_cpus: 0,
                        alloc_mem: 0,
                        jobs: BTreeSet::new(),
                    },
                );
                id
            }
        };
        let node = self.nodes.get_mut(&id).expect("node just ensured");
        if let Conn::Unreachable { since } = node.conn {
            self.unreachable.remove(&(since, id));
        }
        node.conn = Conn::Connected { generation };
        if node.rec.inventory != reg.inventory {
            node.rec.inventory = reg.inventory.clone();
            fx.persist(Record::Node(node.rec.clone()));
        }
        fx.send(id, ToAgent::Registered { node: id, heartbeat_ms: self.cfg.heartbeat_ms });

        // Reconcile what the agent holds with what we believe.
        let reported: BTreeMap<(JobId, u32), &launcher_proto::JobReport> =
            reg.jobs.iter().map(|r| ((r.job, r.attempt), r)).collect();
        let ours: Vec<JobId> = node.jobs.iter().copied().collect();
        for jid in ours {
            let Some(job) = self.jobs.get(&jid) else { continue };
            let attempt = job.attempt;
            match reported.get(&(jid, attempt)) {
                Some(r) => {
                    // Adopt: the tasks kept running while we were away.
                    self.mark_started(now, fx, jid, id);
                    for (rank, status) in &r.exits {
                        self.task_exited(now, fx, jid, attempt, *rank, status.clone());
                    }
                    // A kill requested before the disconnect may have been lost.
                    if let Some(job) = self.jobs.get(&jid) {
                        if let Some(reason) = &job.killing {
                            let kr = kill_reason(reason);
                            fx.send(
                                id,
                                ToAgent::Kill(KillMsg {
                                    job: jid,
                                    attempt,
                                    reason: kr,
                                    grace_ms: self.cfg.kill_grace_ms,
                                }),
                            );
                        }
                    }
                }
                None => {
                    let started = job.alloc.iter().any(|a| a.node == id && a.started);
                    if started {
                        // The agent confirmed these tasks once and no longer has them.
                        self.node_lost_tasks(now, fx, jid, id);
                    } else if job.killing.is_none() {
                        // Never delivered (or lost in our crash): send the launch again.
                        let msg = self.launch_msg(jid, id);
                        fx.send(id, ToAgent::Launch(Box::new(msg)));
                    } else {
                        self.node_lost_tasks(now, fx, jid, id);
                    }
                }
            }
        }
        // Attempts the agent holds that we do not (finished, superseded, unknown).
        for ((jid, attempt), r) in &reported {
            let ours = self.jobs.get(jid).is_some_and(|j| {
                j.attempt == *attempt && !j.state.is_terminal() && j.alloc.iter().any(|a| a.node == id)
            });
            if ours {
                continue;
            }
            if !r.running.is_empty() {
                fx.send(
                    id,
                    ToAgent::Kill(KillMsg {
                        job: *jid,
                        attempt: *attempt,
                        reason: KillReason::Orphaned,
                        grace_ms: self.cfg.kill_grace_ms,
                    }),
                );
            } else {
                fx.send(id, ToAgent::Forget { job: *jid, attempt: *attempt });
            }
        }
        self.refresh_eligibility();
        (id, generation)
    }

    /// The connection of `node` with `generation` ended.
    pub fn on_disconnect(&mut self, now: Time, node: NodeId, generation: u64) {
        let Some(n) = self.nodes.get_mut(&node) else { return };
        if n.conn == (Conn::Connected { generation }) {
            n.conn = Conn::Unreachable { since: now };
            self.unreachable.insert((now, node));
        }
    }

    /// A message from a registered agent.
    pub fn on_agent(&mut self, now: Time, fx: &mut impl Effects, node: NodeId, msg: FromAgent) {
        match msg {
            FromAgent::Register(_) => {}
            FromAgent::Started { job, attempt } => {
                if self.jobs.get(&job).is_some_and(|j| j.attempt == attempt) {
                    self.mark_started(now, fx, job, node);
                }
            }
            FromAgent::TaskExited { job, attempt, rank, status } => {
                self.task_exited(now, fx, job, attempt, rank, status);
            }
            FromAgent::Fence { job, attempt, seq, puts } => self.fence(fx, node, job, attempt, seq, puts),
            FromAgent::MpiAbort { job, attempt, rank, code, message } => {
                let Some(j) = self.jobs.get_mut(&job) else { return };
                if j.attempt != attempt || !matches!(j.state, JobState::Starting | JobState::Running) {
                    return;
                }
                if j.fail.is_none() {
                    j.fail = Some(FailReason::MpiAbort { rank, code, message });
                }
                let reason = j.fail.clone().expect("set above");
                self.terminate(now, fx, job, reason);
            }
            FromAgent::Output { .. } | FromAgent::Heartbeat { .. } | FromAgent::Bindings { .. } => {}
        }
    }

    /// One node reached PMI fence `seq`; when all have, answer every node with
    /// the merged puts (node-rank order, so every replica is identical).
    fn fence(
        &mut self,
        fx: &mut impl Effects,
        node: NodeId,
        job: JobId,
        attempt: u32,
        seq: u64,
        puts: Vec<(String, String)>,
    ) {
        let Some(j) = self.jobs.get(&job) else { return };
        if j.attempt != attempt || !matches!(j.state, JobState::Starting | JobState::Running) {
            return;
        }
        let Some(node_rank) = j.alloc.iter().position(|a| a.node == node) else { return };
        let entry = self.fences.entry((job, attempt, seq)).or_default();
        entry.entry(node_rank as u32).or_insert(puts);
        if entry.len() < j.alloc.len() {
            return;
        }
        let merged: Vec<(String, String)> =
            self.fences.remove(&(job, attempt, seq)).expect("present").into_values().flatten().collect();
        for a in &j.alloc {
            fx.send(a.node, ToAgent::FenceDone { job, attempt, seq, puts: merged.clone() });
        }
    }

    /// Cancel jobs.
    pub fn on_cancel(&mut self, now: Time, fx: &mut impl Effects, ids: &[JobId]) -> Vec<(JobId, CancelOutcome)> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let Some(job) = self.jobs.get_mut(&id) else {
                out.push((id, CancelOutcome::NotFound));
                continue;
            };
            let outcome = match job.state {
                JobState::Submitted | JobState::Pending | JobState::Runnable => {
                    job.state = JobState::Cancelled;
                    job.end_time = Some(now.0);
                    self.runnable.remove(&id);
                    self.ineligible.remove(&id);
                    fx.persist(Record::Job(Box::new(job.clone())));
                    fx.persist(Record::Event { job: id, time: now, text: "cancelled before it started".into() });
                    fx.job_changed(id);
                    CancelOutcome::Cancelled
                }
                JobState::Starting | JobState::Running => {
                    self.terminate(now, fx, id, FailReason::Cancelled);
                    CancelOutcome::Terminating
                }
                s => CancelOutcome::AlreadyDone(s),
            };
            out.push((id, outcome));
        }
        out
    }

    /// Time passed: enforce time limits and node timeouts.
    pub fn on_timeout(&mut self, now: Time, fx: &mut impl Effects) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now.0 {
                break;
            }
            self.deadlines.remove(&(deadline, id));
            self.terminate(now, fx, id, FailReason::Timeout);
        }
        let timeout_us = self.cfg.node_timeout_ms * 1000;
        while let Some(&(since, node)) = self.unreachable.first() {
            if since.0 + timeout_us > now.0 {
                break;
            }
            self.unreachable.remove(&(since, node));
            let n = self.nodes.get_mut(&node).expect("unreachable node exists");
            n.conn = Conn::Down;
            let jobs: Vec<JobId> = n.jobs.iter().copied().collect();
            for jid in jobs {
                self.node_lost_tasks(now, fx, jid, node);
            }
        }
    }

    /// When [`Core::on_timeout`] next has work.
    pub fn next_timeout(&self) -> Option<Time> {
        let d = self.deadlines.first().map(|&(d, _)| Time(d));
        let u = self.unreachable.first().map(|&(s, _)| s.plus_ms(self.cfg.node_timeout_ms));
        match (d, u) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One scheduling pass: start jobs in FIFO order while they fit. Returns
    /// how many started.
    pub fn schedule(&mut self, now: Time, fx: &mut impl Effects) -> usize {
        let mut started = 0;
        let mut set_aside = Vec::new();
        let order: Vec<JobId> = self.runnable.iter().copied().collect();
        for id in order {
            let job = &self.jobs[&id];
            match self.try_allocate(job) {
                Some(alloc) => {
                    self.runnable.remove(&id);
                    self.start(now, fx, id, alloc);
                    started += 1;
                }
                None => match self.never_fits(job) {
                    Some(why) => set_aside.push((id, why)),
                    None => break, // FIFO: the head waits, and so does everyone behind it.
                },
            }
        }
        for (id, why) in set_aside {
            self.runnable.remove(&id);
            self.ineligible.insert(id, why);
        }
        started
    }

    // ------------------------------------------------------------- internals

    fn start(&mut self, now: Time, fx: &mut impl Effects, id: JobId, alloc: Vec<Alloc>) {
        for a in &alloc {
            let n = self.nodes.get_mut(&a.node).expect("allocated node exists");
            n.alloc_cpus += a.cpus;
            n.alloc_mem += a.mem_mib;
            n.jobs.insert(id);
        }
        let job = self.jobs.get_mut(&id).expect("job exists");
        job.state = JobState::Starting;
        job.attempt += 1;
        job.alloc = alloc;
        job.exits.clear();
        job.fail = None;
        job.killing = None;
        job.start_time = Some(now.0);
        if let Some(d) = job.deadline() {
            self.deadlines.insert((d, id));
        }
        fx.persist(Record::Job(Box::new(job.clone())));
        fx.job_changed(id);
        let nodes: Vec<NodeId> = job.alloc.iter().map(|a| a.node).collect();
        for node in nodes {
            let msg = self.launch_msg(id, node);
            fx.send(node, ToAgent::Launch(Box::new(msg)));
        }
    }

    fn launch_msg(&self, id: JobId, node: NodeId) -> LaunchMsg {
        let job = &self.jobs[&id];
        let (node_rank, a) = job.alloc.iter().enumerate().find(|(_, a)| a.node == node).expect("node in allocation");
        LaunchMsg {
            job: id,
            attempt: job.attempt,
            spec: job.spec.clone(),
            node_rank: node_rank as u32,
            nodelist: job.alloc.iter().map(|a| a.name.clone()).collect(),
            node_addrs: job.alloc.iter().map(|a| a.addr.clone()).collect(),
            tasks_per_node: job.alloc.iter().map(|a| a.tasks).collect(),
            tasks: (0..a.tasks).map(|l| TaskMsg { rank: a.first_rank + l, local_rank: l }).collect(),
        }
    }

    fn mark_started(&mut self, now: Time, fx: &mut impl Effects, id: JobId, node: NodeId) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        if job.state != JobState::Starting && job.state != JobState::Running {
            return;
        }
        let Some(a) = job.alloc.iter_mut().find(|a| a.node == node) else { return };
        if a.started {
            return;
        }
        a.started = true;
        if job.state == JobState::Starting && job.alloc.iter().all(|a| a.started) {
            job.state = JobState::Running;
            fx.persist(Record::Event { job: id, time: now, text: "all tasks started".into() });
            fx.job_changed(id);
        }
        fx.persist(Record::Job(Box::new(job.clone())));
    }

    fn task_exited(
        &mut self,
        now: Time,
        fx: &mut impl Effects,
        id: JobId,
        attempt: u32,
        rank: u32,
        status: ExitStatus,
    ) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        if job.attempt != attempt || job.state.is_terminal() || rank >= job.spec.tasks {
            return;
        }
        if job.exits.contains_key(&rank) {
            return; // re-reported after a reconnect
        }
        let failed = !status.success();
        if failed && job.fail.is_none() {
            job.fail = Some(match &status {
                ExitStatus::LaunchFailed(e) => FailReason::LaunchFailed { rank, error: e.clone() },
                ExitStatus::NodeLost => {
                    FailReason::NodeFail { node: job.alloc_of_rank(rank).map(|a| a.name.clone()).unwrap_or_default() }
                }
                s => FailReason::NonZeroExit { rank, status: s.clone() },
            });
        }
        job.exits.insert(rank, status);
        if job.exits.len() as u32 == job.spec.tasks {
            self.finish(now, fx, id);
            return;
        }
        fx.persist(Record::Job(Box::new(job.clone())));
        if failed && job.killing.is_none() {
            // One bad rank ends the job: terminate the others on every node.
            let reason = job.fail.clone().expect("set above");
            self.terminate(now, fx, id, reason);
        }
    }

    /// Mark every unfinished rank on `node` as lost, and terminate the rest.
    fn node_lost_tasks(&mut self, now: Time, fx: &mut impl Effects, id: JobId, node: NodeId) {
        let Some(job) = self.jobs.get(&id) else { return };
        if job.state.is_terminal() {
            return;
        }
        let attempt = job.attempt;
        let Some(a) = job.alloc.iter().find(|a| a.node == node) else { return };
        let ranks: Vec<u32> = (a.first_rank..a.first_rank + a.tasks).filter(|r| !job.exits.contains_key(r)).collect();
        for rank in ranks {
            self.task_exited(now, fx, id, attempt, rank, ExitStatus::NodeLost);
        }
    }

    /// Ask every node of a running job to stop its tasks.
    fn terminate(&mut self, now: Time, fx: &mut impl Effects, id: JobId, reason: FailReason) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        if job.state.is_terminal() {
            return;
        }
        if job.killing.is_none() {
            job.killing = Some(reason.clone());
            if matches!(reason, FailReason::Timeout | FailReason::Cancelled) && job.fail.is_none() {
                job.fail = Some(reason.clone());
            }
            fx.persist(Record::Event { job: id, time: now, text: format!("terminating: {}", reason.text()) });
            fx.persist(Record::Job(Box::new(job.clone())));
        }
        let kr = kill_reason(&reason);
        let attempt = job.attempt;
        for a in &job.alloc {
            let done = (a.first_rank..a.first_rank + a.tasks).all(|r| job.exits.contains_key(&r));
            if !done {
                fx.send(
                    a.node,
                    ToAgent::Kill(KillMsg { job: id, attempt, reason: kr, grace_ms: self.cfg.kill_grace_ms }),
                );
            }
        }
    }

    fn finish(&mut self, now: Time, fx: &mut impl Effects, id: JobId) {
        let job = self.jobs.get_mut(&id).expect("job exists");
        let ok = job.fail.is_none() && job.exits.values().all(ExitStatus::success);
        job.state = if ok { JobState::Succeeded } else { JobState::Failed };
        if job.fail.is_none() && !ok {
            let (rank, status) = job.exits.iter().find(|(_, s)| !s.success()).expect("a failure exists");
            job.fail = Some(FailReason::NonZeroExit { rank: *rank, status: status.clone() });
        }
        // The job's code is its cause's: the first failing rank's code, not the
        // 143s of the ranks we terminated because of it.
        let highest = job.exits.values().map(ExitStatus::code).max().unwrap_or(0);
        job.exit_code = Some(match &job.fail {
            None => 0,
            Some(FailReason::NonZeroExit { status, .. }) => status.code(),
            Some(FailReason::LaunchFailed { .. }) | Some(FailReason::NodeFail { .. }) => 255,
            Some(FailReason::Timeout) | Some(FailReason::Cancelled) => highest.max(1),
            Some(FailReason::MpiAbort { code, .. }) => (*code).clamp(1, 255),
        });
        job.end_time = Some(now.0);
        if let Some(d) = job.deadline() {
            self.deadlines.remove(&(d, id));
        }
        let text = match &job.fail {
            None => "succeeded".to_string(),
            Some(f) => format!("failed: {}", f.text()),
        };
        let stale: Vec<_> = self.fences.range((id, 0, 0)..=(id, u32::MAX, u64::MAX)).map(|(k, _)| *k).collect();
        for k in stale {
            self.fences.remove(&k);
        }
        for a in &job.alloc {
            if let Some(n) = self.nodes.get_mut(&a.node) {
                n.alloc_cpus -= a.cpus;
                n.alloc_mem -= a.mem_mib;
                n.jobs.remove(&id);
            }
            fx.send(a.node, ToAgent::Forget { job: id, attempt: job.attempt });
        }
        fx.persist(Record::Event { job: id, time: now, text });
        fx.persist(Record::Job(Box::new(job.clone())));
        fx.job_changed(id);
    }

    /// Choose nodes for a job now, or None.
    fn try_allocate(&self, job: &Job) -> Option<Vec<Alloc>> {
        let spec = &job.spec;
        let per_node = tasks_per_node(spec.tasks, spec.nodes);
        let big = per_node[0];
        let extra = per_node.iter().filter(|&&t| t == big).count();
        let small = *per_node.last().expect("nodes >= 1");
        let need = |t: u32| t.saturating_mul(spec.cpus_per_task);
        // Best fit: the fullest nodes that still fit go first, ties by id.
        let mut cands: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| n.connected() && n.free_cpus() >= need(small) && n.free_mem() >= spec.mem_mib)
            .filter(|n| self.gres_fit_now(n, spec))
            .collect();
        if cands.len() < spec.nodes as usize {
            return None;
        }
        cands.sort_by_key(|n| (n.free_cpus(), n.rec.id));
        let mut tier_big: Vec<&Node> = Vec::with_capacity(extra);
        let mut rest: Vec<&Node> = Vec::with_capacity(cands.len());
        for n in cands {
            if tier_big.len() < extra && n.free_cpus() >= need(big) {
                tier_big.push(n);
            } else {
                rest.push(n);
            }
        }
        let n_small = spec.nodes as usize - extra;
        if tier_big.len() < extra || rest.len() < n_small {
            return None;
        }
        let mut tier_small: Vec<&Node> = rest.into_iter().take(n_small).collect();
        tier_big.sort_by(|a, b| natural_cmp(&a.rec.name, &b.rec.name));
        tier_small.sort_by(|a, b| natural_cmp(&a.rec.name, &b.rec.name));
        let mut out = Vec::with_capacity(spec.nodes as usize);
        let mut rank = 0;
        for (n, t) in tier_big.iter().map(|n| (n, big)).chain(tier_small.iter().map(|n| (n, small))) {
            out.push(Alloc {
                node: n.rec.id,
                name: n.rec.name.clone(),
                addr: n.rec.inventory.addr.clone(),
                first_rank: rank,
                tasks: t,
                cpus: need(t),
                mem_mib: spec.mem_mib,
                started: false,
            });
            rank += t;
        }
        Some(out)
    }

    /// Why no node that is not down could ever hold this job, or None if some could.
    fn never_fits(&self, job: &Job) -> Option<String> {
        let spec = &job.spec;
        let per_node = tasks_per_node(spec.tasks, spec.nodes);
        let small = *per_node.last().expect("nodes >= 1");
        let need_cpus = small.saturating_mul(spec.cpus_per_task);
        let live: Vec<&Node> = self.nodes.values().filter(|n| n.conn != Conn::Down).collect();
        let fitting = live
            .iter()
            .filter(|n| n.rec.inventory.cpus >= need_cpus && n.rec.inventory.mem_mib >= spec.mem_mib)
            .filter(|n| gres_fit_ever(n, spec))
            .count();
        if fitting >= spec.nodes as usize {
            return None;
        }
        let biggest = live.iter().map(|n| n.rec.inventory.cpus).max().unwrap_or(0);
        Some(format!(
            "needs {} node(s) with at least {} CPUs{}; the cluster has {} node(s) up, {} of them that large (largest: {} CPUs)",
            spec.nodes,
            need_cpus,
            if spec.mem_mib > 0 { format!(" and {} MiB", spec.mem_mib) } else { String::new() },
            live.len(),
            fitting,
            biggest
        ))
    }

    // ------------------------------------------- GPUs and node features
    // Kept apart from the CPU/memory fit above so a scheduler rewrite can take
    // it over unchanged: a node fits if it has the job's GPUs free and every
    // feature the job asks for (`--gpus-per-node`, `--constraint`).

    /// GPUs held on a node by the jobs allocated there.
    fn gpus_in_use(&self, n: &Node) -> u32 {
        n.jobs.iter().filter_map(|j| self.jobs.get(j)).map(|j| j.spec.gpus_per_node).sum()
    }

    /// Whether a node has the job's GPUs free now and all its features.
    fn gres_fit_now(&self, n: &Node, spec: &launcher_proto::JobSpec) -> bool {
        gres_fit_ever(n, spec) && n.rec.inventory.gpus.saturating_sub(self.gpus_in_use(n)) >= spec.gpus_per_node
    }

    /// At submit: why no node this cluster has ever registered could run the
    /// job for lack of GPUs or features (None if enough could, or if no node
    /// has registered yet).
    fn gres_refusal(&self, spec: &launcher_proto::JobSpec) -> Option<String> {
        if (spec.gpus_per_node == 0 && spec.constraint.is_empty()) || self.nodes.is_empty() {
            return None;
        }
        let fitting = self.nodes.values().filter(|n| gres_fit_ever(n, spec)).count();
        if fitting >= spec.nodes as usize {
            return None;
        }
        let most = self.nodes.values().map(|n| n.rec.inventory.gpus).max().unwrap_or(0);
        let features: BTreeSet<&str> =
            self.nodes.values().flat_map(|n| n.rec.inventory.features.iter().map(String::as_str)).collect();
        let mut want = Vec::new();
        if spec.gpus_per_node > 0 {
            want.push(format!("{} GPU(s)", spec.gpus_per_node));
        }
        if !spec.constraint.is_empty() {
            want.push(format!("feature(s) {}", spec.constraint.join(",")));
        }
        Some(format!(
            "no way to run: it needs {} node(s) with {}, but only {} of the cluster's {} node(s) have that (most GPUs on a node: {}; features: {})",
            spec.nodes,
            want.join(" and "),
            fitting,
            self.nodes.len(),
            most,
            if features.is_empty() { "none".to_string() } else { features.into_iter().collect::<Vec<_>>().join(",") }
        ))
    }

    /// Re-check set-aside jobs after the node set changed.
    fn refresh_eligibility(&mut self) {
        let ids: Vec<JobId> = self.ineligible.keys().copied().collect();
        for id in ids {
            if self.never_fits(&self.jobs[&id]).is_none() {
                self.ineligible.remove(&id);
                self.runnable.insert(id);
            }
        }
    }

    // ---------------------------------------------------------------- queries

    /// One job.
    pub fn job_info(&self, id: JobId) -> Option<JobInfo> {
        let job = self.jobs.get(&id)?;
        let (reason, reason_text) = self.reason(job);
        let mut tasks = Vec::new();
        for a in &job.alloc {
            for r in a.first_rank..a.first_rank + a.tasks {
                tasks.push(TaskInfo { rank: r, node: a.name.clone(), exit: job.exits.get(&r).cloned() });
            }
        }
        Some(JobInfo {
            id,
            spec: job.spec.clone(),
            state: job.state,
            reason,
            reason_text,
            attempt: job.attempt,
            nodes: job.alloc.iter().map(|a| a.name.clone()).collect(),
            tasks,
            exit_code: job.exit_code,
            submit_time: job.submit_time,
            start_time: job.start_time,
            end_time: job.end_time,
            bindings: Vec::new(),
        })
    }

    /// The raw record of a job.
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// Jobs, oldest first; terminal ones only with `all`.
    pub fn job_infos(&self, all: bool) -> Vec<JobInfo> {
        self.jobs.values().filter(|j| all || !j.state.is_terminal()).filter_map(|j| self.job_info(j.id)).collect()
    }

    fn reason(&self, job: &Job) -> (Option<String>, Option<String>) {
        match job.state {
            JobState::Submitted | JobState::Pending | JobState::Runnable => {
                if let Some(why) = self.ineligible.get(&job.id) {
                    return (Some("NoEligibleNodes".into()), Some(format!("no node can ever run it: {why}")));
                }
                let head = self.runnable.first().copied();
                if head == Some(job.id) {
                    let spec = &job.spec;
                    let per = tasks_per_node(spec.tasks, spec.nodes)[0] * spec.cpus_per_task;
                    let free_now = self
                        .nodes
                        .values()
                        .filter(|n| n.connected() && n.free_cpus() >= per && n.free_mem() >= spec.mem_mib)
                        .filter(|n| self.gres_fit_now(n, spec))
                        .count();
                    (
                        Some("Resources".into()),
                        Some(format!(
                            "first in line, waiting for {} node(s) with {} free CPUs{} at once; {} node(s) have that free now",
                            spec.nodes,
                            per,
                            if spec.mem_mib > 0 { format!(" and {} MiB", spec.mem_mib) } else { String::new() },
                            free_now
                        )),
                    )
                } else {
                    let h = head.map(|h| h.to_string()).unwrap_or_else(|| "?".into());
                    (Some("Priority".into()), Some(format!("waiting behind job {h}, which is first in line (FIFO)")))
                }
            }
            JobState::Starting | JobState::Running => match &job.killing {
                Some(k) => (Some(k.code().into()), Some(format!("terminating: {}", k.text()))),
                None => (None, None),
            },
            JobState::Failed => match &job.fail {
                Some(f) => (Some(f.code().into()), Some(f.text())),
                None => (None, None),
            },
            JobState::Cancelled => (Some("Cancelled".into()), Some("cancelled before it started".into())),
            JobState::Succeeded => (None, None),
        }
    }

    /// Nodes, by id.
    pub fn node_infos(&self) -> Vec<NodeInfo> {
        self.nodes
            .values()
            .map(|n| NodeInfo {
                id: n.rec.id,
                name: n.rec.name.clone(),
                state: match n.conn {
                    Conn::Down => NodeState::Down,
                    Conn::Unreachable { .. } => NodeState::Unreachable,
                    Conn::Connected { .. } if n.alloc_cpus == 0 && n.jobs.is_empty() => NodeState::Idle,
                    Conn::Connected { .. } if n.free_cpus() == 0 => NodeState::Allocated,
                    Conn::Connected { .. } => NodeState::Mixed,
                },
                inventory: n.rec.inventory.clone(),
                alloc_cpus: n.alloc_cpus,
                alloc_mem_mib: n.alloc_mem,
                jobs: n.jobs.iter().copied().collect(),
            })
            .collect()
    }

    /// Number of jobs known.
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Panic if any invariant is broken. Tests call it after every event.
    pub fn sanity_check(&self) {
        let mut cpus: BTreeMap<NodeId, u32> = BTreeMap::new();
        let mut mem: BTreeMap<NodeId, u64> = BTreeMap::new();
        for job in self.jobs.values() {
            let active = matches!(job.state, JobState::Starting | JobState::Running);
            let waiting = matches!(job.state, JobState::Submitted | JobState::Pending | JobState::Runnable);
            assert_eq!(
                waiting,
                self.runnable.contains(&job.id) || self.ineligible.contains_key(&job.id),
                "job {} in state {} must be queued exactly when waiting",
                job.id,
                job.state
            );
            assert!(!(self.runnable.contains(&job.id) && self.ineligible.contains_key(&job.id)));
            if active {
                let total: u32 = job.alloc.iter().map(|a| a.tasks).sum();
                assert_eq!(total, job.spec.tasks, "job {} allocation covers every task", job.id);
                assert_eq!(job.alloc.len() as u32, job.spec.nodes, "job {} is gang-allocated", job.id);
                let distinct: BTreeSet<NodeId> = job.alloc.iter().map(|a| a.node).collect();
                assert_eq!(distinct.len(), job.alloc.len(), "job {} uses distinct nodes", job.id);
                for a in &job.alloc {
                    *cpus.entry(a.node).or_default() += a.cpus;
                    *mem.entry(a.node).or_default() += a.mem_mib;
                    assert!(self.nodes[&a.node].jobs.contains(&job.id), "node knows job {}", job.id);
                }
                assert!((job.exits.len() as u32) < job.spec.tasks, "job {} with every exit must be terminal", job.id);
            }
            if job.state.is_terminal() {
                assert!(job.end_time.is_some(), "terminal job {} has an end time", job.id);
                for n in self.nodes.values() {
                    assert!(!n.jobs.contains(&job.id), "terminal job {} still on node {}", job.id, n.rec.name);
                }
            }
            if job.state == JobState::Succeeded {
                assert!(job.exits.values().all(ExitStatus::success));
            }
        }
        for (job, ..) in self.fences.keys() {
            let active = self.jobs.get(job).is_some_and(|j| matches!(j.state, JobState::Starting | JobState::Running));
            assert!(active, "fence state kept for job {job}, which is not running");
        }
        for n in self.nodes.values() {
            assert_eq!(n.alloc_cpus, cpus.get(&n.rec.id).copied().unwrap_or(0), "node {} cpu accounting", n.rec.name);
            assert_eq!(n.alloc_mem, mem.get(&n.rec.id).copied().unwrap_or(0), "node {} memory accounting", n.rec.name);
            if n.connected() {
                assert!(n.alloc_cpus <= n.rec.inventory.cpus, "node {} over-allocated", n.rec.name);
            }
        }
    }
}

/// `node2` before `node10`: digit runs compare as numbers.
pub(crate) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, xa), (db, xb)) in ca.iter().zip(cb.iter()) {
        let ord = if *da && *db {
            let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if ord != std::cmp::Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

fn kill_reason(r: &FailReason) -> KillReason {
    match r {
        FailReason::Cancelled => KillReason::Cancelled,
        FailReason::Timeout => KillReason::Timeout,
        _ => KillReason::PeerFailed,
    }
}

#[cfg(test)]
mod tests {
    use super::tasks_per_node;

    #[test]
    fn natural_order() {
        let mut v = vec!["node10", "node2", "node1", "gpu3", "node02x"];
        v.sort_by(|a, b| super::natural_cmp(a, b));
        assert_eq!(v, vec!["gpu3", "node1", "node2", "node02x", "node10"]);
    }

    #[test]
    fn block_distribution() {
        assert_eq!(tasks_per_node(6, 3), vec![2, 2, 2]);
        assert_eq!(tasks_per_node(7, 3), vec![3, 2, 2]);
        assert_eq!(tasks_per_node(3, 3), vec![1, 1, 1]);
        assert_eq!(tasks_per_node(8, 4).iter().sum::<u32>(), 8);
    }
}
