"""Tensor and autograd engine: every differentiable op against central finite differences
(float64) and against torch where installed; engine semantics and misuse errors."""
from __future__ import annotations

import numpy as np
import pytest

import fusegrad as fg
import fusegrad.nn.functional as F


def numgrad(f, arrays, eps=1e-6):
    """Central finite differences of scalar sum(f(*arrays) * w) w.r.t. each array."""
    out = []
    for a in arrays:
        g = np.zeros_like(a)
        it = np.nditer(a, flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            old = a[i]
            a[i] = old + eps
            fp = f(*arrays)
            a[i] = old - eps
            fm = f(*arrays)
            a[i] = old
            g[i] = (fp - fm) / (2 * eps)
        out.append(g)
    return out


def gradcheck(fn, *arrays, seed=0, atol=1e-6, rtol=1e-5):
    """Check fn's autograd gradients (through a random projection of the output)."""
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    ts = [fg.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*ts)
    w = np.random.default_rng(seed).standard_normal(y.shape)
    (y * fg.tensor(w)).sum().backward()

    def scalar(*arrs):
        with fg.no_grad():
            return float((fn(*[fg.tensor(a) for a in arrs]).data * w).sum())

    num = numgrad(scalar, arrays)
    for t, n in zip(ts, num):
        np.testing.assert_allclose(t.grad.data, n, atol=atol, rtol=rtol)
    return y, ts


R = np.random.default_rng(7)


def r(*s, pos=False):
    a = R.standard_normal(s)
    return np.abs(a) + 0.5 if pos else a


CASES = {
    "add_bcast": (lambda a, b: a + b, [r(3, 4), r(4)]),
    "sub_bcast": (lambda a, b: a - b, [r(2, 1, 4), r(3, 1)]),
    "mul_bcast": (lambda a, b: a * b, [r(3, 4), r(3, 1)]),
    "div": (lambda a, b: a / b, [r(3, 4), r(4, pos=True)]),
    "neg": (lambda a: -a, [r(5)]),
    "pow": (lambda a: a ** 3, [r(4, 3)]),
    "pow_frac": (lambda a: a ** 0.5, [r(4, pos=True)]),
    "rsub_scalar": (lambda a: 2.0 - a * 3.0, [r(3)]),
    "matmul2d": (lambda a, b: a @ b, [r(3, 5), r(5, 2)]),
    "matmul_batched": (lambda a, b: a @ b, [r(2, 3, 5), r(2, 5, 4)]),
    "matmul_bcast2d": (lambda a, b: a @ b, [r(2, 3, 5), r(5, 4)]),
    "matmul_vec": (lambda a, b: a @ b, [r(3, 5), r(5)]),
    "matmul_vecmat": (lambda a, b: a @ b, [r(5), r(5, 2)]),
    "sum_all": (lambda a: a.sum(), [r(3, 4)]),
    "sum_axis": (lambda a: a.sum(1), [r(3, 4, 2)]),
    "sum_keep": (lambda a: a.sum((0, 2), keepdim=True), [r(3, 4, 2)]),
    "mean_all": (lambda a: a.mean(), [r(3, 4)]),
    "mean_axis": (lambda a: a.mean(-1, keepdim=True), [r(3, 4)]),
    "max_all": (lambda a: a.max(), [r(3, 4)]),
    "max_axis": (lambda a: a.max(1).values, [r(3, 4)]),
    "max_axis_keep": (lambda a: a.max(dim=0, keepdim=True)[0], [r(3, 4)]),
    "min_all": (lambda a: a.min(), [r(3, 4)]),
    "min_axis": (lambda a: a.min(-1).values, [r(3, 4, 2)]),
    "amax_dims": (lambda a: a.amax((0, 2)), [r(3, 4, 2)]),
    "amin_axis": (lambda a: a.amin(1, keepdim=True), [r(3, 4)]),
    "gather": (lambda a: a.gather(1, fg.tensor(np.array([[0, 0, 3], [2, 1, 1], [3, 3, 0]]))), [r(3, 4)]),
    "topk": (lambda a: a.topk(2, dim=1).values, [r(3, 5)]),
    "topk_smallest": (lambda a: a.topk(3, dim=0, largest=False).values, [r(4, 2)]),
    "var_all": (lambda a: a.var(), [r(3, 4)]),
    "var_axis_biased": (lambda a: a.var(1, unbiased=False, keepdim=True), [r(3, 4)]),
    "var_correction": (lambda a: a.var((0, 2), correction=2), [r(3, 4, 2)]),
    "std_axis": (lambda a: a.std(0), [r(5, 3)]),
    "where": (lambda a, b: fg.where(fg.tensor(np.array([[True, False, True]])), a, b), [r(2, 3), r(3)]),
    "where_scalar": (lambda a: fg.where(a.detach() > 0, a, 0.0), [r(3, 4)]),
    "t": (lambda a: a.t(), [r(3, 4)]),
    "pow_method": (lambda a: a.pow(2), [r(3, 4)]),
    "matmul_fn": (lambda a, b: fg.matmul(a, b), [r(3, 4), r(4, 2)]),
    "exp": (lambda a: a.exp(), [r(3, 4)]),
    "log": (lambda a: a.log(), [r(3, 4, pos=True)]),
    "sqrt": (lambda a: a.sqrt(), [r(3, 4, pos=True)]),
    "abs": (lambda a: a.abs(), [r(3, 4)]),
    "clamp": (lambda a: a.clamp(-0.5, 0.5), [r(4, 5)]),
    "reshape": (lambda a: a.reshape(6, 2) * fg.tensor(np.arange(12.0).reshape(6, 2)), [r(3, 4)]),
    "view": (lambda a: a.view(-1), [r(3, 4)]),
    "transpose": (lambda a: a.transpose(0, 2), [r(2, 3, 4)]),
    "permute": (lambda a: a.permute(2, 0, 1), [r(2, 3, 4)]),
    "T": (lambda a: a.T, [r(2, 3)]),
    "index_int": (lambda a: a[1], [r(3, 4)]),
    "slice": (lambda a: a[:, 1:3], [r(3, 4)]),
    "fancy_repeat": (lambda a: a[np.array([0, 2, 0])], [r(3, 4)]),
    "cat": (lambda a, b: fg.cat([a, b], dim=1), [r(2, 3), r(2, 2)]),
    "stack": (lambda a, b: fg.stack([a, b], dim=1), [r(2, 3), r(2, 3)]),
    "split": (lambda a: fg.split(a, 2, dim=1)[1] * 2.0 + fg.split(a, [1, 3], dim=1)[0], [r(2, 4)]),
    "relu": (lambda a: F.relu(a), [r(4, 5)]),
    "sigmoid": (lambda a: F.sigmoid(a), [r(4, 5)]),
    "tanh": (lambda a: F.tanh(a), [r(4, 5)]),
    "gelu": (lambda a: F.gelu(a), [r(4, 5)]),
    "gelu_tanh": (lambda a: F.gelu(a, approximate="tanh"), [r(4, 5)]),
    "softmax": (lambda a: F.softmax(a, -1), [r(3, 5)]),
    "softmax_dim0": (lambda a: F.softmax(a, 0), [r(3, 5)]),
    "log_softmax": (lambda a: F.log_softmax(a, -1), [r(3, 5)]),
    "linear": (lambda x, w, b: F.linear(x, w, b), [r(2, 3, 4), r(5, 4), r(5)]),
    "linear_nobias": (lambda x, w: F.linear(x, w), [r(3, 4), r(5, 4)]),
    # the skip connection fused into the projection (GPT blocks): one op with four inputs
    "linear_add": (lambda res, x, w, b: F._linear_add(res, x, w, b), [r(2, 3, 5), r(2, 3, 4), r(5, 4), r(5)]),
    "linear_add_nobias": (lambda res, x, w: F._linear_add(res, x, w), [r(3, 5), r(3, 4), r(5, 4)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (6,), w, b), [r(2, 3, 6), r(6), r(6)]),
    "mse": (lambda a, b: F.mse_loss(a, b), [r(3, 4), r(3, 4)]),
    "cross_entropy": (lambda a: F.cross_entropy(a, fg.tensor(np.array([1, 0, 3]))), [r(3, 4)]),
    "cross_entropy_ignore": (lambda a: F.cross_entropy(a, fg.tensor(np.array([1, -100, 3])), ignore_index=-100),
                             [r(3, 4)]),
    "embedding": (lambda w: F.embedding(fg.tensor(np.array([[0, 2], [2, 1]])), w), [r(4, 3)]),
    "sdpa": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), [r(1, 2, 3, 4), r(1, 2, 5, 4), r(1, 2, 5, 4)]),
    "sdpa_causal_gqa": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                        [r(1, 4, 3, 2), r(1, 2, 3, 2), r(1, 2, 3, 2)]),
    "maximum_bcast": (lambda a, b: fg.maximum(a, b), [r(3, 4), r(4)]),
    "minimum_method": (lambda a, b: a.min(b), [r(2, 1, 4), r(3, 1)]),
    "max_other_kw": (lambda a, b: a.max(other=b) * 2.0, [r(3, 4), r(3, 4)]),
    # in-place ops on tensors in the graph are recorded (the same code runs on torch tensors)
    "iadd_bcast": (lambda a, b: _iadd(a, b), [r(3, 4), r(4)]),
    "mul_self": (lambda a: _mul_self(a), [r(3, 4)]),
    "mul_": (lambda a, b: (a * 1.0).mul_(b) * a, [r(3, 4), r(3, 1)]),
    "div_sub_alpha": (lambda a, b: (a * 1.0).div_(b).sub_(b, alpha=0.5), [r(3, 4), r(3, 4, pos=True)]),
    "zero_then_add": (lambda a, b: _zero_then_add(a, b), [r(3, 4), r(3, 4)]),
    "copy_bcast": (lambda a, b: (a * 3.0).copy_(b) * a, [r(3, 4), r(4)]),
    "fill_0d": (lambda a, b: (a * 1.0).fill_(b.sum()) * a, [r(3, 4), r(2)]),
    "setitem": (lambda a, b: _setitem(a, b), [r(3, 4), r(2, 4)]),
    "into_plain": (lambda a, b: _into_plain(a, b), [r(3, 4), r(3, 4)]),
}


