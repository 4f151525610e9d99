"""The classification and canonical form of a spec's expression: the kind (polynomial, entire,
analytic with its radius, not analytic), removable singularities, kinks whose sides agree, and the
checks that a spec is real and within the parser's limits. :class:`fastattn.transforms.spec.Spec`
reads its verdicts from here.
"""

from __future__ import annotations

import mpmath
import sympy as sp

from fastattn.budget import limited
from fastattn.errors import SpecError
from fastattn.transforms.parse import X
from fastattn.transforms.series import NON_ANALYTIC_FUNCS, NotAnalyticAtZero, disc_bound, taylor_coefficients

__all__ = ["classify", "canonical", "check_limits", "check_real_at_zero"]

# Nodes that are entire when their arguments are: everything else needs a closer look.
_ENTIRE_FUNCS = (sp.exp, sp.sin, sp.cos, sp.sinh, sp.cosh, sp.erf)
_SIMPLIFY_SECONDS = 1.0


def _kink_text(node: sp.Expr) -> str:
    """' at x = 0' for Abs(x), Max(x, 0), ... where the kink can be located exactly."""
    if isinstance(node, (sp.Max, sp.Min)) and len(node.args) == 2:
        g = node.args[0] - node.args[1]
    elif node.args:
        g = node.args[0]
    else:
        return ""
    try:
        if g.is_polynomial(X):
            roots = sp.Poly(g, X).real_roots()
            if roots:
                return f" at x = {roots[0]}"
    except (sp.PolynomialError, NotImplementedError):
        pass
    return ""


_KINKS = (sp.Abs, sp.Heaviside, sp.Max, sp.Min, sp.sign)


def classify(e: sp.Expr) -> tuple[str, str, sp.Expr | None, tuple | None]:
    """(kind, reason, radius, series form); the series form (G, c) says f(x) = G(t) with t**2 = c*x (c None: G = f)."""
    bad = [a for a in e.atoms(*NON_ANALYTIC_FUNCS) if a.has(X)]
    if bad:
        node = min(bad, key=lambda a: len(str(a)))
        return "not-analytic", _kink_reason(e, node), None, None
    if e.is_polynomial(X):
        if e == 0:
            return "polynomial", "the zero function (a polynomial of degree 0, rank 0)", sp.oo, (e, None)
        return "polynomial", f"a polynomial of degree {sp.Poly(e, X).degree()}", sp.oo, (e, None)
    form = (e, None)
    try:
        taylor_coefficients(e, 1)
    except NotAnalyticAtZero as exc:
        even = _even_root_form(e)
        if even is None:
            return "not-analytic", f"no power series at x = 0: {exc.why} ({exc.node})", None, None
        try:
            taylor_coefficients(even[0], 2)
        except NotAnalyticAtZero:
            return "not-analytic", f"no power series at x = 0: {exc.why} ({exc.node})", None, None
        form = even
    G, c = form
    via = "" if c is None else f" (an even function of t = sqrt({c}*x), so a power series in x)"
    singular = _singular_sets(G)
    if not singular:
        return "entire", f"built from entire functions (exp, sin, cos, sinh, cosh, erf, polynomials){via}", sp.oo, form
    radius, how = _radius(G, singular)
    if radius is sp.oo:
        return "entire", f"its singularities are removable: {how}{via}", sp.oo, form
    if c is not None:
        radius = radius**2 / abs(c)
        how = f"{how} in t = sqrt({c}*x)"
    return ("analytic", f"singular at distance {how} from 0, so the Taylor series at 0 converges for |x| < {radius}{via}",
            radius, form)


