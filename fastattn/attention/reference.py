"""Reference attentions to compare the generated layers with: softmax and quadratic f.

>>> import torch
>>> q = k = v = torch.randn(1, 1, 5, 4)
>>> softmax_attention(q, k, v).shape
torch.Size([1, 1, 5, 4])
"""

from __future__ import annotations

import math

import torch

from fastattn.kernels.naive import quadratic_attention

__all__ = ["softmax_attention", "quadratic_attention"]


def softmax_attention(q, k, v, causal=True, scale=None):
    """softmax(s Q K^T + mask) V, materialised in the inputs' dtype (float64 works)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * (q @ k.transpose(-1, -2))
    if causal:
        T = q.shape[-2]
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return torch.softmax(s, dim=-1) @ v
