"""Tensor and the reverse-mode autograd engine.

A ``Tensor`` wraps a NumPy array. Each differentiable primitive is one small ``Function``
subclass: ``forward`` computes on arrays (through :mod:`fusegrad._kernels` where a kernel
exists) and saves what ``backward`` needs; ``backward`` maps the output gradient to one
gradient per input. ``Tensor.backward`` visits the graph in reverse topological order,
accumulating gradients with ``+=``, and frees the graph unless ``retain_graph=True``.

>>> import fusegrad as fg
>>> w = fg.tensor(4.0, requires_grad=True)
>>> loss = (50.0 - (w * 10.0 + 5.0)) ** 2
>>> loss.backward(); float(w.grad)
-100.0
"""
from __future__ import annotations

import contextlib
import math
import sys
from collections import namedtuple

import numpy as np

from . import _kernels as K
from . import amp as _amp
from . import _xp
from . import _random
from ._checks import is_int

_grad_enabled = True


class no_grad(contextlib.ContextDecorator):
    """Context manager / decorator that disables graph recording (like ``torch.no_grad``)."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev
        return False


def is_grad_enabled() -> bool:
    return _grad_enabled


class enable_grad(no_grad):
    """Context manager / decorator that turns graph recording back on inside ``no_grad``."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, True


class set_grad_enabled(contextlib.ContextDecorator):
    """``set_grad_enabled(False)`` switches recording off at once (a plain call); used in a
    ``with`` statement it restores the previous mode on exit (like ``torch.set_grad_enabled``)."""

    def __init__(self, mode: bool):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, bool(mode)

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev
        return False


class inference_mode(no_grad):
    """``no_grad`` under PyTorch's other name (``inference_mode(False)`` records as usual)."""

    def __init__(self, mode: bool = True):
        self.mode = bool(mode)

    def __enter__(self):
        global _grad_enabled
        self._prev = _grad_enabled
        if self.mode:
            _grad_enabled = False


_default_dtype = np.dtype(np.float32)


def set_default_dtype(dtype) -> None:
    """The dtype of Python floats turned into tensors, of float results of integer tensors
    (``int_tensor / 255``) and of new layers' parameters: float32 (the default) or float64."""
    global _default_dtype
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"set_default_dtype: only float32 and float64 are supported, got {dt}")
    _default_dtype = dt


def get_default_dtype() -> np.dtype:
    return _default_dtype


