"""``hybrid_attention``: exact softmax inside a sliding window plus a feature map outside it (the Based recipe).

For query i (causal) and scores x_ij = s q_i.k_j, key j weighs

    exp(x_ij)   if i - w < j <= i      (the window: exact softmax weights)
    f(x_ij)     if j <= i - w          (outside: the polynomial f of a spec, through its feature map)

and o_i = sum_j weight_ij v_j / sum_j weight_ij: one normaliser shared by both parts. With f = exp
this is causal softmax; with f ~ exp (a Taylor polynomial) it approximates softmax, and the error
lives only in the keys that left the window. ``window >= T`` is causal softmax exactly, ``window=0``
the normalised feature-map attention of :func:`fastattn.attention.fast_attention`.

Stabilisation. Both parts are divided by exp(M_i) with the row shift

    M_i = max(m_i, log z_i),   m_i = max_{window} x_ij,   z_i = sum_{outside} f(x_ij),

so the window weights are exp(x_ij - M_i) <= 1 and the outside part enters as
(n_i / z_i) exp(log z_i - M_i), with n_i = sum_{outside} f(x_ij) v_j, never as n_i exp(-M_i):
the outside term stays the exact f term (no clipping) for any f. Taking the window's max alone
would break down when f(x) >> exp(m_i) (a polynomial f at large |x| while every window score is
very negative): exp(-m_i) z_i then overflows, and exp(-m_i) * 0 on a row with no outside key is
NaN. With M_i the larger of the two, one of the two parts equals 1 after the shift, so the
normaliser lies in [1, w + 1] and no row divides by something that underflowed. The shift is a
constant of the row (detached), so gradients are those of the unshifted formula.

Computation, per chunk of C >= w queries (C = max(w, 64) by default): the scores against the keys
of this chunk and the one before, a [C, 2C] tile, hold every window key and the outside keys
closest to the queries (exact f by Horner); the keys of all chunks before those two are read from
a running state S = sum psi(k) v^T, z = sum psi(k) with phi(q), the state lagging two chunks behind.
Per head that is O(C^2 + F DV) memory at a time without autograd (under autograd torch keeps each
chunk's features and state for backward) and O(T C D + T F DV) work.

>>> import torch
>>> q = k = v = torch.randn(1, 2, 10, 8, dtype=torch.float64)
>>> o = hybrid_attention(q, k, v, "1 + x + x**2/2", window=10)
>>> sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
>>> bool(torch.allclose(o, sdpa, atol=1e-12))
True
"""

from __future__ import annotations

import math

import torch

from fastattn.attention.functional import check_tensors
from fastattn.attention.state import state_dtype
from fastattn.errors import KernelError
from fastattn.kernels import naive
from fastattn.kernels.poly import check_feature_count, check_normalizer, nonnegative, polynomial

__all__ = ["hybrid_attention"]


def _check_window(window, chunk):
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise KernelError(f"window={window!r} must be an int >= 0 (keys i - window < j <= i get exact softmax; "
                          "0 means none)")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < max(window, 1)):
        raise KernelError(f"chunk={chunk!r} must be None or an int >= max(window, 1) = {max(window, 1)} (queries per "
                          "tile: a tile must reach back over the whole window)")


def _check_spec(poly):
    if poly.positive:
        return
    ok, why = nonnegative(poly)
    if not ok:
        raise KernelError(f"hybrid_attention adds f(s q.k) over the keys outside the window to one normaliser with the "
                          f"window's exp terms, so f must be >= 0 on the reals; f(x) = {poly.text} is not ({why}): "
                          "use an f >= 0 such as 1 + x + x**2/2 or (1 + x)**2")


def _torch_hybrid(q, k, v, poly, scale, window, chunk, eps):
    """The chunked torch path in float32/float64 (16-bit inputs computed in float32): returns o [B, H, T, DV]."""
    B, H, T, D = q.shape
    DV = v.shape[-1]
    out_dtype, work = q.dtype, state_dtype(q.dtype)
    q0, k0, v0 = q, k, v
    q, k, v = q.to(work), k.to(work), v.to(work)
    tables = naive.symmetric_tables(poly, D, scale)
    F = tables[1].shape[0]
    C = min(chunk, T)
    S = torch.zeros(B, H, F, DV, dtype=work, device=q.device)
    zs = torch.zeros(B, H, F, dtype=work, device=q.device)
    outs, n_parts, z_parts = [], [], []
    for a in range(0, T, C):
        b = min(a + C, T)
        if a >= 2 * C:
            # the chunk two back has left every tile from here on: its keys move into the state
            ks, vs = k[:, :, a - 2 * C:a - C], v[:, :, a - 2 * C:a - C]
            psi = naive.symmetric_features(ks, poly, scale, "psi", tables)  # [B, H, C, F]
            S = S + psi.transpose(-1, -2) @ vs
            zs = zs + psi.sum(-2)
        lo = max(0, a - C)
        x = scale * (q[:, :, a:b] @ k[:, :, lo:b].transpose(-1, -2))  # [B, H, b-a, b-lo]
        i = torch.arange(a, b, device=q.device)[:, None]
        j = torch.arange(lo, b, device=q.device)[None, :]
        inside, outside = (j <= i) & (j > i - window), j <= i - window
        fx = torch.where(outside, naive.horner(x, poly), 0.0)
        n = fx @ v[:, :, lo:b]  # [B, H, b-a, DV]
        z = fx.sum(-1)
        if a >= 2 * C:
            phi = naive.symmetric_features(q[:, :, a:b], poly, scale, "phi", tables)  # [B, H, b-a, F]
            n = n + phi @ S
            z = z + (phi @ zs[..., None])[..., 0]
        if window == 0:
            n_parts.append(n)
            z_parts.append(z)
            continue
        m = x.masked_fill(~inside, -math.inf).amax(-1)  # finite: the window holds j = i
        with torch.no_grad():
            pos = z > 0
            M = torch.maximum(m, torch.where(pos, z, 1.0).log().masked_fill(~pos, -math.inf))
        e = torch.exp((x - M[..., None]).masked_fill(~inside, -math.inf))  # [B, H, b-a, b-lo]
        # the outside part as (n / z) exp(log z - M): no exp(-M) that could overflow, no 0 * inf on empty rows
        z_safe = torch.where(pos, z, 1.0)
        w_out = torch.where(pos, torch.exp(z_safe.log() - M), 0.0)
        num = e @ v[:, :, lo:b] + (n / z_safe[..., None]) * w_out[..., None]
        outs.append(num / (e.sum(-1) + w_out)[..., None])
    if window > 0:
        return torch.cat(outs, 2).to(out_dtype)
    # window = 0 is fast_attention's normalised map: f with real zeros divides by |z| + eps
    n, z = torch.cat(n_parts, 2), torch.cat(z_parts, 2)
    fix = check_normalizer(poly, True, None)
    o = (n / naive.guarded_denominator(z, fix, eps)[..., None]).to(out_dtype)
    naive.check_normalized(o, z, fix, q0, k0, v0)
    return o


