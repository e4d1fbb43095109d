"""The CUDA path (fusegrad._cuda, fusegrad.cuda).

Here without a GPU: the module must be built wherever nvcc is (so CI compiles every kernel), it
must import without a driver and say why it cannot run, and the kernels' per-element math
(csrc/cuda/math.h, the same source the kernels use) is checked on the host against NumPy float64.
With a GPU (marker ``cuda``; tools/gpu_check.sh runs them): every op against the CPU kernels and
the float64 references, on odd shapes, size 1, and bad input."""
from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest

import fusegrad
from fusegrad import cuda, ops

built = cuda._cuda is not None
needs_module = pytest.mark.skipif(not built, reason="fusegrad._cuda is not built (no CUDA compiler at build time)")


def test_module_is_built_where_nvcc_is():
    if os.environ.get("FUSEGRAD_CUDA", "auto") == "off":
        pytest.skip("FUSEGRAD_CUDA=off: the CUDA module was turned off for this build")
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc on this machine")
    assert built, f"nvcc is on PATH but fusegrad._cuda was not built: {cuda._import_error}"


def test_import_without_gpu_reports_why():
    # importing never fails; availability comes with a reason where it is False
    assert isinstance(cuda.is_available(), bool)
    assert (cuda.unavailable_reason() == "") == cuda.is_available()
    assert "cuda" in fusegrad._config.config()


def _erfc64(x):
    return np.array([math.erfc(v) for v in x.ravel()]).reshape(x.shape)


def _sweep():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-12, 12, 4001), rng.standard_normal(2000) * 4,
                        [0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0, 1e4, -1e4]])
    return x.astype(np.float32)


def _check(got, want, x, rtol, atol):
    bad = ~np.isclose(got.astype(np.float64), want, rtol=rtol, atol=atol)
    assert not bad.any(), f"x={x[bad][:5]} got={got[bad][:5]} want={want[bad][:5]}"


@needs_module
def test_host_math_gelu_erf_and_grad():
    x = _sweep()
    xd = x.astype(np.float64)
    phi = 0.5 * _erfc64(-xd / math.sqrt(2))
    eps = np.finfo(np.float32).eps
    # float32 erfc and exp: a few ulp, plus the rounding of the argument x / sqrt 2 (or x^2 / 2),
    # which erfc and exp amplify by their condition number ~ x^2 in the tails: 8 eps (1 + x^2)
    cond = 8 * eps * (1 + xd * xd)
    _check(cuda._cuda._host_math(x, "gelu_erf"), xd * phi, x, cond, 1e-37)
    dens = np.exp(-0.5 * xd * xd) / math.sqrt(2 * math.pi)
    _check(cuda._cuda._host_math(x, "gelu_erf_grad"), phi + xd * dens, x, cond, 4 * eps * np.abs(xd * dens).max())
    special = np.array([np.inf, -np.inf, np.nan], np.float32)  # the CPU kernels' answers, NaN where inf * 0
    np.testing.assert_array_equal(cuda._cuda._host_math(special, "gelu_erf"), ops.gelu_forward(special))
    np.testing.assert_array_equal(cuda._cuda._host_math(special, "gelu_erf_grad"),
                                  ops.gelu_backward(np.ones(3, np.float32), special))


@needs_module
@pytest.mark.parametrize("fn, approx", [("gelu_tanh", "tanh"), ("gelu_erf", "none")])
def test_host_math_matches_cpu_kernels(fn, approx):
    # the CUDA per-element math and the CPU kernels compute the same function to a few ulp
    x = _sweep()
    eps = np.finfo(np.float32).eps
    cond = 8 * eps * (1 + x.astype(np.float64) ** 2)  # each side's argument rounding, amplified in the tails
    _check(cuda._cuda._host_math(x, fn), ops.gelu_forward(x, approx).astype(np.float64), x, 2 * cond, 1e-37)
    g = np.ones_like(x)
    want = ops.gelu_backward(g, x, approx).astype(np.float64)
    _check(cuda._cuda._host_math(x, fn + "_grad"), want, x, 2 * cond, 8 * eps)


