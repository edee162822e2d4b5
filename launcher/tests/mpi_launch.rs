//! MPI launch policies beyond the basic wire-up (tests/mpi.rs): the finalize
//! policy (`--finalize-grace`, ranks that exit before `MPI_Finalize`), `PMI_PORT`
//! for ranks behind descriptor-closing wrappers, and `mpirun`/`mpiexec` inside an
//! allocation through the job's hostfiles and `launcher exec`. Real MPICH and
//! Open MPI over namespaced nodes; each part skips loudly when its MPI is missing.

mod common;

use common::{stderr, stdout, Cluster};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn compile(cc: &str, src: &str, dir: &Path, name: &str) -> Option<PathBuf> {
    if !Command::new(cc).arg("-show").output().is_ok_and(|o| o.status.success()) {
        return None;
    }
    // Unique names, so the no-process-left checks cannot see another test's ranks.
    let exe = dir.join(format!("{name}-{}", std::process::id()));
    let out =
        Command::new(cc).arg("-O2").arg("-o").arg(&exe).arg(common::repo_root().join("mpi-tests/c").join(src)).output();
    let out = out.ok()?;
    assert!(out.status.success(), "{cc} failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(exe)
}

fn none_left(exe: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = Command::new("pgrep").arg("-f").arg(exe).output().unwrap();
        if stdout(&left).trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left behind: {}", stdout(&left));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines `rank R of N ...` of a run, as the set of ranks seen.
fn ranks_of(out: &str, size: u32) -> Vec<u32> {
    let mut r: Vec<u32> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[0] == "rank" && f[3] == size.to_string()).then(|| f[1].parse().unwrap())
        })
        .collect();
    r.sort();
    r
}

