"""``fusegrad.cuda``: the CUDA path (``fusegrad._cuda``, built where CMake found ``nvcc``).

:func:`is_available` says whether it can run here (the module is built, CuPy imports, and a GPU and
driver answer). The functions below have the names, arguments and results of :mod:`fusegrad.ops`
and take CuPy arrays (``fusegrad.ops`` sends CUDA arrays here: CuPy, anything with
``__cuda_array_interface__`` or a CUDA DLPack capsule); they return CuPy arrays allocated on the
caller's current CuPy stream and launch on that stream. float32 throughout (attention also with
bfloat16 or float16 tensor-core products: ``bf16=True`` / ``fp16=True``); matrix products (also
float16, and bfloat16 operands with float32 sums) are cuBLASLt's, loaded at first use (see
:func:`load_cublaslt`, :func:`matmul_info`; CuPy's cuBLAS where it cannot be loaded, counted in
``matmul_counts``), everything else is fusegrad's own kernels (csrc/cuda).
"""
from __future__ import annotations

import math

__all__ = ["is_available", "device_count", "unavailable_reason", "load_cublaslt", "cublaslt_candidates",
           "matmul_info", "matmul_counts", "set_matmul_backend", "set_allow_tf32"]

try:
    from . import _cuda
except ImportError as _e:  # a CPU-only build
    _cuda = None
    _import_error = str(_e)
else:
    _import_error = ""


def _cupy():
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def unavailable_reason() -> str:
    """Why :func:`is_available` is False ('' when it is True)."""
    if _cuda is None:
        return f"fusegrad._cuda is not built ({_import_error or 'no CUDA compiler at build time'})"
    n, why = _cuda.device_count()
    if n == 0:
        return f"no usable GPU: {why or 'no CUDA device found'}"
    if _cupy() is None:
        return "CuPy is not installed (pip install 'fusegrad[cuda]')"
    return ""


def is_available() -> bool:
    """True when fusegrad's CUDA kernels can run: module built, a GPU and driver, CuPy installed."""
    return unavailable_reason() == ""


def device_count() -> int:
    return _cuda.device_count()[0] if _cuda is not None else 0


# --- argument checks (every launcher gets checked arrays: right device, dtype, shape, C order) ---

def _arr(a, fn, name, dtypes=("float32",)):
    cp = _cupy()
    if not isinstance(a, cp.ndarray):
        if hasattr(a, "__cuda_array_interface__") or hasattr(a, "__dlpack__"):
            a = cp.asarray(a) if hasattr(a, "__cuda_array_interface__") else cp.from_dlpack(a)
        else:
            raise TypeError(f"{fn}: {name} must be a CUDA array (CuPy, or with __cuda_array_interface__/DLPack), "
                            f"got {type(a).__name__}")
    if str(a.dtype) not in dtypes:
        raise TypeError(f"{fn}: {name} must have dtype {' or '.join(dtypes)} on the CUDA path, got {a.dtype}")
    if a.device.id != cp.cuda.Device().id:
        raise ValueError(f"{fn}: {name} is on GPU {a.device.id}, but the current device is {cp.cuda.Device().id}")
    return a if a.flags.c_contiguous else cp.ascontiguousarray(a)


def _shape(a, shape, fn, name):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {tuple(shape)}, got {tuple(a.shape)}")


def _opt(a, fn, name, shape):
    if a is None:
        return None
    a = _arr(a, fn, name)
    _shape(a, shape, fn, name)
    return a


def _p(a):
    return 0 if a is None else a.data.ptr


def _s():
    return _cupy().cuda.get_current_stream().ptr


def _empty(shape, dtype="float32"):
    return _cupy().empty(shape, dtype=dtype)


def _rows(x, fn, name):
    if x.ndim < 1:
        raise ValueError(f"{fn}: {name} must have at least 1 dimension, got a 0-d array")
    C = x.shape[-1]
    return (x.size // C if C else math.prod(x.shape[:-1])), C


# --- activations ---

def _act_fwd(kind, fn):
    def f(x, *args, **kw):
        x = _arr(x, fn, "x")
        y = _empty(x.shape)
        _cuda.act_forward(kind, _p(y), _p(x), x.size, _s())
        return y
    f.__name__ = fn
    return f


def _act_bwd(kind, fn, second):
    def f(dy, x):
        dy, x = _arr(dy, fn, "dy"), _arr(x, fn, second)
        _shape(x, dy.shape, fn, second)
        dx = _empty(dy.shape)
        _cuda.act_backward(kind, _p(dx), _p(dy), _p(x), dy.size, _s())
        return dx
    f.__name__ = fn
    return f


relu_forward = _act_fwd("relu", "relu_forward")
relu_backward = _act_bwd("relu", "relu_backward", "x")
sigmoid_forward = _act_fwd("sigmoid", "sigmoid_forward")
sigmoid_backward = _act_bwd("sigmoid", "sigmoid_backward", "y")
tanh_forward = _act_fwd("tanh", "tanh_forward")
tanh_backward = _act_bwd("tanh", "tanh_backward", "y")


def _gelu_kind(approximate, fn):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"{fn}: approximate must be 'none' or 'tanh', got {approximate!r}")
    return "gelu_tanh" if approximate == "tanh" else "gelu_erf"


def gelu_forward(x, approximate="none"):
    return _act_fwd(_gelu_kind(approximate, "gelu_forward"), "gelu_forward")(x)


