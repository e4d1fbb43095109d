"""A PyTorch GPT's training step, plain vs swapped by fusegrad.torch.optimize: the drop-in's promise.

The model is tests/torch_gpt.py's NanoGPT, unmodified nanoGPT-style PyTorch: nn.Linear, nn.GELU()
(exact erf), a LayerNorm module calling F.layer_norm, F.scaled_dot_product_attention, F.cross_entropy.
"torch" trains it with torch.optim.AdamW (foreach); "fusegrad" trains a copy after
fusegrad.torch.optimize (the measured per-op policy decides which calls run our kernels) with
fusegrad.torch.AdamW. One step = forward, backward, AdamW update, zero_grad; the two are timed
interleaved (bench/common.py), and x_torch is the median of the per-round ratios. Both start from
the same weights; the first step's losses are compared before timing (validation).

    python -m bench torch_model                 # all shapes, 2 threads
    python -m bench.bench_torch_model --threads 2 --only tiny,small
    python -m bench.bench_torch_model --cpu-time  # 1 thread, CPU time of the step (a shared machine)
    python -m bench.bench_torch_model --processes 4 --only small  # each library alone in its own process

--processes N times the two as a user runs them, each in a fresh process of its own with nothing
of the other library's in memory (CHILD_STEPS steps after 3, median), N rounds, the order alternating; the
ratio is the median of the rounds' ratios. In one process the two models share the allocators and
caches, which moved PyTorch's step by up to ~15% on a small VM.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import interleaved, paired_ratio, torch

TESTS = Path(__file__).resolve().parent.parent / "tests"

CONFIGS = [  # (name, GPTConfig kwargs, batch, timed rounds)
    ("tiny: L4 C128 T64 B12 V65", dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128), 12, 15),
    ("small: L4 C256 T256 B8 V65", dict(vocab_size=65, block_size=256, n_layer=4, n_head=4, n_embd=256), 8, 7),
    ("GPT-2 shape: L12 C768 T64 B4 V50257",
     dict(vocab_size=50257, block_size=64, n_layer=12, n_head=12, n_embd=768), 4, 3),
]


def train_step(model, opt, idx, targets, swapped):
    """One training step: forward, backward, update, zero_grad; the loss. optimize() also patches
    torch.nn.functional for the whole process; a plain model's F.* calls must not see that, so it
    is on for the swapped model's step only."""
    import fusegrad.torch as fgt
    if swapped:
        fgt.optimize()
    try:
        loss = model(idx, targets)
        loss.backward()
    finally:
        fgt.restore()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def run(limits, quick=False, only=None, clock=time.perf_counter):
    if torch is None or not hasattr(torch.library, "custom_op"):
        return [{"model": "torch_model", "note": "needs torch >= 2.4"}]
    import fusegrad.torch as fgt
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from torch_gpt import GPTConfig, NanoGPT, batches

    rows = []
    for name, kw, B, reps in CONFIGS[:1] if quick else CONFIGS:
        if only and not any(name.startswith(o) for o in only):
            continue
        cfg = GPTConfig(**kw)
        idx, targets = batches(cfg, B, 1)[0]
        torch.manual_seed(0)
        plain = NanoGPT(cfg)
        ours = fgt.optimize(plain, inplace=False, functional=False)  # the module swap; F.* per step below
        opts = {"torch": torch.optim.AdamW(plain.parameters(), lr=3e-4, weight_decay=0.1),
                "fusegrad": fgt.AdamW(ours.parameters(), lr=3e-4, weight_decay=0.1)}

        def step(label, model):
            return train_step(model, opts[label], idx, targets, label == "fusegrad")

        # validate: same weights, same batch -> same first loss
        fgt.dispatch_counts.clear()
        fgt.fallback_counts.clear()
        loss_err = abs(step("torch", plain).item() - step("fusegrad", ours).item())
        dc = fgt.dispatch_counts
        ran = {op: (dc[f"{op} -> fusegrad"], dc[f"{op} -> fusegrad"] + dc[f"{op} -> torch"])
               for op in sorted({k.split(" -> ")[0] for k in dc})}
        samples = {}
        t = interleaved({"torch": lambda: step("torch", plain), "fusegrad": lambda: step("fusegrad", ours)},
                        reps=3 if quick else reps, warmup=1, samples_out=samples, clock=clock)
        tokens = B * cfg.block_size
        rows.append({
            "model": name, "tokens/step": tokens, "loss_err_step1": loss_err,
            "fallbacks": sum(fgt.fallback_counts.values()),
            "calls on fusegrad / all": ", ".join(f"{op} {a}/{n}" for op, (a, n) in ran.items()),
            "fusegrad_ms": t["fusegrad"] * 1e3, "torch_ms": t["torch"] * 1e3,
            "x_torch": paired_ratio(samples, "torch", "fusegrad"),
            "x_torch_medians": t["torch"] / t["fusegrad"],
        })
        print(rows[-1], flush=True)
    return rows


