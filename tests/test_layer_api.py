"""The layer as a real attention (issue 15): SDPA keywords, GQA, padding masks, carried state, decoding.

Everything is checked against ``masked_quadratic_attention`` in float64 (A = f(s Q K^T)
materialised, K/V repeated for GQA, the mask applied), on the torch path.
"""

from __future__ import annotations

import pytest
import torch

from fastattn.attention import FastAttention, FastMultiheadAttention, State, fast_attention, init_state
from fastattn.attention.reference import masked_quadratic_attention
from fastattn.errors import KernelError
from fastattn.kernels import polynomial
from fastattn.kernels.checks import assert_close

F2 = "1 + x + x**2/2"


@pytest.fixture(autouse=True)
def torch_path(monkeypatch):
    # conftest turns the Triton interpreter on for CPU runs; these tests are about the torch path
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def _qkv(B, Hq, Hk, Tq, Tk, D, DV, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Tq, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hk, Tk, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hk, Tk, DV, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


# f, normalize, the normaliser fix the reference divides by
FS = [(F2, True, None), ("x**2", True, "abs"), ("(1+x)**3", False, None)]


@pytest.mark.parametrize("f, normalize, fix", FS, ids=["taylor2", "power2", "cubic-unnormalised"])
@pytest.mark.parametrize("Hq, Hk", [(2, 2), (4, 2), (3, 1)], ids=["mha", "gqa2", "mqa3"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_functional_matches_reference_with_gradients(f, normalize, fix, Hq, Hk, causal):
    q, k, v = (x.requires_grad_() for x in _qkv(2, Hq, Hk, 13, 13, 5, 3))
    got = fast_attention(q, k, v, f, is_causal=causal, normalize=normalize, enable_gqa=Hq != Hk, chunk=4)
    rq, rk, rv = (x.detach().clone().requires_grad_() for x in (q, k, v))
    want = masked_quadratic_attention(rq, rk, rv, polynomial(f), is_causal=causal, normalize=normalize,
                                      normalizer_fix=fix)
    assert_close("o", want, got, torch.float64)
    do = torch.randn_like(want)
    got.backward(do)
    want.backward(do)
    for name, a, b in (("dq", rq, q), ("dk", rk, k), ("dv", rv, v)):
        assert_close(name, a.grad, b.grad, torch.float64)


def test_gqa_equals_the_repeated_kv_call_and_keeps_kv_heads_in_the_state():
    q, k, v = _qkv(1, 6, 2, 17, 17, 4, 4)
    o, st = fast_attention(q, k, v, F2, enable_gqa=True, output_final_state=True)
    o_rep = fast_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), F2)
    assert _max_diff(o, o_rep) < 1e-13
    assert st.S.shape == (1, 2, 15, 4) and st.z.shape == (1, 2, 15)


def test_noncausal_cross_attention_allows_tq_ne_tk():
    q, k, v = _qkv(2, 2, 2, 7, 11, 4, 6)
    got = fast_attention(q, k, v, F2, is_causal=False)
    want = masked_quadratic_attention(q, k, v, polynomial(F2), is_causal=False)
    assert got.shape == (2, 2, 7, 6)
    assert_close("o", want, got, torch.float64)


def test_scale_keyword_is_s_in_f():
    q, k, v = _qkv(1, 2, 2, 9, 9, 4, 4)
    got = fast_attention(q, k, v, F2, scale=0.7)
    assert_close("o", masked_quadratic_attention(q, k, v, polynomial(F2), scale=0.7), got, torch.float64)
    assert _max_diff(got, fast_attention(q, k, v, F2)) > 1e-3


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_key_padding_mask_matches_the_masked_reference(causal):
    q, k, v = _qkv(2, 4, 2, 10, 10, 4, 3)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 7:] = True  # right padding
    mask[1, :3] = True  # left padding: causal rows 0-2 see no key and come back 0
    k[0, :, 7:] = float("inf")  # a padded key may hold anything, inf included
    got = fast_attention(q, k, v, F2, is_causal=causal, enable_gqa=True, key_padding_mask=mask)
    want = masked_quadratic_attention(q, k, v, polynomial(F2), is_causal=causal, key_padding_mask=mask)
    assert_close("o", want, got, torch.float64)
    assert bool((got[1, :, :3] == 0).all()) is causal


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("Hq, Hk", [(2, 2), (4, 2)], ids=["mha", "gqa"])
def test_prefill_in_two_parts_equals_one_prefill(dtype, Hq, Hk):
    q, k, v = _qkv(2, Hq, Hk, 29, 29, 4, 5, dtype)
    gqa = Hq != Hk
    o, st = fast_attention(q, k, v, F2, enable_gqa=gqa, output_final_state=True, chunk=8)
    o_a, st_a = fast_attention(q[:, :, :11], k[:, :, :11], v[:, :, :11], F2, enable_gqa=gqa,
                               output_final_state=True, chunk=8)
    o_b, st_b = fast_attention(q[:, :, 11:], k[:, :, 11:], v[:, :, 11:], F2, enable_gqa=gqa, initial_state=st_a,
                               output_final_state=True, chunk=8)
    assert st.S.dtype == st.z.dtype == torch.promote_types(dtype, torch.float32)
    assert st_b.tokens.tolist() == [29, 29] and st_a.tokens.tolist() == [11, 11]
    assert_close("o", o, torch.cat([o_a, o_b], 2), dtype)
    assert_close("S", st.S, st_b.S, dtype)
    assert_close("z", st.z, st_b.z, dtype)
    want = masked_quadratic_attention(q.double(), k.double(), v.double(), polynomial(F2))
    assert_close("o vs reference", want, torch.cat([o_a, o_b], 2), dtype)


