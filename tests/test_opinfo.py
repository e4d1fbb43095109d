"""fusegrad's public differentiable API against PyTorch, forward and backward: the OpInfo
table (tests/opinfo.py) run on every ISA path, its completeness check, and regression tests for
the bugs it found."""
from __future__ import annotations

import contextlib
import inspect
import zlib

import numpy as np
import pytest
import torch

import fusegrad as fg
import fusegrad._kernels as K
import fusegrad.nn as nn
import fusegrad.nn.functional as F
import opinfo
import reference as ref
from conftest import ISAS
from fusegrad import no_grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("targets,ignore_index", [([0, 2, 1, 2, 4, 3], 2), ([0, -1, 1, 2, 4, 3], -1),
                                                  ([-100, 2, 1, 2, 4, -100], -100)])
def test_cross_entropy_backward_honours_ignore_index(isa, rng, dtype, targets, ignore_index):
    # issue 22: the native backward ignored ignore_index (used -100): ignore_index=2 gave gradients
    # up to 0.147 off, ignore_index=-1 raised "targets[1] = -1 is out of range"
    logits = rng.standard_normal((6, 5)).astype(dtype)
    x = fg.tensor(logits, requires_grad=True)
    loss = F.cross_entropy(x, fg.tensor(targets), ignore_index=ignore_index)
    (loss * 3.0).backward()
    xt = torch.tensor(logits, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(targets), ignore_index=ignore_index)
    (lt * 3.0).backward()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(loss.data, lt.detach().numpy(), **tol)
    assert x.grad.dtype == dtype
    np.testing.assert_allclose(x.grad.data, xt.grad.numpy(), **tol)
    ignored = np.asarray(targets) == ignore_index
    assert not x.grad.data[ignored].any()


def test_zero_d_float64_results_stay_float64():
    # an op on 0-d arrays returns a NumPy scalar, which Tensor() turned into float32 like a Python
    # float: exp/abs/+/- of a 0-d float64 tensor, and its gradient, came out float32 (found by the table)
    x = fg.tensor(np.array(1.5), requires_grad=True)
    y = x.exp() * x + 2.0 - abs(x)
    assert y.dtype == np.float64
    y.backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad.data, np.exp(1.5) * 2.5 - 1.0, rtol=1e-15)
    assert fg.tensor(np.float64(2.0)).dtype == np.float64 and fg.tensor(np.int32(3)).dtype == np.int32
    assert fg.tensor(2.0).dtype == np.float32 and fg.tensor(3).dtype == np.int64  # Python numbers as in torch


def test_dot_product_backward():
    # 1-D @ 1-D: backward raised AxisError (found by the table)
    a = fg.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = fg.tensor(np.array([4.0, -5.0, 6.0]), requires_grad=True)
    y = a @ b
    assert y.shape == () and y.dtype == np.float64 and float(y) == 12.0
    (y * 2.0).backward()
    np.testing.assert_array_equal(a.grad.data, 2.0 * b.data)
    np.testing.assert_array_equal(b.grad.data, 2.0 * a.data)


def test_mse_loss_of_no_elements_is_nan():
    # the fused mean kernel refuses 0 elements, so F.mse_loss raised where torch returns NaN
    x = fg.tensor(np.zeros((0, 3)), requires_grad=True)
    loss = F.mse_loss(x, fg.tensor(np.zeros((0, 3))))
    assert loss.dtype == np.float64 and np.isnan(float(loss))
    loss.backward()
    assert x.grad.shape == (0, 3)


# ----- the OpInfo table (tests/opinfo.py) ------------------------------------------------------

# rtol per dtype (atol: see _check_all); both dtypes are compared with PyTorch in float64.
# float32 at ~170 ulp: what exp/tanh/erf approximations and reassociated sums of a few dozen
# terms leave; float64 tight
RTOL = {np.float64: 1e-10, np.float32: 2e-5}
FD_RTOL = 1e-7  # central differences, step 1e-6: truncation ~1e-12, rounding ~1e-16 / 1e-6 = 1e-10 of |L|


def _torch_dtype(dtype):
    return {np.float32: torch.float32, np.float64: torch.float64}[dtype]


