"""Per-kernel breakdown (torch.profiler) of ours: forward and forward+backward, B=2, H=16, bf16, causal.

    python benchmarks/profile_kernels.py --cases "1 + x + x**2/2:16:64:1:8192" "x:64:64:0:32768"
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from cases import parse_case
from fastattn.kernels.poly import poly_attention, polynomial


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", required=True, help="spec:D:DV:normalize:T")
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    for case in args.cases:
        spec, D, DV, norm, T = parse_case(case)
        poly = polynomial(spec)
        q = torch.randn(2, 16, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(2, 16, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(2, 16, T, DV, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        do = torch.randn(2, 16, T, DV, device="cuda", dtype=torch.bfloat16)

        def fwd():
            return poly_attention(q, k, v, poly, causal=True, normalize=norm, backend="triton")

        def fb():
            fwd().backward(do)
        for name, fn in (("fwd", lambda: fwd()), ("fwd+bwd", fb)):
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.iters):
                fn()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / args.iters * 1e3
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(args.iters):
                    fn()
                torch.cuda.synchronize()
            ev = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0) > 0]
            tot = sum(e.self_device_time_total for e in prof.key_averages()) / args.iters / 1e3
            print(f"\n=== {spec} D{D} DV{DV} norm={norm} T={T} {name}: wall {wall:.3f} ms/iter, "
                  f"GPU kernel sum {tot:.3f} ms/iter")
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
