"""Failure modes found by probing the server as an attacker and as a careless user would, each
reproduced against the real optd process on 127.0.0.1 (docs/testing.md, "Failure modes and
their tests", lists these with the C++ and other Python tests):
- a Step stream that begins and never commits, held open by a client that went quiet: the
  group's administration (ListGroups, SaveCheckpoint of everything, DeleteGroup) still answers,
  and SIGTERM still ends the server within --shutdown_grace_seconds;
- SIGTERM with thousands of groups ends within the grace period too;
- under an address-space cap (ulimit -v), requests that used to amplify memory (the same
  tensor named many times, num_workers=2^28, 2^42 elements) are refused and the server keeps
  serving instead of dying.
The time bounds below are far above what the server needs: they tell a hang from an exit."""

import stat
import threading
import time
import urllib.request

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

import optd
from optd.v1 import optd_pb2 as pb
from optd.v1 import optd_pb2_grpc as pb_grpc
from conftest import ServerProcess

N = 4096


def _stub(target):
    return pb_grpc.OptimizerStub(grpc.insecure_channel(target))


def _group(client, name):
    client.create_group(name, [("w", "float32", (N,))])
    client.upload_weights(name, {"w": np.ones(N, np.float32)})


def _metric(server, name):
    url = f"http://127.0.0.1:{server.metrics_port()}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))


class _StalledStep:
    """A Step stream that begins step 1 of `group`, sends half of its gradient and then sends
    nothing more (until release())."""

    def __init__(self, target, group):
        self._release = threading.Event()
        self._call = _stub(target).Step(self._requests(group))
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _requests(self, group):
        yield pb.StepRequest(begin=pb.StepBegin(group=group, worker=0, step=1))
        yield pb.StepRequest(gradient=pb.TensorChunk(
            tensor="w", offset=0, dtype=pb.FLOAT32,
            data=np.ones(N // 2, np.float32).tobytes()))
        self._release.wait()

    def _drain(self):
        try:
            for _ in self._call:
                pass
        except grpc.RpcError:
            pass

    def release(self):
        self._release.set()
        self._call.cancel()


def _wait_for_gradient_bytes(server, n):
    for _ in range(500):
        if _metric(server, "optd_gradient_bytes_received_total") >= n:
            return
        time.sleep(0.02)
    raise AssertionError("the stalled step's gradient never reached the server")


def test_step_that_never_commits_blocks_no_administration(server):
    admin = optd.Client(server.target, timeout=20)
    _group(admin, "stalled")
    _group(admin, "other")
    stalled = _StalledStep(server.target, "stalled")
    try:
        _wait_for_gradient_bytes(server, N // 2 * 4)
        assert {"stalled", "other"} <= {g.group for g in admin.list_groups()}
        saved = admin.save_checkpoint("everything")  # all groups
        assert set(saved.groups) >= {"stalled", "other"}
        admin.delete_group("stalled")
        with pytest.raises(optd.NotFoundError):
            admin.get_group("stalled")
    finally:
        stalled.release()


def test_sigterm_with_a_step_that_never_commits_exits_within_the_grace(start_server):
    server = start_server("grace", ["--shutdown_grace_seconds=2"])
    _group(optd.Client(server.target), "g")
    stalled = _StalledStep(server.target, "g")
    try:
        _wait_for_gradient_bytes(server, N // 2 * 4)
        started = time.monotonic()
        server.proc.terminate()
        server.proc.wait(timeout=60)
        assert time.monotonic() - started < 20
        assert server.proc.returncode == 0, server.output()
    finally:
        stalled.release()


def test_sigterm_with_thousands_of_groups_exits_within_the_grace(start_server):
    server = start_server("many", ["--shutdown_grace_seconds=2", "--max_groups=20000",
                                   "--metrics_max_groups=0"])
    client = optd.Client(server.target)
    groups = 8000
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.create_group(f"g{k:05d}", [("w", "float32", (256,))]),
                      range(groups)))
    assert len(client.list_groups()) == groups
    started = time.monotonic()
    server.proc.terminate()
    server.proc.wait(timeout=120)
    assert time.monotonic() - started < 20
    assert server.proc.returncode == 0, server.output()


def test_memory_amplification_under_an_address_space_cap(server_binary, backend, tmp_path):
    """The server runs under `ulimit -v` (4 GiB): requests that used to cost gigabytes are
    refused, and it goes on serving (health SERVING, a step) instead of dying."""
    wrapper = tmp_path / "capped-optd"
    wrapper.write_text(f"#!/bin/sh\nulimit -v {4 << 20}\nexec {server_binary} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    server = ServerProcess(str(wrapper), str(tmp_path / "capped"), backend)
    try:
        client = optd.Client(server.target, timeout=30)
        _group(client, "g")
        stub = _stub(server.target)
        for call, request in (
                (stub.PullWeights, pb.PullWeightsRequest(group="g", tensors=["w"] * 10000)),
                (stub.ExportState, pb.ExportStateRequest(group="g", tensors=["w"] * 10000))):
            with pytest.raises(grpc.RpcError) as info:
                list(call(request, timeout=30))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
        for request in (
                pb.CreateGroupRequest(group="workers", num_workers=1 << 28, tensors=[
                    pb.TensorInfo(name="w", dtype=pb.FLOAT32, shape=[256])]),
                pb.CreateGroupRequest(group="huge", tensors=[
                    pb.TensorInfo(name="w", dtype=pb.FLOAT32, shape=[1 << 42])])):
            with pytest.raises(grpc.RpcError) as info:
                stub.CreateGroup(request, timeout=30)
            assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                         grpc.StatusCode.RESOURCE_EXHAUSTED), info.value
        done, out = client.step("g", 1, {"w": np.ones(N, np.float32)})
        assert done.version == 1 and np.all(np.isfinite(out["w"]))
        assert server.proc.poll() is None
        # grpc.health.v1.Health/Check with an empty request (service ""); the answer
        # HealthCheckResponse{status: SERVING} is the two bytes 08 01.
        check = grpc.insecure_channel(server.target).unary_unary(
            "/grpc.health.v1.Health/Check")
        assert check(b"", timeout=10) == b"\x08\x01"
    finally:
        server.stop()
