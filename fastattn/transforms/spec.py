"""``Spec``: an entrywise function f of the score x, as an exact symbolic object.

A spec is defined once, as a sympy expression; its class, Taylor series,
remainder bounds, positivity and feature maps are all derived from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from numbers import Real

import mpmath
import numpy as np
import sympy as sp

from fastattn.budget import limited
from fastattn.errors import SpecError
from fastattn.transforms.parse import X, parse_spec
from fastattn.transforms.series import (
    NON_ANALYTIC_FUNCS, NotAnalyticAtZero, disc_bound, enclosed_coefficients, sup_on_disc, taylor_coefficients,
)

__all__ = ["Spec", "spec", "Positivity", "KINDS"]

KINDS = ("polynomial", "entire", "analytic", "not-analytic")

# Nodes that are entire when their arguments are: everything else needs a closer look.
_ENTIRE_FUNCS = (sp.exp, sp.sin, sp.cos, sp.sinh, sp.cosh, sp.erf)
_MAX_TAYLOR_DEGREE = 200
#: Wall-clock budgets (s) of the steps whose cost the static limits of the parser cannot bound.
_CLASSIFY_SECONDS = 2.5
_SERIES_SECONDS = 2.5
_BOUND_SECONDS = 2.5
_POSITIVITY_SECONDS = 2.0
_SIMPLIFY_SECONDS = 1.0


def _round_up(value) -> float:
    """Float >= value (value an mpmath number or sympy number), rounded outward."""
    f = float(mpmath.mpf(value) * (1 + mpmath.mpf(10) ** -25))
    return math.nextafter(f, math.inf)


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
            return _classify(self.expr)

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
        method : {"best", "lagrange", "cauchy"}
            ``"lagrange"``: the Lagrange remainder, for c·exp(a·x+b), c·sin(a·x+b)
            and c·cos(a·x+b). ``"cauchy"``: enclosed coefficients up to degree p+30
            plus a Cauchy-estimate tail from a certified bound on |f| over a complex
            disc. ``"best"``: the smaller of those available.

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
        if method not in ("best", "lagrange", "cauchy"):
            raise SpecError(f"method={method!r}; choose 'best', 'lagrange' or 'cauchy'")
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
        candidates = []
        if method in ("best", "lagrange"):
            lag = _lagrange_bound(self.expr, p, R)
            if lag is None and method == "lagrange":
                raise SpecError(f"no Lagrange bound rule for {self.source!r}; use method='cauchy'")
            if lag is not None:
                candidates.append(lag)
        if method in ("best", "cauchy"):
            candidates.append(self._cauchy_bound(p, R))
        return min(candidates)

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
            for t in (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8):
                r = Rm * (1 + t) if Rm > 0 else mpmath.mpf(t)
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


def _kink_text(node: sp.Expr) -> str:
    """' at x = 0' for Abs(x), Max(x, 0), ... where the kink can be located exactly."""
    if isinstance(node, (sp.Max, sp.Min)) and len(node.args) == 2:
        g = node.args[0] - node.args[1]
    elif node.args:
        g = node.args[0]
    else:
        return ""
    try:
        if g.is_polynomial(X):
            roots = sp.Poly(g, X).real_roots()
            if roots:
                return f" at x = {roots[0]}"
    except (sp.PolynomialError, NotImplementedError):
        pass
    return ""


_KINKS = (sp.Abs, sp.Heaviside, sp.Max, sp.Min, sp.sign)


def _classify(e: sp.Expr) -> tuple[str, str, sp.Expr | None, tuple | None]:
    """(kind, reason, radius, series form); the series form (G, c) says f(x) = G(t) with t**2 = c*x (c None: G = f)."""
    bad = [a for a in e.atoms(*NON_ANALYTIC_FUNCS) if a.has(X)]
    if bad:
        node = min(bad, key=lambda a: len(str(a)))
        return "not-analytic", _kink_reason(e, node), None, None
    if e.is_polynomial(X):
        if e == 0:
            return "polynomial", "the zero function (a polynomial of degree 0, rank 0)", sp.oo, (e, None)
        return "polynomial", f"a polynomial of degree {sp.Poly(e, X).degree()}", sp.oo, (e, None)
    form = (e, None)
    try:
        taylor_coefficients(e, 1)
    except NotAnalyticAtZero as exc:
        even = _even_root_form(e)
        if even is None:
            return "not-analytic", f"no power series at x = 0: {exc.why} ({exc.node})", None, None
        try:
            taylor_coefficients(even[0], 2)
        except NotAnalyticAtZero:
            return "not-analytic", f"no power series at x = 0: {exc.why} ({exc.node})", None, None
        form = even
    G, c = form
    via = "" if c is None else f" (an even function of t = sqrt({c}*x), so a power series in x)"
    singular = _singular_sets(G)
    if not singular:
        return "entire", f"built from entire functions (exp, sin, cos, sinh, cosh, erf, polynomials){via}", sp.oo, form
    radius, how = _radius(G, singular)
    if radius is sp.oo:
        return "entire", f"its singularities are removable: {how}{via}", sp.oo, form
    if c is not None:
        radius = radius**2 / abs(c)
        how = f"{how} in t = sqrt({c}*x)"
    return ("analytic", f"singular at distance {how} from 0, so the Taylor series at 0 converges for |x| < {radius}{via}",
            radius, form)


def _even_root_form(e: sp.Expr) -> tuple[sp.Expr, sp.Expr] | None:
    """(G, c) with f(x) = G(t), t**2 = c*x and G even in t, when every fractional power is sqrt(c*x).

    cosh(sqrt(x)) = cosh(t) and sin(sqrt(x))/sqrt(x) = sin(t)/t are even in t, hence power series in x.
    """
    halves = [p for p in e.atoms(sp.Pow) if p.args[0].has(X) and not p.args[1].is_Integer]
    if not halves:
        return None
    bases = {p.args[0] for p in halves}
    if len(bases) != 1 or not all((2 * p.args[1]).is_Integer for p in halves):
        return None
    c, rest = bases.pop().as_independent(X, as_Add=False)
    if rest != X or not c.is_nonzero:
        return None
    t = sp.Symbol("t", positive=True)
    G = e.subs(X, t**2 / c)
    if any(p.args[0].has(t) and not p.args[1].is_Integer for p in G.atoms(sp.Pow)):
        return None
    try:
        with limited(_SIMPLIFY_SECONDS, "checking that f is even in sqrt(x)"):
            if sp.expand(G.subs(t, -t) - G) != 0:
                return None
    except SpecError:
        return None  # undecided: f stays not analytic, with the reason of its Taylor walk
    return G.subs(t, X), c


def _singular_sets(e: sp.Expr) -> list[tuple[sp.Expr, sp.Expr | None]]:
    """(g, cofactor): the complex zeros of g are the candidate singularities of e.

    cofactor is the rest of the product when g is a simple denominator (g**-1 in a product): a
    zero of g where the cofactor vanishes too is removable.
    """
    out, seen = [], set()
    for node in sp.preorder_traversal(e):
        if not node.has(X):
            continue
        if isinstance(node, sp.Mul):
            for arg in node.args:
                if isinstance(arg, sp.Pow) and arg.args[1] == -1 and arg.args[0].has(X):
                    rest = sp.Mul(*[a for a in node.args if a is not arg])
                    out.append((arg.args[0], rest))
                    seen.add(arg)
        elif isinstance(node, sp.Pow):
            if node in seen:
                continue
            base, expo = node.args
            if expo.has(X):
                if base.has(X):
                    out.append((base, None))
            elif not (expo.is_Integer and expo >= 0):
                out.append((base, sp.Integer(1) if expo == -1 else None))
        elif isinstance(node, sp.log):
            out.append((node.args[0], None))
        elif isinstance(node, sp.tan):
            out.append((sp.cos(node.args[0]), None))
        elif isinstance(node, sp.tanh):
            out.append((sp.cosh(node.args[0]), None))
        elif isinstance(node, sp.atan):
            out.append((1 + node.args[0] ** 2, None))
        elif not isinstance(node, (sp.Add, sp.Mul, sp.Symbol, *_ENTIRE_FUNCS)) and not node.is_number:
            out.append((node, None))
    return out


def _linear(h: sp.Expr) -> tuple[sp.Expr, sp.Expr] | None:
    """(a, b) with h = a*x + b, a != 0, or None."""
    if not h.is_polynomial(X):
        return None
    poly = sp.Poly(h, X)
    if poly.degree() != 1:
        return None
    a, b = poly.all_coeffs()
    return a, b


def _zeros(g: sp.Expr, many: int = 4) -> tuple[list[sp.Expr], bool] | None:
    """(zeros, complete): complex zeros of g nearest 0 (exact where possible), or None when g has no rule.

    Polynomials (roots; floats at 30 digits from degree 3), and the families with infinitely many
    zeros that specs produce: A + B*exp(a*x + b) (sigmoid, softplus, x/(exp(x) - 1)), cosh(a*x + b)
    (tanh) and cos(a*x + b) (tan); for those the zeros with |k| <= many around the nearest.
    """
    if g.is_polynomial(X):
        poly = sp.Poly(g, X)
        if poly.degree() <= 0:
            return [], True
        if poly.degree() <= 2:
            return list(sp.roots(poly).keys()), True
        return [sp.Float(r, 30) for r in poly.nroots(n=30)], True
    A, rest = g.as_independent(X, as_Add=True)
    B, core = rest.as_independent(X, as_Add=False)
    if isinstance(core, (sp.exp, sp.cosh, sp.cos)) and _linear(core.args[0]) is not None:
        a, b = _linear(core.args[0])
        if isinstance(core, sp.exp):
            if A == 0:
                return [], True
            # a*x + b = log(-A/B) + 2*pi*i*k
            base = sp.log(-A / B) - b
            shift = 2 * sp.pi * sp.I
        elif A != 0:
            return None
        elif isinstance(core, sp.cosh):
            base, shift = sp.pi * sp.I / 2 - b, sp.pi * sp.I
        else:
            base, shift = sp.pi / 2 - b, sp.pi
        # the k whose zero is nearest 0, then a few on each side
        k0 = int(round(-float(sp.re(base / shift))))
        return [sp.expand((base + k * shift) / a) for k in range(k0 - many, k0 + many + 1)], False
    return None


def _removable(g: sp.Expr, cofactor: sp.Expr | None, r: sp.Expr) -> bool:
    """True when r is provably a removable zero: a simple zero of g where the cofactor vanishes exactly."""
    if cofactor is None:
        return False
    try:
        with limited(_SIMPLIFY_SECONDS, "checking a removable singularity"):
            if sp.simplify(cofactor.subs(X, r)) != 0:
                return False
            return sp.simplify(sp.diff(g, X).subs(X, r)) != 0
    except SpecError:
        return False  # undecided: keep it as a singularity, which can only understate the radius


def _radius(e: sp.Expr, singular: list) -> tuple[sp.Expr, str]:
    """Distance from 0 to the nearest non-removable zero of the singular sets.

    Exact for polynomial singular sets and the exp / cosh / cos families; otherwise a certified
    lower bound: the largest disc on which the centred form of e stays finite.
    """
    best, best_text, unknown, skipped = sp.oo, "", False, 0
    for g, cofactor in singular:
        found = _zeros(g)
        if found is None:
            unknown = True
            continue
        zeros, complete = found
        for r in sorted(zeros, key=lambda r: float(abs(sp.N(r, 30)))):
            if r == 0 or (r.is_Float and abs(r) < 1e-25):
                skipped += 1  # f is analytic at 0: its Taylor walk succeeded
                continue
            if _removable(g, cofactor, r):
                skipped += 1
                continue
            dist = abs(r) if r.is_Float else sp.sqrt(sp.expand(sp.re(r) ** 2 + sp.im(r) ** 2))
            if best is sp.oo or float(dist) < float(best):
                best, best_text = dist, f"|{r}| = {dist}"
            break
        else:
            # every zero looked at was removable, but the family goes on: no exact answer
            unknown = unknown or not complete
    if unknown:
        lo, hi = mpmath.mpf(0), mpmath.mpf(64) if best is sp.oo else mpmath.mpf(sp.N(best, 30))
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if disc_bound(e, mid) is not None else (lo, mid)
        lower = sp.Rational(str(mpmath.nstr(lo, 12)))
        if best is sp.oo or lower < best:
            return lower, f">= {lower} (certified lower bound; no singularity located exactly)"
    if best is sp.oo:
        return sp.oo, f"{skipped} zero(s) of denominators, each cancelled by a zero of the numerator"
    return best, best_text


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


def _canonical(expr: sp.Expr) -> sp.Expr:
    """A form of f whose verdicts follow the mathematics rather than the spelling.

    Kinks whose sides agree are removed (Max(x,0) + Min(x,0) is x); identities that make f a
    polynomial or remove a singularity are applied (sin(x)**2 + cos(x)**2 is 1, (exp(2x)-1)/(exp(x)-1)
    is exp(x)+1); rational functions are cancelled. Each step has a time budget; one that runs out
    leaves the expression as it was.
    """
    if not expr.has(X):
        return expr
    try:
        expr = _resolve_kinks(expr)
        if expr.is_polynomial(X):
            return expr
        if expr.is_rational_function(X):
            with limited(_SIMPLIFY_SECONDS, "cancelling a rational function"):
                return sp.cancel(expr)
        return _simpler(expr)
    except SpecError:
        return expr


def _rank(e: sp.Expr) -> int:
    """0 polynomial, 1 entire, 2 analytic or unknown, 3 not analytic at 0 (a cheap look, no radius)."""
    if e.is_polynomial(X):
        return 0
    if any(a.has(X) for a in e.atoms(*NON_ANALYTIC_FUNCS)):
        return 3
    try:
        taylor_coefficients(e, 1)
    except NotAnalyticAtZero:
        return 3
    return 1 if not _singular_sets(e) else 2


def _simpler(expr: sp.Expr) -> sp.Expr:
    """expr, or an identity-preserving rewrite of it (cancel, trigsimp) of a strictly better kind."""
    best, rank = expr, _rank(expr)
    if rank == 0:
        return expr
    for name, rewrite in (("cancel", sp.cancel), ("trigsimp", sp.trigsimp)):
        try:
            with limited(_SIMPLIFY_SECONDS, f"{name} on the spec"):
                candidate = rewrite(expr)
                r = _rank(candidate)
        except SpecError:
            continue
        if r < rank and _same_function(candidate, expr) is not False:
            best, rank = candidate, r
    return best


def _same_function(a: sp.Expr, b: sp.Expr) -> bool | None:
    """Numeric-then-exact identity check: False if a != b at a sample point, True if a - b simplifies to 0."""
    diff = a - b
    with mpmath.workdps(30):
        for t in (sp.Rational(3, 7), sp.Rational(-5, 11), sp.Rational(13, 10)):
            try:
                v = complex(sp.N(diff.subs(X, t), 30))
            except (TypeError, ValueError, ZeroDivisionError):
                continue
            if v == v and abs(v) > 1e-20 * (1 + abs(complex(sp.N(a.subs(X, t), 30)))):
                return False
    try:
        with limited(_SIMPLIFY_SECONDS, "an identity check"):
            if sp.expand(diff) == 0 or sp.cancel(diff) == 0 or sp.trigsimp(diff) == 0:
                return True
    except SpecError:
        pass
    return None


def _kink_arguments(node: sp.Expr) -> list[sp.Expr]:
    if isinstance(node, (sp.Max, sp.Min)):
        return [a - b for i, a in enumerate(node.args) for b in node.args[i + 1:]]
    return [node.args[0]]


def _branch(node: sp.Expr, t: sp.Rational) -> sp.Expr:
    """The analytic expression that the kink node equals near the sample point t (no kink at t)."""
    if isinstance(node, (sp.Max, sp.Min)):
        values = [a.subs(X, t) for a in node.args]
        pick = max if isinstance(node, sp.Max) else min
        return node.args[values.index(pick(values))]
    g = node.args[0]
    positive = bool(g.subs(X, t) > 0)
    if isinstance(node, sp.Abs):
        return g if positive else -g
    if isinstance(node, sp.Heaviside):
        return sp.Integer(1 if positive else 0)
    return sp.Integer(1 if positive else -1)  # sign


def _kink_pieces(expr: sp.Expr) -> tuple[list, list, list] | None:
    """(cuts, samples, pieces): the real line cut at the kinks of expr, and expr without kinks near each sample.

    Handles Abs, Heaviside, Max, Min, sign with polynomial arguments (degree <= 8): the cuts are
    the real roots of the arguments, and each kink is replaced by its branch on each piece.
    None when expr has another kind of kink.
    """
    nodes = [a for a in expr.atoms(*_KINKS) if a.has(X)]
    if not nodes or expr.has(sp.Piecewise, sp.floor, sp.ceiling):
        return None
    with limited(_SIMPLIFY_SECONDS, "locating the kinks of the spec"):
        cuts = set()
        for node in nodes:
            for g in _kink_arguments(node):
                if not g.is_polynomial(X) or g.has(*_KINKS):
                    return None
                poly = sp.Poly(g, X)
                if poly.degree() > 8:
                    return None
                cuts.update(poly.real_roots())
        cuts = sorted(cuts, key=lambda r: float(r))
        if not cuts:
            samples = [sp.Integer(0)]
        else:
            floats = [sp.Rational(str(sp.N(r, 20))) for r in cuts]
            samples = [floats[0] - 1] + [(a + b) / 2 for a, b in zip(floats, floats[1:])] + [floats[-1] + 1]
        pieces = [expr.replace(lambda n: isinstance(n, _KINKS) and n.has(X), lambda n: _branch(n, t)) for t in samples]
    return cuts, samples, pieces


def _resolve_kinks(expr: sp.Expr) -> sp.Expr:
    """The single analytic expression expr equals on every side of its kinks, or expr itself.

    The pieces of :func:`_kink_pieces` must be one function (checked numerically, then exactly)
    that also takes the value of expr at each cut.
    """
    found = _kink_pieces(expr)
    if found is None:
        return expr
    cuts, _, pieces = found
    first = pieces[0]
    if first.has(*_KINKS) or any(_same_function(p, first) is not True for p in pieces[1:]):
        return expr
    for r in cuts:
        try:
            with limited(_SIMPLIFY_SECONDS, "checking the value at a kink"):
                if sp.simplify(expr.subs(X, r) - first.subs(X, r)) != 0:
                    return expr
        except SpecError:
            return expr
    return first


def _kink_reason(expr: sp.Expr, node: sp.Expr) -> str:
    """Why f is not analytic: the two different functions it equals on either side of a cut, or 'undecided'."""
    try:
        found = _kink_pieces(expr)
    except SpecError:
        found = None
    if found is not None:
        cuts, _, pieces = found
        for r, left, right in zip(cuts, pieces, pieces[1:]):
            if _same_function(left, right) is False:
                return (f"{node} is not analytic at x = {r}: f is {left} just below x = {r} and {right} just above "
                        "(two different analytic functions cannot join analytically)")
    return (f"{node} is not analytic{_kink_text(node)}, and it was not decided whether f's pieces on either side "
            "are one analytic function; treated as not analytic")


def _check_real_at_zero(expr: sp.Expr, text: str) -> None:
    """Refuse f whose value at x = 0 is not real (sqrt(x-1), log(x-2)): its Taylor series would be complex."""
    try:
        with limited(_SIMPLIFY_SECONDS, "evaluating f at x = 0"):
            a0 = taylor_coefficients(expr, 0)[0]
            value = complex(sp.N(a0, 30))
    except (NotAnalyticAtZero, SpecError, TypeError, ValueError):
        return  # no value at 0 (log(x), 1/x): classified as not analytic later
    if a0.has(sp.I) or abs(value.imag) > 1e-20 * max(1.0, abs(value.real)):
        raise SpecError(f"spec {text!r} is not real near x = 0: f(0) = {a0}; write a function that is real "
                        "for real scores")


def _check_limits(expr: sp.Expr) -> None:
    """The parser's limits for a spec given as a sympy expression: degree, constants, real values."""
    from fastattn.transforms.parse import MAX_DEGREE, _check_real_and_small, degree_bound

    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise SpecError(f"spec {expr} is undefined or infinite")
    degree = degree_bound(expr)
    if degree > MAX_DEGREE:
        raise SpecError(f"spec {expr}: total degree {degree} after nesting is above the limit {MAX_DEGREE}")
    _check_real_and_small(expr, str(expr))


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
        expr = _canonical(written)
        _check_real_at_zero(expr, f.strip())
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
        _check_limits(expr)
        written, expr = expr, _canonical(expr)
        _check_real_at_zero(expr, str(expr))
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
