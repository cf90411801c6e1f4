#!/usr/bin/env python3
"""Wire benchmark of the Python package: optd.Client over numpy arrays (the native path over the
C++ client, and the pure-Python path forced with OPTD_PURE_PYTHON=1) and optd.torch's
PagedAdamW8bit.step() on CPU bf16 tensors, against the C++ client (bench/wire/wire_bench, run
for the same layout in the same run, or its --json output) and the loopback TCP ceiling that
program measured. Target: Python >= 80% of the C++ client.

  python3 bench/python/wire_bench.py [--layout default|tinyllama|tiny] [--streams 1,2,4,8]
      [--repeats 3] [--backend cpu|cuda] [--server PATH] [--cxx-bench PATH | --cxx-json FILE]
      [--paths native,pure] [--no-torch]

Each path runs in its own Python process (the package picks its path at import), against one
optd server this script starts; each K gets a fresh group, an untimed upload and warm-up step,
then the median of --repeats calls. Payload GB/s = 1e9 bytes/s: Step UPDATED and optd.torch's
step count gradient bytes up plus weight bytes down."""

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

import numpy as np  # noqa: E402

OPS = [("upload", "UploadWeights (up)"), ("pull", "PullWeights (down)"),
       ("step", "Step, weights UPDATED (up + down)"), ("step_none", "Step, weights NONE (up)"),
       ("torch_step", "optd.torch PagedAdamW8bit.step(), CPU bf16 (up + down)")]
# Which C++ row each Python row is compared with.
CXX_OP = {"upload": "upload", "pull": "pull", "step": "step", "step_none": "step_none",
          "torch_step": "step"}


