"""Gated attention on the GPU: the gated Triton route (bf16) against the fp32 torch path, and its speed.

    python benchmarks/gated_check.py             # check lines, "N failing", then a table of fwd+bwd ms
    python benchmarks/gated_check.py --compile   # no GPU needed: registers and spills of each kernel on sm_90

Rows (B2 H8 T4096, bf16, causal, g = logsigmoid(...) with a run of g = -5): Based (1 + x + x**2/2, qk 16,
v 64, normalised) and linear "x" d64 (unnormalised). For each: o, dq, dk, dv, dg of
``fast_attention(..., g=g)`` on the Triton route vs the torch path in fp32 (rel-RMS); then fwd and
fwd+bwd milliseconds of ours gated, ours ungated (the same call without g), and, for the linear row,
fla's ``chunk_simple_gla`` with the same g (its output is also compared with ours: the same map).
"""
import inspect
import sys

import torch

from fastattn.attention import fast_attention
from fastattn.kernels.checks import errors

B, H, T = 2, 8, 4096
DEVICE, DTYPE = "cuda", torch.bfloat16
ROWS = [("based d16 v64", "1 + x + x**2/2", 16, 64, True), ("linear x d64", "x", 64, 64, False),
        ("power x**2 d64", "x**2", 64, 64, True)]
TOL = 2e-2  # bf16 inputs and features against fp32: rel-RMS


def inputs(D, DV, seed):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    q, k = (0.5 * torch.randn(B, H, T, D, device=DEVICE, generator=gen) for _ in range(2))
    v, do = (torch.randn(B, H, T, DV, device=DEVICE, generator=gen) for _ in range(2))
    g = torch.nn.functional.logsigmoid(2 * torch.randn(B, H, T, device=DEVICE, generator=gen) + 4)
    g[..., T // 4:T // 4 + 40] = -5.0  # a stretch of strong forgetting
    return q, k, v, g, do


def run(spec, normalize, q, k, v, g, do, dtype, backend):
    xs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    gate = g.detach().clone().requires_grad_()
    o = fast_attention(*xs, spec, normalize=normalize, g=gate, backend=backend)
    (o.float() * do).sum().backward()
    return [o.float()] + [x.grad.float() for x in xs] + [gate.grad.float()]


def fla_op():
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError:
        return None
    params = inspect.signature(chunk_simple_gla).parameters
    # fla's layout is [B, T, H, D] and g [B, T, H]; older releases take head_first (True meant [B, H, T, D])
    extra = {"head_first": False} if "head_first" in params else {}

    def op(q, k, v, g, scale):
        out = chunk_simple_gla(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), g=g.transpose(1, 2),
                               scale=scale, **extra)
        o = out[0] if isinstance(out, tuple) else out
        return o.transpose(1, 2)

    return op


def ms(fn):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def fwd_bwd(f, ins, do):
    def step():
        o = f(*ins)
        o.backward(do)
        for x in ins:
            x.grad = None

    return step


