"""Training a GPT language model on a text corpus: the engine behind ``fusegrad train``.

``train_lm(TrainOptions(...))`` tokenizes the text (byte-level by default, or a small BPE),
splits it 90/10 into train/validation, and runs AdamW with linear warmup and cosine decay,
gradient clipping, a progress line (loss, tokens/s, ETA), periodic validation loss and
crash-safe checkpoints (``--out``; ``--resume`` continues from the last one). Batches are
drawn from a generator seeded with ``(seed, step)``, so a resumed run sees exactly the
batches the uninterrupted run would have seen and continues the same loss curve.

>>> from fusegrad.lm import TrainOptions, train_lm
>>> hist = train_lm(TrainOptions(text="abcabcabd " * 200, max_iters=3, n_layer=1, n_embd=16,
...                              n_head=2, block_size=16, batch_size=2, out=None, log=None))
>>> len(hist["train_loss"])
3
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import distributed as dist
from . import optim
from ._checks import is_int
from .models.gpt import GPT, GPTConfig
from .nn.utils import clip_grad_norm_
from .tensor import no_grad
from .tokenizers import BPETokenizer, ByteTokenizer, load_tokenizer


@dataclass
class TrainOptions:
    text: str | None = None          # training text (None: --data file or the embedded corpus)
    data: str | None = None          # path of a UTF-8 text file
    max_bytes: int = 1_000_000       # size of the embedded corpus selection
    tokenizer: str = "byte"          # "byte" or "bpe"
    vocab_size: int = 512            # BPE vocabulary size
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_kv_head: int | None = None
    block_size: int = 128
    pos: str = "learned"
    dropout: float = 0.0
    batch_size: int = 16
    max_iters: int = 400
    stop_at: int | None = None       # stop after this step (the schedule still spans max_iters)
    max_time: float | None = 150.0   # seconds; stop early (with eval, checkpoint, sample) when exceeded
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_iters: int = 8
    out: str | None = "fusegrad-out"
    resume: bool = False
    seed: int = 1337
    sample_tokens: int = 200
    log: object = field(default="stdout", repr=False)  # a file, "stdout" (current sys.stdout) or None

    def __post_init__(self):
        # (name, lowest allowed value, may be None); NaN fails every comparison, so it is refused
        limits = [("max_bytes", 1, False), ("n_layer", 1, False), ("n_head", 1, False),
                  ("n_embd", 1, False), ("n_kv_head", 1, True), ("block_size", 1, False), ("batch_size", 1, False),
                  ("max_iters", 0, False), ("stop_at", 0, True), ("warmup", 0, False), ("eval_interval", 1, False),
                  ("eval_iters", 1, False), ("sample_tokens", 0, False),
                  ("lr", 0.0, False), ("min_lr", 0.0, False), ("weight_decay", 0.0, False),
                  ("grad_clip", 0.0, False), ("max_time", 0.0, True)]
        for name, lo, optional in limits:
            v = getattr(self, name)
            if v is None and optional:
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(lo, int) and not is_int(v):
                raise ValueError(f"train: {name} ({flag}) must be an integer, got {v!r}")
            if isinstance(lo, float) and not (isinstance(v, (int, float, np.number)) and math.isfinite(v)):
                raise ValueError(f"train: {name} ({flag}) must be a finite number, got {v!r}")
            if not v >= lo:
                raise ValueError(f"train: {name} ({flag}) must be >= {lo}, got {v}")


def _stream(opts):
    return sys.stdout if isinstance(opts.log, str) and opts.log == "stdout" else opts.log


def _print(opts, *a, end="\n"):
    f = _stream(opts)
    if f is not None:
        print(*a, end=end, file=f, flush=True)


def unigram_entropy(ids: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats/token) of the token frequency distribution: the loss of the best model
    that ignores context."""
    c = np.bincount(ids, minlength=vocab_size).astype(np.float64)
    p = c[c > 0] / c.sum()
    return float(-(p * np.log(p)).sum())


def _load_text(opts) -> tuple[str, str]:
    if opts.text is not None:
        return opts.text, "text"
    if opts.data is not None:
        p = Path(opts.data)
        if not p.is_file():
            raise FileNotFoundError(f"train: --data {p} is not a file")
        return p.read_text(encoding="utf-8", errors="replace"), str(p)
    from .corpus import default_corpus
    return default_corpus(opts.max_bytes), f"embedded corpus (Python stdlib sources, {opts.max_bytes:,} bytes max)"


def _fmt_time(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60}m{s % 60:02d}s"


