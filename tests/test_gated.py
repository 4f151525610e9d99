"""The gated Triton route of ``fast_attention(..., g=...)`` (fastattn/kernels/gated.py), on the interpreter.

Chain: the identity dL/dG_t = phi_t . dphi_t - psi_t . dpsi_t the backward rests on, against torch
autograd of a float64 quadratic form -> the torch path of ``fast_attention`` in float64 (itself tested
against the quadratic reference in test_attention.py) -> the Triton route in fp32 and fp16, on o and on
dq, dk, dv, dg (and the carried state and its gradient), with a random upstream gradient. Every case
proves the Triton kernels ran: the torch path is made to fail and the kernel entry counts its calls.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from fastattn.attention import FastAttention, State, fast_attention, functional
from fastattn.errors import KernelError
from fastattn.kernels import gated, naive, polynomial
from fastattn.kernels.checks import assert_close

pytestmark = pytest.mark.usefixtures("kernel_env")

F2 = "1 + x + x**2/2"
# the torch path itself, kept before any test replaces it
_TORCH = functional._torch_attention


@pytest.fixture
def triton_only(monkeypatch):
    """Counts the gated kernel's calls and makes the torch path raise: a case cannot pass by falling back."""
    calls = []
    kernel = gated.gated_chunk

    def counted(*args, **kwargs):
        calls.append((args[0].shape[0], args[1].shape[0]))  # rows of phi and psi: query and key/value heads
        return kernel(*args, **kwargs)

    def no_torch(*args, **kwargs):
        raise AssertionError("the torch path ran where the gated Triton kernels should have")

    monkeypatch.setattr(gated, "gated_chunk", counted)
    monkeypatch.setattr(functional, "_torch_attention", no_torch)
    return calls


def _inputs(B, Hq, Hk, T, D, DV, seed, strong=True):
    # strong: g = -5 on tokens 5..8 and -8 on token 63 (T >= 64)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, T, D, generator=gen, dtype=torch.float64)
    k = torch.randn(B, Hk, T, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, Hk, T, DV, generator=gen, dtype=torch.float64)
    g = -torch.rand(B, Hk, T, generator=gen, dtype=torch.float64)
    if strong:
        # strongly negative gates inside a chunk and on a chunk's last token (the state's decay)
        g[..., 5:9] = -5.0
        g[..., 63] = -8.0
    return q, k, v, g


def _run(q, k, v, g, f, normalize, gqa, dtype, state, backend):
    xs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    gate = g.detach().to(torch.float32 if dtype != torch.float64 else dtype).requires_grad_()
    st = None
    if state is not None:
        S, z = (x.detach().clone().requires_grad_() for x in state)
        st = State(S, z, torch.full((q.shape[0],), 7))
    out = fast_attention(*xs, f, normalize=normalize, enable_gqa=gqa, g=gate, initial_state=st,
                         output_final_state=state is not None, backend=backend)
    o, fin = out if state is not None else (out, None)
    return xs, gate, st, o, fin


