"""Kernel chain tests: sympy f -> Horner -> quadratic reference -> chunkwise torch -> Triton (interpreter).

Every Triton case compares o, dq, dk, dv (random upstream gradient) against the float64
quadratic reference on the same rounded inputs, through one ``assert_close``.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastattn
from fastattn.errors import KernelError
from fastattn.kernels import naive
from fastattn.kernels.checks import assert_close
from fastattn.kernels.codegen import Polynomial, cache_dir, load_module, render
from fastattn.kernels.poly import check_normalizer, nonnegative, poly_attention, polynomial

SPECS = ["x", "1 + x + x**2/2", "(1+x)**3", "x**2 + x**4"]
# largest head dim per degree that keeps the interpreter quick (features: 17, 153, 455, 147)
MAX_DIM = {1: 16, 2: 16, 3: 12, 4: 6}
SLOW_OK = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


pytestmark = pytest.mark.usefixtures("kernel_env")


def _inputs(seed, B, H, T, D, DV, dtype, positive):
    g = torch.Generator().manual_seed(seed)
    if positive:
        # the abs-fixed normaliser |sum f| + eps is ill-conditioned where sum f crosses 0;
        # positive q, k keep s q.k >= 0.25 so that such specs are tested where they are usable
        q = 0.5 + torch.rand(B, H, T, D, generator=g, dtype=torch.float64)
        k = 0.5 + torch.rand(B, H, T, D, generator=g, dtype=torch.float64)
    else:
        q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
        k = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
    do = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (q, k, v, do)]


def run_case(spec, dtype, B, H, T, D, DV, chunk, block_f, block_v, causal, normalize, seed=0, **kw):
    """Triton (interpreter) against the float64 quadratic reference: o, dq, dk, dv (``kw``: more
    poly_attention arguments, e.g. segments)."""
    poly = polynomial(spec)
    fix = "abs" if normalize and not poly.positive else None
    q, k, v, do = _inputs(seed, B, H, T, D, DV, dtype, positive=fix is not None)
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    o = poly_attention(q, k, v, poly, causal=causal, normalize=normalize, normalizer_fix=fix, chunk=chunk,
                       block_f=block_f, block_v=block_v, backend="triton", **kw)
    o.backward(do)
    rq, rk, rv = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = naive.quadratic_attention(rq, rk, rv, poly, causal=causal, normalize=normalize, normalizer_fix=fix)
    ref.backward(do.double())
    terms = _term_sizes(rq, rk, rv, do.double(), poly, causal, normalize, fix)
    assert o.dtype == dtype
    assert_close("o", ref, o, dtype, terms[0])
    assert_close("dq", rq.grad, q.grad, dtype, terms[1])
    assert_close("dk", rk.grad, k.grad, dtype, terms[2])
    assert_close("dv", rv.grad, v.grad, dtype, terms[3])


def _term_sizes(q, k, v, do, poly, causal, normalize, fix, eps=1e-6):
    """Sizes of the sums behind o, dq, dk, dv (float64): the same sums on |a_j|, |q|, |k|, |v|, |do|.

    The kernels add up signed terms (feature products phi_f psi_f, or the numerator and
    denominator paths of a normalised gradient) whose sum can be much smaller than the
    terms, e.g. (1+x)**3 near x = -1; rounding is relative to the terms, so errors are
    judged against these sizes where they exceed the result (see ``checks.errors``). The
    denominator is held at its true value.
    """
    absp = Polynomial.from_coefficients({j: abs(a) for j, a in poly.coeffs})
    den = torch.ones_like(q[..., 0])
    if normalize:
        ones = torch.ones_like(v[..., :1])
        z = naive.quadratic_attention(q, k, ones, poly, causal=causal, normalize=False)[..., 0].detach()
        den = z.abs() + eps if fix == "abs" else z
    q, k, v = (x.detach().abs().requires_grad_() for x in (q, k, v))
    o = naive.quadratic_attention(q, k, v, absp, causal=causal, normalize=False) / den.abs()[..., None]
    (o * do.abs()).sum().backward()
    return o.detach(), q.grad, k.grad, v.grad


# ------------------------------------------------------------------ the chain, link by link
@pytest.mark.parametrize("spec", SPECS + ["x - x**3/6", "2 - x**2"])
def test_horner_matches_sympy(spec):
    sp = fastattn.spec(spec)
    import sympy

    f = sympy.lambdify(sympy.Symbol("x"), sp.expr, "math")
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    got = naive.horner(x, polynomial(sp))
    want = torch.tensor([float(f(float(t))) for t in x], dtype=torch.float64)
    assert_close("horner", want, got, torch.float64)


@pytest.mark.parametrize("spec", SPECS + ["x - x**3/6"])
@pytest.mark.parametrize("dim", [1, 3, 7])
def test_symmetric_features_reproduce_f(spec, dim):
    poly = polynomial(spec)
    g = torch.Generator().manual_seed(dim)
    x, y = torch.randn(2, 9, dim, generator=g, dtype=torch.float64)
    phi = naive.symmetric_features(x, poly, 0.7, "phi")
    psi = naive.symmetric_features(y, poly, 0.7, "psi")
    assert phi.shape[-1] == poly.feature_dim(dim) == sum(math.comb(dim + j - 1, j) for j, _ in poly.coeffs)
    assert_close("phi.psi", naive.horner(0.7 * x @ y.T, poly), phi @ psi.T, torch.float64)


def test_feature_dim_degree2_d64_is_2145():
    poly = polynomial("1 + x + x**2/2")
    assert poly.feature_dim(64) == 2145
    assert naive.symmetric_tables(poly, 64, 0.125)[0].shape[1] == 2145
    mod = load_module(poly)
    idx, w_phi, w_psi, n = mod.feature_tables(64, 0.125, "cpu", 64)
    assert n == 2145 and idx.shape == (2, 2176) and bool((w_phi[n:] == 0).all())


def _kron_features(x, ktab, w, block_f, KG, KA):
    """The block-Kronecker features of the rows of x (float64), built from the kernel's tables
    by plain indexing: the independent reading of what _kron_phi computes."""
    n, dim = x.shape
    xp = torch.cat([x, torch.ones(n, 1, dtype=x.dtype), torch.zeros(n, 2 * block_f, dtype=x.dtype)], 1)
    width = 2 + 2 * KG * KA
    flat = ktab.reshape(-1).tolist()
    # in a Kronecker tile the 1 sits in the first group-aligned column past dim
    one = -(-dim // KA) * KA
    xg = torch.cat([x, torch.zeros(n, one - dim + 2 * block_f, dtype=x.dtype)], 1)
    xg[:, one] = 1.0

    def low_tile(t, c0):
        # a low tile: columns c0 .. c0 + block_f of [x, 1], the rest of its row unused
        assert c0 % block_f == 0 and 0 <= c0 < dim and ktab[t, 2:].abs().sum().item() == 0
        return xp[:, c0:c0 + block_f]

    def kron_tile(t, i0):
        assert i0 == t * width + 2  # the offset of the tile's own column lists
        left, right = flat[i0:i0 + KG * KA], flat[i0 + KG * KA:i0 + 2 * KG * KA]
        assert all(c % KA == g % KA and c - g % KA == left[g - g % KA] for g, c in enumerate(left)), \
            "a group's columns are one aligned run (the kernel's load hints)"
        return torch.cat([(xg[:, left[g * KA:(g + 1) * KA], None] * xg[:, None, right[g * KA:(g + 1) * KA]])
                          .reshape(n, KA * KA) for g in range(KG)], 1)

    tiles = [low_tile(t, j0) if i0 < 0 else kron_tile(t, i0) for t, (i0, j0) in enumerate(ktab[:, :2].tolist())]
    return torch.cat(tiles, 1) * w.double()


@pytest.mark.parametrize("spec", ["1 + x + x**2/2", "x**2", "1 - x + 3*x**2", "2*x - x**2", "3 + x**2"])
@pytest.mark.parametrize("dim, block_f, group", [(1, 16, 4), (7, 32, 4), (13, 64, 4), (24, 128, 4), (33, 256, 4),
                                                 (64, 64, 4), (64, 64, 8), (20, 256, 16)])
def test_kron_features_reproduce_f(spec, dim, block_f, group):
    poly = polynomial(spec)
    mod = load_module(poly)
    ktab, w_phi, w_psi, (KG, KA) = mod.kron_tables(dim, 0.7, "cpu", block_f, group)
    assert KG * KA * KA == block_f and KA == group and w_phi.numel() == ktab.shape[0] * block_f
    g = torch.Generator().manual_seed(dim)
    x, y = torch.randn(2, 9, dim, generator=g, dtype=torch.float64)
    phi = _kron_features(x, ktab, w_phi, block_f, KG, KA)
    psi = _kron_features(y, ktab, w_psi, block_f, KG, KA)
    # the kernel's weight tables are float32, so the products agree to float32 rounding
    assert_close("phi.psi", naive.horner(0.7 * x @ y.T, poly), phi @ psi.T, torch.float32)
    # the packing: one group per pair of blocks h1 <= h2, (+ the constant), padded to whole tiles
    nb = -(-dim // KA)
    groups = nb * (nb + 1) // 2 + 1
    assert (ktab[:, 0] >= 0).sum().item() <= -(-groups // KG)


def test_kron_layout_at_d64():
    # the bench's degree-2 d64 row: 136 block pairs + the constant in 35 tiles of 4 groups, one
    # low tile for x (the layout of 8 x 8 products per tile had 36 + 2)
    mod = load_module(polynomial("1 + x + x**2/2"))
    ktab, _, _, (KG, KA) = mod.kron_tables(64, 0.125, "cpu", 64, 4)
    assert (KG, KA) == (4, 4) and ktab.shape[0] == 36 and (ktab[:, 0] < 0).sum().item() == 1
    ktab8, _, _, _ = mod.kron_tables(64, 0.125, "cpu", 64, 8)
    assert ktab8.shape[0] == 38


@pytest.mark.parametrize("spec", SPECS)
def test_feature_map_of_transforms_agrees(spec):
    """The symbolic core's FeatureMap (independent code) gives the same f(s QK^T) as Horner."""
    D, s = 4, 0.5
    fm = fastattn.feature_map(fastattn.spec(spec), dim=D, scale=s)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 11, D, generator=g, dtype=torch.float64)
    got = fm.phi(q) @ fm.psi(k).T
    assert_close("FeatureMap", naive.horner(s * q @ k.T, polynomial(spec)), got, torch.float64)


