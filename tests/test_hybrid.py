"""hybrid_attention (window softmax + feature map outside) against dense float64, SDPA and fast_attention."""

import math

import pytest
import torch

from fastattn.attention import fast_attention, hybrid_attention
from fastattn.errors import KernelError
from fastattn.kernels.checks import assert_close
from fastattn.kernels.naive import horner
from fastattn.kernels.poly import polynomial

SPECS = ["1 + x + x**2/2", "(1 + x)**2", "x**2 + 1"]
WINDOWS = ["0", "1", "5", "T-1", "T", "3T"]
LENGTHS = [1, 7, 33, 64]


def _window(name, T):
    return {"T-1": T - 1, "T": T, "3T": 3 * T}[name] if "T" in name else int(name)


def dense_hybrid(q, k, v, spec, window, scale):
    """The [T, T] weight matrix with exp(x) in the window and f(x) outside, normalised; float64, differentiable."""
    poly = polynomial(spec)
    T = q.shape[-2]
    x = scale * (q @ k.transpose(-1, -2))
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    inside, outside = (j <= i) & (j > i - window), j <= i - window
    w = torch.where(inside, torch.exp(x), torch.where(outside, horner(x, poly), 0.0))
    z = w.sum(-1)
    # window 0 is fast_attention's map, which divides by |z| + 1e-6 for an f with real zeros
    if window == 0 and not poly.positive:
        z = z.abs() + 1e-6
    return (w @ v) / z[..., None]


