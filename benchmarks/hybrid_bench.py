"""hybrid_attention (window softmax + Taylor-2 outside) on the GPU against fla's Based and sliding-window SDPA.

bf16, B2 H16, causal, the Based layout (q, k d16, v d64), window 512, f = 1 + x + x**2/2; per T
(8K, 16K, 32K, 64K by default), fwd and fwd+bwd ms (triton's do_bench, median) of

* ``hybrid``: ``hybrid_attention(..., window=512)`` on the Triton path (at v d64 the outside sums in two
  calls, v then a ones column), ``hybrid augment``: the same with one call on v widened by the ones column;
* ``  window kernel``, ``  outside sums``: its two parts alone (the window kernel given the sums, the sums
  as ``hybrid`` takes them);
* ``fla parallel_based``: fla's Based kernel (Taylor-2 feature-map attention over all keys, quadratic,
  no window), skipped with a printed line when fla does not import;
* ``flex window``: torch ``flex_attention`` with a causal sliding-window block mask (compiled once per
  shape), the exact-softmax twin of the window part; skipped with a printed line when it fails;
* ``sdpa causal``: ``scaled_dot_product_attention(is_causal=True)`` over all keys, default backend (its
  kernel named), for scale.

``--sweep`` times the window kernel alone at each launch plan of ``SWEEP`` instead. Without it, first a
bf16 correctness check at T = 4K (B1 H4) of o, dq, dk, dv against the fp32 torch path of
``hybrid_attention`` (max-abs and relative RMS). Rows are written to ``--json`` as they come, so a run
cut short by a timeout keeps what it measured.

    python benchmarks/hybrid_bench.py                    # the table
    python benchmarks/hybrid_bench.py --json out.json    # and the rows as JSON
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from fastattn.bench.timing import median_ms, sdpa_kernel_name
from fastattn.attention import fast_attention, hybrid_attention
from fastattn.kernels.poly import polynomial

SPEC = "1 + x + x**2/2"


bench = median_ms



def err(ref, got):
    ref, got = ref.detach().double(), got.detach().double()
    d = got - ref
    return float(d.abs().max()), float(d.norm() / ref.norm().clamp(min=1e-30))


def check(device, dtype, T, D, DV, window, seed=0):
    """o, dq, dk, dv of the Triton path in ``dtype`` against the fp32 torch path, at length T."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, H = 1, 4
    q, k = (torch.randn(B, H, T, D, generator=g) for _ in range(2))
    v, do = (torch.randn(B, H, T, DV, generator=g) for _ in range(2))
    got_in = [x.to(device, dtype).requires_grad_() for x in (q, k, v)]
    ref_in = [x.to(device).requires_grad_() for x in (q, k, v)]
    o = hybrid_attention(*got_in, SPEC, window=window, backend="triton")
    got = (o,) + torch.autograd.grad(o, got_in, do.to(device, dtype))
    r = hybrid_attention(*ref_in, SPEC, window=window, backend="torch")
    ref = (r,) + torch.autograd.grad(r, ref_in, do.to(device))
    row = {"case": f"hybrid w{window}", "T": T}
    for part, a, b in zip(("o", "dq", "dk", "dv"), ref, got):
        row[part] = err(a, b)
    # bf16 rounds q, k, v and the scores to 8 bits: a rel-RMS of a few 1e-3 is the level of bf16 flash attention
    row["ok"] = all(math.isfinite(m) and r < 2e-2 for m, r in (row[p] for p in ("o", "dq", "dk", "dv")))
    return row


