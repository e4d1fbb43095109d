"""The skinny product (csrc/ops/gemv.h): float32 and bf16 weights against the float64
reference at M = 1..16 with odd sizes, on every ISA path (bf16 weights take the AVX512_BF16
kernel on the avx512 path of CPUs that have it), bf16 also by the low-precision error-budget
rule; bitwise independence of the thread count and of the batch (a row's bits do not depend on
the other rows); linear_forward takes it for few rows; the bf16 conversions."""
import numpy as np
import pytest

from fusegrad import _C, ops
import reference as R
from fuzz_specs import bf16_round

# K * eps(float32) * sum |x||w| bounds the float32 dot product's rounding (plus the bias add)
def _tol(x, w):
    return 4 * np.finfo(np.float32).eps * (x.shape[-1] + 2) * (np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64) + 1)


def _bf16(w):
    return _C._bf16_from_float32(w)


def _widen(wb):
    return (wb.astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("M", range(1, 17))
@pytest.mark.parametrize("K, N", [(1, 1), (7, 5), (33, 129), (127, 31), (769, 1001)])
def test_gemv_matches_float64(isa, rng, M, K, N):
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    r = rng.standard_normal((M, N)).astype(np.float32)
    exp = R.linear_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    tol = _tol(x, w)
    assert np.all(np.abs(ops.gemv(x, w, b) - exp) <= tol)
    assert np.all(np.abs(ops.gemv(x, w) - (exp - b)) <= tol)
    assert np.all(np.abs(ops.gemv(x, w, b, r) - (r + exp)) <= tol + 4 * np.finfo(np.float32).eps * np.abs(r))
    wb = _bf16(w)
    got = ops.gemv(x, wb, b, r)
    if _C.bf16_path() == "avx512_bf16":
        # VDPBF16PS on x = hi + lo (two bf16 halves, |x - hi - lo| <= 2^-16 |x|): the float32 product's
        # budget plus 2^-16 sum |x||w| for the split
        wf = _widen(wb)
        exp = r + R.linear_forward(x.astype(np.float64), wf.astype(np.float64), b.astype(np.float64))
        split = 2.0 ** -16 * (np.abs(x).astype(np.float64) @ np.abs(wf).T.astype(np.float64))
        assert np.all(np.abs(got - exp) <= _tol(x, wf) + split + 4 * np.finfo(np.float32).eps * np.abs(r))
    else:  # bf16 weights widened in registers: the float32 product of the widened weights, bit for bit
        np.testing.assert_array_equal(got, ops.gemv(x, _widen(wb), b, r))


@pytest.mark.parametrize("M", range(1, 17))
@pytest.mark.parametrize("K, N", [(1, 1), (7, 5), (33, 129), (127, 31), (769, 1001)])
def test_gemv_bf16_error_budget(isa, rng, M, K, N):
    # the low-precision rule: against the float64 product of the inputs as given (x, the bf16 weights),
    # at most 2x the error of the same product done plainly in bf16 (x rounded to bf16 too)
    x = rng.standard_normal((M, K)).astype(np.float32)
    wb = _bf16(rng.standard_normal((N, K)).astype(np.float32))
    w64 = _widen(wb).astype(np.float64)
    exact = x.astype(np.float64) @ w64.T
    plain = bf16_round(x) @ w64.T
    err, budget = np.abs(ops.gemv(x, wb) - exact).max(), np.abs(plain - exact).max()
    assert 0 < budget and err <= 2 * budget, f"error {err:.3g} > 2 x {budget:.3g} ({_C.bf16_path()})"


def test_gemv_bf16_specials(isa):
    # non-finite inputs come out as the float32 product's do; an inf activation carries through
    x = np.array([[1.0, np.inf, 2.0], [np.nan, 0.0, 1.0], [1e-3, -2.5, 3e4]], np.float32)
    wb = _bf16(np.array([[0.5, 0.25, -1.0], [1.0, 0.0, 2.0]], np.float32))
    got, want = ops.gemv(x, wb), ops.gemv(x, _widen(wb))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin], want[~fin])
    np.testing.assert_allclose(got[fin], want[fin], rtol=2.0 ** -15)


