"""matmul_bf16: bfloat16 operands, float32 accumulation, on every path this CPU runs.

Judged by the error-budget rule for low precision: against a float64 reference of the exact
inputs, the error is at most 2x that of the same computation done plainly in that precision (the
float64 product of the bf16-rounded inputs). The avx512 ISA path takes the AVX512_BF16 kernel where
the CPU has it; the other paths take the emulated one (bf16-rounded operands on the float32 GEMM)."""
from __future__ import annotations

import numpy as np
import pytest

from fusegrad import _C, ops
from fuzz_specs import bf16_round

SHAPES = [(1, 1, 1), (3, 5, 7), (4, 4, 32), (37, 65, 129), (64, 1000, 33), (130, 70, 4099), (5, 3, 0)]


def _operands(rng, M, K, N, ta, tb):
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    return a, b


def _prod(a, b, ta, tb):
    return (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)


def _check_error_budget(rng, M, K, N, ta, tb):
    a, b = _operands(rng, M, K, N, ta, tb)
    got = ops.matmul_bf16(a, b, trans_a=ta, trans_b=tb)
    assert got.dtype == np.float32 and got.shape == (M, N)
    exact = _prod(a, b, ta, tb)
    plain = _prod(bf16_round(a), bf16_round(b), ta, tb)  # the computation done plainly in bf16
    err, budget = np.abs(got - exact).max(initial=0), np.abs(plain - exact).max(initial=0)
    assert err <= 2 * budget, f"error {err:.3g} > 2 x {budget:.3g} ({_C.bf16_path()})"
    # and it is that computation up to float32 sums: 2 K eps32 of the terms' magnitude
    terms = np.abs(bf16_round(a)).T if ta else np.abs(bf16_round(a))
    mag = terms @ (np.abs(bf16_round(b)).T if tb else np.abs(bf16_round(b)))
    assert np.all(np.abs(got - plain) <= 2 * max(K, 1) * np.finfo(np.float32).eps * mag + 1e-30)
    return got


TRANS = [(False, False), (False, True), (True, False), (True, True)]


@pytest.mark.parametrize("M, K, N", SHAPES)
@pytest.mark.parametrize("ta, tb", TRANS)
def test_error_budget(isa, rng, M, K, N, ta, tb):
    _check_error_budget(rng, M, K, N, ta, tb)


def test_paths(isa):
    want = "avx512_bf16" if isa == "avx512" and _C.cpu_has_avx512_bf16() else "emulated"
    assert _C.bf16_kernel_setting() == "auto" and _C.bf16_path() == want


# Every kernel this CPU runs, by name, on the avx512 path (where all but "emulated" live). The AMX
# kernel (never chosen by "auto" until it has run on AMX hardware) is tested here on CPUs with
# AMX-BF16, and its packing and tiling everywhere with AVX512_BF16 through "amx_simulated" (the same
# kernel body over a software model of the tiles).
KERNELS = ["emulated", "avx512_bf16", "amx_simulated", "amx"]


@pytest.fixture(params=KERNELS)
def bf16_kernel(request):
    name = request.param
    if name not in _C.bf16_kernels_available():
        pytest.skip(f"this CPU or build does not run the {name} bf16 kernel")
    old_isa, old = _C.get_isa(), _C.bf16_kernel_setting()
    _C.set_isa(_C.best_isa())
    _C.set_bf16_kernel(name)
    assert _C.bf16_path() == name
    yield name
    _C.set_bf16_kernel(old)
    _C.set_isa(old_isa)


# AMX tiles are 16 x 16 float32 of C (32 x 32 per block) and 16 K pairs: shapes on both sides of each
KERNEL_SHAPES = SHAPES[:-2] + [(16, 32, 16), (17, 33, 15), (32, 64, 32), (33, 65, 31), (31, 31, 65),
                               (70, 97, 300), (5, 3, 0)]


