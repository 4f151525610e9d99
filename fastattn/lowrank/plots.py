"""Plots: singular-value decay of several specs on one axis, rank against n beside the bound.

matplotlib is imported inside the functions (nothing at import), and figures are built
with ``matplotlib.figure.Figure`` so no GUI backend is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["plot_spectra", "plot_rank_profile"]


def _new_axes(ax, size=(6.0, 4.0)):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def plot_spectra(specs: Sequence, n: int = 128, d: int = 8, *, radius: float | None = None, seed: int = 0, ax=None,
                 progress: bool = False):
    """Normalised singular values σ_i/σ_1 of f(QKᵀ) for each spec, log scale; returns the Figure.

    >>> fig = plot_spectra(["exp(x)", "1 + x + x**2/2"], n=32, d=2)
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['exp(x) (entire)', '1 + x + x**2/2 (polynomial)']
    """
    from fastattn.lowrank.numeric import spectrum
    from fastattn.transforms import spec as make_spec

    if isinstance(specs, str):
        specs = [specs]
    fig, ax = _new_axes(ax)
    it = specs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(specs, desc="spectra", leave=False)
    for s in it:
        f = make_spec(s)
        sv = spectrum(f, n, d, radius=radius, seed=seed)
        rel = sv / sv[0] if sv[0] > 0 else sv
        ax.semilogy(np.arange(1, len(rel) + 1), np.maximum(rel, 1e-17), label=f"{f.source} ({f.kind})")
    ax.axhline(np.finfo(np.float64).eps, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("index i")
    ax.set_ylabel("sigma_i / sigma_1")
    ax.set_title(f"singular values of f(QK^T), n={n}, d={d}")
    ax.legend(fontsize="small")
    return fig


def plot_rank_profile(profile, ax=None):
    """ε-rank against n for a :class:`~fastattn.lowrank.numeric.RankProfile`, with the bound and rank = n."""
    fig, ax = _new_axes(ax)
    ax.plot(profile.ns, profile.ranks, "o-", label=f"eps-rank ({profile.eps:g})")
    ax.plot(profile.ns, profile.ns, color="0.6", ls="--", label="rank = n")
    if profile.bound is not None:
        ax.axhline(profile.bound, color="C3", ls=":", label=f"bound {profile.bound}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("n")
    ax.set_ylabel("rank")
    ax.set_title(f"rank of f(QK^T) for {profile.spec}, d={profile.d}")
    ax.legend(fontsize="small")
    return fig
