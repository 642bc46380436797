#!/usr/bin/env bash
# A local multi-process cluster on 127.0.0.1: one `baton server` process per node, regions
# us-east, eu-west, ap-south (then sa-east, af-south for 5 nodes).
#
#   cluster/local.sh start [3|5]   build (release) and start; configs, data and logs in $BATON_LOCAL_DIR
#   cluster/local.sh kill ID       kill -9 one node
#   cluster/local.sh restart ID    start a stopped node again
#   cluster/local.sh stop          SIGTERM every node (clean stop)
#   cluster/local.sh status        `baton status` against the cluster
#
# Ports: 7201.. for clients (BATON_LOCAL_PORT to change), so it does not clash with `baton dev`
# (7101..); each node's Raft peer listener is its client port + 100.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${BATON_LOCAL_DIR:-$PWD/target/local-cluster}
BASE=${BATON_LOCAL_PORT:-7201}
BIN=${BATON_BIN:-$PWD/target/release/baton}
REGIONS=(us-east eu-west ap-south sa-east af-south)

endpoints() {
  local n; n=$(cat "$DIR/size" 2>/dev/null || echo 3)
  local out=()
  for ((i = 0; i < n; i++)); do out+=("127.0.0.1:$((BASE + i))"); done
  (IFS=,; echo "${out[*]}")
}

start_node() {
  local id=$1
  nohup "$BIN" server --config "$DIR/node$id.toml" >>"$DIR/node$id.log" 2>&1 &
  echo $! >"$DIR/node$id.pid"
  echo "node $id started (pid $(cat "$DIR/node$id.pid"), log $DIR/node$id.log)"
}

case "${1:-}" in
  start)
    n=${2:-3}
    [[ $n == 3 || $n == 5 ]] || { echo "size must be 3 or 5" >&2; exit 2; }
    [[ -x $BIN ]] || cargo build --release --bin baton
    mkdir -p "$DIR"
    echo "$n" >"$DIR/size"
    peers=""
    for ((i = 1; i <= n; i++)); do
      peers+=$'\n'"[[peers]]"$'\n'"id = $i"$'\n'"addr = \"127.0.0.1:$((BASE + i - 1))\""$'\n'"region = \"${REGIONS[i - 1]}\""$'\n'
    done
    for ((i = 1; i <= n; i++)); do
      dial=""
      for ((j = 1; j <= n; j++)); do
        ((j == i)) || dial+="\"$j\" = \"127.0.0.1:$((BASE + 100 + j - 1))\""$'\n'
      done
      cat >"$DIR/node$i.toml" <<TOML
cluster = "local"
id = $i
region = "${REGIONS[i - 1]}"
listen = "127.0.0.1:$((BASE + i - 1))"
peer_listen = "127.0.0.1:$((BASE + 100 + i - 1))"
data_dir = "$DIR/data$i"

[dial]
$dial
[timing]
heartbeat = "50ms"
election_timeout_min = "300ms"
election_timeout_max = "600ms"
$peers
[[services]]
name = "payments"
regions = ["us-east", "eu-west", "ap-south"]
lease_ttl = "2s"
TOML
      start_node "$i"
    done
    echo "endpoints: $(endpoints)   (export BATON_ENDPOINTS=$(endpoints))"
    ;;
  kill)
    kill -9 "$(cat "$DIR/node$2.pid")" && echo "node $2 killed"
    ;;
  restart)
    start_node "$2"
    ;;
  stop)
    for f in "$DIR"/node*.pid; do
      [[ -e $f ]] || continue
      kill -TERM "$(cat "$f")" 2>/dev/null || true
      rm -f "$f"
    done
    echo "stopped"
    ;;
  status)
    "$BIN" --endpoints "$(endpoints)" status
    ;;
  *)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
