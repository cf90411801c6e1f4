"""The colocated data path (docs/colocated.md) against a real optd server process on 127.0.0.1:
steps over a shared-memory region give the same weights as over gRPC, through optd.Client
(native or pure path, as the suite runs) and through optd.torch's transport argument."""

import logging
import os

import numpy as np
import pytest
import torch

import optd
import optd.torch
from optd.colocated import RegionRange
from model_util import make_model, train_through_optd

SPECS = [optd.TensorSpec("w", "float32", (1000, 3)), optd.TensorSpec("h", "bfloat16", (777,))]


def _setup(client, group, seed=3):
    client.create_group(group, SPECS, lr=1e-2, min_8bit_size=1024)
    rng = np.random.default_rng(seed)
    client.upload_weights(group, {
        "w": rng.standard_normal(3000).astype(np.float32).reshape(1000, 3),
        "h": (rng.standard_normal(777).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)})


def _grads(k):
    rng = np.random.default_rng(100 + k)
    return {"w": rng.standard_normal(3000).astype(np.float32),
            "h": (rng.standard_normal(777).astype(np.float32).view(np.uint32) >> 16)
            .astype(np.uint16)}


def test_region_steps_equal_wire_steps(server):
    with optd.Client(server.target) as c:
        _setup(c, "wire")
        _setup(c, "shm")
        for k in range(1, 4):
            done, wire = c.step("wire", k, _grads(k))
            assert done.version == k
        grad_at = {"w": 0, "h": 12032}
        weight_at = {"w": 16384, "h": 28416}
        region = c.open_shm_region("shm", 1 << 15)
        try:
            assert len(region.id) == 32
            assert not [f for f in os.listdir("/dev/shm") if f.startswith("optd-")]
            for k in range(1, 4):
                ranges = []
                for name, g in _grads(k).items():
                    region.view(grad_at[name], g.size, "float32" if name == "w" else "bfloat16")[:] = g
                    ranges.append(RegionRange(name, 0, g.size, "float32" if name == "w" else
                                              "bfloat16", grad_at[name], weight_at[name]))
                done = c.step_region("shm", k, region, ranges)
                assert done.step == k and done.version == k
            assert np.array_equal(region.view(weight_at["w"], 3000, "float32"),
                                  wire["w"].reshape(-1))
            assert np.array_equal(region.view(weight_at["h"], 777, "bfloat16"), wire["h"])
            with pytest.raises(optd.InvalidArgumentError, match="buffer_offset"):
                c.step_region("shm", 4, region, [RegionRange("w", 0, 3000, "float32", 1 << 15)])
        finally:
            region.close()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_shm_equals_grpc(server, dtype):
    wire, chosen_wire = train_through_optd(server.target, "grpc", dtype=dtype)
    shm, chosen_shm = train_through_optd(server.target, "shm", dtype=dtype)
    assert (chosen_wire, chosen_shm) == ("grpc", "shm")
    for a, b in zip(wire, shm):
        assert torch.equal(a, b)


def test_torch_auto_picks_shm_on_this_host(server, caplog):
    with caplog.at_level(logging.INFO, logger="optd"):
        _, chosen = train_through_optd(server.target, "auto", steps=1)
    assert chosen == "shm"
    assert "shared memory" in caplog.text


def test_torch_transport_argument():
    model = make_model()
    with pytest.raises(ValueError, match="CUDA device"):
        optd.torch.PagedAdamW8bit(model.parameters(), target="127.0.0.1:1", transport="cuda_ipc")
    with pytest.raises(ValueError, match="transport"):
        optd.torch.PagedAdamW8bit(model.parameters(), target="127.0.0.1:1", transport="tcp")
    opt = optd.torch.PagedAdamW8bit(model.parameters(), target="10.255.255.1:1", transport="auto")
    assert opt.transport == "grpc"  # not this host


def test_cuda_ipc_region_on_a_cpu_server_is_refused(server, backend):
    """A CUDA_IPC region needs a CUDA server: a CPU one refuses it with the reason, opens
    nothing and keeps serving (tests/python/test_cuda_ipc.py covers the CUDA server)."""
    if backend != "cpu":
        pytest.skip("the CPU server's answer")
    with optd.Client(server.target) as c:
        _setup(c, "g")
        with pytest.raises(optd.FailedPreconditionError, match=r"open.buffers\[0\].*--backend=cuda"):
            c.open_cuda_ipc_region("g", [(bytes(64), 0, 4096, 0)])
        with pytest.raises(optd.InvalidArgumentError, match="at least one buffer"):
            c.open_cuda_ipc_region("g", [])
        assert c.get_group("g").version == 0