def _even_root_form(e: sp.Expr) -> tuple[sp.Expr, sp.Expr] | None:
    """(G, c) with f(x) = G(t), t**2 = c*x and G even in t, when every fractional power is sqrt(c*x).

    cosh(sqrt(x)) = cosh(t) and sin(sqrt(x))/sqrt(x) = sin(t)/t are even in t, hence power series in x.
    """
    halves = [p for p in e.atoms(sp.Pow) if p.args[0].has(X) and not p.args[1].is_Integer]
    if not halves:
        return None
    bases = {p.args[0] for p in halves}
    if len(bases) != 1 or not all((2 * p.args[1]).is_Integer for p in halves):
        return None
    c, rest = bases.pop().as_independent(X, as_Add=False)
    if rest != X or not c.is_nonzero:
        return None
    t = sp.Symbol("t", positive=True)
    G = e.subs(X, t**2 / c)
    if any(p.args[0].has(t) and not p.args[1].is_Integer for p in G.atoms(sp.Pow)):
        return None
    try:
        with limited(_SIMPLIFY_SECONDS, "checking that f is even in sqrt(x)"):
            if sp.expand(G.subs(t, -t) - G) != 0:
                return None
    except SpecError:
        return None  # undecided: f stays not analytic, with the reason of its Taylor walk
    return G.subs(t, X), c


def _singular_sets(e: sp.Expr) -> list[tuple[sp.Expr, sp.Expr | None]]:
    """(g, cofactor): the complex zeros of g are the candidate singularities of e.

    cofactor is the rest of the product when g is a simple denominator (g**-1 in a product): a
    zero of g where the cofactor vanishes too is removable.
    """
    out, seen = [], set()
    for node in sp.preorder_traversal(e):
        if not node.has(X):
            continue
        if isinstance(node, sp.Mul):
            for arg in node.args:
                if isinstance(arg, sp.Pow) and arg.args[1] == -1 and arg.args[0].has(X):
                    rest = sp.Mul(*[a for a in node.args if a is not arg])
                    out.append((arg.args[0], rest))
                    seen.add(arg)
        elif isinstance(node, sp.Pow):
            if node in seen:
                continue
            base, expo = node.args
            if expo.has(X):
                if base.has(X):
                    out.append((base, None))
            elif not (expo.is_Integer and expo >= 0):
                out.append((base, sp.Integer(1) if expo == -1 else None))
        elif isinstance(node, sp.log):
            out.append((node.args[0], None))
        elif isinstance(node, sp.tan):
            out.append((sp.cos(node.args[0]), None))
        elif isinstance(node, sp.tanh):
            out.append((sp.cosh(node.args[0]), None))
        elif isinstance(node, sp.atan):
            out.append((1 + node.args[0] ** 2, None))
        elif not isinstance(node, (sp.Add, sp.Mul, sp.Symbol, *_ENTIRE_FUNCS)) and not node.is_number:
            out.append((node, None))
    return out


def _linear(h: sp.Expr) -> tuple[sp.Expr, sp.Expr] | None:
    """(a, b) with h = a*x + b, a != 0, or None."""
    if not h.is_polynomial(X):
        return None
    poly = sp.Poly(h, X)
    if poly.degree() != 1:
        return None
    a, b = poly.all_coeffs()
    return a, b


def _zeros(g: sp.Expr, many: int = 4) -> tuple[list[sp.Expr], bool] | None:
    """(zeros, complete): complex zeros of g nearest 0 (exact where possible), or None when g has no rule.

    Polynomials (:func:`_polynomial_zeros`), and the families with infinitely many
    zeros that specs produce: A + B*exp(a*x + b) (sigmoid, softplus, x/(exp(x) - 1)), cosh(a*x + b)
    (tanh) and cos(a*x + b) (tan); for those the zeros with |k| <= many around the nearest.
    """
    if g.is_polynomial(X):
        return _polynomial_zeros(sp.Poly(g, X)), True
    A, rest = g.as_independent(X, as_Add=True)
    B, core = rest.as_independent(X, as_Add=False)
    if isinstance(core, (sp.exp, sp.cosh, sp.cos)) and _linear(core.args[0]) is not None:
        a, b = _linear(core.args[0])
        if isinstance(core, sp.exp):
            if A == 0:
                return [], True
            # a*x + b = log(-A/B) + 2*pi*i*k
            base = sp.log(-A / B) - b
            shift = 2 * sp.pi * sp.I
        elif A != 0:
            return None
        elif isinstance(core, sp.cosh):
            base, shift = sp.pi * sp.I / 2 - b, sp.pi * sp.I
        else:
            base, shift = sp.pi / 2 - b, sp.pi
        # the k whose zero is nearest 0, then a few on each side
        k0 = int(round(-float(sp.re(base / shift))))
        return [sp.expand((base + k * shift) / a) for k in range(k0 - many, k0 + many + 1)], False
    return None


