"""Property-based fuzzing of the kernel boundary (``fusegrad.ops``): the spec table and the runner.

Every fuzz case is a valid call (from a spec's ``make``) plus at most one perturbation: a bad
dtype, a non-contiguous or negative-stride view, a read-only buffer, two arguments sharing
memory, a wrong shape, a list/None instead of an array, NaN/Inf/huge/tiny values, an
out-of-range id. Each case must end in one of two ways:

* a result that matches the NumPy float64 reference (tests/reference.py), with every input
  left unchanged (and in-place buffers updated as the reference says), or
* a ``TypeError``/``ValueError`` whose message names the function, with every argument left
  unchanged.

Cases that stay valid (no perturbation, special values, read-only inputs) must succeed;
out-of-range ids and read-only or aliased in-place buffers must raise.

Adding an op is one entry in ``SPECS``: a ``make(draw, dtype)`` that draws valid keyword
arguments, a ``ref(**float64 args)`` returning the expected result(s) (in-place ops update
their float64 copies instead), and the names of in-place buffers and id arguments. Specs whose
function is not in ``fusegrad.ops`` are skipped.

Run as a module entry point in a child process (tests/test_fuzz.py does this, so a segfault or
abort is reported with the case that caused it)::

    python tests/fuzz_specs.py --examples 200 [--seed 7] [--report r.json] [--case-log c.txt] [op ...]
"""
from __future__ import annotations

import argparse
import inspect
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import reference as R  # noqa: E402

FLOATS = (np.float32, np.float64)
SIDES = [0, 1, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33]
PERTURBATIONS = ["none", "none", "none", "values", "values", "values", "dtype", "dtype", "noncontig",
                 "negstride", "readonly", "alias", "shape", "ids", "ids", "nonarray", "zerod",
                 "scalar", "unaligned", "byteorder"]


# ----- drawing helpers ---------------------------------------------------------------------

def st():
    from hypothesis import strategies
    return strategies


def draw_shape(draw, min_dims=0, max_dims=3, max_elems=4096, big=True):
    """A shape with extents from SIDES (0 and 1 included); sometimes one long 1-D extent that
    crosses the SIMD tails and the threading grain."""
    s = st()
    if big and min_dims <= 1 <= max_dims and draw(s.integers(0, 9)) == 0:
        return (draw(s.integers(34, 70_000)),)
    nd = draw(s.integers(min_dims, max_dims))
    shape = []
    for _ in range(nd):
        shape.append(draw(s.sampled_from(SIDES)))
        if math.prod(shape) > max_elems:
            shape[-1] = 1
    return tuple(shape)


def draw_rng(draw):
    return np.random.default_rng(draw(st().integers(0, 2**32 - 1)))


def randn(rng, shape, dtype, scale=1.0):
    return np.asarray(rng.standard_normal(shape) * scale).astype(dtype)


# ----- the spec table ----------------------------------------------------------------------

@dataclasses.dataclass
class Spec:
    name: str                                   # function in fusegrad.ops
    make: Callable[[Any, Any], dict]            # (draw, dtype) -> valid keyword arguments
    ref: Callable[..., Any]                     # float64 reference, same keywords
    inout: tuple = ()                           # arrays updated in place (ref updates its copies)
    ids: dict = dataclasses.field(default_factory=dict)  # id arg -> fn(kwargs) -> (lo, hi, allowed extra values)
    tol: tuple = (2e-5, 1e-11)                  # (float32, float64) relative tolerance, also x max|expected|
    scalars: dict = dataclasses.field(default_factory=dict)  # scalar arg -> bad values to try
    returns_like: str | None = None             # arg whose dtype the (float) results have
    value_args: tuple | None = None             # arrays that may get NaN/Inf/huge/tiny (default: all float arrays)
    huge: bool = True                           # also inject values near the dtype's max (False for
                                                # reductions, whose float32 overflow is order-dependent)
    tiny: bool = True                           # also inject subnormal values (False for Adam: float32
                                                # g*g underflows where float64 does not)
    atol_scale: Callable | None = None          # float64 kwargs -> magnitude of the terms a result is
                                                # summed from (an absolute tolerance floor where
                                                # results cancel to ~0); one that takes dtype=
                                                # also gets the dtype under test

    call: Callable | None = None                # the function to fuzz when it is not fusegrad.ops.<name>
    errname: tuple = ()                         # accepted names in error messages (default: name)
    kinds: tuple | None = None                  # perturbation kinds to draw from (default: all)
    grads: tuple = ()                           # functional specs: results 1.. are d/d these args
    dtypes: tuple = FLOATS                      # the float dtypes the function takes

    def fn(self):
        if self.call is not None:
            return self.call
        from fusegrad import ops
        return getattr(ops, self.name, None)


def _unary(name, reff=None, scale_choices=(1.0,)):
    def make(draw, dtype):
        rng = draw_rng(draw)
        sc = draw(st().sampled_from(scale_choices))
        return {"x": randn(rng, draw_shape(draw), dtype, sc)}
    return Spec(name, make, reff or (lambda x: getattr(R, name)(x)), returns_like="x")


def _unary_bwd(name, second="x", reff=None, second_maker=None, tol=(2e-5, 1e-11), scale_choices=(1.0,)):
    def make(draw, dtype):
        rng = draw_rng(draw)
        shape = draw_shape(draw)
        sc = draw(st().sampled_from(scale_choices))
        other = second_maker(rng, shape, dtype) if second_maker else randn(rng, shape, dtype, sc)
        return {"dy": randn(rng, shape, dtype), second: other}
    return Spec(name, make, reff or (lambda dy, **kw: getattr(R, name)(dy, *kw.values())),
                returns_like="dy", tol=tol)


def _mse(name):
    def make(draw, dtype):
        rng = draw_rng(draw)
        shape = draw_shape(draw)
        kw = {"pred": randn(rng, shape, dtype), "target": randn(rng, shape, dtype)}
        if math.prod(shape) == 0:
            kw["__expect__"] = "error"  # an empty pred has no mean: ValueError
        if name == "mse_backward":
            kw["dloss"] = draw(st().sampled_from([1.0, 0.5, -2.0, 0.0]))
        return kw

    def ref(pred, target, dloss=None):
        if pred.size == 0:
            raise ValueError("empty")
        if dloss is None:
            return R.mse_forward(pred, target)
        # R.mse_backward computes 2*dloss*(pred-target)/N, which overflows near float64's max
        # where the kernel's (2*dloss/N)*(pred-target) does not; same math, safer order
        return (2.0 * dloss / pred.size) * (pred - target)
    return Spec(name, make, ref, returns_like="pred", tol=(2e-5, 1e-11),
                scalars={"dloss": [math.nan, math.inf, 1e300]} if name == "mse_backward" else {})


def _sum_squares():
    def make(draw, dtype):
        rng = draw_rng(draw)
        return {"x": randn(rng, draw_shape(draw), dtype, draw(st().sampled_from([1.0, 1e3])))}

    def ref(x):
        return float(np.sum(np.square(x, dtype=np.float64)))
    # accumulated in float64 whatever x's dtype: within n 2^-53 of the exact sum
    return Spec("sum_squares", make, ref, tol=(1e-12, 1e-12))


def _ids(rng, shape, V, dtype, draw):
    ids = rng.integers(0, max(V, 1), size=shape).astype(dtype)
    return ids


def _embedding_dims(draw):
    """(rng, table rows V, columns C, id dtype, ids shape) for the embedding specs."""
    rng = draw_rng(draw)
    V = draw(st().sampled_from([1, 2, 5, 17, 100]))
    C = draw(st().sampled_from([0, 1, 3, 8, 9, 33]))
    idt = draw(st().sampled_from([np.int32, np.int64]))
    return rng, V, C, idt, draw_shape(draw, max_dims=2, max_elems=512, big=False)


def _embedding_forward():
    def make(draw, dtype):
        rng, V, C, idt, shape = _embedding_dims(draw)
        return {"ids": _ids(rng, shape, V, idt, draw), "table": randn(rng, (V, C), dtype)}
    return Spec("embedding_forward", make, lambda ids, table: R.embedding_forward(ids, table),
                ids={"ids": lambda kw: (0, kw["table"].shape[0], ())}, returns_like="table")


def _embedding_backward():
    def make(draw, dtype):
        rng, V, C, idt, shape = _embedding_dims(draw)
        return {"dout": randn(rng, shape + (C,), dtype), "ids": _ids(rng, shape, V, idt, draw),
                "num_embeddings": V}
    def ref(dout, ids, num_embeddings):
        if dout.shape != ids.shape + dout.shape[-1:]:
            raise ValueError("shapes")
        if dout.shape[-1] == 0:
            return np.zeros((num_embeddings, 0))
        return R.embedding_backward(dout, ids, num_embeddings)
    return Spec("embedding_backward", make, ref,
                ids={"ids": lambda kw: (0, kw["num_embeddings"], ())}, returns_like="dout",
                scalars={"num_embeddings": [0, -1, 2**63, 10**30]})