def _flex(window, T, B, H, device):
    """A compiled flex_attention call with a causal sliding-window block mask, or (None, why)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except Exception as exc:  # noqa: BLE001 - any import failure means no flex row
        return None, f"flex_attention does not import ({type(exc).__name__}: {exc})"

    def sliding(b, h, qi, kj):
        return (kj <= qi) & (qi - kj < window)

    mask = create_block_mask(sliding, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)
    flex = torch.compile(flex_attention, dynamic=False)
    return (lambda q, k, v: flex(q, k, v, block_mask=mask)), "flex_attention (compiled), sliding-window block mask"


def run(args, sink):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype)[6:],
           "B": args.B, "H": args.H, "D": args.D, "DV": args.DV, "window": args.window, "spec": SPEC,
           "sdpa_kernel": "", "notes": [], "checks": [], "rows": []}
    start = time.perf_counter()
    if args.check_T:
        res["checks"].append(check(device, dtype, args.check_T, args.D, args.DV, args.window))
        sink(res)
    try:
        from fla.ops.based import parallel_based
    except Exception as exc:  # noqa: BLE001
        parallel_based = None
        res["notes"].append(f"fla parallel_based skipped: {type(exc).__name__}: {exc}")
        print(res["notes"][-1], flush=True)
    flex_ok = True
    for T in args.T:
        if time.perf_counter() - start > args.budget_s:
            res["notes"].append(f"T={T} and longer skipped: past the {args.budget_s} s budget")
            print(res["notes"][-1], flush=True)
            break
        g = torch.Generator(device="cpu").manual_seed(T)
        B, H, w = args.B, args.H, args.window

        def rnd(*shape):
            return torch.randn(*shape, generator=g).to(device, dtype).requires_grad_()

        q, k, v = rnd(B, H, T, args.D), rnd(B, H, T, args.D), rnd(B, H, T, args.DV)
        do = torch.randn(B, H, T, args.DV, generator=g).to(device, dtype)
        if not res["sdpa_kernel"]:
            res["sdpa_kernel"] = sdpa_kernel_name(q.detach(), k.detach(), v.detach())
        scale = args.D ** -0.5
        poly = polynomial(SPEC)
        ones = torch.ones(B, H, T - w, 1, device=device, dtype=dtype)
        outside = fast_attention(q.detach()[:, :, w:], k.detach()[:, :, :T - w],
                                 torch.cat([v.detach()[:, :, :T - w], ones], -1), SPEC, normalize=False)
        outside.requires_grad_()

        def window_only():
            from fastattn.kernels.window.flash import window_attention
            return window_attention(q, k, v, outside, scale=scale, window=w)

        def outside_only():
            from fastattn.attention.hybrid import _outside_route, _outside_sums
            return _outside_sums(q, k, v, poly, scale, w, _outside_route(args.DV))

        d_out = torch.randn(B, H, T - w, args.DV + 1, generator=g).to(device, dtype)
        cases = [("hybrid", lambda: hybrid_attention(q, k, v, SPEC, window=w, backend="triton"), do),
                 ("hybrid augment", lambda: hybrid_attention(q, k, v, SPEC, window=w, backend="triton",
                                                             tuning={"outside": "augment"}), do),
                 ("  window kernel", window_only, do), ("  outside sums", outside_only, d_out)]
        if parallel_based is not None:
            qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
            cases.append(("fla parallel_based", lambda: parallel_based(qt, kt, vt, scale=scale).transpose(1, 2),
                          do))
        if flex_ok:
            try:
                flex, why = _flex(w, T, B, H, device)
                if flex is None:
                    raise RuntimeError(why)
                try:
                    flex(q, k, v).backward(do)  # compile fwd and bwd outside the timing
                    fq, fk, label = q, k, ""
                except Exception as exc:  # noqa: BLE001 - a flex without v d != q/k d: pad q, k (same scores)
                    pad = args.DV - args.D
                    if pad <= 0:
                        raise
                    fq, fk = (torch.nn.functional.pad(x.detach(), (0, pad)).requires_grad_() for x in (q, k))
                    label = f" (q/k zero-padded to d{args.DV}: {type(exc).__name__} at d{args.D})"
                    flex(fq, fk, v).backward(do)
                if T == args.T[0]:
                    res["notes"].append(f"flex window: {why}{label}")
                    print(res["notes"][-1], flush=True)
                cases.append(("flex window", lambda fq=fq, fk=fk: flex(fq, fk, v), do))
            except Exception as exc:  # noqa: BLE001
                flex_ok = False
                res["notes"].append(f"flex window skipped: {type(exc).__name__}: {str(exc)[:200]}")
                print(res["notes"][-1], flush=True)
        cases.append(("sdpa causal", lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v,
                                                                                              is_causal=True), do))
        for name, fn, dy in cases:
            def fwd_bwd(fn=fn, dy=dy):
                fn().backward(dy)
            try:
                with torch.no_grad():
                    f_ms = bench(fn, args.warmup, args.rep)
                fb_ms = bench(fwd_bwd, args.warmup, args.rep)
            except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
                res["notes"].append(f"T={T} {name.strip()} failed: {type(exc).__name__}: {str(exc)[:200]}")
                print(res["notes"][-1], flush=True)
                continue
            for x in (q, k, v, outside):
                x.grad = None
            res["rows"].append({"T": T, "method": name, "fwd_ms": f_ms, "fwd_bwd_ms": fb_ms})
            print(f"  T={T} {name:20s} fwd {f_ms:9.3f} ms  fwd+bwd {fb_ms:9.3f} ms", flush=True)
            sink(res)
        if device == "cuda":
            torch.cuda.empty_cache()
    return res


SWEEP = ([dict(block_m=bm, block_n=bn, warps=wp, stages=st)
          for bm, bn, wp, st in ((64, 64, 4, 2), (128, 64, 4, 3), (128, 64, 8, 2), (128, 128, 8, 2), (64, 32, 4, 2))]
         + [dict(bwd_block_m=bm, bwd_block_n=bn, warps=wp)
            for bm, bn, wp in ((32, 64, 4), (64, 32, 4), (64, 128, 8), (128, 64, 8))])


def sweep(args, sink):
    """fwd and fwd+bwd ms of the window kernel alone (the outside sums given) at each plan of SWEEP, at args.T[0]."""
    from fastattn.kernels.window.flash import window_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    T, w, B, H = args.T[0], args.window, args.B, args.H
    g = torch.Generator(device="cpu").manual_seed(T)
    q, k = (torch.randn(B, H, T, args.D, generator=g).to(device, dtype).requires_grad_() for _ in range(2))
    v = torch.randn(B, H, T, args.DV, generator=g).to(device, dtype).requires_grad_()
    outside = torch.rand(B, H, T - w, args.DV + 1, generator=g).to(device, dtype).requires_grad_()
    do = torch.randn(B, H, T, args.DV, generator=g).to(device, dtype)
    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "T": T, "window": w, "rows": []}
    start = time.perf_counter()
    for tuning in [{}] + SWEEP:
        if time.perf_counter() - start > args.budget_s:
            print(f"sweep stopped: past the {args.budget_s} s budget", flush=True)
            break

        def fn(tuning=tuning):
            return window_attention(q, k, v, outside, scale=args.D ** -0.5, window=w, tuning=tuning)
        try:
            with torch.no_grad():
                f_ms = bench(fn, args.warmup, args.rep)
            fb_ms = bench(lambda: fn().backward(do), args.warmup, args.rep)
        except Exception as exc:  # noqa: BLE001 - a plan that does not compile (shared memory) is skipped
            print(f"sweep failed {tuning}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
            continue
        res["rows"].append({"tuning": tuning, "fwd_ms": f_ms, "fwd_bwd_ms": fb_ms})
        print(f"sweep fwd+bwd={fb_ms:.3f} fwd={f_ms:.3f} ms {tuning or 'default'}", flush=True)
        sink(res)
    return res


def predicted(res, method, T):
    """fwd+bwd ms the cost model predicts (what ``fastattn analyze --window`` says), or None for a method it has
    no model of: the hybrid as window kernel + outside sums (v dim DV + 1, the ones column, over T - window
    keys), its parts alone, and SDPA."""
    from fastattn import costmodel as cm

    D, DV, w, B, H = res["D"], res["DV"], res["window"], res["B"], res["H"]
    F = polynomial(res["spec"]).feature_dim(D)
    window = cm.window_ms(T, w, D, DV, B=B, H=H)
    outside = cm.ours_ms(F, D, DV + 1, T - w, B=B, H=H) if T > w else 0.0
    return {"hybrid": window + outside, "  window kernel": window, "  outside sums": outside,
            "sdpa causal": cm.sdpa_ms(D, T, DV=DV, B=B, H=H)}.get(method)


def table(res):
    lines = [f"hybrid_attention, {res['device']}, {res['dtype']}, B{res['B']} H{res['H']} q/k d{res['D']} v "
             f"d{res['DV']}, window {res['window']}, f = {res['spec']}; SDPA kernel: {res['sdpa_kernel'] or '-'}", "",
             "| T | method | fwd ms | fwd+bwd ms | predicted fwd+bwd ms | fwd+bwd / hybrid's |",
             "|---|---|---|---|---|---|"]
    ours = {r["T"]: r["fwd_bwd_ms"] for r in res["rows"] if r["method"] == "hybrid"}
    for r in res["rows"]:
        rel = f"{r['fwd_bwd_ms'] / ours[r['T']]:.2f}x" if r["T"] in ours else "-"
        pred = predicted(res, r["method"], r["T"])
        pred = "-" if pred is None else f"{pred:.3f}"
        lines.append(f"| {r['T']} | {r['method']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | {pred} | {rel} |")
    for c in res["checks"]:
        cells = ", ".join(f"{p} {c[p][0]:.1e}/{c[p][1]:.1e}" for p in ("o", "dq", "dk", "dv"))
        lines.append(f"check {c['case']} T={c['T']} (max-abs/rel-RMS): {cells}: {'ok' if c['ok'] else 'FAILED'}")
    lines += [f"note: {n}" for n in res["notes"]]
    return "\n".join(lines)


def summary(res):
    """One line per T: fwd / fwd+bwd ms of every method, then the check and the notes; for a probe's tail."""
    methods = list(dict.fromkeys(r["method"] for r in res["rows"]))
    cell = {(r["T"], r["method"]): r for r in res["rows"]}
    short = [m.strip().replace("fla parallel_based", "fla based") for m in methods]
    lines = [f"hybrid w{res['window']} {res['spec']}, {res['device']} {res['dtype']} B{res['B']} H{res['H']} "
             f"q/k d{res['D']} v d{res['DV']}: fwd / fwd+bwd ms",
             "| T | " + " | ".join(short) + " |", "|---|" + "---|" * len(methods)]
    for T in dict.fromkeys(r["T"] for r in res["rows"]):
        row = []
        for m in methods:
            r = cell.get((T, m))
            row.append("-" if r is None else f"{r['fwd_ms']:.2f} / {r['fwd_bwd_ms']:.2f}")
        lines.append(f"| {T} | " + " | ".join(row) + " |")
    for c in res["checks"]:
        cells = ", ".join(f"{p} {c[p][1]:.1e}" for p in ("o", "dq", "dk", "dv"))
        lines.append(f"check T={c['T']} rel-RMS vs fp32: {cells}: {'ok' if c['ok'] else 'FAILED'}")
    lines += [f"note: {n[:150]}" for n in res["notes"]]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--D", type=int, default=16)
    ap.add_argument("--DV", type=int, default=64)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--check-T", type=int, default=4096, help="length of the correctness check (0: none)")
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--rep", type=int, default=100)
    ap.add_argument("--budget-s", type=float, default=170.0, help="start no new T past this many seconds")
    ap.add_argument("--json", help="write the rows here (rewritten after each row)")
    ap.add_argument("--sweep", action="store_true", help="time the window kernel's plans at the first T instead")
    ap.add_argument("--summary", metavar="JSON", help="print the short table of a finished run's JSON and exit")
    ap.add_argument("--table", metavar="JSON", help="print the full table (with predictions) of a finished run's JSON "
                    "and exit; any machine")
    args = ap.parse_args(argv)
    if args.summary:
        with open(args.summary) as f:
            print(summary(json.load(f)))
        return 0
    if args.table:
        with open(args.table) as f:
            print(table(json.load(f)))
        return 0

    def sink(res):
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)

    if args.sweep:
        sink(sweep(args, sink))
        return 0
    res = run(args, sink)
    sink(res)
    print(table(res))
    return 0 if all(c["ok"] for c in res["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
