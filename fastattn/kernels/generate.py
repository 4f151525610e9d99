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
from fastattn.kernels.poly import check_feature_count, check_normalizer, polynomial

__all__ = ["write_module", "add_generate_arguments", "run_generate", "MAX_HEAD_DIM"]

#: Largest q/k or v head dim the generated kernels accept (``poly_attention`` refuses more).
MAX_HEAD_DIM = 256


def write_module(spec, path, head_dim_qk: int = 64, head_dim_v: int | None = None, causal: bool = True,
                 normalize: bool = True, degree: int | None = None, scale: float | None = None,
                 normalizer_fix: str | None = None, force: bool = False) -> Path:
    """Write the standalone module for ``spec`` to ``path`` and return the path.

    Parameters
    ----------
    spec : str, Spec, dict or Polynomial
        f (see :func:`fastattn.kernels.polynomial`).
    path : str or Path
        Output file (``.py``); parent directories are created. An existing file is refused
        unless ``force``.
    head_dim_qk, head_dim_v : int
        Head dims the module is documented for, at most :data:`MAX_HEAD_DIM` (its kernels
        accept any up to that); the feature count at ``head_dim_qk`` must be within
        :data:`fastattn.kernels.poly.MAX_FEATURES`.
    causal, normalize, scale, normalizer_fix
        Defaults of the module's ``PolyAttention``; a normaliser that f cannot make safe is
        refused here, as in the layer.
    degree : int, optional
        Truncation degree for a non-polynomial f.
    force : bool
        Overwrite ``path`` if it exists.

    Returns
    -------
    Path

    Raises
    ------
    KernelError
        A bad spec, head dim, scale or path (a directory, an existing file without ``force``,
        a name not ending in ``.py``), too many features, or a file that could not be written.
        Nothing is written then, and no temporary file is left behind.
    """
    poly = polynomial(spec, degree)
    # the rule the module will run: f >= 0 with real zeros (x**2) divides by |sum f| + eps
    normalizer_fix = check_normalizer(poly, normalize, normalizer_fix)
    head_dim_v = head_dim_qk if head_dim_v is None else head_dim_v
    for name, value in (("head_dim_qk", head_dim_qk), ("head_dim_v", head_dim_v)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KernelError(f"{name}={value!r} must be a positive int")
        if value > MAX_HEAD_DIM:
            raise KernelError(f"{name}={value} is above {MAX_HEAD_DIM}, the largest head dim the generated kernels "
                              f"accept; use a head dim of at most {MAX_HEAD_DIM}")
    check_feature_count(poly, head_dim_qk, head_dim_v)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise KernelError(f"scale={scale!r} must be a finite number or None")
    path = Path(path)
    if path.suffix != ".py":
        raise KernelError(f"output path {str(path)!r} must end in .py so that it can be imported")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise KernelError(f"output path {str(path)!r} lies under {str(ancestor)!r}, which is not a directory")
    if path.is_dir():
        raise KernelError(f"output path {str(path)!r} is a directory; give a file name such as {str(path / 'layer.py')!r}")
    if path.exists() and not force:
        raise KernelError(f"output path {str(path)!r} exists; pass force=True (--force) to overwrite it")
    defaults = {"causal": bool(causal), "normalize": bool(normalize),
                "scale": None if scale is None else float(scale), "normalizer_fix": normalizer_fix}
    src = render(poly, defaults=defaults, head_dims=(head_dim_qk, head_dim_v))
    try:
        _write_atomic(path, src)
    except OSError as exc:
        raise KernelError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
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
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")


def run_generate(args) -> int:
    """Write one standalone .py (Triton kernels + autograd Function + nn.Module) for a spec."""
    poly = polynomial(args.spec, args.degree)
    path = write_module(poly, args.output, head_dim_qk=args.head_dim, head_dim_v=args.head_dim_v,
                        causal=not args.non_causal, normalize=not args.no_normalize, scale=args.scale,
                        normalizer_fix=args.normalizer_fix, force=args.force)
    print(f"wrote {path}: f(x) = {poly.text}, {poly.feature_dim(args.head_dim)} features at head dim "
          f"{args.head_dim}; {poly.error_note}")
    return 0
