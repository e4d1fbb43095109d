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
@pytest.mark.skipif(fusegrad._C.sanitized, reason="ASan's quarantine keeps freed memory resident")
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


# ----- threads: set_num_threads is honored, results do not depend on it -----------------------

def _deterministic_calls(rng):
    """(name, thunk) pairs for the kernels whose result is documented to be bitwise identical
    for any thread count (elementwise ops, per-row ops, double-accumulated reductions, the
    column-split embedding backward); each input is large enough to be split across threads."""
    n = 1 << 20
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    rows = rng.standard_normal((2048, 257)).astype(np.float32)
    ids = rng.integers(0, 1000, size=50_000).astype(np.int64)
    dout = rng.standard_normal((50_000, 64)).astype(np.float32)
    calls = {
        "relu_forward": lambda: ops.relu_forward(x),
        "relu_backward": lambda: ops.relu_backward(y, x),
        "mse_forward": lambda: ops.mse_forward(x, y),
        "mse_backward": lambda: ops.mse_backward(x, y),
        "embedding_forward": lambda: ops.embedding_forward(ids, rows[:1000, :64].copy()),
        "embedding_backward": lambda: ops.embedding_backward(dout, ids, 1000),
        "gelu_forward": lambda: ops.gelu_forward(x),
        "gelu_backward": lambda: ops.gelu_backward(y, x),
        "sigmoid_forward": lambda: ops.sigmoid_forward(x),
        "tanh_forward": lambda: ops.tanh_forward(x),
        "softmax_forward": lambda: ops.softmax_forward(rows),
        "log_softmax_forward": lambda: ops.log_softmax_forward(rows),
        "layernorm_forward": lambda: ops.layernorm_forward(rows, None, None, 1e-5),
        "cross_entropy_forward": lambda: ops.cross_entropy_forward(rows, ids[:2048] % 257),
    }
    for name in ("sgd_step", "adamw_step"):
        def step(name=name):
            p, g, m, v = x.copy(), y.copy(), np.zeros_like(x), np.zeros_like(x)
            if name == "sgd_step":
                ops.sgd_step(p, g, m, lr=0.1, momentum=0.9)
            else:
                ops.adamw_step(p, g, m, v, step=3, lr=1e-3)
            return p, m, v
        calls[name] = step
    return [(k, f) for k, f in calls.items() if hasattr(ops, k)]


def _as_tuple(r):
    return r if isinstance(r, tuple) else (r,)


def test_results_identical_for_1_and_2_threads(threads, rng):
    for name, call in _deterministic_calls(rng):
        threads(1)
        one = _as_tuple(call())
        threads(2)
        two = _as_tuple(call())
        for a, b in zip(one, two):
            assert np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True), f"{name}: 1 vs 2 threads differ"


def test_set_num_threads_is_honored():
    """In a fresh process (no BLAS threads): one kernel thread means no worker threads at all;
    three means the OpenMP team has three threads."""
    from fusegrad import _C
    if not _C.have_openmp():
        pytest.skip("built without OpenMP")
    code = textwrap.dedent("""
        import os, sys, numpy as np
        sys.path[:0] = %r
        import fusegrad
        from fusegrad import ops
        tasks = lambda: len(os.listdir("/proc/self/task"))
        x = np.ones(1 << 23, np.float32)
        base = tasks()
        fusegrad.set_num_threads(1)
        assert fusegrad.get_num_threads() == 1
        ops.relu_forward(x)
        one = tasks() - base
        fusegrad.set_num_threads(3)
        assert fusegrad.get_num_threads() == 3
        ops.relu_forward(x)
        three = tasks() - base
        print(one, three)
        sys.exit(0 if (one, three) == (0, 2) else 3)
    """ % (sys.path,))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], timeout=120, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"worker threads for (1, 3) kernel threads: {r.stdout}{r.stderr}"


def test_set_num_threads_rejects_bad_values():
    with pytest.raises(ValueError, match="set_num_threads: n must be >= 1, got 0"):
        fusegrad.set_num_threads(0)
    with pytest.raises(TypeError):
        fusegrad.set_num_threads("2")


def test_many_threads_calling_different_kernels_at_once(threads, rng):
    """Each Python thread runs a different kernel repeatedly (GIL released inside); every result
    must equal the one computed alone beforehand."""
    threads(2)
    calls = _deterministic_calls(rng)
    expected = {name: _as_tuple(call()) for name, call in calls}
    errors = []
    barrier = threading.Barrier(len(calls))

    def work(name, call):
        barrier.wait()
        for _ in range(3):
            got = _as_tuple(call())
            if not all(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
                       for a, b in zip(got, expected[name])):
                errors.append(name)

    ts = [threading.Thread(target=work, args=c) for c in calls]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []


