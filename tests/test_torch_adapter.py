"""fusegrad.torch: the PyTorch drop-ins (attention, layer norm, cross entropy, GELU, linear) and
the fused AdamW, against PyTorch's own ops: gradcheck in float64 of the light eager path,
outputs and gradients on odd shapes, torch.library.opcheck of the custom ops (schema, fake/meta
impl, autograd registration), torch.compile with fullgraph=True, small GPTs trained 20 steps on
both (one swapped by optimize()), zero-copy, the documented fallbacks (to PyTorch's original ops,
even when torch.nn.functional is patched), the size policy and its overrides, dispatch counts.

Unless a test says otherwise the policy is forced to 'fusegrad', so every supported call runs our
kernels (the measured table would send some shapes to PyTorch, testing nothing of ours)."""
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


@pytest.fixture(autouse=True)
def our_kernels():
    old = fgt.set_policy("fusegrad")
    yield
    fgt.set_policy(old)
    fgt.restore()  # a failed test must not leave torch.nn.functional patched


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


def qkv_heads(x, H, Hkv, order=(0, 1, 2)):
    """nanoGPT's q, k, v: head views (B, H, T, D) of one (B, T, (H + 2 Hkv) D) projection, which the
    packed attention kernels read in place; another order of the three parts is not that layout."""
    B, T, W = x.shape
    D = W // (H + 2 * Hkv)
    parts = x.split((H * D, Hkv * D, Hkv * D), dim=2)
    return tuple(parts[i].view(B, T, -1, D).transpose(1, 2) for i in order)


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
    "sdpa_packed_qkv": (lambda x: fgt.scaled_dot_product_attention(*qkv_heads(x, 3, 3), is_causal=True),
                        lambda x: TF.scaled_dot_product_attention(*qkv_heads(x, 3, 3), is_causal=True),
                        lambda dt: (rnd(2, 7, 9 * 5, dtype=dt),)),
    "sdpa_packed_gqa": (lambda x: fgt.scaled_dot_product_attention(*qkv_heads(x, 4, 2), scale=0.3, enable_gqa=True),
                        lambda x: TF.scaled_dot_product_attention(*qkv_heads(x, 4, 2), scale=0.3, enable_gqa=True),
                        lambda dt: (rnd(1, 6, 8 * 3, dtype=dt),)),
    "sdpa_packed_qkv_in_larger": (  # q, k, v views of a tensor that holds more than them: gradients via the views
        lambda x: fgt.scaled_dot_product_attention(*qkv_heads(x[3:].view(2, 5, 24), 2, 2), is_causal=True),
        lambda x: TF.scaled_dot_product_attention(*qkv_heads(x[3:].view(2, 5, 24), 2, 2), is_causal=True),
        lambda dt: (rnd(3 + 2 * 5 * 24, dtype=dt),)),
    "sdpa_unpacked_order": (lambda x: fgt.scaled_dot_product_attention(*qkv_heads(x, 2, 2, (1, 0, 2)), is_causal=True),
                            lambda x: TF.scaled_dot_product_attention(*qkv_heads(x, 2, 2, (1, 0, 2)), is_causal=True),
                            lambda dt: (rnd(2, 5, 6 * 4, dtype=dt),)),
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
    # small amplify that by a few orders at most (measured: 3e-15), so 1e-12 is tight yet safe;
    # any real difference (a wrong scale, mask, eps or a missed gradient term) moves the loss by > 1e-4.
    cfg = GPTConfig()
    ours, m_ours = train(fgt, fgt.AdamW, cfg, dtype=torch.float64)
    ref, m_ref = train(TF, torch.optim.AdamW, cfg, dtype=torch.float64)
    assert ref[-1] < ref[0] - 1.0  # it learns
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
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
    """Stands in for fusegrad._C and records the data pointers each kernel read and returned (NumPy arrays
    and torch tensors)."""

    def __init__(self):
        self.calls = {}

    def __getattr__(self, name):
        f = getattr(_C, name)

        def call(*args, **kwargs):
            r = f(*args, **kwargs)
            ptr = lambda a: (a.ctypes.data if isinstance(a, np.ndarray)  # noqa: E731
                             else a.data_ptr() if isinstance(a, torch.Tensor) else None)
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


def test_zero_copy_packed_attention(spy, no_fallback):
    # nanoGPT's q, k, v (head views of one projection) are read in place, and the output is written
    # (B, T, H D), so the model's o.transpose(1, 2).contiguous() copies nothing
    x = rnd(2, 7, 9 * 8)
    o = fgt.scaled_dot_product_attention(*qkv_heads(x, 3, 3), is_causal=True)
    args, res = spy.calls["attention_qkv_forward"]
    assert args[0] == x.data_ptr() and "attention_forward" not in spy.calls
    y = o.transpose(1, 2).contiguous()
    assert y.data_ptr() == res[0]
    do = rnd(*y.shape, seed=5, grad=False)
    (dx,) = torch.autograd.grad(y, x, do)
    args, res = spy.calls["attention_qkv_backward"]
    assert args[:2] == [do.data_ptr(), x.data_ptr()]
    with torch.no_grad():  # the kernel alone: same bits
        o2 = fgt.scaled_dot_product_attention(*qkv_heads(x, 3, 3), is_causal=True)
    assert o2.grad_fn is None and torch.equal(o2, o)
    ref = TF.scaled_dot_product_attention(*qkv_heads(x, 3, 3), is_causal=True)
    close((o, dx), (ref, torch.autograd.grad(ref.transpose(1, 2), x, do)[0]), 2e-5)


