#!/bin/bash
# The launch script recommend.py --slurm-out writes, run unchanged under a real single-node SLURM on this
# machine: installs slurm-wlm and munge from Debian, starts munged (as the munge user), slurmctld and slurmd
# on localhost with a one-node slurm.conf (proctrack/linuxproc, task/none, CPUs only), renders the script
# with --cpu-only (no GPU directives; torchrun starts 2 ranks on CPUs, gloo), submits it with sbatch, waits,
# prints the job's state and output, and stops what it started by PID.
#
#   bash bench/slurm_run.sh          (as root; about a minute after the packages are installed)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/slurm_run.XXXXXX)
host=$(hostname -s)
started_pids=()

stop_started() {
    for pid in "${started_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
}
trap stop_started EXIT

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge
fi

# munge: a key, its directories owned by the munge user, the daemon started as that user
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
chmod 400 /etc/munge/munge.key
chmod 755 /run/munge
runuser -u munge -- /usr/sbin/munged --force
sleep 1
started_pids+=("$(cat /run/munge/munged.pid)")

cpus=$(nproc)
memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
mkdir -p "$work/state" "$work/spool"
cat > "$work/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$work/slurm.conf"
slurmctld -f "$SLURM_CONF"
sleep 2
started_pids+=("$(cat "$work/slurmctld.pid")")
slurmd -f "$SLURM_CONF"
sleep 2
started_pids+=("$(cat "$work/slurmd.pid")")
for _ in $(seq 30); do
    sinfo -h -o "%t" | grep -q "idle" && break
    sleep 1
done
sinfo

# the launch script, as recommend.py writes it (2 ranks per node, CPU-only: no GPU directives)
python "$repo/scripts/recommend.py" "$repo/examples/similarity_transformer.py:SimilarityTransformer" \
    --loss "$repo/examples/ranking_loss.py:ranking_loss" --device meta --gpus-per-node 2 --cpu-only \
    --cpus-per-task "$cpus" --time 00:10:00 --job-name simtx-local --train-script examples/train.py \
    --slurm-out "$work/job.sh" > /dev/null
echo "--- rendered launch script ($work/job.sh) ---"
cat "$work/job.sh"

job=$(sbatch --parsable --chdir "$repo" --output "$work/job.out" "$work/job.sh")
echo "--- submitted job $job ---"
state=PENDING
for _ in $(seq 600); do
    state=$(scontrol show job "$job" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
    case "$state" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;; esac
    sleep 1
done
exit_code=$(scontrol show job "$job" | sed -n 's/.*ExitCode=\([0-9:]*\).*/\1/p')
echo "--- job output ---"
cat "$work/job.out"
echo "--- job $job: state $state, exit code $exit_code ---"
[ "$state" = COMPLETED ]
