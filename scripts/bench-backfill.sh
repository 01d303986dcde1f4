#!/usr/bin/env bash
# Backfill benchmark (issue 4): jobsync mirrors CAMPAIGNS × JOBS jobs from the simulator on
# loopback into SQLite; in the same run, sqlite3 itself loads the same jobs from a JSON file
# (INSERT … SELECT FROM json_each(readfile(…))) into the same table. Then a no-change incremental
# cycle on that mirror: API calls, and rows written to jobs and job_changes (counted by triggers).
#
#   scripts/bench-backfill.sh                 # 10 campaigns × 100,000 jobs
#   CAMPAIGNS=2 JOBS=10000 scripts/bench-backfill.sh
#   DATABASE_URL=postgres://USER:PASS@127.0.0.1/EMPTY_DB scripts/bench-backfill.sh
#
# With DATABASE_URL (an empty PostgreSQL database; psql must be installed), jobsync backfills
# into it instead, the sqlite3 comparison is skipped, and the no-change cycle's writes are
# counted by PostgreSQL triggers.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
CAMPAIGNS=${CAMPAIGNS:-10}
JOBS=${JOBS:-100000}
work=$(mktemp -d /tmp/jobsync-bench.XXXXXX)
cleanup() { kill "$sim_pid" 2>/dev/null || true; rm -rf "$work"; }
# The simulator must not outlive the script: also on Ctrl-C, a kill, or a closed pipe (`| head`).
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'exit 141' PIPE

cargo build --release --quiet
bin=target/release/jobsync
campaign_list=$(seq -s, 1 "$CAMPAIGNS")

# The daemon's second tick on the full mirror: what a deployment's no-change cycle costs (a
# fresh --once first asks the API for its clock; the daemon knows it from earlier answers).
daemon_second_cycle_calls() {
  JOBSYNC_SYNC__SCHEDULE="*/2 * * * * *" RUST_LOG=info "$bin" run 2>"$work/daemon.log" &
  local pid=$! i
  for i in $(seq 1 300); do
    [[ $(grep -c '"cycle finished"' "$work/daemon.log" 2>/dev/null) -ge 2 ]] && break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  grep '"cycle finished"' "$work/daemon.log" | sed -n 2p | sed -n 's/.*"api_calls":\([0-9]*\).*/\1/p'
}

start_sim "$bin" "$work" --campaigns "$campaign_list" --jobs-per-campaign "$JOBS"
sim_pid=$SIM_PID addr=$SIM_ADDR
echo "simulator on $addr: $CAMPAIGNS campaigns × $JOBS jobs"

pg_url=${DATABASE_URL:-}
if [[ -z "$pg_url" ]]; then
# The same jobs as one JSON file, for sqlite3.
curl -sf "http://$addr/_sim/state" -o "$work/jobs.json"
echo "jobs.json: $(du -h "$work/jobs.json" | cut -f1)"

# sqlite3's own load, into the table jobsync's migrations create.
"$bin" --database-url "sqlite://$work/sqlite3.db" migrate >/dev/null
cat >"$work/load.sql" <<SQL
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
INSERT INTO jobs (id, campaign, reference, name, email, numbers, address_lines, postal_code,
                  city, country, appointment, data, label, url, value, state, created_at,
                  first_seen_at, last_seen_at)
SELECT j.value->>'id', j.value->>'campaign', j.value->>'reference', j.value->>'name',
       j.value->>'email', j.value->'numbers', j.value->'address_lines', j.value->>'postal_code',
       j.value->>'city', j.value->>'country', j.value->>'appointment', j.value->'data',
       j.value->>'label', j.value->>'url', j.value->>'value', j.value->>'state',
       j.value->>'created_at', strftime('%Y-%m-%d %H:%M:%f000', 'now'),
       strftime('%Y-%m-%d %H:%M:%f000', 'now')
FROM json_each(readfile('$work/jobs.json')) AS j;
SQL
/usr/bin/time -f '%e %M' -o "$work/sqlite3.time" sqlite3 "$work/sqlite3.db" <"$work/load.sql" >/dev/null
read -r sqlite_secs sqlite_kb <"$work/sqlite3.time"
sqlite_rows=$(sqlite3 "$work/sqlite3.db" 'SELECT count(*) FROM jobs')
fi

# jobsync's backfill: one --once cycle on a fresh database.
export JOBSYNC_API__BASE_URL="http://$addr" JOBSYNC_API__TOKEN=dev-token \
  JOBSYNC_DATABASE__URL="${pg_url:-sqlite://$work/jobsync.db}" JOBSYNC_SYNC__CAMPAIGNS="$campaign_list" \
  JOBSYNC_SERVER__LISTEN="" JOBSYNC_LOG__FORMAT=json RUST_LOG=warn
"$bin" migrate >/dev/null
curl -sf -X POST "http://$addr/_sim/reset-log" >/dev/null
/usr/bin/time -f '%e %M' -o "$work/jobsync.time" "$bin" --once >"$work/once1.out"
read -r jobsync_secs jobsync_kb <"$work/jobsync.time"

# Listing bytes: every `GET /j/jobs` the backfill sent (from the simulator's request log), asked
# again now that nothing changes, against one full listing of each campaign.
curl -sf "http://$addr/_sim/requests" -o "$work/requests.json"
listing_bytes() {
  curl -sf -H "Authorization: Bearer dev-token" -o /dev/null -w '%{size_download}' \
    "http://$addr/j/jobs?$1"
}
fetched_bytes=0 listings_bytes=0 listing_calls=0
while read -r query; do
  fetched_bytes=$((fetched_bytes + $(listing_bytes "$query")))
  listing_calls=$((listing_calls + 1))
