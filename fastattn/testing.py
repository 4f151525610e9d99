"""Hypothesis strategies and assertions for rank properties, for use in your own test suite.

Paste this into a test file::

    from hypothesis import given, settings
    from fastattn.testing import specs, assert_low_rank, assert_full_rank_witness

    @settings(max_examples=10, deadline=None)
    @given(f=specs(kinds=("polynomial",), max_degree=3))
    def test_polynomials_are_low_rank(f):
        assert_low_rank(f, d=2)          # exact certificate, re-verified, plus a float64 check

    @settings(max_examples=5, deadline=None)
    @given(f=specs(kinds=("entire", "not-analytic")))
    def test_others_are_full_rank(f):
        assert_full_rank_witness(f, n=8)

Profiles: call :func:`load_profile` in ``conftest.py``; ``HYPOTHESIS_PROFILE=ci|dev|thorough``
picks one (``dev`` by default: few examples, no deadline).

>>> assert_low_rank("1 + x**2", d=2)
>>> assert_full_rank_witness("tanh(x)", n=6)
"""

from __future__ import annotations

import os

import numpy as np

__all__ = [
    "specs", "qk_matrices", "feature_maps",
    "assert_low_rank", "assert_full_rank_witness", "assert_feature_map_exact", "load_profile",
    "ENTIRE_SPECS", "ANALYTIC_SPECS", "NON_ANALYTIC_SPECS",
]

KINDS = ("polynomial", "entire", "analytic", "not-analytic")
#: Non-polynomial examples drawn by :func:`specs` (each is f(x) of the score x).
ENTIRE_SPECS = ("exp(x)", "exp(x/2)", "cosh(x)", "1 + sin(x)", "erf(x)", "exp(-x**2)", "x*exp(x)", "sinh(x)")
ANALYTIC_SPECS = ("tanh(x)", "sigmoid(x)", "1/(1 - x/2)", "1/(1 + x**2)", "log(1 + x/4)", "atan(x)")
NON_ANALYTIC_SPECS = ("Abs(x)", "relu(x)", "Heaviside(x)", "exp(-Abs(x))", "Max(x, 0)**2", "sign(x)", "sqrt(Abs(x))")


def load_profile(default: str = "dev") -> str:
    """Register the ``ci``, ``dev`` and ``thorough`` profiles and load ``$HYPOTHESIS_PROFILE`` (or ``default``)."""
    from hypothesis import HealthCheck, settings

    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("ci", max_examples=8, derandomize=True, **common)
    settings.register_profile("dev", max_examples=15, **common)
    settings.register_profile("thorough", max_examples=200, **common)
    name = os.environ.get("HYPOTHESIS_PROFILE", default)
    if name not in ("ci", "dev", "thorough"):
        raise ValueError(f"HYPOTHESIS_PROFILE={name!r}; choose 'ci', 'dev' or 'thorough'")
    settings.load_profile(name)
    return name


def _check_int(value, name, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}={value!r} must be an integer {bound}")
    return int(value)


def _int_or_strategy(value, name, lo, hi):
    from hypothesis import strategies as st
    from hypothesis.strategies import SearchStrategy

    if isinstance(value, SearchStrategy):
        return value
    return st.just(_check_int(value, name, lo, hi))


# -- strategies ---------------------------------------------------------------------------------
def specs(*, kinds=KINDS, max_degree: int = 4, max_coefficient: int = 4):
    """A strategy of :class:`~fastattn.transforms.Spec`.

    Parameters
    ----------
    kinds : sequence of str
        Any of ``"polynomial"``, ``"entire"``, ``"analytic"``, ``"not-analytic"``.
    max_degree : int
        Largest degree of a drawn polynomial (1..8).
    max_coefficient : int
        Polynomial coefficients are p/q with |p| <= max_coefficient and 1 <= q <= 4.

    Examples
    --------
    >>> from hypothesis import given
    >>> specs(kinds=("polynomial",), max_degree=2).example().kind  # doctest: +SKIP
    'polynomial'
    """
    from hypothesis import strategies as st

    from fastattn.transforms import spec

    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds={kinds!r}: each must be one of {KINDS}")
    max_degree = _check_int(max_degree, "max_degree", 1, 8)
    max_coefficient = _check_int(max_coefficient, "max_coefficient", 1, 1000)
    parts = []
    if "polynomial" in kinds:
        coef = st.builds(lambda p, q: f"({p}/{q})", st.integers(-max_coefficient, max_coefficient), st.integers(1, 4))

        @st.composite
        def poly(draw):
            deg = draw(st.integers(1, max_degree))
            cs = draw(st.lists(coef, min_size=deg + 1, max_size=deg + 1))
            lead = draw(st.integers(1, max_coefficient)) * draw(st.sampled_from([1, -1]))
            cs[deg] = f"({lead})"
            return spec(" + ".join(f"{c}*x**{j}" for j, c in enumerate(cs)))

        parts.append(poly())
    for kind, pool in (("entire", ENTIRE_SPECS), ("analytic", ANALYTIC_SPECS), ("not-analytic", NON_ANALYTIC_SPECS)):
        if kind in kinds:
            parts.append(st.sampled_from(pool).map(spec))
    return st.one_of(*parts)