def test_initial_state_in_a_noncausal_call_is_a_prefix_every_query_sees():
    q, k, v = _qkv(1, 2, 2, 12, 12, 4, 4)
    _, st = fast_attention(q[:, :, :5], k[:, :, :5], v[:, :, :5], F2, output_final_state=True)
    got = fast_attention(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], F2, is_causal=False, initial_state=st)
    want = masked_quadratic_attention(q[:, :, 5:], k, v, polynomial(F2), is_causal=False)
    assert_close("o", want, got, torch.float64)


def test_state_features_are_the_transforms_feature_map():
    import fastattn

    q, k, v = _qkv(1, 1, 1, 6, 6, 3, 2)
    _, st = fast_attention(q, k, v, F2, output_final_state=True)
    fm = fastattn.feature_map(F2, dim=3, scale=3**-0.5)
    psi = fm.psi(k[0, 0])
    assert _max_diff(st.S[0, 0], psi.T @ v[0, 0]) < 1e-13
    assert _max_diff(st.z[0, 0], psi.sum(0)) < 1e-13


def test_gradient_flows_through_a_carried_state():
    # truncated BPTT: a loss on the second segment reaches the first segment's k and v through the state
    q, k, v = (x.requires_grad_() for x in _qkv(1, 2, 2, 14, 14, 3, 3))
    _, st = fast_attention(q[:, :, :6], k[:, :, :6], v[:, :, :6], F2, output_final_state=True)
    o_b = fast_attention(q[:, :, 6:], k[:, :, 6:], v[:, :, 6:], F2, initial_state=st)
    do = torch.randn_like(o_b)
    o_b.backward(do)
    rq, rk, rv = (x.detach().clone().requires_grad_() for x in (q, k, v))
    masked_quadratic_attention(rq, rk, rv, polynomial(F2))[:, :, 6:].backward(do)
    for name, a, b in (("dq", rq, q), ("dk", rk, k), ("dv", rv, v)):
        assert_close(name, a.grad, b.grad, torch.float64)
    assert float(k.grad[:, :, :6].abs().sum()) > 0


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("spec, Hq, Hk", [(F2, 2, 2), (F2, 4, 2), ("x**2", 2, 1)], ids=["taylor2", "gqa", "power2"])
def test_token_by_token_decoding_equals_the_causal_prefill(dtype, tol, spec, Hq, Hk):
    attn = FastAttention.from_spec(spec, head_dim=4, head_dim_v=3, chunk=8)
    q, k, v = _qkv(2, Hq, Hk, 20, 20, 4, 3, dtype)
    full = attn(q, k, v, enable_gqa=Hq != Hk)
    # prefill 6 tokens, then decode the rest one by one
    o0, st = attn(q[:, :, :6], k[:, :, :6], v[:, :, :6], enable_gqa=Hq != Hk, output_final_state=True)
    outs = [o0]
    for t in range(6, 20):
        o, st = attn.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st)
        outs.append(o)
        assert st.S.shape == (2, Hk, attn.feature_dim, 3)  # O(F DV) memory, whatever t
    got = torch.cat(outs, 2)
    assert got.dtype == dtype and st.tokens.tolist() == [20, 20]
    diff = _max_diff(got, full)
    assert diff < tol, f"decoding differs from the prefill by {diff:.3g} ({dtype})"


