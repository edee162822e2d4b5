#!/bin/sh
# A workflow driven from the login node (this script is not a job): prepare
# shards with an array job, train once every shard succeeded (afterok), then
# report however training ended (afterany). Prints the job ids, then follows
# the report to the end.
#   sh examples/scheduling/pipeline.sh
#EXPECT exit=0 lines=4
set -e
here=$(dirname "$0")
launcher jobdef register "$here/train.toml" >/dev/null
prep=$(launcher submit --parsable "$here/array.sh")
echo "prepare: job $prep"
train=$(launcher submit --parsable --jobdef train --depend "afterok:$prep")
echo "train: job $train (after $prep succeeds)"
report=$(launcher submit --parsable --name report --depend "afterany:$train" -- echo "report: training job $train has ended")
echo "report: job $report (after $train ends)"
launcher logs --follow "$report"
