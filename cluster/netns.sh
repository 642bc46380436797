#!/usr/bin/env bash
# A three-region baton cluster of real hosts: one network namespace per region, joined by a
# bridge in a fourth namespace (`ops`, an operator's host on the same network). Each region
# runs a `baton server` bound to its own address (client, peer and admin listeners) and a
# `baton agent` for the service `payments` whose hooks write the region's role to a file.
# Peer and client TLS from `baton cert`, [auth] on (operators, admins, one agent per region).
# Needs root (namespaces, veth, a bridge).
#
#   cluster/netns.sh up                   create namespaces, certificates, configs; start nodes and agents
#   cluster/netns.sh down                 stop everything and remove namespaces and $BATON_NETNS_DIR (idempotent)
#   cluster/netns.sh status               namespaces, processes, links, roles, then `baton status`
#   cluster/netns.sh cut REGION           isolate a region (its link to the bridge goes down)
#   cluster/netns.sh heal REGION          reconnect it
#   cluster/netns.sh exec REGION|ops CMD  run CMD in a namespace; `baton` on PATH, BATON_ENDPOINTS and
#                                         the credentials of $BATON_NETNS_AS (default oncall) exported
#   cluster/netns.sh http REGION PATH     GET PATH from the node's admin listener (127.0.0.1:7300 there)
#   cluster/netns.sh crash REGION         kill -9 the region's node (a host failure)
#   cluster/netns.sh stop REGION          SIGTERM the region's node (clean stop)
#   cluster/netns.sh start REGION         start the region's node again (same id, same data)
#   cluster/netns.sh rebuild REGION ID    wipe the region's node and start an empty one as node ID, to be
#                                         added with `baton admin add-node` (ID: 3+k*3+region index+1)
#   cluster/netns.sh role REGION          the role the region's hooks last wrote (primary|standby ...)
#
# Environment: BATON_NETNS_PREFIX (namespace names, default "baton-": baton-us-east ...),
# BATON_NETNS_SUBNET (first three octets of the /24, default 10.77.0: ops .1, nodes .11-.13),
# BATON_NETNS_DIR (configs, certificates, data, logs, role files; default /tmp/baton-netns-<prefix>),
# BATON_BIN (default target/release/baton, else target/debug/baton).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${BATON_NETNS_PREFIX:-baton-}
SUBNET=${BATON_NETNS_SUBNET:-10.77.0}
DIR=${BATON_NETNS_DIR:-/tmp/baton-netns-${PREFIX%-}}
REGIONS=(us-east eu-west ap-south)
OPS_NS=${PREFIX}ops
MARK=.baton-netns # marks a directory this script made, so `down` removes only its own
SERVICE=payments

die() { echo "netns.sh: $*" >&2; exit 1; }

bin() {
  if [[ -n ${BATON_BIN:-} ]]; then echo "$BATON_BIN"
  elif [[ -x $ROOT/target/release/baton ]]; then echo "$ROOT/target/release/baton"
  elif [[ -x $ROOT/target/debug/baton ]]; then echo "$ROOT/target/debug/baton"
  else die "no baton binary: run \`cargo build --release\` or set BATON_BIN"
  fi
}

need_root() {
  [[ $(id -u) == 0 ]] || die "must run as root (it creates network namespaces, veth pairs and a bridge); try: sudo $0 $*"
  command -v ip >/dev/null || die "needs iproute2 (\`ip\`)"
}

# Region name -> index 0..2, or die naming the regions.
index_of() {
  local i
  for i in "${!REGIONS[@]}"; do [[ ${REGIONS[i]} == "$1" ]] && { echo "$i"; return; }; done
  die "unknown region '$1': one of ${REGIONS[*]}"
}
ns_of() { echo "${PREFIX}$1"; }
addr_of() { echo "$SUBNET.$((11 + $1))"; } # by index
endpoints() {
  local out=() i
  for i in "${!REGIONS[@]}"; do out+=("$(addr_of "$i"):7100"); done
  (IFS=,; echo "${out[*]}")
}
ns_exists() { [[ -e /run/netns/$1 ]]; }
# The node id a region's host runs now (1..3 at first; `rebuild` changes it).
node_id() { cat "$DIR/$1/id"; }

