"""``fusegrad.nn``: modules, layers, losses, ``functional``, ``init`` and ``utils``."""
from . import functional, init, utils
from .modules import (GELU, BCEWithLogitsLoss, CrossEntropyLoss, Dropout, Embedding, Flatten, Identity, L1Loss,
                      LayerNorm, LeakyReLU, Linear, Module, ModuleDict, ModuleList, MSELoss, NLLLoss, Parameter,
                      ReLU, RMSNorm, Sequential, SiLU, Sigmoid, Softmax, Tanh)

__all__ = ["functional", "init", "utils", "Module", "Parameter", "Linear", "Identity", "Flatten", "ReLU", "GELU",
           "SiLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Sequential", "ModuleList", "ModuleDict", "LayerNorm",
           "RMSNorm", "Embedding", "Dropout", "MSELoss", "L1Loss", "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss"]
