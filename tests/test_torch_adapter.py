"""fusegrad.torch: the PyTorch custom ops (attention, layer norm, cross entropy, GELU, linear) and
the fused AdamW, against PyTorch's own ops: gradcheck in float64, outputs and gradients on odd
shapes, torch.library.opcheck (schema, fake/meta impl, autograd registration), torch.compile with
fullgraph=True, a small GPT trained 20 steps on both, zero-copy, and the documented fallbacks."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not hasattr(torch.library, "custom_op"):
    pytest.skip("fusegrad.torch needs torch >= 2.4", allow_module_level=True)

import torch.nn.functional as TF  # noqa: E402

import fusegrad.torch as fgt  # noqa: E402
from fusegrad import _C  # noqa: E402
from torch_gpt import GPT, GPTConfig, batches, train  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread(threads):
    # Two thread pools (PyTorch's and fusegrad's) on a small, shared machine oversubscribe its
    # cores and make these tiny ops 10x slower; one thread each keeps the tests fast.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def no_fallback():
    """The test fails if any adapter handed a call to PyTorch instead of a fusegrad kernel."""
    fgt.fallback_counts.clear()
    yield
    assert not fgt.fallback_counts, dict(fgt.fallback_counts)


def rnd(*shape, dtype=torch.float32, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).requires_grad_(grad)


def fwd_bwd(f, inputs, seed=99):
    """f(*inputs) and the gradients of <f(*inputs), R> (R random) w.r.t. the float inputs."""
    y = f(*inputs)
    r = rnd(*y.shape, dtype=y.dtype, seed=seed, grad=False)
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return y, torch.autograd.grad((y * r).sum(), diff)


def close(a, b, tol):
    for x, y in zip(a if isinstance(a, (tuple, list)) else (a,), b if isinstance(b, (tuple, list)) else (b,)):
        assert x.shape == y.shape and x.dtype == y.dtype
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


# Cases: (name, ours, torch's, inputs(dtype)). Odd sizes on purpose (1, 7, 33, 127).
def attn_inputs(B, H, Hkv, L, S, E, dtype):
    return rnd(B, H, L, E, dtype=dtype, seed=1), rnd(B, Hkv, S, E, dtype=dtype, seed=2), rnd(B, Hkv, S, E, dtype=dtype, seed=3)


CASES = {
    "sdpa": (lambda q, k, v: fgt.scaled_dot_product_attention(q, k, v),
             lambda q, k, v: TF.scaled_dot_product_attention(q, k, v),
             lambda dt: attn_inputs(2, 3, 3, 7, 13, 5, dt)),
    "sdpa_causal": (lambda q, k, v: fgt.scaled_dot_product_attention(q, k, v, is_causal=True),
                    lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True),
                    lambda dt: attn_inputs(1, 2, 2, 13, 13, 7, dt)),
    "sdpa_gqa_scale": (lambda q, k, v: fgt.scaled_dot_product_attention(q, k, v, scale=0.3, enable_gqa=True),
                       lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, scale=0.3, enable_gqa=True),
                       lambda dt: attn_inputs(1, 4, 2, 7, 1, 3, dt)),
    "sdpa_3d": (lambda q, k, v: fgt.scaled_dot_product_attention(q, k, v, is_causal=True),
                lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True),
                lambda dt: tuple(rnd(3, 7, 1, dtype=dt, seed=s) for s in (1, 2, 3))),
    "layer_norm": (lambda x, w, b: fgt.layer_norm(x, (33,), w, b),
                   lambda x, w, b: TF.layer_norm(x, (33,), w, b),
                   lambda dt: (rnd(2, 7, 33, dtype=dt) * 3 + 1, rnd(33, dtype=dt, seed=1), rnd(33, dtype=dt, seed=2))),
    "layer_norm_2d_shape_no_affine": (lambda x: fgt.layer_norm(x, (3, 5), eps=1e-3),
                                      lambda x: TF.layer_norm(x, (3, 5), eps=1e-3),
                                      lambda dt: (rnd(7, 3, 5, dtype=dt),)),
    "cross_entropy": (lambda x, t: fgt.cross_entropy(x, t),
                      lambda x, t: TF.cross_entropy(x, t),
                      lambda dt: (rnd(7, 127, dtype=dt) * 4, torch.arange(7) * 17 % 127)),
    "cross_entropy_ignore": (lambda x, t: fgt.cross_entropy(x, t, ignore_index=3),
                             lambda x, t: TF.cross_entropy(x, t, ignore_index=3),
                             lambda dt: (rnd(7, 5, dtype=dt), torch.tensor([3, 0, 4, 3, 1, 2, 3]))),
    "gelu": (lambda x: fgt.gelu(x), lambda x: TF.gelu(x), lambda dt: (rnd(7, 33, dtype=dt) * 3,)),
    "gelu_tanh": (lambda x: fgt.gelu(x, approximate="tanh"), lambda x: TF.gelu(x, approximate="tanh"),
                  lambda dt: (rnd(127, dtype=dt) * 3,)),
    "linear": (lambda x, w, b: fgt.linear(x, w, b), lambda x, w, b: TF.linear(x, w, b),
               lambda dt: (rnd(2, 7, 33, dtype=dt), rnd(5, 33, dtype=dt, seed=1), rnd(5, dtype=dt, seed=2))),
    "linear_no_bias_1d": (lambda x, w: fgt.linear(x, w), lambda x, w: TF.linear(x, w),
                          lambda dt: (rnd(7, dtype=dt), rnd(1, 7, dtype=dt, seed=1))),
}


# ----- gradcheck in float64 on every op -----
@pytest.mark.parametrize("name", CASES)
def test_gradcheck_float64(name, no_fallback):
    ours, _, make = CASES[name]
    inputs = make(torch.float64)
    inputs = tuple(t.detach().requires_grad_(t.is_floating_point()) for t in inputs)
    # fast_mode: compares v^T J u with its finite difference for random u, v (seconds, not minutes,
    # for attention's ~2000 inputs); a wrong entry anywhere in J shows up with probability ~1
    assert torch.autograd.gradcheck(ours, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


# ----- outputs and gradients against PyTorch's own ops -----
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("name", CASES)
def test_matches_torch(name, dtype, tol, no_fallback):
    ours, theirs, make = CASES[name]
    inputs = make(dtype)
    y, g = fwd_bwd(ours, inputs)
    y_ref, g_ref = fwd_bwd(theirs, inputs)
    close(y, y_ref, tol)
    close(g, g_ref, tol)


@pytest.mark.parametrize("T", [1, 33, 127])
def test_attention_gpt_layout_odd_lengths(T, no_fallback):
    # the layout a GPT produces: (B, T, H, D).transpose(1, 2), non-contiguous
    x = rnd(2, T, 3 * 3 * 16)
    q, k, v = (t.view(2, T, 3, 16).transpose(1, 2) for t in x.split(48, dim=2))
    y, (g,) = fwd_bwd(lambda x_: fgt.scaled_dot_product_attention(
        *(t.view(2, T, 3, 16).transpose(1, 2) for t in x_.split(48, dim=2)), is_causal=True), (x,))
    y_ref, (g_ref,) = fwd_bwd(lambda x_: TF.scaled_dot_product_attention(
        *(t.view(2, T, 3, 16).transpose(1, 2) for t in x_.split(48, dim=2)), is_causal=True), (x,))
    close(y, y_ref, 2e-5)
    close(g, g_ref, 2e-5)


def test_large_case(no_fallback):
    x, w = rnd(1000, 768), rnd(768, dtype=torch.float32, seed=1)
    y, (gx, gw) = fwd_bwd(lambda a, b: fgt.layer_norm(a, (768,), b), (x, w))
    y_ref, (gx_ref, gw_ref) = fwd_bwd(lambda a, b: TF.layer_norm(a, (768,), b), (x, w))
    close(y, y_ref, 2e-5)
    close(gx, gx_ref, 2e-5)
    close(gw, gw_ref, 1e-4)  # a sum over 1000 rows of O(1) terms, accumulated in a different order


# ----- custom-op registration: schema, fake (meta) impls, autograd, dispatch under AOT -----
OPCHECK = {
    "attention_forward": lambda: (*attn_inputs(1, 2, 1, 7, 7, 5, torch.float32), True, None),
    "layernorm_forward": lambda: (rnd(7, 33), rnd(33, seed=1), rnd(33, seed=2), 1e-5),
    "cross_entropy_forward": lambda: (rnd(7, 33), torch.arange(7), -100),
    "gelu_forward": lambda: (rnd(7, 33), "tanh"),
    "linear_forward": lambda: (rnd(7, 33), rnd(5, 33, seed=1), rnd(5, seed=2)),
}


@pytest.mark.parametrize("op", OPCHECK)
def test_opcheck(op):
    torch.library.opcheck(getattr(torch.ops.fusegrad, op), OPCHECK[op](),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# ----- torch.compile without graph breaks -----
def all_ops(F, q, k, v, w, b, W, t):
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (1, 2, 7, 8)
    x = F.layer_norm(a, (8,), w, b)
    z = F.linear(F.gelu(x, approximate="tanh"), W)                # (1, 2, 7, 5)
    return F.cross_entropy(z.view(14, 5), t)


def test_compile_inductor_fullgraph(no_fallback):
    # every op, forward and backward, in one inductor graph (fullgraph=True fails on any graph break)
    torch._dynamo.reset()
    args = (*attn_inputs(1, 2, 2, 7, 7, 8, torch.float32), rnd(8, seed=4), rnd(8, seed=5), rnd(5, 8, seed=6),
            torch.arange(14) % 5)
    compiled = torch.compile(lambda *a: all_ops(fgt, *a), fullgraph=True)
    loss, grads = fwd_bwd(compiled, args)
    loss_ref, grads_ref = fwd_bwd(lambda *a: all_ops(TF, *a), args)
    close(loss, loss_ref, 2e-5)
    close(grads, grads_ref, 2e-5)


def test_compile_gpt_training_step_fullgraph(no_fallback):
    # the whole GPT forward + backward in one graph (aot_eager: AOTAutograd traces the fake impls
    # and the registered backward without inductor's C++ compile time); same loss and grads as eager
    torch._dynamo.reset()
    cfg = GPTConfig(n_layer=1)
    torch.manual_seed(0)
    model = GPT(cfg, fgt)
    idx, targets = batches(cfg, 2, 1)[0]
    step = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss = step(idx, targets)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    loss_ref = model(idx, targets)
    grads_ref = torch.autograd.grad(loss_ref, list(model.parameters()))
    close(loss, loss_ref, 1e-6)
    close(grads, grads_ref, 1e-6)


# ----- a small GPT trained 20 steps follows PyTorch's loss curve -----
def test_gpt_loss_curve_float64_matches_torch(no_fallback):
    # float64: every op agrees with PyTorch's to ~1e-16 relative, and 20 Adam steps of a model this
    # small amplify that by a few orders at most (measured: 3e-15), so 1e-10 is tight yet safe;
    # any real difference (a wrong scale, mask, eps or a missed gradient term) moves the loss by > 1e-4.
    cfg = GPTConfig()
    ours, m_ours = train(fgt, fgt.AdamW, cfg, dtype=torch.float64)
    ref, m_ref = train(TF, torch.optim.AdamW, cfg, dtype=torch.float64)
    assert ref[-1] < ref[0] - 1.0  # it learns
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)
    for (n, p), p_ref in zip(m_ours.named_parameters(), m_ref.parameters()):
        torch.testing.assert_close(p, p_ref, rtol=1e-8, atol=1e-10, msg=n)


def test_gpt_loss_curve_float32_matches_torch(no_fallback):
    # float32: PyTorch's own float32 curve differs from its float64 curve by ~5e-7 here (rounding
    # in reductions that each library orders differently); ours differs from PyTorch's float32 curve
    # by the same amount. 2e-5 (~40x the measured noise, ~5e-6 relative) still fails for any bug.
    cfg = GPTConfig()
    ours, _ = train(fgt, fgt.AdamW, cfg)
    ref, _ = train(TF, torch.optim.AdamW, cfg)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5)


# ----- zero copies: kernels read the tensors' memory and their results become the tensors -----
class Spy:
    """Stands in for fusegrad._C and records the data pointers each kernel read and returned."""

    def __init__(self):
        self.calls = {}

    def __getattr__(self, name):
        f = getattr(_C, name)

        def call(*args, **kwargs):
            r = f(*args, **kwargs)
            ptr = lambda a: a.ctypes.data if isinstance(a, np.ndarray) else None  # noqa: E731
            self.calls[name] = ([ptr(a) for a in args], [ptr(a) for a in (r if isinstance(r, tuple) else (r,))])
            return r
        return call


@pytest.fixture
def spy(monkeypatch):
    s = Spy()
    monkeypatch.setattr(fgt, "_C", s)
    return s


def test_zero_copy_attention(spy, no_fallback):
    q, k, v = attn_inputs(2, 3, 3, 7, 7, 8, torch.float32)
    o = fgt.scaled_dot_product_attention(q, k, v, is_causal=True)
    args, res = spy.calls["attention_forward"]
    assert args[:3] == [q.data_ptr(), k.data_ptr(), v.data_ptr()]  # inputs viewed, not copied
    assert o.data_ptr() == res[0]                                    # output is the kernel's buffer
    do = rnd(*o.shape, seed=5, grad=False)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)
    args, res = spy.calls["attention_backward"]
    assert args[0] == do.data_ptr() and args[4] == o.data_ptr()      # saved output reused, not copied
    assert [dq.data_ptr(), dk.data_ptr(), dv.data_ptr()] == res       # gradients are the kernel's buffers


def test_zero_copy_layer_norm_linear_gelu_xent(spy, no_fallback):
    x, w, b = rnd(7, 33), rnd(33, seed=1), rnd(33, seed=2)
    y = fgt.layer_norm(x, (33,), w, b)
    assert spy.calls["layernorm_forward"][0][:3] == [x.data_ptr(), w.data_ptr(), b.data_ptr()]
    assert y.data_ptr() == spy.calls["layernorm_forward"][1][0]
    W = rnd(5, 33, seed=3)
    z = fgt.linear(fgt.gelu(y), W)
    assert z.data_ptr() == spy.calls["linear_forward"][1][0]
    assert spy.calls["linear_forward"][0][:2] == [spy.calls["gelu_forward"][1][0], W.data_ptr()]
    t = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    loss = fgt.cross_entropy(z, t)
    assert spy.calls["cross_entropy_forward"][0][:2] == [z.data_ptr(), t.data_ptr()]
    gx, gw, gb, gW = torch.autograd.grad(loss, (x, w, b, W))
    assert gW.data_ptr() == spy.calls["linear_backward"][1][1]
    assert [gx.data_ptr(), gw.data_ptr(), gb.data_ptr()] == spy.calls["layernorm_backward"][1]


def test_adamw_updates_in_place_and_matches_torch(spy):
    # Same trajectory as torch.optim.AdamW (two groups, weight decay, 5 steps), updated in place:
    # the parameter, exp_avg and exp_avg_sq keep their storage, and the kernel writes that storage.
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(7, 33)), torch.nn.Parameter(torch.randn(127))]
    ps_ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    groups = lambda params: [{"params": params[:1]}, {"params": params[1:], "lr": 0.05, "weight_decay": 0.0}]  # noqa: E731
    opt = fgt.AdamW(groups(ps), lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    opt_ref = torch.optim.AdamW(groups(ps_ref), lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    ptrs = [p.data_ptr() for p in ps]
    for step in range(5):
        for params in (ps, ps_ref):
            g = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        opt_ref.step()
        args, _ = spy.calls["adamw_step"]
        st = opt.state[ps[1]]
        assert args[:4] == [ps[1].data_ptr(), ps[1].grad.data_ptr(), st["exp_avg"].data_ptr(),
                            st["exp_avg_sq"].data_ptr()]
    assert [p.data_ptr() for p in ps] == ptrs
    for p, p_ref in zip(ps, ps_ref):
        torch.testing.assert_close(p, p_ref, rtol=1e-6, atol=1e-6)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt.state[p][key], opt_ref.state[p_ref][key], rtol=1e-6, atol=1e-7)
    # the state_dict has torch.optim.AdamW's layout: torch's optimizer continues from ours
    opt_ref.load_state_dict(opt.state_dict())
    assert opt.state_dict()["state"][0]["exp_avg"].shape == (7, 33)


def test_adamw_closure_skips_params_without_grad():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = fgt.AdamW([a, b], lr=0.1, weight_decay=0.0)

    def closure():
        opt.zero_grad()
        loss = a.sum()
        loss.backward()
        return loss
    assert opt.step(closure).item() == 3.0
    torch.testing.assert_close(a.detach(), torch.full((3,), 0.9))
    assert torch.equal(b.detach(), torch.ones(3)) and b not in opt.state


def test_adamw_bad_arguments():
    p = torch.nn.Parameter(torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"fusegrad.torch.AdamW: amsgrad=True is not supported; use torch.optim.AdamW"):
        fgt.AdamW([p], amsgrad=True)
    with pytest.raises(ValueError, match=r"fusegrad.torch.AdamW: betas\[1\] must be in \[0, 1\), got 1.0"):
        fgt.AdamW([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"fusegrad.torch.AdamW: lr must be >= 0, got -1"):
        fgt.AdamW([p], lr=-1)
    q = torch.nn.Parameter(torch.ones(4, 4).t())  # non-contiguous: the update could not be in place
    q.grad = torch.ones(4, 4)
    with pytest.raises(ValueError, match=r"fusegrad.torch.AdamW: a parameter is non-contiguous \(shape \(4, 4\), "
                                         r"strides \(1, 4\)\); the update is written in place"):
        fgt.AdamW([q]).step()
    h = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    h.grad = torch.ones(3, dtype=torch.float16)
    with pytest.raises(TypeError, match=r"adamw_step: .*float16"):
        fgt.AdamW([h]).step()


# ----- what the kernels lack falls back to PyTorch's op, counted -----
def test_fallbacks_are_counted_and_correct():
    fgt.fallback_counts.clear()
    q, k, v = attn_inputs(1, 2, 2, 5, 7, 4, torch.float32)
    mask = torch.rand(5, 7) > 0.3
    mask[:, 0] = True
    torch.testing.assert_close(fgt.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               TF.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(fgt.scaled_dot_product_attention(q, k, v, is_causal=True),  # L != S
                               TF.scaled_dot_product_attention(q, k, v, is_causal=True))
    x, t = rnd(7, 5), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    torch.testing.assert_close(fgt.cross_entropy(x, t, label_smoothing=0.1), TF.cross_entropy(x, t, label_smoothing=0.1))
    torch.testing.assert_close(fgt.cross_entropy(x, t, reduction="sum"), TF.cross_entropy(x, t, reduction="sum"))
    h = x.detach().half()
    torch.testing.assert_close(fgt.gelu(h), TF.gelu(h))
    assert dict(fgt.fallback_counts) == {
        "scaled_dot_product_attention: attn_mask": 1,
        "scaled_dot_product_attention: is_causal with L != S (PyTorch aligns the mask top-left)": 1,
        "cross_entropy: options": 2,
        "gelu: dtype": 1,
    }
    fgt.fallback_counts.clear()


def test_functions_have_torch_signatures():
    import inspect
    for name in ("scaled_dot_product_attention", "layer_norm", "cross_entropy", "gelu", "linear"):
        ours = list(inspect.signature(getattr(fgt, name)).parameters)
        try:
            theirs = list(inspect.signature(getattr(TF, name)).parameters)
        except ValueError:  # a C builtin without a Python signature (F.linear, F.gelu, sdpa)
            continue
        assert ours == theirs, name
    assert list(inspect.signature(fgt.AdamW).parameters) == list(inspect.signature(torch.optim.AdamW).parameters)


def test_cross_entropy_accepts_int32_targets(no_fallback):
    # a superset of PyTorch (which wants int64): int32 class indices go to the kernel as they are
    x, t = rnd(7, 5), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    torch.testing.assert_close(fgt.cross_entropy(x, t.int()), TF.cross_entropy(x, t))


def test_example_07_torch_swap():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "examples" / "07_torch_swap.py"
    spec = importlib.util.spec_from_file_location("example_07", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fgt.fallback_counts.clear()
    r = mod.main()
    assert r["fallbacks"] == {}
    assert r["max_abs_diff_out"] < 1e-5 and r["max_abs_diff_grad"] < 1e-6


def test_non_cpu_tensors_fall_back_and_adamw_refuses_them():
    # "meta" stands in for CUDA here (no GPU on the test machine): the same device check handles both
    fgt.fallback_counts.clear()
    x = torch.empty(7, 33, device="meta")
    assert fgt.gelu(x).device.type == "meta" and fgt.layer_norm(x, (33,)).shape == (7, 33)
    assert dict(fgt.fallback_counts) == {"gelu: device": 1, "layer_norm: device": 1}
    fgt.fallback_counts.clear()
    p = torch.nn.Parameter(torch.empty(3, device="meta"))
    p.grad = torch.empty(3, device="meta")
    with pytest.raises(RuntimeError, match=r"fusegrad.torch.AdamW: a parameter is on meta; fusegrad's optimizer "
                                           r"kernels run on CPU tensors"):
        fgt.AdamW([p]).step()


def test_docstring_examples():
    import doctest
    r = doctest.testmod(fgt, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert r.attempted >= 6 and r.failed == 0
