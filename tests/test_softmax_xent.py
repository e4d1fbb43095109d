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


# The AVX2 float32 kernels walk a row in chunks of 512 with a running max (online softmax) and
# keep the exps in a scratch row. These rows make the running max grow chunk after chunk, start
# mid-chunk, and end in a partial vector.
@pytest.mark.parametrize("V", [511, 513, 1500, 5003])
def test_rows_whose_max_grows_across_chunks(isa, V):
    x = np.stack([np.linspace(-40, 40, V), np.linspace(40, -40, V), np.r_[np.zeros(V - 1), 90.0],
                  np.where(np.arange(V) % 600 == 599, 30.0, -30.0)]).astype(np.float32)
    t = np.array([V - 1, 0, 3, V // 2])
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(ops.softmax_forward(x), ref.softmax_forward(x64), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ops.log_softmax_forward(x), ref.log_softmax_forward(x64), rtol=1e-6, atol=1e-5)
    loss, lse = ops.cross_entropy_forward(x, t)
    rloss, rlse = ref.cross_entropy_forward(x64, t)
    np.testing.assert_allclose(lse, rlse, rtol=1e-6)
    np.testing.assert_allclose(loss, rloss, rtol=1e-6)
    np.testing.assert_allclose(ops.cross_entropy_backward(x, t, lse, 1.0),
                               ref.cross_entropy_backward(x64, t, rlse, 1.0), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("pos", [0, 511, 512, 1300, 1499])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_logit_in_a_later_chunk(isa, pos, bad):
    x = np.random.default_rng(0).standard_normal((3, 1500)).astype(np.float32)
    x[1, pos] = bad
    t = np.array([0, 7, 2])
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        want_y, want_ly = ref.softmax_forward(x64), x64 - ref.cross_entropy_forward(x64, t)[1][:, None]
        want_lse = ref.cross_entropy_forward(x64, t)[1]
    y, ly = ops.softmax_forward(x), ops.log_softmax_forward(x)
    loss, lse = ops.cross_entropy_forward(x, t)
    if bad == -np.inf:  # an ordinary row that has one zero probability
        np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(lse, want_lse, rtol=1e-6)
        assert ly[1, pos] == -np.inf and np.isfinite(loss)
    else:  # NaN: the row is NaN; +inf: softmax NaN (inf - inf), lse = +inf
        assert np.isnan(y[1]).all()
        assert np.isnan(lse[1]) if np.isnan(bad) else lse[1] == np.inf
        assert not np.isfinite(loss)
    np.testing.assert_allclose(y[[0, 2]], want_y[[0, 2]], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(ly[[0, 2]], want_ly[[0, 2]], rtol=1e-5, atol=1e-5)


def test_all_minus_inf_row_is_nan_softmax_and_minus_inf_lse(isa):
    x = np.full((2, 1030), -np.inf, np.float32)
    x[0] = 0
    y = ops.softmax_forward(x)
    np.testing.assert_allclose(y[0], 1 / 1030, rtol=1e-6)
    assert np.isnan(y[1]).all()
    _, lse = ops.cross_entropy_forward(x, np.array([0, -100]))
    assert lse[1] == -np.inf


@pytest.mark.parametrize("kind", ["softmax", "log_softmax", "cross_entropy"])
def test_long_rows_match_reference_and_any_thread_count(isa, threads, rng, kind):
    # rows handed out to threads in blocks, first come first served; rows start at odd offsets
    N, V = 50, 50301
    x = (3 * rng.standard_normal((N, V))).astype(np.float32)
    dy = rng.standard_normal((N, V)).astype(np.float32)
    t = rng.integers(0, V, N)
    x64 = x.astype(np.float64)
    outs = []
    for n in (1, 2, 3):
        threads(n)
        if kind == "cross_entropy":
            loss, lse = ops.cross_entropy_forward(x, t)
            outs.append((loss, lse, ops.cross_entropy_backward(x, t, lse, 1.0)))
        else:
            y = getattr(ops, f"{kind}_forward")(x)
            outs.append((y, getattr(ops, f"{kind}_backward")(dy, y)))
    for o in outs[1:]:  # bitwise the same for any thread count
        for a, b in zip(outs[0], o):
            np.testing.assert_array_equal(a, b)
    if kind == "cross_entropy":
        rloss, rlse = ref.cross_entropy_forward(x64, t)
        np.testing.assert_allclose(outs[0][0], rloss, rtol=1e-5)
        np.testing.assert_allclose(outs[0][1], rlse, rtol=1e-6)
        np.testing.assert_allclose(outs[0][2], ref.cross_entropy_backward(x64, t, rlse, 1.0), rtol=1e-4, atol=1e-10)
    else:
        y, dx = outs[0]
        np.testing.assert_allclose(y, getattr(ref, f"{kind}_forward")(x64), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(dx, getattr(ref, f"{kind}_backward")(dy.astype(np.float64), y.astype(np.float64)),
                                   rtol=1e-4, atol=1e-6)


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
