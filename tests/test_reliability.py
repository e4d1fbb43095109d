"""Reliability of the kernel boundary: concurrent callers, fork, memory."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fusegrad
from fusegrad import ops


def test_many_python_threads_get_correct_results():
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(50_000 + 17 * i).astype(np.float32) for i in range(16)]
    errors = []

    def work(x):
        for _ in range(20):
            y = ops.relu_forward(x)
            if not np.array_equal(y, np.maximum(x, 0)):
                errors.append("mismatch")

    ts = [threading.Thread(target=work, args=(x,)) for x in inputs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kernels_work_in_a_forked_child():
    # libgomp's thread pool does not survive fork; the child must fall back to one thread
    # instead of hanging. Run in a fresh interpreter so the parent pool is surely started.
    code = textwrap.dedent("""
        import os, sys, numpy as np
        sys.path[:0] = %r
        import fusegrad
        from fusegrad import ops
        fusegrad.set_num_threads(2)
        x = np.random.default_rng(0).standard_normal(1 << 22).astype(np.float32)
        ops.relu_forward(x)
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(ops.relu_forward(x), np.maximum(x, 0))
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """ % (sys.path,))
    r = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert r.returncode == 0


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_memory_stays_flat_over_many_calls():
    x = np.ones(64, np.float32)
    big = np.ones(1 << 22, np.float32)
    for _ in range(2000):
        ops.relu_forward(x)
    before = _rss_mb()
    for _ in range(100_000):
        ops.relu_backward(x, ops.relu_forward(x))
    for _ in range(100):
        ops.relu_forward(big)
    after = _rss_mb()
    assert after - before < 20, f"resident memory grew by {after - before:.1f} MB"
