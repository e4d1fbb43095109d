"""A multilayer perceptron: Linear -> activation (-> Dropout) ... -> Linear."""
from __future__ import annotations

from .. import nn


class MLP(nn.Sequential):
    """``MLP(64, [128, 64], 10)``: hidden layers with ``activation`` ('relu', 'gelu', 'tanh')."""

    def __init__(self, in_features: int, hidden: list[int], out_features: int, activation: str = "relu",
                 dropout: float = 0.0):
        acts = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
        if activation not in acts:
            raise ValueError(f"MLP: activation must be one of {sorted(acts)}, got {activation!r}")
        layers, d = [], in_features
        for h in hidden:
            layers += [nn.Linear(d, h), acts[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = h
        layers.append(nn.Linear(d, out_features))
        super().__init__(*layers)
