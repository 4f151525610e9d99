"""Sparse attention with device-built schedules on the GPU: bf16 against the dense masked reference, and times
with the schedule build included (and alone) against SDPA at its default backend.

bf16, B2 H16 d64, causal, T 8192 and 16384 by default. Rows:

* ``sdpa``: ``scaled_dot_product_attention(is_causal=True)``; its backend is named from the profiler
  (:func:`fastattn.bench.timing.sdpa_backend`, the label the other benchmarks print);
* ``dense``: :func:`sparse_attention` with nothing dropped (SDPA's pairs; the schedule is cached, so this
  row is the kernels alone);
* ``keep p%``: :func:`sparse_attention` with a random p % of the tokens kept (25, 50, 75);
* ``hash/n``: :func:`sparse_attention` with :func:`lsh_buckets` ids (n = 2 and 4, about 50 % and 25 % of the
  pairs; hashed outside the timings);
* ``local+strided``: :func:`pattern_attention` with ``local(256) | strided(1024)``.

Columns: ``pairs`` the share of the causal pairs computed (hash: on head (0, 0)); ``sched`` the schedule build
alone (keep, hash: per call, as :func:`range_schedules` runs inside every call, both tilings; pattern: the
cached lookup a call pays, and in brackets the first, uncached build); ``torch sched`` the torch builders the
Triton ones replaced (the reference), and ``launches`` the device kernels of one schedule build (Triton / torch,
from torch.profiler); ``same`` whether the Triton schedule equals the torch one field by field on this GPU (the
test of the schedule kernels' in-program ordering that the CPU interpreter cannot give; a row with ids spanning
far more than 2T values, the O(T^2) ranking, is checked once per T); ``fwd`` and ``fwd+bwd`` whole calls,
schedule included (``triton.testing.do_bench`` medians); ``graph`` fwd+bwd replayed from a CUDA graph (a call that read anything back to the host could not
be captured: "-" says so); o, dq, dk, dv rel-RMS against the float64 masked reference on head (0, 0), with the
upstream gradient of every head random. Exit status 0 when every check passes (rel-RMS < 2e-2, all finite).

    python benchmarks/sparse_sched_check.py
    python benchmarks/sparse_sched_check.py --T 8192 --tiles 64x64x4   # every launch 64 x 64 (no 128 x 64 forward)
    python benchmarks/sparse_sched_check.py --fwd-tiles 128x128x8       # another forward tile
    python benchmarks/sparse_sched_check.py --json out/sparse_sched.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from fastattn.attention import lsh_buckets, pattern_attention, sparse_attention
from fastattn.attention.sparse import plan_tiles
from fastattn.bench.timing import median_ms, sdpa_backend, sdpa_kernel_name, time_graph
from fastattn.kernels.checks import errors
from fastattn.kernels.sparse import allowed_pairs, masked_attention
from fastattn.kernels.sparse.schedule import (_compact_blocks, _compact_order, _composite_blocks, _composite_order,
                                              range_schedules)
from fastattn.patterns import _compile, _schedule, local, strided

DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PATTERN = local(256) | strided(1024)
PATTERN_NAME = "local(256)|strided(1024)"


def parse_tiles(text, fwd_text):
    """The ``tuning`` of our rows: --tiles "64x64x4" sets every launch, --fwd-tiles "128x64x8" the forward alone;
    "default" leaves the plan's choice."""
    def tile(t, flag):
        try:
            bq, bk, w = (int(x) for x in t.split("x"))
        except ValueError:
            raise SystemExit(f"{flag} {t!r}: write BLOCK_QxBLOCK_KxWARPS, e.g. 128x64x8, or 'default'") from None
        return bq, bk, w

    tuning = {}
    if text != "default":
        tuning.update(zip(("block_q", "block_k", "warps"), tile(text, "--tiles")))
    if fwd_text != "default":
        tuning["fwd"] = tile(fwd_text, "--fwd-tiles")
    return tuning or None


def bucket_share(qid, kid, causal):
    """Share of the causal pairs (j <= i) with equal ids, on one head ([T] ids), without a T x T mask."""
    n = int(torch.maximum(qid.max(), kid.max())) + 1
    seen = torch.nn.functional.one_hot(kid, n).cumsum(0)  # [T, n] keys of each id at positions <= i
    return float(seen.gather(1, qid[:, None]).double().sum() / causal)


