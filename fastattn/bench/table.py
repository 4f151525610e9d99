"""The benchmark table's rows, its floors, issue 14's targets and its markdown (no GPU needed).

bf16, causal, B = 2 and H = 16 unless a row says otherwise (``h8``: H = 8; ``b8``: B = 8 at
2K and 4K). For each T: forward and forward+backward (median ms of ``triton.testing.do_bench``)
and the peak memory of one forward+backward (inputs, outputs and gradients included), for

* ours, generated from a spec (``fastattn.kernels.poly.poly_attention``, layout [B, H, T, D]):
  ``1 + x + x**2/2`` at q/k dim 16, v dim 64 (fla's Based shape), at dim 64 (2145 features) and
  at dim 128 (8385 features, H = 8), all normalised; ``x**2`` at dim 64 normalised (power
  attention's map); ``x`` at dim 64 and ``(1+x)**3`` at q/k 16, v 64, not normalised. Scale
  s = D**-0.5 everywhere.
* the peers, each at its best (ROWS): torch SDPA with no backend pinned (cuDNN on Hopper; the
  backend that ran is read from the profiler and printed), at d64 and at d128 (H = 8);
  power-attention ``power_full(deg=2)`` at d64, best of chunk 128 / 256 / 1024; fla
  ``fused_chunk_based`` and ``parallel_based`` (Based shape, the same map as ours) and the faster of
  fla's ``chunk_linear_attn`` / ``fused_chunk_linear_attn`` (d64, ``normalize=False``: the same map
  as our ``x`` row). fla and power-attention take [B, T, H, D]; their inputs are made contiguous in
  that layout before timing.
* the floor of each of ours: max(FLOPs / bf16 matmul rate, bytes / copy bandwidth), both
  ceilings measured at the start of the run. FLOPs per token (forward) are those of the
  chunkwise form with chunk C = 64: C (D + DV) for the causal half of the diagonal tile and
  4 F DV for the state (update and read-out), F the symmetric feature count; the backward
  counts 2.5x. Bytes: q, k, v read and o written once (forward); q, k, v, o, do read and
  dq, dk, dv written once (backward), all bf16, plus the fp32 normaliser.

The timing itself is :mod:`fastattn.bench.timing` (GPU); this module renders a run, live or saved
(``fastattn bench table --from-json RUN.json``), into the block between the ``bench:begin`` /
``bench:end`` markers of the results file (the text outside it is kept).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Row", "ROWS", "ROW", "OURS", "PEERS", "SWEEP", "BEGIN", "END", "floor_ms", "fmt", "targets",
           "render", "write_results", "render_saved", "merge_runs", "run_data"]

B, H = 2, 16


@dataclass(frozen=True)
class Row:
    """One row of the table: ours (a spec) or a peer, with its batch, heads and the lengths it runs at.

    A peer with several documented settings (``variants``: chunk sizes, kernels) is timed at each and
    reports the fastest per column, naming the setting, so that no peer is pinned to a slower path.

    >>> ROW["power_full deg2 d64"].variants
    ('chunk 128', 'chunk 256', 'chunk 1024')
    """

    name: str
    D: int
    DV: int
    spec: str | None = None  # ours only
    normalize: bool = True
    B: int = B
    H: int = H
    Ts: tuple | None = None  # None: every --T
    variants: tuple = ("",)


ROWS = [
    Row("ours 1+x+x²/2 d16 v64", 16, 64, "1 + x + x**2/2"),
    Row("ours 1+x+x²/2 d64", 64, 64, "1 + x + x**2/2"),
    Row("ours 1+x+x²/2 d128 h8", 128, 128, "1 + x + x**2/2", H=8),
    Row("ours x² d64", 64, 64, "x**2"),
    Row("ours x d64", 64, 64, "x", normalize=False),
    Row("ours (1+x)³ d16 v64", 16, 64, "(1+x)**3", normalize=False),
    Row("ours 1+x+x²/2 d16 v64 b8", 16, 64, "1 + x + x**2/2", B=8, Ts=(2048, 4096)),
    # SDPA at its default backend (cuDNN on Hopper): the backend that ran is recorded per cell
    Row("sdpa d64", 64, 64),
    Row("sdpa d128 h8", 128, 128, H=8),
    # its quadratic path (chunk_size=None) did not finish one 8K timing in 5 minutes (RESULTS.md, v15)
    Row("power_full deg2 d64", 64, 64, variants=("chunk 128", "chunk 256", "chunk 1024")),
    Row("fla fused_chunk_based", 16, 64),
    Row("fla parallel_based", 16, 64),
    Row("fla parallel_based b8", 16, 64, B=8, Ts=(2048, 4096)),
    Row("fla linear_attn d64", 64, 64, normalize=False, variants=("chunk", "fused_chunk")),
]
ROW = {r.name: r for r in ROWS}
OURS = [r for r in ROWS if r.spec is not None]
PEERS = [r.name for r in ROWS if r.spec is None]
# tilings tried by --sweep: (chunk, block_f, block_v, segments); None = the default choice
SWEEP = [(64, 64, None, None), (32, 64, None, None), (64, 64, 32, None), (64, 32, None, None),
         (64, 128, 32, None), (128, 64, 32, None), (64, 64, None, 1)]
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def floor_ms(row, T, rate, bw, chunk=64):
    """(forward, forward+backward) floors in ms for one of ours: the row's B x H sequences of T tokens.

    >>> f, fb = floor_ms(ROW["ours x d64"], 8192, rate=685e12, bw=4.22e12)
    >>> round(f, 4), round(fb, 4)
    (0.0318, 0.0954)
    """
    from fastattn.kernels.poly import polynomial

    D, DV = row.D, row.DV
    F = polynomial(row.spec).feature_dim(D)
    n = row.B * row.H * T
    fl_f = n * (chunk * (D + DV) + 4 * F * DV)
    fl_b = 2.5 * fl_f
    zb = 4 if row.normalize else 0
    by_f = n * (2 * (2 * D + DV) + 2 * DV + zb)
    by_b = n * (2 * (2 * D + 3 * DV) + 2 * (2 * D + DV) + zb)
    f = max(fl_f / rate, by_f / bw) * 1e3
    fb = max((fl_f + fl_b) / rate, (by_f + by_b) / bw) * 1e3
    return f, fb


def fmt(x, nd=2):
    """A cell: ``nd`` decimals below 100 ms, none above, ``n/a`` for a gap.

    >>> fmt(1.234), fmt(142.4), fmt(None)
    ('1.23', '142', 'n/a')
    """
    if x is None:
        return "n/a"
    return f"{x:.{nd}f}" if x < 100 else f"{x:.0f}"


# the timings a target compares; "graph" rows (--graphs) read device time without the host's
# launch path, beside the eager ones
LABEL = {"fwd": "fwd", "fwdbwd": "fwd+bwd", "fwdbwd_graph": "fwd+bwd (graph)"}
BASED, D64, D128, X2, X1, BASED_B8 = ("ours 1+x+x²/2 d16 v64", "ours 1+x+x²/2 d64", "ours 1+x+x²/2 d128 h8",
                                      "ours x² d64", "ours x d64", "ours 1+x+x²/2 d16 v64 b8")


def targets(res, Ts):
    """Issue 14's targets on a run's numbers: (name, value, need, met) rows.

    Speed-ups are peer time / our time; the graph column, where it was timed, is read beside the
    eager one. ``res`` maps row name -> T -> cell.

    >>> res = {"ours 1+x+x²/2 d64": {8192: {"fwdbwd": 2.0}}, "sdpa d64": {8192: {"fwdbwd": 2.3}}}
    >>> [(n, round(v, 2), need, ok) for n, v, need, ok in targets(res, [8192])]
    [('1. 1+x+x²/2 d64 vs SDPA d64 fwd+bwd at 8K', 1.15, '>= 1x', True)]
    """
    def get(name, T, key):
        r = res.get(name, {}).get(T)
        return None if r is None else r.get(key)

    out = []

    def speedup(label, ours, peer, T, need, keys=("fwdbwd", "fwdbwd_graph")):
        for key in keys:
            a, b = get(ours, T, key), get(peer, T, key)
            if a and b:
                out.append((f"{label} {LABEL[key]} at {T // 1024}K", b / a, f">= {need}x", b / a >= need))

    for T, need in ((8192, 1), (32768, 4), (65536, 8)):
        speedup("1. 1+x+x²/2 d64 vs SDPA d64", D64, "sdpa d64", T, need)
    for T, need in ((32768, 1), (65536, 2)):
        speedup("2. 1+x+x²/2 d128 vs SDPA d128 (B2 H8)", D128, "sdpa d128 h8", T, need)
    for T in Ts:
        if T >= 8192:
            speedup("3. x² d64 vs power_full deg 2 (best setting)", X2, "power_full deg2 d64", T, 2)
    for row in (D64, D128, X2, BASED):
        for T in Ts:
            a, fl = get(row, T, "fwdbwd"), get(row, T, "floor_fwdbwd")
            if a and fl and T >= 8192 and (row != BASED or T == 32768):
                need = 3 if row != BASED else None
                out.append((f"4. {row} fwd+bwd / own floor at {T // 1024}K", a / fl,
                            "<= 3" if need else "report", a / fl <= 3))
    for T in Ts:
        if T >= 8192:
            speedup("5. x d64 vs fla linear_attn (best kernel)", X1, "fla linear_attn d64", T, 1.25,
                    keys=("fwd", "fwdbwd", "fwdbwd_graph"))
    speedup("5. Based vs fla fused_chunk_based", BASED, "fla fused_chunk_based", 32768, 15)
    for T in (2048, 4096):
        speedup("5. Based B8 vs fla parallel_based B8", BASED_B8, "fla parallel_based b8", T, 1.5)
    for row in (r.name for r in OURS):
        peer = "sdpa d128 h8" if ROW[row].D == 128 else "sdpa d64"
        a, b = get(row, 65536, "peak_mib"), get(peer, 65536, "peak_mib")
        if a and b:
            out.append((f"6. peak memory at 64K, {row} / {peer}", a / b, "<= 1.25", a / b <= 1.25))
        a, b = get(row, 65536, "fwdbwd"), get(row, 8192, "fwdbwd")
        if a and b:
            out.append((f"6. {row} fwd+bwd 64K / 8K", a / b, "<= 9", a / b <= 9))
    return out


def render(meta, res, Ts, rows, check_lines, tgt):
    """The markdown block (markers included): the run's card and command, the table, the targets, the log.

    >>> meta = dict(card="H200", date="2026-12-01", torch="2", triton="3", fla="0", command="c",
    ...             rate=7e14, bw=4e12, check_ok=True)
    >>> block = render(meta, {"sdpa d64": {2048: {"fwd": 0.3, "fwdbwd": 1.0, "peak_mib": 100.0}}},
    ...                [2048], ["sdpa d64"], [], [])
    >>> "| sdpa d64 | 2K | 0.30 | 1.00 | 100 |  |  |" in block
    True
    """
    graphs = any("fwdbwd_graph" in r for row in res.values() for r in row.values())
    L = [BEGIN, "", f"Card: {meta['card']}; {meta['date']}; torch {meta['torch']}, triton {meta['triton']}, "
         f"fla {meta['fla']}, power-attention {meta.get('power', '?')}. Command: `{meta['command']}`.",
         f"Ceilings measured in this run: bf16 matmul {meta['rate'] / 1e12:.0f} TFLOP/s, device copy "
         f"{meta['bw'] / 1e12:.2f} TB/s. B = {B}, H = {H} unless the row says (h8: H = 8, b8: B = 8), bf16, causal; "
         "median ms of do_bench; peak = max allocated during one fwd+bwd (inputs and grads included). "
         "Setting: the peer's setting that was fastest for fwd+bwd (each documented setting is timed; SDPA runs "
         "its default backend, named as the profiler saw it)."
         + (" Graph: the same fwd+bwd captured once in a CUDA graph and replayed, without the host's launch path "
            "(n/a: the row could not be captured)." if graphs else ""), "",
         "Correctness before timing (bf16 against the fp32 quadratic reference; ours against the peers that "
         "compute the same map): " + ("passed" if meta["check_ok"] else "FAILED (see the log)") + ".", ""]
    L += ["| row | T | fwd ms | fwd+bwd ms | " + ("fwd+bwd graph ms | " if graphs else "")
          + "peak MiB | floor fwd / fwd+bwd ms | setting |",
          "|---|---|---|---|" + ("---|" if graphs else "") + "---|---|---|"]
    for name in rows:
        for T in Ts:
            r = res.get(name, {}).get(T)
            if r is None:
                continue
            floor = (f"{r['floor_fwd']:.3f} / {r['floor_fwdbwd']:.3f}" if "floor_fwd" in r else "")
            graph = (("n/a" if r.get("fwdbwd_graph") is None else fmt(r["fwdbwd_graph"])) + " | ") if graphs else ""
            setting = r.get("setting") or ""
            if r.get("fwd_setting") and r.get("fwd_setting") != setting:
                setting += f" (fwd: {r['fwd_setting']})"
            L.append(f"| {name} | {T // 1024}K | {fmt(r['fwd'])} | {fmt(r['fwdbwd'])} | {graph}"
                     f"{fmt(r['peak_mib'], 0)} | {floor} | {setting} |")
    L += ["", "Targets (issue 14), on this run's numbers:", "", "| target | measured | need | met |",
          "|---|---|---|---|"]
    L += [f"| {n} | {v:.2f} | {need} | {'yes' if ok else 'no'} |" for n, v, need, ok in tgt]
    L += ["", "<details><summary>correctness log</summary>", "", "```", *check_lines, "```", "", "</details>", "", END]
    return "\n".join(L) + "\n"


def write_results(path, block):
    """Replace the block between the markers of ``path`` (created if missing; appended if it has none).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "R.md")
    >>> write_results(p, BEGIN + "\\nnew\\n" + END + "\\n")
    >>> "new" in open(p).read()
    True
    """
    path = Path(path)
    old = path.read_text() if path.exists() else "# Benchmark results\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block.rstrip("\n") + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


def load_run(path):
    """(meta, results {row: {T: cell}}, check_lines, partial) of a saved ``--json`` run; ValueError if it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or "meta" not in data or "results" not in data:
        raise ValueError(f"{path}: not a `fastattn bench table --json` run (needs 'meta' and 'results')")
    res = {n: {int(t): c for t, c in cells.items()} for n, cells in data["results"].items()}
    return data["meta"], res, list(data.get("check_lines", [])), bool(data.get("partial"))


