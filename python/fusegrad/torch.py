"""PyTorch adapter: fusegrad's CPU kernels as drop-ins for ``torch.nn.functional`` ops, modules and AdamW.

Drop-in replacements with the signatures of their ``torch.nn.functional`` / ``torch.nn`` /
``torch.optim`` counterparts::

    import fusegrad.torch as fgt
    model = fgt.optimize(model)            # swaps nn.LayerNorm/GELU/Linear and F.* ops; fgt.restore(model) undoes it
    opt = fgt.AdamW(model.parameters())    # was torch.optim.AdamW
    y = fgt.layer_norm(x, (C,), w, b)      # or one op at a time, as F.layer_norm

**Never slower.** Each call runs fusegrad's kernel only where it beat PyTorch's op for that op,
dtype and size on this kind of CPU, and PyTorch's own op otherwise. The choice comes from a
table measured by ``bench/bench_torch_adapter.py`` and stored in ``fusegrad/_torch_table.json``
(keyed by CPU and ISA path, with a conservative default for CPUs not in it); ``set_policy``
or the environment variable ``FUSEGRAD_TORCH_POLICY`` overrides it (``'fusegrad'`` forces our
kernels, ``'torch'`` PyTorch's, per op or for all). ``dispatch_counts`` counts every call by
where it went (``'layer_norm -> fusegrad'``, ``'layer_norm -> torch'``).

**Two paths, one result.** In eager mode a call goes through a plain ``torch.autograd.Function``
(or straight to the kernel when no gradient is needed) that hands the tensors themselves to the
``_C._torch_*`` kernel entries (csrc/bind/torch.cpp: they read each tensor's dtype, device,
contiguity, shape and data pointer, check them as the NumPy entries do, and hand outputs from
fusegrad's host memory cache to torch as DLPack capsules). The common calls of layer_norm, gelu and linear
(plain contiguous CPU tensors in the shapes the kernels take) are decided and run by one C++ entry
each (``_C._torch_layernorm_fast``, ``_torch_gelu_fast``, ``_torch_linear_fast``) from the same
policy state, and their Functions' forward and backward are C++ functions too; every other call takes the
Python path, with the same results, counts and errors. Forward with autograd, 1 thread, CPU time,
quiet Zen 4, above the raw kernel: layer_norm 8x128 +6.2 to +6.5 µs (the Python path +8.8 to +9.1),
gelu 8x512 +5.0 to +5.6 (+6.4), linear 8x128x128 +5.7 to +5.9 (+8.9 to +9.3);
``autograd.Function.apply``'s own machinery is ~3.3 µs of that.
Under ``torch.compile`` (and for tensor subclasses such as fake tensors) it goes through
``torch.library`` custom ops (``torch.ops.fusegrad.*``) with fake (meta) implementations and
registered backwards, so ``torch.compile(fullgraph=True)`` traces them without graph breaks; that
path costs ~40 µs more per call in eager mode, which is why eager mode does not use it. Both run
the same kernels.

**Fallbacks.** Arguments the kernels lack go to PyTorch's ORIGINAL op (captured when this module
is imported, so ``torch.nn.functional.layer_norm = fusegrad.torch.layer_norm`` never recurses),
counted in ``fallback_counts`` by reason: tensors on devices other than the CPU and CUDA, CUDA
tensors that ``fusegrad._torch_cuda.route`` refuses (``'cuda: dtype'``, ...; the CUDA tensors it
accepts run on ``fusegrad._cuda`` on torch's current stream), dtypes other than float32/float64,
and options the kernels lack (``attn_mask``, ``dropout_p > 0``, ``is_causal`` with a query length
different from the key length (PyTorch aligns that mask top-left, our kernel bottom-right), class
weights, label smoothing, reductions other than ``'mean'``, inputs other than ``(N, C)`` logits,
...); under ``torch.compile`` a fallback counts once per trace. The optimizer is the exception:
``AdamW`` raises ``ValueError`` for options it lacks (``amsgrad``, ``maximize``, ...) and
``RuntimeError`` for parameters its kernels cannot update (not CPU, or CUDA but not float32),
since silently running another optimizer would change a training run. A double backward
(``create_graph=True``) through an op that ran on our kernels raises ``RuntimeError`` naming the op:
their backward is not differentiable, and ``torch.autograd.grad`` would otherwise return gradients
silently lacking that node's second-order terms (``set_policy('torch', ops=...)`` runs PyTorch's op).

**Autocast.** Inside ``torch.autocast("cpu", dtype=torch.bfloat16)`` the linear and attention
adapters run fusegrad's bf16 kernels (``ops.matmul_bf16``, ``ops.attention_*(bf16=True)``): float32
or bfloat16 inputs, every product's operands rounded to bfloat16, float32 sums and softmax
statistics, bfloat16 outputs (the dtype torch's autocast gives), and gradients in each input's
dtype (float32 for float32 master weights). The policy decides them under the dtype key
``bfloat16`` (measured with autocast by the bench); fallbacks are counted as for float32. Under
``torch.compile`` (or with tensor subclasses) autocast calls go to PyTorch's op.

This module imports torch (>= 2.4, for ``torch.library.custom_op``); fusegrad itself never depends
on it, and no libtorch is linked into fusegrad's C++ extension: tensors cross over through their
Python attributes (the ``_C._torch_*`` entries) or as NumPy views (attention, cross-entropy).
"""
import collections
import copy
import functools
import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

if not hasattr(torch.library, "custom_op"):  # added in torch 2.4
    raise ImportError(f"fusegrad.torch needs torch >= 2.4 (torch.library.custom_op); found torch {torch.__version__}")

from . import _C
from . import _torch_cuda as _tc

__all__ = ["scaled_dot_product_attention", "layer_norm", "cross_entropy", "gelu", "linear", "AdamW",
           "LayerNorm", "GELU", "Linear", "optimize", "restore", "set_policy", "get_policy",
           "fallback_counts", "dispatch_counts", "ORIGINALS", "KERNELS"]

#: fusegrad kernels each adapter needs; a missing one makes the adapter fall back to PyTorch
KERNELS = {
    "scaled_dot_product_attention": ("attention_forward", "attention_backward"),
    "layer_norm": ("layernorm_forward", "layernorm_backward"),
    "cross_entropy": ("cross_entropy_forward", "cross_entropy_backward"),
    "gelu": ("gelu_forward", "gelu_backward"),
    "linear": ("linear_forward", "linear_backward"),
    "AdamW": ("adamw_step",),
}

