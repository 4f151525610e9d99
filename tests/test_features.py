"""Feature maps: exactness for polynomials, proven bounds for truncations, dims, bad arguments."""


import pytest
import sympy as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastattn
from fastattn import FeatureMapError
from fastattn.transforms import gaussian_feature_map, symmetric_dim
from fastattn.transforms.parse import X

coeff = st.fractions(min_value=-3, max_value=3, max_denominator=8)


@st.composite
def polynomials(draw):
    degree = draw(st.integers(0, 4))
    cs = draw(st.lists(coeff, min_size=degree + 1, max_size=degree + 1))
    expr = sum((sp.Rational(c.numerator, c.denominator) * X**k for k, c in enumerate(cs)), sp.Integer(0))
    if expr == 0:
        expr = sp.Integer(1)
    return fastattn.spec(expr)


@given(f=polynomials(), d=st.integers(1, 5), scale=st.floats(0.1, 2.0), seed=st.integers(0, 2**16))
def test_polynomial_map_is_exact_in_float64(f, d, scale, seed):
    fm = fastattn.feature_map(f, dim=d, scale=scale)
    gen = torch.Generator().manual_seed(seed)
    Q = torch.randn(6, d, generator=gen, dtype=torch.float64)
    K = torch.randn(5, d, generator=gen, dtype=torch.float64)
    got = fm.kernel(Q, K)
    ref = torch.from_numpy(f((scale * Q @ K.T).numpy()))
    rel = (got - ref).abs().max() / ref.abs().max().clamp_min(1e-300)
    assert rel <= 1e-12, (f.source, float(rel))
    assert fm.exact and fm.error_bound(10) == 0
    expected_dim = sum(symmetric_dim(d, j) for j, c in enumerate(f.coefficients()) if c != 0)
    assert fm.dim_out == expected_dim == got.new_zeros(fm.phi(Q).shape[-1]).numel()


@pytest.mark.parametrize("d, spec, dim_out", [(4, "x**2", 10), (64, "1 + x + x**2/2", 2145), (16, "1 + x + x**2/2", 153),
                                              (16, "(1+x)**3", 969), (3, "x**2 + x**4", 21)])
def test_dim_out_formula(d, spec, dim_out):
    assert fastattn.feature_map(spec, dim=d).dim_out == dim_out


@pytest.mark.parametrize("text, R", [("exp(x)", 2.0), ("cosh(x)", 1.5), ("erf(x)", 1.0), ("tanh(x)", 1.0), ("log(1+x)", 0.6)])
@given(p=st.integers(1, 6), d=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_truncation_error_within_bound(text, R, p, d, seed):
    fm = fastattn.feature_map(text, dim=d, degree=p)
    gen = torch.Generator().manual_seed(seed)
    Q = torch.randn(8, d, generator=gen, dtype=torch.float64)
    K = torch.randn(8, d, generator=gen, dtype=torch.float64)
    # Rescale rows so every score lies inside [-R, R].
    S = Q @ K.T
    Q = Q * (R / S.abs().max().item())
    S = Q @ K.T
    err = (fm.kernel(Q, K) - torch.from_numpy(fm.spec(S.numpy()))).abs().max().item()
    assert err <= float(fm.error_bound(R)) * (1 + 1e-9) + 1e-14


def test_negative_coefficients_are_split_between_phi_and_psi():
    fm = fastattn.feature_map("1 - x**2", dim=3)
    q = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64)
    assert not torch.equal(fm.phi(q), fm.psi(q))
    assert torch.allclose(fm.kernel(q, q), torch.tensor([[1 - (q @ q.T).item() ** 2]], dtype=torch.float64))


def test_float32_and_gradients():
    fm = fastattn.feature_map("1 + x + x**2/2", dim=4)
    q = torch.randn(3, 4, dtype=torch.float32, requires_grad=True)
    out = fm.phi(q)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    q64 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    k64 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fm.kernel(a, b), (q64, k64))


def test_gaussian_map_within_bound():
    fm = gaussian_feature_map(4, sigma=2.0, degree=6)
    gen = torch.Generator().manual_seed(0)
    Q = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    K = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    ref = torch.exp(-torch.cdist(Q, K) ** 2 / 8)
    err = (fm.kernel(Q, K) - ref).abs().max().item()
    R = max(Q.norm(dim=1).max().item(), K.norm(dim=1).max().item())
    assert err <= float(fm.error_bound(R))


def test_random_features_error_falls_with_m():
    gen = torch.Generator().manual_seed(1)
    Q = 0.3 * torch.randn(64, 8, generator=gen, dtype=torch.float64)
    K = 0.3 * torch.randn(64, 8, generator=gen, dtype=torch.float64)
    ref = torch.exp(Q @ K.T)
    errs = []
    for m in (64, 4096):
        fm = fastattn.feature_map("exp(x)", dim=8, method="random", features=m, seed=3)
        errs.append(((fm.kernel(Q, K) - ref) ** 2).mean().sqrt().item())
    assert fm.error_bound(1.0) is None
    # 64x more features: the error should drop by about 8x; demand at least 4x.
    assert errs[1] < errs[0] / 4, errs
    a = fastattn.feature_map("exp(x)", dim=8, method="random", features=32, seed=5)
    b = fastattn.feature_map("exp(x)", dim=8, method="random", features=32, seed=5)
    assert torch.equal(a.phi(Q), b.phi(Q))


