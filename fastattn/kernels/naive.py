"""Pure-torch references for polynomial linear attention (any float dtype, float64 included).

Two forms of the same map, tested against each other and against the Triton kernels:

* :func:`quadratic_attention` materialises A = f(s Q K^T) (T x T, Horner), masks it and
  multiplies by V. Memory traffic: reads T(2D + DV), writes and reads T^2 for A, writes T DV.
* :func:`chunk_attention` is the chunkwise linear form the kernels use: f on each C x C
  diagonal tile, plus phi(Q_c) S_{c-1} with S_c = sum of psi(k) v^T over earlier chunks in
  the symmetric-tensor basis (:func:`symmetric_features`). It is differentiable and is the
  layer's CPU path.

Both take ``coeffs`` as ``{j: a_j}`` (or a :class:`~fastattn.kernels.codegen.Polynomial`).

>>> import torch
>>> q, k, v = torch.randn(3, 1, 2, 20, 4, dtype=torch.float64)
>>> c = {0: 1.0, 1: 1.0, 2: 0.5}
>>> a = quadratic_attention(q, k, v, c, causal=True, normalize=True)
>>> b = chunk_attention(q, k, v, c, causal=True, normalize=True, chunk=8)
>>> bool(torch.allclose(a, b))
True
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping

import torch

__all__ = ["horner", "quadratic_attention", "symmetric_tables", "symmetric_features", "chunk_attention"]


def _coeffs(coeffs) -> dict:
    d = coeffs.as_dict() if hasattr(coeffs, "as_dict") else dict(coeffs)
    return {int(j): float(a) for j, a in d.items() if float(a) != 0.0}


def horner(x: torch.Tensor, coeffs: Mapping[int, float]) -> torch.Tensor:
    """f(x) = sum_j a_j x^j evaluated by Horner's rule, elementwise."""
    c = _coeffs(coeffs)
    p = max(c)
    y = torch.full_like(x, c[p])
    for j in range(p - 1, -1, -1):
        y = y * x + c.get(j, 0.0)
    return y


def _denominator(z, normalizer_fix, eps):
    return z.abs() + eps if normalizer_fix == "abs" else z