def gelu_backward(dy, x, approximate="none"):
    return _act_bwd(_gelu_kind(approximate, "gelu_backward"), "gelu_backward", "x")(dy, x)


# --- layer norm ---

def layernorm_forward(x, weight=None, bias=None, eps=1e-5):
    fn = "layernorm_forward"
    x = _arr(x, fn, "x")
    N, C = _rows(x, fn, "x")
    weight, bias = _opt(weight, fn, "weight", (C,)), _opt(bias, fn, "bias", (C,))
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"{fn}: eps must be finite and >= 0, got {eps}")
    y, mean, rstd = _empty(x.shape), _empty(x.shape[:-1]), _empty(x.shape[:-1])
    _cuda.layernorm_forward(_p(y), _p(mean), _p(rstd), _p(x), _p(weight), _p(bias), N, C, float(eps), _s())
    return y, mean, rstd


def layernorm_backward(dy, x, weight, mean, rstd):
    fn = "layernorm_backward"
    dy, x = _arr(dy, fn, "dy"), _arr(x, fn, "x")
    _shape(dy, x.shape, fn, "dy")
    N, C = _rows(x, fn, "x")
    weight = _opt(weight, fn, "weight", (C,))
    mean, rstd = _opt(mean, fn, "mean", x.shape[:-1]), _opt(rstd, fn, "rstd", x.shape[:-1])
    if mean is None or rstd is None:
        raise TypeError(f"{fn}: mean and rstd (from layernorm_forward) are required")
    dx, dw, db = _empty(x.shape), _empty((C,)), _empty((C,))
    work = _empty((max(1, _cuda.layernorm_workspace_floats(N, C)),))
    _cuda.layernorm_backward(_p(dx), _p(dw), _p(db), _p(work), _p(dy), _p(x), _p(weight), _p(mean), _p(rstd),
                             N, C, _s())
    return dx, dw, db


# --- softmax, log-softmax, cross-entropy ---

def _softmax_fwd(x, log, fn):
    x = _arr(x, fn, "x")
    N, V = _rows(x, fn, "x")
    y = _empty(x.shape)
    _cuda.softmax_forward(_p(y), _p(x), N, V, log, _s())
    return y


def _softmax_bwd(dy, y, log, fn):
    dy, y = _arr(dy, fn, "dy"), _arr(y, fn, "y")
    _shape(y, dy.shape, fn, "y")
    N, V = _rows(dy, fn, "dy")
    dx = _empty(dy.shape)
    _cuda.softmax_backward(_p(dx), _p(dy), _p(y), N, V, log, _s())
    return dx


def softmax_forward(x):
    return _softmax_fwd(x, False, "softmax_forward")


def softmax_backward(dy, y):
    return _softmax_bwd(dy, y, False, "softmax_backward")


def log_softmax_forward(x):
    return _softmax_fwd(x, True, "log_softmax_forward")


def log_softmax_backward(dy, y):
    return _softmax_bwd(dy, y, True, "log_softmax_backward")


def _xent_args(logits, targets, ignore_index, fn):
    logits = _arr(logits, fn, "logits")
    targets = _arr(targets, fn, "targets", ("int32", "int64"))
    if logits.ndim != 2:
        raise ValueError(f"{fn}: logits must be 2-D (N, V), got shape {tuple(logits.shape)}")
    N, V = logits.shape
    _shape(targets, (N,), fn, "targets")
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
    if N and bool(bad.any()):  # one device sync: a wrong target must not read outside a row
        r = int(bad.argmax())
        raise ValueError(f"{fn}: targets[{r}] = {int(targets[r])} is out of range [0, {V}) and is not "
                         f"ignore_index ({ignore_index})")
    return logits, targets, N, V


def cross_entropy_forward(logits, targets, ignore_index=-100):
    fn = "cross_entropy_forward"
    logits, targets, N, V = _xent_args(logits, targets, ignore_index, fn)
    loss, lse, work = _empty(()), _empty((N,)), _empty((max(N, 1),))
    _cuda.cross_entropy_forward(_p(loss), _p(lse), _p(work), _p(targets), targets.dtype == "int64", int(ignore_index),
                                _p(logits), N, V, _s())
    return loss, lse


def cross_entropy_backward(logits, targets, lse, dloss, ignore_index=-100):
    fn = "cross_entropy_backward"
    logits, targets, N, V = _xent_args(logits, targets, ignore_index, fn)
    lse = _opt(lse, fn, "lse", (N,))
    count = int((targets != ignore_index).sum())
    dl = _empty((N, V))
    _cuda.cross_entropy_backward(_p(dl), _p(logits), _p(targets), targets.dtype == "int64", _p(lse), float(dloss),
                                 count, int(ignore_index), N, V, _s())
    return dl


# --- embedding ---

def _ids(ids, V, fn):
    ids = _arr(ids, fn, "ids", ("int32", "int64"))
    if ids.size and bool(((ids < 0) | (ids >= V)).any()):
        raise ValueError(f"{fn}: ids must be in [0, {V})")
    return ids


def embedding_forward(ids, table):
    fn = "embedding_forward"
    table = _arr(table, fn, "table")
    if table.ndim != 2:
        raise ValueError(f"{fn}: table must be 2-D (V, C), got shape {tuple(table.shape)}")
    ids = _ids(ids, table.shape[0], fn)
    out = _empty(ids.shape + (table.shape[1],))
    _cuda.embedding_forward(_p(out), _p(ids), ids.dtype == "int64", _p(table), ids.size, table.shape[1], _s())
    return out


