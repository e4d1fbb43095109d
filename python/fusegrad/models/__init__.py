"""``fusegrad.models``: small reference models (linear regression, MLP)."""
from .linear import LinearRegression, LstsqResult
from .mlp import MLP

__all__ = ["LinearRegression", "LstsqResult", "MLP"]
