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
    # Until the GPT trainer lands this runs the line-fit demo on fusegrad's own stack:
    # full-batch gradient descent on y = 100 + 20x (forward, MSE loss, backward, SGD step,
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
