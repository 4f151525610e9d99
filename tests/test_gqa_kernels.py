"""Grouped-query attention in the generated kernels (issue 15): k, v with H_kv heads, H_q = G * H_kv.

The kernels read key/value head h // G for query head h; the backward's dk / dv walks and intra tiles run
per key/value head and add up its G query heads in registers, and a carried state is a key/value head's.
Every route of ``test_routes.ROWS`` (forced the same way) runs with G > 1 under the interpreter in fp32:
o, dq, dk, dv equal the call with K and V repeated G times (``repeat_interleave``, the same kernels on
H_q heads) and the float64 reference; then again with an initial state in and the final state out (the
final state and the initial state's gradients too) against the float64 torch path, which never repeats
K or V (the repeated Triton call is left out there: each interpreted call costs ~1 s of the file's budget).
Each route runs at G = 2 without a state and at G = 4 with one; a spy on the launches proves that the
kernels receive the H_kv tensors themselves, on two key/value heads of two query heads each.
"""

from __future__ import annotations

import pytest
import torch

from fastattn.attention.functional import fast_attention
from fastattn.attention.state import State
from fastattn.kernels import naive
from fastattn.kernels.checks import assert_close
from fastattn.kernels.codegen import load_module
from fastattn.kernels.poly import polynomial
from test_kernels import _term_sizes
from test_routes import ROWS, SMALL, _routes_with_state

pytestmark = pytest.mark.usefixtures("kernel_env")

#: Query heads per key/value head of the rows without and with a carried state (on one key/value head;
#: test_kernels_read_the_kv_heads_without_a_copy runs two).
GROUPS = {False: 2, True: 4}
#: One row of test_routes.ROWS per set of routes (the others repeat a set on another f or shape), with the
#: tokens each runs on: 2 chunks of 16, or 3 where the row's routes need two segments.
SEGMENTED = ("fused-segments", "fused-bwd-rebuilt", "chunk-fused-table")
GQA_ROWS = [(r[0], r[1], r[2], r[3], {**r[4], "T": r[4].get("T", 40 if r[0] in SEGMENTED else 24)}, r[5])
            for r in ROWS if r[0] not in ("chunk-symmetric-by-shape", "scan-causal-symmetric")]


def _inputs(seed, B, Hk, G, T, D, DV, F, positive):
    g = torch.Generator().manual_seed(seed)
    if positive:
        # the abs-fixed normaliser is ill-conditioned where sum f crosses 0 (as test_kernels._inputs)
        q = 0.5 + torch.rand(B, Hk * G, T, D, generator=g, dtype=torch.float64)
        k = 0.5 + torch.rand(B, Hk, T, D, generator=g, dtype=torch.float64)
    else:
        q = 0.5 * torch.randn(B, Hk * G, T, D, generator=g, dtype=torch.float64)
        k = 0.5 * torch.randn(B, Hk, T, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hk, T, DV, generator=g, dtype=torch.float64)
    do = torch.randn(B, Hk * G, T, DV, generator=g, dtype=torch.float64)
    dS = torch.randn(B, Hk, F, DV, generator=g, dtype=torch.float64)
    dz = torch.randn(B, Hk, F, generator=g, dtype=torch.float64)
    # an initial state a normaliser can divide by: the sums over a real prefix of 9 tokens
    kp = 0.5 * torch.randn(B, Hk, 9, D, generator=g, dtype=torch.float64)
    vp = torch.randn(B, Hk, 9, DV, generator=g, dtype=torch.float64)
    return q, k, v, do, dS, dz, kp, vp


