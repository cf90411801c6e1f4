"""optd.torch.PagedAdamW8bit: bitsandbytes' PagedAdamW8bit with the update done by optd servers.

Same signature, defaults and constructor errors as bitsandbytes.optim.PagedAdamW8bit, plus
`target` (an address "host:port" or a list of them: tensors are then sharded over the servers).
Each torch param_group becomes one server group holding its parameters; step() streams every
parameter's .grad and writes the new weights back into the parameter in place.

Note [Overlap with backward]
Where torch has Tensor.register_post_accumulate_grad_hook (>= 2.1) and overlap is on (the
default), each parameter's hook starts its gradient on its way as soon as backward has
accumulated it: a CUDA gradient is copied into a reused pinned host buffer on a side stream
(after that stream waited for backward's), a CPU gradient is used where it lies. The
parameters of a param_group are split, per server, into buckets of roughly equal bytes in
reverse parameter order (about backward's order), at most `streams` of them (or of about
`bucket_bytes` each); once every gradient of a bucket is there, the bucket is sent on a thread
as one part of the step (part_count = buckets on that server, part_index = the bucket). step()
sends what is left (buckets waiting on parameters that got no gradient), waits for every part,
then writes the weights back: CPU parameters receive them in place while they arrive, CUDA
parameters by asynchronous host-to-device copies on the side stream that the current stream
then waits on (an event, no device-wide synchronize).
Consequences: gradients are taken as backward produces them, so changing .grad between
backward() and step() (clipping, scaling) is not seen: use overlap=False for that (the server's
percentile_clipping still applies). Every backward() outside no_sync() (or with
`accumulating` False) starts a step that step() must finish.
Without the hook (torch 1.13) step() drives the same buckets itself: the same API and results,
without the overlap. overlap=False sends each server's share as one whole step, spread over the
client's `streams`.

Note [Step numbers]
Every server group of a param_group gets the same step number (this optimizer's count of
applied steps + 1), also a shard that received no gradient in earlier steps: the numbers stay
in sync across shards, so a retry is recognised by every shard. The count advances only when
the step succeeded on every shard; a failed step() can be called again (same gradients, same
number): shards that had applied it answer `duplicate`, their weights are pulled instead, and
last_step_duplicate / duplicate_steps report it. Each part of a step also tells its server the
last step this optimizer saw applied there (StepBegin.expect_last_step): a server whose count
differs refuses the step, and nothing is applied (Note [Recovery]).

Note [Recovery]
Every call has a deadline (`timeout` for calls without tensor data, default 30 s;
`step_timeout` for steps, uploads and pulls, default 120 s, at least 60 s above the group's
sync_timeout_ms): a stopped server gives optd.errors.DeadlineExceededError naming the server
and the call, never a hang. Its outcome is unknown (the server may have applied the step);
calling step() again retries the same step number, which the server applies or answers as a
duplicate, never applies twice.
When a server is UNAVAILABLE (restarting, a network blip) during step(), the optimizer waits
with exponential backoff (`reconnect`: a Reconnect policy bounding attempts and total time;
None turns it off), on fresh connections, until the server answers GetGroup for the group; it
then compares the server's last applied step of this worker (GroupInfo.worker_steps) with its
own and retries the step, the server deduplicating it if it had been applied. A server that
came back from a checkpoint older than the trainer's last step (or whose group another process
stepped as this worker) raises optd.errors.StepMismatch with both numbers, also when it is met
without an error in between (the step is refused through expect_last_step): nothing is applied
until resume() takes the server's state (weights and step count) or the trainer restores a
matching checkpoint of its own. A group gone from the server (restarted without its
checkpoints) raises NotFoundError; resume() then creates it from the current parameters.
resume() (alias sync()) is also how a trainer restarted from its own checkpoint attaches to
groups that live on: it reads each server group's version and this worker's last step, sets the
step counters to them and, unless pull_weights=False, copies the server's weights into the
parameters. Groups are only created when missing; nothing is uploaded over an existing group.
Automatic reconnection covers steps once the groups exist; the first step, which creates them,
raises its error.

Note [Colocated transport]
transport="shm" (docs/colocated.md) leases, per param_group, a shared-memory region from a server
on this host: every parameter has a gradient slot and a weight slot in it. step() copies each
.grad into its slot (a CUDA gradient by a device-to-host copy into the region, registered with
cudaHostRegister so the copy is DMA), sends one step that names the ranges, and copies the new
weights from the region back into the parameters. "auto" uses it when there is one server and
its address is this host, and falls back to gRPC with the reason logged on
logging.getLogger("optd"); "grpc" never tries it.
transport="cuda_ipc" (CUDA parameters, a CUDA server on this host) puts each param_group's
parameters and gradient slots in one device buffer that the server opens through its CUDA IPC
handle: step() makes sure every .grad is in its slot (backward accumulates there after the first
step, until zero_grad sets it to None), synchronizes the stream and sends one step naming the
slots; the server's engine reads the gradients and writes the new weights into the parameters,
device to device (the same GPU, or a sibling one by peer access). "auto" tries it first when
every parameter is on a CUDA device, then shared memory, then gRPC.
Over shm and CUDA IPC the hooks of Note [Overlap with backward] are off: step() sends the
gradients.
"""

import contextlib
import ipaddress
import logging
import os
import random
import socket
import threading
import time
import uuid
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import torch

from optd.colocated import RegionRange
from optd.client import (DEFAULT_DATA_TIMEOUT, DEFAULT_TIMEOUT, Client, Security, TensorSpec,
                         default_streams, merge_step_parts)
from optd.errors import (FailedPreconditionError, InvalidArgumentError, NotFoundError, OptdError,
                         ShardError, StepMismatch, UnavailableError, shard_error)
from optd.sharded import ShardedGroup

_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_QUANT_STATE_KEY = "__bnb_optimizer_quant_state__"
_STATE_KEYS = ("state1", "state2", "qmap1", "qmap2", "absmax1", "absmax2", "gnorm_vec")

HAS_POST_ACCUMULATE_GRAD_HOOK = hasattr(torch.Tensor, "register_post_accumulate_grad_hook")
_TRANSPORTS = ("auto", "grpc", "shm", "cuda_ipc")
_log = logging.getLogger("optd")


def _is_this_host(target):
    """True when `target` ("host:port") names a loopback address or an address of this host."""
    host = target.rsplit(":", 1)[0].strip("[]")
    if host.startswith("ipv4:") or host.startswith("ipv6:"):
        host = host.split(":", 1)[1]
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    try:
        mine = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
        return any(a[4][0] in mine for a in socket.getaddrinfo(host, None))
    except OSError:
        return False


class _ShmLayout:
    """Where each parameter's gradient and weights lie in a param_group's region (64-byte
    aligned slots: gradients first, then weights)."""

    def __init__(self, params):
        self.grad, self.weight, at = [], [], 0
        sizes = [p.numel() * p.element_size() for p in params]
        for n in sizes:
            self.grad.append(at)
            at += (n + 63) // 64 * 64
        for n in sizes:
            self.weight.append(at)
            at += (n + 63) // 64 * 64
        self.bytes = max(at, 64)


