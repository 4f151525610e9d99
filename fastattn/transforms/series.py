"""Exact Taylor coefficients at 0 and rigorous bounds on |f| over complex discs.

Two tree walks over a sympy expression in :data:`~fastattn.transforms.parse.X`:

* :func:`taylor_coefficients` runs formal-power-series recurrences (the ones in
  Knuth, TAOCP vol. 2, 4.7) on each node, so the coefficients are exact sympy
  numbers. It is much faster than ``sympy.series`` on compositions such as
  ``exp(sin(x))`` and never needs limits.
* :func:`disc_bound` computes a *centred form*: for each node g it returns g(0)
  and an upper bound on ``sup_{|z| <= r} |g(z) - g(0)|``, from inequalities that
  hold for every complex h with |h| <= d (for instance
  ``|exp(g0 + h) - exp(g0)| <= |exp(g0)| (e^d - 1)``). A finite result proves f
  analytic on the open disc of radius r and bounds |f| there, which is what the
  Cauchy estimate |a_n| <= M(r) / r^n needs.
"""

from __future__ import annotations

import mpmath
import sympy as sp

from fastattn.transforms.parse import X

__all__ = ["NotAnalyticAtZero", "taylor_coefficients", "disc_bound", "NON_ANALYTIC_FUNCS"]

#: sympy classes whose presence (applied to something that depends on x) makes f not analytic.
NON_ANALYTIC_FUNCS = (sp.Abs, sp.Heaviside, sp.Max, sp.Min, sp.sign, sp.floor, sp.ceiling, sp.Piecewise)


class NotAnalyticAtZero(Exception):
    """Raised by the tree walks when a node has no power series at 0."""

    def __init__(self, node: sp.Expr, why: str):
        super().__init__(f"{node}: {why}")
        self.node = node
        self.why = why


def _zero(n):
    return [sp.Integer(0)] * (n + 1)


def _mul(a, b, n):
    out = _zero(n)
    for i, ai in enumerate(a):
        if ai == 0:
            continue
        for j in range(n + 1 - i):
            if b[j] != 0:
                out[i + j] += ai * b[j]
    return out


def _div(f, g, n, node):
    if g[0] == 0:
        raise NotAnalyticAtZero(node, "division by an expression that vanishes at x = 0")
    out = _zero(n)
    for m in range(n + 1):
        acc = f[m] - sum((g[k] * out[m - k] for k in range(1, m + 1)), sp.Integer(0))
        out[m] = acc / g[0]
    return out


def _integrate_product(g, h, c0, n):
    """Coefficients of F with F(0) = c0 and F' = h·g' (chain rule for erf, atan)."""
    out = _zero(n)
    out[0] = c0
    for m in range(1, n + 1):
        out[m] = sum((k * g[k] * h[m - k] for k in range(1, m + 1)), sp.Integer(0)) / m
    return out


def _exp(g, n):
    out = _zero(n)
    out[0] = sp.exp(g[0])
    for m in range(1, n + 1):
        out[m] = sum((k * g[k] * out[m - k] for k in range(1, m + 1)), sp.Integer(0)) / m
    return out


def _sin_cos(g, n, hyperbolic: bool):
    s, c = _zero(n), _zero(n)
    s[0], c[0] = (sp.sinh(g[0]), sp.cosh(g[0])) if hyperbolic else (sp.sin(g[0]), sp.cos(g[0]))
    sign = 1 if hyperbolic else -1
    for m in range(1, n + 1):
        s[m] = sum((k * g[k] * c[m - k] for k in range(1, m + 1)), sp.Integer(0)) / m
        c[m] = sign * sum((k * g[k] * s[m - k] for k in range(1, m + 1)), sp.Integer(0)) / m
    return s, c


def _log(g, n, node):
    if g[0] == 0:
        raise NotAnalyticAtZero(node, "log of an expression that vanishes at x = 0")
    out = _zero(n)
    out[0] = sp.log(g[0])
    for m in range(1, n + 1):
        acc = g[m] - sum((k * out[k] * g[m - k] for k in range(1, m)), sp.Integer(0)) / m
        out[m] = acc / g[0]
    return out


def _pow(g, alpha, n, node):
    if alpha.is_Integer and alpha >= 0:
        out = _zero(n)
        out[0] = sp.Integer(1)
        base, e = g, int(alpha)
        while e:
            if e & 1:
                out = _mul(out, base, n)
            e >>= 1
            if e:
                base = _mul(base, base, n)
        return out
    if g[0] == 0:
        raise NotAnalyticAtZero(node, f"power {alpha} of an expression that vanishes at x = 0")
    out = _zero(n)
    out[0] = g[0] ** alpha
    for m in range(1, n + 1):
        acc = sum(((alpha * k - (m - k)) * g[k] * out[m - k] for k in range(1, m + 1)), sp.Integer(0))
        out[m] = acc / (m * g[0])
    return out