@needs_module
def test_host_math_gelu_tanh_against_float64():
    x = _sweep()
    xd = x.astype(np.float64)
    u = math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)
    with np.errstate(over="ignore"):
        s = 1 / (1 + np.exp(-2 * u))
    eps = np.finfo(np.float32).eps
    _check(cuda._cuda._host_math(x, "gelu_tanh"), xd * s, x, 8 * eps * (1 + np.abs(u)), 1e-37)  # exp(-2u): cond 2|u|
    np.testing.assert_array_equal(cuda._cuda._host_math(np.array([-np.inf], np.float32), "relu"), [0.0])
    assert np.isnan(cuda._cuda._host_math(np.array([np.nan], np.float32), "relu")[0])


@needs_module
@pytest.mark.parametrize("beta1", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("decoupled", [True, False])
def test_host_adam_matches_cpu_kernel(beta1, decoupled):
    rng = np.random.default_rng(1)
    n = 1001
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    m, v = rng.standard_normal(n).astype(np.float32), rng.random(n).astype(np.float32)
    a = [x.copy() for x in (p, m, v)]
    b = [x.copy() for x in (p, m, v)]
    fusegrad._C.set_isa("portable")
    try:
        step = ops.adamw_step if decoupled else ops.adam_step
        step(b[0], g, b[1], b[2], 3, 1e-2, beta1, 0.99, 1e-8, 0.1)
    finally:
        fusegrad._C.set_isa(fusegrad._C.best_isa())
    cuda._cuda._host_adam(a[0], a[1], a[2], g, 3, 1e-2, beta1, 0.99, 1e-8, 0.1, decoupled)
    for x, y in zip(a, b):  # the same formulas in the same order: equal up to FMA contraction
        np.testing.assert_allclose(x, y, rtol=4 * np.finfo(np.float32).eps, atol=1e-7)


@needs_module
def test_host_pow2_scale_against_numpy():
    # fp16 attention's dO scale (math.h's pow2_scale): the power of two 2^s that puts amax into
    # [1, 2), s clamped to [-126, 126]; 1 for 0, inf and NaN
    rng = np.random.default_rng(4)
    x = np.concatenate([np.ldexp(rng.uniform(0.5, 1, 2000), rng.integers(-149, 129, 2000)),
                        [0.0, 1.0, 2.0, 0.5, 65504.0, 2.0 ** -149, 2.0 ** -126, np.finfo(np.float32).max,
                         np.inf, np.nan]]).astype(np.float32)
    got = cuda._cuda._host_math(x, "pow2_scale")
    _, e = np.frexp(x.astype(np.float64))
    want = np.where(np.isfinite(x) & (x > 0), np.ldexp(1.0, np.clip(1 - e, -126, 126)), 1.0)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    inside = (x > 2.0 ** -126) & (x < 2.0 ** 127)  # no clamp: amax * scale is in [1, 2)
    y = x[inside].astype(np.float64) * got[inside]
    assert np.all((y >= 1) & (y < 2))


@needs_module
def test_attention_kernel_choice_by_precision_and_head_size():
    # fusegrad.cuda's choice of launchers (no GPU needed): float32, bf16 / fp16 on the tensor-core
    # kernels at D 64 and 128, bf16 elsewhere on the float32 kernels, fp16 elsewhere an error
    k = cuda._cuda
    for D in (64, 128):
        assert cuda._attn_kernels(False, False, D, "f")[:2] == (k.attention_forward, k.attention_backward)
        assert cuda._attn_kernels(True, False, D, "f")[:2] == (k.attention_forward_tc, k.attention_backward_tc)
        assert cuda._attn_kernels(False, True, D, "f")[:2] == (k.attention_forward_tc_fp16,
                                                              k.attention_backward_tc_fp16)
    assert cuda._attn_kernels(True, False, 24, "f")[:2] == (k.attention_forward, k.attention_backward)
    with pytest.raises(ValueError, match="attention_forward: fp16=True needs head dimension D 64 or 128.*got 24"):
        cuda._attn_kernels(False, True, 24, "attention_forward")
    with pytest.raises(ValueError, match="attention_backward: bf16 and fp16 cannot both be True"):
        cuda._attn_kernels(True, True, 64, "attention_backward")


@pytest.mark.parametrize("fn", ["attention_forward", "attention_backward", "attention_qkv_forward",
                                "attention_qkv_backward"])
def test_fp16_attention_on_cpu_arrays_is_a_clear_error(fn):
    # fp16=True runs on CUDA arrays only; fp16=False is accepted (and ignored) on CPU arrays
    rng = np.random.default_rng(6)
    q = rng.standard_normal((1, 2, 5, 8)).astype(np.float32)
    o, lse = ops.attention_forward(q, q, q)
    qkv = rng.standard_normal((1, 5, 3 * 16)).astype(np.float32)
    o2, lse2 = ops.attention_qkv_forward(qkv, 2)
    args = {"attention_forward": (q, q, q), "attention_backward": (q, q, q, q, o, lse),
            "attention_qkv_forward": (qkv, 2), "attention_qkv_backward": (o2, qkv, o2, lse2, 2)}[fn]
    f = getattr(ops, fn)
    with pytest.raises(TypeError, match=f"{fn}: fp16=True runs only on CUDA arrays"):
        f(*args, fp16=True)
    want, got = f(*args), f(*args, fp16=False)
    for a, b in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------
# On a GPU (tools/gpu_check.sh): every op against the CPU kernels, which are tested against float64.

gpu = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(not cuda.is_available(), reason=f"no GPU: {cuda.unavailable_reason()}")


def _cp():
    import cupy
    return cupy


def _close(got, want, rtol=2e-5, atol=2e-6):
    got = _cp().asnumpy(got) if not isinstance(got, (float, np.ndarray)) else got
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=rtol, atol=atol)


