"""Wave-quantisation probe: time one of ours at a fixed T over several batch*head counts, so the
number of scan programs crosses a multiple of (programs per SM x SMs). Per-sequence time that jumps
where the program count crosses a wave boundary, not smoothly with batch*head, says the tail wave
of the scan costs a full wave.

    python benchmarks/waves.py --row "1 + x + x**2/2:64:64:1" --T 16384 --bh 32 31 30 29
"""
import argparse
import os
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cases import parse_case  # noqa: E402
from fastattn.kernels.poly import poly_attention, polynomial  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--row", required=True, help="spec:D:DV:normalize")
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--bh", type=int, nargs="+", required=True, help="batch*head counts (H = bh, B = 1)")
    ap.add_argument("--rep", type=int, default=30)
    a = ap.parse_args()
    spec, D, DV, norm = parse_case(a.row, with_T=False)
    poly = polynomial(spec)
    g = torch.Generator(device="cuda").manual_seed(0)
    print(f"{spec} D{D} DV{DV} T={a.T}\n| bh | fwd ms | fwd+bwd ms | fwd ms / bh | fwd+bwd ms / bh |\n|---|---|---|---|---|")
    for bh in a.bh:
        mk = lambda *s: torch.randn(*s, device="cuda", generator=g).bfloat16()  # noqa: E731
        q, k, v, do = mk(1, bh, a.T, D), mk(1, bh, a.T, D), mk(1, bh, a.T, DV), mk(1, bh, a.T, DV)
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        call = lambda: poly_attention(q, k, v, poly, causal=True, normalize=norm, backend="triton")  # noqa: E731
        with torch.no_grad():
            f = do_bench(call, warmup=5, rep=a.rep, return_mode="median")
        fb = do_bench(lambda: call().backward(do), warmup=5, rep=a.rep, grad_to_none=(q, k, v), return_mode="median")
        print(f"| {bh} | {f:.3f} | {fb:.3f} | {f / bh:.4f} | {fb / bh:.4f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
