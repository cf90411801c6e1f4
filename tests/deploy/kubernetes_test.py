"""deploy/kubernetes rendered and validated offline:
  - every overlay renders (kubectl kustomize, or kustomize build);
  - the built-in kinds pass kubernetes-validate --strict against Kubernetes KUBE_VERSION
    (the oldest these manifests target: gRPC probes are GA from 1.27);
  - the PodMonitor (a Prometheus Operator CRD, which kubernetes-validate has no schema for) is
    checked against the fields of its CRD that we use (PODMONITOR_SCHEMA);
  - what ties the objects together: selectors match the pod labels, the Service is headless
    and named by the StatefulSet, probes, ports, the checkpoint volume, resource requests
    (a GPU in the gpu overlays), the PodDisruptionBudget, and every Secret mounted and used;
  - every optd flag in the args is one `optd --help` lists (FLAGS_PENDING: the security work's
    flags, accepted until they are in the binary).
Usage: kubernetes_test.py OPTD_BINARY   (run with the tools venv's Python: PyYAML, jsonschema)"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KUBE = os.path.join(REPO, "deploy", "kubernetes")
OVERLAYS = ["cpu", "gpu", "gpu-secured"]
KUBE_VERSION = "1.29.0"
FLAGS_PENDING: set = set()  # flags the manifests may name before optd has them

_SECRET_REF = {"type": "object", "required": ["name", "key"], "additionalProperties": False,
               "properties": {"name": {"type": "string"}, "key": {"type": "string"},
                              "optional": {"type": "boolean"}}}
_DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
             "(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
PODMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object",
                                    "additionalProperties": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["port"],
                    "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION, "scrapeTimeout": _DURATION,
                        "basicAuth": {"type": "object", "additionalProperties": False,
                                      "properties": {"username": _SECRET_REF,
                                                     "password": _SECRET_REF}}}}}}}}}


def render(overlay):
    path = os.path.join(KUBE, "overlays", overlay)
    if shutil.which("kustomize"):
        cmd = ["kustomize", "build", path]
    else:
        kubectl = shutil.which("kubectl") or os.path.join(os.path.dirname(sys.executable),
                                                          "kubectl")
        cmd = [kubectl, "kustomize", path]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {out.stderr}")
    return out.stdout


def validate_builtin(text, overlay):
    """kubernetes-validate --strict on the rendered objects of built-in kinds."""
    docs = [d for d in yaml.safe_load_all(text) if d and "monitoring.coreos.com" not in
            d["apiVersion"]]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(docs, f)
    tool = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    if not os.path.exists(tool):
        tool = shutil.which("kubernetes-validate")
    out = subprocess.run([tool, "--strict", "-k", KUBE_VERSION, f.name], capture_output=True,
                         text=True)
    os.unlink(f.name)
    report = out.stdout + out.stderr
    passed = report.count(" passed for resource ")
    if out.returncode != 0 or passed != len(docs):
        raise AssertionError(f"{overlay}: kubernetes-validate:\n{report}")
    return passed


def optd_flags(binary):
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"^\s+--([a-z_0-9]+) \(", help_text, re.M))


def check_semantics(objs, overlay, flags):
    problems = []
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    for kind in ("StatefulSet", "Service", "PodDisruptionBudget", "PodMonitor"):
        if len(by_kind.get(kind, [])) != 1:
            problems.append(f"{overlay}: expected one {kind}")
    if problems:
        return problems
    sts, svc = by_kind["StatefulSet"][0], by_kind["Service"][0]
    pdb, pm = by_kind["PodDisruptionBudget"][0], by_kind["PodMonitor"][0]
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]

    def selects(selector, what):
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{overlay}: {what} selector {selector} does not match {labels}")

    selects(sts["spec"]["selector"]["matchLabels"], "StatefulSet")
    selects(svc["spec"]["selector"], "Service")
    selects(pdb["spec"]["selector"]["matchLabels"], "PodDisruptionBudget")
    selects(pm["spec"]["selector"]["matchLabels"], "PodMonitor")
    if svc["spec"].get("clusterIP") != "None" or sts["spec"]["serviceName"] != svc["metadata"]["name"]:
        problems.append(f"{overlay}: the StatefulSet's service is not the headless Service")
    if "maxUnavailable" not in pdb["spec"] and "minAvailable" not in pdb["spec"]:
        problems.append(f"{overlay}: PodDisruptionBudget without a budget")

    (c,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    args = {a.split("=", 1)[0][2:]: (a.split("=", 1) + ["true"])[1] for a in c["args"]}
    if args.get("listen", "").rsplit(":", 1)[-1] != str(ports.get("grpc")):
        problems.append(f"{overlay}: --listen does not serve the grpc port")
    if args.get("metrics_listen", "").rsplit(":", 1)[-1] != str(ports.get("metrics")):
        problems.append(f"{overlay}: --metrics_listen does not serve the metrics port")
    for sp in svc["spec"]["ports"]:
        if sp["targetPort"] not in ports:
            problems.append(f"{overlay}: Service port {sp['name']} targets no container port")
    for ep in pm["spec"]["podMetricsEndpoints"]:
        if ep["port"] not in ports:
            problems.append(f"{overlay}: PodMonitor port {ep['port']} is no container port")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe not in c:
            problems.append(f"{overlay}: no {probe}")
    unknown = set(args) - flags - FLAGS_PENDING
    if unknown:
        problems.append(f"{overlay}: flags optd does not have: {sorted(unknown)}")
    expected_backend = "cpu" if overlay == "cpu" else "cuda"
    if args.get("backend") != expected_backend:
        problems.append(f"{overlay}: --backend={args.get('backend')}")

    requests = c.get("resources", {}).get("requests", {})
    limits = c.get("resources", {}).get("limits", {})
    for r in ("cpu", "memory"):
        if r not in requests:
            problems.append(f"{overlay}: no {r} request")
    if "memory" not in limits:
        problems.append(f"{overlay}: no memory limit")
    if overlay.startswith("gpu") and str(limits.get("nvidia.com/gpu")) != "1":
        problems.append(f"{overlay}: no GPU limit")
    if overlay == "cpu" and "nvidia.com/gpu" in limits:
        problems.append(f"{overlay}: asks for a GPU")

    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    if mounts.get(next(iter(claims), None)) != args.get("checkpoint_dir"):
        problems.append(f"{overlay}: --checkpoint_dir is not the claimed volume")
    for name in mounts:
        if name not in volumes and name not in claims:
            problems.append(f"{overlay}: mount {name} has no volume")
    for name, v in volumes.items():
        if name not in mounts:
            problems.append(f"{overlay}: volume {name} is not mounted")
        if "secret" in v and not mounts.get(name, "").startswith("/etc/optd/"):
            problems.append(f"{overlay}: secret volume {name} mounted at {mounts.get(name)}")
    # Every file flag points into a mounted folder.
    for flag in ("tls_cert", "tls_key", "tls_client_ca", "token_file", "metrics_basic_auth_file"):
        if flag in args and not any(args[flag].startswith(p + "/") for p in mounts.values()):
            problems.append(f"{overlay}: --{flag}={args[flag]} is in no mounted volume")
    secured = overlay.endswith("secured")
    if secured != ("tls_cert" in args) or secured != ("basicAuth" in pm["spec"]["podMetricsEndpoints"][0]):
        problems.append(f"{overlay}: TLS/metrics auth should be on exactly in the secured overlay")
    sc = c.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False or not pod["spec"]["securityContext"].get("runAsNonRoot"):
        problems.append(f"{overlay}: container may run as root or escalate")
    return problems


def main():
    flags = optd_flags(sys.argv[1])
    assert "listen" in flags and "checkpoint_dir" in flags, f"optd --help: {flags}"
    problems = []
    for overlay in OVERLAYS:
        text = render(overlay)
        objs = [d for d in yaml.safe_load_all(text) if d]
        n = validate_builtin(text, overlay)
        for o in objs:
            if o["kind"] == "PodMonitor":
                try:
                    jsonschema.validate(o, PODMONITOR_SCHEMA)
                except jsonschema.ValidationError as e:
                    problems.append(f"{overlay}: PodMonitor: {e.message} at {list(e.path)}")
        problems += check_semantics(objs, overlay, flags)
        print(f"kubernetes_test: {overlay}: {len(objs)} objects rendered, {n} validated against "
              f"Kubernetes {KUBE_VERSION}")
    if problems:
        sys.exit("kubernetes_test: FAILED\n  " + "\n  ".join(problems))
    print("kubernetes_test: passed")


if __name__ == "__main__":
    main()
