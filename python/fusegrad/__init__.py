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

import numpy as _np

from . import _C
from . import ops
from ._config import get_num_threads, set_num_threads, show_config, empty_cache, memory_stats
from ._config import _install_host_cache, warn_isa_env as _warn_isa_env

from .tensor import (Tensor, tensor, no_grad, enable_grad, set_grad_enabled, inference_mode, is_grad_enabled,
                     set_default_dtype, get_default_dtype, zeros, ones, full, zeros_like, ones_like, full_like,
                     randn, rand, randint, arange, from_numpy, where, matmul, maximum, minimum, cat, stack, split)
from ._random import Generator, default_generator, manual_seed, initial_seed
from . import nn, optim, data
from .amp import autocast, is_autocast_enabled
from .checkpoint import save, load
from .models import GPT, GPTConfig

# dtype objects (NumPy's, so ``x.dtype == fusegrad.float32`` and ``np.zeros(2, fusegrad.int64)`` work)
float16, float32, float64 = _np.dtype(_np.float16), _np.dtype(_np.float32), _np.dtype(_np.float64)
int8, int16, int32, int64 = _np.dtype(_np.int8), _np.dtype(_np.int16), _np.dtype(_np.int32), _np.dtype(_np.int64)
uint8, bool_ = _np.dtype(_np.uint8), _np.dtype(_np.bool_)
half, double, short, long = float16, float64, int16, int64
globals().update({"float": float32, "int": int32, "bool": bool_})   # torch.float etc.; kept out of __all__

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

__all__ = ["autocast", "is_autocast_enabled", "ops", "Tensor", "tensor", "no_grad", "enable_grad", "set_grad_enabled", "inference_mode",
           "is_grad_enabled", "set_default_dtype", "get_default_dtype", "zeros", "ones", "full", "zeros_like",
           "ones_like", "full_like", "randn", "rand", "randint", "arange", "from_numpy", "where", "matmul", "maximum",
           "minimum",
           "cat", "stack", "split", "Generator", "default_generator", "manual_seed", "initial_seed", "save", "load",
           "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "half", "double", "short",
           "long", "nn", "optim", "data", "GPT", "GPTConfig", "get_num_threads", "set_num_threads", "show_config",
           "empty_cache", "memory_stats", "__version__"]
