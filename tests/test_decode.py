"""The decoding kernel (fastattn/kernels/decode.py) against the torch step, on the Triton interpreter.

Chain: the torch step (``FastAttention.step`` on torch ops, itself tested against the float64
quadratic reference in test_layer_api.py) -> the kernel, on o and on the new state S, z, in fp32
and fp16; and a prefill on the torch path followed by kernel steps against one forward over the
whole sequence. Large feature maps run with block_f = 512 (and few splits) to keep the interpreter's walk short.
"""

from __future__ import annotations

import math

import pytest
import torch

from fastattn.attention import FastAttention, State, fast_attention
from fastattn.errors import KernelError
from fastattn.kernels.checks import assert_close
from fastattn.kernels.decode import decode_step, decode_tables, plan
from fastattn.kernels.naive import symmetric_tables

F2 = "1 + x + x**2/2"


@pytest.fixture(autouse=True)
def _interpreter(kernel_env):
    yield


def _inputs(B, Hq, Hk, D, DV, dtype, seed, T=1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, T, D, generator=g)
    k = torch.randn(B, Hk, T, D, generator=g)
    v = torch.randn(B, Hk, T, DV, generator=g)
    gate = -torch.rand(B, Hk, T, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype), gate


def _prefill(attn, B, Hk, D, DV, dtype, seed, T=5):
    # a realistic state: T tokens through the torch path (its S is a strided slice of the chunk sums)
    _, k, v, gate = _inputs(B, Hk, Hk, D, DV, dtype, seed + 1, T)
    _, st = fast_attention(k, k, v, attn.poly, scale=attn.scale, normalize=attn.normalize, g=gate,
                           output_final_state=True, normalizer_fix=attn.normalizer_fix, backend="torch")
    return st


# id: f, D, DV, normalize, (B, H_q, H_kv), gate, dtype, tuning
CASES = [
    ("taylor2-d16-gqa-gate", F2, 16, 16, True, (1, 4, 2), True, torch.float32, None),
    ("taylor2-d16-b3-fp16", F2, 16, 16, True, (3, 2, 2), False, torch.float16, None),
    ("taylor2-d16-b3-gqa-direct", F2, 16, 16, True, (3, 4, 2), True, torch.float32, {"splits": 1}),
    ("taylor2-d64-gqa-gate", F2, 64, 64, True, (1, 4, 2), True, torch.float32, {"block_f": 512}),
    ("taylor2-d60-v48-fp16", F2, 60, 48, True, (1, 4, 2), True, torch.float16, {"block_f": 512, "splits": 2}),
    ("linear-d60-v48-unnormalised", "x", 60, 48, False, (3, 4, 2), True, torch.float32, None),
    ("linear-d60-v48-fp16-direct-reduce-per-block", "x", 60, 48, False, (1, 2, 2), False, torch.float16,
     {"splits": 1, "defer": False}),
    ("taylor2-d16-mha-reduce-per-block", F2, 16, 16, True, (3, 2, 2), True, torch.float32, {"defer": False}),
    ("cubic-d8-unnormalised-gqa", "(1+x)**3", 8, 12, False, (3, 4, 2), True, torch.float32, None),
    ("cubic-d8-fp16", "(1+x)**3", 8, 12, False, (1, 4, 2), False, torch.float16, {"block_f": 16}),
    ("power2-d60-v48-gqa", "x**2", 60, 48, True, (1, 4, 2), False, torch.float32, {"block_f": 512}),
    ("power2-d16-fp16-gate", "x**2", 16, 8, True, (3, 2, 2), True, torch.float16, None),
]


