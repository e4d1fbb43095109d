"""Run-time configuration: kernel threads, ISA path, and a printable build summary."""
from __future__ import annotations

import platform

from . import _C


def get_num_threads() -> int:
    """Number of threads the kernels use (default: ``OMP_NUM_THREADS`` or the core count)."""
    return _C.get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the number of threads the kernels use (``n >= 1``)."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    _C.set_num_threads(n)


def _cuda_summary() -> str:
    try:
        from . import cuda  # noqa: F401
    except ImportError:
        return "not built"
    try:
        return "available" if cuda.is_available() else "built, no GPU found"
    except Exception as e:  # a broken driver must not break show_config
        return f"error: {e}"


def config() -> dict:
    """The build and run-time configuration as a dict."""
    return {
        "version": __import__("fusegrad").__version__,
        "machine": platform.machine(),
        "isa": _C.get_isa(),
        "cpu_has_avx2_fma": _C.cpu_has_avx2(),
        "avx2_compiled": _C.avx2_compiled(),
        "openmp": _C.have_openmp(),
        "num_threads": _C.get_num_threads(),
        "sanitized": bool(_C.sanitized),
        "cuda": _cuda_summary(),
    }


def show_config() -> None:
    """Print the ISA path, thread count, OpenMP and CUDA availability."""
    for k, v in config().items():
        print(f"{k:>18}: {v}")
