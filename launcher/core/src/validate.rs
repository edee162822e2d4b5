//! Submission checks shared by the CLI (early, friendly errors) and the core
//! (the authority: nothing invalid is ever accepted).

use launcher_proto::JobSpec;

/// Largest `-N` accepted.
pub const MAX_NODES: u32 = 10_000;
/// Largest `-n` accepted.
pub const MAX_TASKS: u32 = 1_000_000;
/// Largest array (children).
pub const MAX_ARRAY: u32 = 1_000_000;

/// Check a job spec; the error names the field and how to fix it.
pub fn validate_spec(spec: &JobSpec) -> Result<(), String> {
    if spec.nodes == 0 {
        return Err("-N/--nodes must be at least 1".into());
    }
    if spec.nodes > MAX_NODES {
        return Err(format!("-N/--nodes {} is more than the {MAX_NODES} nodes a job may span", spec.nodes));
    }
    if spec.tasks < spec.nodes {
        return Err(format!(
            "-n/--ntasks {} is smaller than -N/--nodes {}: every node needs at least one task; use -n {} or more, or fewer nodes",
            spec.tasks, spec.nodes, spec.nodes
        ));
    }
    if spec.tasks > MAX_TASKS {
        return Err(format!("-n/--ntasks {} is more than the {MAX_TASKS} tasks a job may have", spec.tasks));
    }
    if spec.cpus_per_task == 0 || spec.cpus_per_task > 4096 {
        return Err(format!("-c/--cpus-per-task {} must be between 1 and 4096", spec.cpus_per_task));
    }
    if spec.command.is_empty() && spec.script.is_none() {
        return Err("nothing to run: give a command after `--` or a script file".into());
    }
    if spec.command.first().is_some_and(|c| c.is_empty()) && spec.script.is_none() {
        return Err("the command is an empty string".into());
    }
    if spec.time_limit_s == Some(0) {
        return Err("--time must be longer than zero".into());
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(format!("--env {k:?}: a variable name must be non-empty and contain no '=' or NUL"));
        }
    }
    let busiest = spec.tasks.div_ceil(spec.nodes.max(1));
    let per_task = spec.bind.gpus_per_task;
    if per_task > 0 && spec.gpus_per_node < busiest.saturating_mul(per_task) {
        return Err(format!(
            "--gpus-per-task {per_task} with up to {busiest} task(s) per node needs {} GPU(s) per node, but --gpus-per-node is {}; raise --gpus-per-node or drop it",
            busiest.saturating_mul(per_task),
            spec.gpus_per_node
        ));
    }
    if spec.gpus_per_node > 1024 {
        return Err(format!("--gpus-per-node {} is more GPUs than any node has", spec.gpus_per_node));
    }
    for f in &spec.constraint {
        if f.is_empty() || f.len() > 128 || f.contains(char::is_whitespace) {
            return Err(format!("--constraint {f:?}: a feature is a non-empty word without spaces"));
        }
    }
    if spec.name.len() > 1024 {
        return Err("--name is longer than 1024 bytes".into());
    }
    if let Some(a) = &spec.array {
        if a.step == 0 {
            return Err("--array step must be at least 1 (e.g. 1-7:2)".into());
        }
        if a.end < a.start {
            return Err(format!("--array {}-{}: the end is before the start", a.start, a.end));
        }
        if a.len() > MAX_ARRAY || a.end >= launcher_proto::JobId::MAX_INDEX {
            return Err(format!("--array {a} has {} children; at most {MAX_ARRAY} are allowed", a.len()));
        }
        if a.max_running == Some(0) {
            return Err("--array %0: the concurrency limit must be at least 1".into());
        }
    }
    crate::retry::validate_retry(&spec.retry)?;
    if spec.scheduling_priority > 9999 {
        return Err(format!("--priority {} must be between 0 and 9999", spec.scheduling_priority));
    }
    if let Some(s) = &spec.share {
        if s.is_empty() || s.len() > 255 || s.contains('*') {
            return Err(format!("--share {s:?} must be 1-255 characters without '*'"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_spec() -> JobSpec {
        JobSpec {
            name: "x".into(),
            queue: "default".into(),
            nodes: 3,
            tasks: 6,
            cpus_per_task: 1,
            command: vec!["true".into()],
            retry: launcher_proto::RetrySpec::default(),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_plain_job() {
        validate_spec(&ok_spec()).unwrap();
    }

    #[test]
    fn names_the_problem() {
        type Mutation = Box<dyn Fn(&mut JobSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.nodes = 0), "at least 1"),
            (Box::new(|s| s.nodes = 20_000), "more than the 10000 nodes"),
            (Box::new(|s| s.tasks = 2), "smaller than -N/--nodes 3"),
            (Box::new(|s| s.cpus_per_task = 0), "--cpus-per-task 0"),
            (Box::new(|s| s.command.clear()), "nothing to run"),
            (Box::new(|s| s.time_limit_s = Some(0)), "--time"),
            (Box::new(|s| s.env.push(("A=B".into(), "c".into()))), "no '='"),
            (
                Box::new(|s| {
                    s.array = Some(launcher_proto::ArraySpec {
                        start: 5,
                        end: 1,
                        step: 1,
                        max_running: None,
                        sequential: false,
                    })
                }),
                "before the start",
            ),
            (Box::new(|s| s.retry.attempts = 0), "between 1 and 10"),
            (Box::new(|s| s.scheduling_priority = 10_000), "--priority"),
        ];
        for (mutate, want) in cases {
            let mut s = ok_spec();
            mutate(&mut s);
            let err = validate_spec(&s).unwrap_err();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }
}
