#!/usr/bin/env bash
# Builds the CPU image (deploy/Dockerfile) with podman on a local Debian 12 base and smoke-tests
# it; no container registry is needed. Slow (about 10 minutes on 2 cores: the image compiles
# optd), so it is not part of deploy/test.sh; its last run is recorded in deploy/check-image.log.
#
# Steps:
#   1. podman, buildah, mmdebstrap, runc from Debian (installed when missing);
#   2. a Debian 12 root filesystem made by mmdebstrap with this machine's apt sources and apt
#      options (so apt inside the image reaches the same mirror), imported as
#      localhost/optd-base:bookworm (kept between runs; --rebuild-base makes it afresh);
#   3. localhost/optd:cpu built from deploy/Dockerfile with BASE and RUNTIME_BASE set to it;
#   4. the image run with a checkpoint volume, and deploy/image_smoke.py against it: health
#      SERVING, a group created and stepped through the Python client, /metrics, a checkpoint in
#      the volume; then SIGTERM, which must end the container with exit code 0.
#
# podman's settings for these machines are in a CONTAINERS_CONF file written here: runc (crun
# cannot handle the host's mixed cgroup setup), the cgroupfs manager, and explicit ulimits (root
# here cannot raise its limits, so podman's defaults fail). Build and run use --network=host.
#
# Usage: deploy/check-image.sh [--rebuild-base] [--log FILE]   (default log: deploy/check-image.log)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
rebuild_base=0
log=$repo/deploy/check-image.log
while [[ $# -gt 0 ]]; do
  case $1 in
    --rebuild-base) rebuild_base=1 ;;
    --log) log=$2; shift ;;
    *) echo "usage: $0 [--rebuild-base] [--log FILE]" >&2; exit 2 ;;
  esac
  shift
done

work=$(mktemp -d /var/tmp/optd-check-image.XXXXXX)
container=
cleanup() {
  if [[ -n "$container" ]]; then podman rm -f "$container" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
# What is built, read before the log (itself in the repository) is rewritten.
revision="commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
git diff --quiet HEAD 2>/dev/null || revision+=" with uncommitted changes"
exec > >(tee "$log") 2>&1

start=$(date +%s)
step() { echo "== [$(( $(date +%s) - start )) s] $*"; }

step "check-image: $(date -u +%Y-%m-%dT%H:%M:%SZ), $revision"
need=()
for p in podman buildah mmdebstrap runc uidmap; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [[ ${#need[@]} -gt 0 ]]; then
  step "installing ${need[*]}"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
echo "podman $(podman --version | awk '{print $3}'), mmdebstrap $(mmdebstrap --version | awk '{print $2}'), runc $(runc --version | awk 'NR==1{print $3}')"

export CONTAINERS_CONF=$work/containers.conf
cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF

base=localhost/optd-base:bookworm
if [[ $rebuild_base == 1 ]] || ! podman image exists "$base"; then
  step "base: mmdebstrap bookworm (minbase) with this machine's apt sources and options"
  sources=()
  [[ -s /etc/apt/sources.list ]] && sources+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] && sources+=("$f")
  done
  aptopts=()
  for f in /etc/apt/apt.conf.d/*; do
    [[ -f $f ]] && aptopts+=("--aptopt=$f")
  done
  mmdebstrap --variant=minbase --include=ca-certificates "${aptopts[@]}" \
    bookworm "$work/base.tar" "${sources[@]}"
  podman import --change 'CMD ["/bin/bash"]' "$work/base.tar" "$base"
else
  step "base: $base exists (--rebuild-base makes it afresh)"
fi

step "build: localhost/optd:cpu from deploy/Dockerfile on $base"
podman build --network=host --format docker -f deploy/Dockerfile \
  --build-arg BASE="$base" --build-arg RUNTIME_BASE="$base" -t localhost/optd:cpu .
podman image inspect localhost/optd:cpu --format 'image {{.Id}}, {{.Size}} bytes, user {{.Config.User}}'

step "run: the image with a checkpoint volume, on loopback ports"
free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port)
metrics_port=$(free_port)
volume=$work/checkpoints
mkdir -p "$volume"
chmod 0777 "$volume"   # the image runs as uid 10001
container=$(podman run -d --network=host -v "$volume:/var/lib/optd" localhost/optd:cpu \
  --listen=127.0.0.1:"$port" --metrics_listen=127.0.0.1:"$metrics_port" --backend=cpu \
  --checkpoint_dir=/var/lib/optd)
echo "container ${container:0:12}"

step "smoke test"
OPTD_PURE_PYTHON=1 /usr/bin/python3 deploy/image_smoke.py "127.0.0.1:$port" \
  "http://127.0.0.1:$metrics_port/metrics" "$volume"

step "SIGTERM"
podman kill --signal TERM "$container" >/dev/null
rc=$(podman wait "$container")
echo "container log:"
podman logs "$container" 2>&1 | sed 's/^/  /'
if [[ $rc != 0 ]]; then
  echo "check-image: FAILED: the container exited $rc on SIGTERM"
  exit 1
fi
echo "smoke: SIGTERM: exit code 0"
step "check-image: passed"
