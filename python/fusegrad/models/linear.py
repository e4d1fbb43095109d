"""Linear regression two ways: closed-form least squares (``numpy.linalg.lstsq``, reporting
rank and singular values; or the normal equations, which fail loudly when singular) and
gradient descent with our autograd (the five steps of learning, visible).

>>> import numpy as np
>>> from fusegrad.models import LinearRegression
>>> m = LinearRegression().fit_closed_form(np.array([[1.], [2.], [3.]]), np.array([3., 5., 7.]))
>>> np.round(m.coef_, 6).tolist()
[1.0, 2.0]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..nn import Module, Parameter
from ..tensor import Tensor


@dataclass
class LstsqResult:
    coef: np.ndarray        # (p,) weights, intercept first when fit_intercept
    rank: int               # numerical rank of the design matrix
    singular_values: np.ndarray
    mse: float              # mean squared residual on the training data


class LinearRegression(Module):
    """``y = X @ w + b`` as a Module (``weight`` (1, p), ``bias`` (1,)) plus closed-form fits."""

    def __init__(self, in_features: int = 1, fit_intercept: bool = True, dtype=np.float32):
        super().__init__()
        self.fit_intercept = fit_intercept
        self.weight = Parameter(np.zeros((1, in_features), dtype=dtype))
        self.bias = Parameter(np.zeros(1, dtype=dtype)) if fit_intercept else None
        self.coef_ = None

    def forward(self, x):  # x: (N, p) -> (N,)
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(-1)

    def design(self, X):
        X = np.asarray(X, dtype=np.float64)
        X = X[:, None] if X.ndim == 1 else X
        return np.hstack([np.ones((len(X), 1)), X]) if self.fit_intercept else X

    def lstsq(self, X, y) -> LstsqResult:
        """Least squares through SVD: works for rank-deficient designs (minimum-norm solution)."""
        A, y = self.design(X), np.asarray(y, dtype=np.float64)
        coef, _, rank, sv = np.linalg.lstsq(A, y, rcond=None)
        return LstsqResult(coef, int(rank), sv, float(np.mean((A @ coef - y) ** 2)))

    def normal_equations(self, X, y) -> np.ndarray:
        """Solve (AᵀA) w = Aᵀy; raises ValueError when AᵀA is singular (collinear columns)."""
        A, y = self.design(X), np.asarray(y, dtype=np.float64)
        AtA = A.T @ A
        r = np.linalg.matrix_rank(AtA)
        if r < AtA.shape[0]:
            raise ValueError(f"normal equations are singular: AᵀA has rank {r} < {AtA.shape[0]} columns "
                             "(collinear features); use lstsq() instead")
        return np.linalg.solve(AtA, A.T @ y)

    def fit_closed_form(self, X, y):
        res = self.lstsq(X, y)
        self.coef_, self.rank_, self.singular_values_ = res.coef, res.rank, res.singular_values
        c = res.coef
        if self.fit_intercept:
            self.bias.data[...] = c[0]
            c = c[1:]
        if self.weight.shape[1] != len(c):
            self.weight = Parameter(np.zeros((1, len(c)), dtype=self.weight.dtype))
        self.weight.data[...] = c
        return self

    def predict(self, X):
        return self.design(X) @ self.coef_


def r2_score(y, pred) -> float:
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    return 1.0 - float(np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def as_tensor(x, dtype=np.float32) -> Tensor:
    return Tensor(np.asarray(x, dtype=dtype))
