//! The `Core` state machine: state, event handlers, job lifecycle, queries,
//! invariants. The scheduling pass is in `sched.rs`, dependencies in
//! `deps.rs`, compute environments/queues/policies in `defs.rs`.

use crate::fence::FenceGather;
use crate::job::{Alloc, ArrayState, ChildState, FailReason, Job, NodeRecord};
use crate::retry::should_retry;
use crate::sched::{Reservation, ShareHistory, ShareUsage};
use crate::validate::validate_spec;
use crate::Time;
use launcher_proto::{
    ArrayInfo, CancelOutcome, CeDef, ExitStatus, FromAgent, Inventory, JobDef, JobId, JobInfo, JobSpec, JobState,
    KillMsg, KillReason, LaunchMsg, NodeId, NodeInfo, NodeState, PolicyDef, QueueDef, RegisterMsg, TaskInfo, TaskMsg,
    ToAgent,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// Tunables the driver passes in.
#[derive(Clone, Debug)]
pub struct Config {
    /// Milliseconds between SIGTERM and SIGKILL when terminating tasks.
    pub kill_grace_ms: u64,
    /// How long a node may stay unreachable before its jobs are failed.
    pub node_timeout_ms: u64,
    /// Heartbeat period agents are told to use.
    pub heartbeat_ms: u64,
    /// A scheduling pass looks at no more than this many waiting entries
    /// once one could not start (Slurm's `bf_max_job_test`, 500 by default;
    /// every entry is looked at again in later passes as the queue moves).
    pub max_backfill_scan: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { kill_grace_ms: 30_000, node_timeout_ms: 60_000, heartbeat_ms: 5_000, max_backfill_scan: 10_000 }
    }
}

/// What a handler persists. The driver commits these before sending messages.
#[derive(Clone, Debug, PartialEq)]
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
    /// Upsert a compute environment.
    Ce(CeDef),
    /// Upsert a job queue.
    Queue(QueueDef),
    /// Upsert a fair-share policy.
    Policy(PolicyDef),
    /// Upsert a job definition revision.
    Jobdef(Box<JobDef>),
    /// One array child's state changed (the parent's record is written only
    /// at submit and at its end, so a child costs O(1) to persist).
    Child {
        /// The array.
        parent: JobId,
        /// Position of the child.
        pos: u32,
        /// Its state.
        state: ChildState,
        /// Attempts made.
        attempts: u32,
        /// How it failed.
        end: Option<crate::job::ChildEnd>,
    },
    /// Delete a job's own record: an array child that ended or went back to
    /// waiting, whose parent's byte now says all there is.
    RemoveJob(JobId),
    /// Delete a compute environment, queue or policy (`kind` is `ce`, `queue` or `policy`).
    Deleted {
        /// What kind.
        kind: &'static str,
        /// Its name.
        name: String,
    },
}

impl Record {
    /// A job's full record, as it is now. An array child's carries no spec:
    /// it is its parent's ([`child_spec`]), filled back in on restore, so a
    /// child costs neither a copy of the script nor its bytes on disk.
    pub fn job(job: &Job) -> Record {
        if job.id.index().is_none() {
            return Record::Job(Box::new(job.clone()));
        }
        Record::Job(Box::new(Job {
            id: job.id,
            spec: JobSpec::default(),
            key: job.key,
            state: job.state,
            attempt: job.attempt,
            alloc: job.alloc.clone(),
            exits: job.exits.clone(),
            fail: job.fail.clone(),
            killing: job.killing.clone(),
            submit_time: job.submit_time,
            start_time: job.start_time,
            end_time: job.end_time,
            exit_code: job.exit_code,
            array: None,
        }))
    }
}

/// An array child's spec: its parent's, without the array and the dependencies.
pub(crate) fn child_spec(parent: &JobSpec) -> JobSpec {
    let mut spec = parent.clone();
    spec.array = None;
    spec.depends.clear();
    spec
}

/// Definitions loaded from the store at restart.
#[derive(Clone, Debug, Default)]
pub struct Defs {
    /// Compute environments.
    pub ces: Vec<CeDef>,
    /// Queues.
    pub queues: Vec<QueueDef>,
    /// Fair-share policies.
    pub policies: Vec<PolicyDef>,
    /// Job definitions.
    pub jobdefs: Vec<JobDef>,
    /// Fair-share history saved by [`Core::share_history`] (entries of queues
    /// that no longer exist are ignored).
    pub usage: Vec<ShareHistory>,
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
pub(crate) enum Conn {
    Connected { generation: u64 },
    Unreachable { since: Time },
    Down,
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) rec: NodeRecord,
    pub(crate) conn: Conn,
    pub(crate) alloc_cpus: u32,
    pub(crate) alloc_mem: u64,
    pub(crate) jobs: BTreeSet<JobId>,
    /// Compute environments holding this node.
    pub(crate) ces: Vec<String>,
}

impl Node {
    pub(crate) fn free_cpus(&self) -> u32 {
        self.rec.inventory.cpus.saturating_sub(self.alloc_cpus)
    }
    pub(crate) fn free_mem(&self) -> u64 {
        self.rec.inventory.mem_mib.saturating_sub(self.alloc_mem)
    }
    pub(crate) fn connected(&self) -> bool {
        matches!(self.conn, Conn::Connected { .. })
    }
}

/// A job queue's live state: waiting entries by share.
#[derive(Clone, Debug)]
pub(crate) struct QueueState {
    pub(crate) def: QueueDef,
    /// Waiting entries (plain jobs and array parents with runnable children)
    /// by share, then (higher scheduling priority first, submit order).
    /// FIFO queues keep everything under the share "".
    pub(crate) waiting: BTreeMap<String, BTreeSet<(Reverse<u32>, JobId)>>,
    /// Fair-share accounting by share.
    pub(crate) usage: BTreeMap<String, ShareUsage>,
    /// CPUs held by this queue's running jobs.
    pub(crate) running_cpus: u64,
}

/// Live (not persisted) bookkeeping of an array parent.
#[derive(Clone, Debug, Default)]
pub(crate) struct ArrLive {
    /// Runnable positions.
    pub(crate) runnable: BTreeSet<u32>,
    /// Active children.
    pub(crate) active: u32,
    /// Children per state (indexed by `ChildState as usize`).
    pub(crate) counts: [u32; 6],
}

