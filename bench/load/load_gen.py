#!/usr/bin/env python3
"""Load generator for optd: N concurrent clients for T seconds against a real server.

Starts `optd --backend=cpu` on 127.0.0.1:0 (its own checkpoint folder and port files in a
temporary directory), then runs N client threads, each with its own optd.Client (its own gRPC
channel), in four roles by index i % 4:
  0, 1  stepper:    owns group load-<i> (sync, one worker) and steps it in a loop with random
                    gradients (weights returned: UPDATED); step latency is measured here;
  2     reader:     PullWeights of a random group, GetGroup, and now and then ListGroups;
  3     subscriber + bad requests: alternately a Subscribe to a random stepped group read for
                    about a second (ended by its deadline), and one bad request of a rotating
                    kind, each with the one status code it must get (see BAD_REQUESTS).
Every error is counted by (operation, code); an error that is not the expected code of that
operation, or a bad request that succeeds, is unexpected. The server's RSS (VmRSS of
/proc/PID/status) is sampled every 10 s; "start" is the sample after the warm-up.

Exit status: 0 when there were no unexpected errors and the RSS at the end is within
--rss_tolerance of the RSS at start; 1 otherwise. Results are recorded in bench/load/RESULTS.md.

Usage (from the repository root, Debian's python3 with python3-grpcio and numpy):
  PYTHONPATH=client/python python3 bench/load/load_gen.py --optd build/server/optd \
      --clients 64 --seconds 300
"""

import argparse
import collections
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("OPTD_PURE_PYTHON", "1")  # quiet: the pure path is the one measured here

import grpc
import numpy as np

from optd.client import Client
from optd.errors import OptdError
from optd.v1 import optd_pb2 as pb

# The tensors of every group: small enough that 64 clients fit on two cores, odd sizes so that
# partial blocks and bf16/fp16 paths are exercised, one tensor past min_8bit_size (4096).
TENSORS = [("w", "float32", (4100,)), ("b", "bfloat16", (7, 129)), ("h", "float16", (1000,))]
NUMPY = {"float32": np.float32, "bfloat16": np.uint16, "float16": np.float16}


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def random_arrays(rng, scale=1e-3):
    out = {}
    for name, dtype, shape in TENSORS:
        n = numel(shape)
        if dtype == "bfloat16":
            f = (rng.standard_normal(n).astype(np.float32) * scale).view(np.uint32)
            out[name] = (f >> 16).astype(np.uint16)
        else:
            out[name] = (rng.standard_normal(n) * scale).astype(NUMPY[dtype])
    return out


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


class Stats:
    """Counters shared by the client threads. Thread safety: one lock around everything."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ops = collections.Counter()        # operation -> completed calls (any outcome)
        self.errors = collections.Counter()     # (operation, code name) -> count
        self.unexpected = collections.Counter()  # (operation, what) -> count
        self.unexpected_samples = []
        self.step_latency = []                  # seconds, successful steps only
        self.subscribe_messages = 0

    def op(self, name):
        with self.lock:
            self.ops[name] += 1

    def error(self, name, code, expected, message=""):
        with self.lock:
            self.errors[(name, code)] += 1
            if not expected:
                self.unexpected[(name, code)] += 1
                if len(self.unexpected_samples) < 20:
                    self.unexpected_samples.append(f"{name}: {code}: {message[:300]}")


def code_name(e):
    code = e.code() if isinstance(e, grpc.RpcError) else e.code
    return code.name if hasattr(code, "name") else str(code)


def call(stats, name, fn, expected=()):
    """Runs fn(); records the outcome. `expected`: code names this operation must fail with
    (a bad request); an empty tuple means it must succeed. Returns fn's result or None."""
    stats.op(name)
    try:
        result = fn()
    except (OptdError, grpc.RpcError) as e:
        code = code_name(e)
        stats.error(name, code, code in expected, str(e))
        return None
    if expected:
        stats.error(name, "OK", False, f"expected {expected}")
    return result


def stepper(client, stats, group, stop, seed):
    rng = np.random.default_rng(seed)
    grads = random_arrays(rng)
    step = 0
    while not stop.is_set():
        step += 1
        # A fresh gradient now and then; the same one otherwise, to spend the CPU on optd.
        if step % 16 == 0:
            grads = random_arrays(rng)
        t0 = time.perf_counter()
        r = call(stats, "step", lambda: client.step(group, step, grads))
        dt = time.perf_counter() - t0
        if r is None:
            # Resynchronize with the server's record of this worker (the step may have applied).
            info = call(stats, "get_group", lambda: client.get_group(group))
            if info is not None:
                step = info.version
            continue
        done, _ = r
        if done.step != step or done.duplicate:
            stats.error("step", "WRONG_DONE", False, f"step {step}: {done}")
        with stats.lock:
            stats.step_latency.append(dt)


