//! The discrete-event loop: a heap of `(time, seq, event)`, simulated agents,
//! and the real [`Core`].
//!
//! Each step takes every event due at the next instant (submissions, agents'
//! `Started` and `TaskExited` reports), hands them to the core, then calls
//! `on_timeout` and `schedule` once, exactly as the controller's driver does
//! with a batch from its channel. Effects then reach the simulated agents:
//! a `Launch` is answered with `Started` one latency later and with a
//! `TaskExited` per task when the job's drawn run time is over; a `Kill` is
//! answered with `TaskExited` (SIGTERM) one latency later. Time jumps
//! straight to the next event or to [`Core::next_timeout`], like quinn's
//! `Pair::step`, so a week of cluster time costs only the work done in it.
//!
//! Only `schedule` (and, separately, `on_submit`) is timed with the wall
//! clock. Nothing measured on the wall clock enters the journal, so the same
//! seed gives the same journal on any machine.

use crate::journal::Journal;
use crate::stats::Summary;
use crate::workload::{generate, SimJob, WorkloadConfig};
use launcher_core::{Config, Core, Effects, FailReason, Record, SubmitOutcome, Time};
use launcher_proto::{ExitStatus, FromAgent, Inventory, JobId, JobState, NodeId, RegisterMsg, ToAgent};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Write;
use std::time::{Duration, Instant};

/// Simulated time of the first event, µs (the core's `Time` is µs since an epoch).
pub const T0: u64 = 1_000_000;

/// Effects of one batch, kept until the batch is over (the driver sends
/// nothing before its batch commits). Records are counted and dropped.
#[derive(Default)]
pub struct SimFx {
    /// Messages to agents, in order.
    pub sends: Vec<(NodeId, ToAgent)>,
    /// Jobs whose state changed.
    pub changed: Vec<JobId>,
    /// Records the driver would have committed.
    pub persisted: u64,
}

impl Effects for SimFx {
    fn send(&mut self, node: NodeId, msg: ToAgent) {
        self.sends.push((node, msg));
    }
    fn persist(&mut self, _record: Record) {
        self.persisted += 1;
    }
    fn job_changed(&mut self, job: JobId) {
        self.changed.push(job);
    }
}

/// How to run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The workload (also the cluster's size).
    pub workload: WorkloadConfig,
    /// Delay between the controller and an agent, each way, µs.
    pub latency_us: u64,
    /// Most events per batch (the driver takes up to 4096 inputs at once).
    pub batch_max: usize,
    /// Run `Core::sanity_check` every this many batches and at the end (0: never).
    /// It is O(jobs × nodes): use it on small runs.
    pub check_every: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig { workload: WorkloadConfig::default(), latency_us: 1000, batch_max: 4096, check_every: 0 }
    }
}

#[derive(Debug)]
enum Ev {
    Submit(usize),
    Started { node: NodeId, job: JobId, attempt: u32 },
    Exit { node: NodeId, job: JobId, attempt: u32, killed: bool },
}

