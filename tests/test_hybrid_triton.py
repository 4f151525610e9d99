"""The Triton path of hybrid_attention (window kernel + fast outside sums) against the float64 dense reference.

Under the interpreter (fp32, fp16): o, dq, dk, dv with a random upstream gradient. Rows marked ``fast`` take
the outside sums from the fast Triton kernels; the others from their torch path (``tuning outside='torch'``),
since the interpreted feature-map kernels take minutes at D = 60 and ~10 s at T = 200 (they have their own
tests), while the window kernel runs interpreted in every row.
"""

import math

import pytest
import torch

from fastattn.attention import fast_attention, hybrid_attention
from fastattn.errors import KernelError
from fastattn.kernels.checks import assert_close, errors
from fastattn.kernels.naive import horner
from fastattn.kernels.poly import polynomial
from fastattn.kernels.window import window_attention_reference
from fastattn.kernels.window.flash import plan, window_attention
from test_hybrid import dense_hybrid

TAYLOR, SQUARE = "1 + x + x**2/2", "(1 + x)**2"
DT = {"fp32": torch.float32, "fp16": torch.float16}
# small tiles, so that T = 63 already spans several query and key blocks, unequal in the two passes
SMALL = {"block_m": 32, "block_n": 16, "bwd_block_m": 16, "bwd_block_n": 32}
MID = {"block_m": 64, "block_n": 32, "bwd_block_m": 32, "bwd_block_n": 64}
PLAN = {}  # the plan's own tiles: 128 x 64 forward, 64 x 64 backward for 16-bit inputs, 32 x 32 for float32

# (T, window, D, f, dtype, outside, tiles): every T, window, D, f and dtype of the brief appears, with both
# outside routes and both tile sets; window >= T rows have no outside sums at all
ROWS = [
    (63, 16, 16, TAYLOR, "fp32", "fast", SMALL),
    (63, 37, 16, SQUARE, "fp16", "fast", SMALL),
    (63, 1, 16, SQUARE, "fp32", "fast", MID),
    (63, 64, 16, TAYLOR, "fp16", "fast", SMALL),
    (63, 16, 60, SQUARE, "fp16", "torch", SMALL),
    (1, 1, 16, TAYLOR, "fp32", "fast", SMALL),
    (1, 16, 60, SQUARE, "fp16", "torch", SMALL),
    (200, 1, 16, TAYLOR, "fp32", "torch", MID),
    (200, 16, 60, SQUARE, "fp32", "torch", MID),
    (200, 37, 60, TAYLOR, "fp16", "torch", MID),
    (200, 64, 16, SQUARE, "fp16", "torch", PLAN),
    (200, 200, 60, TAYLOR, "fp32", "torch", PLAN),
]


def _id(row):
    T, w, D, f, dt, how, tiles = row
    size = "small" if tiles is SMALL else "mid" if tiles is MID else "plan"
    return f"T{T}-w{w}-D{D}-{'taylor' if f == TAYLOR else 'square'}-{dt}-{how}-{size}"


def inputs(T, D, dtype, seed=0, DV=48, sigma=1.0):
    """q, k, v in ``dtype`` (leaves), their float64 copies (leaves), and the upstream gradient in float64.

    Two heads (the kernels' per-head offsets), one at T = 200 (the interpreter's time goes with the grid)."""
    g = torch.Generator().manual_seed(seed)
    H = 1 if T >= 200 else 2
    raw = [sigma * torch.randn(1, H, T, D, generator=g, dtype=torch.float64) for _ in range(2)]
    raw.append(torch.randn(1, H, T, DV, generator=g, dtype=torch.float64))
    do = torch.randn(1, H, T, DV, generator=g, dtype=torch.float64)
    low = [x.to(dtype).requires_grad_() for x in raw]
    # the reference sees the rounded inputs: what is compared is the computation, not the input rounding
    ref = [x.detach().double().requires_grad_() for x in low]
    return low, ref, do


def check(name, ref, got, dtype):
    # gradients are sums of O(1) terms (q, k, v, do ~ N(0, 1)) that can cancel, exactly so at T = 1: the error
    # is measured against max(|ref|, 1), as in tests/test_hybrid.py
    return assert_close(name, ref, got, dtype, terms=torch.ones_like(ref))


def compare(ref_out, got_out, ref_in, got_in, do, dtype):
    check("o", ref_out, got_out, dtype)
    ref_g = torch.autograd.grad(ref_out, ref_in, do)
    got_g = torch.autograd.grad(got_out, got_in, do.to(dtype))
    for name, r, g in zip(("dq", "dk", "dv"), ref_g, got_g):
        check(name, r, g, dtype)


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_matches_dense_reference(row, kernel_env):
    T, window, D, spec, dt, how, tiles = row
    dtype = DT[dt]
    got_in, ref_in, do = inputs(T, D, dtype)
    scale = 1.0 / math.sqrt(D)
    ref = dense_hybrid(*ref_in, spec, window, scale)
    tuning = dict(tiles) if how == "fast" else dict(tiles, outside="torch")
    got = hybrid_attention(*got_in, spec, window=window, backend="triton", tuning=tuning)
    assert got.dtype == dtype
    compare(ref, got, ref_in, got_in, do, dtype)


