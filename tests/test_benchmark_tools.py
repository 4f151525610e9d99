"""The benchmark scripts' CPU-side helpers: plot.py (the figure of a bench.py run; the GPU run writes
the JSON it reads) and cases.py (the spec:D:DV:normalize:T strings)."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _plot():
    return _load("plot")


@pytest.mark.parametrize("text, with_T, want", [
    ("1 + x + x**2/2:16:64:1:8192", True, ("1 + x + x**2/2", 16, 64, True, 8192)),
    ("(1+x)**3:16:64:0", False, ("(1+x)**3", 16, 64, False)),
])
def test_cases_parse(text, with_T, want):
    assert _load("cases").parse_case(text, with_T) == want


@pytest.mark.parametrize("text", ["x:64:64:2:8192", "x:64:64:1", "x:d64:64:1:8192", "x"])
def test_cases_reject_malformed_strings_with_the_expected_form(text):
    with pytest.raises(SystemExit, match="expected spec:D:DV:normalize:T"):
        _load("cases").parse_case(text)


def test_a_recorded_run_draws_every_row_and_each_floor():
    plot = _plot()
    data = json.loads((ROOT / "benchmarks" / "out" / "v12.json").read_text())
    fig = plot.figure(data)
    rows = list(data["results"])
    ours = [r for r in rows if r.startswith("ours")]
    for ax in fig.axes[:2]:
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels == [x for r in rows for x in ([r, f"{r}: floor"] if r in ours else [r])]
    # the drawn points are the recorded ones, T ascending
    line = fig.axes[1].get_lines()[0]
    cells = data["results"][rows[0]]
    Ts = sorted(int(t) for t in cells)
    assert list(line.get_xdata()) == Ts
    assert list(line.get_ydata()) == [cells[str(t)]["fwdbwd"] for t in Ts]


def test_out_of_memory_cells_leave_gaps():
    plot = _plot()
    data = {"results": {"sdpa d64": {"2048": {"fwd": 0.1, "fwdbwd": 0.4}, "65536": {"fwd": None, "fwdbwd": None},
                                     "8192": {"fwd": 1.0, "fwdbwd": 3.8}}}}
    assert plot.series(data, "sdpa d64", "fwd") == ([2048, 8192], [0.1, 1.0])
    fig = plot.figure(data)
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [2048, 8192]


def test_bad_input_is_an_error_not_an_empty_figure(tmp_path, capsys):
    plot = _plot()
    with pytest.raises(ValueError, match="results"):
        plot.figure({"meta": {}})
    with pytest.raises(ValueError, match="not in this run"):
        plot.figure({"results": {"a": {}}}, rows=["b"])
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert plot.main([str(bad), "-o", str(tmp_path / "x.png")]) == 2
    assert "plot.py: error" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_the_command_writes_an_image(tmp_path):
    plot = _plot()
    out = tmp_path / "run.png"
    assert plot.main([str(ROOT / "benchmarks" / "out" / "v12.json"), "-o", str(out),
                      "--rows", "ours x d64", "fla chunk_linear_attn"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_table_has_a_graph_column_only_when_timed():
    bench = _load("bench")
    meta = dict(card="H200", date="2026-11-30", torch="2", triton="3", fla="0", command="c", rate=7e14, bw=4e12,
                check_ok=True)
    cell = {"fwd": 0.3, "fwdbwd": 1.0, "peak_mib": 100.0}
    plain = bench.render(meta, {"sdpa d64": {2048: dict(cell)}}, [2048], ["sdpa d64"], [], [])
    assert "| sdpa d64 | 2K | 0.30 | 1.00 | 100 |  |" in plain and "graph" not in plain
    res = {"sdpa d64": {2048: dict(cell, fwdbwd_graph=0.25)}, "fla x": {2048: dict(cell, fwdbwd_graph=None)}}
    both = bench.render(meta, res, [2048], ["sdpa d64", "fla x"], [], [])
    assert "| row | T | fwd ms | fwd+bwd ms | fwd+bwd graph ms | peak MiB |" in both
    assert "| sdpa d64 | 2K | 0.30 | 1.00 | 0.25 | 100 |  |" in both
    assert "| fla x | 2K | 0.30 | 1.00 | n/a | 100 |  |" in both


def test_targets_read_the_graph_column_beside_the_eager_one():
    bench = _load("bench")
    data = json.loads((ROOT / "benchmarks" / "out" / "v14.json").read_text())
    res = {name: {int(t): cell for t, cell in cells.items()} for name, cells in data["results"].items()}
    tgt = {name: (value, ok) for name, value, _, ok in bench.targets(res, sorted({t for c in res.values() for t in c}))}
    # the recorded run: x d64 fwd+bwd is within 1.15x of chunk_linear_attn eagerly at 8K, not on device time
    eager, graph = tgt["3. x d64 fwdbwd time / chunk_linear_attn at 8K"], tgt[
        "3. x d64 fwdbwd (graph) time / chunk_linear_attn at 8K"]
    x, fla = res["ours x d64"][8192], res["fla chunk_linear_attn"][8192]
    assert eager == (pytest.approx(x["fwdbwd"] / fla["fwdbwd"]), True)
    assert graph == (pytest.approx(x["fwdbwd_graph"] / fla["fwdbwd_graph"]), False)
    assert tgt["2. d64 degree 2 fwd+bwd (graph) vs SDPA d64 at 16K"][1]
    # a run without the graph column has no graph rows
    plain = {n: {t: {k: v for k, v in c.items() if k != "fwdbwd_graph"} for t, c in cells.items()}
             for n, cells in res.items()}
    assert not any("graph" in name for name, *_ in bench.targets(plain, [8192, 16384, 32768, 65536]))
