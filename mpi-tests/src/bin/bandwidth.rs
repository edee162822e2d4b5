//! Allreduce of 4 MiB (524,288 f64) per rank, timed: 3 warm-up rounds, then 10
//! measured ones. Rank 0 prints `allreduce 4 MiB: <ms> ms/op, <MB/s> MB/s` (the
//! "algorithm bandwidth", bytes per rank over time). Results are checked, so a
//! fast wrong answer fails.
use mpi::collective::SystemOperation;
use mpi::traits::*;

const LEN: usize = 4 * 1024 * 1024 / 8;

fn main() {
    let universe = mpi::initialize().expect("MPI_Init");
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let mine: Vec<f64> = (0..LEN).map(|i| (rank + 1) as f64 + (i % 1000) as f64).collect();
    let mut sum = vec![0f64; LEN];
    let rounds = 10;
    for _ in 0..3 {
        world.all_reduce_into(&mine[..], &mut sum[..], SystemOperation::sum());
    }
    world.barrier();
    let t0 = mpi::time();
    for _ in 0..rounds {
        world.all_reduce_into(&mine[..], &mut sum[..], SystemOperation::sum());
    }
    let dt = (mpi::time() - t0) / rounds as f64;
    for (i, got) in sum.iter().enumerate() {
        let want = (size * (size + 1) / 2) as f64 + size as f64 * (i % 1000) as f64;
        if *got != want {
            mpi_tests::fail(rank, &format!("element {i}: got {got}, want {want}"));
        }
    }
    // The slowest rank's time is the operation's time.
    let mut worst = 0f64;
    world.all_reduce_into(&dt, &mut worst, SystemOperation::max());
    if rank == 0 {
        let mb = (LEN * 8) as f64 / 1e6;
        println!("allreduce 4 MiB: {:.2} ms/op, {:.1} MB/s over {size} ranks", worst * 1e3, mb / worst);
    }
    mpi_tests::settle(&world);
}
