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
    rc = main(["generate", "--checkpoint", str(out), "--prompt", "def", "--max-new-tokens", "5", "--seed", "0",
               "--weights-dtype", "bfloat16"])
    assert rc == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("def") and "tok/s" in cap.err


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
    assert "it has 3 tokens and needs at least 2 x (block_size + 2) = 36" in capsys.readouterr().err
    # 35 tokens used to leave the training split empty and report "the text has 0 tokens"
    small.write_text("x" * 35)
    assert main(["train", "--data", str(small), "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "it has 35 tokens" in capsys.readouterr().err
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


# ---- resume continues the same data, model and tokenizer; a checkpoint is never replaced silently

OTHER = "class Point:\n    x: int = 0\n    y: int = 0\n\n" * 50     # not the embedded corpus


def _train(*args):
    return main(["train", "--sample-tokens", "0", "--max-time", "0", *args])


def test_resume_takes_the_data_and_options_from_the_checkpoint(tmp_path, capsys):
    # README: `train --out run --resume --max-iters N` after a run on --data FILE used to train on
    # the embedded corpus (and with the default batch size) from the resumed step on
    data = tmp_path / "data.txt"
    data.write_text(OTHER)
    kw = dict(data=str(data), max_iters=8, n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
              eval_interval=4, eval_iters=1, sample_tokens=0, log=None)
    full = train_lm(TrainOptions(out=str(tmp_path / "full"), **kw))
    assert _train("--out", str(tmp_path / "run"), "--data", str(data), "--max-iters", "8", "--stop-at", "5",
                  "--eval-interval", "4", *TINY) == 0
    capsys.readouterr()
    # what the CLI passes for `train --out run --resume`: only the typed options count as given
    second = train_lm(TrainOptions(out=str(tmp_path / "run"), resume=True, sample_tokens=0, log=None,
                                   explicit=frozenset({"out", "resume", "sample_tokens"})))
    assert second["source"] == str(data.resolve())
    assert second["train_loss"] == full["train_loss"][5:]
    assert second["val_loss"][-1] == full["val_loss"][-1]


@pytest.fixture
def run_on_file(tmp_path, capsys):
    """(data file, checkpoint directory) of a 2-step tiny run on OTHER."""
    data = tmp_path / "data.txt"
    data.write_text(OTHER)
    run = str(tmp_path / "run")
    assert _train("--out", run, "--data", str(data), "--max-iters", "2", *TINY) == 0
    capsys.readouterr()
    return data, run


def test_resume_refuses_changed_or_missing_data(tmp_path, capsys, run_on_file):
    data, run = run_on_file
    data.write_text(OTHER + "# one more line\n")
    assert _train("--out", run, "--resume", "--max-iters", "4") == 2
    err = capsys.readouterr().err
    assert f"{data.resolve()} changed since the checkpoint in {run} was written" in err and "restore the file" in err
    data.write_text(OTHER)
    moved = tmp_path / "moved.txt"
    data.rename(moved)
    assert _train("--out", run, "--resume", "--max-iters", "4") == 2
    assert f"trained on {data.resolve()}, which no longer exists; put it back, or pass its new place with --data" \
        in capsys.readouterr().err
    other = tmp_path / "other.txt"
    other.write_text(OTHER.upper())
    assert _train("--out", run, "--resume", "--max-iters", "4", "--data", str(other)) == 2
    assert "is not the text the checkpoint" in capsys.readouterr().err
    assert _train("--out", run, "--resume", "--max-iters", "4", "--data", str(moved)) == 0   # same content
    assert f"data: {moved}" in capsys.readouterr().out
    # the embedded corpus is recorded by size and hash: --max-bytes does not apply to a file's run
    assert _train("--out", run, "--resume", "--max-iters", "6", "--max-bytes", "5000") == 2
    assert "--max-bytes does not apply" in capsys.readouterr().err


def test_resume_refuses_model_and_tokenizer_options_that_contradict_the_checkpoint(capsys, run_on_file):
    _, run = run_on_file
    assert _train("--out", run, "--resume", "--max-iters", "4", "--n-layer", "2", "--tokenizer", "bpe",
                  "--vocab-size", "300") == 2
    err = capsys.readouterr().err
    assert (f"--resume continues the checkpoint in {run}, which has --n-layer 1 (you gave 2), --tokenizer byte "
            f"(you gave bpe), --vocab-size 256 (you gave 300)") in err
    assert _train("--out", run, "--resume", "--max-iters", "4", "--n-embd", "32") == 2
    assert "--n-embd 16 (you gave 32)" in capsys.readouterr().err
    # typing the checkpoint's own values, even a default one (--n-head 4 vs 2 is a conflict), is fine
    assert _train("--out", run, "--resume", "--max-iters", "4", "--n-layer", "1", "--tokenizer", "byte") == 0
    assert _train("--out", run, "--resume", "--max-iters", "6", "--n-head", "4") == 2
    assert "--n-head 2 (you gave 4)" in capsys.readouterr().err


def test_train_refuses_to_replace_a_checkpoint_without_resume_or_overwrite(tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text(OTHER)
    out = tmp_path / "run"
    args = ["--out", str(out), "--data", str(data), "--max-iters", "2", *TINY]
    assert _train(*args) == 0
    capsys.readouterr()
    index = (out / "checkpoint.json").read_bytes()
    assert _train(*args, "--lr", "1e-2") == 2                     # rerunning the same command
    err = capsys.readouterr().err
    assert (f"{out} already holds a checkpoint (step 2 of --max-iters 2); add --resume to continue training it, "
            f"or --overwrite") in err
    typed = "python -m fusegrad train --sample-tokens 0 --max-time 0 " + " ".join(args) + " --lr 1e-2"
    # that run is finished: continuing it needs a larger --max-iters (the last one typed counts)
    assert f"to continue it:  {typed} --resume --max-iters 4\n" in err
    assert f"to replace it:   {typed} --overwrite\n" in err
    assert (out / "checkpoint.json").read_bytes() == index      # untouched
    assert _train("--out", str(out), "--resume", "--max-iters", "4") == 0    # what it says works
    assert _train(*args, "--max-iters", "3", "--overwrite") == 0
    from fusegrad.checkpoint import load_checkpoint
    assert load_checkpoint(out)["step"] == 3
    assert _train(*args, "--resume", "--overwrite") == 2
    assert "give one of them" in capsys.readouterr().err


@pytest.mark.parametrize("extra,msg", [
    (["--vocab-size", "1000"], "--vocab-size 1000 sets the size of a BPE vocabulary; the byte tokenizer always "
                               "has 256 tokens (add --tokenizer bpe, or drop --vocab-size)"),
    (["--max-bytes", "5000"], "--max-bytes selects part of the embedded corpus; with --data the whole text is used"),
    (["--block-size", "4096"], "--block-size 4096 is too large for this text: it has 1980 tokens"),
    (["--out", "DATA"], "is a file; --out names the directory the checkpoint is written to"),
])
def test_train_refuses_options_that_would_be_ignored(tmp_path, capsys, extra, msg):
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    extra = [str(data) if a == "DATA" else a for a in extra]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "o"), *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Errno" not in err
    assert not (tmp_path / "o").exists()


def test_help_shows_every_default(capsys):
    from fusegrad.cli import build_parser

    p = build_parser()
    subs = next(a for a in p._actions if a.dest == "command").choices
    for name in ("train", "generate", "linefit"):
        for a in subs[name]._actions:
            if a.option_strings and a.dest != "help" and not a.required:
                assert "(default: " in (a.help or ""), (name, a.option_strings)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    h = " ".join(capsys.readouterr().out.split())
    assert "--n-layer N_LAYER transformer blocks (default: 4)" in h
    assert "(default: fusegrad-out)" in h and "(default: 1337)" in h


def test_train_report_counts_every_parameter_and_reports_bits_per_byte(tmp_path, capsys):
    from fusegrad.models import GPT
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    assert _train("--data", str(data), "--out", str(out), "--max-iters", "2", *TINY) == 0
    s = capsys.readouterr().out
    n = sum(p.data.size for p in GPT.load(out).parameters())      # position embeddings included
    assert f"context 16, {n:,} parameters" in s
    # byte-level: one token per byte, so bits/byte = nats/token / ln 2
    val = float(s.split("step     2: val loss ")[1].split()[0])
    bpb = float(s.split("nats/token = ")[1].split()[0])
    assert bpb == pytest.approx(val / math.log(2), abs=1e-4)
    # the summary words the comparison with the unigram entropy for its sign, never "NOT below by -x"
    assert "above the unigram entropy" in s and "NOT below" not in s and "by -" not in s


def test_bits_per_byte_with_bpe_uses_the_validation_texts_bytes():
    from fusegrad.tokenizers import BPETokenizer
    h = train_lm(TrainOptions(text=OTHER, tokenizer="bpe", vocab_size=300, max_iters=2, n_layer=1, n_head=2,
                              n_embd=16, block_size=16, batch_size=4, eval_iters=1, sample_tokens=0, out=None,
                              log=None))
    tok = BPETokenizer.train(OTHER, 300)
    ids = tok.encode(OTHER)
    val_ids = ids[-max(len(ids) // 10, 18):]
    nbytes = len(tok.decode_bytes(val_ids))
    assert nbytes > len(val_ids)                          # BPE tokens hold several bytes each
    (_, val), (_, bpb) = h["val_loss"][-1], h["val_bpb"][-1]
    assert bpb == pytest.approx(val * len(val_ids) / nbytes / math.log(2), rel=1e-12)


def test_versus_entropy_wording():
    from fusegrad.lm import _versus_entropy
    assert _versus_entropy(1.5, 2.0) == "0.500 below the unigram entropy 2.0000: the model uses context"
    assert _versus_entropy(2.675, 2.0).startswith("0.675 above the unigram entropy 2.0000: not yet better")


def test_no_checkpoint_line_when_none_was_written_and_sample_marks_the_prompt(tmp_path, capsys):
    from fusegrad.lm import PROMPT_END
    out = tmp_path / "run"
    h = train_lm(TrainOptions(text=TEXT, max_iters=0, n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                              eval_iters=1, sample_tokens=6, out=str(out)))
    s = capsys.readouterr().out
    assert "checkpoint:" not in s and "no checkpoint written" in s and not out.exists()
    assert h["checkpoint"] is None and len(h["val_loss"]) == 1     # it still reports where the model stands
    sample = s.split("-" * 60 + "\n")[1]
    prompt, new = sample.split(PROMPT_END)
    assert prompt and prompt in TEXT                                # from the validation text
    assert h["sample"].startswith(prompt) and len(new.rstrip("\n").encode()) >= 1


def test_generate_marks_where_the_prompt_ends(capsys, run_on_file):
    from fusegrad.lm import PROMPT_END
    _, run = run_on_file
    gen = ["generate", "--checkpoint", run, "--max-new-tokens", "6", "--seed", "0"]
    assert main([*gen, "--prompt", "class P"]) == 0
    out = capsys.readouterr()
    prompt, new = out.out.split(PROMPT_END)
    assert prompt == "class P" and len(new.rstrip("\n").encode()) >= 1 and "note:" not in out.err
    assert main([*gen, "--prompt", "class P", "--no-mark"]) == 0          # the same text without the mark
    assert capsys.readouterr().out == prompt + new
    long = "y = 0\n" * 5                                                  # 30 tokens, the context holds 16
    assert main([*gen, "--prompt", long]) == 0
    out = capsys.readouterr()
    assert out.out.split(PROMPT_END)[0] == long[-16:]
    assert "the prompt is longer than the model's context (16 tokens)" in out.err


def test_max_time_zero_means_no_limit(tmp_path):
    h = train_lm(TrainOptions(text=TEXT, max_iters=3, max_time=0, n_layer=1, n_head=2, n_embd=16, block_size=16,
                              batch_size=4, eval_iters=1, sample_tokens=0, out=None, log=None))
    assert h["step"] == 3 and len(h["train_loss"]) == 3


def test_resume_on_the_embedded_corpus_checks_it(tmp_path, capsys, monkeypatch):
    run = str(tmp_path / "run")
    assert _train("--out", run, "--max-bytes", "4000", "--max-iters", "2", *TINY) == 0
    assert _train("--out", run, "--resume", "--max-iters", "3") == 0
    assert "data: embedded corpus (Python stdlib sources, 4,000 bytes max)" in capsys.readouterr().out
    assert _train("--out", run, "--resume", "--max-iters", "4", "--max-bytes", "5000") == 2
    assert "is not the text the checkpoint" in capsys.readouterr().err
    import fusegrad.corpus
    monkeypatch.setattr(fusegrad.corpus, "default_corpus", lambda n: "another Python's sources\n" * 200)
    assert _train("--out", run, "--resume", "--max-iters", "4") == 2
    assert "differs from the one the checkpoint" in capsys.readouterr().err