def _polynomial_zeros(poly: sp.Poly) -> list[sp.Expr]:
    """The distinct complex zeros of poly: exact from factors of degree <= 2 and for real zeros of rational
    factors (CRootOf), 30-digit floats for the other zeros.

    Each squarefree factor is solved on its own, so a repeated zero ((1 - x)**3) is a simple zero
    there, where the numeric root-finder converges; complex zeros stay complex numbers.

    >>> from fastattn.transforms.parse import X
    >>> sorted(_polynomial_zeros(sp.Poly((1 - X)**3 * (4 + X**2), X)), key=str)
    [-2*I, 1, 2*I]
    """
    try:
        factors = [h for h, _ in poly.factor_list()[1]]
    except (sp.PolynomialError, NotImplementedError, sp.polys.polyerrors.DomainError):
        # coefficients sympy cannot factor over (pi, E): their squarefree part is still exact
        factors = [h for h, _ in poly.sqf_list()[1]]
    zeros = []
    for h in factors:
        if h.degree() <= 2:
            zeros.extend(sp.roots(h).keys())
            continue
        try:
            found = h.nroots(n=30, maxsteps=200)
        except mpmath.NoConvergence:
            raise SpecError(f"the zeros of the denominator factor {h.as_expr()} (degree {h.degree()}) could not be "
                            "located to 30 digits, so the radius of convergence is unknown; write the spec with "
                            "denominators of lower degree") from None
        if h.domain.is_ZZ or h.domain.is_QQ:
            # real zeros exactly (CRootOf); the complex ones are the floats with the largest imaginary parts
            real = h.real_roots()
            found = real + sorted(found, key=lambda r: abs(sp.im(r)))[len(real):]
        zeros.extend(found)
    return zeros


def _distance(r: sp.Expr) -> sp.Expr:
    """|r|: exact for exact r (sqrt(re**2 + im**2)), a Float for floating r."""
    if r.has(sp.Float):
        return sp.Abs(sp.N(r, 30))
    return sp.sqrt(sp.expand(sp.re(r) ** 2 + sp.im(r) ** 2))


def _removable(g: sp.Expr, cofactor: sp.Expr | None, r: sp.Expr) -> bool:
    """True when r is provably a removable zero: a simple zero of g where the cofactor vanishes exactly."""
    if cofactor is None:
        return False
    try:
        with limited(_SIMPLIFY_SECONDS, "checking a removable singularity"):
            if sp.simplify(cofactor.subs(X, r)) != 0:
                return False
            return sp.simplify(sp.diff(g, X).subs(X, r)) != 0
    except SpecError:
        return False  # undecided: keep it as a singularity, which can only understate the radius


def _radius(e: sp.Expr, singular: list) -> tuple[sp.Expr, str]:
    """Distance from 0 to the nearest non-removable zero of the singular sets.

    Exact for polynomial singular sets and the exp / cosh / cos families; otherwise a certified
    lower bound: the largest disc on which the centred form of e stays finite.
    """
    best, best_text, unknown, skipped = sp.oo, "", False, 0
    for g, cofactor in singular:
        found = _zeros(g)
        if found is None:
            unknown = True
            continue
        zeros, complete = found
        for r in sorted(zeros, key=lambda r: float(abs(sp.N(r, 30)))):
            if r == 0 or (r.has(sp.Float) and _distance(r) < 1e-25):
                skipped += 1  # f is analytic at 0: its Taylor walk succeeded
                continue
            if _removable(g, cofactor, r):
                skipped += 1
                continue
            dist = _distance(r)
            if best is sp.oo or float(dist) < float(best):
                best, best_text = dist, f"|{r}| = {dist}"
            break
        else:
            # every zero looked at was removable, but the family goes on: no exact answer
            unknown = unknown or not complete
    if unknown:
        lo, hi = mpmath.mpf(0), mpmath.mpf(64) if best is sp.oo else mpmath.mpf(sp.N(best, 30))
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if disc_bound(e, mid) is not None else (lo, mid)
        lower = sp.Rational(str(mpmath.nstr(lo, 12)))
        if best is sp.oo or lower < best:
            return lower, f">= {lower} (certified lower bound; no singularity located exactly)"
    if best is sp.oo:
        return sp.oo, f"{skipped} zero(s) of denominators, each cancelled by a zero of the numerator"
    return best, best_text