@pytest.mark.parametrize("M, K, N", KERNEL_SHAPES)
@pytest.mark.parametrize("ta, tb", TRANS)
def test_kernel_error_budget(bf16_kernel, rng, M, K, N, ta, tb):
    _check_error_budget(rng, M, K, N, ta, tb)


def test_kernel_long_k_and_large(bf16_kernel, rng):
    # long K (the float32 sum over 4099 terms) and a product larger than a task (64 x 256 on AMX)
    _check_error_budget(rng, 130, 4099, 70, False, True)
    _check_error_budget(rng, 200, 300, 600, True, False)


def test_kernels_agree(bf16_kernel, rng):
    # every kernel computes the same function up to the order of the float32 sums
    a, b = _operands(rng, 45, 257, 77, True, True)
    got = ops.matmul_bf16(a, b, trans_a=True, trans_b=True)
    _C.set_bf16_kernel("emulated")
    want = ops.matmul_bf16(a, b, trans_a=True, trans_b=True)
    mag = np.abs(bf16_round(a)).T @ np.abs(bf16_round(b)).T
    assert np.all(np.abs(got - want) <= 2 * 257 * np.finfo(np.float32).eps * mag)


def test_kernel_accumulate_threads_and_specials(bf16_kernel, rng, threads):
    a, b = _operands(rng, 35, 70, 40, False, False)
    c0 = rng.standard_normal((35, 40)).astype(np.float32)
    res = []
    for n in (1, 2, 3):
        threads(n)
        out = c0.copy()
        ops.matmul_bf16(a, b, out=out, accumulate=True)
        res.append(out)
    for r in res[1:]:
        np.testing.assert_array_equal(r, res[0])
    np.testing.assert_allclose(res[0], c0 + ops.matmul_bf16(a, b), rtol=1e-6, atol=1e-5)
    sp = ops.matmul_bf16(np.array([[np.inf, 1.0], [np.nan, 1.0], [2 ** -8 + 1, 0]], np.float32),
                         np.ones((2, 1), np.float32))
    assert sp[0, 0] == np.inf and np.isnan(sp[1, 0]) and sp[2, 0] == 1.0  # 1 + 2^-8 ties to even: 1


def test_kernel_choice_errors():
    with pytest.raises(ValueError, match="set_bf16_kernel: name='fast'.*auto, emulated"):
        _C.set_bf16_kernel("fast")
    if "amx" not in _C.bf16_kernels_available():
        with pytest.raises(ValueError, match="name='amx'"):
            _C.set_bf16_kernel("amx")
    assert _C.bf16_kernel_setting() == "auto"


def test_rounding_to_nearest_even_and_specials(isa):
    # a 1 x K times K x 1 identity-like product returns bf16(x) exactly
    one = np.float32(1)
    x = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 2 ** -7 + 2 ** -16, 3.0e38, 65504.0], np.float32)
    want = bf16_round(x)
    assert want[0] == 1.0 and want[1] == 1 + 2 ** -6  # ties go to the even mantissa
    got = np.array([ops.matmul_bf16(np.array([[v]], np.float32), np.array([[one]]))[0, 0] for v in x])
    np.testing.assert_array_equal(got, want.astype(np.float32))
    sp = ops.matmul_bf16(np.array([[np.inf, 1.0], [np.nan, 1.0]], np.float32), np.ones((2, 1), np.float32))
    assert sp[0, 0] == np.inf and np.isnan(sp[1, 0])


def test_out_and_accumulate(isa, rng):
    a, b = _operands(rng, 9, 40, 11, False, False)
    c0 = rng.standard_normal((9, 11)).astype(np.float32)
    out = c0.copy()
    r = ops.matmul_bf16(a, b, out=out, accumulate=True)
    assert r is out
    np.testing.assert_allclose(out, c0 + ops.matmul_bf16(a, b), rtol=1e-6, atol=1e-5)
    ops.matmul_bf16(a, b, out=out)
    np.testing.assert_array_equal(out, ops.matmul_bf16(a, b))
    np.testing.assert_array_equal(ops.matmul_bf16(a[:, :0], b[:0]), np.zeros((9, 11), np.float32))


