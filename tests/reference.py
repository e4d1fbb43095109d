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
