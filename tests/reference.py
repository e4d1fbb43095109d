"""NumPy float64 reference implementations, written for clarity, not speed.

One section per op stem, in the same order as csrc/ops. Every function takes and returns
float64 arrays (callers cast), with the same argument names as the kernel it checks.
"""
from __future__ import annotations

import numpy as np


def numerical_grad(f, x, eps=1e-6):
    """Central finite differences of the scalar function f at x (float64, any shape)."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f(x)
        x[i] = old - eps
        fm = f(x)
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


# --- matmul ---------------------------------------------------------------------------

def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b); op swaps the last two axes when trans_*; batch dims broadcast as in NumPy."""
    a = np.swapaxes(a, -1, -2) if trans_a else a
    b = np.swapaxes(b, -1, -2) if trans_b else b
    return np.matmul(np.asarray(a, np.float64), np.asarray(b, np.float64))


def matmul_error_bound(a, b, trans_a=False, trans_b=False, unit_roundoff=2.0**-24):
    """Rigorous bound on the rounding error of any summation order of a dot product of length k:
    |fl(op(a) @ op(b)) - op(a) @ op(b)| <= k * u * (|op(a)| @ |op(b)|) elementwise (Higham, 3.1),
    doubled to leave room for the rounding of the float64 reference and of the inputs' products."""
    k = (a.shape[-2] if trans_a else a.shape[-1])
    return 2 * k * unit_roundoff * matmul(np.abs(a), np.abs(b), trans_a, trans_b)


def linear_forward(x, w, b):
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    return y if b is None else y + b


def linear_backward(dy, x, w):
    dy2 = np.asarray(dy, np.float64).reshape(-1, w.shape[0])
    x2 = np.asarray(x, np.float64).reshape(-1, w.shape[1])
    dx = (dy2 @ w).reshape(x.shape)
    dw = dy2.T @ x2
    db = dy2.sum(axis=0)
    return dx, dw, db



# --- activations ----------------------------------------------------------------------

def relu_forward(x):
    return np.maximum(x, 0.0)


def relu_backward(dy, x):
    return np.where(x > 0, dy, 0.0)


def _phi_cdf(x):
    """Standard normal CDF, 0.5 * erfc(-x / sqrt 2) (accurate in the left tail)."""
    from math import erfc
    return 0.5 * np.vectorize(erfc, otypes=[np.float64])(-x / np.sqrt(2.0))


def gelu_forward(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    return x * _phi_cdf(x)


def gelu_backward(dy, x, approximate="none"):
    if approximate == "tanh":
        k = np.sqrt(2.0 / np.pi)
        with np.errstate(over="ignore", invalid="ignore"):
            t = np.tanh(k * (x + 0.044715 * x**3))
            g = 0.5 * (1 + t) + np.where(t * t == 1.0, 0.0, 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x))
        return dy * g
    return dy * (_phi_cdf(x) + x * np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi))


def sigmoid_forward(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def sigmoid_backward(dy, y):
    return dy * y * (1.0 - y)


def tanh_forward(x):
    return np.tanh(x)


def tanh_backward(dy, y):
    # (1 - y)(1 + y): exact 1 - |y| near saturation, where 1 - y*y cancels even in float64
    return dy * ((1.0 - y) * (1.0 + y))


# --- layernorm ------------------------------------------------------------------------

def layernorm_forward(x, weight, bias, eps=1e-5):
    mean = x.mean(axis=-1)
    var = ((x - mean[..., None]) ** 2).mean(axis=-1)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean[..., None]) * rstd[..., None]
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y, mean, rstd


def layernorm_backward(dy, x, weight, mean, rstd):
    C = x.shape[-1]
    xhat = (x - mean[..., None]) * rstd[..., None]
    g = dy * weight if weight is not None else dy
    dx = rstd[..., None] * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    dweight = (dy * xhat).reshape(-1, C).sum(0)
    dbias = dy.reshape(-1, C).sum(0)
    return dx, dweight, dbias


# --- softmax_xent ---------------------------------------------------------------------

def logsumexp(x):
    m = x.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]


def softmax_forward(x):
    return np.exp(x - logsumexp(x)[..., None])


def softmax_backward(dy, y):
    return y * (dy - (dy * y).sum(-1, keepdims=True))


def log_softmax_forward(x):
    return x - logsumexp(x)[..., None]


def log_softmax_backward(dy, y):
    return dy - np.exp(y) * dy.sum(-1, keepdims=True)