@pytest.mark.parametrize("f, D, DV, normalize, heads, gated, dtype, tuning", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_kernel_step_matches_torch_step(f, D, DV, normalize, heads, gated, dtype, tuning):
    B, Hq, Hk = heads
    attn = FastAttention.from_spec(f, head_dim=D, head_dim_v=DV, normalize=normalize)
    st = _prefill(attn, B, Hk, D, DV, dtype, seed=D)
    S0, z0, n0 = st.S.clone(), st.z.clone(), st.tokens.clone()
    q, k, v, gate = _inputs(B, Hq, Hk, D, DV, dtype, seed=DV)
    g = gate if gated else None
    want_o, want = attn.step(q, k, v, st, g=g, _kernel=False)
    got_o, got = attn.step(q, k, v, st, g=g, _kernel=True, _tuning=tuning)
    assert got_o.dtype == dtype and got.S.dtype == torch.float32
    assert_close("o", want_o, got_o, dtype)
    # the state sums never pass through 16 bits: fp32 tolerance whatever the inputs
    assert_close("S", want.S, got.S, torch.float32)
    assert_close("z", want.z, got.z, torch.float32)
    assert torch.equal(got.tokens, n0 + 1)
    # out of place: the state passed in is untouched
    assert torch.equal(st.S, S0) and torch.equal(st.z, z0) and torch.equal(st.tokens, n0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_prefill_then_kernel_decode_equals_one_forward(dtype):
    # T tokens on the torch path, N by the kernel, against one forward over T + N (GQA, a gate, D = 60, DV = 48)
    B, Hq, Hk, D, DV, T, N = 3, 4, 2, 60, 48, 7, 2
    attn = FastAttention.from_spec(F2, head_dim=D, head_dim_v=DV)
    q, k, v, gate = _inputs(B, Hq, Hk, D, DV, dtype, seed=3, T=T + N)
    want = fast_attention(q, k, v, attn.poly, scale=attn.scale, enable_gqa=True, g=gate, backend="torch")
    o, st = fast_attention(q[:, :, :T], k[:, :, :T], v[:, :, :T], attn.poly, scale=attn.scale, enable_gqa=True,
                           g=gate[..., :T], output_final_state=True, backend="torch")
    outs = [o]
    for t in range(T, T + N):
        o, st = attn.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st, g=gate[..., t:t + 1],
                          _kernel=True, _tuning={"block_f": 512, "splits": 2})
        outs.append(o)
    assert_close("o", want, torch.cat(outs, 2), dtype)
    assert st.tokens.tolist() == [T + N] * B


def test_inplace_step_writes_into_the_state():
    attn = FastAttention.from_spec(F2, head_dim=8, head_dim_v=6)
    st = _prefill(attn, 2, 2, 8, 6, torch.float32, seed=1)
    q, k, v, gate = _inputs(2, 4, 2, 8, 6, torch.float32, seed=2)
    want_o, want = attn.step(q, k, v, st, g=gate, _kernel=False)
    S_ptr = st.S.data_ptr()
    got_o, got = attn.step(q, k, v, st, g=gate, inplace=True, _kernel=True)
    assert got is st and st.S.data_ptr() == S_ptr
    assert_close("o", want_o, got_o, torch.float32)
    assert_close("S", want.S, st.S, torch.float32)
    assert_close("z", want.z, st.z, torch.float32)
    assert st.tokens.tolist() == want.tokens.tolist()
    # the torch path honours inplace too
    st2 = _prefill(attn, 2, 2, 8, 6, torch.float32, seed=1)
    _, back = attn.step(q, k, v, st2, g=gate, inplace=True, _kernel=False)
    assert back is st2
    assert_close("S torch inplace", want.S, st2.S, torch.float32)


def test_denominator_rule_is_the_kernels():
    # a state whose normaliser sum is negative: NaN rows (the generated kernels' _den), as the torch path gives;
    # with the output check on, both raise the same KernelError
    D, DV = 4, 3
    attn = FastAttention.from_spec(F2, head_dim=D, head_dim_v=DV, check_output=False)
    F = attn.feature_dim
    st = State(torch.zeros(1, 2, F, DV), torch.full((1, 2, F), 1.0), torch.tensor([4]))
    q, k, v, _ = _inputs(1, 2, 2, D, DV, torch.float32, seed=5)
    # q = 0 reads only the constant feature: phi(q).z = z[0] + psi_0(k) = -5 + 1 in head 0
    q[0, 0] = 0.0
    st.z[0, 0, 0] = -5.0
    want, _ = attn.step(q, k, v, st, _kernel=False)
    got, _ = attn.step(q, k, v, st, _kernel=True)
    assert torch.isnan(got[0, 0]).all() and torch.isfinite(got[0, 1]).all()
    assert torch.equal(torch.isnan(want), torch.isnan(got))
    assert_close("o head 1", want[0, 1], got[0, 1], torch.float32)
    checked = FastAttention.from_spec(F2, head_dim=D, head_dim_v=DV)
    for kernel in (False, True):
        with pytest.raises(KernelError, match="the normaliser sum_j f"):
            checked.step(q, k, v, st, _kernel=kernel)


def test_routing_without_a_gpu():
    attn = FastAttention.from_spec(F2, head_dim=4)
    st = attn.init_state(1, 2)
    x = torch.randn(1, 2, 1, 4)
    assert attn._step_route(x, x, x, None, st, None) == "torch"  # CPU: torch unless asked
    assert attn._step_route(x, x, x, None, st, True) == "kernel"  # asked, under the interpreter
    xg = x.clone().requires_grad_()
    assert attn._step_route(xg, x, x, None, st, None) == "torch"
    with torch.no_grad():
        assert attn._step_route(xg, x, x, None, st, True) == "kernel"
    with pytest.raises(KernelError, match="does not serve autograd"):
        attn._step_route(xg, x, x, None, st, True)
    x64 = x.double()
    with pytest.raises(KernelError, match="does not serve float64 inputs"):
        FastAttention.from_spec(F2, head_dim=4, backend="triton")._step_route(x64, x64, x64, None, st, None)
    assert FastAttention.from_spec(F2, head_dim=4, backend="torch")._step_route(x, x, x, None, st, True) == "torch"
    # a step that needs autograd keeps it (the torch path), and refuses to overwrite the state
    o, new = attn.step(xg, x, x, st, _kernel=None)
    assert o.requires_grad
    with pytest.raises(KernelError, match="inplace=True overwrites the state"):
        attn.step(xg, x, x, st, inplace=True)


def test_kernel_step_refuses_a_bad_gate_and_state():
    attn = FastAttention.from_spec(F2, head_dim=4)
    x = torch.randn(1, 2, 1, 4)
    st = attn.init_state(1, 2)
    with pytest.raises(KernelError, match="g must be <= 0"):
        attn.step(x, x, x, st, g=torch.full((1, 2, 1), 0.5), _kernel=True)
    with pytest.raises(KernelError, match=r"g must be a float tensor \[B, H_kv, T_k\]"):
        attn.step(x, x, x, st, g=torch.zeros(1, 3, 1), _kernel=True)
    with pytest.raises(KernelError, match="state.S has shape"):
        attn.step(x, x, x, attn.init_state(1, 3), _kernel=True)
    # a [B, H_kv] gate is taken as [B, H_kv, 1]
    gate = -torch.rand(1, 2)
    a, _ = attn.step(x, x, x, st, g=gate, _kernel=True)
    b, _ = attn.step(x, x, x, st, g=gate[..., None], _kernel=False)
    assert_close("o", b, a, torch.float32)


def test_plan_splits_the_feature_axis_at_small_batch():
    cpu = torch.device("cpu")
    small = plan(batch=1, heads_kv=2, group=2, features=2145, head_dim_v=64, device=cpu)
    assert (small.block_f, small.block_v, small.block_g, small.blocks) == (64, 64, 2, 34)
    # 8 programs per "SM" (4 on the interpreter) over 2 heads: 16 wanted, 12 of 3 blocks cover the 34
    assert (small.splits, small.blocks_per_split) == (12, 3)
    assert not small.defer  # GQA: the group's heads reduce per block
    big = plan(batch=256, heads_kv=16, group=1, features=2145, head_dim_v=64, device=cpu)
    assert big.splits == 1 and big.blocks_per_split == big.blocks and big.defer
    wide = plan(batch=1, heads_kv=1, group=1, features=100, head_dim_v=256, device=cpu, tuning={"splits": 100})
    assert wide.block_f == 16 and wide.splits == wide.blocks == 7
    with pytest.raises(KernelError, match="unknown keys \\['chunk'\\]"):
        plan(batch=1, heads_kv=1, group=1, features=10, head_dim_v=4, device=cpu, tuning={"chunk": 64})
    with pytest.raises(KernelError, match="block_f=24 must be a power of two >= 16"):
        plan(batch=1, heads_kv=1, group=1, features=10, head_dim_v=4, device=cpu, tuning={"block_f": 24})


def test_decode_step_direct_call_with_a_strided_state():
    # the kernel reads batch/head/feature strides of S and z: a state cut out of a larger buffer, no copy
    D, DV, B, H = 4, 5, 2, 2
    attn = FastAttention.from_spec(F2, head_dim=D, head_dim_v=DV)
    F = attn.feature_dim
    big = torch.randn(B, H, 2 * F, DV).abs()
    zbig = torch.rand(B, H, 3, F) + 1
    st = State(big[:, :, ::2], zbig[:, :, 1], torch.zeros(B, dtype=torch.int64))
    q, k, v, _ = _inputs(B, H, H, D, DV, torch.float32, seed=7)
    tables = decode_tables(*symmetric_tables(attn.poly, D, 1 / math.sqrt(D)), device="cpu")
    o, new, zq = decode_step(q, k, v, st, attn.poly, tables, tuning={"splits": 2, "block_f": 16})
    want_o, want = attn.step(q, k, v, State(st.S.contiguous(), st.z.contiguous(), st.tokens), _kernel=False)
    assert_close("o", want_o, o, torch.float32)
    assert_close("S", want.S, new.S, torch.float32)
    assert zq.shape == (B, H) and bool((zq > 0).all())
    # z with a feature stride of 3 (the kernel reads features densely): copied, not misread
    zf = (torch.rand(B, H, F, 3) + 1)[..., 0]
    o2, new2, _ = decode_step(q, k, v, State(st.S, zf, st.tokens), attn.poly, tables)
    want_o2, want2 = attn.step(q, k, v, State(st.S.contiguous(), zf.contiguous(), st.tokens), _kernel=False)
    assert_close("o", want_o2, o2, torch.float32)
    assert_close("z", want2.z, new2.z, torch.float32)


@pytest.mark.parametrize("route", ["torch", "kernel"])
def test_block_decodes_one_token_per_call_through_step(route, monkeypatch):
    # FastMultiheadAttention: prefill 5 tokens, then 3 single-token calls, against one call over all 8
    from fastattn.attention import FastMultiheadAttention

    torch.manual_seed(0)
    block = FastMultiheadAttention(24, 4, F2, num_kv_heads=2)
    monkeypatch.setattr(block.attn, "_step_route", lambda *args: route)
    x = torch.randn(2, 8, 24)
    with torch.no_grad():
        want, _ = block(x)
        out, st = block(x[:, :5], use_cache=True)
        outs = [out]
        for t in range(5, 8):
            out, st = block(x[:, t:t + 1], past_state=st, use_cache=True)
            outs.append(out)
    assert_close("out", want, torch.cat(outs, 1), torch.float32)
    assert st.tokens.tolist() == [8, 8]


def test_kernels_compile_for_sm90_without_spills():
    # the GPU code path (layouts, registers) on the CPU, in a subprocess as the session runs the interpreter:
    # batch 1, so the feature axis is split (step kernel with the deferred reduction, then the combine kernel)
    import ast
    import os
    import subprocess
    import sys

    code = "from fastattn.kernels.decode import compile_report as c; print(c(batch=1, gated=True))"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    report = ast.literal_eval(p.stdout.splitlines()[-1])
    assert set(report) == {"_decode_kernel", "_combine_kernel"}, report
    for name, res in report.items():
        assert "STACK:0 " in res, f"{name}: {res} spills to local memory"


# ----------------------------------------------------------------------------------------
# Read-mostly decoding (ReadMostlyState): kernels -> torch reference -> ordinary step
# ----------------------------------------------------------------------------------------
def _read_mostly_run(attn, heads, dtype, steps, R, seed, read_copy=None, gated=True, resets=(), tuning=None,
                     prefill=True):
    # the same tokens through the ordinary torch step (fp32 state), the read-mostly kernels and their reference
    from fastattn.attention.state import read_mostly

    B, Hq, Hk = heads
    D, DV = attn.head_dim, attn.head_dim_v
    base = _prefill(attn, B, Hk, D, DV, dtype, seed) if prefill else attn.init_state(B, Hk, dtype=dtype)
    tables = decode_tables(*symmetric_tables(attn.poly, D, attn.scale), device="cpu")
    kern = read_mostly(base, pending=R, head_dim=D, dtype=dtype, tables=tables, read_copy=read_copy)
    ref = read_mostly(base, pending=R, head_dim=D, dtype=dtype, tables=tables, read_copy=read_copy)
    plain = State(base.S.clone(), base.z.clone(), base.tokens.clone())
    outs = []
    for t in range(steps):
        q, k, v, gate = _inputs(B, Hq, Hk, D, DV, dtype, seed=100 * seed + t)
        g = gate if gated else None
        for b, h, at in resets:
            if at == t:
                g[b, h] = -math.inf
        want_o, plain = attn.step(q, k, v, plain, g=g, _kernel=False)
        got_o, kern = attn.step(q, k, v, kern, g=g, inplace=True, _kernel=True, _tuning=tuning)
        ref_o, ref = attn.step(q, k, v, ref, g=g, inplace=True, _kernel=False)
        assert kern.pending == ref.pending == (t + 1) % R
        outs.append((want_o, got_o, ref_o))
    return plain, kern, ref, outs


def _assert_master(name, plain, master):
    # the fp32 master after folds is the ordinary fp32 state (float32 rounding of the reordered sums)
    for field in ("S", "z"):
        e = assert_close(f"{name} {field}", getattr(plain, field), getattr(master, field), torch.float32)
        assert e["rel_rms"] <= 1e-5, (name, field, e)
    assert torch.equal(plain.tokens, master.tokens)


# id: f, D, DV, normalize, (B, H_q, H_kv), gated, resets (b, h, step), R, steps, tuning
RM_CASES = [
    ("taylor2-d16-gqa-gate-resets", F2, 16, 16, True, (2, 4, 2), True, ((0, 1, 2), (1, 0, 6)), 4, 11, None),
    ("taylor2-d16-mha-split", F2, 16, 12, True, (2, 2, 2), True, (), 4, 10, {"block_f": 32, "splits": 3}),
    ("taylor2-d16-mha-direct-no-gate", F2, 16, 16, True, (3, 2, 2), False, (), 5, 9, {"splits": 1}),
    ("taylor2-d60-v48-gqa", F2, 60, 48, True, (1, 4, 2), True, (), 3, 5, {"block_f": 512, "splits": 2}),
    ("linear-d12-unnormalised-reduce-per-block", "x", 12, 8, False, (1, 2, 2), True, (), 4, 7, {"defer": False}),
    ("cubic-d8-gqa", "(1+x)**3", 8, 12, False, (3, 4, 2), True, ((2, 1, 3),), 4, 9, None),
    ("power2-d16-gate", "x**2", 16, 8, True, (2, 2, 2), True, (), 16, 17, None),
]


@pytest.mark.parametrize("f, D, DV, normalize, heads, gated, resets, R, steps, tuning", [c[1:] for c in RM_CASES],
                         ids=[c[0] for c in RM_CASES])
def test_read_mostly_kernels_equal_the_ordinary_step(f, D, DV, normalize, heads, gated, resets, R, steps, tuning):
    # fp32 inputs keep an fp32 read copy: the read-mostly steps are the ordinary ones up to float32 rounding,
    # through folds, with R - 1 tokens pending at the end (steps = 2R + R - 1 or so), gates and resets
    attn = FastAttention.from_spec(f, head_dim=D, head_dim_v=DV, normalize=normalize)
    plain, kern, ref, outs = _read_mostly_run(attn, heads, torch.float32, steps, R, seed=D, gated=gated,
                                              resets=resets, tuning=tuning)
    for t, (want, got, back) in enumerate(outs):
        assert_close(f"o kernel step {t}", want, got, torch.float32)
        assert_close(f"o reference step {t}", want, back, torch.float32)
    assert kern.pending == steps % R and kern.pending > 0  # tokens still pending when flushed
    _assert_master("kernel", plain, kern.flush())
    _assert_master("reference", plain, ref.flush())
    assert kern.pending == 0
    assert torch.equal(kern.S_read, kern.S)  # fp32 read copy: the master itself


def test_read_mostly_kernels_with_a_16bit_read_copy_equal_the_reference():
    # fp16 inputs with an fp16 read copy (the interpreter rounds fp16 as the GPU does; its bf16 is not exact):
    # kernel and reference read the same rounded copy, so they agree to fp32 rounding of the rest
    attn = FastAttention.from_spec(F2, head_dim=16, head_dim_v=16)
    plain, kern, ref, outs = _read_mostly_run(attn, (2, 4, 2), torch.float16, 11, 4, seed=5,
                                              read_copy=torch.float16, resets=((1, 1, 5),))
    for t, (want, got, back) in enumerate(outs):
        assert_close(f"o kernel vs reference, step {t}", back.float(), got.float(), torch.float32)
        assert_close(f"o vs the fp32 state, step {t}", want, got, torch.float16)
    # the read copy is the master rounded once (pending tokens never touch either)
    assert torch.equal(kern.S_read, kern.S.to(torch.float16)) and torch.equal(ref.S_read, ref.S.to(torch.float16))
    _assert_master("kernel", plain, kern.flush())


def test_read_mostly_bf16_read_copy_costs_one_rounding_of_s():
    # the reference on real bf16 (torch on the CPU): o against the ordinary fp32 step at d64, 40 steps, R = 16.
    # Measured rel-RMS <= 2.4e-3, max-rel <= 3.5e-3 (d64; random q, k, v, o a cancelling mean of the v's): the
    # rounding of S to bf16 (2**-9 relative), not the fp32 rows of TOLERANCES; the master stays fp32-exact
    from fastattn.kernels.checks import errors

    attn = FastAttention.from_spec(F2, head_dim=64, head_dim_v=64)
    B, Hq, Hk = 1, 2, 2
    st = attn.init_state(B, Hk, dtype=torch.bfloat16, pending=16)
    plain = attn.init_state(B, Hk)
    assert st.S_read.dtype == torch.bfloat16
    worst = 0.0
    for t in range(40):
        q, k, v, gate = _inputs(B, Hq, Hk, 64, 64, torch.bfloat16, seed=t)
        g = 0.05 * gate
        want, plain = attn.step(q.float(), k.float(), v.float(), plain, g=g, _kernel=False)
        got, st = attn.step(q, k, v, st, g=g, inplace=True, _kernel=False)
        e = errors(want, got.float())
        assert e["rel_rms"] <= 5e-3 and e["max_rel"] <= 1e-2, (t, e)
        worst = max(worst, e["rel_rms"])
    assert worst > 1e-4  # the read copy was really bf16 (an fp32 copy would give ~1e-7)
    _assert_master("bf16 reference", plain, st.flush())


def test_read_mostly_state_api():
    from fastattn.attention.state import ReadMostlyState, init_state

    attn = FastAttention.from_spec(F2, head_dim=4, head_dim_v=3)
    st = attn.init_state(2, 2, pending=3)
    assert isinstance(st, ReadMostlyState) and st.period == 3 and st.k.shape == (2, 2, 2, 4)
    x = torch.randn(2, 2, 1, 4)
    v = torch.randn(2, 2, 1, 3)
    # out of place: the state passed in is untouched, the returned one holds the token
    o1, new = attn.step(x, x, v, st, _kernel=True)
    assert new is not st and st.pending == 0 and new.pending == 1 and st.tokens.tolist() == [0, 0]
    o2, same = attn.step(x, x, v, st, inplace=True, _kernel=True)
    assert same is st and st.pending == 1
    assert torch.equal(o1, o2)
    # flush: folds now, returns the master (shared tensors), and decoding goes on from it
    master = st.flush()
    assert st.pending == 0 and master.S.data_ptr() == st.S.data_ptr() and st.tokens.tolist() == [1, 1]
    o3, _ = attn.step(x, x, v, st, inplace=True, _kernel=True)
    want, _ = attn.step(x, x, v, State(master.S.clone(), master.z.clone(), master.tokens.clone()), _kernel=False)
    assert_close("o after flush", want, o3, torch.float32)
    with pytest.raises(KernelError, match="pending=1 must be an int >= 2"):
        attn.init_state(1, 1, pending=1)
    with pytest.raises(KernelError, match="pass head_dim=D"):
        init_state(1, 1, 4, 3, pending=4)
    with pytest.raises(KernelError, match="needs the decoding tables"):
        bare = init_state(1, 1, attn.feature_dim, 3, pending=4, head_dim=4)
        attn.step(x[:1, :1], x[:1, :1], v[:1, :1], bare, inplace=True, _kernel=True)
        bare.flush()
    with pytest.raises(KernelError, match="keeps keys of"):
        attn.step(torch.randn(1, 1, 1, 5), torch.randn(1, 1, 1, 5), v[:1, :1], attn.init_state(1, 1, pending=4))
    tables = decode_tables(*symmetric_tables(attn.poly, 4, attn.scale), device="cpu")
    with pytest.raises(KernelError, match="needs scale="):
        decode_step(x, x, v, attn.init_state(2, 2, pending=4), attn.poly, tables)
    # the ordinary step's State is untouched by all this: a State still decodes as before
    assert isinstance(attn.init_state(1, 1), State)


def test_read_mostly_kernels_compile_for_sm90_without_spills():
    import ast
    import os
    import subprocess
    import sys

    code = ("from fastattn.kernels.decode import compile_report as c; "
            "print(c(batch=1, heads_q=16, heads_kv=4, gated=True, pending=16))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    report = ast.literal_eval(p.stdout.splitlines()[-1])
    assert set(report) == {"_read_step_kernel", "_fold_kernel", "_fold_kernel (flush)", "_combine_kernel"}, report
    for name, res in report.items():
        assert "STACK:0 " in res, f"{name}: {res} spills to local memory"
