"""Compile the generated kernels for a GPU target without a GPU, and report registers and spills.

Triton ships ptxas, so the whole pipeline (TTIR -> TTGIR -> PTX -> cubin) runs on a CPU-only
machine. This catches compile errors of GPU-only code paths (the interpreter does not
check layouts, shared memory or register limits) and shows register pressure: a STACK
above 0 means the kernel spills to local memory.

    python -m fastattn.kernels.aot "1 + x + x**2/2" --dtype bf16 --head-dim 16 --head-dim-v 64
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import tempfile
import time

__all__ = ["compile_kernels", "launches"]

_TYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}
_PTR = {"torch.bfloat16": "*bf16", "torch.float16": "*fp16", "torch.float32": "*fp32", "torch.int32": "*i32",
        "torch.int64": "*i64"}


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


def _arg_type(value):
    """The compile signature of one launch argument, as the launch passes it."""
    import torch
    from triton.tools.tensor_descriptor import TensorDescriptor

    if isinstance(value, torch.Tensor):
        return _PTR[str(value.dtype)]
    if isinstance(value, TensorDescriptor):
        return f"tensordesc<{_PTR[str(value.base.dtype)][1:]}[{','.join(map(str, value.block_shape))}]>"
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"launch argument {value!r} has no compile type")


def launches(mod, plans, q, k, v, scale=1.0, causal=True, normalize=True):
    """Every kernel launch of the forward and backward ``plans`` = (fwd, bwd) on (meta) tensors, as
    (part, kernel, signature, constexprs, options): the host launchers run with the kernels recorded
    instead of launched, so the signatures are the launchers' own."""
    import torch

    names = [n for n in dir(mod) if n.endswith("_kernel")]
    kernels = {n: getattr(mod, n) for n in names}
    out, part = [], ["fwd"]

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            def launch(*args, **kw):
                fn = self.fn
                opts = {o: kw.pop(o) for o in ("num_warps", "maxnreg") if o in kw}
                values = dict(zip(fn.arg_names, args), **kw)
                sig, consts = {}, {}
                for param in fn.params:
                    value = values.get(param.name, param.default)
                    if param.is_constexpr or value is None:
                        # a constexpr the launch leaves out takes its default; a None argument is a constexpr None
                        consts[param.name] = None if value is inspect.Parameter.empty else value
                    else:
                        sig[param.name] = _arg_type(value)
                out.append((part[0], fn, sig, consts, opts))
            return launch

    try:
        for n in names:
            setattr(mod, n, Recorder(kernels[n]))
        fwd, bwd = plans
        o, z, state = mod._forward(fwd, q, k, v, scale, causal, normalize, False, 1e-6)
        part[0] = "bwd"
        mod._backward(bwd, q, k, v, o, z if z is not None else o.new_empty(0), torch.empty_like(o), scale, causal,
                      normalize, False, 1e-6, state)
    finally:
        for n in names:
            setattr(mod, n, kernels[n])
    return out


def compile_kernels(spec, *, dtype="bf16", head_dim=64, head_dim_v=64, chunk=None, block_f=64, block_v=None,
                    causal=True, normalize=True, arch=90, degree=None, dump=None, tma=None, T=4096, tuning=None):
    """Compile every kernel the host launches for ``spec`` on [1, 1, T, D] inputs for ``sm_<arch>``, with the
    routes and tiles :func:`plan` gives an sm_<arch> GPU of 132 SMs; returns {"part kernel": "REG:n STACK:n
    SHARED:n SMEM:n warps:n (s)"}. ``dump``: a folder to write each kernel's TTGIR and PTX into.
    ``tma``: TMA row moves at the plan's bits on any amount of work (None: for sm_90+; False: none).
    ``tuning``: more plan overrides (as ``poly_attention`` takes them)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastattn.kernels.codegen import load_module
    from fastattn.kernels.poly import polynomial

    mod = load_module(polynomial(spec, degree))
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    q, k = (torch.empty(1, 1, T, head_dim, dtype=tdt, device="meta") for _ in range(2))
    v = torch.empty(1, 1, T, head_dim_v, dtype=tdt, device="meta")
    tma = arch >= 90 if tma is None else tma
    # small inputs stay below the plan's TMA work threshold: lift it, so the GPU's large-shape kernels compile
    tuning = dict({"tma_min_work": 0} if tma else {"tma_fwd": 0, "tma_bwd": 0}, **(tuning or {}))
    device = mod.DeviceInfo("cuda", 132, arch // 10)
    kw = dict(chunk=chunk, block_f=block_f, block_v=block_v)
    fwd = mod.plan(q.shape, v.shape, tdt, device, causal, normalize, "fwd", tuning, **kw)
    state = None
    if fwd.segments > 1 and fwd.route in ("fwd/fused/segments", "fwd/chunk/fused-table"):
        state = (fwd.cps * fwd.chunk, fwd.segments)
    bwd = mod.plan(q.shape, v.shape, tdt, device, causal, normalize, "bwd", tuning, saved=state, **kw)
    report, seen = {}, set()
    for part, fn, sig, consts, opts in launches(mod, (fwd, bwd), q, k, v, causal=causal, normalize=normalize):
        key = (fn.__name__, tuple(sig.items()), tuple(consts.items()), tuple(opts.items()))
        if key in seen:
            continue
        seen.add(key)
        t0 = time.perf_counter()
        src = ASTSource(fn, dict(sig, **{n: "constexpr" for n in consts}), consts)
        kern = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
        tags = [f"PASS={consts['PASS']}"] if "PASS" in consts else []
        tags += [t for t in ("SCALE_Y", "REVERSE") if consts.get(t)]
        name = f"{part} {fn.__name__}" + (f"[{','.join(tags)}]" if tags else "")
        # SMEM: the dynamic shared memory the launch asks for (SHARED is the cubin's static part)
        report[name] = (f"{_resources(kern.asm['cubin'])} SMEM:{kern.metadata.shared} warps:{opts['num_warps']} "
                        f"({time.perf_counter() - t0:.1f} s)")
        if dump:
            os.makedirs(dump, exist_ok=True)
            for ext in ("ttgir", "ptx"):
                with open(os.path.join(dump, f"{name.replace(' ', '_')}.{ext}"), "w") as fh:
                    fh.write(kern.asm[ext])
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="compile the generated kernels for sm_90 on the CPU")
    ap.add_argument("spec")
    ap.add_argument("--degree", type=int, default=None)
    ap.add_argument("--dtype", choices=sorted(_TYPES), default="bf16")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--head-dim-v", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--block-f", type=int, default=64)
    ap.add_argument("--block-v", type=int, default=None)
    ap.add_argument("--non-causal", action="store_true")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--dump", default=None, help="folder for each kernel's TTGIR and PTX")
    ap.add_argument("--no-tma", action="store_true", help="the general path's pointer loads and atomics instead of TMA")
    ap.add_argument("--T", type=int, default=4096, help="tokens of the planned call (routes and segments depend on it)")
    ap.add_argument("--tuning", default=None, help='plan overrides as JSON, e.g. \'{"fused": false}\'')
    a = ap.parse_args(argv)
    rep = compile_kernels(a.spec, dtype=a.dtype, head_dim=a.head_dim, head_dim_v=a.head_dim_v, chunk=a.chunk,
                          block_f=a.block_f, block_v=a.block_v, causal=not a.non_causal, arch=a.arch,
                          degree=a.degree, dump=a.dump, tma=False if a.no_tma else None, T=a.T,
                          tuning=json.loads(a.tuning) if a.tuning else None)
    for name, line in rep.items():
        print(f"{name:30s} {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