# ----- 64-bit indexing: arrays past 2**31 elements (slow; run with -m slow) -------------------
# np.zeros gets fresh zero pages from calloc: reading them costs no memory, so a 16 GiB input
# that the kernel only reads stays nearly free; only written pages become resident.

BIG = (1 << 31) + 16


def _mem_available_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


@pytest.mark.slow
@pytest.mark.skipif(sys.maxsize < 2**40, reason="needs a 64-bit address space")
def test_mse_forward_reads_past_2_31_elements():
    pred = np.zeros(BIG, np.float32)      # 8 GiB virtual each, untouched (zero pages)
    target = np.zeros(BIG, np.float32)
    where = [0, (1 << 31) - 1, 1 << 31, (1 << 31) + 3, BIG - 1]
    for i, p in enumerate(where):
        pred[p] = 2.0 ** i                # squares 1, 4, 16, 64, 256: each one counts
    loss = float(ops.mse_forward(pred, target))
    assert loss == pytest.approx(341.0 / BIG, rel=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(sys.maxsize < 2**40, reason="needs a 64-bit address space")
def test_embedding_offsets_past_2_32_elements():
    V, C = (1 << 24) + 3, 256             # table of 2**32 + 768 float32 (16 GiB virtual)
    table = np.zeros((V, C), np.float32)
    table[V - 1] = np.arange(C)
    table[1 << 23] = -1.0                 # row offset (2**23) * 256 = 2**31 exactly
    ids = np.array([V - 1, 0, 1 << 23], np.int64)
    out = ops.embedding_forward(ids, table)
    np.testing.assert_array_equal(out[0], np.arange(C, dtype=np.float32))
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(out[2], -1.0)
    del table
    dtable = ops.embedding_backward(np.ones((3, C), np.float32), ids, V)  # zero pages but 3 rows
    assert dtable.shape == (V, C)
    for r in (V - 1, 0, 1 << 23):
        np.testing.assert_array_equal(dtable[r], 1.0)
    assert not dtable[V - 2].any() and not dtable[(1 << 23) + 1].any()


@pytest.mark.slow
@pytest.mark.skipif(_mem_available_gib() < 12, reason="needs ~9 GiB of free memory")
def test_relu_forward_writes_past_2_31_elements():
    x = np.zeros(BIG, np.float32)         # read-only use: zero pages; the 8 GiB output is written
    where = [(1 << 31) - 1, 1 << 31, (1 << 31) + 1, (1 << 31) + 9, BIG - 1]
    for p in where:
        x[p] = 5.0
    x[(1 << 31) + 2] = -7.0
    y = ops.relu_forward(x)
    assert y.shape == (BIG,)
    np.testing.assert_array_equal(y[where], 5.0)
    assert y[(1 << 31) + 2] == 0.0 and y[0] == 0.0 and y[(1 << 31) - 2] == 0.0


# ----- the binding boundary: arrays whose bytes the kernels cannot read as-is ------------------

def _unaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    u = buf[1:].view(a.dtype).reshape(a.shape)
    u[...] = a
    assert not u.flags.aligned
    return u


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_native_byte_order_is_a_type_error_not_garbage(dtype):
    x = np.array([1.0, -2.0, 3.0], np.dtype(dtype).newbyteorder())
    with pytest.raises(TypeError, match=r"relu_forward: x must be float32 or float64, got >f[48]"):
        ops.relu_forward(x)
    p = np.ones(3, dtype)
    with pytest.raises(TypeError, match=r"adamw_step: grad must be float(32|64) \(the dtype of the other inputs\), got >f[48]"):
        ops.adamw_step(p, x, np.zeros(3, dtype), np.zeros(3, dtype), step=1, lr=0.1)
    with pytest.raises(TypeError, match=r"embedding_forward: ids must be int32 or int64, got >i8"):
        ops.embedding_forward(np.array([0], ">i8"), np.ones((2, 2), dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unaligned_arrays_are_rejected(dtype):
    x = _unaligned(np.array([1.0, -2.0, 3.0], dtype))
    with pytest.raises(ValueError, match=r"relu_forward: x must be aligned to its dtype \(numpy.require\(x, requirements='CA'\) makes a copy that is\), got an unaligned array"):
        ops.relu_forward(x)
    p = _unaligned(np.ones(3, dtype))
    with pytest.raises(ValueError, match=r"sgd_step: param must be aligned"):
        ops.sgd_step(p, np.ones(3, dtype), None, lr=0.1)


# ----- nothing lost: a blown-up run keeps the last good checkpoint -----------------------------

class _Batches:
    """Epochs 1-2 see clean batches; from epoch 3 on the second batch holds an Inf input."""
    def __init__(self, x, y):
        self.x, self.y, self.epoch = x, y, 0

    def __len__(self):
        return 2

    def __iter__(self):
        import fusegrad as fg
        self.epoch += 1
        yield fg.tensor(self.x), fg.tensor(self.y)
        x = self.x.copy()
        if self.epoch >= 3:
            x[0, 0] = np.inf
        yield fg.tensor(x), fg.tensor(self.y)


@pytest.mark.parametrize("how", ["loss", "param"])
def test_fit_non_finite_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, how):
    import fusegrad as fg
    import fusegrad.nn.functional as F
    from fusegrad.checkpoint import load_checkpoint
    from fusegrad.train import fit

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 1)).astype(np.float32)
    m = fg.nn.Linear(3, 1)
    opt = fg.optim.SGD(m.parameters(), lr=0.05)
    if how == "loss":
        loader = _Batches(x, y)                       # epoch 3, batch 2 (step 6): loss = inf
    else:
        class _BadGrad(fg.optim.SGD):                 # finite loss, but the update writes NaN
            def step(self):
                super().step()
                if self.calls == 5:
                    next(iter(m.parameters())).data[0, 0] = np.nan
                self.calls += 1
        opt = _BadGrad(m.parameters(), lr=0.05)
        opt.calls = 0
        loader = [(fg.tensor(x), fg.tensor(y))] * 2
    h = fit(m, F.mse_loss, opt, loader, epochs=5, progress=False, verbose=False,
            checkpoint_dir=tmp_path)
    assert h.diverged
    assert "stopped at epoch 3, step 6:" in h.message, h.message
    assert ("the loss is inf (non-finite)" if how == "loss" else "parameter 'weight' became non-finite") in h.message
    assert f"the last good checkpoint (step 4) in {tmp_path} was kept" in h.message
    ck = load_checkpoint(tmp_path)
    assert ck["step"] == 4 and ck["meta"]["epoch"] == 2
    for k, v in ck["model"].items():
        assert np.all(np.isfinite(v)), k
    assert h.checkpoint_step == 4 and len(h.train_loss) == 2


