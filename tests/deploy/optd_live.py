"""Shared by the deploy tests: a real optd on loopback, a small workload through the Python
client, and the metric names of a live scrape.

The workload touches every kind of series optd exports on the CPU backend: a group stepped
twice (step histogram, bytes, per-group gauges), a checkpoint, an RPC that fails (a second
status code). Names that only a CUDA engine reports are listed in CUDA_ONLY and checked against
server/metrics.cc instead, since no GPU is here."""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "client", "python"))

# Families the CUDA engine alone reports (server/metrics.h: "only once a CUDA engine reports").
CUDA_ONLY = {
    "optd_device_memory_used_bytes",
    "optd_device_memory_free_bytes",
    "optd_device_memory_total_bytes",
    "optd_device_memory_budget_bytes",
}


# The DCGM exporter's fields the dashboard may name (the exporter's default counter set: device
# fields DCGM_FI_DEV_*, profiling fields DCGM_FI_PROF_*). A name outside it is a typo.
DCGM_FIELDS = {
    "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_PROF_PCIE_TX_BYTES", "DCGM_FI_PROF_PCIE_RX_BYTES", "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "DCGM_FI_PROF_DRAM_ACTIVE",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class Optd:
    """optd on 127.0.0.1:0 (gRPC and metrics), CPU backend, checkpoints in a temp dir."""

    def __init__(self, binary, *flags):
        self.dir = tempfile.mkdtemp(prefix="optd-deploy-")
        self.checkpoints = os.path.join(self.dir, "checkpoints")
        port_file = os.path.join(self.dir, "port")
        metrics_file = os.path.join(self.dir, "metrics_port")
        self.log = open(os.path.join(self.dir, "optd.log"), "w+")
        self.proc = subprocess.Popen(
            [binary, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0", "--backend=cpu",
             "--cpu_threads=1", f"--checkpoint_dir={self.checkpoints}",
             f"--port_file={port_file}", f"--metrics_port_file={metrics_file}", *flags],
            stderr=self.log)
        deadline = time.monotonic() + 60
        while not (os.path.exists(port_file) and os.path.exists(metrics_file)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"optd did not start: {self.log.read()}")
            time.sleep(0.05)
        self.port = int(open(port_file).read())
        self.metrics_port = int(open(metrics_file).read())
        self.target = f"127.0.0.1:{self.port}"

    def scrape(self):
        return http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def stop(self):
        """SIGTERM; returns optd's exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=60)
        self.log.close()
        return rc


def run_workload(target, group="live"):
    """Creates `group`, uploads, steps twice, saves a checkpoint, and asks for a missing group."""
    import numpy as np
    import optd

    client = optd.Client(target, timeout=30)
    try:
        client.wait_ready(30)
        client.create_group(group, [("w", "float32", (4096,)), ("b", "float32", (300,))],
                            lr=1e-3)
        rng = np.random.default_rng(0)
        client.upload_weights(group, {"w": rng.standard_normal(4096).astype(np.float32),
                                      "b": np.zeros(300, np.float32)})
        for step in (1, 2):
            client.step(group, step, {"w": rng.standard_normal(4096).astype(np.float32),
                                      "b": rng.standard_normal(300).astype(np.float32)})
        client.save_checkpoint("live-ckpt")
        try:
            client.get_group("no-such-group")
        except optd.NotFoundError:
            pass
        else:
            raise AssertionError("GetGroup of a missing group succeeded")
    finally:
        client.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def sample_names(exposition):
    """Names of the samples in a text exposition (histograms as _bucket/_sum/_count)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            names.add(m.group(1))
    return names


# Metric names in PromQL: optd's, the standard process_* ones, DCGM's, and `up`.
_METRIC = re.compile(r"\b(optd_[a-z0-9_]+|process_[a-z0-9_]+|DCGM_[A-Z0-9_]+|up)\b")


def metric_names_in(promql):
    return set(_METRIC.findall(promql))


def metrics_source_names():
    """optd_ names that appear in server/metrics.cc (for CUDA_ONLY)."""
    with open(os.path.join(REPO, "server", "metrics.cc")) as f:
        return set(re.findall(r'"(optd_[a-z0-9_]+)"', f.read()))
