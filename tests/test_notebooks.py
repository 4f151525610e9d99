"""The notebooks in notebooks/ run top to bottom, and the outputs stored in them are complete and current.

The stored outputs are what a reader sees on GitHub, so they are checked as data: every code cell shows
something unless it is tagged ``silent``, every figure is stored as a PNG (never a ``<Figure ...>``
line), the stored run went top to bottom in one kernel, no code changed since (a hash of the code
cells, stored by the build), and a fresh run shows the same kinds of output in every cell.
``scripts/build_notebooks.py`` regenerates the outputs.
"""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "scripts" / "build_notebooks.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

NOTEBOOKS = build.notebooks()
IDS = [p.name for p in NOTEBOOKS]
REBUILD = "run `python scripts/build_notebooks.py` and commit the notebooks"
#: Notebooks that must draw at least this many figures (each is the point of the notebook).
MIN_FIGURES = {"explore.ipynb": 2, "formula_to_layer.ipynb": 1, "quality.ipynb": 1}


def _read(path):
    import nbformat

    return nbformat.read(path, as_version=4)


def _code_cells(nb):
    return [(i, cell) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]


def _draws_figure(cell) -> bool:
    return "plt.show()" in cell.source or "figure" in cell.metadata.get("tags", [])


def _figure_as_text(cell) -> bool:
    """A figure that reached the page as its repr ("<Figure size 640x480 with 1 Axes>") instead of a PNG."""
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        text = "".join(data.get("text/plain", ""))
        if text.startswith(("<Figure", "<matplotlib")) and "image/png" not in data:
            return True
    return False


def test_there_are_notebooks():
    assert set(MIN_FIGURES) <= set(IDS), f"notebooks/ holds {IDS}, expected at least {sorted(MIN_FIGURES)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_outputs_are_complete(path):
    nb = _read(path)
    cells = _code_cells(nb)
    stored_hash = nb.metadata.get("fastattn", {}).get("code_sha256")
    assert stored_hash == build.code_hash(nb), f"{path.name}: code changed since its outputs were stored; {REBUILD}"
    counts = [cell.execution_count for _, cell in cells]
    assert counts == list(range(1, len(cells) + 1)), \
        f"{path.name}: execution counts {counts} are not one top-to-bottom run; {REBUILD}"
    problems = []
    for i, cell in cells:
        kinds = build.output_kinds(cell)
        silent = build.SILENT in cell.metadata.get("tags", [])
        if silent and cell.get("outputs"):
            problems.append(f"cell {i} is tagged {build.SILENT!r} but stored outputs {sorted(kinds)}")
        if not silent and not kinds:
            problems.append(f"cell {i} has no stored output (tag it {build.SILENT!r} if that is intended)")
        if "error" in kinds:
            problems.append(f"cell {i} stored an error")
        if _draws_figure(cell) and "image/png" not in kinds:
            problems.append(f"cell {i} draws a figure but stored no image/png")
        if _figure_as_text(cell):
            problems.append(f"cell {i} stored a figure as text, not as an image")
    figures = sum("image/png" in build.output_kinds(cell) for _, cell in cells)
    assert figures >= MIN_FIGURES.get(path.name, 0), f"{path.name}: {figures} stored figures"
    assert not problems, f"{path.name}: " + "; ".join(problems) + f"; {REBUILD}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_executes_as_stored(path):
    stored = _read(path)
    fresh = build.execute(_read(path))
    errors = [o for _, c in _code_cells(fresh) for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    problems = []
    for (i, old), (_, new) in zip(_code_cells(stored), _code_cells(fresh)):
        was, now = build.output_kinds(old), build.output_kinds(new)
        if was != now:
            problems.append(f"cell {i}: stored {sorted(was)}, a fresh run shows {sorted(now)}")
        if _draws_figure(new) and "image/png" not in now:
            problems.append(f"cell {i} draws a figure but a fresh run shows no image/png")
    assert not problems, f"{path.name}: stored outputs are stale: " + "; ".join(problems) + f"; {REBUILD}"
