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
    mf = entry.op(**ctor).to(dtype)
    with no_grad():
        for _, p in mf.named_parameters():
            p.data = rng.standard_normal(p.shape).astype(dtype)
    mts = []
    for tdt in (_torch_dtype(dtype), torch.float64):
        mt = entry.ref(**ctor).to(tdt)
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
    missing = sorted(public - have - set(opinfo.EXCLUDED) - opinfo.PENDING)
    assert not opinfo.PENDING & have, f"now in the table, drop from PENDING: {sorted(opinfo.PENDING & have)}"
    assert not missing, f"add entries to tests/opinfo.py OPS (or, if not differentiable, EXCLUDED) for: {missing}"
    stale = sorted((have | set(opinfo.EXCLUDED)) - public)
    assert not stale, f"tests/opinfo.py names what fusegrad no longer has: {stale}"
    assert not have & set(opinfo.EXCLUDED)
