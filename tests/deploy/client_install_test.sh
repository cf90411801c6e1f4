#!/usr/bin/env bash
# The client package as a C++ trainer uses it: `cmake --install` into a fresh prefix, then a
# project of its own (client_install/) finds it with find_package(optd CONFIG), builds, and runs
# against a real optd on loopback; the same program also builds with pkg-config alone, and a C
# program links the C ABI. A closed port must fail cleanly (Unavailable, no crash).
# Usage: client_install_test.sh BUILD_DIR   (BUILD_DIR has optd, optd_client, optd_client_c built)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
export OPTD_BIN=$build/server/optd
source "$here/lib.sh"

tmp=$(mktemp -d)
trap 'optd_stop || true; rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

cmake --install "$build" --prefix "$prefix" --component client >"$tmp/install.log"
for f in lib/cmake/optd/optdConfig.cmake lib/pkgconfig/optd.pc include/optd/client/client.h \
         include/optd/optd_client_c.h; do
  [[ -f $prefix/$f ]] || { echo "not installed: $f" >&2; exit 1; }
done
# The client package must not drag in the server's dependencies.
if grep -l "prometheus\|optd_core\|CUDA::" "$prefix"/lib/cmake/optd/optdTargets*.cmake \
     "$prefix"/lib/pkgconfig/*.pc; then
  echo "the installed client names a server-only dependency" >&2
  exit 1
fi

# find_package(optd CONFIG) from a project of its own.
cmake -S "$here/client_install" -B "$tmp/consumer" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" >"$tmp/configure.log" || { cat "$tmp/configure.log"; exit 1; }
cmake --build "$tmp/consumer" -j2 >"$tmp/build.log" || { cat "$tmp/build.log"; exit 1; }

# pkg-config alone (the C ABI gets an rpath: it is a shared library in a private prefix).
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
# shellcheck disable=SC2046
c++ -std=c++20 -O1 "$here/client_install/consumer.cc" -o "$tmp/consumer_pc" \
  $(pkg-config --cflags --libs optd)
# shellcheck disable=SC2046
cc "$here/client_install/consumer_c.c" -o "$tmp/consumer_c_pc" \
  $(pkg-config --cflags --libs optd_client_c) -Wl,-rpath,"$prefix/lib"

# A port nobody listens on: bind one, note it, close it.
closed_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
"$tmp/consumer/consumer" "127.0.0.1:$closed_port" --closed

optd_start "$tmp/server"
"$tmp/consumer/consumer" "127.0.0.1:$OPTD_PORT"
"$tmp/consumer/consumer_c" "127.0.0.1:$OPTD_PORT"
"$tmp/consumer_pc" "127.0.0.1:$OPTD_PORT"
"$tmp/consumer_c_pc" "127.0.0.1:$OPTD_PORT"
optd_stop
echo "client_install_test: passed"
