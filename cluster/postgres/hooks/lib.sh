# Shared by the hooks and the rejoiner of cluster/postgres: sourced with DIR (the cluster's
# directory) and REGION set. $DIR/$REGION/env (written by pg.sh up) names this region's
# PostgreSQL: DATA, CONF, LOG, SOCK, HOST, PORT, RUN_AS, PGBIN, PEERS, BATON, BATON_ENDPOINTS,
# SERVICE.
# shellcheck shell=bash
: "${DIR:?DIR (the cluster directory) must be set}" "${REGION:?REGION must be set}"
# shellcheck source=/dev/null
. "$DIR/$REGION/env"
RDIR=$DIR/$REGION

ts() { date -u +%FT%T.%3NZ; }
log() { printf '%s %s %s\n' "$(ts)" "$REGION" "$*" >>"$DIR/hooks.log"; }

# PostgreSQL refuses to run as root: every pg command runs as $RUN_AS when we are root.
as_pg() {
  # From `/`: the PostgreSQL user may not enter the directory the agent runs in.
  if [[ -n $RUN_AS && $(id -u) == 0 ]]; then (cd / && runuser -u "$RUN_AS" -- "$@"); else "$@"; fi
}
# One statement on the local server (unix socket); prints the value, fails on any error.
# psql itself needs no runuser: the servers trust the role postgres on their socket and
# network, and skipping runuser saves the hooks ~15 ms per statement.
q() { "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres -c "$1"; }
# One statement on another region's server, given as host:port; gives up after 1 s.
qpeer() {
  "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 \
    "host=${1%:*} port=${1##*:} user=postgres dbname=postgres connect_timeout=1" -c "$2"
}
# An LSN (X/Y, hexadecimal) as one number, to compare in the shell.
lsn_num() { local x=${1%/*} y=${1#*/}; echo $(((16#$x << 32) + 16#$y)); }

# Running and not a zombie: exited processes may wait a while for PID 1 to reap them.
# Builtins only (no fork): the rejoiner calls these every step.
proc_alive() {
  local st
  read -r st <"/proc/$1/stat" 2>/dev/null || return 1
  st=${st##*) }
  [[ $st != [ZX]* ]]
}
pm_pid() {
  local p=""
  [[ -r $DATA/postmaster.pid ]] && read -r p <"$DATA/postmaster.pid" 2>/dev/null
  [[ -n $p ]] && proc_alive "$p" && echo "$p"
}
pg_running() { pm_pid >/dev/null; }
# Starts the server; waits up to $1 seconds (default 60) until it accepts connections.
pg_start() {
  as_pg "$PGBIN/pg_ctl" -D "$DATA" -o "-c config_file=$CONF/postgresql.conf" -l "$LOG" -w -t "${1:-60}" start >/dev/null
}
# Waits (25 ms steps) up to $1 tenths of a second for the postmaster $2 to be gone.
gone_within() {
  local i n
  n=$(awk "BEGIN { print int($1 * 4) }")
  for ((i = 0; i < n; i++)); do proc_alive "$2" || return 0; sleep 0.025; done
  ! proc_alive "$2"
}
# Stops the server: fast shutdown first (it ends every session at once, and lets the
# walsenders hand the replicas all WAL, so the old primary needs no rewind), immediate if
# that takes longer than $1 tenths of a second. Returns once the postmaster is gone.
pg_stop() {
  local p
  p=$(pm_pid) || return 0
  kill -INT "$p" 2>/dev/null || true
  gone_within "$1" "$p" && return 0
  kill -QUIT "$p" 2>/dev/null || true
  gone_within 100 "$p"
}

# primary_conninfo of a replica: every other region, the writable one is picked (libpq's
# target_session_attrs), so a replica follows a new primary with no reconfiguration. With
# an argument host:port: only that server (the promote hook's catch-up).
write_follow_conf() {
  local hosts=() ports=() p conninfo
  if [[ -n ${1:-} ]]; then
    conninfo="host=${1%:*} port=${1##*:}"
  else
    for p in $PEERS; do
      [[ ${p%%=*} == "$REGION" ]] && continue
      p=${p#*=}
      hosts+=("${p%:*}")
      ports+=("${p##*:}")
    done
    conninfo="host=$(IFS=,; echo "${hosts[*]}") port=$(IFS=,; echo "${ports[*]}") target_session_attrs=read-write"
  fi
  printf "primary_conninfo = '%s user=postgres application_name=%s connect_timeout=1'\n" \
    "$conninfo" "$REGION" >"$CONF/follow.conf.tmp"
  mv "$CONF/follow.conf.tmp" "$CONF/follow.conf"
}

peer_addr() { local p; for p in $PEERS; do if [[ ${p%%=*} == "$1" ]]; then echo "${p#*=}"; fi; done; }
other_regions() { local p; for p in $PEERS; do if [[ ${p%%=*} != "$REGION" ]]; then echo "${p%%=*}"; fi; done; }

# The region holding the lease (empty when vacant or the cluster cannot be asked).
lease_holder() {
  local line
  line=$("$BATON" --endpoints "$BATON_ENDPOINTS" --timeout 1s -w simple primary "$SERVICE" 2>/dev/null) || return 0
  line=${line// /} # "payments, eu-west, 9, held, ..."
  if [[ $(cut -d, -f4 <<<"$line") == held ]]; then cut -d, -f2 <<<"$line"; fi
}

set_role() { echo "$*" >"$RDIR/role.tmp" && mv "$RDIR/role.tmp" "$RDIR/role"; }
