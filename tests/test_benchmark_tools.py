"""The benchmark package's CPU side (``fastattn.bench``): rows, floors, targets and the markdown table,
the plot of a saved run, the case strings, ``fastattn bench table --from-json`` / ``plot`` on a saved
run, and the scripts in benchmarks/ that forward to it. The GPU run writes the JSON these read."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastattn.bench import cases, plot, table
from fastattn.cli import main

ROOT = Path(__file__).resolve().parent.parent
V16 = ROOT / "benchmarks" / "out" / "v16.json"
META = dict(card="H200", date="2026-12-01", torch="2", triton="3", fla="0", power="1.4.4", command="c",
            rate=7e14, bw=4e12, check_ok=True)


def _script(name):
    """A wrapper script of benchmarks/, loaded as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cells(fwdbwd, graph=None, **extra):
    cell = {"fwd": fwdbwd / 3, "fwdbwd": fwdbwd, "peak_mib": 100.0, **extra}
    if graph is not None:
        cell["fwdbwd_graph"] = graph
    return cell


def _run(rows):
    """A saved run of ``rows`` ({name: {T: cell}}), as ``fastattn bench table --json`` writes it."""
    return {"meta": META, "check_lines": [], "results": {n: {str(t): c for t, c in cells.items()}
                                                         for n, cells in rows.items()}}


@pytest.mark.parametrize("text, with_T, want", [
    ("1 + x + x**2/2:16:64:1:8192", True, ("1 + x + x**2/2", 16, 64, True, 8192)),
    ("(1+x)**3:16:64:0", False, ("(1+x)**3", 16, 64, False)),
])
def test_cases_parse(text, with_T, want):
    assert cases.parse_case(text, with_T) == want
    assert _script("cases").parse_case(text, with_T) == want


@pytest.mark.parametrize("text", ["x:64:64:2:8192", "x:64:64:1", "x:d64:64:1:8192", "x"])
def test_cases_reject_malformed_strings_with_the_expected_form(text):
    with pytest.raises(SystemExit, match="expected spec:D:DV:normalize:T"):
        cases.parse_case(text)


def test_a_recorded_run_draws_every_row_and_each_floor():
    data = json.loads(V16.read_text())
    fig = plot.figure(data)
    rows = list(data["results"])
    ours = [r for r in rows if r.startswith("ours")]
    assert ours and len(ours) < len(rows)
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
    data = {"results": {"sdpa d64": {"2048": {"fwd": 0.1, "fwdbwd": 0.4}, "65536": {"fwd": None, "fwdbwd": None},
                                     "8192": {"fwd": 1.0, "fwdbwd": 3.8}}}}
    assert plot.series(data, "sdpa d64", "fwd") == ([2048, 8192], [0.1, 1.0])
    fig = plot.figure(data)
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [2048, 8192]


