#!/usr/bin/env python3
"""Trainer benchmark: a TinyLlama-1.1B-shaped decoder in bf16 (bench/torch/llama_model.py) with
torch's fused AdamW and bitsandbytes' PagedAdamW8bit in process, and optd.torch.PagedAdamW8bit
against an optd server this script starts on the same host (with and without the overlap
with backward).

  python3 bench/torch/trainer_bench.py [--layout tinyllama|tiny] [--device cuda|cpu]
      [--modes step,train] [--optimizers torch,bnb,optd,optd-overlap,...] [--micro-batches 1,16]
      [--server PATH] [--backend cuda|cpu] [--streams K] [--json FILE]
  python3 bench/torch/trainer_bench.py --layout tiny --device cpu   # smoke test without a GPU

Note [What the trainer benchmark measures]
- step: optimizer.step() alone. Every optimizer gets the same freshly built model (fixed seed)
  and the same random gradients (fixed seed, regenerated identically in each process), set
  again before every step. Time: median of --steps after --warmup, with
  torch.cuda.synchronize() before and after each step, so queued device work is counted.
- train: forward + backward + step on micro-batches of --batch x --seq tokens, 1 and 16
  micro-batches per step (gradients accumulate; optd's overlap mode streams only on the last
  micro-batch, the others run under opt.no_sync()). Tokens/s = tokens per step / median step
  time, each step synchronized. "fwd+bwd only" is the same loop with no optimizer at all: the
  ceiling any optimizer can reach.
- Memory (CUDA): torch.cuda.max_memory_allocated over the timed steps; what the optimizer added
  in torch's allocator (memory_allocated after the steps minus before the optimizer existed);
  the CUDA driver's view (mem_get_info: card-wide used memory after minus before, which also
  sees bitsandbytes' managed memory, outside torch's allocator, and, for optd rows, the optd
  server's own device memory on the same card); and this process's device memory as NVML lists
  it, where the driver lists processes.
Each optimizer runs in its own Python process (a clean allocator and driver view per row)."""

import argparse
import contextlib
import gc
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python"))
import bench_common as bc  # noqa: E402
import llama_model  # noqa: E402

import torch  # noqa: E402

OPTIMIZERS = {
    "none": "fwd+bwd only (no optimizer)",
    "torch": "torch AdamW(fused=True), in process",
    "bnb": "bitsandbytes PagedAdamW8bit, in process",
    "optd": "optd.torch PagedAdamW8bit, no overlap",
    "optd-overlap": "optd.torch PagedAdamW8bit, overlap",
    "optd-overlap-offload": "optd.torch PagedAdamW8bit, overlap + offload_gradients",
    "optd-shm": "optd.torch PagedAdamW8bit, transport shm (colocated, host shared memory)",
    "optd-cuda-ipc": "optd.torch PagedAdamW8bit, transport cuda_ipc (colocated, same GPU)",
}
DEFAULT_OPTIMIZERS = "none,torch,bnb,optd,optd-overlap,optd-overlap-offload"


NOTES = set()  # said once per worker, printed under the tables


class Skip(Exception):
    """A row that cannot run here, with the reason."""


# Optimizers -----------------------------------------------------------------------------------
def _takes(fn, name):
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def make_optimizer(name, params, args, group):
    lr = args.lr
    if name == "torch":
        if args.device == "cuda":
            return torch.optim.AdamW(params, lr=lr, fused=True)
        return torch.optim.AdamW(params, lr=lr)  # fused AdamW needs CUDA tensors on torch 1.13
    if name == "bnb":
        try:
            import bitsandbytes as bnb
        except Exception as e:  # ImportError, or a library that fails to load
            raise Skip(f"bitsandbytes not importable: {type(e).__name__}: {e}") from None
        if args.device != "cuda":
            raise Skip("bitsandbytes PagedAdamW8bit needs CUDA tensors")
        return bnb.optim.PagedAdamW8bit(params, lr=lr)
    if name.startswith("optd"):
        import optd.torch as otorch
        cls = otorch.PagedAdamW8bit
        kw = dict(lr=lr, target=args.target, group=group)
        # The rows name their data path: gRPC unless the row is a colocated one ("auto" would
        # pick a colocated path on this host).
        transport = "cuda_ipc" if name == "optd-cuda-ipc" else "shm" if name == "optd-shm" \
            else "grpc"
        if _takes(cls.__init__, "transport"):
            kw["transport"] = transport
        elif transport != "grpc":
            raise Skip(f"optd.torch.PagedAdamW8bit takes no transport= ({transport})")
        overlap = "overlap" in name
        offload = "offload" in name
        if _takes(cls.__init__, "streams"):
            kw["streams"] = args.streams
        elif args.streams != 1:
            NOTES.add(f"optd.torch.PagedAdamW8bit takes no streams=: its rows ran one stream, "
                      f"not {args.streams}")
        if _takes(cls.__init__, "overlap"):
            kw["overlap"] = overlap
            if overlap and not hasattr(torch.Tensor, "register_post_accumulate_grad_hook"):
                NOTES.add(f"torch {torch.__version__} has no register_post_accumulate_grad_hook:"
                          f" the overlap rows ran optd.torch's same API without the overlap")
        elif overlap:
            raise Skip("optd.torch.PagedAdamW8bit takes no overlap= (no overlap mode)")
        if offload:
            if not _takes(cls.__init__, "offload_gradients"):
                raise Skip("optd.torch.PagedAdamW8bit takes no offload_gradients=")
            kw["offload_gradients"] = True
        return cls(params, **kw)
    raise ValueError(f"unknown optimizer {name!r}")


