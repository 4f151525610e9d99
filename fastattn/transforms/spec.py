"""``Spec``: an entrywise function f of the score x, as an exact symbolic object.

A spec is defined once, as a sympy expression; its class, Taylor series,
remainder bounds, positivity and feature maps are all derived from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from numbers import Real

import mpmath
import numpy as np
import sympy as sp

from fastattn.budget import limited
from fastattn.errors import SpecError
from fastattn.transforms.classify import canonical, check_limits, check_real_at_zero, classify
from fastattn.transforms.parse import X, parse_spec
from fastattn.transforms.enclosure import taylor_error_at, taylor_remainder
from fastattn.transforms.series import enclosed_coefficients, rational_remainder, sup_on_disc, taylor_coefficients

__all__ = ["Spec", "spec", "Positivity", "KINDS"]

KINDS = ("polynomial", "entire", "analytic", "not-analytic")

_MAX_TAYLOR_DEGREE = 200
#: Wall-clock budgets (s) of the steps whose cost the static limits of the parser cannot bound.
_CLASSIFY_SECONDS = 2.5
_SERIES_SECONDS = 2.5
_BOUND_SECONDS = 2.5
_POSITIVITY_SECONDS = 2.0
#: Cells of the real-interval Lagrange bound (the refinement stops there: the same bound on every machine), and
#: a wall-clock guard that only a heavily loaded machine reaches (it returns the bound so far, still rigorous).
_INTERVAL_CELLS = 64
_INTERVAL_SECONDS = 4.0
#: The real-interval bound is tried when the others exceed this multiple of an attained error.
_LOOSE = 4


def _round_up(value) -> float:
    """Float >= value (value an mpmath number or sympy number), rounded outward."""
    f = float(mpmath.mpf(value) * (1 + mpmath.mpf(10) ** -25))
    return math.nextafter(f, math.inf)


def _interval_seconds() -> float:
    """The real-interval bound's budget, ending half a second before the enclosing :func:`limited` budget does."""
    from fastattn.budget import _deadline  # the enclosing deadline; the interval bound stops early, it never fails

    if not _deadline:
        return _INTERVAL_SECONDS
    return max(0.0, min(_INTERVAL_SECONDS, _deadline[-1] - time.monotonic() - 0.5))


def _fraction_up(value: Fraction) -> float:
    """The float nearest above the rational value."""
    out = float(value)
    return out if Fraction(out) >= value else math.nextafter(out, math.inf)


def _fraction_above(value: sp.Expr) -> Fraction:
    """A rational >= value (value itself when it is rational): bounds on a larger interval hold on the smaller."""
    if value.is_Rational:
        return Fraction(int(value.p), int(value.q))
    return Fraction(int(sp.ceiling(value * 2**64)), 2**64)


def _as_rational(value, name: str) -> sp.Rational:
    if isinstance(value, bool) or not isinstance(value, (Real, sp.Basic)):
        raise SpecError(f"{name}={value!r} is not a real number")
    if isinstance(value, sp.Basic):
        if not (value.is_number and value.is_real and value.is_finite):
            raise SpecError(f"{name}={value} is not a finite real number")
        return value
    f = float(value)
    if not math.isfinite(f):
        raise SpecError(f"{name}={value!r} is not finite")
    return sp.Integer(value) if isinstance(value, int) else sp.Rational(f)


@dataclass(frozen=True)
class Positivity:
    """The answer of :meth:`Spec.is_positive`.

    ``positive`` is True (proved), False (``counterpoint`` is a point of the
    interval with f(counterpoint) <= 0, ``value`` its exact or 50-digit value) or
    None (undecided; ``reason`` says what was tried).
    """

    positive: bool | None
    interval: tuple
    reason: str
    counterpoint: sp.Expr | None = None
    value: sp.Expr | None = None

    def __bool__(self) -> bool:
        return self.positive is True


