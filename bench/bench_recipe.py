"""nanoGPT's CPU recipe for character-level Shakespeare, trained to the end by fusegrad and by
the same model in PyTorch eager: wall time of the training loop and the validation loss.

The recipe (nanoGPT's README, "I only have a macbook"): 4 layers, 4 heads, width 128, context 64,
batch 12, 2000 iterations, no dropout; AdamW lr 1e-3 (betas 0.9, 0.99, weight decay 0.1 on the
matrices), 100 warmup steps then cosine decay to 1e-4 at step 2000, gradient clipping at 1.0;
validation loss over 20 batches. Text: ../shared/data/tinyshakespeare.txt (or
FUSEGRAD_SHAKESPEARE), characters as tokens, the last 10% held out.

Both runs start from the same weights and see the same batches; their steps alternate (which
framework goes first alternates too), so a machine whose speed drifts slows both alike. Each
step is timed from the batch to the updated weights (forward, loss, backward, clip, AdamW,
zeroing the gradients). ``FUSEGRAD_RECIPE_DTYPE=bf16`` trains both under autocast:
``fusegrad.autocast("bfloat16")`` and ``torch.autocast("cpu", dtype=torch.bfloat16)``; a row
for each dtype with FUSEGRAD_RECIPE_DTYPE=both. ``--quick`` trains 200 steps.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from bench.common import torch, torch_threads
from fusegrad import autocast, optim
from fusegrad.models import GPT, GPTConfig
from fusegrad.nn.utils import clip_grad_norm_

DATA = Path(os.environ.get("FUSEGRAD_SHAKESPEARE",
                           Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"))
LR, MIN_LR, WARMUP, BETAS, WD, CLIP = 1e-3, 1e-4, 100, (0.9, 0.99), 0.1, 1.0
BATCH, BLOCK, EVAL_BATCHES = 12, 64, 20


def lr_at(it: int, iters: int) -> float:
    """nanoGPT's get_lr: linear warmup, then cosine decay to MIN_LR at the last step."""
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    r = min(1.0, (it - WARMUP) / max(1, iters - WARMUP))
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * r)) * (LR - MIN_LR)


def load_chars():
    text = DATA.read_text(encoding="utf-8")
    chars = sorted(set(text))
    lut = {c: i for i, c in enumerate(chars)}
    ids = np.array([lut[c] for c in text], dtype=np.int64)
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], len(chars)


def batch(ids, rng):
    ix = rng.integers(0, len(ids) - BLOCK - 1, BATCH)
    x = np.stack([ids[i:i + BLOCK] for i in ix])
    return x, np.stack([ids[i + 1:i + 1 + BLOCK] for i in ix])


def _groups(named):
    named = list(named)
    return ([p for _, p in named if p.ndim >= 2], [p for _, p in named if p.ndim < 2])


def _recipe(vocab, train, val, iters, bf16):
    """One dtype: train both frameworks in alternating steps; returns the row."""
    from bench.bench_gpt import _torch_model

    cfg = GPTConfig(vocab_size=vocab, block_size=BLOCK, n_layer=4, n_head=4, n_embd=128)
    model = GPT(cfg, seed=1337)
    tf, tparams = (None, None) if torch is None else _torch_model(model)   # copies the initial weights
    dec, nodec = _groups(model.named_parameters())
    opt = optim.AdamW([{"params": dec, "weight_decay": WD}, {"params": nodec, "weight_decay": 0.0}],
                      lr=LR, betas=BETAS)
    sides = {}

    def ours(x, y):
        with autocast("bfloat16", enabled=bf16):
            _, loss = model(x, y)
        loss.backward()
        clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad()
        return loss

    def set_lr(o, lr):
        for g in o.param_groups:
            g["lr"] = lr

    sides["ours"] = (ours, opt)
    if tf is not None:
        tdec = [p for p in tparams if p.ndim >= 2]
        tnodec = [p for p in tparams if p.ndim < 2]
        topt = torch.optim.AdamW([{"params": tdec, "weight_decay": WD}, {"params": tnodec, "weight_decay": 0.0}],
                                 lr=LR, betas=BETAS)

        def theirs(x, y):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = tf(torch.from_numpy(x), torch.from_numpy(y))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tparams, CLIP)
            topt.step()
            topt.zero_grad(set_to_none=True)
            return loss

        sides["torch"] = (theirs, topt)

    spent = {k: 0.0 for k in sides}
    rng = np.random.default_rng(1337)
    names = list(sides)
    for it in range(iters):
        x, y = batch(train, rng)
        lr = lr_at(it, iters)
        for k in names if it % 2 == 0 else names[::-1]:
            fn, o = sides[k]
            set_lr(o, lr)
            t0 = time.perf_counter()
            loss = fn(x, y)
            spent[k] += time.perf_counter() - t0
            if it == iters - 1 or it % 500 == 0:
                v = float(loss.data) if k == "ours" else loss.item()
                if not math.isfinite(v):
                    raise RuntimeError(f"recipe: {k}'s loss is {v} at step {it}")

    vrng = np.random.default_rng(7)
    vb = [batch(val, vrng) for _ in range(EVAL_BATCHES)]
    model.eval()
    with autocast("bfloat16", enabled=bf16):
        vo = float(np.mean([float(model(x, y)[1].data) for x, y in vb]))
    row = {"dtype": "bf16" if bf16 else "fp32", "iters": iters, "ours_s": spent["ours"], "ours_val": vo}
    if tf is not None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            vt = float(np.mean([tf(torch.from_numpy(x), torch.from_numpy(y)).item() for x, y in vb]))
        row.update({"torch_s": spent["torch"], "torch_val": vt, "speedup_vs_torch": spent["torch"] / spent["ours"]})
    return row


def run(limits, quick=False):
    if not DATA.is_file():
        return [{"skipped": f"no text at {DATA} (set FUSEGRAD_SHAKESPEARE)"}]
    torch_threads(limits.threads)
    train, val, vocab = load_chars()
    iters = 200 if quick else int(os.environ.get("FUSEGRAD_RECIPE_ITERS", "2000"))
    which = os.environ.get("FUSEGRAD_RECIPE_DTYPE", "fp32")
    dtypes = {"fp32": [False], "bf16": [True], "both": [False, True]}.get(which)
    if dtypes is None:
        raise ValueError(f"FUSEGRAD_RECIPE_DTYPE must be fp32, bf16 or both, got {which!r}")
    return [_recipe(vocab, train, val, iters, bf16) for bf16 in dtypes]
