"""Speed of the generated kernels against their peers at their best, one run on one GPU.

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
  power-attention ``power_full(deg=2)`` at d64, best of chunk 128 / 256 / 1024; fla ``fused_chunk_based`` and ``parallel_based`` (Based shape,
  the same map as ours) and the faster of fla's ``chunk_linear_attn`` / ``fused_chunk_linear_attn``
  (d64, ``normalize=False``: the same map as our ``x`` row). fla and power-attention take
  [B, T, H, D]; their inputs are made contiguous in that layout before timing.
* the floor of each of ours: max(FLOPs / bf16 matmul rate, bytes / copy bandwidth), both
  ceilings measured at the start of this run. FLOPs per token (forward) are those of the
  chunkwise form with chunk C = 64: C (D + DV) for the causal half of the diagonal tile and
  4 F DV for the state (update and read-out), F the symmetric feature count; the backward
  counts 2.5x. Bytes: q, k, v read and o written once (forward); q, k, v, o, do read and
  dq, dk, dv written once (backward), all bf16, plus the fp32 normaliser.

Before timing, each of ours is checked against the fp32 quadratic reference (``check_gpu.run``:
o, dq, dk, dv at T = 4096, bf16 tolerance), and against the peers that compute the same map on
the same inputs (Based vs fla, x² vs power-attention); a row that fails is not timed.

    python benchmarks/bench.py                       # T = 2K, 4K, 8K, 16K, 32K, 64K, every row
    python benchmarks/bench.py --T 8192 --rows ours  # a subset
    python benchmarks/bench.py --results benchmarks/RESULTS.md
    python benchmarks/bench.py --json out.json --plot out.png   # also the raw numbers and a plot
    python benchmarks/bench.py --graphs   # also fwd+bwd replayed from a CUDA graph (no host launch path)

The table replaces the block between the ``bench:begin`` / ``bench:end`` markers of the
results file (the notes outside it are kept).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_gpu  # noqa: E402

from fastattn.kernels.poly import poly_attention, polynomial  # noqa: E402

B, H = 2, 16


@dataclass(frozen=True)
class Row:
    """One row of the table: ours (a spec) or a peer, with its batch, heads and the lengths it runs at.

    A peer with several documented settings (``variants``: chunk sizes, kernels) is timed at each and
    reports the fastest per column, naming the setting, so that no peer is pinned to a slower path.
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
    # power-attention's chunk sizes (its quadratic path, chunk_size=None, did not finish one 8K timing in
    # 5 minutes on the H200: RESULTS.md, probe 30)
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


def ceilings():
    """Measured bf16 matmul rate (FLOP/s) and device copy bandwidth (bytes read + written per s)."""
    from triton.testing import do_bench

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, warmup=100, rep=500, return_mode="median")
    rate = 2 * 8192**3 / (ms * 1e-3)
    x = torch.randn(2**29, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=100, rep=500, return_mode="median")
    bw = 2 * x.numel() * 2 / (ms * 1e-3)
    del a, b, x, y
    torch.cuda.empty_cache()
    return rate, bw


def floor_ms(row, T, rate, bw, chunk=64):
    """(forward, forward+backward) floors in ms for one of ours: the row's B x H sequences of T tokens."""
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


