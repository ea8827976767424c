#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for forgetscale's tests and CI
# (tests/test_sweep_slurm.py) and for trying `forgetscale sweep --executor slurm` locally.
#
#   bash scripts/local-slurm.sh start    install (Debian/Ubuntu, as root) and start munged, mariadbd +
#                                        slurmdbd (so that sacct works: submitit needs it to see
#                                        cancelled jobs), slurmctld, slurmd; wait until the node is idle
#   bash scripts/local-slurm.sh stop     cancel all jobs, stop the daemons (by their pid files)
#   bash scripts/local-slurm.sh stop --purge   ... and delete $SLURM_BASE (next start from scratch)
#   bash scripts/local-slurm.sh status   which daemons run; sinfo/squeue when the controller answers
#
# Idempotent: start only starts what is not running, stop only stops what runs. No systemd needed.
# Everything (configs, state, logs, pid files, database) lives under $SLURM_BASE; only the munge key
# (/etc/munge) and a symlink /etc/slurm/slurm.conf -> $SLURM_BASE/etc/slurm.conf live outside it (the
# symlink lets sbatch/squeue/submitit work without SLURM_CONF; stop removes it).
# Adapted from the recipe verified on these machines (/work/shared/recipes/start-slurm.sh).
#
# Env knobs:
#   SLURM_BASE=/tmp/forgetscale-slurm   every folder above it must be readable by the mysql user
#   WITH_ACCOUNTING=1                    0: no mariadb/slurmdbd (sacct then fails; submitit cannot
#                                        tell a cancelled job from a finished one)
#   NICE="nice -n 10"                    prefix for the daemons (they share the CPUs with the jobs)
#   DB_PORT=13306                        TCP port of the private mariadbd (127.0.0.1 only)
#   SLURM_PARTITION=debug                the one partition (default partition of the cluster)
set -euo pipefail

T0=$(date +%s%N)
el() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '%d.%d' $((ms / 1000)) $(((ms % 1000) / 100)); }
log() { echo "[local-slurm +$(el)s] $*"; }
die() { echo "[local-slurm +$(el)s] ERROR: $*" >&2; exit 1; }

BASE=${SLURM_BASE:-/tmp/forgetscale-slurm}
WITH_ACCOUNTING=${WITH_ACCOUNTING:-1}
NICE=${NICE:-nice -n 10}
DB_PORT=${DB_PORT:-13306}
CLUSTER=${SLURM_CLUSTER_NAME:-local}
PARTITION=${SLURM_PARTITION:-debug}
export SLURM_CONF=$BASE/etc/slurm.conf

