"""Matrix products on the GPU through cuBLASLt (csrc/cuda/matmul.cu, fusegrad.cuda.matmul & co).

Here without a GPU: where libcublasLt is looked for and the error that lists it, the loader's
refusal of a library without cuBLASLt's entry points, every argument check of the launcher (all
made before anything reaches a device), the plan cache's keys, and the float32 -> bfloat16
rounding (math.h) against the CPU's, bit for bit. With a GPU (marker ``cuda``): float32, float16
and bfloat16 products, the linear layers' epilogues (bias, GELU, bias gradients) and the CuPy
fallback, against NumPy float64; float16/bfloat16 by the error-budget rule (the error against
float64 at most twice that of the naive computation in that precision)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

import fusegrad
from fusegrad import cuda, ops

built = cuda._cuda is not None
needs_module = pytest.mark.skipif(not built, reason="fusegrad._cuda is not built (no CUDA compiler at build time)")
gpu = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(not cuda.is_available(), reason=f"no GPU: {cuda.unavailable_reason()}")


# ------------------------------------------------------------------------------------------------
# Without a GPU


def test_candidates_in_documented_order(tmp_path):
    so = "libcublasLt.so.13"
    toolkit, site, ld = tmp_path / "cuda", tmp_path / "py" / "site-packages", tmp_path / "ld"
    for d in (toolkit / "lib64", site / "nvidia" / "cublas" / "lib", ld):
        d.mkdir(parents=True)
        (d / so).write_bytes(b"")
    (site / "nvidia" / "cu13" / "lib").mkdir(parents=True)  # a folder without the library: searched, not tried
    env = {"FUSEGRAD_CUBLASLT": "/explicit/libcublasLt.so.13", "CUDA_HOME": str(toolkit), "LD_LIBRARY_PATH": str(ld),
           "PATH": ""}
    files, folders = cuda.cublaslt_candidates(env, [str(site), "/not/a/site/dir"], 13)
    assert files == ["/explicit/libcublasLt.so.13", str(toolkit / "lib64" / so),
                     str(site / "nvidia" / "cublas" / "lib" / so), str(ld / so), so]
    assert str(site / "nvidia" / "cu13" / "lib") in folders
    assert folders.index(str(toolkit / "lib64")) < folders.index(str(site / "nvidia" / "cublas" / "lib")) \
        < folders.index(str(ld))
    assert len(folders) == len(set(folders))
    # nothing anywhere: only the dynamic linker's own search, with the CUDA major version's soname
    files, _ = cuda.cublaslt_candidates({"PATH": ""}, [], 14)
    assert files == ["libcublasLt.so.14"]


@needs_module
def test_loader_names_every_path_it_tried():
    with pytest.raises(RuntimeError, match=r"could not load cuBLASLt.*\n  /nonexistent/libcublasLt.so.13: .*"):
        cuda._cuda.lt_load(["/nonexistent/libcublasLt.so.13"])
    with pytest.raises(RuntimeError, match="no candidates"):
        cuda._cuda.lt_load([])


@needs_module
def test_loader_refuses_a_library_without_cublaslt():
    if cuda._cuda.lt_loaded():
        pytest.skip("cuBLASLt is already loaded (it stays loaded)")
    with pytest.raises(RuntimeError, match="libm.so.6 has no symbol cublasLtCreate"):
        cuda._cuda.lt_load(["libm.so.6"])
    assert not cuda._cuda.lt_loaded()


@needs_module
def test_missing_cublaslt_is_a_clear_error_or_a_counted_fallback(monkeypatch):
    if cuda._cuda.lt_loaded():
        pytest.skip("cuBLASLt loads here")
    monkeypatch.setitem(cuda._lt, "tried", False)
    monkeypatch.setitem(cuda._lt, "error", "")
    monkeypatch.setenv("FUSEGRAD_CUBLASLT", "/nowhere/libcublasLt.so.13")
    with pytest.raises(RuntimeError, match=r"(?s)/nowhere/libcublasLt.so.13.*folders searched for libcublasLt.so.13: "
                                           r".*FUSEGRAD_CUBLASLT"):
        cuda.load_cublaslt()
    info = cuda.matmul_info()
    assert info["cublaslt"] is None and "/nowhere/libcublasLt.so.13" in info["cublaslt_error"] and info["searched"]
    monkeypatch.setitem(cuda._opts, "backend", "auto")
    assert cuda._use_lt() is False  # auto: the CuPy fallback
    monkeypatch.setitem(cuda._opts, "backend", "cublaslt")
    with pytest.raises(RuntimeError, match="could not load cuBLASLt"):
        cuda._use_lt()


def test_backend_and_tf32_settings_are_checked(monkeypatch):
    monkeypatch.setitem(cuda._opts, "backend", "auto")
    monkeypatch.setitem(cuda._opts, "tf32", False)
    with pytest.raises(ValueError, match="set_matmul_backend: backend must be 'auto', 'cublaslt' or 'cupy'"):
        cuda.set_matmul_backend("cublas")
    cuda.set_matmul_backend("cupy")
    cuda.set_allow_tf32(True)
    assert cuda.matmul_info()["backend"] == "cupy" and cuda.matmul_info()["allow_tf32"] is True


_OK = dict(ta=False, tb=True, M=3, N=4, K=5, batch=1, sa=0, sb=0, sd=12, ab="float32", cd="float32", epi="none",
           accumulate=False, tf32=False, d=256, a=512, b=768, bias=0, aux=0, dbias=0, s=0)


def _lt(**kw):
    a = dict(_OK, **kw)
    return cuda._cuda.lt_matmul(*a.values())


@needs_module
@pytest.mark.parametrize("kw, exc, msg", [
    (dict(M=-1), ValueError, "M, N, K must be >= 0, got -1, 4, 5"),
    (dict(K=1 << 31), ValueError, "M, N, K and batch must each be below 2\\^31"),
    (dict(batch=0), ValueError, "batch must be >= 1, got 0"),
    (dict(batch=2, sd=5), ValueError, "the output's batch stride must be at least M\\*N"),
    (dict(sa=-4), ValueError, "batch strides must be >= 0"),
    (dict(ab="float64"), TypeError, "ab must be 'float32', 'float16' or 'bfloat16', got 'float64'"),
    (dict(cd="int8"), TypeError, "cd must be"),
    (dict(ab="float32", cd="bfloat16"), ValueError, "float32 operands need a float32 output"),
    (dict(ab="float16", cd="bfloat16"), ValueError, "the output type must be float32 or the operands' type"),
    (dict(epi="relu"), ValueError, "epilogue must be one of none, bias, gelu_bias, dgelu_bgrad, bgradb, got 'relu'"),
    (dict(epi="bias", batch=2, sd=24), ValueError, "epilogue 'bias' needs batch 1"),
    (dict(epi="gelu_bias", accumulate=True, bias=1024, aux=2048), ValueError, "epilogue 'gelu_bias' cannot accumulate into the output"),
    (dict(epi="bias"), ValueError, "epilogue 'bias' needs bias"),
    (dict(epi="gelu_bias", bias=1024), ValueError, "epilogue 'gelu_bias' needs aux"),
    (dict(epi="dgelu_bgrad", dbias=1024), ValueError, "epilogue 'dgelu_bgrad' needs aux"),
    (dict(epi="bgradb"), ValueError, "epilogue 'bgradb' needs dbias"),
    (dict(d=0), ValueError, "d, a and b must be device pointers"),
])
def test_launcher_checks_arguments_before_the_device(kw, exc, msg):
    with pytest.raises(exc, match="lt_matmul: " + msg):
        _lt(**kw)


@needs_module
def test_launcher_without_cublaslt_says_so():
    if cuda._cuda.lt_loaded():
        pytest.skip("cuBLASLt is loaded here")
    with pytest.raises(RuntimeError, match="cuBLASLt is not loaded"):
        _lt()


def _key(**kw):
    a = dict(ta=False, tb=False, M=64, N=32, K=16, batch=1, sa=0, sb=0, sd=0, ab="float32", cd="float32", epi="none",
             tf32=False, al=(256, 256, 256), device=0)
    a.update(kw)
    return cuda._cuda._lt_key(*a.values())


@needs_module
def test_plan_cache_keys_tell_apart_everything_a_plan_depends_on():
    base = _key()
    assert base == _key()  # the same problem: one plan, asked of the heuristic once
    variants = [dict(ta=True), dict(tb=True), dict(M=65), dict(N=33), dict(K=17), dict(batch=2, sd=64 * 32),
                dict(batch=2, sa=1024, sd=64 * 32), dict(ab="float16", cd="float16"),
                dict(ab="bfloat16", cd="float32"), dict(ab="bfloat16", cd="bfloat16"), dict(epi="bias"),
                dict(epi="bgradb"), dict(epi="gelu_bias"), dict(epi="dgelu_bgrad"), dict(tf32=True),
                dict(al=(16, 256, 256)), dict(al=(256, 16, 256)), dict(al=(256, 256, 8)), dict(device=1)]
    keys = [_key(**v) for v in variants]
    assert base not in keys and len(set(keys)) == len(keys), keys
    # TF32 applies to float32 operands only: it does not split the plans of bf16 products
    assert _key(ab="bfloat16", cd="float32", tf32=True) == _key(ab="bfloat16", cd="float32")
    assert cuda._cuda.lt_plan_count() >= 0


def _emulate_cublaslt(q, a_buf, b_buf, d_buf, bias=None, aux=None):
    """cuBLASLt's documented column-major semantics on flat NumPy buffers: D = op(A) op(B) (+ epilogue),
    where A reads our b's buffer and B our a's. Returns (d_buf, aux, dbias)."""
    def read(lay, buf, i):
        idx = i * lay["stride"] + np.arange(lay["rows"])[:, None] + np.arange(lay["cols"])[None, :] * lay["ld"]
        return buf[idx]
    op = lambda x, o: x.T if o == 1 else x  # noqa: E731
    d_buf = d_buf.copy()
    dbias = None
    for i in range(q["d"]["batch"]):
        A, B = op(read(q["a"], b_buf, i), q["opa"]), op(read(q["b"], a_buf, i), q["opb"])
        assert A.shape == (q["m"], q["k"]) and B.shape == (q["k"], q["n"])
        D = A @ B
        e = q["epilogue"]
        if e in (4, 164):  # BIAS, GELU_AUX_BIAS: one bias value per row of D
            D = D + bias[:, None]
        if e == 164:
            aux = D.copy()
            D = _gelu_tanh64(D)
        if e == 208:  # DGELU_BGRAD: aux (m, n), column-major with ld aux_ld; bias gradient per row of D
            D = D * _gelu_tanh_grad64(aux)
            dbias = D.sum(axis=1)
        if e == 512:  # BGRADB: op(B) summed over k, one per column of D
            dbias = B.sum(axis=0)
        lay = q["d"]
        idx = i * lay["stride"] + np.arange(lay["rows"])[:, None] + np.arange(lay["cols"])[None, :] * lay["ld"]
        d_buf[idx] = D
    return d_buf, aux, dbias


@needs_module
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("M, N, K, nb, share", [(1, 1, 1, 1, None), (3, 5, 7, 1, None), (4, 6, 3, 3, None),
                                                (5, 2, 4, 2, "a"), (2, 3, 9, 4, "b")])
def test_row_major_products_map_onto_cublaslt_column_major(ta, tb, M, N, K, nb, share):
    # our row-major problem, asked of cuBLASLt as its column-major one, gives op(a) @ op(b) row-major
    rng = np.random.default_rng(M * 100 + N * 10 + K)
    a = rng.standard_normal(((1 if share == "a" else nb),) + ((K, M) if ta else (M, K)))
    b = rng.standard_normal(((1 if share == "b" else nb),) + ((N, K) if tb else (K, N)))
    sa, sb = (0 if share == "a" else M * K), (0 if share == "b" else K * N)
    q = cuda._cuda._lt_problem(ta, tb, M, N, K, nb, sa, sb, M * N, "float32", "float32", "none", False)
    d, _, _ = _emulate_cublaslt(q, a.ravel(), b.ravel(), np.zeros(nb * M * N))
    A, B = (np.swapaxes(a, -1, -2) if ta else a), (np.swapaxes(b, -1, -2) if tb else b)
    np.testing.assert_allclose(d.reshape(nb, M, N), A @ B, rtol=1e-12)
    assert q["compute"] == 68  # CUBLAS_COMPUTE_32F: no TF32 unless asked
    assert cuda._cuda._lt_problem(ta, tb, M, N, K, nb, sa, sb, M * N, "float32", "float32", "none", True)["compute"] == 77


@needs_module
def test_epilogues_map_onto_the_linear_layers():
    rng = np.random.default_rng(11)
    N, K, O = 5, 7, 3
    x, w, bias = rng.standard_normal((N, K)), rng.standard_normal((O, K)), rng.standard_normal(O)
    # forward: y = x w^T + b (bias epilogue, one value per output column)
    q = cuda._cuda._lt_problem(False, True, N, O, K, 1, 0, 0, N * O, "float32", "float32", "bias", False)
    y, _, _ = _emulate_cublaslt(q, x.ravel(), w.ravel(), np.zeros(N * O), bias=bias)
    np.testing.assert_allclose(y.reshape(N, O), x @ w.T + bias, rtol=1e-12)
    # GELU_AUX_BIAS: h = gelu(pre), pre = x w^T + b stored as aux with ld O
    q = cuda._cuda._lt_problem(False, True, N, O, K, 1, 0, 0, N * O, "float32", "float32", "gelu_bias", False)
    assert q["aux_ld"] == O and q["epilogue"] == 164
    h, pre, _ = _emulate_cublaslt(q, x.ravel(), w.ravel(), np.zeros(N * O), bias=bias)
    np.testing.assert_allclose(pre.T, x @ w.T + bias, rtol=1e-12)  # column-major (O, N) = row-major (N, O)
    np.testing.assert_allclose(h.reshape(N, O), _gelu_tanh64(x @ w.T + bias), rtol=1e-12)
    # weight gradient dw = dy^T x with BGRADB: db = column sums of dy
    dy = rng.standard_normal((N, O))
    q = cuda._cuda._lt_problem(True, False, O, K, N, 1, 0, 0, O * K, "float32", "float32", "bgradb", False)
    dw, _, db = _emulate_cublaslt(q, dy.ravel(), x.ravel(), np.zeros(O * K))
    np.testing.assert_allclose(dw.reshape(O, K), dy.T @ x, rtol=1e-12)
    np.testing.assert_allclose(db, dy.sum(0), rtol=1e-12)
    # DGELU_BGRAD on the next layer's dx product: dpre = (dy2 @ w2) * gelu'(pre), dbias_pre = its column sums
    w2, dy2 = rng.standard_normal((4, O)), rng.standard_normal((N, 4))
    q = cuda._cuda._lt_problem(False, False, N, O, 4, 1, 0, 0, N * O, "float32", "float32", "dgelu_bgrad", False)
    dpre, _, dbp = _emulate_cublaslt(q, dy2.ravel(), w2.ravel(), np.zeros(N * O), aux=pre)
    want = (dy2 @ w2) * _gelu_tanh_grad64(x @ w.T + bias)
    np.testing.assert_allclose(dpre.reshape(N, O), want, rtol=1e-12)
    np.testing.assert_allclose(dbp, want.sum(0), rtol=1e-12)


def _bf16_sweep():
    rng = np.random.default_rng(0)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-40, -1e-40, 3.4e38, -3.4e38,
                         1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20], np.float32)
    ties = (np.arange(1 << 12, dtype=np.uint32) << 16 | 0x8000).view(np.float32)  # exactly halfway, odd and even
    rand = rng.integers(0, 1 << 32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([specials, ties, rand])


@needs_module
def test_bf16_rounding_matches_the_cpu_bit_for_bit():
    x = _bf16_sweep()
    np.testing.assert_array_equal(cuda._cuda._host_bf16(x), fusegrad._C._bf16_from_float32(x))


# ------------------------------------------------------------------------------------------------
# On a GPU (tools/gpu_check.sh)


def _cp():
    import cupy
    return cupy


def _np(a):
    return _cp().asnumpy(a) if not isinstance(a, np.ndarray) else a


def _round(x, dt):
    """x rounded to dtype dt ('float32', 'float16', 'bfloat16'), as float64."""
    x = np.asarray(x, np.float32)
    if dt == "bfloat16":
        return fusegrad._C._bf16_to_float32(fusegrad._C._bf16_from_float32(np.ascontiguousarray(x))).astype(np.float64)
    return x.astype(dt).astype(np.float64)


def _budget(got, want64, naive):
    """The error-budget rule: max error against float64 at most 2x the naive computation's (plus a
    few float32 ulps of the result's scale, for results the naive computation gets exact)."""
    err = np.abs(np.asarray(got, np.float64) - want64).max(initial=0)
    base = np.abs(np.asarray(naive, np.float64) - want64).max(initial=0)
    tiny = 4 * np.finfo(np.float32).eps * max(1.0, np.abs(want64).max(initial=0))
    assert err <= 2 * base + tiny, f"error {err:.3g} > 2 x naive {base:.3g} (+{tiny:.2g})"


