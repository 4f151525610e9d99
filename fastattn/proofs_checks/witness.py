"""Full-rank witnesses: for a non-polynomial f and any n, Q, K with f(QKᵀ) an n×n non-singular matrix.

The scores lie on a line x = s·y + x0 read off f, on which the nodes of f vary at unit rate
in y: exp(x/tau) is exp(y) on x = tau·y whatever the digits of tau, so the size of a witness
does not grow with the denominator (or the irrationality) of a coefficient.

* exact (``method="modular"``): y_ij = (i+1)·log(j+2). When every exp(a·x + b) of f is
  exp(k·y) on the line with a small integer k, the entries are rationals and a
  determinant that is non-zero modulo a prime proves non-singularity.
* numeric (``"interval"`` / ``"high-precision"``): rational y_ij, each entry enclosed
  (interval arithmetic, or mpmath with a stated margin where no interval rule exists), an
  approximate inverse B, and ‖I − B·A‖ recomputed in exact integers give σ_min > 0.

Every search runs under a wall-clock budget (:func:`fastattn.budget.limited`); entries
whose exact value or magnitude would be astronomically large are refused before they
are built, so a hostile f ends in an error, not a hang.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import mpmath
import numpy as np
import sympy as sp
from mpmath import iv

from fastattn.budget import limited
from fastattn.proofs_checks import _arith
from fastattn.proofs_checks._arith import NotExact
from fastattn.proofs_checks.certificates import Certificate, CertificateError
from fastattn.proofs_checks.rank import _check_pos_int, _fr, rank_bound
from fastattn.transforms import X, spec as make_spec

__all__ = ["FullRankCertificate", "full_rank_witness", "MAX_N", "SEARCH_SECONDS"]

# only the hyperbolic functions become exponentials (a blanket rewrite turns Max(x,0)**2 into exp(2 log Max))
_HYPERBOLIC = [sp.sinh, sp.cosh, sp.tanh]

#: Largest n for a full-rank witness.
MAX_N = 256
#: Default wall-clock budget of one witness search, in seconds.
SEARCH_SECONDS = 4.0
#: exp(k·y) on the witness line is exact only for integer |k| up to this (entries (j+2)^(k(i+1))).
_MAX_MULTIPLIER = 16
#: The numeric route refuses entries above 2^_MAX_LOG2 in magnitude (fixed point would be meaningless).
_MAX_LOG2 = 512


# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class FullRankCertificate(Certificate):
    """f(QKᵀ) is n×n non-singular for the stored Q, K (n×d).

    ``method == "modular"``: entries are exact rationals; the row-scaled integer matrix
    has determinant ``det_mod_p`` ≠ 0 modulo ``prime``.
    ``method == "interval"`` / ``"high-precision"``: A = A_mid + E with |E_ij| ≤ delta;
    B is an approximate inverse; ‖I - B A_mid‖_F ≤ rho < 1 (exact integers) gives
    σ_min(A) ≥ (1 - rho)/‖B‖_F - n·delta = ``sigma_min_lower`` > 0.

    ``verify`` recomputes the entries from the spec at the scores q_i·k_j (sympy's exact
    evaluation for the modular method, mpmath at more bits otherwise), not from the line
    the search used.
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
            self._verify_modular(expr, S)
        else:
            self._verify_numeric(expr, S)

    def _verify_modular(self, expr, S) -> None:
        # entries recomputed by sympy's own evaluation (exp(3 log 2) -> 8), not by the fast evaluator
        fn = _sympy_exact_fn(expr.rewrite(_HYPERBOLIC, sp.exp))
        memo: dict = {}
        rows = []
        for r in S:
            row = []
            for s in r:
                if s not in memo:
                    v = sp.sympify(fn(s))
                    # simplify, never nsimplify: a guessed rational would be a silent wrong answer
                    v = v if v.is_Rational else sp.simplify(v)
                    if not v.is_Rational:
                        self._fail(f"f({s}) = {v} is not rational; the modular method does not apply")
                    memo[s] = _fr(v)
                row.append(memo[s])
            rows.append(row)
        Mi, _ = _arith.integer_rows(rows)
        if _arith.nonzero_det_prime(Mi, skip=self.prime) is None:
            self._fail("the determinant is zero modulo every prime tried")

    def _verify_numeric(self, expr, S) -> None:
        # entries recomputed with mpmath (plain, not interval) at more bits, at the stored scores
        P = self.bits
        scale = Fraction(1, 1 << P)
        fn = sp.lambdify(X, expr, modules=["mpmath"])
        with mpmath.workprec(P + 64):
            memo = {}
            for i, r in enumerate(S):
                for j, s in enumerate(r):
                    if s not in memo:
                        v = mpmath.mpf(fn(_mp_value(s, P + 64)))
                        if not mpmath.isfinite(v):
                            self._fail(f"f({s}) = {v} is not finite")
                        memo[s] = _to_fraction(v._mpf_, s, P, 1)
                    if abs(memo[s] - self.A_mid[i][j] * scale) > self.delta:
                        self._fail(f"f({s}) = {float(memo[s])!r} lies outside the stored entry ± {float(self.delta):.3g}")
        rho, nb = _residual(self.A_mid, self.B, P)
        if not rho < 1:
            self._fail(f"residual bound {float(rho):.3g} is not < 1")
        lower = (1 - rho) / nb - self.n * self.delta
        if not lower > 0 or lower < self.sigma_min_lower:
            self._fail(f"recomputed sigma_min lower bound {_arith.fraction_str_down(lower)} vs claimed "
                       f"{_arith.fraction_str_down(self.sigma_min_lower)}")


