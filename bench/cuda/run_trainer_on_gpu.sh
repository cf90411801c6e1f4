#!/usr/bin/env bash
# The trainer-side benchmarks of the GPU machine, in one command: the C++ wire benchmark
# (bench/wire/wire_bench: TCP ceiling and the C++ client, K = 1, 2, 4, 8, TinyLlama layout,
# --backend=cuda), the Python wire benchmark (bench/python/wire_bench.py: numpy on the native
# and the pure path, optd.torch) and the trainer benchmark (bench/torch/trainer_bench.py:
# optimizer.step() alone and the training loop). The benchmarks start their own optd servers.
#
# Needs, carried in .gpu/ (built on the development machine with -DOPTD_CUDA=ON, libraries
# copied with deploy/bundle-runtime-libs.sh .gpu/lib <binaries>; leave out libstdc++, libgcc_s,
# libssl and libcrypto, which the GPU machine has in newer versions):
#   .gpu/bin/optd  .gpu/bin/wire_bench  .gpu/lib/liboptd_client_c.so  .gpu/lib/<their libraries>
#   .gpu/site/bitsandbytes   optional, for the bitsandbytes rows (bench/torch/carry_bitsandbytes.sh)
# Logs and JSON go to $OUT (or /tmp/optd-trainer-run).
#
#   bench/cuda/run_trainer_on_gpu.sh [wire|python|trainer|pytest]...   (default: the first three)
# `pytest` runs the colocated path's Python tests against a CUDA server (tests/python/
# test_cuda_ipc.py: two processes on one GPU; test_colocated.py); PYTEST_ARGS adds arguments.
#
# Each part takes a few minutes at full size; on a machine that limits one command to 10
# minutes, run the parts as separate commands. Overrides: STREAMS (1,2,4,8), REPEATS (3),
# PY_REPEATS (2), TRAINER_STREAMS (K of optd.torch, 1), TRAINER_ARGS (extra trainer_bench
# arguments), SERVER_ARGS (extra optd flags, comma-separated); LAYOUT=tiny DEVICE=cpu
# BACKEND=cpu check the plumbing on a machine without a GPU.
set -uo pipefail
out=${OUT:-/tmp/optd-trainer-run}
mkdir -p "$out"
root=$PWD
streams=${STREAMS:-1,2,4,8}
repeats=${REPEATS:-3}
py_repeats=${PY_REPEATS:-2}
layout=${LAYOUT:-tinyllama}
device=${DEVICE:-cuda}
backend=${BACKEND:-cuda}
parts=${*:-wire python trainer}
for f in .gpu/bin/optd .gpu/bin/wire_bench; do
  [ -x "$f" ] || { echo "missing $f (see the header of $0)"; exit 2; }
done

# The bundled binaries run with the bundled libraries, through wrappers, so that Python (torch
# and its own CUDA libraries) keeps the system ones.
wrap=$(mktemp -d /tmp/optd-wrap-XXXXXX)
for b in optd wire_bench; do
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s/.gpu/bin/%s "$@"\n' \
    "$root" "$root" "$b" > "$wrap/$b"
  chmod +x "$wrap/$b"
done
# liboptd_client_c.so, loaded by Python with ctypes, needs the bundled gRPC/protobuf/Abseil:
# Python gets a folder of those alone, never libraries that torch or the system also load.
pylib=$wrap/pylib
mkdir -p "$pylib"
for l in .gpu/lib/*.so*; do
  case $(basename "$l") in
    libstdc++*|libgcc_s*|libgomp*|libz.so*|libssl*|libcrypto*|libcuda*|libcudart*|libnvidia*) ;;
    *) ln -sf "$root/$l" "$pylib/" ;;
  esac
done
export OPTD_SERVER_BIN=$wrap/optd
export OPTD_NATIVE_LIB=$root/.gpu/lib/liboptd_client_c.so
export PYTHONPATH=$root/client/python${PYTHONPATH:+:$PYTHONPATH}
[ -d .gpu/site ] && export PYTHONPATH=$root/.gpu/site:$PYTHONPATH
export PYTHONUNBUFFERED=1
printf '#!/bin/sh\nLD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec python3 "$@"\n' \
  "$pylib" > "$wrap/py"
chmod +x "$wrap/py"
py=$wrap/py

{
  nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
  date -u
  echo "cores: $(nproc)"
  git -C "$root" log -1 --format='commit %h %s' 2>/dev/null
  $py -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__)'
  $py -c 'import bitsandbytes as b; print("bitsandbytes", b.__version__)' 2>&1 | tail -1
  [ -e "$OPTD_NATIVE_LIB" ] || echo "no $OPTD_NATIVE_LIB: the Python rows run the pure path only"
} 2>&1 | tee "$out/machine.txt"

rc=0
for p in $parts; do
  case $p in
    wire) timeout 590 "$wrap/wire_bench" --layout="$layout" --streams="$streams" \
            --repeats="$repeats" --backend="$backend" --server="$wrap/optd" \
            --server_args="${SERVER_ARGS:-}" --json="$out/wire-cxx.json" 2>&1 |
            tee "$out/wire-cxx.txt" || rc=1 ;;
    python)
      if [ -s "$out/wire-cxx.json" ]; then cxx=(--cxx-json "$out/wire-cxx.json")
      else cxx=(--cxx-bench "$wrap/wire_bench"); fi
      timeout 590 $py bench/python/wire_bench.py --layout "$layout" --streams "$streams" \
        --repeats "$py_repeats" --backend "$backend" --server "$wrap/optd" \
        --server-args "${SERVER_ARGS:-}" "${cxx[@]}" 2>&1 | tee "$out/wire-python.txt" || rc=1 ;;
    trainer) timeout 590 $py bench/torch/trainer_bench.py --layout "$layout" --device "$device" \
               --backend "$backend" --server "$wrap/optd" --server-args "${SERVER_ARGS:-}" \
               --streams "${TRAINER_STREAMS:-1}" --json "$out/trainer.json" ${TRAINER_ARGS:-} 2>&1 |
               tee "$out/trainer.txt" || rc=1 ;;
    pytest) OPTD_BACKEND=cuda timeout 590 $py -m pytest -q -p no:cacheprovider \
              tests/python/test_cuda_ipc.py tests/python/test_colocated.py ${PYTEST_ARGS:-} 2>&1 |
              tee "$out/pytest-gpu.txt" || rc=1 ;;
    *) echo "unknown part $p (wire, python, trainer or pytest)"; rc=2 ;;
  esac
done
exit $rc
