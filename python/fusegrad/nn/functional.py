"""``fusegrad.nn.functional``: PyTorch-named functions on Tensors, each one autograd
``Function`` (calling a kernel through :mod:`fusegrad._kernels`) or a composite of them."""
from __future__ import annotations

import math

import numpy as np

from .. import _kernels as K
from .. import _random
from .. import _xp
from .. import amp as _amp
from ..tensor import (Function, Gelu, IndexedRows, Relu, Sigmoid, Tanh, Tensor, _kc, is_grad_enabled, log_softmax,
                      softmax)

__all__ = ["linear", "relu", "gelu", "sigmoid", "tanh", "silu", "leaky_relu", "softmax", "log_softmax", "layer_norm",
           "rms_norm", "embedding", "dropout", "mse_loss", "l1_loss", "cross_entropy", "nll_loss",
           "binary_cross_entropy_with_logits", "scaled_dot_product_attention"]


class _Linear(Function):
    """y = x @ w.T + b, or residual + (x @ w.T + b) with the residual added where the kernel
    stores y (a skip connection without a pass of its own; the same bits as adding afterwards)."""

    def saved_inputs(self):   # dx reads the weight, dweight the input
        return [i for i, need in ((1, self.needs[0]), (0, self.needs[1])) if need]

    def forward(self, x, w, b=None, residual=None):
        if x.ndim < 1 or w.ndim != 2:
            raise ValueError(f"linear: input must have at least 1 dimension and weight 2 (out, in), "
                             f"got input {x.shape} and weight {w.shape}")
        if x.shape[-1] != w.shape[1]:
            raise ValueError(f"linear: input has {x.shape[-1]} features, weight expects {w.shape[1]} "
                             f"(weight shape {w.shape})")
        self.x, self.w, self.has_b = _kc(x), _kc(w), b is not None
        if self.x.dtype != self.w.dtype:
            raise TypeError(f"linear: input dtype {x.dtype} differs from weight dtype {w.dtype}")
        N = math.prod(x.shape[:-1])  # not reshape(-1, C): C may be 0
        x2 = self.x.reshape(N, x.shape[-1])
        shape = x.shape[:-1] + (w.shape[0],)
        self.has_r = residual is not None
        if self.has_r:
            if residual.shape != shape:
                raise ValueError(f"linear: residual must have the output's shape {shape}, got {residual.shape}")
            residual = _kc(residual).reshape(N, w.shape[0])
        self.bf16 = _amp.is_autocast_enabled() and self.x.dtype == np.float32
        if self.bf16:  # autocast: bf16 operands, float32 sums; bias and residual added in float32
            y = K.matmul_bf16(x2, self.w, trans_b=True, bias=None if b is None else _kc(b), residual=residual)
        else:
            y = K.linear_forward(x2, self.w, _kc(b) if b is not None else None, residual)
        return y.reshape(shape)

    def backward(self, g):
        N = math.prod(self.x.shape[:-1])
        x2 = self.x.reshape(N, self.x.shape[-1])
        g2 = _kc(g).reshape(N, g.shape[-1])
        if self.bf16:  # the products of the backward pass in the forward pass's precision, as torch
            dx = K.matmul_bf16(g2, self.w)
            dw = K.matmul_bf16(g2, x2, trans_a=True)
            db = g2.sum(0) if self.has_b else None
        else:
            dx, dw, db = K.linear_backward(g2, x2, self.w)
        return dx.reshape(self.x.shape), dw, (db if self.has_b else None), (g if self.has_r else None)


def linear(input, weight, bias=None):
    """y = input @ weight.T + bias, weight in PyTorch's (out, in) layout."""
    if bias is None:
        return _Linear.apply(input, weight)
    return _Linear.apply(input, weight, bias)


def _linear_add(residual, input, weight, bias=None):
    """residual + linear(input, weight, bias) as one op (one kernel call, no separate add);
    residual must have the output's shape. The bits are those of the two ops."""
    return _Linear.apply(input, weight, bias, residual)


def relu(input):
    return Relu.apply(input)


