"""Probes of what the optd server under test supports, for tests of features that land on the
server and the clients at different times. Each probe runs real steps on a scratch group.

- step parts: a step spread over several concurrent Step streams (StepBegin.streams /
  stream_index, issue 8). A server without them applies each part as a whole step and
  answers the others as duplicates.
- step gaps: a single-worker group accepts any step number above the worker's last one (a
  shard that got no gradient in some steps keeps the global step numbers). A server without
  them requires step == last + 1."""

import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import optd

N = 256


def _scratch(client, tensors):
    name = f"probe-{uuid.uuid4().hex[:8]}"
    client.create_group(name, [(t, "float32", (N,)) for t in tensors])
    client.upload_weights(name, {t: np.zeros(N, np.float32) for t in tensors})
    return name


def supports_step_parts(target):
    c = optd.Client(target)
    try:
        g = _scratch(c, ["a", "b"])
        ones = np.ones(N, np.float32)
        with ThreadPoolExecutor(2) as pool:
            parts = [pool.submit(c.step, g, 1, {t: ones}, part_count=2, part_index=k)
                     for k, t in enumerate(["a", "b"])]
            dones = [f.result()[0] for f in parts]
        c.delete_group(g)
        return not any(d.duplicate for d in dones)
    finally:
        c.close()


def supports_step_gaps(target):
    c = optd.Client(target)
    try:
        g = _scratch(c, ["a"])
        c.step(g, 1, {"a": np.ones(N, np.float32)})
        try:
            c.step(g, 3, {"a": np.ones(N, np.float32)})
        except optd.FailedPreconditionError:
            return False
        finally:
            c.delete_group(g)
        return True
    finally:
        c.close()