/// The controller's whole state.
#[derive(Debug)]
pub struct Core {
    pub(crate) cfg: Config,
    pub(crate) jobs: BTreeMap<JobId, Box<Job>>,
    pub(crate) nodes: BTreeMap<NodeId, Node>,
    pub(crate) node_by_name: BTreeMap<String, NodeId>,
    pub(crate) keys: BTreeMap<u128, JobId>,
    pub(crate) ces: BTreeMap<String, CeDef>,
    /// Members of each compute environment (any connection state).
    pub(crate) ce_members: BTreeMap<String, BTreeSet<NodeId>>,
    /// Connected members of each compute environment by (free CPUs, id).
    pub(crate) ce_free: BTreeMap<String, BTreeSet<(u32, NodeId)>>,
    pub(crate) queues: BTreeMap<String, QueueState>,
    pub(crate) policies: BTreeMap<String, PolicyDef>,
    pub(crate) jobdefs: BTreeMap<(String, u32), JobDef>,
    pub(crate) arrays: BTreeMap<JobId, ArrLive>,
    /// Waiting entries no node of their queue could ever hold, with why.
    pub(crate) ineligible: BTreeMap<JobId, String>,
    /// Plain jobs and array parents waiting on job-level dependencies.
    pub(crate) dep_wait: BTreeSet<JobId>,
    /// Dependency target → dependents to re-evaluate when it ends.
    pub(crate) waiters: BTreeMap<JobId, BTreeSet<JobId>>,
    /// Array → arrays with `aftercorr` on it (re-evaluated child by child).
    pub(crate) corr_waiters: BTreeMap<JobId, BTreeSet<JobId>>,
    /// (deadline µs, job) of running attempts with a time limit.
    pub(crate) deadlines: BTreeSet<(u64, JobId)>,
    /// Every node allocation of a running attempt by (deadline µs or
    /// [`NEVER`](crate::NEVER), node, job) → (CPUs, MiB): the order in which
    /// nodes free up at the latest, which the backfill reservation walks.
    pub(crate) releases: BTreeMap<(u64, NodeId, JobId), (u32, u64)>,
    /// (since, node) of unreachable nodes.
    pub(crate) unreachable: BTreeSet<(Time, NodeId)>,
    /// PMI fences in progress, by (job, attempt, seq). Not persisted: agents
    /// resend an unanswered fence after reconnecting.
    pub(crate) fences: BTreeMap<(JobId, u32, u64), FenceGather>,
    /// PMI finalize progress of running attempts (see [`Core::pmi_finalized`]).
    /// Not persisted: after a controller restart the grace is simply not applied.
    finalize: BTreeMap<JobId, FinalizeState>,
    /// The backfill reservation from the last full pass.
    pub(crate) reservation: Option<Reservation>,
    /// Jobs that would fit now but would delay the reservation (last pass).
    /// Only asked "contains?" (for `launcher show`): a hash set, as a scan
    /// that holds a reservation may add thousands per pass.
    pub(crate) backfill_blocked: std::collections::HashSet<JobId>,
    /// Something changed that can let any waiting job start: the next pass
    /// looks at the whole queue. Otherwise it looks only at `fresh` entries.
    pub(crate) dirty: bool,
    /// Entries that became waiting since the last pass.
    pub(crate) fresh: BTreeSet<JobId>,
    /// Connected CPUs free, cluster-wide.
    pub(crate) free_cpus_total: u64,
    /// Jobs and children that ended, whose dependents are still to be told.
    pub(crate) ended: std::collections::VecDeque<JobId>,
    /// After a restore: re-decide every PENDING job at the next pass.
    pub(crate) settle: bool,
    /// `never_fits` verdicts by (queue, nodes, CPUs per node, memory, GPUs, features).
    pub(crate) fits_cache: std::cell::RefCell<std::collections::HashMap<FitKey, Option<String>>>,
    /// Bumped whenever fair-share history may have changed (see [`Core::share_history_version`]).
    pub(crate) usage_version: u64,
    pub(crate) next_job: u64,
    pub(crate) next_node: u32,
    pub(crate) next_generation: u64,
}

/// Which ranks of an attempt called `MPI_Finalize`, and whether the grace was sent.
#[derive(Clone, Debug, Default)]
struct FinalizeState {
    attempt: u32,
    ranks: BTreeSet<u32>,
    grace_sent: bool,
}

/// What decides whether a job could ever fit its queue's nodes.
pub(crate) type FitKey = (String, u32, u32, u64, u32, Vec<String>);

/// Tasks per node for `tasks` spread block-wise over `nodes`.
pub(crate) fn tasks_per_node(tasks: u32, nodes: u32) -> Vec<u32> {
    let base = tasks / nodes;
    let extra = tasks % nodes;
    (0..nodes).map(|i| base + u32::from(i < extra)).collect()
}

impl Core {
    /// An empty cluster with the `default` compute environment and queue.
    pub fn new(cfg: Config) -> Self {
        let mut core = Core {
            cfg,
            jobs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            node_by_name: BTreeMap::new(),
            keys: BTreeMap::new(),
            ces: BTreeMap::new(),
            ce_members: BTreeMap::new(),
            ce_free: BTreeMap::new(),
            queues: BTreeMap::new(),
            policies: BTreeMap::new(),
            jobdefs: BTreeMap::new(),
            arrays: BTreeMap::new(),
            ineligible: BTreeMap::new(),
            dep_wait: BTreeSet::new(),
            waiters: BTreeMap::new(),
            corr_waiters: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            releases: BTreeMap::new(),
            unreachable: BTreeSet::new(),
            fences: BTreeMap::new(),
            finalize: BTreeMap::new(),
            reservation: None,
            backfill_blocked: Default::default(),
            dirty: true,
            fresh: BTreeSet::new(),
            free_cpus_total: 0,
            ended: Default::default(),
            settle: false,
            fits_cache: Default::default(),
            usage_version: 0,
            next_job: 1,
            next_node: 1,
            next_generation: 1,
        };
        core.install_ce(crate::defs::default_ce());
        core.install_queue(crate::defs::default_queue());
        core
    }

