#!/bin/sh
# Direct MPI launch with MPICH: no mpirun, no hostfile. Each rank builds a tiny
# MPI program and runs it; the node agents serve PMI-1 to the ranks (PMI_FD)
# and wire them up across nodes. Prints one line per rank, after an allreduce.
#   launcher run -l examples/mpi-hello-mpich.sh
#LAUNCHER -N 3 -n 6 --name mpi-hello-mpich
#EXPECT exit=0 lines=6
#REQUIRES mpicc.mpich
set -e
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/hello.c" <<'C'
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int rank, size, sum = 0;
    char host[256] = {0};
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    gethostname(host, sizeof host - 1);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("MPI rank %d of %d on %s: sum of ranks %d\n", rank, size, host, sum);
    MPI_Finalize();
    return 0;
}
C
mpicc.mpich -O2 -o "$dir/hello" "$dir/hello.c"
# Not exec: the shell stays to remove the build directory afterwards.
"$dir/hello"