def test_a_sparse_series_is_counted_by_its_non_zero_coefficients():
    # cosh at degree 9 has only even terms: 548,591 features at d=16, within the limit (C(24, 9) alone is not)
    assert fastattn.feature_map("cosh(x)", dim=16, degree=9).dim_out == sum(symmetric_dim(16, j) for j in (0, 2, 4, 6, 8))


def test_the_not_analytic_error_does_not_deny_weierstrass():
    with pytest.raises(FeatureMapError) as info:
        fastattn.feature_map("relu(x)", dim=2, degree=4)
    assert "no finite feature map approximates" not in str(info.value)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: fastattn.feature_map("x**2", dim=0), "dim=0"),
        (lambda: fastattn.feature_map("x**2", dim=2.5), "dim=2.5"),
        (lambda: fastattn.feature_map("exp(x)", dim=4), "degree=p"),
        (lambda: fastattn.feature_map("exp(x)", dim=4, degree=-1), "degree=-1"),
        (lambda: fastattn.feature_map("Abs(x)", dim=4, degree=3), "no Taylor series at 0 .*Weierstrass"),
        # 1,373,701 features: above the kernels' limit of 2^20, counted before anything is built
        (lambda: fastattn.feature_map("(1+x)**3", dim=200), "needs 1,373,701 features.*limit is 1,048,576"),
        (lambda: fastattn.feature_map("exp(x)", dim=16, degree=30), "needs 991,493,848,554 features"),
        (lambda: fastattn.feature_map("x**2", dim=4, method="magic"), "unknown feature-map method"),
        (lambda: fastattn.feature_map("x**2", dim=4, method="random"), "exp\\(x\\) only"),
        (lambda: fastattn.feature_map("x**2", dim=4, scale=float("nan")), "scale=nan"),
        (lambda: fastattn.feature_map("x**2", dim=4).phi(torch.randn(3, 5)), r"shape \(\.\.\., 4\)"),
        (lambda: fastattn.feature_map("x**2", dim=4).phi(torch.tensor([[1.0, float("nan"), 0, 0]])), "non-finite"),
        (lambda: fastattn.feature_map("x**2", dim=4).psi(torch.ones(2, 4, dtype=torch.long)), "floating-point"),
        (lambda: fastattn.feature_map("x**2", dim=4).phi([1, 2, 3, 4]), "torch.Tensor"),
        (lambda: gaussian_feature_map(3, sigma=0.0), "sigma=0.0"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(FeatureMapError, match=match):
        call()


# -- certified best approximations (method="chebyshev" / "minimax", radius=R) ------------------------------------
@pytest.mark.parametrize("f,method,p,R", [("exp(x)", "chebyshev", 4, 2), ("tanh(x)", "minimax", 5, 3),
                                          ("relu(x)", "chebyshev", 6, 2), ("exp(x)", "taylor", 4, 2)])
def test_approximation_map_equals_its_polynomial_and_respects_the_bound(f, method, p, R):
    d, scale = 5, 0.5
    fm = fastattn.feature_map(f, dim=d, method=method, degree=p, radius=R, scale=scale)
    a = fm.approximation
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(400, d, generator=gen, dtype=torch.float64)
    k = torch.randn(400, d, generator=gen, dtype=torch.float64)
    x = scale * (q * k).sum(-1)
    # rescale the pairs whose score is outside the certified range onto it
    x_max = x.abs().clamp(min=R * 0.999) / (R * 0.999)
    q = q / x_max[:, None]
    x = scale * (q * k).sum(-1)
    assert float(x.abs().max()) <= R
    got = (fm.phi(q) * fm.psi(k)).sum(-1)
    want_poly = torch.tensor(a(x.numpy()), dtype=torch.float64)
    assert torch.allclose(got, want_poly, rtol=0, atol=1e-12)
    err = (torch.tensor(fastattn.spec(f)(x.numpy())) - got).abs().max()
    assert float(err) <= fm.error_bound(R) == a.bound


def test_approximation_map_refuses_beyond_its_radius_and_without_one():
    fm = fastattn.feature_map("exp(x)", dim=3, method="minimax", degree=2, radius=1)
    assert fm.error_bound(0.5) == fm.error_bound(1) < 0.05
    with pytest.raises(FeatureMapError, match="R=2 is beyond the radius 1"):
        fm.error_bound(2)
    with pytest.raises(FeatureMapError, match="needs degree=p and radius=R"):
        fastattn.feature_map("exp(x)", dim=3, method="chebyshev", degree=2)
    with pytest.raises(FeatureMapError, match="discontinuous"):
        fastattn.feature_map("sign(x)", dim=3, method="chebyshev", degree=2, radius=1)
    # the default route is unchanged: Taylor with the disc bound
    assert fastattn.feature_map("exp(x)", dim=3, degree=2).approximation is None


def test_positive_approximation_map_gives_positive_scores():
    fm = fastattn.feature_map("relu(x)", dim=4, method="minimax", degree=6, radius=2, positive=True)
    q = torch.randn(300, 4, dtype=torch.float64) * 3
    assert bool((fm.kernel(q, q) > 0).all()) and fm.approximation.method == "minimax+positive"
