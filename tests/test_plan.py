"""plan(): the route and launch numbers of each pass, checked on the CPU with a described device.

The records below were computed from the host code before routing became data (the launches of
every case, grid and arguments, recorded on meta tensors as an sm_90 GPU of 132 SMs, were identical
before and after): a change of route, tile, segment cut, warps, register cap, TMA or stream choice
for these shapes shows here. No GPU is needed: the device is a DeviceInfo.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastattn.kernels.codegen import load_module
from fastattn.kernels.poly import poly_attention, polynomial

pytestmark = pytest.mark.usefixtures("kernel_env")

FIELDS = ("route", "chunk", "block_f", "block_v", "segments", "cps", "warps", "seg_warps", "maxnreg", "tma_ld",
          "tma_add", "tma_dx", "streams", "f_pad")
# id, spec, q shape [B, H, T, D], DV, causal, normalize, forward record, backward record (FIELDS)
PINNED = [
    ("based-2k", "1 + x + x**2/2", (2, 16, 2048, 16), 64, True, True,
     ('fwd/fused/segments', 32, 256, 64, 4, 16, 8, 8, 0, False, False, False, False, 256),
     ('bwd/fused/segments/saved', 32, 256, 64, 4, 16, 8, 8, 0, False, False, False, True, 256)),
    ("based-8k", "1 + x + x**2/2", (2, 16, 8192, 16), 64, True, True,
     ('fwd/scan/causal/kron', 64, 64, 64, 3, 44, 4, 4, 168, False, False, False, False, 256),
     ('bwd/scan/causal/kron', 64, 64, 64, 1, 128, 4, 4, 0, False, False, False, True, 256)),
    ("based-32k", "1 + x + x**2/2", (2, 16, 32768, 16), 64, True, True,
     ('fwd/scan/causal/kron', 64, 64, 64, 3, 172, 4, 4, 168, False, True, False, False, 256),
     ('bwd/scan/causal/kron', 64, 64, 64, 1, 512, 4, 4, 0, False, True, True, True, 256)),
    ("deg2-d64-8k", "1 + x + x**2/2", (2, 16, 8192, 64), 64, True, True,
     ('fwd/scan/causal/kron/const', 64, 64, 64, 1, 128, 4, 4, 168, False, True, False, False, 2368),
     ('bwd/scan/causal/kron/const', 64, 64, 64, 1, 128, 4, 4, 0, False, True, True, True, 2368)),
    ("deg2-d64-32k", "1 + x + x**2/2", (2, 16, 32768, 64), 64, True, True,
     ('fwd/scan/causal/kron/const', 64, 64, 64, 1, 512, 4, 4, 168, False, True, False, False, 2368),
     ('bwd/scan/causal/kron/const', 64, 64, 64, 1, 512, 4, 4, 0, False, True, True, True, 2368)),
    ("x-d64-8k", "x", (2, 16, 8192, 64), 64, True, False,
     ('fwd/fused/segments', 64, 64, 64, 8, 16, 4, 8, 0, False, False, False, False, 64),
     ('bwd/fused/segments/saved', 64, 64, 64, 8, 16, 8, 8, 0, False, False, False, False, 64)),
    ("x-d64-64k", "x", (2, 16, 65536, 64), 64, True, False,
     ('fwd/fused/segments', 64, 64, 64, 8, 128, 4, 8, 0, False, False, False, False, 64),
     ('bwd/fused/segments/saved', 64, 64, 64, 8, 128, 8, 8, 0, False, False, False, True, 64)),
    ("cubic-32k", "(1+x)**3", (2, 16, 32768, 16), 64, True, False,
     ('fwd/chunk/symmetric', 64, 64, 64, 32, 16, 4, 8, 0, False, False, False, False, 1024),
     ('bwd/scan/causal/symmetric', 64, 64, 64, 1, 512, 8, 8, 0, False, True, False, True, 1024)),
    ("based-8k-full", "1 + x + x**2/2", (2, 16, 8192, 16), 64, False, True,
     ('fwd/scan/full/kron', 64, 64, 64, 1, 128, 4, 4, 168, False, False, False, False, 256),
     ('bwd/scan/full/kron', 64, 64, 64, 1, 128, 4, 4, 0, False, False, False, True, 256)),
]


def _h200(mod):
    return mod.DeviceInfo("cuda", 132, 9)


def _passes(mod, spec_q, DV, causal, normalize, device, tuning=None):
    """(forward plan, backward plan), the backward told of the states a fused forward saves."""
    v_shape = spec_q[:3] + (DV,)
    fwd = mod.plan(spec_q, v_shape, torch.bfloat16, device, causal, normalize, "fwd", tuning)
    saved = None
    if fwd.segments > 1 and fwd.route in ("fwd/fused/segments", "fwd/chunk/fused-table"):
        saved = (fwd.cps * fwd.chunk, fwd.segments)
    return fwd, mod.plan(spec_q, v_shape, torch.bfloat16, device, causal, normalize, "bwd", tuning, saved=saved)


@pytest.mark.parametrize("row", PINNED, ids=[r[0] for r in PINNED])
def test_plan_matches_the_pinned_routes_and_tiles(row, monkeypatch):
    _, spec, q_shape, DV, causal, normalize, want_fwd, want_bwd = row
    mod = load_module(polynomial(spec))
    # TMA is planned off under the interpreter (no TMA reduce there); these records are the GPU's
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.delenv("FASTATTN_FUSED", raising=False)
    fwd, bwd = _passes(mod, q_shape, DV, causal, normalize, _h200(mod))
    assert tuple(getattr(fwd, f) for f in FIELDS) == want_fwd
    assert tuple(getattr(bwd, f) for f in FIELDS) == want_bwd
    assert fwd.route in mod.ROUTES and bwd.route in mod.ROUTES


@pytest.mark.parametrize("spec, D, causal, const", [("1 + x + x**2/2", 64, True, True), ("1 + x + x**2/2", 16, True, False),
                                                    ("3 + x**2", 8, False, False), ("(1+x)**3", 16, True, False),
                                                    ("x", 64, True, False)])
def test_planned_feature_count_is_the_tables(spec, D, causal, const):
    # plan counts the features without building tables; the tables the launchers build must agree
    mod = load_module(polynomial(spec))
    p = mod.plan((1, 1, 1 << 14, D), (1, 1, 1 << 14, 64), torch.float32, _h200(mod), causal, False, "fwd",
                 {"fused": False, "chunk_fwd": False})
    assert p.const_out == const
    if p.kron:
        got = mod.kron_tables(D, 0.5, "cpu", p.table_block_f, None, p.const_out)[1].numel()
    else:
        got = mod.feature_tables(D, 0.5, "cpu", p.table_block_f)[0].shape[1]
    assert p.f_pad == got


def test_cpu_device_has_no_gpu_only_choices():
    # a CPU (the interpreter) reads as 132 SMs with no TMA, register caps or side streams
    mod = load_module(polynomial("1 + x + x**2/2"))
    fwd, bwd = _passes(mod, (2, 16, 32768, 64), 64, True, True, "cpu")
    assert mod._device_info("cpu") == mod.DeviceInfo("cpu", 132, 0)
    assert (fwd.route, fwd.maxnreg, fwd.tma_add, bwd.tma_add, bwd.tma_dx, bwd.streams) == (
        "fwd/scan/causal/kron/const", 0, False, False, False, False)


def test_tuning_and_the_environment_force_routes(monkeypatch):
    mod = load_module(polynomial("1 + x + x**2/2"))
    dev = _h200(mod)
    monkeypatch.delenv("FASTATTN_FUSED", raising=False)
    route = lambda tuning=None: _passes(mod, (1, 2, 1024, 16), 64, True, True, dev, tuning)[0].route  # noqa: E731
    assert route() == "fwd/fused/segments"
    assert route({"fused": False}) == "fwd/scan/causal/kron"
    assert route({"fused": False, "kron": False}) == "fwd/chunk/symmetric"
    assert route({"fused": False, "chunk_fwd": True}) == "fwd/chunk/kron"
    assert route({"fused_fwd": False}) == "fwd/scan/causal/kron"
    assert route({"chunk_fwd": True}) == "fwd/chunk/fused-table"
    # the one routing knob of the environment: every shape down the general path
    monkeypatch.setenv("FASTATTN_FUSED", "0")
    assert route() == "fwd/scan/causal/kron"
    monkeypatch.setenv("FASTATTN_FUSED", "no")
    with pytest.raises(ValueError, match="FASTATTN_FUSED='no'"):
        route()


def test_plan_is_one_record_per_call_shape():
    mod = load_module(polynomial("x"))
    a = mod.plan((1, 1, 100, 8), (1, 1, 100, 8), torch.float32, "cpu", True, False, "fwd")
    assert a is mod.plan((1, 1, 100, 8), (1, 1, 100, 8), torch.float32, "cpu", True, False, "fwd")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.chunk = 16


@pytest.mark.parametrize("tuning, match", [
    ({"fused_ld": True}, r"unknown tuning key\(s\) 'fused_ld'; known keys: fused, fused_fwd, .*bwd_streams"),
    ({"seg_rows": 0}, r"tuning\['seg_rows'\]=0; use an int >= 1"),
    ({"kron": 1}, r"tuning\['kron'\]=1; use True or False"),
    ({"tma_fwd": -1}, r"tuning\['tma_fwd'\]=-1; use an int >= 0"),
])
def test_bad_tuning_is_refused_with_the_known_keys(tuning, match):
    mod = load_module(polynomial("x"))
    with pytest.raises(ValueError, match=match):
        mod.plan((1, 1, 100, 8), (1, 1, 100, 8), torch.float32, "cpu", True, False, "fwd", tuning)
    q = torch.randn(1, 1, 0, 8)
    # even a call with no pass to run (T = 0) checks its tuning
    with pytest.raises(ValueError, match=match):
        mod.poly_attention(q, q, q, normalize=False, tuning=tuning)


def test_tuning_reaches_the_kernels():
    # a forced route through poly_attention's tuning= argument runs, and runs that route
    mod = load_module(polynomial("1 + x + x**2/2"))
    q, k, v = torch.randn(3, 1, 2, 40, 4, generator=torch.Generator().manual_seed(0))
    mod.routes_taken.clear()
    got = mod.poly_attention(q, k, v, chunk=16, block_f=16, tuning={"fused": False, "kron": False})
    assert mod.routes_taken == {"fwd/chunk/symmetric"}
    want = poly_attention(q, k, v, "1 + x + x**2/2", chunk=16, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