def record_backward(monkeypatch, fn):
    """The outputs of each backward of the autograd Function fn (C++: no _C call to spy on), recorded
    at its node's apply, which calls the C++ backward straight."""
    out, apply = [], fn._backward_cls.apply

    def record(ctx, *grads):
        out.append(apply(ctx, *grads))
        return out[-1]
    monkeypatch.setattr(fn._backward_cls, "apply", record)
    return out


@pytest.mark.parametrize("name", ["layer_norm", "gelu", "linear"])
def test_cpp_functions_nodes_call_the_cpp_backward_straight(name, no_fallback, monkeypatch):
    # their nodes' apply is the C++ backward itself (no BackwardCFunction.apply frame); it checks
    # grad mode on its own, and gives what the Function's backward gives called by hand
    fn, bwd = {"layer_norm": (fgt._LayerNorm, _C._torch_layernorm_ctx_backward),
               "gelu": (fgt._Gelu, _C._torch_gelu_ctx_backward),
               "linear": (fgt._Linear, _C._torch_linear_ctx_backward)}[name]
    assert fn._backward_cls.apply is bwd
    ours, _, make = CASES[name]
    inputs = make(torch.float32)
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    y = ours(*inputs)
    assert type(y.grad_fn) is fn._backward_cls
    dy = rnd(*y.shape, seed=5, grad=False)
    g = torch.autograd.grad(y, diff, dy, retain_graph=True)
    with torch.no_grad():
        direct = fn.backward(y.grad_fn, dy)  # the Function's backward called by hand, on the same node
    for a, r in zip(g, [t for t in direct if t is not None]):
        assert torch.equal(a, r)
    with pytest.raises(RuntimeError, match=f"fusegrad.torch.{name}: double backward"):
        y.grad_fn.apply(dy)  # grad mode on: what create_graph=True runs it with


def test_zero_copy_layer_norm_linear_gelu_xent(spy, no_fallback, monkeypatch):
    # the training calls are decided and run in one C++ entry each (_torch_*_fast), whose Functions'
    # forward and backward are C++: the tensors' memory is read in place, results are the kernels' buffers
    ln_grads, gelu_grads, lin_grads = (record_backward(monkeypatch, f) for f in (fgt._LayerNorm, fgt._Gelu, fgt._Linear))
    x, w, b = rnd(7, 33), rnd(33, seed=1), rnd(33, seed=2)
    y = fgt.layer_norm(x, (33,), w, b)
    args, res = spy.calls["_torch_layernorm_fast"]
    assert args[0] == x.data_ptr() and args[2:4] == [w.data_ptr(), b.data_ptr()] and res == [y.data_ptr()]
    W = rnd(5, 33, seed=3)
    g = fgt.gelu(y)
    assert spy.calls["_torch_gelu_fast"] == ([y.data_ptr(), None], [g.data_ptr()])
    z = fgt.linear(g, W)
    assert spy.calls["_torch_linear_fast"] == ([g.data_ptr(), W.data_ptr(), None], [z.data_ptr()])
    t = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    loss = fgt.cross_entropy(z, t)
    assert spy.calls["cross_entropy_forward"][0][:2] == [z.data_ptr(), t.data_ptr()]
    gx, gw, gb, gW = torch.autograd.grad(loss, (x, w, b, W))
    assert gW.data_ptr() == lin_grads[0][1].data_ptr() and lin_grads[0][2] is None  # (no bias: no db)
    assert gelu_grads[0][0].data_ptr() and gelu_grads[0][1] is None
    assert [gx.data_ptr(), gw.data_ptr(), gb.data_ptr()] == [g.data_ptr() for g in ln_grads[0][:3]]


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
                                           r"kernels run on CPU tensors and float32 CUDA tensors"):
        fgt.AdamW([p]).step()


