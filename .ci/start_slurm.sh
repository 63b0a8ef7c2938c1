#!/usr/bin/env bash
# Starts a SLURM cluster on this machine (munge + slurmctld + slurmd), as root, for the launcher
# tests: partition `debug` (the default) is this host; when the two emulated nodes of
# .ci/start_two_node_cluster.sh resolve (node1, node2 in /etc/hosts), partition `two` holds them,
# each served by its own slurmd (`slurmd -N`, own port) in its own UTS namespace, so that a task
# sees the host name of its node. Idempotent: keeps a controller that already knows every node.
set -euo pipefail
host=$(hostname -s)
extra=()
for n in node1 node2; do getent hosts "$n" >/dev/null && extra+=("$n"); done
if sinfo -h -o %T 2>/dev/null | grep -q .; then
  have=$(sinfo -h -N -o %N | sort -u | tr '\n' ' ')
  missing=0
  for n in "${extra[@]}"; do [[ " $have" == *" $n "* ]] || missing=1; done
  if [ $missing = 0 ]; then
    # Controller and nodes known; (re)start any slurmd that is not running.
    for n in "${extra[@]}"; do
      pgrep -f "^slurmd -N $n\$" >/dev/null || unshare --uts sh -c "hostname $n; exec slurmd -N $n"
    done
    exit 0
  fi
  scontrol shutdown >/dev/null 2>&1 || true
  for _ in $(seq 50); do pgrep -x slurmctld >/dev/null || break; sleep 0.2; done
fi
mkdir -p /run/munge /var/spool/slurmctld /var/log/slurm
chown munge:munge /run/munge
[ -f /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
read -r _cpus mem < <(slurmd -C | tr ' ' '\n' | awk -F= '/^CPUs=/{c=$2} /^RealMemory=/{m=$2} END{print c, m}')
# More task slots than cores (CPUs=8 + config_overrides), so 2-4 tiny training ranks fit on a
# 2-core machine; the memory is split so that the nodes together never claim more than there is.
share=$(( mem * 9 / 10 / (1 + ${#extra[@]}) ))
{
  cat <<CONF
ClusterName=local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
NodeName=${host} NodeAddr=127.0.0.1 Port=6818 CPUs=8 RealMemory=${share} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
  port=6828
  for n in "${extra[@]}"; do
    echo "NodeName=$n NodeAddr=$(getent hosts "$n" | awk '{print $1}') Port=$port CPUs=8 RealMemory=${share} State=UNKNOWN"
    port=$((port + 10))
  done
  if [ ${#extra[@]} -gt 0 ]; then
    echo "PartitionName=two Nodes=$(IFS=,; echo "${extra[*]}") MaxTime=INFINITE State=UP"
  fi
} > /etc/slurm/slurm.conf
for n in "$host" "${extra[@]}"; do mkdir -p "/var/spool/slurmd/$n"; done
slurmctld
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
pgrep -f "^slurmd -N $host\$" >/dev/null || slurmd -N "$host"
for n in "${extra[@]}"; do
  pgrep -f "^slurmd -N $n\$" >/dev/null || unshare --uts sh -c "hostname $n; exec slurmd -N $n"
done
want=$((1 + ${#extra[@]}))
for _ in $(seq 100); do
  [ "$(sinfo -h -N -o '%N %T' 2>/dev/null | grep -cE 'idle|mixed|alloc')" -ge "$want" ] && break
  sleep 0.2
done
sinfo
