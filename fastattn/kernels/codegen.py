"""Generate the Triton module of a polynomial linear attention from the coefficients of f.

The shared kernels live in ``_template.py`` (a valid module for f(x) = x). Code generation
replaces two marked blocks of it: the header (docstring, coefficients, positivity) and the
device functions that depend on f: ``_f`` and ``_df`` (Horner on the score tile, literal
coefficients), ``_phi`` (the symmetric-basis features of a row tile, one gathered factor
per degree slot) and ``_phi_vjp`` (their transposed Jacobian). The source is written to a
cache directory under a hash of its own text and imported from there, so a reader can open
the exact file that runs.

>>> from fastattn.kernels.codegen import Polynomial, render
>>> src = render(Polynomial.from_coefficients({0: 1, 1: 1, 2: 0.5}))
>>> "y = y * x + 1.0" in src
True
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Mapping

from fastattn.errors import KernelError

__all__ = ["Polynomial", "render", "load_module", "cache_dir", "TEMPLATE_PATH"]

TEMPLATE_PATH = Path(__file__).with_name("_template.py")
_MODULES: dict = {}
_BY_POLY: dict = {}


def _fmt_coef(a) -> str:
    """Exact text of a coefficient where it is rational (sympy Rational, Fraction, int), else repr(float)."""
    if isinstance(a, float):
        fr = Fraction(a).limit_denominator(10**6)
        if float(fr) != a:
            return repr(a)
    else:
        try:
            fr = Fraction(str(a))
        except (ValueError, ZeroDivisionError):
            return repr(float(a))
    return str(fr.numerator) if fr.denominator == 1 else f"{fr.numerator}/{fr.denominator}"


def _formula(coeffs: Mapping[int, object]) -> str:
    terms = []
    for j in sorted(coeffs):
        c = _fmt_coef(coeffs[j])
        mono = "" if j == 0 else ("x" if j == 1 else f"x**{j}")
        if not mono:
            terms.append(c)
        elif c == "1":
            terms.append(mono)
        elif c == "-1":
            terms.append(f"-{mono}")
        elif "/" in c:
            num, den = c.split("/")
            terms.append(f"{mono}/{den}" if num == "1" else f"{num}*{mono}/{den}")
        else:
            terms.append(f"{c}*{mono}")
    return " + ".join(terms).replace("+ -", "- ") or "0"


def _positivity(coeffs: Mapping[int, float]) -> tuple[bool, str]:
    """Decide f > 0 on all of R for a float polynomial (numerically; used when no Spec is given)."""
    import numpy as np

    p = max(coeffs)
    if p == 0:
        a0 = coeffs.get(0, 0.0)
        return (a0 > 0, f"f is the constant {a0}")
    if p % 2 == 1:
        return (False, f"f has odd degree {p}, so it takes every real value")
    if coeffs[p] < 0:
        return (False, f"the leading coefficient {coeffs[p]} of x**{p} is negative")
    poly = np.polynomial.Polynomial([coeffs.get(j, 0.0) for j in range(p + 1)])
    crit = [r.real for r in poly.deriv().roots() if abs(r.imag) < 1e-9]
    lo = min((poly(r), r) for r in crit)
    if lo[0] <= 0:
        return (False, f"f({lo[1]:.6g}) = {lo[0]:.6g} <= 0")
    return (True, f"the minimum of f on R is {lo[0]:.6g} > 0 (at x = {lo[1]:.6g})")


@dataclass(frozen=True)
class Polynomial:
    """What the generated kernels need to know about f: its coefficients and how to describe it.

    Parameters
    ----------
    coeffs : tuple of (j, a_j)
        Non-zero coefficients of f(x) = sum_j a_j x^j, by increasing j, as exact text and float.
    text : str
        The formula as shown in the generated source.
    positive : bool or None
        Whether f > 0 on all of R (None: unknown, treated as no).
    positivity_reason : str
        Why, in words (shown in the refusal of an unsafe normaliser).
    origin : str
        Where f came from, e.g. ``"exp(x) truncated at degree 4"``.
    error_note : str
        The truncation error bound, in words ("exact" for a polynomial spec).

    Examples
    --------
    >>> Polynomial.from_coefficients({0: 1, 1: 1, 2: "1/2"}).text
    '1 + x + x**2/2'
    """

    coeffs: tuple
    text: str
    positive: bool | None
    positivity_reason: str
    origin: str = ""
    error_note: str = "exact: f is a polynomial"
    exact: tuple = field(default=(), compare=False)

    @classmethod
    def from_coefficients(cls, coeffs: Mapping[int, object], *, positive=None, positivity_reason=None,
                          origin: str = "", error_note: str = "exact: f is a polynomial") -> "Polynomial":
        """Build from ``{j: a_j}`` (ints, floats, Fractions, sympy Rationals or strings like "1/2")."""
        clean = {}
        for j, a in dict(coeffs).items():
            if not isinstance(j, int) or j < 0:
                raise KernelError(f"coefficient index {j!r} must be an int >= 0")
            try:
                val = float(Fraction(a)) if isinstance(a, str) else float(a)
            except (TypeError, ValueError) as exc:
                raise KernelError(f"coefficient a_{j} = {a!r} is not a real number") from exc
            if not math.isfinite(val):
                raise KernelError(f"coefficient a_{j} = {a!r} is not finite")
            if val != 0.0:
                clean[j] = (a, val)
        if not clean:
            raise KernelError("f is identically zero; attention with f = 0 has no output to compute")
        if max(clean) > 8:
            raise KernelError(f"degree {max(clean)} > 8: the feature dimension C(d+p-1, p) is too large to "
                              "be useful; truncate at a lower degree")
        floats = {j: v for j, (_, v) in clean.items()}
        if positive is None:
            positive, why = _positivity(floats)
            positivity_reason = positivity_reason or why
        return cls(coeffs=tuple(sorted(floats.items())), text=_formula({j: a for j, (a, _) in clean.items()}),
                   positive=positive, positivity_reason=positivity_reason or "", origin=origin,
                   error_note=error_note, exact=tuple(sorted((j, _fmt_coef(a)) for j, (a, _) in clean.items())))

    @property
    def degree(self) -> int:
        return max(j for j, _ in self.coeffs)

    def as_dict(self) -> dict:
        return dict(self.coeffs)

    def feature_dim(self, dim: int) -> int:
        """Size of the symmetric-tensor basis on head dim ``dim``: sum_j C(dim + j - 1, j)."""
        return sum(math.comb(dim + j - 1, j) for j, _ in self.coeffs)


# ---------------------------------------------------------------------------- generation
def _horner(name: str, coeffs: dict, what: str) -> list[str]:
    lines = ["@triton.jit", f"def {name}(x):", f"    # {what} by Horner on the tile"]
    if not coeffs:
        return lines + ["    return x * 0.0"]
    p = max(coeffs)
    lines.append(f"    y = x * 0.0 + {coeffs[p]!r}")
    for j in range(p - 1, -1, -1):
        lines.append(f"    y = y * x + {coeffs[j]!r}" if coeffs.get(j, 0.0) != 0.0 else "    y = y * x")
    return lines + ["    return y"]


def _gathers(slots: int) -> list[str]:
    out = []
    for m in range(slots):
        out += [
            f"    i_{m} = tl.load(p_idx + {m} * F_PAD + o_f)  # [BF]",
            f"    b_x{m} = tl.dot(b_x, (o_d[:, None] == i_{m}[None, :]).to(DT), "
            f"input_precision=PRECISION)  # [BT, BF]",
            f"    b_x{m} += (i_{m} < 0).to(tl.float32)[None, :]",
        ]
    return out


def _device_functions(poly: Polynomial) -> str:
    c = poly.as_dict()
    dc = {j - 1: j * a for j, a in c.items() if j > 0}
    slots = max(1, poly.degree)
    lines = _horner("_f", c, f"f(x) = {poly.text}")
    lines += ["", ""]
    lines += _horner("_df", dc, f"f'(x) = {_formula(dc) if dc else '0'}")
    lines += ["", "", "@triton.jit",
              "def _phi(b_x, m_t, p_idx, o_f, F_PAD, b_w, BD: tl.constexpr, PRECISION: tl.constexpr):",
              "    # feature f of row t is b_w[f] * prod_m x[t, idx[m, f]] (symmetric basis, one slot per",
              "    # factor); idx -1 means \"no factor\" and gives 1. The gather x[:, idx] is a matmul with",
              "    # a one-hot [BD, BF] matrix: exact, on tensor cores, from the coalesced [BT, BD] tile.",
              "    DT = b_x.dtype",
              "    o_d = tl.arange(0, BD)"]
    lines += _gathers(slots)
    prod = " * ".join(f"b_x{m}" for m in range(slots))
    lines += [f"    b_phi = {prod} * b_w[None, :]  # [BT, BF]",
              "    # padded rows must not leak into the running sums of psi (the normaliser state)",
              "    return tl.where(m_t[:, None], b_phi, 0.0)", "", "",
              "@triton.jit",
              "def _phi_vjp(b_x, p_idx, o_f, F_PAD, b_w, b_dphi, BD: tl.constexpr, PRECISION: tl.constexpr):",
              "    # d/dx[a] prod_m x[idx_m] = sum_m [idx_m == a] prod_{m' != m} x[idx_m']: the scatter onto",
              "    # the head dim is a matmul with the transposed one-hot matrix (no atomics)",
              "    DT = b_x.dtype",
              "    o_d = tl.arange(0, BD)",
              "    b_g = b_dphi * b_w[None, :]  # [BT, BF]"]
    lines += _gathers(slots)
    # the one-hot is built [BD, BF] as in the gathers and transposed, and the partial scatters
    # accumulate inside the dot: triton 3.6 on sm_90 miscompiled the form that built it [BF, BD]
    # and added the dots' results (out-of-bounds shared-memory reads, compute-sanitizer)
    lines.append("    b_dx = tl.zeros([b_x.shape[0], BD], dtype=tl.float32)")
    for m in range(slots):
        others = "".join(f" * b_x{n}" for n in range(slots) if n != m)
        lines.append(f"    b_dx = tl.dot((b_g{others}).to(DT), tl.trans((o_d[:, None] == i_{m}[None, :]).to(DT)), b_dx, "
                     f"input_precision=PRECISION)  # [BT, BD]")
    lines.append("    return b_dx")
    lines += ["", "", "@triton.jit",
              "def _phi_ld(p_x, o_t, m_t, D, p_idx, o_f, F_PAD, b_w):",
              "    # _phi gathered straight from memory: x[t, idx[m, f]] loaded per feature (the chunk's",
              "    # [BT, D] rows are in L1 after the coalesced tile load), no one-hot matmuls or registers"]
    for m in range(slots):
        lines += [f"    i_{m} = tl.load(p_idx + {m} * F_PAD + o_f)  # [BF]",
                  f"    b_x{m} = tl.load(p_x + o_t[:, None] * D + i_{m}[None, :], mask=m_t[:, None] & (i_{m} >= 0)[None, :], "
                  f"other=1.0).to(tl.float32)  # [BT, BF]"]
    lines += [f"    b_phi = {prod} * b_w[None, :]  # [BT, BF]",
              "    return tl.where(m_t[:, None], b_phi, 0.0)"]
    return "\n".join(lines) + "\n"


def _header(poly: Polynomial, defaults: dict | None = None, head_dims: tuple | None = None) -> str:
    terms = ", ".join(f"a_{j} = {a}" for j, a in poly.exact)
    origin = f"\nOrigin: {poly.origin}." if poly.origin else ""
    dims = sorted({16, 32, 64, 128} | ({head_dims[0]} if head_dims else set()))
    fdims = ", ".join(f"{d}: {poly.feature_dim(d)}" for d in dims)
    if defaults is None:
        defaults = {"causal": True, "normalize": bool(poly.positive), "scale": None, "normalizer_fix": None}
    layer = ""
    if head_dims:
        layer = (f"\nGenerated for q/k head dim {head_dims[0]} ({poly.feature_dim(head_dims[0])} features) and v "
                 f"head dim {head_dims[1]}; the kernels accept any head dims up to 256.")
    doc = f'''"""Polynomial linear attention for f(x) = {poly.text}  (generated by fastattn; edit freely).

    o_i = sum_{{j in M(i)}} f(s q_i.k_j) v_j   [ / sum_{{j in M(i)}} f(s q_i.k_j) when normalised ]

