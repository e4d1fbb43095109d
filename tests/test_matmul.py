"""matmul and linear kernels against the float64 reference, finite differences, and bad input.

Tolerance: for a dot product of length k, any summation order (our blocked kernels, the naive
loop, OpenBLAS) satisfies |fl(c) - c| <= k*u*(|A| @ |B|) elementwise (u = 2^-24 for float32,
2^-53 for float64); reference.matmul_error_bound doubles that. A wrong index, a missed edge
tile or a lost K-block gives errors of order |A||B| itself, far above the bound.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from fusegrad import _C, ops
from reference import numerical_grad
import reference as ref

U = {np.float32: 2.0**-24, np.float64: 2.0**-53}
SMALL = [1, 7, 33, 127]


def operands(rng, m, n, k, ta, tb, dtype, batch_a=(), batch_b=()):
    a = rng.standard_normal(batch_a + ((k, m) if ta else (m, k))).astype(dtype)
    b = rng.standard_normal(batch_b + ((n, k) if tb else (k, n))).astype(dtype)
    return a, b


def check(c, a, b, ta, tb, dtype, acc=None):
    want = ref.matmul(a, b, ta, tb)
    bound = ref.matmul_error_bound(a, b, ta, tb, U[dtype])
    if acc is not None:
        want = want + acc
        bound = bound + 2 * U[dtype] * np.abs(acc)
    assert c.dtype == dtype and c.shape == want.shape
    err = np.abs(c.astype(np.float64) - want)
    assert np.all(err <= bound + np.finfo(dtype).tiny), f"max err {err.max()}, worst ratio {np.max(err / (bound + 1e-300))}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_matmul_small_shapes(isa, threads, rng, dtype, nthreads):
    threads(nthreads)
    for m, n, k in itertools.product(SMALL, SMALL, SMALL):
        for ta, tb in itertools.product([False, True], repeat=2):
            a, b = operands(rng, m, n, k, ta, tb, dtype)
            check(ops.matmul(a, b, trans_a=ta, trans_b=tb), a, b, ta, tb, dtype)


@pytest.mark.parametrize("mnk", [(1000, 7, 33), (7, 1000, 127), (33, 127, 1000), (1, 1000, 1), (1000, 1, 1000),
                                 (1000, 33, 1), (127, 1000, 33)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_matmul_1000(isa, threads, rng, mnk, dtype, nthreads):
    threads(nthreads)
    m, n, k = mnk
    for ta, tb in itertools.product([False, True], repeat=2):
        a, b = operands(rng, m, n, k, ta, tb, dtype)
        check(ops.matmul(a, b, trans_a=ta, trans_b=tb), a, b, ta, tb, dtype)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True)])
def test_matmul_large(isa, threads, rng, ta, tb):
    # several KC slices, NC blocks (n > 4080) and MC blocks, with ragged edges everywhere
    threads(2)
    a, b = operands(rng, 301, 4201, 531, ta, tb, np.float32)
    check(ops.matmul(a, b, trans_a=ta, trans_b=tb), a, b, ta, tb, np.float32)


@pytest.mark.parametrize("mnk", [(13, 1100, 4096), (2100, 20, 4096), (2060, 530, 4096)])
@pytest.mark.parametrize("ta,tb,accumulate", [(False, False, False), (True, True, True)])
def test_matmul_chunked_packing(isa, threads, rng, mnk, ta, tb, accumulate):
    # the float32 AVX2 path packs at most 32 MiB of A (2048 rows at K=4096) and 8 MiB of B
    # (512 columns) at a time: these shapes take several row and/or column chunks
    threads(2)
    m, n, k = mnk
    a, b = operands(rng, m, n, k, ta, tb, np.float32)
    acc = rng.standard_normal((m, n)).astype(np.float32) if accumulate else None
    out = acc.copy() if accumulate else np.empty((m, n), np.float32)
    ops.matmul(a, b, trans_a=ta, trans_b=tb, out=out, accumulate=accumulate)
    check(out, a, b, ta, tb, np.float32, acc=acc)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_agrees_with_naive(isa, rng, dtype):
    for m, n, k in [(7, 33, 127), (127, 1, 33), (33, 127, 300)]:
        for ta, tb in itertools.product([False, True], repeat=2):
            a, b = operands(rng, m, n, k, ta, tb, dtype)
            naive = _C._matmul_naive(a, b, ta, tb)
            check(naive, a, b, ta, tb, dtype)
            np.testing.assert_allclose(ops.matmul(a, b, trans_a=ta, trans_b=tb), naive,
                                       rtol=0, atol=float(np.max(ref.matmul_error_bound(a, b, ta, tb, U[dtype]))) * 2)


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_batched_and_broadcast(isa, threads, rng, nthreads, dtype):
    threads(nthreads)
    cases = [((3, 4), (3, 4), 7, 33, 5), ((2,), (2,), 130, 200, 150), ((5,), (), 33, 7, 127), ((), (2, 3), 7, 33, 1),
             ((64,), (64,), 16, 16, 8)]
    for ba, bb, m, n, k in cases:
        for ta, tb in itertools.product([False, True], repeat=2):
            a, b = operands(rng, m, n, k, ta, tb, dtype, ba, bb)
            c = ops.matmul(a, b, trans_a=ta, trans_b=tb)
            assert c.shape == (ba or bb) + (m, n)
            check(c, a, b, ta, tb, dtype)


def test_matmul_out_and_accumulate(isa, rng):
    a, b = operands(rng, 33, 127, 7, False, False, np.float32)
    out = np.full((33, 127), np.nan, np.float32)
    r = ops.matmul(a, b, out=out)
    assert r is out
    check(out, a, b, False, False, np.float32)
    acc = rng.standard_normal((33, 127)).astype(np.float32)
    out = acc.copy()
    assert ops.matmul(a, b, out=out, accumulate=True) is out
    check(out, a, b, False, False, np.float32, acc=acc)
    # accumulate across several K blocks (k > KC) and batched
    a, b = operands(rng, 13, 40, 700, True, False, np.float32, (2,), (2,))
    acc = rng.standard_normal((2, 13, 40)).astype(np.float32)
    out = acc.copy()
    ops.matmul(a, b, trans_a=True, out=out, accumulate=True)
    check(out, a, b, True, False, np.float32, acc=acc)


def test_matmul_empty_and_k0(isa):
    z = ops.matmul(np.zeros((0, 3), np.float32), np.ones((3, 4), np.float32))
    assert z.shape == (0, 4)
    c = ops.matmul(np.ones((2, 0), np.float64), np.ones((0, 5), np.float64))
    np.testing.assert_array_equal(c, np.zeros((2, 5)))
    out = np.ones((2, 5), np.float64)
    ops.matmul(np.ones((2, 0), np.float64), np.ones((0, 5), np.float64), out=out, accumulate=True)
    np.testing.assert_array_equal(out, np.ones((2, 5)))


def test_matmul_fortran_order_is_read_as_transpose(isa, rng):
    a = rng.standard_normal((40, 30)).astype(np.float32)
    b = rng.standard_normal((50, 40)).astype(np.float32)
    c = ops.matmul(a.T, b.T)  # both F-contiguous views
    check(c, a.T.copy(), b.T.copy(), False, False, np.float32)
    c = ops.matmul(b.T, a.T, trans_a=True, trans_b=True)  # op(b.T) @ op(a.T) = b @ a
    check(c, b, a, False, False, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 33, 5), (127, 33, 1000), (4, 50, 127, 7)])
def test_linear_matches_reference(isa, rng, dtype, shape):
    *lead, n_in, n_out = shape
    x = rng.standard_normal((*lead, n_in)).astype(dtype)
    w = rng.standard_normal((n_out, n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    dy = rng.standard_normal((*lead, n_out)).astype(dtype)
    tol = 4 * n_in * U[dtype] * (np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64) + np.abs(b))
    for bias in (b, None):
        y = ops.linear_forward(x, w, bias)
        assert y.shape == (*lead, n_out) and y.dtype == dtype
        assert np.all(np.abs(y - ref.linear_forward(x, w, bias)) <= tol)
    dx, dw, db = ops.linear_backward(dy, x, w)
    rdx, rdw, rdb = ref.linear_backward(dy, x, w)
    rows = int(np.prod(lead)) if lead else 1
    dy2, x2 = dy.reshape(-1, n_out).astype(np.float64), x.reshape(-1, n_in).astype(np.float64)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (n_out,)
    assert np.all(np.abs(dx - rdx) <= 4 * n_out * U[dtype] * (np.abs(dy) @ np.abs(w).astype(np.float64)))
    assert np.all(np.abs(dw - rdw) <= 4 * rows * U[dtype] * (np.abs(dy2).T @ np.abs(x2)))
    assert np.all(np.abs(db - rdb) <= 4 * rows * U[dtype] * np.abs(dy2).sum(0))


def test_linear_gradient_finite_differences(rng):
    x = rng.standard_normal((2, 3, 5))
    w = rng.standard_normal((4, 5))
    b = rng.standard_normal(4)
    g = rng.standard_normal((2, 3, 4))
    loss = lambda x_, w_, b_: float(np.sum(ops.linear_forward(x_, w_, b_) * g))
    dx, dw, db = ops.linear_backward(g, x, w)
    np.testing.assert_allclose(dx, numerical_grad(lambda z: loss(z, w, b), x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numerical_grad(lambda z: loss(x, z, b), w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, numerical_grad(lambda z: loss(x, w, z), b), rtol=1e-6, atol=1e-8)


def test_matmul_bad_input():
    f32 = lambda *s: np.ones(s, np.float32)
    with pytest.raises(TypeError, match="matmul: a must be a numpy.ndarray, got list"):
        ops.matmul([[1.0]], f32(1, 1))
    with pytest.raises(TypeError, match="matmul: a must be float32 or float64, got int64"):
        ops.matmul(np.ones((2, 2), np.int64), f32(2, 2))
    with pytest.raises(TypeError, match="matmul: b must be float32 \\(the dtype of the other inputs\\), got float64"):
        ops.matmul(f32(2, 2), np.ones((2, 2)))
    with pytest.raises(ValueError, match="matmul: b must have at least 2 dimensions, got shape \\(3,\\)"):
        ops.matmul(f32(2, 3), f32(3))
    with pytest.raises(ValueError, match=r"matmul: inner dimensions differ: a is \(..., 2, 3\) but b is \(..., 4, 5\)"):
        ops.matmul(f32(2, 3), f32(4, 5))
    with pytest.raises(ValueError, match=r"matmul: inner dimensions differ: a\^T is \(..., 3, 2\)"):
        ops.matmul(f32(2, 3), f32(3, 5), trans_a=True)
    with pytest.raises(ValueError, match="matmul: batch dimensions of a \\(2, 2, 3\\) and b \\(3, 3, 4\\) must be equal"):
        ops.matmul(f32(2, 2, 3), f32(3, 3, 4))
    with pytest.raises(ValueError, match="matmul: a must be C-contiguous .*trans_a=True"):
        ops.matmul(f32(4, 6)[:, ::2], f32(3, 3))
    with pytest.raises(ValueError, match="matmul: b must be C-contiguous"):
        ops.matmul(f32(2, 3), f32(2, 3, 8)[:, :, ::2])
    with pytest.raises(ValueError, match="matmul: accumulate=True needs out"):
        ops.matmul(f32(2, 3), f32(3, 4), accumulate=True)
    with pytest.raises(ValueError, match=r"matmul: out must have shape \(2, 4\), got \(4, 2\)"):
        ops.matmul(f32(2, 3), f32(3, 4), out=f32(4, 2))
    with pytest.raises(TypeError, match="matmul: out must be float32"):
        ops.matmul(f32(2, 3), f32(3, 4), out=np.ones((2, 4)))
    with pytest.raises(ValueError, match="matmul: out must be C-contiguous"):
        ops.matmul(f32(2, 3), f32(3, 4), out=f32(4, 2).T)
    ro = f32(2, 4)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="matmul: out must be writeable"):
        ops.matmul(f32(2, 3), f32(3, 4), out=ro)
    a = f32(4, 4)
    with pytest.raises(ValueError, match="matmul: out must not share memory with a"):
        ops.matmul(a, f32(4, 4), out=a)
    with pytest.raises(ValueError, match="matmul: out must not share memory with b"):
        ops.matmul(f32(4, 4), a, out=a[:])
    with pytest.raises(ValueError, match=r"linear_forward: w must have shape \(out_features, 5\) to match x \(2, 5\), got \(3, 4\)"):
        ops.linear_forward(f32(2, 5), f32(3, 4), None)
    with pytest.raises(ValueError, match=r"linear_forward: b must have shape \(3,\), got \(4,\)"):
        ops.linear_forward(f32(2, 5), f32(3, 5), f32(4))
    with pytest.raises(TypeError, match="linear_forward: b must be float32"):
        ops.linear_forward(f32(2, 5), f32(3, 5), np.ones(3))
    with pytest.raises(ValueError, match="linear_forward: w must have 2 dimensions"):
        ops.linear_forward(f32(2, 5), f32(5), None)
    with pytest.raises(ValueError, match=r"linear_backward: dy must have shape \(2, 3\), got \(2, 4\)"):
        ops.linear_backward(f32(2, 4), f32(2, 5), f32(3, 5))
    with pytest.raises(TypeError, match="linear_backward: dy must be float32"):
        ops.linear_backward(np.ones((2, 3)), f32(2, 5), f32(3, 5))
    with pytest.raises(ValueError, match="linear_backward: x must be C-contiguous"):
        ops.linear_backward(f32(2, 3), f32(5, 2).T, f32(3, 5))


def test_matmul_concurrent_callers(isa, threads, rng):
    # kernels release the GIL: several Python threads calling matmul at once share the helper
    # pool (a caller that finds it busy runs alone); every result must still be exact
    import threading

    threads(2)
    cases = [operands(rng, m, n, k, False, False, np.float32) for m, n, k in [(300, 257, 190), (129, 520, 300)] * 3]
    want = [ops.matmul(a, b) for a, b in cases]
    errors = []

    def worker(i):
        try:
            for _ in range(5):
                a, b = cases[i]
                np.testing.assert_array_equal(ops.matmul(a, b), want[i])
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(len(cases))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


# Tile shapes (chosen per problem and thread count), tiles packing their own rows of A or sharing
# one packed A, the long-K chunking of the float32 AVX2 path and the bias it adds inside the
# kernel must never change a result: every C element is summed in the same order whatever the
# threads and tiles.
@pytest.mark.parametrize("mnk", [(2048, 256, 256), (256, 768, 256), (64, 768, 256), (67, 113, 300), (301, 33, 700),
                                 (67, 700, 200), (95, 250, 1030), (95, 256, 530), (95, 257, 530), (301, 260, 530), (770, 260, 2053), (2100, 20, 4096)])
@pytest.mark.parametrize("ta,tb", [(False, True), (False, False), (True, False)])
def test_matmul_threads_bit_identical(isa, threads, rng, mnk, ta, tb):
    m, n, k = mnk
    a, b = operands(rng, m, n, k, ta, tb, np.float32)
    threads(1)
    one = ops.matmul(a, b, trans_a=ta, trans_b=tb)
    threads(2)
    two = ops.matmul(a, b, trans_a=ta, trans_b=tb)
    np.testing.assert_array_equal(one, two)
    check(two, a, b, ta, tb, np.float32)


# The linear backward's products with the bias gradient summed while the tiles pack dy^T: the tiles
# and packing items are handed out dynamically (a thread may claim its first tile and pack its rows
# of A while another still packs B), so the results must not depend on the thread count. 3 threads
# on a smaller machine also exercise a thread that starts late. Shapes: the small GPT's four layers
# (2048 tokens) and ones that fit no tile.
@pytest.mark.parametrize("rows,n_in,n_out", [(2048, 256, 768), (2048, 256, 256), (2048, 1024, 256), (2048, 256, 1024),
                                             (1001, 67, 301), (3, 513, 1030), (777, 300, 33)])
def test_linear_backward_threads_bit_identical(isa, threads, rng, rows, n_in, n_out):
    x = rng.standard_normal((rows, n_in)).astype(np.float32)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    dy = rng.standard_normal((rows, n_out)).astype(np.float32)
    got = []
    for n in (1, 2, 3):
        threads(n)
        got.append(ops.linear_backward(dy, x, w))
    for other in got[1:]:
        for u, v in zip(got[0], other):
            np.testing.assert_array_equal(u, v)
    dx, dw, db = got[0]
    check(dx, dy, w, False, False, np.float32)
    check(dw, dy, x, True, False, np.float32)
    dy2 = dy.astype(np.float64)
    assert np.all(np.abs(db - dy2.sum(0)) <= 2 * rows * U[np.float32] * np.abs(dy2).sum(0))


@pytest.mark.parametrize("mnk", [(4200, 20, 2304), (258, 40, 50304)])
def test_matmul_long_k_chunks(isa, threads, rng, mnk):
    # float32 AVX2: K cut into chunks when all of A does not fit 32 MiB (the first shape also
    # needs row chunks inside its first K chunk; the second is the dx of a vocabulary head)
    threads(2)
    m, n, k = mnk
    for ta, tb, accumulate in [(False, False, False), (True, True, True)]:
        a, b = operands(rng, m, n, k, ta, tb, np.float32)
        acc = rng.standard_normal((m, n)).astype(np.float32) if accumulate else None
        out = acc.copy() if accumulate else np.empty((m, n), np.float32)
        ops.matmul(a, b, trans_a=ta, trans_b=tb, out=out, accumulate=accumulate)
        check(out, a, b, ta, tb, np.float32, acc=acc)


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 33, 5), (127, 1000, 33), (301, 257, 31), (33, 700, 127),
                                   (2100, 4096, 20), (5, 0, 3)])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_linear_forward_bias_equals_fill_then_accumulate(isa, threads, rng, shape, nthreads):
    # the AVX2 path adds the bias where it first stores a C tile; it must equal y = b; y += x @ w^T
    threads(nthreads)
    n, n_in, n_out = shape
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    if n <= 16:  # few rows take the skinny product (tests/test_gemv.py), bias added after the sum
        np.testing.assert_array_equal(ops.linear_forward(x, w, b), ops.gemv(x, w, b))
        return
    want = np.broadcast_to(b, (n, n_out)).copy()
    ops.matmul(x, w, trans_b=True, out=want, accumulate=True)
    np.testing.assert_array_equal(ops.linear_forward(x, w, b), want)
    np.testing.assert_array_equal(ops.linear_forward(x, w, None), ops.matmul(x, w, trans_b=True))


# Edge tiles at every remainder of the register tiles (AVX2 6x16, AVX-512 12x32 with masked
# stores): rows 1..25 against 67 columns and columns 1..65 against 27 rows cover each remainder of
# both, alone and after full tiles, with one K block and several. The epilogues at each edge: the
# bias (added at the first store) equals filling then accumulating, the residual (added at the
# last store) equals adding it afterwards, and accumulate adds to what c held.
@pytest.mark.parametrize("k", [5, 1000])
def test_matmul_edge_tiles_every_remainder(isa, threads, rng, k):
    threads(1)
    # (linear_forward with <= 16 rows takes the skinny product, tests/test_gemv.py: the bias epilogue
    # is checked from 17 rows, which still cover every remainder of 6 and 12)
    shapes = [(m, 67) for m in range(1, 42)] + [(27, n) for n in range(1, 66)]
    for m, n in shapes:
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        r = rng.standard_normal((m, n)).astype(np.float32)
        y = ops.linear_forward(x, w, b)
        check(y, x, w, False, True, np.float32, acc=np.broadcast_to(b.astype(np.float64), (m, n)))
        filled = np.broadcast_to(b, (m, n)).copy()
        ops.matmul(x, w, trans_b=True, out=filled, accumulate=True)
        if m > 16:
            np.testing.assert_array_equal(y, filled, err_msg=f"bias, {m}x{n}x{k}")
        np.testing.assert_array_equal(ops.linear_forward(x, w, b, r), r + y, err_msg=f"residual, {m}x{n}x{k}")
        for ta, tb in itertools.product([False, True], repeat=2):
            a2, b2 = operands(rng, m, n, k, ta, tb, np.float32)
            check(ops.matmul(a2, b2, trans_a=ta, trans_b=tb), a2, b2, ta, tb, np.float32)


@pytest.mark.parametrize("mnk", [(1, 257, 257), (7, 300, 513), (256, 1024, 2048), (133, 999, 777), (250, 4100, 300)])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_matmul_transposed_product_same_bits(isa, threads, rng, mnk, nthreads):
    # float32 AVX2: with several K blocks, C at most 256 rows tall and wider than that (weight
    # gradients), C^T = op(B)^T op(A)^T is computed and stored transposed. The bits must be those of
    # the direct product, which accumulating into zeros still computes (accumulate never swaps).
    threads(nthreads)
    m, n, k = mnk
    for ta, tb in itertools.product([False, True], repeat=2):
        a, b = operands(rng, m, n, k, ta, tb, np.float32)
        c = ops.matmul(a, b, trans_a=ta, trans_b=tb)
        direct = np.zeros((m, n), np.float32)
        ops.matmul(a, b, trans_a=ta, trans_b=tb, out=direct, accumulate=True)
        np.testing.assert_array_equal(c, direct)
        check(c, a, b, ta, tb, np.float32)


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 33, 5), (127, 1000, 33), (301, 257, 31), (2048, 1024, 256),
                                   (2100, 4096, 20), (258, 33000, 20), (5, 0, 3), (0, 4, 6)])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_linear_forward_residual_equals_adding_after(isa, threads, rng, shape, nthreads):
    # float32 AVX2 adds the residual where it stores C for the last time (the last K block of the
    # last K chunk: (258, 33000, 20) is cut into K chunks); it must give residual + y's bits
    threads(nthreads)
    n, n_in, n_out = shape
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((n, n_in)).astype(dtype)
        w = rng.standard_normal((n_out, n_in)).astype(dtype)
        b = rng.standard_normal(n_out).astype(dtype)
        r = rng.standard_normal((n, n_out)).astype(dtype)
        for bias in (b, None):
            y = ops.linear_forward(x, w, bias, r)
            assert y.dtype == dtype and y.shape == (n, n_out)
            np.testing.assert_array_equal(y, r + ops.linear_forward(x, w, bias))
    # leading dimensions, and -0.0 + 0.0 = +0.0 as in the separate add
    x = np.zeros((2, 3, 4), np.float32)
    r = np.full((2, 3, 5), -0.0, np.float32)
    y = ops.linear_forward(x, np.ones((5, 4), np.float32), None, r)
    assert y.shape == (2, 3, 5) and not np.signbit(y).any()


def test_linear_forward_residual_bad_input():
    f32 = lambda *s: np.ones(s, np.float32)
    x, w, b = f32(2, 3, 5), f32(4, 5), f32(4)
    with pytest.raises(ValueError, match=r"linear_forward: residual must have shape \(2, 3, 4\), got \(6, 4\)"):
        ops.linear_forward(x, w, b, f32(6, 4))
    with pytest.raises(TypeError, match="linear_forward: residual must be float32"):
        ops.linear_forward(x, w, b, np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="linear_forward: residual must be C-contiguous"):
        ops.linear_forward(x, w, b, f32(2, 4, 3).transpose(0, 2, 1))


# ----- linear_backward's bias gradient ------------------------------------------------------
# float32 AVX2 sums db while dW's GEMM packs dy^T (else a plain pass): either way db adds the rows
# of dy in order, the bits of a plain loop (np.cumsum is sequential), whatever the threads, tile
# shapes, edge tiles and K chunks; dx and dw are the plain matmuls'.
DB_SHAPES = [(1, 1, 1), (7, 5, 3), (33, 17, 29), (127, 33, 1000), (301, 257, 31), (100, 300, 7),
             (2048, 256, 1024), (2048, 1024, 256), (13, 7000, 9), (300, 2, 513), (5, 0, 3), (0, 4, 6)]


@pytest.mark.parametrize("shape", DB_SHAPES)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_linear_backward_db_sums_rows_in_order(isa, threads, rng, shape, nthreads):
    threads(nthreads)
    _check_linear_backward_bits(rng, *shape)


def _check_linear_backward_bits(rng, n, n_in, n_out):
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    dy = rng.standard_normal((n, n_out)).astype(np.float32)
    dx, dw, db = ops.linear_backward(dy, x, w)
    np.testing.assert_array_equal(db, np.cumsum(dy, axis=0, dtype=np.float32)[-1] if n else np.zeros(n_out, np.float32))
    np.testing.assert_array_equal(dw, ops.matmul(dy, x, trans_a=True))
    np.testing.assert_array_equal(dx, ops.matmul(dy, w))


@pytest.mark.parametrize("rows,n_in,n_out", [(180_000, 20, 48), (4000, 300, 7)])
def test_linear_backward_db_over_k_chunks(threads, rng, rows, n_in, n_out):
    # float32 AVX2: dW's K (the rows) is cut into chunks when all of dy^T does not fit the packing
    # limit (first shape); the second has tiles that do not pack their own A (db from a plain pass)
    threads(2)
    _check_linear_backward_bits(rng, rows, n_in, n_out)
