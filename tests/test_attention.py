"""Flash-style attention against the float64 reference: forward, lse, all three gradients,
finite differences, masks, GQA/MQA, cross-attention, thread determinism, bad inputs."""
from __future__ import annotations

import numpy as np
import pytest

from fusegrad import _C, ops
from reference import numerical_grad
import reference as ref

# (B, H, Hkv, T, S, D): a sweep over T, S in {1, 2, 7, 63, 64, 65, 257}, D in {1, 8, 24, 64,
# 80, 128}, Hkv in {1, 2, H}, T == S and T != S both ways (not the full product, to stay fast).
CASES = [
    (1, 1, 1, 1, 1, 1),
    (1, 2, 2, 2, 7, 8),
    (2, 4, 2, 7, 2, 24),
    (1, 4, 1, 63, 65, 64),
    (1, 2, 2, 64, 64, 80),
    (1, 2, 1, 65, 63, 128),
    (1, 4, 2, 257, 33, 24),
    (1, 2, 2, 33, 257, 64),
    (1, 1, 1, 127, 127, 8),
    (1, 2, 1, 1, 257, 128),
    (1, 3, 3, 100, 130, 32),  # the D = 32 fast path
    # B * Hkv >= 16: the AVX2 backward's one-task-per-kv-head schedule (fewer heads: key tiles)
    (4, 8, 4, 33, 70, 64),
    (2, 8, 8, 65, 65, 32),
    # other multiples of 16 run the AVX2 tile kernels with D read at run time
    (2, 8, 8, 40, 50, 48),
    (1, 2, 1, 70, 70, 16),
]


def make(rng, B, H, Hkv, T, S, D, dtype, mag=1.0):
    q = (mag * rng.standard_normal((B, H, T, D))).astype(dtype)
    k = (mag * rng.standard_normal((B, Hkv, S, D))).astype(dtype)
    v = rng.standard_normal((B, Hkv, S, D)).astype(dtype)
    do = rng.standard_normal((B, H, T, D)).astype(dtype)
    return q, k, v, do


