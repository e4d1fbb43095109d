"""A PyTorch user's habits give PyTorch's answers (issue 23): max/min with a dim return
(values, indices), cross_entropy takes classes on axis 1 (plus weights, label smoothing and
class-probability targets), and dtypes promote as in torch. Compared with torch in float64
where it is installed; the numbers that need no torch are checked directly."""
from __future__ import annotations

import numpy as np
import pytest

import fusegrad as fg
import fusegrad.nn.functional as F
from fusegrad import nn

R = np.random.default_rng(23)


def _both(torch, fg_fn, t_fn, *arrays, targets=()):
    """Run fg_fn on fusegrad tensors and t_fn on torch tensors (float64, requires grad); compare
    the outputs and the gradients of a random projection of them, to float64 rounding."""
    fa = [fg.tensor(a.copy(), requires_grad=True) for a in arrays]
    ta = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    y, yt = fg_fn(*fa), t_fn(*ta)
    np.testing.assert_allclose(y.data, yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    w = R.standard_normal(y.shape)
    (y * fg.tensor(w)).sum().backward()
    (yt * torch.tensor(w)).sum().backward()
    for a, b in zip(fa, ta):
        np.testing.assert_allclose(a.grad.data, b.grad.numpy(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- item 3: max/min with a dim
def test_max_min_with_dim_return_values_and_indices():
    x = fg.tensor([[1.0, 5.0, 3.0], [7.0, 2.0, 7.0]])
    vals, idx = x.max(dim=1)                       # used to unpack the values as "indices"
    assert vals.tolist() == [5.0, 7.0] and idx.tolist() == [1, 0]      # first maximum, as torch
    assert idx.dtype == np.int64
    r = x.min(0, keepdim=True)
    assert r.values.tolist() == [[1.0, 2.0, 3.0]] and r.indices.tolist() == [[0, 1, 0]]
    assert x.max().item() == 7.0 and x.min().item() == 1.0 and x.max().shape == ()
    v, i = fg.tensor(3.0).max(0)                  # a 0-d tensor takes dim 0, as torch
    assert v.item() == 3.0 and i.item() == 0
    with pytest.raises(TypeError, match="amax"):
        x.max(dim=(0, 1))
    with pytest.raises(IndexError, match="max: dim 2"):
        x.max(2)


def test_max_with_dim_gradient_goes_to_the_index():
    x = fg.tensor([[2.0, 2.0, 1.0]], requires_grad=True)
    x.max(1).values.sum().backward()
    assert x.grad.tolist() == [[1.0, 0.0, 0.0]]     # torch: the returned index takes it all
    y = fg.tensor([[2.0, 2.0, 1.0]], requires_grad=True)
    y.max().backward()
    assert y.grad.tolist() == [[0.5, 0.5, 0.0]]     # full reduction: split between ties, as torch


def test_max_min_topk_vs_torch():
    torch = pytest.importorskip("torch")
    x = R.standard_normal((4, 6, 3))
    for d in (0, 1, -1):
        for keep in (False, True):
            for name in ("max", "min"):
                a = getattr(fg.tensor(x), name)(d, keep)
                b = getattr(torch.tensor(x), name)(d, keep)
                np.testing.assert_array_equal(a.values.data, b.values.numpy())
                np.testing.assert_array_equal(a.indices.data, b.indices.numpy())
        a, b = fg.tensor(x).topk(2, d), torch.tensor(x).topk(2, d)
        np.testing.assert_array_equal(a.indices.data, b.indices.numpy())
    _both(torch, lambda a: a.min(1).values, lambda a: a.min(1).values, x)
    _both(torch, lambda a: a.topk(3, 1, largest=False).values, lambda a: a.topk(3, 1, largest=False).values, x)


def test_max_min_with_a_tensor_are_elementwise():
    x, y = fg.tensor([1.0, 5.0, 3.0]), fg.tensor([4.0, 2.0, 3.0])
    assert x.max(y).tolist() == [4.0, 5.0, 3.0] and x.min(y).tolist() == [1.0, 2.0, 3.0]   # not (values, indices)
    assert x.max(other=y).tolist() == fg.maximum(x, y).tolist() == [4.0, 5.0, 3.0]
    assert fg.minimum(x, 2.0).tolist() == [1.0, 2.0, 2.0] and fg.maximum(x, 2).dtype == np.float32
    assert x.max(np.array([9.0, 0.0, 0.0])).tolist() == [9.0, 5.0, 3.0]
    assert fg.maximum(fg.tensor([1, 7]), fg.tensor([3, 2])).tolist() == [3, 7]
    with pytest.raises(TypeError, match="give dim .* or other .*, not both"):
        x.max(0, other=y)
    with pytest.raises(TypeError, match="keepdim applies to a reduction"):
        x.min(y, True)
    with pytest.raises(TypeError, match=r"max: dim must be an integer, got 2.0; .* fusegrad.maximum\(x, 2.0\)"):
        x.max(2.0)


def test_elementwise_max_min_vs_torch():
    torch = pytest.importorskip("torch")
    a = R.standard_normal((3, 4))
    b = R.standard_normal((4,))
    a[0, :] = b                                      # ties: each side gets half the gradient
    a[1, 2] = np.nan                                 # NaN wins, and both sides get the gradient
    for f in (lambda u, v: u.max(v), lambda u, v: u.min(v), lambda u, v: v.max(u),
              lambda u, v: fg.maximum(u, v) if isinstance(u, fg.Tensor) else torch.maximum(u, v),
              lambda u, v: fg.minimum(v, u) if isinstance(u, fg.Tensor) else torch.minimum(v, u)):
        _both(torch, f, f, a, b)
    # dtype promotion follows torch's
    for x, y in [(np.array([1, 5], np.int64), np.array([2.5, 0.5], np.float32)),
                 (np.array([1, 5], np.int32), np.array([3, 2], np.int64)),
                 (np.array([1.0, 5.0], np.float32), np.array([3.0, 2.0]))]:
        ours, theirs = fg.maximum(fg.tensor(x), fg.tensor(y)), torch.maximum(torch.tensor(x), torch.tensor(y))
        assert str(ours.dtype) == str(theirs.dtype).replace("torch.", "") and ours.tolist() == theirs.tolist()


# ---------------------------------------------------------------- item 5: cross_entropy layouts
def test_cross_entropy_takes_classes_on_axis_1():
    # the case: C equals the sequence length, so the old last-axis rule failed silently
    x = R.standard_normal((2, 5, 5)).astype(np.float32)
    t = R.integers(0, 5, (2, 5))
    want = -np.mean([np.log(np.exp(x[n, :, d]).sum()) * -1 + x[n, t[n, d], d]
                     for n in range(2) for d in range(5)])
    np.testing.assert_allclose(F.cross_entropy(fg.tensor(x), t).item(), want, rtol=1e-5)
    flat = F.cross_entropy(fg.tensor(x.transpose(0, 2, 1).reshape(10, 5)), t.reshape(10)).item()
    np.testing.assert_allclose(F.cross_entropy(fg.tensor(x), t).item(), flat, rtol=1e-6)


@pytest.mark.parametrize("case", ["2d", "3d", "4d", "1d", "2d_none", "3d_none", "3d_sum", "1d_none"])
@pytest.mark.parametrize("extra", ["plain", "ignore", "smooth", "weight", "weight_smooth_ignore"])
def test_cross_entropy_vs_torch(case, extra):
    torch = pytest.importorskip("torch")
    shape = {"2d": (7, 5), "3d": (3, 5, 4), "4d": (2, 5, 3, 2), "1d": (5,)}[case.split("_")[0]]
    red = case.split("_")[1] if "_" in case else "mean"
    x = R.standard_normal(shape)
    t = R.integers(0, 5, shape[:1] + shape[2:] if len(shape) > 1 else ())
    kw = {}
    if "ignore" in extra and t.ndim:
        t.flat[1] = 4
        kw["ignore_index"] = 4
    if "smooth" in extra:
        kw["label_smoothing"] = 0.15
    w = R.random(5) + 0.2
    fkw, tkw = dict(kw, reduction=red), dict(kw, reduction=red)
    if "weight" in extra:
        fkw["weight"], tkw["weight"] = w, torch.tensor(w)
    _both(torch, lambda a: F.cross_entropy(a, t, **fkw),
          lambda a: torch.nn.functional.cross_entropy(a, torch.tensor(t), **tkw), x)
    _both(torch, lambda a: nn.CrossEntropyLoss(**fkw)(a, fg.tensor(t)),
          lambda a: torch.nn.CrossEntropyLoss(**tkw)(a, torch.tensor(t)), x)


@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 3), (4,)])
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.2}, {"reduction": "none"}, {"reduction": "sum"},
                                {"weight": True}])
