#!/bin/sh
# Direct MPI launch with Open MPI 4.1: no mpirun, no hostfile. Open MPI has no
# PMI-1 client of its own; the agent sets FLUX_JOB_ID and FLUX_PMI_LIBRARY_PATH
# so that its pmix/flux component loads launcher's liblauncher_pmi.so.
# OMPI_MCA_pml=ob1 skips probing UCX at start-up (faster on TCP clusters).
#   launcher run -l examples/mpi-hello-openmpi.sh
#LAUNCHER -N 3 -n 6 --name mpi-hello-openmpi --env OMPI_MCA_pml=ob1
#EXPECT exit=0 lines=6
#REQUIRES mpicc.openmpi
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
mpicc.openmpi -O2 -o "$dir/hello" "$dir/hello.c"
# Not exec: the shell stays to remove the build directory afterwards.
"$dir/hello"
