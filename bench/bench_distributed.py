"""Data-parallel GPT training over MPI: tokens/s of 1 process x 2 threads against 2 ranks x
1 thread (``mpiexec -n 2``, loopback/shared memory), each on the same global batch, and the
scaling efficiency (2-rank tokens/s / 1-process tokens/s; both use the machine's 2 cores, so
1.0 means data parallelism costs nothing against threading inside the kernels). Also the time
backward spends waiting for gradient all-reduces per step (DistributedDataParallel.comm_wait_s)
and, where PyTorch is installed, PyTorch DDP (gloo) on the same shape for reference.

Runs alternate (1 process, 2 ranks, [torch 1 process, torch 2 ranks]) ``ROUNDS`` times; the
table shows medians. Each run is a fresh process: it builds the model, takes WARMUP untimed
steps, then times STEPS steps.

    python -m bench distributed [--quick]
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = dict(vocab_size=256, block_size=256, n_layer=4, n_head=4, n_embd=256)   # the "small" GPT
BATCH, T = 8, 256
WARMUP, STEPS, ROUNDS = 2, 6, 2


def _mpiexec():
    cand = Path(sys.executable).parent / "mpiexec"
    return str(cand) if cand.exists() else shutil.which("mpiexec")


def _timed(steps, loss_fn, opt, barrier=None, after=None):
    """Seconds of each of ``steps`` training steps after WARMUP untimed ones; with
    ``barrier`` every rank starts and ends each step together."""
    times = []
    for i in range(WARMUP + steps):
        if barrier:
            barrier()
        t0 = time.perf_counter()
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if barrier:
            barrier()
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
            if after:
                after()
    return times


def _worker_fusegrad(steps, out):
    import fusegrad as fg
    from fusegrad import distributed as dist, optim
    from fusegrad.models import GPT, GPTConfig

    dist.init_process_group()
    r, w = dist.get_rank(), dist.get_world_size()
    fg.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = GPT(GPTConfig(**CONFIG), seed=0)
    net = dist.DistributedDataParallel(model) if w > 1 else model
    opt = optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    data = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (BATCH, T + 1))
    b = BATCH // w
    x, y = data[r * b:(r + 1) * b, :-1], data[r * b:(r + 1) * b, 1:]
    waits = []
    times = _timed(steps, lambda: net(x, y)[1], opt, dist.barrier if w > 1 else None,
                   lambda: waits.append(net.comm_wait_s if w > 1 else 0.0))
    ar = None
    if w > 1:       # the all-reduce alone, on the model's gradient size
        g = np.ones(sum(p.data.size for p in model.parameters()), np.float32)
        ts = []
        for _ in range(5):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(g)
            ts.append(time.perf_counter() - t0)
        ar = float(np.median(ts))
    if r == 0:
        Path(out).write_text(json.dumps({"step_s": float(np.median(times)), "wait_s": float(np.median(waits)),
                                         "allreduce_s": ar, "grad_mb": 4e-6 * sum(p.data.size for p in model.parameters())}))


def _worker_torch(steps, out):
    import torch
    import torch.distributed as tdist
    w = int(os.environ.get("PMI_SIZE", "1"))
    r = int(os.environ.get("PMI_RANK", "0"))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sys.path.insert(0, str(ROOT))
    from bench.bench_gpt import _torch_model
    from fusegrad.models import GPT, GPTConfig

    fwd, params = _torch_model(GPT(GPTConfig(**CONFIG), seed=0))

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ps = torch.nn.ParameterList(params)

        def forward(self, a, b):
            return fwd(a, b)

    m = M()
    if w > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", os.environ.get("FG_BENCH_PORT", "29533"))
        tdist.init_process_group("gloo", rank=r, world_size=w)
        m = torch.nn.parallel.DistributedDataParallel(m)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.1)
    data = torch.from_numpy(np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (BATCH, T + 1)))
    b = BATCH // w
    x, y = data[r * b:(r + 1) * b, :-1].contiguous(), data[r * b:(r + 1) * b, 1:].contiguous()
    times = _timed(steps, lambda: m(x, y), opt, tdist.barrier if w > 1 else None)
    if r == 0:
        Path(out).write_text(json.dumps({"step_s": float(np.median(times)), "wait_s": None}))
    if w > 1:
        tdist.destroy_process_group()


def _launch(kind, ranks, steps, port):
    import fusegrad
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.json"
        # passive waits: on a busy 2-core machine a spinning idle thread takes the core the
        # other rank (or the other kernel thread) needs
        env = dict(os.environ, OMP_NUM_THREADS=str(2 // ranks), FG_BENCH_PORT=str(port), OMP_WAIT_POLICY="passive",
                   PYTHONPATH=os.pathsep.join([str(Path(fusegrad.__file__).resolve().parent.parent), str(ROOT)]))
        cmd = [sys.executable, str(Path(__file__).resolve()), kind, str(steps), str(out)]
        if ranks > 1:
            cmd = [_mpiexec(), "-n", str(ranks)] + cmd
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if p.returncode != 0 or not out.exists():
            raise RuntimeError(f"bench distributed: {kind} x{ranks} failed:\n{p.stdout}\n{p.stderr}")
        return json.loads(out.read_text())


def run(limits=None, quick=False):
    from fusegrad import distributed as dist
    if not (dist.is_available() and _mpiexec()):
        return [{"note": "skipped: needs mpi4py and mpiexec (pip install \"fusegrad[distributed]\")"}]
    try:
        import torch  # noqa: F401
        kinds = ["fusegrad", "torch"]
    except ImportError:
        kinds = ["fusegrad"]
    steps, rounds = (4, 1) if quick else (STEPS, ROUNDS)
    res = {(k, n): [] for k in kinds for n in (1, 2)}
    port = 29533
    load0 = os.getloadavg()[0]
    for _ in range(rounds):
        for k in kinds:
            for n in (1, 2):
                port += 1
                res[(k, n)].append(_launch(k, n, steps, port))
    rows = []
    tok = BATCH * T
    for k in kinds:
        one = float(np.median([r["step_s"] for r in res[(k, 1)]]))
        two = float(np.median([r["step_s"] for r in res[(k, 2)]]))
        wait = [r["wait_s"] for r in res[(k, 2)] if r["wait_s"] is not None]
        ar = [r["allreduce_s"] for r in res[(k, 2)] if r.get("allreduce_s") is not None]
        rows.append({"engine": k, "model": f"GPT L4 C256, B{BATCH} T{T}",
                     "1 proc x 2 thr tok/s": tok / one, "2 ranks x 1 thr tok/s": tok / two,
                     "efficiency": one / two,
                     "comm wait ms/step": 1e3 * float(np.median(wait)) if wait else None,
                     "all-reduce of the grads alone, ms": 1e3 * float(np.median(ar)) if ar else None,
                     "runs": len(res[(k, 1)]), "load avg (1 min, start/end)": f"{load0:.1f}/{os.getloadavg()[0]:.1f}"})
    return rows


if __name__ == "__main__":
    kind, steps, out = sys.argv[1:]
    {"fusegrad": _worker_fusegrad, "torch": _worker_torch}[kind](int(steps), out)