def test_cross_entropy_probability_targets_vs_torch(shape, kw):
    torch = pytest.importorskip("torch")
    x = R.standard_normal(shape)
    p = R.random(shape)
    p /= p.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)
    w = R.random(4) + 0.2
    fkw, tkw = dict(kw), dict(kw)
    if kw.get("weight"):
        fkw["weight"], tkw["weight"] = w, torch.tensor(w)
    _both(torch, lambda a, q: F.cross_entropy(a, q, **fkw),
          lambda a, q: torch.nn.functional.cross_entropy(a, q, **tkw), x, p)   # the target's gradient too


def test_cross_entropy_mean_over_weights_and_all_ignored():
    x = fg.tensor(np.zeros((3, 2)))
    # weighted mean divides by the targets' weights: equal logits give log 2 whatever the weights
    np.testing.assert_allclose(F.cross_entropy(x, [0, 1, 1], weight=[1.0, 3.0]).item(), np.log(2), rtol=1e-14)
    assert np.isnan(F.cross_entropy(x, [-100, -100, -100], label_smoothing=0.1).item())     # as torch


def test_cross_entropy_bad_arguments():
    x = fg.tensor(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"cross_entropy: weight must be .* shape \(4,\)"):
        F.cross_entropy(x, [0, 1, 2], weight=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        F.cross_entropy(x, [0, 1, 2], label_smoothing=1.5)
    with pytest.raises(ValueError, match="class-probability .* must have the input's shape"):
        F.cross_entropy(x, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="ignore_index is not supported for class-probability"):
        F.cross_entropy(x, np.zeros((3, 4)), ignore_index=1)
    with pytest.raises(TypeError, match="size_average and reduce are deprecated"):
        F.cross_entropy(x, [0, 1, 2], reduce=True)
    with pytest.raises(TypeError, match="cross_entropy: input must be floating point"):
        F.cross_entropy(fg.tensor([[1, 2]]), [0])


def test_nll_loss_vs_torch():
    torch = pytest.importorskip("torch")
    x = R.standard_normal((3, 5, 4))
    t = R.integers(0, 5, (3, 4))
    t[1, 2] = -100
    w = R.random(5) + 0.2
    for red in ("mean", "sum", "none"):
        _both(torch, lambda a: nn.NLLLoss(weight=w, reduction=red)(F.log_softmax(a, 1), t),
              lambda a: torch.nn.NLLLoss(weight=torch.tensor(w), reduction=red)(torch.log_softmax(a, 1),
                                                                                  torch.tensor(t)), x)


# ---------------------------------------------------------------- item 8: type promotion
def test_python_scalars_do_not_promote():
    f32 = fg.tensor([1.0, 2.0])
    assert f32.dtype == fg.float32
    assert (f32 * 2.0).dtype == fg.float32 and (2.5 - f32).dtype == fg.float32 and (f32 / 3).dtype == fg.float32
    ints = fg.tensor([0, 128, 255])
    x = ints / 255.0                               # was float64, which Linear then refused
    assert x.dtype == fg.float32
    np.testing.assert_allclose(x.data, [0.0, 128 / 255, 1.0], rtol=1e-7)
    assert nn.Linear(3, 2)(x.reshape(1, 3)).dtype == fg.float32
    assert (ints * 2).dtype == fg.int64 and (ints / 2).dtype == fg.float32 and (ints + 0.5).dtype == fg.float32
    assert (fg.tensor([True, False]) + 1).dtype == fg.int64
    assert (ints ** 0.5).dtype == fg.float32 and (ints ** 2).dtype == fg.int64


def test_tensor_tensor_promotion_vs_torch():
    torch = pytest.importorskip("torch")
    pairs = [(np.int64, np.float32), (np.int32, np.float64), (np.float32, np.float64), (np.int32, np.int64),
             (np.uint8, np.int8), (np.bool_, np.int32), (np.bool_, np.float32), (np.float32, np.float32)]
    for a, b in pairs:
        for sa, sb in (((2,), (2,)), ((2,), ()), ((), (2,))):       # 0-d tensors count as scalars
            x, y = np.ones(sa, a), np.ones(sb, b)
            for op in ("__add__", "__mul__", "__truediv__", "__sub__"):
                if op == "__sub__" and np.bool_ in (a, b):
                    continue
                got = getattr(fg.tensor(x), op)(fg.tensor(y)).dtype
                want = getattr(torch.from_numpy(x), op)(torch.from_numpy(y)).dtype
                assert str(got) == str(want).replace("torch.", ""), (a, b, sa, sb, op)
    for a in (np.int64, np.float64, np.float32, np.bool_):
        for s in (2, 2.5, True):
            got = (fg.tensor(np.ones(2, a)) * s).dtype
            assert str(got) == str((torch.from_numpy(np.ones(2, a)) * s).dtype).replace("torch.", "")


def test_gradients_cross_dtypes():
    x = fg.tensor([1.0, 2.0], requires_grad=True)           # float32
    y = fg.tensor(np.array([3.0, 4.0]), requires_grad=True)  # float64
    z = x * y
    assert z.dtype == fg.float64
    z.sum().backward()
    assert x.grad.dtype == fg.float32 and x.grad.tolist() == [3.0, 4.0] and y.grad.tolist() == [1.0, 2.0]


def test_zero_dim_float64_results_keep_their_dtype():
    s = fg.tensor(np.array([0.1, 0.2])).sum()        # NumPy returns a scalar for 0-d products
    assert (s * 0.1).dtype == fg.float64
    assert (s * 0.1).item() == 0.30000000000000004 * 0.1


def test_default_dtype():
    assert fg.get_default_dtype() == fg.float32
    try:
        fg.set_default_dtype(fg.float64)
        assert fg.tensor([1.5]).dtype == fg.float64 and (fg.tensor([1]) / 2).dtype == fg.float64
        assert fg.zeros(2).dtype == fg.float64 and fg.arange(0.0, 1.0, 0.5).dtype == fg.float64
        assert nn.Linear(2, 2).weight.dtype == fg.float64 and fg.full((2,), 1.0).dtype == fg.float64
    finally:
        fg.set_default_dtype(fg.float32)
    assert fg.tensor([1.5]).dtype == fg.float32 and nn.Linear(2, 2).weight.dtype == fg.float32
    with pytest.raises(TypeError, match="set_default_dtype: only float32 and float64"):
        fg.set_default_dtype(fg.int64)


# ---------------------------------------------------------------- item 6: one seed for everything
def _draw_everything():
    from fusegrad.data import DataLoader, TensorDataset
    from fusegrad.models import GPT, GPTConfig

    lin = nn.Linear(4, 3)
    drop = F.dropout(fg.ones(20), 0.5)
    loader = DataLoader(TensorDataset(np.arange(10)), batch_size=10, shuffle=True)
    order = [b[0].tolist() for _ in range(2) for b in loader]          # two epochs, two permutations
    gpt = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8))
    sample = gpt.generate(np.zeros((1, 1), np.int64), 6)
    return [lin.weight.data, drop.data, fg.randn(3).data, fg.rand(3).data, fg.randint(0, 100, (4,)).data,
            np.array(order), gpt.wte.weight.data, sample]


