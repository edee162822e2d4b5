#!/bin/sh
# The script of the `train` job definition (train.toml). Its options live in
# the definition: #LAUNCHER lines in a definition's script are not read.
echo "rank $LAUNCHER_RANK of $LAUNCHER_WORLD_SIZE on node $LAUNCHER_NODE_RANK: $EPOCHS epochs, attempt $AWS_BATCH_JOB_ATTEMPT"
