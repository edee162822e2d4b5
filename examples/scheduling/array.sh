#!/bin/sh
# An array job: 8 children (indexes 0-7), at most 4 running at once, each
# working on its own shard. Children are JOB:INDEX; the parent SUCCEEDS when
# every child does and FAILS if any child fails.
#   launcher submit examples/scheduling/array.sh     # Submitted batch job 12
#   launcher show 12                                 # children by state
#   launcher logs 12:5                               # shard 5's output
#LAUNCHER --name shards --array 0-7%4
#EXPECT state=SUCCEEDED lines=1
echo "shard $LAUNCHER_ARRAY_INDEX of 8 (array job $LAUNCHER_ARRAY_JOB_ID, AWS_BATCH_JOB_ARRAY_INDEX=$AWS_BATCH_JOB_ARRAY_INDEX)"