@settings(SLOW_OK, max_examples=60)
@given(spec=st.sampled_from(SPECS), T=st.integers(1, 70), D=st.integers(1, 5), DV=st.integers(1, 6),
       chunk=st.integers(1, 32), causal=st.booleans(), normalize=st.booleans(), seed=st.integers(0, 2**16))
def test_chunk_matches_quadratic_float64(spec, T, D, DV, chunk, causal, normalize, seed):
    poly = polynomial(spec)
    fix = "abs" if normalize and not poly.positive else None
    q, k, v, _ = _inputs(seed, 2, 1, T, D, DV, torch.float64, positive=fix is not None)
    kw = dict(causal=causal, normalize=normalize, normalizer_fix=fix)
    ref = naive.quadratic_attention(q, k, v, poly, **kw)
    got = naive.chunk_attention(q, k, v, poly, chunk=chunk, **kw)
    assert_close("chunk", ref, got, torch.float64)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
def test_gradcheck_chunk_float64(spec, causal, normalize):
    poly = polynomial(spec)
    fix = "abs" if normalize and not poly.positive else None
    q, k, v, _ = _inputs(3, 1, 1, 9, 2, 2, torch.float64, positive=fix is not None)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    tables = naive.symmetric_tables(poly, 2, 0.6)

    def fn(q, k, v):
        return naive.chunk_attention(q, k, v, poly, scale=0.6, causal=causal, normalize=normalize,
                                     normalizer_fix=fix, chunk=4, tables=tables)

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7, rtol=1e-5)


