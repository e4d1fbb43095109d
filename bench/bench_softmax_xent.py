"""Softmax and cross-entropy forward+backward vs NumPy and PyTorch, rows of 768 and 50304."""
from __future__ import annotations

import numpy as np

from bench.common import ab_cols, interleaved, rand, ratio, torch
from fusegrad import ops


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _row(op, N, V, t, nbytes, limits):
    return {
        "op": op, "N": N, "V": V, "ours_ms": t["ours"] * 1e3, **ab_cols(t), "numpy_ms": t["numpy"] * 1e3,
        "torch_ms": t.get("torch", 0) * 1e3 or None,
        "x_numpy": ratio(t["numpy"], t["ours"]), "x_torch": ratio(t.get("torch"), t["ours"]),
        "GB/s": nbytes / t["ours"] / 1e9, "frac_copy_bw": nbytes / t["ours"] / 1e9 / limits.copy_gbs,
    }


def run(limits, quick=False):
    rows = []
    shapes = [(2048, 768), (64, 50304)] if quick else [(512, 768), (8192, 768), (64, 50304), (256, 50304)]
    for N, V in shapes:
        x, dy = rand((N, V)), rand((N, V), seed=1)
        tg = np.random.default_rng(2).integers(0, V, N).astype(np.int64)
        np.testing.assert_allclose(ops.softmax_forward(x), _np_softmax(x.astype(np.float64)), rtol=1e-4, atol=1e-7)

        # softmax fwd + bwd: fwd reads x, writes y; bwd reads dy, y, writes dx
        fns = {"ours": lambda: ops.softmax_backward(dy, ops.softmax_forward(x)),
               "numpy": lambda: (lambda y: y * (dy - (dy * y).sum(-1, keepdims=True)))(_np_softmax(x))}
        if torch is not None:
            tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
            fns["torch"] = lambda: torch.ops.aten._softmax_backward_data(tdy, torch.softmax(tx, -1), -1, torch.float32)
        rows.append(_row("softmax fwd+bwd", N, V, interleaved(fns, reps=9), 5 * 4 * N * V, limits))

        # cross-entropy fwd + bwd: fwd reads logits; bwd reads logits, writes dlogits
        loss, lse = ops.cross_entropy_forward(x, tg)
        p = _np_softmax(x.astype(np.float64))
        np.testing.assert_allclose(loss, -np.log(p[np.arange(N), tg]).mean(), rtol=1e-4)

        def ours():
            loss, lse = ops.cross_entropy_forward(x, tg)
            return ops.cross_entropy_backward(x, tg, lse, 1.0)

        def numpy_xent():
            m = x.max(-1, keepdims=True)
            e = np.exp(x - m)
            s = e.sum(-1, keepdims=True)
            loss = (np.log(s[:, 0]) + m[:, 0] - x[np.arange(N), tg]).mean()
            d = e / s
            d[np.arange(N), tg] -= 1
            return loss, d / N

        fns = {"ours": ours, "numpy": numpy_xent}
        if torch is not None:
            tl = torch.from_numpy(x).requires_grad_(True)
            tt = torch.from_numpy(tg)

            def tfn():
                tl.grad = None
                torch.nn.functional.cross_entropy(tl, tt).backward()

            fns["torch"] = tfn
        rows.append(_row("cross_entropy fwd+bwd", N, V, interleaved(fns, reps=9), 3 * 4 * N * V, limits))
    return rows
