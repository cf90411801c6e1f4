# Shared by the deploy tests: start a real optd on loopback and stop it. Source it, then
#   optd_start DIR [FLAGS...]   starts $OPTD_BIN on 127.0.0.1:0 (gRPC and metrics), CPU backend,
#                               checkpoints in DIR/checkpoints; sets OPTD_PID, OPTD_PORT,
#                               OPTD_METRICS_PORT
#   optd_stop                   SIGTERM, and fails unless optd exits 0
# REQUIRES: OPTD_BIN (the built optd).
optd_start() {
  local dir=$1
  shift
  mkdir -p "$dir/checkpoints"
  rm -f "$dir/port" "$dir/metrics_port"
  "$OPTD_BIN" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --backend=cpu --cpu_threads=1 \
    --checkpoint_dir="$dir/checkpoints" --port_file="$dir/port" \
    --metrics_port_file="$dir/metrics_port" "$@" 2>"$dir/optd.log" &
  OPTD_PID=$!
  for _ in $(seq 300); do
    [[ -s "$dir/port" && -s "$dir/metrics_port" ]] && break
    if ! kill -0 "$OPTD_PID" 2>/dev/null; then
      echo "optd exited at start:" >&2
      cat "$dir/optd.log" >&2
      return 1
    fi
    sleep 0.1
  done
  OPTD_PORT=$(cat "$dir/port")
  OPTD_METRICS_PORT=$(cat "$dir/metrics_port")
}

optd_stop() {
  [[ -n "${OPTD_PID:-}" ]] || return 0
  kill -TERM "$OPTD_PID" 2>/dev/null || true
  local rc=0
  wait "$OPTD_PID" || rc=$?
  OPTD_PID=
  if [[ $rc != 0 ]]; then
    echo "optd exited $rc on SIGTERM" >&2
    return 1
  fi
}