def _seq_sum(x):
    """The naive column sums: one float32 accumulator per column, rows added in order."""
    return np.cumsum(np.asarray(x, np.float32), axis=0, dtype=np.float32)[-1]


def _naive(a, b, dt):
    """The naive product in precision dt: operands rounded to dt, float32 sums, result rounded to dt."""
    a32, b32 = _round(a, dt).astype(np.float32), _round(b, dt).astype(np.float32)
    return _round(a32 @ b32, dt if dt != "bfloat16" else "float32")


MM_SHAPES = [(1, 1, 1), (7, 33, 5), (37, 129, 65), (128, 256, 64), (1000, 127, 33), (513, 1024, 768)]


@pytest.fixture
def lt_counts():
    """matmul_counts before the test, and whether cuBLASLt is in use."""
    before = dict(cuda.matmul_counts)
    return before, cuda._use_lt()


def _ran_on_lt(before, using_lt):
    if using_lt:
        assert cuda.matmul_counts["cublaslt"] > before.get("cublaslt", 0)


@gpu
@needs_gpu
@pytest.mark.parametrize("M, K, N", MM_SHAPES)
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gpu_matmul_float32(M, K, N, ta, tb, lt_counts):
    cp = _cp()
    rng = np.random.default_rng(M + K + N)
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    A, B = (a.T if ta else a), (b.T if tb else b)
    want = A.astype(np.float64) @ B.astype(np.float64)
    got = ops.matmul(cp.asarray(a), cp.asarray(b), trans_a=ta, trans_b=tb)
    _budget(_np(got), want, A @ B)  # float32 without TF32: within 2x of float32 sums
    out = cp.ones((M, N), cp.float32)
    ops.matmul(cp.asarray(a), cp.asarray(b), trans_a=ta, trans_b=tb, out=out, accumulate=True)
    _budget(_np(out), want + 1, A @ B + 1)
    _ran_on_lt(*lt_counts)


