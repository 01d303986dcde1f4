#!/usr/bin/env bash
# Import benchmark (issue 11): `jobsync import` of an N-row NDJSON file of creates (default
# 1,000,000) into a fresh SQLite database, and into PostgreSQL when DATABASE_URL is given.
# Reports the wall time, the peak RSS (target: at most 64 MiB at 1,000,000 rows, whatever the
# size of the file) and how long the import's one write transaction was open (on SQLite the
# sync's own writes wait for it, up to their 15 s busy timeout).
#
# Usage: scripts/bench-import.sh [N]     (builds the release binary first)
# Env:   DATABASE_URL (a PostgreSQL database to import into as well; the rows stay there, so give
#        it an empty database or schema), JOBSYNC_BIN (default target/release/jobsync, skips the
#        build), KEEP_FILE (keep the generated file at this path)
set -euo pipefail

N=${1:-1000000}
WORK=$(mktemp -d)
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${JOBSYNC_BIN:-}" ]; then
    cargo build --release --quiet
fi
BIN=${JOBSYNC_BIN:-target/release/jobsync}

# The same creates as scripts/bench-push.sh: about 125 bytes a line.
seq 0 $((N - 1)) | awk '{printf "{\"op\":\"create\",\"campaign\":28,\"reference\":\"bench-%d\",\"payload\":{\"name\":\"Bench %d\",\"numbers\":[\"+33612345678\"],\"value\":%d}}\n", $1, $1, $1}' >"$WORK/rows.ndjson"
if [ -n "${KEEP_FILE:-}" ]; then cp "$WORK/rows.ndjson" "$KEEP_FILE"; fi
echo "file: $N rows, $(( $(stat -c %s "$WORK/rows.ndjson") / 1024 / 1024 )) MiB"

# One import: wall time, peak RSS (GNU time), and the transaction's duration from the log.
bench() {
    local label=$1 url=$2 log="$WORK/import-$1.log"
    JOBSYNC_LOG__FORMAT=json RUST_LOG=${RUST_LOG:-info} \
        /usr/bin/time -v "$BIN" import "$WORK/rows.ndjson" --database-url "$url" \
        >"$WORK/import-$label.out" 2>"$log" || { echo "$label: the import failed:"; tail -5 "$log"; return 1; }
    local wall rss tx commit
    wall=$(sed -n 's/^[[:space:]]*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$log")
    rss=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): //p' "$log")
    tx=$(grep '"import committed"' "$log" | grep -o '"transaction_ms":[0-9]*' | cut -d: -f2)
    commit=$(grep '"import committed"' "$log" | grep -o '"commit_ms":[0-9]*' | cut -d: -f2)
    printf '%-9s wall %s, peak RSS %d MiB (target <= 64), write transaction %.2f s (of which the commit %.2f s)\n' \
        "$label" "$wall" $((rss / 1024)) "$(echo "${tx:-0} / 1000" | bc -l)" "$(echo "${commit:-0} / 1000" | bc -l)"
    echo "          $(cat "$WORK/import-$label.out")"
}

bench sqlite "sqlite://$WORK/bench.db"
if [ -n "${DATABASE_URL:-}" ]; then
    bench postgres "$DATABASE_URL"
fi
