"""Timing helpers shared by the bench_<op>.py scripts.

Rules (CONVENTIONS.md): validate against the reference before timing; time the
alternatives interleaved in the same run (round-robin, so machine noise hits all of them
alike); report medians, ratios, and the fraction of the machine's limits measured in the
same run. Benchmarks never assert.

Interleaving has one trap: after a call, a library's worker threads keep spinning for a while
(OpenBLAS ~0.1 s, OpenMP in PyTorch and in fusegrad ~10 ms, measured on the 2-core dev VM),
and on a machine with few cores they steal the CPU from whichever library is timed next
(square-512 matmul: ours 12.0 -> 7.4 ms, PyTorch 24 -> 14-20 ms once they no longer ran next
to spinning threads). So `interleaved` waits, before timing a function, until no other thread
of the process is runnable (settle(); ~0.15 s per round of numpy + torch + ours).
"""
from __future__ import annotations

import os
import statistics
import threading
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


def fma_peak(threads: int, *isa) -> float:
    """fp32 FMA GFLOP/s on `threads` threads, best of 3 short runs (of ISA path `isa`, else the active one)."""
    from fusegrad import _C

    return max(_C.peak_fma_gflops(threads, 0.3, *isa) for _ in range(3))


def measure_limits(threads: int) -> Limits:
    from fusegrad import _C

    # the peak of the path in use, and of every path this CPU runs (an AVX-512 run on a CPU
    # with one 512-bit FMA unit, such as Zen 4, has the AVX2 peak; Intel Xeons with two have 2x)
    peaks = {isa: fma_peak(threads, isa) for isa in _C.isas_supported() if isa != "portable"}
    peak = peaks.get(_C.get_isa()) or fma_peak(threads)
    bw = _C.copy_bandwidth_gbs(256 << 20, threads, 5)
    return Limits(threads=threads, peak_gflops=peak, copy_gbs=bw,
                  extra={"isa": _C.get_isa(), "cpu": _C.cpu_model(),
                         **{f"peak_gflops_{k}": round(v, 1) for k, v in peaks.items()}})


def other_vector_isas() -> list:
    """The vector ISA paths this CPU runs besides the active one: A/B columns timed in the same run."""
    from fusegrad import _C

    return [i for i in _C.isas_supported() if i not in ("portable", _C.get_isa())]


def on_isa(isa: str, fn):
    """fn, run on ISA path `isa` (the active path restored after each call)."""
    from fusegrad import _C

    def run():
        old = _C.get_isa()
        _C.set_isa(isa)
        try:
            return fn()
        finally:
            _C.set_isa(old)
    return run


_TASKS = "/proc/self/task"
_always_running: set = set()  # threads found runnable for a whole settle(): never waited for again


def _runnable_threads() -> set:
    """Native ids of this process's threads, other than the caller, that are running or runnable."""
    me, out = threading.get_native_id(), set()
    for tid in os.listdir(_TASKS):
        if tid == str(me) or tid in _always_running:
            continue
        try:
            with open(f"{_TASKS}/{tid}/stat", "rb") as f:
                st = f.read()
        except OSError:  # the thread exited
            continue
        if st[st.rindex(b")") + 2:st.rindex(b")") + 3] == b"R":  # state follows "(comm) "
            out.add(tid)
    return out


def settle(max_wait: float = 0.3, poll: float = 1e-3) -> float:
    """Wait until the worker threads left spinning by the previous call have gone to sleep.

    A spinning thread is runnable (state R) even while it waits for a CPU, so this does not
    mistake a descheduled spinner for an idle one. Returns the seconds waited. Without Linux
    /proc it does nothing.
    """
    if not os.path.isdir(_TASKS):
        return 0.0
    t0 = time.perf_counter()
    while True:
        busy = _runnable_threads()
        if not busy:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > max_wait:
            _always_running.update(busy)
            return time.perf_counter() - t0
        time.sleep(poll)


# A/B of ISA paths (python -m bench --isa avx2,avx512): interleaved() then times "ours" once per
# path, in the same round-robin as the other contenders, as "ours@<isa>"; "ours" is the first path.
AB_ISAS: list[str] = []


def _ab_expand(fns: dict) -> dict:
    if not AB_ISAS or "ours" not in fns:
        return fns
    out = {}
    for name, f in fns.items():
        if name != "ours":
            out[name] = f
            continue
        for isa in AB_ISAS:
            out[f"ours@{isa}"] = on_isa(isa, f)
    return out


def ab_cols(t: dict) -> dict:
    """Per-path columns for a row when an A/B of ISA paths ran: <isa>_ms, and the second path's
    speed-up over the first (x_<b>_vs_<a> > 1: b is faster)."""
    if not AB_ISAS:
        return {}
    cols = {f"{isa}_ms": t[f"ours@{isa}"] * 1e3 for isa in AB_ISAS}
    for isa in AB_ISAS[1:]:
        cols[f"x_{isa}_vs_{AB_ISAS[0]}"] = t[f"ours@{AB_ISAS[0]}"] / t[f"ours@{isa}"]
    return cols


def interleaved(fns: dict, reps: int = 15, warmup: int = 2, min_time: float = 0.0, ramp: float = 0.02,
                samples_out: dict | None = None, clock=time.perf_counter) -> dict:
    t = _interleaved(_ab_expand(fns), reps, warmup, min_time, ramp, samples_out, clock)
    if AB_ISAS and "ours" in fns:
        t["ours"] = t[f"ours@{AB_ISAS[0]}"]
    return t


def _interleaved(fns: dict, reps: int = 15, warmup: int = 2, min_time: float = 0.0, ramp: float = 0.02,
                 samples_out: dict | None = None, clock=time.perf_counter) -> dict:
    """Median seconds per call for each named callable, timed round-robin.

    Each timed sample repeats the call `inner` times, chosen so one sample lasts at least
    ~2 ms (or `min_time`), which keeps timer resolution out of small kernels. Before each
    sample, settle() lets the previous function's worker threads stop spinning; the function
    then runs untimed for about `ramp` seconds (at least once), so the sample does not time the
    machine waking up: after settle()'s idle wait, the first calls on the 2-core dev VM run up
    to 3x slow for ~2-5 ms (square-256 matmul: 700, 500, 430, ... 240 us; NumPy's alike).
    samples_out (a dict) receives each callable's per-round samples (see paired_ratio).
    clock: time.perf_counter (wall); time.thread_time for one-thread calls on a shared machine
    (CPU time of the calling thread: a sample is not inflated by the time other processes held the core).
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    inner = {}
    for n in names:
        settle()
        fns[n]()
        t0 = clock()
        fns[n]()
        dt = clock() - t0
        inner[n] = max(1, int(max(2e-3, min_time) / max(dt, 1e-7)))
    samples = {n: [] for n in names}
    for _ in range(reps):
        for n in names:
            k = inner[n]
            if len(names) > 1:
                settle()
                t0 = clock()
                fns[n]()
                while clock() - t0 < ramp:
                    fns[n]()
            t0 = clock()
            for _ in range(k):
                fns[n]()
            samples[n].append((clock() - t0) / k)
    if samples_out is not None:
        samples_out.update(samples)
    return {n: statistics.median(s) for n, s in samples.items()}


def paired_ratio(samples: dict, other: str, ours: str) -> float | None:
    """Median over rounds of other's time / ours in the same round of interleaved(): the two
    samples of a round are seconds apart, so a machine that drifts between rounds (a shared
    host) moves both and the ratio less than either median."""
    if other not in samples or ours not in samples:
        return None
    return statistics.median(o / u for o, u in zip(samples[other], samples[ours]) if u > 0)


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
