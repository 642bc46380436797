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
  touch "$DATA/standby.signal"
  write_follow_conf
  pg_start
fi

if [[ $(q "SELECT pg_is_in_recovery()") == t ]]; then
  best="" best_lsn=""
  for r in $(other_regions); do
    a=$(peer_addr "$r")
    lsn=$(qpeer "$a" "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() END" 2>/dev/null) || continue
    [[ -n $lsn ]] || continue
    if [[ $(q "SELECT pg_wal_lsn_diff('$lsn', greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())) > 0") == t ]]; then
      if [[ -z $best_lsn || $(q "SELECT pg_wal_lsn_diff('$lsn', '$best_lsn') > 0") == t ]]; then
        best=$a best_lsn=$lsn
      fi
    fi
  done
  if [[ -n $best ]]; then
    log "promote: catching up to $best_lsn from $best"
    write_follow_conf "$best"
    q "SELECT pg_reload_conf()" >/dev/null
    for ((i = 0; i < 100; i++)); do
      [[ $(q "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '$best_lsn') >= 0") == t ]] && break
      sleep 0.02
    done
    [[ $i -lt 100 ]] || { log "promote: could not catch up to $best_lsn"; exit 1; }
  fi
  q "SELECT pg_promote(true, 30)" >/dev/null
  write_follow_conf # for when it is a replica again
fi

# synchronous_commit=local: the fence must not wait for a replica that is still finding the
# new primary; a fence row lost with this server is replaced by the next promotion's.
q "SET synchronous_commit = local; INSERT INTO baton_fence(token, region) VALUES ($BATON_TOKEN, '$REGION') ON CONFLICT (token) DO NOTHING" >/dev/null
set_role primary "$BATON_TOKEN"
log "promote token=$BATON_TOKEN: primary"
