//! Direct MPI launch with Debian's MPICH: no mpirun, no ssh, no hostfile. The
//! agents serve PMI-1 over PMI_FD and exchange fences through the controller.
//! Skips (loudly) where MPICH's compiler is not installed.

mod common;

use common::{stderr, stdout, Cluster};
use std::collections::BTreeSet;
use std::process::Command;

/// Builds mpi-tests/c/hello.c with the first of `compilers` that works.
fn build_hello(dir: &std::path::Path, compilers: &[&str]) -> Option<std::path::PathBuf> {
    let cc =
        compilers.iter().copied().find(|c| Command::new(c).arg("-show").output().is_ok_and(|o| o.status.success()))?;
    let src = common::repo_root().join("mpi-tests/c/hello.c");
    // Unique name, so the no-process-left check below cannot see another test's ranks.
    let exe = dir.join(format!("hello-{cc}-{}", std::process::id()));
    let out = Command::new(cc).arg("-O2").arg("-o").arg(&exe).arg(&src).output().ok()?;
    assert!(out.status.success(), "{cc} failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(exe)
}

/// Checks hello.c's output for `n` ranks: `rank R of N on HOST sum S ring P`.
fn check_hello(out: &str, n: u32, netns: bool) {
    let mut ranks = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 10, "{line}");
        let r: u32 = f[1].parse().unwrap();
        let sum = (n * (n - 1) / 2).to_string();
        assert_eq!((f[3], f[7]), (n.to_string().as_str(), sum.as_str()), "size and allreduce: {line}");
        assert_eq!(f[9].parse::<u32>().unwrap(), (r + n - 1) % n, "ring neighbour: {line}");
        ranks.insert(r);
        hosts.insert(f[5].to_string());
    }
    assert_eq!(ranks, (0..n).collect(), "{out}");
    if netns {
        assert_eq!(hosts.len(), 3, "ranks on three distinct nodes: {out}");
    }
}

#[test]
fn mpich_ranks_wire_up_across_nodes_and_abort_ends_everything() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = build_hello(dir.path(), &["mpicc.mpich", "mpicc"]) else {
        println!("SKIP: MPICH not installed (apt-get install mpich libmpich-dev)");
        return;
    };
    let netns = common::netns_unavailable().is_none();
    if !netns {
        println!("note: not root; the 3 nodes share loopback");
    }
    let c = Cluster::start(3, 2, netns);
    let exe_s = exe.to_str().unwrap();

    // Six ranks over three nodes, launched directly.
    let out = c.cli(&["run", "-N", "3", "-n", "6", exe_s]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    check_hello(&stdout(&out), 6, netns);

    // MPI_Abort from rank 1 while the others wait forever in a barrier: the job
    // ends with code 5 and no rank is left on any node.
    let t = std::time::Instant::now();
    let out = c.cli(&["run", "-N", "3", "-n", "6", exe_s, "abort"]);
    assert_eq!(out.status.code(), Some(5), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("rank 1 called MPI_Abort with code 5"), "{}", stderr(&out));
    assert!(t.elapsed() < std::time::Duration::from_secs(20), "abort took {:?}", t.elapsed());
    let left = Command::new("pgrep").arg("-f").arg(exe_s).output().unwrap();
    assert!(stdout(&left).trim().is_empty(), "ranks left behind: {}", stdout(&left));

    // --mpi none: no PMI; each rank is an MPI singleton of size 1.
    let out = c.cli(&["run", "-N", "1", "-n", "2", "--mpi", "none", exe_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).lines().all(|l| l.contains(" of 1 ")), "{}", stdout(&out));
}

/// Open MPI 4.1 has no PMI-1 client of its own: the agent sets FLUX_JOB_ID and
/// FLUX_PMI_LIBRARY_PATH, and Open MPI's pmix/flux component loads
/// liblauncher_pmi.so (built by `cargo test` as a dev-dependency).
#[test]
fn open_mpi_ranks_wire_up_through_our_pmi_library_and_abort_ends_everything() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = build_hello(dir.path(), &["mpicc.openmpi"]) else {
        println!("SKIP: Open MPI not installed (apt-get install openmpi-bin libopenmpi-dev)");
        return;
    };
    let netns = common::netns_unavailable().is_none();
    if !netns {
        println!("note: not root; the 3 nodes share loopback");
    }
    let c = Cluster::start(3, 2, netns);
    let exe_s = exe.to_str().unwrap();
    // ob1/tcp over the nodes' own network. No OMPI_ALLOW_RUN_AS_ROOT needed,
    // though tasks run as root here: only mpirun refuses root, not ranks.
    let mut args: Vec<String> =
        ["run", "-N", "3", "-n", "6", "--env", "OMPI_MCA_pml=ob1", "--env", "OMPI_MCA_btl=self,vader,tcp"]
            .map(String::from)
            .to_vec();
    if let Some(net) = c.subnet() {
        args.extend(["--env".into(), format!("OMPI_MCA_btl_tcp_if_include={net}")]);
    }
    args.push(exe_s.into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();

    let out = c.cli(&argv);
    assert!(out.status.success(), "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    check_hello(&stdout(&out), 6, netns);

    // MPI_Abort from rank 1 while the others wait in a barrier.
    let t = std::time::Instant::now();
    let mut abort = argv.clone();
    abort.push("abort");
    let out = c.cli(&abort);
    assert_eq!(out.status.code(), Some(5), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("rank 1 called MPI_Abort with code 5"), "{}", stderr(&out));
    assert!(t.elapsed() < std::time::Duration::from_secs(20), "abort took {:?}", t.elapsed());
    let left = Command::new("pgrep").arg("-f").arg(exe_s).output().unwrap();
    assert!(stdout(&left).trim().is_empty(), "ranks left behind: {}", stdout(&left));
}
