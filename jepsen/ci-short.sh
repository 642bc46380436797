#!/usr/bin/env bash
# The short jepsen suite for CI: every nemesis family once, about 40 s of faults each, with
# fixed seeds (chosen so that each family's schedule exercises its interesting kinds), plus
# the liveness window after the last heal. Takes about 6 minutes.
#
#   jepsen/ci-short.sh [BATON_BINARY]
#
# BATON_BINARY defaults to target/debug/baton. The harness itself is built with cargo
# (debug profile; set PROFILE=release for a release build). Run folders go to
# ${OUT:-jepsen/runs/ci}. Clock faults need Debian's `faketime` package and disk faults
# need root: without them those faults are recorded as skipped (the run still checks the
# history). FAMILIES="partition kill" runs a subset. Exit code: 0 when every run is valid, 1 when a checker failed, 2 when a run
# could not be carried out.
set -uo pipefail

cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-debug}
BATON=${1:-target/$PROFILE/baton}
OUT=${OUT:-jepsen/runs/ci}
TIME_LIMIT=${TIME_LIMIT:-40}
FAMILIES=${FAMILIES:-partition kill pause clock disk agents}

if [ ! -x "$BATON" ]; then
    echo "ci-short: no baton binary at $BATON (cargo build -p baton --bin baton)" >&2
    exit 2
fi
if [ "$PROFILE" = release ]; then
    cargo build -q --release -p baton-jepsen || exit 2
else
    cargo build -q -p baton-jepsen || exit 2
fi
JEPSEN=target/$PROFILE/baton-jepsen

# family seed
SUITE=(
    "partition 9" # isolate the primary region (nodes and agents), the leader, one node's inbound links
    "kill 10"     # kill all, a minority, the leader twice
    "pause 4"     # pause one node, then the leader three times (longer than the lease TTL)
    "clock 10"    # one node's clock at 2x, then a jump forward, then falling behind
    "disk 5"      # full data directory, read-only data directory, full again
    "agents 5"    # pause the holder's agent to the leader's deadline, TTL 2 s -> 1 s with the holder cut, pause again
)

status=0
summary=()
for entry in "${SUITE[@]}"; do
    read -r family seed <<<"$entry"
    case " $FAMILIES " in
        *" $family "*) ;;
        *) continue ;;
    esac
    echo "=== $family (seed $seed, ${TIME_LIMIT}s)"
    "$JEPSEN" test --nemesis "$family" --time-limit "$TIME_LIMIT" --seed "$seed" \
        --nodes 3 --baton "$BATON" --out "$OUT"
    rc=$?
    case $rc in
        0) verdict=valid ;;
        1) verdict=INVALID ;;
        *) verdict="ERROR($rc)" ;;
    esac
    summary+=("$(printf '%-10s seed %-3s %s' "$family" "$seed" "$verdict")")
    if [ $rc -ne 0 ]; then
        if [ $rc -eq 1 ] || [ $status -eq 0 ]; then
            status=$rc
        fi
    fi
done

echo
echo "=== jepsen short suite"
printf '%s\n' "${summary[@]}"
exit $status
