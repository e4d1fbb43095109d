"""Timing helpers shared by the bench_<op>.py scripts.

Rules (CONVENTIONS.md): validate against the reference before timing; time the
alternatives interleaved in the same run (round-robin, so machine noise hits all of them
alike); report medians, ratios, and the fraction of the machine's limits measured in the
same run. Benchmarks never assert.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np

try:  # PyTorch is an optional reference, never a dependency
    import torch
except ImportError:  # pragma: no cover
    torch = None


@dataclass
class Limits:
    """The machine's limits, measured in this run."""

    threads: int
    peak_gflops: float   # fp32 FMA, all kernel threads
    copy_gbs: float      # memcpy, bytes read + written, all kernel threads
    extra: dict = field(default_factory=dict)


def measure_limits(threads: int) -> Limits:
    from fusegrad import _C

    peak = max(_C.peak_fma_gflops(threads, 0.3) for _ in range(3))
    bw = _C.copy_bandwidth_gbs(256 << 20, threads, 5)
    return Limits(threads=threads, peak_gflops=peak, copy_gbs=bw)


def interleaved(fns: dict, reps: int = 15, warmup: int = 2, min_time: float = 0.0) -> dict:
    """Median seconds per call for each named callable, timed round-robin.

    Each timed sample repeats the call `inner` times, chosen so one sample lasts at least
    ~2 ms (or `min_time`), which keeps timer resolution out of small kernels.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    inner = {}
    for n in names:
        t0 = time.perf_counter()
        fns[n]()
        dt = time.perf_counter() - t0
        inner[n] = max(1, int(max(2e-3, min_time) / max(dt, 1e-7)))
    samples = {n: [] for n in names}
    for _ in range(reps):
        for n in names:
            k = inner[n]
            t0 = time.perf_counter()
            for _ in range(k):
                fns[n]()
            samples[n].append((time.perf_counter() - t0) / k)
    return {n: statistics.median(s) for n, s in samples.items()}


def ratio(other: float | None, ours: float | None) -> float | None:
    """How many times faster ours is than other (>1 means ours is faster)."""
    if other is None or ours is None or ours <= 0:
        return None
    return other / ours


def torch_threads(n: int) -> None:
    if torch is not None:
        torch.set_num_threads(n)


def fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def rand(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
