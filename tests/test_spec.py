"""Spec: classification, exact series against sympy, rigorous remainders, positivity."""

import math

import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

import fastattn
from fastattn import SpecError
from fastattn.transforms.parse import X


@pytest.mark.parametrize(
    "text, kind, radius",
    [
        ("1 + x + x**2/2", "polynomial", sp.oo),
        ("(x**2 - 1)/(x - 1)", "polynomial", sp.oo),
        ("exp(x)", "entire", sp.oo),
        ("cosh(x)", "entire", sp.oo),
        ("erf(x)", "entire", sp.oo),
        ("exp(sin(x))", "entire", sp.oo),
        ("2**x", "entire", sp.oo),
        ("1/(1-x)", "analytic", 1),
        ("log(1+x)", "analytic", 1),
        ("1/(1+x**2)", "analytic", 1),
        ("tanh(x)", "analytic", sp.pi / 2),
        ("sigmoid(x)", "analytic", sp.pi),
        ("sqrt(4+x)", "analytic", 4),
        ("Abs(x)", "not-analytic", None),
        ("Max(x, 0)", "not-analytic", None),
        ("Heaviside(x)", "not-analytic", None),
        ("log(x)", "not-analytic", None),
        ("1/x", "not-analytic", None),
    ],
)
def test_kind_and_radius(text, kind, radius):
    f = fastattn.spec(text)
    assert f.kind == kind, f.reason
    assert f.reason
    if radius is None or radius is sp.oo:
        assert f.radius is radius
    else:
        assert sp.simplify(f.radius - radius) == 0


def test_done_when_examples():
    assert fastattn.spec("exp(x)").kind == "entire"
    assert fastattn.feature_map("x**2", dim=4).dim_out == 10


@pytest.mark.parametrize("text", ["exp(x)", "tanh(x)", "erf(x)", "log(1+x)", "sqrt(1+x)", "atan(x)",
                                  "cosh(x)*exp(x/3)", "exp(1+x)", "sigmoid(x)", "2**x", "sin(x)/(2+x)"])
def test_coefficients_match_sympy_series(text):
    f = fastattn.spec(text)
    p = 9
    ref = sp.Poly(sp.series(f.expr, X, 0, p + 1).removeO(), X)
    for k, c in enumerate(f.coefficients(p)):
        assert sp.simplify(c - ref.coeff_monomial(X**k)) == 0, (k, c)


def test_polynomial_coefficients_are_exact_rationals():
    f = fastattn.spec("1 + x + 0.5*x**2")
    assert f.degree == 2
    assert f.coefficients() == [1, 1, sp.Rational(1, 2)]
    assert all(isinstance(c, sp.Rational) for c in f.coefficients(5))
    assert f.taylor(1).expr == 1 + X


def test_exp_remainder_bounds_lagrange_and_cauchy():
    f = fastattn.spec("exp(x)")
    R, p = 1, 2
    lag = f.remainder_bound(p, R, method="lagrange")
    assert lag >= math.e / 6 and lag < math.e / 6 * (1 + 1e-12)
    cau = f.remainder_bound(p, R, method="cauchy")
    true_sup = math.e - 2.5  # attained at x = R since all coefficients are positive
    assert true_sup <= cau < true_sup * (1 + 1e-9)
    assert f.remainder_bound(p, R) == min(lag, cau)


def test_polynomial_remainder_is_exact():
    f = fastattn.spec("1 - x + x**3/3")
    assert f.remainder_bound(1, 2) == sp.Rational(8, 3)
    assert f.remainder_bound(3, 2) == 0


_BOUND_CASES = [("exp(x)", 3.0), ("exp(-2*x)", 1.0), ("cosh(x)", 2.0), ("sin(x)", 3.0), ("erf(x)", 1.5),
                ("tanh(x)", 1.2), ("log(1+x)", 0.7), ("1/(1-x)", 0.5), ("exp(sin(x))", 1.0), ("sigmoid(x)", 2.0)]


@pytest.mark.parametrize("text, R", _BOUND_CASES)
@given(p=st.integers(0, 10))
def test_measured_truncation_error_never_exceeds_the_bound(text, R, p):
    f = fastattn.spec(text)
    xs = np.linspace(-R, R, 2001)
    coeffs = [float(c) for c in f.coefficients(p)]
    approx = np.polynomial.polynomial.polyval(xs, coeffs)
    err = np.max(np.abs(f(xs) - approx))
    bound = float(f.remainder_bound(p, R))
    assert err <= bound * (1 + 1e-12) + 1e-15, (err, bound)


def test_remainder_bound_refuses_outside_radius_and_non_analytic():
    with pytest.raises(SpecError, match="radius of convergence"):
        fastattn.spec("log(1+x)").remainder_bound(3, 1.5)
    with pytest.raises(SpecError, match="no Taylor"):
        fastattn.spec("Abs(x)").remainder_bound(3, 1)
    with pytest.raises(SpecError, match="R=.* must be >= 0|radius R"):
        fastattn.spec("exp(x)").remainder_bound(3, -1)
    with pytest.raises(SpecError, match="p=-1"):
        fastattn.spec("exp(x)").remainder_bound(-1, 1)


@pytest.mark.parametrize("p", range(0, 13))
def test_taylor_truncations_of_exp_positive_iff_even_degree(p):
    t = fastattn.spec("exp(x)").taylor(p)
    res = t.is_positive()
    if p % 2 == 0:
        assert res.positive is True, res.reason
    else:
        assert res.positive is False
        # The counterpoint is checked independently with exact arithmetic.
        assert t.expr.subs(X, res.counterpoint) <= 0 or sp.N(t.expr.subs(X, res.counterpoint), 60) <= 1e-40


def test_positivity_non_polynomial():
    assert fastattn.spec("exp(x)").is_positive().positive is True
    assert fastattn.spec("cos(x) + 1.5").is_positive((-3, 3)).positive is True
    res = fastattn.spec("exp(x) - 1/2").is_positive((-1, 1))
    assert res.positive is False
    assert sp.N(fastattn.spec("exp(x) - 1/2").expr.subs(X, res.counterpoint), 30) <= 0
    assert fastattn.spec("1 + x").is_positive((-2, 0)).counterpoint == -1
    with pytest.raises(SpecError, match="empty"):
        fastattn.spec("x").is_positive((1, 0))


def test_callable_spec_with_declared_series():
    f = fastattn.spec(lambda t: 1 + t + t * t / 2, coefficients=[1, 1, 0.5], name="quad")
    assert f.kind == "polynomial" and f.coefficients() == [1, 1, sp.Rational(1, 2)]
    with pytest.raises(SpecError, match="disagree"):
        fastattn.spec(lambda t: t**3, coefficients=[0, 1])


def test_numeric_evaluation_matches_sympy():
    f = fastattn.spec("erf(x) * exp(-x**2) + Heaviside(x)")
    xs = np.array([-1.0, -0.25, 0.5, 2.0])
    ref = [float(sp.N(f.expr.subs(X, sp.Rational(str(v))), 20)) for v in xs]
    np.testing.assert_allclose(f(xs), ref, rtol=1e-13)
