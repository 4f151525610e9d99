"""Sparse schedules built on the device: no host reads, and the same schedules as the builders they replace.

* Every call path (keep, buckets, both, nothing dropped, a pattern on its first call) builds its schedule
  with no op that reads a device value back to the host: ``Tensor.item`` / ``tolist`` / ``cpu`` / ``numpy``
  raise, and so does every aten op that must wait for the GPU (``nonzero``, ``_local_scalar_dense`` behind
  ``bool``/``int``, boolean-mask indexing, ``bincount``, ...). The kernel is stubbed out: the interpreter
  itself copies tensors to the host.
* The pattern block states from the primitives' structure equal the pair-by-pair states, and the
  fixed-width lists hold exactly each row's visited blocks.
* Keep's closed-form schedule equals the composite (sort + search) one field by field.
* A few random rows through the interpreter kernels against the float64 masked reference.
"""

import contextlib
import itertools
import random
from dataclasses import fields

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastattn.attention.sparse as sparse_mod
from fastattn.attention import pattern_attention, sparse_attention
from fastattn.attention.sparse import SparseTiles, plan_tiles
from fastattn.errors import KernelError
from fastattn.kernels.checks import assert_close
from fastattn.kernels.sparse import allowed_pairs, gradient_terms, masked_attention
from fastattn.kernels.sparse.flash import flash_bwd
from fastattn.kernels.sparse import schedule_kernels
from fastattn.kernels.sparse.schedule import (_compact_blocks, _compact_order, _compact_schedule, _composite_blocks,
                                              _composite_order, _composite_schedule, _padded_lists, range_schedule,
                                              range_schedules)
from fastattn.kernels.sparse.schedule_kernels import bucket_schedules, keep_schedules
from fastattn.patterns import (_block_states, _compile, _schedule, _states_by_pairs, blocked, dilated, global_tokens,
                               local, strided)

# aten ops that cannot finish without the device's answer on the host (they sync on CUDA)
SYNCING = {"_local_scalar_dense", "nonzero", "masked_select", "bincount", "unique_dim", "_unique", "_unique2",
           "unique_consecutive", "equal", "is_nonzero", "histc", "repeat_interleave", "allclose"}


class _NoHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SYNCING:
            raise AssertionError(f"host sync: aten.{name}")
        if name in ("index", "index_put", "index_put_"):
            # a boolean mask as an index needs the count of its True entries on the host
            idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in idx or ()):
                raise AssertionError(f"host sync: aten.{name} with a boolean mask")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    """Raise on anything that reads a tensor's values back to the host."""
    def refuse(name):
        def f(*a, **k):
            raise AssertionError(f"host read: Tensor.{name}")
        return f

    with monkeypatch.context() as mp:
        for name in ("item", "tolist", "cpu", "numpy"):
            mp.setattr(torch.Tensor, name, refuse(name))
        with _NoHostReads():
            yield


class _StubFlash:
    """Stands in for the kernels' autograd Function: records the schedule, returns zeros shaped like o."""
    seen = []

    @staticmethod
    def apply(q, k, v, sched, sched_bwd, scale, is_causal):
        _StubFlash.seen.append((sched, sched_bwd))
        return torch.zeros_like(v)


def test_the_guard_catches_host_reads(monkeypatch):
    x = torch.tensor([0, 3, 0, 5])
    reads = [lambda: x.item(), lambda: x.tolist(), lambda: x.cpu(), lambda: bool(x.any()), lambda: int(x[1]),
             lambda: torch.nonzero(x), lambda: x[x > 0], lambda: torch.bincount(x)]
    with no_host_reads(monkeypatch):
        for read in reads:
            with pytest.raises(AssertionError, match="host"):
                read()
        # what the schedules use passes
        assert x.cumsum(0).shape == (4,) and torch.where(x > 0, x, 7).shape == (4,)


