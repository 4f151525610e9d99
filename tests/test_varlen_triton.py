"""cu_seqlens on the Triton route (fastattn.attention.varlen), and a gate reset (g = -inf) on every route.

backend="triton" raises when the Triton kernels cannot serve a call, so every call here that returns ran them.
"""
import pytest
import torch

from fastattn.attention import fast_attention, varlen
from fastattn.attention.state import State

SPEC = "1 + x + x**2/2"


def _inputs(T, H=2, Hk=2, D=4, DV=5, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, T, D, generator=gen, dtype=torch.float64)
    k = torch.randn(1, Hk, T, D, generator=gen, dtype=torch.float64)
    v = torch.randn(1, Hk, T, DV, generator=gen, dtype=torch.float64)
    g = -torch.rand(1, Hk, T, generator=gen, dtype=torch.float64)
    return q, k, v, g


def _reference(q, k, v, cu, **kw):
    # float64, one torch call per sequence
    outs, finals = [], []
    init = kw.pop("initial_state", None)
    g = kw.pop("g", None)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        st = None if init is None else State(init.S[n:n + 1], init.z[n:n + 1], init.tokens[n:n + 1])
        o, fin = fast_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], SPEC, backend="torch", initial_state=st,
                                output_final_state=True, g=None if g is None else g[:, :, a:b], **kw)
        outs.append(o)
        finals.append(fin)
    return torch.cat(outs, 2), finals


def _grads(o, xs, do):
    return torch.autograd.grad(o, xs, do)


@pytest.mark.parametrize("cu, causal, final, gated, gqa", [
    ([0, 5, 12, 20], True, False, False, False),     # the padded batch
    ([0, 5, 12, 20], True, False, True, False),      # padded, with a gate (the gated kernels)
    ([0, 1, 3, 40], True, False, False, True),      # uneven: one call per sequence; GQA
    ([0, 7, 7, 16], True, True, False, False),       # a final state (and an empty sequence): one call per sequence
    ([0, 9, 16], False, False, False, False),        # non-causal: one call per sequence
], ids=["padded", "padded-gated", "loop-gqa", "final-state", "non-causal"])
def test_triton_varlen_equals_separate_calls(cu, causal, final, gated, gqa):
    T = cu[-1]
    q, k, v, g = _inputs(T, H=4 if gqa else 2)
    cu = torch.tensor(cu, dtype=torch.int32)
    xs = [x.float().requires_grad_() for x in (q, k, v)]
    got = fast_attention(*xs, SPEC, is_causal=causal, cu_seqlens=cu, backend="triton", enable_gqa=gqa,
                         g=g.float() if gated else None, output_final_state=final)
    o, fin = got if final else (got, None)
    rs = [x.clone().requires_grad_() for x in (q, k, v)]
    r, rfin = _reference(*rs, cu, is_causal=causal, enable_gqa=gqa, g=g if gated else None)
    assert o.shape == r.shape
    torch.testing.assert_close(o.double(), r, atol=2e-5, rtol=2e-5)
    do = torch.randn_like(r)
    for a, b in zip(_grads(o, xs, do.float()), _grads(r, rs, do)):
        torch.testing.assert_close(a.double(), b, atol=5e-5, rtol=5e-5)
    if final:
        torch.testing.assert_close(fin.S.double(), torch.cat([f.S for f in rfin]), atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(fin.z.double(), torch.cat([f.z for f in rfin]), atol=2e-5, rtol=2e-5)
        assert fin.tokens.tolist() == [f.tokens.item() for f in rfin]


def test_triton_varlen_carries_a_state_per_sequence():
    q, k, v, _ = _inputs(14)
    cu = torch.tensor([0, 6, 14])
    _, st = fast_attention(q[:, :, :8].repeat(2, 1, 1, 1), k[:, :, :8].repeat(2, 1, 1, 1),
                           v[:, :, :8].repeat(2, 1, 1, 1) * torch.tensor([1.0, -2.0]).view(2, 1, 1, 1), SPEC,
                           backend="torch", output_final_state=True)
    got = fast_attention(q.float(), k.float(), v.float(), SPEC, cu_seqlens=cu, backend="triton",
                         initial_state=State(st.S.float(), st.z.float(), st.tokens))
    r, _ = _reference(q, k, v, cu, initial_state=st)
    torch.testing.assert_close(got.double(), r, atol=2e-5, rtol=2e-5)


def test_the_padded_route_runs_one_batched_call(monkeypatch):
    shapes = []
    real = varlen.varlen_call

    def spy(run, *a, **kw):
        def counted(q, *rest):
            shapes.append(tuple(q.shape))
            return run(q, *rest)
        return real(counted, *a, **kw)

    monkeypatch.setattr(varlen, "varlen_call", spy)
    q, k, v, _ = _inputs(20)
    fast_attention(q.float(), k.float(), v.float(), SPEC, cu_seqlens=torch.tensor([0, 5, 12, 20]), backend="triton")
    fast_attention(q.float(), k.float(), v.float(), SPEC, cu_seqlens=torch.tensor([0, 1, 2, 20]), backend="triton")
    # 3 sequences of up to 8 tokens in one batch; then 18 of 20 tokens in one sequence: 3 x 18 > 2 x 20, one call each
    assert shapes == [(3, 2, 8, 4), (1, 2, 1, 4), (1, 2, 1, 4), (1, 2, 18, 4)]


def test_a_final_state_nobody_differentiates_leaves_the_backward_whole():
    # the final state returned but only o in the loss: the kernels' backward ran without a carried state
    q, k, v, _ = _inputs(12)
    xs = [x.float().requires_grad_() for x in (q, k, v)]
    o, _ = fast_attention(*xs, SPEC, backend="triton", output_final_state=True)
    rs = [x.clone().requires_grad_() for x in (q, k, v)]
    r = fast_attention(*rs, SPEC, backend="torch")
    do = torch.randn_like(r)
    for a, b in zip(_grads(o, xs, do.float()), _grads(r, rs, do)):
        torch.testing.assert_close(a.double(), b, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
def test_a_gate_of_minus_infinity_resets_the_state(backend):
    # g_r = -inf wipes everything before token r: o[r:] is the call on the suffix alone, gradients finite
    from fastattn.attention.reference import masked_quadratic_attention
    from fastattn.kernels.poly import polynomial

    q, k, v, g = _inputs(18)
    r = 7
    g[:, :, r] = -float("inf")
    xs = [x.clone().requires_grad_() for x in (q, k, v)]
    if backend == "reference":
        o = masked_quadratic_attention(*xs, polynomial(SPEC), g=g)
    else:
        cast = (lambda x: x.float()) if backend == "triton" else (lambda x: x)
        o = fast_attention(*(cast(x) for x in xs), SPEC, g=cast(g), backend=backend).double()
    tail_g = g[:, :, r:].clone()
    tail_g[:, :, 0] = 0.0  # the suffix never uses its first gate
    want = fast_attention(q[:, :, r:], k[:, :, r:], v[:, :, r:], SPEC, g=tail_g, backend="torch")
    tol = 2e-5 if backend == "triton" else 1e-12
    torch.testing.assert_close(o[:, :, r:], want, atol=tol, rtol=tol)
    grads = torch.autograd.grad(o.sum(), xs)
    assert all(bool(torch.isfinite(x).all()) for x in grads)