CHILD_STEPS = {"tiny": 40, "small": 10, "GPT-2": 4}  # timed steps per process: about a second or more


def child(name, label, warmup=3):
    """One library's step alone in this process: {'ms': median, 'loss0': the first step's loss}."""
    steps = next(n for k, n in CHILD_STEPS.items() if name.startswith(k))
    import fusegrad.torch as fgt
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from torch_gpt import GPTConfig, NanoGPT, batches
    _, kw, B, _ = next(c for c in CONFIGS if c[0].startswith(name))
    cfg = GPTConfig(**kw)
    idx, targets = batches(cfg, B, 1)[0]
    torch.manual_seed(0)
    model = NanoGPT(cfg)
    if label == "fusegrad":
        model = fgt.optimize(model, functional=False)
        opt = fgt.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)

    def step():
        return train_step(model, opt, idx, targets, label == "fusegrad").item()
    loss0 = step()
    for _ in range(warmup - 1):
        step()
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    return {"ms": statistics.median(ts) * 1e3, "loss0": loss0}


def run_processes(rounds, threads, only=None):
    """Each library alone in a fresh process, `rounds` times, alternating which goes first."""
    rows = []
    for name, *_ in CONFIGS:
        if only and not any(name.startswith(o) for o in only):
            continue
        ms = {"torch": [], "fusegrad": []}
        loss0 = {}
        for r in range(rounds):
            for label in (("torch", "fusegrad") if r % 2 == 0 else ("fusegrad", "torch")):
                out = subprocess.run([sys.executable, "-m", "bench.bench_torch_model", "--threads", str(threads),
                                      "--child", f"{name.split(':')[0]}:{label}"], capture_output=True, text=True,
                                     check=True, env=dict(os.environ)).stdout
                res = json.loads(out.strip().splitlines()[-1])
                ms[label].append(res["ms"])
                loss0[label] = res["loss0"]
        rows.append({"model": name, "processes": f"{rounds} x 2",
                     "loss_err_step1": abs(loss0["torch"] - loss0["fusegrad"]),
                     "fusegrad_ms": statistics.median(ms["fusegrad"]), "torch_ms": statistics.median(ms["torch"]),
                     "x_torch": statistics.median(t / f for t, f in zip(ms["torch"], ms["fusegrad"])),
                     "x_torch_rounds": " ".join(f"{t / f:.2f}" for t, f in zip(ms["torch"], ms["fusegrad"]))})
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    import fusegrad
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=None, help="comma-separated model name prefixes (tiny, small, GPT-2)")
    p.add_argument("--cpu-time", action="store_true",
                   help="1 thread, timed by the calling thread's CPU time (time.thread_time), not wall time: "
                        "on a shared machine wall time mostly measures waits for a core")
    p.add_argument("--processes", type=int, default=0, metavar="N",
                   help="time each library alone in its own fresh process, N rounds (see above)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "model:label", for --processes
    args = p.parse_args(argv)
    threads = 1 if args.cpu_time else args.threads
    fusegrad.set_num_threads(threads)
    torch.set_num_threads(threads)
    if args.child:
        name, label = args.child.rsplit(":", 1)
        print(json.dumps(child(name, label)))
        return
    from bench.run import table
    if args.processes:
        print(f"{fusegrad._config.cpu_model()}, {threads} threads, isa {fusegrad._C.get_isa()}, wall time, "
              f"each library in its own process")
        print(table(run_processes(args.processes, threads, args.only.split(",") if args.only else None)))
        return
    print(f"{fusegrad._config.cpu_model()}, {threads} threads, isa {fusegrad._C.get_isa()}, "
          f"{'CPU time' if args.cpu_time else 'wall time'}")
    print(table(run(None, args.quick, args.only.split(",") if args.only else None,
                    time.thread_time if args.cpu_time else time.perf_counter)))


if __name__ == "__main__":
    main()