def taylor_coefficients(expr: sp.Expr, n: int) -> list[sp.Expr]:
    """Exact Taylor coefficients a_0..a_n of ``expr`` at x = 0.

    Raises :class:`NotAnalyticAtZero` for a node without a power series at 0
    (Abs, Heaviside, log(x), 1/x, ...).

    >>> taylor_coefficients(sp.exp(X), 3)
    [1, 1, 1/2, 1/6]
    """
    cache: dict[sp.Expr, list[sp.Expr]] = {}

    def walk(e: sp.Expr) -> list[sp.Expr]:
        if e in cache:
            return cache[e]
        out = _walk(e)
        cache[e] = out
        return out

    def _walk(e: sp.Expr) -> list[sp.Expr]:
        if not e.has(X):
            out = _zero(n)
            out[0] = e
            return out
        if e == X:
            out = _zero(n)
            if n >= 1:
                out[1] = sp.Integer(1)
            return out
        if isinstance(e, sp.Add):
            out = _zero(n)
            for arg in e.args:
                out = [a + b for a, b in zip(out, walk(arg))]
            return out
        if isinstance(e, sp.Mul):
            out = None
            for arg in e.args:
                out = walk(arg) if out is None else _mul(out, walk(arg), n)
            return out
        if isinstance(e, sp.Pow):
            base, expo = e.args
            if not expo.has(X):
                return _pow(walk(base), expo, n, e)
            return walk(sp.exp(expo * sp.log(base)))
        if isinstance(e, sp.exp):
            return _exp(walk(e.args[0]), n)
        if isinstance(e, sp.log):
            return _log(walk(e.args[0]), n, e)
        if isinstance(e, (sp.sin, sp.cos)):
            s, c = _sin_cos(walk(e.args[0]), n, hyperbolic=False)
            return s if isinstance(e, sp.sin) else c
        if isinstance(e, (sp.sinh, sp.cosh)):
            s, c = _sin_cos(walk(e.args[0]), n, hyperbolic=True)
            return s if isinstance(e, sp.sinh) else c
        if isinstance(e, (sp.tan, sp.tanh)):
            s, c = _sin_cos(walk(e.args[0]), n, hyperbolic=isinstance(e, sp.tanh))
            return _div(s, c, n, e)
        if isinstance(e, sp.erf):
            g = walk(e.args[0])
            h = [2 / sp.sqrt(sp.pi) * t for t in _exp([-t for t in _mul(g, g, n)], n)]
            return _integrate_product(g, h, sp.erf(g[0]), n)
        if isinstance(e, sp.atan):
            g = walk(e.args[0])
            one_plus_g2 = _mul(g, g, n)
            one_plus_g2[0] += 1
            one = _zero(n)
            one[0] = sp.Integer(1)
            h = _div(one, one_plus_g2, n, e)
            return _integrate_product(g, h, sp.atan(g[0]), n)
        if isinstance(e, NON_ANALYTIC_FUNCS):
            raise NotAnalyticAtZero(e, f"{type(e).__name__} is not analytic")
        raise NotAnalyticAtZero(e, f"no power-series rule for {type(e).__name__}")

    return list(walk(expr))


# ----------------------------------------------------------------------------------------------
# centred-form bound on complex discs

_PREC = 60  # decimal digits for the bound arithmetic; results are inflated upward afterwards


def _num(e: sp.Expr):
    return mpmath.mpmathify(sp.N(e, _PREC + 10))


def disc_bound(expr: sp.Expr, r, center=0) -> tuple[object, object] | None:
    """Return ``(f(c), d)`` with ``sup_{|z - c| <= r} |f(z) - f(c)| <= d``, or None.

    None means the inequalities could not show f analytic on the disc (a
    singularity may lie within radius r, or the expression has a non-analytic
    node). Computed with mpmath at 60 digits; callers inflate the result.

    >>> c, d = disc_bound(sp.exp(X), 1)
    >>> float(c), round(float(d), 6)   # |e^z - 1| <= e - 1 on |z| <= 1
    (1.0, 1.718282)
    """
    with mpmath.workdps(_PREC):
        r = mpmath.mpf(r)
        try:
            c, d = _bound(expr, r, {"center": mpmath.mpmathify(center)})
        except NotAnalyticAtZero:
            return None
        if d is None or not mpmath.isfinite(d):
            return None
        return c, d


def sup_on_disc(expr: sp.Expr, r, max_pieces: int = 512):
    """Upper bound on ``sup_{|z| <= r} |f(z)|`` (an mpmath number), or None.

    Tries the centred form at 0, then covers the circle |z| = r with K small discs
    (K = 16, 64, ..., max_pieces) and takes the largest centred-form bound among
    them: by the maximum-modulus principle the sup over the disc is attained on the
    circle. The half-plane conditions on log and fractional powers hold on the
    circle, hence (Re g is harmonic) on the whole disc, so the principal branches
    used are the analytic continuation of the real function.
    """
    with mpmath.workdps(_PREC):
        r = mpmath.mpf(r)
        best = None
        whole = disc_bound(expr, r)
        if whole is not None:
            best = abs(whole[0]) + whole[1]
        K = 16
        while K <= max_pieces:
            small = 2 * r * mpmath.sin(mpmath.pi / (2 * K)) * (1 + mpmath.mpf(10) ** -30)
            worst = mpmath.mpf(0)
            for k in range(K):
                piece = disc_bound(expr, small, center=r * mpmath.expjpi(2 * mpmath.mpf(k) / K))
                if piece is None:
                    worst = None
                    break
                worst = max(worst, abs(piece[0]) + piece[1])
            if worst is not None:
                return worst if best is None else min(best, worst)
            K *= 4
        return best