def _convert(a, kind, dtype=None, leaves=None):
    """A sample value as fusegrad ('fg') or torch ('t', computing in `dtype`) input; float arrays
    become leaves that require grad (appended to `leaves`)."""
    if isinstance(a, list):
        return [_convert(x, kind, dtype, leaves) for x in a]
    if isinstance(a, opinfo._Fresh):
        return a.make()
    if isinstance(a, opinfo.Const):
        return a.fg() if kind == "fg" else a.torch(dtype)
    if not isinstance(a, np.ndarray):
        return a
    if a.dtype.kind == "f":
        if kind == "fg":
            t = fg.tensor(a, requires_grad=True)
        else:
            t = torch.tensor(a, dtype=dtype, requires_grad=True)
        leaves.append(t)
        return t
    return fg.tensor(a) if kind == "fg" else torch.tensor(a)


def _outs(r):
    return list(r) if isinstance(r, (tuple, list)) else [r]


def _np(t):
    if isinstance(t, torch.Tensor):
        return t.detach().numpy()
    return np.asarray(t.data)


def _check_all(checks, dtype, rtol, errors):
    """Compare (got, want, what) triples; atol is rtol x the largest finite |want| of the sample
    (its outputs and gradients): a result that cancels to ~0 is summed from terms that large."""
    scale = 0.0
    for _, want, _ in checks:
        want = np.asarray(want)
        if want.dtype.kind == "f" and np.isfinite(want).any():
            scale = max(scale, float(np.max(np.abs(want[np.isfinite(want)]))))
    for got, want, what in checks:
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            errors.append(f"{what}: shape {got.shape}, expected {want.shape}")
            continue
        if want.dtype.kind in "iub":
            if not np.array_equal(got, want):
                errors.append(f"{what}: integer result differs")
            continue
        try:
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol,
                                       atol=rtol * scale + np.finfo(dtype).tiny, equal_nan=True)
        except AssertionError as e:
            errors.append(f"{what}: {str(e).strip()}")


def _cotangents(outs, rng):
    return [rng.standard_normal(np.shape(_np(o))) if _np(o).dtype.kind == "f" else None for o in outs]


def _fg_backward(outs, gs):
    pairs = [(o, g) for o, g in zip(outs, gs) if g is not None and o.requires_grad]
    if not pairs:
        return
    if len(pairs) == 1:
        o, g = pairs[0]
        o.backward(gradient=g.astype(o.dtype))
        return
    total = None
    for o, g in pairs:
        term = (o * fg.tensor(g.astype(o.dtype))).sum()
        total = term if total is None else total + term
    total.backward()


def _torch_backward(outs, gs):
    pairs = [(o, torch.tensor(g, dtype=o.dtype)) for o, g in zip(outs, gs) if g is not None and o.requires_grad]
    if pairs:
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])


def _grad_np(t, like):
    g = t.grad
    if g is None:
        return np.zeros(tuple(like.shape))
    return _np(g)


def _module_pair(entry, s, dtype, rng):
    """fusegrad's and torch's module (torch's in float32 for dtypes and float64 for values), with
    fusegrad's parameters randomised and copied into torch's by name."""
    ctor = dict(s.kwargs)
    ev = ctor.pop("eval", False)
    mf = entry.op(**{k: v.fg() if isinstance(v, opinfo.Const) else v for k, v in ctor.items()}).to(dtype)
    with no_grad():
        for _, p in mf.named_parameters():
            p.data = rng.standard_normal(p.shape).astype(dtype)
    mts = []
    for tdt in (_torch_dtype(dtype), torch.float64):
        mt = entry.ref(**{k: v.torch(tdt) if isinstance(v, opinfo.Const) else v for k, v in ctor.items()}).to(tdt)
        tp = dict(mt.named_parameters())
        assert sorted(tp) == sorted(n for n, _ in mf.named_parameters()), (sorted(tp), mf)
        with torch.no_grad():
            for n, p in mf.named_parameters():
                tp[n].copy_(torch.tensor(p.data))
        mts.append(mt)
    if ev:
        mf.eval()
        for mt in mts:
            mt.eval()
    return mf, mts