#: PyTorch's own ``torch.nn.functional`` ops, captured at import: every fallback and every
#: "torch" choice of the policy calls these, never whatever ``F.<name>`` holds later
def _original(f):
    """PyTorch's op behind f: f itself, or the one a fusegrad.torch function replaced (a module
    imported again into a process whose torch.nn.functional is already patched)."""
    return getattr(f, "_torch_original", f)


ORIGINALS = {name: _original(getattr(F, name))
             for name in ("scaled_dot_product_attention", "layer_norm", "cross_entropy", "gelu", "linear")}
_pt_sdpa, _pt_layer_norm, _pt_cross_entropy, _pt_gelu, _pt_linear = ORIGINALS.values()

#: how often each adapter handed a call to PyTorch's own op because the kernels lack something, by reason
fallback_counts = collections.Counter()
#: every eager call by where it ran: ``'<op> -> fusegrad'`` or ``'<op> -> torch'`` (fallbacks and policy choices)
dispatch_counts = collections.Counter()

_FLOATS = (torch.float32, torch.float64)
_PLAIN = (torch.Tensor, nn.Parameter)  # tensor types the eager path views as NumPy (not fake/functional subclasses)
_is_compiling = torch.compiler.is_compiling


def _have(name):
    return all(hasattr(_C, k) for k in KERNELS[name])


_HAVE = {}  # op -> _have(op), looked up once


def _native(name, *ts, also=()):
    """How a call on these tensors runs, in one pass over them: None when the fusegrad kernels
    cannot run them (the reason counted in fallback_counts), else the path: 0 the registered custom
    op (tracing, or a tensor subclass such as a fake tensor), 1 eager with no gradient needed (the
    kernel alone), 2 eager with autograd (the light Function). ``also``: further tensors (integer
    targets) that only choose the path."""
    have = _HAVE.get(name)
    if have is None:
        have = _HAVE[name] = _have(name)
    if not have:
        return _fallback(name, "kernel not built")
    dt = ts[0].dtype
    grad = sub = False
    for t in ts:
        if not t.is_cpu:
            return _cuda_mode(name, ts, also)
        if t.dtype is not dt:
            return _fallback(name, "dtype")
        if type(t) not in _PLAIN:
            sub = True
        elif t.requires_grad:
            grad = True
    if dt not in _FLOATS:
        return _fallback(name, "dtype")
    for t in also:
        sub = sub or type(t) not in _PLAIN
    if sub or _is_compiling():
        return 0
    return 2 if grad and torch.is_grad_enabled() else 1


#: the path of a call that runs on fusegrad._cuda (torch CUDA tensors; see fusegrad._torch_cuda)
CUDA = 3


def _cuda_mode(name, ts, also=()):
    """CUDA when fusegrad._cuda runs these (non-CPU) tensors, else None with the reason counted:
    'device' (not all on one GPU: meta tensors, mixed devices), 'cuda: ...' (_torch_cuda.route)."""
    if _is_compiling() or any(type(t) not in _PLAIN for t in (*ts, *also)):
        return _fallback(name, "device" if any(t.device.type != "cuda" for t in ts) else
                         "cuda: torch.compile or a tensor subclass")
    if _autocast_on("cuda"):  # torch.autocast("cuda"): PyTorch's op applies its dtype rules
        return _fallback(name, "device" if any(t.device.type != "cuda" for t in ts) else "cuda: autocast")
    why = _tc.route(name, ts, also)
    return _fallback(name, why) if why else CUDA


def _use_cuda(op):
    """Whether a CUDA call runs fusegrad's kernel: yes unless the policy says 'torch' (the measured
    table is for CPUs), counted in dispatch_counts."""
    ours = _policy[op] != "torch"
    dispatch_counts[_KEYS[op][ours]] += 1
    return ours


def _fallback(name, reason):
    fallback_counts[f"{name}: {reason}"] += 1
    if not _is_compiling():
        dispatch_counts[_KEYS[name][False]] += 1
    # None: callers write `return _fallback(...) or torch_op()`


def _fast_apply(fn):
    """fn.apply without autograd.Function.apply's Python preamble (argument binding and functorch's
    unwrapping of dead wrappers, ~10 µs a call), which matters only under functorch transforms."""
    raw = super(torch.autograd.Function, fn).apply

    def apply(*args):
        return fn.apply(*args) if _functorch_active() else raw(*args)
    return apply


_functorch_active = torch._C._are_functorch_transforms_active


def _n(t):
    """A CPU tensor as a NumPy array over the same memory (copied only if non-contiguous).
    ``numpy(force=True)`` detaches in C++: ~0.3 µs less than ``detach().numpy()``."""
    return t.numpy(force=True) if t.is_contiguous() else t.detach().contiguous().numpy()


_t = torch.from_numpy


# ----------------------------------------------------------------- policy
#: ops the policy decides, and how a call's size is measured (bucket: floor(log2(size)))
POLICY_OPS = {
    "scaled_dot_product_attention": "B*H*L*S*E",
    "layer_norm": "numel",
    "cross_entropy": "N*C",
    "gelu": "numel (approximate='none', erf)",
    "gelu_tanh": "numel (approximate='tanh')",
    "linear": "M*K*N (rows x in x out)",
}
_KEYS = {op: (f"{op} -> torch", f"{op} -> fusegrad") for op in POLICY_OPS}
_TABLE_FILE = Path(__file__).with_name("_torch_table.json")
_CHOICES = ("auto", "fusegrad", "torch")


def cpu_key():
    """The key of this machine's entry in the table: CPU model and fusegrad's ISA path in use."""
    from ._config import cpu_model
    return f"{cpu_model()} / {_C.get_isa()}"


def _load_table(src):
    """{op: {dtype: sorted [(bucket, use_fusegrad)]}} for this CPU (or the default) from a path or dict."""
    if src is None:
        return {}
    doc = src if isinstance(src, dict) else json.loads(Path(src).read_text())
    tables = doc.get("tables", doc)
    entry = tables.get(cpu_key()) or tables.get("default") or {}
    out = {}
    for op, per_dtype in entry.items():
        if op not in POLICY_OPS:
            raise ValueError(f"fusegrad.torch: table names an unknown op {op!r}; ops: {', '.join(POLICY_OPS)}")
        out[op] = {getattr(torch, dt): sorted((int(b), c == "fusegrad") for b, c in buckets.items())
                   for dt, buckets in per_dtype.items()}
    return out