def gelu(input, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return Gelu.apply(input, approximate=approximate)


def sigmoid(input):
    return Sigmoid.apply(input)


def tanh(input):
    return Tanh.apply(input)


class _LayerNorm(Function):
    def forward(self, x, w, b, eps=1e-5):
        self.shape = x.shape
        C = x.shape[-1]
        self.x = _kc(x).reshape(-1, C)
        self.w = _kc(w)
        y, self.mean, self.rstd = K.layernorm_forward(self.x, self.w, _kc(b), float(eps))
        return y.reshape(x.shape)

    def backward(self, g):
        dx, dw, db = K.layernorm_backward(_kc(g).reshape(self.x.shape), self.x, self.w, self.mean, self.rstd)
        return dx.reshape(self.shape), dw, db


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if len(ns) != 1 or input.ndim < 1 or input.shape[-1] != ns[0]:
        raise ValueError(f"layer_norm: normalized_shape {ns} must be the last dim of input {input.shape}")
    C = ns[0]
    if weight is None:
        weight = Tensor(_xp.xp(input.data).ones(C, dtype=input.dtype))
    if bias is None:
        bias = Tensor(_xp.xp(input.data).zeros(C, dtype=input.dtype))
    return _LayerNorm.apply(input, weight, bias, eps=eps)


class _Embedding(Function):
    saves = (0,)   # the ids
    def forward(self, ids, table):
        dt = _xp.asarray(ids).dtype
        if dt.kind not in "iu":
            # a float id would be truncated to a row silently; torch refuses them too
            raise TypeError(f"embedding: input must hold integer ids, got dtype {dt}")
        self.ids, self.n = _xp.contiguous(ids, dtype=np.int64), table.shape[0]
        if self.ids.size and (self.ids.min() < 0 or self.ids.max() >= self.n):
            raise ValueError(f"embedding: ids must be in [0, {self.n}), got range "
                             f"[{self.ids.min()}, {self.ids.max()}]")
        flat = self.ids.reshape(-1)
        return K.embedding_forward(flat, _kc(table)).reshape(ids.shape + (table.shape[1],))

    def backward(self, g):
        C = g.shape[-1]
        return None, IndexedRows(_kc(g).reshape(-1, C), self.ids.reshape(-1), self.n)


def embedding(input, weight):
    return _Embedding.apply(input, weight)


class _Dropout(Function):
    saves = ()   # the mask
    def forward(self, x, p, rng):
        self.mask = _xp.like((rng.random(x.shape) >= p).astype(x.dtype) / (1.0 - p), x)  # the CPU generator's mask
        return x * self.mask

    def backward(self, g):
        return (g * self.mask,)


def dropout(input, p=0.5, training=True, generator=None):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    return _Dropout.apply(input, p=p, rng=_random.rng(generator))


class _MSE(Function):
    def forward(self, pred, target):
        self.p, self.t = _kc(pred), _kc(target.astype(pred.dtype, copy=False))
        return _xp.asarray(K.mse_forward(self.p, self.t), dtype=pred.dtype)

    def backward(self, g):
        d = K.mse_backward(self.p, self.t, float(g))
        return d, -d


def mse_loss(input, target, reduction="mean"):
    for name, a in (("input", input), ("target", target)):
        dt = np.asarray(a.data if isinstance(a, Tensor) else a).dtype
        if dt.kind == "c":
            raise TypeError(f"mse_loss: {name} is complex ({dt}); real values expected")
    if input.shape != target.shape:
        raise ValueError(f"mse_loss: input shape {input.shape} and target shape {target.shape} differ")
    if reduction == "mean" and math.prod(input.shape):  # the fused kernel needs an element
        return _MSE.apply(input, target)
    d = (input - target) ** 2
    if reduction == "mean":
        return d.mean()  # of no elements: NaN, as in torch
    if reduction == "sum":
        return d.sum()
    if reduction == "none":
        return d
    raise ValueError(f"mse_loss: unknown reduction {reduction!r}")


class _CrossEntropy(Function):
    def forward(self, logits, targets, ignore_index=-100):
        self.x = _kc(logits)
        self.t = _xp.contiguous(targets, dtype=np.int64)
        self.ii = ignore_index
        if K.cross_entropy_forward is K._cross_entropy_forward:
            loss, self.lse = K.cross_entropy_forward(self.x, self.t, ignore_index)
        else:
            loss, self.lse = K.cross_entropy_forward(self.x, self.t, ignore_index=ignore_index)
        return _xp.asarray(loss, dtype=logits.dtype)

    def backward(self, g):
        # the kernel (native or NumPy) zeroes the ignored rows and averages over the others,
        # so it must be told which index is ignored (without it it assumed -100)
        return K.cross_entropy_backward(self.x, self.t, self.lse, float(g), ignore_index=self.ii), None


def _classes_last(input, target, name):
    """PyTorch's loss layout, classes on axis 1 of (N, C, d1, ...) logits with targets
    (N, d1, ...), or (C,) logits with a 0-d target, as (rows, C) logits with the class axis
    last (a contiguous transpose only for ndim > 2, so the fused kernel runs) and the targets
    flattened to match. Returns (x2, t, tshape, C, probs): probs is True for class-probability
    targets (floats of the input's shape), which come back as (rows, C) too."""
    if not isinstance(input, Tensor):
        input = Tensor(input)
    if input.ndim < 1:
        raise ValueError(f"{name}: input must be (C,), (N, C) or (N, C, d1, ...), got shape {input.shape}")
    if input.dtype.kind != "f":
        raise TypeError(f"{name}: input must be floating point, got {input.dtype}")
    tgt = target.data if isinstance(target, Tensor) else _xp.asarray(target)
    cd = 0 if input.ndim == 1 else 1
    C = input.shape[cd]
    perm = (0,) + tuple(range(2, input.ndim)) + (1,)
    x2 = input.reshape(1, C) if input.ndim == 1 else (input if input.ndim == 2 else
                                                       input.permute(perm).reshape(-1, C))
    if tgt.dtype.kind == "f":
        if tgt.shape != input.shape:
            raise ValueError(f"{name}: class-probability (float) target must have the input's shape "
                             f"{input.shape}, got {tgt.shape}")
        tt = target if isinstance(target, Tensor) else Tensor(tgt)
        tt = tt.reshape(1, C) if input.ndim == 1 else (tt if input.ndim == 2 else tt.permute(perm).reshape(-1, C))
        return x2, tt, input.shape[:cd] + input.shape[cd + 1:], C, True
    if tgt.dtype.kind not in "iu":
        raise TypeError(f"{name}: target must hold integer class indices (or class probabilities "
                        f"of the input's shape), got {tgt.dtype}")
    want = input.shape[:cd] + input.shape[cd + 1:]
    if tgt.shape != want:
        # a reshape alone would pair (4, 2) targets with (2, 4, C) logits silently
        raise ValueError(f"{name}: target shape {tgt.shape} must be the input's shape without its class "
                         f"dim {cd}, {want} (input {input.shape})")
    return x2, tgt.reshape(-1), tgt.shape, C, False


def _weights(weight, C, dtype, name):
    if weight is None:
        return None
    _constant(name, "weight", weight)
    w = np.asarray(weight.data if isinstance(weight, Tensor) else weight)
    if w.shape != (C,) or w.dtype.kind not in "iuf":
        raise ValueError(f"{name}: weight must be a real tensor of shape ({C},) (one per class), "
                         f"got {w.dtype} of shape {w.shape}")
    return w.astype(dtype)


def _nll(lp, t, w, ignore_index, reduction, label_smoothing, tshape, C, name):
    """Negative log-likelihood of integer targets ``t`` under (rows, C) log-probabilities
    ``lp``, with PyTorch's class weights, ignore_index and label smoothing:
    loss_i = (1 - ls) * -w[t_i] lp[i, t_i] + ls / C * -sum_c w_c lp[i, c]; ignored rows are 0;
    'mean' divides the sum by sum_i w[t_i] over the rows not ignored."""
    valid = t != ignore_index
    if np.any((t[valid] < 0) | (t[valid] >= C)):
        raise ValueError(f"{name}: target class out of range [0, {C})")
    sel = np.where(valid, t, 0)
    wt = (valid if w is None else w[sel] * valid).astype(lp.dtype)      # per-row weight, 0 if ignored
    loss = -lp[np.arange(len(t)), sel] * Tensor(wt)
    if label_smoothing:
        smooth = -(lp if w is None else lp * Tensor(w)).sum(1) * Tensor(valid.astype(lp.dtype))
        loss = loss * (1.0 - label_smoothing) + smooth * (label_smoothing / C)
    if reduction == "none":
        return loss.reshape(tshape)
    if reduction == "sum":
        return loss.sum()
    den = float(wt.sum())
    if not den:              # all rows ignored: nan, and gradients 0 (not nan), as in torch
        return loss.sum() * 0.0 + float("nan")
    return loss.sum() * (1.0 / den)


def _check_loss_args(name, reduction, label_smoothing=0.0, size_average=None, reduce=None):
    if size_average is not None or reduce is not None:
        raise TypeError(f"{name}: size_average and reduce are deprecated in torch and not supported; "
                        f"use reduction='mean'|'sum'|'none'")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{name}: unknown reduction {reduction!r} (use 'mean', 'sum' or 'none')")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing}")


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """Cross-entropy from logits, as ``torch.nn.functional.cross_entropy``: input (N, C),
    (N, C, d1, ...) (classes on axis 1) or (C,); target integer classes of the input's shape
    without C, or class probabilities of the input's shape; optional per-class ``weight``,
    ``ignore_index`` and ``label_smoothing``. ``reduction='none'`` returns the losses in the
    target's shape. The plain mean over class indices runs the fused kernel.

    >>> import fusegrad as fg
    >>> round(cross_entropy(fg.zeros(2, 4), fg.tensor([0, 3])).item(), 4)   # log 4
    1.3863
    """
    _check_loss_args("cross_entropy", reduction, label_smoothing, size_average, reduce)
    x2, t, tshape, C, probs = _classes_last(input, target, "cross_entropy")
    w = _weights(weight, C, x2.dtype, "cross_entropy")
    if probs:
        if ignore_index >= 0:
            raise ValueError("cross_entropy: ignore_index is not supported for class-probability targets")
        if label_smoothing:
            t = t * (1.0 - label_smoothing) + label_smoothing / C
        lp = log_softmax(x2, -1)
        loss = -(lp * (t if w is None else t * Tensor(w))).sum(1)
        if reduction == "none":
            return loss.reshape(tshape)
        return loss.sum() if reduction == "sum" else loss.sum() * (1.0 / len(loss) if len(loss) else float("nan"))
    if reduction == "mean" and w is None and not label_smoothing:
        valid = t != ignore_index
        if np.any((t[valid] < 0) | (t[valid] >= C)):
            raise ValueError(f"cross_entropy: target class out of range [0, {C})")
        return _CrossEntropy.apply(x2, t, ignore_index=ignore_index)
    return _nll(log_softmax(x2, -1), t, w, ignore_index, reduction, label_smoothing, tshape, C, "cross_entropy")


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    """Negative log-likelihood of log-probabilities (``log_softmax`` output) with
    ``cross_entropy``'s layouts, weights and ignore_index (class-index targets only)."""
    _check_loss_args("nll_loss", reduction, 0.0, size_average, reduce)
    x2, t, tshape, C, probs = _classes_last(input, target, "nll_loss")
    if probs:
        raise TypeError("nll_loss: target must hold integer class indices")
    return _nll(x2, t, _weights(weight, C, x2.dtype, "nll_loss"), ignore_index, reduction, 0.0, tshape, C, "nll_loss")


