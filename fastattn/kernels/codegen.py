"""Generate the Triton module of a polynomial linear attention from the coefficients of f.

The shared kernels live in the part files of ``parts/`` (``00_header.py`` to ``80_api.py``, one
idea each, read in name order); :func:`template_text` joins them, without each part's own
docstring, into the template: one module, valid as is for f(x) = x. Code generation replaces two
marked blocks of it: the header (docstring, coefficients, positivity) and the
device functions that depend on f: ``_f`` and ``_df`` (Horner on the score tile, literal
coefficients), ``_phi`` (the symmetric-basis features of a row tile, one gathered factor
per degree slot) and ``_phi_vjp`` (their transposed Jacobian). The source is written to a
cache directory under a hash of its own text, so a reader can open the exact file that
runs, and executed from memory (see :func:`load_module`).

No text of a spec ever becomes code. The numbers in the generated source are ``repr`` of
checked finite floats and ints; every piece of free text (the formula, origin, error note,
positivity reason, defaults) goes through one sanitiser, :func:`_inert`, which keeps
printable ASCII except ``"`` and ``\\`` and shows any other character as ``?``. Inside the
triple-quoted docstring such text can neither close the string nor start an escape, in a
``#`` comment it cannot start a new line, and in an assignment it is written as ``repr()``
of the sanitised text. (Keeping a character set, rather than escaping, also keeps the
docstring readable and free of bidirectional-text tricks.)

>>> from fastattn.kernels.codegen import Polynomial, render
>>> src = render(Polynomial.from_coefficients({0: 1, 1: 1, 2: 0.5}))
>>> "y = y * x + 1.0" in src
True
"""

from __future__ import annotations

import ast
import hashlib
import linecache
import math
import os
import re
import stat
import sys
import tempfile
import types
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Mapping

from fastattn.errors import KernelError

__all__ = ["Polynomial", "render", "load_module", "cache_dir", "exec_source", "PARTS_DIR", "template_text"]

#: The template's part files, joined in name order by :func:`template_text`.
PARTS_DIR = Path(__file__).with_name("parts")
_MODULES: dict = {}
_BY_POLY: dict = {}
#: Longest free text (origin, reason, ...) copied into a generated docstring, in characters.
MAX_TEXT = 300
_SAFE_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}


