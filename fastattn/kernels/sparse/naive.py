"""Dense float64 references for sparse softmax attention: build the full T x T allowed set, mask, softmax.

Memory traffic, per (b, h): reads T(2D + DV) inputs and the T^2 mask, writes and reads T^2 scores, writes T DV.
Quadratic on purpose: these are the oracles the Triton kernels in :mod:`.flash` are tested against.

>>> import torch
>>> q, k, v = torch.randn(3, 1, 1, 6, 4, dtype=torch.float64)
>>> keep = torch.tensor([[[True, False, True, True, False, True]]])
>>> o = masked_attention(q, k, v, allowed_pairs(6, keep=keep))
>>> bool((o[0, 0, 1] == 0).all())   # a dropped query outputs zeros
True
"""

from __future__ import annotations

import math

import torch

__all__ = ["allowed_pairs", "masked_attention", "gradient_terms"]


def allowed_pairs(T, *, keep=None, buckets=None, is_causal=True, device=None):
    """The bool mask [B, H, T, T] (or [1, 1, T, T]) of the (query i, key j) pairs that take part.

    A pair is allowed when both tokens are kept (``keep`` [B, H, T]), their ids match (``buckets`` =
    (query ids, key ids), each [B, H, T]) and, with ``is_causal``, j <= i.
    """
    if device is None:
        device = keep.device if keep is not None else buckets[0].device if buckets is not None else "cpu"
    i = torch.arange(T, device=device)
    ok = torch.ones(1, 1, T, T, dtype=torch.bool, device=device)
    if is_causal:
        ok = ok & (i[None, :] <= i[:, None])
    if keep is not None:
        ok = ok & keep[..., :, None] & keep[..., None, :]
    if buckets is not None:
        ok = ok & (buckets[0][..., :, None] == buckets[1][..., None, :])
    return ok


def masked_attention(q, k, v, allowed, scale=None):
    """softmax(s q k^T) v over the allowed pairs only, in float64; a row with no allowed key is zero.

    q, k : [B, H, T, D]; v : [B, H, T, DV]; allowed : bool, broadcastable to [B, H, T, T].
    Returns float64 [B, H, T, DV], differentiable (an empty row has zero gradient).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q, k, v = q.double(), k.double(), v.double()
    s = scale * (q @ k.transpose(-1, -2))
    s = s.masked_fill(~allowed, -math.inf)
    # an empty row would be softmax of all -inf = NaN: give it a finite max and zero weights instead
    m = s.amax(-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    den = e.sum(-1, keepdim=True)
    return (e @ v) / torch.where(den > 0, den, torch.ones_like(den))


def gradient_terms(q, k, v, o, do, allowed, scale=None):
    """(None, size of dq's terms, size of dk's terms, None): s (P (|dP| + |delta|)) |K| and its transpose.

    dq and dk are sums of p (dp - delta) terms that cancel (a row with one key has dq = 0 exactly), so their
    rounding error is relative to these sizes, not to what is left: pass them as ``terms`` to
    :func:`fastattn.kernels.checks.assert_close`. o is the reference output, do the upstream gradient.
    """
    q, k, v, o, do = (x.detach().double() for x in (q, k, v, o, do))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (scale * q @ k.transpose(-1, -2)).masked_fill(~allowed, -math.inf)
    p = torch.nan_to_num(torch.softmax(s, -1))
    w = p * ((do @ v.transpose(-1, -2)).abs() + (o * do).sum(-1, keepdim=True).abs())
    return None, scale * w @ k.abs(), scale * w.transpose(-1, -2) @ q.abs(), None
