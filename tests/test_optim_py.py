"""Optimizers against torch.optim over 10 steps (and hand formulas); schedulers."""
from __future__ import annotations

import math

import numpy as np
import pytest

import fusegrad as fg
from fusegrad import optim


def run_ours(opt_fn, steps=10, sched=None):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4))
    gs = rng.standard_normal((steps, 3, 4))
    p = fg.nn.Parameter(w0.copy())
    opt = opt_fn([p])
    for g in gs:
        p.grad = fg.tensor(g.copy())
        opt.step()
    return w0, gs, p.data


CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99))),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, eps=1e-6)),
]


@pytest.mark.parametrize("name,kw", CONFIGS)
def test_matches_torch_optim(name, kw):
    torch = pytest.importorskip("torch")
    w0, gs, ours = run_ours(lambda ps: getattr(optim, name)(ps, **kw))
    tp = torch.nn.Parameter(torch.tensor(w0.copy()))
    topt = getattr(torch.optim, name)([tp], **kw)
    for g in gs:
        tp.grad = torch.tensor(g.copy())
        topt.step()
    np.testing.assert_allclose(ours, tp.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_sgd_momentum_formula():
    _, gs, ours = run_ours(lambda ps: optim.SGD(ps, lr=0.5, momentum=0.5), steps=2)
    w0 = np.random.default_rng(0).standard_normal((3, 4))
    b1 = gs[0]
    b2 = 0.5 * b1 + gs[1]
    np.testing.assert_allclose(ours, w0 - 0.5 * b1 - 0.5 * b2, rtol=1e-12)


def test_adamw_first_step_formula():
    w0, gs, ours = run_ours(lambda ps: optim.AdamW(ps, lr=0.1, weight_decay=0.5), steps=1)
    # first step: mhat = g, vhat = g^2 -> update lr * g / (|g| + eps)
    expect = w0 * (1 - 0.05) - 0.1 * gs[0] / (np.abs(gs[0]) + 1e-8)
    np.testing.assert_allclose(ours, expect, rtol=1e-10)


def test_zero_grad_and_state_dict():
    p = fg.nn.Parameter(np.ones(3))
    opt = optim.AdamW([p], lr=0.1)
    p.grad = fg.tensor(np.ones(3))
    opt.step()
    opt.zero_grad(set_to_none=False)
    assert (p.grad.data == 0).all()
    opt.zero_grad()
    assert p.grad is None
    sd = opt.state_dict()
    assert sd["state"][0]["step"] == 1 and sd["param_groups"][0]["lr"] == 0.1
    opt2 = optim.AdamW([p], lr=0.5)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.state[id(p)]["step"] == 1


def test_param_groups_skip_none_grad_and_bad_args():
    a, b = fg.nn.Parameter(np.ones(2)), fg.nn.Parameter(np.ones(2))
    opt = optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b]}], lr=0.1)
    a.grad = fg.tensor(np.ones(2))
    opt.step()
    np.testing.assert_allclose(a.data, 0.0)
    np.testing.assert_allclose(b.data, 1.0)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([a], lr=0.1, nesterov=True)


def test_step_lr_matches_torch():
    torch = pytest.importorskip("torch")
    p = fg.nn.Parameter(np.ones(1))
    opt = optim.SGD([p], lr=1.0)
    s = optim.StepLR(opt, step_size=3, gamma=0.5)
    tp = torch.nn.Parameter(torch.ones(1))
    topt = torch.optim.SGD([tp], lr=1.0)
    ts = torch.optim.lr_scheduler.StepLR(topt, step_size=3, gamma=0.5)
    for _ in range(10):
        assert s.get_last_lr()[0] == pytest.approx(ts.get_last_lr()[0])
        opt.step(); topt.step(); s.step(); ts.step()


def test_cosine_warmup():
    p = fg.nn.Parameter(np.ones(1))
    opt = optim.AdamW([p], lr=1.0)
    s = optim.CosineWarmupLR(opt, warmup_steps=4, total_steps=14, min_lr=0.1)
    lrs = []
    for _ in range(16):
        lrs.append(s.get_last_lr()[0])
        s.step()
    np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0])
    assert lrs[9] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[14] == lrs[15] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
