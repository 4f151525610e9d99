"""Short sequences: one fwd+bwd call of ours eager against the same call replayed from a CUDA graph.

Below ~8K tokens a forward+backward call is host-bound (benchmarks/RESULTS.md: ~1.1-1.5 ms of
Python and launches per call against 0.3-0.7 ms of GPU work at 2K). A CUDA graph replays the
launches without the host path. This checks that the graph gives the eager call's output and
gradients, then times both (median of do_bench), B = 2, H = 16, bf16, causal.

    python benchmarks/graphs.py --cases "1 + x + x**2/2:16:64:1:2048" "x:64:64:0:2048"
"""
import argparse

import torch
from triton.testing import do_bench

from cases import parse_case
from fastattn.bench.timing import capture
from fastattn.kernels.poly import poly_attention, polynomial


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", required=True, help="spec:D:DV:normalize:T")
    ap.add_argument("--rep", type=int, default=200)
    a = ap.parse_args()
    print("| case | eager fwd+bwd ms | graph replay ms | max rel diff (o, dq, dk, dv) |")
    print("|---|---|---|---|")
    for case in a.cases:
        spec, D, DV, norm, T = parse_case(case)
        poly = polynomial(spec)
        g = torch.Generator(device="cuda").manual_seed(0)
        mk = lambda d: torch.randn(2, 16, T, d, device="cuda", generator=g).bfloat16()  # noqa: E731
        q, k, v, do = mk(D), mk(D), mk(DV), mk(DV)
        eq, ek, ev = (x.clone().requires_grad_() for x in (q, k, v))
        eo = poly_attention(eq, ek, ev, poly, causal=True, normalize=norm, backend="triton")
        eo.backward(do)
        fn = lambda q, k, v: poly_attention(q, k, v, poly, causal=True, normalize=norm, backend="triton")  # noqa
        graph, (sq, sk, sv), _, so = capture(fn, (q, k, v), do)
        graph.replay()
        torch.cuda.synchronize()
        rel = max(((got.float() - want.float()).norm() / want.float().norm()).item()
                  for got, want in ((so, eo), (sq.grad, eq.grad), (sk.grad, ek.grad), (sv.grad, ev.grad)))

        def eager():
            poly_attention(eq, ek, ev, poly, causal=True, normalize=norm, backend="triton").backward(do)
        t_e = do_bench(eager, warmup=50, rep=a.rep, grad_to_none=(eq, ek, ev), return_mode="median")
        t_g = do_bench(graph.replay, warmup=50, rep=a.rep, return_mode="median")
        print(f"| {case} | {t_e:.3f} | {t_g:.3f} | {rel:.1e} |", flush=True)


if __name__ == "__main__":
    main()