def _sgd():
    def make(draw, dtype):
        rng = draw_rng(draw)
        shape = draw_shape(draw)
        s = st()
        momentum = draw(s.sampled_from([0.0, 0.9]))
        nesterov = momentum > 0 and draw(s.booleans())
        kw = {"param": randn(rng, shape, dtype), "grad": randn(rng, shape, dtype),
              "momentum_buf": randn(rng, shape, dtype) if momentum else None,
              "lr": draw(s.sampled_from([0.1, 1e-3, 0.0])), "momentum": momentum,
              "weight_decay": draw(s.sampled_from([0.0, 0.01])), "nesterov": nesterov,
              "dampening": 0.0 if nesterov else draw(s.sampled_from([0.0, 0.1])),
              "first_step": draw(s.booleans())}
        return kw

    def ref(param, grad, momentum_buf, lr, momentum=0.0, weight_decay=0.0, nesterov=False,
            dampening=0.0, first_step=False):
        # R.sgd_step, except that (like torch.optim.SGD) grad += wd*param is skipped when
        # wd == 0, so an Inf param does not turn into NaN
        if momentum and momentum_buf is None:
            raise ValueError("momentum needs a buffer")
        if weight_decay != 0.0:
            R.sgd_step(param, grad, momentum_buf, lr, momentum, weight_decay, nesterov, dampening, first_step)
            return
        g = grad.copy()
        if momentum != 0.0:
            momentum_buf[...] = g if first_step else momentum * momentum_buf + (1.0 - dampening) * g
            g = g + momentum * momentum_buf if nesterov else momentum_buf
        param -= lr * g
    # no huge grads: Nesterov's g + momentum * buf overflows float32 near its max (param -> -inf,
    # as in torch.optim.SGD) where the float64 reference does not (like the Adam specs' g * g)
    return Spec("sgd_step", make, ref, inout=("param", "momentum_buf"), tol=(1e-5, 1e-12), huge=False,
                scalars={"lr": [math.nan, -1.0, math.inf], "momentum": [-0.5, math.nan],
                         "weight_decay": [-1.0, math.inf], "dampening": [math.nan]})


def _adam(name):
    def make(draw, dtype):
        rng = draw_rng(draw)
        shape = draw_shape(draw)
        s = st()
        return {"param": randn(rng, shape, dtype), "grad": randn(rng, shape, dtype),
                "m": randn(rng, shape, dtype, 0.1), "v": np.asarray(np.abs(randn(rng, shape, dtype, 0.01))),
                "step": draw(s.sampled_from([1, 2, 10, 1000])), "lr": draw(s.sampled_from([1e-3, 0.1, 0.0])),
                "beta1": draw(s.sampled_from([0.9, 0.0])), "beta2": draw(s.sampled_from([0.999, 0.5])),
                "eps": draw(s.sampled_from([1e-8, 1e-3])), "weight_decay": draw(s.sampled_from([0.0, 0.01]))}

    def ref(param, grad, m, v, **kw):
        getattr(R, name)(param, grad, m, v, **kw)
    # no huge or subnormal grads: float32 g*g overflows (update 0) or underflows where float64 does not
    return Spec(name, make, ref, inout=("param", "m", "v"), tol=(3e-5, 1e-11), tiny=False, huge=False,
                scalars={"step": [0, -3, 2**63], "lr": [math.nan, -1.0], "beta1": [1.0, -0.1, math.nan],
                         "beta2": [1.0, math.inf], "eps": [0.0, -1e-8, math.nan], "weight_decay": [-1.0]})


def _gelu(name):
    def make(draw, dtype):
        rng = draw_rng(draw)
        shape = draw_shape(draw)
        sc = draw(st().sampled_from([1.0, 4.0, 30.0]))
        kw = {"x": randn(rng, shape, dtype, sc)}
        if name == "gelu_backward":
            kw = {"dy": randn(rng, shape, dtype), **kw}
        kw["approximate"] = draw(st().sampled_from(["none", "tanh"]))
        return kw
    def ref(x, approximate, dy=None):  # R's tanh form cancels where tanh(u) ~ -1
        if name == "gelu_forward_with_grad":  # (y, gelu'(x))
            return _gelu_fwd_accurate(x, approximate), _gelu_bwd_accurate(np.ones_like(x), x, None, approximate)
        if dy is None:
            return _gelu_fwd_accurate(x, approximate)
        return _gelu_bwd_accurate(dy, x, None, approximate)
    return Spec(name, make, ref, returns_like="x",
                tol=(3e-5, 1e-10), scalars={"approximate": ["erf", "", "TANH"]})


def _gelu_backward_from_grad():
    def make(draw, dtype):
        rng = draw_rng(draw)
        shape = draw_shape(draw)
        return {"dy": randn(rng, shape, dtype), "dydx": randn(rng, shape, dtype)}
    return Spec("gelu_backward_from_grad", make, lambda dy, dydx: dy * dydx, returns_like="dydx")


def _max_abs(a):
    a = np.asarray(a)
    return float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0))


def _finite_abs(a):
    a = np.abs(np.asarray(a, dtype=np.float64))
    return np.where(np.isfinite(a), a, 0.0)


def _eps(dtype):
    """Machine epsilon of a float dtype (0 for anything else)."""
    return float(np.finfo(dtype).eps) if dtype is not None and np.dtype(dtype).kind == "f" else 0.0


def _summed_terms(total, dtype, rtol):
    """An atol_scale for a result summed from terms whose magnitudes add up to ``total``: with
    cancellation (1e4 - 1e4 + 3.9) float rounding leaves ~eps * total, not eps * |result|.
    Returned in units of rtol (the runner multiplies by it): 16 eps * total in all."""
    return 16.0 * _eps(dtype) * total / rtol


def _from_output(name, fwd):
    """Backward taking the forward OUTPUT y (sigmoid, tanh, softmax, log_softmax)."""
    def make(draw, dtype):
        rng = draw_rng(draw)
        shape = draw_shape(draw, min_dims=1 if "softmax" in name else 0)
        sc = draw(st().sampled_from([1.0, 10.0]))
        with np.errstate(all="ignore"):
            y = np.asarray(fwd(randn(rng, shape, np.float64, sc))).astype(dtype)
        return {"dy": randn(rng, shape, dtype), "y": y}
    # softmax: dx = y (dy - sum(dy y)) cancels; its terms are O(|dy|)
    # huge=False: y is a forward output (|y| <= 1 or log-probabilities), not any float
    scale = {"softmax_backward": lambda kw: _max_abs(kw["dy"]), "log_softmax_backward": _log_softmax_bwd_terms}
    return Spec(name, make, lambda dy, y: getattr(R, name)(dy, y), returns_like="dy", tol=(3e-5, 1e-10), huge=False,
                atol_scale=scale.get(name))


def _log_softmax_bwd_terms(kw, dtype=None):
    """dx = dy - exp(y) sum(dy) cancels: the rounding of dy and of the row sum, eps (|dy| + exp(y) sum|dy|)
    (seed 9001: float32 |dy| ~ 1e4 on a 2-wide row, a quarter of dy's ulp off; dy = (-14453, -28) gives
    dx = 0.145 with an error of 3.5e-4)."""
    dy, y = kw["dy"], kw["y"]
    if not (isinstance(dy, np.ndarray) and isinstance(y, np.ndarray)) or dy.shape != y.shape or dy.ndim == 0:
        return 0.0
    a = _finite_abs(dy)
    terms = a + _finite_abs(np.exp(y)) * a.sum(axis=-1, keepdims=True)
    return _summed_terms(float(np.max(terms, initial=0.0)), dtype, 3e-5 if dtype == np.float32 else 1e-10)


def _rows_fwd(name):
    def make(draw, dtype):
        rng = draw_rng(draw)
        sc = draw(st().sampled_from([1.0, 10.0, 1e4]))
        return {"x": randn(rng, draw_shape(draw, min_dims=1), dtype, sc)}

    def ref(x):
        if x.ndim == 0:
            raise ValueError("0-d")
        if x.shape[-1] == 0:
            return x.copy()
        return _log_softmax_ref(x) if name == "log_softmax_forward" else _softmax_ref(x)
    return Spec(name, make, ref, returns_like="x", tol=(3e-5, 1e-10))


def _layernorm_conditioning(x, eps, dtype, rtol):
    """(rstd, cond) of x's finite rows (rows with a finite rstd): a row far from 0 relative to its
    spread loses digits when centred, so xhat is off by ~eps |x| rstd; cond is that error in
    units of rtol, at least 1 (seed 89: -80.0241, -80.0200; seed 157: 5.58406, 5.58254)."""
    if x.ndim == 0 or x.shape[-1] == 0 or not (isinstance(eps, float) and math.isfinite(eps) and eps >= 0):
        return np.zeros(0), np.zeros(0)
    rows = x.reshape(-1, x.shape[-1])
    rows = rows[np.isfinite(rows).all(axis=1)]  # a NaN row (a perturbation) leaves the others' scale
    _, _, rstd = R.layernorm_forward(rows, None, None, eps)
    ok = np.isfinite(rstd)
    rows, rstd = rows[ok], rstd[ok]
    u = 1.2e-7 if dtype == np.float32 else 2.3e-16
    return rstd, np.maximum(1.0, u * np.max(np.abs(rows), axis=1, initial=0.0) * rstd / rtol)


def _layernorm_forward():
    def make(draw, dtype):
        rng = draw_rng(draw)
        shape = draw_shape(draw, min_dims=1)
        if shape[-1] == 0 and draw(st().booleans()):
            shape = shape[:-1] + (3,)
        C = shape[-1]
        s = st()
        kw = {"x": randn(rng, shape, dtype, draw(s.sampled_from([1.0, 100.0]))) + dtype(draw(s.sampled_from([0.0, 5.0])))}
        kw["weight"] = randn(rng, (C,), dtype) if draw(s.booleans()) else None
        kw["bias"] = randn(rng, (C,), dtype) if draw(s.booleans()) else None
        kw["eps"] = draw(s.sampled_from([1e-5, 0.1, 0.0]))
        if C == 0:
            kw["__expect__"] = "error"  # no features: no mean, ValueError
        return kw

    def ref(x, weight, bias, eps):
        if x.ndim == 0 or x.shape[-1] == 0:
            raise ValueError("layernorm needs C >= 1")
        return R.layernorm_forward(x, weight, bias, eps)
    # huge=False like the other reductions: a row holding +-FLT_MAX and ordinary values has a mean
    # that no summation order gets right (even float64 drops the small terms next to 3.4e38)
    def terms(kw, dtype=None):  # y = xhat w + b: xhat's error from centring, times |w|
        _, cond = _layernorm_conditioning(kw["x"], kw["eps"], dtype, 1e-4 if dtype == np.float32 else 1e-9)
        w = kw["weight"]
        return float(np.max(cond, initial=0.0)) * (_max_abs(w) if isinstance(w, np.ndarray) else 1.0)
    return Spec("layernorm_forward", make, ref, returns_like="x", tol=(1e-4, 1e-9), huge=False,
                atol_scale=terms, scalars={"eps": [-1.0, math.nan, math.inf]})