def quadratic_attention(q, k, v, coeffs, scale=None, causal=True, normalize=True, normalizer_fix=None,
                        eps=1e-6):
    """o_i = sum_{j in M(i)} f(s q_i.k_j) v_j [/ sum_{j in M(i)} f(s q_i.k_j)] with A materialised.

    Parameters
    ----------
    q, k : tensor [B, H, T, D]
    v : tensor [B, H, T, DV]
    coeffs : dict {j: a_j} or Polynomial
    scale : float, optional
        Default 1/sqrt(D).
    causal, normalize : bool
    normalizer_fix : None or "abs"
        With "abs" the denominator is |sum_j f| + eps.

    Returns
    -------
    tensor [B, H, T, DV], computed in the inputs' dtype.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    a = horner(scale * (q @ k.transpose(-1, -2)), coeffs)  # [B, H, T, T]
    if causal:
        T = q.shape[-2]
        a = a.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), 0.0)
    o = a @ v
    if normalize:
        o = o / _denominator(a.sum(-1), normalizer_fix, eps)[..., None]
    return o


def symmetric_tables(coeffs, dim: int, scale: float):
    """Index and weight tables of the symmetric-tensor basis of f(scale * q.k).

    Feature alpha (a multiset of head-dim indices of size j) has weight
    w = a_j scale^j j!/alpha!; phi gets sign(w) sqrt|w| and psi sqrt|w|, so
    phi(q).psi(k) = f(scale q.k). Returns (idx [P, F] int64 with ``dim`` marking "no
    factor", w_phi [F] float64, w_psi [F] float64).
    """
    c = _coeffs(coeffs)
    slots = max(1, max(c))
    rows, ws = [], []
    for j in sorted(c):
        for combo in itertools.combinations_with_replacement(range(dim), j):
            counts = [combo.count(i) for i in set(combo)]
            mult = math.factorial(j) // math.prod(math.factorial(n) for n in counts)
            rows.append(list(combo) + [dim] * (slots - j))
            ws.append(c[j] * scale**j * mult)
    idx = torch.tensor(rows, dtype=torch.int64).reshape(-1, slots).T.contiguous()
    w = torch.tensor(ws, dtype=torch.float64)
    return idx, torch.sign(w) * w.abs().sqrt(), w.abs().sqrt()


def symmetric_features(x: torch.Tensor, coeffs, scale: float, side: str = "phi", tables=None) -> torch.Tensor:
    """phi(x) (``side="phi"``) or psi(x) (``side="psi"``), shape [..., F], differentiable.

    >>> x, y = torch.randn(2, 5, dtype=torch.float64)
    >>> c = {0: 1.0, 1: 1.0, 2: 0.5}
    >>> lhs = symmetric_features(x, c, 0.3) @ symmetric_features(y, c, 0.3, "psi")
    >>> bool(torch.isclose(lhs, horner(0.3 * x @ y, c)))
    True
    """
    if side not in ("phi", "psi"):
        raise ValueError(f"side={side!r}; use 'phi' or 'psi'")
    # ``tables`` (from symmetric_tables) saves rebuilding them on every call, e.g. in a layer
    idx, w_phi, w_psi = symmetric_tables(coeffs, x.shape[-1], scale) if tables is None else tables
    idx = idx.to(x.device)
    w = (w_phi if side == "phi" else w_psi).to(device=x.device, dtype=x.dtype)
    xe = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)  # index dim is the constant 1
    out = w
    for m in range(idx.shape[0]):
        out = out * xe[..., idx[m]]
    return out


def chunk_attention(q, k, v, coeffs, scale=None, causal=True, normalize=True, normalizer_fix=None, eps=1e-6,
                    chunk=64, tables=None):
    """The chunkwise linear form of :func:`quadratic_attention` (same arguments, plus ``chunk``
    and optional precomputed ``tables`` from :func:`symmetric_tables`).

    Causal: per chunk c, o_c = mask(f(s Q_c K_c^T)) V_c + phi(Q_c) S_{c-1}, with
    S_c = sum_{c' <= c} psi(K_c')^T V_c' (and z likewise with a column of ones).
    Non-causal: o = phi(Q) (psi(K)^T V). Memory: the per-chunk states, (T/C) F DV numbers,
    are materialised here (fine for a reference; the kernels keep them on-chip).
    """
    B, H, T, D = q.shape
    DV = v.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    phi = symmetric_features(q, coeffs, scale, "phi", tables)  # [B, H, T, F]
    psi = symmetric_features(k, coeffs, scale, "psi", tables)  # [B, H, T, F]
    if not causal:
        n = phi @ (psi.transpose(-1, -2) @ v)
        z = phi @ psi.sum(-2, keepdim=True).transpose(-1, -2)
        z = z[..., 0]
    else:
        C = chunk
        N = -(-T // C)
        pad = N * C - T
        # zero-padded keys must have psi = 0 (the constant feature is not 0 at k = 0)
        fp = lambda x: torch.nn.functional.pad(x, (0, 0, 0, pad)).reshape(B, H, N, C, x.shape[-1])  # noqa: E731
        qc, kc, vc, phic, psic = fp(q), fp(k), fp(v), fp(phi), fp(psi)
        kv = psic.transpose(-1, -2) @ vc  # [B, H, N, F, DV]
        s_prev = kv.cumsum(2) - kv
        ks = psic.sum(-2)  # [B, H, N, F]
        z_prev = ks.cumsum(2) - ks
        valid = torch.arange(N * C, device=q.device).reshape(N, C) < T  # [N, C]
        tri = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        mask = tri & valid[:, None, :]  # [N, C, C]
        a = horner(scale * (qc @ kc.transpose(-1, -2)), coeffs).masked_fill(~mask, 0.0)  # [B, H, N, C, C]
        n = (a @ vc + phic @ s_prev).reshape(B, H, N * C, DV)[:, :, :T]
        z = (a.sum(-1) + (phic @ z_prev[..., None])[..., 0]).reshape(B, H, N * C)[:, :, :T]
    if normalize:
        return n / _denominator(z, normalizer_fix, eps)[..., None]
    return n