/// A heap entry; the heap pops the earliest `(time, seq)`.
struct Entry {
    time: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

/// A simulated node agent: the attempts whose tasks it still runs.
#[derive(Default)]
struct SimAgent {
    name: String,
    /// (job, attempt) → global ranks running here.
    held: BTreeMap<(JobId, u32), Vec<u32>>,
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// Nodes simulated.
    pub nodes: u32,
    /// CPUs per node.
    pub cpus_per_node: u32,
    /// Jobs submitted.
    pub jobs: usize,
    /// Jobs that reached a terminal state.
    pub finished: usize,
    /// Of which SUCCEEDED.
    pub succeeded: usize,
    /// Of which ended by their time limit.
    pub timed_out: usize,
    /// First submission to last job end, simulated µs.
    pub makespan_us: u64,
    /// Allocated CPU-time over capacity × makespan.
    pub utilisation: f64,
    /// Submit-to-start waits, simulated µs.
    pub wait_us: Summary,
    /// Wall-clock ns of every `schedule` call.
    pub pass_ns: Summary,
    /// Wall-clock ns of every `on_submit` call.
    pub submit_ns: Summary,
    /// Jobs started by `schedule` (retries included).
    pub started: usize,
    /// Events handled.
    pub events: u64,
    /// Batches (= scheduling passes).
    pub batches: u64,
    /// Records the driver would have committed.
    pub persisted: u64,
    /// Wall-clock time of the whole run.
    pub wall: Duration,
    /// Journal lines.
    pub journal_lines: u64,
    /// FNV-1a 64 of the journal.
    pub journal_hash: u64,
}

impl Report {
    /// Jobs decided (started) per second of `schedule` time.
    pub fn decisions_per_s(&self) -> f64 {
        self.started as f64 / (self.pass_ns.total as f64 / 1e9).max(1e-12)
    }
}

/// A simulation: the core, the simulated agents and the event heap.
pub struct Sim {
    cfg: SimConfig,
    core: Core,
    fx: SimFx,
    heap: BinaryHeap<Entry>,
    seq: u64,
    now: u64,
    agents: Vec<SimAgent>,
    work: Vec<SimJob>,
    /// Core id of each workload job, once submitted.
    ids: Vec<Option<JobId>>,
    /// Workload index of each core job id.
    index_of: BTreeMap<JobId, usize>,
    ended: Vec<bool>,
    journal: Journal,
    pass_ns: Vec<u64>,
    submit_ns: Vec<u64>,
    started: usize,
    events: u64,
    batches: u64,
}

impl Sim {
    /// Generate the workload, register the nodes and queue the submissions.
    /// The journal is written to `journal` when given.
    pub fn new(cfg: SimConfig, journal: Option<Box<dyn Write>>) -> Sim {
        let work = generate(&cfg.workload);
        let n = work.len();
        let mut sim = Sim {
            core: Core::new(Config::default()),
            fx: SimFx::default(),
            heap: BinaryHeap::with_capacity(n + 1024),
            seq: 0,
            now: T0,
            agents: vec![SimAgent::default()],
            work,
            ids: vec![None; n],
            index_of: BTreeMap::new(),
            ended: vec![false; n],
            journal: Journal::new(journal),
            pass_ns: Vec::new(),
            submit_ns: Vec::with_capacity(n),
            started: 0,
            events: 0,
            batches: 0,
            cfg,
        };
        let w = &sim.cfg.workload;
        for i in 1..=w.nodes {
            let name = format!("node{i:05}");
            let reg = RegisterMsg {
                name: name.clone(),
                inventory: Inventory {
                    cpus: w.cpus_per_node,
                    mem_mib: 256 * 1024,
                    sockets: 2,
                    cores: w.cpus_per_node,
                    threads: w.cpus_per_node,
                    numa_nodes: 2,
                    hostname: name.clone(),
                    addr: format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255),
                    features: vec![],
                    agent_version: "sim".into(),
                    ..Default::default()
                },
                jobs: vec![],
            };
            let (id, _) = sim.core.on_register(Time(T0), &mut sim.fx, reg);
            assert_eq!(id.0 as usize, sim.agents.len(), "the core numbers nodes from 1 in order");
            sim.agents.push(SimAgent { name, held: BTreeMap::new() });
        }
        sim.fx.sends.clear();
        for i in 0..n {
            let at = T0 + sim.work[i].submit_at;
            sim.push(at, Ev::Submit(i));
        }
        sim
    }

    /// The core, for inspection (`sanity_check`, `job_info`).
    pub fn core(&self) -> &Core {
        &self.core
    }

