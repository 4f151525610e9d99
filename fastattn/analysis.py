"""``fastattn.analyze``: one verdict about a candidate attention function f, with its proofs and costs,
and 3-5 recommended feature maps within a feature budget (certified errors, predicted times from
:mod:`fastattn.costmodel`); with ``window=w``, what each map gives as the outside part of
``hybrid_attention`` (exact softmax over the last w keys): the window kernel's cost, the outside sums'
cost, the certified error against softmax, and the predicted ms (:mod:`fastattn.recommend`).

>>> a = analyze("1 + x + x**2/2", dim=16, certify=False)
>>> a.low_rank, a.rank_bound, a.feature_dim
(True, 153, 153)
>>> a.candidates[0].method, a.candidates[0].error
('exact', 0.0)
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import sympy as sp

from fastattn.budget import limited
from fastattn.errors import FastAttnError, FeatureMapError, SpecError
from fastattn import recommend
from fastattn.recommend import BOUND_STATEMENT, Candidate, Hybrid
from fastattn.transforms import Spec, spec as make_spec, symmetric_dim

__all__ = ["analyze", "Analysis", "Candidate", "CostModel", "ANALYSIS_SECONDS", "STEP_SECONDS", "FEATURE_MAP_SECONDS",
           "SEQ_LEN"]

_DEFAULT_SEQ_LENS = (2048, 8192, 32768, 65536)
#: Sequence length at which the default feature budget must beat SDPA.
SEQ_LEN = 8192
#: Resolution of :meth:`Analysis.plot` figures (and of ``fastattn analyze --plot`` files).
PLOT_DPI = 200


@dataclass
class CostModel:
    """FLOPs and bytes per token: f-attention through a feature map (chunkwise) against softmax attention.

    Per query token at sequence length T, non-causal, head dim d, value dim d_v:

    * softmax: 2Td (scores) + 2Td_v (P·V) + 5T (exp, max, sum) FLOPs; flash attention reads
      q, k, v and writes o once: (2d + 2d_v)·b bytes (b bytes per element) in the ideal.
    * feature map of dimension D, chunk C: D·(2p) to build φ(q) and φ(k) (p multiplies
      per monomial, p the degree), 4D·d_v + 2D for the state update, output and
      normaliser, and C(2d + 2d_v) for the exact in-chunk block. Bytes: q, k, v, o once
      plus the D×d_v fp32 state written and read once per chunk: (2d + 2d_v)·b + 8·D·d_v/C.

    Causal attention halves both quadratic terms; the crossover moves little.
    """

    head_dim: int
    value_dim: int
    feature_dim: int | None
    degree: int
    chunk: int = 64
    bytes_per_element: int = 2
    seq_lens: tuple = _DEFAULT_SEQ_LENS

    def softmax_flops(self, T: int) -> float:
        return T * (2 * self.head_dim + 2 * self.value_dim + 5)

    def linear_flops(self) -> float | None:
        if self.feature_dim is None:
            return None
        D = self.feature_dim
        return D * 2 * max(self.degree, 1) + 4 * D * self.value_dim + 2 * D + self.chunk * (2 * self.head_dim + 2 * self.value_dim)

    def softmax_bytes(self) -> float:
        return (2 * self.head_dim + 2 * self.value_dim) * self.bytes_per_element

    def linear_bytes(self) -> float | None:
        if self.feature_dim is None:
            return None
        return self.softmax_bytes() + 8 * self.feature_dim * self.value_dim / self.chunk

    @property
    def crossover(self) -> int | None:
        """Smallest T at which softmax needs more FLOPs per token than the feature-map form."""
        lin = self.linear_flops()
        if lin is None:
            return None
        return math.ceil(lin / (2 * self.head_dim + 2 * self.value_dim + 5))

    def table(self) -> list[dict]:
        rows = []
        lin = self.linear_flops()
        for T in self.seq_lens:
            sm = self.softmax_flops(T)
            rows.append({"T": T, "softmax_flops_per_token": sm, "feature_flops_per_token": lin,
                         "speedup_flops": (sm / lin) if lin else None})
        return rows

    def to_dict(self) -> dict:
        return {
            "head_dim": self.head_dim, "value_dim": self.value_dim, "feature_dim": self.feature_dim, "chunk": self.chunk,
            "bytes_per_element": self.bytes_per_element, "softmax_bytes_per_token": self.softmax_bytes(),
            "feature_bytes_per_token": self.linear_bytes(), "crossover_seq_len": self.crossover, "by_seq_len": self.table(),
        }


@dataclass(eq=False)
class Analysis:
    """Everything :func:`analyze` found about f. Render with ``print``, in a notebook, or ``to_json()``."""

    spec: Spec
    dim: int
    radius: float
    kind: str
    reason: str
    #: True (polynomial), False (a verified full-rank certificate), None (undecided: see low_rank_reason).
    low_rank: bool | None
    rank_bound: int | None
    certificate: object | None
    positivity: object
    positive_definite: object | None
    metric_transform: object | None
    feature_method: str | None
    feature_degree: int | None
    feature_dim: int | None
    error_bound: float | None
    cost: CostModel
    notes: list = field(default_factory=list)
    low_rank_reason: str = ""
    #: The suggested map has more than MAX_FEATURES features (counted, never built).
    feature_too_large: bool = False
    #: The recommended maps, the top one first (it is the feature_method / feature_degree line).
    candidates: list = field(default_factory=list)
    #: Feature budget of the candidates, and where it comes from.
    budget: int | None = None
    budget_reason: str = ""
    seq_len: int = SEQ_LEN
    eps: float = 1e-3
    value_dim: int | None = None
    #: The hybrid section (``analyze(..., window=w)``), else None.
    hybrid: Hybrid | None = None

    # -- derived -------------------------------------------------------------------------------
    def feature_map(self):
        """Build the suggested :class:`~fastattn.transforms.FeatureMap` (None for non-analytic f).

        A map marked too large (:attr:`feature_too_large`) raises FeatureMapError instead of being built.
        """
        if self.feature_method is None:
            return None
        if self.feature_too_large:
            count = "more than the limit" if self.feature_dim is None else f"{self.feature_dim:,}"
            raise FeatureMapError(f"the feature map of {self.spec.source!r} at head dim {self.dim} needs {count} "
                                  "features; it is not built (lower the head dim, the degree or the accuracy)")
        from fastattn.transforms import feature_map

        if self.feature_method == "exact" or not self.candidates:
            return feature_map(self.spec, self.dim, method=self.feature_method,
                               degree=None if self.feature_method == "exact" else self.feature_degree)
        method, _, positive = self.feature_method.partition("+")
        return feature_map(self.spec, self.dim, method=method, degree=self.feature_degree, radius=self.radius,
                           positive=bool(positive))

    def plot(self, n: int | None = None, d: int | None = None, *, others: Sequence = ("exp(x)",), ax=None,
             dpi: int = PLOT_DPI):
        """Singular-value decay of f(QKᵀ) at head dim ``d`` (default: the analysis's), beside ``others``,
        with the rank bound (or the top map's feature count) drawn; returns the Figure.

        Labels are matplotlib mathtext; the legend sits outside the axes; the figure is made at ``dpi``.

        >>> fig = analyze("x**2", dim=3, certify=False, definiteness=False).plot(n=16)
        >>> fig.dpi >= 200, bool(fig.axes[0].get_legend().get_bbox_to_anchor().x0 > fig.axes[0].bbox.x1)
        (True, True)
        """
        import numpy as np
        from matplotlib.figure import Figure

        from fastattn.lowrank.numeric import spectrum

        d = self.dim if d is None else d
        mark, what = ((self.rank_bound, "rank bound") if self.low_rank else
                      (None if self.feature_too_large else self.feature_dim, "features of the top map"))
        n = n or (min(512, max(128, 2 * mark)) if mark else 128)
        if ax is None:
            fig = Figure(figsize=(7.5, 4.0), dpi=dpi, layout="constrained")
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        specs = [self.spec] + [make_spec(o) for o in others if make_spec(o).expr != self.spec.expr]
        for f in specs:
            sv = spectrum(f, n, d, radius=self.radius)
            rel = sv / sv[0] if sv[0] > 0 else sv
            ax.semilogy(np.arange(1, len(rel) + 1), np.maximum(rel, 1e-17), label=f"{_math(f.expr)} ({f.kind})")
        ax.axhline(np.finfo(np.float64).eps, color="0.6", lw=0.8, ls=":", label=r"float64 $\epsilon$")
        if mark:
            label = f"{what}: {mark:,}" + ("" if mark <= n else f" (beyond $n = {n}$)")
            ax.axvline(min(mark, n), color="C3", ls="--", lw=1.0, label=label)
        ax.set_xlabel(r"index $i$")
        ax.set_ylabel(r"$\sigma_i / \sigma_1$")
        ax.set_title(rf"singular values of $f(QK^\top)$, $n = {n}$, $d = {d}$, $|q \cdot k| \leq {self.radius:g}$")
        # outside the axes, so no curve is hidden behind it
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small")
        return fig

    # -- rendering -------------------------------------------------------------------------------
    def to_dict(self, *, full: bool = False) -> dict:
        def cert(c):
            return None if c is None else c.to_dict(full=full)

        p = self.positivity
        return {
            "spec": self.spec.source,
            "kind": self.kind,
            "reason": self.reason,
            "dim": self.dim,
            "radius": self.radius,
            "low_rank": self.low_rank,
            "low_rank_reason": self.low_rank_reason,
            "rank_bound": self.rank_bound,
            "certificate": cert(self.certificate),
            "positivity": {"interval": [str(v) for v in p.interval], "positive": p.positive, "reason": p.reason,
                           "counterpoint": None if p.counterpoint is None else str(p.counterpoint)},
            "positive_definite": cert(self.positive_definite),
            "metric_transform": cert(self.metric_transform),
            "feature_map": {"method": self.feature_method, "degree": self.feature_degree, "dim": self.feature_dim,
                            "error_bound": self.error_bound, "at_radius": self.radius,
                            "too_large": self.feature_too_large},
            "feature_dim": self.feature_dim,
            "cost": self.cost.to_dict(),
            "budget": {"features": self.budget, "reason": self.budget_reason, "seq_len": self.seq_len, "eps": self.eps},
            "candidates": [c.to_dict() for c in self.candidates],
            "predicted_ms": [{"T": T, "ours": o, "sdpa": s} for T, o, s in self._predicted()],
            "cost_model": _cost_model_source(),
            "hybrid": None if self.hybrid is None else self.hybrid.to_dict(),
            "notes": list(self.notes),
        }

    def to_json(self, *, full: bool = False, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(full=full), indent=indent)

    def _predicted(self) -> list[tuple[int, float, float]]:
        """(T, our ms, SDPA ms) of the top map at each of the cost table's lengths (:mod:`fastattn.costmodel`)."""
        from fastattn import costmodel as cm

        if not self.feature_dim or self.feature_too_large:
            return []
        dv = self.value_dim or self.dim
        return [(T, cm.layer_ms(self.feature_dim, self.dim, dv, T), cm.sdpa_ms(self.dim, T, DV=dv)) for T in self.cost.seq_lens]

    def _rows(self, table: bool = True) -> list[tuple[str, str]]:
        rows = [("f(x)", self.spec.source), ("class", f"{self.kind}: {self.reason}")]
        if self.low_rank:
            rows.append(("low rank", f"yes: rank f(QK^T) <= {self.rank_bound} at head dim {self.dim}"))
        else:
            rows.append(("low rank", f"{_yes(self.low_rank)}: {self.low_rank_reason}"))
        c = self.certificate
        rows.append(("certificate", "not computed" if c is None else
                     f"{c.claim} [{c.method}{', verified' if getattr(c, '_verified', False) else ''}]"))
        rows.append(("positivity", f"{_yes(self.positivity.positive)} on [{self.positivity.interval[0]}, "
                                   f"{self.positivity.interval[1]}]: {self.positivity.reason}"))
        for name, c in (("PD of f(|x-y|^2)", self.positive_definite), ("metric transform", self.metric_transform)):
            if c is not None:
                rows.append((name, f"{_yes(c.holds)}: {getattr(c, 'claim', None) or getattr(c, 'reason', '')}"))
        if self.feature_too_large:
            size = "" if self.feature_dim is None else f"{self.feature_dim:,} features, "
            rows.append(("feature map", f"{self.feature_method}: {size}too large, not built (see the note below)"))
        elif self.feature_dim is None:
            rows.append(("feature map", "none (see the note below)"))
        else:
            err = "exact" if not self.error_bound else f"error <= {self.error_bound:.3g} for |score| <= {self.radius}"
            rows.append(("feature map", f"{self.feature_method} degree {self.feature_degree}: {self.feature_dim} features, {err}"))
        if self.candidates and table:
            rows.append(("budget", f"{self.budget:,} features: {self.budget_reason}"))
            rows.append(("candidates", f"method, degree, features at d = {self.dim}, certified error on |x| <= "
                                       f"{self.radius:g}, predicted fwd+bwd ms vs SDPA at T = {self.seq_len}"))
            for i, c in enumerate(self.candidates, 1):
                method, p, n, err, ms, why = c.cells()
                plural = "" if c.features == 1 else "s"
                rows.append((f"  {i}. {method} p={p}", f"{n} feature{plural}, error {err}, {ms} ms: {why}"))
        for T, ours, sdpa in self._predicted():
            rows.append((f"  T = {T}", f"ours {ours:.3g} ms, SDPA {sdpa:.3g} ms (fwd+bwd, predicted)"))
        if self.hybrid is not None:
            rows += _hybrid_rows(self.hybrid, table)
        for n in self.notes:
            rows.append(("note", n))
        return rows

    def __str__(self) -> str:
        rows = self._rows()
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)

    def _repr_markdown_(self) -> str:
        body = "\n".join(f"| {k} | {v.replace('|', '&#124;')} |" for k, v in self._rows())
        return f"### fastattn.analyze: `{self.spec.source}`\n\n| | |\n|---|---|\n{body}\n"

    def _repr_html_(self) -> str:
        cell = "style='text-align:left'"
        body = "".join(f"<tr><th {cell}>{html.escape(k)}</th><td {cell}>{html.escape(v)}</td></tr>"
                       for k, v in self._rows(table=False))
        out = f"<h4>fastattn.analyze: <code>{html.escape(self.spec.source)}</code></h4><table>{body}</table>"
        if self.candidates:
            head = "".join(f"<th {cell}>{h}</th>" for h in _HEADER)
            rows = "".join("<tr>" + "".join(f"<td {cell}>{html.escape(v)}</td>" for v in c.cells()) + "</tr>"
                           for c in self.candidates)
            out += (f"<p>Candidates within {self.budget:,} features ({html.escape(self.budget_reason)}); ms are "
                    f"forward+backward at T = {self.seq_len}, predicted.</p><table><tr>{head}</tr>{rows}</table>")
        if self.hybrid is not None:
            h = self.hybrid
            head = "".join(f"<th {cell}>{x}</th>" for x in _HYBRID_HEADER)
            rows = "".join("<tr>" + "".join(f"<td {cell}>{html.escape(v)}</td>" for v in m.cells()) + "</tr>"
                           for m in h.maps)
            out += (f"<p>Hybrid, window {h.window} at T = {h.seq_len}. Exact part: {html.escape(_exact_part(h))}. "
                    f"Feature part: {html.escape(_feature_part(h))}. Bound: {html.escape(BOUND_STATEMENT)}.</p>"
                    f"<table><tr>{head}</tr>{rows}</table><p>{html.escape(h.calibration)}</p>")
        return out

    def __repr__(self) -> str:
        return f"<Analysis {self.spec.source!r}: {self.kind}, low_rank={self.low_rank}, rank_bound={self.rank_bound}>"


_HEADER = ("method", "degree", "features", "certified error", "ms vs SDPA", "trade-off")
_HYBRID_HEADER = ("map outside the window", "features", "delta = sup |f e^-x - 1| (range)", "output error",
                  "ms: outside + window = total vs SDPA")


def _exact_part(h: Hybrid) -> str:
    c = h.exact
    if c is None:
        return "none (window 0: the plain normalised feature-map attention over every key)"
    bm, bn, bbm, bbn = c.blocks
    return (f"window kernel ({c.dtype}, B{c.B} H{c.H}): {c.tiles[0]:,} tiles of {bm}x{bn} forward, "
            f"{c.tiles[1]:,} + {c.tiles[2]:,} of {bbm}x{bbn} backward per sequence (key blocks that meet the window; "
            f"{c.pairs:,} window pairs), {sum(c.flops):.3g} MMA FLOPs fwd+bwd, {sum(c.tile_bytes):.3g} bytes in tiles "
            f"({c.min_bytes:.3g} at least); floor {c.floor_ms:.3g} ms, predicted {c.ms:.3g} ms")


def _feature_part(h: Hybrid) -> str:
    if h.window >= h.seq_len:
        return "none: the window holds every key (exact causal softmax)"
    if h.window == 0:
        return f"the map's normalised attention over all {h.seq_len:,} tokens"
    return (f"the outside sums of the {h.outside_tokens:,} queries past the window (fast_attention of "
            f"q[w:] against k[:T-w], v widened by a ones column)")


def _hybrid_rows(h: Hybrid, table: bool) -> list[tuple[str, str]]:
    rows = [("hybrid", f"window {h.window} at T = {h.seq_len}: exact softmax over the last {h.window} keys, the map "
                       f"f over the keys before, one normaliser; scores |x| <= {h.radius:g}"),
            ("  exact part", _exact_part(h)), ("  feature part", _feature_part(h)), ("  bound", BOUND_STATEMENT)]
    if table:
        for i, m in enumerate(h.maps, 1):
            name, n, rel, out, ms = m.cells()
            if not m.usable:
                rows.append((f"  {i}. {m.method} p={m.degree}", f"{name.partition(': ')[2]}: {ms}"))
                continue
            rows.append((f"  {i}. {m.method} p={m.degree}", f"{name.partition(': ')[2]}: {n} features, delta {rel}, "
                                                           f"output error {out}; ms {ms}"))
    rows.append(("  calibration", h.calibration))
    rows += [("  note", n) for n in h.notes]
    return rows


def _cost_model_source() -> str:
    from fastattn import costmodel as cm

    return (f"{cm.CARD}, run {cm.RUN} ({cm.DATE}); fit error {cm.FIT_ERROR['ours']:.0%} (ours), "
            f"{cm.FIT_ERROR['sdpa']:.0%} (SDPA) on the measured cells; other shapes are extrapolated")


def _yes(v) -> str:
    return {True: "yes", False: "no", None: "undecided"}[v]


def _math(expr) -> str:
    """expr as matplotlib mathtext, or as plain text where mathtext cannot parse sympy's LaTeX."""
    from matplotlib.mathtext import MathTextParser

    text = f"${sp.latex(expr)}$"
    try:
        MathTextParser("path").parse(text)
    except ValueError:
        return str(expr)
    return text


#: Wall-clock budget of the symbolic steps of an :func:`analyze` call (no static limit bounds their cost), in seconds.
ANALYSIS_SECONDS = 6.0
#: Budgets of those steps, in seconds (each also capped by what is left of :data:`ANALYSIS_SECONDS`).
STEP_SECONDS = {"certificate": 3.0, "positive-definite": 1.5, "metric-transform": 1.5}
#: Safety net of the feature-map step, far above its normal second or two: its work is fixed by degrees
#: (<= MAX_CANDIDATE_DEGREE), Remez steps (<= 40) and certificate cells, so its answer is the same on every
#: machine; where the net fires the analysis says so ("no feature map: ... took longer than ...").
FEATURE_MAP_SECONDS = 30.0
_WEIERSTRASS = ("f has no Taylor series at 0 ({reason}); leave out --degree for the uniform (Chebyshev / minimax) "
                "candidates, which exist for every continuous f on a bounded range (Weierstrass)")


class _Clock:
    """The analysis budget: ``step(seconds, what)`` runs a step within min(seconds, what is left)."""

    def __init__(self, total: float):
        self.deadline = time.monotonic() + total
        self.total = total

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, seconds: float, what: str):
        left = self.left()
        if left <= 0:
            raise SpecError(f"{what} was skipped: the analysis budget of {self.total:g} s ran out")
        return limited(min(seconds, left), what)