@pytest.mark.parametrize("what", ["none", "keep", "buckets", "keep+buckets", "pattern"])
def test_a_call_builds_its_schedule_without_host_reads(what, monkeypatch):
    B, H, T, D = 2, 3, 77, 16
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, B, H, T, D, generator=g).requires_grad_().unbind(0)  # a backward may follow
    keep = torch.rand(B, H, T, generator=g) < 0.5
    keep[1, 2] = False  # a head with nothing kept
    ids = torch.randint(0, 4, (2, B, H, T), generator=g)
    pattern = local(9) | strided(13) | blocked(20) | global_tokens(3)
    monkeypatch.setattr(sparse_mod, "SparseFlash", _StubFlash)
    _StubFlash.seen.clear()
    _compile.cache_clear()  # the pattern's first call builds its plan under the guard too
    _schedule.cache_clear()
    kw = {"keep": dict(keep=keep), "buckets": dict(buckets=tuple(ids)), "none": {},
          "keep+buckets": dict(keep=keep, buckets=tuple(ids))}.get(what)
    with no_host_reads(monkeypatch):
        for causal in (True, False):
            # a forward tiled apart from the backward: both schedules are built under the guard
            if kw is None:
                o = pattern_attention(q, k, v, pattern, is_causal=causal, tuning={"block": 16, "fwd": (32, 16, 4)})
            else:
                o = sparse_attention(q, k, v, is_causal=causal, tuning={"block_q": 32, "block_k": 16,
                                                                         "fwd": (64, 32, 4)}, **kw)
            assert o.shape == (B, H, T, D)
    assert len(_StubFlash.seen) == 2
    for fwd, bwd in _StubFlash.seen:
        assert fwd.use_list == bwd.use_list == (what == "pattern")
        assert (fwd.block_q, fwd.block_k, bwd.block_q, bwd.block_k) == ((32, 16, 16, 16) if what == "pattern"
                                                                        else (64, 32, 32, 16))
    if what == "pattern":
        # a second call finds the plan and the lists in the cache
        plan = pattern.compile(T, block=32, block_k=16, is_causal=True)
        assert plan is pattern.compile(T, block=32, block_k=16, is_causal=True)
        assert plan.schedule("cpu") is _StubFlash.seen[0][0]


def _random_pattern(rng):
    make = [lambda: local(rng.randint(1, 40)), lambda: dilated(rng.randint(1, 6), rng.randint(1, 9)),
            lambda: strided(rng.randint(1, 30)), lambda: blocked(rng.choice([1, 2, 3, 5, 10, 16, 17, 33, 64])),
            lambda: global_tokens(rng.randint(1, 40))]
    p = rng.choice(make)()
    for _ in range(rng.randint(0, 3)):
        p = p | rng.choice(make)()
    return p


def test_block_states_equal_the_pair_by_pair_states():
    rng = random.Random(0)
    kinds = set()
    for case in range(150):
        p = _random_pattern(rng)
        T, causal = rng.choice([1, 2, 15, 16, 17, 45, 64, 100, 130]), case % 2 == 0
        bq, bk = rng.choice([(16, 16), (32, 32), (32, 16), (16, 32), (64, 16)])
        new = _block_states(p, T, bq, causal, "cpu", block_k=bk)
        assert torch.equal(new, _states_by_pairs(p, T, bq, causal, block_k=bk)), (p, T, bq, bk, causal)
        kinds |= set(new.unique().tolist())
    assert kinds == {0, 1, 2}


def test_padded_lists_hold_each_rows_visited_blocks():
    g = torch.Generator().manual_seed(2)
    for NB in (1, 2, 7, 13):
        state = torch.randint(0, 3, (NB, NB), generator=g, dtype=torch.int8)
        state[0] = 0  # a row that visits nothing
        start, end, blocks, full = _padded_lists(state)
        assert blocks.shape == (NB * NB,) and start.shape == end.shape == (1, NB)
        for r in range(NB):
            s, e = int(start[0, r]), int(end[0, r])
            assert s == r * NB and torch.equal(blocks[s:e].long(), torch.nonzero(state[r])[:, 0])
            assert torch.equal(full[s:e].bool(), state[r][blocks[s:e].long()] == 2)
            # the padding holds the skipped blocks, never flagged full
            assert sorted(blocks[r * NB:(r + 1) * NB].tolist()) == list(range(NB))
            assert not full[e:(r + 1) * NB].any()


