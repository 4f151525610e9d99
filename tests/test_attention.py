"""Layers: FastAttention (SDPA-like), FastMultiheadAttention (a transformer block), torch.compile."""

from __future__ import annotations

import time

import pytest
import torch

from fastattn.attention import FastAttention, FastMultiheadAttention, quadratic_attention, softmax_attention
from fastattn.errors import KernelError
from fastattn.kernels.checks import assert_close
from fastattn.kernels.poly import choose_backend


pytestmark = pytest.mark.usefixtures("kernel_env")


def _qkv(B, H, T, D, DV, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, B, H, T, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
    do = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (q, k, v, do)]


def _grads_match(attn, dtype, backend_dtype, B=1, H=2, T=100, D=64, DV=64, causal=True, normalize=True):
    q, k, v, do = _qkv(B, H, T, D, DV, dtype)
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    o = attn(q, k, v)
    o.backward(do)
    rq, rk, rv = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = quadratic_attention(rq, rk, rv, attn.poly, scale=attn.scale, causal=causal, normalize=normalize)
    ref.backward(do.double())
    assert_close("o", ref, o, backend_dtype)
    assert_close("dq", rq.grad, q.grad, backend_dtype)
    assert_close("dk", rk.grad, k.grad, backend_dtype)
    assert_close("dv", rv.grad, v.grad, backend_dtype)


def test_done_when_degree2_head_dim_64_matches_reference_under_the_interpreter():
    """Issue 5's acceptance: from_spec("1 + x + x**2/2", head_dim=64), Triton (interpreter), fp32."""
    attn = FastAttention.from_spec("1 + x + x**2/2", head_dim=64, backend="triton", block_f=128)
    assert attn.feature_dim == 2145
    _grads_match(attn, torch.float32, torch.float32, H=1, T=80)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_torch_backend_matches_reference_float64(causal):
    attn = FastAttention.from_spec("(1+x)**3", head_dim=6, head_dim_v=5, causal=causal, normalize=False,
                                   backend="torch", chunk=16)
    _grads_match(attn, torch.float64, torch.float64, T=37, D=6, DV=5, causal=causal, normalize=False)