def sync_ms(fn, dev):
    """Wall ms of one fn() between two device syncs (for a build that runs once)."""
    sync = torch.cuda.synchronize if torch.device(dev).type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return 1e3 * (time.perf_counter() - t)


def torch_schedules(BH, T, tiles, *, keep=None, buckets=None, clean=True, backward=None):
    """The torch builders' schedules (the reference the Triton ones must equal), causal, as range_schedules ran
    them before."""
    if buckets is None:
        perm, n = _compact_order(BH, T, keep, keep.device)
        return tuple(_compact_blocks(perm, n, T, True, bq, bk, w, clean, b)
                     for (bq, bk, w), b in zip(tiles, backward))
    order, stats = _composite_order(BH, T, keep, buckets, buckets[0].device), {}
    return tuple(_composite_blocks(order, T, True, bq, bk, w, clean, stats, b)
                 for (bq, bk, w), b in zip(tiles, backward))


def same_schedules(a, b):
    """Every field of every tiling equal (tensors exactly)."""
    for x, y in zip(a, b):
        for name, u in vars(x).items():
            w = getattr(y, name)
            if isinstance(u, torch.Tensor) != isinstance(w, torch.Tensor):
                return False
            if isinstance(u, torch.Tensor) and not (u.dtype == w.dtype and u.shape == w.shape and torch.equal(u, w)):
                return False
            if not isinstance(u, torch.Tensor) and u != w:
                return False
    return True


def device_launches(fn, dev):
    """Device kernels (and copies) one fn() runs, from torch.profiler; None off the GPU."""
    if torch.device(dev).type != "cuda":
        return None
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def check(fn, q, k, v, do, allowed):
    """rel-RMS of o, dq, dk, dv of fn on head (0, 0) against the float64 masked reference (allowed: [T, T])."""
    x = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    o = fn(*x)
    got = [o] + list(torch.autograd.grad(o, x, do))
    got = [t[0, 0] for t in got]
    del o
    ref_in = [t.detach()[0:1, 0:1].double().requires_grad_() for t in (q, k, v)]
    ref = masked_attention(*ref_in, allowed)
    ref = [ref] + list(torch.autograd.grad(ref, ref_in, do[0:1, 0:1].double()))
    out = {}
    for name, a, b in zip(("o", "dq", "dk", "dv"), ref, got):
        e = errors(a[0, 0], b)
        out[name] = e["rel_rms"] if e["nonfinite"] == 0 else math.inf
    del ref, ref_in, got
    if q.is_cuda:
        torch.cuda.empty_cache()
    return out