def _run_sample(entry, s, dtype, rng, errors):
    """Forward and backward of one sample against torch (or finite differences)."""
    checks = []
    rtol = entry.tol.get(dtype, RTOL[dtype])
    if s.fd:
        rtol = max(rtol, FD_RTOL)
    n = len(errors)
    _compute(entry, s, dtype, rng, checks, errors)
    if not checks and len(errors) == n:
        errors.append(f"{entry.name}{s!r}: compared nothing")
    _check_all(checks, dtype, rtol, errors)


def _compute(entry, s, dtype, rng, checks, errors):
    """Runs fusegrad and the reference; appends (got, want, what) to checks."""
    tag = f"{entry.name}{s!r}"
    fleaves, tleaves, t64leaves = [], [], []
    fargs = [_convert(a, "fg", leaves=fleaves) for a in s.args]
    params_f = {}
    if entry.module:
        mf, (mt32, mt64) = _module_pair(entry, s, dtype, rng)
        out = _outs(mf(*fargs))
        params_f = dict(mf.named_parameters())
    else:
        fkw = {k: _convert(v, "fg", leaves=fleaves) for k, v in s.kwargs.items()}
        out = _outs(entry.op(*fargs, **fkw))
    gs = _cotangents(out, rng)
    if s.fd:
        want, wgrads = _finite_differences(entry, s, gs)
        for i, (o, w) in enumerate(zip(out, want)):
            checks.append((_np(o), w, f"{tag} output {i} (vs fusegrad float64)"))
        if s.grad:
            _fg_backward(out, gs)
            for i, (lf, w) in enumerate(zip(fleaves, wgrads)):
                checks.append((_grad_np(lf, lf), w, f"{tag} grad of input {i} (finite differences)"))
        return
    tref = s.ref or (entry.op if entry.ref is opinfo.SAME else entry.ref)
    results = []
    for tdt, leaves in ((_torch_dtype(dtype), tleaves), (torch.float64, t64leaves)):
        targs = [_convert(a, "t", tdt, leaves) for a in s.args]
        if entry.module:
            m = mt32 if tdt != torch.float64 else mt64
            results.append((_outs(m(*targs)), m))
        else:
            tkw = {k: _convert(v, "t", tdt, leaves) for k, v in s.kwargs.items()}
            results.append((_outs(tref(*targs, **tkw)), None))
    (tout, _), (t64out, mt64_) = results
    if len(out) != len(tout):
        errors.append(f"{tag}: {len(out)} results, torch {len(tout)}")
        return
    for i, (o, tt, t64) in enumerate(zip(out, tout, t64out)):
        if _np(o).dtype != _np(tt).dtype:
            errors.append(f"{tag} output {i}: dtype {_np(o).dtype}, torch gives {_np(tt).dtype}")
        checks.append((_np(o), _np(t64), f"{tag} output {i}"))
    if not s.grad:
        return
    _fg_backward(out, gs)
    _torch_backward(t64out, gs)
    for i, (lf, lt) in enumerate(zip(fleaves, t64leaves)):
        if lf.grad is not None and lf.grad.dtype != lf.dtype:
            errors.append(f"{tag} grad of input {i}: dtype {lf.grad.dtype}, input is {lf.dtype}")
        checks.append((_grad_np(lf, lf), _grad_np(lt, lt), f"{tag} grad of input {i}"))
    if entry.module:
        tp = dict(mt64_.named_parameters())
        for n, p in params_f.items():
            checks.append((_grad_np(p, p), _grad_np(tp[n], tp[n]), f"{tag} grad of {n}"))