# pid file -> running pid of the expected program (never anything found by name)
running() {  # $1=pidfile $2=comm
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$2" ]
}
wait_for() {  # $1=description $2=timeout-seconds $3...=command
  local what=$1 to=$2; shift 2
  local end=$(( $(date +%s) + to ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "timeout (${to}s) waiting for $what"
    sleep 0.2
  done
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ================================================================================== start
do_start() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
  command -v apt-get >/dev/null || die "needs a Debian/Ubuntu machine (apt-get)"
  mkdir -p "$BASE"/{etc,state/ctld,state/d,log,run}
  chmod 755 "$BASE"

  # ---------------------------------------------------------------- 1. packages
  local pkgs="munge slurmctld slurmd slurm-client" missing="" p
  [ "$WITH_ACCOUNTING" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    log "installing:$missing"
    # Without systemd, the packages' postinst would start the daemons through init.d with the
    # default (missing) config: block that with a temporary policy-rc.d unless one exists.
    local tmp_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; tmp_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    if ! $NICE apt-get install -y -q --no-install-recommends $missing > "$BASE/log/apt.log" 2>&1; then
      log "apt-get install failed; running apt-get update and retrying"
      apt-get update -q > /dev/null
      # shellcheck disable=SC2086
      $NICE apt-get install -y -q --no-install-recommends $missing > "$BASE/log/apt.log" 2>&1 \
        || { [ $tmp_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; tail -20 "$BASE/log/apt.log"; die "apt-get install failed"; }
    fi
    if [ $tmp_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    log "packages installed"
  else
    log "packages already installed"
  fi

  # ---------------------------------------------------------------- 2. munge
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key; chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge; chmod 0755 /run/munge
  if running /run/munge/munged.pid munged; then
    log "munged already running (pid $(cat /run/munge/munged.pid))"
  else
    rm -f /run/munge/munged.pid
    $NICE runuser -u munge -- /usr/sbin/munged
    wait_for "munged" 20 sh -c 'munge -n | unmunge'
    log "munged started (pid $(cat /run/munge/munged.pid))"
  fi

  # ---------------------------------------------------------------- 3. slurm.conf
  local host hw topo mem realmem acct newconf conf_changed=0
  host=$(hostname -s)
  # topology as slurmd sees it, and memory a bit below what it detects (or the node is drained)
  hw=$(/usr/sbin/slurmd -C | head -1)
  topo=$(echo "$hw" | grep -o 'CPUs=[0-9]* Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*')
  mem=$(echo "$hw" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  realmem=$(( mem * 95 / 100 ))
  if [ "$WITH_ACCOUNTING" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
  else
    acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  newconf=$(cat <<EOF
# generated by forgetscale scripts/local-slurm.sh
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$BASE/state/ctld
SlurmdSpoolDir=$BASE/state/d
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
# no systemd / cgroup delegation here: track processes via /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$acct
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdTimeout=60
# scancel: SIGTERM (which submitit ignores), SIGKILL 1 s later (tests cancel jobs mid-run)
KillWait=1
MinJobAge=600
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 $topo RealMemory=$realmem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
  if [ ! -f "$SLURM_CONF" ] || [ "$(cat "$SLURM_CONF")" != "$newconf" ]; then
    echo "$newconf" > "$SLURM_CONF"; conf_changed=1; log "wrote $SLURM_CONF"
  fi
  mkdir -p /etc/slurm
  if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" != "$SLURM_CONF" ]; then
    if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
      mv /etc/slurm/slurm.conf /etc/slurm/slurm.conf.orig
    fi
    ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf; log "linked /etc/slurm/slurm.conf -> $SLURM_CONF"
  fi

  # ---------------------------------------------------------------- 4. accounting: mariadb + slurmdbd
  if [ "$WITH_ACCOUNTING" = 1 ]; then
    local db=$BASE/db
    mkdir -p "$db/data" "$db/run"; chown -R mysql:mysql "$db"
    if running "$db/run/mysqld.pid" mariadbd; then
      log "mariadbd already running (pid $(cat "$db/run/mysqld.pid"))"
    else
      if [ ! -d "$db/data/mysql" ]; then
        $NICE mariadb-install-db --no-defaults --user=mysql --datadir="$db/data" \
          --auth-root-authentication-method=socket > "$BASE/log/mariadb-install.log" 2>&1 \
          || { tail "$BASE/log/mariadb-install.log"; die "mariadb-install-db failed"; }
        log "initialised the mariadb datadir"
      fi
      nohup $NICE /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$db/data" \
        --socket="$db/run/mysqld.sock" --pid-file="$db/run/mysqld.pid" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$BASE/log/mariadb.err" \
        --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 > /dev/null 2>&1 &
      wait_for "mariadbd" 60 mariadb-admin --socket="$db/run/mysqld.sock" ping
      log "mariadbd started (pid $(cat "$db/run/mysqld.pid"))"
    fi
    mariadb --socket="$db/run/mysqld.sock" -e "
      CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
      CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    # slurmdbd reads slurmdbd.conf beside $SLURM_CONF; it must be 0600 and owned by SlurmUser
    cat > "$BASE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmpw
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
EOF
    chmod 600 "$BASE/etc/slurmdbd.conf"
    if running "$BASE/run/slurmdbd.pid" slurmdbd; then
      log "slurmdbd already running (pid $(cat "$BASE/run/slurmdbd.pid"))"
    else
      $NICE /usr/sbin/slurmdbd
      wait_for "slurmdbd on port 6819" 60 port_open 6819
      log "slurmdbd started (pid $(cat "$BASE/run/slurmdbd.pid"))"
    fi
  fi

  # ---------------------------------------------------------------- 5. slurmctld + slurmd
  if running "$BASE/run/slurmctld.pid" slurmctld; then
    log "slurmctld already running (pid $(cat "$BASE/run/slurmctld.pid"))"
  else
    $NICE /usr/sbin/slurmctld
    wait_for "slurmctld" 60 scontrol ping
    log "slurmctld started (pid $(cat "$BASE/run/slurmctld.pid"))"
  fi
  if running "$BASE/run/slurmd.pid" slurmd; then
    log "slurmd already running (pid $(cat "$BASE/run/slurmd.pid"))"
  else
    $NICE /usr/sbin/slurmd
    wait_for "slurmd pid file" 30 running "$BASE/run/slurmd.pid" slurmd
    log "slurmd started (pid $(cat "$BASE/run/slurmd.pid"))"
  fi
  if [ "$conf_changed" = 1 ]; then scontrol reconfigure >/dev/null 2>&1 || true; fi

  # ---------------------------------------------------------------- 6. wait for the node to be idle
  local end st
  end=$(( $(date +%s) + 90 ))
  while :; do
    st=$(sinfo -h -n "$host" -o '%T' 2>/dev/null || true)
    case "$st" in idle|mixed|allocated) break ;; esac
    case "$st" in drain*|down*|inval*|fail*)
      # e.g. after an unclean stop; ReturnToService=2 normally handles this
      scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    [ "$(date +%s)" -lt "$end" ] || { sinfo -R; die "node $host not ready after 90s (state: '$st')"; }
    sleep 0.2
  done
  sinfo
  log "Slurm ready: node $host $st, partition $PARTITION, accounting=$WITH_ACCOUNTING; start took $(el)s"
}

# ================================================================================== stop
stop_pid() {  # $1=pidfile $2=comm
  if ! running "$1" "$2"; then log "$2 not running"; return 0; fi
  local pid; pid=$(cat "$1")
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do [ -d /proc/"$pid" ] || break; sleep 0.2; done
  if [ -d /proc/"$pid" ]; then kill -KILL "$pid" 2>/dev/null; log "$2 (pid $pid) needed SIGKILL"; sleep 0.5
  else log "stopped $2 (pid $pid)"; fi
}

do_stop() {
  set +e
  # 1. cancel jobs so that no orphaned slurmstepd / job processes outlive the daemons
  if [ -f "$SLURM_CONF" ] && running "$BASE/run/slurmctld.pid" slurmctld; then
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null
      for _ in $(seq 1 150); do
        [ -z "$(squeue -h -t PD,R,CG,S,CF -o %A 2>/dev/null | head -1)" ] && break; sleep 0.2
      done
    fi
  fi
  # 2. daemons, compute side first
  stop_pid "$BASE/run/slurmd.pid" slurmd
  stop_pid "$BASE/run/slurmctld.pid" slurmctld
  stop_pid "$BASE/run/slurmdbd.pid" slurmdbd
  stop_pid "$BASE/db/run/mysqld.pid" mariadbd
  stop_pid /run/munge/munged.pid munged
  # 3. the /etc/slurm/slurm.conf symlink made by start
  if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$SLURM_CONF" ]; then
    rm -f /etc/slurm/slurm.conf; log "removed the /etc/slurm/slurm.conf symlink"
    [ -e /etc/slurm/slurm.conf.orig ] && mv /etc/slurm/slurm.conf.orig /etc/slurm/slurm.conf
  fi
  if [ "${1:-}" = --purge ]; then rm -rf "$BASE"; log "purged $BASE"; fi
  log "stopped in $(el)s"
}

# ================================================================================== status
do_status() {
  local up=0 d
  for d in "munged /run/munge/munged.pid" "mariadbd $BASE/db/run/mysqld.pid" \
           "slurmdbd $BASE/run/slurmdbd.pid" "slurmctld $BASE/run/slurmctld.pid" \
           "slurmd $BASE/run/slurmd.pid"; do
    set -- $d
    if running "$2" "$1"; then echo "$1: running (pid $(cat "$2"))"; up=$((up + 1))
    else echo "$1: stopped"; fi
  done
  if [ -f "$SLURM_CONF" ] && command -v sinfo >/dev/null && scontrol ping >/dev/null 2>&1; then
    sinfo; squeue
  fi
  [ "$up" -gt 0 ]
}

case "${1:-}" in
  start) do_start ;;
  stop) shift; do_stop "$@" ;;
  status) do_status ;;
  *) echo "usage: $0 start|stop [--purge]|status" >&2; exit 2 ;;
esac
