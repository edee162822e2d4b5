#!/bin/sh
# A job that outlives its --time limit is sent SIGTERM (then SIGKILL after the
# grace period) and ends FAILED with reason Timeout.
#   launcher run examples/time-limit.sh
#LAUNCHER -N 1 -n 1 --time 2s --name time-limit
#EXPECT exit=143 lines=1
trap 'echo "got SIGTERM, cleaning up"; exit 143' TERM
sleep 60 &
wait
