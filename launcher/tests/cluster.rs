//! Multi-process tests: a real controller and real agents (each in its own
//! network namespace when run as root), driven through the real CLI.

mod common;

use common::{stderr, stdout, Cluster};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn namespaced(n: usize) -> Option<Cluster> {
    if let Some(why) = common::netns_unavailable() {
        println!("SKIP: multi-node namespace test needs root and iproute2: {why}");
        return None;
    }
    Some(Cluster::start(n, 2, true))
}

#[test]
fn three_namespaced_nodes_run_six_ranks_block_wise() {
    let Some(c) = namespaced(3) else { return };
    let out = c.cli(&[
        "run",
        "-N",
        "3",
        "-n",
        "6",
        "--",
        "sh",
        "-c",
        "echo $LAUNCHER_RANK $(hostname) $LAUNCHER_NODE_RANK $LAUNCHER_WORLD_SIZE",
    ]);
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    let mut by_rank: BTreeMap<u32, (String, String)> = BTreeMap::new();
    for line in stdout(&out).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "line {line:?}");
        assert_eq!(f[3], "6", "world size");
        assert!(
            by_rank.insert(f[0].parse().unwrap(), (f[1].to_string(), f[2].to_string())).is_none(),
            "rank printed twice"
        );
    }
    assert_eq!(by_rank.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5]);
    let hosts: BTreeSet<&String> = by_rank.values().map(|(h, _)| h).collect();
    assert_eq!(hosts.len(), 3, "three distinct nodes: {by_rank:?}");
    // Block distribution: ranks 2k and 2k+1 share node rank k.
    for r in 0..6u32 {
        assert_eq!(by_rank[&r].1, (r / 2).to_string(), "rank {r} node rank");
        assert_eq!(by_rank[&r].0, by_rank[&(r - r % 2)].0, "rank {r} shares a host with its block");
    }
}