with M(i) = {{j <= i}} (causal) or all j, and s the scale (default 1/sqrt(head dim)).
Coefficients: {terms}.{origin}
Error of the feature map against f: {poly.error_note}.
Feature dimension (symmetric-tensor basis, sum_j C(d + j - 1, j)) by head dim d: {fdims}.
Normaliser: {"safe, f > 0 on R" if poly.positive else "refused unless normalizer_fix='abs'"} ({poly.positivity_reason}).{layer}
Defaults of PolyAttention: {", ".join(f"{k}={v!r}" for k, v in defaults.items())}.

Kernels (read top-down): inside a chunk of BT tokens f is evaluated on the [BT, BT] score
tile by Horner; across chunks the state S = sum_j psi(k_j) v_j^T is carried in the
symmetric basis phi(q).psi(k) = f(s q.k), built on-chip from index tables, tiled over
features, and never written to memory. Needs only torch and triton.

Example (on a GPU, or on the CPU with TRITON_INTERPRET=1):

    q = k = torch.randn(2, 4, 1000, 16, device="cuda"); v = torch.randn(2, 4, 1000, 64, device="cuda")
    o = PolyAttention()(q, k, v)   # [2, 4, 1000, 64]
"""'''
    return "\n".join([
        doc,
        f"COEFFS = {{{', '.join(f'{j}: {a!r}' for j, a in poly.coeffs)}}}",
        f"COEFFS_TEXT = {poly.text!r}",
        f"POSITIVE_ON_REALS = {bool(poly.positive)}",
        f"POSITIVITY_REASON = {poly.positivity_reason!r}",
        f"DEFAULTS = {defaults!r}",
    ]) + "\n"


def _replace_block(src: str, name: str, body: str) -> str:
    pat = re.compile(rf"^# >>> {name}\n.*?^# <<< {name}\n", re.S | re.M)
    if not pat.search(src):
        raise KernelError(f"template {TEMPLATE_PATH} has no block '{name}'")
    return pat.sub(lambda _: body, src, count=1)


def render(poly: Polynomial, defaults: dict | None = None, head_dims: tuple | None = None) -> str:
    """Return the full source of the generated module for ``poly``.

    ``defaults`` (causal, normalize, scale, normalizer_fix) become the defaults of the
    module's ``PolyAttention``; ``head_dims`` = (D, DV) are documented in its docstring.
    """
    src = TEMPLATE_PATH.read_text()
    src = _replace_block(src, "header", _header(poly, defaults, head_dims))
    src = _replace_block(src, "device_functions", _device_functions(poly))
    return src


def cache_dir() -> Path:
    """``$FASTATTN_CACHE`` if set, else ``~/.cache/fastattn``."""
    return Path(os.environ.get("FASTATTN_CACHE") or Path.home() / ".cache" / "fastattn")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def import_path(path: Path, name: str):
    """Import the file ``path`` as module ``name`` (registered in sys.modules, so Triton can find its source)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _check_interpreter_ready() -> None:
    # triton.language's own jit helpers (tl.sum, tl.max, ...) pick interpreter or compiler
    # when triton is first imported; set afterwards, TRITON_INTERPRET=1 fails deep inside a
    # kernel with "Cannot call @triton.jit'd outside of the scope of a kernel"
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl.standard.sum, InterpretedFunction):
        raise KernelError("TRITON_INTERPRET=1 was set after triton was imported (something imported it first, "
                          "e.g. torch.use_deterministic_algorithms); set it in the environment before the "
                          "process starts: TRITON_INTERPRET=1 python ...")


