"""Predicted forward+backward milliseconds of our kernels and of SDPA, calibrated on measured times.

Card and run: **NVIDIA H200, run v15 of 2026-12-01** (``benchmarks/out/v15.json``; bf16, causal,
B = 2 and H = 16 unless a row says otherwise, median of ``triton.testing.do_bench``). This is not a
FLOP formula: each row type has a few constants, fitted to the measured forward+backward cells of
its rows so that the largest relative error over the cells is smallest (a linear programme):

* ours (``fastattn.kernels.poly``, chunkwise), F features, q/k dim D, v dim DV::

      ms = a0 + B·H·T · ceil64(F) · DV · (a1 + a2 / D) · 1e-9

  a0 is the fixed cost of the launches of one forward+backward (about 1.1 ms: the measured times
  stop falling below 8K tokens); the state work grows with the features, padded to the kernel's
  feature block of 64, times DV; small D runs at a lower rate per feature (the a2 / D term).
* SDPA (cuDNN on Hopper), head dim D::

      ms = s0 + B·H·T² · (s1 + s2·D) · 1e-9

Fit error (max over the cells, |predicted / measured - 1|): :data:`FIT_ERROR` — 0.28 for ours
(32 cells of 7 rows: the d16 rows run slower per feature than the model says, d128 faster), 0.37 for
SDPA (10 cells of 2 rows; d128 at 2K and 4K, launch-bound, pull against the rest; the fit puts s1 at 0,
so below d64 SDPA's time is extrapolated in proportion to D, which likely flatters SDPA). Shapes
not in the table (other D, DV, F, T, batch and heads, another card) are **extrapolations**: the
model knows D ∈ {16, 64, 128}, DV ∈ {64, 128}, F from 64 to 8385, T from 2K to 64K.

>>> round(sdpa_ms(64, 8192), 2), round(ours_ms(2145, 64, 64, 8192), 2)   # measured: 2.32, 7.68
(2.55, 7.9)
>>> max_features(64, 64, 8192)     # the most features that still beat SDPA at 8K, d64
448
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CARD", "RUN", "DATE", "OURS", "SDPA", "FIT_ERROR", "ours_ms", "sdpa_ms", "max_features", "Cell",
           "cells", "fit", "feature_count"]

CARD, RUN, DATE = "NVIDIA H200", "v15", "2026-12-01"
#: The table's default shape: batch and heads of every row without ``b8`` / ``h8`` in its name.
BATCH, HEADS = 2, 16
#: Feature block of the kernel: the state work is done in whole blocks of this many features.
BLOCK_F = 64
#: (a0 ms, a1, a2) of our kernels; refit with :func:`fit` (the test checks these are its result).
OURS = (1.1191, 0.15431, 2.0108)
#: (s0 ms, s1, s2) of SDPA.
SDPA = (0.1618, 0.0, 0.017346)
#: Largest |predicted / measured - 1| over the v15 cells each model was fitted to.
FIT_ERROR = {"ours": 0.28, "sdpa": 0.37}
_RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "out" / "v15.json"


def _check_positive(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")


def ours_ms(F: int, D: int, DV: int | None = None, T: int = 8192, *, B: int = BATCH, H: int = HEADS,
            constants=OURS) -> float:
    """Predicted forward+backward ms of our kernel with F features, q/k dim D, v dim DV (default D), length T.

    >>> ours_ms(153, 16, 64, 8192) < ours_ms(969, 16, 64, 8192)
    True
    """
    DV = D if DV is None else DV
    for v, n in ((F, "F"), (D, "D"), (DV, "DV"), (T, "T"), (B, "B"), (H, "H")):
        _check_positive(v, n)
    a0, a1, a2 = constants
    padded = math.ceil(F / BLOCK_F) * BLOCK_F
    return a0 + B * H * T * padded * DV * (a1 + a2 / D) * 1e-9


def sdpa_ms(D: int, T: int = 8192, *, B: int = BATCH, H: int = HEADS, constants=SDPA) -> float:
    """Predicted forward+backward ms of ``scaled_dot_product_attention`` (causal) at head dim D, length T.

    >>> 30 < sdpa_ms(64, 32768) < 40     # measured: 36.6
    True
    """
    for v, n in ((D, "D"), (T, "T"), (B, "B"), (H, "H")):
        _check_positive(v, n)
    s0, s1, s2 = constants
    return s0 + B * H * T * T * (s1 + s2 * D) * 1e-9


def max_features(D: int, DV: int | None = None, T: int = 8192, *, B: int = BATCH, H: int = HEADS) -> int:
    """The largest F whose predicted time is below SDPA's at the same D and T (0 when none is).

    >>> max_features(4, 4, 8192), max_features(64, 64, 65536)   # d64 at 64K: degree 2 (2145 features) fits
    (0, 6080)
    """
    DV = D if DV is None else DV
    target = sdpa_ms(D, T, B=B, H=H)
    a0, a1, a2 = OURS
    per_feature = B * H * T * DV * (a1 + a2 / D) * 1e-9
    if target <= a0 + per_feature * BLOCK_F:
        return 0
    # whole feature blocks only: the padding makes every F in a block cost the same
    return int((target - a0) / per_feature // BLOCK_F) * BLOCK_F


def feature_count(coefficients, dim: int) -> int:
    """Features of the map of sum c_j x^j at head dim ``dim``: C(dim + j - 1, j) per non-zero c_j.

    >>> feature_count([1, 1, 0.5], 64)
    2145
    """
    return sum(math.comb(dim + j - 1, j) for j, c in enumerate(coefficients) if c != 0)


# -- calibration -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One measured forward+backward time of v15 and the model's prediction of it."""

    row: str
    kind: str  # "ours" or "sdpa"
    T: int
    measured: float
    predicted: float

    @property
    def error(self) -> float:
        return self.predicted / self.measured - 1