def _iadd(a, b):
    y = a * 2.0
    y += b
    return y


def _mul_self(a):
    y = a + 0.0
    y.mul_(y)                     # the old value on both sides: 2a, as torch
    return y


def _zero_then_add(a, b):
    y = a * 3.0
    y.zero_()
    y += b
    return y * 2.0


def _setitem(a, b):
    y = a * 1.0
    y[1:3] = b * 2.0
    y[0, 1] = b[0, 0]
    return y


def _into_plain(a, b):
    y = a.detach() * 0.0          # no history: it gets one from b
    y.add_(b)
    return y * a


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_vs_finite_differences(name):
    fn, arrays = CASES[name]
    gradcheck(fn, *[a.copy() for a in arrays])


TORCH = {
    "add_bcast": lambda t, a, b: a + b,
    "div": lambda t, a, b: a / b,
    "pow": lambda t, a: a ** 3,
    "matmul_batched": lambda t, a, b: a @ b,
    "matmul_bcast2d": lambda t, a, b: a @ b,
    "matmul_vec": lambda t, a, b: a @ b,
    "sum_keep": lambda t, a: a.sum((0, 2), keepdim=True),
    "max_axis": lambda t, a: a.max(1).values,
    "max_axis_keep": lambda t, a: a.max(dim=0, keepdim=True)[0],
    "min_all": lambda t, a: a.min(),
    "min_axis": lambda t, a: a.min(-1).values,
    "amax_dims": lambda t, a: a.amax((0, 2)),
    "amin_axis": lambda t, a: a.amin(1, keepdim=True),
    "gather": lambda t, a: a.gather(1, t.tensor([[0, 0, 3], [2, 1, 1], [3, 3, 0]])),
    "topk": lambda t, a: a.topk(2, dim=1).values,
    "topk_smallest": lambda t, a: a.topk(3, dim=0, largest=False).values,
    "var_all": lambda t, a: a.var(),
    "var_axis_biased": lambda t, a: a.var(1, unbiased=False, keepdim=True),
    "var_correction": lambda t, a: a.var((0, 2), correction=2),
    "std_axis": lambda t, a: a.std(0),
    "where": lambda t, a, b: t.where(t.tensor([[True, False, True]]), a, b),
    "where_scalar": lambda t, a: t.where(a.detach() > 0, a, 0.0),
    "t": lambda t, a: a.t(),
    "pow_method": lambda t, a: a.pow(2),
    "matmul_fn": lambda t, a, b: t.matmul(a, b),
    "log": lambda t, a: a.log(),
    "clamp": lambda t, a: a.clamp(-0.5, 0.5),
    "permute": lambda t, a: a.permute(2, 0, 1),
    "fancy_repeat": lambda t, a: a[t.tensor([0, 2, 0])],
    "cat": lambda t, a, b: t.cat([a, b], dim=1),
    "gelu": lambda t, a: t.nn.functional.gelu(a),
    "gelu_tanh": lambda t, a: t.nn.functional.gelu(a, approximate="tanh"),
    "softmax_dim0": lambda t, a: t.softmax(a, 0),
    "log_softmax": lambda t, a: t.log_softmax(a, -1),
    "linear": lambda t, x, w, b: t.nn.functional.linear(x, w, b),
    "linear_add": lambda t, res, x, w, b: res + t.nn.functional.linear(x, w, b),
    "layer_norm": lambda t, x, w, b: t.nn.functional.layer_norm(x, (6,), w, b),
    "mse": lambda t, a, b: t.nn.functional.mse_loss(a, b),
    "cross_entropy_ignore": lambda t, a: t.nn.functional.cross_entropy(a, t.tensor([1, -100, 3])),
    "embedding": lambda t, w: t.nn.functional.embedding(t.tensor([[0, 2], [2, 1]]), w),
    "sdpa_causal_gqa": lambda t, q, k, v: t.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True),
    "maximum_bcast": lambda t, a, b: t.maximum(a, b),
    "minimum_method": lambda t, a, b: a.min(b),
    "max_other_kw": lambda t, a, b: a.max(other=b) * 2.0,
    "iadd_bcast": lambda t, a, b: _iadd(a, b),
    "mul_": lambda t, a, b: (a * 1.0).mul_(b) * a,      # (torch refuses y.mul_(y); fusegrad gives 2y)
    "div_sub_alpha": lambda t, a, b: (a * 1.0).div_(b).sub_(b, alpha=0.5),
    "zero_then_add": lambda t, a, b: _zero_then_add(a, b),
    "copy_bcast": lambda t, a, b: (a * 3.0).copy_(b) * a,
    "fill_0d": lambda t, a, b: (a * 1.0).fill_(b.sum()) * a,
    "setitem": lambda t, a, b: _setitem(a, b),
    "into_plain": lambda t, a, b: _into_plain(a, b),
}


