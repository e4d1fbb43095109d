"""fusegrad.ops on foreign arrays: PyTorch CPU tensors in -> tensors out without copies, other
DLPack / array-interface objects, in-place arguments never silently copied, CUDA arrays routed to
fusegrad._cuda (a clear error in CPU-only installs), and the NumPy fast path unchanged."""
from __future__ import annotations

import numpy as np
import pytest

import fusegrad.ops as ops
from fusegrad import _C
from fusegrad.ops import _Converted, _from_numpy, _to_numpy

torch = pytest.importorskip("torch")


def need(*names):
    missing = [n for n in names if not hasattr(ops, n)]
    if missing:
        pytest.skip(f"kernel not built yet: fusegrad.ops.{', '.join(missing)}")


def _np(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ----- the public surface -----
def test_all_kernels_wrapped_with_docstrings():
    assert ops.__all__ == sorted(ops.__all__)
    assert "relu_forward" in ops.__all__ and "get_num_threads" not in ops.__all__
    for name in ops.__all__:
        f = getattr(ops, name)
        assert f.__name__ == name and f.__module__ == "fusegrad.ops"
        assert f.kernel is getattr(_C, name)
        assert f.__doc__ and f.__doc__.startswith(name + "(")


def test_numpy_fast_path_unchanged():
    x = _np(33, 7)
    y = ops.relu_forward(x)
    assert type(y) is np.ndarray and np.array_equal(y, np.maximum(x, 0))
    with pytest.raises(TypeError, match=r"relu_forward: x must be float32 or float64, got float16"):
        ops.relu_forward(x.astype(np.float16))
    with pytest.raises(TypeError, match=r"relu_forward: x must be a numpy.ndarray, got list"):
        ops.relu_forward([1.0, 2.0])
    with pytest.raises(ValueError, match=r"relu_forward: x must be C-contiguous"):
        ops.relu_forward(x.T)


# ----- torch in -> torch out, same numbers as the NumPy path -----
def _same(a, b):
    """torch result a equals NumPy result b exactly (same kernel, same inputs)."""
    if isinstance(b, tuple):
        assert isinstance(a, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
        return
    assert isinstance(a, torch.Tensor), type(a)
    assert a.dtype == torch.from_numpy(np.asarray(b)).dtype
    np.testing.assert_array_equal(a.numpy(), b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["relu", "gelu", "sigmoid", "tanh", "softmax", "log_softmax"])
def test_unary_torch_roundtrip(name, dtype):
    need(f"{name}_forward", f"{name}_backward")
    x, dy = _np(7, 33, dtype=dtype), _np(7, 33, dtype=dtype, seed=1)
    fwd, bwd = getattr(ops, f"{name}_forward"), getattr(ops, f"{name}_backward")
    y = fwd(x)
    _same(fwd(torch.from_numpy(x)), y)
    second = x if name in ("relu", "gelu") else y
    _same(bwd(torch.from_numpy(dy), torch.from_numpy(second)), bwd(dy, second))


def test_layernorm_linear_matmul_torch():
    need("layernorm_forward", "layernorm_backward", "linear_forward", "linear_backward", "matmul")
    T = torch.from_numpy
    x, w, b, dy = _np(5, 127), _np(127, seed=1), _np(127, seed=2), _np(5, 127, seed=3)
    y, mean, rstd = ops.layernorm_forward(x, w, b, 1e-5)
    _same(ops.layernorm_forward(T(x), T(w), T(b), 1e-5), (y, mean, rstd))
    _same(ops.layernorm_backward(T(dy), T(x), T(w), T(mean), T(rstd)), ops.layernorm_backward(dy, x, w, mean, rstd))
    W, bb, dz = _np(33, 127, seed=4), _np(33, seed=5), _np(5, 33, seed=6)
    _same(ops.linear_forward(T(x), T(W), T(bb)), ops.linear_forward(x, W, bb))
    _same(ops.linear_backward(T(dz), T(x), T(W)), ops.linear_backward(dz, x, W))
    _same(ops.matmul(T(x), T(W), trans_b=True), ops.matmul(x, W, trans_b=True))


def test_cross_entropy_embedding_mse_attention_torch():
    need("cross_entropy_forward", "cross_entropy_backward", "attention_forward", "attention_backward")
    T = torch.from_numpy
    logits, tg = _np(7, 33), np.array([1, 2, -100, 32, 0, 5, 6], dtype=np.int64)
    loss, lse = ops.cross_entropy_forward(logits, tg)
    tl, tlse = ops.cross_entropy_forward(T(logits), T(tg))
    assert isinstance(tl, torch.Tensor) and tl.dim() == 0 and float(tl) == float(loss)
    _same(tlse, lse)
    _same(ops.cross_entropy_backward(T(logits), T(tg), T(lse), torch.tensor(1.0)),
          ops.cross_entropy_backward(logits, tg, lse, 1.0))
    ids, table = np.array([[3, 0, 6]], dtype=np.int64), _np(7, 5)
    _same(ops.embedding_forward(T(ids), T(table)), ops.embedding_forward(ids, table))
    dout = _np(1, 3, 5, seed=2)
    _same(ops.embedding_backward(T(dout), T(ids), 7), ops.embedding_backward(dout, ids, 7))
    _same(ops.mse_forward(T(logits), T(logits + 1)), ops.mse_forward(logits, logits + 1))
    q, k, v = _np(2, 4, 7, 8), _np(2, 2, 9, 8, seed=1), _np(2, 2, 9, 8, seed=2)
    o, lse = ops.attention_forward(q, k, v, causal=True)
    _same(ops.attention_forward(T(q), T(k), T(v), causal=True), (o, lse))
    do = _np(2, 4, 7, 8, seed=3)
    _same(ops.attention_backward(T(do), T(q), T(k), T(v), T(o), T(lse), causal=True),
          ops.attention_backward(do, q, k, v, o, lse, causal=True))


# ----- zero copy -----
def test_input_viewed_without_copy_and_output_shared():
    t = torch.randn(33, 7)
    a = _to_numpy(t, "f", "x", False, _Converted())
    assert a.ctypes.data == t.data_ptr() and a.shape == (33, 7)
    a = _to_numpy(t.t(), "f", "x", False, _Converted())  # non-contiguous input: copied, contiguous
    assert a.flags.c_contiguous and a.ctypes.data != t.data_ptr()
    np.testing.assert_array_equal(a, t.t().numpy())
    cv = _Converted()
    cv.kind = "torch"
    r = np.arange(5.0)
    out = _from_numpy(r, cv)
    assert isinstance(out, torch.Tensor) and out.data_ptr() == r.ctypes.data


def test_inplace_on_torch_tensors_writes_their_memory():
    rng = np.random.default_rng(0)
    p0, g0 = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    p, g, m, v = torch.from_numpy(p0.copy()), torch.from_numpy(g0), torch.zeros(1000), torch.zeros(1000)
    ptrs = [x.data_ptr() for x in (p, m, v)]
    assert ops.adamw_step(p, g, m, v, 1, 1e-2, weight_decay=0.1) is None
    pn, mn, vn = p0.copy(), np.zeros(1000, np.float32), np.zeros(1000, np.float32)
    ops.adamw_step(pn, g0, mn, vn, 1, 1e-2, weight_decay=0.1)
    assert [x.data_ptr() for x in (p, m, v)] == ptrs
    for a, b in ((p, pn), (m, mn), (v, vn)):
        np.testing.assert_array_equal(a.numpy(), b)
    # a Parameter that requires grad is updated in place too (sgd with momentum)
    w = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    buf = torch.zeros(1000)
    ops.sgd_step(w, g, buf, 0.1, 0.9)
    np.testing.assert_allclose(w.detach().numpy(), p0 - 0.1 * g0, rtol=1e-6)
    np.testing.assert_array_equal(buf.numpy(), g0)


def test_matmul_out_torch_returns_the_same_tensor():
    need("matmul")
    a, b = torch.randn(7, 33), torch.randn(33, 5)
    out = torch.empty(7, 5)
    r = ops.matmul(a, b, out=out)
    assert r is out
    torch.testing.assert_close(out, a @ b)
    with pytest.raises(ValueError, match=r"matmul: out is a non-contiguous torch.Tensor \(shape \(7, 5\), strides \(1, 7\)\) that is updated in place"):
        ops.matmul(a, b, out=torch.empty(5, 7).t())


def test_noncontiguous_inplace_rejected_noncontiguous_input_handled():
    p = torch.zeros(4, 6).t()
    z = torch.zeros(6, 4)
    with pytest.raises(ValueError, match=r"adamw_step: param is a non-contiguous torch.Tensor \(shape \(6, 4\), "
                                         r"strides \(1, 6\)\) that is updated in place; pass a contiguous tensor"):
        ops.adamw_step(p, z, z.clone(), z.clone(), 1, 0.1)
    with pytest.raises(ValueError, match=r"sgd_step: momentum_buf is a non-contiguous torch.Tensor"):
        ops.sgd_step(z.clone(), z, p, 0.1, momentum=0.9)
    # grad is only read: a non-contiguous grad is copied and the update is right
    g = torch.randn(4, 6).t()
    w = torch.zeros(6, 4)
    ops.sgd_step(w, g, None, 0.5)
    torch.testing.assert_close(w, -0.5 * g)
    x = torch.randn(5, 9)[:, ::2]
    torch.testing.assert_close(ops.relu_forward(x), torch.relu(x))


def test_requires_grad_input_is_detached():
    x = torch.randn(7, 3, requires_grad=True)
    y = ops.relu_forward(x)
    assert not y.requires_grad
    torch.testing.assert_close(y, torch.relu(x.detach()))


def test_unsupported_torch_dtype_message():
    with pytest.raises(TypeError, match=r"relu_forward: x must be a tensor NumPy can view .* got torch.Tensor of dtype torch.bfloat16"):
        ops.relu_forward(torch.ones(3, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match=r"relu_forward: x must be float32 or float64, got float16"):
        ops.relu_forward(torch.ones(3, dtype=torch.float16))
    with pytest.raises(TypeError, match=r"adamw_step: grad must be float32 \(the dtype of the other inputs\), got float64"):
        ops.adamw_step(torch.zeros(3), torch.zeros(3, dtype=torch.float64), torch.zeros(3), torch.zeros(3), 1, 0.1)


# ----- other array types -----
class _ArrayInterface:
    def __init__(self, a):
        self.a = a
        self.__array_interface__ = a.__array_interface__


class _DLPackOnly:
    def __init__(self, a, device=(1, 0)):
        self.a, self.device = a, device

    def __dlpack__(self, **kw):
        return self.a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.device


def test_array_interface_dlpack_and_buffer_objects():
    x = _np(7, 33)
    want = ops.relu_forward(x)
    for obj in (_ArrayInterface(x), _DLPackOnly(x)):
        y = ops.relu_forward(obj)
        assert type(y) is np.ndarray and np.array_equal(y, want)
    assert np.array_equal(ops.relu_forward(memoryview(x)), want)
    a = _to_numpy(_DLPackOnly(x), "f", "x", False, _Converted())
    assert a.ctypes.data == x.ctypes.data  # viewed, not copied


class _FakeCupy:
    __module__ = "cupy._core.core"
    shape = (3,)


def test_cuda_arrays_route_to_the_cuda_module():
    from fusegrad import cuda
    if cuda.is_available():
        pytest.skip("a GPU is here: CUDA arrays run instead of raising")
    with pytest.raises(RuntimeError, match=r"relu_forward: got a CUDA array \(x: cupy._core.core._FakeCupy\), but "
                                           r"(fusegrad._cuda is not built|no usable GPU|CuPy is not installed)"):
        ops.relu_forward(_FakeCupy())
    with pytest.raises(RuntimeError, match=r"relu_forward: got a CUDA array \(x: .*_DLPackOnly on DLPack device type 2\)"):
        ops.relu_forward(_DLPackOnly(_np(3), device=(2, 0)))
    with pytest.raises(ValueError, match=r"relu_backward: all arrays must be on one device; got a CUDA array \(x: .*\) "
                                         r"mixed with CPU arrays"):
        ops.relu_backward(_np(3), _FakeCupy())