def embedding_backward(dout, ids, num_embeddings, out=None, accumulate=False):
    fn = "embedding_backward"
    dout = _arr(dout, fn, "dout")
    ids = _ids(ids, num_embeddings, fn)
    if dout.ndim != ids.ndim + 1 or dout.shape[:-1] != ids.shape:
        raise ValueError(f"{fn}: dout must have shape ids.shape + (C,), got {tuple(dout.shape)} for ids {tuple(ids.shape)}")
    C = dout.shape[-1]
    if out is None:
        if accumulate:
            raise ValueError(f"{fn}: accumulate=True needs out (the array to add into)")
        out = _cupy().zeros((num_embeddings, C), dtype="float32")
    else:
        out = _opt(out, fn, "out", (num_embeddings, C))
        if not accumulate:
            out.fill(0)
    _cuda.embedding_backward(_p(out), _p(dout), _p(ids), ids.dtype == "int64", ids.size, C, _s())
    return out


# --- optimizers ---

def _state(a, like, fn, name):
    a = _arr(a, fn, name)
    _shape(a, like.shape, fn, name)
    if not a.flags.c_contiguous:
        raise ValueError(f"{fn}: {name} is updated in place and must be C-contiguous")
    return a


def _check_hparams(fn, **kw):
    for k, v in kw.items():
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{fn}: {k} must be finite and >= 0, got {v}")


