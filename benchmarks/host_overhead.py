"""Host (Python + launch) time against GPU time of one call of ours, B = 2, H = 16, bf16, causal.

A call whose host time exceeds its GPU time is host-bound: do_bench then measures the launch path,
and small-T rows jump between runs. For each case: host ms per call (100 calls enqueued behind
~100 ms of matmuls, so the host never waits for the GPU) and GPU ms per call (the events' span
minus the matmuls' own time: the calls run back to back on the GPU).

    python benchmarks/host_overhead.py --cases "x:64:64:0:8192" "1 + x + x**2/2:16:64:1:8192"
    python benchmarks/host_overhead.py --cases "x:64:64:0:2048" --cprofile 30   # where the host time goes
"""
import argparse
import time

import torch

from cases import parse_case
from fastattn.kernels.poly import poly_attention, polynomial


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", required=True, help="spec:D:DV:normalize:T")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--queue", type=int, default=80, help="8192^2 bf16 matmuls queued ahead of the calls")
    ap.add_argument("--cprofile", type=int, default=0, help="also print the top N host functions of fwd+bwd")
    a = ap.parse_args()
    print("| case | host ms/call fwd | GPU ms/call fwd | host ms/call fwd+bwd | GPU ms/call fwd+bwd |")
    print("|---|---|---|---|---|")
    for case in a.cases:
        spec, D, DV, norm, T = parse_case(case)
        poly = polynomial(spec)
        mk = lambda d: torch.randn(2, 16, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # noqa
        q, k, v = mk(D), mk(D), mk(DV)
        do = torch.randn(2, 16, T, DV, device="cuda", dtype=torch.bfloat16)
        big = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

        def fwd():
            with torch.no_grad():
                poly_attention(q, k, v, poly, causal=True, normalize=norm, backend="triton")

        def fwdbwd():
            poly_attention(q, k, v, poly, causal=True, normalize=norm, backend="triton").backward(do)

        row = [case]
        for fn in (fwd, fwdbwd):
            for _ in range(3):
                fn()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            e0.record()
            for _ in range(a.queue):
                big @ big
            e1.record()
            torch.cuda.synchronize()
            t_mm = e0.elapsed_time(e1)
            # the same matmuls queued ahead, so the calls below only enqueue (host time), and the
            # GPU runs them back to back (GPU time = span - matmuls) while the queue never drains
            e0.record()
            for _ in range(a.queue):
                big @ big
            t0 = time.perf_counter()
            for _ in range(a.calls):
                fn()
            host = (time.perf_counter() - t0) * 1e3
            e1.record()
            torch.cuda.synchronize()
            gpu = e0.elapsed_time(e1) - t_mm
            note = "" if host < t_mm else " (queue drained: GPU time includes host gaps)"
            row += [f"{host / a.calls:.3f}", f"{gpu / a.calls:.3f}{note}"]
        print("| " + " | ".join(row) + " |", flush=True)
        if a.cprofile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            for _ in range(a.calls):
                fwdbwd()
            prof.disable()
            torch.cuda.synchronize()
            print(f"cProfile of {a.calls} fwd+bwd calls of {case} (cumulative, top {a.cprofile}):")
            pstats.Stats(prof).sort_stats("cumulative").print_stats(a.cprofile)
            pstats.Stats(prof).sort_stats("tottime").print_stats(a.cprofile)


if __name__ == "__main__":
    main()
