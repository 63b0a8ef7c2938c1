#!/usr/bin/env bash
# System packages for the multi-process tests: OpenMPI (mpirun + mpi4py), SLURM, unshare (the
# disk-full test's private tmpfs), and what the two-node emulation needs (sshd + ssh client for
# pdsh and mpirun, pdsh itself).
set -euo pipefail
need=()
command -v mpirun >/dev/null || need+=(openmpi-bin libopenmpi-dev)
command -v srun >/dev/null || need+=(slurmd slurmctld slurm-client munge)
# unshare: the disk-full test mounts a small tmpfs in a private mount namespace
command -v unshare >/dev/null || need+=(util-linux)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v pdsh >/dev/null || need+=(pdsh)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