def canonical(expr: sp.Expr) -> sp.Expr:
    """A form of f whose verdicts follow the mathematics rather than the spelling.

    Kinks whose sides agree are removed (Max(x,0) + Min(x,0) is x); identities that make f a
    polynomial or remove a singularity are applied (sin(x)**2 + cos(x)**2 is 1, (exp(2x)-1)/(exp(x)-1)
    is exp(x)+1); rational functions are cancelled. Each step has a time budget; one that runs out
    leaves the expression as it was.
    """
    if not expr.has(X):
        return expr
    try:
        expr = _resolve_kinks(expr)
        if expr.is_polynomial(X):
            return expr
        if expr.is_rational_function(X):
            with limited(_SIMPLIFY_SECONDS, "cancelling a rational function"):
                return sp.cancel(expr)
        return _simpler(expr)
    except SpecError:
        return expr


def _rank(e: sp.Expr) -> int:
    """0 polynomial, 1 entire, 2 analytic or unknown, 3 not analytic at 0 (a cheap look, no radius)."""
    if e.is_polynomial(X):
        return 0
    if any(a.has(X) for a in e.atoms(*NON_ANALYTIC_FUNCS)):
        return 3
    try:
        taylor_coefficients(e, 1)
    except NotAnalyticAtZero:
        return 3
    return 1 if not _singular_sets(e) else 2


def _simpler(expr: sp.Expr) -> sp.Expr:
    """expr, or an identity-preserving rewrite of it (cancel, trigsimp) of a strictly better kind."""
    best, rank = expr, _rank(expr)
    if rank == 0:
        return expr
    for name, rewrite in (("cancel", sp.cancel), ("trigsimp", sp.trigsimp)):
        try:
            with limited(_SIMPLIFY_SECONDS, f"{name} on the spec"):
                candidate = rewrite(expr)
                r = _rank(candidate)
        except SpecError:
            continue
        if r < rank and _same_function(candidate, expr) is not False:
            best, rank = candidate, r
    return best


def _same_function(a: sp.Expr, b: sp.Expr) -> bool | None:
    """Numeric-then-exact identity check: False if a != b at a sample point, True if a - b simplifies to 0."""
    diff = a - b
    with mpmath.workdps(30):
        for t in (sp.Rational(3, 7), sp.Rational(-5, 11), sp.Rational(13, 10)):
            try:
                v = complex(sp.N(diff.subs(X, t), 30))
            except (TypeError, ValueError, ZeroDivisionError):
                continue
            if v == v and abs(v) > 1e-20 * (1 + abs(complex(sp.N(a.subs(X, t), 30)))):
                return False
    try:
        with limited(_SIMPLIFY_SECONDS, "an identity check"):
            if sp.expand(diff) == 0 or sp.cancel(diff) == 0 or sp.trigsimp(diff) == 0:
                return True
    except SpecError:
        pass
    return None


def _kink_arguments(node: sp.Expr) -> list[sp.Expr]:
    if isinstance(node, (sp.Max, sp.Min)):
        return [a - b for i, a in enumerate(node.args) for b in node.args[i + 1:]]
    return [node.args[0]]


def _branch(node: sp.Expr, t: sp.Rational) -> sp.Expr:
    """The analytic expression that the kink node equals near the sample point t (no kink at t)."""
    if isinstance(node, (sp.Max, sp.Min)):
        values = [a.subs(X, t) for a in node.args]
        pick = max if isinstance(node, sp.Max) else min
        return node.args[values.index(pick(values))]
    g = node.args[0]
    positive = bool(g.subs(X, t) > 0)
    if isinstance(node, sp.Abs):
        return g if positive else -g
    if isinstance(node, sp.Heaviside):
        return sp.Integer(1 if positive else 0)
    return sp.Integer(1 if positive else -1)  # sign