def _certify(f, dim: int, low: bool, bound, n_witness: int, verify: bool, clock: _Clock, progress: bool):
    """(certificate or None, note or None)."""
    from fastattn.proofs_checks import CertificateError, full_rank_witness, low_rank_certificate
    from fastattn.proofs_checks.rank import MAX_BOUND

    if low and bound > MAX_BOUND:
        return None, (f"rank bound {bound} > {MAX_BOUND}: attainment not certified explicitly at d={dim} "
                      "(the bound itself is the multinomial identity)")
    try:
        with clock.step(STEP_SECONDS["certificate"], f"the rank certificate of {f.source!r}"):
            if low:
                cert = low_rank_certificate(f, dim)
            else:
                cert = full_rank_witness(f, n_witness, progress=progress)
            if verify:
                cert.verify()
                cert._verified = True
        return cert, None
    except (CertificateError, SpecError) as exc:
        return None, f"certificate: {exc}"


def _low_rank_verdict(f, low: bool, bound, cert, certify: bool, why_not: str | None) -> tuple[bool | None, str]:
    """low_rank (True / False / None = undecided) and the sentence that says why."""
    if low:
        return True, f"f is a polynomial: rank f(QK^T) <= {bound} by the multinomial identity"
    if cert is not None and getattr(cert, "_verified", False):
        return False, (f"f is not a polynomial ({f.reason}), and the verified certificate gives a non-singular "
                       f"{cert.n}x{cert.n} f(QK^T)")
    if not certify:
        return None, f"f is not a polynomial ({f.reason}), but no full-rank witness was asked for (certify=False)"
    if cert is not None:
        return None, f"f is not a polynomial ({f.reason}); its full-rank witness was built but not verified (verify=False)"
    return None, f"f is not a polynomial ({f.reason}), but no full-rank witness was certified ({why_not})"


