"""analyze(..., window=w): the hybrid section's certified bound against hybrid_attention in float64, its costs
counted from the window kernel's tiling, and its output in JSON, text, HTML and on the command line."""

import json
import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch

from fastattn import analyze, costmodel as cm
from fastattn.attention import hybrid_attention
from fastattn.cli import main
from fastattn.errors import KernelError
from fastattn.recommend import output_bound, relative_range

D, DV, T = 4, 3, 40


def _analyze(f, window, **kw):
    kw = {"dim": D, "value_dim": DV, "seq_len": T, "certify": False, "definiteness": False, **kw}
    return analyze(f, window=window, **kw)


def _inputs(radius, seed, B=2, H=2):
    """q, k with |s q.k| <= radius (s = 1/sqrt(D)): norms up to sqrt(radius / s), so scores cover [-R, R]."""
    g = torch.Generator().manual_seed(seed)
    top = math.sqrt(radius * math.sqrt(D))

    def rows():
        x = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
        r = top * (0.6 + 0.4 * torch.rand(B, H, T, 1, generator=g, dtype=torch.float64))
        return x / x.norm(dim=-1, keepdim=True) * r

    q, k = rows(), rows()
    v = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
    return q, k, v


def _softmax(q, k, v):
    x = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    x = x.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    return torch.softmax(x, -1) @ v


def _column_ranges(v):
    """[B, H, T, DV]: max - min of each value column over the keys j <= i."""
    return torch.cummax(v, 2).values - (-torch.cummax(-v, 2).values)


@pytest.mark.parametrize("f, radius, window", [("exp(x)", 1.0, 5), ("exp(x)", 0.5, 1), ("1 + x + x**2/2", 1.0, 7),
                                               ("(1 + x)**2", 0.8, 0)])
def test_the_bound_holds_against_float64_softmax(f, radius, window):
    h = _analyze(f, window, radius=radius, max_features=40).hybrid
    usable = [m for m in h.maps if m.usable]
    assert usable and all(0 < m.output_bound < 1 for m in usable)
    q, k, v = _inputs(radius, seed=window)
    scores = (q @ k.transpose(-1, -2)).abs().max() / math.sqrt(D)
    assert 0.5 * radius < scores <= radius
    ref, ranges = _softmax(q, k, v), _column_ranges(v)
    for m in usable:
        spec = {j: float(c) for j, c in enumerate(m.coefficients) if c != 0}
        o = hybrid_attention(q, k, v, spec, window=window, backend="torch")
        err = (o - ref).abs()
        bound = m.output_bound * ranges
        if window == 0:
            # the plain map divides by z + 1e-6 when f is not known > 0: |n/z - n/(z + eps)| <= |n/z| eps/z
            x = (q @ k.transpose(-1, -2)) / math.sqrt(D)
            z = (torch.tril(torch.ones(T, T, dtype=torch.bool)) * sum(c * x**j for j, c in spec.items())).sum(-1)
            bound = bound + (ref.abs() + bound) * 1e-6 / z[..., None]
        # + float64 rounding of the sums, far below any bound here
        assert bool((err <= bound + 1e-12).all()), (m.method, (err / ranges).max(), m.output_bound)
        # the first w queries see only window keys: exact
        assert window == 0 or float(err[:, :, :window].max()) <= 1e-12
        # beyond the window the map's error shows, far above float64 rounding: the bound is checked on it
        assert float(err[:, :, window + 1:].max()) > 1e-5


def test_delta_and_the_range_are_certified_and_tight():
    for coefficients, radius in (([1, 1, 0.5], 1.0), ([1, 1, 0.5, 1 / 6, 1 / 24], 2.0), ([2.0], 0.5)):
        delta, low, high = relative_range([Fraction(c) for c in coefficients], radius)
        x = np.linspace(-radius, radius, 200001)
        e = np.polyval(coefficients[::-1], x) * np.exp(-x) - 1
        # enclosures of what the grid attains, within the certificate's 1 % (plus a grid step's worth)
        assert e.min() >= low >= e.min() - 0.011 * np.abs(e).max()
        assert e.max() <= high <= e.max() + 0.011 * np.abs(e).max()
        assert np.abs(e).max() <= delta <= 1.011 * np.abs(e).max()


def test_kappa_is_attained_by_two_groups_of_keys():
    for low, high in ((-0.05, 0.05), (-0.0804, 0.3592), (-0.9, 4.0), (0.1, 0.3)):
        # e = lo on p*-mass 1 - a (value 0), e = hi on mass a (value 1), with 1 + m = sqrt((1 + lo)(1 + hi))
        lo, hi = min(low, 0.0), max(high, 0.0)
        m = math.sqrt((1 + lo) * (1 + hi)) - 1
        a = (m - lo) / (hi - lo)
        softmax, hybrid = a, a * (1 + hi) / (1 + m)
        assert hybrid - softmax == pytest.approx(output_bound(low, high), rel=1e-12)
        assert output_bound(low, high) >= hybrid - softmax
    assert output_bound(0.0, 0.0) == 0.0 and output_bound(-1.0, 7.0) == 1.0
    with pytest.raises(ValueError, match="below -1"):
        output_bound(-1.5, 0.0)


