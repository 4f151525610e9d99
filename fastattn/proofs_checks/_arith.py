"""Exact and rigorous arithmetic used by the certificates.

* Modular linear algebra over Z/pZ on Python ints: an integer matrix whose
  determinant is non-zero modulo one prime p has a non-zero integer determinant,
  so ``det mod p != 0`` is a proof of non-singularity (no floats involved).
* An exact evaluator of a spec at points x = t or x = t·log(b) (t rational, b an
  integer >= 2) that returns a :class:`fractions.Fraction` or gives up. It covers
  rational functions, Abs / Max / Min / Heaviside / sign, and exp(a·x) at
  x = t·log(b) when a·t is an integer (e^{a t log b} = b^{a t}).
* (re-exported) the interval evaluator of :mod:`fastattn.transforms.intervals`.
* Fixed-point big-integer Gauss-Jordan for an approximate inverse (its accuracy
  does not matter: the residual I - B·A is recomputed exactly afterwards).
"""

from __future__ import annotations

import math
from fractions import Fraction

import sympy as sp

from fastattn.transforms import X

#: Largest numerator or denominator, in bits, of one exactly evaluated entry: beyond it the
#: exact route gives up (NotExact) instead of building (j+2)^(a·10^16·i).
MAX_EXACT_BITS = 1 << 14

#: Primes for modular certificates. Those below 2^31 run vectorised in numpy int64
#: (products stay below 2^62); the large ones in Python ints.
PRIMES = (2147483647, 2147483629, 2**61 - 1, 2305843009213693921)
_NUMPY_PRIME_LIMIT = 1 << 31


# The interval evaluator lives in transforms (positivity proofs use it too); re-exported here.
from fastattn.transforms.intervals import (  # noqa: E402,F401
    NotExact,
    erf_enclosure,
    interval_eval,
    iv_of_fraction,
    mpf_to_fraction,
)


# -- modular linear algebra -------------------------------------------------------------------
def _eliminate_numpy(rows, p):
    import numpy as np

    m = np.array([[v % p for v in r] for r in rows], dtype=np.int64)
    n_rows, n_cols = m.shape
    row_ids = np.arange(n_rows)
    piv_rows, piv_cols = [], []
    det = 1
    r = 0
    for c in range(n_cols):
        nz = np.nonzero(m[r:, c])[0]
        if nz.size == 0:
            continue
        pivot = r + int(nz[0])
        if pivot != r:
            m[[r, pivot]] = m[[pivot, r]]
            row_ids[[r, pivot]] = row_ids[[pivot, r]]
            det = -det
        det = det * int(m[r, c]) % p
        inv = pow(int(m[r, c]), p - 2, p)
        m[r] = (m[r] * inv) % p
        below = m[r + 1:, c].copy()
        if below.any():
            # (a - f*b) mod p with a, f, b < 2^31: f*b < 2^62 fits in int64
            m[r + 1:] = (m[r + 1:] - (below[:, None] * m[r][None, :]) % p) % p
        piv_rows.append(int(row_ids[r]))
        piv_cols.append(c)
        r += 1
        if r == n_rows:
            break
    return r, piv_rows, piv_cols, det % p


def _eliminate_python(rows, p):
    m = [[v % p for v in r] for r in rows]
    n_rows = len(m)
    n_cols = len(m[0]) if m else 0
    row_ids = list(range(n_rows))
    piv_rows, piv_cols = [], []
    det = 1
    r = 0
    for c in range(n_cols):
        pivot = next((i for i in range(r, n_rows) if m[i][c]), None)
        if pivot is None:
            continue
        if pivot != r:
            m[r], m[pivot] = m[pivot], m[r]
            row_ids[r], row_ids[pivot] = row_ids[pivot], row_ids[r]
            det = -det
        det = det * m[r][c] % p
        inv = pow(m[r][c], p - 2, p)
        pr = m[r]
        for i in range(r + 1, n_rows):
            if m[i][c]:
                fct = m[i][c] * inv % p
                mi = m[i]
                for cc in range(c, n_cols):
                    if pr[cc]:
                        mi[cc] = (mi[cc] - fct * pr[cc]) % p
        piv_rows.append(row_ids[r])
        piv_cols.append(c)
        r += 1
        if r == n_rows:
            break
    return r, piv_rows, piv_cols, det % p


def _eliminate(rows, p):
    """Gaussian elimination modulo the prime p: (rank, pivot rows, pivot columns, signed product of pivots).

    Primes below 2^31 run vectorised in numpy int64; larger ones in Python ints.
    """
    if p < _NUMPY_PRIME_LIMIT and rows and rows[0]:
        return _eliminate_numpy(rows, p)
    return _eliminate_python(rows, p)