def test_bad_input_is_an_error_not_an_empty_figure(tmp_path, capsys):
    with pytest.raises(ValueError, match="results"):
        plot.figure({"meta": {}})
    with pytest.raises(ValueError, match="not in this run"):
        plot.figure({"results": {"a": {}}}, rows=["b"])
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["bench", "plot", str(bad), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "fastattn bench: error" in err and "not JSON" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_fastattn_bench_plot_writes_a_png(tmp_path, capsys):
    out = tmp_path / "run.png"
    assert main(["bench", "plot", str(V16), "-o", str(out), "--rows", "ours x d64", "sdpa d64"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in capsys.readouterr().out


def test_the_old_plot_script_still_draws(tmp_path):
    out = tmp_path / "run.png"
    assert _script("plot").main([str(V16), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_from_json_renders_the_recorded_run_with_its_targets(tmp_path, capsys):
    out = tmp_path / "RESULTS.md"
    out.write_text("# results\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n\nthe decision log stays\n")
    assert main(["bench", "table", "--from-json", str(V16), "--results", str(out)]) == 0
    text = out.read_text()
    assert "| ours x d64 | 8K | 0.12 | 0.88 | 296 | 0.032 / 0.095 |  |" in text
    assert "| 1. 1+x+x²/2 d64 vs SDPA d64 fwd+bwd at 8K | 0.34 | >= 1x | no |" in text
    assert "rows not timed: fla linear_attn d64" in text
    assert "old" not in text and text.endswith("the decision log stays\n")


def test_a_run_split_over_two_files_renders_as_the_whole(tmp_path):
    import json

    data = json.loads(V16.read_text())
    parts = []
    for i, keep in enumerate((lambda n: n.startswith("ours"), lambda n: not n.startswith("ours"))):
        part = dict(data, results={n: c for n, c in data["results"].items() if keep(n)})
        parts.append(tmp_path / f"part{i}.json")
        parts[-1].write_text(json.dumps(part))
    whole, split = tmp_path / "whole.md", tmp_path / "split.md"
    for f in (whole, split):
        f.write_text("<!-- bench:begin -->\n<!-- bench:end -->\n")
    assert main(["bench", "table", "--from-json", str(V16), "--results", str(whole)]) == 0
    assert main(["bench", "table", "--from-json", *map(str, parts), "--results", str(split)]) == 0
    # one command line (both parts recorded the same), every row and target of the whole
    assert split.read_text() == whole.read_text()
    other = dict(data, meta=dict(data["meta"], card="another card"))
    parts[1].write_text(json.dumps(other))
    with pytest.raises(ValueError, match="different cards"):
        table.merge_runs(parts)


def test_the_results_file_is_what_the_code_renders_from_the_latest_run(tmp_path):
    # RESULTS.md's table is the latest run (v16) as this code writes it, not a hand edit
    out = tmp_path / "RESULTS.md"
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    out.write_text(text)
    assert table.render_saved(V16, out) == 0
    assert out.read_text() == text


def test_bench_table_has_a_graph_column_only_when_timed():
    cell = {"fwd": 0.3, "fwdbwd": 1.0, "peak_mib": 100.0}
    plain = table.render(META, {"sdpa d64": {2048: dict(cell)}}, [2048], ["sdpa d64"], [], [])
    assert "| sdpa d64 | 2K | 0.30 | 1.00 | 100 |  |  |" in plain and "graph" not in plain
    res = {"sdpa d64": {2048: dict(cell, fwdbwd_graph=0.25)}, "fla x": {2048: dict(cell, fwdbwd_graph=None)}}
    both = table.render(META, res, [2048], ["sdpa d64", "fla x"], [], [])
    assert "| row | T | fwd ms | fwd+bwd ms | fwd+bwd graph ms | peak MiB |" in both
    assert "| sdpa d64 | 2K | 0.30 | 1.00 | 0.25 | 100 |  |  |" in both
    assert "| fla x | 2K | 0.30 | 1.00 | n/a | 100 |  |  |" in both


def test_targets_read_the_graph_column_beside_the_eager_one():
    res = {"ours 1+x+x²/2 d64": {8192: _cells(2.0, graph=1.9), 32768: _cells(10.0, graph=9.0)},
           "sdpa d64": {8192: _cells(2.3, graph=2.2), 32768: _cells(35.6, graph=35.5)}}
    tgt = {name: (value, ok) for name, value, _, ok in table.targets(res, [8192, 32768])}
    assert tgt["1. 1+x+x²/2 d64 vs SDPA d64 fwd+bwd at 8K"] == (pytest.approx(2.3 / 2.0), True)
    assert tgt["1. 1+x+x²/2 d64 vs SDPA d64 fwd+bwd (graph) at 8K"] == (pytest.approx(2.2 / 1.9), True)
    # 4x is needed at 32K: 3.56x misses it
    assert tgt["1. 1+x+x²/2 d64 vs SDPA d64 fwd+bwd at 32K"] == (pytest.approx(3.56), False)
    # a run without the graph column has no graph rows
    plain = {n: {t: {k: v for k, v in c.items() if k != "fwdbwd_graph"} for t, c in cells.items()}
             for n, cells in res.items()}
    assert not any("graph" in name for name, *_ in table.targets(plain, [8192, 32768]))


def test_targets_compare_with_the_peer_at_its_best_and_the_floor():
    res = {"ours x² d64": {8192: _cells(3.0, floor_fwdbwd=0.5)},
           "power_full deg2 d64": {8192: _cells(7.5, setting="chunk 1024")},
           "ours x d64": {8192: _cells(1.0)}, "fla linear_attn d64": {8192: _cells(1.2, setting="chunk")}}
    tgt = {name: (value, need, ok) for name, value, need, ok in table.targets(res, [8192])}
    assert tgt["3. x² d64 vs power_full deg 2 (best setting) fwd+bwd at 8K"] == (pytest.approx(2.5), ">= 2x", True)
    assert tgt["4. ours x² d64 fwd+bwd / own floor at 8K"] == (pytest.approx(6.0), "<= 3", False)
    assert tgt["5. x d64 vs fla linear_attn (best kernel) fwd+bwd at 8K"] == (pytest.approx(1.2), ">= 1.25x", False)


def test_the_table_names_the_setting_each_peer_won_with():
    res = {"power_full deg2 d64": {8192: _cells(7.5, setting="chunk 1024", fwd_setting="chunk 256")},
           "sdpa d64": {8192: _cells(2.3, setting="cuDNN (default)", fwd_setting="cuDNN (default)")}}
    text = table.render(META, res, [8192], list(res), [], [])
    assert "| power_full deg2 d64 | 8K | 2.50 | 7.50 | 100 |  | chunk 1024 (fwd: chunk 256) |" in text
    assert "| sdpa d64 | 8K | 0.77 | 2.30 | 100 |  | cuDNN (default) |" in text


def test_every_row_names_a_known_kind_and_ours_have_a_feature_count():
    from fastattn.kernels.poly import polynomial

    assert len({r.name for r in table.ROWS}) == len(table.ROWS)
    for row in table.OURS:
        assert polynomial(row.spec).feature_dim(row.D) >= 1
    assert {r.name.split()[0] for r in table.ROWS} == {"ours", "sdpa", "power_full", "fla"}


def test_floors_are_those_of_the_recorded_run():
    data = json.loads(V16.read_text())
    rate, bw = data["meta"]["rate"], data["meta"]["bw"]
    for row in table.OURS:
        for t, cell in data["results"].get(row.name, {}).items():
            got = table.floor_ms(row, int(t), rate, bw)
            # v15's meta holds the ceilings rounded to the log's 3 digits: 0.2 % slack
            assert got == (pytest.approx(cell["floor_fwd"], rel=2e-3), pytest.approx(cell["floor_fwdbwd"], rel=2e-3))


def test_a_saved_run_cut_short_renders_with_the_missing_rows_named(tmp_path, capsys):
    run = tmp_path / "run.json"
    data = dict(_run({"sdpa d64": {8192: _cells(2.3, setting="cuDNN (default)")}}), partial=True,
                check_lines=["ours x d64 T=4096 o: ok"])
    run.write_text(json.dumps(data))
    out = tmp_path / "RESULTS.md"
    # the old script forwards to the command and writes the same file
    assert _script("bench").main(["--from-json", str(run), "--results", str(out)]) == 0
    text = out.read_text()
    assert "| sdpa d64 | 8K | 0.77 | 2.30 | 100 |  | cuDNN (default) |" in text
    assert "rows not timed: ours 1+x+x²/2 d16 v64," in text and "ours x d64 T=4096 o: ok" in text
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["bench", "table", "--from-json", str(bad), "--results", str(out)]) == 2
    assert "needs 'meta' and 'results'" in capsys.readouterr().err


def test_from_json_into_a_missing_directory_is_refused_before_any_work(tmp_path, capsys):
    assert main(["bench", "table", "--from-json", str(V16), "--results", str(tmp_path / "no" / "R.md")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1


def test_importing_fastattn_and_the_cli_loads_no_timing_code():
    code = ("import sys, fastattn, fastattn.cli, fastattn.bench; fastattn.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('triton.testing', 'fla', 'power_attention', "
            "'matplotlib', 'fastattn.bench.timing')) or m == 'triton'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_a_table_run_writes_results_json_and_plot_with_the_gpu_parts_stubbed(tmp_path, monkeypatch, capsys):
    import torch

    from fastattn.bench import timing

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stub GPU")
    monkeypatch.setattr(timing, "ceilings", lambda: (685e12, 4.22e12))  # v15's ceilings
    monkeypatch.setattr(timing, "check_ours", lambda rows: (True, ["stub check: ok"], []))
    timed = []
    monkeypatch.setattr(timing, "time_row", lambda name, T, **kw: timed.append((name, T)) or _cells(2.0, setting="s"))
    results, run, png = tmp_path / "RESULTS.md", tmp_path / "run.json", tmp_path / "run.png"
    assert main(["bench", "table", "--T", "8192", "--rows", "ours x d64", "sdpa d64", "--results", str(results),
                 "--json", str(run), "--plot", str(png)]) == 0
    assert timed == [("ours x d64", 8192), ("sdpa d64", 8192)]
    text = results.read_text()
    assert "| ours x d64 | 8K | 0.67 | 2.00 | 100 | 0.032 / 0.095 | s |" in text
    assert "Card: stub GPU;" in text and "stub check: ok" in text
    assert "Command: `fastattn bench table --T 8192 --rows 'ours x d64' 'sdpa d64' --warmup 100 --rep 100`" in text
    data = json.loads(run.read_text())
    assert "partial" not in data and set(data["results"]) == {"ours x d64", "sdpa d64"}
    assert data["results"]["ours x d64"]["8192"]["floor_fwdbwd"] == pytest.approx(0.095, abs=5e-4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