def _inert(text, limit: int = MAX_TEXT) -> str:
    """``text`` made safe to place anywhere in generated source: inside the docstring, a comment or a repr.

    Printable ASCII except ``"`` and backslash is kept; every other character (quotes,
    backslashes, newlines, NUL, non-ASCII, bidirectional controls) becomes ``?``. Text past
    ``limit`` characters is cut and marked with ``...``. The result is a plain ``str``
    built here, so a ``str`` subclass cannot smuggle in its own ``__repr__``.

    >>> _inert("x # " + 3 * chr(34) + " + open(" + chr(34) + "m" + chr(34) + ")" + chr(0x202E))
    'x # ??? + open(?m?)?'
    """
    text = "".join(ch if ch in _SAFE_CHARS else "?" for ch in str(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _literal(value) -> str:
    """Source text of a default value: None, a bool, an int, a finite float or (sanitised) text."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float) and math.isfinite(value):
        return repr(float(value))
    if isinstance(value, str):
        return repr(_inert(value))
    raise KernelError(f"default value {_inert(repr(value))} of type {type(value).__name__} cannot be written "
                      "into a generated module; use None, a bool, a number or a string")


def _checked_coeffs(poly: "Polynomial") -> dict:
    """``{j: a_j}`` as plain ints and finite floats, or KernelError (a hand-built Polynomial is not trusted)."""
    out = {}
    for item in poly.coeffs:
        j, a = item
        if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j <= 8:
            raise KernelError(f"coefficient index {_inert(repr(j))} must be an int in 0..8")
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
            raise KernelError(f"coefficient a_{j} = {_inert(repr(a))} must be a finite float")
        out[int(j)] = float(a)
    if not out:
        raise KernelError("f has no coefficients; build the Polynomial with Polynomial.from_coefficients")
    return out


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
    lines = ["@triton.jit", f"def {name}(x):", f"    # {_inert(what)} by Horner on the tile"]
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
    c = _checked_coeffs(poly)
    dc = {j - 1: j * a for j, a in c.items() if j > 0}
    slots = max(1, max(c))
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
    return "\n".join(lines) + "\n"


def _header(poly: Polynomial, defaults: dict | None = None, head_dims: tuple | None = None) -> str:
    coeffs = _checked_coeffs(poly)
    # free text reaches the source only through _inert (see the module docstring)
    text = _inert(poly.text)
    terms = _inert(", ".join(f"a_{j} = {a}" for j, a in poly.exact) or
                   ", ".join(f"a_{j} = {a!r}" for j, a in coeffs.items()))
    origin = f"\nOrigin: {_inert(poly.origin)}." if poly.origin else ""
    if head_dims is not None:
        if len(head_dims) != 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in head_dims):
            raise KernelError(f"head_dims={_inert(repr(head_dims))} must be two positive ints (D, DV)")
        head_dims = (int(head_dims[0]), int(head_dims[1]))
    dims = sorted({16, 32, 64, 128} | ({head_dims[0]} if head_dims else set()))
    fdims = ", ".join(f"{d}: {poly.feature_dim(d)}" for d in dims)
    if defaults is None:
        defaults = {"causal": True, "normalize": bool(poly.positive), "scale": None, "normalizer_fix": None}
    for key in defaults:
        if not (isinstance(key, str) and key.isidentifier() and key == _inert(key)):
            raise KernelError(f"default name {_inert(repr(key))} must be an ASCII identifier")
    defaults_src = "{" + ", ".join(f"{_inert(k)!r}: {_literal(v)}" for k, v in defaults.items()) + "}"
    layer = ""
    if head_dims:
        layer = (f"\nGenerated for q/k head dim {head_dims[0]} ({poly.feature_dim(head_dims[0])} features) and v "
                 f"head dim {head_dims[1]}; the kernels accept any head dims up to 256.")
    doc = f'''"""Polynomial linear attention for f(x) = {text}  (generated by fastattn; edit freely).

    o_i = sum_{{j in M(i)}} f(s q_i.k_j) v_j   [ / sum_{{j in M(i)}} f(s q_i.k_j) when normalised ]

with M(i) = {{j <= i}} (causal) or all j, and s the scale (default 1/sqrt(head dim)).
Coefficients: {terms}.{origin}
Error of the feature map against f: {_inert(poly.error_note)}.
Feature dimension (symmetric-tensor basis, sum_j C(d + j - 1, j)) by head dim d: {fdims}.
Normaliser: {"safe, f > 0 on R" if poly.positive else "refused unless normalizer_fix='abs'"} ({_inert(poly.positivity_reason)}).{layer}
Defaults of PolyAttention: {_inert(", ".join(f"{k}={_literal(v)}" for k, v in defaults.items()))}.

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
        f"COEFFS = {{{', '.join(f'{j}: {a!r}' for j, a in coeffs.items())}}}",
        f"COEFFS_TEXT = {text!r}",
        f"POSITIVE_ON_REALS = {bool(poly.positive)}",
        f"POSITIVITY_REASON = {_inert(poly.positivity_reason)!r}",
        f"DEFAULTS = {defaults_src}",
    ]) + "\n"


_HEADER_NAMES = ("COEFFS", "COEFFS_TEXT", "POSITIVE_ON_REALS", "POSITIVITY_REASON", "DEFAULTS")


