"""fusegrad.torch on CUDA tensors: PyTorch's CUDA tensors run on fusegrad._cuda's kernels.

:func:`route` decides, from devices, dtypes and sizes alone (so it is tested without a GPU),
whether a call can run here; ``fusegrad.torch`` counts its reason in ``fallback_counts`` when not.
The autograd Functions below hand the tensors' memory to the launchers as raw device pointers
(``data_ptr()``; non-contiguous inputs are copied first), allocate outputs with ``torch.empty`` on
the tensors' device and launch on **torch's current stream**, so they order with the rest of
the model's work exactly as PyTorch's own ops do. No CuPy is involved.

float32 for layer norm, GELU and cross-entropy (our kernels are float32); float32, bfloat16 and
float16 for attention (bf16, fp16: the tensor-core kernels of attention_tc.cu; fp16 at head sizes
64 and 128 only, others go to PyTorch); float32, float16 and bfloat16 for
linear (cuBLASLt, float32 sums, bias and bias-gradient epilogues).
"""
from __future__ import annotations

import math

import torch

from . import cuda as _cu

#: ops routed here, and the dtypes each runs
DTYPES = {
    "layer_norm": (torch.float32,),
    "gelu": (torch.float32,),
    "cross_entropy": (torch.float32,),
    "scaled_dot_product_attention": (torch.float32, torch.bfloat16, torch.float16),
    "linear": (torch.float32, torch.float16, torch.bfloat16),
}
_LT_NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_TC_D = (64, 128)  # head sizes of the tensor-core attention kernels (attention_tc_supported)


def route(name, tensors, also=(), *, available=None, current_device=None, cublaslt=None) -> str:
    """'' when fusegrad._cuda runs op ``name`` on these tensors, else the reason it does not.

    ``tensors``: the floating-point operands (one dtype); ``also``: further tensors that must be on
    the same GPU (integer targets). The keyword arguments stand in for the machine in the tests:
    ``available`` (fusegrad.cuda.is_available()), ``current_device`` (torch's current CUDA device
    index) and ``cublaslt`` (whether products go to cuBLASLt)."""
    devs = [t.device for t in (*tensors, *also)]
    if any(d.type != "cuda" for d in devs):
        return "device"
    if len({d.index for d in devs}) > 1:
        return "device"  # tensors on two GPUs: PyTorch's op raises its own error
    if not (_cu.is_available() if available is None else available):
        return "cuda: fusegrad.cuda is not available"
    cur = torch.cuda.current_device() if current_device is None else current_device
    if devs[0].index not in (None, cur):
        return "cuda: not the current device"
    dt = tensors[0].dtype
    if any(t.dtype != dt for t in tensors) or dt not in DTYPES[name]:
        return "cuda: dtype"
    if any(t.numel() == 0 for t in tensors):
        return "cuda: empty"
    if name == "scaled_dot_product_attention" and dt == torch.float16 and tensors[0].shape[-1] not in _TC_D:
        return "cuda: fp16 head size"  # the fp16 kernels are the tensor-core ones only
    if name == "linear" and not (_cu._use_lt() if cublaslt is None else cublaslt):
        return "cuda: cuBLASLt is not loaded"
    return ""


def _c(t):
    return t if t.is_contiguous() else t.contiguous()


def _p(t):
    return 0 if t is None else t.data_ptr()


def _s():
    return torch.cuda.current_stream().cuda_stream


def _k():
    return _cu._cuda


def _empty(shape, like, dtype=None):
    return torch.empty(shape, device=like.device, dtype=like.dtype if dtype is None else dtype)


# ----------------------------------------------------------------- layer norm
def double_backward_message(op):
    """Why a backward run with grad mode on (create_graph=True) through op's kernels raises (also
    raised by the C++ backwards of fusegrad.torch's eager Functions)."""
    return (f"fusegrad.torch.{op}: double backward (create_graph=True) through fusegrad's kernels is not "
            f"supported: their backward is not differentiable. fusegrad.torch.set_policy('torch', ops="
            f"{['gelu', 'gelu_tanh'] if op == 'gelu' else op!r}) runs PyTorch's op, which supports it.")


