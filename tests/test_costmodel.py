"""fastattn.costmodel: the calibrated model reproduces the measured v15 cells within its stated error."""

import json
from pathlib import Path

import pytest

from fastattn import costmodel as cm

V15 = Path(__file__).resolve().parent.parent / "benchmarks" / "out" / "v15.json"


def test_it_reproduces_every_v15_cell_within_its_stated_error():
    cells = cm.cells()
    by_kind = {k: [c for c in cells if c.kind == k] for k in ("ours", "sdpa")}
    # 6 rows x 5 lengths + the b8 row at 2 lengths; SDPA d64 and d128 at 5 lengths
    assert (len(by_kind["ours"]), len(by_kind["sdpa"])) == (32, 10)
    for kind, rows in by_kind.items():
        worst = max(rows, key=lambda c: abs(c.error))
        assert abs(worst.error) <= cm.FIT_ERROR[kind], (kind, worst)


def test_the_constants_are_the_fit_of_the_table():
    fitted = cm.fit()
    for kind, stored in (("ours", cm.OURS), ("sdpa", cm.SDPA)):
        constants, error = fitted[kind]
        assert constants == pytest.approx(stored, rel=2e-3, abs=1e-9)
        assert error <= cm.FIT_ERROR[kind] < error + 0.01


def test_the_docstring_names_the_card_the_run_and_the_error():
    meta = json.loads(V15.read_text())["meta"]
    assert (meta["card"], meta["date"]) == (cm.CARD, cm.DATE) == ("NVIDIA H200", "2026-12-01")
    doc = cm.__doc__
    assert "NVIDIA H200, run v15 of 2026-12-01" in doc and "extrapolations" in doc
    assert "0.28 for ours" in doc and "0.37 for\nSDPA" in doc


def test_the_budget_is_where_ours_stops_beating_sdpa():
    F = cm.max_features(64, 64, 8192)
    assert cm.ours_ms(F, 64, 64, 8192) < cm.sdpa_ms(64, 8192) <= cm.ours_ms(F + 1, 64, 64, 8192)
    assert cm.max_features(64, 64, 65536) > cm.max_features(64, 64, 32768) > F
    # no map pays back its ~1.1 ms of launches against SDPA at d4, 8K
    assert cm.max_features(4, 4, 8192) == 0


def test_it_is_not_a_flop_count():
    # the fixed cost: a map of 1 feature is not free, and a padded block costs the same at 1 and 64 features
    assert cm.ours_ms(1, 64, 64, 2048) > 1.0
    assert cm.ours_ms(1, 64, 64, 8192) == cm.ours_ms(64, 64, 64, 8192) < cm.ours_ms(65, 64, 64, 8192)


@pytest.mark.parametrize("call, needle", [(lambda: cm.ours_ms(0, 64), "F=0"), (lambda: cm.sdpa_ms(64, -1), "T=-1"),
                                          (lambda: cm.max_features(64, 64, 0), "T=0")])
def test_bad_shapes_are_refused(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()


def test_sdpa_at_a_small_qk_dim_is_costed_at_the_wider_v():
    # hybrid run v17: q/k d16, v d64; cuDNN pads both to 64, so costing SDPA at d16 predicted a third of it
    run = json.loads((V15.parent / "hybrid_v17.json").read_text())
    rows = [r for r in run["rows"] if r["method"].strip() == "sdpa causal"]
    assert [r["T"] for r in rows] == [8192, 16384, 32768]
    for r in rows:
        got = cm.sdpa_ms(run["D"], r["T"], DV=run["DV"], B=run["B"], H=run["H"])
        assert abs(got / r["fwd_bwd_ms"] - 1) <= 0.4, (r, got)
    assert cm.sdpa_ms(16, 8192, DV=64) == cm.sdpa_ms(64, 8192) > cm.sdpa_ms(16, 8192)


def test_flash_constants_are_the_fit_of_run_v19_and_within_their_stated_error():
    import json
    from pathlib import Path

    from fastattn.kernels.poly_flash import cost

    fitted, err = cm.fit_flash()
    assert fitted == pytest.approx(cm.FLASH, rel=1e-3) and err <= cm.FLASH_FIT_ERROR
    run = json.loads((Path(cm.__file__).parent.parent / "benchmarks" / "out" / "poly_flash_v19.json").read_text())
    shapes = {"1+x+x²/2 d64": (2, 16, 64), "x² d64": (2, 16, 64), "1+x+x²/2 d128 h8": (2, 8, 128)}
    cells = [r for r in run["rows"] if r["T"] >= 4096]
    assert len(cells) == 12
    for r in cells:
        B, H, D = shapes[r["row"]]
        assert abs(cm.flash_ms(D, D, r["T"], B=B, H=H) / r["flash"][1] - 1) <= cm.FLASH_FIT_ERROR + 1e-9, r
    assert cost(4096, 64, 64)["fwdbwd"] > 0


@pytest.mark.parametrize("F, D, T, degree, flash", [
    (2145, 64, 8192, 2, True), (2145, 64, 65536, 2, False), (8385, 128, 32768, 2, True),
    (153, 16, 2048, 2, False), (2145, 64, 8192, 9, False), (20000, 160, 8192, 2, False)])
def test_layer_ms_is_the_faster_route_the_layer_can_take(F, D, T, degree, flash):
    ms = cm.layer_ms(F, D, D, T, degree=degree)
    assert ms == (min(cm.ours_ms(F, D, D, T), cm.flash_ms(D, D, T)) if flash else cm.ours_ms(F, D, D, T))
    assert ms <= cm.ours_ms(F, D, D, T)