def test_compact_keep_schedule_equals_the_composite_one():
    g = torch.Generator().manual_seed(3)
    for T, (bq, bk), causal, p in [(1, (16, 16), True, 1.0), (17, (16, 16), False, 0.5), (37, (32, 16), True, 0.6),
                                   (64, (16, 64), True, 0.3), (100, (64, 16), False, 0.8), (130, (32, 32), True, 0.0)]:
        keep = torch.rand(3, T, generator=g) < p
        keep[1] = True
        for kp, clean in ((keep, True), (keep, False), (None, True)):
            a = _compact_schedule(3, T, kp, causal, bq, bk, 4, clean, "cpu")
            b = _composite_schedule(3, T, keep=kp, is_causal=causal, block_q=bq, block_k=bk, clean=clean)
            for f in fields(a):
                x, y = getattr(a, f.name), getattr(b, f.name)
                case = (T, bq, bk, causal, p, kp is None, clean, f.name)
                if isinstance(x, torch.Tensor):
                    assert x.dtype == y.dtype and torch.equal(x, y), case
                else:
                    assert x == y, case


def test_tilings_of_one_order_equal_their_own_schedules():
    # range_schedules sorts or compacts once and shares block statistics between tilings: each tiling must
    # equal the schedule built for it alone
    g = torch.Generator().manual_seed(4)
    tiles = ((64, 16, 8), (16, 16, 4), (16, 32, 4))
    for T, causal in ((37, True), (130, False)):
        keep = torch.rand(2, T, generator=g) < 0.6
        ids = tuple(torch.randint(-2, 3, (2, 2, T), generator=g))
        for kw in (dict(keep=keep), dict(buckets=ids), dict(keep=keep, buckets=ids), {}):
            for (bq, bk, w), got in zip(tiles, range_schedules(2, T, tiles, is_causal=causal, **kw)):
                ref = range_schedule(2, T, is_causal=causal, block_q=bq, block_k=bk, warps=w, **kw)
                assert torch.equal(got.pos_q, ref.pos_q) and got.block_q == bq and got.warps == w
                for f in fields(got):
                    x, y = getattr(got, f.name), getattr(ref, f.name)
                    assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, (T, list(kw), f.name)


def test_forward_only_tilings_keep_the_forward_fields():
    g = torch.Generator().manual_seed(5)
    T = 90
    keep = torch.rand(2, T, generator=g) < 0.6
    ids = tuple(torch.randint(0, 3, (2, 2, T), generator=g))
    back = ("bwd_start", "bwd_end", "bwd_clean_lo", "bwd_clean_hi", "k_mixed")
    restrictions = (dict(keep=keep), dict(buckets=ids), dict(keep=keep, buckets=ids))
    for causal, kw in itertools.product((True, False), restrictions):
        fwd_only, full = range_schedules(2, T, ((32, 16, 4),) * 2, is_causal=causal, backward=(False, True), **kw)
        assert not fwd_only.has_backward and full.has_backward
        for f in fields(full):
            x, y = getattr(fwd_only, f.name), getattr(full, f.name)
            if f.name in back:
                assert x.shape == (1,), f.name
            elif f.name != "has_backward":
                assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, (causal, list(kw), f.name)
    q = torch.zeros(2, T, 16)
    with pytest.raises(KernelError, match="built forward-only"):
        flash_bwd(q, q, q, q, q[..., 0], q, fwd_only, 0.25, True)


