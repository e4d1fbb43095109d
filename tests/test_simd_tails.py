"""Vector tails on every ISA path: the elementwise float32 kernels run a tail (n % lanes
elements, 0..15 with 16-lane AVX-512 vectors) through masked loads/stores and the same math as
a full vector, so each element's result must not depend on the array's length: the kernel on
x[:n] equals the kernel on a longer x, cut to n, bit for bit, at every remainder. Row kernels
(softmax, layernorm, ...) are checked at every row width 1..33 against the reference in their
own test files."""
from __future__ import annotations

import numpy as np
import pytest

from fusegrad import ops
import reference as ref

LENGTHS = [r for r in range(16)] + [16 + r for r in range(16)] + [48 + 5]


def _elementwise():
    """(name, f(x, dy) -> output, reference f on float64, tolerance (rtol, atol) for float32)."""
    return [
        ("relu_forward", lambda x, dy: ops.relu_forward(x), lambda x, dy: ref.relu_forward(x), (0, 0)),
        ("relu_backward", lambda x, dy: ops.relu_backward(dy, x), lambda x, dy: ref.relu_backward(dy, x), (0, 0)),
        ("gelu_tanh_forward", lambda x, dy: ops.gelu_forward(x, "tanh"),
         lambda x, dy: ref.gelu_forward(x, "tanh"), (1e-5, 1e-6)),
        ("gelu_tanh_backward", lambda x, dy: ops.gelu_backward(dy, x, "tanh"),
         lambda x, dy: ref.gelu_backward(dy, x, "tanh"), (1e-5, 1e-6)),
        ("gelu_erf_forward", lambda x, dy: ops.gelu_forward(x, "none"),
         lambda x, dy: ref.gelu_forward(x, "none"), (1e-5, 1e-6)),
        ("gelu_erf_backward", lambda x, dy: ops.gelu_backward(dy, x, "none"),
         lambda x, dy: ref.gelu_backward(dy, x, "none"), (1e-5, 1e-6)),
        # the training pair: y, then gelu'(x), then the multiply
        *[(f"gelu_{f}_forward_with_grad[{i}]", lambda x, dy, m=m, i=i: ops.gelu_forward_with_grad(x, m)[i],
           (lambda x, dy, m=m: ref.gelu_forward(x, m)) if i == 0 else (lambda x, dy, m=m: ref.gelu_backward(1.0, x, m)),
           (1e-5, 1e-6)) for f, m in (("tanh", "tanh"), ("erf", "none")) for i in (0, 1)],
        ("gelu_backward_from_grad", lambda x, dy: ops.gelu_backward_from_grad(dy, x), lambda x, dy: dy * x,
         (2.0**-24, 0)),  # one float32 rounding of the product
        ("sigmoid_forward", lambda x, dy: ops.sigmoid_forward(x), lambda x, dy: ref.sigmoid_forward(x), (1e-6, 1e-7)),
        ("tanh_forward", lambda x, dy: ops.tanh_forward(x), lambda x, dy: ref.tanh_forward(x), (1e-6, 1e-7)),
    ]


CASES = _elementwise()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_elementwise_tail_equals_full_vector(isa, rng, case):
    _, f, rf, (rtol, atol) = case
    x = (3 * rng.standard_normal(64)).astype(np.float32)
    x[::7] = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, -20.0, 20.0, 9.0, -9.0][: x[::7].size]
    dy = rng.standard_normal(64).astype(np.float32)
    full = f(x, dy)
    for n in LENGTHS:
        got = f(x[:n].copy(), dy[:n].copy())
        assert got.shape == (n,)
        np.testing.assert_array_equal(got.view(np.int32), full[:n].view(np.int32), err_msg=f"n={n}")
    finite = np.isfinite(x)
    want = rf(x[finite].astype(np.float64), dy[finite].astype(np.float64))
    np.testing.assert_allclose(full[finite], want, rtol=rtol, atol=atol)


