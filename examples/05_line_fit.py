"""Fit a line y = b + w x to five points: by eye, in closed form (least squares) and by gradient
descent with fusegrad's autograd — and watch a too-large learning rate diverge.
Run: python examples/05_line_fit.py

Every fit is printed as b (the intercept, the bias) and w (the slope, the weight). Notice:
gradient descent at lr 0.05 is still far from least squares' b = 100, w = 20 after 100 steps
and matches it after 1000; at lr 0.2 each step overshoots and the loss grows about 14x per step
until fit stops it; and the line fitted on four points predicts the fifth 90x better than
their mean does.
"""
import numpy as np

import fusegrad as fg
import fusegrad.nn.functional as F
from fusegrad.models import LinearRegression
from fusegrad.models.linear import r2_score
from fusegrad.train import fit

x = np.array([1, 2, 3, 4, 5], dtype=np.float64)
y = np.array([118, 141, 162, 181, 198], dtype=np.float64)


def gradient_descent(lr, steps, verbose=False):
    """Full-batch GD from [0, 0] on the MSE; returns the model, the first gradient and the history."""
    model = LinearRegression(1)
    opt = fg.optim.SGD(model.parameters(), lr=lr)
    X, Y = fg.tensor(x[:, None].astype(np.float32)), fg.tensor(y.astype(np.float32))
    loss = F.mse_loss(model(X), Y)
    loss.backward()
    first_grad = [model.bias.grad.item(), model.weight.grad.item()]
    model.zero_grad()
    hist = fit(model, F.mse_loss, opt, [(X, Y)], epochs=steps, progress=False, verbose=verbose)
    with fg.no_grad():
        mse = F.mse_loss(model(X), Y).item()
    return model, first_grad, hist, mse


def main():
    res = {}
    # by eye: y = 100 + 20x
    pred = 100 + 20 * x
    res["residuals"] = (y - pred).tolist()
    res["mse_line"] = float(np.mean((y - pred) ** 2))
    res["mse_mean"] = float(np.mean((y - y.mean()) ** 2))
    res["r2"] = r2_score(y, pred)
    print(f"y = 100 + 20x: residuals {res['residuals']}, MSE {res['mse_line']:.1f}; "
          f"mean baseline MSE {res['mse_mean']:.1f}; R² {res['r2']:.4f}")

    # closed form
    lr_model = LinearRegression(1)
    ls = lr_model.lstsq(x, y)
    res["closed_form"], res["singular_values"] = ls.coef.tolist(), ls.singular_values.tolist()
    print(f"least squares: b (intercept) = {ls.coef[0]:.4f}, w (slope) = {ls.coef[1]:.4f}; singular values of "
          f"[1 x] {np.round(ls.singular_values, 2).tolist()}")
    X2 = np.stack([x, 2 * x], axis=1)
    try:
        lr_model.normal_equations(X2, y)
        res["singular_error"] = None
    except ValueError as e:
        res["singular_error"] = str(e)
        print(f"with a duplicate column 2x: {e}")
    ls2 = lr_model.lstsq(X2, y)
    res["dup_rank"], res["dup_cols"], res["dup_mse"] = ls2.rank, X2.shape[1] + 1, ls2.mse
    print(f"  least squares still works: rank {ls2.rank} of {X2.shape[1] + 1} columns, MSE {ls2.mse:.2f}")
    ls3 = LinearRegression(1, fit_intercept=False).lstsq(x, y)
    res["no_intercept_slope"], res["no_intercept_mse"] = float(ls3.coef[0]), ls3.mse
    print(f"without an intercept: slope {ls3.coef[0]:.2f}, MSE {ls3.mse:.2f}")

    # gradient descent with autograd
    m1, g1, h1, mse1 = gradient_descent(0.05, 1)
    res["first_grad"] = g1
    res["step1_w"] = [m1.bias.item(), m1.weight.item()]
    res["step1_mse"], res["step0_mse"] = mse1, h1.train_loss[0]
    print(f"GD lr 0.05 from b = w = 0: first gradient dMSE/db = {g1[0]:.2f}, dMSE/dw = {g1[1]:.2f}; after one "
          f"step b = {res['step1_w'][0]:.2f}, w = {res['step1_w'][1]:.2f}; MSE {h1.train_loss[0]:.1f} -> {mse1:.1f}")
    for steps in (100, 1000):
        m, _, _, mse = gradient_descent(0.05, steps)
        res[f"gd{steps}_w"], res[f"gd{steps}_mse"] = [m.bias.item(), m.weight.item()], mse
        print(f"  after {steps} steps: b = {m.bias.item():.2f}, w = {m.weight.item():.2f}, MSE {mse:.2f}")
    _, _, hd, _ = gradient_descent(0.2, 100)
    res["lr02_losses"], res["lr02_diverged"], res["lr02_message"] = hd.train_loss, hd.diverged, hd.message
    print(f"GD lr 0.2: MSE per step {np.round(hd.train_loss, 1).tolist()}\n  {hd.message}")

    # train on the first four points, test on the fifth
    ls4 = LinearRegression(1).lstsq(x[:4], y[:4])
    pred5 = float(ls4.coef[0] + ls4.coef[1] * 5)
    res["train4"], res["pred5"] = ls4.coef.tolist(), pred5
    res["test_se"], res["test_se_mean"] = (y[4] - pred5) ** 2, (y[4] - y[:4].mean()) ** 2
    print(f"fit on the first 4 points: b = {ls4.coef[0]:.2f}, w = {ls4.coef[1]:.2f}; predicts {pred5:.0f} for x = 5 "
          f"(true {y[4]:.0f}: squared error {res['test_se']:.0f}; predicting their mean: {res['test_se_mean']:.2f})")
    print("notice: lr 0.05 needs ~1000 steps to reach least squares' b = 100, w = 20; lr 0.2 overshoots and "
          "diverges; the held-out point is predicted 90x better than by the mean")
    return res


if __name__ == "__main__":
    main()
