"""Sparse flash attention against SDPA: fwd and fwd+bwd ms of hash-sparse and QK-dropping attention.

On a GPU, bf16, B2 H16 d64, causal, at each T (8K and 16K by default):

* ``sdpa``: ``scaled_dot_product_attention(is_causal=True)``, default backend (its kernel named from
  the profiler), and ``dense``: our kernel with nothing dropped (the same pairs as SDPA);
* ``hash/n``: :func:`lsh_buckets` with n buckets (about 1/n of the causal pairs);
* ``keep p%``: a random p % of the tokens kept (about p^2 of the pairs).

The ``pairs`` column is the measured share of the causal pairs each row computes. Timings include the
schedule (compaction or sort, block runs), not the bucket hashing. First a bf16 correctness check at
T = 2K against the float64 masked reference (o, dq, dk, dv; max-abs and relative RMS).

    python benchmarks/sparse_bench.py                    # the table
    python benchmarks/sparse_bench.py --json out.json    # and the rows as JSON
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from fastattn.bench.timing import median_ms, sdpa_kernel_name
from fastattn.attention import lsh_buckets, pattern_attention, sparse_attention
from fastattn.kernels.sparse import allowed_pairs, masked_attention
from fastattn.patterns import global_tokens, local

DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


bench = median_ms



def pair_share(T, keep=None, buckets=None):
    """Share of the causal pairs (j <= i) a row computes, without a T x T mask."""
    total = T * (T + 1) / 2
    if buckets is not None:
        qid, kid = buckets
        if keep is not None:
            # a dropped key counts in no bucket; a dropped query finds none
            kid = torch.where(keep, kid, -1)
            qid = torch.where(keep, qid, -2)
        n = int(max(qid.max(), kid.max())) + 1
        seen = torch.nn.functional.one_hot(kid.clamp(min=0), n) * (kid >= 0)[..., None]
        seen = seen.cumsum(-2)  # [.., T, n] keys of each bucket at positions <= i
        hits = seen.gather(-1, qid.clamp(min=0)[..., None])[..., 0] * (qid >= 0)
        return float(hits.double().sum(-1).mean() / total)
    if keep is not None:
        n = keep.sum(-1).double()
        return float((n * (n + 1) / 2).mean() / total)
    return 1.0


def err(ref, got):
    ref, got = ref.detach().double(), got.detach().double()
    d = got - ref
    return float(d.abs().max()), float(d.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp(min=1e-30))


def check(device, dtype, T, D, seed=0):
    """bf16 (or the run's dtype) o, dq, dk, dv against the float64 masked reference at length T."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, H = 1, 4
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    do = torch.randn(B, H, T, D, generator=g).to(device, dtype)
    keep = (torch.rand(B, H, T, generator=g) < 0.5).to(device)
    buckets = lsh_buckets(q, k, 4, seed=seed)
    pat = local(256) | global_tokens(16)
    cases = [("keep 50%", dict(keep=keep), allowed_pairs(T, keep=keep)),
             ("hash/4", dict(buckets=buckets), allowed_pairs(T, buckets=buckets)),
             ("keep+hash", dict(keep=keep, buckets=buckets), allowed_pairs(T, keep=keep, buckets=buckets)),
             ("local+global", None, pat.dense(T, device=device))]
    out = []
    for name, kw, allowed in cases:
        o = sparse_attention(q, k, v, **kw) if kw is not None else pattern_attention(q, k, v, pat)
        got = (o,) + torch.autograd.grad(o, (q, k, v), do)
        ref = masked_attention(q, k, v, allowed)
        ref = (ref,) + torch.autograd.grad(ref, (q, k, v), do.double())
        row = {"case": name, "T": T}
        for part, a, b in zip(("o", "dq", "dk", "dv"), ref, got):
            row[part] = err(a, b)
        # bf16 inputs round scores to 8 bits: a relative RMS of a few 1e-3 is the dense kernel's own level
        row["ok"] = all(math.isfinite(m) and r < 2e-2 for m, r in (row[p] for p in ("o", "dq", "dk", "dv")))
        out.append(row)
    return out


def parse_tiles(text, masked):
    """"64x64x4" -> {"block_q": 64, "block_k": 64, "warps": 4}; "default" -> the plan's choice. ``masked``:
    every tile through the element mask (no unmasked sub-runs)."""
    tuning = {"clean": False} if masked else {}
    if text == "default":
        return tuning or None
    try:
        bq, bk, w = (int(x) for x in text.split("x"))
    except ValueError:
        raise SystemExit(f"--tiles {text!r}: write BLOCK_QxBLOCK_KxWARPS, e.g. 128x64x8, or 'default'") from None
    return dict(tuning, block_q=bq, block_k=bk, warps=w)


def run(args):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = DT[args.dtype]
    tuning = parse_tiles(args.tiles, args.all_masked)
    checks = check(device, dtype, args.check_T, args.D) if args.check_T else []
    rows = []
    kernel = ""
    for T in args.T:
        g = torch.Generator(device="cpu").manual_seed(T)
        q, k, v = (torch.randn(args.B, args.H, T, args.D, generator=g).to(device, dtype).requires_grad_()
                   for _ in range(3))
        do = torch.randn(args.B, args.H, T, args.D, generator=g).to(device, dtype)
        kernel = kernel or sdpa_kernel_name(q.detach(), k.detach(), v.detach())
        cases = [("sdpa", lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), 1.0),
                 ("dense", lambda: sparse_attention(q, k, v, tuning=tuning), 1.0)]
        for n in args.buckets:
            b = lsh_buckets(q.detach(), k.detach(), n, seed=0)
            cases.append((f"hash/{n}", lambda b=b: sparse_attention(q, k, v, buckets=b, tuning=tuning),
                          pair_share(T, buckets=b)))
        for p in args.keep:
            keep = torch.rand(args.B, args.H, T, generator=g).to(device) < p / 100
            cases.append((f"keep {p}%", lambda keep=keep: sparse_attention(q, k, v, keep=keep, tuning=tuning),
                          pair_share(T, keep=keep)))
        for name, fn, share in cases:
            def fwd_bwd(fn=fn):
                fn().backward(do)
            with torch.no_grad():
                f_ms = bench(fn, args.warmup, args.rep)
            fb_ms = bench(fwd_bwd, args.warmup, args.rep)
            q.grad = k.grad = v.grad = None
            rows.append({"T": T, "method": name, "pairs": share, "fwd_ms": f_ms, "fwd_bwd_ms": fb_ms})
            print(f"  T={T} {name:10s} pairs {share:5.1%} fwd {f_ms:8.3f} ms  fwd+bwd {fb_ms:8.3f} ms", flush=True)
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": args.dtype,
            "tiles": args.tiles + (" all-masked" if args.all_masked else ""),
            "B": args.B, "H": args.H, "D": args.D, "sdpa_kernel": kernel, "checks": checks, "rows": rows}


