"""The feature maps :func:`fastattn.analyze` recommends: a feature budget from the calibrated cost
model (:mod:`fastattn.costmodel`) and 3-5 certified candidates within it (exact, minimax, Chebyshev,
Taylor, positive), each with its trade-off in one line; and, for a window w, what each map gives as the
outside part of ``hybrid_attention`` (:func:`hybrid`): its certified error against softmax and its cost.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import sympy as sp

from fastattn.transforms import symmetric_dim

__all__ = ["Candidate", "feature_budget", "candidates", "MAX_CANDIDATE_DEGREE", "APPROX_SECONDS", "Hybrid",
           "HybridMap", "hybrid", "check_hybrid", "relative_error", "output_bound"]


@dataclass(frozen=True)
class Candidate:
    """One recommended map: a polynomial of f on |x| <= radius, its features, certified error and predicted time.

    ``error`` is the certified bound on sup |f - poly| over the radius (0 for the exact map); ``ms`` and
    ``sdpa_ms`` are forward+backward milliseconds predicted by :mod:`fastattn.costmodel` (NVIDIA H200,
    v15) at the analysis's sequence length; ``why`` is the trade-off in one line.
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


#: Seconds given to each certified approximation of the candidate search (past it the bound stays rigorous, looser).
APPROX_SECONDS = 1.0


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
           f"{cm.sdpa_ms(dim, seq_len):.2g} ms); the budget is what beats it at T = {longer} ({model})")
    return min(n or MAX_FEATURES, MAX_FEATURES), why


