"""fusegrad.torch on CUDA tensors: routed to fusegrad._cuda (python/fusegrad/_torch_cuda.py).

Here without a GPU: the routing decision (_torch_cuda.route) on stand-in tensors for every reason
a call stays with PyTorch, and the adapters' wiring (meta tensors standing in for CUDA ones: each
op reaches its CUDA Function with the right arguments, options it lacks still fall back, the
policy 'torch' still wins). With a GPU (marker ``cuda``): every routed op, forward and backward,
against PyTorch's own CUDA ops and float64, and AdamW against torch.optim.AdamW."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fusegrad.torch as fgt  # noqa: E402
from fusegrad import _torch_cuda as tc  # noqa: E402
from fusegrad import cuda  # noqa: E402


def _t(device="cuda:0", dtype=None, n=6, shape=(1, 1, 1, 64)):
    return SimpleNamespace(device=torch.device(device), dtype=dtype or torch.float32, numel=lambda: n, shape=shape)


OK = dict(available=True, current_device=0, cublaslt=True)


@pytest.mark.parametrize("name, ts, also, kw, why", [
    ("layer_norm", [_t()], [], {}, ""),
    ("linear", [_t(dtype=torch.bfloat16), _t(dtype=torch.bfloat16)], [], {}, ""),
    ("linear", [_t(dtype=torch.float16)], [], {}, ""),
    ("cross_entropy", [_t()], [_t(dtype=torch.int64)], {}, ""),
    ("gelu", [_t("meta")], [], {}, "device"),
    ("gelu", [_t("cpu")], [], {}, "device"),
    ("layer_norm", [_t("cuda:0"), _t("cuda:1")], [], {}, "device"),
    ("cross_entropy", [_t()], [_t("cpu", torch.int64)], {}, "device"),
    ("gelu", [_t()], [], {"available": False}, "cuda: fusegrad.cuda is not available"),
    ("gelu", [_t("cuda:1")], [], {}, "cuda: not the current device"),
    ("gelu", [_t(dtype=torch.float64)], [], {}, "cuda: dtype"),
    ("layer_norm", [_t(dtype=torch.bfloat16)], [], {}, "cuda: dtype"),
    ("linear", [_t(dtype=torch.float16), _t()], [], {}, "cuda: dtype"),
    ("linear", [_t(dtype=torch.float64)], [], {}, "cuda: dtype"),
    ("scaled_dot_product_attention", [_t(dtype=torch.float16)], [], {}, ""),
    ("scaled_dot_product_attention", [_t(dtype=torch.float16, shape=(2, 1, 3, 128))], [], {}, ""),
    ("scaled_dot_product_attention", [_t(dtype=torch.float16, shape=(2, 1, 3, 40))], [], {}, "cuda: fp16 head size"),
    ("scaled_dot_product_attention", [_t(dtype=torch.bfloat16, shape=(2, 1, 3, 40))], [], {}, ""),
    ("scaled_dot_product_attention", [_t(dtype=torch.float64)], [], {}, "cuda: dtype"),
    ("scaled_dot_product_attention", [_t(dtype=torch.bfloat16)], [], {}, ""),
    ("gelu", [_t(n=0)], [], {}, "cuda: empty"),
    ("linear", [_t()], [], {"cublaslt": False}, "cuda: cuBLASLt is not loaded"),
    ("gelu", [_t()], [], {"cublaslt": False}, ""),
    ("gelu", [_t("cuda")], [], {"current_device": 3}, ""),  # 'cuda' without an index: the current device
])
def test_route_decides_from_devices_dtypes_and_sizes(name, ts, also, kw, why):
    assert tc.route(name, ts, also, **{**OK, **kw}) == why


@pytest.fixture
def meta_is_cuda(monkeypatch):
    """meta tensors take the CUDA path of the adapters; each CUDA Function records its call."""
    calls = []

    def rec(fn, out):
        def apply(*args):
            calls.append((fn, args))
            return out(*args)
        return apply

    monkeypatch.setattr(fgt, "_cuda_mode", lambda name, ts, also=(): fgt.CUDA)
    monkeypatch.setattr(tc.LayerNorm, "apply", rec("layer_norm", lambda x, w, b, eps: torch.empty_like(x)))
    monkeypatch.setattr(tc.Gelu, "apply", rec("gelu", lambda x, a: torch.empty_like(x)))
    monkeypatch.setattr(tc.CrossEntropy, "apply", rec("cross_entropy", lambda x, t, i: x.new_empty(())))
    monkeypatch.setattr(tc.Attention, "apply", rec("sdpa", lambda q, k, v, c, s: torch.empty_like(q)))
    monkeypatch.setattr(tc.Linear, "apply", rec("linear", lambda x, w, b: x.new_empty((x.shape[0], w.shape[0]))))
    old = fgt.set_policy("auto")
    fgt.fallback_counts.clear()
    fgt.dispatch_counts.clear()
    yield calls
    fgt.set_policy(old)


def test_adapters_send_cuda_calls_to_the_cuda_functions(meta_is_cuda):
    calls = meta_is_cuda
    m = dict(device="meta")
    x, w, b = torch.empty(2, 3, 8, **m), torch.empty(8, **m), torch.empty(8, **m)
    assert fgt.layer_norm(x, (8,), w, b, eps=1e-3).shape == (2, 3, 8)
    assert calls[-1][0] == "layer_norm" and calls[-1][1][0].shape == (6, 8) and calls[-1][1][3] == 1e-3
    assert fgt.gelu(x, approximate="tanh").shape == x.shape and calls[-1] == ("gelu", (x, "tanh"))
    logits, t = torch.empty(5, 11, **m), torch.empty(5, dtype=torch.int64, **m)
    fgt.cross_entropy(logits, t, ignore_index=3)
    assert calls[-1][0] == "cross_entropy" and calls[-1][1][2] == 3
    q = torch.empty(2, 4, 7, 16, **m)
    kv = torch.empty(2, 2, 7, 16, **m)
    assert fgt.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True, scale=0.5).shape == q.shape
    assert calls[-1][0] == "sdpa" and calls[-1][1][3:] == (True, 0.5)
    q3 = torch.empty(2, 7, 16, **m)
    assert fgt.scaled_dot_product_attention(q3, q3, q3).shape == q3.shape  # (B, L, E): one head
    assert calls[-1][1][0].shape == (2, 1, 7, 16)
    lw, lb = torch.empty(5, 8, **m), torch.empty(5, **m)
    assert fgt.linear(x, lw, lb).shape == (2, 3, 5)
    assert calls[-1][0] == "linear" and calls[-1][1][0].shape == (6, 8)
    assert fgt.dispatch_counts["linear -> fusegrad"] == 1 and fgt.dispatch_counts["gelu_tanh -> fusegrad"] == 1
    n = len(calls)
    # what the kernels lack still goes to PyTorch, counted by reason
    fgt.cross_entropy(logits, t, label_smoothing=0.1)
    fgt.scaled_dot_product_attention(q, torch.empty(2, 4, 9, 16, **m), torch.empty(2, 4, 9, 16, **m), is_causal=True)
    assert len(calls) == n
    assert fgt.fallback_counts["cross_entropy: options"] == 1
    assert fgt.fallback_counts["scaled_dot_product_attention: is_causal with L != S (PyTorch aligns the mask "
                               "top-left)"] == 1
    # the policy 'torch' keeps CUDA calls on PyTorch's ops
    fgt.set_policy("torch", ops="layer_norm")
    assert fgt.layer_norm(x, (8,), w, b).device.type == "meta" and len(calls) == n
    assert fgt.dispatch_counts["layer_norm -> torch"] == 1


def test_cuda_mode_reasons_on_this_machine():
    # meta tensors: 'device'; the route's reasons otherwise (no CUDA tensors can exist without a GPU)
    fgt.fallback_counts.clear()
    fgt.gelu(torch.empty(3, device="meta"))
    assert dict(fgt.fallback_counts) == {"gelu: device": 1}


# ------------------------------------------------------------------------------------------------
# On a GPU

gpu = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(not (cuda.is_available() and torch.cuda.is_available()),
                               reason=f"no GPU for torch and fusegrad: {cuda.unavailable_reason() or 'torch CPU'}")


def _pair(*shapes, dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    cpu = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    dev = [c.to("cuda", dtype or torch.float32).requires_grad_(True) for c in cpu]
    ref = [c.clone().requires_grad_(True) for c in cpu]
    return dev, ref


def _close(got, want, rtol, atol):
    np.testing.assert_allclose(got.detach().double().cpu().numpy(), want.detach().double().cpu().numpy(),
                               rtol=rtol, atol=atol)


@pytest.fixture
def routed():
    old = fgt.set_policy("auto")
    fgt.fallback_counts.clear()
    fgt.dispatch_counts.clear()
    yield
    assert not fgt.fallback_counts, dict(fgt.fallback_counts)
    fgt.set_policy(old)


@gpu
@needs_gpu
@pytest.mark.parametrize("N, C", [(1, 1), (37, 129), (256, 768)])
def test_gpu_layer_norm_gelu_cross_entropy(N, C, routed):
    (x, w, b, dy), (xr, wr, br, dyr) = _pair((N, C), (C,), (C,), (N, C))
    F = torch.nn.functional
    y = fgt.layer_norm(x, (C,), w, b)
    y.backward(dy)
    yr = F.layer_norm(xr, (C,), wr, br)
    yr.backward(dyr)
    for a, r in ((y, yr), (x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
        _close(a, r, 1e-4, 1e-4 * math.sqrt(N))
    for approx in ("none", "tanh"):
        (x,), (xr,) = _pair((N, C), seed=1)
        fgt.gelu(x, approximate=approx).sum().backward()
        F.gelu(xr, approximate=approx).sum().backward()
        _close(x.grad, xr.grad, 1e-5, 1e-6)
    (lg,), (lr,) = _pair((N, C), seed=2)
    t = torch.randint(0, C, (N,))
    t[0] = -100 if N > 1 else t[0]
    fgt.cross_entropy(lg, t.cuda()).backward()
    F.cross_entropy(lr, t).backward()
    _close(lg.grad, lr.grad, 1e-5, 1e-7)
    assert fgt.dispatch_counts["layer_norm -> fusegrad"] == 1 and fgt.dispatch_counts["cross_entropy -> fusegrad"] == 1


def _budget(ours, theirs, want):
    """Error against float64 at most twice that of PyTorch's op in the same dtype (the naive one)."""
    err = (ours.detach().double().cpu() - want).abs().max().item()
    base = (theirs.detach().double().cpu() - want).abs().max().item()
    tiny = 4 * torch.finfo(torch.float32).eps * max(1.0, want.abs().max().item())
    assert err <= 2 * base + tiny, (err, base)


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B, H, Hkv, T, D, causal", [(1, 1, 1, 1, 64, False), (2, 4, 2, 37, 64, True),
                                                     (1, 2, 2, 130, 128, True), (1, 2, 2, 33, 40, False)])
