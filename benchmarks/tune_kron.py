"""Tilings of the block-Kronecker path (degree 2 at head dim 64), one GPU run.

Checks the default tiling against the fp32 quadratic reference (bf16, T = 4096), every other
tiling against the default's output and gradients, prints each scan kernel's registers and
spills, then times fwd and fwd+bwd (B = 2, H = 16, causal, normalised) per tiling at the
given lengths, with the symmetric-basis path (FASTATTN_KRON=0) as the baseline.

    python benchmarks/tune_kron.py --T 8192 32768
"""
import argparse
import itertools
import os
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_gpu  # noqa: E402
from fastattn.kernels.codegen import load_module  # noqa: E402
from fastattn.kernels.poly import poly_attention, polynomial  # noqa: E402

SPEC, D, DV = "1 + x + x**2/2", 64, 64


def kernel_stats(mod):
    """(kernel, constexprs, registers, spills) of every compiled scan kernel of the module."""
    out = []
    for name in ("_segment_state_kernel", "_inter_fwd_kernel", "_inter_bwd_kernel", "_intra_fwd_kernel",
                 "_intra_bwd_kernel"):
        fn = getattr(mod, name)
        for cache in getattr(fn, "device_caches", {}).values():
            for key, k in cache[0].items():
                out.append((name, str(key)[-160:], getattr(k, "n_regs", "?"), getattr(k, "n_spills", "?")))
    return out


def run(q, k, v, do, **kw):
    for x in (q, k, v):
        x.grad = None
    o = poly_attention(q, k, v, SPEC, causal=True, normalize=True, backend="triton", **kw)
    o.backward(do)
    return [o.detach().float(), q.grad.float(), k.grad.float(), v.grad.float()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, nargs="+", default=[8192])
    ap.add_argument("--chunks", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--block-f", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--segments", type=int, nargs="+", default=[0, 1], help="0: the default")
    ap.add_argument("--baseline", action="store_true", help="also time FASTATTN_KRON=0")
    ap.add_argument("--no-check", action="store_true", help="time only (for deliberately broken probe variants)")
    a = ap.parse_args()
    if not a.no_check:
        rows = check_gpu.run(SPEC, D, DV, True, 4096, torch.bfloat16, 1, 2, causal=True)
        print("check default:", [(n, f"{e['rel_rms']:.2e}", ok) for n, e, ok in rows], flush=True)
        assert all(ok for *_, ok in rows)
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda *s: torch.randn(*s, device="cuda", generator=g).bfloat16()  # noqa: E731
    q, k, v, do = mk(1, 2, 2048, D), mk(1, 2, 2048, D), mk(1, 2, 2048, DV), mk(1, 2, 2048, DV)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    ref = run(q, k, v, do)
    configs = list(itertools.product(a.chunks, a.block_f, a.segments))
    good = []
    for chunk, bf, seg in configs:
        kw = dict(chunk=chunk, block_f=bf, segments=seg or None)
        try:
            got = run(q, k, v, do, **kw)
            rel = max(((x - y).norm() / y.norm()).item() for x, y in zip(got, ref))
            print(f"check {kw}: max rel-RMS vs default {rel:.2e} {'ok' if rel < 2e-2 else 'FAIL'}", flush=True)
            if rel < 2e-2 or a.no_check:
                good.append(kw)
        except Exception as exc:  # noqa: BLE001
            print(f"check {kw}: error {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    for row in kernel_stats(load_module(polynomial(SPEC))):
        print("regs", *row, flush=True)
    print("\n| T | chunk | block_f | segments | fwd ms | fwd+bwd ms |\n|---|---|---|---|---|---|")
    for T in a.T:
        q, k, v, do = mk(2, 16, T, D), mk(2, 16, T, D), mk(2, 16, T, DV), mk(2, 16, T, DV)
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        todo = [("kron", kw) for kw in good] + ([("symmetric", {})] if a.baseline else [])
        for tag, kw in todo:
            os.environ["FASTATTN_KRON"] = "0" if tag == "symmetric" else "1"
            fn = lambda: poly_attention(q, k, v, SPEC, causal=True, normalize=True, backend="triton", **kw)  # noqa
            try:
                with torch.no_grad():
                    f = do_bench(fn, warmup=5, rep=30, return_mode="median")
                fb = do_bench(lambda: fn().backward(do), warmup=5, rep=30, grad_to_none=(q, k, v),
                              return_mode="median")
                print(f"| {T} | {kw.get('chunk', tag)} | {kw.get('block_f', '')} | {kw.get('segments')} | {f:.2f} | "
                      f"{fb:.2f} |", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"| {T} | {kw} | error {type(exc).__name__}: {str(exc)[:120]} |", flush=True)
        os.environ["FASTATTN_KRON"] = "1"


if __name__ == "__main__":
    main()