#[test]
fn one_failing_rank_fails_the_job_with_its_exit_code() {
    let Some(c) = namespaced(3) else { return };
    let out =
        c.cli(&["run", "-N", "3", "-n", "6", "--", "sh", "-c", "if [ $LAUNCHER_RANK = 4 ]; then exit 7; fi; sleep 60"]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("rank 4 ended with exit 7"), "{}", stderr(&out));
    let jobs = c.json(&["queue", "--all", "--json"]);
    let job = &jobs.as_array().unwrap()[0];
    assert_eq!(job["state"], "Failed");
    assert_eq!(job["reason"], "NonZeroExit");
    assert_eq!(job["exit_code"], 7);
    let tasks = job["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 6);
    assert_eq!(tasks[4]["exit"]["Code"], 7);
    // The others were terminated, not left running for 60 s.
    for (i, t) in tasks.iter().enumerate() {
        if i != 4 {
            assert!(t["exit"]["Signal"].is_number(), "rank {i}: {t}");
        }
    }
}

#[test]
fn logs_show_stdout_and_stderr_per_rank() {
    let c = Cluster::start(2, 2, false);
    let out = c.cli(&[
        "submit",
        "--parsable",
        "-N",
        "2",
        "-n",
        "2",
        "--",
        "sh",
        "-c",
        "echo out$LAUNCHER_RANK; echo err$LAUNCHER_RANK >&2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let j = c.wait_job(&id, Duration::from_secs(30));
    assert_eq!(j["state"], "Succeeded");
    let all = c.cli(&["logs", &id]);
    assert_eq!(stdout(&all).lines().collect::<BTreeSet<_>>(), BTreeSet::from(["out0", "out1"]));
    assert_eq!(stderr(&all).lines().collect::<BTreeSet<_>>(), BTreeSet::from(["err0", "err1"]));
    let one = c.cli(&["logs", &id, "--rank", "1", "-l"]);
    assert_eq!(stdout(&one), "1: out1\n");
}

#[test]
fn script_directives_are_honoured_and_flags_override_them() {
    let c = Cluster::start(2, 2, false);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.sh");
    std::fs::write(&script, "#!/bin/sh\n#LAUNCHER -N 2 -n 4\n#LAUNCHER --name from-script --env GREETING=hi\necho \"$GREETING $LAUNCHER_RANK of $LAUNCHER_WORLD_SIZE $1\"\n").unwrap();
    let out = c.cli(&["run", "-l", script.to_str().unwrap(), "arg1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: BTreeSet<String> = stdout(&out).lines().map(String::from).collect();
    let want: BTreeSet<String> = (0..4).map(|r| format!("{r}: hi {r} of 4 arg1")).collect();
    assert_eq!(lines, want);
    let out = c.cli(&["run", "-n", "3", script.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 3, "command-line -n overrides the directive");
    let jobs = c.json(&["queue", "--all", "--json"]);
    assert_eq!(jobs[0]["spec"]["name"], "from-script");

    // A Slurm script runs as it is: its #SBATCH lines count, below #LAUNCHER
    // lines; one launcher has no equivalent for is skipped, with a warning.
    let slurm = dir.path().join("slurm.sh");
    std::fs::write(
        &slurm,
        "#!/bin/sh\n#SBATCH --job-name=from-sbatch\n#SBATCH -N 2\n#SBATCH -p default\n#SBATCH --ntasks-per-node=2\n#SBATCH --account=physics\n#LAUNCHER -n 2\necho \"$SLURM_JOB_NAME $SLURM_PROCID of $SLURM_NTASKS on node $SLURM_NODEID\"\n",
    )
    .unwrap();
    let out = c.cli(&["run", slurm.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: BTreeSet<String> = stdout(&out).lines().map(String::from).collect();
    let want: BTreeSet<String> = (0..2).map(|r| format!("from-sbatch {r} of 2 on node {r}")).collect();
    assert_eq!(lines, want, "-N 2 and the name from #SBATCH, -n 2 from #LAUNCHER");
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("ignoring `#SBATCH")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("slurm.sh:6") && warnings[0].contains("--account"), "{}", warnings[0]);

    // A text file without `#!` (and not executable) is a script too, run by /bin/sh.
    let plain = dir.path().join("plain.sh");
    std::fs::write(&plain, "#LAUNCHER --name plain\necho \"$LAUNCHER_JOB_NAME ran\"\n").unwrap();
    let out = c.cli(&["run", plain.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "plain ran\n");
}

#[test]
fn export_passes_the_submitting_shells_variables_as_slurm_does() {
    let c = Cluster::start(1, 1, false);
    let show = "echo \"[$MY_VAR] [$OTHER] job=$LAUNCHER_JOB_ID\"";
    // The shell runs inside some other job: its LAUNCHER_JOB_ID must not leak in.
    let shell = [("MY_VAR", "from-shell"), ("OTHER", "too"), ("LAUNCHER_JOB_ID", "999")];
    let run = |args: &[&str], extra: &[(&str, &str)]| {
        let env: Vec<(&str, &str)> = shell.iter().chain(extra).copied().collect();
        let out = c.cli_env(&[&["run"], args, &["--", "sh", "-c", show]].concat(), &env);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        let (vars, job) = text.trim().split_once(" job=").unwrap_or_else(|| panic!("{text}"));
        assert_ne!(job, "999", "an exported LAUNCHER_JOB_ID replaced the job's own");
        assert!(job.parse::<u64>().is_ok(), "{text}");
        vars.to_string()
    };
    assert_eq!(run(&[], &[]), "[] []", "the default passes nothing");
    assert_eq!(run(&["--export=ALL"], &[]), "[from-shell] [too]");
    assert_eq!(run(&["--export", "MY_VAR,OTHER=set"], &[]), "[from-shell] [set]");
    assert_eq!(run(&["--export=ALL", "--env", "OTHER=env-wins"], &[]), "[from-shell] [env-wins]");
    // $LAUNCHER_EXPORT is the default, like Slurm's SBATCH_EXPORT; the flag still wins.
    assert_eq!(run(&[], &[("LAUNCHER_EXPORT", "MY_VAR")]), "[from-shell] []");
    assert_eq!(run(&["--export=NONE"], &[("LAUNCHER_EXPORT", "ALL")]), "[] []");
    let out = c.cli_env(&["run", "--export=ALL,NONE", "--", "true"], &shell);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("ALL and NONE"), "{}", stderr(&out));
}

#[test]
fn cancel_terminates_a_running_job_and_time_limit_ends_another() {
    let c = Cluster::start(2, 2, false);
    let id = stdout(&c.cli(&["submit", "--parsable", "-N", "2", "-n", "2", "--", "sleep", "60"])).trim().to_string();
    // Wait until it runs, then cancel.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.json(&["show", &id, "--json"])["state"] != "Running" {
        assert!(std::time::Instant::now() < deadline, "job never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = c.cli(&["cancel", &id]);
    assert!(stdout(&out).contains("terminating"), "{}", stdout(&out));
    let j = c.wait_job(&id, Duration::from_secs(20));
    assert_eq!((j["state"].as_str(), j["reason"].as_str()), (Some("Failed"), Some("Cancelled")));

    let out = c.cli(&["run", "--time", "2s", "--", "sleep", "60"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("--time limit"), "{}", stderr(&out));
    let jobs = c.json(&["queue", "--all", "--json"]);
    assert_eq!(jobs.as_array().unwrap().last().unwrap()["reason"], "Timeout");

    // Cancelling a waiting job: it never starts.
    let big = stdout(&c.cli(&["submit", "--parsable", "-N", "2", "-n", "4", "-c", "1", "--", "sleep", "30"]))
        .trim()
        .to_string();
    let waiting = stdout(&c.cli(&["submit", "--parsable", "-N", "2", "-n", "4", "--", "true"])).trim().to_string();
    let show = c.json(&["show", &waiting, "--json"]);
    assert_eq!(show["state"], "Runnable");
    assert!(["Resources", "Priority"].contains(&show["reason"].as_str().unwrap()), "{show}");
    c.cli(&["cancel", &waiting, &big]);
    assert_eq!(c.wait_job(&waiting, Duration::from_secs(10))["state"], "Cancelled");
}

#[test]
fn nodes_and_queue_have_json_and_tables() {
    let c = Cluster::start(3, 2, false);
    let nodes = c.json(&["nodes", "--json"]);
    let names: BTreeSet<&str> = nodes.as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["node1", "node2", "node3"]));
    assert!(nodes.as_array().unwrap().iter().all(|n| n["inventory"]["cpus"] == 2 && n["state"] == "Idle"));
    let t = stdout(&c.cli(&["nodes"]));
    assert!(t.starts_with("NODE") && t.contains("node3") && t.contains("idle"), "{t}");
    let q = stdout(&c.cli(&["queue"]));
    assert!(q.starts_with("JOBID"), "{q}");
    // sbatch's words, so `awk '{print $4}'` finds the id.
    let out = stdout(&c.cli(&["submit", "--", "true"]));
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words[..3], ["Submitted", "batch", "job"], "{out}");
    assert_eq!(c.show(words[3])["id"], words[3].parse::<u64>().unwrap(), "{out}");
    // sbatch --wait: exit with the job's code once it (every child) has ended.
    let out = c.cli(&["submit", "--wait", "--", "sh", "-c", "sleep 0.3; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("Submitted batch job "), "{}", stdout(&out));
    let out =
        c.cli(&["submit", "-W", "--parsable", "--array", "0-3", "--", "sh", "-c", "[ $LAUNCHER_ARRAY_INDEX != 2 ]"]);
    assert_ne!(out.status.code(), Some(0), "an array with a failed child fails");
    let id = stdout(&out).trim().to_string();
    assert_eq!(c.show(&id)["array"]["succeeded"], 3, "it waited for every child");
    let out = c.cli(&["submit", "-W", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn users_may_cancel_only_their_own_jobs() {
    let c = Cluster::start(1, 2, false);
    let bob = c.dir.path().join("bob.cred");
    let out = c.cli(&["user", "add", "bob", "--out", bob.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let as_bob = |args: &[&str]| c.cli_env(args, &[("LAUNCHER_CRED", bob.to_str().unwrap())]);
    // Bob is not an admin.
    let out = as_bob(&["token", "create"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not an admin"), "{}", stderr(&out));
    let admins = stdout(&c.cli(&["submit", "--parsable", "--", "sleep", "30"])).trim().to_string();
    let out = as_bob(&["cancel", &admins]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not your job"), "{}", stderr(&out));
    assert_ne!(c.json(&["show", &admins, "--json"])["state"], "Cancelled");
    let bobs = stdout(&as_bob(&["submit", "--parsable", "--", "sleep", "30"])).trim().to_string();
    assert_eq!(c.json(&["show", &bobs, "--json"])["spec"]["user"], "bob");
    // squeue-style filters: by user (--me: the credential's), state, queue, id.
    let users = |out: std::process::Output| -> Vec<String> {
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        v.as_array().unwrap().iter().map(|j| j["spec"]["user"].as_str().unwrap().to_string()).collect()
    };
    c.wait_state(&bobs, "Running", Duration::from_secs(20));
    assert_eq!(users(as_bob(&["queue", "--me", "--json"])), ["bob"]);
    assert_eq!(users(c.cli(&["queue", "-u", "admin", "--json"])), ["admin"]);
    assert_eq!(users(c.cli(&["queue", "-t", "running,pending", "-q", "default", "--json"])).len(), 2);
    assert_eq!(users(c.cli(&["queue", "-j", &bobs, "--json"])), ["bob"]);
    assert!(users(c.cli(&["queue", "--state", "succeeded", "--json"])).is_empty());
    let out = c.cli(&["queue", "--state", "done"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("expected submitted, pending"), "{}", stderr(&out));
    // scancel-style filters pick among the caller's own jobs unless --user is given.
    let out = as_bob(&["cancel", "--state", "running,waiting"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
    assert!(stdout(&out).starts_with(&format!("job {bobs}: ")), "{}", stdout(&out));
    assert_eq!(c.json(&["show", &admins, "--json"])["state"], "Running", "bob's filter reached the admin's job");
    let out = as_bob(&["cancel"]);
    assert_eq!(out.status.code(), Some(2), "no ids and no filter: {}", stderr(&out));
    // The admin may cancel anyone's.
    assert!(c.cli(&["cancel", &admins]).status.success());
    for id in [&admins, &bobs] {
        let j = c.wait_job(id, Duration::from_secs(20));
        assert!(["Cancelled", "Failed"].contains(&j["state"].as_str().unwrap()), "{j}");
    }
}

/// Nobody reads `up`'s stderr any more (`launcher up ... 2>&1 | head -1`):
/// it still runs its command to the end and tears its namespaces down.
#[test]
fn up_runs_its_command_and_tears_down_when_its_stderr_is_closed() {
    if let Some(why) = common::netns_unavailable() {
        println!("SKIP: multi-node namespace test needs root and iproute2: {why}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let done = d.path().join("done");
    let mut up = std::process::Command::new(common::bin())
        .args(["up", "--nodes", "2", "--state-dir"])
        .arg(d.path().join("state"))
        .args(["--", "sh", "-c", r#"sleep 1; launcher nodes --json > "$1""#, "sh"])
        .arg(&done)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the first line (it names the bridge), then close the pipe.
    let mut first = String::new();
    {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(up.stderr.take().unwrap());
        r.read_line(&mut first).unwrap();
    }
    let status = up.wait().unwrap();
    assert!(status.success(), "up ended with {status} after its stderr closed; first line: {first}");
    let nodes: serde_json::Value = serde_json::from_slice(&std::fs::read(&done).unwrap()).unwrap();
    assert_eq!(nodes.as_array().map(Vec::len), Some(2), "the command ran against the cluster: {nodes}");
    let bridge = first.split("bridge ").nth(1).and_then(|s| s.split_whitespace().next()).expect("bridge named");
    let links = std::process::Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(bridge), "bridge {bridge} left behind");
}