@pytest.mark.parametrize("name", list(TORCH))
def test_against_torch(name):
    torch = pytest.importorskip("torch")
    fn, arrays = CASES[name]
    ts = [fg.tensor(a.copy(), requires_grad=True) for a in arrays]
    tt = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    y, yt = fn(*ts), TORCH[name](torch, *tt)
    np.testing.assert_allclose(y.data, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    w = np.random.default_rng(1).standard_normal(y.shape)
    (y * fg.tensor(w)).sum().backward()
    (yt * torch.tensor(w)).sum().backward()
    for a, b in zip(ts, tt):
        np.testing.assert_allclose(a.grad.data, b.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_float32_default_and_dtype_kept():
    assert fg.tensor([1.0, 2.0]).dtype == np.float32
    assert fg.tensor([1, 2]).dtype == np.int64
    a = fg.tensor(np.ones(3), requires_grad=True)
    assert (a * 2.0).dtype == np.float64
    b = fg.tensor([1.0, 2.0], requires_grad=True)
    assert (b * 2.0 + 1).dtype == np.float32


def test_grad_accumulates_and_graph_freed():
    x = fg.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.data, [4.0, 8.0])
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad.data, [7.0, 11.0])


def test_shared_subexpression_and_diamond():
    x = fg.tensor(3.0, requires_grad=True)
    a = x * x
    y = a * a + a  # x^4 + x^2 -> 4x^3 + 2x
    y.backward()
    assert x.grad.item() == pytest.approx(4 * 27 + 6)