def test_manual_seed_makes_every_random_source_reproducible():
    fg.manual_seed(1234)
    a = _draw_everything()
    fg.manual_seed(1234)
    b = _draw_everything()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    fg.manual_seed(99)
    c = _draw_everything()
    assert all(not np.array_equal(x, y) for x, y in zip(a[:6], c[:6]))
    assert fg.initial_seed() == 99
    nn.init.manual_seed(1234)              # the older spelling seeds the same generator
    np.testing.assert_array_equal(nn.Linear(4, 3).weight.data, a[0])


def test_generator_objects():
    g = fg.Generator().manual_seed(5)
    x = fg.randn(4, generator=g)
    np.testing.assert_array_equal(fg.randn(4, generator=fg.Generator().manual_seed(5)).data, x.data)
    state = g.get_state()
    y = fg.rand(3, generator=g)
    g.set_state(state)
    np.testing.assert_array_equal(fg.rand(3, generator=g).data, y.data)
    fg.manual_seed(0)
    u = fg.randn(2)
    fg.manual_seed(0)
    fg.randn(4, generator=g)               # an explicit generator leaves the default one alone
    np.testing.assert_array_equal(fg.randn(2).data, u.data)
    with pytest.raises(TypeError, match="manual_seed: seed must be an integer"):
        fg.manual_seed(1.5)
    with pytest.raises(TypeError, match="generator must be a fusegrad.Generator"):
        fg.randn(2, generator=5)