def _adam(fn, decoupled, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    param = _state(param, param, fn, "param")
    grad, m, v = _state(grad, param, fn, "grad"), _state(m, param, fn, "m"), _state(v, param, fn, "v")
    if int(step) < 1:
        raise ValueError(f"{fn}: step must be >= 1, got {step}")
    _check_hparams(fn, lr=lr, eps=eps, weight_decay=weight_decay)
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ValueError(f"{fn}: betas must be in [0, 1), got ({beta1}, {beta2})")
    _cuda.adam_step(_p(param), _p(m), _p(v), _p(grad), param.size, int(step), lr, beta1, beta2, eps, weight_decay,
                    decoupled, _s())


def adamw_step(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
    _adam("adamw_step", True, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay)


def adam_step(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    _adam("adam_step", False, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay)


def sgd_step(param, grad, momentum_buf, lr, momentum=0.0, weight_decay=0.0, nesterov=False, dampening=0.0,
             first_step=False):
    fn = "sgd_step"
    param = _state(param, param, fn, "param")
    grad = _state(grad, param, fn, "grad")
    _check_hparams(fn, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(f"{fn}: nesterov requires momentum > 0 and dampening == 0")
    buf = None
    if momentum != 0:
        if momentum_buf is None:
            raise ValueError(f"{fn}: momentum_buf must be an array when momentum != 0, got None")
        buf = _state(momentum_buf, param, fn, "momentum_buf")
    _cuda.sgd_step(_p(param), _p(buf), _p(grad), param.size, lr, momentum, weight_decay, nesterov, dampening,
                   first_step, _s())


def sum_squares(x):
    x = _arr(x, "sum_squares", "x")
    out = _empty((), "float64")
    work = _empty((_cuda.sum_squares_workspace(x.size),), "float64")
    _cuda.sum_squares(_p(out), _p(work), _p(x), x.size, _s())
    return float(out)


# --- attention ---

def _heads_contig(nh, T, D):
    return (nh * T * D, T * D, D)


def _scale(scale, D):
    return 1.0 / math.sqrt(D) if scale is None else float(scale)


def _attn_shapes(q, k, v, fn):
    for a, n in ((q, "q"), (k, "k"), (v, "v")):
        if a.ndim != 4:
            raise ValueError(f"{fn}: {n} must be 4-D (B, heads, length, D), got shape {tuple(a.shape)}")
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    _shape(k, (B, Hkv, S, D), fn, "k")
    _shape(v, (B, Hkv, S, D), fn, "v")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"{fn}: q's heads ({H}) must be a positive multiple of k's ({Hkv})")
    if not 1 <= D <= _cuda.max_head_dim:
        raise ValueError(f"{fn}: head dimension D must be between 1 and {_cuda.max_head_dim}, got {D}")
    return B, H, Hkv, T, S, D


def _attn_kernels(bf16, fp16, D, fn, *operands):
    """(forward, backward, operands) for the attention arithmetic asked for: float32; with bf16=True
    (autocast) the bf16 tensor-core kernels where they take this head size, else the float32 kernels
    on bf16-rounded operands (P and dS then stay float32: less rounding, inside the error budget of
    the bf16 computation); with fp16=True the fp16 tensor-core kernels (head sizes they take only:
    the float32 kernels on fp16-rounded operands would lack their scaling of dO into fp16's range)."""
    if bf16 and fp16:
        raise ValueError(f"{fn}: bf16 and fp16 cannot both be True (one 16-bit type per call)")
    if fp16:
        if not _cuda.attention_tc_supported(D):
            raise ValueError(f"{fn}: fp16=True needs head dimension D 64 or 128 (the fp16 tensor-core kernels), "
                             f"got {D}; use bf16=True or float32 for other head sizes")
        return _cuda.attention_forward_tc_fp16, _cuda.attention_backward_tc_fp16, operands
    if not bf16:
        return _cuda.attention_forward, _cuda.attention_backward, operands
    if _cuda.attention_tc_supported(D):
        return _cuda.attention_forward_tc, _cuda.attention_backward_tc, operands
    return (_cuda.attention_forward, _cuda.attention_backward,
            tuple(None if a is None else _bf16_values(a) for a in operands))


def _attn_work(B, H, T):
    """The backward's scratch: delta per query row, and the fp16 kernels' max |dO| after it."""
    return _empty((B * H * T + 1,))


def attention_forward(q, k, v, causal=False, scale=None, bf16=False, fp16=False):
    """fusegrad.ops.attention_forward on the GPU. bf16=True / fp16=True: the products on tensor
    cores with q, k, v (and P) rounded to that type, float32 softmax statistics, sums and results
    (fp16: head sizes 64 and 128 only)."""
    fn = "attention_forward"
    q, k, v = _arr(q, fn, "q"), _arr(k, fn, "k"), _arr(v, fn, "v")
    B, H, Hkv, T, S, D = _attn_shapes(q, k, v, fn)
    fwd, _, (q, k, v) = _attn_kernels(bf16, fp16, D, fn, q, k, v)
    o, lse = _empty(q.shape), _empty((B, H, T))
    Lq, Lk = _heads_contig(H, T, D), _heads_contig(Hkv, S, D)
    fwd(_p(o), Lq, _p(lse), _p(q), Lq, _p(k), Lk, _p(v), Lk, B, H, Hkv, T, S, D, bool(causal), _scale(scale, D), _s())
    return o, lse


def attention_backward(do, q, k, v, o, lse, causal=False, scale=None, bf16=False, fp16=False):
    fn = "attention_backward"
    q, k, v = _arr(q, fn, "q"), _arr(k, fn, "k"), _arr(v, fn, "v")
    B, H, Hkv, T, S, D = _attn_shapes(q, k, v, fn)
    do, o = _opt(do, fn, "do", q.shape), _opt(o, fn, "o", q.shape)
    lse = _opt(lse, fn, "lse", (B, H, T))
    _, bwd, (do, q, k, v) = _attn_kernels(bf16, fp16, D, fn, do, q, k, v)
    dq, dk, dv, work = _empty(q.shape), _empty(k.shape), _empty(v.shape), _attn_work(B, H, T)
    Lq, Lk = _heads_contig(H, T, D), _heads_contig(Hkv, S, D)
    bwd(_p(dq), Lq, _p(dk), Lk, _p(dv), Lk, _p(work), _p(do), Lq, _p(q), Lq, _p(k), Lk, _p(v), Lk,
        _p(o), Lq, _p(lse), B, H, Hkv, T, S, D, bool(causal), _scale(scale, D), _s())
    return dq, dk, dv


def _packed(qkv, n_head, n_kv_head, fn):
    qkv = _arr(qkv, fn, "qkv")
    if qkv.ndim != 3:
        raise ValueError(f"{fn}: qkv must be 3-D (B, T, (n_head + 2 n_kv_head) D), got shape {tuple(qkv.shape)}")
    H = int(n_head)
    Hkv = H if n_kv_head is None else int(n_kv_head)
    if H < 1 or Hkv < 1 or H % Hkv:
        raise ValueError(f"{fn}: n_head ({H}) must be a positive multiple of n_kv_head ({Hkv})")
    B, T, W = qkv.shape
    nh = H + 2 * Hkv
    if W % nh or not 1 <= W // nh <= _cuda.max_head_dim:
        raise ValueError(f"{fn}: qkv's width {W} is not (n_head + 2 n_kv_head) D with 1 <= D <= {_cuda.max_head_dim}")
    D = W // nh
    # heads live in the rows: element (b, h, t, d) at b*T*W + h*D + t*W + d
    L, Lo = (T * W, D, W), (T * H * D, D, H * D)
    return qkv, B, T, H, Hkv, D, L, Lo


def attention_qkv_forward(qkv, n_head, n_kv_head=None, causal=False, scale=None, bf16=False, fp16=False):
    fn = "attention_qkv_forward"
    qkv, B, T, H, Hkv, D, L, Lo = _packed(qkv, n_head, n_kv_head, fn)
    fwd, _, (qkv,) = _attn_kernels(bf16, fp16, D, fn, qkv)
    o, lse = _empty((B, T, H * D)), _empty((B, H, T))
    base, isz = _p(qkv), 4
    fwd(_p(o), Lo, _p(lse), base, L, base + H * D * isz, L, base + (H + Hkv) * D * isz, L,
        B, H, Hkv, T, T, D, bool(causal), _scale(scale, D), _s())
    return o, lse


def attention_qkv_backward(do, qkv, o, lse, n_head, n_kv_head=None, causal=False, scale=None, bf16=False,
                           fp16=False):
    fn = "attention_qkv_backward"
    qkv, B, T, H, Hkv, D, L, Lo = _packed(qkv, n_head, n_kv_head, fn)
    do, o = _opt(do, fn, "do", (B, T, H * D)), _opt(o, fn, "o", (B, T, H * D))
    lse = _opt(lse, fn, "lse", (B, H, T))
    _, bwd, (do, qkv) = _attn_kernels(bf16, fp16, D, fn, do, qkv)
    dqkv, work = _empty(qkv.shape), _attn_work(B, H, T)
    base, dbase, isz = _p(qkv), _p(dqkv), 4
    ko, vo = H * D * isz, (H + Hkv) * D * isz
    bwd(dbase, L, dbase + ko, L, dbase + vo, L, _p(work), _p(do), Lo, base, L, base + ko, L,
        base + vo, L, _p(o), Lo, _p(lse), B, H, Hkv, T, T, D, bool(causal), _scale(scale, D), _s())
    return dqkv


# --- matrix products: cuBLASLt (dlopen'ed at first use), CuPy's cuBLAS as the fallback ---
#
# fusegrad._cuda is built without cuBLAS (the build machines have only the CUDA runtime), so it
# loads libcublasLt.so.<CUDA major> at the first product, from the first of cublaslt_candidates()
# that loads. Where none does, products go to CuPy's cuBLAS (cupy.matmul), each one counted in
# matmul_counts; FUSEGRAD_CUDA_MATMUL=cublaslt makes that an error instead, =cupy always uses CuPy.
# float32 products sum in float32 without TF32 unless set_allow_tf32(True) (or FUSEGRAD_CUDA_TF32=1).

import collections as _collections
import os as _os
import sys as _sys

#: products by where they ran: 'cublaslt', 'cupy (<reason>)'
matmul_counts = _collections.Counter()

_lt = {"tried": False, "path": "", "error": "", "searched": []}
_opts = {"backend": _os.environ.get("FUSEGRAD_CUDA_MATMUL", "auto"),
         "tf32": _os.environ.get("FUSEGRAD_CUDA_TF32", "0") not in ("", "0")}


def _cuda_major():
    return (_cuda.runtime_version() // 1000) if _cuda is not None else 13


def cublaslt_candidates(environ=None, path=None, major=None):
    """Where libcublasLt is looked for, in order: ``$FUSEGRAD_CUBLASLT`` (a file), the CUDA toolkit
    (``$CUDA_HOME``, ``$CUDA_PATH``, the toolkit of ``nvcc`` on ``$PATH``, /usr/local/cuda), the pip
    wheels next to torch and cupy (``<site-packages>/nvidia/cublas/lib``, ``nvidia/cu<major>/lib``),
    ``$LD_LIBRARY_PATH``, and last the bare soname (the dynamic linker's own search). Returns
    (files to try, folders searched)."""
    env = _os.environ if environ is None else environ
    path = _sys.path if path is None else path
    major = _cuda_major() if major is None else major
    soname = f"libcublasLt.so.{major}"
    dirs = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            dirs += [_os.path.join(env[var], d) for d in ("lib64", "lib", "targets/x86_64-linux/lib")]
    for d in env.get("PATH", "").split(_os.pathsep):
        nvcc = _os.path.join(d, "nvcc") if d else ""
        if nvcc and _os.path.exists(nvcc):  # <toolkit>/bin/nvcc, perhaps through a symlink
            root = _os.path.dirname(_os.path.dirname(_os.path.realpath(nvcc)))
            dirs += [_os.path.join(root, "lib64"), _os.path.join(root, "targets/x86_64-linux/lib")]
    dirs += ["/usr/local/cuda/lib64", f"/usr/local/cuda-{major}/lib64"]
    for site in path:
        if site and site.rstrip("/").endswith(("site-packages", "dist-packages")):
            dirs += [_os.path.join(site, "nvidia", "cublas", "lib"), _os.path.join(site, "nvidia", f"cu{major}", "lib")]
    dirs += [d for d in env.get("LD_LIBRARY_PATH", "").split(_os.pathsep) if d]
    seen, folders = set(), []
    for d in dirs:
        d = _os.path.normpath(d)
        if d not in seen:
            seen.add(d)
            folders.append(d)
    files = [env["FUSEGRAD_CUBLASLT"]] if env.get("FUSEGRAD_CUBLASLT") else []
    files += [_os.path.join(d, soname) for d in folders if _os.path.exists(_os.path.join(d, soname))]
    return files + [soname], folders


def load_cublaslt() -> str:
    """Load cuBLASLt now (products do it at first use); returns the library's path, or raises
    RuntimeError naming every folder searched and every file tried."""
    if _cuda is None:
        raise RuntimeError(unavailable_reason())
    if _cuda.lt_loaded():
        return _cuda.lt_path()
    if _lt["tried"] and _lt["error"]:
        raise RuntimeError(_lt["error"])
    files, folders = cublaslt_candidates()
    _lt.update(tried=True, searched=folders)
    try:
        _lt["path"] = _cuda.lt_load(files)
    except RuntimeError as e:
        _lt["error"] = (f"{e}\nfolders searched for libcublasLt.so.{_cuda_major()}: {', '.join(folders) or '(none)'}; "
                        f"install the CUDA toolkit's cuBLAS or 'pip install nvidia-cublas', or name the file in "
                        f"FUSEGRAD_CUBLASLT")
        raise RuntimeError(_lt["error"]) from None
    return _lt["path"]


def matmul_info() -> dict:
    """Which library the products use: backend setting, cuBLASLt's path and version (or why it is
    not loaded), TF32, cached plans, and matmul_counts."""
    loaded = _cuda is not None and _cuda.lt_loaded()
    return {"backend": _opts["backend"], "cublaslt": _cuda.lt_path() if loaded else None,
            "cublaslt_version": _cuda.lt_version() if loaded else None, "cublaslt_error": _lt["error"],
            "searched": list(_lt["searched"]), "allow_tf32": _opts["tf32"],
            "plans": _cuda.lt_plan_count() if _cuda is not None else 0, "counts": dict(matmul_counts)}


def set_matmul_backend(backend: str):
    """'auto' (cuBLASLt, else CuPy's cuBLAS, counted), 'cublaslt' (an error without it) or 'cupy'."""
    if backend not in ("auto", "cublaslt", "cupy"):
        raise ValueError(f"set_matmul_backend: backend must be 'auto', 'cublaslt' or 'cupy', got {backend!r}")
    _opts["backend"] = backend


def set_allow_tf32(allow: bool):
    """float32 products on TF32 tensor cores (10-bit mantissa operands) when True; False (default): full float32."""
    _opts["tf32"] = bool(allow)


def _use_lt() -> bool:
    """Whether products go to cuBLASLt now (loading it on first call)."""
    b = _opts["backend"]
    if b == "cupy":
        return False
    if _cuda.lt_loaded():
        return True
    try:
        load_cublaslt()
        return True
    except RuntimeError:
        if b == "cublaslt":
            raise
        return False


_DT = {"float32": "float32", "float16": "float16"}


def _lt_gemm(d, a, b, ta, tb, M, N, K, batch=1, sa=0, sb=0, sd=0, ab="float32", cd="float32", epi="none",
             accumulate=False, bias=0, aux=0, dbias=0, stream=None):
    """One cuBLASLt product on raw device pointers (ints). True when it ran; False (counted) when
    cuBLASLt cannot run it, so the caller computes it another way."""
    why = _cuda.lt_matmul(ta, tb, M, N, K, batch, sa, sb, sd, ab, cd, epi, accumulate, _opts["tf32"], d, a, b, bias,
                          aux, dbias, _s() if stream is None else stream)
    if why:
        matmul_counts[f"fallback ({epi}: no cuBLASLt algorithm)"] += 1
        return False
    matmul_counts["cublaslt"] += 1
    return True


def _mm_shapes(A, Bm, fn):
    """Batch shape, M, N, K and element strides of op(a) @ op(b) that one strided cuBLASLt call
    covers (equal batch shapes, or one 2-D operand shared by the batch); None otherwise."""
    M, K, N = A.shape[-2], A.shape[-1], Bm.shape[-1]
    if A.ndim == 2 and Bm.ndim == 2:
        return (), M, N, K, 1, 0, 0
    ba, bb = A.shape[:-2], Bm.shape[:-2]
    if A.ndim > 2 and Bm.ndim > 2 and ba != bb:
        return None
    batch_shape = ba or bb
    nb = math.prod(batch_shape)
    return batch_shape, M, N, K, nb, (M * K if A.ndim > 2 else 0), (K * N if Bm.ndim > 2 else 0)


def _product(a, b, trans_a, trans_b, out, accumulate, fn, ab, cd, a_dev=None, b_dev=None):
    """op(a) @ op(b) into a new array (or out), through cuBLASLt when it can, else CuPy. a, b:
    checked C-contiguous arrays; a_dev/b_dev: the operands as cuBLASLt reads them (bf16 bits)."""
    cp = _cupy()
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"{fn}: a and b must have at least 2 dimensions, got {tuple(a.shape)} and {tuple(b.shape)}")
    A = cp.swapaxes(a, -1, -2) if trans_a else a
    Bm = cp.swapaxes(b, -1, -2) if trans_b else b
    if A.shape[-1] != Bm.shape[-2]:
        raise ValueError(f"{fn}: inner dimensions differ: {A.shape[-1]} and {Bm.shape[-2]}")
    if out is None and accumulate:
        raise ValueError(f"{fn}: accumulate=True needs out (the array to add into)")
    sh = _mm_shapes(A, Bm, fn)
    if sh is not None:
        batch_shape, M, N, K, nb, sa, sb = sh
        shape = tuple(batch_shape) + (M, N)
        if out is not None:
            out = _arr(out, fn, "out", ("uint16" if cd == "bfloat16" else cd,))
            _shape(out, shape, fn, "out")
            if not out.flags.c_contiguous:
                raise ValueError(f"{fn}: out is written in place and must be C-contiguous")
            d = out
        else:
            d = _empty(shape, "uint16" if cd == "bfloat16" else cd)
        if d.size == 0:
            return d
        if K == 0:
            if not accumulate:
                d.fill(0)
            return d
        if _use_lt():
            ad, bd = (a if a_dev is None else a_dev), (b if b_dev is None else b_dev)
            if _lt_gemm(_p(d), _p(ad), _p(bd), bool(trans_a), bool(trans_b), M, N, K, nb, sa, sb, M * N, ab, cd,
                        accumulate=bool(accumulate)):
                return d
        else:
            matmul_counts[f"cupy ({_opts['backend'] if _opts['backend'] == 'cupy' else 'cuBLASLt not loaded'})"] += 1
    else:
        matmul_counts["cupy (batch shapes cuBLASLt's strided batch does not cover)"] += 1
    if a_dev is not None:  # the fallback of a bf16 product: float32 values that bf16 holds exactly
        A, Bm = _bf16_values(A), _bf16_values(Bm)
    r = cp.matmul(A, Bm)
    bits = cd == "bfloat16"  # a bf16 result: float32 sums, rounded once at the end (as cuBLASLt)
    if out is None:
        return _bf16_bits(r) if bits else r
    out = _arr(out, fn, "out", ("uint16" if bits else cd,))
    _shape(out, r.shape, fn, "out")
    if accumulate:
        out[...] = _bf16_bits(_bf16_values(out) + r) if bits else out + r
    else:
        out[...] = _bf16_bits(r) if bits else r
    return out


def _bf16_bits(a):
    """float32 array -> its bfloat16 bit patterns (uint16), rounded to nearest even on the GPU."""
    y = _empty(a.shape, "uint16")
    _cuda.to_bf16(_p(y), _p(a), a.size, _s())
    return y


def _bf16_values(a):
    """float32 values rounded to bfloat16 (or uint16 bfloat16 bits), as float32 (views made contiguous first)."""
    a = _cupy().ascontiguousarray(a)
    y = _empty(a.shape)
    _cuda.bf16_to_f32(_p(y), _p(a if a.dtype == "uint16" else _bf16_bits(a)), a.size, _s())
    return y


def matmul(a, b, trans_a=False, trans_b=False, out=None, accumulate=False):
    """op(a) @ op(b): float32 (float32 sums, TF32 only with set_allow_tf32) or float16 (float32
    sums, float16 result); 2-D or batched as on the CPU."""
    fn = "matmul"
    a, b = _arr(a, fn, "a", ("float32", "float16")), _arr(b, fn, "b", ("float32", "float16"))
    if a.dtype != b.dtype:
        raise TypeError(f"{fn}: a and b must have one dtype, got {a.dtype} and {b.dtype}")
    dt = str(a.dtype)
    return _product(a, b, trans_a, trans_b, out, accumulate, fn, dt, dt)


def matmul_bf16(a, b, trans_a=False, trans_b=False, out=None, accumulate=False, bias=None, residual=None):
    """op(a) @ op(b) on the tensor cores with bfloat16 operands and float32 sums. float32 a and b:
    every element rounded to bfloat16 (as the CPU's matmul_bf16), float32 result, optionally
    (op(a) @ op(b) + bias) + residual added in float32 (bias (N,), residual (M, N); not with
    accumulate), as the CPU's. uint16 a and b (bfloat16 bit patterns, as the CPU's gemv weights;
    CuPy has no bfloat16 dtype): used as they are, and the result is bfloat16 bits too (as
    torch.matmul on bfloat16 tensors)."""
    fn = "matmul_bf16"
    a, b = _arr(a, fn, "a", ("float32", "uint16")), _arr(b, fn, "b", ("float32", "uint16"))
    if a.dtype != b.dtype:
        raise TypeError(f"{fn}: a and b must both be float32 or both uint16 (bfloat16 bits), got {a.dtype} and {b.dtype}")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"{fn}: a and b must have at least 2 dimensions, got {tuple(a.shape)} and {tuple(b.shape)}")
    if bias is not None or residual is not None:
        if accumulate:
            raise ValueError(f"{fn}: bias and residual cannot be combined with accumulate=True")
        if a.dtype == "uint16" or a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"{fn}: bias and residual need 2-D float32 a and b")
        M, N = a.shape[1] if trans_a else a.shape[0], b.shape[0] if trans_b else b.shape[1]
        bias, residual = _opt(bias, fn, "bias", (N,)), _opt(residual, fn, "residual", (M, N))
    if a.dtype == "uint16":
        return _product(a, b, trans_a, trans_b, out, accumulate, fn, "bfloat16", "bfloat16", a, b)
    y = _product(a, b, trans_a, trans_b, out, accumulate, fn, "bfloat16", "float32", _bf16_bits(a), _bf16_bits(b))
    if bias is not None or residual is not None:  # (y + bias) + residual, in float32: the CPU's order
        _cuda.add_bias_residual(_p(y), _p(bias), _p(residual), y.shape[0], y.shape[1], _s())
    return y


def _linear_args(x, w, fn, dtypes=("float32", "float16")):
    x, w = _arr(x, fn, "x", dtypes), _arr(w, fn, "w", dtypes)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"{fn}: x (N, K) and w (O, K) expected, got {tuple(x.shape)} and {tuple(w.shape)}")
    if x.dtype != w.dtype:
        raise TypeError(f"{fn}: x and w must have one dtype, got {x.dtype} and {w.dtype}")
    return x, w, x.shape[0], x.shape[1], w.shape[0], str(x.dtype)