def test_gemv_large(isa, rng):
    x = rng.standard_normal((3, 3072)).astype(np.float32)
    w = rng.standard_normal((4099, 3072)).astype(np.float32)
    exp = x.astype(np.float64) @ w.T.astype(np.float64)
    assert np.all(np.abs(ops.gemv(x, w) - exp) <= _tol(x, w))


def test_gemv_rows_threads_and_batch_invariant(isa, threads, rng):
    x = rng.standard_normal((16, 301)).astype(np.float32)
    w = rng.standard_normal((2053, 301)).astype(np.float32)
    b = rng.standard_normal(2053).astype(np.float32)
    for wt in (w, _bf16(w)):
        threads(1)
        one = ops.gemv(x, wt, b)
        threads(2)
        np.testing.assert_array_equal(ops.gemv(x, wt, b), one)
        for M in (1, 5, 16):          # a row's bits do not depend on the rows beside it
            np.testing.assert_array_equal(ops.gemv(x[-M:], wt, b), one[-M:])


@pytest.mark.parametrize("M", [1, 7, 16])
def test_linear_forward_takes_the_skinny_path(isa, rng, M):
    x = rng.standard_normal((M, 45)).astype(np.float32)
    w = rng.standard_normal((77, 45)).astype(np.float32)
    b = rng.standard_normal(77).astype(np.float32)
    r = rng.standard_normal((M, 77)).astype(np.float32)
    np.testing.assert_array_equal(ops.linear_forward(x, w, b, r), ops.gemv(x, w, b, r))


def test_gemv_empty_sizes(isa):
    np.testing.assert_array_equal(ops.gemv(np.ones((2, 0), np.float32), np.ones((3, 0), np.float32),
                                           np.arange(3, dtype=np.float32)), [[0, 1, 2], [0, 1, 2]])
    assert ops.gemv(np.ones((0, 4), np.float32), np.ones((3, 4), np.float32)).shape == (0, 3)
    assert ops.gemv(np.ones((2, 4), np.float32), np.ones((0, 4), np.float32)).shape == (2, 0)


def test_bf16_conversion_rounds_to_nearest_even():
    f = np.array([1.0, 1.00390625, 1.01171875, 1.0 + 2**-8 + 2**-20, -2.5, np.inf, -np.inf,
                  3.4e38, 1e-40, 0.0, -0.0], np.float32)
    got = _widen(_bf16(f))
    # 1 + 2^-8 is a tie -> even (1.0); 1 + 3*2^-8 is a tie -> even (1 + 2^-6); just above a tie rounds up
    np.testing.assert_array_equal(got[:5], np.array([1.0, 1.0, 1.015625, 1.0078125, -2.5], np.float32))
    assert got[5] == np.inf and got[6] == -np.inf and got[7] == np.inf      # 3.4e38 rounds past bf16's max
    assert got[8] == np.array([0x00010000], np.uint32).view(np.float32)[0]   # subnormal 1e-40 = 0x000116C2 rounds down
    assert np.signbit(got[10]) and got[9] == 0
    nan = np.array([0x7F800001, 0xFFC00000], np.uint32).view(np.float32)   # a signalling NaN stays NaN
    assert np.isnan(_widen(_bf16(nan))).all()
    # every bf16 value round-trips exactly
    allb = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    fin = np.isfinite(_widen(allb))
    np.testing.assert_array_equal(_bf16(_widen(allb))[fin], allb[fin])
    np.testing.assert_array_equal(_C._bf16_to_float32(allb).view(np.uint32), _widen(allb).view(np.uint32))


def test_gemv_bad_arguments():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="gemv: x must be float32"):
        ops.gemv(x.astype(np.float64), np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match="gemv: w must be float32 or uint16"):
        ops.gemv(x, np.ones((4, 3), np.float64))
    with pytest.raises(ValueError, match=r"gemv: w must have shape \(out_features, 3\)"):
        ops.gemv(x, np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"gemv: b must have shape \(4,\)"):
        ops.gemv(x, np.ones((4, 3), np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"gemv: residual must have shape \(2, 4\)"):
        ops.gemv(x, np.ones((4, 3), np.float32), None, np.ones((4, 2), np.float32))
    with pytest.raises(TypeError, match="bf16_from_float32: a must be float32"):
        _C._bf16_from_float32(np.ones(3))
