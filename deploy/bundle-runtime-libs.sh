#!/usr/bin/env bash
# Copies the shared libraries that the given binaries need (except glibc and the CUDA driver,
# which the target provides) into DEST. Used by Dockerfile.cuda and to carry binaries to a
# machine that lacks our C++ libraries.
# Usage: deploy/bundle-runtime-libs.sh DEST BINARY...
set -euo pipefail
dest=$1; shift
mkdir -p "$dest"
for bin in "$@"; do
  ldd "$bin" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*|libnvidia*) ;;
      *) cp -Lu "$lib" "$dest/" ;;
    esac
  done
done
