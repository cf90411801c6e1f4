#!/usr/bin/env bash
# Regenerates client/python/optd/v1/optd_pb2*.py with Debian 12's protoc 3.21 and
# grpc_python_plugin (package protobuf-compiler-grpc).
#   regen_stubs.sh          rewrite the committed files
#   regen_stubs.sh --check  fail if the committed files differ from a fresh generation
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
protoc=${PROTOC:-protoc}
plugin=${GRPC_PYTHON_PLUGIN:-$(command -v grpc_python_plugin)}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$protoc" --proto_path="$root/proto" --python_out="$out" --grpc_python_out="$out" \
  --plugin=protoc-gen-grpc_python="$plugin" "$root/proto/optd/v1/optd.proto"
dest="$root/client/python/optd/v1"
if [[ "${1:-}" == "--check" ]]; then
  status=0
  for f in optd_pb2.py optd_pb2_grpc.py; do
    if ! diff -q "$out/optd/v1/$f" "$dest/$f" >/dev/null; then
      echo "client/python/optd/v1/$f is stale: run tests/python/regen_stubs.sh" >&2
      status=1
    fi
  done
  exit $status
fi
cp "$out/optd/v1/optd_pb2.py" "$out/optd/v1/optd_pb2_grpc.py" "$dest/"
echo "regenerated $dest"
