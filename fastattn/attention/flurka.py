"""FLuRKA-style attention: a learned low-rank projection of K and V along the sequence, then f attention.

Linformer's observation is that the T keys and values can be mixed down to r << T rows by learned
matrices E, F in R^{r x T} (K' = E K, V' = F V) with little loss; FLuRKA follows that projection
with kernel (feature-map) attention over the r projected keys:

    o_i = sum_{m < r} f(s q_i.k'_m) v'_m / sum_m f(s q_i.k'_m)      (normalised; without, no division)

Non-causal only: row m of K' mixes every position, future ones included, so a causal variant would
leak the future (a causal-safe projection needs a cumulative structure, which removes the saving);
``is_causal=True`` is refused.

Two exact ways to evaluate the r-key attention, chosen by FLOPs (:func:`flurka_cost`):

* ``direct``: f(s Q K'^T) V' on the [T, r] scores, 2 T r (D + DV) multiply-adds, f by Horner
  (a non-polynomial f truncated at ``degree``, as everywhere in fastattn);
* ``features``: phi(Q) (psi(K')^T V') through :func:`fastattn.attention.fast_attention`,
  2 r F DV + 2 T F DV, F the feature count of f at head dim D; cheaper only when
  r (D + DV) > F DV + (r / T) F DV, i.e. for small feature maps and large r.

Either way the projection costs 2 T r (D + DV). At d64, f = 1 + x + x²/2 (F = 2145), r = 256 the
direct form needs 65,536 multiply-adds per query and head against 274,560 for the feature form, so
``auto`` picks direct; at d16 (F = 153, Based), r = 512: 40,960 direct vs 9,792 features.

>>> import torch
>>> q = k = v = torch.randn(1, 2, 40, 8, dtype=torch.float64)
>>> E = F = torch.randn(2, 6, 40, dtype=torch.float64) / 40**0.5
>>> o1 = flurka_attention(q, k, v, "1 + x + x**2/2", E, F, method="direct")
>>> o2 = flurka_attention(q, k, v, "1 + x + x**2/2", E, F, method="features")
>>> o1.shape, bool(torch.allclose(o1, o2))
(torch.Size([1, 2, 40, 8]), True)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fastattn.attention.functional import check_tensors, fast_attention
from fastattn.errors import KernelError
from fastattn.kernels import naive
from fastattn.kernels.poly import check_normalizer, polynomial

__all__ = ["flurka_attention", "flurka_cost", "FLuRKAttention"]


def flurka_cost(T: int, D: int, DV: int, rank: int, features: int) -> dict:
    """Multiply-adds per head of one FLuRKA call: the projection, and the r-key attention both ways.

    Returns a dict with ``projection``, ``direct``, ``features`` and ``choice`` (the cheaper form).

    >>> c = flurka_cost(8192, 64, 64, 256, 2145)
    >>> c["choice"], c["direct"] < c["features"]
    ('direct', True)
    """
    for name, n in (("T", T), ("D", D), ("DV", DV), ("rank", rank), ("features", features)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise KernelError(f"flurka_cost: {name}={n!r} must be an int >= 1")
    projection = T * rank * (D + DV)
    direct = T * rank * (D + DV)
    feat = rank * features * DV + T * features * DV
    return dict(projection=projection, direct=direct, features=feat, choice="direct" if direct <= feat else "features")


def _check_projection(name, P, B, H, T, device, dtype):
    if not isinstance(P, torch.Tensor) or P.dim() not in (2, 3):
        got = tuple(P.shape) if isinstance(P, torch.Tensor) else type(P).__name__
        raise KernelError(f"{name} must be a tensor [r, T] or [H_kv, r, T] (rows mix the sequence); got {got}")
    if P.shape[-1] != T or (P.dim() == 3 and P.shape[0] != H):
        raise KernelError(f"{name} has shape {tuple(P.shape)}; expected [r, {T}] or [{H}, r, {T}] for keys of length "
                          f"{T} with {H} heads")
    if P.device != device or P.dtype != dtype:
        raise KernelError(f"{name} is {P.dtype} on {P.device}; the keys are {dtype} on {device}")


def _project(P, x):
    # [r, T] or [H, r, T] against x [B, H, T, D] -> [B, H, r, D]
    return torch.einsum("rt,bhtd->bhrd" if P.dim() == 2 else "hrt,bhtd->bhrd", P, x)


def flurka_attention(query, key, value, spec, proj_k, proj_v=None, *, scale=None, normalize=True,
                     enable_gqa=False, is_causal=False, normalizer_fix=None, eps=1e-6, degree=None,
                     method="auto"):
    """f attention of every query over r learned mixtures of the keys and values (non-causal).

    Parameters
    ----------
    query : tensor [B, H_q, T_q, D]
    key : tensor [B, H_kv, T, D]
    value : tensor [B, H_kv, T, DV]
    spec : str, Spec, dict or Polynomial
        f (``degree`` truncates a non-polynomial f).
    proj_k : tensor [r, T] or [H_kv, r, T]
        E: K' = E K along the sequence.
    proj_v : tensor, optional
        F: V' = F V (default: E, Linformer's shared projection).
    scale, normalize, enable_gqa, normalizer_fix, eps
        As in :func:`fastattn.attention.fast_attention`.
    is_causal : bool
        Must be False (the projection mixes future positions).
    method : "auto", "direct" or "features"
        The r-key evaluation (module docstring); ``auto`` takes the one with fewer FLOPs.

    Returns
    -------
    tensor [B, H_q, T_q, DV]
    """
    if is_causal:
        raise KernelError("flurka_attention is non-causal only: each projected key mixes every position, future ones "
                          "included; use fast_attention or hybrid_attention for causal models")
    if method not in ("auto", "direct", "features"):
        raise KernelError(f"method={method!r} must be 'auto', 'direct' or 'features'")
    check_tensors(query, key, value, False, enable_gqa)
    B, Hq, Tq, D = query.shape
    Hk, T, DV = key.shape[1], key.shape[2], value.shape[-1]
    proj_v = proj_k if proj_v is None else proj_v
    _check_projection("proj_k", proj_k, B, Hk, T, key.device, key.dtype)
    _check_projection("proj_v", proj_v, B, Hk, T, key.device, key.dtype)
    if proj_k.shape[-2] != proj_v.shape[-2]:
        raise KernelError(f"proj_k has {proj_k.shape[-2]} rows and proj_v {proj_v.shape[-2]}: one rank r for both")
    r = proj_k.shape[-2]
    poly = polynomial(spec, degree=degree)
    kp, vp = _project(proj_k, key), _project(proj_v, value)
    if method == "auto":
        method = flurka_cost(Tq, D, DV, r, poly.feature_dim(D))["choice"]
    s = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if method == "features":
        return fast_attention(query, kp, vp, poly, is_causal=False, scale=s,
                              normalize=normalize, enable_gqa=enable_gqa, normalizer_fix=normalizer_fix, eps=eps,
                              degree=degree)
    fix = check_normalizer(poly, normalize, normalizer_fix)
    G = Hq // Hk
    kp, vp = (kp, vp) if G == 1 else (kp.repeat_interleave(G, 1), vp.repeat_interleave(G, 1))
    a = naive.horner(s * query @ kp.transpose(-1, -2), poly.coeffs)  # [B, H, Tq, r]
    o = a @ vp
    if not normalize:
        return o
    return o / naive.guarded_denominator(a.sum(-1, keepdim=True), fix, eps)


class FLuRKAttention(nn.Module):
    """Self-attention block with learned sequence projections E, F [H_kv, r, max_len] and f attention.

    ``forward(x)`` maps [B, T, embed_dim] (T <= max_len) to [B, T, embed_dim], non-causal (an
    encoder layer). The projections are sliced to the first T positions and rescaled by
    sqrt(max_len / T) so a shorter input keeps the mixing weights' scale.

    >>> m = FLuRKAttention(32, 4, rank=8, max_len=64)
    >>> m(torch.randn(2, 50, 32)).shape
    torch.Size([2, 50, 32])
    """

    def __init__(self, embed_dim: int, num_heads: int, spec="1 + x + x**2/2", *, rank: int, max_len: int,
                 num_kv_heads: int | None = None, shared_projection: bool = False, method: str = "auto",
                 device=None, dtype=None):
        super().__init__()
        kv = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads < 1 or embed_dim % num_heads or kv < 1 or num_heads % kv:
            raise KernelError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}, and num_heads by "
                              f"num_kv_heads={num_kv_heads}")
        for name, n in (("rank", rank), ("max_len", max_len)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise KernelError(f"{name}={n!r} must be an int >= 1")
        self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim = embed_dim, num_heads, kv, embed_dim // num_heads
        self.spec, self.method, self.max_len = spec, method, max_len
        self.qkv = nn.Linear(embed_dim, (num_heads + 2 * kv) * self.head_dim, device=device, dtype=dtype)
        self.out_proj = nn.Linear(embed_dim, embed_dim, device=device, dtype=dtype)
        # rows of unit norm in expectation: each projected key is a weighted average-like mixture
        self.proj_k = nn.Parameter(torch.randn(kv, rank, max_len, device=device, dtype=dtype) / math.sqrt(max_len))
        self.proj_v = None if shared_projection else nn.Parameter(
            torch.randn(kv, rank, max_len, device=device, dtype=dtype) / math.sqrt(max_len))
        polynomial(spec)  # refuse a bad spec at construction, not at the first forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.embed_dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise KernelError(f"expected x of shape [B, T, {self.embed_dim}]; got {got}")
        B, T, _ = x.shape
        if T > self.max_len:
            raise KernelError(f"sequence length {T} is above max_len={self.max_len} of the learned projections")
        H, Hk, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([H * Dh, Hk * Dh, Hk * Dh], dim=-1)
        q, k, v = (t.view(B, T, -1, Dh).transpose(1, 2) for t in (q, k, v))
        stretch = math.sqrt(self.max_len / T)
        pk = self.proj_k[..., :T] * stretch
        pv = pk if self.proj_v is None else self.proj_v[..., :T] * stretch
        o = flurka_attention(q, k, v, self.spec, pk, pv, enable_gqa=H != Hk, method=self.method)
        return self.out_proj(o.transpose(1, 2).reshape(B, T, self.embed_dim))
