"""``fusegrad.cuda``: the CUDA path (``fusegrad._cuda``, built where CMake found ``nvcc``).

:func:`is_available` says whether it can run here (the module is built, CuPy imports, and a GPU and
driver answer). The functions below have the names, arguments and results of :mod:`fusegrad.ops`
and take CuPy arrays (``fusegrad.ops`` sends CUDA arrays here: CuPy, anything with
``__cuda_array_interface__`` or a CUDA DLPack capsule); they return CuPy arrays allocated on the
caller's current CuPy stream and launch on that stream. float32 throughout; matrix products are
cuBLAS's through CuPy (``cupy.matmul``), everything else is fusegrad's own kernels (csrc/cuda).
"""
from __future__ import annotations

import math

__all__ = ["is_available", "device_count", "unavailable_reason"]

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


def _round_bf16(x):
    """x rounded to bfloat16 (nearest even; NaN stays NaN), kept as float32 (a new array)."""
    cp = _cupy()
    u = x.view(cp.uint32)
    r = (u + cp.uint32(0x7FFF) + ((u >> 16) & cp.uint32(1))) & cp.uint32(0xFFFF0000)
    return cp.where((u & cp.uint32(0x7FFFFFFF)) > cp.uint32(0x7F800000), u, r).view(cp.float32)


def _attn_kernels(bf16, D, *operands):
    """(forward, backward, operands) for the attention arithmetic asked for: float32, or with
    bf16=True (autocast) the bf16 tensor-core kernels where they take this head size, else the
    float32 kernels on bf16-rounded operands (P and dS then stay float32: less rounding, inside
    the error budget of the bf16 computation)."""
    if not bf16:
        return _cuda.attention_forward, _cuda.attention_backward, operands
    if _cuda.attention_tc_supported(D):
        return _cuda.attention_forward_tc, _cuda.attention_backward_tc, operands
    return (_cuda.attention_forward, _cuda.attention_backward,
            tuple(None if a is None else _round_bf16(a) for a in operands))


def attention_forward(q, k, v, causal=False, scale=None, bf16=False):
    fn = "attention_forward"
    q, k, v = _arr(q, fn, "q"), _arr(k, fn, "k"), _arr(v, fn, "v")
    B, H, Hkv, T, S, D = _attn_shapes(q, k, v, fn)
    o, lse = _empty(q.shape), _empty((B, H, T))
    Lq, Lk = _heads_contig(H, T, D), _heads_contig(Hkv, S, D)
    fwd, _, (q, k, v) = _attn_kernels(bf16, D, q, k, v)
    fwd(_p(o), Lq, _p(lse), _p(q), Lq, _p(k), Lk, _p(v), Lk, B, H, Hkv, T, S, D, bool(causal), _scale(scale, D), _s())
    return o, lse


def attention_backward(do, q, k, v, o, lse, causal=False, scale=None, bf16=False):
    fn = "attention_backward"
    q, k, v = _arr(q, fn, "q"), _arr(k, fn, "k"), _arr(v, fn, "v")
    B, H, Hkv, T, S, D = _attn_shapes(q, k, v, fn)
    do, o = _opt(do, fn, "do", q.shape), _opt(o, fn, "o", q.shape)
    lse = _opt(lse, fn, "lse", (B, H, T))
    dq, dk, dv, work = _empty(q.shape), _empty(k.shape), _empty(v.shape), _empty((max(1, B * H * T),))
    Lq, Lk = _heads_contig(H, T, D), _heads_contig(Hkv, S, D)
    _, bwd, (do, q, k, v) = _attn_kernels(bf16, D, do, q, k, v)
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


def attention_qkv_forward(qkv, n_head, n_kv_head=None, causal=False, scale=None, bf16=False):
    fn = "attention_qkv_forward"
    qkv, B, T, H, Hkv, D, L, Lo = _packed(qkv, n_head, n_kv_head, fn)
    o, lse = _empty((B, T, H * D)), _empty((B, H, T))
    fwd, _, (qkv,) = _attn_kernels(bf16, D, qkv)
    base, isz = _p(qkv), 4
    fwd(_p(o), Lo, _p(lse), base, L, base + H * D * isz, L, base + (H + Hkv) * D * isz, L,
        B, H, Hkv, T, T, D, bool(causal), _scale(scale, D), _s())
    return o, lse


