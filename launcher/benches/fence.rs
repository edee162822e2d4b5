//! PMI fence cost in the controller's core as nodes and ranks grow.
//!
//! Simulated agents drive the real [`launcher_core::Core`]: N nodes register,
//! one job spans all of them, and for each fence every node sends its
//! `FromAgent::Fence` delta (one put per local rank, sized like MPICH's UCX
//! address allgather: a 20-byte key and a 480-byte hex value). The figure is
//! the controller-side time from the first node's fence message to the last
//! `FenceDone` handed to the driver, plus the bytes those answers carry (every
//! node gets the whole merged delta: the single-hop allgather). The wire and
//! the agents are not in the figure; `cargo bench -p launcher --bench e2e`
//! measures a real MPI run end to end.
//!
//! Run: `cargo bench -p launcher --bench fence` (prints a table; no pass/fail).

use launcher_core::{Config, Core, Effects, Record, Time};
use launcher_proto::{FromAgent, Inventory, JobId, JobSpec, NodeId, RegisterMsg, ToAgent};
use std::time::Instant;

/// Counts what the core sends instead of sending it.
#[derive(Default)]
struct Sink {
    fence_done: usize,
    fence_bytes: usize,
    launches: Vec<(NodeId, JobId, u32)>,
}

impl Effects for Sink {
    fn send(&mut self, node: NodeId, msg: ToAgent) {
        match msg {
            ToAgent::FenceDone { puts, .. } => {
                self.fence_done += 1;
                self.fence_bytes += puts.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>();
            }
            ToAgent::Launch(l) => self.launches.push((node, l.job, l.attempt)),
            _ => {}
        }
    }
    fn persist(&mut self, _: Record) {}
    fn job_changed(&mut self, _: JobId) {}
}

fn cluster(nodes: u32, ranks_per_node: u32) -> (Core, Vec<NodeId>, JobId) {
    let mut core = Core::new(Config::default());
    let mut fx = Sink::default();
    let now = Time(1);
    let mut ids = Vec::new();
    for i in 0..nodes {
        let inv = Inventory { cpus: ranks_per_node, mem_mib: 1024, ..Default::default() };
        let (id, _) =
            core.on_register(now, &mut fx, RegisterMsg { name: format!("n{i}"), inventory: inv, jobs: vec![] });
        ids.push(id);
    }
    let spec = JobSpec {
        name: "fence".into(),
        queue: "default".into(),
        nodes,
        tasks: nodes * ranks_per_node,
        cpus_per_task: 1,
        command: vec!["hello".into()],
        ..Default::default()
    };
    let launcher_core::SubmitOutcome::Accepted(job) = core.on_submit(now, &mut fx, spec, None) else {
        panic!("submit refused")
    };
    core.schedule(now, &mut fx);
    assert_eq!(fx.launches.len() as u32, nodes, "job started on every node");
    for (node, job, attempt) in std::mem::take(&mut fx.launches) {
        core.on_agent(now, &mut fx, node, FromAgent::Started { job, attempt });
    }
    (core, ids, job)
}

/// Median controller time for one fence, and the bytes of its answers, when
/// the deltas arrive as `groups` contiguous subtrees of node ranks (`groups ==
/// nodes`: today's single hop, every agent straight to the controller).
fn fence_time(nodes: u32, rpn: u32, groups: u32) -> (std::time::Duration, usize, u32) {
    let (mut core, ids, job) = cluster(nodes, rpn);
    let value = "A".repeat(480);
    let size = nodes.div_ceil(groups);
    let mut times = Vec::new();
    let mut bytes = 0;
    let mut answers = 0;
    for seq in 1..=7u64 {
        // The deltas (and a subtree root's merge of its children's) are built
        // before the clock starts: agents do that work, in parallel.
        let msgs: Vec<(NodeId, FromAgent)> = (0..nodes)
            .step_by(size as usize)
            .map(|first| {
                let span = size.min(nodes - first);
                let puts = (first * rpn..(first + span) * rpn)
                    .map(|r| (format!("-allgather-{seq}-{r}"), value.clone()))
                    .collect();
                (ids[first as usize], FromAgent::Fence { job, attempt: 1, seq, span, puts })
            })
            .collect();
        let mut fx = Sink::default();
        let t = Instant::now();
        for (node, m) in msgs {
            core.on_agent(Time(2), &mut fx, node, m);
        }
        times.push(t.elapsed());
        answers = fx.fence_done as u32;
        bytes = fx.fence_bytes;
    }
    times.sort();
    (times[times.len() / 2], bytes, answers)
}

fn main() {
    println!("PMI fence through the controller core, per fence; one 500-byte put per rank");
    println!("single hop: every agent sends its delta to the controller and gets the merge back");
    println!("tree: sqrt(nodes) subtree roots send pre-merged deltas and get the merge (to pass down)");
    println!(
        "{:>6} {:>10} {:>8} | {:>11} {:>10} {:>11} | {:>6} {:>11} {:>11}",
        "nodes", "ranks/node", "ranks", "single hop", "per node", "bytes out", "roots", "tree", "bytes out"
    );
    for &nodes in &[64u32, 256, 1024] {
        for &rpn in &[1u32, 8] {
            let (flat, flat_bytes, flat_answers) = fence_time(nodes, rpn, nodes);
            assert_eq!(flat_answers, nodes, "every node answered");
            let roots = (nodes as f64).sqrt().ceil() as u32;
            let (tree, tree_bytes, tree_answers) = fence_time(nodes, rpn, roots);
            println!(
                "{:>6} {:>10} {:>8} | {:>11.2?} {:>10.2?} {:>8.1} MB | {:>6} {:>11.2?} {:>8.1} MB",
                nodes,
                rpn,
                nodes * rpn,
                flat,
                flat / nodes,
                flat_bytes as f64 / 1e6,
                tree_answers,
                tree,
                tree_bytes as f64 / 1e6
            );
        }
    }
}