def test_the_worst_case_meets_the_bound_in_hybrid_attention():
    # Taylor-2 outside a window of 1, scores -1 (e = +0.359, value 1) and +1 (e = -0.080, value 0) on D = 1
    h = _analyze("1 + x + x**2/2", 1, dim=1, value_dim=1, seq_len=401).hybrid
    kappa = h.maps[0].output_bound
    k = torch.ones(1, 1, 401, 1, dtype=torch.float64)
    k[..., :340, 0] = k[..., -1, 0] = -1
    v = torch.zeros(1, 1, 401, 1, dtype=torch.float64)
    v[..., :340, 0] = 1
    q = torch.ones_like(k)
    o = hybrid_attention(q, k, v, "1 + x + x**2/2", window=1, scale=1.0, backend="torch")
    ref = torch.softmax(q[0, 0, -1] @ k[0, 0].T, -1) @ v[0, 0]
    err = float((o[0, 0, -1] - ref).abs().max())
    assert 0.99 * kappa <= err <= kappa


def test_an_f_with_a_zero_on_the_range_keeps_only_the_convex_combination_bound():
    # (1 + x)**2 vanishes at x = -1: the enclosure's slack below -1 must not break the bound (it is then 1)
    h = _analyze("(1 + x)**2", 4, radius=1.0).hybrid
    m = h.maps[0]
    assert m.relative_range[0] == -1.0 and m.output_bound == 1.0
    assert any("trivial one" in n for n in h.notes)


def test_a_window_that_covers_T_is_exact():
    h = _analyze("exp(x)", T + 3, max_features=40).hybrid
    assert h.outside_tokens == 0 and h.exact.window == T and h.exact.pairs == T * (T + 1) // 2
    usable = [m for m in h.maps if m.usable]
    assert usable and all(m.output_bound == 0 and m.feature_ms == 0 for m in usable)
    q, k, v = _inputs(1.0, seed=3)
    spec = {j: float(c) for j, c in enumerate(usable[0].coefficients) if c != 0}
    o = hybrid_attention(q, k, v, spec, window=T + 3, backend="torch")
    assert float((o - _softmax(q, k, v)).abs().max()) <= 1e-12


