"""Kept so recorded commands still run: ``python benchmarks/plot.py RUN.json -o OUT.png`` is ``fastattn bench plot``.

The code lives in ``fastattn.bench.plot``.

    fastattn bench plot benchmarks/out/v15.json -o benchmarks/v15.png
"""

import sys

from fastattn.bench.plot import figure, series  # noqa: F401
from fastattn.cli import main as _cli


def main(argv=None):
    """``fastattn bench plot`` with ``argv``; returns the exit code."""
    return _cli(["bench", "plot", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
