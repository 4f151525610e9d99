"""Kept so recorded commands still run: ``python benchmarks/bench.py ARGS`` is ``fastattn bench table ARGS``.

The code lives in ``fastattn.bench`` (``table``: rows, targets, markdown; ``timing``: the GPU run).
Without ``--results`` this writes ``benchmarks/RESULTS.md`` beside this file, as it always did.

    fastattn bench table                       # T = 2K, 4K, 8K, 16K, 32K, 64K, every row
    fastattn bench table --T 8192 --rows ours  # a subset
    fastattn bench table --json run.json --plot run.png
    fastattn bench table --from-json benchmarks/out/v15.json   # re-render a saved run, no GPU
"""

import sys
from pathlib import Path

from fastattn.bench.table import *  # noqa: F401,F403  the names older scripts imported from here
from fastattn.cli import main as _cli


def main(argv=None):
    """``fastattn bench table`` with ``argv``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--results" or a.startswith("--results=") for a in argv):
        argv += ["--results", str(Path(__file__).with_name("RESULTS.md"))]
    return _cli(["bench", "table", *argv])


if __name__ == "__main__":
    sys.exit(main())
