"""The fastattn CLI: analyze and check, JSON keys, exit codes, one-line errors."""

import json
import subprocess
import sys

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
