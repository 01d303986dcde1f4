#!/usr/bin/env bash
# Webhook sink benchmark (issue 29): a changefeed of N rows (default 1,000,000), written straight
# into job_changes by SQL after `jobsync migrate`, delivered by `jobsync run`'s webhook sink to a
# local receiver (examples/webhook_receiver.rs: answers 200, counts, checks the seqs cheaply) in
# batches of BATCH_SIZE (default 1000). Reports the wall time from the daemon's start until the
# consumer `webhook` has committed the last seq, the changes/s, and the daemon's peak RSS (VmHWM,
# read before it is stopped; target: <= 64 MiB). The release build; the simulator (no jobs) and
# the receiver run beside it on the same host.
#
#   scripts/bench-webhook.sh                 # 1,000,000 rows, SQLite
#   scripts/bench-webhook.sh 100000          # fewer rows
#   BATCH_SIZE=100 scripts/bench-webhook.sh
#   DATABASE_URL=postgres://USER:PASS@127.0.0.1/DB scripts/bench-webhook.sh
#        (a fresh schema is created in DB for the run and dropped after it)
#
# Env: N (or $1), BATCH_SIZE, DATABASE_URL, TIMEOUT_SECS (default 3600: the longest the delivery
#      may take), BENCH_LOG (keep the daemon's log there), RUST_LOG (default info).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

N=${1:-${N:-1000000}}
BATCH_SIZE=${BATCH_SIZE:-1000}
TIMEOUT_SECS=${TIMEOUT_SECS:-3600}
WORK=$(mktemp -d /tmp/jobsync-bench-webhook.XXXXXX)
SIM_PID= RECEIVER_PID= DAEMON_PID= SCHEMA=
cleanup() {
  kill $DAEMON_PID $RECEIVER_PID $SIM_PID 2>/dev/null || true
  wait $DAEMON_PID $RECEIVER_PID $SIM_PID 2>/dev/null || true
  if [[ -n "$SCHEMA" ]]; then psql -q "$DATABASE_URL" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
# Nothing started here may outlive the script: also on Ctrl-C, a kill, or a closed pipe.
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'exit 141' PIPE

cargo build --release --quiet --bin jobsync --example webhook_receiver
BIN=target/release/jobsync
RECEIVER=target/release/examples/webhook_receiver

# The database: a SQLite file, or a fresh schema of DATABASE_URL's PostgreSQL database.
if [[ -n "${DATABASE_URL:-}" ]]; then
  SCHEMA=bench_webhook_$$
  psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE SCHEMA $SCHEMA" >/dev/null
  case "$DATABASE_URL" in *\?*) sep='&' ;; *) sep='?' ;; esac
  DB="$DATABASE_URL${sep}options=-csearch_path%3D$SCHEMA"
  sql() { psql -qtA -v ON_ERROR_STOP=1 "$DB" -c "$1"; }
else
  DB="sqlite://$WORK/bench.db"
  sql() { sqlite3 -cmd ".timeout 10000" "$WORK/bench.db" "$1"; }
fi
"$BIN" migrate --database-url "$DB" >"$WORK/migrate.out" 2>"$WORK/migrate.log"

# N rows as a pull writes them (an update of state 1 -> 2), observed now: no prune touches them.
FILL_START=$(date +%s.%N)
if [[ -n "$SCHEMA" ]]; then
  sql "INSERT INTO job_changes (job_id, campaign, reference, kind, old_state, new_state,
         changed_fields, source, observed_at)
       SELECT n, 28, 'bench-' || n, 'updated', 1, 2, '[\"state\",\"modified_at\"]', 'pull',
              now() AT TIME ZONE 'UTC'
       FROM generate_series(1, $N) AS n"
  sql "ANALYZE job_changes"
else
  sql "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < $N)
       INSERT INTO job_changes (job_id, campaign, reference, kind, old_state, new_state,
         changed_fields, source, observed_at)
       SELECT n, 28, 'bench-' || n, 'updated', 1, 2, '[\"state\",\"modified_at\"]', 'pull',
              strftime('%Y-%m-%d %H:%M:%f000', 'now')
       FROM s"
fi
FILL_END=$(date +%s.%N)
MAX_SEQ=$(sql "SELECT max(seq) FROM job_changes")
ROWS=$(sql "SELECT count(*) FROM job_changes")
echo "changefeed: $ROWS rows (max seq $MAX_SEQ) written in $(echo "$FILL_END - $FILL_START" | bc) s; database ${DB%%://*}"

