"""Best uniform polynomial approximations of a spec on [-R, R], with certified error bounds.

* :func:`chebyshev`: the degree-p interpolant at the Chebyshev points of [-R, R].
* :func:`minimax`: the Remez best uniform approximation (mpmath, 50 digits).
* :func:`taylor`: the Taylor polynomial at 0, certified on the real interval for one radius (within
  ``tolerance`` of the true error; :meth:`Spec.remainder_bound` answers for any R, from complex discs,
  exact rational tails or the integral-form Lagrange remainder, within a small factor).
* :func:`error_bound`: a rigorous upper bound on ``sup_{|x| <= R} |f(x) - poly(x)|``.

Each returns an :class:`Approximation` with exact rational monomial coefficients. The coefficients
are computed at 50 digits and rounded to :data:`COEFFICIENT_BITS` significant bits (Chebyshev
coefficients for chebyshev/minimax); the certificate covers the polynomial that is stored, so the
rounding costs accuracy, never rigour.

How the bound is certified: [-R, R] is cut into cells with rational ends; on a cell of centre m and
half-width h, e = f - poly is expanded as e(m + t) = sum_{k<K} e_k(m) t^k + e_K(xi) t^K (Lagrange
form), with e_k(m) enclosed by Taylor-mode interval arithmetic (mpmath.iv) at the point m, and
e_K(xi) enclosed for every xi in the cell by the same arithmetic over the cell; the polynomial's part
is an exact rational Taylor shift. A cell where f has a kink inside (Abs, Max, Min) falls back to a
plain interval enclosure. Cells whose bound is above ``tolerance`` times the largest |e| seen at a
centre are bisected, largest first, until the bound is within that factor of a value |e| attains (so
within that factor of the true sup error) or the time budget runs out (the bound stays rigorous, only
looser).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from fractions import Fraction

import mpmath
import sympy as sp

from fastattn.errors import SpecError
from fastattn.transforms.enclosure import certify
from fastattn.transforms.intervals import mpf_to_fraction
from fastattn.transforms.parse import X
from fastattn.transforms.spec import Spec, spec as make_spec

__all__ = ["Approximation", "chebyshev", "minimax", "taylor", "error_bound", "positive", "COEFFICIENT_BITS",
           "METHODS"]

#: Significant bits kept of each computed coefficient when it is made an exact rational.
COEFFICIENT_BITS = 64
#: Highest degree served (Remez at 50 digits stays well conditioned in the Chebyshev basis up to here).
MAX_DEGREE = 64
#: Largest radius served.
MAX_RADIUS = 10**4
#: Default ratio of the certified bound to the largest |f - poly| seen: the bound is refined until within it.
TOLERANCE = 1.1
#: Default wall-clock budget (s) of one certification.
SECONDS = 20.0

_DIGITS = 50
_DISCONTINUOUS = (sp.Heaviside, sp.sign, sp.floor, sp.ceiling, sp.Piecewise)


@dataclass(frozen=True, eq=False)
class Approximation:
    """A polynomial approximating a spec on [-radius, radius], with a certified uniform error bound.

    Attributes
    ----------
    spec : Spec
        The approximated function f.
    method : str
        ``"chebyshev"``, ``"minimax"``, ``"taylor"`` or ``"exact"`` (f is a polynomial of degree <= p);
        with ``"+positive"`` appended when shifted to be positive on the real line.
    degree : int
        The degree p asked for (the stored polynomial has degree <= p).
    radius : sympy.Rational
        R: the bound holds for |x| <= R.
    coefficients : tuple of sympy.Rational
        a_0..a_p of poly(x) = sum a_k x^k, exact.
    bound : float
        Certified upper bound on sup_{|x| <= R} |f(x) - poly(x)|, rounded up.
    estimate : float
        max |f - poly| at the points the certificate evaluated: a lower bound on the true sup
        error (so the true error lies in [estimate, bound]).
    cells : int
        Number of cells of the certificate's partition of [-R, R].
    cost : float
        For a positive approximation, the bound minus the bound of the unconstrained one; else 0.
    """

    spec: Spec
    method: str
    degree: int
    radius: sp.Rational
    coefficients: tuple
    bound: float
    estimate: float
    cells: int = 0
    cost: float = 0.0
    _breaks: tuple = field(default=(), repr=False)

    @property
    def polynomial(self) -> sp.Expr:
        """The polynomial as a sympy expression in x (exact)."""
        return sum((c * X**k for k, c in enumerate(self.coefficients)), sp.Integer(0))

    def __call__(self, x):
        """poly(x) in float64 (numpy), by Horner."""
        import numpy as np

        x = np.asarray(x, dtype=np.float64)
        out = np.zeros_like(x)
        for c in reversed(self.coefficients):
            out = out * x + float(c)
        return out

    def verify(self) -> bool:
        """Recompute the bound independently: on the stored partition, at other precision and order.

        Each cell is enclosed again (60 digits, Taylor order 4, bisecting where needed) and the
        result must not exceed :attr:`bound`. Returns True, else raises SpecError with the numbers.

        Examples
        --------
        >>> chebyshev("exp(x)", 4, 1).verify()
        True
        """
        got = certify(self.spec.expr, [Fraction(int(c.p), int(c.q)) for c in self.coefficients],
                   Fraction(int(self.radius.p), int(self.radius.q)), tolerance=1.0, seconds=SECONDS,
                   order=4, digits=60, breaks=self._breaks, target=self.bound)
        if got.upper > self.bound:
            raise SpecError(f"the certificate of {self.spec.source!r} ({self.method}, degree {self.degree}, R = "
                            f"{self.radius}) does not verify: recomputed bound {float(got.upper):.6g} > stored "
                            f"{self.bound:.6g}")
        return True

    def __str__(self) -> str:
        return (f"{self.method} approximation of {self.spec.source} of degree {self.degree} on |x| <= {float(self.radius):g}: "
                f"error <= {self.bound:.3g} (certified; >= {self.estimate:.3g} attained)")


# -- arguments ------------------------------------------------------------------------------------------
def _check(f, p, R) -> tuple[Spec, int, sp.Rational]:
    f = make_spec(f)
    if isinstance(p, bool) or not isinstance(p, int) or p < 0:
        raise SpecError(f"degree={p!r} must be an integer >= 0")
    if p > MAX_DEGREE:
        raise SpecError(f"degree={p} is above the limit {MAX_DEGREE}; lower it or cut the range into pieces")
    if isinstance(R, bool):
        raise SpecError(f"radius={R!r} must be a positive real number")
    try:
        Rq = sp.Rational(R)
        if isinstance(R, float) and math.isfinite(R) and sp.Rational(repr(R)) >= Rq:
            # 0.5 and 2.0 stay as written; 0.9 keeps its binary value, just above 9/10, so it is covered
            Rq = sp.Rational(repr(R))
    except (TypeError, ValueError):
        raise SpecError(f"radius={R!r} must be a positive real number (the range is |x| <= radius)") from None
    if isinstance(R, float) and not math.isfinite(R) or not Rq.is_Rational:
        raise SpecError(f"radius={R!r} must be a finite positive real number")
    if not 0 < Rq <= MAX_RADIUS:
        raise SpecError(f"radius={R!r} must be > 0 and <= {MAX_RADIUS} (the range is |x| <= radius)")
    bad = [a for a in f.expr.atoms(*_DISCONTINUOUS) if a.has(X)]
    if bad:
        node = min(bad, key=lambda a: len(str(a)))
        raise SpecError(
            f"{f.source!r} contains {node}, which jumps: no polynomial approximates a discontinuous f uniformly "
            "(the error of every polynomial stays >= half the jump), so there is no certified uniform bound; write "
            "a continuous f (Abs, Max, Min and relu are fine)")
    return f, p, Rq


def _real_values(f: Spec, xs) -> list:
    """f at the mpmath points xs (50 digits), refusing non-real or undefined values."""
    fn = _mp_function(f.expr)
    out = []
    for x in xs:
        try:
            v = fn(x)
        except (ZeroDivisionError, ValueError, OverflowError) as exc:
            raise SpecError(f"{f.source!r} is undefined at x = {mpmath.nstr(x, 8)} ({exc}); choose a radius "
                            "inside the range where f is finite") from None
        if isinstance(v, mpmath.mpc):
            if abs(v.imag) > mpmath.mpf(10) ** (-_DIGITS + 10) * (1 + abs(v.real)):
                raise SpecError(f"{f.source!r} is not real at x = {mpmath.nstr(x, 8)} (value {mpmath.nstr(v, 8)}); "
                                "a uniform approximation needs a real, finite f on [-radius, radius]")
            v = v.real
        v = mpmath.mpf(v)
        if not mpmath.isfinite(v):
            raise SpecError(f"{f.source!r} is not finite at x = {mpmath.nstr(x, 8)}; choose a smaller radius")
        out.append(v)
    return out


_MP_CACHE: dict = {}


def _mp_function(expr):
    fn = _MP_CACHE.get(expr)
    if fn is None:
        fn = sp.lambdify(X, expr, modules=["mpmath"])
        _MP_CACHE[expr] = fn
    return fn


def _rational(v) -> Fraction:
    """v rounded to COEFFICIENT_BITS significant bits, as an exact binary fraction."""
    with mpmath.workprec(COEFFICIENT_BITS):
        return mpf_to_fraction(+mpmath.mpf(v))


def _monomial(cheb: list[Fraction], R: Fraction) -> list[Fraction]:
    """Exact monomial coefficients of sum_k cheb[k] T_k(x / R)."""
    n = len(cheb)
    out = [Fraction(0)] * n
    prev, cur = [1], [0, 1]  # T_0, T_1 as integer coefficient lists
    for k, c in enumerate(cheb):
        t = prev if k == 0 else cur if k == 1 else None
        if t is None:
            nxt = [0] + [2 * a for a in cur]
            for i, a in enumerate(prev):
                nxt[i] -= a
            prev, cur = cur, nxt
            t = cur
        for j, a in enumerate(t):
            if a:
                out[j] += c * a / R**j
    return out


def _clenshaw(cheb, x, R):
    y = x / R
    b1 = b2 = mpmath.mpf(0)
    for c in reversed(cheb[1:]):
        b1, b2 = 2 * y * b1 - b2 + c, b1
    return y * b1 - b2 + cheb[0]


def _mpf_of(n: int):
    """n to working precision (mpmath.mpf(n) of a million-bit int takes seconds)."""
    drop = max(0, n.bit_length() - 4 * _DIGITS)
    return mpmath.ldexp(mpmath.mpf(n >> drop if n >= 0 else -(-n >> drop)), drop)


def _beyond_floats(f: Spec, coeffs: list[Fraction], R: Fraction) -> None:
    """SpecError where |f - poly| at a sample of [-R, R] already passes the float range (so must its bound).

    A fixed amount of work in place of the clock: certifying such an f spends its time in exact
    arithmetic on numbers like 2^5502841 (exp(exp(exp(exp(x)))), a minute) only to overflow at the end.
    """
    with mpmath.workdps(_DIGITS):
        xs = [mpmath.mpf(R.numerator) / R.denominator * k / 8 for k in range(-8, 9)]
        try:
            values = _real_values(f, xs)
        except SpecError:
            return  # undefined somewhere on the sample: certify names the cell
        poly = [_mpf_of(c.numerator) / _mpf_of(c.denominator) for c in reversed(coeffs)]
        for x, v in zip(xs, values):
            e = abs(v - mpmath.polyval(poly, x))
            if e > 2 * mpmath.mpf(sys.float_info.max):
                raise SpecError(f"the error is at least 2^{int(mpmath.log(e, 2))} (at x = {mpmath.nstr(x, 4)}), beyond "
                                "the float range: f is too large on this radius for a polynomial map; use a smaller radius")


def _finish(f, method, p, R, coeffs: list[Fraction], tolerance, seconds, cost_from=None) -> Approximation:
    Rf = Fraction(int(R.p), int(R.q))
    _beyond_floats(f, coeffs, Rf)
    cert = certify(f.expr, coeffs, Rf, tolerance=tolerance, seconds=seconds)
    bound = _round_up(cert.upper)
    return Approximation(
        spec=f, method=method, degree=p, radius=R, coefficients=tuple(sp.Rational(c.numerator, c.denominator)
                                                                      for c in coeffs),
        bound=bound, estimate=float(cert.lower), cells=len(cert.breaks) - 1,
        cost=0.0 if cost_from is None else max(0.0, bound - cost_from), _breaks=tuple(cert.breaks))


def _round_up(v) -> float:
    try:
        out = float(v)
    except OverflowError:
        raise SpecError(f"the certified error bound is about 2^{int(v).bit_length()}, beyond the float range: "
                        "f is too large on this radius for a polynomial map; use a smaller radius") from None
    return out if Fraction(out) >= v else math.nextafter(out, math.inf)


def _exact_if_polynomial(f: Spec, p: int):
    if f.is_polynomial and f.degree <= p and all(c.is_Rational for c in f.coefficients(p)):
        return [Fraction(int(c.p), int(c.q)) for c in f.coefficients(p)]
    return None


# -- the three approximations ------------------------------------------------------------------------------
def chebyshev(f, p: int, R, *, tolerance: float = TOLERANCE, seconds: float = SECONDS) -> Approximation:
    """The degree-p Chebyshev interpolant of f on [-R, R], with a certified error bound.

    Interpolates f at the p + 1 Chebyshev points R cos(pi (j + 1/2) / (p + 1)) (50-digit values); its
    Chebyshev coefficients are rounded to :data:`COEFFICIENT_BITS` bits, then converted exactly to the
    monomial basis. Needs f continuous on [-R, R] only (no disc of analyticity): within a factor
    2 + (2/pi) log(p + 1) of the best approximation.

    Parameters
    ----------
    f : str, sympy expression or Spec
        The function (see :func:`fastattn.spec`).
    p : int
        Degree, >= 0.
    R : real
        The range is |x| <= R (R > 0; a float is taken at its exact binary value).
    tolerance : float
        The certified bound is refined until within this factor of an attained error.
    seconds : float
        Wall-clock budget of the certification; past it the bound is returned as it stands.

    Examples
    --------
    >>> a = chebyshev("exp(x)", 2, 1)
    >>> a.coefficients[0].is_Rational, 0.05 < a.estimate <= a.bound <= 1.1 * a.estimate
    (True, True)
    """
    f, p, R = _check(f, p, R)
    exact = _exact_if_polynomial(f, p)
    if exact is not None:
        return _finish(f, "exact", p, R, exact, tolerance, seconds)
    n = p + 1
    with mpmath.workdps(_DIGITS):
        Rm = mpmath.mpf(R.p) / R.q
        thetas = [mpmath.pi * (j + mpmath.mpf(1) / 2) / n for j in range(n)]
        ys = _real_values(f, [Rm * mpmath.cos(t) for t in thetas])
        cheb = [2 * mpmath.fsum(y * mpmath.cos(k * t) for y, t in zip(ys, thetas)) / n for k in range(n)]
        cheb[0] /= 2
        coeffs = _monomial([_rational(c) for c in cheb], Fraction(int(R.p), int(R.q)))
    return _finish(f, "chebyshev", p, R, coeffs, tolerance, seconds)


def minimax(f, p: int, R, *, tolerance: float = TOLERANCE, seconds: float = SECONDS) -> Approximation:
    """The best uniform degree-p approximation of f on [-R, R] (Remez), with a certified error bound.

    Remez exchange in the Chebyshev basis at 50 digits, from the Chebyshev extrema, until the error
    levels within 1e-6 (or 40 steps); the coefficients are rounded as in :func:`chebyshev`.

    Parameters
    ----------
    f, p, R, tolerance, seconds
        As in :func:`chebyshev`.

    Examples
    --------
    >>> a = minimax("exp(x)", 2, 1)   # Taylor's error is 0.218
    >>> round(a.estimate, 4), a.bound < 0.05
    (0.045, True)
    """
    f, p, R = _check(f, p, R)
    exact = _exact_if_polynomial(f, p)
    if exact is not None:
        return _finish(f, "exact", p, R, exact, tolerance, seconds)
    with mpmath.workdps(_DIGITS):
        cheb = _remez(f, p, mpmath.mpf(R.p) / R.q)
        coeffs = _monomial([_rational(c) for c in cheb], Fraction(int(R.p), int(R.q)))
    return _finish(f, "minimax", p, R, coeffs, tolerance, seconds)


def taylor(f, p: int, R, *, tolerance: float = TOLERANCE, seconds: float = SECONDS) -> Approximation:
    """The Taylor polynomial of f at 0 (exact coefficients), certified on the real interval [-R, R].

    Examples
    --------
    >>> a = taylor("exp(x)", 2, 1)      # the true error is e - 5/2 = 0.2183
    >>> 0.2182 < a.estimate <= a.bound < 0.273
    True
    """
    f, p, R = _check(f, p, R)
    if f.kind == "not-analytic":
        raise SpecError(f"{f.source!r} has no Taylor series at 0 ({f.reason}); use chebyshev or minimax")
    if f.radius is not sp.oo and not R < f.radius:
        raise SpecError(f"R={R} is not inside the radius of convergence {f.radius} of {f.source!r}: the Taylor "
                        "polynomial does not converge there; use chebyshev or minimax")
    coeffs = f.coefficients(p)
    if not all(c.is_Rational for c in coeffs):
        with mpmath.workdps(_DIGITS):
            coeffs = [sp.Rational(_rational(mpmath.mpf(sp.N(c, _DIGITS)))) for c in coeffs]
    exact = [Fraction(int(c.p), int(c.q)) for c in coeffs]
    method = "exact" if f.is_polynomial and f.degree <= p else "taylor"
    out = _finish(f, method, p, R, exact, tolerance, seconds)
    if method == "taylor" and all(c.is_Rational for c in f.coefficients(p)):
        try:
            # the disc/Lagrange bound of the same exact polynomial: keep whichever is smaller
            other = float(f.remainder_bound(p, R))
        except SpecError:
            other = math.inf
        if other < out.bound:
            out = dataclasses.replace(out, bound=other)
    return out


def positive(approximation: Approximation, *, tolerance: float = TOLERANCE, seconds: float = SECONDS) -> Approximation:
    """The approximation shifted up just enough to be positive on the whole real line, and what that costs.

    Needs an even degree and a positive leading coefficient (else a small multiple of (x/R)^p is added
    first, the smallest of a few that works best). The minimum of the polynomial on the real line is found
    from its critical points; positivity of the shifted polynomial is then decided exactly (Sturm count),
    and its error bound certified afresh. :attr:`Approximation.cost` is the increase of the bound.

    Examples
    --------
    >>> a = positive(minimax("exp(x)", 2, 1))
    >>> a.method, a.cost    # exp's degree-2 minimax is already positive on the real line
    ('minimax+positive', 0.0)
    >>> b = positive(minimax("tanh(x)", 4, 1))   # tanh(-1) = -0.76: the price is at least that
    >>> b.cost > 0.7, sp.Poly(b.polynomial, X).count_roots()     # no real root: positive everywhere
    (True, 0)
    """
    a = approximation
    p = a.degree
    if p % 2:
        raise SpecError(f"degree {p} is odd: a polynomial of odd degree takes negative values; use an even degree")
    R = Fraction(int(a.radius.p), int(a.radius.q))
    base = [Fraction(int(c.p), int(c.q)) for c in a.coefficients]
    lead = base[p] if len(base) > p else Fraction(0)
    best = None
    # a polynomial whose x^p coefficient is <= 0 must get one before any shift can make it positive
    # a tiny x^p coefficient (an odd f) makes the minimum on the real line huge: try adding some of (x/R)^p
    scales = ([Fraction(0)] if lead > 0 else []) + [Fraction(2) ** k * max(Fraction(a.bound), Fraction(1, 10**12))
                                                    for k in range(-8, 9, 2)]
    for s in scales:
        coeffs = list(base) + [Fraction(0)] * (p + 1 - len(base))
        coeffs[p] += s / R**p
        shift = _deficit(coeffs)
        coeffs[0] += shift
        # cheap estimate: the shift plus the base error plus the added (x/R)^p term
        guess = float(shift) + a.bound + float(s)
        if best is None or guess < best[0]:
            best = (guess, coeffs)
    coeffs = best[1]
    out = _finish(a.spec, a.method + "+positive", p, a.radius, coeffs, tolerance, seconds, cost_from=a.bound)
    return out


def _deficit(coeffs: list[Fraction]) -> Fraction:
    """Smallest-found rational s >= 0 with poly + s > 0 on the real line, decided exactly by a Sturm count."""
    poly = sp.Poly([sp.Rational(c.numerator, c.denominator) for c in reversed(coeffs)], X)
    if poly.LC() <= 0 or poly.degree() % 2:
        raise SpecError("the polynomial goes to -infinity: give it a positive leading coefficient and even degree")
    if poly.degree() == 0:  # a positive constant (the check above): no critical points to search
        return Fraction(0)
    with mpmath.workdps(_DIGITS):
        crit = [r for r in mpmath.polyroots([mpmath.mpf(c.p) / c.q for c in poly.diff(X).all_coeffs()],
                                            maxsteps=200, extraprec=400, error=False) if abs(mpmath.im(r)) < 1e-20]
        vals = [mpmath.polyval([mpmath.mpf(c.p) / c.q for c in poly.all_coeffs()], mpmath.re(r)) for r in crit]
    low = min(vals) if vals else mpmath.mpf(0)
    if low > 0 and poly.count_roots() == 0:
        return Fraction(0)
    margin = Fraction(1, 2**40) * (1 + abs(_rational(low)))
    shift = max(Fraction(0), -_rational(low)) + margin
    for _ in range(60):
        if (poly + sp.Rational(shift.numerator, shift.denominator)).count_roots() == 0:
            return shift
        shift += margin
        margin *= 2
    raise SpecError("could not find a positive shift of the polynomial")


# -- Remez -------------------------------------------------------------------------------------------------
def _remez(f: Spec, p: int, R) -> list:
    n = p + 2

    def fval(x):
        return _real_values(f, [x])[0]

    refs = [R * mpmath.cos(mpmath.pi * i / (n - 1)) for i in range(n)][::-1]
    cheb = None
    grid = [R * mpmath.cos(mpmath.pi * i / (16 * n)) for i in range(16 * n + 1)][::-1]
    grid_f = _real_values(f, grid)
    for _ in range(40):
        A = mpmath.matrix(n, n)
        b = mpmath.matrix(n, 1)
        fr = _real_values(f, refs)
        for i, x in enumerate(refs):
            for k, t in enumerate(_chebyshev_values(x / R, p)):
                A[i, k] = t
            A[i, p + 1] = (-1) ** i
            b[i] = fr[i]
        try:
            sol = mpmath.lu_solve(A, b)
        except ZeroDivisionError:
            break
        cheb = [sol[k] for k in range(p + 1)]
        level = abs(sol[p + 1])
        err = [fy - _clenshaw(cheb, x, R) for x, fy in zip(grid, grid_f)]
        new = _alternating_extrema(grid, err, n)
        if new is None:
            break
        new = [_refine(lambda x: fval(x) - _clenshaw(cheb, x, R), grid, i) for i in new]
        vals = [abs(v) for _, v in new]
        refs = [x for x, _ in new]
        if max(vals) - level <= 1e-6 * max(vals):
            break
    if cheb is None:
        raise SpecError(f"the Remez exchange for {f.source!r} at degree {p} did not start (singular system)")
    return cheb


def _chebyshev_values(y, p):
    """T_0(y), ..., T_p(y)."""
    out = [mpmath.mpf(1), y]
    while len(out) <= p:
        out.append(2 * y * out[-1] - out[-2])
    return out[: p + 1]


def _alternating_extrema(grid, err, n):
    """Indices of n grid points where err alternates in sign with the largest |err| in each run."""
    runs = []
    for i, e in enumerate(err):
        s = 1 if e >= 0 else -1
        if runs and runs[-1][0] == s:
            if abs(e) > abs(err[runs[-1][1]]):
                runs[-1][1] = i
        else:
            runs.append([s, i])
    idx = [r[1] for r in runs]
    while len(idx) > n:
        mags = [abs(err[i]) for i in idx]
        j = mags.index(min(mags))
        if j in (0, len(idx) - 1) or len(idx) == n + 1:
            # drop the smaller end point: alternation is kept
            idx.pop(0 if abs(err[idx[0]]) <= abs(err[idx[-1]]) else -1)
        else:
            # drop j and its smaller neighbour: the two neighbours have the same sign, so alternation holds
            k = j - 1 if abs(err[idx[j - 1]]) <= abs(err[idx[j + 1]]) else j + 1
            for r in sorted((j, k), reverse=True):
                idx.pop(r)
    return idx if len(idx) == n else None


def _refine(e, grid, i):
    """(x, e(x)) at a local maximum of |e| near grid[i], by golden-section search on its neighbours."""
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    s = 1 if e(grid[i]) >= 0 else -1
    g = (mpmath.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = s * e(c), s * e(d)
    for _ in range(30):
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = s * e(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = s * e(d)
    best = max([(s * e(grid[i]), grid[i]), (fc, c), (fd, d)], key=lambda t: t[0])
    return best[1], s * best[0]


# -- certification -------------------------------------------------------------------------------------------
def error_bound(poly, f, R, *, tolerance: float = TOLERANCE, seconds: float = SECONDS) -> float:
    """A rigorous upper bound on sup_{|x| <= R} |f(x) - poly(x)|, rounded up to a float.

    Parameters
    ----------
    poly : sequence of rationals, or a sympy polynomial in x
        Coefficients a_0..a_p (int, Fraction, sympy.Rational, or float at its exact binary value).
    f : str, sympy expression or Spec
        A function continuous on [-R, R].
    R : real
        The range is |x| <= R.
    tolerance, seconds
        As in :func:`chebyshev`: the bound is within ``tolerance`` of an attained error unless the
        budget ran out first.

    Examples
    --------
    >>> b = error_bound([1, 1, sp.Rational(1, 2)], "exp(x)", 1)   # e - 5/2 = 0.21828...
    >>> 0.21828 < b < 0.273
    True
    """
    if isinstance(poly, sp.Expr):
        poly = sp.Poly(poly, X).all_coeffs()[::-1]
    coeffs = []
    for c in poly:
        if isinstance(c, float):
            if not math.isfinite(c):
                raise SpecError(f"coefficient {c!r} is not finite")
            c = Fraction(c)
        c = sp.Rational(c) if not isinstance(c, Fraction) else c
        if isinstance(c, sp.Basic):
            if not c.is_Rational:
                raise SpecError(f"coefficient {c} is not rational; pass exact rationals or floats")
            c = Fraction(int(c.p), int(c.q))
        coeffs.append(c)
    f, _, Rq = _check(f, max(len(coeffs) - 1, 0), R)
    cert = certify(f.expr, coeffs, Fraction(int(Rq.p), int(Rq.q)), tolerance=tolerance, seconds=seconds)
    return _round_up(cert.upper)


METHODS = {"chebyshev": chebyshev, "minimax": minimax, "taylor": taylor}
