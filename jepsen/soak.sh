#!/usr/bin/env bash
# The chaos soak: many short runs with every nemesis family and automatic failover on, each
# with its own seed, and a markdown table of the outcome (the README's soak table).
#
#   jepsen/soak.sh [RUNS] [SECONDS] [FIRST_SEED]
#
# Defaults: 50 runs of 60 s, seeds 1..50, release builds (PROFILE=debug for debug; BIN_DIR=DIR
# to use prebuilt baton and baton-jepsen binaries), run
# folders under ${OUT:-jepsen/runs/soak}, the table in $OUT/table.md. A run that could not be
# carried out (exit 2) is listed as ERROR. Exit code: 0 when every run is valid, 1 otherwise.
set -uo pipefail

cd "$(dirname "$0")/.."
RUNS=${1:-50}
SECONDS_EACH=${2:-60}
FIRST=${3:-1}
PROFILE=${PROFILE:-release}
OUT=${OUT:-jepsen/runs/soak}
NEMESIS=${NEMESIS:-all}

if [ -n "${BIN_DIR:-}" ]; then
    # Prebuilt binaries (so a long soak is not disturbed by rebuilds of the tree).
    BATON=$BIN_DIR/baton
    JEPSEN=$BIN_DIR/baton-jepsen
else
    if [ "$PROFILE" = release ]; then
        cargo build -q --release -p baton --bin baton && cargo build -q --release -p baton-jepsen || exit 2
    else
        cargo build -q -p baton --bin baton && cargo build -q -p baton-jepsen || exit 2
    fi
    BATON=target/$PROFILE/baton
    JEPSEN=target/$PROFILE/baton-jepsen
fi
mkdir -p "$OUT"
TABLE=$OUT/table.md

{
    echo "| seed | verdict | ops checked (lin / tokens / fenced-resource / watch / primaries) | faults (skipped) | failed checkers |"
    echo "|---|---|---|---|---|"
} >"$TABLE"

status=0
for ((seed = FIRST; seed < FIRST + RUNS; seed++)); do
    before=$(ls -1 "$OUT" 2>/dev/null | sort)
    "$JEPSEN" test --nemesis "$NEMESIS" --automation --time-limit "$SECONDS_EACH" --seed "$seed" \
        --nodes 3 --baton "$BATON" --out "$OUT" >"$OUT/seed-$seed.log" 2>&1
    rc=$?
    run=$(comm -13 <(echo "$before") <(ls -1 "$OUT" | sort) | grep -v '^seed-' | grep -v '^table' | tail -1)
    results="$OUT/$run/results.json"
    case $rc in
        0) verdict=valid ;;
        1) verdict=INVALID ;;
        *) verdict="ERROR($rc)" ;;
    esac
    [ $rc -ne 0 ] && status=1
    if [ -n "$run" ] && [ -f "$results" ]; then
        row=$(python3 - "$results" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
by = {c["name"]: c for c in r["checkers"]}
def n(name):
    c = by.get(name)
    return str(c.get("checked_ops", "?")) if c else "-"
ops = " / ".join(n(x) for x in ("linearizability", "tokens", "fenced-resource", "watch", "primaries"))
s = r["summary"]
faults = f'{s["faults"]} ({s["faults_skipped"]})'
failed = ", ".join(c["name"] for c in r["checkers"] if not c.get("valid", False)) or "-"
print(f"{ops} | {faults} | {failed}")
EOF
)
    else
        row="- | - | no results (see seed-$seed.log)"
    fi
    echo "| $seed | $verdict | $row |" >>"$TABLE"
    echo "seed $seed: $verdict"
done
echo
cat "$TABLE"
exit $status
