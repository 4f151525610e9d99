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


def decide(f, lo, hi):
    from fastattn.transforms.spec import Positivity

    interval = (lo, hi)
    poly = _rational_poly(f.expr)
    if poly is not None:
        return _decide_poly(poly, lo, hi, Positivity)

    counter = _find_counterpoint(f.expr, lo, hi)
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


def _find_counterpoint(expr, lo, hi):
    import numpy as np

    fn = sp.lambdify(X, expr, modules=["mpmath"])
    pts = _grid(lo, hi)
    with mpmath.workdps(30):
        values = []
        for t in pts:
            try:
                v = fn(mpmath.mpf(sp.N(t, 30)))
                values.append(float(mpmath.re(v)) if mpmath.isfinite(v) else np.inf)
            except (ValueError, ZeroDivisionError, TypeError):
                values.append(np.inf)
    order = np.argsort(values)
    for i in order[:5]:
        if values[i] > 1e-20:
            break
        point = pts[int(i)]
        exact = sp.simplify(expr.subs(X, point))
        value = sp.N(exact, _DIGITS)
        if exact == 0 or (value.is_real and value <= 0):
            return point, exact if exact.is_Rational else value
    return None


def _enclose(t):
    """An interval containing the rational t (outward rounded)."""
    return iv_of_fraction(Fraction(int(t.p), int(t.q)))


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
