#!/usr/bin/env bash
# PostgreSQL 15 across three regions behind baton. Each region (us-east, eu-west, ap-south)
# runs a PostgreSQL server, a `baton server` node and a `baton agent` for the service
# `payments` whose hooks (hooks/promote.sh, hooks/demote.sh) promote and stop the local
# server, plus the rejoiner (hooks/follow.sh) that keeps a non-primary server a replica of
# the primary. us-east starts as primary, streaming to the two replicas; commits wait for
# one replica (synchronous_standby_names = 'ANY 1 (...)'). Writes are fenced in the
# database (schema.sql): each carries baton's token, refused unless it is the token the
# server was promoted with.
#
# As root: one network namespace per region (10.78.0.11-13, the bridge and the operator's
# host 10.78.0.1 in `batonpg-ops`), like cluster/netns.sh. Not root (or BATON_PG_MODE=
# loopback): everything on 127.0.0.1, one port per listener. `up` says which.
#
#   cluster/postgres/pg.sh up                   install PostgreSQL 15 if missing (root), start all
#   cluster/postgres/pg.sh down                 stop everything, remove namespaces and $BATON_PG_DIR
#   cluster/postgres/pg.sh status               per region: processes, PostgreSQL role, lag; baton's lease
#   cluster/postgres/pg.sh kill-region REGION   SIGKILL the region's agent, rejoiner, node and PostgreSQL
#   cluster/postgres/pg.sh revive-region REGION start them again; the server rejoins as a replica
#   cluster/postgres/pg.sh switchover REGION    `baton failover payments --to REGION`
#   cluster/postgres/pg.sh psql REGION [ARGS]   psql on the region's server
#   cluster/postgres/pg.sh exec REGION|ops CMD  run CMD where that region's processes run
#   cluster/postgres/pg.sh env                  BATON_ENDPOINTS and BATON_PG (region=host:port,...)
#   cluster/postgres/pg.sh bench [--rounds N] [--patroni DIR]
#                                               `baton bench postgres` against this cluster, then
#                                               side by side with Patroni: DIR is a scratch copy of
#                                               ../shared/peers/patroni after `setup.sh install`, whose
#                                               run_all.sh runs first (~15 min); without it, the
#                                               recorded results of $BATON_PG_PATRONI_RESULTS
#
# Environment: BATON_PG_DIR (default /tmp/baton-pg), BATON_PG_MODE (netns|loopback),
# BATON_PG_PORTS (loopback: 15 ports, comma-separated: 3 client, 3 peer, 3 admin, 3 agent,
# 3 PostgreSQL; default 17101-17103, 17111-..., 17141-17143), BATON_BIN, BATON_PG_BIN
# (default /usr/lib/postgresql/15/bin), BATON_PG_USER (the user PostgreSQL runs as when
# root; default postgres).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DIR=${BATON_PG_DIR:-/tmp/baton-pg}
export BATON_PG_DIR=$DIR
PGBIN=${BATON_PG_BIN:-/usr/lib/postgresql/15/bin}
PREFIX=batonpg-
SUBNET=10.78.0
REGIONS=(us-east eu-west ap-south)
SERVICE=payments
MARK=.baton-pg

die() { echo "pg.sh: $*" >&2; exit 1; }
bin() {
  if [[ -n ${BATON_BIN:-} ]]; then echo "$BATON_BIN"
  elif [[ -x $ROOT/target/release/baton ]]; then echo "$ROOT/target/release/baton"
  elif [[ -x $ROOT/target/debug/baton ]]; then echo "$ROOT/target/debug/baton"
  else die "no baton binary: run \`cargo build --release\` or set BATON_BIN"
  fi
}
index_of() {
  local i
  for i in "${!REGIONS[@]}"; do [[ ${REGIONS[i]} == "$1" ]] && { echo "$i"; return; }; done
  die "unknown region '$1': one of ${REGIONS[*]}"
}