def test_same_bits_for_any_thread_count(isa, rng, threads):
    a, b = _operands(rng, 67, 300, 45, False, True)
    res = []
    for n in (1, 2, 3):
        threads(n)
        res.append(ops.matmul_bf16(a, b, trans_b=True))
    for r in res[1:]:
        np.testing.assert_array_equal(r, res[0])


def test_bad_arguments(rng):
    a = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="matmul_bf16: b"):
        ops.matmul_bf16(a, np.ones((4, 2)))
    with pytest.raises(ValueError, match="matmul_bf16: inner dimensions differ"):
        ops.matmul_bf16(a, np.ones((5, 2), np.float32))
    with pytest.raises(ValueError, match="matmul_bf16: a"):
        ops.matmul_bf16(np.ones((2, 3, 4), np.float32), a.T.copy())
    with pytest.raises(ValueError, match="accumulate=True needs out"):
        ops.matmul_bf16(a, a.T.copy(), accumulate=True)
    with pytest.raises(ValueError, match="out"):
        ops.matmul_bf16(a, a.T.copy(), out=np.ones((2, 2), np.float32))


def test_native_matches_numpy_fallback(isa, rng):
    # the autograd layer's NumPy fallback (_kernels._matmul_bf16) rounds the same way; float32 sums
    # in another order: within 2 K eps32 of the terms (test_tensor's generic check is float64-tight)
    from fusegrad import _kernels as KK
    a, b = _operands(rng, 7, 33, 5, True, False)
    got, want = KK.matmul_bf16(a, b, trans_a=True), KK._matmul_bf16(a, b, trans_a=True)
    mag = np.abs(bf16_round(a)).T @ np.abs(bf16_round(b))
    assert np.all(np.abs(got - want) <= 2 * 33 * np.finfo(np.float32).eps * mag)


@pytest.mark.parametrize("M, K, N, tb", [(37, 300, 70, True), (64, 1000, 33, False), (5, 0, 3, True), (1, 1, 1, False)])
def test_kernel_bias_residual_epilogue(bf16_kernel, rng, M, K, N, tb):
    # linear's epilogue under autocast: (product + bias) + residual, the same bits as adding afterwards
    # (K = 1000 spans several K blocks of the AVX512_BF16 kernel: the epilogue goes in the last one)
    a, b = _operands(rng, M, K, N, False, tb)
    bias, res = rng.standard_normal(N).astype(np.float32), rng.standard_normal((M, N)).astype(np.float32)
    prod = ops.matmul_bf16(a, b, trans_b=tb)
    np.testing.assert_array_equal(ops.matmul_bf16(a, b, trans_b=tb, bias=bias, residual=res), (prod + bias) + res)
    np.testing.assert_array_equal(ops.matmul_bf16(a, b, trans_b=tb, bias=bias), prod + bias)
    out = np.empty((M, N), np.float32)
    assert ops.matmul_bf16(a, b, trans_b=tb, residual=res, out=out) is out
    np.testing.assert_array_equal(out, res + prod)


def test_epilogue_bad_arguments():
    a, b = np.ones((3, 4), np.float32), np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="matmul_bf16: bias cannot be combined with accumulate"):
        ops.matmul_bf16(a, b, out=np.zeros((3, 2), np.float32), accumulate=True, bias=np.ones(2, np.float32))
    with pytest.raises(ValueError, match="matmul_bf16: bias"):
        ops.matmul_bf16(a, b, bias=np.ones(3, np.float32))
    with pytest.raises(TypeError, match="matmul_bf16: residual"):
        ops.matmul_bf16(a, b, residual=np.ones((3, 2)))
    res = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="out.*residual|residual.*out"):
        ops.matmul_bf16(a, b, residual=res, out=res)
