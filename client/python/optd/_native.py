"""ctypes binding of liboptd_client_c, the C ABI over the C++ client's data path
(client/c_api/optd_client_c.h): step, upload_weights and pull_weights.

Note [Why ctypes over a C ABI]
One shared library serves every Python (Debian 12's 3.11, the GPU hosts' 3.12, ...): ctypes
loads it without an extension module built per interpreter ABI, and a ctypes.CDLL call
releases the GIL for its whole duration, so gradients and weights move while other Python
threads (a training loop's backward, other step parts) run. Buffers are passed as raw
pointers into numpy arrays and CPU torch tensors (pinned or not): nothing is copied on the
Python side.

The library is looked up at $OPTD_NATIVE_LIB, else optd/_lib/liboptd_client_c.so inside the
package (where `pip install ./client/python` puts it). load() never raises: it returns None
and records why (load_error()).

Thread safety: load() is safe from any thread; a NativeClient may be used from several threads
at once (the C ABI's contract); close() must not race with calls in flight."""

import ctypes
import os
import threading

import numpy as np

from optd.errors import InvalidArgumentError, from_status_number

ABI_VERSION = 1
LIBRARY_NAME = "liboptd_client_c.so"

DTYPE_FLOAT32 = 1
DTYPE_FLOAT16 = 2
DTYPE_BFLOAT16 = 3
WEIGHTS = {"updated": 1, "all": 2, "none": 3}
DTYPES = {"float32": DTYPE_FLOAT32, "float16": DTYPE_FLOAT16, "bfloat16": DTYPE_BFLOAT16}

_NUMPY_DTYPES = {np.dtype(np.float32): DTYPE_FLOAT32, np.dtype(np.float16): DTYPE_FLOAT16,
                 np.dtype(np.uint16): DTYPE_BFLOAT16}
_TORCH_DTYPES = {"torch.float32": DTYPE_FLOAT32, "torch.float16": DTYPE_FLOAT16,
                 "torch.bfloat16": DTYPE_BFLOAT16}


class ClientOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32),
                ("chunk_bytes", ctypes.c_int64),
                ("streams", ctypes.c_int32),
                ("timeout_ms", ctypes.c_int64),
                ("max_message_bytes", ctypes.c_int32),
                # Security fields (libraries that report a smaller optd_client_options_size()
                # ignore them: Library.supports_security).
                ("tls", ctypes.c_int32),
                ("tls_root_ca", ctypes.c_char_p),
                ("tls_client_cert", ctypes.c_char_p),
                ("tls_client_key", ctypes.c_char_p),
                ("tls_server_name", ctypes.c_char_p),
                ("token", ctypes.c_char_p)]


class Buffer(ctypes.Structure):
    _fields_ = [("tensor", ctypes.c_char_p),
                ("dtype", ctypes.c_int32),
                ("data", ctypes.c_void_p),
                ("numel", ctypes.c_int64)]


class StepOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32),
                ("worker", ctypes.c_int32),
                ("has_lr", ctypes.c_int32),
                ("lr", ctypes.c_float),
                ("weights", ctypes.c_int32),
                ("has_base_version", ctypes.c_int32),
                ("base_version", ctypes.c_int64),
                ("streams", ctypes.c_int32),
                ("part_count", ctypes.c_int32),
                ("part_index", ctypes.c_int32),
                # Libraries before this field ignore it (their struct ends at part_index).
                ("has_expect_last_step", ctypes.c_int32),
                ("expect_last_step", ctypes.c_int64)]


class StepResult(ctypes.Structure):
    _fields_ = [("step", ctypes.c_int64),
                ("version", ctypes.c_int64),
                ("duplicate", ctypes.c_int32),
                ("nonfinite_gradient_elements", ctypes.c_int64),
                ("weight_elements_received", ctypes.c_int64)]