def _opt_dt(a, fn, name, shape, dt):
    if a is None:
        return None
    a = _arr(a, fn, name, (dt,))
    _shape(a, shape, fn, name)
    return a


def linear_forward(x, w, b=None, residual=None):
    """y = x @ w.T + b (+ residual): one cuBLASLt call (bias epilogue; the residual as its C with
    beta = 1). float32 or float16 (float32 sums)."""
    fn = "linear_forward"
    x, w, N, K, O, dt = _linear_args(x, w, fn)
    b = _opt_dt(b, fn, "b", (O,), dt)
    residual = _opt_dt(residual, fn, "residual", (N, O), dt)
    y = _empty((N, O), dt)
    if N and O and K and _use_lt():
        if residual is not None:
            y[...] = residual
        epi = "bias" if b is not None else "none"
        if _lt_gemm(_p(y), _p(x), _p(w), False, True, N, O, K, ab=dt, cd=dt, epi=epi, accumulate=residual is not None,
                    bias=_p(b)):
            return y
    y = _product(x, w, False, True, None, False, fn, dt, dt)
    if dt == "float32":
        _cuda.add_bias_residual(_p(y), _p(b), _p(residual), N, O, _s())
    else:
        y = y + b if b is not None else y
        y = residual + y if residual is not None else y
    return y


