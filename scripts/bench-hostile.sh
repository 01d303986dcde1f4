#!/usr/bin/env bash
# Peak memory of `jobsync --once` against hostile listings: a 10 MB job, a body that never ends
# (whitespace without end), and one that trickles a byte a second. Each run must fail with the cap
# or the stall named, within `api.timeout_secs` (5 s here) plus a few seconds, in bounded memory.
#
#   scripts/bench-hostile.sh            # builds the release binary first
#   JOBSYNC_BIN=target/debug/jobsync scripts/bench-hostile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${JOBSYNC_BIN:-}
if [[ -z "$bin" ]]; then
  cargo build --release --quiet
  bin=target/release/jobsync
fi
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT

cat > "$work/hostile.py" <<'PY'
import http.server, socketserver, sys, time, json, email.utils
mode = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Date", email.utils.formatdate(usegmt=True))
        if "campaign=" not in self.path:
            self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"[]"); return
        self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
        def chunk(b):
            self.wfile.write(b"%x\r\n" % len(b) + b + b"\r\n"); self.wfile.flush()
        try:
            if mode == "huge":
                chunk(b'[{"id":1,"campaign":28,"name":"')
                for _ in range(10 * 16): chunk(b"x" * 65536)
                chunk(b'","state":0}]'); chunk(b"")
            elif mode == "endless":
                chunk(b"[")
                while True: chunk(b" " * 65536)
            elif mode == "trickle":
                chunk(b"[")
                while True: time.sleep(1); chunk(b" ")
        except (BrokenPipeError, ConnectionResetError):
            pass
socketserver.ThreadingTCPServer.allow_reuse_address = True
with socketserver.ThreadingTCPServer(("127.0.0.1", int(sys.argv[1])), H) as s:
    s.serve_forever()
PY

printf '%-8s %-8s %-10s %s\n' case exit "peak RSS" "error"
for mode in huge endless trickle; do
  port=$((20000 + RANDOM % 20000))
  python3 "$work/hostile.py" "$port" "$mode" &
  server=$!
  for _ in $(seq 1 50); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  set +e
  JOBSYNC_API__BASE_URL="http://127.0.0.1:$port" JOBSYNC_API__TOKEN=t \
    JOBSYNC_API__TIMEOUT_SECS=5 JOBSYNC_API__MAX_ATTEMPTS=1 JOBSYNC_SYNC__CAMPAIGNS=28 \
    JOBSYNC_DATABASE__URL="sqlite://$work/$mode.db" JOBSYNC_SERVER__LISTEN= JOBSYNC_LOG__FORMAT=json \
    /usr/bin/time -v -o "$work/$mode.time" "$bin" --once > /dev/null 2> "$work/$mode.err"
  code=$?
  set -e
  kill $server 2>/dev/null || true; wait $server 2>/dev/null || true
  rss=$(awk -F': ' '/Maximum resident/ {printf "%.0f MiB", $2/1024}' "$work/$mode.time")
  wall=$(awk -F': ' '/Elapsed \(wall/ {print $2}' "$work/$mode.time")
  printf '%-8s %-8s %-10s %s (%s)\n' "$mode" "$code" "$rss" "$(grep '^error:' "$work/$mode.err" | cut -c1-120)" "$wall"
done
