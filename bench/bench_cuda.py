"""The CUDA path against PyTorch CUDA, in one run (tools/gpu_check.sh runs it on a lent GPU).

Times are medians of CUDA-event timings of interleaved rounds; bandwidth is compared with the
GPU's measured device-to-device copy bandwidth. Rows say 'skipped' where no GPU can be used."""
from __future__ import annotations



def _timer(cp):
    def time_ms(fns, reps=20, warmup=3):
        ev = {k: [] for k in fns}
        for _ in range(warmup):
            for f in fns.values():
                f()
        cp.cuda.get_current_stream().synchronize()
        for _ in range(reps):
            for k, f in fns.items():
                a, b = cp.cuda.Event(), cp.cuda.Event()
                a.record()
                f()
                b.record()
                b.synchronize()
                ev[k].append(cp.cuda.get_elapsed_time(a, b))
        return {k: sorted(v)[len(v) // 2] for k, v in ev.items()}
    return time_ms


def run(limits, quick=False):
    from fusegrad import cuda, ops

    if not cuda.is_available():
        return [{"op": "cuda", "status": f"skipped: {cuda.unavailable_reason()}"}]
    import cupy as cp
    try:
        import torch
        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    time_ms = _timer(cp)
    rows = []
    n = 256 << 20
    src, dst = cp.empty(n // 4, cp.float32), cp.empty(n // 4, cp.float32)
    copy_gbs = 2 * n / time_ms({"c": lambda: dst.__setitem__(Ellipsis, src)})["c"] / 1e6
    rows.append({"op": "device copy", "GB/s": copy_gbs})
    rng = cp.random.default_rng(0)

    def row(op, shape, t, flops=None, nbytes=None):
        r = {"op": op, "shape": shape, "ours_ms": t["ours"], "torch_ms": t.get("torch")}
        if "torch" in t:
            r["x_torch"] = t["torch"] / t["ours"]
        if flops:
            r["TFLOP/s"] = flops / t["ours"] / 1e9
        if nbytes:
            r["GB/s"] = nbytes / t["ours"] / 1e6
            r["frac_copy_bw"] = r["GB/s"] / copy_gbs
        rows.append(r)

    for N, C in [(8192, 768), (4096, 4096)]:
        x, dy = rng.standard_normal((N, C), dtype=cp.float32), rng.standard_normal((N, C), dtype=cp.float32)
        w, b = rng.standard_normal(C, dtype=cp.float32), rng.standard_normal(C, dtype=cp.float32)

        def ours():
            y, m, r = ops.layernorm_forward(x, w, b)
            ops.layernorm_backward(dy, x, w, m, r)
        fns = {"ours": ours}
        if torch is not None:
            tx, tw, tb = (torch.from_dlpack(a).requires_grad_(True) for a in (x, w, b))
            tdy = torch.from_dlpack(dy)

            def tfn():
                tx.grad = tw.grad = tb.grad = None
                torch.nn.functional.layer_norm(tx, (C,), tw, tb).backward(tdy)
            fns["torch"] = tfn
        row("layernorm fwd+bwd", f"{N}x{C}", time_ms(fns), nbytes=5 * 4 * N * C)

    for B, H, T, D in ([(4, 12, 1024, 64)] if quick else [(4, 12, 1024, 64), (2, 16, 2048, 128)]):
        q, k, v, do = (rng.standard_normal((B, H, T, D), dtype=cp.float32) for _ in range(4))

        # fp32, then bf16 and fp16 products on tensor cores (float32 inputs rounded in the kernel)
        # against SDPA on tensors of that type (flash)
        tdt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16} if torch is not None else {}
        for prec in ("fp32", "bf16", "fp16"):
            flags = {"bf16": prec == "bf16", "fp16": prec == "fp16"}

            def attn(flags=flags):
                o, lse = ops.attention_forward(q, k, v, causal=True, **flags)
                ops.attention_backward(do, q, k, v, o, lse, causal=True, **flags)
            fns = {"ours": attn}
            if torch is not None:
                tq, tk, tv = (torch.from_dlpack(a).to(tdt[prec]).requires_grad_(True) for a in (q, k, v))
                tdo = torch.from_dlpack(do).to(tq.dtype)

                def tattn(tq=tq, tk=tk, tv=tv, tdo=tdo):
                    tq.grad = tk.grad = tv.grad = None
                    torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True).backward(tdo)
                fns["torch"] = tattn
            # causal: half of 4 B H T^2 D (fwd) + 2.5x that (bwd)
            row(f"attention fwd+bwd {prec} causal", f"B{B} H{H} T{T} D{D}",
                time_ms(fns, reps=5), flops=3.5 * 2 * B * H * T * T * D)

    info = cuda.matmul_info()
    if not info["cublaslt"]:
        try:
            cuda.load_cublaslt()
        except RuntimeError as e:
            rows.append({"op": "cuBLASLt", "status": f"not loaded, products on CuPy's cuBLAS: {e}"})
    rows.append({"op": "cuBLASLt", "status": f"{cuda.matmul_info()['cublaslt']} "
                                           f"(version {cuda.matmul_info()['cublaslt_version']})"})
    for M in ([4096] if quick else [2048, 4096]):
        a, b = rng.standard_normal((M, M), dtype=cp.float32), rng.standard_normal((M, M), dtype=cp.float32)
        a16, b16 = a.astype(cp.float16), b.astype(cp.float16)
        abf, bbf = cuda._bf16_bits(a), cuda._bf16_bits(b)  # bfloat16 bit patterns (uint16)
        cases = [("matmul fp32 (no TF32)", lambda: ops.matmul(a, b), a, b, None),
                 ("matmul fp16", lambda: ops.matmul(a16, b16), a16, b16, None),
                 ("matmul bf16", lambda: ops.matmul_bf16(abf, bbf), abf, bbf, "bf16")]
        for name, ours, x, y, kind in cases:
            fns = {"ours": ours}
            if torch is not None:
                tx, ty = (torch.from_dlpack(v.view(cp.int16)).view(torch.bfloat16) if kind else torch.from_dlpack(v)
                          for v in (x, y))
                fns["torch"] = lambda tx=tx, ty=ty: torch.matmul(tx, ty)
            row(name, f"{M}^3", time_ms(fns), flops=2 * M ** 3)

    N, K, O = 8192, 768, 3072  # GPT-2 small's MLP up-projection, B8 T1024
    x = rng.standard_normal((N, K), dtype=cp.float32).astype(cp.float16)
    w = (rng.standard_normal((O, K), dtype=cp.float32) / 30).astype(cp.float16)
    bb = rng.standard_normal(O, dtype=cp.float32).astype(cp.float16)
    dy = rng.standard_normal((N, O), dtype=cp.float32).astype(cp.float16)

    def lin():
        ops.linear_forward(x, w, bb)
        ops.linear_backward(dy, x, w)
    fns = {"ours": lin}
    if torch is not None:
        tx, tw, tb = (torch.from_dlpack(v).requires_grad_(True) for v in (x, w, bb))
        tdy = torch.from_dlpack(dy)

        def tlin():
            tx.grad = tw.grad = tb.grad = None
            torch.nn.functional.linear(tx, tw, tb).backward(tdy)
        fns["torch"] = tlin
    row("linear fwd+bwd fp16 (bias, bgrad epilogues)", f"{N}x{K}->{O}", time_ms(fns), flops=3 * 2 * N * K * O)
    rows.append({"op": "matmul counts", "status": str(dict(cuda.matmul_counts))})

    N, V = 8192, 50304
    logits = rng.standard_normal((N, V), dtype=cp.float32)
    t = cp.asarray(rng.integers(0, V, N))

    def xent():
        loss, lse = ops.cross_entropy_forward(logits, t)
        ops.cross_entropy_backward(logits, t, lse, 1.0)
    fns = {"ours": xent}
    if torch is not None:
        tl, tt = torch.from_dlpack(logits).requires_grad_(True), torch.from_dlpack(t)

        def txent():
            tl.grad = None
            torch.nn.functional.cross_entropy(tl, tt).backward()
        fns["torch"] = txent
    row("cross-entropy fwd+bwd", f"{N}x{V}", time_ms(fns, reps=10), nbytes=3 * 4 * N * V)

    rows.append(_gpt_step(time_ms, torch, quick))

    n = 124_000_000 if not quick else 10_000_000
    p, g, m, v2 = (rng.standard_normal(n, dtype=cp.float32) for _ in range(4))
    v2 = cp.abs(v2)
    row("adamw step", f"{n}", time_ms({"ours": lambda: ops.adamw_step(p, g, m, v2, 1, 1e-3)}, reps=10),
        nbytes=7 * 4 * n)
    return rows


def _gpt_step(time_ms, torch, quick):
    """One float32 training step (forward, backward, AdamW) of a GPT-2-shaped model on the GPU:
    fusegrad's GPT moved with .to("cuda") against tests/torch_gpt.py's NanoGPT (PyTorch eager, the
    same shape, tied weights) on the same batch."""
    import sys
    from pathlib import Path

    import numpy as np

    from fusegrad import optim
    from fusegrad.models.gpt import GPT, GPTConfig

    B, T, L, C, H, V = (4, 256, 4, 512, 8, 50304) if quick else (8, 1024, 12, 768, 12, 50304)
    rng = np.random.default_rng(0)
    w = rng.integers(0, V, (B, T + 1))
    x, y = w[:, :-1], w[:, 1:]
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C), seed=0).to("cuda")
    opt = optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)

    def ours():
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    fns = {"ours": ours}
    if torch is not None:
        tests = str(Path(__file__).resolve().parent.parent / "tests")
        if tests not in sys.path:
            sys.path.insert(0, tests)
        from torch_gpt import GPTConfig as TConfig, NanoGPT
        tm = NanoGPT(TConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C)).cuda()
        topt = torch.optim.AdamW(tm.parameters(), lr=3e-4, weight_decay=0.1)
        tx, ty = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

        def tstep():
            loss = tm(tx, ty)
            topt.zero_grad()
            loss.backward()
            topt.step()
        fns["torch"] = tstep
    t = time_ms(fns, reps=3, warmup=1)
    r = {"op": "GPT train step fp32", "shape": f"L{L} C{C} H{H} B{B} T{T} V{V}", "ours_ms": t["ours"],
         "torch_ms": t.get("torch"), "tokens/s": B * T / t["ours"] * 1e3}
    if "torch" in t:
        r["x_torch"] = t["torch"] / t["ours"]
    return r
