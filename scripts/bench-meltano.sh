#!/usr/bin/env bash
# Side-by-side backfill (issue 14): CAMPAIGNS × JOBS jobs (default 10 × 10,000 = 100,000) mirrored
# into PostgreSQL by the Meltano SDK peer a data team would pick — the Singer pipe
# `tap-rest-api-msdk | target-postgres` (meltanolabs-target-postgres) — and by `jobsync --once`,
# each into a fresh database of its own, each run twice: the backfill, then a run with nothing
# changed. Figures: wall time, CPU time (user + system) and peak RSS (GNU time; for the pipe, the
# wall time of the whole pipe, the CPU of both processes, the larger peak), API calls, the rows
# that landed, and the ratio Meltano first run ÷ jobsync first run (the issue's target: at least
# 20× at 100,000 jobs). PostgreSQL runs on the same cores and its CPU is counted for neither
# tool: on a shared host the wall times move with the load (printed), the CPU times much less.
#
#   scripts/bench-meltano.sh                                  # 10 campaigns × 10,000 jobs
#   CAMPAIGNS=2 JOBS=1000 scripts/bench-meltano.sh            # a quick check
#   MELTANO_VENV=~/.cache/jobsync-meltano JOBSYNC_BIN=target/release/jobsync scripts/bench-meltano.sh
#
# Env: CAMPAIGNS, JOBS (per campaign, as in bench-backfill.sh); JOBSYNC_BIN (default: build the
# release binary); MELTANO_VENV (where the two venvs go, reused when present; default: the temp
# work dir, so each run installs from PyPI); TAP_VERSION, TARGET_VERSION (the pip pins);
# TARGET_EXTRA (a JSON object merged into target.json, e.g. '{"validate_records": false}');
# PG_URL (default postgres://jobsync:jobsync@127.0.0.1: a role that may own databases); the two
# databases are created with `createdb` as the `postgres` OS user and dropped at the end.
#
# The listing is served from files, the same bytes to both tools: the simulator is started once,
# each campaign's `GET /j/jobs?campaign=N` is saved to a file, the simulator is stopped, and a
# small Python server answers `/j/jobs?campaign=N` with that file (and a `Date` header, which
# jobsync reads for its watermark). `GET /j/jobs?modified_since=…` — jobsync's incremental pass,
# which the tap has no use for — is answered `[]`: files do not change, so nothing was modified,
# and both tools read exactly the campaign listings. jobsync takes a 200 `[]` as "no change":
# its watermark moves to the server's clock, and the second run, covered by that window, lists no
# campaign again (1–2 calls, `[]` each). The tap has no such window: the jobs carry no
# modification time to use as a replication key (`created_at` does not move when a job's state
# does), so its streams are FULL_TABLE and every run reads and upserts every listing again.
#
# The Singer configuration: the plugins' defaults, plus what a correct mirror needs and the
# target's documented fast path. Tap: one stream per campaign (`path` /j/jobs, `params`
# {campaign: N}, `records_path` `$[*]`, `primary_keys` [id], `single_page_paginator`),
# bearer-token auth, an explicit JSON schema (without one the tap infers it by downloading each
# listing once more before syncing, and 50 records can leave a column typed `null`), `data` kept
# as JSON text by `except_keys` (else each key of `data` becomes a column; a null `data` is stored
# as the text `null`). `except_keys` has to be set on each stream: the tap fills every stream's
# settings with their defaults, so a top-level `except_keys` is shadowed by the stream's `[]`.
# Target: upsert on `id` (a temp table and a merge per batch of 10,000), `use_copy` on, records
# validated (the SDK's default; TARGET_EXTRA='{"validate_records": false}' turns it off), one
# table per stream in `public`. The tap and the target each get their own venv, as
# `meltano install` does: they pin incompatible singer-sdk versions (tap-rest-api-msdk 1.4.2:
# 0.40.x; meltanolabs-target-postgres 0.8.1: 0.54.x). jobsync's migrations run before its timed
# runs, as in bench-backfill.sh; the target creates its tables inside its first run.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
CAMPAIGNS=${CAMPAIGNS:-10}
JOBS=${JOBS:-10000}
TAP_VERSION=${TAP_VERSION:-1.4.2}
TARGET_VERSION=${TARGET_VERSION:-0.8.1}
PG_URL=${PG_URL:-postgres://jobsync:jobsync@127.0.0.1}
TARGET_EXTRA=${TARGET_EXTRA:-"{}"}
total=$((CAMPAIGNS * JOBS))
bin=${JOBSYNC_BIN:-}
if [[ -z "$bin" ]]; then
  cargo build --release --quiet
  bin=target/release/jobsync
fi
bin=$(realpath "$bin")
work=$(mktemp -d /tmp/jobsync-bench-meltano.XXXXXX)
venv=${MELTANO_VENV:-$work/venv}
db_singer=bench_meltano_$$
db_jobsync=bench_jobsync_$$
sim_pid='' server_pid=''
as_postgres() { if [[ $(id -un) == postgres ]]; then "$@"; else su postgres -c "$(printf '%q ' "$@")"; fi; }
cleanup() {
  if [[ -n "$sim_pid" ]]; then kill "$sim_pid" 2>/dev/null || true; fi
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; fi
  as_postgres dropdb --if-exists "$db_singer" 2>/dev/null || true
  as_postgres dropdb --if-exists "$db_jobsync" 2>/dev/null || true
  rm -rf "$work"
}
# No server may outlive the script: also on Ctrl-C, a kill, or a closed pipe (`| head`).
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'exit 141' PIPE

pg_isready -q -h 127.0.0.1 || { echo "PostgreSQL does not answer on 127.0.0.1 (pg_ctlcluster 15 main start)"; exit 1; }
role=$(sed -E 's|^postgres://([^:@/]+).*|\1|' <<<"$PG_URL")
as_postgres createdb -O "$role" "$db_singer"
as_postgres createdb -O "$role" "$db_jobsync"

# The Singer plugins, one venv each (reused when MELTANO_VENV already holds the pinned versions).
installed() { "$1/bin/python" -c "import importlib.metadata as m; print(m.version('$2'))" 2>/dev/null || true; }
for plugin in "tap tap-rest-api-msdk $TAP_VERSION" "target meltanolabs-target-postgres $TARGET_VERSION"; do
  read -r dir pkg version <<<"$plugin"
  if [[ "$(installed "$venv/$dir" "$pkg")" != "$version" ]]; then
    echo "installing $pkg==$version into $venv/$dir"
    python3 -m venv "$venv/$dir"
    "$venv/$dir/bin/pip" install -q --disable-pip-version-check "$pkg==$version" >"$work/pip-$dir.log" 2>&1 \
      || { cat "$work/pip-$dir.log"; exit 1; }
  fi
done
versions="tap-rest-api-msdk $(installed "$venv/tap" tap-rest-api-msdk) (singer-sdk $(installed "$venv/tap" singer-sdk)), meltanolabs-target-postgres $(installed "$venv/target" meltanolabs-target-postgres) (singer-sdk $(installed "$venv/target" singer-sdk), SQLAlchemy $(installed "$venv/target" SQLAlchemy), psycopg $(installed "$venv/target" psycopg)), $("$venv/tap/bin/python" --version)"

# The listings, once, from the simulator, into files.
campaign_list=$(seq -s, 1 "$CAMPAIGNS")
start_sim "$bin" "$work" --campaigns "$campaign_list" --jobs-per-campaign "$JOBS"
sim_pid=$SIM_PID addr=$SIM_ADDR
mkdir "$work/listings"
for c in $(seq 1 "$CAMPAIGNS"); do
  curl -sf -H 'Authorization: Bearer dev-token' "http://$addr/j/jobs?campaign=$c" -o "$work/listings/campaign-$c.json"
done
kill "$sim_pid"; wait "$sim_pid" 2>/dev/null || true; sim_pid=''
listed=$(python3 -c 'import json, sys; print(sum(len(json.load(open(f))) for f in sys.argv[1:]))' "$work"/listings/*.json)
[[ "$listed" == "$total" ]] || { echo "the listings hold $listed jobs, not $total"; exit 1; }
echo "listings: $CAMPAIGNS files, $total jobs, $(du -ch "$work"/listings/*.json | tail -1 | cut -f1)"

# The file server: each request's path is logged, to count the calls of each run.
cat >"$work/serve.py" <<'PY'
import http.server, json, os, sys, urllib.parse
root, port_file, log_file = sys.argv[1:4]
log = open(log_file, "a", buffering=1)
class Listing(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def answer(self, status, body):
        self.send_response(status)  # also sends the Date header
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        log.write(self.path + "\n")
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if self.headers.get("Authorization") != "Bearer dev-token":
            return self.answer(403, b'{"message":"forbidden"}')
        if url.path != "/j/jobs":
            return self.answer(404, b'{"message":"not found"}')
        if "campaign" in query:
            path = os.path.join(root, "campaign-%d.json" % int(query["campaign"][0]))
            if not os.path.exists(path):
                return self.answer(404, b'{"message":"unknown campaign"}')
            with open(path, "rb") as f:
                return self.answer(200, f.read())
        if "modified_since" in query:
            return self.answer(200, b"[]")  # files do not change: nothing modified since
        return self.answer(400, json.dumps({"message": "campaign or modified_since is required"}).encode())
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Listing)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
PY
python3 "$work/serve.py" "$work/listings" "$work/port" "$work/requests.log" 2>"$work/serve.err" &
server_pid=$!
for _ in $(seq 1 100); do [[ -s "$work/port" ]] && break; sleep 0.1; done
[[ -s "$work/port" ]] || { echo "the file server did not start"; cat "$work/serve.err"; exit 1; }
base="http://127.0.0.1:$(cat "$work/port")"
touch "$work/requests.log"

# The Singer side: a schema for the tap's (flattened) records, one stream per campaign.
cat >"$work/schema.json" <<'JSON'
{"type": "object", "properties": {
  "id": {"type": "integer"}, "campaign": {"type": "integer"},
  "reference": {"type": ["string", "null"]}, "name": {"type": ["string", "null"]},
  "email": {"type": ["string", "null"]}, "numbers": {"type": ["string", "null"]},
  "address_lines": {"type": ["string", "null"]}, "postal_code": {"type": ["string", "null"]},
  "city": {"type": ["string", "null"]}, "country": {"type": ["string", "null"]},
  "appointment": {"type": ["string", "null"], "format": "date-time"},
  "data": {"type": ["string", "null"]}, "label": {"type": ["string", "null"]},
  "url": {"type": ["string", "null"]}, "value": {"type": ["number", "null"]},
  "state": {"type": "integer"}, "created_at": {"type": ["string", "null"], "format": "date-time"}}}
JSON
python3 - "$base" "$CAMPAIGNS" "$work" "$PG_URL/$db_singer" "$TARGET_EXTRA" <<'PY'
import json, sys
base, campaigns, work, url, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
json.dump({
    "api_url": base, "auth_method": "bearer_token", "bearer_token": "dev-token",
    "pagination_request_style": "single_page_paginator", "records_path": "$[*]",
    "primary_keys": ["id"],
    # except_keys per stream: a top-level one is shadowed by the stream-level default [].
    "streams": [{"name": "jobs_campaign_%d" % c, "path": "/j/jobs", "params": {"campaign": c},
                 "except_keys": ["data"], "schema": work + "/schema.json"}
                for c in range(1, campaigns + 1)],
}, open(work + "/tap.json", "w"), indent=1)
json.dump({
    "sqlalchemy_url": url.replace("postgres://", "postgresql+psycopg://", 1),
    "default_target_schema": "public", "load_method": "upsert", "use_copy": True,
    **json.loads(extra),
}, open(work + "/target.json", "w"), indent=1)
PY

# One run of the pipe, timed per process; the STATE it ends with goes to the next run, as meltano
# would pass it (FULL_TABLE streams keep no bookmark, so it changes nothing here).
singer_run() {
  local n=$1 state=()
  [[ -s "$work/state.json" ]] && state=(--state "$work/state.json")
  if ! /usr/bin/time -f '%e %M %U %S' -o "$work/tap$n.time" \
         "$venv/tap/bin/tap-rest-api-msdk" --config "$work/tap.json" "${state[@]}" 2>"$work/tap$n.log" \
       | /usr/bin/time -f '%e %M %U %S' -o "$work/target$n.time" \
         "$venv/target/bin/target-postgres" --config "$work/target.json" >"$work/target$n.out" 2>"$work/target$n.log"; then
    echo "the Singer pipe failed (run $n):"; tail -5 "$work/tap$n.log" "$work/target$n.log"; exit 1
  fi
  tail -1 "$work/target$n.out" >"$work/state.json"
}
singer_rows() {
  local sql
  sql=$(for c in $(seq 1 "$CAMPAIGNS"); do printf 'SELECT count(*) FROM public.jobs_campaign_%d UNION ALL ' "$c"; done)
  psql -qAt "$PG_URL/$db_singer" -c "SELECT sum(count) FROM (${sql% UNION ALL }) AS t"
}

# The jobsync side.
export JOBSYNC_API__BASE_URL="$base" JOBSYNC_API__TOKEN=dev-token \
  JOBSYNC_DATABASE__URL="$PG_URL/$db_jobsync" JOBSYNC_SYNC__CAMPAIGNS="$campaign_list" \
  JOBSYNC_SERVER__LISTEN="" JOBSYNC_LOG__FORMAT=json RUST_LOG=warn
"$bin" migrate >/dev/null
jobsync_run() {
  if ! /usr/bin/time -f '%e %M %U %S' -o "$work/jobsync$1.time" "$bin" --once >"$work/once$1.out" 2>"$work/once$1.log"; then
    echo "jobsync --once failed (run $1):"; cat "$work/once$1.out"; tail -5 "$work/once$1.log"; exit 1
  fi
}
calls_before=0
mark_calls() { calls_before=$(wc -l <"$work/requests.log"); }
calls() { echo $(($(wc -l <"$work/requests.log") - calls_before)); }

load=$(cut -d' ' -f1-3 /proc/loadavg)
mark_calls; jobsync_run 1; j1_calls=$(calls)
j1_rows=$(psql -qAt "$PG_URL/$db_jobsync" -c 'SELECT count(*) FROM jobs')
mark_calls; jobsync_run 2; j2_calls=$(calls)
j2_rows=$(psql -qAt "$PG_URL/$db_jobsync" -c 'SELECT count(*) FROM jobs')
mark_calls; singer_run 1; s1_calls=$(calls)
s1_rows=$(singer_rows)
mark_calls; singer_run 2; s2_calls=$(calls)
s2_rows=$(singer_rows)
# Per process: wall s, peak KiB, user s, system s. The pipe's wall time is that of its longer
# side (both start together), its peak the larger, its CPU time the sum (the client side only:
# PostgreSQL's own CPU is counted for neither tool).
read -r j1_s j1_kb j1_u j1_sys <"$work/jobsync1.time"
read -r j2_s j2_kb j2_u j2_sys <"$work/jobsync2.time"
read -r s1_tap_s s1_tap_kb s1_tap_u s1_tap_sys <"$work/tap1.time"
read -r s1_target_s s1_target_kb s1_target_u s1_target_sys <"$work/target1.time"
read -r s2_tap_s s2_tap_kb s2_tap_u s2_tap_sys <"$work/tap2.time"
read -r s2_target_s s2_target_kb s2_target_u s2_target_sys <"$work/target2.time"
s1_s=$(awk -v a="$s1_tap_s" -v b="$s1_target_s" 'BEGIN { print (a > b ? a : b) }')
s2_s=$(awk -v a="$s2_tap_s" -v b="$s2_target_s" 'BEGIN { print (a > b ? a : b) }')
cpu() { awk 'BEGIN { s = 0; for (i = 1; i < ARGC; i++) s += ARGV[i]; printf "%.2f", s }' "$@"; }
s1_cpu=$(cpu "$s1_tap_u" "$s1_tap_sys" "$s1_target_u" "$s1_target_sys")
s2_cpu=$(cpu "$s2_tap_u" "$s2_tap_sys" "$s2_target_u" "$s2_target_sys")
j1_cpu=$(cpu "$j1_u" "$j1_sys")
j2_cpu=$(cpu "$j2_u" "$j2_sys")

mib() { echo $((($1 + 512) / 1024)); }
max() { echo $(($1 > $2 ? $1 : $2)); }
s_peak=$(max "$(max "$s1_tap_kb" "$s1_target_kb")" "$(max "$s2_tap_kb" "$s2_target_kb")")
j_peak=$(max "$j1_kb" "$j2_kb")
ratio=$(awk -v a="$s1_s" -v b="$j1_s" 'BEGIN { printf "%.1f", a / b }')
ratio2=$(awk -v a="$s2_s" -v b="$j2_s" 'BEGIN { printf "%.1f", a / b }')
cpu_ratio=$(awk -v a="$s1_cpu" -v b="$j1_cpu" 'BEGIN { printf "%.1f", a / b }')
[[ "$j1_rows" == "$total" && "$s1_rows" == "$total" && "$j2_rows" == "$total" && "$s2_rows" == "$total" ]] \
  || echo "WARNING: rows landed differ from the $total jobs listed"
cat <<REPORT

| backfill of $total jobs ($CAMPAIGNS campaigns) into PostgreSQL | first run | second run, nothing changed | peak RSS | rows |
|---|---|---|---|---|
| tap-rest-api-msdk \\| target-postgres | ${s1_s} s, CPU ${s1_cpu} s ($s1_calls calls) | ${s2_s} s, CPU ${s2_cpu} s ($s2_calls calls) | $(mib "$s_peak") MiB | $s1_rows, then $s2_rows |
| jobsync --once | ${j1_s} s, CPU ${j1_cpu} s ($j1_calls calls) | ${j2_s} s, CPU ${j2_cpu} s ($j2_calls calls) | $(mib "$j_peak") MiB | $j1_rows, then $j2_rows |

Meltano first run ÷ jobsync first run: ${ratio}× wall time (target ≥ 20×), ${cpu_ratio}× CPU time; second runs: ${ratio2}× wall time
peak RSS per process: tap $(mib "$s1_tap_kb")/$(mib "$s2_tap_kb") MiB, target $(mib "$s1_target_kb")/$(mib "$s2_target_kb") MiB, jobsync $(mib "$j1_kb")/$(mib "$j2_kb") MiB (first/second run)
jobsync first run:  $(cat "$work/once1.out")
jobsync second run: $(cat "$work/once2.out")
target settings: $(python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c.pop("sqlalchemy_url"); print(json.dumps(c))' "$work/target.json")
load average before the runs: $load ($(nproc) cores)
$versions
REPORT
