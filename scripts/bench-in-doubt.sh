#!/usr/bin/env bash
# Progress and lookups under a mass in doubt (issue 23): N creates (default 1,000,000) pushed by
# one `jobsync --once` against a simulator that applies every create and answers 502 (a gateway):
# every row is in doubt. Reports that first run's bulk calls (target: every row sent once, N /
# 1000 calls), time and peak RSS. Then the faults stop and, once the lookups are due, a second
# `--once` settles them: its time, peak RSS, the listings it read (`GET /j/jobs`) and the rows
# still open (target: 0; lookups read each campaign at most once per cycle).
#
# Usage: scripts/bench-in-doubt.sh [N]    (build first: cargo build --release)
# Env:   JOBSYNC_BIN (default target/release/jobsync), DATABASE_URL (default a fresh SQLite file)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${1:-1000000}
BIN=${JOBSYNC_BIN:-target/release/jobsync}
WORK=$(mktemp -d)
DB=${DATABASE_URL:-sqlite://$WORK/bench.db}
cleanup() { kill "$SIM_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'exit 141' PIPE

start_sim "$BIN" "$WORK" --campaigns 28 --jobs-per-campaign 0 --applied-fail-rate 1
BASE="http://$SIM_ADDR"

seq 0 $((N - 1)) | awk '{printf "{\"op\":\"create\",\"campaign\":28,\"reference\":\"doubt-%d\",\"payload\":{\"name\":\"Doubt %d\",\"numbers\":[\"+33612345678\"]}}\n", $1, $1}' >"$WORK/rows.ndjson"
"$BIN" import "$WORK/rows.ndjson" --database-url "$DB" >"$WORK/import.out" 2>"$WORK/import.log"

# Lookups are due api.timeout_secs + 10 s after the send.
export JOBSYNC_API__TOKEN=dev-token JOBSYNC_API__BASE_URL="$BASE" JOBSYNC_SERVER__LISTEN="" \
       JOBSYNC_API__REQUESTS_PER_SECOND=1000 JOBSYNC_API__TIMEOUT_SECS=5 \
       JOBSYNC_SYNC__CAMPAIGNS=28 JOBSYNC_LOG__FORMAT=json RUST_LOG=${RUST_LOG:-info}

count() { grep -o "$1" | wc -l || true; } # PATTERN: its occurrences on stdin (0 when none)

run_once() { # NAME: one --once, its wall time in WORK/NAME.secs and peak RSS in WORK/NAME.kb
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$WORK/$1.kb" "$BIN" --once --database-url "$DB" \
    >"$WORK/$1.out" 2>"$WORK/$1.log" || true
  end=$(date +%s.%N)
  echo "$end - $start" | bc >"$WORK/$1.secs"
}

run_once first
CALLS=$(curl -s "$BASE/_sim/requests" | count '"path":"/j/jobs/bulk/create"')
SENT=$(curl -s "$BASE/_sim/requests" | count '"doubt-[0-9]*"')
echo "first run (every create applied, answered 502): $(cat "$WORK/first.secs") s, peak RSS $(( $(cat "$WORK/first.kb") / 1024 )) MiB"
echo "  bulk create calls: $CALLS (target $(( (N + 999) / 1000 ))), references sent: $SENT (target $N)"
cat "$WORK/first.out"

curl -s -X POST -H 'content-type: application/json' -d '{"applied_fail_rate": 0}' "$BASE/_sim/faults" >/dev/null
curl -s -X POST "$BASE/_sim/reset-log" >/dev/null
sleep 16
run_once second
LISTINGS=$(curl -s "$BASE/_sim/requests" | count '"path":"/j/jobs","query')
RESENT=$(curl -s "$BASE/_sim/requests" | count '"path":"/j/jobs/bulk/create"')
echo "second run (lookups due): $(cat "$WORK/second.secs") s, peak RSS $(( $(cat "$WORK/second.kb") / 1024 )) MiB"
echo "  listings read (GET /j/jobs, the pull's included): $LISTINGS; creates sent again: $RESENT"
cat "$WORK/second.out"
echo "outbox after:"
"$BIN" status --database-url "$DB" 2>/dev/null | grep -iE 'pending|in_flight|done' || true
