"""Shared parts of the Python benchmarks (bench/python/wire_bench.py, bench/torch/trainer_bench.py):
the optd server as a child process, the tensor layouts of bench/wire/layout.cc, bf16 test data,
and markdown tables. Not a library: only the benchmarks import it."""

import importlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def import_optd():
    """Imports the optd package: the installed one, else the checkout's client/python."""
    try:
        return importlib.import_module("optd")
    except ImportError:
        sys.path.insert(0, os.path.join(REPO, "client", "python"))
        return importlib.import_module("optd")


def active_path(optd):
    """('native' or 'pure', detail): the data path the imported package uses, and the library's
    path or why it is not used."""
    fn = getattr(sys.modules.get("optd.client"), "data_path", None)
    if callable(fn):
        return tuple(fn())
    return "pure", "this optd package has no native path"


def default_server():
    """$OPTD_SERVER_BIN, else the optd of a build in the checkout (build/, build-*/), else
    .gpu/bin/optd."""
    env = os.environ.get("OPTD_SERVER_BIN")
    if env:
        return env
    for d in ["build"] + sorted(x for x in os.listdir(REPO) if x.startswith("build-")):
        p = os.path.join(REPO, d, "server", "optd")
        if os.path.exists(p):
            return p
    return os.path.join(REPO, ".gpu", "bin", "optd")


class Server:
    """The optd binary on 127.0.0.1 with a free port; a context manager that stops it."""

    def __init__(self, binary, backend="cpu", extra_args=(), chunk_bytes=4 << 20):
        self.dir = tempfile.mkdtemp(prefix="optd-pybench-")
        port_file = os.path.join(self.dir, "port")
        self.log_path = os.path.join(self.dir, "server.log")
        args = [binary, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                f"--backend={backend}", "--max_message_bytes=67108864",
                f"--chunk_bytes={chunk_bytes}", f"--port_file={port_file}", *extra_args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        port = 0
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{binary} exited during start-up: {self.log()}")
            try:
                with open(port_file) as f:
                    port = int(f.read().strip() or 0)
            except (OSError, ValueError):
                port = 0
            if port > 0:
                break
            time.sleep(0.05)
        if port <= 0:
            self.stop()
            raise RuntimeError(f"{binary} wrote no port file within 60 s: {self.log()}")
        self.target = f"127.0.0.1:{port}"

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# Layouts: the same tensors (shapes, order) as bench/wire/layout.cc. TinyLlama-1.1B: hidden
# 2048, intermediate 5632, 22 layers, 4 KV heads of 64, vocab 32000, untied embeddings.
def layout(name):
    """[(tensor name, shape)] of a layout: default (16 x 8 Mi bf16), tinyllama, tiny (/16)."""
    if name == "default":
        return [(f"t{i}", (8 << 20,)) for i in range(16)]
    if name not in ("tinyllama", "tiny"):
        raise ValueError(f"layout: unknown layout {name!r} (default, tinyllama or tiny)")
    s = 1 if name == "tinyllama" else 16
    h, kv, inter, vocab = 2048 // s, 256 // s, 5632 // s, 32000 // s
    out = [("embed", (vocab, h))]
    for i in range(22):
        p = f"layers.{i}."
        out += [(p + "attn_norm", (h,)), (p + "q", (h, h)), (p + "k", (kv, h)),
                (p + "v", (kv, h)), (p + "o", (h, h)), (p + "mlp_norm", (h,)),
                (p + "gate", (inter, h)), (p + "up", (inter, h)), (p + "down", (h, inter))]
    out += [("norm", (h,)), ("lm_head", (vocab, h))]
    return out


def numel(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def fill_bf16(out, scale, seed):
    """Fills the uint16 array `out` (raw bf16 bits) with uniform values in [-scale, scale)."""
    rng = np.random.default_rng(seed)
    flat = out.reshape(-1)
    step = 1 << 22
    for off in range(0, flat.size, step):
        n = min(step, flat.size - off)
        f = rng.random(n, dtype=np.float32) * np.float32(2 * scale) - np.float32(scale)
        flat[off:off + n] = (f.view(np.uint32) >> 16).astype(np.uint16)
    return out


def median(values):
    return statistics.median(values) if values else float("nan")


def table(header, rows):
    """A markdown table as a string."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(v, digits=2):
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.{digits}f}"
