"""The quadratic polynomial flash kernels on the GPU: bf16 checks, a tile sweep, and ms against SDPA and the feature route.

    python benchmarks/poly_flash_check.py --json out.json              # checks, sweep at 8K, timings 2K-32K
    python benchmarks/poly_flash_check.py --no-sweep --T 4096 8192      # plan tiles only, some lengths

Checks: o, dq, dk, dv of ``poly_flash_attention`` (bf16) against the fp32 quadratic reference at T = 2048 as
rel-RMS (bf16 bar 2e-2), for 1+x+x²/2 d64, x² d64, 1+x+x²/2 d128 and a GQA 16/4 row. Sweep: forward and backward
tiles at T = 8192 for d64 and d128; the fastest of each is used below. Timings (causal, bf16, fwd and fwd+bwd
medians, triton's do_bench): the flash kernels, SDPA at its default backend (the kernel that ran is named) and
the feature route ``poly_attention(..., backend="triton")``, B2 H16 at d64 and B2 H8 at d128.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from triton.testing import do_bench

from fastattn.bench.timing import sdpa_kernel_name
from fastattn.kernels.checks import errors
from fastattn.kernels.naive import quadratic_attention
from fastattn.kernels.poly import poly_attention, polynomial
from fastattn.kernels.poly_flash import plan, poly_flash_attention

# id: spec, B, H_q, H_kv, D
ROWS = {
    "1+x+x²/2 d64": ("1 + x + x**2/2", 2, 16, 16, 64),
    "x² d64": ("x**2", 2, 16, 16, 64),
    "1+x+x²/2 d128 h8": ("1 + x + x**2/2", 2, 8, 8, 128),
}
CHECKS = dict(ROWS, **{"1+x+x²/2 d64 gqa16/4": ("1 + x + x**2/2", 1, 16, 4, 64)})
FWD_TILES = [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 4), (128, 128, 8, 2),
             (64, 128, 4, 3)]
BWD_TILES = [(64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 3), (32, 64, 4, 3), (64, 32, 4, 3), (128, 128, 8, 2),
             (64, 64, 8, 2)]


def inputs(B, Hq, Hk, T, D, seed=0, grad=True):
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, device="cuda", generator=g).to(torch.bfloat16).requires_grad_(grad)  # noqa: E731
    return mk(B, Hq, T, D), mk(B, Hk, T, D), mk(B, Hk, T, D), mk(B, Hq, T, D).detach()


def check(name, spec, B, Hq, Hk, D, T=2048):
    q, k, v, do = inputs(B, Hq, Hk, T, D)
    o = poly_flash_attention(q, k, v, spec)
    got = (o,) + torch.autograd.grad(o, (q, k, v), do)
    G = Hq // Hk
    qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = quadratic_attention(qf, kf.repeat_interleave(G, 1), vf.repeat_interleave(G, 1), polynomial(spec).as_dict())
    ref = (ref,) + torch.autograd.grad(ref, (qf, kf, vf), do.float())
    out = {n: errors(a, b.float())["rel_rms"] for n, a, b in zip(("o", "dq", "dk", "dv"), ref, got)}
    ok = all(e <= 2e-2 for e in out.values())
    print(f"check {name:24s} " + " ".join(f"{n} {e:.2e}" for n, e in out.items()) + ("  ok" if ok else "  FAIL"),
          flush=True)
    return {"row": name, "rel_rms": out, "ok": ok}


def ms(fn, ins, do, warmup=10, rep=30):
    fwd = do_bench(lambda: fn(*ins), warmup=warmup, rep=rep, return_mode="median")

    def fb():
        fn(*ins).backward(do)
    fwdbwd = do_bench(fb, warmup=warmup, rep=rep, grad_to_none=list(ins), return_mode="median")
    return fwd, fwdbwd


def sweep(spec, B, Hq, Hk, D, T=8192):
    """(best fwd tiles, best bwd tiles, rows): forward timed alone, backward as fwd+bwd less the plan's forward."""
    q, k, v, do = inputs(B, Hq, Hk, T, D)
    rows, best_f, best_b = [], None, None
    base = plan(torch.bfloat16, D, D)
    for t in FWD_TILES:
        try:
            f = do_bench(lambda: poly_flash_attention(q, k, v, spec, tuning={"fwd": t}), warmup=5, rep=20,
                         return_mode="median")
        except Exception as e:  # a tile that does not fit shared memory is a sweep result, not a stop
            rows.append({"fwd": t, "error": type(e).__name__})
            continue
        rows.append({"fwd": t, "ms": f})
        best_f = min(best_f or (f, t), (f, t))
    for t in BWD_TILES:
        try:
            _, fb = ms(lambda q, k, v: poly_flash_attention(q, k, v, spec, tuning={"fwd": base.fwd, "bwd": t}),
                       (q, k, v), do, 5, 20)
        except Exception as e:
            rows.append({"bwd": t, "error": type(e).__name__})
            continue
        rows.append({"bwd": t, "fwdbwd_ms": fb})
        best_b = min(best_b or (fb, t), (fb, t))
    for r in rows:
        print(f"sweep D{D} T{T} " + json.dumps(r), flush=True)
    return best_f[1], best_b[1], rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--T", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--budget-s", type=float, default=400, help="stop timing (keeping what ran) after this")
    args = ap.parse_args()
    t0 = time.time()
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "checks": [], "sweep": {}, "rows": []}
    for name, (spec, B, Hq, Hk, D) in CHECKS.items():
        out["checks"].append(check(name, spec, B, Hq, Hk, D))
        torch.cuda.empty_cache()
    tiles = {}
    for D in (64, 128):
        if args.no_sweep:
            p = plan(torch.bfloat16, D, D)
            tiles[D] = {"fwd": p.fwd, "bwd": p.bwd}
        else:
            spec, B, Hq, Hk, _ = ROWS["1+x+x²/2 d64" if D == 64 else "1+x+x²/2 d128 h8"]
            f, b, rows = sweep(spec, B, Hq, Hk, D)
            tiles[D] = {"fwd": f, "bwd": b}
            out["sweep"][D] = rows
        print(f"tiles D{D}: {tiles[D]}", flush=True)
    out["tiles"] = {str(d): t for d, t in tiles.items()}
    for T in args.T:
        for name, (spec, B, Hq, Hk, D) in ROWS.items():
            if time.time() - t0 > args.budget_s:
                print(f"budget reached: T={T} {name} and after not timed", flush=True)
                break
            q, k, v, do = inputs(B, Hq, Hk, T, D)
            poly = polynomial(spec)
            row = {"row": name, "T": T}
            row["flash"] = ms(lambda q, k, v: poly_flash_attention(q, k, v, poly, tuning=tiles[D]), (q, k, v), do)
            row["feature"] = ms(lambda q, k, v: poly_attention(q, k, v, poly, causal=True, backend="triton"),
                                (q, k, v), do)
            sdpa = torch.nn.functional.scaled_dot_product_attention
            row["sdpa"] = ms(lambda q, k, v: sdpa(q, k, v, is_causal=True), (q, k, v), do)
            row["sdpa_kernel"] = sdpa_kernel_name(q.detach(), k.detach(), v.detach())
            out["rows"].append(row)
            print(f"time {name:18s} T{T:6d} " + " ".join(f"{c} {row[c][0]:.2f}/{row[c][1]:.2f}"
                                                          for c in ("flash", "feature", "sdpa")), flush=True)
            del q, k, v, do
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print("\n| row | T | flash fwd / fwd+bwd | feature route | SDPA default | SDPA/flash (fwd+bwd) | kernel |")
    print("|---|---|---|---|---|---|---|")
    for r in out["rows"]:
        print(f"| {r['row']} | {r['T']} | {r['flash'][0]:.2f} / {r['flash'][1]:.2f} | {r['feature'][0]:.2f} / "
              f"{r['feature'][1]:.2f} | {r['sdpa'][0]:.2f} / {r['sdpa'][1]:.2f} | "
              f"{r['sdpa'][1] / r['flash'][1]:.2f} | {r['sdpa_kernel'][:30]} |")
    print(f"{sum(not c['ok'] for c in out['checks'])} failing checks")


if __name__ == "__main__":
    main()