def test_docstring_examples():
    import doctest
    r = doctest.testmod(fgt, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert r.attempted >= 6 and r.failed == 0


# ----- fallbacks call PyTorch's original op, even with torch.nn.functional patched (issue 23, item 7) -----
def test_patched_functional_falls_back_without_recursion(monkeypatch):
    for name in fgt.ORIGINALS:
        monkeypatch.setattr(TF, name, getattr(fgt, name))  # the obvious global swap
    fgt.fallback_counts.clear()
    x = torch.randn(3, 7, 8, dtype=torch.bfloat16)
    w = torch.randn(8, dtype=torch.bfloat16)
    torch.testing.assert_close(TF.layer_norm(x, (8,), w), fgt.ORIGINALS["layer_norm"](x, (8,), w), rtol=0, atol=0)
    torch.testing.assert_close(TF.gelu(x), fgt.ORIGINALS["gelu"](x), rtol=0, atol=0)
    torch.testing.assert_close(TF.linear(x, w.view(1, 8)), fgt.ORIGINALS["linear"](x, w.view(1, 8)), rtol=0, atol=0)
    q = x.view(3, 1, 7, 8)
    torch.testing.assert_close(TF.scaled_dot_product_attention(q, q, q),
                               fgt.ORIGINALS["scaled_dot_product_attention"](q, q, q), rtol=0, atol=0)
    t = torch.tensor([0, 1, 2])
    torch.testing.assert_close(TF.cross_entropy(x[:, 0], t), fgt.ORIGINALS["cross_entropy"](x[:, 0], t), rtol=0, atol=0)
    # nn modules call F.* by attribute: they reach fusegrad and fall back as well
    torch.testing.assert_close(torch.nn.LayerNorm(8).bfloat16()(x), fgt.ORIGINALS["layer_norm"](x, (8,)))
    assert fgt.fallback_counts["layer_norm: dtype"] == 2 and fgt.fallback_counts["gelu: dtype"] == 1
    fgt.fallback_counts.clear()


def test_originals_are_torch_ops_even_when_captured_from_a_patched_functional():
    for name, f in fgt.ORIGINALS.items():
        assert getattr(TF, name) is f  # the fixture restored F
        assert fgt._original(getattr(fgt, name)) is f  # what a second import into a patched process captures
        assert fgt._original(f) is f


# ----- module swaps and the one-call optimize() -----
def nano(cfg, dtype=torch.float32):
    from torch_gpt import NanoGPT
    torch.manual_seed(0)
    return NanoGPT(cfg).to(dtype)


def test_optimize_swaps_modules_and_functional_and_restore_undoes_it():
    from torch_gpt import GPTConfig, batches
    cfg = GPTConfig()
    model = nano(cfg)
    keys = list(model.state_dict())
    idx, targets = batches(cfg, 2, 1)[0]
    ref = model(idx, targets)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))

    swapped = fgt.optimize(model, inplace=False)
    assert swapped is not model and type(model.h[0].c_attn) is torch.nn.Linear  # inplace=False: a copy
    assert type(swapped.h[0].c_attn) is fgt.Linear and type(swapped.h[0].mlp[1]) is fgt.GELU
    assert list(swapped.state_dict()) == keys
    assert TF.layer_norm is fgt.layer_norm and TF.scaled_dot_product_attention is fgt.scaled_dot_product_attention
    fgt.dispatch_counts.clear()
    fgt.fallback_counts.clear()
    loss = swapped(idx, targets)
    grads = torch.autograd.grad(loss, list(swapped.parameters()))
    assert not fgt.fallback_counts
    n = cfg.n_layer
    assert dict(fgt.dispatch_counts) == {  # every op of the model ran a fusegrad kernel
        "layer_norm -> fusegrad": 2 * n + 1, "linear -> fusegrad": 4 * n + 1, "gelu -> fusegrad": n,
        "scaled_dot_product_attention -> fusegrad": n, "cross_entropy -> fusegrad": 1}
    close(loss, ref, 2e-5)
    close(grads, ref_grads, 2e-5)

    assert fgt.restore(swapped) is swapped
    assert type(swapped.h[0].c_attn) is torch.nn.Linear and type(swapped.h[0].mlp[1]) is torch.nn.GELU
    assert all(getattr(TF, k) is f for k, f in fgt.ORIGINALS.items())
    fgt.dispatch_counts.clear()
    swapped(idx, targets)
    assert not fgt.dispatch_counts

    assert fgt.optimize(model, functional=False) is model  # inplace (the default), modules only
    assert type(model.h[0].c_attn) is fgt.Linear and TF.layer_norm is fgt.ORIGINALS["layer_norm"]
    with pytest.raises(TypeError, match=r"fusegrad.torch.optimize: model must be a torch.nn.Module, got dict"):
        fgt.optimize({})


