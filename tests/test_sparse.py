"""sparse_attention (QK-dropping, hash buckets): Triton kernels on the interpreter against the dense float64 reference.

Every row compares o, dq, dk, dv (random upstream gradient) through one ``assert_close``; the rows cover
each kernel route: range mode without buckets (compaction), with buckets (one-bucket blocks and blocks
spanning several buckets, whose causal skip the schedule test confirms), causal and not, D = 60 and
DV != D, T = 1 and sizes that end mid-block. Blocks of 16 tokens make the small T walk many blocks.
"""

import itertools
import math

import pytest
import torch

from fastattn.attention import lsh_buckets, sparse_attention
from fastattn.errors import KernelError
from fastattn.kernels.checks import assert_close
from fastattn.kernels.sparse import allowed_pairs, gradient_terms, masked_attention, range_schedule

pytestmark = pytest.mark.usefixtures("kernel_env")
SMALL = {"block": 16}


def _inputs(B, H, T, D, DV, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, T, D, generator=g).to(dtype).requires_grad_() for _ in range(2))
    v = torch.randn(B, H, T, DV, generator=g).to(dtype).requires_grad_()
    do = torch.randn(B, H, T, DV, generator=g).to(dtype)
    return q, k, v, do, g


def _compare(q, k, v, do, allowed, dtype, tuning=SMALL, **kw):
    o = sparse_attention(q, k, v, tuning=tuning, **kw)
    got = (o,) + torch.autograd.grad(o, (q, k, v), do)
    ref = masked_attention(q, k, v, allowed)
    ref = (ref,) + torch.autograd.grad(ref, (q, k, v), do.double())
    terms = gradient_terms(q, k, v, ref[0], do, allowed)
    for name, a, b, t in zip(("o", "dq", "dk", "dv"), ref, got, terms):
        assert_close(name, a, b, dtype, terms=t)
    return got


