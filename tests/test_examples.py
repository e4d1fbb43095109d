"""The worked examples under examples/ reproduce the exact numbers of the lesson (float32
tolerances), run through fusegrad's Tensor, autograd, nn, optim and fit."""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest

EX = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    path = next(EX.glob(f"{name}_*.py"))
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_01_one_update():
    r = load("01").main()
    assert r["y_hat"] == pytest.approx(45) and r["loss"] == pytest.approx(25)
    assert r["dw"] == pytest.approx(-100) and r["db"] == pytest.approx(-10)
    assert r["w"] == pytest.approx(4.1, rel=1e-6) and r["b"] == pytest.approx(5.01, rel=1e-6)
    assert r["zeroed"] == (0.0, 0.0) and r["after_none"] == (None, None)


def test_02_perceptron():
    r = load("02").main()
    assert r["x10"] == pytest.approx(0.15, rel=1e-6)
    assert r["x01"] == pytest.approx(0.25, rel=1e-6)
    assert r["three"] == pytest.approx(1.15, rel=1e-6)
    np.testing.assert_allclose(r["layer"], [0.1, 0.3], rtol=1e-6)


def test_03_cross_entropy():
    r = load("03").main()
    assert r["confident_right"] == pytest.approx(-np.log(0.6), rel=1e-5)
    assert round(r["confident_right"], 3) == 0.511
    assert round(r["confident_wrong"], 3) == 2.996


def test_04_gradient_descent():
    r = load("04").main()
    assert r["scalar"] == pytest.approx(0.53, rel=1e-6)
    np.testing.assert_allclose(r["matrix"], [[0.15, 0.23], [0.32, 0.41]], rtol=1e-6)


@pytest.fixture(scope="module")
def line():
    return load("05").main()


def test_05_by_eye_and_closed_form(line):
    assert line["residuals"] == [-2, 1, 2, 1, -2]
    assert line["mse_line"] == pytest.approx(2.8) and line["mse_mean"] == pytest.approx(802.8)
    assert round(line["r2"], 4) == 0.9965
    np.testing.assert_allclose(line["closed_form"], [100, 20], rtol=1e-10)
    np.testing.assert_allclose(line["singular_values"], [7.69, 0.92], atol=0.005)
    assert "singular" in line["singular_error"]
    assert line["dup_rank"] == 2 and line["dup_cols"] == 3 and line["dup_mse"] == pytest.approx(2.8)
    assert round(line["no_intercept_slope"], 2) == 47.27 and round(line["no_intercept_mse"], 2) == 1820.98


def test_05_gradient_descent(line):
    np.testing.assert_allclose(line["first_grad"], [-320, -1040], rtol=1e-6)
    np.testing.assert_allclose(line["step1_w"], [16, 52], rtol=1e-6)
    assert line["step0_mse"] == pytest.approx(26402.8, rel=1e-6)
    assert line["step1_mse"] == pytest.approx(2194.8, rel=1e-5)
    assert round(line["gd100_mse"], 2) == pytest.approx(49.09, abs=0.011)
    np.testing.assert_allclose(line["gd100_w"], [84.05, 24.42], atol=0.006)
    assert line["gd1000_mse"] == pytest.approx(2.80, abs=0.005)
    np.testing.assert_allclose(line["gd1000_w"], [100, 20], atol=0.02)


def test_05_divergence_and_holdout(line):
    np.testing.assert_allclose(line["lr02_losses"], [26402.8, 349474.8, 4852473.8, 67584328.5, 941482657.6],
                               rtol=1e-6)
    assert line["lr02_diverged"] and "diverged" in line["lr02_message"]
    np.testing.assert_allclose(line["train4"], [98, 21], rtol=1e-10)
    assert line["pred5"] == pytest.approx(203) and line["test_se"] == pytest.approx(25)
    assert line["test_se_mean"] == pytest.approx(2256.25)


