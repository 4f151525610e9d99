"""Speed of the generated kernels against torch SDPA (flash) and flash-linear-attention, one run on one GPU.

Batch 2, 16 heads, bf16, causal. For each T: forward and forward+backward (median ms of
``triton.testing.do_bench``) and the peak memory of one forward+backward (inputs, outputs
and gradients included), for

* ours, generated from a spec (``fastattn.kernels.poly.poly_attention``, layout [B, H, T, D]):
  ``1 + x + x**2/2`` at q/k dim 16, v dim 64 (fla's Based shape, normalised: o / sum f) and at
  q/k/v dim 64 (2145 features, normalised); ``x`` at dim 64 (not normalised); ``(1+x)**3`` at
  q/k dim 16, v dim 64 (not normalised: f < 0 somewhere). Scale s = D**-0.5 everywhere.
* torch SDPA with the flash backend at head dim 64 and 128 (softmax, causal).
* fla ``fused_chunk_based`` and ``parallel_based`` (q/k 16, v 64; f = 1 + x + x^2/2 with
  s = 16**-0.5, normalised by default: o / (sum f + 1e-6), the same map as our Based row) and
  ``chunk_linear_attn`` (dim 64, ``normalize=False``: the same map as our ``x`` row). fla takes
  [B, T, H, D]; its inputs are made contiguous in that layout before timing.
* the floor of each of ours: max(FLOPs / bf16 matmul rate, bytes / copy bandwidth), both
  ceilings measured at the start of this run. FLOPs per token (forward) are those of the
  chunkwise form with chunk C = 64: C (D + DV) for the causal half of the diagonal tile and
  4 F DV for the state (update and read-out), F the symmetric feature count; the backward
  counts 2.5x. Bytes: q, k, v read and o written once (forward); q, k, v, o, do read and
  dq, dk, dv written once (backward), all bf16, plus the fp32 normaliser.

Before timing, ours is checked against the fp32 quadratic reference (``check_gpu.run``:
o, dq, dk, dv at T = 4096, bf16 tolerance) and against fla's Based output on the same
inputs; the run stops if a check fails.

    python benchmarks/bench.py                       # T = 2K, 8K, 32K, 64K, every row
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
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_gpu  # noqa: E402

from fastattn.kernels.poly import poly_attention, polynomial  # noqa: E402

B, H = 2, 16
# name, spec, D, DV, normalize
OURS = [
    ("ours 1+x+x²/2 d16 v64", "1 + x + x**2/2", 16, 64, True),
    ("ours 1+x+x²/2 d64", "1 + x + x**2/2", 64, 64, True),
    ("ours x d64", "x", 64, 64, False),
    ("ours (1+x)³ d16 v64", "(1+x)**3", 16, 64, False),
]
PEERS = ["sdpa d64", "sdpa d128", "fla fused_chunk_based", "fla parallel_based", "fla chunk_linear_attn"]
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


def floor_ms(spec, D, DV, normalize, T, rate, bw, chunk=64):
    """(forward, forward+backward) floors in ms for B x H sequences of T tokens."""
    F = polynomial(spec).feature_dim(D)
    n = B * H * T
    fl_f = n * (chunk * (D + DV) + 4 * F * DV)
    fl_b = 2.5 * fl_f
    zb = 4 if normalize else 0
    by_f = n * (2 * (2 * D + DV) + 2 * DV + zb)
    by_b = n * (2 * (2 * D + 3 * DV) + 2 * (2 * D + DV) + zb)
    f = max(fl_f / rate, by_f / bw) * 1e3
    fb = max((fl_f + fl_b) / rate, (by_f + by_b) / bw) * 1e3
    return f, fb


def make_fn(name, T, gen, tiling=None):
    """(fn, inputs needing grad, upstream grad) for one row at length T (``tiling``: kwargs for ours)."""
    import torch.nn.functional as Fn

    def rnd(*shape):
        return torch.randn(*shape, device="cuda", generator=gen, dtype=torch.float32).to(torch.bfloat16)

    for row, spec, D, DV, norm in OURS:
        if name == row:
            poly = polynomial(spec)
            q, k, v, do = rnd(B, H, T, D), rnd(B, H, T, D), rnd(B, H, T, DV), rnd(B, H, T, DV)
            kw = tiling or {}
            fn = lambda q, k, v: poly_attention(q, k, v, poly, causal=True, normalize=norm, backend="triton", **kw)  # noqa
            return fn, (q, k, v), do
    if name.startswith("sdpa"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        D = int(name.split("d")[-1])
        q, k, v, do = (rnd(B, H, T, D) for _ in range(4))

        def fn(q, k, v):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return Fn.scaled_dot_product_attention(q, k, v, is_causal=True)
        return fn, (q, k, v), do
    if name in ("fla fused_chunk_based", "fla parallel_based"):
        from fla.ops.based import fused_chunk_based, parallel_based

        op = fused_chunk_based if name.endswith("fused_chunk_based") else parallel_based
        q, k, v, do = rnd(B, T, H, 16), rnd(B, T, H, 16), rnd(B, T, H, 64), rnd(B, T, H, 64)
        return (lambda q, k, v: op(q, k, v)), (q, k, v), do
    if name == "fla chunk_linear_attn":
        from fla.ops.linear_attn import chunk_linear_attn

        q, k, v, do = (rnd(B, T, H, 64) for _ in range(4))
        return (lambda q, k, v: chunk_linear_attn(q, k, v, normalize=False)[0]), (q, k, v), do
    raise KeyError(name)


def time_row(name, T, seed, warmup, rep, tiling=None, graphs=False):
    """{"fwd", "fwdbwd", "peak_mib"} for one row at length T (None where it ran out of memory); with
    ``graphs`` also "fwdbwd_graph": the fwd+bwd captured once in a CUDA graph and replayed (None where
    the row cannot be captured), which takes the host's launch path out of the time."""
    from triton.testing import do_bench

    gen = torch.Generator(device="cuda").manual_seed(seed)
    fn, ins, do = make_fn(name, T, gen, tiling)
    ins = [x.requires_grad_() for x in ins]
    out = {}
    try:
        with torch.no_grad():
            # the first call compiles the row's kernels; the GPU idles (and clocks down) meanwhile,
            # which a short warm-up did not always undo: H200, Based 8K fwd read 0.49-0.53 ms as
            # the first timing after a compile and 0.38 ms in every later one (benchmarks/out/sweep26)
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
        out.setdefault("fwd", None)
        out.setdefault("fwdbwd", None)
        out.setdefault("peak_mib", None)
        out.setdefault("fwdbwd_graph", None)
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