def _unbroadcast(g, shape):
    """Sum a broadcast gradient back down to ``shape``."""
    if g.shape == shape:
        return g
    nd = g.ndim - len(shape)
    if nd > 0:
        g = g.sum(axis=tuple(range(nd)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


class Function:
    """One primitive op. Subclasses define ``forward(*arrays, **kw) -> array`` and
    ``backward(grad) -> tuple of (array or None)``, one per tensor input. ``saves_output``:
    backward reads the op's output, so changing it in place must refuse backward too."""

    saves_output = False
    out_vc = None       # saves_output: the output's version count and its value at the op
    wants_recording = False   # True: apply sets fn.recording (whether backward may run) before forward

    def __init__(self):
        self.inputs: tuple = ()
        self.needs = ()
        self.versions = ()

    @classmethod
    def apply(cls, *args, **kw):
        fn = cls()
        tensors = [a if isinstance(a, Tensor) else None for a in args]
        arrays = [a.data if isinstance(a, Tensor) else a for a in args]
        if _xp.cuda_used:                             # one device per op (the CPU path skips this)
            arrays = _xp.common_device(arrays, [t is not None for t in tensors], cls.__name__)
        rg = _grad_enabled and any(t is not None and t.requires_grad for t in tensors)
        if cls.wants_recording:
            fn.recording = rg
        out = fn.forward(*arrays, **kw)
        if type(out) is not np.ndarray:
            out = _xp.asarray(out)                    # a NumPy scalar (0-d op result) keeps its dtype
        t = Tensor(out, requires_grad=rg)
        if rg:
            fn.inputs = tuple(tensors)
            fn.needs = tuple([x is not None and x.requires_grad for x in tensors])    # (lists: faster than
            fn.versions = tuple([0 if x is None else x._vc[0] for x in tensors])      # generators here)
            t._ctx = fn
        base = out.base
        if base is not None:                      # a view of an input (reshape, slicing...): one version count
            for x in tensors:                     # (NumPy points a view's base at the array owning the memory)
                if x is not None and (base is x.data or base is x.data.base):
                    t._vc, t._view_of = x._family(), x
                    break
        if rg and cls.saves_output:
            fn.out_vc = (t._family(), t._vc[0])
        return t

    def forward(self, *args, **kw):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, g):  # pragma: no cover - abstract
        raise NotImplementedError


def _sole(a, refs) -> bool:
    """True when ``a`` owns its (writeable) memory and at most ``refs`` references to it exist
    (the caller's expected count: its own names, this function's parameter and getrefcount's
    argument), so no view, Function or user holds it and it may be reused in place."""
    return (type(a) is np.ndarray and a.flags.owndata and a.flags.writeable
            and sys.getrefcount(a) <= refs)


class IndexedRows:
    """A gradient that is zero except at rows ``ids`` of a ``(num, C)`` table, where it is the
    sum of the matching rows of ``values`` (an embedding's gradient). The engine adds it in
    place to a gradient already accumulated for the same table (a tied output layer's), so
    only the rows it names are touched; otherwise it becomes a dense array."""
    __slots__ = ("values", "ids", "num")

    def __init__(self, values, ids, num):
        self.values, self.ids, self.num = values, ids, num

    def can_add_to(self, acc) -> bool:
        return (acc.shape == (self.num, self.values.shape[-1]) and acc.dtype == self.values.dtype
                and acc.flags.c_contiguous)

    def add_to(self, acc):
        K.embedding_backward(self.values, self.ids, self.num, acc, True)

    def dense(self):
        return K.embedding_backward(self.values, self.ids, self.num)


def _as_array(data, dtype=None):
    if isinstance(data, Tensor):
        data = data.data
    if _xp.is_cuda(data):                       # a CuPy array stays on its GPU
        return _xp.asarray(data, dtype)
    a = np.asarray(data, dtype=dtype)
    if a.dtype.kind not in "biufc":
        raise TypeError(f"tensor data must be numeric, got dtype {a.dtype} (from {type(data).__name__})")
    if dtype is None:
        if a.dtype == np.float64 and not isinstance(data, (np.ndarray, np.generic)):
            a = a.astype(_default_dtype)  # Python floats/lists take the default dtype, like torch
        elif a.dtype.kind in "b":
            pass
        elif a.dtype.kind in "iu" and not isinstance(data, (np.ndarray, np.generic)):
            a = a.astype(np.int64)
    return a


_callbacks = None   # while backward() runs: functions queued to run once it has finished


def queue_callback(fn):
    """Run ``fn()`` once the backward() pass now running has finished (from a hook; as
    PyTorch's ``Variable._execution_engine.queue_callback``). Not run if the pass raises."""
    if _callbacks is None:
        raise RuntimeError("queue_callback: no backward() is running")
    _callbacks.append(fn)


class _HookHandle:
    """What a hook registration returns: ``remove()`` unregisters the hook."""
    _next = 0

    def __init__(self, hooks, hook):
        self._hooks, self.id = hooks, _HookHandle._next
        _HookHandle._next += 1
        hooks[self.id] = hook

    def remove(self):
        self._hooks.pop(self.id, None)


class _Device(str):
    """What ``Tensor.device`` returns: equal to the string 'cpu' (or 'cuda'), with torch.device's ``type``,
    ``index`` and repr."""
    type = property(lambda self: str.__str__(self))
    index = None

    def __repr__(self):
        return f"device(type='{str.__str__(self)}')"


_CPU, _CUDA = _Device("cpu"), _Device("cuda")


class Tensor:
    """An n-dimensional array with an optional gradient (``requires_grad``)."""

    __array_priority__ = 1000
    # in-place changes to this memory, shared by a tensor and its views (and detach()): a one-item list
    # from the first change or view on; an op's backward refuses an input whose count moved after the op
    _vc = (0,)
    _view_of = None     # the tensor this one is a view of (an in-place op on it under autograd is refused)

    _version = property(lambda self: self._vc[0])   # torch's name for the count

    def _family(self):
        """The version count this tensor shares with its views (created on first use)."""
        if type(self._vc) is tuple:
            self._vc = [0]
        return self._vc

    def _bump(self):
        self._family()[0] += 1

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = _as_array(data, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only floating point tensors can require gradients, got {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._ctx = None

    # ----- basic properties -----
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = lambda self, dim=None: self.data.shape if dim is None else self.data.shape[dim]  # noqa: E731
    numel = lambda self: self.data.size  # noqa: E731
    is_leaf = property(lambda self: self._ctx is None)
    grad_fn = property(lambda self: self._ctx)

    def dim(self):
        return self.data.ndim

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = np.array2string(_xp.to_device(self.data, "cpu"), precision=4, separator=", ", prefix="tensor(")
        extra = ", requires_grad=True" if self.requires_grad else ""
        extra += ", device='cuda'" if _xp.is_cuda(self.data) else ""
        return f"tensor({body}{extra})"

    def numpy(self):
        if self.requires_grad:
            raise RuntimeError("Can't call numpy() on a Tensor that requires grad. Use tensor.detach().numpy() instead.")
        if _xp.is_cuda(self.data):
            raise TypeError("numpy(): the tensor is on the GPU (device 'cuda'); use tensor.cpu().numpy()")
        return self.data

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item(): only one-element tensors can be converted, got shape {self.shape}")
        return self.data.item()

    def tolist(self):
        return self.data.tolist()

    def detach(self):
        """The same memory without history (in-place changes to either show in both, and count
        for both in backward's check, as in torch)."""
        t = Tensor(self.data)
        t._vc = self._family()
        return t

    def clone(self):
        return _Clone.apply(self)

    def requires_grad_(self, flag: bool = True):
        self.requires_grad = flag
        return self

    def float(self):
        return _Cast.apply(self, dtype=np.float32)

    def double(self):
        return _Cast.apply(self, dtype=np.float64)

    def long(self):
        return self._astype(np.int64)

    def int(self):
        return self._astype(np.int32)

    def bool(self):
        return self._astype(np.bool_)

    def _astype(self, dtype):
        dt = np.dtype(dtype)
        if dt == self.dtype:
            return self
        if dt.kind == "f" and self.dtype.kind == "f":
            return _Cast.apply(self, dtype=dt)
        return Tensor(self.data.astype(dt))     # not differentiable, as in torch

    def to(self, *args, dtype=None, device=None, copy=False):
        """``to(dtype)``, ``to("cuda")``, ``to("cpu")``, ``to(other_tensor)`` (its dtype and device),
        ``to("cuda", dtype)``: self when nothing changes (a copy with ``copy=True``), as in torch.
        ``"cuda"`` needs fusegrad.cuda.is_available() (a RuntimeError says why not); the move is
        differentiable (the gradient goes back to the source device)."""
        for a in args:
            if isinstance(a, Tensor):
                dtype, device = a.dtype, a.device
            elif isinstance(a, str) and not _xp.is_dtype_name(a):
                device = a
            else:
                dtype = a
        out = self
        if device is not None:
            kind = _xp.parse_device(device, "to")
            if kind != self.device:
                out = _ToDevice.apply(self, device=kind)
        out = out if dtype is None else out._astype(dtype)
        return out.clone() if copy and out is self else out

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    device = property(lambda self: _CUDA if _xp.is_cuda(self.data) else _CPU)
    is_cuda = property(lambda self: _xp.is_cuda(self.data))

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        return bool(self.item())

    def __array__(self, dtype=None, copy=None):
        a = _xp.to_device(self.data, "cpu")   # NumPy asks for host memory: a CUDA tensor is copied back
        return a if dtype is None else a.astype(dtype)

    # ----- autograd -----
    def backward(self, gradient=None, retain_graph: bool = False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` that requires grad."""
        if not self.requires_grad:
            raise RuntimeError("backward(): tensor does not require grad and has no grad_fn "
                               "(create leaves with requires_grad=True)")
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward(): grad can be implicitly created only for scalar outputs; "
                                   f"got shape {self.shape}, pass gradient=")
            g = np.ones_like(self.data)
        else:
            g = _as_array(gradient)
            if g.dtype.kind == "c" and self.dtype.kind != "c":
                raise TypeError(f"backward(): gradient is complex ({g.dtype}) but the tensor is {self.dtype}")
            g = g.astype(self.dtype, copy=False)
            if g.shape != self.shape:
                raise ValueError(f"backward(): gradient has shape {g.shape}, expected {self.shape}")
        global _callbacks
        outer, _callbacks = _callbacks, []      # queue_callback's list for this pass
        # topological order (iterative DFS so deep graphs do not hit the recursion limit)
        order, seen, stack = [], set(), [(self, False)]
        while stack:
            t, done = stack.pop()
            if done:
                order.append(t)
                continue
            if id(t) in seen:
                continue
            seen.add(id(t))
            stack.append((t, True))
            if t._ctx is not None:
                for p in t._ctx.inputs:
                    if p is not None and p.requires_grad and id(p) not in seen:
                        stack.append((p, False))
        grads = {id(self): g}
        del g  # the dict holds the only engine reference (see _sole)
        for t in reversed(order):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            if t._ctx is None:
                # a gradient array nobody else holds becomes .grad as is (no copy); one that
                # may be shared (Add hands the same g to both inputs, a user's gradient=, a
                # buffer a Function keeps) is copied, so in-place edits of .grad stay local
                t.grad = Tensor(g if _sole(g, 3) else g.copy()) if t.grad is None else Tensor(t.grad.data + g)
                if t.__dict__.get("_post_acc_hooks"):   # the leaf's gradient is final for this pass
                    g = None
                    for hook in list(t._post_acc_hooks.values()):
                        hook(t)
                continue
            ctx = t._ctx
            for p, v in zip(ctx.inputs, ctx.versions):
                if p is not None and p._vc[0] != v:
                    raise RuntimeError(
                        f"backward(): an input of {type(ctx).__name__} (shape {p.shape}) was modified by an in-place "
                        f"operation after {type(ctx).__name__} used it, so its gradient would be wrong; use the "
                        f"out-of-place form (y = y + v instead of y += v) or clone() before modifying")
            if ctx.out_vc is not None and ctx.out_vc[0][0] != ctx.out_vc[1]:
                raise RuntimeError(
                    f"backward(): the output of {type(ctx).__name__} was modified by an in-place operation after "
                    f"{type(ctx).__name__} made it, and its backward reads it, so its gradient would be wrong; use "
                    f"the out-of-place form (y = y + v instead of y += v) or clone() before modifying")
            gin = ctx.backward(g)
            if not isinstance(gin, tuple):
                gin = (gin,)
            for p, need, gp in zip(ctx.inputs, ctx.needs, gin):
                if need and gp is not None:
                    k = id(p)
                    if isinstance(gp, IndexedRows):
                        acc = grads.get(k)
                        if acc is not None and gp.can_add_to(acc) and _sole(acc, 4):
                            gp.add_to(acc)  # engine-owned: only the rows it names are touched
                            del acc
                            continue
                        acc = None
                        gp = gp.dense()
                    gp = np.asarray(gp, dtype=p.dtype) if type(gp) is np.ndarray else _xp.asarray(gp, dtype=p.dtype)
                    if _xp.cuda_used:
                        gp = _xp.like(gp, p.data)      # a CPU 0-d constant's gradient comes back to the CPU
                    if gp.shape != p.shape:
                        gp = _unbroadcast(gp, p.shape)
                    if k not in grads:
                        grads[k] = gp
                        continue
                    acc = grads[k]
                    if acc.shape == gp.shape and acc.dtype == gp.dtype and _sole(acc, 4):
                        acc += gp  # engine-owned: accumulate in place
                    else:
                        grads[k] = acc + gp
                    del acc
            if not retain_graph:
                ctx.inputs = ()
                t._ctx = _Freed
            ctx = gin = gp = None  # drop this step's references before the refcount tests
        queued, _callbacks = _callbacks, outer
        for fn in queued:
            fn()
        return None

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(self)`` each time backward() has finished accumulating this leaf's
        ``.grad`` (PyTorch's hook of the same name); returns a handle whose ``remove()`` undoes
        it. A leaf that gets no gradient in a pass is not called. DistributedDataParallel uses
        it to start a bucket's all-reduce while the rest of the backward pass runs."""
        if not callable(hook):
            raise TypeError(f"register_post_accumulate_grad_hook: hook must be callable, got {type(hook).__name__}")
        if not self.is_leaf:
            raise RuntimeError("register_post_accumulate_grad_hook: only leaf tensors have an accumulated .grad")
        if not self.requires_grad:
            raise RuntimeError("register_post_accumulate_grad_hook: the tensor does not require grad")
        hooks = self.__dict__.setdefault("_post_acc_hooks", {})
        return _HookHandle(hooks, hook)

    # ----- arithmetic -----
    def __add__(self, o): return _binary(Add, self, o)
    def __radd__(self, o): return _binary(Add, o, self)
    def __sub__(self, o): return _binary(Sub, self, o)
    def __rsub__(self, o): return _binary(Sub, o, self)
    def __mul__(self, o): return _binary(Mul, self, o)
    def __rmul__(self, o): return _binary(Mul, o, self)
    def __truediv__(self, o): return _binary(Div, self, o)
    def __rtruediv__(self, o): return _binary(Div, o, self)
    def __neg__(self): return Neg.apply(self)
    def __matmul__(self, o): return MatMul.apply(self, _t(o, self))
    def __rmatmul__(self, o): return MatMul.apply(_t(o, self), self)

    def __pow__(self, o):
        if isinstance(o, Tensor):
            return exp(log(self) * o)
        _scalar_check(o)
        if self.dtype.kind in "biu" and (isinstance(o, (float, np.floating)) or o < 0):
            if not isinstance(o, (float, np.floating)):
                raise ValueError("pow: integers to negative integer powers are not allowed (as in torch)")
            return Pow.apply(self._astype(_default_dtype), p=o)   # int ** 0.5 is a float, as in torch
        return Pow.apply(self, p=o)

    def pow(self, exponent):
        return self ** exponent

    def __rpow__(self, o):
        if self.dtype.kind in "biu" and is_int(o):
            return Tensor(np.power(o, self.data))
        x = self if self.dtype.kind == "f" else self._astype(_default_dtype)
        return exp(x * float(np.log(o)))

    def __iadd__(self, o):
        return self._inplace(Add, o, "+=")

    def __isub__(self, o):
        return self._inplace(Sub, o, "-=")

    def __imul__(self, o):
        return self._inplace(Mul, o, "*=")

    def __itruediv__(self, o):
        return self._inplace(Div, o, "/=")

    def add_(self, other, alpha=1):
        return self._inplace(Add, other if alpha == 1 else other * alpha, "add_")

    def sub_(self, other, alpha=1):
        return self._inplace(Sub, other if alpha == 1 else other * alpha, "sub_")

    def mul_(self, other):
        return self._inplace(Mul, other, "mul_")

    def div_(self, other):
        return self._inplace(Div, other, "div_")

    def _tracked(self, o, name) -> bool:
        """Whether an in-place op on self must be recorded (as torch: self or o requires grad
        while grad is enabled); refused on a leaf that requires grad."""
        if not (_grad_enabled and (self.requires_grad or (isinstance(o, Tensor) and o.requires_grad))):
            return False
        if self.requires_grad and self.is_leaf:
            raise RuntimeError(f"{name}: a leaf Variable that requires grad is being used in an in-place "
                               f"operation; wrap it in fusegrad.no_grad()")
        if self.dtype.kind != "f":
            raise RuntimeError(f"{name}: a {self.dtype} tensor cannot take a value that requires grad in place")
        if self._view_of is not None:
            raise RuntimeError(f"{name}: this tensor is a view of another (from indexing, reshape/view, transpose "
                               f"or permute) and shares its memory; an in-place op on it under autograd would change "
                               f"that tensor behind its history; clone() the view first, or write it out of place")
        return True

    def _rebase(self, out, name):
        """Write ``out`` (computed from a snapshot of self) into self's memory and make it
        self's history; ops that used self before refuse backward from now on (``_vc``)."""
        if out.shape != self.shape:
            raise RuntimeError(f"{name}: the result has shape {out.shape}, the tensor {self.shape}; an in-place "
                               f"operation cannot change the shape")
        self.data[...] = out.data
        self._ctx, self.requires_grad = out._ctx, out.requires_grad
        self._bump()
        return self

    def _snapshot(self):
        """Self's value and history before an in-place op, as a tensor of its own."""
        old = Tensor.__new__(Tensor)
        old.__dict__.update(self.__dict__)
        old.data = self.data.copy()
        old.grad, old._vc, old._view_of = None, (0,), None      # its own memory: never changes again
        return old

    def _inplace(self, fn, o, name):
        """``self <fn>= o`` in self's memory, keeping its dtype and shape (torch's rules: the
        result must cast to self's dtype within its kind and broadcast to self's shape). Under
        autograd it is recorded: self becomes ``fn(old self, o)``."""
        if self._tracked(o, name):
            old = self._snapshot()
            if o is self:
                o = old
            elif isinstance(o, Tensor) and np.may_share_memory(o.data, self.data):
                o = _Clone.apply(o)                              # a view of self: its value before the op
            out = _binary(fn, old, o)
            if out.dtype != self.dtype:
                out = _Cast.apply(out, dtype=self.dtype)       # float32 += float64: float32, as torch
            return self._rebase(out, name)
        od = o.data if isinstance(o, Tensor) else o
        _scalar_check(od)
        shape = np.broadcast_shapes(self.shape, np.shape(od))
        if shape != self.shape:
            raise RuntimeError(f"{name}: the result has shape {shape}, the tensor {self.shape}; an in-place "
                               f"operation cannot change the shape")
        dt = _result_type(self, o)
        if fn is Div and dt.kind in "biu":
            dt = _default_dtype
        if not np.can_cast(dt, self.dtype, "same_kind"):
            raise RuntimeError(f"{name}: the result type {dt} can't be cast to the tensor's dtype {self.dtype} "
                               f"in place (as in torch); use the out-of-place form")
        ufunc = {Add: np.add, Sub: np.subtract, Mul: np.multiply, Div: np.true_divide}[fn]
        ufunc(self.data, od, out=self.data, casting="unsafe")
        self._bump()
        return self

    # comparisons (no gradient)
    def _cmp(self, op, o):
        return Tensor(op(self.data, o.data if isinstance(o, Tensor) else o))

    def __lt__(self, o): return self._cmp(np.less, o)
    def __le__(self, o): return self._cmp(np.less_equal, o)
    def __gt__(self, o): return self._cmp(np.greater, o)
    def __ge__(self, o): return self._cmp(np.greater_equal, o)
    def eq(self, o): return self._cmp(np.equal, o)
    def ne(self, o): return self._cmp(np.not_equal, o)
    __eq__ = eq
    __ne__ = ne
    __hash__ = object.__hash__

    # ----- reductions and elementwise -----
    def sum(self, dim=None, keepdim=False): return Sum.apply(self, dim=dim, keepdim=keepdim)
    def mean(self, dim=None, keepdim=False): return Mean.apply(self, dim=dim, keepdim=keepdim)

    def max(self, dim=None, keepdim=False, *, other=None):
        """As in torch: ``x.max()`` the largest element (a tensor); ``x.max(dim)``
        ``(values, indices)`` along dim (indices of the first maximum; the gradient goes to that
        element); ``x.max(y)`` with a tensor ``y`` the elementwise maximum (``fusegrad.maximum``)."""
        return self._extreme(Max, "max", np.argmax, dim, keepdim, other)

    def min(self, dim=None, keepdim=False, *, other=None):
        """``x.min()``, ``x.min(dim)`` -> ``(values, indices)``, ``x.min(y)`` elementwise (see ``max``)."""
        return self._extreme(Min, "min", np.argmin, dim, keepdim, other)

    def _extreme(self, fn, name, arg, dim, keepdim, other):
        if other is not None or isinstance(dim, (Tensor, np.ndarray)):
            if other is not None and dim is not None:
                raise TypeError(f"{name}: give dim (a reduction) or other (elementwise), not both")
            if keepdim:
                raise TypeError(f"{name}: keepdim applies to a reduction over dim, not to the elementwise {name}(other)")
            return _binary(Maximum if name == "max" else Minimum, self, dim if other is None else other)
        if dim is None:
            return fn.apply(self)
        if isinstance(dim, (tuple, list)):
            raise TypeError(f"{name}: dim must be one integer (for several dims use a{name})")
        if isinstance(dim, (float, np.floating)):
            raise TypeError(f"{name}: dim must be an integer, got {dim!r}; for the elementwise {name}imum with a "
                            f"number use fusegrad.{name}imum(x, {dim!r})")
        d = _dim(dim, self.ndim, name)
        if self.ndim == 0:
            return _RETURN[name](self, Tensor(np.zeros((), np.int64)))
        if self.shape[d] == 0:
            raise IndexError(f"{name}: dim {dim} has size 0: there is no {name}imum to take")
        idx = np.expand_dims(arg(self.data, axis=d), d)
        values = _Gather.apply(self, idx=idx, dim=d)
        if not keepdim:
            values, idx = values.squeeze(d), idx.squeeze(d)
        return _RETURN[name](values, Tensor(idx.astype(np.int64)))

    def amax(self, dim=None, keepdim=False):
        """max over ``dim`` (an int or a tuple); the gradient is split evenly between ties."""
        return Max.apply(self, dim=dim, keepdim=keepdim)

    def amin(self, dim=None, keepdim=False):
        return Min.apply(self, dim=dim, keepdim=keepdim)

    def gather(self, dim, index):
        """out[i][j][k] = self[index[i][j][k]][j][k] for dim 0 (``torch.gather``)."""
        d = _dim(dim, self.ndim, "gather")
        idx = np.asarray(index.data if isinstance(index, Tensor) else index)
        if idx.dtype.kind not in "iu" or idx.ndim != self.ndim:
            raise ValueError(f"gather: index must be an integer tensor with {self.ndim} dims, "
                             f"got {idx.dtype} with shape {idx.shape}")
        n = self.shape[d] if self.ndim else 1
        if idx.size and (idx.min() < 0 or idx.max() >= n):   # torch takes no negative index here
            raise IndexError(f"gather: index out of range [0, {n}) along dim {dim}")
        return _Gather.apply(self, idx=idx, dim=d)

    def topk(self, k, dim=-1, largest=True, sorted=True):
        """The ``k`` largest (or smallest) elements along ``dim`` as ``(values, indices)``,
        in descending (ascending) order; ties keep the lower index first."""
        d = _dim(dim, self.ndim, "topk")
        n = self.shape[d] if self.ndim else 1
        if not is_int(k) or not 0 <= k <= n:
            raise ValueError(f"topk: k must be an integer in [0, {n}], got {k!r}")
        a = self.data if self.ndim else self.data.reshape(1)
        idx = np.take(np.argsort(-a if largest else a, axis=d, kind="stable"), np.arange(k), axis=d)
        idx = idx if self.ndim else idx.reshape(())
        return _RETURN["topk"](_Gather.apply(self, idx=idx, dim=d), Tensor(idx.astype(np.int64)))

    def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        """Variance over ``dim`` with Bessel's ``correction`` (default 1; ``unbiased=False``
        means 0): sum((x - mean)^2) / max(0, n - correction), as in torch."""
        if unbiased is not None and correction is not None:
            raise ValueError("var: give unbiased or correction, not both")
        c = correction if correction is not None else (1 if unbiased is None else int(bool(unbiased)))
        ax = _axes(dim, self.ndim, "var")
        n = self.data.size if ax is None else math.prod(self.shape[i] for i in ax)
        d = self - self.mean(dim, keepdim=True)
        ss = (d * d).sum(dim, keepdim=keepdim)
        with np.errstate(invalid="ignore"):            # n <= correction: 0 * inf = nan, as in torch
            return ss * (1.0 / (n - c) if n - c > 0 else float("inf"))

    def std(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        """Square root of ``var`` (same arguments); where it is 0 the gradient is 0, as in torch."""
        return _Std.apply(self.var(dim, unbiased, keepdim, correction=correction))

    def all(self, dim=None, keepdim=False):
        return Tensor(np.asarray(np.all(self.data, axis=_axes(dim, self.ndim, "all"), keepdims=keepdim)))

    def any(self, dim=None, keepdim=False):
        return Tensor(np.asarray(np.any(self.data, axis=_axes(dim, self.ndim, "any"), keepdims=keepdim)))

    def argmax(self, dim=None, keepdim=False):
        r = self.data.argmax(axis=dim)
        if keepdim and dim is not None:
            r = np.expand_dims(r, dim)
        return Tensor(r)

    def exp(self): return exp(self)
    def log(self): return log(self)
    def sqrt(self): return sqrt(self)
    def abs(self): return abs_(self)
    def clamp(self, min=None, max=None): return clamp(self, min, max)
    def relu(self): return Relu.apply(self)
    def tanh(self): return Tanh.apply(self)
    def sigmoid(self): return Sigmoid.apply(self)
    def softmax(self, dim=-1): return softmax(self, dim)
    def __abs__(self): return abs_(self)

    # ----- shape -----
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape.apply(self, shape=shape)

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        s = self.shape
        if not s:
            _dim(start_dim, 0, "flatten"), _dim(end_dim, 0, "flatten")
            return self.reshape(1)
        b, e = _dim(start_dim, len(s), "flatten"), _dim(end_dim, len(s), "flatten")
        if b > e:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
        return self.reshape(s[:b] + (math.prod(s[b:e + 1]),) + s[e + 1:])   # not -1: a 0-size dim

    def permute(self, *dims):
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        return Permute.apply(self, dims=dims)

    def transpose(self, d0, d1):
        dims = list(range(self.ndim))
        d0, d1 = _dim(d0, self.ndim, "transpose"), _dim(d1, self.ndim, "transpose")
        dims[d0], dims[d1] = dims[d1], dims[d0]
        return Permute.apply(self, dims=tuple(dims))

    def t(self):
        """The transpose of a 2-D tensor (0-D and 1-D come back as they are)."""
        if self.ndim > 2:
            raise ValueError(f"t: expects a tensor with <= 2 dimensions, got {self.ndim} (use transpose)")
        return self if self.ndim < 2 else self.transpose(0, 1)

    @property
    def T(self):
        return Permute.apply(self, dims=tuple(reversed(range(self.ndim))))

    def unsqueeze(self, dim):
        d = _dim(dim, self.ndim + 1, "unsqueeze")
        return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

    def squeeze(self, dim=None):
        if dim is None:
            return self.reshape(tuple(s for s in self.shape if s != 1))
        if self.ndim == 0:
            _dim(dim, 0, "squeeze")
            return self
        dim = _dim(dim, self.ndim, "squeeze")
        if self.shape[dim] != 1:
            return self
        s = list(self.shape)
        del s[dim]
        return self.reshape(tuple(s))

    def expand(self, *shape):
        return Expand.apply(self, shape=shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape)

    def split(self, split_size, dim=0):
        return split(self, split_size, dim)

    def __getitem__(self, idx):
        return Index.apply(self, idx=_index(idx))

    def __setitem__(self, idx, value):
        self._overwrite(_index(idx), value, "__setitem__")

    def _overwrite(self, idx, value, name):
        """``self[idx] = value`` (copy_ and fill_: idx ``...``); under autograd recorded: the
        overwritten elements' old values get no gradient, ``value`` gets theirs."""
        if self._tracked(value, name):
            src = value if isinstance(value, Tensor) else Tensor(np.asarray(value))
            return self._rebase(_Overwrite.apply(self._snapshot(), src, idx=idx), name)
        self.data[idx] = value.data if isinstance(value, Tensor) else value
        self._bump()
        return self

    # in-place helpers (used by optimizers and init under no_grad)
    def zero_(self):
        return self._overwrite(..., 0, "zero_")

    def fill_(self, v):
        return self._overwrite(..., v, "fill_")

    def copy_(self, src):
        return self._overwrite(..., src, "copy_")


def _index(idx):
    """An index with its Tensors replaced by their arrays."""
    if isinstance(idx, Tensor):
        return idx.data
    if isinstance(idx, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in idx)
    return idx


def _t(x, like: Tensor) -> Tensor:
    """Wrap a Python scalar / array as a constant tensor of ``like``'s float dtype."""
    if isinstance(x, Tensor):
        return x
    a = np.asarray(x)
    if a.dtype.kind == "c" and like.dtype.kind != "c":
        # casting would drop the imaginary part: a silently wrong answer, so refuse
        raise TypeError(f"a complex operand ({a.dtype}) cannot meet a {like.dtype} tensor: "
                        f"fusegrad's autograd has no complex arithmetic")
    if like.dtype.kind == "f" and (a.dtype.kind != "f" or a.ndim == 0 or not isinstance(x, np.ndarray)):
        a = a.astype(like.dtype)
    return Tensor(a)


_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}


def _scalar_check(x):
    if isinstance(x, (complex, np.complexfloating)):
        raise TypeError(f"a complex operand ({type(x).__name__}) cannot meet a real tensor: "
                        f"fusegrad's autograd has no complex arithmetic")


def _promote(a, b):
    """torch.promote_types for real dtypes: the higher category (bool < int < float) wins
    outright (int64 with float32 is float32), within one category the wider type."""
    if a is None or b is None:
        return a if b is None else b
    ca, cb = _CATEGORY[a.kind], _CATEGORY[b.kind]
    if ca != cb:
        return a if ca > cb else b
    return np.promote_types(a, b)


def _result_type(*xs):
    """PyTorch's type promotion: dimensioned tensors decide, unless a zero-dim tensor or a
    Python scalar is of a higher category (bool < int < float), which then promotes; a Python
    float takes the default dtype, a Python int int64 (float32 tensor * 2.0 stays float32,
    int tensor / 255.0 is float32, int tensor + float64 tensor is float64)."""
    res = [None, None, None]                  # dimensioned tensors, zero-dim tensors, scalars
    for x in xs:
        if isinstance(x, (Tensor, np.ndarray)):
            a = x.data if isinstance(x, Tensor) else x
            res[0 if a.ndim else 1] = _promote(res[0 if a.ndim else 1], a.dtype)
        else:
            _scalar_check(x)
            dt = np.asarray(x).dtype
            if dt.kind == "f":
                dt = _default_dtype
            elif dt.kind in "iu":
                dt = np.dtype(np.int64)
            elif dt.kind != "b":
                raise TypeError(f"unsupported operand of type {type(x).__name__}")
            res[2] = _promote(res[2], dt)

    def combine(higher, lower):
        if higher is None or lower is None:
            return higher if lower is None else lower
        if _CATEGORY[lower.kind] > _CATEGORY[higher.kind]:
            return _promote(higher, lower)
        return higher

    return combine(res[0], combine(res[1], res[2]))


def _as_dtype(x, dt):
    if isinstance(x, Tensor):
        return x if x.dtype == dt else x._astype(dt)
    a = np.asarray(x)
    if a.dtype.kind == "c":
        raise TypeError(f"a complex operand ({a.dtype}) cannot meet a real tensor: "
                        f"fusegrad's autograd has no complex arithmetic")
    return Tensor(a.astype(dt, copy=False))


def _binary(fn, a, b):
    """Apply the elementwise Function ``fn`` after promoting ``a`` and ``b`` to their common
    dtype (true division of integers gives the default float dtype)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype and (a.dtype.kind == "f" or fn is not Div):
        return fn.apply(a, b)                                     # the common case, nothing to promote
    if isinstance(a, Tensor) and type(b) in (float, int) and a.dtype.kind == "f":
        return fn.apply(a, Tensor(np.array(b, dtype=a.dtype)))     # a float tensor keeps its dtype
    if isinstance(b, Tensor) and type(a) in (float, int) and b.dtype.kind == "f":
        return fn.apply(Tensor(np.array(a, dtype=b.dtype)), b)
    dt = _result_type(a, b)
    if fn is Div and dt.kind in "biu":
        dt = _default_dtype
    return fn.apply(_as_dtype(a, dt), _as_dtype(b, dt))


_RETURN = {name: namedtuple(name, ["values", "indices"]) for name in ("max", "min", "topk")}


class _FreedFn:
    inputs = ()
    needs = ()
    out_vc = None
    versions = ()

    def backward(self, g):
        raise RuntimeError("backward(): trying to backward through the graph a second time "
                           "(or directly access saved tensors after they have already been freed); "
                           "use retain_graph=True on the first call")


_Freed = _FreedFn()


def tensor(data, dtype=None, requires_grad: bool = False) -> Tensor:
    """Create a tensor (like ``torch.tensor``): floats default to float32, ints to int64."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def _shape(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape


def _dt(dtype):
    return _default_dtype if dtype is None else np.dtype(dtype)


def zeros(*shape, dtype=None, requires_grad=False):
    return Tensor(np.zeros(_shape(shape), dtype=_dt(dtype)), requires_grad=requires_grad)


def ones(*shape, dtype=None, requires_grad=False):
    return Tensor(np.ones(_shape(shape), dtype=_dt(dtype)), requires_grad=requires_grad)


def full(size, fill_value, dtype=None, requires_grad=False):
    """A tensor of ``size`` filled with ``fill_value``; its dtype follows the value (a float:
    the default dtype, an int: int64, a bool: bool) unless ``dtype`` is given."""
    if dtype is None:
        dtype = _result_type(fill_value)
    size = (size,) if is_int(size) else tuple(size)
    return Tensor(np.full(size, fill_value, dtype=np.dtype(dtype)), requires_grad=requires_grad)


def zeros_like(input, dtype=None, requires_grad=False):
    return Tensor(np.zeros(input.shape, dtype=input.dtype if dtype is None else dtype), requires_grad=requires_grad)


def ones_like(input, dtype=None, requires_grad=False):
    return Tensor(np.ones(input.shape, dtype=input.dtype if dtype is None else dtype), requires_grad=requires_grad)


def full_like(input, fill_value, dtype=None, requires_grad=False):
    return full(input.shape, fill_value, dtype=input.dtype if dtype is None else dtype, requires_grad=requires_grad)


def randn(*shape, dtype=None, requires_grad=False, generator=None):
    """Standard normal samples (from the default generator that ``manual_seed`` seeds)."""
    g = _random.rng(generator)
    return Tensor(g.standard_normal(_shape(shape)).astype(_dt(dtype)), requires_grad=requires_grad)


def rand(*shape, dtype=None, requires_grad=False, generator=None):
    """Uniform samples in [0, 1)."""
    g = _random.rng(generator)
    return Tensor(g.random(_shape(shape)).astype(_dt(dtype)), requires_grad=requires_grad)


def randint(*args, size=None, dtype=np.int64, generator=None):
    """``randint(high, size)`` or ``randint(low, high, size)``: integers in [low, high)."""
    args = list(args)
    if size is None and args and isinstance(args[-1], (tuple, list)):
        size = args.pop()
    if size is None or len(args) not in (1, 2):
        raise TypeError("randint: expected randint(high, size) or randint(low, high, size)")
    low, high = (0, args[0]) if len(args) == 1 else args
    if not (is_int(low) and is_int(high)) or high <= low:
        raise ValueError(f"randint: need integers low < high, got low={low!r}, high={high!r}")
    size = (size,) if is_int(size) else tuple(size)
    return Tensor(_random.rng(generator).integers(low, high, size).astype(dtype))


def arange(start, end=None, step=1, dtype=None, requires_grad=False):
    """Values from ``start`` (0 when only one bound is given) up to ``end`` (excluded) by
    ``step``; int64 when every argument is an integer, else the default dtype."""
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if dtype is None:
        dtype = np.int64 if all(is_int(v) for v in (start, end, step)) else _default_dtype
    n = max(0, math.ceil((end - start) / step))
    return Tensor((start + np.arange(n, dtype=np.float64 if np.dtype(dtype).kind == "f" else np.int64) * step)
                  .astype(dtype), requires_grad=requires_grad)


def from_numpy(a):
    """A tensor sharing ``a``'s memory (writes to one show in the other), dtype kept."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(a).__name__}")
    return Tensor(a)


def where(condition, input=None, other=None):
    """Elements of ``input`` where ``condition`` holds, else of ``other`` (either may be a
    scalar; gradients flow to both). ``where(condition)`` is ``nonzero(as_tuple=True)``."""
    c = np.asarray(condition.data if isinstance(condition, Tensor) else condition)
    if input is None and other is None:
        return tuple(Tensor(i.astype(np.int64)) for i in np.nonzero(c))
    if c.dtype != np.bool_:
        raise TypeError(f"where: condition must be a bool tensor, got {c.dtype}")
    dt = _result_type(input, other)
    return Where.apply(_as_dtype(input, dt), _as_dtype(other, dt), cond=c)


# =========================== primitives ===========================
class Add(Function):
    def forward(self, a, b):
        return a + b

    def backward(self, g):
        return g, g


class Sub(Function):
    def forward(self, a, b):
        return a - b

    def backward(self, g):
        return g, -g


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        return g * self.b, g * self.a


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):
        return g / self.b, -g * self.a / (self.b * self.b)


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return (-g,)


class Pow(Function):
    def forward(self, a, p):
        self.a, self.p = a, p
        return (a ** p).astype(a.dtype, copy=False)

    def backward(self, g):
        return (g * self.p * self.a ** (self.p - 1),)


class Exp(Function):
    saves_output = True

    def forward(self, a):
        self.y = np.exp(a)
        return self.y

    def backward(self, g):
        return (g * self.y,)


class Log(Function):
    def forward(self, a):
        self.a = a
        return np.log(a)

    def backward(self, g):
        return (g / self.a,)


class Sqrt(Function):
    saves_output = True

    def forward(self, a):
        self.y = np.sqrt(a)
        return self.y

    def backward(self, g):
        return (g * 0.5 / self.y,)


class _Std(Sqrt):
    """sqrt of a variance whose gradient is 0 where the result is 0 (torch's std_backward: a
    constant row has no direction to move in, instead of 0 * inf = nan)."""

    def backward(self, g):
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.where(self.y == 0, 0.0, g * 0.5 / self.y).astype(g.dtype, copy=False),)


class Abs(Function):
    def forward(self, a):
        self.a = a
        return np.abs(a)

    def backward(self, g):
        return (g * np.sign(self.a),)


class Clamp(Function):
    def forward(self, a, lo=None, hi=None):
        self.mask = np.ones(a.shape, dtype=bool)
        if lo is not None:
            self.mask &= a >= lo
        if hi is not None:
            self.mask &= a <= hi
        return np.clip(a, lo, hi)

    def backward(self, g):
        return (g * self.mask,)


class _Clone(Function):
    def forward(self, a):
        return a.copy()

    def backward(self, g):
        return (g,)


class _Cast(Function):
    def forward(self, a, dtype):
        self.src = a.dtype
        return a.astype(dtype)

    def backward(self, g):
        return (g.astype(self.src),)


def _dim(d, ndim, op="dim"):
    """``d`` as an axis in [0, ndim) (a 0-d tensor takes 0 or -1, as in torch); out of range
    is an IndexError naming ``op`` (wrapping it around would reduce the wrong axis)."""
    n = max(ndim, 1)
    if not is_int(d):
        raise TypeError(f"{op}: dim must be an integer, got {type(d).__name__} {d!r}")
    if not -n <= d < n:
        raise IndexError(f"{op}: dim {d} is out of range (expected in [{-n}, {n - 1}])")
    return int(d) % n


def _axes(dim, ndim, op="reduction"):
    if dim is None:
        return None
    ax = tuple(_dim(d, ndim, op) for d in dim) if isinstance(dim, (tuple, list)) else (_dim(dim, ndim, op),)
    if ndim == 0:
        return None
    if len(set(ax)) != len(ax):
        raise ValueError(f"{op}: dim {dim} repeats an axis")
    return ax


class Sum(Function):
    def forward(self, a, dim=None, keepdim=False):
        self.shape, self.ax, self.keep = a.shape, _axes(dim, a.ndim, "sum"), keepdim
        return _xp.asarray(a.sum(axis=self.ax, keepdims=keepdim))

    def backward(self, g):
        if self.ax is not None and not self.keep:
            g = np.expand_dims(g, self.ax)
        return (np.broadcast_to(g, self.shape),)


class Mean(Function):
    def forward(self, a, dim=None, keepdim=False):
        self.shape, self.ax, self.keep = a.shape, _axes(dim, a.ndim, "mean"), keepdim
        self.n = a.size if self.ax is None else int(np.prod([a.shape[i] for i in self.ax]))
        return _xp.asarray(a.mean(axis=self.ax, keepdims=keepdim))

    def backward(self, g):
        if self.ax is not None and not self.keep:
            g = np.expand_dims(g, self.ax)
        return (np.broadcast_to(g / self.n, self.shape),)


class Max(Function):
    """max over axes; the gradient is split evenly between tied maxima (like torch's amax)."""
    saves_output = True

    reduce, name = staticmethod(np.max), "max"

    def forward(self, a, dim=None, keepdim=False):
        self.a, self.ax, self.keep = a, _axes(dim, a.ndim, self.name), keepdim
        if a.size == 0 and (self.ax is None or any(a.shape[i] == 0 for i in self.ax)):
            raise ValueError(f"{self.name}: the tensor has no elements (shape {a.shape})" if self.ax is None else
                             f"{self.name}: a reduced dim {dim} has size 0 (shape {a.shape})")
        self.m = self.reduce(a, axis=self.ax, keepdims=True)
        return _xp.asarray(self.m if keepdim else self.reduce(a, axis=self.ax))

    def backward(self, g):
        if self.ax is not None and not self.keep:
            g = np.expand_dims(g, self.ax)
        elif self.ax is None:
            g = np.reshape(g, (1,) * self.a.ndim)
        mask = self.a == self.m
        return (g * mask / mask.sum(axis=self.ax, keepdims=True),)


class Min(Max):
    """min over axes; the gradient is split evenly between tied minima (like torch's amin)."""

    reduce, name = staticmethod(np.min), "min"


def _along(idx, dim):
    """The index tuple that picks ``idx``'s entries along ``dim`` (other axes: their position)."""
    grids = list(np.ogrid[tuple(slice(n) for n in idx.shape)])
    grids[dim] = idx
    return tuple(grids)


class _Gather(Function):
    """out = take_along_axis(a, idx, dim); the gradient is scattered (added) back to idx."""

    def forward(self, a, idx, dim):
        self.shape, self.dtype = a.shape, a.dtype
        self.where = _along(idx, dim) if a.ndim else ()
        return _xp.asarray(a[self.where])

    def backward(self, g):
        out = np.zeros(self.shape, dtype=self.dtype)
        np.add.at(out, self.where, g)
        return (out,)


class Where(Function):
    def forward(self, a, b, cond):
        self.cond = cond
        self.sa, self.sb = a.shape, b.shape
        return np.where(cond, a, b)

    def backward(self, g):
        z = np.zeros((), dtype=g.dtype)
        return np.where(self.cond, g, z), np.where(self.cond, z, g)


class _Overwrite(Function):
    """old with ``old[idx] = src``: the gradient of the overwritten elements goes to src."""

    def forward(self, old, src, idx):
        self.idx = idx
        out = old.copy()
        out[idx] = src
        return out

    def backward(self, g):
        g_old = g.copy()
        g_old[self.idx] = 0
        return g_old, g[self.idx]


class Maximum(Function):
    """Elementwise maximum (NaN wins); torch's gradient: all to the larger input, half to each
    where they are equal."""

    op, loses = staticmethod(np.maximum), staticmethod(np.less)

    def forward(self, a, b):
        self.a, self.b = a, b
        return self.op(a, b)

    def backward(self, g):
        a, b = self.a, self.b
        z = np.zeros((), g.dtype)
        h = np.where(a == b, g * np.asarray(0.5, g.dtype), g)
        return np.where(self.loses(a, b), z, h), np.where(self.loses(b, a), z, h)


class Minimum(Maximum):
    """Elementwise minimum (NaN wins); ties split the gradient, as in torch."""

    op, loses = staticmethod(np.minimum), staticmethod(np.greater)


class Reshape(Function):
    def forward(self, a, shape):
        self.shape = a.shape
        return a.reshape(shape)

    def backward(self, g):
        return (g.reshape(self.shape),)


class Permute(Function):
    def forward(self, a, dims):
        if len(dims) != a.ndim:
            raise ValueError(f"permute: expected {a.ndim} dims, got {dims}")
        self.inv = tuple(np.argsort(dims))
        return a.transpose(dims)

    def backward(self, g):
        return (g.transpose(self.inv),)


class Expand(Function):
    def forward(self, a, shape):
        self.shape = a.shape
        shape = tuple(a.shape[i - (len(shape) - a.ndim)] if s == -1 else s for i, s in enumerate(shape))
        return np.broadcast_to(a, shape)

    def backward(self, g):
        return (_unbroadcast(g, self.shape),)


class Index(Function):
    def forward(self, a, idx):
        self.shape, self.dtype, self.idx = a.shape, a.dtype, idx
        return a[idx]

    def backward(self, g):
        out = np.zeros(self.shape, dtype=self.dtype)
        np.add.at(out, self.idx, g)
        return (out,)


class Cat(Function):
    def forward(self, *arrays, dim=0):
        self.dim = dim
        self.splits = np.cumsum([a.shape[dim] for a in arrays])[:-1]
        return np.concatenate(arrays, axis=dim)

    def backward(self, g):
        return tuple(np.split(g, self.splits, axis=self.dim))


class Stack(Function):
    def forward(self, *arrays, dim=0):
        self.dim = dim
        return np.stack(arrays, axis=dim)

    def backward(self, g):
        return tuple(np.moveaxis(g, self.dim, 0))


def _kc(a):
    """Arrays handed to C++ kernels must be C-contiguous (0-d arrays stay 0-d)."""
    a = _xp.asarray(a)
    return a if a.flags.c_contiguous else _xp.contiguous(a)


class _ToDevice(Function):
    """Tensor.to(device): a copy on the other device; the gradient is copied back."""

    def forward(self, a, device):
        self.src = _xp.device_of(a)
        return _xp.to_device(a, device)

    def backward(self, g):
        return (_xp.to_device(g, self.src),)


class MatMul(Function):
    """Batched matmul with broadcasting of leading dims (1-D operands as in NumPy)."""

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("matmul: both arguments need at least 1 dimension")
        ka = a.shape[-1]
        kb = b.shape[-2] if b.ndim >= 2 else b.shape[0]
        if ka != kb:
            raise ValueError(f"matmul: shape mismatch, {a.shape} @ {b.shape} "
                             f"(inner dimensions {ka} and {kb} differ)")
        self.a, self.b = a, b
        # autocast: bf16 operands, float32 sums (2-D on the bf16 kernel; other shapes round the
        # operands to bf16 and multiply in float32: the same function, another summation order)
        self.bf16 = _amp.is_autocast_enabled() and a.dtype == b.dtype == np.float32
        if a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype and a.dtype.kind == "f":
            return (K.matmul_bf16 if self.bf16 else K.matmul)(_kc(a), _kc(b))
        if self.bf16:
            return np.matmul(K.round_bf16(a), K.round_bf16(b))
        return np.matmul(a, b)

    def backward(self, g):
        a, b = self.a, self.b
        if a.ndim == 1 and b.ndim == 1:  # a dot product: g is 0-d
            return g * b, g * a
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = np.expand_dims(g2, -2)
        if b.ndim == 1:
            g2 = np.expand_dims(g2, -1)
        if a2.ndim == 2 and b2.ndim == 2 and g2.dtype == a2.dtype == b2.dtype and a2.dtype.kind == "f":
            g2c = _kc(g2)
            mm = K.matmul_bf16 if self.bf16 else K.matmul   # the backward's products in the forward's precision
            da = mm(g2c, _kc(b2), trans_b=True)
            db = mm(_kc(a2), g2c, trans_a=True)
        elif self.bf16:
            g2, a2, b2 = K.round_bf16(g2), K.round_bf16(a2), K.round_bf16(b2)
            da = g2 @ np.swapaxes(b2, -1, -2)
            db = np.swapaxes(a2, -1, -2) @ g2
        else:
            da = g2 @ np.swapaxes(b2, -1, -2)
            db = np.swapaxes(a2, -1, -2) @ g2
        da = _unbroadcast(da, a2.shape)
        db = _unbroadcast(db, b2.shape)
        if a.ndim == 1:
            da = da[0]
        if b.ndim == 1:
            db = db[:, 0]
        return da, db


class Relu(Function):
    def forward(self, x):
        self.x = _kc(x)
        return K.relu_forward(self.x)

    def backward(self, g):
        return (K.relu_backward(_kc(g), self.x),)


class Sigmoid(Function):
    saves_output = True

    def forward(self, x):
        self.y = K.sigmoid_forward(_kc(x))
        return self.y

    def backward(self, g):
        return (K.sigmoid_backward(_kc(g), self.y),)


class Tanh(Function):
    saves_output = True

    def forward(self, x):
        self.y = K.tanh_forward(_kc(x))
        return self.y

    def backward(self, g):
        return (K.tanh_backward(_kc(g), self.y),)


class Gelu(Function):
    """Recorded for backward, the forward also computes gelu'(x) (sharing the erf/exp work) and
    saves it instead of x: the backward is one multiply. (CUDA arrays: x and gelu_backward.)"""
    wants_recording = True
    recording = True

    def forward(self, x, approximate="none"):
        x = _kc(x)
        if self.recording and type(x) is np.ndarray:
            y, self.dydx = K.gelu_forward_with_grad(x, approximate)
            return y
        self.x, self.ap, self.dydx = x, approximate, None
        return K.gelu_forward(x, approximate)

    def backward(self, g):
        if self.dydx is not None:
            return (K.gelu_backward_from_grad(_kc(g), self.dydx),)
        return (K.gelu_backward(_kc(g), self.x, self.ap),)


class _LastAxis(Function):
    """Base for softmax/log_softmax over ``dim``: moves dim to the last axis for the kernel."""
    saves_output = True

    fwd = bwd = None

    def forward(self, x, dim=-1):
        name = type(self).__name__.replace("LogSoftmax", "log_softmax").replace("Softmax", "softmax")
        if x.ndim == 0 or not -x.ndim <= dim < x.ndim:
            raise ValueError(f"{name}: dim {dim} is out of range for an input of shape {x.shape}")
        self.dim = dim % x.ndim
        xm = _kc(np.moveaxis(x, self.dim, -1))
        self.y = type(self).fwd(xm)
        return np.moveaxis(self.y, -1, self.dim)

    def backward(self, g):
        gm = _kc(np.moveaxis(g, self.dim, -1))
        return (np.moveaxis(type(self).bwd(gm, self.y), -1, self.dim),)


class Softmax(_LastAxis):
    fwd = staticmethod(lambda x: K.softmax_forward(x))
    bwd = staticmethod(lambda g, y: K.softmax_backward(g, y))


class LogSoftmax(_LastAxis):
    fwd = staticmethod(lambda x: K.log_softmax_forward(x))
    bwd = staticmethod(lambda g, y: K.log_softmax_backward(g, y))


# ----- functional helpers (composites and wrappers) -----
def exp(x): return Exp.apply(x)
def log(x): return Log.apply(x)
def sqrt(x): return Sqrt.apply(x)
def abs_(x): return Abs.apply(x)
def clamp(x, min=None, max=None): return Clamp.apply(x, lo=min, hi=max)
def softmax(x, dim=-1): return Softmax.apply(x, dim=dim)
def log_softmax(x, dim=-1): return LogSoftmax.apply(x, dim=dim)
def matmul(a, b): return MatMul.apply(a, b)


def maximum(input, other):
    """Elementwise maximum of ``input`` and ``other`` (broadcast, dtypes promoted as in torch;
    either may be a number). NaN wins; where the two are equal each gets half the gradient."""
    return _binary(Maximum, input, other)


def minimum(input, other):
    """Elementwise minimum (see ``maximum``)."""
    return _binary(Minimum, input, other)


def cat(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: expected a non-empty sequence of tensors")
    return Cat.apply(*tensors, dim=_dim(dim, tensors[0].ndim, "cat"))


def stack(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: expected a non-empty sequence of tensors")
    return Stack.apply(*tensors, dim=_dim(dim, tensors[0].ndim + 1, "stack"))


def split(x, split_size_or_sections, dim=0):
    if x.ndim == 0:
        raise ValueError("split: a 0-d tensor cannot be split")
    dim = _dim(dim, x.ndim, "split")
    n = x.shape[dim]
    if isinstance(split_size_or_sections, int) and split_size_or_sections <= 0:
        raise ValueError(f"split: split_size must be positive, got {split_size_or_sections}")
    if isinstance(split_size_or_sections, int):
        sizes = [split_size_or_sections] * (n // split_size_or_sections)
        if n % split_size_or_sections:
            sizes.append(n % split_size_or_sections)
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise ValueError(f"split: sections {sizes} do not sum to dimension size {n}")
    out, start = [], 0
    for s in sizes:
        sl = [slice(None)] * x.ndim
        sl[dim] = slice(start, start + s)
        out.append(x[tuple(sl)])
        start += s
    return tuple(out)
