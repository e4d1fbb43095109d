"""Smoke test of one ISA path: prints the path fusegrad chose, runs every kernel once on small
shapes against NumPy and one GPT training step, and exits non-zero on any mismatch (or, with
--expect, when the chosen path is not the expected one).

Run under an emulated CPU to prove a path on a CPU that has only that ISA (issue 22), e.g.
    qemu-x86_64 -cpu Nehalem  $(which python) tools/isa_smoke.py --expect portable
    qemu-x86_64 -cpu Haswell  $(which python) tools/isa_smoke.py --expect avx2
(with fusegrad importable: installed, or PYTHONPATH=python in a development tree; under qemu a
virtual environment may need PYTHONPATH set to its site-packages, as .ci/run does). An
instruction the emulated CPU lacks (an AVX2 copy of a shared inline function picked by the
linker for the portable path, say) kills the process with SIGILL.
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from fusegrad import _C, ops


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _check(name, got, want, tol):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    err = float(np.max(np.abs(got - want) / (1 + np.abs(want)))) if want.size else 0.0
    if not err <= tol:
        raise AssertionError(f"{name}: max relative error {err:.3g} > {tol:g}")
    return name


def kernels():
    """Runs every kernel of fusegrad.ops once (float32) and checks it against NumPy."""
    rng = np.random.default_rng(0)
    f = np.float32
    t = 1e-4
    done = []
    a, b = rng.standard_normal((19, 23)).astype(f), rng.standard_normal((23, 17)).astype(f)
    done.append(_check("matmul", ops.matmul(a, b), a.astype(np.float64) @ b, t))
    x, w, bias = rng.standard_normal((9, 23)).astype(f), rng.standard_normal((17, 23)).astype(f), rng.standard_normal(17).astype(f)
    y = ops.linear_forward(x, w, bias)
    done.append(_check("linear_forward", y, x.astype(np.float64) @ w.T + bias, t))
    dy = rng.standard_normal(y.shape).astype(f)
    dx, dw, db = ops.linear_backward(dy, x, w)
    done.append(_check("linear_backward", np.concatenate([dx.ravel(), dw.ravel(), db.ravel()]),
                       np.concatenate([(dy.astype(np.float64) @ w).ravel(), (dy.T.astype(np.float64) @ x).ravel(),
                                       dy.sum(0)]), t))
    v = (3 * rng.standard_normal(37)).astype(f)
    g = rng.standard_normal(37).astype(f)
    v64 = v.astype(np.float64)
    cdf = np.array([0.5 * math.erfc(-s / math.sqrt(2)) for s in v64])
    pdf = np.exp(-0.5 * v64**2) / math.sqrt(2 * math.pi)
    th = 0.7978845608028654 * (v64 + 0.044715 * v64**3)
    sig = 1 / (1 + np.exp(-v64))
    done.append(_check("relu", np.concatenate([ops.relu_forward(v), ops.relu_backward(g, v)]),
                       np.concatenate([np.maximum(v64, 0), g * (v64 > 0)]), 0))
    done.append(_check("gelu", np.concatenate([ops.gelu_forward(v), ops.gelu_backward(g, v)]),
                       np.concatenate([v64 * cdf, g * (cdf + v64 * pdf)]), t))
    done.append(_check("gelu_tanh", ops.gelu_forward(v, "tanh"), 0.5 * v64 * (1 + np.tanh(th)), t))
    ys = ops.sigmoid_forward(v)
    done.append(_check("sigmoid", np.concatenate([ys, ops.sigmoid_backward(g, ys)]),
                       np.concatenate([sig, g * sig * (1 - sig)]), t))
    yt = ops.tanh_forward(v)
    done.append(_check("tanh", np.concatenate([yt, ops.tanh_backward(g, yt)]),
                       np.concatenate([np.tanh(v64), g * (1 - np.tanh(v64) ** 2)]), t))
    X = rng.standard_normal((5, 29)).astype(f)
    X64 = X.astype(np.float64)
    lw, lb = rng.standard_normal(29).astype(f), rng.standard_normal(29).astype(f)
    yl, mean, rstd = ops.layernorm_forward(X, lw, lb)
    xh = (X64 - X64.mean(-1, keepdims=True)) / np.sqrt(X64.var(-1, keepdims=True) + 1e-5)
    done.append(_check("layernorm_forward", yl, xh * lw + lb, t))
    dY = rng.standard_normal(X.shape).astype(f)
    ldx, ldw, ldb = ops.layernorm_backward(dY, X, lw, mean, rstd)
    gg = dY * lw.astype(np.float64)
    want_dx = (gg - gg.mean(-1, keepdims=True) - xh * (gg * xh).mean(-1, keepdims=True)) / np.sqrt(X64.var(-1, keepdims=True) + 1e-5)
    done.append(_check("layernorm_backward", np.concatenate([ldx.ravel(), ldw, ldb]),
                       np.concatenate([want_dx.ravel(), (dY * xh).sum(0), dY.sum(0)]), 1e-3))
    p = _softmax(X64)
    ysm = ops.softmax_forward(X)
    done.append(_check("softmax", np.concatenate([ysm.ravel(), ops.softmax_backward(dY, ysm).ravel()]),
                       np.concatenate([p.ravel(), (p * (dY - (dY * p).sum(-1, keepdims=True))).ravel()]), t))
    yls = ops.log_softmax_forward(X)
    done.append(_check("log_softmax", np.concatenate([yls.ravel(), ops.log_softmax_backward(dY, yls).ravel()]),
                       np.concatenate([np.log(p).ravel(), (dY - p * dY.sum(-1, keepdims=True)).ravel()]), t))
    tg = rng.integers(0, 29, 5)
    loss, lse = ops.cross_entropy_forward(X, tg)
    onehot = np.eye(29)[tg]
    done.append(_check("cross_entropy", np.concatenate([[loss], ops.cross_entropy_backward(X, tg, lse, 1.0).ravel()]),
                       np.concatenate([[-np.log(p[np.arange(5), tg]).mean()], ((p - onehot) / 5).ravel()]), t))
    pr, tr = rng.standard_normal(11).astype(f), rng.standard_normal(11).astype(f)
    done.append(_check("mse", np.concatenate([[ops.mse_forward(pr, tr)], ops.mse_backward(pr, tr, 1.0)]),
                       np.concatenate([[np.mean((pr.astype(np.float64) - tr) ** 2)], 2 * (pr.astype(np.float64) - tr) / 11]), t))
    table = rng.standard_normal((13, 7)).astype(f)
    ids = rng.integers(0, 13, 10)
    dout = rng.standard_normal((10, 7)).astype(f)
    want_dt = np.zeros((13, 7))
    np.add.at(want_dt, ids, dout)
    done.append(_check("embedding", np.concatenate([ops.embedding_forward(ids, table).ravel(),
                                                    ops.embedding_backward(dout, ids, 13).ravel()]),
                       np.concatenate([table[ids].ravel(), want_dt.ravel()]), t))
    done.append(_check("sum_squares", [ops.sum_squares(v)], [np.sum(v64**2)], 1e-6))
    prm, grd = rng.standard_normal(37).astype(f), rng.standard_normal(37).astype(f)
    pm, m1, v1 = prm.copy(), np.zeros(37, f), np.zeros(37, f)
    ops.adamw_step(pm, grd, m1, v1, 1, 1e-2)
    want = prm * (1 - 1e-4) - 1e-2 * np.sign(grd) * np.abs(grd) / (np.abs(grd) + 1e-8)
    done.append(_check("adamw_step", pm, want, t))
    pm, m1, v1 = prm.copy(), np.zeros(37, f), np.zeros(37, f)
    ops.adam_step(pm, grd, m1, v1, 1, 1e-2)
    done.append(_check("adam_step", pm, prm - 1e-2 * grd / (np.abs(grd) + 1e-8), t))
    pm, buf = prm.copy(), np.zeros(37, f)
    ops.sgd_step(pm, grd, buf, 0.1, momentum=0.9, first_step=True)
    done.append(_check("sgd_step", pm, prm - 0.1 * grd.astype(np.float64), t))
    B, H, T, D = 2, 2, 7, 16
    q, k, vv = (rng.standard_normal((B, H, T, D)).astype(f) for _ in range(3))
    s = np.einsum("bhtd,bhsd->bhts", q.astype(np.float64), k) / math.sqrt(D)
    s = s + np.triu(np.full((T, T), -np.inf), 1)
    P = _softmax(s)
    o, lse = ops.attention_forward(q, k, vv, causal=True)
    done.append(_check("attention_forward", o, P @ vv, t))
    do = rng.standard_normal(o.shape).astype(f)
    dq, dk, dv = ops.attention_backward(do, q, k, vv, o, lse, causal=True)
    dP = do.astype(np.float64) @ np.swapaxes(vv, -1, -2)
    dS = P * (dP - (dP * P).sum(-1, keepdims=True)) / math.sqrt(D)
    done.append(_check("attention_backward", np.concatenate([dq.ravel(), dk.ravel(), dv.ravel()]),
                       np.concatenate([(dS @ k).ravel(), (np.swapaxes(dS, -1, -2) @ q).ravel(),
                                       (np.swapaxes(P, -1, -2) @ do).ravel()]), 1e-3))
    qkv = np.concatenate([a.transpose(0, 2, 1, 3).reshape(B, T, H * D) for a in (q, k, vv)], -1)
    o2, lse2 = ops.attention_qkv_forward(np.ascontiguousarray(qkv), H, causal=True)
    done.append(_check("attention_qkv_forward", o2, (P @ vv).transpose(0, 2, 1, 3).reshape(B, T, H * D), t))
    dqkv = ops.attention_qkv_backward(np.ascontiguousarray(do.transpose(0, 2, 1, 3).reshape(B, T, H * D)),
                                      np.ascontiguousarray(qkv), o2, lse2, H, causal=True)
    done.append(_check("attention_qkv_backward", dqkv[..., : H * D],
                       (dS @ k).transpose(0, 2, 1, 3).reshape(B, T, H * D), 1e-3))
    return done


def gpt_step():
    """One AdamW training step of a tiny GPT; returns the loss before and after."""
    from fusegrad import optim
    from fusegrad.models import GPT, GPTConfig

    rng = np.random.default_rng(0)
    cfg = GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = GPT(cfg)
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    idx = rng.integers(0, 32, (2, 16))
    tgt = rng.integers(0, 32, (2, 16))
    _, loss = model(idx, tgt)
    loss.backward()
    opt.step()
    opt.zero_grad()
    _, loss2 = model(idx, tgt)
    l0, l1 = float(loss.data), float(loss2.data)
    if not (math.isfinite(l0) and math.isfinite(l1) and l1 < l0):
        raise AssertionError(f"GPT step: loss {l0} -> {l1}")
    return l0, l1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expect", choices=["portable", "avx2", "avx512"], help="fail unless this path is chosen")
    args = ap.parse_args(argv)
    isa = _C.get_isa()
    print(f"isa: {isa} (supported: {', '.join(_C.isas_supported())}; cpu: {_C.cpu_model() if hasattr(_C, 'cpu_model') else '?'})")
    if args.expect and isa != args.expect:
        print(f"FAIL: expected the {args.expect} path, fusegrad chose {isa}")
        return 1
    names = kernels()
    l0, l1 = gpt_step()
    print(f"ok: {len(names)} kernel checks, GPT step loss {l0:.4f} -> {l1:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
