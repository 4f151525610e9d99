"""The ``fastattn`` command line: ``analyze`` and ``check`` (``generate`` and ``bench`` register here too).

Each subcommand is one entry of :data:`COMMANDS`: ``(name, add_arguments, run)``, where
``add_arguments(parser)`` declares its options and ``run(args) -> int`` does the work
and returns the exit code. Add one with :func:`register_command`.

Exit codes: 0 success; 1 a claim did not verify; 2 bad input or a bad path (a one-line
error on stderr, no traceback; with ``--json``, ``{"error": ..., "kind": ...}`` on stdout
instead). A reader that closes the pipe early (``| head``) ends the command quietly.

Examples
--------
>>> main(["check", "x**2", "--dim", "2"])  # doctest: +ELLIPSIS
low-rank: rank f(QK^T) <= C(3,2) = 3 ...
0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from fastattn.errors import FastAttnError

__all__ = ["main", "COMMANDS", "register_command", "build_parser", "UsageError", "PathError"]

#: Registered subcommands, in help order: (name, add_arguments(parser), run(args) -> exit code).
COMMANDS: list[tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = []


def register_command(name: str, add_arguments: Callable, run: Callable, *, help: str = "") -> None:
    """Add a subcommand (replacing one of the same name)."""
    COMMANDS[:] = [c for c in COMMANDS if c[0] != name]
    doc = (run.__doc__ or "").strip()
    run.__cli_help__ = help or (doc.splitlines()[0] if doc else "")
    COMMANDS.append((name, add_arguments, run))


class UsageError(FastAttnError):
    """A command line argparse rejected; ``prog`` is the (sub)command."""

    def __init__(self, prog: str, message: str):
        super().__init__(f"{message} (see {prog} --help)")
        self.prog = prog


class PathError(FastAttnError):
    """An output path that cannot be written, found before any work is done."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage and exits; raise instead, so main reports one line (or JSON)
    def error(self, message):
        raise UsageError(self.prog, message)


