"""Rank theorems as checks: polynomial ⇒ low rank (attained), non-polynomial ⇒ full rank, preservation.

* :func:`low_rank_certificate` — for f = Σ_{j∈S} a_j x^j and head dim d:
  rank f(QKᵀ) ≤ Σ_{j∈S} C(d+j-1, j) for every Q, K (the factorisation through
  monomials), and integer Q, K on which the rank is exactly that bound.
* :func:`full_rank_witness` — for a non-polynomial f and any n: Q, K with f(QKᵀ)
  n×n non-singular. Exact when the entries are rational (an integer determinant
  non-zero modulo a prime), otherwise a rigorous lower bound on σ_min.
* :func:`low_rank_preservation` — f maps every rank ≤ ⌈log₂ n⌉+1 matrix to rank < n,
  or a rank-r input whose image has full rank n.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from fractions import Fraction

import mpmath
import numpy as np
import sympy as sp
from mpmath import iv

from fastattn.proofs_checks import _arith
from fastattn.proofs_checks._arith import NotExact
from fastattn.proofs_checks.certificates import Certificate, CertificateError
from fastattn.transforms import X, spec as make_spec

__all__ = [
    "LowRankCertificate", "FullRankCertificate", "PreservationCertificate",
    "low_rank_certificate", "full_rank_witness", "low_rank_preservation", "rank_bound",
    "MAX_BOUND", "MAX_N",
]

# only the hyperbolic functions become exponentials (a blanket rewrite turns Max(x,0)**2 into exp(2 log Max))
_HYPERBOLIC = [sp.sinh, sp.cosh, sp.tanh]

#: Largest rank bound attained explicitly (an n×n exact rank computation with n = bound).
MAX_BOUND = 400
#: Largest n for a full-rank witness.
MAX_N = 256


def rank_bound(f, d: int) -> int | None:
    """Σ_{j∈S} C(d+j-1, j) for a polynomial f = Σ_{j∈S} a_j x^j; None when f is not a polynomial.

    >>> rank_bound("1 + x + x**2/2", 16)
    153
    >>> rank_bound("exp(x)", 16) is None
    True
    """
    f = make_spec(f)
    d = _check_pos_int(d, "d")
    if not f.is_polynomial:
        return None
    return sum(math.comb(d + j - 1, j) for j in _support(f))


def _support(f) -> list[int]:
    return [j for j, a in enumerate(f.coefficients()) if a != 0]


def _check_pos_int(v, name: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise CertificateError(f"{name}={v!r} must be an integer >= {lo}")
    return int(v)


def _fr(a: sp.Expr) -> Fraction:
    return Fraction(int(a.p), int(a.q))


def _monomials(d: int, j: int) -> list[tuple[int, ...]]:
    # exponent vectors alpha with |alpha| = j
    out = []
    for combo in itertools.combinations_with_replacement(range(d), j):
        alpha = [0] * d
        for c in combo:
            alpha[c] += 1
        out.append(tuple(alpha))
    return out


def _multinomial(alpha) -> int:
    out = math.factorial(sum(alpha))
    for a in alpha:
        out //= math.factorial(a)
    return out


def _mono_matrix(P: list[list[int]], support: list[int], d: int) -> tuple[list[list[int]], list[tuple[int, tuple]]]:
    cols = [(j, alpha) for j in support for alpha in _monomials(d, j)]
    rows = []
    for p in P:
        row = []
        for _, alpha in cols:
            v = 1
            for pi, ai in zip(p, alpha):
                v *= pi**ai
            row.append(v)
        rows.append(row)
    return rows, cols


# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class LowRankCertificate(Certificate):
    """rank f(QKᵀ) ≤ bound for all n×d Q, K, and = bound for the stored integer Q, K.

    Upper bound: f(QKᵀ) = M_Q W M_Kᵀ with M the n×bound monomial matrices and W
    diagonal (multinomial theorem), checked exactly on the witness. Lower bound: the
    bound×bound minor at ``pivot_rows`` × ``pivot_cols`` has an integer determinant
    that is non-zero modulo a prime.
    """

    d: int = 1
    support: list = field(default_factory=list)
    coefficients: list = field(default_factory=list)
    bound: int = 0
    Q: list = field(default_factory=list)
    K: list = field(default_factory=list)
    pivot_rows: list = field(default_factory=list)
    pivot_cols: list = field(default_factory=list)
    prime: int = 0
    det_mod_p: int = 0
    #: "matrix": the minor is of f(QKᵀ) itself (rational coefficients). "factors": of M_Q and M_K.
    target: str = "matrix"
    _expr: sp.Expr | None = None

    def numbers(self) -> dict:
        return {
            "d": self.d,
            "degrees": self.support,
            "terms": {j: math.comb(self.d + j - 1, j) for j in self.support},
            "rank_bound": self.bound,
            "n": len(self.Q),
            "exact_rank_of_witness": self.bound,
            "prime": self.prime,
            "minor_det_mod_prime": self.det_mod_p,
        }

    def witness(self) -> dict:
        return {"Q": self.Q, "K": self.K, "pivot_rows": self.pivot_rows, "pivot_cols": self.pivot_cols, "target": self.target}

    def _verify(self) -> None:
        expr = self._expr if self._expr is not None else make_spec(self.spec).expr
        poly = sp.Poly(expr, X)
        coeffs = {int(m[0]): c for m, c in zip(poly.monoms(), poly.coeffs())}
        support = sorted(j for j, c in coeffs.items() if c != 0)
        if support != list(self.support):
            self._fail(f"the spec has degrees {support}, the certificate says {self.support}")
        # the bound, counted by enumeration rather than by the binomial formula
        counted = sum(len(_monomials(self.d, j)) for j in support)
        if counted != self.bound:
            self._fail(f"the monomial count is {counted}, the certificate claims {self.bound}")
        if len(self.pivot_rows) != self.bound or len(set(self.pivot_rows)) != self.bound:
            self._fail(f"the minor has {len(set(self.pivot_rows))} distinct rows, not {self.bound}")
        MQ, cols = _mono_matrix(self.Q, support, self.d)
        MK, _ = _mono_matrix(self.K, support, self.d)
        if self.target == "matrix":
            if not all(c.is_Rational for c in coeffs.values()):
                self._fail("target 'matrix' needs rational coefficients")
            # entries from sympy's own polynomial evaluation (not the fast integer path of the search)
            L = sp.ilcm(1, 1, *[c.q for c in coeffs.values()])
            scaled = sp.Poly(expr * L, X)
            S = np.array(self.Q, dtype=object).dot(np.array(self.K, dtype=object).T)
            F = [[int(scaled.eval(sp.Integer(int(s)))) for s in row] for row in S]
            # the factorisation through the bound many monomials, exactly, on every entry
            W = np.array([int(coeffs[j] * L) * _multinomial(alpha) for j, alpha in cols], dtype=object)
            G = (np.array(MQ, dtype=object) * W[None, :]).dot(np.array(MK, dtype=object).T)
            bad = [(i, jj) for i, row in enumerate(F) for jj, v in enumerate(row) if v != G[i, jj]]
            if bad:
                i, jj = bad[0]
                self._fail(f"entry {bad[0]} is {F[i][jj]}/{L} but the monomial factorisation gives {G[i, jj]}/{L}")
            minor_int = [[F[i][c] for c in self.pivot_cols] for i in self.pivot_rows]
            got = _arith.nonzero_det_prime(minor_int, skip=self.prime)
            if got is None:
                self._fail(f"the {self.bound}x{self.bound} minor is singular modulo every prime tried")
        else:
            for name, M in (("M_Q", MQ), ("M_K", MK)):
                sub = [M[i] for i in self.pivot_rows] if name == "M_Q" else [M[i] for i in self.pivot_cols]
                if _arith.nonzero_det_prime(sub, skip=self.prime) is None:
                    self._fail(f"the {self.bound}x{self.bound} minor of {name} is singular modulo every prime tried")
        _check_multinomial_identity(self.d, support, self)


def _check_multinomial_identity(d: int, support: list[int], cert: Certificate) -> None:
    """(q·k)^j = Σ_α (j!/α!) q^α k^α as polynomials, where the expansion is small enough for sympy."""
    if sum(len(_monomials(d, j)) for j in support) > 200:
        return
    qs = sp.symbols(f"q0:{d}")
    ks = sp.symbols(f"k0:{d}")
    dot = sum(a * b for a, b in zip(qs, ks))
    for j in support:
        rhs = sum(_multinomial(al) * sp.Mul(*[q**a for q, a in zip(qs, al)]) * sp.Mul(*[k**a for k, a in zip(ks, al)])
                  for al in _monomials(d, j))
        if sp.expand(dot**j - rhs) != 0:
            cert._fail(f"the multinomial identity fails for d={d}, j={j}")


def low_rank_certificate(f, d: int, *, seed: int = 0) -> LowRankCertificate:
    """Prove rank f(QKᵀ) ≤ Σ_{j∈S} C(d+j-1, j) and that integer Q, K attain it.

    Parameters
    ----------
    f : str, sympy expression or Spec
        A polynomial spec (anything else raises :class:`CertificateError`; see
        :func:`full_rank_witness`).
    d : int
        Head dimension (number of columns of Q and K).
    seed : int
        Seed of the integer search (retried with seed+1, ... if unlucky).

    Examples
    --------
    >>> cert = low_rank_certificate("1 + x + x**2/2", d=3)
    >>> cert.bound, cert.verify()
    (10, True)
    """
    f = make_spec(f)
    d = _check_pos_int(d, "d")
    if not f.is_polynomial:
        raise CertificateError(
            f"{f.source!r} is {f.kind} ({f.reason}), not a polynomial: f(QK^T) has no rank bound below n; "
            "use full_rank_witness(f, n) for the certified full-rank witness"
        )
    support = _support(f)
    if not support:
        raise CertificateError(f"{f.source!r} is identically zero: rank 0, nothing to certify")
    bound = sum(math.comb(d + j - 1, j) for j in support)
    if bound > MAX_BOUND:
        raise CertificateError(
            f"the rank bound {bound} for {f.source!r} at d={d} is above {MAX_BOUND}, too large to attain "
            "explicitly; use rank_bound(f, d) for the bound alone"
        )
    coeffs = f.coefficients()
    rational = all(coeffs[j].is_Rational for j in support)
    n = bound
    for attempt in range(8):
        rng = random.Random(seed * 1000 + attempt)
        Q, K = _integer_points(rng, n, d, attempt)
        if rational:
            Fi = _poly_int_matrix(coeffs, support, Q, K)
            p = _arith.PRIMES[0]
            r, rows, cols = _arith.rank_mod_p(Fi, p)
            if r == bound:
                minor = [[Fi[i][c] for c in cols] for i in rows]
                return _low_rank_cert(f, d, support, coeffs, bound, Q, K, rows, cols, p, _arith.det_mod_p(minor, p), "matrix")
        else:
            p = _arith.PRIMES[0]
            MQ, _ = _mono_matrix(Q, support, d)
            MK, _ = _mono_matrix(K, support, d)
            rq, rows, _ = _arith.rank_mod_p(MQ, p)
            rk, krows, _ = _arith.rank_mod_p(MK, p)
            if rq == bound and rk == bound:
                return _low_rank_cert(f, d, support, coeffs, bound, Q, K, rows, krows, p,
                                      _arith.det_mod_p([MQ[i] for i in rows], p), "factors")
    raise CertificateError(f"no integer Q, K attaining the bound {bound} for {f.source!r} at d={d} in 8 tries; try another seed")


def _poly_int_matrix(coeffs, support, Q, K) -> list[list[int]]:
    """L·f(QKᵀ) as Python ints, L the lcm of the coefficient denominators (integer Q, K)."""
    L = 1
    for j in support:
        L = L * int(coeffs[j].q) // math.gcd(L, int(coeffs[j].q))
    c = {j: int(coeffs[j] * L) for j in support}
    S = np.array(Q, dtype=object).dot(np.array(K, dtype=object).T)
    return [[sum(c[j] * int(s) ** j for j in support) for s in row] for row in S]


def _integer_points(rng: random.Random, n: int, d: int, attempt: int) -> tuple[list, list]:
    if d == 1:
        span = n + 2 + attempt
        return ([[v] for v in rng.sample(range(-span, span + 1), n)], [[v] for v in rng.sample(range(-span, span + 1), n)])
    B = 3 + attempt
    return ([[rng.randint(-B, B) for _ in range(d)] for _ in range(n)], [[rng.randint(-B, B) for _ in range(d)] for _ in range(n)])


def _low_rank_cert(f, d, support, coeffs, bound, Q, K, rows, cols, p, det, target):
    terms = " + ".join(f"C({d + j - 1},{j})" for j in support)
    return LowRankCertificate(
        spec=f.source, check="low-rank", holds=True, method="modular",
        claim=(f"rank f(QK^T) <= {terms} = {bound} for all n x {d} Q, K, with equality for the stored "
               f"{len(Q)} x {d} integer Q, K"),
        d=d, support=support, coefficients=[str(coeffs[j]) for j in support], bound=bound, Q=Q, K=K,
        pivot_rows=rows, pivot_cols=cols, prime=p, det_mod_p=det, target=target, _expr=f.expr,
    )


# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class FullRankCertificate(Certificate):
    """f(QKᵀ) is n×n non-singular for the stored Q, K (n×d).

    ``method == "modular"``: entries are exact rationals; the row-scaled integer matrix
    has determinant ``det_mod_p`` ≠ 0 modulo ``prime``.
    ``method == "interval"`` / ``"high-precision"``: A = A_mid + E with |E_ij| ≤ delta;
    B is an approximate inverse; ‖I - B A_mid‖_F ≤ rho < 1 (exact integers) gives
    σ_min(A) ≥ (1 - rho)/‖B‖_F - n·delta = ``sigma_min_lower`` > 0.
    """

    n: int = 0
    d: int = 1
    construction: str = ""
    q: list = field(default_factory=list)
    k: list = field(default_factory=list)
    prime: int = 0
    det_mod_p: int = 0
    bits: int = 0
    A_mid: list = field(default_factory=list)
    B: list = field(default_factory=list)
    delta: Fraction = Fraction(0)
    rho: Fraction = Fraction(0)
    sigma_min_lower: Fraction = Fraction(0)
    _expr: sp.Expr | None = None
    _xs: list | None = None

    def numbers(self) -> dict:
        out = {"n": self.n, "d": self.d, "construction": self.construction, "q": _short(self.q), "k": _short(self.k)}
        if self.method == "modular":
            out.update(prime=self.prime, det_mod_prime=self.det_mod_p)
        else:
            out.update(
                working_bits=self.bits,
                entry_error_bound=_arith.fraction_str_down(self.delta) if self.delta else "0",
                residual_bound=_arith.fraction_str_down(self.rho),
                sigma_min_lower_bound=_arith.fraction_str_down(self.sigma_min_lower),
            )
        return out

    def witness(self) -> dict:
        out = {"q": self.q, "k": self.k}
        if self.method != "modular":
            out.update(bits=self.bits, A_mid=self.A_mid, B=self.B, delta=self.delta)
        return out

    def _scores(self) -> list[list[sp.Expr]]:
        return [[sum((a * b for a, b in zip(qi, kj)), sp.Integer(0)) for kj in self.k] for qi in self.q]

    def _verify(self) -> None:
        expr = self._expr if self._expr is not None else make_spec(self.spec).expr
        if len(self.q) != self.n or len(self.k) != self.n:
            self._fail(f"{len(self.q)} query and {len(self.k)} key points for n={self.n}")
        S = self._scores()
        if self.method == "modular":
            # entries recomputed by sympy's own evaluation (exp(3 log 2) -> 8), not by the fast evaluator
            # lambdify to sympy functions: exp(3*log(2)) evaluates to 8 on construction
            fn = _sympy_exact_fn(expr.rewrite(_HYPERBOLIC, sp.exp))
            memo: dict = {}
            rows = []
            for r in S:
                row = []
                for s in r:
                    if s not in memo:
                        v = sp.sympify(fn(s))
                        v = v if v.is_Rational else sp.nsimplify(sp.simplify(v))
                        if not v.is_Rational:
                            self._fail(f"f({s}) = {v} is not rational; the modular method does not apply")
                        memo[s] = _fr(v)
                    row.append(memo[s])
                rows.append(row)
            Mi, _ = _arith.integer_rows(rows)
            if _arith.nonzero_det_prime(Mi, skip=self.prime) is None:
                self._fail("the determinant is zero modulo every prime tried")
            return
        # numeric: entries recomputed with mpmath (plain, not interval) at more digits
        P = self.bits
        scale = Fraction(1, 1 << P)
        fn = sp.lambdify(X, expr, modules=["mpmath"])
        with mpmath.workprec(P + 64):
            memo = {}
            for i, r in enumerate(S):
                for j, s in enumerate(r):
                    if s not in memo:
                        fs = Fraction(int(s.p), int(s.q))
                        memo[s] = _arith.mpf_to_fraction(mpmath.mpf(fn(mpmath.mpf(fs.numerator) / fs.denominator)))
                    if abs(memo[s] - self.A_mid[i][j] * scale) > self.delta:
                        self._fail(f"f({s}) = {float(memo[s])!r} lies outside the stored entry ± {float(self.delta):.3g}")
        rho, nb = _residual(self.A_mid, self.B, P)
        if not rho < 1:
            self._fail(f"residual bound {float(rho):.3g} is not < 1")
        lower = (1 - rho) / nb - self.n * self.delta
        if not lower > 0 or lower < self.sigma_min_lower:
            self._fail(f"recomputed sigma_min lower bound {_arith.fraction_str_down(lower)} vs claimed "
                       f"{_arith.fraction_str_down(self.sigma_min_lower)}")


def _sympy_exact_fn(e):
    """e as a Python function on sympy numbers that keeps rationals exact (lambdify prints 1/2 as a float)."""
    from sympy.printing.pycode import SymPyPrinter

    class _ExactPrinter(SymPyPrinter):
        def _print_Rational(self, r):
            return f"Rational({r.p}, {r.q})"

        _print_Half = _print_Rational

    return sp.lambdify(X, e, modules=[{"Rational": sp.Rational, "sympy": sp}, "sympy"], printer=_ExactPrinter)


def _short(pts: list) -> list:
    if len(pts) <= 6:
        return [[str(v) for v in p] for p in pts]
    return [[str(v) for v in p] for p in pts[:3]] + ["..."] + [[str(v) for v in p] for p in pts[-2:]]


def _residual(A: list[list[int]], B: list[list[int]], P: int) -> tuple[Fraction, Fraction]:
    """(upper bound on ‖I - B A‖_F, upper bound on ‖B‖_F) for A, B scaled by 2^-P; exact integers."""
    n = len(A)
    BA = np.array(B, dtype=object).dot(np.array(A, dtype=object))
    one = 1 << (2 * P)
    NR = 0
    for i in range(n):
        for j in range(n):
            r = (one if i == j else 0) - int(BA[i, j])
            NR += r * r
    NB = sum(int(v) * int(v) for row in B for v in row)
    return Fraction(_arith.isqrt_ceil(NR), one), Fraction(_arith.isqrt_ceil(NB), 1 << P)


def _exp_denominator(expr) -> int | None:
    """lcm of the denominators of a in the exp(a·x) nodes (after rewriting sinh/cosh/tanh), None if some arg is not a·x."""
    e = expr.rewrite(_HYPERBOLIC, sp.exp)
    L = 1
    for node in e.atoms(sp.exp) | {p for p in e.atoms(sp.Pow) if p.base == sp.E}:
        arg = node.args[0] if isinstance(node, sp.exp) else node.exp
        a = sp.simplify(arg / X)
        if a.has(X) or not a.is_Rational:
            return None
        L = L * int(a.q) // math.gcd(L, int(a.q))
    return L


def _kinks(expr) -> list[Fraction]:
    out = []
    for node in expr.atoms(sp.Abs, sp.Heaviside, sp.sign, sp.Max, sp.Min):
        g = node.args[0] - node.args[1] if isinstance(node, (sp.Max, sp.Min)) and len(node.args) == 2 else node.args[0]
        try:
            if g.has(X) and g.is_polynomial(X):
                for r in sp.Poly(g, X).real_roots():
                    if r.is_Rational:
                        out.append(_fr(r))
        except (sp.PolynomialError, NotImplementedError):
            pass
    return sorted(set(out))


def _constructions(f, n: int):
    """Candidate (name, d, q, k, xs) with xs[i][j] = (t, base): x = t (base None) or t·log(base)."""
    expr = f.expr
    analytic = f.kind != "not-analytic"
    out = []
    D = _exp_denominator(expr)
    if analytic and D is not None and expr.rewrite(_HYPERBOLIC, sp.exp).has(sp.exp):
        # start at q = 1 and k = log 2: an odd f (tanh) vanishes on a zero row or column
        q = [[sp.Integer(D * (i + 1))] for i in range(n)]
        k = [[sp.log(j + 2)] for j in range(n)]
        xs = [[(Fraction(D * (i + 1)), j + 2) for j in range(n)] for i in range(n)]
        out.append((f"log-vandermonde: q_i = {D}i, k_j = log(j+1), i, j = 1..n; exp(a q_i k_j) = (j+1)^(a {D} i)", 1, q, k, xs))
    if analytic:
        # q = k = T(i+1)/n: a symmetric matrix with few distinct products (i+1)(j+1), so few evaluations
        T = _point_scale(f)
        pts = [T * Fraction(i + 1, n) for i in range(n)]
        q = [[sp.Rational(v.numerator, v.denominator)] for v in pts]
        out.append((f"rational points q_i = k_i = {T}(i+1)/n", 1, q, q, [[(a * b, None) for b in pts] for a in pts]))
    else:
        # c = n + 1/2 keeps every score positive, for f defined only there (sqrt(x), x**x)
        for c in [Fraction(0)] + _kinks(expr) + [Fraction(2 * n + 1, 2)]:
            for h, delta in ((Fraction(1), Fraction(1, 2)), (Fraction(1), Fraction(0)), (Fraction(1, 3), Fraction(1, 2)),
                             (Fraction(1), Fraction(-1, 2))):
                q = [[sp.Rational(c + h * i), sp.Integer(1)] for i in range(n)]
                k = [[sp.Integer(1), -sp.Rational(h * (j + delta))] for j in range(n)]
                xs = [[(c + h * (i - j - delta), None) for j in range(n)] for i in range(n)]
                where = "all scores > 0" if c > n else "across the kink"
                out.append((f"translates x_ij = {c} + {h}(i - j - ({delta})), {where}", 2, q, k, xs))
        if expr.rewrite(_HYPERBOLIC, sp.exp).has(sp.exp):
            for t0 in (0, 1):
                q = [[sp.Integer(2 * i + t0) * sp.log(2), sp.Integer(1)] for i in range(n)]
                k = [[sp.Integer(1), -sp.Integer(2 * j) * sp.log(2)] for j in range(n)]
                xs = [[(Fraction(2 * (i - j) + t0), 2) for j in range(n)] for i in range(n)]
                out.append((f"log-translates x_ij = (2(i - j) + {t0}) log 2", 2, q, k, xs))
    return out


def _point_scale(f) -> Fraction:
    """Largest |q| = |k| used: products stay inside the radius of convergence, up to 4 for entire f."""
    if f.radius is None or f.radius == sp.oo:
        return Fraction(2)
    r = math.sqrt(float(f.radius) * 0.9)
    return Fraction(max(1, math.floor(r * 64)), 64)


def full_rank_witness(f, n: int, *, max_bits: int = 4096, progress: bool = False) -> FullRankCertificate:
    """Certified Q, K (n×d, d ≤ 2) with f(QKᵀ) of full rank n.

    Tries exact constructions first (entries rational: a non-zero determinant modulo
    a prime), then rational points with interval arithmetic and an exactly
    recomputed residual (σ_min lower bound), doubling the working precision up to
    ``max_bits``. d = 1 for analytic f; non-analytic f get translates
    x_ij = c + h(i - j - δ) across the kink (d = 2: for homogeneous f such as |x|,
    every d = 1 matrix has rank ≤ 2).

    Parameters
    ----------
    f : spec
    n : int
        Size of the witness (up to :data:`MAX_N`).
    max_bits : int
        Cap on the working precision of the numeric route.
    progress : bool
        Show a tqdm bar over the constructions and precisions tried.

    Examples
    --------
    >>> cert = full_rank_witness("exp(x)", 8)
    >>> cert.method, cert.verify()
    ('modular', True)
    """
    f = make_spec(f)
    n = _check_pos_int(n, "n")
    if n > MAX_N:
        raise CertificateError(f"n={n} is above {MAX_N}; a smaller witness proves the same theorem")
    if f.is_polynomial:
        cap = max(rank_bound(f, 1), rank_bound(f, 2))
        if n > cap:
            raise CertificateError(
                f"{f.source!r} is a polynomial of degree {f.degree}: rank f(QK^T) <= {rank_bound(f, 1)} for d=1 and "
                f"<= {rank_bound(f, 2)} for d=2, so no {n}x{n} witness exists; see low_rank_certificate"
            )
    tried = []
    cands = _constructions(f, n)
    for name, d, q, k, xs in _progress(cands, progress, "exact constructions"):
        try:
            rows = _exact_rows(f.expr, xs)
        except (NotExact, ZeroDivisionError) as exc:
            tried.append(f"{name}: not exact ({exc})")
            continue
        Mi, _ = _arith.integer_rows(rows)
        got = _arith.nonzero_det_prime(Mi)
        if got is None:
            tried.append(f"{name}: singular")
            continue
        p, det = got
        return FullRankCertificate(
            spec=f.source, check="full-rank", holds=True, method="modular",
            claim=f"f(QK^T) is a non-singular {n}x{n} matrix for the stored {n}x{d} Q, K, so f keeps no rank below n",
            n=n, d=d, construction=name, q=q, k=k, prime=p, det_mod_p=det, _expr=f.expr, _xs=xs,
        )
    for name, d, q, k, xs in _progress(cands, progress, "interval constructions"):
        if any(b is not None for row in xs for _, b in row):
            continue
        cert = _numeric_witness(f, n, d, name, q, k, xs, max_bits, tried, progress)
        if cert is not None:
            return cert
    raise CertificateError(f"no certified {n}x{n} witness for {f.source!r}; tried: " + "; ".join(tried))


def _progress(it, on: bool, desc: str):
    if not on:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


def _exact_rows(expr, xs) -> list[list[Fraction]]:
    memo: dict = {}
    rows = []
    for r in xs:
        row = []
        for key in r:
            if key not in memo:
                memo[key] = _arith.exact_eval(expr, key[0], key[1])
            row.append(memo[key])
        rows.append(row)
    return rows


def _numeric_witness(f, n, d, name, q, k, xs, max_bits, tried, progress):
    expr = f.expr
    bits = 256
    method = "interval"
    while bits <= max_bits:
        try:
            A, delta, method = _enclose(expr, xs, bits)
        except (NotExact, ZeroDivisionError, ValueError) as exc:
            tried.append(f"{name}: no enclosure ({exc})")
            return None
        try:
            B = _arith.approx_inverse_fixed(A, bits)
        except ZeroDivisionError:
            tried.append(f"{name}: singular at {bits} bits")
            bits *= 2
            continue
        rho, nb = _residual(A, B, bits)
        lower = (1 - rho) / nb - n * delta if rho < 1 else Fraction(-1)
        if lower > 0:
            kind = "interval arithmetic" if method == "interval" else "high-precision evaluation (margin 2^-bits)"
            return FullRankCertificate(
                spec=f.source, check="full-rank", holds=True, method=method,
                claim=(f"f(QK^T) is a non-singular {n}x{n} matrix for the stored {n}x{d} Q, K: "
                       f"sigma_min >= {_arith.fraction_str_down(lower)} ({kind}, exact residual)"),
                n=n, d=d, construction=name, q=q, k=k, bits=bits, A_mid=A, B=B, delta=delta, rho=rho,
                sigma_min_lower=lower, _expr=expr, _xs=xs,
            )
        tried.append(f"{name}: residual {float(rho):.2g} at {bits} bits")
        # the residual grows like cond(A)·2^-bits: ask for the missing bits at once
        short = math.ceil(math.log2(float(rho))) if 0 < rho < Fraction(2) ** 1000 else bits
        bits = max(bits + short + 64, bits * 3 // 2)
    return None


def _enclose(expr, xs, bits):
    """Integer matrix A (scaled 2^-bits) and a uniform bound delta on |f(x_ij) - A_ij 2^-bits|."""
    memo: dict = {}
    method = "interval"
    scale = 1 << bits
    fn = None
    old = iv.prec
    iv.prec = bits + 40
    try:
        for row in xs:
            for t, _ in row:
                if t in memo:
                    continue
                try:
                    enc = _arith.interval_eval(expr, _arith.iv_of_fraction(t))
                    lo, hi = (_arith.mpf_to_fraction(e) for e in enc._mpi_)
                except NotExact:
                    # no interval rule (e.g. atan): high precision with a stated margin
                    method = "high-precision"
                    if fn is None:
                        fn = sp.lambdify(X, expr, modules=["mpmath"])
                    with mpmath.workprec(bits + 80):
                        try:
                            v = mpmath.mpf(fn(mpmath.mpf(t.numerator) / t.denominator))
                        except (TypeError, ValueError, ZeroDivisionError) as exc:
                            raise NotExact(f"f({t}) is not a finite real number ({exc})") from None
                    if not mpmath.isfinite(v):
                        raise ValueError(f"f({t}) is not finite")
                    c = _arith.mpf_to_fraction(v)
                    margin = Fraction(1, 1 << (bits + 8)) * max(1, abs(c))
                    lo, hi = c - margin, c + margin
                mid = (lo + hi) / 2
                a = round(mid * scale)
                memo[t] = (a, max(hi - Fraction(a, scale), Fraction(a, scale) - lo))
    finally:
        iv.prec = old
    A = [[memo[t][0] for t, _ in row] for row in xs]
    delta = max(v[1] for v in memo.values())
    return A, delta, method


# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class PreservationCertificate(Certificate):
    """Low-rank preservation at size n: every rank ≤ r = ⌈log₂ n⌉+1 input maps to rank < n (holds),
    or a rank-r input whose image has rank n (does not hold; ``witness_cert`` proves it)."""

    n: int = 0
    r: int = 0
    bound: int | None = None
    witness_cert: Certificate | None = None

    def numbers(self) -> dict:
        out = {"n": self.n, "input_rank_r": self.r, "rank_bound_at_r": self.bound}
        if self.witness_cert is not None:
            out["witness"] = self.witness_cert.numbers()
        return out

    def witness(self) -> dict:
        return self.witness_cert.witness() if self.witness_cert is not None else {}

    def _verify(self) -> None:
        f = make_spec(self.spec)
        r = math.ceil(math.log2(self.n)) + 1 if self.n > 1 else 1
        if r != self.r:
            self._fail(f"r should be ceil(log2 {self.n}) + 1 = {r}, not {self.r}")
        if self.holds:
            if not f.is_polynomial:
                self._fail("a non-polynomial cannot preserve low rank")
            b = sum(len(_monomials(r, j)) for j in _support(f))
            if not b < self.n:
                self._fail(f"the rank bound at r={r} is {b}, not < n={self.n}")
            _check_multinomial_identity(r, _support(f), self)
        else:
            w = self.witness_cert
            if w is None:
                self._fail("no witness stored")
            w.verify()
            size = len(w.Q) if isinstance(w, LowRankCertificate) else w.n
            rank = w.bound if isinstance(w, LowRankCertificate) else w.n
            dim = w.d
            if size != self.n or rank != self.n or dim > self.r:
                self._fail(f"the witness has n={size}, rank {rank}, input rank {dim}; need n = rank = {self.n}, d <= {self.r}")


def low_rank_preservation(f, n: int, *, seed: int = 0) -> PreservationCertificate:
    """Does f map every n×n matrix of rank ≤ ⌈log₂ n⌉+1 to a matrix of rank < n?

    Holds exactly for polynomials with Σ_{j∈S} C(r+j-1, j) < n. Otherwise the
    certificate carries a rank-r input M = QKᵀ with f(M) of rank n.

    Examples
    --------
    >>> low_rank_preservation("x**2", 64).holds
    True
    >>> c = low_rank_preservation("exp(x)", 16)
    >>> c.holds, c.verify()
    (False, True)
    """
    f = make_spec(f)
    n = _check_pos_int(n, "n", lo=2)
    r = math.ceil(math.log2(n)) + 1
    if f.is_polynomial:
        b = rank_bound(f, r)
        if b < n:
            return PreservationCertificate(
                spec=f.source, check="low-rank-preservation", holds=True, method="exact",
                claim=f"every {n}x{n} matrix of rank <= {r} maps to rank <= {b} < {n}", n=n, r=r, bound=b,
            )
        w = _poly_full_rank(f, r, n, seed)
        return PreservationCertificate(
            spec=f.source, check="low-rank-preservation", holds=False, method=w.method,
            claim=f"the stored rank-{r} input ({n}x{r} integer Q, K) maps to a rank-{n} matrix (bound {b} >= {n})",
            n=n, r=r, bound=b, witness_cert=w,
        )
    w = full_rank_witness(f, n)
    return PreservationCertificate(
        spec=f.source, check="low-rank-preservation", holds=False, method=w.method,
        claim=f"{f.source!r} is not a polynomial: the stored rank-{w.d} input maps to a non-singular {n}x{n} matrix",
        n=n, r=r, bound=None, witness_cert=w,
    )


def _poly_full_rank(f, d, n, seed) -> LowRankCertificate:
    """Integer n×d Q, K with rank f(QKᵀ) = n (needs bound(d) >= n), as a LowRankCertificate with bound n."""
    support = _support(f)
    coeffs = f.coefficients()
    if not all(coeffs[j].is_Rational for j in support):
        raise CertificateError(f"{f.source!r} has irrational coefficients; the preservation witness needs rational ones")
    for attempt in range(8):
        rng = random.Random(seed * 1000 + attempt)
        Q, K = _integer_points(rng, n, d, attempt)
        Fi = _poly_int_matrix(coeffs, support, Q, K)
        p = _arith.PRIMES[0]
        det = _arith.det_mod_p(Fi, p)
        if det:
            return _FullPoly(
                spec=f.source, check="full-rank", holds=True, method="modular",
                claim=f"f(QK^T) has rank {n} for the stored {n}x{d} integer Q, K",
                d=d, support=support, coefficients=[str(coeffs[j]) for j in support], bound=n, Q=Q, K=K,
                pivot_rows=list(range(n)), pivot_cols=list(range(n)), prime=p, det_mod_p=det, target="matrix", _expr=f.expr,
            )
    raise CertificateError(f"no integer rank-{d} input with full-rank image found for {f.source!r} at n={n}")


@dataclass(eq=False)
class _FullPoly(LowRankCertificate):
    """A polynomial's image of full rank n: the whole n×n matrix is the non-singular minor."""

    def _verify(self) -> None:
        f = make_spec(self.spec)
        L = sp.ilcm(1, 1, *[c.q for c in sp.Poly(f.expr, X).coeffs()])
        scaled = sp.Poly(f.expr * L, X)
        S = np.array(self.Q, dtype=object).dot(np.array(self.K, dtype=object).T)
        Fi = [[int(scaled.eval(sp.Integer(int(s)))) for s in row] for row in S]
        if len(Fi) != self.bound or _arith.nonzero_det_prime(Fi, skip=self.prime) is None:
            self._fail("the matrix is singular modulo every prime tried")