@dataclass(frozen=True, eq=False)
class Spec:
    """An entrywise function f(x) of the attention score x = q·k.

    Build one with :func:`spec`. Everything here is exact until asked for floats.

    Examples
    --------
    >>> f = spec("1 + x + x**2/2")
    >>> f.kind, f.degree, f.coefficients(3)
    ('polynomial', 2, [1, 1, 1/2, 0])
    >>> spec("exp(x)").remainder_bound(2, 1)   # e^1 - 5/2, rounded up  # doctest: +ELLIPSIS
    0.218281828459045...
    """

    expr: sp.Expr
    source: str
    params: Mapping[str, sp.Expr] = field(default_factory=dict)
    #: The expression as written, when canonicalisation changed it (sin(x)**2 + cos(x)**2 became 1).
    written: sp.Expr | None = None

    # -- classification ------------------------------------------------------------------------
    @cached_property
    def _classification(self) -> tuple[str, str, sp.Expr | None, tuple | None]:
        with limited(_CLASSIFY_SECONDS, f"classifying {self.source!r} (its singularities)"):
            return classify(self.expr)

    @property
    def kind(self) -> str:
        """One of ``"polynomial"``, ``"entire"``, ``"analytic"`` (finite radius), ``"not-analytic"``."""
        return self._classification[0]

    @property
    def reason(self) -> str:
        """One line saying why :attr:`kind` is what it is."""
        if self.written is not None:
            return f"{self._classification[1]} (written as {self.written}, which simplifies to {self.expr})"
        return self._classification[1]

    @property
    def radius(self) -> sp.Expr | None:
        """Radius of convergence of the Taylor series at 0 (``sympy.oo`` when entire, None when not analytic)."""
        return self._classification[2]

    @property
    def is_polynomial(self) -> bool:
        return self.kind == "polynomial"

    @cached_property
    def degree(self) -> int | None:
        """The degree of a polynomial spec, None for any other kind; the zero function has degree 0 (and rank 0)."""
        return max(0, sp.Poly(self.expr, X).degree()) if self.is_polynomial else None

    # -- series ----------------------------------------------------------------------------------
    def coefficients(self, p: int | None = None) -> list[sp.Expr]:
        """Exact Taylor coefficients a_0..a_p at 0 (p defaults to the degree of a polynomial)."""
        p = self._check_degree_arg(p)
        if self.is_polynomial:
            coeffs = sp.Poly(self.expr, X).all_coeffs()[::-1]
            coeffs = coeffs + [sp.Integer(0)] * (p + 1 - len(coeffs))
            return [sp.nsimplify(c) if c.is_Float else c for c in coeffs[: p + 1]]
        if self.kind == "not-analytic":
            raise SpecError(f"{self.source!r} has no Taylor series: {self.reason}")
        return self._series(p)[: p + 1]

    def _series(self, p: int) -> list[sp.Expr]:
        cached = self.__dict__.get("_series_cache")
        if cached is None or len(cached) <= p:
            G, c = self._classification[3]
            want = max(p, 8)
            with limited(_SERIES_SECONDS, f"the exact Taylor coefficients of {self.source!r} up to degree {want}"):
                if c is None:
                    cached = taylor_coefficients(G, want)
                else:
                    # f(x) = G(t) with t**2 = c*x and G even: a_n = [t**(2n)] G * c**n
                    even = taylor_coefficients(G, 2 * want)
                    cached = [even[2 * n] * c**n for n in range(want + 1)]
            object.__setattr__(self, "_series_cache", cached)
        return cached

    def _check_degree_arg(self, p) -> int:
        if p is None:
            if self.degree is None:
                raise SpecError(f"{self.source!r} is {self.kind}; pass the truncation degree p explicitly")
            return self.degree
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
            raise SpecError(f"degree p={p!r} must be an integer")
        if p < 0:
            raise SpecError(f"degree p={p} must be >= 0")
        if p > _MAX_TAYLOR_DEGREE:
            raise SpecError(f"degree p={p} is above the limit {_MAX_TAYLOR_DEGREE}")
        return int(p)

    def taylor(self, p: int) -> Spec:
        """The Taylor polynomial of degree p at 0, as a polynomial Spec."""
        poly = sum((c * X**k for k, c in enumerate(self.coefficients(p))), sp.Integer(0))
        return Spec(sp.expand(poly), f"taylor({self.source}, {p})", dict(self.params))

    def remainder_bound(self, p: int, R, method: str = "best"):
        """Rigorous bound on ``sup_{|x| <= R} |f(x) - taylor(p)(x)|``.

        Parameters
        ----------
        p : int
            Truncation degree.
        R : real
            Radius of the interval (for analytic f, R must be below :attr:`radius`).
        method : {"best", "lagrange", "cauchy", "rational"}
            ``"lagrange"``: the Lagrange remainder in closed form for c·exp(a·x+b), c·sin(a·x+b)
            and c·cos(a·x+b); for other f its integral form with f^(p+1) enclosed cell by cell
            on the real interval (:func:`~fastattn.transforms.enclosure.taylor_remainder`).
            ``"cauchy"``: enclosed coefficients up to degree p+30 plus a Cauchy-estimate tail
            from a certified bound on |f| over a complex disc. ``"rational"``: the exact tail
            x^(p+1) N(x)/Q(x) of a rational f with rational coefficients
            (:func:`~fastattn.transforms.series.rational_remainder`). ``"best"``: the smallest of
            those that apply; the real-interval Lagrange form is computed only when the others
            are above 4x an error the truncation attains at sample points.

        Returns
        -------
        sympy.Rational or float
            Exact for polynomials with rational coefficients; otherwise a float
            rounded upward.
        """
        with limited(2 * _BOUND_SECONDS, f"the remainder bound of {self.source!r} at degree {p}"):
            return self._remainder_bound(p, R, method)

    def _remainder_bound(self, p: int, R, method: str = "best"):
        p = self._check_degree_arg(p)
        R = _as_rational(R, "R")
        if R < 0:
            raise SpecError(f"radius R={R} must be >= 0")
        if method not in ("best", "lagrange", "cauchy", "rational"):
            raise SpecError(f"method={method!r}; choose 'best', 'lagrange', 'cauchy' or 'rational'")
        if self.kind == "not-analytic":
            raise SpecError(f"{self.source!r} has no Taylor remainder bound: {self.reason}")
        if self.is_polynomial:
            tail = sum((abs(c) * R**k for k, c in enumerate(self.coefficients(max(p, self.degree))) if k > p), sp.Integer(0))
            return tail if tail.is_Rational else _round_up(sp.N(tail, 40))
        if self.radius is not sp.oo and not R < self.radius:
            raise SpecError(
                f"R={R} is not inside the radius of convergence {self.radius} of {self.source!r}: "
                "the Taylor series diverges there"
            )
        Rq = _fraction_above(R)
        candidates = []
        if method in ("best", "rational"):
            tail = rational_remainder(self.expr, p, Rq)
            if tail is None and method == "rational":
                raise SpecError(f"{self.source!r} is not a rational function with rational coefficients; "
                                "use method='best'")
            if tail is not None:
                # exact to within 5 %: nothing below can beat it by more
                return _fraction_up(tail[0])
        closed = None
        if method in ("best", "lagrange"):
            closed = _lagrange_bound(self.expr, p, R)
            if closed is not None:
                candidates.append(closed)
        if method in ("best", "cauchy"):
            try:
                candidates.append(self._cauchy_bound(p, R))
            except SpecError:
                if method == "cauchy":
                    raise
        if (method == "lagrange" and closed is None) or (method == "best" and self._loose(p, Rq, candidates)):
            interval = taylor_remainder(self.expr, p, Rq, seconds=_interval_seconds(), max_cells=_INTERVAL_CELLS)
            if interval is not None:
                candidates.append(_fraction_up(interval[0]))
        if not candidates:
            raise SpecError(f"could not bound the Taylor remainder of {self.source!r} on |x| <= {R}: no complex "
                            "disc bound and no enclosure of its derivatives on the real interval")
        return min(candidates)

    def _loose(self, p: int, R: Fraction, candidates: list) -> bool:
        """Whether the best bound so far is above 4x the error T_p attains at 16 sample points (or there is none).

        A bound below 1e-35 of the size of the terms of T_p is not called loose: the 50-digit
        coefficient enclosures cannot resolve the attained error there.
        """
        if not candidates:
            return R > 0
        with mpmath.workdps(50):
            coeffs = self._enclosed_series(p)[: p + 1]
            size = max(max(abs(c.a), abs(c.b)) * mpmath.mpf(R.numerator) ** k / mpmath.mpf(R.denominator) ** k
                       for k, c in enumerate(coeffs))
            if min(candidates) < size * mpmath.mpf(10) ** -35:
                return False
        points = [s * R * k / 8 for s in (1, -1) for k in range(1, 9)]
        return min(candidates) > _LOOSE * taylor_error_at(self.expr, coeffs, points, digits=50)

    def _cauchy_bound(self, p: int, R) -> float:
        if R == 0:
            return 0.0
        with limited(_BOUND_SECONDS, f"the Cauchy remainder bound of {self.source!r} at degree {p}"):
            return self._cauchy_bound_unlimited(p, R)

    def _cauchy_bound_unlimited(self, p: int, R) -> float:
        extra = 30
        G, c = self._classification[3]
        with mpmath.workdps(50):
            coeffs = self._enclosed_series(p + extra)
            scale = 1 if c is None else mpmath.mpf(sp.N(abs(c), 50))
            Rm = mpmath.mpf(sp.N(R, 50))
            head = mpmath.fsum(max(abs(mpmath.mpf(coeffs[k].a)), abs(mpmath.mpf(coeffs[k].b))) * (scale * Rm) ** k
                               for k in range(p + 1, p + extra + 1))
            best = mpmath.inf
            limit = mpmath.mpf(sp.N(self.radius, 50)) if self.radius is not sp.oo else mpmath.inf
            radii = [Rm * (1 + t) if Rm > 0 else mpmath.mpf(t) for t in (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8)]
            if limit < mpmath.inf and Rm > 0:
                # just inside the radius (R = 0.99 of 1) no disc 5 % larger exists: try ones in between
                radii += [Rm + (limit - Rm) * s for s in (0.25, 0.5, 0.75)]
            for r in radii:
                if not r < limit:
                    continue
                M = self._sup_on_disc(r)
                if M is None:
                    continue
                tail = M * (Rm / r) ** (p + extra + 1) / (1 - Rm / r)
                best = min(best, tail)
            if best == mpmath.inf:
                raise SpecError(f"could not bound |{self.source}| on a complex disc around |x| <= {R}")
            return _round_up(head + best)

    def _enclosed_series(self, n: int) -> list:
        """Intervals (50 digits) containing a_0..a_n; cached, since taylor_rank asks for every p in turn."""
        from mpmath import iv

        cached = self.__dict__.get("_enclosed_cache")
        if cached is None or len(cached) <= n:
            G, c = self._classification[3]
            # taylor_rank asks for p + 30 with p = 0..40: one walk to 72 serves the whole search
            want = max(n, 72, 2 * len(cached or []))
            old, iv.dps = iv.dps, 50
            try:
                # |a_k| from interval enclosures: exact coefficients of nested functions grow huge
                enclosed = enclosed_coefficients(G, want if c is None else 2 * want)
            finally:
                iv.dps = old
            cached = enclosed if c is None else [enclosed[2 * k] for k in range(want + 1)]
            object.__setattr__(self, "_enclosed_cache", cached)
        return cached

    def _sup_on_disc(self, r):
        """Upper bound on |f| over |x| <= r (mpmath), or None; cached per radius."""
        cache = self.__dict__.setdefault("_sup_cache", {})
        key = mpmath.nstr(r, 40)
        if key not in cache:
            G, c = self._classification[3]
            # |f| on |x| <= r is |G| on |t| <= sqrt(|c| r) in the even-root form
            cache[key] = sup_on_disc(G, r if c is None else mpmath.sqrt(mpmath.mpf(sp.N(abs(c), 50)) * r))
        return cache[key]

    # -- positivity --------------------------------------------------------------------------------
    def is_positive(self, interval=(-sp.oo, sp.oo)) -> Positivity:
        """Decide whether f > 0 on a closed interval (ends may be infinite).

        Polynomials with rational coefficients are decided exactly (Sturm root
        counting). Other specs are proved positive by sympy's assumptions (whole
        line) or interval arithmetic (finite interval), or refuted by a point
        where f <= 0, certified with 50-digit evaluation.

        >>> spec("1 + x + x**2/2").is_positive().positive
        True
        >>> spec("1 + x").is_positive((-2, 0)).counterpoint
        -1
        """
        lo, hi = _interval(interval)
        from fastattn.transforms import positivity

        try:
            with limited(_POSITIVITY_SECONDS, "deciding positivity"):
                return positivity.decide(self, lo, hi)
        except SpecError as exc:
            return Positivity(None, (lo, hi), f"undecided: {exc}")

    # -- numbers -----------------------------------------------------------------------------------
    @cached_property
    def _numpy_fn(self) -> Callable:
        import scipy.special

        return sp.lambdify(X, self.expr, modules=[{"erf": scipy.special.erf, "Heaviside": _heaviside}, "numpy"])

    def __call__(self, x):
        """Evaluate f elementwise in float64 (numpy) — a reference, not a fast path."""
        arr = np.asarray(x, dtype=np.float64)
        form = self._classification[3]
        if form is not None and form[1] is not None:
            # cosh(sqrt(x)) is real for x < 0 too (cos(sqrt(-x))): evaluate through complex numbers
            values = np.real(self._numpy_fn(arr.astype(np.complex128)))
        else:
            values = self._numpy_fn(arr)
        # A constant spec gives a scalar: broadcast it to the input's shape.
        return np.broadcast_to(np.asarray(values, dtype=np.float64), arr.shape).copy()

    def __str__(self) -> str:
        return self.source

    def __repr__(self) -> str:
        return f"Spec({self.source!r}, kind={self.kind!r})"

    def _repr_markdown_(self) -> str:
        return f"**{self.source}** — f(x) = ${sp.latex(self.expr)}$ — *{self.kind}*: {self.reason}"


