"""The feature maps :func:`fastattn.analyze` recommends: a feature budget from the calibrated cost
model (:mod:`fastattn.costmodel`) and 3-5 certified candidates within it (exact, minimax, Chebyshev,
Taylor, positive), each with its trade-off in one line; and, for a window w, what each map gives as the
outside part of ``hybrid_attention`` (:func:`hybrid`): its certified error against softmax and its cost.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction

import sympy as sp

from fastattn.transforms import symmetric_dim

__all__ = ["Candidate", "feature_budget", "candidates", "MAX_CANDIDATE_DEGREE", "APPROX_SECONDS", "Hybrid",
           "HybridMap", "hybrid", "check_hybrid", "relative_range", "output_bound", "BOUND_STATEMENT"]


@dataclass(frozen=True)
class Candidate:
    """One recommended map: a polynomial of f on |x| <= radius, its features, certified error and predicted time.

    ``error`` is the certified bound on sup |f - poly| over the radius (0 for the exact map); ``ms`` and
    ``sdpa_ms`` are forward+backward milliseconds predicted by :mod:`fastattn.costmodel` (NVIDIA H200,
    v15 and v19: :func:`fastattn.costmodel.layer_ms`, the faster of the feature and flash kernels, as the layer
    routes) at the analysis's sequence length; ``why`` is the trade-off in one line.
    """

    method: str
    degree: int
    features: int
    error: float
    estimate: float
    ms: float | None
    sdpa_ms: float
    within_budget: bool
    why: str
    approximation: object = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"method": self.method, "degree": self.degree, "features": self.features, "error_bound": self.error,
                "error_attained": self.estimate, "predicted_ms": self.ms, "sdpa_ms": self.sdpa_ms,
                "within_budget": self.within_budget, "why": self.why}

    def cells(self) -> tuple[str, str, str, str, str, str]:
        """The table's cells: method, degree, features, error, ms vs SDPA, why."""
        err = "exact" if self.error == 0 else f"<= {self.error:.3g}"
        ms = "-" if self.ms is None else f"{self.ms:.3g} vs {self.sdpa_ms:.3g}"
        return self.method, str(self.degree), f"{self.features:,}", err, ms, self.why


# -- the recommendation: candidates under a feature budget ------------------------------------------------
#: Highest degree the candidate search tries (each degree is one certified minimax, ~0.1 s at low degree).
MAX_CANDIDATE_DEGREE = 16


#: Wall-clock safety net of each certified approximation, far above its normal 0.3 s: the certification stops
#: on its tolerance or its cell cap, the same on every machine (past the net the bound stays rigorous, looser).
APPROX_SECONDS = 30.0


def _dense_features(dim: int, p: int) -> int:
    """Features of a polynomial of degree p with every coefficient non-zero (what an approximation has)."""
    return sum(symmetric_dim(dim, j) for j in range(p + 1))


def feature_budget(dim: int, value_dim: int, seq_len: int, max_features: int | None) -> tuple[int, str]:
    """(feature budget, the sentence that says where it comes from)."""
    from fastattn import costmodel as cm
    from fastattn.kernels.poly import MAX_FEATURES

    model = f"cost model of {cm.CARD}, run {cm.RUN} ({cm.DATE}), within {cm.FIT_ERROR['ours']:.0%} on its cells"
    if max_features is not None:
        if max_features > MAX_FEATURES:
            return MAX_FEATURES, f"--max-features {max_features:,}, capped at the kernel limit {MAX_FEATURES:,}"
        return max_features, f"--max-features {max_features:,}"
    n = cm.max_features(dim, value_dim, seq_len)
    if n:
        return min(n, MAX_FEATURES), f"the most features predicted to beat SDPA at T = {seq_len} ({model})"
    longer = seq_len
    # a map's fixed cost is ~1.1 ms while SDPA's time grows as T²: some longer T always has a budget
    for _ in range(16):
        longer *= 2
        n = cm.max_features(dim, value_dim, longer)
        if n:
            break
    why = (f"no map is predicted to beat SDPA at T = {seq_len} ({cm.OURS[0]:.2g} ms of fixed cost against SDPA's "
           f"{cm.sdpa_ms(dim, seq_len, DV=value_dim):.2g} ms); the budget is what beats it at T = {longer} ({model})")
    return min(n or MAX_FEATURES, MAX_FEATURES), why


