"""No spec text ever becomes code: hostile specs through spec, generate and the kernel cache.

A spec (or a Spec's display name) may carry quotes, triple quotes, backslashes, ``#``,
``\\N{...}`` and unicode escapes. Whatever the parser accepts, every generated or cached
module must parse into only the template's own statements plus a docstring, literal
assignments and ``@triton.jit`` device functions, and importing it must create no file.
The cache runs the text it has just rendered, not what lies on disk.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import marshal
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastattn
from fastattn.attention.layers import FastAttention
from fastattn.errors import KernelError, SpecError
from fastattn.kernels import codegen
from fastattn.kernels.codegen import Polynomial, cache_dir, load_module, render, template_text
from fastattn.kernels.generate import write_module

pytestmark = pytest.mark.usefixtures("kernel_env")
# layers reach the kernel cache on CUDA tensors, or on the CPU under TRITON_INTERPRET=1 (conftest)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

#: The spec of issue 13, verbatim: the comment hid a payload that closed the docstring's quotes.
ISSUE_SPEC = '1 + x + x**2/2 # """ + str(open("/tmp/m","w").write("x")) + """'
DEVICE_FUNCTIONS = {"_f", "_df", "_phi", "_phi_vjp"}


def _segments(src: str) -> list[tuple[ast.stmt, str]]:
    """Each top-level statement of ``src`` with its source text, decorators included."""
    lines = src.splitlines()
    out = []
    for node in ast.parse(src).body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        out.append((node, "\n".join(lines[first - 1:node.end_lineno])))
    return out


# comparing source text is exact (equal text, equal statement) and far cheaper than ast.dump
_TEMPLATE_STATEMENTS = {text for _, text in _segments(template_text())}


def _fragments(marker: Path) -> list[str]:
    """Hostile pieces of text; the payloads would create ``marker`` if they ever ran."""
    payload = 'str(open(' + repr(str(marker)) + ', "w").write("x"))'
    return [
        '# """ + ' + payload + ' + """',
        "# ''' + " + payload + " + '''",
        '"""\n' + payload + '\n"""',
        '\\"""; ' + payload + ' #',
        '#\n' + payload,
        "#\r" + payload,
        '"', "'", '"""', "'''", "\\", "\\\\", "#", "\n", "\r", "\x00", "\t",
        "\\N{LATIN SMALL LETTER X}", "\\N{QUOTATION MARK}" * 3, "\\u0022\\u0022\\u0022", "\\x22" * 3,
        "\\U00000022", "\u2028", "\u2029", "\u202e", "\ufeff", "\uff58", "\u212fxp(x)",
        "\N{QUOTATION MARK}" * 3 + " + " + payload,
        "{" + payload + "}", "f'{" + payload + "}'",
    ]


def _cases(marker: Path, n_random: int = 120) -> list[str]:
    """A fixed corpus (each fragment after and instead of a spec) and seeded random insertions."""
    bases = ["1 + x + x**2/2", "exp(x)", "(1+x)**3", "x**2 + x**4"]
    frags = _fragments(marker)
    cases = [ISSUE_SPEC] + [b + " " + f for b in bases[:2] for f in frags] + frags
    rng = random.Random(13)
    for _ in range(n_random):
        text = rng.choice(bases)
        for _ in range(rng.randint(1, 3)):
            at = rng.randint(0, len(text))
            text = text[:at] + rng.choice(frags) + text[at:]
        cases.append(text)
    return cases


