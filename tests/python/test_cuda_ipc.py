"""The CUDA IPC colocated path (docs/colocated.md) against a real `optd --backend=cuda` process on
127.0.0.1 and the same GPU: steps whose gradients the server's engine reads from this process's
device memory and whose new weights it writes back into it give the same bits as steps over
gRPC; the golden vectors of bitsandbytes replay through it; bad handles and ranges are refused
with the field named; a killed trainer's region is released.

Needs a GPU, torch with CUDA and a CUDA server (OPTD_BACKEND=cuda); skips otherwise. Run on the
GPU machine (docs/gpu.md): OPTD_BACKEND=cuda OPTD_SERVER_BIN=... python3 -m pytest this file.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import numpy as np
import pytest
import torch

import optd
import optd.torch
from optd.colocated import RegionRange
from model_util import train_through_optd

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("OPTD_BACKEND") != "cuda",
    reason="needs a GPU, torch with CUDA and OPTD_BACKEND=cuda (a CUDA server)")

_HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.environ.get("OPTD_GOLDEN_DIR", os.path.join(_HERE, "..", "data", "golden"))
_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _ipc_buffer(buf):
    """(handle, offset, bytes, device) of a CUDA uint8 tensor, for open_cuda_ipc_region."""
    return optd.torch.cuda_ipc_buffer(buf)


def _slot(buf, offset, n, dtype):
    size = n * torch.tensor([], dtype=dtype).element_size()
    return buf[offset:offset + size].view(dtype)


def _bits(t):
    """A tensor's bytes as a numpy array (bf16 included)."""
    return t.detach().contiguous().view(torch.uint8).cpu().numpy()


