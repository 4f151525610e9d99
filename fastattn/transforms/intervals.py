"""Rigorous interval enclosures (mpmath.iv) of a spec over a real interval.

Used by the positivity proofs in :mod:`fastattn.transforms.positivity` and the
rigorous numeric route of :mod:`fastattn.proofs_checks`. Constants are enclosed
outward, erf through an integer-bounded series, so every result contains the true
range; a node without a rule raises :class:`NotExact`.
"""

from __future__ import annotations

from fractions import Fraction

import mpmath
import sympy as sp
from mpmath import iv

from fastattn.transforms.parse import X

__all__ = ["NotExact", "interval_eval", "constant_enclosure", "iv_of_fraction", "erf_enclosure", "mpf_to_fraction"]


class NotExact(Exception):
    """A node has no exact or interval rule (or its enclosure would be unbounded)."""


def iv_of_fraction(t: Fraction):
    """A tight interval around the rational t."""
    return iv.mpf(t.numerator) / iv.mpf(t.denominator)


def interval_eval(e: sp.Expr, x):
    """Enclosure of e at the interval x (mpmath.iv); raises NotExact for unsupported nodes."""
    if e == X:
        return x
    if not e.has(X):
        if e.is_Rational:
            return iv_of_fraction(Fraction(int(e.p), int(e.q)))
        if e == sp.pi:
            return iv.pi
        if e == sp.E:
            return iv.e
        if not e.args:
            return _iv_const(e)
        # a compound constant (sqrt(2), exp(1/3)) goes through the rules below, node by node
    if isinstance(e, sp.Add):
        out = iv.mpf(0)
        for a in e.args:
            out = out + interval_eval(a, x)
        return out
    if isinstance(e, sp.Mul):
        out = iv.mpf(1)
        for a in e.args:
            out = out * interval_eval(a, x)
        return out
    if isinstance(e, sp.Pow):
        b, ex = e.args
        if b == sp.E:
            return iv.exp(interval_eval(ex, x))
        bv = interval_eval(b, x)
        if ex.is_Integer:
            k = int(ex)
            if k < 0 and bv.a <= 0 <= bv.b:
                raise NotExact("division by an interval containing 0")
            if k % 2 == 0 and k > 0 and bv.a < 0 < bv.b:
                top = max(abs(bv.a), abs(bv.b)) ** k
                return iv.mpf([0, top.b])
            return bv**k
        if not ex.has(X) and ex.is_positive and bv.a >= 0:
            # t^a with a > 0 is increasing on [0, inf) and 0 at 0
            hi = iv.exp(interval_eval(ex, x) * iv.log(iv.mpf(bv.b))) if bv.b > 0 else iv.mpf(0)
            lo = iv.exp(interval_eval(ex, x) * iv.log(iv.mpf(bv.a))) if bv.a > 0 else iv.mpf(0)
            return iv.mpf([lo.a, hi.b])
        if bv.a <= 0:
            raise NotExact("non-integer power of a value that may be <= 0")
        return iv.exp(interval_eval(ex, x) * iv.log(bv))
    table = {sp.exp: iv.exp, sp.sin: iv.sin, sp.cos: iv.cos, sp.tan: iv.tan, sp.erf: _iv_erf}
    for cls, fn in table.items():
        if isinstance(e, cls):
            return fn(interval_eval(e.args[0], x))
    if isinstance(e, sp.log):
        a = interval_eval(e.args[0], x)
        if a.a <= 0:
            raise NotExact("log of a value that may be <= 0")
        return iv.log(a)
    if isinstance(e, (sp.sinh, sp.cosh, sp.tanh)):
        # the argument is evaluated once (rewriting through exp repeats it: 4**6 walks for six nested tanh)
        return _iv_hyperbolic(type(e), interval_eval(e.args[0], x))
    if isinstance(e, sp.Abs):
        a = interval_eval(e.args[0], x)
        if a.a >= 0:
            return a
        if a.b <= 0:
            return -a
        return iv.mpf([0, max(-a.a, a.b)])
    if isinstance(e, (sp.Max, sp.Min)):
        vals = [interval_eval(a, x) for a in e.args]
        pick = max if isinstance(e, sp.Max) else min
        return iv.mpf([pick(v.a for v in vals), pick(v.b for v in vals)])
    if isinstance(e, (sp.Heaviside, sp.sign)):
        a = interval_eval(e.args[0], x)
        if a.a > 0:
            return iv.mpf(1)
        if a.b < 0:
            return iv.mpf(0 if isinstance(e, sp.Heaviside) else -1)
        raise NotExact("Heaviside/sign at an interval containing 0")
    if not e.has(X):
        return _iv_const(e)
    raise NotExact(f"{type(e).__name__} has no interval rule")