def _mp_value(s: sp.Expr, prec: int):
    """The score s (a sympy number, maybe irrational such as sqrt(2)·3·log 5) as an mpf at ``prec`` bits."""
    if s.is_Rational:
        return mpmath.mpf(int(s.p)) / int(s.q)
    return s.evalf(n=int(prec * 0.302) + 10)._to_mpmath(prec)


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


# -- the line of scores -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Line:
    """Scores x = s·y + x0; ``exact``: every exp node of f is exp(k·y) with a small integer k on it."""

    s: sp.Expr = sp.Integer(1)
    x0: sp.Expr = sp.Integer(0)
    exact: bool = False

    def __str__(self) -> str:
        return f"x = {self.s * sp.Symbol('y') + self.x0}"


def _linear(args) -> list[tuple[sp.Expr, sp.Expr]] | None:
    """[(a, b)] with arg = a·x + b for each arg (a ≠ 0, a and b real constants), or None."""
    out = []
    for arg in args:
        try:
            p = sp.Poly(arg, X)
        except sp.PolynomialError:
            return None
        if p.degree() != 1:
            return None
        a, b = p.all_coeffs()
        if not (a.is_extended_real and b.is_extended_real) or a == 0:
            return None
        out.append((a, b))
    return out


def _common_offset(lin) -> sp.Expr | None:
    """x0 with a·x0 + b = 0 for every (a, b), or None when the offsets differ."""
    x0 = -lin[0][1] / lin[0][0]
    return x0 if all(sp.expand(-b / a - x0) == 0 for a, b in lin[1:]) else None


def _line(expr) -> _Line:
    # sinh, cosh, tanh are exponentials of the same argument; no rewrite (nested tanh would grow 4x a level)
    e = expr
    exp_args = [n.args[0] for n in e.atoms(sp.exp, *_HYPERBOLIC) if n.args[0].has(X)]
    exp_args += [p.exp for p in e.atoms(sp.Pow) if p.base == sp.E and p.exp.has(X)]
    lin = _linear(exp_args) if exp_args else None
    if lin:
        ref = min(lin, key=lambda ab: abs(float(ab[0])))[0]
        ratios = [sp.radsimp(a / ref) for a, _ in lin]
        x0 = _common_offset(lin)
        if all(r.is_Rational for r in ratios) and x0 is not None:
            D = math.lcm(*(int(r.q) for r in ratios))
            small = max(abs(int(r * D)) for r in ratios) <= _MAX_MULTIPLIER
            return _Line(sp.Integer(D) / ref, x0, small)
    # no exact line: scale by the fastest linear argument of any function node, so f varies at unit rate;
    # no offset (log(1 + x) on x = y - 1 is log u_i + log u_j on products: rank 2)
    args = [a for node in e.atoms(sp.Function) for a in node.args if a.has(X)]
    args += [p.exp for p in e.atoms(sp.Pow) if p.exp.has(X)]
    lin = _linear(args) if args else None
    if lin:
        return _Line(1 / max(abs(a) for a, _ in lin))
    return _Line()


