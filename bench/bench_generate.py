"""Generation (decode) speed: fusegrad's GPT.generate (float32 and bf16 weights) vs
transformers' generate and a PyTorch eager KV-cache loop (float32 and bf16) on the same
weights, interleaved, at batch 1, batch 8 and the prefill of a 512-token prompt; the skinny
products alone; and the quality of bf16 weights (validation perplexity, float32 vs bf16, for a
briefly trained byte-level GPT and the random GPT-2-size one).

Decoding reads every weight once per token, so it is bound by memory bandwidth: the rows
report tokens/s and the bandwidth achieved (weight bytes streamed per token x tokens/s),
next to the copy bandwidth measured in this run. Validation first: our greedy tokens must
equal transformers' (or the PyTorch loop's) for the same random GPT-2 weights.

    python -m bench generate           # GPT-2 124M shape (random weights): ~3 min on 2 cores
    python -m bench generate --quick   # a 4-layer model
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from bench.common import interleaved, ratio, settle, torch
from fusegrad import _C
from fusegrad.models import GPT, GPTConfig

GPT2 = dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)
QUICK = dict(vocab_size=50304, block_size=512, n_layer=4, n_head=12, n_embd=768)


def _weight_bytes(model, per=4):
    """Bytes one decode step streams: every weight matrix (the head once) at ``per`` bytes."""
    c = model.config
    skip = ("wpe",) if c.tie_weights else ("wpe", "wte")      # embeddings: one row per token
    return per * sum(p.data.size for n_, p in model.named_parameters() if p.data.ndim == 2 and not n_.startswith(skip))


def _hf_model(model, dtype=None):
    """transformers' GPT2LMHeadModel holding ``model``'s weights, or None when not installed."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    c = model.config
    hc = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                    n_head=c.n_head, activation_function="gelu_new", resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
                    layer_norm_epsilon=c.layer_norm_eps)
    hf = GPT2LMHeadModel(hc).eval()
    sd = {}
    for k, v in model.state_dict().items():
        a = torch.from_numpy(v.data.copy())
        if k.endswith(".weight") and any(s in k for s in ("c_attn", "c_proj", "c_fc")):
            a = a.t().contiguous()                       # Linear (out, in) -> Conv1D (in, out)
        sd["transformer." + k] = a
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    hf.load_state_dict(sd, strict=False)
    return hf.to(dtype) if dtype is not None else hf


def _torch_decoder(model, dtype=None):
    """A plain PyTorch eager greedy decoder with a preallocated KV cache (no transformers)."""
    import torch.nn.functional as TF

    c = model.config
    P = {k: torch.from_numpy(v.data.copy()) for k, v in model.state_dict().items()}
    if dtype is not None:
        P = {k: v.to(dtype) for k, v in P.items()}
    C, H, D = c.n_embd, c.n_head, c.n_embd // c.n_head

    def forward(ids, kc, vc, p0):
        B, T = ids.shape
        x = TF.embedding(ids, P["wte.weight"]) + P["wpe.weight"][p0:p0 + T]
        for i in range(c.n_layer):
            h = f"h.{i}."
            a = TF.layer_norm(x, (C,), P[h + "ln_1.weight"], P[h + "ln_1.bias"])
            q, k, v = TF.linear(a, P[h + "attn.c_attn.weight"], P[h + "attn.c_attn.bias"]).split(C, dim=-1)
            q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
            kc[i][:, :, p0:p0 + T] = k
            vc[i][:, :, p0:p0 + T] = v
            y = TF.scaled_dot_product_attention(q, kc[i][:, :, :p0 + T], vc[i][:, :, :p0 + T], is_causal=T > 1)
            x = TF.linear(y.transpose(1, 2).reshape(B, T, C), P[h + "attn.c_proj.weight"], P[h + "attn.c_proj.bias"]) + x
            m = TF.layer_norm(x, (C,), P[h + "ln_2.weight"], P[h + "ln_2.bias"])
            m = TF.gelu(TF.linear(m, P[h + "mlp.c_fc.weight"], P[h + "mlp.c_fc.bias"]), approximate="tanh")
            x = TF.linear(m, P[h + "mlp.c_proj.weight"], P[h + "mlp.c_proj.bias"]) + x
        x = TF.layer_norm(x[:, -1], (C,), P["ln_f.weight"], P["ln_f.bias"])
        return TF.linear(x, P["wte.weight"])

    def generate(idx, n):
        B, T = idx.shape
        dt = P["wte.weight"].dtype
        kc = [torch.empty(B, H, T + n, D, dtype=dt) for _ in range(c.n_layer)]
        vc = [torch.empty(B, H, T + n, D, dtype=dt) for _ in range(c.n_layer)]
        out = [torch.from_numpy(idx)]
        with torch.inference_mode():
            logits = forward(out[0], kc, vc, 0)
            for i in range(n):
                nxt = logits.argmax(-1, keepdim=True)
                out.append(nxt)
                if i + 1 < n:
                    logits = forward(nxt, kc, vc, T + i)
        return torch.cat(out, 1).numpy()

    return generate