def check_row(row, T=4096):
    """One of ours against the fp32 quadratic reference (check_gpu.run: o, dq, dk, dv, bf16)."""
    for name, spec, D, DV, norm in OURS:
        if name == row:
            rows = check_gpu.run(spec, D, DV, norm, T, torch.bfloat16, 1, 4, causal=True)
            return all(good for _, _, good in rows), [
                f"{row} T={T} {t}: max-rel {e['max_rel']:.2e} rel-RMS {e['rel_rms']:.2e} {'ok' if good else 'FAIL'}"
                for t, e, good in rows]
    raise KeyError(row)


def check_ours(rows):
    """Each of ours in its own process (a kernel fault poisons the CUDA context), then our Based
    row against fla's on the same inputs. Returns (all ok, log lines, rows that failed)."""
    import subprocess

    lines, ok, failed = [], True, []
    for row in [r for r in rows if r.startswith("ours")]:
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
    try:
        from fla.ops.based import fused_chunk_based, parallel_based

        g = torch.Generator(device="cuda").manual_seed(1)
        q, k = (torch.randn(1, 4, 2048, 16, device="cuda", generator=g).bfloat16() for _ in range(2))
        v = torch.randn(1, 4, 2048, 64, device="cuda", generator=g).bfloat16()
        ours = poly_attention(q, k, v, "1 + x + x**2/2", normalize=True, backend="triton").float()
        for name, op in (("fused_chunk_based", fused_chunk_based), ("parallel_based", parallel_based)):
            theirs = op(*(x.transpose(1, 2).contiguous() for x in (q, k, v))).transpose(1, 2).float()
            rel = ((ours - theirs).norm() / theirs.norm()).item()
            good = rel < 2e-2
            ok &= good
            lines.append(f"ours Based vs fla {name} (same inputs, T=2048): rel-RMS {rel:.2e} "
                         f"{'ok' if good else 'FAIL'}")
    except ImportError as exc:
        lines.append(f"fla not importable ({exc}); fla rows skipped")
    return ok, lines, failed


