"""The low-level optd client over numpy arrays: one Client per server address.

Tensors are flat C-contiguous numpy arrays: float32, float16, or uint16 holding raw bf16 bits
(numpy has no bf16). Chunks carry 4 MiB of payload by default, aligned to 256 elements.

Two data paths, one API. Where the native library loads (optd._native: the C++ client behind
a C ABI), step, upload_weights and pull_weights run there, with the GIL released and no copy
of the arrays on the Python side; everything else (groups, hyperparameters, checkpoints,
state export/import, subscribe) always goes through grpcio. Without the library (or with
OPTD_PURE_PYTHON=1), the pure-Python client does it all, after one warning naming why.
data_path() says which path this process uses.

Security (docs/security.md): tls_root_ca, tls_client_cert, tls_client_key (PEM text as str or
bytes, or the path of a PEM file) turn TLS on (mutual TLS with the client pair); tls=True turns
it on with the system's root CAs; tls_server_name checks the server's certificate against
another name than the target's host. token= sends "authorization: Bearer <token>" with every
call, on both data paths.

Deadlines (Note [Deadlines]): every call has one. `timeout` (default 30 s) bounds the calls
that move no tensor data (groups, hyperparameters); `data_timeout` (default 120 s) bounds each
step, upload, pull, state export/import and checkpoint save/restore, on both data paths. A call
past its deadline raises DeadlineExceededError naming the call and the server, never hangs;
like CANCELLED and UNAVAILABLE, its outcome is unknown: the server may have applied it
(Note [Unknown outcome] in optd.errors).

Thread safety: a Client may be used from several threads (gRPC channels and the native client
are thread-safe).

Note [Deadlines]
A stopped server (SIGSTOP, a hung host) keeps TCP connections open: without a deadline a call
waits forever. The data deadline is long enough for a large step on a slow network and above
the server's default sync_timeout_ms (60 s), so that a worker waiting for its peers in a sync
group hears the server's own DEADLINE_EXCEEDED ("did not push within sync_timeout_ms") first;
raise it for steps that move many gigabytes over a slow link. Subscribe has no deadline (a
subscription lasts until cancelled). Passing `timeout` alone (or None: no deadlines) sets both,
as before data_timeout existed."""

import os
import random
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np

from optd import _native, colocated
from optd.errors import InvalidArgumentError, OptdError, from_rpc_error, from_status
from optd.v1 import optd_pb2 as pb
from optd.v1 import optd_pb2_grpc as pb_grpc

BLOCK = 256
DEFAULT_CHUNK_BYTES = 4 << 20
MAX_MESSAGE_BYTES = 64 << 20
DEFAULT_TIMEOUT = 30.0        # seconds, calls without tensor data (Note [Deadlines])
DEFAULT_DATA_TIMEOUT = 120.0  # seconds, each step, upload, pull, state and checkpoint call
_UNSET = object()

_PROTO_DTYPE = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "bfloat16": pb.BFLOAT16}
_NAME_OF_PROTO = {v: k for k, v in _PROTO_DTYPE.items()}
_NUMPY_DTYPE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
_STATE_NUMPY = {pb.STATE_ELEMENT_TYPE_UINT8: np.uint8, pb.STATE_ELEMENT_TYPE_FLOAT32: np.float32,
                pb.STATE_ELEMENT_TYPE_INT64: np.int64}
_STATE_TYPE = {np.dtype(np.uint8): pb.STATE_ELEMENT_TYPE_UINT8,
               np.dtype(np.float32): pb.STATE_ELEMENT_TYPE_FLOAT32,
               np.dtype(np.int64): pb.STATE_ELEMENT_TYPE_INT64}
_MODES = {"sync": pb.SYNC, "async": pb.ASYNC}
_RETURNS = {"updated": pb.UPDATED, "all": pb.ALL, "none": pb.NONE}
_HYPER_FIELDS = ("lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "optim_bits",
                 "min_8bit_size", "percentile_clipping", "block_wise")


_warned_pure = False
_warn_lock = threading.Lock()


