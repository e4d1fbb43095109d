"""The kernel API on raw arrays: ``fusegrad.ops.<op>_forward`` / ``<op>_backward``.

Every function validates its arguments (``TypeError`` for dtypes, ``ValueError`` for shapes
and values, each message naming the argument) and runs a C++ kernel with the GIL released.
Inputs are NumPy arrays, float32 or float64, C-contiguous.
"""
from __future__ import annotations

from . import _C

_CONFIG = {
    "get_num_threads", "set_num_threads", "have_openmp", "cpu_has_avx2", "avx2_compiled",
    "get_isa", "set_isa", "peak_fma_gflops", "copy_bandwidth_gbs", "sanitized",
}

__all__ = sorted(n for n in dir(_C) if not n.startswith("_") and n not in _CONFIG)
globals().update({n: getattr(_C, n) for n in __all__})
