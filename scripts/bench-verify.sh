#!/usr/bin/env bash
# verify benchmark (issue 26): a mirror of JOBS jobs in one campaign (backfilled by `--once` from
# the simulator on loopback), then `jobsync verify` on it: wall time, peak RSS, exit code and the
# findings line. The release build; the simulator runs beside it on the same host.
#
#   scripts/bench-verify.sh             # 1,000,000 jobs, SQLite
#   JOBS=100000 scripts/bench-verify.sh
#   DATABASE_URL=postgres://USER:PASS@127.0.0.1/EMPTY_DB scripts/bench-verify.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
JOBS=${JOBS:-1000000}
work=$(mktemp -d /tmp/jobsync-bench-verify.XXXXXX)
cleanup() { kill "$sim_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

cargo build --release --quiet
bin=target/release/jobsync
start_sim "$bin" "$work" --campaigns 28 --jobs-per-campaign "$JOBS"
sim_pid=$SIM_PID
db=${DATABASE_URL:-sqlite://$work/verify.db}
export JOBSYNC_API__TOKEN=dev-token JOBSYNC_API__BASE_URL="http://$SIM_ADDR" \
       JOBSYNC_SERVER__LISTEN="" JOBSYNC_API__REQUESTS_PER_SECOND=1000 \
       JOBSYNC_SYNC__CAMPAIGNS=28 JOBSYNC_LOG__FORMAT=json RUST_LOG=warn
echo "simulator on $SIM_ADDR: 1 campaign × $JOBS jobs; database ${db%%://*}"
"$bin" --once --database-url "$db" >"$work/once.out"
echo "backfill: $(cat "$work/once.out")"
start=$(date +%s.%N)
code=0
/usr/bin/time -f '%M' -o "$work/verify.kb" "$bin" verify --database-url "$db" \
  >"$work/verify.out" 2>"$work/verify.err" || code=$?
end=$(date +%s.%N)
echo "verify: exit $code, $(echo "$end - $start" | bc) s, peak RSS $(( $(cat "$work/verify.kb") / 1024 )) MiB"
cat "$work/verify.out"
[[ $code -eq 0 ]] || { cat "$work/verify.err"; exit 1; }