@gpu
@needs_gpu
@pytest.mark.parametrize("ba, bb", [((3,), (3,)), ((2, 3), (2, 3)), ((4,), ()), ((), (5,))])
def test_gpu_matmul_batched(ba, bb, lt_counts):
    cp = _cp()
    rng = np.random.default_rng(1)
    a = rng.standard_normal(ba + (17, 40)).astype(np.float32)
    b = rng.standard_normal(bb + (40, 23)).astype(np.float32)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    _budget(_np(ops.matmul(cp.asarray(a), cp.asarray(b))), want, np.matmul(a, b))
    _ran_on_lt(*lt_counts)


@gpu
@needs_gpu
@pytest.mark.parametrize("M, K, N", MM_SHAPES)
def test_gpu_matmul_float16_and_bfloat16(M, K, N, lt_counts):
    cp = _cp()
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    h = ops.matmul(cp.asarray(a.astype(np.float16)), cp.asarray(b.astype(np.float16)))
    assert h.dtype == np.float16
    _budget(_np(h), want, _naive(a, b, "float16"))
    g = ops.matmul_bf16(cp.asarray(a), cp.asarray(b))
    assert g.dtype == np.float32
    _budget(_np(g), want, _naive(a, b, "bfloat16"))
    # the same function as the CPU's matmul_bf16 (exact products of bf16 values, float32 sums)
    np.testing.assert_allclose(_np(g), ops.matmul_bf16(a, b), rtol=1e-5, atol=1e-5 * math.sqrt(K))
    _ran_on_lt(*lt_counts)


