#!/usr/bin/env bash
# Unpacks a bitsandbytes wheel into DEST (a folder for PYTHONPATH), keeping only the native
# libraries a CUDA 13.0 torch loads (libbitsandbytes_cuda130.so) and the CPU one: the wheel
# carries a library per CUDA version (60.7 MB for 0.49.2); what is kept is about 4 MB, small
# enough to carry to the GPU machine, which has no package index. Fetch the wheel first, e.g.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_24_x86_64 -d /tmp/bnbwheel bitsandbytes==0.49.2
# Usage: bench/torch/carry_bitsandbytes.sh WHEEL [DEST=.gpu/site] [CUDA=130]
set -euo pipefail
wheel=$1
dest=${2:-.gpu/site}
cuda=${3:-130}
mkdir -p "$dest"
python3 - "$wheel" "$dest" "$cuda" <<'PY'
import re, sys, zipfile
wheel, dest, cuda = sys.argv[1:]
keep_lib = {f"libbitsandbytes_cuda{cuda}.so", "libbitsandbytes_cpu.so"}
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = name.rsplit("/", 1)[-1]
        if re.match(r"libbitsandbytes_.*\.so$", base) and base not in keep_lib:
            continue
        z.extract(name, dest)
PY
du -sh "$dest"/bitsandbytes