def _terms(q, k, v, g, f, gqa, state, do):
    """Sizes of dq, dk, dv, dg along the numerator's path alone (the denominator held, float64).

    A normalised gradient is two paths that cancel (x**2 at a query nearly orthogonal to the few keys it
    sees: z near 0); rounding is relative to one path, as in test_chunked.py.
    """
    xs = [x.detach().requires_grad_() for x in (q, k, v, g)]
    st = None if state is None else State(*state, torch.full((q.shape[0],), 7))
    run = dict(enable_gqa=gqa, initial_state=st, backend="torch", normalize=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(functional, "_torch_attention", _TORCH)
        n = fast_attention(*xs[:3], f, g=xs[3], **run)
        ones = torch.ones_like(v[..., :1])
        st1 = None if state is None else State(state[1][..., None], state[1], st.tokens)
        z = fast_attention(q, k, ones, f, g=g, **{**run, "initial_state": st1})[..., 0]
    fix = "abs" if not polynomial(f).positive else None
    den = naive.denominator(z, fix, 1e-6)
    (n / den[..., None] * do).sum().backward()
    return [x.grad for x in xs]


# id: f, normalize, (B, H_q, H_kv), T, D, DV, dtype, carried state
CASES = [
    ("taylor2-norm-fp32", F2, True, (1, 2, 2), 100, 4, 6, torch.float32, False),
    ("taylor2-norm-gqa-state-fp32", F2, True, (1, 4, 2), 100, 4, 5, torch.float32, True),
    ("linear-unnorm-fp32", "x", False, (2, 1, 1), 100, 8, 4, torch.float32, False),
    ("linear-unnorm-gqa3-fp32", "x", False, (2, 6, 2), 70, 8, 4, torch.float32, False),
    ("linear-unnorm-state-fp32", "x", False, (1, 2, 2), 70, 16, 8, torch.float32, True),
    # f = c x takes q and k unscaled (c s on the outputs, sqrt|c s| on the state): c < 0, GQA and a state
    ("linear-neg-unnorm-gqa-state-fp32", "-0.5*x", False, (1, 4, 2), 70, 8, 4, torch.float32, True),
    ("power2-norm-fp32", "x**2", True, (1, 2, 2), 100, 4, 4, torch.float32, False),
    ("power2-unnorm-state-fp32", "x**2", False, (1, 1, 1), 100, 8, 4, torch.float32, True),
    # two feature tiles (F = 91) and two value tiles (DV + 1 = 71 columns, fp32 tiles of 64)
    ("taylor2-d12-v70-tiles-state-fp32", F2, True, (1, 1, 1), 70, 12, 70, torch.float32, True),
    ("taylor2-unnorm-fp16", F2, False, (1, 2, 2), 100, 4, 6, torch.float16, False),
    ("taylor2-norm-state-fp16", F2, True, (1, 2, 1), 100, 4, 4, torch.float16, True),
    ("linear-unnorm-fp16", "x", False, (1, 2, 2), 100, 8, 4, torch.float16, False),
    ("power2-norm-fp16", "x**2", True, (1, 2, 2), 100, 4, 4, torch.float16, False),
]


@pytest.mark.parametrize("f, normalize, heads, T, D, DV, dtype, carried", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_triton_route_matches_the_torch_path(triton_only, f, normalize, heads, T, D, DV, dtype, carried):
    B, Hq, Hk = heads
    q, k, v, g = _inputs(B, Hq, Hk, T, D, DV, seed=T + D)
    # inputs rounded to the dtype first, so both sides see the same numbers
    q, k, v = (x.to(dtype).double() for x in (q, k, v))
    state = None
    if carried:
        F = polynomial(f).feature_dim(D)
        gen = torch.Generator().manual_seed(1)
        # a state as a prefill of a few unit-scale tokens leaves it (z > 0 for the normalised f)
        keys = torch.randn(B, Hk, 3, D, generator=gen, dtype=torch.float64)
        psi = naive.symmetric_features(keys, polynomial(f), 1 / math.sqrt(D), "psi")
        state = (psi.transpose(-1, -2) @ torch.randn(B, Hk, 3, DV, generator=gen, dtype=torch.float64),
                 psi.sum(-2))
        assert state[0].shape == (B, Hk, F, DV)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(functional, "_torch_attention", _TORCH)
        ref = _run(q, k, v, g, f, normalize, Hq != Hk, torch.float64, state, "torch")
    got = _run(q, k, v, g, f, normalize, Hq != Hk, dtype, None if state is None else
               tuple(x.float() for x in state), "auto")
    # once, on every query head and only the key/value heads (GQA repeats nothing)
    assert triton_only == [(B * Hq, B * Hk)], f"the gated Triton kernel ran as {triton_only}"
    assert got[3].dtype == dtype
    gen = torch.Generator().manual_seed(2)
    do = torch.randn(ref[3].shape, generator=gen, dtype=torch.float64)
    loss_ref, loss_got = (ref[3] * do).sum(), (got[3].double() * do).sum()
    if carried:
        dS = torch.randn(ref[4].S.shape, generator=gen, dtype=torch.float64)
        dz = torch.randn(ref[4].z.shape, generator=gen, dtype=torch.float64)
        loss_ref = loss_ref + (ref[4].S * dS).sum() + (ref[4].z * dz).sum()
        loss_got = loss_got + (got[4].S.double() * dS).sum() + (got[4].z.double() * dz).sum()
        assert got[4].S.dtype == torch.float32 and got[4].tokens.tolist() == ref[4].tokens.tolist()
        # the state's sums never pass through 16 bits, but the features they sum do
        assert_close("S_T", ref[4].S, got[4].S, dtype)
        assert_close("z_T", ref[4].z, got[4].z, dtype)
    loss_ref.backward()
    loss_got.backward()
    terms = _terms(q, k, v, g, f, Hq != Hk, state, do) if normalize else [None] * 4
    assert_close("o", ref[3], got[3], dtype)
    for name, a, b, t in zip(("dq", "dk", "dv"), ref[0], got[0], terms[:3]):
        assert_close(name, a.grad, b.grad, dtype, t)
    assert_close("dg", ref[1].grad, got[1].grad, dtype, terms[3])
    if carried:
        assert_close("dS0", ref[2].S.grad, got[2].S.grad, dtype)
        assert_close("dz0", ref[2].z.grad, got[2].z.grad, dtype)


def test_chunk_sizes_agree_with_the_torch_path(triton_only):
    q, k, v, g = _inputs(1, 2, 2, 100, 4, 4, seed=8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(functional, "_torch_attention", _TORCH)
        want = fast_attention(q, k, v, F2, g=g, backend="torch")
    for chunk in (16, 32, 128):
        got = fast_attention(q.float(), k.float(), v.float(), F2, g=g.float(), chunk=chunk)
        assert_close(f"o, chunk {chunk}", want, got, torch.float32)
    assert len(triton_only) == 3


def test_zero_gate_equals_the_ungated_triton_call(triton_only):
    q, k, v, _ = _inputs(1, 2, 2, 100, 4, 4, seed=3)
    q, k, v = (x.float() for x in (q, k, v))
    want = fast_attention(q, k, v, F2)
    got = fast_attention(q, k, v, F2, g=torch.zeros(1, 2, 100))
    assert len(triton_only) == 1
    assert_close("o", want, got, torch.float32)


def test_minus_infinity_forgets_everything_before_it(triton_only):
    # g = -inf on token 30: no later query sees a key before it, and nothing is NaN
    q, k, v, g = _inputs(1, 1, 1, 80, 4, 4, seed=4, strong=False)
    q, k, v = (x.float() for x in (q, k, v))
    g = g.float()
    g[..., 30] = -math.inf
    fresh = g[..., 30:].clone()
    fresh[..., 0] = 0.0  # the first token's gate decays an empty state
    after = fast_attention(q[..., 30:, :], k[..., 30:, :], v[..., 30:, :], F2, g=fresh)
    xs = [x.clone().requires_grad_() for x in (q, k, v, g)]
    got = fast_attention(*xs[:3], F2, g=xs[3])
    assert len(triton_only) == 2
    assert bool(torch.isfinite(got).all())
    assert_close("o after the reset", after, got[..., 30:, :], torch.float32)
    # keys before the reset reach no later query: their gradient from every output is that from the outputs before it
    early = torch.autograd.grad(got[..., :30, :].sum(), xs[1], retain_graph=True)[0]
    got.sum().backward()
    assert all(bool(torch.isfinite(x.grad).all()) for x in xs)
    assert_close("dk before the reset", early[..., :30, :], xs[1].grad[..., :30, :], torch.float32)
    # below the floor the gate has no effect left to move: no gradient
    assert xs[3].grad[..., 30].item() == 0.0


def test_gate_gradient_identity_against_autograd_in_float64():
    # dL/dG_t = phi_t . dphi_t - psi_t . dpsi_t for A_ti = exp(G_t - G_i) phi_t . psi_i (i <= t)
    gen = torch.Generator().manual_seed(5)
    T, F, DV = 12, 5, 3
    phi, psi = (torch.randn(T, F, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(T, DV, generator=gen, dtype=torch.float64)
    G = (-torch.rand(T, generator=gen, dtype=torch.float64)).cumsum(0).requires_grad_()
    tri = torch.ones(T, T, dtype=torch.bool).tril()
    A = torch.exp((G[:, None] - G[None, :]).masked_fill(~tri, -math.inf)) * (phi @ psi.T)
    (A @ v * torch.randn(T, DV, generator=gen, dtype=torch.float64)).sum().backward()
    want = (phi * phi.grad).sum(-1) - (psi * psi.grad).sum(-1)
    assert_close("dL/dG", G.grad, want, torch.float64)


def test_prefill_on_the_gated_kernels_then_decode_steps_equals_one_forward(triton_only):
    attn = FastAttention.from_spec(F2, head_dim=4)
    q, k, v, g = _inputs(1, 2, 2, 70, 4, 4, seed=6)
    q, k, v, g = (x.float() for x in (q, k, v, g))
    want = fast_attention(q, k, v, F2, g=g)
    o, st = fast_attention(q[..., :67, :], k[..., :67, :], v[..., :67, :], F2, g=g[..., :67], output_final_state=True)
    outs = [o]
    with torch.no_grad():
        for t in range(67, 70):
            o_t, st = attn.step(q[..., t:t + 1, :], k[..., t:t + 1, :], v[..., t:t + 1, :], st, g=g[..., t:t + 1],
                                _kernel=True)
            outs.append(o_t)
    assert len(triton_only) == 2
    assert_close("o", want, torch.cat(outs, 2), torch.float32)


def test_bad_requests_are_refused_with_what_to_do():
    q, k, v, g = (x.float() for x in _inputs(1, 2, 2, 40, 4, 4, seed=7, strong=False))
    with pytest.raises(KernelError, match="power of two >= 16"):
        fast_attention(q, k, v, F2, g=g, chunk=24)
    with pytest.raises(KernelError, match="bfloat16 under TRITON_INTERPRET=1"):
        fast_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), F2, g=g)
    with pytest.raises(KernelError, match=r"g must be <= 0"):
        fast_attention(q, k, v, F2, g=g + 1)
    with pytest.raises(KernelError, match=r"g must be <= 0"):
        fast_attention(q, k, v, F2, g=g + 1, check_output=True)
    with pytest.raises(KernelError, match=r"g must be a float tensor \[B, H_kv, T_k\]"):
        fast_attention(q, k, v, F2, g=g[..., :-1])
    with pytest.raises(KernelError, match="do not support key_padding_mask"):
        fast_attention(q, k, v, F2, g=g, key_padding_mask=torch.zeros(1, 40, dtype=torch.bool), backend="triton")
    with pytest.raises(KernelError, match="needs is_causal=True"):
        fast_attention(q, k, v, F2, g=g, is_causal=False)


def _gated_reference(phi, psi, v, g, s0):
    """float64 o [BH_q, T, DV] and S_T [BH, F, DV] of gated_chunk's definition, A materialised (query row r reads
    key/value row r // (BH_q / BH))."""
    rep = phi.shape[0] // psi.shape[0]
    psi, v, g, s0r = (x.repeat_interleave(rep, 0) for x in (psi, v, g, s0))
    G = g.cumsum(-1)
    T = phi.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    decay = torch.exp((G[:, :, None] - G[:, None, :]).masked_fill(~causal, -math.inf))
    o = (decay * (phi @ psi.transpose(-1, -2))) @ v + torch.exp(G)[..., None] * (phi @ s0r)
    w = torch.exp(G[:, -1:] - G)[..., None]
    sT = torch.exp(G[:, -1])[:, None, None] * s0r + (psi * w).transpose(-1, -2) @ v
    return o, sT[::rep]


# id: BH_q, BH, T, F, DV, chunk. Many feature tiles with a ragged last one (2080 = 32 x 64 + 32: x**2 at d64), a
# ragged F with many ragged chunks, and three value tiles of fp32's 64 under grouped queries.
CHUNK_CASES = [
    ("F2080-33tiles-T150", 1, 1, 150, 2080, 5, 64),
    ("F91-T260-17chunks", 2, 2, 260, 91, 7, 16),
    ("F200-DV130-gqa2-T70", 2, 1, 70, 200, 130, 32),
]


@pytest.mark.parametrize("BHq, BH, T, F, DV, chunk", [c[1:] for c in CHUNK_CASES], ids=[c[0] for c in CHUNK_CASES])
def test_gated_chunk_over_many_tiles_and_chunks_matches_float64(BHq, BH, T, F, DV, chunk):
    gen = torch.Generator().manual_seed(F + T)
    phi = torch.randn(BHq, T, F, generator=gen, dtype=torch.float64) / F ** 0.5
    psi = torch.randn(BH, T, F, generator=gen, dtype=torch.float64) / F ** 0.5
    v = torch.randn(BH, T, DV, generator=gen, dtype=torch.float64)
    g = -torch.rand(BH, T, generator=gen, dtype=torch.float64)
    g[:, 5:9] = -5.0  # strong gates inside a chunk, and on the last token of the first chunk
    g[:, chunk - 1] = -8.0
    s0 = torch.randn(BH, F, DV, generator=gen, dtype=torch.float64) / F ** 0.5
    do = torch.randn(BHq, T, DV, generator=gen, dtype=torch.float64)
    dS = torch.randn(BH, F, DV, generator=gen, dtype=torch.float64)
    ref_in = [x.clone().requires_grad_() for x in (phi, psi, v, g, s0)]
    o, sT = _gated_reference(*ref_in)
    ((o * do).sum() + (sT * dS).sum()).backward()
    got_in = [x.float().requires_grad_() for x in (phi, psi, v, g, s0)]
    o2, sT2 = gated.gated_chunk(*got_in[:4], initial_state=got_in[4], output_final_state=True, chunk=chunk)
    ((o2.double() * do).sum() + (sT2.double() * dS).sum()).backward()
    assert gated.plan(F, DV, torch.float32, chunk).hinted is False
    assert_close("o", o, o2, torch.float32)
    assert_close("S_T", sT, sT2, torch.float32)
    for name, a, b in zip(("dphi", "dpsi", "dv", "dg", "dS0"), ref_in, got_in):
        assert_close(name, a.grad, b.grad, torch.float32)


def test_plan_runs_the_hinted_build_only_where_every_feature_and_value_loop_has_one_tile():
    # the hinted build (F, DV specialised) was wrong on an H200 at F = 2080 and right at x d64 (one tile each way)
    assert gated.plan(64, 64, torch.bfloat16).hinted
    assert gated.plan(64, 65, torch.bfloat16).hinted  # one value tile of 128
    assert not gated.plan(2080, 65, torch.bfloat16).hinted
    assert not gated.plan(153, 65, torch.bfloat16).hinted
    assert not gated.plan(64, 65, torch.float32).hinted  # fp32 value tiles of 64: two
    assert gated.plan(2080, 65, torch.bfloat16).kernels is gated._PLAIN
    assert gated.plan(64, 64, torch.bfloat16).kernels is gated._HINTED


_COMPILE = """
import json, sys
from fastattn.kernels.gated_aot import compile_kernels
F, DV, dtype = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
r = compile_kernels(F, DV, dtype)
ref = compile_kernels(153, 65, dtype)
print(json.dumps({k: {"smem": x["smem"], "grid": x["grid"], "resources": x["resources"],
                      "same_as_F153": x["code"] == ref[k]["code"]} for k, x in r.items()}))
"""


@pytest.mark.parametrize("F, DV, dtype", [(2080, 65, "bf16"), (8256, 129, "bf16"), (2080, 65, "fp32"),
                                          (8256, 129, "fp32")],
                         ids=["x2-d64-bf16", "x2-d128-bf16", "x2-d64-fp32", "x2-d128-fp32"])
def test_large_maps_compile_for_sm90_within_shared_memory(F, DV, dtype):
    # x**2 at d64 and d128, normalised (the ones column on v): every launch fits an sm_90 block, and the chunk
    # kernels are, instruction for instruction, those of F = 153, DV = 65 (Based d16, which passed on the H200 in bf16)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", _COMPILE, str(F), str(DV), dtype], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert set(report) == {"_fwd_states", "_fwd_output", "_bwd_dstates", "_bwd_dv", "_bwd_dfeat", "_state_gate"}
    for name, r in report.items():
        assert 0 < r["smem"] <= 232448, (name, r)
        assert 0 < int(re.search(r"REG:(\d+)", r["resources"]).group(1)) <= 255, (name, r)
        assert max(r["grid"][1:]) <= 65535, (name, r)
        if name != "_state_gate":
            assert r["same_as_F153"], (name, r)


def test_the_gate_values_are_read_back_only_where_asked():
    from fastattn.attention.functional import check_gate

    k = torch.zeros(1, 2, 5, 4)
    bad = torch.full((1, 2, 5), 0.5)
    with pytest.raises(KernelError, match="g must be <= 0"):
        check_gate(bad, 1, 2, 5, k, True)  # CPU: read by default
    assert check_gate(bad, 1, 2, 5, k, True, values=False) is None  # check_output=False: not read
    with pytest.raises(KernelError, match="g must be a float tensor"):
        check_gate(bad[..., :4], 1, 2, 5, k, True, values=False)  # the shape is always checked


def test_a_linear_map_enters_the_kernels_without_a_feature_pass(triton_only, monkeypatch):
    q, k, v, g = (x.float() for x in _inputs(1, 2, 2, 40, 8, 4, seed=3, strong=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(functional, "_torch_attention", _TORCH)
        want = fast_attention(q.double(), k.double(), v.double(), "-0.5*x", normalize=False, g=g.double(),
                              backend="torch")

    def no_features(*a, **kw):
        raise AssertionError("phi / psi were materialised for f = c x")
    monkeypatch.setattr(naive, "symmetric_features", no_features)
    got = fast_attention(q, k, v, "-0.5*x", normalize=False, g=g, backend="triton")
    assert triton_only == [(2, 2)]
    assert_close("o", want, got, torch.float32)
