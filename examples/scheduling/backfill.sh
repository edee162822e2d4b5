#!/bin/sh
# Gang scheduling and EASY backfill, driven from the login node, on
# `launcher up --nodes 4 --cpus-per-node 2` (every job here takes whole
# nodes: -c 2). `gang` needs all 4 nodes at once, so it waits for `fill`; it
# is first in line and gets a reservation: every node, when fill's --time is
# up. `short` ends well before that, so it backfills onto a free node now;
# `long` could still be running then, so it waits (BackfillReserved). When
# fill is cancelled, gang starts at once, and long after it; fill, cancelled
# while running, ends FAILED with reason Cancelled.
#   launcher up --nodes 4 --cpus-per-node 2 -- sh examples/scheduling/backfill.sh
#EXPECT exit=0 lines=12
set -e
fill=$(launcher submit --parsable --name fill -N 2 -c 2 --time 1m -- sleep 60)
gang=$(launcher submit --parsable --name gang -N 4 -c 2 --time 1m -- true)
short=$(launcher submit --parsable --name short -c 2 --time 10s -- echo "short: ran in a gap while gang waited")
long=$(launcher submit --parsable --name long -c 2 --time 5m -- echo "long: ran after gang")
launcher logs --follow "$short"
launcher queue
launcher show "$gang" | grep reason:
launcher show "$long" | grep reason:
launcher cancel "$fill" >/dev/null
echo "gang: job $gang (started when fill was cancelled)"
echo "long: job $long"
launcher logs --follow "$long"
launcher show "$fill" | grep -e state: -e reason:
