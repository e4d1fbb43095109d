"""A GPT language model on fusegrad's kernels (the package's main job).

Architecture (GPT-2 / nanoGPT): token embedding + position (learned table, or rotary
embeddings with ``pos="rope"``), ``n_layer`` pre-LayerNorm blocks of causal multi-head
self-attention on the fused attention kernel (grouped-query when ``n_kv_head < n_head``) and
a 4x GELU feed-forward, residual connections, a final LayerNorm and an output projection
tied to the token embedding; the loss is the fused cross-entropy.

Each block is ten autograd ops (layer norm, qkv linear, fused attention, output linear,
residual add; layer norm, linear, GELU, linear, residual add): the per-element work is in
the kernels, none of it in Python.

>>> import numpy as np
>>> from fusegrad.models import GPT, GPTConfig
>>> model = GPT(GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16), seed=0)
>>> logits, loss = model(np.array([[1, 2, 3]]), targets=np.array([[2, 3, 4]]))
>>> logits.shape, loss.shape
((1, 3, 256), ())
>>> out = model.generate(np.array([[1, 2, 3]]), max_new_tokens=4, temperature=0)
>>> out.shape
(1, 7)
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _C
from .. import _kernels as K
from .. import _random
from .. import _xp
from .. import amp as _amp
from .._checks import is_int
from ..nn import functional as F
from ..nn.modules import Embedding, LayerNorm, Linear, Module
from ..tensor import Function, Tensor, _kc, no_grad


@dataclass
class GPTConfig:
    vocab_size: int = 256        # number of token ids (256 for byte-level)
    block_size: int = 256        # longest sequence the model reads (positions 0..block_size-1)
    n_layer: int = 4             # transformer blocks
    n_head: int = 4              # query heads
    n_embd: int = 256            # width; head dim = n_embd // n_head
    n_kv_head: int | None = None  # key/value heads (None: = n_head; fewer: grouped-query attention)
    dropout: float = 0.0         # dropout on embeddings and residual branches (training only)
    bias: bool = True            # biases in Linear layers and LayerNorms
    tie_weights: bool = True     # output projection shares the token embedding matrix
    pos: str = "learned"         # "learned" position table or "rope" (rotary, no table)
    rope_base: float = 10000.0   # rotary frequency base (pos="rope")
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_kv_head"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"GPTConfig: {name} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"GPTConfig: n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.pos not in ("learned", "rope"):
            raise ValueError(f"GPTConfig: pos must be 'learned' or 'rope', got {self.pos!r}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("GPTConfig: pos='rope' needs an even head dim (n_embd // n_head)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"GPTConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# Rotary position embedding on (B, T, h, D) slices: pairs (x[2i], x[2i+1]) rotated by pos*f_i.
def _rope_tables(positions: np.ndarray, D: int, base: float, dtype):
    inv = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)           # (D/2,)
    ang = positions.astype(np.float64)[:, None] * inv[None, :]           # (T, D/2)
    return np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)


def _rope(x, cos, sin, inverse=False):
    """x: (B, T, h, D) -> rotated copy. cos/sin: (T, D/2). inverse rotates by -angle."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    if inverse:
        s = -s
    out = np.empty_like(x, order="C")     # on x's device (CuPy takes empty_like over)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out


def _split_heads(qkv, H, Hkv, D, rope=None):
    """qkv: (B, T, (H + 2 Hkv) D) -> q (B, H, T, D), k, v (B, Hkv, T, D), all contiguous."""
    B, T, _ = qkv.shape
    x = qkv.reshape(B, T, H + 2 * Hkv, D)
    q, k, v = x[:, :, :H], x[:, :, H:H + Hkv], x[:, :, H + Hkv:]
    if rope is not None:
        q, k = _rope(q, *rope), _rope(k, *rope)
    return (np.ascontiguousarray(q.transpose(0, 2, 1, 3)), np.ascontiguousarray(k.transpose(0, 2, 1, 3)),
            np.ascontiguousarray(v.transpose(0, 2, 1, 3)))


