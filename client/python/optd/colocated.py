"""The colocated data path (docs/colocated.md): a host shared-memory region that this process
and an optd server on the same host both map. A step then names ranges in the region instead of
sending bytes, and the server writes the new weights into the region.

    region = client.open_shm_region("g", nbytes)      # SharedMemoryRegion
    region.array[0:n] = ...                           # numpy uint8 view of the mapping
    client.step_region("g", 1, region, [RegionRange("w", 0, n_elems, "float32",
                                                    buffer_offset=0, weights_offset=off)])

The region lives while its lease (a Colocate call) is open: close() (or the process ending)
releases it. Opening fails with FailedPreconditionError, with the reason, where this process
cannot map the server's shared memory (another host, containers without a shared /dev/shm):
use the gRPC path then (optd.torch's transport="auto" does).
"""

import mmap
import os
import queue
import threading
from dataclasses import dataclass
from typing import Optional

import grpc
import numpy as np

from optd.errors import FailedPreconditionError, OptdError, from_rpc_error
from optd.v1 import optd_pb2 as pb


@dataclass
class RegionRange:
    """Elements [offset, offset + count) of `tensor`'s gradient, in `dtype`, at byte
    `buffer_offset` of the region; after the step the range's new weights (in the tensor's dtype)
    are written at byte `weights_offset` (None: not written)."""
    tensor: str
    offset: int
    count: int
    dtype: str
    buffer_offset: int
    weights_offset: Optional[int] = None


def shm_path(name):
    """Where Linux keeps the POSIX shared memory object `name` ("/optd-...")."""
    return "/dev/shm/" + name.lstrip("/")


class _LeasedRegion:
    """What every leased region has: `id`, `group`, close() (also on exit from a with block and
    when collected), which ends the lease once."""

    native = False  # leased through the C++ client (then `handle` is its optd_region*)
    handle = None

    def __init__(self, region_id, group, closer):
        self.id = region_id
        self.group = group
        self._closer = closer
        self._lock = threading.Lock()

    def _released(self):
        """Called once, before the lease ends."""

    def close(self):
        with self._lock:
            closer, self._closer = self._closer, None
        if closer is not None:
            self._released()
            closer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class SharedMemoryRegion(_LeasedRegion):
    """A leased shared-memory region: `array` (numpy uint8 over the whole mapping), `size`."""

    def __init__(self, region_id, group, array, closer):
        super().__init__(region_id, group, closer)
        self.array = array
        self.size = array.size

    def view(self, offset, count, dtype):
        """A numpy view of `count` elements of `dtype` ("float32", "float16", "bfloat16" as
        uint16) at byte `offset` of the region."""
        np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]
        return self.array[offset:offset + count * np.dtype(np_dtype).itemsize].view(np_dtype)

    def _released(self):
        self.array = None


class _Lease:
    """A Colocate call whose requests come from a queue, so that it stays open (the lease)
    until end()."""

    def __init__(self, stub, metadata, target, first):
        self._requests = queue.Queue()
        self._requests.put(first)
        self._target = target
        self.call = stub.Colocate(self._iterate(), metadata=metadata)

    def _iterate(self):
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def send(self, request):
        self._requests.put(request)

    def receive(self, expected):
        """The next response, which must hold `expected` ("opened", "ready"); ends the lease and
        raises otherwise."""
        try:
            response = next(self.call)
        except grpc.RpcError as e:
            self._requests.put(None)
            raise from_rpc_error(e, self._target) from None
        except StopIteration:
            self._requests.put(None)
            raise OptdError("Colocate: the server ended the call", grpc.StatusCode.UNAVAILABLE,
                            self._target) from None
        if not response.HasField(expected):
            self.end()
            raise OptdError(f"Colocate: expected {expected}", grpc.StatusCode.DATA_LOSS,
                            self._target)
        return getattr(response, expected)

    def end(self):
        """Ends the call; returns once the server ended it (it released the region)."""
        self._requests.put(None)
        try:
            for _ in self.call:
                pass
        except grpc.RpcError:
            pass


def open_pure(stub, metadata, target, group, nbytes):
    """The lease over grpcio: open, opened, map /dev/shm/<name> with Python's mmap, mapped,
    ready."""
    lease = _Lease(stub, metadata, target,
                   pb.ColocateRequest(open=pb.ColocateOpen(group=group, kind=pb.SHM, bytes=nbytes)))
    opened = lease.receive("opened")
    try:
        fd = os.open(shm_path(opened.shm_name), os.O_RDWR)
    except OSError as e:
        lease.call.cancel()
        lease.end()
        raise FailedPreconditionError(
            f"colocated region: cannot open {shm_path(opened.shm_name)}: {e.strerror}. The server "
            f"is not on this host, or this process does not share its /dev/shm; use the gRPC "
            f"path", grpc.StatusCode.FAILED_PRECONDITION, target) from None
    try:
        mapping = mmap.mmap(fd, opened.bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    lease.send(pb.ColocateRequest(mapped=pb.ColocateMapped()))
    try:
        lease.receive("ready")
    except OptdError:
        mapping.close()
        raise
    array = np.frombuffer(mapping, dtype=np.uint8)
    # numpy views may still point into the mapping when the lease ends; the mapping is freed with
    # the last one (mmap.close() would fail with exported buffers).
    return SharedMemoryRegion(opened.region, group, array, lease.end)


class CudaIpcRegion(_LeasedRegion):
    """A leased CUDA IPC region (docs/colocated.md): device buffers of this process that the
    server opened with their IPC handles; steps name ranges in them."""


def open_cuda_ipc_pure(stub, metadata, target, group, buffers):
    """The lease of a CUDA IPC region over grpcio: open (naming the buffers: (handle bytes,
    offset, bytes, device) each), opened, ready."""
    open_msg = pb.ColocateOpen(group=group, kind=pb.CUDA_IPC)
    for handle, offset, nbytes, device in buffers:
        open_msg.buffers.add(handle=bytes(handle), offset=offset, bytes=nbytes, device=device)
    lease = _Lease(stub, metadata, target, pb.ColocateRequest(open=open_msg))
    opened = lease.receive("opened")
    lease.receive("ready")
    return CudaIpcRegion(opened.region, group, lease.end)


def step_pure(stub, metadata, timeout, target, group, step, region, ranges, begin, call="Step"):
    """A step over `region` on one Step stream: begin (naming the region), the region chunks,
    commit; only StepDone comes back."""
    begin.region = region.id

    def requests():
        yield pb.StepRequest(begin=begin)
        for r in ranges:
            chunk = pb.RegionChunk(tensor=r.tensor, offset=r.offset, count=r.count,
                                   dtype=_PROTO_DTYPE[r.dtype], buffer_offset=r.buffer_offset)
            if r.weights_offset is not None:
                chunk.weights_buffer_offset = r.weights_offset
            yield pb.StepRequest(region_gradient=chunk)
        yield pb.StepRequest(commit=pb.StepCommit())

    try:
        for resp in stub.Step(requests(), timeout=timeout, metadata=metadata):
            if resp.HasField("done"):
                return resp.done
    except grpc.RpcError as e:
        raise from_rpc_error(e, target, call) from None
    raise OptdError(f"step {step} of group {group}: stream ended without StepDone",
                    grpc.StatusCode.INTERNAL, target)


_PROTO_DTYPE = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "bfloat16": pb.BFLOAT16}