def test_module_classes_match_torch_modules():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 16)
    for theirs in (torch.nn.LayerNorm(16), torch.nn.LayerNorm((3, 16), bias=False), torch.nn.GELU(),
                   torch.nn.GELU("tanh"), torch.nn.Linear(16, 7), torch.nn.Linear(16, 7, bias=False)):
        ours = fgt.optimize(theirs, inplace=False, functional=False)
        assert type(ours) is not type(theirs) and isinstance(ours, type(theirs))
        close(ours(x), theirs(x), 2e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_optimized_nanogpt_loss_curve_matches_torch(dtype, tol, no_fallback):
    # the same unmodified nanoGPT-style model (nn.GELU() erf, nn.Linear, F.layer_norm, SDPA, cross
    # entropy) trained 20 steps plain and after fusegrad.torch.optimize, with each optimizer;
    # tolerances as in the GPT loss-curve tests above
    from torch_gpt import GPTConfig, train
    cfg = GPTConfig()
    ref, _ = train(None, torch.optim.AdamW, cfg, dtype=dtype)
    ours, _ = train(None, fgt.AdamW, cfg, dtype=dtype, model_fn=fgt.optimize)
    fgt.restore()
    assert ref[-1] < ref[0] - 1.0
    np.testing.assert_allclose(ours, ref, rtol=0, atol=tol)


def test_optimized_model_compiles_fullgraph(no_fallback):
    from torch_gpt import GPTConfig, batches
    torch._dynamo.reset()
    cfg = GPTConfig(n_layer=1)
    model = fgt.optimize(nano(cfg))
    idx, targets = batches(cfg, 2, 1)[0]
    loss = torch.compile(model, backend="aot_eager", fullgraph=True)(idx, targets)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    loss_ref = model(idx, targets)
    grads_ref = torch.autograd.grad(loss_ref, list(model.parameters()))
    fgt.restore(model)
    close(loss, loss_ref, 1e-6)
    close(grads, grads_ref, 1e-6)


# ----- the eager path and the custom-op path -----
def test_eager_path_skips_the_custom_op(monkeypatch):
    # eager calls (with and without autograd) never go through torch.ops.fusegrad; their backward
    # is the light autograd.Function's, and under no_grad no graph is recorded at all
    def boom(*a, **k):
        raise AssertionError("custom op called in eager mode")
    for op in ("_layernorm_fwd", "_linear_fwd", "_gelu_fwd", "_attention_fwd", "_xent_fwd"):
        monkeypatch.setattr(fgt, op, boom)
    x, w, b = rnd(4, 7, 33), rnd(33, seed=1), rnd(33, seed=2)
    y = fgt.gelu(fgt.layer_norm(x, (33,), w, b))
    assert type(y.grad_fn).__name__ == "ViewBackward0" or "Gelu" in type(y.grad_fn).__name__
    y.sum().backward()
    assert x.grad is not None and w.grad is not None
    with torch.no_grad():
        z = fgt.linear(x, rnd(5, 33, seed=3))
    assert z.grad_fn is None and not z.requires_grad


@pytest.mark.parametrize("name", sorted(CASES))
def test_double_backward_raises_instead_of_dropping_second_order_terms(name, no_fallback):
    # our backward kernels are not differentiable: create_graph=True through them must not silently
    # give gradients without this node's second-order terms (torch.autograd.grad prunes the error node
    # that once_differentiable would add, so the backward itself raises)
    ours, theirs, make = CASES[name]
    inputs = make(torch.float64)
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    y = ours(*inputs)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad((y ** 3).sum(), diff, create_graph=True)
    y = ours(*inputs)  # first order, also with grad mode on around the call, as before
    with torch.enable_grad():
        g = torch.autograd.grad((y ** 3).sum(), diff)
    ref = torch.autograd.grad((theirs(*inputs) ** 3).sum(), diff)
    for a, r in zip(g, ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_double_backward_through_custom_ops_raises(name, monkeypatch):
    # the torch.library path (what torch.compile traces) must not drop second-order terms either:
    # its backward ops have no autograd formula, so PyTorch raises when create_graph=True reaches them
    ours, _, make = CASES[name]
    monkeypatch.setattr(fgt, "_is_compiling", lambda: True)
    old = fgt.set_policy("fusegrad")
    try:
        inputs = make(torch.float64)
        diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        y = ours(*inputs)
        with pytest.raises(RuntimeError, match=r"through fusegrad\.\w+_backward.* no autograd formula"):
            g = torch.autograd.grad((y ** 3).sum(), diff, create_graph=True)
            torch.autograd.grad(sum((t ** 2).sum() for t in g), diff)
    finally:
        fgt.set_policy(old)


@pytest.mark.parametrize("name", ["layer_norm", "gelu", "linear", "cross_entropy"])
def test_gradcheck_custom_op_path(name, monkeypatch):
    # the registered custom ops' autograd (what torch.compile traces), run eagerly by pretending to trace
    ours, _, make = CASES[name]
    monkeypatch.setattr(fgt, "_is_compiling", lambda: True)
    inputs = tuple(t.detach().requires_grad_(t.is_floating_point()) for t in make(torch.float64))
    assert torch.autograd.gradcheck(ours, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


# ----- the size policy: measured table, overrides, dispatch counts -----
def test_policy_torch_runs_pytorch_and_counts_it():
    fgt.set_policy("torch")
    fgt.dispatch_counts.clear()
    x = rnd(7, 33)
    assert torch.equal(fgt.layer_norm(x, (33,)), TF.layer_norm(x, (33,)))
    assert torch.equal(fgt.gelu(x), TF.gelu(x))
    assert dict(fgt.dispatch_counts) == {"layer_norm -> torch": 1, "gelu -> torch": 1}
    fgt.set_policy("fusegrad", ops=["gelu"])
    fgt.dispatch_counts.clear()
    fgt.gelu(x), fgt.gelu(x, approximate="tanh"), fgt.layer_norm(x, (33,))
    assert dict(fgt.dispatch_counts) == {"gelu -> fusegrad": 1, "gelu_tanh -> torch": 1, "layer_norm -> torch": 1}
    assert fgt.get_policy()["gelu"] == "fusegrad" and fgt.get_policy()["linear"] == "torch"


# ----- layer_norm's C++ fast path (_C._torch_layernorm_fast) against the Python path it shortcuts -----
def ln_args(dtype, affine, grad, seed=0):
    x = rnd(5, 3, 37, dtype=dtype, seed=seed, grad=grad)
    w, b = rnd(37, dtype=dtype, seed=seed + 1, grad=grad), rnd(37, dtype=dtype, seed=seed + 2, grad=grad)
    if affine == "params":
        w, b = torch.nn.Parameter(w.detach()), torch.nn.Parameter(b.detach())
    return x, (w if affine in ("params", "tensors", "weight") else None), (
        b if affine in ("params", "tensors", "bias") else None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ns", [37, (37,), [37], torch.Size([37])], ids=["int", "tuple", "list", "Size"])
@pytest.mark.parametrize("affine", ["params", "tensors", "weight", "bias", "none"])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "nograd"])
def test_layer_norm_fast_path_matches_python_path(dtype, ns, affine, grad, monkeypatch):
    # same bits, same autograd node, same gradients, same dispatch counts as the Python path
    x, w, b = ln_args(dtype, affine, grad)
    dy = rnd(5, 3, 37, dtype=dtype, seed=9, grad=False)
    assert fgt._C._torch_layernorm_fast(x, ns, w, b, 1e-5) is not None  # the fast path takes this call

    def run():
        fgt.dispatch_counts.clear()
        y = fgt.layer_norm(x, ns, w, b, 1e-5)
        counts = dict(fgt.dispatch_counts)
        diff = [t for t in (x, w, b) if t is not None and t.requires_grad]
        return y, counts, (torch.autograd.grad(y, diff, dy) if diff else ())
    y, counts, grads = run()
    monkeypatch.setattr(fgt._C, "_torch_layernorm_fast", lambda *a: None)  # the Python path
    y2, counts2, grads2 = run()
    assert counts == counts2 == {"layer_norm -> fusegrad": 1}
    needs = any(t is not None and t.requires_grad for t in (x, w, b))  # (a Parameter always does)
    assert torch.equal(y, y2) and y.dtype == dtype and (y.grad_fn is None) == (not needs)
    assert not needs or y.grad_fn.name() == y2.grad_fn.name() == "_LayerNormBackward"
    assert len(grads) == len(grads2) and all(torch.equal(g, g2) for g, g2 in zip(grads, grads2))
    if needs:  # against float64 PyTorch
        ref = TF.layer_norm(x.double(), (37,), None if w is None else w.double(), None if b is None else b.double())
        diff = [t for t in (x, w, b) if t is not None and t.requires_grad]
        for g, r in zip(grads, torch.autograd.grad(ref, diff, dy.double())):
            torch.testing.assert_close(g, r.to(dtype), rtol=1e-4, atol=1e-4)


def python_path_parity(monkeypatch, entry, op, call, inputs, dy, key):
    """call() through the C++ fast path (_C.<entry>) and then through the Python path: same bits, same
    autograd node, same gradients and dispatch counts ({key: 1})."""
    def run():
        fgt.dispatch_counts.clear()
        y = call()
        counts = dict(fgt.dispatch_counts)
        diff = [t for t in inputs if t is not None and t.requires_grad]
        return y, counts, (torch.autograd.grad(y, diff, dy) if diff else ())
    y, counts, grads = run()
    with monkeypatch.context() as m:
        m.setattr(fgt._C, entry, lambda *a: None)
        y2, counts2, grads2 = run()
    assert counts == counts2 == {key: 1}
    assert torch.equal(y, y2) and (y.grad_fn is None) == (y2.grad_fn is None)
    assert y.grad_fn is None or y.grad_fn.name() == y2.grad_fn.name() == op
    assert len(grads) == len(grads2) and all(torch.equal(g, g2) for g, g2 in zip(grads, grads2))
    return y, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(5, 3, 37), (1,), (1000,)])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "nograd"])
