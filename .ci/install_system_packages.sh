#!/usr/bin/env bash
# System packages for the multi-process tests: OpenMPI (mpirun + mpi4py), a one-node SLURM, unshare.
set -euo pipefail
need=()
command -v mpirun >/dev/null || need+=(openmpi-bin libopenmpi-dev)
command -v srun >/dev/null || need+=(slurmd slurmctld slurm-client munge)
# unshare: the disk-full test mounts a small tmpfs in a private mount namespace
command -v unshare >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
