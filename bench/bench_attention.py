"""Flash-style attention vs PyTorch CPU scaled_dot_product_attention (+ autograd backward)
and a naive NumPy implementation: forward and forward+backward, B*H = 48, D = 64/128,
T = S in 128..2048, causal and not, interleaved; plus peak extra memory at T = 4096. Where the CPU
runs another vector path (avx2 beside avx512), ours is timed on it too: x_<isa> > 1 means the
active path is faster. Mixed precision: ours with bf16=True (what fusegrad.autocast runs) against
ours in float32 and PyTorch's SDPA under torch.autocast("cpu", dtype=torch.bfloat16), fwd+bwd."""
from __future__ import annotations

import tracemalloc

import numpy as np

from bench.common import interleaved, on_isa, other_vector_isas, rand, ratio, torch
from fusegrad import ops

B, H = 4, 12  # B*H = 48


def naive_fwd(q, k, v, causal, scale):
    s = scale * (q @ np.swapaxes(k, -1, -2))
    if causal:
        T, S = s.shape[-2:]
        s = np.where(np.arange(S)[None, :] > np.arange(T)[:, None] + (S - T), -np.inf, s)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - m)
    p /= p.sum(-1, keepdims=True)
    return p @ v, p


def naive_fwd_bwd(q, k, v, do, causal, scale):
    o, p = naive_fwd(q, k, v, causal, scale)
    dv = np.swapaxes(p, -1, -2) @ do
    dp = do @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    return scale * (ds @ k), scale * (np.swapaxes(ds, -1, -2) @ q), dv


def ours_fwd_bwd(q, k, v, do, causal):
    o, lse = ops.attention_forward(q, k, v, causal=causal)
    return ops.attention_backward(do, q, k, v, o, lse, causal=causal)


def ours_bf16_fwd_bwd(q, k, v, do, causal):
    o, lse = ops.attention_forward(q, k, v, causal=causal, bf16=True)
    return ops.attention_backward(do, q, k, v, o, lse, causal=causal, bf16=True)


def run_bf16(limits, quick=False):
    """fwd+bwd in mixed precision: ours bf16 vs ours float32 vs PyTorch autocast (float32 inputs)."""
    rows = []
    for D, T, causal in [(64, 256, True)] if quick else [(64, T, c) for T in (256, 1024) for c in (True, False)]:
        q, k, v, do = (rand((B, H, T, D), seed=s) for s in range(4))
        fns = {"ours_bf16": lambda: ours_bf16_fwd_bwd(q, k, v, do, causal),
               "ours_f32": lambda: ours_fwd_bwd(q, k, v, do, causal)}
        if torch is not None:
            tq, tk, tv, tdo = (torch.from_numpy(x) for x in (q, k, v, do))

            def torch_amp():
                a, b, c = (x.detach().requires_grad_() for x in (tq, tk, tv))
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    o = torch.nn.functional.scaled_dot_product_attention(a, b, c, is_causal=causal)
                o.backward(tdo.to(o.dtype))
                return a.grad, b.grad, c.grad
            fns["torch_amp"] = torch_amp
        t = interleaved(fns, reps=3 if quick else 5, warmup=1)
        rows.append({"op": "attention bf16 fwd+bwd", "T=S": T, "D": D, "causal": causal,
                     "ours_bf16_ms": t["ours_bf16"] * 1e3, "ours_f32_ms": t["ours_f32"] * 1e3,
                     "torch_amp_ms": t.get("torch_amp", 0) * 1e3 or None,
                     "x_ours_f32": ratio(t["ours_f32"], t["ours_bf16"]),
                     "x_torch_amp": ratio(t.get("torch_amp"), t["ours_bf16"]),
                     "GFLOP/s": flops(T, D, causal, True) / t["ours_bf16"] / 1e9})
    return rows


def flops(T, D, causal, bwd):
    f = 4.0 * B * H * T * T * D * (0.5 if causal else 1.0)  # QK^T and PV
    return f * (3.5 if bwd else 1.0)  # backward: 5 matmuls (QK^T, dO V^T, dV, dQ, dK) on top


