"""A carried state on the Triton route (issue 15), under the interpreter in fp32 and fp16.

The State holds its sums in the symmetric basis; a kernel pass holds them in its plan's layout
(``state_map``: the padded symmetric table, or the Kronecker tiles of a degree-2 f). The chain:
the map relates the two feature maps exactly and has a left inverse; then a prefill of T1 tokens
that hands its final state to a call over the next T2 gives the one call over T1 + T2 (o and the
final state), and o, the final state and the gradients of q, k, v and of the initial state (S, z),
with a random upstream gradient on o and on the final state, equal the float64 torch path's.
"""

from __future__ import annotations

import pytest
import torch

from fastattn.attention.functional import fast_attention
from fastattn.attention.state import State
from fastattn.kernels import naive
from fastattn.kernels.checks import assert_close
from fastattn.kernels.codegen import load_module
from fastattn.kernels.poly import check_normalizer, polynomial
from test_kernels import _kron_features

pytestmark = pytest.mark.usefixtures("kernel_env")


def _plan(mod, D, DV, T, causal=True, tuning=None, block_f=64):
    return mod.plan((1, 1, T, D), (1, 1, T, DV), torch.float32, "cpu", causal, True, "fwd", tuning, block_f=block_f,
                    state=True)


# spec, D, plan overrides, layout the plan must pick
MAPS = [
    ("1 + x + x**2/2", 16, {}, "symmetric"),
    ("1 + x + x**2/2", 64, {}, "kron"),
    ("1 + x + x**2/2", 12, {"fused": False}, "kron"),    # a low tile with a free column holds the constant
    ("3 + x**2", 8, {"fused": False}, "kron"),          # the constant in a Kronecker group of its own
    ("x**2", 6, {"fused": False}, "kron"),              # a partial block of columns
    ("(1+x)**3", 8, {"fused": False}, "symmetric"),
]


