"""fusegrad: a small, fast training engine.

Hot kernels are C++ (``fusegrad._C``, with AVX2 and AVX-512 paths chosen at run time and an
optional CUDA module); this package is the thin Python layer over them: the kernel API
(:mod:`fusegrad.ops`), tensors with autograd, ``nn``, ``optim``, data, models and a CLI.

>>> import fusegrad, numpy as np
>>> fusegrad.ops.relu_forward(np.array([-1.0, 2.0], dtype=np.float32))
array([0., 2.], dtype=float32)
"""
from __future__ import annotations

import warnings as _warnings

from . import _C
from . import ops
from ._config import get_num_threads, set_num_threads, show_config, empty_cache, memory_stats
from ._config import _install_host_cache, warn_isa_env as _warn_isa_env

from .tensor import Tensor, tensor, no_grad, is_grad_enabled, zeros, ones, randn, cat, stack, split
from . import nn, optim, data
from .amp import autocast, is_autocast_enabled
from .models import GPT, GPTConfig

__version__ = "0.1.0"

_install_host_cache()
_warn_isa_env()

if not _C.have_openmp():
    _warnings.warn(
        "fusegrad was built without OpenMP: kernels run on a single thread. "
        "Rebuild with a compiler that supports OpenMP (e.g. gcc, or clang with libomp).",
        RuntimeWarning,
        stacklevel=2,
    )

__all__ = ["autocast", "is_autocast_enabled", "ops", "Tensor", "tensor", "no_grad", "is_grad_enabled", "zeros", "ones", "randn",
           "cat", "stack", "split", "nn", "optim", "data", "GPT", "GPTConfig", "get_num_threads", "set_num_threads", "show_config", "empty_cache", "memory_stats", "__version__"]