def check_against_reference(q, k, v, do, causal, scale, rtol, atol):
    f64 = lambda x: x.astype(np.float64)
    o, lse = ops.attention_forward(q, k, v, causal=causal, scale=scale)
    ro, rl = ref.attention_forward(f64(q), f64(k), f64(v), causal, scale)
    assert o.dtype == q.dtype and lse.dtype == q.dtype and lse.shape == q.shape[:3]
    np.testing.assert_allclose(o, ro, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(rl))
    fin = np.isfinite(rl)
    np.testing.assert_allclose(lse[fin], rl[fin], rtol=rtol, atol=atol)
    dq, dk, dv = ops.attention_backward(do, q, k, v, o, lse, causal=causal, scale=scale)
    rdq, rdk, rdv = ref.attention_backward(f64(do), f64(q), f64(k), f64(v), causal, scale)
    for got, want, name in ((dq, rdq, "dq"), (dk, rdk, "dk"), (dv, rdv, "dv")):
        assert got.dtype == q.dtype and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)
    return o, lse


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}H{}Hkv{}T{}S{}D{}".format(*c))
def test_attention_float32_matches_reference(isa, rng, case, causal):
    q, k, v, do = make(rng, *case, np.float32)
    check_against_reference(q, k, v, do, causal, None, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", CASES[::3], ids=lambda c: "B{}H{}Hkv{}T{}S{}D{}".format(*c))
def test_attention_float64_matches_reference(rng, case, causal):
    q, k, v, do = make(rng, *case, np.float64)
    check_against_reference(q, k, v, do, causal, 0.37, rtol=1e-10, atol=1e-12)


def test_attention_large_case(isa, rng):
    q, k, v, do = make(rng, 1, 2, 1, 1000, 1000, 64, np.float32)
    check_against_reference(q, k, v, do, True, None, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("case", [(16, 2, 1, 300, 300, 128), (4, 4, 4, 150, 20, 32)],
                         ids=["rows_not_copied", "query_tiles_without_keys"])
def test_attention_many_heads_schedule_edges(isa, rng, case):
    # B * Hkv >= 16 (the AVX2 backward's one task per kv head): a group too long for the
    # contiguous q/do scratch (G T D > 2^16 floats), and T - S >= 64 (whole query tiles see no key)
    q, k, v, do = make(rng, *case, np.float32)
    o, _ = check_against_reference(q, k, v, do, True, None, rtol=2e-4, atol=2e-5)
    if case[3] - case[4] >= 64:
        assert np.all(o[:, :, : case[3] - case[4]] == 0)


def test_attention_matches_naive_kernel(rng):
    for causal in (False, True):
        q, k, v, _ = make(rng, 2, 4, 2, 37, 70, 24, np.float64)
        o, lse = ops.attention_forward(q, k, v, causal=causal, scale=0.2)
        no, nl = _C._attention_naive_forward(q, k, v, causal, 0.2)
        np.testing.assert_allclose(o, no, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(lse, nl, rtol=1e-12, atol=1e-13)


def test_attention_fully_masked_rows(isa, rng):
    # causal with S < T: the first T - S queries see no key -> o = 0, lse = -inf, zero grads
    for dtype, rtol, atol in ((np.float32, 2e-4, 2e-5), (np.float64, 1e-10, 1e-12)):
        q, k, v, do = make(rng, 1, 2, 1, 70, 5, 16, dtype)
        o, lse = check_against_reference(q, k, v, do, True, None, rtol, atol)
        assert np.all(o[:, :, :65] == 0) and np.all(np.isneginf(lse[:, :, :65]))
        assert np.all(np.isfinite(lse[:, :, 65:]))
        dq, _, _ = ops.attention_backward(do, q, k, v, o, lse, causal=True)
        assert np.all(dq[:, :, :65] == 0) and np.all(np.isfinite(dq))


def test_attention_large_logits(isa, rng):
    # logits of magnitude ~1e4: the online softmax must not overflow
    q, k, v, do = make(rng, 1, 2, 2, 65, 130, 32, np.float64, mag=30.0)
    o, lse = ops.attention_forward(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), scale=1.0)
    assert np.all(np.isfinite(o)) and np.all(np.isfinite(lse)) and np.abs(lse).max() > 1e3
    check_against_reference(q, k, v, do, True, 1.0, rtol=1e-9, atol=1e-10)
    # float32: one-hot-like probabilities, compared with the reference on the float32 inputs
    q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
    ro, rl = ref.attention_forward(q32.astype(np.float64), k32.astype(np.float64), v32.astype(np.float64), False, 1.0)
    np.testing.assert_allclose(lse, rl, rtol=1e-5)
    np.testing.assert_allclose(o, ro, atol=5e-3)


def test_attention_causal_with_t_equal_s_is_lower_triangular(rng):
    # changing keys/values after position i must not change output row i
    q, k, v, _ = make(rng, 1, 1, 1, 20, 20, 8, np.float64)
    o1, _ = ops.attention_forward(q, k, v, causal=True)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 10:] += 5.0
    v2[:, :, 10:] -= 3.0
    o2, _ = ops.attention_forward(q, k2, v2, causal=True)
    np.testing.assert_array_equal(o1[:, :, :10], o2[:, :, :10])
    assert not np.allclose(o1[:, :, 10:], o2[:, :, 10:])


@pytest.mark.parametrize("causal", [False, True])
def test_attention_finite_differences(rng, causal):
    q, k, v, do = make(rng, 1, 2, 1, 5, 6, 3, np.float64)
    scale = 0.7
    o, lse = ops.attention_forward(q, k, v, causal=causal, scale=scale)
    dq, dk, dv = ops.attention_backward(do, q, k, v, o, lse, causal=causal, scale=scale)
    loss = lambda q_, k_, v_: float(np.sum(ops.attention_forward(q_, k_, v_, causal=causal, scale=scale)[0] * do))
    np.testing.assert_allclose(dq, numerical_grad(lambda x: loss(x, k, v), q), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dk, numerical_grad(lambda x: loss(q, x, v), k), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dv, numerical_grad(lambda x: loss(q, k, x), v), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("shape", [(2, 4, 2, 150, 150, 64), (4, 8, 4, 130, 100, 64)], ids=["few_heads", "many_heads"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_threads_bitwise_identical(isa, threads, rng, causal, shape):
    q, k, v, do = make(rng, *shape, np.float32)
    res = []
    for n in (1, 2):
        threads(n)
        o, lse = ops.attention_forward(q, k, v, causal=causal)
        res.append((o, lse) + ops.attention_backward(do, q, k, v, o, lse, causal=causal))
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)


def test_attention_isa_paths_agree(rng):
    isas = __import__("conftest").ISAS
    if len(isas) < 2:
        pytest.skip("only the portable path runs on this CPU")
    q, k, v, do = make(rng, 1, 2, 2, 100, 90, 128, np.float32)
    old = _C.get_isa()
    out = {}
    try:
        for name in isas:
            _C.set_isa(name)
            o, lse = ops.attention_forward(q, k, v, causal=True)
            out[name] = (o, lse) + ops.attention_backward(do, q, k, v, o, lse, causal=True)
    finally:
        _C.set_isa(old)
    for name in isas[1:]:
        for a, b in zip(out["portable"], out[name]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("D", [64, 48])
def test_attention_avx512_equals_avx2_bitwise(rng, D):
    # the tile kernels differ only in the register micro-kernel (a 16-column row in one zmm vs two
    # ymm), which sums each lane's products in the same order: same bits, split heads and packed qkv
    isas = __import__("conftest").ISAS
    if "avx512" not in isas:
        pytest.skip("no AVX-512 on this CPU")
    q, k, v, do = make(rng, 2, 4, 2, 100, 130, D, np.float32)
    qkv = rng.standard_normal((2, 70, 8 * D)).astype(np.float32)
    dout = rng.standard_normal((2, 70, 4 * D)).astype(np.float32)
    old = _C.get_isa()
    out = {}
    try:
        for name in ("avx2", "avx512"):
            _C.set_isa(name)
            o, lse = ops.attention_forward(q, k, v, causal=True)
            oq, lq = ops.attention_qkv_forward(qkv, 4, 2, causal=True)
            out[name] = (o, lse, *ops.attention_backward(do, q, k, v, o, lse, causal=True), oq, lq,
                         ops.attention_qkv_backward(dout, qkv, oq, lq, 4, 2, causal=True))
    finally:
        _C.set_isa(old)
    for a, b in zip(out["avx2"], out["avx512"]):
        np.testing.assert_array_equal(a, b)


def test_attention_bad_input(rng):
    q, k, v, do = make(rng, 1, 4, 2, 5, 6, 8, np.float32)
    o, lse = ops.attention_forward(q, k, v)
    f = ops.attention_forward
    with pytest.raises(TypeError, match="attention_forward: q must be float32 or float64, got int64"):
        f(np.ones((1, 4, 5, 8), np.int64), k, v)
    with pytest.raises(TypeError, match=r"attention_forward: k must be float32 \(the dtype of the other inputs\), got float64"):
        f(q, k.astype(np.float64), v)
    with pytest.raises(TypeError, match="attention_forward: v must be a numpy.ndarray, got list"):
        f(q, k, [1.0])
    with pytest.raises(ValueError, match="attention_forward: q must be C-contiguous"):
        f(np.ones((1, 4, 5, 16), np.float32)[..., ::2], k, v)
    with pytest.raises(ValueError, match="attention_forward: q must have 4 dimensions, got 3"):
        f(q[0], k, v)
    with pytest.raises(ValueError, match=r"attention_forward: k must have shape \(B, Hkv, S, D\) with B=1 and D=8 from q \(1, 4, 5, 8\), got \(1, 2, 6, 9\)"):
        f(q, np.ones((1, 2, 6, 9), np.float32), v)
    with pytest.raises(ValueError, match=r"attention_forward: v must have the shape of k \(1, 2, 6, 8\), got \(1, 2, 7, 8\)"):
        f(q, k, np.ones((1, 2, 7, 8), np.float32))
    with pytest.raises(ValueError, match=r"attention_forward: the number of heads of q \(4\) must be a positive multiple of the number of heads of k and v \(3\)"):
        f(q, np.ones((1, 3, 6, 8), np.float32), np.ones((1, 3, 6, 8), np.float32))
    big = np.ones((1, 1, 2, 257), np.float32)
    with pytest.raises(ValueError, match="attention_forward: head dimension D must be between 1 and 256, got 257"):
        f(big, big, big)
    with pytest.raises(TypeError, match="attention_forward: scale must be a float or None"):
        f(q, k, v, scale="x")
    with pytest.raises(ValueError, match="attention_forward: scale must be finite"):
        f(q, k, v, scale=float("nan"))
    b = ops.attention_backward
    with pytest.raises(ValueError, match=r"attention_backward: lse must have shape \(1, 4, 5\), got \(1, 4, 6\)"):
        b(do, q, k, v, o, np.zeros((1, 4, 6), np.float32))
    with pytest.raises(ValueError, match=r"attention_backward: do must have the shape of q \(1, 4, 5, 8\), got \(1, 4, 5, 7\)"):
        b(do[..., :7].copy(), q, k, v, o, lse)
    with pytest.raises(TypeError, match="attention_backward: o must be float32"):
        b(do, q, k, v, o.astype(np.float64), lse)
    with pytest.raises(ValueError, match="attention_backward: do must be C-contiguous"):
        b(np.ascontiguousarray(do.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2), q, k, v, o, lse)


def test_attention_d256_works(rng):
    q, k, v, do = make(rng, 1, 1, 1, 3, 4, 256, np.float64)
    check_against_reference(q, k, v, do, False, None, rtol=1e-10, atol=1e-12)


# ----- the packed entry points: qkv (B, T, (H + 2 Hkv) D) -> o (B, T, H D) -------------------
def _pack(q, k, v):
    rows = lambda x: x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], x.shape[1] * x.shape[3])
    return np.ascontiguousarray(np.concatenate([rows(q), rows(k), rows(v)], axis=2))


def _heads(a, h):
    B, T, W = a.shape
    return np.ascontiguousarray(a.reshape(B, T, h, W // h).transpose(0, 2, 1, 3))


# (B, H, Hkv, T, D): fast path sizes, D % 16 != 0 (split/merge fallback), odd T, GQA/MQA,
# B * Hkv >= 16 (the AVX2 backward's per-kv-head schedule; with G T D > 2^16 floats the q/do
# rows are read in place, not copied to scratch), size 1
QKV_CASES = [(1, 1, 1, 1, 16), (2, 4, 2, 7, 64), (1, 3, 1, 130, 32), (2, 2, 2, 65, 48), (1, 2, 1, 33, 24),
             (4, 4, 4, 70, 64), (2, 8, 8, 66, 32), (16, 2, 1, 300, 128), (1, 2, 2, 257, 128), (1, 2, 1, 9, 3)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", QKV_CASES, ids=lambda c: "B{}H{}Hkv{}T{}D{}".format(*c))
def test_attention_qkv_equals_split_heads_bitwise(isa, rng, case, causal):
    B, H, Hkv, T, D = case
    q, k, v, _ = make(rng, B, H, Hkv, T, T, D, np.float32)
    qkv = _pack(q, k, v)
    do = rng.standard_normal((B, T, H * D)).astype(np.float32)
    o, lse = ops.attention_qkv_forward(qkv, H, Hkv, causal=causal)
    assert o.shape == (B, T, H * D) and lse.shape == (B, H, T) and o.dtype == np.float32
    ro, rl = ops.attention_forward(q, k, v, causal=causal)
    np.testing.assert_array_equal(_heads(o, H), ro)
    np.testing.assert_array_equal(lse, rl)
    dqkv = ops.attention_qkv_backward(do, qkv, o, lse, H, Hkv, causal=causal)
    assert dqkv.shape == qkv.shape and dqkv.dtype == np.float32
    rdq, rdk, rdv = ops.attention_backward(_heads(do, H), q, k, v, ro, rl, causal=causal)
    np.testing.assert_array_equal(dqkv, _pack(rdq, rdk, rdv))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_qkv_matches_reference_float64(rng, causal):
    B, H, Hkv, T, D = 2, 4, 2, 19, 8
    q, k, v, _ = make(rng, B, H, Hkv, T, T, D, np.float64)
    do = rng.standard_normal((B, T, H * D))
    o, lse = ops.attention_qkv_forward(_pack(q, k, v), H, Hkv, causal=causal, scale=0.3)
    ro, rl = ref.attention_forward(q, k, v, causal, 0.3)
    np.testing.assert_allclose(_heads(o, H), ro, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, rl, rtol=1e-12, atol=1e-13)
    dqkv = ops.attention_qkv_backward(do, _pack(q, k, v), o, lse, H, Hkv, causal=causal, scale=0.3)
    rd = ref.attention_backward(_heads(do, H), q, k, v, causal, 0.3)
    np.testing.assert_allclose(dqkv, _pack(*rd), rtol=1e-10, atol=1e-12)


def test_attention_qkv_finite_differences(rng):
    B, H, Hkv, T, D = 1, 2, 1, 5, 3
    qkv = rng.standard_normal((B, T, (H + 2 * Hkv) * D))
    do = rng.standard_normal((B, T, H * D))
    o, lse = ops.attention_qkv_forward(qkv, H, Hkv, causal=True)
    dqkv = ops.attention_qkv_backward(do, qkv, o, lse, H, Hkv, causal=True)
    loss = lambda x: float(np.sum(ops.attention_qkv_forward(x, H, Hkv, causal=True)[0] * do))
    np.testing.assert_allclose(dqkv, numerical_grad(loss, qkv), rtol=1e-6, atol=1e-8)


def test_attention_qkv_threads_bitwise_identical(isa, threads, rng):
    B, H, Hkv, T, D = 2, 4, 2, 150, 64
    qkv = rng.standard_normal((B, T, (H + 2 * Hkv) * D)).astype(np.float32)
    do = rng.standard_normal((B, T, H * D)).astype(np.float32)
    res = []
    for n in (1, 2):
        threads(n)
        o, lse = ops.attention_qkv_forward(qkv, H, Hkv, causal=True)
        res.append((o, lse, ops.attention_qkv_backward(do, qkv, o, lse, H, Hkv, causal=True)))
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)


def test_attention_qkv_bad_input(rng):
    qkv = rng.standard_normal((2, 5, 32)).astype(np.float32)  # H=2, Hkv=1 -> D=8
    o, lse = ops.attention_qkv_forward(qkv, 2, 1)
    do = np.ones_like(o)
    f, b = ops.attention_qkv_forward, ops.attention_qkv_backward
    with pytest.raises(TypeError, match="attention_qkv_forward: qkv must be float32 or float64, got int64"):
        f(qkv.astype(np.int64), 2, 1)
    with pytest.raises(ValueError, match="attention_qkv_forward: qkv must have 3 dimensions, got 2"):
        f(qkv[0], 2, 1)
    with pytest.raises(ValueError, match="attention_qkv_forward: qkv must be C-contiguous"):
        f(qkv[:, ::2], 2, 1)
    with pytest.raises(ValueError, match=r"attention_qkv_forward: qkv must have shape \(B, T, \(n_head \+ 2 n_kv_head\) D\) with 1 <= D <= 256; got \(2, 5, 32\) for n_head=3, n_kv_head=3"):
        f(qkv, 3)
    with pytest.raises(ValueError, match=r"attention_qkv_forward: n_head \(2\) must be a positive multiple of n_kv_head \(3\)"):
        f(qkv, 2, 3)
    with pytest.raises(ValueError, match="attention_qkv_forward: n_head must be >= 1, got 0"):
        f(qkv, 0)
    with pytest.raises(TypeError, match="attention_qkv_forward: n_kv_head must be an int or None"):
        f(qkv, 2, "one")
    with pytest.raises(ValueError, match=r"attention_qkv_backward: do must have shape \(2, 5, 16\), got \(2, 5, 15\)"):
        b(do[..., :15].copy(), qkv, o, lse, 2, 1)
    with pytest.raises(ValueError, match=r"attention_qkv_backward: lse must have shape \(2, 2, 5\), got \(2, 5, 2\)"):
        b(do, qkv, o, np.zeros((2, 5, 2), np.float32), 2, 1)
    with pytest.raises(TypeError, match="attention_qkv_backward: o must be float32"):
        b(do, qkv, o.astype(np.float64), lse, 2, 1)
    with pytest.raises(ValueError, match="attention_qkv_backward: do must be C-contiguous"):
        b(np.ones((2, 5, 32), np.float32)[..., ::2], qkv, o, lse, 2, 1)
    # empty batch / sequence: empty results, no crash
    e, el = f(np.zeros((0, 3, 32), np.float32), 2, 1)
    assert e.shape == (0, 3, 16) and el.shape == (0, 2, 3)
    e, el = f(np.zeros((1, 0, 32), np.float32), 2, 1)
    assert e.shape == (1, 0, 16) and b(e, np.zeros((1, 0, 32), np.float32), e, el, 2, 1).shape == (1, 0, 32)


def test_attention_minus_inf_score_gets_no_weight(isa, rng):
    # query 0 (causal) sees only key 0, whose score is -inf: no key to attend to, o = 0 and
    # lse = -inf (the AVX2 exp once gave exp(-inf) = 2^-126 there, so o came out as v[0]);
    # query 1 sees keys 0 and 1: key 0 (-inf) gets weight 0, so o = v[1]
    for D in (16, 64, 24):
        q = rng.standard_normal((1, 1, 8, D)).astype(np.float32)
        k = rng.standard_normal((1, 1, 8, D)).astype(np.float32)
        v = rng.standard_normal((1, 1, 8, D)).astype(np.float32)
        k[0, 0, 0] = 0
        k[0, 0, 0, 0] = 10
        q[0, 0, :2] = 0
        q[0, 0, 0, 0] = -np.inf  # q[0] . k[0] = -inf
        q[0, 0, 1, 0] = -3e38    # q[1] . k[0] overflows to -inf
        k[0, 0, 1, 0] = 0        # q[1] . k[1] = 0
        o, lse = ops.attention_forward(q, k, v, causal=True)
        np.testing.assert_array_equal(o[0, 0, 0], 0)
        assert lse[0, 0, 0] == -np.inf
        np.testing.assert_allclose(o[0, 0, 1], v[0, 0, 1], rtol=1e-6)


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("shape", [(2, 2, 2, 0, 0, 64), (4, 8, 8, 0, 0, 32), (3, 4, 2, 0, 7, 48), (2, 2, 2, 3, 0, 64)])
def test_attention_empty_sequences(isa, threads, shape, nthreads):
    # no queries (or no keys) with many heads per thread: the forward's one-task-per-head
    # schedule once divided by the number of query tiles (0 here) and died with SIGFPE
    threads(nthreads)
    B, H, Hkv, T, S, D = shape
    q, k = np.ones((B, H, T, D), np.float32), np.ones((B, Hkv, S, D), np.float32)
    o, lse = ops.attention_forward(q, k, k)
    assert o.shape == (B, H, T, D) and lse.shape == (B, H, T)
    assert np.all(o == 0) and np.all(lse == -np.inf)  # a query that sees no key: o = 0, lse = -inf
    dq, dk, dv = ops.attention_backward(np.ones_like(o), q, k, k, o, lse)
    assert dq.shape == q.shape and dk.shape == dv.shape == k.shape
    assert not dq.any() and not dk.any() and not dv.any()
    if T == S:
        qkv = np.ones((B, T, (H + 2 * Hkv) * D), np.float32)
        o2, lse2 = ops.attention_qkv_forward(qkv, n_head=H, n_kv_head=Hkv, causal=True)
        assert o2.shape == (B, T, H * D) and lse2.shape == (B, H, T)
        assert ops.attention_qkv_backward(np.ones_like(o2), qkv, o2, lse2, n_head=H, n_kv_head=Hkv,
                                          causal=True).shape == qkv.shape