def test_backend_auto_follows_device_and_interpreter(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert choose_backend(x) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert choose_backend(x) == "torch"
    with pytest.raises(KernelError, match="device cpu"):
        choose_backend(x, "triton")
    with pytest.raises(KernelError, match="backend='cuda'"):
        choose_backend(x, "cuda")


def test_default_scale_is_sdpa_like():
    attn = FastAttention.from_spec("x", head_dim=16, normalize=False)
    assert attn.scale == 0.25


def test_exp_needs_degree_and_keeps_its_bound():
    with pytest.raises(KernelError, match="degree=p"):
        FastAttention.from_spec("exp(x)", head_dim=8)
    attn = FastAttention.from_spec("exp(x)", head_dim=8, degree=2)
    assert attn.poly.text == "1 + x + x**2/2" and "Taylor truncation at degree 2" in attn.poly.error_note


def test_degree2_exp_is_close_to_softmax_for_small_scores():
    # a sanity link to softmax: exp(s q.k) normalised is softmax; at |s q.k| <= 0.1 the
    # degree-2 truncation is within the remainder bound e^R R^3/6 ~ 2e-4 per score
    q, k, v, _ = _qkv(1, 1, 30, 8, 8, torch.float64)
    q, k = 0.1 * q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    attn = FastAttention.from_spec("exp(x)", head_dim=8, degree=2, scale=1.0, backend="torch")
    diff = (attn(q, k, v) - softmax_attention(q, k, v, causal=True, scale=1.0)).abs().max().item()
    assert diff < 1e-3, f"degree-2 exp attention differs from softmax by {diff:.3g} at |s q.k| <= 0.1"


@pytest.mark.parametrize("spec", ["x", "(1+x)**3", "x**3", "1 - x**2"])
def test_unsafe_normalizer_refused_by_the_layer(spec):
    with pytest.raises(KernelError, match="negative somewhere on the reals"):
        FastAttention.from_spec(spec, head_dim=4)
    FastAttention.from_spec(spec, head_dim=4, normalizer_fix="abs")
    FastAttention.from_spec(spec, head_dim=4, normalize=False)


@pytest.mark.parametrize("spec", ["x**2", "x**4", "x**2 + x**4"])
def test_power_attention_layer_divides_by_sum_f_plus_eps(spec):
    # f >= 0 with a zero at 0 (power attention) builds without a fix, and divides by sum_j f + eps
    attn = FastAttention.from_spec(spec, head_dim=4, backend="torch", chunk=8)
    q, k, v, _ = _qkv(1, 2, 30, 4, 4, torch.float64)
    q[:, :, 3] = 0.0
    ref = quadratic_attention(q, k, v, attn.poly, scale=attn.scale, causal=True, normalizer_fix="abs", eps=attn.eps)
    got = attn(q, k, v)
    assert bool((got[:, :, 3] == 0).all())
    assert_close("o", ref, got, torch.float64)


def test_feature_count_is_refused_before_anything_is_built():
    # (1+x)**8 at head dim 64 is 1.2e10 features: refused from the binomials, not after building them
    start = time.perf_counter()
    with pytest.raises(KernelError, match="needs 11,969,016,345 features at head dim 64"):
        FastAttention.from_spec("(1+x)**8", head_dim=64)
    with pytest.raises(KernelError, match="needs 11,969,016,345 features at head dim 64"):
        FastMultiheadAttention(128, 2, spec="(1+x)**8")
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("kw, match", [
    (dict(scale=float("nan")), "scale=nan must be a finite real number"),
    (dict(scale=float("-inf")), "scale=-inf must be a finite real number"),
    (dict(eps=float("nan")), "eps=nan must be a finite real number > 0"),
    (dict(eps=0), "eps=0 must be a finite real number > 0"),
    (dict(eps=float("inf")), "eps=inf must be a finite real number > 0"),
    (dict(chunk=0), "chunk=0 must be None or an int >= 1"),
    (dict(chunk=-64), "chunk=-64 must be None or an int >= 1"),
])
def test_layer_refuses_bad_numbers_at_construction(kw, match):
    with pytest.raises(KernelError, match=match):
        FastAttention.from_spec("1 + x + x**2/2", head_dim=4, **kw)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_layer_on_an_empty_sequence(backend):
    attn = FastAttention.from_spec("1 + x + x**2/2", head_dim=4, head_dim_v=3, backend=backend)
    o = attn(torch.randn(2, 2, 0, 4), torch.randn(2, 2, 0, 4), torch.randn(2, 2, 0, 3))
    assert o.shape == (2, 2, 0, 3)


def test_bf16_layer_under_the_interpreter_is_refused():
    attn = FastAttention.from_spec("1 + x + x**2/2", head_dim=4)
    q = k = v = torch.randn(1, 1, 8, 4, dtype=torch.bfloat16)
    with pytest.raises(KernelError, match="bfloat16 under TRITON_INTERPRET=1 is refused"):
        attn(q, k, v)


@pytest.mark.parametrize("shape_q, shape_v, match", [
    ((1, 1, 5, 3), (1, 1, 5, 4), "\\[B, H, T, 4\\]; got q \\(1, 1, 5, 3\\)"),
    ((1, 1, 5, 4), (1, 1, 6, 4), "value \\(1, 1, 6, 4\\) must share"),
    ((5, 4), (5, 4), "got q \\(5, 4\\)"),
])
def test_layer_names_bad_shapes(shape_q, shape_v, match):
    attn = FastAttention.from_spec("1 + x + x**2/2", head_dim=4, backend="torch")
    with pytest.raises(KernelError, match=match):
        attn(torch.randn(shape_q), torch.randn(shape_q), torch.randn(shape_v))


def test_multihead_block_matches_its_own_projections():
    torch.manual_seed(0)
    block = FastMultiheadAttention(32, 4, spec="1 + x + x**2/2", backend="torch").double()
    x = torch.randn(2, 40, 32, dtype=torch.float64, requires_grad=True)
    y, state = block(x)
    assert state is None
    q, k, v = block.qkv(x).view(2, 40, 3, 4, 8).permute(2, 0, 3, 1, 4)
    o = quadratic_attention(q, k, v, block.attn.poly, scale=8**-0.5, causal=True, normalize=True)
    want = block.out_proj(o.transpose(1, 2).reshape(2, 40, 32))
    assert_close("block", want, y, torch.float64)
    y.square().sum().backward()
    assert block.qkv.weight.grad is not None and bool(torch.isfinite(block.qkv.weight.grad).all())


def test_multihead_block_in_a_small_transformer_trains_one_step():
    torch.manual_seed(0)
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.attn = torch.nn.Embedding(50, 32), FastMultiheadAttention(32, 4, backend="torch")
            self.head = torch.nn.Sequential(torch.nn.LayerNorm(32), torch.nn.Linear(32, 50))

        def forward(self, tokens):
            return self.head(self.attn(self.emb(tokens))[0])

    model = Model()
    tokens = torch.randint(0, 50, (2, 24))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss0 = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).transpose(1, 2), tokens[:, 1:])
    loss0.backward()
    opt.step()
    loss1 = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).transpose(1, 2), tokens[:, 1:])
    assert torch.isfinite(loss1) and loss1.item() < loss0.item()


def test_multihead_rejects_indivisible_heads():
    with pytest.raises(KernelError, match="embed_dim=30 must be divisible by num_heads=4"):
        FastMultiheadAttention(30, 4)


def test_torch_compile_does_not_break_the_block():
    torch.manual_seed(0)
    block = FastMultiheadAttention(16, 2, spec="1 + x + x**2/2", backend="torch", chunk=8)
    x = torch.randn(2, 20, 16, requires_grad=True)
    want, _ = block(x)
    compiled = torch.compile(block, backend="aot_eager")
    got, _ = compiled(x)
    assert_close("compiled", want, got, torch.float32)
    got.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