def cross_entropy_forward(logits, targets, ignore_index=-100):
    lse = logsumexp(logits)
    keep = targets != ignore_index
    rows = np.nonzero(keep)[0]
    losses = lse[rows] - logits[rows, targets[rows]]
    loss = losses.mean() if len(rows) else np.nan
    return loss, lse


def cross_entropy_backward(logits, targets, lse, dloss, ignore_index=-100):
    keep = targets != ignore_index
    count = keep.sum()
    d = np.exp(logits - lse[:, None])
    rows = np.nonzero(keep)[0]
    d[rows, targets[rows]] -= 1.0
    out = np.zeros_like(d)  # ignored rows get no gradient, even from a NaN dloss (as in PyTorch)
    if count:
        out[keep] = d[keep] * (dloss / count)
    return out


# --- loss -----------------------------------------------------------------------------

def mse_forward(pred, target):
    return np.mean((pred - target) ** 2)


def mse_backward(pred, target, dloss=1.0):
    return 2.0 * dloss * (pred - target) / pred.size


# --- embedding ------------------------------------------------------------------------

def embedding_forward(ids, table):
    return table[ids]


def embedding_backward(dout, ids, num_embeddings):
    C = dout.shape[-1]
    dtable = np.zeros((num_embeddings, C))
    np.add.at(dtable, ids.reshape(-1), dout.reshape(-1, C))
    return dtable


# --- optim ----------------------------------------------------------------------------
# In-place updates written out as in torch.optim's single-tensor code paths.

def sgd_step(param, grad, momentum_buf, lr, momentum=0.0, weight_decay=0.0, nesterov=False,
             dampening=0.0, first_step=False):
    g = grad + weight_decay * param
    if momentum != 0.0:
        if first_step:
            momentum_buf[...] = g
        else:
            momentum_buf[...] = momentum * momentum_buf + (1.0 - dampening) * g
        g = g + momentum * momentum_buf if nesterov else momentum_buf
    param -= lr * g


def adamw_step(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
               decoupled=True):
    g = grad
    if decoupled:
        param *= 1.0 - lr * weight_decay
    else:
        g = grad + weight_decay * param
    # torch.lerp's two-sided form (exact at beta1 = 0; an inf gradient then gives NaN, as in torch)
    w = 1.0 - beta1
    m[...] = m + w * (g - m) if w < 0.5 else g - (1.0 - w) * (g - m)
    v[...] = beta2 * v + (1.0 - beta2) * g * g
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    param -= (lr / bc1) * m / (np.sqrt(v) / np.sqrt(bc2) + eps)


def adam_step(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    adamw_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled=False)


# --- attention ------------------------------------------------------------------------

def _attention_probs(q, k, causal, scale):
    """P: (B, H, T, S) softmax probabilities with the bottom-right causal mask; rows with no
    visible key are all zeros. Also returns lse (B, H, T), -inf for such rows."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    kk = np.repeat(k, H // Hkv, axis=1)
    s = scale * np.einsum("bhtd,bhsd->bhts", q, kk)
    if causal:
        mask = np.arange(S)[None, :] > np.arange(T)[:, None] + (S - T)
        s = np.where(mask, -np.inf, s)
    m = s.max(axis=-1, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m_safe)
    z = e.sum(axis=-1, keepdims=True)
    p = np.where(z > 0, e / np.where(z > 0, z, 1.0), 0.0)
    with np.errstate(divide="ignore"):
        lse = np.where(z[..., 0] > 0, (m_safe + np.log(np.where(z > 0, z, 1.0)))[..., 0], -np.inf)
    return p, lse


def attention_forward(q, k, v, causal=False, scale=None):
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    p, lse = _attention_probs(q, k, causal, scale)
    H, Hkv = q.shape[1], k.shape[1]
    return np.einsum("bhts,bhsd->bhtd", p, np.repeat(v, H // Hkv, axis=1)), lse


def attention_backward(do, q, k, v, causal=False, scale=None):
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    p, _ = _attention_probs(q, k, causal, scale)
    kk, vv = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    dv = np.einsum("bhts,bhtd->bhsd", p, do)
    dp = np.einsum("bhtd,bhsd->bhts", do, vv)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))  # softmax backward
    dq = scale * np.einsum("bhts,bhsd->bhtd", ds, kk)
    dk = scale * np.einsum("bhts,bhtd->bhsd", ds, q)
    fold = lambda x: x.reshape(B, Hkv, G, *x.shape[2:]).sum(axis=2)  # sum the group's heads
    return dq, fold(dk), fold(dv)
