"""fusegrad.torch under torch.autocast("cpu", dtype=torch.bfloat16): linear and scaled_dot_product_attention
run fusegrad's bf16 kernels (float32 or bfloat16 inputs, bfloat16 outputs as torch's autocast gives them,
gradients in each input's dtype), judged by the error-budget rule against PyTorch's own autocast: the
error against a float64 reference is at most 2x that of PyTorch's bf16 computation of the same call.
Fallbacks (float64, torch.compile) go to PyTorch's op under autocast and are counted."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not hasattr(torch.library, "custom_op"):
    pytest.skip("fusegrad.torch needs torch >= 2.4", allow_module_level=True)

import fusegrad.torch as fgt  # noqa: E402
from test_torch_adapter import one_thread  # noqa: E402,F401 (autouse: one thread for torch and fusegrad)
from torch_gpt import GPT, GPTConfig  # noqa: E402

BF16 = torch.bfloat16


@pytest.fixture(autouse=True)
def our_kernels():
    old = fgt.set_policy("fusegrad")
    fgt.fallback_counts.clear()
    fgt.dispatch_counts.clear()
    yield
    fgt.set_policy(old)
    fgt.restore()


def rnd(*shape, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g)).to(dtype).requires_grad_()


def run(f, inputs, dy):
    """y = f(*inputs) under autocast, then y.backward(dy): (y, grads)."""
    for t in inputs:
        t.grad = None
    with torch.autocast("cpu", dtype=BF16):
        y = f(*inputs)
    y.backward(dy)
    return y, [t.grad for t in inputs]


def check_budget(ours, theirs, exact, inputs, dy):
    """ours and PyTorch's autocast op on the same inputs: same output dtype and gradient dtypes, and
    our error against exact (float64 output and gradients) at most 2x PyTorch's."""
    y1, g1 = run(ours, inputs, dy)
    y2, g2 = run(theirs, inputs, dy)
    assert y1.dtype == y2.dtype == BF16 and y1.shape == y2.shape
    ye, ge = exact(*[t.detach().double().requires_grad_() for t in inputs], dy.double())
    err = lambda a, b: (a.double() - b).abs().max().item()
    assert err(y1, ye) <= 2 * err(y2, ye), ("output", err(y1, ye), err(y2, ye))
    for i, (a, b, e) in enumerate(zip(g1, g2, ge)):
        assert a.dtype == b.dtype == inputs[i].dtype, i
        assert err(a, e) <= 2 * err(b, e), (i, err(a, e), err(b, e))


def exact_of(f):
    def exact(*args):
        *xs, dy = args
        y = f(*xs)
        y.backward(dy)
        return y, [x.grad for x in xs]
    return exact


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (37, 65, 129), (130, 70, 257)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bias", [True, False])
def test_linear(shape, bias):
    M, K, N = shape
    inputs = [rnd(M, K), rnd(N, K, seed=1, scale=K ** -0.5)] + ([rnd(N, seed=2)] if bias else [])
    dy = torch.randn(M, N, generator=torch.Generator().manual_seed(3)).to(BF16)
    check_budget(fgt.linear, fgt.ORIGINALS["linear"], exact_of(torch.nn.functional.linear), inputs, dy)
    assert fgt.dispatch_counts["linear -> fusegrad"] == 1 and not fgt.fallback_counts


def test_linear_bf16_and_3d_input():
    # an autocast output (bfloat16) feeding the next layer, (B, T, C): dx comes back in bfloat16
    inputs = [rnd(2, 9, 40, dtype=BF16), rnd(24, 40, seed=1, scale=40 ** -0.5), rnd(24, seed=2)]
    dy = torch.randn(2, 9, 24, generator=torch.Generator().manual_seed(3)).to(BF16)
    check_budget(fgt.linear, fgt.ORIGINALS["linear"], exact_of(torch.nn.functional.linear), inputs, dy)
    assert not fgt.fallback_counts


def _sdpa_exact(q, k, v, causal):
    s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    if causal:
        T, S = s.shape[-2:]
        s = s.masked_fill(torch.ones(T, S, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 33, 24), (1, 4, 130, 64), (1, 2, 300, 32)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa(shape, causal):
    B, H, T, D = shape
    inputs = [rnd(B, H, T, D, seed=i) for i in range(3)]
    dy = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(5)).to(BF16)
    ours = lambda q, k, v: fgt.scaled_dot_product_attention(q, k, v, is_causal=causal)
    theirs = lambda q, k, v: fgt.ORIGINALS["scaled_dot_product_attention"](q, k, v, is_causal=causal)
    check_budget(ours, theirs, exact_of(lambda q, k, v: _sdpa_exact(q, k, v, causal)), inputs, dy)
    assert fgt.dispatch_counts["scaled_dot_product_attention -> fusegrad"] == 1 and not fgt.fallback_counts