def _finite_differences(entry, s, gs):
    """fusegrad's float64 outputs and central differences of L = sum(out_i * g_i) per float input."""
    args64 = [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in s.args]

    def L(i, x):
        a = list(args64)
        a[i] = x
        with no_grad():
            outs = _outs(entry.op(*[_convert(v, "fg", leaves=[]) for v in a],
                                  **{k: _convert(v, "fg", leaves=[]) for k, v in s.kwargs.items()}))
        return sum(float(np.sum(_np(o) * g)) for o, g in zip(outs, gs) if g is not None)

    with no_grad():
        want = [_np(o) for o in _outs(entry.op(*[_convert(v, "fg", leaves=[]) for v in args64],
                                               **{k: _convert(v, "fg", leaves=[]) for k, v in s.kwargs.items()}))]
    grads = [ref.numerical_grad(lambda x, i=i: L(i, x), a) for i, a in enumerate(args64)
             if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    return want, grads


@contextlib.contextmanager
def _kernel_calls():
    """Records the names of the kernels (fusegrad._kernels) called inside the block."""
    calls, saved = [], {n: getattr(K, n) for n in K._NAMES}
    for n, f in saved.items():
        setattr(K, n, lambda *a, _f=f, _n=n, **kw: (calls.append(_n), _f(*a, **kw))[1])
    try:
        yield calls
    finally:
        for n, f in saved.items():
            setattr(K, n, f)


_KERNEL_FREE = {}  # entry name -> True when its samples called no kernel


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("entry", opinfo.OPS, ids=[e.name for e in opinfo.OPS])
def test_opinfo(isa, entry, dtype):
    if isa != ISAS[0] and _KERNEL_FREE.get(entry.name):
        pytest.skip(f"{entry.name} calls no kernel: the same NumPy code on every ISA path (run on {ISAS[0]})")
    rng = np.random.default_rng(zlib.crc32(entry.name.encode()))
    errors = []
    samples = entry.samples(rng, dtype)
    assert samples, f"{entry.name}: no samples"
    with _kernel_calls() as calls:
        for s in samples:
            try:
                _run_sample(entry, s, dtype, rng, errors)
            except Exception as e:  # noqa: BLE001 - report every failing sample, not only the first
                errors.append(f"{entry.name}{s!r}: raised {type(e).__name__}: {e}")
    _KERNEL_FREE[entry.name] = not calls
    assert not errors, f"{len(errors)} of {len(samples)} samples failed:\n" + "\n".join(errors)


def _public_names():
    """Every public differentiable-looking name: F.__all__, nn module classes, fusegrad's
    callables, Tensor's public methods/properties and operator dunders."""
    names = {f"F.{n}" for n in F.__all__}
    for n in nn.__all__:
        obj = getattr(nn, n)
        if inspect.isclass(obj) and issubclass(obj, nn.Module):
            names.add(f"nn.{n}")
    for n in fg.__all__:
        obj = getattr(fg, n)
        if callable(obj):
            names.add(f"fg.{n}")
    for n, v in vars(fg.Tensor).items():
        if n.startswith("_") and n not in opinfo.OPERATOR_DUNDERS:
            continue
        if callable(v) or isinstance(v, property):
            names.add(f"Tensor.{n}")
    return names


TENSOR_METADATA = {"Tensor.shape", "Tensor.dtype", "Tensor.ndim", "Tensor.is_leaf", "Tensor.grad_fn"}  # properties


def test_every_public_function_has_an_opinfo_entry():
    have = {e.name for e in opinfo.OPS}
    assert len(have) == len(opinfo.OPS), "duplicate entry names"
    public = _public_names() - TENSOR_METADATA
    nondiff = set(opinfo.NON_DIFFERENTIABLE)
    missing = sorted(public - have - set(opinfo.EXCLUDED) - nondiff)
    assert not missing, (f"add entries to tests/opinfo.py OPS (or, without a gradient, NON_DIFFERENTIABLE with a "
                         f"check here) for: {missing}")
    stale = sorted((have | set(opinfo.EXCLUDED) | nondiff) - public)
    assert not stale, f"tests/opinfo.py names what fusegrad no longer has: {stale}"
    assert not have & set(opinfo.EXCLUDED) and not have & nondiff and not nondiff & set(opinfo.EXCLUDED)
    unchecked = sorted(n for n, (_, group) in opinfo.NON_DIFFERENTIABLE.items() if group not in NONDIFF_CHECKS)
    assert not unchecked, f"NON_DIFFERENTIABLE names without a check against torch: {unchecked}"


# ----- API without a gradient: behaviour against torch's (opinfo.NON_DIFFERENTIABLE) -----------

def _same_draws(lib, seed, draw):
    lib.manual_seed(seed)
    a = _np(draw())
    lib.manual_seed(seed)
    return np.array_equal(a, _np(draw()))


def _check_random():
    for seed in (0, 1234, -1, 2 ** 63 + 5):            # negative seeds wrap modulo 2**64 in both
        g, tg = fg.manual_seed(seed), torch.manual_seed(seed)
        assert fg.initial_seed() == torch.initial_seed() == g.initial_seed() == tg.initial_seed(), seed
    assert isinstance(fg.manual_seed(3), fg.Generator) and fg.manual_seed(3) is fg.default_generator
    for lib in (fg, torch):
        assert _same_draws(lib, 7, lambda: lib.rand(3, 4)) and _same_draws(lib, 7, lambda: lib.randint(0, 10, (5,)))
    for args, kw in [((3, 4), {}), (((2, 5),), {}), ((4,), {"dtype": np.float64}), ((0, 3), {}), (((),), {})]:
        x = fg.rand(*args, **kw)
        t = torch.rand(*args, **({"dtype": opinfo._tdt(kw["dtype"])} if kw else {}))
        assert x.shape == tuple(t.shape) and str(x.dtype) == str(t.dtype).replace("torch.", ""), args
        assert x.data.size == 0 or (0 <= x.data.min() and x.data.max() < 1)
    for args, kw in [((5, (100,)), {}), ((3, 6, (500,)), {}), ((-2, 2, (2, 3)), {"dtype": np.int32}), ((4, (0,)), {})]:
        x = fg.randint(*args, **kw)
        t = torch.randint(*args, **({"dtype": opinfo._tdt(kw["dtype"])} if kw else {}))
        assert x.shape == tuple(t.shape) and str(x.dtype) == str(t.dtype).replace("torch.", ""), args
        lo, hi = (0, args[0]) if len(args) == 2 else args[:2]
        assert x.data.size == 0 or (lo <= x.data.min() and x.data.max() < hi)
    x, t = fg.rand(2, requires_grad=True), torch.rand(2, requires_grad=True)
    assert x.requires_grad and x.is_leaf and t.requires_grad and t.is_leaf
    for lib in (fg, torch):                              # explicit generators: seeded, restartable,
        g = lib.Generator()                              # and the default generator left alone
        assert g.manual_seed(5) is g and g.initial_seed() == 5
        a = _np(lib.rand(4, generator=g))
        state = g.get_state()
        b = _np(lib.rand(4, generator=g))
        g.set_state(state)
        assert np.array_equal(_np(lib.rand(4, generator=g)), b)
        assert np.array_equal(_np(lib.rand(4, generator=lib.Generator().manual_seed(5))), a)
        lib.manual_seed(0)
        u = _np(lib.rand(2))
        lib.manual_seed(0)
        lib.rand(3, generator=g)
        assert np.array_equal(_np(lib.rand(2)), u)
        s = g.seed()
        assert isinstance(s, int) and g.initial_seed() == s


def _grad_mode_trace(lib):
    x = lib.ones(2, requires_grad=True)
    out = []
    state = lambda: ((x * 2).requires_grad, lib.is_grad_enabled())  # noqa: E731
    with lib.no_grad():
        out.append(state())
        with lib.enable_grad():
            out.append(state())
    with lib.set_grad_enabled(False):
        out.append(state())
        with lib.set_grad_enabled(True):
            out.append(state())
    out.append(state())
    lib.set_grad_enabled(False)                          # a plain call switches at once
    out.append(state())
    lib.set_grad_enabled(True)
    with lib.inference_mode():
        out.append(state())
    with lib.inference_mode(False):
        out.append(state())
    try:
        with lib.no_grad():
            raise KeyError
    except KeyError:
        out.append(state())                              # restored after an exception

    @lib.enable_grad()
    def on(v):
        return (v * 2).requires_grad

    @lib.inference_mode()
    def off(v):
        return (v * 2).requires_grad
    with lib.no_grad():
        out.append((on(x), lib.is_grad_enabled()))
    out.append((off(x), lib.is_grad_enabled()))
    return out


def _check_grad_modes():
    assert _grad_mode_trace(fg) == _grad_mode_trace(torch)


def _check_autocast():
    def trace(ac, enabled):
        out = [enabled()]
        with ac():
            out.append(enabled())
            with ac(enabled=False):
                out.append(enabled())
            out.append(enabled())
        out.append(enabled())
        return out
    assert trace(lambda **kw: fg.autocast("bfloat16", **kw), fg.is_autocast_enabled) == \
        trace(lambda **kw: torch.autocast("cpu", dtype=torch.bfloat16, **kw), lambda: torch.is_autocast_enabled("cpu"))
    # linear layers under autocast: bf16 operands, float32 sums, in both. torch hands back the
    # product rounded to bfloat16 (2^-9 relative), fusegrad keeps float32: compared to 2^-8 of
    # the largest |value|, and each against the float64 product of the bf16-rounded operands
    rng = np.random.default_rng(22)
    x, w, b, g = (rng.standard_normal(s).astype(np.float32) for s in ((8, 40), (6, 40), (6,), (8, 6)))
    xf, wf, bf = (fg.tensor(a, requires_grad=True) for a in (x, w, b))
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    with fg.autocast("bfloat16"):
        yf = F.linear(xf, wf, bf)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yt = torch.nn.functional.linear(xt, wt, bt)
    yf.backward(g)
    yt.backward(torch.tensor(g, dtype=yt.dtype))
    bf16 = lambda a: torch.tensor(a).bfloat16().double().numpy()  # noqa: E731
    exact = bf16(x) @ bf16(w).T + b
    assert yf.dtype == np.float32 and yt.dtype == torch.bfloat16
    np.testing.assert_allclose(yf.data, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())  # float32 sums of 40
    for got, want in ((yf.data, yt.float().detach().numpy()), (xf.grad.data, xt.grad.numpy()),
                      (wf.grad.data, wt.grad.numpy()), (bf.grad.data, bt.grad.numpy())):
        np.testing.assert_allclose(got, want, rtol=2 ** -8, atol=2 ** -8 * np.abs(want).max())


def _check_save_load(tmp):
    from safetensors.torch import load_file, save_file
    rng = np.random.default_rng(5)
    arrays = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(4),
              "i": np.arange(6).reshape(2, 3), "h": np.array(2.5, np.float32), "a_last": np.zeros((0, 2), np.float32)}
    fg.save({k: fg.tensor(v) for k, v in arrays.items()}, tmp / "fg.safetensors")
    torch.save({k: torch.tensor(v) for k, v in arrays.items()}, tmp / "t.pt")
    ours, theirs = fg.load(tmp / "fg.safetensors"), torch.load(tmp / "t.pt")
    assert list(ours) == list(theirs) == list(arrays)      # names in the saved order
    for k, v in theirs.items():
        assert isinstance(ours[k], fg.Tensor) and ours[k].shape == tuple(v.shape)
        assert str(ours[k].dtype) == str(v.dtype).replace("torch.", "") and np.array_equal(ours[k].data, v.numpy())
    for k, v in load_file(str(tmp / "fg.safetensors")).items():   # a plain safetensors file torch reads
        assert np.array_equal(v.numpy(), arrays[k])
    m = torch.nn.Linear(3, 2)
    save_file(m.state_dict(), str(tmp / "m.safetensors"))
    lin = nn.Linear(3, 2)
    lin.load_state_dict({k: v.data for k, v in fg.load(tmp / "m.safetensors").items()})
    x = rng.standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_allclose(lin(fg.tensor(x)).data, m(torch.tensor(x)).detach().numpy(), rtol=1e-6, atol=1e-7)
    state = {"state": {0: {"step": 3, "exp_avg": fg.tensor(arrays["w"])}}, "param_groups": [{"lr": 0.1, "betas": [0.9, 0.99]}]}
    fg.save(state, tmp / "opt.safetensors")
    back = fg.load(tmp / "opt.safetensors")                 # nested state: as torch.save/load gives it back
    assert back["param_groups"] == state["param_groups"] and back["state"][0]["step"] == 3
    assert np.array_equal(_np(back["state"][0]["exp_avg"]), arrays["w"])


