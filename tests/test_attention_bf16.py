"""Attention in mixed precision (``bf16=True``; what ``fusegrad.autocast`` runs): bfloat16 operands of
the Q K^T, P V, dO V^T, P^T dO, dS^T Q and dS K products, float32 sums and softmax statistics.

Judged by the error-budget rule for low precision: against a float64 reference of the exact inputs,
the error of o, lse, dq, dk, dv is at most 2x that of the same computation done plainly in bf16 (float64
math on the bf16-rounded operands of each product: q, k, v, do, P, dS), on shapes that do not divide the tiles (64 x 64 on
the vector paths, 32 x 64 on the portable one), size 1, long sequences, causal or not, every ISA path."""
from __future__ import annotations

import numpy as np
import pytest

import fusegrad
from fusegrad import _C, ops
from fusegrad.nn import functional as F
from fuzz_specs import bf16_round
import reference as ref

# (B, H, Hkv, T, S, D): head sizes on the tile kernels (16, 32, 64, 128) and on the generic
# ones (1, 8, 24), T != S both ways, GQA, B * Hkv >= 16 (the one-task-per-head backward)
CASES = [
    (1, 1, 1, 1, 1, 1),
    (1, 2, 2, 2, 7, 8),
    (2, 4, 2, 7, 2, 24),
    (1, 4, 1, 63, 65, 64),
    (1, 2, 1, 65, 63, 128),
    (1, 3, 3, 100, 130, 32),
    (4, 8, 4, 33, 70, 64),
    (1, 2, 1, 70, 70, 16),
    (1, 2, 2, 33, 257, 24),
    # head sizes 16, 48, 80 (not multiples of 32: half-filled pair vectors on VDPBF16PS), size 1 on
    # the tile kernels (S = 2: with one key dq = dk = 0 exactly, a budget of 0), T > S (causal: the
    # first T - S queries see no key), many small heads with GQA
    (1, 1, 1, 1, 2, 16),
    (1, 2, 1, 45, 31, 48),
    (2, 3, 1, 3, 2, 80),
    (16, 2, 1, 9, 11, 16),
]
IDS = ["B{}H{}Hkv{}T{}S{}D{}".format(*c) for c in CASES]


def make(rng, B, H, Hkv, T, S, D, mag=1.0):
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    return mag * f(B, H, T, D), mag * f(B, Hkv, S, D), f(B, Hkv, S, D), f(B, H, T, D)


def reference(q, k, v, do, causal):
    f64 = lambda x: np.asarray(x, np.float64)
    o, lse = ref.attention_forward(f64(q), f64(k), f64(v), causal)
    dq, dk, dv = ref.attention_backward(f64(do), f64(q), f64(k), f64(v), causal)
    return {"o": o, "lse": lse, "dq": dq, "dk": dk, "dv": dv}


def fp16_round(x):
    """x rounded to the nearest float16 (NumPy's conversion: ties to even), as float64."""
    return np.asarray(x, np.float64).astype(np.float16).astype(np.float64)


def plain_bf16(q, k, v, do, causal, r=bf16_round):
    """The computation done plainly in bf16 (or the 16-bit type that r rounds to: fp16_round for the
    GPU's fp16 kernels), as flash-attention defines it: float64 math in which every operand of a
    product is rounded to that type (q, k, v, do, then P and scale * dS)."""
    q, k, v, do = (r(x) for x in (q, k, v, do))
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    G, scale = H // Hkv, 1.0 / np.sqrt(D)
    p, lse = ref._attention_probs(q, k, causal, scale)
    kk, vv = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    o = np.einsum("bhts,bhsd->bhtd", r(p), vv)
    dp = np.einsum("bhtd,bhsd->bhts", do, vv)
    ds = r(scale * p * (dp - (do * o).sum(axis=-1, keepdims=True)))
    fold = lambda x: x.reshape(B, Hkv, G, *x.shape[2:]).sum(axis=2)
    return {"o": o, "lse": lse, "dq": np.einsum("bhts,bhsd->bhtd", ds, kk),
            "dk": fold(np.einsum("bhts,bhtd->bhsd", ds, q)), "dv": fold(np.einsum("bhts,bhtd->bhsd", r(p), do))}


def ours(q, k, v, do, causal):
    o, lse = ops.attention_forward(q, k, v, causal=causal, bf16=True)
    dq, dk, dv = ops.attention_backward(do, q, k, v, o, lse, causal=causal, bf16=True)
    return {"o": o, "lse": lse, "dq": dq, "dk": dk, "dv": dv}


