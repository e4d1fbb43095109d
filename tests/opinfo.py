"""The OpInfo table: every public differentiable function of fusegrad, with sample inputs that
cover its keyword arguments at non-default values, and the PyTorch function it must match.

tests/test_opinfo.py runs each sample forward and backward against PyTorch (float64 tight,
float32 at the dtype's tolerance) on every ISA path, and fails when a public function, ``nn``
module or Tensor method has no entry here. The model is PyTorch's OpInfo database
(``torch/testing/_internal/common_methods_invocations.py``): one entry per op, a sample
generator per entry, one generic test.

Adding an entry: ``Op(name, op, ref, samples)``.

* ``name`` is how the completeness test finds it: ``F.<name>`` (``fusegrad.nn.functional``),
  ``nn.<Class>``, ``Tensor.<method>`` (operators by their dunder, ``Tensor.__add__``) or
  ``fg.<name>`` (``fusegrad.<name>``).
* ``op(*args, **kwargs)`` calls fusegrad, ``ref(*args, **kwargs)`` the same thing in PyTorch
  (``SAME``: the same lambda works on torch tensors). For ``nn`` modules, ``op(**ctor)`` and
  ``ref(**ctor)`` build the two modules; the runner gives fusegrad's random parameters, copies
  them into torch's by name, and checks every parameter's gradient.
* ``samples(rng, dtype)`` returns a list of ``S(*args, **kwargs)``: float arrays become inputs
  that require grad, integer and bool arrays plain tensors, ``Const(float array)`` a float tensor
  without grad (class weights, which torch does not differentiate; in ``nn`` constructors too),
  everything else is passed as is.
  ``S(..., fd=True)`` checks against finite differences of fusegrad in float64 (and float32
  against float64) where PyTorch has no equal; ``S(..., ref=f)`` overrides the entry's ref;
  ``S(..., grad=False)`` compares values and dtypes only (integer, bool and creation results).

Public API without a gradient to check (grad modes, random state, file I/O, metadata) is listed in
``NON_DIFFERENTIABLE`` with its reason and the check in tests/test_opinfo.py that compares its
behaviour with torch's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import torch

import fusegrad as fg
import fusegrad.nn.functional as F

TF = torch.nn.functional
SAME = "same"  # ref: the op's lambda also works on torch tensors


@dataclasses.dataclass
class S:
    """One sample: positional args, keyword args, and how to check it."""
    args: tuple
    kwargs: dict
    desc: str = ""
    fd: bool = False                 # finite differences instead of torch
    ref: Callable | None = None      # overrides Op.ref for this sample
    grad: bool = True                # run backward (False for results without a gradient)

    def __init__(self, *args, desc="", fd=False, ref=None, grad=True, **kwargs):
        self.args, self.kwargs, self.desc, self.fd, self.ref, self.grad = args, kwargs, desc, fd, ref, grad

    def __repr__(self):
        def d(a):
            if isinstance(a, np.ndarray):
                nc = "" if a.flags.c_contiguous else " noncontig"
                return f"{a.dtype}{list(a.shape)}{nc}"
            return repr(a) if not callable(a) else getattr(a, "__name__", "fn")
        parts = [d(a) for a in self.args] + [f"{k}={d(v)}" for k, v in self.kwargs.items()]
        return f"({', '.join(parts)}){' ' + self.desc if self.desc else ''}"


@dataclasses.dataclass
class Op:
    name: str
    op: Callable
    ref: Any                         # torch callable, SAME, or None (finite differences only)
    samples: Callable                # (rng, dtype) -> list[S]
    module: bool = False             # op/ref build nn modules from the sample's kwargs
    tol: dict = dataclasses.field(default_factory=dict)  # per-dtype rtol overrides, each with its reason


# ----- sample helpers ----------------------------------------------------------------------

def noncontig(a):
    """The same values in a view whose last axis has stride 2 (not C-contiguous)."""
    a = np.asarray(a)
    if a.ndim == 0 or a.size == 0:
        return a
    b = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    b[..., ::2] = a
    return b[..., ::2]


class Const:
    """A float array passed as a tensor that does not require grad."""
    def __init__(self, a):
        self.a = a

    def fg(self):
        return fg.tensor(self.a)

    def torch(self, dtype):
        return torch.tensor(self.a, dtype=dtype)

    def __repr__(self):
        return f"Const({self.a.dtype}{list(self.a.shape)})"


def _mk(rng, dtype):
    def r(*shape, lo=None, hi=None):  # an ndarray also for shape () (astype of a 0-d draw gives a scalar)
        if lo is not None:
            return np.asarray(rng.uniform(lo, hi, size=shape), dtype=dtype)
        return np.asarray(rng.standard_normal(shape), dtype=dtype)
    return r


def _unary(fn_name=None, pos=False, extra=None):
    """Samples for elementwise x -> y: shapes with 0-size, size 1, 0-d, 3-D, non-contiguous."""
    def samples(rng, dtype):
        lo, hi = (0.5, 3.0) if pos else (None, None)
        r = _mk(rng, dtype)
        out = [S(r(3, 5, lo=lo, hi=hi)), S(r(2, 3, 4, lo=lo, hi=hi)), S(r(lo=lo, hi=hi), desc="0-d"),
               S(r(1, lo=lo, hi=hi)), S(r(0, 4, lo=lo, hi=hi)), S(noncontig(r(4, 33, lo=lo, hi=hi)))]
        if not pos:
            out += [S(r(70) * 6, desc="wide range"), S(r(40) * 40, desc="saturating (|x| up to ~100)")]
        for kw in (extra or []):
            out += [S(r(3, 17) * 3, **kw), S(noncontig(r(2, 9) * 3), **kw)]
        return out
    return samples


def _binary(rng, dtype, pos_b=False):
    r = _mk(rng, dtype)
    b = (lambda *s: r(*s, lo=0.5, hi=2.0)) if pos_b else r
    return [S(r(3, 4), b(3, 4)), S(r(3, 4), b(4), desc="broadcast b"), S(r(4), b(2, 3, 4), desc="broadcast a"),
            S(r(2, 1, 3), b(4, 1), desc="broadcast both"), S(r(0, 3), b(3), desc="0-size"),
            S(r(1), b(1)), S(r(), b(2, 2), desc="0-d a"), S(noncontig(r(3, 5)), noncontig(b(3, 5))),
            S(r(3, 4), 2.5 if not pos_b else 1.75, desc="python scalar b")]


def _rows(rng, dtype):
    """Samples for softmax-like ops over dim (default last, and others)."""
    r = _mk(rng, dtype)
    return [S(r(3, 7)), S(r(2, 3, 5), dim=1), S(r(4, 3), dim=0), S(r(2, 3, 4), dim=-3),
            S(noncontig(r(3, 9)), dim=-1), S(r(1, 1)), S(r(0, 5)), S(r(6) * 30, desc="large logits"),
            S(r(5, 33), dim=1)]


def _reduce(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 4)), S(r(3, 4), dim=1), S(r(3, 4), dim=0, keepdim=True), S(r(2, 3, 4), dim=(0, 2)),
            S(r(2, 3, 4), dim=-1, keepdim=True), S(noncontig(r(3, 6)), dim=1), S(r(5)), S(r(), desc="0-d"),
            S(r(1, 1), dim=0), S(r(0, 3), dim=1, desc="0-size")]


# ----- torch equivalents that differ in spelling ---------------------------------------------

def _t_sdpa(q, k, v, is_causal=False, scale=None):
    """PyTorch's SDPA with fusegrad's conventions: GQA by repeating key/value heads, and a causal
    mask aligned bottom-right when T != S (torch aligns it top-left)."""
    T, S_ = q.shape[-2], k.shape[-2]
    mask = None
    if is_causal:
        mask = torch.ones(T, S_, dtype=torch.bool).tril(diagonal=S_ - T)
    return TF.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                           enable_gqa=q.shape[1] != k.shape[1])


def _t_max(x, dim=None, keepdim=False):
    if dim is None:
        return x.amax()
    return x.amax(dim=dim, keepdim=keepdim) if isinstance(dim, tuple) else x.max(dim=dim, keepdim=keepdim).values


def _t_mse(a, b, reduction="mean"):
    return TF.mse_loss(a, b, reduction=reduction)


# ----- samples of functions with structured arguments ------------------------------------------

def _linear(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(4, 5), r(3, 5), r(3)), S(r(4, 5), r(3, 5), desc="bias=None"), S(r(2, 3, 5), r(7, 5), r(7)),
            S(r(5), r(3, 5), r(3), desc="1-D input"), S(r(0, 5), r(3, 5), r(3), desc="0 rows"),
            S(r(4, 0), r(3, 0), r(3), desc="0 features"), S(r(1, 1), r(1, 1), r(1)),
            S(noncontig(r(6, 17)), noncontig(r(9, 17)), r(9)), S(r(33, 19), r(17, 19), r(17))]


def _layer_norm(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(4, 6), 6, r(6), r(6)), S(r(4, 6), (6,), desc="weight=bias=None"),
            S(r(2, 3, 5), [5], r(5), None, desc="bias=None"), S(r(3, 5), 5, None, r(5), desc="weight=None"),
            S(r(3, 8), 8, r(8), r(8), eps=1e-2), S(r(2, 1), 1, r(1), r(1), desc="C=1"),
            S(noncontig(r(3, 33)), 33, r(33), r(33)), S(r(0, 4), 4, r(4), r(4), desc="0 rows"),
            S(r(5, 7) * 100 + 50, 7, r(7), r(7), eps=0.0, desc="offset rows, eps=0")]


def _embedding(rng, dtype):
    r = _mk(rng, dtype)
    return [S(np.array([[0, 2, 2], [4, 1, 0]]), r(5, 3), desc="repeated ids"), S(np.array([3]), r(4, 7)),
            S(np.array(2), r(3, 4), desc="0-d ids"), S(np.zeros((0, 2), np.int64), r(3, 4), desc="0 ids"),
            S(np.array([1, 1, 1], np.int32), r(2, 33), desc="int32 ids"), S(np.array([0, 1]), noncontig(r(2, 5)))]


def _xent(rng, dtype):
    r = _mk(rng, dtype)
    t = np.array([0, 2, 1, 2, 4, 3])
    return [S(r(6, 5), t), S(r(6, 5), t, ignore_index=2), S(r(6, 5), np.array([0, -1, 1, 2, -1, 3]), ignore_index=-1),
            S(r(6, 5), t, reduction="sum"), S(r(6, 5), np.array([0, -100, 1, 2, 4, -100]), reduction="none"),
            S(r(6, 5), t, ignore_index=1, reduction="sum"), S(r(6, 5), t, ignore_index=4, reduction="none"),
            S(r(1, 1), np.array([0]), desc="N=C=1"), S(r(3, 33) * 10, np.array([32, 0, 7]), desc="large logits"),
            S(noncontig(r(4, 9)), np.array([8, 0, 3, 3])),
            S(r(4, 3), np.array([1, 0, 2, 1], np.int32), ref=lambda x, t, **kw: TF.cross_entropy(x, t.long(), **kw),
              desc="int32 targets (torch takes int64 only)"),
            S(r(0, 4), np.zeros(0, np.int64), reduction="sum", desc="0 rows"),
            S(r(3, 4), np.array([1, 1, 1]), ignore_index=1, reduction="sum", desc="every row ignored"),
            S(r(3, 4), np.array([1, 1, 1]), ignore_index=1, desc="every row ignored, mean: nan")] + _xent_more(rng, dtype)


def _xent_more(rng, dtype):
    """cross_entropy's other layouts and arguments: (N, C, d1, d2) and (C,) inputs, class
    weights, label smoothing, ignore_index with each reduction, class-probability targets."""
    r = _mk(rng, dtype)
    t4 = rng.integers(0, 4, (2, 3, 5))
    t4i = t4.copy()
    t4i[0, 1, :3] = 1                       # rows of the ignored class
    w = Const(r(4, lo=0.3, hi=2.0))
    w5 = Const(r(5, lo=0.3, hi=2.0))
    t6 = np.array([0, 2, 1, 2, 4, 3])
    probs = lambda *s: np.asarray(np.moveaxis(rng.dirichlet(np.ones(s[1]), size=s[:1] + s[2:]), -1, 1),  # noqa: E731
                                  dtype=dtype)  # class probabilities along axis 1
    return [S(r(2, 4, 3, 5), t4, desc="(N, C, d1, d2)"), S(r(2, 4, 3, 5), t4i, ignore_index=1, reduction="none"),
            S(r(2, 4, 3, 5), t4i, ignore_index=1, reduction="sum"), S(r(2, 4, 3, 5), t4i, ignore_index=1),
            S(r(3, 4, 7), rng.integers(0, 4, (3, 7)), reduction="none", desc="(N, C, d1)"),
            S(np.swapaxes(r(2, 5, 4), 1, 2), rng.integers(0, 4, (2, 5)), desc="(N, C, d1) non-contiguous"),
            S(r(5), np.array(3), desc="(C,) input, 0-d target"), S(r(5), np.array(2), reduction="none"),
            S(r(6, 5), t6, weight=w5), S(r(6, 5), t6, weight=w5, reduction="sum"),
            S(r(6, 5), t6, weight=w5, reduction="none"), S(r(6, 5), t6, weight=w5, ignore_index=2),
            S(r(2, 4, 3, 5), t4i, weight=w, ignore_index=1, desc="(N, C, d1, d2), weights, ignore_index"),
            S(r(6, 5), t6, label_smoothing=0.1), S(r(6, 5), t6, label_smoothing=0.25, reduction="sum"),
            S(r(6, 5), t6, label_smoothing=0.1, reduction="none", ignore_index=4),
            S(r(6, 5), t6, label_smoothing=0.2, weight=w5), S(r(6, 5), t6, label_smoothing=0.2, weight=w5, ignore_index=0),
            S(r(2, 4, 3, 5), t4i, label_smoothing=0.3, weight=w, ignore_index=1, reduction="none"),
            S(r(6, 5), t6, label_smoothing=1.0, desc="label_smoothing=1"),
            S(r(6, 5), probs(6, 5), desc="class probabilities"), S(r(6, 5), probs(6, 5), reduction="sum"),
            S(r(6, 5), probs(6, 5), reduction="none"), S(r(6, 5), probs(6, 5), weight=w5),
            S(r(6, 5), probs(6, 5), label_smoothing=0.15), S(r(6, 5), probs(6, 5), weight=w5, label_smoothing=0.15),
            S(r(2, 4, 3, 5), probs(2, 4, 3, 5), desc="(N, C, d1, d2) probabilities"),
            S(r(2, 4, 3, 5), probs(2, 4, 3, 5), weight=w, reduction="none"),
            S(r(5), probs(1, 5)[0], desc="(C,) probabilities")]


def _mse(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 4), r(3, 4)), S(r(3, 4), r(3, 4), reduction="sum"), S(r(2, 3, 4), r(2, 3, 4), reduction="none"),
            S(r(1), r(1)), S(r(), r(), desc="0-d"), S(noncontig(r(3, 9)), r(3, 9)), S(r(257), r(257)),
            S(r(0, 3), r(0, 3), desc="0 elements: NaN"), S(r(0, 3), r(0, 3), reduction="sum")]


def _sdpa(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(2, 2, 5, 4), r(2, 2, 5, 4), r(2, 2, 5, 4)),
            S(r(1, 2, 6, 8), r(1, 2, 6, 8), r(1, 2, 6, 8), is_causal=True),
            S(r(1, 4, 3, 5), r(1, 2, 7, 5), r(1, 2, 7, 5), desc="GQA 4/2 heads, T != S"),
            S(r(2, 4, 5, 3), r(2, 1, 5, 3), r(2, 1, 5, 3), is_causal=True, desc="GQA 4/1 (MQA)"),
            S(r(1, 2, 3, 4), r(1, 2, 7, 4), r(1, 2, 7, 4), is_causal=True, desc="causal T < S: bottom-right"),
            S(r(1, 1, 4, 6), r(1, 1, 4, 6), r(1, 1, 4, 6), scale=0.3),
            S(r(1, 2, 5, 4), r(1, 2, 5, 4), r(1, 2, 5, 4), is_causal=True, scale=2.0),
            S(r(1, 1, 1, 1), r(1, 1, 1, 1), r(1, 1, 1, 1), desc="size 1"),
            S(r(1, 2, 1, 4), r(1, 2, 9, 4), r(1, 2, 9, 4), is_causal=True, desc="one query (decode)"),
            S(np.swapaxes(r(2, 5, 2, 4), 1, 2), np.swapaxes(r(2, 5, 2, 4), 1, 2), np.swapaxes(r(2, 5, 2, 4), 1, 2),
              desc="non-contiguous (B, T, H, D) views"),
            S(r(1, 2, 17, 33), r(1, 2, 19, 33), r(1, 2, 19, 33), desc="odd sizes")]


def _dropout(rng, dtype):
    r = _mk(rng, dtype)
    gen = lambda: np.random.default_rng(7)  # noqa: E731 - a fresh generator: the same mask each call
    return [S(r(3, 4), p=0.0), S(r(3, 4), p=0.5, training=False), S(r(3, 4), p=1.0, desc="all dropped"),
            S(r(4, 5), p=0.3, generator=_Fresh(gen), fd=True, desc="mask from a fixed generator"),
            S(noncontig(r(3, 6)), p=0.6, generator=_Fresh(gen), fd=True)]


class _Fresh:
    """A keyword value rebuilt for every call (a generator must restart to repeat its mask)."""
    def __init__(self, make):
        self.make = make

    def __repr__(self):
        return "<fresh>"


def _clamp(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(4, 5), min=-0.5), S(r(4, 5), max=0.3), S(r(4, 5), min=-0.2, max=0.4), S(r(0, 2), min=0.0),
            S(noncontig(r(3, 6)), min=-1.0, max=1.0), S(r(), min=5.0, desc="0-d, all clamped")]


def _getitem(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(4, 5), (1,)), S(r(4, 5), (slice(1, 3), slice(None, None, 2))), S(r(3, 4, 5), (Ellipsis, 2)),
            S(r(5, 3), (np.array([0, 2, 2, 4]),), desc="repeated int index"),
            S(r(4, 3), (np.array([True, False, True, True]),), desc="bool mask"),
            S(r(3, 4), (slice(None), None, 1), desc="None adds an axis"), S(r(3, 4), (-1, slice(-2, None))),
            S(r(4, 6), (np.array([[0, 1], [3, 3]]), slice(1, 4)), desc="int array + slice"),
            S(r(3, 4), (slice(2, 2),), desc="empty slice")]


def _getitem_op(x, idx):
    return x[tuple(_index(i, type(x)) for i in idx)]


def _index(i, kind):
    if isinstance(i, np.ndarray):
        return fg.tensor(i) if kind is fg.Tensor else torch.from_numpy(i)
    return i


def _split(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(5, 3), 2), S(r(3, 7), 3, dim=1), S(r(2, 6), [1, 0, 5], dim=-1, desc="sections with a 0"),
            S(r(4, 2), 4), S(noncontig(r(3, 8)), [3, 5], dim=1), S(r(2, 3, 4), 1, dim=-2)]


def _cat(rng, dtype):
    r = _mk(rng, dtype)
    return [S([r(2, 3), r(4, 3)]), S([r(2, 3), r(2, 1), r(2, 0)], dim=1, desc="a 0-size part"),
            S([r(3)], desc="one tensor"), S([noncontig(r(2, 5)), r(2, 5)], dim=-1), S([r(1, 2, 2), r(3, 2, 2)])]


def _stack(rng, dtype):
    r = _mk(rng, dtype)
    return [S([r(2, 3), r(2, 3)]), S([r(2, 3), r(2, 3), r(2, 3)], dim=2), S([r(4)], dim=-1),
            S([noncontig(r(2, 5)), r(2, 5)], dim=1), S([r(), r()], desc="0-d parts"), S([r(0, 2), r(0, 2)], dim=1)]


def _pow(rng, dtype):
    r = _mk(rng, dtype)
    pos = lambda *s: r(*s, lo=0.5, hi=2.0)  # noqa: E731
    return [S(r(3, 4), 2), S(r(3, 4), 3.0), S(pos(3, 4), 0.5), S(pos(3, 4), -1.5), S(r(3, 4), 0, desc="x ** 0"),
            S(r(3, 4), 1), S(pos(3, 4), pos(3, 4), desc="tensor exponent"), S(pos(2, 3), pos(3), desc="broadcast"),
            S(noncontig(r(2, 5)), 2), S(r(0, 3), 2)]


def _matmul(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 4), r(4, 5)), S(r(4), r(4, 5), desc="1-D @ 2-D"), S(r(3, 4), r(4), desc="2-D @ 1-D"),
            S(r(4), r(4), desc="1-D @ 1-D"), S(r(2, 3, 4), r(4, 5), desc="batched @ 2-D"),
            S(r(2, 1, 3, 4), r(5, 4, 2), desc="broadcast batch"), S(r(0, 4), r(4, 3), desc="0 rows"),
            S(r(3, 0), r(0, 2), desc="K = 0"), S(noncontig(r(5, 6)), noncontig(r(6, 7))), S(r(1, 1), r(1, 1)),
            S(r(17, 33), r(33, 19))]


def _expand(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(1, 4), 3, 4), S(r(3, 1), (3, 5), desc="tuple shape"), S(r(4), 2, 3, 4, desc="new leading dims"),
            S(r(1, 4), -1, 4), S(r(1, 1), 0, 3, desc="expand to 0"), S(r(), 2, 2, desc="0-d")]


def _reshape(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 4), 12), S(r(3, 4), -1, 2), S(r(2, 3, 4), (4, 6)), S(r(2, 3), (3, 1, 2)), S(r(), 1),
            S(r(0, 4), 2, 0, 5), S(noncontig(r(3, 4)), 4, 3)]


def _flatten(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(2, 3, 4)), S(r(2, 3, 4), start_dim=1), S(r(2, 3, 4), 0, -2), S(r(2, 3, 4, 5), start_dim=1, end_dim=2),
            S(r(), desc="0-d"), S(noncontig(r(3, 4)))]


def _permute(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(2, 3, 4), 2, 0, 1), S(r(2, 3), (1, 0)), S(r(2, 3, 4), [0, 2, 1]), S(noncontig(r(3, 4)), 1, 0),
            S(r(0, 3), 1, 0)]


def _transpose(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(2, 3), 0, 1), S(r(2, 3, 4), 0, -1), S(r(2, 3, 4), 1, 1), S(noncontig(r(3, 4)), -1, -2)]


def _T(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(2, 3)), S(r(4)), S(noncontig(r(3, 5)))]


def _unsqueeze(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(2, 3), 0), S(r(2, 3), -1), S(r(2, 3), 1), S(r(), 0, desc="0-d")]


def _squeeze(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(1, 3, 1)), S(r(1, 3, 1), 2), S(r(1, 3, 1), -3), S(r(2, 3), 0, desc="dim not 1: no-op"),
            S(r(), desc="0-d")]


def _plain(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 4)), S(r()), S(r(0, 2)), S(noncontig(r(2, 5)))]


def _max(rng, dtype):
    ties = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]], dtype=dtype)
    return _reduce(rng, dtype)[:-1] + [S(ties, desc="tied maxima share the gradient"),
                                       S(ties, dim=1, desc="ties along dim")]


def _scalar_r(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 4)), S(r(), desc="0-d"), S(r(0, 3)), S(noncontig(r(2, 5)))]


def _softmax_method(rng, dtype):
    return [s for s in _rows(rng, dtype)]


def _nll(rng, dtype):
    r = _mk(rng, dtype)
    t6 = np.array([0, 2, 1, 2, 4, 3])
    t4 = rng.integers(0, 4, (2, 3, 5))
    t4[1, 0, :2] = 3
    w5, w4 = Const(r(5, lo=0.3, hi=2.0)), Const(r(4, lo=0.3, hi=2.0))
    return [S(r(6, 5), t6), S(r(6, 5), t6, reduction="sum"), S(r(6, 5), t6, reduction="none"),
            S(r(6, 5), t6, ignore_index=2), S(r(6, 5), np.array([0, -1, 1, -1, 4, 3]), ignore_index=-1, reduction="sum"),
            S(r(6, 5), t6, weight=w5), S(r(6, 5), t6, weight=w5, ignore_index=4, reduction="none"),
            S(r(6, 5), t6, weight=w5, ignore_index=2, reduction="sum"),
            S(r(2, 4, 3, 5), t4, desc="(N, C, d1, d2)"), S(r(2, 4, 3, 5), t4, weight=w4, ignore_index=3),
            S(r(2, 4, 3, 5), t4, ignore_index=3, reduction="none"), S(r(5), np.array(1), desc="(C,), 0-d target"),
            S(noncontig(r(4, 9)), np.array([8, 0, 3, 3])), S(r(1, 1), np.array([0]), desc="N=C=1"),
            S(r(3, 4), np.array([1, 1, 1]), ignore_index=1, desc="every row ignored: nan")]


def _bce(rng, dtype):
    r = _mk(rng, dtype)
    u = lambda *s: r(*s, lo=0.0, hi=1.0)  # noqa: E731 - targets: probabilities
    big = r(3, 4) * 40
    big[0, :2] = (40.0, -40.0)
    hard = (rng.random((4, 3)) > 0.5).astype(dtype)
    return [S(r(4, 3), u(4, 3)), S(r(4, 3), hard, desc="0/1 targets"), S(r(4, 3), u(4, 3), reduction="sum"),
            S(r(2, 3, 4), u(2, 3, 4), reduction="none"), S(big, u(3, 4), desc="|x| up to 40: stable"),
            S(r(4, 3), u(4, 3), weight=Const(r(4, 3, lo=0.2, hi=2.0))),
            S(r(4, 3), u(4, 3), weight=Const(r(3, lo=0.2, hi=2.0)), reduction="sum", desc="weight broadcast"),
            S(r(4, 3), u(4, 3), pos_weight=Const(r(3, lo=0.2, hi=4.0)), desc="pos_weight per class"),
            S(r(2, 4, 3), u(2, 4, 3), pos_weight=Const(r(3, lo=0.2, hi=4.0)), weight=Const(r(4, 3, lo=0.5, hi=1.5)),
              reduction="none"),
            S(r(), u(), desc="0-d"), S(r(0, 3), u(0, 3), reduction="sum"), S(noncontig(r(3, 9)), noncontig(u(3, 9))),
            S(r(5), hard[0:1, 0].repeat(5), pos_weight=Const(r(5, lo=0.5, hi=3.0)), desc="pos_weight constant")]


def _l1(rng, dtype):
    r = _mk(rng, dtype)
    a = r(3, 4)
    b = r(3, 4)
    b[1, 1] = a[1, 1]
    return [S(r(3, 4), r(3, 4)), S(a, b, desc="a zero difference: gradient 0"), S(r(3, 4), r(3, 4), reduction="sum"),
            S(r(2, 3, 4), r(2, 3, 4), reduction="none"), S(r(), r(), desc="0-d"), S(r(1), r(1)),
            S(noncontig(r(3, 9)), r(3, 9)), S(r(257), r(257)), S(r(0, 3), r(0, 3), reduction="sum")]


def _leaky(rng, dtype):
    r = _mk(rng, dtype)
    z = r(3, 4)
    z[0, :] = 0.0
    return _unary(extra=[{"negative_slope": 0.2}, {"negative_slope": -1.5}, {"negative_slope": 0.0}])(rng, dtype) + [
        S(z, desc="x = 0: the gradient is negative_slope"), S(z, negative_slope=0.3), S(r(5) * 50, negative_slope=3.0)]


def _rms_norm(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(4, 6), 6, r(6)), S(r(4, 6), (6,), desc="weight=None"), S(r(2, 3, 4), (3, 4), r(3, 4), desc="2 dims"),
            S(r(2, 3, 4), [4], r(4), eps=1e-3), S(r(3, 5), 5, None, eps=0.5), S(r(2, 1), 1, r(1), desc="C=1"),
            S(noncontig(r(3, 33)), 33, r(33)), S(r(0, 4), 4, r(4), desc="0 rows"),
            S(r(5, 7) * 100 + 50, 7, r(7), desc="offset rows"), S(r(6), 6, r(6), desc="1-D input")]


def _t_rms_norm(x, ns, w=None, **kw):
    return TF.rms_norm(x, (ns,) if isinstance(ns, int) else tuple(ns), w, **kw)


def _var(rng, dtype):
    r = _mk(rng, dtype)
    const = np.full((2, 3), 1.5, dtype=dtype)
    return [S(r(4, 5)), S(r(4, 5), dim=1), S(r(2, 3, 4), dim=(0, 2), keepdim=True), S(r(3, 4), dim=-1, unbiased=False),
            S(r(3, 4), dim=0, unbiased=True), S(r(3, 4), dim=0, correction=0), S(r(5, 3), dim=0, correction=2),
            S(noncontig(r(3, 6)), dim=1), S(r(33)), S(r(2, 3, 4), dim=-2, keepdim=True, correction=0),
            S(const, dim=1, desc="constant rows"), S(r(2, 1), dim=1, desc="n = correction: nan", grad=False),
            S(r(), desc="0-d: nan", grad=False), S(r(3, 2), dim=1, correction=3, desc="n < correction: inf", grad=False)]


def _gather(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 4), 0, np.array([[0, 1, 2, 0], [2, 2, 1, 0]])), S(r(3, 4), 1, np.array([[0, 3], [1, 1], [2, 0]])),
            S(r(3, 4), -1, np.array([[3], [0], [2]]), desc="negative dim"),
            S(r(2, 3, 4), 1, rng.integers(0, 3, (2, 5, 4)), desc="index longer than dim"),
            S(r(3, 4), 1, np.array([[1, 1, 1]] * 3), desc="repeated: gradients add"),
            S(r(3, 4), 0, np.array([[0, 1]]), desc="index smaller in every dim"), S(r(5), 0, np.array([4, 0, 4])),
            S(r(3, 4), 0, np.zeros((0, 4), np.int64), desc="empty index"), S(noncontig(r(3, 6)), 1, np.array([[5], [0], [2]]))]


def _topk(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 6), 2), S(r(3, 6), 3, dim=0), S(r(2, 3, 5), 2, dim=-2, largest=False), S(r(4, 5), 5, desc="k = n"),
            S(r(4, 5), 0, desc="k = 0"), S(r(7), 3, sorted=True), S(noncontig(r(3, 8)), 4), S(r(1, 1), 1),
            S(r(5, 33), 7, dim=1, largest=False)]


def _t_tensor(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(2, 3)), S(r(4), desc="1-D: itself"), S(r(), desc="0-d"), S(noncontig(r(3, 5))), S(r(1, 1)), S(r(0, 3))]


def _casts(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 4) * 3, grad=False), S(noncontig(r(2, 5) * 5), grad=False), S(r(), grad=False),
            S(r(0, 2), grad=False), S(np.array([-2.5, -0.5, 0.0, 0.5, 2.5], dtype=dtype), grad=False),
            S(np.array([3, 0, -2]), grad=False, desc="int64 input"), S(np.array([True, False]), grad=False)]


def _all_any(rng, dtype):
    b = lambda *s: rng.random(s) > 0.3  # noqa: E731
    z = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 4.0]], dtype=dtype)
    return [S(b(3, 4), grad=False), S(b(3, 4), dim=1, grad=False), S(b(2, 3, 4), dim=-1, keepdim=True, grad=False),
            S(b(2, 3, 4), dim=(0, 2), grad=False), S(b(0, 3), grad=False, desc="0-size"),
            S(b(0, 3), dim=0, grad=False), S(np.array(True), grad=False, desc="0-d"),
            S(z, grad=False, desc="float input"), S(z, dim=0, grad=False), S(np.array([[2, 0], [1, 3]]), dim=1, grad=False),
            S(np.ones((2, 2), bool), grad=False), S(np.zeros((2, 2), bool), dim=1, keepdim=True, grad=False)]


def _extremum(rng, dtype):
    """maximum / minimum: ties split the gradient in half, as in torch."""
    r = _mk(rng, dtype)
    a = r(3, 4)
    b = r(3, 4)
    b[0] = a[0]
    return [S(r(3, 4), r(3, 4)), S(a, b, desc="ties in row 0"), S(r(3, 4), r(4), desc="broadcast"),
            S(r(2, 1, 3), r(4, 1)), S(r(), r(2, 2), desc="0-d"), S(r(0, 3), r(3), desc="0-size"),
            S(noncontig(r(3, 5)), noncontig(r(3, 5))), S(r(1), r(1))]


def _where(rng, dtype):
    r = _mk(rng, dtype)
    c = lambda *s: np.asarray(rng.random(s) > 0.5)  # noqa: E731
    return [S(c(3, 4), r(3, 4), r(3, 4)), S(c(3, 1), r(1, 4), r(3, 4), desc="broadcast all three"),
            S(c(3, 4), r(3, 4), 2.5, desc="python scalar other"), S(c(3, 4), -1.0, r(4), desc="python scalar input"),
            S(c(), r(2, 2), r(2, 2), desc="0-d condition"), S(c(0, 3), r(0, 3), r(3), desc="0-size"),
            S(noncontig(c(3, 6)), noncontig(r(3, 6)), r(3, 6)), S(c(2, 3), r(), r(2, 3), desc="0-d input"),
            S(c(3, 4), grad=False, desc="where(condition): indices")]


def _inplace(rng, dtype, alpha=False, pos=False):
    """In-place ops on a non-leaf (``a * 1``): the write is recorded, so gradients reach both the
    value before the write and ``other``; a self without grad joins the graph through ``other``."""
    r = _mk(rng, dtype)
    b = (lambda *s: r(*s, lo=0.5, hi=2.0)) if pos else r
    out = [S(r(3, 4), b(3, 4)), S(r(3, 4), b(4), desc="broadcast other"), S(r(3, 4), b(1, 4)),
           S(r(3, 4), 1.75, desc="python scalar"), S(r(), b(), desc="0-d"), S(r(0, 3), b(3), desc="0-size"),
           S(noncontig(r(3, 5)), noncontig(b(3, 5))), S(r(2, 3, 4), b(3, 1)),
           S(Const(r(3, 4)), b(3, 4), desc="self without grad: joins the graph"),
           S(r(3, 4), Const(b(3, 4)), desc="other without grad")]
    if alpha:
        out += [S(r(3, 4), b(3, 4), alpha=2.5), S(r(3, 4), b(4), alpha=-0.5), S(r(3, 4), 2.0, alpha=3)]
    return out


def _fill(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 4), 2.5), S(r(3, 4), r(), desc="0-d tensor value: its gradient is the sum"), S(r(0, 2), 1.0),
            S(Const(r(2, 3)), r(), desc="self without grad"), S(noncontig(r(2, 5)), -1.0), S(r(), 3.0)]


def _copy(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 4), r(3, 4)), S(r(3, 4), r(4), desc="broadcast source"), S(r(3, 4), r(1, 1)),
            S(Const(r(3, 4)), r(3, 4), desc="self without grad"), S(r(3, 4), Const(r(3, 4)), desc="constant source"),
            S(noncontig(r(2, 5)), noncontig(r(2, 5))), S(r(), r())]


def _setitem(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(4, 5), (1,), r(5)), S(r(4, 5), (slice(1, 3),), 2.0, desc="python scalar"),
            S(r(4, 5), (np.array([0, 2]),), r(2, 5), desc="int array index"),
            S(r(4, 3), (np.array([True, False, True, False]),), r(3), desc="bool mask, broadcast value"),
            S(r(3, 4), (slice(None), slice(0, 4, 2)), r(3, 1)), S(r(3, 4), (Ellipsis, -1), r()),
            S(Const(r(3, 4)), (0,), r(4), desc="self without grad: joins the graph"),
            S(r(3, 4), (1,), Const(r(4)), desc="constant value"), S(r(3, 4), (slice(2, 2),), 1.0, desc="empty slice")]


def _setitem_op(a, idx, v):
    y = a * 1.0
    y[tuple(_index(i, type(a)) for i in idx)] = v
    return y


def _arange(rng, dtype):
    return [S(7, grad=False), S(1, 9, 2, grad=False), S(0.0, 1.0, 0.1, grad=False), S(-1, 1.5, 0.25, grad=False),
            S(3, 0, -1, grad=False), S(0, 2.0000001, 0.5, grad=False), S(2, 2, grad=False, desc="empty"),
            S(5, dtype=np.float64, grad=False), S(0, 10, 3, dtype=np.int32, grad=False),
            S(0.0, 2.0, 0.5, requires_grad=True, grad=False), S(10, 0.5, -1.5, grad=False)]


def _full(rng, dtype):
    return [S((2, 3), 1.5, grad=False), S((2,), 7, grad=False, desc="int value: int64"),
            S((2,), True, grad=False, desc="bool value"), S((2, 2), 2.5, dtype=np.float64, grad=False),
            S((0, 3), 1.0, grad=False), S((), 4.0, grad=False, desc="0-d"), S([3, 1], -2, dtype=np.float32, grad=False)]


def _like(fill=False):
    def samples(rng, dtype):
        r = _mk(rng, dtype)
        v = (2.5,) if fill else ()
        return [S(r(2, 3), *v, grad=False), S(np.array([1, 2]), *v, grad=False, desc="int64 input"),
                S(r(2, 3), *v, dtype=np.int32, grad=False), S(r(0, 2), *v, grad=False), S(r(), *v, grad=False),
                S(noncontig(r(2, 5)), *v, dtype=np.float64, grad=False), S(r(3), *v, requires_grad=True, grad=False)]
    return samples


def _from_numpy(rng, dtype):
    a = np.asarray(rng.standard_normal((3, 4)), dtype=dtype)
    arrays = [a, a[:, ::2], np.arange(6, dtype=np.int32).reshape(2, 3), np.array([True, False]), np.zeros((0, 2), dtype)]
    return [S(_Fresh(lambda x=x: x), grad=False) for x in arrays]


def _tdt(dt):
    """The torch dtype of a NumPy dtype (None stays None)."""
    return None if dt is None else getattr(torch, np.dtype(dt).name if np.dtype(dt) != np.bool_ else "bool")


def _with_tdt(fn):
    """A torch function called with ``dtype=`` translated from NumPy's to torch's."""
    return lambda *a, dtype=None, **kw: fn(*a, **({"dtype": _tdt(dtype)} if dtype is not None else {}), **kw)


def _t_min(x, dim=None, keepdim=False):
    if dim is None:
        return x.amin()
    return x.amin(dim=dim, keepdim=keepdim) if isinstance(dim, tuple) else x.min(dim=dim, keepdim=keepdim).values


# ----- nn modules ----------------------------------------------------------------------------

def _m_linear(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(4, 5), in_features=5, out_features=3), S(r(2, 3, 5), in_features=5, out_features=7, bias=False),
            S(noncontig(r(3, 6)), in_features=6, out_features=2), S(r(0, 4), in_features=4, out_features=2)]


def _m_act(extra=None):
    def samples(rng, dtype):
        r = _mk(rng, dtype)
        out = [S(r(3, 5)), S(noncontig(r(2, 9))), S(r(0, 3))]
        return out + [S(r(3, 6), **kw) for kw in (extra or [])]
    return samples


def _m_layernorm(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(4, 6), normalized_shape=6), S(r(2, 3, 5), normalized_shape=5, eps=1e-2),
            S(r(3, 4), normalized_shape=(4,), elementwise_affine=False), S(r(3, 4), normalized_shape=4, bias=False),
            S(noncontig(r(3, 7)), normalized_shape=7)]


def _m_embedding(rng, dtype):
    return [S(np.array([[0, 2, 2], [4, 1, 0]]), num_embeddings=5, embedding_dim=3),
            S(np.array([1]), num_embeddings=2, embedding_dim=1), S(np.zeros(0, np.int64), num_embeddings=3, embedding_dim=2)]


def _m_dropout(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 4), p=0.0), S(r(3, 4), p=0.7, eval=True, desc="eval(): identity"), S(r(3, 4), p=1.0)]


def _m_pointwise_loss(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 4), r(3, 4)), S(r(3, 4), r(3, 4), reduction="sum"), S(r(2, 3), r(2, 3), reduction="none")]


def _m_xent(rng, dtype):
    r = _mk(rng, dtype)
    t = np.array([0, 2, 1, 2, 4, 3])
    return [S(r(6, 5), t), S(r(6, 5), t, ignore_index=2), S(r(6, 5), np.array([0, -1, 1, 2, 4, 3]), ignore_index=-1),
            S(r(6, 5), t, reduction="sum", ignore_index=3), S(r(6, 5), t, reduction="none"),
            S(r(2, 4, 3), rng.integers(0, 4, (2, 3)), weight=Const(r(4, lo=0.5, hi=2.0)), label_smoothing=0.1),
            S(r(6, 5), r(6, 5, lo=0.0, hi=1.0), reduction="sum", desc="probability targets")]


def _m_sequential(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(4, 5), widths=(5, 6, 3)), S(r(2, 3, 4), widths=(4, 2, 2))]


def _fg_seq(widths):
    a, b, c = widths
    return fg.nn.Sequential(fg.nn.Linear(a, b), fg.nn.GELU(approximate="tanh"), fg.nn.LayerNorm(b), fg.nn.Linear(b, c))


def _t_seq(widths):
    a, b, c = widths
    N = torch.nn
    return N.Sequential(N.Linear(a, b), N.GELU(approximate="tanh"), N.LayerNorm(b), N.Linear(b, c))


def _m_bce(rng, dtype):
    r = _mk(rng, dtype)
    t = r(4, 3, lo=0.0, hi=1.0)
    return [S(r(4, 3), t), S(r(4, 3), t, reduction="sum", weight=Const(r(4, 3, lo=0.5, hi=2.0))),
            S(r(4, 3), t, pos_weight=Const(r(3, lo=0.5, hi=3.0)), reduction="none"),
            S(r(2, 4, 3), r(2, 4, 3, lo=0.0, hi=1.0), pos_weight=Const(r(3, lo=0.5, hi=3.0)),
              weight=Const(r(3, lo=0.5, hi=2.0)))]


def _m_flatten(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(2, 3, 4)), S(r(2, 3, 4), start_dim=0, end_dim=1), S(r(2, 3, 4, 5), start_dim=2),
            S(r(2, 3, 4), start_dim=-2, end_dim=-1), S(noncontig(r(3, 4))), S(r(0, 2, 3))]


def _m_identity(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(3, 4)), S(r(2, 3), desc="arguments ignored", unused=5), S(r())]


def _m_nll(rng, dtype):
    r = _mk(rng, dtype)
    t6 = np.array([0, 2, 1, 2, 4, 3])
    return [S(r(6, 5), t6), S(r(6, 5), t6, weight=Const(r(5, lo=0.5, hi=2.0)), ignore_index=1, reduction="sum"),
            S(r(2, 4, 3), rng.integers(0, 4, (2, 3)), reduction="none"), S(r(6, 5), t6, ignore_index=2)]


def _m_rmsnorm(rng, dtype):
    r = _mk(rng, dtype)
    return [S(r(4, 6), normalized_shape=6), S(r(2, 3, 4), normalized_shape=(3, 4), eps=1e-3),
            S(r(3, 5), normalized_shape=5, elementwise_affine=False), S(noncontig(r(3, 7)), normalized_shape=[7])]


def _module(name, samples, fg_ctor=None, t_ctor=None):
    return Op(f"nn.{name}", fg_ctor or getattr(fg.nn, name), t_ctor or getattr(torch.nn, name), samples, module=True)


# ----- the table -----------------------------------------------------------------------------

_GELU_KW = [{"approximate": "tanh"}]

OPS = [
    # fusegrad.nn.functional
    Op("F.linear", F.linear, TF.linear, _linear),
    Op("F.relu", F.relu, TF.relu, _unary()),
    Op("F.gelu", F.gelu, TF.gelu, _unary(extra=_GELU_KW)),
    Op("F.sigmoid", F.sigmoid, torch.sigmoid, _unary()),
    Op("F.tanh", F.tanh, torch.tanh, _unary()),
    Op("F.softmax", F.softmax, TF.softmax, lambda rng, dt: [S(*s.args, dim=s.kwargs.get("dim", -1)) for s in _rows(rng, dt)]),
    Op("F.log_softmax", F.log_softmax, TF.log_softmax,
       lambda rng, dt: [S(*s.args, dim=s.kwargs.get("dim", -1)) for s in _rows(rng, dt)]),
    Op("F.layer_norm", F.layer_norm, lambda x, ns, w=None, b=None, **kw: TF.layer_norm(
        x, (ns,) if isinstance(ns, int) else tuple(ns), w, b, **kw), _layer_norm),
    Op("F.embedding", F.embedding, TF.embedding, _embedding),
    Op("F.dropout", F.dropout, TF.dropout, _dropout),
    Op("F.mse_loss", F.mse_loss, _t_mse, _mse),
    Op("F.cross_entropy", F.cross_entropy, TF.cross_entropy, _xent),
    Op("F.scaled_dot_product_attention", F.scaled_dot_product_attention, _t_sdpa, _sdpa),
    Op("F.silu", F.silu, TF.silu, _unary()),
    Op("F.leaky_relu", F.leaky_relu, TF.leaky_relu, _leaky),
    Op("F.rms_norm", F.rms_norm, _t_rms_norm, _rms_norm),
    Op("F.l1_loss", F.l1_loss, TF.l1_loss, _l1),
    Op("F.nll_loss", F.nll_loss, TF.nll_loss, _nll),
    Op("F.binary_cross_entropy_with_logits", F.binary_cross_entropy_with_logits,
       TF.binary_cross_entropy_with_logits, _bce),

    # fusegrad.<function>
    Op("fg.cat", fg.cat, torch.cat, _cat),
    Op("fg.stack", fg.stack, torch.stack, _stack),
    Op("fg.split", fg.split, torch.split, _split),
    Op("fg.matmul", fg.matmul, torch.matmul, _matmul),
    Op("fg.maximum", fg.maximum, torch.maximum, _extremum),
    Op("fg.minimum", fg.minimum, torch.minimum, _extremum),
    Op("fg.where", fg.where, torch.where, _where),
    # creation functions: values and dtypes (no gradient)
    Op("fg.arange", fg.arange, _with_tdt(torch.arange), _arange),
    Op("fg.full", fg.full, _with_tdt(torch.full), _full),
    Op("fg.full_like", fg.full_like, _with_tdt(torch.full_like), _like(fill=True)),
    Op("fg.zeros_like", fg.zeros_like, _with_tdt(torch.zeros_like), _like()),
    Op("fg.ones_like", fg.ones_like, _with_tdt(torch.ones_like), _like()),
    Op("fg.from_numpy", fg.from_numpy, torch.from_numpy, _from_numpy),

    # Tensor operators
    Op("Tensor.__add__", lambda a, b: a + b, SAME, _binary),
    Op("Tensor.__radd__", lambda a: 2.5 + a, SAME, _scalar_r),
    Op("Tensor.__sub__", lambda a, b: a - b, SAME, _binary),
    Op("Tensor.__rsub__", lambda a: 2.5 - a, SAME, _scalar_r),
    Op("Tensor.__mul__", lambda a, b: a * b, SAME, _binary),
    Op("Tensor.__rmul__", lambda a: 2.5 * a, SAME, _scalar_r),
    Op("Tensor.__truediv__", lambda a, b: a / b, SAME, lambda rng, dt: _binary(rng, dt, pos_b=True)),
    Op("Tensor.__rtruediv__", lambda a: 2.5 / a, SAME,
       lambda rng, dt: [S(_mk(rng, dt)(3, 4, lo=0.5, hi=2.0)), S(_mk(rng, dt)(lo=-2.0, hi=-0.5))]),
    Op("Tensor.__neg__", lambda a: -a, SAME, _plain),
    Op("Tensor.__abs__", lambda a: abs(a), SAME, _plain),
    Op("Tensor.__pow__", lambda a, p: a ** p, SAME, _pow),
    Op("Tensor.__rpow__", lambda a: 2.0 ** a, SAME, _scalar_r),
    Op("Tensor.__matmul__", lambda a, b: a @ b, SAME, _matmul),
    Op("Tensor.__rmatmul__", lambda b, a: b.__rmatmul__(a), lambda b, a: a @ b,
       lambda rng, dt: [S(s.args[1], s.args[0], desc=s.desc) for s in _matmul(rng, dt)]),
    Op("Tensor.__getitem__", _getitem_op, _getitem_op, _getitem),

    # Tensor methods
    Op("Tensor.sum", lambda x, **kw: x.sum(**kw), SAME, _reduce),
    Op("Tensor.mean", lambda x, **kw: x.mean(**kw), SAME, _reduce),
    Op("Tensor.max", lambda x, **kw: (x.max() if kw.get("dim") is None else x.amax(**kw) if isinstance(kw["dim"], tuple)
                                      else x.max(**kw).values), _t_max, _max),
    Op("Tensor.min", lambda x, **kw: (x.min() if kw.get("dim") is None else x.amin(**kw) if isinstance(kw["dim"], tuple)
                                      else x.min(**kw).values), _t_min, _max),
    Op("Tensor.amax", lambda x, **kw: x.amax(**kw), SAME, lambda rng, dt: _max(rng, dt) + [_reduce(rng, dt)[-1]]),
    Op("Tensor.amin", lambda x, **kw: x.amin(**kw), SAME, lambda rng, dt: _max(rng, dt) + [_reduce(rng, dt)[-1]]),
    Op("Tensor.var", lambda x, **kw: x.var(**kw), SAME, _var),
    Op("Tensor.std", lambda x, **kw: x.std(**kw), SAME, _var),
    Op("Tensor.gather", lambda x, d, i: x.gather(d, i), SAME, _gather),
    Op("Tensor.topk", lambda x, k, **kw: x.topk(k, **kw), SAME, _topk),
    Op("Tensor.pow", lambda a, p: a.pow(p), SAME, _pow),
    Op("Tensor.exp", lambda x: x.exp(), SAME, _unary()),
    Op("Tensor.log", lambda x: x.log(), SAME, _unary(pos=True)),
    Op("Tensor.sqrt", lambda x: x.sqrt(), SAME, _unary(pos=True)),
    Op("Tensor.abs", lambda x: x.abs(), SAME, _unary()),
    Op("Tensor.clamp", lambda x, **kw: x.clamp(**kw), SAME, _clamp),
    Op("Tensor.relu", lambda x: x.relu(), SAME, _unary()),
    Op("Tensor.tanh", lambda x: x.tanh(), SAME, _unary()),
    Op("Tensor.sigmoid", lambda x: x.sigmoid(), SAME, _unary()),
    Op("Tensor.softmax", lambda x, **kw: x.softmax(**kw), lambda x, dim=-1: x.softmax(dim), _rows),
    Op("Tensor.reshape", lambda x, *s: x.reshape(*s), SAME, _reshape),
    Op("Tensor.view", lambda x, *s: x.view(*s), lambda x, *s: x.reshape(*s),  # torch's view needs contiguity
       _reshape),
    Op("Tensor.flatten", lambda x, *a, **kw: x.flatten(*a, **kw), SAME, _flatten),
    Op("Tensor.permute", lambda x, *d: x.permute(*d), SAME, _permute),
    Op("Tensor.transpose", lambda x, a, b: x.transpose(a, b), SAME, _transpose),
    Op("Tensor.T", lambda x: x.T, lambda x: x.permute(*reversed(range(x.ndim))), _T),
    Op("Tensor.t", lambda x: x.t(), SAME, _t_tensor),
    Op("Tensor.unsqueeze", lambda x, d: x.unsqueeze(d), SAME, _unsqueeze),
    Op("Tensor.squeeze", lambda x, *d: x.squeeze(*d), SAME, _squeeze),
    Op("Tensor.expand", lambda x, *s: x.expand(*s), SAME, _expand),
    Op("Tensor.split", lambda x, *a, **kw: x.split(*a, **kw), SAME, _split),
    Op("Tensor.clone", lambda x: x.clone(), SAME, _plain),
    Op("Tensor.float", lambda x: x.float(), SAME, _plain),
    Op("Tensor.double", lambda x: x.double(), SAME, _plain),
    Op("Tensor.cpu", lambda x: x.cpu(), SAME, _plain),
    Op("Tensor.int", lambda x: x.int(), SAME, _casts),
    Op("Tensor.bool", lambda x: x.bool(), SAME, _casts),
    Op("Tensor.all", lambda x, **kw: x.all(**kw), SAME, _all_any),
    Op("Tensor.any", lambda x, **kw: x.any(**kw), SAME, _all_any),
    # in-place ops on a non-leaf: recorded by autograd
    Op("Tensor.add_", lambda a, b, **kw: (a * 1.0).add_(b, **kw), SAME, lambda rng, dt: _inplace(rng, dt, alpha=True)),
    Op("Tensor.sub_", lambda a, b, **kw: (a * 1.0).sub_(b, **kw), SAME, lambda rng, dt: _inplace(rng, dt, alpha=True)),
    Op("Tensor.mul_", lambda a, b: (a * 1.0).mul_(b), SAME, _inplace),
    Op("Tensor.div_", lambda a, b: (a * 1.0).div_(b), SAME, lambda rng, dt: _inplace(rng, dt, pos=True)),
    Op("Tensor.__iadd__", lambda a, b: (a * 1.0).__iadd__(b), SAME, _inplace),
    Op("Tensor.__isub__", lambda a, b: (a * 1.0).__isub__(b), SAME, _inplace),
    Op("Tensor.__imul__", lambda a, b: (a * 1.0).__imul__(b), SAME, _inplace),
    Op("Tensor.__itruediv__", lambda a, b: (a * 1.0).__itruediv__(b), SAME, lambda rng, dt: _inplace(rng, dt, pos=True)),
    Op("Tensor.fill_", lambda a, v: (a * 1.0).fill_(v), SAME, _fill),
    Op("Tensor.zero_", lambda a: (a * 1.0).zero_(), SAME, _plain),
    Op("Tensor.copy_", lambda a, b: (a * 1.0).copy_(b), SAME, _copy),
    Op("Tensor.__setitem__", _setitem_op, SAME, _setitem),
    Op("Tensor.to", lambda x, dt: x.to(dt), lambda x, dt: x.to(getattr(torch, np.dtype(dt).name)),
       lambda rng, dt: [S(_mk(rng, dt)(3, 4), np.float64), S(_mk(rng, dt)(3, 4), np.float32),
                        S(noncontig(_mk(rng, dt)(2, 5)), np.float64)]),

    # nn modules (parameters randomised and copied into torch's module by name)
    _module("Linear", _m_linear),
    _module("ReLU", _m_act()),
    _module("GELU", _m_act(_GELU_KW)),
    _module("Sigmoid", _m_act()),
    _module("Tanh", _m_act()),
    _module("Softmax", lambda rng, dt: [S(_mk(rng, dt)(3, 4), dim=-1), S(_mk(rng, dt)(3, 4), dim=0),
                                        S(_mk(rng, dt)(2, 3, 4), dim=1)]),
    _module("Sequential", _m_sequential, _fg_seq, _t_seq),
    _module("LayerNorm", _m_layernorm),
    _module("Embedding", _m_embedding),
    _module("Dropout", _m_dropout),
    _module("MSELoss", _m_pointwise_loss),
    _module("CrossEntropyLoss", _m_xent),
    _module("BCEWithLogitsLoss", _m_bce),
    _module("Flatten", _m_flatten),
    _module("Identity", _m_identity),
    _module("L1Loss", _m_pointwise_loss),
    _module("LeakyReLU", _m_act([{"negative_slope": 0.2}, {"negative_slope": -0.7}])),
    _module("NLLLoss", _m_nll),
    _module("RMSNorm", _m_rmsnorm),
    _module("SiLU", _m_act()),
]

# Public names that have no entry on purpose (the completeness test reads these).
EXCLUDED = {
    # nn classes that compute nothing themselves
    "nn.Module": "abstract base; every concrete module has an entry",
    "nn.ModuleList": "container without a forward (raises NotImplementedError)",
    "nn.ModuleDict": "container without a forward (raises NotImplementedError)",
    # fusegrad.<name>: classes checked elsewhere, constructors, configuration
    "fg.Tensor": "its methods and operators have entries one by one (Tensor.*)",
    "fg.GPT": "a model: tests/test_gpt.py checks it against a PyTorch GPT", "fg.GPTConfig": "configuration",
    "fg.tensor": "constructor", "fg.zeros": "constructor", "fg.ones": "constructor", "fg.randn": "constructor",
    "fg.no_grad": "context manager", "fg.is_grad_enabled": "grad-mode query",
    "fg.get_num_threads": "configuration", "fg.set_num_threads": "configuration", "fg.show_config": "configuration",
    "fg.empty_cache": "allocator control", "fg.memory_stats": "allocator statistics",
    # Tensor methods without a gradient
    "Tensor.numpy": "returns the array", "Tensor.item": "returns a Python number", "Tensor.tolist": "returns lists",
    "Tensor.detach": "cuts the graph by definition", "Tensor.long": "integer result, no gradient",
    "Tensor.argmax": "integer result, no gradient", "Tensor.size": "shape query", "Tensor.numel": "shape query",
    "Tensor.dim": "shape query", "Tensor.backward": "the engine itself (exercised by every entry)",
    "Tensor.requires_grad_": "flag setter",
    "Tensor.eq": "boolean result", "Tensor.ne": "boolean result", "Tensor.__eq__": "boolean result",
    "Tensor.__ne__": "boolean result", "Tensor.__lt__": "boolean result", "Tensor.__le__": "boolean result",
    "Tensor.__gt__": "boolean result", "Tensor.__ge__": "boolean result",
    "Tensor.__float__": "Python number", "Tensor.__int__": "Python number", "Tensor.__bool__": "Python bool",
    "Tensor.__len__": "shape query", "Tensor.__array__": "NumPy interop, returns the array",
    "Tensor.cuda": "device move: tests/test_cuda_tensor.py checks it and its gradient (GPU)",
    "Tensor.is_cuda": "device query",
}

# Tensor dunders that are differentiable operators (others, like __repr__, are not ops)
OPERATOR_DUNDERS = {"__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
                    "__rtruediv__", "__neg__", "__pos__", "__abs__", "__pow__", "__rpow__", "__matmul__",
                    "__rmatmul__", "__getitem__", "__setitem__", "__iadd__", "__isub__", "__imul__",
                    "__itruediv__", "__ipow__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__",
                    "__float__", "__int__", "__bool__", "__len__", "__array__", "__floordiv__", "__mod__",
                    "__rfloordiv__", "__rmod__", "__and__", "__or__", "__xor__", "__invert__"}


# Public API with no gradient to check: name -> (why, the group of tests/test_opinfo.py's
# test_non_differentiable_matches_torch that compares its behaviour with torch's).
NON_DIFFERENTIABLE = {
    "fg.Generator": ("random state: draws are compared by seeding, shapes, dtypes and ranges", "random"),
    "fg.manual_seed": ("seeds the default generator", "random"),
    "fg.initial_seed": ("returns the seed", "random"),
    "fg.rand": ("random values (no torch values to match): dtype, shape, range, seeding", "random"),
    "fg.randint": ("random integers: dtype, shape, range, seeding", "random"),
    "fg.enable_grad": ("grad-mode context", "grad_modes"),
    "fg.set_grad_enabled": ("grad-mode switch and context", "grad_modes"),
    "fg.inference_mode": ("grad-mode context", "grad_modes"),
    "fg.autocast": ("precision context", "autocast"),
    "fg.is_autocast_enabled": ("precision-mode query", "autocast"),
    "fg.save": ("file output", "save_load"),
    "fg.load": ("file input", "save_load"),
    "fg.get_default_dtype": ("configuration query", "default_dtype"),
    "fg.set_default_dtype": ("configuration", "default_dtype"),
    "Tensor.device": ("metadata", "device"),
    "Tensor.register_post_accumulate_grad_hook": ("hook registration (runs during backward)", "hooks"),
}