def _optim_updates():
    """(name, update(param, grad, m, v) in place on float arrays)"""
    return [
        ("adamw", lambda p, g, m, v: ops.adamw_step(p, g, m, v, 3, 1e-2, weight_decay=0.1)),
        ("adam", lambda p, g, m, v: ops.adam_step(p, g, m, v, 3, 1e-2, weight_decay=0.1)),
        ("sgd_momentum", lambda p, g, m, v: ops.sgd_step(p, g, m, 1e-2, momentum=0.9, weight_decay=0.1,
                                                         dampening=0.1)),
        ("sgd_nesterov", lambda p, g, m, v: ops.sgd_step(p, g, m, 1e-2, momentum=0.9, nesterov=True)),
    ]


OPTIM = _optim_updates()


@pytest.mark.parametrize("case", OPTIM, ids=[c[0] for c in OPTIM])
def test_optimizer_tail_equals_full_vector(isa, rng, case):
    _, step = case
    base = [rng.standard_normal(64).astype(np.float32) for _ in range(3)] + [rng.random(64).astype(np.float32)]
    full = [a.copy() for a in base]
    step(*full)
    for n in LENGTHS:
        part = [a[:n].copy() for a in base]
        step(*part)
        for got, want in zip(part, full):
            np.testing.assert_array_equal(got.view(np.int32), want[:n].view(np.int32), err_msg=f"n={n}")


@pytest.mark.parametrize("n", LENGTHS + [1000, 65536 + 7])
def test_sum_squares_every_remainder(isa, rng, n):
    x = rng.standard_normal(n).astype(np.float32)
    want = float(np.sum(x.astype(np.float64) ** 2))
    # float32 squares are exact in double; only the double additions round: n * 2^-53 relative
    assert abs(ops.sum_squares(x) - want) <= n * 2.0**-53 * want + 1e-300


ROW_WIDTHS = list(range(1, 34)) + [511, 513, 1029]


@pytest.mark.parametrize("C", ROW_WIDTHS)
def test_row_kernels_every_row_width(isa, rng, C):
    # each row width puts the masked tail (and, for layernorm, the double-lane padding) at a
    # different remainder; every row kernel against the float64 reference
    N = 3
    x = (2 * rng.standard_normal((N, C))).astype(np.float32)
    dy = rng.standard_normal((N, C)).astype(np.float32)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    tol = dict(rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(ops.softmax_forward(x), ref.softmax_forward(x64), **tol)
    y = ops.softmax_forward(x)
    np.testing.assert_allclose(ops.softmax_backward(dy, y), ref.softmax_backward(dy64, y.astype(np.float64)), **tol)
    ly = ops.log_softmax_forward(x)
    np.testing.assert_allclose(ly, ref.log_softmax_forward(x64), **tol)
    np.testing.assert_allclose(ops.log_softmax_backward(dy, ly), ref.log_softmax_backward(dy64, ly.astype(np.float64)),
                               **tol)
    t = rng.integers(0, C, N)
    loss, lse = ops.cross_entropy_forward(x, t)
    rloss, rlse = ref.cross_entropy_forward(x64, t)
    np.testing.assert_allclose(lse, rlse, **tol)
    np.testing.assert_allclose(ops.cross_entropy_backward(x, t, lse, 1.0),
                               ref.cross_entropy_backward(x64, t, lse.astype(np.float64), 1.0), **tol)
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    yl, mean, rstd = ops.layernorm_forward(x, w, b)
    ry, rmean, rrstd = ref.layernorm_forward(x64, w.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(mean, rmean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rstd, rrstd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(yl, ry, rtol=1e-4, atol=2e-5)
    dx, dw, db = ops.layernorm_backward(dy, x, w, mean, rstd)
    rdx, rdw, rdb = ref.layernorm_backward(dy64, x64, w.astype(np.float64), mean.astype(np.float64),
                                           rstd.astype(np.float64))
    np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, rdw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(db, rdb, rtol=1e-5, atol=1e-5)

