"""Kernel dispatch for the autograd layer: ``fusegrad.ops.<name>`` when the C++ kernel exists,
else a NumPy fallback defined here (same signature and semantics). Checked once at import."""
from __future__ import annotations

import math

import numpy as np

from . import _C
from . import _xp
from . import ops as _ops


def _c(a):
    return np.ascontiguousarray(a)


# ----- activations -----
def _relu_forward(x):
    return np.maximum(x, 0)


def _relu_backward(dy, x):
    return dy * (x > 0)


def _sigmoid_forward(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _sigmoid_backward(dy, y):
    return dy * y * (1 - y)


def _tanh_forward(x):
    return np.tanh(x)


def _tanh_backward(dy, y):
    return dy * ((1 - y) * (1 + y))    # as the kernel: exact 1 - |y| near saturation


_K = math.sqrt(2.0 / math.pi)


def _gelu_forward(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(_K * (x + 0.044715 * x**3)))
    from math import erf
    verf = np.vectorize(erf, otypes=[x.dtype])
    return 0.5 * x * (1 + verf(x / math.sqrt(2.0)))


def _gelu_backward(dy, x, approximate="none"):
    if approximate == "tanh":
        u = _K * (x + 0.044715 * x**3)
        t = np.tanh(u)
        return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _K * (1 + 3 * 0.044715 * x * x))
    from math import erf
    verf = np.vectorize(erf, otypes=[x.dtype])
    cdf = 0.5 * (1 + verf(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return dy * (cdf + x * pdf)


def _gelu_forward_with_grad(x, approximate="none"):
    return _gelu_forward(x, approximate), _gelu_backward(np.ones_like(x), x, approximate)


def _gelu_backward_from_grad(dy, dydx):
    return dy * dydx


# ----- softmax / log_softmax / cross entropy (last axis) -----
def _softmax_forward(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_backward(dy, y):
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def _log_softmax_forward(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _log_softmax_backward(dy, y):
    return dy - np.exp(y) * dy.sum(axis=-1, keepdims=True)


def _cross_entropy_forward(logits, targets, ignore_index=-100):
    m = logits.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[:, 0]
    valid = targets != ignore_index
    n = int(valid.sum())
    if np.any((targets[valid] < 0) | (targets[valid] >= logits.shape[1])):
        raise ValueError("cross_entropy_forward: targets out of range")
    idx = np.where(valid, targets, 0)
    picked = logits[np.arange(len(targets)), idx]
    loss = float(((lse - picked) * valid).sum() / max(n, 1)) if n else float("nan")
    return loss, lse.astype(logits.dtype)


def _cross_entropy_backward(logits, targets, lse, dloss, ignore_index=-100):
    valid = targets != ignore_index
    n = max(int(valid.sum()), 1)
    p = np.exp(logits - lse[:, None])
    idx = np.where(valid, targets, 0)
    p[np.arange(len(targets)), idx] -= 1
    p *= (valid[:, None] * (dloss / n))
    return p.astype(logits.dtype)


# ----- layernorm (last axis) -----
def _layernorm_forward(x, weight, bias, eps):
    mean = x.mean(axis=-1)
    var = ((x - mean[..., None]) ** 2).mean(axis=-1)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean[..., None]) * rstd[..., None] * weight + bias
    return y.astype(x.dtype), mean.astype(x.dtype), rstd.astype(x.dtype)


def _layernorm_backward(dy, x, weight, mean, rstd):
    xhat = (x - mean[..., None]) * rstd[..., None]
    C = x.shape[-1]
    dyw = dy * weight
    # dx = rstd * (dy*w - mean(dy*w) - xhat*mean(dy*w*xhat))
    dx = rstd[..., None] * (dyw - dyw.mean(-1, keepdims=True) - xhat * (dyw * xhat).mean(-1, keepdims=True))
    dw = (dy * xhat).reshape(-1, C).sum(0)
    db = dy.reshape(-1, C).sum(0)
    return dx.astype(x.dtype), dw.astype(x.dtype), db.astype(x.dtype)


# ----- matmul / linear -----
def _matmul(a, b, trans_a=False, trans_b=False, out=None, accumulate=False):
    if trans_a:
        a = np.swapaxes(a, -1, -2)
    if trans_b:
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b)


def _bf16(x):
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), r)


