#!/usr/bin/env bash
# Everything the CUDA engine needs checked and timed on the GPU machine, in one command:
# GPU tests, conformance (tight, both modes), the engine benchmark and torch's fused AdamW.
# Binaries come bundled in .gpu/ by bench/cuda/bundle.sh (docs/gpu.md says how to build, carry
# and record a run); logs go to $OUT (or /tmp). On the development machine, once per commit:
#   cmake -S . -B build-cuda -DOPTD_CUDA=ON && cmake --build build-cuda -j2 \
#     --target optim_core_gpu_tests cuda_adamw_bench optd-conformance
#   bench/cuda/bundle.sh .gpu build-cuda/optim_core/cuda/optim_core_gpu_tests \
#     build-cuda/bench/cuda/cuda_adamw_bench build-cuda/optim_core/tools/optd-conformance
# then on the GPU host, in the checkout with .gpu beside it:
#   bench/cuda/run_on_gpu.sh [tests|conformance|bench|torch]...   (default: all four)
set -uo pipefail
out=${OUT:-/tmp/optd-gpu-run}
mkdir -p "$out"
# Only the bundled binaries get the bundled libraries (python's torch keeps the system ones).
lib=$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export OPTD_GOLDEN_DIR=$PWD/tests/data/golden
parts=${*:-tests conformance bench torch}
# What a record in bench/gpu-runs/ needs: card, date, the binaries' commit and the command.
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv | tee "$out/gpu.txt"
date -u | tee -a "$out/gpu.txt"
echo "binaries of commit $(cat .gpu/COMMIT 2>/dev/null || echo unknown); command: $0 $parts" |
  tee -a "$out/gpu.txt"
rc=0
for p in $parts; do
  case $p in
    tests) LD_LIBRARY_PATH=$lib timeout 300 .gpu/bin/optim_core_gpu_tests 2>&1 | tee "$out/gpu-tests.txt" || rc=1 ;;
    conformance) LD_LIBRARY_PATH=$lib timeout 120 .gpu/bin/optd-conformance --backend cuda --tight --mode both \
                   tests/data/golden 2>&1 | tee "$out/conformance-cuda.txt" || rc=1 ;;
    bench) LD_LIBRARY_PATH=$lib timeout 240 .gpu/bin/cuda_adamw_bench 2>&1 | tee "$out/bench-cuda.txt" || rc=1 ;;
    torch) PYTHONUNBUFFERED=1 timeout 180 python3 bench/cuda/torch_adamw_bench.py 2>&1 |
             tee "$out/bench-torch.txt" || rc=1 ;;
  esac
done
exit $rc
