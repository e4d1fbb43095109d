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
    from .lm import TrainOptions, train_lm

    try:
        opts = TrainOptions(**{k: v for k, v in vars(args).items() if k not in ("fn", "command", "threads")})
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
        print(f"fusegrad train: error: {e}", file=sys.stderr)
        from . import distributed as dist
        if dist.get_world_size() > 1:
            dist.abort(2)               # the other ranks may be waiting in a collective
        return 2
    return 1 if hist.get("diverged") else 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .lm import sample
    from .models import GPT
    from .tokenizers import load_tokenizer

    d = Path(args.checkpoint)
    try:
        model = GPT.load(d)
        tok = load_tokenizer(d / "tokenizer.json")
        text = sample(model, tok, args.prompt, args.max_new_tokens, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except (ValueError, OSError, TypeError, RuntimeError) as e:
        print(f"fusegrad generate: error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .lm import TrainOptions

    d = TrainOptions()
    p = argparse.ArgumentParser(prog="fusegrad", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("info", help="print the build configuration")
    sp.set_defaults(fn=_cmd_info)

    sp = sub.add_parser("train", help="train a small GPT on the embedded corpus or --data FILE",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = sp.add_argument_group("data")
    g.add_argument("--data", default=None, help="UTF-8 text file (default: the embedded stdlib-source corpus)")
    g.add_argument("--max-bytes", type=int, default=d.max_bytes, help="size of the embedded corpus selection")
    g.add_argument("--tokenizer", choices=["byte", "bpe"], default=d.tokenizer)
    g.add_argument("--vocab-size", type=int, default=d.vocab_size, help="BPE vocabulary size")
    g = sp.add_argument_group("model")
    g.add_argument("--n-layer", type=int, default=d.n_layer)
    g.add_argument("--n-head", type=int, default=d.n_head)
    g.add_argument("--n-kv-head", type=int, default=None, help="fewer than --n-head: grouped-query attention")
    g.add_argument("--n-embd", type=int, default=d.n_embd)
    g.add_argument("--block-size", type=int, default=d.block_size, help="context length")
    g.add_argument("--pos", choices=["learned", "rope"], default=d.pos)
    g.add_argument("--dropout", type=float, default=d.dropout)
    g = sp.add_argument_group("optimization")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--max-iters", type=int, default=d.max_iters)
    g.add_argument("--max-time", type=float, default=d.max_time, help="stop after this many seconds")
    g.add_argument("--stop-at", type=int, default=None, help="stop after this step (schedule spans --max-iters)")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--min-lr", type=float, default=d.min_lr)
    g.add_argument("--warmup", type=int, default=d.warmup)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--grad-clip", type=float, default=d.grad_clip)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--threads", type=int, default=None, help="kernel threads per process (default: all cores, shared among the ranks under mpiexec)")
    g = sp.add_argument_group("evaluation and output")
    g.add_argument("--eval-interval", type=int, default=d.eval_interval)
    g.add_argument("--eval-iters", type=int, default=d.eval_iters)
    g.add_argument("--out", default=d.out, help="checkpoint directory")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    g.add_argument("--sample-tokens", type=int, default=d.sample_tokens, help="tokens sampled at the end")
    sp.set_defaults(fn=_cmd_train)

    sp = sub.add_parser("generate", help="sample from a checkpoint written by train")
    sp.add_argument("--checkpoint", required=True, help="directory written by train --out")
    sp.add_argument("--prompt", default="\n")
    sp.add_argument("--max-new-tokens", type=int, default=200)
    sp.add_argument("--temperature", type=float, default=0.8)
    sp.add_argument("--top-k", type=int, default=40)
    sp.add_argument("--top-p", type=float, default=None)
    sp.add_argument("--seed", type=int, default=None)
    sp.set_defaults(fn=_cmd_generate)

    sp = sub.add_parser("linefit", help="line-fit demo: y = 100 + 20x by gradient descent")
    sp.add_argument("--steps", type=int, default=1000)
    sp.add_argument("--lr", type=float, default=0.05)
    sp.set_defaults(fn=_cmd_linefit)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
