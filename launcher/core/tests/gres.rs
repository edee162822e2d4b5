//! GPUs and node features as schedulable resources (`--gpus-per-node`,
//! `--constraint`), from what agents report in their inventory.

use launcher_core::{Config, Core, Effects, Record, SubmitOutcome, Time};
use launcher_proto::{decode, encode, Inventory, JobId, JobSpec, JobState, NodeId, RegisterMsg, ToAgent};

#[derive(Default)]
struct Rec {
    launched: Vec<(NodeId, JobId)>,
}

impl Effects for Rec {
    fn send(&mut self, node: NodeId, msg: ToAgent) {
        assert_eq!(decode::<ToAgent>(&encode(&msg)).unwrap(), msg);
        if let ToAgent::Launch(l) = msg {
            self.launched.push((node, l.job));
        }
    }
    fn persist(&mut self, _: Record) {}
    fn job_changed(&mut self, _: JobId) {}
}

fn node(core: &mut Core, fx: &mut Rec, name: &str, gpus: u32, features: &[&str]) -> NodeId {
    let inventory = Inventory {
        cpus: 64,
        mem_mib: 1024,
        gpus,
        features: features.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    };
    core.on_register(Time(1), fx, RegisterMsg { name: name.into(), inventory, jobs: vec![] }).0
}

fn spec(gpus_per_node: u32, constraint: &[&str]) -> JobSpec {
    JobSpec {
        name: "t".into(),
        queue: "default".into(),
        nodes: 1,
        tasks: 1,
        cpus_per_task: 1,
        command: vec!["true".into()],
        gpus_per_node,
        constraint: constraint.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }
}

fn submit(core: &mut Core, fx: &mut Rec, s: JobSpec) -> SubmitOutcome {
    let o = core.on_submit(Time(2), fx, s, None);
    core.sanity_check();
    o
}

#[test]
fn gpus_are_accounted_and_features_must_all_match() {
    let (mut core, mut fx) = (Core::new(Config::default()), Rec::default());
    let cpu = node(&mut core, &mut fx, "cpu1", 0, &["x86"]);
    let gpu = node(&mut core, &mut fx, "gpu1", 8, &["x86", "h100"]);
    let SubmitOutcome::Accepted(a) = submit(&mut core, &mut fx, spec(6, &[])) else { panic!() };
    let SubmitOutcome::Accepted(c) = submit(&mut core, &mut fx, spec(0, &["x86"])) else { panic!() };
    let SubmitOutcome::Accepted(b) = submit(&mut core, &mut fx, spec(4, &[])) else { panic!() };
    core.schedule(Time(3), &mut fx);
    core.sanity_check();
    // a takes 6 of gpu1's 8 GPUs; b (4) must wait although gpu1 has CPUs free; c goes anywhere with x86.
    assert!(fx.launched.contains(&(gpu, a)));
    assert_eq!(core.job_info(b).unwrap().state, JobState::Runnable);
    assert!(fx.launched.iter().any(|&(n, j)| j == c && (n == cpu || n == gpu)));
    assert!(core.job_info(b).unwrap().reason_text.unwrap().contains("first in line"));
}

#[test]
fn impossible_gpu_or_feature_requests_are_refused_at_submit() {
    let (mut core, mut fx) = (Core::new(Config::default()), Rec::default());
    node(&mut core, &mut fx, "gpu1", 4, &["a100"]);
    node(&mut core, &mut fx, "gpu2", 4, &["a100"]);
    let SubmitOutcome::Rejected(why) = submit(&mut core, &mut fx, spec(8, &[])) else { panic!("accepted") };
    assert!(
        why.contains(
            "needs 1 node(s) with 8 GPU(s), but only 0 of the cluster's 2 node(s) have that (most GPUs on a node: 4"
        ),
        "{why}"
    );
    let SubmitOutcome::Rejected(why) = submit(&mut core, &mut fx, spec(0, &["h100"])) else { panic!("accepted") };
    assert!(why.contains("feature(s) h100") && why.contains("features: a100"), "{why}");
    assert!(matches!(submit(&mut core, &mut fx, spec(4, &["a100"])), SubmitOutcome::Accepted(_)));
    // --gpus-per-task needs enough --gpus-per-node (checked before any node is consulted).
    let mut s = spec(1, &[]);
    s.tasks = 2;
    s.bind.gpus_per_task = 1;
    let SubmitOutcome::Rejected(why) = submit(&mut core, &mut fx, s) else { panic!("accepted") };
    assert!(why.contains("needs 2 GPU(s) per node, but --gpus-per-node is 1"), "{why}");
}