@pytest.mark.parametrize("spec, D, tuning, layout", MAPS, ids=[f"{m[0]}-d{m[1]}-{m[3]}" for m in MAPS])
def test_state_map_relates_the_feature_maps_exactly(spec, D, tuning, layout):
    poly = polynomial(spec)
    mod = load_module(poly)
    p = _plan(mod, D, 8, 64, tuning=tuning, block_f=16 if D < 16 else 64)
    assert p.kron == (layout == "kron") and not p.const_out
    scale = 0.3
    smap = mod.state_map(p, D, scale, "cpu")
    k = torch.randn(7, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    psi_sym = naive.symmetric_features(k, poly, scale, "psi")  # [7, F]
    assert psi_sym.shape[-1] == mod.feature_dim(D)
    if p.kron:
        ktab, _, w_psi, (KG, KA) = mod.kron_tables(D, scale, "cpu", p.table_block_f, None, False)
        psi_kernel = _kron_features(k, ktab, w_psi.double(), p.table_block_f, KG, KA)
    else:
        idx, _, w_psi, n = mod.feature_tables(D, scale, "cpu", p.table_block_f)
        psi_kernel = torch.nn.functional.pad(psi_sym, (0, idx.shape[1] - n))
    # every kernel feature is its State feature times the map's ratio (the kernel's fp32 weights: 1e-7)
    got = mod.to_kernel(psi_sym.T[None], smap)[0].T.double()
    assert got.shape == psi_kernel.shape
    torch.testing.assert_close(got, psi_kernel, rtol=1e-6, atol=1e-6)
    # and the map back is its left inverse, exactly up to fp32 rounding
    x = torch.randn(3, mod.feature_dim(D), 5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(mod.from_kernel(mod.to_kernel(x, smap), smap), x, rtol=1e-6, atol=1e-6)
    # the map is a gather with orthonormal columns: back is its transpose, so gradients cross it both ways
    y = torch.randn(3, p.f_pad, 5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close((mod.to_kernel(x, smap) * y).sum(), (x * mod.from_kernel(y, smap)).sum())


def test_state_map_refuses_a_layout_without_the_constant():
    mod = load_module(polynomial("1 + x + x**2/2"))
    p = mod.plan((1, 1, 64, 64), (1, 1, 64, 64), torch.float32, "cpu", True, True, "fwd", {"fused": False})
    assert p.const_out
    with pytest.raises(ValueError, match="has no feature in the kernel layout"):
        mod.state_map(p, 64, 0.125, "cpu")


def _inputs(seed, B, H, T, D, DV, F):
    g = torch.Generator().manual_seed(seed)
    q, k = (0.5 * torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
    do = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
    dS, dz = torch.randn(B, H, F, DV, generator=g, dtype=torch.float64), torch.randn(B, H, F, generator=g,
                                                                                       dtype=torch.float64)
    # an initial state a normaliser can divide by: the sums over a real prefix of 9 tokens
    kp = 0.5 * torch.randn(B, H, 9, D, generator=g, dtype=torch.float64)
    vp = torch.randn(B, H, 9, DV, generator=g, dtype=torch.float64)
    return q, k, v, do, dS, dz, kp, vp


def _fix(spec, normalize):
    # (1+x)**3 is negative below -1: normalised, it divides by |sum f| + eps
    return "abs" if normalize and not polynomial(spec).positive else None


def _two_calls(spec, q, k, v, S0, z0, T1, normalize, backend, chunk):
    """o over T1 + T2 tokens and the final state, from a prefill of T1 tokens and a call on the rest."""
    kw = dict(normalize=normalize, normalizer_fix=_fix(spec, normalize), backend=backend, chunk=chunk,
              output_final_state=True)
    st = State(S0, z0, torch.full((q.shape[0],), 9, dtype=torch.int64))
    o1, st1 = fast_attention(q[:, :, :T1], k[:, :, :T1], v[:, :, :T1], spec, initial_state=st, **kw)
    o2, st2 = fast_attention(q[:, :, T1:], k[:, :, T1:], v[:, :, T1:], spec, initial_state=st1, **kw)
    return torch.cat([o1, o2], 2), st2


# id, spec, D, DV, normalize, path the default plan takes (every call, forward and backward)
CASES = [
    ("based-d16", "1 + x + x**2/2", 16, 16, True, "fused"),
    ("based-d16-unnormalised", "1 + x + x**2/2", 16, 16, False, "fused"),
    ("based-d64", "1 + x + x**2/2", 64, 16, True, "scan/causal/kron"),
    ("linear-d64", "x", 64, 16, False, "fused"),
    ("cubic-d8", "(1+x)**3", 8, 8, True, "fused"),
    ("cubic-d8-unnormalised", "(1+x)**3", 8, 8, False, "fused"),
]
# T = 63 and 65, cut after 1 token and after 20 (a prefill and a continuation of several chunks, the last
# ragged; the fused path cuts the longer calls into segments)
SPLITS = [(1, 62), (20, 45)]
# d64 runs on the first split only, and degree 2 there (2145 features in 38 Kronecker tiles of 8 x 8 groups,
# the constant in a group of its own) in fp32 on one head and over 1 + 16 tokens (the interpreter's time grows
# with tiles x chunks: 1 + 62 took ~80 s); fp16 Kronecker tiles with a state run in test_routes (chunk-kron)
D64_DEGREE2_SPLIT = (1, 16)
PARAMS = [(c, D64_DEGREE2_SPLIT if c[0] == "based-d64" else s, d) for c in CASES for s in SPLITS
          for d in (torch.float32, torch.float16)
          if c[2] < 64 or (s == SPLITS[0] and (c[1] == "x" or d == torch.float32))]


@pytest.mark.parametrize("case, split, dtype", PARAMS,
                         ids=[f"{c[0]}-{a}+{b}-{str(d)[6:]}" for c, (a, b), d in PARAMS])
def test_prefill_then_continue_equals_one_call(case, split, dtype):
    _, spec, D, DV, normalize, path = case
    mod = load_module(polynomial(spec))
    T1, T2 = split
    F = mod.feature_dim(D)
    q, k, v, do, dS, dz, kp, vp = _inputs(T1 + T2 + D, 1, 1 if D == 64 else 2, T1 + T2, D, DV, F)
    _, pre = fast_attention(kp, kp, vp, spec, normalize=False, backend="torch", output_final_state=True)
    chunk = 16

    def run(backend, cast):
        x = [t.to(cast).requires_grad_() for t in (q, k, v)]
        init = [t.to(torch.float64 if cast == torch.float64 else torch.float32).requires_grad_()
                for t in (pre.S, pre.z)]
        o, st = _two_calls(spec, *x, *init, T1, normalize, backend, chunk)
        ((o.double() * do).sum() + (st.S.double() * dS).sum() + (st.z.double() * dz).sum()).backward()
        return o, st, [t.grad for t in x + init]

    mod.routes_taken.clear()
    o, st, grads = run("triton", dtype)
    # "fwd/fused/segments" and "bwd/fused/segments/saved" are the fused path too
    assert {r.split("/", 1)[1].split("/segments")[0] for r in mod.routes_taken} == {path}
    ref_o, ref_st, ref_grads = run("torch", torch.float64)
    assert_close("o", ref_o, o, dtype)
    assert_close("S", ref_st.S, st.S, dtype)
    assert_close("z", ref_st.z, st.z, dtype)
    assert st.tokens.tolist() == [9 + T1 + T2]
    for name, r, g in zip(("dq", "dk", "dv", "dS0", "dz0"), ref_grads, grads):
        assert_close(name, r, g, dtype)
    # the same tokens in one call, from the same initial state, give the same o and final state
    one_o, one_st = fast_attention(q.to(dtype), k.to(dtype), v.to(dtype), spec, normalize=normalize, chunk=chunk,
                                   normalizer_fix=_fix(spec, normalize),
                                   initial_state=State(pre.S.float(), pre.z.float(), pre.tokens), backend="triton",
                                   output_final_state=True)
    assert_close("o (one call)", ref_o, one_o, dtype)
    assert_close("S (one call)", ref_st.S, one_st.S, dtype)
    assert_close("z (one call)", ref_st.z, one_st.z, dtype)


def test_final_state_gradient_alone_reaches_k_v_and_the_initial_state():
    # no gradient on o (the call's only use is its state): the backward runs with do = 0
    spec = "1 + x + x**2/2"
    q, k, v, _, dS, dz, kp, vp = _inputs(5, 1, 1, 40, 4, 8, load_module(polynomial(spec)).feature_dim(4))
    _, pre = fast_attention(kp, kp, vp, spec, normalize=False, backend="torch", output_final_state=True)
    got = []
    for backend, dt in (("triton", torch.float32), ("torch", torch.float64)):
        x = [t.to(dt).requires_grad_() for t in (q, k, v)]
        init = [t.to(dt).requires_grad_() for t in (pre.S, pre.z)]
        _, st = fast_attention(*x, spec, initial_state=State(*init, pre.tokens), output_final_state=True,
                               backend=backend, chunk=16)
        ((st.S.double() * dS).sum() + (st.z.double() * dz).sum()).backward()
        got.append([t.grad for t in x + init])
    for name, g, r in zip(("dk", "dv", "dS0", "dz0"), got[0][1:], got[1][1:]):
        assert_close(name, r, g, torch.float32)
    # q reaches no state: torch leaves it out of the graph, the kernels give it a zero gradient
    assert got[1][0] is None and got[0][0] is not None and not got[0][0].any()


def test_empty_call_passes_the_state_through():
    mod = load_module(polynomial("1 + x + x**2/2"))
    q = torch.randn(1, 2, 0, 4)
    S, z = torch.randn(1, 2, mod.feature_dim(4), 8), torch.rand(1, 2, mod.feature_dim(4))
    o, (SF, zF) = mod.poly_attention(q, q, torch.randn(1, 2, 0, 8), initial_state=(S, z), output_final_state=True)
    assert o.shape == (1, 2, 0, 8)
    assert torch.equal(SF, S) and torch.equal(zF, z)


def test_a_state_of_the_wrong_shape_is_refused():
    mod = load_module(polynomial("1 + x + x**2/2"))
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match=r"initial_state \(S, z\) must be"):
        mod.poly_attention(q, q, q, initial_state=(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3)))


def run_state_case(spec, dtype, B, H, T, D, DV, chunk, block_f, block_v, causal, normalize, seed=0, **kw):
    """One call of the generated module with an initial state and its final state out, against the float64
    torch path: o, the final (S, z), and dq, dk, dv, dS0, dz0 with random upstream gradients on o and on the
    final state (``kw``: more poly_attention arguments, e.g. segments, tuning). test_routes runs it per route."""
    poly = polynomial(spec)
    mod = load_module(poly)
    fix = check_normalizer(poly, normalize, "abs" if normalize and not poly.positive else None)
    F = mod.feature_dim(D)
    q, k, v, do, dS, dz, kp, vp = _inputs(seed, B, H, T, D, DV, F)
    _, pre = fast_attention(kp, kp, vp, spec, normalize=False, backend="torch", output_final_state=True)
    got, ref = [], []
    for out, cast in ((got, dtype), (ref, torch.float64)):
        x = [t.to(cast).requires_grad_() for t in (q, k, v)]
        init = [t.to(torch.float64 if cast == torch.float64 else torch.float32).requires_grad_()
                for t in (pre.S, pre.z)]
        if out is got:
            o, (SF, zF) = mod.poly_attention(*x, causal=causal, normalize=normalize, normalizer_fix=fix, chunk=chunk,
                                             block_f=block_f, block_v=block_v, initial_state=tuple(init),
                                             output_final_state=True, **kw)
        else:
            o, st = fast_attention(*x, spec, is_causal=causal, normalize=normalize, normalizer_fix=fix,
                                   backend="torch", initial_state=State(*init, pre.tokens), output_final_state=True)
            SF, zF = st.S, st.z
        ((o.double() * do).sum() + (SF.double() * dS).sum() + (zF.double() * dz).sum()).backward()
        out += [o, SF, zF] + [t.grad for t in x + init]
    for name, r, g in zip(("o", "S", "z", "dq", "dk", "dv", "dS0", "dz0"), ref, got):
        assert_close(name, r, g, dtype)