SHAPES = [(1, 1), (3, 5), (37, 129), (257, 1000)]


@gpu
@needs_gpu
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "gelu"])
def test_gpu_activations(name, shape):
    cp = _cp()
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32) * 3
    dy = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    approx = ["none", "tanh"] if name == "gelu" else [None]
    for a in approx:
        kw = {} if a is None else {"approximate": a}
        y = getattr(ops, f"{name}_forward")(cp.asarray(x), **kw)
        _close(y, getattr(ops, f"{name}_forward")(x, **kw))
        second = x if name in ("relu", "gelu") else getattr(ops, f"{name}_forward")(x)
        dx = getattr(ops, f"{name}_backward")(cp.asarray(dy), cp.asarray(second), **kw)
        _close(dx, getattr(ops, f"{name}_backward")(dy, second, **kw))


@gpu
@needs_gpu
@pytest.mark.parametrize("shape", SHAPES + [(5, 4099)])
def test_gpu_layernorm(shape):
    cp = _cp()
    rng = np.random.default_rng(4)
    x, dy = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    w, b = rng.standard_normal(shape[-1]).astype(np.float32), rng.standard_normal(shape[-1]).astype(np.float32)
    for ww, bb in ((w, b), (None, None)):
        want = ops.layernorm_forward(x, ww, bb)
        got = ops.layernorm_forward(cp.asarray(x), None if ww is None else cp.asarray(ww),
                                    None if bb is None else cp.asarray(bb))
        for g_, w_ in zip(got, want):
            _close(g_, w_, 1e-4, 1e-5)
        wantb = ops.layernorm_backward(dy, x, ww, want[1], want[2])
        gotb = ops.layernorm_backward(cp.asarray(dy), cp.asarray(x), None if ww is None else cp.asarray(ww), got[1], got[2])
        for g_, w_ in zip(gotb, wantb):
            _close(g_, w_, 1e-4, 1e-4 * math.sqrt(shape[0]))


