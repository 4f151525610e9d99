"""proofs_checks: every certificate re-verified, cross-checked by an independent computation, and wrong claims refused."""

import copy
import math
import time
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings, strategies as st

import fastattn
from fastattn.errors import SpecError
from fastattn.proofs_checks import (
    CertificateError,
    Undecided,
    ValueAtZeroCertificate,
    full_rank_witness,
    low_rank_certificate,
    low_rank_preservation,
    metric_transform,
    positive_definite,
    rank_bound,
    rank_check,
)
from fastattn.proofs_checks import _arith


def _sympy_rank_of_witness(cert):
    f = fastattn.spec(cert.spec)
    Q, K = sp.Matrix(cert.Q), sp.Matrix(cert.K)
    S = Q * K.T
    return S.applyfunc(lambda s: f.expr.subs(fastattn.transforms.X, s)).rank()


# -- polynomial => low rank ------------------------------------------------------------------------
coefficients = st.lists(st.fractions(-3, 3, max_denominator=4).filter(bool), min_size=3, max_size=3)


@settings(max_examples=6, deadline=None)
@given(degrees=st.sets(st.integers(0, 4), min_size=1, max_size=3), d=st.integers(1, 4), coeffs=coefficients)
def test_exact_rank_equals_bound_for_drawn_polynomials(degrees, d, coeffs):
    text = " + ".join(f"({c})*x**{j}" for j, c in zip(sorted(degrees), coeffs))
    cert = low_rank_certificate(text, d)
    want = sum(math.comb(d + j - 1, j) for j in degrees)
    assert cert.bound == want == rank_bound(text, d)
    assert cert.verify() is True


# small enough (bound <= 1 + 2 + 3 = 6 at d <= 2, degrees <= 2) for sympy's exact rank on every draw
@settings(max_examples=6, deadline=None)
@given(degrees=st.sets(st.integers(0, 2), min_size=1, max_size=3), d=st.integers(1, 2), coeffs=coefficients)
def test_witness_rank_is_the_bound_by_sympy(degrees, d, coeffs):
    text = " + ".join(f"({c})*x**{j}" for j, c in zip(sorted(degrees), coeffs))
    cert = low_rank_certificate(text, d)
    # an independent exact rank: sympy over Q, not the modular elimination
    assert _sympy_rank_of_witness(cert) == cert.bound == sum(math.comb(d + j - 1, j) for j in degrees) <= 6


@pytest.mark.parametrize("text,d,bound", [("x**2", 4, 10), ("1 + x + x**2/2", 16, 153), ("(1 + x)**4", 4, 70), ("x**3 + x", 3, 13)])
def test_known_bounds(text, d, bound):
    cert = low_rank_certificate(text, d)
    assert cert.bound == bound
    assert cert.verify()
    assert len(cert.Q) == bound and len(cert.Q[0]) == d


def test_irrational_coefficients_use_the_factor_certificate():
    cert = low_rank_certificate("pi*x**2 + sqrt(2)", 3)
    assert (cert.target, cert.bound) == ("factors", 7)
    assert cert.verify()


@pytest.mark.parametrize("field,value", [("bound", 11), ("support", [0, 2]), ("pivot_rows", [0] * 10)])
def test_tampered_low_rank_certificate_fails(field, value):
    cert = low_rank_certificate("x**2", 4)
    bad = copy.copy(cert)
    setattr(bad, field, value)
    with pytest.raises(CertificateError):
        bad.verify()


def test_low_rank_certificate_on_a_different_spec_fails():
    cert = low_rank_certificate("x**2", 3)
    bad = copy.copy(cert)
    bad.spec, bad._expr = "x**2 + x**3", None
    with pytest.raises(CertificateError, match="degrees"):
        bad.verify()


def test_witness_that_does_not_attain_fails():
    cert = low_rank_certificate("x**2", 2)
    bad = copy.copy(cert)
    bad.Q = [[1, 1]] * len(cert.Q)  # all query rows equal: rank 1
    with pytest.raises(CertificateError):
        bad.verify()


@pytest.mark.parametrize("text", ["exp(x)", "relu(x)", "tanh(x)"])
def test_low_rank_refuses_non_polynomials(text):
    with pytest.raises(CertificateError, match="not a polynomial"):
        low_rank_certificate(text, 2)


# -- non-polynomial => full rank ---------------------------------------------------------------------
def _mpmath_sigma_min(cert, params=None):
    """Smallest singular value of f(QK^T) from the stored q, k, at 60 digits: an independent check of a witness."""
    f = fastattn.spec(cert.spec, params=params)
    fn = sp.lambdify(fastattn.transforms.X, f.expr, modules=["mpmath"])
    with mpmath.workdps(60):
        S = [[sum(mpmath.mpf(sp.N(a * b, 80)) for a, b in zip(qi, kj)) for kj in cert.k] for qi in cert.q]
        A = mpmath.matrix([[fn(s) for s in row] for row in S])
        return min(mpmath.svd_r(A, compute_uv=False))