def first_order_only(backward, op):
    """A Function's backward (a staticmethod's function) that refuses a double backward: fusegrad's
    backward kernels are not differentiable, so with create_graph=True (grad mode on inside the
    backward) the result would silently lack the node's second-order terms. It raises instead,
    naming the op; the usual backward (grad mode off) pays one grad-mode check."""
    def run(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(double_backward_message(op))
        return backward(ctx, *grads)
    return staticmethod(run)


class LayerNorm(torch.autograd.Function):
    """x (N, C); weight, bias (C,) or None."""

    @staticmethod
    def forward(ctx, x, w, b, eps):
        x, w, b = _c(x), None if w is None else _c(w), None if b is None else _c(b)
        N, C = x.shape
        y, mean, rstd = _empty((N, C), x), _empty((N,), x), _empty((N,), x)
        _k().layernorm_forward(_p(y), _p(mean), _p(rstd), _p(x), _p(w), _p(b), N, C, float(eps), _s())
        ctx.save_for_backward(x, w, mean, rstd)
        ctx.has_w, ctx.has_b = w is not None, b is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, mean, rstd = ctx.saved_tensors
        dy = _c(dy)
        N, C = x.shape
        dx, dw, db = _empty((N, C), x), _empty((C,), x), _empty((C,), x)
        work = _empty((max(1, _k().layernorm_workspace_floats(N, C)),), x)
        _k().layernorm_backward(_p(dx), _p(dw), _p(db), _p(work), _p(dy), _p(x), _p(w), _p(mean), _p(rstd), N, C,
                                _s())
        return dx, (dw if ctx.has_w else None), (db if ctx.has_b else None), None


# ----------------------------------------------------------------- GELU
class Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, approximate):
        x = _c(x)
        kind = "gelu_tanh" if approximate == "tanh" else "gelu_erf"
        y = torch.empty_like(x)
        _k().act_forward(kind, _p(y), _p(x), x.numel(), _s())
        ctx.save_for_backward(x)
        ctx.kind = kind
        return y

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        dy = _c(dy)
        dx = torch.empty_like(x)
        _k().act_backward(ctx.kind, _p(dx), _p(dy), _p(x), x.numel(), _s())
        return dx, None


# ----------------------------------------------------------------- cross-entropy
def _check_targets(targets, V, ignore_index):
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
    if bool(bad.any()):  # one sync: a wrong target must not read outside a row
        r = int(bad.nonzero()[0, 0])
        raise ValueError(f"cross_entropy: target[{r}] = {int(targets[r])} is out of range [0, {V}) and is not "
                         f"ignore_index ({ignore_index})")