def hybrid_attention(query, key, value, spec, *, window, scale=None, chunk=None, backend="torch"):
    """Causal attention with exact softmax over the last ``window`` keys and f(s q.k) over the earlier ones.

    Key j weighs exp(s q_i.k_j) when i - window < j <= i and f(s q_i.k_j) when j <= i - window, under
    one normaliser (the sum of both); the module docstring gives the stabilisation and the cost.

    Parameters
    ----------
    query, key : tensor [B, H, T, D]
    value : tensor [B, H, T, DV]
        One real floating dtype and one device; 16-bit inputs are computed in float32.
    spec : str, Spec, dict or Polynomial
        f (see :func:`fastattn.kernels.polynomial`), a polynomial >= 0 on the reals, e.g. the
        Taylor-2 map ``"1 + x + x**2/2"`` of Based.
    window : int
        w >= 0. ``window >= T`` is causal softmax (``scaled_dot_product_attention(..., is_causal=True)``);
        ``window=0`` is ``fast_attention(query, key, value, spec, normalize=True)``, including its
        |z| + 1e-6 denominator for an f with real zeros (with a window the normaliser holds exp(s q_i.k_i)
        and cannot vanish, so no eps is added).
    scale : float, optional
        s; default 1/sqrt(D).
    chunk : int, optional
        Queries per tile, >= max(window, 1); default max(window, 64). Memory per head goes as
        chunk * 2 * chunk for the tile plus F * DV for the state.
    backend : "torch"
        The only path so far ("auto" takes it too); the Triton kernel is not written yet.

    Returns
    -------
    o : tensor [B, H, T, DV], in the inputs' dtype.

    Raises
    ------
    KernelError
        A window that is not an int >= 0, a chunk shorter than the window, an f negative somewhere on
        the reals, shapes :func:`fastattn.attention.fast_attention` refuses (and H_q != H_kv: no GQA yet),
        a bad scale, or backend="triton".

    Examples
    --------
    >>> q, k, v = torch.randn(3, 1, 2, 20, 8, dtype=torch.float64)
    >>> o = hybrid_attention(q, k, v, "1 + x + x**2/2", window=4)
    >>> o.shape
    torch.Size([1, 2, 20, 8])
    >>> from fastattn.attention import fast_attention
    >>> bool(torch.allclose(hybrid_attention(q, k, v, "(1 + x)**2", window=0), fast_attention(q, k, v, "(1 + x)**2")))
    True
    >>> hybrid_attention(q, k, v, "1 + x", window=4)
    Traceback (most recent call last):
    ...
    fastattn.errors.KernelError: hybrid_attention adds f(s q.k) over the keys outside the window to one normaliser with the window's exp terms, so f must be >= 0 on the reals; f(x) = 1 + x is not (f changes sign at its real root x = -1 (multiplicity 1)): use an f >= 0 such as 1 + x + x**2/2 or (1 + x)**2
    """
    _check_window(window, chunk)
    poly = polynomial(spec)
    _check_spec(poly)
    check_tensors(query, key, value, True, True)
    B, H, T, D = query.shape
    if key.shape[1] != H:
        raise KernelError(f"query has {H} heads and key/value {key.shape[1]}: hybrid_attention has no grouped-query "
                          "attention yet; repeat key and value per group (repeat_interleave on dim 1)")
    check_feature_count(poly, D, value.shape[-1])
    if scale is not None and not naive.is_finite_real(scale):
        raise KernelError(f"scale={scale!r} must be a finite real number (or None for 1/sqrt(D))")
    if backend not in ("auto", "torch"):
        raise KernelError(f"backend={backend!r}: hybrid_attention has only the torch path so far; use 'torch' "
                          "(or 'auto')")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if T == 0:
        return naive.empty_output(query, key, value)
    chunk = max(window, 64) if chunk is None else chunk
    return _torch_hybrid(query, key, value, poly, scale, window, chunk, 1e-6)