def _layernorm_backward():
    def make(draw, dtype):
        rng = draw_rng(draw)
        shape = draw_shape(draw, min_dims=1)
        if shape[-1] == 0:
            shape = shape[:-1] + (draw(st().sampled_from([1, 5])),)
        C = shape[-1]
        x = randn(rng, shape, np.float64)
        w = randn(rng, (C,), np.float64) if draw(st().booleans()) else None
        _, mean, rstd = R.layernorm_forward(x, w, None, 1e-5)
        return {"dy": randn(rng, shape, dtype), "x": x.astype(dtype), "weight": None if w is None else w.astype(dtype),
                "mean": np.asarray(mean).astype(dtype), "rstd": np.asarray(rstd).astype(dtype)}

    def ref(dy, x, weight, mean, rstd):
        if x.ndim == 0 or x.shape[-1] == 0:
            raise ValueError("layernorm needs C >= 1")
        return R.layernorm_backward(dy, x, weight, mean, rstd)
    def terms(kw):  # dx = rstd (g - mean(g) - xhat mean(g xhat)) cancels (to 0 for C = 2)
        w = kw["weight"]
        return _max_abs(kw["rstd"]) * _max_abs(kw["dy"]) * (1.0 if not isinstance(w, np.ndarray) else max(_max_abs(w), 1e-30))
    return Spec("layernorm_backward", make, ref, returns_like="x", tol=(1e-4, 1e-9), huge=False, atol_scale=terms)


def _xent(name):
    def make(draw, dtype):
        rng = draw_rng(draw)
        s = st()
        N = draw(s.sampled_from([0, 1, 2, 7, 33, 300]))
        V = draw(s.sampled_from([1, 2, 5, 17, 100]))
        sc = draw(s.sampled_from([1.0, 10.0, 1e4]))
        ignore = draw(s.sampled_from([-100, -1, 0]))
        idt = draw(s.sampled_from([np.int32, np.int64]))
        t = rng.integers(0, V, size=N).astype(idt)
        if N and draw(s.booleans()):
            t[rng.random(N) < 0.3] = ignore
        logits = randn(rng, (N, V), dtype, sc)
        kw = {"logits": logits, "targets": t}
        if name == "cross_entropy_backward":
            kw["lse"] = R.logsumexp(logits.astype(np.float64)).astype(dtype)
            kw["dloss"] = draw(s.sampled_from([1.0, 0.5, -3.0]))
        kw["ignore_index"] = ignore
        return kw

    def ref(logits, targets, ignore_index, lse=None, dloss=None):
        if logits.ndim != 2 or logits.shape[1] == 0:
            raise ValueError("bad logits")
        if dloss is None:
            loss, lse = R.cross_entropy_forward(logits, targets, ignore_index)
            # a row whose max is +-inf has logsumexp +-inf (R gives NaN); NaN stays NaN
            m = logits.max(axis=-1) if logits.shape[1] else np.zeros(len(logits))
            lse = np.where(np.isinf(m), m, lse)
            if logits.shape[1] and len(targets):  # the loss from the same log-probabilities
                keep = targets != ignore_index
                ls = _log_softmax_ref(logits)[np.arange(len(targets)), np.where(keep, targets, 0)]
                loss = -ls[keep].sum() / keep.sum() if keep.any() else loss
            return loss, lse
        return R.cross_entropy_backward(logits, targets, lse, dloss, ignore_index)
    def terms(kw, dtype=None):  # dloss (p - onehot): p ~ 1 at the target cancels (seed 139, float64)
        d = kw.get("dloss")
        d = abs(float(d)) if isinstance(d, (int, float)) and math.isfinite(d) else 0.0
        return _summed_terms(2.0 * d, dtype, 5e-5 if dtype == np.float32 else 1e-9)
    return Spec(name, make, ref, returns_like="logits", tol=(5e-5, 1e-9),
                atol_scale=terms if name == "cross_entropy_backward" else None,
                ids={"targets": lambda kw: (0, kw["logits"].shape[1], (kw["ignore_index"],))},
                scalars={"ignore_index": [2**63, 5], **({"dloss": [math.nan, "x", None]} if "backward" in name else {})})


def _into_out(c, out, accumulate):
    """A product's result as the matmul kernels return it: c, or written (added) into out."""
    if out is None:
        if accumulate:
            raise ValueError("accumulate needs out")
        return c
    if out.shape != c.shape:
        raise ValueError("out shape")
    out[...] = out + c if accumulate else c
    return out


def _matmul():
    def make(draw, dtype):
        rng = draw_rng(draw)
        s = st()
        M, K, N = (draw(s.sampled_from([0, 1, 2, 3, 5, 8, 17, 33])) for _ in range(3))
        ta, tb = draw(s.booleans()), draw(s.booleans())
        batch = draw(s.sampled_from([(), (), (1,), (3,), (2, 2)]))
        which = draw(s.sampled_from(["both", "a", "b"])) if batch else "both"
        a_shape = (batch if which in ("both", "a") else ()) + ((K, M) if ta else (M, K))
        b_shape = (batch if which in ("both", "b") else ()) + ((N, K) if tb else (K, N))
        kw = {"a": randn(rng, a_shape, dtype), "b": randn(rng, b_shape, dtype), "trans_a": ta, "trans_b": tb}
        if draw(s.booleans()):
            kw["out"] = randn(rng, batch + (M, N), dtype)
            kw["accumulate"] = draw(s.booleans())
        elif draw(s.booleans()):
            kw["out"], kw["accumulate"] = None, False
        return kw

    def ref(a, b, trans_a=False, trans_b=False, out=None, accumulate=False):
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError("matmul needs 2-D")
        if a.ndim > 2 and b.ndim > 2 and a.shape[:-2] != b.shape[:-2]:
            raise ValueError("batch dims differ")
        c = R.matmul(a, b, trans_a, trans_b)
        return _into_out(c, out, accumulate)
    return Spec("matmul", make, ref, inout=("out",), returns_like="a", tol=(3e-5, 1e-10), huge=False)


def _linear_dims(draw):
    """(rng, strategies, leading shape, in features, out features) for the linear specs."""
    rng = draw_rng(draw)
    s = st()
    lead = draw_shape(draw, max_dims=2, max_elems=256, big=False)
    IN, OUT = draw(s.sampled_from([0, 1, 3, 8, 17])), draw(s.sampled_from([0, 1, 4, 9, 33]))
    return rng, s, lead, IN, OUT


def bf16_round(x):
    """x rounded to the nearest bfloat16 (ties to even; NaN stays NaN), as float64."""
    f = np.asarray(x, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    r = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32)
    out = r.view(np.float32).astype(np.float64)
    return np.where(np.isnan(f), np.nan, out)


def _matmul_bf16():
    def make(draw, dtype):
        rng = draw_rng(draw)
        s = st()
        M, K, N = (draw(s.sampled_from([0, 1, 2, 3, 5, 8, 17, 33, 70])) for _ in range(3))
        ta, tb = draw(s.booleans()), draw(s.booleans())
        kw = {"a": randn(rng, (K, M) if ta else (M, K), dtype), "b": randn(rng, (N, K) if tb else (K, N), dtype),
              "trans_a": ta, "trans_b": tb}
        if draw(s.booleans()):
            kw["out"] = randn(rng, (M, N), dtype)
            kw["accumulate"] = draw(s.booleans())
        return kw

    def ref(a, b, trans_a=False, trans_b=False, out=None, accumulate=False):
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError("matmul_bf16 needs 2-D")
        c = R.matmul(bf16_round(a), bf16_round(b), trans_a, trans_b)  # operands rounded, products exact
        return _into_out(c, out, accumulate)
    # float32 only (bf16 operands, float32 sums); no subnormals: VCVTNE2PS2BF16 reads them as zero
    return Spec("matmul_bf16", make, ref, inout=("out",), returns_like="a", tol=(3e-5, 3e-5), huge=False,
                tiny=False, dtypes=(np.float32,))


def _linear_forward():
    def make(draw, dtype):
        rng, s, lead, IN, OUT = _linear_dims(draw)
        kw = {"x": randn(rng, lead + (IN,), dtype), "w": randn(rng, (OUT, IN), dtype)}
        kw["b"] = randn(rng, (OUT,), dtype) if draw(s.booleans()) else None
        if draw(s.booleans()):
            kw["residual"] = randn(rng, lead + (OUT,), dtype)
        return kw

    def ref(x, w, b=None, residual=None):
        if x.ndim < 1 or w.ndim != 2 or (b is not None and b.shape != (w.shape[0],)):
            raise ValueError("shapes")
        y = R.linear_forward(x, w, b)
        if residual is not None:
            if residual.shape != y.shape:
                raise ValueError("shapes")
            y = residual + y
        return y
    return Spec("linear_forward", make, ref, returns_like="x", tol=(3e-5, 1e-10), huge=False)