def _check_default_dtype():
    try:
        for dt, tdt in ((fg.float64, torch.float64), (fg.float32, torch.float32)):
            fg.set_default_dtype(dt)
            torch.set_default_dtype(tdt)
            assert str(fg.get_default_dtype()) == str(torch.get_default_dtype()).replace("torch.", "")
            pairs = [(fg.tensor([1.5]), torch.tensor([1.5])), (fg.tensor([1]) / 2, torch.tensor([1]) / 2),
                     (fg.zeros(2), torch.zeros(2)), (fg.arange(0.0, 1.0, 0.5), torch.arange(0.0, 1.0, 0.5)),
                     (nn.Linear(2, 2).weight, torch.nn.Linear(2, 2).weight), (fg.full((2,), 1.0), torch.full((2,), 1.0)),
                     (fg.tensor([1]) * 0.5, torch.tensor([1]) * 0.5), (fg.rand(2), torch.rand(2)),
                     (fg.tensor(np.float32(1.0)), torch.tensor(np.float32(1.0)))]
            for a, t in pairs:
                assert str(a.dtype) == str(t.dtype).replace("torch.", ""), (a, t)
    finally:
        fg.set_default_dtype(fg.float32)
        torch.set_default_dtype(torch.float32)
    for lib, dt in ((fg, fg.int64), (torch, torch.int64)):
        with pytest.raises(TypeError):
            lib.set_default_dtype(dt)