def _candidate(a, dim: int, value_dim: int, seq_len: int, budget: int, why: str) -> Candidate:
    from fastattn import costmodel as cm
    from fastattn.costmodel import feature_count

    n = feature_count(a.coefficients, dim)
    ms = cm.layer_ms(n, dim, value_dim, seq_len, degree=a.degree) if n else None
    return Candidate(method=a.method, degree=a.degree, features=n, error=0.0 if a.method == "exact" else a.bound,
                     estimate=0.0 if a.method == "exact" else a.estimate, ms=ms, sdpa_ms=cm.sdpa_ms(dim, seq_len, DV=value_dim),
                     within_budget=n <= budget, why=why, approximation=a)


def candidates(f, dim: int, value_dim: int, radius: float, eps: float, budget: int, seq_len: int,
                positive_on_range: bool, degree: int | None, notes: list) -> list[Candidate]:
    """3-5 maps side by side: the top one first (the exact map of a polynomial), each with its trade-off."""
    from fastattn.transforms import approx

    def make(method, p, why_of) -> Candidate:
        a = method(f, p, radius, seconds=APPROX_SECONDS)
        return _candidate(a, dim, value_dim, seq_len, budget, why_of(a))

    top_degree = _degree_cap(dim, budget)
    if degree is not None:
        top_degree = degree
    taylor_ok = f.kind != "not-analytic" and (f.radius is None or f.radius == sp.oo or radius < float(f.radius))
    out = []
    if f.is_polynomial:
        from fastattn import costmodel as cm

        p = max(int(f.degree), 0)
        n = cm.feature_count(f.coefficients(p), dim)
        over = "" if n <= budget else f"; {n:,} features is above the budget of {budget:,}"
        out.append(Candidate("exact", p, n, 0.0, 0.0, cm.layer_ms(n, dim, value_dim, seq_len, degree=p) if n else None,
                             cm.sdpa_ms(dim, seq_len, DV=value_dim), n <= budget, f"exact: phi(q).psi(k) = f(q.k), no error{over}"))
        q = min(p - 1, top_degree)
        if q >= 0 and _dense_features(dim, q) < n:
            out.append(make(approx.minimax, q, lambda a: f"fewer features than the exact map, at the price of error "
                                                        f"{a.bound:.2g} (best uniform, degree {q})"))
            out.append(make(approx.chebyshev, q, lambda a: f"Chebyshev interpolant of degree {q}: error {a.bound:.2g}"))
        return out

    # the smallest degree whose best uniform polynomial reaches eps, else the most accurate within the budget
    best = {}
    for p in range(top_degree + 1) if degree is None else (degree,):
        best[p] = approx.minimax(f, p, radius, seconds=APPROX_SECONDS)
        if best[p].bound <= eps:
            break
    reached = [p for p, a in best.items() if a.bound <= eps]
    lowest = min(a.bound for a in best.values())
    # near-ties (an odd f gains nothing from an even degree) go to the fewer features
    p0 = reached[0] if reached else min(p for p, a in best.items() if a.bound <= lowest * 1.001)
    if degree is not None:
        lead = f"degree {degree} as asked"
    elif reached:
        lead = f"fewest features that reach --eps {eps:g}"
    else:
        lead = f"most accurate within the budget; none reaches --eps {eps:g}"
    # at a kink Remez can stall above the interpolant: the better of the two certified bounds leads
    pair = sorted([best[p0], approx.chebyshev(f, p0, radius, seconds=APPROX_SECONDS)], key=lambda a: a.bound)
    m0 = pair[0]
    if degree is None and not reached:
        notes.append(f"no candidate within the budget of {budget:,} features reaches error {eps:g} on |x| <= {radius:g}; "
                     f"the best is {m0.method} degree {p0} (error <= {m0.bound:.3g}): raise --max-features or "
                     "--seq-len, or lower the radius")
    top = _candidate(m0, dim, value_dim, seq_len, budget, f"{lead} ({_WHAT[m0.method]})")

    def ratio(a) -> str:
        return f"{a.bound / m0.bound:.2g}x" if m0.bound > 0 else "-"

    rest = [_candidate(pair[1], dim, value_dim, seq_len, budget,
                       f"{_WHAT[pair[1].method]}: error {ratio(pair[1])} the top's at the same features")]
    if taylor_ok:
        rest.append(make(approx.taylor, p0, lambda a: f"Taylor truncation: error {ratio(a)} the top's; exact series "
                                                      "coefficients, accurate near 0 only"))
    lower_is_positive = False
    if positive_on_range:
        q = p0 if p0 % 2 == 0 else p0 - 1
        base = (best.get(q) or approx.minimax(f, q, radius, seconds=APPROX_SECONDS)) if q >= 0 else None
        pos = None
        if q == 0 and base.coefficients[0] > 0:
            # a positive constant needs no shift (and positive() wants a degree >= 2)
            pos = dataclasses.replace(base, method=base.method + "+positive")
        elif q >= 2:
            pos = approx.positive(base, seconds=APPROX_SECONDS)
        if pos is not None and pos.cost == 0 and q == p0 and m0 is base:
            top = dataclasses.replace(top, why=top.why + "; positive on the whole real line: safe to normalise")
        elif pos is not None:
            lower_is_positive = pos.cost == 0 and q == p0 - 1
            why = ("positive on the whole real line as it is: safe to normalise" if pos.cost == 0 else
                   f"positive on the whole real line, safe to normalise: costs +{pos.cost:.2g} in error")
            rest.append(_candidate(pos, dim, value_dim, seq_len, budget, why))
    # a zero polynomial (the best constant of an odd f) is no map worth listing
    if degree is None and p0 >= 1 and (p0 - 1) in best and not lower_is_positive and any(best[p0 - 1].coefficients):
        rest.append(_candidate(best[p0 - 1], dim, value_dim, seq_len, budget,
                               f"one degree lower, fewer features: error {best[p0 - 1].bound:.2g}"))
    if degree is None and top_degree > p0:
        a = approx.minimax(f, top_degree, radius, seconds=APPROX_SECONDS)
        if a.bound < 0.999 * m0.bound:
            rest.append(_candidate(a, dim, value_dim, seq_len, budget, f"most accurate within the budget: error "
                                                                       f"{a.bound:.2g}, more features"))
    return [top] + rest[:4]


