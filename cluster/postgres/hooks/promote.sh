#!/usr/bin/env bash
# on_promote of `baton agent` (BATON_REGION, BATON_TOKEN; DIR = the cluster directory).
# Makes this region's PostgreSQL the primary for token BATON_TOKEN, then exits 0:
#  1. hold the region lock, so the rejoiner cannot restart or rewind the server meanwhile;
#  2. catch up: with `ANY 1` synchronous replication an acknowledged commit may be on the
#     other replica only, so first replay up to the most advanced surviving peer;
#  3. promote (pg_promote waits until the server accepts writes);
#  4. record the token in baton_fence. Writes must carry exactly the highest token there,
#     so the server takes writes from this token's writers only from now on.
# Only then does the hook report success, and the agent publish the region as primary.
set -euo pipefail
REGION=$BATON_REGION
. "$(dirname "$0")/lib.sh"
exec 9>"$RDIR/lock"
flock 9
set_role promoting "$BATON_TOKEN"
log "promote token=$BATON_TOKEN: start"

if ! pg_running; then
  # A stopped server (demoted, or crashed) comes back as a replica first, so it replays
  # whatever its peers have before it may take writes.
  [[ -e $DATA/standby.signal ]] || as_pg touch "$DATA/standby.signal"
  write_follow_conf
  pg_start
fi

# A server still starting (a rejoin in progress) first has to accept connections.
for ((i = 0; i < 100; i++)); do q "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done
((i < 100)) || { log "promote token=$BATON_TOKEN: the server does not accept connections"; exit 1; }

# Where this server is, and (in parallel) how much WAL each peer replica has received.
for r in $(other_regions); do
  qpeer "$(peer_addr "$r")" "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() END" \
    >"$RDIR/peer-$r.lsn" 2>/dev/null &
done
IFS='|' read -r recovering mine < <(q "SELECT pg_is_in_recovery(), coalesce(greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), '0/0')")
wait
if [[ $recovering == t ]]; then
  best="" best_lsn=$mine
  for r in $(other_regions); do
    lsn=$(cat "$RDIR/peer-$r.lsn" 2>/dev/null) || continue
    if [[ -n $lsn ]] && (($(lsn_num "$lsn") > $(lsn_num "$best_lsn"))); then
      best=$(peer_addr "$r") best_lsn=$lsn
    fi
  done
  if [[ -n $best ]]; then
    log "promote: catching up to $best_lsn from $best"
    write_follow_conf "$best"
    q "SELECT pg_reload_conf()" >/dev/null
    for ((i = 0; i < 200; i++)); do
      [[ $(q "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '$best_lsn') >= 0") == t ]] && break
      sleep 0.01
    done
    ((i < 200)) || { log "promote: could not catch up to $best_lsn"; exit 1; }
  fi
  write_follow_conf # for when it is a replica again
  # One session: promote, wait for the end of recovery (pg_promote's own wait polls every
  # 100 ms), then record the token. synchronous_commit=local: the fence must not wait for a
  # replica that is still finding the new primary; a fence row lost with this server is
  # replaced by the next promotion's.
  "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres \
    -c "SELECT pg_promote(false)" \
    -c "DO \$\$ BEGIN WHILE pg_is_in_recovery() LOOP PERFORM pg_sleep(0.005); END LOOP; END \$\$" \
    -c "SET synchronous_commit = local" \
    -c "INSERT INTO baton_fence(token, region) VALUES ($BATON_TOKEN, '$REGION') ON CONFLICT (token) DO NOTHING" >/dev/null
else
  # Already primary (the first grant, or a repeated hook): only the fence.
  q "SET synchronous_commit = local; INSERT INTO baton_fence(token, region) VALUES ($BATON_TOKEN, '$REGION') ON CONFLICT (token) DO NOTHING" >/dev/null
fi
set_role primary "$BATON_TOKEN"
log "promote token=$BATON_TOKEN: primary"
