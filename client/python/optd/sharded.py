"""One logical parameter group spread over several optd servers.

Each tensor is placed on a server by rendezvous hashing of "group/tensor" (optd.sharding);
every server holds a sub-group of the same name with its share of the tensors. Steps run on
all shards in parallel; a failure is raised as ShardError naming the shard's address.
Thread safety: one ShardedGroup is used by one thread at a time."""

from concurrent.futures import ThreadPoolExecutor

from optd import sharding
from optd.client import Client, TensorSpec
from optd.errors import AlreadyExistsError, OptdError, shard_error


class ShardedGroup:
    def __init__(self, targets, group, tensors, clients=None):
        if isinstance(targets, str):
            targets = [targets]
        self.targets = list(targets)
        if not self.targets:
            raise ValueError("target: no server address given")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"target: duplicate server address in {self.targets}")
        self.group = group
        self.tensors = [t if isinstance(t, TensorSpec) else TensorSpec(*t) for t in tensors]
        self.clients = clients or [Client(t) for t in self.targets]
        self.placement = {t.name: sharding.place(f"{group}/{t.name}", self.targets)
                          for t in self.tensors}
        self._pool = ThreadPoolExecutor(max_workers=len(self.targets))

    def shard_of(self, tensor):
        return self.targets[self.placement[tensor]]

    def _tensors_on(self, shard):
        return [t for t in self.tensors if self.placement[t.name] == shard]

    def _run(self, fn, shards=None):
        """Runs fn(shard_index) on the given shards in parallel; raises the first failure as a
        ShardError (in shard order, so the report is deterministic)."""
        shards = range(len(self.targets)) if shards is None else shards
        futures = [(i, self._pool.submit(fn, i)) for i in shards]
        results, first_error = {}, None
        for i, f in futures:
            try:
                results[i] = f.result()
            except OptdError as e:
                if first_error is None:
                    first_error = shard_error(self.targets[i], e)
        if first_error is not None:
            raise first_error
        return results

    def used_shards(self):
        return sorted(set(self.placement.values()))

    def create(self, exist_ok=False, **kw):
        """Creates the sub-groups. exist_ok: a shard that already has the group (created by
        another worker of a multi-worker group) is fine."""
        def one(i):
            try:
                return self.clients[i].create_group(self.group, self._tensors_on(i), **kw)
            except AlreadyExistsError:
                if not exist_ok:
                    raise
                return self.clients[i].get_group(self.group)
        return self._run(one, self.used_shards())

    def upload(self, weights):
        def one(i):
            mine = {k: v for k, v in weights.items() if self.placement[k] == i}
            return self.clients[i].upload_weights(self.group, mine) if mine else None
        return self._run(one, self.used_shards())

    def step(self, step, grads, out=None, **kw):
        """Like Client.step over all shards; returns {shard_index: StepDone}. Shards holding
        no tensor with a gradient are not contacted."""
        out = {} if out is None else out
        per = {}
        for k, v in grads.items():
            if v is not None:
                per.setdefault(self.placement[k], {})[k] = v

        def one(i):
            mine_out = {k: v for k, v in out.items() if self.placement.get(k) == i}
            done, got = self.clients[i].step(self.group, step, per[i], out=mine_out, **kw)
            return done, got
        results = self._run(one, sorted(per))
        for _, got in results.values():
            for k, v in got.items():
                out.setdefault(k, v)
        return {i: done for i, (done, _) in results.items()}, out

    def pull(self, tensors=None):
        out = {}

        def one(i):
            names = [t.name for t in self._tensors_on(i)
                     if tensors is None or t.name in tensors]
            return self.clients[i].pull_weights(self.group, names)[1] if names else {}
        for got in self._run(one, self.used_shards()).values():
            out.update(got)
        return out

    def update_hyperparameters(self, **hyper):
        return self._run(lambda i: self.clients[i].update_hyperparameters(self.group, **hyper),
                         self.used_shards())

    def get_group(self):
        return self._run(lambda i: self.clients[i].get_group(self.group), self.used_shards())

    def export_state(self):
        out = {}
        for got in self._run(lambda i: self.clients[i].export_state(self.group),
                             self.used_shards()).values():
            out.update(got)
        return out

    def import_state(self, states):
        def one(i):
            mine = {k: v for k, v in states.items() if self.placement.get(k) == i}
            return self.clients[i].import_state(self.group, mine) if mine else None
        return self._run(one, self.used_shards())

    def delete(self):
        return self._run(lambda i: self.clients[i].delete_group(self.group), self.used_shards())

    def close(self):
        self._pool.shutdown(wait=False)
        for c in self.clients:
            c.close()
