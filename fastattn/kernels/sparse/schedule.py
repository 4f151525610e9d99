"""Schedules for the sparse flash kernels: the token order they run in and the blocks each block visits.

A :class:`Schedule` is a record of int32 index tensors, built in torch on the inputs' device once per call
(range mode: O(T log T) per (b, h) for the sort, O(T / block) block statistics and searches; keep alone, a
cumsum and closed forms) or once per pattern (list mode, see :mod:`fastattn.patterns`), with sizes from the
shapes only: no value is read back to the host. The kernels in :mod:`.flash` read nothing else.

Range mode. Each token gets a composite key c = id * T + position (id = its bucket, 0 without buckets);
a dropped token gets c = BIG + position. Tokens run in increasing c (keep alone: a cumsum compaction,
the same order), so a block of queries holds composites [cq_min, cq_max] and a block of keys
[ck_min, ck_max], both increasing along the blocks. A key of bucket b at position j meets a query of
bucket b at position i >= j (causal), whose c_q = b T + i >= b T + j = c_k, so every key a query block
needs has c_k in [(cq_min // T) T, cq_max]: a contiguous run of key blocks, found by two searchsorted.
Without causality the run ends at the last composite of bucket cq_max // T. The transposed run (the
query blocks a key block meets, for dk/dv) is [ck_min, (ck_max // T) T + T - 1]. Inside a run, a block
of another bucket can still lie wholly after the query block in position: the kernels skip it on the
per-block extremes ``qmax`` (largest query position) and ``kmin`` (smallest key position).

On a GPU (or under ``TRITON_INTERPRET=1``) :func:`range_schedules` builds keep and bucket schedules with the
Triton kernels of :mod:`.schedule_kernels` (a few launches); the torch builders here are their reference, equal
field by field, and the CPU path.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from fastattn.kernels.sparse.schedule_kernels import bucket_schedules, keep_schedules

__all__ = ["Schedule", "range_schedule", "range_schedules", "list_schedule"]

# above every composite id * T + position of a kept token (ids and T stay below 2^31)
BIG = 1 << 62


@dataclass(frozen=True)
class Schedule:
    """What the kernels run over. Shapes: BH = batch * heads (1 where shared by all), NB blocks, T tokens.

    block_q, block_k : slots per query block and per key block; n_q, n_k = ceil(T / block_q), ceil(T / block_k).
    warps : warps per program.
    use_list : list mode (pattern) or range mode (keep / buckets).
    pos_q, pos_k : int32 [BH, T] original position of the token in schedule slot t.
    bkt_q, bkt_k : int32 [BH, T] bucket id per slot, or None.
    count : int32 [BH] tokens that take part (they fill slots 0 .. count - 1).
    fwd_start, fwd_end : int32 [BH, n_q] the entries each query block walks (forward, dq).
    bwd_start, bwd_end : int32 [BH, n_k] the entries each key block walks (dk, dv).
    fwd_clean_lo, fwd_clean_hi, bwd_clean_lo, bwd_clean_hi : int32 range mode's sub-run of each block's run
        whose tiles have every pair allowed (the kernels skip the element mask there).
    fwd_blocks, fwd_full, bwd_blocks, bwd_full : int32 [n_q * n_k] list mode's block ids and "no element mask"
        flags, one fixed-width row per block (entries start .. end - 1 of it hold the visited ones).
    qmax, kmin : int32 [BH, n_q], [BH, n_k] range mode's per-block largest query / smallest key position.
    q_mixed, k_mixed : int32 [BH, n_q], [BH, n_k] range mode's 1 where a block holds several buckets (only such
        blocks test qmax / kmin: a one-bucket block's run holds no block wholly after it).
    prims : int32 [N, 3] list mode's pattern primitives (kind, a, b).
    perm_q, perm_k : int64 [BH, T] the original position of each slot (None in list mode: identity).
    slot_q : int64 [BH, T] the slot of each query token, perm_q's inverse (None in list mode).
    has_backward : False for a forward-only tiling, whose bwd_* and k_mixed are left out (int32 [1] zeros).
    """

    block_q: int
    block_k: int
    n_q: int
    n_k: int
    warps: int
    use_list: bool
    pos_q: torch.Tensor
    pos_k: torch.Tensor
    bkt_q: torch.Tensor | None
    bkt_k: torch.Tensor | None
    count: torch.Tensor
    fwd_start: torch.Tensor
    fwd_end: torch.Tensor
    bwd_start: torch.Tensor
    bwd_end: torch.Tensor
    fwd_clean_lo: torch.Tensor
    fwd_clean_hi: torch.Tensor
    bwd_clean_lo: torch.Tensor
    bwd_clean_hi: torch.Tensor
    fwd_blocks: torch.Tensor
    fwd_full: torch.Tensor
    bwd_blocks: torch.Tensor
    bwd_full: torch.Tensor
    qmax: torch.Tensor
    kmin: torch.Tensor
    q_mixed: torch.Tensor
    k_mixed: torch.Tensor
    prims: torch.Tensor
    perm_q: torch.Tensor | None
    perm_k: torch.Tensor | None
    has_backward: bool = True
    slot_q: torch.Tensor | None = None


def _inverse(perm):
    """slot [BH, T] int64 of each token, for perm [BH, T] the token of each slot."""
    T = perm.shape[-1]
    return torch.empty_like(perm).scatter_(-1, perm, torch.arange(T, device=perm.device).expand_as(perm))


def _dense_ids(qid, kid):
    """Query and key ids renumbered per row to ranks 0 .. 2T - 1, equal exactly where the ids are equal: any
    int64 ids (negative, or past int32) become small ints with no host sync (one sort of 2T per row)."""
    T = qid.shape[-1]
    both = torch.cat([qid, kid], -1).long()  # [BH, 2T]
    ids, order = both.sort(dim=-1, stable=True)
    new = torch.ones_like(ids, dtype=torch.bool)
    new[:, 1:] = ids[:, 1:] != ids[:, :-1]
    rank = torch.empty_like(ids).scatter_(-1, order, new.long().cumsum(-1) - 1)
    return rank[:, :T], rank[:, T:]


def _order(c, keep, sort):
    """(perm [BH, T], sorted composites): slot -> original position, stable in c."""
    BH, T = c.shape
    if sort:
        perm = torch.argsort(c, dim=-1, stable=True)
    else:
        # keep alone: the kept tokens first in their order, then the dropped ones; a cumsum, no sort
        kept = keep.long()
        n = kept.sum(-1, keepdim=True)
        dest = torch.where(keep, kept.cumsum(-1) - 1, n + (1 - kept).cumsum(-1) - 1)
        pos = torch.arange(T, device=c.device).expand(BH, T)
        perm = torch.empty_like(dest).scatter_(-1, dest, pos)
    return perm, c.gather(-1, perm)


def _block_stats(c_sorted, pos_sorted, block, NB, T):
    """Per block: (c_min, c_max) of its kept tokens (BIG if none; both nondecreasing along the blocks),
    (pos_max, pos_min) of its kept tokens (-1 / T if none)."""
    BH = c_sorted.shape[0]
    pad = NB * block - T
    c = torch.nn.functional.pad(c_sorted, (0, pad), value=BIG).view(BH, NB, block)
    pos = torch.nn.functional.pad(pos_sorted, (0, pad), value=0).view(BH, NB, block)
    valid = c < BIG
    c_min = c[..., 0].clamp(max=BIG)
    c_max = torch.where(valid, c, -1).amax(-1)
    c_max = torch.where(c_max < 0, BIG, c_max)
    pos_max = torch.where(valid, pos, -1).amax(-1)
    pos_min = torch.where(valid, pos, T).amin(-1)
    return c_min, c_max, pos_max, pos_min


def _runs(lo, hi, seq_max, seq_min, empty):
    """[start, end) of the blocks whose composite span meets [lo, hi] (two searchsorted); empty rows get 0, 0."""
    start = torch.searchsorted(seq_max, lo, side="left")
    end = torch.searchsorted(seq_min, hi, side="right")
    end = torch.maximum(end, start)
    start = torch.where(empty, 0, start)
    end = torch.where(empty, 0, end)
    return start.int().contiguous(), end.int().contiguous()


def _clean(lo, hi, seq_min, seq_max, whole, clean, start, end):
    """[clean_lo, clean_hi) inside [start, end): the blocks wholly inside the composite span [lo, hi] and wholly
    valid (index < ``whole``), whose every pair with a ``clean`` block takes part; (end, end) elsewhere."""
    a = torch.searchsorted(seq_min, lo, side="left").int()
    b = torch.minimum(torch.searchsorted(seq_max, hi, side="right").int(), whole[:, None])
    a = torch.maximum(torch.minimum(a, end), start)
    b = torch.maximum(torch.minimum(b, end), a)
    return torch.where(clean, a, end).contiguous(), torch.where(clean, b, end).contiguous()


def range_schedule(BH, T, *, keep=None, buckets=None, is_causal=True, block_q=64, block_k=64, warps=4, clean=True,
                   device=None):
    """The range-mode :class:`Schedule` of keep ([BH, T] bool) and/or buckets ((query ids, key ids), [BH, T]
    ints, any values; renumbered per row). ``clean=False`` masks every tile (no unmasked sub-runs; for measuring them).

    Built on ``device`` with torch ops whose sizes come from the shapes: nothing is read back to the host, so a
    call queues its launches without waiting for the GPU. Without buckets the runs are closed forms of the kept
    count (:func:`_compact_blocks`, cached when nothing is dropped); with buckets, searches over the sorted
    composites (:func:`_composite_blocks`).
    """
    return range_schedules(BH, T, ((block_q, block_k, warps),), keep=keep, buckets=buckets, is_causal=is_causal,
                           clean=clean, device=device)[0]


def range_schedules(BH, T, tiles, *, keep=None, buckets=None, is_causal=True, clean=True, device=None,
                    backward=None):
    """One range-mode :class:`Schedule` per (block_q, block_k, warps) in ``tiles``, sharing one token order (one
    compaction or sort): the forward and the backward may run different tiles over the same slots.
    ``backward`` (a bool per tiling, default all True) says which tilings the dk-dv launch will walk; the others
    leave out the transposed runs (about a quarter of the ops)."""
    backward = (True,) * len(tiles) if backward is None else tuple(backward)
    if buckets is None and keep is None:
        dev = str(torch.device(device or "cpu"))
        return tuple(_full_schedule(BH, T, bool(is_causal), bq, bk, w, bool(clean), dev) for bq, bk, w in tiles)
    on = (keep if buckets is None else buckets[0]).device
    if on.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        # a handful of Triton launches; the torch builders below are their reference (and the CPU path)
        if buckets is None:
            return keep_schedules(BH, T, tiles, keep, is_causal=is_causal, clean=clean, backward=backward)
        return bucket_schedules(BH, T, tiles, buckets, keep, is_causal=is_causal, clean=clean, backward=backward)
    if buckets is None:
        perm, n = _compact_order(BH, T, keep, keep.device)
        return tuple(_compact_blocks(perm, n, T, is_causal, bq, bk, w, clean, bwd)
                     for (bq, bk, w), bwd in zip(tiles, backward))
    order = _composite_order(BH, T, keep, buckets, device)
    stats = {}  # block statistics per (side, block size), shared by tilings that agree on a side
    return tuple(_composite_blocks(order, T, is_causal, bq, bk, w, clean, stats, bwd)
                 for (bq, bk, w), bwd in zip(tiles, backward))


@functools.lru_cache(maxsize=32)
def _full_schedule(BH, T, is_causal, block_q, block_k, warps, clean, device):
    # nothing dropped: a function of the shapes alone, built once per shape
    return _compact_schedule(BH, T, None, is_causal, block_q, block_k, warps, clean, device)


def _compact_schedule(BH, T, keep, is_causal, block_q, block_k, warps, clean, device):
    """Range mode for keep alone (or nothing dropped, ``keep=None``): see :func:`_compact_blocks`."""
    return _compact_blocks(*_compact_order(BH, T, keep, device), T, is_causal, block_q, block_k, warps, clean)


def _compact_order(BH, T, keep, device):
    """(perm [BH, T] int64 slot -> position, n [BH, 1] int64 kept count): the kept tokens first in their order,
    then the dropped ones; a cumsum and a scatter, no sort."""
    if keep is None:
        return (torch.arange(T, device=device, dtype=torch.int64).expand(BH, T),
                torch.full((BH, 1), T, dtype=torch.int64, device=device))
    seen = keep.long().cumsum(-1)
    n = seen[:, -1:]
    dest = torch.where(keep, seen - 1, n + torch.arange(T, device=device) - seen)  # the slot of each token
    return torch.empty_like(dest).scatter_(-1, dest, torch.arange(T, device=device).expand(BH, T)), n


def _compact_blocks(perm, n, T, is_causal, block_q, block_k, warps, clean, backward=True):
    """Range mode for keep alone: the kept tokens take slots 0 .. n - 1 in order, so slot order is position order
    and every run is a closed form of n = count per row.

    Query block qb holds slots [qb Bq, min(qb Bq + Bq, n)), key block kb [kb Bk, min(kb Bk + Bk, n)). Causal:
    qb walks key blocks 0 .. (last slot) // Bk, kb is walked by query blocks (kb Bk) // Bq .. ceil(n / Bq) - 1;
    unmasked are the whole key blocks wholly at or before qb's first slot, floor((qb Bq + 1) / Bk) of them, and
    for kb the query blocks from ceil(((kb + 1) Bk - 1) / Bq) to the last whole one. Equal, field by field, to
    :func:`_composite_blocks` with no buckets (the tests check it), with O(1) ops per field instead of
    searches."""
    BH, device = perm.shape[0], perm.device
    NQ, NK = -(-T // block_q), -(-T // block_k)
    # int32 throughout (the kernels' type): no conversions at the end
    n = n.int()
    q0 = torch.arange(0, NQ * block_q, block_q, device=device, dtype=torch.int32)[None]  # [1, NQ] first slots
    k0 = torch.arange(0, NK * block_k, block_k, device=device, dtype=torch.int32)[None]
    q_last = torch.minimum(q0 + block_q, n) - 1  # [BH, NQ] last valid slot (< first where empty)
    q_some, k_some = q0 < n, k0 < n
    nq_some, nk_some = (n + block_q - 1) // block_q, (n + block_k - 1) // block_k  # [BH, 1] non-empty blocks
    nq_whole, nk_whole = n // block_q, n // block_k
    zero = torch.zeros((), dtype=torch.int32, device=device)
    f_end = torch.where(q_some, q_last // block_k + 1 if is_causal else nk_some, zero)
    f_start = zero.expand(BH, NQ)
    q_clean = (q0 + block_q <= n) & clean
    fc_lo, fc_hi = zero, torch.minimum((q0 + 1) // block_k, nk_whole) if is_causal else nk_whole
    fc_lo = torch.maximum(torch.minimum(fc_lo, f_end), f_start)
    fc_hi = torch.maximum(torch.minimum(fc_hi, f_end), fc_lo)
    none = torch.zeros(1, dtype=torch.int32, device=device)
    bwd = dict(bwd_start=none, bwd_end=none, bwd_clean_lo=none, bwd_clean_hi=none, k_mixed=none)
    if backward:
        b_start = torch.where(k_some, k0 // block_q, zero) if is_causal else zero.expand(BH, NK)
        b_end = torch.where(k_some, nq_some, zero)
        k_clean = (k0 + block_k <= n) & clean
        bc_lo = (k0 + block_k + block_q - 2) // block_q if is_causal else zero
        bc_lo = torch.maximum(torch.minimum(bc_lo, b_end), b_start)
        bc_hi = torch.maximum(torch.minimum(nq_whole, b_end), bc_lo)
        bwd = dict(bwd_start=b_start.contiguous(), bwd_end=b_end, bwd_clean_lo=torch.where(k_clean, bc_lo, b_end),
                   bwd_clean_hi=torch.where(k_clean, bc_hi, b_end),
                   k_mixed=torch.zeros(BH, NK, dtype=torch.int32, device=device))
    pos = perm.int().contiguous()
    qmax = torch.where(q_some, pos.gather(-1, q_last.clamp(0, T - 1).long()), -1)
    kmin = torch.where(k_some, pos.gather(-1, k0.clamp(max=T - 1).long().expand(BH, NK)), T)
    return Schedule(block_q=block_q, block_k=block_k, n_q=NQ, n_k=NK, warps=warps, use_list=False, pos_q=pos,
                    pos_k=pos, bkt_q=None, bkt_k=None, count=n[:, 0].contiguous(), fwd_start=f_start.contiguous(),
                    fwd_end=f_end, fwd_clean_lo=torch.where(q_clean, fc_lo, f_end),
                    fwd_clean_hi=torch.where(q_clean, fc_hi, f_end), fwd_blocks=none, fwd_full=none,
                    bwd_blocks=none, bwd_full=none, qmax=qmax, kmin=kmin,
                    q_mixed=torch.zeros(BH, NQ, dtype=torch.int32, device=device), prims=none, perm_q=perm,
                    perm_k=perm, has_backward=bool(backward), slot_q=_inverse(perm), **bwd)


def _composite_schedule(BH, T, *, keep=None, buckets=None, is_causal=True, block_q=64, block_k=64, warps=4,
                        clean=True, device=None):
    """Range mode by composites (any keep and buckets): sort, block statistics, two searches per run."""
    return _composite_blocks(_composite_order(BH, T, keep, buckets, device), T, is_causal, block_q, block_k, warps,
                             clean)


def _composite_order(BH, T, keep, buckets, device):
    """(perm_q, perm_k, their int32 copies, sorted query composites, sorted key composites, count, query ids, key
    ids) of the slots: tokens in increasing composite id * T + position (a dropped token BIG + position)."""
    pos = torch.arange(T, device=device, dtype=torch.int64).expand(BH, T)
    if buckets is not None:
        buckets = _dense_ids(*buckets)
        cq = buckets[0].long() * T + pos
        ck = buckets[1].long() * T + pos
    else:
        cq = ck = pos
    if keep is not None:
        cq = torch.where(keep, cq, BIG + pos)
        ck = torch.where(keep, ck, BIG + pos)
    sort = buckets is not None
    if keep is None and not sort:
        perm_q, cq_s = pos, cq
    else:
        perm_q, cq_s = _order(cq, keep, sort)
    perm_k, ck_s = (perm_q, cq_s) if ck is cq else _order(ck, keep, sort)
    count = (keep.sum(-1) if keep is not None else torch.full((BH,), T, device=device)).int()
    bkt_q = buckets[0].gather(-1, perm_q).int().contiguous() if buckets is not None else None
    bkt_k = buckets[1].gather(-1, perm_k).int().contiguous() if buckets is not None else None
    pos_q = perm_q.int().contiguous()
    pos_k = pos_q if perm_k is perm_q else perm_k.int().contiguous()
    return perm_q, perm_k, pos_q, pos_k, cq_s, ck_s, count, bkt_q, bkt_k


def _composite_blocks(order, T, is_causal, block_q, block_k, warps, clean, stats=None, backward=True):
    """The block statistics and runs of one tile over a :func:`_composite_order` (see the module docstring);
    ``stats`` (a dict) keeps each side's block statistics for the next tiling; ``backward=False`` leaves out
    the transposed runs."""
    perm_q, perm_k, pos_q, pos_k, cq_s, ck_s, count, bkt_q, bkt_k = order
    device = perm_q.device
    NQ, NK = -(-T // block_q), -(-T // block_k)
    stats = {} if stats is None else stats
    if ("q", block_q) not in stats:
        stats["q", block_q] = _block_stats(cq_s, perm_q, block_q, NQ, T)
    if ("k", block_k) not in stats:
        stats["k", block_k] = _block_stats(ck_s, perm_k, block_k, NK, T)
    qc_min, qc_max, q_pos_max, _ = stats["q", block_q]
    kc_min, kc_max, _, k_pos_min = stats["k", block_k]
    q_empty, k_empty = qc_min >= BIG, kc_min >= BIG
    qb_lo = torch.where(q_empty, 0, qc_min // T * T)
    fwd = _runs(qb_lo, torch.where(q_empty, 0, qc_max if is_causal else qc_max // T * T + T - 1), kc_max, kc_min,
                q_empty)
    # tiles needing no mask: a one-bucket, wholly valid query block of bucket b meets every key with
    # b T <= c_k <= cq_min (causal; <= b T + T - 1 without) in full, and a key block every query with
    # ck_max <= c_q <= b T + T - 1 (without causality from b T)
    q_mixed = (qc_min // T != qc_max // T) & ~q_empty
    q_whole = (torch.arange(1, NQ + 1, device=device) * block_q)[None] <= count[:, None]
    q_clean = q_whole & ~q_mixed & ~q_empty & clean
    fwd_clean = _clean(qb_lo, qc_min if is_causal else qb_lo + T - 1, kc_min, kc_max, count // block_k, q_clean,
                       *fwd)
    none = torch.zeros(1, dtype=torch.int32, device=device)
    bwd = dict(bwd_start=none, bwd_end=none, bwd_clean_lo=none, bwd_clean_hi=none, k_mixed=none)
    if backward:
        k_bucket = kc_min // T * T
        kb_hi = torch.where(k_empty, 0, kc_max // T * T + T - 1)
        runs = _runs(torch.where(k_empty, 0, kc_min if is_causal else k_bucket), kb_hi, qc_max, qc_min, k_empty)
        k_mixed = (k_bucket != kc_max // T * T) & ~k_empty
        k_whole = (torch.arange(1, NK + 1, device=device) * block_k)[None] <= count[:, None]
        k_clean = k_whole & ~k_mixed & ~k_empty & clean
        lo, hi = _clean(kc_max if is_causal else k_bucket, kb_hi, qc_min, qc_max, count // block_q, k_clean, *runs)
        bwd = dict(bwd_start=runs[0], bwd_end=runs[1], bwd_clean_lo=lo, bwd_clean_hi=hi,
                   k_mixed=k_mixed.int().contiguous())
    return Schedule(block_q=block_q, block_k=block_k, n_q=NQ, n_k=NK, warps=warps, use_list=False, pos_q=pos_q,
                    pos_k=pos_k, bkt_q=bkt_q, bkt_k=bkt_k, count=count.contiguous(), fwd_start=fwd[0],
                    fwd_end=fwd[1], fwd_clean_lo=fwd_clean[0], fwd_clean_hi=fwd_clean[1], fwd_blocks=none,
                    fwd_full=none, bwd_blocks=none, bwd_full=none, qmax=q_pos_max.int().contiguous(),
                    kmin=k_pos_min.int().contiguous(), q_mixed=q_mixed.int().contiguous(), prims=none,
                    perm_q=perm_q, perm_k=perm_k, has_backward=bool(backward), slot_q=_inverse(perm_q), **bwd)


def _padded_lists(state):
    """(start [1, R], end [1, R], blocks [R * C], full [R * C]) int32 of a state [R, C]: row r's visited columns
    (state > 0) in increasing order at blocks[r * C : r * C + count_r], the rest of its C slots padding. A
    fixed-width layout: its size comes from the shape, so building it reads nothing back to the host (a compact
    list would need the number of visited pairs there first)."""
    R, C = state.shape
    visit = state > 0
    count = visit.sum(1)
    seen = visit.long().cumsum(1)
    cols = torch.arange(C, device=state.device)
    dest = torch.where(visit, seen - 1, count[:, None] + cols - seen)
    blocks = torch.empty_like(seen).scatter_(1, dest, cols.expand(R, C))
    full = (state.gather(1, blocks) == 2) & (cols < count[:, None])
    start = torch.arange(R, device=state.device) * C
    return (start.int()[None].contiguous(), (start + count).int()[None].contiguous(), blocks.int().flatten(),
            full.int().flatten())


def list_schedule(T, block, state, prims, warps=4, device=None, block_k=None):
    """The list-mode :class:`Schedule` of a block-state matrix ``state`` [NQ, NK] (0 skip, 1 needs the element
    mask, 2 every pair allowed) over query blocks of ``block`` and key blocks of ``block_k`` (default ``block``)
    tokens, and the pattern's primitive table ``prims`` [N, 3]: each query block walks its visited key blocks,
    each key block (for dk, dv) the query blocks that visit it, in fixed-width lists built on ``device``
    without a host sync."""
    NQ, NK = state.shape
    state = state.to(device)
    f_start, f_end, f_blocks, f_full = _padded_lists(state)
    b_start, b_end, b_blocks, b_full = _padded_lists(state.t().contiguous())
    pos = torch.arange(T, dtype=torch.int32, device=device)[None]
    none = torch.zeros(1, dtype=torch.int32, device=device)
    return Schedule(block_q=block, block_k=block_k or block, n_q=NQ, n_k=NK, warps=warps, use_list=True, pos_q=pos,
                    pos_k=pos, bkt_q=None, bkt_k=None, count=torch.full((1,), T, dtype=torch.int32, device=device),
                    fwd_start=f_start, fwd_end=f_end, bwd_start=b_start, bwd_end=b_end, fwd_clean_lo=none,
                    fwd_clean_hi=none, bwd_clean_lo=none, bwd_clean_hi=none, fwd_blocks=f_blocks, fwd_full=f_full,
                    bwd_blocks=b_blocks, bwd_full=b_full, qmax=none, kmin=none, q_mixed=none, k_mixed=none,
                    prims=prims.to(device=device, dtype=torch.int32), perm_q=None, perm_k=None)
