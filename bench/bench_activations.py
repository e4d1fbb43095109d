"""Activation kernels vs NumPy and PyTorch (CPU): forward and backward, memory-bound."""
from __future__ import annotations

import numpy as np

from bench.common import ab_cols, interleaved, rand, ratio, torch
from fusegrad import ops


def run(limits, quick=False):
    rows = []
    for n in ([1 << 16, 1 << 24] if quick else [1 << 12, 1 << 16, 1 << 20, 1 << 24]):
        x, dy = rand(n), rand(n, seed=1)
        np.testing.assert_array_equal(ops.relu_forward(x), np.maximum(x, 0))  # validate first
        fns = {
            "ours": lambda: ops.relu_backward(dy, ops.relu_forward(x)),
            "numpy": lambda: np.where(x > 0, dy, 0) + np.maximum(x, 0) * 0,
        }
        if torch is not None:
            tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
            fns["torch"] = lambda: torch.ops.aten.threshold_backward(tdy, torch.relu(tx), 0)
        t = interleaved(fns)
        bytes_moved = 5 * 4 * n  # fwd: read x, write y; bwd: read dy, x, write dx
        rows.append({
            "op": "relu fwd+bwd", "n": n, "ours_ms": t["ours"] * 1e3, **ab_cols(t),
            "numpy_ms": t["numpy"] * 1e3, "torch_ms": t.get("torch", 0) * 1e3 or None,
            "x_numpy": ratio(t["numpy"], t["ours"]), "x_torch": ratio(t.get("torch"), t["ours"]),
            "GB/s": bytes_moved / t["ours"] / 1e9, "frac_copy_bw": bytes_moved / t["ours"] / 1e9 / limits.copy_gbs,
        })
    rows += _smooth(limits, quick)
    rows += _gelu_exact(limits, quick)
    return rows


def _gelu_exact(limits, quick):
    """Exact (erf) GELU at issue 18's shapes vs PyTorch's F.gelu (its default): forward + backward,
    and at 768x512 each alone and on 3 * randn inputs (more lanes past the kernels' central range
    |x| <= 4.5, which run the general form as well). Each row's "train" twin, timed in the same
    interleaved run: the training pair (gelu_forward_with_grad, which also computes gelu'(x) and
    saves it instead of x, then the backward gelu_backward_from_grad, a multiply), as fusegrad's
    autograd and fusegrad.torch run it; PyTorch's side is the same (F.gelu, aten.gelu_backward).
    With --threads 1 the samples are the calling thread's CPU time (time.thread_time: a shared
    machine's other processes do not inflate them), else wall time."""
    import time
    from math import erf

    import fusegrad

    clock = time.thread_time if fusegrad.get_num_threads() == 1 else time.perf_counter
    rows = []
    cases = [((768, 512), 1.0, "fwd+bwd"), ((768, 512), 1.0, "fwd"), ((768, 512), 1.0, "bwd"),
             ((768, 512), 3.0, "fwd+bwd")]
    for shape, scale, part in (cases[:1] if quick else cases + [((8192, 3072), 1.0, "fwd+bwd")]):
        x, dy = (scale * rand(shape)).astype(np.float32), rand(shape, seed=1)
        xs = x.ravel()[:256].astype(np.float64)  # validate first
        np.testing.assert_allclose(ops.gelu_forward(x).ravel()[:256], 0.5 * xs * (1 + np.vectorize(erf)(xs / np.sqrt(2))),
                                   rtol=1e-5, atol=1e-6)
        dydx = ops.gelu_forward_with_grad(x)[1]
        np.testing.assert_allclose(ops.gelu_backward_from_grad(dy, dydx), ops.gelu_backward(dy, x),  # equal bits but
                                   rtol=0, atol=(float(np.abs(dy).max()) + 2) * 2.0**-150)  # where dx is subnormal
        ours = {"fwd": lambda: ops.gelu_forward(x), "bwd": lambda: ops.gelu_backward(dy, x)}
        train = {"fwd": lambda: ops.gelu_forward_with_grad(x), "bwd": lambda: ops.gelu_backward_from_grad(dy, dydx),
                 "fwd+bwd": lambda: ops.gelu_backward_from_grad(dy, ops.gelu_forward_with_grad(x)[1])}
        fns = {"ours": (lambda: (ours["fwd"](), ours["bwd"]())) if part == "fwd+bwd" else ours[part], "train": train[part]}
        if torch is not None:
            tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
            theirs = {"fwd": lambda: torch.nn.functional.gelu(tx), "bwd": lambda: torch.ops.aten.gelu_backward(tdy, tx)}
            fns["torch"] = (lambda: (theirs["fwd"](), theirs["bwd"]())) if part == "fwd+bwd" else theirs[part]
        t = interleaved(fns, reps=7, clock=clock)
        for key, bytes_per in (("ours", {"fwd+bwd": 5, "fwd": 2, "bwd": 3}), ("train", {"fwd+bwd": 6, "fwd": 3, "bwd": 3})):
            bytes_moved = bytes_per[part] * 4 * x.size
            rows.append({
                "op": f"gelu-erf {'train ' if key == 'train' else ''}{part}" + (f" ({scale:g} randn)" if scale != 1 else ""),
                "n": f"{shape[0]}x{shape[1]}", "ours_ms": t[key] * 1e3, **(ab_cols(t) if key == "ours" else {}),
                "torch_ms": t.get("torch", 0) * 1e3 or None, "x_torch": ratio(t.get("torch"), t[key]),
                "GB/s": bytes_moved / t[key] / 1e9, "frac_copy_bw": bytes_moved / t[key] / 1e9 / limits.copy_gbs,
            })
    return rows


