"""``fusegrad.nn.init``: in-place initializers with PyTorch's names and formulas."""
from __future__ import annotations

import math

import numpy as np

from .. import _random

def manual_seed(seed: int) -> None:
    """Seed every random source (``fusegrad.manual_seed``; kept here for older scripts)."""
    _random.manual_seed(seed)


def _fan(t):
    shape = t.shape
    if len(shape) < 2:
        raise ValueError("fan in/out needs a tensor with at least 2 dimensions")
    rf = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * rf, shape[0] * rf


def uniform_(t, a=0.0, b=1.0):
    t.data[...] = _random.rng().uniform(a, b, t.shape)
    return t


def normal_(t, mean=0.0, std=1.0):
    t.data[...] = _random.rng().normal(mean, std, t.shape)
    return t


def zeros_(t):
    t.data[...] = 0
    return t


def ones_(t):
    t.data[...] = 1
    return t


def constant_(t, val):
    t.data[...] = val
    return t


def kaiming_uniform_(t, a=0.0, nonlinearity="leaky_relu"):
    fan_in, _ = _fan(t)
    if t.data.size == 0:                    # nothing to fill (and fan_in may be 0), as in torch
        return t
    gain = math.sqrt(2.0 / (1 + a * a)) if nonlinearity == "leaky_relu" else (math.sqrt(2.0) if nonlinearity == "relu" else 1.0)
    bound = gain * math.sqrt(3.0 / fan_in)
    return uniform_(t, -bound, bound)


def xavier_uniform_(t, gain=1.0):
    fi, fo = _fan(t)
    if t.data.size == 0:
        return t
    a = gain * math.sqrt(6.0 / (fi + fo))
    return uniform_(t, -a, a)