def _gelu_tanh64(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _gelu_tanh_grad64(x):
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
    t = np.tanh(u)
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x * x)


@gpu
@needs_gpu
@pytest.mark.parametrize("N, K, O", [(1, 1, 1), (37, 129, 65), (64, 768, 3072), (1000, 64, 8)])
@pytest.mark.parametrize("dt", ["float32", "float16"])
def test_gpu_linear_epilogues(N, K, O, dt, lt_counts):
    cp = _cp()
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((N, K)).astype(np.float32), rng.standard_normal((O, K)).astype(np.float32) / 8
    b, r = rng.standard_normal(O).astype(np.float32), rng.standard_normal((N, O)).astype(np.float32)
    dy = rng.standard_normal((N, O)).astype(np.float32)
    X, W, Bb, R, DY = (_round(v, dt) for v in (x, w, b, r, dy))  # the operands as the GPU holds them
    dev = lambda v: cp.asarray(v.astype(dt))  # noqa: E731
    naive = lambda v: _round(v.astype(np.float32), dt)  # noqa: E731 - float32 math, rounded to dt
    x32, w32, b32, r32, dy32 = (v.astype(np.float32) for v in (X, W, Bb, R, DY))

    y = ops.linear_forward(dev(x), dev(w), dev(b), dev(r))
    _budget(_np(y), R + (X @ W.T + Bb), naive(r32 + (x32 @ w32.T + b32)))
    dx, dw, db = ops.linear_backward(dev(dy), dev(x), dev(w))
    _budget(_np(dx), DY @ W, naive(dy32 @ w32))
    _budget(_np(dw), DY.T @ X, naive(dy32.T @ x32))
    _budget(_np(db), DY.sum(0), naive(_seq_sum(dy32)))
    dx2, dw2, db2 = ops.linear_backward(dev(dy), dev(x), dev(w))  # same inputs, same bits
    for u, v in ((dx, dx2), (dw, dw2), (db, db2)):
        np.testing.assert_array_equal(_np(u), _np(v))

    # GELU (tanh) epilogues: h = gelu(x w^T + b), then the next layer's backward through it
    h, pre = cuda.linear_gelu_forward(dev(x), dev(w), dev(b))
    PRE = X @ W.T + Bb
    _budget(_np(pre), PRE, naive(x32 @ w32.T + b32))
    pre32 = (x32 @ w32.T + b32)
    gelu32 = _np(cuda.gelu_forward(cp.asarray(pre32), "tanh"))
    _budget(_np(h), _gelu_tanh64(PRE), naive(gelu32))
    w2 = rng.standard_normal((5, O)).astype(np.float32)
    dy2 = rng.standard_normal((N, 5)).astype(np.float32)
    W2, DY2 = _round(w2, dt), _round(dy2, dt)
    Hh = _round(_np(h), dt)
    dpre, dw2_, db2_, dbp = cuda.linear_backward_gelu(dev(dy2), cp.asarray(_np(h)), dev(w2), pre)
    PREg = _round(_np(pre), dt)
    want_dpre = (DY2 @ W2) * _gelu_tanh_grad64(PREg)
    naive_dpre = naive((DY2.astype(np.float32) @ W2.astype(np.float32)) * _gelu_tanh_grad64(PREg).astype(np.float32))
    _budget(_np(dpre), want_dpre, naive_dpre)
    _budget(_np(dbp), want_dpre.sum(0), naive(_seq_sum(naive_dpre)))
    _budget(_np(dw2_), DY2.T @ Hh, naive(DY2.T.astype(np.float32) @ Hh.astype(np.float32)))
    _budget(_np(db2_), DY2.sum(0), naive(_seq_sum(DY2)))
    _ran_on_lt(*lt_counts)