# Node config: id $1 in region index $2; `peers` empty for a node that joins later.
write_config() {
  local id=$1 i=$2 joiner=${3:-} r=${REGIONS[$2]} a j k dial="" peers="" auth=""
  a=$(addr_of "$i")
  # Ids a host may take are planned: region index j serves ids j+1, j+4, j+7 (a replacement
  # node gets the next one), so every node can dial a replacement without a restart.
  for ((k = 1; k <= 9; k++)); do
    j=$(((k - 1) % 3))
    ((k == id)) || dial+="\"$k\" = \"$(addr_of "$j"):7200\""$'\n'
  done
  if [[ -z $joiner ]]; then
    for j in "${!REGIONS[@]}"; do
      peers+="[[peers]]"$'\n'"id = $((j + 1))"$'\n'"addr = \"$(addr_of "$j"):7100\""$'\n'"region = \"${REGIONS[j]}\""$'\n\n'
    done
  fi
  for j in "${REGIONS[@]}"; do
    auth+="[[auth.certs]]"$'\n'"name = \"agent-$j\""$'\n'"roles = [\"agent\"]"$'\n'"services = [\"$SERVICE\"]"$'\n'"regions = [\"$j\"]"$'\n\n'
  done
  cat >"$DIR/$r/node.toml" <<TOML
# Written by cluster/netns.sh: node $id, region $r, on host $a (namespace $(ns_of "$r")).
cluster = "netns"
id = $id
region = "$r"
listen = "$a:7100"
peer_listen = "$a:7200"
admin_listen = "127.0.0.1:7300"
data_dir = "$DIR/$r/data"

[dial]
$dial
[peer_tls]
ca = "$DIR/tls/ca.pem"
cert = "$DIR/tls/node-$id.pem"
key = "$DIR/tls/node-$id.key"

[client_tls]
ca = "$DIR/tls/ca.pem"
cert = "$DIR/tls/node-$id.pem"
key = "$DIR/tls/node-$id.key"
client_auth = "required"

[auth]
enabled = true

[[auth.certs]]
name = "oncall"
roles = ["operator"]

[[auth.certs]]
name = "platform-admin"
roles = ["admin"]

[[auth.certs]]
name = "dashboard"
roles = ["reader"]

$auth
[timing]
heartbeat = "150ms"
election_timeout_min = "1s"
election_timeout_max = "2s"
drift = 0.05
margin = "100ms"

$peers
[[services]]
name = "$SERVICE"
regions = ["us-east", "eu-west", "ap-south"]
lease_ttl = "3s"
failback = "manual"
TOML
  echo "$id" >"$DIR/$r/id"
}

start_node() {
  local r=$1 b
  b=$(bin)
  ip netns exec "$(ns_of "$r")" "$b" server --config "$DIR/$r/node.toml" \
    >>"$DIR/$r/node.log" 2>&1 </dev/null &
  echo $! >"$DIR/$r/node.pid"
}

start_agent() {
  local r=$1 i b eps
  i=$(index_of "$r")
  b=$(bin)
  # Its own region's node first; the client follows the leader from there.
  eps="$(addr_of "$i"):7100,$(endpoints)"
  ip netns exec "$(ns_of "$r")" env DIR="$DIR" "$b" agent --service "$SERVICE" --region "$r" \
    --agent-id "agent-$r" --endpoints "$eps" \
    --cacert "$DIR/tls/ca.pem" --cert "$DIR/tls/client-agent-$r.pem" --key "$DIR/tls/client-agent-$r.key" \
    --on-promote "$DIR/hook.sh" --on-demote "$DIR/hook.sh" \
    --state-file "$DIR/$r/agent.json" --http-listen 127.0.0.1:7400 \
    >>"$DIR/$r/agent.log" 2>&1 </dev/null &
  echo $! >"$DIR/$r/agent.pid"
}

