"""``fusegrad.nn``: modules, layers, losses, ``functional``, ``init`` and ``utils``."""
from . import functional, init, utils
from .modules import (GELU, CrossEntropyLoss, Dropout, Embedding, LayerNorm, Linear, Module, ModuleDict,
                      ModuleList, MSELoss, NLLLoss, Parameter, ReLU, Sequential, Sigmoid, Softmax, Tanh)

__all__ = ["functional", "init", "utils", "Module", "Parameter", "Linear", "ReLU", "GELU", "Sigmoid",
           "Tanh", "Softmax", "Sequential", "ModuleList", "ModuleDict", "LayerNorm", "Embedding", "Dropout",
           "MSELoss", "CrossEntropyLoss", "NLLLoss"]
