"""nn modules: registration, state_dict round trips and errors, repr, train/eval, init ranges,
clip_grad_norm_, data loading; an MLP against torch with the same weights."""
from __future__ import annotations

import math

import numpy as np
import pytest

import fusegrad as fg
import fusegrad.nn as nn
import fusegrad.nn.functional as F
from fusegrad.data import DataLoader, TensorDataset


def mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_parameters_and_names():
    m = mlp()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert len(list(m.children())) == 3
    assert m[0].weight.shape == (8, 4)


def test_state_dict_round_trip():
    a, b = mlp(), mlp()
    b.load_state_dict(a.state_dict())
    x = fg.randn(5, 4)
    np.testing.assert_array_equal(a(x).data, b(x).data)
    sd = a.state_dict()
    sd["0.weight"].data[...] = 0  # a copy: the model is unchanged
    assert np.abs(a[0].weight.data).sum() > 0


def test_load_state_dict_errors():
    m = mlp()
    sd = m.state_dict()
    del sd["2.bias"]
    with pytest.raises(KeyError, match=r"missing keys \['2.bias'\]"):
        m.load_state_dict(sd)
    sd = m.state_dict()
    sd["0.weight"] = fg.tensor(np.zeros((8, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"size mismatch for 0.weight: expected shape \(8, 4\), got \(8, 5\)"):
        m.load_state_dict(sd)
    sd = m.state_dict()
    sd["extra"] = fg.tensor([1.0])
    with pytest.raises(KeyError, match="unexpected keys"):
        m.load_state_dict(sd)


def test_repr():
    assert repr(mlp()) == ("Sequential(\n  (0): Linear(in_features=4, out_features=8, bias=True)\n"
                           "  (1): ReLU()\n  (2): Linear(in_features=8, out_features=3, bias=True)\n)")


def test_train_eval_dropout():
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    x = fg.ones(100, 4)
    m.eval()
    assert not m[1].training
    np.testing.assert_array_equal(m(x).data, m[0](x).data)
    m.train()
    y = m(x).data
    z = m[0](x).data
    assert ((y == 0) | np.isclose(y, 2 * z)).all() and (y == 0).any()


def test_linear_default_init_bounds():
    lin = nn.Linear(100, 50)
    b = 1 / math.sqrt(100)
    assert np.abs(lin.weight.data).max() <= b and np.abs(lin.weight.data).max() > 0.8 * b
    assert np.abs(lin.bias.data).max() <= b
    assert lin.weight.dtype == np.float32


def test_layernorm_embedding_modules():
    ln = nn.LayerNorm(6)
    x = fg.randn(3, 6)
    y = ln(x).data
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)
    emb = nn.Embedding(10, 4)
    assert emb(fg.tensor([[1, 2, 3]])).shape == (1, 3, 4)
    with pytest.raises(ValueError, match=r"embedding: ids must be in \[0, 10\)"):
        emb(fg.tensor([10]))


def test_zero_grad_set_to_none():
    m = mlp()
    F.cross_entropy(m(fg.randn(2, 4)), fg.tensor([0, 2])).backward()
    m.zero_grad(set_to_none=False)
    assert all((p.grad.data == 0).all() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_cross_entropy_target_out_of_range():
    with pytest.raises(ValueError, match="target class out of range"):
        F.cross_entropy(fg.randn(2, 3), fg.tensor([0, 3]))


def test_clip_grad_norm():
    p = nn.Parameter(np.zeros(4, dtype=np.float32))
    p.grad = fg.tensor(np.array([3.0, 4.0, 0.0, 0.0], dtype=np.float32))
    n = nn.utils.clip_grad_norm_([p], 1.0)
    assert n.item() == pytest.approx(5.0)
    np.testing.assert_allclose(p.grad.data, [0.6, 0.8, 0, 0], rtol=1e-5)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_torch(rng, norm_type, dtype):
    torch = pytest.importorskip("torch")
    shapes = [(300, 257), (7,), (1,), (70_001,), (33, 5)]
    gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ps = [nn.Parameter(np.zeros(s, dtype=dtype)) for s in shapes]
    tps = [torch.zeros(s, dtype=torch.from_numpy(np.zeros(1, dtype)).dtype, requires_grad=True) for s in shapes]
    for p, tp, g in zip(ps, tps, gs):
        p.grad = fg.tensor(g.copy())
        tp.grad = torch.from_numpy(g.copy())
    n = nn.utils.clip_grad_norm_(ps, 3.0, norm_type=norm_type)
    tn = torch.nn.utils.clip_grad_norm_(tps, 3.0, norm_type=norm_type)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert n.item() == pytest.approx(tn.item(), rel=tol)
    for p, tp in zip(ps, tps):
        np.testing.assert_allclose(p.grad.data, tp.grad.numpy(), rtol=tol, atol=tol * 1e-3)


@pytest.mark.parametrize("n,bs,drop,expect", [(10000, 32, False, 313), (10000, 32, True, 312), (7, 7, False, 1)])
def test_dataloader_batches(n, bs, drop, expect):
    ds = TensorDataset(np.arange(n, dtype=np.float32), np.arange(n))
    dl = DataLoader(ds, batch_size=bs, drop_last=drop, shuffle=True, seed=0)
    batches = list(dl)
    assert len(dl) == expect == len(batches)
    seen = np.concatenate([b[1].data for b in batches])
    if not drop:
        assert sorted(seen.tolist()) == list(range(n))


def test_dataloader_seed_reproducible():
    ds = TensorDataset(np.arange(20))
    a = [b[0].data.tolist() for b in DataLoader(ds, 5, shuffle=True, seed=3)]
    b = [b[0].data.tolist() for b in DataLoader(ds, 5, shuffle=True, seed=3)]
    assert a == b and a != [list(range(i, i + 5)) for i in range(0, 20, 5)]
    with pytest.raises(ValueError, match="different lengths"):
        TensorDataset(np.arange(3), np.arange(4))


def test_mlp_matches_torch():
    torch = pytest.importorskip("torch")
    m = nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.LayerNorm(7), nn.Linear(7, 7), nn.Tanh(), nn.Linear(7, 3))
    tm = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.LayerNorm(7), torch.nn.Linear(7, 7),
                             torch.nn.Tanh(), torch.nn.Linear(7, 3))
    tm.load_state_dict({k: torch.tensor(v.data) for k, v in m.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0, 2])
    loss = F.cross_entropy(m(fg.tensor(x)), fg.tensor(y))
    loss.backward()
    tl = torch.nn.functional.cross_entropy(tm(torch.tensor(x)), torch.tensor(y))
    tl.backward()
    assert loss.item() == pytest.approx(tl.item(), rel=1e-5)
    tg = dict(tm.named_parameters())
    for n, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.data, tg[n].grad.numpy(), rtol=1e-4, atol=1e-6)


