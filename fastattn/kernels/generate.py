"""``fastattn generate``: write one standalone module (Triton kernels + autograd + nn.Module) for a spec.

The written file imports only torch and triton (and the standard library); its docstring
states f, where it came from, the feature dimension and the error bound of the feature map.

>>> import tempfile, pathlib
>>> path = write_module("1 + x + x**2/2", pathlib.Path(tempfile.mkdtemp()) / "based.py", head_dim_qk=16)
>>> "1 + x + x**2/2" in path.read_text()
True
"""

from __future__ import annotations

import math
from pathlib import Path

from fastattn.errors import KernelError
from fastattn.kernels.codegen import _write_atomic, render
from fastattn.kernels.poly import check_normalizer, polynomial

__all__ = ["write_module", "add_generate_arguments", "run_generate"]


def write_module(spec, path, head_dim_qk: int = 64, head_dim_v: int | None = None, causal: bool = True,
                 normalize: bool = True, degree: int | None = None, scale: float | None = None,
                 normalizer_fix: str | None = None) -> Path:
    """Write the standalone module for ``spec`` to ``path`` and return the path.

    Parameters
    ----------
    spec : str, Spec, dict or Polynomial
        f (see :func:`fastattn.kernels.polynomial`).
    path : str or Path
        Output file (``.py``); parent directories are created.
    head_dim_qk, head_dim_v : int
        Head dims the module is documented for (its kernels accept any up to 256).
    causal, normalize, scale, normalizer_fix
        Defaults of the module's ``PolyAttention``; a normaliser that f cannot make safe is
        refused here, as in the layer.
    degree : int, optional
        Truncation degree for a non-polynomial f.

    Returns
    -------
    Path
    """
    poly = polynomial(spec, degree)
    check_normalizer(poly, normalize, normalizer_fix)
    if not isinstance(head_dim_qk, int) or head_dim_qk < 1:
        raise KernelError(f"head_dim_qk={head_dim_qk!r} must be a positive int")
    head_dim_v = head_dim_qk if head_dim_v is None else head_dim_v
    if not isinstance(head_dim_v, int) or head_dim_v < 1:
        raise KernelError(f"head_dim_v={head_dim_v!r} must be a positive int")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise KernelError(f"scale={scale!r} must be a finite number or None")
    path = Path(path)
    if path.suffix != ".py":
        raise KernelError(f"output path {str(path)!r} must end in .py so that it can be imported")
    defaults = {"causal": bool(causal), "normalize": bool(normalize),
                "scale": None if scale is None else float(scale), "normalizer_fix": normalizer_fix}
    _write_atomic(path, render(poly, defaults=defaults, head_dims=(head_dim_qk, head_dim_v)))
    return path


def add_generate_arguments(p):
    """Add the arguments of ``fastattn generate`` to an argparse parser."""
    p.add_argument("spec", help='f as text, e.g. "1 + x + x**2/2" or "exp(x)" with --degree')
    p.add_argument("-o", "--output", required=True, help="output .py path")
    p.add_argument("--degree", type=int, default=None, help="Taylor truncation degree for a non-polynomial f")
    p.add_argument("--head-dim", type=int, default=64, help="q/k head dim to document (default 64)")
    p.add_argument("--head-dim-v", type=int, default=None, help="v head dim to document (default: --head-dim)")
    p.add_argument("--non-causal", action="store_true", help="default to non-causal attention")
    p.add_argument("--no-normalize", action="store_true", help="default to no normaliser")
    p.add_argument("--normalizer-fix", choices=["abs"], default=None,
                   help="divide by |sum_j f| + eps (needed to normalise an f that can be <= 0)")
    p.add_argument("--scale", type=float, default=None, help="s in f(s q.k) (default 1/sqrt(head dim))")


def run_generate(args) -> int:
    """Write one standalone .py (Triton kernels + autograd Function + nn.Module) for a spec."""
    path = write_module(args.spec, args.output, head_dim_qk=args.head_dim, head_dim_v=args.head_dim_v,
                        causal=not args.non_causal, normalize=not args.no_normalize, degree=args.degree,
                        scale=args.scale, normalizer_fix=args.normalizer_fix)
    poly = polynomial(args.spec, args.degree)
    print(f"wrote {path}: f(x) = {poly.text}, {poly.feature_dim(args.head_dim)} features at head dim "
          f"{args.head_dim}; {poly.error_note}")
    return 0