@gpu
@needs_gpu
@pytest.mark.parametrize("M, K, N", [(64, 1 << 16, 64), (8, 8192, 4096)])
def test_gpu_concurrent_streams_keep_their_workspaces(M, K, N, lt_counts):
    # long-K products (the shapes whose algorithms take a split-K workspace) launched alternately on
    # two streams, so they run at once: each gives what it gives alone (each product has its own
    # workspace, allocated in stream order; a shared one mixes another product's partial sums in)
    cp = _cp()
    rng = np.random.default_rng(12)
    pairs = [tuple(cp.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((M, K), (K, N)))
             for _ in range(4)]
    alone = [ops.matmul(a, b) for a, b in pairs]
    cp.cuda.get_current_stream().synchronize()
    streams = [cp.cuda.Stream(non_blocking=True) for _ in range(2)]
    got = []
    for rep in range(8):
        for i, (a, b) in enumerate(pairs):
            with streams[(i + rep) % 2]:
                got.append((i, ops.matmul(a, b)))
    for s in streams:
        s.synchronize()
    for i, g in got:
        a, b = pairs[i]
        # the worst-case rounding of two float32 sums of K products (another reduction order is allowed)
        tol = 2 * K * 2.0 ** -24 * float(cp.abs(a).max()) * float(cp.abs(b).max())
        err = float(cp.abs(g - alone[i]).max())
        assert err <= tol, f"product {i} differs by {err:.3g} (> {tol:.3g}) when run beside another stream's"
    _ran_on_lt(*lt_counts)