def make_fn(name, T, gen, tiling=None, variant=""):
    """(fn, inputs needing grad, upstream grad) for one row (at one of its settings) at length T.

    ``tiling``: kwargs for ours. Ours and SDPA take [B, H, T, D]; fla and power-attention take
    [B, T, H, D], and their inputs are made contiguous in that layout before timing.
    """
    import torch.nn.functional as Fn

    row = ROW[name]
    Bn, Hn = row.B, row.H

    def rnd(*shape):
        return torch.randn(*shape, device="cuda", generator=gen, dtype=torch.float32).to(torch.bfloat16)

    if row.spec is not None:
        poly = polynomial(row.spec)
        q, k, v, do = rnd(Bn, Hn, T, row.D), rnd(Bn, Hn, T, row.D), rnd(Bn, Hn, T, row.DV), rnd(Bn, Hn, T, row.DV)
        kw = tiling or {}
        fn = lambda q, k, v: poly_attention(q, k, v, poly, causal=True, normalize=row.normalize,  # noqa: E731
                                            backend="triton", **kw)
        return fn, (q, k, v), do
    if name.startswith("sdpa"):
        q, k, v, do = (rnd(Bn, Hn, T, row.D) for _ in range(4))
        return (lambda q, k, v: Fn.scaled_dot_product_attention(q, k, v, is_causal=True)), (q, k, v), do
    if name.startswith("power_full"):
        from power_attention import power_full

        chunk = int(variant.split()[-1])
        q, k, v, do = (rnd(Bn, T, Hn, row.D) for _ in range(4))
        return (lambda q, k, v: power_full(q, k, v, deg=2, chunk_size=chunk)), (q, k, v), do
    if name.startswith("fla") and "based" in name:
        from fla.ops.based import fused_chunk_based, parallel_based

        op = fused_chunk_based if "fused_chunk" in name else parallel_based
        q, k, v, do = rnd(Bn, T, Hn, 16), rnd(Bn, T, Hn, 16), rnd(Bn, T, Hn, 64), rnd(Bn, T, Hn, 64)
        return (lambda q, k, v: op(q, k, v)), (q, k, v), do
    if name.startswith("fla linear_attn"):
        from fla.ops.linear_attn import chunk_linear_attn, fused_chunk_linear_attn

        op = chunk_linear_attn if variant == "chunk" else fused_chunk_linear_attn
        q, k, v, do = (rnd(Bn, T, Hn, 64) for _ in range(4))
        return (lambda q, k, v: op(q, k, v, normalize=False)[0]), (q, k, v), do
    raise KeyError(name)


def sdpa_backend(name, T, gen):
    """Which SDPA backend ran for this row (forward / backward), read from the CUDA kernel names."""
    from torch.profiler import ProfilerActivity, profile

    fn, ins, do = make_fn(name, T, gen)
    ins = [x.requires_grad_() for x in ins]
    found = []
    for part in ("fwd", "bwd"):
        o = fn(*ins)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            if part == "fwd":
                fn(*ins)
            else:
                o.backward(do)
            torch.cuda.synchronize()
        names = " ".join(e.key.lower() for e in prof.key_averages())
        label = next((lab for tag, lab in (("cudnn", "cuDNN"), ("flash", "FLASH_ATTENTION"),
                                           ("fmha", "EFFICIENT_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"))
                      if tag in names), "MATH/other")
        found.append(label)
    del fn, ins, do
    torch.cuda.empty_cache()
    return found[0] if found[0] == found[1] else f"{found[0]} fwd / {found[1]} bwd"


def time_row(name, T, seed, warmup, rep, tiling=None, graphs=False):
    """One row at length T: each of its settings timed, the fastest kept per column (with the setting's name).

    Returns {"fwd", "fwdbwd", "peak_mib"} (None where it ran out of memory), "setting" / "fwd_setting"
    (the winners of fwd+bwd and of fwd), "sdpa_backend" for SDPA rows, and with ``graphs`` "fwdbwd_graph".
    """
    row = ROW[name]
    best = None
    for variant in row.variants:
        try:
            r = _time_setting(name, T, seed, warmup, rep, tiling, graphs, variant)
        except Exception as exc:  # noqa: BLE001  a peer setting that fails is a gap in the table, said out loud
            print(f"  {name} [{variant}] T={T}: FAILED {type(exc).__name__}: {str(exc)[:160]}", flush=True)
            r = {"fwd": None, "fwdbwd": None, "peak_mib": None, "error": f"{type(exc).__name__}"}
        if variant:
            print(f"  {name} [{variant}] T={T}: fwd {fmt(r['fwd'])} fwd+bwd {fmt(r['fwdbwd'])}", flush=True)
        if best is None:
            best = dict(r, setting=variant, fwd_setting=variant)
            continue
        for key in ("fwd", "fwdbwd", "fwdbwd_graph"):
            if r.get(key) is not None and (best.get(key) is None or r[key] < best[key]):
                best[key] = r[key]
                if key == "fwdbwd":
                    best["setting"], best["peak_mib"] = variant, r["peak_mib"]
                if key == "fwd":
                    best["fwd_setting"] = variant
    if name.startswith("sdpa"):
        best["sdpa_backend"] = sdpa_backend(name, T, torch.Generator(device="cuda").manual_seed(seed))
        best["setting"] = best["fwd_setting"] = best["sdpa_backend"] + " (default)"
    return best