def table(res):
    lines = [f"sparse flash attention, {res['device']}, {res['dtype']}, B{res['B']} H{res['H']} d{res['D']}, causal, "
             f"tiles {res['tiles']}; "
             f"SDPA kernel: {res['sdpa_kernel'] or '-'}", "",
             "| T | method | pairs | fwd ms | fwd+bwd ms | fwd+bwd vs SDPA |", "|---|---|---|---|---|---|"]
    sdpa = {r["T"]: r["fwd_bwd_ms"] for r in res["rows"] if r["method"] == "sdpa"}
    for r in res["rows"]:
        lines.append(f"| {r['T']} | {r['method']} | {r['pairs']:.0%} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | "
                     f"{sdpa[r['T']] / r['fwd_bwd_ms']:.2f}x |")
    if res["checks"]:
        lines += ["", "| check (T) | o max / rel-rms | dq | dk | dv | ok |", "|---|---|---|---|---|---|"]
        for c in res["checks"]:
            cells = " | ".join(f"{c[p][0]:.1e} / {c[p][1]:.1e}" for p in ("o", "dq", "dk", "dv"))
            lines.append(f"| {c['case']} ({c['T']}) | {cells} | {'yes' if c['ok'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--dtype", choices=sorted(DT), default="bf16")
    ap.add_argument("--buckets", type=int, nargs="*", default=[4, 2], help="LSH bucket counts")
    ap.add_argument("--keep", type=int, nargs="*", default=[25, 50, 75], help="percent of tokens kept")
    ap.add_argument("--check-T", type=int, default=2048, help="length of the correctness check (0: none)")
    ap.add_argument("--tiles", default="default", help="BLOCK_QxBLOCK_KxWARPS of our rows (e.g. 128x64x8)")
    ap.add_argument("--all-masked", action="store_true", help="mask every tile (measures the unmasked sub-runs)")
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--rep", type=int, default=100)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    res = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    print(table(res))
    return 0 if all(c["ok"] for c in res["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