class _Attention(Function):
    def forward(self, q, k, v, causal=False, scale=None):
        self.q, self.k, self.v = _kc(q), _kc(k), _kc(v)
        self.causal, self.scale = causal, scale
        # autocast: bf16 operands of the products, float32 softmax statistics (backward alike; on
        # CuPy arrays the tensor-core kernels)
        bf16 = _amp.is_autocast_enabled() and self.q.dtype == np.float32
        self.kw = {"bf16": True} if bf16 else {}
        self.o, self.lse = K.attention_forward(self.q, self.k, self.v, causal, scale, **self.kw)
        return self.o

    def backward(self, g):
        return K.attention_backward(_kc(g), self.q, self.k, self.v, self.o, self.lse, self.causal, self.scale,
                                    **self.kw)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """softmax(scale * Q K^T [+ causal mask]) V with q (B, H, T, D), k/v (B, Hkv, S, D).

    With ``is_causal`` and T != S the mask is aligned bottom-right: query i sees keys up to
    S - T + i, what decoding with a key/value cache needs. PyTorch aligns it top-left (query i
    sees keys up to i); the two agree when T == S."""
    if attn_mask is not None or dropout_p:
        raise NotImplementedError("scaled_dot_product_attention: attn_mask and dropout_p are not supported")
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError("scaled_dot_product_attention: expected 4-D (B, H, T, D) query, key, value")
    if key.shape != value.shape or query.shape[-1] != key.shape[-1] or query.shape[1] % key.shape[1]:
        raise ValueError(f"scaled_dot_product_attention: incompatible shapes q {query.shape}, "
                         f"k {key.shape}, v {value.shape}")
    return _Attention.apply(query, key, value, causal=bool(is_causal), scale=scale)