def run_gqa_case(spec, dtype, G, B, H, T, D, DV, chunk, block_f, block_v, causal, normalize, state, repeated=True,
                 seed=0, **kw):
    """The generated module on q [B, H * G, T, D] and k, v [B, H, T, *] against (1) the same call with k, v (and
    the initial state) repeated G times (with ``repeated``) and (2) the float64 reference: o, dq, dk, dv, and
    with ``state`` the final (S, z) and the initial state's gradients, under random upstream gradients (``kw``:
    tuning, segments). Returns the Triton call's (q, k, v)."""
    poly = polynomial(spec)
    mod = load_module(poly)
    fix = "abs" if normalize and not poly.positive else None
    F = mod.feature_dim(D)
    q, k, v, do, dS, dz, kp, vp = _inputs(seed, B, H, G, T, D, DV, F, positive=fix is not None and not state)
    pre = None
    if state:
        _, pre = fast_attention(kp, kp, vp, spec, normalize=False, backend="torch", output_final_state=True)
    args = dict(causal=causal, normalize=normalize, normalizer_fix=fix, chunk=chunk, block_f=block_f,
                block_v=block_v, **kw)
    names = ["o", "dq", "dk", "dv"] + (["S", "z", "dS0", "dz0"] if state else [])
    runs = {}
    for run in ("gqa", "repeated", "reference") if repeated else ("gqa", "reference"):
        cast = torch.float64 if run == "reference" else dtype
        x = [t.to(cast).requires_grad_() for t in (q, k, v)]
        init = []
        if state:
            init = [t.to(torch.float64 if run == "reference" else torch.float32).requires_grad_()
                    for t in (pre.S, pre.z)]
        SF = zF = None
        if run == "gqa":
            out = mod.poly_attention(*x, initial_state=tuple(init) if state else None, output_final_state=state,
                                     **args)
            o, (SF, zF) = out if state else (out, (None, None))
        elif run == "repeated":
            kr, vr = (t.repeat_interleave(G, 1) for t in x[1:])
            ir = tuple(t.repeat_interleave(G, 1) for t in init) if state else None
            out = mod.poly_attention(x[0], kr, vr, initial_state=ir, output_final_state=state, **args)
            # every query head of a group sums the same keys: its first head's final state is the group's
            o, (SF, zF) = (out[0], (out[1][0][:, ::G], out[1][1][:, ::G])) if state else (out, (None, None))
        elif state:
            o, st = fast_attention(*x, spec, is_causal=causal, normalize=normalize, normalizer_fix=fix,
                                   enable_gqa=True, backend="torch", initial_state=State(*init, pre.tokens),
                                   output_final_state=True)
            SF, zF = st.S, st.z
        else:
            kr, vr = (t.repeat_interleave(G, 1) for t in x[1:])
            o = naive.quadratic_attention(x[0], kr, vr, poly, causal=causal, normalize=normalize,
                                          normalizer_fix=fix)
        loss = (o.double() * do).sum()
        if state:
            loss = loss + (SF.double() * dS).sum() + (zF.double() * dz).sum()
        loss.backward()
        runs[run] = [o, *[t.grad for t in x]] + ([SF, zF, *[t.grad for t in init]] if state else [])
        if run == "gqa":
            inputs = x
    assert runs["gqa"][0].shape == (B, H * G, T, DV) and runs["gqa"][0].dtype == dtype
    assert runs["gqa"][2].shape == (B, H, T, D) and runs["gqa"][3].shape == (B, H, T, DV)
    terms = [None] * len(names)
    if not state:
        rk, rv = (t.repeat_interleave(G, 1) for t in (k, v))
        sizes = _term_sizes(q, rk, rv, do, poly, causal, normalize, fix)
        # the sizes of dk, dv sum over each group, as the gradients do
        fold = [s.unflatten(1, (H, G)).sum(2) for s in sizes[2:]]
        terms = [sizes[0], sizes[1], *fold]
    for i, name in enumerate(names):
        if repeated:
            assert_close(f"{name} vs repeated k, v", runs["repeated"][i], runs["gqa"][i], dtype)
        assert_close(f"{name} vs float64", runs["reference"][i], runs["gqa"][i], dtype, terms[i])
    return inputs


