"""GPU correctness of the generated kernels: bf16/fp16 (and fp32) forward + backward against an fp32 reference.

For each configuration and T in {4096, 16384}: o, dq, dk, dv of the Triton kernels (random
upstream gradient) against the quadratic reference f(s QK^T) V computed in fp32 from the
same rounded inputs, in blocks of query rows so that T = 16K fits. Errors are judged like
the interpreter tests (``fastattn.kernels.checks``): max-abs and relative RMS, relative to
the larger of the result and the size of the summed terms (the same sums on |a_j|, |q|,
|k|, |v|, |do|). Prints a markdown table with the card's name (``--json`` also writes the rows);
exits 1 if a row fails.

    fastattn bench check            # the full table
    fastattn bench check --quick    # T = 1024 only, one dtype
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

__all__ = ["CONFIGS", "blocked_reference", "term_sizes", "run", "add_arguments", "run_check"]

# (spec, q/k head dim, v head dim, normalize): the acceptance layer, fla's Based
# shape, plain linear attention and a cubic
CONFIGS = [
    ("1 + x + x**2/2", 64, 64, True),
    ("1 + x + x**2/2", 16, 64, True),
    ("x", 64, 64, False),
    ("(1+x)**3", 16, 64, False),
]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def blocked_reference(q, k, v, do, poly, scale, causal, normalize, block=1024):
    """fp32 quadratic reference and its gradients, one block of query rows at a time.

    Rows are independent (the normaliser is per row), so o and the gradient of
    sum(o * do) are sums over row blocks; memory is one [block, T] score tile per head.

    >>> from fastattn.kernels.poly import polynomial
    >>> q = k = v = do = torch.ones(1, 1, 4, 2)
    >>> o, dq, dk, dv = blocked_reference(q, k, v, do, polynomial("x"), 1.0, True, True, block=2)
    >>> o.shape, bool(torch.allclose(o, torch.ones_like(o)))
    (torch.Size([1, 1, 4, 2]), True)
    """
    from fastattn.kernels import naive

    q, k, v = (x.detach().float().requires_grad_() for x in (q, k, v))
    T = q.shape[2]
    outs = []
    for s in range(0, T, block):
        e = min(T, s + block)
        a = naive.horner(scale * (q[:, :, s:e] @ k.transpose(-1, -2)), poly)  # [B, H, blk, T]
        if causal:
            keep = torch.arange(s, e, device=q.device)[:, None] >= torch.arange(T, device=q.device)[None, :]
            a = a.masked_fill(~keep, 0.0)
        o = a @ v
        if normalize:
            o = o / a.sum(-1, keepdim=True)
        (o * do[:, :, s:e].float()).sum().backward()
        outs.append(o.detach())
    return torch.cat(outs, dim=2), q.grad, k.grad, v.grad


def term_sizes(q, k, v, do, poly, scale, causal, normalize):
    """Sizes of the summed terms: the same sums on |a_j|, |q|, |k|, |v|, |do|, divided by the
    true denominator held fixed (so the normalised gradient's two paths are each covered)."""
    from fastattn.kernels.codegen import Polynomial

    absp = Polynomial.from_coefficients({j: abs(a) for j, a in poly.coeffs})
    den = torch.ones_like(q[..., :1], dtype=torch.float32)
    if normalize:
        ones = torch.ones_like(v[..., :1])
        den = blocked_reference(q, k, ones, torch.zeros_like(ones), poly, scale, causal, False)[0].abs()
    n, dq, dk, dv = blocked_reference(q.abs(), k.abs(), v.abs(), do.float().abs() / den, absp, scale, causal, False)
    return n / den, dq, dk, dv


def run(spec, D, DV, normalize, T, dtype, B, H, causal, seed=0):
    """[(tensor name, errors, ok)] for o, dq, dk, dv of one configuration on the GPU."""
    from fastattn.kernels.checks import TOLERANCES, errors
    from fastattn.kernels.poly import poly_attention, polynomial

    poly = polynomial(spec)
    scale = D**-0.5
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, H, T, D, device="cuda", generator=g).to(dtype)
    k = torch.randn(B, H, T, D, device="cuda", generator=g).to(dtype)
    v = torch.randn(B, H, T, DV, device="cuda", generator=g).to(dtype)
    do = torch.randn(B, H, T, DV, device="cuda", generator=g).to(dtype)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    o = poly_attention(q, k, v, poly, scale=scale, causal=causal, normalize=normalize, backend="triton")
    o.backward(do)
    ref = blocked_reference(q, k, v, do, poly, scale, causal, normalize)
    terms = term_sizes(q.detach(), k.detach(), v.detach(), do, poly, scale, causal, normalize)
    rows = []
    for name, got, want, t in zip(["o", "dq", "dk", "dv"], [o, q.grad, k.grad, v.grad], ref, terms):
        e = errors(want, got, t)
        rms_tol, max_tol = TOLERANCES[dtype]
        ok = e["nonfinite"] == 0 and e["rel_rms"] <= rms_tol and e["max_rel"] <= max_tol
        rows.append((name, e, ok))
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fastattn bench check``."""
    p.add_argument("--quick", action="store_true", help="T = 1024 and bf16 only")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--T", type=int, nargs="+", default=None, help="sequence lengths (default 4096 16384)")
    p.add_argument("--dtypes", nargs="+", default=None, choices=list(DTYPES))
    p.add_argument("--configs", type=int, nargs="+", default=None, choices=range(len(CONFIGS)),
                   help="indices into CONFIGS (default all: " + "; ".join(f"{i}: {c[0]} d{c[1]} v{c[2]}"
                                                                        for i, c in enumerate(CONFIGS)) + ")")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT.json", help="also write the rows here")


def run_check(args: argparse.Namespace) -> int:
    """Print the markdown table; 1 if a row fails. The caller has checked that a GPU is there."""
    import triton

    from fastattn.kernels.checks import TOLERANCES

    Ts = args.T or ([1024] if args.quick else [4096, 16384])
    dtypes = [DTYPES[d] for d in args.dtypes] if args.dtypes else (
        [torch.bfloat16] if args.quick else list(DTYPES.values()))
    configs = CONFIGS if args.configs is None else [CONFIGS[i] for i in args.configs]
    meta = dict(card=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                B=args.batch, H=args.heads, causal=True, reference="fp32 quadratic (blocked)")
    print(f"card: {meta['card']}, torch {meta['torch']}, triton {meta['triton']}, "
          f"B={args.batch}, H={args.heads}, causal, reference: fp32 quadratic (blocked)\n")
    print("| f | D | DV | norm | T | dtype | tensor | max-abs | max-rel | rel-RMS | tol (rms, max) | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    failed, out = 0, []
    for spec, D, DV, normalize in configs:
        for T in Ts:
            for dtype in dtypes:
                rows = run(spec, D, DV, normalize, T, dtype, args.batch, args.heads, causal=True)
                for name, e, ok in rows:
                    failed += not ok
                    tol = TOLERANCES[dtype]
                    out.append(dict(spec=spec, D=D, DV=DV, normalize=normalize, T=T, dtype=str(dtype)[6:],
                                    tensor=name, **{k: float(v) for k, v in e.items()}, tol=list(tol), ok=bool(ok)))
                    print(f"| {spec} | {D} | {DV} | {normalize} | {T} | {str(dtype)[6:]} | {name} | "
                          f"{e['max_abs']:.3g} | {e['max_rel']:.3g} | {e['rel_rms']:.3g} | {tol[0]:g}, {tol[1]:g} | "
                          f"{'yes' if ok else 'NO'} |", flush=True)
                if args.json_out:  # a run cut short keeps the rows it finished
                    Path(args.json_out).write_text(json.dumps(dict(meta=meta, rows=out), indent=1))
                torch.cuda.empty_cache()
    print(f"\n{failed} failing row(s)")
    return 1 if failed else 0