def close_optimizer(opt):
    """Frees what an optd optimizer holds on its server (its groups), then closes it."""
    if opt is None or not hasattr(opt, "close"):
        return
    groups = getattr(opt, "server_groups", None)
    if callable(groups):
        for sg in groups().values():
            with contextlib.suppress(Exception):
                sg.delete()
    with contextlib.suppress(Exception):
        opt.close()


# Memory ---------------------------------------------------------------------------------------
def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def nvml_process_bytes():
    """This process's device memory as the driver lists it (NVML), or None."""
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if p.pid == os.getpid():
                return int(p.usedGpuMemory)
    except Exception:
        return None
    return None


class MemoryProbe:
    """Device memory before (begin) and after (end) a measured section; empty on CPU."""

    def __init__(self, device):
        self.device = device
        self.figures = {}

    def begin(self):
        if self.device != "cuda":
            return
        sync(self.device)
        self.alloc0 = torch.cuda.memory_allocated()
        self.free0 = torch.cuda.mem_get_info()[0]
        self.nvml0 = nvml_process_bytes()

    def reset_peak(self):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def end(self):
        if self.device != "cuda":
            return self.figures
        sync(self.device)
        free1, total = torch.cuda.mem_get_info()
        nvml1 = nvml_process_bytes()
        self.figures = {
            "peak_allocated": torch.cuda.max_memory_allocated(),
            "allocated_added": torch.cuda.memory_allocated() - self.alloc0,
            "driver_used_added": self.free0 - free1,
            "card_used": total - free1,
            "process_added": (nvml1 - self.nvml0) if nvml1 is not None and self.nvml0 is not None
            else None,
        }
        return self.figures


# Modes ----------------------------------------------------------------------------------------
def build_model(args):
    torch.manual_seed(0)
    return llama_model.Decoder(llama_model.CONFIGS[args.layout], device=args.device)


def fixed_gradients(params, device):
    gen = torch.Generator(device=device)
    gen.manual_seed(1234)
    return [(torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32) * 1e-3)
            .to(p.dtype) for p in params]


