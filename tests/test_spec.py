"""Spec: classification, exact series against sympy, rigorous remainders, positivity."""

import math
import re
import time

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


# -- issue 13: bounded work, ordinary constants, verdicts from the mathematics ---------------------
@pytest.mark.parametrize("text", ["sin(x)**2 + cos(x)**2", "cosh(x)**2 - sinh(x)**2"])
def test_identities_are_the_constant_one(text):
    f = fastattn.spec(text)
    assert (f.kind, f.degree, f.coefficients()) == ("polynomial", 0, [1])
    assert f.is_positive().positive is True


@pytest.mark.parametrize("text, expr", [
    ("Max(x,0) + Min(x,0)", X),
    ("x**2*Heaviside(x) + x**2*Heaviside(-x)", X**2),
    ("Abs(x)**2", X**2),
])
def test_kinks_whose_sides_agree_are_removed(text, expr):
    f = fastattn.spec(text)
    assert f.kind == "polynomial", f.reason
    assert sp.expand(f.expr - expr) == 0


def test_a_real_kink_stays_not_analytic():
    assert fastattn.spec("Max(x,0) + x").kind == "not-analytic"
    assert fastattn.spec("x*Heaviside(x) + x**2*Heaviside(-x)").kind == "not-analytic"


@pytest.mark.parametrize("text, kind, radius, series", [
    ("sin(x)/x", "entire", sp.oo, sp.sin(X) / X),
    ("(exp(2*x)-1)/(exp(x)-1)", "entire", sp.oo, sp.exp(X) + 1),
    ("x/(exp(x)-1)", "analytic", 2 * sp.pi, X / (sp.exp(X) - 1)),
    ("cosh(sqrt(x))", "entire", sp.oo, sp.cosh(sp.sqrt(X))),
    ("sinh(sqrt(2*x))/sqrt(2*x)", "entire", sp.oo, sp.sinh(sp.sqrt(2 * X)) / sp.sqrt(2 * X)),
])
def test_removable_singularities_are_analytic(text, kind, radius, series):
    f = fastattn.spec(text)
    assert f.kind == kind, f.reason
    assert f.radius == radius
    t = sp.Symbol("t", positive=True)
    # reference: sympy's series (through t**2 = x for the square roots, so sympy sees a power series)
    ref = sp.series(series.subs(X, t**2), t, 0, 16).removeO()
    want = [sp.nsimplify(ref.coeff(t, 2 * k)) for k in range(8)]
    assert f.coefficients(7) == want


def test_cosh_sqrt_is_evaluated_for_negative_x_too():
    f = fastattn.spec("cosh(sqrt(x))")
    np.testing.assert_allclose(f(np.array([-4.0, 0.0, 4.0])), [math.cos(2), 1.0, math.cosh(2)], rtol=1e-14)


def test_a_pole_is_not_removable():
    f = fastattn.spec("sin(x)/x**2")
    assert f.kind == "not-analytic"
    assert "pole of order 1" in f.reason


@pytest.mark.parametrize("text", ["0", "0*x", "x-x"])
def test_the_zero_function_is_a_polynomial_of_degree_zero(text):
    f = fastattn.spec(text)
    assert (f.kind, f.degree, f.coefficients(), f.coefficients(3)) == ("polynomial", 0, [0], [0, 0, 0, 0])
    assert f.remainder_bound(0, 1) == 0
    res = f.is_positive((-1, 1))
    assert res.positive is False and res.value == 0


@pytest.mark.parametrize("text, params, a1", [
    ("exp(x/sqrt(2))", None, 1 / sp.sqrt(2)),
    ("exp(0.1234567*x)", None, sp.Rational(1234567, 10**7)),
    ("exp(x/tau)", {"tau": 5.656854249492381}, 1 / sp.Rational("5.656854249492381")),
])
def test_irrational_and_float_constants_stay_exact(text, params, a1):
    f = fastattn.spec(text, params=params)
    assert f.kind == "entire"
    assert sp.simplify(f.coefficients(2)[1] - a1) == 0
    assert f.is_positive().positive is True
    bound = float(f.remainder_bound(3, 1))
    assert float(a1) ** 4 / 24 <= bound < float(a1) ** 4 / 24 * 2


def test_polynomial_with_an_irrational_constant():
    f = fastattn.spec("x**2 + sqrt(2)")
    assert f.coefficients() == [sp.sqrt(2), 0, 1]
    assert f.is_positive().positive is True
    assert f.is_positive((-3, 3)).positive is True
    assert fastattn.spec("x**2 - sqrt(2)").is_positive((0, 3)).positive is False


def test_irrational_interval_ends():
    assert fastattn.spec("x**2 + 1").is_positive((0, sp.pi)).positive is True
    res = fastattn.spec("x - 3").is_positive((0, sp.pi))
    assert res.positive is False and 0 <= res.counterpoint <= sp.pi and res.counterpoint - 3 <= 0
    assert fastattn.spec("x - 3").is_positive((sp.pi, 4)).positive is True
    assert fastattn.spec("exp(x) - 1").is_positive((sp.pi / 4, sp.pi)).positive is True