def streams_kwargs(fn, k):
    """{'streams': k} where `fn` takes it; {} for k == 1 without it; None: K not supported."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "streams" in params:
        return {"streams": k}
    return {} if k == 1 else None


def timed(repeats, fn):
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return bc.median(seconds)


class Data:
    """Weights and gradients of a layout as flat uint16 (bf16 bits) views of two allocations."""

    def __init__(self, layout_name):
        self.tensors = bc.layout(layout_name)
        total = sum(bc.numel(s) for _, s in self.tensors)
        self.bytes = 2 * total
        self.w = bc.fill_bf16(np.empty(total, np.uint16), 0.02, 1)
        self.g = bc.fill_bf16(np.empty(total, np.uint16), 1e-3, 2)
        self.weights, self.grads, off = {}, {}, 0
        for name, shape in self.tensors:
            n = bc.numel(shape)
            self.weights[name] = self.w[off:off + n]
            self.grads[name] = self.g[off:off + n]
            off += n


def numpy_rows(optd, target, data, k, repeats, path):
    rows = {}
    kw = streams_kwargs(optd.Client, k)
    if kw is None:
        return {op: {"error": "optd.Client takes no streams="} for op in
                ("upload", "pull", "step", "step_none")}
    client = optd.Client(target, **kw)
    group = f"pywire-{path}-k{k}"
    try:
        client.create_group(group, [(n, "bfloat16", s) for n, s in data.tensors])
        client.upload_weights(group, data.weights)
        step = [1]
        client.step(group, step[0], data.grads, out=data.weights)

        def one(op, fn, nbytes):
            try:
                rows[op] = {"gbps": nbytes / timed(repeats, fn) / 1e9}
            except Exception as e:  # a failed row is reported, the others still run
                rows[op] = {"error": f"{type(e).__name__}: {e}"}

        def do_step(weights):
            step[0] += 1
            done, _ = client.step(group, step[0], data.grads,
                                  out=data.weights if weights == "updated" else None,
                                  weights=weights)
            return done

        one("upload", lambda: client.upload_weights(group, data.weights), data.bytes)
        one("pull", lambda: client.pull_weights(group, out=data.weights), data.bytes)
        one("step", lambda: do_step("updated"), 2 * data.bytes)
        one("step_none", lambda: do_step("none"), data.bytes)
        client.delete_group(group)
    except Exception as e:
        for op in ("upload", "pull", "step", "step_none"):
            rows.setdefault(op, {"error": f"{type(e).__name__}: {e}"})
    finally:
        client.close()
    return rows


def torch_row(optd, target, data, k, repeats, path):
    import torch
    import optd.torch as otorch
    kw = streams_kwargs(otorch.PagedAdamW8bit, k)
    if kw is None:
        return {"error": "optd.torch.PagedAdamW8bit takes no streams="}

    def bf16(a, shape):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).view(shape)

    params = []
    for name, shape in data.tensors:
        p = torch.nn.Parameter(bf16(data.weights[name], shape))
        p.grad = bf16(data.grads[name], shape)
        params.append(p)
    opt = otorch.PagedAdamW8bit(params, lr=1e-4, target=target, group=f"pytorch-{path}-k{k}",
                                **kw)
    try:
        opt.step()  # creates the group, uploads the weights, first step
        return {"gbps": 2 * data.bytes / timed(repeats, opt.step) / 1e9}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        for sg in opt.server_groups().values():
            try:
                sg.delete()
            except Exception:
                pass
        opt.close()


def worker(args):
    optd = bc.import_optd()
    path, detail = bc.active_path(optd)
    print(f"  data path: {path} ({detail})", flush=True)
    result = {"path": path, "rows": []}
    if args.asked and path != args.asked:  # e.g. no native library: that path has no rows
        with open(args.out, "w") as f:
            json.dump(result, f)
        return
    data = Data(args.layout)
    for k in [int(x) for x in args.streams.split(",")]:
        rows = numpy_rows(optd, args.target, data, k, args.repeats, path)
        if args.torch:
            try:
                rows["torch_step"] = torch_row(optd, args.target, data, k, args.repeats, path)
            except ImportError as e:
                rows["torch_step"] = {"error": f"no torch: {e}"}
        for op, r in rows.items():
            result["rows"].append(dict(r, op=op, k=k))
            print(f"  {path} K={k} {op}: " +
                  (f"{r['gbps']:.2f} GB/s" if "gbps" in r else r["error"]), flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f)


def run_cxx(args, out_json):
    binary = args.cxx_bench
    if not binary:
        for c in [os.path.join(bc.REPO, "build", "bench", "wire", "wire_bench"),
                  os.path.join(bc.REPO, ".gpu", "bin", "wire_bench")]:
            if os.path.exists(c):
                binary = c
                break
    if not binary or not os.path.exists(binary):
        print("C++ wire_bench not found (--cxx-bench): no C++ or TCP columns", flush=True)
        return None
    cmd = [binary, f"--layout={args.layout}", f"--streams={args.streams}",
           f"--repeats={args.repeats}", f"--backend={args.backend}", f"--server={args.server}",
           f"--json={out_json}"]
    if args.server_args:
        cmd.append(f"--server_args={args.server_args}")
    print("+ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0 or not os.path.exists(out_json):
        print("C++ wire_bench failed: no C++ or TCP columns", flush=True)
        return None
    with open(out_json) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layout", default="default")
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--server", default=bc.default_server())
    ap.add_argument("--server-args", default="", help="extra server flags, comma-separated")
    ap.add_argument("--cxx-bench", default="", help="the C++ wire_bench binary")
    ap.add_argument("--cxx-json", default="", help="figures of an earlier wire_bench --json run")
    ap.add_argument("--paths", default="native,pure")
    ap.add_argument("--no-torch", dest="torch", action="store_false")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--asked", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    tmp = tempfile.mkdtemp(prefix="optd-pywire-")
    if args.cxx_json:
        with open(args.cxx_json) as f:
            cxx = json.load(f)
    else:
        cxx = run_cxx(args, os.path.join(tmp, "cxx.json"))
    if cxx is not None and cxx.get("layout") != args.layout:
        print(f"warning: the C++ figures are for layout {cxx.get('layout')}, not {args.layout}")
    results = []
    extra = [a for a in args.server_args.split(",") if a]
    with bc.Server(args.server, args.backend, extra) as server:
        for path in args.paths.split(","):
            env = dict(os.environ)
            env.pop("OPTD_PURE_PYTHON", None)
            if path == "pure":
                env["OPTD_PURE_PYTHON"] = "1"
            out = os.path.join(tmp, f"{path}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--target",
                   server.target, "--out", out, "--asked", path, "--layout", args.layout,
                   "--streams", args.streams, "--repeats", str(args.repeats)]
            if not args.torch:
                cmd.append("--no-torch")
            print(f"+ {path} path: " + " ".join(cmd[1:]), flush=True)
            rc = subprocess.run(cmd, env=env).returncode
            if rc != 0 or not os.path.exists(out):
                print(f"{path} path: worker failed (exit {rc})", flush=True)
                continue
            with open(out) as f:
                r = json.load(f)
            if r["path"] != path:
                print(f"note: asked for the {path} path, the package ran the {r['path']} path; "
                      f"its rows are left out", flush=True)
                continue
            for row in r["rows"]:
                results.append(dict(row, path=r["path"], asked=path))
    print_table(args, cxx, results)


def print_table(args, cxx, results):
    cxx_rows = {(r["op"], r["k"]): r for r in (cxx or {}).get("client", [])}
    tcp = {t["k"]: t for t in (cxx or {}).get("tcp", [])}
    two_way = {"step", "torch_step"}
    labels = dict(OPS)
    rows, errors = [], []
    paths = [p for p in ("native", "pure") if any(r["path"] == p for r in results)]
    ordered = sorted(results, key=lambda r: ([o for o, _ in OPS].index(r["op"]),
                                             paths.index(r["path"]), r["k"]))
    for r in ordered:
        op = r["op"]
        k = r["k"]
        c = cxx_rows.get((CXX_OP[op], k), {})
        c_gbps = c.get("gbps") if not c.get("error") else None
        t = tcp.get(k, {})
        t_gbps = t.get("two_way_gbps" if op in two_way else "one_way_gbps")
        py = r.get("gbps")
        reason = f"{r['path']} path, K={k}: {r.get('error')}"
        if r.get("error") and reason not in errors:
            errors.append(reason)
        rows.append([labels[op], k, r["path"], bc.fmt(py) if py else "failed",
                     bc.fmt(c_gbps) if c_gbps else "-",
                     bc.fmt(py / c_gbps) if py and c_gbps else "-",
                     bc.fmt(t_gbps) if t_gbps else "-",
                     bc.fmt(py / t_gbps) if py and t_gbps else "-"])
    nbytes = 2 * sum(bc.numel(s) for _, s in bc.layout(args.layout))
    print(f"\n## Python package vs C++ client, layout {args.layout} ({nbytes / 2**20:.0f} MiB of "
          f"bf16 each way), --backend={args.backend}, median of {args.repeats} "
          f"(GB/s = 1e9 B/s; target Python/C++ >= 0.80)\n")
    print(bc.table(["operation", "K", "path", "Python GB/s", "C++ GB/s", "Python / C++",
                    "TCP GB/s (same K, directions)", "Python / TCP"], rows))
    print("\noptd.torch's row is compared with the C++ Step UPDATED row (same bytes both ways); "
          "TCP is one way for upload, pull and Step NONE, both ways for the other rows.")
    for e in errors:
        print("failed: " + e)


if __name__ == "__main__":
    sys.exit(main())