def attention_qkv_backward(do, qkv, o, lse, n_head, n_kv_head=None, causal=False, scale=None, bf16=False):
    fn = "attention_qkv_backward"
    qkv, B, T, H, Hkv, D, L, Lo = _packed(qkv, n_head, n_kv_head, fn)
    do, o = _opt(do, fn, "do", (B, T, H * D)), _opt(o, fn, "o", (B, T, H * D))
    lse = _opt(lse, fn, "lse", (B, H, T))
    dqkv, work = _empty(qkv.shape), _empty((max(1, B * H * T),))
    _, bwd, (do, qkv) = _attn_kernels(bf16, D, do, qkv)
    base, dbase, isz = _p(qkv), _p(dqkv), 4
    ko, vo = H * D * isz, (H + Hkv) * D * isz
    bwd(dbase, L, dbase + ko, L, dbase + vo, L, _p(work), _p(do), Lo, base, L, base + ko, L,
        base + vo, L, _p(o), Lo, _p(lse), B, H, Hkv, T, T, D, bool(causal), _scale(scale, D), _s())
    return dqkv


# --- matrix products (cuBLAS through CuPy) and linear ---

def matmul(a, b, trans_a=False, trans_b=False, out=None, accumulate=False):
    fn = "matmul"
    cp = _cupy()
    a, b = _arr(a, fn, "a"), _arr(b, fn, "b")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"{fn}: a and b must have at least 2 dimensions, got {tuple(a.shape)} and {tuple(b.shape)}")
    A = cp.swapaxes(a, -1, -2) if trans_a else a
    Bm = cp.swapaxes(b, -1, -2) if trans_b else b
    if A.shape[-1] != Bm.shape[-2]:
        raise ValueError(f"{fn}: inner dimensions differ: {A.shape[-1]} and {Bm.shape[-2]}")
    if out is None:
        if accumulate:
            raise ValueError(f"{fn}: accumulate=True needs out (the array to add into)")
        return cp.matmul(A, Bm)
    out = _arr(out, fn, "out")
    r = cp.matmul(A, Bm)
    _shape(out, r.shape, fn, "out")
    if accumulate:
        out += r
    else:
        out[...] = r
    return out


def linear_forward(x, w, b=None, residual=None):
    fn = "linear_forward"
    cp = _cupy()
    x, w = _arr(x, fn, "x"), _arr(w, fn, "w")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"{fn}: x (N, K) and w (O, K) expected, got {tuple(x.shape)} and {tuple(w.shape)}")
    N, O = x.shape[0], w.shape[0]
    b = _opt(b, fn, "b", (O,))
    residual = _opt(residual, fn, "residual", (N, O))
    y = cp.matmul(x, w.T)
    _cuda.add_bias_residual(_p(y), _p(b), _p(residual), N, O, _s())
    return y


def linear_backward(dy, x, w):
    fn = "linear_backward"
    cp = _cupy()
    dy, x, w = _arr(dy, fn, "dy"), _arr(x, fn, "x"), _arr(w, fn, "w")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"{fn}: x (N, K) and w (O, K) expected, got {tuple(x.shape)} and {tuple(w.shape)}")
    N, O = x.shape[0], w.shape[0]
    _shape(dy, (N, O), fn, "dy")
    dx, dw = cp.matmul(dy, w), cp.matmul(dy.T, x)
    db, work = _empty((O,)), _empty((max(1, _cuda.colsum_workspace_floats(N, O)),))
    _cuda.column_sums(_p(db), _p(work), _p(dy), N, O, _s())
    return dx, dw, db


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
       "matmul", "linear_forward", "linear_backward", "mse_forward", "mse_backward"]