def _column_sums(dy, N, O):
    db = _empty((O,))
    work = _empty((max(1, _cuda.colsum_workspace_floats(N, O)),))
    src = dy if dy.dtype == "float32" else dy.astype("float32")
    _cuda.column_sums(_p(db), _p(work), _p(src), N, O, _s())
    return db


def linear_backward(dy, x, w):
    """dx = dy @ w, dw = dy^T @ x, db = column sums of dy: db from the weight-gradient product's
    BGRADB epilogue where cuBLASLt has one, else the deterministic column-sum kernel."""
    fn = "linear_backward"
    x, w, N, K, O, dt = _linear_args(x, w, fn)
    dy = _arr(dy, fn, "dy", (dt,))
    _shape(dy, (N, O), fn, "dy")
    dx = _product(dy, w, False, False, None, False, fn, dt, dt)
    dw = _empty((O, K), dt)
    db = None
    if N and O and K and _use_lt():
        dbb = _empty((O,), dt)
        if _lt_gemm(_p(dw), _p(dy), _p(x), True, False, O, K, N, ab=dt, cd=dt, epi="bgradb", dbias=_p(dbb)):
            db = dbb
        else:
            dw = _product(dy, x, True, False, None, False, fn, dt, dt)
    else:
        dw = _product(dy, x, True, False, None, False, fn, dt, dt)
    if db is None:
        db = _column_sums(dy, N, O)
        db = db if dt == "float32" else db.astype(dt)
    return dx, dw, db