def _parse_policy(text):
    """'fusegrad' or 'layer_norm=fusegrad,gelu=torch' -> {op or None: choice}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        op, _, choice = part.rpartition("=")
        out[op or None] = choice
    return out


_policy = {op: "auto" for op in POLICY_OPS}
_table = {}
_decided = {}


def set_policy(policy="auto", ops=None, table=None):
    """Choose where calls run: ``'auto'`` (the measured table: fusegrad's kernel only where it
    was faster), ``'fusegrad'`` (our kernel for every call it supports) or ``'torch'``
    (PyTorch's op always).

    ``ops``: an op name or a list of them (``POLICY_OPS``; ``'gelu'`` is the erf form,
    ``'gelu_tanh'`` the tanh one); default all. ``table``: a path or dict in the format of
    ``fusegrad/_torch_table.json`` to use instead of it. The environment variable
    ``FUSEGRAD_TORCH_POLICY`` (``'torch'``, or ``'layer_norm=fusegrad,gelu=torch'``) sets the
    policy at import, ``FUSEGRAD_TORCH_TABLE`` the table. Returns the previous policy (a dict
    for ``set_policy(**...)``-free restoring: ``set_policy(old)``).

    >>> import fusegrad.torch as fgt
    >>> old = fgt.set_policy("torch", ops="gelu")
    >>> fgt.get_policy()["gelu"]
    'torch'
    >>> _ = fgt.set_policy(old)
    """
    old = dict(_policy)
    if isinstance(policy, dict):
        for op, choice in policy.items():
            set_policy(choice, op)
    else:
        if policy not in _CHOICES:
            raise ValueError(f"fusegrad.torch.set_policy: policy must be one of {_CHOICES}, got {policy!r}")
        names = list(POLICY_OPS) if ops is None else [ops] if isinstance(ops, str) else list(ops)
        for op in names:
            if op not in POLICY_OPS:
                raise ValueError(f"fusegrad.torch.set_policy: unknown op {op!r}; ops: {', '.join(POLICY_OPS)}")
            _policy[op] = policy
    if table is not None:
        _table.clear()
        _table.update(_load_table(table))
    _decided.clear()
    _push_fast_policy()
    return old


def get_policy():
    """The policy of each op (``'auto'``, ``'fusegrad'`` or ``'torch'``)."""
    return dict(_policy)


def _decide(op, dtype, bucket):
    p = _policy[op]
    if p != "auto":
        return p == "fusegrad"
    rows = _table.get(op, {}).get(dtype)
    if not rows:
        return False  # never measured: PyTorch's op, which is never slower than itself
    # the nearest measured bucket (ties: the smaller one)
    return min(rows, key=lambda r: (abs(r[0] - bucket), r[0]))[1]


def _use(op, dtype, size, mode):
    """Whether this call runs fusegrad's kernel (policy + table), counted in dispatch_counts.
    mode: _native's answer (0: maybe tracing, where sizes may be symbolic)."""
    if not mode and _is_compiling():  # the choice specializes the graph to this bucket
        return _decide(op, dtype, int(size).bit_length() - 1)
    key = (op, dtype, size.bit_length() - 1)
    ours = _decided.get(key)
    if ours is None:
        ours = _decided[key] = _decide(*key)
    dispatch_counts[_KEYS[op][ours]] += 1
    return ours


def _init_policy():
    _table.update(_load_table(os.environ.get("FUSEGRAD_TORCH_TABLE") or
                              (_TABLE_FILE if _TABLE_FILE.exists() else None)))
    for op, choice in _parse_policy(os.environ.get("FUSEGRAD_TORCH_POLICY", "")).items():
        try:
            set_policy(choice, op)
        except ValueError as e:
            raise ValueError(f"FUSEGRAD_TORCH_POLICY: {e}") from None


_FAST_OPS = ("layer_norm", "gelu", "gelu_tanh", "linear")  # the ops with a C++ fast path (csrc/bind/torch.cpp)


def _push_fast_policy():
    """The C++ fast paths' copy of the policy: one byte per size bucket and dtype (see _torch_fast_policy)."""
    for op in _FAST_OPS:
        _C._torch_fast_policy(op, *(bytes(_decide(op, dt, b) for b in range(64)) for dt in _FLOATS))


_init_policy()
_push_fast_policy()


# ----------------------------------------------------------------- autocast (bf16)
_autocast_on = torch.is_autocast_enabled
_autocast_dtype = torch.get_autocast_dtype
_AMP_DTYPES = (torch.float32, torch.bfloat16)


def _amp_bf16():
    """True inside torch.autocast("cpu", dtype=torch.bfloat16)."""
    return _autocast_on("cpu") and _autocast_dtype("cpu") is torch.bfloat16


def _native_amp(name, *ts):
    """_native for a call under CPU bf16 autocast: None (fallback counted), 1 (no gradient needed)
    or 2 (autograd). Inputs may be float32 (master weights) or bfloat16 (autocast outputs)."""
    have = _HAVE.get((name, "bf16"))
    if have is None:
        have = _HAVE[(name, "bf16")] = _have(name) and hasattr(_C, "matmul_bf16")
    if not have:
        return _fallback(name, "kernel not built")
    grad = False
    for t in ts:
        if not t.is_cpu:
            return _fallback(name, "device")
        if t.dtype not in _AMP_DTYPES:
            return _fallback(name, "dtype")
        if type(t) not in _PLAIN:
            return _fallback(name, "autocast with a tensor subclass")
        grad = grad or t.requires_grad
    if _is_compiling():
        return _fallback(name, "autocast under torch.compile")
    return 2 if grad and torch.is_grad_enabled() else 1


def _f32(t):
    """A tensor as a float32 NumPy array (bfloat16 widened: exact; float32 viewed, not copied)."""
    return _n(t if t.dtype is torch.float32 else t.float())


def _bf(a):
    """A float32 NumPy result as the bfloat16 tensor torch's autocast would return."""
    return _t(a).to(torch.bfloat16)


def _like(a, t):
    """A float32 NumPy gradient as a tensor of t's dtype."""
    g = _t(a)
    return g if t.dtype is torch.float32 else g.to(t.dtype)


# ----------------------------------------------------------------- attention
@torch.library.custom_op("fusegrad::attention_forward", mutates_args=())
def _attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                   scale: Optional[float]) -> tuple[torch.Tensor, torch.Tensor]:
    o, lse = _C.attention_forward(_n(q), _n(k), _n(v), causal, scale)
    return _t(o), _t(lse)