class _ShmGroup:
    """A param_group's region and its layout; `host` is a torch uint8 tensor over the mapping."""

    def __init__(self, region, layout):
        self.region, self.layout = region, layout
        self.host = torch.from_numpy(region.array)
        self.registered = False
        if torch.cuda.is_available():
            # DMA copies to and from the region (Note [Colocated transport]); best effort.
            try:
                rc = torch.cuda.cudart().cudaHostRegister(self.host.data_ptr(), layout.bytes, 0)
                self.registered = int(rc) == 0
            except Exception as e:  # noqa: BLE001 (older torch without cudart bindings)
                _log.info("optd: cudaHostRegister of the shm region failed: %s", e)

    def slot(self, offset, p):
        n = p.numel() * p.element_size()
        return self.host[offset:offset + n].view(p.dtype).view(p.shape)

    def close(self):
        if self.registered:
            try:
                torch.cuda.cudart().cudaHostUnregister(self.host.data_ptr())
            except Exception:  # noqa: BLE001
                pass
        self.host = None
        self.region.close()


@dataclass(frozen=True)
class Reconnect:
    """How step() waits for a server that became UNAVAILABLE (Note [Recovery]): up to
    `attempts` tries within `total_seconds`, sleeping `initial_backoff` seconds before the
    first and `multiplier` times longer before each next one (at most `max_backoff`, with up
    to 10% jitter so that many trainers do not retry in lockstep)."""
    attempts: int = 12
    total_seconds: float = 120.0
    initial_backoff: float = 0.1
    max_backoff: float = 10.0
    multiplier: float = 2.0

    def __post_init__(self):
        if self.attempts < 1 or self.total_seconds <= 0 or self.initial_backoff <= 0 \
                or self.max_backoff < self.initial_backoff or self.multiplier < 1:
            raise ValueError(f"reconnect: {self} is not a usable policy (attempts >= 1, "
                             f"total_seconds > 0, 0 < initial_backoff <= max_backoff, "
                             f"multiplier >= 1)")


class _Backoff:
    """The attempts left of one recovery under a Reconnect policy."""

    def __init__(self, policy):
        self.policy = policy
        self.start = time.monotonic()
        self.attempt = 0
        self.delay = policy.initial_backoff

    def wait(self, cause):
        """Sleeps before the next attempt; raises UnavailableError (from `cause`) when the
        policy's attempts or time are spent."""
        p = self.policy
        elapsed = time.monotonic() - self.start
        delay = self.delay * (1 + 0.1 * random.random())
        if self.attempt >= p.attempts or elapsed + delay > p.total_seconds:
            # The last failure, with what was tried; a shard's stays a ShardError naming it.
            inner = cause.cause if isinstance(cause, ShardError) else cause
            error = UnavailableError(
                f"{inner} -- gave up reconnecting after {self.attempt} attempts in "
                f"{elapsed:.1f} s (optd.torch.Reconnect(attempts={p.attempts}, "
                f"total_seconds={p.total_seconds}))", grpc.StatusCode.UNAVAILABLE,
                getattr(inner, "target", ""))
            error.outcome_unknown = getattr(inner, "outcome_unknown", True)
            if isinstance(cause, ShardError):
                error = shard_error(cause.target, error)
            raise error from cause
        time.sleep(delay)
        self.attempt += 1
        self.delay = min(p.max_backoff, self.delay * p.multiplier)


def cuda_ipc_buffer(t):
    """(handle, offset, bytes, device) of CUDA tensor `t`'s memory, for
    optd.Client.open_cuda_ipc_region: the cudaIpcMemHandle_t of the caching allocator's block
    that holds it (torch's storage _share_cuda_()) and t's byte offset in that block.
    FailedPreconditionError when the block cannot be shared through cudaIpcGetMemHandle
    (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True)."""
    info = t.untyped_storage()._share_cuda_()
    device, handle, offset = info[0], bytes(info[1]), info[3]
    # torch >= 2.2 prefixes the handle with a format version (1) and the block's kind: 'c' for
    # cudaMalloc memory (then the 64 bytes of the cudaIpcMemHandle_t follow), 'e' for an
    # expandable segment (a different kind of handle, which cudaIpcOpenMemHandle cannot open).
    if len(handle) == 66:
        if handle[1:2] != b"c":
            raise FailedPreconditionError(
                "transport='cuda_ipc': this tensor lives in an expandable segment of torch's "
                "allocator, which CUDA IPC handles cannot share; set PYTORCH_CUDA_ALLOC_CONF="
                "expandable_segments:False, or use transport='shm'",
                grpc.StatusCode.FAILED_PRECONDITION)
        handle = handle[2:]
    return handle, offset + t.storage_offset() * t.element_size(), t.numel() * t.element_size(), \
        device


class _CudaIpcGroup:
    """A param_group's CUDA IPC buffer: one device allocation with a gradient slot and a weight
    slot per parameter (_ShmLayout's layout). The parameters are rebound to their weight slots,
    so the server's writes update them in place; the server opens the allocation through its
    IPC handle (torch's storage _share_cuda_(): the handle of the allocator's block and the
    storage's offset in it)."""

    def __init__(self, params, layout):
        self.layout = layout
        self.region = None
        self.buf = torch.zeros(layout.bytes, dtype=torch.uint8, device=params[0].device)
        self.old = [p.data for p in params]
        with torch.no_grad():
            for i, p in enumerate(params):
                w = self.slot(layout.weight[i], p)
                w.copy_(p.data)
                p.data = w

    def slot(self, offset, p):
        n = p.numel() * p.element_size()
        return self.buf[offset:offset + n].view(p.dtype).view(p.shape)

    def ipc_buffer(self):
        """(handle, offset, bytes, device) of the buffer, for Client.open_cuda_ipc_region."""
        return cuda_ipc_buffer(self.buf)

    def keep_parameters(self):
        """The lease is gone but the parameters stay in this buffer (they are its views);
        a new region is opened over new storage."""
        self.region = None

    def release(self, params):
        """Gives the parameters their own storage back (the region could not be opened)."""
        with torch.no_grad():
            for p, old in zip(params, self.old):
                old.copy_(p.data)
                p.data = old
        self.buf = None


