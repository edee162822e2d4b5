#!/bin/sh
# Two ranks pinned to a core each; every rank prints the CPUs it may run on.
#   launcher run -l examples/affinity.sh ; launcher show <job> --bindings
# More in docs/pinning.md.
#LAUNCHER -n 2 --cpu-bind cores --name affinity
#EXPECT exit=0 lines=2
echo "rank $LAUNCHER_RANK cpus $(grep Cpus_allowed_list /proc/self/status | cut -f2) (planned $LAUNCHER_CPUS)"
