//! Human-readable rendering: tables, durations, labelled output lines.

use launcher_proto::{JobInfo, NodeInfo, Stream};
use std::collections::HashMap;
use std::io::Write;

/// Write a chunk of task output; with `label`, prefix every complete line
/// with `RANK: ` and keep partial lines until they complete.
pub fn print_stream_chunk(
    out: &mut impl Write,
    partial: &mut HashMap<(u32, Stream), Vec<u8>>,
    rank: u32,
    stream: Stream,
    data: &[u8],
    label: bool,
) -> std::io::Result<()> {
    if !label {
        out.write_all(data)?;
        return out.flush();
    }
    let buf = partial.entry((rank, stream)).or_default();
    buf.extend_from_slice(data);
    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        write!(out, "{rank}: ")?;
        out.write_all(&line)?;
    }
    out.flush()
}

/// `1h02m03s` style.
pub fn duration(us: u64) -> String {
    let s = us / 1_000_000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m{:02}s", s / 3600, (s % 3600) / 60, s % 60),
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Elapsed run time of a job.
pub fn elapsed(j: &JobInfo) -> String {
    match j.start_time {
        Some(s) => duration(j.end_time.unwrap_or_else(now_us).saturating_sub(s)),
        None => "-".into(),
    }
}

/// Print rows as aligned columns.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut s = String::new();
    let line = |cells: Vec<String>, s: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(&c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut s);
    for r in rows {
        line(r, &mut s);
    }
    s
}

/// `launcher queue` table.
pub fn jobs_table(jobs: &[JobInfo]) -> String {
    let rows = jobs
        .iter()
        .map(|j| {
            let where_ = if let Some(a) = &j.array {
                let mut w = format!(
                    "array {}: {} done, {} running, {} waiting",
                    a.size,
                    a.succeeded + a.failed,
                    a.running,
                    a.pending + a.runnable
                );
                if a.failed > 0 {
                    w.push_str(&format!(" ({} failed)", a.failed));
                }
                w
            } else if j.nodes.is_empty() {
                j.reason.clone().map(|r| format!("({r})")).unwrap_or_default()
            } else {
                nodeagent::hostlist::compress(&j.nodes)
            };
            vec![
                j.id.to_string(),
                j.spec.name.chars().take(20).collect(),
                j.spec.user.clone(),
                j.state.to_string(),
                j.spec.nodes.to_string(),
                j.spec.tasks.to_string(),
                elapsed(j),
                where_,
            ]
        })
        .collect();
    table(&["JOBID", "NAME", "USER", "STATE", "NODES", "TASKS", "TIME", "NODELIST(REASON)"], rows)
}

/// `launcher nodes` table.
pub fn nodes_table(nodes: &[NodeInfo]) -> String {
    let rows = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.state.as_str().to_string(),
                format!("{}/{}", n.alloc_cpus, n.inventory.cpus),
                format!("{}/{}", n.alloc_mem_mib, n.inventory.mem_mib),
                n.inventory.addr.clone(),
                n.jobs.len().to_string(),
            ]
        })
        .collect();
    table(&["NODE", "STATE", "CPUS(A/T)", "MEM_MIB(A/T)", "ADDR", "JOBS"], rows)
}

/// A job definition's template, for `jobdef show`.
pub fn spec_details(spec: &launcher_proto::JobSpec) -> String {
    let mut s = String::new();
    let mut kv = |k: &str, v: String| s.push_str(&format!("{k:>12}: {v}\n"));
    kv("queue", spec.queue.clone());
    kv(
        "resources",
        format!("{} node(s), {} task(s), {} cpu(s)/task", spec.nodes, spec.tasks, spec.cpus_per_task)
            + &if spec.mem_mib > 0 { format!(", {} MiB/node", spec.mem_mib) } else { String::new() },
    );
    if let Some(t) = spec.time_limit_s {
        kv("time limit", duration(t * 1_000_000));
    }
    kv("command", if spec.script.is_some() { "(script)".to_string() } else { spec.command.join(" ") });
    for (k, v) in &spec.env {
        kv("env", format!("{k}={v}"));
    }
    if let Some(a) = &spec.array {
        kv("array", a.to_string());
    }
    kv("attempts", spec.retry.attempts.to_string());
    for r in &spec.retry.evaluate_on_exit {
        kv("retry rule", retry_rule_text(r));
    }
    s
}

