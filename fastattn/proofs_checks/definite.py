"""Positive definiteness (Schoenberg) and metric transforms (Bernstein), as checks.

* f(‖x−y‖²) is positive definite in every dimension iff f is completely monotone
  (CM) on (0, ∞): (−1)^k f^(k) ≥ 0 for all k.
* f maps ℓ₁ / negative-type metrics to negative-type metrics iff f is a Bernstein
  function (f ≥ 0 with f' completely monotone).

Both theorems are about f finite and continuous on [0, ∞): f(0) sits on the diagonal of
f(‖x−y‖²) and of f(D). A derivation is accepted only when f(0+) is finite and f(0) (where
defined) equals it; f(0+) = ±∞ (1/x, x^(-1/2)) is a counter-example by itself
(:class:`ValueAtZeroCertificate`).

Proofs are symbolic derivations from closure rules (sums and products of CM
functions are CM; exp(−g) and g^(−β) are CM for g Bernstein; x^α (0<α≤1),
log(c+g) (c≥1), c − h (h CM, c ≥ h(0)) and compositions of Bernstein functions are
Bernstein). Counter-examples are point sets with a rational vector c whose quadratic
form is certified (interval arithmetic) to have the wrong sign: cᵀKc < 0 proves a
negative eigenvalue; for metrics, Σc = 0 and cᵀ f(D) c > 0 with D the ℓ₁ distances of
the corners of a hyperrectangle (rank d+1) proves f(D) is not of negative type.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from fractions import Fraction

import mpmath
import numpy as np
import sympy as sp
from mpmath import iv

from fastattn.budget import limited
from fastattn.errors import SpecError
from fastattn.proofs_checks import _arith
from fastattn.proofs_checks._arith import NotExact
from fastattn.proofs_checks.certificates import Certificate, Undecided
from fastattn.transforms import X, spec as make_spec

__all__ = [
    "completely_monotone_derivation", "bernstein_derivation", "DerivationCertificate",
    "QuadraticFormCertificate", "ValueAtZeroCertificate", "positive_definite", "metric_transform",
    "CHECK_SECONDS",
]

#: Wall-clock budget of one positive-definiteness or metric-transform check, in seconds.
CHECK_SECONDS = 3.0


# -- closure rules ----------------------------------------------------------------------------
def _nonneg_const(e) -> bool:
    return not e.has(X) and e.is_real is not False and bool(sp.N(e, 30) >= 0)


def _forms(e):
    seen = []
    for g in (e, sp.apart(e, X) if e.is_rational_function(X) else e, sp.expand(e), sp.together(e), sp.powsimp(e)):
        if all(g != s for s in seen):
            seen.append(g)
    return seen


def _derivation(f, rules) -> list[str] | None:
    """The steps of the first algebraic form of f that ``rules(form, steps)`` accepts, or None."""
    for g in _forms(make_spec(f).expr):
        steps: list[str] = []
        if rules(g, steps):
            return steps
    return None


def completely_monotone_derivation(f) -> list[str] | None:
    """The closure rules showing f is completely monotone on (0, ∞), or None if they do not apply.

    >>> completely_monotone_derivation("exp(-x) + 1/(1+x)") is not None
    True
    >>> completely_monotone_derivation("exp(-x**2)") is None
    True
    """
    return _derivation(f, _cm)


def bernstein_derivation(f) -> list[str] | None:
    """The closure rules showing f is a Bernstein function, or None if they do not apply.

    >>> bernstein_derivation("sqrt(x) + log(1 + x)") is not None
    True
    >>> bernstein_derivation("x**2") is None
    True
    """
    return _derivation(f, _bern)


def _cm(e, steps) -> bool:
    if not e.has(X):
        ok = _nonneg_const(e)
        if ok:
            steps.append(f"{e} is a constant >= 0: CM")
        return ok
    if isinstance(e, sp.Add):
        if all(_cm(a, steps) for a in e.args):
            steps.append(f"{e}: a sum of CM functions is CM")
            return True
        return False
    if isinstance(e, sp.Mul):
        if all(_cm(a, steps) for a in e.args):
            steps.append(f"{e}: a product of CM functions is CM")
            return True
        return False
    if isinstance(e, sp.exp) or (isinstance(e, sp.Pow) and e.base == sp.E):
        arg = e.args[0] if isinstance(e, sp.exp) else e.exp
        if _bern(-arg, steps):
            steps.append(f"{e} = exp(-g) with g = {-arg} Bernstein: CM")
            return True
        return False
    if isinstance(e, sp.Pow):
        b, ex = e.args
        if not ex.has(X) and ex.is_negative and _bern(b, steps):
            steps.append(f"{e} = g^({ex}) with g = {b} Bernstein: CM (t^-beta is CM)")
            return True
        if ex.is_Integer and ex > 0 and _cm(b, steps):
            steps.append(f"{e}: a power of a CM function is CM")
            return True
    return False


def _bern(e, steps) -> bool:
    if not e.has(X):
        ok = _nonneg_const(e)
        if ok:
            steps.append(f"{e} is a constant >= 0: Bernstein")
        return ok
    if e == X:
        steps.append("x is Bernstein")
        return True
    if isinstance(e, sp.Add):
        const, rest = e.as_independent(X, as_Add=True)
        if all(_bern(a, steps) for a in sp.Add.make_args(rest)) and (const == 0 or _nonneg_const(const)):
            steps.append(f"{e}: a sum of Bernstein functions is Bernstein")
            return True
        # c - h with h CM and h(0+) <= c
        h = -rest
        sub: list[str] = []
        if _cm(h, sub):
            h0 = sp.limit(h, X, 0, "+")
            if h0.is_finite and bool(sp.N(const - h0, 30) >= 0):
                steps += sub
                steps.append(f"{e} = {const} - h with h = {h} CM and h(0+) = {h0} <= {const}: Bernstein")
                return True
        return False
    if isinstance(e, sp.Mul):
        const, rest = e.as_independent(X, as_Mul=True)
        if rest != e and _nonneg_const(const) and _bern(rest, steps):
            steps.append(f"{e}: a non-negative multiple of a Bernstein function is Bernstein")
            return True
        return False
    if isinstance(e, sp.Pow):
        b, ex = e.args
        if not ex.has(X) and ex.is_positive and bool(ex <= 1) and _bern(b, steps):
            steps.append(f"{e} = g^{ex} with 0 < {ex} <= 1 and g = {b} Bernstein: Bernstein")
            return True
        return False
    if isinstance(e, sp.log):
        const, rest = e.args[0].as_independent(X, as_Add=True)
        if bool(sp.N(const, 30) >= 1) and _bern(rest, steps):
            steps.append(f"{e} = log({const} + g) with {const} >= 1 and g = {rest} Bernstein: Bernstein")
            return True
    return False


@dataclass(eq=False)
class DerivationCertificate(Certificate):
    """A property proved by closure rules; ``steps`` lists the rules, innermost first.

    ``verify`` re-runs the derivation from the spec and spot-checks the defining sign
    conditions, (−1)^k f^(k)(x) ≥ 0 (CM) or f ≥ 0, (−1)^(k-1) f^(k) ≥ 0 (Bernstein),
    for k ≤ 4 at points of (0, 16] with interval arithmetic.
    """

    property: str = "completely monotone"
    steps: list = field(default_factory=list)

    def numbers(self) -> dict:
        return {"property": self.property, "rules": self.steps}

    def _verify(self) -> None:
        derive = completely_monotone_derivation if self.property == "completely monotone" else bernstein_derivation
        if derive(self.spec) is None:
            self._fail(f"the closure rules do not derive '{self.property}' for the spec")
        expr = make_spec(self.spec).expr
        zero = _at_zero(expr)
        if zero.problem:
            self._fail(f"the theorem needs f finite and continuous at 0: {zero.problem}")
        shift = 0 if self.property == "completely monotone" else 1
        old = iv.prec
        iv.prec = 120
        try:
            for k in range(5):
                g = sp.diff(expr, X, k) * (-1) ** (k - shift if k >= shift else 0)
                if k < shift:
                    g = expr
                for t in (Fraction(1, 8), Fraction(1, 2), Fraction(1), Fraction(3), Fraction(16)):
                    try:
                        v = _arith.interval_eval(g, _arith.iv_of_fraction(t))
                    except NotExact:
                        continue
                    if _hi(v) < 0:
                        self._fail(f"sign condition k={k} fails at x={t}: enclosure {v}")
        finally:
            iv.prec = old


def _lo(v):
    return _arith.mpf_to_fraction(v._mpi_[0])


def _hi(v):
    return _arith.mpf_to_fraction(v._mpi_[1])


@dataclass(frozen=True)
class _Zero:
    """f near 0: the one-sided limit f(0+), the value f(0), and what is wrong for the theorems (None: nothing)."""

    limit: sp.Expr
    value: sp.Expr
    problem: str | None = None

    @property
    def infinite(self) -> bool:
        return self.limit in (sp.oo, -sp.oo)


def _at_zero(expr) -> _Zero:
    lim = sp.limit(expr, X, 0, "+")
    val = expr.subs(X, 0)
    if lim in (sp.oo, -sp.oo):
        return _Zero(lim, val, f"f(0+) = {lim}")
    if not (lim.is_extended_real and lim.is_finite):
        return _Zero(lim, val, f"f(0+) is {lim}, not a finite number")
    if val.is_finite and val.is_extended_real and sp.simplify(val - lim) != 0:
        return _Zero(lim, val, f"f is not continuous at 0: f(0) = {val}, f(0+) = {lim}")
    return _Zero(lim, val)


@dataclass(eq=False)
class ValueAtZeroCertificate(Certificate):
    """f(0+) = ±∞: f(‖x−y‖²) (or f(D)) is infinite on the diagonal, so the kernel property fails.

    ``verify`` recomputes the one-sided limit with sympy and checks, in mpmath at 50 digits,
    that |f(2^-k)| grows along k = 8, 16, 32, 64 past |f(2^-8)|.
    """

    limit: str = ""

    def numbers(self) -> dict:
        return {"f(0+)": self.limit}

    def _verify(self) -> None:
        expr = make_spec(self.spec).expr
        lim = sp.limit(expr, X, 0, "+")
        if str(lim) != self.limit or lim not in (sp.oo, -sp.oo):
            self._fail(f"sympy gives f(0+) = {lim}, the certificate says {self.limit}")
        fn = sp.lambdify(X, expr, modules=["mpmath"])
        with mpmath.workdps(50):
            mags = [abs(fn(mpmath.mpf(2) ** -k)) for k in (8, 16, 32, 64)]
        if not all(a < b for a, b in zip(mags, mags[1:])):
            self._fail(f"|f(2^-k)| for k = 8, 16, 32, 64 is {[mpmath.nstr(m, 6) for m in mags]}, not growing")


def _infinite_at_zero(f, check: str, zero: _Zero) -> ValueAtZeroCertificate:
    what = ("f(|x-y|^2) is infinite on the diagonal x = y, so it is not a positive-definite kernel"
            if check == "positive-definite" else "f(D) is infinite on the diagonal of every metric D, so it is not a metric")
    return ValueAtZeroCertificate(
        spec=f.source, check=check, holds=False, method="limit",
        claim=f"f(0+) = {zero.limit}: {what} (the theorem needs f finite and continuous on [0, inf))",
        limit=str(zero.limit),
    )


@dataclass(eq=False)
class QuadraticFormCertificate(Certificate):
    """A point set and a rational c with a certified sign of cᵀ M c.

    ``form == "gram"``: M_ij = f(‖x_i − x_j‖²), and cᵀMc ≤ ``bound`` < 0, so M has a
    negative eigenvalue and f(‖x−y‖²) is not positive definite in dimension ``dim``.
    ``form == "l1"``: M_ij = f(‖x_i − x_j‖₁), Σc = 0 and cᵀMc ≥ ``bound`` > 0, so f(D)
    is not of negative type although D (ℓ₁, rank d+1) is.
    """

    form: str = "gram"
    dim: int = 1
    points: list = field(default_factory=list)
    c: list = field(default_factory=list)
    bound: Fraction = Fraction(0)
    distance_rank: int | None = None

    def numbers(self) -> dict:
        out = {"dimension": self.dim, "points": len(self.points),
               "quadratic_form_bound": _arith.fraction_str_down(self.bound) if self.bound > 0 else
               "<= " + _arith.fraction_str_down(self.bound)}
        if self.distance_rank is not None:
            out["l1_distance_matrix_rank"] = self.distance_rank
        return out

    def witness(self) -> dict:
        return {"points": self.points, "c": self.c}

    def _verify(self) -> None:
        expr = make_spec(self.spec).expr
        D = _distances(self.points, self.form)
        if self.form == "l1":
            if sum(self.c) != 0:
                self._fail(f"sum(c) = {sum(self.c)} != 0")
            rank = _arith.rank_mod_p(_arith.integer_rows(D)[0], _arith.PRIMES[1])[0]
            if self.distance_rank is not None and rank != self.distance_rank:
                self._fail(f"the l1 distance matrix has rank {rank}, not {self.distance_rank}")
        lo, hi = _quadratic_form(expr, D, self.c, prec=160)
        if self.form == "gram" and not hi < 0:
            self._fail(f"c^T K c lies in [{float(lo):.3g}, {float(hi):.3g}], not certainly < 0")
        if self.form == "l1" and not lo > 0:
            self._fail(f"c^T f(D) c lies in [{float(lo):.3g}, {float(hi):.3g}], not certainly > 0")
        # an independent float check of the sign, with mpmath at 50 digits
        fn = sp.lambdify(X, expr, modules=["mpmath"])
        with mpmath.workdps(50):
            val = mpmath.fsum(mpmath.mpf(ci.numerator) / ci.denominator * mpmath.mpf(cj.numerator) / cj.denominator
                              * fn(mpmath.mpf(D[i][j].numerator) / D[i][j].denominator)
                              for i, ci in enumerate(self.c) for j, cj in enumerate(self.c))
        if (val >= 0) if self.form == "gram" else (val <= 0):
            self._fail(f"mpmath gives c^T M c = {mpmath.nstr(val, 8)}")


def _distances(points, form) -> list[list[Fraction]]:
    if form == "l1":
        return [[sum((abs(a - b) for a, b in zip(p, q)), Fraction(0)) for q in points] for p in points]
    return [[sum(((a - b) ** 2 for a, b in zip(p, q)), Fraction(0)) for q in points] for p in points]


def _quadratic_form(expr, D, c, prec=120) -> tuple[Fraction, Fraction]:
    old = iv.prec
    iv.prec = prec
    try:
        memo = {}
        total = iv.mpf(0)
        for i, ci in enumerate(c):
            for j, cj in enumerate(c):
                if ci == 0 or cj == 0:
                    continue
                t = D[i][j]
                if t not in memo:
                    memo[t] = _arith.interval_eval(expr, _arith.iv_of_fraction(t))
                total = total + _arith.iv_of_fraction(ci * cj) * memo[t]
        return _lo(total), _hi(total)
    finally:
        iv.prec = old


def _rational_vector(v: np.ndarray, denom: int = 1 << 16) -> list[Fraction]:
    v = v / np.max(np.abs(v))
    return [Fraction(round(float(x) * denom), denom) for x in v]


def _search_negative(expr, fn, point_sets, form):
    """First point set whose matrix has a certified negative (gram) / positive (l1, Σc=0) direction."""
    for pts, dim in point_sets:
        D = _distances(pts, form)
        Df = np.array([[float(x) for x in r] for r in D])
        with np.errstate(all="ignore"):
            M = fn(Df)
        if not np.all(np.isfinite(M)):
            continue
        m = len(pts)
        if form == "l1":
            # restrict to sum(c) = 0: basis P of the orthogonal complement of 1
            P = np.eye(m)[:, 1:] - 1.0 / m
            P, _ = np.linalg.qr(P)
            w, V = np.linalg.eigh(P.T @ M @ P)
            if w[-1] <= 1e-12 * max(1.0, np.abs(w).max()):
                continue
            c = _rational_vector(P @ V[:, -1])
            c[-1] -= sum(c)
        else:
            w, V = np.linalg.eigh(M)
            if w[0] >= -1e-12 * max(1.0, np.abs(w).max()):
                continue
            c = _rational_vector(V[:, 0])
        try:
            lo, hi = _quadratic_form(expr, D, c)
        except NotExact:
            continue
        if (form == "gram" and hi < 0) or (form == "l1" and lo > 0):
            return pts, dim, c, (hi if form == "gram" else lo)
    return None


def _gram_point_sets(seed=0):
    # regular simplices (all distances equal), then points on a line and random integer points
    for m in (2, 3, 5, 9, 17):
        for s in (Fraction(1, 8), Fraction(1, 2), Fraction(1), Fraction(2), Fraction(4)):
            yield [[s if i == j else Fraction(0) for j in range(m)] for i in range(m)], m
    for m in (3, 5, 8, 12):
        for h in (Fraction(1, 4), Fraction(1, 2), Fraction(1), Fraction(2)):
            yield [[h * i] for i in range(m)], 1
    rng = random.Random(seed)
    for dim in (1, 2, 3, 4, 6):
        for m in (6, 10, 16):
            for s in (Fraction(1, 4), Fraction(1, 2), Fraction(1)):
                yield [[s * rng.randint(-4, 4) for _ in range(dim)] for _ in range(m)], dim


def _corner_sets():
    for d in (1, 2, 3, 4, 5):
        for a in (Fraction(1, 4), Fraction(1, 2), Fraction(1), Fraction(2), Fraction(4)):
            sides = [a] * d
            yield [list(c) for c in itertools.product(*[(Fraction(0), s) for s in sides])], d
        sides = [Fraction(i + 1, 2) for i in range(d)]
        yield [list(c) for c in itertools.product(*[(Fraction(0), s) for s in sides])], d


def positive_definite(f) -> Certificate | Undecided:
    """Is f(‖x−y‖²) positive (semi)definite in every dimension? (Schoenberg: iff f is CM and continuous on [0, ∞).)

    Returns a :class:`DerivationCertificate` (CM by closure rules; holds), a
    :class:`QuadraticFormCertificate` (points with cᵀKc < 0 certified; does not hold), a
    :class:`ValueAtZeroCertificate` (f(0+) infinite; does not hold), or :class:`Undecided`,
    also when the check runs past :data:`CHECK_SECONDS`.

    Examples
    --------
    >>> positive_definite("exp(-x)").holds
    True
    >>> c = positive_definite("1 - x")
    >>> c.holds, c.verify()
    (False, True)
    >>> positive_definite("1/x").claim.startswith("f(0+) = oo")
    True
    """
    f = make_spec(f)
    return _budgeted(f, "positive-definite", lambda: _decide(f, "positive-definite"))


def metric_transform(f) -> Certificate | Undecided:
    """Does f map negative-type (e.g. ℓ₁) metrics to negative-type metrics? (iff f is Bernstein.)

    Examples
    --------
    >>> metric_transform("sqrt(x)").holds
    True
    >>> c = metric_transform("x**2")
    >>> c.holds, c.numbers()["l1_distance_matrix_rank"], c.verify()
    (False, 3, True)
    >>> metric_transform("x**(-1/2)").holds
    False
    """
    f = make_spec(f)
    return _budgeted(f, "metric-transform", lambda: _decide(f, "metric-transform"))


def _budgeted(f, check: str, run):
    try:
        with limited(CHECK_SECONDS, f"the {check} check of {f.source!r}"):
            return run()
    except SpecError as exc:
        return Undecided(f.source, check, str(exc))


def _decide(f, check: str):
    pd = check == "positive-definite"
    zero = _at_zero(f.expr)
    if zero.infinite:
        return _infinite_at_zero(f, check, zero)
    if zero.problem is None:
        steps = completely_monotone_derivation(f) if pd else bernstein_derivation(f)
        if steps is not None:
            cert = DerivationCertificate(
                spec=f.source, check=check, holds=True, method="symbolic",
                claim=("f is completely monotone and continuous at 0, so f(|x-y|^2) is positive semi-definite in "
                       "every dimension (Schoenberg)" if pd else
                       "f is a Bernstein function, so it maps metrics of negative type to metrics of negative type"),
                property="completely monotone" if pd else "Bernstein", steps=steps,
            )
            if not zero.value.is_finite:
                cert.notes.append(f"f(0) is undefined; the claim is about its continuous extension f(0) = {zero.limit}")
            return cert
    found = _counterexample(f, "gram" if pd else "l1", check, _gram_point_sets() if pd else _corner_sets())
    if zero.problem is not None and isinstance(found, Undecided):
        theorem = "Schoenberg's" if pd else "Bernstein's"
        return Undecided(f.source, check, f"{zero.problem}: {theorem} theorem needs f finite and continuous on [0, inf), "
                                          "and no certified counter-example was found")
    return found


def _counterexample(f, form, check, sets):
    expr = f.expr
    try:
        import scipy.special

        fn = sp.lambdify(X, expr, modules=[{"erf": scipy.special.erf, "Heaviside": lambda x, h=0.5: np.heaviside(x, h)}, "numpy"])
        found = _search_negative(expr, fn, sets, form)
    except (NotExact, TypeError, ValueError, ZeroDivisionError) as exc:
        return Undecided(f.source, check, f"no closure-rule proof, and the counter-example search failed: {exc}")
    if found is None:
        what = "completely monotone" if form == "gram" else "Bernstein"
        return Undecided(f.source, check, f"the closure rules do not show f {what}, and no certified counter-example was "
                                          "found among simplices, line points, random points and hyperrectangle corners")
    pts, dim, c, bound = found
    if form == "gram":
        claim = (f"{len(pts)} points in R^{dim} whose matrix f(|x_i-x_j|^2) has c^T K c < 0: a negative eigenvalue, "
                 "so f(|x-y|^2) is not positive definite (f is not completely monotone)")
        rank = None
    else:
        rank = _arith.rank_mod_p(_arith.integer_rows(_distances(pts, "l1"))[0], _arith.PRIMES[0])[0]
        claim = (f"the l1 distances D of the {len(pts)} corners of a {dim}-dimensional hyperrectangle (rank {rank}) and "
                 "c with sum(c) = 0 give c^T f(D) c > 0: f(D) is not of negative type (f is not Bernstein)")
    return QuadraticFormCertificate(
        spec=f.source, check=check, holds=False, method="interval", claim=claim,
        form=form, dim=dim, points=pts, c=c, bound=bound, distance_rank=rank,
    )
