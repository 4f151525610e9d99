"""Time one of ours over tilings and plan overrides, one GPU run (B = 2, H = 16, bf16, causal).

Each config is a JSON object {"tuning": {key: value}, "kw": {poly_attention tiling kwargs}}; the tuning keys
are the generated module's TUNING (fastattn/kernels/TUNING.md), passed as its poly_attention's tuning=.
Every config is first checked against the first one on the same inputs (T = 2048: output
and gradients, relative RMS < 2e-2); a config that fails or errors is not timed, unless it says
{"probe": true} (a timing probe that is wrong on purpose: its error is printed, then it is timed). With
``--reference`` the default config is first checked against the fp32 quadratic reference
(``check_gpu.run``, bf16, T = 4096) and the run stops if it fails; ``--regs`` prints the
registers and spills of every kernel compiled for the row.

    python benchmarks/sweep.py --row "1 + x + x**2/2:64:64:1" --T 32768 \\
        --configs '[{"kw": {"block_f": 256}}, {"tuning": {"seg_rows": 1}, "kw": {"block_f": 128}}]'
"""
import argparse
import json
import os
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_gpu  # noqa: E402
from cases import parse_case  # noqa: E402
from fastattn.bench.timing import capture  # noqa: E402
from fastattn.kernels.codegen import load_module  # noqa: E402
from fastattn.kernels.poly import check_normalizer, polynomial  # noqa: E402


def kernel_stats(mod):
    """(kernel, last constexprs, registers, spills, shared bytes, warps) of every kernel the module has compiled."""
    out = []
    for name in sorted(n for n in dir(mod) if n.endswith("_kernel")):
        for cache in getattr(getattr(mod, name), "device_caches", {}).values():
            for key, k in cache[0].items():
                md = getattr(k, "metadata", None)
                out.append((name, str(key)[-160:], getattr(k, "n_regs", "?"), getattr(k, "n_spills", "?"),
                            getattr(md, "shared", "?"), getattr(md, "num_warps", "?")))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--row", required=True, help="spec:D:DV:normalize")
    ap.add_argument("--T", type=int, nargs="+", default=[8192])
    ap.add_argument("--configs", required=True)
    ap.add_argument("--rep", type=int, default=30)
    ap.add_argument("--reference", action="store_true", help="check the default config against the fp32 reference")
    ap.add_argument("--regs", action="store_true", help="print registers and spills of the compiled kernels")
    ap.add_argument("--graphs", action="store_true",
                    help="also time fwd+bwd replayed from a CUDA graph (device time, no host launch path)")
    a = ap.parse_args()
    spec, D, DV, norm = parse_case(a.row, with_T=False)
    poly = polynomial(spec)  # parsed once: a spec string would be parsed on every timed call
    configs = json.loads(a.configs)
    if a.reference:
        rows = check_gpu.run(spec, D, DV, norm, 4096, torch.bfloat16, 1, 2, causal=True)
        print("reference check:", [(n, f"{e['rel_rms']:.2e}", ok) for n, e, ok in rows], flush=True)
        if not all(ok for *_, ok in rows):
            return 1
    if any("env" in cfg for cfg in configs):
        print("configs take {\"tuning\": {...}} now (fastattn/kernels/TUNING.md), not environment knobs")
        return 2
    mod = load_module(poly)
    fix = check_normalizer(poly, norm, None)
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda *s: torch.randn(*s, device="cuda", generator=g).bfloat16()  # noqa: E731

    def call(q, k, v, cfg):
        # the module's own poly_attention: it takes the private tuning= overrides
        return mod.poly_attention(q, k, v, causal=True, normalize=norm, normalizer_fix=fix,
                                  tuning=cfg.get("tuning"), **cfg.get("kw", {}))

    q, k, v, do = mk(1, 2, 2048, D), mk(1, 2, 2048, D), mk(1, 2, 2048, DV), mk(1, 2, 2048, DV)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    ref, good = None, []
    for cfg in configs:
        try:
            for x in (q, k, v):
                x.grad = None
            o = call(q, k, v, cfg)
            o.backward(do)
            got = [o.float(), q.grad.float(), k.grad.float(), v.grad.float()]
            if ref is None:
                ref = got
            rel = max(((x - y).norm() / y.norm()).item() for x, y in zip(got, ref))
            print(f"check {cfg}: rel-RMS vs first {rel:.2e}", flush=True)
            if rel < 2e-2 or cfg.get("probe"):
                # {"probe": true}: a timing probe that is wrong on purpose (e.g. adds switched off)
                good.append(cfg)
        except Exception as exc:  # noqa: BLE001
            print(f"check {cfg}: error {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    extra = (" fwd+bwd graph ms |", "---|") if a.graphs else ("", "")
    print(f"\n{spec} D{D} DV{DV} norm={norm}\n| T | config | fwd ms | fwd+bwd ms |{extra[0]}\n|---|---|---|---|{extra[1]}")
    for T in a.T:
        q, k, v, do = mk(2, 16, T, D), mk(2, 16, T, D), mk(2, 16, T, DV), mk(2, 16, T, DV)
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        for cfg in good:
            try:
                with torch.no_grad():
                    f = do_bench(lambda: call(q, k, v, cfg), warmup=5, rep=a.rep, return_mode="median")
                fb = do_bench(lambda: call(q, k, v, cfg).backward(do), warmup=5, rep=a.rep, grad_to_none=(q, k, v),
                              return_mode="median")
                col = ""  # (not g: that is the inputs' generator)
                if a.graphs:
                    graph, *_ = capture(lambda q, k, v: call(q, k, v, cfg), (q, k, v), do)
                    col = f" {do_bench(graph.replay, warmup=5, rep=a.rep, return_mode='median'):.3f} |"
                    del graph
                print(f"| {T} | {json.dumps(cfg)} | {f:.3f} | {fb:.3f} |{col}", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"| {T} | {json.dumps(cfg)} | error {type(exc).__name__}: {str(exc)[:100]} |", flush=True)
    if a.regs:
        for row in kernel_stats(mod):
            print("regs", *row, flush=True)


if __name__ == "__main__":
    sys.exit(main())