def _timed(fns, rounds):
    """Median seconds per call, round-robin (each call is long: no inner repeats)."""
    s = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            settle()
            t0 = time.perf_counter()
            f()
            s[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in s.items()}


def _matvec_rows(limits, quick):
    rng = np.random.default_rng(0)
    shapes = [(768, 2304), (768, 3072), (3072, 768), (768, 50304)]
    rows = []
    for K, N in shapes[:2] if quick else shapes:
        x = rng.standard_normal((1, K)).astype(np.float32)
        w = (rng.standard_normal((N, K)) * 0.02).astype(np.float32)
        wb = _C._bf16_from_float32(w)
        fns = {"ours_f32": lambda: _C.gemv(x, w), "ours_bf16": lambda: _C.gemv(x, wb)}
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            txb, twb = tx.bfloat16(), tw.bfloat16()
            assert np.allclose(_C.gemv(x, w), torch.nn.functional.linear(tx, tw).numpy(), rtol=1e-4, atol=1e-5)
            fns["torch_f32"] = lambda: torch.nn.functional.linear(tx, tw)
            fns["torch_bf16"] = lambda: torch.nn.functional.linear(txb, twb)
        t = interleaved(fns, reps=9)
        r = {"product": f"(1x{K}) @ ({N}x{K})^T", "MB f32": w.nbytes / 1e6}
        for k, v in t.items():
            nb = w.nbytes if k.endswith("f32") else wb.nbytes
            r[f"{k} ms"] = v * 1e3
            r[f"{k} GB/s"] = nb / v / 1e9
        r["ours/torch f32"] = ratio(t.get("torch_f32"), t["ours_f32"])
        r["ours/torch bf16"] = ratio(t.get("torch_bf16"), t["ours_bf16"])
        r["copy GB/s"] = limits.copy_gbs
        rows.append(r)
    return rows


def _text_ids():
    """(name, train ids, validation ids) of a text, byte-level: tinyshakespeare where the shared
    data folder is beside the checkout, else fusegrad's default corpus; split 90/10."""
    from fusegrad.tokenizers import ByteTokenizer

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
    if path.is_file():
        name, text = "tinyshakespeare", path.read_bytes()
    else:
        from fusegrad.corpus import default_corpus

        name, text = "default corpus", default_corpus().encode()
    ids = ByteTokenizer().encode(text)
    n = int(len(ids) * 0.9)
    return name, ids[:n], ids[n:]