    fn push(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Entry { time, seq: self.seq, ev });
    }

    /// Run until no event is left and the core waits on nothing.
    pub fn run(&mut self) -> Report {
        let wall = Instant::now();
        loop {
            let next_ev = self.heap.peek().map(|e| e.time);
            let next_to = self.core.next_timeout().map(|t| t.0);
            let t = match (next_ev, next_to) {
                (None, None) => break,
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).expect("one is set"),
            };
            let t = t.max(self.now);
            let mut handled = 0;
            while handled < self.cfg.batch_max && self.heap.peek().is_some_and(|e| e.time <= t) {
                let e = self.heap.pop().expect("peeked");
                self.now = t;
                self.handle(e.ev);
                handled += 1;
            }
            self.now = t;
            self.core.on_timeout(Time(t), &mut self.fx);
            let start = Instant::now();
            self.started += self.core.schedule(Time(t), &mut self.fx);
            self.pass_ns.push(start.elapsed().as_nanos() as u64);
            self.flush();
            self.events += handled as u64;
            self.batches += 1;
            if self.cfg.check_every > 0 && self.batches % self.cfg.check_every == 0 {
                self.core.sanity_check();
            }
            assert!(
                handled > 0 || self.core.next_timeout().is_none_or(|n| n.0 > t),
                "the core asked to be woken at {t} and had nothing to do then"
            );
        }
        if self.cfg.check_every > 0 {
            self.core.sanity_check();
        }
        if let Err(e) = self.journal.flush() {
            panic!("cannot write the journal: {e}");
        }
        self.report(wall.elapsed())
    }

    fn handle(&mut self, ev: Ev) {
        let now = Time(self.now);
        match ev {
            Ev::Submit(i) => {
                let spec = self.work[i].spec.clone();
                let (nodes, tasks, limit) = (spec.nodes, spec.tasks, spec.time_limit_s.unwrap_or(0));
                let start = Instant::now();
                let outcome = self.core.on_submit(now, &mut self.fx, spec, None);
                self.submit_ns.push(start.elapsed().as_nanos() as u64);
                let id = match outcome {
                    SubmitOutcome::Accepted(id) => id,
                    o => panic!("the core refused generated job {i}: {o:?}"),
                };
                self.ids[i] = Some(id);
                self.index_of.insert(id, i);
                self.journal
                    .line(self.now - T0, format_args!("submit job={id} nodes={nodes} tasks={tasks} limit={limit}s"));
            }
            Ev::Started { node, job, attempt } => {
                if self.agents[node.0 as usize].held.contains_key(&(job, attempt)) {
                    self.core.on_agent(now, &mut self.fx, node, FromAgent::Started { job, attempt });
                }
            }
            Ev::Exit { node, job, attempt, killed } => {
                let Some(ranks) = self.agents[node.0 as usize].held.remove(&(job, attempt)) else { return };
                let code = self.index_of.get(&job).map(|&i| self.work[i].exit_code).unwrap_or(0);
                for rank in ranks {
                    let status = match (killed, rank) {
                        (true, _) => ExitStatus::Signal(15),
                        (false, 0) => ExitStatus::Code(code),
                        (false, _) => ExitStatus::Code(0),
                    };
                    self.core.on_agent(now, &mut self.fx, node, FromAgent::TaskExited { job, attempt, rank, status });
                }
            }
        }
    }

    /// Deliver the batch's messages to the agents and journal what happened.
    fn flush(&mut self) {
        let t = self.now;
        let rel = t - T0;
        let lat = self.cfg.latency_us;
        for (node, msg) in std::mem::take(&mut self.fx.sends) {
            match msg {
                ToAgent::Launch(l) => {
                    if l.node_rank == 0 {
                        self.journal.line(
                            rel,
                            format_args!("launch job={}.{} nodes={}", l.job, l.attempt, l.nodelist.join(",")),
                        );
                    }
                    let ranks = l.tasks.iter().map(|t| t.rank).collect();
                    self.agents[node.0 as usize].held.insert((l.job, l.attempt), ranks);
                    let run = self.index_of.get(&l.job).map(|&i| self.work[i].run_us).unwrap_or(1_000_000);
                    self.push(t + lat, Ev::Started { node, job: l.job, attempt: l.attempt });
                    self.push(t + lat + run, Ev::Exit { node, job: l.job, attempt: l.attempt, killed: false });
                }
                ToAgent::Kill(k) => {
                    let agent = &self.agents[node.0 as usize];
                    self.journal.line(
                        rel,
                        format_args!("kill job={}.{} node={} reason={:?}", k.job, k.attempt, agent.name, k.reason),
                    );
                    if agent.held.contains_key(&(k.job, k.attempt)) {
                        self.push(t + lat, Ev::Exit { node, job: k.job, attempt: k.attempt, killed: true });
                    }
                }
                ToAgent::Forget { job, attempt } => {
                    self.agents[node.0 as usize].held.remove(&(job, attempt));
                }
                // Simulated jobs are not MPI programs and run no `launcher exec`.
                ToAgent::Registered { .. }
                | ToAgent::FenceDone { .. }
                | ToAgent::FinalizeGrace { .. }
                | ToAgent::Exec(_)
                | ToAgent::ExecOutput { .. }
                | ToAgent::ExecExited { .. }
                | ToAgent::ExecKill { .. } => {}
            }
        }
        for id in std::mem::take(&mut self.fx.changed) {
            let Some(&i) = self.index_of.get(&id) else { continue };
            if self.ended[i] {
                continue;
            }
            let Some(job) = self.core.job(id) else { continue };
            if !job.state.is_terminal() {
                continue;
            }
            self.ended[i] = true;
            let why = job.fail.as_ref().map(|f| f.code()).unwrap_or("-");
            let line = format!("end job={id} state={} exit={} why={why}", job.state, job.exit_code.unwrap_or(-1));
            self.journal.line(rel, format_args!("{line}"));
        }
    }

    fn report(&self, wall: Duration) -> Report {
        let w = &self.cfg.workload;
        let (mut finished, mut succeeded, mut timed_out) = (0, 0, 0);
        let mut waits = Vec::with_capacity(self.work.len());
        let mut busy = 0f64;
        let mut last_end = T0;
        for (i, id) in self.ids.iter().enumerate() {
            let Some(job) = id.and_then(|id| self.core.job(id)) else { continue };
            if let Some(start) = job.start_time {
                waits.push(start.saturating_sub(job.submit_time));
            }
            if !job.state.is_terminal() {
                continue;
            }
            finished += 1;
            succeeded += usize::from(job.state == JobState::Succeeded);
            timed_out += usize::from(job.fail == Some(FailReason::Timeout));
            if let (Some(s), Some(e)) = (job.start_time, job.end_time) {
                busy += self.work[i].cpus() as f64 * e.saturating_sub(s) as f64;
                last_end = last_end.max(e);
            }
        }
        let first = self.work.first().map(|j| T0 + j.submit_at).unwrap_or(T0);
        let makespan_us = last_end.saturating_sub(first);
        let capacity = f64::from(w.nodes) * f64::from(w.cpus_per_node) * makespan_us as f64;
        Report {
            nodes: w.nodes,
            cpus_per_node: w.cpus_per_node,
            jobs: self.work.len(),
            finished,
            succeeded,
            timed_out,
            makespan_us,
            utilisation: if capacity > 0.0 { busy / capacity } else { 0.0 },
            wait_us: Summary::of(&mut waits),
            pass_ns: Summary::of(&mut self.pass_ns.clone()),
            submit_ns: Summary::of(&mut self.submit_ns.clone()),
            started: self.started,
            events: self.events,
            batches: self.batches,
            persisted: self.fx.persisted,
            wall,
            journal_lines: self.journal.lines(),
            journal_hash: self.journal.hash(),
        }
    }
}
