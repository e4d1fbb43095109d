"""A PyTorch user swaps in fusegrad's attention and layer norm: a one-line change per op.

The block below is ordinary PyTorch. It calls its attention and layer norm through two names;
pointing them at fusegrad.torch runs fusegrad's C++ kernels (forward and backward) inside
PyTorch's autograd, with the same results. Needs torch >= 2.4 (pip install fusegrad[torch]).
Run: python examples/07_torch_swap.py

It prints the largest difference between the two blocks' outputs and between their weight
gradients (float32 rounding: 1e-7 or less), and how often fusegrad fell back to PyTorch's own op
(never, here). Notice: the block's code is unchanged; only the two functions it calls differ.
"""
import sys

try:
    import torch
except ImportError:
    sys.exit("examples/07_torch_swap.py needs PyTorch: pip install torch")
import torch.nn as nn
import torch.nn.functional as F

import fusegrad.torch as fgt


class SelfAttentionBlock(nn.Module):
    """Pre-norm causal self-attention with a residual, as in GPT-2."""

    def __init__(self, C=64, n_head=4, attention=F.scaled_dot_product_attention, layer_norm=F.layer_norm):
        super().__init__()
        self.n_head, self.attention, self.layer_norm = n_head, attention, layer_norm
        self.ln = nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, x):  # x: (B, T, C)
        B, T, C = x.shape
        h = self.layer_norm(x, (C,), self.ln.weight, self.ln.bias)
        q, k, v = self.qkv(h).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = self.attention(q, k, v, is_causal=True)
        return x + self.proj(y.transpose(1, 2).reshape(B, T, C))


def main():
    torch.manual_seed(0)
    x = torch.randn(4, 32, 64)

    ref = SelfAttentionBlock()                                   # PyTorch's ops
    ours = SelfAttentionBlock(attention=fgt.scaled_dot_product_attention,  # the swap
                              layer_norm=fgt.layer_norm)
    ours.load_state_dict(ref.state_dict())                       # same weights

    y_ref, y = ref(x), ours(x)
    y_ref.square().mean().backward()
    y.square().mean().backward()

    res = {
        "max_abs_diff_out": (y - y_ref).abs().max().item(),
        "max_abs_diff_grad": max((p.grad - q.grad).abs().max().item()
                                 for p, q in zip(ours.parameters(), ref.parameters())),
        "fallbacks": dict(fgt.fallback_counts),  # empty: no call needed something our kernels lack
        "dispatch": dict(fgt.dispatch_counts),   # where each call ran: fusegrad where it measured faster
    }
    print(f"largest |difference| of the block's output, fusegrad vs PyTorch: {res['max_abs_diff_out']:.2e}")
    print(f"largest |difference| of a weight gradient:                   {res['max_abs_diff_grad']:.2e}")
    print(f"calls that fell back to PyTorch's op: {res['fallbacks'] or 'none'}")
    print(f"where each call ran (fusegrad only at sizes where it measured faster): {res['dispatch']}")
    print("notice: only the two functions the block calls changed; the results agree to float32 rounding")
    return res


if __name__ == "__main__":
    main()
