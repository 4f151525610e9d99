"""Numbers about the rank of f(s·QKᵀ): spectra, ε-ranks, rank profiles, Taylor ranks, plots.

>>> from fastattn.lowrank import rank_profile
>>> rank_profile("1 + x", 4, ns=[8, 16]).ranks
[5, 5]
"""

from fastattn.lowrank.numeric import (
    RankProfile,
    TaylorRank,
    eps_rank,
    kernel_matrix,
    random_qk,
    rank_profile,
    spectrum,
    taylor_rank,
)
from fastattn.lowrank.plots import plot_rank_profile, plot_spectra

__all__ = [
    "random_qk", "kernel_matrix", "spectrum", "eps_rank", "rank_profile", "RankProfile",
    "taylor_rank", "TaylorRank", "plot_spectra", "plot_rank_profile",
]
