"""From a spec to a polynomial kernel, and the functional entry point that runs it.

:func:`polynomial` turns a spec ("1 + x + x**2/2", a :class:`fastattn.Spec`, or a
coefficient dict) into the :class:`~fastattn.kernels.codegen.Polynomial` the code generator
reads: exact coefficients, positivity on R (from ``Spec.is_positive``), and, for a
non-polynomial f truncated at ``degree``, the truncation error bound.
:func:`poly_attention` runs it: the generated Triton kernels on CUDA tensors (or on CPU
tensors under ``TRITON_INTERPRET=1``), the pure-torch chunkwise form otherwise.

>>> import torch
>>> q = k = v = torch.randn(1, 2, 10, 4)
>>> poly_attention(q, k, v, "1 + x + x**2/2", backend="torch").shape
torch.Size([1, 2, 10, 4])
"""

from __future__ import annotations

import math
import os

from fastattn.errors import KernelError
from fastattn.kernels import naive
from fastattn.kernels.codegen import Polynomial, load_module

__all__ = ["polynomial", "check_normalizer", "check_feature_count", "choose_backend", "poly_attention", "MAX_FEATURES"]

_ERROR_RADII = (1.0, 2.0, 4.0)
#: Largest symmetric-basis feature count a layer or generated module is built for: (1+x)**3 at
#: head dim 128 is 366,145; beyond ~1M the index tables alone take seconds and the state GBs.
MAX_FEATURES = 1 << 20


def _truncation_note(sp, degree: int) -> str:
    import sympy

    radii = [r for r in _ERROR_RADII if sp.radius is None or sp.radius is sympy.oo or r < sp.radius]
    if not radii:
        radii = [float(sp.radius) / 2]
    parts = ", ".join(f"{float(sp.remainder_bound(degree, r)):.3g} for |s q.k| <= {r:g}" for r in radii)
    return f"Taylor truncation at degree {degree}: |f - f_p| <= {parts}"


def polynomial(f, degree: int | None = None) -> Polynomial:
    """The polynomial kernel of ``f``.

    Parameters
    ----------
    f : str, Spec, dict {j: a_j} or Polynomial
        A spec text such as ``"(1+x)**3"`` or ``"exp(x)"``, a parsed spec, or coefficients.
    degree : int, optional
        Truncation degree. Required for a non-polynomial f (entire or analytic, e.g. exp),
        whose Taylor series is cut at ``degree`` with the error bound recorded; for a
        polynomial it may be omitted (the exact degree is used).

    Returns
    -------
    Polynomial

    Raises
    ------
    KernelError
        ``f`` is not analytic, or is not a polynomial and no ``degree`` was given.

    Examples
    --------
    >>> polynomial("(1+x)**3").as_dict()
    {0: 1.0, 1: 3.0, 2: 3.0, 3: 1.0}
    """
    if isinstance(f, Polynomial):
        return f
    if isinstance(f, dict):
        return Polynomial.from_coefficients(f)
    import fastattn

    sp = fastattn.spec(f) if isinstance(f, str) else f
    if sp.kind == "polynomial":
        p = sp.degree if degree is None else min(int(degree), sp.degree)
        if p < sp.degree:
            origin, note = f"{sp} truncated at degree {p}", _truncation_note(sp, p)
        else:
            origin, note = str(sp), "exact: f is a polynomial"
    elif sp.kind in ("entire", "analytic"):
        if degree is None:
            raise KernelError(f"f = {sp} is not a polynomial ({sp.kind}); pass degree=p to use its Taylor "
                              "polynomial of degree p (e.g. degree=2)")
        p = int(degree)
        origin, note = f"{sp} truncated at degree {p}", _truncation_note(sp, p)
    else:
        raise KernelError(f"f = {sp} is {sp.kind}: it has no finite feature map (f(QK^T) is not low rank); "
                          "use a polynomial or an analytic f with degree=p")
    if p < 0:
        raise KernelError(f"degree={degree!r} must be >= 0")
    coeffs = {j: a for j, a in enumerate(sp.coefficients(p)) if a != 0}
    if not coeffs:
        raise KernelError(f"the Taylor polynomial of {sp} at degree {p} is 0; raise the degree")
    # positivity of what the kernel computes: the truncation, not f (exp > 0, its cubic is not)
    verdict = (sp.taylor(p) if p != sp.degree else sp).is_positive()
    return Polynomial.from_coefficients(coeffs, positive=verdict.positive is True,
                                        positivity_reason=verdict.reason, origin=origin, error_note=note)


