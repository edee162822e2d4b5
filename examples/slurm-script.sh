#!/bin/sh
# A Slurm batch script, unchanged: launcher reads its #SBATCH lines (and
# skips, with a warning, the ones it has no equivalent for, like --account).
#   launcher run -l examples/slurm-script.sh      (or: launcher submit examples/slurm-script.sh)
#SBATCH --job-name=from-slurm
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --time=00:05:00
#SBATCH --account=physics
#EXPECT exit=0 lines=4
echo "$SLURM_JOB_NAME: task $SLURM_PROCID of $SLURM_NTASKS on node $SLURM_NODEID ($SLURM_JOB_NUM_NODES nodes)"
