"""From a spec to a polynomial kernel, and the functional entry point that runs it.

:func:`polynomial` turns a spec ("1 + x + x**2/2", a :class:`fastattn.Spec`, or a
coefficient dict) into the :class:`~fastattn.kernels.codegen.Polynomial` the code generator
reads: exact coefficients, positivity on R (from ``Spec.is_positive``), and, for a
non-polynomial f truncated at ``degree``, the truncation error bound.
:func:`check_normalizer` picks the denominator a normalised attention divides by (sum_j f for
f > 0, sum_j f + eps for f >= 0 with real zeros, decided exactly by :func:`nonnegative`).
:func:`poly_attention` runs it: the generated Triton kernels on CUDA tensors (or on CPU
tensors under ``TRITON_INTERPRET=1``), the pure-torch chunkwise form otherwise, with the same
argument checks and the same denominator on both.

>>> import torch
>>> q = k = v = torch.randn(1, 2, 10, 4)
>>> poly_attention(q, k, v, "1 + x + x**2/2", backend="torch").shape
torch.Size([1, 2, 10, 4])
"""

from __future__ import annotations

import functools
import math
import os
from fractions import Fraction

from fastattn.errors import KernelError
from fastattn.kernels import naive
from fastattn.kernels.codegen import Polynomial, load_module

__all__ = ["polynomial", "nonnegative", "check_normalizer", "check_feature_count", "choose_backend", "poly_attention",
           "MAX_FEATURES", "QUADRATIC_MIN_FEATURES", "quadratic_serves", "quadratic_route"]

_ERROR_RADII = (1.0, 2.0, 4.0)
#: Largest symmetric-basis feature count a layer or generated module is built for: (1+x)**3 at
#: head dim 128 is 366,145; beyond ~1M the index tables alone take seconds and the state GBs.
MAX_FEATURES = 1 << 20
#: Maps with at least this many features may run on the quadratic flash kernels (the speed issue's "large" maps);
#: smaller ones keep the chunkwise kernels, which run near their launch floor at every T measured.
QUADRATIC_MIN_FEATURES = 1000


def _truncation_note(sp, degree: int) -> str:
    import sympy

    radii = [r for r in _ERROR_RADII if sp.radius is None or sp.radius is sympy.oo or r < sp.radius]
    if not radii:
        radii = [float(sp.radius) / 2]
    parts = ", ".join(f"{float(sp.remainder_bound(degree, r)):.3g} for |s q.k| <= {r:g}" for r in radii)
    return f"Taylor truncation at degree {degree}: |f - f_p| <= {parts}"


def sympy_text(expr) -> str:
    """``expr`` printed by sympy (``sstr``): text derived from the parsed expression alone.

    >>> import sympy
    >>> sympy_text(sympy.exp(sympy.Symbol("x") / 8))
    'exp(x/8)'
    """
    import sympy

    return sympy.sstr(expr)


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
    if isinstance(f, str):
        # parsing and the exact positivity proof cost 2-4 ms, more than a kernel call at 8K: once per text
        return _polynomial_of_text(f, None if degree is None else int(degree))
    return _polynomial_of_spec(f, degree)


@functools.lru_cache(maxsize=256)
def _polynomial_of_text(f: str, degree: int | None) -> Polynomial:
    return _polynomial_of_spec(f, degree)


def _polynomial_of_spec(f, degree):
    import fastattn

    sp = fastattn.spec(f) if isinstance(f, str) else f
    if sp.kind in ("polynomial", "entire", "analytic"):
        # the origin the generated source documents is printed from the parsed expression, never the raw text
        name = sympy_text(sp.expr)
    if sp.kind == "polynomial":
        p = sp.degree if degree is None else min(int(degree), sp.degree)
        if p < sp.degree:
            origin, note = f"{name} truncated at degree {p}", _truncation_note(sp, p)
        else:
            origin, note = name, "exact: f is a polynomial"
    elif sp.kind in ("entire", "analytic"):
        if degree is None:
            raise KernelError(f"f = {sp} is not a polynomial ({sp.kind}); pass degree=p to use its Taylor "
                              "polynomial of degree p (e.g. degree=2)")
        p = int(degree)
        origin, note = f"{name} truncated at degree {p}", _truncation_note(sp, p)
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


def nonnegative(poly: Polynomial) -> tuple[bool, str]:
    """Whether f >= 0 on all of R, decided exactly, and why in words.

    From f's exact rational coefficients (``poly.exact``): f >= 0 on R iff every real root of
    odd multiplicity is absent (each factor of odd multiplicity in ``sympy.sqf_list`` has no real
    root, so f never changes sign) and the leading coefficient is positive. Cached per f.

    >>> nonnegative(polynomial("x**2 + x**4"))
    (True, 'f >= 0 on R, with zeros at x = 0')
    >>> nonnegative(polynomial("1 - x**2"))[0], nonnegative(polynomial("x**3"))[0]
    (False, False)
    """
    exact = poly.exact or tuple((j, str(Fraction(a))) for j, a in poly.coeffs)
    return _nonnegative(exact)