@pytest.mark.parametrize("text", ["exp(x)", "tanh(x)", "1/(1-x)", "cosh(x)", "sigmoid(x)", "Abs(x)", "relu(x)",
                                  "Heaviside(x)", "exp(-Abs(x))"])
def test_full_rank_witness_exact(text):
    cert = full_rank_witness(text, 8)
    assert cert.method == "modular" and cert.verify()
    assert _mpmath_sigma_min(cert) > 0


@pytest.mark.parametrize("text,method", [("erf(x)", "interval"), ("sin(x)", "interval"), ("atan(x)", "high-precision"),
                                         ("sqrt(x)", "interval")])
def test_full_rank_witness_numeric(text, method):
    cert = full_rank_witness(text, 8)
    assert cert.method == method and cert.verify()
    # the claimed lower bound is below the independently computed smallest singular value
    smin = _mpmath_sigma_min(cert)
    assert smin >= mpmath.mpf(cert.sigma_min_lower.numerator) / cert.sigma_min_lower.denominator > 0


# the 1/sqrt(d) scale of d = 32 written as a float: its exact value has a 16-digit denominator
TAU = 5.656854249492381


@pytest.mark.parametrize("text,params", [
    ("exp(x/8)", None), ("exp(x/sqrt(2))", None), ("exp(0.1234567*x)", None), ("exp(x/tau)", {"tau": TAU}),
    ("tanh(x/tau)", {"tau": TAU}), ("sigmoid(x/tau - 2)", {"tau": TAU}),
])
def test_witness_size_does_not_grow_with_a_constant(text, params):
    f = fastattn.spec(text, params=params)
    start = time.monotonic()
    cert = full_rank_witness(f, 16)
    assert time.monotonic() - start < 3.0
    assert cert.method == "modular" and cert.verify()
    # the points are scaled instead: every entry is (j+2)^(+-k i) with k = 1, the size of exp(x)'s own witness
    S = cert._scores()
    entries = [sp.simplify(f.expr.rewrite(sp.exp).subs(fastattn.transforms.X, S[i][j])) for i in (0, 15) for j in (0, 15)]
    assert all(e.is_Rational for e in entries)
    # 17^16 (tanh: 17^32) and neighbours, where exp(x/tau) on the points of exp(x) would need 10^16-bit exponents
    assert max(max(int(e.p).bit_length(), int(e.q).bit_length()) for e in entries) <= 140
    assert _mpmath_sigma_min(cert, params) > 0


@settings(max_examples=8, deadline=None)
@given(tau=st.floats(0.01, 100.0), shift=st.sampled_from([0.0, 1.5, -2.25]))
def test_drawn_float_scales_keep_the_exact_witness(tau, shift):
    f = fastattn.spec("sigmoid(x/tau + shift)", params={"tau": tau, "shift": shift})
    start = time.monotonic()
    cert = full_rank_witness(f, 12)
    assert cert.method == "modular" and cert.d == (1 if shift == 0 else 2)
    assert cert.verify() and time.monotonic() - start < 3.0


def test_irrational_exponent_ratio_takes_the_numeric_route():
    cert = full_rank_witness("exp(x) + exp(sqrt(2)*x)", 8)
    assert cert.method in ("interval", "high-precision") and cert.verify()
    assert _mpmath_sigma_min(cert) >= mpmath.mpf(cert.sigma_min_lower.numerator) / cert.sigma_min_lower.denominator


@pytest.mark.parametrize("text", ["0", "0*x", "x-x"])
def test_the_zero_function_has_a_rank_zero_certificate(text):
    cert = low_rank_certificate(text, 16)
    assert (cert.bound, rank_bound(text, 16), rank_check(text, d=16).bound) == (0, 0, 0)
    assert cert.verify()
    bad = copy.copy(cert)
    bad.spec, bad._expr = "x", None
    with pytest.raises(CertificateError, match="degrees"):
        bad.verify()


@pytest.mark.parametrize("text", ["exp(exp(exp(exp(x))))", "erf(erf(erf(x)))", "tanh(tanh(tanh(tanh(tanh(tanh(x))))))",
                                  "exp(-x**64)", "x**exp(x)"])
def test_hostile_specs_get_a_witness_within_budget(text):
    start = time.monotonic()
    cert = full_rank_witness(text, 16)
    assert cert.verify()
    assert time.monotonic() - start < 10.0
    assert _mpmath_sigma_min(cert) > 0


