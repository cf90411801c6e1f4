"""A real Prometheus scrapes a real optd with the repository's scrape config and alert rules:
deploy/prometheus/prometheus.yml, its optd target pointed at a test server on loopback (and the
DCGM job dropped: no exporter here), scrape and rule intervals of 1 s. Checks, through
Prometheus' HTTP API, that the target is up, that optd's series (names from a direct scrape of
the same server) were ingested with the workload's values, and that every alert rule loaded
healthy. Then checks every metric named in the alerts and in the Grafana dashboard against the
live scrape.

Usage: prometheus_live_test.py OPTD_BINARY"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

import yaml

from optd_live import (CUDA_ONLY, DCGM_FIELDS, REPO, Optd, free_port, http_get, metric_names_in,
                       metrics_source_names, run_workload, sample_names)

PROM_DIR = os.path.join(REPO, "deploy", "prometheus")
DASHBOARD = os.path.join(REPO, "deploy", "grafana", "dashboards", "optd.json")


def templated_config(optd_metrics_port, out_dir):
    with open(os.path.join(PROM_DIR, "prometheus.yml")) as f:
        config = yaml.safe_load(f)
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "optd" in jobs, "prometheus.yml has no optd job"
    jobs["optd"]["static_configs"] = [{"targets": [f"127.0.0.1:{optd_metrics_port}"]}]
    config["scrape_configs"] = [jobs["optd"]]
    for rules in config.get("rule_files", []):
        shutil.copy(os.path.join(PROM_DIR, rules), out_dir)
    path = os.path.join(out_dir, "prometheus.yml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def query(base, promql):
    body = json.loads(http_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(what, check, seconds=90):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as e:  # not listening yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {seconds} s (last: {last})")


def alert_expressions():
    with open(os.path.join(PROM_DIR, "alerts.yml")) as f:
        rules = yaml.safe_load(f)
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


def dashboard_expressions():
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    exprs = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs[f'{panel["title"]} / {target.get("refId", "?")}'] = target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if var.get("type") == "query" and q:
            exprs[f'variable {var["name"]}'] = q
    return exprs


def check_names(source, exprs, live, allow_dcgm):
    """Every metric an expression names exists in the live scrape (or is CUDA-only and defined
    in server/metrics.cc, or, for the dashboard, is DCGM's)."""
    defined = metrics_source_names()
    problems = []
    for where, expr in exprs.items():
        names = metric_names_in(expr)
        if not names:
            problems.append(f"{source} {where}: names no metric: {expr}")
        for name in names:
            if name == "up" or name in live:
                continue
            if name in CUDA_ONLY and name in defined:
                continue
            if allow_dcgm and name in DCGM_FIELDS:
                continue
            problems.append(f"{source} {where}: {name} is not in a live scrape of optd")
    return problems


def main():
    optd_binary = sys.argv[1]
    prometheus = shutil.which("prometheus")
    assert prometheus, "no prometheus binary (deploy/install-deps.sh installs Debian's)"
    server = Optd(optd_binary)
    work = tempfile.mkdtemp(prefix="prom-live-")
    prom = None
    try:
        run_workload(server.target)
        live = sample_names(server.scrape())
        config = templated_config(server.metrics_port, work)
        web = f"127.0.0.1:{free_port()}"
        base = f"http://{web}"
        prom_log = open(os.path.join(work, "prometheus.log"), "w+")
        prom = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={work}/data",
             f"--web.listen-address={web}", "--log.level=warn"],
            stdout=prom_log, stderr=subprocess.STDOUT)
        wait_for("prometheus ready", lambda: prom.poll() is None and
                 http_get(f"{base}/-/ready").strip() != "")
        up = wait_for("optd target up",
                      lambda: [r for r in query(base, 'up{job="optd"}') if r["value"][1] == "1"])
        print(f"prometheus_live_test: target {up[0]['metric']['instance']} up")

        steps = wait_for("optd_steps_total ingested",
                         lambda: query(base, 'optd_steps_total{job="optd",group="live"}'))
        assert float(steps[0]["value"][1]) == 2.0, steps
        # Every optd and process series name of the direct scrape is in Prometheus.
        names = set(json.loads(http_get(f"{base}/api/v1/label/__name__/values"))["data"])
        want = {n for n in live if n.startswith(("optd_", "process_"))}
        missing = sorted(want - names)
        assert not missing, f"scraped by hand but not in Prometheus: {missing}"
        print(f"prometheus_live_test: {len(want)} optd/process series names in Prometheus")
        ckpt = query(base, "time() - optd_checkpoint_last_success_timestamp_seconds")
        assert ckpt and 0 <= float(ckpt[0]["value"][1]) < 600, ckpt

        rules = json.loads(http_get(f"{base}/api/v1/rules"))["data"]["groups"]
        loaded = {r["name"]: r for g in rules for r in g["rules"]}
        expected = alert_expressions()
        assert set(expected) <= set(loaded), f"rules not loaded: {set(expected) - set(loaded)}"
        bad = {n: r.get("lastError") for n, r in loaded.items() if r.get("health") == "err"}
        assert not bad, f"rules in error: {bad}"
        # An expression Prometheus evaluates without error (rules evaluate every second).
        wait_for("every rule evaluated", lambda: all(
            r.get("health") == "ok" for g in json.loads(http_get(f"{base}/api/v1/rules"))
            ["data"]["groups"] for r in g["rules"]), seconds=30)
        print(f"prometheus_live_test: {len(expected)} alert rules loaded and healthy")

        problems = check_names("alert", expected, live, allow_dcgm=False)
        if os.path.exists(DASHBOARD):
            dash = dashboard_expressions()
            problems += check_names("dashboard", dash, live, allow_dcgm=True)
            # Every dashboard query is valid PromQL, as Prometheus itself parses it (Grafana's
            # variables replaced by what "All" and the rate interval would put there).
            for where, expr in dash.items():
                if expr.startswith("label_values("):
                    continue  # Grafana's own function, not PromQL
                promql = (expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
                          .replace("$group", ".*"))
                try:
                    query(base, promql)
                except Exception as e:  # HTTP 400 carries Prometheus' parse error
                    problems.append(f"dashboard {where}: Prometheus rejects {promql}: {e}")
        assert not problems, "\n".join(problems)
        print("prometheus_live_test: every metric the alerts and the dashboard name is live")
    except BaseException:
        if prom is not None:
            prom_log.seek(0)
            sys.stderr.write("prometheus log:\n" + prom_log.read()[-4000:])
        raise
    finally:
        if prom is not None and prom.poll() is None:
            prom.terminate()
            prom.wait(timeout=60)
        rc = server.stop()
        shutil.rmtree(work, ignore_errors=True)
    assert rc == 0, f"optd exited {rc} on SIGTERM"
    print("prometheus_live_test: passed")


if __name__ == "__main__":
    main()
