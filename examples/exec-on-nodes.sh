#!/bin/sh
# launcher exec: from the first node of a 2-node job, run a command on every
# node of the job, as mpirun/mpiexec do through $LAUNCHER_RSH (see docs/mpi.md).
#   launcher run -l examples/exec-on-nodes.sh
#LAUNCHER -N 2 -n 2 --name exec-on-nodes --mpi none
#EXPECT exit=0 lines=4
[ "$LAUNCHER_NODE_RANK" = 0 ] || exit 0
cat "$LAUNCHER_HOSTFILE"
for node in $(echo "$LAUNCHER_NODELIST" | tr , ' '); do
    "$LAUNCHER_RSH" "$node" 'echo "hello from $LAUNCHER_NODENAME"' || exit 1
done
