/* MPI lifecycle cases for the launcher's PMI policy tests:
 *   finalize early-exit : after a first barrier (so every rank is past MPI_Init), rank 1
 *                         exits 0; the others wait in a second barrier
 *   finalize linger     : every rank finalizes, then rank 1 keeps running (a teardown hang)
 *   finalize            : init, allreduce, finalize
 * Every rank prints "rank R of N" after MPI_Init. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    printf("rank %d of %d\n", rank, size);
    fflush(stdout);
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "early-exit") == 0) {
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank == 1)
            exit(0);
        MPI_Barrier(MPI_COMM_WORLD);
        sleep(300);
    }
    int sum = 0;
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    if (strcmp(mode, "linger") == 0 && rank == 1)
        sleep(300);
    return 0;
}
