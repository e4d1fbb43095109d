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
    m += (1.0 - beta1) * (g - m)
    v[...] = beta2 * v + (1.0 - beta2) * g * g
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    param -= (lr / bc1) * m / (np.sqrt(v) / np.sqrt(bc2) + eps)


def adam_step(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    adamw_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled=False)


# --- attention ------------------------------------------------------------------------
