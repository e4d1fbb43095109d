"""The kernel API on raw arrays: ``fusegrad.ops.<op>_forward`` / ``<op>_backward``: the drop-in backend.

Every function validates its arguments (``TypeError`` for dtypes, ``ValueError`` for shapes
and values, each message naming the argument) and runs a C++ kernel (``fusegrad._C``) with the
GIL released. Kernels compute in float32 or float64 on C-contiguous memory.

Arguments may be any array that speaks DLPack or the array interface, not only NumPy:

* ``numpy.ndarray`` goes straight to the kernel (fast path: the wrapper adds one Python call);
* ``torch.Tensor`` on the CPU is viewed with ``numpy.from_dlpack`` (no copy), and results come
  back as ``torch.Tensor`` sharing the kernel's output memory (``torch.from_numpy``). Tensors
  that require grad are detached (these are raw kernels; :mod:`fusegrad.torch` has the autograd
  ops). A non-contiguous input is copied to a contiguous one; a non-contiguous argument that the
  kernel updates in place (``param``/``m``/``v``/``momentum_buf`` of the optimizer steps,
  ``out`` of ``matmul``) is rejected, since an update written into a copy would be lost;
* other objects with ``__dlpack__`` / ``__array_interface__`` / the buffer protocol are viewed
  with NumPy (no copy) and give NumPy results;
* CUDA arrays (CuPy, CUDA tensors) are routed to the CUDA module ``fusegrad._cuda``; an install
  without it raises ``RuntimeError`` saying so.

>>> import numpy as np, fusegrad.ops as ops
>>> ops.relu_forward(np.array([-1.0, 2.0], dtype=np.float32))
array([0., 2.], dtype=float32)
"""
from __future__ import annotations

import re

import numpy as np

from . import _C

_CONFIG = {
    "get_num_threads", "set_num_threads", "have_openmp", "cpu_has_avx2", "avx2_compiled",
    "isas_compiled", "isas_supported", "best_isa", "cpu_model", "isa_env_note", "bf16_path", "cpu_has_avx512_bf16",
    "cpu_has_amx_bf16", "set_bf16_kernel", "bf16_kernel_setting", "bf16_kernels_available", "bf16_env_note",
    "get_isa", "set_isa", "peak_fma_gflops", "copy_bandwidth_gbs", "sanitized", "empty_cache", "memory_stats",
}

__all__ = sorted(n for n in dir(_C) if not n.startswith("_") and n not in _CONFIG)

#: arguments each kernel writes in place: never silently replaced by a contiguous copy
INPLACE = {
    "sgd_step": ("param", "momentum_buf"),
    "adamw_step": ("param", "m", "v"),
    "adam_step": ("param", "m", "v"),
    "matmul": ("out",),
}

#: keyword arguments that only the CUDA kernels take (fusegrad.cuda): on CPU arrays False is
#: dropped and True is a TypeError saying so
CUDA_ONLY = {n: ("fp16",) for n in ("attention_forward", "attention_backward", "attention_qkv_forward",
                                    "attention_qkv_backward")}

# Argument types that go to the kernel unchanged (the NumPy fast path).
_PLAIN = frozenset({np.ndarray, float, int, bool, str, type(None),
                    np.float32, np.float64, np.int32, np.int64, np.bool_})

_DL_CPU, _DL_CUDA_HOST = 1, 3  # DLPack device types NumPy can read


def _param_names(f):
    """Argument names of a pybind11 function, from the signature line of its docstring."""
    line = (f.__doc__ or "").splitlines()[0] if f.__doc__ else ""
    return re.findall(r"[(,] ?(\w+):", line)


class _Converted:
    """The NumPy views of one call's arguments, and what the caller passed."""
    __slots__ = ("kind", "cuda", "orig_of")

    def __init__(self):
        self.kind = None      # "torch" when a torch.Tensor was passed: results become tensors
        self.cuda = None      # description of the first CUDA argument, if any
        self.orig_of = {}     # id(numpy view) -> caller's object, for in-place args returned as-is


def _type_name(a):
    t = type(a)
    return f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__


def _to_numpy(a, fn, name, inplace, cv):
    """View one argument as a numpy.ndarray without copying (when it is contiguous)."""
    t = type(a)
    if t in _PLAIN or isinstance(a, np.ndarray):
        return a
    caller = a
    mod = t.__module__
    if mod.startswith("torch"):
        if a.device.type != "cpu":
            cv.cuda = cv.cuda or f"{name}: torch.Tensor on {a.device}"
            return a
        cv.kind = cv.kind or "torch"
        if a.requires_grad:
            a = a.detach()
        if not a.is_contiguous():
            if inplace:
                raise ValueError(
                    f"{fn}: {name} is a non-contiguous torch.Tensor (shape {tuple(a.shape)}, strides "
                    f"{a.stride()}) that is updated in place; pass a contiguous tensor (a copy made "
                    f"with .contiguous() would not receive the update)")
            a = a.contiguous()
        try:
            out = np.from_dlpack(a)
        except (BufferError, TypeError, RuntimeError) as e:
            raise TypeError(f"{fn}: {name} must be a tensor NumPy can view (float32, float64, int32 "
                            f"or int64), got torch.Tensor of dtype {a.dtype}") from e
        if inplace:
            cv.orig_of[id(out)] = caller
        return out
    if mod.startswith("cupy"):
        cv.cuda = cv.cuda or f"{name}: {_type_name(a)}"
        return a
    if hasattr(a, "__dlpack_device__"):
        dev = a.__dlpack_device__()[0]
        if dev not in (_DL_CPU, _DL_CUDA_HOST):
            cv.cuda = cv.cuda or f"{name}: {_type_name(a)} on DLPack device type {dev}"
            return a
        out = np.from_dlpack(a)
    elif hasattr(a, "__array_interface__") or hasattr(a, "__array_struct__") or isinstance(a, memoryview):
        out = np.asarray(a)
    else:
        return a  # lists, scalars of other types: the kernel's own check names them
    if not out.flags.c_contiguous:
        if inplace:
            raise ValueError(f"{fn}: {name} is a non-contiguous {_type_name(a)} that is updated in "
                             f"place; pass a contiguous array")
        out = np.ascontiguousarray(out)
    if inplace:
        cv.orig_of[id(out)] = caller
    return out


