#!/usr/bin/env bash
# hadolint on both Dockerfiles; any finding fails (exceptions are annotated in the Dockerfiles
# with their reason).
# Usage: hadolint_test.sh HADOLINT
set -euo pipefail
hadolint=$1
deploy=$(cd "$(dirname "$0")/../../deploy" && pwd)
[[ -x $hadolint ]] || { echo "no $hadolint (deploy/install-deps.sh installs it)" >&2; exit 1; }
"$hadolint" --version
"$hadolint" --failure-threshold info "$deploy/Dockerfile" "$deploy/Dockerfile.cuda"
echo "hadolint_test: deploy/Dockerfile, deploy/Dockerfile.cuda: passed"
