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

import functools
import itertools
import math
from typing import Mapping

import torch

__all__ = ["horner", "quadratic_attention", "symmetric_tables", "symmetric_features", "chunk_attention", "check_inputs",
           "check_normalized", "empty_output", "denominator", "guarded_denominator"]


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


def denominator(z, normalizer_fix, eps):
    """The normaliser's denominator: z, or |z| + eps with ``normalizer_fix="abs"`` (the references divide by it)."""
    return z.abs() + eps if normalizer_fix == "abs" else z


def guarded_denominator(z, normalizer_fix, eps):
    """:func:`denominator` with a value <= 0 or not finite made NaN, as the kernels' ``_den`` does: a row whose
    normaliser was lost gives NaN, never a finite wrong quotient (the fast torch paths divide by it).

    >>> guarded_denominator(torch.tensor([2.0, 0.0, -1.0]), None, 1e-6)
    tensor([2., nan, nan])
    """
    d = denominator(z, normalizer_fix, eps)
    return torch.where((d > 0) & torch.isfinite(d), d, torch.full_like(d, math.nan))


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
        o = o / denominator(a.sum(-1), normalizer_fix, eps)[..., None]
    return o


def symmetric_tables(coeffs, dim: int, scale: float):
    """Index and weight tables of the symmetric-tensor basis of f(scale * q.k).

    Feature alpha (a multiset of head-dim indices of size j) has weight
    w = a_j scale^j j!/alpha!; phi gets sign(w) sqrt|w| and psi sqrt|w|, so
    phi(q).psi(k) = f(scale q.k). Returns (idx [P, F] int64 with ``dim`` marking "no
    factor", w_phi [F] float64, w_psi [F] float64), CPU tensors cached per (f, dim, scale):
    building them loops over F multisets in Python (2,145 at d64), once. Do not modify them.

    >>> t = symmetric_tables({0: 1.0, 2: 0.5}, 3, 1.0)
    >>> t is symmetric_tables({2: 0.5, 0: 1.0}, 3, 1.0), tuple(t[0].shape)
    (True, (2, 7))
    """
    return _symmetric_tables(tuple(sorted(_coeffs(coeffs).items())), int(dim), float(scale))


@functools.lru_cache(maxsize=64)
def _symmetric_tables(items: tuple, dim: int, scale: float):
    c = dict(items)
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


# (id of a CPU table, device, dtype) -> (that table, its copy there): a copy from pageable host memory blocks the
# host until the device's queue drains, once per call otherwise. The CPU table is held so its id stays unique.
_ON_DEVICE: dict = {}


def _on_device(t: torch.Tensor, device, dtype=None) -> torch.Tensor:
    dtype = t.dtype if dtype is None else dtype
    if t.device == torch.device(device) and t.dtype == dtype:
        return t
    key = (id(t), str(device), dtype)
    hit = _ON_DEVICE.get(key)
    if hit is None or hit[0] is not t:
        if len(_ON_DEVICE) > 512:
            _ON_DEVICE.clear()
        hit = _ON_DEVICE[key] = (t, t.to(device=device, dtype=dtype))
    return hit[1]


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
    idx = _on_device(idx, x.device)
    w = _on_device(w_phi if side == "phi" else w_psi, x.device, x.dtype)
    xe = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)  # index dim is the constant 1
    out = w
    for m in range(idx.shape[0]):
        # index_select, not xe[..., idx[m]]: the latter's backward (index_put with accumulate) sorts the
        # indices of every row: 1.75 of 2.3 GPU-ms of a gated x d64 fwd+bwd on an H200 (B2 H8 T4096)
        out = out * torch.index_select(xe, -1, idx[m])
    return out