_WHAT = {"minimax": "best uniform polynomial (Remez)", "chebyshev": "Chebyshev interpolant, no Remez iteration",
         "taylor": "Taylor truncation", "exact": "f itself"}


def _degree_cap(dim: int, budget: int) -> int:
    """The largest degree <= MAX_CANDIDATE_DEGREE whose dense polynomial fits the budget (0 at least)."""
    p = 0
    while p < MAX_CANDIDATE_DEGREE and _dense_features(dim, p + 1) <= budget:
        p += 1
    return p


# -- the hybrid: exact softmax over the last w keys, a map f over the keys before ---------------------------
def output_bound(low: float, high: float) -> float:
    """kappa: the hybrid's output error per value column is at most kappa times the column's range, when
    f(x) exp(-x) - 1 lies in [low, high] for every score outside the window.

    Claim. Let query i see keys j <= i with scores x_j, softmax weights a_j = exp(x_j), and let the hybrid
    weigh key j by b_j = a_j (1 + e_j): e_j = 0 inside the window, e_j = f(x_j) exp(-x_j) - 1 outside, with
    e_j in [low, high] (|x_j| <= R). With lo = min(low, 0) >= -1 (f >= 0) and hi = max(high, 0), for every
    value column c, |o_c - o*_c| <= kappa (max_j v_jc - min_j v_jc), where o is the hybrid, o* softmax and
    kappa = (sqrt(1 + hi) - sqrt(1 + lo))^2 / (hi - lo) = (hi - lo) / (sqrt(1 + hi) + sqrt(1 + lo))^2 <= 1
    (0 when hi = lo = 0; for [-delta, delta] it is (1 - sqrt(1 - delta^2)) / delta ~ delta / 2). Proof. Both
    outputs are convex combinations of the v_j: o* with p*_j = a_j / sum a, o with p_j = b_j / sum b, where
    b_j >= 0 as f >= 0 and sum b = (1 + m) sum a with m = sum_j p*_j e_j, the p*-mean of e (take lo > -1, so
    1 + m > 0; at lo = -1, kappa = 1 is the plain convex-combination bound). As sum_j (p_j - p*_j) = 0,
    o_c - o*_c = sum_j (p_j - p*_j)(v_jc - mid_c) with |v_jc - mid_c| <= range_c / 2 (mid_c the middle of the
    column's range), so |o_c - o*_c| <= (range_c / 2) sum_j |p_j - p*_j|, and p_j - p*_j = p*_j (e_j - m) / (1 + m).
    The law of e under p* lives on [lo, hi] with mean m; the chord of the convex (t - m)_+ over [lo, hi] lies
    above it, so E (e - m)_+ <= (m - lo)(hi - m) / (hi - lo), and sum_j p*_j |e_j - m| = 2 E (e - m)_+. Hence
    |o_c - o*_c| <= range_c (m - lo)(hi - m) / ((hi - lo)(1 + m)); with u = 1 + m, A = 1 + lo, B = 1 + hi the
    last factor is (A + B - u - AB / u) / (hi - lo), largest at u = sqrt(AB): (sqrt B - sqrt A)^2 / (hi - lo).
    It is attained in the limit (every key outside, two groups at e = lo and e = hi with p*-masses giving
    1 + m = sqrt(AB), values 0 and 1), so no smaller constant holds for all inputs. Window keys only add
    e_j = 0 (inside [lo, hi]); a query whose keys all lie in the window (i < w, or w >= T) is exact; window 0
    is the normalised map alone, which divides by sum b + 1e-6 when f is not known to be > 0 (the bound is
    for sum b).

    >>> output_bound(0.0, 0.0), round(output_bound(-0.1, 0.1), 6), round(output_bound(-0.0803, 0.3592), 4)
    (0.0, 0.050126, 0.0973)
    >>> output_bound(-1.0, 3.0)     # f has a zero on the range: only the convex-combination bound is left
    1.0
    """
    for v, name in ((low, "low"), (high, "high")):
        if not math.isfinite(v):
            raise ValueError(f"{name}={v!r} must be finite (a bound on f(x) exp(-x) - 1)")
    lo, hi = min(low, 0.0), max(high, 0.0)
    if lo < -1:
        raise ValueError(f"low={low!r} is below -1: f(x) exp(-x) - 1 >= -1 for an f >= 0")
    if hi == lo:
        return 0.0
    # the form without cancellation; a few ulps up keep it a bound
    kappa = (hi - lo) / (math.sqrt(1 + hi) + math.sqrt(1 + lo)) ** 2
    return min(1.0, kappa * (1 + 8 * 2.0**-52))


