"""`fastattn generate`: the written standalone module imports only torch/triton and matches the reference."""

from __future__ import annotations

import ast

import pytest
import torch

from fastattn.errors import KernelError
from fastattn.kernels import naive
from fastattn.kernels.checks import assert_close
from fastattn.kernels.codegen import import_path
from fastattn.cli import main
from fastattn.kernels.generate import write_module
from fastattn.kernels.poly import polynomial

STDLIB_OK = {"collections", "dataclasses", "itertools", "math", "os"}


pytestmark = pytest.mark.usefixtures("kernel_env")


def _imports(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("spec, degree, normalize, fix", [
    ("1 + x + x**2/2", None, True, None),
    ("x", None, False, None),
    ("(1+x)**3", None, True, "abs"),
    ("x**2 + x**4", None, False, None),
    ("exp(x)", 2, True, None),
])
def test_written_module_is_standalone_and_matches_reference(tmp_path, spec, degree, normalize, fix):
    path = write_module(spec, tmp_path / "layer.py", head_dim_qk=6, head_dim_v=5, causal=True,
                        normalize=normalize, degree=degree, normalizer_fix=fix)
    assert _imports(path) <= {"torch", "triton"} | STDLIB_OK, _imports(path)
    mod = import_path(path, f"gen_{abs(hash((spec, degree)))}")
    poly = polynomial(spec, degree)
    doc = mod.__doc__
    assert poly.text in doc and "6: " + str(poly.feature_dim(6)) in doc and "Error of the feature map" in doc
    assert mod.DEFAULTS == {"causal": True, "normalize": normalize, "scale": None, "normalizer_fix": fix}

    g = torch.Generator().manual_seed(0)
    lo = 0.5 if fix else 0.0  # the abs-fixed normaliser is tested away from sum f = 0
    q = (lo + torch.rand(1, 2, 40, 6, generator=g)) if fix else torch.randn(1, 2, 40, 6, generator=g)
    k = (lo + torch.rand(1, 2, 40, 6, generator=g)) if fix else torch.randn(1, 2, 40, 6, generator=g)
    v, do = torch.randn(2, 1, 2, 40, 5, generator=g)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    o = mod.PolyAttention(chunk=16, block_f=32)(q, k, v)
    o.backward(do)
    rq, rk, rv = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = naive.quadratic_attention(rq, rk, rv, poly, causal=True, normalize=normalize, normalizer_fix=fix)
    ref.backward(do.double())
    for name, want, got in [("o", ref, o), ("dq", rq.grad, q.grad), ("dk", rk.grad, k.grad),
                            ("dv", rv.grad, v.grad)]:
        assert_close(name, want, got, torch.float32)


def test_written_power_attention_module_normalises_by_sum_f_plus_eps(tmp_path):
    # f = x**2 >= 0 with a zero: the module is written with the rule check_normalizer picks
    path = write_module("x**2", tmp_path / "power.py", head_dim_qk=6, head_dim_v=5, normalize=True)
    mod = import_path(path, "gen_power_eps")
    assert mod.DEFAULTS["normalizer_fix"] == "abs"
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 1, 2, 40, 6, generator=g)
    v = torch.randn(1, 2, 40, 5, generator=g)
    got = mod.PolyAttention(chunk=16, block_f=32)(q, k, v)
    ref = naive.quadratic_attention(q.double(), k.double(), v.double(), polynomial("x**2"), causal=True,
                                    normalize=True, normalizer_fix="abs")
    assert_close("o", ref, got, torch.float32)


def test_written_module_refuses_unsafe_normalizer_itself(tmp_path):
    path = write_module("x", tmp_path / "lin.py", normalize=False)
    mod = import_path(path, "gen_lin_refuse")
    q = k = v = torch.randn(1, 1, 4, 2)
    with pytest.raises(ValueError, match="normalizer_fix='abs'"):
        mod.poly_attention(q, k, v, normalize=True)


def test_write_module_refuses_bad_requests(tmp_path):
    with pytest.raises(KernelError, match="normalize=True divides by sum_j f"):
        write_module("x", tmp_path / "a.py")
    with pytest.raises(KernelError, match="must end in .py"):
        write_module("1 + x", tmp_path / "a.txt", normalize=False)
    with pytest.raises(KernelError, match="head_dim_qk=0"):
        write_module("1 + x + x**2/2", tmp_path / "a.py", head_dim_qk=0)


def test_cli_generate_writes_the_file(tmp_path, capsys):
    out = tmp_path / "sub" / "based.py"
    assert main(["generate", "exp(x)", "--degree", "2", "--head-dim", "16", "-o", str(out)]) == 0
    assert out.exists() and "exp(x) truncated at degree 2" in out.read_text()
    assert "153 features at head dim 16" in capsys.readouterr().out


def test_write_atomic_leaves_no_tmp_when_writing_fails(tmp_path):
    from fastattn.kernels.codegen import _write_atomic

    target = tmp_path / "g.py"
    target.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        _write_atomic(target, "x = '\udc00'\n")  # a lone surrogate cannot be encoded
    assert [p.name for p in tmp_path.iterdir()] == ["g.py"] and target.read_text() == "old\n"


def test_write_module_overwrites_only_with_force(tmp_path):
    path = write_module("1 + x + x**2/2", tmp_path / "g.py", head_dim_qk=4)
    with pytest.raises(KernelError, match="exists; pass force=True"):
        write_module("(1+x)**3", path, head_dim_qk=4, normalizer_fix="abs")
    assert "COEFFS = {0: 1.0, 1: 1.0, 2: 0.5}" in path.read_text()
    write_module("(1+x)**3", path, head_dim_qk=4, normalizer_fix="abs", force=True)
    assert "COEFFS = {0: 1.0, 1: 3.0, 2: 3.0, 3: 1.0}" in path.read_text()
