#!/usr/bin/env bash
# The Prometheus configuration as promtool (Debian's prometheus package) sees it: the config and
# the rules check, the rule unit tests pass, and every alert in alerts.yml has a unit test.
set -euo pipefail
prom=$(cd "$(dirname "$0")/../../deploy/prometheus" && pwd)
command -v promtool >/dev/null || { echo "no promtool (deploy/install-deps.sh installs it)" >&2; exit 1; }
cd "$prom"
promtool check config prometheus.yml
promtool check rules alerts.yml
promtool test rules alerts_test.yml
# Every alert is named by at least one test case.
alerts=$(sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\).*/\1/p' alerts.yml | sort -u)
tested=$(sed -n 's/^ *alertname: *\([A-Za-z0-9_]*\).*/\1/p' alerts_test.yml | sort -u)
untested=$(comm -23 <(echo "$alerts") <(echo "$tested"))
if [[ -n "$untested" ]]; then
  echo "alerts without a promtool unit test: $untested" >&2
  exit 1
fi
echo "promtool_test: $(echo "$alerts" | wc -l) alerts, all tested: passed"
