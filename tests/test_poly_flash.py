"""poly_flash_attention: the quadratic flash kernels on the interpreter against the float64 quadratic reference.

Rows cover each route a launch can take: causal and not (T_q != T_k), normalised, unnormalised and |z| + eps,
grouped-query heads, head dims that are no power of two and DV != D, tiles of 16 so a small T walks clean and
masked blocks in every loop, the plan's own tiles, fp16, and T = 1. o, dq, dk, dv with a random upstream gradient.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from fastattn.errors import KernelError
from fastattn.kernels.checks import assert_close
from fastattn.kernels.naive import quadratic_attention
from fastattn.kernels.poly import polynomial
from fastattn.kernels.poly_flash import coefficients, cost, plan, poly_flash_attention

pytestmark = pytest.mark.usefixtures("kernel_env")
SMALL = {"fwd": (16, 16, 4, 1), "bwd": (16, 16, 4, 1)}

# id: B, H_q, H_kv, T_q, T_k, D, DV, causal, f, normalize, normalizer_fix, tuning, dtype
CASES = [
    ("taylor2-causal-ragged", 1, 2, 2, 150, 150, 16, 16, True, "1 + x + x**2/2", True, None, SMALL, torch.float32),
    ("x2-gqa2-d20-v12-unnormalised", 2, 4, 2, 70, 70, 20, 12, True, "x**2", False, None, SMALL, torch.float32),
    ("cubic-noncausal-Tq37-Tk90-abs", 1, 2, 1, 37, 90, 16, 24, False, "(1 + x)**3", True, "abs", SMALL,
     torch.float32),
    ("taylor2-plan-tiles-d64", 1, 1, 1, 100, 100, 64, 64, True, "1 + x + x**2/2", True, None, None, torch.float32),
    ("taylor2-fp16-gqa4", 1, 4, 1, 45, 45, 32, 32, True, "1 + x + x**2/2", True, None, SMALL, torch.float16),
    ("one-token-unnormalised", 1, 1, 1, 1, 1, 8, 8, True, "1 + x + x**2/2", False, None, None, torch.float32),
]


@pytest.mark.parametrize("B, Hq, Hk, Tq, Tk, D, DV, causal, f, normalize, fix, tuning, dtype",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_flash_kernels_match_the_float64_quadratic_reference(B, Hq, Hk, Tq, Tk, D, DV, causal, f, normalize, fix,
                                                            tuning, dtype):
    gen = torch.Generator().manual_seed(Tq + 7 * D)
    q = torch.randn(B, Hq, Tq, D, generator=gen).to(dtype).requires_grad_()
    k = torch.randn(B, Hk, Tk, D, generator=gen).to(dtype).requires_grad_()
    v = torch.randn(B, Hk, Tk, DV, generator=gen).to(dtype).requires_grad_()
    do = torch.randn(B, Hq, Tq, DV, generator=gen).to(dtype)
    o = poly_flash_attention(q, k, v, f, is_causal=causal, normalize=normalize, normalizer_fix=fix, tuning=tuning)
    got = (o,) + torch.autograd.grad(o, (q, k, v), do)
    G = Hq // Hk
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = quadratic_attention(qd, kd.repeat_interleave(G, 1), vd.repeat_interleave(G, 1), polynomial(f).as_dict(),
                              causal=causal, normalize=normalize, normalizer_fix=fix)
    ref = (ref,) + torch.autograd.grad(ref, (qd, kd, vd), do.double())
    for name, a, b in zip(("o", "dq", "dk", "dv"), ref, got):
        assert b.dtype == dtype
        assert_close(name, a, b, dtype)


def test_scale_rides_in_the_coefficients():
    h, p = coefficients(polynomial("1 + x + x**2/2"), 0.5)
    assert p == 2 and h[:3] == (0.125, 0.5, 1.0) and set(h[3:]) == {0.0}
    q = torch.randn(1, 1, 33, 8, dtype=torch.float64)
    k = torch.randn(1, 1, 33, 8, dtype=torch.float64)
    v = torch.randn(1, 1, 33, 8, dtype=torch.float64)
    o = poly_flash_attention(q.float(), k.float(), v.float(), "x**2 + 1", scale=0.3, tuning=SMALL)
    assert_close("o", quadratic_attention(q, k, v, {0: 1.0, 2: 1.0}, scale=0.3), o, torch.float32)


def test_a_denominator_that_overflows_gives_a_nan_row_never_a_finite_wrong_one():
    # f = 1 + x**8 is positive (no |z| fix); a query of 1e6 makes f(q.k) overflow fp32, so its row's z is inf
    q = torch.randn(1, 1, 20, 8)
    q[0, 0, 3] = 1e6
    k, v = torch.randn(1, 1, 20, 8), torch.randn(1, 1, 20, 8)
    o = poly_flash_attention(q, k, v, "1 + x**8", tuning=SMALL)
    assert torch.isnan(o[0, 0, 3]).all()
    rest = torch.cat([o[0, 0, :3], o[0, 0, 4:]])
    ref = quadratic_attention(q.double(), k.double(), v.double(), {0: 1.0, 8: 1.0})
    assert_close("o", torch.cat([ref[0, 0, :3], ref[0, 0, 4:]]), rest, torch.float32)


def test_empty_sequence_and_its_gradient():
    q = torch.randn(1, 2, 0, 8, requires_grad=True)
    o = poly_flash_attention(q, q, q, "1 + x + x**2/2")
    assert o.shape == (1, 2, 0, 8)
    o.sum().backward()
    assert q.grad.shape == q.shape


@pytest.mark.parametrize("kwargs, inputs, match", [
    ({}, ((1, 2, 10, 8), (1, 2, 12, 8), (1, 2, 12, 8)), "is_causal=True needs T_q == T_k"),
    ({}, ((1, 3, 10, 8), (1, 2, 10, 8), (1, 2, 10, 8)), "multiple of H_kv"),
    ({}, ((1, 1, 10, 160), (1, 1, 10, 160), (1, 1, 10, 8)), "must lie in 1..128"),
    ({"tuning": {"fwd": (24, 16, 4, 1)}}, ((1, 1, 10, 8),) * 3, "powers of two"),
    ({"tuning": {"walk": (16, 16, 4, 1)}}, ((1, 1, 10, 8),) * 3, "not known"),
    ({"scale": float("nan")}, ((1, 1, 10, 8),) * 3, "finite real"),
    ({"is_causal": False}, ((1, 1, 10, 8), (1, 1, 0, 8), (1, 1, 0, 8)), "see no key"),
])
def test_bad_requests_are_refused_with_what_to_do(kwargs, inputs, match):
    q, k, v = (torch.randn(*s) for s in inputs)
    with pytest.raises(KernelError, match=match):
        poly_flash_attention(q, k, v, "1 + x + x**2/2", **kwargs)


def test_refusals_of_degree_dtype_and_sign():
    x = torch.randn(1, 1, 10, 8)
    with pytest.raises(KernelError, match="degree 9"):
        poly_flash_attention(x, x, x, "x**9")
    with pytest.raises(KernelError, match="bf16|bfloat16"):
        poly_flash_attention(x.bfloat16(), x.bfloat16(), x.bfloat16(), "x**2")
    with pytest.raises(KernelError):  # x is negative somewhere: normalising needs normalizer_fix="abs"
        poly_flash_attention(x, x, x, "x")


def test_plan_and_cost():
    assert plan(torch.bfloat16, 64, 64).fwd == (64, 64, 4, 3) and plan(torch.bfloat16, 128, 128).fwd == (128, 64, 8, 3)
    assert plan(torch.float32, 128, 128).bwd == (16, 16, 4, 1)
    assert plan(torch.bfloat16, 128, 128, gated=True).bwd == (32, 64, 4, 3) == plan(torch.float16, 96, 64, gated=True).bwd
    assert plan(torch.bfloat16, 64, 64, gated=True) == plan(torch.bfloat16, 64, 64)
    c = cost(1024, 64, 64, causal=True)
    assert c["fwd"] == 2 * 1024 * 1025 / 2 * 128 and c["fwdbwd"] == c["fwd"] + c["bwd"]
    assert cost(1024, 64, 64, causal=False)["fwd"] == 4 * 1024**2 * 64


_COMPILE = """
import json
from fastattn.kernels.poly_flash import compile_kernels
print(json.dumps({d: compile_kernels(head_dim=d, head_dim_v=d, dtype="bf16") for d in (64, 128)}))
"""


@pytest.mark.slow
def test_bf16_kernels_compile_for_sm90_without_spills():
    import json
    import re

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    for d, kernels in report.items():
        assert len(kernels) == 4, kernels
        for name, line in kernels.items():
            assert int(re.search(r"SMEM:(\d+)", line).group(1)) <= 232448, (d, name, line)
            assert int(re.search(r"STACK:(\d+)", line).group(1)) == 0, (d, name, line)


def test_cost_is_half_the_square_when_causal():
    full, causal = cost(4096, 64, 64, causal=False), cost(4096, 64, 64, causal=True)
    assert math.isclose(causal["fwd"] / full["fwd"], 4097 / 8192)


# -- routing: poly_attention and fast_attention send a large map at short T to these kernels ----------------------
def _cuda_like(*shape):
    """What quadratic_route reads of a tensor (shape, is_cuda), for a CUDA decision on a CPU machine."""
    from types import SimpleNamespace

    return SimpleNamespace(shape=shape, is_cuda=True)


@pytest.mark.parametrize("spec, B, H, T, D, expected", [
    ("1 + x + x**2/2", 2, 16, 8192, 64, True),     # run v19: flash 2.80 ms, feature kernels 6.69
    ("1 + x + x**2/2", 2, 16, 65536, 64, False),   # linear beats quadratic at long T
    ("1 + x + x**2/2", 2, 8, 32768, 128, True),    # run v19: 39.9 ms against 129
    ("1 + x + x**2/2", 2, 16, 8192, 16, False),    # Based d16: 153 features, below QUADRATIC_MIN_FEATURES
    ("x", 2, 16, 2048, 64, False),
])
def test_the_route_follows_the_measured_cost_model(spec, B, H, T, D, expected):
    from fastattn.kernels.poly import quadratic_route

    q = _cuda_like(B, H, T, D)
    assert quadratic_route(polynomial(spec), q, q, q, True) is expected
    assert quadratic_route(polynomial(spec), q, q, q, False) is False  # non-causal keeps the feature kernels
    assert quadratic_route(polynomial(spec), q, q, q, True, check_output=True) is False


def test_a_gated_large_map_stays_on_the_flash_kernels_at_long_t():
    from fastattn.kernels.poly import quadratic_route

    q = _cuda_like(2, 16, 65536, 64)
    taylor = polynomial("1 + x + x**2/2")
    assert quadratic_route(taylor, q, q, q, True) is False  # ungated: the feature kernels win at 64K
    assert quadratic_route(taylor, q, q, q, True, gated=True) is True  # the gated ones materialise phi and psi
    assert quadratic_route(polynomial("x"), q, q, q, True, gated=True) is False  # 64 features: not served


def test_poly_attention_runs_the_flash_kernels_when_routed(monkeypatch):
    import fastattn.kernels.poly as poly_mod
    from fastattn.kernels.poly import poly_attention

    def no_feature_kernels(*a, **k):
        raise AssertionError("the feature kernels ran")
    monkeypatch.setattr(poly_mod, "load_module", no_feature_kernels)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    o = poly_attention(q.float(), k.float(), v.float(), "1 + x + x**2/2", backend="triton",
                       tuning={"quadratic": True})
    assert_close("o", quadratic_attention(q, k, v, {0: 1.0, 1: 1.0, 2: 0.5}), o, torch.float32)


def test_fast_attention_routes_gqa_to_the_flash_kernels_without_repeating_keys(monkeypatch):
    import fastattn.kernels.poly as poly_mod
    from fastattn.attention import fast_attention

    calls = []
    monkeypatch.setattr(poly_mod, "quadratic_route", lambda *a, **k: calls.append(a[1].shape) or True)
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(1, 4, 33, 16, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 33, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    o = fast_attention(q.float(), k.float(), v.float(), "1 + x + x**2/2", enable_gqa=True, backend="triton")
    ref = quadratic_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), {0: 1.0, 1: 1.0, 2: 0.5})
    assert calls == [(1, 4, 33, 16)]
    assert_close("o", ref, o, torch.float32)
    # a carried state keeps the feature kernels (the flash kernels keep no state): the route is not asked
    o2, st = fast_attention(q.float(), k.float(), v.float(), "1 + x + x**2/2", enable_gqa=True, backend="triton",
                            output_final_state=True)
    assert len(calls) == 1 and st.S.shape[1] == 2
    assert_close("o", ref, o2, torch.float32)


# -- gating: pair (i, j) weighted by exp(g_{j+1} + ... + g_i) -----------------------------------------------------
GATED = [
    # id: B, H_q, H_kv, T, D, DV, f, normalize, tuning
    ("taylor2-normalised-ragged", 1, 2, 2, 70, 16, 16, "1 + x + x**2/2", True, SMALL),
    ("x2-unnormalised-gqa2", 2, 4, 2, 45, 16, 8, "x**2", False, SMALL),
    ("x2-normalised-plan-tiles", 1, 1, 1, 90, 32, 32, "x**2", True, None),
]


@pytest.mark.parametrize("B, Hq, Hk, T, D, DV, f, normalize, tuning", [c[1:] for c in GATED],
                         ids=[c[0] for c in GATED])
def test_gated_flash_matches_the_float64_torch_path(B, Hq, Hk, T, D, DV, f, normalize, tuning):
    from fastattn.attention import fast_attention

    gen = torch.Generator().manual_seed(T + D)
    q = torch.randn(B, Hq, T, D, generator=gen, dtype=torch.float64)
    k = torch.randn(B, Hk, T, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, Hk, T, DV, generator=gen, dtype=torch.float64)
    g = torch.nn.functional.logsigmoid(2 * torch.randn(B, Hk, T, generator=gen, dtype=torch.float64) + 3)
    g[..., 10:14] = -5.0  # strong forgetting inside a tile
    g[..., 20] = -math.inf  # a reset: counts as GATE_FLOOR
    do = torch.randn(B, Hq, T, DV, generator=gen, dtype=torch.float64)
    ref_in = [x.clone().requires_grad_() for x in (q, k, v, g)]
    ref = fast_attention(*ref_in[:3], f, g=ref_in[3], normalize=normalize, enable_gqa=Hq != Hk, backend="torch")
    ref = (ref,) + torch.autograd.grad(ref, ref_in, do)
    got_in = [x.float().requires_grad_() for x in (q, k, v, g)]
    o = poly_flash_attention(*got_in[:3], f, g=got_in[3], normalize=normalize, tuning=tuning)
    got = (o,) + torch.autograd.grad(o, got_in, do.float())
    for name, a, b in zip(("o", "dq", "dk", "dv", "dg"), ref, got):
        assert torch.isfinite(b).all(), name
        assert_close(name, a, b, torch.float32)


def test_gates_of_zero_are_the_ungated_kernels():
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=gen) for _ in range(3))
    g = torch.zeros(1, 2, 40, requires_grad=True)
    o = poly_flash_attention(q, k, v, "1 + x + x**2/2", g=g, tuning=SMALL)
    o0 = poly_flash_attention(q, k, v, "1 + x + x**2/2", tuning=SMALL)
    assert_close("o", o0.double(), o, torch.float32)
    o.sum().backward()
    assert torch.isfinite(g.grad).all() and g.grad.shape == g.shape


def test_bad_gates_are_refused():
    x = torch.randn(1, 2, 10, 8)
    with pytest.raises(KernelError, match="is_causal=True"):
        poly_flash_attention(x, x, x, "1 + x + x**2/2", g=torch.zeros(1, 2, 10), is_causal=False)
    with pytest.raises(KernelError, match=r"\[B, H_kv, T\]"):
        poly_flash_attention(x, x, x, "1 + x + x**2/2", g=torch.zeros(1, 10))


def test_fast_attention_routes_a_gated_large_map_to_the_flash_kernels(monkeypatch):
    import fastattn.attention.functional as functional
    import fastattn.kernels.gated as gated_mod
    import fastattn.kernels.poly as poly_mod
    from fastattn.attention import fast_attention

    monkeypatch.setattr(poly_mod, "quadratic_route", lambda *a, **k: True)

    def no_chunk_kernels(*a, **k):
        raise AssertionError("the gated chunk kernels ran")
    monkeypatch.setattr(gated_mod, "gated_attention", no_chunk_kernels)
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 4, 33, 16, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 33, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    g = -torch.rand(1, 2, 33, generator=gen, dtype=torch.float64)
    o = fast_attention(q.float(), k.float(), v.float(), "x**2", g=g.float(), enable_gqa=True, backend="triton")
    ref = fast_attention(q, k, v, "x**2", g=g, enable_gqa=True, backend="torch")
    assert_close("o", ref, o, torch.float32)
    # on CUDA only an f proven positive (x**2 failed its bf16 check there: no floor under the denominator)
    assert functional.gated_flash_serves(polynomial("x**2").positive, True) is False
    assert functional.gated_flash_serves(polynomial("1 + x + x**2/2").positive, True) is True
    # a final state (a prefill before decoding) comes with it, from the keys
    o, st = fast_attention(q.float(), k.float(), v.float(), "x**2", g=g.float(), enable_gqa=True, backend="triton",
                           output_final_state=True)
    ref, ref_st = fast_attention(q, k, v, "x**2", g=g, enable_gqa=True, backend="torch", output_final_state=True)
    assert_close("o", ref, o, torch.float32)
    assert_close("S", ref_st.S, st.S, torch.float32)
    assert_close("z", ref_st.z, st.z, torch.float32)
    assert st.tokens.tolist() == ref_st.tokens.tolist() == [33]


@pytest.mark.parametrize("gated", [False, True])
def test_the_state_from_the_keys_is_the_torch_paths_final_state_with_gradients(gated):
    from fastattn.attention import fast_attention
    from fastattn.attention.functional import _state_from_keys

    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 2, 29, 5, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    g = (-3 * torch.rand(2, 2, 29, generator=gen, dtype=torch.float64)).requires_grad_() if gated else None
    poly = polynomial("1 + x + x**2/2")
    _, ref = fast_attention(q, k, v, poly, g=g, backend="torch", output_final_state=True)
    st = _state_from_keys(k, v, g, poly, 5 ** -0.5, block=7)  # five blocks, the last one short
    torch.testing.assert_close(st.S, ref.S, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(st.z, ref.z, rtol=1e-10, atol=1e-10)
    wS, wz = torch.randn_like(ref.S), torch.randn_like(ref.z)
    xs = [x for x in (k, v, g) if x is not None]
    want = torch.autograd.grad((ref.S * wS).sum() + (ref.z * wz).sum(), xs)
    got = torch.autograd.grad((st.S * wS).sum() + (st.z * wz).sum(), xs)
    for name, a, b in zip("kvg", want, got):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10, msg=f"d{name}")


@pytest.mark.slow
def test_gated_bf16_kernels_compile_for_sm90_without_spills():
    import json
    import re

    code = ("import json\nfrom fastattn.kernels.poly_flash import compile_kernels\n"
            "print(json.dumps({d: compile_kernels(head_dim=d, head_dim_v=d, gated=True, group=g) "
            "for d, g in ((64, 1), (128, 2))}))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    for d, kernels in json.loads(p.stdout.strip().splitlines()[-1]).items():
        assert len(kernels) == 4, kernels
        for name, line in kernels.items():
            assert int(re.search(r"SMEM:(\d+)", line).group(1)) <= 232448, (d, name, line)
            assert int(re.search(r"STACK:(\d+)", line).group(1)) == 0, (d, name, line)
