"""Exceptions raised by the optd client: one per gRPC status family, message kept verbatim.

InvalidArgumentError is also a ValueError, NotFoundError a LookupError and
DeadlineExceededError a TimeoutError, so callers that catch the builtin families keep working.

Note [Unknown outcome]
A call that ends in DEADLINE_EXCEEDED, CANCELLED or UNAVAILABLE ended on the client's side; the
server may still have received the request and acted on it (only the answer was lost or late).
Such errors have `outcome_unknown` True, name the call, and say that the operation may have been
applied (except UNAVAILABLE because no connection could be made: the call never left); docs/limits.md lists, per call, how to find out (GetGroup's version and
weights_initialized, ListGroups, retrying a step for `duplicate`)."""

import grpc


class OptdError(RuntimeError):
    """A failed optd call. `code` is the grpc.StatusCode, `target` the server address."""

    def __init__(self, message, code=grpc.StatusCode.UNKNOWN, target=""):
        super().__init__(message)
        self.code = code
        self.target = target
        # True when the server may have applied the call anyway (Note [Unknown outcome]).
        self.outcome_unknown = code in UNKNOWN_OUTCOME_CODES


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


class DeadlineExceededError(OptdError, TimeoutError):
    """The call's deadline passed (a stopped or overloaded server, a slow network); the
    operation may have been applied (Note [Unknown outcome])."""


class StepMismatch(FailedPreconditionError):
    """The server's last applied step of this worker is not the trainer's: the server was
    restarted from an older checkpoint (or another process stepped as this worker).
    `server_step` and `trainer_step` are the two counts; optd.torch.PagedAdamW8bit.resume()
    continues from the server's."""

    def __init__(self, message, server_step, trainer_step, target="", group=""):
        super().__init__(message, grpc.StatusCode.FAILED_PRECONDITION, target)
        self.server_step = server_step
        self.trainer_step = trainer_step
        self.group = group


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
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}

# Codes after which the server may have acted on the call (Note [Unknown outcome]).
UNKNOWN_OUTCOME_CODES = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                                   grpc.StatusCode.UNAVAILABLE})
UNKNOWN_OUTCOME_NOTE = "the operation may have been applied"
# gRPC's words (1.51 .. 1.84) for a call that never left the client: no connection was made.
_NOT_CONNECTED = "failed to connect to all addresses"


_CODE_OF_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def from_status(code, details, target="", call=""):
    """The OptdError of a status (a grpc.StatusCode) and its message, as both data paths
    report it: "<message> (<CODE> from <target>)". `call` (e.g. "Step of group 'g'") is named
    in the message of the codes whose outcome is unknown, whose details (gRPC's own "Deadline
    Exceeded", "Socket closed") name nothing; those messages also say that the operation may
    have been applied."""
    cls = _BY_CODE.get(code, OptdError)
    message = f"{details} ({code.name} from {target})" if target else details
    unknown = code in UNKNOWN_OUTCOME_CODES and _NOT_CONNECTED not in details
    if code in UNKNOWN_OUTCOME_CODES and call:
        message = f"{call}: {message}"
    if unknown and UNKNOWN_OUTCOME_NOTE not in message:
        message = (f"{message}; {UNKNOWN_OUTCOME_NOTE} (the server may have acted before the "
                   f"call ended: check with GetGroup or ListGroups, or retry a step with the "
                   f"same number)")
    error = cls(message, code, target)
    error.outcome_unknown = unknown
    return error


def from_status_number(number, details, target="", call=""):
    """from_status for a numeric gRPC status code (the native library's return values)."""
    return from_status(_CODE_OF_NUMBER.get(number, grpc.StatusCode.UNKNOWN), details, target,
                       call)


def from_rpc_error(err, target="", call=""):
    """Converts a grpc.RpcError into the matching OptdError, keeping the server's message."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return from_status(code, details, target, call)