def linear_gelu_forward(x, w, b):
    """h = gelu_tanh(x @ w.T + b) and pre = x @ w.T + b (saved for the backward), in one cuBLASLt
    call (GELU_AUX_BIAS epilogue) where it can; else the product then fusegrad's GELU kernel."""
    fn = "linear_gelu_forward"
    x, w, N, K, O, dt = _linear_args(x, w, fn)
    b = _opt_dt(b, fn, "b", (O,), dt)
    if b is None:
        raise TypeError(f"{fn}: b is required (the epilogue adds a bias)")
    h, pre = _empty((N, O), dt), _empty((N, O), dt)
    if N and O and K and O % 8 == 0 and _use_lt():  # cuBLASLt wants the aux matrix's ld a multiple of 8
        if _lt_gemm(_p(h), _p(x), _p(w), False, True, N, O, K, ab=dt, cd=dt, epi="gelu_bias", bias=_p(b), aux=_p(pre)):
            return h, pre
    pre = linear_forward(x, w, b)
    if dt == "float32":
        _cuda.act_forward("gelu_tanh", _p(h), _p(pre), pre.size, _s())
    else:
        h = gelu_forward(pre.astype("float32"), "tanh").astype(dt)
    return h, pre


def linear_backward_gelu(dy, h, w, pre):
    """The backward of y = linear(h, w) where h = gelu_tanh(pre) came from linear_gelu_forward:
    dpre = (dy @ w) * gelu_tanh'(pre) in one cuBLASLt call (DGELU_BGRAD epilogue, which also sums
    dpre's columns: the gradient of pre's bias), dw = dy^T h, db = column sums of dy.
    Returns (dpre, dw, db, dbias_pre)."""
    fn = "linear_backward_gelu"
    h, w, N, K, O, dt = _linear_args(h, w, fn)
    dy = _arr(dy, fn, "dy", (dt,))
    _shape(dy, (N, O), fn, "dy")
    pre = _opt_dt(pre, fn, "pre", (N, K), dt)
    if pre is None:
        raise TypeError(f"{fn}: pre (from linear_gelu_forward) is required")
    _, dw, db = linear_backward(dy, h, w)
    dpre, dbp = _empty((N, K), dt), _empty((K,), dt)
    if N and O and K and K % 8 == 0 and _use_lt():
        if _lt_gemm(_p(dpre), _p(dy), _p(w), False, False, N, K, O, ab=dt, cd=dt, epi="dgelu_bgrad", aux=_p(pre),
                    dbias=_p(dbp)):
            return dpre, dw, db, dbp
    dh = _product(dy, w, False, False, None, False, fn, dt, dt)
    if dt == "float32":
        _cuda.act_backward("gelu_tanh", _p(dpre), _p(dh), _p(pre), dh.size, _s())
    else:
        dpre = gelu_backward(dh.astype("float32"), pre.astype("float32"), "tanh").astype(dt)
    dbp = _column_sums(dpre, N, K)
    return dpre, dw, db, (dbp if dt == "float32" else dbp.astype(dt))