def relative_range(coefficients, radius: float, *, seconds: float = APPROX_SECONDS) -> tuple[float, float, float]:
    """(delta, low, high): certified delta >= sup_{|x| <= R} |f(x) - exp(x)| / exp(x), and low <= f(x) exp(-x) - 1
    <= high on |x| <= R, for f(x) = sum_j a_j x^j (exact coefficients).

    Both come from :func:`fastattn.transforms.error_bound` (interval Taylor enclosures, cells bisected until the
    bound is within 1 % of an attained error or the time runs out: rigorous either way): delta is the uniform
    error of the constant 1 against g(x) = f(x) exp(-x), and [low, high] is c -+ (the uniform error of the
    constant c against g) - 1, c the middle of g's range on a grid, intersected with [-delta, delta].

    >>> delta, low, high = relative_range([1, 1, sp.Rational(1, 2)], 1.0)   # Taylor-2 of exp
    >>> 0.35914 < delta < 0.3628, -0.0812 < low < -0.0803, 0.35914 < high < 0.3628    # (5/2)/e - 1 at x = -1
    (True, True, True)
    """
    import numpy as np

    from fastattn.transforms import X, error_bound

    exact = [sp.Rational(c) for c in coefficients]
    g = sum((c * X**j for j, c in enumerate(exact)), sp.Integer(0)) * sp.exp(-X)
    delta = error_bound([1], g, radius, tolerance=1.01, seconds=seconds)
    x = np.linspace(-float(radius), float(radius), 2049)
    seen = np.polyval([float(c) for c in exact[::-1]], x) * np.exp(-x)
    middle = Fraction((float(seen.min()) + float(seen.max())) / 2)
    half = Fraction(error_bound([middle], g, radius, tolerance=1.01, seconds=seconds))
    # exact rationals, then outward to floats
    low = math.nextafter(float(middle - half - 1), -math.inf)
    high = math.nextafter(float(middle + half - 1), math.inf)
    return delta, max(low, -delta), min(high, delta)


