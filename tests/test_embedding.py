"""embedding_forward / embedding_backward: reference, finite differences, determinism, bad ids."""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from fusegrad import ops


@pytest.mark.parametrize("n", [1, 7, 33, 127, 1000, 8192])
@pytest.mark.parametrize("C", [1, 7, 33, 128])
@pytest.mark.parametrize("idt", [np.int32, np.int64])
def test_embedding_matches_reference(isa, rng, n, C, idt):
    V = 50
    ids = rng.integers(0, V, n).astype(idt)
    table = rng.standard_normal((V, C)).astype(np.float32)
    out = ops.embedding_forward(ids, table)
    np.testing.assert_array_equal(out, table[ids])
    dout = rng.standard_normal((n, C)).astype(np.float32)
    dtable = ops.embedding_backward(dout, ids, V)
    assert dtable.shape == (V, C) and dtable.dtype == np.float32
    np.testing.assert_allclose(dtable, ref.embedding_backward(dout.astype(np.float64), ids, V), rtol=1e-5, atol=1e-4)


def test_embedding_any_shape_float64(rng):
    ids = rng.integers(0, 11, (2, 3, 4))
    table = rng.standard_normal((11, 5))
    out = ops.embedding_forward(ids, table)
    assert out.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(out, ref.embedding_forward(ids, table))
    dout = rng.standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(ops.embedding_backward(dout, ids, 11), ref.embedding_backward(dout, ids, 11),
                               rtol=1e-13, atol=1e-14)


def test_embedding_large(rng):
    V, C, n = 5000, 256, 4096
    ids = rng.integers(0, V, n)
    table = rng.standard_normal((V, C)).astype(np.float32)
    np.testing.assert_array_equal(ops.embedding_forward(ids, table), table[ids])
    dout = rng.standard_normal((n, C)).astype(np.float32)
    np.testing.assert_allclose(ops.embedding_backward(dout, ids, V), ref.embedding_backward(dout.astype(np.float64), ids, V),
                               rtol=1e-5, atol=1e-4)


def test_embedding_grad_finite_differences(rng):
    ids = np.array([[0, 2, 2], [1, 2, 0]])
    table = rng.standard_normal((4, 3))
    w = rng.standard_normal((2, 3, 3))
    f = lambda t: float(np.sum(ops.embedding_forward(ids, t) * w))
    num = ref.numerical_grad(f, table)
    np.testing.assert_allclose(ops.embedding_backward(w, ids, 4), num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("C", [1, 100, 768])
def test_embedding_backward_bitwise_thread_independent(threads, rng, C):
    V, n = 97, 3000
    ids = rng.integers(0, V, n).astype(np.int32)
    dout = rng.standard_normal((n, C)).astype(np.float32)
    threads(1)
    a = ops.embedding_backward(dout, ids, V)
    threads(2)
    b = ops.embedding_backward(dout, ids, V)
    assert a.tobytes() == b.tobytes()


def test_embedding_bad_inputs():
    table = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match=r"embedding_forward: ids must be in \[0, 5\), got 5"):
        ops.embedding_forward(np.array([0, 5]), table)
    with pytest.raises(ValueError, match=r"embedding_forward: ids must be in \[0, 5\), got -1"):
        ops.embedding_forward(np.array([-1], np.int32), table)
    with pytest.raises(TypeError, match=r"embedding_forward: ids must be int32 or int64, got float32"):
        ops.embedding_forward(np.zeros(2, np.float32), table)
    with pytest.raises(ValueError, match=r"embedding_forward: table must have 2 dimensions"):
        ops.embedding_forward(np.zeros(2, np.int64), np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"embedding_backward: ids must be in \[0, 4\), got 7"):
        ops.embedding_backward(np.zeros((1, 3)), np.array([7]), 4)
    with pytest.raises(ValueError, match=r"embedding_backward: dout must have shape \(2, 3, 3\), got \(2, 4, 3\)"):
        ops.embedding_backward(np.zeros((2, 4, 3)), np.zeros((2, 3), np.int64), 4)
    with pytest.raises(ValueError, match=r"embedding_backward: num_embeddings must be >= 1, got 0"):
        ops.embedding_backward(np.zeros((1, 3)), np.array([0]), 0)


@pytest.mark.parametrize("n,C", [(1, 1), (33, 7), (1000, 128)])
def test_embedding_backward_into_out_and_accumulate(isa, rng, n, C):
    V = 50
    ids = rng.integers(0, V, n)
    dout = rng.standard_normal((n, C))
    base = rng.standard_normal((V, C))
    want = ref.embedding_backward(dout, ids, V)
    out = np.full((V, C), 7.0)  # overwritten: with out= and no accumulate the old values go
    assert ops.embedding_backward(dout, ids, V, out=out) is out
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    acc = base.copy()
    assert ops.embedding_backward(dout, ids, V, out=acc, accumulate=True) is acc
    np.testing.assert_allclose(acc, base + want, rtol=1e-12, atol=1e-12)
    untouched = np.setdiff1d(np.arange(V), ids)
    np.testing.assert_array_equal(acc[untouched], base[untouched])


def test_embedding_backward_out_bad_inputs(rng):
    ids, dout = np.array([0, 2]), np.ones((2, 3), np.float32)
    f = ops.embedding_backward
    with pytest.raises(ValueError, match=r"embedding_backward: accumulate=True needs out"):
        f(dout, ids, 4, accumulate=True)
    with pytest.raises(ValueError, match=r"embedding_backward: out must have shape \(4, 3\), got \(4, 2\)"):
        f(dout, ids, 4, out=np.zeros((4, 2), np.float32))
    with pytest.raises(TypeError, match="embedding_backward: out must be float32"):
        f(dout, ids, 4, out=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="embedding_backward: out must be C-contiguous"):
        f(dout, ids, 4, out=np.zeros((4, 6), np.float32)[:, ::2])
    ro = np.zeros((4, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="embedding_backward: out must be writeable"):
        f(dout, ids, 4, out=ro)
    shared = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="embedding_backward: out must not share memory with dout"):
        f(shared[:2], ids, 4, out=shared)
