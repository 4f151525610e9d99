"""Radius of convergence of rational specs with complex and repeated poles, against sympy's roots."""

import pytest
import sympy as sp
import torch

import fastattn
from fastattn import SpecError
from fastattn.analysis import analyze
from fastattn.transforms.parse import X

# (spec, whether the radius must come out exact); the poles are complex, repeated, or both
CASES = [
    ("x/(2-x) + 1/(4+x**2)", True),
    ("1/(1-x)**3", True),
    ("1/(1+x**2)**2", True),
    ("x/(x**2+2*x+5)", True),
    ("1/((1-x)*(3+x))", True),
    ("(1+x)/(1-x)**2 + 1/(9+x**2)", True),
    ("1/(x**2-2*x+2)**3", True),
    ("(x**2-1)/((x-1)*(x**2+x+1)**2)", True),
    ("1/((4+x**2)**2*(3-x))", True),
    ("1/(2+x**3)**2", True),
    ("x/(x**3-2*x-5)**2", False),
]


def _nearest_pole(text: str) -> sp.Expr:
    """|r| (70 digits) of the pole nearest 0, from sympy's exact roots of the cancelled denominator."""
    denominator = sp.denom(sp.cancel(sp.sympify(text, locals={"x": X})))
    poles = sp.roots(sp.Poly(denominator, X))
    assert sum(poles.values()) == sp.degree(denominator, X)  # every pole found
    return min(sp.Abs(sp.N(r, 70)) for r in poles)


@pytest.mark.parametrize("text, exact", CASES, ids=[t for t, _ in CASES])
def test_radius_is_distance_to_nearest_pole(text, exact):
    f = fastattn.spec(text)
    assert f.kind == "analytic", f.reason
    want = _nearest_pole(text)
    if exact:
        assert not f.radius.has(sp.Float), f.radius
        assert sp.N(sp.Abs(f.radius - want), 60) < sp.Float(10) ** -50, (f.radius, want)
    else:
        assert sp.N(sp.Abs(f.radius - want), 40) < sp.Float(10) ** -25, (f.radius, sp.N(want, 30))
    # the radius is what bounds the Taylor remainder: at R = radius there is none
    with pytest.raises(SpecError, match="radius of convergence"):
        f.remainder_bound(2, sp.nsimplify(sp.N(f.radius, 40) * (1 + sp.Rational(1, 10**20)), rational=True))


def test_taylor_map_and_analysis_of_repeated_complex_poles():
    text = "(1+x)/(1-x)**2 + 1/(9+x**2)"
    fm = fastattn.feature_map(text, dim=2, method="taylor", degree=3)
    q = torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=torch.float64)
    k = torch.tensor([[-0.25, 0.5], [0.2, 0.1]], dtype=torch.float64)
    got = fm.phi(q) @ fm.psi(k).T
    series = sp.series(sp.sympify(text, locals={"x": X}), X, 0, 4).removeO()
    want = torch.tensor([[float(series.subs(X, float(s))) for s in row] for row in (q @ k.T).tolist()],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    a = analyze(text, dim=2, radius=0.5, degree=3, seq_lens=(64,), n_witness=4, definiteness=False,
                certify=False, budget=20)
    assert a.kind == "analytic"
    assert a.spec.radius == 1