@dataclass(frozen=True)
class HybridMap:
    """One map f used outside the window: its certified error against softmax and its predicted cost at T.

    ``relative_error`` bounds sup |f(x) exp(-x) - 1| on |x| <= radius and ``relative_range`` encloses
    f(x) exp(-x) - 1 there (:func:`relative_range`; None for a map hybrid_attention refuses);
    ``output_bound`` is kappa of :func:`output_bound` from that range (0 when the window covers T);
    ``feature_*`` are the outside sums at T - w tokens (forward FLOPs and bytes by the analysis's per-token
    formulas, ms by :func:`fastattn.costmodel.ours_ms` at v dim DV + 1, the ones column of the normaliser; at
    window 0 the plain map at DV); ``window_ms`` the window kernel's (:func:`fastattn.costmodel.window_ms`; None
    at window 0), ``window_floor_ms`` its floor, and ``ms`` their sum (None when the map has no features).
    """

    method: str
    degree: int
    text: str
    features: int
    usable: bool
    why: str
    relative_error: float | None
    relative_range: tuple | None
    output_bound: float | None
    feature_flops: float
    feature_bytes: float
    feature_ms: float | None
    window_ms: float | None
    ms: float | None
    sdpa_ms: float
    window_floor_ms: float | None = None
    coefficients: tuple = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"method": self.method, "degree": self.degree, "polynomial": self.text,
                "coefficients": [str(c) for c in self.coefficients], "features": self.features, "usable": self.usable,
                "why": self.why, "relative_error_bound": self.relative_error,
                "relative_error_range": None if self.relative_range is None else list(self.relative_range),
                "output_error_bound": self.output_bound,
                "feature_part": {"flops_forward": self.feature_flops, "bytes_forward": self.feature_bytes,
                                 "predicted_ms": self.feature_ms},
                "window_part_ms": self.window_ms, "window_part_floor_ms": self.window_floor_ms,
                "predicted_ms": self.ms, "sdpa_ms": self.sdpa_ms}

    def cells(self) -> tuple[str, ...]:
        """The table's cells: map, features, relative error, output bound, ms (outside + window = total vs SDPA)."""
        name = f"{self.method} p={self.degree}: {self.text}"
        if not self.usable:
            return name, f"{self.features:,}", "-", "-", f"not usable: {self.why}"
        rel = "-" if self.relative_error is None else (f"<= {self.relative_error:.3g} (f e^-x - 1 in "
                                                      f"[{self.relative_range[0]:.3g}, {self.relative_range[1]:.3g}])")
        out = "-" if self.output_bound is None else ("0 (exact)" if self.output_bound == 0 else
                                                     f"<= {self.output_bound:.3g} x range(v)")
        fm = "-" if self.feature_ms is None else f"{self.feature_ms:.3g}"
        total = "-" if self.ms is None else f"{self.ms:.3g}"
        if self.window_ms is None:  # window 0: the map alone
            ms = f"{fm} (the map alone)"
        else:
            ms = f"outside {fm} + window {self.window_ms:.3g} = {total}"
        return name, f"{self.features:,}", rel, out, f"{ms} vs SDPA {self.sdpa_ms:.3g}"


