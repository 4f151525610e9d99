"""The fastattn CLI: analyze and check, JSON keys, exit codes, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastattn.cli import COMMANDS, main, register_command


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_json(capsys):
    code, out, _ = run(capsys, "analyze", "1 + x + x**2/2", "--dim", "3", "--json")
    d = json.loads(out)
    assert code == 0
    assert (d["kind"], d["low_rank"], d["rank_bound"], d["feature_dim"]) == ("polynomial", True, 10, 10)
    assert d["certificate"]["check"] == "low-rank"


def test_analyze_text_and_plot(capsys, tmp_path):
    png = tmp_path / "out.png"
    code, out, _ = run(capsys, "analyze", "exp(x)", "--dim", "4", "--n-witness", "6", "--plot", str(png))
    assert code == 0 and "low rank" in out and png.stat().st_size > 0


def _png_dpi(path) -> float:
    """Dots per inch from a PNG's pHYs chunk (pixels per metre)."""
    import struct

    data = path.read_bytes()
    i = data.index(b"pHYs")
    x, y, unit = struct.unpack(">IIB", data[i + 4:i + 13])
    assert unit == 1 and x == y
    return x * 0.0254


def test_analyze_recommends_within_the_budget_and_plots_at_200_dpi(capsys, tmp_path):
    png = tmp_path / "spectrum.png"
    code, out, _ = run(capsys, "analyze", "exp(x)", "--dim", "64", "--no-certify", "--json", "--plot", str(png))
    d = json.loads(out)
    assert code == 0 and d["plot"] == str(png) and _png_dpi(png) >= 199.9
    assert d["budget"]["features"] == 448 and 3 <= len(d["candidates"]) <= 5
    assert all(c["features"] <= 448 and c["error_bound"] > 0 for c in d["candidates"])
    assert d["feature_map"]["dim"] == d["candidates"][0]["features"]


def test_analyze_max_features_and_seq_len(capsys):
    code, out, _ = run(capsys, "analyze", "exp(x)", "--dim", "16", "--no-certify", "--max-features", "200",
                       "--seq-len", "65536", "--eps", "0.05", "--json")
    d = json.loads(out)
    assert code == 0 and d["budget"]["features"] == 200 and d["budget"]["seq_len"] == 65536
    top = d["candidates"][0]
    assert (top["method"], top["degree"], top["features"]) == ("minimax", 2, 153)
    assert top["predicted_ms"] < top["sdpa_ms"]


@pytest.mark.parametrize("option, value", [("--max-features", "0"), ("--max-features", "-5"), ("--seq-len", "0"),
                                           ("--seq-len", "-1")])
def test_analyze_refuses_a_budget_below_one(capsys, option, value):
    code, out, err = run(capsys, "analyze", "exp(x)", option, value)
    assert code == 2 and out == ""
    assert f"argument {option}: must be an integer >= 1, got {value}" in err and len(err.strip().splitlines()) == 1


def test_check_json(capsys):
    code, out, _ = run(capsys, "check", "tanh(x)", "--n", "8", "--json")
    d = json.loads(out)
    assert code == 0
    assert d["low_rank"] is False and d["rank_bound"] is None
    assert d["certificate"]["verified"] is True and d["certificate"]["numbers"]["n"] == 8


def test_check_all_properties(capsys):
    code, out, _ = run(capsys, "check", "sqrt(x)", "--property", "all", "--n", "6", "--json")
    d = json.loads(out)
    assert code == 0 and set(d["checks"]) == {"rank", "preservation", "pd", "metric"}