def test_backward_nonscalar_needs_gradient():
    x = fg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2.0
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        y.backward()
    y.backward(gradient=np.array([1.0, 10.0]))
    np.testing.assert_allclose(x.grad.data, [2.0, 20.0])
    with pytest.raises(ValueError, match="gradient has shape"):
        (x * 2.0).backward(gradient=np.ones(3))


def test_complex_operands_are_refused_not_truncated():
    # casting a complex value to the tensor's float dtype would drop its imaginary part
    x = fg.tensor([1.0, 2.0], requires_grad=True)
    for bad in (lambda: x * 1j, lambda: x + np.array([1 + 2j, 0j]), lambda: 1j - x):
        with pytest.raises(TypeError, match="complex operand"):
            bad()
    with pytest.raises(TypeError, match=r"backward\(\): gradient is complex"):
        (x * 2.0).backward(gradient=np.array([1 + 1j, 1.0]))
    assert x.grad is None
    for kw in (dict(target=np.array([1 + 1j, 0j])), dict(target=fg.Tensor(np.ones(2, np.complex64)))):
        with pytest.raises(TypeError, match="mse_loss: target is complex"):
            F.mse_loss(x, **kw)
    with pytest.raises(TypeError, match="mse_loss: input is complex"):
        F.mse_loss(fg.Tensor(np.ones(2, np.complex64)), np.ones(2, np.float32))
    # real targets of other dtypes still promote, as in torch
    assert F.mse_loss(x, np.array([1, 2])).item() == 0.0


