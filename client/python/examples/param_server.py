#!/usr/bin/env python3
"""A parameter-server setup on one optd server: two workers in sync mode push their gradients
for each step (the server averages them and applies one update), and a subscriber (e.g. an
inference replica) receives every new weight version.

  python param_server.py --target 127.0.0.1:50051 [--steps 20]

Exit status 0 when both workers end with identical weights, the subscriber saw every version
and its last version equals the workers' weights."""

import argparse
import os
import sys
import threading
import uuid

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import optd  # noqa: E402

DIM = 4096  # a linear model y = x @ w; 4096 weights: 8-bit states


def make_data(seed, n=512):
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(DIM).astype(np.float32) / np.sqrt(DIM)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x, (x @ w_true).astype(np.float32)


def worker(target, group, rank, steps, x, y, results):
    client = optd.Client(target)
    w = np.zeros(DIM, np.float32)
    _, got = client.pull_weights(group, out={"w": w})
    half = slice(rank * len(x) // 2, (rank + 1) * len(x) // 2)  # each worker has its own shard
    xs, ys = x[half], y[half]
    for k in range(1, steps + 1):
        err = xs @ w - ys
        grad = (2.0 / len(xs)) * (xs.T @ err).astype(np.float32)
        done, _ = client.step(group, k, {"w": grad}, out={"w": w}, worker=rank)
        if rank == 0 and (k == 1 or k % 5 == 0):
            loss = float(np.mean((x @ w - y) ** 2))
            print(f"  step {k:3d}  version {done.version}  loss {loss:.5f}", flush=True)
    results[rank] = w


def subscriber(target, group, steps, seen, ready):
    client = optd.Client(target)
    sub = client.subscribe(group, send_current=True)
    ready.set()
    for version, weights in sub:
        seen.append((version, weights["w"].copy()))
        if version >= steps:
            sub.cancel()
            break


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=os.environ.get("OPTD_TARGET", "127.0.0.1:50051"))
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()

    group = f"ps-{uuid.uuid4().hex[:8]}"
    admin = optd.Client(args.target)
    admin.create_group(group, [("w", "float32", (DIM,))], num_workers=2, mode="sync",
                       sync_timeout_ms=30000, lr=1e-2, weight_decay=0.0)
    admin.upload_weights(group, {"w": np.zeros(DIM, np.float32)})
    print(f"param_server: group {group} on {args.target}: 2 workers (sync), 1 subscriber")

    x, y = make_data(0)
    seen, ready, results = [], threading.Event(), {}
    sub = threading.Thread(target=subscriber, args=(args.target, group, args.steps, seen, ready))
    sub.start()
    ready.wait()
    workers = [threading.Thread(target=worker, args=(args.target, group, r, args.steps, x, y,
                                                     results)) for r in (0, 1)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    sub.join(timeout=60)

    versions = [v for v, _ in seen]
    same = len(results) == 2 and np.array_equal(results[0], results[1])
    last_ok = bool(seen) and versions[-1] == args.steps and np.array_equal(seen[-1][1], results[0])
    print(f"param_server: workers identical: {same}; subscriber saw versions {versions[0] if seen else '-'}"
          f"..{versions[-1] if seen else '-'} ({len(set(versions))} distinct); last version "
          f"equals the workers' weights: {last_ok}")
    print(f"param_server: final loss {float(np.mean((x @ results[0] - y) ** 2)):.5f} "
          f"(initial {float(np.mean(y ** 2)):.5f})")
    admin.delete_group(group)
    return 0 if same and last_ok else 1


if __name__ == "__main__":
    sys.exit(main())