def test_decoding_from_init_state_equals_the_prefill():
    attn = FastAttention.from_spec(F2, head_dim=4)
    q, k, v = _qkv(1, 2, 2, 9, 9, 4, 4)
    st = attn.init_state(1, 2, dtype=torch.float64)
    outs = []
    for t in range(9):
        o, st = attn.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st)
        outs.append(o)
    assert _max_diff(torch.cat(outs, 2), attn(q, k, v)) < 1e-12


def test_layer_forward_forwards_the_keywords():
    attn = FastAttention.from_spec(F2, head_dim=4, causal=True)
    q, k, v = _qkv(1, 4, 2, 8, 8, 4, 4)
    p = polynomial(F2)
    got = attn(q, k, v, is_causal=False, scale=0.3, enable_gqa=True)
    assert_close("o", masked_quadratic_attention(q, k, v, p, is_causal=False, scale=0.3), got, torch.float64)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, 5:] = True
    got = attn(q, k, v, enable_gqa=True, key_padding_mask=mask)
    assert_close("masked", masked_quadratic_attention(q, k, v, p, key_padding_mask=mask), got, torch.float64)
    assert _max_diff(attn(q[:, :2], k, v), masked_quadratic_attention(q[:, :2], k, v, p)) < 1e-13


def _gate(B, H, T, seed=1):
    return -torch.rand(B, H, T, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("with_mask", [False, True], ids=["plain", "left-padded"])
def test_gated_attention_matches_reference_with_gradients_including_dg(with_mask):
    q, k, v = (x.requires_grad_() for x in _qkv(2, 4, 2, 15, 15, 4, 3))
    g = _gate(2, 2, 15).requires_grad_()
    mask = torch.zeros(2, 15, dtype=torch.bool)
    mask[1, :4] = True
    mask = mask if with_mask else None
    got = fast_attention(q, k, v, F2, enable_gqa=True, g=g, key_padding_mask=mask, chunk=4)
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, g)]
    want = masked_quadratic_attention(*leaves[:3], polynomial(F2), g=leaves[3], key_padding_mask=mask)
    assert_close("o", want, got, torch.float64)
    do = torch.randn_like(want)
    got.backward(do)
    want.backward(do)
    for name, a, b in zip(("dq", "dk", "dv", "dg"), leaves, (q, k, v, g)):
        assert_close(name, a.grad, b.grad, torch.float64)
    assert _max_diff(got, fast_attention(q, k, v, F2, enable_gqa=True, key_padding_mask=mask)) > 1e-3


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
def test_gated_prefill_in_parts_and_decoding_equal_one_prefill(dtype, tol):
    attn = FastAttention.from_spec(F2, head_dim=4, chunk=4)
    q, k, v = _qkv(1, 2, 2, 17, 17, 4, 4, dtype)
    g = _gate(1, 2, 17).to(dtype)
    full, st_full = attn(q, k, v, g=g, output_final_state=True)
    o_a, st = attn(q[:, :, :9], k[:, :, :9], v[:, :, :9], g=g[..., :9], output_final_state=True)
    outs = [o_a]
    for t in range(9, 17):
        o, st = attn.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st, g=g[..., t:t + 1])
        outs.append(o)
    assert _max_diff(torch.cat(outs, 2), full) < tol
    assert _max_diff(st.S, st_full.S) < tol * 10
    want = masked_quadratic_attention(q.double(), k.double(), v.double(), polynomial(F2), g=g.double())
    assert_close("o vs reference", want, full, dtype)