def check_normalizer(poly: Polynomial, normalize: bool, normalizer_fix: str | None) -> None:
    """Refuse a normaliser sum_j f that can vanish, unless the caller opted into a fix.

    ``normalizer_fix="abs"`` divides by |sum_j f(s q.k_j)| + eps instead, which is never 0;
    it is a different (stated) map, not the normalised attention of f.
    """
    if normalizer_fix not in (None, "abs"):
        raise KernelError(f"normalizer_fix={normalizer_fix!r} is not known; use None or 'abs' "
                          "(divide by |sum_j f| + eps)")
    if normalize and normalizer_fix is None and not poly.positive:
        raise KernelError(f"normalize=True divides by sum_j f(s q.k_j), but f(x) = {poly.text} is not positive "
                          f"on the reals ({poly.positivity_reason}), so the denominator can be 0 or negative; "
                          "pass normalize=False, or normalizer_fix='abs' to divide by |sum_j f| + eps")


def check_feature_count(poly: Polynomial, head_dim: int, head_dim_v: int | None = None) -> int:
    """The feature count of ``poly`` at ``head_dim``, or a KernelError naming it when it is above :data:`MAX_FEATURES`.

    Counted from binomials before anything is built, so a hostile head dim costs nothing.

    >>> check_feature_count(polynomial("1 + x + x**2/2"), 64)
    2145
    >>> check_feature_count(polynomial("(1+x)**8"), 64)
    Traceback (most recent call last):
    ...
    fastattn.errors.KernelError: f(x) = 1 + 8*x + 28*x**2 + 56*x**3 + 70*x**4 + 56*x**5 + 28*x**6 + 8*x**7 + x**8 needs 11,969,016,345 features at head dim 64 (symmetric basis, sum_j C(d + j - 1, j)); the limit is 1,048,576: lower the degree or the head dim
    """
    for name, value in (("head_dim", head_dim), ("head_dim_v", head_dim_v)):
        if value is None and name == "head_dim_v":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KernelError(f"{name}={value!r} must be a positive int")
    n = poly.feature_dim(head_dim)
    if n > MAX_FEATURES:
        raise KernelError(f"f(x) = {poly.text} needs {n:,} features at head dim {head_dim} (symmetric basis, "
                          f"sum_j C(d + j - 1, j)); the limit is {MAX_FEATURES:,}: lower the degree or the head dim")
    return n


def choose_backend(q, backend: str = "auto") -> str:
    """'triton' for CUDA tensors or under TRITON_INTERPRET=1, else 'torch'; an explicit choice is checked."""
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if backend == "auto":
        return "triton" if (q.is_cuda or interpret) else "torch"
    if backend == "triton":
        if not (q.is_cuda or interpret):
            raise KernelError(f"backend='triton' needs CUDA tensors (got device {q.device}) or TRITON_INTERPRET=1")
        return backend
    if backend == "torch":
        return backend
    raise KernelError(f"backend={backend!r}; use 'auto', 'triton' or 'torch'")


def poly_attention(q, k, v, f, *, degree=None, scale=None, causal=True, normalize=True, normalizer_fix=None,
                   eps=1e-6, chunk=None, block_f=64, block_v=None, segments=None, backend="auto", tables=None):
    """o_i = sum_{j in M(i)} f(s q_i.k_j) v_j [/ sum_{j in M(i)} f(s q_i.k_j)] in linear time.

    Parameters
    ----------
    q, k : tensor [B, H, T, D]
    v : tensor [B, H, T, DV]
        Layout of ``torch.nn.functional.scaled_dot_product_attention``; fp32, fp16 or bf16
        (any float dtype on the torch backend).
    f : str, Spec, dict or Polynomial
        See :func:`polynomial`.
    degree : int, optional
        Truncation degree for a non-polynomial f.
    scale : float, optional
        s; default 1/sqrt(D).
    causal, normalize : bool
    normalizer_fix : None or "abs"
        See :func:`check_normalizer`.
    chunk, block_f, block_v : int
        Kernel tiling: tokens per chunk (None: the kernel's choice), features per tile, v columns per tile.
    segments : int, optional
        Causal kernels: segments scanned in parallel (None: enough to fill the GPU).
    backend : "auto", "triton" or "torch"
    tables : tuple, optional
        Precomputed :func:`fastattn.kernels.naive.symmetric_tables` for the torch backend.

    Returns
    -------
    tensor [B, H, T, DV]
    """
    poly = polynomial(f, degree)
    check_normalizer(poly, normalize, normalizer_fix)
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise KernelError(f"expected q, k of shape [B, H, T, D] and v [B, H, T, DV]; got q {tuple(q.shape)}, "
                          f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if choose_backend(q, backend) == "torch":
        return naive.chunk_attention(q, k, v, poly, scale=scale, causal=causal, normalize=normalize,
                                     normalizer_fix=normalizer_fix, eps=eps, chunk=64 if chunk is None else chunk,
                                     tables=tables)
    mod = load_module(poly)
    try:
        return mod.poly_attention(q, k, v, scale=scale, causal=causal, normalize=normalize,
                                  normalizer_fix=normalizer_fix, eps=eps, chunk=chunk, block_f=block_f,
                                  block_v=block_v, segments=segments)
    except ValueError as exc:
        if isinstance(exc, KernelError):
            raise
        raise KernelError(str(exc)) from exc