@dataclass(frozen=True)
class Hybrid:
    """The hybrid section of an analysis: ``hybrid_attention(..., window=w)`` at T = ``seq_len``, |x| <= ``radius``.

    ``exact`` is the window kernel's :class:`~fastattn.costmodel.WindowCost` (None at window 0, where there is
    none); ``maps`` one :class:`HybridMap` per candidate map (or the given polynomial). Costs are at the cost
    model's B = 2, H = 16, bf16.
    """

    window: int
    seq_len: int
    radius: float
    dim: int
    value_dim: int
    exact: object | None
    maps: list
    calibration: str
    notes: list = field(default_factory=list)

    @property
    def outside_tokens(self) -> int:
        """Queries that have keys outside the window: T - w (the outside sums' length)."""
        return max(self.seq_len - self.window, 0)

    def to_dict(self) -> dict:
        return {"window": self.window, "seq_len": self.seq_len, "radius": self.radius, "dim": self.dim,
                "value_dim": self.value_dim, "outside_tokens": self.outside_tokens,
                "exact_part": None if self.exact is None else self.exact.to_dict(),
                "maps": [m.to_dict() for m in self.maps], "calibration": self.calibration,
                "bound": BOUND_STATEMENT, "notes": list(self.notes)}


#: The output bound in one line (the proof is :func:`output_bound`'s docstring).
BOUND_STATEMENT = ("|o - softmax|_c <= kappa * (max_j v_jc - min_j v_jc) over the keys j a query sees, "
                   "kappa = (sqrt(1 + hi) - sqrt(1 + lo))^2 / (hi - lo) <= 1 where f(x) exp(-x) - 1 lies in "
                   "[lo, hi] on |x| <= R (~ delta / 2 for [-delta, delta]); 0 for the first w queries and for w >= T")


def _refusal(text: str, why: str):
    from fastattn.errors import KernelError

    # the words of hybrid_attention's own refusal (fastattn.attention.hybrid), from the same exact check
    return KernelError(f"hybrid_attention adds f(s q.k) over the keys outside the window to one normaliser with the "
                       f"window's exp terms, so f must be >= 0 on the reals; f(x) = {text} is not ({why}): "
                       "use an f >= 0 such as 1 + x + x**2/2 or (1 + x)**2")


def _kernel_poly(coefficients):
    from fastattn.kernels.codegen import Polynomial

    return Polynomial.from_coefficients({j: sp.Rational(c) for j, c in enumerate(coefficients) if c != 0})


