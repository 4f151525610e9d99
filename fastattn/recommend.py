"""The feature maps :func:`fastattn.analyze` recommends: a feature budget from the calibrated cost
model (:mod:`fastattn.costmodel`) and 3-5 certified candidates within it (exact, minimax, Chebyshev,
Taylor, positive), each with its trade-off in one line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import sympy as sp

from fastattn.transforms import symmetric_dim

__all__ = ["Candidate", "feature_budget", "candidates", "MAX_CANDIDATE_DEGREE", "APPROX_SECONDS"]


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