def test_backward_without_requires_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        fg.tensor([1.0]).sum().backward()
    with pytest.raises(TypeError, match="floating point"):
        fg.tensor([1, 2], requires_grad=True)


def test_matmul_shape_mismatch():
    with pytest.raises(ValueError, match=r"matmul: shape mismatch, \(2, 3\) @ \(4, 5\)"):
        fg.tensor(np.ones((2, 3))) @ fg.tensor(np.ones((4, 5)))
    with pytest.raises(ValueError, match="linear: input has 3 features"):
        F.linear(fg.tensor(np.ones((2, 3))), fg.tensor(np.ones((4, 5))))


def test_no_grad_and_detach():
    x = fg.tensor([1.0], requires_grad=True)
    with fg.no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.grad_fn is None
    z = (x * 2.0).detach()
    assert not z.requires_grad
    with pytest.raises(RuntimeError, match="detach"):
        x.numpy()
    assert x.detach().numpy().shape == (1,)


def test_comparisons_no_grad_and_item():
    x = fg.tensor([1.0, -2.0, 3.0], requires_grad=True)
    m = x > 0
    assert not m.requires_grad and m.data.tolist() == [True, False, True]
    assert (x == x).data.all()
    assert fg.tensor([[2.5]]).item() == 2.5
    with pytest.raises(ValueError, match="one-element"):
        x.item()


def test_inplace_on_leaf_rejected():
    x = fg.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="in-place"):
        x += 1.0
    with fg.no_grad():
        x -= 1.0
    assert x.data[0] == 0.0
    for f in (lambda: x.zero_(), lambda: x.fill_(2.0), lambda: x.copy_(fg.tensor([3.0])),
              lambda: x.__setitem__(0, 1.0)):
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            f()
    assert x.data[0] == 0.0


