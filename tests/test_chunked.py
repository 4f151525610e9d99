"""fastattn.kernels.chunked: the chunk-parallel degree-2 kernels against a float64 quadratic reference.

The feature map is checked exactly in float64 (φ(q)·ψ(k) = f(s q·k)); the kernels (under the
interpreter, tiny chunks so that several chunks, ragged tails and the intra/inter split are all
exercised) on o, dq, dk, dv with a random upstream gradient; the sm_90 compile of every kernel
in a subprocess (the interpreter checks no layouts, shared memory or registers).
"""
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from fastattn.kernels import chunked
from fastattn.kernels.checks import assert_close
from fastattn.kernels.chunked import chunked_poly_attention, feature_map, plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# chunk 32 with 16-row blocks: T = 130 spans 5 chunks and ends in a partial block
SMALL = dict(chunk=32, block=16, step=16)


def reference(q, k, v, coeffs, scale, causal, normalize, detach_z=False):
    """f(s QKᵀ) [⊙ causal mask] @ V [/ row sums] in float64; with detach_z the normaliser is a constant."""
    x = scale * q @ k.transpose(-1, -2)
    a = coeffs[0] + x * (coeffs[1] + coeffs[2] * x)
    if causal:
        T = q.shape[-2]
        a = a * torch.ones(T, T, dtype=torch.bool).tril()
    o = a @ v
    if normalize:
        z = a.sum(-1, keepdim=True)
        o = o / (z.detach() if detach_z else z)
    return o


@pytest.mark.parametrize("D", [1, 4, 16, 60])
@pytest.mark.parametrize("coeffs", [(1.0, 1.0, 0.5), (0.0, 0.0, 1.0), (-0.3, 2.0, -1.5)], ids=["exp2", "x2", "mixed"])
def test_feature_map_is_exact(D, coeffs):
    g = torch.Generator().manual_seed(D)
    q, k = torch.randn(7, D, generator=g, dtype=torch.float64), torch.randn(5, D, generator=g, dtype=torch.float64)
    scale = 0.37
    x = scale * q @ k.T
    want = coeffs[0] + coeffs[1] * x + coeffs[2] * x * x
    got = feature_map(q, coeffs, scale, "q") @ feature_map(k, coeffs, scale, "k").T
    assert (got - want).abs().max().item() <= 1e-12 * max(1.0, want.abs().max().item())
    assert feature_map(q, coeffs, scale, "q").shape[-1] == plan(64, D, 8, torch.float32)["feature_rows"]


def test_plan_counts_the_d64_basis():
    p = plan(8192, 64, 64, torch.bfloat16)
    # 33 circulant tiles (distances 0 .. 32) of 64 rows, the 64 linear rows and the constant
    assert (p["ntiles"], p["feature_rows"]) == (33, 33 * 64 + 64 + 1)
    assert plan(8192, 128, 128, torch.bfloat16)["feature_rows"] == 65 * 128 + 128 + 1
    with pytest.raises(ValueError, match="must divide chunk"):
        plan(8192, 64, 64, torch.bfloat16, tuning=dict(chunk=96))
    with pytest.raises(ValueError, match="rotate one of"):
        plan(8192, 64, 64, torch.bfloat16, tuning=dict(rotate="roll"))


def test_tma_reads_windows_by_pointers_in_the_interpreter(monkeypatch):
    # the interpreter refuses descriptor loads at columns not 16-byte aligned: "tma" runs as "window" there
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert plan(8192, 64, 64, torch.float32, tuning=dict(rotate="tma"))["kernel_rotate"] == "window"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert plan(8192, 64, 64, torch.bfloat16, tuning=dict(rotate="tma"))["kernel_rotate"] == "tma"
    p = plan(8192, 48, 64, torch.float32, tuning=dict(rotate="window"))
    x = torch.randn(2, 5, 48)
    xx = chunked._doubled(x, p)
    # the window at column BD − d is the tile turned by d: torch.roll(x, d) (zero-padded to BD)
    xp = torch.nn.functional.pad(x, (0, 16))
    for d in (0, 1, 17, 32):
        assert torch.equal(xx[..., (64 - d) % 64:][..., :64], torch.roll(xp, d, -1)), d