def maxerr(a, b):
    fin = np.isfinite(b)
    assert np.array_equal(np.isfinite(a), fin)  # -inf lse where a row sees no key, nowhere else
    return np.abs(np.where(fin, a, 0) - np.where(fin, b, 0)).max(initial=0)


def check_budget(q, k, v, do, causal):
    got = ours(q, k, v, do, causal)
    exact = reference(q, k, v, do, causal)
    plain = plain_bf16(q, k, v, do, causal)
    for name in exact:
        assert got[name].dtype == np.float32 and got[name].shape == exact[name].shape, name
        err, budget = maxerr(got[name], exact[name]), maxerr(plain[name], exact[name])
        assert err <= 2 * budget, f"{name}: error {err:.3g} > 2 x {budget:.3g} ({_C.get_isa()})"
    return got


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_error_budget(isa, rng, case, causal):
    check_budget(*make(rng, *case), causal)


def test_error_budget_long_sequence(isa, rng):
    check_budget(*make(rng, 1, 2, 1, 700, 700, 64), True)


def test_error_budget_peaked_softmax(isa, rng):
    # large logits: the probabilities are near 0 or 1, where P's bf16 rounding matters most
    check_budget(*make(rng, 1, 2, 2, 80, 90, 32, mag=2.5), False)


def test_bf16_is_not_float32(isa, rng):
    # the flag changes the computation (by about bf16's rounding), and float32 stays as it was
    q, k, v, do = make(rng, 1, 2, 2, 40, 40, 64)
    o32, _ = ops.attention_forward(q, k, v)
    o16, _ = ops.attention_forward(q, k, v, bf16=True)
    d = np.abs(o16 - o32).max()
    assert 1e-5 < d < 0.05
    np.testing.assert_array_equal(ops.attention_forward(q, k, v, bf16=False)[0], o32)


def test_rounded_inputs_need_no_rounding(isa, rng):
    # inputs that are bf16 values already: only P and dS are rounded, so the result is close to
    # the float32 kernel on the same inputs (within P's rounding, 2^-8 relative)
    q, k, v, do = (bf16_round(x).astype(np.float32) for x in make(rng, 1, 2, 1, 50, 50, 32))
    o32, _ = ops.attention_forward(q, k, v, causal=True)
    o16, _ = ops.attention_forward(q, k, v, causal=True, bf16=True)
    assert np.abs(o16 - o32).max() <= 2 ** -8 * np.abs(v).max()


@pytest.mark.parametrize("D", [24, 64])
def test_isa_paths_agree(rng, D):
    # every path sums the same bf16 products in float32: the avx2 and avx512 tile kernels give the
    # same bits (on an AVX512_BF16 CPU with matmul_bf16's kernel set to 'emulated', which keeps the
    # forward off VDPBF16PS); VDPBF16PS and the portable kernels agree up to the sums' order
    isas = __import__("conftest").ISAS
    q, k, v, do = make(rng, 2, 4, 2, 70, 70, D)
    old, old_kernel = _C.get_isa(), _C.bf16_kernel_setting()
    res = {}
    try:
        for name in isas:
            _C.set_isa(name)
            res[name] = ours(q, k, v, do, True)
        if "avx512" in isas:
            _C.set_bf16_kernel("emulated")
            res["avx512 emulated"] = ours(q, k, v, do, True)
    finally:
        _C.set_isa(old)
        _C.set_bf16_kernel(old_kernel)
    first = res[isas[0]]
    for key in first:
        if "avx2" in res and "avx512" in res:
            np.testing.assert_array_equal(res["avx512 emulated"][key], res["avx2"][key], err_msg=key)
        scale = np.abs(first[key][np.isfinite(first[key])]).max(initial=1)
        for name in res:  # 4 x bf16's unit roundoff of the magnitudes: P is rounded at other tile maxima
            np.testing.assert_allclose(res[name][key], first[key], rtol=0, atol=4 * 2 ** -8 * scale,
                                       err_msg=f"{name} vs {isas[0]} {key}")


@pytest.mark.skipif(not _C.cpu_has_avx512_bf16(), reason="this CPU has no AVX512_BF16")
@pytest.mark.parametrize("case", [(1, 2, 1, 65, 63, 16), (2, 3, 3, 100, 130, 32), (1, 2, 2, 1, 3, 128)],
                         ids=lambda c: "B{}H{}Hkv{}T{}S{}D{}".format(*c))