def _declare(lib):
    """Sets argument and result types (wrong ones would truncate pointers and int64s)."""
    P = ctypes.POINTER
    client_p = ctypes.c_void_p
    lib.optd_abi_version.argtypes = []
    lib.optd_abi_version.restype = ctypes.c_int
    lib.optd_last_error.argtypes = []
    lib.optd_last_error.restype = ctypes.c_char_p
    if hasattr(lib, "optd_client_options_size"):  # absent before the security fields
        lib.optd_client_options_size.argtypes = []
        lib.optd_client_options_size.restype = ctypes.c_uint32
    lib.optd_client_create.argtypes = [ctypes.c_char_p, P(ClientOptions), P(client_p)]
    lib.optd_client_create.restype = ctypes.c_int
    lib.optd_client_destroy.argtypes = [client_p]
    lib.optd_client_destroy.restype = None
    lib.optd_client_step.argtypes = [client_p, ctypes.c_char_p, ctypes.c_int64, P(Buffer),
                                     ctypes.c_int64, P(Buffer), ctypes.c_int64, P(StepOptions),
                                     P(StepResult)]
    lib.optd_client_step.restype = ctypes.c_int
    lib.optd_client_upload_weights.argtypes = [client_p, ctypes.c_char_p, P(Buffer),
                                               ctypes.c_int64, P(ctypes.c_int64)]
    lib.optd_client_upload_weights.restype = ctypes.c_int
    lib.optd_client_pull_weights.argtypes = [client_p, ctypes.c_char_p, P(Buffer),
                                             ctypes.c_int64, P(ctypes.c_int64)]
    lib.optd_client_pull_weights.restype = ctypes.c_int


class RegionRange(ctypes.Structure):
    _fields_ = [("tensor", ctypes.c_char_p), ("offset", ctypes.c_int64),
                ("count", ctypes.c_int64), ("dtype", ctypes.c_int32), ("buffer", ctypes.c_int32),
                ("buffer_offset", ctypes.c_int64), ("has_weights", ctypes.c_int32),
                ("weights_buffer", ctypes.c_int32), ("weights_buffer_offset", ctypes.c_int64)]


def _declare_regions(lib):
    """The colocated calls, where the library has them (False otherwise)."""
    if not hasattr(lib, "optd_region_open_shm"):
        return False
    P = ctypes.POINTER
    lib.optd_region_open_shm.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64,
                                         P(ctypes.c_void_p), P(ctypes.c_void_p),
                                         P(ctypes.c_int64)]
    lib.optd_region_open_shm.restype = ctypes.c_int
    lib.optd_region_destroy.argtypes = [ctypes.c_void_p]
    lib.optd_region_destroy.restype = None
    lib.optd_region_id.argtypes = [ctypes.c_void_p]
    lib.optd_region_id.restype = ctypes.c_char_p
    lib.optd_client_step_region.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64,
                                            ctypes.c_void_p, P(RegionRange), ctypes.c_int64,
                                            P(StepOptions), P(StepResult)]
    lib.optd_client_step_region.restype = ctypes.c_int
    return True


class Library:
    """The loaded liboptd_client_c. `path` is where it was found."""

    def __init__(self, cdll, path):
        self.cdll = cdll
        self.path = path
        self.supports_step_parts = True
        self.supports_regions = _declare_regions(cdll)
        # The library reads ClientOptions' tls and token fields.
        self.supports_security = (hasattr(cdll, "optd_client_options_size") and
                                  cdll.optd_client_options_size() >= ctypes.sizeof(ClientOptions))

    def last_error(self):
        msg = self.cdll.optd_last_error()
        return msg.decode("utf-8", errors="replace") if msg else ""


_lock = threading.Lock()
_loaded = None   # Library once loaded
_error = None    # why it did not load (str), once tried
_tried = False


def library_path():
    """Where the library is looked for: $OPTD_NATIVE_LIB, else inside the package."""
    env = os.environ.get("OPTD_NATIVE_LIB")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lib", LIBRARY_NAME)


def _load():
    path = library_path()
    if not os.path.exists(path):
        where = "$OPTD_NATIVE_LIB" if os.environ.get("OPTD_NATIVE_LIB") else "the package"
        return None, (f"{path} not found (in {where}; `pip install ./client/python` builds it "
                      f"where cmake and the C++ dependencies are present)")
    try:
        cdll = ctypes.CDLL(path)
        _declare(cdll)
    except (OSError, AttributeError) as e:
        return None, f"{path} failed to load: {e}"
    version = cdll.optd_abi_version()
    if version != ABI_VERSION:
        return None, f"{path} has C ABI version {version}, this package needs {ABI_VERSION}"
    return Library(cdll, path), None


