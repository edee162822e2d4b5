//! Small helpers shared by the MPI test programs in `src/bin/`.

/// This host's name, as the ranks report it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The first line of the MPI library's version string ("MPICH Version: 4.0.2", "Open MPI v4.1.4, ...").
pub fn library() -> String {
    let v = mpi::environment::library_version().unwrap_or_default();
    let first = v.lines().next().unwrap_or("").split(',').next().unwrap_or("");
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Exit with a message on stderr, as a failed check.
pub fn fail(rank: i32, msg: &str) -> ! {
    eprintln!("rank {rank}: FAILED: {msg}");
    std::process::exit(1)
}

/// A barrier right before `MPI_Finalize` (when `universe` drops). Debian's
/// MPICH over UCX TCP sometimes never returns from `MPI_Finalize`
/// (shared/research/mpi-wiring.md §5); lining the ranks up first makes that
/// rarer. The launcher tests still tolerate it.
pub fn settle(world: &mpi::topology::SimpleCommunicator) {
    use mpi::traits::*;
    world.barrier();
}
