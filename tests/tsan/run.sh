#!/usr/bin/env bash
# Runs optd's concurrent tests under ThreadSanitizer with an instrumented Abseil.
#
# Why an instrumented Abseil: optd's locks are absl::Mutex and absl::CondVar, whose lock and wait
# code lives in libabsl_synchronization. Debian's build of it is not compiled with
# -fsanitize=thread, so TSan never learns that a lock was taken and reports every access guarded
# by one as a race. Abseil tells TSan about its locks (__tsan_mutex_* annotations) only when it is
# itself built with -fsanitize=thread. This script builds exactly the Abseil the system has
# (Debian's source package, Debian's patches, same SONAMEs, same options.h) with TSan into
# PREFIX, and runs the tests with LD_LIBRARY_PATH=PREFIX/lib so that every absl::Mutex call, from
# optd and from gRPC alike, goes through the instrumented code. optd itself is compiled against
# the system's Abseil headers, which are the same files.
#
# gRPC and protobuf stay Debian's, uninstrumented; tests/tsan/suppressions.txt says what that
# costs and what is suppressed because of it (nothing in optd's own code).
#
# Usage: tests/tsan/run.sh [PREFIX]          (default PREFIX: $HOME/.cache/optd-tsan-absl)
# Environment: OPTD_TSAN_BUILD (default build-tsan), OPTD_TSAN_LOGS (default $OPTD_TSAN_BUILD/tsan-logs),
#              JOBS (default 2).
# Needs: a deb-src line for the Debian release (apt-get source), dpkg-dev, cmake, gcc, and the
# packages of deploy/install-deps.sh. Exit status: non-zero if a test failed or TSan reported a
# race that is not inside gRPC on both sides (tests/tsan_own_races.py).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
prefix=${1:-$HOME/.cache/optd-tsan-absl}
build=${OPTD_TSAN_BUILD:-$repo/build-tsan}
logs=${OPTD_TSAN_LOGS:-$build/tsan-logs}
jobs=${JOBS:-2}

# --- 1. Abseil: the source of the installed Debian version, built with TSan into $prefix. --------
absl_version=$(dpkg-query -W -f='${Version}' libabsl-dev)  # e.g. 20220623.1-1+deb12u2
soversion=$(dpkg-query -W -f='${Package}\n' 'libabsl2*' | sed -n 's/^libabsl//p' | head -1)
if [[ ! -e $prefix/lib/libabsl_synchronization.so.$soversion || ! -e $prefix/.optd-tsan-$absl_version ]]; then
  src=$prefix/src
  mkdir -p "$src"
  if ! apt-cache showsrc abseil 2>/dev/null | grep -qx "Version: $absl_version"; then
    cat >&2 <<EOF
apt knows no source of abseil $absl_version. Add a deb-src entry for the release, e.g. as root
/etc/apt/sources.list.d/debian-src.sources (the URIs and suites of your existing entries; the
security suite too if the installed version came from there):
  Types: deb-src
  URIs: http://deb.debian.org/debian
  Suites: bookworm bookworm-updates
  Components: main
  Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
then run apt-get update and this script again.
EOF
    exit 2
  fi
  # apt-get source unpacks and applies Debian's patches (SONAME, options.h: inline namespace,
  # absl::optional etc. as own types, hardened mode), so the ABI equals the installed library's.
  (cd "$src" && apt-get source "abseil=$absl_version")
  absl_src=$(find "$src" -maxdepth 1 -type d -name 'abseil-*' | head -1)
  # Debian's build: CMAKE_BUILD_TYPE None with -g -O2 (so no NDEBUG: Abseil's debug-mode checks
  # are on in the installed library, and stay on here), C++17, shared libraries.
  cmake -S "$absl_src" -B "$src/build" -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_STANDARD=17 \
    -DBUILD_SHARED_LIBS=ON -DBUILD_TESTING=OFF -DABSL_BUILD_TESTING=OFF \
    -DCMAKE_C_FLAGS="-g -O2 -fsanitize=thread" -DCMAKE_CXX_FLAGS="-g -O2 -fsanitize=thread" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread" -DCMAKE_INSTALL_PREFIX="$prefix"
  nice -n 10 cmake --build "$src/build" -j"$jobs"
  cmake --install "$src/build" >/dev/null
  touch "$prefix/.optd-tsan-$absl_version"
fi

# --- 2. optd with TSan (CPU only; the CUDA engine is not built). --------------------------------
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOPTD_CUDA=OFF \
  -DOPTD_BUILD_BENCH=OFF -DOPTD_SANITIZE=thread
nice -n 10 cmake --build "$build" -j"$jobs" \
  --target optd optd_server_integration_tests optd_client_integration_tests

export LD_LIBRARY_PATH=$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# Check that the instrumented library is the one the binaries load, not the system's.
if ! ldd "$build/server/optd" | grep -q "libabsl_synchronization.so.$soversion => $prefix/lib/"; then
  echo "optd does not load $prefix/lib/libabsl_synchronization.so.$soversion" >&2
  exit 2
fi

# --- 3. The tests. Child optd processes inherit TSAN_OPTIONS; each process writes its own
# $logs/tsan.PID, so reports from the servers the tests start are counted too.
# exitcode=0: a report does not change a process's exit status (some tests check the status of
# the optd they started); step 4 decides instead. history_size=7 (the largest): without it TSan
# often cannot restore the earlier access's stack ("failed to restore the stack"), and a report
# with a lost stack cannot be attributed.
rm -rf "$logs" && mkdir -p "$logs"
shopt -s nullglob
export TSAN_OPTIONS="suppressions=$repo/tests/tsan/suppressions.txt log_path=$logs/tsan \
exitcode=0 history_size=7 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
status=0
# All server integration tests but one: OversizedGroupsAreRefusedBeforeAnythingIsAllocated
# asserts that the server's RSS moves less than 64 MiB, and TSan's shadow memory (several bytes
# per byte the process touches) makes RSS meaningless.
"$build/tests/server/optd_server_integration_tests" \
  --gtest_filter='-LimitsTest.OversizedGroupsAreRefusedBeforeAnythingIsAllocated' || status=1
# The C++ client against optd processes (multi-stream steps, sharded clients, TLS).
"$build/tests/client/optd_client_integration_tests" || status=1

# --- 4. What TSan said: every report not inside gRPC on both sides fails the run. -------------
if ! python3 "$repo/tests/tsan_own_races.py" "$logs"/tsan.* > "$logs/sorted.txt"; then
  status=1
fi
head -20 "$logs/sorted.txt"
echo "all reports, sorted: $logs/sorted.txt; raw logs: $logs/tsan.*"
[[ $status == 0 ]] && echo "TSan run: PASS" || echo "TSan run: FAIL"
exit $status
