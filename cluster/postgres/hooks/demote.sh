#!/usr/bin/env bash
# on_demote of `baton agent`. Must be done within --demote-timeout (250 ms in pg.sh), before
# the lease's validity ends: it stops this region's PostgreSQL. A fast shutdown ends every
# session at once (a commit not yet acknowledged fails at the client) and lets the replicas
# receive the last WAL; after 100 ms it becomes an immediate shutdown. Setting the server
# read-only would not be enough: sessions already inside a transaction could still commit.
# standby.signal is written first, so whoever starts this server next starts a replica.
# The rejoiner (follow.sh) then brings it back as a replica of the new primary.
set -uo pipefail
REGION=$BATON_REGION
. "$(dirname "$0")/lib.sh"
set_role demoting "${BATON_TOKEN:-}"
if [[ -d $DATA ]]; then
  # as the server's owner: it must be able to remove it when it rejoins.
  as_pg touch "$DATA/standby.signal" || true
fi
pg_stop 1 || { log "demote token=${BATON_TOKEN:-} (${BATON_REASON:-}): the server did not stop"; exit 1; }
set_role standby
log "demote token=${BATON_TOKEN:-} (${BATON_REASON:-}): stopped"