@_attention_fwd.register_fake
def _(q, k, v, causal, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(q.shape[:-1])


@torch.library.custom_op("fusegrad::attention_backward", mutates_args=())
def _attention_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                   lse: torch.Tensor, causal: bool, scale: Optional[float]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = _C.attention_backward(_n(do), _n(q), _n(k), _n(v), _n(o), _n(lse), causal, scale)
    return _t(dq), _t(dk), _t(dv)


@_attention_bwd.register_fake
def _(do, q, k, v, o, lse, causal, scale):
    c = torch.contiguous_format
    return (torch.empty_like(q, memory_format=c), torch.empty_like(k, memory_format=c),
            torch.empty_like(v, memory_format=c))


def _attention_setup(ctx, inputs, output):
    q, k, v, causal, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.causal, ctx.scale = causal, scale


def _attention_grad(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = _attention_bwd(do, q, k, v, o, lse, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None


_attention_fwd.register_autograd(_attention_grad, setup_context=_attention_setup)


class _Attention(torch.autograd.Function):
    """The eager path: the same kernels without the custom-op dispatch."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        o, lse = _C.attention_forward(_n(q), _n(k), _n(v), causal, scale)
        o = _t(o)
        ctx.save_for_backward(q, k, v, o)
        ctx.lse, ctx.causal, ctx.scale = lse, causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o = ctx.saved_tensors
        dq, dk, dv = _C.attention_backward(_n(do), _n(q), _n(k), _n(v), o.numpy(), ctx.lse, ctx.causal, ctx.scale)
        return _t(dq), _t(dk), _t(dv), None, None


_attention_apply = _fast_apply(_Attention)


class _AttentionBF16(torch.autograd.Function):
    """Under autocast: q, k, v (float32 or bfloat16) on the bf16 kernels, o in bfloat16."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        qn, kn, vn = _f32(q), _f32(k), _f32(v)
        o, lse = _C.attention_forward(qn, kn, vn, causal, scale, True)
        ctx.save_for_backward(q, k, v)
        ctx.o, ctx.lse, ctx.causal, ctx.scale = o, lse, causal, scale
        return _bf(o)

    @staticmethod
    def backward(ctx, do):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = _C.attention_backward(_f32(do), _f32(q), _f32(k), _f32(v), ctx.o, ctx.lse, ctx.causal,
                                           ctx.scale, True)
        return _like(dq, q), _like(dk, k), _like(dv, v), None, None


_attention_bf16_apply = _fast_apply(_AttentionBF16)


def _packed_qkv(q, k, v, grad):
    """The (B, T, (H + 2 Hkv) D) projection that q, k, v are head views of, or None.

    nanoGPT's attention: ``q, k, v = c_attn(x).split(C, dim=2)``, each ``.view(B, T, H, D).transpose(1, 2)``.
    Where q, k, v lie in memory exactly so (rows [q heads | k heads | v heads], one after another), the
    packed kernels read them in place instead of three contiguous copies, and the output is written
    (B, T, H D), which the model's ``.transpose(1, 2).contiguous()`` then leaves as it is.

    Returns (qkv, views): with ``grad`` and the three views of one tensor that holds exactly that
    projection (c_attn's output), qkv is that tensor and views is (), so the gradient goes to it
    whole (no split/view/transpose backward concatenating three pieces); otherwise qkv is a
    detached (B, T, W) view of the memory and views is (q, k, v), which receive the gradient."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    W = (H + 2 * Hkv) * D
    st = (T * W, D, W, 1)
    if q.stride() != st or k.stride() != st or v.stride() != st or k.shape != v.shape:
        return None, None
    e, p = q.element_size(), q.data_ptr()
    if k.data_ptr() - p != H * D * e or v.data_ptr() - p != (H + Hkv) * D * e:
        return None, None
    if grad:
        base = q._base
        if (base is not None and base is k._base and base is v._base and base.requires_grad
                and q.requires_grad and k.requires_grad and v.requires_grad and base.data_ptr() == p
                and base.numel() == B * T * W and base.is_contiguous()):
            return base, ()
        views = (q, k, v)
    else:
        views = ()
    return (q.detach() if q.requires_grad else q).as_strided((B, T, W), (T * W, W, 1)), views


class _AttentionPacked(torch.autograd.Function):
    """The eager path on q, k, v packed in one projection (``_packed_qkv``): o is (B, T, H D).
    qkv: (B, T, W) or c_attn's output of the same memory in another shape; views: (q, k, v) or ()."""

    @staticmethod
    def forward(ctx, qkv, shape, heads, causal, scale, *views):
        o, lse = _C.attention_qkv_forward(_n(qkv).reshape(shape), *heads, causal, scale)
        o = _t(o)
        ctx.save_for_backward(qkv, o, *views)  # views: for their version counters (they share qkv's memory)
        ctx.lse, ctx.args = lse, (shape, heads, causal, scale)
        return o

    @staticmethod
    def backward(ctx, do):
        qkv, o = ctx.saved_tensors[:2]
        shape, (H, Hkv), causal, scale = ctx.args
        dqkv = _t(_C.attention_qkv_backward(_n(do), _n(qkv).reshape(shape), o.numpy(), ctx.lse, H, Hkv, causal,
                                            scale))
        if len(ctx.saved_tensors) == 2:
            return dqkv.view(qkv.shape), None, None, None, None
        B, T, W = shape
        D = W // (H + 2 * Hkv)
        dq, dk, dv = (g.view(B, T, -1, D).transpose(1, 2) for g in dqkv.split((H * D, Hkv * D, Hkv * D), dim=2))
        return None, None, None, None, None, dq, dk, dv


_attention_packed_apply = _fast_apply(_AttentionPacked)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    """``torch.nn.functional.scaled_dot_product_attention`` on fusegrad's flash-style CPU kernel.

    ``query: (B, H, L, E)`` or ``(B, L, E)``; ``key, value: (B, Hkv, S, E)`` with ``Hkv == H``, or
    ``H`` a multiple of ``Hkv`` when ``enable_gqa=True``. Memory stays linear in ``L``; backward
    recomputes the probabilities from the saved log-sum-exp.

    >>> import torch, fusegrad.torch as fgt
    >>> q = k = v = torch.randn(1, 2, 5, 8)
    >>> fgt.scaled_dot_product_attention(q, k, v, is_causal=True).shape
    torch.Size([1, 2, 5, 8])
    """
    def torch_op():
        return _pt_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, enable_gqa=enable_gqa)

    name = "scaled_dot_product_attention"
    amp = _amp_bf16()
    mode = _native_amp(name, query, key, value) if amp else _native(name, query, key, value)
    if mode is None:
        return torch_op()
    if attn_mask is not None:
        return _fallback(name, "attn_mask") or torch_op()
    if dropout_p > 0.0:
        return _fallback(name, "dropout_p > 0") or torch_op()
    nd = query.dim()
    if nd not in (3, 4) or key.dim() != nd or value.dim() != nd:
        return _fallback(name, "rank") or torch_op()
    q, k, v = (query, key, value) if nd == 4 else (query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1))
    B, H, L, E = q.shape
    S = k.shape[2]
    if (k.shape[0] != B or v.shape[0] != B or k.shape[3] != E or v.shape != k.shape or E > 256
            or (k.shape[1] != H and not (enable_gqa and H % k.shape[1] == 0))):
        return _fallback(name, "shapes") or torch_op()
    if is_causal and L != S:
        return _fallback(name, "is_causal with L != S (PyTorch aligns the mask top-left)") or torch_op()
    if mode == CUDA:
        if not _use_cuda(name):
            return torch_op()
        o = _tc.Attention.apply(q, k, v, bool(is_causal), None if scale is None else float(scale))
        return o if nd == 4 else o.squeeze(1)
    if not _use(name, torch.bfloat16 if amp else q.dtype, B * H * L * S * E, mode):
        return torch_op()
    causal, scale = bool(is_causal), None if scale is None else float(scale)
    if amp:
        if mode == 2:
            o = _attention_bf16_apply(q, k, v, causal, scale)
        else:
            o = _bf(_C.attention_forward(_f32(q), _f32(k), _f32(v), causal, scale, True)[0])
        return o if nd == 4 else o.squeeze(1)
    qkv, views = _packed_qkv(q, k, v, mode == 2) if mode and nd == 4 else (None, None)
    if qkv is not None:
        heads = (H, k.shape[1])
        if mode == 2:
            o = _attention_packed_apply(qkv, (B, L, qkv.numel() // (B * L)), heads, causal, scale, *views)
        else:
            o = _t(_C.attention_qkv_forward(qkv.numpy(), *heads, causal, scale)[0])
        return o.view(B, L, H, E).transpose(1, 2)
    if mode == 0:
        o, _ = _attention_fwd(q, k, v, causal, scale)
    elif mode == 2:
        o = _attention_apply(q, k, v, causal, scale)
    else:
        o = _t(_C.attention_forward(_n(q), _n(k), _n(v), causal, scale)[0])
    return o if nd == 4 else o.squeeze(1)


# ----------------------------------------------------------------- layer norm
@torch.library.custom_op("fusegrad::layernorm_forward", mutates_args=())
def _layernorm_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, mean, rstd = _C._torch_layernorm_forward(x.contiguous(), weight.contiguous(), bias.contiguous(), eps)
    return y, _t(mean), _t(rstd)


@_layernorm_fwd.register_fake
def _(x, weight, bias, eps):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape[:-1]),
            x.new_empty(x.shape[:-1]))


@torch.library.custom_op("fusegrad::layernorm_backward", mutates_args=())
def _layernorm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                   rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _C._torch_layernorm_backward(dy.contiguous(), x.contiguous(), weight.contiguous(), mean.contiguous(),
                                       rstd.contiguous())


@_layernorm_bwd.register_fake
def _(dy, x, weight, mean, rstd):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight),
            torch.empty_like(weight))