def test_plan_tiles_routes_16_bit_forwards_to_128_by_64():
    for dtype in (torch.float16, torch.bfloat16):
        assert plan_tiles(64, 64, "cuda", dtype) == SparseTiles(fwd=(128, 64, 8), bwd=(64, 64, 4))
        assert plan_tiles(128, 128, "cuda", dtype).fwd == (128, 64, 8)
        # tiles set by hand hold for every launch; "fwd" sets the forward alone
        assert plan_tiles(64, 64, "cuda", dtype, {"block": 32}) == SparseTiles(fwd=(32, 32, 4), bwd=(32, 32, 4))
        assert plan_tiles(64, 64, "cuda", dtype, {"fwd": (64, 64, 4)}).fwd == (64, 64, 4)
    assert plan_tiles(64, 64, "cuda", torch.float32) == SparseTiles(fwd=(64, 64, 4), bwd=(64, 64, 4))
    assert plan_tiles(64, 64, "cpu", torch.float16) == SparseTiles(fwd=(32, 32, 4), bwd=(32, 32, 4))
    assert plan_tiles(64, 64, "cpu", torch.float16, {"block": 16, "fwd": (128, 64, 8)}).fwd == (128, 64, 8)
    with pytest.raises(KernelError, match=r"tuning fwd=\(128, 64\) must be \(block_q, block_k, warps\)"):
        plan_tiles(64, 64, "cpu", tuning={"fwd": (128, 64)})
    with pytest.raises(KernelError, match="fwd block_k=48 must be a power of two"):
        plan_tiles(64, 64, "cpu", tuning={"fwd": (128, 48, 8)})


# the plan's 16-bit GPU forward (128 x 64 x 8) forced on the interpreter, the backward at 32 x 32
FWD_128 = [("keep", 130, True, torch.float16), ("buckets", 130, False, torch.float16),
           ("pattern", 130, True, torch.float16), ("keep+buckets", 130, True, torch.float32)]


@pytest.mark.usefixtures("kernel_env")
@pytest.mark.parametrize("what,T,causal,dtype", FWD_128,
                         ids=[f"{r[0]}-T{r[1]}-{'causal' if r[2] else 'full'}-{str(r[3])[6:]}" for r in FWD_128])
def test_forward_at_128_by_64_matches_the_dense_reference(what, T, causal, dtype):
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(1, 2, T, 16, generator=g).to(dtype).requires_grad_() for _ in range(3))
    do = torch.randn(1, 2, T, 16, generator=g).to(dtype)
    tuning = {"block": 32, "fwd": (128, 64, 8)}
    if what == "pattern":
        pattern = local(20) | strided(33) | global_tokens(2)
        o = pattern_attention(q, k, v, pattern, is_causal=causal, tuning=tuning)
        allowed = pattern.dense(T, is_causal=causal)
    else:
        kw = {}
        if "keep" in what:
            kw["keep"] = torch.rand(1, 2, T, generator=g) < 0.7
        if "buckets" in what:
            kw["buckets"] = tuple(torch.randint(0, 3, (2, 1, 2, T), generator=g))
        o = sparse_attention(q, k, v, is_causal=causal, tuning=tuning, **kw)
        allowed = allowed_pairs(T, is_causal=causal, **kw)
    got = (o,) + torch.autograd.grad(o, (q, k, v), do)
    ref = masked_attention(q, k, v, allowed)
    ref = (ref,) + torch.autograd.grad(ref, (q, k, v), do.double())
    terms = gradient_terms(q, k, v, ref[0], do, allowed)
    for part, a, b, t in zip(("o", "dq", "dk", "dv"), ref, got, terms):
        assert_close(part, a, b, dtype, terms=t)


# (restriction, T, causal, (block_q, block_k)): random data with a head that keeps nothing
# (the 128 x 64 rows above run the causal ones)
KERNEL_ROWS = [("keep", 50, False, (16, 32)), ("pattern", 45, False, (16, 16))]


@pytest.mark.usefixtures("kernel_env")
@pytest.mark.parametrize("what,T,causal,tiles", KERNEL_ROWS,
                         ids=[f"{r[0]}-T{r[1]}-{'causal' if r[2] else 'full'}-{r[3][0]}x{r[3][1]}"
                              for r in KERNEL_ROWS])
