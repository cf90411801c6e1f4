"""optd.torch.PagedAdamW8bit: bitsandbytes' PagedAdamW8bit with the update done by optd servers.

Same signature, defaults and constructor errors as bitsandbytes.optim.PagedAdamW8bit, plus
`target` (an address "host:port" or a list of them: tensors are then sharded over the servers).
Each torch param_group becomes one server group holding its parameters; step() streams every
parameter's .grad and writes the new weights back into the parameter in place.
"""

import os
import uuid

import numpy as np
import torch

from optd.client import TensorSpec
from optd.sharded import ShardedGroup

_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_QUANT_STATE_KEY = "__bnb_optimizer_quant_state__"
_STATE_KEYS = ("state1", "state2", "qmap1", "qmap2", "absmax1", "absmax2", "gnorm_vec")


def _numpy_view(t):
    """A numpy array sharing memory with CPU tensor `t` (bf16 as uint16 bits)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


class PagedAdamW8bit(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, optim_bits=32, args=None, min_8bit_size=4096,
                 percentile_clipping=100, block_wise=True, *, target=None, group=None,
                 num_workers=1, worker=0, mode="sync", sync_timeout_ms=0):
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
        self.group_name = group or f"torch-{uuid.uuid4().hex[:12]}"
        self.num_workers, self.worker, self.mode = num_workers, worker, mode
        self.sync_timeout_ms = sync_timeout_ms
        self._shards = {}     # param_group index -> ShardedGroup
        self._sent_hyper = {}  # param_group index -> hyperparameters the server has
        self._steps = {}      # param_group index -> steps sent by this worker
        self._pending_state = {}  # param -> state dict to import once the group exists

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
        sg = ShardedGroup(self.targets, self.server_group(gi), specs)
        hyper = self._hyper(g)
        sg.create(exist_ok=self.num_workers > 1, num_workers=self.num_workers, mode=self.mode,
                  sync_timeout_ms=self.sync_timeout_ms, **hyper)
        if self.worker == 0:
            sg.upload({self._tensor_name(i): _numpy_view(p.detach().cpu().contiguous())
                       for i, p in enumerate(g["params"])})
        self._shards[gi] = sg
        self._sent_hyper[gi] = hyper
        self._steps.setdefault(gi, 0)
        pending = {self._tensor_name(i): self._pending_state.pop(p)
                   for i, p in enumerate(g["params"]) if p in self._pending_state}
        if pending:
            sg.import_state(pending)
        return sg

    def _sync_hyper(self, gi, sg):
        want = self._hyper(self.param_groups[gi])
        have = self._sent_hyper[gi]
        # lr too: the step carries it anyway, but GetGroup and checkpoints then show what the
        # scheduler set (one extra RPC only on steps where a value changed).
        changed = {k: v for k, v in want.items() if v != have.get(k)}
        if changed:
            sg.update_hyperparameters(**changed)
            have.update(changed)

    # torch.optim.Optimizer ---------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, g in enumerate(self.param_groups):
            grads, outs, copies = {}, {}, []
            for i, p in enumerate(g["params"]):
                if p.grad is None:
                    continue
                name = self._tensor_name(i)
                grad = p.grad.detach()
                if grad.is_sparse:
                    raise RuntimeError("PagedAdamW8bit does not support sparse gradients")
                grads[name] = _numpy_view(grad.to("cpu").contiguous())
                if p.device.type == "cpu" and p.is_contiguous():
                    outs[name] = _numpy_view(p.data)  # weights land in the parameter itself
                else:
                    host = torch.empty(p.shape, dtype=p.dtype, device="cpu",
                                       pin_memory=p.device.type == "cuda")
                    outs[name] = _numpy_view(host)
                    copies.append((p, host))
            if not grads:
                continue
            sg = self._ensure_group(gi)
            self._sync_hyper(gi, sg)
            self._steps[gi] += 1
            sg.step(self._steps[gi], grads, out=outs, worker=self.worker, lr=float(g["lr"]))
            for p, host in copies:
                p.data.copy_(host, non_blocking=False)
            for i, p in enumerate(g["params"]):
                if p.grad is not None:
                    self.state[p]["step"] = self.state[p].get("step", 0) + 1
        return loss

    def close(self):
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
