"""Rigorous enclosures of e = f - poly on a real interval, for :mod:`fastattn.transforms.approx`.

[-R, R] is cut into cells with rational ends; on each cell e is expanded in Taylor form with a
Lagrange remainder, its terms enclosed by Taylor-mode interval arithmetic (``_Series`` over
mpmath.iv, ``_Evaluator`` walking the sympy expression); cells are bisected, largest bound first,
until the bound is within the tolerance of a value |e| attains or the budget runs out.
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

__all__ = ["certify"]

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

    # series arithmetic
    def mul(self, u, v):
        return [sum((u[i] * v[k - i] for i in range(1, k + 1)), u[0] * v[k]) for k in range(self.K + 1)]

    def div(self, u, v):
        if v[0].a <= 0 <= v[0].b:
            raise _Undefined("division by a value that may be 0")
        out = []
        for k in range(self.K + 1):
            out.append((u[k] - sum((v[j] * out[k - j] for j in range(1, k + 1)), iv.mpf(0))) / v[0])
        return out

    def integrate(self, g0, u, w):
        """g with g' = w u' and g(0) = g0, coefficient-wise: k g_k = sum_j j u_j w_{k-j}."""
        out = [g0]
        for k in range(1, self.K + 1):
            out.append(sum((j * u[j] * w[k - j] for j in range(1, k + 1)), iv.mpf(0)) / k)
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
            for k in range(1, K + 1):
                s.append(sum((j * u[j] * c[k - j] for j in range(1, k + 1)), iv.mpf(0)) / k)
                ck = sum((j * u[j] * s[k - j] for j in range(1, k + 1)), iv.mpf(0)) / k
                c.append(ck if hyper else -ck)
            return s if isinstance(e, (sp.sin, sp.sinh)) else c
        if isinstance(e, (sp.tan, sp.tanh)):
            u = self.of(e.args[0])
            sign = 1 if isinstance(e, sp.tan) else -1
            t0 = iv.tan(u[0]) if sign == 1 else _iv_hyperbolic(sp.tanh, u[0])
            if not _finite(t0):
                raise _Undefined(f"{e} has a pole near x in {self.x0}")
            t, w = [t0], []
            for k in range(1, K + 1):
                # w = 1 ± t^2, needed up to order k - 1
                m = k - 1
                w.append((1 if m == 0 else 0) + sign * sum((t[i] * t[m - i] for i in range(m + 1)), iv.mpf(0)))
                t.append(sum((j * u[j] * w[k - j] for j in range(1, k + 1)), iv.mpf(0)) / k)
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
        for k in range(1, self.K + 1):
            out.append(sum((j * u[j] * out[k - j] for j in range(1, k + 1)), iv.mpf(0)) / k)
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