def run_data(meta, check_lines, res, partial=False):
    """The run as ``--json`` saves it (T keys as strings; ``partial`` while cells are still to come)."""
    results = {n: {str(t): v for t, v in cells.items()} for n, cells in res.items()}
    data = dict(meta=meta, check_lines=check_lines, results=results)
    return dict(partial=True, **data) if partial else data


def merge_runs(paths):
    """One run from the ``--json`` files of a run split over several calls (e.g. ours, then the peers, on one
    warm machine): the first file's meta (card, versions, ceilings), every command, every cell (a later file's
    cell replaces an earlier one), every check line once. Files from different cards are refused.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> meta = dict(card="X", command="a", check_ok=True)
    >>> for i, (row, ok) in enumerate((("r1", True), ("r2", False))):
    ...     _ = Path(d, f"{i}.json").write_text(json.dumps(dict(meta=dict(meta, command=row, check_ok=ok),
    ...                                                         results={row: {"8192": {"fwd": 1.0}}})))
    >>> m, res, lines, partial = merge_runs([os.path.join(d, "0.json"), os.path.join(d, "1.json")])
    >>> m["command"], m["check_ok"], sorted(res), partial
    ('r1` and `r2', False, ['r1', 'r2'], False)
    """
    runs = [load_run(p) for p in paths]
    meta = dict(runs[0][0])
    cards = {r[0].get("card") for r in runs}
    if len(cards) > 1:
        raise ValueError(f"{', '.join(map(str, paths))}: runs from different cards ({', '.join(map(str, cards))}) "
                         "do not make one table")
    meta["command"] = "` and `".join(dict.fromkeys(r[0]["command"] for r in runs))
    meta["check_ok"] = all(r[0].get("check_ok", True) for r in runs)
    res, lines = {}, []
    for _, cells, check_lines, _ in runs:
        for name, by_t in cells.items():
            res.setdefault(name, {}).update(by_t)
        lines += [x for x in check_lines if x != "skipped" and x not in lines]
    return meta, res, lines or ["skipped"], any(r[3] for r in runs)


def render_saved(path, results):
    """Write the table and targets of a saved ``--json`` run into ``results`` (a cut-short run says so); ``path``
    may be a list of files, merged by :func:`merge_runs`."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    meta, res, lines, partial = merge_runs(paths)
    Ts = sorted({t for cells in res.values() for t in cells})
    rows = [r.name for r in ROWS if r.name in res]
    if partial:
        missing = [r.name for r in ROWS if r.name not in res]
        lines.append(f"this run was cut short by its time limit; rows not timed: {', '.join(missing) or 'none'}")
    write_results(results, render(meta, res, Ts, rows, lines, targets(res, Ts)))
    print(f"wrote {results} from {', '.join(map(str, paths))}")
    return 0