def _time_setting(name, T, seed, warmup, rep, tiling, graphs, variant):
    from triton.testing import do_bench

    gen = torch.Generator(device="cuda").manual_seed(seed)
    fn, ins, do = make_fn(name, T, gen, tiling, variant)
    ins = [x.requires_grad_() for x in ins]
    out = {}
    try:
        with torch.no_grad():
            # the first call compiles the row's kernels; the GPU idles (and clocks down) meanwhile,
            # which a short warm-up did not always undo (RESULTS.md, decision log)
            fn(*ins)
            torch.cuda.synchronize()
            out["fwd"] = do_bench(lambda: fn(*ins), warmup=warmup, rep=rep, return_mode="median")

        def fb():
            fn(*ins).backward(do)
        fb()
        torch.cuda.synchronize()
        for x in ins:
            x.grad = None
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        fb()
        torch.cuda.synchronize()
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["fwdbwd"] = do_bench(fb, warmup=warmup, rep=rep, grad_to_none=ins, return_mode="median")
        if graphs:
            out["fwdbwd_graph"] = time_graph(fn, ins, do, warmup, rep)
    except torch.OutOfMemoryError:
        for key in ("fwd", "fwdbwd", "peak_mib", "fwdbwd_graph"):
            out.setdefault(key, None)
    del fn, ins, do
    torch.cuda.empty_cache()
    return out


def time_graph(fn, ins, do, warmup, rep):
    """Median ms of one fwd+bwd replayed from a CUDA graph (graphs.capture), None if it cannot be captured."""
    from triton.testing import do_bench

    import graphs

    graph = None
    try:
        graph, *_ = graphs.capture(fn, ins, do)
        ms = do_bench(graph.replay, warmup=warmup, rep=rep, return_mode="median")
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001  a library that syncs with the host cannot be captured: a gap
        print(f"  (no CUDA graph: {type(exc).__name__}: {str(exc)[:120]})", flush=True)
        ms = None
    del graph
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return ms


def check_row(name, T=4096):
    """One of ours against the fp32 quadratic reference (check_gpu.run: o, dq, dk, dv, bf16)."""
    row = ROW[name]
    rows = check_gpu.run(row.spec, row.D, row.DV, row.normalize, T, torch.bfloat16, 1, 4, causal=True)
    return all(good for _, _, good in rows), [
        f"{name} T={T} {t}: max-rel {e['max_rel']:.2e} rel-RMS {e['rel_rms']:.2e} {'ok' if good else 'FAIL'}"
        for t, e, good in rows]


def _same_inputs(lines, label, ours, theirs, tol=2e-2):
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    lines.append(f"{label}: rel-RMS {rel:.2e} {'ok' if rel < tol else 'FAIL'}")
    return rel < tol


def check_ours(rows):
    """Each of ours in its own process (a kernel fault poisons the CUDA context), then ours against the
    peers computing the same map on the same inputs (Based vs fla, x² vs power-attention). Returns
    (all ok, log lines, rows that failed)."""
    import subprocess

    lines, ok, failed = [], True, []
    for row in [r for r in rows if r in ROW and ROW[r].spec is not None]:
        code = ("import sys, json; sys.path.insert(0, 'benchmarks'); import bench; "
                f"ok, lines = bench.check_row({row!r}); print(json.dumps([ok, lines]))")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=str(Path(__file__).resolve().parent.parent))
        try:
            good, out = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            good, out = False, [f"{row}: check crashed: " + (p.stderr.strip().splitlines() or ["?"])[-1]]
        ok &= good
        lines += out
        if not good:
            failed.append(row)
    g = torch.Generator(device="cuda").manual_seed(1)
    try:
        from fla.ops.based import fused_chunk_based, parallel_based

        q, k = (torch.randn(1, 4, 2048, 16, device="cuda", generator=g).bfloat16() for _ in range(2))
        v = torch.randn(1, 4, 2048, 64, device="cuda", generator=g).bfloat16()
        ours = poly_attention(q, k, v, "1 + x + x**2/2", normalize=True, backend="triton").float()
        for name, op in (("fused_chunk_based", fused_chunk_based), ("parallel_based", parallel_based)):
            theirs = op(*(x.transpose(1, 2).contiguous() for x in (q, k, v))).transpose(1, 2).float()
            ok &= _same_inputs(lines, f"ours Based vs fla {name} (same inputs, T=2048)", ours, theirs)
    except ImportError as exc:
        lines.append(f"fla not importable ({exc}); fla rows skipped")
    except Exception as exc:  # noqa: BLE001  a failed comparison fails the check, with its reason
        ok = False
        lines.append(f"ours Based vs fla: FAIL {type(exc).__name__}: {str(exc)[:200]}")
    try:
        from power_attention import power_full

        q, k, v = (torch.randn(1, 4, 4096, 64, device="cuda", generator=g).bfloat16() for _ in range(3))
        ours = poly_attention(q, k, v, "x**2", normalize=True, backend="triton").float()
        for chunk in (256, 1024):
            theirs = power_full(*(x.transpose(1, 2).contiguous() for x in (q, k, v)), deg=2, chunk_size=chunk)
            ok &= _same_inputs(lines, f"ours x² vs power_full deg 2 chunk {chunk} (same inputs, T=4096)",
                               ours, theirs.transpose(1, 2).float())
    except ImportError as exc:
        lines.append(f"power-attention not importable ({exc}); power rows skipped")
    except Exception as exc:  # noqa: BLE001
        ok = False
        lines.append(f"ours x² vs power_full: FAIL {type(exc).__name__}: {str(exc)[:200]}")
    return ok, lines, failed