def round_bf16(x):
    """float32 values rounded to the nearest bfloat16 (ties to even; NaN stays NaN), as float32;
    a CuPy array stays on its GPU (fusegrad.cuda's rounding kernel, the same rule bit for bit)."""
    if _xp.is_cuda(x):
        from . import cuda
        return cuda._bf16_values(_xp.contiguous(x, np.float32))
    return _C._bf16_to_float32(_C._bf16_from_float32(np.ascontiguousarray(x, dtype=np.float32)))


def _matmul_bf16(a, b, trans_a=False, trans_b=False, out=None, accumulate=False, bias=None, residual=None):
    c = _matmul(_bf16(a), _bf16(b), trans_a, trans_b)
    if bias is not None:
        c = c + bias
    if residual is not None:
        c = residual + c
    if out is None:
        return c
    out[...] = out + c if accumulate else c
    return out


def _linear_forward(x, w, b, residual=None):
    y = x @ w.T
    if b is not None:
        y = y + b
    return residual + y if residual is not None else y


def _linear_backward(dy, x, w):
    C = x.shape[-1]
    dy2 = dy.reshape(-1, dy.shape[-1])
    return dy @ w, dy2.T @ x.reshape(-1, C), dy2.sum(0)


# ----- mse -----
def _mse_forward(pred, target):
    return float(np.mean((pred - target) ** 2))


def _mse_backward(pred, target, dloss):
    return (2.0 * dloss / pred.size) * (pred - target)


# ----- embedding -----
def _embedding_forward(ids, table):
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError("embedding_forward: ids out of range")
    return table[ids]


def _embedding_backward(dout, ids, num_embeddings, out=None, accumulate=False):
    d = np.zeros((num_embeddings, dout.shape[-1]), dtype=dout.dtype) if out is None else out
    if out is not None and not accumulate:
        d[...] = 0
    np.add.at(d, ids.reshape(-1), dout.reshape(-1, dout.shape[-1]))
    return d


# ----- attention -----
def _attention_logits(q, k, causal, scale):
    """Scaled, masked logits of the NumPy attention fallback, with the scale, the keys repeated
    over each kv head's group, and the group size."""
    T, D = q.shape[2], q.shape[3]
    S = k.shape[2]
    rep = q.shape[1] // k.shape[1]
    s = scale if scale is not None else 1.0 / math.sqrt(D)
    kr = np.repeat(k, rep, axis=1)
    logits = (q @ np.swapaxes(kr, -1, -2)) * s
    if causal:
        mask = np.arange(S)[None, :] > (np.arange(T)[:, None] + (S - T))
        logits = np.where(mask, -np.inf, logits)
    return logits, s, kr, rep


def _attention_forward(q, k, v, causal=False, scale=None, bf16=False):
    if bf16:  # mixed precision: the operands rounded to bf16 (P and dS are not: float64-like sums)
        q, k, v = _bf16(q), _bf16(k), _bf16(v)
    logits, _, _, rep = _attention_logits(q, k, causal, scale)
    v = np.repeat(v, rep, axis=1)
    m = logits.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(logits - m)
    z = e.sum(-1, keepdims=True)
    p = np.where(z > 0, e / np.where(z > 0, z, 1), 0)
    lse = (m + np.log(np.where(z > 0, z, 1)))[..., 0]
    lse = np.where(z[..., 0] > 0, lse, -np.inf)
    return (p @ v).astype(q.dtype), lse.astype(q.dtype)


