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
* SDPA (cuDNN on Hopper), q/k dim D, v dim DV (the kernels pad both to max(D, DV))::

      ms = s0 + B·H·T² · (s1 + s2·max(D, DV)) · 1e-9

* the window kernel of ``hybrid_attention`` (:func:`window_cost`): its tiles are counted from the kernel's
  plan (the key blocks that meet the window), with MMA FLOPs, bytes and a floor at v15's ceilings; its
  time is ``c0 + c1 · TFLOPs`` of the visited tiles, :data:`WINDOW` fitted by :func:`fit_window` to the
  three ``window kernel`` rows of **hybrid run v17** (``benchmarks/out/hybrid_v17.json``, H200, its bf16
  check passed): one shape (D 16, DV 64, w 512, B 2, H 16, T 8K to 32K), within
  :data:`WINDOW_FIT_ERROR`; :data:`WINDOW_CALIBRATION` says so in the output.

Fit error (max over the cells, |predicted / measured - 1|): :data:`FIT_ERROR` — 0.28 for ours
(32 cells of 7 rows: the d16 rows run slower per feature than the model says, d128 faster), 0.37 for
SDPA (10 cells of 2 rows; d128 at 2K and 4K, launch-bound, pull against the rest; the fit puts s1 at 0,
so below d64 SDPA's time is extrapolated in proportion to D, which likely flatters SDPA). Shapes
not in the table (other D, DV, F, T, batch and heads, another card) are **extrapolations**: the
model knows D ∈ {16, 64, 128}, DV ∈ {64, 128}, F from 64 to 8385, T from 2K to 64K; the window
kernel's model knows only v17's shape, so any other D, DV, w or T beyond 8K-32K is extrapolated.

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
           "cells", "fit", "feature_count", "RATE", "BANDWIDTH", "WINDOW", "WINDOW_CALIBRATION", "WindowCost",
           "WINDOW_FIT_ERROR", "window_cost", "window_ms", "fit_window", "FLASH", "FLASH_FIT_ERROR", "flash_ms",
           "fit_flash", "quadratic_wins", "layer_ms", "GATED_FEATURE_FACTOR"]

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
#: The ceilings v15 measured at the start of its run (``meta`` of benchmarks/out/v15.json): bf16 matmul FLOP/s
#: and device-copy bytes/s. The window kernel's floor divides by them.
RATE, BANDWIDTH = 685e12, 4.22e12
#: (c0 ms, c1 ms per TFLOP of the visited tiles) of the window kernel: :func:`fit_window` of hybrid run v17
#: (0.22378, 6.9914) to 4 digits; the test refits them from the file.
WINDOW = (0.2238, 6.991)
#: Largest |predicted / measured - 1| of :data:`WINDOW` over v17's three window-kernel rows (2.3 %).
WINDOW_FIT_ERROR = 0.0232
#: Where :data:`WINDOW` comes from, as the output says it.
WINDOW_CALIBRATION = (
    "calibrated on NVIDIA H200, 2026-12-01: `python benchmarks/hybrid_bench.py --T 8192 16384 32768 --budget-s 150 "
    "--rep 30 --warmup 10 --json benchmarks/out/hybrid_v17.json` (bf16 check at T = 4096 passed); fit_window on its "
    "3 'window kernel' rows (D 16, DV 64, w 512, B 2, H 16, T 8K-32K), fit error 2.3 %; other shapes extrapolated")
_RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "out" / "v15.json"
_WINDOW_RESULTS = _RESULTS.with_name("hybrid_v17.json")
_FLASH_RESULTS = _RESULTS.with_name("poly_flash_v19.json")
#: (f0 ms, f1 ms per TFLOP of :func:`fastattn.kernels.poly_flash.cost`) of the quadratic flash kernels, fitted by
#: :func:`fit_flash` to the flash cells of **run v19** (``benchmarks/out/poly_flash_v19.json``, H200, bf16, causal,
#: d64 B2 H16 and d128 B2 H8, T 4K-32K; its bf16 checks passed); the test checks these are its result.
FLASH = (0.5057, 1.7350)
#: Largest |predicted / measured - 1| over those cells (T = 2K, launch-bound, is left out of the fit).
FLASH_FIT_ERROR = 0.155
#: The gated feature kernels (:mod:`fastattn.kernels.gated`) against the ungated ones for a large map: run v19 (H200,
#: bf16, ``benchmarks/gated_check.py``) measured 99.2 ms fwd+bwd for 1 + x + x**2/2 d64 B2 H8 T4096, where
#: :func:`ours_ms` predicts 2.84 for the ungated kernels. One cell: they materialise phi and psi (T x 2,145 each) in
#: HBM, so the factor grows with F; the flash kernels' own gated cost is taken as their ungated one.
GATED_FEATURE_FACTOR = 35.0


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


