"""mse_forward / mse_backward against the NumPy float64 reference and finite differences."""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from fusegrad import ops

SIZES = [1, 7, 33, 127, 1000, 1 << 20]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mse_matches_reference(isa, rng, n, dtype):
    pred = rng.standard_normal(n).astype(dtype)
    target = rng.standard_normal(n).astype(dtype)
    loss = ops.mse_forward(pred, target)
    assert loss.shape == () and loss.dtype == dtype
    want = ref.mse_forward(pred.astype(np.float64), target.astype(np.float64))
    np.testing.assert_allclose(loss, want, rtol=1e-6 if dtype == np.float32 else 1e-12)
    d = ops.mse_backward(pred, target, 0.7)
    assert d.dtype == dtype and d.shape == pred.shape
    np.testing.assert_allclose(d, ref.mse_backward(pred.astype(np.float64), target.astype(np.float64), 0.7),
                               rtol=1e-6 if dtype == np.float32 else 1e-13, atol=0)


def test_mse_any_shape(rng):
    pred, target = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    assert ops.mse_forward(pred, target) == pytest.approx(ref.mse_forward(pred, target), rel=1e-13)
    assert ops.mse_backward(pred, target, 1.0).shape == (3, 4, 5)


def test_mse_thread_independent(threads, rng):
    pred, target = rng.standard_normal(300_001).astype(np.float32), rng.standard_normal(300_001).astype(np.float32)
    threads(1)
    a = ops.mse_forward(pred, target)
    threads(2)
    b = ops.mse_forward(pred, target)
    assert a.tobytes() == b.tobytes()


def test_mse_grad_finite_differences(isa, rng):
    pred, target = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    num = ref.numerical_grad(lambda p: float(ops.mse_forward(p, target)), pred)
    np.testing.assert_allclose(ops.mse_backward(pred, target, 1.0), num, rtol=1e-6, atol=1e-9)


def test_mse_bad_inputs():
    x32, x64 = np.zeros(3, np.float32), np.zeros(3)
    with pytest.raises(TypeError, match=r"mse_forward: target must be float32 .*got float64"):
        ops.mse_forward(x32, x64)
    with pytest.raises(TypeError, match=r"mse_forward: pred must be float32 or float64, got int64"):
        ops.mse_forward(np.zeros(3, np.int64), x64)
    with pytest.raises(ValueError, match=r"mse_backward: target must have the shape of pred \(3,\), got \(4,\)"):
        ops.mse_backward(x64, np.zeros(4), 1.0)
    with pytest.raises(ValueError, match=r"mse_forward: pred must have at least one element"):
        ops.mse_forward(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match=r"mse_forward: target must be C-contiguous"):
        ops.mse_forward(np.zeros(3), np.zeros(6)[::2])