def _train_briefly(ids, iters, seed=0):
    """A byte-level 4-layer, 128-wide GPT (nanoGPT's CPU recipe: context 64, batch 12) after ``iters`` AdamW steps."""
    from fusegrad import optim

    m = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=4, n_head=4, n_embd=128), seed=seed)
    opt = optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95))
    r = np.random.default_rng(seed)
    for _ in range(iters):
        w = ids[r.integers(0, len(ids) - 65, 12)[:, None] + np.arange(65)]
        loss = m(w[:, :-1], w[:, 1:])[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m, float(loss.data)


def _ppl_decode(model, ids, rows, T):
    """Perplexity through the C++ decode steps (teacher-forced, ``rows`` windows of T + 1 tokens
    side by side): what generation computes, bf16 products included."""
    c = model.config
    w = ids[np.arange(rows)[:, None] * T + np.arange(T + 1)]
    shape = (rows, c.n_kv_head, c.block_size, c.head_dim)
    dec = model._decoder([[np.empty(shape, np.float32), np.empty(shape, np.float32)] for _ in range(c.n_layer)])
    pos, nll = np.zeros(rows, np.int64), 0.0
    for t in range(T):
        lg = dec.step(w[:, t].copy(), pos.copy()).astype(np.float64)
        mx = lg.max(-1)
        lse = mx + np.log(np.exp(lg - mx[:, None]).sum(-1))
        nll += float((lse - lg[np.arange(rows), w[:, t + 1]]).sum())
        pos += 1
    return float(np.exp(nll / (rows * T)))


def _ppl_rows(gpt2, quick):
    """bf16 weights' quality: validation perplexity with float32 and bf16-rounded weights."""
    from fusegrad.lm import perplexity

    name, tr, va = _text_ids()
    iters = 60 if quick else 300
    small, last = _train_briefly(tr, iters)
    rows = []
    for label, m, T, nw in [(f"4L-128 byte GPT, {iters} AdamW steps (train loss {last:.2f})", small, 64, 64 if quick else 256),
                            (f"GPT {gpt2.config.n_layer}L-{gpt2.config.n_embd} random weights (std 0.02)", gpt2, 256, 2 if quick else 4)]:
        m16 = m.to_inference("bfloat16")
        t0 = time.perf_counter()
        p32, p16 = perplexity(m, va, T, max_windows=nw), perplexity(m16, va, T, max_windows=nw)
        row = {"model": label, "text": f"{name} validation, {nw} x {T} byte tokens",
               "ppl f32": p32, "ppl bf16": p16, "bf16 change %": 100 * (p16 / p32 - 1)}
        if m is small:   # the same through the decode steps (gemv_bf16), 16 windows
            d32, d16 = _ppl_decode(m, va, 16, T), _ppl_decode(m16, va, 16, T)
            row.update({"decode ppl f32 (16 windows)": d32, "decode ppl bf16": d16, "decode change %": 100 * (d16 / d32 - 1)})
        row["s"] = time.perf_counter() - t0
        rows.append(row)
    return rows


def run(limits, quick):
    rows = _matvec_rows(limits, quick)
    cfg = GPTConfig(**(QUICK if quick else GPT2))
    model = GPT(cfg, seed=0)
    rows += _ppl_rows(model, quick)
    m16 = model.to_inference("bfloat16")
    rng = np.random.default_rng(1)
    new = 32 if quick else 128
    hf = _hf_model(model) if torch is not None else None
    tdec = _torch_decoder(model) if torch is not None else None
    tdec16 = _torch_decoder(model, torch.bfloat16) if torch is not None else None

    # validation: greedy tokens equal transformers' (or the PyTorch loop's)
    prompt = rng.integers(0, cfg.vocab_size, (1, 16))
    ours = model.generate(prompt, 16, temperature=0)
    ref_name, ref = None, None
    if hf is not None:
        ref_name = "transformers"
        ref = hf.generate(torch.from_numpy(prompt), max_new_tokens=16, do_sample=False, min_new_tokens=16,
                          attention_mask=torch.ones_like(torch.from_numpy(prompt)), pad_token_id=0).numpy()
    elif tdec is not None:
        ref_name, ref = "pytorch", tdec(prompt, 16)
    check = "no reference" if ref is None else (f"= {ref_name}" if np.array_equal(ours, ref) else f"DIFFERS from {ref_name}")

    def decode_fns(idx, n, with_bf16=True):
        f = {"ours f32": lambda: model.generate(idx, n, temperature=0)}
        if with_bf16:
            f["ours bf16"] = lambda: m16.generate(idx, n, temperature=0)
        if hf is not None:
            am = torch.ones(idx.shape, dtype=torch.long)
            f["transformers f32"] = lambda: hf.generate(torch.from_numpy(idx), max_new_tokens=n, min_new_tokens=n,
                                                        do_sample=False, attention_mask=am, pad_token_id=0)
        if tdec is not None:
            f["pytorch f32"] = lambda: tdec(idx, n)
            if with_bf16:
                f["pytorch bf16"] = lambda: tdec16(idx, n)
        return f

    wbytes = _weight_bytes(model)
    flops = 2 * _weight_bytes(model, 1)                        # per token in the products (attention aside)
    base = [k for k in ("transformers f32", "pytorch f32")]
    for B, T, n, label in [(1, 16, new, "decode"), (8, 16, new // 4, "decode"), (1, 512 if not quick else 128, 1, "prefill")]:
        idx = rng.integers(0, cfg.vocab_size, (B, T))
        fns = decode_fns(idx, n, with_bf16=label == "decode")
        t_full = _timed(fns, 3)
        what = f"{label} B{B} prompt {T}" + (f", {n} new" if label == "decode" else "")
        if label == "decode":
            t_one = _timed(decode_fns(idx, 1), 3)                  # the prefill + 1 token alone
            tps = {k: B * (n - 1) / max(v - t_one[k], 1e-9) for k, v in t_full.items()}
        else:
            tps = {k: B * T / v for k, v in t_full.items()}
        for k in fns:
            r = {"product": f"GPT {cfg.n_layer}L-{cfg.n_embd} {what} ({check})", "who": k, "tok/s": tps[k]}
            if label == "decode":    # each step streams every weight once: bytes x steps/s
                r["weights GB/s"] = (wbytes // (2 if "bf16" in k else 1)) * tps[k] / B / 1e9
            else:
                r["GFLOP/s (products)"] = flops * tps[k] / 1e9
            for b in base:
                if b in tps:
                    r[f"x {b}"] = tps[k] / tps[b]
            r["copy GB/s"] = limits.copy_gbs
            rows.append(r)
    return rows