@pytest.mark.parametrize("make_g, kw, match", [
    (lambda: torch.full((1, 2, 5), 0.1, dtype=torch.float64), {}, "g must be <= 0 and not NaN.*= 0.1"),
    (lambda: torch.full((1, 2, 5), float("nan"), dtype=torch.float64), {}, "g must be <= 0 and not NaN.*= nan"),
    (lambda: torch.zeros(1, 2, 4, dtype=torch.float64), {}, r"g must be a float tensor \[B, H_kv, T_k\] = \[1, 2, 5\]"),
    (lambda: torch.zeros(1, 2, 5, dtype=torch.int64), {}, "g must be a float tensor.*torch.int64"),
    (lambda: torch.zeros(1, 2, 5, dtype=torch.float64), dict(is_causal=False), r"g \(a forget gate\) needs is_causal"),
])
def test_refuses_a_bad_gate(make_g, kw, match):
    q, k, v = _qkv(1, 2, 2, 5, 5, 4, 4)
    with pytest.raises(KernelError, match=match):
        fast_attention(q, k, v, F2, g=make_g(), **kw)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_varlen_equals_separate_calls_per_sequence(causal):
    lengths = [5, 1, 9, 0, 4]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    q, k, v = _qkv(1, 4, 2, 19, 19, 4, 3)
    g = _gate(1, 2, 19) if causal else None
    st0 = init_state(5, 2, 15, 3, dtype=torch.float64)
    st0.S.normal_(generator=torch.Generator().manual_seed(3))
    o, st = fast_attention(q, k, v, F2, is_causal=causal, enable_gqa=True, g=g, cu_seqlens=cu, initial_state=st0,
                           output_final_state=True, chunk=4)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        one = State(st0.S[n:n + 1], st0.z[n:n + 1], st0.tokens[n:n + 1])
        o_n, st_n = fast_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], F2, is_causal=causal, enable_gqa=True,
                                   g=None if g is None else g[..., a:b], initial_state=one, output_final_state=True)
        assert _max_diff(o[:, :, a:b], o_n) < 1e-12 if b > a else o_n.shape[2] == 0
        assert _max_diff(st.S[n:n + 1], st_n.S) < 1e-12 and st.tokens[n].item() == lengths[n]


@pytest.mark.parametrize("cu, kw, match", [
    (torch.tensor([0, 3, 5]), {}, r"must start at 0, end at T=6"),
    (torch.tensor([0, 4, 3, 6]), {}, r"never decrease"),
    (torch.tensor([0.0, 6.0]), {}, r"1-D int32/int64 tensor"),
    (torch.tensor([0, 6], dtype=torch.int32), dict(batch=2), r"needs B = 1 and T_q == T_k; got B=2"),
])
def test_refuses_bad_cu_seqlens(cu, kw, match):
    q, k, v = _qkv(kw.get("batch", 1), 2, 2, 6, 6, 4, 4)
    with pytest.raises(KernelError, match=match):
        fast_attention(q, k, v, F2, cu_seqlens=cu)


# ---- refusals


def test_refuses_a_gqa_ratio_that_is_not_whole():
    q, k, v = _qkv(1, 3, 2, 5, 5, 4, 4)
    with pytest.raises(KernelError, match="H_q a multiple of H_kv; got H_q=3, H_kv=2"):
        fast_attention(q, k, v, F2, enable_gqa=True)


def test_refuses_gqa_heads_without_enable_gqa():
    q, k, v = _qkv(1, 4, 2, 5, 5, 4, 4)
    with pytest.raises(KernelError, match="query has 4 heads and key/value 2: pass enable_gqa=True"):
        fast_attention(q, k, v, F2)


def test_refuses_causal_with_tq_ne_tk():
    q, k, v = _qkv(1, 2, 2, 5, 7, 4, 4)
    with pytest.raises(KernelError, match="is_causal=True needs as many queries as keys; got T_q=5, T_k=7"):
        fast_attention(q, k, v, F2)


@pytest.mark.parametrize("mask, match", [
    (torch.zeros(1, 6, dtype=torch.bool), "key_padding_mask has shape \\(1, 6\\); expected \\[B, T_k\\] = \\[1, 5\\]"),
    (torch.zeros(1, 1, 5, dtype=torch.bool), "key_padding_mask has shape \\(1, 1, 5\\)"),
    (torch.zeros(1, 5), "must be a bool tensor \\[B, T_k\\].*got torch.float32"),
])
def test_refuses_a_bad_mask(mask, match):
    q, k, v = _qkv(1, 2, 2, 5, 5, 4, 4)
    with pytest.raises(KernelError, match=match):
        fast_attention(q, k, v, F2, key_padding_mask=mask)