def _rope_qkv(qkv, H, Hkv, D, rope, inverse=False, out=None):
    """Rotates the q and k heads of a packed (B, T, (H + 2 Hkv) D) array; v is copied (into
    ``out``, a new array unless given; ``out`` may be ``qkv`` itself)."""
    B, T, _ = qkv.shape
    x = qkv.reshape(B, T, H + 2 * Hkv, D)
    y = np.empty_like(x) if out is None else out.reshape(x.shape)
    y[:, :, :H + Hkv] = _rope(x[:, :, :H + Hkv], *rope, inverse=inverse)
    if y is not x:
        y[:, :, H + Hkv:] = x[:, :, H + Hkv:]
    return y.reshape(qkv.shape)


class _CausalSelfAttention(Function):
    """y (B, T, H D) = causal attention on the packed projection qkv (B, T, (H + 2 Hkv) D):
    one autograd op around the fused attention kernel (the same kernels as
    ``F.scaled_dot_product_attention``), which reads the heads in place and writes them side by
    side, so there are no head split/merge copies (rotary embedding, when used, rotates q and k
    in one pass before)."""

    def forward(self, qkv, H, Hkv, rope=None, kv=None):
        D = qkv.shape[2] // (H + 2 * Hkv)
        if rope is not None:
            qkv = _rope_qkv(qkv, H, Hkv, D, rope)
        if kv is not None:                  # prefill: keys/values to cache slots 0..T-1
            B, T, _ = qkv.shape
            x = qkv.reshape(B, T, H + 2 * Hkv, D)
            kv[0][:B, :, :T] = x[:, :, H:H + Hkv].transpose(0, 2, 1, 3)
            kv[1][:B, :, :T] = x[:, :, H + Hkv:].transpose(0, 2, 1, 3)
        self.qkv, self.H, self.Hkv, self.D, self.rope = qkv, H, Hkv, D, rope
        # autocast: bf16 operands of the products, float32 softmax statistics (on CuPy arrays the
        # tensor-core kernels)
        bf16 = _amp.is_autocast_enabled() and qkv.dtype == np.float32
        self.kw = {"bf16": True} if bf16 else {}
        self.o, self.lse = K.attention_qkv_forward(qkv, H, Hkv, True, None, **self.kw)
        return self.o

    def backward(self, g):
        dqkv = K.attention_qkv_backward(_kc(g), self.qkv, self.o, self.lse, self.H, self.Hkv, True, None, **self.kw)
        if self.rope is not None:
            _rope_qkv(dqkv, self.H, self.Hkv, self.D, self.rope, inverse=True, out=dqkv)
        return (dqkv,)


class CausalSelfAttention(Module):
    def __init__(self, cfg: GPTConfig, dtype):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.c_attn = Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=cfg.bias, dtype=dtype)
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias, dtype=dtype)

    def forward(self, x, rope=None, residual=None, kv=None):
        """The attention output projected by c_proj; plus ``residual`` when given (added by the
        projection's kernel). ``kv`` = [k, v] caches (B, Hkv, S, D): this call's keys and
        values are also written to their first T slots (the prompt's prefill)."""
        y = _CausalSelfAttention.apply(self.c_attn(x), H=self.n_head, Hkv=self.n_kv_head, rope=rope, kv=kv)
        return _project(self.c_proj, y, residual)

    def step(self, x, cache, pos, rope=None):
        """Incremental forward (no grad): x (B, t, C) new positions pos..pos+t-1; appends this
        step's keys/values to ``cache`` = [k (B, Hkv, S_max, D), v] and attends over the prefix."""
        qkv = self.c_attn(x).data
        q, k, v = _split_heads(qkv, self.n_head, self.n_kv_head, self.head_dim, rope)
        t = q.shape[2]
        cache[0][:, :, pos:pos + t] = k
        cache[1][:, :, pos:pos + t] = v
        kk = Tensor(np.ascontiguousarray(cache[0][:, :, :pos + t]))
        vv = Tensor(np.ascontiguousarray(cache[1][:, :, :pos + t]))
        o = F.scaled_dot_product_attention(Tensor(q), kk, vv, is_causal=True).data  # (B, H, t, D)
        B = o.shape[0]
        return self.c_proj(Tensor(np.ascontiguousarray(o.transpose(0, 2, 1, 3)).reshape(B, t, -1)))