# (restriction, B, H, T, D, DV, causal, (block_q, block_k))
ROWS = [
    ("none", 1, 1, 1, 16, 16, True, (16, 16)),
    ("keep", 1, 2, 37, 60, 32, True, (16, 16)),
    ("keep", 2, 1, 53, 16, 16, False, (32, 16)),
    ("buckets/2", 1, 2, 100, 32, 16, True, (16, 16)),
    ("buckets/2", 1, 1, 45, 16, 24, False, (16, 32)),
    ("keep+buckets/4", 1, 2, 150, 16, 16, True, (32, 16)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("what,B,H,T,D,DV,causal,tiles", ROWS,
                         ids=[f"{r[0]}-T{r[3]}-D{r[4]}-DV{r[5]}-{'causal' if r[6] else 'full'}-{r[7][0]}x{r[7][1]}"
                              for r in ROWS])
def test_matches_dense_reference(what, B, H, T, D, DV, causal, tiles, dtype):
    q, k, v, do, g = _inputs(B, H, T, D, DV, dtype, seed=T)
    kw = {}
    if "keep" in what:
        kw["keep"] = torch.rand(B, H, T, generator=g) < 0.6
    if "buckets" in what:
        kw["buckets"] = lsh_buckets(q.detach(), k.detach(), int(what.split("/")[1]), seed=1)
    allowed = allowed_pairs(T, is_causal=causal, **kw)
    _compare(q, k, v, do, allowed, dtype, tuning={"block_q": tiles[0], "block_k": tiles[1]}, is_causal=causal, **kw)


def test_routes_of_the_rows_above():
    # the bucketed causal row above has blocks spanning several buckets (the kernels' skip loop) and blocks
    # of one bucket (the plain loop, with unmasked tiles); the keep rows run without bucket ids
    q, k, _, _, _ = _inputs(1, 2, 100, 32, 16, torch.float32, seed=100)
    qid, kid = lsh_buckets(q.detach(), k.detach(), 2, seed=1)
    s = range_schedule(2, 100, buckets=(qid.reshape(2, 100), kid.reshape(2, 100)), block_q=16, block_k=16)
    assert s.q_mixed.any() and (s.q_mixed == 0).any() and s.k_mixed.any() and (s.k_mixed == 0).any()
    assert (s.fwd_clean_hi > s.fwd_clean_lo).any() and (s.bwd_clean_hi > s.bwd_clean_lo).any()
    s = range_schedule(2, 100, buckets=(qid.reshape(2, 100), kid.reshape(2, 100)), block_q=16, block_k=16,
                       clean=False)
    assert torch.equal(s.fwd_clean_lo, s.fwd_end) and torch.equal(s.fwd_clean_hi, s.fwd_end)
    s = range_schedule(2, 37, keep=torch.rand(2, 37) < 0.6, block_q=16, block_k=16)
    assert s.bkt_q is None and not s.use_list


def test_empty_rows_give_zeros_and_finite_grads():
    T = 40
    q, k, v, do, g = _inputs(1, 2, T, 16, 16, torch.float32, seed=3)
    keep = torch.rand(1, 2, T, generator=g) < 0.5
    keep[0, 1] = False  # a head with every token dropped
    qid = torch.zeros(1, 2, T, dtype=torch.long)
    kid = torch.zeros(1, 2, T, dtype=torch.long)
    qid[0, 0, :5] = 1  # queries 0..4 in bucket 1, whose only key is position 30: no key j <= i
    kid[0, 0, 30] = 1
    o, dq, dk, dv = _compare(q, k, v, do, allowed_pairs(T, keep=keep, buckets=(qid, kid)), torch.float32,
                             keep=keep, buckets=(qid, kid))
    assert (o[0, 1] == 0).all() and (dq[0, 1] == 0).all() and (dk[0, 1] == 0).all() and (dv[0, 1] == 0).all()
    dropped = ~keep[0, 0]
    assert (o[0, 0][dropped] == 0).all() and (dk[0, 0][dropped] == 0).all()
    empty = keep[0, 0, :5]
    assert (o[0, 0, :5][empty] == 0).all() and (dq[0, 0, :5][empty] == 0).all()
    for x in (o, dq, dk, dv):
        assert torch.isfinite(x).all()


def test_any_integer_ids():
    # ids are compared, never used as numbers: negative ones and ones past int32 give the same result
    q, k, v, do, g = _inputs(1, 1, 40, 16, 16, torch.float32, seed=9)
    qid, kid = torch.randint(0, 3, (2, 1, 1, 40), generator=g)
    big = 1 << 40
    o = sparse_attention(q, k, v, buckets=(qid, kid), tuning=SMALL)
    o2 = sparse_attention(q, k, v, buckets=(qid * big - 7, kid * big - 7), tuning=SMALL)
    o3 = sparse_attention(q, k, v, buckets=(qid.int() - 2, kid.int() - 2), tuning=SMALL)
    assert torch.equal(o, o2) and torch.equal(o, o3)
    assert_close("o", masked_attention(q, k, v, allowed_pairs(40, buckets=(qid, kid))), o, torch.float32)


def test_all_kept_is_causal_softmax():
    q, k, v, do, _ = _inputs(1, 2, 70, 32, 32, torch.float32, seed=5)
    keep = torch.ones(1, 2, 70, dtype=torch.bool)
    ids = torch.zeros(1, 2, 70, dtype=torch.long)
    o = sparse_attention(q, k, v, keep=keep, buckets=(ids, ids), tuning={"block": 32})
    got = (o,) + torch.autograd.grad(o, (q, k, v), do)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = (sdpa,) + torch.autograd.grad(sdpa, (q, k, v), do)
    for name, a, b in zip(("o", "dq", "dk", "dv"), ref, got):
        assert_close(name, a, b, torch.float32)


def test_schedule_visits_every_needed_block_and_few_others():
    # range mode's runs cover each block pair with an allowed pair; with keep alone they are exactly those
    T, BH = 200, 2
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(BH, T, generator=g) < 0.5
    qid, kid = torch.randint(0, 3, (2, BH, T), generator=g)
    cases = [(dict(keep=keep), True), (dict(buckets=(qid, kid)), False), (dict(keep=keep, buckets=(qid, kid)), False)]
    n_clean = {}
    for (kw, exact), (bq, bk) in itertools.product(cases, ((16, 16), (32, 16), (16, 64))):
        s = range_schedule(BH, T, block_q=bq, block_k=bk, **kw)
        NQ, NK = s.n_q, s.n_k
        allowed = allowed_pairs(T, **{k: (v[:, None] if k == "keep" else (v[0][:, None], v[1][:, None]))
                                      for k, v in kw.items()})[:, 0]
        for bh in range(BH):
            a = allowed[bh][s.perm_q[bh]][:, s.perm_k[bh]]  # [T, T] in schedule order
            c = int(s.count[bh])
            a[c:] = False
            a[:, c:] = False
            a = torch.nn.functional.pad(a, (0, NK * bk - T, 0, NQ * bq - T))
            need = a.view(NQ, bq, NK, bk).any(3).any(1)
            visit = torch.zeros(NQ, NK, dtype=torch.bool)
            for qb in range(NQ):
                for kb in range(int(s.fwd_start[bh, qb]), int(s.fwd_end[bh, qb])):
                    visit[qb, kb] = not s.q_mixed[bh, qb] or s.kmin[bh, kb] <= s.qmax[bh, qb]
            visit_t = torch.zeros(NQ, NK, dtype=torch.bool)
            for kb in range(NK):
                for qb in range(int(s.bwd_start[bh, kb]), int(s.bwd_end[bh, kb])):
                    visit_t[qb, kb] = not s.k_mixed[bh, kb] or s.qmax[bh, qb] >= s.kmin[bh, kb]
            case = (list(kw), bq, bk, bh)
            assert (visit >= need).all() and (visit_t >= need).all(), case
            # the unmasked sub-runs hold only tiles whose every pair takes part, and exist
            whole = a.view(NQ, bq, NK, bk).all(3).all(1)
            for qb in range(NQ):
                lo, hi = int(s.fwd_clean_lo[bh, qb]), int(s.fwd_clean_hi[bh, qb])
                assert int(s.fwd_start[bh, qb]) <= lo <= hi <= int(s.fwd_end[bh, qb]), case
                assert whole[qb, lo:hi].all(), (case, qb, lo, hi)
                n_clean[tuple(kw)] = n_clean.get(tuple(kw), 0) + hi - lo
            for kb in range(NK):
                lo, hi = int(s.bwd_clean_lo[bh, kb]), int(s.bwd_clean_hi[bh, kb])
                assert int(s.bwd_start[bh, kb]) <= lo <= hi <= int(s.bwd_end[bh, kb]), case
                assert whole[lo:hi, kb].all(), (case, kb, lo, hi)
            if exact:
                assert (visit == need).all() and (visit_t == need).all(), case
            else:
                # a run's two end blocks may hold the neighbouring bucket only: at most 2 extra per block row
                assert int(visit.sum()) <= int(need.sum()) + 2 * NQ, (case, int(visit.sum()), int(need.sum()))
                assert int(visit_t.sum()) <= int(need.sum()) + 2 * NK, (case, int(visit_t.sum()), int(need.sum()))
    assert n_clean[("keep",)] > 0 and n_clean[("buckets",)] > 0, n_clean


def test_lsh_buckets_are_deterministic_and_shared():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 2, 3, 50, 8, generator=g)
    a = lsh_buckets(q, k, 6, seed=7)
    b = lsh_buckets(q, k, 6, seed=7)
    c = lsh_buckets(q, k, 6, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])
    assert a[0].shape == (2, 3, 50) and int(a[0].min()) >= 0 and int(a[0].max()) < 6
    # the same vector lands in the same bucket as query and as key; -x lands in the opposite half
    same = lsh_buckets(q, q, 6, seed=7)
    assert torch.equal(same[0], same[1])
    flip = lsh_buckets(q, -q, 6, seed=7)
    assert torch.equal((flip[0] + 3) % 6, flip[1])
    assert (lsh_buckets(q, k, 1, seed=0)[0] == 0).all()


