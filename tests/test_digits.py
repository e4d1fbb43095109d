"""End to end: an MLP trained with fusegrad on scikit-learn's 8x8 digits reaches >= 97%
held-out accuracy (examples/06_digits.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def test_digits_mlp_accuracy(tmp_path):
    pytest.importorskip("sklearn")
    path = Path(__file__).resolve().parent.parent / "examples" / "06_digits.py"
    spec = importlib.util.spec_from_file_location("example_06", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.main(verbose=False)
    assert r["accuracy"] >= 0.97
    h = r["history"]
    assert len(h.train_loss) == 30 and h.train_loss[-1] < h.train_loss[0] and not h.diverged