def _check_generated(header: str, functions: str) -> None:
    """Refuse generated blocks that are anything but a docstring, literal assignments and jit functions.

    A second line of defence behind :func:`_inert`: if some text ever slipped through, the
    module would not parse into this shape and nothing would be written or run.
    """
    try:
        head, funcs = ast.parse(header).body, ast.parse(functions).body
    except SyntaxError as exc:
        raise KernelError(f"generated source does not parse ({_inert(exc.msg)}); this is a bug in fastattn") from exc
    names = []
    for node in head[1:]:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise KernelError(f"generated header has a statement {_inert(ast.dump(node)[:80])}; this is a bug")
        try:
            ast.literal_eval(node.value)
        except ValueError as exc:
            raise KernelError(f"generated {node.targets[0].id} is not a literal; this is a bug") from exc
        names.append(node.targets[0].id)
    docstring = head[0] if head else None
    if not (isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
            and isinstance(docstring.value.value, str)) or tuple(names) != _HEADER_NAMES:
        raise KernelError(f"generated header defines {names} instead of a docstring and {_HEADER_NAMES}; this is a bug")
    for node in funcs:
        jit = [ast.unparse(d) for d in getattr(node, "decorator_list", [])] == ["triton.jit"]
        if not (isinstance(node, ast.FunctionDef) and jit and not node.args.defaults and not node.args.kw_defaults):
            raise KernelError(f"generated device code has a statement {_inert(ast.dump(node)[:80])}; this is a bug")


def part_paths() -> list[Path]:
    """The template's part files (``parts/[0-9][0-9]_*.py``), in the order they are joined."""
    return sorted(PARTS_DIR.glob("[0-9][0-9]_*.py"))


def _part_body(path: Path) -> str:
    """A part's text without its opening docstring and the blank line after it (the part's own notes)."""
    text = path.read_text(encoding="utf-8")
    if not (text.startswith('"""') and '"""\n\n' in text[3:]):
        raise KernelError(f"template part {path} must open with a docstring followed by a blank line")
    return text[3:].split('"""\n\n', 1)[1]


def template_text() -> str:
    """The template: the part files joined in order, a valid module for f(x) = x.

    >>> src = template_text()
    >>> src.startswith("# >>> header") and "def poly_attention(" in src
    True
    """
    return "".join(_part_body(path) for path in part_paths())


def _replace_block(src: str, name: str, body: str) -> str:
    pat = re.compile(rf"^# >>> {name}\n.*?^# <<< {name}\n", re.S | re.M)
    if not pat.search(src):
        raise KernelError(f"the template (parts in {PARTS_DIR}) has no block '{name}'")
    return pat.sub(lambda _: body, src, count=1)