def _on_y(expr, line: _Line) -> sp.Expr:
    """f(s·y + x0) as an expression in X = y, with function arguments expanded (exp(sqrt(2)(sqrt(2) y + c)/2) -> exp(y + ...))."""
    if (line.s, line.x0) == (1, 0):
        return expr
    g = expr.subs(X, line.s * X + line.x0)
    return g.replace(lambda e: isinstance(e, sp.Function) and e.has(X), lambda e: e.func(*[sp.expand(a) for a in e.args]))


def _kinks(expr) -> list[Fraction]:
    out = []
    for node in expr.atoms(sp.Abs, sp.Heaviside, sp.sign, sp.Max, sp.Min):
        g = node.args[0] - node.args[1] if isinstance(node, (sp.Max, sp.Min)) and len(node.args) == 2 else node.args[0]
        try:
            if g.has(X) and g.is_polynomial(X) and sp.degree(g, X) <= 8:
                for r in sp.Poly(g, X).real_roots():
                    if r.is_Rational:
                        out.append(_fr(r))
        except (sp.PolynomialError, NotImplementedError):
            pass
    return sorted(set(out))


# -- candidate point sets -----------------------------------------------------------------------
@dataclass
class _Candidate:
    """Points q_i, k_j (sympy) whose scores are x_ij = s·y_ij + x0; ys[i][j] = (t, base): y = t or t·log(base)."""

    name: str
    q: list
    k: list
    ys: list
    g: sp.Expr  # f(s·y + x0) as an expression in X = y

    @property
    def d(self) -> int:
        return len(self.q[0])

    @property
    def exact_only(self) -> bool:
        return any(b is not None for row in self.ys for _, b in row)


def _on_line(line: _Line, name: str, u: list, v: list, ys: list, g) -> _Candidate:
    """q_i = (s·u_i, x0), k_j = (v_j, 1): the scores are s·u_i·v_j + x0 (d = 1 when x0 = 0)."""
    q = [[line.s * a] + ([line.x0] if line.x0 != 0 else []) for a in u]
    k = [[b] + ([sp.Integer(1)] if line.x0 != 0 else []) for b in v]
    return _Candidate(f"{name}, on the line {line}", q, k, ys, g)