def test_vdpbf16ps_forward(rng, case):
    # on the avx512 path the forward takes VDPBF16PS (other sums than the tile kernels: not the
    # same bits), within the error budget; 'emulated' turns it off
    old, old_kernel = _C.get_isa(), _C.bf16_kernel_setting()
    q, k, v, do = make(rng, *case)
    try:
        _C.set_isa("avx512")
        check_budget(q, k, v, do, True)
        o1, l1 = ops.attention_forward(q, k, v, causal=False, bf16=True)
        _C.set_bf16_kernel("emulated")
        o2, l2 = ops.attention_forward(q, k, v, causal=False, bf16=True)
    finally:
        _C.set_isa(old)
        _C.set_bf16_kernel(old_kernel)
    assert not np.array_equal(o1, o2)
    np.testing.assert_allclose(o1, o2, rtol=0, atol=4 * 2 ** -8 * np.abs(o2).max())


@pytest.mark.skipif(not _C.cpu_has_avx512_bf16(), reason="this CPU has no AVX512_BF16")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", [(1, 2, 1, 65, 63, 16), (2, 3, 3, 100, 97, 32), (1, 2, 1, 130, 67, 48),
                                  (1, 1, 1, 1, 2, 16), (1, 2, 2, 1, 3, 128), (16, 2, 1, 33, 31, 80)],
                         ids=lambda c: "B{}H{}Hkv{}T{}S{}D{}".format(*c))
def test_vdpbf16ps_backward(rng, case, causal):
    # the backward on VDPBF16PS (dq, dk, dv; other sums than the emulated kernels, so other bits) is
    # within the error budget and close to the emulated one, which 'emulated' selects
    old, old_kernel = _C.get_isa(), _C.bf16_kernel_setting()
    q, k, v, do = make(rng, *case)
    try:
        _C.set_isa("avx512")
        got = check_budget(q, k, v, do, causal)
        _C.set_bf16_kernel("emulated")
        emu = ours(q, k, v, do, causal)
    finally:
        _C.set_isa(old)
        _C.set_bf16_kernel(old_kernel)
    if min(case[3], case[4]) > 16:  # (sums of a few products come out the same in any order)
        assert any(not np.array_equal(got[n], emu[n]) for n in ("dq", "dk", "dv"))
    for n in ("dq", "dk", "dv"):  # 4 x bf16's unit roundoff of the magnitudes: P and dS rounded from other sums
        np.testing.assert_allclose(got[n], emu[n], rtol=0, atol=4 * 2 ** -8 * np.abs(emu[n]).max(initial=1), err_msg=n)


@pytest.mark.skipif(not _C.cpu_has_avx512_bf16(), reason="this CPU has no AVX512_BF16")
@pytest.mark.parametrize("causal", [False, True])
def test_vdpbf16ps_backward_schedules_agree(rng, causal):
    # 16 (b, kv head) groups take the one-task-per-group schedule, one batch element the per-tile
    # one: both sum every output in the same order, so batch element b gives the same bits either way
    q, k, v, do = make(rng, 16, 2, 1, 70, 90, 32)
    old = _C.get_isa()
    try:
        _C.set_isa("avx512")
        whole = ours(q, k, v, do, causal)
        for b in (0, 7, 15):
            one = ours(*(np.ascontiguousarray(x[b:b + 1]) for x in (q, k, v, do)), causal)
            for n in one:
                np.testing.assert_array_equal(one[n], whole[n][b:b + 1], err_msg=f"{n} b={b}")
    finally:
        _C.set_isa(old)


@pytest.mark.parametrize("shape", [(1, 4, 2, 150, 150, 64), (4, 8, 4, 70, 70, 32), (1, 2, 1, 90, 90, 24),
                                   (1, 3, 1, 77, 101, 48)])
def test_threads_bitwise_identical(isa, threads, rng, shape):
    q, k, v, do = make(rng, *shape)
    res = []
    for n in (1, 2, 3):
        threads(n)
        res.append(ours(q, k, v, do, True))
    for r in res[1:]:
        for key in r:
            np.testing.assert_array_equal(r[key], res[0][key], err_msg=key)