def _layernorm_setup(ctx, inputs, output):
    x, weight, bias, eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)


def _layernorm_grad(ctx, dy, dmean, drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _layernorm_bwd(dy, x, weight, mean, rstd)
    return dx, dw, db, None


_layernorm_fwd.register_autograd(_layernorm_grad, setup_context=_layernorm_setup)


class _LayerNorm(torch.autograd.Function):
    """The eager path: the same kernels without the custom-op dispatch (weight, bias: a tensor or None).
    Both are C++: forward(ctx, x, weight, bias, eps) (x, weight, bias contiguous) returns y, with x
    and weight saved and ctx.stats = the rows' mean and rstd (a capsule only the backward reads);
    backward(ctx, dy) returns (dx, dweight, dbias, None), and refuses a double backward itself."""

    forward = staticmethod(_C._torch_layernorm_ctx_forward)
    backward = staticmethod(_C._torch_layernorm_ctx_backward)  # None for a weight or bias that was None


_layernorm_apply = _fast_apply(_LayerNorm)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``torch.nn.functional.layer_norm`` on fusegrad's one-pass kernels.

    >>> import torch, fusegrad.torch as fgt
    >>> x = torch.randn(2, 3, 8)
    >>> torch.allclose(fgt.layer_norm(x, (8,)), torch.nn.functional.layer_norm(x, (8,)), atol=1e-5)
    True
    """
    if not _is_compiling():  # the common call decided and run in C++ (None: not one it takes)
        y = _C._torch_layernorm_fast(input, normalized_shape, weight, bias, eps)
        if y is not None:
            return y
    name = "layer_norm"
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    mode = _native(name, input, weight, bias) if weight is not None and bias is not None else \
        _native(name, *[t for t in (input, weight, bias) if t is not None])
    if mode is None:
        return _pt_layer_norm(input, normalized_shape, weight, bias, eps)
    k, shape = len(ns), input.shape
    if k == 0 or len(shape) < k or shape[-k:] != ns or (weight is not None and weight.shape != ns) or (
            bias is not None and bias.shape != ns):
        return _fallback(name, "shapes") or _pt_layer_norm(input, normalized_shape, weight, bias, eps)
    if not (_use_cuda(name) if mode == CUDA else _use(name, input.dtype, input.numel(), mode)):
        return _pt_layer_norm(input, normalized_shape, weight, bias, eps)
    if k == 1 and (mode == 1 or mode == 2):  # the CPU entries take (..., C) as it is: no reshapes (~1 µs each)
        x, w, b = input.contiguous(), weight, bias
        if w is not None:
            w = w.contiguous()
        if b is not None:
            b = b.contiguous()
        if mode == 2:
            return _layernorm_apply(x, w, b, float(eps))
        return _C._torch_layernorm_forward(x, w, b, float(eps))[0]
    C = ns[0] if k == 1 else math.prod(ns)
    flat = len(shape) == 2 and k == 1  # already (N, C): no reshapes
    x = input if flat else input.reshape(-1, C)
    w = weight if k == 1 or weight is None else weight.reshape(C)
    b = bias if k == 1 or bias is None else bias.reshape(C)
    if mode == CUDA:
        y = _tc.LayerNorm.apply(x, w, b, float(eps))
    elif mode == 2:
        y = _layernorm_apply(x.contiguous(), None if w is None else w.contiguous(),
                             None if b is None else b.contiguous(), float(eps))
    elif mode == 1:
        y = _C._torch_layernorm_forward(x.contiguous(), None if w is None else w.contiguous(),
                                       None if b is None else b.contiguous(), float(eps))[0]
    else:  # the custom op's schema takes tensors
        y = _layernorm_fwd(x, input.new_ones(C) if w is None else w, input.new_zeros(C) if b is None else b,
                           float(eps))[0]
    return y if flat else y.reshape(shape)


# ----------------------------------------------------------------- cross entropy
@torch.library.custom_op("fusegrad::cross_entropy_forward", mutates_args=())
def _xent_fwd(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    loss, lse = _C.cross_entropy_forward(_n(logits), _n(targets), ignore_index)
    return _t(loss).to(logits.dtype).reshape(()), _t(lse)


@_xent_fwd.register_fake
def _(logits, targets, ignore_index):
    return logits.new_empty(()), logits.new_empty(logits.shape[:1])


@torch.library.custom_op("fusegrad::cross_entropy_backward", mutates_args=())
def _xent_bwd(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, dloss: torch.Tensor,
              ignore_index: int) -> torch.Tensor:
    return _t(_C.cross_entropy_backward(_n(logits), _n(targets), _n(lse), float(dloss), ignore_index))


@_xent_bwd.register_fake
def _(logits, targets, lse, dloss, ignore_index):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _xent_setup(ctx, inputs, output):
    logits, targets, ignore_index = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.ignore_index = ignore_index


def _xent_grad(ctx, dloss, dlse):
    logits, targets, lse = ctx.saved_tensors
    return _xent_bwd(logits, targets, lse, dloss, ctx.ignore_index), None, None


_xent_fwd.register_autograd(_xent_grad, setup_context=_xent_setup)


def _xent_loss(logits, targets, ignore_index):
    loss, lse = _C.cross_entropy_forward(_n(logits), _n(targets), ignore_index)
    return _t(np.asarray(loss, dtype=lse.dtype)).reshape(()), lse


class _CrossEntropy(torch.autograd.Function):
    """The eager path: the same kernels without the custom-op dispatch."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        loss, lse = _xent_loss(logits, targets, ignore_index)
        ctx.save_for_backward(logits, targets)
        ctx.lse, ctx.ignore_index = lse, ignore_index
        return loss

    @staticmethod
    def backward(ctx, dloss):
        logits, targets = ctx.saved_tensors
        return _t(_C.cross_entropy_backward(_n(logits), _n(targets), ctx.lse, float(dloss),
                                            ctx.ignore_index)), None, None


_xent_apply = _fast_apply(_CrossEntropy)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """``torch.nn.functional.cross_entropy`` on fusegrad's fused kernel (probabilities never stored).

    Native for ``input: (N, C)`` float logits, ``target: (N,)`` class indices, ``reduction='mean'``.

    >>> import torch, fusegrad.torch as fgt
    >>> x, t = torch.randn(4, 10), torch.tensor([1, 0, 9, 3])
    >>> torch.allclose(fgt.cross_entropy(x, t), torch.nn.functional.cross_entropy(x, t))
    True
    """
    def torch_op():
        return _pt_cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction,
                                 label_smoothing)

    name = "cross_entropy"
    mode = _native(name, input, also=(target,))
    if mode is None:
        return torch_op()
    if weight is not None or size_average is not None or reduce is not None or reduction != "mean" \
            or label_smoothing != 0.0:
        return _fallback(name, "options") or torch_op()
    if (input.dim() != 2 or target.dim() != 1 or target.shape[0] != input.shape[0]
            or target.dtype not in (torch.int64, torch.int32) or target.device != input.device):
        return _fallback(name, "shapes") or torch_op()
    if mode == CUDA:
        return _tc.CrossEntropy.apply(input, target, int(ignore_index)) if _use_cuda(name) else torch_op()
    if not _use(name, input.dtype, input.numel(), mode):
        return torch_op()
    if mode == 0:
        return _xent_fwd(input, target, int(ignore_index))[0]
    if mode == 2:
        return _xent_apply(input, target, int(ignore_index))
    return _xent_loss(input, target, int(ignore_index))[0]


