"""The GPU side of ``fastattn bench table``: ceilings, one timed cell per (row, T), the correctness gate.

Needs a CUDA GPU, torch and triton; the peers (fla, power-attention) are optional and their rows are
dropped, with the reason in the table, when they do not import. Import it only inside a command:
it pulls in ``triton.testing`` and the peers lazily, but its callers are GPU runs.

Before timing, each of ours is checked against the fp32 quadratic reference (:func:`check_row`:
o, dq, dk, dv at T = 4096, bf16 tolerance, each row in its own process because a kernel fault
poisons the CUDA context), and against the peers that compute the same map on the same inputs
(Based vs fla, x² vs power-attention); a row that fails is not timed.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from fastattn.bench.table import ROW, SWEEP, floor_ms, fmt, render, run_data, targets, write_results

__all__ = ["ceilings", "make_fn", "time_row", "capture", "check_row", "check_ours", "run_table"]


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


def make_fn(name, T, gen, tiling=None, variant=""):
    """(fn, inputs needing grad, upstream grad) for one row (at one of its settings) at length T.

    ``tiling``: kwargs for ours. Ours and SDPA take [B, H, T, D]; fla and power-attention take
    [B, T, H, D], and their inputs are made contiguous in that layout before timing.
    """
    import torch.nn.functional as Fn

    from fastattn.kernels.poly import poly_attention, polynomial

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


def median_ms(fn, warmup, rep):
    """Median ms of fn(): triton's do_bench on a GPU, one wall-clock call on the CPU (interpreter smoke runs)."""
    if torch.cuda.is_available():
        import triton.testing
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    import time
    t = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t)


def sdpa_kernel_name(q, k, v):
    """The longest-running CUDA kernel of one causal SDPA call, from torch.profiler ('' on the CPU, '?' if unreadable)."""
    if not q.is_cuda:
        return ""
    from torch.profiler import ProfilerActivity, profile
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            torch.cuda.synchronize()
        rows = [e for e in prof.key_averages() if "cuda" in str(getattr(e, "device_type", "")).lower()]
        top = max(rows, key=lambda e: getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)))
        return top.key[:60]
    except Exception as e:  # the name is a label: never let the profiler stop the timings
        return f"? ({type(e).__name__})"


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
            # the first call compiles; the GPU clocks down meanwhile, which a short warm-up did not undo (v12)
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


def capture(fn, ins, do):
    """(graph, inputs, do, output): ``fn(*inputs).backward(do)`` captured once in a CUDA graph, on
    clones of ``ins`` (leaves needing grad) and ``do``; ``graph.replay()`` reruns it on them and leaves
    the gradients in ``inputs[i].grad``. Warmed up (compiled, autotuned) on a side stream first."""
    ins = [x.detach().clone().requires_grad_() for x in ins]
    do = do.clone()

    def step():
        for x in ins:
            x.grad = None
        out = fn(*ins)
        out.backward(do)
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    for x in ins:
        x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, ins, do, out


def time_graph(fn, ins, do, warmup, rep):
    """Median ms of one fwd+bwd replayed from a CUDA graph (:func:`capture`), None if it cannot be captured."""
    from triton.testing import do_bench

    graph = None
    try:
        graph, *_ = capture(fn, ins, do)
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
    """One of ours against the fp32 quadratic reference (:func:`fastattn.bench.check.run`: o, dq, dk, dv, bf16)."""
    from fastattn.bench.check import run

    row = ROW[name]
    rows = run(row.spec, row.D, row.DV, row.normalize, T, torch.bfloat16, 1, 4, causal=True)
    return all(good for _, _, good in rows), [
        f"{name} T={T} {t}: max-rel {e['max_rel']:.2e} rel-RMS {e['rel_rms']:.2e} {'ok' if good else 'FAIL'}"
        for t, e, good in rows]


def _same_inputs(lines, label, ours, theirs, tol=2e-2):
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    lines.append(f"{label}: rel-RMS {rel:.2e} {'ok' if rel < tol else 'FAIL'}")
    return rel < tol


def check_ours(rows):
    """Each of ours in its own process, then ours against the peers computing the same map on the same
    inputs (Based vs fla, x² vs power-attention). Returns (all ok, log lines, rows that failed)."""
    from fastattn.kernels.poly import poly_attention

    lines, ok, failed = [], True, []
    # the child imports this checkout's fastattn even when it is not installed
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    for row in [r for r in rows if r in ROW and ROW[r].spec is not None]:
        code = ("import json; from fastattn.bench.timing import check_row; "
                f"ok, lines = check_row({row!r}); print(json.dumps([ok, lines]))")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
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


def run_table(args, rows, command):
    """Time ``rows`` at ``args.T``, write the block into ``args.results`` (and ``--json``, ``--plot``)."""
    import triton

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
                command=command)
    res = {}
    for name in rows:
        for T in args.T:
            if ROW[name].Ts is not None and T not in ROW[name].Ts:
                continue
            r = time_row(name, T, seed=T, warmup=args.warmup, rep=args.rep, graphs=args.graphs)
            if ROW[name].spec is not None:
                r["floor_fwd"], r["floor_fwdbwd"] = floor_ms(ROW[name], T, rate, bw)
            res.setdefault(name, {})[T] = r
            if args.json_out:  # a run cut short by a time limit still leaves every finished cell
                Path(args.json_out).write_text(json.dumps(run_data(meta, check_lines, res, partial=True), indent=1))
            print(f"{name:28s} T={T:6d} fwd {fmt(r['fwd'])} ms  fwd+bwd {fmt(r['fwdbwd'])} ms  "
                  f"peak {fmt(r['peak_mib'], 0)} MiB  {r.get('setting') or ''}", flush=True)
    write_results(args.results, render(meta, res, args.T, rows, check_lines, targets(res, args.T)))
    print(f"wrote {args.results}")
    data = run_data(meta, check_lines, res)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(data, indent=1))
    if args.plot and res:
        from fastattn.bench.plot import figure

        figure(data).savefig(args.plot, dpi=120)
    if args.sweep:
        print(f"\nsweep at T={args.sweep} (chunk, block_f, block_v, segments): fwd / fwd+bwd ms")
        for row in [r for r in rows if ROW[r].spec is not None]:
            for chunk, bf, bv, seg in SWEEP:
                tl_ = dict(chunk=chunk, block_f=bf, block_v=bv, segments=seg)
                try:
                    r = time_row(row, args.sweep, seed=1, warmup=args.warmup, rep=args.rep, tiling=tl_)
                    print(f"sweep | {row} | {chunk} | {bf} | {bv} | {seg} | {fmt(r['fwd'], 3)} | "
                          f"{fmt(r['fwdbwd'], 3)} |", flush=True)
                except Exception as exc:  # noqa: BLE001  a tiling that does not compile is a row, not the end
                    print(f"sweep | {row} | {chunk} | {bf} | {bv} | {seg} | error {type(exc).__name__}: "
                          f"{str(exc)[:80]} |", flush=True)
    print(f"bench took {time.time() - t0:.0f} s")
    return 0
