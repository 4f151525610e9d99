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
* :func:`rational_remainder` bounds the Taylor remainder of a rational f = P/Q exactly: the tail
  sum has the closed form x^(p+1) N(x) / Q(x) with N a polynomial (for 1/(1-x) it is x^(p+1)/(1-x)).
"""

from __future__ import annotations

import heapq
import math
from fractions import Fraction

import mpmath
import sympy as sp

from fastattn.transforms.parse import X

__all__ = ["NotAnalyticAtZero", "taylor_coefficients", "enclosed_coefficients", "disc_bound", "rational_remainder",
           "NON_ANALYTIC_FUNCS"]

#: sympy classes whose presence (applied to something that depends on x) makes f not analytic.
NON_ANALYTIC_FUNCS = (sp.Abs, sp.Heaviside, sp.Max, sp.Min, sp.sign, sp.floor, sp.ceiling, sp.Piecewise)


class NotAnalyticAtZero(Exception):
    """Raised by the tree walks when a node has no power series at 0."""

    def __init__(self, node: sp.Expr, why: str):
        super().__init__(f"{node}: {why}")
        self.node = node
        self.why = why


class _Exact:
    """Coefficients as exact sympy numbers."""

    zero, one = sp.Integer(0), sp.Integer(1)

    @staticmethod
    def const(e):
        return e

    @staticmethod
    def at(fn, g0, arg):
        return fn(g0)

    @staticmethod
    def power(g0, alpha, arg):
        return g0**alpha

    @staticmethod
    def is_zero(c, arg):
        return c == 0

    two_over_sqrt_pi = 2 / sp.sqrt(sp.pi)


class _Enclosed:
    """Coefficients as mpmath.iv intervals that contain the exact ones (for bounds, not for display)."""

    def __init__(self):
        from mpmath import iv

        from fastattn.transforms.intervals import constant_enclosure

        self.iv = iv
        self.zero, self.one = iv.mpf(0), iv.mpf(1)
        self.const = constant_enclosure
        self.two_over_sqrt_pi = 2 / iv.sqrt(iv.pi)

    def at(self, fn, g0, arg):
        # the value of fn at the exact constant term of arg, enclosed (cheap: a sympy number)
        return self.const(fn(taylor_coefficients(arg, 0)[0]))

    def power(self, g0, alpha, arg):
        return self.const(taylor_coefficients(arg, 0)[0] ** alpha)

    def is_zero(self, c, arg):
        # an interval that excludes 0 is nonzero; otherwise ask the exact constant term
        if not c.a <= 0 <= c.b:
            return False
        return taylor_coefficients(arg, 0)[0] == 0


class _Walk:
    """Formal power series of each node of an expression, to the order each caller needs."""

    def __init__(self, arith):
        self.A = arith
        self.cache: dict[sp.Expr, list] = {}

    def zeros(self, n):
        return [self.A.zero] * (n + 1)

    def series(self, e: sp.Expr, n: int) -> list:
        got = self.cache.get(e)
        if got is None or len(got) <= n:
            got = self._walk(e, n)
            self.cache[e] = got
        return got[: n + 1]

    # -- arithmetic on truncated series -----------------------------------------------------------
    def mul(self, a, b, n):
        out = self.zeros(n)
        for i in range(min(n + 1, len(a))):
            if self.A is _Exact and a[i] == 0:
                continue
            for j in range(min(n + 1 - i, len(b))):
                out[i + j] += a[i] * b[j]
        return out

    def div(self, f, g, n, node, arg):
        # arg is None where g[0] is known to be nonzero
        if arg is not None and self.A.is_zero(g[0], arg):
            raise NotAnalyticAtZero(node, "division by an expression that vanishes at x = 0")
        out = self.zeros(n)
        for m in range(n + 1):
            acc = f[m]
            for k in range(1, m + 1):
                acc -= g[k] * out[m - k]
            out[m] = acc / g[0]
        return out

    def integrate_product(self, g, h, c0, n):
        """Coefficients of F with F(0) = c0 and F' = h·g' (chain rule for erf, atan)."""
        out = self.zeros(n)
        out[0] = c0
        for m in range(1, n + 1):
            acc = self.A.zero
            for k in range(1, m + 1):
                acc += k * g[k] * h[m - k]
            out[m] = acc / m
        return out

    def exp(self, g, n, arg):
        out = self.zeros(n)
        out[0] = self.A.at(sp.exp, g[0], arg)
        for m in range(1, n + 1):
            acc = self.A.zero
            for k in range(1, m + 1):
                acc += k * g[k] * out[m - k]
            out[m] = acc / m
        return out

    def sin_cos(self, g, n, hyperbolic: bool, arg):
        s, c = self.zeros(n), self.zeros(n)
        s[0] = self.A.at(sp.sinh if hyperbolic else sp.sin, g[0], arg)
        c[0] = self.A.at(sp.cosh if hyperbolic else sp.cos, g[0], arg)
        sign = 1 if hyperbolic else -1
        for m in range(1, n + 1):
            acc_s, acc_c = self.A.zero, self.A.zero
            for k in range(1, m + 1):
                acc_s += k * g[k] * c[m - k]
                acc_c += k * g[k] * s[m - k]
            s[m] = acc_s / m
            c[m] = sign * acc_c / m
        return s, c

    def log(self, g, n, node, arg):
        if self.A.is_zero(g[0], arg):
            raise NotAnalyticAtZero(node, "log of an expression that vanishes at x = 0")
        out = self.zeros(n)
        out[0] = self.A.at(sp.log, g[0], arg)
        for m in range(1, n + 1):
            acc = self.A.zero
            for k in range(1, m):
                acc += k * out[k] * g[m - k]
            out[m] = (g[m] - acc / m) / g[0]
        return out

    def pow(self, g, alpha, n, node, arg):
        if alpha.is_Integer and alpha >= 0:
            out = self.zeros(n)
            out[0] = self.A.one
            base, e = g, int(alpha)
            while e:
                if e & 1:
                    out = self.mul(out, base, n)
                e >>= 1
                if e:
                    base = self.mul(base, base, n)
            return out
        if self.A.is_zero(g[0], arg):
            raise NotAnalyticAtZero(node, f"power {alpha} of an expression that vanishes at x = 0")
        a = self.A.const(alpha)
        out = self.zeros(n)
        out[0] = self.A.power(g[0], alpha, arg)
        for m in range(1, n + 1):
            acc = self.A.zero
            for k in range(1, m + 1):
                acc += (a * k - (m - k)) * g[k] * out[m - k]
            out[m] = acc / (m * g[0])
        return out

    # -- the tree walk ------------------------------------------------------------------------------
    def _walk(self, e: sp.Expr, n: int) -> list:
        A = self.A
        if not e.has(X):
            out = self.zeros(n)
            out[0] = A.const(e)
            return out
        if e == X:
            out = self.zeros(n)
            if n >= 1:
                out[1] = A.one
            return out
        if isinstance(e, sp.Add):
            out = self.zeros(n)
            for arg in e.args:
                out = [a + b for a, b in zip(out, self.series(arg, n))]
            return out
        if isinstance(e, sp.Mul):
            return self._product(e, n)
        if isinstance(e, sp.Pow):
            base, expo = e.args
            if not expo.has(X):
                return self.pow(self.series(base, n), expo, n, e, base)
            return self.series(sp.exp(expo * sp.log(base)), n)
        if isinstance(e, sp.exp):
            return self.exp(self.series(e.args[0], n), n, e.args[0])
        if isinstance(e, sp.log):
            return self.log(self.series(e.args[0], n), n, e, e.args[0])
        if isinstance(e, (sp.sin, sp.cos)):
            s, c = self.sin_cos(self.series(e.args[0], n), n, False, e.args[0])
            return s if isinstance(e, sp.sin) else c
        if isinstance(e, (sp.sinh, sp.cosh)):
            s, c = self.sin_cos(self.series(e.args[0], n), n, True, e.args[0])
            return s if isinstance(e, sp.sinh) else c
        if isinstance(e, (sp.tan, sp.tanh)):
            hyperbolic = isinstance(e, sp.tanh)
            s, c = self.sin_cos(self.series(e.args[0], n), n, hyperbolic, e.args[0])
            return self.div(s, c, n, e, (sp.cosh if hyperbolic else sp.cos)(e.args[0]))
        if isinstance(e, sp.erf):
            g = self.series(e.args[0], n)
            h = [A.two_over_sqrt_pi * t for t in self.exp([-t for t in self.mul(g, g, n)], n, -e.args[0] ** 2)]
            return self.integrate_product(g, h, A.at(sp.erf, g[0], e.args[0]), n)
        if isinstance(e, sp.atan):
            g = self.series(e.args[0], n)
            one_plus_g2 = self.mul(g, g, n)
            one_plus_g2[0] += 1
            one = self.zeros(n)
            one[0] = A.one
            h = self.div(one, one_plus_g2, n, e, 1 + e.args[0] ** 2)
            return self.integrate_product(g, h, A.at(sp.atan, g[0], e.args[0]), n)
        if isinstance(e, NON_ANALYTIC_FUNCS):
            raise NotAnalyticAtZero(e, f"{type(e).__name__} is not analytic")
        raise NotAnalyticAtZero(e, f"no power-series rule for {type(e).__name__}")

    def _product(self, e: sp.Mul, n: int) -> list:
        """A product, dividing by factors that vanish at 0 when the numerator vanishes as fast.

        sin(x)/x and x/(exp(x)-1) have removable singularities at 0: the numerator N and the
        denominator D both vanish there, and N/D is the quotient of N/x^v and D/x^v (v the order
        of the zero of D), a power series as soon as N vanishes to order >= v.
        """
        num, den = [], []
        for arg in e.args:
            base, expo = arg.as_base_exp()
            if expo.is_Integer and expo < 0 and base.has(X) and _Exact.is_zero(taylor_coefficients(base, 0)[0], base):
                den.append(base ** (-expo))
            else:
                num.append(arg)
        if not den:
            out = None
            for arg in e.args:
                out = self.series(arg, n) if out is None else self.mul(out, self.series(arg, n), n)
            return out
        D, N = sp.Mul(*den), sp.Mul(*num)
        v = _order_of_zero(D, e)
        exact_num = taylor_coefficients(N, v - 1)
        if any(c != 0 for c in exact_num):
            k = next(i for i, c in enumerate(exact_num) if c != 0)
            raise NotAnalyticAtZero(e, f"pole of order {v - k} at x = 0 (the denominator vanishes to order {v})")
        d = self.series(D, n + v)[v:]
        top = self.series(N, n + v)[v:]
        return self.div(top, d, n, e, None)


def _order_of_zero(D: sp.Expr, node: sp.Expr, limit: int = 64) -> int:
    """The order v of the zero of D at x = 0 (its first nonzero exact Taylor coefficient)."""
    coeffs = taylor_coefficients(D, limit)
    for v, c in enumerate(coeffs):
        if c != 0:
            return v
    raise NotAnalyticAtZero(node, f"the denominator vanishes to order above {limit} at x = 0")


def taylor_coefficients(expr: sp.Expr, n: int) -> list[sp.Expr]:
    """Exact Taylor coefficients a_0..a_n of ``expr`` at x = 0.

    Raises :class:`NotAnalyticAtZero` for a node without a power series at 0
    (Abs, Heaviside, log(x), 1/x, ...). Removable singularities are handled:
    sin(x)/x has the series 1 - x²/6 + ...

    >>> taylor_coefficients(sp.exp(X), 3)
    [1, 1, 1/2, 1/6]
    >>> taylor_coefficients(sp.sin(X) / X, 2)
    [1, 0, -1/6]
    """
    return list(_Walk(_Exact).series(expr, n))


def enclosed_coefficients(expr: sp.Expr, n: int) -> list:
    """Intervals (mpmath.iv, at the current iv precision) containing a_0..a_n.

    The same recurrences as :func:`taylor_coefficients` in interval arithmetic: the cost
    stays linear in the size of the numbers where exact coefficients of nested functions
    (erf(erf(erf(x))), exp(exp(exp(x)))) grow into huge symbolic expressions.

    >>> [float(c.mid) for c in enclosed_coefficients(sp.exp(X), 2)]
    [1.0, 1.0, 0.5]
    """
    return list(_Walk(_Enclosed()).series(expr, n))


# ----------------------------------------------------------------------------------------------
# exact tails of rational functions


def rational_remainder(expr: sp.Expr, p: int, R: Fraction, *, tolerance=Fraction(21, 20),
                       max_cells: int = 2048) -> tuple[Fraction, Fraction] | None:
    """``(bound, attained)`` for ``sup_{|x| <= R} |f(x) - T_p(x)|`` when f = P/Q with rational coefficients, else None.

    P - Q T_p vanishes to order p+1 at 0, so the tail of the series is exactly
    f - T_p = x^(p+1) N(x) / Q(x) with N = (P - Q T_p) / x^(p+1): for 1/(1-x) it is x^(p+1)/(1-x),
    for 1/(1+x^2) it is -(-x^2)^(m)/(1+x^2). Its sup is bounded in exact rationals on cells of
    [-R, R] (|x|^(p+1) by its value at the outer end, |N| and |Q| from exact Taylor shifts to the
    centre), bisecting until the bound is within ``tolerance`` of a value |f - T_p| takes at a centre
    or an end (``attained``), or ``max_cells`` is reached (the bound stays rigorous, only looser).
    R must be inside the radius of convergence (Q has no zero on |x| <= R).

    >>> from fastattn.transforms.parse import X
    >>> rational_remainder(1 / (1 - X), 5, Fraction(99, 100))[1] == Fraction(99, 100) ** 6 * 100
    True
    """
    if not expr.is_rational_function(X) or not expr.has(X):
        return None
    num, den = sp.fraction(sp.cancel(sp.together(expr)))
    try:
        P, Q = sp.Poly(num, X), sp.Poly(den, X)
    except (sp.PolynomialError, sp.GeneratorsNeeded):
        return None
    if not all(c.is_Rational for c in P.all_coeffs() + Q.all_coeffs()):
        return None  # sqrt(2), pi or a float among the coefficients: not exact rationals
    if Q.degree() < 1:
        return None
    P = [Fraction(int(c.p), int(c.q)) for c in reversed(P.all_coeffs())]
    Q = [Fraction(int(c.p), int(c.q)) for c in reversed(Q.all_coeffs())]
    if Q[0] == 0:
        return None  # a pole at 0: no Taylor series
    T = []
    for k in range(p + 1):
        acc = P[k] if k < len(P) else Fraction(0)
        acc -= sum((Q[j] * T[k - j] for j in range(1, min(k, len(Q) - 1) + 1)), Fraction(0))
        T.append(acc / Q[0])
    rest = P + [Fraction(0)] * (len(Q) + p + 1 - len(P))
    for i, t in enumerate(T):
        for j, q in enumerate(Q):
            rest[i + j] -= t * q
    N = rest[p + 1:]  # rest[:p+1] is zero: T_p matches P/Q to order p
    while len(N) > 1 and N[-1] == 0:
        N.pop()
    if not any(N):
        return Fraction(0), Fraction(0)

    def value(x: Fraction) -> Fraction:
        return abs(x) ** (p + 1) * abs(_horner(N, x)) / abs(_horner(Q, x))

    def cell(a: Fraction, b: Fraction):
        m, h = (a + b) / 2, (b - a) / 2
        n_up = sum((abs(c) * h**k for k, c in enumerate(_shift(N, m))), Fraction(0))
        q = _shift(Q, m)
        q_low = abs(q[0]) - sum((abs(c) * h**k for k, c in enumerate(q) if k), Fraction(0))
        if q_low <= 0:
            return None
        return max(abs(a), abs(b)) ** (p + 1) * n_up / q_low

    def entry(a: Fraction, b: Fraction):
        up = cell(a, b)
        return (-up if up is not None else -math.inf, a, b)

    attained = max(value(R), value(-R))
    heap = [entry(a, b) for a, b in ((-R, -R / 2), (-R / 2, Fraction(0)), (Fraction(0), R / 2), (R / 2, R))]
    heapq.heapify(heap)
    while True:
        worst = -heap[0][0]
        if worst <= Fraction(tolerance) * attained or len(heap) >= max_cells:
            break
        _, a, b = heapq.heappop(heap)
        mid = (a + b) / 2
        attained = max(attained, value(mid))
        heapq.heappush(heap, entry(a, mid))
        heapq.heappush(heap, entry(mid, b))
    worst = -heap[0][0]
    if worst == math.inf:
        return None
    return worst, attained


def _horner(c: list[Fraction], x: Fraction) -> Fraction:
    out = Fraction(0)
    for a in reversed(c):
        out = out * x + a
    return out


def _shift(c: list[Fraction], m: Fraction) -> list[Fraction]:
    """Coefficients of poly(m + t) in t, exactly (repeated synthetic division)."""
    c = list(c)
    n = len(c)
    for i in range(n - 1):
        for j in range(n - 2, i - 1, -1):
            c[j] += m * c[j + 1]
    return c


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


#: Above this, exp(t) is taken as infinite: mpmath would spend minutes on exp(1e9) (an unusable bound anyway).
_EXP_ARGUMENT_LIMIT = 10**6


def _exp_up(t):
    """exp(t) for real t, or +inf once t is too large to give a usable bound."""
    return mpmath.exp(t) if t < _EXP_ARGUMENT_LIMIT else mpmath.inf


def _too_large(c) -> bool:
    # a centre value this large makes exp/sin/cosh of it an mpmath marathon
    return abs(mpmath.re(c)) > _EXP_ARGUMENT_LIMIT or abs(mpmath.im(c)) > _EXP_ARGUMENT_LIMIT


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
        if _too_large(c) or not d < _EXP_ARGUMENT_LIMIT:
            raise NotAnalyticAtZero(e, "the bound on the disc is too large to be useful")
        ec = mpmath.exp(c)
        return ec, abs(ec) * mpmath.expm1(d)
    if isinstance(e, (sp.sin, sp.cos, sp.sinh, sp.cosh)):
        c, d = _bound(e.args[0], r, cache)
        if _too_large(c) or not d < _EXP_ARGUMENT_LIMIT:
            raise NotAnalyticAtZero(e, "the bound on the disc is too large to be useful")
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
        if _too_large(c):
            raise NotAnalyticAtZero(e, "the bound on the disc is too large to be useful")
        return mpmath.erf(c), 2 / mpmath.sqrt(mpmath.pi) * d * _exp_up((abs(c) + d) ** 2)
    if isinstance(e, sp.atan):
        c, d = _bound(e.args[0], r, cache)
        reach = abs(c) + d
        if not reach < 1:
            raise NotAnalyticAtZero(e, "atan's argument may reach ±i on the disc")
        return mpmath.atan(c), d / (1 - reach**2)
    if isinstance(e, NON_ANALYTIC_FUNCS):
        raise NotAnalyticAtZero(e, f"{type(e).__name__} is not analytic")
    raise NotAnalyticAtZero(e, f"no bound rule for {type(e).__name__}")