def _candidates(f, n: int) -> list[_Candidate]:
    expr = f.expr
    out = []
    if f.kind != "not-analytic":
        line = _line(expr)
        g = _on_y(expr, line)
        if line.exact:
            # start at i = 1 and k = log 2: an odd f (tanh) vanishes on a zero row or column
            u = [sp.Integer(i + 1) for i in range(n)]
            v = [sp.log(j + 2) for j in range(n)]
            ys = [[(Fraction(i + 1), j + 2) for j in range(n)] for i in range(n)]
            out.append(_on_line(line, "log-vandermonde: y_ij = i log(j+1), i, j = 1..n; exp(k y) = (j+1)^(k i)", u, v, ys, g))
        # u = T(i+1)/n: a symmetric matrix with few distinct products (i+1)(j+1), so few evaluations
        for T in _point_scales(f, line, g, n):
            pts = [T * Fraction(i + 1, n) for i in range(n)]
            u = [sp.Rational(p.numerator, p.denominator) for p in pts]
            ys = [[(a * b, None) for b in pts] for a in pts]
            out.append(_on_line(line, f"rational points y_ij = u_i u_j, u_i = {T}(i+1)/n", u, u, ys, g))
        return out
    # c = n + 1/2 keeps every score positive, for f defined only there (sqrt(x), x**x); c = 1 with
    # h = 1/2n keeps them in (1/2, 3/2), where f is moderate
    for c, hs in [(Fraction(0), None)] + [(c, None) for c in _kinks(expr)] + [(Fraction(2 * n + 1, 2), None),
                                                                            (Fraction(1), Fraction(1, 2 * n))]:
        shapes = ((Fraction(1), Fraction(1, 2)), (Fraction(1), Fraction(0)), (Fraction(1, 3), Fraction(1, 2)),
                  (Fraction(1), Fraction(-1, 2))) if hs is None else ((hs, Fraction(1, 2)),)
        for h, delta in shapes:
            q = [[sp.Rational(c + h * i), sp.Integer(1)] for i in range(n)]
            k = [[sp.Integer(1), -sp.Rational(h * (j + delta))] for j in range(n)]
            ys = [[(c + h * (i - j - delta), None) for j in range(n)] for i in range(n)]
            where = "all scores > 0" if c - h * (n - 1 + delta) > 0 else "across the kink"
            out.append(_Candidate(f"translates x_ij = {c} + {h}(i - j - ({delta})), {where}", q, k, ys, expr))
    if expr.has(sp.exp, *_HYPERBOLIC):
        for t0 in (0, 1):
            q = [[sp.Integer(2 * i + t0) * sp.log(2), sp.Integer(1)] for i in range(n)]
            k = [[sp.Integer(1), -sp.Integer(2 * j) * sp.log(2)] for j in range(n)]
            ys = [[(Fraction(2 * (i - j) + t0), 2) for j in range(n)] for i in range(n)]
            out.append(_Candidate(f"log-translates x_ij = (2(i - j) + {t0}) log 2", q, k, ys, expr))
    return out