def _smooth(limits, quick):
    """gelu (erf and tanh), sigmoid, tanh: forward then backward, one size in and one out of cache."""
    from math import erf

    rows = []
    for n in ([1 << 16, 1 << 24] if quick else [1 << 16, 1 << 20, 1 << 24]):
        x, dy = rand(n), rand(n, seed=1)
        xs = x[:64].astype(np.float64)  # validate first, on a slice, against float64 math
        np.testing.assert_allclose(ops.gelu_forward(x[:64]), 0.5 * xs * (1 + np.vectorize(erf)(xs / np.sqrt(2))), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ops.sigmoid_forward(x[:64]), 1 / (1 + np.exp(-xs)), rtol=1e-5)
        k = np.float32(np.sqrt(2 / np.pi))
        cases = {
            "gelu-tanh": (lambda: (ops.gelu_forward(x, approximate="tanh"), ops.gelu_backward(dy, x, approximate="tanh")),
                          lambda: 0.5 * x * (1 + np.tanh(k * (x + 0.044715 * x ** 3))),
                          "gelu", dict(approximate="tanh")),
            "gelu-erf": (lambda: (ops.gelu_forward(x), ops.gelu_backward(dy, x)), None, "gelu", dict(approximate="none")),
            "sigmoid": (lambda: ops.sigmoid_backward(dy, ops.sigmoid_forward(x)),
                        lambda: (lambda y: dy * y * (1 - y))(1 / (1 + np.exp(-x))), "sigmoid", {}),
            "tanh": (lambda: ops.tanh_backward(dy, ops.tanh_forward(x)),
                     lambda: (lambda y: dy * (1 - y * y))(np.tanh(x)), "tanh", {}),
        }
        for name, (ours, npf, tname, kw) in cases.items():
            fns = {"ours": ours}
            if npf is not None:
                fns["numpy"] = npf
            if torch is not None:
                tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
                if tname == "gelu":
                    a = kw["approximate"]
                    fns["torch"] = lambda a=a: (torch.nn.functional.gelu(tx, approximate=a),
                                                torch.ops.aten.gelu_backward(tdy, tx, approximate=a))
                elif tname == "sigmoid":
                    fns["torch"] = lambda: torch.ops.aten.sigmoid_backward(tdy, torch.sigmoid(tx))
                else:
                    fns["torch"] = lambda: torch.ops.aten.tanh_backward(tdy, torch.tanh(tx))
            t = interleaved(fns, reps=7)
            bytes_moved = 5 * 4 * n
            rows.append({
                "op": f"{name} fwd+bwd", "n": n, "ours_ms": t["ours"] * 1e3, **ab_cols(t),
                "numpy_ms": t["numpy"] * 1e3 if "numpy" in t else None, "torch_ms": t.get("torch", 0) * 1e3 or None,
                "x_numpy": ratio(t.get("numpy"), t["ours"]), "x_torch": ratio(t.get("torch"), t["ours"]),
                "GB/s": bytes_moved / t["ours"] / 1e9, "frac_copy_bw": bytes_moved / t["ours"] / 1e9 / limits.copy_gbs,
            })
    return rows
