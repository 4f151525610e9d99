"""``fastattn bench``: the one entry point of the GPU benchmarks (table, check, sweep, plot).

* ``fastattn bench table``: ours against the peers at their best, one run on one GPU, into the block
  between the markers of ``benchmarks/RESULTS.md`` (``--json`` keeps the raw numbers, ``--plot``
  draws them); ``--from-json RUN.json`` re-renders a saved run, on any machine.
* ``fastattn bench check``: bf16/fp16/fp32 outputs and gradients against the fp32 reference (markdown,
  ``--json``).
* ``fastattn bench plot RUN.json -o OUT.png``: the figure of a saved run, on any machine.
* ``fastattn bench sweep ARGS``: runs ``benchmarks/sweep.py ARGS`` of this checkout (tilings and knobs
  of one of ours; its own ``--help``).
* ``fastattn bench quality``: does it learn? MQAR accuracy and a bytes LM's bits per byte, one small model
  per attention variant, against state size (``fastattn/bench/quality.py``; ``--quick``, ``--json``,
  ``--plot``).
* ``fastattn bench decode``: decoding speed (``fastattn/bench/decode.py``, its own ``--help``).
* ``fastattn bench hybrid | sparse | flurka | flash | gated | memory ARGS``: run the script of this checkout
  that measures it (``SCRIPTS``: the window + feature-map hybrid with its predicted ms, the sparse schedules,
  FLuRKA, the quadratic flash kernels with the route, the gated kernels, 64K peak memory), each with its own
  ``--help``; each checks its kernels against a reference before it times them.

``table``, ``check``, ``sweep`` and ``quality`` need a CUDA GPU: without one they exit 2 with one line
(``quality --cpu`` trains on the CPU anyway). Nothing heavy is imported here (torch.cuda,
triton.testing, fla, power-attention load inside the commands), so ``import fastattn`` and
``fastattn --help`` stay light; the peers are optional. ``decode`` loads its module only when
asked; where it is missing or broken, ``decode`` alone fails, with one line.

>>> import argparse
>>> p = argparse.ArgumentParser(prog="fastattn bench")
>>> add_arguments(p)
>>> p.parse_args(["plot", "run.json", "-o", "run.png"]).bench_command
'plot'
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from fastattn.errors import FastAttnError

__all__ = ["add_arguments", "run", "GPUNeeded", "Unavailable", "SUBCOMMANDS"]

#: subcommands that run a script of benchmarks/ with the arguments given (each has its own --help)
SCRIPTS = {"sweep": ("sweep.py", "One of ours over tilings and knobs"),
           "hybrid": ("hybrid_bench.py", "Window + feature-map hybrid against fla and sliding-window SDPA, with predicted ms"),
           "sparse": ("sparse_sched_check.py", "QK-dropping, hash buckets and patterns against SDPA"),
           "flurka": ("flurka_bench.py", "FLuRKA (rank-r sequence projection + feature map) against non-causal SDPA"),
           "flash": ("poly_flash_check.py", "The quadratic flash kernels and the routed layer against SDPA"),
           "gated": ("gated_check.py", "The gated kernels against the fp32 torch path, and their speed"),
           "memory": ("memory_peak.py", "Peak memory of one forward + backward at 64K against SDPA")}
SUBCOMMANDS = ("table", "check", "plot", "quality", "decode") + tuple(SCRIPTS)
# benchmarks/ of the checkout this package sits in (absent in an installed copy)
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


class GPUNeeded(FastAttnError):
    """A GPU subcommand started on a machine without a CUDA GPU."""


class Unavailable(FastAttnError):
    """A subcommand whose module is missing or does not import in this installation."""


def _need_gpu(what: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise GPUNeeded(f"{what} needs a CUDA GPU (torch.cuda.is_available() is False); without one, "
                        "`table --from-json RUN.json` and `plot` still work")


def _check_parent(path: str | None, option: str) -> None:
    if path and not Path(path).parent.is_dir():
        raise OSError(2, f"the directory {str(Path(path).parent)!r} does not exist (for {option})", path)


# -- table --------------------------------------------------------------------------------------
def _add_table(p: argparse.ArgumentParser) -> None:
    p.add_argument("--T", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768, 65536],
                   help="sequence lengths (default 2K 4K 8K 16K 32K 64K)")
    p.add_argument("--rows", nargs="+", default=["all"],
                   help="'all', 'ours', 'peers', or row names / prefixes (e.g. 'sdpa', 'fla', 'ours x')")
    p.add_argument("--results", default="benchmarks/RESULTS.md",
                   help="the markdown file whose bench:begin / bench:end block is replaced (default %(default)s)")
    p.add_argument("--json", dest="json_out", default=None, metavar="RUN.json",
                   help="also write the raw numbers here (rewritten after every cell)")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="also draw the run here (.png, .svg, .pdf)")
    p.add_argument("--warmup", type=int, default=100, help="ms of warm-up before each timing")
    p.add_argument("--rep", type=int, default=100, help="ms of timed repetitions")
    p.add_argument("--skip-check", action="store_true", help="time without the correctness check first")
    p.add_argument("--graphs", action="store_true",
                   help="also time each row's fwd+bwd replayed from a CUDA graph (no host launch path)")
    p.add_argument("--sweep", type=int, default=0, metavar="T",
                   help="after the table, time ours over the table's tilings at this T (printed, not written)")
    p.add_argument("--from-json", nargs="+", default=None, metavar="RUN.json",
                   help="no timing, no GPU: render a saved run (a cut-short one too, or one split over several files, "
                        "merged) into --results, with its targets")


def _select_rows(wanted):
    from fastattn.bench.table import PEERS, ROWS

    names = [r.name for r in ROWS]
    if wanted == ["all"]:
        return names
    sel = {n for w in wanted for n in names
           if (w == "ours" and n.startswith("ours")) or (w == "peers" and n in PEERS) or n.startswith(w)}
    if not sel:
        raise ValueError(f"--rows {' '.join(wanted)}: no row matches; rows are {', '.join(names)}")
    return [n for n in names if n in sel]


def _command(args) -> str:
    """The command line that reproduces this run (recorded in the table)."""
    parts = ["fastattn", "bench", "table", "--T", *map(str, args.T)]
    if args.rows != ["all"]:
        parts += ["--rows", *args.rows]
    parts += ["--warmup", str(args.warmup), "--rep", str(args.rep)]
    parts += [flag for flag, on in (("--skip-check", args.skip_check), ("--graphs", args.graphs)) if on]
    return shlex.join(parts)


def _run_table(args) -> int:
    """The table of ours against the peers (GPU), or a saved run re-rendered (--from-json, any machine)."""
    _check_parent(args.results, "--results")
    _check_parent(args.plot, "--plot")
    if args.from_json:
        from fastattn.bench.table import render_saved

        code = render_saved(args.from_json, args.results)
        if args.plot:
            from fastattn.bench.plot import figure
            from fastattn.bench.table import merge_runs, run_data

            meta, res, lines, _ = merge_runs(args.from_json)
            figure(run_data(meta, lines, res)).savefig(args.plot, dpi=120)
            print(f"wrote {args.plot}")
        return code
    _check_parent(args.json_out, "--json")
    rows = _select_rows(args.rows)
    _need_gpu("table")
    from fastattn.bench.timing import run_table

    return run_table(args, rows, _command(args))


# -- check --------------------------------------------------------------------------------------
def _add_check(p: argparse.ArgumentParser) -> None:
    from fastattn.bench.check import add_arguments as add

    add(p)


def _run_check(args) -> int:
    """bf16/fp16/fp32 outputs and gradients of the Triton kernels against the fp32 reference (GPU)."""
    _check_parent(args.json_out, "--json")
    _need_gpu("check")
    from fastattn.bench.check import run_check

    return run_check(args)


# -- plot ---------------------------------------------------------------------------------------
def _add_plot(p: argparse.ArgumentParser) -> None:
    from fastattn.bench.plot import add_arguments as add

    add(p)


def _run_plot(args) -> int:
    """Draw a saved run (ms against T; ours solid with floors dotted, peers dashed); any machine."""
    from fastattn.bench.plot import run as draw

    return draw(args)


# -- the scripts of benchmarks/ -------------------------------------------------------------------
def _add_script(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs="*", metavar="ARGS", help="the script's own arguments (see its --help)")


def _script_runner(name):
    script, what = SCRIPTS[name]

    def run_script(args) -> int:
        path = BENCHMARKS / script
        if not path.is_file():
            raise FileNotFoundError(2, f"fastattn bench {name} runs benchmarks/{script} of a source checkout; "
                                       "this installation has none", str(path))
        # --help and a saved run's table need no GPU
        if not {"--help", "-h", "--table", "--summary", "--compile"} & set(args.rest):
            _need_gpu(name)
        return subprocess.run([sys.executable, str(path), *args.rest]).returncode

    run_script.__doc__ = f"{what}: runs benchmarks/{script} of this checkout (GPU)."
    return run_script


# -- quality ------------------------------------------------------------------------------------
def _add_quality(p: argparse.ArgumentParser) -> None:
    from fastattn.bench.quality import add_arguments as add

    add(p)


def _run_quality(args) -> int:
    """Does it learn? MQAR accuracy and bytes-LM bits per byte per attention variant, against state size."""
    from fastattn.bench.quality import run as train

    return train(args)


# -- decode -------------------------------------------------------------------------------------
def _decode_module():
    """fastattn.bench.decode, or Unavailable naming why it cannot be loaded (one line)."""
    import importlib

    try:
        return importlib.import_module("fastattn.bench.decode")
    except Exception as exc:  # a missing or broken module must not break the other subcommands
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return Unavailable(f"fastattn bench decode needs fastattn/bench/decode.py, which does not load here ({why})")


def _add_decode(p: argparse.ArgumentParser) -> None:
    mod = _decode_module()
    if isinstance(mod, Unavailable):
        # its parser takes anything (made like sweep's, see add_arguments); the error comes when run, as one line
        p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
        return
    mod.add_arguments(p)


def _run_decode(args) -> int:
    """Decoding speed: one token at a time against a carried state (fastattn/bench/decode.py)."""
    mod = _decode_module()
    if isinstance(mod, Unavailable):
        raise mod
    return mod.run(args)


_HANDLERS = {"table": (_add_table, _run_table), "check": (_add_check, _run_check), "plot": (_add_plot, _run_plot),
             "quality": (_add_quality, _run_quality), "decode": (_add_decode, _run_decode),
             **{name: (_add_script, _script_runner(name)) for name in SCRIPTS}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the subcommands of ``fastattn bench`` on ``p``."""
    sub = p.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    for name in SUBCOMMANDS:
        add, handler = _HANDLERS[name]
        first = handler.__doc__.splitlines()[0]
        # a script's subcommand passes every argument on, --help included, so its parser knows no '-' options; so
        # does decode's stand-in where its module does not load, so that any arguments reach its one-line error
        loose = name in SCRIPTS or (name == "decode" and isinstance(_decode_module(), Unavailable))
        extra = dict(add_help=False, prefix_chars="+") if loose else {}
        q = sub.add_parser(name, help=first, description=first, **extra)
        add(q)
        q.set_defaults(_bench=handler)


def run(args: argparse.Namespace) -> int:
    """Benchmarks on the GPU: table, check, plot, quality, decode and the scripts of ``SCRIPTS`` (see
    ``fastattn bench --help``)."""
    return args._bench(args)