def compile_report(arch=90):
    """Compile the five gated kernels for sm_<arch> on the CPU (Triton ships ptxas) as the launchers call them
    for the rows' shapes (and F 2145, d64 degree 2), and print REG / STACK (spills) / SMEM per kernel."""
    import os

    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastattn.kernels import gated
    from fastattn.kernels.aot import _resources

    types = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    for F, DV in ((153, 65), (64, 64), (2145, 65)):
        p = gated.plan(F, DV, DTYPE)
        N, BH = -(-T // p.chunk), B * H

        def e(*shape, dt=DTYPE):
            return torch.empty(*shape, dtype=dt, device="meta")

        x, v, g, h, s = e(BH, T, F), e(BH, T, DV), e(BH, T, dt=torch.float32), e(BH, N, F, DV), e(BH, F, DV,
                                                                                                  dt=torch.float32)
        o = e(BH, T, DV, dt=torch.float32)
        runs = {
            "_fwd_states": dict(psi_ptr=x, v_ptr=v, g_ptr=g, s0_ptr=s, h_ptr=h, sT_ptr=s, HAS_S0=True,
                                STORE_FINAL=True),
            "_fwd_output": dict(phi_ptr=x, psi_ptr=x, v_ptr=v, g_ptr=g, h_ptr=h, o_ptr=o, G=1),
            "_bwd_dstates": dict(phi_ptr=x, do_ptr=v, g_ptr=g, dsT_ptr=s, dh_ptr=h, ds0_ptr=s, HAS_DST=True, G=1),
            "_bwd_dv": dict(phi_ptr=x, psi_ptr=x, do_ptr=v, g_ptr=g, dh_ptr=h, dv_ptr=v, G=1),
            "_bwd_dfeat": dict(phi_ptr=x, psi_ptr=x, v_ptr=v, do_ptr=v, g_ptr=g, h_ptr=h, dh_ptr=h, dphi_ptr=x,
                               dpsi_ptr=x, dgate_ptr=g, BHkv=BH, G=1),
        }
        for name, kw in runs.items():
            fn = getattr(gated, name)
            kw = dict(kw, T=T, F=F, DV=DV, N=N, C=p.chunk, BF=p.block_f, BV=p.block_v, PRECISION=p.precision)
            sig, consts, attrs = {}, {}, {}
            for i, arg in enumerate(fn.arg_names):
                val = kw[arg]
                # constexprs, and an int equal to 1, which the runtime specialises into a constant (G, MHA)
                if isinstance(val, (bool, str)) or arg in ("C", "BF", "BV") or (isinstance(val, int) and val == 1):
                    consts[arg], sig[arg] = val, "constexpr"
                elif isinstance(val, torch.Tensor):
                    # the runtime's divisibility-16 hint on real pointers and multiples of 16
                    sig[arg], attrs[(i,)] = "*" + types[val.dtype], [["tt.divisibility", 16]]
                else:
                    sig[arg] = "i32"
                    if val % 16 == 0:
                        attrs[(i,)] = [["tt.divisibility", 16]]
            k = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", arch, 32),
                               options={"num_warps": p.num_warps})
            print(f"F{F} DV{DV} {str(DTYPE)[6:]} BF{p.block_f} BV{p.block_v} warps {p.num_warps} {name:13s} "
                  f"{_resources(k.asm['cubin'])} SMEM:{k.metadata.shared}")
    return 0


def power_times(q, k, v, g, do):
    """power-attention's power_full(deg=2) with log_G = g, best fwd and fwd+bwd over chunk 128 / 256 / 1024
    ([B, T, H, D] layout, log_G float32), or (None, None) when it does not import."""
    try:
        from power_attention import power_full
    except Exception as exc:  # noqa: BLE001 - any import failure means no peer row
        print(f"power-attention not available: {exc}")
        return None, None
    tq, tk, tv, tdo = (x.detach().transpose(1, 2).contiguous() for x in (q, k, v, do))
    lg = g.detach().float().transpose(1, 2).contiguous()
    best_f = best_fb = None
    for chunk in (128, 256, 1024):
        a = [x.clone().requires_grad_() for x in (tq, tk, tv)]
        fn = lambda q, k, v, G: power_full(q, k, v, G, deg=2, chunk_size=chunk)  # noqa: E731
        try:
            with torch.no_grad():
                f = ms(lambda: fn(*a, lg))
            fb = ms(fwd_bwd(fn, (*a, lg.clone().requires_grad_()), tdo))
        except Exception as exc:  # noqa: BLE001 - a chunk size it cannot run is skipped, and said
            print(f"power_full chunk {chunk} failed: {str(exc).splitlines()[0][:160]}")
            continue
        print(f"power_full deg 2 log_G chunk {chunk}: fwd {f:.3f} fwd+bwd {fb:.3f} ms")
        best_f = f if best_f is None else min(best_f, f)
        best_fb = fb if best_fb is None else min(best_fb, fb)
    return best_f, best_fb


