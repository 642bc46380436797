#!/usr/bin/env bash
# The rejoiner: one per region, started by pg.sh (follow.sh REGION, DIR in the environment).
# While this region is not primary it keeps the local PostgreSQL a replica of the primary:
#  - a stopped server (demoted by on_demote, or restarted after its region died) is rewound
#    against the lease holder's server when it diverged (pg_rewind; "no rewind required"
#    otherwise) and started as a replica;
#  - a replica that has not been streaming for 3 s while another server takes writes as the
#    lease holder is stopped, to be rewound the same way;
#  - a server taking writes while its agent does not hold the lease is stopped at once.
# It takes the region lock for every step, and does nothing while the role file says
# promoting or primary (the promote hook holds the same lock). A separate process, not the
# demote hook: the third region gets no hook when the primary moves between the other two.
set -uo pipefail
REGION=${1:?usage: follow.sh REGION}
. "$(dirname "$0")/lib.sh"
exec 9>"$RDIR/lock"
stuck=0 failures=0

# A fresh copy of the primary at $1 (host:port), when rewinding cannot do.
clone() {
  log "rejoin: cloning $1 with pg_basebackup"
  rm -rf "$DATA" && mkdir -m 700 "$DATA" && chown "${RUN_AS:-$(id -un)}" "$DATA" 2>/dev/null
  as_pg "$PGBIN/pg_basebackup" -h "${1%:*}" -p "${1##*:}" -U postgres -D "$DATA" -X stream -c fast \
    >>"$LOG" 2>&1 || { log "rejoin: pg_basebackup failed"; return 1; }
}

rejoin() {
  local src=$1 out
  # pg_rewind first finishes crash recovery in single-user mode, which refuses standby mode.
  rm -f "$DATA/standby.signal"
  write_follow_conf
  if ! out=$(as_pg "$PGBIN/pg_rewind" -D "$DATA" \
    --source-server="host=${src%:*} port=${src##*:} user=postgres dbname=postgres connect_timeout=2" 2>&1); then
    failures=$((failures + 1))
    log "rejoin: pg_rewind from $src failed ($failures): $(tail -1 <<<"$out")"
    # Twice (it cannot rewind, say the WAL it needs is gone): clone the primary afresh.
    ((failures < 2)) && return 1
    clone "$src" || return 1
    out="cloned"
  fi
  failures=0
  rm -f "$DATA/standby.signal"; as_pg touch "$DATA/standby.signal"
  if ! pg_start 15; then
    # Rewound, but the WAL back to the last common checkpoint is nowhere to be streamed
    # (say the primary itself was cloned since): clone it instead.
    log "rejoin: the server did not become consistent within 15 s: cloning $src"
    pg_stop 0
    clone "$src" || return 1
    as_pg touch "$DATA/standby.signal"
    pg_start 60 || { log "rejoin: the server did not start (see $LOG)"; return 1; }
    out="cloned"
  fi
  log "rejoin: replica of $src ($(tail -1 <<<"$out"))"
}

step() {
  local role="" src rec
  read -r role <"$RDIR/role" 2>/dev/null
  case $role in promoting* | primary*) stuck=0; return ;; esac
  if pg_running; then
    # One statement per step: this loop runs on busy machines beside the hooks.
    rec=$(q "SELECT pg_is_in_recovery()::text || coalesce((SELECT status FROM pg_stat_wal_receiver), '')" 2>/dev/null) ||
      return # starting or stopping
    if [[ $rec == false* ]]; then
      log "follow: the server takes writes but this region is not primary ($role): stopping it"
      pg_stop 0.75
    elif [[ $rec == truestreaming ]]; then
      stuck=0
    elif ((++stuck >= 6)); then
      # Only when there is a primary to rejoin: a replica waiting out a failover stays up.
      stuck=0
      src=$(primary_addr) || return
      log "follow: not streaming for 3 s while $src takes writes: stopping to rejoin"
      pg_stop 50
    fi
    return
  fi
  src=$(primary_addr) || return
  rejoin "$src"
}

# The server of the lease holder, if that is another region and its server takes writes
# (the holder's promote hook may still be running).
primary_addr() {
  local holder src
  holder=$(lease_holder)
  [[ -n $holder && $holder != "$REGION" ]] || return 1
  src=$(peer_addr "$holder")
  [[ $(qpeer "$src" "SELECT pg_is_in_recovery()" 2>/dev/null) == f ]] || return 1
  echo "$src"
}

while :; do
  sleep 0.5
  flock 9
  step
  flock -u 9
done