def test_gelu_fast_path_matches_python_path(dtype, approximate, shape, grad, monkeypatch):
    x = rnd(*shape, dtype=dtype, grad=grad) * 3
    x = x.detach().requires_grad_(grad)
    assert fgt._C._torch_gelu_fast(x, approximate) is not None
    dy = rnd(*shape, dtype=dtype, seed=9, grad=False)
    y, grads = python_path_parity(monkeypatch, "_torch_gelu_fast", "_GeluBackward",
                                  lambda: fgt.gelu(x, approximate=approximate), (x,), dy,
                                  "gelu -> fusegrad" if approximate == "none" else "gelu_tanh -> fusegrad")
    ref = TF.gelu(x.double(), approximate=approximate)
    torch.testing.assert_close(y, ref.to(dtype), rtol=1e-5, atol=1e-6)
    if grad:
        torch.testing.assert_close(grads[0], torch.autograd.grad(ref, x, dy.double())[0].to(dtype), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("xshape", [(5, 37), (2, 3, 37), (37,)])
@pytest.mark.parametrize("params", ["Parameter+bias", "tensor+bias", "no bias"])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "nograd"])
def test_linear_fast_path_matches_python_path(dtype, xshape, params, grad, monkeypatch):
    x = rnd(*xshape, dtype=dtype, grad=grad)
    w, b = rnd(11, 37, dtype=dtype, seed=1, grad=grad), rnd(11, dtype=dtype, seed=2, grad=grad)
    if params == "Parameter+bias":
        w, b = torch.nn.Parameter(w.detach()), torch.nn.Parameter(b.detach())
    elif params == "no bias":
        b = None
    assert fgt._C._torch_linear_fast(x, w, b) is not None
    dy = rnd(*xshape[:-1], 11, dtype=dtype, seed=9, grad=False)
    y, grads = python_path_parity(monkeypatch, "_torch_linear_fast", "_LinearBackward",
                                  lambda: fgt.linear(x, w, b), (x, w, b), dy, "linear -> fusegrad")
    ref = TF.linear(x.double(), w.double(), None if b is None else b.double())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(y, ref.to(dtype), rtol=tol, atol=tol)
    diff = [t for t in (x, w, b) if t is not None and t.requires_grad]
    for g, r in zip(grads, torch.autograd.grad(ref, diff, dy.double()) if diff else ()):
        torch.testing.assert_close(g, r.to(dtype), rtol=tol, atol=tol)


