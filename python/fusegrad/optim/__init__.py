"""``fusegrad.optim``: SGD, Adam, AdamW (fused in-place update kernels where available) and
learning-rate schedulers (StepLR, cosine with linear warmup)."""
from __future__ import annotations

import math

import numpy as np

from .. import _kernels as K
from .. import _xp
from .._checks import is_int
from ..tensor import Tensor

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "LRScheduler", "StepLR", "CosineWarmupLR", "LambdaLR",
           "lr_scheduler"]


class Optimizer:
    def __init__(self, params, defaults):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.defaults = defaults
        self.param_groups = []
        seen = set()
        name = type(self).__name__
        for g in params:
            g = dict(g)
            g["params"] = list(g["params"])
            for p in g["params"]:
                # the fused step updates each array in place: a parameter listed twice would be
                # stepped twice; a non-leaf's update would be lost with the graph
                if not isinstance(p, Tensor):
                    raise TypeError(f"{name}: parameters must be fusegrad Tensors, got {type(p).__name__}")
                if not p.is_leaf:
                    raise ValueError(f"{name}: cannot optimize a non-leaf tensor (the result of an op)")
                if p.dtype.kind != "f":
                    raise TypeError(f"{name}: parameters must be floating point, got {p.dtype}")
                if id(p) in seen:
                    raise ValueError(f"{name}: a parameter appears more than once in the parameter list")
                seen.add(id(p))
            for k, v in defaults.items():
                g.setdefault(k, v)
            self.param_groups.append(g)
        self.state = {}

    def zero_grad(self, set_to_none: bool = True):
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.data[...] = 0

    def state_dict(self):
        ids = {}
        for g in self.param_groups:
            for p in g["params"]:
                ids.setdefault(id(p), len(ids))
        state = {ids[k]: {n: (np.array(v) if isinstance(v, np.ndarray) else v) for n, v in s.items()}
                 for k, s in self.state.items()}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [ids[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd):
        params = [p for g in self.param_groups for p in g["params"]]
        if len(sd["param_groups"]) != len(self.param_groups):
            raise ValueError("load_state_dict: number of parameter groups differs")
        for i, (g, sg) in enumerate(zip(self.param_groups, sd["param_groups"])):
            if len(sg["params"]) != len(g["params"]):
                # state is matched to parameters by position: another model's would land on the
                # wrong tensors (as in torch, this is an error)
                raise ValueError(f"load_state_dict: parameter group {i} holds {len(sg['params'])} parameters "
                                 f"in the saved state and {len(g['params'])} here (a different model?)")
        state = {}
        for i, st in sd["state"].items():
            i = int(i)
            if not 0 <= i < len(params):
                raise ValueError(f"load_state_dict: state for parameter {i}, but there are {len(params)}")
            p = params[i]
            for n, v in st.items():
                if isinstance(v, np.ndarray) and v.ndim and v.shape != p.shape:
                    raise ValueError(f"load_state_dict: state {n!r} of parameter {i} has shape {v.shape}, "
                                     f"the parameter {p.shape}")
            state[id(p)] = {n: (np.array(v) if isinstance(v, np.ndarray) else v) for n, v in st.items()}
        for g, sg in zip(self.param_groups, sd["param_groups"]):
            g.update({k: v for k, v in sg.items() if k != "params"})
        self.state = state

    def _with_grads(self):
        """(group, param array, grad array, state dict) for each parameter that has a gradient."""
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    w, gr = self._arrays(p)
                    yield g, w, gr, self.state.setdefault(id(p), {})

    @staticmethod
    def _arrays(p):
        if not p.data.flags.c_contiguous:
            raise ValueError("optimizer: parameter arrays must be C-contiguous")
        g = p.grad.data.astype(p.data.dtype, copy=False)
        if not g.flags.c_contiguous:
            g = g.copy()
        return p.data, g


class SGD(Optimizer):
    """SGD with momentum, dampening 0, nesterov and L2 weight decay (PyTorch's formulas)."""

    def __init__(self, params, lr=1e-3, momentum=0.0, weight_decay=0.0, nesterov=False):
        if not lr >= 0:                                     # NaN included
            raise ValueError(f"SGD: invalid learning rate {lr}")
        if not momentum >= 0:
            raise ValueError(f"SGD: invalid momentum {momentum}")
        if not weight_decay >= 0:
            raise ValueError(f"SGD: invalid weight_decay {weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov momentum requires a momentum > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))

    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                w, gr = self._arrays(p)
                st = self.state.setdefault(id(p), {})
                if "momentum_buffer" not in st:
                    # first step: PyTorch sets buf = grad (+wd*p); a zero buffer * momentum + g is identical
                    st["momentum_buffer"] = np.zeros_like(w)
                K.sgd_step(w, gr, st["momentum_buffer"], float(g["lr"]), float(g["momentum"]),
                           float(g["weight_decay"]), bool(g["nesterov"]))


class AdamW(Optimizer):
    """Adam with decoupled weight decay (PyTorch's AdamW), fused in-place update."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        if not (lr >= 0 and eps >= 0 and 0 <= betas[0] < 1 and 0 <= betas[1] < 1):     # NaN included
            raise ValueError(f"{type(self).__name__}: invalid hyperparameters lr={lr}, betas={betas}, eps={eps}")
        if not weight_decay >= 0:
            raise ValueError(f"{type(self).__name__}: invalid weight_decay {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _decay(self, w, gr, wd, lr):
        return gr, wd

    def step(self):
        for g, w, gr, st in self._with_grads():
            b1, b2 = g["betas"]
            if not st:
                st.update(step=0, exp_avg=np.zeros_like(w), exp_avg_sq=np.zeros_like(w))
            st["step"] += 1
            gr, wd = self._decay(w, gr, float(g["weight_decay"]), float(g["lr"]))
            K.adamw_step(w, gr, st["exp_avg"], st["exp_avg_sq"], int(st["step"]), float(g["lr"]),
                         float(b1), float(b2), float(g["eps"]), wd)


class Adam(AdamW):
    """Adam with L2 weight decay added to the gradient (PyTorch's Adam); default decay 0."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _decay(self, w, gr, wd, lr):
        return (_xp.contiguous(gr + wd * w) if wd else gr), 0.0


class LRScheduler:
    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def lr_at(self, base, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply(self):
        for g, b in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.lr_at(b, self.last_epoch)

    def step(self):
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, sd):
        self.last_epoch, self.base_lrs = sd["last_epoch"], list(sd["base_lrs"])
        self._apply()


class StepLR(LRScheduler):
    """lr = base * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        if not is_int(step_size) or step_size < 1:
            raise ValueError(f"StepLR: step_size must be a positive integer, got {step_size!r}")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def lr_at(self, base, t):
        return base * self.gamma ** (t // self.step_size)


class CosineWarmupLR(LRScheduler):
    """Linear warmup from 0 to base over ``warmup_steps``, then cosine decay to ``min_lr``
    at ``total_steps`` (constant ``min_lr`` afterwards)."""

    def __init__(self, optimizer, warmup_steps, total_steps, min_lr=0.0):
        if not warmup_steps >= 0:
            raise ValueError(f"CosineWarmupLR: warmup_steps must be >= 0, got {warmup_steps}")
        if total_steps <= warmup_steps:
            raise ValueError("CosineWarmupLR: total_steps must exceed warmup_steps")
        self.warmup_steps, self.total_steps, self.min_lr = warmup_steps, total_steps, min_lr
        super().__init__(optimizer)

    def lr_at(self, base, t):
        if t < self.warmup_steps:
            return base * (t + 1) / self.warmup_steps
        if t >= self.total_steps:
            return self.min_lr
        r = (t - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.min_lr + 0.5 * (base - self.min_lr) * (1 + math.cos(math.pi * r))


class LambdaLR(LRScheduler):
    def __init__(self, optimizer, lr_lambda):
        self.lr_lambda = lr_lambda
        super().__init__(optimizer)

    def lr_at(self, base, t):
        return base * self.lr_lambda(t)


class RMSprop(Optimizer):
    """RMSprop with PyTorch's formulas (NumPy update): v = alpha v + (1 - alpha) g^2; centered
    subtracts the squared running mean of g; step g / (sqrt(v) + eps), through a momentum
    buffer when momentum > 0; L2 weight decay is added to g."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        if not (lr >= 0 and eps >= 0 and 0 <= alpha <= 1 and momentum >= 0 and weight_decay >= 0):   # NaN included
            raise ValueError(f"RMSprop: invalid hyperparameters lr={lr}, alpha={alpha}, eps={eps}, "
                             f"momentum={momentum}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered))

    def step(self):
        for g, w, gr, st in self._with_grads():
            a, lr, eps, wd, mom = (float(g[k]) for k in ("alpha", "lr", "eps", "weight_decay", "momentum"))
            if not st:
                st.update(step=0, square_avg=np.zeros_like(w))
                if mom > 0:
                    st["momentum_buffer"] = np.zeros_like(w)
                if g["centered"]:
                    st["grad_avg"] = np.zeros_like(w)
            st["step"] += 1
            if wd:
                gr = gr + wd * w
            v = st["square_avg"]
            v *= a
            v += (1 - a) * gr * gr
            if g["centered"]:
                ga = st["grad_avg"]
                ga *= a
                ga += (1 - a) * gr
                avg = np.sqrt(v - ga * ga) + eps
            else:
                avg = np.sqrt(v) + eps
            if mom > 0:
                buf = st["momentum_buffer"]
                buf *= mom
                buf += gr / avg
                w -= lr * buf
            else:
                w -= lr * (gr / avg)


from . import lr_scheduler  # noqa: E402  (torch's layout: fusegrad.optim.lr_scheduler.CosineAnnealingLR)
