"""``fastattn bench decode``: one decoding step of ours (a carried state) against SDPA over a KV cache (GPU).

Per batch B: ours is :meth:`fastattn.attention.FastAttention.step` with ``inplace=True`` (the fused
kernel of :mod:`fastattn.kernels.decode`), timed as called from Python and replayed from a CUDA
graph (the step syncs nothing with the host, so it captures as is: no ``torch.compile``). Its cost
is a read and a write of the state, B H F (DV + 1) fp32 numbers, whatever the context; a torch
copy of the same bytes, timed in the same run, is the ceiling it is reported against. Per context
length: SDPA with q [B, H, 1, D] against K/V [B, H, ctx, D] in bf16 (default backend, named from the
kernels the profiler saw), whose cost is reading the cache, 2 B H ctx D bf16 numbers.

Read-mostly decoding (``--pending R``, default 16; 0 skips it): the same step on a
:class:`~fastattn.attention.state.ReadMostlyState`, which reads a bf16 copy of S and writes only its token, and every
R-th token folds the ring into the fp32 master. Timed per token over whole cycles of R steps (eager, and one CUDA
graph per cycle); its bytes per token are ((R - 1) (S_bf16 + z) + 2 (S + z) + S_bf16) / R, against the copy's
bandwidth and against a read of the bf16 copy alone (the read floor). Before timing, a correctness check: the bf16
read-mostly kernels against the fp32 ordinary torch step over 64 tokens (folds, a gate with resets, GQA), o and the
fp32 master after flush(), one line per case.

Prints markdown tables (``--json OUT.json`` keeps the numbers); without a CUDA GPU, one line and exit 2.

>>> import argparse
>>> p = argparse.ArgumentParser()
>>> add_arguments(p)
>>> a = p.parse_args(["--batch", "1", "8", "--context", "4096"])
>>> a.batch, a.context, a.heads, a.spec
([1, 8], [4096], 16, '1 + x + x**2/2')
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_arguments", "run", "time_ours", "time_read_mostly", "check_read_mostly", "time_sdpa", "copy_ms",
           "read_ms"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fastattn bench decode``."""
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64], help="batch sizes (default 1 8 64)")
    p.add_argument("--context", type=int, nargs="+", default=[4096, 32768, 131072],
                   help="SDPA's KV-cache lengths (default 4K 32K 128K)")
    p.add_argument("--heads", type=int, default=16, help="heads (query = key/value; default 16)")
    p.add_argument("--head-dim", type=int, default=64, help="D = DV (default 64)")
    p.add_argument("--spec", default="1 + x + x**2/2", help="f of ours (default %(default)s)")
    p.add_argument("--warmup", type=int, default=25, help="ms of warm-up before each timing")
    p.add_argument("--rep", type=int, default=100, help="ms of timed repetitions")
    p.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph replay of our step")
    p.add_argument("--pending", type=int, default=16,
                   help="R of the read-mostly rows (fold every R tokens; default 16, 0 skips them)")
    p.add_argument("--tuning", default=None, metavar="JSON",
                   help='private plan overrides of our kernel for sweeps, e.g. \'{"block_f": 128, "splits": 4}\'')
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT.json", help="also write the numbers here")


def _bench(fn, warmup, rep):
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def copy_ms(nbytes: int, warmup: int = 25, rep: int = 100) -> float:
    """Median ms of a torch copy of ``nbytes`` bytes (fp32): the least a read and write of the state costs."""
    import torch

    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    return _bench(lambda: dst.copy_(src), warmup, rep)


