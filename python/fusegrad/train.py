"""``fusegrad.train.fit``: a small training loop — forward, loss, backward, step, zero_grad —
with a progress bar on a terminal (tqdm when installed: ``pip install tqdm``, else a plain
counter) and one plain line per epoch when the output goes to a file or pipe (no ``\r`` runs in
logs), per-epoch train/validation loss, an early stop when the loss is non-finite or diverging,
optional crash-safe checkpoints (``checkpoint_dir``), and an optional loss-curve PNG
(matplotlib when installed). As in a PyTorch loop, the model is in training mode
(``model.train()``: dropout on) while it learns and in evaluation mode (``model.eval()``) while
it is validated; ``fit`` leaves each module in the mode it found it in.

A non-finite loss (or a non-finite parameter after a step) stops training at once with a
message naming the epoch and step; nothing is saved from that point on, so the last checkpoint
on disk keeps the last good weights instead of being overwritten with NaN."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .tensor import no_grad


@dataclass
class History:
    train_loss: list = field(default_factory=list)   # mean loss per epoch (before each step)
    val_loss: list = field(default_factory=list)
    diverged: bool = False
    message: str = ""
    step: int = 0                                    # optimizer steps taken
    checkpoint_step: int | None = None               # step of the last checkpoint written


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False


def _bar(it, total, desc):
    """A progress bar over ``it`` on the terminal (stderr): tqdm when installed, else a counter."""
    try:
        from tqdm.auto import tqdm
        return tqdm(it, total=total, desc=desc, leave=False)
    except ImportError:
        pass

    def plain():
        i = 0
        for i, x in enumerate(it, 1):
            if total is None:                  # an iterable without len(): a count only
                if i & (i - 1) == 0:
                    print(f"\r{desc} {i}", end="", file=sys.stderr, flush=True)
            elif i == total or i % max(1, total // 10) == 0:
                print(f"\r{desc} {i}/{total}", end="", file=sys.stderr, flush=True)
            yield x
        print("\r\033[K", end="", file=sys.stderr, flush=True)   # clear the line, as tqdm(leave=False)
    return plain()


def evaluate(model, loss_fn, loader):
    """Mean loss over ``loader`` in evaluation mode (dropout off), without gradients; the
    modules' training flags are restored afterwards."""
    modes = _modes(model)
    model.eval()
    tot, n = 0.0, 0
    try:
        with no_grad():
            for xb, yb in loader:
                tot += float(loss_fn(model(xb), yb).item()) * len(xb)
                n += len(xb)
    finally:
        _restore(modes)
    return tot / max(n, 1)


def _modes(model):
    return [(m, m.training) for m in model.modules()] if hasattr(model, "modules") else []


def _restore(modes):
    for m, mode in modes:
        object.__setattr__(m, "training", mode)


def _non_finite_param(model):
    for name, p in model.named_parameters():
        if not np.all(np.isfinite(p.data)):
            return name
    return None


def _save(model, optimizer, directory, step, epoch, loss):
    from .checkpoint import save_checkpoint
    state = {k: np.asarray(v.data if hasattr(v, "data") else v) for k, v in model.state_dict().items()}
    save_checkpoint(directory, state, optimizer=optimizer.state_dict(), step=step,
                    meta={"epoch": epoch, "train_loss": loss})