def main():
    if "--compile" in sys.argv[1:]:
        return compile_report()
    if not torch.cuda.is_available():
        print("gated_check.py needs a CUDA GPU")
        return 2
    fla = fla_op()
    if fla is None:
        print("fla not installed")
    bad, table = 0, []
    for i, (name, spec, D, DV, normalize) in enumerate(ROWS):
        q, k, v, g, do = inputs(D, DV, seed=i)
        ref = run(spec, normalize, q, k, v, g, do, torch.float32, "torch")
        got = run(spec, normalize, q, k, v, g, do, DTYPE, "triton")
        line = []
        for n, r, x in zip(["o", "dq", "dk", "dv", "dg"], ref, got):
            e = errors(r, x)
            ok = e["nonfinite"] == 0 and e["rel_rms"] < TOL
            bad += not ok
            line.append(f"{n} {e['rel_rms']:.1e}" + ("" if ok else " FAIL"))
        print(f"{name}: gated Triton {str(DTYPE)[6:]} vs fp32 torch path, rel-RMS: " + ", ".join(line))
        del ref, got
        torch.cuda.empty_cache()

        bq, bk, bv = (x.to(DTYPE).requires_grad_() for x in (q, k, v))
        gate = g.clone().requires_grad_()
        bdo = do.to(DTYPE)
        ours = lambda q, k, v, g: fast_attention(q, k, v, spec, normalize=normalize, g=g, backend="triton")  # noqa
        plain = lambda q, k, v: fast_attention(q, k, v, spec, normalize=normalize, backend="triton")  # noqa
        with torch.no_grad():
            times = {"gated": ms(lambda: ours(bq, bk, bv, gate)), "ungated": ms(lambda: plain(bq, bk, bv))}
        times["gated fb"] = ms(fwd_bwd(ours, (bq, bk, bv, gate), bdo))
        times["ungated fb"] = ms(fwd_bwd(plain, (bq, bk, bv), bdo))
        fla_fwd = fla_fb = None
        if fla is not None and spec == "x":
            scale = D ** -0.5
            theirs = lambda q, k, v, g: fla(q, k, v, g, scale)  # noqa: E731
            with torch.no_grad():
                e = errors(ours(bq, bk, bv, gate).float(), theirs(bq, bk, bv, gate).float())
                print(f"{name}: ours vs fla chunk_simple_gla ({str(DTYPE)[6:]} both), rel-RMS of o: {e['rel_rms']:.1e}")
                fla_fwd = ms(lambda: theirs(bq, bk, bv, gate))
            try:
                fla_fb = ms(fwd_bwd(theirs, (bq, bk, bv, gate), bdo))
            except RuntimeError as exc:  # fla refuses its gated backward on some Triton versions
                print(f"{name}: fla chunk_simple_gla backward failed: {str(exc).splitlines()[0][:160]}")
        if spec == "x**2":
            fla_fwd, fla_fb = power_times(bq, bk, bv, gate, bdo)
        table.append((name, times, fla_fwd, fla_fb))
    print(f"{bad} failing")
    print()
    print(f"B{B} H{H} T{T} {str(DTYPE)[6:]}, ms (median)  | gated fwd | gated fwd+bwd | ungated fwd | "
          "ungated fwd+bwd | peer fwd | peer fwd+bwd (fla chunk_simple_gla for x, power_full log_G best chunk for x**2)")
    for name, t, ff, fb in table:
        fla_cols = " | ".join("-" if x is None else f"{x:.3f}" for x in (ff, fb))
        print(f"{name:33s} | {t['gated']:.3f} | {t['gated fb']:.3f} | {t['ungated']:.3f} | {t['ungated fb']:.3f} | "
              f"{fla_cols}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