@pytest.mark.parametrize("make, match", [
    (lambda: init_state(1, 3, 15, 4, dtype=torch.float64), "state.S has shape \\(1, 3, 15, 4\\); these inputs need "
                                                           "\\[B, H_kv, F, DV\\] = \\[1, 2, 15, 4\\]"),
    (lambda: init_state(1, 2, 10, 4, dtype=torch.float64), "state.S has shape \\(1, 2, 10, 4\\)"),
    (lambda: init_state(2, 2, 15, 4, dtype=torch.float64), "state.S has shape \\(2, 2, 15, 4\\)"),
    (lambda: init_state(1, 2, 15, 4), "state is torch.float32/torch.float32, but inputs of torch.float64 carry a "
                                      "torch.float64 state"),
    (lambda: (torch.zeros(1, 2, 15, 4), torch.zeros(1, 2, 15)), "must be a fastattn.attention.State.*got tuple"),
    (lambda: State(torch.zeros(1, 2, 15, 4, dtype=torch.float64), torch.zeros(1, 2, 14, dtype=torch.float64),
                   torch.zeros(1, dtype=torch.int64)), "state.z has shape \\(1, 2, 14\\)"),
])
def test_refuses_a_state_that_does_not_fit(make, match):
    q, k, v = _qkv(1, 2, 2, 5, 5, 4, 4)
    with pytest.raises(KernelError, match=match):
        fast_attention(q, k, v, F2, initial_state=make())


@pytest.mark.parametrize("kw, match", [
    (dict(batch=0, heads=1, features=3, head_dim_v=2), "batch=0 must be an int >= 1"),
    (dict(batch=1, heads=1, features=3, head_dim_v=2, dtype=torch.int64), "dtype=torch.int64 must be a floating"),
])
def test_init_state_refuses_bad_sizes(kw, match):
    with pytest.raises(KernelError, match=match):
        init_state(**kw)


def test_step_refuses_more_than_one_token_and_a_missing_state():
    attn = FastAttention.from_spec(F2, head_dim=4)
    x = torch.randn(1, 2, 3, 4)
    with pytest.raises(KernelError, match="step decodes one token: q must be \\[B, H, 1, D\\]; got \\(1, 2, 3, 4\\)"):
        attn.step(x, x, x, attn.init_state(1, 2))
    with pytest.raises(KernelError, match="step needs a state"):
        attn.step(x[:, :, :1], x[:, :, :1], x[:, :, :1], None)


