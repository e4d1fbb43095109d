"""The command line: ``fusegrad train`` (GPT trainer) end to end on a tiny budget, resume
continuing the same loss curve, ``generate`` from the checkpoint, ``linefit``, ``info``."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest

from fusegrad.cli import main
from fusegrad.lm import TrainOptions, train_lm, unigram_entropy

TEXT = "def add(a, b):\n    return a + b\n\n" * 60
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "1"]


def test_train_tiny_budget_end_to_end_then_generate(tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--max-iters", "6", "--eval-interval", "3", "--out", str(out),
               "--sample-tokens", "8", *TINY])
    assert rc == 0
    s = capsys.readouterr().out
    assert "unigram entropy of the training tokens" in s
    assert "step     6/6 | loss" in s and "tok/s" in s and "ETA" in s
    assert s.count("val loss") >= 2
    assert "sample (temperature 0.8, top_k 40)" in s
    assert (out / "checkpoint.json").exists() and (out / "tokenizer.json").exists()
    rc = main(["generate", "--checkpoint", str(out), "--prompt", "def", "--max-new-tokens", "5", "--seed", "0"])
    assert rc == 0
    g = capsys.readouterr().out
    assert g.startswith("def") and len(g.rstrip("\n").encode()) >= 3


def test_resume_continues_the_same_loss_curve(tmp_path):
    kw = dict(text=TEXT, max_iters=8, n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
              eval_interval=4, eval_iters=1, sample_tokens=0, log=None)
    full = train_lm(TrainOptions(out=str(tmp_path / "a"), **kw))
    first = train_lm(TrainOptions(out=str(tmp_path / "b"), stop_at=5, **kw))
    second = train_lm(TrainOptions(out=str(tmp_path / "b"), resume=True, **kw))
    assert len(first["train_loss"]) == 5 and len(second["train_loss"]) == 3
    assert first["train_loss"] + second["train_loss"] == full["train_loss"]
    assert second["val_loss"][-1] == full["val_loss"][-1]


def test_train_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a file" in capsys.readouterr().err
    small = tmp_path / "small.txt"
    small.write_text("abc")
    assert main(["train", "--data", str(small), "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "the text has 3 tokens; it needs at least 2 x (block_size + 2) = 36" in capsys.readouterr().err
    # 35 tokens used to leave the training split empty and report "the text has 0 tokens"
    small.write_text("x" * 35)
    assert main(["train", "--data", str(small), "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "the text has 35 tokens" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tmp_path / "none"), "--prompt", "x"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(small), "--prompt", "x"]) == 2          # a file
    assert "is a file; a checkpoint is a directory" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value,msg", [
    ("--batch-size", "0", "batch_size (--batch-size) must be >= 1, got 0"),
    ("--max-iters", "-5", "max_iters (--max-iters) must be >= 0"),
    ("--warmup", "-1", "warmup (--warmup) must be >= 0"),
    ("--eval-interval", "0", "eval_interval (--eval-interval) must be >= 1"),   # was a ZeroDivisionError
    ("--eval-iters", "0", "eval_iters (--eval-iters) must be >= 1"),
    ("--lr", "nan", "lr (--lr) must be a finite number"),
    ("--grad-clip", "-1", "grad_clip (--grad-clip) must be >= 0.0"),
    ("--max-time", "inf", "max_time (--max-time) must be a finite number"),
    ("--threads", "0", "--threads must be >= 1, got 0"),
])
def test_train_refuses_bad_options_before_training(tmp_path, capsys, flag, value, msg):
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "o"), *TINY, flag, value]) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_train_options_refuse_non_integers():
    with pytest.raises(ValueError, match=r"batch_size \(--batch-size\) must be an integer, got 2.5"):
        TrainOptions(batch_size=2.5)
    with pytest.raises(ValueError, match="must be an integer, got True"):
        TrainOptions(n_layer=True)


def test_linefit_and_info(capsys):
    assert main(["linefit", "--steps", "200", "--lr", "0.03"]) == 0
    assert "least squares" in capsys.readouterr().out
    assert main(["info"]) == 0
    assert "isa" in capsys.readouterr().out


def test_unigram_entropy():
    ids = np.array([0, 1, 0, 1])
    assert abs(unigram_entropy(ids, 4) - math.log(2)) < 1e-12


@pytest.mark.slow
def test_default_train_run_learns(tmp_path):
    """The README's main job with its defaults: validation loss well below the unigram entropy."""
    log = io.StringIO()
    hist = train_lm(TrainOptions(out=str(tmp_path / "run"), log=log))
    val = hist["val_loss"][-1][1]
    assert val < hist["unigram_entropy"] - 0.5, log.getvalue()


def test_train_with_zero_iterations_only_evaluates_and_samples(tmp_path):
    h = train_lm(TrainOptions(text=TEXT, max_iters=0, n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                              eval_iters=1, sample_tokens=4, out=str(tmp_path / "o"), log=None))
    assert h["train_loss"] == []
