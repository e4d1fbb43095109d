"""``fusegrad.autocast``: mixed precision, PyTorch's way (``torch.autocast("cpu", dtype=torch.bfloat16)``).

Inside ``with fusegrad.autocast("bfloat16"):`` the matrix products of linear layers, of fused
attention (``F.scaled_dot_product_attention``, GPT's attention: q, k, v, dO, P and dS rounded to bf16,
softmax statistics float32) and of ``Tensor @ Tensor`` (any shape; 2-D on the kernel, others with the operands rounded to bf16 and
multiplied in float32) take bfloat16 operands with float32 accumulation (``ops.matmul_bf16``: the
AVX512_BF16 kernel where the CPU has it, the same rounding emulated on the float32 GEMM elsewhere),
forward and backward. Everything else stays float32: layer norm statistics, softmax,
cross-entropy, the loss and the optimizer; parameters and their gradients stay float32 (master
weights), so no loss scaling is needed. The operands are converted to bf16 inside the kernel, once
per product (no bf16 copies in memory between ops). ``enabled=False`` turns it off; contexts nest;
the state is per thread, like torch's.
"""
from __future__ import annotations

import contextlib
import threading

__all__ = ["autocast", "is_autocast_enabled", "get_autocast_dtype"]

_state = threading.local()
_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16"}


def _stack():
    s = getattr(_state, "stack", None)
    if s is None:
        s = _state.stack = []
    return s


def is_autocast_enabled() -> bool:
    """True inside an enabled :class:`autocast` region (in this thread)."""
    s = _stack()
    return bool(s) and s[-1] is not None


def get_autocast_dtype() -> str:
    """The low-precision dtype of the innermost enabled region ('bfloat16')."""
    return "bfloat16"


class autocast(contextlib.ContextDecorator):
    """``with fusegrad.autocast("bfloat16"):`` around the forward pass (and loss). The backward pass
    of the ops recorded inside uses the same precision, wherever ``backward()`` is called."""

    def __init__(self, dtype="bfloat16", enabled: bool = True):
        name = getattr(dtype, "__name__", None) or str(dtype)
        name = name.replace("torch.", "")
        if name not in _DTYPES:
            raise ValueError(f"autocast: dtype must be 'bfloat16' (the only low precision with CPU kernels; float16 "
                             f"attention runs on CUDA arrays with fusegrad.ops.attention_*(fp16=True)), got {dtype!r}")
        if not isinstance(enabled, bool):
            raise TypeError(f"autocast: enabled must be a bool, got {type(enabled).__name__}")
        self.dtype, self.enabled = _DTYPES[name], enabled

    def __enter__(self):
        _stack().append(self.dtype if self.enabled else None)
        return self

    def __exit__(self, *exc):
        _stack().pop()
        return False
