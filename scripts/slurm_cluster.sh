#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, with accounting (sacct), for the SLURM tests and for
# trying a SLURM sweep without a cluster:
#
#   scripts/slurm_cluster.sh install   # Debian/Ubuntu packages (apt-get, as root); once per machine
#   scripts/slurm_cluster.sh start     # munged, mariadbd, slurmdbd, slurmctld, slurmd; idempotent
#   eval "$(scripts/slurm_cluster.sh env)"   # SLURM_CONF for sbatch/squeue/sacct and the sweeps
#   scripts/slurm_cluster.sh status    # exit 0 when every daemon runs and the node takes jobs
#   scripts/slurm_cluster.sh stop      # cancel this cluster's jobs, stop the daemons it started
#
# Everything lives under $TI_SLURM_DIR (default /tmp/ti-slurm): configs, the munge key, the database,
# logs, and one pid file per daemon. `stop` ends only the processes whose ids `start` recorded there.
# The daemons run in the foreground of their own sessions (no systemd, no cgroups: proctrack/linuxproc,
# task/none). Ports: $TI_SLURM_PORT (default 6817) for slurmctld, +1 slurmd, +2 slurmdbd, +3 mariadbd.
set -euo pipefail

DIR=${TI_SLURM_DIR:-/tmp/ti-slurm}
PORT=${TI_SLURM_PORT:-6817}
CLUSTER=ti-test
NODE=ti-node
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server-core mariadb-client-core)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; stop goes backwards
export SLURM_CONF="$DIR/slurm.conf"

say() { echo "slurm_cluster: $*" >&2; }
die() { echo "error: $1; fix: $2" >&2; exit 2; }

pid_of() {  # the recorded pid of a daemon when that process still runs (and is ours: its command names $DIR)
  local file="$DIR/pids/$1.pid" pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  cat "/proc/$pid/cmdline" "/proc/$pid/environ" 2>/dev/null | tr '\0' '\n' | grep -q -x -F "TI_SLURM_OWNER=$DIR" \
    || return 1
  echo "$pid"
}

launch() {  # launch NAME COMMAND...: in the background, in a session of its own, its pid recorded
  local name=$1; shift
  TI_SLURM_OWNER=$DIR setsid "$@" > "$DIR/log/$name.out" 2>&1 < /dev/null &
  echo $! > "$DIR/pids/$name.pid"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 5))); do
    "$@" > /dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$what did not come up in ${seconds}s" "read the logs in $DIR/log, then run $0 stop and $0 start"
}

write_configs() {
  local cpus mem host
  # at least 4 CPUs, whatever the machine has (config_overrides): the tests' jobs mostly wait (for a
  # requeue, for each other), and a 2-core machine then runs 4 of them at once
  cpus=$(( $(nproc) > 4 ? $(nproc) : 4 ))
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  host=$(hostname -s)
  cat > "$DIR/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job starts again once the credential of its last run expired: seconds, not minutes
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs over their memory request are killed (OUT_OF_MEMORY), as cgroups would on a real cluster
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 2))
# for slurmdbd this is the munge socket the commands (sacct, sacctmgr) reach it with
AccountingStoragePass=$DIR/munge/munge.socket
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
SlurmdTimeout=20
KillWait=10
MinJobAge=60
NodeName=$NODE NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=ti-test
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/slurmdbd.conf"
}

start_munge() {
  [ -f "$DIR/munge/munge.key" ] || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/munge.key"
  launch munged munged --foreground --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
  wait_for 10 munged munge --socket="$DIR/munge/munge.socket" --no-input
}

start_mariadb() {
  local sql=(mariadb --no-defaults --socket="$DIR/db.sock" -u root)
  if [ ! -d "$DIR/db/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$DIR/db" --user=root --auth-root-authentication-method=socket \
      --skip-test-db > "$DIR/log/mariadb-install.log" 2>&1
  fi
  launch mariadbd mariadbd --no-defaults --datadir="$DIR/db" --socket="$DIR/db.sock" --port=$((PORT + 3)) \
    --bind-address=127.0.0.1 --skip-name-resolve --user=root --pid-file="$DIR/run/mariadbd.pid" \
    --log-error="$DIR/log/mariadbd.log" --innodb-buffer-pool-size=32M
  wait_for 30 mariadbd "${sql[@]}" -e "SELECT 1"
  "${sql[@]}" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'ti-test';
                  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}

start() {
  for tool in munged mariadbd slurmdbd slurmctld slurmd sacct; do
    command -v "$tool" > /dev/null || PATH=$PATH:/usr/sbin command -v "$tool" > /dev/null \
      || die "$tool is not installed" "run $0 install (as root: apt-get install ${PACKAGES[*]})"
  done
  export PATH=$PATH:/usr/sbin
  if status > /dev/null 2>&1; then
    say "already running ($SLURM_CONF)"
    return 0
  fi
  # only the daemons that are not running start (e.g. a slurmd that died); the others keep their jobs
  mkdir -p "$DIR"/{pids,log,run,state,spool,munge}
  chmod 755 "$DIR/munge"
  pid_of slurmctld > /dev/null || write_configs
  pid_of munged > /dev/null || start_munge
  pid_of mariadbd > /dev/null || start_mariadb
  if ! pid_of slurmdbd > /dev/null; then
    launch slurmdbd slurmdbd -D
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i -Q add cluster "$CLUSTER" > /dev/null 2>&1 || true
  fi
  if ! pid_of slurmctld > /dev/null; then
    launch slurmctld slurmctld -D -i
    wait_for 30 slurmctld scontrol ping
  fi
  pid_of slurmd > /dev/null || launch slurmd slurmd -D -N "$NODE"
  wait_for 30 "the node" node_takes_jobs
  say "started ($SLURM_CONF); for the commands: eval \"\$($0 env)\""
}

node_takes_jobs() {
  local state
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null) || return 1
  case "$state" in
    idle*|mixed*|allocated*) return 0 ;;
    down*|drain*) scontrol update nodename="$NODE" state=resume > /dev/null 2>&1; return 1 ;;
    *) return 1 ;;
  esac
}

stop() {
  export PATH=$PATH:/usr/sbin
  if pid_of slurmctld > /dev/null; then  # this cluster's jobs first: their processes are not the daemons'
    scancel --full --quiet --partition=debug 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  local i name pid
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    name=${DAEMONS[$i]}
    pid=$(pid_of "$name") || { rm -f "$DIR/pids/$name.pid"; continue; }
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    rm -f "$DIR/pids/$name.pid"
    say "stopped $name ($pid)"
  done
}

status() {
  export PATH=$PATH:/usr/sbin
  local name pid down=0
  for name in "${DAEMONS[@]}"; do
    if pid=$(pid_of "$name"); then echo "$name: running ($pid)"; else echo "$name: not running"; down=1; fi
  done
  [ "$down" = 0 ] && node_takes_jobs && { echo "node $NODE takes jobs; SLURM_CONF=$SLURM_CONF"; return 0; }
  return 3
}

install() {
  [ "$(id -u)" = 0 ] || die "installing packages needs root" "run: sudo $0 install"
  local apt=(apt-get install -y -q --no-install-recommends "${PACKAGES[@]}")
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" > /dev/null || { apt-get update -q > /dev/null && \
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" > /dev/null; }
  # Debian enables the packages' services; this cluster runs its own daemons instead
  if command -v systemctl > /dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now slurmctld slurmd slurmdbd munge > /dev/null 2>&1 || true
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  *) die "unknown command '${1:-}'" "use: $0 install | start | stop | status | env" ;;
esac
