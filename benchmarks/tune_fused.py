"""Time ours (B=2, H=16, bf16, causal) for a few chunk sizes: python benchmarks/tune_fused.py"""
import os
import sys
import torch
from triton.testing import do_bench

sys.path.insert(0, "benchmarks")
import check_gpu  # noqa: E402
from fastattn.kernels.poly import poly_attention, polynomial  # noqa: E402

CASES = [("1 + x + x**2/2", 16, 64, True), ("x", 64, 64, False)]
for spec, D, DV, norm in CASES:
    for T in ((4096,) if os.environ.get("CHECK", "1") == "1" else ()):
        rows = check_gpu.run(spec, D, DV, norm, T, torch.bfloat16, 1, 2, causal=True)
        print(spec, "check", [(n, f"{e['rel_rms']:.2e}", ok) for n, e, ok in rows], flush=True)
for spec, D, DV, norm in CASES:
    poly = polynomial(spec)
    for T in (8192, 32768):
        q = torch.randn(2, 16, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(2, 16, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(2, 16, T, DV, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        do = torch.randn(2, 16, T, DV, device="cuda", dtype=torch.bfloat16)
        for chunk in (None,):
            for seg in (None,):
                fn = lambda: poly_attention(q, k, v, poly, causal=True, normalize=norm, backend="triton",  # noqa
                                            chunk=chunk, segments=seg)
                try:
                    f = do_bench(fn, warmup=10, rep=50, return_mode="median")
                    fb = do_bench(lambda: fn().backward(do), warmup=10, rep=50, grad_to_none=(q, k, v),
                                  return_mode="median")
                    print(f"WAVES={os.environ.get('FASTATTN_FUSED_WAVES', '2')} {spec} T={T} chunk={chunk} seg={seg}: fwd {f:.3f} fwd+bwd {fb:.3f}", flush=True)
                except Exception as exc:  # noqa: BLE001
                    print(f"{spec} T={T} chunk={chunk}: FAILED {exc!r}"[:300], flush=True)
                    raise
