"""The kernel template's part files (fastattn/kernels/parts): what codegen joins, and how a reader walks it.

The split of the single ``_template.py`` into parts was a move: the module ``render`` produces
for a given f is byte for byte the one it produced before (the digests below were taken from
``render`` on the single file, before anything moved).
"""

from __future__ import annotations

import ast
import builtins
import doctest
import hashlib
import symtable

import pytest

from fastattn.kernels import codegen
from fastattn.kernels.codegen import PARTS_DIR, load_module, part_paths, render, template_text
from fastattn.kernels.poly import polynomial

pytestmark = pytest.mark.usefixtures("kernel_env")

#: sha256 of ``render(polynomial(spec))``: the single-file template of commit 024d6b3, with one comment in
#: ``_den`` naming naive.guarded_denominator since, the carried state (issue 15: 65_state, initial and
#: final states on every route; the backward always returns dinit), the scan backward's fp32 sums
#: cast one at a time (issue 14). A change to the
#: kernels on purpose changes these; a change in how the parts are joined must not.
RENDERED_SHA256 = {
    "x": "e00f94efb8d54d076ec29ae7615a9dcc071e17ebc80ec5261633cbce2a24e1d7",
    "1 + x + x**2/2": "f517f858d513bbcbbac9bf774c90ae59f0004f812482e6a7311e09b8cc70342a",
    "(1+x)**3": "89a2f03dbd31207a2d00862b27c0c54d8bf6b49352c22b8ca349b8f67ea3e01b",
    "x**2": "e2c4ed1578ff9547c0cab1b95f7d1130653d32ca8374eb5cf42a1cb6ffbba244",
}
#: A part past this many lines is asking to be split (STYLE rule 14).
MAX_PART_LINES = 600
PARTS = ["00_header.py", "10_features.py", "20_tiles.py", "30_scans.py", "35_backward.py", "40_fused.py",
         "50_tables.py", "60_plan.py", "65_state.py", "70_launch.py", "80_api.py"]


def _top_level_names(tree: ast.Module) -> set[str]:
    """Names a module body binds at top level: defs, classes, assignments, imports."""
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return out


@pytest.mark.parametrize("spec", sorted(RENDERED_SHA256))
def test_render_is_byte_identical_to_the_single_file_template(spec):
    src = render(polynomial(spec))
    assert hashlib.sha256(src.encode()).hexdigest() == RENDERED_SHA256[spec], (
        f"render({spec!r}) changed: joining the parts must give the module the single template gave")


def test_the_parts_are_the_files_of_the_folder_in_order():
    assert [p.name for p in part_paths()] == PARTS
    # no stray .py file in the folder is silently left out of the template
    assert sorted(p.name for p in PARTS_DIR.glob("*.py")) == sorted(PARTS + ["__init__.py", "conftest.py"])


@pytest.mark.parametrize("name", PARTS)
def test_each_part_parses_opens_with_its_docstring_and_is_short(name):
    text = (PARTS_DIR / name).read_text(encoding="utf-8")
    tree = ast.parse(text, filename=name)
    assert ast.get_docstring(tree), f"{name} must open with a docstring that says what it holds"
    body = codegen._part_body(PARTS_DIR / name)
    ast.parse(body, filename=name)  # what is joined parses on its own too: parts cut at statements
    assert len(text.splitlines()) < MAX_PART_LINES, f"{name}: {len(text.splitlines())} lines; split it"


def test_the_part_docstrings_stay_out_of_the_module():
    src = template_text()
    assert src.startswith("# >>> header\n")
    for path in part_paths():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=False)
        assert doc not in src, path.name
    assert len(src.splitlines()) == sum(len(codegen._part_body(p).splitlines()) for p in part_paths())


def test_part_without_a_docstring_is_refused(tmp_path, monkeypatch):
    (tmp_path / "00_only.py").write_text("X = 1\n")
    monkeypatch.setattr(codegen, "PARTS_DIR", tmp_path)
    with pytest.raises(codegen.KernelError, match="must open with a docstring"):
        template_text()


def test_no_part_uses_a_name_defined_only_in_a_later_part():
    """A reader walking the parts in order meets every top-level name before (or in) the part using it."""
    bodies = [(p.name, ast.parse(codegen._part_body(p))) for p in part_paths()]
    first = {}
    for i, (_, tree) in enumerate(bodies):
        for name in _top_level_names(tree):
            first.setdefault(name, i)
    late = {}
    for i, (part, tree) in enumerate(bodies):
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        late[part] = sorted(u for u in used if first.get(u, -1) > i)
    assert late == {part: [] for part, _ in bodies}


def test_the_joined_module_defines_every_global_it_reads():
    src = template_text()
    table = symtable.symtable(src, "template", "exec")
    defined = _top_level_names(ast.parse(src)) | set(dir(builtins)) | {"__file__", "__name__"}
    missing = set()
    stack = [table]
    while stack:
        scope = stack.pop()
        stack.extend(scope.get_children())
        missing |= {s.get_name() for s in scope.get_symbols()
                    if s.is_global() and s.is_referenced() and s.get_name() not in defined}
    assert not missing
    assert len(defined) > 150  # the walk above saw the whole module, not an empty one


def test_the_parts_doctests_pass_on_the_joined_module():
    """pytest cannot import a part alone (parts/conftest.py skips them), so their doctests run here."""
    mod = load_module(polynomial("x"))
    assert mod.COEFFS == {1: 1.0} and callable(mod.poly_attention)
    tests = [t for t in doctest.DocTestFinder().find(mod) if t.examples]
    names = {t.name.rsplit(".", 1)[-1] for t in tests}
    assert {"plan", "kron_tables", "kron_const_out"} <= names
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted >= 15