def test_sdpa_bf16_inputs_and_no_grad():
    q, k, v = (rnd(1, 2, 40, 32, seed=i, dtype=BF16) for i in range(3))
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        o = fgt.scaled_dot_product_attention(q, k, v, is_causal=True)
        want = fgt.ORIGINALS["scaled_dot_product_attention"](q, k, v, is_causal=True)
    assert o.dtype == BF16 and not o.requires_grad
    exact = _sdpa_exact(q.double(), k.double(), v.double(), True)
    assert (o.double() - exact).abs().max() <= 2 * (want.double() - exact).abs().max()


def test_fallbacks_and_policy_under_autocast():
    x, w = rnd(4, 8, dtype=torch.float64), rnd(3, 8, dtype=torch.float64)
    with torch.autocast("cpu", dtype=BF16):
        y = fgt.linear(x, w)  # float64: PyTorch's op, which autocast leaves in float64
    assert y.dtype == torch.float64 and fgt.fallback_counts["linear: dtype"] == 1
    fgt.set_policy("torch")
    with torch.autocast("cpu", dtype=BF16):
        fgt.linear(rnd(4, 8), rnd(3, 8))
    assert fgt.dispatch_counts["linear -> torch"] == 2
    fgt.set_policy("auto", table={"tables": {"default": {"linear": {"bfloat16": {"5": "fusegrad"}}}}})
    with torch.autocast("cpu", dtype=BF16):
        fgt.linear(rnd(4, 8), rnd(3, 8))     # size 96: bucket 6, nearest measured 5: ours
        y32 = fgt.linear(rnd(4, 8), rnd(3, 8, seed=1)).dtype
    with torch.autocast("cpu", dtype=BF16, enabled=False):
        assert fgt.linear(rnd(4, 8), rnd(3, 8)).dtype == torch.float32  # float32: no table entry, torch
    assert fgt.dispatch_counts["linear -> fusegrad"] == 2 and y32 == BF16
    fgt.set_policy("auto", table=fgt._TABLE_FILE)


def test_gpt_step_under_autocast_and_compile():
    # the same GPT on PyTorch's ops and on fusegrad.torch's, under autocast: every gradient within 2x
    # PyTorch autocast's own error against the float64 model; torch.compile of ours traces PyTorch's
    # ops under autocast (fallbacks counted)
    cfg = GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    ref = GPT(cfg)
    ours = GPT(cfg, F=fgt)
    ours.load_state_dict(ref.state_dict())
    f64 = GPT(cfg).double()
    f64.load_state_dict(ref.state_dict())
    idx = torch.randint(0, 37, (3, 16), generator=torch.Generator().manual_seed(1))

    def step(m, amp=True):
        m.zero_grad()
        with torch.autocast("cpu", dtype=BF16, enabled=amp):
            loss = m(idx, idx)
        loss.backward()
        return loss.item(), {n: p.grad.double() for n, p in m.named_parameters()}

    l_ref, g_ref = step(ref)
    l_ours, g_ours = step(ours)
    l_ex, g_ex = step(f64, amp=False)
    assert fgt.dispatch_counts["linear -> fusegrad"] == 2 * 4 + 1
    assert fgt.dispatch_counts["scaled_dot_product_attention -> fusegrad"] == 2
    # autocast's bf16 outputs reach gelu and cross_entropy, which have float32/float64 kernels only
    assert set(fgt.fallback_counts) <= {"gelu: dtype", "cross_entropy: dtype"}, dict(fgt.fallback_counts)
    assert abs(l_ours - l_ex) <= 2 ** -7 * abs(l_ex)  # bf16's relative precision, on the logits
    for n in g_ex:
        e_ours, e_ref = (g_ours[n] - g_ex[n]).abs().max(), (g_ref[n] - g_ex[n]).abs().max()
        assert e_ours <= 2 * e_ref, (n, e_ours.item(), e_ref.item())
    fgt.fallback_counts.clear()
    compiled = torch.compile(ours, backend="aot_eager")
    with torch.autocast("cpu", dtype=BF16):
        loss = compiled(idx, idx)
    loss.backward()
    assert abs(loss.item() - l_ex) <= 2 ** -7 * abs(l_ex)
    assert fgt.fallback_counts["linear: autocast under torch.compile"] > 0