def _numpy_view(t):
    """A numpy array sharing memory with CPU tensor `t` (bf16 as uint16 bits)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


class _Bucket:
    """Parameters (indices into their param_group) on one server whose gradients travel as one
    part of a step. `waiting`: those whose gradient has not been staged in this step."""

    def __init__(self, shard, index, members):
        self.shard = shard
        self.index = index
        self.members = members
        self.waiting = set()
        self.future = None


class _Staged:
    """One parameter's gradient on its way: `host` is the flat numpy view that is sent; `keep`
    keeps its memory alive; `event` (CUDA) marks the end of its device-to-host copy."""

    def __init__(self, host, keep=None, event=None):
        self.host = host
        self.keep = keep
        self.event = event


class _Plan:
    """The buckets of one param_group and the state of its step in flight.
    Thread safety: guarded by the optimizer's lock, except the parts' own threads, which only
    read what was fixed when they were submitted."""

    def __init__(self, params, placement, num_shards, max_buckets, bucket_bytes):
        self.buckets = []
        for shard in range(num_shards):
            # Reverse parameter order: about the order backward produces the gradients in.
            mine = [i for i in reversed(range(len(params))) if placement[i] == shard]
            if not mine:
                continue
            # A parameter goes to the bucket its middle byte falls in, buckets being `target`
            # bytes of the running total: about equal buckets without a search.
            sizes = [params[i].numel() * params[i].element_size() for i in mine]
            target = max(1, sum(sizes)) / max_buckets
            if bucket_bytes:
                target = max(target, bucket_bytes)
            groups, start = [[] for _ in range(max_buckets)], 0
            for i, size in zip(mine, sizes):
                groups[min(max_buckets - 1, int((start + size / 2) // target))].append(i)
                start += size
            for k, members in enumerate(g for g in groups if g):
                self.buckets.append(_Bucket(shard, k, members))
        self.parts = {}  # shard -> number of buckets (parts of its steps)
        for b in self.buckets:
            self.parts[b.shard] = self.parts.get(b.shard, 0) + 1
        self.bucket_of = {i: b for b in self.buckets for i in b.members}
        self.host_grads = {}    # param index -> pinned buffer, reused every step (CUDA)
        self.host_weights = {}  # param index -> host buffer the weights land in, reused
        self.weights_copied = []  # CUDA events: last step's host-to-device copies are done
        self.pool = ThreadPoolExecutor(max_workers=max(1, len(self.buckets)))
        self.reset()

    def reset(self):
        self.active = False   # a step has begun (a hook fired or step() was called)
        self.failed = False   # its parts failed: step() may retry it
        self.step = 0
        self.lr = None
        self.staged = {}
        for b in self.buckets:
            b.waiting = set()
            b.future = None

    def part_args(self, bucket):
        """(part_count, part_index) for Client.step: a server's only bucket is a whole step."""
        n = self.parts[bucket.shard]
        return (n, bucket.index) if n > 1 else (0, 0)


