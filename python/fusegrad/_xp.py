"""Which array module holds a tensor's data: NumPy (device "cpu") or CuPy (device "cuda").

The autograd layer computes with whatever module the data comes from: ``xp(a)`` is ``cupy`` for
a CuPy array and ``numpy`` otherwise, so a Function written as ``xp(a).exp(a)`` (or with NumPy
ufuncs, which CuPy arrays take over through ``__array_ufunc__``) runs on either device. CuPy is
imported only when a tensor is moved to the GPU (``to_device``); until then every check here is
one ``type(a) is numpy.ndarray`` test, so the CPU path pays nothing measurable.
"""
from __future__ import annotations

import numpy as np

#: set once the first array has been moved to a GPU: only then can CuPy arrays reach the tensors
cuda_used = False


def is_cuda(a) -> bool:
    t = type(a)
    return t is not np.ndarray and t.__module__.startswith("cupy")


def xp(a):
    """The array module of ``a``: cupy for a CuPy array, numpy for anything else."""
    if is_cuda(a):
        import cupy
        return cupy
    return np


def device_of(a) -> str:
    return "cuda" if is_cuda(a) else "cpu"


def asarray(a, dtype=None):
    """``numpy.asarray`` that leaves a CuPy array on its GPU (cast to ``dtype`` there)."""
    if is_cuda(a):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    return np.asarray(a, dtype=dtype)


def contiguous(a, dtype=None):
    """``numpy.ascontiguousarray`` on either device (0-d arrays stay 0-d)."""
    if is_cuda(a):
        import cupy
        return cupy.ascontiguousarray(a, dtype=dtype)
    return np.ascontiguousarray(a, dtype=dtype)


def like(a, ref):
    """``a`` (an array or scalar) on ``ref``'s device: copied to or from the GPU when they differ."""
    if is_cuda(ref):
        if is_cuda(a):
            return a
        import cupy
        return cupy.asarray(a)
    return a.get() if is_cuda(a) else a


def _require_cuda(what: str):
    from . import cuda
    if not cuda.is_available():
        raise RuntimeError(f"{what}: CUDA is not available here: {cuda.unavailable_reason()} "
                           f"(fusegrad.cuda.is_available() is False)")


def is_dtype_name(s: str) -> bool:
    """Whether the string ``s`` names a NumPy dtype (else .to() takes it for a device name)."""
    try:
        np.dtype(s)
    except TypeError:
        return False
    return True


def parse_device(device, what: str) -> str:
    """'cpu' or 'cuda' from a device name ('cuda:0' is the current GPU); other names are refused."""
    name = str(device)
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise RuntimeError(f"{what}: device {device!r} is not available: fusegrad runs on 'cpu' and 'cuda' "
                           f"(or 'cuda:N')")
    if kind == "cuda":
        _require_cuda(what)
        if index:
            import cupy
            if int(index) != cupy.cuda.Device().id:
                raise ValueError(f"{what}: device {name!r} is not the current GPU ({cupy.cuda.Device().id}); "
                                 f"select it with cupy.cuda.Device({index}).use()")
    return kind


def to_device(a, kind: str):
    """``a`` on device ``kind`` ('cpu' or 'cuda', checked by parse_device): a copy when it moves."""
    global cuda_used
    if kind == "cuda":
        if is_cuda(a):
            return a
        import cupy
        cuda_used = True
        return cupy.asarray(a)
    return a.get() if is_cuda(a) else a


def common_device(arrays, tensor_flags, what: str):
    """The arrays of one op on one device. A CUDA array among them moves plain NumPy constants
    (0-d tensors, index arrays passed as arguments) to the GPU; a CPU tensor with dimensions
    meeting a CUDA tensor is an error, as in torch."""
    if not any(is_cuda(a) for a in arrays):
        return arrays
    out = []
    for a, is_tensor in zip(arrays, tensor_flags):
        if isinstance(a, np.ndarray):
            if is_tensor and a.ndim:
                raise RuntimeError(f"{what}: expected all tensors on one device, got a CPU tensor of shape "
                                   f"{a.shape} with a CUDA tensor; move it with .to('cuda') (or the other .cpu())")
            import cupy
            a = cupy.asarray(a)
        out.append(a)
    return out
