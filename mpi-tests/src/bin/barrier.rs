//! Barrier latency: 5 warm-up barriers, then 50 timed ones. Rank 0 prints
//! `barrier: <us> us/op over N ranks` (the slowest rank's average).
use mpi::collective::SystemOperation;
use mpi::traits::*;

fn main() {
    let universe = mpi::initialize().expect("MPI_Init");
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    for _ in 0..5 {
        world.barrier();
    }
    let rounds = 50;
    let t0 = mpi::time();
    for _ in 0..rounds {
        world.barrier();
    }
    let dt = (mpi::time() - t0) / rounds as f64;
    let mut worst = 0f64;
    world.all_reduce_into(&dt, &mut worst, SystemOperation::max());
    if rank == 0 {
        println!("barrier: {:.1} us/op over {size} ranks", worst * 1e6);
    }
    mpi_tests::settle(&world);
}
