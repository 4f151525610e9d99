"""Kept so recorded commands still run: ``python benchmarks/check_gpu.py ARGS`` is ``fastattn bench check ARGS``.

The code lives in ``fastattn.bench.check``; ``run`` and ``blocked_reference`` are re-exported for the
scripts beside this one (sweep.py's ``--reference``).

    fastattn bench check            # the full table
    fastattn bench check --quick    # T = 1024 only, one dtype
"""

import sys

from fastattn.bench.check import CONFIGS, blocked_reference, run, term_sizes  # noqa: F401
from fastattn.cli import main as _cli


def main(argv=None):
    """``fastattn bench check`` with ``argv``; returns the exit code."""
    return _cli(["bench", "check", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