def fmt(x, nd=2):
    if x is None:
        return "n/a"
    return f"{x:.{nd}f}" if x < 100 else f"{x:.0f}"


# the timings a target compares; "graph" rows (bench --graphs) read device time without the host's
# launch path, beside the eager ones
LABEL = {"fwd": "fwd", "fwdbwd": "fwd+bwd", "fwdbwd_graph": "fwd+bwd (graph)"}
BASED, D64, D128, X2, X1, BASED_B8 = ("ours 1+x+x²/2 d16 v64", "ours 1+x+x²/2 d64", "ours 1+x+x²/2 d128 h8",
                                      "ours x² d64", "ours x d64", "ours 1+x+x²/2 d16 v64 b8")


def targets(res, Ts):
    """Issue 14's targets on this run's numbers (speed-ups are peer time / our time; the graph column,
    where it was timed, is read beside the eager one). Returns (name, value, need, met) rows."""
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
    path = Path(path)
    old = path.read_text() if path.exists() else "# Benchmark results\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block.rstrip("\n") + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


def render_saved(path, results):
    """Write the table and targets of a saved ``--json`` run into ``results`` (a cut-short run says so)."""
    data = json.loads(Path(path).read_text())
    if "meta" not in data or "results" not in data:
        print(f"{path}: not a bench.py --json run (needs 'meta' and 'results')", file=sys.stderr)
        return 2
    res = {n: {int(t): c for t, c in cells.items()} for n, cells in data["results"].items()}
    Ts = sorted({t for cells in res.values() for t in cells})
    rows = [r.name for r in ROWS if r.name in res]
    lines = list(data.get("check_lines", []))
    if data.get("partial"):
        missing = [r.name for r in ROWS if r.name not in res]
        lines.append(f"this run was cut short by its time limit; rows not timed: {', '.join(missing) or 'none'}")
    write_results(results, render(data["meta"], res, Ts, rows, lines, targets(res, Ts)))
    print(f"wrote {results} from {path}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768, 65536])
    ap.add_argument("--rows", nargs="+", default=["all"],
                    help="'all', 'ours', 'peers', or row names / prefixes (e.g. 'sdpa', 'fla', 'ours x')")
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    ap.add_argument("--plot", default=None, help="also draw the run here (benchmarks/plot.py; .png, .svg, .pdf)")
    ap.add_argument("--warmup", type=int, default=100, help="ms of warm-up before each timing")
    ap.add_argument("--rep", type=int, default=100)
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--graphs", action="store_true",
                    help="also time each row's fwd+bwd replayed from a CUDA graph (no host launch path)")
    ap.add_argument("--sweep", type=int, default=0,
                    help="after the table, time ours over the SWEEP tilings at this T (printed, not written)")
    ap.add_argument("--from-json", default=None, metavar="RUN.json",
                    help="no timing: render a saved run (a cut-short one too) into --results, with its targets")
    args = ap.parse_args(argv)
    if args.from_json:
        return render_saved(args.from_json, args.results)
    if not torch.cuda.is_available():
        print("bench.py needs a CUDA GPU", file=sys.stderr)
        return 2
    names = [r.name for r in ROWS]
    if args.rows == ["all"]:
        rows = names
    else:
        sel = []
        for r in args.rows:
            sel += [n for n in names if (r == "ours" and n.startswith("ours")) or (r == "peers" and n in PEERS)
                    or n.startswith(r)]
        if not sel:
            ap.error(f"--rows {args.rows}: no row matches; rows are {names}")
        rows = [n for n in names if n in sel]
    try:
        import fla
        fla_version = getattr(fla, "__version__", "?")
    except ImportError:
        fla_version = "not installed"
        rows = [n for n in rows if not n.startswith("fla")]
    try:
        from importlib.metadata import version

        power_version = version("power-attention")
    except Exception:  # noqa: BLE001  not installed: its rows are dropped, and the table says so
        power_version = "not installed"
        rows = [n for n in rows if not n.startswith("power")]
    t0 = time.time()
    check_ok, check_lines, failed = (True, ["skipped"], []) if args.skip_check else check_ours(rows)
    print("\n".join(check_lines), flush=True)
    if failed:
        # a row that fails its check is not timed (and its kernels may fault)
        print(f"correctness check FAILED for {failed}: those rows are not timed", file=sys.stderr)
        rows = [r for r in rows if r not in failed]
    rate, bw = ceilings()
    print(f"ceilings: {rate / 1e12:.0f} TFLOP/s bf16 matmul, {bw / 1e12:.2f} TB/s copy", flush=True)
    meta = dict(card=torch.cuda.get_device_name(), date=datetime.date.today().isoformat(), torch=torch.__version__,
                triton=triton.__version__, fla=fla_version, power=power_version, rate=rate, bw=bw, check_ok=check_ok,
                command="python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    res = {}
    for name in rows:
        for T in args.T:
            if ROW[name].Ts is not None and T not in ROW[name].Ts:
                continue
            r = time_row(name, T, seed=T, warmup=args.warmup, rep=args.rep, graphs=args.graphs)
            if ROW[name].spec is not None:
                r["floor_fwd"], r["floor_fwdbwd"] = floor_ms(ROW[name], T, rate, bw)
            res.setdefault(name, {})[T] = r
            if args.json:  # a run cut short by a time limit still leaves every finished cell
                Path(args.json).write_text(json.dumps(dict(partial=True, meta=meta, check_lines=check_lines, results={
                    n: {str(t): v for t, v in c.items()} for n, c in res.items()}), indent=1))
            print(f"{name:28s} T={T:6d} fwd {fmt(r['fwd'])} ms  fwd+bwd {fmt(r['fwdbwd'])} ms  "
                  f"peak {fmt(r['peak_mib'], 0)} MiB  {r.get('setting') or ''}", flush=True)
    tgt = targets(res, args.T)
    block = render(meta, res, args.T, rows, check_lines, tgt)
    write_results(args.results, block)
    data = dict(meta=meta, check_lines=check_lines, results={n: {str(t): v for t, v in r.items()} for n, r in res.items()})
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
    if args.plot and res:
        import plot

        plot.figure(data).savefig(args.plot, dpi=120)
    if args.sweep:
        print(f"\nsweep at T={args.sweep} (chunk, block_f, block_v, segments): fwd / fwd+bwd ms")
        for row in [r for r in rows if ROW[r].spec is not None]:
            for chunk, bf, bv, seg in SWEEP:
                tl_ = dict(chunk=chunk, block_f=bf, block_v=bv, segments=seg)
                try:
                    r = time_row(row, args.sweep, seed=1, warmup=args.warmup, rep=args.rep, tiling=tl_)
                    print(f"sweep | {row} | {chunk} | {bf} | {bv} | {seg} | {fmt(r['fwd'], 3)} | "
                          f"{fmt(r['fwdbwd'], 3)} |", flush=True)
                except Exception as exc:  # a tiling that does not compile is a row, not the end of the run
                    print(f"sweep | {row} | {chunk} | {bf} | {bv} | {seg} | error {type(exc).__name__}: "
                          f"{str(exc)[:80]} |", flush=True)
    print(f"bench took {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