def reader(client, stats, groups, stop, seed):
    rng = random.Random(seed)
    n = 0
    while not stop.is_set():
        n += 1
        g = rng.choice(groups)
        call(stats, "pull", lambda: client.pull_weights(g))
        call(stats, "get_group", lambda: client.get_group(g))
        if n % 20 == 0:
            call(stats, "list_groups", client.list_groups)


def subscribe_once(stub, stats, group):
    stats.op("subscribe")
    messages = 0
    try:
        for msg in stub.Subscribe(pb.SubscribeRequest(group=group, send_current=True),
                                  timeout=0.5):
            messages += 1
    except grpc.RpcError as e:
        code = code_name(e)
        # The deadline is how a subscription ends here; anything else is an error.
        if code != "DEADLINE_EXCEEDED":
            stats.error("subscribe", code, False, e.details() or "")
    with stats.lock:
        stats.subscribe_messages += messages


def chunk(tensor, offset, dtype, n, itemsize):
    return pb.TensorChunk(tensor=tensor, offset=offset, dtype=dtype, data=bytes(n * itemsize))


def step_requests(group, *chunks, step=1):
    yield pb.StepRequest(begin=pb.StepBegin(group=group, step=step))
    for c in chunks:
        yield pb.StepRequest(gradient=c)
    yield pb.StepRequest(commit=pb.StepCommit())


def drain(responses):
    for _ in responses:
        pass


def bad_requests(stub, bad_group):
    """(name, expected code, callable) of each bad request kind; `bad_group` is this client's own
    group (uploaded, never stepped), so its failures cannot disturb anyone else's steps."""
    return [
        ("bad_step_unknown_group", "NOT_FOUND",
         lambda: drain(stub.Step(step_requests("no-such-group", chunk("w", 0, pb.FLOAT32, 256, 4)),
                                 timeout=10))),
        ("bad_get_unknown_group", "NOT_FOUND",
         lambda: stub.GetGroup(pb.GetGroupRequest(group="no/such..group"), timeout=10)),
        ("bad_step_wider_dtype", "INVALID_ARGUMENT",  # fp32 gradient for a bf16 tensor
         lambda: drain(stub.Step(step_requests(bad_group, chunk("b", 0, pb.FLOAT32, 903, 4)),
                                 timeout=10))),
        ("bad_step_misaligned_offset", "INVALID_ARGUMENT",
         lambda: drain(stub.Step(step_requests(bad_group, chunk("w", 100, pb.FLOAT32, 256, 4)),
                                 timeout=10))),
        ("bad_step_unknown_tensor", "NOT_FOUND",
         lambda: drain(stub.Step(step_requests(bad_group, chunk("nope", 0, pb.FLOAT32, 4, 4)),
                                 timeout=10))),
        ("bad_upload_past_end", "INVALID_ARGUMENT",
         lambda: stub.UploadWeights(iter([pb.UploadWeightsRequest(
             group=bad_group, chunk=chunk("h", 990, pb.FLOAT16, 20, 2))]), timeout=10)),
        ("bad_upload_wrong_dtype", "INVALID_ARGUMENT",
         lambda: stub.UploadWeights(iter([pb.UploadWeightsRequest(
             group=bad_group, chunk=chunk("h", 0, pb.BFLOAT16, 10, 2))]), timeout=10)),
        ("bad_create_existing", "ALREADY_EXISTS",
         lambda: stub.CreateGroup(pb.CreateGroupRequest(group=bad_group, tensors=[
             pb.TensorInfo(name="x", dtype=pb.FLOAT32, shape=[4])]), timeout=10)),
        ("bad_create_no_dtype", "INVALID_ARGUMENT",
         lambda: stub.CreateGroup(pb.CreateGroupRequest(group=bad_group + "-new", tensors=[
             pb.TensorInfo(name="x", shape=[4])]), timeout=10)),
        ("bad_pull_unknown_tensor", "NOT_FOUND",
         lambda: drain(stub.PullWeights(pb.PullWeightsRequest(group=bad_group, tensors=["nope"]),
                                        timeout=10))),
        ("bad_step_zero", "INVALID_ARGUMENT",
         lambda: drain(stub.Step(step_requests(bad_group, chunk("w", 0, pb.FLOAT32, 256, 4),
                                               step=0), timeout=10))),
    ]


def subscriber_and_bad(client, stats, groups, bad_group, stop, seed):
    rng = random.Random(seed)
    stub = client._stub  # the raw stub: bad requests are built by hand
    kinds = bad_requests(stub, bad_group)
    n = rng.randrange(len(kinds))
    while not stop.is_set():
        subscribe_once(stub, stats, rng.choice(groups))
        for _ in range(4):
            name, expected, fn = kinds[n % len(kinds)]
            n += 1
            call(stats, name, fn, expected=(expected,))


