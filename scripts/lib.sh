# Shared by the bench scripts (sourced, not run).

# start_sim BIN WORKDIR [SIMULATE ARGS…]: starts `BIN simulate --listen 127.0.0.1:0 ARGS…` in the
# background, its output in WORKDIR/sim.{out,err}, and waits up to 60 s for the address it
# prints. Sets SIM_PID and SIM_ADDR (host:port); exits the script if the simulator did not start.
# Once started, the caller kills SIM_PID in its own cleanup.
start_sim() {
  local bin=$1 dir=$2
  shift 2
  "$bin" simulate --listen 127.0.0.1:0 "$@" >"$dir/sim.out" 2>"$dir/sim.err" &
  SIM_PID=$!
  SIM_ADDR=
  for _ in $(seq 1 600); do
    SIM_ADDR=$(sed -n 's/^listening on //p' "$dir/sim.out" 2>/dev/null | head -1)
    [[ -n "$SIM_ADDR" ]] && return 0
    kill -0 "$SIM_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "the simulator did not start:"
  cat "$dir/sim.err"
  kill "$SIM_PID" 2>/dev/null || true
  exit 1
}
