"""Compile the sparse flash kernels for sm_90 on the CPU (no GPU): registers, spills and shared memory per launch.

The launch keywords come from the same schedule record and helpers the host uses (``flash._common``,
``flash._sides``); integers and pointers get the divisibility-16 hint the runtime gives them on real
shapes, so the build (software pipelining included) is the one a GPU run gets.

    python -m fastattn.kernels.sparse.aot                       # 64x64x4, every mode
    python -m fastattn.kernels.sparse.aot --tiles 128x64x8      # other tiles
"""

from __future__ import annotations

import argparse
import os
import time

__all__ = ["compile_kernels", "compile_schedule_kernels"]


def _build(fn, kw, arch):
    """Compile ``fn`` (a ``triton.jit`` function) for sm_``arch`` with the launch keywords ``kw`` (``num_warps``,
    ``num_stages`` among them), each argument specialised as the runtime does on a GPU: constexprs as given,
    pointers and ints that are multiples of 16 with the divisibility-16 hint, an int equal to 1 as a constant, and
    none of that for the kernel's ``do_not_specialize`` arguments. Shared by the gated and flash compile checks."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    types = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
             torch.int64: "i64", torch.uint8: "u8"}
    kw = dict(kw)
    opts = {"num_warps": kw.pop("num_warps")}
    if "num_stages" in kw:
        opts["num_stages"] = kw.pop("num_stages")
    sig, consts, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        name, x = param.name, kw[param.name]
        if param.is_constexpr:
            consts[name], sig[name] = x, "constexpr"
        elif isinstance(x, torch.Tensor):
            sig[name], attrs[(i,)] = "*" + types[x.dtype], [["tt.divisibility", 16]]
        elif isinstance(x, float):
            sig[name] = "fp32"
        elif param.do_not_specialize:
            sig[name] = "i32"
        elif x == 1:
            # the runtime specialises an int argument equal to 1 into a constant
            consts[name], sig[name] = 1, "constexpr"
        else:
            sig[name] = "i32"
            if x % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", arch, 32), options=opts)


def compile_kernels(*, tiles=(64, 64, 4), T=4096, head_dim=64, head_dim_v=64, dtype="bf16", causal=True, arch=90,
                    modes=("keep", "buckets", "pattern")):
    """{"mode kernel": "REG:n STACK:n SHARED:n SMEM:n (s)"} for every kernel the host launches in ``modes``."""
    os.environ.pop("TRITON_INTERPRET", None)
    import torch

    from fastattn.kernels.aot import _resources
    from fastattn.kernels.sparse import flash
    from fastattn.kernels.sparse.schedule import range_schedule
    from fastattn.patterns import global_tokens, local

    bq, bk, warps = tiles
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    q = torch.zeros(2, T, head_dim, dtype=tdt)
    v = torch.zeros(2, T, head_dim_v, dtype=tdt)
    row, dq, dv = torch.zeros(2, T), torch.zeros(2, T, head_dim), torch.zeros(2, T, head_dim_v)
    ids = torch.zeros(2, T, dtype=torch.long)
    scheds = {"keep": lambda: range_schedule(2, T, keep=ids == 0, is_causal=causal, block_q=bq, block_k=bk,
                                             warps=warps),
              "buckets": lambda: range_schedule(2, T, buckets=(ids, ids), is_causal=causal, block_q=bq, block_k=bk,
                                                warps=warps),
              "pattern": lambda: (local(256) | global_tokens(4)).compile(T, block=bq, block_k=bk, is_causal=causal)
              .schedule("cpu", warps=warps)}
    report = {}
    for mode in modes:
        s = scheds[mode]()
        common = flash._common(s, q, v, 0.125, causal)
        for fn, extra, backward in (
                (flash.sparse_fwd_kernel, dict(q_ptr=q, k_ptr=q, v_ptr=v, o_ptr=v, lse_ptr=row), False),
                (flash.sparse_dq_kernel, dict(q_ptr=q, k_ptr=q, v_ptr=v, do_ptr=v, lse_ptr=row, delta_ptr=row,
                                              dq_ptr=dq), False),
                (flash.sparse_dkdv_kernel, dict(q_ptr=q, k_ptr=q, v_ptr=v, do_ptr=v, lse_ptr=row, delta_ptr=row,
                                                dk_ptr=dq, dv_ptr=dv), True)):
            t0 = time.perf_counter()
            kern = _build(fn, dict(extra, **flash._sides(s, backward), **common), arch)
            report[f"{mode} {fn.__name__}"] = (f"{_resources(kern.asm['cubin'])} SMEM:{kern.metadata.shared} "
                                               f"({time.perf_counter() - t0:.1f} s)")
    return report


def compile_schedule_kernels(*, T=8192, BH=32, tiles=((128, 64, 8), (64, 64, 4)), causal=True, arch=90):
    """{"kernel": "REG:n STACK:n SHARED:n SMEM:n (s)"} for every launch of the Triton schedule builders (keep, and
    buckets with keep), recorded from the host code's own keywords and compiled, not run."""
    os.environ.pop("TRITON_INTERPRET", None)
    import torch

    from fastattn.kernels.aot import _resources
    from fastattn.kernels.sparse import schedule_kernels as sk

    launches = []
    real = sk._launch
    sk._launch = lambda kernel, grid, **kw: launches.append((kernel, grid, kw))
    try:
        keep = torch.ones(BH, T, dtype=torch.bool)
        ids = torch.zeros(BH, T, dtype=torch.long)
        sk.keep_schedules(BH, T, tiles, keep, is_causal=causal, backward=(False, True)[-len(tiles):])
        sk.bucket_schedules(BH, T, tiles, (ids, ids), keep, is_causal=causal, backward=(False, True)[-len(tiles):])
    finally:
        sk._launch = real
    report = {}
    for kernel, grid, kw in launches:
        t0 = time.perf_counter()
        kern = _build(kernel, kw, arch)
        name = kernel.__name__ + ("" if "BQ" not in kw else f" {kw['BQ']}x{kw['BK']}")
        report[name] = (f"{_resources(kern.asm['cubin'])} SMEM:{kern.metadata.shared} grid {grid} "
                        f"({time.perf_counter() - t0:.1f} s)")
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", default="64x64x4", help="BLOCK_QxBLOCK_KxWARPS")
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--DV", type=int, default=None)
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--modes", nargs="+", default=["keep", "buckets", "pattern"])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--schedule", action="store_true", help="compile the schedule builders' kernels instead")
    args = ap.parse_args(argv)
    if args.schedule:
        for name, res in compile_schedule_kernels(arch=args.arch).items():
            print(f"{name:32s} {res}")
        return 0
    tiles = tuple(int(x) for x in args.tiles.split("x"))
    rep = compile_kernels(tiles=tiles, head_dim=args.D, head_dim_v=args.DV or args.D, dtype=args.dtype,
                          modes=args.modes, arch=args.arch)
    for name, res in rep.items():
        print(f"{args.tiles} {name:28s} {res}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
