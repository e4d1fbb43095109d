"""fusegrad._C's entries on torch tensors (csrc/bind/torch.cpp, fusegrad.torch's eager path): the
same kernels as the NumPy entries, so the same bits on shapes that divide no tile (size 1, odd,
N-D, float32/float64), against the float64 NumPy references, and every bad input refused with a
TypeError/ValueError that names the function and the argument."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import reference as ref  # noqa: E402
from fusegrad import _C  # noqa: E402

SHAPES = [(1, 1), (1, 7), (5, 33), (3, 4, 17), (130, 129)]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-4, torch.float64: 1e-11}


def rnd(*shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def same(t, a):
    """A torch result holds exactly the NumPy entry's bits."""
    assert isinstance(t, torch.Tensor) and t.is_contiguous()
    np.testing.assert_array_equal(t.numpy(), a)


def close(t, r, dtype):
    np.testing.assert_allclose(t.numpy(), r, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_entries_match_numpy_entries_and_reference(shape, dtype, affine):
    C = shape[-1]
    x, dy = rnd(*shape, dtype=dtype), rnd(*shape, dtype=dtype, seed=1)
    w, b = (rnd(C, dtype=dtype, seed=2), rnd(C, dtype=dtype, seed=3)) if affine else (None, None)
    n = lambda t: None if t is None else t.numpy()  # noqa: E731
    y, mean, rstd = _C._torch_layernorm_forward(x, w, b, 1e-5)
    y0, mean0, rstd0 = _C.layernorm_forward(x.numpy(), n(w), n(b), 1e-5)
    same(y, y0)
    np.testing.assert_array_equal(mean, mean0)
    np.testing.assert_array_equal(rstd, rstd0)
    f64 = lambda t: None if t is None else t.numpy().astype(np.float64)  # noqa: E731
    yr, mr, rr = ref.layernorm_forward(f64(x), f64(w), f64(b))
    close(y, yr, dtype)
    for stats in ((mean, rstd), (torch.from_numpy(mean), torch.from_numpy(rstd))):  # NumPy arrays or tensors
        dx, dw, db = _C._torch_layernorm_backward(dy, x, w, *stats)
        for t, a in zip((dx, dw, db), _C.layernorm_backward(dy.numpy(), x.numpy(), n(w), mean, rstd)):
            same(t, a)
    dxr, dwr, dbr = ref.layernorm_backward(f64(dy), f64(x), f64(w), mr, rr)
    close(dx, dxr, dtype)
    close(dw, dwr, dtype)
    close(db, dbr, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xshape,out", [((1, 1), 1), ((1, 7), 3), ((5, 33), 17), ((2, 3, 17), 65), ((70, 129), 40),
                                        ((9,), 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_entries_match_numpy_entries_and_reference(xshape, out, dtype, bias):
    x, w = rnd(*xshape, dtype=dtype), rnd(out, xshape[-1], dtype=dtype, seed=1)
    b = rnd(out, dtype=dtype, seed=2) if bias else None
    y = _C._torch_linear_forward(x, w, b)
    assert y.shape == (*xshape[:-1], out)
    same(y, _C.linear_forward(x.numpy(), w.numpy(), None if b is None else b.numpy()))
    f64 = lambda t: t.numpy().astype(np.float64)  # noqa: E731
    close(y, ref.linear_forward(f64(x), f64(w), None if b is None else f64(b)), dtype)
    dy = rnd(*y.shape, dtype=dtype, seed=3)
    dx, dw, db = _C._torch_linear_backward(dy, x, w)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (out,)
    for t, a in zip((dx, dw, db), _C.linear_backward(dy.numpy(), x.numpy(), w.numpy())):
        same(t, a)
    for t, r in zip((dx, dw, db), ref.linear_backward(f64(dy), f64(x), f64(w))):
        close(t, r, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 17), (33, 129)])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_entries_match_numpy_entries_and_reference(shape, dtype, approximate):
    x, dy = rnd(*shape, dtype=dtype) * 3, rnd(*shape, dtype=dtype, seed=1)
    y = _C._torch_gelu_forward(x, approximate)
    same(y, _C.gelu_forward(x.numpy(), approximate))
    f64 = lambda t: t.numpy().astype(np.float64)  # noqa: E731
    close(y, ref.gelu_forward(f64(x), approximate), dtype)
    dx = _C._torch_gelu_backward(dy, x, approximate)
    same(dx, _C.gelu_backward(dy.numpy(), x.numpy(), approximate))
    close(dx, ref.gelu_backward(f64(dy), f64(x), approximate), dtype)
    y2, dydx = _C._torch_gelu_forward_with_grad(x, approximate)  # the training pair: the same bits
    same(y2, _C.gelu_forward(x.numpy(), approximate))
    same(dydx, _C.gelu_forward_with_grad(x.numpy(), approximate)[1])
    same(_C._torch_gelu_backward_from_grad(dy, dydx), _C.gelu_backward(dy.numpy(), x.numpy(), approximate))


def test_entries_read_inputs_in_place_and_return_their_buffers():
    x, w = rnd(4, 8).requires_grad_(), rnd(3, 8, seed=1)  # requires_grad: read, never copied
    y = _C._torch_linear_forward(x, w, None)
    assert not y.requires_grad and y.grad_fn is None
    y2 = _C._torch_linear_forward(x, w, None)
    assert y.data_ptr() != y2.data_ptr()  # a new buffer each call, never an input's
    assert torch.equal(y, y2)


# ----- bad input: the function and the argument named -----
F32 = torch.float32


def bad_cases():
    x, w, b = rnd(4, 8), rnd(8, seed=1), rnd(8, seed=2)
    W = rnd(3, 8, seed=3)
    mean, rstd = _C._torch_layernorm_forward(x, w, b, 1e-5)[1:]
    nc = rnd(8, 4).t()  # (4, 8), not contiguous
    ln_f, ln_b = _C._torch_layernorm_forward, _C._torch_layernorm_backward
    lin_f, lin_b = _C._torch_linear_forward, _C._torch_linear_backward
    g_f, g_b = _C._torch_gelu_forward, _C._torch_gelu_backward
    g_fg, g_bg = _C._torch_gelu_forward_with_grad, _C._torch_gelu_backward_from_grad
    return [  # (call, exception, words the message must contain)
        (lambda: ln_f(x.numpy(), w, b, 1e-5), TypeError, ["_torch_layernorm_forward", "x", "torch.Tensor", "ndarray"]),
        (lambda: ln_f(x, [1.0] * 8, b, 1e-5), TypeError, ["weight", "torch.Tensor", "list"]),
        (lambda: ln_f(x.half(), None, None, 1e-5), TypeError, ["x", "torch.float16"]),
        (lambda: ln_f(x.to(torch.bfloat16), None, None, 1e-5), TypeError, ["x", "bfloat16"]),
        (lambda: ln_f(torch.ones(4, 8, dtype=torch.int64), None, None, 1e-5), TypeError, ["x", "float32 or float64"]),
        (lambda: ln_f(x, w.double(), b, 1e-5), TypeError, ["weight", "float32", "float64"]),
        (lambda: ln_f(x, w, rnd(7), 1e-5), ValueError, ["bias", "(8,)", "(7,)"]),
        (lambda: ln_f(nc, w, b, 1e-5), ValueError, ["x", "contiguous", "(1, 4)"]),
        (lambda: ln_f(x, w, b, -1.0), ValueError, ["eps", ">= 0"]),
        (lambda: ln_f(torch.tensor(1.0), None, None, 1e-5), ValueError, ["x", "at least 1 dimension"]),
        (lambda: ln_f(torch.ones(3, 0), None, None, 1e-5), ValueError, ["x", "last dimension"]),
        (lambda: ln_f(torch.ones(4, 8, device="meta"), None, None, 1e-5), ValueError, ["x", "CPU tensor", "meta"]),
        (lambda: ln_b(rnd(4, 7), x, w, mean, rstd), ValueError, ["_torch_layernorm_backward", "dy", "(4, 8)", "(4, 7)"]),
        (lambda: ln_b(x, x, w, mean[:3], rstd), ValueError, ["mean", "(4,)", "(3,)"]),
        (lambda: ln_b(x, x, w, mean, rstd.astype(np.float64)), TypeError, ["rstd", "float32", "float64"]),
        (lambda: ln_b(x, x, w, mean, [1.0] * 4), TypeError, ["rstd", "torch.Tensor or a numpy.ndarray"]),
        (lambda: ln_b(x, x, w, mean, np.ones(8, np.float32)[::2]), ValueError, ["rstd", "C-contiguous"]),
        (lambda: lin_f(x, rnd(3, 7), None), ValueError, ["_torch_linear_forward", "weight", "(out_features, 8)"]),
        (lambda: lin_f(x, rnd(8), None), ValueError, ["weight", "(out_features, 8)", "(8,)"]),
        (lambda: lin_f(x, W, rnd(4)), ValueError, ["bias", "(3,)", "(4,)"]),
        (lambda: lin_f(x, W.double(), None), TypeError, ["weight", "float32", "float64"]),
        (lambda: lin_f(torch.tensor(1.0), W, None), ValueError, ["x", "at least 1 dimension"]),
        (lambda: lin_f(x, rnd(8, 3).t(), None), ValueError, ["weight", "contiguous"]),
        (lambda: lin_b(rnd(4, 4), x, W), ValueError, ["_torch_linear_backward", "dy", "(4, 3)", "(4, 4)"]),
        (lambda: lin_b(rnd(4, 3).double(), x, W), TypeError, ["dy", "float32", "float64"]),
        (lambda: g_f(x, "exact"), ValueError, ["_torch_gelu_forward", "approximate", "'exact'"]),
        (lambda: g_f(nc, "none"), ValueError, ["x", "contiguous"]),
        (lambda: g_b(rnd(4, 9), x, "none"), ValueError, ["_torch_gelu_backward", "dy", "(4, 8)", "(4, 9)"]),
        (lambda: g_b(x.double(), x, "tanh"), TypeError, ["dy", "float32", "float64"]),
        (lambda: g_b(x, None, "tanh"), TypeError, ["x", "torch.Tensor", "NoneType"]),
        (lambda: g_fg(x, "erf"), ValueError, ["_torch_gelu_forward_with_grad", "approximate", "'erf'"]),
        (lambda: g_fg(nc, "tanh"), ValueError, ["_torch_gelu_forward_with_grad", "x", "contiguous"]),
        (lambda: g_fg(x.half(), "none"), TypeError, ["x", "torch.float16"]),
        (lambda: g_bg(rnd(4, 9), x), ValueError, ["_torch_gelu_backward_from_grad", "dy", "(4, 8)", "(4, 9)"]),
        (lambda: g_bg(x.double(), x), TypeError, ["_torch_gelu_backward_from_grad", "dy", "float32", "float64"]),
        (lambda: g_bg(x, x.numpy()), TypeError, ["dydx", "torch.Tensor", "ndarray"]),
        (lambda: g_bg(x, nc), ValueError, ["dydx", "contiguous"]),
    ]


@pytest.mark.parametrize("case", range(len(bad_cases())))
def test_bad_input_is_a_clear_error(case):
    call, exc, words = bad_cases()[case]
    with pytest.raises(exc) as e:
        call()
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_unaligned_tensor_is_refused():
    buf = bytearray(4 * 9)
    x = torch.frombuffer(buf, dtype=F32, offset=1, count=8)  # data pointer 1 byte past an aligned one
    assert x.data_ptr() % 4
    with pytest.raises(ValueError, match="_torch_gelu_forward: x must be aligned"):
        _C._torch_gelu_forward(x, "none")


@pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")  # torch warns, then returns 0
def test_fake_tensor_has_no_memory_to_read():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(4, 8)
    with pytest.raises(ValueError, match=r"_torch_gelu_forward: x has no memory to read \(a fake"):
        _C._torch_gelu_forward(x, "none")