def _check_device():
    x, t = fg.zeros(2), torch.zeros(2)
    for a, b in ((x, t), (x * 2, t * 2), (x.to("cpu"), t.to("cpu")), (x.cpu(), t.cpu())):
        assert str(a.device) == str(b.device) == "cpu" and a.device.type == b.device.type == "cpu"
        assert repr(a.device) == repr(b.device) and a.device == "cpu"
    assert x.to(t.device.type).device.type == "cpu" and x.to(device=x.device) is x


def _hook_trace(lib):
    x = lib.tensor(np.array([1.0, 2.0]), requires_grad=True)
    seen = []
    h = x.register_post_accumulate_grad_hook(lambda t: seen.append(np.array(_np(t.grad))))
    ((x * x).sum() + (x * 3.0).sum()).backward()          # two paths into x: one call, after both
    (x * 2.0).sum().backward()                             # the next pass sees the accumulated .grad
    h.remove()
    (x * 1.0).sum().backward()                             # removed: not called
    errors = []
    for bad in (x * 2.0, lib.tensor(np.array([1.0]))):      # non-leaf; leaf without grad
        try:
            bad.register_post_accumulate_grad_hook(lambda t: None)
        except RuntimeError:
            errors.append("RuntimeError")
    return seen, errors


def _check_hooks():
    (a, ea), (b, eb) = _hook_trace(fg), _hook_trace(torch)
    assert len(a) == len(b) == 2 and ea == eb == ["RuntimeError"] * 2
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


