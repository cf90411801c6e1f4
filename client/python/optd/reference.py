"""A pure-numpy reference of bitsandbytes' PagedAdamW8bit update (docs/algorithm.md).

Exact fp32 arithmetic, like optd's CPU engine: it is what remote training through optd is
compared against. Slow but simple; meant for tests, demos and small models.

bf16 tensors are carried as float32 arrays whose values are exactly representable in bf16
(numpy has no bf16); `round_to_dtype` performs the rounding to bf16 on such arrays.
"""

import math

import numpy as np

from optd import quant_maps

BLOCK = 256
_F32 = np.float32
DTYPES = ("float32", "float16", "bfloat16")


def round_to_dtype(x, dtype):
    """Rounds float32 `x` to `dtype` (nearest even), returned as a float32 array
    (float16 values are returned as float16)."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x
    if dtype == "float16":
        return x.astype(np.float16)
    if dtype == "bfloat16":
        u = x.view(np.uint32).astype(np.uint64)
        rounded = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
        out = rounded.view(np.float32)
        nan = np.isnan(x)
        if nan.any():
            out = out.copy()
            out[nan] = np.nan
        return out
    raise ValueError(f"dtype: unknown dtype {dtype!r}; expected one of {DTYPES}")


def _corrections(beta1, beta2, t):
    """c1 = 1 - beta1^t and c2 = sqrt(1 - beta2^t) in fp32, as the CPU engine computes them
    (powf: the exact power rounded once to fp32; the reference's __powf differs by about 3e-5
    relative in 1 - beta2^t, inside the tolerances)."""
    p1 = _F32(math.pow(float(beta1), t))
    p2 = _F32(math.pow(float(beta2), t))
    return _F32(1) - p1, np.sqrt(_F32(1) - p2, dtype=np.float32)


def _quantize(table, x, signed):
    """The reference's code search, vectorized: a 7-step binary search from index 127, then a
    comparison with the midpoint of the bracketing pair (ties keep the searched index).
    NaN ends at code 0."""
    pivot = np.full(x.shape, 127, np.int64)
    upper_pivot = np.full(x.shape, 255, np.int64)
    lower_pivot = np.zeros(x.shape, np.int64)
    lower = np.full(x.shape, -1.0 if signed else 0.0, np.float32)
    upper = np.ones(x.shape, np.float32)
    val = table[pivot]
    i = 64
    while i > 0:
        gt = x > val
        lower_pivot = np.where(gt, pivot, lower_pivot)
        lower = np.where(gt, val, lower)
        upper_pivot = np.where(gt, upper_pivot, pivot)
        upper = np.where(gt, upper, val)
        pivot = np.where(gt, pivot + i, pivot - i)
        val = table[pivot]
        i >>= 1
    gt = x > val
    mid_up = (upper + val) * _F32(0.5)
    mid_lo = (lower + val) * _F32(0.5)
    return np.where(gt, np.where(x > mid_up, upper_pivot, pivot),
                    np.where(x < mid_lo, lower_pivot, pivot))


class TensorState:
    """One tensor's state in the reference's state_dict layout."""

    def __init__(self, numel, eight_bit, clipping):
        self.numel = numel
        self.eight_bit = eight_bit
        self.step = 0
        if eight_bit:
            nb = (numel + BLOCK - 1) // BLOCK
            self.state1 = np.zeros(numel, np.uint8)
            self.state2 = np.zeros(numel, np.uint8)
            self.absmax1 = np.zeros(nb, np.float32)
            self.absmax2 = np.zeros(nb, np.float32)
        else:
            self.state1 = np.zeros(numel, np.float32)
            self.state2 = np.zeros(numel, np.float32)
            self.absmax1 = self.absmax2 = None
        self.gnorm_vec = np.zeros(100, np.float32) if clipping else None

    def as_dict(self, shape):
        d = {"step": self.step,
             "state1": self.state1.reshape(shape).copy(),
             "state2": self.state2.reshape(shape).copy()}
        if self.eight_bit:
            d.update(qmap1=quant_maps.SIGNED.copy(), qmap2=quant_maps.UNSIGNED.copy(),
                     absmax1=self.absmax1.copy(), absmax2=self.absmax2.copy())
        if self.gnorm_vec is not None:
            d["gnorm_vec"] = self.gnorm_vec.copy()
        return d


class Hyper:
    """Hyperparameters, validated with the server's rules (errors name the field)."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 min_8bit_size=4096, percentile_clipping=100):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        for i, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"beta{i + 1} must be in [0, 1), got {b}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not 1 <= percentile_clipping <= 100:
            raise ValueError(f"percentile_clipping must be in [1, 100], got {percentile_clipping}")
        self.lr, self.beta1, self.beta2 = _F32(lr), _F32(betas[0]), _F32(betas[1])
        self.eps, self.weight_decay = _F32(eps), _F32(weight_decay)
        self.min_8bit_size = int(min_8bit_size)
        self.percentile_clipping = int(percentile_clipping)


