#!/usr/bin/env bash
# Emulates two compute nodes of two ranks each on this one machine, for the multi-node launch
# tests (tests/cluster/):
#   * host names node1 -> 127.0.0.2 and node2 -> 127.0.0.3 (/etc/hosts; all of 127/8 is loopback);
#   * one sshd per node, listening on that node's address only and running in its own UTS
#     namespace, so `ssh node2 hostname` prints node2; root logs in with a key, as pdsh, the
#     deepspeed launcher and mpirun do on a real cluster;
#   * SLURM with the two nodes in partition `two` (see start_slurm.sh).
# What is not emulated: separate network stacks, file systems or process tables (every "node"
# sees every process and the same disk, which stands in for the shared file system).
# Idempotent: re-running keeps what already answers. Root only (it edits /etc/hosts, starts daemons).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/install_system_packages.sh"
declare -A addr=([node1]=127.0.0.2 [node2]=127.0.0.3)
for n in node1 node2; do
  grep -qE "^${addr[$n]}[[:space:]]+$n\$" /etc/hosts || echo "${addr[$n]} $n" >> /etc/hosts
done
# ssh: host keys, a root key authorised for itself, one sshd per node.
ssh-keygen -A >/dev/null
mkdir -p /run/sshd /root/.ssh && chmod 700 /root/.ssh
[ -f /root/.ssh/id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519
touch /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys
grep -qF "$(cat /root/.ssh/id_ed25519.pub)" /root/.ssh/authorized_keys || cat /root/.ssh/id_ed25519.pub >> /root/.ssh/authorized_keys
for n in node1 node2; do
  if [ "$(ssh -o BatchMode=yes -o ConnectTimeout=3 -o StrictHostKeyChecking=no "$n" hostname 2>/dev/null)" = "$n" ]; then
    continue
  fi
  cat > "/etc/ssh/sshd_$n.conf" <<CONF
ListenAddress ${addr[$n]}
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd-$n.pid
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
CONF
  unshare --uts sh -c "hostname $n; exec /usr/sbin/sshd -f /etc/ssh/sshd_$n.conf"
done
touch /root/.ssh/known_hosts
for n in node1 node2; do
  ssh-keygen -R "$n" >/dev/null 2>&1 || true
  for _ in $(seq 50); do
    key=$(ssh-keyscan -t ed25519 "$n" 2>/dev/null) && [ -n "$key" ] && break
    sleep 0.1
  done
  echo "$key" >> /root/.ssh/known_hosts
done
for n in node1 node2; do
  got=$(ssh -o BatchMode=yes "$n" hostname)
  [ "$got" = "$n" ] || { echo "start_two_node_cluster: ssh $n answered '$got'" >&2; exit 1; }
done
PDSH_RCMD_TYPE=ssh pdsh -w node1,node2 hostname | sort
bash "$here/start_slurm.sh"