def silu(input):
    """x * sigmoid(x) (also called swish)."""
    return input * Sigmoid.apply(input)


class _LeakyRelu(Function):
    def forward(self, x, slope):
        self.scale = np.where(x > 0, 1.0, slope).astype(x.dtype)
        return x * self.scale

    def backward(self, g):
        return (g * self.scale,)


def leaky_relu(input, negative_slope=0.01):
    """x where x > 0, else negative_slope * x (the gradient at 0 is negative_slope, as in torch)."""
    return _LeakyRelu.apply(input, slope=float(negative_slope))


def _reduce(loss, reduction, name):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{name}: unknown reduction {reduction!r} (use 'mean', 'sum' or 'none')")


def l1_loss(input, target, reduction="mean"):
    """|input - target| reduced; the gradient at a zero difference is 0, as in torch."""
    if input.shape != tuple(np.shape(target.data if isinstance(target, Tensor) else target)):
        raise ValueError(f"l1_loss: input shape {input.shape} and target shape {np.shape(target)} differ")
    return _reduce((input - target).abs(), reduction, "l1_loss")


class _BCEWithLogits(Function):
    """loss = (1 - t) x - lw log(sigmoid(x)), lw = 1 + (pos_weight - 1) t, computed with
    log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)) so large |x| neither overflows nor loses it."""

    def forward(self, x, t, pw=None):
        self.x, self.t, self.pw = x, t, pw
        self.ls = np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))          # log sigmoid(x)
        self.lw = 1.0 if pw is None else 1.0 + (pw - 1.0) * t
        return (1.0 - t) * x - self.lw * self.ls

    def backward(self, g):
        sig_neg = np.exp(np.minimum(-self.x, 0) - np.log1p(np.exp(-np.abs(self.x))))   # sigmoid(-x)
        dx = g * ((1.0 - self.t) - self.lw * sig_neg)
        dt = g * (-self.x - (0.0 if self.pw is None else (self.pw - 1.0) * self.ls))
        return dx, dt, None


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """Binary cross-entropy of sigmoid(input) against ``target`` in [0, 1], from logits (stable
    for any magnitude); ``weight`` scales each element, ``pos_weight`` the positive term per
    class (broadcast over the last dim), as in torch."""
    _check_loss_args("binary_cross_entropy_with_logits", reduction, 0.0, size_average, reduce)
    t = target if isinstance(target, Tensor) else Tensor(np.asarray(target))
    if t.shape != input.shape:
        raise ValueError(f"binary_cross_entropy_with_logits: target shape {t.shape} must equal the input's "
                         f"shape {input.shape}")
    if input.dtype.kind != "f":
        raise TypeError(f"binary_cross_entropy_with_logits: input must be floating point, got {input.dtype}")
    t = t.to(input.dtype)
    for arg, a in (("weight", weight), ("pos_weight", pos_weight)):
        _constant("binary_cross_entropy_with_logits", arg, a)
    pw = None if pos_weight is None else np.asarray(getattr(pos_weight, "data", pos_weight), dtype=input.dtype)
    loss = _BCEWithLogits.apply(input, t, pw=pw)
    if weight is not None:
        loss = loss * Tensor(np.asarray(getattr(weight, "data", weight), dtype=input.dtype))
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def _constant(name, arg, a):
    """torch refuses a class/element weight that requires grad where autograd records (it has no
    derivative for it); so does fusegrad, instead of silently treating it as a constant."""
    if isinstance(a, Tensor) and a.requires_grad and is_grad_enabled():
        raise RuntimeError(f"{name}: not differentiable with respect to {arg}, which cannot require grad "
                           f"(as in torch); pass {arg}.detach()")


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """x / sqrt(mean(x^2 over the last len(normalized_shape) dims) + eps) * weight; eps None
    means the dtype's machine epsilon, as in torch."""
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if input.ndim < len(ns) or tuple(input.shape[input.ndim - len(ns):]) != ns:
        raise ValueError(f"rms_norm: normalized_shape {ns} must be the last dims of input {input.shape}")
    eps = float(np.finfo(input.dtype).eps) if eps is None else float(eps)
    dims = tuple(range(input.ndim - len(ns), input.ndim))
    y = input * ((input * input).mean(dims, keepdim=True) + eps) ** -0.5
    return y if weight is None else y * weight