class MLP(Module):
    def __init__(self, cfg: GPTConfig, dtype):
        super().__init__()
        self.c_fc = Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias, dtype=dtype)
        self.c_proj = Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias, dtype=dtype)

    def forward(self, x, residual=None):
        return _project(self.c_proj, F.gelu(self.c_fc(x), approximate="tanh"), residual)


def _project(lin: Linear, y, residual):
    """lin(y), or residual + lin(y) as one kernel call (the skip connection added where the
    projection is stored: the same bits, one op and one pass over the activations fewer)."""
    return lin(y) if residual is None else F._linear_add(residual, y, lin.weight, lin.bias)


class Block(Module):
    def __init__(self, cfg: GPTConfig, dtype):
        super().__init__()
        self.p = cfg.dropout
        self.ln_1 = LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias, dtype=dtype)
        self.attn = CausalSelfAttention(cfg, dtype)
        self.ln_2 = LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias, dtype=dtype)
        self.mlp = MLP(cfg, dtype)

    def forward(self, x, rope=None, kv=None):
        if self.p > 0 and self.training:
            x = x + F.dropout(self.attn(self.ln_1(x), rope, kv=kv), self.p, self.training)
            return x + F.dropout(self.mlp(self.ln_2(x)), self.p, self.training)
        x = self.attn(self.ln_1(x), rope, residual=x, kv=kv)
        return self.mlp(self.ln_2(x), residual=x)

    def step(self, x, cache, pos, rope=None):
        x = x + self.attn.step(self.ln_1(x), cache, pos, rope)
        return x + self.mlp(self.ln_2(x))


def _count(v, name, lo):
    """An integer argument of GPT.generate, at least ``lo`` (bools and floats are refused)."""
    if not is_int(v):
        raise TypeError(f"GPT.generate: {name} must be an integer, got {type(v).__name__} {v!r}")
    if v < lo:
        raise ValueError(f"GPT.generate: {name} must be >= {lo}, got {v}")
    return int(v)


def _prompt_lengths(mask, shape):
    """Tokens per row from a left-padding ``attention_mask`` (B, T) of 0/1 (None: all T)."""
    B, T = shape
    if mask is None:
        return np.full(B, T, dtype=np.int64)
    m = np.asarray(mask.data if isinstance(mask, Tensor) else mask)
    if m.shape != (B, T):
        raise ValueError(f"GPT.generate: attention_mask must have idx's shape {(B, T)}, got {m.shape}")
    if m.dtype.kind not in "biuf" or not np.isin(m, (0, 1)).all():
        raise ValueError("GPT.generate: attention_mask must hold 0 (padding) and 1 (tokens) only")
    m = m.astype(bool)
    n = m.sum(1)
    if (n == 0).any():
        raise ValueError(f"GPT.generate: attention_mask row {int(np.argmin(n))} has no tokens")
    if not all(m[b, T - n[b]:].all() for b in range(B)):
        raise ValueError("GPT.generate: attention_mask must be left padding (each row's 1s at its end, "
                         "as transformers' tokenizers make them with padding_side='left')")
    return n.astype(np.int64)


