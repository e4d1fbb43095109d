"""The everyday API a PyTorch user types from memory (issue 23): creation functions, dtype
objects, grad modes, save/load, Tensor methods, layers and losses, RMSprop, the lr_scheduler
module and data splitting; against torch in float64 where it is installed."""
from __future__ import annotations

import numpy as np
import pytest

import fusegrad as fg
import fusegrad.nn.functional as F
from fusegrad import nn, optim
from fusegrad.data import DataLoader, Dataset, Subset, TensorDataset, random_split
from fusegrad.optim import lr_scheduler
from test_torch_habits import _both

R = np.random.default_rng(2323)


# ------------------------------------------------------------------ creation and dtypes
def test_creation_functions():
    assert fg.arange(5).tolist() == [0, 1, 2, 3, 4] and fg.arange(5).dtype == fg.int64
    assert fg.arange(2, 8, 3).tolist() == [2, 5] and fg.arange(5, 0, -2).tolist() == [5, 3, 1]
    a = fg.arange(0, 1, 0.1)
    assert a.dtype == fg.float32 and a.shape == (10,)
    np.testing.assert_allclose(a.data, np.arange(10) * 0.1, rtol=1e-6)
    assert fg.full((2, 3), 7).dtype == fg.int64 and fg.full((2,), 0.5).dtype == fg.float32
    assert fg.full((2,), True).dtype == fg.bool_ and fg.full(3, 1.0).shape == (3,)
    x = fg.tensor(np.ones((2, 3)))
    assert fg.zeros_like(x).dtype == fg.float64 and fg.ones_like(x, dtype=fg.int32).dtype == fg.int32
    assert fg.full_like(x, 2).tolist() == [[2.0] * 3] * 2
    assert fg.zeros(2, 3).dtype == fg.float32 and fg.ones((2,), dtype=fg.float64).dtype == fg.float64
    u = fg.rand(1000)
    assert u.dtype == fg.float32 and 0 <= u.data.min() and u.data.max() < 1
    r = fg.randint(3, 6, (500,))
    assert r.dtype == fg.int64 and set(r.tolist()) == {3, 4, 5}
    assert fg.randint(4, (2, 2)).shape == (2, 2) and fg.randint(0, 4, size=(3,)).shape == (3,)
    with pytest.raises(ValueError, match="randint: need integers low < high"):
        fg.randint(5, 5, (2,))
    with pytest.raises(ValueError, match="arange: step must be nonzero"):
        fg.arange(0, 3, 0)


def test_arange_vs_torch():
    torch = pytest.importorskip("torch")
    for args in [(7,), (1, 9, 2), (0.0, 1.0, 0.1), (-1, 1.5, 0.25), (3, 0, -1), (0, 2.0000001, 0.5)]:
        a, b = fg.arange(*args), torch.arange(*args)
        assert a.shape == tuple(b.shape) and str(a.dtype) == str(b.dtype).replace("torch.", ""), args
        np.testing.assert_allclose(a.data, b.numpy(), rtol=1e-6)


def test_creation_dtypes_and_shapes_vs_torch():
    torch = pytest.importorskip("torch")
    x = np.ones((2, 3), np.float64)
    cases = [("rand", (2, 3), {}), ("randn", (4,), {}), ("zeros", (2, 1), {}), ("ones", ((3,),), {}),
             ("full", ((2, 2), 7), {}), ("full", ((2,), 0.5), {}), ("full", ((1,), True), {}),
             ("randint", (3, 6, (5,)), {}), ("randint", (4, (2, 2)), {}), ("rand", (2,), {"dtype": "float64"})]
    for name, args, kw in cases:
        a = getattr(fg, name)(*args, **{k: getattr(fg, v) for k, v in kw.items()})
        b = getattr(torch, name)(*args, **{k: getattr(torch, v) for k, v in kw.items()})
        assert a.shape == tuple(b.shape) and str(a.dtype) == str(b.dtype).replace("torch.", ""), (name, args)
    for name, kw in [("zeros_like", {}), ("ones_like", {"dtype": "int32"}), ("full_like", {"fill_value": 2})]:
        a = getattr(fg, name)(fg.tensor(x), **{k: getattr(fg, v) if k == "dtype" else v for k, v in kw.items()})
        b = getattr(torch, name)(torch.tensor(x), **{k: getattr(torch, v) if k == "dtype" else v
                                                     for k, v in kw.items()})
        assert str(a.dtype) == str(b.dtype).replace("torch.", "") and a.tolist() == b.tolist(), name
    assert fg.from_numpy(x).dtype == fg.float64 and str(torch.from_numpy(x).dtype) == "torch.float64"


