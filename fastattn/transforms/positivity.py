"""Deciding f > 0 on an interval: exact for rational polynomials, certified otherwise."""

from __future__ import annotations

import mpmath
import sympy as sp
from mpmath import iv

from fractions import Fraction

from fastattn.transforms.intervals import NotExact, interval_eval, iv_of_fraction
from fastattn.transforms.parse import X

__all__ = ["decide"]

_DIGITS = 50
_MAX_PIECES = 4096
_MAX_SLOW_POINTS = 400  # grid points evaluated by mpmath where float64 gives NaN


def decide(f, lo, hi):
    """Positivity of f on [lo, hi]; ends are exact sympy reals (rationals, or constants such as pi)."""
    from fastattn.transforms.spec import Positivity

    if not all(e.is_Rational or e.is_infinite for e in (lo, hi)):
        return _decide_irrational_ends(f, lo, hi, Positivity)
    return _decide(f, lo, hi, Positivity)


def _decide_irrational_ends(f, lo, hi, Positivity):
    """Decide on rational intervals around [lo, hi]: positive on a wider one, or a counterpoint inside."""
    def outward(e, up):
        if not e.is_finite or e.is_Rational:
            return e
        q = sp.Rational(str(sp.N(e, 40)))
        return q + (1 if up else -1) * sp.Rational(1, 10**30)

    wide = _decide(f, outward(lo, False), outward(hi, True), Positivity)
    if wide.positive is True:
        return Positivity(True, (lo, hi), f"{wide.reason} (on a rational interval containing [{lo}, {hi}])")
    narrow = _decide(f, outward(lo, True), outward(hi, False), Positivity)
    c = narrow.counterpoint if narrow.positive is False else wide.counterpoint
    if c is not None and bool(lo <= c) and bool(c <= hi):
        res = narrow if narrow.positive is False else wide
        return Positivity(False, (lo, hi), res.reason, c, res.value)
    return Positivity(None, (lo, hi), f"undecided: no certified answer with the irrational ends of [{lo}, {hi}] ({narrow.reason})")


def _decide(f, lo, hi, Positivity):
    interval = (lo, hi)
    poly = _rational_poly(f.expr)
    if poly is not None:
        return _decide_poly(poly, lo, hi, Positivity)

    counter = _find_counterpoint(f, lo, hi)
    if counter is not None:
        point, value = counter
        return Positivity(False, interval, f"f({point}) = {sp.N(value, 12)} <= 0 (50-digit evaluation)", point, value)

    if lo == -sp.oo and hi == sp.oo and f.expr.is_positive:
        return Positivity(True, interval, "positive for every real x by sympy's assumptions (sums and products of positive terms)")
    if lo.is_finite and hi.is_finite:
        ok, pieces = _interval_proof(f.expr, lo, hi)
        if ok:
            return Positivity(True, interval, f"interval arithmetic gives f > 0 on each of {pieces} sub-intervals")
        return Positivity(None, interval, f"undecided: no point with f <= 0 found, and interval arithmetic could not prove f > 0 ({pieces} sub-intervals)")
    if f.expr.is_positive is None and f.expr.is_nonnegative:
        return Positivity(None, interval, "f >= 0 everywhere (sympy), strict positivity undecided")
    return Positivity(None, interval, "undecided on an unbounded interval: no point with f <= 0 found on a grid of 4001 points")


def _rational_poly(expr):
    if not expr.is_polynomial(X):
        return None
    try:
        return sp.Poly(expr, X, domain="QQ")
    except (sp.PolynomialError, sp.CoercionFailed, sp.OptionError):
        return None


