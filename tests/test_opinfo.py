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
