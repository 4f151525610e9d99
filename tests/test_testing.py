"""fastattn.testing: strategies draw what they promise, assertions pass on truth and fail with numbers."""

import pytest
from hypothesis import given, settings, strategies as st

from fastattn.testing import (
    assert_feature_map_exact,
    assert_full_rank_witness,
    assert_low_rank,
    feature_maps,
    qk_matrices,
    specs,
)
from fastattn.transforms import feature_map


@settings(max_examples=5, deadline=None)
@given(f=specs(kinds=("polynomial",), max_degree=3), d=st.integers(1, 3))
def test_polynomials_pass_assert_low_rank(f, d):
    assert f.kind == "polynomial"
    assert_low_rank(f, d)


@settings(max_examples=4, deadline=None)
@given(f=specs(kinds=("entire", "analytic", "not-analytic")))
def test_non_polynomials_pass_full_rank(f):
    assert f.kind != "polynomial"
    assert_full_rank_witness(f, 5)


@settings(max_examples=5, deadline=None)
@given(qk=qk_matrices(n=st.integers(1, 6), d=3))
def test_qk_shapes(qk):
    Q, K = qk
    assert Q.shape == K.shape and Q.shape[1] == 3 and abs(Q).max() <= 3


@settings(max_examples=5, deadline=None)
@given(fm=feature_maps(methods=("exact",), max_degree=2))
def test_exact_feature_maps_pass(fm):
    assert_feature_map_exact(fm)


def test_assertions_fail_with_numbers():
    with pytest.raises(AssertionError, match="not a polynomial"):
        assert_low_rank("exp(x)", 2)
    with pytest.raises(AssertionError, match="no verified 5x5"):
        assert_full_rank_witness("x**2", 5)
    with pytest.raises(AssertionError, match="not exact"):
        assert_feature_map_exact(feature_map("exp(x)", 2, degree=3))
    with pytest.raises(AssertionError, match="differ"):
        assert_feature_map_exact(feature_map("x**2", 2), "x**2 + x**3")


def test_strategy_options_are_validated():
    with pytest.raises(ValueError, match="kinds"):
        specs(kinds=("rational",))
    with pytest.raises(ValueError, match="max_degree"):
        specs(max_degree=0)
    with pytest.raises(ValueError, match="elements"):
        qk_matrices(elements="complex")
    with pytest.raises(ValueError, match="n=0"):
        qk_matrices(n=0)
    with pytest.raises(ValueError, match="methods"):
        feature_maps(methods=("random",))


def test_a_witness_search_past_its_budget_is_an_assertion_failure(monkeypatch):
    import fastattn.proofs_checks as pc
    from fastattn.errors import SpecError

    def overrun(f, n):
        raise SpecError("the 5x5 full-rank witness search took longer than its budget of 4 s")

    monkeypatch.setattr(pc, "full_rank_witness", overrun)
    with pytest.raises(AssertionError, match="no verified 5x5 full-rank witness .* budget"):
        assert_full_rank_witness("exp(x)", 5)


def test_the_zero_polynomial_passes_assert_low_rank():
    assert_low_rank("x - x", 3)