def _point_scales(f, line: _Line, g, n: int) -> list[Fraction]:
    """Largest u_max (u_i <= u_max) whose products stay inside the radius of convergence and keep g moderate."""
    top = Fraction(2)
    if line.x0 == 0 and f.radius is not None and f.radius != sp.oo:
        # the radius in y is radius / |s|
        r = math.sqrt(float(f.radius / abs(line.s)) * 0.9)
        # a short binary fraction just below r: 16 <= r 2^e < 32
        e = max(0, 4 - math.floor(math.log2(r))) if r > 0 else 64
        top = min(top, Fraction(math.floor(r * 2**e), 2**e)) if r * 2**e >= 1 else Fraction(1, 2**64)
    fn = _float_fn(g)
    for T in (top, top / 2, top / 4, top / 16, top / 64):
        ys = np.array([float(T * T * Fraction(m, n * n)) for m in range(1, n * n + 1, max(1, n * n // 64))])
        if _moderate(fn, ys):
            return [T]
    return []


def _float_fn(g):
    import scipy.special

    return sp.lambdify(X, g, modules=[{"erf": scipy.special.erf, "Heaviside": lambda x, h=0.5: np.heaviside(x, h)}, "numpy"])


def _moderate(fn, ys: np.ndarray) -> bool:
    """g is finite and within 2^±_MAX_LOG2 (or 0) in float64 at ys (nested exp overflows here, cheaply, not in mpmath)."""
    # an underflow (exp(-4^64) is 0.0 in float64) is an entry no working precision resolves
    with np.errstate(all="ignore", under="raise"):
        try:
            v = np.asarray(fn(ys), dtype=float)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError, FloatingPointError):
            return False
    a = np.abs(v)
    return bool(np.all(np.isfinite(v)) and np.all(a < 2.0**_MAX_LOG2) and not np.any((a > 0) & (a < 2.0**-_MAX_LOG2)))


# -- the search ---------------------------------------------------------------------------------
def full_rank_witness(f, n: int, *, max_bits: int = 4096, budget: float = SEARCH_SECONDS,
                      progress: bool = False) -> FullRankCertificate:
    """Certified Q, K (n×d, d ≤ 2) with f(QKᵀ) of full rank n.

    Tries exact constructions first (entries rational: a non-zero determinant modulo
    a prime), then rational points with interval arithmetic and an exactly
    recomputed residual (σ_min lower bound), raising the working precision up to
    ``max_bits``. d = 1 for analytic f (d = 2 when the line of scores has an offset);
    non-analytic f get translates x_ij = c + h(i - j - δ) across the kink (d = 2: for
    homogeneous f such as |x|, every d = 1 matrix has rank ≤ 2).

    Parameters
    ----------
    f : spec
    n : int
        Size of the witness (up to :data:`MAX_N`).
    max_bits : int
        Cap on the working precision of the numeric route.
    budget : float
        Wall-clock seconds for the search; beyond it :class:`~fastattn.errors.SpecError`.
    progress : bool
        Show a tqdm bar over the constructions and precisions tried.

    Examples
    --------
    >>> cert = full_rank_witness("exp(x)", 8)
    >>> cert.method, cert.verify()
    ('modular', True)
    >>> full_rank_witness("exp(x/sqrt(2))", 8).q[:2]
    [[sqrt(2)], [2*sqrt(2)]]
    """
    f = make_spec(f)
    n = _check_pos_int(n, "n")
    if n > MAX_N:
        raise CertificateError(f"n={n} is above {MAX_N}; a smaller witness proves the same theorem")
    if f.is_polynomial:
        cap = max(rank_bound(f, 1), rank_bound(f, 2))
        if n > cap:
            raise CertificateError(
                f"{f.source!r} is a polynomial: rank f(QK^T) <= {rank_bound(f, 1)} for d=1 and "
                f"<= {rank_bound(f, 2)} for d=2, so no {n}x{n} witness exists; see low_rank_certificate"
            )
    with limited(budget, f"the {n}x{n} full-rank witness search for {f.source!r}"):
        return _search(f, n, max_bits, progress)


def _search(f, n: int, max_bits: int, progress: bool) -> FullRankCertificate:
    tried = []
    cands = _candidates(f, n)
    for c in _progress(cands, progress, "exact constructions"):
        try:
            rows = _exact_rows(c.g, c.ys)
        except (NotExact, ZeroDivisionError) as exc:
            tried.append(f"{c.name}: not exact ({exc})")
            continue
        Mi, _ = _arith.integer_rows(rows)
        got = _arith.nonzero_det_prime(Mi)
        if got is None:
            tried.append(f"{c.name}: singular")
            continue
        p, det = got
        return FullRankCertificate(
            spec=f.source, check="full-rank", holds=True, method="modular",
            claim=f"f(QK^T) is a non-singular {n}x{n} matrix for the stored {n}x{c.d} Q, K, so f keeps no rank below n",
            n=n, d=c.d, construction=c.name, q=c.q, k=c.k, prime=p, det_mod_p=det, _expr=f.expr,
        )
    fn_cache: dict = {}
    for c in _progress(cands, progress, "interval constructions"):
        if c.exact_only:
            continue
        if c.g not in fn_cache:
            fn_cache[c.g] = _float_fn(c.g)
        ys = np.array(sorted({float(t) for row in c.ys for t, _ in row}))
        if not _moderate(fn_cache[c.g], ys):
            tried.append(f"{c.name}: f overflows or is undefined at some score (float64 probe)")
            continue
        cert = _numeric_witness(f, n, c, max_bits, tried)
        if cert is not None:
            return cert
    raise CertificateError(f"no certified {n}x{n} witness for {f.source!r}; tried: " + "; ".join(tried))


def _progress(it, on: bool, desc: str):
    if not on:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


def _exact_rows(expr, ys) -> list[list[Fraction]]:
    memo: dict = {}
    rows = []
    for r in ys:
        row = []
        for key in r:
            if key not in memo:
                memo[key] = _arith.exact_eval(expr, key[0], key[1])
            row.append(memo[key])
        rows.append(row)
    return rows


def _numeric_witness(f, n, c: _Candidate, max_bits, tried):
    bits = 256
    while bits <= max_bits:
        try:
            A, delta, method = _enclose(c.g, c.ys, bits)
        except (NotExact, ZeroDivisionError, ValueError) as exc:
            tried.append(f"{c.name}: no enclosure ({exc})")
            return None
        try:
            B = _arith.approx_inverse_fixed(A, bits)
        except ZeroDivisionError:
            tried.append(f"{c.name}: singular at {bits} bits")
            bits *= 2
            continue
        rho, nb = _residual(A, B, bits)
        lower = (1 - rho) / nb - n * delta if rho < 1 else Fraction(-1)
        if lower > 0:
            kind = "interval arithmetic" if method == "interval" else "high-precision evaluation (margin 2^-bits)"
            return FullRankCertificate(
                spec=f.source, check="full-rank", holds=True, method=method,
                claim=(f"f(QK^T) is a non-singular {n}x{n} matrix for the stored {n}x{c.d} Q, K: "
                       f"sigma_min >= {_arith.fraction_str_down(lower)} ({kind}, exact residual)"),
                n=n, d=c.d, construction=c.name, q=c.q, k=c.k, bits=bits, A_mid=A, B=B, delta=delta, rho=rho,
                sigma_min_lower=lower, _expr=f.expr,
            )
        tried.append(f"{c.name}: residual {float(rho):.2g} at {bits} bits")
        # the residual grows like cond(A)·2^-bits: ask for the missing bits at once
        short = math.ceil(math.log2(float(rho))) if 0 < rho < Fraction(2) ** 1000 else bits
        bits = max(bits + short + 64, bits * 3 // 2)
    return None


def _enclose(expr, ys, bits):
    """Integer matrix A (scaled 2^-bits) and a uniform bound delta on |g(y_ij) - A_ij 2^-bits|."""
    memo: dict = {}
    method = "interval"
    scale = 1 << bits
    fn = None
    # tanh(u) = 1 - 2/(exp(2u) + 1) holds u once: the rewrite to (e^u - e^-u)/(e^u + e^-u) doubles it
    # twice a level (six nested tanh: 4096 copies) and widens the enclosure
    tight = expr.replace(sp.tanh, lambda u: 1 - 2 / (sp.exp(2 * u) + 1))
    old = iv.prec
    iv.prec = bits + 40
    try:
        for row in ys:
            for t, _ in row:
                if t in memo:
                    continue
                try:
                    enc = _arith.interval_eval(tight, _arith.iv_of_fraction(t))
                    lo, hi = _to_fraction(enc._mpi_[0], t, bits, -1), _to_fraction(enc._mpi_[1], t, bits, 1)
                except (NotExact, RecursionError):
                    # no interval rule (e.g. atan, or an irrational constant the interval evaluator cannot
                    # take): high precision with a stated margin
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
                    c = _to_fraction(v._mpf_, t, bits, 1)
                    margin = Fraction(1, 1 << (bits + 8)) * max(1, abs(c))
                    lo, hi = c - margin, c + margin
                mid = (lo + hi) / 2
                a = round(mid * scale)
                memo[t] = (a, max(hi - Fraction(a, scale), Fraction(a, scale) - lo))
    finally:
        iv.prec = old
    A = [[memo[t][0] for t, _ in row] for row in ys]
    delta = max(v[1] for v in memo.values())
    return A, delta, method


def _to_fraction(mpf_tuple, t, bits: int, side: int) -> Fraction:
    """An enclosure end (side -1 lower, +1 upper) as a Fraction: refused above 2^_MAX_LOG2, and moved
    outward to side·2^-(bits+64) when smaller than that (exp(-4^64) = 2^(-1e38) never becomes a Fraction)."""
    sign, man, exp, bc = mpf_tuple
    if not man and exp:  # mpmath's inf / nan have a zero mantissa and a non-zero exponent code
        raise NotExact(f"the enclosure of f at {t} is unbounded")
    if man and exp + bc > _MAX_LOG2:
        raise NotExact(f"|f({t})| may exceed 2^{_MAX_LOG2}")
    if man and exp + bc < -(bits + 64):
        return Fraction(side, 1 << (bits + 64))
    return _arith.mpf_to_fraction(mpf_tuple)
