"""``fusegrad.nn.utils``: gradient clipping."""
from __future__ import annotations

import math

import numpy as np

from .. import _kernels as K


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False):
    """Scale gradients in place so their total norm is at most ``max_norm``; returns the norm."""
    from ..tensor import Tensor

    if not max_norm >= 0:                                         # NaN included
        raise ValueError(f"clip_grad_norm_: max_norm must be >= 0, got {max_norm}")
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad.data for p in parameters if p.grad is not None]
    if not grads:
        return Tensor(np.asarray(0.0, dtype=np.float32))
    if norm_type == math.inf:
        total = max(float(np.abs(g).max()) for g in grads)
    elif norm_type == 2.0:  # one pass per gradient, summed in float64 (no float64 copies)
        native = lambda g: g.dtype in (np.float32, np.float64) and g.flags.c_contiguous  # noqa: E731
        total = math.sqrt(sum(K.sum_squares(g) if native(g) else K._sum_squares(g) for g in grads))
    else:
        total = float(sum(float((np.abs(g.astype(np.float64)) ** norm_type).sum()) for g in grads)) ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of gradients is {total}")
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return Tensor(np.asarray(total, dtype=grads[0].dtype))
