"""Softmax, log-softmax and cross-entropy kernels against the float64 reference,
finite differences, extreme logits, ignore_index, and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from fusegrad import ops
from reference import numerical_grad
import reference as ref

TOL = {np.float32: dict(rtol=1e-4, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-13)}
SHAPES = [(1, 1), (7, 7), (3, 33), (5, 127), (4, 1000), (2, 3, 768), (8, 50304)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["softmax", "log_softmax"])
def test_softmax_matches_reference(isa, rng, shape, dtype, kind):
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    fwd, bwd = getattr(ops, f"{kind}_forward"), getattr(ops, f"{kind}_backward")
    rfwd, rbwd = getattr(ref, f"{kind}_forward"), getattr(ref, f"{kind}_backward")
    y = fwd(x)
    assert y.shape == shape and y.dtype == dtype
    np.testing.assert_allclose(y, rfwd(x.astype(np.float64)), **TOL[dtype])
    np.testing.assert_allclose(bwd(dy, y), rbwd(dy.astype(np.float64), y.astype(np.float64)), **TOL[dtype])


@pytest.mark.parametrize("kind", ["softmax", "log_softmax"])
def test_softmax_finite_differences(rng, kind):
    fwd, bwd = getattr(ops, f"{kind}_forward"), getattr(ops, f"{kind}_backward")
    x = rng.standard_normal((3, 5))
    dy = rng.standard_normal((3, 5))
    num = numerical_grad(lambda z: float(np.sum(fwd(z) * dy)), x)
    np.testing.assert_allclose(bwd(dy, fwd(x)), num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_extreme_logits(isa, dtype):
    x = np.array([[1e4, -1e4, 0.0, 1e4], [-1e4, -1e4, -1e4, -1e4]], dtype)
    y = ops.softmax_forward(x)
    np.testing.assert_allclose(y, [[0.5, 0, 0, 0.5], [0.25] * 4], atol=1e-7)
    ly = ops.log_softmax_forward(x)
    assert np.all(np.isfinite(ly))
    np.testing.assert_allclose(ly, ref.log_softmax_forward(x.astype(np.float64)), rtol=1e-6)


def _targets(rng, N, V, itype, n_ignored=0):
    t = rng.integers(0, V, N).astype(itype)
    t[rng.permutation(N)[:n_ignored]] = -100
    return t


@pytest.mark.parametrize("N,V", [(1, 1), (7, 7), (33, 5), (127, 33), (1000, 10), (6, 1000), (4, 50304)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("itype", [np.int32, np.int64])
def test_cross_entropy_matches_reference(isa, rng, N, V, dtype, itype):
    logits = (3 * rng.standard_normal((N, V))).astype(dtype)
    t = _targets(rng, N, V, itype, n_ignored=N // 3)
    loss, lse = ops.cross_entropy_forward(logits, t)
    rloss, rlse = ref.cross_entropy_forward(logits.astype(np.float64), t)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype
    np.testing.assert_allclose(loss, rloss, **TOL[dtype])
    np.testing.assert_allclose(lse, rlse, **TOL[dtype])
    d = ops.cross_entropy_backward(logits, t, lse, 1.5)
    np.testing.assert_allclose(d, ref.cross_entropy_backward(logits.astype(np.float64), t, rlse, 1.5), **TOL[dtype])


def test_cross_entropy_finite_differences(rng):
    logits = rng.standard_normal((5, 7))
    t = np.array([0, 6, -100, 3, 3])
    num = numerical_grad(lambda z: float(ops.cross_entropy_forward(z, t)[0]), logits)
    _, lse = ops.cross_entropy_forward(logits, t)
    np.testing.assert_allclose(ops.cross_entropy_backward(logits, t, lse, 1.0), num, rtol=1e-6, atol=1e-8)
    # dloss as a 0-d array scales the gradient
    np.testing.assert_allclose(ops.cross_entropy_backward(logits, t, lse, np.array(2.0)), 2 * num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_extreme_logits(isa, dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [-1e4, -1e4, -1e4]], dtype)
    t = np.array([1, 2, 0])
    loss, lse = ops.cross_entropy_forward(logits, t)
    # row losses: 2e4, log 2, log 3
    np.testing.assert_allclose(loss, (2e4 + np.log(2) + np.log(3)) / 3, rtol=1e-6)
    d = ops.cross_entropy_backward(logits, t, lse, 1.0)
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(d, ref.cross_entropy_backward(logits.astype(np.float64), t, lse.astype(np.float64), 1.0), atol=1e-7)


def test_cross_entropy_all_ignored_is_nan_like_torch():
    logits = np.ones((3, 4), np.float32)
    t = np.full(3, -1, np.int64)
    loss, lse = ops.cross_entropy_forward(logits, t, ignore_index=-1)
    assert np.isnan(loss)
    np.testing.assert_array_equal(ops.cross_entropy_backward(logits, t, lse, 1.0, ignore_index=-1), np.zeros((3, 4), np.float32))


def test_cross_entropy_matches_torch(rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((9, 11))
    t = np.array([0, 1, -100, 10, 5, 5, -100, 2, 3])
    tl = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tl, torch.tensor(t))
    tloss.backward()
    loss, lse = ops.cross_entropy_forward(logits, t)
    np.testing.assert_allclose(loss, tloss.item(), rtol=1e-12)
    np.testing.assert_allclose(ops.cross_entropy_backward(logits, t, lse, 1.0), tl.grad.numpy(), rtol=1e-10, atol=1e-15)
    allign = torch.nn.functional.cross_entropy(tl, torch.full((9,), -100))
    assert np.isnan(allign.item()) and np.isnan(ops.cross_entropy_forward(logits, np.full(9, -100))[0])


def test_softmax_xent_bad_input():
    x = np.ones((2, 5), np.float32)
    t = np.array([0, 4])
    with pytest.raises(TypeError, match="softmax_forward: x must be float32 or float64, got int64"):
        ops.softmax_forward(np.ones((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"log_softmax_backward: dy must have the shape of y \(2, 5\), got \(5,\)"):
        ops.log_softmax_backward(np.ones(5, np.float32), x)
    with pytest.raises(ValueError, match="softmax_forward: x must have at least 1 dimension"):
        ops.softmax_forward(np.ones((), np.float32))
    with pytest.raises(ValueError, match=r"cross_entropy_forward: targets\[1\] = 5 is out of range \[0, 5\)"):
        ops.cross_entropy_forward(x, np.array([0, 5]))
    with pytest.raises(ValueError, match=r"cross_entropy_forward: targets\[0\] = -1 is out of range"):
        ops.cross_entropy_forward(x, np.array([-1, 0], np.int32))
    with pytest.raises(TypeError, match="cross_entropy_forward: targets must be int32 or int64, got float32"):
        ops.cross_entropy_forward(x, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"cross_entropy_forward: targets must have shape \(2,\), got \(3,\)"):
        ops.cross_entropy_forward(x, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="cross_entropy_forward: logits must have 2 dimensions, got 3"):
        ops.cross_entropy_forward(np.ones((1, 2, 5), np.float32), t)
    _, lse = ops.cross_entropy_forward(x, t)
    with pytest.raises(ValueError, match=r"cross_entropy_backward: targets\[1\] = 7 is out of range"):
        ops.cross_entropy_backward(x, np.array([0, 7]), lse, 1.0)
    with pytest.raises(ValueError, match=r"cross_entropy_backward: lse must have shape \(2,\), got \(3,\)"):
        ops.cross_entropy_backward(x, t, np.ones(3, np.float32), 1.0)
    with pytest.raises(TypeError, match="cross_entropy_backward: lse must be float32"):
        ops.cross_entropy_backward(x, t, lse.astype(np.float64), 1.0)
    with pytest.raises(TypeError, match="cross_entropy_backward: dloss must be a float, got str"):
        ops.cross_entropy_backward(x, t, lse, "a")