def load():
    """The library, or None when it is not there, does not load, or OPTD_PURE_PYTHON=1
    (load_error() says which). Tried once per process."""
    global _loaded, _error, _tried
    with _lock:
        if not _tried:
            if os.environ.get("OPTD_PURE_PYTHON", "") not in ("", "0"):
                _loaded, _error = None, "OPTD_PURE_PYTHON is set"
            else:
                _loaded, _error = _load()
            _tried = True
        return _loaded


def load_error():
    """Why load() returned None ("" when it did not, or was not tried yet)."""
    with _lock:
        return _error or ""


def _pointer_of(value, what, writable):
    """(optd dtype, address, numel) of a flat, C-contiguous host buffer: a numpy array (uint16
    holds bf16 bits) or a CPU torch tensor. No copy."""
    if hasattr(value, "data_ptr") and hasattr(value, "is_contiguous"):  # a torch tensor
        if value.device.type != "cpu":
            raise InvalidArgumentError(f"{what}: tensor is on {value.device}, not the CPU")
        if not value.is_contiguous():
            raise InvalidArgumentError(f"{what}: tensor must be contiguous")
        dtype = _TORCH_DTYPES.get(str(value.dtype))
        if dtype is None:
            raise InvalidArgumentError(
                f"{what}: tensor dtype {value.dtype} is not float32, float16 or bfloat16")
        return dtype, value.data_ptr(), value.numel()
    a = value if isinstance(value, np.ndarray) else np.asarray(value)
    if not a.flags.c_contiguous:
        raise InvalidArgumentError(f"{what}: array must be C-contiguous")
    if writable and not a.flags.writeable:
        raise InvalidArgumentError(f"{what}: array is read-only")
    dtype = _NUMPY_DTYPES.get(a.dtype)
    if dtype is None:
        raise InvalidArgumentError(
            f"{what}: numpy dtype {a.dtype} is not float32, float16 or uint16 (bf16 bits)")
    return dtype, a.ctypes.data, a.size


def _buffers(items, what, writable):
    """A ctypes array of Buffer over [(name, array)], and the name bytes it points into (the
    caller keeps both alive for the call)."""
    arr = (Buffer * max(1, len(items)))()
    names = []
    for k, (name, value) in enumerate(items):
        dtype, address, numel = _pointer_of(value, f"{what}[{name}]", writable)
        b = name.encode()
        names.append(b)
        arr[k].tensor = b
        arr[k].dtype = dtype
        arr[k].data = address
        arr[k].numel = numel
    return arr, names


