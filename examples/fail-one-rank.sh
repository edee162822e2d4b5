#!/bin/sh
# One rank fails: the job fails with that rank's exit code, and the other
# ranks are terminated on every node instead of running on.
#   launcher run examples/fail-one-rank.sh; echo "exit $?"
#LAUNCHER -N 2 -n 4 --name fail-one-rank
#EXPECT exit=3 lines=0
if [ "$LAUNCHER_RANK" = 2 ]; then
    echo "rank 2 giving up" >&2
    exit 3
fi
sleep 60