# ------------------------------------------------------------------ Triton, interpreter
ROWS = [
    # id, B, H, T, D, DV, chunk, block_f, block_v, causal, normalize
    ("T1", 1, 1, 1, 4, 4, 16, 16, None, True, True),
    ("T1-full", 1, 2, 1, 3, 5, 16, 16, None, False, False),
    ("T63-chunk16", 1, 1, 63, 4, 8, 16, 32, None, True, True),
    ("T20-chunk64", 2, 1, 20, 5, 12, 64, 16, None, True, False),
    ("D5-DV12-full", 1, 2, 33, 5, 12, 16, 64, None, False, True),
    ("DV20-vtiles", 1, 1, 40, 3, 20, 16, 16, 16, True, True),
    ("DV20-vtiles-full", 1, 1, 40, 3, 20, 32, 16, 16, False, True),
    ("T130-pow2", 1, 1, 130, 4, 16, 32, 64, None, True, True),
]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_triton_rows_float32(spec, row):
    _, B, H, T, D, DV, chunk, block_f, block_v, causal, normalize = row
    run_case(spec, torch.float32, B, H, T, D, DV, chunk, block_f, block_v, causal, normalize)


KRON_ROWS = [
    # spec, B, H, T, D, DV, chunk, block_f, block_v, causal, normalize: rows the block-Kronecker
    # layout serves (degree 2, symmetric basis too large for the fused path, or not causal)
    ("1 + x + x**2/2", 1, 2, 70, 24, 64, 16, 64, None, True, True),
    ("1 + x + x**2/2", 2, 1, 65, 33, 40, 32, 128, 32, True, True),
    ("1 + x + x**2/2", 1, 1, 40, 20, 5, 16, 32, None, False, True),
    ("1 - x + 3*x**2", 1, 1, 50, 13, 7, 16, 16, 16, False, False),
    ("x**2", 1, 1, 33, 24, 64, 16, 256, None, True, False),
]


@pytest.mark.parametrize("row", KRON_ROWS, ids=lambda r: f"{r[0]}-D{r[4]}-bf{r[7]}-{'causal' if r[9] else 'full'}")
def test_triton_kron_rows_float32(row):
    spec, B, H, T, D, DV, chunk, block_f, block_v, causal, normalize = row
    assert load_module(polynomial(spec)).uses_kron(D, causal, DV)
    run_case(spec, torch.float32, B, H, T, D, DV, chunk, block_f, block_v, causal, normalize)


# spec, H, D, DV, T, normalize: f with a linear term (its constant leaves the Kronecker tiles only where
# D fills whole low tiles: D = 16 at block_f 16) and without one (3 + x**2: at every D), normalised or not
CONST_ROWS = [("1 + x + x**2/2", 1, 16, 12, 40, True),
              ("3 + x**2", 2, 8, 5, 33, True),
              ("3 + x**2", 2, 8, 20, 64, False)]


@pytest.mark.parametrize("spec, H, D, DV, T, normalize", CONST_ROWS)
def test_kron_constant_outside_the_scans(spec, H, D, DV, T, normalize, monkeypatch):
    # where the constant would take a Kronecker tile of its own, the causal scans leave it out and
    # the intra / finalize kernels add a0 times prefix sums of v (and counts to z), the backward a0
    # times suffix sums of dn to dv: forward and gradients still match the reference, with segments
    # (several chunks each), a ragged last chunk or (DV 20) one v tile narrower than DV
    monkeypatch.setenv("FASTATTN_FUSED", "0")
    mod = load_module(polynomial(spec))
    assert mod.kron_const_out(D, 16)
    with_const = mod.kron_tables(D, 0.5, "cpu", 16)[0].shape[0]
    assert mod.kron_tables(D, 0.5, "cpu", 16, const_out=True)[0].shape[0] == with_const - 1

    def plan(part, tuning):
        return mod.plan((1, H, T, D), (1, H, T, DV), torch.float32, "cpu", True, normalize, part, tuning, chunk=16,
                        block_f=16, block_v=16)
    for part in ("fwd", "bwd"):
        assert plan(part, None).route == f"{part}/scan/causal/kron/const" and plan(part, None).segments > 1
        assert plan(part, {"const_out": False}).route == f"{part}/scan/causal/kron"
    mod.routes_taken.clear()
    run_case(spec, torch.float32, 1, H, T, D, DV, 16, 16, 16, True, normalize)
    assert mod.routes_taken == {"fwd/scan/causal/kron/const", "bwd/scan/causal/kron/const"}
    # the same rows with the constant's tile kept agree too (tuning const_out=False turns the split off)
    run_case(spec, torch.float32, 1, H, T, D, DV, 16, 16, 16, True, normalize, tuning={"const_out": False})
    assert {"fwd/scan/causal/kron", "bwd/scan/causal/kron"} <= mod.routes_taken


