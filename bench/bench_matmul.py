"""matmul vs NumPy (OpenBLAS) and PyTorch (CPU): square sizes and the matmuls of two GPT
training steps, GPT-2 small (C=768, B*T=2048) and bench_gpt's small model (C=256, B*T=2048),
forward and the transposed backward forms. Compute-bound, so each row reports GFLOP/s and the
fraction of the FMA peak measured in the same run. Where the CPU runs another vector path (avx2
beside avx512), ours is timed on it too, interleaved: x_<isa> > 1 means the active path is faster."""
from __future__ import annotations

import numpy as np

from bench.common import interleaved, on_isa, other_vector_isas, rand, ratio, torch
from fusegrad import ops


def shapes(quick):
    sq = [64, 256, 1024] if quick else [64, 128, 256, 512, 1024, 2048]
    rows = [(f"square {n}", n, n, n, False, False) for n in sq]
    gpt = [(2048, 2304, 768), (2048, 3072, 768), (2048, 768, 3072)]  # qkv, fc, proj: x (M,K) @ w^T
    gpt += [(2048, 768, 256), (2048, 256, 256), (2048, 1024, 256), (2048, 256, 1024)]  # the small model's
    for m, n, k in gpt:
        rows.append((f"fwd {m}x{k}.{k}x{n}", m, n, k, False, False))
        rows.append((f"dx {m}x{n}.{n}x{k}", m, k, n, False, False))   # dx = dy @ w
        rows.append((f"dw ({m}x{n})^T.{m}x{k}", n, k, m, True, False))  # dw = dy^T @ x
    if quick:  # the 2048-row GPT shapes and square 2048 are skipped; two 512-row stand-ins instead
        rows = [r for r in rows if r[0].startswith("square")]
        rows += [("fwd 512x768.768x2304", 512, 2304, 768, False, False),
                 ("dw (512x768)^T.512x768", 768, 768, 512, True, False)]
    else:
        rows.append(("fwd 2048x768.768x50304", 2048, 50304, 768, False, False))
    return rows


def run(limits, quick=False):
    out = []
    for name, m, n, k, ta, tb in shapes(quick):
        a = rand((k, m) if ta else (m, k))
        b = rand((n, k) if tb else (k, n), seed=1)
        aa, bb = (a.T if ta else a), (b.T if tb else b)
        c = ops.matmul(a, b, trans_a=ta, trans_b=tb)
        want = aa.astype(np.float64) @ bb.astype(np.float64)  # validate first
        err = float(np.max(np.abs(c - want)) / (np.max(np.abs(want)) + 1e-30))
        cbuf = np.empty((m, n), np.float32)
        fns = {"ours": lambda: ops.matmul(a, b, trans_a=ta, trans_b=tb, out=cbuf),
               "numpy": lambda: np.matmul(aa, bb, out=cbuf)}
        if torch is not None:
            ta_, tb_, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(cbuf)
            ta_ = ta_.t() if ta else ta_
            tb_ = tb_.t() if tb else tb_
            fns["torch"] = lambda: torch.mm(ta_, tb_, out=tc)
        for isa in other_vector_isas():
            fns[f"ours_{isa}"] = on_isa(isa, fns["ours"])
        t = interleaved(fns, reps=5 if m * n * k > 1e9 else 9, warmup=1)
        flops = 2.0 * m * n * k
        gf = flops / t["ours"] / 1e9
        ab = {}
        for isa in other_vector_isas():
            ab[f"x_{isa}"] = ratio(t[f"ours_{isa}"], t["ours"])
            ab[f"{isa}_GFLOP/s"] = flops / t[f"ours_{isa}"] / 1e9
            ab[f"{isa}_frac_peak"] = ab[f"{isa}_GFLOP/s"] / limits.extra.get(f"peak_gflops_{isa}", limits.peak_gflops)
        out.append({"shape": name, "ours_ms": t["ours"] * 1e3, "numpy_ms": t["numpy"] * 1e3,
                    "torch_ms": t["torch"] * 1e3 if "torch" in t else None,
                    "x_numpy": ratio(t["numpy"], t["ours"]), "x_torch": ratio(t.get("torch"), t["ours"]),
                    "GFLOP/s": gf, "numpy_GFLOP/s": flops / t["numpy"] / 1e9,
                    "frac_peak": gf / limits.peak_gflops, "rel_err": err, **ab})
    return out
