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

The Triton path (CUDA tensors; under TRITON_INTERPRET=1 when ``backend="triton"`` asks) splits the two
parts: the outside sums (n_i, z_i) of query i are the un-normalised causal feature-map attention of the
queries shifted by w against the keys they outrun, ``fast_attention(q[w:], k[:T-w], [v[:T-w], 1],
normalize=False)`` (query i - w of that call sees keys j <= i - w: exactly the outside), so they come from
the fast kernels with their backward, and no (all keys - window) subtraction can cancel. A sliding-window
flash kernel (:mod:`fastattn.kernels.window`) visits only the key blocks that meet the window, keeps the
online max, folds in (n_i, z_i) with the shift M_i above and saves log2 of the whole normaliser, from which
its backward gives dq, dk, dv on the window pairs and (dn, dz) to the fast kernels through autograd.

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

from fastattn.attention.functional import check_tensors, fast_attention
from fastattn.attention.state import state_dtype
from fastattn.errors import KernelError
from fastattn.kernels import naive
from fastattn.kernels.poly import check_feature_count, check_normalizer, choose_backend, nonnegative, polynomial

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


def _route(query, backend):
    """'triton' or 'torch' for this call; KernelError for a Triton request it cannot serve."""
    if backend not in ("auto", "torch", "triton"):
        raise KernelError(f"backend={backend!r}; use 'auto' (Triton on CUDA, else torch), 'torch' or 'triton'")
    fits = query.dtype in (torch.float32, torch.float16, torch.bfloat16)
    if backend == "auto":
        return "triton" if query.is_cuda and fits else "torch"
    if backend == "triton":
        choose_backend(query, "triton")  # CUDA tensors or TRITON_INTERPRET=1, else KernelError
        if not fits or (query.dtype == torch.bfloat16 and not query.is_cuda):
            raise KernelError(f"backend='triton' takes float32, float16 or (on a GPU) bfloat16 inputs; got "
                              f"{query.dtype} on {query.device}: use backend='torch'")
    return backend


def _outside_sums(q, k, v, poly, scale, window, how):
    """[B, H, T - w, DV + 1]: row r holds (sum f(x) v, sum f(x)) over keys j <= r of query r + w.

    In q's dtype, except float32 for float16 inputs: un-normalised sums pass float16's 65504 (sum f >= T / 2
    for Taylor-2 alone), while bfloat16 has float32's range. ``how``: "augment" (one call with v widened by a
    ones column), "split" (a call on v and one on the ones column: no wider v tile when DV + 1 passes a power
    of two), or "torch" (the torch path, for tests).
    """
    T = q.shape[2]
    qs, ks, vs = q[:, :, window:], k[:, :, :T - window], v[:, :, :T - window]
    if q.dtype == torch.float16:
        qs, ks, vs = qs.float(), ks.float(), vs.float()
    ones = vs.new_ones(vs.shape[:-1] + (1,))
    backend = "torch" if how == "torch" else "triton"
    if how == "split":
        n = fast_attention(qs, ks, vs, poly, scale=scale, normalize=False, backend=backend)
        z = fast_attention(qs, ks, ones, poly, scale=scale, normalize=False, backend=backend)
        return torch.cat([n, z], -1)
    return fast_attention(qs, ks, torch.cat([vs, ones], -1), poly, scale=scale, normalize=False, backend=backend)


#: Private overrides of the Triton path (``tuning=``): how the outside sums are taken (see _outside_sums;
#: "auto" picks by DV), and the window kernel's launch numbers (fastattn.kernels.window.flash.TUNING).
TUNING = {"outside": "auto"}


def _outside_route(DV):
    """"augment" when the ones column fits the power-of-two v tile the fast kernels pad DV to, else "split".

    At DV = 2^k widening v doubles that tile, and takes Based at 8K (q/k d16, v d64) off the fused path
    (the generated module's plan: fwd/fused/segments at v 64, fwd/scan/causal/kron at v 65), while the
    ones column alone runs on a 16-wide tile.
    """
    pad = max(16, 1 << (DV - 1).bit_length())
    return "augment" if DV + 1 <= pad else "split"


def _triton_hybrid(q, k, v, poly, scale, window, tuning):
    from fastattn.kernels.window.flash import TUNING as WINDOW_TUNING
    from fastattn.kernels.window.flash import window_attention

    tuning = dict(tuning or {})
    bad = sorted(set(tuning) - set(TUNING) - set(WINDOW_TUNING))
    if bad:
        raise KernelError(f"unknown tuning keys {bad}; known: {sorted(set(TUNING) | set(WINDOW_TUNING))}")
    how = tuning.pop("outside", TUNING["outside"])
    if how not in ("auto", "augment", "split", "torch"):
        raise KernelError(f"tuning outside={how!r}; use 'auto', 'augment', 'split' or 'torch'")
    if how == "auto":
        how = _outside_route(v.shape[-1])
    T = q.shape[2]
    if window == 0:
        fix = check_normalizer(poly, True, None)
        return fast_attention(q, k, v, poly, scale=scale, normalize=True, normalizer_fix=fix,
                              backend="torch" if how == "torch" else "triton")
    window = min(window, T)
    outside = _outside_sums(q, k, v, poly, scale, window, how) if window < T else None
    try:
        return window_attention(q, k, v, outside, scale=scale, window=window, tuning=tuning)
    except ValueError as exc:
        raise KernelError(str(exc)) from exc


def hybrid_attention(query, key, value, spec, *, window, scale=None, chunk=None, backend="auto", tuning=None):
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
        Torch path: queries per tile, >= max(window, 1); default max(window, 64). Memory per head goes
        as chunk * 2 * chunk for the tile plus F * DV for the state.
    backend : "auto", "torch" or "triton"
        "auto": Triton on CUDA tensors (float32, float16, bfloat16), torch otherwise; "triton" also runs
        on the CPU under TRITON_INTERPRET=1 (float32, float16). The Triton path
        takes the outside sums in the inputs' dtype, float32 for float16 inputs (the sums pass 65504).
    tuning : dict, optional
        Private overrides of the Triton path, for sweeps and tests (``TUNING`` here and in
        :mod:`fastattn.kernels.window.flash`).

    Returns
    -------
    o : tensor [B, H, T, DV], in the inputs' dtype.

    Raises
    ------
    KernelError
        A window that is not an int >= 0, a chunk shorter than the window, an f negative somewhere on
        the reals, shapes :func:`fastattn.attention.fast_attention` refuses (and H_q != H_kv: no GQA yet),
        a bad scale, or backend="triton" where it cannot run (a CPU tensor without TRITON_INTERPRET=1,
        float64).

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
    route = _route(query, backend)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if T == 0:
        return naive.empty_output(query, key, value)
    if route == "triton":
        return _triton_hybrid(query, key, value, poly, scale, window, tuning)
    chunk = max(window, 64) if chunk is None else chunk
    return _torch_hybrid(query, key, value, poly, scale, window, chunk, 1e-6)