def rank_mod_p(rows: list[list[int]], p: int) -> tuple[int, list[int], list[int]]:
    """Rank of an integer matrix modulo p, with the pivot rows and columns of a non-singular minor.

    The minor ``M[rows][:, cols]`` is non-singular modulo p, hence over Q.
    """
    rank, piv_rows, piv_cols, _ = _eliminate(rows, p)
    return rank, piv_rows, piv_cols


def det_mod_p(rows: list[list[int]], p: int) -> int:
    """Determinant of a square integer matrix modulo p."""
    if any(len(r) != len(rows) for r in rows):
        raise ValueError(f"det_mod_p needs a square matrix, got {len(rows)} rows of lengths {sorted({len(r) for r in rows})}")
    rank, _, _, det = _eliminate(rows, p)
    return det if rank == len(rows) else 0


def nonzero_det_prime(rows: list[list[int]], skip: int | None = None) -> tuple[int, int] | None:
    """(p, det mod p) for the first prime of :data:`PRIMES` (other than ``skip``) with det mod p != 0."""
    for p in PRIMES:
        if p == skip:
            continue
        d = det_mod_p(rows, p)
        if d:
            return p, d
    return None


def integer_rows(rows: list[list[Fraction]]) -> tuple[list[list[int]], list[int]]:
    """Scale each row by the lcm of its denominators (rank and non-singularity are unchanged)."""
    out, scales = [], []
    for r in rows:
        L = 1
        for v in r:
            L = L * v.denominator // math.gcd(L, v.denominator)
        out.append([int(v * L) for v in r])
        scales.append(L)
    return out, scales


# -- exact evaluation ---------------------------------------------------------------------------
# A value is a polynomial in lam = log(base) > 0 with rational coefficients: {power: Fraction}.
def _const(c) -> dict:
    return {0: Fraction(c)} if c else {}


def _add(a, b):
    out = dict(a)
    for k, v in b.items():
        s = out.get(k, 0) + v
        if s:
            out[k] = s
        else:
            out.pop(k, None)
    return out


def _mul(a, b):
    out: dict = {}
    for i, u in a.items():
        for j, v in b.items():
            out = _add(out, {i + j: u * v})
    return out


def _sign(a) -> int:
    # lam > 0, so a single-term value has the sign of its coefficient.
    if not a:
        return 0
    if len(a) > 1:
        raise NotExact("sign of a multi-term value in log(b)")
    return 1 if next(iter(a.values())) > 0 else -1


def _to_fraction(a) -> Fraction:
    if not a:
        return Fraction(0)
    if set(a) != {0}:
        raise NotExact("value depends on log(b)")
    return a[0]


def exact_eval(expr: sp.Expr, t: Fraction, base: int | None = None) -> Fraction:
    """f at x = t (base None) or x = t·log(base), as an exact Fraction; raises NotExact."""
    x = _const(t) if base is None or base == 1 else ({1: Fraction(t)} if t else {})
    if base == 1:
        x = {}
    return _to_fraction(_ev(expr, x, base))