def test_inplace_ops_follow_torchs_dtype_and_shape_rules():
    i = fg.tensor([1, 2])
    with pytest.raises(RuntimeError, match="the result type float32 can't be cast to the tensor's dtype int64"):
        i.add_(0.5)                               # used to truncate silently
    with pytest.raises(RuntimeError, match="can't be cast"):
        i /= 2
    i *= 3
    assert i.tolist() == [3, 6] and i.dtype == np.int64
    f = fg.tensor([1.0, 2.0])
    f += fg.tensor(np.array([0.5, 0.25]))       # float64 into float32: float32, as torch
    assert f.dtype == np.float32 and f.tolist() == [1.5, 2.25]
    with pytest.raises(RuntimeError, match=r"the result has shape \(2, 2\), the tensor \(2,\)"):
        f.add_(fg.ones(2, 2))
    g = fg.tensor([1.0, 2.0], requires_grad=True) * 1.0
    with pytest.raises(RuntimeError, match=r"the result has shape \(3, 2\)"):
        g.add_(fg.ones(3, 2))
    with pytest.raises(RuntimeError, match="int64 tensor cannot take a value that requires grad"):
        fg.tensor([1, 2]).add_(fg.tensor([1.0, 1.0], requires_grad=True))
    m = fg.tensor(np.arange(4.0))
    view = m[1:3]                                 # a view shares memory, as in torch
    view.mul_(10.0)
    assert m.tolist() == [0.0, 10.0, 20.0, 3.0]


def test_inplace_after_use_refuses_backward():
    # an op that used y before y changed in place would give a wrong gradient: refused, as torch
    x = fg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2.0
    z = y * y
    y += 1.0
    with pytest.raises(RuntimeError, match="modified by an in-place operation after Mul used it"):
        z.sum().backward()
    x2 = fg.tensor([1.0, 2.0], requires_grad=True)
    y2 = x2 * 2.0
    y2 += 1.0                                     # modified before use: fine
    (y2 * y2).sum().backward()
    assert x2.grad.tolist() == [12.0, 20.0]
    w = fg.tensor([1.0], requires_grad=True)
    out = w * fg.tensor([2.0])
    with fg.no_grad():
        w.mul_(3.0)                               # an optimizer-style update between forward and backward
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        out.backward()


def test_inplace_through_views_and_detach_is_checked():
    x = fg.tensor(np.arange(4.0), requires_grad=True)
    y = x * 2.0
    z = y[0:2] * y[0:2]                       # a view of y, saved by Mul
    y.mul_(3.0)                               # changes the view's memory too: counted for both, as torch
    with pytest.raises(RuntimeError, match="modified by an in-place operation after Mul used it"):
        z.sum().backward()
    y = x * 2.0
    for view in (y.reshape(2, 2), y[1:], y.unsqueeze(0).transpose(0, 1)):
        with pytest.raises(RuntimeError, match="is a view of another .* clone\\(\\) the view first"):
            view.add_(1.0)                    # would change y behind its history
    y[1:].clone().add_(1.0)                   # a copy is fine
    d = x * 1.0
    w = d * d
    d.detach().zero_()                        # the same memory: counted, as torch
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        w.sum().backward()
    with fg.no_grad():                        # without autograd a view may be written through
        b = fg.tensor(np.zeros((2, 3)))
        b.reshape(6)[1:3].fill_(5.0)
    assert b.tolist() == [[0.0, 5.0, 5.0], [0.0, 0.0, 0.0]]


