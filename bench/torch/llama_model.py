"""A small self-contained Llama-style decoder in plain torch, for bench/torch/trainer_bench.py:
RMSNorm, rotary position embeddings, grouped-query attention, SwiGLU MLP, untied embeddings.
No downloads and no transformers; the shapes, not the weights, are what the benchmark needs.

Parameter order (model.parameters()) is the order of bench/wire/layout.cc's layouts: embed;
per layer attn_norm, q, k, v, o, mlp_norm, gate, up, down; norm; lm_head."""

import math

import torch
import torch.nn.functional as F
from torch import nn

# TinyLlama-1.1B: 201 tensors, 1,100,048,384 parameters.
TINYLLAMA = dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000)
# The same 201-tensor structure divided by 16 per dimension (bench/wire/layout.cc's "tiny"): a
# CPU smoke test.
TINY = dict(hidden=128, intermediate=352, layers=22, heads=16, kv_heads=2, vocab=2000)
CONFIGS = {"tinyllama": TINYLLAMA, "tiny": TINY}


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5, **factory):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, **factory))
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def rotary_tables(seq, head_dim, device, dtype, theta=10000.0):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
                           / head_dim))
    freqs = torch.outer(torch.arange(seq, device=device, dtype=torch.float32), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x, cos, sin):
    return x * cos + _rotate_half(x) * sin


def _attention(q, k, v):
    """Causal attention over [batch, heads, seq, head_dim]; k and v already have q's heads."""
    if hasattr(F, "scaled_dot_product_attention"):  # torch >= 2.0: flash attention on GPUs
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    s = q.shape[-2]
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(mask, float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


class Attention(nn.Module):
    def __init__(self, c, **factory):
        super().__init__()
        self.heads, self.kv_heads = c["heads"], c["kv_heads"]
        self.head_dim = c["hidden"] // c["heads"]
        h, kv = c["hidden"], c["kv_heads"] * self.head_dim
        self.q = nn.Linear(h, h, bias=False, **factory)
        self.k = nn.Linear(h, kv, bias=False, **factory)
        self.v = nn.Linear(h, kv, bias=False, **factory)
        self.o = nn.Linear(h, h, bias=False, **factory)

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # Grouped-query attention: each KV head serves heads / kv_heads query heads. Repeating
        # them keeps every torch version on its fastest SDPA kernel.
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = _attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, s, -1))


class Block(nn.Module):
    def __init__(self, c, **factory):
        super().__init__()
        h, i = c["hidden"], c["intermediate"]
        # Registration order fixes the parameter order (see the module docstring).
        self.attn_norm = RMSNorm(h, **factory)
        self.attn = Attention(c, **factory)
        self.mlp_norm = RMSNorm(h, **factory)
        self.gate = nn.Linear(h, i, bias=False, **factory)
        self.up = nn.Linear(h, i, bias=False, **factory)
        self.down = nn.Linear(i, h, bias=False, **factory)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        y = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class Decoder(nn.Module):
    def __init__(self, c, device=None, dtype=torch.bfloat16):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.config = dict(c)
        self.embed = nn.Embedding(c["vocab"], c["hidden"], **factory)
        self.layers = nn.ModuleList(Block(c, **factory) for _ in range(c["layers"]))
        self.norm = RMSNorm(c["hidden"], **factory)
        self.lm_head = nn.Linear(c["hidden"], c["vocab"], bias=False, **factory)
        self._rotary = {}

    def forward(self, tokens):
        s = tokens.shape[1]
        x = self.embed(tokens)
        key = (s, x.device, x.dtype)
        if key not in self._rotary:
            self._rotary[key] = rotary_tables(s, self.config["hidden"] // self.config["heads"],
                                              x.device, x.dtype)
        cos, sin = self._rotary[key]
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))

    def loss(self, tokens, targets):
        logits = self(tokens)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
