"""Compile the window kernels for sm_90 on the CPU (no GPU): registers, spills and shared memory per launch.

The launch numbers come from :func:`~fastattn.kernels.window.flash.plan` and the same ``_dims`` the host
uses; the build is :func:`fastattn.kernels.sparse.aot._build` (pointers and multiples of 16 get the
divisibility hint the runtime gives them). The interpreter checks the arithmetic; this checks what only a
GPU build sees (layouts, shared memory, register pressure: STACK above 0 means spills).

    python -m fastattn.kernels.window.aot                      # bf16, q/k d16, v d64 (Based)
    python -m fastattn.kernels.window.aot --D 64 --DV 64 --dtype fp32
"""

from __future__ import annotations

import argparse
import os
import time

__all__ = ["compile_kernels"]


def compile_kernels(*, T=16384, window=512, head_dim=16, head_dim_v=64, dtype="bf16", arch=90, tuning=None):
    """{"kernel": "REG:n STACK:n SHARED:n SMEM:n (s)"} for the forward, dq and dk-dv launches of one call."""
    os.environ.pop("TRITON_INTERPRET", None)
    import torch

    from fastattn.kernels.aot import _resources
    from fastattn.kernels.sparse.aot import _build
    from fastattn.kernels.window import flash

    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    D, DV = head_dim, head_dim_v
    q, v = torch.zeros(2, T, D, dtype=tdt), torch.zeros(2, T, DV, dtype=tdt)
    out = torch.zeros(2, T - window, DV + 1, dtype=tdt)
    row, dq, dv = torch.zeros(2, T), torch.zeros(2, T, D, dtype=tdt), torch.zeros(2, T, DV, dtype=tdt)
    pl = flash.plan(D, DV, tdt, tuning)
    common = dict(q_ptr=q, k_ptr=q, v_ptr=v, qk_scale=0.36, T=T, window=window, num_warps=pl.warps,
                  **flash._dims(q, v))
    bwd = dict(common, do_ptr=v, lse_ptr=row, delta_ptr=row, scale=0.25, BLOCK_M=pl.bwd_block_m,
               BLOCK_N=pl.bwd_block_n)
    launches = (
        (flash.window_fwd_kernel, dict(common, out_ptr=out, o_ptr=v, lse_ptr=row, out_rows=T - window,
                                       HAS_OUTSIDE=True, BLOCK_M=pl.block_m, BLOCK_N=pl.block_n)),
        (flash.window_dq_kernel, dict(bwd, dq_ptr=dq, out_ptr=out, dout_ptr=out, out_rows=T - window,
                                      HAS_OUTSIDE=True)),
        (flash.window_dkdv_kernel, dict(bwd, dk_ptr=dq, dv_ptr=dv)),
    )
    report = {}
    for fn, kw in launches:
        t0 = time.perf_counter()
        kern = _build(fn, kw, arch)
        report[fn.__name__] = (f"{_resources(kern.asm['cubin'])} SMEM:{kern.metadata.shared} "
                               f"({time.perf_counter() - t0:.1f} s)")
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--D", type=int, default=16)
    ap.add_argument("--DV", type=int, default=64)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--arch", type=int, default=90)
    args = ap.parse_args(argv)
    rep = compile_kernels(window=args.window, head_dim=args.D, head_dim_v=args.DV, dtype=args.dtype, arch=args.arch)
    for name, res in rep.items():
        print(f"{args.dtype} d{args.D}/v{args.DV} {name:20s} {res}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
