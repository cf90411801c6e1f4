#!/usr/bin/env python3
"""Writes deploy/grafana/dashboards/optd.json, the optd dashboard (Grafana 10+ JSON model).
Edit the panels here and run it; tests/deploy/compose_test.py fails when the committed JSON is
not what this script writes, and tests/deploy/prometheus_live_test.py checks every metric the
dashboard names against a live scrape of optd (or the DCGM exporter's field list).

GPU panels join NVIDIA's DCGM exporter: its series carry `gpu` (the index) and `Hostname`,
optd's carry `gpu` and `hostname`, so `and on (gpu, Hostname)` keeps the GPUs optd uses."""

import json
import os
import sys

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
SEL = 'instance=~"$instance"'
GSEL = 'instance=~"$instance", group=~"$group"'
RATE = "$__rate_interval"
# DCGM series of the GPUs optd runs on (optd's labels renamed to DCGM's).
OPTD_GPUS = ('label_replace(max by (gpu, hostname) (optd_engine_state_bytes{' + SEL + '}), '
             '"Hostname", "$1", "hostname", "(.*)")')


def dcgm(metric, scale=""):
    return f"{metric}{scale} and on (gpu, Hostname) {OPTD_GPUS}"


def target(expr, legend, ref):
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def panel(title, unit, targets, description, width=12, kind="timeseries"):
    return {"type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi"}},
            "targets": [target(e, legend, chr(ord("A") + i)) for i, (e, legend) in
                        enumerate(targets)],
            "_width": width}


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_width": 24}