def test_module_list_and_dict_register_their_modules():
    ml = nn.ModuleList([nn.Linear(2, 3), nn.Linear(3, 1)])
    ml.append(nn.LayerNorm(1))
    assert len(ml) == 3 and isinstance(ml[-1], nn.LayerNorm) and len(ml[:2]) == 2
    assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    ml.insert(0, nn.Linear(2, 2))
    assert [type(m).__name__ for m in ml] == ["Linear", "Linear", "Linear", "LayerNorm"]
    assert ml[1].weight.shape == (3, 2)
    with pytest.raises(IndexError, match="ModuleList index 4 is out of range"):
        ml[4]
    with pytest.raises(TypeError, match="ModuleList: int is not a Module"):
        ml.append(3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
            self.heads = nn.ModuleDict({"a": nn.Linear(4, 1), "b": nn.Linear(4, 2)})

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return self.heads["b"](x)

    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
                     "heads.a.weight", "heads.a.bias", "heads.b.weight", "heads.b.bias"]
    assert list(net.heads) == ["a", "b"] and "a" in net.heads and len(net.heads) == 2
    net(fg.Tensor(np.ones((3, 4), np.float32))).sum().backward()
    assert net.layers[0].weight.grad is not None and net.heads["a"].weight.grad is None
    sd = net.state_dict()
    net2 = Net()
    net2.load_state_dict(sd)
    np.testing.assert_array_equal(net2.heads["b"].weight.data, net.heads["b"].weight.data)
    with pytest.raises(KeyError, match="keys must be non-empty strings without"):
        nn.ModuleDict({"a.b": nn.Linear(1, 1)})


def test_module_apply_to_and_requires_grad():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Linear", "ReLU", "Linear", "Sequential"]             # children first, as torch
    net.apply(lambda m: nn.init.zeros_(m.bias) if isinstance(m, nn.Linear) else None)
    assert not net[0].bias.data.any()
    w = net[0].weight.data.copy()
    net(fg.Tensor(np.ones((2, 3), np.float32))).sum().backward()
    assert net.double() is net and all(p.dtype == np.float64 for p in net.parameters())
    assert all(p.grad.dtype == np.float64 for p in net.parameters())
    np.testing.assert_array_equal(net[0].weight.data, w.astype(np.float64))
    assert net(fg.Tensor(np.ones((2, 3)))).dtype == np.float64
    assert net.float()[0].weight.dtype == np.float32 and net.to("cpu") is net
    with pytest.raises(TypeError, match="Module.to: dtype must be float32 or float64"):
        net.to(np.int32)
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())


def test_gpt_to_float64_matches_a_float64_gpt():
    from fusegrad.models import GPT, GPTConfig
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, pos="rope")
    a, b = GPT(cfg, seed=0).to(np.float64), GPT(cfg, seed=0, dtype=np.float64)
    idx = np.array([[1, 2, 3, 4]])
    np.testing.assert_allclose(a(idx)[0].data, b(idx)[0].data, rtol=1e-6)
    assert a(idx)[0].dtype == np.float64 and a.generate(idx, 3, temperature=0).shape == (1, 7)