def read_ms(nbytes: int, warmup: int = 25, rep: int = 100) -> float:
    """Median ms of a torch sum over ``nbytes`` bytes of bf16: the least a read of the read copy costs."""
    import torch

    src = torch.randn(nbytes // 2, device="cuda").to(torch.bfloat16)
    return _bench(lambda: src.sum(dtype=torch.float32), warmup, rep)


def _capture(fn):
    # warm up on a side stream (compiles the kernels), then record one call
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def time_ours(spec: str, B: int, H: int, D: int, warmup: int, rep: int, graph: bool = True,
              tuning: dict | None = None) -> dict:
    """ms of one in-place decoding step (from Python, and replayed from a CUDA graph) and the state's bytes."""
    import torch

    from fastattn.attention import FastAttention

    attn = FastAttention.from_spec(spec, head_dim=D).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, 1, D, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(3))
    st = attn.init_state(B, H, device="cuda", dtype=torch.bfloat16)
    if attn._step_route(q, k, v, None, st, None) != "kernel":
        raise RuntimeError("the decoding kernel did not serve the benchmark's step; it would time torch ops")
    step = lambda: attn.step(q, k, v, st, inplace=True, _tuning=tuning)  # noqa: E731
    with torch.no_grad():
        ms = _bench(step, warmup, rep)
        ms_graph = None
        if graph:
            g = _capture(step)
            ms_graph = _bench(g.replay, warmup, rep)
    F = attn.feature_dim
    return dict(ms=ms, ms_graph=ms_graph, features=F, state_bytes=B * H * F * (D + 1) * 4)


def time_read_mostly(spec: str, B: int, H: int, D: int, R: int, warmup: int, rep: int, graph: bool = True,
                     tuning: dict | None = None) -> dict:
    """ms per token of read-mostly decoding (a cycle of R in-place steps, the last one folding; eager and from a
    CUDA graph of the cycle), and its bytes per token."""
    import torch

    from fastattn.attention import FastAttention

    attn = FastAttention.from_spec(spec, head_dim=D).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, 1, D, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(3))
    st = attn.init_state(B, H, device="cuda", dtype=torch.bfloat16, pending=R)
    if attn._step_route(q, k, v, None, st, None) != "kernel":
        raise RuntimeError("the read-mostly kernels did not serve the benchmark's step; it would time torch ops")

    def cycle():
        assert st.pending == 0
        for _ in range(R):
            attn.step(q, k, v, st, inplace=True, _tuning=tuning)

    with torch.no_grad():
        ms = _bench(cycle, warmup, rep) / R
        ms_graph = None
        if graph:
            g = _capture(cycle)
            ms_graph = _bench(g.replay, warmup, rep) / R
    F = attn.feature_dim
    S16, S32, z = B * H * F * D * 2, B * H * F * D * 4, B * H * F * 4
    step_bytes = ((R - 1) * (S16 + z) + 2 * (S32 + z) + S16) / R
    return dict(ms=ms, ms_graph=ms_graph, R=R, read_bytes=S16, step_bytes=step_bytes)


def check_read_mostly(spec: str, D: int, R: int, steps: int = 64, device: str = "cuda") -> list:
    """bf16 read-mostly kernels against the fp32 ordinary torch step over ``steps`` tokens: one dict per case.

    o is compared per token (rel-RMS over all tokens, worst max-rel); the fp32 master after flush() against the
    ordinary fp32 state (rel-RMS <= 1e-5). o's tolerance is the bf16 read copy's: rel-RMS 5e-3, max-rel 1e-2
    (the torch reference on CPU measured 2.4e-3 and 3.5e-3 at d64). The kernels are also compared with their
    torch reference on the same bf16 read copy (rel-RMS 2e-3, max-rel 8e-3: both outputs rounded to bf16, and a
    read copy entry can round one bf16 ulp apart where the two fp32 masters differ in the last bit).
    """
    import math

    import torch

    from fastattn.attention import FastAttention, State
    from fastattn.kernels.checks import errors

    out = []
    for name, B, Hq, Hk, gated in (("B2 H16 gate+resets", 2, 16, 16, True), ("B3 GQA 16/4 gate", 3, 16, 4, True),
                                   ("B1 H16 no gate", 1, 16, 16, False)):
        attn = FastAttention.from_spec(spec, head_dim=D).to(device)
        gen = torch.Generator(device=device).manual_seed(B)
        plain = attn.init_state(B, Hk, device=device)
        kern = attn.init_state(B, Hk, device=device, dtype=torch.bfloat16, pending=R)
        ref = attn.init_state(B, Hk, device=device, dtype=torch.bfloat16, pending=R)
        want, got, back = [], [], []
        with torch.no_grad():
            for t in range(steps):
                q = torch.randn(B, Hq, 1, D, device=device, generator=gen).to(torch.bfloat16)
                k = torch.randn(B, Hk, 1, D, device=device, generator=gen).to(torch.bfloat16)
                v = torch.randn(B, Hk, 1, D, device=device, generator=gen).to(torch.bfloat16)
                g = None
                if gated:
                    g = -0.05 * torch.rand(B, Hk, 1, device=device, generator=gen)
                    if t == steps // 3:
                        g[0, 0] = -math.inf
                o0, plain = attn.step(q.float(), k.float(), v.float(), plain, g=g, _kernel=False)
                o1, kern = attn.step(q, k, v, kern, g=g, inplace=True, _kernel=True)
                o2, ref = attn.step(q, k, v, ref, g=g, inplace=True, _kernel=False)
                want.append(o0), got.append(o1.float()), back.append(o2.float())
        pending = kern.pending
        master = kern.flush()
        e_o = errors(torch.cat(want, 2), torch.cat(got, 2))
        e_r = errors(torch.cat(back, 2), torch.cat(got, 2))
        e_S, e_z = errors(plain.S, master.S), errors(plain.z, master.z)
        ok = (e_o["nonfinite"] == 0 and e_o["rel_rms"] <= 5e-3 and e_o["max_rel"] <= 1e-2 and e_r["rel_rms"] <= 2e-3
              and e_r["max_rel"] <= 8e-3 and e_S["rel_rms"] <= 1e-5 and e_z["rel_rms"] <= 1e-5
              and torch.equal(master.tokens, plain.tokens) and isinstance(master, State))
        out.append(dict(case=name, steps=steps, R=R, pending_at_flush=pending, o=e_o, o_vs_reference=e_r, S=e_S, z=e_z,
                        ok=bool(ok)))
    return out