def test_random_rows_match_the_dense_reference(what, T, causal, tiles):
    g = torch.Generator().manual_seed(T)
    rng = random.Random(T)
    q, k, v = (torch.randn(1, 2, T, 16, generator=g).requires_grad_() for _ in range(3))
    do = torch.randn(1, 2, T, 16, generator=g)
    if what == "pattern":
        pattern = _random_pattern(rng) | blocked(rng.choice([3, 10]))
        o = pattern_attention(q, k, v, pattern, is_causal=causal, tuning={"block": tiles[0]})
        allowed = pattern.dense(T, is_causal=causal)
    else:
        kw = dict(keep=torch.rand(1, 2, T, generator=g) < 0.6)
        kw["keep"][0, 1] = False
        if "buckets" in what:
            kw["buckets"] = tuple(torch.randint(-3, 3, (2, 1, 2, T), generator=g))
        o = sparse_attention(q, k, v, is_causal=causal, tuning={"block_q": tiles[0], "block_k": tiles[1]}, **kw)
        allowed = allowed_pairs(T, is_causal=causal, **kw)
        assert (o[0, 1] == 0).all()
    got = (o,) + torch.autograd.grad(o, (q, k, v), do)
    ref = masked_attention(q, k, v, allowed)
    ref = (ref,) + torch.autograd.grad(ref, (q, k, v), do.double())
    terms = gradient_terms(q, k, v, ref[0], do, allowed)
    for part, a, b, t in zip(("o", "dq", "dk", "dv"), ref, got, terms):
        assert_close(part, a, b, torch.float32, terms=t)