def _ids(x, name, vocab_size, block_size=None, allow_ignore=False):
    """Validate an integer id array (B, T) (NumPy array, Tensor or nested lists)."""
    a = x.data if isinstance(x, Tensor) else _xp.asarray(x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"GPT: {name} must hold integer token ids, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"GPT: {name} must have shape (B, T), got {a.shape}")
    if block_size is not None and a.shape[1] > block_size:
        raise ValueError(f"GPT: sequence length {a.shape[1]} exceeds block_size {block_size}; "
                         f"crop {name} to its last {block_size} tokens")
    if a.size:
        chk = a[a != -100] if allow_ignore else a
        if chk.size and (chk.min() < 0 or chk.max() >= vocab_size):
            raise ValueError(f"GPT: {name} must be in [0, {vocab_size}), got values in "
                             f"[{chk.min()}, {chk.max()}]")
    return a.astype(np.int64, copy=False)


class GPT(Module):
    """GPT language model. ``logits, loss = model(idx, targets=None)``."""

    def __init__(self, config: GPTConfig, dtype=np.float32, seed: int | None = None):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT: config must be a GPTConfig, got {type(config).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"GPT: dtype must be float32 or float64, got {dtype}")
        self.config, self.dtype_ = config, dtype
        c = config
        self.wte = Embedding(c.vocab_size, c.n_embd, dtype=dtype)         # (V, C), tied to the head
        if c.pos == "learned":
            self.wpe = Embedding(c.block_size, c.n_embd, dtype=dtype)     # (block_size, C)
        self.blocks = [Block(c, dtype) for _ in range(c.n_layer)]
        for i, b in enumerate(self.blocks):
            self.add_module(f"h.{i}", b)
        self.ln_f = LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias, dtype=dtype)
        if not c.tie_weights:
            self.lm_head = Linear(c.n_embd, c.vocab_size, bias=False, dtype=dtype)
        self.reset_parameters(seed)

    # ----- parameters -----
    def reset_parameters(self, seed=None):
        """GPT-2 initialization: N(0, 0.02) weights, residual projections scaled by
        1/sqrt(2 n_layer), zero biases, unit LayerNorm gains."""
        rng = _random.rng_for_seed(seed)   # None: the generator fusegrad.manual_seed seeds
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.data[...] = 0
            elif "ln_" in name:
                p.data[...] = 1
            else:
                s = std / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj.weight") else std
                p.data[...] = rng.normal(0.0, s, p.shape)

    def num_params(self, non_embedding=True) -> int:
        n = sum(p.data.size for p in self.parameters())
        if non_embedding and self.config.pos == "learned":
            n -= self.wpe.weight.data.size
        return n

    def _rope(self, pos0, t):
        if self.config.pos != "rope":
            return None
        cos, sin = _rope_tables(np.arange(pos0, pos0 + t), self.config.head_dim, self.config.rope_base, self.dtype_)
        w = self.wte.weight.data                                           # the tables live where the model does
        return _xp.like(cos, w), _xp.like(sin, w)

    def _embed(self, idx, pos0=0):
        B, T = idx.shape
        x = F.embedding(idx, self.wte.weight)                             # (B, T, C)
        if self.config.pos == "learned":
            x = x + F.embedding(np.arange(pos0, pos0 + T), self.wpe.weight)  # (T, C) broadcast
        return x

    def _head(self, x):
        w = self.wte.weight if self.config.tie_weights else self.lm_head.weight
        return F.linear(x, w)                                              # (..., V)

    def forward(self, idx, targets=None):
        c = self.config
        idx = _ids(idx, "idx", c.vocab_size, c.block_size)
        B, T = idx.shape
        if T == 0:
            raise ValueError("GPT: idx has no tokens (T == 0)")
        x = F.dropout(self._embed(idx), c.dropout, self.training)
        rope = self._rope(0, T)
        for b in self.blocks:
            x = b(x, rope)
        logits = self._head(self.ln_f(x))                                  # (B, T, V)
        if targets is None:
            return logits, None
        tg = _ids(targets, "targets", c.vocab_size, allow_ignore=True)
        if tg.shape != idx.shape:
            raise ValueError(f"GPT: targets shape {tg.shape} must equal idx shape {idx.shape}")
        loss = F.cross_entropy(logits.reshape(B * T, c.vocab_size), tg.reshape(-1))
        return logits, loss

    # ----- generation -----
    def _new_cache(self, B, S):
        c = self.config
        return [[np.zeros((B, c.n_kv_head, S, c.head_dim), dtype=self.dtype_) for _ in range(2)]
                for _ in range(c.n_layer)]

    def _step(self, idx, cache, pos0):
        """Logits (B, V) for the last of ``idx`` (B, t) at positions pos0.., updating cache."""
        x = self._embed(idx, pos0)
        rope = self._rope(pos0, idx.shape[1])
        for b, kv in zip(self.blocks, cache):
            x = b.step(x, kv, pos0, rope)
        x = self.ln_f(Tensor(np.ascontiguousarray(x.data[:, -1:])))
        return self._head(x).data[:, 0]

    @staticmethod
    def _sample(logits, temperature, top_k, top_p, rng):
        """One id per row of logits (B, V)."""
        if not np.isfinite(logits).all():
            raise RuntimeError("GPT.generate: the model's logits hold NaN or inf (diverged or "
                               "corrupt weights?); no token can be sampled from them")
        if temperature == 0:
            return logits.argmax(-1)
        # shifted before the division, so a tiny temperature sends the others to -inf (weight 0)
        # instead of overflowing the max to inf and making inf - inf
        z = logits.astype(np.float64)
        with np.errstate(over="ignore"):
            z = (z - z.max(-1, keepdims=True)) / temperature
        if top_k is not None and top_k < z.shape[-1]:
            kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
            z = np.where(z < kth, -np.inf, z)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        if top_p is not None and top_p < 1.0:
            order = np.argsort(-p, axis=-1, kind="stable")
            ps = np.take_along_axis(p, order, -1)
            keep = (np.cumsum(ps, -1) - ps) < top_p                      # always keeps the top one
            mask = np.zeros_like(keep)
            np.put_along_axis(mask, order, keep, -1)
            p = np.where(mask, p, 0.0)
            p /= p.sum(-1, keepdims=True)
        u = rng.random((p.shape[0], 1))
        return np.minimum((np.cumsum(p, -1) < u).sum(-1), p.shape[-1] - 1)

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, use_cache: bool = True,
                 attention_mask=None, weights_dtype: str | None = None):
        """Append ``max_new_tokens`` sampled ids to ``idx`` (B, T) and return the (B, T + n)
        array. ``temperature=0`` is greedy; ``top_k``/``top_p`` filter; ``seed`` makes it
        reproducible.

        Prompts of different lengths: left-pad them into ``idx`` and pass ``attention_mask``
        (B, T) with 1 on the tokens and 0 on the padding (as in transformers); each row is then
        generated exactly as if it were alone (its own positions, no attention to padding).

        With ``use_cache`` (float32 models) the prompt is prefilled on the training kernels,
        filling key/value caches preallocated to ``block_size``, and each new token is one call
        into the C++ decode step (``_C._GptDecoder``: skinny products, in-place cache append,
        the fused attention kernel). Once a sequence outgrows ``block_size`` its context is
        cropped to the last ``block_size`` tokens and recomputed, as without the cache.
        ``weights_dtype="bfloat16"`` decodes with bf16 weight matrices (half the bytes per
        token; see ``to_inference``)."""
        c = self.config
        idx = _ids(idx, "idx", c.vocab_size)
        if idx.shape[1] == 0:
            raise ValueError("GPT.generate: idx needs at least one token")
        max_new_tokens = _count(max_new_tokens, "max_new_tokens", 0)
        temperature = float(temperature)
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"GPT.generate: temperature must be a finite number >= 0, got {temperature}")
        if top_k is not None:
            top_k = _count(top_k, "top_k", 1)
        if top_p is not None and not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"GPT.generate: top_p must be in (0, 1], got {top_p}")
        lens = _prompt_lengths(attention_mask, idx.shape)
        if weights_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"GPT.generate: weights_dtype must be None, 'float32' or 'bfloat16', got {weights_dtype!r}")
        if weights_dtype == "bfloat16" and getattr(self, "_bf16", None) is None:
            return self.to_inference("bfloat16").generate(
                idx, max_new_tokens, temperature, top_k, top_p, seed, use_cache, attention_mask)
        rng = _random.rng_for_seed(seed)   # None: the generator fusegrad.manual_seed seeds
        B, T = idx.shape
        out = np.empty((B, T + max_new_tokens), dtype=np.int64)
        out[:, :T] = idx
        rows = [slice(T - int(n), None) for n in lens]                    # each row's tokens (no padding)
        sample = lambda lg: self._sample(lg, temperature, top_k, top_p, rng)  # noqa: E731
        was_training = self.training
        self.eval()
        t0 = time.perf_counter()
        self._t_first = None
        try:
            with no_grad():
                if use_cache and self.dtype_ == np.float32:
                    self._generate_fast(out, T, lens, max_new_tokens, sample)
                else:
                    self._generate_slow(out, T, lens, max_new_tokens, sample, use_cache, rows)
        finally:
            self.train(was_training)
        t1 = time.perf_counter()
        tf = self._t_first if self._t_first is not None else t1
        #: timings of the last call: the prompt (prefill up to the first new token) and the rest
        self.generate_stats = {"prompt_tokens": int(lens.sum()), "prompt_s": tf - t0,
                               "new_tokens": B * max(max_new_tokens - 1, 0), "decode_s": t1 - tf}
        return out

    def _generate_slow(self, out, T, lens, n, sample, use_cache, rows):
        """The Python path: float64 models (incremental Tensor steps), or ``use_cache=False``
        (the whole context recomputed for every token: the reference the fast path is tested
        against). Rows of different lengths go one at a time."""
        c = self.config
        if (lens != T).any():
            for b in range(out.shape[0]):
                one = out[b:b + 1, T - int(lens[b]):]
                self._generate_slow(one, int(lens[b]), lens[b:b + 1], n, sample, use_cache, None)
            return
        cache, pos = None, 0
        for i in range(n):
            t = T + i
            if not use_cache:
                logits = self(out[:, max(0, t - c.block_size):t])[0].data[:, -1]
            elif cache is None or pos >= c.block_size:
                ctx = out[:, max(0, t - c.block_size):t]
                cache = self._new_cache(out.shape[0], c.block_size)
                logits = self._step(ctx, cache, 0)
                pos = ctx.shape[1]
            else:
                logits = self._step(out[:, t - 1:t], cache, pos)
                pos += 1
            out[:, t] = sample(logits)
            if self._t_first is None:
                self._t_first = time.perf_counter()

    def _generate_fast(self, out, T, lens, n, sample):
        """Prefill on the training kernels, then one C++ decode call per token (float32)."""
        if n == 0:
            return
        c = self.config
        B, S = out.shape[0], c.block_size
        shape = (B, c.n_kv_head, S, c.head_dim)
        caches = [[np.empty(shape, np.float32), np.empty(shape, np.float32)] for _ in range(c.n_layer)]
        dec = self._decoder(caches)
        pos = np.zeros(B, dtype=np.int64)                                   # tokens in each row's cache
        for i in range(n):
            t = T + i
            if i == 0 or pos.max() >= S:                                    # (re)fill from the context
                ctx = [out[b, t - min(int(lens[b]) + i, S):t] for b in range(B)]
                logits = self._prefill(ctx, caches)
                pos[:] = [len(x) for x in ctx]
            else:
                logits = dec.step(out[:, t - 1].copy(), pos)
                pos += 1
            out[:, t] = sample(logits)
            if i == 0:
                self._t_first = time.perf_counter()

    def _prefill(self, ctx, caches):
        """Runs the prompts ``ctx`` (list of B id arrays) through the training forward,
        right-padded to the longest (causal attention: padding after a row's tokens cannot
        change them), writing keys/values to cache slots 0..; returns each row's last logits."""
        c = self.config
        lens = np.array([len(x) for x in ctx])
        ids = np.zeros((len(ctx), lens.max()), dtype=np.int64)
        for b, x in enumerate(ctx):
            ids[b, :len(x)] = x
        x = self._embed(ids)
        rope = self._rope(0, ids.shape[1])
        for blk, kv in zip(self.blocks, caches):
            x = blk(x, rope, kv=kv)
        last = np.ascontiguousarray(x.data[np.arange(len(ctx)), lens - 1])  # (B, C)
        return self._head(self.ln_f(Tensor(last))).data

    def _decoder(self, caches):
        """The C++ decode step over this model's arrays (float32, or the bf16 bits that
        ``to_inference`` made for the weight matrices) and ``caches``."""
        c = self.config
        bits = getattr(self, "_bf16", None) or {}
        w = lambda lin, name: bits.get(name, lin.weight.data)              # noqa: E731
        b = lambda m: None if getattr(m, "bias", None) is None else m.bias.data  # noqa: E731
        layers = []
        for i, blk in enumerate(self.blocks):
            a, m = blk.attn, blk.mlp
            layers.append((blk.ln_1.weight.data, b(blk.ln_1), w(a.c_attn, f"h.{i}.attn.c_attn"), b(a.c_attn),
                           w(a.c_proj, f"h.{i}.attn.c_proj"), b(a.c_proj), blk.ln_2.weight.data, b(blk.ln_2),
                           w(m.c_fc, f"h.{i}.mlp.c_fc"), b(m.c_fc), w(m.c_proj, f"h.{i}.mlp.c_proj"), b(m.c_proj)))
        head = self.wte if c.tie_weights else self.lm_head
        rope = (None, None)
        if c.pos == "rope":
            rope = _rope_tables(np.arange(c.block_size), c.head_dim, c.rope_base, np.float32)
        return _C._GptDecoder(c.n_head, c.n_kv_head, c.layer_norm_eps, self.wte.weight.data,
                              self.wpe.weight.data if c.pos == "learned" else None, rope[0], rope[1], layers,
                              self.ln_f.weight.data, b(self.ln_f), w(head, "head"),
                              [kv[0] for kv in caches], [kv[1] for kv in caches])

    def to_inference(self, weights_dtype: str = "bfloat16") -> "GPT":
        """A copy of this float32 model for generation with its weight matrices in
        ``weights_dtype`` ("bfloat16": rounded to nearest even, half the bytes a decode step
        streams; "float32": a plain copy). The copy's float32 arrays hold the rounded values
        (its prefill and ``forward`` compute with exactly the weights its decode steps use,
        so its loss measures the rounding); LayerNorms, biases and the position table stay
        float32. Training the copy would leave its bf16 copies stale: make a new one instead.

        >>> m = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=0)
        >>> m.to_inference("bfloat16").generate([[1, 2]], 3, temperature=0).shape
        (1, 5)
        """
        if weights_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"GPT.to_inference: weights_dtype must be 'bfloat16' or 'float32', got {weights_dtype!r}")
        if self.dtype_ != np.float32:
            raise TypeError(f"GPT.to_inference: needs a float32 model, this one is {self.dtype_}")
        m = copy.deepcopy(self)
        m.requires_grad_(False)
        m._bf16 = None
        if weights_dtype == "float32":
            return m
        mats = {f"h.{i}.{n}": getattr(getattr(blk, n.split(".")[0]), n.split(".")[1]).weight
                for i, blk in enumerate(m.blocks) for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
        mats["head"] = m.wte.weight if self.config.tie_weights else m.lm_head.weight
        m._bf16 = {}
        for name, p in mats.items():
            m._bf16[name] = _C._bf16_from_float32(p.data)
            p.data[...] = _C._bf16_to_float32(m._bf16[name])
        return m

    def to(self, dtype):
        """Cast the weights (see ``Module.to``); later caches and rope tables use the new dtype."""
        super().to(dtype)
        if not (isinstance(dtype, str) and dtype == "cpu"):
            self.dtype_ = np.dtype(dtype)
        return self

    # ----- checkpoints -----
    def save(self, directory, optimizer=None, step: int = 0, meta: dict | None = None):
        """Write a crash-safe checkpoint (safetensors weights + JSON config [+ optimizer])."""
        from ..checkpoint import save_checkpoint

        sd = {k: v.data for k, v in self.state_dict().items()}
        cfg = {"model": "GPT", "gpt": self.config.to_dict(), "dtype": self.dtype_.name}
        return save_checkpoint(directory, sd, config=cfg, step=step, meta=meta,
                               optimizer=optimizer.state_dict() if optimizer is not None else None)

    @staticmethod
    def _read(directory):
        from ..checkpoint import load_checkpoint

        ck = load_checkpoint(directory)
        cfg = ck["config"]
        if cfg.get("model") != "GPT" or "gpt" not in cfg:
            raise ValueError(f"GPT.load: {directory} is not a GPT checkpoint")
        return ck

    @classmethod
    def load(cls, directory, optimizer=None):
        """A model rebuilt from the checkpoint in ``directory`` (optionally restoring
        ``optimizer``, built afterwards on the new model's parameters: use ``restore``)."""
        ck = cls._read(directory)
        model = cls(GPTConfig.from_dict(ck["config"]["gpt"]), dtype=ck["config"].get("dtype", "float32"))
        model._apply(ck, directory, optimizer)
        return model

    def restore(self, directory, optimizer=None) -> dict:
        """Load weights (and optimizer state) into this model; the checkpoint must have this
        model's config. Returns ``{"step", "meta"}``."""
        ck = self._read(directory)
        theirs = ck["config"]["gpt"]
        mine = self.config.to_dict()
        diff = [f"{k}: checkpoint {theirs.get(k)!r} vs model {mine[k]!r}" for k in mine if theirs.get(k) != mine[k]]
        if diff:
            raise ValueError(f"GPT.restore: checkpoint in {directory} has a different config ({'; '.join(diff)})")
        self._apply(ck, directory, optimizer)
        return {"step": ck["step"], "meta": ck["meta"]}

    def _apply(self, ck, directory, optimizer):
        own = self.state_dict()
        got = ck["model"]
        if set(own) != set(got):
            raise ValueError(f"GPT: checkpoint in {directory} has tensors {sorted(set(got) ^ set(own))} "
                             f"that do not match the model")
        for k, t in own.items():
            if got[k].shape != t.shape or got[k].dtype != t.dtype:
                raise ValueError(f"GPT: checkpoint tensor {k} is {got[k].dtype}{got[k].shape}, "
                                 f"model expects {t.dtype}{t.shape}")
        self.load_state_dict(got)
        if optimizer is not None:
            if ck["optimizer"] is None:
                raise ValueError(f"GPT: checkpoint in {directory} has no optimizer state")
            optimizer.load_state_dict(ck["optimizer"])

    # ----- Hugging Face GPT-2 -----
    @classmethod
    def from_pretrained(cls, directory, dtype=np.float32):
        """Load a GPT-2 checkpoint in the Hugging Face layout (``config.json`` +
        ``model.safetensors``; Conv1D weights are (in, out) and are transposed here)."""
        from safetensors.numpy import load_file

        d = Path(directory)
        cj = d / "config.json"
        try:
            hf = json.loads(cj.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"GPT.from_pretrained: {cj} not found") from None
        except (OSError, ValueError) as e:                       # unreadable, not UTF-8, not JSON
            raise ValueError(f"GPT.from_pretrained: {cj} is not a readable JSON config ({e})") from None
        if not isinstance(hf, dict):
            raise ValueError(f"GPT.from_pretrained: {cj} must hold a JSON object, got {type(hf).__name__}")
        missing = [k for k in ("vocab_size", "n_layer", "n_head", "n_embd") if k not in hf]
        if missing:
            raise ValueError(f"GPT.from_pretrained: {cj} lacks {', '.join(missing)} (not a GPT-2 config?)")
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"GPT.from_pretrained: activation_function {act!r} is not supported (gelu_new only)")
        cfg = GPTConfig(vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", 1024),
                        n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                        tie_weights=True, layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))
        st = d / "model.safetensors"
        if not st.exists():
            raise FileNotFoundError(f"GPT.from_pretrained: {st} not found (only safetensors weights are supported)")
        try:
            w = load_file(str(st))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"GPT.from_pretrained: {st} is truncated or not a safetensors file "
                             f"({type(e).__name__}: {e})") from None
        w = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in w.items()}
        model = cls(cfg, dtype=dtype)
        shapes = {k: t.shape for k, t in model.state_dict().items()}
        sd = {}
        for k in shapes:
            src = k
            if src not in w:
                raise ValueError(f"GPT.from_pretrained: {st} has no tensor {k!r}")
            a = w[src]
            if k.endswith(".weight") and any(s in k for s in ("c_attn", "c_proj", "c_fc")):
                want = shapes[k][::-1]
                if a.shape != want:
                    raise ValueError(f"GPT.from_pretrained: {st}: {k} has shape {a.shape}, expected {want} "
                                     f"(GPT-2's Conv1D layout is (in, out))")
                a = a.T  # Conv1D (in, out) -> Linear (out, in)
            sd[k] = np.ascontiguousarray(a, dtype=dtype)
        model.load_state_dict(sd)
        return model