def _decide_poly(poly, lo, hi, Positivity):
    interval = (lo, hi)
    if poly.is_zero:
        return Positivity(False, interval, "f is identically zero", sp.Integer(0) if lo <= 0 <= hi else lo, sp.Integer(0))
    count = poly.count_roots(None if lo == -sp.oo else lo, None if hi == sp.oo else hi)
    probe = _inside(lo, hi)
    v = poly.eval(probe)
    if count == 0:
        if v > 0:
            return Positivity(True, interval, f"no real root in [{lo}, {hi}] (exact Sturm count) and f({probe}) = {v} > 0")
        return Positivity(False, interval, f"no real root in [{lo}, {hi}] and f({probe}) = {v} <= 0", probe, v)
    # A root lies in the interval. Isolating intervals are exact rationals; at a root of odd
    # multiplicity f changes sign, so an endpoint of its (refined) interval has f <= 0.
    isolating = poly.intervals(inf=None if lo == -sp.oo else lo, sup=None if hi == sp.oo else hi, eps=sp.Rational(1, 1 << 20))
    candidates = [probe]
    for (a, b), _mult in isolating:
        candidates += [sp.Rational(a), sp.Rational(b), (sp.Rational(a) + sp.Rational(b)) / 2]
    for c in candidates:
        if lo <= c <= hi and poly.eval(c) <= 0:
            return Positivity(False, interval, f"{count} real root(s) in [{lo}, {hi}] (exact Sturm count); f({c}) = {poly.eval(c)}", c, poly.eval(c))
    (a, b), mult = isolating[0]
    root = next(r for r in poly.real_roots() if a <= r <= b)
    return Positivity(False, interval, f"f has a real root of multiplicity {mult} in [{a}, {b}] (exact isolation), where f = 0", root, sp.Integer(0))


def _inside(lo, hi):
    if lo == -sp.oo and hi == sp.oo:
        return sp.Integer(0)
    if lo == -sp.oo:
        return hi - 1
    if hi == sp.oo:
        return lo + 1
    return (lo + hi) / 2


def _grid(lo, hi, n=4001):
    if lo.is_finite and hi.is_finite:
        return [lo + (hi - lo) * sp.Rational(i, n - 1) for i in range(n)]
    a = lo if lo.is_finite else sp.Integer(-60)
    b = hi if hi.is_finite else sp.Integer(60)
    return _grid(a, b, n)


def _find_counterpoint(f, lo, hi):
    """A grid point where f <= 0, certified by exact substitution and 50-digit evaluation, or None.

    The grid is scanned in float64 (numpy), points where that gives NaN at 30 digits (mpmath);
    only the lowest few candidates are evaluated exactly.
    """
    import numpy as np

    expr = f.expr
    pts = _grid(lo, hi)
    with np.errstate(all="ignore"):
        values = np.asarray(f(np.array([float(t) for t in pts])), dtype=np.float64)
    # +-inf in float64 keep their sign (exp(exp(60)) is large, not unknown); NaN points get mpmath
    bad = np.isnan(values)
    if bad.any():
        fn = sp.lambdify(X, expr, modules=["mpmath"])
        with mpmath.workdps(30):
            slow = np.flatnonzero(bad)
            for i in slow[np.unique(np.linspace(0, len(slow) - 1, min(len(slow), _MAX_SLOW_POINTS)).astype(int))]:
                try:
                    v = fn(mpmath.mpf(sp.N(pts[i], 30)))
                    values[i] = float(mpmath.re(v)) if mpmath.isfinite(v) else np.inf
                except (ValueError, ZeroDivisionError, TypeError, OverflowError):
                    values[i] = np.inf
    order = np.argsort(values, kind="stable")
    for i in order[:5]:
        if values[i] > 1e-12:
            break
        point = pts[int(i)]
        exact = expr.subs(X, point)
        if exact == 0:
            return point, exact
        value = sp.N(exact, _DIGITS)
        # a value within 1e-40 of 0 is not a certificate: it may be an unsimplified exact zero
        if value.is_real and value < 0 and abs(value) > sp.Float("1e-40"):
            return point, exact if exact.is_Rational else value
    return None


def _enclose(t):
    """An interval containing the rational t (outward rounded)."""
    return iv_of_fraction(Fraction(int(t.p), int(t.q)))  # ends are rational here: decide() sees to it


def _interval_proof(expr, lo, hi):
    with mpmath.workdps(30):
        stack = [(lo, hi)]
        pieces = 0
        while stack:
            a, b = stack.pop()
            pieces += 1
            if pieces > _MAX_PIECES:
                return False, pieces
            try:
                enc = interval_eval(expr, iv.mpf([_enclose(a).a, _enclose(b).b]))
            except (NotExact, ZeroDivisionError):
                enc = None
            if enc is not None and enc.a > 0:
                continue
            if enc is None and b - a < sp.Rational(1, 1 << 20):
                return False, pieces
            mid = (a + b) / 2
            stack += [(a, mid), (mid, b)]
        return True, pieces