@pytest.mark.parametrize("D", [24, 48, 64])
def test_qkv_equals_split_heads_bitwise(isa, rng, D):
    B, H, Hkv, T = 2, 4, 2, 67
    qkv = rng.standard_normal((B, T, (H + 2 * Hkv) * D)).astype(np.float32)
    do = rng.standard_normal((B, T, H * D)).astype(np.float32)
    x = qkv.reshape(B, T, H + 2 * Hkv, D).transpose(0, 2, 1, 3)
    q, k, v = (np.ascontiguousarray(a) for a in (x[:, :H], x[:, H:H + Hkv], x[:, H + Hkv:]))
    heads = lambda a: np.ascontiguousarray(a.reshape(B, T, H, D).transpose(0, 2, 1, 3))
    o, lse = ops.attention_qkv_forward(qkv, H, Hkv, causal=True, bf16=True)
    dqkv = ops.attention_qkv_backward(do, qkv, o, lse, H, Hkv, causal=True, bf16=True)
    o2, lse2 = ops.attention_forward(q, k, v, causal=True, bf16=True)
    np.testing.assert_array_equal(heads(o), o2)
    np.testing.assert_array_equal(lse, lse2)
    dq, dk, dv = ops.attention_backward(heads(do), q, k, v, o2, lse2, causal=True, bf16=True)
    d = dqkv.reshape(B, T, H + 2 * Hkv, D).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(d[:, :H], dq)
    np.testing.assert_array_equal(d[:, H:H + Hkv], dk)
    np.testing.assert_array_equal(d[:, H + Hkv:], dv)


def test_bad_input(rng):
    q = np.ones((1, 1, 2, 4))
    with pytest.raises(TypeError, match="attention_forward: bf16=True needs float32 q"):
        ops.attention_forward(q, q, q, bf16=True)
    with pytest.raises(TypeError, match="attention_backward: bf16=True needs float32 q"):
        ops.attention_backward(q, q, q, q, q, np.ones((1, 1, 2)), bf16=True)
    with pytest.raises(TypeError, match="attention_qkv_forward: bf16=True needs float32 qkv"):
        ops.attention_qkv_forward(np.ones((1, 2, 12)), 1, bf16=True)
    with pytest.raises(TypeError, match="attention_qkv_backward: bf16=True needs float32 qkv"):
        ops.attention_qkv_backward(np.ones((1, 2, 4)), np.ones((1, 2, 12)), np.ones((1, 2, 4)), np.ones((1, 1, 2)),
                                   1, bf16=True)


def test_autocast_runs_bf16_attention(rng):
    # F.scaled_dot_product_attention and GPT's packed attention take the bf16 kernel under
    # fusegrad.autocast, forward and backward, and the float32 one outside it
    q, k, v, do = make(rng, 1, 2, 2, 20, 20, 16)
    want_o, want_lse = ops.attention_forward(q, k, v, causal=True, bf16=True)
    want = ops.attention_backward(do, q, k, v, want_o, want_lse, causal=True, bf16=True)
    ts = [fusegrad.Tensor(a, requires_grad=True) for a in (q, k, v)]
    with fusegrad.autocast("bfloat16"):
        out = F.scaled_dot_product_attention(*ts, is_causal=True)
    out.backward(fusegrad.Tensor(do))
    np.testing.assert_array_equal(out.data, want_o)
    for t, w in zip(ts, want):
        np.testing.assert_array_equal(t.grad.data if hasattr(t.grad, "data") else t.grad, w)
    np.testing.assert_array_equal(F.scaled_dot_product_attention(*ts, is_causal=True).data,
                                  ops.attention_forward(q, k, v, causal=True)[0])

    from fusegrad.models.gpt import _CausalSelfAttention
    H, D, T = 2, 16, 20
    qkv = rng.standard_normal((1, T, 3 * H * D)).astype(np.float32)
    x = fusegrad.Tensor(qkv, requires_grad=True)
    with fusegrad.autocast("bfloat16"):
        y = _CausalSelfAttention.apply(x, H=H, Hkv=H)
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(fusegrad.Tensor(g))
    o, lse = ops.attention_qkv_forward(qkv, H, H, causal=True, bf16=True)
    np.testing.assert_array_equal(y.data, o)
    gx = x.grad.data if hasattr(x.grad, "data") else x.grad
    np.testing.assert_array_equal(gx, ops.attention_qkv_backward(g, qkv, o, lse, H, H, causal=True, bf16=True))
