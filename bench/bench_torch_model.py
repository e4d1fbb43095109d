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
    python -m bench.bench_torch_model --processes 15 --only small  # each library in its own process

--processes N times the two as a user runs them: each library alone in a process of its own, with
nothing of the other library's in memory (in one process the two models share the allocators and
caches, which moved PyTorch's step by up to ~15% on a small VM). The two processes take turns,
one stepping while the other waits in a blocking read (TURN_STEPS untimed then timed steps, then
a pause for the OpenMP workers to stop spinning), N turns each, the order alternating; the ratio
is the median over the N pairs of turns. Turns are paired seconds apart, not processes run one
after the other minutes apart; still, on a shared VM the ratio moved between runs (small model,
38 runs of 15 turns over two days: 1.22x to 1.44x, median 1.29x; 18 more on 2026-12-06 evening,
after the GEMM's late C prefetch: 1.27x to 1.59x, median 1.41x, on a VM where PyTorch's step was
slower than before), so quote several runs. Each row also gives both libraries' minor page faults
and kernel CPU time per step (medians over turns): fresh pages cost ~2.8 us each on the VM
measured, and PyTorch's step faults thousands of them.
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

from bench.common import fma_peak, interleaved, paired_ratio, torch

TESTS = Path(__file__).resolve().parent.parent / "tests"

CONFIGS = [  # (name, GPTConfig kwargs, batch, timed rounds)
    ("tiny: L4 C128 T64 B12 V65", dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128), 12, 15),
    ("small: L4 C256 T256 B8 V65", dict(vocab_size=65, block_size=256, n_layer=4, n_head=4, n_embd=256), 8, 7),
    ("GPT-2 shape: L12 C768 T64 B4 V50257",
     dict(vocab_size=50257, block_size=64, n_layer=12, n_head=12, n_embd=768), 4, 3),
]


