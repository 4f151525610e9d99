"""lowrank numbers: ranks against the bound, profiles, Taylor ranks, plots."""

import numpy as np
import pytest

from fastattn.errors import FastAttnError
from fastattn.lowrank import eps_rank, kernel_matrix, plot_rank_profile, plot_spectra, random_qk, rank_profile, spectrum, taylor_rank


@pytest.mark.parametrize("text,d,bound", [("x**2", 3, 6), ("1 + x + x**2/2", 3, 10), ("x**3 - x", 2, 6)])
def test_numeric_rank_matches_bound(text, d, bound):
    s = spectrum(text, n=64, d=d)
    assert eps_rank(s, 1e-9) == bound


def test_non_polynomial_rank_grows_with_n():
    p = rank_profile("exp(x)", 2, ns=[8, 16, 32], eps=1e-14, radius=4.0)
    assert p.bound is None
    assert p.ranks[0] < p.ranks[-1]


def test_random_qk_respects_radius():
    Q, K = random_qk(50, 4, radius=3.0, seed=2)
    assert np.abs(Q @ K.T).max() <= 3.0 + 1e-12


def test_kernel_matrix_rejects_bad_shapes_and_infinities():
    with pytest.raises(FastAttnError, match="same number of columns"):
        kernel_matrix("x", np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(FastAttnError, match="not finite"):
        kernel_matrix("1/(1-x)", np.ones((1, 1)), np.ones((1, 1)))


def test_taylor_rank():
    t = taylor_rank("exp(x)", 4, eps=1e-6, radius=0.5)
    assert t.remainder <= 1e-6 * np.exp(-0.5)
    assert t.rank == sum(__import__("math").comb(4 + j - 1, j) for j in range(t.degree + 1))
    with pytest.raises(FastAttnError, match="not analytic"):
        taylor_rank("Abs(x)", 2)
    with pytest.raises(FastAttnError, match="eps"):
        taylor_rank("exp(x)", 2, eps=-1)


def test_plots_return_figures(tmp_path):
    fig = plot_spectra(["exp(x)", "x**2"], n=16, d=2)
    fig.savefig(tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0
    fig = plot_rank_profile(rank_profile("x**2", 2, ns=[4, 8]))
    assert fig.axes[0].get_xlabel() == "n"


def test_taylor_rank_search_has_a_budget(monkeypatch):
    import time

    import fastattn.lowrank.numeric as numeric
    from fastattn.errors import SpecError
    from fastattn.transforms.spec import Spec

    monkeypatch.setattr(numeric, "_TAYLOR_RANK_SECONDS", 0.2)
    slow = Spec.remainder_bound

    def slow_bound(self, p, R, method="best"):
        time.sleep(0.05)
        return slow(self, p, R, method)

    monkeypatch.setattr(Spec, "remainder_bound", slow_bound)
    with pytest.raises(SpecError, match=r"Taylor degree search for '1/\(1-x\)' .* budget of 0.2 s"):
        taylor_rank("1/(1-x)", 2, eps=1e-12, radius=0.9)
