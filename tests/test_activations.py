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