def _heaviside(x, h0=0.5):
    return np.heaviside(x, h0)


def _lagrange_bound(e: sp.Expr, p: int, R) -> float | None:
    """Lagrange remainder for c·exp(a·x+b), c·sin(a·x+b), c·cos(a·x+b); None for other forms."""
    c, rest = e.as_independent(X, as_Add=False)
    if not isinstance(rest, (sp.exp, sp.sin, sp.cos)):
        return None
    arg = rest.args[0]
    if not arg.is_polynomial(X) or sp.Poly(arg, X).degree() != 1:
        return None
    a, b = sp.Poly(arg, X).all_coeffs()
    n = p + 1
    if isinstance(rest, sp.exp):
        # |f^(n)(xi)| = |c| |a|^n e^(a xi + b) <= |c| |a|^n e^(|a| R + b)
        sup = abs(c) * abs(a) ** n * sp.exp(abs(a) * R + b)
    else:
        sup = abs(c) * abs(a) ** n
    return _round_up(sp.N(sup * R**n / sp.factorial(n), 50))


def _interval(interval) -> tuple[sp.Expr, sp.Expr]:
    if not isinstance(interval, (tuple, list)) or len(interval) != 2:
        raise SpecError(f"interval={interval!r} must be a pair (lo, hi)")
    ends = []
    for name, v in zip(("lo", "hi"), interval):
        if v in (sp.oo, -sp.oo) or (isinstance(v, float) and math.isinf(v)):
            ends.append(sp.oo if v > 0 else -sp.oo)
        else:
            ends.append(_as_rational(v, name))
    if not ends[0] <= ends[1]:
        raise SpecError(f"interval {interval!r} is empty (lo > hi)")
    return ends[0], ends[1]