def test_conversions_vs_torch():
    torch = pytest.importorskip("torch")
    v = np.array([[1.5, -2.5, 2.7], [-0.7, 3.0, -1e-3]])
    for name in ("int", "long", "bool", "float", "double"):
        a, b = getattr(fg.tensor(v), name)(), getattr(torch.tensor(v), name)()
        assert str(a.dtype).replace("bool_", "bool") == str(b.dtype).replace("torch.", "") and a.tolist() == b.tolist()
    # to(dtype) between floats carries the gradient, cast back to the source dtype
    _both(torch, lambda a: a.to(fg.float32).to(fg.float64) * 3.0, lambda a: a.to(torch.float32).double() * 3.0, v)
    _both(torch, lambda a: a.float().to("cpu", fg.float64).t(), lambda a: a.float().to("cpu", torch.float64).t(), v)


def test_from_numpy_shares_memory_and_dtype_objects():
    a = np.zeros(3, np.float64)
    t = fg.from_numpy(a)
    a[0] = 5.0
    assert t.dtype == fg.float64 and t.tolist() == [5.0, 0.0, 0.0]
    with pytest.raises(TypeError, match="from_numpy: expected a numpy.ndarray"):
        fg.from_numpy([1.0])
    assert fg.float is fg.float32 and fg.double is fg.float64 and fg.long is fg.int64 and fg.int is fg.int32
    assert np.zeros(2, fg.int64).dtype == fg.int64 and fg.tensor([1], dtype=fg.float64).dtype == fg.float64


def test_grad_modes():
    x = fg.tensor([1.0], requires_grad=True)
    with fg.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert fg.is_grad_enabled()
    fg.set_grad_enabled(False)                 # a plain call switches at once, as in torch
    try:
        assert not fg.is_grad_enabled() and not (x * 2).requires_grad
        with fg.enable_grad():
            assert (x * 2).requires_grad
    finally:
        fg.set_grad_enabled(True)
    with fg.inference_mode():
        assert not (x * 2).requires_grad
    with fg.inference_mode(False):
        assert (x * 2).requires_grad

    @fg.inference_mode()
    def f(v):
        return v * 2
    assert not f(x).requires_grad and fg.is_grad_enabled()


# ------------------------------------------------------------------ Tensor methods
def test_tensor_conversions_and_inplace():
    x = fg.tensor([[1.5, -2.5], [3.0, 4.0]])
    assert x.int().dtype == fg.int32 and x.int().tolist() == [[1, -2], [3, 4]] and x.long().dtype == fg.int64
    assert x.cpu() is x and x.to("cpu") is x and x.to(fg.float32) is x and x.device == "cpu"
    assert x.to("cpu", fg.float64).dtype == fg.float64 and x.to(fg.tensor([1])).dtype == fg.int64
    assert x.to(dtype=fg.float64).dtype == fg.float64 and x.to(fg.float32, copy=True) is not x
    with pytest.raises(RuntimeError, match="device 'mps' is not available"):
        x.to("mps")
    assert x.t().tolist() == [[1.5, 3.0], [-2.5, 4.0]] and fg.tensor([1.0]).t().shape == (1,)
    with pytest.raises(ValueError, match="t: expects a tensor with <= 2 dimensions"):
        fg.zeros(1, 2, 3).t()
    y = fg.tensor([1.0, 2.0])
    assert y.add_(fg.tensor([1.0, 1.0]), alpha=2).tolist() == [3.0, 4.0]
    assert y.mul_(2).tolist() == [6.0, 8.0] and y.sub_(1).tolist() == [5.0, 7.0] and y.div_(4).tolist() == [1.25, 1.75]
    assert y.zero_().tolist() == [0.0, 0.0]
    p = fg.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        p.add_(1.0)
    with fg.no_grad():
        p.add_(1.0)
    assert p.tolist() == [2.0]


def test_var_std_vs_torch():
    torch = pytest.importorskip("torch")
    x = R.standard_normal((4, 5, 3))
    for kw in [{}, {"dim": 1}, {"dim": (0, 2), "keepdim": True}, {"dim": -1, "unbiased": False},
               {"dim": 1, "correction": 0}, {"dim": 0, "correction": 2}]:
        tkw = dict(kw)
        if "unbiased" in tkw:
            tkw["correction"] = int(tkw.pop("unbiased"))
        for name in ("var", "std"):
            _both(torch, lambda a: getattr(a, name)(**kw), lambda a: getattr(a, name)(**tkw), x)
    assert np.isnan(fg.tensor([1.0]).var().item())          # n - correction = 0: nan, as torch


