"""fusegrad.autocast: bf16 matrix products in linear layers (forward and backward), float32
everything else, float32 master weights; the GPT and the train command under it."""
from __future__ import annotations

import numpy as np
import pytest

import fusegrad as fg
from fusegrad import nn, ops
from fusegrad.nn import functional as F
from fuzz_specs import bf16_round


def test_context_state_nests_and_is_off_by_default():
    assert not fg.is_autocast_enabled()
    with fg.autocast("bfloat16"):
        assert fg.is_autocast_enabled()
        with fg.autocast("bfloat16", enabled=False):
            assert not fg.is_autocast_enabled()
        assert fg.is_autocast_enabled()
    assert not fg.is_autocast_enabled()
    with pytest.raises(ValueError, match="autocast: dtype must be 'bfloat16'"):
        fg.autocast("float16")
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fg.autocast("bfloat16", enabled=1)


def test_linear_forward_backward_in_bf16(isa, rng):
    x = fg.tensor(rng.standard_normal((3, 5, 40)).astype(np.float32), requires_grad=True)
    lin = nn.Linear(40, 24)
    r = fg.tensor(rng.standard_normal((3, 5, 24)).astype(np.float32), requires_grad=True)
    with fg.autocast("bfloat16"):
        y = F._linear_add(r, x, lin.weight, lin.bias)
    assert y.dtype == np.float32
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(fg.tensor(g))
    x2, w, g2 = x.data.reshape(15, 40), lin.weight.data, g.reshape(15, 24)
    want = ops.matmul_bf16(x2, w, trans_b=True) + lin.bias.data
    np.testing.assert_array_equal(y.data.reshape(15, 24), r.data.reshape(15, 24) + want)
    np.testing.assert_array_equal(x.grad.data.reshape(15, 40), ops.matmul_bf16(g2, w))
    np.testing.assert_array_equal(lin.weight.grad.data, ops.matmul_bf16(g2, x2, trans_a=True))
    np.testing.assert_allclose(lin.bias.grad.data, g2.sum(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(r.grad.data, g)
    assert lin.weight.grad.dtype == np.float32  # master weights and their gradients stay float32


def test_linear_error_budget_against_float64(rng):
    # against float64 of the exact inputs: within 2x the error of the product of bf16-rounded inputs
    x = rng.standard_normal((64, 300)).astype(np.float32)
    lin = nn.Linear(300, 50)
    with fg.autocast("bfloat16"):
        y = F.linear(fg.tensor(x), lin.weight, lin.bias).data
    w, b = lin.weight.data.astype(np.float64), lin.bias.data.astype(np.float64)
    exact = x.astype(np.float64) @ w.T + b
    plain = bf16_round(x) @ bf16_round(lin.weight.data).T + b
    assert np.abs(y - exact).max() <= 2 * np.abs(plain - exact).max()


def test_float64_is_not_autocast(rng):
    lin = nn.Linear(8, 4).double()
    x = fg.tensor(rng.standard_normal((2, 8)), dtype=np.float64)
    with fg.autocast("bfloat16"):
        y = lin(x)
    np.testing.assert_array_equal(y.data, lin(x).data)  # float64: untouched, as torch's CPU autocast


def test_gpt_loss_and_training_under_autocast():
    from fusegrad.models import GPT, GPTConfig
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    rng = np.random.default_rng(0)
    idx, tgt = rng.integers(0, 64, (4, 16)), rng.integers(0, 64, (4, 16))
    m32, m16 = GPT(cfg, seed=0), GPT(cfg, seed=0)
    _, l32 = m32(idx, targets=tgt)
    with fg.autocast("bfloat16"):
        _, l16 = m16(idx, targets=tgt)
    assert abs(l16.item() - l32.item()) < 0.02 * l32.item()  # bf16 products move the loss a little
    # a short training run in bf16 follows the float32 one
    losses = {}
    for name, enabled in (("fp32", False), ("bf16", True)):
        m = GPT(cfg, seed=0)
        opt = fg.optim.AdamW(m.parameters(), lr=3e-3)
        data = rng.integers(0, 8, (8, 17))  # a tiny vocabulary: quickly learnable
        for _ in range(30):
            with fg.autocast("bfloat16", enabled=enabled):
                _, loss = m(data[:, :-1], targets=data[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[name] = loss.item()
    assert losses["bf16"] < 0.8 * np.log(64)
    assert abs(losses["bf16"] - losses["fp32"]) < 0.1 * losses["fp32"] + 0.05, losses


@pytest.mark.parametrize("sa, sb", [((7, 40), (40, 9)), ((40,), (40, 9)), ((7, 40), (40,)), ((2, 3, 7, 40), (40, 9)),
                                    ((3, 7, 40), (3, 40, 9))])
def test_tensor_matmul_under_autocast(isa, rng, sa, sb):
    # Tensor @ Tensor: bf16 operands, float32 sums, forward and backward (as torch.autocast's matmul,
    # whose outputs would be bf16; ours stay float32). The 2-D case is ops.matmul_bf16 exactly.
    a = fg.tensor(rng.standard_normal(sa).astype(np.float32), requires_grad=True)
    b = fg.tensor(rng.standard_normal(sb).astype(np.float32), requires_grad=True)
    g = rng.standard_normal(np.broadcast_shapes(sa[:-2], sb[:-2]) + sa[-2:-1] + sb[-1:] if len(sa) > 1 and len(sb) > 1
                            else (sa[0] if len(sb) == 1 else sb[-1],)).astype(np.float32)
    with fg.autocast("bfloat16"):
        y = a @ b
    (y * fg.tensor(g)).sum().backward()
    A, B = a.data.astype(np.float64), b.data.astype(np.float64)
    ra, rb, rg = (bf16_round(v).astype(np.float64) for v in (a.data, b.data, g))
    # float64 on bf16-rounded operands is the computation done plainly in bf16; the error budget
    # is 2x its error against the exact float64 product, and float32 sums stay within 2 K eps32
    for got, plain, exact, mag in [
        (y.data, np.matmul(ra, rb), np.matmul(A, B), np.matmul(np.abs(ra), np.abs(rb))),
    ]:
        assert got.dtype == np.float32
        assert np.abs(got - exact).max() <= 2 * np.abs(plain - exact).max() + 1e-30
        assert np.all(np.abs(got - plain) <= 2 * 40 * np.finfo(np.float32).eps * mag + 1e-30)
    if len(sa) == 2 and len(sb) == 2:
        np.testing.assert_array_equal(y.data, ops.matmul_bf16(a.data, b.data))
        np.testing.assert_array_equal(a.grad, ops.matmul_bf16(g, b.data, trans_b=True))
        np.testing.assert_array_equal(b.grad, ops.matmul_bf16(a.data, g, trans_a=True))
    # gradients: the float64 gradient of the bf16-rounded computation, within float32 sums
    a64 = fg.tensor(ra, requires_grad=True)
    b64 = fg.tensor(rb, requires_grad=True)
    (a64 @ b64 * fg.tensor(rg)).sum().backward()
    for got, want in [(a.grad, a64.grad), (b.grad, b64.grad)]:
        np.testing.assert_allclose(got, want, rtol=0, atol=4 * 40 * np.finfo(np.float32).eps * max(np.abs(want).max(), 1))
    # outside autocast: float32 products, unchanged
    y32 = a @ b
    np.testing.assert_allclose(y32.data, np.matmul(A, B), rtol=1e-5, atol=1e-4)