def test_gelu_and_linear_fast_paths_decline_what_they_do_not_take():
    x, w, b = rnd(5, 37), rnd(11, 37, seed=1), rnd(11, seed=2)
    gelu, linear = fgt._C._torch_gelu_fast, fgt._C._torch_linear_fast

    class Sub(torch.Tensor):
        pass
    for why, args in {"approximate": (x, "fast"), "approximate type": (x, None), "strided": (x.t(), "none"),
                      "subclass": (x.detach().as_subclass(Sub), "none"), "bfloat16": (x.detach().bfloat16(), "none"),
                      "empty": (rnd(0, 3), "none"), "int64": (torch.arange(3), "none")}.items():
        assert gelu(*args) is None, why
    for why, args in {"strided weight": (x, rnd(37, 11).t(), b), "weight shape": (x, rnd(11, 36), b),
                      "1-d weight": (x, rnd(37), None), "bias shape": (x, w, rnd(12)), "0-d x": (rnd(), w, b),
                      "dtypes": (x, w.double(), b.double()), "bias dtype": (x, w, b.double()),
                      "empty x": (rnd(0, 37), w, b), "meta": (x.to("meta"), w.to("meta"), None)}.items():
        assert linear(*args) is None, why
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the Python path's bf16 kernels
        assert linear(x, w, b) is None
        assert fgt.linear(x, w, b).dtype == torch.bfloat16
    fgt.fallback_counts.clear()
    with pytest.raises(RuntimeError, match="approximate"):  # as before: PyTorch's error, a fallback counted
        fgt.gelu(x, approximate="fast")
    assert fgt.fallback_counts == {"gelu: approximate": 1}


def test_layer_norm_fast_path_declines_what_it_does_not_take():
    # calls outside the common case return None (the Python path then decides: fallbacks, errors)
    x, w, b = ln_args(torch.float32, "tensors", True)
    fast = fgt._C._torch_layernorm_fast

    class Sub(torch.Tensor):
        pass
    declined = {
        "strided x": (x.transpose(0, 1), 37, w, b, 1e-5),
        "subclass x": (x.detach().as_subclass(Sub), 37, w, b, 1e-5),
        "meta x": (torch.empty(5, 37, device="meta"), 37, w, b, 1e-5),
        "bfloat16 x": (x.detach().bfloat16(), 37, w.detach().bfloat16(), b.detach().bfloat16(), 1e-5),
        "mixed dtypes": (x, 37, w.double(), b, 1e-5),
        "normalized_shape mismatch": (x, 36, w, b, 1e-5),
        "2-d normalized_shape": (x, (3, 37), w, b, 1e-5),
        "weight shape": (x, 37, rnd(36), b, 1e-5),
        "bias shape": (x, 37, w, rnd(1, 37), 1e-5),
        "int eps": (x, 37, w, b, 0),
        "negative eps": (x, 37, w, b, -1.0),
        "nan eps": (x, 37, w, b, float("nan")),
        "empty x": (rnd(0, 37), 37, w, b, 1e-5),
        "0-d x": (rnd(), 1, None, None, 1e-5),
        "not a tensor": (x.detach().numpy(), 37, None, None, 1e-5),
    }
    for why, args in declined.items():
        assert fast(*args) is None, why
    # the Python path then gives what it gave before: strided input copied, PyTorch's errors kept
    fgt.dispatch_counts.clear()
    y = fgt.layer_norm(x.transpose(0, 1), (37,), w, b)
    torch.testing.assert_close(y, TF.layer_norm(x.transpose(0, 1), (37,), w, b), rtol=1e-5, atol=1e-5)
    assert dict(fgt.dispatch_counts) == {"layer_norm -> fusegrad": 1}
    with pytest.raises(RuntimeError):
        fgt.layer_norm(x, (36,), w, b)
    with pytest.raises(ValueError, match="x must be contiguous"):  # the Function checks on its own
        fgt._layernorm_apply(x.transpose(0, 1), w, b, 1e-5)


