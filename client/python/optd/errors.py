"""Exceptions raised by the optd client: one per gRPC status family, message kept verbatim.

InvalidArgumentError is also a ValueError and NotFoundError a LookupError, so callers that
catch the builtin families keep working."""

import grpc


class OptdError(RuntimeError):
    """A failed optd call. `code` is the grpc.StatusCode, `target` the server address."""

    def __init__(self, message, code=grpc.StatusCode.UNKNOWN, target=""):
        super().__init__(message)
        self.code = code
        self.target = target


class InvalidArgumentError(OptdError, ValueError):
    pass


class NotFoundError(OptdError, LookupError):
    pass


class AlreadyExistsError(OptdError):
    pass


class FailedPreconditionError(OptdError):
    pass


class UnavailableError(OptdError, ConnectionError):
    pass


class ShardError(OptdError):
    """A call on one shard of a sharded group failed; `target` names the shard. Use
    shard_error() to build one: it is also an instance of the cause's class (e.g.
    InvalidArgumentError), so callers can catch either."""

    def __init__(self, target, cause):
        code = getattr(cause, "code", grpc.StatusCode.UNKNOWN)
        OptdError.__init__(self, f"shard {target} failed: {cause}", code, target)
        self.cause = cause


_SHARD_CLASSES = {}


def shard_error(target, cause):
    base = type(cause)
    if base is ShardError or not issubclass(base, OptdError):
        return ShardError(target, cause)
    cls = _SHARD_CLASSES.get(base)
    if cls is None:
        cls = type(f"Shard{base.__name__}", (ShardError, base), {})
        _SHARD_CLASSES[base] = cls
    return cls(target, cause)


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


_CODE_OF_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def from_status(code, details, target=""):
    """The OptdError of a status (a grpc.StatusCode) and its message, as both data paths
    report it: "<message> (<CODE> from <target>)"."""
    cls = _BY_CODE.get(code, OptdError)
    return cls(f"{details} ({code.name} from {target})" if target else details, code, target)


def from_status_number(number, details, target=""):
    """from_status for a numeric gRPC status code (the native library's return values)."""
    return from_status(_CODE_OF_NUMBER.get(number, grpc.StatusCode.UNKNOWN), details, target)


def from_rpc_error(err, target=""):
    """Converts a grpc.RpcError into the matching OptdError, keeping the server's message."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return from_status(code, details, target)
