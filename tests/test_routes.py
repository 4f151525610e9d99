"""Every route the generated kernels can take runs here, forward and backward, against the reference.

``plan`` names the route of each pass (``ROUTES`` lists them) and the launchers record it
(``routes_taken``). Each row below forces one pair of routes (forward, backward) with a private
``tuning=`` dict where a small shape cannot select it (one row uses FASTATTN_FUSED=0, the user's
"general path" knob), runs it under the interpreter in fp32 and fp16 (o, dq, dk, dv with a random
upstream gradient against the float64 quadratic reference, through ``run_case``) and asserts that
exactly those routes ran; then again in fp32 with an initial state in and the final state out (o, the
final state and every gradient, the initial state's too, against the float64 torch path). The last tests check that the rows cover ``ROUTES`` and that ``ROUTES`` is
every name ``plan`` can give.
"""

from __future__ import annotations

import ast
import inspect

import pytest
import torch

from fastattn.kernels.codegen import load_module
from fastattn.kernels.poly import polynomial
from test_kernels import run_case
from test_triton_state import run_state_case

pytestmark = pytest.mark.usefixtures("kernel_env")

SMALL = dict(B=1, H=1, T=40, D=4, DV=8, chunk=16, block_f=16, block_v=None, causal=True, normalize=True)
GENERAL = {"fused": False}

