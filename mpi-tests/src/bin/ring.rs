//! Ring send/recv: a token goes once around all ranks (each adds its rank),
//! then every rank swaps a 64 KiB buffer with both neighbours. Each rank prints
//! `rank R ring ok`; rank 0 also prints the token's final value.
use mpi::traits::*;

fn main() {
    let universe = mpi::initialize().expect("MPI_Init");
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let next = world.process_at_rank((rank + 1) % size);
    let prev = world.process_at_rank((rank + size - 1) % size);

    // Token around the ring, started and finished by rank 0.
    if rank == 0 {
        next.send(&0i64);
        let (token, _) = prev.receive::<i64>();
        let want = (size as i64 * (size as i64 - 1)) / 2;
        if token != want {
            mpi_tests::fail(rank, &format!("token {token}, want {want}"));
        }
        println!("ring token {token} after {size} hops");
    } else {
        let (token, _) = prev.receive::<i64>();
        next.send(&(token + rank as i64));
    }

    // Neighbour exchange of a larger buffer, both directions at once.
    let n = 8192;
    let mine: Vec<u64> = (0..n).map(|i| (rank as u64) << 32 | i).collect();
    let mut from_prev = vec![0u64; n as usize];
    mpi::point_to_point::send_receive_into(&mine[..], &next, &mut from_prev[..], &prev);
    let p = ((rank + size - 1) % size) as u64;
    if from_prev.len() != n as usize || from_prev.iter().enumerate().any(|(i, v)| *v != (p << 32 | i as u64)) {
        mpi_tests::fail(rank, "buffer from the previous rank is wrong");
    }
    println!("rank {rank} ring ok");
    mpi_tests::settle(&world);
}
