"""Activation kernels vs NumPy and PyTorch (CPU): forward and backward, memory-bound."""
from __future__ import annotations

import numpy as np

from bench.common import interleaved, rand, ratio, torch
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
            "op": "relu fwd+bwd", "n": n, "ours_ms": t["ours"] * 1e3,
            "numpy_ms": t["numpy"] * 1e3, "torch_ms": t.get("torch", 0) * 1e3 or None,
            "x_numpy": ratio(t["numpy"], t["ours"]), "x_torch": ratio(t.get("torch"), t["ours"]),
            "GB/s": bytes_moved / t["ours"] / 1e9, "frac_copy_bw": bytes_moved / t["ours"] / 1e9 / limits.copy_gbs,
        })
    return rows
