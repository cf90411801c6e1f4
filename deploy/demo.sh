#!/usr/bin/env bash
# The README's main job: build optd, start it on a free loopback port (CUDA backend when a GPU
# is present, CPU otherwise), train a small model through it with optd.torch.PagedAdamW8bit,
# compare with the same training done locally, then stop the server (SIGTERM).
# Usage: deploy/demo.sh [BUILD_DIR]   (default: build)
# Environment: PYTHON (an interpreter with grpcio, protobuf, numpy, torch; default: the first of
# python3 and /usr/bin/python3 that has them), DEMO_ARGS (extra demo_train.py arguments),
# PARAM_SERVER=1 (also run the two-worker parameter-server example), OPTD_BIN (use this optd
# binary and skip the build).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}

cuda=OFF backend=cpu
if { command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; } &&
   nvidia-smi -L >/dev/null 2>&1; then
  cuda=ON backend=cuda
fi
optd_bin=${OPTD_BIN:-}
if [[ -z "$optd_bin" ]]; then
  echo "demo: building optd (OPTD_CUDA=$cuda) in $build_dir"
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DOPTD_CUDA=$cuda >/dev/null
  cmake --build "$build_dir" -j"$(nproc)" --target optd
  optd_bin=$build_dir/server/optd
fi

python=${PYTHON:-}
if [[ -z "$python" ]]; then
  for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import grpc, google.protobuf, numpy, torch' 2>/dev/null; then
      python=$candidate
      break
    fi
  done
fi
if [[ -z "$python" ]]; then
  echo "demo: no python3 with grpcio, protobuf, numpy and torch (deploy/install-deps.sh" \
       "installs Debian's); set PYTHON" >&2
  exit 2
fi

workdir=$(mktemp -d)
mkdir -p "$workdir/checkpoints"
server_pid=
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    wait "$server_pid" || true
  fi
  rm -rf "$workdir"
}
trap cleanup EXIT

"$optd_bin" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
  --backend="$backend" --checkpoint_dir="$workdir/checkpoints" \
  --port_file="$workdir/port" --metrics_port_file="$workdir/metrics_port" &
server_pid=$!
for _ in $(seq 300); do
  [[ -s "$workdir/port" && -s "$workdir/metrics_port" ]] && break
  kill -0 "$server_pid" 2>/dev/null || { echo "demo: optd exited" >&2; exit 1; }
  sleep 0.1
done
port=$(cat "$workdir/port")
metrics_port=$(cat "$workdir/metrics_port")
target=127.0.0.1:$port

status=0
PYTHONPATH=client/python "$python" client/python/examples/demo_train.py --target "$target" \
  --metrics_url "http://127.0.0.1:$metrics_port/metrics" --backend "$backend" ${DEMO_ARGS:-} ||
  status=$?
if [[ "${PARAM_SERVER:-0}" == 1 && $status == 0 ]]; then
  PYTHONPATH=client/python "$python" client/python/examples/param_server.py \
    --target "$target" || status=$?
fi

kill -TERM "$server_pid"
wait "$server_pid" || { echo "demo: optd did not exit cleanly" >&2; status=${status:-1}; }
server_pid=
exit $status
