#!/usr/bin/env bash
# Builds bench/cuda/kernel_lab.cu once per kernel version and runs the versions side by side
# (Note [Why a kernel lab beside the engine benchmark] in kernel_lab.cu). Runs where nvcc is
# (the GPU machine has it). A version is a folder holding cuda/adamw_kernels.cu and, where it
# changes them, cuda/quantize.cuh and cuda/quant_buckets.h (with quant_buckets.cc): files it
# lacks come from optim_core/. The engine's own kernel is the version "engine".
#   bench/cuda/kernel_lab.sh [--profile ROWS] [--iters N] [NAME=DIR]...
# --profile ROWS: also an Nsight Compute report of the update kernel of each version on those
# rows (ncu must be on the PATH). Output and logs go to $OUT (or /tmp/optd-kernel-lab).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/optd-kernel-lab}
mkdir -p "$out/bin"
profile="" iters=50 versions=("engine=optim_core")
while [ $# -gt 0 ]; do
  case $1 in
    --profile) profile=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    *=*) versions+=("$1"); shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
build() {  # name dir
  local name=$1 dir=$2 buckets=optim_core/cuda/quant_buckets.cc
  [ -f "$dir/cuda/quant_buckets.cc" ] && buckets=$dir/cuda/quant_buckets.cc
  nvcc -std=c++20 -O3 --use_fast_math -arch=sm_90 -lineinfo -Xptxas=-v,-warn-spills \
    -I"$dir" -Ioptim_core -Ioptim_core/include -DKERNEL_SOURCE="\"cuda/adamw_kernels.cu\"" \
    bench/cuda/kernel_lab.cu "$buckets" optim_core/quant_maps.cc -o "$out/bin/lab_$name" \
    >"$out/build_$name.log" 2>&1 || { cat "$out/build_$name.log"; return 1; }
}
for v in "${versions[@]}"; do build "${v%%=*}" "${v#*=}" & done
wait
for v in "${versions[@]}"; do
  name=${v%%=*}
  grep -E 'registers|spill' "$out/build_$name.log" | grep -i adamw -A1 | head -8 || true
  "$out/bin/lab_$name" --iters "$iters" | tee "$out/lab_$name.txt"
done
if [ -n "$profile" ]; then
  for v in "${versions[@]}"; do
    name=${v%%=*}
    ncu --clock-control none --kernel-name regex:AdamWUpdateKernel --launch-skip 1 \
      --launch-count 1 --set full --import-source no -o "$out/ncu_$name" -f \
      "$out/bin/lab_$name" --rows "$profile" --profile >"$out/ncu_$name.log" 2>&1 || true
    ncu --import "$out/ncu_$name.ncu-rep" --page details --csv >"$out/ncu_$name.csv" 2>&1 || true
    ncu --import "$out/ncu_$name.ncu-rep" --page raw --csv >"$out/ncu_${name}_raw.csv" 2>&1 || true
  done
fi
