"""erf / erfc and the exact (erf) GELU on every ISA path, against math.erf / math.erfc in
float64 over a dense sweep of float32 inputs, the tails (results down into the subnormal range)
and the special values. Errors are measured in float32 ulps of the exact value (the spacing of
float32 at it; 2^-149 in the subnormal range)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fusegrad import _C, ops

# Bounds measured on the SIMD paths (erf 3.0, erfc 6.0, gelu 5.9, gelu' 3.1 ulps) rounded up:
# e^{-a^2} (~2 ulp from the exp polynomial), the fitted polynomials (5e-9 rel.) and the few
# float roundings between them. The portable path calls the C library's float erf/erfc.
ULPS = {"erf": 4.0, "erfc": 8.0, "gelu": 8.0, "gelu_grad": 4.0}
SIMD = [i for i in _C.isas_supported() if i != "portable"]


def _ulps(got, exact):
    spacing = np.maximum(np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64), 2.0**-149)
    return np.abs(got.astype(np.float64) - exact) / spacing


def _sweep():
    rng = np.random.default_rng(7)
    z = np.concatenate([np.linspace(-11, 11, 200001), 3 * rng.standard_normal(50000),
                        np.geomspace(1e-38, 1, 4000), -np.geomspace(1e-38, 1, 4000),
                        np.linspace(9, 10.1, 4001)])  # erfc's subnormal range
    return z.astype(np.float32)


@pytest.fixture(params=SIMD or [pytest.param("none", marks=pytest.mark.skip(reason="no SIMD path on this CPU"))])
def simd(request):
    old = _C.get_isa()
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa(old)


def test_erf_erfc_within_a_few_ulp(simd):
    z = _sweep()
    z64 = z.astype(np.float64)
    erf = np.array([math.erf(v) for v in z64])
    erfc = np.array([math.erfc(v) for v in z64])
    assert _ulps(_C._erf(z), erf).max() <= ULPS["erf"]
    assert _ulps(_C._erfc(z), erfc).max() <= ULPS["erfc"]


def _gelu_sweep():
    """x down to -15.6 (gelu subnormal, then 0), gelu(x) and gelu'(x) = Phi(x) + x phi(x) in float64,
    and the scale of gelu'(x)'s ulps: |Phi| + |x phi| (the terms cancel near x = -0.75)."""
    x = (np.sqrt(2) * _sweep()).astype(np.float32)
    x64 = x.astype(np.float64)
    r = 1 / math.sqrt(2)
    y = np.array([0.5 * v * math.erfc(-v * r) for v in x64])
    phi = np.array([math.exp(-0.5 * v * v) / math.sqrt(2 * math.pi) for v in x64])
    cdf = np.array([0.5 * math.erfc(-v * r) for v in x64])
    return x, y, cdf + x64 * phi, cdf + np.abs(x64) * phi


def _grad_ulps(d, exact, scale):
    spacing = np.maximum(np.spacing(scale.astype(np.float32)).astype(np.float64), 2.0**-149)
    return np.abs(d.astype(np.float64) - exact) / spacing


def test_gelu_erf_within_a_few_ulp(simd):
    x, y, grad, scale = _gelu_sweep()
    assert _ulps(ops.gelu_forward(x, "none"), y).max() <= ULPS["gelu"]
    d = ops.gelu_backward(np.ones_like(x), x, "none")
    assert _grad_ulps(d, grad, scale).max() <= ULPS["gelu_grad"]


def test_gelu_erf_with_grad_within_a_few_ulp(simd):
    # the training forward's pair: y (gelu_forward's bits) and the saved gelu'(x), to the same bounds
    x, y, grad, scale = _gelu_sweep()
    yw, d = ops.gelu_forward_with_grad(x, "none")
    np.testing.assert_array_equal(yw, ops.gelu_forward(x, "none"))
    assert _ulps(yw, y).max() <= ULPS["gelu"]
    assert _grad_ulps(d, grad, scale).max() <= ULPS["gelu_grad"]


def test_erf_special_values(isa):
    s = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-30, -1e-30], np.float32)
    e, ec = _C._erf(s), _C._erfc(s)
    np.testing.assert_array_equal(e[[0, 1, 3, 4]], [1, -1, 0, 0])
    assert np.signbit(e[4]) and not np.signbit(e[3]) and np.isnan(e[2])
    np.testing.assert_allclose(e[5:], [1e-30 * 2 / math.sqrt(math.pi), -1e-30 * 2 / math.sqrt(math.pi)], rtol=1e-6)
    np.testing.assert_array_equal(ec[[0, 1, 3, 4]], [0, 2, 1, 1])
    assert np.isnan(ec[2])
    # at +-inf the formulas' inf * 0 gives NaN, as on the portable path, in CUDA and in PyTorch
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -30.0, 30.0], np.float32)
    y = ops.gelu_forward(x, "none")
    np.testing.assert_array_equal(y[[0, 3, 4, 5]], [np.inf, 0, 0, 30])
    assert np.isnan(y[1]) and np.isnan(y[2])
    d = ops.gelu_backward(np.full(6, 2.0, np.float32), x, "none")
    np.testing.assert_array_equal(d[[3, 4, 5]], [1, 0, 2])
    assert np.all(np.isnan(d[[0, 1, 2]]))
    yw, dydx = ops.gelu_forward_with_grad(x, "none")
    np.testing.assert_array_equal(yw, y)
    np.testing.assert_array_equal(dydx[[3, 4, 5]], [0.5, 0, 1])
    assert np.all(np.isnan(dydx[[0, 1, 2]]))
    np.testing.assert_array_equal(ops.gelu_backward_from_grad(np.full(6, 2.0, np.float32), dydx), d)
