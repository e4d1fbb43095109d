"""Training a GPT language model on a text corpus: the engine behind ``fusegrad train``.

``train_lm(TrainOptions(...))`` tokenizes the text (byte-level by default, or a small BPE),
splits it 90/10 into train/validation, and runs AdamW with linear warmup and cosine decay,
gradient clipping, a progress line (loss, tokens/s, ETA), periodic validation loss and
crash-safe checkpoints (``--out``; ``--resume`` continues from the last one). Batches are
drawn from a generator seeded with ``(seed, step)``, so a resumed run sees exactly the
batches the uninterrupted run would have seen and continues the same loss curve.

The checkpoint records the data it was trained on (the file's path and SHA-256, or the
embedded corpus's size and SHA-256) and the tokenizer. ``resume`` takes the data from that
record and refuses a file that changed or vanished, and model or tokenizer options that
contradict the checkpoint. A new run never replaces an existing checkpoint unless
``overwrite`` is set. Validation losses are reported in nats per token and in bits per byte
of the validation text, which compares byte-level and BPE runs fairly.

>>> from fusegrad.lm import TrainOptions, train_lm
>>> hist = train_lm(TrainOptions(text="abcabcabd " * 200, max_iters=3, n_layer=1, n_embd=16,
...                              n_head=2, block_size=16, batch_size=2, out=None, log=None))
>>> len(hist["train_loss"])
3
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from . import distributed as dist
from . import optim
from .amp import autocast
from ._checks import is_int
from .checkpoint import _read_index
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
    dtype: str = "float32"       # "bf16": matrix products under fusegrad.autocast (fp32 master weights)
    device: str = "cpu"              # "cuda": model, batches and optimizer state on the GPU (fusegrad.cuda)
    batch_size: int = 16
    max_iters: int = 400
    stop_at: int | None = None       # stop after this step (the schedule still spans max_iters)
    max_time: float | None = 150.0   # seconds; stop early (with eval, checkpoint, sample) when exceeded; 0: no limit
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_iters: int = 8
    out: str | None = "fusegrad-out"
    resume: bool = False             # continue the checkpoint in `out` (its data, tokenizer and model)
    overwrite: bool = False          # start over in `out` even if it holds a checkpoint
    seed: int = 1337
    zero: bool = False               # under mpiexec: ZeRO-1, each rank keeps AdamW state for its share
    sample_tokens: int = 200
    log: object = field(default="stdout", repr=False)  # a file, "stdout" (current sys.stdout) or None
    # names of the options the user set (the CLI passes the flags typed); None: those that differ
    # from the defaults. On resume, a set model/tokenizer/data option must agree with the checkpoint.
    explicit: frozenset | None = field(default=None, repr=False)

    def given(self, name: str) -> bool:
        """Whether the user set option ``name`` (rather than leaving its default)."""
        if self.explicit is not None:
            return name in self.explicit
        return getattr(self, name) != _DEFAULTS[name]

    def __post_init__(self):
        if self.dtype not in ("float32", "bf16"):
            raise ValueError(f"--dtype must be float32 or bf16, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"train: device (--device) must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda":
            if self.dtype == "bf16":
                raise ValueError("train: --dtype bf16 runs on the CPU's bf16 kernels; on --device cuda use float32 "
                                 "(the GPU's bf16 products are not written yet)")
            from . import cuda
            if not cuda.is_available():
                raise ValueError(f"train: --device cuda, but CUDA is not available here: {cuda.unavailable_reason()}")
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
        if self.tokenizer not in ("byte", "bpe"):
            raise ValueError(f"train: tokenizer (--tokenizer) must be 'byte' or 'bpe', got {self.tokenizer!r}")
        if self.resume and self.overwrite:
            raise ValueError("train: --resume continues the checkpoint and --overwrite replaces it; give one of them")
        if self.given("max_bytes") and (self.data is not None or self.text is not None):
            src = "--data" if self.data is not None else "text="
            raise ValueError(f"train: --max-bytes selects part of the embedded corpus; with {src} the whole text "
                             f"is used, so drop --max-bytes")


_DEFAULTS = {f.name: f.default for f in fields(TrainOptions) if f.name not in ("log", "explicit")}


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


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _load_text(opts) -> tuple[str, str, dict]:
    """The training text, a description, and the record a checkpoint keeps of it (what it is,
    where it came from and its SHA-256) so that a resumed run can find and check it."""
    if opts.text is not None:
        raw = opts.text.encode("utf-8", errors="surrogatepass")
        return opts.text, "text", {"kind": "text", "bytes": len(raw), "sha256": _sha256(raw)}
    if opts.data is not None:
        return _read_data_file(opts.data)
    from .corpus import default_corpus
    text = default_corpus(opts.max_bytes)
    raw = text.encode("utf-8", errors="surrogatepass")
    return (text, f"embedded corpus (Python stdlib sources, {opts.max_bytes:,} bytes max)",
            {"kind": "embedded", "max_bytes": opts.max_bytes, "bytes": len(raw), "sha256": _sha256(raw)})


def _read_data_file(path) -> tuple[str, str, dict]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"train: --data {p} is not a file")
    raw = p.read_bytes()
    return (raw.decode("utf-8", errors="replace"), str(p),
            {"kind": "file", "path": str(p.resolve()), "given": str(path), "bytes": len(raw), "sha256": _sha256(raw)})


def _describe(rec: dict) -> str:
    if rec["kind"] == "file":
        return f"{rec['path']} ({rec['bytes']:,} bytes, sha256 {rec['sha256'][:12]})"
    if rec["kind"] == "embedded":
        return f"the embedded corpus (--max-bytes {rec['max_bytes']}, sha256 {rec['sha256'][:12]})"
    return f"text passed as TrainOptions(text=...) ({rec['bytes']:,} bytes, sha256 {rec['sha256'][:12]})"


def _resume_text(opts, out: Path, rec: dict | None) -> tuple[str, str, dict | None]:
    """The text a resumed run trains on: the one the checkpoint recorded, checked by SHA-256.
    Data options given on resume must name the same content."""
    if rec is None:                      # a checkpoint written before data sources were recorded
        text, source, rec = _load_text(opts)
        _print(opts, f"resume: {out} does not record its training data; using {source} as given")
        return text, source, rec
    fresh = "start a new run with --overwrite (or another --out) to train on something else"
    if opts.text is not None or opts.data is not None or opts.given("max_bytes"):
        if opts.given("max_bytes") and rec["kind"] != "embedded":
            raise ValueError(f"train: --resume: the checkpoint in {out} was trained on {_describe(rec)}, not on "
                             f"the embedded corpus, so --max-bytes does not apply; drop it")
        text, source, now = _load_text(opts)
        what = f"{source} is not the text the checkpoint in {out} was trained on"
        advice = f"drop the data option to continue on the recorded data, or {fresh}"
    elif rec["kind"] == "text":
        raise ValueError(f"train: --resume: the checkpoint in {out} was trained on {_describe(rec)}; "
                         f"pass the same text again")
    elif rec["kind"] == "file":
        if not Path(rec["path"]).is_file():
            raise FileNotFoundError(f"train: --resume: the checkpoint in {out} was trained on {rec['path']}, "
                                    f"which no longer exists; put it back, or pass its new place with --data FILE")
        text, source, now = _read_data_file(rec["path"])
        what = f"{rec['path']} changed since the checkpoint in {out} was written"
        advice = f"restore the file, or {fresh}"
    else:
        text, source, now = _load_text(replace(opts, text=None, data=None, max_bytes=rec["max_bytes"]))
        what = (f"the embedded corpus (the Python standard library's sources) differs from the one the checkpoint "
                f"in {out} was trained on (another Python version?)")
        advice = f"resume with the Python that started the run, or {fresh}"
    if now["sha256"] != rec["sha256"]:
        raise ValueError(f"train: --resume: {what}: it was {_describe(rec)}, it is {now['bytes']:,} bytes, sha256 "
                         f"{now['sha256'][:12]}; {advice}")
    return text, source, now


# training options a resumed run takes from the checkpoint unless given again (then the new value applies)
_RUN_OPTIONS = ("batch_size", "max_iters", "lr", "min_lr", "warmup", "weight_decay", "grad_clip", "seed",
                "eval_interval", "eval_iters")
_MODEL_FLAGS = ("n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "pos", "dropout")


def _resume_conflicts(opts, cfg, tok_rec: dict) -> list[str]:
    """Model and tokenizer options the user gave that contradict the checkpoint."""
    have = {k: getattr(cfg, k) for k in _MODEL_FLAGS}
    if have["n_kv_head"] is None:
        have["n_kv_head"] = cfg.n_head
    have.update(tokenizer=tok_rec["kind"], vocab_size=tok_rec["vocab_size"])
    bad = []
    for k, v in have.items():
        mine = getattr(opts, k)
        if k == "n_kv_head" and mine is None:
            mine = opts.n_head
        if opts.given(k) and mine != v:
            bad.append(f"--{k.replace('_', '-')} {v} (you gave {getattr(opts, k)})")
    return bad


class CheckpointExists(ValueError):
    """``train`` was pointed at a directory that holds a checkpoint, without resume or overwrite.
    ``finished``: that run reached its --max-iters (resuming it needs a larger one)."""

    def __init__(self, msg, step=None, max_iters=None):
        super().__init__(msg)
        self.step, self.max_iters = step, max_iters
        self.finished = step is not None and max_iters is not None and step >= max_iters


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
    was = model.training
    model.eval()
    tot = 0.0
    try:
        with no_grad():
            for i in range(n):
                x, y = batches.get([seed, 10**9, i])
                tot += float(model(x, y)[1].data)
    finally:
        model.train(was)
    return tot / n


def _check_out(opts, out: Path | None) -> bool:
    """Whether this run resumes; refuses an --out that is a file, and a checkpoint that would be
    replaced without --overwrite."""
    if out is None:
        if opts.resume:
            raise ValueError("train: --resume continues the checkpoint in --out; give --out DIR")
        return False
    if out.exists() and not out.is_dir():
        raise ValueError(f"train: --out {out} is a file; --out names the directory the checkpoint is written to")
    has = (out / "checkpoint.json").exists()
    if opts.resume:
        if not has:
            _print(opts, f"resume: no checkpoint in {out}, starting from scratch")
        return has
    if has and not opts.overwrite:
        try:
            index = _read_index(out)
            step, max_iters = index.get("step"), (index.get("meta") or {}).get("options", {}).get("max_iters")
        except ValueError:
            step = max_iters = None
        at = f" (step {step}" + (f" of --max-iters {max_iters})" if max_iters is not None else ")") if step else ""
        raise CheckpointExists(f"train: {out} already holds a checkpoint{at}; add --resume to continue training it, "
                               f"or --overwrite to start over and replace it (or choose another --out DIR)",
                               step, max_iters)
    return False


def train_lm(opts: TrainOptions) -> dict:
    """Train (or resume) a GPT; returns the history (losses per step, val losses, timings).

    Under ``mpiexec`` (after ``distributed.init_process_group()``) every rank trains on its
    slice of each step's batch (``batch_size`` is the global batch) with averaged gradients;
    rank 0 alone prints, evaluates, saves and samples."""
    t_start = time.perf_counter()
    world, rank = dist.get_world_size(), dist.get_rank()
    if world > 1 and rank:
        opts = replace(opts, log=None)
    out = Path(opts.out) if opts.out else None
    resume = _check_out(opts, out)
    if resume:
        model = GPT.load(out)
        cfg = model.config
        tok = load_tokenizer(out / "tokenizer.json")
        meta = _read_meta(out)
        tok_rec = meta.get("tokenizer") or {"kind": "bpe" if isinstance(tok, BPETokenizer) else "byte",
                                            "vocab_size": tok.vocab_size}
        bad = _resume_conflicts(opts, cfg, tok_rec)
        if bad:
            raise ValueError(f"train: --resume continues the checkpoint in {out}, which has " + ", ".join(bad)
                             + "; drop these options to resume, or start a new run with --overwrite "
                               "(or another --out) to change them")
        text, source, data_rec = _resume_text(opts, out, meta.get("data"))
        kept = {k: v for k, v in (meta.get("options") or {}).items() if k in _RUN_OPTIONS and not opts.given(k)}
        opts = replace(opts, **kept)
    else:
        if opts.tokenizer == "byte" and opts.given("vocab_size"):
            raise ValueError(f"train: --vocab-size {opts.vocab_size} sets the size of a BPE vocabulary; the byte "
                             f"tokenizer always has 256 tokens (add --tokenizer bpe, or drop --vocab-size)")
        text, source, data_rec = _load_text(opts)
        if opts.tokenizer == "byte":
            tok = ByteTokenizer()
        else:
            t0 = time.perf_counter()
            tok = BPETokenizer.train(text, opts.vocab_size)
            _print(opts, f"trained BPE tokenizer: {tok.vocab_size} tokens in {time.perf_counter() - t0:.1f}s")
        tok_rec = {"kind": opts.tokenizer, "vocab_size": opts.vocab_size if opts.tokenizer == "bpe" else 256}
    if world > 1 and opts.batch_size % world:
        raise ValueError(f"train: batch_size ({opts.batch_size}) must be a multiple of the number of ranks "
                         f"({world}): each rank trains on batch_size / ranks rows of every batch")
    ids = np.asarray(tok.encode(text), dtype=np.int64)

    block_size = cfg.block_size if resume else opts.block_size
    # the last tenth (at least one window of block_size + 2 tokens) validates; the rest trains
    need = block_size + 2
    if len(ids) < 2 * need:
        raise ValueError(f"train: --block-size {block_size} is too large for this text: it has {len(ids)} tokens and "
                         f"needs at least 2 x (block_size + 2) = {2 * need} (one window to train on, one to "
                         f"validate); use more text or a smaller --block-size")
    if not resume:
        cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=opts.block_size, n_layer=opts.n_layer,
                        n_head=opts.n_head, n_embd=opts.n_embd, n_kv_head=opts.n_kv_head,
                        dropout=opts.dropout, pos=opts.pos)
        model = GPT(cfg, seed=opts.seed)
    n_val = max(len(ids) // 10, need)
    train_ids, val_ids = ids[:-n_val], ids[-n_val:]
    # nats/token -> bits/byte of the validation text: x tokens/byte / ln 2
    bpb = len(val_ids) / max(len(tok.decode_bytes(val_ids)), 1) / math.log(2)
    H = unigram_entropy(train_ids, tok.vocab_size)
    train_b = _Batches(train_ids, cfg.block_size, opts.batch_size, opts.seed)
    val_b = _Batches(val_ids, cfg.block_size, opts.batch_size, opts.seed)
    net = dist.DistributedDataParallel(model) if world > 1 else model
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if opts.zero and world > 1:
        opt = dist.ZeroRedundancyOptimizer(groups, optim.AdamW, lr=opts.lr, betas=(0.9, 0.95))
    else:
        opt = optim.AdamW(groups, lr=opts.lr, betas=(0.9, 0.95))
    sched = optim.CosineWarmupLR(opt, max(0, min(opts.warmup, opts.max_iters - 1)), max(opts.max_iters, 1),
                                 min_lr=opts.min_lr)
    step = 0
    hist = {"train_loss": [], "val_loss": [], "val_bpb": [], "unigram_entropy": H, "tokens": len(ids),
            "source": source, "checkpoint": None}
    if resume:
        info = model.restore(out, optimizer=opt)
        step = info["step"]
        sched.load_state_dict(info["meta"]["scheduler"])
        _print(opts, f"resumed from {out} at step {step}")
    _to_device(model, opt, opts.device)

    _print(opts, f"data: {source}: {len(ids):,} tokens ({tok.vocab_size} symbols), "
                 f"train {len(train_ids):,} / val {len(val_ids):,}")
    _print(opts, f"model: GPT {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, "
                 f"context {cfg.block_size}, {model.num_params(non_embedding=False):,} parameters; "
                 f"batch {opts.batch_size}, {opts.max_iters} steps")
    _print(opts, f"unigram entropy of the training tokens: {H:.3f} nats/token ({H / math.log(2):.3f} bits) "
                 f"- a model that learns context gets below this")

    def save(val=None):          # every rank calls it: gathering ZeRO-1's state is collective
        zero = out is not None and isinstance(opt, dist.ZeroRedundancyOptimizer)
        state = opt.state_dict() if zero else None
        if out is None or rank != 0:
            return
        if hist["checkpoint"] is None and not resume:     # the tokenizer goes with the first checkpoint
            out.mkdir(parents=True, exist_ok=True)
            tok.save(out / "tokenizer.json")
        _to_device(model, opt, "cpu")           # checkpoints hold host arrays (a no-op on the CPU)
        model.save(out, optimizer=_Saved(state) if zero else opt, step=step,
                   meta={"scheduler": sched.state_dict(), "val_loss": val, "unigram_entropy": H,
                         "data": data_rec, "tokenizer": tok_rec,
                         "options": {k: getattr(opts, k) for k in _RUN_OPTIONS}})
        _to_device(model, opt, opts.device)
        hist["checkpoint"] = step

    def validate():
        val = evaluate(model, val_b, opts.eval_iters, opts.seed)
        hist["val_loss"].append((step, val))
        hist["val_bpb"].append((step, val * bpb))
        return val

    stop = min(opts.max_iters, opts.stop_at) if opts.stop_at else opts.max_iters
    max_time = opts.max_time or None     # 0: no limit
    f = _stream(opts)
    tty = f is not None and hasattr(f, "isatty") and f.isatty()
    log_every = max(1, min(25, stop // 20))
    t0, tok_count, val = time.perf_counter(), 0, None
    first = step
    if step >= stop:
        _print(opts, f"nothing to train: at step {step} of --max-iters {opts.max_iters}"
                     + ("; raise --max-iters to train further" if resume else ""))
    model.train()
    while step < stop:
        x, y = train_b.get([opts.seed, step])
        if world > 1:       # this rank's rows of the step's batch: no two ranks see the same window
            b = opts.batch_size // world
            x, y = x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b]
        with autocast("bfloat16", enabled=opts.dtype == "bf16"):
            _, loss = net(x, y)
        opt.zero_grad()
        loss.backward()
        if opts.grad_clip:
            clip_grad_norm_(model.parameters(), opts.grad_clip)
        opt.step()
        sched.step()
        step += 1
        lv = float(loss.data)
        timed_out = max_time is not None and time.perf_counter() - t_start > max_time
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
        if step % opts.eval_interval == 0 or step == stop or timed_out:
            if rank == 0:
                val = validate()
                _print(opts, ("\n" if tty else "") + f"step {step:5d}: val loss {val:.4f} nats/token = "
                             f"{val * bpb:.4f} bits/byte (unigram entropy {H:.4f} nats/token)")
            save(val)
        if timed_out:
            _print(opts, f"stopping at step {step}: --max-time {max_time:g}s reached")
            break
    if step == first and not hist.get("diverged") and rank == 0:
        validate()                       # nothing trained: report where the model stands
    hist["step"] = step
    hist["seconds"] = time.perf_counter() - t_start
    hist["tokens_per_s"] = tok_count / max(time.perf_counter() - t0, 1e-9)
    if hist["val_loss"]:
        val = hist["val_loss"][-1][1]
        train = (f"final train loss {np.mean(hist['train_loss'][-10:]):.4f}, " if hist["train_loss"] else "")
        _print(opts, f"done: {step - first} steps in {_fmt_time(hist['seconds'])} (now at step {step}); {train}"
                     f"val loss {val:.4f} nats/token = {val * bpb:.4f} bits/byte; {_versus_entropy(val, H)}")
    if hist["checkpoint"] is not None:
        _print(opts, f"checkpoint: {out} (step {hist['checkpoint']})")
    elif out is not None:
        _print(opts, f"no checkpoint written" + (f"; {out} still holds step {first}" if resume else ""))
    _to_device(model, opt, "cpu")               # sampling runs on the CPU's decode kernels
    if opts.sample_tokens and rank == 0:
        prompt = tok.decode(val_ids[:min(32, cfg.block_size // 2)].tolist())
        given, new = prompt_and_continuation(model, tok, prompt, opts.sample_tokens, temperature=0.8, top_k=40,
                                             seed=opts.seed)
        hist["sample"] = given + new
        _print(opts, f"sample (temperature 0.8, top_k 40): a prompt from the validation text, then {PROMPT_END}, "
                     f"then the model's text\n" + "-" * 60 + f"\n{given}{PROMPT_END}{new}\n" + "-" * 60)
    return hist


def _to_device(model, opt, device):
    """Model parameters and the optimizer's state arrays to ``device`` ("cpu" or "cuda")."""
    from . import _xp
    if device == "cpu" and not _xp.cuda_used:
        return
    model.to(device)
    for st in getattr(opt, "state", {}).values():
        for k, v in st.items():
            if hasattr(v, "shape") and getattr(v, "ndim", 0):
                st[k] = _xp.to_device(v, device)


