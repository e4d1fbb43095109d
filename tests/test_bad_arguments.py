"""The Python layer's own argument checks: each bad call raises a clear exception naming what
was wrong, where the quiet alternative (a wrapped dim, a truncated float id, a cast that drops an
imaginary part, a parameter stepped twice) would have been a wrong answer."""
from __future__ import annotations

import numpy as np
import pytest

import fusegrad as fg
from fusegrad import nn, optim
from fusegrad.nn import functional as F


def _t(*shape):
    return fg.Tensor(np.ones(shape, np.float32), requires_grad=True)


BAD = {
    # dims out of range used to wrap around (sum(3) of a 2-D tensor summed axis 1)
    "sum dim 3": (lambda: _t(2, 3).sum(3), IndexError, r"sum: dim 3 is out of range \(expected in \[-2, 1\]\)"),
    "sum dim -3": (lambda: _t(2, 3).sum(-3), IndexError, "sum: dim -3"),
    "sum dim float": (lambda: _t(2, 3).sum(1.0), TypeError, "sum: dim must be an integer"),
    "sum repeated dim": (lambda: _t(2, 3).sum((0, -2)), ValueError, "sum: dim .* repeats an axis"),
    "mean dim": (lambda: _t(2, 3).mean((0, 2)), IndexError, "mean: dim 2"),
    "max dim": (lambda: _t(2, 3).max(2), IndexError, "max: dim 2"),
    "0-d sum dim 1": (lambda: fg.Tensor(3.0).sum(1), IndexError, r"expected in \[-1, 0\]"),
    "transpose": (lambda: _t(2, 3).transpose(0, 2), IndexError, "transpose: dim 2"),
    "unsqueeze": (lambda: _t(2, 3).unsqueeze(3), IndexError, r"unsqueeze: dim 3 .*\[-3, 2\]"),
    "squeeze": (lambda: _t(2, 3).squeeze(5), IndexError, "squeeze: dim 5"),
    "flatten order": (lambda: _t(2, 3, 4).flatten(2, 1), ValueError, "flatten: start_dim 2 comes after"),
    "flatten dim": (lambda: _t(2, 3).flatten(0, 4), IndexError, "flatten: dim 4"),
    "cat dim": (lambda: fg.cat([_t(2, 3), _t(2, 3)], 2), IndexError, "cat: dim 2"),
    "cat empty": (lambda: fg.cat([]), ValueError, "cat: expected a non-empty"),
    "stack dim": (lambda: fg.stack([_t(2), _t(2)], 2), IndexError, "stack: dim 2"),
    "split size 0": (lambda: _t(4).split(0), ValueError, "split: split_size must be positive"),
    "split dim": (lambda: _t(4).split(2, dim=1), IndexError, "split: dim 1"),
    # data that is not numbers
    "tensor of str": (lambda: fg.Tensor("abc"), TypeError, "tensor data must be numeric"),
    "tensor of objects": (lambda: fg.Tensor(np.array([object()])), TypeError, "must be numeric, got dtype object"),
    # float or bool ids would be truncated to a row
    "embedding float ids": (lambda: nn.Embedding(5, 3)(np.array([1.0])), TypeError, "embedding: input must hold integer ids"),
    "embedding bool ids": (lambda: F.embedding(np.array([True]), _t(5, 3)), TypeError, "got dtype bool"),
    # targets reshaped to fit would pair rows with the wrong classes
    "cross_entropy target shape": (lambda: F.cross_entropy(_t(2, 4, 3), np.zeros((4, 2), np.int64)), ValueError,
                                   r"cross_entropy: target shape \(4, 2\) must be .*class dim 1, \(2, 3\)"),
    "Dropout p nan": (lambda: nn.Dropout(float("nan")), ValueError, r"Dropout: p must be in \[0, 1\]"),
    "Dropout p 2": (lambda: nn.Dropout(2.0), ValueError, "Dropout: p must be"),
    "clip max_norm nan": (lambda: nn.utils.clip_grad_norm_([_t(2)], float("nan")), ValueError,
                          "clip_grad_norm_: max_norm must be >= 0"),
    "clip max_norm -1": (lambda: nn.utils.clip_grad_norm_([_t(2)], -1.0), ValueError, "max_norm must be >= 0, got -1"),
    # optimizers: what torch.optim refuses, and a parameter listed twice (stepped twice)
    "SGD lr nan": (lambda: optim.SGD([_t(2)], lr=float("nan")), ValueError, "SGD: invalid learning rate nan"),
    "SGD momentum": (lambda: optim.SGD([_t(2)], lr=0.1, momentum=-1), ValueError, "SGD: invalid momentum -1"),
    "SGD weight_decay": (lambda: optim.SGD([_t(2)], lr=0.1, weight_decay=-1), ValueError, "SGD: invalid weight_decay"),
    "AdamW weight_decay": (lambda: optim.AdamW([_t(2)], weight_decay=-0.1), ValueError, "AdamW: invalid weight_decay"),
    "Adam lr nan": (lambda: optim.Adam([_t(2)], lr=float("nan")), ValueError, "Adam: invalid hyperparameters"),
    "AdamW duplicate": (lambda: (lambda p: optim.AdamW([p, p]))(_t(2)), ValueError, "appears more than once"),
    "AdamW duplicate across groups": (lambda: (lambda p: optim.AdamW([{"params": [p]}, {"params": [p]}]))(_t(2)),
                                      ValueError, "appears more than once"),
    "AdamW non-leaf": (lambda: optim.AdamW([_t(2) * 2]), ValueError, "AdamW: cannot optimize a non-leaf"),
    "AdamW ndarray": (lambda: optim.AdamW([np.ones(2)]), TypeError, "AdamW: parameters must be fusegrad Tensors"),
    "StepLR step_size 0": (lambda: optim.StepLR(optim.SGD([_t(2)], lr=0.1), step_size=0), ValueError,
                           "StepLR: step_size must be a positive integer, got 0"),         # was ZeroDivisionError
    "CosineWarmupLR warmup -1": (lambda: optim.CosineWarmupLR(optim.SGD([_t(2)], lr=0.1), -1, 5), ValueError,
                                 "warmup_steps must be >= 0"),
    "SGD int tensor": (lambda: optim.SGD([fg.Tensor(np.ones(2, np.int64))], lr=0.1), TypeError,
                       "SGD: parameters must be floating point"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_argument_raises_a_clear_error(name):
    call, exc, match = BAD[name]
    with pytest.raises(exc, match=match):
        call()


def test_valid_edge_cases_still_work():
    # negative and end-of-range dims, a 0-d tensor's dim 0, a zero-width Linear (torch's output:
    # the bias), (B, T, C) logits with (B, T) targets, and real integer targets for mse_loss
    x = _t(2, 3)
    assert x.unsqueeze(2).shape == (2, 3, 1) and x.unsqueeze(-1).shape == (2, 3, 1)
    assert x.unsqueeze(-3).shape == (1, 2, 3)
    assert x.sum(-1).shape == (2,) and x.mean((0, 1)).shape == ()
    assert fg.Tensor(3.0).sum(0).item() == 3.0 and fg.Tensor(3.0).sum(-1).item() == 3.0
    assert fg.stack([_t(2), _t(2)], -1).shape == (2, 2)
    assert [t.shape for t in _t(5).split(2)] == [(2,), (2,), (1,)]
    lin = nn.Linear(0, 2)
    np.testing.assert_array_equal(lin(fg.Tensor(np.ones((4, 0), np.float32))).data,
                                  np.broadcast_to(lin.bias.data, (4, 2)))
    logits = fg.Tensor(np.zeros((2, 4, 3), np.float32), requires_grad=True)     # classes on axis 1, as torch
    np.testing.assert_allclose(F.cross_entropy(logits, np.zeros((2, 3), np.int64)).item(), np.log(4), rtol=1e-6)
    assert F.embedding(np.array([[0, 4]], np.uint8), _t(5, 3)).shape == (1, 2, 3)
    assert F.mse_loss(x, np.ones((2, 3), np.int64)).item() == 0.0


def test_data_loader_and_dataset_arguments():
    from fusegrad.data import DataLoader, TensorDataset

    ds = TensorDataset(np.arange(6.0), np.arange(6))
    with pytest.raises(TypeError, match="DataLoader: batch_size must be an integer, got 2.5"):
        DataLoader(ds, batch_size=2.5)
    with pytest.raises(ValueError, match="DataLoader: batch_size must be >= 1"):
        DataLoader(ds, batch_size=0)
    with pytest.raises(ValueError, match="TensorDataset: every tensor needs a first"):
        TensorDataset(np.float32(3.0))
    assert [b[1].data.tolist() for b in DataLoader(ds, batch_size=np.int64(4))] == [[0, 1, 2, 3], [4, 5]]


def test_optimizer_state_from_another_model_is_refused():
    # state is matched by position: a 2-parameter model's state on a 3-parameter one (or on
    # parameters of other shapes) would silently give tensors the wrong moments
    a, b = nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    oa = optim.AdamW(a.parameters())
    a(fg.Tensor(np.ones((1, 3), np.float32))).sum().backward()
    oa.step()
    sd = oa.state_dict()
    with pytest.raises(ValueError, match="parameter group 0 holds 2 parameters in the saved state and 4 here"):
        optim.AdamW(b.parameters()).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"state 'exp_avg' of parameter 0 has shape \(2, 3\), the parameter \(3, 2\)"):
        optim.AdamW(nn.Linear(2, 3).parameters()).load_state_dict(sd)
    same = optim.AdamW(nn.Linear(3, 2).parameters())
    same.load_state_dict(sd)
    assert [st["step"] for st in same.state.values()] == [1, 1]


def test_cross_entropy_reductions():
    logits = fg.Tensor(np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32), requires_grad=True)
    t = np.array([[0, 1, 2, -100], [2, 2, 0, 1]])
    none = F.cross_entropy(logits, t, reduction="none")
    assert none.shape == (2, 4) and none.data[0, 3] == 0.0                # the targets' shape; ignored -> 0
    np.testing.assert_allclose(F.cross_entropy(logits, t, reduction="sum").item(), none.data.sum(), rtol=1e-6)
    np.testing.assert_allclose(F.cross_entropy(logits, t).item(), none.data.sum() / 7, rtol=1e-6)
    with pytest.raises(ValueError, match="cross_entropy: unknown reduction 'avg'"):   # was treated as 'none'
        F.cross_entropy(logits, t, reduction="avg")