fn retry_rule_text(r: &launcher_proto::ExitRule) -> String {
    let mut conds = Vec::new();
    if let Some(x) = &r.on_exit_code {
        conds.push(format!("exit={x}"));
    }
    if let Some(x) = &r.on_reason {
        conds.push(format!("reason={x}"));
    }
    if let Some(x) = &r.on_status_reason {
        conds.push(format!("status={x}"));
    }
    let action = match r.action {
        launcher_proto::ExitAction::Retry => "retry",
        launcher_proto::ExitAction::Exit => "exit",
    };
    format!("{action}:{}", conds.join(","))
}

/// `launcher show` text.
pub fn job_details(j: &JobInfo) -> String {
    let mut s = String::new();
    let mut kv = |k: &str, v: String| s.push_str(&format!("{k:>12}: {v}\n"));
    kv("job", j.id.to_string());
    kv("name", j.spec.name.clone());
    kv("user", j.spec.user.clone());
    kv("queue", j.spec.queue.clone());
    kv("state", j.state.to_string());
    if let Some(r) = &j.reason {
        kv("reason", format!("{r}: {}", j.reason_text.clone().unwrap_or_default()));
    }
    kv(
        "resources",
        format!(
            "{} node(s), {} task(s), {} cpu(s)/task{}",
            j.spec.nodes,
            j.spec.tasks,
            j.spec.cpus_per_task,
            if j.spec.mem_mib > 0 { format!(", {} MiB/node", j.spec.mem_mib) } else { String::new() }
        ),
    );
    if let Some(t) = j.spec.time_limit_s {
        kv("time limit", duration(t * 1_000_000));
    }
    let cmd = if j.spec.script.is_some() {
        format!("(script) {}", j.spec.command.join(" "))
    } else {
        j.spec.command.join(" ")
    };
    kv("command", cmd);
    kv("workdir", j.spec.cwd.clone());
    if let Some(d) = &j.spec.jobdef {
        kv("jobdef", d.clone());
    }
    if !j.spec.depends.is_empty() {
        kv("depends", j.spec.depends.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","));
    }
    if let Some(a) = &j.array {
        let spec = a.spec.as_ref().map(|s| s.to_string()).unwrap_or_default();
        kv(
            "array",
            format!(
                "{spec}{}: {} children; {} succeeded, {} failed, {} running, {} runnable, {} pending",
                if a.spec.as_ref().is_some_and(|s| s.sequential) { " SEQUENTIAL" } else { "" },
                a.size,
                a.succeeded,
                a.failed,
                a.running,
                a.runnable,
                a.pending
            ),
        );
    }
    if let Some(sh) = &j.spec.share {
        kv("share", format!("{sh} (priority {})", j.spec.scheduling_priority));
    }
    if j.array.is_some() {
        // The parent never runs itself: each child has its own attempts.
        kv("attempts", format!("up to {} per child", j.spec.retry.attempts));
    } else {
        kv("attempt", format!("{} of {}", j.attempt, j.spec.retry.attempts));
    }
    for r in &j.spec.retry.evaluate_on_exit {
        kv("retry rule", retry_rule_text(r));
    }
    if !j.nodes.is_empty() {
        kv("nodes", j.nodes.join(","));
    }
    let took = elapsed(j);
    if j.array.is_none() || took != "-" {
        kv("elapsed", took);
    }
    if let Some(c) = j.exit_code {
        kv("exit code", c.to_string());
    }
    if !j.tasks.is_empty() {
        s.push('\n');
        let rows = j
            .tasks
            .iter()
            .map(|t| {
                vec![
                    t.rank.to_string(),
                    t.node.clone(),
                    t.exit.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "running".into()),
                ]
            })
            .collect();
        s.push_str(&table(&["RANK", "NODE", "EXIT"], rows));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_lines_wait_for_newlines() {
        let mut out = Vec::new();
        let mut p = HashMap::new();
        print_stream_chunk(&mut out, &mut p, 3, Stream::Stdout, b"hel", true).unwrap();
        print_stream_chunk(&mut out, &mut p, 3, Stream::Stdout, b"lo\nwor", true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "3: hello\n");
        assert_eq!(p[&(3, Stream::Stdout)], b"wor");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(5_000_000), "5s");
        assert_eq!(duration(65_000_000), "1m05s");
        assert_eq!(duration(3_725_000_000), "1h02m05s");
    }

    #[test]
    fn aligned_table() {
        let t = table(&["A", "BB"], vec![vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
