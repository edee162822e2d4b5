/* MPI smoke test for direct launch: rank/size/hostname, an allreduce, a ring
 * exchange; with argument "abort", rank 1 calls MPI_Abort(5) while the others
 * wait in a barrier that can never complete. */
#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    if (argc > 1 && strcmp(argv[1], "abort") == 0) {
        if (rank == 1) {
            fprintf(stderr, "rank 1 aborting\n");
            MPI_Abort(MPI_COMM_WORLD, 5);
        }
        MPI_Barrier(MPI_COMM_WORLD);
        sleep(120);
    }
    int sum = 0;
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    int next = (rank + 1) % size, prev = (rank + size - 1) % size, got = -1;
    MPI_Sendrecv(&rank, 1, MPI_INT, next, 0, &got, 1, MPI_INT, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    printf("rank %d of %d on %s sum %d ring %d\n", rank, size, host, sum, got);
    MPI_Finalize();
    return 0;
}