done < <(sqlite3 :memory: "SELECT r.value->>'query' FROM json_each(readfile('$work/requests.json')) AS r
  WHERE r.value->>'method' = 'GET' AND r.value->>'path' = '/j/jobs' AND r.value->>'status' = 200")
for c in $(seq 1 "$CAMPAIGNS"); do
  listings_bytes=$((listings_bytes + $(listing_bytes "campaign=$c")))
done
bytes_ratio=$(awk -v a="$fetched_bytes" -v b="$listings_bytes" 'BEGIN { printf "%.2f", a / b }')
bytes_line="listing bytes fetched: $fetched_bytes in $listing_calls GET /j/jobs calls, \
$bytes_ratio× the $listings_bytes bytes of one full listing of each campaign"
# SQL on the mirror, whichever the backend.
mirror_sql() {
  if [[ -n "$pg_url" ]]; then psql -qtA "$pg_url" -c "$1"; else sqlite3 "$work/jobsync.db" "$1"; fi
}
jobsync_rows=$(mirror_sql 'SELECT count(*) FROM jobs')
# A no-change incremental cycle: count every row written to jobs and job_changes, by triggers.
if [[ -n "$pg_url" ]]; then
  mirror_sql "CREATE TABLE bench_writes (tbl TEXT);
CREATE FUNCTION bench_count() RETURNS trigger LANGUAGE plpgsql AS
  \$\$ BEGIN INSERT INTO bench_writes VALUES (TG_TABLE_NAME); RETURN NULL; END \$\$;
CREATE TRIGGER bench_jobs AFTER INSERT OR UPDATE OR DELETE ON jobs FOR EACH ROW EXECUTE FUNCTION bench_count();
CREATE TRIGGER bench_changes AFTER INSERT ON job_changes FOR EACH ROW EXECUTE FUNCTION bench_count();" >/dev/null
else
  mirror_sql "CREATE TABLE bench_writes (tbl TEXT);
CREATE TRIGGER bench_jobs_ins AFTER INSERT ON jobs BEGIN INSERT INTO bench_writes VALUES ('jobs'); END;
CREATE TRIGGER bench_jobs_upd AFTER UPDATE ON jobs BEGIN INSERT INTO bench_writes VALUES ('jobs'); END;
CREATE TRIGGER bench_jobs_del AFTER DELETE ON jobs BEGIN INSERT INTO bench_writes VALUES ('jobs'); END;
CREATE TRIGGER bench_changes_ins AFTER INSERT ON job_changes BEGIN INSERT INTO bench_writes VALUES ('job_changes'); END;"
fi
"$bin" --once >"$work/once2.out"
daemon_calls=$(daemon_second_cycle_calls)
writes=$(mirror_sql 'SELECT count(*) FROM bench_writes')
if [[ -n "$pg_url" ]]; then
  # The database outlives the script: leave no trigger behind.
  mirror_sql 'DROP TABLE bench_writes; DROP TRIGGER bench_jobs ON jobs; DROP TRIGGER bench_changes ON job_changes; DROP FUNCTION bench_count()' >/dev/null
fi
calls=$(sed -n 's/.* \([0-9]*\) API calls.*/\1/p' "$work/once2.out")
pulled=$(sed -n 's/.*pulled \([0-9]*\) jobs.*/\1/p' "$work/once1.out")

if [[ -n "$pg_url" ]]; then
  cat <<REPORT

| backfill of $((CAMPAIGNS * JOBS)) jobs into PostgreSQL | wall time | peak RSS | rows in jobs | pulled |
|---|---|---|---|---|
| jobsync --once (simulator on loopback) | ${jobsync_secs} s | $((jobsync_kb / 1024)) MiB | $jobsync_rows | $pulled |

jobsync peak RSS target ≤ 64 MiB
$bytes_line
first cycle:  $(cat "$work/once1.out")
no-change cycles (a --once, then two daemon ticks): $writes row(s) written to jobs and job_changes;
  the daemon's second tick made ${daemon_calls:-?} API call(s); the --once made $calls (a fresh
  process asks the API for its clock first):
  $(cat "$work/once2.out")
REPORT
  exit 0
fi

ratio=$(awk -v a="$jobsync_secs" -v b="$sqlite_secs" 'BEGIN { printf "%.2f", a / b }')
cat <<REPORT

| backfill of $((CAMPAIGNS * JOBS)) jobs into SQLite | wall time | peak RSS | rows in jobs | pulled |
|---|---|---|---|---|
| sqlite3 (json_each of a local file) | ${sqlite_secs} s | $((sqlite_kb / 1024)) MiB | $sqlite_rows | |
| jobsync --once (simulator on loopback) | ${jobsync_secs} s | $((jobsync_kb / 1024)) MiB | $jobsync_rows | $pulled |

jobsync / sqlite3 time: ${ratio}× (target ≤ 0.70×); jobsync peak RSS target ≤ 64 MiB
$bytes_line
first cycle:  $(cat "$work/once1.out")
no-change cycles (a --once, then two daemon ticks): $writes row(s) written to jobs and job_changes;
  the daemon's second tick made ${daemon_calls:-?} API call(s); the --once made $calls (a fresh
  process asks the API for its clock first):
  $(cat "$work/once2.out")
REPORT
