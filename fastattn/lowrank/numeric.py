"""Numbers (float64, not proofs): spectra and ε-ranks of f(s·QKᵀ), rank profiles, Taylor ranks.

These are the quick look; :mod:`fastattn.proofs_checks` has the certified statements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fastattn.errors import FastAttnError
from fastattn.transforms import spec as make_spec, symmetric_dim

__all__ = ["random_qk", "kernel_matrix", "spectrum", "eps_rank", "rank_profile", "RankProfile", "taylor_rank", "TaylorRank"]


def _pos_int(v, name, lo=1, hi=None):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise FastAttnError(f"{name}={v!r} must be an integer {rng}")
    return int(v)


def _pos_float(v, name):
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise FastAttnError(f"{name}={v!r} must be a positive real number") from None
    if not (x > 0 and math.isfinite(x)):
        raise FastAttnError(f"{name}={v!r} must be a positive finite number")
    return x


def _default_radius(f) -> float:
    # keep scores inside the disc of convergence, where f is finite and its series meaningful
    if f.radius is None or f.radius == float("inf") or str(f.radius) == "oo":
        return 1.0
    return min(1.0, 0.5 * float(f.radius))


def random_qk(n: int, d: int, *, radius: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Q, K (n×d, float64) with rows uniform in the ball of radius sqrt(radius), so |q·k| ≤ radius.

    (In the ball, not on the sphere: on the sphere Σ q_i² = 1 is a polynomial relation
    that would lower the rank of degree-2 feature matrices by one.)

    >>> Q, K = random_qk(4, 3, radius=2.0)
    >>> Q.shape, bool(np.abs(Q @ K.T).max() <= 2.0 + 1e-12)
    ((4, 3), True)
    """
    n = _pos_int(n, "n")
    d = _pos_int(d, "d")
    radius = _pos_float(radius, "radius")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        M = rng.standard_normal((n, d))
        M /= np.linalg.norm(M, axis=1, keepdims=True)
        M *= rng.uniform(0.0, 1.0, (n, 1)) ** (1.0 / d)
        out.append(M * math.sqrt(radius))
    return out[0], out[1]