def test_the_search_budget_raises_spec_error():
    with pytest.raises(SpecError, match="full-rank witness search .* budget of 0.001 s"):
        full_rank_witness("erf(erf(erf(x)))", 64, budget=0.001)


def test_exact_evaluation_refuses_huge_entries():
    # exp(x) at x = 10^5 log 3 is 3^100000: refused, not built
    with pytest.raises(_arith.NotExact, match="bits"):
        _arith.exact_eval(fastattn.spec("exp(x)").expr, Fraction(10**5), 3)
    assert _arith.exact_eval(fastattn.spec("exp(x)").expr, Fraction(5), 3) == 243


def test_exact_roots_of_big_integers():
    # a float root of a 400-digit integer overflows; the exact root does not
    big = Fraction(3**840, 7**420)
    assert _arith._rational_root(big, 2) == Fraction(3**420, 7**210)
    with pytest.raises(_arith.NotExact, match="irrational"):
        _arith._rational_root(big * 3, 2)


def test_exp_witness_is_a_vandermonde_matrix():
    cert = full_rank_witness("exp(x)", 6)
    S = [[qi[0] * kj[0] for kj in cert.k] for qi in cert.q]
    M = sp.Matrix(6, 6, lambda i, j: sp.exp(S[i][j]))
    nodes = [sp.exp(kj[0]) for kj in cert.k]  # 2, 3, ..., 7
    # entries are node^(i+1): det = prod(nodes) * prod_{j<l} (node_l - node_j) != 0
    want = sp.prod(nodes) * sp.prod([nodes[l] - nodes[j] for j in range(6) for l in range(j + 1, 6)])
    assert M.det() == want != 0


@pytest.mark.slow
@pytest.mark.parametrize("text", ["exp(x)", "relu(x)", "erf(x)"])
def test_full_rank_witness_n64(text):
    # the interactive 4 s budget is not what this tests: erf's 64x64 search takes 2.3 s on an idle core
    cert = full_rank_witness(text, 64, budget=60)
    assert cert.n == 64 and cert.verify()


def test_tampered_full_rank_certificates_fail():
    cert = full_rank_witness("exp(x)", 8)
    bad = copy.copy(cert)
    bad.k = [cert.k[0]] * 8  # equal key points: rank 1
    with pytest.raises(CertificateError):
        bad.verify()
    num = full_rank_witness("erf(x)", 8)
    bad = copy.copy(num)
    bad.sigma_min_lower = num.sigma_min_lower * 1000
    with pytest.raises(CertificateError, match="sigma_min"):
        bad.verify()
    bad = copy.copy(num)
    bad.A_mid = [row[:] for row in num.A_mid]
    bad.A_mid[0][0] += 1 << (num.bits - 4)  # an entry off by 1/16
    with pytest.raises(CertificateError, match="outside"):
        bad.verify()
    bad = copy.copy(num)
    bad.spec, bad._expr = "erf(x) + x", None
    with pytest.raises(CertificateError):
        bad.verify()


def test_no_witness_for_a_polynomial():
    with pytest.raises(CertificateError, match="no 8x8 witness"):
        full_rank_witness("x**2 + 1", 8)


def test_modular_arithmetic_agrees_with_sympy():
    rng = np.random.default_rng(1)
    M = rng.integers(-5, 6, (7, 7)).tolist()
    M[6] = [a + b for a, b in zip(M[0], M[1])]  # rank 6
    for p in _arith.PRIMES:
        assert _arith.rank_mod_p(M, p)[0] == 6 == sp.Matrix(M).rank()
        assert _arith.det_mod_p(M[:6] and [r[:6] for r in M[:6]], p) == int(sp.Matrix([r[:6] for r in M[:6]]).det()) % p


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 2**16), dup=st.booleans())
def test_modular_rank_and_det_match_sympy_on_drawn_matrices(n, seed, dup):
    rng = np.random.default_rng(seed)
    M = rng.integers(-9, 10, (n, n)).tolist()
    if dup and n > 1:
        M[-1] = list(M[0])  # singular
    exact_det = int(sp.Matrix(M).det())
    for p in _arith.PRIMES:  # numpy path (p < 2^31) and Python-int path
        assert _arith.det_mod_p(M, p) == exact_det % p
        assert _arith.rank_mod_p(M, p)[0] == sp.Matrix(M).rank()
    with pytest.raises(ValueError, match="square"):
        _arith.det_mod_p([[1, 2]], _arith.PRIMES[0])


