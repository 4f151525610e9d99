"""``fastattn bench decode``: one decoding step of ours (a carried state) against SDPA over a KV cache (GPU).

Per batch B: ours is :meth:`fastattn.attention.FastAttention.step` with ``inplace=True`` (the fused
kernel of :mod:`fastattn.kernels.decode`), timed as called from Python and replayed from a CUDA
graph (the step syncs nothing with the host, so it captures as is: no ``torch.compile``). Its cost
is a read and a write of the state, B H F (DV + 1) fp32 numbers, whatever the context; a torch
copy of the same bytes, timed in the same run, is the ceiling it is reported against. Per context
length: SDPA with q [B, H, 1, D] against K/V [B, H, ctx, D] in bf16 (default backend, named from the
kernels the profiler saw), whose cost is reading the cache, 2 B H ctx D bf16 numbers.

Prints a markdown table (``--json OUT.json`` keeps the numbers); without a CUDA GPU, one line and exit 2.

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

__all__ = ["add_arguments", "run", "time_ours", "time_sdpa", "copy_ms"]


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
    rows = []
    for B in args.batch:
        # each timing frees its buffers on return; empty_cache hands them back before the next, larger one
        ours = time_ours(args.spec, B, H, D, args.warmup, args.rep, graph=not args.no_graph, tuning=tuning)
        torch.cuda.empty_cache()
        copy = copy_ms(ours["state_bytes"], args.warmup, args.rep)
        torch.cuda.empty_cache()
        best = min(x for x in (ours["ms"], ours["ms_graph"]) if x is not None)
        ours.update(copy_ms=copy, copy_gbs=2 * ours["state_bytes"] / copy / 1e6,
                    pct_copy=100 * copy / best, gbs=2 * ours["state_bytes"] / best / 1e6)
        for ctx in args.context:
            sd = time_sdpa(B, H, D, ctx, args.warmup, args.rep)
            torch.cuda.empty_cache()
            rows.append(dict(B=B, context=ctx, ours=ours, sdpa=sd, speedup=sd["ms"] / best))
            if args.json_out:  # a run cut short keeps the rows it finished
                Path(args.json_out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
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
    return 0
