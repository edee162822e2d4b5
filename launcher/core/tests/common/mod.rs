//! Shared test bench for the pure core: a recorder for effects (every
//! message goes through the real codec) and an environment with a clock.
#![allow(dead_code)]

use launcher_core::{Config, Core, Effects, Record, ShareHistory, SubmitOutcome, Time};
use launcher_proto::{
    decode, encode, ExitStatus, FromAgent, Inventory, JobId, JobReport, JobSpec, JobState, NodeId, RegisterMsg, ToAgent,
};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct Rec {
    pub sent: Vec<(NodeId, ToAgent)>,
    pub persisted: Vec<Record>,
    pub changed: Vec<JobId>,
}

impl Effects for Rec {
    fn send(&mut self, node: NodeId, msg: ToAgent) {
        let back: ToAgent = decode(&encode(&msg)).expect("core messages round-trip");
        assert_eq!(back, msg);
        self.sent.push((node, msg));
    }
    fn persist(&mut self, record: Record) {
        self.persisted.push(record);
    }
    fn job_changed(&mut self, job: JobId) {
        self.changed.push(job);
    }
}

pub struct Env {
    pub core: Core,
    pub fx: Rec,
    pub now: Time,
    pub nodes: BTreeMap<String, NodeId>,
}

pub fn spec(nodes: u32, tasks: u32) -> JobSpec {
    JobSpec {
        name: "t".into(),
        queue: "default".into(),
        nodes,
        tasks,
        cpus_per_task: 1,
        command: vec!["true".into()],
        ..Default::default()
    }
}

impl Env {
    pub fn new() -> Self {
        let cfg = Config { kill_grace_ms: 1000, node_timeout_ms: 10_000, ..Config::default() };
        Env { core: Core::new(cfg), fx: Rec::default(), now: Time(1_000_000), nodes: BTreeMap::new() }
    }

    pub fn tick(&mut self, ms: u64) {
        self.now = self.now.plus_ms(ms);
        self.core.on_timeout(self.now, &mut self.fx);
        self.core.sanity_check();
    }

    pub fn add_node(&mut self, name: &str, cpus: u32) -> NodeId {
        self.register(name, cpus, vec![])
    }

    pub fn register(&mut self, name: &str, cpus: u32, jobs: Vec<JobReport>) -> NodeId {
        self.register_with(name, cpus, &[], jobs)
    }

    /// A node with agent features (`--feature`).
    pub fn register_with(&mut self, name: &str, cpus: u32, features: &[&str], jobs: Vec<JobReport>) -> NodeId {
        let reg = RegisterMsg {
            name: name.into(),
            inventory: Inventory {
                cpus,
                mem_mib: 1024,
                addr: format!("10.0.0.{}", self.nodes.len() + 1),
                features: features.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            },
            jobs,
        };
        let (id, _) = self.core.on_register(self.now, &mut self.fx, reg);
        self.nodes.insert(name.into(), id);
        self.core.sanity_check();
        id
    }

    pub fn submit(&mut self, s: JobSpec) -> JobId {
        match self.core.on_submit(self.now, &mut self.fx, s, None) {
            SubmitOutcome::Accepted(id) => {
                self.core.sanity_check();
                id
            }
            o => panic!("not accepted: {o:?}"),
        }
    }

    pub fn schedule(&mut self) -> usize {
        let n = self.core.schedule(self.now, &mut self.fx);
        self.core.sanity_check();
        n
    }

    pub fn agent(&mut self, node: NodeId, msg: FromAgent) {
        self.core.on_agent(self.now, &mut self.fx, node, msg);
        self.core.sanity_check();
    }

    pub fn launches(&mut self) -> Vec<(NodeId, launcher_proto::LaunchMsg)> {
        let out = self
            .fx
            .sent
            .iter()
            .filter_map(|(n, m)| match m {
                ToAgent::Launch(l) => Some((*n, (**l).clone())),
                _ => None,
            })
            .collect();
        self.fx.sent.clear();
        out
    }

    /// Start every launched node and exit every task with `code(rank)`.
    pub fn run_all(&mut self, launches: &[(NodeId, launcher_proto::LaunchMsg)], code: impl Fn(u32) -> i32) {
        for (n, l) in launches {
            self.agent(*n, FromAgent::Started { job: l.job, attempt: l.attempt });
        }
        for (n, l) in launches {
            for t in &l.tasks {
                self.agent(
                    *n,
                    FromAgent::TaskExited {
                        job: l.job,
                        attempt: l.attempt,
                        rank: t.rank,
                        status: ExitStatus::Code(code(t.rank)),
                    },
                );
            }
        }
    }

    pub fn state(&self, id: JobId) -> JobState {
        self.core.job_info(id).unwrap().state
    }
}

/// Rebuild a core from everything persisted so far, as the store would after a crash.
pub fn restore_from(cfg: Config, now: Time, persisted: &[Record]) -> Core {
    restore_with(cfg, now, persisted, Vec::new())
}

/// The same, with a saved fair-share history ([`Core::share_history`]).
pub fn restore_with(cfg: Config, now: Time, persisted: &[Record], usage: Vec<ShareHistory>) -> Core {
    let mut jobs: BTreeMap<JobId, launcher_core::Job> = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    let mut defs = launcher_core::Defs::default();
    let mut ces = BTreeMap::new();
    let mut queues = BTreeMap::new();
    let mut policies = BTreeMap::new();
    let mut jobdefs = BTreeMap::new();
    for r in persisted {
        match r {
            Record::Job(j) => {
                jobs.insert(j.id, (**j).clone());
            }
            Record::Node(n) => {
                nodes.insert(n.id, n.clone());
            }
            Record::Event { .. } => {}
            Record::RemoveJob(id) => {
                jobs.remove(id);
            }
            Record::Child { parent, pos, state, attempts, end } => {
                if let Some(arr) = jobs.get_mut(parent).and_then(|j| j.array.as_mut()) {
                    arr.apply_child(*pos, *state, *attempts, end.clone());
                }
            }
            Record::Ce(c) => {
                ces.insert(c.name.clone(), c.clone());
            }
            Record::Queue(q) => {
                queues.insert(q.name.clone(), q.clone());
            }
            Record::Policy(p) => {
                policies.insert(p.name.clone(), p.clone());
            }
            Record::Jobdef(d) => {
                jobdefs.insert((d.name.clone(), d.revision), (**d).clone());
            }
            Record::Deleted { kind, name } => {
                match *kind {
                    "ce" => ces.remove(name).map(|_| ()),
                    "queue" => queues.remove(name).map(|_| ()),
                    _ => policies.remove(name).map(|_| ()),
                };
            }
        }
    }
    if !ces.is_empty() || !queues.is_empty() {
        ces.entry("default".to_string()).or_insert_with(launcher_core::default_ce);
        queues.entry("default".to_string()).or_insert_with(launcher_core::default_queue);
    }
    defs.ces = ces.into_values().collect();
    defs.queues = queues.into_values().collect();
    defs.policies = policies.into_values().collect();
    defs.jobdefs = jobdefs.into_values().collect();
    defs.usage = usage;
    Core::restore(cfg, now, nodes.into_values().collect(), jobs.into_values().collect(), defs)
}