@pytest.mark.parametrize("argv,needle", [
    (["analyze", "expp(x)"], "did you mean exp"),
    (["check", "__import__('os')"], "__import__"),
    (["check", "exp(x)", "--n", "0"], "n=0"),
    (["analyze", "x", "--param", "tau"], "name=value"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_registry_accepts_new_commands(capsys):
    def add(p):
        p.add_argument("--x", type=int, default=1)

    def go(args):
        """Say hello."""
        print("hello", args.x)
        return 0

    register_command("hello", add, go)
    try:
        code, out, _ = run(capsys, "hello", "--x", "3")
        assert (code, out.strip()) == (0, "hello 3")
    finally:
        COMMANDS[:] = [c for c in COMMANDS if c[0] != "hello"]


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "fastattn.cli", "check", "x**2", "--dim", "2", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rank_bound"] == 3


# -- errors, paths and pipes (issue 13, section 6) ---------------------------------------------------
def _one_line(err):
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_plot_into_a_missing_directory_exits_2_before_the_analysis(capsys, tmp_path):
    png = tmp_path / "nodir" / "p.png"
    code, out, err = run(capsys, "analyze", "exp(x)", "--plot", str(png))
    assert (code, out) == (2, "") and not png.parent.exists()
    assert f"--plot '{png}': the directory '{png.parent}' does not exist" in _one_line(err)


@pytest.mark.parametrize("argv, kind, needle", [
    (["analyze", "expp(x)", "--json"], "SpecError", "did you mean exp"),
    (["analyze", "x", "--dim", "abc", "--json"], "UsageError", "invalid int value: 'abc'"),
    (["analyze", "x", "--plot", "nodir/p.png", "--json"], "PathError", "'nodir' does not exist"),
    (["check", "exp(x)", "--n", "0", "--json"], "CertificateError", "n=0"),
])
def test_json_errors_are_an_object_on_stdout(capsys, argv, kind, needle):
    code, out, err = run(capsys, *argv)
    d = json.loads(out)
    assert code == 2 and err == "" and set(d) == {"error", "kind"}
    assert needle in d["error"] and d["kind"] == kind


def test_usage_errors_are_one_line(capsys):
    code, out, err = run(capsys, "analyze", "x", "--dim", "abc")
    assert code == 2 and out == ""
    assert "argument --dim: invalid int value: 'abc' (see fastattn analyze --help)" in _one_line(err)


def test_generate_refuses_a_directory_and_a_path_under_a_file(capsys, tmp_path):
    (tmp_path / "pkg.py").mkdir()
    code, _, err = run(capsys, "generate", "1 + x + x**2/2", "-o", str(tmp_path / "pkg.py"), "--force")
    assert code == 2 and "is a directory" in _one_line(err) and str(tmp_path / "pkg.py") in err
    code, _, err = run(capsys, "generate", "1 + x + x**2/2", "-o", str(tmp_path))
    assert code == 2 and "must end in .py" in _one_line(err)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "generate", "1 + x + x**2/2", "-o", str(blocker / "sub" / "g.py"))
    assert code == 2 and f"lies under '{blocker}', which is not a directory" in _one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "pkg.py"]


def test_generate_unwritable_path_exits_2_and_leaves_no_tmp(capsys, tmp_path, monkeypatch):
    from fastattn.kernels import codegen

    def fail(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(codegen.os, "replace", fail)
    out = tmp_path / "g.py"
    code, _, err = run(capsys, "generate", "1 + x + x**2/2", "-o", str(out))
    assert code == 2 and f"cannot write '{out}': Permission denied" in _one_line(err)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .tmp


def test_generate_refuses_to_overwrite_without_force(capsys, tmp_path):
    out = tmp_path / "g.py"
    out.write_text("# mine\n")
    code, _, err = run(capsys, "generate", "1 + x + x**2/2", "-o", str(out))
    assert code == 2 and "exists; pass force=True (--force)" in _one_line(err)
    assert out.read_text() == "# mine\n"
    code, _, _ = run(capsys, "generate", "1 + x + x**2/2", "-o", str(out), "--force")
    assert code == 0 and "COEFFS = {0: 1.0, 1: 1.0, 2: 0.5}" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.py"]


@pytest.mark.parametrize("argv, needle", [
    (["--head-dim", "100000"], "head_dim_qk=100000 is above 256"),
    (["--head-dim", "64", "--head-dim-v", "512"], "head_dim_v=512 is above 256"),
    (["--head-dim", "0"], "head_dim_qk=0 must be a positive int"),
])
def test_generate_refuses_head_dims_the_kernels_cannot_serve(capsys, tmp_path, argv, needle):
    out = tmp_path / "g.py"
    code, _, err = run(capsys, "generate", "1 + x + x**2/2", "-o", str(out), *argv)
    assert code == 2 and needle in _one_line(err) and not out.exists()


def test_generate_refuses_too_many_features(capsys, tmp_path):
    out = tmp_path / "g.py"
    code, _, err = run(capsys, "generate", "(1+x)**8", "-o", str(out), "--head-dim", "64")
    assert code == 2 and not out.exists()
    assert "needs 11,969,016,345 features at head dim 64" in _one_line(err) and "the limit is 1,048,576" in err


def test_a_cache_that_is_a_file_exits_2(capsys, tmp_path, monkeypatch):
    from fastattn.kernels.codegen import cache_dir

    a_file = tmp_path / "cache"
    a_file.write_text("")
    monkeypatch.setenv("FASTATTN_CACHE", str(a_file))

    def go(args):
        """Touch the kernel cache."""
        cache_dir()
        return 0

    register_command("cachetouch", lambda p: None, go)
    try:
        code, _, err = run(capsys, "cachetouch")
    finally:
        COMMANDS[:] = [c for c in COMMANDS if c[0] != "cachetouch"]
    assert code == 2 and f"the kernel cache '{a_file}' (FASTATTN_CACHE) is not a directory" in _one_line(err)


def test_a_bug_still_tracebacks(capsys):
    def go(args):
        """Fail like a bug."""
        raise KeyError("bug")

    register_command("buggy", lambda p: None, go)
    try:
        with pytest.raises(KeyError, match="bug"):
            main(["buggy"])
    finally:
        COMMANDS[:] = [c for c in COMMANDS if c[0] != "buggy"]


def test_broken_pipe_exits_quietly():
    """`fastattn analyze x | head -c 0`: the reader is gone before anything is written."""
    p = subprocess.Popen([sys.executable, "-m", "fastattn.cli", "analyze", "x", "--no-certify"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipeError" not in err and err == ""


# -- bench ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["table"], ["table", "--rows", "sdpa", "--json", "run.json"], ["check", "--quick"],
                                  ["sweep", "--row", "x:64:64:0"]])
def test_bench_gpu_commands_without_a_gpu_exit_2_with_one_line(capsys, monkeypatch, argv):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run(capsys, "bench", *argv)
    assert code == 2 and out == ""
    assert f"{argv[0]} needs a CUDA GPU" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bench_needs_a_subcommand_and_a_known_row(capsys, monkeypatch):
    import torch

    code, _, err = run(capsys, "bench")
    assert code == 2 and "SUBCOMMAND" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the row is refused before any GPU work
    code, _, err = run(capsys, "bench", "table", "--rows", "nosuchrow")
    assert code == 2 and "no row matches" in err and len(err.strip().splitlines()) == 1


def test_bench_sweep_hands_every_argument_to_the_script(capsys, monkeypatch):
    import subprocess as sp

    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sp, "run", lambda cmd, **kw: calls.append(cmd) or sp.CompletedProcess(cmd, 3))
    code, _, _ = run(capsys, "bench", "sweep", "--row", "x:64:64:0", "--T", "8192", "--help")
    assert code == 3
    assert calls[0][0] == sys.executable and calls[0][1].endswith("benchmarks/sweep.py")
    assert calls[0][2:] == ["--row", "x:64:64:0", "--T", "8192", "--help"]


@pytest.mark.parametrize("name", ["hybrid", "sparse", "flurka", "flash", "gated", "memory"])
def test_bench_script_commands_run_their_script_and_need_a_gpu(capsys, monkeypatch, name):
    import subprocess as sp

    import torch

    from fastattn.bench import BENCHMARKS, SCRIPTS

    assert (BENCHMARKS / SCRIPTS[name][0]).is_file()
    calls = []
    monkeypatch.setattr(sp, "run", lambda cmd, **kw: calls.append(cmd) or sp.CompletedProcess(cmd, 0))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run(capsys, "bench", name, "--json", "x.json")
    assert code == 2 and calls == [] and f"{name} needs a CUDA GPU" in err
    code, _, _ = run(capsys, "bench", name, "--help")  # help needs no GPU
    assert code == 0 and calls[0][1].endswith("benchmarks/" + SCRIPTS[name][0]) and calls[0][2:] == ["--help"]


def test_bench_hybrid_prints_a_saved_runs_table_with_predictions_on_any_machine(capsys):
    p = subprocess.run([sys.executable, "-m", "fastattn.cli", "bench", "hybrid", "--table",
                        "benchmarks/out/hybrid_v19.json"], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parent.parent)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line.split(" | ") for line in p.stdout.splitlines() if line.startswith("| 65536 |")]
    cells = {r[1].strip(): r for r in rows}
    # predicted: the window kernel plus the outside sums, as fastattn analyze --window says
    pred = {k: float(v[4]) for k, v in cells.items() if v[4] != "-"}
    assert set(pred) == {"hybrid", "window kernel", "outside sums", "sdpa causal"}
    assert pred["hybrid"] == pytest.approx(pred["window kernel"] + pred["outside sums"], abs=2e-3)
    assert float(cells["hybrid"][3]) == pytest.approx(20.287, abs=1e-3)  # the measured fwd+bwd of run v19


def test_check_json_low_rank_comes_from_the_certificate(capsys):
    # a polynomial is low rank by the identity; "no" needs a verified full-rank witness; a check that
    # built no rank certificate (here: only pd) says nothing about rank
    assert main(["check", "x**2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["low_rank"] is True
    assert main(["check", "tanh(x)", "--n", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["low_rank"] is False and out["certificate"]["verified"] is True
    assert main(["check", "tanh(x)", "--property", "pd", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["low_rank"] is None