NONDIFF_CHECKS = {"random": _check_random, "grad_modes": _check_grad_modes, "autocast": _check_autocast,
                  "save_load": _check_save_load, "default_dtype": _check_default_dtype, "device": _check_device,
                  "hooks": _check_hooks}


@pytest.mark.parametrize("group", sorted(NONDIFF_CHECKS))
def test_non_differentiable_matches_torch(group, tmp_path):
    check = NONDIFF_CHECKS[group]
    check(tmp_path) if "tmp" in inspect.signature(check).parameters else check()


# ----- in-place writes: torch's autograd semantics (version counters) ------------------------

def _iv_exp_output(L, x, w):          # exp saves its output; writing it breaks backward
    y = x.exp()
    y.add_(1.0)
    return y.sum()


def _iv_saved_input(L, x, w):         # z = y * w saved y (w needs its gradient)
    y = x * 2.0
    z = y * w
    y.mul_(3.0)
    return z.sum()


def _iv_leaf_saved(L, x, w):          # an optimizer-style write to a leaf another op saved
    z = x * w
    with L.no_grad():
        w.add_(1.0)
    return z.sum()


def _iv_chain(L, x, w):
    y = x * 1.0
    y.mul_(w)
    y.add_(x, alpha=2)
    y.sub_(w, alpha=0.5)
    y.div_(w * w + 3.0)
    y += x
    y *= w
    return (y * y).sum()


def _iv_joins_graph(L, x, w):         # a tensor without grad written from one that has it
    z = L.zeros_like(x)
    z.add_(w)
    z.mul_(x)
    return (z * z).sum()


def _iv_setitem(L, x, w):
    y = x * 1.0
    y[0] = w[1] * 3.0
    y[1:] = 0.5
    return (y * y).sum()


def _iv_fill_zero_copy(L, x, w):
    y = x * 2.0
    y.zero_()
    u = x * 3.0
    u.fill_(w[0])
    v = x * 1.0
    v.copy_(w * w)
    return (y + x).sum() + (u * x).sum() + (v * x).sum()