def _attention_backward(do, q, k, v, o, lse, causal=False, scale=None, bf16=False):
    if bf16:
        do, q, k, v = _bf16(do), _bf16(q), _bf16(k), _bf16(v)
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    logits, s, kr, rep = _attention_logits(q, k, causal, scale)
    vr = np.repeat(v, rep, axis=1)
    fin = np.isfinite(lse)[..., None]
    p = np.where(fin, np.exp(logits - np.where(fin, lse[..., None], 0)), 0)
    dv = np.swapaxes(p, -1, -2) @ do
    dp = do @ np.swapaxes(vr, -1, -2)
    ds = p * (dp - (do * o).sum(-1, keepdims=True)) * s
    dq = ds @ kr
    dk = np.swapaxes(ds, -1, -2) @ q
    dk = dk.reshape(B, Hkv, rep, S, D).sum(2)
    dv = dv.reshape(B, Hkv, rep, S, D).sum(2)
    return dq.astype(q.dtype), dk.astype(q.dtype), dv.astype(q.dtype)


def _split_qkv(qkv, H, Hkv):
    B, T, W = qkv.shape
    x = qkv.reshape(B, T, H + 2 * Hkv, W // (H + 2 * Hkv)).transpose(0, 2, 1, 3)
    return _c(x[:, :H]), _c(x[:, H:H + Hkv]), _c(x[:, H + Hkv:])


def _attention_qkv_forward(qkv, n_head, n_kv_head=None, causal=False, scale=None, bf16=False):
    q, k, v = _split_qkv(qkv, n_head, n_kv_head or n_head)
    o, lse = attention_forward(q, k, v, causal, scale, bf16)  # the dispatched kernel (module global)
    B, H, T, D = o.shape
    return _c(o.transpose(0, 2, 1, 3)).reshape(B, T, H * D), lse


def _attention_qkv_backward(do, qkv, o, lse, n_head, n_kv_head=None, causal=False, scale=None, bf16=False):
    H, Hkv = n_head, n_kv_head or n_head
    q, k, v = _split_qkv(qkv, H, Hkv)
    B, T, W = qkv.shape
    D = W // (H + 2 * Hkv)

    def heads(a):
        return _c(a.reshape(B, T, H, D).transpose(0, 2, 1, 3))

    dq, dk, dv = attention_backward(heads(do), q, k, v, heads(o), lse, causal, scale, bf16)
    d = np.empty((B, T, H + 2 * Hkv, D), dtype=qkv.dtype)
    d[:, :, :H] = dq.transpose(0, 2, 1, 3)
    d[:, :, H:H + Hkv] = dk.transpose(0, 2, 1, 3)
    d[:, :, H + Hkv:] = dv.transpose(0, 2, 1, 3)
    return d.reshape(qkv.shape)


# ----- optimizer updates (in place) -----
def _sgd_step(param, grad, momentum_buf, lr, momentum, weight_decay, nesterov):
    g = grad + weight_decay * param if weight_decay else grad.copy()
    if momentum:
        momentum_buf *= momentum
        momentum_buf += g
        g = g + momentum * momentum_buf if nesterov else momentum_buf
    param -= lr * g


def _sum_squares(x):
    return float(np.sum(np.square(x, dtype=np.float64)))


def _adamw_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    param *= 1 - lr * weight_decay
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * grad * grad
    mhat = m / (1 - beta1**step)
    vhat = v / (1 - beta2**step)
    param -= lr * mhat / (np.sqrt(vhat) + eps)


_NAMES = [
    "relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward", "tanh_forward",
    "tanh_backward", "gelu_forward", "gelu_backward", "gelu_forward_with_grad", "gelu_backward_from_grad",
    "softmax_forward", "softmax_backward",
    "log_softmax_forward", "log_softmax_backward", "cross_entropy_forward",
    "cross_entropy_backward", "layernorm_forward", "layernorm_backward", "matmul",
    "linear_forward", "linear_backward", "mse_forward", "mse_backward", "embedding_forward",
    "embedding_backward", "attention_forward", "attention_backward", "attention_qkv_forward",
    "attention_qkv_backward", "sgd_step", "adamw_step", "sum_squares", "matmul_bf16",
]

#: which names run on the C++ kernels (the rest on the NumPy fallbacks above)
NATIVE = {n for n in _NAMES if hasattr(_ops, n)}
for _n in _NAMES:
    globals()[_n] = getattr(_ops, _n) if _n in NATIVE else globals()["_" + _n]
