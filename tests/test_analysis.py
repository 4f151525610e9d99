"""fastattn.analyze: verdicts, certificates, feature map, cost model, rendering."""

import json
import re
import time

import pytest

from fastattn.analysis import CostModel, analyze
from fastattn.errors import FastAttnError, FeatureMapError, SpecError


def test_polynomial():
    a = analyze("1 + x + x**2/2", dim=4)
    assert (a.kind, a.low_rank, a.rank_bound, a.feature_dim) == ("polynomial", True, 15, 15)
    assert a.certificate.check == "low-rank" and a.certificate.verify()
    assert a.positivity.positive is True
    assert a.feature_method == "exact" and a.error_bound == 0
    fm = a.feature_map()
    assert fm.dim_out == 15 and fm.exact
    assert a.cost.crossover is not None and a.cost.crossover > 0


def test_entire_and_not_analytic():
    a = analyze("exp(x)", dim=8, n_witness=8)
    assert (a.low_rank, a.rank_bound) == (False, None)
    assert a.certificate.check == "full-rank" and a.certificate.verify()
    assert a.feature_method == "taylor" and a.error_bound <= 1e-3 * 2.72
    b = analyze("relu(x)", dim=8, n_witness=8)
    assert b.feature_dim is None and b.certificate.verify()
    assert any("feature map" in n for n in b.notes)


def test_vanishing_function_falls_back_to_absolute_error():
    a = analyze("tanh(x)", dim=4, n_witness=6, definiteness=False)
    assert a.feature_method == "taylor" and a.error_bound <= 1e-3
    assert any("absolute" in n for n in a.notes)


def test_rendering():
    a = analyze("x**2", dim=3, definiteness=False)
    text = str(a)
    assert "rank f(QK^T) <= 6" in text
    assert "<table>" in a._repr_html_()
    assert a._repr_markdown_().startswith("### fastattn.analyze")
    d = json.loads(a.to_json())
    assert {"kind", "low_rank", "rank_bound", "feature_dim", "certificate", "cost"} <= set(d)


def test_cost_model_crossover_is_where_softmax_gets_dearer():
    cm = CostModel(head_dim=64, value_dim=64, feature_dim=2145, degree=2)
    T = cm.crossover
    assert cm.softmax_flops(T) >= cm.linear_flops() > cm.softmax_flops(T - 1)


def test_bad_arguments():
    with pytest.raises(SpecError, match="did you mean exp"):
        analyze("expp(x)")
    with pytest.raises(FastAttnError, match="dim"):
        analyze("x", dim=0)
    with pytest.raises(FastAttnError, match="radius"):
        analyze("x", radius=float("nan"))


def test_params_and_plot(tmp_path):
    a = analyze("exp(x/tau)", dim=2, params={"tau": 4}, n_witness=6, definiteness=False)
    assert a.feature_degree is not None
    fig = a.plot(n=16)
    fig.savefig(tmp_path / "p.png")


# -- verdicts only from certificates ------------------------------------------------------------------
def test_no_certificate_means_undecided_not_no():
    a = analyze("exp(x)", dim=4, certify=False, definiteness=False)
    assert a.low_rank is None and a.certificate is None
    assert "undecided" in str(a) and "no full-rank witness was asked for" in a.low_rank_reason
    assert json.loads(a.to_json())["low_rank"] is None


def test_a_certificate_that_runs_out_of_budget_is_undecided():
    a = analyze("erf(erf(erf(x)))", dim=4, n_witness=64, budget=0.05, definiteness=False)
    assert a.low_rank is None and a.certificate is None
    assert "budget" in a.low_rank_reason
    assert any(n.startswith("certificate:") for n in a.notes)


def test_a_verified_witness_says_no():
    a = analyze("exp(x)", dim=4, n_witness=8, definiteness=False)
    assert a.low_rank is False and a.certificate._verified
    assert "verified certificate gives a non-singular 8x8" in a.low_rank_reason


@pytest.mark.parametrize("text", ["1/x", "x**(-1/2)"])
def test_infinite_at_zero_is_not_positive_definite(text):
    a = analyze(text, dim=4, certify=False)
    assert a.positive_definite.holds is False and a.metric_transform.holds is False
    assert re.search(r"PD of f\(\|x-y\|\^2\)\s+no: f\(0\+\) = oo", str(a))


def test_not_analytic_note_says_what_the_taylor_route_cannot_do():
    a = analyze("relu(x)", dim=4, certify=False, definiteness=False)
    (note,) = [n for n in a.notes if n.startswith("no feature map")]
    assert "Weierstrass" in note and "no Taylor feature map" in note
    assert "no finite feature map approximates" not in note


# -- ordinary constants, rank 0 ----------------------------------------------------------------------
@pytest.mark.parametrize("text,params", [("exp(x/sqrt(2))", None), ("exp(0.1234567*x)", None),
                                         ("exp(x/tau)", {"tau": 5.656854249492381})])
def test_ordinary_constants_analyse_like_exp_x_over_8(text, params):
    start = time.monotonic()
    a = analyze(text, dim=16, params=params)
    assert time.monotonic() - start < 10.0
    assert a.low_rank is False and a.certificate.method == "modular" and a.certificate._verified


def test_an_irrational_constant_term_keeps_the_low_rank_certificate():
    a = analyze("x**2 + sqrt(2)", dim=4, definiteness=False)
    assert (a.low_rank, a.rank_bound, a.feature_dim) == (True, 11, 11)
    assert a.certificate.target == "factors" and a.certificate._verified


@pytest.mark.parametrize("text", ["0", "0*x", "x-x"])
def test_the_zero_function(text):
    a = analyze(text, dim=16, definiteness=False)
    assert (a.low_rank, a.rank_bound, a.feature_dim) == (True, 0, 0)
    assert a.certificate.bound == 0 and a.certificate._verified


# -- feature counts before anything is built ---------------------------------------------------------
def test_a_polynomial_map_above_the_limit_is_counted_not_built():
    a = analyze("(1+x)**8", dim=64, certify=False, definiteness=False)
    assert a.feature_too_large and a.feature_dim == 11_969_016_345
    assert a.cost.feature_dim is None
    assert "too large, not built" in str(a)
    with pytest.raises(FeatureMapError, match="11,969,016,345"):
        a.feature_map()


def test_the_taylor_degree_stops_at_the_feature_limit():
    a = analyze("exp(x)", dim=128, certify=False, definiteness=False)
    assert a.feature_too_large and a.feature_degree is None
    # degree 3 (C(130, 3) + ... = 366,145 features) misses 1e-3; degree 4 adds C(131, 4) = 11,716,640
    assert any("degree >= 4 at head dim 128 has at least 12,082,785 features" in n for n in a.notes)
    b = analyze("exp(x)", dim=16, degree=30, certify=False, definiteness=False)
    assert b.feature_too_large and b.feature_dim == 991_493_848_554


@pytest.mark.slow
@pytest.mark.parametrize("text", ["exp(exp(exp(exp(x))))", "erf(erf(erf(x)))", "tanh(tanh(tanh(tanh(tanh(tanh(x))))))",
                                  "exp(-x**64)", "x**exp(x)"])
def test_hostile_specs_answer_within_ten_seconds(text):
    start = time.monotonic()
    a = analyze(text, dim=16)
    assert time.monotonic() - start < 10.0
    # every verdict is a certificate or an undecided with its reason
    assert a.low_rank is False or (a.low_rank is None and a.low_rank_reason)
    assert a.feature_dim is None or a.feature_dim <= 1 << 20 or a.feature_too_large