def inputs(T, dtype=torch.float64, sigma=1.0, seed=0, D=4, DV=3):
    g = torch.Generator().manual_seed(seed)
    q = (sigma * torch.randn(2, 2, T, D, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    k = (sigma * torch.randn(2, 2, T, D, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    v = torch.randn(2, 2, T, DV, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    do = torch.randn(2, 2, T, DV, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v, do


def grads(o, do, *xs):
    return torch.autograd.grad(o, xs, do)


def check(name, ref, got, dtype=torch.float64):
    # gradients are sums of O(1) terms (q, k, v, do ~ N(0, 1)) that can cancel, exactly so at T = 1
    assert_close(name, ref, got, dtype, terms=torch.ones_like(ref))


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("wname", WINDOWS)
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("chunk", ["default", "w", "w+3"])
def test_matches_dense_reference(spec, wname, T, chunk):
    window = _window(wname, T)
    chunk = {"default": None, "w": max(window, 1), "w+3": max(window, 1) + 3}[chunk]
    q, k, v, do = inputs(T)
    scale = 0.7
    ref = dense_hybrid(q, k, v, spec, window, scale)
    got = hybrid_attention(q, k, v, spec, window=window, scale=scale, chunk=chunk)
    check("o", ref, got)
    for name, r, g in zip(("dq", "dk", "dv"), grads(ref, do, q, k, v), grads(got, do, q, k, v)):
        check(name, r, g)


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("wname", ["T", "3T"])
@pytest.mark.parametrize("spec", SPECS)
def test_full_window_is_causal_softmax(spec, wname, T):
    window = _window(wname, T)
    q, k, v, do = inputs(T, seed=1)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.9)
    got = hybrid_attention(q, k, v, spec, window=window, scale=0.9)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    for r, g in zip(grads(ref, do, q, k, v), grads(got, do, q, k, v)):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=0)


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("spec", SPECS)
def test_zero_window_is_fast_attention(spec, T):
    q, k, v, do = inputs(T, seed=2)
    ref = fast_attention(q, k, v, spec, normalize=True, chunk=5)
    got = hybrid_attention(q, k, v, spec, window=0, chunk=3)
    check("o", ref, got)
    for name, r, g in zip(("dq", "dk", "dv"), grads(ref, do, q, k, v), grads(got, do, q, k, v)):
        check(name, r, g)


@pytest.mark.parametrize("window", [0, 1, 5, 64])
@pytest.mark.parametrize("spec", SPECS)
def test_large_scores_stay_finite(spec, window):
    # sigma = 6 at D = 4, s = 1/2: scores reach +-150, so exp overflows float32 unshifted and f(x) >> exp(m) on
    # rows whose window scores are all very negative
    q, k, v, do = inputs(64, sigma=6.0, seed=3)
    ref = dense_hybrid(q, k, v, spec, window, 0.5)
    got64 = hybrid_attention(q, k, v, spec, window=window, chunk=max(window, 8))
    check("o float64", ref, got64)
    for name, r, g in zip(("dq", "dk", "dv"), grads(ref, do, q, k, v), grads(got64, do, q, k, v)):
        check(name, r, g)
    x = (q @ k.transpose(-1, -2)).detach() / 2
    assert x.abs().max() > 100, "the inputs must reach scores past float32's exp range"
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    got32 = hybrid_attention(q32, k32, v32, spec, window=window, chunk=max(window, 8))
    g32 = grads(got32, do.float(), q32, k32, v32)
    assert bool(torch.isfinite(got32).all()) and all(bool(torch.isfinite(g).all()) for g in g32)
    # float32 rounds the scores (~150) to ~1e-5 absolute, which the exp weights turn into relative error
    err = (got32.double() - ref).norm() / ref.norm()
    assert err < 1e-4, f"float32 o at sigma = 6: rel-RMS {err:.3g}"


def test_bfloat16_computes_in_float32():
    q, k, v, _ = inputs(33, seed=4)
    ref = dense_hybrid(q, k, v, "1 + x + x**2/2", 5, 0.5)
    got = hybrid_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), "1 + x + x**2/2", window=5, chunk=5)
    assert got.dtype == torch.bfloat16
    # the error is bf16's rounding of q, k, v (2**-9 relative) and of o, not of the sums
    err = (got.double() - ref).norm() / ref.norm()
    assert err < 1e-2, f"bf16 rel-RMS {err:.3g}"


def test_empty_sequence():
    q = torch.zeros(1, 2, 0, 4, requires_grad=True)
    o = hybrid_attention(q, q, q, "1 + x + x**2/2", window=3)
    assert o.shape == (1, 2, 0, 4)
    (g,) = torch.autograd.grad(o.sum(), q)
    assert g.shape == q.shape


def test_window_outside_term_uses_f_not_exp():
    # with a window of 1 and f far from exp, the result must differ from softmax: the outside term is live
    q, k, v, _ = inputs(16, seed=5)
    soft = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5)
    got = hybrid_attention(q, k, v, "x**2 + 1", window=1, scale=0.5)
    assert (got - soft)[:, :, 1:].abs().max() > 1e-3
    torch.testing.assert_close(got[:, :, 0], soft[:, :, 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("window", [-1, 1.5, True, "3", None])
def test_refuses_bad_window(window):
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises(KernelError, match="window=.* must be an int >= 0"):
        hybrid_attention(q, q, q, "1 + x + x**2/2", window=window)


def test_refuses_chunk_shorter_than_window():
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises(KernelError, match=r"chunk=3 must be None or an int >= max\(window, 1\) = 4"):
        hybrid_attention(q, q, q, "1 + x + x**2/2", window=4, chunk=3)


@pytest.mark.parametrize("spec", ["1 + x", "x**3", "1 - x**2", "x"])
def test_refuses_f_negative_somewhere(spec):
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises(KernelError, match="f must be >= 0 on the reals"):
        hybrid_attention(q, q, q, spec, window=2)


@pytest.mark.parametrize("spec", ["x**2", "x**2 + x**4", "(1 + x)**2"])
def test_accepts_f_with_real_zeros(spec):
    q, k, v, _ = inputs(9, seed=6)
    got = hybrid_attention(q, k, v, spec, window=2, scale=0.5)
    check("o", dense_hybrid(q, k, v, spec, 2, 0.5), got)


@pytest.mark.parametrize("shapes, match", [
    (((1, 1, 4, 2), (1, 1, 4, 2), (1, 1, 4)), "value must be"),
    (((1, 1, 4, 2), (1, 1, 5, 2), (1, 1, 5, 2)), "is_causal=True needs as many queries as keys"),
    (((1, 1, 4, 2), (1, 1, 4, 3), (1, 1, 4, 2)), "query head dim 2 != key head dim 3"),
    (((2, 1, 4, 2), (1, 1, 4, 2), (1, 1, 4, 2)), "batch sizes differ"),
    (((1, 4, 4, 2), (1, 2, 4, 2), (1, 2, 4, 2)), "no grouped-query attention yet"),
    (((1, 3, 4, 2), (1, 2, 4, 2), (1, 2, 4, 2)), "H_q a multiple of H_kv"),
])
def test_refuses_bad_shapes(shapes, match):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(KernelError, match=match):
        hybrid_attention(q, k, v, "1 + x + x**2/2", window=2)


def test_refuses_other_bad_arguments():
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises(KernelError, match="must share one real floating dtype"):
        hybrid_attention(q, q.double(), q, "1 + x + x**2/2", window=2)
    with pytest.raises(KernelError, match="scale=nan must be a finite real"):
        hybrid_attention(q, q, q, "1 + x + x**2/2", window=2, scale=math.nan)
    with pytest.raises(KernelError, match="backend='cuda'; use 'auto'"):
        hybrid_attention(q, q, q, "1 + x + x**2/2", window=2, backend="cuda")
    with pytest.raises(KernelError, match="backend='triton' takes float32, float16 or"):
        hybrid_attention(q.double(), q.double(), q.double(), "1 + x + x**2/2", window=2, backend="triton")