def peak_memory(T=4096, D=64):
    """Peak bytes allocated (tracemalloc sees NumPy buffers) for fwd+bwd at B*H = 1, beyond
    the inputs; ours adds its C++ scratch, which tracemalloc cannot see: Di (T floats), the
    transposed key and value tiles of the AVX2 path (2 * T * D floats) and per-thread tiles
    (< 100 KB)."""
    q, k, v, do = (rand((1, 1, T, D), seed=s) for s in range(4))
    out = {}
    for name, fn in (("ours", lambda: ours_fwd_bwd(q, k, v, do, True)),
                     ("numpy", lambda: naive_fwd_bwd(q, k, v, do, True, D ** -0.5))):
        tracemalloc.start()
        fn()
        out[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    out["ours"] += 4 * (T + 2 * T * D) + 100 * 1024
    return out


def run(limits, quick=False):
    rows = []
    configs = ([(64, 256, True), (64, 1024, True)] if quick else
               [(64, T, c) for T in (128, 256, 512, 1024, 2048) for c in (True, False)])
    if not quick:
        configs += [(128, T, c) for T in (256, 1024) for c in (True, False)]
    for D, T, causal in configs:
        q, k, v, do = (rand((B, H, T, D), seed=s) for s in range(4))
        scale = D ** -0.5
        o, lse = ops.attention_forward(q, k, v, causal=causal)  # validate first
        if T <= 512:
            ro, _ = naive_fwd(*(x.astype(np.float64) for x in (q, k, v)), causal, scale)
            assert np.abs(o - ro).max() < 1e-4
        fwd = {"ours": lambda: ops.attention_forward(q, k, v, causal=causal)}
        both = {"ours": lambda: ours_fwd_bwd(q, k, v, do, causal)}
        if T <= 1024:
            fwd["numpy"] = lambda: naive_fwd(q, k, v, causal, scale)
            both["numpy"] = lambda: naive_fwd_bwd(q, k, v, do, causal, scale)
        if torch is not None:
            tq, tk, tv, tdo = (torch.from_numpy(x) for x in (q, k, v, do))
            sdpa = torch.nn.functional.scaled_dot_product_attention
            fwd["torch"] = lambda: sdpa(tq, tk, tv, is_causal=causal)

            def torch_both():
                a, b, c = (x.detach().requires_grad_() for x in (tq, tk, tv))
                sdpa(a, b, c, is_causal=causal).backward(tdo)
                return a.grad, b.grad, c.grad
            both["torch"] = torch_both
        reps = 3 if quick else (5 if T >= 1024 else 9)
        for name, fns, bwd in (("fwd", fwd, False), ("fwd+bwd", both, True)):
            for isa in other_vector_isas():
                fns[f"ours_{isa}"] = on_isa(isa, fns["ours"])
            t = interleaved(fns, reps=reps, warmup=1)
            ab = {f"x_{isa}": ratio(t[f"ours_{isa}"], t["ours"]) for isa in other_vector_isas()}
            rows.append({
                "op": f"attention {name}", "T=S": T, "D": D, "causal": causal,
                "ours_ms": t["ours"] * 1e3, "torch_ms": t.get("torch", 0) * 1e3 or None,
                "numpy_ms": t.get("numpy", 0) * 1e3 or None,
                "x_torch": ratio(t.get("torch"), t["ours"]), "x_numpy": ratio(t.get("numpy"), t["ours"]),
                "GFLOP/s": flops(T, D, causal, bwd) / t["ours"] / 1e9,
                "frac_peak": flops(T, D, causal, bwd) / t["ours"] / 1e9 / limits.peak_gflops,
                **ab,
            })
    rows += run_bf16(limits, quick)
    if not quick:
        mem = peak_memory()
        rows.append({"op": "attention fwd+bwd peak extra MB (B*H=1, T=4096, D=64, causal)",
                     "ours_MB": mem["ours"] / 2**20, "numpy_MB": mem["numpy"] / 2**20})
    return rows
