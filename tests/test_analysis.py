"""fastattn.analyze: verdicts, certificates, feature map, cost model, rendering."""

import json

import pytest

from fastattn.analysis import CostModel, analyze
from fastattn.errors import FastAttnError, SpecError


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
