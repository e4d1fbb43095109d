"""fusegrad's public differentiable API against PyTorch, forward and backward."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fusegrad as fg
import fusegrad.nn.functional as F


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("targets,ignore_index", [([0, 2, 1, 2, 4, 3], 2), ([0, -1, 1, 2, 4, 3], -1),
                                                  ([-100, 2, 1, 2, 4, -100], -100)])
def test_cross_entropy_backward_honours_ignore_index(isa, rng, dtype, targets, ignore_index):
    # issue 22: the native backward ignored ignore_index (used -100): ignore_index=2 gave gradients
    # up to 0.147 off, ignore_index=-1 raised "targets[1] = -1 is out of range"
    logits = rng.standard_normal((6, 5)).astype(dtype)
    x = fg.tensor(logits, requires_grad=True)
    loss = F.cross_entropy(x, fg.tensor(targets), ignore_index=ignore_index)
    (loss * 3.0).backward()
    xt = torch.tensor(logits, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(targets), ignore_index=ignore_index)
    (lt * 3.0).backward()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(loss.data, lt.detach().numpy(), **tol)
    assert x.grad.dtype == dtype
    np.testing.assert_allclose(x.grad.data, xt.grad.numpy(), **tol)
    ignored = np.asarray(targets) == ignore_index
    assert not x.grad.data[ignored].any()


def test_zero_d_float64_results_stay_float64():
    # an op on 0-d arrays returns a NumPy scalar, which Tensor() turned into float32 like a Python
    # float: exp/abs/+/- of a 0-d float64 tensor, and its gradient, came out float32 (found by the table)
    x = fg.tensor(np.array(1.5), requires_grad=True)
    y = x.exp() * x + 2.0 - abs(x)
    assert y.dtype == np.float64
    y.backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad.data, np.exp(1.5) * 2.5 - 1.0, rtol=1e-15)
    assert fg.tensor(np.float64(2.0)).dtype == np.float64 and fg.tensor(np.int32(3)).dtype == np.int32
    assert fg.tensor(2.0).dtype == np.float32 and fg.tensor(3).dtype == np.int64  # Python numbers as in torch


def test_dot_product_backward():
    # 1-D @ 1-D: backward raised AxisError (found by the table)
    a = fg.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = fg.tensor(np.array([4.0, -5.0, 6.0]), requires_grad=True)
    y = a @ b
    assert y.shape == () and y.dtype == np.float64 and float(y) == 12.0
    (y * 2.0).backward()
    np.testing.assert_array_equal(a.grad.data, 2.0 * b.data)
    np.testing.assert_array_equal(b.grad.data, 2.0 * a.data)


def test_mse_loss_of_no_elements_is_nan():
    # the fused mean kernel refuses 0 elements, so F.mse_loss raised where torch returns NaN
    x = fg.tensor(np.zeros((0, 3)), requires_grad=True)
    loss = F.mse_loss(x, fg.tensor(np.zeros((0, 3))))
    assert loss.dtype == np.float64 and np.isnan(float(loss))
    loss.backward()
    assert x.grad.shape == (0, 3)