def _bound(e, r, cache):
    if e in cache:
        return cache[e]
    out = _bound_walk(e, r, cache)
    cache[e] = out
    return out


def _bound_walk(e, r, cache):
    if not e.has(X):
        return _num(e), mpmath.mpf(0)
    if e == X:
        return cache["center"], r
    if isinstance(e, sp.Add):
        c, d = mpmath.mpf(0), mpmath.mpf(0)
        for arg in e.args:
            ca, da = _bound(arg, r, cache)
            c, d = c + ca, d + da
        return c, d
    if isinstance(e, sp.Mul):
        c, d = mpmath.mpf(1), mpmath.mpf(0)
        for arg in e.args:
            ca, da = _bound(arg, r, cache)
            c, d = c * ca, abs(c) * da + abs(ca) * d + d * da
        return c, d
    if isinstance(e, sp.Pow):
        base, expo = e.args
        if expo.has(X):
            return _bound(sp.exp(expo * sp.log(base)), r, cache)
        cb, db = _bound(base, r, cache)
        alpha = _num(expo)
        if expo.is_Integer and expo >= 0:
            return cb ** int(expo), (abs(cb) + db) ** int(expo) - abs(cb) ** int(expo)
        # Integer powers need the base away from 0; other powers need it in the right
        # half-plane, where the principal branch is analytic and real at real points.
        if not (db < abs(cb) if expo.is_Integer else db < mpmath.re(cb)):
            raise NotAnalyticAtZero(e, "the base may leave the half-plane Re > 0 on the disc")
        u = db / abs(cb)
        # |(1+u)^a - 1| <= (1-|u|)^(-|a|) - 1, since |binom(a, n)| <= binom(|a|+n-1, n).
        return cb**alpha, abs(cb) ** alpha.real * ((1 - u) ** (-abs(alpha)) - 1)
    if isinstance(e, sp.exp):
        c, d = _bound(e.args[0], r, cache)
        ec = mpmath.exp(c)
        return ec, abs(ec) * mpmath.expm1(d)
    if isinstance(e, (sp.sin, sp.cos, sp.sinh, sp.cosh)):
        c, d = _bound(e.args[0], r, cache)
        if isinstance(e, (sp.sin, sp.cos)):
            s0, c0 = mpmath.sin(c), mpmath.cos(c)
        else:
            s0, c0 = mpmath.sinh(c), mpmath.cosh(c)
        # f(c+h) - f(c) = f(c)(cos h - 1) + f'(c) sin h (hyperbolic alike); |cos h - 1| <= cosh d - 1.
        value, slope = (s0, c0) if isinstance(e, (sp.sin, sp.sinh)) else (c0, s0)
        return value, abs(value) * (mpmath.cosh(d) - 1) + abs(slope) * mpmath.sinh(d)
    if isinstance(e, sp.tan):
        return _bound(sp.sin(e.args[0]) / sp.cos(e.args[0]), r, cache)
    if isinstance(e, sp.tanh):
        return _bound(sp.sinh(e.args[0]) / sp.cosh(e.args[0]), r, cache)
    if isinstance(e, sp.log):
        c, d = _bound(e.args[0], r, cache)
        if not d < mpmath.re(c):
            raise NotAnalyticAtZero(e, "the argument of log may leave the half-plane Re > 0 on the disc")
        return mpmath.log(c), -mpmath.log(1 - d / abs(c))
    if isinstance(e, sp.erf):
        c, d = _bound(e.args[0], r, cache)
        # erf' = 2/sqrt(pi) exp(-t^2) and |exp(-t^2)| <= exp(|t|^2) on the segment.
        return mpmath.erf(c), 2 / mpmath.sqrt(mpmath.pi) * d * mpmath.exp((abs(c) + d) ** 2)
    if isinstance(e, sp.atan):
        c, d = _bound(e.args[0], r, cache)
        reach = abs(c) + d
        if not reach < 1:
            raise NotAnalyticAtZero(e, "atan's argument may reach ±i on the disc")
        return mpmath.atan(c), d / (1 - reach**2)
    if isinstance(e, NON_ANALYTIC_FUNCS):
        raise NotAnalyticAtZero(e, f"{type(e).__name__} is not analytic")
    raise NotAnalyticAtZero(e, f"no bound rule for {type(e).__name__}")
