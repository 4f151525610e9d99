"""Compile the generated kernels for a GPU target without a GPU, and report registers and spills.

Triton ships ptxas, so the whole pipeline (TTIR -> TTGIR -> PTX -> cubin) runs on a CPU-only
machine. This catches compile errors of GPU-only code paths (the interpreter does not
check layouts, shared memory or register limits) and shows register pressure: a STACK
above 0 means the kernel spills to local memory.

    python -m fastattn.kernels.aot "1 + x + x**2/2" --dtype bf16 --head-dim 16 --head-dim-v 64
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time

__all__ = ["compile_kernels"]

_TYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}


def _resources(cubin: bytes) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as fh:
        fh.write(cubin)
    try:
        out = subprocess.run([tool, "-res-usage", fh.name], capture_output=True, text=True, check=False).stdout
    finally:
        os.unlink(fh.name)
    return " ".join(w for line in out.splitlines() if "REG" in line for w in line.split()
                    if w.split(":")[0] in ("REG", "STACK", "SHARED"))


def compile_kernels(spec, *, dtype="bf16", head_dim=64, head_dim_v=64, chunk=64, block_f=64, block_v=None,
                    causal=True, normalize=True, arch=90, degree=None, dump=None, tma=None):
    """Compile the five kernels of ``spec`` for ``sm_<arch>``; returns {kernel: "REG:n STACK:n SHARED:n"}.
    ``dump``: a folder to write each kernel's TTGIR and PTX into (to read its layouts and MMA kind).
    ``tma``: the general path's backward adds dv rows by TMA (None: on for sm_90+, as the host's
    default on the GPU)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastattn.kernels.codegen import load_module
    from fastattn.kernels.poly import polynomial

    mod = load_module(polynomial(spec, degree))
    ptr = _TYPES[dtype]
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    q = torch.empty(1, 1, 1, head_dim, dtype=tdt)
    v = torch.empty(1, 1, 1, head_dim_v, dtype=tdt)
    tma = arch >= 90 if tma is None else tma
    dims = {"T": "i32", "D": "i32", "DV": "i32"}
    f32 = "*fp32"

    def general(part):
        # the general path's kernels of one pass ("fwd" or "bwd"), as the host launches them
        kron, const = dict(KRON=False, KG=1, KA=1), False
        nf = -(-mod.feature_dim(head_dim) // block_f)
        if mod.uses_kron(head_dim, causal, head_dim_v, part):
            # degree 2 through the block-Kronecker tiles (see the template's kron_tables), the
            # constant outside the causal scans where kron_const_out says so
            const = causal and mod.kron_const_out(head_dim, block_f)
            ktab, _, _, (KG, KA) = mod.kron_tables(head_dim, 1.0, "cpu", block_f, const_out=const)
            kron, nf = dict(KRON=True, KG=KG, KA=KA), ktab.shape[0]
        BD, BV, BVs, precision, warps = mod._blocks(q, v, block_f, block_v, kron["KRON"])
        nv = -(-head_dim_v // BVs)

        def desc(dtype, name):
            # a TMA descriptor argument (the host's default bits), or the None it passes when TMA is off
            return {name: f"tensordesc<{dtype}[1,{chunk},{BVs}]>"} if tma else {name: None}
        # the backward's dq / dk adds of one-group Kronecker tiles: [1, chunk, KA] and [1, chunk, block_f] boxes
        dx = tma and kron["KRON"] and kron["KG"] == 1
        dx_descs = ({"dxg": f"tensordesc<fp32[1,{chunk},{kron['KA']}]>",
                     "dxl": f"tensordesc<fp32[1,{chunk},{block_f}]>"} if dx else {"dxg": None, "dxl": None})
        seg = (mod._segment_state_kernel, dict(x=ptr, y=ptr, yd=None, rden=f32, cz=f32, S=f32, Z=f32, idx="*i32",
                                               w=f32, ktab="*i32", **dims, F_PAD="i32", NC="i32", CPS="i32", NF="i32",
                                               NSEG="i32", S_LO="i32"),
               dict(BT=chunk * mod._seg_group(chunk, block_f, BVs, scale_y=part == "bwd" and normalize), BF=block_f,
                    BV=BVs, BD=BD, NORMALIZE=normalize, SCALE_Y=part == "bwd" and normalize, PRECISION=precision,
                    LD=False, TMA_LD=False, WIDE=False, **kron), warps)
        if part == "fwd":
            if causal and not kron["KRON"] and mod._fused_tiles(q, v, causal, "fwd") is None:
                # the chunk-parallel forward (see _poly_attention_fwd)
                return [seg, (mod._chunk_fwd_kernel, dict(q=ptr, k=ptr, v=ptr, o=ptr, z=f32, S0=f32, Z0=f32, idx="*i32",
                                                          w_phi=f32, ktab="*i32", scale="fp32", eps="fp32", **dims,
                                                          F_PAD="i32", NC="i32", CPS="i32", NSEG="i32", NF="i32"),
                              dict(BT=chunk, BF=block_f, BV=BV, BD=BD, NORMALIZE=normalize, FIX_ABS=False,
                                   PRECISION=precision, **kron), 4)]
            return [
                (mod._intra_fwd_kernel, dict(q=ptr, k=ptr, v=ptr, o=f32, z=f32, vs=f32, scale="fp32", **dims,
                                             NC="i32"),
                 dict(BT=chunk, BD=BD, BV=BV, NORMALIZE=normalize, PRECISION=precision, CONST=const),
                 mod._intra_warps(chunk, BD, BV)),
                seg,
                (mod._inter_fwd_kernel, dict(q=ptr, k=ptr, v=ptr, vd=None, o=f32, **desc("fp32", "od"), z=f32,
                                             S0=f32, Z0=f32, idx="*i32", w_phi=f32, w_psi=f32, ktab="*i32", **dims,
                                             F_PAD="i32", NC="i32", CPS="i32", NF="i32"),
                 dict(BT=chunk, BF=block_f, BV=BVs, BD=BD, CAUSAL=causal, NORMALIZE=normalize, ATOMIC=nf > 1,
                      USE_SEG=causal, PRECISION=precision, TMA_LD=False, TMA_ADD=tma, WIDE=False, **kron), warps,
                 mod._MAXNREG_FWD if kron["KRON"] else None)]
        return [
            (mod._intra_bwd_kernel, dict(q=ptr, k=ptr, v=ptr, do=ptr, rden=f32, dz=f32, dq=f32, dk=f32, dv=f32,
                                         dns=f32, a0="fp32", scale="fp32", **dims, NC="i32"),
             dict(BT=chunk, BD=BD, BV=BV, NORMALIZE=normalize, PRECISION=precision, CONST=const),
             mod._intra_warps(chunk, BD, BV)),
            seg,
        ] + [
            (mod._inter_bwd_kernel, dict(q=ptr, k=ptr, v=ptr, vd=None, do=ptr, dod=None, rden=f32, dz=f32, dq=f32,
                                         dk=f32, dv=f32, **desc("fp32", "dvd"), **dx_descs, S0=f32, Z0=f32, dS0=f32,
                                         dZ0=f32, idx="*i32", w_phi=f32, w_psi=f32, ktab="*i32",
                                         **dims, F_PAD="i32", NC="i32", CPS="i32", NF="i32"),
             dict(BT=chunk, BF=block_f, BV=BVs, BD=BD, CAUSAL=causal, NORMALIZE=normalize, ATOMIC_QK=nf * nv > 1,
                  ATOMIC_V=nf > 1, USE_SEG=causal, PASS=p, PRECISION=precision, TMA_LD=False, TMA_ADD=tma, WIDE=False,
                  TMA_DX=dx, **kron), warps)
            for p in (0, 1)
        ]

    def fused(part, tiles):
        # the fused causal path (all features in one tile) of one pass
        BF, BVf = tiles
        BD, _, precision = mod._dims(q, v)
        fw = 8 if BF * BVf >= 64 * 64 else 4
        dims2 = dict(dims, F_PAD="i32", NC="i32", CPS="i32")
        seg = (mod._segment_state_kernel, dict(x=ptr, y=ptr, yd=None, rden=f32, cz=f32, S=f32, Z=f32, idx="*i32",
                                               w=f32, ktab="*i32", **dims2, NF="i32", NSEG="i32", S_LO="i32"),
               dict(BT=chunk * mod._seg_group(chunk, BF, BVf, scale_y=part == "bwd" and normalize), BF=BF, BV=BVf,
                    BD=BD, NORMALIZE=normalize, SCALE_Y=part == "bwd" and normalize, PRECISION=precision,
                    LD=mod._FUSED_LD, TMA_LD=False, WIDE=False, KRON=False, KG=1, KA=1), fw)
        if part == "fwd":
            return [seg, (mod._fused_fwd_kernel, dict(q=ptr, k=ptr, v=ptr, o=ptr, z=f32, S0=f32, Z0=f32, idx="*i32",
                                                      w_phi=f32, w_psi=f32, scale="fp32", eps="fp32", **dims2),
                          dict(BT=chunk, BF=BF, BV=BVf, BD=BD, NORMALIZE=normalize, FIX_ABS=False, USE_SEG=True,
                               PRECISION=precision, LD=mod._FUSED_LD, WIDE=False), fw)]
        return [seg] + [
            (mod._fused_bwd_kernel, dict(q=ptr, k=ptr, v=ptr, do=ptr, rden=f32, dz=f32, dq=ptr, dk=ptr, dv=ptr,
                                         S0=f32, Z0=f32, idx="*i32", w_phi=f32, w_psi=f32, scale="fp32", **dims2),
             dict(BT=chunk, BF=BF, BV=BVf, BD=BD, NORMALIZE=normalize, USE_SEG=True, PASS=p, PRECISION=precision,
                  LD=mod._FUSED_LD, WIDE=False), fw)
            for p in (0, 1)
        ]

    jobs = []
    for part in ("fwd", "bwd"):
        tiles = mod._fused_tiles(q, v, causal, part)
        jobs += [(part,) + j for j in (general(part) if tiles is None else fused(part, tiles))]
    report = {}
    for part, fn, sig, consts, nw, *maxnreg in jobs:
        # an argument the host passes as None (a descriptor with TMA off) is a constexpr None
        consts = dict(consts, **{k: None for k, v in sig.items() if v is None})
        sig = {k: v for k, v in sig.items() if v is not None}
        sig = dict(sig, **{k: "constexpr" for k in consts})
        t0 = time.perf_counter()
        opts = {"num_warps": nw}
        if maxnreg and maxnreg[0]:
            opts["maxnreg"] = maxnreg[0]
        kern = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32), options=opts)
        name = f"{part} " + fn.__name__ + (f"[PASS={consts['PASS']}]" if "PASS" in consts else "")
        # SMEM: the dynamic shared memory the launch asks for (SHARED is the cubin's static part)
        report[name] = (f"{_resources(kern.asm['cubin'])} SMEM:{kern.metadata.shared} warps:{nw} "
                        f"({time.perf_counter() - t0:.1f} s)")
        if dump:
            os.makedirs(dump, exist_ok=True)
            for ext in ("ttgir", "ptx"):
                with open(os.path.join(dump, f"{part}_{name.split()[1]}.{ext}"), "w") as fh:
                    fh.write(kern.asm[ext])
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="compile the generated kernels for sm_90 on the CPU")
    ap.add_argument("spec")
    ap.add_argument("--degree", type=int, default=None)
    ap.add_argument("--dtype", choices=sorted(_TYPES), default="bf16")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--head-dim-v", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--block-f", type=int, default=64)
    ap.add_argument("--block-v", type=int, default=None)
    ap.add_argument("--non-causal", action="store_true")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--dump", default=None, help="folder for each kernel's TTGIR and PTX")
    ap.add_argument("--no-tma", action="store_true", help="the general path's pointer loads and atomics instead of TMA")
    a = ap.parse_args(argv)
    rep = compile_kernels(a.spec, dtype=a.dtype, head_dim=a.head_dim, head_dim_v=a.head_dim_v, chunk=a.chunk,
                          block_f=a.block_f, block_v=a.block_v, causal=not a.non_causal, arch=a.arch,
                          degree=a.degree, dump=a.dump, tma=False if a.no_tma else None)
    for name, line in rep.items():
        print(f"{name:30s} {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