def check_inputs(q, k, v, *, chunk=None, scale=None, eps=None) -> None:
    """Refuse inputs that no path of :func:`chunk_attention` (or the kernels) can serve, by KernelError.

    q, k [B, H, T, D] and v [B, H, T, DV] of one real floating dtype (float64 included; not
    complex, not integer) on one device, D and DV at least 1 (T may be 0); ``chunk`` an int
    >= 1, ``scale`` a finite real, ``eps`` a finite real > 0 (each None: not checked).

    >>> check_inputs(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 5), chunk=0)
    Traceback (most recent call last):
    ...
    fastattn.errors.KernelError: chunk=0 must be an int >= 1 (tokens per chunk)
    """
    from fastattn.errors import KernelError

    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise KernelError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise KernelError(f"expected q, k of shape [B, H, T, D] and v [B, H, T, DV]; got q {tuple(q.shape)}, "
                          f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-1] < 1 or v.shape[-1] < 1:
        raise KernelError(f"head dims must be >= 1; got D={q.shape[-1]}, DV={v.shape[-1]}")
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise KernelError(f"q, k, v must share one real floating dtype (float16, bfloat16, float32, float64); "
                          f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise KernelError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}: move them "
                          "with .to(device)")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise KernelError(f"chunk={chunk!r} must be an int >= 1 (tokens per chunk)")
    if scale is not None and not is_finite_real(scale):
        raise KernelError(f"scale={scale!r} must be a finite real number (or None for 1/sqrt(D))")
    if eps is not None and not (is_finite_real(eps) and float(eps) > 0):
        raise KernelError(f"eps={eps!r} must be a finite real number > 0 (it keeps |sum_j f| + eps away from 0)")


def is_finite_real(x) -> bool:
    """True for a real number that is finite (bools, complex numbers and non-numbers are not).

    >>> is_finite_real(0.5), is_finite_real(float("nan")), is_finite_real(True)
    (True, False, False)
    """
    if isinstance(x, bool) or isinstance(x, complex):
        return False
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def empty_output(q, k, v):
    """The [B, H, 0, DV] output of a zero-length sequence, on every path: empty, in v's dtype, and still a
    function of q, k and v so that backward gives each an (empty) zero gradient."""
    return v[:, :, :0] + (q.sum() + k.sum()) * 0


def _capturing(x) -> bool:
    # a CUDA graph being captured allows no host sync: the denominator check is skipped there
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def check_normalized(o, z, normalizer_fix, q, k, v) -> None:
    """Raise KernelError where a normalised output cannot be right, instead of returning it.

    With ``normalizer_fix=None`` the denominator is z = sum_j f(s q_i.k_j) itself, which is > 0 for
    an f > 0 on R: a z <= 0 or not finite means the computation lost it (16-bit rounding of the
    features, or f overflowing its dtype). With "abs" the denominator |z| + eps is > 0 by
    construction and only a z that is not finite is refused. On both, an output ``o`` that is not
    finite is refused (16-bit features that overflowed in the numerator). Inputs that are not
    finite are the caller's (inf and NaN propagate to the rows that see them, as in SDPA): then
    nothing is raised. Two reductions and one host sync; skipped while a CUDA graph is captured.

    >>> o, z = torch.ones(1, 1, 2, 1), torch.tensor([[[1.0, -2.0]]])
    >>> check_normalized(o, z, None, o, o, o)
    Traceback (most recent call last):
    ...
    fastattn.errors.KernelError: normalize=True: the normaliser sum_j f(s q_i.k_j) is -2 at [b, h, t] = [0, 0, 1] (1 of 2 rows <= 0 or not finite) although q, k, v are finite (torch.float32): f overflowed or rounding lost the sum; use float32 inputs, a smaller scale or smaller inputs, or normalizer_fix='abs'
    """
    from fastattn.errors import KernelError

    if not z.numel() or _capturing(z):
        return
    z, o = z.detach(), o.detach()
    lo, hi = torch.aminmax(z)
    lo, hi, o_ok = torch.stack([lo.double(), hi.double(), torch.isfinite(o).all().double()]).tolist()
    fix_abs = normalizer_fix == "abs"
    # NaN fails both comparisons
    z_ok = (lo > -math.inf if fix_abs else lo > 0) and hi < math.inf
    if (z_ok and o_ok) or not all(bool(torch.isfinite(x.detach()).all()) for x in (q, k, v)):
        return
    if not z_ok:
        bad = ~torch.isfinite(z) if fix_abs else ~(z > 0) | ~torch.isfinite(z)
        where = tuple(bad.nonzero()[0].tolist())
        what, fix = ("not finite", "") if fix_abs else ("<= 0 or not finite", ", or normalizer_fix='abs'")
        raise KernelError(f"normalize=True: the normaliser sum_j f(s q_i.k_j) is {z[where].item():.6g} at "
                          f"[b, h, t] = {list(where)} ({int(bad.sum())} of {z.numel()} rows {what}) although q, "
                          f"k, v are finite ({q.dtype}): f overflowed or rounding lost the sum; use float32 inputs, "
                          f"a smaller scale or smaller inputs{fix}")
    bad = ~torch.isfinite(o)
    where = tuple(bad.nonzero()[0].tolist())
    raise KernelError(f"the output is {o[where].item()} at [b, h, t, c] = {list(where)} ({int(bad.sum())} of "
                      f"{o.numel()} entries not finite) although q, k, v are finite ({q.dtype}): the features "
                      "overflowed the dtype; use float32 inputs, a smaller scale or smaller inputs")