# ----------------------------------------------------------------- gelu
@torch.library.custom_op("fusegrad::gelu_forward", mutates_args=())
def _gelu_fwd(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return _C._torch_gelu_forward(x.contiguous(), approximate)


@_gelu_fwd.register_fake
def _(x, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("fusegrad::gelu_backward", mutates_args=())
def _gelu_bwd(dy: torch.Tensor, x: torch.Tensor, approximate: str) -> torch.Tensor:
    return _C._torch_gelu_backward(dy.contiguous(), x.contiguous(), approximate)


@_gelu_bwd.register_fake
def _(dy, x, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _gelu_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.approximate = inputs[1]


def _gelu_grad(ctx, dy):
    (x,) = ctx.saved_tensors
    return _gelu_bwd(dy, x, ctx.approximate), None


_gelu_fwd.register_autograd(_gelu_grad, setup_context=_gelu_setup)


class _Gelu(torch.autograd.Function):
    """The eager path: the same kernels without the custom-op dispatch. The forward also computes
    gelu'(x) (sharing the erf/exp work; PyTorch's backward recomputes it from x) and keeps it
    instead of x (same memory, released after the backward as x would be): the backward is one
    multiply."""

    forward = staticmethod(_C._torch_gelu_ctx_forward)  # (ctx, x contiguous, approximate) -> y; saves gelu'(x)
    backward = staticmethod(_C._torch_gelu_ctx_backward)  # (ctx, dy) -> (dx, None)


_gelu_apply = _fast_apply(_Gelu)


def gelu(input, approximate="none"):
    """``torch.nn.functional.gelu`` (``approximate='none'`` (erf) or ``'tanh'``) on fusegrad's kernels.

    >>> import torch, fusegrad.torch as fgt
    >>> x = torch.randn(7)
    >>> torch.allclose(fgt.gelu(x, approximate="tanh"), torch.nn.functional.gelu(x, approximate="tanh"), atol=1e-6)
    True
    """
    if not _is_compiling():  # the common call decided and run in C++ (None: not one it takes)
        y = _C._torch_gelu_fast(input, approximate)
        if y is not None:
            return y
    mode = _native("gelu", input)
    if mode is None:
        return _pt_gelu(input, approximate=approximate)
    if approximate not in ("none", "tanh"):
        return _fallback("gelu", "approximate") or _pt_gelu(input, approximate=approximate)
    op = "gelu" if approximate == "none" else "gelu_tanh"
    if mode == CUDA:
        return _tc.Gelu.apply(input, approximate) if _use_cuda(op) else _pt_gelu(input, approximate=approximate)
    if not _use(op, input.dtype, input.numel(), mode):
        return _pt_gelu(input, approximate=approximate)
    if mode == 0:
        return _gelu_fwd(input, approximate)
    if mode == 2:
        return _gelu_apply(input.contiguous(), approximate)
    return _C._torch_gelu_forward(input.contiguous(), approximate)


# ----------------------------------------------------------------- linear
@torch.library.custom_op("fusegrad::linear_forward", mutates_args=())
def _linear_fwd(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    return _C._torch_linear_forward(x.contiguous(), w.contiguous(), None if b is None else b.contiguous())


@_linear_fwd.register_fake
def _(x, w, b):
    return x.new_empty((*x.shape[:-1], w.shape[0]))


@torch.library.custom_op("fusegrad::linear_backward", mutates_args=())
def _linear_bwd(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _C._torch_linear_backward(dy.contiguous(), x.contiguous(), w.contiguous())


@_linear_bwd.register_fake
def _(dy, x, w):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w),
            w.new_empty(w.shape[:1]))


def _linear_setup(ctx, inputs, output):
    x, w, b = inputs
    ctx.save_for_backward(x, w)
    ctx.has_bias = b is not None


def _linear_grad(ctx, dy):
    x, w = ctx.saved_tensors
    dx, dw, db = _linear_bwd(dy, x, w)
    return dx, dw, (db if ctx.has_bias else None)


_linear_fwd.register_autograd(_linear_grad, setup_context=_linear_setup)


class _Linear(torch.autograd.Function):
    """The eager path: the same kernels without the custom-op dispatch."""

    forward = staticmethod(_C._torch_linear_ctx_forward)  # (ctx, x (..., in), w, b contiguous) -> y; saves x, w
    backward = staticmethod(_C._torch_linear_ctx_backward)  # (ctx, dy) -> (dx, dw, db or None)


_linear_apply = _fast_apply(_Linear)

# The state the C++ fast paths decide from (their policy copy comes from _push_fast_policy).
_C._torch_fast_setup(nn.Parameter, _functorch_active, functools.partial(_autocast_on, "cpu"),
                     globals(), {op: (super(torch.autograd.Function, fn).apply, orig, _KEYS[op])
                                       for op, fn, orig in (("layer_norm", _LayerNorm, _pt_layer_norm),
                                                            ("gelu", _Gelu, _pt_gelu), ("gelu_tanh", _Gelu, _pt_gelu),
                                                            ("linear", _Linear, _pt_linear))})


def _linear_bf16_fwd(xn, w, b):
    """y (float32) = x w^T (+ b) with bf16 operands and float32 sums; the bias added in float32."""
    return _C.matmul_bf16(xn, _f32(w), trans_b=True, bias=None if b is None else _f32(b))


class _LinearBF16(torch.autograd.Function):
    """Under autocast: x, w, b (float32 or bfloat16) on the bf16 kernels, y in bfloat16; the
    backward's products in bf16 too (as torch's), gradients in each input's dtype."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.b = None if b is None else b.dtype
        return _bf(_linear_bf16_fwd(_f32(x), w, b))

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        g = _f32(dy)
        dx = _C.matmul_bf16(g, _f32(w))
        dw = _C.matmul_bf16(g, _f32(x), trans_a=True)
        db = None if ctx.b is None else _t(g.sum(0)).to(ctx.b)
        return _like(dx, x), _like(dw, w), db


_linear_bf16_apply = _fast_apply(_LinearBF16)


def linear(input, weight, bias=None):
    """``torch.nn.functional.linear``: ``y = input @ weight.T + bias``, weight ``(out, in)``, on fusegrad's matmul.

    >>> import torch, fusegrad.torch as fgt
    >>> x, w, b = torch.randn(2, 3, 4), torch.randn(5, 4), torch.randn(5)
    >>> torch.allclose(fgt.linear(x, w, b), torch.nn.functional.linear(x, w, b), atol=1e-5)
    True
    """
    if not _is_compiling():  # the common call decided and run in C++ (None: not one it takes)
        y = _C._torch_linear_fast(input, weight, bias)
        if y is not None:
            return y
    name = "linear"
    amp = _amp_bf16()
    ts = (input, weight) if bias is None else (input, weight, bias)
    mode = _native_amp(name, *ts) if amp else _native(name, *ts)
    if mode is None:
        return _pt_linear(input, weight, bias)
    if (input.dim() < 1 or weight.dim() != 2 or input.shape[-1] != weight.shape[1]
            or (bias is not None and tuple(bias.shape) != (weight.shape[0],))):
        return _fallback(name, "shapes") or _pt_linear(input, weight, bias)
    if not (_use_cuda(name) if mode == CUDA else
            _use(name, torch.bfloat16 if amp else input.dtype, input.numel() * weight.shape[0], mode)):
        return _pt_linear(input, weight, bias)
    if (mode == 1 or mode == 2) and not amp:  # the CPU entries take x (..., in) as it is: no reshapes
        x, w, b = input.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous()
        return _linear_apply(x, w, b) if mode == 2 else _C._torch_linear_forward(x, w, b)
    flat = input.dim() == 2
    x = input if flat else input.reshape(-1, weight.shape[1])
    if mode == CUDA:
        y = _tc.Linear.apply(x, weight, bias)
    elif amp:
        y = _linear_bf16_apply(x, weight, bias) if mode == 2 else _bf(_linear_bf16_fwd(_f32(x), weight, bias))
    else:  # mode 0: the custom op
        y = _linear_fwd(x, weight, bias)
    return y if flat else y.reshape(*input.shape[:-1], weight.shape[0])


# The Python Functions refuse a double backward through first_order_only; the C++ ones (_LayerNorm,
# _Gelu, _Linear) do it in their backward, which their nodes call straight: without
# BackwardCFunction.apply's Python frame a layer_norm 8x128 forward+backward runs 15k instructions
# fewer. (If a PyTorch stops calling the node class's apply, it calls the same backward.)
for _op, _fns in (("scaled_dot_product_attention", (_Attention, _AttentionBF16, _AttentionPacked)),
                  ("cross_entropy", (_CrossEntropy,)), ("linear", (_LinearBF16,))):
    for _fn in _fns:
        _fn.backward = _tc.first_order_only(_fn.backward, _op)
for _fn in (_LayerNorm, _Gelu, _Linear):
    if isinstance(getattr(_fn, "_backward_cls", None), type) and "apply" in vars(torch.autograd.function.BackwardCFunction):
        _fn._backward_cls.apply = _C._torch_node_apply(_fn.backward)

for _f in (scaled_dot_product_attention, layer_norm, cross_entropy, gelu, linear):
    _f._torch_original = ORIGINALS[_f.__name__]  # a later import finds PyTorch's op behind ours


# ----------------------------------------------------------------- modules and the one-call swap
class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` running ``fusegrad.torch.layer_norm`` (same parameters and state_dict)."""

    def forward(self, input):
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class GELU(nn.GELU):
    """``torch.nn.GELU`` running ``fusegrad.torch.gelu``."""

    def forward(self, input):
        return gelu(input, approximate=self.approximate)


class Linear(nn.Linear):
    """``torch.nn.Linear`` running ``fusegrad.torch.linear`` (same parameters and state_dict)."""

    def forward(self, input):
        return linear(input, self.weight, self.bias)


_MODULES = {nn.LayerNorm: LayerNorm, nn.GELU: GELU, nn.Linear: Linear}
_UNDO = {v: k for k, v in _MODULES.items()}
_FUNCTIONAL = {"scaled_dot_product_attention": scaled_dot_product_attention, "layer_norm": layer_norm,
               "cross_entropy": cross_entropy, "gelu": gelu, "linear": linear}


def optimize(model=None, *, inplace=True, functional=True):
    """Swap fusegrad's kernels into a PyTorch model in one call; returns the model.

    * Modules: every ``nn.LayerNorm``, ``nn.GELU`` and ``nn.Linear`` (exactly those classes, not
      subclasses) becomes :class:`LayerNorm`, :class:`GELU` or :class:`Linear`. Only the class
      changes: parameters, buffers, hooks and ``state_dict`` keys stay as they are.
    * ``functional=True`` (default): ``torch.nn.functional``'s ``scaled_dot_product_attention``,
      ``layer_norm``, ``cross_entropy``, ``gelu`` and ``linear`` are replaced by fusegrad's, for
      the whole process, so ``F.*`` calls in a model's ``forward`` (nanoGPT's attention and loss,
      ``nn.MultiheadAttention``) run them too. ``optimize()`` with no model does only this.
    * ``inplace=False``: swaps a deep copy and leaves ``model`` untouched.

    Every call still goes to PyTorch's original op where fusegrad's kernel is not faster or
    cannot run it (see ``set_policy``, ``dispatch_counts``). ``restore(model)`` undoes both.
    Call it before ``torch.compile(model)``: the compiled graph holds whichever ops it traced.

    >>> import torch, fusegrad.torch as fgt
    >>> m = fgt.optimize(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU()), functional=False)
    >>> type(m[0]).__module__, type(m[1]).__name__
    ('fusegrad.torch', 'GELU')
    >>> type(fgt.restore(m)[0]) is torch.nn.Linear
    True
    """
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"fusegrad.torch.optimize: model must be a torch.nn.Module, got {type(model).__name__}")
        if not inplace:
            model = copy.deepcopy(model)
    return _swap(model, _MODULES, _FUNCTIONAL if functional else None)


def _swap(model, classes, functions):
    """Give the model's modules of the classes' keys their values' classes, and F the functions."""
    for m in () if model is None else model.modules():
        if type(m) in classes:
            m.__class__ = classes[type(m)]
    for name, f in (functions or {}).items():
        setattr(F, name, f)
    return model


def restore(model=None, *, functional=True):
    """Undo ``optimize``: the model's swapped modules get their PyTorch classes back and (with
    ``functional=True``) ``torch.nn.functional`` gets PyTorch's original ops. Returns the model."""
    return _swap(model, _UNDO, ORIGINALS if functional else None)


# ----------------------------------------------------------------- AdamW
class AdamW(torch.optim.Optimizer):
    """``torch.optim.AdamW`` as one fused fusegrad kernel pass per parameter, in place on its memory.

    Same arguments, defaults, update formula and state (``step``, ``exp_avg``, ``exp_avg_sq``) as
    ``torch.optim.AdamW``, so its ``state_dict`` loads either way. Not supported: ``amsgrad``,
    ``maximize``, ``capturable``, ``differentiable`` (``ValueError``); ``foreach``/``fused`` are
    accepted and ignored. Parameters must be contiguous float32/float64 CPU tensors, or contiguous
float32 CUDA tensors (fusegrad._cuda's fused AdamW kernel on torch's current stream).

    >>> import torch, fusegrad.torch as fgt
    >>> w = torch.nn.Parameter(torch.ones(3)); opt = fgt.AdamW([w], lr=0.1, weight_decay=0.0)
    >>> w.sum().backward(); opt.step(); w.detach()
    tensor([0.9000, 0.9000, 0.9000])
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None):
        for flag, v in (("amsgrad", amsgrad), ("maximize", maximize), ("capturable", capturable),
                        ("differentiable", differentiable)):
            if v:
                raise ValueError(f"fusegrad.torch.AdamW: {flag}=True is not supported; use torch.optim.AdamW")
        if not 0.0 <= float(lr):
            raise ValueError(f"fusegrad.torch.AdamW: lr must be >= 0, got {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"fusegrad.torch.AdamW: eps must be >= 0, got {eps}")
        for i, b in enumerate(betas):
            if not 0.0 <= float(b) < 1.0:
                raise ValueError(f"fusegrad.torch.AdamW: betas[{i}] must be in [0, 1), got {b}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"fusegrad.torch.AdamW: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @staticmethod
    def _buffer(t, what):
        if t.device.type != "cpu":
            raise RuntimeError(f"fusegrad.torch.AdamW: {what} is on {t.device}; fusegrad's optimizer kernels "
                               f"run on CPU tensors and float32 CUDA tensors (with fusegrad.cuda available); "
                               f"use torch.optim.AdamW")
        if not t.is_contiguous():
            raise ValueError(f"fusegrad.torch.AdamW: {what} is non-contiguous (shape {tuple(t.shape)}, strides "
                             f"{t.stride()}); the update is written in place, so it must be contiguous")
        return t.detach().numpy()

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = (float(b) for b in group["betas"])
            lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("fusegrad.torch.AdamW does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                state["step"] += 1
                if p.device.type == "cuda":
                    why = _tc.adamw_step(p, p.grad, state["exp_avg"], state["exp_avg_sq"], int(state["step"].item()),
                                         lr, beta1, beta2, eps, wd)
                    if why:
                        raise RuntimeError(f"fusegrad.torch.AdamW: a parameter on {p.device} cannot be updated by "
                                           f"fusegrad._cuda ({why}); use torch.optim.AdamW")
                    continue
                _C.adamw_step(self._buffer(p, "a parameter"), _n(p.grad), self._buffer(state["exp_avg"], "exp_avg"),
                              self._buffer(state["exp_avg_sq"], "exp_avg_sq"), int(state["step"].item()),
                              lr, beta1, beta2, eps, wd)
        return loss