    /// Rebuild from persisted records after a restart. Every node starts
    /// unreachable at `now`: agents that come back within the node timeout
    /// re-report their tasks and keep them; the others' jobs fail.
    /// With no compute environment and no queue on record, the defaults stay.
    /// Fair-share history comes back from `defs.usage`; the CPUs each share's
    /// running jobs hold are counted again from the jobs.
    pub fn restore(cfg: Config, now: Time, nodes: Vec<NodeRecord>, jobs: Vec<Job>, defs: Defs) -> Self {
        let mut core = Core::new(cfg);
        if !defs.ces.is_empty() || !defs.queues.is_empty() {
            core.ces.clear();
            core.ce_members.clear();
            core.ce_free.clear();
            core.queues.clear();
        }
        for p in defs.policies {
            core.policies.insert(p.name.clone(), p);
        }
        for c in defs.ces {
            core.install_ce(c);
        }
        for q in defs.queues {
            core.install_queue(q);
        }
        for d in defs.jobdefs {
            core.jobdefs.insert((d.name.clone(), d.revision), d);
        }
        // History as it was measured: it decays from `at` to now when read.
        for h in defs.usage {
            if !(h.hist.is_finite() && h.hist > 0.0) {
                continue;
            }
            if let Some(q) = core.queues.get_mut(&h.queue) {
                let u = q.usage.entry(h.share).or_default();
                u.hist = h.hist;
                u.at = h.at;
            }
        }
        for rec in nodes {
            core.next_node = core.next_node.max(rec.id.0 + 1);
            core.node_by_name.insert(rec.name.clone(), rec.id);
            core.unreachable.insert((now, rec.id));
            let id = rec.id;
            core.nodes.insert(
                id,
                Node {
                    rec,
                    conn: Conn::Unreachable { since: now },
                    alloc_cpus: 0,
                    alloc_mem: 0,
                    jobs: BTreeSet::new(),
                    ces: Vec::new(),
                },
            );
            core.refresh_membership(id);
        }
        // Parents and plain jobs first, then active children.
        let (parents, children): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.id.index().is_none());
        for job in parents {
            core.next_job = core.next_job.max(job.id.0 + 1);
            if let Some(k) = job.key {
                core.keys.insert(k, job.id);
            }
            core.jobs.insert(job.id, Box::new(job));
        }
        // A child's own record exists while it is active (its parent's byte
        // may still say runnable: that change is not written separately).
        for mut job in children {
            let active = matches!(job.state, JobState::Starting | JobState::Running);
            let Some(pos) = core.child_pos(job.id) else { continue };
            let parent = core.jobs.get_mut(&job.id.parent()).expect("child_pos found the parent");
            let Some(arr) = parent.array.as_mut() else { continue };
            if !active || arr.states[pos as usize].is_terminal() {
                continue;
            }
            arr.states[pos as usize] = ChildState::Active;
            job.spec = child_spec(&parent.spec);
            core.jobs.insert(job.id, Box::new(job));
        }
        let ids: Vec<JobId> = core.jobs.keys().copied().collect();
        for id in ids {
            core.restore_job(id);
        }
        core.refresh_eligibility();
        core.dirty = true;
        core.settle = true;
        core
    }

    fn restore_job(&mut self, id: JobId) {
        let state = self.jobs[&id].state;
        let deps = self.jobs[&id].spec.depends.clone();
        if id.index().is_none() {
            for d in &deps {
                self.add_waiter(id, d);
            }
        }
        let job = &self.jobs[&id];
        if let Some(arr) = &job.array {
            let mut live = ArrLive::default();
            for (pos, s) in arr.states.iter().enumerate() {
                match s {
                    ChildState::Runnable => {
                        live.runnable.insert(pos as u32);
                    }
                    ChildState::Active => live.active += 1,
                    _ => {}
                }
                live.counts[*s as usize] += 1;
            }
            let has_runnable = !live.runnable.is_empty();
            self.arrays.insert(id, live);
            if state == JobState::Pending && !self.deps_satisfied_now(id) {
                self.dep_wait.insert(id);
            } else if has_runnable {
                self.enqueue(id);
            }
            return;
        }
        match state {
            JobState::Submitted | JobState::Pending => {
                self.dep_wait.insert(id);
            }
            JobState::Runnable => self.enqueue(id),
            JobState::Starting | JobState::Running => {
                let job = &self.jobs[&id];
                let allocs: Vec<Alloc> = job.alloc.clone();
                let cpus: u64 = allocs.iter().map(|a| u64::from(a.cpus)).sum();
                let queue = job.spec.queue.clone();
                let share = self.share_of(id);
                let deadline = job.deadline();
                for a in &allocs {
                    self.node_alloc(a.node, a.cpus as i64, a.mem_mib as i64);
                    if let Some(n) = self.nodes.get_mut(&a.node) {
                        n.jobs.insert(id);
                    }
                }
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.running_cpus += cpus;
                    q.usage.entry(share).or_default().running_cpus += cpus;
                }
                if let Some(d) = deadline {
                    self.deadlines.insert((d, id));
                }
                self.index_releases(id);
            }
            JobState::Succeeded | JobState::Failed | JobState::Cancelled => {}
        }
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
        mut spec: launcher_proto::JobSpec,
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
        let Some(q) = self.queues.get(&spec.queue) else {
            return SubmitOutcome::Rejected(format!(
                "unknown queue '{}'; queues: {} (see `launcher queue-admin list`)",
                spec.queue,
                self.queues.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        };
        if q.def.policy.is_some() && spec.share.is_none() {
            // Fair-share queues need a share; the submitter's name is the natural one.
            spec.share = Some(spec.user.clone());
        }
        if let Err(e) = self.check_deps(&spec) {
            return SubmitOutcome::Rejected(e);
        }
        if let Some(why) = self.gres_refusal(&spec) {
            return SubmitOutcome::Rejected(why);
        }
        let id = JobId(self.next_job);
        if id.0 >= 1 << JobId::CHILD_SHIFT {
            return SubmitOutcome::Rejected("the controller ran out of job ids".into());
        }
        self.next_job += 1;
        let array = spec.array.as_ref().map(|a| {
            Box::new(ArrayState {
                states: vec![ChildState::Pending; a.len() as usize],
                attempts: BTreeMap::new(),
                ends: BTreeMap::new(),
            })
        });
        let job = Job {
            id,
            spec,
            key,
            state: JobState::Pending,
            attempt: 0,
            alloc: Vec::new(),
            exits: BTreeMap::new(),
            fail: None,
            killing: None,
            submit_time: now.0,
            start_time: None,
            end_time: None,
            exit_code: None,
            array,
        };
        if let Some(k) = key {
            self.keys.insert(k, id);
        }
        let deps = job.spec.depends.clone();
        let is_array = job.array.is_some();
        self.jobs.insert(id, Box::new(job));
        if is_array {
            let mut live = ArrLive::default();
            live.counts[ChildState::Pending as usize] =
                self.jobs[&id].array.as_ref().map_or(0, |a| a.states.len() as u32);
            self.arrays.insert(id, live);
        }
        for d in &deps {
            self.add_waiter(id, d);
        }
        self.dep_wait.insert(id);
        // Decides PENDING / RUNNABLE / FAILED and persists the record.
        self.reevaluate(now, fx, id);
        // The whole record once, after every decision above (an array's
        // children included), so a submit costs one row however large the array.
        fx.persist(Record::job(&self.jobs[&id]));
        fx.job_changed(id);
        self.drain(now, fx);
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
                        ces: Vec::new(),
                    },
                );
                id
            }
        };
        // Out of the free index while its inventory and connection change.
        self.unindex_node(id);
        let node = self.nodes.get_mut(&id).expect("node just ensured");
        if let Conn::Unreachable { since } = node.conn {
            self.unreachable.remove(&(since, id));
        }
        node.conn = Conn::Connected { generation };
        let changed = node.rec.inventory != reg.inventory;
        if changed {
            node.rec.inventory = reg.inventory.clone();
            fx.persist(Record::Node(node.rec.clone()));
        }
        self.refresh_membership(id);
        self.index_node(id);
        self.dirty = true;
        fx.send(id, ToAgent::Registered { node: id, heartbeat_ms: self.cfg.heartbeat_ms });

        // Reconcile what the agent holds with what we believe.
        let reported: BTreeMap<(JobId, u32), &launcher_proto::JobReport> =
            reg.jobs.iter().map(|r| ((r.job, r.attempt), r)).collect();
        let ours: Vec<JobId> = self.nodes[&id].jobs.iter().copied().collect();
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
        self.drain(now, fx);
        (id, generation)
    }

    /// The connection of `node` with `generation` ended.
    pub fn on_disconnect(&mut self, now: Time, node: NodeId, generation: u64) {
        let Some(n) = self.nodes.get(&node) else { return };
        if n.conn == (Conn::Connected { generation }) {
            self.unindex_node(node);
            let n = self.nodes.get_mut(&node).expect("checked");
            n.conn = Conn::Unreachable { since: now };
            self.unreachable.insert((now, node));
            self.dirty = true;
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
            FromAgent::Fence { job, attempt, seq, span, puts } => self.fence(fx, node, (job, attempt, seq), span, puts),
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
            FromAgent::PmiFinalized { job, attempt, ranks } => self.pmi_finalized(now, fx, job, attempt, &ranks),
            FromAgent::PmiExitBeforeFinalize { job, attempt, rank, status } => {
                self.pmi_exit_before_finalize(now, fx, job, attempt, rank, status)
            }
            FromAgent::Output { .. }
            | FromAgent::Heartbeat { .. }
            | FromAgent::ExecStart { .. }
            | FromAgent::ExecOutput { .. }
            | FromAgent::ExecExited { .. }
            | FromAgent::ExecKill { .. }
            | FromAgent::Bindings { .. } => {}
        }
        self.drain(now, fx);
    }

    /// Ranks of a job's PMI step called `MPI_Finalize`.
    fn pmi_finalized(&mut self, now: Time, fx: &mut impl Effects, job: JobId, attempt: u32, ranks: &[u32]) {
        let Some(j) = self.jobs.get(&job) else { return };
        if j.attempt != attempt || j.state.is_terminal() {
            return;
        }
        let st = self.finalize.entry(job).or_default();
        if st.attempt != attempt {
            *st = FinalizeState { attempt, ..Default::default() };
        }
        st.ranks.extend(ranks.iter().copied().filter(|&r| r < j.spec.tasks));
        self.check_finalize_grace(now, fx, job);
    }

    /// `--finalize-grace`: once every rank called `MPI_Finalize` and some rank
    /// exited 0, tell every node still running ranks to kill the finalized
    /// ones that linger past the grace (counted as exit 0). Debian MPICH over
    /// UCX can hang in its finalize teardown after the work is done.
    fn check_finalize_grace(&mut self, now: Time, fx: &mut impl Effects, id: JobId) {
        let Some(job) = self.jobs.get(&id) else { return };
        let Some(st) = self.finalize.get_mut(&id) else { return };
        if job.state.is_terminal() || job.killing.is_some() || st.attempt != job.attempt || st.grace_sent {
            return;
        }
        if (st.ranks.len() as u32) < job.spec.tasks || !job.exits.values().any(ExitStatus::success) {
            return;
        }
        st.grace_sent = true;
        let grace_s = job.spec.finalize_grace_s.unwrap_or(launcher_proto::DEFAULT_FINALIZE_GRACE_S);
        if grace_s == 0 {
            return;
        }
        let text = format!(
            "every rank called MPI_Finalize and some exited 0: ranks still running after --finalize-grace {grace_s}s will be killed and counted as exit 0"
        );
        fx.persist(Record::Event { job: id, time: now, text });
        for a in &job.alloc {
            let done = (a.first_rank..a.first_rank + a.tasks).all(|r| job.exits.contains_key(&r));
            if !done {
                fx.send(
                    a.node,
                    ToAgent::FinalizeGrace { job: id, attempt: job.attempt, grace_ms: u64::from(grace_s) * 1000 },
                );
            }
        }
    }

    /// A rank that started PMI exited before `MPI_Finalize`: the job fails and
    /// its other ranks (blocked in a PMI barrier, typically) are stopped.
    fn pmi_exit_before_finalize(
        &mut self,
        now: Time,
        fx: &mut impl Effects,
        job: JobId,
        attempt: u32,
        rank: u32,
        status: ExitStatus,
    ) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        if j.attempt != attempt || !matches!(j.state, JobState::Starting | JobState::Running) || j.killing.is_some() {
            return;
        }
        if j.fail.is_none() {
            j.fail = Some(FailReason::ExitBeforeFinalize { rank, status });
        }
        let reason = j.fail.clone().expect("set above");
        self.terminate(now, fx, job, reason);
    }

    /// Node ranks from `node`'s, `span` of them, reached PMI fence `seq`; when
    /// all have, answer every contributor with the merged puts (node-rank
    /// order, so every replica is identical; see [`crate::fence`]).
    fn fence(
        &mut self,
        fx: &mut impl Effects,
        node: NodeId,
        (job, attempt, seq): (JobId, u32, u64),
        span: u32,
        puts: Vec<(String, String)>,
    ) {
        let Some(j) = self.jobs.get(&job) else { return };
        if j.attempt != attempt || !matches!(j.state, JobState::Starting | JobState::Running) {
            return;
        }
        let Some(node_rank) = j.alloc.iter().position(|a| a.node == node) else { return };
        let gather = self.fences.entry((job, attempt, seq)).or_insert_with(|| FenceGather::new(j.alloc.len() as u32));
        gather.add(node_rank as u32, span.max(1), puts);
        if !gather.complete() {
            return;
        }
        let gather = self.fences.remove(&(job, attempt, seq)).expect("present");
        let to: Vec<NodeId> = gather.contributors().map(|r| j.alloc[r as usize].node).collect();
        let merged = gather.merged();
        for n in to {
            fx.send(n, ToAgent::FenceDone { job, attempt, seq, puts: merged.clone() });
        }
    }

    /// Cancel jobs: waiting ones become CANCELLED, running ones are
    /// terminated (FAILED/Cancelled, never retried). Cancelling an array
    /// cancels every child.
    pub fn on_cancel(&mut self, now: Time, fx: &mut impl Effects, ids: &[JobId]) -> Vec<(JobId, CancelOutcome)> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let outcome = if id.index().is_some() {
                self.cancel_child(now, fx, id)
            } else if self.jobs.get(&id).is_some_and(|j| j.array.is_some()) {
                self.cancel_array(now, fx, id)
            } else {
                self.cancel_plain(now, fx, id)
            };
            out.push((id, outcome));
        }
        self.drain(now, fx);
        out
    }

    fn cancel_plain(&mut self, now: Time, fx: &mut impl Effects, id: JobId) -> CancelOutcome {
        let Some(job) = self.jobs.get(&id) else { return CancelOutcome::NotFound };
        match job.state {
            JobState::Submitted | JobState::Pending | JobState::Runnable => {
                self.unqueue(id);
                self.dep_wait.remove(&id);
                let job = self.jobs.get_mut(&id).expect("exists");
                job.state = JobState::Cancelled;
                job.end_time = Some(now.0);
                fx.persist(Record::job(job));
                fx.persist(Record::Event { job: id, time: now, text: "cancelled before it started".into() });
                fx.job_changed(id);
                self.dirty = true;
                self.job_ended(now, fx, id);
                CancelOutcome::Cancelled
            }
            JobState::Starting | JobState::Running => {
                self.terminate(now, fx, id, FailReason::Cancelled);
                CancelOutcome::Terminating
            }
            s => CancelOutcome::AlreadyDone(s),
        }
    }

    fn cancel_array(&mut self, now: Time, fx: &mut impl Effects, id: JobId) -> CancelOutcome {
        let job = &self.jobs[&id];
        if job.state.is_terminal() {
            return CancelOutcome::AlreadyDone(job.state);
        }
        let arr = job.array.as_ref().expect("array");
        let spec = job.spec.array.clone().expect("array spec");
        let waiting: Vec<u32> = (0..arr.states.len() as u32)
            .filter(|&p| matches!(arr.states[p as usize], ChildState::Pending | ChildState::Runnable))
            .collect();
        let active: Vec<JobId> = (0..arr.states.len() as u32)
            .filter(|&p| arr.states[p as usize] == ChildState::Active)
            .map(|p| id.child(spec.index_at(p)))
            .collect();
        for p in waiting {
            self.set_child_state(fx, id, p, ChildState::Cancelled);
        }
        self.dep_wait.remove(&id);
        self.unqueue(id);
        if let Some(l) = self.arrays.get_mut(&id) {
            l.runnable.clear();
        }
        fx.persist(Record::Event { job: id, time: now, text: "array cancelled".into() });
        let outcome = if active.is_empty() { CancelOutcome::Cancelled } else { CancelOutcome::Terminating };
        for c in active {
            self.terminate(now, fx, c, FailReason::Cancelled);
        }
        self.array_progress(now, fx, id);
        self.dirty = true;
        outcome
    }

    fn cancel_child(&mut self, now: Time, fx: &mut impl Effects, id: JobId) -> CancelOutcome {
        let parent = id.parent();
        let Some(state) = self.child_state(id) else { return CancelOutcome::NotFound };
        match state {
            ChildState::Pending | ChildState::Runnable => {
                let pos = self.child_pos(id).expect("known child");
                self.set_child_state(fx, parent, pos, ChildState::Cancelled);
                if let Some(l) = self.arrays.get_mut(&parent) {
                    l.runnable.remove(&pos);
                    if l.runnable.is_empty() {
                        self.unqueue(parent);
                    }
                }
                fx.persist(Record::Event { job: id, time: now, text: "cancelled before it started".into() });
                self.child_ended(now, fx, id);
                self.array_progress(now, fx, parent);
                CancelOutcome::Cancelled
            }
            ChildState::Active => {
                self.terminate(now, fx, id, FailReason::Cancelled);
                CancelOutcome::Terminating
            }
            s => CancelOutcome::AlreadyDone(s.job_state()),
        }
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
            self.fits_cache.borrow_mut().clear();
            let jobs: Vec<JobId> = n.jobs.iter().copied().collect();
            for jid in jobs {
                self.node_lost_tasks(now, fx, jid, node);
            }
            self.dirty = true;
        }
        self.drain(now, fx);
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

    // ------------------------------------------------------------- lifecycle

    /// Start `id` (a plain job or a child to materialize) on `alloc`.
    pub(crate) fn start(&mut self, now: Time, fx: &mut impl Effects, id: JobId, alloc: Vec<Alloc>) {
        if let Some(index) = id.index() {
            self.materialize_child(now, fx, id.parent(), index);
        } else {
            self.unqueue(id);
        }
        let cpus: u64 = alloc.iter().map(|a| u64::from(a.cpus)).sum();
        for a in &alloc {
            self.node_alloc(a.node, a.cpus as i64, a.mem_mib as i64);
            self.nodes.get_mut(&a.node).expect("allocated node exists").jobs.insert(id);
        }
        let share = self.share_of(id);
        let job = self.jobs.get_mut(&id).expect("job exists");
        if let Some(q) = self.queues.get_mut(&job.spec.queue) {
            q.running_cpus += cpus;
            q.usage.entry(share).or_default().running_cpus += cpus;
        }
        job.state = JobState::Starting;
        job.attempt += 1;
        job.alloc = alloc;
        job.exits.clear();
        job.fail = None;
        job.killing = None;
        job.start_time = Some(now.0);
        job.end_time = None;
        job.exit_code = None;
        if let Some(d) = job.deadline() {
            self.deadlines.insert((d, id));
        }
        fx.persist(Record::job(job));
        fx.job_changed(id);
        let nodes: Vec<NodeId> = job.alloc.iter().map(|a| a.node).collect();
        self.index_releases(id);
        for node in nodes {
            let msg = self.launch_msg(id, node);
            fx.send(node, ToAgent::Launch(Box::new(msg)));
        }
    }

    /// Turn runnable child `index` of `parent` into a full job record.
    fn materialize_child(&mut self, _now: Time, fx: &mut impl Effects, parent: JobId, index: u32) {
        let p = &self.jobs[&parent];
        let aspec = p.spec.array.as_ref().expect("array");
        let pos = aspec.pos_of(index).expect("valid index");
        let attempts = p.array.as_ref().and_then(|a| a.attempts.get(&pos).copied()).unwrap_or(0);
        let spec = child_spec(&p.spec);
        let child = Job {
            id: parent.child(index),
            spec,
            key: None,
            state: JobState::Runnable,
            attempt: attempts,
            alloc: Vec::new(),
            exits: BTreeMap::new(),
            fail: None,
            killing: None,
            submit_time: p.submit_time,
            start_time: None,
            end_time: None,
            exit_code: None,
            array: None,
        };
        self.jobs.insert(child.id, Box::new(child));
        self.set_child_state(fx, parent, pos, ChildState::Active);
        let live = self.arrays.get_mut(&parent).expect("array live state");
        live.runnable.remove(&pos);
        live.active += 1;
        if live.runnable.is_empty() {
            self.unqueue(parent);
        }
    }

    pub(crate) fn launch_msg(&self, id: JobId, node: NodeId) -> LaunchMsg {
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
            array: id.index().and_then(|_| self.jobs.get(&id.parent())).and_then(|p| p.spec.array.clone()),
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
        // An array child's start is not written: restored as starting, its
        // agent's report makes it running again. Thousands a second otherwise.
        let child = id.index().is_some();
        if job.state == JobState::Starting && job.alloc.iter().all(|a| a.started) {
            job.state = JobState::Running;
            if !child {
                fx.persist(Record::Event { job: id, time: now, text: "all tasks started".into() });
            }
            fx.job_changed(id);
        }
        if !child {
            fx.persist(Record::job(job));
        }
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
        if job.attempt != attempt
            || !matches!(job.state, JobState::Starting | JobState::Running)
            || rank >= job.spec.tasks
        {
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
        // Rank exits in between are not written one by one (that made a wide
        // job's end quadratic): agents keep and re-report them after a
        // controller restart. The first failure is, with the kill it causes.
        if failed && job.killing.is_none() {
            // One bad rank ends the job: terminate the others on every node.
            let reason = job.fail.clone().expect("set above");
            self.terminate(now, fx, id, reason);
        }
        self.check_finalize_grace(now, fx, id);
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
    pub(crate) fn terminate(&mut self, now: Time, fx: &mut impl Effects, id: JobId, reason: FailReason) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        if !matches!(job.state, JobState::Starting | JobState::Running) {
            return;
        }
        if job.killing.is_none() {
            job.killing = Some(reason.clone());
            if matches!(reason, FailReason::Timeout | FailReason::Cancelled) && job.fail.is_none() {
                job.fail = Some(reason.clone());
            }
            fx.persist(Record::Event { job: id, time: now, text: format!("terminating: {}", reason.text()) });
            fx.persist(Record::job(job));
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

    /// Every task of the attempt has exited: release the nodes, then retry,
    /// or end the job.
    fn finish(&mut self, now: Time, fx: &mut impl Effects, id: JobId) {
        let job = self.jobs.get_mut(&id).expect("job exists");
        let ok = job.fail.is_none() && job.exits.values().all(ExitStatus::success);
        if job.fail.is_none() && !ok {
            let (rank, status) = job.exits.iter().find(|(_, s)| !s.success()).expect("a failure exists");
            job.fail = Some(FailReason::NonZeroExit { rank: *rank, status: status.clone() });
        }
        // The job's code is its cause's: the first failing rank's code, not the
        // 143s of the ranks we terminated because of it.
        let highest = job.exits.values().map(ExitStatus::code).max().unwrap_or(0);
        let code = match &job.fail {
            None => 0,
            Some(FailReason::NonZeroExit { status, .. }) => status.code(),
            Some(FailReason::LaunchFailed { .. }) | Some(FailReason::NodeFail { .. }) => 255,
            Some(FailReason::Timeout) | Some(FailReason::Cancelled) => highest.max(1),
            Some(FailReason::MpiAbort { code, .. }) => (*code).clamp(1, 255),
            Some(FailReason::DependencyNeverSatisfied { .. }) | Some(FailReason::ChildrenFailed { .. }) => 1,
            Some(FailReason::ExitBeforeFinalize { status, .. }) => status.code().clamp(1, 255),
        };
        job.exit_code = Some(code);
        job.end_time = Some(now.0);
        if let Some(d) = job.deadline() {
            self.deadlines.remove(&(d, id));
        }
        let stale: Vec<_> = self.fences.range((id, 0, 0)..=(id, u32::MAX, u64::MAX)).map(|(k, _)| *k).collect();
        for k in stale {
            self.fences.remove(&k);
        }
        self.finalize.remove(&id);
        // Release the nodes.
        self.unindex_releases(id);
        let job = &self.jobs[&id];
        let allocs = job.alloc.clone();
        let attempt = job.attempt;
        let queue = job.spec.queue.clone();
        let started = job.start_time.unwrap_or(now.0);
        let cpus: u64 = allocs.iter().map(|a| u64::from(a.cpus)).sum();
        for a in &allocs {
            self.node_alloc(a.node, -(a.cpus as i64), -(a.mem_mib as i64));
            if let Some(n) = self.nodes.get_mut(&a.node) {
                n.jobs.remove(&id);
            }
            fx.send(a.node, ToAgent::Forget { job: id, attempt });
        }
        let share = self.share_of(id);
        let decay = self.queue_decay_s(&queue);
        if let Some(q) = self.queues.get_mut(&queue) {
            q.running_cpus = q.running_cpus.saturating_sub(cpus);
            let u = q.usage.entry(share).or_default();
            u.running_cpus = u.running_cpus.saturating_sub(cpus);
            u.add_history(now, decay, cpus as f64 * (now.0.saturating_sub(started)) as f64 / 1e6);
            self.usage_version += 1;
        }
        self.dirty = true;

        let job = self.jobs.get_mut(&id).expect("job exists");
        let retry = match &job.fail {
            None => false,
            Some(f) => job.attempt < job.spec.retry.attempts && should_retry(&job.spec.retry, code, f),
        };
        if retry {
            let f = job.fail.clone().expect("failed");
            let text = format!(
                "attempt {} failed: {}; retrying (attempt {} of {})",
                job.attempt,
                f.text(),
                job.attempt + 1,
                job.spec.retry.attempts
            );
            fx.persist(Record::Event { job: id, time: now, text });
            job.state = JobState::Runnable;
            job.alloc.clear();
            job.killing = None;
            job.end_time = None;
            job.exit_code = None;
            if let Some(index) = id.index() {
                // Back into the parent's compact state; the record goes.
                let parent = id.parent();
                let attempts = job.attempt;
                fx.persist(Record::RemoveJob(id));
                self.jobs.remove(&id);
                let pos = self.child_pos_of(parent, index);
                let arr = self.jobs.get_mut(&parent).and_then(|p| p.array.as_mut()).expect("array");
                arr.attempts.insert(pos, attempts);
                self.set_child_state(fx, parent, pos, ChildState::Runnable);
                let live = self.arrays.get_mut(&parent).expect("array live");
                live.active -= 1;
                live.runnable.insert(pos);
                self.enqueue(parent);
                fx.job_changed(id);
            } else {
                fx.persist(Record::job(job));
                fx.job_changed(id);
                self.enqueue(id);
            }
            return;
        }
        job.state = if ok { JobState::Succeeded } else { JobState::Failed };
        let text = match &job.fail {
            None => "succeeded".to_string(),
            Some(f) => format!("failed: {}", f.text()),
        };
        if id.index().is_none() {
            fx.persist(Record::Event { job: id, time: now, text });
            fx.persist(Record::job(job));
        } else {
            // A child's end lives in its parent's byte (and `ends`): its own
            // record goes, and only a failure is worth an event row.
            if job.fail.is_some() {
                fx.persist(Record::Event { job: id, time: now, text });
            }
            fx.persist(Record::RemoveJob(id));
        }
        fx.job_changed(id);
        if let Some(index) = id.index() {
            let parent = id.parent();
            let fail = job.fail.clone();
            let attempts_made = job.attempt;
            self.jobs.remove(&id);
            let pos = self.child_pos_of(parent, index);
            let state = if ok { ChildState::Succeeded } else { ChildState::Failed };
            let arr = self.jobs.get_mut(&parent).and_then(|p| p.array.as_mut()).expect("array");
            arr.attempts.insert(pos, attempts_made);
            if let Some(f) = fail {
                arr.ends.insert(pos, crate::job::ChildEnd { exit_code: code, fail: f });
            }
            self.set_child_state(fx, parent, pos, state);
            self.arrays.get_mut(&parent).expect("array live").active -= 1;
            self.child_ended(now, fx, id);
            self.array_progress(now, fx, parent);
        } else {
            self.job_ended(now, fx, id);
        }
    }

    /// A plain job or an array parent reached a terminal state.
    pub(crate) fn job_ended(&mut self, now: Time, fx: &mut impl Effects, id: JobId) {
        self.wake_dependents(now, fx, id);
    }

    /// Recount an array after a child changed; end the parent when every child has.
    pub(crate) fn array_progress(&mut self, now: Time, fx: &mut impl Effects, parent: JobId) {
        let counts = self.arrays[&parent].counts;
        let p = self.jobs.get_mut(&parent).expect("array parent");
        let arr = p.array.as_ref().expect("array");
        if p.state.is_terminal() {
            return;
        }
        let total = arr.states.len() as u32;
        let failed = counts[ChildState::Failed as usize];
        let cancelled = counts[ChildState::Cancelled as usize];
        if failed + cancelled + counts[ChildState::Succeeded as usize] < total {
            fx.job_changed(parent);
            return;
        }
        if failed == 0 && cancelled == 0 {
            p.state = JobState::Succeeded;
            p.exit_code = Some(0);
        } else if cancelled == total {
            p.state = JobState::Cancelled;
        } else {
            let first_pos = arr
                .states
                .iter()
                .position(|s| matches!(s, ChildState::Failed | ChildState::Cancelled))
                .expect("some failed") as u32;
            let aspec = p.spec.array.as_ref().expect("array spec");
            let first = parent.child(aspec.index_at(first_pos));
            p.state = JobState::Failed;
            p.exit_code = Some(arr.ends.get(&first_pos).map(|e| e.exit_code).unwrap_or(1));
            if p.fail.is_none() {
                p.fail = Some(FailReason::ChildrenFailed { failed: failed + cancelled, first });
            }
        }
        p.end_time = Some(now.0);
        let text = match &p.fail {
            None if p.state == JobState::Cancelled => "array cancelled".to_string(),
            None => format!("all {total} children succeeded"),
            Some(f) => format!("failed: {}", f.text()),
        };
        fx.persist(Record::Event { job: parent, time: now, text });
        fx.persist(Record::job(p));
        fx.job_changed(parent);
        self.unqueue(parent);
        self.dep_wait.remove(&parent);
        self.job_ended(now, fx, parent);
    }

    // ------------------------------------------------------------ bookkeeping

    pub(crate) fn child_pos_of(&self, parent: JobId, index: u32) -> u32 {
        self.jobs[&parent].spec.array.as_ref().and_then(|a| a.pos_of(index)).expect("valid child index")
    }

    /// Position of child `id` in its parent, if both exist.
    pub(crate) fn child_pos(&self, id: JobId) -> Option<u32> {
        let index = id.index()?;
        let p = self.jobs.get(&id.parent())?;
        let pos = p.spec.array.as_ref()?.pos_of(index)?;
        Some(pos)
    }

    /// State of array child `id`, if it exists.
    pub(crate) fn child_state(&self, id: JobId) -> Option<ChildState> {
        let pos = self.child_pos(id)?;
        self.jobs[&id.parent()].array.as_ref()?.states.get(pos as usize).copied()
    }

    /// Change one child's state (after its attempts/end are set) and persist just that child.
    /// Becoming active writes no child row: the child's own record, written
    /// when it starts, says so (see [`Core::restore`]).
    pub(crate) fn set_child_state(&mut self, fx: &mut impl Effects, parent: JobId, pos: u32, s: ChildState) {
        let arr = self.jobs.get_mut(&parent).and_then(|p| p.array.as_mut()).expect("array");
        let old = std::mem::replace(&mut arr.states[pos as usize], s);
        let rec = (s != ChildState::Active).then(|| Record::Child {
            parent,
            pos,
            state: s,
            attempts: arr.attempts.get(&pos).copied().unwrap_or(0),
            end: arr.ends.get(&pos).cloned(),
        });
        let live = self.arrays.get_mut(&parent).expect("array live");
        live.counts[old as usize] -= 1;
        live.counts[s as usize] += 1;
        if let Some(rec) = rec {
            fx.persist(rec);
        }
    }

    /// Put a waiting entry (plain job or array parent) in its queue, or aside
    /// if no node could ever hold it.
    pub(crate) fn enqueue(&mut self, id: JobId) {
        let job = &self.jobs[&id];
        if let Some(why) = self.never_fits(job) {
            self.ineligible.insert(id, why);
            return;
        }
        self.ineligible.remove(&id);
        let prio = job.spec.scheduling_priority;
        let share = self.share_of(id);
        let Some(q) = self.queues.get_mut(&job.spec.queue) else { return };
        let key = if q.def.policy.is_some() { share } else { String::new() };
        q.waiting.entry(key).or_default().insert((Reverse(prio), id));
        self.fresh.insert(id);
    }

    /// Take an entry out of its queue (and out of the set-aside list).
    pub(crate) fn unqueue(&mut self, id: JobId) {
        self.ineligible.remove(&id);
        self.fresh.remove(&id);
        self.backfill_blocked.remove(&id);
        let Some(job) = self.jobs.get(&id) else { return };
        let prio = job.spec.scheduling_priority;
        let share = self.share_of(id);
        let Some(q) = self.queues.get_mut(&job.spec.queue) else { return };
        let key = if q.def.policy.is_some() { share } else { String::new() };
        if let Some(set) = q.waiting.get_mut(&key) {
            set.remove(&(Reverse(prio), id));
            if set.is_empty() {
                q.waiting.remove(&key);
            }
        }
    }

    /// The fair-share identifier of a job (children share their parent's).
    pub(crate) fn share_of(&self, id: JobId) -> String {
        let j = self.jobs.get(&id).or_else(|| self.jobs.get(&id.parent()));
        j.and_then(|j| j.spec.share.clone()).unwrap_or_default()
    }

    /// Add `dcpus`/`dmem` to a node's allocation, keeping the free indexes right.
    pub(crate) fn node_alloc(&mut self, node: NodeId, dcpus: i64, dmem: i64) {
        self.unindex_node(node);
        if let Some(n) = self.nodes.get_mut(&node) {
            n.alloc_cpus = (i64::from(n.alloc_cpus) + dcpus) as u32;
            n.alloc_mem = (n.alloc_mem as i64 + dmem) as u64;
        }
        self.index_node(node);
    }

    /// Remove a node from the free indexes (before its free CPUs change).
    pub(crate) fn unindex_node(&mut self, node: NodeId) {
        let Some(n) = self.nodes.get(&node) else { return };
        if !n.connected() {
            return;
        }
        let key = (n.free_cpus(), node);
        for ce in &n.ces {
            if let Some(set) = self.ce_free.get_mut(ce) {
                set.remove(&key);
            }
        }
        self.free_cpus_total -= u64::from(n.free_cpus());
    }

    /// Put a node back in the free indexes.
    pub(crate) fn index_node(&mut self, node: NodeId) {
        let Some(n) = self.nodes.get(&node) else { return };
        if !n.connected() {
            return;
        }
        let key = (n.free_cpus(), node);
        for ce in &n.ces {
            self.ce_free.entry(ce.clone()).or_default().insert(key);
        }
        self.free_cpus_total += u64::from(n.free_cpus());
    }

    // ---------------------------------------------------------------- queries

    /// One job, or one array child.
    pub fn job_info(&self, id: JobId) -> Option<JobInfo> {
        if let Some(job) = self.jobs.get(&id) {
            return Some(self.info_of(job));
        }
        // A child that is not running lives only as a byte in its parent.
        let state = self.child_state(id)?;
        let parent = &self.jobs[&id.parent()];
        let pos = self.child_pos(id)?;
        let arr = parent.array.as_ref()?;
        let mut spec = parent.spec.clone();
        spec.array = None;
        let end = arr.ends.get(&pos);
        let (reason, reason_text) = match state {
            ChildState::Pending | ChildState::Runnable => self.child_reason(id, state),
            ChildState::Failed => match end {
                Some(e) => (Some(e.fail.code().into()), Some(e.fail.text())),
                None => (None, None),
            },
            ChildState::Cancelled => (Some("Cancelled".into()), Some("cancelled before it started".into())),
            _ => (None, None),
        };
        Some(JobInfo {
            id,
            spec,
            state: state.job_state(),
            reason,
            reason_text,
            attempt: arr.attempts.get(&pos).copied().unwrap_or(0),
            nodes: Vec::new(),
            tasks: Vec::new(),
            exit_code: match state {
                ChildState::Succeeded => Some(0),
                ChildState::Failed => Some(end.map(|e| e.exit_code).unwrap_or(1)),
                _ => None,
            },
            submit_time: parent.submit_time,
            start_time: None,
            end_time: None,
            array: None,
            bindings: Vec::new(),
        })
    }

    fn info_of(&self, job: &Job) -> JobInfo {
        let (reason, reason_text) = self.reason(job);
        let mut tasks = Vec::new();
        for a in &job.alloc {
            for r in a.first_rank..a.first_rank + a.tasks {
                tasks.push(TaskInfo { rank: r, node: a.name.clone(), exit: job.exits.get(&r).cloned() });
            }
        }
        let array = job.array.as_ref().map(|arr| {
            let mut info =
                ArrayInfo { spec: job.spec.array.clone(), size: arr.states.len() as u32, ..ArrayInfo::default() };
            for s in &arr.states {
                match s {
                    ChildState::Pending => info.pending += 1,
                    ChildState::Runnable => info.runnable += 1,
                    ChildState::Active => info.running += 1,
                    ChildState::Succeeded => info.succeeded += 1,
                    ChildState::Failed | ChildState::Cancelled => info.failed += 1,
                }
            }
            info
        });
        JobInfo {
            id: job.id,
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
            array,
            bindings: Vec::new(),
        }
    }

    /// The raw record of a job.
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id).map(|j| &**j)
    }

    /// Jobs (plain, array parents, running children), oldest first; terminal ones only with `all`.
    pub fn job_infos(&self, all: bool) -> Vec<JobInfo> {
        let mut out: Vec<JobInfo> =
            self.jobs.values().filter(|j| all || !j.state.is_terminal()).map(|j| self.info_of(j)).collect();
        out.sort_by_key(|i| (i.id.parent(), i.id.index().map(|x| x as i64).unwrap_or(-1)));
        out
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

    /// The fair-share history worth keeping across a restart: every share of
    /// every queue with usage left, by (queue, share): one entry per share
    /// that ever ran.
    pub fn share_history(&self) -> Vec<ShareHistory> {
        let mut out = Vec::new();
        for (qname, q) in &self.queues {
            for (share, u) in &q.usage {
                if u.hist > 0.0 {
                    out.push(ShareHistory { queue: qname.clone(), share: share.clone(), hist: u.hist, at: u.at });
                }
            }
        }
        out
    }

    /// Changes whenever [`Core::share_history`] may have changed (an attempt
    /// ended, a queue was deleted): a caller that saves snapshots compares
    /// this number instead of building one after every event.
    pub fn share_history_version(&self) -> u64 {
        self.usage_version
    }

    /// Number of job records held in memory (plain, parents, active children).
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Waiting entries across all queues (array parents count once).
    pub fn waiting_count(&self) -> usize {
        self.queues.values().map(|q| q.waiting.values().map(|s| s.len()).sum::<usize>()).sum::<usize>()
            + self.ineligible.len()
            + self.dep_wait.len()
    }

    /// Panic if any invariant is broken. Tests call it after every event.
    pub fn sanity_check(&self) {
        let mut cpus: BTreeMap<NodeId, u32> = BTreeMap::new();
        let mut mem: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut queued: BTreeSet<JobId> = BTreeSet::new();
        for q in self.queues.values() {
            for set in q.waiting.values() {
                for (_, id) in set {
                    assert!(queued.insert(*id), "job {id} queued twice");
                }
            }
        }
        for job in self.jobs.values() {
            let active = matches!(job.state, JobState::Starting | JobState::Running);
            let in_queue = queued.contains(&job.id);
            let aside = self.ineligible.contains_key(&job.id);
            let deps = self.dep_wait.contains(&job.id);
            assert!(
                u8::from(in_queue) + u8::from(aside) + u8::from(deps) <= 1,
                "job {} is in more than one waiting set",
                job.id
            );
            if let Some(arr) = &job.array {
                let live = &self.arrays[&job.id];
                let runnable: BTreeSet<u32> =
                    (0..arr.states.len() as u32).filter(|&p| arr.states[p as usize] == ChildState::Runnable).collect();
                assert_eq!(live.runnable, runnable, "array {} runnable children", job.id);
                let active_n = arr.states.iter().filter(|s| **s == ChildState::Active).count() as u32;
                assert_eq!(live.active, active_n, "array {} active children", job.id);
                let mut counts = [0u32; 6];
                for st in &arr.states {
                    counts[*st as usize] += 1;
                }
                assert_eq!(live.counts, counts, "array {} state counts", job.id);
                let aspec = job.spec.array.as_ref().expect("array spec");
                for p in 0..arr.states.len() as u32 {
                    let c = job.id.child(aspec.index_at(p));
                    assert_eq!(
                        arr.states[p as usize] == ChildState::Active,
                        self.jobs.contains_key(&c),
                        "child {c} has a record exactly while active"
                    );
                }
                if job.state.is_terminal() {
                    assert!(arr.states.iter().all(|s| s.is_terminal()), "array {} ended with live children", job.id);
                } else {
                    assert_eq!(job.state, JobState::Pending, "array parent {} is PENDING until done", job.id);
                    if !runnable.is_empty() && !deps {
                        assert!(in_queue || aside, "array {} with runnable children is queued", job.id);
                    }
                    if runnable.is_empty() {
                        assert!(!in_queue, "array {} without runnable children is not queued", job.id);
                    }
                    if let Some(max) = aspec.max_running {
                        assert!(active_n <= max, "array {} runs {} children, over its %{}", job.id, active_n, max);
                    }
                }
                continue;
            }
            let waiting = matches!(job.state, JobState::Submitted | JobState::Pending | JobState::Runnable);
            if job.id.index().is_none() {
                assert_eq!(
                    waiting,
                    in_queue || aside || deps,
                    "job {} in state {} must be queued exactly when waiting",
                    job.id,
                    job.state
                );
                assert_eq!(job.state == JobState::Pending, deps, "job {} PENDING exactly when waiting on deps", job.id);
            } else {
                assert!(active, "child record {} exists only while active", job.id);
            }
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
                assert!(job.attempt <= job.spec.retry.attempts, "job {} ran more attempts than allowed", job.id);
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
        let mut free_total = 0u64;
        for n in self.nodes.values() {
            assert_eq!(n.alloc_cpus, cpus.get(&n.rec.id).copied().unwrap_or(0), "node {} cpu accounting", n.rec.name);
            assert_eq!(n.alloc_mem, mem.get(&n.rec.id).copied().unwrap_or(0), "node {} memory accounting", n.rec.name);
            if n.connected() {
                assert!(n.alloc_cpus <= n.rec.inventory.cpus, "node {} over-allocated", n.rec.name);
                free_total += u64::from(n.free_cpus());
                for ce in &n.ces {
                    assert!(
                        self.ce_free[ce].contains(&(n.free_cpus(), n.rec.id)),
                        "node {} indexed in {ce}",
                        n.rec.name
                    );
                }
            }
        }
        assert_eq!(free_total, self.free_cpus_total, "free CPU total");
        let mut releases = BTreeMap::new();
        for job in self.jobs.values().filter(|j| matches!(j.state, JobState::Starting | JobState::Running)) {
            let end = job.deadline().unwrap_or(crate::NEVER);
            for a in &job.alloc {
                releases.insert((end, a.node, job.id), (a.cpus, a.mem_mib));
            }
        }
        assert!(releases == self.releases, "release index differs from the running allocations");
        for (ce, set) in &self.ce_free {
            for (free, id) in set {
                let n = &self.nodes[id];
                assert!(n.connected() && n.free_cpus() == *free && n.ces.contains(ce), "stale index entry in {ce}");
            }
        }
        self.check_reservation();
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