def load_module(poly: Polynomial):
    """Generate (or find in the cache) and import the module for ``poly``.

    The file name is the hash of the source, so a cached file is always the one that this
    version of fastattn would write. Modules are memoised per process and per interpreter
    mode, since ``triton.jit`` picks the interpreter when a module is imported.
    """
    mode = os.environ.get("TRITON_INTERPRET", "0")
    if mode not in ("", "0"):
        _check_interpreter_ready()
    # rendering and hashing take ~0.3 ms, more than a whole forward at 2K tokens on an H100:
    # memoise by the polynomial's identity (render depends on nothing else)
    fast = (tuple(poly.coeffs), poly.text, bool(poly.positive), poly.positivity_reason, mode)
    if fast in _BY_POLY:
        return _BY_POLY[fast]
    src = render(poly)
    digest = hashlib.sha256(src.encode()).hexdigest()[:16]
    key = (digest, mode)
    if key in _MODULES:
        _BY_POLY[fast] = _MODULES[key]
        return _MODULES[key]
    path = cache_dir() / f"poly_{digest}.py"
    if not path.exists() or path.read_text() != src:
        _write_atomic(path, src)
    mod = import_path(path, f"fastattn_generated_poly_{digest}_{key[1]}")
    _MODULES[key] = mod
    _BY_POLY[fast] = mod
    return mod