def test_bad_arguments_are_refused():
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(KernelError, match="keep must be a bool"):
        sparse_attention(q, q, q, keep=torch.ones(1, 1, 8))
    with pytest.raises(KernelError, match=r"keep must be a tensor \[B, H, T\] = \[1, 1, 8\]"):
        sparse_attention(q, q, q, keep=torch.ones(1, 8, dtype=torch.bool))
    ids = torch.zeros(1, 1, 8, dtype=torch.long)
    with pytest.raises(KernelError, match=r"buckets\[1\] \(key ids\) must hold integer ids; got torch.float32"):
        sparse_attention(q, q, q, buckets=(ids, ids.float()))
    with pytest.raises(KernelError, match="pair"):
        sparse_attention(q, q, q, buckets=ids)
    with pytest.raises(KernelError, match="T_q=8 != T_k=9"):
        sparse_attention(q, torch.randn(1, 1, 9, 16), torch.randn(1, 1, 9, 16), is_causal=False)
    with pytest.raises(KernelError, match="float16, bfloat16 or float32"):
        sparse_attention(q.double(), q.double(), q.double())
    big = torch.randn(1, 1, 8, 160)
    with pytest.raises(KernelError, match="D=160, DV=160"):
        sparse_attention(big, big, big)
    with pytest.raises(KernelError, match="n_buckets=3 must be 1 or an even"):
        lsh_buckets(q, q, 3, seed=0)
    with pytest.raises(KernelError, match="block_q=24 must be a power of two"):
        sparse_attention(q, q, q, tuning={"block": 24})
    with pytest.raises(KernelError, match=r"tuning keys \['blocks'\] unknown"):
        sparse_attention(q, q, q, tuning={"blocks": 32})


def test_zero_length():
    q = torch.randn(1, 2, 0, 16, requires_grad=True)
    o = sparse_attention(q, q, q, keep=torch.ones(1, 2, 0, dtype=torch.bool))
    assert o.shape == (1, 2, 0, 16)
    o.sum().backward()
    assert q.grad.shape == q.shape and math.isfinite(float(q.grad.sum()))


def test_wide_ids_with_keep_match_the_dense_reference():
    # ids spanning far more than 2T values take the schedule's O(T^2) ranking; a head keeps nothing, one all
    q, k, v, do, g = _inputs(2, 2, 45, 16, 16, torch.float32, seed=11)
    qid, kid = (torch.randint(-2, 3, (2, 2, 45), generator=g) * (1 << 45) for _ in range(2))
    keep = torch.rand(2, 2, 45, generator=g) < 0.6
    keep[0, 1], keep[1, 0] = False, True
    got = _compare(q, k, v, do, allowed_pairs(45, keep=keep, buckets=(qid, kid)), torch.float32,
                   keep=keep, buckets=(qid, kid))
    assert (got[0][0, 1] == 0).all() and (got[1][0, 1] == 0).all()
