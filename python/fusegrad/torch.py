"""PyTorch adapter: fusegrad's CPU kernels as ``torch.library`` custom ops with autograd.

Drop-in replacements with the signatures of their ``torch.nn.functional`` / ``torch.optim``
counterparts, so swapping is a one-line change::

    import fusegrad.torch as fgt
    y = fgt.scaled_dot_product_attention(q, k, v, is_causal=True)   # was F.scaled_dot_product_attention
    y = fgt.layer_norm(x, (C,), w, b)                               # was F.layer_norm
    opt = fgt.AdamW(model.parameters(), lr=3e-4)                    # was torch.optim.AdamW

Each function is a custom op (``torch.ops.fusegrad.*``) with a fake (meta) implementation and a
registered backward, so it runs in eager mode and under ``torch.compile(fullgraph=True)`` without
graph breaks. Tensors reach the kernels as NumPy views of their memory (no copy when
contiguous) and results come back as tensors over the kernels' output buffers (no copy).

Unsupported arguments: the adapters fall back to PyTorch's own op rather than raising, so that
swapping the import never breaks a model that works with ``torch.nn.functional``; each fallback is
counted in ``fallback_counts`` (reason -> calls; under ``torch.compile`` it counts once per trace),
so a user (or a test) can check that the fusegrad kernels really ran. Fallbacks happen for: non-CPU
tensors (until ``fusegrad._cuda`` exists), dtypes other than float32/float64, and options the
kernels lack (``attn_mask``, ``dropout_p > 0``, ``is_causal`` with a query length different from
the key length (PyTorch aligns that mask top-left, our kernel bottom-right), class weights, label
smoothing, reductions other than ``'mean'``, inputs other than ``(N, C)`` logits, ...). The
optimizer is the exception: ``AdamW`` raises ``ValueError`` for options it lacks (``amsgrad``,
``maximize``, ...) and ``RuntimeError`` for CUDA parameters, since silently running another
optimizer would change a training run.

This module imports torch (>= 2.4, for ``torch.library.custom_op``); fusegrad itself never depends
on it, and no libtorch is linked into fusegrad's C++ extension: tensors cross over as NumPy views.
"""
import collections
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

if not hasattr(torch.library, "custom_op"):  # added in torch 2.4
    raise ImportError(f"fusegrad.torch needs torch >= 2.4 (torch.library.custom_op); found torch {torch.__version__}")

from . import _C

__all__ = ["scaled_dot_product_attention", "layer_norm", "cross_entropy", "gelu", "linear", "AdamW",
           "fallback_counts", "KERNELS"]

#: fusegrad kernels each adapter needs; a missing one makes the adapter fall back to PyTorch
KERNELS = {
    "scaled_dot_product_attention": ("attention_forward", "attention_backward"),
    "layer_norm": ("layernorm_forward", "layernorm_backward"),
    "cross_entropy": ("cross_entropy_forward", "cross_entropy_backward"),
    "gelu": ("gelu_forward", "gelu_backward"),
    "linear": ("linear_forward", "linear_backward"),
    "AdamW": ("adamw_step",),
}

#: how often each adapter handed a call to PyTorch's own op, by reason (see the module docstring)
fallback_counts = collections.Counter()

_FLOATS = (torch.float32, torch.float64)


def _have(name):
    return all(hasattr(_C, k) for k in KERNELS[name])


def _native(name, *ts):
    """True when the fusegrad kernels can run these tensors; else count the fallback reason."""
    if not _have(name):
        reason = "kernel not built"
    elif any(t.device.type != "cpu" for t in ts):
        reason = "device"
    elif any(t.dtype not in _FLOATS or t.dtype != ts[0].dtype for t in ts):
        reason = "dtype"
    else:
        return True
    fallback_counts[f"{name}: {reason}"] += 1
    return False


def _fallback(name, reason):
    fallback_counts[f"{name}: {reason}"] += 1
    return False


def _n(t):
    """A CPU tensor as a NumPy array over the same memory (copied only if non-contiguous)."""
    return t.detach().contiguous().numpy()


def _t(a):
    return torch.from_numpy(np.asarray(a))


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
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)

    name = "scaled_dot_product_attention"
    if not _native(name, query, key, value):
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
    o, _ = _attention_fwd(q, k, v, bool(is_causal), None if scale is None else float(scale))
    return o if nd == 4 else o.squeeze(1)


# ----------------------------------------------------------------- layer norm
@torch.library.custom_op("fusegrad::layernorm_forward", mutates_args=())
def _layernorm_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, mean, rstd = _C.layernorm_forward(_n(x), _n(weight), _n(bias), eps)
    return _t(y), _t(mean), _t(rstd)


@_layernorm_fwd.register_fake
def _(x, weight, bias, eps):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape[:-1]),
            x.new_empty(x.shape[:-1]))