alive() { [[ -e $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Runs "$@" in namespace $1 with `baton` on PATH and the cluster's endpoints and credentials.
in_ns() {
  local ns=$1 who=${BATON_NETNS_AS:-oncall} b
  shift
  b=$(bin)
  [[ -e $DIR/tls/client-$who.pem ]] || die "no client certificate '$who' in $DIR/tls (BATON_NETNS_AS: oncall, platform-admin, dashboard)"
  ip netns exec "$ns" env PATH="$DIR/bin:$PATH" \
    BATON_ENDPOINTS="${BATON_ENDPOINTS:-$(endpoints)}" \
    BATON_CACERT="${BATON_CACERT:-$DIR/tls/ca.pem}" \
    BATON_CERT="${BATON_CERT:-$DIR/tls/client-$who.pem}" \
    BATON_KEY="${BATON_KEY:-$DIR/tls/client-$who.key}" "$@"
}

ns_for_target() {
  if [[ $1 == ops ]]; then echo "$OPS_NS"; else index_of "$1" >/dev/null; ns_of "$1"; fi
}

up() {
  need_root up
  local b i r ns a sans=()
  b=$(bin)
  ns_exists "$OPS_NS" && die "namespace $OPS_NS exists: the cluster is up (or left over); run \`$0 down\` first"
  if [[ -e $DIR && ! -e $DIR/$MARK ]] && [[ -n $(ls -A "$DIR") ]]; then
    die "$DIR exists and was not made by netns.sh; set BATON_NETNS_DIR to an empty or new directory"
  fi
  rm -rf "$DIR"
  mkdir -p "$DIR/bin"
  touch "$DIR/$MARK"
  ln -s "$b" "$DIR/bin/baton" # `baton` on PATH for `exec`, whatever the binary is called

  # The switch: a bridge in its own namespace, which also is the operator's host (.1).
  ip netns add "$OPS_NS"
  ip -n "$OPS_NS" link set lo up
  ip -n "$OPS_NS" link add br0 type bridge
  ip -n "$OPS_NS" addr add "$SUBNET.1/24" dev br0
  ip -n "$OPS_NS" link set br0 up
  for i in "${!REGIONS[@]}"; do
    r=${REGIONS[i]}
    ns=$(ns_of "$r")
    a=$(addr_of "$i")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$OPS_NS" link add "v-$r" type veth peer name eth0 netns "$ns"
    ip -n "$OPS_NS" link set "v-$r" master br0 up
    ip -n "$ns" addr add "$a/24" dev eth0
    ip -n "$ns" link set eth0 up
    sans+=(--san "$a")
    mkdir -p "$DIR/$r"
    echo "standby (no hook has run yet)" >"$DIR/$r/role"
  done

  "$b" cert --out "$DIR/tls" --nodes 3 "${sans[@]}" --client oncall --client platform-admin \
    --client dashboard --client agent-us-east --client agent-eu-west --client agent-ap-south >/dev/null

  # The agents' hook: the region's role, replaced atomically, and one line per event.
  cat >"$DIR/hook.sh" <<'HOOK'
#!/bin/sh
case "$BATON_EVENT" in promote) role=primary ;; *) role=standby ;; esac
printf '%s %s %s\n' "$role" "${BATON_TOKEN:-}" "${BATON_REASON:-}" >"$DIR/$BATON_REGION/role.tmp"
mv "$DIR/$BATON_REGION/role.tmp" "$DIR/$BATON_REGION/role"
printf '%s %s %s token=%s %s\n' "$(date -u +%FT%T.%NZ)" "$BATON_REGION" "$BATON_EVENT" "${BATON_TOKEN:-}" "${BATON_REASON:-}" >>"$DIR/hooks.log"
HOOK
  chmod +x "$DIR/hook.sh"

  for i in "${!REGIONS[@]}"; do
    write_config $((i + 1)) "$i"
    start_node "${REGIONS[i]}"
  done
  for r in "${REGIONS[@]}"; do start_agent "$r"; done

  # Ready when the operator's host sees a leader and a primary for the service.
  local deadline=$((SECONDS + ${BATON_NETNS_WAIT:-60}))
  until in_ns "$OPS_NS" "$b" -w json primary "$SERVICE" 2>/dev/null | grep -q '"state": "held"'; do
    if ((SECONDS > deadline)); then
      echo "netns.sh: no primary for $SERVICE after ${BATON_NETNS_WAIT:-60}s; logs in $DIR/*/node.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "up: ops $SUBNET.1 (namespace $OPS_NS), nodes $(endpoints) (namespaces ${REGIONS[*]/#/$PREFIX}), files in $DIR"
  echo "try: $0 exec ops baton status"
}

down() {
  need_root down
  local ns pids r t
  # Everything running in our namespaces is ours: agents first (their demote hooks run),
  # then the nodes; whatever is left after 5 s is killed.
  for r in "${REGIONS[@]}"; do
    [[ -e $DIR/$r/agent.pid ]] && kill -TERM "$(cat "$DIR/$r/agent.pid")" 2>/dev/null || true
  done
  for ns in "${REGIONS[@]/#/$PREFIX}" "$OPS_NS"; do
    ns_exists "$ns" || continue
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -n $pids ]] && kill -TERM $pids 2>/dev/null || true
  done
  for ((t = 0; t < 50; t++)); do
    pids=""
    for ns in "${REGIONS[@]/#/$PREFIX}" "$OPS_NS"; do
      ns_exists "$ns" && pids+=" $(ip netns pids "$ns" 2>/dev/null || true)"
    done
    [[ -z ${pids// /} ]] && break
    sleep 0.1
  done
  [[ -n ${pids// /} ]] && kill -KILL $pids 2>/dev/null || true
  for ns in "${REGIONS[@]/#/$PREFIX}" "$OPS_NS"; do
    ns_exists "$ns" && ip netns del "$ns"
  done
  if [[ -e $DIR/$MARK ]]; then rm -rf "$DIR"; fi
  echo "down"
}

status() {
  local r i ns link node agent
  for i in "${!REGIONS[@]}"; do
    r=${REGIONS[i]}
    ns=$(ns_of "$r")
    if ! ns_exists "$ns"; then echo "$r: no namespace $ns (down)"; continue; fi
    link=$(ip -n "$OPS_NS" -o link show "v-$r" 2>/dev/null | grep -q 'state UP' && echo connected || echo CUT)
    node=$(alive "$DIR/$r/node.pid" && echo "node $(node_id "$r") running" || echo "node STOPPED")
    agent=$(alive "$DIR/$r/agent.pid" && echo "agent running" || echo "agent STOPPED")
    echo "$r: $(addr_of "$i") $link, $node, $agent, role: $(cat "$DIR/$r/role" 2>/dev/null)"
  done
  ns_exists "$OPS_NS" && in_ns "$OPS_NS" "$(bin)" status
}

cmd=${1:-}
shift || true
case "$cmd" in
  up) up ;;
  down) down ;;
  status) need_root status; status ;;
  cut)
    need_root cut
    [[ $# == 1 ]] || die "usage: $0 cut REGION"
    index_of "$1" >/dev/null
    ip -n "$OPS_NS" link set "v-$1" down
    echo "$1 cut off (link v-$1 down)"
    ;;
  heal)
    need_root heal
    [[ $# == 1 ]] || die "usage: $0 heal REGION"
    index_of "$1" >/dev/null
    ip -n "$OPS_NS" link set "v-$1" up
    echo "$1 reconnected"
    ;;
  exec)
    need_root exec
    [[ $# -ge 2 ]] || die "usage: $0 exec REGION|ops CMD..."
    ns=$(ns_for_target "$1")
    shift
    in_ns "$ns" "$@"
    ;;
  http)
    need_root http
    [[ $# == 2 ]] || die "usage: $0 http REGION PATH (e.g. /readyz, /metrics)"
    # bash's /dev/tcp: no curl needed inside the namespace.
    ip netns exec "$(ns_of "$1")" bash -c 'exec 3<>/dev/tcp/127.0.0.1/7300 &&
      printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$1" >&3 &&
      cat <&3' _ "$2"
    ;;
  crash | stop)
    need_root "$cmd"
    [[ $# == 1 ]] || die "usage: $0 $cmd REGION"
    index_of "$1" >/dev/null
    alive "$DIR/$1/node.pid" || die "the node of $1 is not running"
    pid=$(cat "$DIR/$1/node.pid")
    if [[ $cmd == crash ]]; then kill -KILL "$pid"; else kill -TERM "$pid"; fi
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$DIR/$1/node.pid"
    echo "node $(node_id "$1") of $1: $([[ $cmd == crash ]] && echo killed || echo stopped)"
    ;;
  start)
    need_root start
    [[ $# == 1 ]] || die "usage: $0 start REGION"
    index_of "$1" >/dev/null
    alive "$DIR/$1/node.pid" && die "the node of $1 is running"
    start_node "$1"
    echo "node $(node_id "$1") of $1 started (log $DIR/$1/node.log)"
    ;;
  rebuild)
    need_root rebuild
    [[ $# == 2 ]] || die "usage: $0 rebuild REGION NEW_ID"
    i=$(index_of "$1")
    id=$2
    [[ $id =~ ^[1-9]$ && $(((id - 1) % 3)) == "$i" ]] ||
      die "node ids of $1's host are $((i + 1)), $((i + 4)), $((i + 7)) (the [dial] plan); pick one not used before"
    [[ $id != "$(node_id "$1")" ]] || die "node $id is the one being replaced; pick a new id ($((i + 1)), $((i + 4)) or $((i + 7)))"
    alive "$DIR/$1/node.pid" && die "the node of $1 is running: \`$0 crash $1\` or \`$0 stop $1\` first"
    rm -rf "$DIR/$1/data"
    [[ -e $DIR/tls/node-$id.pem ]] || "$(bin)" cert node "$id" --san "$(addr_of "$i")" --out "$DIR/tls" >/dev/null
    write_config "$id" "$i" joiner
    start_node "$1"
    echo "node $id started empty in $1 at $(addr_of "$i"):7100; now: baton admin add-node --id $id --addr $(addr_of "$i"):7100 --region $1"
    ;;
  role)
    [[ $# == 1 ]] || die "usage: $0 role REGION"
    index_of "$1" >/dev/null
    cat "$DIR/$1/role"
    ;;
  *)
    sed -n '2,25p' "$0"
    exit 2
    ;;
esac
