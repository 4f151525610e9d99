"""Rigorous enclosures of e = f - poly on a real interval, for :mod:`fastattn.transforms.approx`.

[-R, R] is cut into cells with rational ends; on each cell e is expanded in Taylor form with a
Lagrange remainder, its terms enclosed by Taylor-mode interval arithmetic (``_Series`` over
mpmath.iv, ``_Evaluator`` walking the sympy expression); cells are bisected, largest bound first,
until the bound is within the tolerance of a value |e| attains or the budget runs out.

:func:`taylor_remainder` uses the same arithmetic on f^(p+1) alone: the integral form of the Taylor
remainder, with f^(p+1) enclosed cell by cell on the real interval, bounds f - T_p without the
cancellation that the coefficients of T_p suffer at large radii.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from fractions import Fraction

import sympy as sp
from mpmath import iv
from mpmath.libmp import finf, fnan, fninf

from fastattn.errors import SpecError
from fastattn.transforms.intervals import _iv_erf, _iv_hyperbolic, constant_enclosure, iv_of_fraction, mpf_to_fraction
from fastattn.transforms.parse import X

__all__ = ["certify", "taylor_remainder", "taylor_error_at"]

#: Taylor order of the cell expansions, interval digits, cell cap, and the smallest cell width.
_ORDER = 6
_IV_DIGITS = 40
_MAX_CELLS = 20000
_TINY = Fraction(1, 2**40)


@dataclass
class _Certificate:
    upper: Fraction
    lower: Fraction
    breaks: list


class _Kink(Exception):
    """f is continuous but not smooth on the interval (a branch of Abs / Max / Min changes, sqrt at 0)."""


class _Undefined(Exception):
    """f has no finite enclosure on the interval (a pole, log of <= 0, overflow)."""


def certify(expr, coeffs: list[Fraction], R: Fraction, *, tolerance, seconds, order=_ORDER, digits=_IV_DIGITS,
             breaks=(), target=None) -> _Certificate:
    """Adaptive bisection of [-R, R] until every cell's bound is <= tolerance · (largest |e| at a centre)."""
    deadline = time.monotonic() + seconds
    old = iv.dps
    iv.dps = digits
    try:
        ev = _Evaluator(expr, coeffs, order)
        if not breaks:
            n0 = 1 << max(3, (2 * len(coeffs)).bit_length())
            breaks = [-R + 2 * R * i / n0 for i in range(n0 + 1)]
        heap, lower = [], max(ev.at(-R), ev.at(R))
        for a, b in zip(breaks, breaks[1:]):
            up, low = ev.cell(Fraction(a), Fraction(b))
            lower = max(lower, low)
            heap.append((-up, a, b))
        heapq.heapify(heap)
        floor = Fraction(1, 10 ** (digits - 12))
        while True:
            up = -heap[0][0]
            stop = target if target is not None else Fraction(tolerance) * lower + floor
            if up <= stop or len(heap) >= _MAX_CELLS or time.monotonic() > deadline:
                break
            if target is not None and lower > target:
                break  # |e| exceeds the claimed bound at a point: no refinement can rescue it
            _, a, b = heapq.heappop(heap)
            if up == math.inf and b - a < R * _TINY:
                heapq.heappush(heap, (-up, a, b))
                break  # a cell this small still has no enclosure: a pole or a point where f is undefined
            m = (a + b) / 2
            for lo, hi in ((a, m), (m, b)):
                u, low = ev.cell(lo, hi)
                lower = max(lower, low)
                heapq.heappush(heap, (-u, lo, hi))
        upper = -heap[0][0]
        if upper == math.inf:
            cell = next(c for c in heap if c[0] == -math.inf)
            raise SpecError(f"no finite bound on |f - poly| over [{float(cell[1]):.6g}, {float(cell[2]):.6g}] "
                            f"for f = {expr}: f is unbounded or undefined there ({ev.why}); choose a smaller radius")
        cells = sorted((c[1], c[2]) for c in heap)
        return _Certificate(upper=upper, lower=lower, breaks=[c[0] for c in cells] + [cells[-1][1]])
    finally:
        iv.dps = old