def test_fit_checkpoint_round_trip(tmp_path):
    import fusegrad as fg
    import fusegrad.nn.functional as F
    from fusegrad.checkpoint import load_checkpoint
    from fusegrad.train import fit

    rng = np.random.default_rng(1)
    batch = (fg.tensor(rng.standard_normal((8, 3)).astype(np.float32)),
             fg.tensor(rng.standard_normal((8, 1)).astype(np.float32)))
    m = fg.nn.Linear(3, 1)
    opt = fg.optim.Adam(m.parameters(), lr=0.01)
    h = fit(m, F.mse_loss, opt, [batch], epochs=3, progress=False, verbose=False,
            checkpoint_dir=tmp_path, checkpoint_every=2)
    assert not h.diverged and h.checkpoint_step == 3
    ck = load_checkpoint(tmp_path)
    assert ck["step"] == 3
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(ck["model"][k], v.data)
    m2 = fg.nn.Linear(3, 1)
    opt2 = fg.optim.Adam(m2.parameters(), lr=0.01)
    m2.load_state_dict({k: fg.tensor(v) for k, v in ck["model"].items()})
    opt2.load_state_dict(ck["optimizer"])
    assert set(opt2.state_dict()["state"]) == set(opt.state_dict()["state"])


def test_matmul_refuses_unaligned_operands():
    """Regression (found by the UBSan build): matmul read a misaligned float* for an unaligned a."""
    a = _unaligned(np.ones((2, 5), np.float32))
    b = np.ones((5, 3), np.float32)
    with pytest.raises(ValueError, match=r"matmul: a must be aligned to its dtype"):
        ops.matmul(a, b)
    with pytest.raises(ValueError, match=r"matmul: b must be aligned to its dtype"):
        ops.matmul(b.T.copy(), _unaligned(b))