# T = 200 (130): 4 (3) chunks of 64, the last 8 (2) rows long; D = 60 pads to 64 (33 circulant tiles),
# D = 4 to 16. One head except where two check the per-head offsets (T = 200), and row blocks as long as
# the chunk but at d4 (SMALL: two blocks per chunk): the interpreter pays per program and per tile.
LARGE = dict(chunk=64, block=64, step=64)
MID = dict(chunk=32, block=32, step=32)
CASES = [
    # T, D, DV, H, causal, normalize, dtype, tuning
    (200, 60, 48, 2, True, True, torch.float32, LARGE),
    (130, 64, 64, 1, False, True, torch.float32, LARGE),
    (63, 64, 48, 1, True, False, torch.float32, MID),
    (63, 60, 64, 1, False, False, torch.float32, MID),
    (1, 64, 48, 1, True, True, torch.float32, MID),
    (130, 4, 16, 1, True, True, torch.float32, SMALL),
    (40, 128, 48, 1, True, True, torch.float32, MID),
    (130, 60, 64, 1, True, True, torch.float16, LARGE),
    (63, 64, 48, 1, True, False, torch.float16, MID),
    # the other ways to turn a tile (loads at turned offsets) and its gradient (tl.gather, no second MMA);
    # the walk's and the output pass's value columns in two blocks, the second one partial
    (63, 60, 48, 1, True, True, torch.float32, dict(MID, rotate="load", vjp="gather", walk_cols=32, out_cols=32)),
]
IDS = ["T200-d60-v48-causal-norm", "T130-d64-noncausal-norm", "T63-d64-v48-causal", "T63-d60-noncausal",
       "T1-d64-norm", "T130-d4-causal-norm", "T40-d128-causal-norm", "fp16-T130-d60-causal-norm",
       "fp16-T63-d64-causal", "T63-d60-load-gather-norm"]


@pytest.mark.parametrize("T, D, DV, H, causal, normalize, dtype, tuning", CASES, ids=IDS)
def test_kernels_match_quadratic_reference(kernel_env, T, D, DV, H, causal, normalize, dtype, tuning):
    _check_against_reference(T, D, DV, H, causal, normalize, dtype, tuning)


def _check_against_reference(T, D, DV, H, causal, normalize, dtype, tuning):
    g = torch.Generator().manual_seed(T * 100 + D)
    q, k = (torch.randn(1, H, T, D, generator=g) for _ in range(2))
    v, do = (torch.randn(1, H, T, DV, generator=g) for _ in range(2))
    coeffs, scale = (1.0, 1.0, 0.5), D ** -0.5
    qt, kt, vt = (x.to(dtype).requires_grad_() for x in (q, k, v))
    o = chunked_poly_attention(qt, kt, vt, coeffs, causal=causal, normalize=normalize, tuning=tuning)
    got = (o, *torch.autograd.grad(o, (qt, kt, vt), do.to(dtype)))
    # the reference from the same rounded inputs, in float64
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (qt, kt, vt))
    ref_o = reference(q64, k64, v64, coeffs, scale, causal, normalize)
    ref = (ref_o, *torch.autograd.grad(ref_o, (q64, k64, v64), do.double()))
    # a normalised gradient is two paths that cancel (T = 1: exactly); errors are relative to one path
    num_o = reference(q64, k64, v64, coeffs, scale, causal, normalize, detach_z=True)
    terms = (None, *torch.autograd.grad(num_o, (q64, k64, v64), do.double()))
    for name, r, g_, t in zip(("o", "dq", "dk", "dv"), ref, got, terms):
        assert g_.dtype == dtype, name
        assert_close(name, r, g_, dtype, terms=t)


def test_bad_inputs_are_refused():
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="a2 = 0"):
        chunked_poly_attention(q, q, q, (1.0, 1.0, 0.0))
    with pytest.raises(ValueError, match="up to 128"):
        big = torch.randn(1, 1, 8, 256)
        chunked_poly_attention(big, big, big)
    with pytest.raises(ValueError, match=r"got q \(1, 1, 8, 16\), k \(1, 1, 9, 16\)"):
        chunked_poly_attention(q, torch.randn(1, 1, 9, 16), q)
    with pytest.raises(TypeError, match="share one of"):
        chunked_poly_attention(q, q.double(), q)


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90():
    # d64 only (~10 s of CPU); the GPU probe reports d128's registers and spills from the kernels it runs
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "chunked_probe.py"), "--aot", "--dims", "64"],
                       capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line for line in p.stdout.splitlines() if "REG:" in line]
    names = {re.match(r"(d\d+ .+?)\s+REG:", r).group(1) for r in rows}
    assert names == {f"d64 {n}" for n in ("walk fwd", "walk bwd", "out", "dq", "dkv")}, p.stdout
    for line in rows:
        assert 0 < int(re.search(r"REG:(\d+)", line).group(1)) <= 255, line
        # the dynamic shared memory a launch asks for fits an sm_90 block (227 KB)
        assert 0 < int(re.search(r"SMEM:(\d+)", line).group(1)) <= 232448, line
    # spills are reported, not asserted: they cost speed, not correctness (the warnings summary shows them)
    warnings.warn("chunked sm_90 resources: " + "; ".join(" ".join(r.split()) for r in rows))