def _meets_window(T, window, bm, bn):
    """(query block, key block) tiles holding a pair i - w < j <= i, counted pair by pair."""
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    inside = (j <= i) & (j > i - window)
    return len({(a // bm, b // bn) for a, b in zip(*np.nonzero(inside))})


@pytest.mark.parametrize("T, window", [(1, 1), (63, 7), (500, 64), (500, 600), (700, 129)])
def test_the_tiles_are_the_key_blocks_that_meet_the_window(T, window):
    c = cm.window_cost(T, window, 16, 64)
    bm, bn, bbm, bbn = c.blocks
    assert c.tiles == (_meets_window(T, window, bm, bn), _meets_window(T, window, bbm, bbn),
                       _meets_window(T, window, bbm, bbn))
    assert c.pairs == int(np.tril(np.ones((T, T)), 0).sum() - np.tril(np.ones((T, T)), -window).sum())
    c0, c1 = cm.WINDOW
    assert c.ms == pytest.approx(c0 + c1 * sum(c.flops) * 1e-12, rel=1e-12) and c.ms > c0 > 0 and c.floor_ms > 0


def test_the_window_constants_are_the_fit_of_hybrid_v17():
    run = json.loads(cm._WINDOW_RESULTS.read_text())
    assert run["device"] == "NVIDIA H200" and all(c["ok"] is True for c in run["checks"])
    constants, error = cm.fit_window([run])
    # WINDOW holds the fit to 4 significant digits
    assert constants == pytest.approx(cm.WINDOW, rel=5e-4)
    assert error <= cm.WINDOW_FIT_ERROR < error + 0.001
    rows = [r for r in run["rows"] if r["method"].strip() == "window kernel"]
    assert [r["T"] for r in rows] == [8192, 16384, 32768]
    for r in rows:
        predicted = cm.window_ms(r["T"], run["window"], run["D"], run["DV"], B=run["B"], H=run["H"])
        assert abs(predicted / r["fwd_bwd_ms"] - 1) <= cm.WINDOW_FIT_ERROR, (r, predicted)
    assert "hybrid_v17.json" in cm.WINDOW_CALIBRATION and "2.3 %" in cm.WINDOW_CALIBRATION
    assert f"{cm.WINDOW_FIT_ERROR:.1%}".replace("%", " %") in cm.WINDOW_CALIBRATION


def test_fit_window_refuses_a_failed_run():
    # RESULTS.md's first hybrid times: the check failed (o rel-RMS 0.20), so they cannot calibrate
    failed = {"dtype": "bfloat16", "B": 2, "H": 16, "D": 16, "DV": 64, "window": 512, "checks": [{"ok": False}],
              "rows": [{"T": 8192, "method": "  window kernel", "fwd_bwd_ms": 5.6},
                       {"T": 16384, "method": "  window kernel", "fwd_bwd_ms": 6.2}]}
    with pytest.raises(ValueError, match="passing correctness check"):
        cm.fit_window([failed])
    with pytest.raises(ValueError, match="passing correctness check"):
        cm.fit_window([dict(failed, checks=[])])
    meta = json.loads(cm._RESULTS.read_text())["meta"]
    assert (cm.RATE, cm.BANDWIDTH) == (meta["rate"], meta["bw"])


def test_json_text_html_and_the_command_line_carry_the_section(capsys):
    a = _analyze("exp(x)", 8, max_features=40)
    d = json.loads(a.to_json())["hybrid"]
    assert d["window"] == 8 and d["outside_tokens"] == T - 8
    assert d["exact_part"]["tiles_per_sequence"]["forward"] == a.hybrid.exact.tiles[0] > 0
    window = cm.window_ms(T, 8, D, DV)
    assert d["exact_part"]["predicted_ms"] == window > 0 and d["calibration"] == cm.WINDOW_CALIBRATION
    maps = [m for m in d["maps"] if m["usable"]]
    assert maps and all(m["relative_error_bound"] > 0 and m["feature_part"]["predicted_ms"] > 0 for m in maps)
    for m in maps:
        # outside sums at T - w tokens and v dim DV + 1, plus the window kernel: the model's formula
        outside = cm.ours_ms(m["features"], D, DV + 1, T - 8)
        assert m["feature_part"]["predicted_ms"] == pytest.approx(outside, rel=1e-12)
        assert m["window_part_ms"] == window
        assert m["predicted_ms"] == pytest.approx(outside + window, rel=1e-12)
    text, page = str(a), a._repr_html_()
    for m in a.hybrid.maps:
        assert m.text in text and m.text in page
    assert "exact part" in text and "Hybrid, window 8" in page and "uncalibrated" not in text
    for m in a.hybrid.maps:
        if m.usable:
            cell = f"outside {m.feature_ms:.3g} + window {m.window_ms:.3g} = {m.ms:.3g} vs SDPA {m.sdpa_ms:.3g}"
            assert cell in text and cell in page
    assert f"predicted {a.hybrid.exact.ms:.3g} ms" in text and cm.WINDOW_CALIBRATION in text
    assert main(["analyze", "1 + x + x**2/2", "--dim", "4", "--value-dim", "3", "--window", "8", "--seq-len", "40",
                 "--no-certify", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["hybrid"]
    assert [m["polynomial"] for m in out["maps"]] == ["1 + x + 0.5*x**2"] and out["exact_part"]["DV"] == 3
    assert main(["analyze", "1 + x + x**2/2", "--dim", "4", "--window", "8", "--seq-len", "40", "--no-certify"]) == 0
    assert "output error <= 0.0974 x range(v)" in capsys.readouterr().out
    assert json.loads(_analyze("exp(x)", None, max_features=40).to_json())["hybrid"] is None


@pytest.mark.parametrize("f, window, needle", [("exp(x)", -1, "window=-1 must be an int >= 0"),
                                               ("exp(x)", 2.5, "window=2.5 must be an int >= 0"),
                                               ("1 + x", 4, "f must be >= 0 on the reals; f(x) = 1 + x is not"),
                                               ("x**3", 4, "is not"),
                                               ("sin(x)", 4, "no candidate map of f = sin")])
def test_bad_input_is_refused(f, window, needle):
    with pytest.raises(KernelError, match=re.escape(needle)):
        _analyze(f, window, max_features=40)


def test_a_sequence_too_long_to_count_is_refused_before_the_analysis():
    with pytest.raises(KernelError, match="the longest sequence"):
        _analyze("exp(x)", 8, seq_len=cm.MAX_WINDOW_SEQ_LEN + 1)


def test_the_refusal_of_a_sign_changing_f_is_hybrid_attentions():
    q, k, v = _inputs(1.0, seed=0)
    with pytest.raises(KernelError) as ours:
        _analyze("1 + x", 4)
    with pytest.raises(KernelError) as theirs:
        hybrid_attention(q, k, v, "1 + x", window=4)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("argv, needle", [(["--window", "-1"], "--window: must be an integer >= 0"),
                                          (["--window", "4", "--value-dim", "0"], "--value-dim: must be an integer"),
                                          (["--window", "4"], "f must be >= 0 on the reals")])
def test_the_command_line_exits_2_with_one_line(capsys, argv, needle):
    spec = "1 + x" if argv == ["--window", "4"] else "exp(x)"
    assert main(["analyze", spec, "--dim", "4", "--no-certify"] + argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