def fit(model, loss_fn, optimizer, train_loader, epochs=1, val_loader=None, scheduler=None,
        progress=True, log_every=1, plot=None, divergence_patience=5, divergence_factor=100.0,
        verbose=True, checkpoint_dir=None, checkpoint_every=1):
    """Train ``model`` for ``epochs`` over ``train_loader`` (any iterable of (x, y) batches).

    The model trains in training mode (``model.train()``) and is validated in evaluation mode
    (``model.eval()``); afterwards every module is back in the mode it had before ``fit``.
    ``progress``: on a terminal a progress bar per epoch (tqdm if installed); when stdout is
    not a terminal, one plain line per epoch instead (``log_every`` then applies to terminals).

    Stops early when a loss is NaN/inf, or when it rose ``divergence_patience`` epochs in a row
    to more than ``divergence_factor`` times the first epoch's loss (``History.diverged``).
    With ``checkpoint_dir``, saves the model and optimizer there (``fusegrad.checkpoint``,
    crash-safe) every ``checkpoint_every`` epochs and at the end, only while every loss and
    parameter is finite: a run that blows up leaves the last good checkpoint in place.
    """
    h = History()

    def stop(epoch, what):
        h.diverged = True
        kept = (f"; the last good checkpoint (step {h.checkpoint_step}) in {checkpoint_dir} was kept"
                if h.checkpoint_step is not None else "")
        h.message = (f"stopped at epoch {epoch}, step {h.step + 1}: {what}{kept}; "
                     "lower the learning rate or check the inputs")

    modes = _modes(model)
    bar = progress and verbose and _isatty(sys.stderr)
    per_epoch = progress and verbose and not _isatty(sys.stdout)    # a log file: one line per epoch
    try:
        for epoch in range(1, epochs + 1):
            t0, tot, n = time.perf_counter(), 0.0, 0
            total = len(train_loader) if hasattr(train_loader, "__len__") else None
            model.train()                              # dropout on while learning
            for xb, yb in (_bar(train_loader, total, f"epoch {epoch}") if bar else train_loader):
                loss = loss_fn(model(xb), yb)          # 1. forward  2. loss
                lv = float(loss.item())
                if not math.isfinite(lv):
                    stop(epoch, f"the loss is {lv} (non-finite)")
                    break
                optimizer.zero_grad()                  # 5. zero the gradients (before accumulating)
                loss.backward()                        # 3. backward
                optimizer.step()                       # 4. update
                if checkpoint_dir is not None and (bad := _non_finite_param(model)) is not None:
                    stop(epoch, f"parameter {bad!r} became non-finite in the update (loss {lv:.6g})")
                    break
                h.step += 1
                tot += lv * len(xb)
                n += len(xb)
            if h.diverged:
                break
            if n == 0:
                # a loss of 0 / 0 would be reported as 0; a generator is also empty after one epoch
                again = (" (a one-shot iterator is spent after one epoch: pass a DataLoader or a list)"
                         if epoch > 1 else "")
                raise ValueError(f"fit: train_loader yielded no batches in epoch {epoch}{again}")
            if checkpoint_dir is not None and (epoch % checkpoint_every == 0 or epoch == epochs):
                _save(model, optimizer, checkpoint_dir, h.step, epoch, tot / max(n, 1))
                h.checkpoint_step = h.step
            h.train_loss.append(tot / max(n, 1))
            if scheduler is not None:
                scheduler.step()
            if val_loader is not None:
                h.val_loss.append(evaluate(model, loss_fn, val_loader))   # in eval mode
            if verbose and (per_epoch or epoch % log_every == 0 or epoch == epochs):
                v = f"  val {h.val_loss[-1]:.6g}" if h.val_loss else ""
                took = f"  ({time.perf_counter() - t0:.2f}s, {h.step} steps)" if per_epoch else ""
                print(f"epoch {epoch:4d}/{epochs}  train {h.train_loss[-1]:.6g}{v}{took}", flush=True)
            L, p = h.train_loss, divergence_patience
            if len(L) >= p and all(L[-i] > L[-i - 1] for i in range(1, p)) and L[-1] > divergence_factor * L[0]:
                h.diverged = True
                h.message = (f"stopped at epoch {epoch}: the loss diverged, rising {p} epochs in a row to "
                             f"{L[-1]:.6g} (first epoch {L[0]:.6g}); lower the learning rate")
                break
    finally:
        _restore(modes)                                # each module back in the caller's mode
    if h.diverged and verbose:
        print(h.message)
    if plot:
        save_loss_curve(h, plot)
    return h


def save_loss_curve(history: History, path: str) -> bool:
    """Write the loss curve to ``path`` (PNG); returns False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(np.arange(1, len(history.train_loss) + 1), history.train_loss, label="train")
    if history.val_loss:
        ax.plot(np.arange(1, len(history.val_loss) + 1), history.val_loss, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