def _kink_pieces(expr: sp.Expr) -> tuple[list, list, list] | None:
    """(cuts, samples, pieces): the real line cut at the kinks of expr, and expr without kinks near each sample.

    Handles Abs, Heaviside, Max, Min, sign with polynomial arguments (degree <= 8): the cuts are
    the real roots of the arguments, and each kink is replaced by its branch on each piece.
    None when expr has another kind of kink.
    """
    nodes = [a for a in expr.atoms(*_KINKS) if a.has(X)]
    if not nodes or expr.has(sp.Piecewise, sp.floor, sp.ceiling):
        return None
    with limited(_SIMPLIFY_SECONDS, "locating the kinks of the spec"):
        cuts = set()
        for node in nodes:
            for g in _kink_arguments(node):
                if not g.is_polynomial(X) or g.has(*_KINKS):
                    return None
                poly = sp.Poly(g, X)
                if poly.degree() > 8:
                    return None
                cuts.update(poly.real_roots())
        cuts = sorted(cuts, key=lambda r: float(r))
        if not cuts:
            samples = [sp.Integer(0)]
        else:
            floats = [sp.Rational(str(sp.N(r, 20))) for r in cuts]
            samples = [floats[0] - 1] + [(a + b) / 2 for a, b in zip(floats, floats[1:])] + [floats[-1] + 1]
        pieces = [expr.replace(lambda n: isinstance(n, _KINKS) and n.has(X), lambda n: _branch(n, t)) for t in samples]
    return cuts, samples, pieces


def _resolve_kinks(expr: sp.Expr) -> sp.Expr:
    """The single analytic expression expr equals on every side of its kinks, or expr itself.

    The pieces of :func:`_kink_pieces` must be one function (checked numerically, then exactly)
    that also takes the value of expr at each cut.
    """
    found = _kink_pieces(expr)
    if found is None:
        return expr
    cuts, _, pieces = found
    first = pieces[0]
    if first.has(*_KINKS) or any(_same_function(p, first) is not True for p in pieces[1:]):
        return expr
    for r in cuts:
        try:
            with limited(_SIMPLIFY_SECONDS, "checking the value at a kink"):
                if sp.simplify(expr.subs(X, r) - first.subs(X, r)) != 0:
                    return expr
        except SpecError:
            return expr
    return first


def _kink_reason(expr: sp.Expr, node: sp.Expr) -> str:
    """Why f is not analytic: the two different functions it equals on either side of a cut, or 'undecided'."""
    try:
        found = _kink_pieces(expr)
    except SpecError:
        found = None
    if found is not None:
        cuts, _, pieces = found
        for r, left, right in zip(cuts, pieces, pieces[1:]):
            if _same_function(left, right) is False:
                return (f"{node} is not analytic at x = {r}: f is {left} just below x = {r} and {right} just above "
                        "(two different analytic functions cannot join analytically)")
    return (f"{node} is not analytic{_kink_text(node)}, and it was not decided whether f's pieces on either side "
            "are one analytic function; treated as not analytic")


def check_real_at_zero(expr: sp.Expr, text: str) -> None:
    """Refuse f whose value at x = 0 is not real (sqrt(x-1), log(x-2)): its Taylor series would be complex."""
    try:
        with limited(_SIMPLIFY_SECONDS, "evaluating f at x = 0"):
            a0 = taylor_coefficients(expr, 0)[0]
            value = complex(sp.N(a0, 30))
    except (NotAnalyticAtZero, SpecError, TypeError, ValueError):
        return  # no value at 0 (log(x), 1/x): classified as not analytic later
    if a0.has(sp.I) or abs(value.imag) > 1e-20 * max(1.0, abs(value.real)):
        raise SpecError(f"spec {text!r} is not real near x = 0: f(0) = {a0}; write a function that is real "
                        "for real scores")


def check_limits(expr: sp.Expr) -> None:
    """The parser's limits for a spec given as a sympy expression: degree, constants, real values."""
    from fastattn.transforms.parse import MAX_DEGREE, _check_real_and_small, degree_bound

    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise SpecError(f"spec {expr} is undefined or infinite")
    degree = degree_bound(expr)
    if degree > MAX_DEGREE:
        raise SpecError(f"spec {expr}: total degree {degree} after nesting is above the limit {MAX_DEGREE}")
    _check_real_and_small(expr, str(expr))