def qk_matrices(*, n=8, d=2, elements: str = "integers", max_abs: int = 3):
    """A strategy of (Q, K): two n×d float64 arrays.

    Parameters
    ----------
    n, d : int or strategy of int
        Rows (1..4096) and columns (1..256).
    elements : {"integers", "floats"}
        Small integers (exact scores; good for rank) or finite floats in [-max_abs, max_abs].
    max_abs : int
        Bound on |entries| (1..1000).
    """
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    if elements not in ("integers", "floats"):
        raise ValueError(f"elements={elements!r}; choose 'integers' or 'floats'")
    max_abs = _check_int(max_abs, "max_abs", 1, 1000)
    ns = _int_or_strategy(n, "n", 1, 4096)
    ds = _int_or_strategy(d, "d", 1, 256)
    if elements == "integers":
        elem = st.integers(-max_abs, max_abs).map(float)
    else:
        elem = st.floats(-max_abs, max_abs, allow_nan=False, allow_infinity=False, width=64)

    @st.composite
    def pair(draw):
        nn, dd = draw(ns), draw(ds)
        Q = draw(hnp.arrays(np.float64, (nn, dd), elements=elem))
        K = draw(hnp.arrays(np.float64, (nn, dd), elements=elem))
        return Q, K

    return pair()


def feature_maps(*, dims=(1, 2, 3, 4), max_degree: int = 3, methods=("exact", "taylor")):
    """A strategy of :class:`~fastattn.transforms.FeatureMap` (exact polynomial maps and Taylor truncations).

    Parameters
    ----------
    dims : sequence of int
        Head dimensions to draw from (each 1..64).
    max_degree : int
        Largest polynomial / truncation degree (1..6).
    methods : sequence of str
        ``"exact"`` (polynomial specs) and/or ``"taylor"`` (entire and analytic specs).
    """
    from hypothesis import strategies as st

    from fastattn.transforms import feature_map

    dims = tuple(dims)
    for v in dims:
        _check_int(v, "dims entry", 1, 64)
    if not dims:
        raise ValueError("dims must not be empty")
    max_degree = _check_int(max_degree, "max_degree", 1, 6)
    methods = tuple(methods)
    bad = [m for m in methods if m not in ("exact", "taylor")]
    if bad or not methods:
        raise ValueError(f"methods={methods!r}: each must be 'exact' or 'taylor'")
    parts = []
    if "exact" in methods:
        parts.append(st.builds(lambda f, d: feature_map(f, d), specs(kinds=("polynomial",), max_degree=max_degree),
                               st.sampled_from(dims)))
    if "taylor" in methods:
        pool = ("exp(x)", "cosh(x)", "sigmoid(x)", "exp(x/2)", "1/(1 - x/2)")
        parts.append(st.builds(lambda f, d, p: feature_map(f, d, method="taylor", degree=p), st.sampled_from(pool),
                               st.sampled_from(dims), st.integers(1, max_degree)))
    return st.one_of(*parts)


