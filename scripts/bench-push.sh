#!/usr/bin/env bash
# Push benchmark (issue 5): N creates (default 100,000) through `jobsync --once` against the
# simulator adding LATENCY_MS (default 100) per call, with the client's rate limit raised out of
# the way. Reports the bulk calls made (target: N / 1000) and the push's wall time against the
# floor calls × latency ÷ concurrency (target: within 1.3×).
#
# With BARE=1 it also times a bare client (examples/bare_push.rs: the same bulk calls, the same
# concurrency, answers parsed, no database) against a second simulator started the same way, and
# reports the push's wall time against it (issue 23: within 1.1x at 1,000,000 creates, 20 ms).
#
# Usage: scripts/bench-push.sh [N]        (build first: cargo build --release --examples)
# Env:   JOBSYNC_BIN (default target/release/jobsync), LATENCY_MS, CONCURRENCY (default 4),
#        DATABASE_URL (default a fresh SQLite file in a temp dir), BENCH_LOG (keep the run's log),
#        BARE (1: time the bare client too)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${1:-100000}
LATENCY_MS=${LATENCY_MS:-100}
CONCURRENCY=${CONCURRENCY:-4}
BIN=${JOBSYNC_BIN:-target/release/jobsync}
WORK=$(mktemp -d)
DB=${DATABASE_URL:-sqlite://$WORK/bench.db}
BARE_PID=
cleanup() { kill "$SIM_PID" $BARE_PID 2>/dev/null || true; rm -rf "$WORK"; }
# The simulator must not outlive the script: also on Ctrl-C, a kill, or a closed pipe (`| head`).
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'exit 141' PIPE

start_sim "$BIN" "$WORK" --campaigns 28 --jobs-per-campaign 0 --latency-ms "$LATENCY_MS"
ADDR=$SIM_ADDR
BASE="http://$ADDR"

seq 0 $((N - 1)) | awk '{printf "{\"op\":\"create\",\"campaign\":28,\"reference\":\"bench-%d\",\"payload\":{\"name\":\"Bench %d\",\"numbers\":[\"+33612345678\"],\"value\":%d}}\n", $1, $1, $1}' >"$WORK/rows.ndjson"
"$BIN" import "$WORK/rows.ndjson" --database-url "$DB" >"$WORK/import.out" 2>"$WORK/import.log"

export JOBSYNC_API__TOKEN=dev-token JOBSYNC_API__BASE_URL="$BASE" JOBSYNC_SERVER__LISTEN="" \
       JOBSYNC_API__REQUESTS_PER_SECOND=1000 JOBSYNC_API__CONCURRENCY="$CONCURRENCY" \
       JOBSYNC_LOG__FORMAT=json RUST_LOG=${RUST_LOG:-info}
START=$(date +%s.%N)
# Peak RSS of the push run (GNU time), against the 64 MiB target at 1,000,000 rows.
/usr/bin/time -f '%M %U %S' -o "$WORK/rss.kb" "$BIN" --once --database-url "$DB" >"$WORK/once.out" 2>"$WORK/once.log"
END=$(date +%s.%N)

CALLS=$(curl -s "$BASE/_sim/requests" | grep -o '"path":"/j/jobs/bulk/create"' | wc -l)
JOBS=$(curl -s "$BASE/_sim/state" | grep -o '"reference":"bench-' | wc -l)
PUSH_MS=$(grep '"push finished"' "$WORK/once.log" | grep -o '"elapsed_ms":[0-9]*' | cut -d: -f2)
awk -v n="$N" -v calls="$CALLS" -v jobs="$JOBS" -v lat="$LATENCY_MS" -v conc="$CONCURRENCY" \
    -v push_ms="$PUSH_MS" -v total="$(echo "$END - $START" | bc)" 'BEGIN {
    floor = calls * lat / 1000 / conc
    printf "creates: %d, jobs upstream: %d, bulk create calls: %d (target %d)\n", n, jobs, calls, (n + 999) / 1000
    printf "push wall time: %.2f s, floor %.2f s (%d calls x %d ms / %d): %.2fx (target <= 1.3x)\n", push_ms / 1000, floor, calls, lat, conc, push_ms / 1000 / floor
    printf "whole --once (start, migrate, pull, push, record): %.2f s\n", total
}'
read -r RSS_KB USER_S SYS_S <"$WORK/rss.kb"
echo "peak RSS of --once: $((RSS_KB / 1024)) MiB (target <= 64 MiB at 1,000,000 rows); CPU ${USER_S} s user + ${SYS_S} s system"
cat "$WORK/once.out"
if [ -n "${BENCH_LOG:-}" ]; then cp "$WORK/once.log" "$BENCH_LOG"; fi

if [ "${BARE:-0}" = 1 ]; then
  mkdir -p "$WORK/bare"
  FIRST_PID=$SIM_PID
  start_sim "$BIN" "$WORK/bare" --campaigns 28 --jobs-per-campaign 0 --latency-ms "$LATENCY_MS"
  BARE_PID=$SIM_PID SIM_PID=$FIRST_PID
  BARE_OUT=$(/usr/bin/time -f '%U %S' -o "$WORK/bare.cpu" \
    "$(dirname "$BIN")/examples/bare_push" "http://$SIM_ADDR" "$N" "$CONCURRENCY")
  echo "$BARE_OUT; CPU $(cut -d' ' -f1 "$WORK/bare.cpu") s user + $(cut -d' ' -f2 "$WORK/bare.cpu") s system"
  BARE_S=$(echo "$BARE_OUT" | sed -n 's/.*answered, \([0-9.]*\) s.*/\1/p')
  awk -v push_ms="$PUSH_MS" -v bare="$BARE_S" 'BEGIN {
    printf "push wall time against the bare client: %.2f s / %.2f s = %.2fx (target <= 1.1x)\n", push_ms / 1000, bare, push_ms / 1000 / bare
  }'
fi