def _assert_inert(src: str) -> None:
    """The module parses, and each top-level statement is the template's own, the docstring,
    an assignment of a literal, or a jit device function without default arguments."""
    body = _segments(src)
    doc = body[0][0]
    assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)
    for node, text in body[1:]:
        if text in _TEMPLATE_STATEMENTS:
            continue
        if isinstance(node, ast.Assign):
            assert [type(t) for t in node.targets] == [ast.Name], ast.dump(node)
            ast.literal_eval(node.value)  # raises on anything but a literal
            continue
        assert isinstance(node, ast.FunctionDef) and node.name in DEVICE_FUNCTIONS, ast.dump(node)[:200]
        assert [ast.unparse(d) for d in node.decorator_list] == ["triton.jit"]
        assert not node.args.defaults and not node.args.kw_defaults


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _import_in_subprocess(directory: Path, names: list[str]) -> subprocess.CompletedProcess:
    """Import the modules ``names`` from ``directory``, it being the working directory (no bytecode written)."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONDONTWRITEBYTECODE="1")
    code = "import importlib, sys; sys.path.insert(0, '.'); [importlib.import_module(n) for n in sys.argv[1:]]"
    return subprocess.run([sys.executable, "-B", "-c", code, *names], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=300)


def _try(fn):
    """``("ok", result)`` or ``("refused", error)`` for a SpecError / KernelError; anything else propagates."""
    try:
        return "ok", fn()
    except (SpecError, KernelError) as exc:
        return "refused", exc


def _stamp(path: Path):
    return (path.stat().st_mtime_ns, path.stat().st_size) if path.exists() else None


# ------------------------------------------------------------------------------ the reproduction
def test_issue_13_reproduction_runs_nothing(tmp_path):
    """`fastattn generate SPEC -o g.py` then `import g`: /tmp/m must not be written, whatever the parser says."""
    m = Path("/tmp/m")
    before = _stamp(m)
    gen = subprocess.run([sys.executable, "-m", "fastattn.cli", "generate", ISSUE_SPEC, "-o", "g.py",
                          "--head-dim", "4"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert gen.returncode in (0, 2) and "Traceback" not in gen.stderr, gen.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == (["g.py"] if gen.returncode == 0 else []), written
    _assert_inert("".join((tmp_path / name).read_text() for name in written) or render(Polynomial.from_coefficients({0: 1})))
    imp = _import_in_subprocess(tmp_path, ["g"])
    # imported when it was written (and then it ran nothing); when refused, there is nothing to import
    assert (imp.returncode == 0) == (gen.returncode == 0), imp.stderr[-2000:]
    assert _stamp(m) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == written
    # the same raw text as a Spec's name reaches codegen whatever the parser accepts
    path = write_module(fastattn.spec("1 + x + x**2/2", name=ISSUE_SPEC), tmp_path / "named.py", head_dim_qk=4)
    src = path.read_text()
    _assert_inert(src)
    # the origin is printed from the parsed expression: none of the raw text reaches the source
    assert "Origin: x**2/2 + x + 1." in src and "open(" not in src
    assert _import_in_subprocess(tmp_path, ["named"]).returncode == 0
    assert _stamp(m) == before


def test_issue_13_reproduction_through_a_layer_runs_nothing(tmp_path, monkeypatch):
    """A layer built from the hostile spec (or a Spec named with it) runs through the cache; nothing else runs."""
    monkeypatch.chdir(tmp_path)
    # a module memoised by an earlier test of this process would not be rendered into this cache
    monkeypatch.setattr(codegen, "_BY_POLY", {})
    monkeypatch.setattr(codegen, "_MODULES", {})
    marker = tmp_path / "marker"
    hostile = ISSUE_SPEC.replace("/tmp/m", str(marker))
    named = fastattn.spec("1 + x + x**2/2", name=hostile)
    outcomes = [_try(lambda: FastAttention.from_spec(hostile, head_dim=4)),
                _try(lambda: FastAttention.from_spec(named, head_dim=4))]
    assert outcomes[1][0] == "ok" and {kind for kind, _ in outcomes} <= {"ok", "refused"}
    q = k = v = torch.randn(1, 1, 3, 4, device=DEVICE)
    for layer in [layer for kind, layer in outcomes if kind == "ok"]:
        assert layer(q, k, v).shape == (1, 1, 3, 4)
    assert not marker.exists() and sorted(tmp_path.iterdir()) == []
    cached = sorted(cache_dir().glob("poly_*.py"))
    assert any("Origin: x**2/2 + x + 1." in p.read_text() for p in cached)
    assert not any("open(" in p.read_text() for p in cached)
    for path in cached:
        _assert_inert(path.read_text())


# ------------------------------------------------------------------------------------ the fuzz
def test_hostile_specs_never_become_code(tmp_path):
    """Each hostile case is refused with SpecError/KernelError, or gives a module that is inert on import."""
    marker = tmp_path / "marker"
    out = tmp_path / "out"
    out.mkdir()
    cases = _cases(marker)
    assert len(cases) >= 150
    kinds = []
    for i, text in enumerate(cases):
        kinds.append(_try(lambda: fastattn.spec(text))[0])
        # alternate the truncation degree so both origins ("f" and "f truncated at degree 2") are written
        kinds.append(_try(lambda: write_module(text, out / f"s{i}.py", head_dim_qk=4, normalize=False,
                                               degree=None if i % 2 else 2))[0])
        kind, layer = _try(lambda: FastAttention.from_spec(text, head_dim=4, normalize=False, degree=2))
        kinds.append(kind)
        # what the layer's forward does first: render, write to the cache, run
        kinds.append(_try(lambda: load_module(layer.poly))[0] if kind == "ok" else "refused")
    assert set(kinds) <= {"ok", "refused"}
    # the raw text as a Spec's name always reaches codegen, whatever the parser accepts
    for i, text in enumerate(_fragments(marker) + [ISSUE_SPEC]):
        named = fastattn.spec("1 + x + x**2/2", name=text)
        write_module(named, out / f"n{i}.py", head_dim_qk=4)
        load_module(FastAttention.from_spec(named, head_dim=4).poly)
    written = sorted(out.glob("*.py"))
    assert len(written) >= len(_fragments(marker)) + 1
    for path in written + sorted(cache_dir().glob("poly_*.py")):
        _assert_inert(path.read_text())
    assert not marker.exists()
    before = _tree(tmp_path)
    r = _import_in_subprocess(out, [p.stem for p in written])
    assert r.returncode == 0, r.stderr[-3000:]
    assert not marker.exists() and _tree(tmp_path) == before


def test_every_free_text_field_is_sanitised(tmp_path):
    """A hand-built Polynomial whose text fields and a default are all hostile renders inert source."""
    marker = tmp_path / "marker"
    base = Polynomial.from_coefficients({0: 1, 1: 1, 2: "1/2"})
    fields = ("text", "origin", "error_note", "positivity_reason")
    for text in _fragments(marker):
        poly = Polynomial(**{**base.__dict__, **{field: f"{field}: {text}" for field in fields}})
        src = render(poly, defaults={"causal": True, "normalize": True, "scale": None, "normalizer_fix": text},
                     head_dims=(4, 4))
        _assert_inert(src)
        doc = ast.get_docstring(ast.parse(src), clean=False)
        # each field shows up in the docstring, and only in its sanitised form
        assert all(codegen._inert(f"{field}: {text}") in doc for field in fields)
        assert not set(doc) & set("\\\x00\r\u2028\u202e\ufeff")
        exec(compile(src.split("\nimport itertools")[0], "header", "exec"), {})  # the header alone runs inertly
    assert not marker.exists()


def test_render_refuses_values_that_are_not_literals():
    base = Polynomial.from_coefficients({0: 1, 2: 1})
    with pytest.raises(KernelError, match="must be a finite float"):
        render(Polynomial(**{**base.__dict__, "coeffs": ((0, float("inf")),)}))
    with pytest.raises(KernelError, match="must be a finite float"):
        render(Polynomial(**{**base.__dict__, "coeffs": ((0, "__import__('os')"),)}))
    with pytest.raises(KernelError, match="cannot be written into a generated module"):
        render(base, defaults={"causal": True, "scale": object()})
    with pytest.raises(KernelError, match="ASCII identifier"):
        render(base, defaults={"a'] = 1; import os; x = ['": True})


# ------------------------------------------------------------------------------------ the cache
def _forget_modules(monkeypatch):
    monkeypatch.setattr(codegen, "_BY_POLY", {})
    monkeypatch.setattr(codegen, "_MODULES", {})


def test_cache_runs_the_rendered_text_not_what_is_on_disk(tmp_path, monkeypatch):
    """A planted __pycache__/*.pyc and a cached file swapped for a payload both stay dead."""
    monkeypatch.setenv("FASTATTN_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "marker"
    poly = Polynomial.from_coefficients({0: 1, 2: 3})
    src = render(poly)
    path = cache_dir() / f"poly_{hashlib.sha256(src.encode()).hexdigest()[:16]}.py"
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    # the file the cache would import, already swapped for a payload, and bytecode of the payload beside it
    path.write_text(payload + src)
    (path.parent / "__pycache__").mkdir()
    pyc = path.parent / "__pycache__" / f"{path.stem}.{sys.implementation.cache_tag}.pyc"
    pyc.write_bytes(importlib.util.MAGIC_NUMBER + b"\0" * 12 + marshal.dumps(compile(payload, str(path), "exec")))
    _forget_modules(monkeypatch)
    mod = load_module(poly)
    assert not marker.exists()
    assert mod.COEFFS == {0: 1.0, 2: 3.0} and mod.__file__ == str(path)
    assert path.read_text() == src  # the swapped file was replaced by the rendered text
    # swapped between the write and the run: the rendered text in memory is what runs
    _forget_modules(monkeypatch)
    monkeypatch.setattr(codegen, "_write_atomic", lambda p, text: p.write_text(payload + text))
    path.unlink()
    mod = load_module(poly)
    assert path.read_text() == payload + src and not marker.exists() and mod.COEFFS == {0: 1.0, 2: 3.0}
    # triton.jit and inspect read the rendered text too, not the file on disk
    assert inspect.getsource(mod) == src and "ran" not in inspect.getsource(mod._f.fn)
    q = k = v = torch.randn(1, 1, 5, 4, dtype=torch.float64)
    ref = fastattn.kernels.naive.quadratic_attention(q, k, v, poly, scale=0.5, causal=True, normalize=True)
    got = mod.poly_attention(*(x.float().to(DEVICE) for x in (q, k, v)), scale=0.5)
    torch.testing.assert_close(got.double().cpu(), ref, rtol=1e-4, atol=1e-5)
    assert not marker.exists()


def test_cache_directory_is_private(tmp_path, monkeypatch):
    """Created 0700; refused when a file, owned by someone else, or writable by group or others."""
    fresh = tmp_path / "a" / "cache"
    monkeypatch.setenv("FASTATTN_CACHE", str(fresh))
    assert cache_dir() == fresh and (fresh.stat().st_mode & 0o777) == 0o700

    a_file = tmp_path / "file"
    a_file.write_text("")
    monkeypatch.setenv("FASTATTN_CACHE", str(a_file))
    with pytest.raises(KernelError, match="kernel cache '.*/file' .FASTATTN_CACHE. is not a directory"):
        cache_dir()
    monkeypatch.setenv("FASTATTN_CACHE", str(a_file / "sub"))
    with pytest.raises(KernelError, match="cannot create the kernel cache '.*/file/sub'"):
        cache_dir()

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("FASTATTN_CACHE", str(shared))
    with pytest.raises(KernelError, match=r"writable by group or others \(mode 777\); run chmod 700"):
        cache_dir()
    shared.chmod(0o700)
    assert cache_dir() == shared

    me = os.getuid()
    monkeypatch.setattr(codegen.os, "getuid", lambda: me + 1)
    with pytest.raises(KernelError, match=rf"is owned by .*uid {me}\), not by you \(.*uid {me + 1}\)"):
        cache_dir()


def test_a_bad_cache_is_a_kernel_error_from_the_layer(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("")
    monkeypatch.setenv("FASTATTN_CACHE", str(a_file))
    _forget_modules(monkeypatch)
    layer = FastAttention.from_spec("1 + 2*x**2", head_dim=4).to(DEVICE)
    q = k = v = torch.randn(1, 1, 3, 4, device=DEVICE)
    with pytest.raises(KernelError, match="is not a directory"):
        layer(q, k, v)