def render(poly: Polynomial, defaults: dict | None = None, head_dims: tuple | None = None) -> str:
    """Return the full source of the generated module for ``poly``.

    ``defaults`` (causal, normalize, scale, normalizer_fix) become the defaults of the
    module's ``PolyAttention``; ``head_dims`` = (D, DV) are documented in its docstring.
    Every free text of ``poly`` is sanitised (:func:`_inert`) and the generated blocks are
    checked to be only a docstring, literal assignments and ``@triton.jit`` functions.
    """
    header, functions = _header(poly, defaults, head_dims), _device_functions(poly)
    _check_generated(header, functions)
    src = template_text()
    src = _replace_block(src, "header", header)
    src = _replace_block(src, "device_functions", functions)
    return src


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def cache_dir() -> Path:
    """The kernel cache: ``$FASTATTN_CACHE`` if set, else ``~/.cache/fastattn``; created with mode 0700.

    Generated modules are executed from memory, never imported from here, but the
    directory is still refused (KernelError) when it is not a directory, is owned by
    another user, or is writable by group or others.

    >>> cache_dir().is_dir()
    True
    """
    raw = os.environ.get("FASTATTN_CACHE")
    path = Path(raw) if raw else Path.home() / ".cache" / "fastattn"
    where = f"the kernel cache {str(path)!r}" + (" (FASTATTN_CACHE)" if raw else "")
    try:
        path.mkdir(mode=0o700, parents=True)
        # mkdir's mode is masked by the umask; make it exactly 0700
        os.chmod(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise KernelError(f"cannot create {where}: {exc.strerror}; set FASTATTN_CACHE to a writable directory") from exc
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KernelError(f"cannot read {where}: {exc.strerror}; set FASTATTN_CACHE to a directory") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise KernelError(f"{where} is not a directory; set FASTATTN_CACHE to a directory (it is created if missing)")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise KernelError(f"{where} is owned by {_owner(st.st_uid)}, not by you ({_owner(os.getuid())}); "
                          "fastattn keeps generated code there, so it must be your own: set FASTATTN_CACHE "
                          "to a directory you own")
    if st.st_mode & 0o022:
        raise KernelError(f"{where} (owner {_owner(st.st_uid)}) is writable by group or others "
                          f"(mode {stat.S_IMODE(st.st_mode):o}); run chmod 700 {str(path)!r} or set "
                          "FASTATTN_CACHE to a private directory")
    return path


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory, which never stays behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class _SourceLoader:
    """The in-memory source of a generated module, for ``inspect`` and ``linecache`` (Triton reads it there)."""

    def __init__(self, src: str):
        self._src = src

    def get_source(self, name: str) -> str:
        return self._src


def exec_source(src: str, path, name: str) -> types.ModuleType:
    """Run ``src`` as a fresh module ``name`` whose ``__file__`` is ``path``; the file itself is never read.

    The text is compiled from memory, so a file swapped on disk or a planted
    ``__pycache__/*.pyc`` cannot run in its place; it is registered in ``linecache``
    under ``path`` (``inspect.getsource``, which ``triton.jit`` uses, reads it there).

    >>> mod = exec_source("X = 1", "/nonexistent/x.py", "fastattn_exec_source_example")
    >>> mod.X, mod.__file__
    (1, '/nonexistent/x.py')
    """
    path = str(path)
    mod = types.ModuleType(name)
    mod.__file__ = path
    mod.__loader__ = _SourceLoader(src)
    # mtime None: linecache.checkcache keeps the entry instead of re-reading the file
    linecache.cache[path] = (len(src), None, src.splitlines(keepends=True), path)
    code = compile(src, path, "exec", dont_inherit=True)
    sys.modules[name] = mod
    try:
        exec(code, mod.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def import_path(path: Path, name: str):
    """Import the file ``path`` as module ``name``: its bytes are read once and run by :func:`exec_source`."""
    return exec_source(Path(path).read_text(encoding="utf-8"), path, name)


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
    """Generate and run the module for ``poly``, keeping a copy in the cache for readers.

    The source is rendered here, written to ``cache_dir()/poly_<sha256 of the text>.py`` when
    that file is missing or differs, and executed from the rendered text in memory
    (:func:`exec_source`): what runs is exactly what was just generated, whatever is on disk.
    Modules are memoised per process and per interpreter mode, since ``triton.jit`` picks
    the interpreter when a module is executed.
    """
    mode = os.environ.get("TRITON_INTERPRET", "0")
    if mode not in ("", "0"):
        _check_interpreter_ready()
    # rendering and hashing take ~0.3 ms, more than a whole forward at 2K tokens on an H100:
    # memoise by the polynomial (render depends on nothing else)
    fast = (poly, mode)
    if fast in _BY_POLY:
        return _BY_POLY[fast]
    src = render(poly)
    digest = hashlib.sha256(src.encode()).hexdigest()[:16]
    key = (digest, mode)
    if key in _MODULES:
        _BY_POLY[fast] = _MODULES[key]
        return _MODULES[key]
    path = cache_dir() / f"poly_{digest}.py"
    try:
        if not (path.is_file() and path.read_bytes() == src.encode()):
            _write_atomic(path, src)
    except OSError as exc:
        raise KernelError(f"cannot write the generated module {str(path)!r}: {exc.strerror}; set FASTATTN_CACHE "
                          "to a writable directory of your own") from exc
    mod = exec_source(src, path, f"fastattn_generated_poly_{digest}_{_inert(mode)}")
    _MODULES[key] = mod
    _BY_POLY[fast] = mod
    return mod
