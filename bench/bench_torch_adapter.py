"""A PyTorch GPT's CPU training step with fusegrad.torch swapped in vs the unmodified model.

The model is tests/torch_gpt.py (plain PyTorch; attention, layer norm, GELU, linear and cross
entropy called through a namespace F). "torch" runs it with torch.nn.functional and
torch.optim.AdamW (foreach); "fusegrad" with fusegrad.torch and fusegrad.torch.AdamW. One step =
forward, backward, AdamW update, zero_grad, timed interleaved. Both start from the same weights;
the first-step losses are compared before timing (validation).
"""
from __future__ import annotations

import sys
from pathlib import Path

from bench.common import interleaved, ratio, torch

TESTS = Path(__file__).resolve().parent.parent / "tests"

CONFIGS = [  # (name, GPTConfig kwargs, batch)
    ("gpt L2 C128 T128 V1024", dict(vocab_size=1024, block_size=128, n_layer=2, n_head=4, n_embd=128), 8),
    ("gpt L4 C256 T256 V4096", dict(vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_embd=256), 4),
]


def run(limits, quick=False):
    if torch is None or not hasattr(torch.library, "custom_op"):
        return [{"op": "torch_adapter", "note": "needs torch >= 2.4"}]
    import torch.nn.functional as TF

    import fusegrad.torch as fgt
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from torch_gpt import GPT, GPTConfig, batches

    rows = []
    for name, kw, B in CONFIGS[:1] if quick else CONFIGS:
        cfg = GPTConfig(**kw)
        idx, targets = batches(cfg, B, 1)[0]
        setups = {}
        for label, F, opt_cls in (("torch", TF, torch.optim.AdamW), ("fusegrad", fgt, fgt.AdamW)):
            torch.manual_seed(0)
            model = GPT(cfg, F)
            opt = opt_cls(model.parameters(), lr=3e-4, weight_decay=0.1)
            setups[label] = (model, opt)
        # validate: same weights, same batch -> same loss and gradients before any timing
        fgt.fallback_counts.clear()
        (mt, _), (mf, _) = setups["torch"], setups["fusegrad"]
        lt, lf = mt(idx, targets), mf(idx, targets)
        lt.backward()
        lf.backward()
        grad_err = max((a.grad - b.grad).abs().max().item() for a, b in zip(mt.parameters(), mf.parameters()))
        loss_err = abs(lt.item() - lf.item())
        for m, _ in setups.values():
            m.zero_grad(set_to_none=True)

        def step(model, opt):
            loss = model(idx, targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t = interleaved({k: (lambda m=m, o=o: step(m, o)) for k, (m, o) in setups.items()},
                        reps=5 if quick else 9, warmup=1)
        tokens = B * cfg.block_size
        rows.append({
            "model": name, "tokens/step": tokens, "loss_err": loss_err, "grad_err": grad_err,
            "fallbacks": sum(fgt.fallback_counts.values()),
            "fusegrad_ms": t["fusegrad"] * 1e3, "torch_ms": t["torch"] * 1e3,
            "fusegrad_tok/s": tokens / t["fusegrad"], "torch_tok/s": tokens / t["torch"],
            "x_torch": ratio(t["torch"], t["fusegrad"]),
        })
    return rows
