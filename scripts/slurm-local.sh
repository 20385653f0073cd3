#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try (and test) `hydra/launcher=slurm` without a real cluster.
#
#   scripts/slurm-local.sh [--install] start     # (apt-get install slurm-wlm munge first with --install)
#   eval "$(scripts/slurm-local.sh env)"          # SLURM_CONF for sbatch, squeue, scancel and the sweep
#   scripts/slurm-local.sh status | stop
#
# Needs root (slurmd runs jobs as their users) and Debian's `slurm-wlm` + `munge` (Slurm 22.05); no systemd,
# no cgroups, no accounting database. Everything lives in $MLCAP_SLURM_DIR (default
# ~/.cache/mlcap/slurm-local): slurm.conf, its own munge key and socket, state, logs, pid files. Several
# clusters can run side by side with their own folder and MLCAP_SLURM_PORT (slurmctld's port; slurmd uses the
# next one). Details: docs/runs.md#a-local-slurm-cluster.
set -euo pipefail

DIR="${MLCAP_SLURM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlcap/slurm-local}"
PORT="${MLCAP_SLURM_PORT:-6817}"

die() { echo "slurm-local: $*" >&2; exit 1; }

install_packages() {
    command -v apt-get >/dev/null || die "--install needs apt-get (Debian/Ubuntu); install slurm-wlm and munge yourself"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {
    local node mem cpus
    node="$(slurmd -C | head -1)"  # NodeName=<host> CPUs=... RealMemory=...
    cpus="$(sed -E 's/.* CPUs=([0-9]+).*/\1/' <<<"$node")"
    mem="$(sed -E 's/.* RealMemory=([0-9]+).*/\1/' <<<"$node")"
    cat >"$DIR/slurm.conf" <<EOF
# Written by scripts/slurm-local.sh: a one-node cluster without cgroups or accounting.
ClusterName=mlcap-local
SlurmctldHost=$(hostname -s)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that asks no memory takes the whole node and the next one waits.
DefMemPerCPU=$((mem / cpus))
# Finished jobs stay visible to squeue for 30 minutes: without accounting, the launcher reads their end there.
MinJobAge=1800
ReturnToService=2
# A cancelled job's processes get SIGKILL 10 s after SIGTERM (default 30), so a re-run finds its folder free.
KillWait=10
MpiDefault=none
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    command -v slurmctld >/dev/null || die "slurmctld is not installed: run with --install (apt-get install slurm-wlm munge)"
    [[ $(id -u) == 0 ]] || die "must run as root (slurmd starts jobs as their users)"
    getent hosts "$(hostname -s)" >/dev/null || die "the short hostname $(hostname -s) does not resolve: add it to /etc/hosts"
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
        echo "slurm-local: already running in $DIR"
        return
    fi
    mkdir -p "$DIR"/{munge,state,spool,log}
    chmod 700 "$DIR/munge"
    [[ -f "$DIR/munge/munge.key" ]] || mungekey --create --keyfile="$DIR/munge/munge.key"
    write_config
    if ! alive "$DIR/munge/munged.pid"; then
        munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
            --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    fi
    export SLURM_CONF="$DIR/slurm.conf"
    alive "$DIR/slurmctld.pid" || slurmctld -i
    alive "$DIR/slurmd.pid" || slurmd
    local state=""
    for _ in $(seq 60); do  # the node registers within seconds
        state="$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)"
        [[ "$state" == idle || "$state" == mixed || "$state" == allocated ]] && break
        sleep 1
    done
    [[ "$state" == idle || "$state" == mixed || "$state" == allocated ]] ||
        die "the node is not idle after 60 s (state: ${state:-none}); see $DIR/log/"
    echo "slurm-local: one-node cluster up in $DIR (node $state). Before sbatch or a sweep:"
    echo "  eval \"\$($0 env)\""
}

stop_pid() {  # stop_pid <pid file> <name>
    if alive "$1"; then
        local pid
        pid="$(cat "$1")"
        kill "$pid"
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        echo "slurm-local: stopped $2 ($pid)"
    fi
    rm -f "$1"
}

stop() {
    stop_pid "$DIR/slurmd.pid" slurmd
    stop_pid "$DIR/slurmctld.pid" slurmctld
    stop_pid "$DIR/munge/munged.pid" munged
}

status() {
    local up=0
    for pair in "munged:$DIR/munge/munged.pid" "slurmctld:$DIR/slurmctld.pid" "slurmd:$DIR/slurmd.pid"; do
        if alive "${pair#*:}"; then echo "${pair%%:*}: running ($(cat "${pair#*:}"))"; else echo "${pair%%:*}: stopped"; up=1; fi
    done
    if [[ $up == 0 ]]; then
        SLURM_CONF="$DIR/slurm.conf" sinfo -N
        SLURM_CONF="$DIR/slurm.conf" squeue
    fi
    return $up
}

INSTALL=0
if [[ "${1:-}" == --install ]]; then INSTALL=1; shift; fi
[[ $INSTALL == 1 ]] && install_packages
case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
env) echo "export SLURM_CONF='$DIR/slurm.conf'" ;;
*) [[ $INSTALL == 1 && -z "${1:-}" ]] || die "usage: $0 [--install] start|stop|status|env" ;;
esac
