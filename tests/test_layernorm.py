"""Layernorm kernels against the float64 reference, finite differences, and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from fusegrad import ops
from reference import numerical_grad
import reference as ref

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}
SHAPES = [(1, 1), (7, 7), (3, 33), (5, 127), (4, 1000), (2, 3, 768), (256, 4096)]


def _params(rng, C, dtype, affine):
    if not affine:
        return None, None
    return (1 + 0.5 * rng.standard_normal(C)).astype(dtype), rng.standard_normal(C).astype(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_matches_reference(isa, rng, shape, dtype, affine):
    C = shape[-1]
    x = (2 + 3 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = _params(rng, C, dtype, affine)
    y, mean, rstd = ops.layernorm_forward(x, w, b, eps=1e-5)
    f64 = lambda a: None if a is None else a.astype(np.float64)
    ry, rmean, rrstd = ref.layernorm_forward(f64(x), f64(w), f64(b), 1e-5)
    assert y.shape == shape and mean.shape == shape[:-1] and rstd.shape == shape[:-1] and y.dtype == dtype
    np.testing.assert_allclose(y, ry, **TOL[dtype])
    np.testing.assert_allclose(mean, rmean, **TOL[dtype])
    np.testing.assert_allclose(rstd, rrstd, **TOL[dtype])
    dx, dw, db = ops.layernorm_backward(dy, x, w, mean, rstd)
    rdx, rdw, rdb = ref.layernorm_backward(f64(dy), f64(x), f64(w), f64(mean), f64(rstd))
    np.testing.assert_allclose(dx, rdx, **TOL[dtype])
    # dweight/dbias sum over rows: absolute error grows like sqrt(rows)
    scale = np.sqrt(np.prod(shape[:-1]))
    np.testing.assert_allclose(dw, rdw, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)
    np.testing.assert_allclose(db, rdb, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_finite_differences(rng, affine):
    x = rng.standard_normal((3, 6))
    dy = rng.standard_normal((3, 6))
    w, b = _params(rng, 6, np.float64, True)
    if not affine:
        w = b = None
    _, mean, rstd = ops.layernorm_forward(x, w, b)
    dx, dw, db = ops.layernorm_backward(dy, x, w, mean, rstd)
    loss = lambda xx, ww, bb: float(np.sum(ops.layernorm_forward(xx, ww, bb)[0] * dy))
    np.testing.assert_allclose(dx, numerical_grad(lambda z: loss(z, w, b), x), rtol=1e-6, atol=1e-8)
    ww = np.ones(6) if w is None else w
    bb = np.zeros(6) if b is None else b
    np.testing.assert_allclose(dw, numerical_grad(lambda z: loss(x, z, bb), ww), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, numerical_grad(lambda z: loss(x, ww, z), bb), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layernorm_constant_rows(isa, dtype):
    x = np.full((4, 768), 3.5, dtype)
    x[1] = 1e4
    w, b = np.full(768, 2.0, dtype), np.full(768, 0.25, dtype)
    y, mean, rstd = ops.layernorm_forward(x, w, b)
    np.testing.assert_array_equal(y, np.full_like(x, 0.25))
    np.testing.assert_allclose(rstd, 1 / np.sqrt(1e-5), rtol=1e-6)
    dx, dw, db = ops.layernorm_backward(np.ones_like(x), x, w, mean, rstd)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dw)) and np.all(np.isfinite(db))
    np.testing.assert_array_equal(db, np.full(768, 4.0, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [1, 8, 34, 768])
def test_layernorm_nan_or_inf_row_gives_nan_statistics(isa, rng, dtype, C):
    # a row holding NaN or inf has no finite variance: rstd and y are NaN, as in PyTorch (the
    # AVX2 path once clamped a NaN variance to 0 and returned rstd = 1/sqrt(eps)); the mean is
    # NaN, or inf for an inf row (PyTorch's is inf or NaN, by C); the other rows are untouched
    x = rng.standard_normal((4, C)).astype(dtype)
    x[1, C // 2], x[2, C - 1] = np.nan, np.inf
    y, mean, rstd = ops.layernorm_forward(x, None, None)
    assert np.isnan(mean[1]) and not np.isfinite(mean[2])
    for r in (1, 2):
        assert np.isnan(rstd[r]) and np.isnan(y[r]).all()
    ry, rmean, rrstd = ref.layernorm_forward(x[[0, 3]].astype(np.float64), None, None, 1e-5)
    np.testing.assert_allclose(rstd[[0, 3]], rrstd, **TOL[dtype])
    np.testing.assert_allclose(y[[0, 3]], ry, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layernorm_offset_rows_and_outlier_first_element(isa, rng, dtype):
    # mean far from zero and the first element (the shift of the one-pass float32 statistics)
    # far from the mean: the worst case for cancellation in var = E[d^2] - E[d]^2
    C = 4096
    x = (1e4 + rng.standard_normal((6, C))).astype(dtype)
    x[:, 0] = [1e4 + 60, 1e4 - 60, -3e4, 5e4, 1e4, 1e4 + 1e-2]
    y, mean, rstd = ops.layernorm_forward(x, None, None)
    ry, rmean, rrstd = ref.layernorm_forward(x.astype(np.float64), None, None, 1e-5)
    np.testing.assert_allclose(mean, rmean, rtol=1e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(rstd, rrstd, **TOL[dtype])
    # y = (x - mean) * rstd inherits the rounding of x and mean (|mean| ~ 1e4) in the output dtype:
    # an absolute error of a few units of |mean| * rstd * u on top of the usual tolerance
    u = np.finfo(dtype).eps / 2
    atol = TOL[dtype]["atol"] + 4 * u * np.abs(rmean)[:, None] * rrstd[:, None]
    assert np.all(np.abs(y - ry) <= atol + TOL[dtype]["rtol"] * np.abs(ry))


@pytest.mark.parametrize("shape", [(4100, 519), (2, 1050001)])
def test_layernorm_large_streaming_outputs(isa, rng, threads, shape):
    # outputs over 8 MiB are written with streaming stores (float32 AVX2 path); C = 519 makes
    # successive rows start at every alignment, so the unaligned row heads are covered
    threads(2)
    C = shape[-1]
    x = (1 + 2 * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w, b = _params(rng, C, np.float32, True)
    y, mean, rstd = ops.layernorm_forward(x, w, b)
    ry, rmean, rrstd = ref.layernorm_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), 1e-5)
    np.testing.assert_allclose(y, ry, **TOL[np.float32])
    dx, dw, db = ops.layernorm_backward(dy, x, w, mean, rstd)
    rdx, rdw, rdb = ref.layernorm_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64),
                                           mean.astype(np.float64), rstd.astype(np.float64))
    np.testing.assert_allclose(dx, rdx, **TOL[np.float32])
    scale = np.sqrt(shape[0])
    np.testing.assert_allclose(dw, rdw, rtol=TOL[np.float32]["rtol"], atol=TOL[np.float32]["atol"] * scale)
    np.testing.assert_allclose(db, rdb, rtol=TOL[np.float32]["rtol"], atol=TOL[np.float32]["atol"] * scale)


@pytest.mark.parametrize("shape", [(513, 768), (64, 5001)])
def test_layernorm_avx2_same_result_for_any_thread_count(isa, rng, threads, shape):
    # the float32 AVX2 path sums dweight/dbias over fixed row slices in slice order, whichever
    # thread takes a slice: bit-identical for 1, 2 and 3 threads
    if isa == "portable":
        pytest.skip("the portable path is reproducible for a given thread count only")
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        threads(n)
        y, m, r = ops.layernorm_forward(x, w, None)
        results.append((y, m, r) + tuple(ops.layernorm_backward(dy, x, w, m, r)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_layernorm_deterministic_across_calls(rng, threads):
    threads(2)
    x = rng.standard_normal((513, 768)).astype(np.float32)
    dy = rng.standard_normal((513, 768)).astype(np.float32)
    w = rng.standard_normal(768).astype(np.float32)
    _, m, r = ops.layernorm_forward(x, w, None)
    first = ops.layernorm_backward(dy, x, w, m, r)
    for _ in range(3):
        again = ops.layernorm_backward(dy, x, w, m, r)
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)


def test_layernorm_bad_input():
    x = np.ones((2, 8), np.float32)
    with pytest.raises(TypeError, match="layernorm_forward: x must be float32 or float64, got int64"):
        ops.layernorm_forward(np.ones((2, 8), np.int64), None, None)
    with pytest.raises(ValueError, match=r"layernorm_forward: weight must have shape \(8,\), got \(4,\)"):
        ops.layernorm_forward(x, np.ones(4, np.float32), None)
    with pytest.raises(TypeError, match="layernorm_forward: bias must be float32"):
        ops.layernorm_forward(x, None, np.ones(8, np.float64))
    with pytest.raises(ValueError, match="layernorm_forward: x must have at least 1 dimension"):
        ops.layernorm_forward(np.array(1.0, np.float32), None, None)
    with pytest.raises(ValueError, match="layernorm_forward: x must be C-contiguous"):
        ops.layernorm_forward(np.ones((8, 8), np.float32)[:, ::2], None, None)
    with pytest.raises(ValueError, match="layernorm_forward: eps must be >= 0, got -1"):
        ops.layernorm_forward(x, None, None, eps=-1.0)
    _, m, r = ops.layernorm_forward(x, None, None)
    with pytest.raises(ValueError, match=r"layernorm_backward: dy must have the shape of x \(2, 8\), got \(2, 7\)"):
        ops.layernorm_backward(np.ones((2, 7), np.float32), x, None, m, r)
    with pytest.raises(ValueError, match=r"layernorm_backward: mean must have shape \(2,\), got \(3,\)"):
        ops.layernorm_backward(x, x, None, np.ones(3, np.float32), r)
    with pytest.raises(TypeError, match="layernorm_backward: rstd must be float32"):
        ops.layernorm_backward(x, x, None, m, r.astype(np.float64))
    with pytest.raises(TypeError, match="layernorm_backward: weight must be a numpy.ndarray, got list"):
        ops.layernorm_backward(x, x, [1.0] * 8, m, r)