def taylor_remainder(expr, p: int, R: Fraction, *, tolerance=2, seconds: float = 1.0, digits: int = 20,
                     max_cells: int = 512) -> tuple[Fraction, Fraction] | None:
    """``(bound, estimate)`` with ``sup_{|x| <= R} |f(x) - T_p(x)| <= bound``, or None; T_p the Taylor polynomial at 0.

    The integral form of the remainder, f(x) - T_p(x) = int_0^x f^(p+1)(t) (x - t)^p / p! dt, with
    c = f^(p+1) / (p+1)! and M_i >= |c| on the cells [a_i, b_i] of [0, R] (mirrored for x < 0), gives
    for every x on that side

        |f(x) - T_p(x)| <= sum_i M_i ((R - a_i)^(p+1) - (R - b_i)^(p+1)),

    since (|x| - t)^p <= (R - t)^p. One cell is the Lagrange bound R^(p+1) sup |c|; finer cells weigh
    the cells near 0 more, where (R - t)^p is large, which keeps the bound within a small factor of
    the true error where the Lagrange form is far off (log(1 + x) and 1/(1 - x) near their radius).
    M_i is the smaller of the Taylor-mode enclosure of c over the cell and the second-order centred
    form c(m) + c'(m) s + c''(xi) s^2 / 2 (c'' enclosed over the cell). Cells are bisected, largest
    excess over |c(centre)| first, until the bound is within ``tolerance`` of the same sum taken with
    |c(centre)| (``estimate``: what refinement can reach, not a bound on the error), or ``seconds`` or
    ``max_cells`` run out: the bound stays rigorous, only looser. None where f^(p+1) has no finite
    enclosure on a small cell (a node without a rule, a value outside a function's domain).

    >>> from fastattn.transforms.parse import X
    >>> bound, _ = taylor_remainder(sp.log(1 + X), 5, Fraction(99, 100))
    >>> 2.37 < float(bound) < 5   # the true error, at x = -0.99, is 2.371
    True
    """
    try:
        return _taylor_remainder(expr, p, R, tolerance, seconds, digits, max_cells)
    except (_Undefined, _Kink):
        return None


def _taylor_remainder(expr, p, R, tolerance, seconds, digits, max_cells):
    deadline = time.monotonic() + seconds
    K = p + 1
    old = iv.dps
    iv.dps = digits
    try:
        ev = _Evaluator(expr, [Fraction(0)], K)
        # per side (+1: [0, R], -1: [-R, 0]): sum of M_i w_i over finite cells, number of cells without
        # an enclosure, the sum of |c(centre)| w_i, and the cells (-excess, a, b, M, m, w) as a heap
        finite, unbounded = {1: Fraction(0), -1: Fraction(0)}, {1: 0, -1: 0}
        lower, heaps = {1: Fraction(0), -1: Fraction(0)}, {1: [], -1: []}

        def upper(side):
            return math.inf if unbounded[side] else finite[side]

        def add(side, a, b):
            M, m = _derivative_cell(ev, expr, K, a, b) if side > 0 else _derivative_cell(ev, expr, K, -b, -a)
            w = (R - a) ** K - (R - b) ** K
            if M == math.inf:
                unbounded[side] += 1
            else:
                finite[side] += M * w
            lower[side] += m * w
            heapq.heappush(heaps[side], (-math.inf if M == math.inf else -((M - m) * w), a, b, M, m, w))

        for side in (1, -1):
            add(side, Fraction(0), R / 2)
            add(side, R / 2, R)
        while True:
            side = max((1, -1), key=upper)
            if upper(side) <= Fraction(tolerance) * max(lower.values()) or time.monotonic() > deadline:
                break
            if len(heaps[1]) + len(heaps[-1]) >= max_cells:
                break
            _, a, b, M, m, w = heapq.heappop(heaps[side])
            if M == math.inf:
                if b - a < R * _TINY or (a == 0 and b <= R / 8):
                    # undefined or unbounded there; at 0 it is the form of f (sin(x)/x), which bisection keeps
                    return None
                unbounded[side] -= 1
            else:
                finite[side] -= M * w
            lower[side] -= m * w
            mid = (a + b) / 2
            add(side, a, mid)
            add(side, mid, b)
        bound = max(upper(1), upper(-1))
        if bound == math.inf:
            return None
        return bound, max(lower.values())
    finally:
        iv.dps = old