#[test]
fn finalize_policy_and_pmi_port() {
    let dir = tempfile::tempdir().unwrap();
    let (Some(fin), Some(hello)) = (
        compile("mpicc.mpich", "finalize.c", dir.path(), "fin"),
        compile("mpicc.mpich", "hello.c", dir.path(), "hello-port"),
    ) else {
        println!("SKIP: MPICH not installed (apt-get install mpich libmpich-dev)");
        return;
    };
    let netns = common::netns_unavailable().is_none();
    let c = Cluster::start(2, 2, netns);
    let fin_s = fin.to_str().unwrap();

    // A rank that exits 0 after MPI_Init but before MPI_Finalize fails the job at
    // once: its peers would otherwise wait in the next barrier forever.
    let t = Instant::now();
    let out = c.cli(&["run", "-N", "2", "-n", "4", fin_s, "early-exit"]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("rank 1 ended with exit 0 after MPI_Init but before MPI_Finalize"),
        "{}",
        stderr(&out)
    );
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    none_left(fin_s);

    // Every rank finalized and some exited 0, but rank 1 lingers (a teardown
    // hang): killed after the grace, counted as a clean exit.
    let t = Instant::now();
    let out = c.cli(&["run", "-N", "2", "-n", "4", "--finalize-grace", "1", fin_s, "linger"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(ranks_of(&stdout(&out), 4), vec![0, 1, 2, 3]);
    assert!(stderr(&out).contains("rank 1 killed after --finalize-grace 1s"), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    let jobs = c.json(&["queue", "--all", "--json"]);
    let last = jobs.as_array().unwrap().last().unwrap();
    assert_eq!(last["state"], "Succeeded");
    assert!(last["tasks"][1]["exit"]["KilledAfterFinalize"].is_object(), "{last}");
    none_left(fin_s);

    // A clean run is unaffected.
    let out = c.cli(&["run", "-N", "2", "-n", "4", fin_s]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));

    // PMI_PORT: a wrapper closes the inherited PMI_FD and unsets it; MPICH then
    // connects to PMI_PORT and identifies itself with PMI_ID.
    let wrap = dir.path().join("close-fds.sh");
    std::fs::write(&wrap, "#!/bin/bash\n[ -n \"$PMI_FD\" ] && eval \"exec ${PMI_FD}<&-\"\nunset PMI_FD\nexec \"$@\"\n")
        .unwrap();
    std::fs::set_permissions(&wrap, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = c.cli(&["run", "-N", "2", "-n", "4", wrap.to_str().unwrap(), hello.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(ranks_of(&stdout(&out), 4), vec![0, 1, 2, 3], "{}", stdout(&out));
}

#[test]
fn mpirun_inside_an_allocation_with_launcher_exec() {
    let dir = tempfile::tempdir().unwrap();
    let netns = common::netns_unavailable().is_none();
    let c = Cluster::start(2, 2, netns);

    // Hostfiles in both formats, and the exec relay (through the job's `rsh`
    // wrapper, as `launcher` need not be on the tasks' PATH) with its refusals.
    let script = "if [ $LAUNCHER_NODE_RANK = 0 ]; then cat $LAUNCHER_HOSTFILE $LAUNCHER_HOSTFILE_MPICH; \
                  $LAUNCHER_RSH node2 'hostname; echo to-stderr >&2; exit 3'; echo rc=$?; \
                  $LAUNCHER_RSH --node node1 -- printenv LAUNCHER_JOB_ID; \
                  $LAUNCHER_RSH --node node9 -- true; echo rc9=$?; fi";
    let out = c.cli(&["run", "-N", "2", "-n", "2", "-c", "2", "--mpi", "none", "sh", "-c", script]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let o = stdout(&out);
    assert!(o.contains("node1 slots=2\nnode2 slots=2\nnode1:2\nnode2:2\n"), "{o}");
    if netns {
        assert!(o.contains("node2\nrc=3\n"), "remote hostname and exit code: {o}");
    } else {
        assert!(o.contains("rc=3\n"), "{o}");
    }
    assert!(stderr(&out).contains("to-stderr"), "{}", stderr(&out));
    assert!(o.lines().any(|l| l.parse::<u64>().is_ok()), "job id printed by the remote command: {o}");
    assert!(o.contains("rc9=255"), "{o}");
    assert!(stderr(&out).contains("node \"node9\" is not part of job"), "{}", stderr(&out));

    // The remote command dies when its caller goes away, and when the job ends.
    let tag = 40_000 + std::process::id() % 20_000;
    let script = format!(
        "[ $LAUNCHER_NODE_RANK = 0 ] || exit 0; c() {{ pgrep -x sleep -a | grep -c \" $1$\"; }}; \
         $LAUNCHER_RSH node2 sleep {tag} & p=$!; sleep 1; echo before=$(c {tag}); kill $p; sleep 1; \
         echo after=$(c {tag}); $LAUNCHER_RSH node2 sleep {} & sleep 1; echo left=$(c {})",
        tag + 1,
        tag + 1
    );
    let out = c.cli(&["run", "-N", "2", "-n", "2", "--mpi", "none", "bash", "-c", &script]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("before=1\nafter=0\nleft=1\n"), "{}", stdout(&out));
    let deadline = Instant::now() + Duration::from_secs(5);
    while Command::new("pgrep").arg("-f").arg(format!("^sleep {}$", tag + 1)).status().unwrap().success() {
        assert!(Instant::now() < deadline, "the remote command outlived its job");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Outside a job it says what is wrong.
    let out = c.cli(&["exec", "node1", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains("LAUNCHER_EXEC_SOCK is not set"), "{}", stderr(&out));

    if !netns {
        println!("SKIP: mpiexec/mpirun across nodes need network namespaces (root): {:?}", common::netns_unavailable());
        return;
    }
    // MPICH's hydra, starting its proxies with launcher exec.
    match compile("mpicc.mpich", "hello.c", dir.path(), "hello-hydra") {
        None => println!("SKIP: MPICH not installed (apt-get install mpich libmpich-dev)"),
        Some(exe) => {
            let cmd = format!(
                "[ $LAUNCHER_NODE_RANK = 0 ] || exit 0; mpiexec.hydra -f $LAUNCHER_HOSTFILE_MPICH \
                 -launcher ssh -launcher-exec $LAUNCHER_RSH -iface eth0 -n 4 {}",
                exe.display()
            );
            let out = c.cli(&["run", "-N", "2", "-n", "2", "-c", "2", "--mpi", "none", "-t", "2m", "sh", "-c", &cmd]);
            assert!(out.status.success(), "stderr: {}", stderr(&out));
            assert_eq!(ranks_of(&stdout(&out), 4), vec![0, 1, 2, 3], "{}", stdout(&out));
            assert!(stdout(&out).contains(" on node2 "), "ranks on the second node: {}", stdout(&out));
            none_left(exe.to_str().unwrap());
        }
    }
    // Open MPI's mpirun with launcher exec as its rsh agent.
    match compile("mpicc.openmpi", "hello.c", dir.path(), "hello-ompi") {
        None => println!("SKIP: Open MPI not installed (apt-get install openmpi-bin libopenmpi-dev)"),
        Some(exe) => {
            let cmd = format!(
                "[ $LAUNCHER_NODE_RANK = 0 ] || exit 0; mpirun.openmpi --allow-run-as-root --hostfile $LAUNCHER_HOSTFILE \
                 --mca plm rsh --mca ras ^slurm --mca plm_rsh_agent $LAUNCHER_RSH --mca oob_tcp_if_include eth0 \
                 --mca btl_tcp_if_include eth0 --mca pml ob1 --mca btl self,vader,tcp -n 4 {}",
                exe.display()
            );
            let out = c.cli(&["run", "-N", "2", "-n", "2", "-c", "2", "--mpi", "none", "-t", "2m", "sh", "-c", &cmd]);
            assert!(out.status.success(), "stderr: {}", stderr(&out));
            assert_eq!(ranks_of(&stdout(&out), 4), vec![0, 1, 2, 3], "{}", stdout(&out));
            assert!(stdout(&out).contains(" on node2 "), "ranks on the second node: {}", stdout(&out));
            none_left(exe.to_str().unwrap());
        }
    }
}