def test_split_outside_matches(kernel_env):
    # the outside sums in two calls (v, then the ones column) give the same result as one widened call
    got_in, ref_in, do = inputs(63, 16, torch.float32, seed=1)
    ref = dense_hybrid(*ref_in, TAYLOR, 16, 0.25)
    got = hybrid_attention(*got_in, TAYLOR, window=16, backend="triton", tuning=dict(SMALL, outside="split"))
    compare(ref, got, ref_in, got_in, do, torch.float32)


@pytest.mark.parametrize("dt", ["fp32", "fp16"])
def test_full_window_is_causal_softmax(dt, kernel_env):
    dtype = DT[dt]
    got_in, ref_in, do = inputs(63, 16, dtype, seed=2)
    ref = torch.nn.functional.scaled_dot_product_attention(*ref_in, is_causal=True, scale=0.3)
    got = hybrid_attention(*got_in, SQUARE, window=200, scale=0.3, backend="triton", tuning=SMALL)
    compare(ref, got, ref_in, got_in, do, dtype)


@pytest.mark.parametrize("spec", [TAYLOR, SQUARE])
def test_zero_window_is_fast_attention(spec, kernel_env):
    got_in, ref_in, do = inputs(63, 16, torch.float32, seed=3)
    ref = fast_attention(*ref_in, spec, normalize=True)
    got = hybrid_attention(*got_in, spec, window=0, backend="triton")
    compare(ref, got, ref_in, got_in, do, torch.float32)


def test_window_kernel_matches_its_reference(kernel_env):
    # the kernel alone, given outside sums that include rows with z = 0 (no outside term) and z < 0 (dropped)
    got_in, ref_in, do = inputs(63, 60, torch.float32, seed=4)
    g = torch.Generator().manual_seed(5)
    n = torch.randn(1, 2, 63 - 9, 48, generator=g, dtype=torch.float64)
    z = 5 * torch.rand(1, 2, 63 - 9, 1, generator=g, dtype=torch.float64)
    z[:, :, 3], z[:, :, 7] = 0.0, -1.0
    out_ref = torch.cat([n, z], -1).requires_grad_()
    out_got = out_ref.detach().float().requires_grad_()
    ref = window_attention_reference(*ref_in, out_ref, scale=0.4, window=9)
    got = window_attention(*got_in, out_got, scale=0.4, window=9, tuning=SMALL)
    check("o", ref, got, torch.float32)
    ref_g = torch.autograd.grad(ref, ref_in + [out_ref], do)
    got_g = torch.autograd.grad(got, got_in + [out_got], do.float())
    for name, r, gg in zip(("dq", "dk", "dv", "d outside"), ref_g, got_g):
        check(name, r, gg, torch.float32)
    assert bool((got_g[3][:, :, 7] == 0).all()), "a row with z <= 0 takes no outside term, so no gradient"


def _subtraction(q, k, v, spec, window, scale, dtype):
    """o with the outside sums taken as (all causal keys) - (window keys), computed in ``dtype``: the design
    this path avoids."""
    poly = polynomial(spec)
    T, DV = q.shape[-2], v.shape[-1]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    inside = (j <= i) & (j > i - window)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    # the all-keys sums from the fast kernels, the window's f sums exactly (Horner) in the same dtype
    every = fast_attention(q, k, torch.cat([v, torch.ones_like(v[..., :1])], -1), poly, scale=scale,
                           normalize=False, backend="triton")
    x = scale * (q @ k.transpose(-1, -2))
    f_win = horner(x, poly).masked_fill(~inside, 0.0)
    n, z = every[..., :DV] - f_win @ v, every[..., DV] - f_win.sum(-1)
    # rows i < w have no outside key: their sums are 0 by construction, not a rounded difference
    none = torch.arange(T) < window
    n, z = n.masked_fill(none[:, None], 0.0), z.masked_fill(none, 0.0)
    e = torch.exp(x.masked_fill(~inside, -math.inf))
    return (e @ v + n) / (e.sum(-1) + z)[..., None]