def _iv_leaf_in_grad_mode(L, x, w):
    x.add_(1.0)
    return x.sum()


def _iv_int_from_float(L, x, w):      # float result into an int tensor: refused
    i = L.tensor(np.array([1, 2]))
    i.add_(0.5)
    return (x * 1.0).sum()


INPLACE_CASES = [_iv_exp_output, _iv_saved_input, _iv_leaf_saved, _iv_chain,
                 _iv_joins_graph, _iv_setitem, _iv_fill_zero_copy, _iv_leaf_in_grad_mode, _iv_int_from_float]


def _inplace_outcome(L, case):
    rng = np.random.default_rng(9)
    x = L.tensor(rng.standard_normal(2), requires_grad=True)
    w = L.tensor(rng.standard_normal(2), requires_grad=True)
    try:
        loss = case(L, x, w)
        loss.backward()
    except RuntimeError:
        return None
    return [float(loss)] + [np.zeros(2) if t.grad is None else _np(t.grad) for t in (x, w)]


@pytest.mark.parametrize("case", INPLACE_CASES, ids=[c.__name__[4:] for c in INPLACE_CASES])
def test_inplace_writes_match_torch(case):
    # torch raises where an in-place write changed a value backward needs (exp's saved output
    # included: fusegrad used the new value silently), and records in-place ops on tensors in the graph
    want, got = _inplace_outcome(torch, case), _inplace_outcome(fg, case)
    assert (got is None) == (want is None), f"fusegrad {'raised' if got is None else 'ran'}, torch did not"
    if want is not None:
        for g, t in zip(got, want):
            np.testing.assert_allclose(g, t, rtol=1e-13, atol=1e-15)


def test_version_counters_match_torch():
    def trace(L):
        a = L.zeros(3)
        out = [a._version]
        a.add_(1.0)
        a[0] = 2.0
        v = a[1:]                       # a view shares its base's counter
        v.mul_(2.0)
        out += [a._version, v._version]
        a.zero_()
        b = a * 1.0                     # a new tensor starts at 0
        out += [a._version, v._version, b._version]
        return out
    assert trace(fg) == trace(torch)


def test_inplace_into_a_view_of_a_graph_tensor_is_refused():
    # torch rebases the base's graph (CopySlices); fusegrad cannot, so it refuses instead of
    # leaving the base's gradient without the write
    x = fg.tensor(np.ones(3), requires_grad=True)
    y = x * 2.0
    for write in (lambda: y[0:2].add_(1.0), lambda: y.reshape(3, 1).mul_(x.reshape(3, 1))):
        with pytest.raises(RuntimeError, match="this tensor is a view of another"):
            write()
    with fg.no_grad():                  # not recorded: a plain write, as before
        y[0:2].add_(1.0)
    assert y.tolist() == [3.0, 3.0, 2.0]


def test_loss_weights_that_require_grad_are_refused_as_in_torch():
    # torch has no derivative for class / element weights and refuses them when they require
    # grad; fusegrad treated them as constants silently (found by the table)
    x, t, p = np.random.default_rng(3).standard_normal((4, 3)), np.array([0, 1, 2, 1]), np.full((4, 3), 0.5)
    calls = [lambda L, TF, a, w: TF.cross_entropy(a, L.tensor(t), weight=w),
             lambda L, TF, a, w: TF.cross_entropy(a, L.tensor(t), weight=w, label_smoothing=0.1, reduction="none"),
             lambda L, TF, a, w: TF.nll_loss(a, L.tensor(t), weight=w),
             lambda L, TF, a, w: TF.binary_cross_entropy_with_logits(a, L.tensor(p), weight=w),
             lambda L, TF, a, w: TF.binary_cross_entropy_with_logits(a, L.tensor(p), pos_weight=w)]
    for call in calls:
        for L, TF in ((fg, F), (torch, torch.nn.functional)):
            a, w = L.tensor(x, requires_grad=True), L.tensor(np.linspace(0.5, 2, 3), requires_grad=True)
            with pytest.raises(RuntimeError, match="not differentiable with respect to"):
                call(L, TF, a, w)
            with L.no_grad():
                call(L, TF, a, w)                    # not recorded: accepted
            call(L, TF, a, w.detach())