class PagedAdamW8bit(torch.optim.Optimizer):
    """See the module docstring. Beyond bitsandbytes' arguments:
    target: "host:port" or a list of them (tensors sharded by rendezvous hashing), default
      $OPTD_TARGET; group: server group name prefix; num_workers, worker, mode,
      sync_timeout_ms: multi-worker groups (see optd.Client.create_group);
    streams: concurrent streams per server and most buckets per param_group and server
      (default $OPTD_STREAMS or 1);
    overlap: send gradients as backward produces them (Note [Overlap with backward]); default
      on, effective where torch >= 2.1;
    bucket_bytes: about this many gradient bytes per bucket (at most `streams` buckets);
    offload_gradients: free each gradient (p.grad = None) once it is on its way (CUDA: once its
      device-to-host copy has been queued; the allocator keeps the memory until the copy is
      done); after step() every gradient that was sent is None;
    timeout: seconds per call without tensor data (default 30); step_timeout: seconds per
      step, upload and pull (default 120, at least sync_timeout_ms + 60 s); None: no
      deadline (Note [Recovery]);
    reconnect: a Reconnect policy for servers that become unavailable during step(), default
      Reconnect(); None: raise at once (Note [Recovery]);
    tls, tls_root_ca, tls_client_cert, tls_client_key, tls_server_name, token: TLS and the
      bearer token for every server (as optd.Client; docs/security.md). The optimizer creates
      its server groups, uploads their weights, updates hyperparameters and imports state, so
      its token needs role admin for the `group` prefix (worker 0; other workers of a
      multi-worker group also create the group with exist_ok)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, optim_bits=32, args=None, min_8bit_size=4096,
                 percentile_clipping=100, block_wise=True, *, target=None, group=None,
                 num_workers=1, worker=0, mode="sync", sync_timeout_ms=0, streams=None,
                 overlap=None, bucket_bytes=None, offload_gradients=False, tls=None,
                 tls_root_ca=None, tls_client_cert=None, tls_client_key=None,
                 tls_server_name=None, token=None, timeout=DEFAULT_TIMEOUT, step_timeout=-1,
                 reconnect=-1, transport="auto"):
        if transport not in _TRANSPORTS:
            raise ValueError(f"transport: {transport!r} is not one of {', '.join(_TRANSPORTS)}")
        if amsgrad:
            raise ValueError("PagedAdamW8bit does not support amsgrad=True")
        if optim_bits != 32:
            raise ValueError(
                "PagedAdamW8bit only supports optim_bits=32 (default value for compatibility)")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if isinstance(betas, str):
            betas = [float(b) for b in betas.replace("(", "").replace(")", "").strip().split(",")]
        for i in range(len(betas)):
            if not 0.0 <= betas[i] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        # optd's own limits (the reference has no check here and fails later, on the device).
        if not block_wise:
            raise ValueError("PagedAdamW8bit only supports block_wise=True")
        if not 1 <= percentile_clipping <= 100:
            raise ValueError(f"Invalid percentile_clipping value: {percentile_clipping}")
        target = target if target is not None else os.environ.get("OPTD_TARGET")
        if not target:
            raise ValueError("target: no optd server address given (target= or OPTD_TARGET)")
        # Files are read and values checked now, not at the first step.
        security = Security(tls, tls_root_ca, tls_client_cert, tls_client_key, tls_server_name,
                            token)
        self._client_security = dict(
            tls=security.tls, tls_root_ca=security.root_ca,
            tls_client_cert=security.client_cert, tls_client_key=security.client_key,
            tls_server_name=security.server_name, token=security.token)
        if step_timeout == -1:
            step_timeout = max(DEFAULT_DATA_TIMEOUT, sync_timeout_ms / 1000.0 + 60.0)
        for name, value in (("timeout", timeout), ("step_timeout", step_timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"{name}: must be > 0 seconds or None, got {value}")
        self.timeout, self.step_timeout = timeout, step_timeout
        self.reconnect = Reconnect() if reconnect == -1 else reconnect
        if self.reconnect is not None and not isinstance(self.reconnect, Reconnect):
            raise ValueError(f"reconnect: expected an optd.torch.Reconnect or None, got "
                             f"{reconnect!r}")
        streams = default_streams() if streams is None else int(streams)
        if streams < 1:
            raise ValueError(f"streams: must be >= 1, got {streams}")
        if bucket_bytes is not None and bucket_bytes < 1:
            raise ValueError(f"bucket_bytes: must be >= 1, got {bucket_bytes}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, optim_bits=optim_bits, min_8bit_size=min_8bit_size,
                        percentile_clipping=percentile_clipping, block_wise=block_wise)
        super().__init__(params, defaults)
        for gi, g in enumerate(self.param_groups):
            for p in g["params"]:
                if p.dtype not in _DTYPES:
                    raise ValueError(f"param_groups[{gi}]: parameter dtype {p.dtype} is not "
                                     f"float32, float16 or bfloat16")
        self.targets = [target] if isinstance(target, str) else list(target)
        if transport in ("shm", "cuda_ipc") and len(self.targets) != 1:
            raise ValueError(f"transport={transport!r} needs one server (target is a list)")
        if transport == "cuda_ipc" and not all(p.is_cuda for g in self.param_groups
                                               for p in g["params"]):
            raise ValueError("transport='cuda_ipc' needs every parameter on a CUDA device")
        self.transport = transport
        self._shm = {}  # param_group index -> _ShmGroup (transport shm)
        self._ipc = {}  # param_group index -> _CudaIpcGroup (transport cuda_ipc)
        self._colocated_in_flight = {}  # param_group index -> colocated step not yet answered
        self._shm_failed = set()  # param_group indices whose last shm step failed (a retry)
        self.group_name = group or f"torch-{uuid.uuid4().hex[:12]}"
        self.num_workers, self.worker, self.mode = num_workers, worker, mode
        self.sync_timeout_ms = sync_timeout_ms
        self.streams = streams
        self.overlap = True if overlap is None else bool(overlap)
        self.bucket_bytes = bucket_bytes
        self.offload_gradients = bool(offload_gradients)
        # Gradient accumulation: while True (or inside no_sync()), backward sends nothing.
        self.accumulating = False
        self.last_step_duplicate = False  # some server answered the last step as a duplicate
        self.duplicate_steps = 0          # steps answered as duplicates (by any server)
        self._shards = {}     # param_group index -> ShardedGroup
        self._sent_hyper = {}  # param_group index -> hyperparameters the server has
        self._steps = {}      # param_group index -> steps applied (Note [Step numbers])
        # param_group index -> {server index: last step this worker applied there}: a server
        # that got no gradient in some steps lags behind _steps.
        self._shard_steps = {}
        self._pending_state = {}  # param -> state dict to import once the group exists
        self._plans = {}      # param_group index -> _Plan
        self._lock = threading.RLock()  # hooks run on autograd's threads
        self._side_streams = {}  # CUDA device -> stream of the gradient/weight copies
        self._hooks = []
        self._hooks_off = set()  # param_group indices whose hooks wait for step() (an error)
        if self.transport == "auto":
            if len(self.targets) != 1:
                self.transport = "grpc"
                _log.info("optd: transport auto: gRPC (several servers)")
            elif not _is_this_host(self.targets[0]):
                self.transport = "grpc"
                _log.info("optd: transport auto: gRPC (%s is not this host)", self.targets[0])
            # else decided at the first step, when the region is opened
        if self.overlap and HAS_POST_ACCUMULATE_GRAD_HOOK and self.transport == "grpc":
            me = weakref.ref(self)
            for gi, g in enumerate(self.param_groups):
                for i, p in enumerate(g["params"]):
                    if p.requires_grad:
                        self._hooks.append(p.register_post_accumulate_grad_hook(
                            _hook(me, gi, i)))

    @property
    def hooks_active(self):
        """True where gradients are sent during backward (torch >= 2.1 and overlap on)."""
        return bool(self._hooks)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside send nothing (gradient accumulation, like DDP's no_sync):
        run every micro-batch but the last one inside it."""
        before = self.accumulating
        self.accumulating = True
        try:
            yield
        finally:
            self.accumulating = before

    def last_step(self, gi=0):
        """Number of the last step applied for param_groups[gi] (0 before the first)."""
        return self._steps.get(gi, 0)

    def step_in_flight(self, gi=0):
        """True when backward has begun sending a step of param_groups[gi] that step() has
        not finished yet (or a failed step that step() may retry)."""
        with self._lock:
            if gi in self._shm_failed:
                return True
            plan = self._plans.get(gi)
            return plan is not None and plan.active

    def bucket_layout(self, gi=0):
        """[(server index, part index, [parameter indices])] of param_groups[gi], in sending
        order. Creates the server group when it does not exist yet (as the first step does)."""
        with self._lock:
            return [(b.shard, b.index, list(b.members)) for b in self._plan(gi).buckets]

    # Server groups ---------------------------------------------------------------------------
    def server_group(self, gi):
        """The server group name of param_groups[gi]."""
        return f"{self.group_name}/{gi}"

    @staticmethod
    def _tensor_name(i):
        return f"p{i}"

    @staticmethod
    def _hyper(g):
        return dict(lr=g["lr"], betas=tuple(g["betas"]), eps=g["eps"],
                    weight_decay=g["weight_decay"], min_8bit_size=g["min_8bit_size"],
                    percentile_clipping=g["percentile_clipping"])

    def _ensure_group(self, gi):
        sg = self._shards.get(gi)
        if sg is not None:
            return sg
        g = self.param_groups[gi]
        specs = [TensorSpec(self._tensor_name(i), _DTYPES[p.dtype], tuple(p.shape))
                 for i, p in enumerate(g["params"])]
        sg = ShardedGroup(self.targets, self.server_group(gi), specs,
                          clients=[self._new_client(t) for t in self.targets])
        hyper = self._hyper(g)
        sg.create(exist_ok=self.num_workers > 1, num_workers=self.num_workers, mode=self.mode,
                  sync_timeout_ms=self.sync_timeout_ms, **hyper)
        if self.worker == 0:
            sg.upload({self._tensor_name(i): _numpy_view(p.detach().cpu().contiguous())
                       for i, p in enumerate(g["params"])})
        self._shards[gi] = sg
        self._sent_hyper[gi] = hyper
        self._steps.setdefault(gi, 0)
        self._shard_steps.setdefault(gi, {})
        pending = {self._tensor_name(i): self._pending_state.pop(p)
                   for i, p in enumerate(g["params"]) if p in self._pending_state}
        if pending:
            sg.import_state(pending)
        return sg

    def _new_client(self, target):
        return Client(target, streams=self.streams, timeout=self.timeout,
                      data_timeout=self.step_timeout, **self._client_security)

    def _specs(self, gi):
        return [TensorSpec(self._tensor_name(i), _DTYPES[p.dtype], tuple(p.shape))
                for i, p in enumerate(self.param_groups[gi]["params"])]

    def _sync_hyper(self, gi, sg):
        want = self._hyper(self.param_groups[gi])
        have = self._sent_hyper[gi]
        # lr too: the step carries it anyway, but GetGroup and checkpoints then show what the
        # scheduler set (one extra RPC only on steps where a value changed).
        changed = {k: v for k, v in want.items() if v != have.get(k)}
        if changed:
            sg.update_hyperparameters(**changed)
            have.update(changed)

    def _plan(self, gi):
        plan = self._plans.get(gi)
        if plan is None:
            sg = self._ensure_group(gi)
            params = self.param_groups[gi]["params"]
            placement = [sg.placement[self._tensor_name(i)] for i in range(len(params))]
            parts_ok = all(c.supports_step_parts for c in sg.clients)
            max_buckets = self.streams if self.overlap and parts_ok else 1
            plan = self._plans[gi] = _Plan(params, placement, len(sg.targets), max_buckets,
                                           self.bucket_bytes)
        return plan

    # The step in flight ----------------------------------------------------------------------
    def _begin(self, gi):
        """The plan of param_groups[gi] with its step begun (REQUIRES: self._lock held)."""
        plan = self._plan(gi)
        if plan.active:
            return plan
        g = self.param_groups[gi]
        self._sync_hyper(gi, self._shards[gi])
        plan.step = self._steps[gi] + 1
        plan.lr = float(g["lr"])
        params = g["params"]
        for b in plan.buckets:
            b.waiting = {i for i in b.members if params[i].requires_grad}
        plan.active = True
        return plan

    def _side_stream(self, device):
        s = self._side_streams.get(device)
        if s is None:
            s = self._side_streams[device] = torch.cuda.Stream(device=device)
        return s

    def _stage(self, plan, i, p):
        """Starts p.grad on its way to the host; returns its _Staged."""
        grad = p.grad.detach()
        if grad.is_sparse:
            raise RuntimeError("PagedAdamW8bit does not support sparse gradients")
        if grad.device.type == "cuda":
            host = plan.host_grads.get(i)
            if host is None or host.dtype != grad.dtype:
                host = plan.host_grads[i] = torch.empty(grad.numel(), dtype=grad.dtype,
                                                        pin_memory=True)
            side = self._side_stream(grad.device)
            side.wait_stream(torch.cuda.current_stream(grad.device))
            with torch.cuda.stream(side):
                src = grad if grad.is_contiguous() else grad.contiguous()
                host.copy_(src.reshape(-1), non_blocking=True)
                event = torch.cuda.Event()
                event.record(side)
            # The caching allocator must not hand this memory out again before the copy
            # has read it (p.grad may be set to None right after this).
            grad.record_stream(side)
            src.record_stream(side)
            return _Staged(_numpy_view(host), event=event)
        if grad.device.type != "cpu":
            grad = grad.to("cpu")
        if not grad.is_contiguous():
            grad = grad.contiguous()
        return _Staged(_numpy_view(grad).reshape(-1), keep=grad)

    def _grad_ready(self, gi, plan, i, p):
        """Stages p's gradient and sends its bucket when it is complete (REQUIRES: lock)."""
        plan.staged[i] = self._stage(plan, i, p)
        if self.offload_gradients and p.grad.device.type == "cuda":
            p.grad = None
        bucket = plan.bucket_of.get(i)
        if bucket is None:
            return
        bucket.waiting.discard(i)
        if not bucket.waiting and bucket.future is None:
            self._submit(gi, plan, bucket)

    def _on_grad(self, gi, i, p):
        """The post-accumulate-grad hook of param_groups[gi]["params"][i]."""
        if self.accumulating:
            return
        with self._lock, torch.no_grad():
            if gi in self._hooks_off:
                return
            plan = self._plans.get(gi)
            if plan is not None and plan.failed:
                plan.reset()  # a new backward after a failed step: that step is dropped
            try:
                plan = self._begin(gi)
            except OptdError:
                # Creating the group or updating its hyperparameters failed: backward goes on
                # untouched, and step() does this step itself and raises the error there.
                self._hooks_off.add(gi)
                return
            if i in plan.staged:
                raise RuntimeError(
                    f"optd: parameter {i} of param_groups[{gi}] got a second gradient before "
                    f"step(): with overlap, run every backward but the last of a step inside "
                    f"opt.no_sync() (or set opt.accumulating = True)")
            self._grad_ready(gi, plan, i, p)

    def _out_view(self, plan, i, p):
        """Where the weights of parameter i land: the parameter itself (contiguous CPU) or a
        reused host buffer (pinned for CUDA) copied in after the step."""
        if p.device.type == "cpu" and p.is_contiguous():
            return _numpy_view(p.data).reshape(-1)
        host = plan.host_weights.get(i)
        if host is None:
            host = plan.host_weights[i] = torch.empty(p.numel(), dtype=p.dtype,
                                                      pin_memory=p.device.type == "cuda")
        return _numpy_view(host)

    def _submit(self, gi, plan, bucket):
        """Sends `bucket` as its part of the step on the plan's threads (REQUIRES: lock)."""
        params = self.param_groups[gi]["params"]
        names = {i: self._tensor_name(i) for i in bucket.members if i in plan.staged}
        grads = {names[i]: plan.staged[i] for i in names}
        outs = {names[i]: self._out_view(plan, i, params[i]) for i in names}
        part_count, part_index = plan.part_args(bucket)
        bucket.future = plan.pool.submit(
            self._send_part, self._shards[gi], bucket.shard, plan.step, plan.lr, grads, outs,
            part_count, part_index, plan.weights_copied,
            self._shard_steps[gi].get(bucket.shard, 0))

    def _send_part(self, sg, shard, step, lr, staged, outs, part_count, part_index,
                   weights_copied, expect_last_step):
        """One part of a step, on a thread of the plan (the GIL is released while the native
        client moves the bytes)."""
        for st in staged.values():
            if st.event is not None:
                st.event.synchronize()
        for event in weights_copied:
            event.synchronize()  # last step's copies out of the weight buffers are done
        client = sg.clients[shard]
        grads = {name: st.host for name, st in staged.items()}
        done, _ = client.step(sg.group, step, grads, out=outs, worker=self.worker, lr=lr,
                              part_count=part_count, part_index=part_index,
                              expect_last_step=expect_last_step)
        if done.duplicate and outs:
            # Applied before (a retry whose answer was lost): no weights came back.
            client.pull_weights(sg.group, list(outs), out=outs)
        return done

    def _finish(self, gi, plan):
        """Sends what is left of the step of param_groups[gi], waits for every part and writes
        the weights back (REQUIRES: lock). Returns {shard: StepDone}, empty when no parameter
        had a gradient."""
        params = self.param_groups[gi]["params"]
        if plan.failed:  # a retry: every part again, from the staged gradients
            for b in plan.buckets:
                b.future = None
            plan.failed = False
        for i in reversed(range(len(params))):
            if i not in plan.staged and params[i].grad is not None:
                self._grad_ready(gi, plan, i, params[i])
        if not plan.staged:
            plan.reset()
            return {}
        used = {plan.bucket_of[i].shard for i in plan.staged if i in plan.bucket_of}
        for b in plan.buckets:
            if b.future is None and b.shard in used:
                self._submit(gi, plan, b)  # maybe without gradients: every part must come
        sg = self._shards[gi]
        dones, first_error = {}, None
        for b in plan.buckets:
            if b.future is None:
                continue
            try:
                dones.setdefault(b.shard, []).append(b.future.result())
            except OptdError as e:
                if first_error is None:
                    first_error = shard_error(sg.targets[b.shard], e)
        if first_error is None:
            try:
                per_shard = {s: merge_step_parts(d, sg.targets[s]) for s, d in dones.items()}
            except OptdError as e:
                first_error = e
        if first_error is not None:
            plan.failed = True
            raise first_error
        self._write_back(plan, params)
        for i in plan.staged:
            st = self.state[params[i]]
            st["step"] = st.get("step", 0) + 1
            if self.offload_gradients:
                params[i].grad = None
        self._steps[gi] = plan.step
        for shard in per_shard:
            self._shard_steps[gi][shard] = plan.step
        plan.reset()
        return per_shard

    def _write_back(self, plan, params):
        """CUDA and non-contiguous parameters take their weights from the host buffers: one
        asynchronous copy each on the side stream, which the current stream then waits on."""
        events = []
        by_device = {}
        for i in plan.staged:
            p = params[i]
            if p.device.type == "cpu" and p.is_contiguous():
                continue  # the weights were written into the parameter itself
            host = plan.host_weights[i].view(p.shape)
            if p.device.type == "cuda":
                by_device.setdefault(p.device, []).append((p, host))
            else:
                p.data.copy_(host)
        for device, pairs in by_device.items():
            side = self._side_stream(device)
            current = torch.cuda.current_stream(device)
            side.wait_stream(current)  # the work queued so far still reads the old weights
            with torch.cuda.stream(side):
                for p, host in pairs:
                    p.data.copy_(host, non_blocking=True)
                event = torch.cuda.Event()
                event.record(side)
            current.wait_event(event)
            events.append(event)
        plan.weights_copied = events

    # Recovery (Note [Recovery]) ---------------------------------------------------------------
    def _step_group(self, gi):
        """One step of param_groups[gi]: reconnects while a server is unavailable, turns a
        refused expect_last_step into StepMismatch (REQUIRES: lock)."""
        backoff = None
        while True:
            try:
                return self._finish(gi, self._begin(gi))
            except OptdError as e:
                if gi not in self._shards:
                    raise  # creating the groups failed: nothing to resynchronize yet
                if e.code == grpc.StatusCode.FAILED_PRECONDITION:
                    # Refused through expect_last_step (a server met again without an error
                    # in between), or another precondition: the step counts tell which.
                    try:
                        infos = self._shards[gi].get_group()
                    except OptdError as lookup:
                        if lookup.code != grpc.StatusCode.UNAVAILABLE or self.reconnect is None:
                            raise e from lookup
                        self._reconnect(gi, _Backoff(self.reconnect), lookup)
                    else:
                        self._check_server_steps(gi, infos)
                    raise  # the counts agree: another precondition failed
                if e.code != grpc.StatusCode.UNAVAILABLE or self.reconnect is None:
                    raise
                backoff = backoff or _Backoff(self.reconnect)
                self._reconnect(gi, backoff, e)

    def _renew_clients(self, sg):
        """Fresh connections: a channel that lost its server may wait out gRPC's own
        reconnection backoff (up to two minutes) before it tries again."""
        for i, target in enumerate(sg.targets):
            old = sg.clients[i]
            sg.clients[i] = self._new_client(target)
            old.close()

    def _reconnect(self, gi, backoff, cause):
        """Waits (backoff) until every server of param_groups[gi] answers GetGroup again,
        then checks the servers' step counts against this optimizer's."""
        sg = self._shards[gi]
        while True:
            backoff.wait(cause)
            self._renew_clients(sg)
            try:
                infos = sg.get_group()
            except OptdError as e:
                if e.code == grpc.StatusCode.UNAVAILABLE:
                    cause = e
                    continue
                if e.code == grpc.StatusCode.NOT_FOUND:
                    raise NotFoundError(
                        f"{e} -- the server came back without group {sg.group!r} (restarted "
                        f"without --restore?): resume() creates it from the current "
                        f"parameters", e.code, e.target) from e
                raise
            self._check_server_steps(gi, infos)
            return

    def _check_server_steps(self, gi, infos):
        """Raises StepMismatch when a server's last applied step of this worker is neither
        this optimizer's last one there nor the step in flight (a retry the server may have
        applied). Servers that do not report worker_steps are not checked."""
        plan = self._plans.get(gi)
        in_flight = plan.step if plan is not None and plan.active else \
            self._colocated_in_flight.get(gi)
        for shard, info in sorted(infos.items()):
            if len(info.worker_steps) <= self.worker:
                continue
            server = info.worker_steps[self.worker]
            mine = self._shard_steps[gi].get(shard, 0)
            if server == mine or server == in_flight:
                continue
            target = self._shards[gi].targets[shard]
            raise StepMismatch(
                f"{target}: the last step applied for worker {self.worker} of group "
                f"{info.group!r} is {server}, this optimizer's is {mine} (step {in_flight} in "
                f"flight): the server was restarted from "
                f"{'an older' if server < mine else 'another'} checkpoint, or another process "
                f"steps as this worker. Nothing more is applied until resume() takes the "
                f"server's weights and step count (or a checkpoint of the trainer's own that "
                f"matches the server is restored)", server, mine, target, info.group)

    def _attach_group(self, gi):
        """The ShardedGroup of an existing server group of param_groups[gi] (nothing created
        or uploaded), or None when no server has it."""
        name = self.server_group(gi)
        sg = ShardedGroup(self.targets, name, self._specs(gi),
                          clients=[self._new_client(t) for t in self.targets])
        missing, found = [], {}
        for shard in sg.used_shards():
            try:
                found[shard] = sg.clients[shard].get_group(name)
            except NotFoundError:
                missing.append(sg.targets[shard])
            except OptdError as e:
                sg.close()
                raise shard_error(sg.targets[shard], e)
        if not found:
            sg.close()
            return None, {}
        if missing:
            sg.close()
            raise FailedPreconditionError(
                f"group {name!r} exists on {[sg.targets[s] for s in found]} but not on "
                f"{missing}: the servers do not hold the same training")
        for shard, info in found.items():
            have = {t.name: (t.dtype, tuple(t.shape)) for t in
                    sg.clients[shard].specs(name).values()}
            for t in sg.tensors:
                if sg.placement[t.name] == shard and have.get(t.name) != (t.dtype, t.shape):
                    sg.close()
                    raise InvalidArgumentError(
                        f"group {name!r} on {sg.targets[shard]}: tensor {t.name} is "
                        f"{have.get(t.name)} there, the parameter is {(t.dtype, t.shape)}")
        return sg, found

    def resume(self, pull_weights=True):
        """Attaches to the server groups as they are and continues from there (Note
        [Recovery]): for a trainer restarted from its own checkpoint, or after StepMismatch.
        Per param_group: the step counter becomes this worker's last applied step on the
        servers (GroupInfo.worker_steps), and with pull_weights (default) the servers' weights
        are copied into the parameters. A group that exists nowhere is created from the
        current parameters (and a state loaded with load_state_dict() is pushed). States
        loaded with load_state_dict() are not pushed into groups that exist: the server's
        states belong to its weights. Drops any step in flight. Returns {param_group index:
        step count}."""
        counts = {}
        with self._lock, torch.no_grad():
            self._hooks_off.clear()
            for gi in range(len(self.param_groups)):
                plan = self._plans.get(gi)
                if plan is not None:
                    plan.reset()
                counts[gi] = self._resume_group(gi, pull_weights)
        return counts

    sync = resume

    def _resume_group(self, gi, pull_weights):
        old = self._shards.pop(gi, None)
        if old is not None:
            old.close()
        sg, infos = self._attach_group(gi)
        params = self.param_groups[gi]["params"]
        if sg is None:
            self._steps[gi] = 0
            self._shard_steps[gi] = {}
            self._ensure_group(gi)
            return 0
        steps = {}
        for shard, info in infos.items():
            steps[shard] = (info.worker_steps[self.worker]
                            if len(info.worker_steps) > self.worker else info.version)
        self._shards[gi] = sg
        self._sent_hyper[gi] = {}  # the next step sends every hyperparameter
        self._shard_steps[gi] = steps
        self._steps[gi] = max(steps.values(), default=0)
        dropped = [p for p in params if self._pending_state.pop(p, None) is not None]
        if dropped:
            warnings.warn(f"optd: resume(): group {sg.group!r} exists on the servers; the "
                          f"state loaded with load_state_dict() for {len(dropped)} parameters "
                          f"was not pushed (the servers' states belong to their weights)",
                          RuntimeWarning, stacklevel=3)
        if pull_weights:
            plan = self._plan(gi)
            for shard in sg.used_shards():
                outs = {self._tensor_name(i): self._out_view(plan, i, p)
                        for i, p in enumerate(params) if sg.placement[self._tensor_name(i)] == shard}
                sg.clients[shard].pull_weights(sg.group, list(outs), out=outs)
            for i, p in enumerate(params):
                if not (p.device.type == "cpu" and p.is_contiguous()):
                    p.data.copy_(plan.host_weights[i].view(p.shape))
        return self._steps[gi]

    # torch.optim.Optimizer ---------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        duplicate = False
        with self._lock:
            self._hooks_off.clear()
            for gi in range(len(self.param_groups)):
                colocated = False
                for kind, opener in (("cuda_ipc", self._ipc_group), ("shm", self._shm_group)):
                    if self.transport not in (kind, "auto"):
                        continue
                    if all(p.grad is None for p in self.param_groups[gi]["params"]):
                        colocated = True  # nothing to step
                        break
                    if opener(gi) is not None:
                        duplicate = self._step_colocated(gi, kind) or duplicate
                        colocated = True
                        break
                if colocated:
                    continue
                plan = self._plans.get(gi)
                if plan is None or not plan.active:
                    params = self.param_groups[gi]["params"]
                    if all(p.grad is None for p in params):
                        continue
                dones = self._step_group(gi)
                for shard, done in dones.items():
                    if done.duplicate:
                        duplicate = True
                        warnings.warn(
                            f"optd: step {done.step} of {self.server_group(gi)} on "
                            f"{self._shards[gi].targets[shard]} was applied before (a retry): "
                            f"not applied again; its weights were pulled", RuntimeWarning,
                            stacklevel=3)
        self.last_step_duplicate = duplicate
        if duplicate:
            self.duplicate_steps += 1
        return loss

    def zero_grad(self, set_to_none=None):
        """torch.optim.Optimizer.zero_grad (set_to_none: torch's default when not given); over
        CUDA IPC the gradients of param_groups with a region are zeroed in their slots whatever
        set_to_none says, so that backward accumulates where the server reads them (no copy, no
        second gradient buffer)."""
        if not self._ipc:
            if set_to_none is None:
                return super().zero_grad()
            return super().zero_grad(set_to_none=set_to_none)
        if set_to_none is None:
            set_to_none = True
        for gi, g in enumerate(self.param_groups):
            ipc = self._ipc.get(gi)
            for i, p in enumerate(g["params"]):
                if p.grad is None:
                    continue  # stays None: a parameter without a gradient is not stepped
                if ipc is not None:
                    p.grad = ipc.slot(ipc.layout.grad[i], p)
                elif set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()
            if ipc is not None:
                ipc.buf[:ipc.layout.weight[0]].zero_()  # every gradient slot, one kernel
        return None

    # Colocated transport (Note [Colocated transport]) ----------------------------------------
    def _step_colocated(self, gi, kind):
        """One step of param_groups[gi] over its region of `kind` ("cuda_ipc" or "shm"), with
        the recovery of Note [Recovery]: a region's lease ends with its server's connection, so
        after a server came back the region is opened again and the step retried, the server
        deduplicating a step it had applied. True when the server called it a duplicate."""
        backoff = None
        while True:
            if kind == "cuda_ipc":
                region = self._ipc_group(gi)
                run = self._step_ipc
            else:
                region = self._shm_group(gi)
                run = self._step_shm
            try:
                return run(gi, region)
            except OptdError as e:
                if e.code == grpc.StatusCode.FAILED_PRECONDITION:
                    try:
                        infos = self._shards[gi].get_group()
                    except OptdError as lookup:
                        raise e from lookup
                    self._check_server_steps(gi, infos)
                    raise
                lost = e.code == grpc.StatusCode.UNAVAILABLE or (
                    e.code == grpc.StatusCode.NOT_FOUND and "not an open region" in str(e))
                if not lost or self.reconnect is None:
                    raise
                self._close_region(gi)
                backoff = backoff or _Backoff(self.reconnect)
                self._reconnect(gi, backoff, e)

    def _close_region(self, gi):
        """Forgets param_groups[gi]'s region (its lease is gone); the next step opens another."""
        shm = self._shm.pop(gi, None)
        if shm is not None:
            shm.close()
        ipc = self._ipc.pop(gi, None)
        if ipc is not None:
            ipc.region.close()
            ipc.keep_parameters()

    def _ipc_group(self, gi):
        """The CUDA IPC region of param_groups[gi]; None when "auto" goes on to shared memory."""
        ipc = self._ipc.get(gi)
        if ipc is not None:
            return ipc
        params = self.param_groups[gi]["params"]
        if self.transport == "auto" and not all(p.is_cuda for p in params):
            return None
        sg = self._ensure_group(gi)
        layout = _ShmLayout(params)
        ipc = _CudaIpcGroup(params, layout)
        try:
            ipc.region = sg.clients[0].open_cuda_ipc_region(self.server_group(gi),
                                                            [ipc.ipc_buffer()])
        except OptdError as e:
            ipc.release(params)
            if self.transport == "cuda_ipc":
                raise
            _log.info("optd: transport auto: no CUDA IPC (%s); trying shared memory", e)
            return None
        if self.transport == "auto":
            _log.info("optd: transport auto: CUDA IPC with %s", self.targets[0])
            self.transport = "cuda_ipc"
        ipc.old = None  # the parameters' former storage is freed
        self._ipc[gi] = ipc
        return ipc

    def _step_ipc(self, gi, ipc):
        """One step of param_groups[gi] over its CUDA IPC region (Note [Colocated transport]);
        True when the server called it a duplicate."""
        g = self.param_groups[gi]
        sg = self._shards[gi]
        self._sync_hyper(gi, sg)
        ranges, with_grad = [], []
        for i, p in enumerate(g["params"]):
            if p.grad is None:
                continue
            slot = ipc.slot(ipc.layout.grad[i], p)
            if p.grad.data_ptr() != slot.data_ptr():
                slot.copy_(p.grad.detach())  # casts a gradient of another dtype
                # Backward accumulates into the slot from now on (until zero_grad sets None).
                p.grad = slot
            ranges.append(RegionRange(self._tensor_name(i), 0, p.numel(), _DTYPES[p.dtype],
                                      ipc.layout.grad[i], ipc.layout.weight[i]))
            with_grad.append((i, p))
        # The server reads the gradients once this process's work on them is done
        # (Note [Ordering on the device] in server/cuda_ipc_region.h).
        torch.cuda.current_stream(ipc.buf.device).synchronize()
        done = self._region_step(gi, ipc.region, ranges, with_grad)
        # Unless it was a duplicate, the server wrote the new weights into the parameters.
        self._finish_region_step(gi, done)
        return done.duplicate

    def _region_step(self, gi, region, ranges, with_grad):
        """Sends the step of param_groups[gi] whose gradients are `ranges` of `region`; a
        duplicate's weights are pulled into the parameters of `with_grad` ((index, param))."""
        g = self.param_groups[gi]
        sg = self._shards[gi]
        step = self._steps[gi] + 1
        self._colocated_in_flight[gi] = step
        try:
            done = sg.clients[0].step_region(self.server_group(gi), step, region, ranges,
                                             worker=self.worker, lr=g["lr"],
                                             expect_last_step=self._steps[gi])
        except OptdError:
            self._shm_failed.add(gi)  # step() may be called again with the same gradients
            raise
        self._shm_failed.discard(gi)
        if done.duplicate:
            warnings.warn(f"optd: step {done.step} of {self.server_group(gi)} was applied before "
                          f"(a retry): not applied again; its weights were pulled",
                          RuntimeWarning, stacklevel=4)
            pulled = sg.pull()
            with torch.no_grad():
                for i, p in with_grad:
                    w = pulled[self._tensor_name(i)]
                    src = torch.from_numpy(w.view(np.int16)).view(torch.bfloat16) \
                        if p.dtype == torch.bfloat16 else torch.from_numpy(w)
                    p.copy_(src.view(p.shape))
        return done

    def _finish_region_step(self, gi, done):
        self._steps[gi] = done.step
        self._shard_steps.setdefault(gi, {})[0] = done.step
        self._colocated_in_flight.pop(gi, None)

    def _shm_group(self, gi):
        """The region of param_groups[gi]; None when "auto" fell back to gRPC."""
        shm = self._shm.get(gi)
        if shm is not None:
            return shm
        sg = self._ensure_group(gi)
        layout = _ShmLayout(self.param_groups[gi]["params"])
        try:
            region = sg.clients[0].open_shm_region(self.server_group(gi), layout.bytes)
        except OptdError as e:
            if self.transport == "shm":
                raise
            _log.warning("optd: transport auto: using gRPC: %s", e)
            self.transport = "grpc"
            return None
        if self.transport == "auto":
            _log.info("optd: transport auto: shared memory with %s", self.targets[0])
            self.transport = "shm"
        shm = self._shm[gi] = _ShmGroup(region, layout)
        return shm

    def _step_shm(self, gi, shm):
        """One step of param_groups[gi] over its region; True when the server called it a
        duplicate."""
        g = self.param_groups[gi]
        sg = self._shards[gi]
        self._sync_hyper(gi, sg)
        ranges, with_grad = [], []
        for i, p in enumerate(g["params"]):
            if p.grad is None:
                continue
            grad = p.grad.detach()
            if grad.dtype != p.dtype:
                grad = grad.to(p.dtype)
            # Into page-locked memory the device-to-host copies run asynchronously (DMA); one
            # synchronize below waits for them all.
            shm.slot(shm.layout.grad[i], p).copy_(grad, non_blocking=shm.registered)
            if self.offload_gradients:
                p.grad = None  # the region holds it now
            ranges.append(RegionRange(self._tensor_name(i), 0, p.numel(), _DTYPES[p.dtype],
                                      shm.layout.grad[i], shm.layout.weight[i]))
            with_grad.append((i, p))
        if shm.registered:
            torch.cuda.synchronize()
        done = self._region_step(gi, shm.region, ranges, with_grad)
        if not done.duplicate:
            with torch.no_grad():
                for i, p in with_grad:
                    # Ordered before later work on the stream; the next step's synchronize
                    # waits for it before the server may write the slot again.
                    p.copy_(shm.slot(shm.layout.weight[i], p), non_blocking=shm.registered)
        self._finish_region_step(gi, done)
        return done.duplicate

    def close(self):
        for shm in self._shm.values():
            shm.close()
        self._shm = {}
        for ipc in self._ipc.values():
            ipc.region.close()
        self._ipc = {}
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for plan in self._plans.values():
            plan.pool.shutdown(wait=False)
        for sg in self._shards.values():
            sg.close()

    def server_groups(self):
        """{param_group index: ShardedGroup} of the groups created so far."""
        return dict(self._shards)


    # State -------------------------------------------------------------------------------------
    def _fetch_state(self):
        for gi, g in enumerate(self.param_groups):
            if gi not in self._shards:
                continue
            exported = self._shards[gi].export_state()
            for i, p in enumerate(g["params"]):
                st = exported.get(self._tensor_name(i))
                if not st:
                    continue
                out = {"step": int(st.get("step", 0))}
                for key in _STATE_KEYS:
                    if key in st:
                        out[key] = torch.from_numpy(np.ascontiguousarray(st[key]))
                self.state[p] = out

    def state_dict(self):
        """The reference's layout: per parameter step, state1, state2, qmap1, qmap2, absmax1,
        absmax2 (and gnorm_vec when clipping), fetched from the servers."""
        self._fetch_state()
        return super().state_dict()

    def load_state_dict(self, state_dict):
        """Accepts the reference's flat layout and the nested one of bitsandbytes >= 0.49.2.
        States are pushed to the servers (now, or when the groups are created)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        id_map = {}
        for g, saved in zip(self.param_groups, groups):
            if len(g["params"]) != len(saved["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 "match the size of optimizer's group")
            id_map.update(zip(saved["params"], g["params"]))
            for k, v in saved.items():
                if k != "params":
                    g[k] = tuple(v) if k == "betas" else v
        self.state.clear()
        for pid, st in state_dict["state"].items():
            p = id_map.get(pid)
            if p is None:
                continue
            flat = dict(st)
            nested = flat.pop(_QUANT_STATE_KEY, None)
            if nested:
                flat.update(nested)
            self.state[p] = {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v)
                             for k, v in flat.items()}
        for gi, g in enumerate(self.param_groups):
            per = {}
            for i, p in enumerate(g["params"]):
                st = self.state.get(p)
                if not st:
                    continue
                d = {"step": int(st["step"])}
                for key in _STATE_KEYS:
                    if key in st:
                        d[key] = st[key].numpy()
                per[self._tensor_name(i)] = d
            if gi in self._shards:
                self._sync_hyper(gi, self._shards[gi])
                if per:
                    self._shards[gi].import_state(per)
            else:
                for i, p in enumerate(g["params"]):
                    if self._tensor_name(i) in per:
                        self._pending_state[p] = per[self._tensor_name(i)]


def _hook(optimizer_ref, gi, i):
    """A post-accumulate-grad hook that does not keep the optimizer alive."""
    def hook(p):
        opt = optimizer_ref()
        if opt is not None:
            opt._on_grad(gi, i, p)
    return hook
