"""Activation kernels against the float64 reference, finite differences, and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from fusegrad import ops
from reference import numerical_grad
import reference as ref

SIZES = [1, 7, 33, 127, 1000, 1 << 20]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_matches_reference(isa, rng, n, dtype):
    x = rng.standard_normal(n).astype(dtype)
    dy = rng.standard_normal(n).astype(dtype)
    np.testing.assert_array_equal(ops.relu_forward(x), ref.relu_forward(x.astype(np.float64)).astype(dtype))
    np.testing.assert_array_equal(ops.relu_backward(dy, x), ref.relu_backward(dy.astype(np.float64), x).astype(dtype))


def test_relu_keeps_shape_and_nan(isa):
    x = np.array([[np.nan, -1.0, 2.0], [0.0, -0.0, np.inf]], dtype=np.float32)
    y = ops.relu_forward(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.isnan(y[0, 0]) and y[0, 1] == 0 and y[0, 2] == 2 and y[1, 2] == np.inf


def test_relu_gradient_finite_differences(rng):
    x = rng.standard_normal(13)
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    dy = rng.standard_normal(13)
    num = numerical_grad(lambda z: float(np.sum(ops.relu_forward(z) * dy)), x)
    np.testing.assert_allclose(ops.relu_backward(dy, x), num, rtol=1e-6, atol=1e-8)


def test_relu_bad_input():
    with pytest.raises(TypeError, match="relu_forward: x must be float32 or float64, got int64"):
        ops.relu_forward(np.arange(3))
    with pytest.raises(TypeError, match="relu_forward: x must be a numpy.ndarray, got list"):
        ops.relu_forward([1.0, 2.0])
    with pytest.raises(ValueError, match="relu_forward: x must be C-contiguous"):
        ops.relu_forward(np.ones((4, 4), np.float32)[:, ::2])
    with pytest.raises(ValueError, match=r"relu_backward: dy must have the shape of x \(3,\), got \(4,\)"):
        ops.relu_backward(np.ones(4, np.float32), np.ones(3, np.float32))
    with pytest.raises(TypeError, match="relu_backward: dy must be float32"):
        ops.relu_backward(np.ones(3, np.float64), np.ones(3, np.float32))


def test_relu_empty(isa):
    assert ops.relu_forward(np.zeros((0, 3), np.float32)).shape == (0, 3)


# --- gelu, sigmoid, tanh ------------------------------------------------------------------

TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}
GELU_MODES = ["none", "tanh"]


def _cases():
    """(name, forward, backward(dy, x, y), reference forward, reference backward(dy, x, y))."""
    out = []
    for mode in GELU_MODES:
        out.append((f"gelu-{mode}", lambda x, m=mode: ops.gelu_forward(x, approximate=m),
                    lambda dy, x, y, m=mode: ops.gelu_backward(dy, x, approximate=m),
                    lambda x, m=mode: ref.gelu_forward(x, m), lambda dy, x, y, m=mode: ref.gelu_backward(dy, x, m)))
        # the training pair: y and gelu'(x) from one pass, the backward a multiply by the saved gelu'(x)
        out.append((f"gelu-{mode}-with-grad", lambda x, m=mode: ops.gelu_forward_with_grad(x, approximate=m)[0],
                    lambda dy, x, y, m=mode: ops.gelu_backward_from_grad(dy, ops.gelu_forward_with_grad(x, m)[1]),
                    lambda x, m=mode: ref.gelu_forward(x, m), lambda dy, x, y, m=mode: ref.gelu_backward(dy, x, m)))
    out.append(("sigmoid", ops.sigmoid_forward, lambda dy, x, y: ops.sigmoid_backward(dy, y),
                ref.sigmoid_forward, lambda dy, x, y: ref.sigmoid_backward(dy, y)))
    out.append(("tanh", ops.tanh_forward, lambda dy, x, y: ops.tanh_backward(dy, y),
                ref.tanh_forward, lambda dy, x, y: ref.tanh_backward(dy, y)))
    return out


CASES = _cases()
CASE_IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("n", [1, 7, 33, 127, 1000, 1 << 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smooth_activation_matches_reference(isa, rng, case, n, dtype):
    _, fwd, bwd, rfwd, rbwd = case
    x = (3 * rng.standard_normal(n)).astype(dtype)
    dy = rng.standard_normal(n).astype(dtype)
    y = fwd(x)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, rfwd(x.astype(np.float64)), **TOL[dtype])
    # backward from our own forward output (what autograd will pass) vs the float64 reference
    dx = bwd(dy, x, y)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, rbwd(dy.astype(np.float64), x.astype(np.float64), y.astype(np.float64)), **TOL[dtype])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_smooth_activation_finite_differences(rng, case):
    _, fwd, bwd, _, _ = case
    x = 2 * rng.standard_normal((3, 5))
    dy = rng.standard_normal((3, 5))
    num = numerical_grad(lambda z: float(np.sum(fwd(z) * dy)), x)
    np.testing.assert_allclose(bwd(dy, x, fwd(x)), num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smooth_activation_extremes_are_finite(isa, case, dtype):
    name, fwd, bwd, rfwd, rbwd = case
    x = np.array([-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4], dtype=dtype)
    dy = np.ones_like(x)
    y = fwd(x)
    dx = bwd(dy, x, y)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx)), (name, y, dx)
    np.testing.assert_allclose(y, rfwd(x.astype(np.float64)), **TOL[dtype])
    np.testing.assert_allclose(dx, rbwd(dy.astype(np.float64), x.astype(np.float64), y.astype(np.float64)), **TOL[dtype])


def test_smooth_activation_known_values():
    x = np.array([-1e4, 0.0, 1e4], np.float32)
    np.testing.assert_array_equal(ops.sigmoid_forward(x), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(ops.tanh_forward(x), [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(ops.gelu_forward(x), [-0.0, 0.0, 1e4])
    np.testing.assert_array_equal(ops.gelu_backward(np.ones(3, np.float32), x, approximate="tanh"), [0.0, 0.5, 1.0])


def test_smooth_activation_bad_input():
    with pytest.raises(ValueError, match="gelu_forward: approximate must be 'none' or 'tanh', got 'erf'"):
        ops.gelu_forward(np.ones(3, np.float32), approximate="erf")
    with pytest.raises(ValueError, match="gelu_backward: approximate must be 'none' or 'tanh', got 'x'"):
        ops.gelu_backward(np.ones(3, np.float32), np.ones(3, np.float32), approximate="x")
    with pytest.raises(TypeError, match="sigmoid_forward: x must be float32 or float64, got int64"):
        ops.sigmoid_forward(np.arange(3))
    with pytest.raises(ValueError, match=r"sigmoid_backward: dy must have the shape of y \(3,\), got \(4,\)"):
        ops.sigmoid_backward(np.ones(4, np.float32), np.ones(3, np.float32))
    with pytest.raises(TypeError, match="tanh_backward: dy must be float64"):
        ops.tanh_backward(np.ones(3, np.float32), np.ones(3, np.float64))
    with pytest.raises(ValueError, match="tanh_forward: x must be C-contiguous"):
        ops.tanh_forward(np.ones((4, 4), np.float32)[:, ::2])
    with pytest.raises(TypeError, match="gelu_backward: x must be a numpy.ndarray, got list"):
        ops.gelu_backward(np.ones(3, np.float32), [1.0, 2.0, 3.0])


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_does_not_depend_on_thread_count(isa, threads, rng, approximate):
    # each thread's chunk may end inside a vector; the tanh form's AVX2 path runs chunk tails
    # through the same (zero-padded) vector math, so every element gets the same bits
    x = (3 * rng.standard_normal(2 * 8192 + 5)).astype(np.float32)
    dy = rng.standard_normal(x.size).astype(np.float32)
    threads(1)
    y1, d1 = ops.gelu_forward(x, approximate), ops.gelu_backward(dy, x, approximate)
    threads(2)
    y2, d2 = ops.gelu_forward(x, approximate), ops.gelu_backward(dy, x, approximate)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(d1, d2)
    assert np.all(np.abs(y2 - ref.gelu_forward(x.astype(np.float64), approximate)) <= 1e-6 * (1 + np.abs(x)))


# every masked-tail remainder of 8 and 16 lanes (1..33), an odd size over several vectors, and one
# split between two threads' chunks (grain 8192)
WITH_GRAD_SIZES = [*range(1, 34), 1000, 2 * 8192 + 13]


@pytest.mark.parametrize("approximate", GELU_MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_with_grad_has_the_bits_of_the_plain_kernels(isa, rng, approximate, dtype):
    # y is gelu_forward's y, dydx is gelu_backward's factor (dy = 1), and dy * dydx is gelu_backward's
    # dx, except (erf form, x below about -13) where the float32 dydx or dx is subnormal: there dydx is rounded
    # once (half a spacing, 2^-150, then times |dy|) before the multiply, and each dx once more
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 4.5, -4.5, 14.85, -14.85, 30, -30, 1e4, -1e4, 1e-40])
    for n in WITH_GRAD_SIZES:
        x = np.concatenate([special, 5 * rng.standard_normal(n)])[:n] if n > 2 * special.size else 5 * rng.standard_normal(n)
        x = (x * rng.choice([1, 3], size=n)).astype(dtype)  # some lanes past |x| = 4.5: the tail form
        dy = rng.standard_normal(n).astype(dtype)
        y, dydx = ops.gelu_forward_with_grad(x, approximate)
        assert y.dtype == dydx.dtype == dtype and y.shape == dydx.shape == x.shape
        np.testing.assert_array_equal(y, ops.gelu_forward(x, approximate))
        np.testing.assert_array_equal(dydx, ops.gelu_backward(np.ones_like(x), x, approximate))
        dx, old = ops.gelu_backward_from_grad(dy, dydx), ops.gelu_backward(dy, x, approximate)
        tiny = np.finfo(dtype).tiny
        normal = (~(np.abs(dydx) < tiny) | (dydx == 0)) & (~(np.abs(old) < tiny) | (old == 0))
        np.testing.assert_array_equal(dx[normal], old[normal])
        np.testing.assert_allclose(dx[~normal], old[~normal], rtol=0, atol=float((np.abs(dy) + 2).max()) * 2.0**-150)


def test_gelu_with_grad_shapes_and_empty(isa):
    for shape in [(0,), (0, 3), (1,), (2, 3, 5)]:
        x = np.linspace(-3, 3, int(np.prod(shape))).astype(np.float32).reshape(shape)
        y, dydx = ops.gelu_forward_with_grad(x)
        assert y.shape == dydx.shape == shape
        assert ops.gelu_backward_from_grad(np.ones(shape, np.float32), dydx).shape == shape


@pytest.mark.parametrize("approximate", GELU_MODES)
def test_gelu_with_grad_does_not_depend_on_thread_count(isa, threads, rng, approximate):
    x = (3 * rng.standard_normal(2 * 8192 + 5)).astype(np.float32)
    dy = rng.standard_normal(x.size).astype(np.float32)
    threads(1)
    y1, d1 = ops.gelu_forward_with_grad(x, approximate)
    threads(2)
    y2, d2 = ops.gelu_forward_with_grad(x, approximate)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(ops.gelu_backward_from_grad(dy, d2), ops.gelu_backward(dy, x, approximate))


def test_gelu_with_grad_bad_input():
    f32 = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="gelu_forward_with_grad: approximate must be 'none' or 'tanh', got 'erf'"):
        ops.gelu_forward_with_grad(f32, approximate="erf")
    with pytest.raises(TypeError, match="gelu_forward_with_grad: x must be float32 or float64, got int64"):
        ops.gelu_forward_with_grad(np.arange(3))
    with pytest.raises(ValueError, match="gelu_forward_with_grad: x must be C-contiguous"):
        ops.gelu_forward_with_grad(np.ones((4, 4), np.float32)[:, ::2])
    with pytest.raises(ValueError, match=r"gelu_backward_from_grad: dy must have the shape of dydx \(3,\), got \(4,\)"):
        ops.gelu_backward_from_grad(np.ones(4, np.float32), f32)
    with pytest.raises(TypeError, match="gelu_backward_from_grad: dy must be float32"):
        ops.gelu_backward_from_grad(np.ones(3, np.float64), f32)
    with pytest.raises(TypeError, match="gelu_backward_from_grad: dydx must be a numpy.ndarray, got list"):
        ops.gelu_backward_from_grad(f32, [1.0, 2.0, 3.0])


@pytest.mark.parametrize("approximate", GELU_MODES)
def test_gelu_autograd_saves_the_derivative_and_matches_finite_differences(rng, approximate):
    import fusegrad as fg
    import fusegrad.nn.functional as F
    x = fg.tensor(2 * rng.standard_normal((3, 7)), requires_grad=True)
    dy = rng.standard_normal((3, 7))
    y = F.gelu(x, approximate)
    assert y._ctx.dydx is not None and not hasattr(y._ctx, "x")  # the training pair, not x
    y.backward(fg.tensor(dy))
    num = numerical_grad(lambda z: float(np.sum(ops.gelu_forward(z, approximate) * dy)), x.data.copy())
    np.testing.assert_allclose(x.grad.data, num, rtol=1e-6, atol=1e-8)
    with fg.no_grad():  # not recorded: the plain forward, same y
        np.testing.assert_array_equal(F.gelu(x, approximate).data, y.data)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_backward_keeps_relative_accuracy_near_saturation(dtype):
    # 1 - y*y loses digits as |y| -> 1 (float32 y = 0.99993 was 6e-5 off relative, fuzz seed 167);
    # (1 - y)(1 + y) keeps a few roundings, so the gradient of a saturated tanh stays accurate
    y = np.concatenate([1 - np.logspace(-1, -7 if dtype == np.float32 else -15, 61), [0.5, 0.0]]).astype(dtype)
    y = np.concatenate([y, -y])
    dy = np.full_like(y, 3.0)
    from fractions import Fraction
    exact = np.array([float(3 * (1 - Fraction(float(v)) ** 2)) for v in y])          # exact, then rounded
    got = ops.tanh_backward(dy, y)
    np.testing.assert_allclose(got, exact, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_tanh_sigmoid_relative_accuracy_over_the_float_range(isa, name):
    # relative error in float32 ulps against float64, from tiny to saturating inputs: tanh's small
    # branch (a polynomial below |x| = 0.625) keeps tanh(1e-30) = 1e-30 and -0 as -0, where
    # 1 - 2 / (e^{2x} + 1) would cancel; sigmoid's left tail is e^x / (1 + e^x), relative too
    mag = np.logspace(-30, np.log10(80.0), 4001)
    x = np.concatenate([mag, -mag, np.linspace(-1, 1, 2001), [0.0, -0.0, 0.625, -0.625]]).astype(np.float32)
    x64 = x.astype(np.float64)
    fwd, want = (ops.tanh_forward, np.tanh(x64)) if name == "tanh" else (ops.sigmoid_forward, 1 / (1 + np.exp(-x64)))
    got = fwd(x).astype(np.float64)
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    keep = np.abs(want) >= np.finfo(np.float32).tiny      # normal results (sigmoid below -87 underflows)
    assert np.max(np.abs(got - want)[keep] / ulp[keep]) <= 3.0
    if name == "tanh":
        assert np.signbit(fwd(np.array([-0.0], np.float32))[0])
        np.testing.assert_array_equal(fwd(np.array([np.inf, -np.inf, 1e30, -1e30], np.float32)), [1, -1, 1, -1])
    else:
        np.testing.assert_array_equal(fwd(np.array([np.inf, -np.inf, -1e30, 100.0], np.float32)), [1, 0, 0, 1])
    assert np.isnan(fwd(np.array([np.nan], np.float32))[0])
