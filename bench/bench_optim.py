"""Fused AdamW step vs a NumPy implementation and torch.optim.AdamW (foreach and single-tensor).

Bytes counted per step: read p, g, m, v and write p, m, v = 7 * 4 bytes per float32 parameter.
"""
from __future__ import annotations

import numpy as np

from bench.common import ab_cols, interleaved, ratio, rand, torch
from fusegrad import ops

LR, B1, B2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 0.01


def numpy_adamw(p, g, m, v, step, tmp):
    p *= 1.0 - LR * WD
    m *= B1
    m += (1 - B1) * g
    v *= B2
    np.multiply(g, g, out=tmp)
    tmp *= 1 - B2
    v += tmp
    bc1, bc2 = 1 - B1 ** step, 1 - B2 ** step
    np.sqrt(v, out=tmp)
    tmp *= 1 / np.sqrt(bc2)
    tmp += EPS
    np.divide(m, tmp, out=tmp)
    tmp *= -LR / bc1
    p += tmp


def run(limits, quick=False):
    rows = []
    for n in ([10_000_000] if quick else [1_000_000, 10_000_000]):
        # validate first: one step of ours vs torch's formula in NumPy float64
        p, g = rand(n), rand(n, seed=1)
        m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
        P = p.astype(np.float64)
        ops.adamw_step(p, g, m, v, 1, LR, B1, B2, EPS, WD)
        P *= 1 - LR * WD
        P -= LR * g / (np.abs(g) + EPS)  # step 1: m/bc1 = g, sqrt(v/bc2) = |g|
        err = float(np.max(np.abs(p - P)))
        tmp = np.empty_like(p)
        pn, mn, vn = p.copy(), m.copy(), v.copy()
        fns = {
            "ours": lambda: ops.adamw_step(p, g, m, v, 10, LR, B1, B2, EPS, WD),
            "numpy": lambda: numpy_adamw(pn, g, mn, vn, 10, tmp),
        }
        if torch is not None:
            for name, kw in [("torch_foreach", dict(foreach=True)), ("torch_single", dict(foreach=False))]:
                tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
                tp.grad = torch.from_numpy(g.copy())
                opt = torch.optim.AdamW([tp], lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD, **kw)
                opt.step()
                fns[name] = opt.step
        t = interleaved(fns, reps=7)
        nbytes = 7 * 4 * n
        gbs = nbytes / t["ours"] / 1e9
        rows.append({
            "op": "adamw_step f32", "n": n, "max_err_step1": err, "ours_ms": t["ours"] * 1e3, **ab_cols(t),
            "numpy_ms": t["numpy"] * 1e3, "torch_foreach_ms": t.get("torch_foreach", 0) * 1e3 or None,
            "torch_single_ms": t.get("torch_single", 0) * 1e3 or None,
            "x_numpy": ratio(t["numpy"], t["ours"]), "x_torch_foreach": ratio(t.get("torch_foreach"), t["ours"]),
            "x_torch_single": ratio(t.get("torch_single"), t["ours"]),
            "GB/s": gbs, "frac_copy_bw": gbs / limits.copy_gbs,
        })
    return rows
