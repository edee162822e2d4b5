#!/bin/sh
# --export: which of the submitting shell's variables the tasks get, in
# Slurm's syntax (launcher's default is NONE; `--export=ALL` passes your whole
# environment, such as an activated venv's PATH). Here: your TERM, if set,
# and a value given on the spot. Exits 1 where a variable did not arrive.
#   launcher run -l examples/export.sh
#LAUNCHER -N 2 --export=TERM,GREETING=hello
#EXPECT exit=0 lines=2
[ "$GREETING" = hello ] || { echo "GREETING was not exported" >&2; exit 1; }
echo "$GREETING from rank $LAUNCHER_RANK on $LAUNCHER_NODENAME (TERM=${TERM:-unset in the submitting shell})"