def _gemv():
    """The skinny product: float32 only (float64 draws must be refused), w float32 or bf16 bits."""
    def make(draw, dtype):
        rng, s, lead, IN, OUT = _linear_dims(draw)
        kw = {"x": randn(rng, lead + (IN,), dtype), "w": randn(rng, (OUT, IN), np.float32)}
        if draw(s.booleans()):
            kw["w"] = (kw["w"].view(np.uint32) >> 16).astype(np.uint16)   # bf16 bits (truncated)
        kw["b"] = randn(rng, (OUT,), np.float32) if draw(s.booleans()) else None
        if draw(s.booleans()):
            kw["residual"] = randn(rng, lead + (OUT,), np.float32)
        if dtype != np.float32:
            kw["__expect__"] = "error"
        return kw

    def ref(x, w, b=None, residual=None):
        if w.dtype == np.uint16:
            w = (w.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        return _linear_forward().ref(x, w, b, residual)
    return Spec("gemv", make, ref, returns_like="x", tol=(3e-5, 1e-10), huge=False)


def _linear_backward():
    def make(draw, dtype):
        rng, s, lead, IN, OUT = _linear_dims(draw)
        return {"dy": randn(rng, lead + (OUT,), dtype), "x": randn(rng, lead + (IN,), dtype),
                "w": randn(rng, (OUT, IN), dtype)}

    def ref(dy, x, w):
        if x.ndim < 1 or w.ndim != 2 or dy.shape != x.shape[:-1] + (w.shape[0],):
            raise ValueError("shapes")
        N = math.prod(x.shape[:-1])
        dy2, x2 = dy.reshape(N, w.shape[0]), x.reshape(N, w.shape[1])
        return (dy2 @ w).reshape(x.shape), dy2.T @ x2, dy2.sum(axis=0)

    def terms(kw, dtype=None):  # seed 137: db of a dy column holding -1e4 and 1e4 (float32 lost 1.7e-3)
        dy, x, w = kw["dy"], kw["x"], kw["w"]
        if not all(isinstance(v, np.ndarray) for v in (dy, x, w)):
            return 0.0
        if x.ndim < 1 or w.ndim != 2 or dy.shape != x.shape[:-1] + (w.shape[0],):
            return 0.0
        return _summed_terms(_linear_terms(dy, x, w), dtype, 3e-5 if dtype == np.float32 else 1e-10)
    return Spec("linear_backward", make, ref, returns_like="x", tol=(3e-5, 1e-10), huge=False, atol_scale=terms)


def _linear_terms(dy, x, w, b=None):
    """The largest sum of |terms| behind any result of y = x w^T + b and its gradients
    dx = dy w, dw = dy^T x, db = sum(dy) (non-finite entries count 0)."""
    N = math.prod(x.shape[:-1])
    a, bx, c = _finite_abs(dy).reshape(N, w.shape[0]), _finite_abs(x).reshape(N, w.shape[1]), _finite_abs(w)
    fwd = bx @ c.T + (_finite_abs(b) if b is not None else 0.0)
    return float(max(np.max(fwd, initial=0.0), np.max(a @ c, initial=0.0), np.max(a.T @ bx, initial=0.0),
                     np.max(a.sum(axis=0), initial=0.0)))


def _attention_scores(q, k, causal, scale):
    """scale * q k^T with the bottom-right causal mask as -inf: (B, H, T, S)."""
    H, Hkv, T, S = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * np.einsum("bhtd,bhsd->bhts", q, np.repeat(k, H // Hkv, axis=1))
    if causal:
        s = np.where(np.arange(S)[None, :] > np.arange(T)[:, None] + (S - T), -np.inf, s)
    return s


def _attention_visible(T, S, causal):
    """(T, S): key j is visible to query i (the bottom-right causal mask, or all keys). A visible
    key whose score is -inf is not masked: it gets weight 0, and 0 * v counts (NaN for a NaN v)."""
    if not causal:
        return np.ones((T, S), bool)
    return np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)


def _attention_forward_ref(q, k, v, causal, scale):
    B, H, T, D = q.shape
    if B * T == 0 or k.shape[2] == 0:  # no query rows, or no key to attend to: o = 0, lse = -inf
        return np.zeros(q.shape), np.full((B, H, T), -np.inf)
    _, lse = R.attention_forward(q, k, v, causal, scale)
    s = _attention_scores(q, k, causal, scale)
    # R treats a row with a NaN score like a fully masked one (o = 0, lse = -inf); NaN in, NaN out
    nan_rows = np.isnan(s).any(axis=-1)
    lse[nan_rows] = np.nan
    # o = sum over the VISIBLE keys of p v (R's einsum adds 0 * v for masked keys, NaN for a NaN v)
    vis = _attention_visible(T, k.shape[2], causal)
    p = np.where(vis, np.exp(s - np.where(np.isneginf(lse), 0.0, lse)[..., None]), 0.0)
    vv = np.repeat(v, q.shape[1] // k.shape[1], axis=1)
    o = np.where(vis[..., None], p[..., None] * vv[:, :, None], 0.0).sum(axis=3)
    o[np.isneginf(lse)] = 0.0  # a row whose every visible score is -inf has no key: o = 0
    return o, lse


def _attention_backward_ref(do, q, k, v, o, lse, causal, scale):
    """The gradients given the forward's o and lse (as the kernel takes them, so that a
    perturbed q/k/v with the original o/lse has a defined expected result):
    P = exp(S - lse) (0 where masked or lse = -inf), dS = P (dO V^T - rowsum(dO O))."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    sc = 1.0 / np.sqrt(D) if scale is None else scale
    s = _attention_scores(q, k, causal, scale)
    # the kernel skips masked keys and rows with lse = -inf; every other pair counts, even
    # where p underflows to 0 or the score is -inf (so 0 * NaN there is NaN, as in the kernel)
    live = _attention_visible(T, S, causal) & ~np.isneginf(lse)[..., None]
    p = np.where(live, np.exp(s - lse[..., None]), 0.0)
    kk, vv = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    dp = np.einsum("bhtd,bhsd->bhts", do, vv)
    ds = np.where(live, p * (dp - (do * o).sum(-1, keepdims=True)), 0.0)
    # sums over live pairs only (an einsum would add 0 * NaN = NaN for masked ones)
    dq = sc * np.where(live[..., None], ds[..., None] * kk[:, :, None], 0.0).sum(axis=3)
    dk = sc * np.where(live[..., None], ds[..., None] * q[:, :, :, None], 0.0).sum(axis=2)
    dv = np.where(live[..., None], p[..., None] * do[:, :, :, None], 0.0).sum(axis=2)
    fold = lambda x: x.reshape(B, Hkv, G, *x.shape[2:]).sum(axis=2)
    return dq, fold(dk), fold(dv)


def _attention_backward_scale(kw):
    """Rounding scale of the backward: dS = P (dP - D) cancels to ~0 where o ~ v (one key), so
    the error is relative to the terms, ~ scale * D * |dO| |V| |K| (finite inputs only)."""
    m = lambda a: float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0))
    D = kw["q"].shape[-1]
    sc = 1.0 / math.sqrt(D) if kw["scale"] is None else abs(kw["scale"])
    return sc * D * m(kw["do"]) * m(kw["v"]) * max(m(kw["k"]), m(kw["q"]), 1.0)


def _attention_forward_scale(q, k, v, scale, dtype, rtol):
    """Rounding scale of the forward, in units of rtol: a score s = scale q.k is rounded relative
    to scale sum_d |q_d k_d|, and exp turns that absolute error into a relative error of the
    weights, so o is off by ~eps * that * |v| (seed 197: a key holding 1e4 put scores at ~1e4;
    PyTorch's float32 output was as far off as ours). Non-finite entries count 0."""
    if not all(isinstance(a, np.ndarray) and a.ndim == 4 for a in (q, k, v)) or q.shape[-1] != k.shape[-1] \
            or k.shape[1] == 0 or q.shape[1] % k.shape[1] or q.size == 0 or k.size == 0:
        return 0.0
    D = q.shape[-1]
    sc = 1.0 / math.sqrt(D) if scale is None else scale
    if not isinstance(sc, (int, float)) or not math.isfinite(sc):
        return 0.0
    kk = np.repeat(_finite_abs(k), q.shape[1] // k.shape[1], axis=1)
    terms = float(np.max(np.einsum("bhtd,bhsd->bhts", _finite_abs(q), kk), initial=0.0))
    return 4.0 * _eps(dtype) * abs(sc) * terms * max(_max_abs(v), 1.0) / rtol


def _attention(name):
    def make(draw, dtype):
        rng = draw_rng(draw)
        s = st()
        B, Hkv, G = draw(s.sampled_from([0, 1, 2])), draw(s.sampled_from([1, 2])), draw(s.sampled_from([1, 2]))
        T, S = draw(s.sampled_from([0, 1, 3, 8, 17, 65])), draw(s.sampled_from([0, 1, 3, 8, 17, 65]))
        D = draw(s.sampled_from([1, 3, 8, 16, 32, 64]))
        sc = draw(s.sampled_from([1.0, 3.0]))
        q = randn(rng, (B, Hkv * G, T, D), dtype, sc)
        k = randn(rng, (B, Hkv, S, D), dtype, sc)
        v = randn(rng, (B, Hkv, S, D), dtype)
        kw = {"q": q, "k": k, "v": v, "causal": draw(s.booleans()),
              "scale": draw(s.sampled_from([None, 0.5, 2.0]))}
        if name == "attention_backward":
            o, lse = _attention_forward_ref(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                                            kw["causal"], kw["scale"])
            kw = {"do": randn(rng, q.shape, dtype), **kw, "o": o.astype(dtype), "lse": lse.astype(dtype)}
        return kw

    def ref(q, k, v, causal=False, scale=None, do=None, o=None, lse=None):
        if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape or not 1 <= q.shape[3] <= 256 \
                or k.shape[1] == 0 or q.shape[1] % k.shape[1] or q.shape[1] == 0 \
                or (q.shape[0], q.shape[3]) != (k.shape[0], k.shape[3]):
            raise ValueError("shapes")
        B, H, T, D = q.shape
        S = k.shape[2]
        if do is None:
            return _attention_forward_ref(q, k, v, causal, scale)
        if do.shape != q.shape or o.shape != q.shape or lse.shape != q.shape[:3]:
            raise ValueError("shapes")
        return _attention_backward_ref(do, q, k, v, o, lse, causal, scale)
    def forward_scale(kw, dtype=None):
        return _attention_forward_scale(kw["q"], kw["k"], kw["v"], kw["scale"], dtype,
                                        2e-4 if dtype == np.float32 else 1e-9)
    return Spec(name, make, ref, returns_like="q", tol=(2e-4, 1e-9), huge=False,
                atol_scale=_attention_backward_scale if name == "attention_backward" else forward_scale,
                # backward: aliasing q/k/v/do makes o and lse stale, and exp(s - stale lse)
                # overflows float32 where float64 does not (no output buffer to alias anyway)
                kinds=tuple(k for k in PERTURBATIONS if k != "alias") if name == "attention_backward" else None,
                value_args=("do",) if name == "attention_backward" else None,
                # backward: causal=None is a valid (False) call that makes o and lse stale, and
                # exp(s - stale lse) overflows float32 where float64 does not
                scalars={"scale": [math.nan, math.inf, "x"],
                         **({} if name == "attention_backward" else {"causal": [None]})})


def _attention_qkv(name):
    """The packed entry points: the same math as _attention on qkv (B, T, (H + 2 Hkv) D)."""
    inner = _attention("attention_backward" if name.endswith("backward") else "attention_forward")

    def split(qkv, H, Hkv):
        B, T, W = qkv.shape
        x = qkv.reshape(B, T, H + 2 * Hkv, W // (H + 2 * Hkv)).transpose(0, 2, 1, 3)
        return x[:, :H], x[:, H:H + Hkv], x[:, H + Hkv:]

    def rows(x):  # (B, h, T, D) -> (B, T, h D)
        return x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], x.shape[1] * x.shape[3])

    def make(draw, dtype):
        kw = inner.make(draw, dtype)
        q, k, v = kw.pop("q"), kw.pop("k"), kw.pop("v")
        k, v = k[:, :, :q.shape[2]], v[:, :, :q.shape[2]]  # S = T
        if k.shape[2] < q.shape[2]:
            q = q[:, :, :k.shape[2]]
        H, Hkv = q.shape[1], k.shape[1]
        out = {"qkv": np.ascontiguousarray(np.concatenate([rows(q), rows(k), rows(v)], axis=2)),
               "n_head": H, "n_kv_head": Hkv, "causal": kw["causal"], "scale": kw["scale"]}
        if "do" in kw:
            o, lse = _attention_forward_ref(*(a.astype(np.float64) for a in (q, k, v)), kw["causal"], kw["scale"])
            out = {"do": np.ascontiguousarray(rows(kw["do"][:, :, :q.shape[2]])), **out,
                   "o": np.ascontiguousarray(rows(o)).astype(dtype), "lse": lse.astype(dtype)}
        return out

    def ref(qkv, n_head, n_kv_head=None, causal=False, scale=None, do=None, o=None, lse=None):
        if not isinstance(n_head, int) or not isinstance(n_kv_head, (int, type(None))):
            raise TypeError("n_head")
        H, Hkv = n_head, n_kv_head or n_head
        if qkv.ndim != 3 or H < 1 or Hkv < 1 or H % Hkv or qkv.shape[2] % (H + 2 * Hkv) \
                or not 1 <= qkv.shape[2] // (H + 2 * Hkv) <= 256:
            raise ValueError("shapes")
        q, k, v = split(qkv, H, Hkv)
        B, T, D = qkv.shape[0], qkv.shape[1], q.shape[3]
        if do is None:
            o_, lse_ = _attention_forward_ref(q, k, v, causal, scale)
            return rows(o_), lse_
        if do.shape != (B, T, H * D) or o.shape != do.shape or lse.shape != (B, H, T):
            raise ValueError("shapes")
        heads = lambda a: a.reshape(B, T, H, D).transpose(0, 2, 1, 3)
        dq, dk, dv = _attention_backward_ref(heads(do), q, k, v, heads(o), lse, causal, scale)
        return np.concatenate([rows(dq), rows(dk), rows(dv)], axis=2)

    def atol_scale(kw):
        q, k, v = split(kw["qkv"], kw["n_head"], kw["n_kv_head"] or kw["n_head"])
        return _attention_backward_scale({"q": q, "k": k, "v": v, "do": kw["do"], "scale": kw["scale"]})

    def forward_scale(kw, dtype=None):
        q, k, v = split(kw["qkv"], kw["n_head"], kw["n_kv_head"] or kw["n_head"])
        return _attention_forward_scale(q, k, v, kw["scale"], dtype, 2e-4 if dtype == np.float32 else 1e-9)

    back = name.endswith("backward")
    return Spec(name, make, ref, returns_like="qkv", tol=(2e-4, 1e-9), huge=False,
                atol_scale=atol_scale if back else forward_scale,
                kinds=tuple(k for k in PERTURBATIONS if k != "alias") if back else None,
                value_args=("do",) if back else None,
                scalars={"scale": [math.nan, math.inf, "x"], "n_head": [0, -1, "x"], "n_kv_head": [0, 3, "x"],
                         **({} if back else {"causal": [None]})})


# ----- nn.functional: the Tensor API on top of the kernels ----------------------------------
# Each call runs forward and backward of sum(y * w) (w a fixed pattern) and returns
# (y, d/d each float input); the reference does the same in float64. Perturbations are those a
# Tensor user can make: values, dtypes, views (non-contiguous, negative strides), read-only
# arrays, shapes, 0-d, out-of-range targets/ids.

F_KINDS = ("none", "none", "values", "values", "dtype", "noncontig", "negstride", "readonly",
           "shape", "ids", "zerod", "scalar")


def _w(shape):
    return np.cos(np.arange(math.prod(shape), dtype=np.float64)).reshape(shape)


def _functional(fname, grads):
    """Spec.call for fusegrad.nn.functional.<fname>: float array kwargs in ``grads`` become
    leaves that require grad; returns (y, *grads)."""
    def call(**kw):
        import fusegrad as fg
        F = fg.nn.functional
        ts = {}
        for k, v in kw.items():
            if isinstance(v, np.ndarray):
                ts[k] = fg.Tensor(v, requires_grad=k in grads and v.dtype.kind == "f")
            else:
                ts[k] = v
        y = getattr(F, fname)(**ts)
        out = np.asarray(y.data)
        if y.requires_grad:
            (y * fg.Tensor(_w(out.shape).astype(out.dtype))).sum().backward()
        res = [out]
        for k in grads:
            t = ts.get(k)
            if isinstance(t, fg.Tensor) and t.requires_grad:
                res.append(np.asarray(t.grad.data if isinstance(t.grad, fg.Tensor) else t.grad))
            else:
                res.append(None)
        return tuple(res)
    return call


def _f_elementwise(fname, fwd, bwd, scales=(1.0, 30.0), extra=None, scalars=None):
    def make(draw, dtype):
        rng = draw_rng(draw)
        sc = draw(st().sampled_from(scales))
        kw = {"input": randn(rng, draw_shape(draw, max_elems=2048, big=False), dtype, sc)}
        if extra:
            kw.update(extra(draw))
        return kw

    def ref(input, **kw):
        y = fwd(input, **kw)
        return y, bwd(_w(input.shape), input, y, **kw)
    return Spec(f"F.{fname}", make, ref, returns_like="input", tol=(3e-5, 1e-10),
                call=_functional(fname, ("input",)), errname=(fname,), kinds=F_KINDS, grads=("input",),
                scalars=scalars or {})


def _f_rows(fname, fwd, bwd):
    def make(draw, dtype):
        rng = draw_rng(draw)
        sc = draw(st().sampled_from([1.0, 10.0, 1e4]))
        shape = draw_shape(draw, min_dims=1, max_elems=2048, big=False)
        if shape[-1] == 0:
            shape = shape[:-1] + (3,)
        return {"x": randn(rng, shape, dtype, sc)}  # fusegrad's softmax(x, dim=-1) names it x

    def ref(x):
        if x.ndim == 0:
            raise ValueError("0-d")
        if x.size == 0:
            return x.copy(), x.copy()
        y = fwd(x)
        return y, bwd(_w(y.shape), y)
    # softmax: dx = y (w - sum(w y)) cancels to ~0 for a one-hot y; its terms are O(|w| y) <= 1
    return Spec(f"F.{fname}", make, ref, returns_like="x", tol=(5e-5, 1e-10),
                atol_scale=(lambda kw: 1.0) if fname == "softmax" else None,
                call=_functional(fname, ("x",)), errname=(fname, fname.replace("_", "")), kinds=F_KINDS, grads=("x",))


def _f_linear():
    def make(draw, dtype):
        rng, s, lead, IN, OUT = _linear_dims(draw)
        kw = {"input": randn(rng, lead + (IN,), dtype), "weight": randn(rng, (OUT, IN), dtype)}
        if draw(s.booleans()):
            kw["bias"] = randn(rng, (OUT,), dtype)
        return kw

    def ref(input, weight, bias=None):
        if input.ndim < 1 or weight.ndim != 2 or input.shape[-1] != weight.shape[1] \
                or (bias is not None and bias.shape != (weight.shape[0],)):
            raise ValueError("shapes")
        y = R.linear_forward(input, weight, bias)
        N = math.prod(input.shape[:-1])
        dy2, x2 = _w(y.shape).reshape(N, weight.shape[0]), input.reshape(N, weight.shape[1])
        return y, (dy2 @ weight).reshape(input.shape), dy2.T @ x2, (dy2.sum(0) if bias is not None else None)
    def terms(kw, dtype=None):  # seed 181: K = 0, so db = sum of 119 rows of cos weights ~ 1e-3
        x, w, b = kw["input"], kw["weight"], kw.get("bias")
        if not (isinstance(x, np.ndarray) and isinstance(w, np.ndarray) and (b is None or isinstance(b, np.ndarray))):
            return 0.0
        if x.ndim < 1 or w.ndim != 2 or x.shape[-1] != w.shape[1] or (b is not None and b.shape != (w.shape[0],)):
            return 0.0
        dy = _w(x.shape[:-1] + (w.shape[0],))
        return _summed_terms(_linear_terms(dy, x, w, b), dtype, 3e-5 if dtype == np.float32 else 1e-10)
    return Spec("F.linear", make, ref, returns_like="input", tol=(3e-5, 1e-10), huge=False, atol_scale=terms,
                call=_functional("linear", ("input", "weight", "bias")), errname=("linear",), kinds=F_KINDS,
                grads=("input", "weight", "bias"))


def _f_layer_norm():
    def make(draw, dtype):
        rng = draw_rng(draw)
        s = st()
        shape = draw_shape(draw, min_dims=1, max_elems=2048, big=False)
        if shape[-1] == 0:
            shape = shape[:-1] + (5,)
        C = shape[-1]
        return {"input": randn(rng, shape, dtype, draw(s.sampled_from([1.0, 100.0]))),
                "normalized_shape": C, "weight": randn(rng, (C,), dtype), "bias": randn(rng, (C,), dtype)}

    def ref(input, normalized_shape, weight, bias):
        if input.ndim == 0 or input.shape[-1] != normalized_shape or weight.shape != (normalized_shape,) \
                or bias.shape != (normalized_shape,):
            raise ValueError("shapes")
        y, mean, rstd = R.layernorm_forward(input, weight, bias, 1e-5)
        return (y, *R.layernorm_backward(_w(y.shape), input, weight, mean, rstd))
    def terms(kw, dtype=None):  # dx = rstd (g - mean(g) - xhat mean(g xhat)) cancels (to 0 for C = 1, 2)
        x = kw["input"]
        if x.ndim == 0 or x.shape[-1] != kw["weight"].shape[-1]:
            return 0.0
        # PyTorch's float32 gradient was further off than ours in the seed-89 row
        rstd, cond = _layernorm_conditioning(x, 1e-5, dtype, 2e-4 if dtype == np.float32 else 1e-9)
        return float(np.max(rstd * cond, initial=0.0)) * _max_abs(kw["weight"])
    return Spec("F.layer_norm", make, ref, returns_like="input", tol=(2e-4, 1e-9), huge=False, atol_scale=terms,
                call=_functional("layer_norm", ("input", "weight", "bias")),
                errname=("layer_norm", "layernorm"), kinds=F_KINDS, grads=("input", "weight", "bias"))


def _f_mse_loss():
    def make(draw, dtype):
        rng = draw_rng(draw)
        shape = draw_shape(draw, max_elems=2048, big=False)
        if math.prod(shape) == 0:
            shape = (3,)
        return {"input": randn(rng, shape, dtype), "target": randn(rng, shape, dtype)}

    def ref(input, target):
        if input.shape != target.shape or input.size == 0:
            raise ValueError("shapes")
        d = input - target
        g = (2.0 / input.size) * d
        return np.mean(d * d), g, -g
    return Spec("F.mse_loss", make, ref, returns_like="input", tol=(5e-5, 1e-10), huge=False,
                call=_functional("mse_loss", ("input", "target")), errname=("mse",), kinds=F_KINDS,
                grads=("input", "target"))


def _f_cross_entropy():
    def make(draw, dtype):
        rng = draw_rng(draw)
        s = st()
        N, V = draw(s.sampled_from([1, 2, 7, 33])), draw(s.sampled_from([1, 2, 5, 17, 100]))
        t = rng.integers(0, V, size=N).astype(draw(s.sampled_from([np.int32, np.int64])))
        if draw(s.booleans()):
            t[0] = -100
        # logits up to ~30: the float32 lse saved for backward has ulp 1e-3 at |logits| ~ 1e4, which
        # the float64 reference does not have (logits of 1e4 are covered at the kernel level)
        return {"input": randn(rng, (N, V), dtype, draw(s.sampled_from([1.0, 10.0]))), "target": t}

    def ref(input, target):
        if input.ndim < 1 or input.size // max(input.shape[-1], 1) != target.size:
            raise ValueError("shapes")
        x2, t = input.reshape(-1, input.shape[-1]), target.reshape(-1)  # (..., C) logits are flattened
        ls = _log_softmax_ref(x2)           # R gives NaN for a +inf logit; the loss of the others is inf
        keep = t != -100
        picked = ls[np.arange(len(t)), np.where(keep, t, 0)]
        with np.errstate(invalid="ignore"):
            loss = -picked[keep].sum() / keep.sum()   # every target ignored: 0/0 = NaN, as PyTorch
        return loss, R.cross_entropy_backward(x2, t, R.logsumexp(x2), 1.0, -100).reshape(input.shape), None
    return Spec("F.cross_entropy", make, ref, returns_like="input", tol=(5e-5, 1e-9),
                ids={"target": lambda kw: (0, kw["input"].shape[1], (-100,))},
                # gradient entries are (p - onehot) / n: p - 1 cancels in float32 when p ~ 1
                atol_scale=lambda kw: 1.0 / max(int(np.sum(np.asarray(kw["target"]) != -100)), 1),
                # non-finite logits are fuzzed at the kernel level (cross_entropy_forward/backward)
                call=_functional("cross_entropy", ("input", "target")), errname=("cross_entropy",),
                kinds=tuple(k for k in F_KINDS if k != "values"),
                grads=("input", "target"))


def _log_softmax_ref(x):
    """(x - m) - log(sum(exp(x - m))) kept apart as the kernel does (x - logsumexp loses log 2
    next to 3e38), and x - m for rows whose max is not finite: a +inf row gives -inf for its
    finite entries and NaN for the +inf one (R gives all NaN)."""
    m = x.max(axis=-1, keepdims=True)
    fin = np.isfinite(m)
    ms = np.where(fin, m, 0.0)
    with np.errstate(all="ignore"):
        ls = (x - ms) - np.log(np.exp(x - ms).sum(-1, keepdims=True))
        return np.where(fin, ls, x - m)


def _softmax_ref(x):
    """exp(log_softmax) (R overflows for two entries at float max, also in a row that holds a
    -inf beside them); R for rows whose max is not finite (+inf, NaN, all -inf)."""
    y = np.exp(_log_softmax_ref(x))
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x.max(axis=-1)) if x.shape[-1] else np.zeros(x.shape[:-1], bool)
    if bad.any():
        y[bad] = R.softmax_forward(x[bad])
    return y


def _gelu_fwd_accurate(x, approximate):
    """R.gelu_forward, but the tanh form as x * sigmoid(2u): 0.5 x (1 + tanh u) cancels where
    tanh u ~ -1 and loses the digits the kernel keeps."""
    if approximate != "tanh":
        return R.gelu_forward(x, approximate=approximate)
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    return x / (1.0 + np.exp(-2.0 * u))


def _gelu_bwd_accurate(w, x, y, approximate):
    if approximate != "tanh":
        return R.gelu_backward(w, x, approximate=approximate)
    k = math.sqrt(2 / math.pi)
    u = k * (x + 0.044715 * x**3)
    e = np.exp(-2.0 * u)
    s = 1.0 / (1.0 + e)                                    # sigmoid(2u)
    # s (1 - s) = e / (1 + e)^2 without cancellation, and without squaring a huge e (u < -177
    # overflows (1 + e)^2 to inf, which lost the x term, by far the larger one there)
    sp = np.where(e > 1.0, s / (1.0 + 1.0 / e), e * s * s)
    return w * np.where(sp == 0, s, s + 2.0 * x * sp * k * (1.0 + 3 * 0.044715 * x * x))  # x = +-inf: s


FUNCTIONAL_SPECS: list[Spec] = [
    _f_elementwise("relu", lambda x: R.relu_forward(x), lambda w, x, y: R.relu_backward(w, x)),
    # backward from the saved output: 1 - y loses digits where y ~ 1 in float32 (by design), so
    # |x| stays moderate here; tests/test_numerics.py covers the extremes
    _f_elementwise("sigmoid", lambda x: R.sigmoid_forward(x), lambda w, x, y: w * y * (1 - y), scales=(0.5,)),
    _f_elementwise("tanh", np.tanh, lambda w, x, y: w * (1 - y * y), scales=(0.5,)),
    _f_elementwise("gelu", _gelu_fwd_accurate, _gelu_bwd_accurate,
                   scales=(1.0, 4.0), extra=lambda draw: {"approximate": draw(st().sampled_from(["none", "tanh"]))},
                   scalars={"approximate": ["erf", "", "TANH"]}),
    _f_rows("softmax", _softmax_ref, R.softmax_backward),
    _f_rows("log_softmax", _log_softmax_ref, R.log_softmax_backward),
    _f_linear(),
    _f_layer_norm(),
    _f_mse_loss(),
    _f_cross_entropy(),
]


SPECS: list[Spec] = [
    _matmul(),
    _matmul_bf16(),
    _linear_forward(),
    _gemv(),
    _linear_backward(),
    _unary("relu_forward"),
    _unary_bwd("relu_backward"),
    _gelu("gelu_forward"),
    _gelu("gelu_backward"),
    _gelu("gelu_forward_with_grad"),
    _gelu_backward_from_grad(),
    _unary("sigmoid_forward", scale_choices=(1.0, 30.0)),
    _from_output("sigmoid_backward", R.__dict__.get("sigmoid_forward", np.tanh)),
    _unary("tanh_forward", scale_choices=(1.0, 30.0)),
    _from_output("tanh_backward", np.tanh),
    _layernorm_forward(),
    _layernorm_backward(),
    _rows_fwd("softmax_forward"),
    _from_output("softmax_backward", lambda x: R.softmax_forward(x) if x.size else x),
    _rows_fwd("log_softmax_forward"),
    _from_output("log_softmax_backward", lambda x: R.log_softmax_forward(x) if x.size else x),
    _xent("cross_entropy_forward"),
    _xent("cross_entropy_backward"),
    _mse("mse_forward"),
    _sum_squares(),
    _mse("mse_backward"),
    _embedding_forward(),
    _embedding_backward(),
    _attention("attention_forward"),
    _attention("attention_backward"),
    _attention_qkv("attention_qkv_forward"),
    _attention_qkv("attention_qkv_backward"),
    _sgd(),
    _adam("adam_step"),
    _adam("adamw_step"),
] + FUNCTIONAL_SPECS


def spec_names():
    return [s.name for s in SPECS]


def active_specs():
    return [s for s in SPECS if s.fn() is not None]


# ----- perturbations -----------------------------------------------------------------------

BAD_FLOAT_DTYPES = [np.float16, np.int32, np.int64, np.bool_, np.uint8, np.complex64, ">f4", ">f8",
                    np.longdouble, "swap"]
BAD_INDEX_DTYPES = [np.float32, np.float64, np.int16, np.uint32, np.uint64, np.bool_, ">i4", ">i8"]


def _arrays(kw):
    return [k for k, v in kw.items() if isinstance(v, np.ndarray)]


def _strided_copy(a, rng, axis):
    """Same values as a, laid out with a gap along axis (not C-contiguous if that axis has > 1)."""
    shape = list(a.shape)
    shape[axis] *= 2
    big = np.zeros(shape, dtype=a.dtype)
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(None, None, 2)
    big[tuple(idx)] = a
    return big[tuple(idx)]


def perturb(draw, spec, kw, dtype):
    """Apply at most one perturbation; returns (kind, detail, expectation) where expectation is
    'ok' (must succeed), 'error' (must raise) or 'either'."""
    s = st()
    kind = draw(s.sampled_from(list(spec.kinds) if spec.kinds else PERTURBATIONS))
    arrays = _arrays(kw)
    floats = [k for k in arrays if k not in spec.ids]
    rng = draw_rng(draw)
    # only float arrays take special values (gemv's bf16 weights are uint16 bit patterns: finfo refuses them)
    vargs = [k for k in floats if (spec.value_args is None or k in spec.value_args) and kw[k].dtype.kind == "f"]
    if kind == "values" and vargs:
        k = draw(s.sampled_from(vargs))
        a = kw[k]
        if a.size:
            finfo = np.finfo(a.dtype)
            specials = [np.nan, np.nan, np.inf, -np.inf, -0.0, 1e4, -1e4]
            if spec.tiny:
                specials += [finfo.tiny / 4, finfo.smallest_normal]
            if spec.huge:
                specials += [finfo.max, -finfo.max, float(finfo.max) ** 0.5 * 2]
            n = draw(s.integers(1, max(1, min(a.size, 8))))
            flat = a.reshape(-1)
            for _ in range(n):
                flat[draw(s.integers(0, a.size - 1))] = draw(s.sampled_from(specials))
            return kind, k, "ok"
        return "none", "", "ok"
    if kind == "dtype" and arrays:
        k = draw(s.sampled_from(arrays))
        choices = BAD_INDEX_DTYPES if k in spec.ids else BAD_FLOAT_DTYPES
        to = draw(s.sampled_from(choices))
        if isinstance(to, str) and to == "swap":
            to = np.float64 if kw[k].dtype == np.float32 else np.float32
        with np.errstate(all="ignore"):
            kw[k] = kw[k].astype(to)
        return kind, f"{k}->{np.dtype(to).str}", "either"
    if kind == "noncontig" and arrays:
        k = draw(s.sampled_from(arrays))
        a = kw[k]
        if a.ndim == 0:
            return "none", "", "ok"
        kw[k] = _strided_copy(a, rng, draw(s.integers(0, a.ndim - 1)))
        return kind, k, "either"
    if kind == "negstride" and arrays:
        k = draw(s.sampled_from(arrays))
        a = kw[k]
        if a.ndim == 0:
            return "none", "", "ok"
        ax = draw(s.integers(0, a.ndim - 1))
        kw[k] = np.flip(a, axis=ax)
        return kind, f"{k} axis {ax}", "either"
    if kind == "readonly" and arrays:
        k = draw(s.sampled_from(arrays))
        kw[k].setflags(write=False)
        return kind, k, ("error" if k in spec.inout and kw[k].size else "ok" if k not in spec.inout else "either")
    if kind == "alias" and len(arrays) >= 2:
        a, b = draw(s.permutations(arrays))[:2]
        if kw[a].shape == kw[b].shape and kw[a].dtype == kw[b].dtype:
            kw[b] = kw[a]
            involves_out = a in spec.inout or b in spec.inout
            return kind, f"{b} is {a}", ("error" if involves_out and kw[a].size else "either")
        return "none", "", "ok"
    if kind == "shape" and arrays:
        k = draw(s.sampled_from(arrays))
        a = kw[k]
        how = draw(s.sampled_from(["lead1", "drop", "grow"]))
        if how == "lead1":
            kw[k] = a.reshape((1,) + a.shape)
        elif how == "drop" and a.ndim:
            kw[k] = a.reshape(a.shape[:-2] + (a.shape[-2] * a.shape[-1],)) if a.ndim >= 2 else a.reshape(()) if a.size == 1 else a[:0]
        else:
            shape = a.shape[:-1] + ((a.shape[-1] if a.ndim else 0) + 1,)
            kw[k] = (np.zeros(shape, a.dtype) if a.dtype.kind in "iu" else randn(rng, shape, a.dtype))
        return kind, f"{k} {how} -> {kw[k].shape}", "either"
    if kind == "ids" and spec.ids:
        k = draw(s.sampled_from(sorted(spec.ids)))
        a = kw[k]
        lo, hi, extra = spec.ids[k](kw)
        if a.size == 0:
            return "none", "", "ok"
        info = np.iinfo(a.dtype)
        bad = [b for b in (lo - 1, lo - 2, hi, hi + 1000, info.min, info.max, -100) if b not in extra]
        bad = draw(s.sampled_from(bad))
        a.reshape(-1)[draw(s.integers(0, a.size - 1))] = bad
        return kind, f"{k}={bad}", "error"
    if kind == "nonarray" and arrays:
        k = draw(s.sampled_from(arrays))
        how = draw(s.sampled_from(["list", "none", "scalar", "str"]))
        kw[k] = {"list": kw[k].tolist(), "none": None, "scalar": 1.5, "str": "x"}[how]
        return kind, f"{k} as {how}", "either"
    if kind == "zerod" and arrays:
        k = draw(s.sampled_from(arrays))
        kw[k] = np.asarray(kw[k].reshape(-1)[:1].sum() if kw[k].size else 0, dtype=kw[k].dtype)
        return kind, k, "either"
    if kind == "scalar" and spec.scalars:
        k = draw(s.sampled_from(sorted(spec.scalars)))
        kw[k] = draw(s.sampled_from(spec.scalars[k]))
        return kind, f"{k}={kw[k]!r}", "either"
    if kind == "byteorder" and arrays:
        k = draw(s.sampled_from(arrays))
        kw[k] = kw[k].astype(kw[k].dtype.newbyteorder())  # same values, non-native byte order
        return kind, k, "either"
    if kind == "unaligned" and floats:
        k = draw(s.sampled_from(floats))
        a = kw[k]
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = buf[1:].view(a.dtype).reshape(a.shape)
        u[...] = a
        kw[k] = u
        return kind, k, "either"
    return "none", "", "ok"


# ----- checking one case -------------------------------------------------------------------

class FuzzFailure(AssertionError):
    pass


def describe(v):
    if isinstance(v, np.ndarray):
        return (f"ndarray(shape={v.shape}, dtype={v.dtype.str}, strides={v.strides}, "
                f"c_contig={v.flags.c_contiguous}, writeable={v.flags.writeable}, aligned={v.flags.aligned})")
    if isinstance(v, list):
        return f"list(len={len(v)})"
    return repr(v)


def describe_case(spec, kw, pert, isa, threads):
    args = ", ".join(f"{k}={describe(v)}" for k, v in kw.items())
    return f"{spec.name}({args}) perturbation={pert[0]}:{pert[1]} isa={isa} threads={threads}"


def _to64(v):
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "fc":
            with np.errstate(all="ignore"):
                return np.array(v, dtype=np.float64 if v.dtype.kind == "f" else np.complex128)
        return np.array(v)
    return v


def _snapshot(kw):
    return {k: np.array(v, copy=True) for k, v in kw.items() if isinstance(v, np.ndarray)}


def _same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _close(got, exp, dtype, tol, what, case, extra_scale=0.0, inf_may_be_nan=False):
    got = np.asarray(got)
    if got.dtype != np.dtype(dtype):
        raise FuzzFailure(f"{what}: result dtype {got.dtype}, expected {np.dtype(dtype)}\n  case: {case}")
    exp = np.asarray(exp)
    if got.shape != exp.shape:
        raise FuzzFailure(f"{what}: result shape {got.shape}, expected {exp.shape}\n  case: {case}")
    with np.errstate(all="ignore"):
        e = exp.astype(dtype).astype(np.float64)
        g = got.astype(np.float64)
        fin = np.isfinite(e)
        if not math.isfinite(extra_scale):
            raise FuzzFailure(f"{what}: the spec's atol_scale is {extra_scale}: a tolerance that "
                              f"accepts any finite result (use finite magnitudes)\n  case: {case}")
        scale = max(float(np.max(np.abs(e[fin]))) if fin.any() else 0.0, extra_scale)
        floor = float(np.finfo(dtype).tiny)
        if inf_may_be_nan:
            # with Inf among the inputs, 0 * Inf depends on whether a tiny factor underflowed
            # (float32 p = 0 where float64 has 1e-50): an expected +-Inf may come out NaN
            e = np.where(np.isinf(e) & np.isnan(g), np.nan, e)
    try:
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol * scale + floor, equal_nan=True)
    except AssertionError as err:
        raise FuzzFailure(f"{what}: mismatch with the reference\n  case: {case}\n{err}") from None


def run_case(spec, kw, pert, isa, threads):
    """Call the kernel and check the outcome; raises FuzzFailure with the case on a violation."""
    from fusegrad import _C
    import fusegrad
    fn = spec.fn()
    case = describe_case(spec, kw, pert, isa, threads)
    kind, _detail, expect = pert
    made = kw.pop("__expect__", None)
    if made is not None and expect == "ok":
        expect = made
    case = describe_case(spec, kw, pert, isa, threads)
    before = _snapshot(kw)
    dtype_like = kw.get(spec.returns_like) if spec.returns_like else kw.get(spec.inout[0]) if spec.inout else None
    _C.set_isa(isa)
    fusegrad.set_num_threads(threads)
    log_case(case)
    try:
        with np.errstate(all="ignore"):
            out = fn(**kw)
    except (TypeError, ValueError) as e:
        msg = str(e)
        if not any(n in msg for n in (spec.errname or (spec.name,))):
            raise FuzzFailure(f"{type(e).__name__} does not name {spec.name}: {msg!r}\n  case: {case}") from None
        if expect == "ok":
            raise FuzzFailure(f"valid call raised {type(e).__name__}: {msg}\n  case: {case}") from None
        after = _snapshot(kw)
        for k in before:
            if not _same(before[k], after[k]):
                raise FuzzFailure(f"{k} was modified by a call that raised {msg!r}\n  case: {case}")
        return "error"
    except Exception as e:  # noqa: BLE001 - any other exception type is a failure
        raise FuzzFailure(f"raised {type(e).__name__} (expected a result or TypeError/ValueError): {e}\n  case: {case}") from None
    if expect == "error":
        raise FuzzFailure(f"call succeeded but must raise ({kind})\n  case: {case}")
    # the reference, on float64 copies of what the kernel saw
    ref_kw = {k: _to64(v) for k, v in before.items()}
    ref_kw.update({k: v for k, v in kw.items() if not isinstance(v, np.ndarray)})
    if any(isinstance(v, list) for v in kw.values()):
        ref_kw.update({k: np.asarray(v, dtype=np.float64) for k, v in kw.items() if isinstance(v, list)})
    try:
        with np.errstate(all="ignore"):
            exp = spec.ref(**ref_kw)
    except Exception as e:  # noqa: BLE001
        raise FuzzFailure(f"kernel accepted arguments the reference rejects ({type(e).__name__}: {e})\n  case: {case}") from None
    dtype = None
    if isinstance(dtype_like, np.ndarray):
        dtype = dtype_like.dtype
    rtol = spec.tol[0] if dtype is not None and dtype == np.float32 else spec.tol[1]
    if dtype is not None and dtype.kind == "f" and dtype.itemsize < 4:
        rtol = 1e-2
    extra = 0.0
    if spec.atol_scale is not None:
        with np.errstate(all="ignore"):
            takes_dtype = "dtype" in inspect.signature(spec.atol_scale).parameters
            extra = spec.atol_scale(ref_kw, dtype=dtype) if takes_dtype else spec.atol_scale(ref_kw)
    if exp is not None or out is not None:
        outs = out if isinstance(out, tuple) else (out,)
        exps = exp if isinstance(exp, tuple) else (exp,)
        if len(outs) != len(exps):
            raise FuzzFailure(f"returned {len(outs)} results, reference {len(exps)}\n  case: {case}")
        for i, (o, e) in enumerate(zip(outs, exps)):
            if spec.grads and i >= 1 and o is None and not (
                    isinstance(kw.get(spec.grads[i - 1]), np.ndarray) and kw[spec.grads[i - 1]].dtype.kind == "f"):
                continue  # an integer argument gets no gradient
            if e is None or o is None:
                if o is not e:
                    raise FuzzFailure(f"result {i}: got {describe(o)}, expected {describe(e)}\n  case: {case}")
                continue
            rdt = dtype
            if spec.grads and i >= 1 and isinstance(kw.get(spec.grads[i - 1]), np.ndarray):
                rdt = kw[spec.grads[i - 1]].dtype        # d/d arg has that arg's dtype
                rtol = spec.tol[0] if np.float32 in (rdt, dtype) else spec.tol[1]
            _close(o, e, rdt if rdt is not None else np.asarray(o).dtype, rtol, f"result {i}", case,
                   extra, inf_may_be_nan=kind == "values")
    for k in spec.inout:
        if isinstance(kw.get(k), np.ndarray):
            _close(kw[k], ref_kw[k], kw[k].dtype, rtol, f"in-place {k}", case)
    for k in before:
        if k in spec.inout:
            continue
        if isinstance(kw[k], np.ndarray) and not any(kw[k] is kw[j] for j in spec.inout if j in kw) \
                and not _same(before[k], kw[k]):
            raise FuzzFailure(f"input {k} was modified\n  case: {case}")
    return "ok"


# ----- the runner (child process) ----------------------------------------------------------

_CASE_LOG = None


def log_case(text):
    if _CASE_LOG is not None:
        _CASE_LOG.seek(0)
        _CASE_LOG.truncate()
        _CASE_LOG.write(text + "\n")
        _CASE_LOG.flush()


def fuzz_op(spec, examples, seed=None):
    """Run hypothesis on one spec; returns {'status', 'examples', 'outcomes', 'error'}."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from fusegrad import _C
    isas = list(_C.isas_supported())
    counts = {"ok": 0, "error": 0}
    s = st()

    @settings(max_examples=examples, derandomize=seed is None, database=None, deadline=None,
              report_multiple_bugs=False,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(s.data())
    def prop(data):
        dtype = data.draw(s.sampled_from(spec.dtypes), label="dtype")
        kw = spec.make(data.draw, dtype)
        pert = perturb(data.draw, spec, kw, dtype)
        isa = data.draw(s.sampled_from(isas), label="isa")
        threads = data.draw(s.sampled_from([1, 2]), label="threads")
        counts[run_case(spec, kw, pert, isa, threads)] += 1

    if seed is not None:
        prop = hseed(seed)(prop)
    old_isa, old_threads = _C.get_isa(), _C.get_num_threads()
    try:
        prop()
        return {"status": "ok", "outcomes": counts}
    except Exception as e:  # noqa: BLE001
        import traceback
        text = "".join(traceback.format_exception_only(type(e), e))
        notes = getattr(e, "__notes__", [])
        return {"status": "fail", "outcomes": counts, "error": text + "\n".join(notes)}
    finally:
        _C.set_isa(old_isa)
        _C.set_num_threads(old_threads)


def main(argv=None):
    global _CASE_LOG
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ops", nargs="*", help="op names (default: every spec present in fusegrad.ops)")
    p.add_argument("--examples", type=int, default=int(os.environ.get("FUSEGRAD_FUZZ_EXAMPLES", "60")))
    p.add_argument("--seed", type=int, default=None, help="random seed (default: derandomized, fixed)")
    p.add_argument("--report", help="JSON file to write results to (updated after each op)")
    p.add_argument("--case-log", help="file holding the case being run (read after a crash)")
    a = p.parse_args(argv)
    import faulthandler
    faulthandler.enable()
    if a.case_log:
        _CASE_LOG = open(a.case_log, "w")
    specs = [s for s in active_specs() if not a.ops or s.name in a.ops]
    results = {}
    for spec in specs:
        if a.case_log:
            log_case(f"{spec.name}: (setting up)")
        t0 = time.perf_counter()
        results[spec.name] = fuzz_op(spec, a.examples, a.seed)
        results[spec.name]["seconds"] = round(time.perf_counter() - t0, 2)
        if a.report:
            with open(a.report + ".tmp", "w") as f:
                json.dump(results, f)
            os.replace(a.report + ".tmp", a.report)
        r = results[spec.name]
        print(f"{spec.name}: {r['status']} {r['outcomes']} {r['seconds']}s", flush=True)
        if r["status"] != "ok":
            print(r["error"], flush=True)
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