# The mode and addresses: fixed at `up`, read back from $DIR/cluster.env afterwards.
if [[ -r $DIR/cluster.env ]]; then
  # shellcheck source=/dev/null
  . "$DIR/cluster.env"
else
  MODE=${BATON_PG_MODE:-$([[ $(id -u) == 0 ]] && echo netns || echo loopback)}
fi
[[ $MODE == netns || $MODE == loopback ]] || die "BATON_PG_MODE must be netns or loopback, not '$MODE'"
if [[ $MODE == loopback ]]; then
  IFS=, read -r -a PORTS <<<"${BATON_PG_PORTS:-17101,17102,17103,17111,17112,17113,17121,17122,17123,17131,17132,17133,17141,17142,17143}"
  ((${#PORTS[@]} == 15)) || die "BATON_PG_PORTS needs 15 comma-separated ports, got ${#PORTS[@]}"
  addr_of() { echo 127.0.0.1; }
  client_port() { echo "${PORTS[$1]}"; }
  peer_port() { echo "${PORTS[$((3 + $1))]}"; }
  admin_port() { echo "${PORTS[$((6 + $1))]}"; }
  agent_port() { echo "${PORTS[$((9 + $1))]}"; }
  pg_port() { echo "${PORTS[$((12 + $1))]}"; }
  in_region() { shift; "$@"; }
  in_ops() { "$@"; }
  # For `spawn_in R CMD &`: the background subshell becomes CMD, so $! is CMD's pid.
  spawn_in() { shift; exec "$@"; }
else
  addr_of() { echo "$SUBNET.$((11 + $1))"; }
  client_port() { echo 7100; }
  peer_port() { echo 7200; }
  admin_port() { echo 7300; }
  agent_port() { echo 7400; }
  pg_port() { echo 5432; }
  in_region() { local r=$1; shift; ip netns exec "$PREFIX$r" "$@"; }
  spawn_in() { local r=$1; shift; exec ip netns exec "$PREFIX$r" "$@"; }
  in_ops() { ip netns exec "${PREFIX}ops" "$@"; }
fi
RUN_AS=$([[ $(id -u) == 0 ]] && echo "${BATON_PG_USER:-postgres}" || true)
# From `/`: the PostgreSQL user may not enter the checkout (a clone under a 0700 directory),
# and its tools fail or warn when they cannot.
as_pg() { if [[ -n $RUN_AS ]]; then (cd / && runuser -u "$RUN_AS" -- "$@"); else "$@"; fi; }
# "$@" in region $1's namespace (if any) as the PostgreSQL user.
pg_in() {
  local r=$1
  shift
  if [[ -n $RUN_AS ]]; then (cd / && in_region "$r" runuser -u "$RUN_AS" -- "$@"); else in_region "$r" "$@"; fi
}
endpoints() {
  local out=() i
  for i in "${!REGIONS[@]}"; do out+=("$(addr_of "$i"):$(client_port "$i")"); done
  (IFS=,; echo "${out[*]}")
}
pg_targets() {
  local out=() i
  for i in "${!REGIONS[@]}"; do out+=("${REGIONS[i]}=$(addr_of "$i"):$(pg_port "$i")"); done
  (IFS=,; echo "${out[*]}")
}
# The process in pid file $1 runs (a killed one may stay a zombie until PID 1 reaps it).
alive() {
  local st
  [[ -e $1 ]] || return 1
  st=$(cut -d')' -f2 "/proc/$(cat "$1")/stat" 2>/dev/null) || return 1
  [[ $st != " Z"* && $st != " X"* ]]
}

install_postgres() {
  [[ -x $PGBIN/postgres ]] && return
  [[ $(id -u) == 0 ]] || die "no PostgreSQL 15 at $PGBIN; as root this script installs it (apt-get install postgresql-15)"
  echo "installing PostgreSQL 15 (apt-get)..."
  # Only the binaries: no `main` cluster started on port 5432 by the package.
  mkdir -p /etc/postgresql-common
  grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf ||
    echo 'create_main_cluster = false' >>/etc/postgresql-common/createcluster.conf
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null ||
    die "apt-get install postgresql-15 failed"
  [[ -x $PGBIN/postgres ]] || die "postgresql-15 installed, but $PGBIN/postgres is missing"
}

# The region's files: env for the hooks, PostgreSQL's configuration outside its data
# directory (pg_rewind copies the source's data directory files, configuration included).
write_region() {
  local i=$1 r=${REGIONS[$1]} peers="" j sync=()
  for j in "${!REGIONS[@]}"; do
    peers+="${REGIONS[j]}=$(addr_of "$j"):$(pg_port "$j") "
    sync+=("\"${REGIONS[j]}\"")
  done
  mkdir -p "$DIR/$r/conf" "$DIR/$r/sock"
  cat >"$DIR/$r/env" <<ENV
REGION=$r
DATA=$DIR/$r/pgdata
CONF=$DIR/$r/conf
LOG=$DIR/$r/postgresql.log
SOCK=$DIR/$r/sock
HOST=$(addr_of "$i")
PORT=$(pg_port "$i")
RUN_AS=$RUN_AS
PGBIN=$PGBIN
PEERS="${peers% }"
BATON=$(bin)
BATON_ENDPOINTS=$(addr_of "$i"):$(client_port "$i"),$(endpoints)
SERVICE=$SERVICE
ENV
  cat >"$DIR/$r/conf/postgresql.conf" <<CONF
# Written by cluster/postgres/pg.sh for $r.
data_directory = '$DIR/$r/pgdata'
hba_file = '$DIR/$r/conf/pg_hba.conf'
ident_file = '$DIR/$r/conf/pg_ident.conf'
listen_addresses = '$(addr_of "$i")'
port = $(pg_port "$i")
unix_socket_directories = '$DIR/$r/sock'
max_connections = 50
shared_buffers = 32MB
wal_level = replica
wal_log_hints = on                  # pg_rewind
max_wal_senders = 10
wal_keep_size = 512MB               # a replica or a rewind finds the WAL it needs
hot_standby = on
wal_receiver_status_interval = 1s
checkpoint_timeout = 30s            # a recent common checkpoint: rewinds need less old WAL
wal_retrieve_retry_interval = 50ms  # a replica retries the primary list every 50 ms
# A commit is acknowledged once one replica has flushed it. The list names every region
# (the server's own name never matches a replica).
synchronous_standby_names = 'ANY 1 ($(IFS=,; echo "${sync[*]}"))'
synchronous_commit = on
baton.region = '$r'                 # stamped on every write by the fence trigger
include_if_exists = '$DIR/$r/conf/follow.conf'
CONF
  # Trust on the cluster's own network only: a demo, as Patroni's peer setup.
  cat >"$DIR/$r/conf/pg_hba.conf" <<HBA
local all all trust
host all all $(addr_of 0 | cut -d. -f1-3).0/24 trust
host replication all $(addr_of 0 | cut -d. -f1-3).0/24 trust
HBA
  : >"$DIR/$r/conf/pg_ident.conf"
  echo standby >"$DIR/$r/role"
  : >"$DIR/$r/postgresql.log"
  if [[ -n $RUN_AS ]]; then chown -R "$RUN_AS" "$DIR/$r/conf" "$DIR/$r/sock" "$DIR/$r/postgresql.log"; fi
}

write_node() {
  local i=$1 r=${REGIONS[$1]} a j dial="" peers=""
  a=$(addr_of "$i")
  for j in "${!REGIONS[@]}"; do
    ((j == i)) || dial+="\"$((j + 1))\" = \"$(addr_of "$j"):$(peer_port "$j")\""$'\n'
    peers+="[[peers]]"$'\n'"id = $((j + 1))"$'\n'"addr = \"$(addr_of "$j"):$(client_port "$j")\""$'\n'"region = \"${REGIONS[j]}\""$'\n\n'
  done
  cat >"$DIR/$r/node.toml" <<TOML
# Written by cluster/postgres/pg.sh: node $((i + 1)), region $r.
cluster = "pg"
id = $((i + 1))
region = "$r"
listen = "$a:$(client_port "$i")"
peer_listen = "$a:$(peer_port "$i")"
admin_listen = "127.0.0.1:$(admin_port "$i")"
data_dir = "$DIR/$r/node"

[dial]
$dial
[timing]
heartbeat = "50ms"
election_timeout_min = "200ms"
election_timeout_max = "400ms"

$peers
# A 700 ms lease (at least three heartbeats and one election timeout): a dead primary's
# lease is refilled within about a second. Moves are never held back by cooldown or flap
# limits here.
[[services]]
name = "$SERVICE"
regions = ["us-east", "eu-west", "ap-south"]
initial_primary = "us-east"
lease_ttl = "700ms"
failback = "manual"
cooldown = "1s"
flap_limit = 0
TOML
}

start_node() {
  local r=$1
  spawn_in "$r" "$(bin)" server --config "$DIR/$r/node.toml" >>"$DIR/$r/node.log" 2>&1 </dev/null &
  echo $! >"$DIR/$r/node.pid"
}
start_agent() {
  local r=$1 i
  i=$(index_of "$r")
  # shellcheck disable=SC2016
  spawn_in "$r" env DIR="$DIR" RUST_LOG=info "$(bin)" agent --service "$SERVICE" --region "$r" \
    --agent-id "agent-$r" --endpoints "$(addr_of "$i"):$(client_port "$i"),$(endpoints)" \
    --on-promote "$HERE/hooks/promote.sh" --on-demote "$HERE/hooks/demote.sh" \
    --demote-timeout 175ms --hook-timeout 20s \
    --state-file "$DIR/$r/agent.json" --http-listen "127.0.0.1:$(agent_port "$i")" \
    >>"$DIR/$r/agent.log" 2>&1 </dev/null &
  echo $! >"$DIR/$r/agent.pid"
}
start_follow() {
  local r=$1
  spawn_in "$r" env DIR="$DIR" "$HERE/hooks/follow.sh" "$r" >>"$DIR/$r/follow.log" 2>&1 </dev/null &
  echo $! >"$DIR/$r/follow.pid"
}
pg_ctl_start() {
  local r=$1
  pg_in "$r" "$PGBIN/pg_ctl" -D "$DIR/$r/pgdata" -o "-c config_file=$DIR/$r/conf/postgresql.conf" \
    -l "$DIR/$r/postgresql.log" -w -t 60 start >/dev/null
}
psql_in() {
  local r=$1 i
  shift
  i=$(index_of "$r")
  pg_in "$r" "$PGBIN/psql" -X -h "$DIR/$r/sock" -p "$(pg_port "$i")" -U postgres -d postgres "$@"
}
# Polls "$@" every 0.2 s until it succeeds, or dies with $what after $secs seconds.
until_ok() {
  local secs=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what (files in $DIR)"
    sleep 0.2
  done
}
streaming_two() { [[ $(psql_in us-east -Atc "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == 2 ]]; }
role_is_primary() { grep -q '^primary' "$DIR/$1/role"; }
lease_held() { in_ops "$(bin)" --endpoints "$(endpoints)" -w simple primary "$SERVICE" 2>/dev/null | grep -q ',held,'; }

up() {
  local b i r ns a
  b=$(bin)
  install_postgres
  [[ -e $DIR/cluster.env ]] && die "$DIR holds a cluster ($MODE): run \`$0 down\` first"
  if [[ -e $DIR && ! -e $DIR/$MARK ]] && [[ -n $(ls -A "$DIR") ]]; then
    die "$DIR exists and was not made by pg.sh; set BATON_PG_DIR to an empty or new directory"
  fi
  if [[ $MODE == netns ]]; then
    [[ $(id -u) == 0 ]] || die "netns mode needs root; BATON_PG_MODE=loopback runs on 127.0.0.1"
    [[ -e /run/netns/${PREFIX}ops ]] && die "namespace ${PREFIX}ops exists: run \`$0 down\` first"
  fi
  if [[ -n $RUN_AS ]]; then id -u "$RUN_AS" >/dev/null 2>&1 || die "no user '$RUN_AS' to run PostgreSQL as (BATON_PG_USER)"; fi
  mkdir -p "$DIR"
  touch "$DIR/$MARK"
  # The PostgreSQL user must reach its files under $DIR.
  chmod 755 "$DIR"
  : >"$DIR/hooks.log"
  chmod 666 "$DIR/hooks.log"
  if [[ $MODE == netns ]]; then
    ip netns add "${PREFIX}ops"
    ip -n "${PREFIX}ops" link set lo up
    ip -n "${PREFIX}ops" link add br0 type bridge
    ip -n "${PREFIX}ops" addr add "$SUBNET.1/24" dev br0
    ip -n "${PREFIX}ops" link set br0 up
    for i in "${!REGIONS[@]}"; do
      r=${REGIONS[i]} ns=$PREFIX${REGIONS[i]} a=$(addr_of "$i")
      ip netns add "$ns"
      ip -n "$ns" link set lo up
      ip -n "${PREFIX}ops" link add "v-$r" type veth peer name eth0 netns "$ns"
      ip -n "${PREFIX}ops" link set "v-$r" master br0 up
      ip -n "$ns" addr add "$a/24" dev eth0
      ip -n "$ns" link set eth0 up
    done
  fi
  cat >"$DIR/cluster.env" <<ENV
MODE=$MODE
PORTS=(${PORTS[*]:-})
ENV
  for i in "${!REGIONS[@]}"; do write_region "$i"; done

  # us-east: a new database, the schema; then the two replicas cloned from it.
  mkdir -m 700 "$DIR/us-east/pgdata"
  if [[ -n $RUN_AS ]]; then chown "$RUN_AS" "$DIR/us-east/pgdata"; fi
  as_pg "$PGBIN/initdb" -D "$DIR/us-east/pgdata" -U postgres -A trust -k --no-sync >"$DIR/us-east/initdb.log" 2>&1 ||
    die "initdb failed: $DIR/us-east/initdb.log"
  pg_ctl_start us-east || die "PostgreSQL of us-east did not start: $DIR/us-east/postgresql.log"
  # No replica yet: the schema must not wait for one.
  # On stdin: the PostgreSQL user may not be able to read the checkout.
  psql_in us-east -q -v ON_ERROR_STOP=1 -c "SET synchronous_commit = local" -f - <"$HERE/schema.sql" >/dev/null
  for i in 1 2; do
    r=${REGIONS[i]}
    mkdir -m 700 "$DIR/$r/pgdata"
    if [[ -n $RUN_AS ]]; then chown "$RUN_AS" "$DIR/$r/pgdata"; fi
    pg_in "$r" "$PGBIN/pg_basebackup" -h "$(addr_of 0)" -p "$(pg_port 0)" -U postgres \
      -D "$DIR/$r/pgdata" -X stream -c fast >>"$DIR/$r/postgresql.log" 2>&1 || die "pg_basebackup for $r failed"
    as_pg touch "$DIR/$r/pgdata/standby.signal"
    (DIR=$DIR REGION=$r; . "$HERE/hooks/lib.sh"; write_follow_conf)
    pg_ctl_start "$r" || die "PostgreSQL of $r did not start: $DIR/$r/postgresql.log"
  done
  (DIR=$DIR REGION=us-east; . "$HERE/hooks/lib.sh"; write_follow_conf)

  for i in "${!REGIONS[@]}"; do
    write_node "$i"
    start_node "${REGIONS[i]}"
  done
  # us-east's agent first: the lease's first holder must be the server that is primary.
  start_agent us-east
  until_ok 60 "us-east's promote hook" role_is_primary us-east
  start_agent eu-west
  start_agent ap-south
  for r in "${REGIONS[@]}"; do start_follow "$r"; done
  until_ok 60 "two replicas streaming from us-east" streaming_two
  echo "up ($MODE): $(
    [[ $MODE == netns ]] && echo "namespaces ${REGIONS[*]/#/$PREFIX} on $SUBNET.0/24, operator's host ${PREFIX}ops ($SUBNET.1)" ||
      echo "loopback 127.0.0.1, one port per listener"
  )"
  echo "baton: $(endpoints)   PostgreSQL: $(pg_targets)   primary: us-east; files in $DIR"
  echo "try: $0 status"
}

kill_region() {
  local r=$1 f pm
  if [[ $MODE == netns && -e /run/netns/$PREFIX$r ]]; then
    # The whole host dies: everything in its namespace.
    # shellcheck disable=SC2046
    kill -KILL $(ip netns pids "$PREFIX$r") 2>/dev/null || true
  fi
  for f in agent follow node; do
    if alive "$DIR/$r/$f.pid"; then kill -KILL "$(cat "$DIR/$r/$f.pid")" 2>/dev/null || true; fi
  done
  if [[ -r $DIR/$r/pgdata/postmaster.pid ]]; then
    pm=$(head -1 "$DIR/$r/pgdata/postmaster.pid")
    if [[ -n $pm ]] && kill -0 "$pm" 2>/dev/null; then
      # pg_ctl starts the postmaster in its own session: its group holds every backend.
      kill -KILL -- "-$pm" 2>/dev/null || kill -KILL "$pm" 2>/dev/null || true
    fi
  fi
}

revive_region() {
  local r=$1
  alive "$DIR/$r/node.pid" && die "$r is running (kill-region first)"
  # Whatever it was, its server died with it: it comes back as a replica.
  echo standby >"$DIR/$r/role"
  start_node "$r"
  start_follow "$r"
  start_agent "$r"
}

down() {
  local r f pids
  [[ -e $DIR/$MARK ]] || { echo "down (nothing at $DIR)"; return; }
  for r in "${REGIONS[@]}"; do
    for f in follow agent node; do
      if alive "$DIR/$r/$f.pid"; then kill -TERM "$(cat "$DIR/$r/$f.pid")" 2>/dev/null || true; fi
    done
  done
  for r in "${REGIONS[@]}"; do
    [[ -d $DIR/$r/pgdata ]] && as_pg "$PGBIN/pg_ctl" -D "$DIR/$r/pgdata" -m immediate stop >/dev/null 2>&1 || true
  done
  for r in "${REGIONS[@]}"; do
    for f in follow agent node; do
      if alive "$DIR/$r/$f.pid"; then
        for ((t = 0; t < 50; t++)); do alive "$DIR/$r/$f.pid" || break; sleep 0.1; done
        if alive "$DIR/$r/$f.pid"; then kill -KILL "$(cat "$DIR/$r/$f.pid")" 2>/dev/null || true; fi
      fi
    done
  done
  if [[ $MODE == netns ]]; then
    for r in "${REGIONS[@]/#/$PREFIX}" "${PREFIX}ops"; do
      [[ -e /run/netns/$r ]] || continue
      pids=$(ip netns pids "$r" 2>/dev/null || true)
      # shellcheck disable=SC2086
      [[ -n $pids ]] && kill -KILL $pids 2>/dev/null || true
      ip netns del "$r"
    done
  fi
  rm -rf "$DIR"
  echo "down"
}

status() {
  local i r st
  [[ -e $DIR/cluster.env ]] || die "no cluster at $DIR"
  echo "mode: $MODE"
  for i in "${!REGIONS[@]}"; do
    r=${REGIONS[i]}
    st=$(psql_in "$r" -Atc "SELECT CASE WHEN pg_is_in_recovery() THEN 'replica (' || coalesce((SELECT status || ' from ' || sender_host FROM pg_stat_wal_receiver), 'not streaming') || ')' ELSE 'primary, sync: ' || coalesce((SELECT string_agg(application_name || '=' || sync_state, ' ') FROM pg_stat_replication), 'none') END" 2>/dev/null || echo "PostgreSQL down")
    printf '%-9s %s:%s  node %s, agent %s, rejoiner %s, hooks: %s; PostgreSQL: %s\n' "$r" "$(addr_of "$i")" "$(pg_port "$i")" \
      "$(alive "$DIR/$r/node.pid" && echo up || echo DOWN)" "$(alive "$DIR/$r/agent.pid" && echo up || echo DOWN)" \
      "$(alive "$DIR/$r/follow.pid" && echo up || echo DOWN)" "$(cat "$DIR/$r/role")" "$st"
  done
  in_ops "$(bin)" --endpoints "$(endpoints)" primary "$SERVICE"
}

cmd=${1:-}
shift || true
case "$cmd" in
  up) up ;;
  down) down ;;
  status) status ;;
  kill-region | revive-region)
    [[ $# == 1 ]] || die "usage: $0 $cmd REGION"
    index_of "$1" >/dev/null
    [[ -e $DIR/cluster.env ]] || die "no cluster at $DIR"
    if [[ $cmd == kill-region ]]; then kill_region "$1"; else revive_region "$1"; fi
    ;;
  switchover)
    [[ $# == 1 ]] || die "usage: $0 switchover REGION"
    index_of "$1" >/dev/null
    in_ops "$(bin)" --endpoints "$(endpoints)" failover "$SERVICE" --to "$1" --reason "pg.sh switchover" --yes
    ;;
  psql)
    [[ $# -ge 1 ]] || die "usage: $0 psql REGION [PSQL ARGS]"
    r=$1
    shift
    psql_in "$r" "$@"
    ;;
  exec)
    [[ $# -ge 2 ]] || die "usage: $0 exec REGION|ops CMD..."
    r=$1
    shift
    if [[ $r == ops ]]; then in_ops "$@"; else index_of "$r" >/dev/null; in_region "$r" "$@"; fi
    ;;
  env)
    echo "BATON_ENDPOINTS=$(endpoints)"
    echo "BATON_PG=$(pg_targets)"
    ;;
  bench)
    rounds=7 patroni=""
    while [[ $# -gt 0 ]]; do
      case $1 in
        --rounds) rounds=${2:?}; shift 2 ;;
        --patroni) patroni=${2:?}; shift 2 ;;
        *) die "usage: $0 bench [--rounds N] [--patroni DIR]" ;;
      esac
    done
    [[ -e $DIR/cluster.env ]] || die "no cluster at $DIR: run \`$0 up\` first"
    summary=${BATON_PG_PATRONI_RESULTS:-$ROOT/../shared/peers/patroni/results}/summary.txt
    label="recorded earlier ($summary)"
    if [[ -n $patroni ]]; then
      [[ -x $patroni/venv/bin/patroni ]] || die "$patroni has no Patroni: copy ../shared/peers/patroni there and run BASE=\$PWD ./setup.sh install"
      echo "Patroni: BASE=$patroni REPS=$rounds ./run_all.sh (~15 min)..."
      (cd "$patroni" && rm -f results/*.jsonl && BASE=$patroni REPS=$rounds ./run_all.sh >"$patroni/run_all.log" 2>&1) ||
        die "Patroni's run failed: $patroni/run_all.log"
      summary=$patroni/results/summary.txt label="this run ($patroni)"
    fi
    in_ops "$(bin)" --endpoints "$(endpoints)" bench postgres --pg "$(pg_targets)" \
      --control "$0" --rounds "$rounds" --writer-log "$DIR/writer.jsonl" \
      --patroni-summary "$summary" --patroni-label "$label"
    ;;
  *)
    sed -n '2,36p' "$0"
    exit 2
    ;;
esac
