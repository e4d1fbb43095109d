"""GPT training step (forward, backward, AdamW) in tokens/s: fusegrad vs the same model in
PyTorch eager (CPU), same weights and data, interleaved; plus model FLOPs utilization
against the FMA peak measured in this run.

FLOPs per token (nanoGPT's estimate): 6 N + 12 L T C, N = parameters excluding the position
table (the tied embedding counts once, as the output projection's matmul).
"""
from __future__ import annotations

import numpy as np

from bench.common import interleaved, paired_ratio, ratio, torch, torch_threads
from fusegrad import optim
from fusegrad.models import GPT, GPTConfig

CONFIGS = [
    # the model `python -m fusegrad train` trains by default (Python overhead per op matters most)
    ("default", dict(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128), 16, 128),
    ("small", dict(vocab_size=256, block_size=256, n_layer=4, n_head=4, n_embd=256), 8, 256),
    ("gpt2-small", dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768), 4, 64),
]
LR, WD = 1e-4, 0.1


def _torch_model(model):
    """The same GPT in plain PyTorch eager, parameters copied from ``model``."""
    import torch.nn.functional as TF

    cfg = model.config
    P = {n: torch.nn.Parameter(torch.from_numpy(p.data.copy())) for n, p in model.named_parameters()}
    C, H = cfg.n_embd, cfg.n_head

    def fwd(idx, tgt):
        B, T = idx.shape
        x = TF.embedding(idx, P["wte.weight"]) + P["wpe.weight"][:T]
        for i in range(cfg.n_layer):
            h = f"h.{i}."
            a = TF.layer_norm(x, (C,), P[h + "ln_1.weight"], P[h + "ln_1.bias"])
            q, k, v = TF.linear(a, P[h + "attn.c_attn.weight"], P[h + "attn.c_attn.bias"]).split(C, dim=-1)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + TF.linear(y, P[h + "attn.c_proj.weight"], P[h + "attn.c_proj.bias"])
            m = TF.layer_norm(x, (C,), P[h + "ln_2.weight"], P[h + "ln_2.bias"])
            m = TF.gelu(TF.linear(m, P[h + "mlp.c_fc.weight"], P[h + "mlp.c_fc.bias"]), approximate="tanh")
            x = x + TF.linear(m, P[h + "mlp.c_proj.weight"], P[h + "mlp.c_proj.bias"])
        x = TF.layer_norm(x, (C,), P["ln_f.weight"], P["ln_f.bias"])
        logits = TF.linear(x, P["wte.weight"])
        return TF.cross_entropy(logits.view(B * T, -1), tgt.view(-1))

    return fwd, list(P.values())


def run(limits, quick=False):
    rows = []
    torch_threads(limits.threads)
    for name, kw, B, T in CONFIGS[:2] if quick else CONFIGS:
        cfg = GPTConfig(**kw)
        model = GPT(cfg, seed=0)
        r = np.random.default_rng(0)
        x, y = r.integers(0, cfg.vocab_size, (B, T)), r.integers(0, cfg.vocab_size, (B, T))
        opt = optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)

        def ours():
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return float(loss.data)

        fns = {"ours": ours}
        err = None
        if torch is not None:
            tf, tparams = _torch_model(model)
            topt = torch.optim.AdamW(tparams, lr=LR, weight_decay=WD)
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)

            def theirs():
                loss = tf(tx, ty)
                topt.zero_grad()
                loss.backward()
                topt.step()
                return loss.item()

            # validate: the first step's loss agrees (same weights, same data)
            a, b = ours(), theirs()
            err = abs(a - b) / abs(b)
            fns["torch"] = theirs
        reps = 3 if name == "gpt2-small" else 9  # medians of 9: the shared machine drifts ±10%
        samples = {}
        t = interleaved(fns, reps=reps, warmup=1, samples_out=samples)
        toks = B * T
        n = model.num_params(non_embedding=True)
        flops_tok = 6 * n + 12 * cfg.n_layer * T * cfg.n_embd
        tps = toks / t["ours"]
        ttps = toks / t["torch"] if "torch" in t else None
        rows.append({
            "config": f"{name} B{B} T{T}", "params_M": n / 1e6, "loss_rel_err_step1": err,
            "ours_ms": t["ours"] * 1e3, "torch_ms": t["torch"] * 1e3 if "torch" in t else None,
            "ours_tok_s": tps, "torch_tok_s": ttps, "speedup_vs_torch": ratio(t.get("torch"), t["ours"]),
            "speedup_paired": paired_ratio(samples, "torch", "ours"),
            "ours_gflops": flops_tok * tps / 1e9, "mfu": flops_tok * tps / (limits.peak_gflops * 1e9),
            "torch_mfu": flops_tok * ttps / (limits.peak_gflops * 1e9) if ttps else None,
        })
    return rows