def _sdpa_backend(fn) -> str:
    # the backend that ran, from the CUDA kernel names the profiler saw
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = " ".join(e.key.lower() for e in prof.key_averages())
    return next((lab for tag, lab in (("cudnn", "cuDNN"), ("flash", "FLASH_ATTENTION"),
                                      ("fmha", "EFFICIENT_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"))
                 if tag in names), "MATH/other")


def time_sdpa(B: int, H: int, D: int, ctx: int, warmup: int, rep: int) -> dict:
    """ms of SDPA for one new query token over a bf16 KV cache of ``ctx`` tokens, its backend and the cache's bytes."""
    import torch
    import torch.nn.functional as Fn

    q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.bfloat16)
    kc = torch.randn(B, H, ctx, D, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn(B, H, ctx, D, device="cuda", dtype=torch.bfloat16)
    fn = lambda: Fn.scaled_dot_product_attention(q, kc, vc)  # noqa: E731
    with torch.no_grad():
        backend = _sdpa_backend(fn)
        ms = _bench(fn, warmup, rep)
    return dict(ms=ms, backend=backend, cache_bytes=2 * B * H * ctx * D * 2)


def _fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}g}"


def run(args: argparse.Namespace) -> int:
    """Time decoding (ours against SDPA over a KV cache) and print the markdown table; 2 without a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        print("fastattn bench decode: error: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if args.json_out and not Path(args.json_out).parent.is_dir():
        print(f"fastattn bench decode: error: the directory {str(Path(args.json_out).parent)!r} does not exist "
              "(for --json)", file=sys.stderr)
        return 2
    import triton

    tuning = json.loads(args.tuning) if args.tuning else None
    H, D = args.heads, args.head_dim
    meta = dict(card=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__, spec=args.spec,
                H=H, D=D, dtype="bf16 inputs, fp32 state", tuning=tuning)
    rows, checks = [], []
    R = args.pending
    if R:
        checks = check_read_mostly(args.spec, D, R)
        for c in checks:
            print(f"check read-mostly {c['case']}, {c['steps']} tokens, R {R} ({c['pending_at_flush']} pending at "
                  "flush): "
                  f"o rel-RMS {c['o']['rel_rms']:.2e} max-rel {c['o']['max_rel']:.2e}; vs reference rel-RMS "
                  f"{c['o_vs_reference']['rel_rms']:.2e}; master S {c['S']['rel_rms']:.2e} z {c['z']['rel_rms']:.2e} "
                  f"{'ok' if c['ok'] else 'FAIL'}")
        torch.cuda.empty_cache()
    for B in args.batch:
        # each timing frees its buffers on return; empty_cache hands them back before the next, larger one
        ours = time_ours(args.spec, B, H, D, args.warmup, args.rep, graph=not args.no_graph, tuning=tuning)
        torch.cuda.empty_cache()
        copy = copy_ms(ours["state_bytes"], args.warmup, args.rep)
        torch.cuda.empty_cache()
        best = min(x for x in (ours["ms"], ours["ms_graph"]) if x is not None)
        ours.update(copy_ms=copy, copy_gbs=2 * ours["state_bytes"] / copy / 1e6,
                    pct_copy=100 * copy / best, gbs=2 * ours["state_bytes"] / best / 1e6)
        rm = None
        if R:
            rm = time_read_mostly(args.spec, B, H, D, R, args.warmup, args.rep, graph=not args.no_graph, tuning=tuning)
            torch.cuda.empty_cache()
            rm_best = min(x for x in (rm["ms"], rm["ms_graph"]) if x is not None)
            floor = read_ms(rm["read_bytes"], args.warmup, args.rep)
            torch.cuda.empty_cache()
            rm.update(best=rm_best, read_ms=floor, x_read_floor=rm_best / floor, gbs=rm["step_bytes"] / rm_best / 1e6,
                      pct_copy=100 * rm["step_bytes"] / rm_best / 1e6 / ours["copy_gbs"])
        for ctx in args.context:
            sd = time_sdpa(B, H, D, ctx, args.warmup, args.rep)
            torch.cuda.empty_cache()
            rows.append(dict(B=B, context=ctx, ours=ours, sdpa=sd, speedup=sd["ms"] / best, read_mostly=rm,
                             speedup_read_mostly=sd["ms"] / rm["best"] if rm else None))
            if args.json_out:  # a run cut short keeps the rows it finished
                Path(args.json_out).write_text(json.dumps(dict(meta=meta, checks=checks, rows=rows), indent=1))
    print(f"card: {meta['card']}, torch {meta['torch']}, triton {meta['triton']}; ours: f(x) = {args.spec}, "
          f"d{D}, H {H}, F {rows[0]['ours']['features'] if rows else '-'}, fp32 state, bf16 q/k/v; SDPA: bf16 KV "
          "cache, default backend\n")
    print("| B | context | SDPA backend | SDPA ms | SDPA tok/s | KV cache MB | ours ms | ours graph ms | ours tok/s "
          "| state MB | ours GB/s | copy GB/s | ours % copy | speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, s, B = r["ours"], r["sdpa"], r["B"]
        best = min(x for x in (o["ms"], o["ms_graph"]) if x is not None)
        print(f"| {B} | {r['context'] // 1024}K | {s['backend']} | {_fmt(s['ms'])} | {B / s['ms'] * 1e3:,.0f} | "
              f"{s['cache_bytes'] / 1e6:,.0f} | {_fmt(o['ms'])} | {_fmt(o['ms_graph'])} | {B / best * 1e3:,.0f} | "
              f"{o['state_bytes'] / 1e6:,.1f} | {o['gbs']:,.0f} | {o['copy_gbs']:,.0f} | {o['pct_copy']:.0f}% | "
              f"{r['speedup']:.1f}x |")
    if R and rows:
        print(f"\nours read-mostly (R = {R}: bf16 read copy, fold every {R} tokens; per token, over whole cycles)\n")
        print("| B | context | SDPA ms | ours rm ms | ours rm graph ms | ours rm tok/s | MB per token | GB/s | % copy "
              "| bf16 read ms | x read floor | speedup |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            m, B = r["read_mostly"], r["B"]
            print(f"| {B} | {r['context'] // 1024}K | {_fmt(r['sdpa']['ms'])} | {_fmt(m['ms'])} "
                  f"| {_fmt(m['ms_graph'])} | {B / m['best'] * 1e3:,.0f} | {m['step_bytes'] / 1e6:,.1f} "
                  f"| {m['gbs']:,.0f} | {m['pct_copy']:.0f}% "
                  f"| {_fmt(m['read_ms'])} | {m['x_read_floor']:.2f} | {r['speedup_read_mostly']:.1f}x |")
    if any(not c["ok"] for c in checks):
        print("read-mostly check FAILED (see the lines above)", file=sys.stderr)
        return 1
    return 0