def sdpa_ms(D: int, T: int = 8192, *, DV: int | None = None, B: int = BATCH, H: int = HEADS,
            constants=SDPA) -> float:
    """Predicted forward+backward ms of ``scaled_dot_product_attention`` (causal) at q/k dim D, v dim DV, length T.

    cuDNN / flash kernels pad q, k and v to one head dim, max(D, DV): SDPA is costed there.

    >>> 30 < sdpa_ms(64, 32768) < 40     # measured: 36.6
    True
    >>> round(sdpa_ms(16, 8192, DV=64), 2)   # hybrid run v17 measured 2.29 at q/k d16, v d64
    2.55
    """
    DV = D if DV is None else DV
    for v, n in ((D, "D"), (DV, "DV"), (T, "T"), (B, "B"), (H, "H")):
        _check_positive(v, n)
    s0, s1, s2 = constants
    return s0 + B * H * T * T * (s1 + s2 * max(D, DV)) * 1e-9


def max_features(D: int, DV: int | None = None, T: int = 8192, *, B: int = BATCH, H: int = HEADS) -> int:
    """The largest F whose predicted time is below SDPA's at the same D and T (0 when none is).

    >>> max_features(4, 4, 8192), max_features(64, 64, 65536)   # d64 at 64K: degree 2 (2145 features) fits
    (0, 6080)
    """
    DV = D if DV is None else DV
    target = sdpa_ms(D, T, DV=DV, B=B, H=H)
    a0, a1, a2 = OURS
    per_feature = B * H * T * DV * (a1 + a2 / D) * 1e-9
    if target <= a0 + per_feature * BLOCK_F:
        return 0
    # whole feature blocks only: the padding makes every F in a block cost the same
    return int((target - a0) / per_feature // BLOCK_F) * BLOCK_F


def flash_ms(D: int, DV: int | None = None, T: int = 8192, *, B: int = BATCH, H: int = HEADS, causal: bool = True,
             constants=FLASH) -> float:
    """Predicted forward+backward ms of the quadratic flash kernels (:mod:`fastattn.kernels.poly_flash`): their
    matmul FLOPs times a fitted rate, plus a fixed cost. f's degree does not enter (Horner is not the bottleneck).

    >>> 8 < flash_ms(64, 64, 16384) < 12        # run v19 measured 10.36 (1 + x + x**2/2, B2 H16)
    True
    """
    from fastattn.kernels.poly_flash import cost

    DV = D if DV is None else DV
    for v, n in ((D, "D"), (DV, "DV"), (T, "T"), (B, "B"), (H, "H")):
        _check_positive(v, n)
    f0, f1 = constants
    return f0 + f1 * B * H * cost(T, D, DV, causal)["fwdbwd"] * 1e-12


def quadratic_wins(F: int, D: int, DV: int | None = None, T: int = 8192, *, B: int = BATCH, H: int = HEADS,
                   gated: bool = False) -> bool:
    """Whether the quadratic flash kernels are predicted faster than the chunkwise feature kernels (F features),
    causal, forward+backward. Run v19 measured the crossover of degree 2 near 21K tokens at d64 and beyond
    32K at d128; the models put it at about 30K and 110K. ``gated``: against the gated feature kernels, taken as
    :data:`GATED_FEATURE_FACTOR` times the ungated ones (the crossover moves to ~700K tokens at d64).

    >>> quadratic_wins(2145, 64, 65, 8192), quadratic_wins(2145, 64, 65, 65536), quadratic_wins(153, 16, 65, 32768)
    (True, False, False)
    >>> quadratic_wins(8385, 128, 129, 65536), quadratic_wins(2145, 64, 65, 65536, gated=True)
    (True, True)
    """
    DV = D if DV is None else DV
    feature = ours_ms(F, D, DV, T, B=B, H=H) * (GATED_FEATURE_FACTOR if gated else 1.0)
    return flash_ms(D, DV, T, B=B, H=H) < feature


def layer_ms(F: int, D: int, DV: int | None = None, T: int = 8192, *, B: int = BATCH, H: int = HEADS,
             degree: int | None = None) -> float:
    """Predicted forward+backward ms of what ``poly_attention`` runs on a GPU for this map: the faster of the feature
    kernels and, for a map of >= ``QUADRATIC_MIN_FEATURES`` features, head dims <= 128 and degree <= 8, the quadratic
    flash kernels (the route of :func:`fastattn.kernels.poly.quadratic_route`).

    >>> round(layer_ms(2145, 64, 64, 8192), 2), round(ours_ms(2145, 64, 64, 8192), 2)
    (2.65, 7.9)
    """
    from fastattn.kernels.poly import quadratic_serves

    DV = D if DV is None else DV
    ms = ours_ms(F, D, DV, T, B=B, H=H)
    if quadratic_serves(F, D, DV, degree):
        ms = min(ms, flash_ms(D, DV, T, B=B, H=H))
    return ms


def fit_flash(results=None) -> tuple[tuple, float]:
    """Refit :data:`FLASH` on a ``benchmarks/poly_flash_check.py --json`` run: (constants, max relative error) over
    its flash cells at T >= 4096."""
    from fastattn.kernels.poly_flash import cost

    results = json.loads(_FLASH_RESULTS.read_text()) if results is None else results
    shapes = {"1+x+x²/2 d64": (2, 16, 64), "x² d64": (2, 16, 64), "1+x+x²/2 d128 h8": (2, 8, 128)}
    X, y = [], []
    for row in results["rows"]:
        if row["T"] >= 4096:
            B, H, D = shapes[row["row"]]
            X.append([1.0, B * H * cost(row["T"], D, D)["fwdbwd"] * 1e-12])
            y.append(float(row["flash"][1]))
    return _relative_fit(X, y)


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
    rows: dict = {"ours": ([], []), "sdpa": ([], [])}
    for name, kind, F, D, DV, B, H, T, ms in _measured(_load(results)):
        rows[kind][0].append(_regressors(kind, F, D, DV, B, H, T))
        rows[kind][1].append(ms)
    return {kind: _relative_fit(X, y) for kind, (X, y) in rows.items()}


def _relative_fit(X, y) -> tuple[tuple, float]:
    """(c >= 0 minimising max_i |X_i c / y_i - 1|, that maximum): a linear programme."""
    import numpy as np
    from scipy.optimize import linprog

    A = np.asarray(X, dtype=float) / np.asarray(y, dtype=float)[:, None]
    m, n = A.shape
    # minimise s subject to -s <= A c - 1 <= s, c >= 0
    ub = np.block([[A, -np.ones((m, 1))], [-A, -np.ones((m, 1))]])
    res = linprog(np.r_[np.zeros(n), 1.0], A_ub=ub, b_ub=np.r_[np.ones(m), -np.ones(m)],
                  bounds=[(0, None)] * (n + 1))
    return tuple(float(c) for c in res.x[:n]), float(res.x[n])


# -- the window kernel of hybrid_attention -----------------------------------------------------------------------
#: Longest sequence :func:`window_cost` enumerates (its tile counts are per block: 2^27 tokens is 1M blocks of 128).
MAX_WINDOW_SEQ_LEN = 1 << 27


@dataclass(frozen=True)
class WindowCost:
    """What :mod:`fastattn.kernels.window.flash` does for B·H sequences of T tokens at window w, from its tiling.

    Per sequence, the forward visits ``tiles[0]`` tiles of ``block_m x block_n`` (query block x key block: for
    each query block, the key blocks from the one holding its earliest window key to the diagonal, the kernel's
    ``lo .. hi``), the dq pass ``tiles[1]`` at the backward blocks (the same walk) and the dk-dv pass ``tiles[2]``
    (for each key block, the query blocks that hold it in their window). ``pairs`` is the (i, j) pairs inside
    the window, the useful part of those tiles. ``flops``: the MMA work of the visited tiles over the padded
    head dims (masked pairs included; the exp2 calls are not counted), forward and backward:
    2(D + DV), 2(2D + DV) and 2(2D + 2DV) per tile pair. ``tile_bytes``: what the tiles load and store
    (before any cache); ``min_bytes``: each tensor read or written once. ``floor_ms`` = max(flops / RATE,
    min_bytes / BANDWIDTH) of v15's ceilings, a lower bound on this kernel's fwd+bwd time; ``ms`` the
    prediction of :data:`WINDOW` (``calibration`` says where it comes from).
    """

    T: int
    window: int
    D: int
    DV: int
    B: int
    H: int
    dtype: str
    blocks: tuple  # (block_m, block_n, bwd_block_m, bwd_block_n) of the kernel's plan
    tiles: tuple  # (forward, dq, dk-dv) tiles per sequence
    pairs: int
    flops: tuple  # (forward, backward), all B·H sequences
    tile_bytes: tuple  # (forward, backward)
    min_bytes: float
    floor_ms: float
    ms: float
    calibration: str

    def to_dict(self) -> dict:
        bm, bn, bbm, bbn = self.blocks
        return {"T": self.T, "window": self.window, "D": self.D, "DV": self.DV, "B": self.B, "H": self.H,
                "dtype": self.dtype, "blocks": {"block_m": bm, "block_n": bn, "bwd_block_m": bbm, "bwd_block_n": bbn},
                "tiles_per_sequence": {"forward": self.tiles[0], "dq": self.tiles[1], "dkdv": self.tiles[2]},
                "window_pairs_per_sequence": self.pairs, "flops": {"forward": self.flops[0], "backward": self.flops[1]},
                "tile_bytes": {"forward": self.tile_bytes[0], "backward": self.tile_bytes[1]},
                "min_bytes": self.min_bytes, "floor_ms": self.floor_ms, "predicted_ms": self.ms,
                "calibration": self.calibration}


def _query_walk(T: int, window: int, block_m: int, block_n: int):
    """[query blocks] key tiles each query block visits: window_fwd_kernel's (and window_dq_kernel's) lo .. hi."""
    import numpy as np

    m0 = np.arange(0, T, block_m, dtype=np.int64)
    lo = np.maximum(m0 - window + 1, 0) // block_n * block_n
    hi = np.minimum(m0 + block_m, T)
    return -(-(hi - lo) // block_n)


def _key_walk(T: int, window: int, block_m: int, block_n: int):
    """[key blocks] query tiles each key block visits: window_dkdv_kernel's lo .. hi."""
    import numpy as np

    n0 = np.arange(0, T, block_n, dtype=np.int64)
    lo = n0 // block_m * block_m
    hi = np.minimum(n0 + block_n - 1 + window, T)
    return -(-(hi - lo) // block_m)


def window_cost(T: int, window: int, D: int, DV: int | None = None, *, B: int = BATCH, H: int = HEADS,
                dtype: str = "bfloat16") -> WindowCost:
    """The :class:`WindowCost` of the window kernel at length T, window w (1 <= w; w >= T is causal softmax).

    >>> c = window_cost(8192, 512, 16, 64)
    >>> c.blocks, c.tiles                          # bf16 plan: 128 x 64 forward, 64 x 64 backward
    ((128, 64, 64, 64), (620, 1116, 1116))
    >>> round(c.ms, 3), round(c.floor_ms, 3), c.calibration.startswith("calibrated")   # v17 measured 0.951 ms
    (0.929, 0.147, True)
    """
    import torch

    from fastattn.kernels.window.flash import plan

    DV = D if DV is None else DV
    for v, n in ((T, "T"), (window, "window"), (D, "D"), (DV, "DV"), (B, "B"), (H, "H")):
        _check_positive(v, n)
    if T > MAX_WINDOW_SEQ_LEN:
        raise ValueError(f"T={T:,} is above {MAX_WINDOW_SEQ_LEN:,}, the longest sequence whose window tiles are "
                         "counted; pass a shorter sequence length")
    dtypes = {"bfloat16": (torch.bfloat16, 2), "float16": (torch.float16, 2), "float32": (torch.float32, 4)}
    if dtype not in dtypes:
        raise ValueError(f"dtype={dtype!r}; use one of {sorted(dtypes)} (the window kernel's input dtypes)")
    torch_dtype, b = dtypes[dtype]
    w = min(window, T)
    pl = plan(D, DV, torch_dtype)
    BD, BDV = max(16, 1 << (D - 1).bit_length()), max(16, 1 << (DV - 1).bit_length())
    fwd, dq, dkdv = (_query_walk(T, w, pl.block_m, pl.block_n), _query_walk(T, w, pl.bwd_block_m, pl.bwd_block_n),
                     _key_walk(T, w, pl.bwd_block_m, pl.bwd_block_n))
    tiles = (int(fwd.sum()), int(dq.sum()), int(dkdv.sum()))
    pairs = T * (T + 1) // 2 if w >= T else w * (w + 1) // 2 + (T - w) * w
    BH = B * H
    area, barea = pl.block_m * pl.block_n, pl.bwd_block_m * pl.bwd_block_n
    flops = (BH * tiles[0] * area * 2 * (BD + BDV),
             BH * (tiles[1] * barea * 2 * (2 * BD + BDV) + tiles[2] * barea * 2 * (2 * BD + 2 * BDV)))
    outside = w < T  # the outside sums (n, z) come in (and their gradient goes out) only when some key left the window
    rows_f, rows_q, rows_k = len(fwd) * pl.block_m, len(dq) * pl.bwd_block_m, len(dkdv) * pl.bwd_block_n
    bytes_f = (rows_f * ((D + DV) * b + 4 + outside * (DV + 1) * b) + tiles[0] * pl.block_n * (D + DV) * b)
    bytes_b = (T * (2 * DV * b + 4)  # delta = rowsum(o * do) on the host
               + rows_q * ((2 * D + DV) * b + 8 + outside * (DV + 2) * b) + tiles[1] * pl.bwd_block_n * (2 * D + DV) * b
               + rows_k * 2 * (D + DV) * b + tiles[2] * pl.bwd_block_m * ((D + DV) * b + 8))
    out_rows = (T - w) * (DV + 1) * b
    min_bytes = BH * ((2 * D + 2 * DV) * T * b + 4 * T + out_rows  # forward: q, k, v, o, lse, outside
                      + (4 * D + 4 * DV) * T * b + 8 * T + 2 * out_rows)  # backward: q, k, v, o, do, dq, dk, dv, dout
    floor = max(sum(flops) / RATE, min_bytes / BANDWIDTH) * 1e3
    c0, c1 = WINDOW
    return WindowCost(T=T, window=w, D=D, DV=DV, B=B, H=H, dtype=dtype,
                      blocks=(pl.block_m, pl.block_n, pl.bwd_block_m, pl.bwd_block_n), tiles=tiles, pairs=pairs,
                      flops=tuple(float(f) for f in flops), tile_bytes=(float(BH * bytes_f), float(BH * bytes_b)),
                      min_bytes=float(min_bytes), floor_ms=floor, ms=c0 + c1 * sum(flops) * 1e-12,
                      calibration=WINDOW_CALIBRATION)


def window_ms(T: int, window: int, D: int, DV: int | None = None, *, B: int = BATCH, H: int = HEADS,
              dtype: str = "bfloat16") -> float:
    """Predicted fwd+bwd ms of the window kernel, ``c0 + c1 · TFLOPs of its visited tiles`` (:data:`WINDOW`).

    >>> round(window_ms(32768, 512, 16, 64), 2)     # v17 measured 3.19 (see WINDOW_CALIBRATION)
    3.11
    """
    return window_cost(T, window, D, DV, B=B, H=H, dtype=dtype).ms


def fit_window(runs) -> tuple[tuple, float]:
    """(c0, c1) of :data:`WINDOW` and the largest relative error, from ``benchmarks/hybrid_bench.py --json`` runs.

    Each run must carry its correctness check and every check must have passed: a time of a wrong result
    calibrates nothing. The rows used are the ``window kernel`` ones (the kernel alone, the outside sums given).

    >>> run = {"dtype": "bfloat16", "B": 2, "H": 16, "D": 16, "DV": 64, "window": 512, "checks": [{"ok": True}],
    ...        "rows": [{"T": T, "method": "  window kernel", "fwd_bwd_ms": 0.1 + 2e-4 * T} for T in (8192, 16384)]}
    >>> constants, error = fit_window([run])
    >>> error < 1e-6
    True
    """
    X, y = [], []
    for run in runs:
        checks = run.get("checks") or []
        if not checks or not all(c.get("ok") is True for c in checks):
            raise ValueError("fit_window: a run without a passing correctness check ('checks' with ok true) cannot "
                             "calibrate the window kernel; rerun benchmarks/hybrid_bench.py with its check")
        for r in run.get("rows", []):
            if r.get("method", "").strip() == "window kernel" and r.get("fwd_bwd_ms"):
                c = window_cost(int(r["T"]), int(run["window"]), int(run["D"]), int(run["DV"]), B=int(run["B"]),
                                H=int(run["H"]), dtype=run.get("dtype", "bfloat16"))
                X.append([1.0, sum(c.flops) * 1e-12])
                y.append(float(r["fwd_bwd_ms"]))
    if len(y) < 2:
        raise ValueError(f"fit_window: {len(y)} 'window kernel' row(s) found; two constants need at least 2")
    return _relative_fit(X, y)
