#!/bin/sh
# Dependencies between array children, driven from the login node.
# `--depend sequential` runs an array's children one after another, each once
# the one before it succeeded: step 1 sleeps longest, yet the steps run in
# order. `--depend aftercorr:ARRAY` (N_TO_N) starts child i as soon as child i
# of ARRAY succeeded, without waiting for the whole array: prep 3 is the
# quickest, so post 3 runs first. The children write what they do to files in
# the directory they were submitted from (a shared file system on a real
# cluster), so the order shows.
#   sh examples/scheduling/array-deps.sh
#EXPECT exit=0 lines=13
set -e
dir=$(mktemp -d) && trap 'rm -rf "$dir"' EXIT && cd "$dir"
steps=$(launcher submit --parsable --name steps --array 1-4 --depend sequential -- \
    sh -c 'sleep 0.$((5 - LAUNCHER_ARRAY_INDEX)); echo "step $LAUNCHER_ARRAY_INDEX" >> steps.log')
echo "steps: job $steps (children 1-4, one after another)"
prep=$(launcher submit --parsable --name prep --array 1-3 -- \
    sh -c 'sleep 0.$((9 - 3 * LAUNCHER_ARRAY_INDEX)); echo "prep $LAUNCHER_ARRAY_INDEX done" >> shards.log')
echo "prep: job $prep (children 1-3 at once)"
post=$(launcher submit --parsable --name post --array 1-3 --depend "aftercorr:$prep" -- \
    sh -c 'echo "post $LAUNCHER_ARRAY_INDEX started" >> shards.log')
echo "post: job $post (child i once child i of $prep succeeded)"
launcher logs --follow "$steps"    # waits for every child (an array's own log is empty)
launcher logs --follow "$post"
cat steps.log shards.log