def _gnorm_scale(g, state, t, k):
    s = _F32(np.sum(np.square(g.astype(np.float64))))
    if t == 1:
        state.gnorm_vec[:] = s
    else:
        state.gnorm_vec[t % 100] = s
    current = np.sqrt(state.gnorm_vec[t % 100])
    clip = np.sqrt(np.sort(state.gnorm_vec)[k])
    return _F32(clip / current) if current > clip else _F32(1.0)


def step_tensor(param, grad, state, hp, dtype, lr=None):
    """Applies one update to flat `param` (float32 carrier, or float16) in place.

    `grad` may have any float dtype (widened to fp32). `state` is advanced."""
    lr = hp.lr if lr is None else _F32(lr)
    b1, b2, eps, wd = hp.beta1, hp.beta2, hp.eps, hp.weight_decay
    state.step += 1
    t = state.step
    c1, c2 = _corrections(b1, b2, t)
    step_size = (-lr * c2) / c1
    eps_term = c2 * eps
    decay = _F32(1) - lr * wd
    g = np.asarray(grad, dtype=np.float32).reshape(-1)
    p = param.reshape(-1)
    p32 = p.astype(np.float32)
    scale = _F32(1)
    if state.gnorm_vec is not None and hp.percentile_clipping < 100:
        scale = _gnorm_scale(g, state, t, hp.percentile_clipping)

    if not state.eight_bit:
        g = g * scale
        m = state.state1 * b1 + (_F32(1) - b1) * g
        v = state.state2 * b2 + (_F32(1) - b2) * (g * g)
        state.state1[:] = m
        state.state2[:] = v
        new = round_to_dtype(p32 + step_size * (m / (np.sqrt(v) + eps_term)), dtype)
        if wd > 0:
            new = round_to_dtype(new.astype(np.float32) * decay, dtype)
        p[:] = new
        return

    n = state.numel
    nb = state.absmax1.shape[0]
    q1, q2 = quant_maps.SIGNED, quant_maps.UNSIGNED
    blk = np.arange(n) // BLOCK
    finite = np.isfinite(g)
    g = np.where(finite, g, _F32(0)) * scale
    m = q1[state.state1] * state.absmax1[blk] * b1 + (_F32(1) - b1) * g
    v = q2[state.state2] * state.absmax2[blk] * b2 + ((_F32(1) - b2) * g) * g
    m = np.where(finite, m, _F32(0)).astype(np.float32)
    v = np.where(finite, v, _F32(0)).astype(np.float32)

    pad = nb * BLOCK - n
    am = np.abs(m)
    if pad:
        # The reference fills the missing lanes of the last block with code1 = 128, g = 0.
        filler = q1[128] * state.absmax1[nb - 1] * b1
        am = np.concatenate([am, np.full(pad, filler, np.float32)])
        vv = np.concatenate([v, np.zeros(pad, np.float32)])
    else:
        vv = v
    a1 = am.reshape(nb, BLOCK).max(axis=1)
    a2 = vv.reshape(nb, BLOCK).max(axis=1)

    upd = p32 + step_size * (m / (np.sqrt(v) + eps_term))
    new = round_to_dtype(upd, dtype)
    if wd > 0:
        new = round_to_dtype(new.astype(np.float32) * decay, dtype)
    p[:] = np.where(finite, new, p)

    with np.errstate(invalid="ignore", divide="ignore"):
        x1 = m / a1[blk]
        x2 = v / a2[blk]
    c1s = _quantize(q1, x1, True)
    flip = np.signbit(q1[c1s]) != np.signbit(m)
    c1s = np.where(flip, np.where(m > 0, c1s + 1, c1s - 1), c1s) % 256
    state.state1[:] = c1s.astype(np.uint8)
    state.state2[:] = _quantize(q2, x2, False).astype(np.uint8)
    state.absmax1[:] = a1
    state.absmax2[:] = a2


class PagedAdamW8bit:
    """The whole-group reference: named tensors, one state per tensor.

    Thread safety: none. Parameters are float32 (bf16 values carried in float32) or float16
    numpy arrays updated in place by step()."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 min_8bit_size=4096, percentile_clipping=100):
        self.hp = Hyper(lr, betas, eps, weight_decay, min_8bit_size, percentile_clipping)
        self.state = {}

    def _state_for(self, name, numel):
        st = self.state.get(name)
        if st is None:
            st = TensorState(numel, numel >= self.hp.min_8bit_size,
                             self.hp.percentile_clipping < 100)
            self.state[name] = st
        return st

    def step(self, params, grads, dtypes=None, lr=None):
        """params: name -> array (updated in place); grads: name -> array or None (skipped)."""
        for name, p in params.items():
            g = grads.get(name)
            if g is None:
                continue
            if g.size != p.size:
                raise ValueError(f"gradient of {name}: {g.size} elements, expected {p.size}")
            dtype = (dtypes or {}).get(name) or ("float16" if p.dtype == np.float16 else "float32")
            step_tensor(p, g, self._state_for(name, p.size), self.hp, dtype, lr)
