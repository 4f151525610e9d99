"""``fastattn bench quality`` on the CPU: the MQAR generator's exact structure, a tiny training run per
kind of attention, the standard-library split of the bytes LM, and the command line."""
import json
import math

import pytest
import torch

from fastattn.bench import quality as Q
from fastattn.cli import main


@pytest.fixture
def one_thread():
    # two threads on a loaded two-core machine spin against each other: a tiny model trains 50x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- the MQAR generator ---------------------------------------------------------------------------
@pytest.mark.parametrize("batch, T, n, vocab", [(8, 16, 4, 32), (5, 64, 4, 8192), (3, 257, 37, 100), (4, 8, 2, 6)],
                         ids=["full", "sparse", "odd-T", "tightest-vocab"])
def test_mqar_batch_has_exactly_the_stated_structure(batch, T, n, vocab):
    x, y = Q.mqar_batch(batch, T, n, vocab, generator=torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (batch, T) and x.dtype == y.dtype == torch.long
    half = vocab // 2
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        keys, values = row_x[0:2 * n:2], row_x[1:2 * n:2]
        assert len(set(keys)) == n, "keys repeat within a sequence"
        assert all(1 <= k < half for k in keys) and all(half <= v < vocab for v in values)
        pairs = dict(zip(keys, values))
        assert all(t == Q.IGNORE for t in row_y[:2 * n]), "a target inside the key-value pairs"
        asked = [t for t in range(T) if row_y[t] != Q.IGNORE]
        assert sorted(row_x[t] for t in asked) == sorted(keys), "each key is asked exactly once"
        for t in asked:
            assert row_y[t] == pairs[row_x[t]], "the answer is not the value paired with the key"
            assert row_x[t + 1] == row_y[t], "the answer does not follow its query"
        slots = set(asked) | {t + 1 for t in asked}
        assert all(row_x[t] == 0 for t in range(2 * n, T) if t not in slots), "a stray token between the queries"


def test_mqar_batch_is_seeded_and_varies_between_rows():
    a = Q.mqar_batch(4, 64, 8, 512, generator=torch.Generator().manual_seed(3))
    b = Q.mqar_batch(4, 64, 8, 512, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert len({tuple(r) for r in a[0].tolist()}) == 4


@pytest.mark.parametrize("args, match", [((2, 15, 4, 64), "seq_len >= 4 \\* num_kv = 16"),
                                         ((2, 64, 4, 8), "use vocab >= 10"), ((0, 16, 4, 64), "batch=0"),
                                         ((2, 16, 4.0, 64), "num_kv=4.0")])
def test_mqar_batch_refuses_what_cannot_hold_the_task(args, match):
    with pytest.raises(ValueError, match=match):
        Q.mqar_batch(*args)


# -- training end to end --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["softmax", "x"])
def test_a_tiny_mqar_model_trains_and_reports_accuracies(name, one_thread):
    cfg = dict(vocab=64, d_model=32, layers=2, heads=2, steps=30, batch=16, lrs=[3e-3], train=[(32, 4)],
               window=8, seed=0, backend="torch")
    gen = torch.Generator().manual_seed(5)
    eval_sets = {part: {(32, 4): Q.mqar_batch(16, 32, 4, 64, generator=gen)} for part in ("val", "test")}
    out = Q.train_mqar_variant(Q.VARIANTS[name], cfg, device=torch.device("cpu"), eval_sets=eval_sets,
                               deadline=math.inf)
    best = out["best"]
    losses = best["losses"]
    assert best["steps"] == 30 and len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"the loss did not go down: {losses}"
    for part in ("val", "test"):
        assert 0.0 <= best[part]["32x4"] <= 1.0


def test_every_variant_builds_and_runs_forward_and_backward(one_thread):
    for name, variant in Q.VARIANTS.items():
        torch.manual_seed(0)
        model = Q.QualityModel(variant, 32, 32, 1, 2, window=4, backend="torch")
        x, y = Q.mqar_batch(2, 16, 2, 32, generator=torch.Generator().manual_seed(0))
        loss = Q._mqar_loss(model, x, y)
        loss.backward()
        assert math.isfinite(loss.item()), name
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad), name


def test_state_sizes_are_features_times_value_dim_times_heads():
    V = Q.VARIANTS
    assert Q.state_size(V["x"], 2, 32, 512, 16) == 16 * 32 * 2
    assert Q.state_size(V["taylor2"], 2, 32, 512, 16) == (1 + 16 + 136) * 32 * 2
    assert Q.state_size(V["cheb2"], 2, 32, 512, 16) == (1 + 16 + 136) * 32 * 2
    assert Q.state_size(V["x2"], 2, 32, 512, 16) == 136 * 32 * 2
    assert Q.state_size(V["cube"], 2, 32, 512, 16) == math.comb(8 + 3, 3) * 32 * 2
    assert Q.state_size(V["favor"], 2, 32, 512, 16) == 128 * 32 * 2
    assert Q.state_size(V["softmax"], 2, 32, 512, 16) == 512 * (32 + 32) * 2
    assert Q.state_size(V["hybrid"], 2, 32, 512, 16) == (153 * 32 + 16 * (16 + 32)) * 2


def test_the_chebyshev_variant_is_the_certified_degree_2_fit_and_positive():
    from fastattn.transforms.approx import chebyshev

    poly = Q._polynomial(Q.VARIANTS["cheb2"], 16)
    fit = chebyshev("exp(x)", 2, 2)
    assert poly.positive
    assert poly.as_dict() == pytest.approx({j: float(c) for j, c in enumerate(fit.coefficients)}, rel=1e-12)
    xs = torch.linspace(-2, 2, 401, dtype=torch.float64)
    c = poly.as_dict()
    err = float((c[0] + c[1] * xs + c[2] * xs**2 - xs.exp()).abs().max())
    assert fit.estimate * 0.99 <= err <= fit.bound, (err, fit.estimate, fit.bound)


# -- the bytes LM's data ----------------------------------------------------------------------------
def test_the_stdlib_split_is_deterministic_and_disjoint_by_file():
    train, val = Q.stdlib_split()
    again = Q.stdlib_split()
    assert (train, val) == again
    assert len(val) >= 1 and len(train) >= 9 * len(val) - 9
    assert not set(train) & set(val)
    assert all(p.suffix == ".py" and "site-packages" not in p.parts and "test" not in p.parts for p in train + val)
    data = Q.read_bytes(val, 5000)
    assert data.dtype == torch.uint8 and len(data) == 5000


def test_the_split_of_a_small_tree_is_every_tenth_file(tmp_path):
    for i in range(23):
        (tmp_path / f"m{i:02d}.py").write_text(f"x = {i}\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text("skip\n")
    train, val = Q.stdlib_split(tmp_path)
    assert [p.name for p in val] == ["m00.py", "m10.py", "m20.py"]
    assert len(train) == 20 and all(p.name != "t.py" for p in train)
    assert bytes(Q.read_bytes(val, 100).tolist()) == b"x = 0\n\nx = 10\n\nx = 20\n\n"


def test_bits_per_byte_of_a_uniform_model_is_8(one_thread):
    model = Q.QualityModel(Q.VARIANTS["softmax"], 256, 16, 1, 2)
    for p in model.head.parameters():
        torch.nn.init.zeros_(p)
    data = torch.randint(0, 256, (1000,), dtype=torch.uint8)
    assert Q.bits_per_byte(model, data, 64, device=torch.device("cpu")) == pytest.approx(8.0, abs=1e-5)


# -- the command line -----------------------------------------------------------------------------
def test_quality_help_works(capsys):
    assert main(["bench", "quality", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--cpu" in out and "--plot" in out


def test_quality_without_a_gpu_or_cpu_flag_exits_2_with_one_line(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "quality", "--quick"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "quality needs a CUDA GPU" in captured.err and "--cpu" in captured.err


def test_quality_refuses_an_unknown_variant_before_any_work(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "quality", "--cpu", "--variants", "softmax", "expp"]) == 2
    assert "unknown variant 'expp'" in capsys.readouterr().err


def test_the_cli_smoke_run_on_the_cpu_writes_json_plot_and_tables(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out_json, out_png = tmp_path / "q.json", tmp_path / "q.png"
    argv = ["bench", "quality", "--cpu", "--backend", "torch", "--variants", "softmax", "x", "--vocab", "32",
            "--d-model", "16", "--layers", "1", "--steps", "3", "--batch", "4", "--lrs", "1e-3", "2e-3",
            "--train", "16x2", "--test", "16x2", "32x4", "--eval-size", "4", "--lm-variants", "softmax", "hybrid",
            "--lm-d-model", "16", "--lm-layers", "1", "--lm-context", "32", "--lm-batch", "2", "--lm-steps", "2",
            "--lm-window", "8", "--lm-train-bytes", "4096", "--lm-val-bytes", "512",
            "--json", str(out_json), "--plot", str(out_png)]
    assert main(argv) == 0
    data = json.loads(out_json.read_text())
    assert [r["variant"] for r in data["mqar"]["results"]] == ["softmax", "x"]
    assert all("error" not in r for r in data["mqar"]["results"] + data["lm"]["results"])
    assert [len(r["runs"]) for r in data["mqar"]["results"]] == [2, 2]
    assert all(0 <= a <= 1 for r in data["mqar"]["results"] for a in r["best"]["test"].values())
    assert all(r["val_bpb"] > 0 for r in data["lm"]["results"])
    assert out_png.stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "| variant | state (floats) | best lr | acc 16x2 | acc 32x4 |" in out and "val bits/byte" in out


def test_a_failing_triton_path_is_named_and_the_torch_path_runs_instead():
    calls = []

    def train(cfg):
        calls.append(cfg["backend"])
        if cfg["backend"] == "auto":
            raise RuntimeError("triton: out of resources\nsecond line")
        return {"runs": [{"finite": True}]}

    row = {}
    out = Q._with_fallback(train, Q.VARIANTS["cube"], {"backend": "auto"}, torch.device("cuda"), row)
    assert calls == ["auto", "torch"] and out == {"runs": [{"finite": True}]}
    assert row["triton_error"] == "RuntimeError: triton: out of resources"
    # softmax has no Triton path to blame, and a CPU run has none at all: the error stands
    for variant, device in ((Q.VARIANTS["softmax"], "cuda"), (Q.VARIANTS["cube"], "cpu")):
        with pytest.raises(RuntimeError, match="out of resources"):
            Q._with_fallback(train, variant, {"backend": "auto"}, torch.device(device), {})


def test_non_finite_losses_on_the_triton_path_also_fall_back():
    seen = []

    def train(cfg):
        seen.append(cfg["backend"])
        return {"finite": cfg["backend"] == "torch"}

    row = {}
    assert Q._with_fallback(train, Q.VARIANTS["x"], {"backend": "auto"}, torch.device("cuda"), row) == {"finite": True}
    assert seen == ["auto", "torch"] and "non-finite" in row["triton_error"]


def test_bench_decode_without_its_module_fails_alone_with_one_line(capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "fastattn.bench.decode", None)  # import raises: as if the file were missing
    assert main(["bench", "decode", "--T", "8192"]) == 2
    err = capsys.readouterr().err
    assert "fastattn bench decode needs fastattn/bench/decode.py" in err and len(err.strip().splitlines()) == 1
    assert main(["bench", "quality", "--help"]) == 0  # the other subcommands still parse


@pytest.mark.parametrize("argv, match", [(["--steps", "0"], "--steps 0: must be > 0"),
                                         (["--lm-d-model", "30", "--lm-heads", "4"], "--lm-d-model 30: must be > 0 and a multiple"),
                                         (["--lrs", "1e-3", "-1"], "--lrs"), (["--train", "16x8"], "seq >= 4 \\* pairs")])
def test_quality_refuses_bad_sizes_with_the_option_named(argv, match, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "quality", "--cpu", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert __import__("re").search(match, err), err
