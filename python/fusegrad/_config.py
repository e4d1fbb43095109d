"""Run-time configuration: kernel threads, ISA path, the host memory cache, and a printable
build summary."""
from __future__ import annotations

import os
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


# --- host memory cache ------------------------------------------------------------------------
# NumPy array data of 128 KiB and more is allocated from fusegrad's caching allocator (NEP 49
# handler, csrc/core/host_cache.h): a training step frees and re-allocates the same large
# arrays every step, and fresh memory costs a page fault and a page zeroing per 4 KiB
# (measured: 20% of a small GPT step). Idle blocks are kept up to a limit.
_CACHE_ENV = "FUSEGRAD_HOST_CACHE_MB"
_DEFAULT_CACHE_MB = 1024


def _cache_limit_from_env() -> int:
    raw = os.environ.get(_CACHE_ENV, "").strip()
    if not raw:
        return _DEFAULT_CACHE_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"{_CACHE_ENV} must be a number of MiB (0 disables the cache), got {raw!r}") from None
    if not mb >= 0:
        raise ValueError(f"{_CACHE_ENV} must be >= 0, got {raw!r}")
    return int(mb * (1 << 20))


def _install_host_cache() -> bool:
    limit = _cache_limit_from_env()
    _C._alloc_set_limit(limit)
    return limit > 0 and _C._alloc_use_cache(True)


def empty_cache() -> None:
    """Free the idle blocks of the host memory cache (arrays in use are not affected)."""
    _C.empty_cache()


def memory_stats() -> dict:
    """Host memory cache counters: ``cached_bytes`` / ``cached_blocks`` (idle, kept for reuse),
    ``live_bytes`` / ``live_blocks`` (cached-size blocks in use), ``limit_bytes``, ``hits``,
    ``misses``, and ``enabled`` (whether NumPy allocates from the cache in this context)."""
    d = dict(_C.memory_stats())
    d["enabled"] = _handler_name() == "fusegrad_cache"
    return d


def _handler_name() -> str:
    try:
        from numpy._core.multiarray import get_handler_name  # NumPy 2
    except ImportError:
        from numpy.core.multiarray import get_handler_name  # NumPy 1.x
    return get_handler_name()


def _cuda_summary() -> str:
    from . import cuda

    if cuda._cuda is None:
        return "not built (no CUDA compiler at build time)"
    try:
        return "available" if cuda.is_available() else f"built; {cuda.unavailable_reason()}"
    except Exception as e:  # a broken driver must not break show_config
        return f"error: {e}"


def cpu_model() -> str:
    """The CPU's model name (CPUID brand string; /proc/cpuinfo or platform as a fallback)."""
    name = _C.cpu_model()
    if not name:
        try:
            with open("/proc/cpuinfo") as f:
                name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
        except OSError:
            name = ""
    return name or platform.processor() or platform.machine()


def warn_isa_env() -> None:
    """Warn once at import when FUSEGRAD_ISA asked for a path (or FUSEGRAD_BF16_KERNEL for a bf16
    kernel) this CPU or build cannot take."""
    for note in (_C.isa_env_note(), _C.bf16_env_note()):
        if note:
            import warnings
            warnings.warn(note, RuntimeWarning, stacklevel=3)


_BF16_KERNELS = {
    "amx": "AMX-BF16 tiles (TDPBF16PS)",
    "avx512_bf16": "VDPBF16PS dot products",
    "amx_simulated": "the AMX kernel over software tiles (slow; for tests)",
    "emulated": "bf16-rounded operands on the float32 GEMM",
}


def _bf16_summary() -> str:
    """The bf16 matrix-product kernel in use, then what else this CPU runs (issue 19)."""
    path = _C.bf16_path()
    s = f"{path}: {_BF16_KERNELS[path]}"
    if _C.bf16_kernel_setting() != "auto":
        s += f" (set: {_C.bf16_kernel_setting()})"
    if "amx" in _C.bf16_kernels_available() and path != "amx":
        s += "; AMX-BF16 here: its kernel is opt-in until verified on AMX (FUSEGRAD_BF16_KERNEL=amx)"
    return s


def config() -> dict:
    """The build and run-time configuration as a dict."""
    return {
        "version": __import__("fusegrad").__version__,
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "isa": _C.get_isa(),
        "isas_compiled": ", ".join(_C.isas_compiled()),
        "isas_supported": ", ".join(_C.isas_supported()),
        "bf16_matmul": _bf16_summary(),
        "openmp": _C.have_openmp(),
        "num_threads": _C.get_num_threads(),
        "sanitized": bool(_C.sanitized),
        "host_cache": (f"on, {memory_stats()['limit_bytes'] >> 20} MiB limit" if memory_stats()["enabled"]
                       else "off"),
        "cuda": _cuda_summary(),
    }


def show_config() -> None:
    """Print the CPU, the ISA paths compiled / runnable here / in use, the path bf16 matrix products
    (autocast) take, thread count, OpenMP and CUDA availability."""
    for k, v in config().items():
        print(f"{k:>18}: {v}")
