"""Command-line interface: ``python -m fusegrad <command>`` (also the ``fusegrad`` script).

Commands
  train     train a small GPT on the embedded corpus (or --data FILE); see ``train --help``
  generate  sample text from a trained checkpoint (``--checkpoint DIR --prompt "..."``)
  linefit   the line-fit demo: y = 100 + 20x by gradient descent on fusegrad's autograd
  info      print the build configuration (ISA path, threads, OpenMP, CUDA)
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from . import show_config

    show_config()
    return 0


def _cmd_linefit(args: argparse.Namespace) -> int:
    # The line-fit demo on fusegrad's own stack: full-batch gradient descent on y = 100 + 20x (forward, MSE loss, backward, SGD step,
    # zero_grad), then compares with the closed-form least-squares fit.
    import numpy as np

    from . import no_grad, optim, tensor
    from .models import LinearRegression
    from .nn import functional as F

    x = np.array([1, 2, 3, 4, 5], dtype=np.float32)
    y = np.array([118, 141, 162, 181, 198], dtype=np.float32)
    X, Y = tensor(x[:, None]), tensor(y)
    model = LinearRegression(1)
    opt = optim.SGD(model.parameters(), lr=args.lr)
    every = max(1, args.steps // 10)
    for step in range(1, args.steps + 1):
        loss = F.mse_loss(model(X), Y)      # forward + loss
        opt.zero_grad()
        loss.backward()                      # backward
        opt.step()                           # update
        if step == 1 or step % every == 0:
            print(f"step {step:5d}  mse {loss.item():12.4f}  b {model.bias.item():9.4f} w {model.weight.item():9.4f}")
        if not np.isfinite(loss.item()):
            print("the loss is not finite: lower --lr")
            return 1
    with no_grad():
        mse = F.mse_loss(model(X), Y).item()
    ls = LinearRegression(1).lstsq(x, y)
    print(f"fit: y = {model.bias.item():.2f} + {model.weight.item():.2f} x  (mse {mse:.2f}; "
          f"least squares: {ls.coef[0]:.2f} + {ls.coef[1]:.2f} x)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .lm import CheckpointExists, TrainOptions, train_lm

    # Train options left out on the command line are None here, so TrainOptions keeps its defaults
    # and knows which options the user typed (on --resume those must agree with the checkpoint).
    given = {k: v for k, v in vars(args).items()
             if k not in ("fn", "command", "threads", "argv") and v is not None and v is not False}
    try:
        opts = TrainOptions(**given, explicit=frozenset(given))
        from . import distributed as dist, set_num_threads
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            set_num_threads(args.threads)
        if dist.launcher_world_size() > 1 and not dist.is_initialized():     # under mpiexec
            dist.init_process_group()
            if args.threads is None:    # this machine's cores shared among its ranks
                set_num_threads(max(1, len(os.sched_getaffinity(0)) // dist.get_local_world_size()))
        hist = train_lm(opts)
    except (ValueError, OSError) as e:
        msg = f"fusegrad train: error: {e}"
        if isinstance(e, CheckpointExists):
            cmd = "python -m fusegrad " + " ".join(shlex.quote(a) for a in args.argv)
            more = f" --max-iters {2 * e.step}" if e.finished else ""   # the last --max-iters counts
            msg += f"\n  to continue it:  {cmd} --resume{more}\n  to replace it:   {cmd} --overwrite"
        print(msg, file=sys.stderr)
        from . import distributed as dist
        if dist.get_world_size() > 1:
            dist.abort(2)               # the other ranks may be waiting in a collective
        return 2
    return 1 if hist.get("diverged") else 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .lm import PROMPT_END, prompt_and_continuation
    from .models import GPT
    from .tokenizers import load_tokenizer

    d = Path(args.checkpoint)
    try:
        model = GPT.load(d)
        if args.weights_dtype == "bfloat16":
            model = model.to_inference("bfloat16")
        tok = load_tokenizer(d / "tokenizer.json")
        given, new = prompt_and_continuation(model, tok, args.prompt, args.max_new_tokens,
                                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                             seed=args.seed)
    except (ValueError, OSError, TypeError, RuntimeError) as e:
        print(f"fusegrad generate: error: {e}", file=sys.stderr)
        return 2
    print(given + ("" if args.no_mark else PROMPT_END) + new)
    # notes and timings on stderr: stdout stays the text
    if args.prompt and given != args.prompt:
        print(f"note: the prompt is longer than the model's context ({model.config.block_size} tokens); "
              f"it saw the part printed before the mark", file=sys.stderr)
    st = getattr(model, "generate_stats", None)
    if st:
        rate = lambda n, s: f"{n / s:,.1f} tok/s" if s > 0 and n else "-"  # noqa: E731
        print(f"prompt: {st['prompt_tokens']} tokens, {rate(st['prompt_tokens'], st['prompt_s'])}; "
              f"new: {st['new_tokens'] + 1} tokens, {rate(st['new_tokens'], st['decode_s'])} (after the first)",
              file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .lm import PROMPT_END, TrainOptions

    d = TrainOptions()
    p = argparse.ArgumentParser(prog="fusegrad", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("info", help="print the build configuration")
    sp.set_defaults(fn=_cmd_info)

    sp = sub.add_parser("train", help="train a small GPT on the embedded corpus or --data FILE",
                        description="Train a small GPT. Every option shows its default; options left out keep "
                                    "it (on --resume: the checkpoint's model, tokenizer and data).")

    def opt(g, flag, help="", shown=None, **kw):
        # default None: the option was not typed (TrainOptions then applies the default shown)
        dest = flag[2:].replace("-", "_")
        value = getattr(d, dest) if shown is None else shown
        g.add_argument(flag, default=None, help=f"{help} (default: {value})".lstrip(), **kw)

    g = sp.add_argument_group("data")
    opt(g, "--data", "UTF-8 text file", shown="the embedded corpus: Python stdlib sources")
    opt(g, "--max-bytes", "how much of the embedded corpus to use (not with --data)", type=int)
    opt(g, "--tokenizer", "byte: 256 byte values; bpe: byte-level BPE trained on the data",
        choices=["byte", "bpe"])
    opt(g, "--vocab-size", "BPE vocabulary size (with --tokenizer bpe)", type=int)
    g = sp.add_argument_group("model")
    opt(g, "--n-layer", "transformer blocks", type=int)
    opt(g, "--n-head", "attention heads", type=int)
    opt(g, "--n-kv-head", "fewer than --n-head: grouped-query attention", shown="--n-head", type=int)
    opt(g, "--n-embd", "width", type=int)
    opt(g, "--block-size", "context length in tokens", type=int)
    opt(g, "--pos", "position encoding", choices=["learned", "rope"])
    opt(g, "--dropout", type=float)
    opt(g, "--dtype", "bf16: matrix products with bfloat16 operands and float32 sums (fusegrad.autocast); "
                      "weights, optimizer and checkpoints stay float32", choices=["float32", "bf16"])
    opt(g, "--device", "cuda: train on the GPU (fusegrad.cuda.is_available())", choices=["cpu", "cuda"])
    g = sp.add_argument_group("optimization")
    opt(g, "--batch-size", type=int)
    opt(g, "--max-iters", "optimizer steps; the learning-rate schedule spans them", type=int)
    opt(g, "--max-time", "stop (evaluate, save, sample) after this many seconds; 0: no limit", type=float)
    opt(g, "--stop-at", "stop after this step, the schedule still spanning --max-iters", shown="--max-iters",
        type=int)
    opt(g, "--lr", "peak learning rate (AdamW)", type=float)
    opt(g, "--min-lr", "learning rate at the end of the cosine decay", type=float)
    opt(g, "--warmup", "linear warmup steps", type=int)
    opt(g, "--weight-decay", "on weight matrices", type=float)
    opt(g, "--grad-clip", "gradient norm clip; 0: off", type=float)
    opt(g, "--seed", "initialization and batch order", type=int)
    g.add_argument("--zero", action="store_true",
                   help="under mpiexec: shard the AdamW state across the ranks (ZeRO-1) (default: off)")
    g.add_argument("--threads", type=int, default=None,
                   help="kernel threads per process (default: all cores, shared among the ranks under mpiexec)")
    g = sp.add_argument_group("evaluation and output")
    opt(g, "--eval-interval", "validate and save a checkpoint every this many steps", type=int)
    opt(g, "--eval-iters", "validation batches per evaluation", type=int)
    opt(g, "--out", "checkpoint directory")
    g.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --out, on the data and tokenizer it recorded (default: off)")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run even if --out holds a checkpoint, replacing it (default: off, "
                        "an existing checkpoint is an error)")
    opt(g, "--sample-tokens", "tokens sampled at the end; 0: no sample", type=int)
    sp.set_defaults(fn=_cmd_train)

    sp = sub.add_parser("generate", help="sample from a checkpoint written by train")
    sp.add_argument("--checkpoint", required=True, help="directory written by train --out")
    sp.add_argument("--prompt", default="\n", help="text the sample continues (default: a newline)")
    sp.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    sp.add_argument("--temperature", type=float, default=0.8, help="0: greedy (default: 0.8)")
    sp.add_argument("--top-k", type=int, default=40, help="sample among the k most likely tokens (default: 40)")
    sp.add_argument("--top-p", type=float, default=None,
                    help="sample among the most likely tokens holding this probability (default: off)")
    sp.add_argument("--seed", type=int, default=None, help="(default: none, a different sample each run)")
    sp.add_argument("--no-mark", action="store_true",
                    help=f"print the prompt and the model's text without {PROMPT_END} between them "
                         f"(default: marked, so you see where the model's text begins)")
    sp.add_argument("--weights-dtype", choices=("float32", "bfloat16"), default="float32",
                    help="bfloat16: decode with the weight matrices rounded to bf16, half the bytes per token "
                         "(default: float32)")
    sp.set_defaults(fn=_cmd_generate)

    sp = sub.add_parser("linefit", help="line-fit demo: y = 100 + 20x by gradient descent")
    sp.add_argument("--steps", type=int, default=1000, help="gradient-descent steps (default: 1000)")
    sp.add_argument("--lr", type=float, default=0.05, help="learning rate (default: 0.05)")
    sp.set_defaults(fn=_cmd_linefit)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
