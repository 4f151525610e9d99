"""Gated attention on the GPU: the gated Triton kernels (bf16) against the fp32 torch path, and their speed.

    python benchmarks/gated_check.py                     # check lines, "N failing", then a table of ms
    python benchmarks/gated_check.py --json out.json     # the same, and the numbers as JSON
    python benchmarks/gated_check.py --rows x2-d64       # some rows only (ids below)
    python benchmarks/gated_check.py --compile           # no GPU needed: registers, spills, shared memory on sm_90
    python benchmarks/gated_check.py --api --rows x-d64  # what a user gets: fast_attention(..., g=g), routed
    python benchmarks/gated_check.py --state --rows taylor-d64 x2-d64  # prefill + final state on each route

Rows (causal, g = logsigmoid(2 randn + 4) with a run of g = -5 over 40 tokens):

    based-d16   1 + x + x**2/2, qk 16, v 64, normalised       153 features    B2 H8 T4096
    x-d64       x, qk 64, v 64, unnormalised                   64 features    B2 H8 T4096
    x2-d64      x**2, qk 64, v 64, normalised               2,080 features    B2 H8 T4096
    taylor-d64  1 + x + x**2/2, qk 64, v 64, normalised     2,145 features    B2 H8 T4096
    *-flash     the same map and shape on the gated quadratic flash kernels (poly_flash_attention(..., g=g))
    taylor-d128 1 + x + x**2/2, qk 128, v 128, normalised   8,385 features    B1 H4 T2048

Each row calls :func:`fastattn.kernels.gated.gated_attention` directly, the function ``fast_attention(..., g=g)``
routes to on CUDA, so maps above ``GATED_GPU_MAX_FEATURES`` (which sends them to the torch path today) are checked
on the Triton kernels. o, dq, dk, dv, dg against ``fast_attention(..., backend="torch")`` in fp32 with a random
upstream gradient, as rel-RMS; a normalised row's gradients are judged against the size of their numerator terms
(the denominator held), as in tests/test_gated.py: the two paths of a normalised gradient cancel. Then fwd and
fwd+bwd milliseconds of the gated kernels, the ungated Triton route (the same call without g) and a peer: fla's
``chunk_simple_gla`` (x) or power-attention's ``power_full`` with log_G (x**2), when installed.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys

import torch

from fastattn.attention import fast_attention
from fastattn.kernels import gated, polynomial
from fastattn.kernels.checks import errors
from fastattn.kernels.poly import check_normalizer

DEVICE, DTYPE = "cuda", torch.bfloat16
# id: (spec, B, H, T, D, DV, normalize)
ROWS = {
    "based-d16": ("1 + x + x**2/2", 2, 8, 4096, 16, 64, True),
    "x-d64": ("x", 2, 8, 4096, 64, 64, False),
    "x2-d64": ("x**2", 2, 8, 4096, 64, 64, True),
    "taylor-d64": ("1 + x + x**2/2", 2, 8, 4096, 64, 64, True),
    "taylor-d64-flash": ("1 + x + x**2/2", 2, 8, 4096, 64, 64, True),
    "x2-d64-flash": ("x**2", 2, 8, 4096, 64, 64, True),
    "taylor-d128": ("1 + x + x**2/2", 1, 4, 2048, 128, 128, True),
}
TOL = 2e-2  # rel-RMS, bf16 inputs and features against fp32
# x**2 normalised: its z nearly vanishes after the run of g = -5, and its bf16 features (materialised by torch)
# cancel there; a bf16 emulation of these kernels (B1 H2 T4096) gives dq 3.4e-2, dk 3.0e-2 against the terms
TOLS = {("x2-d64", "dq"): 8e-2, ("x2-d64", "dk"): 8e-2, ("x2-d64-flash", "dq"): 8e-2, ("x2-d64-flash", "dk"): 8e-2}
NAMES = ("o", "dq", "dk", "dv", "dg")


def inputs(B, H, T, D, DV, seed):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    q, k = (0.5 * torch.randn(B, H, T, D, device=DEVICE, generator=gen) for _ in range(2))
    v, do = (torch.randn(B, H, T, DV, device=DEVICE, generator=gen) for _ in range(2))
    g = torch.nn.functional.logsigmoid(2 * torch.randn(B, H, T, device=DEVICE, generator=gen) + 4)
    g[..., T // 4:T // 4 + 40] = -5.0  # a stretch of strong forgetting
    return q, k, v, g, do


def gated_op(spec, normalize, D, flash=False):
    """(q, k, v, g) -> o on the gated Triton kernels, as fast_attention(..., g=g) calls them on CUDA; ``flash``:
    on the gated quadratic flash kernels instead."""
    poly = polynomial(spec)
    fix = check_normalizer(poly, normalize, None)
    if flash:
        from fastattn.kernels.poly_flash import poly_flash_attention

        return lambda q, k, v, g: poly_flash_attention(q, k, v, poly, scale=D ** -0.5, normalize=normalize,
                                                       normalizer_fix=fix, g=g)

    def op(q, k, v, g):
        o, _ = gated.gated_attention(q, k, v, g, poly, scale=D ** -0.5, normalize=normalize, normalizer_fix=fix,
                                     check_output=False)
        return o

    return op


def grads(op, q, k, v, g, do, dtype):
    xs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    gate = g.detach().clone().requires_grad_()
    o = op(*xs, gate)
    (o.float() * do).sum().backward()
    return [o.float()] + [x.grad.float() for x in xs] + [gate.grad.float()]


def numerator_terms(spec, q, k, v, g, do):
    """dq, dk, dv, dg along the numerator alone, the denominator held (fp32 torch path)."""
    xs = [x.detach().clone().requires_grad_() for x in (q, k, v, g)]
    n = fast_attention(*xs[:3], spec, normalize=False, g=xs[3], backend="torch")
    z = fast_attention(xs[0], xs[1], torch.ones_like(v[..., :1]), spec, normalize=False, g=xs[3], backend="torch")
    (n / z.detach() * do).sum().backward()
    return [None] + [x.grad for x in xs]


def check(row, spec, B, H, T, D, DV, normalize, seed):
    q, k, v, g, do = inputs(B, H, T, D, DV, seed)
    torch_path = lambda q, k, v, g: fast_attention(q, k, v, spec, normalize=normalize, g=g, backend="torch")  # noqa
    ref = grads(torch_path, q, k, v, g, do, torch.float32)
    got = grads(gated_op(spec, normalize, D, flash=row.endswith("-flash")), q, k, v, g, do, DTYPE)
    terms = numerator_terms(spec, q, k, v, g, do) if normalize else [None] * 5
    out, bad = {}, 0
    for n, r, x, t in zip(NAMES, ref, got, terms):
        e = errors(r, x, t)
        tol = TOLS.get((row, n), TOL)
        ok = e["nonfinite"] == 0 and e["rel_rms"] < tol
        bad += not ok
        out[n] = {"rel_rms": e["rel_rms"], "max_rel": e["max_rel"], "nonfinite": e["nonfinite"], "tol": tol, "ok": ok}
    F = polynomial(spec).feature_dim(D)
    print(f"{row} (F {F}, B{B} H{H} T{T}): gated Triton {str(DTYPE)[6:]} vs fp32 torch path, rel-RMS: "
          + ", ".join(f"{n} {out[n]['rel_rms']:.1e}" + ("" if out[n]["ok"] else f" FAIL (tol {out[n]['tol']:g})")
                      for n in NAMES), flush=True)
    return out, bad


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


def timings(row, spec, B, H, T, D, DV, normalize, seed, fla):
    q, k, v, g, do = inputs(B, H, T, D, DV, seed)
    bq, bk, bv = (x.to(DTYPE).requires_grad_() for x in (q, k, v))
    gate = g.clone().requires_grad_()
    bdo = do.to(DTYPE)
    ours = gated_op(spec, normalize, D, flash=row.endswith("-flash"))
    plain = lambda q, k, v: fast_attention(q, k, v, spec, normalize=normalize, backend="triton")  # noqa: E731
    t = {}
    with torch.no_grad():
        t["gated fwd"] = ms(lambda: ours(bq, bk, bv, gate))
        t["ungated fwd"] = ms(lambda: plain(bq, bk, bv))
    t["gated fwd+bwd"] = ms(fwd_bwd(ours, (bq, bk, bv, gate), bdo))
    t["ungated fwd+bwd"] = ms(fwd_bwd(plain, (bq, bk, bv), bdo))
    t["peer"], t["peer fwd"], t["peer fwd+bwd"] = None, None, None
    if fla is not None and spec == "x":
        t["peer"] = "fla chunk_simple_gla"
        theirs = lambda q, k, v, g: fla(q, k, v, g, D ** -0.5)  # noqa: E731
        with torch.no_grad():
            e = errors(ours(bq, bk, bv, gate).float(), theirs(bq, bk, bv, gate).float())
            print(f"{row}: ours vs fla chunk_simple_gla ({str(DTYPE)[6:]} both), rel-RMS of o: {e['rel_rms']:.1e}")
            t["peer fwd"] = ms(lambda: theirs(bq, bk, bv, gate))
        try:
            t["peer fwd+bwd"] = ms(fwd_bwd(theirs, (bq, bk, bv, gate), bdo))
        except RuntimeError as exc:  # fla refuses its gated backward on some Triton versions
            print(f"{row}: fla chunk_simple_gla backward failed: {str(exc).splitlines()[0][:160]}")
    if spec == "x**2":
        t["peer"] = "power_full log_G"
        t["peer fwd"], t["peer fwd+bwd"] = power_times(bq, bk, bv, gate, bdo)
    return t


def api_times(rows, fla):
    """fwd and fwd+bwd ms of ``fast_attention(q, k, v, spec, g=g)`` as a user calls it (its route: the gated chunk
    kernels, the gated flash kernels or the torch path), and fla's gated forward for x (its backward refuses some
    Triton versions, #640)."""
    out = {}
    for i, row in enumerate(rows):
        spec, B, H, T, D, DV, normalize = ROWS[row]
        q, k, v, g, do = inputs(B, H, T, D, DV, i)
        bq, bk, bv = (x.to(DTYPE).requires_grad_() for x in (q, k, v))
        gate = g.clone().requires_grad_()
        op = lambda q, k, v, g: fast_attention(q, k, v, spec, normalize=normalize, g=g)  # noqa: E731
        t = {}
        with torch.no_grad():
            t["fwd"] = ms(lambda: op(bq, bk, bv, gate))
        t["fwd+bwd"] = ms(fwd_bwd(op, (bq, bk, bv, gate), do.to(DTYPE)))
        if fla is not None and spec == "x":
            with torch.no_grad():
                t["fla chunk_simple_gla fwd"] = ms(lambda: fla(bq, bk, bv, gate, D ** -0.5))
        print(f"{row} fast_attention(g=g) {str(DTYPE)[6:]} B{B} H{H} T{T}: "
              + ", ".join(f"{n} {x:.3f} ms" for n, x in t.items()), flush=True)
        out[row] = t
    return out


