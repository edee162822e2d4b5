//! Every script in examples/ runs on a local cluster and meets its `#EXPECT` line.
//! A `#REQUIRES prog...` line names programs the example needs on PATH (an MPI
//! compiler, python3); without them the example is skipped with a SKIP line.

mod common;

use common::{stderr, stdout, Cluster};

#[test]
fn every_example_runs_as_documented() {
    let netns = common::netns_unavailable().is_none();
    if !netns {
        println!("note: not root; examples run on loopback agents");
    }
    let c = Cluster::start(4, 2, netns);
    let dir = common::repo_root().join("examples");
    let mut ran = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "sh")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("#EXPECT "))
            .unwrap_or_else(|| panic!("{} has no #EXPECT line", path.display()));
        let missing: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("#REQUIRES "))
            .flat_map(str::split_whitespace)
            .filter(|prog| !on_path(prog))
            .collect();
        if !missing.is_empty() {
            println!("SKIP: {}: {} not found on PATH", path.display(), missing.join(", "));
            continue;
        }
        let mut exit = None;
        let mut lines = None;
        for kv in expect.split_whitespace() {
            match kv.split_once('=') {
                Some(("exit", v)) => exit = Some(v.parse::<i32>().unwrap()),
                Some(("lines", v)) => lines = Some(v.parse::<usize>().unwrap()),
                _ => panic!("bad #EXPECT in {}: {kv}", path.display()),
            }
        }
        let out = c.cli(&["run", "-l", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), exit, "{}: stderr {}", path.display(), stderr(&out));
        if let Some(n) = lines {
            assert_eq!(stdout(&out).lines().count(), n, "{}: stdout {}", path.display(), stdout(&out));
        }
        ran += 1;
    }
    assert!(ran >= 4, "found only {ran} examples");
    // The #REQUIRES check itself.
    assert!(on_path("sh") && !on_path("launcher-no-such-program"));
    // hello.sh's 8 ranks landed on 4 distinct nodes.
    let out = c.cli(&["run", "-l", dir.join("hello.sh").to_str().unwrap()]);
    let hosts: std::collections::BTreeSet<String> =
        stdout(&out).lines().map(|l| l.split(" on ").nth(1).unwrap().split(' ').next().unwrap().to_string()).collect();
    if netns {
        assert_eq!(hosts.len(), 4, "{}", stdout(&out));
    }
}

/// Whether `prog` is an executable file in a PATH directory.
fn on_path(prog: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .any(|p| std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