def setup(kw, B):
    """(cfg, the plain model from seed 0, idx, targets): one CONFIGS entry's model and its batch."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from torch_gpt import GPTConfig, NanoGPT, batches
    cfg = GPTConfig(**kw)
    idx, targets = batches(cfg, B, 1)[0]
    torch.manual_seed(0)
    return cfg, NanoGPT(cfg), idx, targets


def optimizer(label, model):
    """The AdamW each side trains with: PyTorch's (foreach) or fusegrad.torch's."""
    import fusegrad.torch as fgt
    cls = fgt.AdamW if label == "fusegrad" else torch.optim.AdamW
    return cls(model.parameters(), lr=3e-4, weight_decay=0.1)


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

    rows = []
    for name, kw, B, reps in CONFIGS[:1] if quick else CONFIGS:
        if only and not any(name.startswith(o) for o in only):
            continue
        cfg, plain, idx, targets = setup(kw, B)
        ours = fgt.optimize(plain, inplace=False, functional=False)  # the module swap; F.* per step below
        opts = {"torch": optimizer("torch", plain), "fusegrad": optimizer("fusegrad", ours)}

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


def serve(name, label):
    """One library's model alone in this process, stepping when the parent says (run_processes).
    Prints {"loss0": the first step's loss}, then answers each stdin line "W T" (W untimed steps,
    then T timed) with {"ms": [the timed steps' ms], "faults": minor page faults per timed step,
    "sys_ms": kernel CPU time per timed step (all threads)}; an empty line ends it."""
    import resource  # (POSIX)

    import fusegrad.torch as fgt
    _, kw, B, _ = next(c for c in CONFIGS if c[0].startswith(name))
    _, model, idx, targets = setup(kw, B)
    if label == "fusegrad":
        model = fgt.optimize(model, functional=False)
    opt = optimizer(label, model)

    def step():
        return train_step(model, opt, idx, targets, label == "fusegrad").item()
    print(json.dumps({"loss0": step()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        warm, timed = map(int, line.split())
        for _ in range(warm):
            step()
        ts = []
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(timed):
            t = time.perf_counter()
            step()
            ts.append((time.perf_counter() - t) * 1e3)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        n = max(timed, 1)
        print(json.dumps({"ms": ts, "faults": (r1.ru_minflt - r0.ru_minflt) / n,
                          "sys_ms": (r1.ru_stime - r0.ru_stime) * 1e3 / n}), flush=True)


TURN_STEPS = {"tiny": (3, 5), "small": (1, 2), "GPT-2": (1, 1)}  # per turn: (untimed, timed) steps
GAP_S = 0.25  # between turns: the OpenMP workers of the process that just stepped stop spinning


def reply(proc, label):
    """The next JSON line a --serve process prints; a clear error if it ended instead (its
    traceback is on stderr, which it shares with this process)."""
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the {label} process ended (exit status {proc.wait()}); its error is above")
    return json.loads(line)


def run_processes(turns, threads, only=None):
    """Each library alone in its own process, as a user runs one or the other; the two processes
    take turns (one steps while the other sleeps in a read), `turns` times each, the order
    alternating, so a pair of turns sees the machine in the same state. The ratio is the median
    over pairs of the turns' median steps."""
    rows = []
    for name, *_ in CONFIGS:
        if only and not any(name.startswith(o) for o in only):
            continue
        short = name.split(":")[0]
        warm, timed = next(v for k, v in TURN_STEPS.items() if name.startswith(k))
        procs, loss0 = {}, {}
        try:
            for label in ("torch", "fusegrad"):
                procs[label] = subprocess.Popen(
                    [sys.executable, "-m", "bench.bench_torch_model", "--threads", str(threads),
                     "--serve", f"{short}:{label}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                    env=dict(os.environ))
                loss0[label] = reply(procs[label], label)["loss0"]

            def turn(label, w, t):
                procs[label].stdin.write(f"{w} {t}\n")
                procs[label].stdin.flush()
                out = reply(procs[label], label)
                time.sleep(GAP_S)
                return out
            for label in procs:  # warm-up turns, not timed
                turn(label, 2, 0)
            ms = {"torch": [], "fusegrad": []}
            kern = {"torch": [], "fusegrad": []}  # (page faults, system ms) per step, per turn
            for r in range(turns):
                for label in (("torch", "fusegrad") if r % 2 == 0 else ("fusegrad", "torch")):
                    out = turn(label, warm, timed)
                    ms[label].append(statistics.median(out["ms"]))
                    kern[label].append((out["faults"], out["sys_ms"]))
        finally:
            for p in procs.values():
                if p.poll() is None:
                    try:
                        p.stdin.write("\n")
                        p.stdin.close()
                    except BrokenPipeError:
                        pass
                    p.wait(timeout=60)
        pairs = [t / f for t, f in zip(ms["torch"], ms["fusegrad"])]

        def kern_med(i, fmt):  # "torch, fusegrad": the median over turns of kern's field i
            return ", ".join(format(statistics.median(v[i] for v in kern[k]), fmt) for k in ("torch", "fusegrad"))
        rows.append({"model": name, "turns": f"{turns} x ({warm} + {timed} steps)",
                     "loss_err_step1": abs(loss0["torch"] - loss0["fusegrad"]),
                     "fusegrad_ms": statistics.median(ms["fusegrad"]), "torch_ms": statistics.median(ms["torch"]),
                     "x_torch": statistics.median(pairs),
                     "x_torch_quartiles": " ".join(f"{q:.2f}" for q in statistics.quantiles(pairs, n=4))
                     if len(pairs) > 1 else f"{pairs[0]:.2f}",
                     # what the kernel did for each library's step (medians over turns): PyTorch's
                     # allocations fault fresh pages in, whose cost moves its step between runs
                     "faults/step torch, fusegrad": kern_med(0, ".0f"),
                     "sys_ms/step torch, fusegrad": kern_med(1, ".1f")})
        print(rows[-1], flush=True)
    return rows


def peak():
    """The FMA peak of the threads in use, measured now: the machine's state for this run."""
    from fusegrad import _C
    t = _C.get_num_threads()
    return f"fp32 FMA peak {fma_peak(t):.0f} GFLOP/s on {t} threads"


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
                   help="each library alone in its own process, the two taking N turns each (see above)")
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # "model:label", for --processes
    args = p.parse_args(argv)
    threads = 1 if args.cpu_time else args.threads
    fusegrad.set_num_threads(threads)
    torch.set_num_threads(threads)
    if args.serve:
        serve(*args.serve.rsplit(":", 1))
        return
    from bench.run import table
    if args.processes:
        print(f"{fusegrad._config.cpu_model()}, {threads} threads, isa {fusegrad._C.get_isa()}, wall time, "
              f"each library in its own process; {peak()}")
        print(table(run_processes(args.processes, threads, args.only.split(",") if args.only else None)))
        return
    print(f"{fusegrad._config.cpu_model()}, {threads} threads, isa {fusegrad._C.get_isa()}, "
          f"{'CPU time' if args.cpu_time else 'wall time'}; {peak()}")
    print(table(run(None, args.quick, args.only.split(",") if args.only else None,
                    time.thread_time if args.cpu_time else time.perf_counter)))


if __name__ == "__main__":
    main()