def state_check(rows):
    """A gated prefill that returns its final state (``fast_attention(..., g=g, output_final_state=True)``) on the
    flash route (o from the flash kernels, S and z from torch GEMMs over the keys) and, where CUDA serves it, on the
    gated chunk kernels: o, S, z of bf16 against the fp32 torch path (rel-RMS), and the forward's ms."""
    import fastattn.attention.functional as functional

    bad = 0
    for i, row in enumerate(rows):
        spec, B, H, T, D, DV, normalize = ROWS[row]
        q, k, v, g, _ = inputs(B, H, T, D, DV, i)
        ref, ref_st = fast_attention(q, k, v, spec, normalize=normalize, g=g, backend="torch", output_final_state=True)
        bq, bk, bv = (x.to(DTYPE) for x in (q, k, v))
        serves = functional.gated_flash_serves
        for route, rule in (("flash", lambda positive, is_cuda: True), ("chunk", lambda positive, is_cuda: False)):
            functional.gated_flash_serves = rule
            try:
                if route == "chunk" and not functional.gated_kernels_serve(polynomial(spec).feature_dim(D), True,
                                                                         polynomial(spec).positive):
                    continue  # CUDA sends it to the torch path
                call = lambda: fast_attention(bq, bk, bv, spec, normalize=normalize, g=g,  # noqa: E731
                                              output_final_state=True)
                with torch.no_grad():
                    o, st = call()
                    e = [errors(a, b.float())["rel_rms"] for a, b in ((ref, o), (ref_st.S, st.S), (ref_st.z, st.z))]
                    t = ms(call)
            finally:
                functional.gated_flash_serves = serves
            ok = all(x < TOL for x in e)
            bad += not ok
            print(f"{row} {route} route, prefill + final state, {str(DTYPE)[6:]} B{B} H{H} T{T}: o {e[0]:.1e} "
                  f"S {e[1]:.1e} z {e[2]:.1e}{'' if ok else ' FAIL'}; forward {t:.3f} ms", flush=True)
        torch.cuda.empty_cache()
    print(f"{bad} failing")
    return 1 if bad else 0