def check_hybrid(f, window, seq_len: int = 1) -> None:
    """Refuse what :func:`hybrid` cannot analyse, before any work: a window that is not an int >= 0, a sequence
    longer than :data:`fastattn.costmodel.MAX_WINDOW_SEQ_LEN`, or a polynomial f negative somewhere on the reals
    (hybrid_attention's check, :func:`fastattn.kernels.poly.nonnegative`).

    >>> from fastattn import spec
    >>> check_hybrid(spec("1 + x"), 4, 8192)
    Traceback (most recent call last):
    ...
    fastattn.errors.KernelError: hybrid_attention adds f(s q.k) over the keys outside the window to one normaliser with the window's exp terms, so f must be >= 0 on the reals; f(x) = 1 + x is not (f changes sign at its real root x = -1 (multiplicity 1)): use an f >= 0 such as 1 + x + x**2/2 or (1 + x)**2
    """
    from fastattn.costmodel import MAX_WINDOW_SEQ_LEN
    from fastattn.errors import KernelError
    from fastattn.kernels.poly import nonnegative

    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise KernelError(f"window={window!r} must be an int >= 0 (keys i - window < j <= i get exact softmax; "
                          "0 means none)")
    if seq_len > MAX_WINDOW_SEQ_LEN:
        raise KernelError(f"seq_len={seq_len:,} is above {MAX_WINDOW_SEQ_LEN:,}, the longest sequence whose window "
                          "tiles the hybrid section counts; pass a shorter --seq-len")
    if f.is_polynomial:
        coefficients = f.coefficients(max(int(f.degree), 0))
        if not any(coefficients):
            raise KernelError(f"f = {f.source} is 0: the hybrid's outside part needs an f >= 0 that is not 0")
        poly = _kernel_poly(coefficients)
        ok, why = nonnegative(poly)
        if not ok:
            raise _refusal(poly.text, why)


def _short(coefficients) -> str:
    """sum a_j x^j with 4 significant digits (exact coefficients stay in the JSON)."""
    terms = []
    for j, c in enumerate(coefficients):
        if c == 0:
            continue
        a = f"{float(c):.4g}"
        x = "x" if j == 1 else f"x**{j}"
        terms.append(a if j == 0 else x if c == 1 else f"{a}*{x}")
    return " + ".join(terms).replace("+ -", "- ") or "0"


