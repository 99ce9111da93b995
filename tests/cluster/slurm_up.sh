#!/usr/bin/env bash
# Start a real two-node Slurm cluster on this one machine (munged, slurmctld, slurmd node1 + node2),
# for the tests marked `slurm`. Run as root on Debian 12, no systemd needed:
#   apt-get install -y slurmctld slurmd slurm-client munge && bash tests/cluster/slurm_up.sh
# Both nodes are 127.0.0.1 on their own slurmd port; each claims 2 CPUs and no GPU. Idempotent:
# a cluster that already answers `sinfo` is left as it is. `bash tests/cluster/slurm_up.sh down` stops it.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
STATE=/var/spool/slurmctld
LOGS=/var/log/slurm

down() {
    pkill -x slurmd || true
    pkill -x slurmctld || true
    pkill -x munged || true
}

if [[ "${1:-}" == "down" ]]; then
    down
    exit 0
fi

if sinfo -h >/dev/null 2>&1 && [[ "$(sinfo -h -o %T | sort -u)" == "idle" ]]; then
    echo "slurm: already up"
    sinfo
    exit 0
fi

for name in node1 node2; do
    grep -qE "^127\.0\.0\.1\s.*\b$name\b" /etc/hosts || echo "127.0.0.1 $name" >>/etc/hosts
done

# munge: a key of its own, the daemon run as the munge user.
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
[[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged

mkdir -p "$STATE" /var/spool/slurmd.node1 /var/spool/slurmd.node2 "$LOGS"
cat >"$CONF" <<CONF
ClusterName=vqvdm-ci
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE
SlurmdSpoolDir=/var/spool/slurmd.%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
JobRequeue=1
SchedulerParameters=bf_interval=2
ReturnToService=2
MpiDefault=none
KillWait=30
InactiveLimit=0
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=node1 NodeAddr=127.0.0.1 Port=17001 CPUs=2 RealMemory=8000 State=UNKNOWN
NodeName=node2 NodeAddr=127.0.0.1 Port=17002 CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

down_daemons_only() { pkill -x slurmd || true; pkill -x slurmctld || true; }
down_daemons_only
sleep 1
/usr/sbin/slurmctld -c -i
/usr/sbin/slurmd -N node1
/usr/sbin/slurmd -N node2

for _ in $(seq 60); do
    if [[ "$(sinfo -h -o %T 2>/dev/null | sort -u)" == "idle" ]]; then
        echo "slurm: up"
        sinfo
        exit 0
    fi
    sleep 1
done
echo "slurm: the nodes did not come up; see $LOGS" >&2
sinfo -N -l >&2 || true
tail -20 "$LOGS"/*.log >&2 || true
exit 1
