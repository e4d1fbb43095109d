"""Command-line interface: ``python -m fusegrad <command>`` (also the ``fusegrad`` script).

Commands
  train     train a model on the embedded default data (see ``train --help``)
  info      print the build configuration (ISA path, threads, OpenMP, CUDA)
"""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from . import show_config

    show_config()
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    # Until the GPT trainer lands this runs the line-fit demo: full-batch gradient descent
    # on y = 100 + 20x with the fused MSE loss, five steps of learning per iteration.
    import numpy as np

    x = np.array([1, 2, 3, 4, 5], dtype=np.float64)
    y = np.array([118, 141, 162, 181, 198], dtype=np.float64)
    X = np.stack([np.ones_like(x), x], axis=1)
    w = np.zeros(2)
    for step in range(1, args.steps + 1):
        err = X @ w - y
        loss = float(np.mean(err**2))
        grad = 2.0 * X.T @ err / len(x)
        w -= args.lr * grad
        if step == 1 or step % max(1, args.steps // 10) == 0:
            print(f"step {step:5d}  mse {loss:12.4f}  w {w[0]:9.4f} b {w[1]:9.4f}")
    print(f"fit: y = {w[0]:.2f} + {w[1]:.2f} x")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusegrad", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("info", help="print the build configuration")
    sp.set_defaults(fn=_cmd_info)
    sp = sub.add_parser("train", help="train on the embedded default data")
    sp.add_argument("--steps", type=int, default=1000)
    sp.add_argument("--lr", type=float, default=0.05)
    sp.set_defaults(fn=_cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
