"""Small GPTs written in plain PyTorch, for tests/test_torch_adapter.py and bench/bench_torch_model.py.

``GPT``: every op that fusegrad.torch replaces is called through the namespace ``F`` given to the
model, so the same model runs on PyTorch's ops (``F=torch.nn.functional``, the default) or on
fusegrad's (``F=fusegrad.torch``): the swap is one argument.

``NanoGPT``: an unmodified nanoGPT-style model (``nn.Linear``, ``nn.GELU()`` (erf), a LayerNorm
module calling ``F.layer_norm``, ``F.scaled_dot_product_attention``, ``F.cross_entropy``), for the
one-call swap ``fusegrad.torch.optimize(model)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as TF


@dataclass
class GPTConfig:
    vocab_size: int = 67      # odd on purpose: no tile size divides it
    block_size: int = 33      # longest sequence
    n_layer: int = 2
    n_head: int = 3
    n_embd: int = 48          # head dim 16


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, F):
        super().__init__()
        self.F, self.n_head = F, cfg.n_head
        C = cfg.n_embd
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.fc_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):  # x: (B, T, C)
        F, B, T, C = self.F, *x.shape
        h = F.layer_norm(x, (C,), self.ln_1.weight, self.ln_1.bias)
        q, k, v = F.linear(h, self.attn.weight, self.attn.bias).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, self.attn_proj.weight, self.attn_proj.bias)
        h = F.layer_norm(x, (C,), self.ln_2.weight, self.ln_2.bias)
        h = F.gelu(F.linear(h, self.fc.weight, self.fc.bias), approximate="tanh")
        return x + F.linear(h, self.fc_proj.weight, self.fc_proj.bias)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, F=TF):
        super().__init__()
        self.cfg, self.F = cfg, F
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, F) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        for m in self.modules():  # GPT-2 init
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, idx, targets):  # idx, targets: (B, T) int64
        F, (B, T) = self.F, idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        x = F.layer_norm(x, (self.cfg.n_embd,), self.ln_f.weight, self.ln_f.bias)
        logits = F.linear(x, self.wte.weight)  # tied output head: (B, T, V)
        return F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))


class _LayerNorm(nn.Module):
    """nanoGPT's LayerNorm: a module of its own that calls F.layer_norm."""

    def __init__(self, C):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(C)), nn.Parameter(torch.zeros(C))

    def forward(self, x):
        return TF.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class _NanoBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        C, self.n_head = cfg.n_embd, cfg.n_head
        self.ln_1, self.ln_2 = _LayerNorm(C), _LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C))

    def forward(self, x):  # x: (B, T, C)
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = TF.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList(_NanoBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = _LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied
        for m in self.modules():  # GPT-2 init
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx, targets):  # idx, targets: (B, T) int64
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return TF.cross_entropy(logits.view(B * T, -1), targets.view(B * T), ignore_index=-1)


def batches(cfg: GPTConfig, B: int, steps: int, seed: int = 0):
    """Deterministic (idx, targets) batches of a learnable sequence: next token = (3 * token + 1) % V, with noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x0 = torch.randint(0, cfg.vocab_size, (B, 1), generator=g)
        seq = [x0]
        for _ in range(cfg.block_size):
            nxt = (3 * seq[-1] + 1) % cfg.vocab_size
            noise = torch.rand(B, 1, generator=g) < 0.1
            seq.append(torch.where(noise, torch.randint(0, cfg.vocab_size, (B, 1), generator=g), nxt))
        s = torch.cat(seq, dim=1)
        out.append((s[:, :-1].contiguous(), s[:, 1:].contiguous()))
    return out


def train(F, optim_cls, cfg: GPTConfig, B: int = 4, steps: int = 20, dtype=torch.float32, lr: float = 3e-3,
          seed: int = 0, model_fn=None):
    """Train a fresh GPT (same init for the same seed) for `steps` steps; return the losses and the model.
    model_fn(model) -> model, if given, transforms the model before training (fusegrad.torch.optimize)."""
    torch.manual_seed(seed)
    model = (GPT(cfg, F) if F is not None else NanoGPT(cfg)).to(dtype)
    if model_fn is not None:
        model = model_fn(model)
    opt = optim_cls(model.parameters(), lr=lr, weight_decay=0.1)
    losses = []
    for idx, targets in batches(cfg, B, steps, seed):
        loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, model
