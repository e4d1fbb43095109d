"""``fusegrad.train.fit``: training mode while it learns and evaluation mode while it validates
(dropout on, then off), each module's mode restored afterwards; progress as a bar on a terminal
and one plain line per epoch in a log file."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest

import fusegrad as fg
import fusegrad.nn.functional as F
from fusegrad.train import fit


class Terminal(io.StringIO):
    """An in-memory stream that says it is a TTY."""

    def isatty(self):
        return True


def _model_and_data():
    fg.nn.init.manual_seed(0)
    model = fg.nn.Sequential(fg.nn.Linear(8, 64), fg.nn.Dropout(0.5), fg.nn.Linear(64, 1))
    x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    data = [(fg.tensor(x[i:i + 4]), fg.tensor(x[i:i + 4, :1])) for i in range(0, 16, 4)]
    return model, data


@pytest.mark.parametrize("start", ["eval", "train"])
def test_fit_trains_with_dropout_on_and_validates_with_it_off(start):
    model, data = _model_and_data()
    getattr(model, start)()                          # the mode the caller left the model in
    seen = []

    def loss_fn(out, y):
        h = model[1](model[0](data[0][0]))           # the dropout layer's output, in the current mode
        seen.append((model.training, model[1].training, float((h.data == 0).mean())))
        return F.mse_loss(out, y)

    fit(model, loss_fn, fg.optim.SGD(model.parameters(), lr=1e-3), data, epochs=2, val_loader=data[:1],
        progress=False, verbose=False)
    # per epoch: 4 training batches, then 1 validation batch
    train = [s for i, s in enumerate(seen) if i % 5 != 4]
    val = [s for i, s in enumerate(seen) if i % 5 == 4]
    assert len(train) == 8 and len(val) == 2
    assert all(t and d for t, d, _ in train) and all(not t and not d for t, d, _ in val)
    # dropout(0.5) zeroes about half the hidden units while training and none while validating
    assert all(z > 0.3 for *_, z in train) and all(z == pytest.approx(np.mean(model[0](data[0][0]).data == 0))
                                                   for *_, z in val)
    assert model.training == (start == "train") and model[1].training == (start == "train")


def test_fit_restores_each_modules_own_mode():
    model, data = _model_and_data()
    model.train()
    model[1].eval()                                  # a caller's frozen layer stays as it was
    fit(model, F.mse_loss, fg.optim.SGD(model.parameters(), lr=1e-3), data, epochs=1, val_loader=data,
        progress=False, verbose=False)
    assert model.training and model[0].training and not model[1].training


def test_fit_logs_one_plain_line_per_epoch_when_output_is_not_a_terminal(capsys):
    model, data = _model_and_data()
    fit(model, F.mse_loss, fg.optim.SGD(model.parameters(), lr=1e-3), data, epochs=6, val_loader=data,
        log_every=5, progress=True)
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert [ln.split()[1] for ln in lines] == [f"{e}/6" for e in range(1, 7)]   # every epoch, not every 5th
    assert all("train" in ln and "val" in ln for ln in lines)
    assert "\r" not in cap.out + cap.err


def test_fit_draws_a_progress_bar_on_a_terminal(monkeypatch, capsys):
    model, data = _model_and_data()
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)       # the plain fallback (tqdm not installed)
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(sys, "stdout", Terminal())
    fit(model, F.mse_loss, fg.optim.SGD(model.parameters(), lr=1e-3), data, epochs=6, log_every=5)
    assert "\repoch 1 4/4" in sys.stderr.getvalue() and "\repoch 6 4/4" in sys.stderr.getvalue()
    out = sys.stdout.getvalue().splitlines()
    assert [ln.split()[1] for ln in out] == ["5/6", "6/6"]                      # log_every on a terminal


def test_fit_progress_uses_tqdm_when_installed(monkeypatch):
    pytest.importorskip("tqdm")
    model, data = _model_and_data()
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(sys, "stdout", Terminal())
    fit(model, F.mse_loss, fg.optim.SGD(model.parameters(), lr=1e-3), data, epochs=1)
    assert "epoch 1:   0%|" in sys.stderr.getvalue()                               # tqdm's bar
