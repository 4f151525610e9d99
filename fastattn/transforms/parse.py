"""Safe parsing of a spec string into a sympy expression.

sympy's ``sympify`` / ``parse_expr`` run ``eval`` on the text, so a spec string is
never handed to them. Instead the text is parsed by Python's ``ast`` module (which
only builds a tree and executes nothing), every node is checked against a small
whitelist, and the sympy expression is built from the tree by this module. Limits on
the length of the text, the number of nodes, the nesting depth, the total degree after
nesting and the size of exponents and constants keep a hostile spec from hanging the
process. A spec is one line of printable ASCII with no comment (``#``) and no backslash:
anything else could hide text that the tree never shows (Python's ``ast`` drops comments
and folds NFKC lookalikes such as ``ｘ`` into ``x``).
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Mapping
from numbers import Real

import sympy as sp

from fastattn.errors import SpecError

__all__ = ["X", "FUNCTIONS", "CONSTANTS", "parse_spec", "MAX_SPEC_LENGTH", "MAX_EXPONENT", "MAX_DEGREE",
           "MAX_CONSTANT", "degree_bound"]

#: The variable of every spec: the score x = s·q·k, a real number.
X = sp.Symbol("x", real=True)

MAX_SPEC_LENGTH = 400
MAX_NODES = 200
MAX_DEPTH = 40
#: Largest |exponent| a constant power may have (x**64 is fine, x**10**6 is not).
MAX_EXPONENT = 64
#: Largest number of decimal digits a constant may reach while the tree is built.
MAX_DIGITS = 400
#: Largest total degree in x after nesting: ((1+x)**8)**8 is 64, ((1+x)**64)**64 (4096) is refused.
MAX_DEGREE = 64
#: Largest magnitude of a number in the built expression (offsets, scales, coefficients): exp(10**6*x)
#: and sigmoid(x - 1e10) are refused; 1/40320 and 0.001 are fine.
MAX_CONSTANT = 10**4


def _relu(a):
    return sp.Max(a, 0)


def _sigmoid(a):
    return 1 / (1 + sp.exp(-a))


def _softplus(a):
    return sp.log(1 + sp.exp(a))


#: Function names a spec may call, with their arity and the sympy function they build.
FUNCTIONS: dict[str, tuple[int | tuple[int, ...], object]] = {
    "exp": (1, sp.exp),
    "log": (1, sp.log),
    "sqrt": (1, sp.sqrt),
    "sin": (1, sp.sin),
    "cos": (1, sp.cos),
    "tan": (1, sp.tan),
    "tanh": (1, sp.tanh),
    "sinh": (1, sp.sinh),
    "cosh": (1, sp.cosh),
    "atan": (1, sp.atan),
    "erf": (1, sp.erf),
    "Abs": (1, sp.Abs),
    "abs": (1, sp.Abs),
    "sign": (1, sp.sign),
    "Heaviside": ((1, 2), sp.Heaviside),
    "Max": ((2, 3, 4), sp.Max),
    "Min": ((2, 3, 4), sp.Min),
    "relu": (1, _relu),
    "sigmoid": (1, _sigmoid),
    "softplus": (1, _softplus),
}

#: Named constants a spec may use.
CONSTANTS: dict[str, sp.Expr] = {"pi": sp.pi, "E": sp.E}

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def _where(text: str, node: ast.AST) -> str:
    col = getattr(node, "col_offset", None)
    if col is None:
        return ""
    return f" at column {col + 1}"


def _suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _check_characters(text: str) -> None:
    """Refuse anything but one line of printable ASCII without comments or backslashes."""
    for i, ch in enumerate(text):
        where = f"at column {i + 1} of spec {text!r}"
        if ch == "#":
            raise SpecError(f"'#' {where}: comments are not allowed; a spec is one expression")
        if ch == "\\":
            raise SpecError(f"backslash {where} is not allowed; a spec is one ASCII expression on one line")
        if not (" " <= ch <= "~"):
            raise SpecError(
                f"character {ch!r} (U+{ord(ch):04X}) {where} is not printable ASCII; "
                "write the spec in plain ASCII (x, exp, digits 0-9)"
            )


def degree_bound(expr: sp.Expr, _memo: dict | None = None) -> int:
    """An upper bound on the total degree in x, counting x inside functions as well.

    Sums add their degrees as a maximum, products add them, integer powers multiply them;
    exp(x**3) counts 3. It bounds the size of everything later expanded from the tree.

    >>> degree_bound(((1 + X)**8)**2 * sp.exp(X**3))
    19
    """
    memo = {} if _memo is None else _memo
    if expr in memo:
        return memo[expr]
    if expr == X:
        out = 1
    elif not expr.has(X):
        out = 0
    elif isinstance(expr, sp.Add):
        out = max(degree_bound(a, memo) for a in expr.args)
    elif isinstance(expr, sp.Mul):
        out = sum(degree_bound(a, memo) for a in expr.args)
    elif isinstance(expr, sp.Pow) and expr.args[1].is_number:
        out = degree_bound(expr.args[0], memo) * max(1, int(sp.ceiling(abs(expr.args[1]))))
    else:
        out = sum(degree_bound(a, memo) for a in expr.args)
    memo[expr] = out
    return out


class _Builder:
    def __init__(self, text: str, params: Mapping[str, sp.Expr]):
        self.text = text
        self.params = params
        self.nodes = 0

    def fail(self, msg: str, node: ast.AST | None = None, hint: str = "") -> SpecError:
        where = _where(self.text, node) if node is not None else ""
        return SpecError(f"{msg}{where} in spec {self.text!r}{hint}")

    def build(self, node: ast.AST, depth: int = 0) -> sp.Expr:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(f"spec is too large (more than {MAX_NODES} syntax nodes)")
        if depth > MAX_DEPTH:
            raise self.fail(f"spec is nested too deeply (more than {MAX_DEPTH} levels)", node)

        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.UnaryOp):
            operand = self.build(node.operand, depth + 1)
            if isinstance(node.op, ast.USub):
                return self._check_size(-operand, node)
            if isinstance(node.op, ast.UAdd):
                return operand
            raise self.fail(f"operator {type(node.op).__name__} is not allowed", node)
        if isinstance(node, ast.BinOp):
            return self._binop(node, depth)
        if isinstance(node, ast.Call):
            return self._call(node, depth)
        if isinstance(node, ast.Attribute):
            raise self.fail("attribute access is not allowed", node)
        if isinstance(node, ast.Lambda):
            raise self.fail("lambda is not allowed", node)
        if isinstance(node, ast.Compare):
            raise self.fail("comparisons are not allowed (use Heaviside or Max)", node)
        kind = type(node).__name__
        raise self.fail(f"{kind} is not allowed in a spec (only numbers, x, + - * / **, and {', '.join(sorted(FUNCTIONS))})", node)

    def _constant(self, node: ast.Constant) -> sp.Expr:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"constant {value!r} is not a number", node)
        if isinstance(value, int):
            if value.bit_length() > MAX_DIGITS * 3.33:
                raise self.fail("integer constant is too large", node)
            return sp.Integer(value)
        # Floats are taken from their decimal text so 0.1 means 1/10 exactly.
        literal = ast.get_source_segment(self.text, node) or repr(value)
        if "e" in literal.lower() and abs(int(literal.lower().split("e")[1])) > MAX_DIGITS:
            raise self.fail("float constant exponent is too large", node)
        if value != value or value in (float("inf"), float("-inf")):
            raise self.fail(f"constant {literal} is not finite", node)
        return sp.Rational(literal)

    def _name(self, node: ast.Name) -> sp.Expr:
        name = node.id
        if name == "x":
            return X
        if name in self.params:
            return self.params[name]
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name in FUNCTIONS:
            raise self.fail(f"function {name!r} is used without calling it", node)
        if name.startswith("_"):
            raise self.fail(f"name {name!r} is not allowed", node)
        hint = _suggest(name, ["x", *CONSTANTS, *self.params])
        if not hint:
            hint = (
                "; a spec is a function of x alone: declare other constants with "
                f"params={{{name!r}: value}}"
            )
        raise self.fail(f"unknown name {name!r}", node, hint)

    def _check_size(self, value: sp.Expr, node: ast.AST) -> sp.Expr:
        if value.is_Rational and value != 0:
            p, q = value.as_numer_denom()
            if max(abs(int(p)), abs(int(q))).bit_length() > MAX_DIGITS * 3.33:
                raise self.fail(f"constant grows beyond {MAX_DIGITS} digits", node)
        return value

    def _binop(self, node: ast.BinOp, depth: int) -> sp.Expr:
        if isinstance(node.op, ast.BitXor):
            raise self.fail("'^' is not a power in Python syntax; write x**2", node)
        left = self.build(node.left, depth + 1)
        right = self.build(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            if right.is_number:
                if not right.is_real:
                    raise self.fail(f"exponent {right} is not real", node)
                if abs(float(right)) > MAX_EXPONENT:
                    raise self.fail(f"exponent {right} is too large (|exponent| <= {MAX_EXPONENT})", node)
            if left.is_number and right.has(X) and not left.is_positive:
                raise self.fail(f"({left})**(a function of x) is not real for every real x; the base of a "
                                "power with x in the exponent must be a positive number", node)
            if left == 0 and right.is_number and bool(right <= 0):
                raise self.fail("0 raised to a non-positive power", node)
            if right.is_number and left.has(X):
                self._check_degree(degree_bound(left) * max(1, int(sp.ceiling(abs(right)))), node)
            return self._check_size(left**right, node)
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise self.fail(f"operator {type(node.op).__name__} is not allowed", node)
        if isinstance(node.op, ast.Div) and right == 0:
            raise self.fail("division by zero", node)
        if isinstance(node.op, (ast.Mult, ast.Div)):
            self._check_degree(degree_bound(left) + degree_bound(right), node)
        return self._check_size(op(left, right), node)

    def _check_degree(self, degree: int, node: ast.AST) -> None:
        # checked before sympy builds (and later expands) the power: ((1+x)**64)**64 costs seconds
        if degree > MAX_DEGREE:
            raise self.fail(f"total degree {degree} after nesting is above the limit {MAX_DEGREE}", node)

    def _call(self, node: ast.Call, depth: int) -> sp.Expr:
        if not isinstance(node.func, ast.Name):
            raise self.fail("only plain function calls like exp(x) are allowed", node)
        name = node.func.id
        if name.startswith("_"):
            raise self.fail(f"name {name!r} is not allowed", node)
        if name not in FUNCTIONS:
            raise self.fail(f"unknown function {name!r}", node, _suggest(name, FUNCTIONS))
        if node.keywords:
            raise self.fail(f"keyword arguments are not allowed in {name}()", node)
        arity, fn = FUNCTIONS[name]
        arities = arity if isinstance(arity, tuple) else (arity,)
        if len(node.args) not in arities:
            raise self.fail(f"{name}() takes {' or '.join(map(str, arities))} argument(s), got {len(node.args)}", node)
        args = [self.build(a, depth + 1) for a in node.args]
        return fn(*args)


def _params_to_sympy(params: Mapping[str, object] | None) -> dict[str, sp.Expr]:
    out: dict[str, sp.Expr] = {}
    for name, value in (params or {}).items():
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise SpecError(f"parameter name {name!r} is not a plain identifier")
        if name == "x" or name in FUNCTIONS or name in CONSTANTS:
            raise SpecError(f"parameter name {name!r} is reserved; choose another name")
        if isinstance(value, bool):
            raise SpecError(f"parameter {name}={value!r} is not a number")
        if isinstance(value, sp.Expr) and value.is_number and value.is_real:
            out[name] = value
        elif isinstance(value, int):
            out[name] = sp.Integer(value)
        elif isinstance(value, Real):
            f = float(value)
            if f != f or abs(f) == float("inf"):
                raise SpecError(f"parameter {name}={value!r} is not finite")
            out[name] = sp.Rational(repr(f))
        else:
            raise SpecError(f"parameter {name}={value!r} is not a real number")
    return out


def parse_spec(text: str, params: Mapping[str, object] | None = None) -> sp.Expr:
    """Parse a spec string into a sympy expression in :data:`X` without executing it.

    Parameters
    ----------
    text : str
        The function of the score ``x``, e.g. ``"1 + x + x**2/2"``.
    params : mapping, optional
        Named real constants the text may use besides ``x``, e.g. ``{"tau": 8}``.

    Raises
    ------
    SpecError
        With the reason and the column, for anything but numbers, ``x``, the
        declared params, ``pi``, ``E``, arithmetic and the functions in
        :data:`FUNCTIONS`.

    Examples
    --------
    >>> parse_spec("exp(x/tau)", params={"tau": 2})
    exp(x/2)
    """
    if not isinstance(text, str):
        raise SpecError(f"a spec must be a string, got {type(text).__name__}")
    if len(text) > MAX_SPEC_LENGTH:
        raise SpecError(f"spec is {len(text)} characters long; the limit is {MAX_SPEC_LENGTH}")
    if not text.strip():
        raise SpecError("spec is empty; write a function of x such as 'exp(x)'")
    if "\n" in text or ";" in text:
        raise SpecError(f"a spec is one expression on one line, got {text!r}")
    _check_characters(text)
    sym_params = _params_to_sympy(params)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        col = f" at column {exc.offset}" if exc.offset else ""
        raise SpecError(f"syntax error{col} in spec {text!r}: {exc.msg}") from None
    builder = _Builder(text.strip(), sym_params)
    expr = builder.build(tree.body)
    if not isinstance(expr, sp.Expr):
        raise SpecError(f"spec {text!r} does not give a number-valued expression")
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise SpecError(f"spec {text!r} is undefined or infinite (gives {expr})")
    _check_real_and_small(expr, text)
    return expr


def _constant_parts(expr: sp.Expr):
    """The maximal subexpressions of expr free of x (numbers, sqrt(2), exp(3), log(-1), ...)."""
    if not expr.has(X):
        yield expr
        return
    for arg in expr.args:
        yield from _constant_parts(arg)


def _check_real_and_small(expr: sp.Expr, text: str) -> None:
    """Refuse complex or undefined constants (sqrt(-1), log(-1)) and numbers above MAX_CONSTANT."""
    for c in _constant_parts(expr):
        if c.has(sp.I) or c.is_real is False or c.is_finite is False:
            raise SpecError(f"spec {text!r} is not real: its constant {c} is not a finite real number")
        value = c if c.is_Rational else sp.N(c, 15)
        if not value.is_real:
            raise SpecError(f"spec {text!r} is not real: its constant {c} evaluates to {value}")
        if abs(value) > MAX_CONSTANT:
            raise SpecError(
                f"constant {c} in spec {text!r} is larger in magnitude than the limit {MAX_CONSTANT}; "
                "rescale x or f so that every constant stays within that limit"
            )