def test_gpu_sdpa(B, H, Hkv, T, D, causal, dtype, routed):
    (q, k, v, do), _ = _pair((B, H, T, D), (B, Hkv, T, D), (B, Hkv, T, D), (B, H, T, D), seed=3, dtype=dtype)
    o = fgt.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=H != Hkv)
    o.backward(do)
    if dtype == torch.float16 and D not in (64, 128):  # fp16 kernels only on tensor cores: PyTorch's op
        assert dict(fgt.fallback_counts) == {"scaled_dot_product_attention: cuda: fp16 head size": 1}
        fgt.fallback_counts.clear()
        return
    assert o.dtype == dtype and fgt.dispatch_counts["scaled_dot_product_attention -> fusegrad"] == 1
    rep = H // Hkv
    sdpa = torch.nn.functional.scaled_dot_product_attention
    # float64 on the values the GPU holds, and PyTorch's own op in this dtype (the naive one)
    q64, k64, v64 = (t.detach().double().cpu().requires_grad_(True) for t in (q, k, v))
    o64 = sdpa(q64, k64.repeat_interleave(rep, 1), v64.repeat_interleave(rep, 1), is_causal=causal)
    o64.backward(do.detach().double().cpu())
    qt, kt, vt = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    ot = sdpa(qt, kt.repeat_interleave(rep, 1), vt.repeat_interleave(rep, 1), is_causal=causal)
    ot.backward(do)
    for a, t_, r in ((o, ot, o64), (q.grad, qt.grad, q64.grad), (k.grad, kt.grad, k64.grad),
                     (v.grad, vt.grad, v64.grad)):
        if dtype == torch.float32:
            _close(a, r, 1e-3, 1e-4)
        else:
            _budget(a, t_, r.detach())


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N, K, O", [(1, 1, 1), (37, 129, 65), (512, 768, 3072)])
def test_gpu_linear(dtype, N, K, O, routed):
    (x, w, b, dy), (xr, wr, br, dyr) = _pair((N, K), (O, K), (O,), (N, O), dtype=dtype, seed=4)
    y = fgt.linear(x, w, b)
    y.backward(dy)
    # references: float64 on the operands as the GPU holds them, and torch's own op in this dtype
    x64, w64, b64, dy64 = (t.detach().double().cpu() for t in (x, w, b, dy))
    xt, wt, bt = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(dy)
    # the bias gradient's naive computation: one float32 accumulator per column, rows in order
    db_naive = torch.from_numpy(np.cumsum(dy.float().cpu().numpy(), axis=0, dtype=np.float32)[-1]).to(dtype)
    for ours, theirs, want in ((y, yt, x64 @ w64.T + b64), (x.grad, xt.grad, dy64 @ w64),
                               (w.grad, wt.grad, dy64.T @ x64), (b.grad, db_naive, dy64.sum(0))):
        _budget(ours, theirs, want)  # the error budget, with torch's op as the naive one
    assert y.dtype == dtype and fgt.dispatch_counts["linear -> fusegrad"] == 1


@gpu
@needs_gpu
def test_gpu_adamw_matches_torch_and_runs_on_the_current_stream(routed):
    g = torch.Generator().manual_seed(5)
    p0 = torch.randn(1000, 3, generator=g)
    p, pr = torch.nn.Parameter(p0.cuda()), torch.nn.Parameter(p0.cuda())
    opt, ref = fgt.AdamW([p], lr=1e-2, weight_decay=0.1), torch.optim.AdamW([pr], lr=1e-2, weight_decay=0.1)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for i in range(3):
            grad = torch.randn(1000, 3, generator=g).cuda()
            p.grad, pr.grad = grad.clone(), grad.clone()
            opt.step()
            ref.step()
    torch.cuda.synchronize()
    _close(p, pr, 1e-5, 1e-6)
    with pytest.raises(RuntimeError, match="fusegrad.torch.AdamW: a parameter on cuda:0 cannot be updated.*dtype"):
        q = torch.nn.Parameter(torch.zeros(3, device="cuda", dtype=torch.float64))
        q.grad = torch.ones_like(q)
        fgt.AdamW([q]).step()