def compile_report(rows):
    """Compile the gated kernels for sm_90 on the CPU as the rows launch them; print REG / STACK (spills) / SMEM."""
    from fastattn.kernels.gated_aot import compile_kernels

    for row in rows:
        spec, B, H, T, D, DV, normalize = ROWS[row]
        F = polynomial(spec).feature_dim(D)
        for name, r in compile_kernels(F, DV + normalize, "bf16", T=T, heads=B * H).items():
            p = r["plan"]
            print(f"{row} F{F} DV{DV + normalize} bf16 BF{p.block_f} BV{p.block_v} warps {p.num_warps} "
                  f"{'hinted' if p.hinted else 'plain'} {name:13s} {r['resources']} SMEM:{r['smem']} grid {r['grid']}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--json", help="write the checks and timings here")
    ap.add_argument("--compile", action="store_true", help="sm_90 compile report on the CPU, no GPU")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--no-check", action="store_true", help="timings only (the checks ran in an earlier call)")
    ap.add_argument("--api", action="store_true", help="only time fast_attention(..., g=g) as a user calls it")
    ap.add_argument("--state", action="store_true", help="only check and time a prefill with its final state")
    a = ap.parse_args(argv)
    if a.compile:
        return compile_report(a.rows)
    if not torch.cuda.is_available():
        print("gated_check.py needs a CUDA GPU")
        return 2
    if a.state:
        return state_check([r for r in a.rows if not r.endswith("-flash")])
    if a.api:
        times = api_times([r for r in a.rows if not r.endswith("-flash")], fla_op())
        if a.json:
            with open(a.json, "w") as fh:
                json.dump({"device": torch.cuda.get_device_name(), "dtype": str(DTYPE)[6:], "api": times}, fh, indent=1)
        return 0
    fla = None if a.no_timing else fla_op()
    if fla is None and not a.no_timing:
        print("fla not installed")
    bad, result = 0, {"device": torch.cuda.get_device_name(), "dtype": str(DTYPE)[6:], "rows": {}}
    for i, row in enumerate(a.rows):
        result["rows"][row] = {}
        if a.no_check:
            continue
        out, n_bad = check(row, *ROWS[row], seed=i)
        bad += n_bad
        result["rows"][row]["check"] = out
        torch.cuda.empty_cache()
    print(f"{bad} failing", flush=True)
    if not a.no_timing:
        for i, row in enumerate(a.rows):
            result["rows"][row]["ms"] = timings(row, *ROWS[row], seed=i, fla=fla)
            print(f"{row}: " + json.dumps(result["rows"][row]["ms"]), flush=True)
            torch.cuda.empty_cache()
        print()
        print(f"{str(DTYPE)[6:]}, ms (median) | gated fwd | gated fwd+bwd | ungated fwd | ungated fwd+bwd | peer fwd | "
              "peer fwd+bwd | peer")
        for row in a.rows:
            t = result["rows"][row]["ms"]
            cols = " | ".join("-" if t[c] is None else f"{t[c]:.3f}" for c in
                              ("gated fwd", "gated fwd+bwd", "ungated fwd", "ungated fwd+bwd", "peer fwd", "peer fwd+bwd"))
            print(f"{row:12s} | {cols} | {t['peer'] or '-'}")
    result["failing"] = bad
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