def _params(items) -> dict:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--param {item!r} must look like name=value, e.g. tau=8")
        try:
            out[name.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise ValueError(f"--param {item!r}: {value!r} is not a number") from None
    return out


# -- analyze ------------------------------------------------------------------------------------
def _add_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help='the function of the score x, e.g. "exp(x)" or "1 + x + x**2/2"')
    p.add_argument("--dim", type=int, default=16, help="head dimension d (default 16)")
    p.add_argument("--radius", type=float, default=1.0, help="bound on |score| for positivity and error bounds (default 1)")
    p.add_argument("--eps", type=float, default=1e-3,
                   help="error target, sup |f - map| on |x| <= radius: the top candidate is the one with the fewest "
                        "features that reaches it (default 1e-3)")
    p.add_argument("--degree", type=int, default=None, help="Taylor degree to use instead of the candidate search")
    p.add_argument("--max-features", type=int, default=None, metavar="N",
                   help="feature budget of the candidates at --dim (default: the most features predicted to beat "
                        "SDPA at --seq-len, by the cost model calibrated on the H200 run v15)")
    p.add_argument("--seq-len", type=int, default=8192, metavar="T",
                   help="sequence length of the recommendation and its predicted times (default 8192)")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 8192, 32768, 65536], help="sequence lengths of the cost table")
    p.add_argument("--value-dim", type=int, default=None, metavar="DV", help="value head dimension of the costs (default --dim)")
    p.add_argument("--window", type=int, default=None, metavar="W",
                   help="add the hybrid section for hybrid_attention(..., window=W) at --seq-len: the window kernel's "
                        "cost, the outside sums' cost, each map's certified error against softmax on |x| <= --radius "
                        "and the predicted ms (W >= 0; f must be >= 0 on the reals)")
    p.add_argument("--n-witness", type=int, default=16, help="size of the full-rank witness of a non-polynomial (default 16)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="a constant used in SPEC, e.g. tau=8 (repeatable)")
    p.add_argument("--no-certify", action="store_true", help="skip the rank certificate")
    p.add_argument("--plot", metavar="OUT.png", help="write the singular-value decay plot at --dim, with the rank bound, "
                                                    "to this file (200 dpi)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _check_parent(path: str, option: str) -> None:
    """Refuse an output path whose directory does not exist, before any work is done."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise PathError(f"{option} {path!r}: the directory {str(parent)!r} does not exist; create it or "
                        "choose another path")


def _run_analyze(args) -> int:
    """Analyse f: class, rank, certificate, positivity, PD/metric class, recommended maps under a budget
    (with --window, the window + feature-map hybrid)."""
    from fastattn.analysis import PLOT_DPI, analyze

    for option, value in (("--max-features", args.max_features), ("--seq-len", args.seq_len),
                          ("--value-dim", args.value_dim)):
        if value is not None and value < 1:
            raise UsageError("fastattn analyze", f"argument {option}: must be an integer >= 1, got {value}")
    if args.window is not None and args.window < 0:
        raise UsageError("fastattn analyze", f"argument --window: must be an integer >= 0 (the keys that get exact "
                                             f"softmax; 0 means none), got {args.window}")
    if args.plot:
        _check_parent(args.plot, "--plot")
    a = analyze(args.spec, dim=args.dim, radius=args.radius, eps=args.eps, degree=args.degree, seq_lens=args.seq_lens,
                n_witness=args.n_witness, certify=not args.no_certify, params=_params(args.param) or None,
                progress=not args.json and sys.stderr.isatty(), seq_len=args.seq_len, max_features=args.max_features,
                value_dim=args.value_dim, window=args.window)
    if args.plot:
        fig = a.plot()
        fig.savefig(args.plot, dpi=PLOT_DPI)
    if args.json:
        out = a.to_dict()
        if args.plot:
            out["plot"] = args.plot
        print(json.dumps(out, indent=2))
    else:
        print(a)
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


# -- check ----------------------------------------------------------------------------------------
_PROPERTIES = ("rank", "preservation", "pd", "metric")


def _add_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help='the function of the score x, e.g. "tanh(x)"')
    p.add_argument("--n", type=int, default=32, help="size of the full-rank witness / preservation check (default 32)")
    p.add_argument("--dim", type=int, default=2, help="head dimension for the low-rank certificate of a polynomial (default 2)")
    p.add_argument("--property", choices=_PROPERTIES + ("all",), default="rank",
                   help="which theorem to check (default rank; 'all' runs every one)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="a constant used in SPEC (repeatable)")
    p.add_argument("--full", action="store_true", help="include the full witness (points, matrices) in --json output")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _low_rank_verdict(f, rank):
    """True for a polynomial (the multinomial identity), False only for a verified full-rank witness, else None."""
    if f.is_polynomial:
        return True
    if rank is None:
        return None
    cert, d = rank
    return False if (cert.check == "full-rank" and cert.holds is True and d.get("verified") is True) else None


def _run_check(args) -> int:
    """Build the certificate (or counter-example) for f and re-verify it independently."""
    from fastattn.proofs_checks import (
        CertificateError, low_rank_preservation, metric_transform, positive_definite, rank_check,
    )
    from fastattn.transforms import spec

    f = spec(args.spec, params=_params(args.param) or None)
    props = _PROPERTIES if args.property == "all" else (args.property,)
    results = {}
    status = 0
    for prop in props:
        if prop == "rank":
            cert = rank_check(f, d=args.dim, n=args.n)
        elif prop == "preservation":
            cert = low_rank_preservation(f, args.n)
        elif prop == "pd":
            cert = positive_definite(f)
        else:
            cert = metric_transform(f)
        d = cert.to_dict(full=args.full)
        if cert.holds is None:
            d["verified"] = None
        else:
            try:
                d["verified"] = cert.verify()
            except CertificateError as exc:
                d["verified"] = False
                d["verify_error"] = str(exc)
                status = 1
        results[prop] = (cert, d)
    if args.json:
        first = results[props[0]][1]
        out = {
            "spec": f.source, "kind": f.kind, "low_rank": _low_rank_verdict(f, results.get("rank")),
            "rank_bound": first["numbers"].get("rank_bound") if props[0] == "rank" and first.get("numbers") else None,
            "feature_dim": first["numbers"].get("rank_bound") if props[0] == "rank" and first.get("numbers") else None,
            "certificate": first,
        }
        if len(props) > 1:
            out["checks"] = {p: d for p, (_, d) in results.items()}
        print(json.dumps(out, indent=2))
    else:
        for prop, (cert, d) in results.items():
            print(cert)
            v = d["verified"]
            print("  verified: " + ("yes (independent recomputation)" if v else "n/a" if v is None else f"NO — {d.get('verify_error')}"))
    return status


register_command("analyze", _add_analyze, _run_analyze)
register_command("check", _add_check, _run_check)


# -- generate -----------------------------------------------------------------------------------
def _add_generate(p: argparse.ArgumentParser) -> None:
    from fastattn.kernels.generate import add_generate_arguments

    add_generate_arguments(p)


def _run_generate(args: argparse.Namespace) -> int:
    """Write one standalone .py (Triton kernels + autograd Function + nn.Module) for a spec."""
    from fastattn.kernels.generate import run_generate

    return run_generate(args)


register_command("generate", _add_generate, _run_generate)


# -- bench --------------------------------------------------------------------------------------
def _add_bench(p: argparse.ArgumentParser) -> None:
    from fastattn.bench import add_arguments

    add_arguments(p)


def _run_bench(args: argparse.Namespace) -> int:
    """GPU benchmarks: table (ours vs peers, RESULTS.md), check, plot, quality, decode, and the benchmark scripts (sweep, hybrid, sparse, flurka, flash, gated, memory)."""
    from fastattn.bench import run

    return run(args)


register_command("bench", _add_bench, _run_bench)


# -- entry point ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastattn", description="Which entrywise f keep f(QK^T) low rank, with proofs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, add_arguments, run in COMMANDS:
        p = sub.add_parser(name, help=getattr(run, "__cli_help__", ""), description=getattr(run, "__cli_help__", ""))
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def _describe(exc: BaseException) -> str:
    """One line for an expected error: an OSError names its path and reason."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename!r}: " if exc.filename is not None else ""
        return f"{where}{exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _report(command: str, exc: BaseException, as_json: bool) -> int:
    """Print the error (JSON on stdout with --json, else one line on stderr) and return exit code 2."""
    if as_json:
        print(json.dumps({"error": _describe(exc), "kind": type(exc).__name__}))
    else:
        print(f"{command}: error: {_describe(exc)}", file=sys.stderr)
    return 2


def _silence_stdout() -> None:
    # the reader went away: send what is still buffered to devnull so the exit flush cannot fail
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv=None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 a claim did not verify, 2 bad input or path)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _report(exc.prog, exc, "--json" in argv)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    command = f"fastattn {args.command}"
    try:
        try:
            code = args._run(args)
        except BrokenPipeError:
            raise
        # the user's fault (a spec, a value, a path): one line; anything else is a bug and tracebacks
        except (FastAttnError, ValueError, OSError) as exc:
            code = _report(command, exc, getattr(args, "json", False))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