@pytest.mark.parametrize("text, radius", [
    ("sigmoid(x)", sp.pi), ("softplus(x)", sp.pi), ("tanh(x/2)", sp.pi), ("tan(x)", sp.pi / 2),
    ("1/(2 - exp(x))", sp.log(2)),
])
def test_radius_of_exp_and_trig_families_without_solve(text, radius):
    f = fastattn.spec(text)
    assert f.kind == "analytic"
    assert sp.simplify(f.radius - radius) == 0


def test_unlocated_singularities_give_a_certified_lower_bound():
    f = fastattn.spec("tanh(tanh(tanh(tanh(tanh(tanh(x))))))")
    assert f.kind == "analytic"
    assert "certified lower bound" in f.reason
    # the innermost tanh has a pole at i*pi/2: nothing nested can be analytic beyond it
    assert 0 < f.radius <= sp.pi / 2


def _outcome(call):
    """The value of call(), or the SpecError it raised: both are answers; anything else fails the test."""
    try:
        return call()
    except SpecError as exc:
        return exc


@pytest.mark.parametrize("text, kind", [
    ("exp(exp(exp(exp(x))))", "entire"), ("erf(erf(erf(x)))", "entire"), ("exp(-x**64)", "entire"),
    ("tanh(tanh(tanh(tanh(tanh(tanh(x))))))", "analytic"),
])
def test_nested_specs_answer_within_budget(text, kind):
    start = time.perf_counter()
    f = fastattn.spec(text)
    assert f.kind == kind
    assert len(f.coefficients(8)) == 9
    bound = _outcome(lambda: f.remainder_bound(4, sp.Rational(1, 4)))
    assert isinstance(bound, (float, SpecError)), bound
    assert f.is_positive().reason
    assert time.perf_counter() - start < 10


def test_x_to_the_exp_x_is_not_analytic_quickly():
    start = time.perf_counter()
    f = fastattn.spec("x**exp(x)")
    assert f.kind == "not-analytic" and "log" in f.reason
    assert f.is_positive((1, 2)).positive is True
    assert time.perf_counter() - start < 10


def test_sympy_input_meets_the_parser_limits():
    with pytest.raises(SpecError, match="total degree 128 after nesting is above the limit 64"):
        fastattn.spec((1 + X) ** 128)
    with pytest.raises(SpecError, match="not real"):
        fastattn.spec(sp.I * X)
    with pytest.raises(SpecError, match="limit 10000"):
        fastattn.spec(sp.exp(10**6 * X))
    assert fastattn.spec(sp.sin(X) ** 2 + sp.cos(X) ** 2).degree == 0


def test_a_kink_verdict_names_the_two_sides_or_says_undecided():
    f = fastattn.spec("relu(x) + x")
    assert f.kind == "not-analytic"
    assert "not analytic at x = 0: f is x just below x = 0 and 2*x just above" in f.reason
    g = fastattn.spec("Max(sin(x),0) + Min(sin(x),0)")  # sin(x), but the kink argument is not a polynomial
    assert g.kind == "not-analytic" and "not decided" in g.reason


@pytest.mark.parametrize("text, value", [("sqrt(x-1)", "I"), ("log(x-2)", "log(2) + I*pi"),
                                         ("log(log(log(2+x)))", "I*pi")])
def test_a_spec_complex_at_zero_is_refused(text, value):
    with pytest.raises(SpecError, match=rf"not real near x = 0: f\(0\) = .*{re.escape(value)}"):
        fastattn.spec(text)


def test_the_reason_shows_the_spec_as_written_when_it_was_simplified():
    assert fastattn.spec("sin(x)**2 + cos(x)**2").reason.endswith("(written as sin(x)**2 + cos(x)**2, which simplifies to 1)")
    assert "written as" not in fastattn.spec("exp(x)").reason


@pytest.mark.parametrize("expr", [sp.tanh(X), sp.sinh(X - 1), sp.cosh(X), sp.cosh(X - 1),
                                  sp.tanh(sp.tanh(sp.tanh(sp.tanh(sp.tanh(sp.tanh(X))))))])
@pytest.mark.parametrize("a, b", [(-1, 2), (sp.Rational(1, 2), sp.Rational(3, 4)), (-3, -2)])
def test_hyperbolic_enclosures_contain_the_range_and_stay_cheap(expr, a, b):
    from mpmath import iv

    from fastattn.transforms.intervals import interval_eval

    start = time.perf_counter()
    enc = interval_eval(expr, iv.mpf([float(a), float(b)]))  # the ends are exact binary fractions
    assert time.perf_counter() - start < 0.5  # rewriting through exp walked 4**6 subtrees for six nested tanh
    values = [sp.N(expr.subs(X, a + (b - a) * sp.Rational(k, 100)), 30) for k in range(101)]
    assert enc.a <= min(values) and max(values) <= enc.b
