"""Layernorm forward+backward vs NumPy and PyTorch (F.layer_norm with autograd), rows of 768 and 50304."""
from __future__ import annotations

import numpy as np

from bench.common import ab_cols, interleaved, rand, ratio, torch
from fusegrad import ops


def _numpy_fwd_bwd(x, w, b, dy, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    rstd = 1 / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
    xh = xc * rstd
    y = xh * w + b
    g = dy * w
    dx = rstd * (g - g.mean(-1, keepdims=True) - xh * (g * xh).mean(-1, keepdims=True))
    return y, dx, (dy * xh).sum(0), dy.sum(0)


def run(limits, quick=False):
    rows = []
    shapes = [(2048, 768), (64, 50304)] if quick else [(512, 768), (8192, 768), (64, 50304), (256, 50304)]
    for N, C in shapes:
        x, dy = rand((N, C)), rand((N, C), seed=1)
        w, b = 1 + 0.1 * rand(C, seed=2), rand(C, seed=3)
        y, m, r = ops.layernorm_forward(x, w, b)  # validate first
        ny, ndx, ndw, ndb = _numpy_fwd_bwd(x.astype(np.float64), w, b, dy)
        np.testing.assert_allclose(y, ny, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(ops.layernorm_backward(dy, x, w, m, r)[0], ndx, rtol=1e-3, atol=1e-4)

        def ours():
            y, m, r = ops.layernorm_forward(x, w, b)
            return ops.layernorm_backward(dy, x, w, m, r)

        fns = {"ours": ours, "numpy": lambda: _numpy_fwd_bwd(x, w, b, dy)}
        if torch is not None:
            tx = torch.from_numpy(x).requires_grad_(True)
            tw = torch.from_numpy(w).requires_grad_(True)
            tb = torch.from_numpy(b).requires_grad_(True)
            tdy = torch.from_numpy(dy)

            def tfn():
                tx.grad = tw.grad = tb.grad = None
                torch.nn.functional.layer_norm(tx, (C,), tw, tb, 1e-5).backward(tdy)

            fns["torch"] = tfn
        t = interleaved(fns, reps=9)
        # fwd: read x, write y; bwd: read dy, x, write dx (weight/bias and row stats are negligible)
        bytes_moved = 5 * 4 * N * C
        rows.append({
            "op": "layernorm fwd+bwd", "N": N, "C": C, "ours_ms": t["ours"] * 1e3, **ab_cols(t),
            "numpy_ms": t["numpy"] * 1e3, "torch_ms": t.get("torch", 0) * 1e3 or None,
            "x_numpy": ratio(t["numpy"], t["ours"]), "x_torch": ratio(t.get("torch"), t["ours"]),
            "GB/s": bytes_moved / t["ours"] / 1e9, "frac_copy_bw": bytes_moved / t["ours"] / 1e9 / limits.copy_gbs,
        })
    return rows