def _shapes():
    """(row name, kind, F, D, DV, B, H) of every row of v15 that a model covers."""
    from fastattn.bench.table import ROWS
    from fastattn.transforms import spec

    out = []
    for r in ROWS:
        if r.spec is not None:
            f = spec(r.spec)
            out.append((r.name, "ours", feature_count(f.coefficients(f.degree), r.D), r.D, r.DV, r.B, r.H))
        elif r.name.startswith("sdpa"):
            out.append((r.name, "sdpa", None, r.D, r.DV, r.B, r.H))
    return out


def _load(results):
    if results is None:
        results = json.loads(_RESULTS.read_text())
    return results.get("results", results)


def _regressors(kind, F, D, DV, B, H, T):
    if kind == "ours":
        return [1.0, B * H * T * math.ceil(F / BLOCK_F) * BLOCK_F * DV * 1e-9,
                B * H * T * math.ceil(F / BLOCK_F) * BLOCK_F * DV / D * 1e-9]
    return [1.0, B * H * T * T * 1e-9, B * H * T * T * D * 1e-9]


def _measured(results):
    for name, kind, F, D, DV, B, H in _shapes():
        for T, cell in sorted(results.get(name, {}).items(), key=lambda kv: int(kv[0])):
            if cell.get("fwdbwd"):
                yield name, kind, F, D, DV, B, H, int(T), float(cell["fwdbwd"])


def cells(results=None, *, constants=None) -> list[Cell]:
    """Every v15 forward+backward cell the models cover, with the prediction (``constants``: {kind: tuple}).

    >>> worst = max(abs(c.error) for c in cells() if c.kind == "sdpa")
    >>> worst <= FIT_ERROR["sdpa"]
    True
    """
    constants = constants or {"ours": OURS, "sdpa": SDPA}
    out = []
    for name, kind, F, D, DV, B, H, T, ms in _measured(_load(results)):
        x = _regressors(kind, F, D, DV, B, H, T)
        out.append(Cell(name, kind, T, ms, sum(c * v for c, v in zip(constants[kind], x))))
    return out


def fit(results=None) -> dict:
    """Refit the constants: per kind, the non-negative ones that minimise the largest relative error.

    Returns ``{kind: (constants, max relative error)}``.
    """
    import numpy as np
    from scipy.optimize import linprog

    rows: dict = {"ours": ([], []), "sdpa": ([], [])}
    for name, kind, F, D, DV, B, H, T, ms in _measured(_load(results)):
        rows[kind][0].append(_regressors(kind, F, D, DV, B, H, T))
        rows[kind][1].append(ms)
    out = {}
    for kind, (X, y) in rows.items():
        A = np.asarray(X) / np.asarray(y)[:, None]
        m, n = A.shape
        # minimise s subject to -s <= A c - 1 <= s, c >= 0
        ub = np.block([[A, -np.ones((m, 1))], [-A, -np.ones((m, 1))]])
        res = linprog(np.r_[np.zeros(n), 1.0], A_ub=ub, b_ub=np.r_[np.ones(m), -np.ones(m)],
                      bounds=[(0, None)] * (n + 1))
        out[kind] = (tuple(float(c) for c in res.x[:n]), float(res.x[n]))
    return out