@pytest.mark.parametrize("fused", ["0", "1"])
@pytest.mark.parametrize("rows", ["1", "2", "4"])
def test_segment_pass_steps_over_several_chunks(rows, fused, monkeypatch):
    # the segment-sum pass over k, v takes tuning seg_rows chunks per step (segments cut into whole
    # groups of them; the pass over q, dn / den keeps one): forward and gradients match the
    # reference, and the pass really ran with the wider step
    monkeypatch.setenv("FASTATTN_FUSED", fused)
    mod = load_module(polynomial("1 + x + x**2/2"))
    steps, kernel = [], mod._segment_state_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                steps.append((kw["SCALE_Y"], kw["BT"]))
                return kernel[grid](*args, **kw)
            return launch
    monkeypatch.setattr(mod, "_segment_state_kernel", Spy())
    # 9 chunks of 16 (the last ragged) in 2 segments: 5 chunks each, rounded up to a multiple of the step
    g = int(rows)
    assert mod._segments(9, 8, 2, seg_rows=g) == (2, -(-5 // g) * g)
    tuning = {"seg_rows": g}
    # D = 4: one low tile and one Kronecker tile on the general path (the fused path below FASTATTN_FUSED=1)
    for part, route in (("fwd", ("fwd/scan/causal/kron", "fwd/fused/segments")),
                        ("bwd", ("bwd/scan/causal/kron", "bwd/fused/segments/saved"))):
        saved = (16 * -(-5 // g) * g, 2) if fused == "1" and part == "bwd" else None
        p = mod.plan((1, 2, 130, 4), (1, 2, 130, 20), torch.float32, "cpu", True, True, part, tuning, chunk=16,
                     block_f=16, segments=2, saved=saved)
        assert (p.route, p.segments, p.seg_step, p.seg_step_q) == (route[int(fused)], 2, g, 1)
    mod.routes_taken.clear()
    run_case("1 + x + x**2/2", torch.float32, 1, 2, 130, 4, 20, 16, 16, None, True, True, segments=2,
             tuning=tuning)
    assert mod.routes_taken == ({"fwd/scan/causal/kron", "bwd/scan/causal/kron"} if fused == "0" else
                                {"fwd/fused/segments", "bwd/fused/segments/saved"})
    assert {bt for scaled, bt in steps if not scaled} == {16 * g}
    assert {bt for scaled, bt in steps if scaled} == {16}


# spec, D, DV, block_f, more tuning, the routes taken (forward, backward)
CHUNK_FWD_ROWS = [
    ("1 + x + x**2/2", 4, 8, 16, {}, {"fwd/chunk/fused-table", "bwd/fused/segments/saved"}),
    ("(1+x)**3", 3, 5, 16, {"fused": False}, {"fwd/chunk/symmetric", "bwd/scan/causal/symmetric"}),
    ("x", 6, 4, 16, {}, {"fwd/chunk/fused-table", "bwd/fused/segments/saved"}),
    # 8 x 8 Kronecker groups (block_f 64) at a head dim small enough for the fused path: tuning fused off
    ("1 + x + x**2/2", 8, 16, 64, {"fused": False}, {"fwd/chunk/kron", "bwd/scan/causal/kron"}),
]


@pytest.mark.parametrize("spec, D, DV, block_f, tuning, routes", CHUNK_FWD_ROWS,
                         ids=["fused-table-based", "symmetric-cubic", "fused-table-x", "kron-based"])
def test_chunk_forward_over_many_segments(spec, D, DV, block_f, tuning, routes, monkeypatch):
    # the chunk-parallel forward forced on for every layout (fused-size symmetric, general symmetric,
    # Kronecker), with segments of 2 chunks: every query chunk past the first segment reads a prefix
    # state, and the fused backward re-cuts the forward's states into its own chunks
    monkeypatch.delenv("FASTATTN_FUSED", raising=False)
    mod = load_module(polynomial(spec))
    tuning = {"chunk_fwd": True, "chunk_fwd_cps": 2, **tuning}
    p = mod.plan((1, 2, 150, D), (1, 2, 150, DV), torch.float32, "cpu", True, polynomial(spec).positive, "fwd",
                 tuning, chunk=16, block_f=block_f)
    assert (p.segments, p.cps) == (5, 2) and p.group[1] == (8 if p.kron else 1)
    mod.routes_taken.clear()
    run_case(spec, torch.float32, 1, 2, 150, D, DV, 16, block_f, None, True, polynomial(spec).positive,
             tuning=tuning)
    assert mod.routes_taken == routes


@pytest.mark.parametrize("fwd, bwd", [("0", "1"), ("1", "0")])
def test_fused_and_general_passes_mix(fwd, bwd, monkeypatch):
    # a degree-2 f that fits the fused path takes the general Kronecker scans on long sequences,
    # the forward and the backward each by its own length threshold: every mix must agree with
    # the reference (the fused backward then rebuilds the segment states the general forward
    # does not save)
    tuning = {"fused_fwd": fwd == "1", "fused_bwd": bwd == "1"}
    mod = load_module(polynomial("1 + x + x**2/2"))
    assert mod.uses_kron(4, True, 8, "fwd", tuning=tuning) == (fwd == "0")
    assert mod.uses_kron(4, True, 8, "bwd", tuning=tuning) == (bwd == "0")
    run_case("1 + x + x**2/2", torch.float32, 1, 2, 100, 4, 8, 16, 16, None, True, True, tuning=tuning)


def test_degree2_routing_by_length():
    # the defaults: fused below the thresholds, general Kronecker scans from them on
    mod = load_module(polynomial("1 + x + x**2/2"))
    for part, below in mod._FUSED_DEG2_BELOW.items():
        assert mod._fused_tiles_dims(16, 64, part, below - 1) is not None
        assert mod._fused_tiles_dims(16, 64, part, below) is None
    # a degree-1 f keeps the fused path at every length
    assert load_module(polynomial("x"))._fused_tiles_dims(64, 64, "bwd", 1 << 20) is not None


@st.composite
def cases(draw):
    spec = draw(st.sampled_from(SPECS))
    deg = polynomial(spec).degree
    dims = st.one_of(st.sampled_from([1, 5, 12, 16]), st.integers(1, 16))
    D = min(draw(dims), MAX_DIM[deg])
    # at most 8 feature tiles: the interpreter's time grows with tiles x chunks x heads
    min_bf = max(16, 1 << max(0, (-(-polynomial(spec).feature_dim(D) // 8) - 1).bit_length()))
    return dict(spec=spec, B=draw(st.integers(1, 2)), H=draw(st.integers(1, 2)),
                T=draw(st.one_of(st.sampled_from([1, 63, 64, 65, 130]), st.integers(1, 130))),
                D=D, DV=draw(dims), chunk=draw(st.sampled_from([16, 32, 64])),
                block_f=max(min_bf, draw(st.sampled_from([16, 32, 64]))), block_v=draw(st.sampled_from([None, 16])),
                causal=draw(st.booleans()), normalize=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@settings(SLOW_OK, max_examples=15)
@given(case=cases())
def test_triton_drawn_float32(case):
    run_case(dtype=torch.float32, **case)


@settings(SLOW_OK, max_examples=15)
@given(case=cases())
def test_triton_drawn_float16(case):
    run_case(dtype=torch.float16, **case)


# ------------------------------------------------------------------ normaliser safety
@pytest.mark.parametrize("spec", ["x", "(1+x)**3", "x**3", "1 - x**2", "x**2 - x**4"])
def test_normalizer_of_an_f_negative_somewhere_is_refused(spec):
    q = k = v = torch.randn(1, 1, 4, 2)
    with pytest.raises(KernelError, match="negative somewhere on the reals .*normalizer_fix='abs'"):
        poly_attention(q, k, v, spec, normalize=True, backend="torch")
    with pytest.raises(KernelError, match="negative somewhere on the reals .*normalizer_fix='abs'"):
        poly_attention(q, k, v, spec, normalize=True, backend="triton")


def test_truncated_exp_normalizer_follows_parity():
    assert polynomial("exp(x)", degree=2).positive is True
    assert polynomial("exp(x)", degree=3).positive is False
    with pytest.raises(KernelError, match="not a polynomial"):
        polynomial("exp(x)")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_abs_fix_gives_finite_output_where_sum_f_is_zero(backend):
    # f = x with q = 0: every score is 0, so sum_j f = 0 exactly; |0| + eps keeps o finite
    q = torch.zeros(1, 1, 20, 4, requires_grad=True)
    k = torch.randn(1, 1, 20, 4, requires_grad=True)
    v = torch.randn(1, 1, 20, 3, requires_grad=True)
    o = poly_attention(q, k, v, "x", normalize=True, normalizer_fix="abs", chunk=16, block_f=16, backend=backend)
    o.sum().backward()
    for name, t in [("o", o), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)]:
        assert bool(torch.isfinite(t).all()), f"{name} has non-finite entries"
    assert_close("o", torch.zeros_like(o), o, torch.float32)


@pytest.mark.parametrize("spec, want", [
    ("x**2", True), ("x**4", True), ("x**2 + x**4", True), ("(x - 1/3)**2", True), ("(1+x)**4", True),
    ("1 + x + x**2/2", True), ("(x**2 - 2)**2", True),
    ("x", False), ("x**3", False), ("(1+x)**3", False), ("1 - x**2", False), ("x**2 - x**4", False),
    ("x**2 - 2*x + 1 - 1/10**9", False),
])
def test_nonnegative_is_decided_exactly(spec, want):
    ok, why = nonnegative(polynomial(spec))
    assert ok is want, why
    # a float64 look at f on a grid agrees with the verdict (the grid misses the zeros at 1/3 and
    # sqrt(2) and catches the 1e-9 dip of the last spec at x = 1)
    import sympy

    f = sympy.lambdify(sympy.Symbol("x"), fastattn.spec(spec).expr, "math")
    assert (min(f(t / 1000) for t in range(-5000, 5001)) >= 0) is want


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("spec", ["x**2", "x**4", "x**2 + x**4"])
def test_power_attention_divides_by_sum_f_plus_eps(spec, backend):
    # f >= 0 with a zero at 0 is accepted: o = sum_j f v_j / (sum_j f + eps) on both paths. Small q
    # make sum_j f comparable to eps or below it (so dividing by sum_j f alone would differ), and the
    # rows with q = 0 have sum_j f = 0 exactly: o = 0 there, finite
    g = torch.Generator().manual_seed(5)
    q = 1e-3 * torch.randn(1, 2, 40, 4, generator=g, dtype=torch.float64)
    q[:, :, ::7] = 0.0
    k, v = torch.randn(2, 1, 2, 40, 4, generator=g, dtype=torch.float64)
    poly = polynomial(spec)
    assert poly.positive is False and check_normalizer(poly, True, None) == "abs"
    got = poly_attention(q.float(), k.float(), v.float(), spec, chunk=16, backend=backend)
    ref = naive.quadratic_attention(q, k, v, poly, normalizer_fix="abs", eps=1e-6)
    rows = [t for t in range(40) if t % 7]
    without_eps = naive.quadratic_attention(q, k, v, poly)[:, :, rows]
    assert (without_eps - ref[:, :, rows]).abs().max() > 1e-2  # eps matters at these sizes
    assert bool((got[:, :, ::7] == 0).all())
    assert_close("o", ref, got, torch.float32)


@pytest.mark.parametrize("bad", [float("inf"), 1e30], ids=["inf", "1e30"])
@pytest.mark.parametrize("dtype, normalize", [(torch.float32, False), (torch.float64, False),
                                              (torch.float64, True)])
def test_chunk_path_rows_never_see_a_later_key(bad, dtype, normalize):
    # key T - 1 (in the same chunk as rows 32 .. 38) set to inf or 1e30: every earlier row is
    # bit for bit the run without it (the exclusive prefix is shift-then-sum, never cumsum - kv)
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(3, 1, 2, 40, 4, generator=g, dtype=dtype)
    k2 = k.clone()
    k2[:, :, -1] = bad
    kw = dict(chunk=16, normalize=normalize, normalizer_fix=None)
    want = naive.chunk_attention(q, k, v, {0: 1, 1: 1, 2: 0.5}, **kw)
    got = naive.chunk_attention(q, k2, v, {0: 1, 1: 1, 2: 0.5}, **kw)
    assert torch.equal(got[:, :, :-1], want[:, :, :-1])
    assert not torch.equal(got[:, :, -1], want[:, :, -1])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_infinite_key_reaches_only_its_own_row_normalised(backend):
    # inf inputs are the caller's: no error, NaN in the row that sees the key, earlier rows untouched
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(3, 1, 1, 40, 4, generator=g)
    k2 = k.clone()
    k2[:, :, -1] = float("inf")
    want = poly_attention(q, k, v, "1 + x + x**2/2", chunk=16, backend=backend)
    got = poly_attention(q, k2, v, "1 + x + x**2/2", chunk=16, backend=backend)
    assert torch.equal(got[:, :, :-1], want[:, :, :-1])
    assert bool(got[:, :, -1].isnan().all())


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_overflowing_normaliser_from_finite_inputs_raises(backend):
    # a finite 1e30 in the last key overflows f in fp32: that row's sum_j f is inf, and the call says so
    q, k, v = torch.randn(3, 1, 1, 40, 4, generator=torch.Generator().manual_seed(3))
    k[:, :, -1] = 1e30
    with pytest.raises(KernelError, match=r"normaliser .* is inf at \[b, h, t\] = \[0, 0, 39\] \(1 of 40 rows"):
        poly_attention(q, k, v, "1 + x + x**2/2", chunk=16, backend=backend)


@pytest.mark.parametrize("backend, knobs", [("torch", {}), ("triton", {}), ("triton", {"FASTATTN_FUSED": "0"})],
                         ids=["torch", "triton-fused", "triton-kron"])
def test_fp16_large_inputs_keep_the_normaliser(backend, knobs, monkeypatch):
    # sigma = 8 inputs in fp16 with f = 1 + x + x**2/2 (>= 1/2): the torch path once summed the
    # features in fp16 (sum_j f negative, 14 % of outputs not finite); every path now matches the
    # float64 reference on the same rounded inputs
    for name, value in knobs.items():
        monkeypatch.setenv(name, value)
    g = torch.Generator().manual_seed(8)
    q, k, v = torch.randn(3, 2, 2, 100, 16, generator=g, dtype=torch.float64)
    q, k, v = (8 * q).half(), (8 * k).half(), v.half()
    got = poly_attention(q, k, v, "1 + x + x**2/2", chunk=16, backend=backend)
    ref = naive.quadratic_attention(q.double(), k.double(), v.double(), polynomial("1 + x + x**2/2"))
    assert got.dtype == torch.float16
    assert_close("o", ref, got, torch.float16)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("knobs", [{}, {"FASTATTN_FUSED": "0"}], ids=["fused", "kron"])
def test_fp16_features_that_overflow_raise(knobs, monkeypatch):
    # sigma = 300 in fp16: the degree-2 features pass 65504 in the kernels' 16-bit dots. The fused path
    # loses the numerator (o not finite), the Kronecker scans the normaliser; both raise instead of
    # returning it. The torch path computes in fp32 and is right
    for name, value in knobs.items():
        monkeypatch.setenv(name, value)
    g = torch.Generator().manual_seed(8)
    q, k, v = torch.randn(3, 1, 2, 64, 16, generator=g, dtype=torch.float64)
    q, k, v = (300 * q).half(), (300 * k).half(), v.half()
    with pytest.raises(KernelError, match="although q, k, v are finite \\(torch.float16\\)"):
        poly_attention(q, k, v, "1 + x + x**2/2", chunk=16, backend="triton")
    got = poly_attention(q, k, v, "1 + x + x**2/2", chunk=16, backend="torch")
    ref = naive.quadratic_attention(q.double(), k.double(), v.double(), polynomial("1 + x + x**2/2"))
    assert_close("o", ref, got, torch.float16)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_check_output_false_skips_the_read_back(backend):
    # the overflowing row of test_overflowing_normaliser_from_finite_inputs_raises comes back as it is
    # when the caller turns the check off, and the other rows are unchanged
    q, k, v = torch.randn(3, 1, 1, 40, 4, generator=torch.Generator().manual_seed(3))
    want = poly_attention(q, k, v, "1 + x + x**2/2", chunk=16, backend=backend)
    k[:, :, -1] = 1e30
    got = poly_attention(q, k, v, "1 + x + x**2/2", chunk=16, backend=backend, check_output=False)
    assert torch.equal(got[:, :, :-1], want[:, :, :-1])
    assert not bool(torch.isfinite(got[:, :, -1]).all())


def test_bf16_is_refused_under_the_interpreter():
    q = k = v = torch.randn(1, 1, 8, 4, dtype=torch.bfloat16)
    with pytest.raises(KernelError, match="bfloat16 under TRITON_INTERPRET=1 is refused.*backend='torch'"):
        poly_attention(q, k, v, "1 + x + x**2/2", backend="triton")
    # the torch path computes bf16 inputs in fp32: one bf16 rounding of o (2^-9 relative) from the reference
    got = poly_attention(q, k, v, "1 + x + x**2/2", backend="torch")
    ref = naive.quadratic_attention(q.double(), k.double(), v.double(), polynomial("1 + x + x**2/2"))
    assert got.dtype == torch.bfloat16
    assert (got.double() - ref).abs().max().item() <= 2**-8 * ref.abs().max().item()


# ------------------------------------------------------------------ inputs, the same on both paths
BACKENDS = ["torch", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.int32, torch.int64, torch.bool])
def test_complex_and_integer_dtypes_are_refused(dtype, backend):
    q = k = v = torch.ones(1, 1, 4, 2, dtype=dtype)
    with pytest.raises(KernelError, match=f"one real floating dtype .*got {dtype}"):
        poly_attention(q, k, v, "1 + x + x**2/2", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_and_devices_are_refused(backend):
    q = k = torch.randn(1, 1, 4, 2)
    with pytest.raises(KernelError, match="one real floating dtype .*got torch.float32, torch.float32, torch.float64"):
        poly_attention(q, k, torch.randn(1, 1, 4, 2, dtype=torch.float64), "x", normalize=False, backend=backend)
    with pytest.raises(KernelError, match="one device; got cpu, cpu, meta"):
        poly_attention(q, k, torch.randn(1, 1, 4, 2, device="meta"), "x", normalize=False, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [0, -16, 2.5, True])
def test_chunk_below_one_or_not_an_int_is_refused(chunk, backend):
    q = k = v = torch.randn(1, 1, 4, 2)
    with pytest.raises(KernelError, match=f"chunk={chunk!r} must be an int >= 1"):
        poly_attention(q, k, v, "1 + x + x**2/2", chunk=chunk, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw, match", [
    (dict(scale=float("nan")), "scale=nan must be a finite real"),
    (dict(scale=float("inf")), "scale=inf must be a finite real"),
    (dict(eps=float("nan")), "eps=nan must be a finite real number > 0"),
    (dict(eps=0.0), "eps=0.0 must be a finite real number > 0"),
    (dict(eps=-1e-6), "eps=-1e-06 must be a finite real number > 0"),
])
def test_non_finite_scale_and_eps_are_refused(kw, match, backend):
    q = k = v = torch.randn(1, 1, 4, 2)
    with pytest.raises(KernelError, match=match):
        poly_attention(q, k, v, "1 + x + x**2/2", backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q_shape, v_shape, match", [
    ((1, 1, 4, 0), (1, 1, 4, 2), "head dims must be >= 1; got D=0, DV=2"),
    ((1, 1, 4, 2), (1, 1, 4, 0), "head dims must be >= 1; got D=2, DV=0"),
    ((1, 4, 2), (1, 4, 2), "got q \\(1, 4, 2\\)"),
])
def test_bad_head_dims_and_ranks_are_refused(q_shape, v_shape, match, backend):
    q = k = torch.randn(q_shape)
    with pytest.raises(KernelError, match=match):
        poly_attention(q, k, torch.randn(v_shape), "1 + x + x**2/2", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_sequence_gives_an_empty_output_on_both_paths(backend):
    q, k = (torch.randn(2, 3, 0, 4, requires_grad=True) for _ in range(2))
    v = torch.randn(2, 3, 0, 5, requires_grad=True)
    o = poly_attention(q, k, v, "1 + x + x**2/2", backend=backend)
    assert o.shape == (2, 3, 0, 5) and o.dtype == torch.float32
    o.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape


def test_feature_count_is_checked_before_any_table():
    q = k = v = torch.randn(1, 1, 2, 64)
    with pytest.raises(KernelError, match="needs 11,969,016,345 features at head dim 64"):
        poly_attention(q, k, v, "(1+x)**8", backend="torch")


def test_fresh_buffers_are_nan_under_the_fill_flag():
    mod = load_module(polynomial("x"))
    assert bool(mod._empty((3,), "cpu").isnan().all())


# ------------------------------------------------------------------ generated source
def test_render_is_readable_and_compiles():
    src = render(polynomial("1 + x + x**2/2"))
    assert "# f(x) = 1 + x + x**2/2 by Horner on the tile" in src
    assert "    y = x * 0.0 + 0.5\n    y = y * x + 1.0\n    y = y * x + 1.0\n" in src
    assert "# >>>" not in src and "# <<<" not in src  # every template block was replaced
    compile(src, "generated.py", "exec")


def test_sparse_coefficients_render_with_zero_steps():
    src = render(polynomial("x**2 + x**4"))
    assert "    y = x * 0.0 + 1.0\n    y = y * x\n    y = y * x + 1.0\n    y = y * x\n    y = y * x\n" in src


def test_cache_is_keyed_by_source_hash():
    m1 = load_module(polynomial("(1+x)**3"))
    m2 = load_module(polynomial("(1+x)**3"))
    m3 = load_module(polynomial("1 + x + x**2/2"))
    assert m1 is m2 and m1 is not m3
    # the module may come from this process's memo (another test's cache dir): check its own file
    for m, spec in [(m1, "(1+x)**3"), (m3, "1 + x + x**2/2")]:
        src = render(polynomial(spec))
        path = Path(m.__file__)
        assert path.name == f"poly_{hashlib.sha256(src.encode()).hexdigest()[:16]}.py"
        assert path.read_text() == src
    # a spec no other test loads, so this process has not memoised it from another cache dir
    load_module(polynomial("1 + 3*x**2"))
    assert any(p.read_text() == render(polynomial("1 + 3*x**2")) for p in cache_dir().glob("poly_*.py"))


@pytest.mark.parametrize("coeffs, match", [
    ({}, "identically zero"),
    ({0: 0.0}, "identically zero"),
    ({9: 1.0}, "degree 9"),
    ({1: float("nan")}, "not finite"),
    ({-1: 1.0}, "index -1"),
    ({1: "abc"}, "not a real number"),
])
def test_bad_coefficients_name_the_value(coeffs, match):
    with pytest.raises(KernelError, match=match):
        Polynomial.from_coefficients(coeffs)


def test_non_analytic_spec_is_refused():
    class FakeSpec:
        kind, degree = "not-analytic", None

        def __str__(self):
            return "abs(x)"

    with pytest.raises(KernelError, match="abs\\(x\\) is not-analytic"):
        polynomial(FakeSpec())


@pytest.mark.parametrize("kw, match", [
    (dict(chunk=8), "chunk=8"),
    (dict(block_f=48), "block_f=48"),
    (dict(block_v=4), "block_v=4"),
])
def test_bad_tiling_names_the_value(kw, match):
    q = k = v = torch.randn(1, 1, 4, 2)
    with pytest.raises(KernelError, match=match):
        poly_attention(q, k, v, "1 + x + x**2/2", backend="triton", **kw)


def test_kron_group_that_does_not_fit_block_f_is_named():
    mod = load_module(polynomial("1 + x + x**2/2"))
    with pytest.raises(ValueError, match="block_f=32 cannot hold groups of 8 x 8"):
        mod.kron_tables(2, 1.0, "cpu", 32, group=8)


@pytest.mark.parametrize("value", ["abc", "1.5"])
def test_bad_tuning_knob_names_the_variable(value, monkeypatch):
    monkeypatch.setenv("FASTATTN_FUSED", value)
    q = k = v = torch.randn(1, 1, 20, 24)
    with pytest.raises(KernelError, match=f"FASTATTN_FUSED={value!r}"):
        poly_attention(q, k, v, "1 + x + x**2/2", causal=False, chunk=16, backend="triton")


def test_unknown_tuning_key_names_the_known_ones():
    q = k = v = torch.randn(1, 1, 20, 24)
    with pytest.raises(KernelError, match="unknown tuning key.s. 'scan_warps'; known keys: fused, "):
        poly_attention(q, k, v, "1 + x + x**2/2", causal=False, chunk=16, backend="triton",
                       tuning={"scan_warps": 4})


def test_mismatched_shapes_are_refused():
    q = k = torch.randn(1, 1, 4, 2)
    with pytest.raises(KernelError, match="v \\(1, 1, 5, 2\\)"):
        poly_attention(q, k, torch.randn(1, 1, 5, 2), "x", normalize=False)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_unchecked_denominators_that_are_not_positive_give_nan_rows(monkeypatch):
    # the kernels' own guard (_den), which is all that runs on CUDA without check_output: sigma = 300
    # fp16 on the Kronecker scans loses the normaliser of some rows to rounding (z <= 0); those rows
    # come back NaN, the others as the forward computed them (overflowed numerators stay +-inf: not finite
    # either, and check_output raises on both kinds)
    monkeypatch.setenv("FASTATTN_FUSED", "0")
    g = torch.Generator().manual_seed(8)
    q, k, v = torch.randn(3, 1, 2, 64, 16, generator=g, dtype=torch.float64)
    q, k, v = (300 * q).half(), (300 * k).half(), v.half()
    mod = load_module(polynomial("1 + x + x**2/2"))
    o, z, _ = mod._poly_attention_fwd(q, k, v, 0.25, True, True, False, 1e-6, 16, 64, None)
    bad = ~((z > 0) & torch.isfinite(z))
    assert bool(bad.any()), "the case must hit a denominator <= 0"
    got = poly_attention(q, k, v, "1 + x + x**2/2", chunk=16, backend="triton", check_output=False)
    assert bool(torch.isnan(got[bad]).all())
    torch.testing.assert_close(got[~bad], o.to(got.dtype)[~bad], rtol=0, atol=0, equal_nan=True)