def taylor_error_at(expr, coefficients: list, points: list[Fraction], digits: int = 30) -> Fraction:
    """The largest |f(x) - sum_k c_k x^k| over the points, rounded down (a point where f has no enclosure counts 0).

    ``coefficients`` are mpmath.iv intervals containing c_k. A lower bound on the sup error: a bound
    within a small factor of it needs no refinement.

    >>> from fastattn.transforms.parse import X
    >>> from mpmath import iv
    >>> float(taylor_error_at(sp.exp(X), [iv.mpf(1), iv.mpf(1)], [Fraction(1)]))   # e - 2
    0.7182818284590452
    """
    old = iv.dps
    iv.dps = digits
    try:
        ev = _Evaluator(expr, [Fraction(0)], 0)
        best = Fraction(0)
        for x in points:
            xi = iv_of_fraction(x)
            poly = iv.mpf(0)
            for c in reversed(coefficients):
                poly = poly * xi + c
            try:
                best = max(best, _abs_lower(_Series(ev, xi, 0).of(expr)[0] - poly))
            except (_Undefined, _Kink):
                continue
        return best
    finally:
        iv.dps = old


def _derivative_cell(ev, expr, K: int, a: Fraction, b: Fraction) -> tuple:
    """(upper bound on |c_K| over [a, b], |c_K(centre)| rounded down), c_K = f^(K) / K!; (inf, 0) without enclosure."""
    m, h = (a + b) / 2, (b - a) / 2
    # no enclosure at a single point: f^(K) is undefined there (or a node has no rule); bisecting cannot help
    at = _Series(ev, iv_of_fraction(m), K + 1).of(expr)
    low = _abs_lower(at[K])
    try:
        over = _Series(ev, iv.mpf([iv_of_fraction(a).a, iv_of_fraction(b).b]), K + 2).of(expr)
    except (_Undefined, _Kink):
        return math.inf, low
    # c_K(m + s) = c_K(m) + (K+1) c_{K+1}(m) s + C(K+2, 2) c_{K+2}(xi) s^2 for some xi in the cell
    s = iv.mpf([-1, 1]) * iv_of_fraction(h)
    centred = at[K] + (K + 1) * at[K + 1] * s + math.comb(K + 2, 2) * over[K + 2] * s * s
    return min(_abs_upper(over[K]), _abs_upper(centred)), low


def _finite(v) -> bool:
    return all(x not in (finf, fninf, fnan) for x in v._mpi_)


def _abs_upper(v) -> Fraction:
    a, b = mpf_to_fraction(v._mpi_[0]), mpf_to_fraction(v._mpi_[1])
    return max(abs(a), abs(b))


def _abs_lower(v) -> Fraction:
    a, b = mpf_to_fraction(v._mpi_[0]), mpf_to_fraction(v._mpi_[1])
    return Fraction(0) if a <= 0 <= b else min(abs(a), abs(b))