def _force(row, monkeypatch):
    _, spec, env, tuning, case, routes = row
    monkeypatch.delenv("FASTATTN_FUSED", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    mod = load_module(polynomial(spec))
    mod.routes_taken.clear()
    return mod, spec, tuning, {**SMALL, **case}, routes


def test_gqa_rows_cover_every_route():
    covered = set().union(*(r[-1] for r in GQA_ROWS))
    assert covered == set(load_module(polynomial("1 + x + x**2/2")).ROUTES)


@pytest.mark.parametrize("row", GQA_ROWS, ids=[r[0] for r in GQA_ROWS])
def test_gqa_route_matches_repeated_kv_and_reference(row, monkeypatch):
    mod, spec, tuning, case, routes = _force(row, monkeypatch)
    run_gqa_case(spec, torch.float32, GROUPS[False], **case, state=False, tuning=tuning)
    assert mod.routes_taken == routes


# the empty call passes its state through (tests/test_triton_state.py); with a state a degree-2 f keeps its
# constant in a Kronecker tile, so the ".../const" row takes the routes of "scan-causal-kron"
STATE_ROWS = [r for r in GQA_ROWS if r[0] not in ("empty", "scan-causal-kron-const")]


@pytest.mark.parametrize("row", STATE_ROWS, ids=[r[0] for r in STATE_ROWS])
def test_gqa_route_with_a_carried_state_matches_torch(row, monkeypatch):
    mod, spec, tuning, case, routes = _force(row, monkeypatch)
    run_gqa_case(spec, torch.float32, GROUPS[True], **case, state=True, repeated=False, tuning=tuning)
    assert mod.routes_taken == _routes_with_state(routes, case["normalize"])


@pytest.mark.parametrize("name", ["fused", "scan-causal-symmetric-degree2"])
def test_gqa_in_fp16(name, monkeypatch):
    # 16-bit operands on the fused and the general scan paths (dk, dv summed over the group in fp32)
    mod, spec, tuning, case, routes = _force(next(r for r in GQA_ROWS if r[0] == name), monkeypatch)
    run_gqa_case(spec, torch.float16, 2, **case, state=False, tuning=tuning)
    assert mod.routes_taken == routes


class _LaunchSpy:
    """Stands in for one jit kernel: records each launch's tensor arguments by parameter name, then launches."""

    def __init__(self, kernel, seen):
        self.kernel, self.seen = kernel, seen

    def __getitem__(self, grid):
        def launch(*args, **kw):
            values = dict(zip(self.kernel.arg_names, args), **kw)
            self.seen.append((self.kernel.__name__, {n: x for n, x in values.items() if isinstance(x, torch.Tensor)}))
            return self.kernel[grid](*args, **kw)
        return launch


@pytest.mark.parametrize("tuning", [{}, {"fused": False}], ids=["fused", "general"])
def test_kernels_read_the_kv_heads_without_a_copy(tuning, monkeypatch):
    # two key/value heads of two query heads each, in two segments of one chunk, against the float64 reference;
    # every launch that reads keys or values gets the caller's H_kv tensors (same storage), and dk, dv are
    # H_kv-head buffers: a K or V repeated per query head would show up here as another tensor
    monkeypatch.delenv("FASTATTN_FUSED", raising=False)
    mod = load_module(polynomial("1 + x + x**2/2"))
    seen = []
    for name in [n for n in dir(mod) if n.endswith("_kernel")]:
        monkeypatch.setattr(mod, name, _LaunchSpy(getattr(mod, name), seen))
    case = {**SMALL, "H": 2, "T": 24, "segments": 2}
    q, k, v = run_gqa_case("1 + x + x**2/2", torch.float32, 2, **case, state=False, repeated=False,
                           tuning={**tuning, "seg_rows": 1})
    want = {"_intra_fwd_kernel", "_inter_fwd_kernel", "_intra_bwd_kernel", "_inter_bwd_kernel"} if tuning else \
        {"_fused_fwd_kernel", "_fused_bwd_kernel"}
    assert want <= {name for name, _ in seen}
    reads = [(name, arg, x) for name, tensors in seen for arg, x in tensors.items() if arg in ("k", "v")]
    assert reads, "no launch took k or v"
    for name, arg, x in reads:
        user = k if arg == "k" else v
        assert x.data_ptr() == user.data_ptr() and x.shape == user.shape, f"{name} got a copy of {arg}"
    # the forward's segment sums (x, y) run over the keys and values themselves too
    sums = [t for name, t in seen if name == "_segment_state_kernel" and t["x"].shape[1] == 2]
    assert len(sums) < len([name for name, _ in seen if name == "_segment_state_kernel"]), "no backward sums"
    assert sums and all(t["x"].data_ptr() == k.data_ptr() and t["y"].data_ptr() == v.data_ptr() for t in sums)
    grads = [(arg, x) for _, tensors in seen for arg, x in tensors.items() if arg in ("dk", "dv")]
    assert grads and all(x.shape[1] == 2 for _, x in grads)


def test_kv_heads_that_do_not_divide_the_query_heads_are_refused():
    mod = load_module(polynomial("1 + x + x**2/2"))
    q, k = torch.randn(1, 6, 5, 4), torch.randn(1, 4, 5, 4)
    with pytest.raises(ValueError, match="q has 6 heads and k, v 4: grouped-query attention needs H_kv >= 1 "
                                         "dividing H"):
        mod.poly_attention(q, k, k)
    with pytest.raises(ValueError, match=r"expected q \[B, H, T, D\], k \[B, H_kv, T, D\]"):
        mod.poly_attention(q, k[:, :3], k[:, :2])


def test_a_state_per_query_head_is_refused_under_gqa():
    # the state is a key/value head's: [B, H_kv, F, DV]
    mod = load_module(polynomial("1 + x + x**2/2"))
    q, k = torch.randn(1, 4, 5, 4), torch.randn(1, 2, 5, 4)
    F = mod.feature_dim(4)
    with pytest.raises(ValueError, match=r"initial_state \(S, z\) must be \[B, H_kv, F, DV\] = \[1, 2, 15, 4\]"):
        mod.poly_attention(q, k, k, initial_state=(torch.zeros(1, 4, F, 4), torch.zeros(1, 4, F)))