def spec(f, *, params: Mapping[str, object] | None = None, name: str | None = None,
         coefficients: Sequence | Callable[[int], object] | None = None) -> Spec:
    """Build a :class:`Spec` from a string, a sympy expression or a callable.

    Parameters
    ----------
    f : str, sympy.Expr, Spec or callable
        A function of ``x``. A string is parsed safely (nothing in it is executed;
        see :mod:`fastattn.transforms.parse`). A callable must come with
        ``coefficients`` (its Taylor series), from which the spec is built as a
        polynomial (a finite list) — for an infinite series pass a sympy
        expression instead.
    params : mapping, optional
        Named real constants used in the string, e.g. ``{"tau": 8}``.
    name : str, optional
        Display name (defaults to the text).
    coefficients : sequence, optional
        Taylor coefficients a_0..a_p declared for a callable.

    Examples
    --------
    >>> spec("exp(x/tau)", params={"tau": 4}).coefficients(2)
    [1, 1/4, 1/32]
    >>> spec("__import__('os')")
    Traceback (most recent call last):
    ...
    fastattn.errors.SpecError: name '__import__' is not allowed at column 1 in spec "__import__('os')"
    """
    if isinstance(f, Spec):
        return f
    if isinstance(f, str):
        written = parse_spec(f, params)
        expr = canonical(written)
        check_real_at_zero(expr, f.strip())
        return Spec(expr, name or f.strip(), dict(params or {}), None if expr == written else written)
    if isinstance(f, sp.Basic):
        if not isinstance(f, sp.Expr):
            raise SpecError(f"a sympy spec must be an expression, got {type(f).__name__}")
        free = f.free_symbols
        xs = [s for s in free if s.name == "x"]
        others = sorted(s.name for s in free if s.name != "x")
        if others:
            raise SpecError(f"spec {f} has variables {others} besides x; substitute numbers for them first")
        expr = f.subs(xs[0], X) if xs else f
        check_limits(expr)
        written, expr = expr, canonical(expr)
        check_real_at_zero(expr, str(expr))
        return Spec(expr, name or str(written), {}, None if expr == written else written)
    if callable(f):
        if coefficients is None:
            raise SpecError(
                "a callable spec needs its series: pass coefficients=[a0, a1, ...] "
                "(or give the function as a string or sympy expression)"
            )
        coeffs = list(coefficients) if not callable(coefficients) else [coefficients(k) for k in range(_MAX_TAYLOR_DEGREE)]
        exact = [sp.nsimplify(c, rational=True) if isinstance(c, float) else sp.sympify(c) for c in coeffs]
        expr = sum((c * X**k for k, c in enumerate(exact)), sp.Integer(0))
        probe = np.linspace(-0.5, 0.5, 7)
        got = np.array([float(f(t)) for t in probe])
        want = np.array([float(expr.subs(X, sp.Rational(str(t)))) for t in probe])
        if not np.allclose(got, want, rtol=1e-6, atol=1e-9):
            raise SpecError(
                f"the callable and its declared coefficients disagree on [-0.5, 0.5] "
                f"(max difference {np.max(np.abs(got - want)):.3g})"
            )
        return Spec(expr, name or getattr(f, "__name__", "callable"), {})
    raise SpecError(f"cannot make a spec from {type(f).__name__}; pass a string such as 'exp(x)'")
