#!/usr/bin/env bash
# Sets up everything and runs every test: the README's test command, and what CI runs.
# Usage: deploy/test.sh [BUILD_DIR]   (default: build)
# Environment: OPTD_CUDA=AUTO|ON|OFF (default AUTO: the CUDA engine is compiled when nvcc is
# found; its GPU-labelled tests skip with a reason when no GPU is present).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}

deploy/install-deps.sh
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DOPTD_CUDA="${OPTD_CUDA:-AUTO}"
cmake --build "$build_dir" -j"$(nproc)"
ctest --test-dir "$build_dir" --output-on-failure --timeout 600 -j"$(nproc)"
