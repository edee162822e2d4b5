//! An intentional MPI_Abort: rank 1 (or the last rank of a smaller job) aborts
//! with code 7 (or the first argument) while every other rank waits in a barrier
//! that can never complete. The launcher must end the whole job with that code.
use mpi::traits::*;

fn main() {
    let code: i32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let universe = mpi::initialize().expect("MPI_Init");
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    if rank == 1.min(size - 1) {
        eprintln!("rank {rank} aborting with code {code}");
        world.abort(code);
    }
    world.barrier();
    std::thread::sleep(std::time::Duration::from_secs(120));
    mpi_tests::fail(rank, "still running 120 s after MPI_Abort");
}