def _candidate(a, dim: int, value_dim: int, seq_len: int, budget: int, why: str) -> Candidate:
    from fastattn import costmodel as cm
    from fastattn.costmodel import feature_count

    n = feature_count(a.coefficients, dim)
    ms = cm.ours_ms(n, dim, value_dim, seq_len) if n else None
    return Candidate(method=a.method, degree=a.degree, features=n, error=0.0 if a.method == "exact" else a.bound,
                     estimate=0.0 if a.method == "exact" else a.estimate, ms=ms, sdpa_ms=cm.sdpa_ms(dim, seq_len),
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
        out.append(Candidate("exact", p, n, 0.0, 0.0, cm.ours_ms(n, dim, value_dim, seq_len) if n else None,
                             cm.sdpa_ms(dim, seq_len), n <= budget, f"exact: phi(q).psi(k) = f(q.k), no error{over}"))
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
def output_bound(delta: float) -> float:
    """kappa(delta): the hybrid's output error per value column is at most kappa times the column's range.

    Claim. Let query i see keys j <= i with scores x_j, softmax weights a_j = exp(x_j), and let the hybrid
    weigh key j by b_j = a_j (1 + e_j): e_j = 0 inside the window, e_j = f(x_j) exp(-x_j) - 1 outside,
    where |e_j| <= delta < 1 (|x_j| <= R). Then for every value column c,
    |o_c - o*_c| <= kappa(delta) (max_j v_jc - min_j v_jc), kappa(delta) = (1 - sqrt(1 - delta^2)) / delta
    = delta / (1 + sqrt(1 - delta^2)) ~ delta / 2, with o the hybrid and o* softmax; kappa = 1 for
    delta >= 1, kappa(0) = 0. Proof. Both outputs are convex combinations of the v_j: o* with
    p*_j = a_j / sum a, o with p_j = b_j / sum b (b_j >= 0 as f >= 0, and sum b = (1 + m) sum a > 0, where
    m = sum_j p*_j e_j is the p*-mean of e). So |o_c - o*_c| <= range_c always (kappa = 1), and since
    sum_j (p_j - p*_j) = 0, o_c - o*_c = sum_j (p_j - p*_j)(v_jc - mid_c) with |v_jc - mid_c| <= range_c / 2
    (mid_c the middle of the column's range): |o_c - o*_c| <= (range_c / 2) sum_j |p_j - p*_j|. Now
    p_j - p*_j = p*_j (e_j - m) / (1 + m), and for any law of e on [-delta, delta] with mean m the chord of
    the convex (t - m)_+ over [-delta, delta] gives E (e - m)_+ <= (delta^2 - m^2) / (2 delta), so
    sum_j p*_j |e_j - m| = 2 E (e - m)_+ <= (delta^2 - m^2) / delta. Hence
    |o_c - o*_c| <= range_c (delta^2 - m^2) / (2 delta (1 + m)), and the maximum of
    (delta^2 - m^2) / (1 + m) over m in [-delta, delta], at 1 + m = sqrt(1 - delta^2), is 2 (1 - sqrt(1 - delta^2)).
    The bound is attained in the limit (every key outside, e = +-delta on two groups of keys with the values
    0 and 1), so no better constant holds for all inputs; keys inside the window only shrink it (their
    e_j = 0), a query whose keys all lie in the window (i < w, or w >= T) is exact, and window = 0 is the
    normalised map (there, an f with real zeros divides by sum b + 1e-6: the stated bound is for sum b).

    >>> output_bound(0.0), round(output_bound(0.1), 6), output_bound(2.0)
    (0.0, 0.050126, 1.0)
    """
    if not delta >= 0:
        raise ValueError(f"delta={delta!r} must be a number >= 0 (a bound on |f(x) exp(-x) - 1|)")
    if delta >= 1:
        return 1.0
    # delta / (1 + sqrt(1 - delta^2)) rather than (1 - sqrt(.)) / delta: no cancellation; a few ulps up keep it a bound
    kappa = delta / (1 + math.sqrt(1 - delta * delta))
    return 0.0 if kappa == 0 else min(1.0, kappa * (1 + 4 * 2.0**-52))


def relative_error(coefficients, radius: float, *, seconds: float = APPROX_SECONDS) -> float:
    """A certified bound on sup_{|x| <= R} |f(x) - exp(x)| / exp(x) for f(x) = sum_j a_j x^j (exact coefficients).

    It is the uniform error of the constant 1 against f(x) exp(-x), certified by
    :func:`fastattn.transforms.error_bound` (interval Taylor enclosures, cells bisected until the bound is within
    10 % of an attained error or the time runs out: rigorous either way).

    >>> b = relative_error([1, 1, sp.Rational(1, 2)], 1.0)    # Taylor-2 of exp: (5/2) / e - 1 at x = -1
    >>> 0.35914 < b < 0.3951
    True
    """
    from fastattn.transforms import X, error_bound

    poly = sum((sp.Rational(c) * X**j for j, c in enumerate(coefficients)), sp.Integer(0))
    return error_bound([1], poly * sp.exp(-X), radius, seconds=seconds)


@dataclass(frozen=True)
class HybridMap:
    """One map f used outside the window: its certified error against softmax and its predicted cost at T.

    ``relative_error`` bounds sup |f(x) exp(-x) - 1| on |x| <= radius (None for a map hybrid_attention refuses);
    ``output_bound`` is kappa of :func:`output_bound` (0 when the window covers T); ``feature_*`` are the outside
    sums at T - w tokens (forward FLOPs and bytes by the analysis's per-token formulas, ms by
    :func:`fastattn.costmodel.ours_ms` at v dim DV + 1, the ones column of the normaliser); ``window_ms`` the
    window kernel's (None: uncalibrated) and ``ms`` their sum (None when a part is unknown).
    """

    method: str
    degree: int
    text: str
    features: int
    usable: bool
    why: str
    relative_error: float | None
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
                "why": self.why, "relative_error_bound": self.relative_error, "output_error_bound": self.output_bound,
                "feature_part": {"flops_forward": self.feature_flops, "bytes_forward": self.feature_bytes,
                                 "predicted_ms": self.feature_ms},
                "window_part_ms": self.window_ms, "window_part_floor_ms": self.window_floor_ms,
                "predicted_ms": self.ms, "sdpa_ms": self.sdpa_ms}

    def cells(self) -> tuple[str, ...]:
        """The table's cells: map, features, relative error, output bound, ms (outside + window = total vs SDPA)."""
        name = f"{self.method} p={self.degree}: {self.text}"
        if not self.usable:
            return name, f"{self.features:,}", "-", "-", f"not usable: {self.why}"
        rel = "-" if self.relative_error is None else f"<= {self.relative_error:.3g}"
        out = "-" if self.output_bound is None else ("0 (exact)" if self.output_bound == 0 else
                                                     f"<= {self.output_bound:.3g} x range(v)")
        fm = "-" if self.feature_ms is None else f"{self.feature_ms:.3g}"
        if self.window_floor_ms is None:  # window 0: the map alone
            ms = f"{fm} (the map alone)"
        elif self.window_ms is None:
            ms = f"outside {fm} + window uncalibrated (floor {self.window_floor_ms:.2g}) = at least {fm}"
        else:
            ms = f"outside {fm} + window {self.window_ms:.3g} = {self.ms:.3g}"
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
                   "kappa = (1 - sqrt(1 - delta^2)) / delta (~ delta / 2, 1 for delta >= 1), delta = sup |f(x) "
                   "exp(-x) - 1| on |x| <= R; 0 for the first w queries and for w >= T")