def _scrape(server, name):
    url = f"http://127.0.0.1:{server.metrics_port()}/metrics"
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_region_steps_equal_wire_steps(server):
    specs = [optd.TensorSpec("w", "float32", (1000, 7)), optd.TensorSpec("h", "bfloat16", (4097,)),
             optd.TensorSpec("s", "float32", (300,))]
    rng = np.random.default_rng(5)
    init = {s.name: rng.standard_normal(int(np.prod(s.shape))).astype(np.float32) for s in specs}
    init["h"] = (init["h"].view(np.uint32) >> 16).astype(np.uint16)
    with optd.Client(server.target) as c:
        for g in ("wire", "ipc"):
            c.create_group(g, specs, lr=1e-2, min_8bit_size=1024)
            c.upload_weights(g, init)
        # One device buffer: a gradient slot and a weight slot per tensor, 256-byte aligned.
        layout, at = {}, 0
        for s in specs:
            n = int(np.prod(s.shape)) * (2 if s.dtype == "bfloat16" else 4)
            layout[s.name] = (at, at + (n + 255) // 256 * 256)
            at += 2 * ((n + 255) // 256 * 256)
        buf = torch.zeros(at, dtype=torch.uint8, device="cuda")
        region = c.open_cuda_ipc_region("ipc", [_ipc_buffer(buf)])
        try:
            assert len(region.id) == 32
            assert _scrape(server, "optd_colocated_regions") == 1
            for k in range(1, 5):
                grads, ranges = {}, []
                for s in specs:
                    n = int(np.prod(s.shape))
                    g = torch.randn(n, generator=torch.Generator().manual_seed(100 * k + n))
                    g = g.to(_TORCH[s.dtype])
                    grads[s.name] = g.numpy() if s.dtype != "bfloat16" else \
                        g.view(torch.int16).numpy().view(np.uint16)
                    _slot(buf, layout[s.name][0], n, _TORCH[s.dtype]).copy_(g.cuda())
                    ranges.append(RegionRange(s.name, 0, n, s.dtype, layout[s.name][0],
                                              layout[s.name][1]))
                done, wire = c.step("wire", k, grads)
                torch.cuda.synchronize()
                done_ipc = c.step_region("ipc", k, region, ranges)
                assert (done_ipc.step, done_ipc.version) == (k, k)
                for s in specs:
                    n = int(np.prod(s.shape))
                    got = _slot(buf, layout[s.name][1], n, _TORCH[s.dtype])
                    want = wire[s.name].reshape(-1)
                    assert np.array_equal(_bits(got), want.view(np.uint8)), (k, s.name)
            # The server's own weights are those it wrote into the region.
            _, pulled = c.pull_weights("ipc")
            for s in specs:
                n = int(np.prod(s.shape))
                got = _slot(buf, layout[s.name][1], n, _TORCH[s.dtype])
                assert np.array_equal(_bits(got), pulled[s.name].reshape(-1).view(np.uint8))
            # Ranges outside the buffer are refused with the field named; nothing is applied.
            with pytest.raises(optd.InvalidArgumentError, match="buffer_offset"):
                c.step_region("ipc", 5, region, [RegionRange("s", 0, 300, "float32", at)])
            assert c.get_group("ipc").version == 4
        finally:
            region.close()
    deadline = time.monotonic() + 10
    while _scrape(server, "optd_colocated_regions") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _scrape(server, "optd_colocated_regions") == 0


def test_bad_handles_are_refused(server):
    with optd.Client(server.target) as c:
        c.create_group("g", [optd.TensorSpec("w", "float32", (256,))])
        buf = torch.zeros(4096, dtype=torch.uint8, device="cuda")
        handle, offset, _, device = _ipc_buffer(buf)
        with pytest.raises(optd.InvalidArgumentError, match=r"open.buffers\[0\].*64 bytes"):
            c.open_cuda_ipc_region("g", [(b"short", 0, 4096, device)])
        with pytest.raises(optd.FailedPreconditionError, match=r"open.buffers\[0\]"):
            c.open_cuda_ipc_region("g", [(bytes(64), 0, 4096, device)])
        with pytest.raises(optd.InvalidArgumentError, match="past the end"):
            c.open_cuda_ipc_region("g", [(handle, offset, 1 << 26, device)])
        with pytest.raises(optd.NotFoundError):
            c.open_cuda_ipc_region("nope", [(handle, offset, 4096, device)])
        # The server keeps serving, and holds nothing.
        assert c.get_group("g").version == 0
        assert _scrape(server, "optd_colocated_regions") == 0


def test_killed_trainer_releases_its_region(server):
    with optd.Client(server.target) as c:
        c.create_group("g", [optd.TensorSpec("w", "float32", (256,))])
    child = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {os.path.join(_HERE, '..', '..', 'client', 'python')!r})
        import optd
        import optd.torch
        buf = torch.zeros(1 << 20, dtype=torch.uint8, device="cuda")
        c = optd.Client({server.target!r})
        region = c.open_cuda_ipc_region("g", [optd.torch.cuda_ipc_buffer(buf)])
        print("open", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"open"
        assert _scrape(server, "optd_colocated_regions") == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while _scrape(server, "optd_colocated_regions") != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _scrape(server, "optd_colocated_regions") == 0
        with optd.Client(server.target) as c:
            assert c.get_group("g").version == 0  # still serving
    finally:
        if proc.poll() is None:
            proc.kill()


def _golden_cases():
    with open(os.path.join(GOLDEN, "manifest.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("case", _golden_cases(), ids=lambda c: c["name"])
def test_golden_replay_over_cuda_ipc(server, case):
    """Free-running: param_0 uploaded, every gradient through the region; each step's weights
    (written by the server into this process's memory) bit for bit against the same steps over
    gRPC, and the final ones against bitsandbytes' within the conformance tool's free-running
    tolerance (docs/algorithm.md)."""
    d = os.path.join(GOLDEN, case["name"])
    dtype = case["dtype"]
    n = int(np.prod(case["shape"]))
    tdtype = _TORCH[dtype]

    def load(name):
        a = np.load(os.path.join(d, name)).reshape(-1)
        return torch.from_numpy(a.astype(np.float32)).to(tdtype)

    hyper = dict(lr=case["lr"], betas=tuple(case["betas"]), eps=case["eps"],
                 weight_decay=case["wd"], percentile_clipping=case.get("pclip", 100),
                 min_8bit_size=case.get("min_8bit_size", 4096))
    wire_dtype = {"float32": np.float32, "float16": np.float16}.get(dtype)

    def as_wire(t):
        return t.numpy() if wire_dtype is not None else t.view(torch.int16).numpy().view(np.uint16)

    with optd.Client(server.target) as c:
        for g in ("wire", "ipc"):
            c.create_group(g, [optd.TensorSpec("p", dtype, (n,))], **hyper)
            c.upload_weights(g, {"p": as_wire(load("param_0.npy"))})
        size = (n * torch.tensor([], dtype=tdtype).element_size() + 255) // 256 * 256
        buf = torch.zeros(2 * size, dtype=torch.uint8, device="cuda")
        region = c.open_cuda_ipc_region("ipc", [_ipc_buffer(buf)])
        try:
            tol = 1e-5 if dtype == "float32" else 5e-3
            for k in range(1, case["steps"] + 1):
                g = load(f"grad_{k}.npy")
                _slot(buf, 0, n, tdtype).copy_(g.cuda())
                torch.cuda.synchronize()
                c.step_region("ipc", k, region, [RegionRange("p", 0, n, dtype, 0, size)])
                _, wire = c.step("wire", k, {"p": as_wire(g)})
                got = _slot(buf, size, n, tdtype)
                assert np.array_equal(_bits(got), wire["p"].reshape(-1).view(np.uint8)), k
            # The conformance tool's free-running measure: the distance to the reference's final
            # parameter relative to the reference's whole update.
            want = load(f"param_{case['steps']}.npy").double()
            start = load("param_0.npy").double()
            err = (got.double().cpu() - want).norm() / (want - start).norm()
            assert err <= tol, (case["name"], float(err))
        finally:
            region.close()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_cuda_ipc_equals_grpc(server, dtype):
    wire, chosen_wire = train_through_optd(server.target, "grpc", "cuda", dtype=dtype)
    ipc, chosen_ipc = train_through_optd(server.target, "cuda_ipc", "cuda", dtype=dtype)
    auto, chosen_auto = train_through_optd(server.target, "auto", "cuda", dtype=dtype)
    assert (chosen_wire, chosen_ipc, chosen_auto) == ("grpc", "cuda_ipc", "cuda_ipc")
    for a, b, c in zip(wire, ipc, auto):
        assert torch.equal(a, b) and torch.equal(a, c)
