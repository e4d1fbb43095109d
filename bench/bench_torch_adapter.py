"""fusegrad.torch per op vs PyTorch's own op, forward+backward, by size: the table behind the policy.

For each op fusegrad.torch decides (python/fusegrad/torch.py, POLICY_OPS), time a training call
(forward and backward, inputs that require grad) through fusegrad.torch with the policy forced to
'fusegrad' (its light eager path) and through PyTorch's original op, interleaved, on GPT-like shapes
from tiny to GPT-2 sized. Outputs and gradients are compared before timing (validation).

    python -m bench torch_adapter                               # the table, as rows
    python -m bench.bench_torch_adapter --write [--threads 2]   # also store it in fusegrad/_torch_table.json
    python -m bench.bench_torch_adapter --write --cpu-time      # 1 thread by CPU time (a shared machine)
    python -m bench.bench_torch_adapter --overhead             # what each path into a kernel costs per call
    python -m bench.bench_torch_adapter --dtypes bfloat16 --ops linear,scaled_dot_product_attention --write
                                          # under torch.autocast("cpu", dtype=torch.bfloat16): the 'bfloat16' rows

--write stores, under this CPU's key (fusegrad.torch.cpu_key()), 'fusegrad' for each size bucket
(floor(log2(size))) where ours was at least MARGIN times faster (smoothed over neighbouring
buckets), 'torch' elsewhere, with the measured ratios beside it; and it updates
the CPU-independent 'default' entry used on CPUs not in the table, which asks for DEFAULT_MARGIN,
a wider margin, since another CPU's ratio can differ.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import defaultdict
from pathlib import Path

from bench.common import interleaved, paired_ratio, torch

MARGIN = 1.05          # this CPU: ours must be 5% faster (a tie goes to PyTorch: never slower)
DEFAULT_MARGIN = 1.25  # CPUs not measured: only where ours was clearly faster here
THREADS = 2
CPU_TIME = False  # --cpu-time: 1 thread, time.thread_time


def shapes(op, quick):
    """GPT-like shapes per op, small to large."""
    if op in ("layer_norm", "gelu", "gelu_tanh"):
        C = 512 if op != "layer_norm" else 128
        rows = [1, 8, 64, 192, 768, 2048, 8192] if not quick else [64, 768]
        out = [(N, C) for N in rows]
        return out + ([(2048, 768), (8192, 768)] if op == "layer_norm" and not quick else [])
    if op == "linear":  # (M, K, N): tokens x in x out
        # the tiny and small models' products (bench torch_model) among them: each size's bucket is
        # measured on the shapes that land in it rather than decided by a neighbour
        full = [(1, 128, 128), (16, 128, 512), (64, 128, 512), (768, 128, 65), (768, 128, 128), (768, 128, 384),
                (768, 128, 512), (768, 512, 128), (2048, 256, 256), (2048, 256, 768), (2048, 256, 1024),
                (2048, 1024, 256), (4096, 768, 3072), (768, 768, 2304)]
        return full if not quick else [(64, 128, 512), (768, 128, 512)]
    if op == "scaled_dot_product_attention":  # (B, H, T, E)
        full = [(1, 2, 16, 32), (4, 4, 32, 32), (12, 4, 64, 32), (8, 4, 256, 64), (4, 12, 256, 64), (1, 12, 1024, 64)]
        return full if not quick else [(12, 4, 64, 32)]
    if op == "cross_entropy":  # (N, V)
        full = [(16, 67), (768, 256), (768, 1024), (2048, 4096), (512, 50304)]
        return full if not quick else [(768, 256)]
    raise KeyError(op)


def make_case(op, shape, dtype):
    """(fusegrad call, torch call, differentiable inputs, size) for one shape. dtype bfloat16: float32
    inputs (master weights) and both calls under torch.autocast("cpu", dtype=torch.bfloat16)."""
    if dtype is torch.bfloat16:
        ours, theirs, inputs, size = make_case(op, shape, torch.float32)

        def amp(f):
            def call():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return f()
            return call
        return amp(ours), amp(theirs), inputs, size
    import fusegrad.torch as fgt

    g = torch.Generator().manual_seed(0)

    def r(*s, grad=True):
        return torch.randn(s, generator=g, dtype=dtype).requires_grad_(grad)

    O = fgt.ORIGINALS
    if op == "layer_norm":
        N, C = shape
        x, w, b = r(N, C), r(C), r(C)
        return (lambda: fgt.layer_norm(x, (C,), w, b)), (lambda: O["layer_norm"](x, (C,), w, b)), (x, w, b), N * C
    if op in ("gelu", "gelu_tanh"):
        x = r(*shape)
        a = "none" if op == "gelu" else "tanh"
        return (lambda: fgt.gelu(x, a)), (lambda: O["gelu"](x, approximate=a)), (x,), x.numel()
    if op == "linear":
        M, K, N = shape
        x, w, b = r(M, K), (r(N, K, grad=False) * K ** -0.5).requires_grad_(), r(N)
        return (lambda: fgt.linear(x, w, b)), (lambda: O["linear"](x, w, b)), (x, w, b), M * K * N
    if op == "scaled_dot_product_attention":
        B, H, T, E = shape
        q, k, v = r(B, H, T, E), r(B, H, T, E), r(B, H, T, E)
        return ((lambda: fgt.scaled_dot_product_attention(q, k, v, is_causal=True)),
                (lambda: O["scaled_dot_product_attention"](q, k, v, is_causal=True)), (q, k, v), B * H * T * T * E)
    if op == "cross_entropy":
        N, V = shape
        x, t = r(N, V), torch.randint(0, V, (N,), generator=g)
        return (lambda: fgt.cross_entropy(x, t)), (lambda: O["cross_entropy"](x, t)), (x,), N * V
    raise KeyError(op)


def _fwd_bwd(f, inputs, dy):
    for t in inputs:
        t.grad = None
    y = f()
    y.backward(dy)
    return y


def measure(quick=False, dtypes=("float32", "float64"), reps=9, ops=None, clock=time.perf_counter):
    import fusegrad.torch as fgt

    old = fgt.set_policy("fusegrad")
    rows = []
    try:
        for op in ops or fgt.POLICY_OPS:
            for dt in dtypes:
                dtype = getattr(torch, dt)
                shp = shapes(op, quick)
                if dt == "float64":
                    # float64: every other shape, none of the largest (a coarser table; rarely a speed concern)
                    shp = [sh for sh in shp[::2] if math.prod(sh) < 1 << 24]
                for shape in shp:
                    ours, theirs, inputs, size = make_case(op, shape, dtype)
                    y0 = theirs()
                    dy = torch.randn(y0.shape, dtype=y0.dtype, generator=torch.Generator().manual_seed(1))
                    fgt.fallback_counts.clear()
                    y1 = _fwd_bwd(ours, inputs, dy)
                    g1 = [t.grad.clone() for t in inputs]
                    y2 = _fwd_bwd(theirs, inputs, dy)
                    # bfloat16: both round the products' operands (2^-8 relative each), in other orders
                    tol = {"float32": 1e-3, "bfloat16": 5e-2}.get(dt, 1e-9)
                    dy_err = (y1 - y2).abs().max()
                    if dt == "bfloat16":  # relative to the output's size, like the gradients' errors
                        dy_err = dy_err.float() / (1 + y2.float().abs().max())
                    err = max([dy_err.item()] +
                              [((a - t.grad).abs().max() / (1 + t.grad.abs().max())).item()
                               for a, t in zip(g1, inputs)])
                    samples = {}
                    t = interleaved({"fusegrad": lambda: _fwd_bwd(ours, inputs, dy),
                                     "torch": lambda: _fwd_bwd(theirs, inputs, dy)}, reps=reps, warmup=1,
                                    samples_out=samples, clock=clock)
                    rows.append({"op": op, "dtype": dt, "shape": "x".join(map(str, shape)), "size": size,
                                 "bucket": size.bit_length() - 1, "max_err": err, "valid": err < tol,
                                 "fallbacks": sum(fgt.fallback_counts.values()),
                                 "fusegrad_us": t["fusegrad"] * 1e6, "torch_us": t["torch"] * 1e6,
                                 "x_torch": paired_ratio(samples, "torch", "fusegrad")})
                    print(rows[-1], flush=True)
    finally:
        fgt.set_policy(old)
    return rows


def overhead(N=768, C=128, reps=15):
    """What each way into the same layer_norm kernel costs (forward, float32, N x C), interleaved:
    the raw kernel on NumPy arrays; .numpy()/from_numpy around it; fusegrad.torch's eager path
    without and with autograd (a plain autograd.Function); the torch.library custom op (what
    torch.compile traces); and PyTorch's F.layer_norm. Then forward+backward: the two raw kernels,
    and fgt's and PyTorch's op through ``.backward()`` (whose engine start costs ~30 µs a call
    even for PyTorch's own op at 8x128, so these rows compare, they do not isolate one node). Microseconds per call, medians, in CPU time
    of the calling thread with one thread each (time.thread_time: on a shared machine, wall time
    mostly measures waits for a core; both libraries' kernels then run on the calling thread)."""
    import numpy as np

    import fusegrad
    import fusegrad.torch as fgt
    from fusegrad import _C

    g = torch.Generator().manual_seed(0)
    xg, wg, bg = (t.requires_grad_() for t in (torch.randn(N, C, generator=g), torch.randn(C, generator=g),
                                               torch.randn(C, generator=g)))
    # every path reads the same memory (other buffers alone moved the raw kernel by ~2 us here)
    x, w, b = xg.detach(), wg.detach(), bg.detach()
    xn, wn, bn = x.numpy(), w.numpy(), b.numpy()
    dy = torch.randn(N, C, generator=g)
    dyn, (_, mean, rstd) = dy.numpy(), _C.layernorm_forward(xn, wn, bn, 1e-5)

    def fwd_bwd(f):  # one forward and backward through autograd, as training calls it
        def run():
            f(xg, (C,), wg, bg).backward(dy)
            xg.grad = wg.grad = bg.grad = None
        return run
    old = fgt.set_policy("fusegrad")
    fns = {
        "raw _C (NumPy)": lambda: _C.layernorm_forward(xn, wn, bn, 1e-5),
        "numpy()/from_numpy + _C": lambda: torch.from_numpy(_C.layernorm_forward(x.numpy(), w.numpy(), b.numpy(),
                                                                                1e-5)[0]),
        "fgt.layer_norm, no grad": lambda: fgt.layer_norm(x, (C,), w, b),
        "fgt.layer_norm, grad (autograd.Function)": lambda: fgt.layer_norm(xg, (C,), wg, bg),
        "torch.ops.fusegrad custom op, grad": lambda: torch.ops.fusegrad.layernorm_forward(xg, wg, bg, 1e-5),
        "PyTorch F.layer_norm, grad": lambda: fgt.ORIGINALS["layer_norm"](xg, (C,), wg, bg),
        "fwd+bwd: raw _C (NumPy)": lambda: (_C.layernorm_forward(xn, wn, bn, 1e-5),
                                            _C.layernorm_backward(dyn, xn, wn, mean, rstd)),
        "fwd+bwd: fgt.layer_norm, .backward()": fwd_bwd(fgt.layer_norm),
        "fwd+bwd: PyTorch F.layer_norm, .backward()": fwd_bwd(fgt.ORIGINALS["layer_norm"]),
    }
    try:
        np.testing.assert_array_equal(fns["fgt.layer_norm, grad (autograd.Function)"]().detach().numpy(),
                                      fns["raw _C (NumPy)"]()[0])  # validate: the same kernel, the same bits
        threads = fusegrad.get_num_threads(), torch.get_num_threads()
        fusegrad.set_num_threads(1)
        torch.set_num_threads(1)
        try:
            t = interleaved(fns, reps=reps, clock=time.thread_time)
        finally:
            fusegrad.set_num_threads(threads[0])
            torch.set_num_threads(threads[1])
    finally:
        fgt.set_policy(old)
    raw = {False: t["raw _C (NumPy)"], True: t["fwd+bwd: raw _C (NumPy)"]}
    return [{"path": k, "shape": f"{N}x{C}", "us": v * 1e6, "us_above_raw": (v - raw[k.startswith("fwd+bwd")]) * 1e6}
            for k, v in t.items()]


def bucket_ratios(rows):
    """{(op, dtype): {bucket: x_torch}}: the geometric mean of the valid rows' ratios in each bucket."""
    ratios = defaultdict(list)
    for r in rows:
        if r["valid"] and not r["fallbacks"] and r["x_torch"]:
            ratios[(r["op"], r["dtype"], r["bucket"])].append(r["x_torch"])
    out = defaultdict(dict)
    for (op, dt, b), xs in sorted(ratios.items()):
        out[(op, dt)][b] = math.exp(statistics.fmean(math.log(x) for x in xs))
    return out


def table_from(rows, margin):
    """{op: {dtype: {bucket: 'fusegrad' | 'torch'}}}. A bucket's ratio is smoothed with its measured
    neighbours (median of three; at the ends the smaller of its own and the geometric mean with its
    one neighbour), so one noisy sample on a shared machine does not flip a size between its
    neighbours' choices."""
    out = defaultdict(dict)
    for (op, dt), per in bucket_ratios(rows).items():
        bs, xs = list(per), list(per.values())
        for i, b in enumerate(bs):
            win = xs[max(i - 1, 0):i + 2]
            x = statistics.median(win) if len(win) == 3 else min(xs[i], math.exp(statistics.fmean(
                math.log(v) for v in win)))  # an end: no better than itself
            out[op].setdefault(dt, {})[str(b)] = "fusegrad" if x >= margin else "torch"
    return dict(out)


def write_table(rows, path=None):
    import fusegrad.torch as fgt

    path = Path(path or fgt._TABLE_FILE)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc["measured"] = {**doc.get("measured", {}), fgt.cpu_key(): time.strftime("%Y-%m-%d") + f", {THREADS} threads"
                       + (", CPU time" if CPU_TIME else "")}
    doc["about"] = ("fusegrad.torch's policy table, written by bench/bench_torch_adapter.py --write: per CPU "
                    "(fusegrad.torch.cpu_key()), op and dtype, which implementation ran a forward+backward "
                    "faster for sizes in bucket floor(log2(size)) (size per op in fusegrad.torch.POLICY_OPS); "
                    f"'fusegrad' needs a {MARGIN}x win on that CPU, {DEFAULT_MARGIN}x for 'default' (CPUs not "
                    "listed); the nearest measured bucket decides sizes between them")
    doc.setdefault("tables", {})
    doc.setdefault("ratios", {}).setdefault(fgt.cpu_key(), {})
    for (op, dt), per in bucket_ratios(rows).items():  # the measurements behind the table, for readers
        doc["ratios"][fgt.cpu_key()].setdefault(op, {})[dt] = {str(b): round(x, 2) for b, x in per.items()}
    for key, margin in ((fgt.cpu_key(), MARGIN), ("default", DEFAULT_MARGIN)):
        tab = doc["tables"].setdefault(key, {})
        for op, per_dtype in table_from(rows, margin).items():  # re-measured (op, dtype) pairs replaced
            tab[op] = {**tab.get(op, {}), **per_dtype}
    path.write_text(json.dumps(doc, indent=1) + "\n")  # buckets stay in numeric order
    return path


def run(limits, quick=False):
    if torch is None or not hasattr(torch.library, "custom_op"):
        return [{"op": "torch_adapter", "note": "needs torch >= 2.4"}]
    return overhead() + measure(quick)


def main(argv=None):
    import fusegrad
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--write", action="store_true", help="store the table in fusegrad/_torch_table.json")
    p.add_argument("--overhead", action="store_true", help="only the per-call cost of each path (layer_norm fwd)")
    p.add_argument("--ops", default=None, help="comma-separated subset of ops (others keep their stored rows)")
    p.add_argument("--dtypes", default="float32,float64",
                   help="comma-separated: float32, float64, bfloat16 (float32 inputs under torch.autocast)")
    p.add_argument("--cpu-time", action="store_true",
                   help="1 thread, timed by the calling thread's CPU time (time.thread_time): on a shared "
                        "machine wall time mostly measures waits for a core")
    args = p.parse_args(argv)
    global THREADS, CPU_TIME
    THREADS, CPU_TIME = (1 if args.cpu_time else args.threads), args.cpu_time
    fusegrad.set_num_threads(THREADS)
    torch.set_num_threads(THREADS)
    if args.overhead:
        from bench.run import table
        print(table(overhead()))
        return
    rows = measure(args.quick, dtypes=tuple(args.dtypes.split(",")), ops=args.ops.split(",") if args.ops else None,
                   clock=time.thread_time if args.cpu_time else time.perf_counter)
    if args.write:
        print("wrote", write_table(rows))


if __name__ == "__main__":
    main()