def _refusal(text: str, why: str):
    from fastattn.errors import KernelError

    # the words of hybrid_attention's own refusal (fastattn.attention.hybrid), from the same exact check
    return KernelError(f"hybrid_attention adds f(s q.k) over the keys outside the window to one normaliser with the "
                       f"window's exp terms, so f must be >= 0 on the reals; f(x) = {text} is not ({why}): "
                       "use an f >= 0 such as 1 + x + x**2/2 or (1 + x)**2")


def _kernel_poly(coefficients):
    from fastattn.kernels.codegen import Polynomial

    return Polynomial.from_coefficients({j: sp.Rational(c) for j, c in enumerate(coefficients) if c != 0})


def check_hybrid(f, window) -> None:
    """Refuse what :func:`hybrid` cannot analyse, before any work: a window that is not an int >= 0, or a
    polynomial f negative somewhere on the reals (hybrid_attention's check, :func:`fastattn.kernels.poly.nonnegative`).

    >>> from fastattn import spec
    >>> check_hybrid(spec("1 + x"), 4)
    Traceback (most recent call last):
    ...
    fastattn.errors.KernelError: hybrid_attention adds f(s q.k) over the keys outside the window to one normaliser with the window's exp terms, so f must be >= 0 on the reals; f(x) = 1 + x is not (f changes sign at its real root x = -1 (multiplicity 1)): use an f >= 0 such as 1 + x + x**2/2 or (1 + x)**2
    """
    from fastattn.errors import KernelError
    from fastattn.kernels.poly import nonnegative

    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise KernelError(f"window={window!r} must be an int >= 0 (keys i - window < j <= i get exact softmax; "
                          "0 means none)")
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
    >>> m.method, m.features, m.usable, 0.35 < m.relative_error < 0.4, round(m.output_bound, 3)
    ('exact', 153, True, True, 0.186)
    >>> h.exact.tiles, m.window_ms, m.ms       # the window kernel's term is uncalibrated: no total
    ((620, 1116, 1116), None, None)
    """
    from fastattn import costmodel as cm
    from fastattn.analysis import CostModel
    from fastattn.errors import KernelError, SpecError
    from fastattn.kernels.poly import nonnegative
    from fastattn.transforms import X

    check_hybrid(f, window)
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
    sdpa = cm.sdpa_ms(dim, T)
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
        ms = (feature_ms if w == 0 else None if window_ms is None or feature_ms is None else feature_ms + window_ms)
        delta = kappa = None
        if ok:
            try:
                delta = relative_error(coefficients, radius)
            except SpecError as exc:
                notes.append(f"{method} p={degree}: no relative error bound ({exc})")
            kappa = 0.0 if w >= T else (None if delta is None else output_bound(delta))
            why = "exact causal softmax: the window holds every key" if w >= T else why
        else:
            why = f"hybrid_attention refuses it: f < 0 somewhere on the reals ({why})"
        tokens = (T if w == 0 else outside) * cm.BATCH * cm.HEADS
        out.append(HybridMap(method=method, degree=degree, text=_short(coefficients), features=features, usable=ok,
                             why=why, relative_error=delta, output_bound=kappa,
                             feature_flops=float(cost.linear_flops() * tokens) if features else 0.0,
                             feature_bytes=float(cost.linear_bytes() * tokens) if features else 0.0,
                             feature_ms=feature_ms, window_ms=window_ms, ms=ms, sdpa_ms=sdpa,
                             window_floor_ms=None if exact is None else exact.floor_ms, coefficients=coefficients))
    if not any(m.usable for m in out):
        raise KernelError(f"no candidate map of f = {f.source} is >= 0 on the reals, and hybrid_attention needs f >= 0 "
                          "outside the window: pass a polynomial f >= 0 (e.g. 1 + x + x**2/2) or an even --degree "
                          "whose map is >= 0")
    if any(m.usable and m.relative_error is not None and m.relative_error >= 1 for m in out) and w < T:
        notes.append(f"delta >= 1 for some map on |x| <= {radius:g}: its output bound is the trivial one (the range "
                     "of v); lower --radius")
    return Hybrid(window=w, seq_len=T, radius=radius, dim=dim, value_dim=value_dim, exact=exact, maps=out,
                  calibration=cm.WINDOW_CALIBRATION if w else "no window kernel at window 0", notes=notes)
