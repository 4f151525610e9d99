"""FLuRKA: learned sequence projections then f attention, against a float64 reference; both forms; refusals."""

import math

import pytest
import torch

from fastattn.attention.flurka import FLuRKAttention, flurka_attention, flurka_cost
from fastattn.errors import KernelError
from fastattn.kernels.poly import polynomial


def _reference(q, k, v, E, F, coeffs, scale, normalize):
    # definition: K' = E K, V' = F V, o = f(s Q K'^T) V' [/ row sums], all in float64
    q, k, v, E, F = (t.double() for t in (q, k, v, E, F))
    G = q.shape[1] // k.shape[1]
    kp = torch.einsum("hrt,bhtd->bhrd", E, k).repeat_interleave(G, 1)
    vp = torch.einsum("hrt,bhtd->bhrd", F, v).repeat_interleave(G, 1)
    x = scale * q @ kp.transpose(-1, -2)
    a = sum(c * x**j for j, c in coeffs.items())
    o = a @ vp
    return o / a.sum(-1, keepdim=True) if normalize else o


@pytest.mark.parametrize("method", ["direct", "features"])
@pytest.mark.parametrize("spec,coeffs,normalize", [("1 + x + x**2/2", {0: 1, 1: 1, 2: 0.5}, True),
                                                   ("x**2", {2: 1.0}, False)], ids=["taylor2", "x2"])
def test_both_forms_equal_the_definition(method, spec, coeffs, normalize):
    g = torch.Generator().manual_seed(0)
    B, Hq, Hk, T, D, DV, r = 2, 4, 2, 37, 6, 5, 9
    q, k = torch.randn(B, Hq, T, D, generator=g), torch.randn(B, Hk, T, D, generator=g)
    v = torch.randn(B, Hk, T, DV, generator=g)
    E, F = (torch.randn(Hk, r, T, generator=g) / math.sqrt(T) for _ in range(2))
    got = flurka_attention(q, k, v, spec, E, F, enable_gqa=True, normalize=normalize, method=method)
    want = _reference(q, k, v, E, F, coeffs, 1 / math.sqrt(D), normalize)
    assert got.shape == (B, Hq, T, DV)
    assert (got.double() - want).abs().max() < 1e-5 * max(1.0, want.abs().max().item())


def test_gradients_reach_the_projections():
    g = torch.Generator().manual_seed(1)
    q = k = v = torch.randn(1, 2, 20, 4, dtype=torch.float64, generator=g)
    E = (torch.randn(2, 3, 20, dtype=torch.float64, generator=g) / 20**0.5).requires_grad_()
    f = polynomial("1 + x + x**2/2")  # parsed once: gradcheck calls the function 2 x 120 times
    assert torch.autograd.gradcheck(lambda e: flurka_attention(q, k, v, f, e, method="direct"), (E,))


def test_the_cost_model_picks_the_cheaper_form():
    assert flurka_cost(8192, 64, 64, 256, 2145)["choice"] == "direct"
    assert flurka_cost(8192, 16, 64, 512, 153)["choice"] == "features"
    c = flurka_cost(1000, 8, 8, 10, 45)
    assert (c["projection"], c["direct"], c["features"]) == (160000, 160000, 10 * 45 * 8 + 1000 * 45 * 8)


def test_layer_runs_and_refuses_what_it_cannot_do():
    m = FLuRKAttention(32, 4, rank=8, max_len=64, num_kv_heads=2)
    x = torch.randn(2, 50, 32, requires_grad=True)
    m(x).sum().backward()
    assert m.proj_k.grad is not None and torch.isfinite(m.proj_k.grad).all()
    with pytest.raises(KernelError, match="max_len"):
        m(torch.randn(1, 65, 32))
    q = k = v = torch.randn(1, 1, 8, 4)
    with pytest.raises(KernelError, match="non-causal"):
        flurka_attention(q, k, v, "1 + x", torch.randn(3, 8), is_causal=True)
    with pytest.raises(KernelError, match=r"expected \[r, 8\]"):
        flurka_attention(q, k, v, "1 + x + x**2/2", torch.randn(3, 9))
    with pytest.raises(KernelError, match="method"):
        flurka_attention(q, k, v, "1 + x + x**2/2", torch.randn(3, 8), method="fast")
