"""``fusegrad.models``: small reference models (linear regression, MLP) and the GPT language model."""
from .gpt import GPT, GPTConfig
from .linear import LinearRegression, LstsqResult
from .mlp import MLP

__all__ = ["LinearRegression", "LstsqResult", "MLP", "GPT", "GPTConfig"]