def kernel_matrix(f, Q: np.ndarray, K: np.ndarray, *, scale: float = 1.0) -> np.ndarray:
    """f(scale · Q Kᵀ) in float64.

    >>> kernel_matrix("x**2", np.eye(2), np.eye(2)).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    f = make_spec(f)
    Q = np.asarray(Q, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    if Q.ndim != 2 or K.ndim != 2 or Q.shape[1] != K.shape[1]:
        raise FastAttnError(f"Q and K must be 2-D with the same number of columns, got {Q.shape} and {K.shape}")
    with np.errstate(all="ignore"):  # reported below as one clear error
        M = f(scale * (Q @ K.T))
    if not np.all(np.isfinite(M)):
        raise FastAttnError(f"f = {f.source!r} is not finite on some scores (max |score| {np.abs(scale * Q @ K.T).max():.3g}); "
                            "use a smaller radius or scale")
    return M


def spectrum(f, n: int = 256, d: int = 16, *, Q=None, K=None, scale: float = 1.0, radius: float | None = None,
             seed: int = 0) -> np.ndarray:
    """Singular values (descending) of f(scale·QKᵀ) for given or random Q, K.

    >>> s = spectrum("1 + x + x**2/2", n=64, d=3)
    >>> int((s > 1e-10 * s[0]).sum())
    10
    """
    import scipy.linalg

    f = make_spec(f)
    if Q is None or K is None:
        Q, K = random_qk(n, d, radius=radius if radius is not None else _default_radius(f), seed=seed)
    return scipy.linalg.svdvals(kernel_matrix(f, Q, K, scale=scale))


def eps_rank(values, eps: float = 1e-10) -> int:
    """Number of singular values above eps·σ_max; ``values`` is a spectrum or a matrix.

    >>> eps_rank(np.array([1.0, 1e-3, 1e-14]))
    2
    """
    eps = _pos_float(eps, "eps")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 2:
        import scipy.linalg

        v = scipy.linalg.svdvals(v)
    if v.size == 0 or v.max() == 0:
        return 0
    return int((v > eps * v.max()).sum())


@dataclass
class RankProfile:
    """Numeric ε-rank of f(QKᵀ) as n grows, beside the theoretical bound (None when f is not a polynomial)."""

    spec: str
    d: int
    eps: float
    ns: list = field(default_factory=list)
    ranks: list = field(default_factory=list)
    bound: int | None = None

    def plot(self, ax=None):
        """Rank against n with the bound and the line rank = n; returns the matplotlib Figure."""
        from fastattn.lowrank.plots import plot_rank_profile

        return plot_rank_profile(self, ax=ax)

    def to_dict(self) -> dict:
        return {"spec": self.spec, "d": self.d, "eps": self.eps, "ns": self.ns, "ranks": self.ranks, "bound": self.bound}


def rank_profile(f, d: int, ns: Sequence[int] = (16, 32, 64, 128, 256), *, eps: float = 1e-10, radius: float | None = None,
                 seed: int = 0, progress: bool = False) -> RankProfile:
    """ε-rank of f(QKᵀ) for random n×d Q, K at each n in ``ns``.

    >>> p = rank_profile("x**2", 2, ns=[4, 8, 16])
    >>> p.ranks, p.bound
    ([3, 3, 3], 3)
    """
    from fastattn.proofs_checks.rank import rank_bound

    f = make_spec(f)
    d = _pos_int(d, "d")
    ns = [_pos_int(n, "n", hi=8192) for n in ns]
    it = ns
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(ns, desc=f"rank profile {f.source}", leave=False)
    ranks = [eps_rank(spectrum(f, n, d, radius=radius, seed=seed), eps) for n in it]
    return RankProfile(f.source, d, eps, ns, ranks, rank_bound(f, d))


@dataclass
class TaylorRank:
    """Smallest Taylor degree p whose remainder on |x| ≤ R is ≤ eps·min|f|, and the feature count it costs."""

    spec: str
    d: int
    eps: float
    radius: float
    degree: int
    rank: int
    remainder: float

    def __str__(self) -> str:
        return (f"{self.spec}: degree {self.degree} (rank {self.rank} at d={self.d}) gives remainder <= {self.remainder:.3g} "
                f"on |x| <= {self.radius}, relative error <= {self.eps:g}")


#: Budget (s) of the whole degree search: each remainder bound has its own, the search must stay bounded too.
_TAYLOR_RANK_SECONDS = 6.0


def taylor_rank(f, d: int, *, eps: float = 1e-3, radius: float = 1.0, max_degree: int = 40,
                relative: bool = True) -> TaylorRank:
    """The Taylor-truncation rank needed for error eps on |x| ≤ radius.

    ``relative=True``: relative to min |f| on the interval (estimated on a grid of
    2001 points); ``relative=False``: absolute. The remainder is the certified
    :meth:`Spec.remainder_bound`.

    >>> taylor_rank("exp(x)", 16, eps=1e-2, radius=1.0).degree
    5
    """
    f = make_spec(f)
    d = _pos_int(d, "d")
    eps = _pos_float(eps, "eps")
    radius = _pos_float(radius, "radius")
    if f.kind == "not-analytic":
        raise FastAttnError(f"{f.source!r} is not analytic ({f.reason}): no Taylor truncation converges uniformly")
    grid = np.linspace(-radius, radius, 2001)
    with np.errstate(all="ignore"):  # overflow to inf only makes |f| large, which the minimum ignores
        fmin = float(np.min(np.abs(f(grid)))) if relative else 1.0
    if fmin == 0:
        raise FastAttnError(f"{f.source!r} vanishes on [-{radius}, {radius}]: relative error is undefined; use an absolute "
                            "tolerance with Spec.remainder_bound")
    from fractions import Fraction

    from fastattn.budget import limited

    R = Fraction(radius).limit_denominator(10**6)
    with limited(_TAYLOR_RANK_SECONDS, f"the Taylor degree search for {f.source!r} (degrees 0..{max_degree})"):
        return _taylor_rank(f, d, eps, radius, R, max_degree, fmin)


def _taylor_rank(f, d, eps, radius, R, max_degree, fmin) -> TaylorRank:
    for p in range(max_degree + 1):
        rem = float(f.remainder_bound(p, R))
        if rem <= eps * fmin:
            coeffs = f.coefficients(p)
            rank = sum(symmetric_dim(d, j) for j, c in enumerate(coeffs) if c != 0)
            return TaylorRank(f.source, d, eps, radius, p, rank, rem)
    raise FastAttnError(f"no Taylor degree <= {max_degree} reaches relative error {eps} on |x| <= {radius} for {f.source!r}")
