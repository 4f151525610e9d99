"""Compile the gated kernels (:mod:`fastattn.kernels.gated`) for sm_90 on the CPU (no GPU): registers, spills,
shared memory and grid of every launch.

The host launchers ``_gated_fwd`` / ``_gated_bwd`` run on meta tensors with the kernels recorded instead of
launched, so the keywords, grids and plan are the host's own; each argument then gets the specialisation the
runtime gives it on a GPU (pointers and multiples of 16 the divisibility-16 hint, an int equal to 1 a constant,
none for the kernels' ``do_not_specialize`` arguments), so the build (software pipelining included) is the one a
GPU run gets.

    python -m fastattn.kernels.gated_aot --features 2080 --head-dim-v 65 --dtype bf16
"""

from __future__ import annotations

import argparse
import os
import time

__all__ = ["SMEM_LIMIT", "compile_kernels"]

#: dynamic shared memory an sm_90 block may ask for (227 KB)
SMEM_LIMIT = 232448
_GRID_YZ = 65535


def _build(fn, kw, num_warps, arch):
    from fastattn.kernels.sparse.aot import _build as build

    return build(fn, dict(kw, num_warps=num_warps), arch)


def _code(ptx: str) -> str:
    """The PTX without its debug sections, line records and comments: what two builds must share to be one code."""
    cut = ptx.find(".section\t.debug")
    body = ptx if cut < 0 else ptx[:cut]
    return "\n".join(line for line in body.splitlines()
                     if line.strip() and not line.lstrip().startswith((".loc", ".file", "//")))


def _record(features, head_dim_v, dtype, T, heads, group, initial_state, final_state):
    """The plan and every launch of a forward and backward, as (kernel, grid, keywords, num_warps)."""
    import torch

    from fastattn.kernels import gated

    p = gated.plan(features, head_dim_v, dtype)
    # the build the plan picks, and the state-gate kernel
    slots = [(p.kernels, n) for n in vars(p.kernels)] + [(gated, "_state_gate")]
    kernels = [getattr(owner, n) for owner, n in slots]
    out = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            def launch(**kw):
                warps = kw.pop("num_warps")
                out.append((self.fn, tuple(grid), kw, warps))
            return launch

    def e(*shape, dt=dtype):
        return torch.empty(*shape, dtype=dt, device="meta")

    BH = heads
    phi, psi, v = e(BH * group, T, features), e(BH, T, features), e(BH, T, head_dim_v)
    g = e(BH, T, dt=torch.float32)
    s0 = e(BH, features, head_dim_v, dt=torch.float32) if initial_state else None
    try:
        for (owner, n), fn in zip(slots, kernels):
            setattr(owner, n, Recorder(fn))
        o, h, sT = gated._gated_fwd(phi, psi, v, g, s0, final_state, p)
        dsT = e(BH, features, head_dim_v, dt=torch.float32) if final_state else None
        gated._gated_bwd(phi, psi, v, g, h, e(BH * group, T, head_dim_v), dsT, p)
    finally:
        for (owner, n), fn in zip(slots, kernels):
            setattr(owner, n, fn)
    return p, out


def compile_kernels(features, head_dim_v, dtype="bf16", *, T=4096, heads=16, group=1, initial_state=False,
                    final_state=False, arch=90):
    """{"kernel": {"smem": bytes, "grid": (x, y, z), "resources": "REG:n STACK:n SHARED:n", "plan": Plan, "code": PTX
    without debug lines}} for every kernel the gated route launches on phi [heads * group, T, features],
    v [heads, T, head_dim_v].

    Raises ValueError where a grid's y or z passes 65,535 (CUDA's limit). Example (a few seconds per kernel, so
    run by tests/test_gated.py rather than here): ``max(k["smem"] for k in compile_kernels(2080, 65,
    "bf16").values()) <= SMEM_LIMIT``.
    """
    os.environ.pop("TRITON_INTERPRET", None)
    import torch

    from fastattn.kernels.aot import _resources

    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    p, launches = _record(features, head_dim_v, tdt, T, heads, group, initial_state, final_state)
    report = {}
    for fn, grid, kw, warps in launches:
        if max(grid[1:]) > _GRID_YZ:
            raise ValueError(f"{fn.__name__}: grid {grid} passes CUDA's 65,535 in y or z")
        t0 = time.perf_counter()
        kern = _build(fn, kw, warps, arch)
        report[fn.__name__] = {"smem": kern.metadata.shared, "grid": grid, "plan": p, "code": _code(kern.asm["ptx"]),
                               "resources": _resources(kern.asm["cubin"]), "seconds": time.perf_counter() - t0}
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, required=True)
    ap.add_argument("--head-dim-v", type=int, required=True, help="value columns, the normaliser's included")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=16, help="key/value heads times batch")
    ap.add_argument("--group", type=int, default=1)
    ap.add_argument("--arch", type=int, default=90)
    a = ap.parse_args(argv)
    report = compile_kernels(a.features, a.head_dim_v, a.dtype, T=a.T, heads=a.heads, group=a.group, arch=a.arch)
    for name, r in report.items():
        p = r["plan"]
        print(f"F{a.features} DV{a.head_dim_v} {a.dtype} C{p.chunk} BF{p.block_f} BV{p.block_v} warps {p.num_warps} "
              f"{name:13s} {r['resources']} SMEM:{r['smem']} grid {r['grid']} ({r['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
