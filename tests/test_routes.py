"""Every route the generated kernels can take runs here, forward and backward, against the reference.

The template's host code records each route it takes (``_took(name)`` into ``routes_taken``;
``ROUTES`` lists them). Each row below forces one pair of routes (forward, backward) with the
FASTATTN_* knobs where a small shape cannot select it, runs it under the interpreter in fp32
and fp16 (o, dq, dk, dv with a random upstream gradient against the float64 quadratic
reference, through ``run_case``) and asserts that exactly those routes ran. The last tests
check that the rows cover ``ROUTES`` and that ``ROUTES`` is every name the template's
``_took`` calls can record.
"""

from __future__ import annotations

import ast

import pytest
import torch

from fastattn.kernels.codegen import TEMPLATE_PATH, load_module
from fastattn.kernels.poly import polynomial
from test_kernels import run_case

pytestmark = pytest.mark.usefixtures("kernel_env")

# the knobs that select routes; each row starts from none of them set
KNOBS = ("FASTATTN_FUSED", "FASTATTN_FUSED_FWD", "FASTATTN_FUSED_BWD", "FASTATTN_CHUNK_FWD", "FASTATTN_CHUNK_FWD_CPS",
         "FASTATTN_KRON", "FASTATTN_CONST_OUT", "FASTATTN_FUSED_FWD_BV", "FASTATTN_FUSED_WAVES")
SMALL = dict(B=1, H=1, T=40, D=4, DV=8, chunk=16, block_f=16, block_v=None, causal=True, normalize=True)

# id, spec, knobs, module attributes, case (SMALL plus these), routes taken
ROWS = [
    ("empty", "1 + x + x**2/2", {}, {}, dict(T=0), {"empty"}),
    ("fused", "1 + x + x**2/2", {}, {}, dict(T=16), {"fwd/fused", "bwd/fused"}),
    ("fused-segments", "1 + x + x**2/2", {}, {}, dict(segments=2),
     {"fwd/fused/segments", "bwd/fused/segments/saved"}),
    # the fused kernels' features gathered by loads (import-time knobs FASTATTN_FUSED_LD / _LD_BWD)
    ("fused-ld", "1 + x + x**2/2", {}, {"_FUSED_LD": True, "_FUSED_LD_BWD": True}, dict(segments=2),
     {"fwd/fused/segments", "fwd/fused/ld", "bwd/fused/segments/saved", "bwd/fused/ld"}),
    ("fused-v-tiles", "1 + x + x**2/2", {"FASTATTN_FUSED_FWD_BV": "16"}, {}, dict(DV=20),
     {"fwd/fused/segments", "fwd/fused/v-tiles", "bwd/fused/segments/saved"}),
    # f = x has no Kronecker layout: without the fused forward its causal forward is the chunk-parallel
    # one on the symmetric table, and the fused backward rebuilds the segment states
    ("fused-bwd-rebuilt", "x", {"FASTATTN_FUSED_FWD": "0"}, {}, dict(segments=2, normalize=False),
     {"fwd/chunk/symmetric", "bwd/fused/segments/rebuilt"}),
    ("chunk-fused-table", "x", {"FASTATTN_CHUNK_FWD": "1", "FASTATTN_CHUNK_FWD_CPS": "1"}, {}, dict(normalize=False),
     {"fwd/chunk/fused-table", "bwd/fused/segments/saved"}),
    # the GPU default of (1+x)**3 at d16/v64, chosen by shape alone: 165 features (256 padded) x 128 v
    # columns are too large for the fused path
    ("chunk-symmetric-by-shape", "(1+x)**3", {}, {}, dict(D=8, DV=72, block_f=64, normalize=False),
     {"fwd/chunk/symmetric", "bwd/scan/causal/symmetric"}),
    ("chunk-symmetric", "(1+x)**3", {"FASTATTN_FUSED": "0"}, {}, dict(D=3, DV=5, normalize=False),
     {"fwd/chunk/symmetric", "bwd/scan/causal/symmetric"}),
    ("chunk-kron", "1 + x + x**2/2", {"FASTATTN_FUSED": "0", "FASTATTN_CHUNK_FWD": "1"}, {}, {},
     {"fwd/chunk/kron", "bwd/scan/causal/kron"}),
    ("scan-causal-symmetric", "(1+x)**3", {"FASTATTN_FUSED": "0", "FASTATTN_CHUNK_FWD": "0"}, {},
     dict(D=3, DV=5, normalize=False), {"fwd/scan/causal/symmetric", "bwd/scan/causal/symmetric"}),
    ("scan-causal-symmetric-degree2", "1 + x + x**2/2",
     {"FASTATTN_FUSED": "0", "FASTATTN_KRON": "0", "FASTATTN_CHUNK_FWD": "0"}, {}, {},
     {"fwd/scan/causal/symmetric", "bwd/scan/causal/symmetric"}),
    ("scan-causal-kron", "x**2", {"FASTATTN_FUSED": "0"}, {}, {},
     {"fwd/scan/causal/kron", "bwd/scan/causal/kron"}),
    ("scan-causal-kron-const", "3 + x**2", {"FASTATTN_FUSED": "0"}, {}, {},
     {"fwd/scan/causal/kron/const", "bwd/scan/causal/kron/const"}),
    ("scan-full-symmetric", "(1+x)**3", {}, {}, dict(D=3, DV=5, causal=False, normalize=False),
     {"fwd/scan/full/symmetric", "bwd/scan/full/symmetric"}),
    ("scan-full-kron", "1 + x + x**2/2", {}, {}, dict(causal=False), {"fwd/scan/full/kron", "bwd/scan/full/kron"}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_route_matches_reference(row, dtype, monkeypatch):
    _, spec, knobs, attrs, case, routes = row
    for name in KNOBS:
        monkeypatch.delenv(name, raising=False)
    for name, value in knobs.items():
        monkeypatch.setenv(name, value)
    mod = load_module(polynomial(spec))
    for name, value in attrs.items():
        monkeypatch.setattr(mod, name, value)
    mod.routes_taken.clear()
    run_case(spec, dtype, **{**SMALL, **case})
    assert mod.routes_taken == routes


def test_rows_cover_every_route():
    covered = set().union(*(r[-1] for r in ROWS))
    mod = load_module(polynomial("1 + x + x**2/2"))
    assert covered == set(mod.ROUTES), f"routes no row runs: {sorted(set(mod.ROUTES) - covered)}"


def _recorded_names(source):
    """Every string literal inside a ``_took(...)`` call of the template's source."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_took":
            names |= {c.value for a in node.args for c in ast.walk(a)
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return names


def test_routes_list_every_name_the_code_records():
    mod = load_module(polynomial("1 + x + x**2/2"))
    names = _recorded_names(TEMPLATE_PATH.read_text())
    assert len(names) >= 20
    assert names == set(mod.ROUTES)
    assert len(mod.ROUTES) == len(set(mod.ROUTES))