def mse_forward(pred, target):
    fn = "mse_forward"
    pred, target = _arr(pred, fn, "pred"), _arr(target, fn, "target")
    _shape(target, pred.shape, fn, "target")
    d = pred.astype("float64") - target.astype("float64")
    return (d * d).mean().astype("float32")


def mse_backward(pred, target, dloss=1.0):
    fn = "mse_backward"
    pred, target = _arr(pred, fn, "pred"), _arr(target, fn, "target")
    _shape(target, pred.shape, fn, "target")
    return (2.0 / max(pred.size, 1) * float(dloss)) * (pred - target)


OPS = ["relu_forward", "relu_backward", "gelu_forward", "gelu_backward", "sigmoid_forward", "sigmoid_backward",
       "tanh_forward", "tanh_backward", "layernorm_forward", "layernorm_backward", "softmax_forward",
       "softmax_backward", "log_softmax_forward", "log_softmax_backward", "cross_entropy_forward",
       "cross_entropy_backward", "embedding_forward", "embedding_backward", "adamw_step", "adam_step", "sgd_step",
       "sum_squares", "attention_forward", "attention_backward", "attention_qkv_forward", "attention_qkv_backward",
       "matmul", "matmul_bf16", "linear_forward", "linear_backward", "mse_forward", "mse_backward"]