class _Saved:
    """An optimizer state already gathered, handed to ``model.save`` like an optimizer."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state


PROMPT_END = "[>>>]"   # marks where the sample's prompt ends and the model's text begins


def _versus_entropy(val: float, H: float) -> str:
    d = H - val
    if d > 0:
        return f"{d:.3f} below the unigram entropy {H:.4f}: the model uses context"
    return (f"{-d:.3f} above the unigram entropy {H:.4f}" if d < 0 else f"equal to the unigram entropy {H:.4f}") + \
        ": not yet better than a model that ignores context (train longer)"


def _read_meta(out: Path) -> dict:
    return _read_index(out).get("meta") or {}


def _generate(model, tok, prompt, n, temperature=0.8, top_k=None, top_p=None, seed=None):
    """(the prompt's ids as the model saw them, those ids followed by the n generated ones)."""
    ids = np.asarray(tok.encode(prompt), dtype=np.int64)
    if ids.size == 0:
        ids = np.asarray(tok.encode("\n"), dtype=np.int64)
    ids = ids[-model.config.block_size:]
    outids = model.generate(ids[None, :], n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    return ids, outids[0]


def sample(model, tok, prompt, n, temperature=0.8, top_k=None, top_p=None, seed=None) -> str:
    """The prompt followed by ``n`` tokens the model generates after it, decoded."""
    return tok.decode(_generate(model, tok, prompt, n, temperature, top_k, top_p, seed)[1].tolist())


def prompt_and_continuation(model, tok, prompt, n, temperature=0.8, top_k=None, top_p=None,
                             seed=None) -> tuple[str, str]:
    """(the prompt as the model saw it: its last block_size tokens, the ``n`` tokens the model
    generated after it), decoded; ``train``'s sample and ``generate`` print PROMPT_END between."""
    ids, outids = _generate(model, tok, prompt, n, temperature, top_k, top_p, seed)
    return tok.decode(ids.tolist()), tok.decode(outids[ids.size:].tolist())


def perplexity(model, ids, block_size: int | None = None, batch_size: int = 8, max_windows: int | None = None) -> float:
    """exp(mean next-token loss in nats) of ``model`` on the 1-D token ids ``ids``: the text is
    cut into consecutive windows of ``block_size`` (default the model's) + 1 tokens, each
    predicting its last ``block_size`` tokens from the ones before them inside the window; a
    last partial window is dropped. ``max_windows`` keeps only the first ones.

    >>> from fusegrad.models import GPT, GPTConfig
    >>> m = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=0)
    >>> 10 < perplexity(m, np.arange(40) % 16) < 22      # an untrained model: about the vocabulary size
    True
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    T = int(block_size or model.config.block_size)
    n = (len(ids) - 1) // T
    if max_windows is not None:
        n = min(n, int(max_windows))
    if n < 1:
        raise ValueError(f"perplexity: ids has {len(ids)} tokens, fewer than block_size + 1 = {T + 1}")
    off = np.arange(n)[:, None] * T + np.arange(T + 1)[None, :]
    w = ids[off]                                                          # (n, T + 1)
    was = model.training
    model.eval()
    tot = 0.0
    try:
        with no_grad():
            for i in range(0, n, batch_size):
                x = w[i:i + batch_size]
                tot += float(model(x[:, :-1], x[:, 1:])[1].data) * len(x)
    finally:
        model.train(was)
    return math.exp(tot / n)
