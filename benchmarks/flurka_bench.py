"""FLuRKA (learned sequence projection to r rows, then f attention) on the GPU against non-causal SDPA.

bf16, B2 H16, d64, non-causal (FLuRKA is an encoder layer: each projected key mixes every position),
f = 1 + x + x**2/2, rank r = 256 (default), E and F learned (their gradients are part of fwd+bwd).
Per T: fwd and fwd+bwd ms (triton's do_bench, median) of

* ``flurka r=R``: :func:`fastattn.attention.flurka.flurka_attention` with ``method="auto"`` (at d64 the
  direct form: two projections and the [T, r] score tile through torch matmuls);
* ``sdpa``: ``scaled_dot_product_attention(is_causal=False)`` over all T keys, default backend (its kernel
  named) — the layer FLuRKA replaces;

plus the predicted ratio from :func:`fastattn.attention.flurka.flurka_cost` (multiply-adds: projection +
direct, against SDPA's T^2 (D + DV) per head) so the measured and the counted speed-up sit
side by side. First a bf16 check at T = 2048 (B1 H4) of o, dq, dk, dv, dE, dF against the float64 path.

    python benchmarks/flurka_bench.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from fastattn.attention.flurka import flurka_attention, flurka_cost
from fastattn.bench.timing import median_ms
from fastattn.kernels.poly import polynomial

SPEC = "1 + x + x**2/2"


def sdpa_name(q, k, v):
    """The longest-running CUDA kernel of one non-causal SDPA call ('' on the CPU)."""
    if not q.is_cuda:
        return ""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
        torch.cuda.synchronize()
    rows = [e for e in prof.key_averages() if "cuda" in str(getattr(e, "device_type", "")).lower()]
    return max(rows, key=lambda e: getattr(e, "self_device_time_total", 0)).key[:60] if rows else "?"


def inputs(B, H, T, D, r, device, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v, do = (torch.randn(B, H, T, D, generator=g) for _ in range(4))
    E, F = (torch.randn(H, r, T, generator=g) / math.sqrt(T) for _ in range(2))
    return [x.to(device, dtype) for x in (q, k, v, E, F)], do.to(device, dtype)


def check(device, T=2048, r=256, D=64):
    """bf16 o and grads (q, k, v, E, F) against float64, rel-RMS each."""
    ins, do = inputs(1, 4, T, D, r, device, torch.float64)
    ref_in = [x.clone().requires_grad_() for x in ins]
    got_in = [x.to(torch.bfloat16).requires_grad_() for x in ins]
    ref = flurka_attention(*ref_in[:3], SPEC, ref_in[3], ref_in[4])
    got = flurka_attention(*got_in[:3], SPEC, got_in[3], got_in[4])
    ref.backward(do)
    got.backward(do.to(torch.bfloat16))
    out = {}
    for name, a, b in [("o", ref, got)] + [(f"d{n}", x.grad, y.grad) for n, x, y in zip("qkvEF", ref_in, got_in)]:
        out[name] = float((b.detach().double() - a.detach()).norm() / a.detach().norm().clamp(min=1e-30))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, nargs="+", default=[8192, 16384, 32768])
    p.add_argument("--rank", type=int, default=256)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rep", type=int, default=30)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    B, H, D, r = 2, 16, 64, a.rank
    res = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
               spec=SPEC, B=B, H=H, D=D, rank=r, rows=[])
    res["check"] = chk = check(device, r=r)
    ok = all(v < 2e-2 for v in chk.values())
    print("check T2048 bf16 vs float64 rel-RMS: " + " ".join(f"{k} {v:.1e}" for k, v in chk.items())
          + (" ok" if ok else " FAIL"), flush=True)
    F = polynomial(SPEC).feature_dim(D)
    for T in a.T:
        ins, do = inputs(B, H, T, D, r, device, torch.bfloat16)
        ins = [x.requires_grad_() for x in ins]
        q, k, v, E, Fp = ins

        def fl():
            return flurka_attention(q, k, v, SPEC, E, Fp)

        def sd():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

        row = dict(T=T, sdpa_kernel=sdpa_name(q.detach(), k.detach(), v.detach()))
        for name, fn in (("flurka", fl), ("sdpa", sd)):
            row[f"{name}_fwd"] = median_ms(fn, a.warmup, a.rep)

            def step(fn=fn):
                fn().backward(do)
            row[f"{name}_fwdbwd"] = median_ms(step, a.warmup, a.rep)
            for x in ins:
                x.grad = None
        c = flurka_cost(T, D, D, r, F)
        # multiply-adds: non-causal SDPA T^2 (D + DV), FLuRKA its projection + the r-key attention
        row["predicted"] = (T * T * (D + D)) / (c["projection"] + c[c["choice"]])
        row["speedup"] = row["sdpa_fwdbwd"] / row["flurka_fwdbwd"]
        res["rows"].append(row)
        print(f"T {T}: flurka fwd {row['flurka_fwd']:.3f} fwd+bwd {row['flurka_fwdbwd']:.3f} | sdpa fwd "
              f"{row['sdpa_fwd']:.3f} fwd+bwd {row['sdpa_fwdbwd']:.3f} ({row['sdpa_kernel']}) | "
              f"{row['speedup']:.2f}x (FLOP count says {row['predicted']:.1f}x)", flush=True)
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(res, fh, indent=1)
    print(f"\n| T | FLuRKA r={r} fwd | fwd+bwd | SDPA non-causal fwd | fwd+bwd | speed-up fwd+bwd | FLOP ratio |")
    print("|---|---|---|---|---|---|---|")
    for row in res["rows"]:
        print(f"| {row['T']} | {row['flurka_fwd']:.3f} | {row['flurka_fwdbwd']:.3f} | {row['sdpa_fwd']:.3f} | "
              f"{row['sdpa_fwdbwd']:.3f} | {row['speedup']:.2f}x | {row['predicted']:.1f}x |")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