def test_no_cancellation_where_window_f_dominates(kernel_env):
    # Every key j >= 1 scores -depth against every query, key 0 scores 0: at depth 100, f = 1 + x + x**2/2 is
    # 4901 on the window keys (exp(-100) ~ 0) and 1 on key 0. Query w has the w window keys and key 0 outside, so
    # o_w ~ v_0 with normaliser ~1, and (all - window) would cancel 16 * 4901 against it. Measured (fp32, T = 32,
    # w = 16), max-abs error of o over max |o|: the subtraction 1.1e-4 (depth 30) and 1.3e-3 (depth 100), ours
    # <= 1e-7 for both (README.md). The subtraction here zeroes rows i < w (no outside key) by construction:
    # left to rounding, their outside term is a residue of the window's f sums against a normaliser ~exp(-depth)
    # (on scores varying along the window, -16 .. -111, that residue made o wrong by a rel-RMS of 4e7).
    T, window, D = 32, 16, 16
    g = torch.Generator().manual_seed(6)
    v = torch.randn(1, 1, T, 48, generator=g, dtype=torch.float64)
    q = torch.zeros(1, 1, T, D, dtype=torch.float64)
    q[..., 0] = 1.0
    for depth in (30.0, 100.0):
        k = torch.zeros(1, 1, T, D, dtype=torch.float64)
        k[:, :, 1:, 0] = -depth
        ref = dense_hybrid(q, k, v, TAYLOR, window, 1.0)
        sub = errors(ref, _subtraction(q, k, v, TAYLOR, window, 1.0, torch.float32))["max_rel"]
        got = hybrid_attention(q.float(), k.float(), v.float(), TAYLOR, window=window, scale=1.0, backend="triton",
                               tuning=SMALL)
        ours = assert_close("o", ref, got, torch.float32)["max_rel"]
        print(f"depth {depth}: max error of o over max |o|: (all - window) {sub:.2g}, ours {ours:.2g}")
        assert ours < 1e-6, f"depth {depth}: ours {ours:.3g}"


@pytest.mark.parametrize("shape, match", [
    ((1, 2, 50, 49), r"outside must be \[B, H, T - window, DV \+ 1\] = \[1, 2, 53, 49\]"),
    (None, r"outside must be .* = \[1, 2, 53, 49\] \(None when window >= T\); got None"),
])
def test_window_kernel_refuses_bad_outside(shape, match, kernel_env):
    q = torch.randn(1, 2, 63, 16)
    v = torch.randn(1, 2, 63, 48)
    with pytest.raises(ValueError, match=match):
        window_attention(q, q, v, None if shape is None else torch.zeros(shape), scale=0.25, window=10)


def test_plan_refuses_unknown_and_bad_tuning():
    assert plan(16, 64, torch.bfloat16).block_m == 128
    assert plan(16, 128, torch.float16).block_m == 64
    assert plan(16, 64, torch.float32).block_m == 32
    assert plan(16, 64, torch.float16, {"block_m": 64, "warps": 8}).block_m == 64
    with pytest.raises(ValueError, match=r"unknown tuning keys \['blockm'\]"):
        plan(16, 64, torch.float16, {"blockm": 64})
    with pytest.raises(ValueError, match="tuning block_n=24 must be"):
        plan(16, 64, torch.float16, {"block_n": 24})
    q = torch.randn(1, 1, 8, 4)
    with pytest.raises(KernelError, match=r"unknown tuning keys \['speed'\]"):
        hybrid_attention(q, q, q, TAYLOR, window=2, backend="triton", tuning={"speed": 1})
    with pytest.raises(KernelError, match="tuning outside='fla'"):
        hybrid_attention(q, q, q, TAYLOR, window=2, backend="triton", tuning={"outside": "fla"})


def test_outside_route_by_value_tile():
    from fastattn.attention.hybrid import _outside_route

    # the ones column rides in v's power-of-two tile (16 at least) when it has room, else a call of its own
    assert [_outside_route(dv) for dv in (1, 15, 16, 48, 63, 64, 100, 128)] == [
        "augment", "augment", "split", "augment", "augment", "split", "augment", "split"]


def test_auto_takes_torch_on_cpu(monkeypatch):
    # a CPU tensor runs the torch path under "auto", even under the interpreter: it would ignore the tuning
    import fastattn.attention.hybrid as hybrid

    def boom(*args, **kwargs):
        raise AssertionError("the Triton path ran")

    monkeypatch.setattr(hybrid, "_triton_hybrid", boom)
    q = torch.randn(1, 1, 8, 4)
    assert hybrid_attention(q, q, q, TAYLOR, window=2).shape == (1, 1, 8, 4)


def test_float16_outside_sums_past_its_range(kernel_env):
    # scores up to ~ +-100 make f ~ 5000 per key, so sum f over ~50 outside keys passes float16's 65504: the
    # outside sums of float16 inputs are taken in float32 (here without it the rows came back NaN)
    got_in, ref_in, do = inputs(63, 16, torch.float16, seed=7, sigma=10.0)
    x = (ref_in[0] @ ref_in[1].transpose(-1, -2)).detach() / 4
    f_sums = torch.tril(horner(x, polynomial(TAYLOR)), -16).sum(-1)
    assert float(f_sums.max()) > 2 * 65504, "the inputs must push the outside sums past float16's range"
    ref = dense_hybrid(*ref_in, TAYLOR, 16, 0.25)
    got = hybrid_attention(*got_in, TAYLOR, window=16, backend="triton", tuning=SMALL)
    compare(ref, got, ref_in, got_in, do, torch.float16)
