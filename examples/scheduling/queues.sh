#!/bin/sh
# Compute environments and job queues, driven from the login node (creating
# and changing them needs an admin credential). An admin makes a pool of two
# nodes, still DISABLED while it is set up, and two queues on it: ex-batch
# (priority 10) and ex-urgent (priority 100, created DISABLED). A batch job
# is submitted first, an urgent one second; each needs the whole pool. Both
# wait, and `launcher show` says why. Once the queue and the pool are
# enabled, the higher-priority queue goes first although its job came later.
# The jobs note their turn in a file in the directory they were submitted
# from (a shared file system on a real cluster). Then the admin deletes the
# queues and the pool again.
#   launcher up --nodes 4 --cpus-per-node 2 -- sh examples/scheduling/queues.sh
#EXPECT exit=0 lines=13
set -e
dir=$(mktemp -d) && trap 'rm -rf "$dir"' EXIT && cd "$dir"
launcher ce create ex-pool --nodes 'node[1-2]' --disabled
launcher queue-admin create ex-batch --priority 10 --ce ex-pool
launcher queue-admin create ex-urgent --priority 100 --ce ex-pool --disabled
launcher queue-admin list
note='echo "$LAUNCHER_JOB_NAME ran on $LAUNCHER_NODELIST" >> turns'
batch=$(launcher submit --parsable -q ex-batch -N 2 -c 2 --name batch -- sh -c "$note")
urgent=$(launcher submit --parsable -q ex-urgent -N 2 -c 2 --name urgent -- sh -c "$note")
launcher show "$batch" | grep reason:
launcher show "$urgent" | grep reason:
launcher queue-admin enable ex-urgent >/dev/null
launcher ce enable ex-pool >/dev/null
echo "batch: job $batch"
echo "urgent: job $urgent"
launcher logs --follow "$batch"
uniq turns    # every rank wrote a line: one per job
launcher queue-admin delete ex-urgent >/dev/null
launcher queue-admin delete ex-batch >/dev/null
launcher ce delete ex-pool >/dev/null