def start_server(optd, workdir, threads):
    port_file = os.path.join(workdir, "port")
    cmd = [optd, "--backend=cpu", "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
           f"--port_file={port_file}", f"--cpu_threads={threads}",
           f"--checkpoint_dir={workdir}"]
    log = open(os.path.join(workdir, "optd.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"optd exited with {proc.returncode}; see {log.name}")
        if os.path.exists(port_file) and open(port_file).read().endswith("\n"):
            return proc, int(open(port_file).read())
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("optd did not write its port file within 30 s")


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--optd", default="build/server/optd", help="the optd binary")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--warmup", type=float, default=20, help="seconds before the start RSS")
    ap.add_argument("--cpu_threads", type=int, default=1, help="optd's CPU engine threads")
    ap.add_argument("--rss_tolerance", type=float, default=0.10)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.clients < 4:
        ap.error("--clients: at least 4 (one per role)")

    workdir = tempfile.mkdtemp(prefix="optd-load-")
    proc, port = start_server(args.optd, workdir, args.cpu_threads)
    target = f"127.0.0.1:{port}"
    stats = Stats()
    try:
        setup = Client(target, timeout=30)
        setup.wait_ready(10)
        rng = np.random.default_rng(args.seed)
        stepped, bad = [], {}
        for i in range(args.clients):
            if i % 4 in (0, 1):
                g = f"load-{i}"
                stepped.append(g)
            elif i % 4 == 3:
                g = bad[i] = f"load-bad-{i}"
            else:
                continue
            setup.create_group(g, TENSORS, lr=1e-3)
            setup.upload_weights(g, random_arrays(rng, scale=1.0))
        rss_setup = rss_kib(proc.pid)

        stop = threading.Event()
        threads = []
        for i in range(args.clients):
            c = Client(target, timeout=30)
            if i % 4 in (0, 1):
                t = threading.Thread(target=stepper, args=(c, stats, f"load-{i}", stop, i))
            elif i % 4 == 2:
                t = threading.Thread(target=reader, args=(c, stats, stepped, stop, i))
            else:
                t = threading.Thread(target=subscriber_and_bad,
                                     args=(c, stats, stepped, bad[i], stop, i))
            t.daemon = True
            threads.append(t)
        t_start = time.time()
        for t in threads:
            t.start()

        samples = []
        rss_start = None
        steps_at_start = 0
        t_warm = t_start
        while time.time() - t_start < args.seconds:
            time.sleep(min(10, max(0.1, args.seconds - (time.time() - t_start))))
            elapsed = time.time() - t_start
            rss = rss_kib(proc.pid)
            with stats.lock:
                nsteps = len(stats.step_latency)
            samples.append((elapsed, rss, nsteps))
            if rss_start is None and elapsed >= args.warmup:
                rss_start, steps_at_start, t_warm = rss, nsteps, time.time()
            print(f"[{elapsed:6.0f} s] rss {rss / 1024:.1f} MiB, steps {nsteps}", flush=True)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        t_end = time.time()
        rss_end = rss_kib(proc.pid)
        if rss_start is None:
            rss_start = samples[0][1] if samples else rss_setup
            t_warm = t_start
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()

    wall = t_end - t_start
    lat = stats.step_latency
    steps_after_warm = len(lat) - steps_at_start
    total_ops = sum(stats.ops.values())
    unexpected = sum(stats.unexpected.values())
    rss_change = (rss_end - rss_start) / rss_start
    print()
    print(f"optd {args.optd} --backend=cpu --cpu_threads={args.cpu_threads}, "
          f"{args.clients} clients for {wall:.0f} s (warm-up {args.warmup:.0f} s), "
          f"tensors {TENSORS}")
    print(f"groups: {len(stepped)} stepped, {len(bad)} for bad requests")
    print(f"steps: {len(lat)} ok, {len(lat) / wall:.1f} steps/s overall, "
          f"{steps_after_warm / max(1e-9, t_end - t_warm):.1f} steps/s after warm-up")
    print(f"step latency: p50 {percentile(lat, 50) * 1e3:.1f} ms, "
          f"p99 {percentile(lat, 99) * 1e3:.1f} ms, max {max(lat, default=0) * 1e3:.1f} ms")
    print(f"all calls: {total_ops} ({total_ops / wall:.1f}/s); subscribe messages "
          f"{stats.subscribe_messages}")
    print("calls by operation:")
    for name, n in sorted(stats.ops.items()):
        print(f"  {name:28s} {n}")
    print("errors by (operation, code):")
    for (name, code), n in sorted(stats.errors.items()):
        mark = "  UNEXPECTED" if stats.unexpected.get((name, code)) else ""
        print(f"  {name:28s} {code:20s} {n}{mark}")
    print(f"unexpected errors: {unexpected}")
    for s in stats.unexpected_samples:
        print(f"  e.g. {s}")
    print(f"server RSS: after setup {rss_setup / 1024:.1f} MiB, start (after warm-up) "
          f"{rss_start / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB "
          f"({rss_change * 100:+.1f}%, tolerance {args.rss_tolerance * 100:.0f}%)")
    print("RSS samples (s, MiB): " + ", ".join(f"{e:.0f}:{r / 1024:.1f}" for e, r, _ in samples))
    print(f"server exit status after SIGTERM: {rc}")
    ok = unexpected == 0 and abs(rss_change) <= args.rss_tolerance and rc == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