# -- the Triton schedule builders against the torch ones ----------------------------------------------------------
def _assert_same_schedule(got, ref, case):
    for f in fields(ref):
        x, y = getattr(got, f.name), getattr(ref, f.name)
        if isinstance(y, torch.Tensor):
            assert isinstance(x, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape, (case, f.name)
            assert torch.equal(x, y), (case, f.name, x, y)
        else:
            assert x == y, (case, f.name)


# (T, tilings, causal): T not a multiple of the blocks, a forward tiling apart from the backward's, T = 1
SCHEDULE_ROWS = [(1, ((16, 16, 4),), True), (37, ((32, 16, 4), (16, 16, 4)), True), (64, ((16, 64, 4),), False),
                 (100, ((64, 16, 8), (16, 32, 4)), False), (130, ((32, 32, 4),), True)]


@pytest.mark.usefixtures("kernel_env")
@pytest.mark.parametrize("T,tiles,causal", SCHEDULE_ROWS, ids=[f"T{r[0]}-{len(r[1])}tilings-{r[2]}"
                                                               for r in SCHEDULE_ROWS])
def test_triton_keep_schedule_equals_the_torch_one(T, tiles, causal):
    g = torch.Generator().manual_seed(T)
    BH = 5
    keep = torch.rand(BH, T, generator=g) < torch.rand(BH, 1, generator=g)
    keep[0], keep[1] = False, True  # a row with nothing kept, one with everything
    backward = (False, True)[-len(tiles):]
    for clean in (True, False):
        got = keep_schedules(BH, T, tiles, keep, is_causal=causal, clean=clean, backward=backward)
        perm, n = _compact_order(BH, T, keep, "cpu")
        for (bq, bk, w), bwd, s in zip(tiles, backward, got):
            ref = _compact_blocks(perm, n, T, causal, bq, bk, w, clean, bwd)
            _assert_same_schedule(s, ref, (T, bq, bk, causal, clean, bwd))


def _ids(g, kind, BH, T):
    """(query ids, key ids) [BH, T] of one kind of bucket assignment."""
    r = lambda lo, hi: torch.randint(lo, hi, (BH, T), generator=g)  # noqa: E731
    if kind == "one":
        return torch.full((BH, T), 7), torch.full((BH, T), 7)
    if kind == "gaps":  # most of the id range unused, ids negative and positive, keys in another order
        q = r(-3, 3) * 5
        return q, q.flip(-1)
    if kind == "wide":  # spans far more than 2T values: ranked by the O(T^2) kernels
        q, k = r(0, 4) * (1 << 40) - (1 << 50), r(0, 4) * (1 << 40) - (1 << 50)
        q[0, 0], k[0, -1] = -(1 << 63), (1 << 63) - 1  # a span past int64
        q[1], k[1] = r(0, 3)[1], r(0, 3)[1]  # a narrow row beside the wide ones
        return q, k
    return r(0, 4), r(0, 4)


@pytest.mark.usefixtures("kernel_env")
@pytest.mark.parametrize("kind", ["random", "one", "gaps", "wide"])
@pytest.mark.parametrize("T,tiles,causal", SCHEDULE_ROWS[1:], ids=[f"T{r[0]}-{len(r[1])}tilings-{r[2]}"
                                                                   for r in SCHEDULE_ROWS[1:]])
def test_triton_bucket_schedule_equals_the_torch_one(T, tiles, causal, kind):
    g = torch.Generator().manual_seed(T)
    BH = 4
    ids = _ids(g, kind, BH, T)
    keep = torch.rand(BH, T, generator=g) < 0.7
    keep[2] = False  # a row with nothing kept
    backward = (False, True)[-len(tiles):]
    for kp in (keep, None):
        got = bucket_schedules(BH, T, tiles, ids, kp, is_causal=causal, backward=backward)
        order = _composite_order(BH, T, kp, ids, "cpu")
        for (bq, bk, w), bwd, s in zip(tiles, backward, got):
            ref = _composite_blocks(order, T, causal, bq, bk, w, True, None, bwd)
            _assert_same_schedule(s, ref, (T, bq, bk, causal, kind, kp is None, bwd))


class _Launches(TorchDispatchMode):
    """Counts the torch ops that start a device kernel (allocations and views start none) and, through
    ``schedule_kernels._launch``, the Triton launches."""
    FREE = {"empty", "empty_strided", "view", "_unsafe_view", "expand", "slice", "select", "split", "as_strided",
            "split_with_sizes", "alias", "detach", "unsqueeze", "squeeze", "t", "transpose", "permute"}

    def __init__(self, monkeypatch):
        super().__init__()
        self.torch_ops, self.triton = [], []
        real = schedule_kernels._launch

        def launch(kernel, grid, **kw):
            self.triton.append(kernel.__name__)
            with torch.utils._python_dispatch._disable_current_modes():
                real(kernel, grid, **kw)  # the interpreter's own tensor copies are not device launches
        monkeypatch.setattr(schedule_kernels, "_launch", launch)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in self.FREE:
            self.torch_ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.usefixtures("kernel_env")
def test_schedules_take_a_handful_of_launches(monkeypatch):
    BH, T = 3, 100
    g = torch.Generator().manual_seed(6)
    keep = torch.rand(BH, T, generator=g) < 0.5
    ids = tuple(torch.randint(0, 4, (2, BH, T), generator=g))
    tiles, backward = ((64, 32, 8), (32, 32, 4)), (False, True)
    for kw, most in ((dict(keep=keep), 5), (dict(buckets=ids), 8), (dict(keep=keep, buckets=ids), 8)):
        with _Launches(monkeypatch) as count:
            scheds = range_schedules(BH, T, tiles, backward=backward, **kw)
        assert count.torch_ops == [], (list(kw), count.torch_ops)
        assert len(count.triton) <= most, (list(kw), count.triton)
        assert len(count.triton) == (3 if "buckets" not in kw else 7)
        assert scheds[1].has_backward and not scheds[0].has_backward


@pytest.mark.usefixtures("kernel_env")
@pytest.mark.parametrize("what", ["keep", "buckets", "keep+buckets"])
def test_a_call_with_its_kernels_reads_nothing_back(what, monkeypatch):
    # the whole call under the interpreter, schedule kernels and flash kernels, forward and backward
    B, H, T = 1, 2, 40
    g = torch.Generator().manual_seed(7)
    q, k, v = torch.randn(3, B, H, T, 16, generator=g).requires_grad_().unbind(0)
    kw = {}
    if "keep" in what:
        kw["keep"] = torch.rand(B, H, T, generator=g) < 0.5
    if "buckets" in what:
        kw["buckets"] = tuple(torch.randint(0, 3, (2, B, H, T), generator=g))

    def refuse(*a, **k):
        raise AssertionError("host read")

    with monkeypatch.context() as mp:
        mp.setattr(torch.Tensor, "item", refuse)
        mp.setattr(torch.Tensor, "tolist", refuse)
        o = sparse_attention(q, k, v, tuning={"block": 16}, **kw)
        dq, = torch.autograd.grad(o.sum(), (q,))
    ref = masked_attention(q, k, v, allowed_pairs(T, **kw))
    assert_close("o", ref, o, torch.float32)
    assert dq.shape == q.shape and dq.isfinite().all()