class NativeClient:
    """One C++ client (optd_client) for one server address."""

    def __init__(self, lib, target, chunk_bytes=0, streams=1, timeout=None,
                 max_message_bytes=0, security=None):
        """security: an optd.client.Security (PEM bytes and token), or None."""
        self._lib = lib
        self.target = target
        opts = ClientOptions(struct_size=ctypes.sizeof(ClientOptions), chunk_bytes=chunk_bytes,
                             streams=streams,
                             timeout_ms=0 if timeout is None else max(1, int(timeout * 1000)),
                             max_message_bytes=max_message_bytes)
        if security is not None:
            # The PEM bytes are kept referenced by `opts` until optd_client_create returned.
            opts.tls = 1 if security.tls else 0
            opts.tls_root_ca = security.root_ca
            opts.tls_client_cert = security.client_cert
            opts.tls_client_key = security.client_key
            opts.tls_server_name = security.server_name.encode() if security.server_name else None
            opts.token = security.token.encode() if security.token else None
        handle = ctypes.c_void_p()
        self._check(lib.cdll.optd_client_create(target.encode(), ctypes.byref(opts),
                                                ctypes.byref(handle)))
        self._handle = handle
        self._close_lock = threading.Lock()
        self.supports_step_parts = lib.supports_step_parts
        self.supports_regions = lib.supports_regions

    def _check(self, rc, call=""):
        if rc != 0:
            raise from_status_number(rc, self._lib.last_error(), self.target, call)

    def close(self):
        with self._close_lock:
            if self._handle is not None and self._handle.value:
                self._lib.cdll.optd_client_destroy(self._handle)
            self._handle = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass

    def step(self, group, step, grads, outs, worker=0, lr=None, weights="updated",
             base_version=None, streams=0, part_count=0, part_index=0, expect_last_step=None,
             call="Step"):
        """grads, outs: [(tensor name, array)]. Returns the StepResult. `call` names the call
        in error messages."""
        g, g_names = _buffers(grads, "grads", writable=False)
        o, o_names = _buffers(outs, "out", writable=True)
        opts = StepOptions(struct_size=ctypes.sizeof(StepOptions), worker=worker,
                           has_lr=lr is not None, lr=0.0 if lr is None else lr,
                           weights=WEIGHTS[weights], has_base_version=base_version is not None,
                           base_version=0 if base_version is None else base_version,
                           streams=streams, part_count=part_count, part_index=part_index,
                           has_expect_last_step=expect_last_step is not None,
                           expect_last_step=0 if expect_last_step is None else expect_last_step)
        result = StepResult()
        self._check(self._lib.cdll.optd_client_step(
            self._handle, group.encode(), step, g, len(grads), o, len(outs), ctypes.byref(opts),
            ctypes.byref(result)), call)
        del g_names, o_names
        return result

    def upload_weights(self, group, weights, call="UploadWeights"):
        """weights: [(tensor name, array)]. Returns the number of elements written."""
        w, names = _buffers(weights, "weights", writable=False)
        written = ctypes.c_int64(0)
        self._check(self._lib.cdll.optd_client_upload_weights(
            self._handle, group.encode(), w, len(weights), ctypes.byref(written)), call)
        del names
        return written.value

    def pull_weights(self, group, outs, call="PullWeights"):
        """outs: [(tensor name, array)], written in place. Returns the version."""
        o, names = _buffers(outs, "out", writable=True)
        version = ctypes.c_int64(-1)
        self._check(self._lib.cdll.optd_client_pull_weights(
            self._handle, group.encode(), o, len(outs), ctypes.byref(version)), call)
        del names
        return version.value

    def open_shm_region(self, group, nbytes):
        """A colocated region through the C++ client: an optd.colocated.SharedMemoryRegion."""
        from optd.colocated import SharedMemoryRegion  # noqa: PLC0415 (import cycle)
        handle = ctypes.c_void_p()
        data = ctypes.c_void_p()
        size = ctypes.c_int64(0)
        self._check(self._lib.cdll.optd_region_open_shm(
            self._handle, group.encode(), nbytes, ctypes.byref(handle), ctypes.byref(data),
            ctypes.byref(size)))
        array = np.ctypeslib.as_array((ctypes.c_uint8 * size.value).from_address(data.value))
        lib = self._lib

        def close():
            lib.cdll.optd_region_destroy(handle)

        region = SharedMemoryRegion(lib.cdll.optd_region_id(handle).decode(), group, array, close)
        region.native = True
        region.handle = handle
        return region

    def step_region(self, group, step, region, ranges, worker=0, lr=None, weights="updated",
                    base_version=None, expect_last_step=None, call="Step"):
        """ranges: [optd.colocated.RegionRange]. Returns the StepResult."""
        names = [r.tensor.encode() for r in ranges]
        arr = (RegionRange * max(1, len(ranges)))()
        for i, r in enumerate(ranges):
            arr[i] = RegionRange(names[i], r.offset, r.count, DTYPES[r.dtype], 0, r.buffer_offset,
                                 r.weights_offset is not None, 0,
                                 0 if r.weights_offset is None else r.weights_offset)
        opts = StepOptions(struct_size=ctypes.sizeof(StepOptions), worker=worker,
                           has_lr=lr is not None, lr=0.0 if lr is None else lr,
                           weights=WEIGHTS[weights], has_base_version=base_version is not None,
                           base_version=0 if base_version is None else base_version,
                           has_expect_last_step=expect_last_step is not None,
                           expect_last_step=0 if expect_last_step is None else expect_last_step)
        result = StepResult()
        self._check(self._lib.cdll.optd_client_step_region(
            self._handle, group.encode(), step, region.handle, arr, len(ranges),
            ctypes.byref(opts), ctypes.byref(result)), call)
        return result
