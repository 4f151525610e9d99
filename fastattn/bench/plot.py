"""Draw a ``fastattn bench table --json`` run: ms against T (log-log), forward and forward+backward side by side.

Ours are solid lines, each with its floor dotted in the same colour; the peers are dashed. A
cell that ran out of memory (null in the JSON) leaves a gap. Needs matplotlib, not a GPU.

    fastattn bench plot benchmarks/out/v15.json -o benchmarks/v15.png
    fastattn bench plot v15.json --rows "ours 1+x+x²/2 d16 v64" "fla fused_chunk_based" -o based.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["series", "figure", "add_arguments", "run"]

PANELS = (("fwd", "forward"), ("fwdbwd", "forward + backward"))


def series(data, row, key):
    """(T list, ms list) of one row and key ('fwd', 'fwdbwd', 'floor_fwd', ...), T ascending, gaps dropped.

    >>> series({"results": {"a": {"8192": {"fwd": 2.0}, "2048": {"fwd": None}}}}, "a", "fwd")
    ([8192], [2.0])
    """
    cells = data["results"][row]
    pts = sorted((int(t), r.get(key)) for t, r in cells.items())
    return [t for t, v in pts if v is not None], [v for t, v in pts if v is not None]


def figure(data, rows=None):
    """The two-panel matplotlib Figure of one bench JSON (``{"meta": ..., "results": {row: {T: cell}}}``).

    >>> data = {"meta": {"card": "H200"}, "results": {
    ...     "ours x d64": {"8192": {"fwd": 0.3, "fwdbwd": 1.0, "floor_fwd": 0.03, "floor_fwdbwd": 0.1},
    ...                    "32768": {"fwd": 0.4, "fwdbwd": 1.5, "floor_fwd": 0.1, "floor_fwdbwd": 0.4}},
    ...     "sdpa d64": {"8192": {"fwd": 1.0, "fwdbwd": 3.8}, "32768": {"fwd": 14.2, "fwdbwd": None}}}}
    >>> fig = figure(data)
    >>> [len(ax.get_lines()) for ax in fig.axes]
    [3, 3]
    """
    from matplotlib.figure import Figure

    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError("not a bench JSON: expected an object with a 'results' mapping (fastattn bench table --json)")
    names = list(data["results"]) if rows is None else list(rows)
    unknown = [r for r in names if r not in data["results"]]
    if unknown:
        raise ValueError(f"rows not in this run: {unknown}; it has {list(data['results'])}")
    if not names:
        raise ValueError("no rows to draw")
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    for ax, (key, title) in zip(axes, PANELS):
        for name in names:
            ours = name.startswith("ours")
            t, ms = series(data, name, key)
            if t:
                ax.plot(t, ms, "-o" if ours else "--s", color=colours[name], label=name, markersize=4,
                        linewidth=2 if ours else 1.2)
            ft, fms = series(data, name, "floor_" + key)
            if ft:
                ax.plot(ft, fms, ":", color=colours[name], linewidth=1, label=f"{name}: floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T (tokens)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms (median)")
    meta = data.get("meta", {})
    fig.suptitle(f"{meta.get('card', '?')}, {meta.get('date', '?')}: B = 2, H = 16, bf16, causal "
                 "(ours solid, floors dotted, peers dashed)")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=4)
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fastattn bench plot``."""
    p.add_argument("run_json", metavar="RUN.json", help="a `fastattn bench table --json` file")
    p.add_argument("-o", "--out", required=True, help="the image to write (.png, .svg, .pdf)")
    p.add_argument("--rows", nargs="+", default=None, help="rows to draw (default: every row of the run)")


def run(args: argparse.Namespace) -> int:
    """Draw a saved run; a file that is not a run, or an unknown row, raises ValueError / OSError."""
    parent = Path(args.out).parent
    if not parent.is_dir():
        raise OSError(2, f"the directory {str(parent)!r} does not exist", args.out)
    try:
        data = json.loads(Path(args.run_json).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{args.run_json}: not JSON ({exc.msg} at line {exc.lineno})") from None
    fig = figure(data, args.rows)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0