def run(args):
    dev, dt = args.device, DT[args.dtype]
    gpu = torch.device(dev).type == "cuda"
    tuning = parse_tiles(args.tiles, args.fwd_tiles)
    tiles = plan_tiles(args.D, args.D, dev, dt, tuning)
    both = tuple(dict.fromkeys((tiles.fwd, tiles.bwd)))
    back = (False, True) if len(both) == 2 else (True,)  # as a call with a gradient builds them
    rows = []
    backends = {}
    for T in args.T:
        g = torch.Generator(device="cpu").manual_seed(T)
        q, k, v, do = (torch.randn(args.B, args.H, T, args.D, generator=g).to(dev, dt) for _ in range(4))
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        causal = T * (T + 1) / 2
        # the bench table's "sdpa d64" row has this shape; its label reads the fwd and bwd kernels
        default = gpu and (args.B, args.H, args.D, dt) == (2, 16, 64, torch.bfloat16)
        backends[T] = (sdpa_backend("sdpa d64", T, torch.Generator(device=dev).manual_seed(T)) if default
                       else sdpa_kernel_name(q.detach(), k.detach(), v.detach()) or "-")
        cases = [("sdpa", lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                  1.0, None, None, None, None)]
        # nothing dropped: the same pairs as SDPA, its schedule cached per shape, so the row times the kernels
        cases.append(("dense", lambda q, k, v: sparse_attention(q, k, v, tuning=tuning), 1.0,
                      lambda: range_schedules(args.B * args.H, T, both, clean=tiles.clean, device=dev), None,
                      allowed_pairs(T, device=dev), None))
        for p in args.keep:
            keep = torch.rand(args.B, args.H, T, generator=g).to(dev) < p / 100
            n = keep.sum(-1).double()
            flat = keep.reshape(-1, T)
            cases.append((f"keep {p}%", lambda q, k, v, keep=keep: sparse_attention(q, k, v, keep=keep, tuning=tuning),
                          float((n * (n + 1) / 2).mean() / causal),
                          lambda flat=flat: range_schedules(flat.shape[0], T, both, keep=flat, clean=tiles.clean,
                                                            device=dev, backward=back),
                          None, allowed_pairs(T, keep=keep[0:1, 0:1]),
                          lambda flat=flat: torch_schedules(flat.shape[0], T, both, keep=flat, clean=tiles.clean,
                                                            backward=back)))
        for nb in args.buckets:
            # hashed once, outside the timings: the rows time the attention with its schedule
            ids = lsh_buckets(q.detach(), k.detach(), nb, seed=0)
            flat = tuple(x.reshape(-1, T) for x in ids)
            head = tuple(x[0:1, 0:1] for x in ids)
            cases.append((f"hash/{nb}", lambda q, k, v, ids=ids: sparse_attention(q, k, v, buckets=ids, tuning=tuning),
                          bucket_share(head[0][0, 0], head[1][0, 0], causal),
                          lambda flat=flat: range_schedules(flat[0].shape[0], T, both, buckets=flat,
                                                            clean=tiles.clean, device=dev, backward=back),
                          None, allowed_pairs(T, buckets=head),
                          lambda flat=flat: torch_schedules(flat[0].shape[0], T, both, buckets=flat,
                                                            clean=tiles.clean, backward=back)))
        if args.pattern:
            def build():
                return [PATTERN.compile(T, block=bq, block_k=bk, device=dev).schedule(dev, warps=w)
                        for bq, bk, w in both]
            _compile.cache_clear()
            _schedule.cache_clear()
            cold = sync_ms(build, dev)
            dense = PATTERN.dense(T, device=dev)
            cases.append(("local+strided", lambda q, k, v: pattern_attention(q, k, v, PATTERN, tuning=tuning),
                          float(dense.sum() / causal), build, cold, dense, None))
        # ids spanning far more than 2T values, with a keep: the O(T^2) ranking, checked against torch once per T
        BH = args.B * args.H
        wide = tuple(torch.randint(0, 8, (BH, T), generator=g).to(dev) * (1 << 40) for _ in range(2))
        wide_keep = torch.rand(BH, T, generator=g).to(dev) < 0.5
        got = range_schedules(BH, T, both, keep=wide_keep, buckets=wide, clean=tiles.clean, device=dev, backward=back)
        wide_ok = same_schedules(got, torch_schedules(BH, T, both, keep=wide_keep, buckets=wide, clean=tiles.clean,
                                                      backward=back))
        wide_ms = median_ms(lambda: range_schedules(BH, T, both, keep=wide_keep, buckets=wide, clean=tiles.clean,
                                                    device=dev, backward=back), 3, 10)
        rows.append({"T": T, "method": "schedule, wide ids", "same": wide_ok, "sched_ms": wide_ms})
        print(f"  T={T} schedule with ids spanning 2^43 values (O(T^2) ranking): {wide_ms:.3f} ms, equals the torch "
              f"one: {'ok' if wide_ok else 'FAIL'}", flush=True)
        del got, wide, wide_keep
        for name, fn, share, build, cold, allowed, ref in cases:
            r = {"T": T, "method": name, "pairs": share, "cold_ms": cold}
            r["sched_ms"] = median_ms(build, args.warmup, args.rep) if build is not None else None
            r["torch_sched_ms"] = median_ms(ref, 3, 10) if ref is not None else None
            r["launches"] = (device_launches(build, dev), device_launches(ref, dev)) if ref is not None else None
            r["same"] = same_schedules(build(), ref()) if ref is not None else None
            r["err"] = check(fn, q, k, v, do, allowed) if allowed is not None else None
            with torch.no_grad():
                fn(q, k, v)
                r["fwd_ms"] = median_ms(lambda fn=fn: fn(q, k, v), args.warmup, args.rep)

            def fwd_bwd(fn=fn):
                fn(q, k, v).backward(do)
                q.grad = k.grad = v.grad = None
            fwd_bwd()
            r["fwd_bwd_ms"] = median_ms(fwd_bwd, args.warmup, args.rep)
            r["graph_ms"] = time_graph(fn, [q, k, v], do, args.warmup, args.rep) if args.graphs and gpu else None
            rows.append(r)
            print(f"  T={T} {name:14s} pairs {share:6.1%} sched {fmt(r['sched_ms'])} "
                  f"(torch {fmt(r['torch_sched_ms'])}, "
                  f"launches {r['launches']}, same {r['same']}) fwd {fmt(r['fwd_ms'])} fwd+bwd {fmt(r['fwd_bwd_ms'])} "
                  f"graph {fmt(r['graph_ms'])} ms  err {r['err']}  {'ok' if ok(r) else 'FAIL'}", flush=True)
            del allowed
            if gpu:
                torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name() if gpu else dev, "dtype": args.dtype, "backends": backends,
            "rows": rows, "tiles": tiles, "B": args.B, "H": args.H, "D": args.D}


def fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def ok(r):
    good = r.get("same") is not False
    return good and (r.get("err") is None or all(math.isfinite(e) and e < 2e-2 for e in r["err"].values()))


def table(res):
    t = res["tiles"]
    lines = [f"sparse schedules on the device: {res['device']}, {res['dtype']}, B{res['B']} H{res['H']} d{res['D']}, "
             f"causal, tiles fwd {'x'.join(map(str, t.fwd))} bwd {'x'.join(map(str, t.bwd))}, pattern {PATTERN_NAME}; "
             "SDPA backend: " + ", ".join(f"{T}: {b}" for T, b in res["backends"].items()), "",
             "| T | method | pairs | sched ms | torch sched ms | launches (Triton / torch) | same | fwd ms | "
             "fwd+bwd ms | graph fwd+bwd ms | fwd+bwd vs SDPA | o / dq / dk / dv rel-RMS | ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    sdpa = {r["T"]: r["fwd_bwd_ms"] for r in res["rows"] if r["method"] == "sdpa"}
    for r in res["rows"]:
        if "fwd_ms" not in r:  # the wide-id schedule check: no call timed
            lines.append(f"| {r['T']} | {r['method']} | - | {fmt(r['sched_ms'])} | - | - | "
                         f"{'yes' if r['same'] else 'NO'} | - | - | - | - | - | {'yes' if ok(r) else 'NO'} |")
            continue
        sched = fmt(r["sched_ms"]) + (f" ({r['cold_ms']:.1f} first)" if r["cold_ms"] is not None else "")
        err = " / ".join(f"{e:.1e}" for e in r["err"].values()) if r["err"] else "-"
        launches = "-" if not r["launches"] or r["launches"][0] is None else "{} / {}".format(*r["launches"])
        same = "-" if r["same"] is None else ("yes" if r["same"] else "NO")
        lines.append(f"| {r['T']} | {r['method']} | {r['pairs']:.0%} | {sched} | {fmt(r['torch_sched_ms'])} | "
                     f"{launches} | {same} | {fmt(r['fwd_ms'])} | {fmt(r['fwd_bwd_ms'])} | {fmt(r['graph_ms'])} | "
                     f"{sdpa[r['T']] / r['fwd_bwd_ms']:.2f}x | {err} | {'yes' if ok(r) else 'NO'} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--keep", type=int, nargs="*", default=[25, 50, 75], help="percent of tokens kept")
    ap.add_argument("--buckets", type=int, nargs="*", default=[2, 4],
                    help="LSH bucket counts (hash rows: about 1/n of the pairs)")
    ap.add_argument("--no-pattern", dest="pattern", action="store_false", help="leave out the local+strided row")
    ap.add_argument("--no-graphs", dest="graphs", action="store_false", help="leave out the CUDA-graph column")
    ap.add_argument("--tiles", default="default", help="BLOCK_QxBLOCK_KxWARPS of every launch of ours (e.g. 64x64x4)")
    ap.add_argument("--fwd-tiles", default="default", help="BLOCK_QxBLOCK_KxWARPS of our forward alone")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run under TRITON_INTERPRET=1")
    ap.add_argument("--dtype", choices=sorted(DT), default="bf16", help="bf16; fp32 for a CPU smoke run")
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--rep", type=int, default=100)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("sparse_sched_check needs a CUDA GPU (or --device cpu --dtype fp32 under TRITON_INTERPRET=1)")
    res = run(args)
    print(table(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(res, tiles=vars(res["tiles"])), fh, indent=1, default=str)
    return 0 if all(ok(r) for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