PANELS = [
    row("Steps"),
    panel("Step latency percentiles per group", "s", [
        (f"histogram_quantile({q}, sum by (group, le) (rate(optd_step_duration_seconds_bucket"
         f"{{{GSEL}}}[{RATE}])))", f"p{int(q * 100)} {{{{group}}}}")
        for q in (0.5, 0.9, 0.99)],
        "From the first gradient byte to the last weight byte of a step, per group."),
    panel("Steps per second per group", "ops", [
        (f"sum by (group) (rate(optd_steps_total{{{GSEL}}}[{RATE}]))", "{{group}}")],
        "Optimizer steps applied. Groups beyond --metrics_max_groups show as _other."),
    panel("Bytes on the wire", "Bps", [
        (f"sum by (group) (rate(optd_gradient_bytes_received_total{{{GSEL}}}[{RATE}]))",
         "gradients in {{group}}"),
        (f"sum by (group) (rate(optd_weight_bytes_sent_total{{{GSEL}}}[{RATE}]))",
         "weights out {{group}}")],
        "Gradient payload received and weight payload sent (chunk payload, without framing)."),
    panel("Sync workers pending and non-finite gradients", "short", [
        (f"sum by (group) (optd_workers_pending{{{GSEL}}})", "pending {{group}}"),
        (f"sum by (group) (increase(optd_nonfinite_gradient_elements_total{{{GSEL}}}[{RATE}]))",
         "NaN/Inf elements {{group}}")],
        "Workers a sync step still waits for; NaN/Inf gradient elements received."),
    row("Memory and paging"),
    panel("Engine memory per location", "bytes", [
        (f"sum by (location) (optd_engine_weight_bytes{{{SEL}}})", "weights {{location}}"),
        (f"sum by (location) (optd_engine_state_bytes{{{SEL}}})", "states {{location}}"),
        (f"sum by (location) (optd_accumulation_bytes{{{SEL}}})", "accumulation")],
        "Weights and 8-bit optimizer states held by the engine, on the device or in host memory."),
    panel("Device memory and budget", "bytes", [
        (f"max(optd_device_memory_used_bytes{{{SEL}}})", "used (card)"),
        (f"max(optd_device_memory_total_bytes{{{SEL}}})", "total (card)"),
        (f"max(optd_device_memory_budget_bytes{{{SEL}}})", "state budget"),
        (f'sum(optd_engine_state_bytes{{{SEL}, location="device"}})', "states on device")],
        "CUDA backend only. States beyond the budget are paged from pinned host memory."),
    panel("Paging in and out", "Bps", [
        (f"sum by (direction) (rate(optd_paged_bytes_total{{{SEL}}}[{RATE}]))", "{{direction}}")],
        "State bytes paged between host and device (to_device: in, to_host: out)."),
    panel("Paging wait", "percentunit", [
        (f"sum(rate(optd_page_wait_seconds_total{{{SEL}}}[{RATE}])) / "
         f"sum(rate(optd_step_duration_seconds_sum{{{SEL}}}[{RATE}]))", "wait / step time"),
        (f"sum(rate(optd_page_evictions_total{{{SEL}}}[{RATE}]))", "evictions per second")],
        "Share of step time spent waiting for states to page in (alert: over 50%)."),
    row("RPCs and process"),
    panel("RPC errors by code", "reqps", [
        (f'sum by (code) (rate(optd_rpcs_total{{{SEL}, code!="OK"}}[{RATE}]))', "{{code}}")],
        "Finished RPCs that did not end OK, by gRPC status code."),
    panel("RPCs by method", "reqps", [
        (f"sum by (method) (rate(optd_rpcs_total{{{SEL}}}[{RATE}]))", "{{method}}")],
        "Finished RPCs of every code, by method."),
    panel("Process memory", "bytes", [
        (f"process_resident_memory_bytes{{{SEL}}}", "resident {{instance}}"),
        (f"process_virtual_memory_bytes{{{SEL}}}", "virtual {{instance}}")],
        "Memory of the optd process (pinned host buffers of the CUDA engine count as resident)."),
    panel("Process CPU, descriptors, checkpoint age", "short", [
        (f"rate(process_cpu_seconds_total{{{SEL}}}[{RATE}])", "CPU cores {{instance}}"),
        (f"process_open_fds{{{SEL}}}", "open fds {{instance}}"),
        (f"time() - optd_checkpoint_last_success_timestamp_seconds{{{SEL}}}",
         "s since checkpoint {{instance}}")],
        "CPU time per second, open file descriptors, seconds since the last good checkpoint."),
    row("GPU (DCGM exporter)"),
    panel("GPU utilization", "percent", [
        (dcgm("DCGM_FI_DEV_GPU_UTIL"), "GPU {{gpu}} {{Hostname}}")],
        "DCGM's utilization of the GPUs optd runs on (joined on gpu and hostname)."),
    panel("GPU framebuffer: DCGM and optd", "bytes", [
        (dcgm("DCGM_FI_DEV_FB_USED", " * 1048576"), "DCGM used GPU {{gpu}} {{Hostname}}"),
        (f"optd_device_memory_used_bytes{{{SEL}}}", "optd sees used GPU {{gpu}} {{hostname}}")],
        "DCGM reports MiB; optd's figure is the whole card as the CUDA runtime sees it."),
    panel("GPU power and temperature", "short", [
        (dcgm("DCGM_FI_DEV_POWER_USAGE"), "W GPU {{gpu}}"),
        (dcgm("DCGM_FI_DEV_GPU_TEMP"), "°C GPU {{gpu}}")],
        "Power draw in watts and temperature in °C."),
    panel("PCIe traffic (paging shows here)", "Bps", [
        (dcgm("DCGM_FI_PROF_PCIE_TX_BYTES"), "tx GPU {{gpu}}"),
        (dcgm("DCGM_FI_PROF_PCIE_RX_BYTES"), "rx GPU {{gpu}}")],
        "Bytes per second over PCIe (DCGM profiling fields), next to optd's paging figures."),
]


def layout(panels):
    """Ids and grid positions: rows span the width, panels fill two columns."""
    x = y = 0
    out = []
    for i, p in enumerate(panels, start=1):
        p = dict(p)
        w = p.pop("_width")
        h = 1 if p["type"] == "row" else 8
        if x + w > 24 or p["type"] == "row":
            if x > 0:
                y += 8
            x = 0
        p["id"] = i
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        out.append(p)
        x += w
        if p["type"] == "row":
            x, y = 0, y + 1
    return out


def dashboard():
    variable = lambda name, query, label: {  # noqa: E731
        "type": "query", "name": name, "label": label, "datasource": DATASOURCE,
        "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
        "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}
    return {
        "uid": "optd",
        "title": "optd",
        "description": "optd optimizer-offload servers: steps, wire, memory, paging, RPCs, GPUs.",
        "tags": ["optd"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "utc",
        "templating": {"list": [
            variable("instance", "label_values(optd_groups, instance)", "optd server"),
            variable("group", 'label_values(optd_steps_total{instance=~"$instance"}, group)',
                     "group")]},
        "annotations": {"list": []},
        "panels": layout(PANELS),
    }


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "optd.json")
    text = json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"
    if sys.argv[1:] == ["--check"]:
        with open(out, encoding="utf-8") as f:
            if f.read() != text:
                sys.exit(f"{out} is not what {__file__} writes: run it")
        return
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