def test_deep_chain_no_recursion_limit():
    x = fg.tensor(1.0, requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.backward()
    assert x.grad.item() == 1.0


def test_cross_entropy_stable_large_logits():
    x = fg.tensor(np.array([[1e4, -1e4, 0.0]]), requires_grad=True)
    loss = F.cross_entropy(x, fg.tensor(np.array([1])))
    loss.backward()
    assert loss.item() == pytest.approx(2e4)
    np.testing.assert_allclose(x.grad.data, [[1.0, -1.0, 0.0]], atol=1e-12)


# ---- kernel dispatch: native C++ kernels (where merged) agree with the NumPy fallbacks ----
from fusegrad import _kernels as KK  # noqa: E402


def _kernel_args(name, g):
    x, dy = g.standard_normal((7, 33)), g.standard_normal((7, 33))
    t = g.integers(0, 33, 7)
    if name.startswith(("relu", "gelu")):  # (gelu_backward_from_grad: x stands for the saved gelu'(x))
        return (x,) if "forward" in name else (dy, x)
    if name.startswith(("sigmoid", "tanh", "softmax", "log_softmax")):
        y = getattr(KK, "_" + name.replace("backward", "forward"))(x)
        return (x,) if name.endswith("forward") else (dy, y)
    if name == "cross_entropy_forward":
        return (x, t)
    if name == "cross_entropy_backward":
        return (x, t, KK._cross_entropy_forward(x, t)[1], 1.0)
    if name == "layernorm_forward":
        return (x, g.standard_normal(33), g.standard_normal(33), 1e-5)
    if name == "layernorm_backward":
        w = g.standard_normal(33)
        _, m, r = KK._layernorm_forward(x, w, np.zeros(33), 1e-5)
        return (dy, x, w, m, r)
    if name == "matmul":
        return (x, g.standard_normal((33, 5)))
    if name == "linear_forward":
        return (x, g.standard_normal((5, 33)), g.standard_normal(5), g.standard_normal((7, 5)))
    if name == "linear_backward":
        return (g.standard_normal((7, 5)), x, g.standard_normal((5, 33)))
    if name == "sum_squares":
        return (x,)
    if name == "mse_forward":
        return (x, dy)
    if name == "mse_backward":
        return (x, dy, 1.0)
    if name == "embedding_forward":
        return (t, g.standard_normal((40, 8)))
    if name == "embedding_backward":
        return (g.standard_normal((7, 8)), t, 40)
    q, k, v = g.standard_normal((1, 2, 5, 8)), g.standard_normal((1, 1, 6, 8)), g.standard_normal((1, 1, 6, 8))
    if name == "attention_forward":
        return (q, k, v, True, None)
    if name == "attention_backward":
        o, lse = KK._attention_forward(q, k, v, True, None)
        return (g.standard_normal(o.shape), q, k, v, o, lse, True, None)
    qkv = g.standard_normal((2, 5, 32))  # n_head 2, n_kv_head 1, D 8
    if name == "attention_qkv_forward":
        return (qkv, 2, 1, True, None)
    if name == "attention_qkv_backward":
        o, lse = KK._attention_qkv_forward(qkv, 2, 1, True, None)
        return (g.standard_normal(o.shape), qkv, o, lse, 2, 1, True, None)
    return None


@pytest.mark.parametrize("name", sorted(KK.NATIVE - {"sgd_step", "adamw_step"}))
def test_native_kernel_matches_fallback(name):
    args = _kernel_args(name, np.random.default_rng(3))
    if args is None:
        pytest.skip(f"no argument builder for {name}")
    got = getattr(KK, name)(*args)
    want = getattr(KK, "_" + name)(*args)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted({"sgd_step", "adamw_step"} & KK.NATIVE))
def test_native_optimizer_step_matches_fallback(name):
    g = np.random.default_rng(4)
    p, gr = g.standard_normal(50), g.standard_normal(50)
    bufs = [np.abs(g.standard_normal(50)) for _ in range(2)]
    a = [p.copy(), gr.copy()] + [b.copy() for b in bufs]
    b = [p.copy(), gr.copy()] + [b.copy() for b in bufs]
    if name == "sgd_step":
        getattr(KK, name)(a[0], a[1], a[2], 0.1, 0.9, 0.01, True)
        KK._sgd_step(b[0], b[1], b[2], 0.1, 0.9, 0.01, True)
    else:
        getattr(KK, name)(a[0], a[1], a[2], a[3], 3, 0.01, 0.9, 0.99, 1e-8, 0.1)
        KK._adamw_step(b[0], b[1], b[2], b[3], 3, 0.01, 0.9, 0.99, 1e-8, 0.1)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_relu_graph_on_both_isa_paths(isa):
    assert "relu_forward" in KK.NATIVE
    x = fg.tensor(np.array([-1.0, 0.5, 2.0]), requires_grad=True)
    (F.relu(x) * fg.tensor(np.array([1.0, 2.0, 3.0]))).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [0.0, 2.0, 3.0])