def hybrid(f, found: list, dim: int, value_dim: int, radius: float, window: int, seq_len: int) -> Hybrid:
    """The hybrid section: for the given polynomial (or each candidate map of a non-polynomial f), the window
    kernel's cost, the outside sums' cost at T - w, the certified error against softmax and the predicted ms.

    Raises KernelError (through :func:`check_hybrid`) for a bad window or a sign-changing polynomial, and when no
    candidate of a non-polynomial f is >= 0 on the reals (none can run outside the window).

    >>> from fastattn import spec
    >>> h = hybrid(spec("1 + x + x**2/2"), [], 16, 64, 1.0, 512, 8192)
    >>> m = h.maps[0]
    >>> m.method, m.features, m.usable, 0.35 < m.relative_error < 0.37, round(m.output_bound, 3)
    ('exact', 153, True, True, 0.097)
    >>> h.exact.tiles, round(m.feature_ms, 2), round(m.window_ms, 3), round(m.ms, 2)   # outside + window = total
    ((620, 1116, 1116), 1.98, 0.929, 2.91)
    """
    from fastattn import costmodel as cm
    from fastattn.analysis import CostModel
    from fastattn.errors import KernelError, SpecError
    from fastattn.kernels.poly import nonnegative
    from fastattn.transforms import X

    check_hybrid(f, window, seq_len)
    T, w = seq_len, window
    exact = None if w == 0 else cm.window_cost(T, w, dim, value_dim)
    notes = []
    if f.is_polynomial:
        p = max(int(f.degree), 0)
        maps = [("exact", p, tuple(f.coefficients(p)))]
    else:
        maps = [(c.method, c.degree, tuple(c.approximation.coefficients)) for c in found if c.approximation is not None]
        taylor_ok = f.kind in ("entire", "analytic") and (f.radius is None or f.radius == sp.oo
                                                           or radius < float(f.radius))
        if taylor_ok and not any(p >= 2 and nonnegative(_kernel_poly(c))[0] for _, p, c in maps if any(c)):
            # the candidates within the budget all change sign (odd degree): add the Based recipe, Taylor-2
            from fastattn.transforms import approx

            maps.append(("taylor", 2, tuple(approx.taylor(f, 2, radius, seconds=APPROX_SECONDS).coefficients)))
            notes.append("taylor p=2 is added for the hybrid (outside the feature budget): no candidate of degree "
                         ">= 2 within it is >= 0 on the reals")
    if not maps:
        raise KernelError(f"no polynomial map of f = {f.source} to put outside the window (the analysis found none "
                          "on this range); hybrid_attention takes a polynomial f >= 0")
    if f.expr != sp.exp(X):
        notes.append(f"f = {f.source} is not exp(x): delta measures how far each map is from exp, the weight "
                     "softmax gives inside the window")
    outside = max(T - w, 0)
    sdpa = cm.sdpa_ms(dim, T, DV=value_dim)
    out, seen = [], set()
    for method, degree, coefficients in maps:
        if coefficients in seen:
            continue
        seen.add(coefficients)
        poly = _kernel_poly(coefficients)
        features = cm.feature_count(coefficients, dim)
        ok, why = nonnegative(poly) if any(coefficients) else (False, "f = 0")
        # the outside sums take v widened by a ones column: the feature part runs at v dim DV + 1
        cost = CostModel(head_dim=dim, value_dim=value_dim + 1, feature_dim=features, degree=degree)
        feature_ms = None
        if features and w == 0:
            feature_ms = cm.ours_ms(features, dim, value_dim, T)  # window 0 is the plain normalised map
        elif features:
            feature_ms = cm.ours_ms(features, dim, value_dim + 1, outside) if outside else 0.0
        window_ms = None if exact is None else exact.ms
        ms = feature_ms if window_ms is None or feature_ms is None else feature_ms + window_ms
        delta = low = high = kappa = None
        if ok:
            try:
                delta, low, high = relative_range(coefficients, radius)
                # f >= 0 (checked above), so f exp(-x) - 1 >= -1: the enclosure's slack below -1 is no information
                low = max(low, -1.0)
            except SpecError as exc:
                notes.append(f"{method} p={degree}: no relative error bound ({exc})")
            kappa = 0.0 if w >= T else (None if delta is None else output_bound(low, high))
            why = "exact causal softmax: the window holds every key" if w >= T else why
        else:
            why = f"hybrid_attention refuses it: f < 0 somewhere on the reals ({why})"
        tokens = (T if w == 0 else outside) * cm.BATCH * cm.HEADS
        out.append(HybridMap(method=method, degree=degree, text=_short(coefficients), features=features, usable=ok,
                             why=why, relative_error=delta, output_bound=kappa,
                             relative_range=None if delta is None else (low, high),
                             feature_flops=float(cost.linear_flops() * tokens) if features else 0.0,
                             feature_bytes=float(cost.linear_bytes() * tokens) if features else 0.0,
                             feature_ms=feature_ms, window_ms=window_ms, ms=ms, sdpa_ms=sdpa,
                             window_floor_ms=None if exact is None else exact.floor_ms, coefficients=coefficients))
    if not any(m.usable for m in out):
        raise KernelError(f"no candidate map of f = {f.source} is >= 0 on the reals, and hybrid_attention needs f >= 0 "
                          "outside the window: pass a polynomial f >= 0 (e.g. 1 + x + x**2/2) or an even --degree "
                          "whose map is >= 0")
    if any(m.usable and m.output_bound == 1 for m in out):
        notes.append(f"a map has a zero on |x| <= {radius:g} (f exp(-x) - 1 reaches -1): its output bound is the "
                     "trivial one, the range of v; lower --radius")
    return Hybrid(window=w, seq_len=T, radius=radius, dim=dim, value_dim=value_dim, exact=exact, maps=out,
                  calibration=cm.WINDOW_CALIBRATION if w else "no window kernel at window 0", notes=notes)
