#!/usr/bin/env bash
# Large jobs (issue 24): a backfill of N jobs (default 2,000) of SIZE_KB each (default 400) through
# `jobsync --once` against the simulator. Listing batches are bounded in bytes (8 MiB) as well as
# in jobs, so the peak RSS stays bounded whatever the jobs' size (target: <= 128 MiB at 2,000 x
# 400 KB; before the byte bound, 614 MB at 100 KB and 1.77 GB at 400 KB).
#
# Usage: scripts/bench-large-jobs.sh [N] [SIZE_KB]   (build first: cargo build --release)
# Env:   JOBSYNC_BIN (default target/release/jobsync), DATABASE_URL (default a fresh SQLite file)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${1:-2000}
SIZE_KB=${2:-400}
BIN=${JOBSYNC_BIN:-target/release/jobsync}
WORK=$(mktemp -d)
DB=${DATABASE_URL:-sqlite://$WORK/bench.db}
cleanup() { kill "$SIM_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

start_sim "$BIN" "$WORK" --campaigns 28 --jobs-per-campaign 0
BASE="http://$SIM_ADDR"

# 20 jobs per request, each with a name of SIZE_KB kilobytes.
python3 - "$BASE" "$N" "$SIZE_KB" <<'PY'
import json, sys, urllib.request
base, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) * 1024
for start in range(0, n, 20):
    jobs = [{"campaign": 28, "reference": f"big-{i}", "name": f"{i:08d}" + "x" * (size - 8)}
            for i in range(start, min(start + 20, n))]
    req = urllib.request.Request(base + "/_sim/jobs", data=json.dumps(jobs).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    urllib.request.urlopen(req).read()
PY

export JOBSYNC_API__TOKEN=dev-token JOBSYNC_API__BASE_URL="$BASE" JOBSYNC_SERVER__LISTEN="" \
       JOBSYNC_SYNC__CAMPAIGNS=28 JOBSYNC_API__REQUESTS_PER_SECOND=1000 JOBSYNC_LOG__FORMAT=json
START=$(date +%s.%N)
/usr/bin/time -f '%M' -o "$WORK/rss.kb" "$BIN" --once --database-url "$DB" >"$WORK/once.out" 2>"$WORK/once.log"
END=$(date +%s.%N)
echo "$N jobs of $SIZE_KB KB: --once in $(echo "$END - $START" | bc) s, peak RSS $(( $(cat "$WORK/rss.kb") / 1024 )) MiB (target <= 128 MiB)"
cat "$WORK/once.out"
