"""Dense float64 reference of the window kernel: the [T, T] masked exp weights plus the outside sums.

Memory traffic, per (b, h): reads T(2D + DV) inputs and the (n, z) outside sums, writes and reads T^2 scores,
writes T DV; quadratic on purpose, the oracle :mod:`.flash` is tested against.

>>> import torch
>>> q, k, v = torch.randn(3, 1, 2, 6, 4, dtype=torch.float64)
>>> o = window_attention_reference(q, k, v, None, scale=0.5, window=6)
>>> sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5)
>>> bool(torch.allclose(o, sdpa))
True
"""

from __future__ import annotations

import math

import torch

__all__ = ["window_attention_reference"]


def window_attention_reference(q, k, v, outside, *, scale, window):
    """o_i = (sum_{i-w < j <= i} exp(s q_i.k_j) v_j + n_i) / (sum_{i-w < j <= i} exp(s q_i.k_j) + z_i), float64.

    q, k : [B, H, T, D]; v : [B, H, T, DV]; outside : [B, H, T - window, DV + 1] (n, z of queries window ..
    T - 1) or None. A row with z <= 0 takes no outside term. Differentiable.
    """
    T, DV = q.shape[-2], v.shape[-1]
    q, k, v = q.double(), k.double(), v.double()
    x = scale * (q @ k.transpose(-1, -2))
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    inside = (j <= i) & (j > i - window)
    m = x.masked_fill(~inside, -math.inf).amax(-1, keepdim=True).detach()
    e = torch.exp((x - m).masked_fill(~inside, -math.inf))
    num, den = e @ v, e.sum(-1)
    if outside is not None:
        out = torch.nn.functional.pad(outside.double(), (0, 0, T - outside.shape[-2], 0))
        n, z = out[..., :DV], out[..., DV]
        pos = z > 0
        # exp(-m) on the outside part: fine in float64 for the test's score range
        w = torch.where(pos, torch.exp(-m[..., 0]), 0.0)
        num = num + n * w[..., None]
        den = den + torch.where(pos, z, 0.0) * w
    return num / den[..., None]