def test_backward_leaf_grads_never_alias():
    Tensor = fg.Tensor
    # the engine hands unshared gradient arrays to .grad without a copy and accumulates in
    # place into arrays it alone holds; shared ones (Add gives the same g to both inputs, a
    # user's gradient=, retain_graph buffers) must still come out as separate arrays
    a = Tensor(np.ones(3, np.float32), requires_grad=True)
    b = Tensor(np.ones(3, np.float32), requires_grad=True)
    (a + b).sum().backward()
    assert not np.shares_memory(a.grad.data, b.grad.data)
    a.grad.data *= 2  # in-place edit (clip_grad_norm_ does this) stays local
    np.testing.assert_array_equal(b.grad.data, [1, 1, 1])
    x = Tensor(np.arange(3, dtype=np.float32), requires_grad=True)
    gr = np.ones(3, np.float32)
    x.backward(gr)
    assert not np.shares_memory(x.grad.data, gr)
    x.grad.data[...] = 0
    np.testing.assert_array_equal(gr, [1, 1, 1])
    # several contributions to one tensor, accumulated in place, and retain_graph run twice
    w = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    h = w * w
    y = (h + h * 2.0 + w).sum()       # dy/dw = 6 w + 1
    y.backward(retain_graph=True)
    np.testing.assert_allclose(w.grad.data, 6 * w.data + 1)
    g1 = w.grad.data.copy()
    y.backward()
    np.testing.assert_allclose(w.grad.data, 2 * g1)


# ---- embedding gradients (IndexedRows): added in place into a tied table's gradient ----
@pytest.mark.parametrize("order", ["head_last", "head_first", "two_lookups", "lookup_only"])
def test_tied_embedding_gradient(order):
    g = np.random.default_rng(5)
    V, C = 13, 6
    W = fg.tensor(g.standard_normal((V, C)), requires_grad=True)
    ids, ids2 = g.integers(0, V, (2, 5)), g.integers(0, V, (3,))
    x = fg.tensor(g.standard_normal((4, C)))
    wy, we, we2 = g.standard_normal((4, V)), g.standard_normal((2, 5, C)), g.standard_normal((3, C))
    y = F.linear(x, W)  # (4, V): dW = wy^T x
    e = F.embedding(fg.tensor(ids), W)
    terms = {"head_last": [(e, we), (y, wy)], "head_first": [(y, wy), (e, we)],
             "two_lookups": [(e, we), (F.embedding(fg.tensor(ids2), W), we2)], "lookup_only": [(e, we)]}[order]
    loss = None
    for t, w in terms:
        s = (t * fg.tensor(w)).sum()
        loss = s if loss is None else loss + s
    loss.backward()
    want = np.zeros((V, C))
    np.add.at(want, ids.reshape(-1), we.reshape(-1, C))
    if order in ("head_last", "head_first"):
        want += wy.T @ x.data
    if order == "two_lookups":
        np.add.at(want, ids2, we2)
    np.testing.assert_allclose(W.grad.data, want, rtol=1e-12, atol=1e-12)


def test_tied_gpt_embedding_gradient_is_added_in_place(monkeypatch):
    import sys
    from fusegrad.models import GPT, GPTConfig
    IR = sys.modules["fusegrad.tensor"].IndexedRows
    calls = []
    monkeypatch.setattr(IR, "add_to", lambda self, acc, f=IR.add_to: (calls.append(acc.shape), f(self, acc))[1])
    m = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16), seed=0)
    x = np.random.default_rng(0).integers(0, 64, (2, 8))
    _, loss = m(x, x)
    loss.backward()
    assert calls == [(64, 16)]  # the token table (tied to the output layer), not a dense copy


def test_float64_scalar_results_stay_float64():
    # a 0-d op returns a NumPy scalar, not an array: it was taken for a Python float and
    # rounded to float32 (a float64 loss times 0.5 lost 8 digits)
    s = fg.tensor(np.full((3, 4), 1 / 3), requires_grad=True).sum()
    assert (s * 0.5).dtype == np.float64 and (s * 0.5).item() == 2.0
    assert fg.tensor(np.float64(0.1)).dtype == np.float64 and fg.tensor(np.int32(3)).dtype == np.int32
    assert fg.tensor(0.1).dtype == np.float32          # Python floats still default to float32