def fmt(x, nd=2):
    if x is None:
        return "OOM"
    return f"{x:.{nd}f}" if x < 100 else f"{x:.0f}"


# the timings a target compares; "graph" rows (bench --graphs) read device time without the host's
# launch path, beside the eager ones
LABEL = {"fwd": "fwd", "fwdbwd": "fwdbwd", "fwdbwd_graph": "fwdbwd (graph)"}


def targets(res, Ts):
    """The issue's targets, checked on this run's numbers (and on the graph column where it was timed)."""
    def get(name, T, key):
        r = res.get(name, {}).get(T)
        return None if r is None else r.get(key)

    out = []
    based, fcb = OURS[0][0], "fla fused_chunk_based"
    for T in (8192, 32768):
        for key, need in (("fwdbwd", 4), ("fwd", 4), ("fwdbwd_graph", 4)):
            a, b = get(based, T, key), get(fcb, T, key)
            if a and b:
                out.append((f"1. Based {LABEL[key]} vs fused_chunk_based at {T // 1024}K", b / a, f">= {need}x",
                            b / a >= need))
    d64 = OURS[1][0]
    for T in Ts:
        for key in ("fwdbwd", "fwdbwd_graph"):
            a, b = get(d64, T, key), get("sdpa d64", T, key)
            if a and b and T >= 16384:
                need = 3 if T >= 65536 else 1
                label = "fwd+bwd" + (" (graph)" if key.endswith("graph") else "")
                out.append((f"2. d64 degree 2 {label} vs SDPA d64 at {T // 1024}K", b / a, f"> {need}x"
                            if need == 1 else f">= {need}x", b / a > need if need == 1 else b / a >= need))
    for T in Ts:
        for key in ("fwd", "fwdbwd", "fwdbwd_graph"):
            a, b = get(OURS[2][0], T, key), get("fla chunk_linear_attn", T, key)
            if a and b and T >= 8192:
                out.append((f"3. x d64 {LABEL[key]} time / chunk_linear_attn at {T // 1024}K", a / b, "<= 1.15",
                            a / b <= 1.15))
    a, fl = get(based, 32768, "fwdbwd"), get(based, 32768, "floor_fwdbwd")
    if a and fl:
        out.append(("4. Based fwd+bwd / own floor at 32K", a / fl, "<= 3", a / fl <= 3))
    for row in (based, d64):
        a, b = get(row, 65536, "peak_mib"), get("sdpa d64", 65536, "peak_mib")
        if a and b:
            out.append((f"4. peak memory at 64K, {row} / SDPA d64", a / b, "<= 1.25", a / b <= 1.25))
    for row, *_ in OURS:
        for key in ("fwd", "fwdbwd"):
            a, b = get(row, 65536, key), get(row, 8192, key)
            if a and b:
                out.append((f"5. {row} {key} 64K / 8K", a / b, "<= 9", a / b <= 9))
    return out


