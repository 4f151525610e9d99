"""fastattn.patterns: block lists against dense masks (exactly), and pattern_attention against the reference.

A compiled pattern must reproduce its dense mask exactly: blocks marked full hold only allowed pairs,
blocks marked for the element mask hold at least one, skipped blocks none, and the kernel's view (full
blocks whole, masked blocks through the mask) equals the dense set. The kernel rows then compare o, dq,
dk, dv with the float64 masked reference on the interpreter, through blocks of every state.
"""

import itertools

import pytest
import torch

from fastattn.attention import pattern_attention
from fastattn.errors import KernelError
from fastattn.kernels.checks import assert_close
from fastattn.kernels.sparse import gradient_terms, masked_attention
from fastattn.patterns import Union, blocked, dilated, global_tokens, local, strided

PATTERNS = {
    "local5": local(5),
    "local1": local(1),
    "dilated3x4": dilated(3, 4),
    "strided7": strided(7),
    "blocked16": blocked(16),
    "blocked10": blocked(10),
    "global3": global_tokens(3),
    "local|global": local(8) | global_tokens(2),
    "local|strided|dilated": local(3) | strided(20) | dilated(2, 9),
    "blocked|global|local": blocked(32) | global_tokens(1) | local(17),
}


@pytest.mark.parametrize("name", list(PATTERNS))
def test_block_list_reproduces_the_dense_mask(name):
    pattern = PATTERNS[name]
    for T, block, causal in itertools.product((1, 37, 200), (16, 32), (True, False)):
        case = f"{name} T={T} block={block} causal={causal}"
        plan = pattern.compile(T, block=block, is_causal=causal)
        dense = pattern.dense(T, is_causal=causal)
        assert torch.equal(plan.covered(), dense), case
        NB = plan.state.shape[0]
        pad = NB * block - T
        a = torch.nn.functional.pad(dense, (0, pad, 0, pad)).view(NB, block, NB, block)
        inside = torch.nn.functional.pad(torch.ones(T, T, dtype=torch.bool), (0, pad, 0, pad))
        inside = inside.view(NB, block, NB, block)
        any_ = a.any(3).any(1)
        all_ = (a | ~inside).all(3).all(1)
        # visited exactly where a pair is allowed; no element mask exactly where all are
        assert torch.equal(plan.state > 0, any_), case
        assert torch.equal(plan.state == 2, all_ & any_), case


def test_union_flattens_and_dedupes():
    p = local(4) | (strided(8) | local(4)) | global_tokens(1)
    assert isinstance(p, Union) and p.parts() == (local(4), strided(8), global_tokens(1))
    assert (local(4) | local(4)) == local(4)
    assert p.table().tolist() == [[0, 4, 1], [2, 8, 1], [4, 1, 1]]
    assert p.compile(64, block=16) is p.compile(64, block=16)


def test_bad_patterns_are_refused():
    with pytest.raises(KernelError, match="window=0 must be an int >= 1"):
        local(0)
    with pytest.raises(KernelError, match="dilation=2.5"):
        dilated(2, 2.5)
    with pytest.raises(KernelError, match="block=0"):
        local(2).compile(10, block=0)
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(KernelError, match="must be a fastattn.patterns.Pattern"):
        pattern_attention(q, q, q, "local")


# (pattern, T, D, DV, causal, block): the rows between them run full blocks, masked blocks and skipped ones
ROWS = [
    ("local|global", 1, 16, 16, True, 16),
    ("local|strided|dilated", 50, 60, 32, True, 16),
    ("blocked|global|local", 80, 16, 16, True, 16),
    ("blocked16", 40, 32, 16, False, 16),
    ("strided7", 50, 16, 24, False, 32),
]


def test_rows_cover_every_block_state():
    # the kernel rows below walk blocks without the element mask, blocks with it, and skip blocks
    states = set()
    for name, T, _, _, causal, block in ROWS:
        states |= set(PATTERNS[name].compile(T, block=block, is_causal=causal).state.unique().tolist())
    assert states == {0, 1, 2}
    plan = PATTERNS["blocked|global|local"].compile(80, block=16)
    assert plan.full > 0 and plan.visited > plan.full and plan.visited < 5 * 6 // 2


@pytest.mark.usefixtures("kernel_env")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name,T,D,DV,causal,block", ROWS,
                         ids=[f"{r[0]}-T{r[1]}-D{r[2]}-{'causal' if r[4] else 'full'}" for r in ROWS])
def test_pattern_attention_matches_dense_reference(name, T, D, DV, causal, block, dtype):
    pattern = PATTERNS[name]
    g = torch.Generator().manual_seed(T)
    q, k = (torch.randn(1, 1, T, D, generator=g).to(dtype).requires_grad_() for _ in range(2))
    v = torch.randn(1, 1, T, DV, generator=g).to(dtype).requires_grad_()
    do = torch.randn(1, 1, T, DV, generator=g).to(dtype)
    o = pattern_attention(q, k, v, pattern, is_causal=causal, tuning={"block": block})
    got = (o,) + torch.autograd.grad(o, (q, k, v), do)
    allowed = pattern.dense(T, is_causal=causal)
    ref = masked_attention(q, k, v, allowed)
    ref = (ref,) + torch.autograd.grad(ref, (q, k, v), do.double())
    terms = gradient_terms(q, k, v, ref[0], do, allowed)
    for part, a, b, t in zip(("o", "dq", "dk", "dv"), ref, got, terms):
        assert_close(part, a, b, dtype, terms=t)
