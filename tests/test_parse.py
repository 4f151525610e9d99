"""The spec parser: what it accepts, and that no string can run code or hang it."""

import time

import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

import fastattn
from fastattn import SpecError
from fastattn.transforms.parse import X, parse_spec


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1 + x + x**2/2", 1 + X + X**2 / 2),
        ("exp(x)", sp.exp(X)),
        ("0.5*x", X / 2),
        ("1e-1 * x", X / 10),
        ("erf(x) + tanh(x)", sp.erf(X) + sp.tanh(X)),
        ("Max(x, 0)", sp.Max(X, 0)),
        ("relu(x)", sp.Max(X, 0)),
        ("pi*x + E", sp.pi * X + sp.E),
        ("-x**2", -(X**2)),
        ("Heaviside(x)", sp.Heaviside(X)),
        ("sqrt(1 + x)", sp.sqrt(1 + X)),
        ("(1+x)**3", (1 + X) ** 3),
    ],
)
def test_accepts_the_usual_functions(text, expected):
    assert sp.simplify(parse_spec(text) - expected) == 0


def test_params_are_substituted_exactly():
    assert parse_spec("exp(x/tau)", params={"tau": 4}) == sp.exp(X / 4)
    assert parse_spec("a*x", params={"a": 0.1}) == X / 10


HOSTILE = [
    "__import__('os').system('echo pwned')",
    "x.__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "(lambda: 1)()",
    "lambda x: x",
    "open('/etc/passwd')",
    "eval('1')",
    "exec('import os')",
    "getattr(x, 'func')",
    "exp.__globals__",
    "exp(x)(1)",
    "[1] * 10**9",
    "9**9**9**9",
    "x**10**10",
    "2**1000000",
    "x**(2**100)",
    "'a' * 100",
    "f'{x}'",
    "x[0]",
    "x if x else 1",
    "exp(x); 1",
    "exp(x)\n1",
    "{x: 1}",
    "x == 1",
    "x @ x",
    "x ^ 2",
    "y + x",
    "exp(x, 2)",
    "exp(x=1)",
    "expp(x)",
    "exp",
    "1/0",
    "x" + "+x" * 300,
    "",
    "   ",
    "-" * 300 + "x",
    "0**-1",
    "1e999 * x",
    "_x",
    "True",
    "None",
    "...",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_specs_raise_spec_error_quickly(text):
    start = time.perf_counter()
    with pytest.raises(SpecError):
        fastattn.spec(text)
    assert time.perf_counter() - start < 2.0


def test_error_messages_say_what_and_where():
    with pytest.raises(SpecError, match=r"unknown function 'expp' at column 1.*did you mean exp\?"):
        fastattn.spec("expp(x)")
    with pytest.raises(SpecError, match=r"'\^' is not a power.*x\*\*2"):
        fastattn.spec("x^2")
    with pytest.raises(SpecError, match=r"unknown name 'y'.*params="):
        fastattn.spec("x + y")
    with pytest.raises(SpecError, match=r"exponent .* too large"):
        fastattn.spec("x**100")


def test_non_string_inputs_are_refused():
    with pytest.raises(SpecError):
        fastattn.spec(3.5)
    with pytest.raises(SpecError, match="besides x"):
        fastattn.spec(sp.Symbol("x") + sp.Symbol("y"))
    with pytest.raises(SpecError, match="coefficients"):
        fastattn.spec(lambda t: t)


_ALPHABET = "x+-*/()0123456789.e ,_'[]abcdijlmnoprstuv:=<>^@"


@given(st.text(alphabet=_ALPHABET, max_size=40))
def test_fuzzed_text_either_parses_or_raises_spec_error(text):
    start = time.perf_counter()
    try:
        f = fastattn.spec(text)
    except SpecError:
        pass
    else:
        assert isinstance(f.expr, sp.Expr)
        assert f.expr.free_symbols <= {X}
    assert time.perf_counter() - start < 2.0