@torch.library.custom_op("fusegrad::layernorm_backward", mutates_args=())
def _layernorm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                   rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db = _C.layernorm_backward(_n(dy), _n(x), _n(weight), _n(mean), _n(rstd))
    return _t(dx), _t(dw), _t(db)


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


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``torch.nn.functional.layer_norm`` on fusegrad's one-pass kernels.

    >>> import torch, fusegrad.torch as fgt
    >>> x = torch.randn(2, 3, 8)
    >>> torch.allclose(fgt.layer_norm(x, (8,)), torch.nn.functional.layer_norm(x, (8,)), atol=1e-5)
    True
    """
    def torch_op():
        return F.layer_norm(input, normalized_shape, weight, bias, eps)

    name = "layer_norm"
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    ts = [t for t in (input, weight, bias) if t is not None]
    if not _native(name, *ts):
        return torch_op()
    k = len(ns)
    if k == 0 or input.dim() < k or tuple(input.shape[-k:]) != ns or any(
            t is not None and tuple(t.shape) != ns for t in (weight, bias)):
        return _fallback(name, "shapes") or torch_op()
    C = math.prod(ns)
    w = input.new_ones(C) if weight is None else weight.reshape(C)
    b = input.new_zeros(C) if bias is None else bias.reshape(C)
    y, _, _ = _layernorm_fwd(input.reshape(-1, C), w, b, float(eps))
    return y.reshape(input.shape)


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
        return F.cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction,
                               label_smoothing)

    name = "cross_entropy"
    if not _native(name, input):
        return torch_op()
    if weight is not None or size_average is not None or reduce is not None or reduction != "mean" \
            or label_smoothing != 0.0:
        return _fallback(name, "options") or torch_op()
    if (input.dim() != 2 or target.dim() != 1 or target.shape[0] != input.shape[0]
            or target.dtype not in (torch.int64, torch.int32) or target.device != input.device):
        return _fallback(name, "shapes") or torch_op()
    loss, _ = _xent_fwd(input, target, int(ignore_index))
    return loss


# ----------------------------------------------------------------- gelu
@torch.library.custom_op("fusegrad::gelu_forward", mutates_args=())
def _gelu_fwd(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return _t(_C.gelu_forward(_n(x), approximate))


@_gelu_fwd.register_fake
def _(x, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("fusegrad::gelu_backward", mutates_args=())
def _gelu_bwd(dy: torch.Tensor, x: torch.Tensor, approximate: str) -> torch.Tensor:
    return _t(_C.gelu_backward(_n(dy), _n(x), approximate))


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


def gelu(input, approximate="none"):
    """``torch.nn.functional.gelu`` (``approximate='none'`` (erf) or ``'tanh'``) on fusegrad's kernels.

    >>> import torch, fusegrad.torch as fgt
    >>> x = torch.randn(7)
    >>> torch.allclose(fgt.gelu(x, approximate="tanh"), torch.nn.functional.gelu(x, approximate="tanh"), atol=1e-6)
    True
    """
    if not _native("gelu", input) or (approximate not in ("none", "tanh") and not _fallback("gelu", "approximate")):
        return F.gelu(input, approximate=approximate)
    return _gelu_fwd(input, approximate)


# ----------------------------------------------------------------- linear
@torch.library.custom_op("fusegrad::linear_forward", mutates_args=())
def _linear_fwd(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    return _t(_C.linear_forward(_n(x), _n(w), None if b is None else _n(b)))


@_linear_fwd.register_fake
def _(x, w, b):
    return x.new_empty((*x.shape[:-1], w.shape[0]))


@torch.library.custom_op("fusegrad::linear_backward", mutates_args=())
def _linear_bwd(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db = _C.linear_backward(_n(dy), _n(x), _n(w))
    return _t(dx), _t(dw), _t(db)


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


def linear(input, weight, bias=None):
    """``torch.nn.functional.linear``: ``y = input @ weight.T + bias``, weight ``(out, in)``, on fusegrad's matmul.

    >>> import torch, fusegrad.torch as fgt
    >>> x, w, b = torch.randn(2, 3, 4), torch.randn(5, 4), torch.randn(5)
    >>> torch.allclose(fgt.linear(x, w, b), torch.nn.functional.linear(x, w, b), atol=1e-5)
    True
    """
    name = "linear"
    ts = [t for t in (input, weight, bias) if t is not None]
    if not _native(name, *ts):
        return F.linear(input, weight, bias)
    if (input.dim() < 1 or weight.dim() != 2 or input.shape[-1] != weight.shape[1]
            or (bias is not None and tuple(bias.shape) != (weight.shape[0],))):
        return _fallback(name, "shapes") or F.linear(input, weight, bias)
    y = _linear_fwd(input.reshape(-1, weight.shape[1]), weight, bias)
    return y.reshape(*input.shape[:-1], weight.shape[0])


# ----------------------------------------------------------------- AdamW
class AdamW(torch.optim.Optimizer):
    """``torch.optim.AdamW`` as one fused fusegrad kernel pass per parameter, in place on its memory.

    Same arguments, defaults, update formula and state (``step``, ``exp_avg``, ``exp_avg_sq``) as
    ``torch.optim.AdamW``, so its ``state_dict`` loads either way. Not supported: ``amsgrad``,
    ``maximize``, ``capturable``, ``differentiable`` (``ValueError``); ``foreach``/``fused`` are
    accepted and ignored. Parameters must be contiguous float32/float64 CPU tensors.

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
                               f"run on CPU tensors (fusegrad._cuda is not built); use torch.optim.AdamW")
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
                _C.adamw_step(self._buffer(p, "a parameter"), _n(p.grad), self._buffer(state["exp_avg"], "exp_avg"),
                              self._buffer(state["exp_avg_sq"], "exp_avg_sq"), int(state["step"].item()),
                              lr, beta1, beta2, eps, wd)
        return loss