@gpu
@needs_gpu
def test_gpu_cupy_fallback_and_tf32_opt_in(monkeypatch):
    cp = _cp()
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((300, 500)).astype(np.float32), rng.standard_normal((500, 200)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    monkeypatch.setitem(cuda._opts, "backend", "cupy")
    n = cuda.matmul_counts["cupy (cupy)"]
    _budget(_np(ops.matmul(cp.asarray(a), cp.asarray(b))), want, a @ b)
    g = ops.matmul_bf16(cp.asarray(a), cp.asarray(b))  # the fallback computes the same function
    _budget(_np(g), want, _naive(a, b, "bfloat16"))
    assert cuda.matmul_counts["cupy (cupy)"] == n + 2
    monkeypatch.setitem(cuda._opts, "backend", "auto")
    if not cuda._use_lt():
        pytest.skip(f"cuBLASLt is not loadable here: {cuda.matmul_info()['cublaslt_error']}")
    monkeypatch.setitem(cuda._opts, "tf32", True)
    t = _np(ops.matmul(cp.asarray(a), cp.asarray(b)))
    # TF32 rounds operands to 10 explicit mantissa bits: errors ~2^-11 relative per product
    assert np.abs(t - want).max() <= 4 * 2.0 ** -11 * np.abs(a).max() * np.abs(b).max() * math.sqrt(500)


@gpu
@needs_gpu
def test_gpu_product_bad_input():
    cp = _cp()
    with pytest.raises(TypeError, match="matmul: a and b must have one dtype"):
        ops.matmul(cp.zeros((2, 3), cp.float32), cp.zeros((3, 2), cp.float16))
    with pytest.raises(TypeError, match="matmul: a must have dtype float32 or float16"):
        ops.matmul(cp.zeros((2, 3), cp.float64), cp.zeros((3, 2), cp.float64))
    with pytest.raises(ValueError, match="matmul: inner dimensions differ: 3 and 4"):
        ops.matmul(cp.zeros((2, 3), cp.float32), cp.zeros((4, 2), cp.float32))
    with pytest.raises(ValueError, match="linear_forward: b must have shape \\(2,\\)"):
        ops.linear_forward(cp.zeros((2, 3), cp.float32), cp.zeros((2, 3), cp.float32), cp.zeros(3, cp.float32))
    with pytest.raises(TypeError, match="linear_gelu_forward: b is required"):
        cuda.linear_gelu_forward(cp.zeros((2, 3), cp.float32), cp.zeros((2, 3), cp.float32), None)


@gpu
@needs_gpu
def test_gpu_autocast_linear_runs_bf16_products():
    import fusegrad as fg
    from fusegrad import nn
    rng = np.random.default_rng(9)
    m = nn.Linear(96, 40)
    x = rng.standard_normal((33, 96)).astype(np.float32)
    with fg.amp.autocast():
        want = m(fg.tensor(x)).numpy()
        md = m.to("cuda")
        y = md(fg.tensor(x).to("cuda"))
        y.sum().backward()
    np.testing.assert_allclose(y.cpu().numpy(), want, rtol=1e-5, atol=1e-5 * math.sqrt(96))
    assert md.weight.grad is not None and md.weight.grad.device == "cuda"


def test_cublaslt_env_override_is_tried_first(monkeypatch):
    monkeypatch.setenv("FUSEGRAD_CUBLASLT", "/x/libcublasLt.so.13")
    files, _ = cuda.cublaslt_candidates(major=13)
    assert files[0] == "/x/libcublasLt.so.13" and files[-1] == "libcublasLt.so.13"
    assert os.environ["FUSEGRAD_CUBLASLT"] == "/x/libcublasLt.so.13"


# ------------------------------------------------------------------------------------------------
# The Python layer's product paths without a GPU: fusegrad.cuda's products run against a stand-in
# for CuPy (NumPy arrays with .data.ptr) and for the launchers (cuBLASLt emulated by its documented
# column-major semantics, on the problem _lt_problem builds), so the row-major bookkeeping, the
# epilogue arguments and the fallbacks are checked here; the GPU run checks the library itself.

class _FakeArray(np.ndarray):
    class _Ptr:
        def __init__(self, p):
            self.ptr = p

    class _Dev:
        id = 0

    @property
    def data(self):  # noqa: D401 - CuPy's MemoryPointer stand-in
        return self._Ptr(self.__array_interface__["data"][0])

    device = _Dev()


class _FakeCupy:
    ndarray = _FakeArray
    float32, float16, uint16 = np.float32, np.float16, np.uint16

    class cuda:  # noqa: N801
        class _Stream:
            ptr = 0

        @staticmethod
        def get_current_stream():
            return _FakeCupy.cuda._Stream()

        class Device:
            id = 0

    def __init__(self):
        self.live = {}

    def _reg(self, a):
        a = np.asarray(a).view(_FakeArray)
        self.live[a.__array_interface__["data"][0]] = a
        return a

    def asarray(self, a):
        return self._reg(np.ascontiguousarray(a))

    def empty(self, shape, dtype="float32"):
        return self._reg(np.full(shape, np.nan if np.dtype(dtype).kind == "f" else 0, dtype))

    def zeros(self, shape, dtype="float32"):
        return self._reg(np.zeros(shape, dtype))

    def ascontiguousarray(self, a, dtype=None):
        return self._reg(np.array(a, dtype=dtype, order="C"))

    def swapaxes(self, a, i, j):
        return np.swapaxes(a, i, j)

    def matmul(self, a, b):
        return self._reg(np.matmul(np.asarray(a), np.asarray(b)))

    def arr(self, ptr, n, dtype):
        for base, a in self.live.items():
            if base <= ptr < base + a.nbytes:
                flat = np.asarray(a).reshape(-1).view(dtype)
                off = (ptr - base) // flat.itemsize
                return flat[off:off + n]
        raise AssertionError(f"pointer {ptr:#x} is not a live array")


class _FakeLaunchers:
    """fusegrad._cuda's launchers on _FakeCupy memory; lt_matmul emulates cuBLASLt (float64 math,
    results stored in the output type) unless `refuse` names epilogues to say 'no algorithm' for."""

    def __init__(self, cp, refuse=()):
        self.cp, self.refuse, self.calls = cp, set(refuse), []
        self.real = cuda._cuda

    def __getattr__(self, name):
        return getattr(self.real, name)

    def lt_loaded(self):
        return True

    def _vals(self, ptr, n, dt):
        raw = self.cp.arr(ptr, n, {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dt])
        return fusegrad._C._bf16_to_float32(raw).astype(np.float64) if dt == "bfloat16" else raw.astype(np.float64)

    def _store(self, ptr, vals, dt):
        n = vals.size
        if dt == "bfloat16":
            self.cp.arr(ptr, n, np.uint16)[:] = fusegrad._C._bf16_from_float32(vals.astype(np.float32))
        else:
            self.cp.arr(ptr, n, np.dtype(dt))[:] = vals

    def lt_matmul(self, ta, tb, M, N, K, batch, sa, sb, sd, ab, cd, epi, acc, tf32, d, a, b, bias, aux, dbias, s):
        self.calls.append(epi)
        if epi in self.refuse:
            return "no algorithm (refused by the test)"
        q = self.real._lt_problem(ta, tb, M, N, K, batch, sa, sb, sd, ab, cd, epi, tf32)
        size = lambda lay: (lay["batch"] - 1) * lay["stride"] + lay["ld"] * lay["cols"]  # noqa: E731
        A, B = self._vals(a, size(q["b"]), ab), self._vals(b, size(q["a"]), ab)
        D0 = self._vals(d, size(q["d"]), cd)
        bv = self._vals(bias, q["m"], cd) if epi in ("bias", "gelu_bias") else None
        av = self._vals(aux, M * N, cd).reshape(q["n"], q["m"]).T if epi == "dgelu_bgrad" else None
        out, auxo, db = _emulate_cublaslt(q, A, B, np.zeros_like(D0), bias=bv, aux=av)
        self._store(d, out + (D0 if acc else 0), cd)
        if epi == "gelu_bias":
            self._store(aux, auxo.T.reshape(-1), cd)
        if db is not None:
            self._store(dbias, db, cd)
        return ""

    def to_bf16(self, y, x, n, s):
        self.cp.arr(y, n, np.uint16)[:] = fusegrad._C._bf16_from_float32(np.ascontiguousarray(self.cp.arr(x, n, np.float32)))

    def bf16_to_f32(self, y, x, n, s):
        self.cp.arr(y, n, np.float32)[:] = fusegrad._C._bf16_to_float32(np.ascontiguousarray(self.cp.arr(x, n, np.uint16)))

    def add_bias_residual(self, y, b, r, N, O, s):
        Y = self.cp.arr(y, N * O, np.float32).reshape(N, O)
        if b:
            Y += self.cp.arr(b, O, np.float32)
        if r:
            Y += self.cp.arr(r, N * O, np.float32).reshape(N, O)

    def column_sums(self, out, work, x, N, O, s):
        self.cp.arr(out, O, np.float32)[:] = self.cp.arr(x, N * O, np.float32).reshape(N, O).sum(0)

    def act_forward(self, kind, y, x, n, s):
        assert kind == "gelu_tanh"
        self.cp.arr(y, n, np.float32)[:] = _gelu_tanh64(self.cp.arr(x, n, np.float32).astype(np.float64))

    def act_backward(self, kind, dx, dy, x, n, s):
        assert kind == "gelu_tanh"
        g = _gelu_tanh_grad64(self.cp.arr(x, n, np.float32).astype(np.float64))
        self.cp.arr(dx, n, np.float32)[:] = self.cp.arr(dy, n, np.float32) * g


@pytest.fixture(params=[(), ("bias", "gelu_bias", "dgelu_bgrad", "bgradb", "none")], ids=["cublaslt", "refused"])
def emulated(request, monkeypatch):
    if not built:
        pytest.skip("fusegrad._cuda is not built")
    cp = _FakeCupy()
    fake = _FakeLaunchers(cp, request.param)
    monkeypatch.setattr(cuda, "_cupy", lambda: cp)
    monkeypatch.setattr(cuda, "_cuda", fake)
    monkeypatch.setitem(cuda._opts, "backend", "auto")
    return cp, fake


def test_emulated_products_and_linear_layers(emulated):
    cp, fake = emulated
    rng = np.random.default_rng(12)
    for (M, K, N), ta, tb in [((5, 7, 3), False, False), ((4, 9, 8), True, False), ((6, 2, 16), False, True),
                              ((3, 8, 8), True, True)]:
        a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
        A, B = (a.T if ta else a).astype(np.float64), (b.T if tb else b).astype(np.float64)
        got = cuda.matmul(cp.asarray(a), cp.asarray(b), ta, tb)
        np.testing.assert_allclose(np.asarray(got), A @ B, rtol=1e-5, atol=1e-5)
        out = cp.asarray(np.ones((M, N), np.float32))
        cuda.matmul(cp.asarray(a), cp.asarray(b), ta, tb, out=out, accumulate=True)
        np.testing.assert_allclose(np.asarray(out), A @ B + 1, rtol=1e-5, atol=1e-5)
        g = cuda.matmul_bf16(cp.asarray(a), cp.asarray(b), ta, tb)
        np.testing.assert_allclose(np.asarray(g), ops.matmul_bf16(a, b, ta, tb), rtol=1e-5, atol=1e-5)
        bits = cuda.matmul_bf16(cp.asarray(fusegrad._C._bf16_from_float32(a)),
                                cp.asarray(fusegrad._C._bf16_from_float32(b)), ta, tb)
        assert bits.dtype == np.uint16
        np.testing.assert_array_equal(np.asarray(bits), fusegrad._C._bf16_from_float32(ops.matmul_bf16(a, b, ta, tb)))
    # batched: equal batch shapes, and a 2-D operand shared by the batch
    a3, b2 = rng.standard_normal((3, 4, 5)).astype(np.float32), rng.standard_normal((5, 6)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(cuda.matmul(cp.asarray(a3), cp.asarray(b2))), a3 @ b2, rtol=1e-5, atol=1e-5)
    b3 = rng.standard_normal((3, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(cuda.matmul(cp.asarray(a3), cp.asarray(b3), False, False)),
                               a3 @ b3, rtol=1e-5, atol=1e-5)

    N, K, O = 6, 5, 8
    x, w = rng.standard_normal((N, K)).astype(np.float32), rng.standard_normal((O, K)).astype(np.float32)
    bias, r = rng.standard_normal(O).astype(np.float32), rng.standard_normal((N, O)).astype(np.float32)
    dy = rng.standard_normal((N, O)).astype(np.float32)
    c = lambda v: cp.asarray(v)  # noqa: E731
    np.testing.assert_allclose(np.asarray(cuda.linear_forward(c(x), c(w), c(bias), c(r))),
                               ops.linear_forward(x, w, bias, r), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(cuda.linear_forward(c(x), c(w))), x @ w.T, rtol=1e-5, atol=1e-5)
    for u, v in zip(cuda.linear_backward(c(dy), c(x), c(w)), ops.linear_backward(dy, x, w)):
        np.testing.assert_allclose(np.asarray(u), v, rtol=1e-5, atol=1e-5)
    g = cuda.matmul_bf16(c(x), c(w), trans_b=True, bias=c(bias), residual=c(r))  # autocast's linear
    np.testing.assert_allclose(np.asarray(g), ops.matmul_bf16(x, w, trans_b=True, bias=bias, residual=r),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="matmul_bf16: bias and residual cannot be combined with accumulate"):
        cuda.matmul_bf16(c(x), c(w), trans_b=True, out=c(r), accumulate=True, bias=c(bias))
    h, pre = cuda.linear_gelu_forward(c(x), c(w), c(bias))
    PRE = x.astype(np.float64) @ w.T + bias
    np.testing.assert_allclose(np.asarray(pre), PRE, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(h), _gelu_tanh64(PRE), rtol=1e-5, atol=1e-5)
    w2, dy2 = rng.standard_normal((3, O)).astype(np.float32), rng.standard_normal((N, 3)).astype(np.float32)
    dpre, dw2, db2, dbp = cuda.linear_backward_gelu(c(dy2), h, c(w2), pre)
    want = (dy2.astype(np.float64) @ w2) * _gelu_tanh_grad64(PRE)
    np.testing.assert_allclose(np.asarray(dpre), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dbp), want.sum(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw2), dy2.T @ np.asarray(h), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(db2), dy2.sum(0), rtol=1e-5, atol=1e-5)
    # fp16 linear through the same calls
    y16 = cuda.linear_forward(c(x.astype(np.float16)), c(w.astype(np.float16)), c(bias.astype(np.float16)))
    assert y16.dtype == np.float16
    np.testing.assert_allclose(np.asarray(y16), x @ w.T + bias, rtol=2e-2, atol=2e-2)
    if fake.refuse:
        assert set(fake.calls) <= fake.refuse
        assert any(k.startswith("fallback") for k in cuda.matmul_counts)
    else:
        assert {"bias", "bgradb", "gelu_bias", "dgelu_bgrad", "none"} <= set(fake.calls)