class _Batches:
    def __init__(self, ids, block, batch, seed):
        self.ids, self.block, self.batch, self.seed = ids, block, batch, seed
        if len(ids) < block + 2:
            raise ValueError(f"train: the text has {len(ids)} tokens, fewer than block_size + 2 = {block + 2}; "
                             f"use more text or a smaller --block-size")

    def get(self, key):
        r = np.random.default_rng(key)
        ix = r.integers(0, len(self.ids) - self.block - 1, self.batch)
        off = ix[:, None] + np.arange(self.block + 1)[None, :]
        w = self.ids[off]
        return w[:, :-1], w[:, 1:]


def evaluate(model, batches, n, seed) -> float:
    model.eval()
    tot = 0.0
    with no_grad():
        for i in range(n):
            x, y = batches.get([seed, 10**9, i])
            tot += float(model(x, y)[1].data)
    model.train()
    return tot / n


def train_lm(opts: TrainOptions) -> dict:
    """Train (or resume) a GPT; returns the history (losses per step, val losses, timings).

    Under ``mpiexec`` (after ``distributed.init_process_group()``) every rank trains on its
    slice of each step's batch (``batch_size`` is the global batch) with averaged gradients;
    rank 0 alone prints, evaluates, saves and samples."""
    t_start = time.perf_counter()
    world, rank = dist.get_world_size(), dist.get_rank()
    if world > 1:
        if opts.batch_size % world:
            raise ValueError(f"train: batch_size ({opts.batch_size}) must be a multiple of the number of ranks "
                             f"({world}): each rank trains on batch_size / ranks rows of every batch")
        if rank:
            opts = replace(opts, log=None)
    out = Path(opts.out) if opts.out else None
    resume = bool(opts.resume and out is not None and (out / "checkpoint.json").exists())
    if opts.resume and not resume:
        _print(opts, f"resume: no checkpoint in {out}, starting from scratch")
    text, source = _load_text(opts)
    if resume:
        tok = load_tokenizer(out / "tokenizer.json")
    elif opts.tokenizer == "byte":
        tok = ByteTokenizer()
    elif opts.tokenizer == "bpe":
        t0 = time.perf_counter()
        tok = BPETokenizer.train(text, opts.vocab_size)
        _print(opts, f"trained BPE tokenizer: {tok.vocab_size} tokens in {time.perf_counter() - t0:.1f}s")
    else:
        raise ValueError(f"train: tokenizer must be 'byte' or 'bpe', got {opts.tokenizer!r}")
    ids = np.asarray(tok.encode(text), dtype=np.int64)

    if resume:
        model = GPT.load(out)
        cfg = model.config
    else:
        cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=opts.block_size, n_layer=opts.n_layer,
                        n_head=opts.n_head, n_embd=opts.n_embd, n_kv_head=opts.n_kv_head,
                        dropout=opts.dropout, pos=opts.pos)
        model = GPT(cfg, seed=opts.seed)
    # the last tenth (at least one window of block_size + 2 tokens) validates; the rest trains
    need = cfg.block_size + 2
    if len(ids) < 2 * need:
        raise ValueError(f"train: the text has {len(ids)} tokens; it needs at least 2 x (block_size + 2) = "
                         f"{2 * need} (one window to train on, one to validate); use more text or a "
                         f"smaller --block-size")
    n_val = max(len(ids) // 10, need)
    train_ids, val_ids = ids[:-n_val], ids[-n_val:]
    H = unigram_entropy(train_ids, tok.vocab_size)
    train_b = _Batches(train_ids, cfg.block_size, opts.batch_size, opts.seed)
    val_b = _Batches(val_ids, cfg.block_size, opts.batch_size, opts.seed)
    net = dist.DistributedDataParallel(model) if world > 1 else model
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                       {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr, betas=(0.9, 0.95))
    sched = optim.CosineWarmupLR(opt, max(0, min(opts.warmup, opts.max_iters - 1)), max(opts.max_iters, 1),
                                 min_lr=opts.min_lr)
    step = 0
    hist = {"train_loss": [], "val_loss": [], "unigram_entropy": H, "tokens": len(ids), "source": source}
    if resume:
        info = model.restore(out, optimizer=opt)
        step = info["step"]
        sched.load_state_dict(info["meta"]["scheduler"])
        _print(opts, f"resumed from {out} at step {step}")
    elif out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        tok.save(out / "tokenizer.json")

    _print(opts, f"data: {source}: {len(ids):,} tokens ({tok.vocab_size} symbols), "
                 f"train {len(train_ids):,} / val {len(val_ids):,}")
    _print(opts, f"model: GPT {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, "
                 f"context {cfg.block_size}, {model.num_params():,} parameters; batch {opts.batch_size}, "
                 f"{opts.max_iters} steps")
    _print(opts, f"unigram entropy of the training tokens: {H:.3f} nats/token ({H / math.log(2):.3f} bits) "
                 f"- a model that learns context gets below this")

    def save(val=None):
        if out is not None and rank == 0:
            model.save(out, optimizer=opt, step=step,
                       meta={"scheduler": sched.state_dict(), "val_loss": val, "unigram_entropy": H})

    stop = min(opts.max_iters, opts.stop_at) if opts.stop_at else opts.max_iters
    f = _stream(opts)
    tty = f is not None and hasattr(f, "isatty") and f.isatty()
    log_every = max(1, min(25, stop // 20))
    t0, tok_count, val = time.perf_counter(), 0, None
    first = step
    while step < stop:
        x, y = train_b.get([opts.seed, step])
        if world > 1:       # this rank's rows of the step's batch: no two ranks see the same window
            b = opts.batch_size // world
            x, y = x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b]
        _, loss = net(x, y)
        opt.zero_grad()
        loss.backward()
        if opts.grad_clip:
            clip_grad_norm_(model.parameters(), opts.grad_clip)
        opt.step()
        sched.step()
        step += 1
        lv = float(loss.data)
        timed_out = opts.max_time is not None and time.perf_counter() - t_start > opts.max_time
        if world > 1:       # the global loss, and rank 0's clock decides for every rank
            agreed = np.array([lv, timed_out and rank == 0])
            dist.all_reduce(agreed)
            lv, timed_out = float(agreed[0]) / world, bool(agreed[1])
        hist["train_loss"].append(lv)
        if not math.isfinite(lv):
            _print(opts, f"\nstep {step}: the loss is not finite ({lv}); lower --lr")
            hist["diverged"] = True
            break
        tok_count += x.size * world
        el = time.perf_counter() - t0
        tps = tok_count / el
        if step % log_every == 0 or step == stop:
            eta = (stop - step) * el / (step - first)
            line = (f"step {step:5d}/{stop} | loss {lv:.4f} | lr {opt.param_groups[0]['lr']:.2e} | "
                    f"{tps:,.0f} tok/s | elapsed {_fmt_time(el)} | ETA {_fmt_time(eta)}")
            _print(opts, ("\r" + line) if tty else line, end="" if tty else "\n")
        if rank == 0 and (step % opts.eval_interval == 0 or step == stop or timed_out):
            val = evaluate(model, val_b, opts.eval_iters, opts.seed)
            hist["val_loss"].append((step, val))
            _print(opts, ("\n" if tty else "") + f"step {step:5d}: val loss {val:.4f} nats/token "
                         f"(unigram entropy {H:.4f})")
            save(val)
        if timed_out:
            _print(opts, f"stopping at step {step}: --max-time {opts.max_time:g}s reached")
            break
    hist["step"] = step
    hist["seconds"] = time.perf_counter() - t_start
    hist["tokens_per_s"] = tok_count / max(time.perf_counter() - t0, 1e-9)
    if hist["val_loss"]:
        val = hist["val_loss"][-1][1]
        _print(opts, f"done: {step} steps in {_fmt_time(hist['seconds'])}; final train loss "
                     f"{np.mean(hist['train_loss'][-10:]):.4f}, val loss {val:.4f} nats/token vs unigram "
                     f"entropy {H:.4f} ({'below' if val < H else 'NOT below'} by {H - val:.3f})")
    if out is not None:
        _print(opts, f"checkpoint: {out}")
    if opts.sample_tokens and rank == 0:
        prompt = tok.decode(val_ids[:min(32, cfg.block_size // 2)].tolist())
        s = sample(model, tok, prompt, opts.sample_tokens, temperature=0.8, top_k=40, seed=opts.seed)
        hist["sample"] = s
        _print(opts, "sample (temperature 0.8, top_k 40):\n" + "-" * 60 + f"\n{s}\n" + "-" * 60)
    return hist


def sample(model, tok, prompt, n, temperature=0.8, top_k=None, top_p=None, seed=None) -> str:
    ids = np.asarray(tok.encode(prompt), dtype=np.int64)
    if ids.size == 0:
        ids = np.asarray(tok.encode("\n"), dtype=np.int64)
    ids = ids[-model.config.block_size:]
    outids = model.generate(ids[None, :], n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    return tok.decode(outids[0].tolist())