# ------------------------------------------------------------------ layers and losses
LAYERS = {
    "Flatten": (lambda m: m.Flatten(), (2, 3, 4)),
    "Flatten_1_2": (lambda m: m.Flatten(0, 1), (2, 3, 4)),
    "Identity": (lambda m: m.Identity(54, unused=1), (3, 2)),
    "SiLU": (lambda m: m.SiLU(), (4, 5)),
    "LeakyReLU": (lambda m: m.LeakyReLU(), (4, 5)),
    "LeakyReLU_0.2": (lambda m: m.LeakyReLU(0.2), (3, 7)),
    "RMSNorm": (lambda m: m.RMSNorm(6), (2, 3, 6)),
    "RMSNorm_eps_2d": (lambda m: m.RMSNorm((3, 4), eps=1e-3), (2, 3, 4)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_vs_torch(name):
    torch = pytest.importorskip("torch")
    make, shape = LAYERS[name]
    ours, theirs = make(nn).double(), make(torch.nn).double()
    x = R.standard_normal(shape)
    x[0, 0] = 0.0                                   # LeakyReLU's gradient at 0 included
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    if isinstance(ours, nn.RMSNorm):
        ours.weight.data[...] = R.standard_normal(ours.weight.shape)
        theirs.weight.data[...] = torch.tensor(ours.weight.data)
    _both(torch, lambda a: ours(a), lambda a: theirs(a), x)
    if isinstance(ours, nn.RMSNorm):           # the gain's gradient too
        np.testing.assert_allclose(ours.weight.grad.data, theirs.weight.grad.numpy(), rtol=1e-12, atol=1e-14)


LOSSES = {
    "L1Loss": (lambda m, t: m.L1Loss(), None),
    "L1Loss_sum": (lambda m, t: m.L1Loss(reduction="sum"), None),
    "L1Loss_none": (lambda m, t: m.L1Loss(reduction="none"), None),
    "BCEWithLogitsLoss": (lambda m, t: m.BCEWithLogitsLoss(), None),
    "BCEWithLogitsLoss_none": (lambda m, t: m.BCEWithLogitsLoss(reduction="none"), None),
    "BCEWithLogitsLoss_weight": (lambda m, t: m.BCEWithLogitsLoss(weight=t(np.linspace(0.5, 2, 4))), None),
    "BCEWithLogitsLoss_pos_weight": (lambda m, t: m.BCEWithLogitsLoss(pos_weight=t(np.array([0.5, 1, 3, 9.0])),
                                                                      reduction="sum"), None),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_vs_torch(name):
    torch = pytest.importorskip("torch")
    make, _ = LOSSES[name]
    ours, theirs = make(nn, fg.tensor), make(torch.nn, torch.tensor)
    x = R.standard_normal((3, 4)) * 4
    x[0, 0], x[0, 1] = 40.0, -40.0                  # large logits stay finite and exact
    t = R.random((3, 4)) if "BCE" in name else R.standard_normal((3, 4))
    if "L1" in name:
        t[1, 1] = x[1, 1]                           # gradient at a zero difference
    _both(torch, lambda a, b: ours(a, b), lambda a, b: theirs(a, b), x, t)   # target's gradient too


def test_leaky_relu_silu_rms_norm_finite_differences():
    from test_tensor import gradcheck
    gradcheck(lambda a: F.silu(a) * F.leaky_relu(a, 0.1), R.standard_normal((3, 4)))
    gradcheck(lambda a, w: F.rms_norm(a, 5, w), R.standard_normal((2, 5)), R.standard_normal(5))
    gradcheck(lambda a, b: F.binary_cross_entropy_with_logits(a, b, pos_weight=np.array([2.0, 0.5])),
              R.standard_normal((3, 2)), R.random((3, 2)))


def test_new_layers_bad_arguments():
    with pytest.raises(ValueError, match=r"rms_norm: normalized_shape \(4,\) must be the last dims"):
        nn.RMSNorm(4)(fg.zeros(2, 3))
    with pytest.raises(ValueError, match="binary_cross_entropy_with_logits: target shape"):
        nn.BCEWithLogitsLoss()(fg.zeros(2, 3), fg.zeros(3))
    with pytest.raises(ValueError, match="l1_loss: unknown reduction 'avg'"):
        nn.L1Loss(reduction="avg")(fg.zeros(2), fg.zeros(2))


# ------------------------------------------------------------------ RMSprop and schedulers
@pytest.mark.parametrize("kw", [{}, {"momentum": 0.9}, {"centered": True}, {"weight_decay": 0.1, "alpha": 0.9},
                                {"momentum": 0.5, "centered": True, "eps": 1e-3, "lr": 0.05}])
def test_rmsprop_vs_torch(kw):
    torch = pytest.importorskip("torch")
    w0 = R.standard_normal((3, 4))
    p, pt = fg.tensor(w0.copy(), requires_grad=True), torch.tensor(w0.copy(), requires_grad=True)
    opt, optt = optim.RMSprop([p], **kw), torch.optim.RMSprop([pt], **kw)
    for step in range(5):
        g = R.standard_normal((3, 4))
        p.grad, pt.grad = fg.tensor(g), torch.tensor(g)
        opt.step()
        optt.step()
        np.testing.assert_allclose(p.data, pt.detach().numpy(), rtol=1e-12, atol=1e-14)
    sd = opt.state_dict()
    opt2 = optim.RMSprop([fg.tensor(p.data.copy(), requires_grad=True)], **kw)
    opt2.load_state_dict(sd)
    assert opt2.state_dict()["state"][0]["step"] == 5


def _lrs(sched, opt, n, metric=None):
    out = []
    for i in range(n):
        g = opt.param_groups[0]
        out.append((g["lr"], g.get("momentum", g.get("betas", (None,))[0])))
        opt.step()
        sched.step(*([metric[i]] if metric is not None else []))
    return out


def _pair(torch, fg_opt, t_opt, **kw):
    w = np.zeros(2)
    p, pt = fg.tensor(w, requires_grad=True), torch.tensor(w, requires_grad=True)
    p.grad, pt.grad = fg.tensor(np.ones(2)), torch.ones(2, dtype=torch.float64)
    return getattr(optim, fg_opt)([p], **kw), getattr(torch.optim, t_opt)([pt], **kw)


@pytest.mark.parametrize("case", ["cosine", "cosine_eta_min_past_T", "onecycle_sgd", "onecycle_adamw_linear",
                                  "onecycle_three_phase", "onecycle_epochs", "exponential", "plateau_min",
                                  "plateau_max_abs_cooldown"])
def test_schedulers_vs_torch(case):
    torch = pytest.importorskip("torch")
    import warnings
    opt_name, okw = ("AdamW", {"lr": 0.1}) if "adamw" in case else ("SGD", {"lr": 0.1, "momentum": 0.9})
    opt, optt = _pair(torch, opt_name, opt_name, **okw)
    metric, n = None, 30
    if case.startswith("cosine"):
        kw = {"T_max": 10} if case == "cosine" else {"T_max": 7, "eta_min": 0.01}
        s, st = lr_scheduler.CosineAnnealingLR(opt, **kw), torch.optim.lr_scheduler.CosineAnnealingLR(optt, **kw)
    elif case.startswith("onecycle"):
        kw = {"max_lr": 0.5, "total_steps": 30}
        if case == "onecycle_adamw_linear":
            kw.update(anneal_strategy="linear", pct_start=0.4, div_factor=10.0)
        elif case == "onecycle_three_phase":
            kw.update(three_phase=True, final_div_factor=100.0)
        elif case == "onecycle_epochs":
            kw = {"max_lr": 0.5, "epochs": 5, "steps_per_epoch": 6, "cycle_momentum": False}
        n = 30
        s, st = lr_scheduler.OneCycleLR(opt, **kw), torch.optim.lr_scheduler.OneCycleLR(optt, **kw)
    elif case == "exponential":
        s, st = lr_scheduler.ExponentialLR(opt, 0.9), torch.optim.lr_scheduler.ExponentialLR(optt, 0.9)
    else:
        kw = {"patience": 2, "factor": 0.5} if case == "plateau_min" else \
            {"mode": "max", "threshold_mode": "abs", "threshold": 0.1, "cooldown": 2, "patience": 1, "min_lr": 0.02}
        s, st = lr_scheduler.ReduceLROnPlateau(opt, **kw), torch.optim.lr_scheduler.ReduceLROnPlateau(optt, **kw)
        metric = [1.0, 0.9, 0.95, 0.92, 0.91, 0.5, 0.6, 0.6, 0.6, 0.6, 0.45, 0.7, 0.7, 0.7, 0.7, 0.7] * 2
        if "max" in case:
            metric = [-m for m in metric]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = _lrs(s, opt, n if metric is None else len(metric), metric), \
            _lrs(st, optt, n if metric is None else len(metric), metric)
    np.testing.assert_allclose(np.array(ours, dtype=float), np.array(theirs, dtype=float), rtol=1e-12, atol=1e-15)
    assert s.get_last_lr() == pytest.approx(st.get_last_lr(), rel=1e-12)


def test_lr_scheduler_module_reexports_and_errors():
    assert lr_scheduler.StepLR is optim.StepLR and lr_scheduler.CosineWarmupLR is optim.CosineWarmupLR
    import fusegrad.optim.lr_scheduler as mod
    assert mod is lr_scheduler
    opt = optim.SGD([fg.zeros(1, requires_grad=True)], lr=1.0)
    with pytest.raises(ValueError, match="OneCycleLR: give total_steps"):
        lr_scheduler.OneCycleLR(opt, max_lr=1.0)
    s = lr_scheduler.OneCycleLR(opt, 1.0, total_steps=2)
    s.step(), s.step()
    with pytest.raises(ValueError, match="more than total_steps=2"):
        s.step()
    with pytest.raises(ValueError, match="ReduceLROnPlateau: mode must be"):
        lr_scheduler.ReduceLROnPlateau(opt, mode="up")


# ------------------------------------------------------------------ save/load and checkpoints
def test_save_load_state_dicts(tmp_path):
    torch = None
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    path = tmp_path / "model.safetensors"
    fg.save(model.state_dict(), path)
    sd = fg.load(path)
    assert list(sd) == list(model.state_dict()) and all(isinstance(v, fg.Tensor) for v in sd.values())
    other = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    other.load_state_dict(sd)
    x = fg.randn(5, 3)
    np.testing.assert_array_equal(other(x).data, model(x).data)
    assert not list(tmp_path.glob("*.tmp"))             # written beside and renamed over
    opt = optim.AdamW(model.parameters())
    model(x).sum().backward()
    opt.step()
    fg.save(opt.state_dict(), tmp_path / "opt.safetensors")   # nested: ints, floats, tuples, arrays
    back = fg.load(tmp_path / "opt.safetensors")
    opt2 = optim.AdamW(other.parameters())
    opt2.load_state_dict(back)
    for k, st in opt.state_dict()["state"].items():
        np.testing.assert_array_equal(opt2.state_dict()["state"][k]["exp_avg"], st["exp_avg"])
    with pytest.raises(TypeError, match="save: obj must be a dict"):
        fg.save([1], tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="load: no such file"):
        fg.load(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="is not a valid safetensors file"):
        fg.load(tmp_path / "bad.safetensors")
    try:
        import torch
        from safetensors.torch import load_file
    except ImportError:
        return
    tsd = load_file(str(path))                          # a plain file torch's side reads
    np.testing.assert_array_equal(tsd["0.weight"].numpy(), sd["0.weight"].data)
    assert torch is not None


def test_checkpoint_helpers_take_a_module_and_tensors(tmp_path):
    from fusegrad.checkpoint import load_checkpoint, save_checkpoint
    model = nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(fg.ones(1, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "a", model, optimizer=opt, step=3)
    save_checkpoint(tmp_path / "b", model.state_dict(), step=3)
    for d in ("a", "b"):
        ck = load_checkpoint(tmp_path / d)
        np.testing.assert_array_equal(ck["model"]["weight"], model.weight.data)
    assert load_checkpoint(tmp_path / "a")["optimizer"]["state"]


# ------------------------------------------------------------------ data
def test_dataset_subset_random_split():
    class Squares(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return fg.tensor(float(i * i))

    fg.manual_seed(3)
    a, b = random_split(Squares(), [7, 3])
    assert len(a) == 7 and len(b) == 3
    seen = sorted(int(a[i].item() ** 0.5 + 0.5) for i in range(7)) + sorted(int(b[i].item() ** 0.5 + 0.5)
                                                                          for i in range(3))
    assert sorted(seen) == list(range(10))
    fg.manual_seed(3)
    a2, _ = random_split(Squares(), [7, 3])
    assert a2.indices == a.indices
    parts = random_split(TensorDataset(np.arange(10)), [0.5, 0.3, 0.2], generator=fg.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [5, 3, 2]
    assert [len(p) for p in random_split(range(11), [0.5, 0.5])] == [6, 5]      # remainder round-robin
    batches = list(DataLoader(Squares(), batch_size=4))          # items that are one tensor each
    assert [b.shape for b in batches] == [(4,), (4,), (2,)] and batches[0].tolist() == [0, 1, 4, 9]
    assert isinstance(TensorDataset(np.arange(3)), Dataset) and isinstance(a, Subset)
    assert nn.Linear(2, 2).cpu().weight.dtype == fg.float32
    with pytest.raises(ValueError, match="random_split: lengths"):
        random_split(Squares(), [5, 6])
    with pytest.raises(NotImplementedError, match="must define __getitem__"):
        Dataset()[0]