def _ev(e, x, base):
    if e == X:
        return x
    if e.is_Rational:
        return _const(Fraction(int(e.p), int(e.q)))
    if e.is_Number:
        raise NotExact(f"constant {e} is not rational")
    if not e.has(X):
        # expand, never nsimplify: nsimplify guesses a rational from digits, a silent wrong answer
        v = sp.expand(e)
        if v.is_Rational:
            return _const(Fraction(int(v.p), int(v.q)))
        raise NotExact(f"constant {e} is not rational")
    if isinstance(e, sp.Add):
        out: dict = {}
        for a in e.args:
            out = _add(out, _ev(a, x, base))
        return out
    if isinstance(e, sp.Mul):
        out = _const(1)
        for a in e.args:
            out = _guard(_mul(out, _ev(a, x, base)))
        return out
    if isinstance(e, sp.Pow):
        b, ex = e.args
        if b == sp.E:
            return _ev(sp.exp(ex), x, base)
        if not ex.is_Integer:
            if ex.is_Rational and not ex.has(X):
                v = _to_fraction(_ev(b, x, base))
                root = _rational_root(v, int(ex.q))
                return _const(root ** int(ex.p))
            raise NotExact("non-integer power")
        bv = _ev(b, x, base)
        k = int(ex)
        if k >= 0:
            out = _const(1)
            for _ in range(k):
                out = _guard(_mul(out, bv))
            return out
        if len(bv) != 1:
            raise NotExact("reciprocal of a zero or multi-term value")
        ((pw, c),) = bv.items()
        if pw != 0:
            raise NotExact("negative power of a value in log(b)")
        return _guard({0: c**k})
    if isinstance(e, sp.exp):
        a = _ev(e.args[0], x, base)
        if not a:
            return _const(1)
        if set(a) == {1} and base:
            c = a[1]
            if c.denominator == 1:
                if abs(c.numerator) * base.bit_length() > MAX_EXACT_BITS:
                    raise NotExact(f"{base}^{c} has more than {MAX_EXACT_BITS} bits")
                return _const(Fraction(base) ** int(c))
        raise NotExact("exp of a value that is not an integer multiple of log(b)")
    if isinstance(e, (sp.sinh, sp.cosh, sp.tanh)):
        return _ev(e.rewrite(type(e), sp.exp), x, base)
    if isinstance(e, sp.Abs):
        a = _ev(e.args[0], x, base)
        return a if _sign(a) >= 0 else {k: -v for k, v in a.items()}
    if isinstance(e, sp.sign):
        return _const(_sign(_ev(e.args[0], x, base)))
    if isinstance(e, sp.Heaviside):
        s = _sign(_ev(e.args[0], x, base))
        if s == 0:
            h0 = e.args[1] if len(e.args) > 1 else sp.Rational(1, 2)
            return _ev(h0, x, base)
        return _const(1 if s > 0 else 0)
    if isinstance(e, (sp.Max, sp.Min)):
        vals = [_ev(a, x, base) for a in e.args]
        best = vals[0]
        for v in vals[1:]:
            s = _sign(_add(v, {k: -c for k, c in best.items()}))
            if (s > 0) == isinstance(e, sp.Max) and s != 0:
                best = v
        return best
    raise NotExact(f"{type(e).__name__} is not handled exactly")


def _guard(a: dict) -> dict:
    for c in a.values():
        if max(c.numerator.bit_length(), c.denominator.bit_length()) > MAX_EXACT_BITS:
            raise NotExact(f"an exact value has more than {MAX_EXACT_BITS} bits")
    return a


def _rational_root(v: Fraction, q: int) -> Fraction:
    if v < 0:
        raise NotExact("root of a negative number")
    # integer roots: a float root of a big integer overflows or rounds wrong
    roots = [sp.integer_nthroot(part, q) for part in (v.numerator, v.denominator)]
    if not all(exact for _, exact in roots):
        raise NotExact("irrational root")
    return Fraction(int(roots[0][0]), int(roots[1][0]))


# -- fixed point approximate inverse ------------------------------------------------------------
def approx_inverse_fixed(A: list[list[int]], P: int) -> list[list[int]]:
    """Approximate inverse of A·2^-P, returned as integers B with B·2^-P ≈ inverse. Gauss-Jordan, partial pivoting."""
    n = len(A)
    one = 1 << P
    M = [list(A[i]) + [one if j == i else 0 for j in range(n)] for i in range(n)]
    for c in range(n):
        pivot = max(range(c, n), key=lambda i: abs(M[i][c]))
        if M[pivot][c] == 0:
            raise ZeroDivisionError("singular to working precision")
        M[c], M[pivot] = M[pivot], M[c]
        pv = M[c][c]
        # normalise the pivot row to fixed point 1 at column c
        M[c] = [(v << P) // pv for v in M[c]]
        pr = M[c]
        for i in range(n):
            if i != c and M[i][c]:
                fct = M[i][c]
                M[i] = [vi - ((fct * vp) >> P) for vi, vp in zip(M[i], pr)]
    return [row[n:] for row in M]


def isqrt_ceil(v: int) -> int:
    r = math.isqrt(v)
    return r if r * r == v else r + 1


def fraction_str_down(v: Fraction, digits: int = 6) -> str:
    """Decimal text of a number <= v (rounded toward -inf), readable at any magnitude."""
    if v == 0:
        return "0"
    sign = "-" if v < 0 else ""
    a = abs(v)
    e = math.floor(math.log10(a.numerator) - math.log10(a.denominator))
    # adjust e so that 1 <= a / 10^e < 10 exactly
    while a >= Fraction(10) ** (e + 1):
        e += 1
    while a < Fraction(10) ** e:
        e -= 1
    scaled = a / Fraction(10) ** (e - digits + 1)
    m = math.floor(scaled) if not sign else math.ceil(scaled)
    s = str(m)
    return f"{sign}{s[0]}.{s[1:]}e{e:+d}"