# The receiver, and the simulator the daemon's cycles talk to (no jobs: the cycles stay small).
"$RECEIVER" 127.0.0.1:0 >"$WORK/receiver.out" 2>"$WORK/receiver.err" &
RECEIVER_PID=$!
RECEIVER_ADDR=
for _ in $(seq 1 300); do
  RECEIVER_ADDR=$(sed -n 's/^listening on //p' "$WORK/receiver.out" 2>/dev/null | head -1)
  [[ -n "$RECEIVER_ADDR" ]] && break
  kill -0 "$RECEIVER_PID" 2>/dev/null || break
  sleep 0.1
done
[[ -n "$RECEIVER_ADDR" ]] || { echo "the receiver did not start:"; cat "$WORK/receiver.err"; exit 1; }
start_sim "$BIN" "$WORK" --campaigns 28 --jobs-per-campaign 0
SIM_PID=$SIM_PID

echo "whsec_$(head -c 32 /dev/urandom | base64 -w0)" >"$WORK/webhook.secret"
export JOBSYNC_API__TOKEN=dev-token JOBSYNC_API__BASE_URL="http://$SIM_ADDR" \
       JOBSYNC_SYNC__CAMPAIGNS=28 JOBSYNC_SERVER__LISTEN="" JOBSYNC_LOG__FORMAT=json \
       JOBSYNC_WEBHOOK__URL="http://$RECEIVER_ADDR/hooks/jobsync" \
       JOBSYNC_WEBHOOK__SECRET_FILE="$WORK/webhook.secret" \
       JOBSYNC_WEBHOOK__BATCH_SIZE="$BATCH_SIZE" RUST_LOG=${RUST_LOG:-info}
START=$(date +%s.%N)
"$BIN" run --database-url "$DB" >"$WORK/daemon.out" 2>"$WORK/daemon.log" &
DAEMON_PID=$!

# Until the sink has committed the last seq (the consumer's row, as any reader sees it).
DONE=0
DEADLINE=$(( $(date +%s) + TIMEOUT_SECS ))
while (( $(date +%s) < DEADLINE )); do
  kill -0 "$DAEMON_PID" 2>/dev/null || { echo "the daemon ended early:"; tail -20 "$WORK/daemon.log"; exit 1; }
  AT=$(sql "SELECT last_seq FROM changefeed_consumers WHERE name = 'webhook'" 2>/dev/null || true)
  if [[ -n "$AT" ]] && (( AT >= MAX_SEQ )); then DONE=1; break; fi
  sleep 0.2
done
END=$(date +%s.%N)
# Peak RSS before the stop: the daemon's high-water mark of the whole delivery.
RSS_KB=$(awk '/^VmHWM:/ {print $2}' "/proc/$DAEMON_PID/status")
CPU_TICKS=$(awk '{print $14 + $15}' "/proc/$DAEMON_PID/stat")
kill -TERM "$DAEMON_PID"
wait "$DAEMON_PID" || true
DAEMON_PID=
COUNTS=$(curl -s "http://$RECEIVER_ADDR/count")
if [[ -n "${BENCH_LOG:-}" ]]; then cp "$WORK/daemon.log" "$BENCH_LOG"; fi
if (( DONE == 0 )); then
  echo "the sink did not reach seq $MAX_SEQ within $TIMEOUT_SECS s (at ${AT:-nothing}); receiver: $COUNTS"
  grep -i '"WARN\|"ERROR' "$WORK/daemon.log" | tail -5
  exit 1
fi

WALL=$(echo "$END - $START" | bc)
awk -v n="$ROWS" -v wall="$WALL" -v rss="$RSS_KB" -v batch="$BATCH_SIZE" \
    -v cpu="$CPU_TICKS" -v hz="$(getconf CLK_TCK)" 'BEGIN {
  printf "delivered: %d changes in batches of %d, %.2f s from the daemon start to the last commit: %.0f changes/s\n", n, batch, wall, n / wall
  printf "daemon peak RSS (VmHWM): %d MiB (target <= 64 MiB); CPU %.2f s\n", rss / 1024, cpu / hz
}'
echo "receiver: $COUNTS"
WARNS=$(grep -c '"WARN\|"ERROR' "$WORK/daemon.log" || true)
echo "daemon log: $WARNS WARN/ERROR lines"
