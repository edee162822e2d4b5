//! Allreduce correctness: sums, maxima and minima of integers and floats over
//! several message sizes (a few bytes up to 1 MiB), checked on every rank
//! against the closed-form answer. Rank 0 prints `allreduce ok: N checks`.
use mpi::collective::SystemOperation;
use mpi::traits::*;

fn main() {
    let universe = mpi::initialize().expect("MPI_Init");
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let mut checks = 0;
    for len in [1usize, 7, 1024, 131_072] {
        // Element i of rank r is r * len + i.
        let mine: Vec<i64> = (0..len).map(|i| rank as i64 * len as i64 + i as i64).collect();
        let mut sum = vec![0i64; len];
        world.all_reduce_into(&mine[..], &mut sum[..], SystemOperation::sum());
        let ranks_sum = (size as i64 * (size as i64 - 1)) / 2;
        for (i, got) in sum.iter().enumerate() {
            let want = ranks_sum * len as i64 + size as i64 * i as i64;
            if *got != want {
                mpi_tests::fail(rank, &format!("sum len {len} element {i}: got {got}, want {want}"));
            }
        }
        let mut max = vec![0i64; len];
        world.all_reduce_into(&mine[..], &mut max[..], SystemOperation::max());
        let mut min = vec![0i64; len];
        world.all_reduce_into(&mine[..], &mut min[..], SystemOperation::min());
        for i in 0..len {
            let top = (size as i64 - 1) * len as i64 + i as i64;
            if max[i] != top || min[i] != i as i64 {
                mpi_tests::fail(rank, &format!("max/min len {len} element {i}: {} / {}", max[i], min[i]));
            }
        }
        let f: Vec<f64> = (0..len).map(|i| 0.5 * (rank + 1) as f64 + i as f64).collect();
        let mut fsum = vec![0f64; len];
        world.all_reduce_into(&f[..], &mut fsum[..], SystemOperation::sum());
        for (i, got) in fsum.iter().enumerate() {
            let want = 0.25 * (size * (size + 1)) as f64 + size as f64 * i as f64;
            if (got - want).abs() > 1e-9 * want.abs().max(1.0) {
                mpi_tests::fail(rank, &format!("float sum len {len} element {i}: got {got}, want {want}"));
            }
        }
        checks += 4;
    }
    if rank == 0 {
        println!("allreduce ok: {checks} checks on {size} ranks");
    }
    mpi_tests::settle(&world);
}