def test_erf_enclosure_contains_the_value():
    from mpmath import iv

    iv.prec = 200
    for t in (Fraction(1, 3), Fraction(-7, 2), Fraction(5)):
        e = _arith.erf_enclosure(t)
        with mpmath.workprec(260):
            v = mpmath.erf(mpmath.mpf(t.numerator) / t.denominator)
            assert mpmath.mpf(e._mpi_[0]) <= v <= mpmath.mpf(e._mpi_[1])
    iv.prec = 53


# -- preservation --------------------------------------------------------------------------------------
def test_preservation():
    ok = low_rank_preservation("x**2", 64)
    assert ok.holds and ok.r == 7 and ok.bound == 28 and ok.verify()
    no = low_rank_preservation("x**6", 16)
    assert not no.holds and no.verify()
    no = low_rank_preservation("exp(x)", 16)
    assert not no.holds and no.witness_cert.n == 16 and no.verify()
    bad = copy.copy(ok)
    bad.spec = "x**5"
    with pytest.raises(CertificateError):
        bad.verify()


# -- positive definiteness and metric transforms ---------------------------------------------------------
@pytest.mark.parametrize("text", ["exp(-x)", "1/(1+x)", "exp(-sqrt(x))", "1/sqrt(1+x)", "exp(-x) + 2/(1+x)**2"])
def test_completely_monotone(text):
    c = positive_definite(text)
    assert c.holds and c.method == "symbolic" and c.verify()


@pytest.mark.parametrize("text", ["1 - x", "exp(-x**2)", "exp(x)", "cos(x)", "1/(1+x**2)", "sqrt(x)"])
def test_not_positive_definite_has_a_certified_negative_direction(text):
    c = positive_definite(text)
    assert c.holds is False and c.verify()
    # independent: the float64 smallest eigenvalue of the stored point set is negative
    f = fastattn.spec(text)
    P = np.array([[float(v) for v in p] for p in c.points])
    D = ((P[:, None, :] - P[None, :, :]) ** 2).sum(-1)
    assert np.linalg.eigvalsh(f(D))[0] < 0


@pytest.mark.parametrize("text", ["sqrt(x)", "log(1+x)", "1 - exp(-x)", "x/(1+x)", "x", "x**(1/3) + 2*x"])
def test_bernstein(text):
    c = metric_transform(text)
    assert c.holds and c.verify()


@pytest.mark.parametrize("text", ["x**2", "exp(x)", "x**3"])
def test_not_a_metric_transform_on_hyperrectangle_corners(text):
    c = metric_transform(text)
    assert c.holds is False and c.verify()
    assert c.distance_rank == c.dim + 1
    assert sum(c.c) == 0


@pytest.mark.parametrize("text", ["1/x", "x**(-1/2)"])
@pytest.mark.parametrize("check", [positive_definite, metric_transform])
def test_infinite_at_zero_is_neither_positive_definite_nor_a_metric_transform(text, check):
    # both are completely monotone on (0, oo), but f(0) sits on the diagonal of f(|x-y|^2) and f(D)
    c = check(text)
    assert isinstance(c, ValueAtZeroCertificate)
    assert c.holds is False and c.limit == "oo" and c.verify()
    bad = copy.copy(c)
    bad.spec = "exp(-x)"
    with pytest.raises(CertificateError, match="f\\(0\\+\\) = 1"):
        bad.verify()


def test_a_derivation_does_not_verify_for_a_spec_infinite_at_zero():
    c = positive_definite("exp(-x)")
    bad = copy.copy(c)
    bad.spec = "1/x"  # CM on (0, oo) by the same rules, but f(0+) = oo
    with pytest.raises(CertificateError, match="finite and continuous at 0"):
        bad.verify()


def test_tampered_quadratic_form_fails():
    c = positive_definite("1 - x")
    bad = copy.copy(c)
    bad.c = [Fraction(1)] + [Fraction(0)] * (len(c.c) - 1)  # c^T K c = f(0) = 1 > 0
    with pytest.raises(CertificateError):
        bad.verify()
    m = metric_transform("x**2")
    bad = copy.copy(m)
    bad.c = list(m.c[:-1]) + [m.c[-1] + 1]
    with pytest.raises(CertificateError, match="sum"):
        bad.verify()


def test_undecided_is_not_a_certificate():
    u = Undecided("f", "positive-definite", "nothing found")
    with pytest.raises(CertificateError):
        u.verify()
    assert u.to_dict()["holds"] is None


def test_rendering_and_json():
    import json

    for cert in (rank_check("x**2", d=2), rank_check("erf(x)", n=6), positive_definite("1-x"), metric_transform("x**2")):
        d = json.loads(cert.to_json(full=True))
        assert {"check", "claim", "method", "numbers", "holds", "witness"} <= set(d)
        assert cert.claim in str(cert)
        assert cert.check in cert._repr_markdown_()
