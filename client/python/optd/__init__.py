"""optd: clients of the optd optimizer service (bitsandbytes PagedAdamW8bit on a server).

optd.Client (numpy, one server), optd.ShardedGroup (several servers), optd.reference (a numpy
implementation of the same update), optd.torch.PagedAdamW8bit (a drop-in torch optimizer;
imported on demand so torch stays optional)."""

from optd.client import Client, Subscription, TensorSpec, data_path
from optd.errors import (AlreadyExistsError, FailedPreconditionError, InvalidArgumentError,
                         NotFoundError, OptdError, ShardError, UnavailableError)
from optd.sharded import ShardedGroup

__version__ = "0.1.0"
__all__ = ["Client", "Subscription", "TensorSpec", "ShardedGroup", "data_path", "OptdError",
           "InvalidArgumentError", "NotFoundError", "AlreadyExistsError",
           "FailedPreconditionError", "UnavailableError", "ShardError"]
