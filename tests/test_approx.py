"""Chebyshev / minimax / Taylor approximations: certified bounds against high-precision sup errors."""

import math

import mpmath
import pytest
import sympy as sp

import fastattn
from fastattn import SpecError
from fastattn.transforms import approx
from fastattn.transforms.parse import X


def true_sup_error(a) -> float:
    """sup_{|x| <= R} |f - poly| at 40 digits: a dense grid (Chebyshev-clustered and uniform), then golden-section
    maximisation around the 12 largest grid values, and the ends."""
    with mpmath.workdps(40):
        fn = sp.lambdify(X, a.spec.expr, modules=["mpmath"])
        coeffs = [mpmath.mpf(int(c.p)) / int(c.q) for c in a.coefficients]
        R = mpmath.mpf(int(a.radius.p)) / int(a.radius.q)

        def err(x):
            v = fn(x)
            return abs(mpmath.re(v) - mpmath.polyval(coeffs[::-1], x))

        n = 1500
        grid = sorted({R * mpmath.cos(mpmath.pi * i / n) for i in range(n + 1)} | {R * (2 * mpmath.mpf(i) / n - 1)
                                                                                 for i in range(n + 1)})
        vals = [err(x) for x in grid]
        best = max(vals)
        for i in sorted(range(len(grid)), key=lambda i: -vals[i])[:12]:
            lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
            g = (mpmath.sqrt(5) - 1) / 2
            c, d = hi - g * (hi - lo), lo + g * (hi - lo)
            for _ in range(40):
                if err(c) > err(d):
                    hi, d = d, c
                    c = hi - g * (hi - lo)
                else:
                    lo, c = c, d
                    d = lo + g * (hi - lo)
            best = max(best, err(c), err(d))
        return float(best)


# (f, R, p): entire, finite radius inside and outside its radius 1, and continuous non-analytic f
CASES = [
    ("exp(x)", 1, 2), ("exp(x)", 4, 8), ("exp(x/8)", 8, 4), ("tanh(x)", 3, 9), ("sigmoid(x)", 6, 8),
    ("erf(x)", 2, 10), ("1/(1+x**2)", 0.5, 6), ("1/(1+x**2)", 3, 12), ("cos(x)", 5, 10),
    ("Abs(x)", 1, 8), ("relu(x)", 2, 6), ("x*Abs(x)", 1, 5),
]