def constant_enclosure(e: sp.Expr):
    """An interval containing the real constant e (sqrt(2), exp(pi), 1/3), at the current iv precision.

    >>> from mpmath import iv
    >>> c = constant_enclosure(sp.sqrt(2))
    >>> bool(c.a**2 <= 2 <= c.b**2)
    True
    """
    if e.has(X):
        raise NotExact(f"{e} is not a constant")
    try:
        return interval_eval(e, None)
    except (NotExact, ZeroDivisionError, ValueError):
        return _iv_const(e)


def _iv_hyperbolic(kind, a):
    """Range of sinh, cosh or tanh over the interval a, from enclosures at its end points."""
    lo, hi = iv.mpf(a.a), iv.mpf(a.b)
    if kind is sp.sinh:
        f = lambda t: (iv.exp(t) - iv.exp(-t)) / 2  # noqa: E731  (increasing)
    elif kind is sp.tanh:
        f = lambda t: 1 - 2 / (iv.exp(2 * t) + 1)  # noqa: E731  (increasing)
    else:
        g = lambda t: (iv.exp(t) + iv.exp(-t)) / 2  # noqa: E731  (decreasing, then increasing from 0)
        if lo >= 0:
            return iv.mpf([g(lo).a, g(hi).b])
        if hi <= 0:
            return iv.mpf([g(hi).a, g(lo).b])
        return iv.mpf([1, max(g(lo).b, g(hi).b)])
    return iv.mpf([f(lo).a, f(hi).b])


def _erf_series_bounds(t: Fraction, W: int) -> tuple[int, int]:
    """Integers lo <= S·2^W <= hi for S = sum_k (-1)^k t^(2k+1) / (k! (2k+1)), t >= 0 rational.

    Each term is carried as a floor/ceil pair of integers (no rounding is lost); once
    the terms decrease, the alternating tail lies between 0 and the first omitted term.
    """
    p, q = t.numerator, t.denominator
    p2, q2 = p * p, q * q
    one = 1 << W
    t_lo = (p * one) // q
    t_hi = -((-p * one) // q)
    lo = hi = 0
    k = 0
    k_min = p2 // q2 + 2
    while True:
        c_lo, c_hi = t_lo // (2 * k + 1), -((-t_hi) // (2 * k + 1))
        if k > k_min and c_hi <= 1:
            # the tail is bounded by the first omitted term (<= c_hi) in absolute value
            return lo - c_hi - 1, hi + c_hi + 1
        if k % 2 == 0:
            lo, hi = lo + c_lo, hi + c_hi
        else:
            lo, hi = lo - c_hi, hi - c_lo
        k += 1
        t_lo = (t_lo * p2) // (q2 * k)
        t_hi = -((-t_hi * p2) // (q2 * k))


def erf_enclosure(t: Fraction):
    """An mpmath.iv interval containing erf(t) for a rational t, at the current iv precision."""
    if t < 0:
        return -erf_enclosure(-t)
    if t > 30:
        # 1 - erf(t) <= exp(-t^2) / (t sqrt(pi)) < 2^-1290
        return iv.mpf([1 - iv.mpf(2) ** -1290, 1]) if iv.prec < 1280 else iv.mpf([iv.mpf(0), 1]) + 0
    # the series terms grow to about e^(t^2) before they fall: carry that many extra bits
    W = iv.prec + 16 + int(float(t * t) * 1.45) + 8
    lo, hi = _erf_series_bounds(t, W)
    scale = iv.mpf(2) ** -W
    return iv.mpf([iv.mpf(lo) * scale, iv.mpf(hi) * scale]) * 2 / iv.sqrt(iv.pi)


def _iv_erf(a):
    # erf is increasing: its range on [a.a, a.b] is [erf(lower end), erf(upper end)].
    lo, hi = (mpf_to_fraction(e) for e in a._mpi_)
    if lo == hi:
        return erf_enclosure(lo)
    return iv.mpf([erf_enclosure(lo).a, erf_enclosure(hi).b])


def _iv_const(e):
    v = sp.N(e, iv.dps + 20)
    if not v.is_real:
        raise NotExact(f"constant {e} is not real")
    s = mpmath.mpf(str(v))
    eps = abs(s) * mpmath.mpf(10) ** (-(iv.dps + 10)) + mpmath.mpf(10) ** (-(iv.dps + 10))
    return iv.mpf([s - eps, s + eps])


def mpf_to_fraction(v) -> Fraction:
    """The exact binary rational value of an mpmath mpf."""
    if isinstance(v, tuple):
        sign, man, exp, _ = v
    elif hasattr(v, "_mpi_"):
        raise TypeError("pass an interval endpoint as enc._mpi_[0] or enc._mpi_[1]")
    else:
        sign, man, exp, _ = v._mpf_ if hasattr(v, "_mpf_") else mpmath.mpf(v)._mpf_
    if not man:
        return Fraction(0)
    val = Fraction(int(man)) * (Fraction(2) ** int(exp))
    return -val if sign else val


