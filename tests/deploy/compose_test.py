"""deploy/compose.yaml (+ compose.gpu.yaml) and the Grafana files it mounts, checked offline:
every bind-mounted path exists; Prometheus' targets are the compose services at the ports optd
and the DCGM exporter serve; Grafana's provisioning points at the mounted dashboard folder; the
dashboard parses, uses the provisioned datasource, has unique panel ids and a query in every
panel, and is what deploy/grafana/dashboard.py writes. (Which metrics the dashboard names is
checked against a live optd by prometheus_live_test.py.) No container engine is needed."""

import json
import os
import re
import subprocess
import sys

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(REPO, "deploy")


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def flag(command, name):
    for arg in command:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def main():
    problems = []
    base = load(os.path.join(DEPLOY, "compose.yaml"))
    gpu = load(os.path.join(DEPLOY, "compose.gpu.yaml"))
    services = dict(base["services"])
    for name, svc in gpu["services"].items():
        services.setdefault(name, {}).update(svc)
    for need in ("optd", "prometheus", "grafana"):
        if need not in base["services"]:
            problems.append(f"compose.yaml: no service {need}")
    if "dcgm-exporter" not in gpu["services"]:
        problems.append("compose.gpu.yaml: no dcgm-exporter service")

    # Bind mounts and build files exist.
    mounts = {}
    for source in (base, gpu):
        for name, svc in source["services"].items():
            for volume in svc.get("volumes", []):
                host, target = volume.split(":")[:2]
                if host.startswith((".", "/")):
                    if not os.path.exists(os.path.join(DEPLOY, host)):
                        problems.append(f"{name}: mounts {host}, which does not exist")
                    mounts[(name, target)] = os.path.normpath(os.path.join(DEPLOY, host))
                elif host not in source.get("volumes", {}) and host not in base.get("volumes", {}):
                    problems.append(f"{name}: named volume {host} is not declared")
            build = svc.get("build")
            if build:
                dockerfile = os.path.join(DEPLOY, build["context"], build["dockerfile"])
                if not os.path.exists(dockerfile):
                    problems.append(f"{name}: no {build['dockerfile']}")

    # Prometheus scrapes the services where they listen.
    prom_cmd = base["services"]["prometheus"]["command"]
    config_path = flag(prom_cmd, "config.file")
    host_dir = mounts.get(("prometheus", os.path.dirname(config_path)))
    if host_dir is None:
        problems.append(f"prometheus: {config_path} is not in a mounted folder")
    else:
        config = load(os.path.join(host_dir, os.path.basename(config_path)))
        for rules in config.get("rule_files", []):
            if not os.path.exists(os.path.join(host_dir, rules)):
                problems.append(f"prometheus.yml: rule file {rules} is not beside it")
        targets = {job["job_name"]: [t for sc in job.get("static_configs", [])
                                     for t in sc["targets"]]
                   for job in config["scrape_configs"]}
        metrics_port = flag(services["optd"]["command"], "metrics_listen").rsplit(":", 1)[1]
        if targets.get("optd") != [f"optd:{metrics_port}"]:
            problems.append(f"prometheus.yml: optd target {targets.get('optd')} is not "
                            f"optd:{metrics_port}")
        if targets.get("dcgm") != ["dcgm-exporter:9400"]:
            problems.append(f"prometheus.yml: dcgm target {targets.get('dcgm')}")

    # Grafana: datasource uid, dashboard provider path = the mounted folder.
    provisioning = mounts.get(("grafana", "/etc/grafana/provisioning"))
    datasources = load(os.path.join(provisioning, "datasources", "prometheus.yaml"))["datasources"]
    uids = {d["uid"] for d in datasources}
    url = datasources[0]["url"]
    if not re.fullmatch(r"http://prometheus:9090", url):
        problems.append(f"grafana datasource url {url} is not the prometheus service")
    provider = load(os.path.join(provisioning, "dashboards", "optd.yaml"))["providers"][0]
    dash_dir = mounts.get(("grafana", provider["options"]["path"]))
    if dash_dir is None:
        problems.append(f"grafana: dashboards path {provider['options']['path']} is not mounted")
    else:
        dashboard = json.load(open(os.path.join(dash_dir, "optd.json")))
        ids = [p["id"] for p in dashboard["panels"]]
        if len(ids) != len(set(ids)):
            problems.append("dashboard: duplicate panel ids")
        titles = set()
        for p in dashboard["panels"]:
            if p["type"] == "row":
                continue
            titles.add(p["title"])
            if p["datasource"]["uid"] not in uids:
                problems.append(f"dashboard {p['title']}: datasource {p['datasource']} unknown")
            if not p.get("targets") or not all(t.get("expr") for t in p["targets"]):
                problems.append(f"dashboard {p['title']}: a target without a query")
            for t in p["targets"]:
                if t["datasource"]["uid"] not in uids:
                    problems.append(f"dashboard {p['title']}: target datasource unknown")
        for topic in ("Step latency", "Bytes on the wire", "Engine memory", "Paging",
                      "RPC errors", "Process memory", "GPU"):
            if not any(topic in t for t in titles):
                problems.append(f"dashboard: no panel about {topic}")
    generator = subprocess.run([sys.executable, os.path.join(DEPLOY, "grafana", "dashboard.py"),
                                "--check"], capture_output=True, text=True)
    if generator.returncode != 0:
        problems.append(generator.stderr.strip() or "dashboard.py --check failed")

    if problems:
        sys.exit("compose_test: FAILED\n  " + "\n  ".join(problems))
    print(f"compose_test: {len(services)} services, {len(dashboard['panels'])} dashboard panels: "
          "passed")


if __name__ == "__main__":
    main()