@pytest.mark.parametrize("method", ["chebyshev", "minimax"])
@pytest.mark.parametrize("f,R,p", CASES, ids=[f"{f}-R{R}-p{p}" for f, R, p in CASES])
def test_certified_bound_is_above_the_true_error_and_within_2x(method, f, R, p):
    a = approx.METHODS[method](f, p, R)
    true = true_sup_error(a)
    # measured bound / true ratios on this grid: 1.00-1.10 (the default tolerance is 1.1)
    assert true <= a.bound <= 2 * true, (a.bound, true)
    assert a.estimate <= true * (1 + 1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("f", ["exp(x)", "tanh(x)", "sigmoid(x)", "erf(x)", "1/(1+x**2)", "cos(x)", "Abs(x)",
                               "relu(x)", "x*Abs(x)", "exp(x/8)", "Abs(x - 1/3)", "sqrt(1 + x)"])
@pytest.mark.parametrize("R,p", [(1, 4), (2, 12), (4, 20), (8, 30)])
def test_certified_bound_sweep(f, R, p):
    if f == "sqrt(1 + x)":
        R = 1  # the end point -1 is where f stops being smooth (and real beyond)
    for method in ("chebyshev", "minimax"):
        a = approx.METHODS[method](f, p, R)
        true = true_sup_error(a)
        assert true <= a.bound <= 2 * true, (method, a.bound, true)


def test_exp_minimax_degree_2_error():
    a = approx.minimax("exp(x)", 2, 1)
    assert abs(a.estimate - 0.045017) < 1e-4
    assert 0.045 < a.bound < 0.05
    t = approx.taylor("exp(x)", 2, 1)
    assert abs(t.bound - (math.e - 2.5)) < 1e-9   # the Taylor error is e - 5/2, attained at x = 1


def test_minimax_beats_chebyshev_beats_taylor():
    m, c, t = (approx.METHODS[k]("exp(x)", 6, 3) for k in ("minimax", "chebyshev", "taylor"))
    assert m.estimate <= c.estimate * (1 + 1e-9) < t.estimate


def test_coefficients_are_exact_rationals_and_the_bound_a_float():
    a = approx.chebyshev("tanh(x)", 7, 2)
    assert len(a.coefficients) == 8 and all(isinstance(c, sp.Rational) for c in a.coefficients)
    assert isinstance(a.bound, float) and isinstance(a.polynomial, sp.Expr)
    # tanh is odd: its even coefficients vanish up to the stated 64-bit rounding
    assert all(abs(float(c)) < 1e-15 for c in a.coefficients[::2])


def test_verify_recomputes_the_bound():
    a = approx.minimax("relu(x)", 6, 2)
    assert a.verify() is True
    import dataclasses

    forged = dataclasses.replace(a, bound=a.bound / 2)
    with pytest.raises(SpecError, match="does not verify"):
        forged.verify()


def test_error_bound_of_a_given_polynomial():
    # |x| - x**2 on [-1, 1] peaks at 1/4 (x = ±1/2)
    b = approx.error_bound([0, 0, 1], "Abs(x)", 1)
    assert 0.25 <= b <= 0.25 * 1.1
    assert approx.error_bound(X**2 + 1, "x**2 + 1", 3) == 0


def test_polynomial_f_is_reproduced_exactly():
    a = approx.chebyshev("1 + x + x**2/2", 4, 5)
    assert a.method == "exact" and a.bound == 0 and a.coefficients[:3] == (1, 1, sp.Rational(1, 2))


def test_outside_the_radius_of_convergence():
    # R = 3 is outside the Taylor radius 1 of 1/(1+x^2): Taylor is refused, Chebyshev converges
    with pytest.raises(SpecError, match="radius of convergence"):
        approx.taylor("1/(1+x**2)", 10, 3)
    errs = [approx.chebyshev("1/(1+x**2)", p, 3).bound for p in (4, 8, 16)]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("f,p,R,match", [
    ("exp(x)", -1, 1, "degree=-1"),
    ("exp(x)", 2.5, 1, "degree=2.5"),
    ("exp(x)", 2, 0, "radius=0 must be > 0"),
    ("exp(x)", 2, -1, "radius=-1 must be > 0"),
    ("exp(x)", 2, float("inf"), "radius=inf"),
    ("sign(x)", 4, 1, "discontinuous"),
    ("Heaviside(x)", 4, 1, "discontinuous"),
    ("sqrt(x)", 4, 1, "not real at x"),
    ("log(1 + x)", 4, 2, "not real at x"),
    ("1/(1 - x)", 4, 2, "unbounded or undefined"),
])
def test_refusals_name_the_value(f, p, R, match):
    with pytest.raises(SpecError, match=match):
        approx.chebyshev(f, p, R)


def test_positive_is_positive_on_the_line_and_reports_its_cost():
    base = approx.minimax("tanh(x)", 4, 2)
    pos = approx.positive(base)
    assert sp.Poly(pos.polynomial, X).count_roots() == 0 and pos.coefficients[-1] > 0
    # tanh(-2) = -0.96: any positive approximation is off by at least that at x = -2
    assert pos.bound >= math.tanh(2) and pos.cost == pytest.approx(pos.bound - base.bound, rel=1e-12)
    assert true_sup_error(pos) <= pos.bound
    already = approx.positive(approx.minimax("exp(x)", 4, 2))
    assert already.cost == 0.0
    with pytest.raises(SpecError, match="odd"):
        approx.positive(approx.minimax("exp(x)", 3, 1))


def test_exports():
    assert fastattn.transforms.chebyshev is approx.chebyshev
    assert fastattn.transforms.Approximation is approx.Approximation


def test_a_bound_beyond_the_float_range_is_a_clear_error():
    # exp(exp(exp(exp(x)))) is about exp(3.8e6) at x = 1: no float holds the error of a quadratic
    with pytest.raises(SpecError, match="beyond the float range"):
        approx.minimax("exp(exp(exp(exp(x))))", 2, 1, seconds=5)


def test_a_constant_is_its_own_positive_approximation():
    a = approx.positive(approx.chebyshev("exp(x)", 0, 1))
    assert a.degree == 0 and a.coefficients[0] > 0 and a.bound >= math.e - 1 - 1e-9