class CrossEntropy(torch.autograd.Function):
    """logits (N, V) float32, targets (N,) int32/int64; the mean over non-ignored rows."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        logits, targets = _c(logits), _c(targets)
        N, V = logits.shape
        _check_targets(targets, V, ignore_index)
        loss, lse, work = _empty((), logits), _empty((N,), logits), _empty((max(N, 1),), logits)
        t64 = targets.dtype == torch.int64
        _k().cross_entropy_forward(_p(loss), _p(lse), _p(work), _p(targets), t64, int(ignore_index), _p(logits),
                                   N, V, _s())
        ctx.save_for_backward(logits, targets, lse)
        ctx.ignore_index = ignore_index
        return loss

    @staticmethod
    def backward(ctx, dloss):
        logits, targets, lse = ctx.saved_tensors
        N, V = logits.shape
        count = int((targets != ctx.ignore_index).sum())
        dl = torch.empty_like(logits)
        _k().cross_entropy_backward(_p(dl), _p(logits), _p(targets), targets.dtype == torch.int64, _p(lse),
                                    float(dloss), count, int(ctx.ignore_index), N, V, _s())
        return dl, None, None


# ----------------------------------------------------------------- attention
def _heads(t):
    _, H, T, D = t.shape
    return (H * T * D, T * D, D)


class Attention(torch.autograd.Function):
    """q (B, H, T, D), k, v (B, Hkv, S, D); causal masks aligned bottom-right (callers route
    is_causal only where T == S, where that is PyTorch's top-left mask too). float32; bfloat16 or
    float16: the tensor-core kernels of that type (attention_tc.cu: the CPU's bf16=True arithmetic,
    or its fp16 twin, on the float32 values the tensors hold) where they take D (route sends fp16
    only there), else (bf16) the float32 kernels; outputs and gradients in the inputs' dtype."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        dt = q.dtype
        q, k, v = (_c(t.float()) for t in (q, k, v)) if dt != torch.float32 else (_c(q), _c(k), _c(v))
        B, H, T, D = q.shape
        Hkv, S = k.shape[1], k.shape[2]
        scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        tc = "" if dt == torch.float32 or not _k().attention_tc_supported(D) else (
            "_fp16" if dt == torch.float16 else "_bf16")
        o, lse = torch.empty_like(q), _empty((B, H, T), q)
        fwd = {"": _k().attention_forward, "_bf16": _k().attention_forward_tc,
               "_fp16": _k().attention_forward_tc_fp16}[tc]
        fwd(_p(o), _heads(o), _p(lse), _p(q), _heads(q), _p(k), _heads(k), _p(v), _heads(v), B, H, Hkv, T, S, D,
            bool(causal), scale, _s())
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale, ctx.dt, ctx.tc = bool(causal), scale, dt, tc
        return o.to(dt)

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        do = _c(do.float())
        B, H, T, D = q.shape
        Hkv, S = k.shape[1], k.shape[2]
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        work = _empty((B * H * T + 1,), q)  # delta per row, then fp16's max |dO|
        bwd = {"": _k().attention_backward, "_bf16": _k().attention_backward_tc,
               "_fp16": _k().attention_backward_tc_fp16}[ctx.tc]
        bwd(_p(dq), _heads(dq), _p(dk), _heads(dk), _p(dv), _heads(dv), _p(work), _p(do), _heads(do), _p(q), _heads(q),
            _p(k), _heads(k), _p(v), _heads(v), _p(o), _heads(o), _p(lse), B, H, Hkv, T, S, D, ctx.causal, ctx.scale,
            _s())
        return dq.to(ctx.dt), dk.to(ctx.dt), dv.to(ctx.dt), None, None


# ----------------------------------------------------------------- linear
def _gemm(d, a, b, ta, tb, M, N, K, dt, epi="none", bias=None, dbias=None):
    return _cu._lt_gemm(_p(d), _p(a), _p(b), ta, tb, M, N, K, ab=dt, cd=dt, epi=epi, bias=_p(bias), dbias=_p(dbias),
                        stream=_s())


class Linear(torch.autograd.Function):
    """x (N, K), w (O, K), b (O,) or None: y = x w^T + b in one cuBLASLt call (bias epilogue);
    backward: dx = dy w, dw = dy^T x with db from its BGRADB epilogue. A product cuBLASLt has no
    algorithm for (counted in fusegrad.cuda.matmul_counts) runs on torch.matmul instead."""

    @staticmethod
    def forward(ctx, x, w, b):
        x, w, b = _c(x), _c(w), None if b is None else _c(b)
        N, K = x.shape
        O = w.shape[0]
        dt = _LT_NAME[x.dtype]
        y = _empty((N, O), x)
        if not _gemm(y, x, w, False, True, N, O, K, dt, "bias" if b is not None else "none", bias=b):
            y = torch.addmm(b, x, w.t()) if b is not None else x @ w.t()
        ctx.save_for_backward(x, w)
        ctx.has_b = b is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dy = _c(dy)
        N, K = x.shape
        O = w.shape[0]
        dt = _LT_NAME[x.dtype]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _empty((N, K), x)
            if not _gemm(dx, dy, w, False, False, N, K, O, dt):
                dx = dy @ w
        if ctx.needs_input_grad[1]:
            dw = _empty((O, K), w)
            if ctx.has_b:
                db = _empty((O,), w)
            if not _gemm(dw, dy, x, True, False, O, K, N, dt, "bgradb" if ctx.has_b else "none", dbias=db):
                dw = dy.t() @ x
                db = None
        if ctx.has_b and db is None and ctx.needs_input_grad[2]:
            db = dy.sum(0, dtype=torch.float32).to(dy.dtype)
        return dx, dw, (db if ctx.has_b else None)


# ----------------------------------------------------------------- AdamW
def adamw_step(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay) -> str:
    """One fused AdamW update of p, m, v in place on the GPU; '' when done, else why it cannot run."""
    if p.numel() == 0:
        return ""
    why = route("layer_norm", (p, g, m, v))  # the float32-only rule of the kernels
    if why:
        return why
    if not all(t.is_contiguous() for t in (p, g, m, v)):
        return "non-contiguous parameter or state (updated in place)"
    _k().adam_step(_p(p), _p(m), _p(v), _p(g), p.numel(), int(step), lr, beta1, beta2, eps, weight_decay, True, _s())
    return ""


for _op, _fn in (("layer_norm", LayerNorm), ("gelu", Gelu), ("cross_entropy", CrossEntropy),
                 ("scaled_dot_product_attention", Attention), ("linear", Linear)):
    _fn.backward = first_order_only(_fn.backward, _op)
