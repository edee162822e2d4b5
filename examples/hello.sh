#!/bin/sh
# The main job: 8 ranks over 4 nodes, each saying where it runs.
#   launcher run -l examples/hello.sh
#LAUNCHER -N 4 -n 8 --name hello
#EXPECT exit=0 lines=8
echo "rank $LAUNCHER_RANK of $LAUNCHER_WORLD_SIZE on $(hostname) (node $LAUNCHER_NODE_RANK, local rank $LAUNCHER_LOCAL_RANK)"