def step_mode(name, args):
    if name == "none":
        raise Skip("no optimizer: a training-loop row only")
    if name == "optd-overlap-offload":
        raise Skip("a training-loop row only (offload frees the gradients backward produces)")
    model = build_model(args)
    params = list(model.parameters())
    grads = fixed_gradients(params, args.device)
    for p, g in zip(params, grads):
        p.grad = g
    mem = MemoryProbe(args.device)
    mem.begin()
    opt = make_optimizer(name, params, args, group=f"trainer-step-{name}-{os.getpid()}")
    try:
        times = []
        for i in range(args.warmup + args.steps):
            for p, g in zip(params, grads):
                p.grad = g
            if i == args.warmup:
                mem.reset_peak()
            sync(args.device)
            t0 = time.perf_counter()
            opt.step()
            sync(args.device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        return {"ms": 1e3 * bc.median(times), "ms_all": [1e3 * t for t in times],
                "params": sum(p.numel() for p in params), "memory": mem.end()}
    finally:
        close_optimizer(opt)


def train_mode(name, args, micro):
    model = build_model(args)
    params = list(model.parameters())
    c = llama_model.CONFIGS[args.layout]
    gen = torch.Generator(device=args.device)
    gen.manual_seed(99)
    tokens = torch.randint(0, c["vocab"], (args.batch, args.seq + 1), generator=gen,
                           device=args.device)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    mem = MemoryProbe(args.device)
    mem.begin()
    opt = None if name == "none" else make_optimizer(
        name, params, args, group=f"trainer-train-{name}-m{micro}-{os.getpid()}")
    overlap = "overlap" in name
    if overlap and micro > 1 and not hasattr(opt, "no_sync"):
        close_optimizer(opt)
        raise Skip("optd.torch.PagedAdamW8bit has no no_sync() for accumulation")
    try:
        def one_step():
            for m in range(micro):
                last = m == micro - 1
                ctx = opt.no_sync() if overlap and not last else contextlib.nullcontext()
                with ctx:
                    (model.loss(x, y) / micro).backward()
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                model.zero_grad(set_to_none=True)

        warmup = args.warmup if micro == 1 else max(1, args.warmup // 2)
        steps = args.steps if micro == 1 else args.accum_steps
        times = []
        for i in range(warmup + steps):
            if i == warmup:
                mem.reset_peak()
            sync(args.device)
            t0 = time.perf_counter()
            one_step()
            sync(args.device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        t = bc.median(times)
        return {"micro_batches": micro, "ms": 1e3 * t, "ms_all": [1e3 * s for s in times],
                "tokens_per_s": micro * args.batch * args.seq / t,
                "params": sum(p.numel() for p in params), "memory": mem.end()}
    finally:
        close_optimizer(opt)


def worker(args):
    out = {"name": args.worker, "rows": []}
    if args.worker.startswith("optd"):
        optd = bc.import_optd()
        out["optd_path"] = "{} ({})".format(*bc.active_path(optd))
    jobs = []
    if "step" in args.modes:
        jobs.append(("step", None))
    if "train" in args.modes:
        jobs += [("train", m) for m in args.micro_batches]
    for mode, micro in jobs:
        row = {"mode": mode, "micro_batches": micro}
        try:
            row.update(step_mode(args.worker, args) if mode == "step"
                       else train_mode(args.worker, args, micro))
        except Skip as e:
            row["skipped"] = str(e)
        except Exception as e:  # reported in the table; the other rows still run
            row["error"] = f"{type(e).__name__}: {e}"
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        out["rows"].append(row)
        what = (f"{row['ms']:.1f} ms" if "ms" in row else row.get("skipped") or row.get("error"))
        if "tokens_per_s" in row:
            what += f", {row['tokens_per_s']:,.0f} tokens/s"
        print(f"  {args.worker} {mode}{'' if micro is None else f' x{micro}'}: {what}",
              flush=True)
    out["notes"] = sorted(NOTES)
    with open(args.out, "w") as f:
        json.dump(out, f)


# Orchestration --------------------------------------------------------------------------------
def gb(v):
    return "-" if v is None else f"{v / 1e9:.2f}"


def per_param(v, params):
    return "-" if v is None or not params else f"{v / params:.2f}"


def print_tables(args, results):
    step_rows, train_rows, notes = [], [], {}  # notes: (label, what, why) -> [rows]
    base_step = next((r["ms"] for n, rows in results for r in rows
                      if n == "torch" and r["mode"] == "step" and "ms" in r), None)
    bnb_tps = {r["micro_batches"]: r["tokens_per_s"] for n, rows in results for r in rows
               if n == "bnb" and r["mode"] == "train" and "tokens_per_s" in r}
    for name, rows in results:
        for r in rows:
            label = OPTIMIZERS[name]
            if name == "torch" and args.device != "cuda":
                label = "torch AdamW (not fused: CPU tensors), in process"
            if "skipped" in r or "error" in r:
                if name == "none" and r["mode"] == "step":
                    continue
                key = (label, "skipped" if "skipped" in r else "failed",
                       r.get("skipped") or r.get("error"))
                where = "step alone" if r["mode"] == "step" else f"loop x{r['micro_batches']}"
                notes.setdefault(key, []).append(where)
                continue
            m = r.get("memory", {})
            p = r.get("params")
            mem_cols = [gb(m.get("peak_allocated")), per_param(m.get("allocated_added"), p),
                        per_param(m.get("driver_used_added"), p),
                        per_param(m.get("process_added"), p)]
            if r["mode"] == "step":
                step_rows.append([label, f"{r['ms']:.1f}",
                                  f"{r['ms'] / base_step:.2f}" if base_step else "-", *mem_cols])
            else:
                mb = r["micro_batches"]
                ratio = bnb_tps.get(mb)
                train_rows.append([label, mb, f"{r['tokens_per_s']:,.0f}", f"{r['ms']:.1f}",
                                   f"{ratio / r['tokens_per_s']:.2f}" if ratio else "-",
                                   *mem_cols])
    c = llama_model.CONFIGS[args.layout]
    mem_head = ["peak allocated GB", "optimizer added in torch's allocator B/param",
                "driver: card used added B/param", "driver: this process added B/param"]
    print(f"\n## Trainer benchmark: layout {args.layout} ({c['layers']} layers, hidden "
          f"{c['hidden']}, bf16), device {args.device}, optd server --backend={args.backend}, "
          f"streams {args.streams}")
    if "step" in args.modes:
        print(f"\n### optimizer.step() alone, identical gradients, median of {args.steps} after "
              f"{args.warmup} warm-up\n")
        print(bc.table(["optimizer.step()", "ms", "vs torch AdamW", *mem_head], step_rows))
    if "train" in args.modes:
        print(f"\n### Training loop, micro-batches of {args.batch} x {args.seq} tokens "
              f"(median of {args.steps} steps at 1 micro-batch, {args.accum_steps} above)\n")
        print(bc.table(["optimizer", "micro-batches per step", "tokens/s", "ms/step",
                        "bnb tokens/s / this", *mem_head], train_rows))
    if args.device == "cuda":
        print("\nDriver columns: card-wide used memory (mem_get_info) after the timed steps "
              "minus before the optimizer existed, which includes bitsandbytes' managed memory "
              "and, for optd rows, the optd server's device memory on the same card; 'this "
              "process' is NVML's per-process figure ('-' where the driver lists no processes).")
    for n in sorted(NOTES):
        print(n)
    for (label, what, why), where in notes.items():
        print(f"{label} ({', '.join(where)}): {what}: {why}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layout", default="tinyllama", choices=sorted(llama_model.CONFIGS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", default="step,train")
    ap.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS)
    ap.add_argument("--micro-batches", default="1,16")
    ap.add_argument("--batch", type=int, default=None, help="default 4 (tinyllama), 2 (tiny)")
    ap.add_argument("--seq", type=int, default=None, help="default 1024 (tinyllama), 128 (tiny)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (step mode, 1 micro-batch)")
    ap.add_argument("--accum-steps", type=int, default=3, help="timed steps above 1 micro-batch")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--server", default=bc.default_server())
    ap.add_argument("--backend", default=None, help="optd server backend; default: the device")
    ap.add_argument("--server-args", default="", help="extra server flags, comma-separated")
    ap.add_argument("--streams", type=int, default=1, help="optd.torch streams (K)")
    ap.add_argument("--worker-timeout", type=float, default=900)
    ap.add_argument("--json", default="")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    small = args.layout == "tiny"
    args.batch = args.batch or (2 if small else 4)
    args.seq = args.seq or (128 if small else 1024)
    args.backend = args.backend or ("cuda" if args.device == "cuda" else "cpu")
    args.modes = [m for m in args.modes.split(",") if m]
    args.micro_batches = [int(m) for m in str(args.micro_batches).split(",") if m]
    if args.worker:
        return worker(args)

    names = [n for n in args.optimizers.split(",") if n]
    for n in names:
        if n not in OPTIMIZERS:
            ap.error(f"--optimizers: unknown {n!r} (one of {', '.join(OPTIMIZERS)})")
    print(f"trainer_bench: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch "
          f"{torch.__version__}, python {sys.version.split()[0]}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""), flush=True)
    tmp = tempfile.mkdtemp(prefix="optd-trainer-bench-")
    server = None
    if any(n.startswith("optd") for n in names):
        extra = [a for a in args.server_args.split(",") if a]
        server = bc.Server(args.server, args.backend, extra)
        print(f"optd server {args.server} --backend={args.backend} on {server.target}",
              flush=True)
    results = []
    try:
        for n in names:
            out = os.path.join(tmp, f"{n}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", n, "--out", out,
                   "--layout", args.layout, "--device", args.device,
                   "--modes", ",".join(args.modes),
                   "--micro-batches", ",".join(map(str, args.micro_batches)),
                   "--batch", str(args.batch), "--seq", str(args.seq),
                   "--steps", str(args.steps), "--accum-steps", str(args.accum_steps),
                   "--warmup", str(args.warmup), "--lr", str(args.lr),
                   "--streams", str(args.streams), "--backend", args.backend]
            if server is not None:
                cmd += ["--target", server.target]
            print(f"+ {OPTIMIZERS[n]}", flush=True)
            try:
                rc = subprocess.run(cmd, timeout=args.worker_timeout).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            if rc != 0 or not os.path.exists(out):
                results.append((n, [{"mode": "all", "micro_batches": None,
                                     "error": f"worker exit {rc}"}]))
                continue
            with open(out) as f:
                got = json.load(f)
            if "optd_path" in got:
                print(f"  optd.torch ran the package's {got['optd_path']} path", flush=True)
            NOTES.update(got.get("notes", []))
            results.append((n, got["rows"]))
    finally:
        if server is not None:
            server.stop()
    print_tables(args, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()
                                if k not in ("worker", "target", "out")},
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