def test_layer_norm_fast_path_threads_and_repeated_backward():
    # the arguments handed from the fast path to the Function's forward are per thread
    from concurrent.futures import ThreadPoolExecutor
    cases = [ln_args(torch.float32, "params", True, seed=s) for s in range(4)]
    ref = [fgt.layer_norm(x, (37,), w, b) for x, w, b in cases]

    def work(i):
        x, w, b = cases[i % 4]
        return all(torch.equal(fgt.layer_norm(x, (37,), w, b), ref[i % 4]) for _ in range(50))
    with ThreadPoolExecutor(4) as ex:
        assert all(ex.map(work, range(8)))
    x, w, b = cases[0]
    y = fgt.layer_norm(x, (37,), w, b)
    dy = rnd(*y.shape, seed=7, grad=False)
    g1 = torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)
    g2 = torch.autograd.grad(y, (x, w, b), dy)
    assert all(torch.equal(a, c) for a, c in zip(g1, g2))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(y, (x, w, b), dy)


def test_layer_norm_backward_checks_the_statistics_it_is_given():
    # the training forward keeps mean and rstd in ctx.stats (a capsule); a backward handed anything
    # else, or another forward's statistics, raises instead of reading the wrong memory
    fgt.set_policy("fusegrad")
    try:
        x, w, b = ln_args(torch.float32, "params", True, seed=1)
        dy = torch.ones(x.shape)
        other = fgt.layer_norm(rnd(3, 37, seed=2), (37,), w, b)  # fewer rows
        for bad in (np.zeros((2,) + tuple(x.shape[:-1]), np.float32), other.grad_fn.stats, None):
            y = fgt.layer_norm(x, (37,), w, b)
            assert type(y.grad_fn.stats).__name__ == "PyCapsule"
            y.grad_fn.stats = bad
            with pytest.raises(ValueError, match="ctx.stats must be the statistics of this x's forward"):
                y.backward(dy)
        y = fgt.layer_norm(x.double(), (37,), w.double(), b.double())
        y.grad_fn.stats = fgt.layer_norm(x, (37,), w, b).grad_fn.stats  # float32 statistics
        with pytest.raises(ValueError, match="ctx.stats"):
            y.backward(dy.double())
        y = fgt.layer_norm(x, (37,), w, b)  # untouched: the gradients of PyTorch's op
        g = torch.autograd.grad(y, (x, w, b), dy)
        ref = torch.autograd.grad(TF.layer_norm(x, (37,), w, b), (x, w, b), dy)
        for a, r in zip(g, ref):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)
    finally:
        fgt.set_policy("auto")


def test_outputs_own_host_cache_memory_until_torch_frees_them():
    # the C++ entries hand outputs to torch as DLPack capsules over host-cache blocks: the block is
    # in use exactly as long as the tensor (or a view, or a NumPy array over it) lives, then goes
    # back to the cache, whichever thread drops the last reference
    import gc
    import threading
    import fusegrad
    fgt.set_policy("fusegrad")
    gc.collect()
    gc.disable()  # the counts below are the whole cache's: no collection of other tests' garbage meanwhile
    try:
        x = rnd(301, 257, seed=3, grad=False)  # 309 KB outputs: host-cache blocks (>= 128 KiB)
        w, b = rnd(257, seed=4, grad=False), rnd(257, seed=5, grad=False)
        base = fusegrad.memory_stats()["live_blocks"]
        y = fgt.gelu(x)
        z = fgt.layer_norm(x, (257,), w, b)
        assert fusegrad.memory_stats()["live_blocks"] == base + 2
        ref = TF.gelu(x.double())
        torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-6)
        view, arr = y[7:], z.numpy()
        del y, z
        assert fusegrad.memory_stats()["live_blocks"] == base + 2  # the view and the array keep them
        torch.testing.assert_close(view.double(), ref[7:], rtol=1e-6, atol=1e-6)
        del arr
        assert fusegrad.memory_stats()["live_blocks"] == base + 1
        t = threading.Thread(target=lambda v=[view]: v.clear())
        del view
        t.start()
        t.join()
        assert fusegrad.memory_stats()["live_blocks"] == base
        y = fgt.gelu(x)  # the cached block is used again
        hits = fusegrad.memory_stats()["hits"]
        del y
        y = fgt.gelu(x)
        assert fusegrad.memory_stats()["hits"] == hits + 1
        y.resize_(0)  # resizing within the block works; growing raises as for torch.from_numpy
        with pytest.raises(RuntimeError):
            y.resize_(301 * 258)
    finally:
        gc.enable()
        fgt.set_policy("auto")