def _exclusive_cumsum(x, dim):
    # shift, then sum: a later chunk's inf or 1e30 never reaches an earlier one (cumsum - x gave inf - inf)
    head = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat([head, x.narrow(dim, 0, x.shape[dim] - 1)], dim).cumsum(dim)


def chunk_attention(q, k, v, coeffs, scale=None, causal=True, normalize=True, normalizer_fix=None, eps=1e-6,
                    chunk=64, tables=None, check_output=None):
    """The chunkwise linear form of :func:`quadratic_attention` (same arguments, plus ``chunk``
    and optional precomputed ``tables`` from :func:`symmetric_tables`).

    Causal: per chunk c, o_c = mask(f(s Q_c K_c^T)) V_c + phi(Q_c) S_{c-1}, with
    S_c = sum_{c' <= c} psi(K_c')^T V_c' (and z likewise with a column of ones); S_{c-1} is
    summed from the chunks before c only, so a row never depends on a later key, even an
    infinite one. Non-causal: o = phi(Q) (psi(K)^T V). Memory: the per-chunk states, (T/C) F DV
    numbers, are materialised here (fine for a reference; the kernels keep them on-chip).

    Inputs are checked by :func:`check_inputs`; T = 0 gives :func:`empty_output`. 16-bit inputs
    are computed in float32 (features, states and the normaliser's sums) and the result is cast
    back; float64 stays float64. With ``check_output`` (and ``normalize``), a normaliser that
    comes out <= 0 or not finite, or an output that is not finite, from finite inputs raises
    KernelError (:func:`check_normalized`; one host sync).

    >>> q = k = v = torch.randn(1, 1, 10, 4, dtype=torch.float16)
    >>> chunk_attention(q, k, v, {0: 1, 1: 1, 2: 0.5}, chunk=4).dtype
    torch.float16
    """
    check_inputs(q, k, v, chunk=chunk, scale=scale, eps=eps)
    if normalizer_fix not in (None, "abs"):
        from fastattn.errors import KernelError

        raise KernelError(f"normalizer_fix={normalizer_fix!r}; use None or 'abs' (divide by |sum_j f| + eps)")
    B, H, T, D = q.shape
    DV = v.shape[-1]
    if T == 0:
        return empty_output(q, k, v)
    out_dtype = q.dtype
    work = torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(work), k.to(work), v.to(work)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
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
        s_prev = _exclusive_cumsum(psic.transpose(-1, -2) @ vc, 2)  # [B, H, N, F, DV]
        z_prev = _exclusive_cumsum(psic.sum(-2), 2)  # [B, H, N, F]
        valid = torch.arange(N * C, device=q.device).reshape(N, C) < T  # [N, C]
        tri = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        mask = tri & valid[:, None, :]  # [N, C, C]
        a = horner(scale * (qc @ kc.transpose(-1, -2)), coeffs).masked_fill(~mask, 0.0)  # [B, H, N, C, C]
        n = (a @ vc + phic @ s_prev).reshape(B, H, N * C, DV)[:, :, :T]
        z = (a.sum(-1) + (phic @ z_prev[..., None])[..., 0]).reshape(B, H, N * C)[:, :, :T]
    if not normalize:
        return n.to(out_dtype)
    o = (n / guarded_denominator(z, normalizer_fix, eps)[..., None]).to(out_dtype)
    if check_output is not False:
        check_normalized(o, z, normalizer_fix, q, k, v)
    return o
