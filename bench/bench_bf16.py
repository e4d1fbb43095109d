"""Mixed precision (issue 19): bf16 matrix products and GPT training steps under autocast, against
PyTorch in fp32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)`` in the same run.

Products: the small GPT's (2048 tokens, width 256: forward, dx, dW of its 768-wide layer) and
square 1024; ours takes float32 operands and rounds them to bf16 while packing (what autocast calls),
PyTorch's autocast column does the same from float32, its "bf16" column starts from bf16 tensors.
Steps: forward + loss + backward + AdamW, ours fp32 and under ``fusegrad.autocast("bfloat16")``,
PyTorch eager fp32 and autocast; ``vs_torch_best`` divides PyTorch's faster time by our bf16 time.
"""
from __future__ import annotations

import numpy as np

from bench.common import interleaved, ratio, torch, torch_threads
from fusegrad import _C, autocast, ops, optim
from fusegrad.models import GPT, GPTConfig

PRODUCTS = [  # name, M, K, N, trans_a, trans_b
    ("small GPT fwd 2048x256 . 256x768", 2048, 256, 768, False, True),
    ("small GPT dx 2048x768 . 768x256", 2048, 768, 256, False, False),
    ("small GPT dW 768x2048 . 2048x256", 768, 2048, 256, True, False),
    ("square 1024", 1024, 1024, 1024, False, False),
]
STEPS = [  # name, GPTConfig kwargs, batch, context
    ("default", dict(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=128), 16, 128),
    ("small", dict(vocab_size=65, block_size=256, n_layer=4, n_head=4, n_embd=256), 8, 256),
]


def _products(quick):
    rows = []
    rng = np.random.default_rng(0)
    for name, M, K, N, ta, tb in PRODUCTS[:2] if quick else PRODUCTS:
        a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
        out = np.empty((M, N), np.float32)
        fns = {"ours_bf16": lambda: ops.matmul_bf16(a, b, trans_a=ta, trans_b=tb, out=out),
               "ours_fp32": lambda: ops.matmul(a, b, trans_a=ta, trans_b=tb, out=out)}
        if torch is not None:
            A, B = torch.from_numpy(a), torch.from_numpy(b)
            A, B = (A.t() if ta else A), (B.t() if tb else B)
            Ab, Bb = A.bfloat16(), B.bfloat16()

            def auto():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return A @ B
            fns.update({"torch_fp32": lambda: A @ B, "torch_autocast": auto, "torch_bf16": lambda: Ab @ Bb})
        t = interleaved(fns, reps=7)
        gf = {k: 2.0 * M * N * K / v / 1e9 for k, v in t.items()}
        best = min((t[k] for k in ("torch_fp32", "torch_autocast") if k in t), default=None)
        rows.append({"op": name, "path": _C.bf16_path(), **{f"{k}_gflops": v for k, v in gf.items()},
                     "vs_torch_best": ratio(best, t["ours_bf16"])})
    return rows


def _steps(quick):
    from bench.bench_gpt import _torch_model

    rows = []
    for name, kw, B, T in STEPS[:1] if quick else STEPS:
        cfg = GPTConfig(**kw)
        model = GPT(cfg, seed=0)
        r = np.random.default_rng(0)
        x, y = r.integers(0, cfg.vocab_size, (B, T)), r.integers(0, cfg.vocab_size, (B, T))
        opt = optim.AdamW(model.parameters(), lr=1e-4)

        def ours(bf16):
            def step():
                with autocast("bfloat16", enabled=bf16):
                    _, loss = model(x, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            return step
        fns = {"ours_fp32": ours(False), "ours_bf16": ours(True)}
        if torch is not None:
            tf, tparams = _torch_model(model)
            topt = torch.optim.AdamW(tparams, lr=1e-4)
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)

            def theirs(bf16):
                def step():
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        loss = tf(tx, ty)
                    topt.zero_grad()
                    loss.backward()
                    topt.step()
                return step
            fns.update({"torch_fp32": theirs(False), "torch_autocast": theirs(True)})
        t = interleaved(fns, reps=3 if quick else 7, warmup=1)
        best = min((t[k] for k in ("torch_fp32", "torch_autocast") if k in t), default=None)
        rows.append({"op": f"GPT step {name} B{B} T{T}", "path": _C.bf16_path(),
                     **{f"{k}_ms": v * 1e3 for k, v in t.items()}, "vs_torch_best": ratio(best, t["ours_bf16"])})
    return rows


def run(limits, quick=False):
    torch_threads(limits.threads)
    return _products(quick) + _steps(quick)