def _taylor_plan(f, dim: int, radius: float, R, degree: int, notes: list):
    """(method, degree, feature count, error bound, too_large) of the Taylor map of the asked degree; counted, not built."""
    from fastattn.kernels.poly import MAX_FEATURES

    if f.kind == "not-analytic":
        notes.append("no Taylor map: " + _WEIERSTRASS.format(reason=f.reason))
        return None, None, None, None, False
    if f.radius is not None and f.radius != sp.oo and not radius < float(f.radius):
        notes.append(f"no Taylor map: radius {radius} is not inside the radius of convergence {f.radius}")
        return None, None, None, None, False
    fdeg = int(degree)
    coeffs = f.coefficients(fdeg)
    fdim = sum(symmetric_dim(dim, j) for j, c in enumerate(coeffs) if c != 0)
    return "taylor", fdeg, fdim, float(f.remainder_bound(fdeg, R)), fdim > MAX_FEATURES


def analyze(f, dim: int = 16, *, radius: float = 1.0, eps: float = 1e-3, degree: int | None = None,
            value_dim: int | None = None, seq_lens: Sequence[int] = _DEFAULT_SEQ_LENS, n_witness: int = 16,
            certify: bool = True, verify: bool = True, definiteness: bool = True, params=None,
            progress: bool = False, budget: float = ANALYSIS_SECONDS, seq_len: int = SEQ_LEN,
            max_features: int | None = None, window: int | None = None) -> Analysis:
    """Analyse an entrywise attention function f of the score x = q·k.

    Every verdict comes from a certificate: a step that cannot build one (or runs past its
    budget) reports "undecided" with the reason, never "yes" or "no".

    Parameters
    ----------
    f : str, sympy expression or Spec
        The function, e.g. ``"exp(x)"`` or ``"1 + x + x**2/2"``.
    dim : int
        Head dimension d of q and k.
    radius : float
        Scores are assumed to satisfy |x| ≤ radius: the positivity interval and the
        radius at which the Taylor error bound is stated.
    eps : float
        Error target, sup |f - poly| over |x| <= radius: the top candidate is the one with the fewest
        features that reaches it, else the most accurate within the feature budget.
    degree : int, optional
        Taylor degree to use instead of the candidate search (the candidates are then all of this degree).
    value_dim : int, optional
        Value head dimension for the cost model (defaults to ``dim``).
    seq_lens : sequence of int
        Sequence lengths of the cost table.
    n_witness : int
        Size of the full-rank witness of a non-polynomial f.
    certify, verify : bool
        Build the rank certificate / re-verify it independently.
    definiteness : bool
        Run the positive-definiteness (Schoenberg) and metric-transform (Bernstein) checks.
    params : mapping, optional
        Constants of a string spec, e.g. ``{"tau": 8}``.
    progress : bool
        Show progress bars on the long steps.
    budget : float
        Wall-clock seconds for the symbolic steps (rank certificate, definiteness checks; :data:`STEP_SECONDS`
        per step within it). The feature-map step is bounded by its work, with :data:`FEATURE_MAP_SECONDS`
        as a safety net.
    seq_len : int
        Sequence length T of the recommendation: predicted times are at T, and without ``max_features``
        the feature budget is the most features predicted to beat SDPA at T (:mod:`fastattn.costmodel`).
    max_features : int, optional
        Feature budget of the candidates (at head dim ``dim``).
    window : int, optional
        w >= 0: add the hybrid section (:attr:`Analysis.hybrid`, :func:`fastattn.recommend.hybrid`) for
        ``hybrid_attention(..., window=w)`` at T = ``seq_len``: the window kernel's tiles, FLOPs, bytes and
        floor, the outside sums' cost, and per map (the given polynomial, else each candidate) the certified
        delta = sup |f(x) exp(-x) - 1| on |x| <= radius, an enclosure [lo, hi] of f(x) exp(-x) - 1 there, and
        the output bound kappa(lo, hi) x range(v) against softmax (:func:`fastattn.recommend.output_bound`
        proves it). KernelError for a window that is not an int >= 0 or a polynomial f negative somewhere on
        the reals (hybrid_attention's own check).

    Examples
    --------
    >>> a = analyze("exp(x)", dim=16, n_witness=8)
    >>> a.low_rank, a.rank_bound, a.certificate.check
    (False, None, 'full-rank')
    >>> a.feature_method, a.feature_degree, a.feature_dim    # at 8K no map beats SDPA at d16: the budget of 16K
    ('minimax', 2, 153)
    >>> b = analyze("exp(x)", dim=16, max_features=1000, certify=False, definiteness=False)
    >>> [(c.method, c.degree, c.features) for c in b.candidates][:3]
    [('minimax', 3, 969), ('chebyshev', 3, 969), ('taylor', 3, 969)]
    >>> analyze("exp(x)", dim=16, certify=False).low_rank is None  # "no" needs a certificate
    True
    >>> h = analyze("1 + x + x**2/2", dim=16, certify=False, definiteness=False, window=512).hybrid
    >>> m = h.maps[0]
    >>> m.text, round(m.relative_error, 3), round(m.output_bound, 4), round(m.ms, 2)   # outside + window ms at DV = 16
    ('1 + x + 0.5*x**2', 0.359, 0.0974, 1.87)
    """
    from fastattn.lowrank.numeric import _pos_float
    from fastattn.proofs_checks import Undecided, metric_transform, positive_definite, rank_bound

    f = make_spec(f, params=params) if isinstance(f, str) else make_spec(f)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise FastAttnError(f"dim={dim!r} must be an integer >= 1 (the head dimension)")
    radius = _pos_float(radius, "radius")
    budget = _pos_float(budget, "budget")
    for value, name in ((seq_len, "seq_len"), (max_features, "max_features")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise FastAttnError(f"{name}={value!r} must be an integer >= 1")
    eps = _pos_float(eps, "eps")
    value_dim = dim if value_dim is None else value_dim
    if window is not None:
        recommend.check_hybrid(f, window, seq_len)
    clock = _Clock(budget)
    notes: list[str] = []
    steps = ["class", "certificate", "positivity", "definiteness", "feature map"]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc=f"analyze {f.source}", leave=False)

    def step(name):
        if bar is not None:
            bar.set_postfix_str(name)
            bar.update(1)

    low = f.is_polynomial
    bound = rank_bound(f, dim) if low else None
    step("class")

    cert, why_not = _certify(f, dim, low, bound, n_witness, verify, clock, progress) if certify else (None, None)
    if why_not:
        notes.append(why_not)
    low_rank, low_rank_reason = _low_rank_verdict(f, low, bound, cert, certify, why_not)
    step("certificate")

    R = Fraction(radius).limit_denominator(10**6)
    positivity = f.is_positive((-R, R))
    step("positivity")

    pd = mt = None
    if definiteness:
        checks = []
        for check, fn in (("positive-definite", positive_definite), ("metric-transform", metric_transform)):
            try:
                with clock.step(STEP_SECONDS[check], f"the {check} check of {f.source!r}"):
                    checks.append(fn(f))
            except SpecError as exc:
                checks.append(Undecided(f.source, check, str(exc)))
        pd, mt = checks
    step("definiteness")

    from fastattn.kernels.poly import MAX_FEATURES
    from fastattn.transforms.approx import MAX_DEGREE

    method = fdeg = fdim = err = None
    too_large = False
    fbudget, budget_reason = recommend.feature_budget(dim, value_dim, seq_len, max_features)
    candidates: list[Candidate] = []
    try:
        # not drawn from the clock: a loaded machine must not change which maps are recommended
        with limited(FEATURE_MAP_SECONDS, f"the feature map of {f.source!r}"):
            if degree is not None and not f.is_polynomial:
                # an explicit degree keeps the Taylor map as the top line, counted before anything is built
                method, fdeg, fdim, err, too_large = _taylor_plan(f, dim, radius, R, degree, notes)
                if method is not None and not too_large and 0 <= degree <= MAX_DEGREE:
                    candidates = recommend.candidates(f, dim, value_dim, radius, eps, max(fbudget, fdim), seq_len,
                                             positivity.positive is True, degree, notes)
            else:
                candidates = recommend.candidates(f, dim, value_dim, radius, eps, fbudget, seq_len,
                                         positivity.positive is True, None, notes)
                top = candidates[0]
                method, fdeg, fdim, err = top.method, top.degree, top.features, top.error
                too_large = fdim > MAX_FEATURES
    except (FastAttnError, ArithmeticError, ValueError) as exc:
        # ArithmeticError / ValueError: a certification overflowing on a hostile f; report it, do not crash
        method = fdeg = fdim = err = None
        too_large = False
        candidates = []
        notes.append(f"no feature map: {exc}")
    if f.kind == "not-analytic" and candidates:
        notes.append(f"f has no Taylor series at 0 ({f.reason}): the candidates are uniform (Chebyshev / minimax) "
                     f"approximations on |x| <= {radius:g}, which exist for every continuous f (Weierstrass)")
    if too_large and fdim is not None:
        notes.append(f"feature map too large: {fdim:,} features at head dim {dim} (limit {MAX_FEATURES:,}); not built")
    step("feature map")
    if bar is not None:
        bar.close()

    section = None
    if window is not None:
        section = recommend.hybrid(f, candidates, dim, value_dim, radius, window, seq_len)
    cost_dim = None if too_large else fdim
    cost = CostModel(head_dim=dim, value_dim=value_dim, feature_dim=cost_dim, degree=fdeg or 0, seq_lens=tuple(seq_lens))
    return Analysis(
        spec=f, dim=dim, radius=radius, kind=f.kind, reason=f.reason, low_rank=low_rank, rank_bound=bound,
        certificate=cert, positivity=positivity, positive_definite=pd, metric_transform=mt, feature_method=method,
        feature_degree=fdeg, feature_dim=fdim, error_bound=err, cost=cost, notes=notes,
        low_rank_reason=low_rank_reason, feature_too_large=too_large, candidates=candidates, budget=fbudget,
        budget_reason=budget_reason, seq_len=seq_len, eps=eps, value_dim=value_dim, hybrid=section,
    )