@gpu
@needs_gpu
@pytest.mark.parametrize("shape", SHAPES + [(4, 50257)])
def test_gpu_softmax_and_cross_entropy(shape):
    cp = _cp()
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal(shape).astype(np.float32) * 4, rng.standard_normal(shape).astype(np.float32)
    for fwd, bwd in (("softmax_forward", "softmax_backward"), ("log_softmax_forward", "log_softmax_backward")):
        y = getattr(ops, fwd)(x)
        _close(getattr(ops, fwd)(cp.asarray(x)), y, 1e-5, 1e-6)
        _close(getattr(ops, bwd)(cp.asarray(dy), cp.asarray(y)), getattr(ops, bwd)(dy, y), 1e-4, 1e-5)
    t = rng.integers(0, shape[1], shape[0])
    t[0] = -100
    for dt in (np.int32, np.int64):
        loss, lse = ops.cross_entropy_forward(x, t.astype(dt))
        gl, glse = ops.cross_entropy_forward(cp.asarray(x), cp.asarray(t.astype(dt)))
        if shape[0] > 1:
            _close(gl, loss, 1e-5, 1e-6)
        _close(glse, lse, 1e-5, 1e-5)
        _close(ops.cross_entropy_backward(cp.asarray(x), cp.asarray(t.astype(dt)), glse, 0.7),
               ops.cross_entropy_backward(x, t.astype(dt), lse, 0.7), 1e-4, 1e-7)
    with pytest.raises(ValueError, match="out of range"):
        ops.cross_entropy_forward(cp.asarray(x), cp.asarray(np.full(shape[0], shape[1])))


@gpu
@needs_gpu
@pytest.mark.parametrize("N, V, C", [(1, 1, 1), (37, 11, 129), (1000, 50, 768)])
def test_gpu_embedding(N, V, C):
    cp = _cp()
    rng = np.random.default_rng(6)
    ids, table = rng.integers(0, V, N), rng.standard_normal((V, C)).astype(np.float32)
    dout = rng.standard_normal((N, C)).astype(np.float32)
    _close(ops.embedding_forward(cp.asarray(ids), cp.asarray(table)), ops.embedding_forward(ids, table), 0, 0)
    a = ops.embedding_backward(cp.asarray(dout), cp.asarray(ids), V)
    np.testing.assert_array_equal(cp.asnumpy(a), ops.embedding_backward(dout, ids, V))  # same order, same bits