@pytest.mark.parametrize("policy", ["fusegrad", "torch"])
@pytest.mark.parametrize("params", [True, False])
def test_layer_norm_training_call_counts_once_and_matches(policy, params):
    # the common training call (weight and bias given, autograd on) counts one dispatch per call,
    # picks what the policy says and gives the no-grad path's bits
    fgt.set_policy(policy, ops="layer_norm")
    try:
        x = rnd(5, 3, 37).requires_grad_()
        w, b = rnd(37), rnd(37)
        w, b = (torch.nn.Parameter(w), torch.nn.Parameter(b)) if params else (w.requires_grad_(), b.requires_grad_())
        dy = rnd(5, 3, 37)
        fgt.dispatch_counts.clear()
        for ns in ((37,), [37], torch.Size([37]), (37,)):
            y = fgt.layer_norm(x, ns, w, b, 1e-5)
            assert (y.grad_fn is not None) and y.grad_fn.name() == (
                "_LayerNormBackward" if policy == "fusegrad" else "NativeLayerNormBackward0")
        assert dict(fgt.dispatch_counts) == {f"layer_norm -> {policy}": 4}
        grads = torch.autograd.grad(y, (x, w, b), dy)
        with torch.no_grad():  # the general path (mode 1) for the forward's bits
            y1 = fgt.layer_norm(x, (37,), w, b, 1e-5)
        assert torch.equal(y.detach(), y1)
        ref = torch.autograd.grad(TF.layer_norm(x.double(), (37,), w.double(), b.double(), 1e-5), (x, w, b),
                                  dy.double())
        for g, r in zip(grads, ref):
            torch.testing.assert_close(g, r.float(), rtol=1e-4, atol=1e-4)
        with pytest.raises(RuntimeError):  # shapes that do not match: PyTorch's own error, as before
            fgt.layer_norm(x, (36,), w, b)
        # nothing requires grad (grad mode on): the kernel alone, no autograd node, still counted once
        fgt.dispatch_counts.clear()
        y2 = fgt.layer_norm(x.detach(), (37,), w.detach(), b.detach(), 1e-5)
        assert y2.grad_fn is None and dict(fgt.dispatch_counts) == {f"layer_norm -> {policy}": 1}
        assert torch.equal(y2, y1)
    finally:
        fgt.set_policy("auto")


def test_policy_table_decides_by_size_bucket():
    # a table given as a dict: layer_norm float32 measured faster at 2^10 elements, slower at 2^20;
    # sizes between go to the nearest measured bucket, dtypes or ops not in it to PyTorch
    table = {"tables": {"default": {"layer_norm": {"float32": {"10": "fusegrad", "20": "torch"}}}}}
    fgt.set_policy("auto", table=table)
    try:
        fgt.dispatch_counts.clear()
        for n in (1, 8, 100, 2000, 5000):  # sizes 33 .. 165000: buckets 5, 8, 11, 16, 17
            fgt.layer_norm(rnd(n, 33), (33,))
        fgt.layer_norm(rnd(8, 33, dtype=torch.float64), (33,))
        fgt.gelu(rnd(8, 33))
        assert dict(fgt.dispatch_counts) == {"layer_norm -> fusegrad": 3, "layer_norm -> torch": 3, "gelu -> torch": 1}
    finally:
        fgt.set_policy("auto", table=fgt._TABLE_FILE if fgt._TABLE_FILE.exists() else {})


def test_policy_bad_arguments():
    with pytest.raises(ValueError, match=r"fusegrad.torch.set_policy: policy must be one of \('auto', 'fusegrad', "
                                         r"'torch'\), got 'fast'"):
        fgt.set_policy("fast")
    with pytest.raises(ValueError, match=r"fusegrad.torch.set_policy: unknown op 'layernorm'; ops: "):
        fgt.set_policy("torch", ops="layernorm")
    with pytest.raises(ValueError, match=r"fusegrad.torch: table names an unknown op 'relu'"):
        fgt.set_policy(table={"default": {"relu": {}}})


def test_shipped_table_names_known_ops_and_choices():
    import json
    doc = json.loads(fgt._TABLE_FILE.read_text())
    assert "default" in doc["tables"]
    for entry in doc["tables"].values():
        for op, per_dtype in entry.items():
            amp = {"bfloat16"} if op in ("linear", "scaled_dot_product_attention") else set()  # autocast's ops
            assert op in fgt.POLICY_OPS and set(per_dtype) <= {"float32", "float64"} | amp
            assert all(c in ("fusegrad", "torch") for b in per_dtype.values() for c in b.values())


def test_policy_environment_variable():
    import os
    import subprocess
    import sys
    env = {**os.environ, "FUSEGRAD_TORCH_POLICY": "torch,layer_norm=fusegrad"}
    code = "import fusegrad.torch as f; p = f.get_policy(); print(p['layer_norm'], p['gelu'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["fusegrad", "torch"]
    env["FUSEGRAD_TORCH_POLICY"] = "gelu=quick"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "FUSEGRAD_TORCH_POLICY: fusegrad.torch.set_policy: policy must be one of" in r.stderr