def data_path():
    """("native", path of the library) or ("pure", why the library is not used)."""
    lib = _native.load()
    if lib is not None:
        return "native", lib.path
    return "pure", _native.load_error()


def _native_library():
    """The native library, or None after warning once (per process) why not. No warning when
    the pure path was asked for (OPTD_PURE_PYTHON=1)."""
    global _warned_pure
    lib = _native.load()
    if lib is None and os.environ.get("OPTD_PURE_PYTHON", "") in ("", "0"):
        with _warn_lock:
            warn, _warned_pure = not _warned_pure, True
        if warn:
            warnings.warn(f"optd: using the pure-Python data path: {_native.load_error()}",
                          RuntimeWarning, stacklevel=3)
    return lib


def _pem(value, what):
    """PEM bytes of `value`: PEM text (str or bytes) or the path of a file holding it."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if "-----BEGIN" in value:
        return value.encode()
    try:
        with open(value, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InvalidArgumentError(f"{what}: cannot read {value}: {e.strerror}") from None
    if b"-----BEGIN" not in data:
        raise InvalidArgumentError(f"{what}: {value} holds no PEM data")
    return data


class Security:
    """The TLS and token settings of a Client, resolved once (files read, values checked)."""

    def __init__(self, tls=None, tls_root_ca=None, tls_client_cert=None, tls_client_key=None,
                 tls_server_name=None, token=None):
        self.root_ca = _pem(tls_root_ca, "tls_root_ca")
        self.client_cert = _pem(tls_client_cert, "tls_client_cert")
        self.client_key = _pem(tls_client_key, "tls_client_key")
        if (self.client_cert is None) != (self.client_key is None):
            raise InvalidArgumentError(
                "tls_client_cert and tls_client_key: mutual TLS needs both (or neither)")
        self.tls = bool(tls) or any(v is not None for v in
                                    (self.root_ca, self.client_cert, self.client_key))
        self.server_name = tls_server_name
        if tls_server_name and not self.tls:
            raise InvalidArgumentError("tls_server_name: set, but TLS is not enabled")
        if token is not None and (not token or any(not 0x21 <= ord(c) <= 0x7e for c in token)):
            raise InvalidArgumentError("token: must be non-empty visible ASCII")
        self.token = token or None

    @property
    def used(self):
        return self.tls or self.token is not None

    def metadata(self):
        """Per-call metadata: the bearer token, or None."""
        return None if self.token is None else (("authorization", f"Bearer {self.token}"),)

    def channel(self, target, options):
        if not self.tls:
            return grpc.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(root_certificates=self.root_ca,
                                                   private_key=self.client_key,
                                                   certificate_chain=self.client_cert)
        if self.server_name:
            options = options + [("grpc.ssl_target_name_override", self.server_name)]
        return grpc.secure_channel(target, credentials, options=options)


def default_streams():
    """$OPTD_STREAMS, else 1."""
    value = os.environ.get("OPTD_STREAMS", "")
    try:
        streams = int(value) if value else 1
    except ValueError:
        raise InvalidArgumentError(f"OPTD_STREAMS: {value!r} is not an integer") from None
    if streams < 1:
        raise InvalidArgumentError(f"OPTD_STREAMS: must be >= 1, got {streams}")
    return streams


@dataclass
class TensorSpec:
    name: str
    dtype: str  # "float32", "float16" or "bfloat16"
    shape: tuple

    @property
    def numel(self):
        n = 1
        for d in self.shape:
            n *= int(d)
        return n


def dtype_name(array):
    """The optd dtype of a numpy array: uint16 is taken as raw bf16 bits."""
    for name, np_type in _NUMPY_DTYPE.items():
        if array.dtype == np_type:
            return name
    raise InvalidArgumentError(
        f"dtype: numpy dtype {array.dtype} is not float32, float16 or uint16 (bf16 bits)")


def numpy_dtype(name):
    try:
        return _NUMPY_DTYPE[name]
    except KeyError:
        raise InvalidArgumentError(
            f"dtype: unknown dtype {name!r}; expected float32, float16 or bfloat16") from None


def _flat(array, what):
    a = np.asarray(array)
    if not a.flags.c_contiguous:
        raise InvalidArgumentError(f"{what}: array must be C-contiguous")
    return a.reshape(-1)


def _elements_per_chunk(itemsize, chunk_bytes):
    return max(BLOCK, (chunk_bytes // itemsize) // BLOCK * BLOCK)


def tensor_chunks(name, flat, chunk_bytes=DEFAULT_CHUNK_BYTES):
    """TensorChunk messages covering `flat`, block-aligned."""
    dt = _PROTO_DTYPE[dtype_name(flat)]
    per = _elements_per_chunk(flat.itemsize, chunk_bytes)
    for off in range(0, flat.size, per):
        yield pb.TensorChunk(tensor=name, offset=off, dtype=dt, data=flat[off:off + per].tobytes())


def hyperparameters(**kw):
    """A Hyperparameters message from keyword arguments (None = unset); betas=(b1, b2) allowed."""
    betas = kw.pop("betas", None)
    if betas is not None:
        kw["beta1"], kw["beta2"] = betas
    hp = pb.Hyperparameters()
    for key, value in kw.items():
        if key not in _HYPER_FIELDS:
            raise InvalidArgumentError(f"{key}: not a hyperparameter")
        if value is not None:
            setattr(hp, key, value)
    return hp


def merge_step_parts(dones, target=""):
    """One StepDone for the parts of one step (each part's StepDone names the same step).
    Parts that disagree on `duplicate` mean the server applied them as separate steps: it
    predates step parts (StepBegin.streams), and the step is not what was sent."""
    dup = {d.duplicate for d in dones}
    if len(dup) > 1:
        raise from_status(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"step {dones[0].step}: the server applied some parts of the step and answered "
            f"others as duplicates: it does not support steps spread over several streams "
            f"(StepBegin.streams); use streams=1 with this server", target)
    return pb.StepDone(step=dones[0].step, version=max(d.version for d in dones),
                       duplicate=dup.pop(),
                       nonfinite_gradient_elements=max(d.nonfinite_gradient_elements
                                                       for d in dones))


class _Assembler:
    """Writes arriving weight chunks into destination arrays (allocated on first sight)."""

    def __init__(self, out, specs):
        self.out = {} if out is None else out
        self.flat = {k: _flat(v, f"out[{k}]") for k, v in self.out.items()}
        self.specs = specs or {}

    def write(self, chunk):
        dst = self.flat.get(chunk.tensor)
        src_type = _NUMPY_DTYPE[_NAME_OF_PROTO.get(chunk.dtype, "float32")]
        src = np.frombuffer(chunk.data, dtype=src_type)
        if dst is None:
            spec = self.specs.get(chunk.tensor)
            if spec is None:
                # Unknown size: grow as chunks arrive.
                dst = np.zeros(0, src_type)
            else:
                dst = np.zeros(spec.numel, numpy_dtype(spec.dtype))
            self.flat[chunk.tensor] = dst
            self.out[chunk.tensor] = dst if spec is None else dst.reshape(spec.shape)
        end = chunk.offset + src.size
        if end > dst.size:
            if chunk.tensor in self.specs or chunk.tensor in self.out and dst.size > 0:
                raise OptdError(f"weights of {chunk.tensor}: chunk [{chunk.offset}, {end}) past "
                                f"the tensor's {dst.size} elements")
            grown = np.zeros(end, src_type)
            grown[:dst.size] = dst
            dst = grown
            self.flat[chunk.tensor] = dst
            self.out[chunk.tensor] = dst
        dst[chunk.offset:end] = src
        return src.size


class Subscription:
    """An open Subscribe stream. Iterate for (version, {tensor: array}); cancel() to stop."""

    def __init__(self, call, specs, target):
        self._call = call
        self._specs = specs
        self._target = target

    def __iter__(self):
        asm = _Assembler(None, self._specs)
        try:
            for msg in self._call:
                if msg.HasField("chunk"):
                    asm.write(msg.chunk)
                if msg.version_complete:
                    yield msg.version, asm.out
                    asm = _Assembler(None, self._specs)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(e, self._target) from None

    def cancel(self):
        self._call.cancel()


def _group(group):
    return f"group {group!r}"


def _step_of(group, step):
    return f"step {step} of group {group!r}"


def _step_begin(group, step, worker, lr, weights, base_version, expect_last_step):
    """The fields of a step's begin that come from the call (the callers add the rest)."""
    begin = pb.StepBegin(group=group, worker=worker, step=step, weights=_RETURNS[weights])
    if lr is not None:
        begin.lr = lr
    if base_version is not None:
        begin.base_version = base_version
    if expect_last_step is not None:
        begin.expect_last_step = expect_last_step
    return begin


def _attempt_id():
    """A random StepBegin.attempt (never 0): a retry of a failed step starts afresh."""
    return random.getrandbits(64) or 1


def _call_name(method, what=""):
    """How an error names the call: "Step (step 3 of group 'g')"."""
    return f"{method} ({what})" if what else method


class Client:
    """A connection to one optd server.

    streams: concurrent streams (connections on the native path) one step is spread over;
    default $OPTD_STREAMS or 1.
    timeout: seconds per call without tensor data (default 30; None: no deadline);
    data_timeout: seconds per step, upload, pull, state export/import and checkpoint call
    (default 120, or `timeout` when only that is given); Note [Deadlines].
    tls, tls_root_ca, tls_client_cert, tls_client_key, tls_server_name, token: see the module
    docstring (Security)."""

    def __init__(self, target, chunk_bytes=DEFAULT_CHUNK_BYTES, timeout=_UNSET, streams=None, *,
                 data_timeout=_UNSET, tls=None, tls_root_ca=None, tls_client_cert=None,
                 tls_client_key=None, tls_server_name=None, token=None):
        self.target = target
        self.chunk_bytes = chunk_bytes
        if data_timeout is _UNSET:
            data_timeout = DEFAULT_DATA_TIMEOUT if timeout is _UNSET else timeout
        if timeout is _UNSET:
            timeout = DEFAULT_TIMEOUT
        for name, value in (("timeout", timeout), ("data_timeout", data_timeout)):
            if value is not None and not value > 0:
                raise InvalidArgumentError(f"{name}: must be > 0 seconds or None, got {value}")
        self.timeout = timeout
        self.data_timeout = data_timeout
        self.streams = default_streams() if streams is None else int(streams)
        if self.streams < 1:
            raise InvalidArgumentError(f"streams: must be >= 1, got {streams}")
        self._security = Security(tls, tls_root_ca, tls_client_cert, tls_client_key,
                                  tls_server_name, token)
        self._metadata = self._security.metadata()
        self._channel = self._security.channel(target, [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self._stub = pb_grpc.OptimizerStub(self._channel)
        self._specs = {}
        self._lock = threading.Lock()
        self._native = None
        self._pool = None  # threads for a pure-path step over several streams
        lib = _native_library()
        if lib is not None and self._security.used and not lib.supports_security:
            warnings.warn(f"optd: using the pure-Python data path: {lib.path} predates the "
                          f"TLS and token options", RuntimeWarning, stacklevel=2)
            lib = None
        if lib is not None:
            self._native = _native.NativeClient(lib, target, chunk_bytes, self.streams,
                                                data_timeout, MAX_MESSAGE_BYTES, self._security)

    @property
    def data_path(self):
        """"native" when step, upload_weights and pull_weights run in the C++ client."""
        return "pure" if self._native is None else "native"

    @property
    def supports_step_parts(self):
        """Whether step() takes part_count/part_index (the native library may predate them)."""
        return self._native is None or self._native.supports_step_parts

    def close(self):
        self._channel.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        if self._native is not None:
            self._native.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, what="", data=False):
        """Unary (or client-streaming) `method` ("GetGroup") with its deadline; `what` names
        the object for the error message ("group 'g'")."""
        try:
            return getattr(self._stub, method)(
                request, timeout=self.data_timeout if data else self.timeout,
                metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.target, _call_name(method, what)) from None

    def _remember(self, info):
        specs = {t.name: TensorSpec(t.name, _NAME_OF_PROTO.get(t.dtype, "float32"), tuple(t.shape))
                 for t in info.tensors}
        with self._lock:
            self._specs[info.group] = specs
        return info

    def specs(self, group):
        """{tensor: TensorSpec} of `group` (asks the server when not yet known)."""
        with self._lock:
            s = self._specs.get(group)
        if s is None:
            self.get_group(group)
            with self._lock:
                s = self._specs[group]
        return s

    def wait_ready(self, timeout=10.0):
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise OptdError(f"server {self.target} not reachable within {timeout} s",
                            grpc.StatusCode.UNAVAILABLE, self.target) from None

    # Groups ---------------------------------------------------------------------------------
    def create_group(self, group, tensors, num_workers=1, mode="sync", sync_timeout_ms=0,
                     max_staleness=0, **hyper):
        """tensors: TensorSpec or (name, dtype, shape) tuples. hyper: lr, betas, eps, ..."""
        if mode not in _MODES:
            raise InvalidArgumentError(f"mode: {mode!r} is not 'sync' or 'async'")
        req = pb.CreateGroupRequest(group=group, num_workers=num_workers, mode=_MODES[mode],
                                    sync_timeout_ms=sync_timeout_ms, max_staleness=max_staleness,
                                    hyperparameters=hyperparameters(**hyper))
        for t in tensors:
            t = t if isinstance(t, TensorSpec) else TensorSpec(*t)
            if t.dtype not in _PROTO_DTYPE:
                raise InvalidArgumentError(f"tensors[{t.name}].dtype: unknown dtype {t.dtype!r}")
            req.tensors.add(name=t.name, dtype=_PROTO_DTYPE[t.dtype], shape=list(t.shape))
        return self._remember(self._call("CreateGroup", req, _group(group)))

    def get_group(self, group):
        return self._remember(self._call("GetGroup", pb.GetGroupRequest(group=group),
                                         _group(group)))

    def list_groups(self):
        """Every group (the server answers in pages; this follows them to the last)."""
        groups, token = [], ""
        while True:
            resp = self._call("ListGroups", pb.ListGroupsRequest(page_token=token))
            groups.extend(resp.groups)
            token = resp.next_page_token
            if not token:
                return groups

    def delete_group(self, group):
        self._call("DeleteGroup", pb.DeleteGroupRequest(group=group), _group(group))
        with self._lock:
            self._specs.pop(group, None)

    def update_hyperparameters(self, group, **hyper):
        req = pb.UpdateHyperparametersRequest(group=group, hyperparameters=hyperparameters(**hyper))
        return self._call("UpdateHyperparameters", req, _group(group))

    def upload_weights(self, group, weights):
        """weights: {tensor: array}. Returns the UploadWeightsResponse."""
        flats = {k: _flat(v, f"weights[{k}]") for k, v in weights.items()}
        for k, v in flats.items():
            dtype_name(v)
        if self._native is not None:
            written = self._native.upload_weights(group, list(flats.items()),
                                                  _call_name("UploadWeights", _group(group)))
            # The C ABI reports the element count only; whether every tensor now has weights
            # is the group's (uploads are rare: one GetGroup is cheap here).
            info = self.get_group(group)
            return pb.UploadWeightsResponse(elements_written=written,
                                            weights_initialized=info.weights_initialized)

        def requests():
            first = True
            for name, flat in flats.items():
                for chunk in tensor_chunks(name, flat, self.chunk_bytes):
                    yield pb.UploadWeightsRequest(group=group if first else "", chunk=chunk)
                    first = False
            if first:  # nothing to send: still name the group
                yield pb.UploadWeightsRequest(group=group)
        return self._call("UploadWeights", requests(), _group(group), data=True)

    # Steps ----------------------------------------------------------------------------------
    def step(self, group, step, grads, out=None, worker=0, lr=None, weights="updated",
             base_version=None, part_count=0, part_index=0, expect_last_step=None):
        """Sends one step's gradients ({tensor: array}) and writes the returned weights into
        `out` ({tensor: array}, allocated when missing). Returns (StepDone, out).

        part_count/part_index: this call is part `part_index` of a step that `part_count`
        concurrent calls make together (e.g. gradient buckets sent as backward produces them).
        Each part sends its own gradients on one stream and gets back the weights of what it
        sent; the server applies the step once every part has committed, and if one fails
        none is applied. 0 (default): this call is the whole step, spread over the client's
        `streams`.

        expect_last_step: apply only if this worker's last applied step on the server is this
        one (else FailedPreconditionError, nothing applied): how a trainer notices a server
        that came back from an older checkpoint. A retry of an applied step is still answered
        as a duplicate."""
        if weights not in _RETURNS:
            raise InvalidArgumentError(f"weights: {weights!r} is not updated, all or none")
        if part_count < 0 or (part_count > 0 and not 0 <= part_index < part_count):
            raise InvalidArgumentError(
                f"part_index: {part_index} is outside [0, part_count={part_count})")
        flats = {k: _flat(v, f"grads[{k}]") for k, v in grads.items() if v is not None}
        for k, v in flats.items():
            dtype_name(v)
        args = dict(worker=worker, lr=lr, weights=weights, base_version=base_version,
                    expect_last_step=expect_last_step)
        # A part without gradients (a bucket none of whose tensors got one) is only a begin and
        # a commit, asking for no weights; the server copies back what any part asked for.
        if self._native is not None:
            return self._step_native(group, step, flats, out, part_count, part_index, **args)
        if part_count == 0 and self.streams > 1 and len(flats) > 1:
            return self._step_pure_streams(group, step, flats, out, args)
        return self._step_pure(group, step, flats, out, part_count, part_index, **args)

    def _step_native(self, group, step, flats, out, part_count, part_index, worker, lr,
                     weights, base_version, expect_last_step):
        out = {} if out is None else out
        if weights == "none":
            names = []
        elif weights == "all" and part_index == 0:
            names = list(self.specs(group))
        else:
            names = list(flats)
        outs, allocated = [], {}
        for name in names:
            arr = out.get(name)
            if arr is None:
                spec = self.specs(group).get(name)
                if spec is None:
                    continue  # not a tensor of the group: the server names it in its error
                arr = np.zeros(spec.shape, numpy_dtype(spec.dtype))
                allocated[name] = arr
            outs.append((name, _flat(arr, f"out[{name}]")))
        r = self._native.step(group, step, list(flats.items()), outs, worker=worker, lr=lr,
                              weights=weights, base_version=base_version,
                              part_count=part_count, part_index=part_index,
                              expect_last_step=expect_last_step,
                              call=_call_name("Step", _step_of(group, step)))
        if not r.duplicate:  # a duplicate returns no weights (like the pure path's out)
            out.update(allocated)
        return pb.StepDone(step=r.step, version=r.version, duplicate=bool(r.duplicate),
                           nonfinite_gradient_elements=r.nonfinite_gradient_elements), out

    def _step_pure(self, group, step, flats, out, part_count, part_index, worker, lr, weights,
                   base_version, expect_last_step):
        """Gradient chunks are produced lazily while the server's weight chunks are received
        on gRPC's own thread, so the upload of tensor i+1 overlaps the download of tensor i."""
        begin = _step_begin(group, step, worker, lr, weights, base_version, expect_last_step)
        if not part_count:
            begin.attempt = _attempt_id()
        if part_count > 0:
            begin.streams = part_count
            begin.stream_index = part_index

        def requests():
            yield pb.StepRequest(begin=begin)
            for name, flat in flats.items():
                for chunk in tensor_chunks(name, flat, self.chunk_bytes):
                    yield pb.StepRequest(gradient=chunk)
            yield pb.StepRequest(commit=pb.StepCommit())

        asm = _Assembler(out, self._specs.get(group))
        done = None
        try:
            for resp in self._stub.Step(requests(), timeout=self.data_timeout,
                                        metadata=self._metadata):
                if resp.HasField("weights"):
                    asm.write(resp.weights)
                elif resp.HasField("done"):
                    done = resp.done
                    break
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.target,
                                 _call_name("Step", _step_of(group, step))) from None
        if done is None:
            raise OptdError(f"step {step} of group {group}: stream ended without StepDone",
                            grpc.StatusCode.INTERNAL, self.target)
        return done, asm.out

    def _step_pure_streams(self, group, step, flats, out, args):
        """A whole step over `streams` concurrent Step streams: whole tensors, balanced by
        bytes (largest first onto the lightest stream)."""
        k = min(self.streams, len(flats))
        parts, loads = [dict() for _ in range(k)], [0] * k
        for name, flat in sorted(flats.items(), key=lambda kv: -kv[1].nbytes):
            i = loads.index(min(loads))
            parts[i][name] = flat
            loads[i] += flat.nbytes
        out = {} if out is None else out
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.streams - 1))
        futures = [self._pool.submit(self._step_pure, group, step, parts[i], out, k, i, **args)
                   for i in range(1, k)]
        results, first_error = [], None
        try:
            results.append(self._step_pure(group, step, parts[0], out, k, 0, **args)[0])
        except OptdError as e:
            first_error = e
        for f in futures:
            try:
                results.append(f.result()[0])
            except OptdError as e:
                first_error = first_error or e
        if first_error is not None:
            raise first_error
        return merge_step_parts(results, self.target), out

    # Colocated data path (optd.colocated, docs/colocated.md) ---------------------------------
    def open_shm_region(self, group, nbytes):
        """Leases a shared-memory region of `nbytes` bytes for the steps of `group` from a
        server on this host: an optd.colocated.SharedMemoryRegion. FailedPreconditionError with
        the reason when this process cannot map it (use step() then)."""
        if self._native is not None and self._native.supports_regions:
            return self._native.open_shm_region(group, nbytes)
        return colocated.open_pure(self._stub, self._metadata, self.target, group, nbytes)

    def open_cuda_ipc_region(self, group, buffers):
        """Leases a CUDA IPC region for the steps of `group` from a CUDA server on this host:
        `buffers` are (handle, offset, bytes, device) of this process's device memory (handle:
        the 64 bytes of its cudaIpcMemHandle_t, e.g. from torch's storage _share_cuda_()). An
        optd.colocated.CudaIpcRegion; FailedPreconditionError when the server cannot open them."""
        return colocated.open_cuda_ipc_pure(self._stub, self._metadata, self.target, group,
                                            buffers)

    def step_region(self, group, step, region, ranges, worker=0, lr=None, weights="updated",
                    base_version=None, expect_last_step=None):
        """One step whose gradients are `ranges` (optd.colocated.RegionRange) of `region`,
        written there before the call. With weights "updated" each range's new weights are in
        the region when this returns; "none" writes nothing ("all" is refused by the server).
        Returns the StepDone."""
        if weights not in _RETURNS:
            raise InvalidArgumentError(f"weights: {weights!r} is not updated, all or none")
        call = _call_name("Step", f"step {step} of group {group!r} over region {region.id}")
        if self._native is not None and getattr(region, "native", False):
            r = self._native.step_region(group, step, region, ranges, worker=worker, lr=lr,
                                         weights=weights, base_version=base_version,
                                         expect_last_step=expect_last_step, call=call)
            return pb.StepDone(step=r.step, version=r.version, duplicate=bool(r.duplicate),
                               nonfinite_gradient_elements=r.nonfinite_gradient_elements)
        begin = _step_begin(group, step, worker, lr, weights, base_version, expect_last_step)
        begin.attempt = _attempt_id()
        return colocated.step_pure(self._stub, self._metadata, self.data_timeout, self.target,
                                   group, step, region, ranges, begin, call)

    def pull_weights(self, group, tensors=None, out=None):
        """Returns (version, {tensor: array}) of the current weights."""
        if self._native is not None:
            out = {} if out is None else out
            specs = self.specs(group)
            names = list(tensors) if tensors else list(specs)
            outs = []
            for name in names:
                arr = out.get(name)
                if arr is None:
                    spec = specs.get(name)
                    if spec is None:
                        raise InvalidArgumentError(
                            f"tensors: {name!r} is not a tensor of group {group!r}")
                    arr = out[name] = np.zeros(spec.shape, numpy_dtype(spec.dtype))
                outs.append((name, _flat(arr, f"out[{name}]")))
            return self._native.pull_weights(group, outs,
                                             _call_name("PullWeights", _group(group))), out
        req = pb.PullWeightsRequest(group=group, tensors=list(tensors or []))
        asm = _Assembler(out, self._specs.get(group))
        version = -1
        try:
            for msg in self._stub.PullWeights(req, timeout=self.data_timeout,
                                              metadata=self._metadata):
                if msg.HasField("chunk"):
                    asm.write(msg.chunk)
                version = msg.version
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.target, _call_name("PullWeights", _group(group))) \
                from None
        return version, asm.out

    def subscribe(self, group, send_current=True):
        call = self._stub.Subscribe(pb.SubscribeRequest(group=group, send_current=send_current),
                                    metadata=self._metadata)
        return Subscription(call, self._specs.get(group), self.target)

    # Checkpoints and state ------------------------------------------------------------------
    def save_checkpoint(self, name, groups=None):
        return self._call("SaveCheckpoint",
                          pb.SaveCheckpointRequest(name=name, groups=list(groups or [])),
                          f"checkpoint {name!r}", data=True)

    def restore_checkpoint(self, name, groups=None):
        resp = self._call("RestoreCheckpoint",
                          pb.RestoreCheckpointRequest(name=name, groups=list(groups or [])),
                          f"checkpoint {name!r}", data=True)
        for info in resp.groups:
            self._remember(info)
        return resp

    def export_state(self, group, tensors=None):
        """{tensor: {key: array, 'step': int}} in the reference's state_dict layout."""
        req = pb.ExportStateRequest(group=group, tensors=list(tensors or []))
        out = {}
        try:
            for c in self._stub.ExportState(req, timeout=self.data_timeout,
                                            metadata=self._metadata):
                per = out.setdefault(c.tensor, {})
                np_type = _STATE_NUMPY.get(c.type)
                if np_type is None:
                    raise OptdError(f"state {c.tensor}/{c.key}: unknown element type {c.type}")
                numel = int(np.prod(c.shape)) if len(c.shape) else 1
                arr = per.get(c.key)
                if arr is None:
                    arr = np.zeros(numel, np_type)
                    per[c.key] = arr
                src = np.frombuffer(c.data, np_type)
                arr.reshape(-1)[c.offset:c.offset + src.size] = src
                per[c.key] = arr
                per.setdefault("__shape__", {})[c.key] = tuple(c.shape)
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.target, _call_name("ExportState", _group(group))) \
                from None
        for per in out.values():
            shapes = per.pop("__shape__")
            for key, shape in shapes.items():
                if key == "step":
                    per[key] = int(per[key].reshape(-1)[0])
                else:
                    per[key] = per[key].reshape(shape)
        return out

    def import_state(self, group, states):
        """states: {tensor: {key: array or int}} as export_state returns."""
        msgs = []
        for tensor, per in states.items():
            for key, value in per.items():
                if key == "step":
                    arr = np.asarray([int(value)], np.int64)
                    shape = []
                else:
                    arr = np.ascontiguousarray(value)
                    shape = list(arr.shape)
                    if arr.dtype not in _STATE_TYPE:
                        raise InvalidArgumentError(
                            f"state[{tensor}][{key}]: dtype {arr.dtype} is not uint8, float32 "
                            f"or int64")
                flat = arr.reshape(-1)
                per_msg = max(1, self.chunk_bytes // flat.itemsize)
                for off in range(0, max(flat.size, 1), per_msg):
                    msgs.append(pb.StateChunk(tensor=tensor, key=key,
                                              type=_STATE_TYPE[flat.dtype], shape=shape,
                                              offset=off, data=flat[off:off + per_msg].tobytes()))
        if msgs:
            msgs[0].group = group
        else:
            msgs.append(pb.StateChunk(group=group))
        return self._call("ImportState", iter(msgs), _group(group), data=True)
