"""Numerics at the edges: no NaN or Inf where the math has a finite answer.

Extreme logits (+-1e4) through softmax, log_softmax, cross-entropy and attention; fully masked
attention rows; layernorm on constant rows; activation forward/backward at extreme inputs.
Each op is skipped until it exists in fusegrad.ops; both ISA paths run (the ``isa`` fixture).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import reference as ref
from fusegrad import ops

DTYPES = [np.float32, np.float64]


def need(*names):
    missing = [n for n in names if not hasattr(ops, n)]
    if missing:
        pytest.skip(f"not in fusegrad.ops yet: {missing}")
    return [getattr(ops, n) for n in names]


def finite(*arrays):
    for a in arrays:
        a = np.asarray(a)
        assert np.all(np.isfinite(a)), f"non-finite values at {np.argwhere(~np.isfinite(a))[:5].tolist()}"


def close(got, want, dtype, rtol=None):
    rtol = rtol or (2e-5 if dtype == np.float32 else 1e-10)
    want = np.asarray(want, np.float64)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol,
                               atol=rtol * max(1.0, float(np.max(np.abs(want))) if want.size else 1.0))


def extreme_logits(dtype, V=37):
    """Rows that overflow a naive exp: +-1e4, one-hot 1e4, all equal 1e4, mixed signs."""
    rng = np.random.default_rng(0)
    rows = [np.full(V, 1e4), np.full(V, -1e4), np.where(np.arange(V) == 3, 1e4, -1e4),
            np.where(np.arange(V) % 2 == 0, 1e4, -1e4), rng.standard_normal(V) * 1e4,
            np.concatenate([[1e4], np.zeros(V - 1)]), np.concatenate([[-1e4], np.zeros(V - 1)])]
    return np.stack(rows).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_log_softmax_extreme_logits(isa, dtype):
    softmax_forward, log_softmax_forward, softmax_backward, log_softmax_backward = need(
        "softmax_forward", "log_softmax_forward", "softmax_backward", "log_softmax_backward")
    x = extreme_logits(dtype)
    x64 = x.astype(np.float64)
    y = softmax_forward(x)
    finite(y)
    close(y, ref.softmax_forward(x64), dtype)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5 if dtype == np.float32 else 1e-12)
    ly = log_softmax_forward(x)
    finite(ly)  # x - lse is finite (as low as -2e4) even where softmax underflows to 0
    close(ly, ref.log_softmax_forward(x64), dtype)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    finite(softmax_backward(dy, y), log_softmax_backward(dy, ly))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_extreme_logits(isa, dtype):
    fwd, bwd = need("cross_entropy_forward", "cross_entropy_backward")
    x = extreme_logits(dtype)
    N, V = x.shape
    targets = np.array([0, 5, 3, 1, 7, 0, 0], np.int64)
    loss, lse = fwd(x, targets)
    finite(loss, lse)
    want_loss, want_lse = ref.cross_entropy_forward(x.astype(np.float64), targets)
    close(loss, want_loss, dtype)
    close(lse, want_lse, dtype)
    dx = bwd(x, targets, lse, 1.0)
    finite(dx)
    close(dx, ref.cross_entropy_backward(x.astype(np.float64), targets, want_lse, 1.0), dtype, rtol=1e-4)
    # a confident correct prediction: loss exactly 0, not NaN; a confident wrong one: 2e4
    x2 = np.array([[1e4, -1e4], [-1e4, 1e4]], dtype)
    loss2, _ = fwd(x2, np.array([0, 0], np.int64))
    close(loss2, 1e4, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_all_targets_ignored_is_defined(isa, dtype):
    fwd, bwd = need("cross_entropy_forward", "cross_entropy_backward")
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(dtype)
    t = np.full(4, -100, np.int64)
    loss, lse = fwd(x, t)
    finite(lse)
    dx = bwd(x, t, lse, 1.0)
    finite(dx)  # no rows count: the gradient is zero, not 0/0
    assert np.all(dx == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_extreme_logits_and_fully_masked_rows(isa, dtype):
    fwd, bwd = need("attention_forward", "attention_backward")
    rng = np.random.default_rng(0)
    B, H, T, S, D = 1, 2, 9, 4, 8
    q = rng.standard_normal((B, H, T, D)).astype(dtype)
    k = rng.standard_normal((B, H, S, D)).astype(dtype)
    v = rng.standard_normal((B, H, S, D)).astype(dtype)
    # scale so that the scores reach ~1e4; causal with T > S leaves the first T-S rows with no key
    scale = 1e4 / float(np.max(np.abs(np.einsum("bhtd,bhsd->bhts", q, k))))
    o, lse = fwd(q, k, v, causal=True, scale=scale)
    want_o, want_lse = ref.attention_forward(*(a.astype(np.float64) for a in (q, k, v)), True, scale)
    masked = np.isneginf(want_lse)
    assert masked.sum() == B * H * (T - S)
    assert np.all(np.isneginf(lse[masked]))          # defined: lse = -inf, o = 0
    assert np.all(o[masked] == 0)
    finite(o, lse[~masked])
    close(o, want_o, dtype, rtol=1e-4 if dtype == np.float32 else 1e-9)
    do = rng.standard_normal(q.shape).astype(dtype)
    dq, dk, dv = bwd(do, q, k, v, o, lse, causal=True, scale=scale)
    finite(dq, dk, dv)
    assert np.all(dq[masked] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [0.0, 3.0, -1e4, 1e4])
def test_layernorm_constant_rows(isa, dtype, value):
    fwd, bwd = need("layernorm_forward", "layernorm_backward")
    C = 33
    x = np.full((5, C), value, dtype)
    w = np.linspace(0.5, 2, C).astype(dtype)
    b = np.linspace(-1, 1, C).astype(dtype)
    y, mean, rstd = fwd(x, w, b, 1e-5)
    finite(y, mean, rstd)
    close(y, np.broadcast_to(b, x.shape), dtype)       # x - mean == 0 exactly: y = bias
    close(rstd, np.full(5, 1 / math.sqrt(1e-5)), dtype)
    dy = np.random.default_rng(0).standard_normal(x.shape).astype(dtype)
    dx, dw, db = bwd(dy, x, w, mean, rstd)
    finite(dx, dw, db)
    want = ref.layernorm_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64),
                                  mean.astype(np.float64), rstd.astype(np.float64))
    for g, e in zip((dx, dw, db), want):
        close(g, e, dtype, rtol=1e-4 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_huge_offset_rows_stay_finite(isa, dtype):
    """A large common offset with small spread: the two-pass variance has no cancellation."""
    (fwd,) = need("layernorm_forward")
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((4, 64))).astype(dtype)
    y, mean, rstd = fwd(x, None, None, 1e-5)
    finite(y, mean, rstd)
    want, _, _ = ref.layernorm_forward(x.astype(np.float64), None, None, 1e-5)
    close(y, want, dtype, rtol=1e-3 if dtype == np.float32 else 1e-8)


def _extremes(dtype):
    big = float(np.finfo(dtype).max)
    return np.array([-big, -1e4, -100, -30, -10, -1e-30, -0.0, 0.0, 1e-30, 10, 30, 100, 1e4, big], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_forward_backward_at_extremes(isa, dtype, approximate):
    fwd, bwd = need("gelu_forward", "gelu_backward")
    x = _extremes(dtype)
    y = fwd(x, approximate=approximate)
    finite(y)
    # gelu(x) -> x for large x, -> 0 (not NaN) for very negative x
    assert np.all(y[x >= 10] == x[x >= 10]) and np.all(np.abs(y[x <= -30]) <= 1e-30)
    dx = bwd(np.ones_like(x), x, approximate=approximate)
    finite(dx)
    np.testing.assert_array_equal(dx[x >= 30], 1.0)
    assert np.all(np.abs(dx[x <= -30]) <= 1e-30)  # x phi(x): -4e-195 at x = -30 in float64, 0 below
    np.testing.assert_array_equal(dx[x <= -100], 0.0)
    mid = np.abs(x) <= 100                          # where the float64 reference does not overflow
    x64 = x[mid].astype(np.float64)
    close(y[mid], ref.gelu_forward(x64, approximate=approximate), dtype)
    close(dx[mid], ref.gelu_backward(np.ones_like(x64), x64, approximate=approximate), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_tanh_at_extremes(isa, dtype):
    sf, sb, tf, tb = need("sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward")
    x = _extremes(dtype)
    y = sf(x)
    finite(y)
    assert np.all((y >= 0) & (y <= 1))
    np.testing.assert_array_equal(y[x >= 100], 1.0)
    np.testing.assert_array_equal(y[x <= -1e4], 0.0)
    close(y, ref.sigmoid_forward(x.astype(np.float64)), dtype)
    dx = sb(np.ones_like(x), y)
    finite(dx)
    np.testing.assert_array_equal(dx[np.abs(x) >= 1e4], 0.0)
    t = tf(x)
    finite(t)
    np.testing.assert_array_equal(t[x >= 30], 1.0)
    np.testing.assert_array_equal(t[x <= -30], -1.0)
    dt = tb(np.ones_like(x), t)
    finite(dt)
    np.testing.assert_array_equal(dt[np.abs(x) >= 30], 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_and_mse_at_extremes(isa, dtype):
    x = _extremes(dtype)
    y = ops.relu_forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(ops.relu_backward(np.ones_like(x), x), (x > 0).astype(dtype))
    # the loss of equal huge arrays is exactly 0 and its gradient 0 (no Inf - Inf)
    big = np.full(100, np.finfo(dtype).max, dtype)
    assert float(ops.mse_forward(big, big)) == 0.0
    np.testing.assert_array_equal(ops.mse_backward(big, big), 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["adam_step", "adamw_step"])
def test_adam_zero_gradient_keeps_params_finite(isa, dtype, name):
    """v = 0 and grad = 0 at step 1: the update is 0/(0 + eps) = 0, never 0/0."""
    fn = getattr(ops, name)
    p = np.linspace(-3, 3, 37).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    p0 = p.copy()
    fn(p, np.zeros_like(p), m, v, step=1, lr=0.1, weight_decay=0.0)
    finite(p, m, v)
    np.testing.assert_array_equal(p, p0)


# ----- NaN propagates: a NaN input is never silently dropped from a row --------------------------
# Regression: the AVX2 row max (_mm256_max_ps) and the clamped vector exp turned a NaN logit into
# a finite value, so softmax/cross-entropy returned a finite loss for a NaN row and attention
# ignored a NaN key; the portable attention max (std::max) did the same for an all-NaN row.

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos", [0, 3, 9, 16, 40])
def test_nan_logit_makes_the_row_nan(isa, dtype, pos):
    x = np.zeros((3, 41), dtype)
    x[1, pos] = np.nan
    targets = np.array([0, 1, 2], np.int64)
    y, ly = ops.softmax_forward(x), ops.log_softmax_forward(x)
    loss, lse = ops.cross_entropy_forward(x, targets)
    assert np.isnan(y[1]).all() and np.isnan(ly[1]).all() and np.isnan(lse[1]) and np.isnan(loss)
    finite(y[[0, 2]], ly[[0, 2]], lse[[0, 2]])                  # other rows are untouched
    assert np.isnan(ops.cross_entropy_backward(x, targets, lse, 1.0)[1]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 3, 41])
def test_cross_entropy_nan_dloss_leaves_ignored_rows_zero(isa, dtype, V):
    # an ignored row is not part of the loss: its gradient is 0 even when dloss is NaN, as in
    # PyTorch; the kept rows are NaN (the fuzz reference once expected NaN everywhere)
    x = np.linspace(-1, 1, 4 * V).reshape(4, V).astype(dtype)
    targets = np.array([0, -100, V - 1, -100], np.int64)
    _, lse = ops.cross_entropy_forward(x, targets)
    d = ops.cross_entropy_backward(x, targets, lse, math.nan)
    assert np.isnan(d[[0, 2]]).all()
    np.testing.assert_array_equal(d[[1, 3]], 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [3, 32])
def test_attention_nan_query_or_key_makes_nan(isa, dtype, D):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, 4, D)).astype(dtype)
    k = rng.standard_normal((1, 1, 20, D)).astype(dtype)
    v = rng.standard_normal((1, 1, 20, D)).astype(dtype)
    q[0, 0, 1, 0] = np.nan                                       # every score of row 1 is NaN
    o, lse = ops.attention_forward(q, k, v)
    assert np.isnan(o[0, 0, 1]).all() and np.isnan(lse[0, 0, 1])
    finite(o[0, 0, [0, 2, 3]], lse[0, 0, [0, 2, 3]])
    q[0, 0, 1, 0] = 0.0
    k[0, 0, 11, 2] = np.nan                                      # one NaN key: every row sees it
    o, lse = ops.attention_forward(q, k, v)
    assert np.isnan(o).all() and np.isnan(lse).all()
    k[0, 0, 11, 2] = 0.0
    k[0, 0, 18, 2] = np.nan                                      # causal: rows 0, 1 see keys < 18
    o, lse = ops.attention_forward(q, k, v, causal=True)
    assert np.isnan(o[0, 0, 2:]).all() and np.isnan(lse[0, 0, 2:]).all()
    finite(o[0, 0, :2], lse[0, 0, :2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_inf_score_has_inf_lse(isa, dtype):
    q = np.ones((1, 1, 2, 4), dtype)
    k = np.ones((1, 1, 3, 4), dtype)
    q[0, 0, 0, 1] = np.inf
    o, lse = ops.attention_forward(q, k, k.copy())
    assert lse[0, 0, 0] == np.inf and np.isnan(o[0, 0, 0]).all()  # as logsumexp / the reference
    close(lse[0, 0, 1], 4 * 0.5 + math.log(3), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_backward_nan_dout_stays_in_the_keys_its_row_sees(isa, dtype):
    """Regression (fuzz): dK/dV summed 0 * dO over causally masked rows, so a NaN in one row's
    dO made the gradient of keys that row cannot see NaN too."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 1, 9, 4)).astype(dtype) for _ in range(3))
    o, lse = ops.attention_forward(q, k, v, causal=True)
    do = rng.standard_normal(q.shape).astype(dtype)
    do[0, 0, 2] = np.nan                                         # row 2 sees keys 0, 1, 2
    dq, dk, dv = ops.attention_backward(do, q, k, v, o, lse, causal=True)
    assert np.isnan(dv[0, 0, :3]).all() and np.isnan(dq[0, 0, 2]).all()
    finite(dk[0, 0, 3:], dv[0, 0, 3:], dq[0, 0, [0, 1, 3, 4, 5, 6, 7, 8]])


@pytest.mark.parametrize("D", [3, 16, 64])
@pytest.mark.parametrize("which", ["k", "v"])
def test_attention_causal_nan_in_an_unseen_key_stays_unseen(isa, D, which):
    # Regression (AVX2 tile kernels): on a diagonal tile a 6-row micro-tile ran over every key
    # its last row sees, so 0 * NaN leaked a NaN key/value into earlier rows that cannot see it.
    rng = np.random.default_rng(1)
    T = 13
    q, k, v, do = (rng.standard_normal((1, 2, T, D)).astype(np.float32) for _ in range(4))
    for j in range(T):
        kk, vv = k.copy(), v.copy()
        (kk if which == "k" else vv)[0, 1, j, 0] = np.nan
        o, lse = ops.attention_forward(q, kk, vv, causal=True)
        finite(o[0, 0], lse[0, 0], o[0, 1, :j], lse[0, 1, :j])          # rows before j never see key j
        assert np.isnan(o[0, 1, j:]).any(axis=-1).all()
        dq, dk, dv = ops.attention_backward(do, q, kk, vv, o, lse, causal=True)
        finite(dq[0, 0], dq[0, 1, :j], dk[0, 0], dv[0, 0])