@functools.lru_cache(maxsize=256)
def _nonnegative(exact: tuple) -> tuple[bool, str]:
    import sympy

    x = sympy.Symbol("x")
    f = sympy.Poly(sum(sympy.Rational(a) * x**j for j, a in exact), x)
    if f.LC() < 0:
        return False, f"its leading coefficient {f.LC()} is negative, so f < 0 for large |x|"
    zeros = []
    for g, m in sympy.sqf_list(f)[1]:
        roots = sympy.Poly(g, x).real_roots()
        if roots and m % 2:
            return False, f"f changes sign at its real root x = {roots[0]} (multiplicity {m})"
        zeros += roots
    if not zeros:
        return True, "f > 0 on R"
    return True, "f >= 0 on R, with zeros at x = " + ", ".join(str(r) for r in sorted(set(zeros)))


def check_normalizer(poly: Polynomial, normalize: bool, normalizer_fix: str | None) -> str | None:
    """The denominator the kernels divide by, as the ``normalizer_fix`` they run with; KernelError for
    a normaliser that f cannot make safe.

    * f > 0 on R (``poly.positive``, an exact Sturm count): None, the denominator is
      z = sum_j f(s q.k_j) itself. A z that comes out <= 0 or not finite at run time (16-bit
      rounding, overflow) raises KernelError.
    * f >= 0 on R with real zeros (x**2, x**4, x**2 + x**4: the power-attention family,
      :func:`nonnegative`): "abs", the denominator is z + eps, computed as |z| + eps (the same
      number, as z >= 0; rounding just below 0 near a zero of f cannot make it vanish). Every
      path (Triton, torch) divides by this same |z| + eps.
    * f < 0 somewhere on R (x, x**3, 1 - x**2): refused, unless the caller passes
      ``normalizer_fix="abs"`` to divide by |z| + eps, a different (stated) map, not the
      normalised attention of f.
    * ``normalize=False``: ``normalizer_fix`` as given (unused).

    >>> check_normalizer(polynomial("1 + x + x**2/2"), True, None) is None
    True
    >>> check_normalizer(polynomial("x**2"), True, None)
    'abs'
    """
    if normalizer_fix not in (None, "abs"):
        raise KernelError(f"normalizer_fix={normalizer_fix!r} is not known; use None or 'abs' "
                          "(divide by |sum_j f| + eps)")
    if not normalize or normalizer_fix is not None or poly.positive:
        return normalizer_fix
    ok, why = nonnegative(poly)
    if ok:
        return "abs"
    raise KernelError(f"normalize=True divides by sum_j f(s q.k_j), but f(x) = {poly.text} is negative somewhere "
                      f"on the reals ({why}), so the denominator can be 0 or negative; "
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


def quadratic_serves(F: int, D: int, DV: int, degree: int | None = None) -> bool:
    """Whether the quadratic flash kernels may take this map at all: at least :data:`QUADRATIC_MIN_FEATURES`
    features, head dims <= 128 and degree <= 8 (None: not known, taken as within).

    >>> quadratic_serves(2145, 64, 64, 2), quadratic_serves(153, 16, 64, 2), quadratic_serves(2145, 160, 64)
    (True, False, False)
    """
    from fastattn.kernels.poly_flash import MAX_DEGREE

    return F >= QUADRATIC_MIN_FEATURES and max(D, DV) <= 128 and (degree is None or degree <= MAX_DEGREE)


def quadratic_route(poly, q, k, v, causal, *, check_output=None, force=None, gated=False) -> bool:
    """Whether the Triton backend computes f(s QK^T) V on the quadratic flash kernels
    (:mod:`fastattn.kernels.poly_flash`) instead of the chunkwise feature kernels.

    ``force`` (True / False; tests and sweeps) decides alone. Otherwise: CUDA tensors, causal, no carried state
    (the caller's business), head dims <= 128, degree <= 8, at least :data:`QUADRATIC_MIN_FEATURES` features,
    no output check asked for (the flash kernels keep no normaliser to check), and
    :func:`fastattn.costmodel.quadratic_wins` (fitted on H200 runs v15 and v19) predicting it faster; ``gated``
    compares with the gated feature kernels (a gate g given).

    >>> import torch
    >>> q = torch.empty(2, 16, 8192, 64, device="meta")
    >>> quadratic_route(polynomial("1 + x + x**2/2"), q, q, q, True)   # not CUDA tensors
    False
    >>> quadratic_route(polynomial("x"), q, q, q, True, force=True)
    True
    """
    import torch

    from fastattn import costmodel

    if force is not None:
        return bool(force)
    D, DV = q.shape[-1], v.shape[-1]
    if not (q.is_cuda and causal) or check_output is True or torch.is_anomaly_enabled():
        return False
    F = poly.feature_dim(D)
    B, H, T = q.shape[:3]
    return quadratic_serves(F, D, DV, poly.degree) and costmodel.quadratic_wins(F, D, DV, T, B=B, H=H,
                                                                                     gated=gated)


def poly_attention(q, k, v, f, *, degree=None, scale=None, causal=True, normalize=True, normalizer_fix=None,
                   eps=1e-6, chunk=None, block_f=64, block_v=None, segments=None, backend="auto", tables=None,
                   check_output=None, tuning=None):
    """o_i = sum_{j in M(i)} f(s q_i.k_j) v_j [/ sum_{j in M(i)} f(s q_i.k_j)] in linear time.

    Parameters
    ----------
    q, k : tensor [B, H, T, D]
    v : tensor [B, H, T, DV]
        Layout of ``torch.nn.functional.scaled_dot_product_attention``, one dtype and one device:
        fp32 or fp16 on the Triton backend, bf16 too on a GPU (the interpreter's bf16 dot is wrong,
        so it is refused under ``TRITON_INTERPRET=1``); any real float dtype on the torch backend,
        where 16-bit inputs are computed in fp32 and cast back. T = 0 gives an empty
        [B, H, 0, DV] on both backends.
    f : str, Spec, dict or Polynomial
        See :func:`polynomial`.
    degree : int, optional
        Truncation degree for a non-polynomial f.
    scale : float, optional
        s (finite); default 1/sqrt(D).
    causal, normalize : bool
    normalizer_fix : None or "abs"
        The denominator: see :func:`check_normalizer` (f >= 0 with zeros divides by sum_j f + eps).
    eps : float
        > 0 and finite; added to the denominator by the "abs" rule.
    chunk, block_f, block_v : int
        Kernel tiling: tokens per chunk (None: the kernel's choice; the Triton backend needs a power
        of two >= 16, the torch backend any int >= 1), features per tile, v columns per tile.
    segments : int, optional
        Causal kernels: segments scanned in parallel (None: enough to fill the GPU).
    backend : "auto", "triton" or "torch"
    tables : tuple, optional
        Precomputed :func:`fastattn.kernels.naive.symmetric_tables` for the torch backend.
    check_output : bool or None
        With ``normalize``: the Triton kernels turn a denominator that is <= 0 or not finite into a
        NaN row, never a finite wrong one; ``check_output`` also reads the normaliser and the output
        back and raises KernelError where they cannot be right (below), at the price of a host
        sync per call. None (default): on the torch path and the CPU, and on CUDA only under
        ``torch.autograd.detect_anomaly()``; True: always; False: never.
    tuning : dict, optional
        Triton backend: private routing overrides for sweeps and tests (fastattn/kernels/TUNING.md);
        ``{"quadratic": True / False}`` forces or forbids the quadratic flash kernels (:func:`quadratic_route`),
        which a large map at short T runs by default on a GPU (H200 run v19: 2.4x faster than the feature
        kernels for 1 + x + x**2/2 at d64, 8K; 12.7x at d128, 8K).

    Returns
    -------
    tensor [B, H, T, DV]

    Raises
    ------
    KernelError
        A bad argument (shape, dtype, device, chunk, scale, eps, a feature map above
        :data:`MAX_FEATURES`), an f that cannot be normalised, or (``check_output``) a denominator
        <= 0 or not finite, or an output not finite, from finite inputs (16-bit rounding of the
        feature sums, f overflowing); inputs that are not finite propagate as in SDPA.

    Examples
    --------
    >>> import torch
    >>> q = k = v = torch.randn(1, 1, 6, 2)
    >>> poly_attention(q, k, v, "x**2", backend="torch").shape  # f >= 0, zero at 0: divides by sum_j f + eps
    torch.Size([1, 1, 6, 2])
    """
    poly = polynomial(f, degree)
    fix = check_normalizer(poly, normalize, normalizer_fix)
    naive.check_inputs(q, k, v, chunk=chunk, scale=scale, eps=eps)
    check_feature_count(poly, q.shape[-1], v.shape[-1])
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if choose_backend(q, backend) == "torch":
        return naive.chunk_attention(q, k, v, poly, scale=scale, causal=causal, normalize=normalize,
                                     normalizer_fix=fix, eps=eps, chunk=64 if chunk is None else chunk,
                                     tables=tables, check_output=check_output)
    tuning = dict(tuning or {})
    force = tuning.pop("quadratic", None)
    if chunk is None and segments is None and quadratic_route(poly, q, k, v, causal, check_output=check_output,
                                                              force=force):
        from fastattn.kernels.poly_flash import poly_flash_attention

        return poly_flash_attention(q, k, v, poly, scale=scale, is_causal=causal, normalize=normalize,
                                    normalizer_fix=fix, eps=eps)
    mod = load_module(poly)
    try:
        return mod.poly_attention(q, k, v, scale=scale, causal=causal, normalize=normalize,
                                  normalizer_fix=fix, eps=eps, chunk=chunk, block_f=block_f,
                                  block_v=block_v, segments=segments, check_output=check_output,
                                  tuning=tuning or None)
    except ValueError as exc:
        if isinstance(exc, KernelError):
            raise
        raise KernelError(str(exc)) from exc
