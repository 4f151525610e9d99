"""Rank theorems as checks: polynomial ⇒ low rank (attained), non-polynomial ⇒ full rank, preservation.

* :func:`low_rank_certificate` — for f = Σ_{j∈S} a_j x^j and head dim d:
  rank f(QKᵀ) ≤ Σ_{j∈S} C(d+j-1, j) for every Q, K (the factorisation through
  monomials), and integer Q, K on which the rank is exactly that bound (f ≡ 0: rank 0).
* :func:`full_rank_witness` (in :mod:`fastattn.proofs_checks.witness`, re-exported) —
  for a non-polynomial f and any n: Q, K with f(QKᵀ) n×n non-singular.
* :func:`low_rank_preservation` — f maps every rank ≤ ⌈log₂ n⌉+1 matrix to rank < n,
  or a rank-r input whose image has full rank n.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import sympy as sp

from fastattn.proofs_checks import _arith
from fastattn.proofs_checks.certificates import Certificate, CertificateError
from fastattn.transforms import X, spec as make_spec

__all__ = [
    "LowRankCertificate", "FullRankCertificate", "PreservationCertificate",
    "low_rank_certificate", "full_rank_witness", "low_rank_preservation", "rank_bound",
    "MAX_BOUND", "MAX_N",
]

#: Largest rank bound attained explicitly (an n×n exact rank computation with n = bound).
MAX_BOUND = 400


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
        return _zero_cert(f, d)
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


def _zero_cert(f, d: int) -> LowRankCertificate:
    """f ≡ 0: f(QKᵀ) = 0 has rank 0; the witness is one point, whose empty minor has determinant 1."""
    return LowRankCertificate(
        spec=f.source, check="low-rank", holds=True, method="modular",
        claim=f"f is identically zero, so f(QK^T) = 0 has rank 0 for all n x {d} Q, K",
        d=d, support=[], coefficients=[], bound=0, Q=[[1] * d], K=[[1] * d], pivot_rows=[], pivot_cols=[],
        prime=_arith.PRIMES[0], det_mod_p=1, target="matrix", _expr=f.expr,
    )


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


# the full-rank witness imports rank_bound from here, so it is re-exported after the definitions above
from fastattn.proofs_checks.witness import MAX_N, FullRankCertificate, full_rank_witness  # noqa: E402