@gpu
@needs_gpu
@pytest.mark.parametrize("n", [1, 1000, 65537 * 3])
def test_gpu_optimizers_and_sum_squares(n):
    cp = _cp()
    rng = np.random.default_rng(7)
    p, g, m, v = (rng.standard_normal(n).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    for step in ("adamw_step", "adam_step"):
        cpu = [a.copy() for a in (p, m, v)]
        dev = [cp.asarray(a) for a in (p, m, v)]
        getattr(ops, step)(cpu[0], g, cpu[1], cpu[2], 2, 1e-2, 0.9, 0.99, 1e-8, 0.1)
        getattr(ops, step)(dev[0], cp.asarray(g), dev[1], dev[2], 2, 1e-2, 0.9, 0.99, 1e-8, 0.1)
        for a, b in zip(dev, cpu):
            _close(a, b, 1e-5, 1e-6)
    cpu, dev, buf, dbuf = p.copy(), cp.asarray(p), m.copy(), cp.asarray(m)
    ops.sgd_step(cpu, g, buf, 0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    ops.sgd_step(dev, cp.asarray(g), dbuf, 0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    _close(dev, cpu, 1e-6, 1e-6)
    _close(dbuf, buf, 1e-6, 1e-6)
    assert math.isclose(ops.sum_squares(cp.asarray(p)), ops.sum_squares(p), rel_tol=1e-12)


@gpu
@needs_gpu
@pytest.mark.parametrize("B, H, Hkv, T, S, D", [(1, 1, 1, 1, 1, 1), (2, 4, 2, 37, 37, 64), (1, 3, 1, 19, 45, 100),
                                                 (1, 2, 2, 130, 130, 256)])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_attention(B, H, Hkv, T, S, D, causal):
    cp = _cp()
    rng = np.random.default_rng(8)
    q = rng.standard_normal((B, H, T, D)).astype(np.float32)
    k, v = (rng.standard_normal((B, Hkv, S, D)).astype(np.float32) for _ in range(2))
    do = rng.standard_normal((B, H, T, D)).astype(np.float32)
    o, lse = ops.attention_forward(q, k, v, causal=causal)
    go, glse = ops.attention_forward(*map(cp.asarray, (q, k, v)), causal=causal)
    _close(go, o, 1e-4, 1e-5)
    _close(cp.where(cp.isinf(glse), 0, glse), np.where(np.isinf(lse), 0, lse), 1e-5, 1e-5)
    want = ops.attention_backward(do, q, k, v, o, lse, causal=causal)
    got = ops.attention_backward(*map(cp.asarray, (do, q, k, v)), go, glse, causal=causal)
    for a, b in zip(got, want):
        _close(a, b, 1e-3, 1e-4)
    if T == S:
        qkv = np.concatenate([x.transpose(0, 2, 1, 3).reshape(B, T, -1) for x in (q, k, v)], axis=-1)
        o2, l2 = ops.attention_qkv_forward(qkv, H, Hkv, causal=causal)
        go2, gl2 = ops.attention_qkv_forward(cp.asarray(qkv), H, Hkv, causal=causal)
        _close(go2, o2, 1e-4, 1e-5)
        d2 = ops.attention_qkv_backward(do.transpose(0, 2, 1, 3).reshape(B, T, -1), qkv, o2, l2, H, Hkv, causal=causal)
        gd2 = ops.attention_qkv_backward(cp.asarray(do.transpose(0, 2, 1, 3).reshape(B, T, -1)), cp.asarray(qkv), go2,
                                         gl2, H, Hkv, causal=causal)
        _close(gd2, d2, 1e-3, 1e-4)


@gpu
@needs_gpu
@pytest.mark.parametrize("case", [(1, 1, 1, 1, 1, 64), (1, 4, 1, 63, 65, 64), (1, 2, 1, 65, 63, 128),
                                  (4, 8, 4, 33, 70, 64), (2, 2, 2, 300, 200, 128), (1, 2, 1, 700, 700, 64),
                                  (1, 2, 2, 33, 257, 24)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("prec", ["bf16", "fp16"])
def test_gpu_attention_16bit(case, causal, prec):
    # bf16=True (autocast) / fp16=True: the tensor-core kernels (head sizes 64, 128; other head sizes
    # take the float32 kernels on bf16-rounded operands, and are an error for fp16), judged as the
    # CPU kernels are: error against float64 at most 2x that of the same computation done plainly in
    # that type (test_attention_bf16's definitions, with fp16's rounding for fp16)
    from test_attention_bf16 import fp16_round, make, maxerr, plain_bf16, reference
    from fuzz_specs import bf16_round
    cp = _cp()
    flag = {prec: True}
    q, k, v, do = make(np.random.default_rng(3), *case)
    B, H, Hkv, T, S, D = case
    if prec == "fp16" and D not in (64, 128):
        with pytest.raises(ValueError, match=f"attention_forward: fp16=True needs head dimension D 64 or 128, .*{D}"):
            ops.attention_forward(*map(cp.asarray, (q, k, v)), causal=causal, **flag)
        return
    go, glse = ops.attention_forward(*map(cp.asarray, (q, k, v)), causal=causal, **flag)
    gd = ops.attention_backward(*map(cp.asarray, (do, q, k, v)), go, glse, causal=causal, **flag)
    got = {n: cp.asnumpy(a) for n, a in zip(("o", "lse", "dq", "dk", "dv"), (go, glse, *gd))}
    exact = reference(q, k, v, do, causal)
    plain = plain_bf16(q, k, v, do, causal, r=fp16_round if prec == "fp16" else bf16_round)
    for name in exact:
        err, budget = maxerr(got[name], exact[name]), maxerr(plain[name], exact[name])
        if S == 1 and name in ("dq", "dk"):  # softmax over one key: dq = dk = 0; the budget's floor models
            # float32's rounding of the D-term sums dP and delta that cancel there (float64 in the plain one)
            budget = max(budget, 2 * D * 2.0 ** -24 * np.abs(do).max() * np.abs(v).max() / math.sqrt(D)
                         * max(np.abs(q).max(), np.abs(k).max()))
        assert err <= 2 * budget, f"{prec} {name}: error {err:.3g} > 2 x {budget:.3g}"
    if T == S:  # the packed entry points take the same kernels
        qkv = np.concatenate([x.transpose(0, 2, 1, 3).reshape(B, T, -1) for x in (q, k, v)], axis=-1)
        o2, l2 = ops.attention_qkv_forward(cp.asarray(qkv), H, Hkv, causal=causal, **flag)
        _close(o2, got["o"].transpose(0, 2, 1, 3).reshape(B, T, -1), 0, 0)
        d2 = ops.attention_qkv_backward(cp.asarray(do.transpose(0, 2, 1, 3).reshape(B, T, -1)), cp.asarray(qkv), o2,
                                        l2, H, Hkv, causal=causal, **flag)
        _close(d2[..., :H * D], got["dq"].transpose(0, 2, 1, 3).reshape(B, T, -1), 0, 0)


@gpu
@needs_gpu
@pytest.mark.parametrize("D", [64, 128])
def test_gpu_attention_fp16_scales_do(D):
    # fp16 scales dO by a power of two into [1, 2) before rounding it and the gradients back: dO
    # times 2^-30 (far below fp16's range) or 2^20 (far above it) gives the gradients times the
    # same power of two, bit for bit
    from test_attention_bf16 import make
    cp = _cp()
    q, k, v, do = map(cp.asarray, make(np.random.default_rng(5), 2, 4, 2, 77, 90, D))
    o, lse = ops.attention_forward(q, k, v, causal=True, fp16=True)
    want = ops.attention_backward(do, q, k, v, o, lse, causal=True, fp16=True)
    for e in (-30, 20):
        got = ops.attention_backward(do * 2.0 ** e, q, k, v, o, lse, causal=True, fp16=True)
        for g, w in zip(got, want):
            assert bool(cp.all(cp.isfinite(g)))
            _close(g, w * 2.0 ** e, 0, 0)


@gpu
@needs_gpu
def test_gpu_attention_16bit_bad_input():
    cp = _cp()
    q = cp.ones((1, 2, 5, 64), cp.float32)
    with pytest.raises(ValueError, match="attention_backward: bf16 and fp16 cannot both be True"):
        ops.attention_backward(q, q, q, q, q, cp.zeros((1, 2, 5), cp.float32), bf16=True, fp16=True)
    qkv = cp.ones((1, 5, 3 * 2 * 32), cp.float32)
    with pytest.raises(ValueError, match="attention_qkv_forward: fp16=True needs head dimension D 64 or 128"):
        ops.attention_qkv_forward(qkv, 2, fp16=True)


@gpu
@needs_gpu
@pytest.mark.parametrize("N, K, O", [(1, 1, 1), (37, 129, 65), (1024, 768, 3072)])
def test_gpu_linear_and_matmul(N, K, O):
    cp = _cp()
    rng = np.random.default_rng(9)
    x, w = rng.standard_normal((N, K)).astype(np.float32), rng.standard_normal((O, K)).astype(np.float32)
    b, r = rng.standard_normal(O).astype(np.float32), rng.standard_normal((N, O)).astype(np.float32)
    dy = rng.standard_normal((N, O)).astype(np.float32)
    tol = dict(rtol=1e-4, atol=1e-4 * math.sqrt(K))  # cuBLAS may use TF32 only if asked; CuPy does not
    _close(ops.linear_forward(*map(cp.asarray, (x, w, b, r))), ops.linear_forward(x, w, b, r), **tol)
    for a, bb in zip(ops.linear_backward(*map(cp.asarray, (dy, x, w))), ops.linear_backward(dy, x, w)):
        _close(a, bb, rtol=1e-4, atol=1e-4 * math.sqrt(max(N, O)))
    _close(ops.matmul(cp.asarray(x), cp.asarray(w), trans_b=True), ops.matmul(x, w, trans_b=True), **tol)


@gpu
@needs_gpu
def test_gpu_bad_input_is_a_clear_error():
    cp = _cp()
    with pytest.raises(TypeError, match="relu_forward: x must have dtype float32"):
        ops.relu_forward(cp.zeros(3, dtype=cp.float64))
    with pytest.raises(ValueError, match="all arrays must be on one device"):
        ops.relu_backward(cp.zeros(3, dtype=cp.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="layernorm_forward: weight must have shape"):
        ops.layernorm_forward(cp.zeros((2, 3), cp.float32), cp.zeros(4, cp.float32))
