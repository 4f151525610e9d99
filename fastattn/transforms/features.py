"""Explicit feature maps: phi(q) · psi(k) = f(scale · q·k), exactly or within a proven bound.

Feature maps come from a registry (:data:`FEATURE_MAPS`) keyed by method name:

``"exact"``     a polynomial f, in the symmetric-tensor basis.
``"taylor"``    any analytic f truncated at degree p, with :meth:`Spec.remainder_bound`.
``"chebyshev"`` / ``"minimax"``  best uniform approximations of a continuous f on |x| <= radius, with
                a certified bound (:mod:`fastattn.transforms.approx`).
``"random"``    positive random features for exp (FAVOR+), the comparison baseline.

and :func:`gaussian_feature_map` for exp(-‖q-k‖²/2σ²) (per-row prefactors × Taylor).

The symmetric-tensor basis: (q·k)^j = Σ_{|α|=j} (j!/α!) q^α k^α, with one feature per
multi-index α (C(d+j-1, j) of them) instead of d^j Kronecker entries; feature α of
degree j carries the weight sqrt(|a_j| s^j j!/α!), and the sign of a_j goes to psi.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Real

import sympy as sp
import torch
from mpmath import iv

from fastattn.errors import FeatureMapError
from fastattn.transforms.intervals import mpf_to_fraction
from fastattn.transforms.parse import X
from fastattn.transforms.spec import Spec, spec as make_spec

__all__ = [
    "FeatureMap",
    "PolynomialFeatureMap",
    "RandomFeatureMap",
    "GaussianFeatureMap",
    "FEATURE_MAPS",
    "register_feature_map",
    "feature_map",
    "gaussian_feature_map",
    "symmetric_dim",
    "monomial_indices",
]

FEATURE_MAPS: dict[str, Callable[..., "FeatureMap"]] = {}


def register_feature_map(name: str):
    """Decorator adding a feature-map builder ``fn(spec, dim, **options)`` to :data:`FEATURE_MAPS`."""

    def deco(fn):
        if name in FEATURE_MAPS:
            raise ValueError(f"feature map {name!r} is registered twice")
        FEATURE_MAPS[name] = fn
        return fn

    return deco


def symmetric_dim(d: int, j: int) -> int:
    """Number of degree-j monomials in d variables: C(d + j - 1, j)."""
    return math.comb(d + j - 1, j)


def monomial_indices(d: int, j: int) -> torch.Tensor:
    """All multi-indices of degree j over d variables as sorted index tuples, shape [C(d+j-1, j), j]."""
    rows = list(itertools.combinations_with_replacement(range(d), j))
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), j)


def _multinomial(idx: tuple[int, ...]) -> int:
    """j! / α! for the multi-index α given as a sorted index tuple."""
    out = math.factorial(len(idx))
    for _, group in itertools.groupby(idx):
        out //= math.factorial(len(list(group)))
    return out


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise FeatureMapError(f"dim={dim!r} must be an integer >= 1 (the head dimension of q and k)")
    return dim


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(float(scale)):
        raise FeatureMapError(f"scale={scale!r} must be a finite real number")
    return float(scale)


@dataclass(eq=False)
class FeatureMap:
    """Maps (..., dim) tensors to (..., dim_out) features with phi(q)·psi(k) ≈ f(scale·q·k).

    Subclasses implement :meth:`_phi` and :meth:`_psi`; this class validates inputs.
    """

    spec: Spec | None
    dim: int
    dim_out: int
    method: str
    scale: float = 1.0
    exact: bool = False

    def _validate(self, X: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(X, torch.Tensor):
            raise FeatureMapError(f"{name} expects a torch.Tensor, got {type(X).__name__}")
        if X.ndim < 1 or X.shape[-1] != self.dim:
            raise FeatureMapError(f"{name} expects a tensor of shape (..., {self.dim}), got {tuple(X.shape)}")
        if not X.is_floating_point():
            raise FeatureMapError(f"{name} expects a floating-point tensor, got {X.dtype}")
        if not torch.isfinite(X).all():
            raise FeatureMapError(f"{name} got non-finite values (NaN or Inf) in its input")
        return X

    def phi(self, X: torch.Tensor) -> torch.Tensor:
        """Query features, shape (..., dim_out)."""
        return self._phi(self._validate(X, "phi"))

    def psi(self, X: torch.Tensor) -> torch.Tensor:
        """Key features, shape (..., dim_out)."""
        return self._psi(self._validate(X, "psi"))

    def kernel(self, Q: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """phi(Q) psi(K)^T: the approximated matrix f(scale · Q K^T)."""
        return self.phi(Q) @ self.psi(K).transpose(-1, -2)

    def error_bound(self, R) -> float | sp.Rational | None:
        """Bound on |phi(q)·psi(k) - f(scale·q·k)| for |scale·q·k| <= R (None: no deterministic bound)."""
        raise NotImplementedError

    def _phi(self, X):
        raise NotImplementedError

    def _psi(self, X):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec}, dim={self.dim}, dim_out={self.dim_out}, method={self.method!r})"


@dataclass(eq=False, repr=False)
class PolynomialFeatureMap(FeatureMap):
    """phi(q)·psi(k) = Σ_j a_j (scale·q·k)^j in the symmetric-tensor basis."""

    coefficients: dict[int, sp.Expr] = field(default_factory=dict)
    truncated_from: Spec | None = None
    degree: int = 0
    #: The certified approximation the coefficients come from (methods with ``radius=``), else None.
    approximation: object = None

    def __post_init__(self):
        self._blocks = []  # (degree, indices [n_j, j], weights [n_j], signs [n_j])
        for j, a in sorted(self.coefficients.items()):
            if a == 0:
                continue
            idx = monomial_indices(self.dim, j)
            mult = torch.tensor([_multinomial(tuple(r)) for r in idx.tolist()] if j else [1], dtype=torch.float64)
            aj = float(a) * self.scale**j
            self._blocks.append((j, idx, torch.sqrt(abs(aj) * mult), math.copysign(1.0, aj)))

    @property
    def degrees(self) -> list[int]:
        """Degrees j with a non-zero coefficient."""
        return [b[0] for b in self._blocks]

    def _features(self, X: torch.Tensor, signed: bool) -> torch.Tensor:
        parts = []
        for j, idx, weight, sign in self._blocks:
            w = weight.to(dtype=X.dtype, device=X.device)
            if sign < 0 and signed:
                w = -w
            if j == 0:
                mono = torch.ones(*X.shape[:-1], 1, dtype=X.dtype, device=X.device)
            else:
                mono = X[..., idx.to(X.device)].prod(dim=-1)  # [..., n_j]
            parts.append(mono * w)
        if not parts:
            return torch.zeros(*X.shape[:-1], 0, dtype=X.dtype, device=X.device)
        return torch.cat(parts, dim=-1)

    def _phi(self, X):
        return self._features(X, signed=False)

    def _psi(self, X):
        return self._features(X, signed=True)

    def error_bound(self, R):
        if self.approximation is not None:
            return _approximation_bound(self.approximation, R)
        if self.truncated_from is None:
            return sp.Integer(0)
        return self.truncated_from.remainder_bound(self.degree, R)


def _approximation_bound(a, R) -> float:
    """The certified bound of a, valid for every R up to the radius it was built for."""
    if isinstance(R, bool) or not isinstance(R, (Real, sp.Basic)):
        raise FeatureMapError(f"R={R!r} must be a real number >= 0 (a bound on |scale·q·k|)")
    try:
        Rq = sp.Rational(R)
    except (TypeError, ValueError):
        raise FeatureMapError(f"R={R!r} must be a finite real number >= 0") from None
    if not Rq.is_Rational or Rq < 0:
        raise FeatureMapError(f"R={R!r} must be a finite real number >= 0 (a bound on |scale·q·k|)")
    if Rq > a.radius:
        raise FeatureMapError(f"R={R} is beyond the radius {a.radius} this {a.method} map was certified on; "
                              f"build it with radius={R} (or larger)")
    return a.bound


@register_feature_map("exact")
def _exact(f: Spec, dim: int, *, scale: float = 1.0, degree: int | None = None) -> PolynomialFeatureMap:
    if not f.is_polynomial:
        raise FeatureMapError(
            f"{f.source!r} is {f.kind} ({f.reason}), not a polynomial: there is no finite exact "
            "feature map; use method='taylor' with degree=p for a truncation with an error bound"
        )
    if degree is not None and degree != f.degree:
        raise FeatureMapError(f"degree={degree} given for the exact map of a degree-{f.degree} polynomial; leave it out")
    coeffs = dict(enumerate(f.coefficients()))
    return _poly_map(f, dim, coeffs, scale, "exact", None, f.degree)


@register_feature_map("taylor")
def _taylor(f: Spec, dim: int, *, scale: float = 1.0, degree: int | None = None, radius=None,
            positive: bool = False) -> PolynomialFeatureMap:
    if radius is not None or positive:
        return _approximated(f, dim, "taylor", scale, degree, radius, positive)
    if degree is None:
        if f.is_polynomial:
            return _exact(f, dim, scale=scale)
        raise FeatureMapError(f"{f.source!r} is {f.kind}: pass degree=p for its Taylor truncation")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
        raise FeatureMapError(f"degree={degree!r} must be an integer >= 0")
    if f.kind == "not-analytic":
        raise FeatureMapError(
            f"{f.source!r} has no Taylor series at 0 ({f.reason}), so there is no Taylor feature map; where f is "
            "continuous a uniform polynomial approximation on a bounded range exists (Weierstrass), but it is not built here"
        )
    coeffs = dict(enumerate(f.coefficients(degree)))
    truncated = f if not (f.is_polynomial and degree >= f.degree) else None
    return _poly_map(f, dim, coeffs, scale, "taylor", truncated, degree)


def _approximated(f, dim, method, scale, degree, radius, positive) -> PolynomialFeatureMap:
    """The polynomial map of a certified approximation (fastattn.transforms.approx) on |x| <= radius."""
    from fastattn.errors import SpecError
    from fastattn.transforms import approx

    if degree is None or radius is None:
        raise FeatureMapError(f"method={method!r} needs degree=p and radius=R (the range |scale·q·k| <= R it "
                              f"approximates f on); got degree={degree!r}, radius={radius!r}")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
        raise FeatureMapError(f"degree={degree!r} must be an integer >= 0")
    # the feature count is known before any approximation is computed: refuse early
    _check_count(f, dim, [symmetric_dim(dim, j) for j in range(degree + 1)], degree)
    try:
        a = approx.METHODS[method](f, degree, radius)
        if positive:
            a = approx.positive(a)
    except SpecError as exc:
        raise FeatureMapError(str(exc)) from None
    coeffs = {j: c for j, c in enumerate(a.coefficients)}
    out = _poly_map(f, dim, coeffs, scale, method, None, degree)
    out.exact = a.bound == 0
    out.approximation = a
    return out


@register_feature_map("chebyshev")
def _chebyshev(f: Spec, dim: int, *, scale: float = 1.0, degree: int | None = None, radius=None,
               positive: bool = False) -> PolynomialFeatureMap:
    return _approximated(f, dim, "chebyshev", scale, degree, radius, positive)


@register_feature_map("minimax")
def _minimax(f: Spec, dim: int, *, scale: float = 1.0, degree: int | None = None, radius=None,
             positive: bool = False) -> PolynomialFeatureMap:
    return _approximated(f, dim, "minimax", scale, degree, radius, positive)


def _poly_map(f, dim, coeffs, scale, method, truncated_from, degree):
    bad = [k for k, c in coeffs.items() if not (c.is_real and c.is_finite)]
    if bad:
        raise FeatureMapError(f"coefficient of x^{bad[0]} in {f.source!r} is not a finite real number")
    dim_out = _check_count(f, dim, [symmetric_dim(dim, j) for j, c in coeffs.items() if c != 0], degree)
    return PolynomialFeatureMap(
        spec=f, dim=dim, dim_out=dim_out, method=method, scale=scale, exact=truncated_from is None,
        coefficients=coeffs, truncated_from=truncated_from, degree=degree,
    )


def _check_count(f, dim: int, blocks: list[int], degree: int) -> int:
    """The feature count sum(blocks), or FeatureMapError when it is above MAX_FEATURES (checked before anything is built)."""
    from fastattn.kernels.poly import MAX_FEATURES

    n = sum(blocks)
    if n > MAX_FEATURES:
        raise FeatureMapError(f"{f.source!r} at degree {degree} and dim={dim} needs {n:,} features (symmetric "
                              f"basis, sum_j C(dim + j - 1, j)); the limit is {MAX_FEATURES:,}: lower the degree or the dim")
    return n


@dataclass(eq=False, repr=False)
class RandomFeatureMap(FeatureMap):
    """Positive random features for exp(scale·q·k) (Performer's FAVOR+).

    phi(x) = exp(w_i·x' - ‖x'‖²/2) / sqrt(m) with x' = sqrt(scale)·x and w_i ~ N(0, I):
    unbiased, with error falling like 1/sqrt(m). No deterministic bound.
    """

    seed: int = 0

    def __post_init__(self):
        gen = torch.Generator().manual_seed(self.seed)
        self._W = torch.randn(self.dim_out, self.dim, generator=gen, dtype=torch.float64)

    def _feat(self, X):
        Xs = X * math.sqrt(self.scale)
        W = self._W.to(dtype=X.dtype, device=X.device)
        return torch.exp(Xs @ W.T - 0.5 * (Xs * Xs).sum(-1, keepdim=True)) / math.sqrt(self.dim_out)

    _phi = _feat
    _psi = _feat

    def error_bound(self, R):
        return None


@register_feature_map("random")
def _random(f: Spec, dim: int, *, scale: float = 1.0, features: int = 256, seed: int = 0, degree=None) -> RandomFeatureMap:
    if degree is not None:
        raise FeatureMapError("method='random' takes features=m, not degree")
    if f.expr != sp.exp(X):
        raise FeatureMapError(f"random features are implemented for exp(x) only, got {f.source!r}")
    if scale <= 0:
        raise FeatureMapError(f"random features need scale > 0, got {scale}")
    if isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise FeatureMapError(f"features={features!r} must be an integer >= 1")
    return RandomFeatureMap(spec=f, dim=dim, dim_out=features, method="random", scale=scale, exact=False, seed=seed)


@dataclass(eq=False, repr=False)
class GaussianFeatureMap(FeatureMap):
    """exp(-‖q-k‖²/2σ²) = e^{-‖q‖²/2σ²} e^{-‖k‖²/2σ²} e^{q·k/σ²}, the last factor Taylor-truncated (IFGT)."""

    sigma: float = 1.0
    inner: PolynomialFeatureMap | None = None

    def _feat(self, X, signed):
        pre = torch.exp(-(X * X).sum(-1, keepdim=True) / (2 * self.sigma**2))
        return pre * (self.inner._psi(X) if signed else self.inner._phi(X))

    def _phi(self, X):
        return self._feat(X, False)

    def _psi(self, X):
        return self._feat(X, True)

    def error_bound(self, R):
        """The sup of |phi(q)·psi(k) - exp(-‖q-k‖²/2σ²)| over ‖q‖, ‖k‖ <= R, rounded up.

        With t = q·k/σ² and s = (‖q‖² + ‖k‖²)/2σ² >= |t|, the error of the degree-p map is
        e^{-s} |e^t - T_p(t)| <= e^{-s} Σ_{k>p} s^k/k! = P(Poisson(s) > p), which increases with s
        (its derivative is e^{-s} s^p/p!); so the sup is P(Poisson(S) > p) with S = R²/σ², attained
        at q = k, ‖q‖ = R. Keeping the prefactors matters: bounding them by 1 leaves the bound of
        e^t - T_p(t) on |t| <= S, e^S times larger (8100× at R = 3, σ = 1, degree 4). The number is
        enclosed by interval arithmetic (:func:`_poisson_tail`), so it is rigorous.

        Before (prefactors bounded by 1) and after, against the true sup (mpmath, q = k, ‖q‖ = R):

        ====  ====  ===  ==============  ==========  =========
        R     σ     p    prefactors = 1  this bound  true sup
        ====  ====  ===  ==============  ==========  =========
        3     1     4    7658            0.9450      0.9450
        3     1     12   1007            0.1242      0.1242
        3     1     20   3.559           4.393e-4    4.393e-4
        2     1     8    1.166           0.02136     0.02136
        1     1     4    0.009948        0.003660    0.003660
        ====  ====  ===  ==============  ==========  =========

        >>> fm = gaussian_feature_map(2, sigma=1.0, degree=4)
        >>> round(fm.error_bound(3), 4)            # P(Poisson(9) > 4)
        0.945
        """
        if isinstance(R, bool) or not isinstance(R, (Real, sp.Basic)):
            raise FeatureMapError(f"R={R!r} must be a finite number >= 0 (a bound on the norms of q and k)")
        R = float(R)
        if not math.isfinite(R) or R < 0:
            raise FeatureMapError(f"R={R!r} must be a finite number >= 0 (a bound on the norms of q and k)")
        S = Fraction(R) ** 2 / Fraction(self.sigma) ** 2
        return _poisson_tail(S, self.inner.degree)


def _poisson_tail(S: Fraction, p: int) -> float:
    """P(Poisson(S) > p) = e^{-S} Σ_{k>p} S^k/k!, rounded up (mpmath.iv, outward rounding at 40 digits).

    Below S = p + 1 the tail series is summed until its terms fall under 2^-200 of the sum, the rest
    bounded by a geometric series (term ratios S/(k+1) <= 1/2 from there); above it the complement
    1 - e^{-S} Σ_{k<=p} S^k/k! is at least about 1/2, so it loses no digits.

    >>> _poisson_tail(Fraction(9), 4) > 0.9450
    True
    """
    if S == 0:
        return 0.0
    old = iv.dps
    iv.dps = 40
    try:
        s = iv.mpf(S.numerator) / S.denominator
        if S >= p + 1:
            term, head = iv.mpf(1), iv.mpf(1)
            for k in range(1, p + 1):
                term = term * s / k
                head = head + term
            value = 1 - iv.exp(-s) * head
        else:
            term = iv.mpf(1)
            for k in range(1, p + 2):
                term = term * s / k
            total, k = term, p + 1
            while not (2 * S <= k + 1 and term.b < total.a * iv.mpf(2) ** -200):
                k += 1
                term = term * s / k
                total = total + term
            # the terms after the k-th: each at most half the one before
            value = iv.exp(-s) * (total + iv.mpf([0, 1]) * term * s / (k + 1) * 2)
        up = mpf_to_fraction(value._mpi_[1])
    finally:
        iv.dps = old
    out = float(min(up, Fraction(1)))
    return out if Fraction(out) >= min(up, Fraction(1)) else math.nextafter(out, math.inf)


def gaussian_feature_map(dim: int, *, sigma: float = 1.0, degree: int = 4) -> GaussianFeatureMap:
    """Feature map of the Gaussian kernel exp(-‖q-k‖²/2σ²) (one centre, Taylor/IFGT).

    Examples
    --------
    >>> fm = gaussian_feature_map(3, sigma=2.0, degree=6)
    >>> q, k = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    >>> err = abs(float(fm.phi(q) @ fm.psi(k)) - math.exp(-float(((q - k) ** 2).sum()) / 8))
    >>> err <= fm.error_bound(float(max(q.norm(), k.norm())))
    True
    """
    dim = _check_dim(dim)
    sigma = _check_scale(sigma)
    if sigma <= 0:
        raise FeatureMapError(f"sigma={sigma} must be > 0")
    inner = _taylor(make_spec("exp(x)"), dim, scale=1.0 / sigma**2, degree=degree)
    return GaussianFeatureMap(
        spec=make_spec("exp(x)"), dim=dim, dim_out=inner.dim_out, method="gaussian",
        scale=1.0 / sigma**2, exact=False, sigma=sigma, inner=inner,
    )


def feature_map(f, dim: int, *, method: str | None = None, degree: int | None = None,
                scale: float = 1.0, **options) -> FeatureMap:
    """Build a feature map with phi(q)·psi(k) = f(scale · q·k), exactly or within ``error_bound``.

    Parameters
    ----------
    f : str, sympy expression or Spec
        The function (see :func:`fastattn.spec`).
    dim : int
        Head dimension of q and k.
    method : str, optional
        A key of :data:`FEATURE_MAPS`; default ``"exact"`` for polynomials and
        ``"taylor"`` otherwise.
    degree : int, optional
        Truncation degree for ``"taylor"``; the degree p of ``"chebyshev"`` / ``"minimax"``.
    scale : float
        The score is scale·q·k (e.g. 1/sqrt(dim)).
    **options
        Passed to the builder: ``features``, ``seed`` for ``"random"``; ``radius=R`` for
        ``"chebyshev"``, ``"minimax"`` (required) and ``"taylor"`` (optional): the map approximates f on
        |scale·q·k| <= R and ``error_bound(R')`` is the certified bound of
        :mod:`fastattn.transforms.approx` for every R' <= R (refused beyond); ``positive=True`` shifts
        the polynomial to be positive on the real line (see :func:`fastattn.transforms.approx.positive`).

    Examples
    --------
    >>> feature_map("x**2", dim=4).dim_out
    10
    >>> fm = feature_map("exp(x)", dim=16, degree=2)
    >>> fm.dim_out, float(fm.error_bound(1)) < 0.22
    (153, True)
    >>> fm = feature_map("exp(x)", dim=16, method="minimax", degree=2, radius=1)
    >>> fm.dim_out, fm.error_bound(1) < 0.05      # the best degree-2 error is 0.045
    (153, True)
    """
    f = make_spec(f)
    dim = _check_dim(dim)
    scale = _check_scale(scale)
    if method is None:
        method = "exact" if f.is_polynomial and degree is None else "taylor"
    builder = FEATURE_MAPS.get(method)
    if builder is None:
        raise FeatureMapError(f"unknown feature-map method {method!r}; choose one of {sorted(FEATURE_MAPS)}")
    return builder(f, dim, scale=scale, degree=degree, **options)
