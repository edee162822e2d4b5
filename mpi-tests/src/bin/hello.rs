//! Every rank says who and where it is: `rank R of N on HOST (LIBRARY)`.
use mpi::traits::*;

fn main() {
    let universe = mpi::initialize().expect("MPI_Init");
    let world = universe.world();
    println!("rank {} of {} on {} ({})", world.rank(), world.size(), mpi_tests::hostname(), mpi_tests::library());
    mpi_tests::settle(&world);
}