def test_fit_stops_on_nonfinite_loss():
    import fusegrad as fg
    import fusegrad.nn.functional as F
    from fusegrad.train import fit

    m = fg.nn.Linear(1, 1)
    X = fg.tensor(np.array([[np.nan]], dtype=np.float32))
    h = fit(m, F.mse_loss, fg.optim.SGD(m.parameters(), lr=0.1), [(X, fg.tensor([[1.0]]))], epochs=3,
            progress=False, verbose=False)
    assert h.diverged and "non-finite" in h.message and h.train_loss == []


class Terminal(io.StringIO):
    """A stand-in for a terminal: an in-memory stream that says it is a TTY."""

    def isatty(self):
        return True


def test_fit_takes_any_iterable_and_refuses_an_empty_or_spent_one(capsys, monkeypatch):
    import sys

    import fusegrad as fg
    import fusegrad.nn.functional as F
    from fusegrad.train import fit

    m = fg.nn.Linear(1, 1)
    opt = fg.optim.SGD(m.parameters(), lr=0.01)
    data = [(fg.tensor([[float(i)]]), fg.tensor([[2.0 * i]])) for i in range(4)]
    # an iterable without len() (a generator) trains, with a plain progress count on a terminal (without tqdm)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setattr(sys, "stderr", Terminal())
    h = fit(m, F.mse_loss, opt, (b for b in data), epochs=1, progress=True, verbose=True)
    assert len(h.train_loss) == 1 and h.step == 4
    assert "\repoch 1 4" in sys.stderr.getvalue()
    with pytest.raises(ValueError, match="fit: train_loader yielded no batches in epoch 1$"):
        fit(m, F.mse_loss, opt, [], epochs=1, progress=False, verbose=False)
    # a generator is spent after one epoch: the second would have reported a loss of 0
    with pytest.raises(ValueError, match="no batches in epoch 2 .*one-shot iterator"):
        fit(m, F.mse_loss, opt, (b for b in data), epochs=2, progress=False, verbose=False)


@pytest.mark.parametrize("name,says", [
    ("01", ["gradients: dJ/dw (weight) = -100, dJ/db (bias) = -10", "weight w = 4.1000 (was 4), bias b = 5.0100",
            "notice:"]),
    ("02", ["weights w = [0.1, 0.2], bias b = 0.05, input x = [1.0, 0.0] -> ReLU(w·x + b) = 0.1500", "notice:"]),
    ("03", ["given probability 0.6 (confident and right):  loss -log 0.6  = 0.511", "notice:"]),
    ("04", ["scalar: weight 0.5, gradient -0.3 -> after W - 0.1 * gradient: 0.53", "notice:"]),
    ("05", ["least squares: b (intercept) = 100.0000, w (slope) = 20.0000", "after 1000 steps: b = 100.00, w = 20.00",
            "fit on the first 4 points: b = 98.00, w = 21.00", "notice:"]),
])
def test_examples_name_what_they_print_and_what_to_notice(capsys, name, says):
    load(name).main()
    out = capsys.readouterr().out
    for s in says:
        assert s in out, s


def test_06_says_where_the_validation_loss_turns(capsys):
    pytest.importorskip("sklearn")
    r = load("06").main(epochs=30)
    out = capsys.readouterr().out
    h, best = r["history"], r["best_val_epoch"]
    assert h.val_loss[best - 1] == min(h.val_loss) and best < 30 and h.val_loss[-1] > h.val_loss[best - 1]
    assert f"notice: the validation loss was lowest at epoch {best} " in out


@pytest.mark.parametrize("name,module,needs", [("07", "torch", "pip install torch"),
                                               ("06", "sklearn", "pip install scikit-learn")])
def test_examples_say_what_to_install_instead_of_a_traceback(name, module, needs):
    import os
    import subprocess
    import sys

    path = next(EX.glob(f"{name}_*.py"))
    # the example runs as a script on an interpreter where `module` cannot be imported
    code = (f"import sys, runpy; sys.modules[{module!r}] = None; "
            f"runpy.run_path({str(path)!r}, run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and needs in r.stderr and "Traceback" not in r.stderr, r.stderr
