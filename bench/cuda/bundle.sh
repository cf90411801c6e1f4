#!/usr/bin/env bash
# Packs programs built on the development machine so that they run on the GPU host, which has
# the CUDA driver and toolkit but none of our C++ libraries (gRPC, protobuf, Abseil,
# prometheus-cpp, GoogleTest). The programs go to DEST/bin; the shared libraries they load, except
# glibc and the CUDA driver (deploy/bundle-runtime-libs.sh decides), go to DEST/lib; everything is
# stripped of symbols not needed to run, because what travels to the host must stay small.
# DEST/COMMIT records the commit the programs were built from (with "-dirty" for local changes),
# so that a recorded run can name it. See docs/gpu.md.
#
#   bench/cuda/bundle.sh DEST PROGRAM...         DEST is usually .gpu (git ignores it)
#   on the GPU host, in the checkout:  LD_LIBRARY_PATH=$PWD/DEST/lib DEST/bin/PROGRAM ...
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 DEST PROGRAM..." >&2; exit 2; }
dest=$1; shift
root=$(cd "$(dirname "$0")/../.." && pwd)
for prog in "$@"; do
  [ -x "$prog" ] || { echo "$0: $prog is not an executable" >&2; exit 2; }
done
mkdir -p "$dest/bin" "$dest/lib"
cp -L "$@" "$dest/bin/"
"$root/deploy/bundle-runtime-libs.sh" "$dest/lib" "$@"
chmod u+w "$dest"/bin/* "$dest"/lib/*
strip --strip-unneeded "$dest"/bin/* "$dest"/lib/*
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
echo "$commit" > "$dest/COMMIT"
echo "bundle: $(du -sh "$dest" | cut -f1) in $dest (commit $commit): $(ls "$dest/bin" | tr '\n' ' ')"