# The turned tiles as windows of the doubled rows: rotate "window" (pointer loads) and "tma" (descriptor loads),
# causal or not, normalised or not, d64 and d48 (padded to 64), T not a multiple of the chunk (32)
WINDOW_CASES = [
    # T, D, DV, causal, normalize, dtype, tuning
    (130, 64, 64, True, True, torch.float32, dict(LARGE, rotate="window")),
    (63, 48, 48, False, False, torch.float32, dict(MID, rotate="window", vjp="gather")),
    (63, 48, 32, True, False, torch.float16, dict(MID, rotate="window")),
]
WINDOW_IDS = ["window-T130-d64-causal-norm", "window-T63-d48-noncausal-gathervjp", "window-fp16-T63-d48-causal"]
TMA_CASES = [
    (100, 48, 32, True, True, torch.float32, dict(MID, rotate="tma")),
    (63, 64, 48, False, True, torch.float32, dict(MID, rotate="tma", vjp="gather")),
    (63, 64, 48, True, False, torch.float32, dict(MID, rotate="tma", walk_cols=32, out_cols=32)),
    (63, 48, 64, False, False, torch.float16, dict(MID, rotate="tma")),
]
TMA_IDS = ["tma-T100-d48-causal-norm", "tma-T63-d64-noncausal-norm-gathervjp", "tma-T63-d64-causal-splitcols",
           "tma-fp16-T63-d48-noncausal"]


@pytest.mark.parametrize("T, D, DV, causal, normalize, dtype, tuning", WINDOW_CASES, ids=WINDOW_IDS)
def test_window_rotation_matches_quadratic_reference(kernel_env, T, D, DV, causal, normalize, dtype, tuning):
    _check_against_reference(T, D, DV, 1, causal, normalize, dtype, tuning)


@pytest.fixture
def tma_in_interpreter(monkeypatch):
    """Run rotate "tma" through its descriptor loads under the interpreter; returns the column offsets read.

    The interpreter asserts that a descriptor load starts at a 16-byte aligned column; TMA's tile mode takes
    any start coordinate, and the turned windows start at every column. This reads the box at column 0 and
    moves its pointers and column mask to the asked column."""
    from triton.runtime import interpreter

    first = interpreter.TensorDescHandle.materialize_pointers
    columns = []

    def at_any_column(self, offsets):
        col = offsets[-1]
        columns.append(int(np.asarray(col.data).reshape(-1)[0]))
        ptrs, mask = first(self, [*offsets[:-1], interpreter.TensorHandle(np.zeros_like(col.data), col.dtype)])
        itemsize = self.base.dtype.element_ty.primitive_bitwidth // 8
        o_c = col.data + np.arange(self.block_shape[-1])
        ptrs.data = ptrs.data + (itemsize * col.data * self.strides[-1].data).astype(np.uint64)
        mask.data = mask.data & (o_c >= 0) & (o_c < self.shape[-1].data)
        return ptrs, mask

    monkeypatch.setattr(interpreter.TensorDescHandle, "materialize_pointers", at_any_column)
    monkeypatch.setattr(chunked, "_interpreting", lambda: False)
    return columns


@pytest.mark.parametrize("T, D, DV, causal, normalize, dtype, tuning", TMA_CASES, ids=TMA_IDS)
def test_tma_rotation_matches_quadratic_reference(kernel_env, tma_in_interpreter, T, D, DV, causal, normalize,
                                                   dtype, tuning):
    _check_against_reference(T, D, DV, 1, causal, normalize, dtype, tuning)
    # the descriptor path ran, at every window start: 0 .. BD − 1 (turned by d and by −d, d = 0 .. BD/2)
    assert set(tma_in_interpreter) == set(range(64)), sorted(set(tma_in_interpreter))
