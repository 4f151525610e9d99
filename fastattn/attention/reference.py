"""Reference attentions to compare the generated layers with: softmax and quadratic f.

>>> import torch
>>> q = k = v = torch.randn(1, 1, 5, 4)
>>> softmax_attention(q, k, v).shape
torch.Size([1, 1, 5, 4])
"""

from __future__ import annotations

import math

import torch

from fastattn.kernels.naive import denominator, horner, quadratic_attention
from fastattn.kernels.gated import GATE_FLOOR

__all__ = ["softmax_attention", "quadratic_attention", "masked_quadratic_attention"]


def softmax_attention(q, k, v, causal=True, scale=None):
    """softmax(s Q K^T + mask) V, materialised in the inputs' dtype (float64 works)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * (q @ k.transpose(-1, -2))
    if causal:
        T = q.shape[-2]
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def masked_quadratic_attention(q, k, v, coeffs, *, scale=None, is_causal=True, normalize=True, normalizer_fix=None,
                               eps=1e-6, key_padding_mask=None, g=None):
    """The layer's map with A = f(s Q K^T) materialised: GQA, a padding mask, and a key prefix.

    q [B, H_q, T_q, D]; k [B, H_kv, T_k, D], v [B, H_kv, T_k, DV] with H_q a multiple of H_kv
    (K and V are repeated here, query head h reading key head h // (H_q / H_kv)).
    ``is_causal`` aligns the queries with the last T_q keys (the first T_k - T_q keys are a prefix
    every query sees, as a carried state is). ``key_padding_mask`` [B, T_k] marks padding with True.
    Rows that see no key are 0; ``normalizer_fix="abs"`` divides by |sum f| + eps. ``g`` [B, H_kv, T_k]
    (log forget gates) weighs pair (t, i) by exp(g_{i+1} + ... + g_t); a padded key's gate counts as 0.

    >>> q = k = v = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    >>> c = {0: 1.0, 1: 1.0}
    >>> bool(torch.allclose(masked_quadratic_attention(q, k, v, c), quadratic_attention(q, k, v, c)))
    True
    """
    Hq, Tq, Hk, Tk = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    k, v = k.repeat_interleave(Hq // Hk, 1), v.repeat_interleave(Hq // Hk, 1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    a = horner(scale * (q @ k.transpose(-1, -2)), coeffs)  # [B, H, T_q, T_k]
    see = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if is_causal:
        see = see.tril(Tk - Tq)
    see = see.expand(q.shape[0], 1, Tq, Tk)
    if key_padding_mask is not None:
        see = see & ~key_padding_mask[:, None, None, :]
    if g is not None:
        if key_padding_mask is not None:
            g = g.masked_fill(key_padding_mask[:, None, :], 0.0)
        # the floor of the kernels: g = -inf would make the differences below -inf - (-inf) = NaN
        G = g.clamp_min(GATE_FLOOR).repeat_interleave(Hq // Hk, 1).cumsum(-1)  # [B, H, T_k]
        gap = G[..., Tk - Tq:, None] - G[..., None, :]  # [B, H, T_q, T_k]
        a = a * torch.exp(torch.where(see, gap, -math.inf))
    a = torch.where(see, a, 0.0)
    o = a @ torch.where(see.any(-2)[..., None], v, 0.0)
    if not normalize:
        return o
    z = a.sum(-1)
    d = denominator(z, normalizer_fix, eps)
    return torch.where(see.any(-1)[..., None], o / torch.where(see.any(-1), d, 1.0)[..., None], 0.0)
