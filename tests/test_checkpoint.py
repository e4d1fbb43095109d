"""Checkpoints: exact round trips, crash safety (SIGKILL mid-save), corruption detection."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from fusegrad.checkpoint import INDEX, load_checkpoint, save_checkpoint


def _state(seed, n=1000):
    r = np.random.default_rng(seed)
    return {"w": r.standard_normal((n, 7)).astype(np.float32), "b": r.standard_normal(7)}


def test_roundtrip_bit_exact(tmp_path):
    model = _state(0)
    optim = {"step": 3, "lr": 1e-3, "state": [{"m": np.ones(4, np.float32), "v": np.zeros(4)}, {"m": np.arange(3.0)}]}
    save_checkpoint(tmp_path, model, config={"n_layer": 2}, optimizer=optim, step=3, meta={"loss": 1.5})
    ck = load_checkpoint(tmp_path)
    assert ck["step"] == 3 and ck["config"] == {"n_layer": 2} and ck["meta"] == {"loss": 1.5}
    for k in model:
        assert ck["model"][k].dtype == model[k].dtype
        np.testing.assert_array_equal(ck["model"][k], model[k])
    assert ck["optimizer"]["step"] == 3 and ck["optimizer"]["lr"] == 1e-3
    np.testing.assert_array_equal(ck["optimizer"]["state"][1]["m"], np.arange(3.0))


def test_resave_replaces_and_cleans_old_files(tmp_path):
    save_checkpoint(tmp_path, _state(0), step=1)
    save_checkpoint(tmp_path, _state(1), step=2)
    save_checkpoint(tmp_path, _state(2), step=2)  # same step twice must not clobber live files
    np.testing.assert_array_equal(load_checkpoint(tmp_path)["model"]["w"], _state(2)["w"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in names if n.endswith(".safetensors")]) == 1, names


def test_truncated_file_raises_naming_it(tmp_path):
    save_checkpoint(tmp_path, _state(0), step=1)
    name = json.loads((tmp_path / INDEX).read_text())["files"]["model"]["name"]
    p = tmp_path / name
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{name} is truncated or corrupted"):
        load_checkpoint(tmp_path)


def test_flipped_byte_raises(tmp_path):
    save_checkpoint(tmp_path, _state(0), step=1)
    name = json.loads((tmp_path / INDEX).read_text())["files"]["model"]["name"]
    p = tmp_path / name
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        load_checkpoint(tmp_path)


def test_missing_and_garbage_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.json is missing"):
        load_checkpoint(tmp_path)
    (tmp_path / INDEX).write_text("{garbage")
    with pytest.raises(ValueError, match="is corrupted"):
        load_checkpoint(tmp_path)


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path):
    """Kill a child process while it writes large checkpoints over and over; the directory
    must always load, and hold one of the complete states that were written."""
    save_checkpoint(tmp_path, {"w": np.full((4_000_000,), 0.0, np.float32)}, step=0)
    code = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path[:0] = {sys.path!r}
        from fusegrad.checkpoint import save_checkpoint
        for step in range(1, 1000):
            save_checkpoint({str(tmp_path)!r}, {{"w": np.full((4_000_000,), float(step), np.float32)}}, step=step)
            print(step, flush=True)
    """)
    for delay in (0.05, 0.15, 0.3):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ck = load_checkpoint(tmp_path)
        w = ck["model"]["w"]
        assert np.all(w == w[0]) and float(w[0]) == ck["step"]
    save_checkpoint(tmp_path, {"w": np.zeros(3, np.float32)}, step=5000)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != INDEX]
    assert len(leftovers) == 1, leftovers  # files of killed saves are cleaned up
