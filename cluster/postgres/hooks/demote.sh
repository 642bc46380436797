#!/usr/bin/env bash
# on_demote of `baton agent`. Must be done within --demote-timeout (175 ms in pg.sh, a quarter
# of the 700 ms TTL), before the lease's validity ends: it stops this region's PostgreSQL.
# The very first thing it does is signal the postmaster: a fast shutdown ends every session
# at once (a commit not yet acknowledged fails at the client) and lets the replicas receive
# the last WAL; after 75 ms it becomes an immediate shutdown. Even if the agent kills the
# hook at its timeout, the server no longer takes writes. Setting the server read-only would
# not be enough: sessions already inside a transaction could still commit.
# standby.signal is written next, so whoever starts this server again starts a replica;
# the rejoiner (follow.sh) then brings it back as a replica of the new primary.
set -uo pipefail
REGION=$BATON_REGION
# shellcheck source=/dev/null
. "$DIR/$REGION/env"
pm=$(head -1 "$DATA/postmaster.pid" 2>/dev/null) || pm=""
if [[ -n $pm ]]; then kill -INT "$pm" 2>/dev/null || true; fi
. "$(dirname "$0")/lib.sh"
set_role demoting "${BATON_TOKEN:-}"
[[ -d $DATA ]] && { as_pg touch "$DATA/standby.signal" || true; }
if [[ -n $pm ]] && ! gone_within 0.75 "$pm"; then
  kill -QUIT "$pm" 2>/dev/null || true
  gone_within 100 "$pm" || { log "demote token=${BATON_TOKEN:-} (${BATON_REASON:-}): the server did not stop"; exit 1; }
fi
set_role standby
log "demote token=${BATON_TOKEN:-} (${BATON_REASON:-}): stopped"