# id, spec, environment, tuning, case (SMALL plus these), routes taken
ROWS = [
    ("empty", "1 + x + x**2/2", {}, {}, dict(T=0), {"empty"}),
    ("fused", "1 + x + x**2/2", {}, {}, dict(T=16), {"fwd/fused", "bwd/fused"}),
    ("fused-segments", "1 + x + x**2/2", {}, {}, dict(segments=2),
     {"fwd/fused/segments", "bwd/fused/segments/saved"}),
    # f = x has no Kronecker layout: without the fused forward its causal forward is the chunk-parallel
    # one on the symmetric table, and the fused backward rebuilds the segment states
    ("fused-bwd-rebuilt", "x", {}, {"fused_fwd": False}, dict(segments=2, normalize=False),
     {"fwd/chunk/symmetric", "bwd/fused/segments/rebuilt"}),
    ("chunk-fused-table", "x", {}, {"chunk_fwd": True, "chunk_fwd_cps": 1}, dict(normalize=False),
     {"fwd/chunk/fused-table", "bwd/fused/segments/saved"}),
    # the GPU default of (1+x)**3 at d16/v64, chosen by shape alone: 165 features (256 padded) x 128 v
    # columns are too large for the fused path
    ("chunk-symmetric-by-shape", "(1+x)**3", {}, {}, dict(D=8, DV=72, block_f=64, normalize=False),
     {"fwd/chunk/symmetric", "bwd/scan/causal/symmetric"}),
    ("chunk-symmetric", "(1+x)**3", {"FASTATTN_FUSED": "0"}, {}, dict(D=3, DV=5, normalize=False),
     {"fwd/chunk/symmetric", "bwd/scan/causal/symmetric"}),
    ("chunk-kron", "1 + x + x**2/2", {}, {**GENERAL, "chunk_fwd": True}, {},
     {"fwd/chunk/kron", "bwd/scan/causal/kron"}),
    ("scan-causal-symmetric", "(1+x)**3", {}, {**GENERAL, "chunk_fwd": False}, dict(D=3, DV=5, normalize=False),
     {"fwd/scan/causal/symmetric", "bwd/scan/causal/symmetric"}),
    ("scan-causal-symmetric-degree2", "1 + x + x**2/2", {}, {**GENERAL, "kron": False, "chunk_fwd": False}, {},
     {"fwd/scan/causal/symmetric", "bwd/scan/causal/symmetric"}),
    ("scan-causal-kron", "x**2", {}, GENERAL, {}, {"fwd/scan/causal/kron", "bwd/scan/causal/kron"}),
    ("scan-causal-kron-const", "3 + x**2", {}, GENERAL, {},
     {"fwd/scan/causal/kron/const", "bwd/scan/causal/kron/const"}),
    ("scan-full-symmetric", "(1+x)**3", {}, {}, dict(D=3, DV=5, causal=False, normalize=False),
     {"fwd/scan/full/symmetric", "bwd/scan/full/symmetric"}),
    ("scan-full-kron", "1 + x + x**2/2", {}, {}, dict(causal=False), {"fwd/scan/full/kron", "bwd/scan/full/kron"}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_route_matches_reference(row, dtype, monkeypatch):
    _, spec, env, tuning, case, routes = row
    monkeypatch.delenv("FASTATTN_FUSED", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    mod = load_module(polynomial(spec))
    mod.routes_taken.clear()
    run_case(spec, dtype, **{**SMALL, **case}, tuning=tuning)
    assert mod.routes_taken == routes


def _routes_with_state(routes, normalize):
    """The routes a row takes with a carried state: a degree-2 f keeps its constant in a Kronecker tile
    (no ".../const"), and an unnormalised call with a gradient on its final z rebuilds the fused
    backward's segment states (their z sums) instead of reusing the forward's."""
    out = {r.replace("/const", "") for r in routes}
    if not normalize:
        out = {r.replace("/saved", "/rebuilt") for r in out}
    return out


# the empty call passes its state through untouched (test_triton_state.test_empty_call_passes_the_state_through)
STATE_ROWS = [r for r in ROWS if r[0] != "empty"]


@pytest.mark.parametrize("row", STATE_ROWS, ids=[r[0] for r in STATE_ROWS])
def test_route_with_a_carried_state_matches_torch(row, monkeypatch):
    # fp32: fp16 with a state runs in tests/test_triton_state.py on the default routes
    _, spec, env, tuning, case, routes = row
    monkeypatch.delenv("FASTATTN_FUSED", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    mod = load_module(polynomial(spec))
    mod.routes_taken.clear()
    case = {**SMALL, **case}
    run_state_case(spec, torch.float32, **case, tuning=tuning)
    assert mod.routes_taken == _routes_with_state(routes, case["normalize"])


def test_kronecker_routes_with_a_carried_state_in_fp16(monkeypatch):
    # the state in and out of 16-bit Kronecker tiles (test_triton_state runs fp16 on the symmetric layouts)
    _, spec, _, tuning, case, routes = next(r for r in ROWS if r[0] == "chunk-kron")
    monkeypatch.delenv("FASTATTN_FUSED", raising=False)
    mod = load_module(polynomial(spec))
    mod.routes_taken.clear()
    run_state_case(spec, torch.float16, **{**SMALL, **case}, tuning=tuning)
    assert mod.routes_taken == routes == {"fwd/chunk/kron", "bwd/scan/causal/kron"}


def test_rows_cover_every_route():
    covered = set().union(*(r[-1] for r in ROWS))
    mod = load_module(polynomial("1 + x + x**2/2"))
    assert covered == set(mod.ROUTES), f"routes no row runs: {sorted(set(mod.ROUTES) - covered)}"


def _route_names(mod):
    """Every route name the module's code can give: the string literals of ``_route`` (the only namer of
    a pass's route) and of its direct ``_took(...)`` calls (the empty call)."""
    names = {c.value for c in ast.walk(ast.parse(inspect.getsource(mod._route)))
             if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.count("/") >= 1}
    for node in ast.walk(ast.parse(inspect.getsource(mod))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_took":
            names |= {c.value for a in node.args for c in ast.walk(a)
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return names


def test_routes_list_every_name_the_code_records():
    mod = load_module(polynomial("1 + x + x**2/2"))
    names = _route_names(mod)
    assert len(names) >= 19
    assert names == set(mod.ROUTES)
    assert len(mod.ROUTES) == len(set(mod.ROUTES))