def test_triton_backend_refuses_what_its_kernels_lack_and_auto_falls_back(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, v = _qkv(1, 2, 2, 6, 6, 4, 4, torch.float32)
    st = init_state(1, 2, 15, 4)
    mask = torch.zeros(1, 6, dtype=torch.bool)
    with pytest.raises(KernelError, match="do not support key_padding_mask yet"):
        fast_attention(q, k, v, F2, key_padding_mask=mask, backend="triton")
    with pytest.raises(KernelError, match="do not support T_q=3 != T_k=6 yet"):
        fast_attention(q[:, :, :3], k, v, F2, is_causal=False, backend="triton")
    # auto under the interpreter picks Triton; with a mask it runs the torch path instead
    got = fast_attention(q, k, v, F2, key_padding_mask=mask)
    assert_close("o", fast_attention(q, k, v, F2, backend="torch"), got, torch.float32)
    # a carried state is served by the kernels now (issue 15): both routes agree
    tri = fast_attention(q, k, v, F2, initial_state=st, backend="triton")
    assert_close("o", fast_attention(q, k, v, F2, initial_state=st, backend="torch"), tri, torch.float32)
    # so is a gate g (fastattn/kernels/gated.py; tests/test_gated.py checks it in depth)
    gate = -torch.rand(1, 2, 6)
    tri = fast_attention(q, k, v, F2, g=gate, backend="triton")
    assert_close("o", fast_attention(q, k, v, F2, g=gate, backend="torch"), tri, torch.float32)


# ---- the multi-head block


def _block(**kw):
    torch.manual_seed(0)
    return FastMultiheadAttention(16, 4, F2, chunk=4, **kw).double()


def _block_reference(block, x, kv=None, mask=None, causal=True):
    kv = x if kv is None else kv
    B, T, _ = x.shape
    H, Hk, Dh = block.num_heads, block.num_kv_heads, block.head_dim
    w, b = block.qkv.weight, block.qkv.bias
    q = torch.nn.functional.linear(x, w[:H * Dh], b[:H * Dh]).view(B, T, H, Dh).transpose(1, 2)
    k = torch.nn.functional.linear(kv, w[H * Dh:(H + Hk) * Dh], b[H * Dh:(H + Hk) * Dh])
    v = torch.nn.functional.linear(kv, w[(H + Hk) * Dh:], b[(H + Hk) * Dh:])
    k, v = (y.view(B, kv.shape[1], Hk, Dh).transpose(1, 2) for y in (k, v))
    o = masked_quadratic_attention(q, k, v, block.attn.poly, is_causal=causal, key_padding_mask=mask)
    return block.out_proj(o.transpose(1, 2).reshape(B, T, block.embed_dim))


@pytest.mark.parametrize("kv_heads", [None, 2, 1], ids=["mha", "gqa", "mqa"])
def test_block_matches_its_reference_and_returns_a_pair(kv_heads):
    block = _block(num_kv_heads=kv_heads)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    out, second = block(x)
    assert second is None
    assert_close("block", _block_reference(block, x), out, torch.float64)
    assert block.qkv.weight.shape == ((4 + 2 * (kv_heads or 4)) * 4, 16)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_right_padding_leaves_real_tokens_unchanged(causal):
    # issue 15: non-causal right padding moved real tokens' outputs by 0.38 before the mask existed
    block = _block(num_kv_heads=2)
    lengths = [9, 6]
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    mask = torch.arange(9)[None, :] >= torch.tensor(lengths)[:, None]
    x = x.masked_fill(mask[..., None], 3.0)  # the padding's content must not matter
    out, _ = block(x, key_padding_mask=mask, is_causal=causal)
    for b, n in enumerate(lengths):
        alone, _ = block(x[b:b + 1, :n], is_causal=causal)
        diff = _max_diff(out[b:b + 1, :n], alone)
        assert diff < 1e-12, f"row {b}: real tokens moved by {diff:.3g} under padding (causal={causal})"
    unmasked, _ = block(x, is_causal=False)
    assert _max_diff(unmasked[1:, :6], block(x[1:, :6], is_causal=False)[0]) > 1e-3  # the mask is what does it


def test_block_cross_attention_and_batch_first_false():
    block = _block()
    x, mem = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 8, 16, dtype=torch.float64)
    out, _ = block(x, mem, mem, is_causal=False)
    assert_close("cross", _block_reference(block, x, mem, causal=False), out, torch.float64)
    seq_first = _block(batch_first=False)
    out_t, _ = seq_first(x.transpose(0, 1), mem.transpose(0, 1), mem.transpose(0, 1), is_causal=False)
    assert _max_diff(out_t.transpose(0, 1), out) < 1e-13


def test_block_prefill_then_decode_with_cache_equals_one_forward():
    block = _block(num_kv_heads=2)
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    full, _ = block(x)
    out, st = block(x[:, :7], use_cache=True)
    outs = [out]
    for t in range(7, 12):
        out, st = block(x[:, t:t + 1], past_state=st, use_cache=True)
        outs.append(out)
    assert st.tokens.tolist() == [12, 12] and st.S.shape[1] == 2
    assert _max_diff(torch.cat(outs, 1), full) < 1e-12


def test_block_dropout_acts_only_in_training():
    block = _block(dropout=0.5)
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    block.eval()
    assert _max_diff(block(x)[0], _block_reference(block, x)) < 1e-12
    block.train()
    torch.manual_seed(1)
    assert _max_diff(block(x)[0], _block_reference(block, x)) > 1e-3


@pytest.mark.parametrize("kw, match", [
    (dict(num_kv_heads=3), "num_kv_heads=3 must be an int >= 1 dividing num_heads=4"),
    (dict(dropout=1.0), "dropout=1.0 must be a probability in \\[0, 1\\)"),
])
def test_block_refuses_bad_construction(kw, match):
    with pytest.raises(KernelError, match=match):
        FastMultiheadAttention(16, 4, F2, **kw)


def test_block_refuses_bad_calls():
    block = _block()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    with pytest.raises(KernelError, match="pass both key and value, or neither"):
        block(x, x)
    with pytest.raises(KernelError, match="key_padding_mask has shape \\(2, 4\\); expected \\[B, T_k\\] = \\[2, 5\\]"):
        block(x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(KernelError, match="expected query of shape \\[B, T, E\\] with E=16; got \\(2, 5, 8\\)"):
        block(torch.randn(2, 5, 8, dtype=torch.float64))