# -- assertions ---------------------------------------------------------------------------------
def assert_low_rank(f, d: int, *, n: int | None = None, eps: float = 1e-9, seed: int = 0) -> None:
    """Assert f(QKᵀ) has rank ≤ Σ_{j∈S} C(d+j-1, j) — exactly (certificate, re-verified) and in float64.

    Fails with the numbers when f is not a polynomial, the certificate does not verify,
    or random n×d Q, K give a larger numeric rank.
    """
    from fastattn.errors import SpecError
    from fastattn.lowrank import eps_rank, kernel_matrix
    from fastattn.proofs_checks import CertificateError, low_rank_certificate, rank_bound
    from fastattn.transforms import spec

    f = spec(f)
    if not f.is_polynomial:
        raise AssertionError(f"{f.source!r} is {f.kind} ({f.reason}), not a polynomial: f(QK^T) is not low rank "
                             "(full_rank_witness(f, n) gives Q, K with full rank n for every n)")
    bound = rank_bound(f, d)
    try:
        cert = low_rank_certificate(f, d, seed=seed)
        cert.verify()
    except (CertificateError, SpecError) as exc:
        raise AssertionError(f"low-rank certificate for {f.source!r} at d={d} failed: {exc}") from None
    if cert.bound != bound:
        raise AssertionError(f"certificate bound {cert.bound} != formula bound {bound} for {f.source!r} at d={d}")
    n = n or min(2 * bound + 4, 512)
    rng = np.random.default_rng(seed)
    Q = rng.uniform(-1, 1, (n, d))
    K = rng.uniform(-1, 1, (n, d))
    r = eps_rank(kernel_matrix(f, Q, K), eps)
    if r > bound:
        raise AssertionError(f"float64 eps-rank of f(QK^T) for {f.source!r} is {r} > bound {bound} (n={n}, d={d}, eps={eps})")


def assert_full_rank_witness(f, n: int) -> None:
    """Assert a certified Q, K exists with f(QKᵀ) of full rank n (built, then re-verified independently)."""
    from fastattn.errors import SpecError
    from fastattn.proofs_checks import CertificateError, full_rank_witness
    from fastattn.transforms import spec

    f = spec(f)
    try:
        cert = full_rank_witness(f, n)
        cert.verify()
    except (CertificateError, SpecError) as exc:  # SpecError: the search or verify ran past its budget
        raise AssertionError(f"no verified {n}x{n} full-rank witness for {f.source!r}: {exc}") from None
    if cert.n != n:
        raise AssertionError(f"witness has size {cert.n}, asked for {n}")


def assert_feature_map_exact(phi, f=None, *, n: int = 8, rtol: float = 1e-10, atol: float = 1e-12, seed: int = 0) -> None:
    """Assert phi(q)·psi(k) == f(scale·q·k): the map claims exactness, its coefficients match f, and float64 agrees.

    Parameters
    ----------
    phi : FeatureMap
    f : spec, optional
        Defaults to ``phi.spec``.
    n : int
        Number of random q and k (in [-1, 1]^dim) for the float64 comparison.
    """
    import torch

    from fastattn.transforms import spec

    f = spec(f) if f is not None else phi.spec
    if f is None:
        raise ValueError("pass f: the feature map carries no spec")
    if not getattr(phi, "exact", False):
        bound = phi.error_bound(1) if hasattr(phi, "error_bound") else None
        raise AssertionError(f"{phi!r} is not exact (method {phi.method!r}; error bound at |score| <= 1: {bound})")
    coeffs = getattr(phi, "coefficients", None)
    if coeffs is not None and f.is_polynomial:
        want = {j: c for j, c in enumerate(f.coefficients()) if c != 0}
        got = {j: c for j, c in coeffs.items() if c != 0}
        if want != got:
            raise AssertionError(f"feature map coefficients {got} differ from those of {f.source!r}: {want}")
    rng = np.random.default_rng(seed)
    Q = rng.uniform(-1, 1, (n, phi.dim))
    K = rng.uniform(-1, 1, (n, phi.dim))
    got = phi.kernel(torch.from_numpy(Q), torch.from_numpy(K)).numpy()
    want = f(phi.scale * (Q @ K.T))
    err = np.abs(got - want)
    tol = atol + rtol * np.abs(want)
    if np.any(err > tol):
        i, j = np.unravel_index(np.argmax(err - tol), err.shape)
        raise AssertionError(
            f"phi(q).psi(k) != f(scale q.k) for {f.source!r}: max abs error {err.max():.3g} at ({i}, {j}) "
            f"(got {got[i, j]!r}, want {want[i, j]!r}, tolerance {tol[i, j]:.3g})"
        )