def _from_numpy(r, cv):
    """Give results back in the caller's array type (torch.Tensor for torch callers, no copy)."""
    if isinstance(r, tuple):
        return tuple(_from_numpy(x, cv) for x in r)
    if isinstance(r, np.ndarray):
        orig = cv.orig_of.get(id(r))
        if orig is not None:  # an in-place argument handed back (matmul's out)
            return orig
        if cv.kind == "torch":
            import torch
            return torch.from_numpy(r)
    return r


def _cuda_call(name, cv, args, kwargs):
    """CUDA arrays go to fusegrad.cuda's function of the same name (fusegrad._cuda's kernels,
    built only where a CUDA compiler was found), on the caller's current CuPy stream."""
    from . import cuda as _cu

    f = getattr(_cu, name, None) if name in _cu.OPS else None
    if f is None or not _cu.is_available():
        why = (f"fusegrad.cuda has no kernel for {name}" if f is None else _cu.unavailable_reason())
        raise RuntimeError(f"{name}: got a CUDA array ({cv.cuda}), but {why}; pass CPU arrays, or install "
                           f"fusegrad with a CUDA compiler on a machine with a GPU (fusegrad.cuda.is_available())")
    import cupy  # the CUDA module's array type

    torch_out = any(type(a).__module__.startswith("torch") for a in (*args, *kwargs.values()))

    def dev(a):
        if isinstance(a, cupy.ndarray) or isinstance(a, np.ndarray):
            return a
        if hasattr(a, "__cuda_array_interface__"):
            return cupy.asarray(a)
        return cupy.from_dlpack(a) if hasattr(a, "__dlpack__") else a

    r = f(*map(dev, args), **{k: dev(v) for k, v in kwargs.items()})
    if torch_out:
        import torch
        conv = lambda x: torch.from_dlpack(x) if isinstance(x, cupy.ndarray) else x  # noqa: E731
        r = tuple(map(conv, r)) if isinstance(r, tuple) else conv(r)
    return r


def _cpu_kwargs(name, kwargs):
    """kwargs for a CPU kernel: CUDA_ONLY flags that are False dropped, True ones an error."""
    for k in CUDA_ONLY.get(name, ()):
        if k in kwargs and kwargs[k]:
            raise TypeError(f"{name}: {k}=True runs only on CUDA arrays (fusegrad.cuda's {k} tensor-core kernels); "
                            f"the CPU kernels take bf16=True for mixed precision")
    return {k: v for k, v in kwargs.items() if k not in CUDA_ONLY.get(name, ())}


def _call_foreign(name, f, params, inplace, args, kwargs):
    cv = _Converted()
    nargs = []
    for i, a in enumerate(args):
        pname = params[i] if i < len(params) else f"argument {i}"
        nargs.append(_to_numpy(a, name, pname, pname in inplace, cv))
    nkw = {k: _to_numpy(v, name, k, k in inplace, cv) for k, v in kwargs.items()}
    if cv.cuda is not None:
        if cv.kind is not None or any(isinstance(a, np.ndarray) for a in (*nargs, *nkw.values())):
            raise ValueError(f"{name}: all arrays must be on one device; got a CUDA array "
                             f"({cv.cuda}) mixed with CPU arrays")
        return _cuda_call(name, cv, args, kwargs)
    return _from_numpy(f(*nargs, **_cpu_kwargs(name, nkw)), cv)


def _all_plain(args, kwargs):
    return all(type(a) in _PLAIN or isinstance(a, np.ndarray) for a in (*args, *kwargs.values()))


def _wrap(name, f):
    params = _param_names(f)
    inplace = INPLACE.get(name, ())

    def op(*args, **kwargs):
        # Fast path: NumPy arguments go straight to the kernel, which type-checks them anyway;
        # only a TypeError caused by a foreign array type sends the call through the converters.
        try:
            return f(*args, **kwargs)
        except TypeError:
            if _all_plain(args, kwargs):
                if name in CUDA_ONLY and any(k in kwargs for k in CUDA_ONLY[name]):
                    return f(*args, **_cpu_kwargs(name, kwargs))
                raise
        return _call_foreign(name, f, params, inplace, args, kwargs)

    op.__name__ = op.__qualname__ = name
    op.__module__ = __name__
    op.__doc__ = f.__doc__
    op.kernel = f  # the raw binding: numpy.ndarray arguments only, no conversion
    return op


globals().update({n: _wrap(n, getattr(_C, n)) for n in __all__})
