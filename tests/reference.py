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


# --- layernorm ------------------------------------------------------------------------


# --- softmax_xent ---------------------------------------------------------------------


# --- loss -----------------------------------------------------------------------------


# --- embedding ------------------------------------------------------------------------


# --- optim ----------------------------------------------------------------------------


# --- attention ------------------------------------------------------------------------
