#!/bin/sh
# Fair share, driven from the login node (creating policies and queues needs
# an admin credential). Policy ex-fair gives share teamA weight 0.5 and teamB
# weight 1: lower weight gets more, so teamA gets twice teamB's CPUs. Both
# teams submit 8 one-CPU jobs to a queue on the 8 CPUs of `launcher up
# --nodes 4 --cpus-per-node 2`, teamB first; the queue starts DISABLED so
# both are waiting when it is enabled. A FIFO queue would run teamB's 8 jobs
# first; this one starts 5 of teamA's and 3 of teamB's (docs/scheduling.md,
# Fair share, works it through). The jobs run until ./go exists in the
# directory they were submitted from (a shared file system on a real
# cluster), so what runs can be looked at.
#   launcher up --nodes 4 --cpus-per-node 2 -- sh examples/scheduling/fair-share.sh
#EXPECT exit=0 lines=8
set -e
dir=$(mktemp -d) && trap 'rm -rf "$dir"' EXIT && cd "$dir"
launcher policy create ex-fair --share-decay 3600 --share teamA=0.5 --share teamB=1
launcher queue-admin create ex-research --ce default --policy ex-fair --disabled
work='until [ -e go ]; do sleep 0.1; done'
b=$(launcher submit --parsable -q ex-research --share teamB --name teamB --array 1-8 -t 1m -- sh -c "$work")
a=$(launcher submit --parsable -q ex-research --share teamA --name teamA --array 1-8 -t 1m -- sh -c "$work")
launcher queue-admin enable ex-research >/dev/null
launcher show "$a" | grep -e array: -e reason:
launcher show "$b" | grep -e array: -e reason:
touch go
launcher logs --follow "$a"    # waits for every child (an array's own log is empty)
launcher logs --follow "$b"
echo "teamA: job $a"
echo "teamB: job $b"
launcher queue-admin delete ex-research >/dev/null
launcher policy delete ex-fair >/dev/null
