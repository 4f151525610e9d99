"""Execute the notebooks in notebooks/ top to bottom and store their outputs in the .ipynb files.

The stored outputs are what a reader sees on a web page (tables, figures as PNG), so they must be the
outputs of the code beside them: run this after editing a notebook or what it reads, and commit the
result. ``tests/test_notebooks.py`` re-executes every notebook and fails when the stored outputs are
missing or stale (see :func:`output_kinds` and :func:`code_hash`).

    python scripts/build_notebooks.py                          # every notebook
    python scripts/build_notebooks.py notebooks/explore.ipynb  # one

Each kernel starts in a fresh temporary directory (nothing is written under notebooks/), with
``PYTHONHASHSEED=0``; the notebooks seed torch and numpy themselves. No timing metadata is stored, so
rebuilding an unchanged notebook on the same machine gives the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
#: A code cell with this tag prints and displays nothing, on purpose (imports, constants).
SILENT = "silent"
#: Seconds one cell may run (each notebook is meant to finish in well under a minute on a CPU).
CELL_TIMEOUT = 300


def notebooks() -> list[Path]:
    """The notebooks of the repository, sorted by name."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def code_hash(nb) -> str:
    """SHA-256 of the notebook's code cells' sources: stored at build time, so an edit without a rebuild shows."""
    sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def output_kinds(cell) -> frozenset:
    """What a code cell showed, independent of values and of how streams were chunked.

    ``stream:stdout``, the MIME types of displayed data (``image/png``, ``text/markdown``, ...), and
    ``error``. stderr is left out: a library's warning may come and go between versions.
    """
    kinds = set()
    for out in cell.get("outputs", []):
        kind = out["output_type"]
        if kind == "stream":
            if out["name"] != "stderr":
                kinds.add(f"stream:{out['name']}")
        elif kind in ("display_data", "execute_result"):
            kinds.update(out.get("data", {}))
        elif kind == "error":
            kinds.add("error")
    return frozenset(kinds)


def execute(nb, *, timeout: int = CELL_TIMEOUT):
    """Run ``nb`` (a nbformat NotebookNode) in place in a fresh kernel and temporary directory; return it."""
    from nbclient import NotebookClient

    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    os.environ["PYTHONHASHSEED"] = "0"
    with tempfile.TemporaryDirectory() as cwd:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": cwd}})
        client.execute()
    return nb


def build(path: Path) -> float:
    """Execute one notebook and write it back with its outputs; return the seconds it took."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    start = time.monotonic()
    execute(nb)
    seconds = time.monotonic() - start
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata["fastattn"] = {"code_sha256": code_hash(nb)}
    nbformat.write(nb, path)
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", type=Path, help="notebooks to build (default: every notebooks/*.ipynb)")
    args = p.parse_args(argv)
    paths = args.paths or notebooks()
    missing = [str(x) for x in paths if not x.is_file()]
    if missing:
        print(f"build_notebooks: error: no such notebook: {missing[0]}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"{path.name}: {build(path):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