def render(meta, res, Ts, rows, check_lines, tgt):
    graphs = any("fwdbwd_graph" in r for row in res.values() for r in row.values())
    L = [BEGIN, "", f"Card: {meta['card']}; {meta['date']}; torch {meta['torch']}, triton {meta['triton']}, "
         f"fla {meta['fla']}. Command: `{meta['command']}`.",
         f"Ceilings measured in this run: bf16 matmul {meta['rate'] / 1e12:.0f} TFLOP/s, device copy "
         f"{meta['bw'] / 1e12:.2f} TB/s. B = {B}, H = {H}, bf16, causal; median ms of do_bench; peak = max "
         "allocated during one fwd+bwd (inputs and grads included)."
         + (" Graph: the same fwd+bwd captured once in a CUDA graph and replayed, without the host's launch path "
            "(n/a: the row could not be captured)." if graphs else ""), "",
         "Correctness before timing (bf16 against the fp32 quadratic reference; Based against fla): "
         + ("passed" if meta["check_ok"] else "FAILED (failing rows are not timed; see the log)") + ".", ""]
    L += ["| row | T | fwd ms | fwd+bwd ms | " + ("fwd+bwd graph ms | " if graphs else "")
          + "peak MiB | floor fwd / fwd+bwd ms |", "|---|---|---|---|" + ("---|" if graphs else "") + "---|---|"]
    for name in rows:
        for T in Ts:
            r = res.get(name, {}).get(T)
            if r is None:
                continue
            floor = (f"{r['floor_fwd']:.3f} / {r['floor_fwdbwd']:.3f}" if "floor_fwd" in r else "")
            graph = (("n/a" if r.get("fwdbwd_graph") is None else fmt(r["fwdbwd_graph"])) + " | ") if graphs else ""
            L.append(f"| {name} | {T // 1024}K | {fmt(r['fwd'])} | {fmt(r['fwdbwd'])} | {graph}"
                     f"{fmt(r['peak_mib'], 0)} | {floor} |")
    L += ["", "Targets (issue 6), on this run's numbers:", "", "| target | measured | need | met |", "|---|---|---|---|"]
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[2048, 8192, 32768, 65536])
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
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.py needs a CUDA GPU", file=sys.stderr)
        return 2
    names = [r[0] for r in OURS] + PEERS
    if args.rows == ["all"]:
        rows = names
    else:
        sel = []
        for r in args.rows:
            sel += [n for n in names if (r == "ours" and n.startswith("ours")) or (r == "peers" and n in PEERS)
                    or n.startswith(r)]
        rows = [n for n in names if n in sel]
    try:
        import fla
        fla_version = getattr(fla, "__version__", "?")
    except ImportError:
        fla_version = "not installed"
        rows = [n for n in rows if not n.startswith("fla")]
    t0 = time.time()
    check_ok, check_lines, failed = (True, ["skipped"], []) if args.skip_check else check_ours(rows)
    print("\n".join(check_lines), flush=True)
    if failed:
        # a row that fails its check is not timed (and its kernels may fault)
        print(f"correctness check FAILED for {failed}: those rows are not timed", file=sys.stderr)
        rows = [r for r in rows if r not in failed]
    rate, bw = ceilings()
    print(f"ceilings: {rate / 1e12:.0f} TFLOP/s bf16 matmul, {bw / 1e12:.2f} TB/s copy", flush=True)
    res = {}
    for name in rows:
        for T in args.T:
            r = time_row(name, T, seed=T, warmup=args.warmup, rep=args.rep, graphs=args.graphs)
            for row, spec, D, DV, norm in OURS:
                if row == name:
                    r["floor_fwd"], r["floor_fwdbwd"] = floor_ms(spec, D, DV, norm, T, rate, bw)
            res.setdefault(name, {})[T] = r
            print(f"{name:28s} T={T:6d} fwd {fmt(r['fwd'])} ms  fwd+bwd {fmt(r['fwdbwd'])} ms  "
                  f"peak {fmt(r['peak_mib'], 0)} MiB", flush=True)
    meta = dict(card=torch.cuda.get_device_name(), date=datetime.date.today().isoformat(), torch=torch.__version__,
                triton=triton.__version__, fla=fla_version, rate=rate, bw=bw, check_ok=check_ok,
                command="python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    tgt = targets(res, args.T)
    block = render(meta, res, args.T, rows, check_lines, tgt)
    write_results(args.results, block)
    data = dict(meta=meta, results={n: {str(t): v for t, v in r.items()} for n, r in res.items()})
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
    if args.plot and res:
        import plot

        plot.figure(data).savefig(args.plot, dpi=120)
    if args.sweep:
        print(f"\nsweep at T={args.sweep} (chunk, block_f, block_v, segments): fwd / fwd+bwd ms")
        for row in [r for r in rows if r.startswith("ours")]:
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