class _Evaluator:
    """Enclosures of e = f - poly on cells; f by Taylor-mode interval arithmetic, poly by exact Taylor shifts."""

    def __init__(self, expr, coeffs, order):
        self.expr, self.order = expr, order
        self.coeffs = list(coeffs) or [Fraction(0)]
        self.den = math.lcm(*(c.denominator for c in self.coeffs))
        self.num = [c.numerator * (self.den // c.denominator) for c in self.coeffs]
        self.consts: dict = {}
        self.why = ""

    def _shift(self, m: Fraction) -> list[Fraction]:
        """Exact Taylor coefficients s_k of poly(m + t), by integer synthetic division."""
        a, b = m.numerator, m.denominator
        p = len(self.num) - 1
        # Q(z) = b^p P(z / b) has integer coefficients; poly(m + t) = Q(a + b t) / (b^p den)
        q = [n * b ** (p - j) for j, n in enumerate(self.num)]
        for i in range(p):
            for j in range(p - 1, i - 1, -1):
                q[j] += a * q[j + 1]
        scale = b**p * self.den
        return [Fraction(q[k] * b**k, scale) for k in range(p + 1)]

    def at(self, x: Fraction) -> Fraction:
        """|e(x)| rounded down (0 where f has no enclosure at x)."""
        s = self._shift(x)
        try:
            return _abs_lower(_Series(self, iv_of_fraction(x), 0).of(self.expr)[0] - iv_of_fraction(s[0]))
        except (_Undefined, _Kink):
            return Fraction(0)

    def cell(self, a: Fraction, b: Fraction) -> tuple:
        """(upper bound on |e| over [a, b], |e| at the centre rounded down)."""
        m, h = (a + b) / 2, (b - a) / 2
        K = self.order
        s = self._shift(m)
        s = s + [Fraction(0)] * (K + 1 - len(s))
        try:
            at = _Series(self, iv_of_fraction(m), K - 1).of(self.expr)
        except (_Undefined, _Kink) as exc:
            self.why = str(exc) or type(exc).__name__
            return math.inf, Fraction(0)
        e = [at[k] - iv_of_fraction(s[k]) for k in range(K)]
        lower = _abs_lower(e[0])
        try:
            over = _Series(self, iv.mpf([iv_of_fraction(a).a, iv_of_fraction(b).b]), K).of(self.expr)
            # the K-th Taylor coefficient of poly over the cell: sum_{j >= K} s_j C(j, K) t^(j-K), |t| <= h
            tail = sum((abs(s[j]) * math.comb(j, K) * h ** (j - K) for j in range(K + 1, len(s))), Fraction(0))
            pk = iv_of_fraction(s[K]) + iv.mpf([-1, 1]) * iv_of_fraction(tail)
            eK = over[K] - pk
            up = sum((_abs_upper(e[k]) * h**k for k in range(K)), Fraction(0)) + _abs_upper(eK) * h**K
        except _Kink:
            try:
                f0 = _Series(self, iv.mpf([iv_of_fraction(a).a, iv_of_fraction(b).b]), 0).of(self.expr)[0]
            except _Undefined as exc:
                self.why = str(exc)
                return math.inf, lower
            rest = sum((abs(s[j]) * h**j for j in range(1, len(s))), Fraction(0))
            up = _abs_upper(f0 - iv_of_fraction(s[0])) + rest
        except _Undefined as exc:
            self.why = str(exc)
            return math.inf, lower
        return up, lower


class _Series:
    """Truncated Taylor series (mpmath.iv coefficients) of sub-expressions of f at a base point or interval."""

    def __init__(self, ev: _Evaluator, x0, K: int):
        self.ev, self.x0, self.K = ev, x0, K
        self.memo: dict = {}

    def const(self, e):
        c = self.ev.consts.get(e)
        if c is None:
            c = constant_enclosure(e)
            self.ev.consts[e] = c
        return [c] + [iv.mpf(0)] * self.K

    def of(self, e) -> list:
        got = self.memo.get(e)
        if got is None:
            got = self._walk(e)
            for c in got:
                if not _finite(c):
                    raise _Undefined(f"{e} is unbounded near x in {self.x0}")
            self.memo[e] = got
        return got

    # series arithmetic; terms with an exactly zero coefficient are skipped (the series of x, x**2 are
    # sparse, which makes erf(x), sin(x), exp(-x**2) linear instead of quadratic in the order)
    @staticmethod
    def _nonzero(u, first=1):
        """(j, j u_j) for the j >= first with u_j not exactly 0."""
        return [(j, j * u[j]) for j in range(first, len(u)) if u[j].a != 0 or u[j].b != 0]

    def mul(self, u, v):
        nz = [(i, u[i]) for i in range(self.K + 1) if u[i].a != 0 or u[i].b != 0]
        return [sum((ui * v[k - i] for i, ui in nz if i <= k), iv.mpf(0)) for k in range(self.K + 1)]

    def div(self, u, v):
        if v[0].a <= 0 <= v[0].b:
            raise _Undefined("division by a value that may be 0")
        nz = [(j, v[j]) for j in range(1, self.K + 1) if v[j].a != 0 or v[j].b != 0]
        out = []
        for k in range(self.K + 1):
            out.append((u[k] - sum((vj * out[k - j] for j, vj in nz if j <= k), iv.mpf(0))) / v[0])
        return out

    def integrate(self, g0, u, w):
        """g with g' = w u' and g(0) = g0, coefficient-wise: k g_k = sum_j j u_j w_{k-j}."""
        out = [g0]
        nz = self._nonzero(u)
        for k in range(1, self.K + 1):
            out.append(sum((ju * w[k - j] for j, ju in nz if j <= k), iv.mpf(0)) / k)
        return out

    def _walk(self, e):
        K = self.K
        if e == X:
            return [self.x0, iv.mpf(1)] + [iv.mpf(0)] * (K - 1) if K else [self.x0]
        if not e.has(X):
            return self.const(e)
        if isinstance(e, sp.Add):
            out = self.of(e.args[0])
            for a in e.args[1:]:
                out = [x + y for x, y in zip(out, self.of(a))]
            return out
        if isinstance(e, sp.Mul):
            out = self.of(e.args[0])
            for a in e.args[1:]:
                out = self.mul(out, self.of(a))
            return out
        if isinstance(e, sp.Pow):
            return self._pow(*e.args)
        if isinstance(e, sp.exp):
            return self._exp(self.of(e.args[0]))
        if isinstance(e, sp.log):
            u = self.of(e.args[0])
            if u[0].a <= 0:
                raise _Undefined("log of a value that may be <= 0")
            out = [iv.log(u[0])]
            for k in range(1, K + 1):
                out.append((u[k] - sum((j * out[j] * u[k - j] for j in range(1, k)), iv.mpf(0)) / k) / u[0])
            return out
        if isinstance(e, (sp.sin, sp.cos, sp.sinh, sp.cosh)):
            u = self.of(e.args[0])
            hyper = isinstance(e, (sp.sinh, sp.cosh))
            if hyper:
                s, c = [_iv_hyperbolic(sp.sinh, u[0])], [_iv_hyperbolic(sp.cosh, u[0])]
            else:
                s, c = [iv.sin(u[0])], [iv.cos(u[0])]
            nz = self._nonzero(u)
            for k in range(1, K + 1):
                s.append(sum((ju * c[k - j] for j, ju in nz if j <= k), iv.mpf(0)) / k)
                ck = sum((ju * s[k - j] for j, ju in nz if j <= k), iv.mpf(0)) / k
                c.append(ck if hyper else -ck)
            return s if isinstance(e, (sp.sin, sp.sinh)) else c
        if isinstance(e, (sp.tan, sp.tanh)):
            u = self.of(e.args[0])
            sign = 1 if isinstance(e, sp.tan) else -1
            t0 = iv.tan(u[0]) if sign == 1 else _iv_hyperbolic(sp.tanh, u[0])
            if not _finite(t0):
                raise _Undefined(f"{e} has a pole near x in {self.x0}")
            t, w = [t0], []
            nz = self._nonzero(u)
            for k in range(1, K + 1):
                # w = 1 ± t^2, needed up to order k - 1
                m = k - 1
                w.append((1 if m == 0 else 0) + sign * sum((t[i] * t[m - i] for i in range(m + 1)), iv.mpf(0)))
                t.append(sum((ju * w[k - j] for j, ju in nz if j <= k), iv.mpf(0)) / k)
            return t
        if isinstance(e, sp.erf):
            u = self.of(e.args[0])
            w = [x * (2 / iv.sqrt(iv.pi)) for x in self._exp([-x for x in self.mul(u, u)])]
            return self.integrate(_iv_erf(u[0]), u, w)
        if isinstance(e, sp.atan):
            u = self.of(e.args[0])
            one = [iv.mpf(1)] + [iv.mpf(0)] * K
            w = self.div(one, [x + y for x, y in zip(one, self.mul(u, u))])
            return self.integrate(iv.atan2(u[0], iv.mpf(1)), u, w)
        if isinstance(e, sp.Abs):
            u = self.of(e.args[0])
            if u[0].a >= 0:
                return u
            if u[0].b <= 0:
                return [-x for x in u]
            if K:
                raise _Kink()
            return [iv.mpf([0, max(-u[0].a, u[0].b)])]
        if isinstance(e, (sp.Max, sp.Min)):
            parts = [self.of(a) for a in e.args]
            big = isinstance(e, sp.Max)
            for cand in parts:
                # cand wins on the whole interval when it is >= (<=) every other argument there
                if all((cand[0] - o[0]).a >= 0 if big else (cand[0] - o[0]).b <= 0 for o in parts if o is not cand):
                    return cand
            if K:
                raise _Kink()
            pick = max if big else min
            return [iv.mpf([pick(v[0].a for v in parts), pick(v[0].b for v in parts)])]
        raise _Undefined(f"{type(e).__name__} has no interval rule")

    def _exp(self, u):
        out = [iv.exp(u[0])]
        nz = self._nonzero(u)
        for k in range(1, self.K + 1):
            out.append(sum((ju * out[k - j] for j, ju in nz if j <= k), iv.mpf(0)) / k)
        return out

    def _pow(self, base, ex):
        K = self.K
        if base == sp.E:
            return self._exp(self.of(ex))
        if ex.has(X):
            return self._exp(self.of(ex * sp.log(base)))
        u = self.of(base)
        if ex.is_Integer:
            n = int(ex)
            if n < 0:
                one = [iv.mpf(1)] + [iv.mpf(0)] * K
                return self.div(one, self._pow(base, sp.Integer(-n)))
            out, sq, k = [iv.mpf(1)] + [iv.mpf(0)] * K, u, n
            while k:
                if k & 1:
                    out = self.mul(out, sq)
                k >>= 1
                if k:
                    sq = self.mul(sq, sq)
            # the constant term u0^n: mpmath's power is tight where repeated products are not
            out[0] = u[0] ** n
            return out
        alpha = constant_enclosure(ex)
        if u[0].a <= 0:
            if u[0].a >= 0 and ex.is_positive:
                if K:
                    raise _Kink()  # defined at 0 but not smooth there: the caller encloses by value only
                top = iv.exp(alpha * iv.log(iv.mpf(u[0].b))) if u[0].b > 0 else iv.mpf(0)
                return [iv.mpf([0, top.b])]
            raise _Undefined(f"{base}**{ex} at a value that may be <= 0")
        out = [iv.exp(alpha * iv.log(u[0]))]
        for k in range(1, K + 1):
            out.append(sum(((alpha * j - (k - j)) * u[j] * out[k - j] for j in range(1, k + 1)), iv.mpf(0))
                       / (k * u[0]))
        return out
