#!/usr/bin/env bash
# on_demote of `baton agent`. Must be done within --demote-timeout (175 ms in pg.sh, a quarter
# of the 700 ms TTL), before the lease's validity ends: it stops this region's PostgreSQL.
# The very first thing it does is signal the postmaster: a fast shutdown ends every session
# at once (a commit not yet acknowledged fails at the client) and lets the replicas receive
# the last WAL; after 20 ms it becomes an immediate shutdown. Even if the agent kills the
# hook at its timeout, the server no longer takes writes. Setting the server read-only would
# not be enough: sessions already inside a transaction could still commit.
# Then standby.signal, so whoever starts this server again starts a replica; the rejoiner
# (follow.sh) brings it back as a replica of the new primary. No forks before the server is
# gone: a hook on a busy machine must still finish in time.
set -uo pipefail
# shellcheck source=/dev/null
. "$DIR/$BATON_REGION/env"
pm=""
[[ -r $DATA/postmaster.pid ]] && read -r pm <"$DATA/postmaster.pid"
[[ -n $pm ]] && kill -INT "$pm" 2>/dev/null
# Running and not a zombie (PID 1 may reap an exited postmaster late).
up() { local s; read -r s <"/proc/$1/stat" 2>/dev/null || return 1; s=${s##*) }; [[ $s != [ZX]* ]]; }
exec {never}<> <(:) # a pipe nobody writes to: `read -t` on it sleeps without a fork
i=0
while [[ -n $pm ]] && up "$pm"; do
  ((i++ == 2)) && kill -QUIT "$pm" 2>/dev/null
  ((i > 400)) && exit 1 # the agent's timeout ends this long before
  read -r -t 0.01 -u "$never"
done
# Builtins only: the file is root's, which does not stop the server from removing it.
[[ -d $DATA ]] && : >"$DATA/standby.signal"
echo standby >"$DIR/$BATON_REGION/role"
ms=${EPOCHREALTIME#*.}
printf '%(%FT%T)T.%sZ %s demote token=%s (%s): stopped after %s0 ms%s\n' -1 "${ms:0:3}" "$BATON_REGION" "${BATON_TOKEN:-}" \
  "${BATON_REASON:-}" "$i" "$( ((i > 2)) && echo ', immediate' || true)" >>"$DIR/hooks.log"
