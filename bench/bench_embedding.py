"""Embedding forward (gather) and backward (deterministic scatter-add) for a GPT-2-ish shape
(V=50304, C=768, B*T=2048 tokens) vs NumPy (fancy indexing / np.add.at) and PyTorch.

Bytes counted: fwd reads N*C table rows and writes N*C; bwd zeroes V*C, reads N*C, and
reads+writes N*C table rows.
"""
from __future__ import annotations

import numpy as np

from bench.common import interleaved, ratio, rand, torch
from fusegrad import ops


def run(limits, quick=False):
    rows = []
    V, C = 50304, 768
    for N in ([2048] if quick else [512, 2048, 8192]):
        ids = np.random.default_rng(0).integers(0, V, N).astype(np.int64)
        table, dout = rand((V, C)), rand((N, C), seed=1)
        np.testing.assert_array_equal(ops.embedding_forward(ids, table), table[ids])  # validate first

        def np_bwd():
            d = np.zeros((V, C), np.float32)
            np.add.at(d, ids, dout)
            return d

        for direction in ("fwd", "bwd"):
            if direction == "fwd":
                fns = {"ours": lambda: ops.embedding_forward(ids, table), "numpy": lambda: table[ids]}
                nbytes = 2 * 4 * N * C
            else:
                fns = {"ours": lambda: ops.embedding_backward(dout, ids, V), "numpy": np_bwd}
                nbytes = 4 * (V * C + 3 * N * C)
            if torch is not None:
                tids, ttab, tdo = torch.from_numpy(ids), torch.from_numpy(table), torch.from_numpy(dout)
                if direction == "fwd":
                    fns["torch"] = lambda: torch.nn.functional.embedding(tids, ttab)
                else:
                    fns["torch"] = lambda: torch.ops.aten.embedding_dense_backward(tdo, tids, V, -1, False)
            t = interleaved(fns, reps=7 if quick else 11)
            gbs = nbytes / t["ours"] / 1e9
            rows.append({
                "op": f"embedding {direction}", "N": N, "V": V, "C": C, "ours_ms": t["ours"] * 1e3,
                "numpy_ms": t["numpy"] * 1e3, "torch_ms": t.get("torch", 0) * 1e3 or None,
                "x_numpy": ratio(t["numpy"], t["ours"]), "x_torch": ratio(t.get("torch"), t["ours"]),
                "GB/s": gbs, "frac_copy_bw": gbs / limits.copy_gbs,
            })
    return rows
