"""Range-mode schedules built by a few Triton launches: the same :class:`~.schedule.Schedule` as the torch builders.

The torch builders of :mod:`.schedule` (``_compact_schedule``, ``_composite_schedule``) stay the reference; the
tests compare every field with them exactly. Here each phase is one launch over the (batch * head) rows, so a call
queues a handful of kernels instead of ~120 small torch ops, and still reads nothing back to the host:

* keep alone: :func:`keep_order_kernel` (one program per row: the kept count, then a running cumsum that gives
  each token its slot) and per tiling :func:`keep_blocks_kernel` (the closed forms of ``_compact_blocks``).
  2 launches, 3 with a second tiling.
* buckets (and keep): :func:`bucket_ids_kernel` (per row the smallest id; ids become offsets in [0, 2T)),
  :func:`wide_first_kernel` and :func:`wide_rank_kernel` (only rows whose ids span 2T or more: their dense
  ranks by O(T^2) comparisons; every other row's programs return at once), :func:`bucket_hist_kernel` (id
  presence and kept counts per id, atomics), :func:`bucket_place_kernel` (one program per row: the scans that
  give the dense ranks and each id's first slot, then a stable counting sort in position order) and per tiling
  :func:`bucket_blocks_kernel` (block statistics, then the runs as counts over the sorted block extremes, which
  is what ``searchsorted`` returns on a sorted sequence). 6 launches, 7 with a second tiling.

Programs that own a whole row order their own global writes and reads with ``tl.debug_barrier`` (a CTA-wide
barrier orders global memory within the block); across rows nothing is shared.
"""

from __future__ import annotations

import triton
import triton.language as tl
import torch

__all__ = ["keep_schedules", "bucket_schedules"]

# as in schedule.BIG: above every composite id * T + position of a kept token
BIG: tl.constexpr = tl.constexpr(1 << 62)


# -- keep alone ---------------------------------------------------------------------------------------------------
@triton.jit
def keep_order_kernel(keep_ptr, perm_ptr, pos_ptr, slot_ptr, count_ptr, T, BLOCK: tl.constexpr):
    """One row: kept tokens take slots 0 .. n - 1 in order, dropped ones n .. T - 1 in order.

    keep_ptr uint8 [BH, T]; perm_ptr int64 [BH, T] and pos_ptr int32 [BH, T] the position in each slot;
    slot_ptr int64 [BH, T] the slot of each token; count_ptr int32 [BH] n.
    """
    row = tl.program_id(0).to(tl.int64)
    n = 0
    for t0 in range(0, T, BLOCK):
        o_t = t0 + tl.arange(0, BLOCK)
        n += tl.sum(tl.load(keep_ptr + row * T + o_t, mask=o_t < T, other=0).to(tl.int32), 0)
    seen = 0
    for t0 in range(0, T, BLOCK):
        o_t = t0 + tl.arange(0, BLOCK)
        m_t = o_t < T
        b_keep = tl.load(keep_ptr + row * T + o_t, mask=m_t, other=0).to(tl.int32)  # [BLOCK]
        b_seen = tl.cumsum(b_keep, 0) + seen  # kept tokens up to and including t
        dest = tl.where(b_keep != 0, b_seen - 1, n + o_t - b_seen)
        tl.store(perm_ptr + row * T + dest, o_t.to(tl.int64), mask=m_t)
        tl.store(pos_ptr + row * T + dest, o_t, mask=m_t)
        tl.store(slot_ptr + row * T + o_t, dest.to(tl.int64), mask=m_t)
        seen += tl.sum(b_keep, 0)
    tl.store(count_ptr + row, n)


@triton.jit
def keep_blocks_kernel(count_ptr, pos_ptr, f_start_ptr, f_end_ptr, f_lo_ptr, f_hi_ptr, q_mixed_ptr, qmax_ptr,
                       b_start_ptr, b_end_ptr, b_lo_ptr, b_hi_ptr, k_mixed_ptr, kmin_ptr, none_ptr, T, NQ, NK,
                       BQ: tl.constexpr, BK: tl.constexpr, IS_CAUSAL: tl.constexpr, CLEAN: tl.constexpr,
                       BACKWARD: tl.constexpr, BLOCK: tl.constexpr):
    """One row of ``_compact_blocks``: every field a closed form of the kept count n (see its docstring).

    count_ptr int32 [BH]; pos_ptr int32 [BH, T] (slot -> position); f_* / q_mixed / qmax int32 [BH, NQ];
    b_* / k_mixed / kmin int32 [BH, NK] (b_* and k_mixed written with BACKWARD only); none_ptr int32 [1] = 0.
    """
    row = tl.program_id(0).to(tl.int64)
    n = tl.load(count_ptr + row)
    tl.store(none_ptr, 0)
    for b0 in range(0, NQ, BLOCK):
        qb = b0 + tl.arange(0, BLOCK)
        m_b = qb < NQ
        q0 = qb * BQ
        q_some = q0 < n
        q_last = tl.minimum(q0 + BQ, n) - 1  # last valid slot (below q0 when empty)
        if IS_CAUSAL:
            end = tl.where(q_some, q_last // BK + 1, 0)
            hi = tl.minimum((q0 + 1) // BK, n // BK)
        else:
            end = tl.where(q_some, (n + BK - 1) // BK, 0)
            hi = tl.zeros_like(qb) + n // BK
        hi = tl.maximum(tl.minimum(hi, end), 0)
        clean = (q0 + BQ <= n) & CLEAN
        pos = tl.load(pos_ptr + row * T + tl.minimum(tl.maximum(q_last, 0), T - 1), mask=m_b, other=0)
        o_b = row * NQ + qb
        tl.store(f_start_ptr + o_b, tl.zeros_like(qb), mask=m_b)
        tl.store(f_end_ptr + o_b, end, mask=m_b)
        tl.store(f_lo_ptr + o_b, tl.where(clean, 0, end), mask=m_b)
        tl.store(f_hi_ptr + o_b, tl.where(clean, hi, end), mask=m_b)
        tl.store(q_mixed_ptr + o_b, tl.zeros_like(qb), mask=m_b)
        tl.store(qmax_ptr + o_b, tl.where(q_some, pos, -1), mask=m_b)
    for b0 in range(0, NK, BLOCK):
        kb = b0 + tl.arange(0, BLOCK)
        m_b = kb < NK
        k0 = kb * BK
        k_some = k0 < n
        o_b = row * NK + kb
        pos = tl.load(pos_ptr + row * T + tl.minimum(k0, T - 1), mask=m_b, other=0)
        tl.store(kmin_ptr + o_b, tl.where(k_some, pos, T), mask=m_b)
        if BACKWARD:
            end = tl.where(k_some, (n + BQ - 1) // BQ, 0)
            if IS_CAUSAL:
                start = tl.where(k_some, k0 // BQ, 0)
                lo = (k0 + BK + BQ - 2) // BQ
            else:
                start = tl.zeros_like(kb)
                lo = tl.zeros_like(kb)
            lo = tl.maximum(tl.minimum(lo, end), start)
            hi = tl.maximum(tl.minimum(n // BQ, end), lo)
            clean = (k0 + BK <= n) & CLEAN
            tl.store(b_start_ptr + o_b, start, mask=m_b)
            tl.store(b_end_ptr + o_b, end, mask=m_b)
            tl.store(b_lo_ptr + o_b, tl.where(clean, lo, end), mask=m_b)
            tl.store(b_hi_ptr + o_b, tl.where(clean, hi, end), mask=m_b)
            tl.store(k_mixed_ptr + o_b, tl.zeros_like(kb), mask=m_b)


# -- buckets ------------------------------------------------------------------------------------------------------
@triton.jit
def _id_at(qid_ptr, kid_ptr, row, o_i, T, m_i):
    """int64 id of entry o_i of a row's 2T ids (queries' then keys')."""
    a = tl.load(qid_ptr + row * T + o_i, mask=m_i & (o_i < T), other=0).to(tl.int64)
    b = tl.load(kid_ptr + row * T + (o_i - T), mask=m_i & (o_i >= T), other=0).to(tl.int64)
    return tl.where(o_i < T, a, b)


@triton.jit
def bucket_ids_kernel(qid_ptr, kid_ptr, ids_ptr, wide_ptr, hist_ptr, T, BLOCK: tl.constexpr):
    """One row: ids_ptr int32 [BH, 2T] = id - (the row's smallest id) when the row's ids span fewer than 2T
    values, wide_ptr int32 [BH] = 1 otherwise (those rows are ranked by the wide kernels); zeroes the row's
    hist_ptr int32 [BH, 3, 2T]."""
    row = tl.program_id(0).to(tl.int64)
    R = 2 * T
    lo = tl.full([BLOCK], 0x7FFFFFFFFFFFFFFF, tl.int64)
    hi = tl.full([BLOCK], -0x7FFFFFFFFFFFFFFF - 1, tl.int64)
    for i0 in range(0, R, BLOCK):
        o_i = i0 + tl.arange(0, BLOCK)
        m_i = o_i < R
        v = _id_at(qid_ptr, kid_ptr, row, o_i, T, m_i)
        lo = tl.minimum(lo, tl.where(m_i, v, 0x7FFFFFFFFFFFFFFF))
        hi = tl.maximum(hi, tl.where(m_i, v, -0x7FFFFFFFFFFFFFFF - 1))
    v_lo = tl.min(lo, 0)
    span = tl.max(hi, 0) - v_lo  # wraps below 0 when the ids span more than int64 holds
    wide = (span >= R) | (span < 0)
    tl.store(wide_ptr + row, wide.to(tl.int32))
    for i0 in range(0, R, BLOCK):
        o_i = i0 + tl.arange(0, BLOCK)
        m_i = o_i < R
        v = _id_at(qid_ptr, kid_ptr, row, o_i, T, m_i)
        tl.store(ids_ptr + row * R + o_i, (v - v_lo).to(tl.int32), mask=m_i)
    for i0 in range(0, 3 * R, BLOCK):
        o_i = i0 + tl.arange(0, BLOCK)
        tl.store(hist_ptr + row * 3 * R + o_i, tl.zeros_like(o_i), mask=o_i < 3 * R)


@triton.jit
def wide_first_kernel(qid_ptr, kid_ptr, wide_ptr, first_ptr, T, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """Wide rows only: first_ptr int32 [BH, 2T] = 1 where no earlier entry of the row's 2T ids is equal."""
    row = tl.program_id(1).to(tl.int64)
    if tl.load(wide_ptr + row) != 0:
        R = 2 * T
        o_i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
        m_i = o_i < R
        v_i = _id_at(qid_ptr, kid_ptr, row, o_i, T, m_i)
        dup = tl.zeros([BLOCK_I], tl.int32)
        for j0 in range(0, (tl.program_id(0) + 1) * BLOCK_I, BLOCK_J):
            o_j = j0 + tl.arange(0, BLOCK_J)
            v_j = _id_at(qid_ptr, kid_ptr, row, o_j, T, o_j < R)
            hit = (v_j[None, :] == v_i[:, None]) & (o_j[None, :] < o_i[:, None])  # [BI, BJ]
            dup += tl.sum(hit.to(tl.int32), 1)
        tl.store(first_ptr + row * R + o_i, (dup == 0).to(tl.int32), mask=m_i)


@triton.jit
def wide_rank_kernel(qid_ptr, kid_ptr, wide_ptr, first_ptr, ids_ptr, T, BLOCK_I: tl.constexpr,
                     BLOCK_J: tl.constexpr):
    """Wide rows only: ids_ptr int32 [BH, 2T] = the number of distinct ids below each (its dense rank)."""
    row = tl.program_id(1).to(tl.int64)
    if tl.load(wide_ptr + row) != 0:
        R = 2 * T
        o_i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
        m_i = o_i < R
        v_i = _id_at(qid_ptr, kid_ptr, row, o_i, T, m_i)
        rank = tl.zeros([BLOCK_I], tl.int32)
        for j0 in range(0, R, BLOCK_J):
            o_j = j0 + tl.arange(0, BLOCK_J)
            m_j = o_j < R
            v_j = _id_at(qid_ptr, kid_ptr, row, o_j, T, m_j)
            first = tl.load(first_ptr + row * R + o_j, mask=m_j, other=0)
            hit = (v_j[None, :] < v_i[:, None]) & (first != 0)[None, :]  # [BI, BJ]
            rank += tl.sum(hit.to(tl.int32), 1)
        tl.store(ids_ptr + row * R + o_i, rank, mask=m_i)


@triton.jit
def bucket_hist_kernel(ids_ptr, keep_ptr, hist_ptr, T, HAS_KEEP: tl.constexpr, BLOCK: tl.constexpr):
    """hist_ptr int32 [BH, 3, 2T]: [0] 1 where some query or key has the id, [1] kept queries per id, [2] kept
    keys per id (ids_ptr int32 [BH, 2T] in [0, 2T)). Counts by atomics: their order does not matter."""
    row = tl.program_id(1).to(tl.int64)
    R = 2 * T
    o_t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_t = o_t < T
    kept = m_t
    if HAS_KEEP:
        kept = m_t & (tl.load(keep_ptr + row * T + o_t, mask=m_t, other=0) != 0)
    d_q = tl.load(ids_ptr + row * R + o_t, mask=m_t, other=0)
    d_k = tl.load(ids_ptr + row * R + T + o_t, mask=m_t, other=0)
    p_hist = hist_ptr + row * 3 * R
    # equal values from many programs: a benign race
    tl.store(p_hist + d_q, tl.full([BLOCK], 1, tl.int32), mask=m_t)
    tl.store(p_hist + d_k, tl.full([BLOCK], 1, tl.int32), mask=m_t)
    tl.atomic_add(p_hist + R + d_q, tl.full([BLOCK], 1, tl.int32), mask=kept)
    tl.atomic_add(p_hist + 2 * R + d_k, tl.full([BLOCK], 1, tl.int32), mask=kept)


@triton.jit
def _scan_exclusive(p_ptr, R, BLOCK: tl.constexpr):
    """In place: p[b] = sum of p[:b] over R entries; returns the total."""
    carry = 0
    for b0 in range(0, R, BLOCK):
        o_b = b0 + tl.arange(0, BLOCK)
        m_b = o_b < R
        x = tl.load(p_ptr + o_b, mask=m_b, other=0)
        tl.store(p_ptr + o_b, tl.cumsum(x, 0) - x + carry, mask=m_b)
        carry += tl.sum(x, 0)
    return carry


@triton.jit
def _place(ids_ptr, hist_ptr, perm_ptr, pos_ptr, bkt_ptr, slot_ptr, row, o_t, m_t, kept, n, seen, side, T, R,
           CHUNK: tl.constexpr, WRITE_SLOT: tl.constexpr):
    """Slots of one chunk of one side's tokens (stable in position within an id; dropped ones after n) and the
    next-slot counters' update; the counters hold each id's next free slot."""
    d = tl.load(ids_ptr + row * R + side * T + o_t, mask=m_t, other=0)  # [C]
    o_c = tl.arange(0, CHUNK)
    same = (d[:, None] == d[None, :]) & kept[:, None] & kept[None, :]  # [C, C]
    rank = tl.sum((same & (o_c[None, :] < o_c[:, None])).to(tl.int32), 1)
    later = tl.sum((same & (o_c[None, :] > o_c[:, None])).to(tl.int32), 1)
    p_next = hist_ptr + row * 3 * R + (1 + side) * R + d
    nxt = tl.load(p_next, mask=kept, other=0)
    dense = tl.load(hist_ptr + row * 3 * R + d, mask=m_t, other=0)
    b_seen = tl.cumsum(kept.to(tl.int32), 0) + seen
    slot = tl.where(kept, nxt + rank, n + o_t - b_seen)
    tl.store(perm_ptr + row * T + slot, o_t.to(tl.int64), mask=m_t)
    tl.store(pos_ptr + row * T + slot, o_t, mask=m_t)
    tl.store(bkt_ptr + row * T + slot, dense, mask=m_t)
    if WRITE_SLOT:
        tl.store(slot_ptr + row * T + o_t, slot.to(tl.int64), mask=m_t)
    return p_next, nxt + rank + 1, kept & (later == 0)


@triton.jit
def bucket_place_kernel(ids_ptr, keep_ptr, hist_ptr, perm_q_ptr, perm_k_ptr, pos_q_ptr, pos_k_ptr, bkt_q_ptr,
                        bkt_k_ptr, slot_ptr, count_ptr, T, HAS_KEEP: tl.constexpr, SCAN: tl.constexpr,
                        CHUNK: tl.constexpr):
    """One row: the tokens of each side sorted by (dense id, position), dropped ones after the kept in position
    order. hist_ptr [BH, 3, 2T] from :func:`bucket_hist_kernel` becomes (dense rank of each id, first slot of each
    id's kept queries, of its kept keys); perm_*_ptr int64 [BH, T], pos_*_ptr int32 [BH, T] position per slot,
    bkt_*_ptr int32 [BH, T] dense id per slot, slot_ptr int64 [BH, T] each query token's slot, count_ptr int32
    [BH] kept tokens."""
    row = tl.program_id(0).to(tl.int64)
    R = 2 * T
    p_hist = hist_ptr + row * 3 * R
    _scan_exclusive(p_hist, R, SCAN)
    n = _scan_exclusive(p_hist + R, R, SCAN)
    _scan_exclusive(p_hist + 2 * R, R, SCAN)
    tl.store(count_ptr + row, n)
    tl.debug_barrier()  # the scans' stores before any thread reads them
    seen = 0
    for t0 in range(0, T, CHUNK):
        o_t = t0 + tl.arange(0, CHUNK)
        m_t = o_t < T
        kept = m_t
        if HAS_KEEP:
            kept = m_t & (tl.load(keep_ptr + row * T + o_t, mask=m_t, other=0) != 0)
        p_q, next_q, last_q = _place(ids_ptr, hist_ptr, perm_q_ptr, pos_q_ptr, bkt_q_ptr, slot_ptr, row, o_t, m_t,
                                     kept, n, seen, 0, T, R, CHUNK, True)
        p_k, next_k, last_k = _place(ids_ptr, hist_ptr, perm_k_ptr, pos_k_ptr, bkt_k_ptr, slot_ptr, row, o_t, m_t,
                                     kept, n, seen, 1, T, R, CHUNK, False)
        tl.debug_barrier()  # every thread has read the counters before one per id moves them
        tl.store(p_q, next_q, mask=last_q)
        tl.store(p_k, next_k, mask=last_k)
        tl.debug_barrier()  # the moved counters before the next chunk reads them
        seen += tl.sum(kept.to(tl.int32), 0)


@triton.jit
def _block_extremes(pos_ptr, bkt_ptr, cmin_ptr, cmax_ptr, ext_ptr, mixed_ptr, row, n, T, NB,
                    B: tl.constexpr, NEAR_MAX: tl.constexpr, CH: tl.constexpr):
    """Per block of B slots: smallest and largest composite bkt * T + pos of its kept slots (BIG when none) into
    cmin_ptr / cmax_ptr int64 [BH, NB]; ext_ptr int32 [BH, NB] the largest position (NEAR_MAX, -1 when none) or
    the smallest (T when none); mixed_ptr int32 [BH, NB] 1 where the block holds several ids."""
    for b0 in range(0, NB, CH):
        o_b = b0 + tl.arange(0, CH)
        m_b = o_b < NB
        o_s = o_b[:, None] * B + tl.arange(0, B)[None, :]  # [CH, B] slots
        valid = (o_s < n) & m_b[:, None]
        pos = tl.load(pos_ptr + row * T + o_s, mask=valid, other=0)
        c = tl.load(bkt_ptr + row * T + o_s, mask=valid, other=0).to(tl.int64) * T + pos
        some = o_b * B < n
        c_min = tl.where(some, tl.min(tl.where(valid, c, BIG), 1), BIG)
        c_max = tl.where(some, tl.max(tl.where(valid, c, -1), 1), BIG)
        if NEAR_MAX:
            ext = tl.max(tl.where(valid, pos, -1), 1)
        else:
            ext = tl.min(tl.where(valid, pos, T), 1)
        mixed = some & (c_min // T != c_max // T)
        tl.store(cmin_ptr + row * NB + o_b, c_min, mask=m_b)
        tl.store(cmax_ptr + row * NB + o_b, c_max, mask=m_b)
        tl.store(ext_ptr + row * NB + o_b, ext, mask=m_b)
        tl.store(mixed_ptr + row * NB + o_b, mixed.to(tl.int32), mask=m_b)


@triton.jit
def _runs(cmin_ptr, cmax_ptr, mixed_ptr, o_cmin_ptr, o_cmax_ptr, start_ptr, end_ptr, lo_ptr, hi_ptr, row, n, T,
          NB, NO, B: tl.constexpr, BO: tl.constexpr, FORWARD: tl.constexpr, IS_CAUSAL: tl.constexpr,
          CLEAN: tl.constexpr, CH: tl.constexpr, CHO: tl.constexpr):
    """Each block's run over the other side's blocks and its unmasked sub-run (``_runs`` and ``_clean`` of the
    torch builder): a ``searchsorted`` on a sorted sequence is the count of entries below (left) or not above
    (right) the value. NB blocks of B slots walk NO blocks of BO slots; FORWARD: query blocks walk key blocks."""
    for b0 in range(0, NB, CH):
        o_b = b0 + tl.arange(0, CH)
        m_b = o_b < NB
        c_min = tl.load(cmin_ptr + row * NB + o_b, mask=m_b, other=BIG)
        c_max = tl.load(cmax_ptr + row * NB + o_b, mask=m_b, other=BIG)
        empty = c_min >= BIG
        bucket = c_min // T * T
        top = c_max // T * T + T - 1
        if FORWARD:
            lo = tl.where(empty, 0, bucket)
            clean_lo = lo
            if IS_CAUSAL:
                hi = tl.where(empty, 0, c_max)
                clean_hi = c_min
            else:
                hi = tl.where(empty, 0, top)
                clean_hi = lo + T - 1
        else:
            hi = tl.where(empty, 0, top)
            clean_hi = hi
            if IS_CAUSAL:
                lo = tl.where(empty, 0, c_min)
                clean_lo = c_max
            else:
                lo = tl.where(empty, 0, bucket)
                clean_lo = bucket
        start = tl.zeros([CH], tl.int32)
        end = tl.zeros([CH], tl.int32)
        a = tl.zeros([CH], tl.int32)
        b = tl.zeros([CH], tl.int32)
        for j0 in range(0, NO, CHO):
            o_j = j0 + tl.arange(0, CHO)
            m_j = (o_j < NO)[None, :]
            o_min = tl.load(o_cmin_ptr + row * NO + o_j, mask=o_j < NO, other=BIG)[None, :]
            o_max = tl.load(o_cmax_ptr + row * NO + o_j, mask=o_j < NO, other=BIG)[None, :]
            start += tl.sum((m_j & (o_max < lo[:, None])).to(tl.int32), 1)
            end += tl.sum((m_j & (o_min <= hi[:, None])).to(tl.int32), 1)
            a += tl.sum((m_j & (o_min < clean_lo[:, None])).to(tl.int32), 1)
            b += tl.sum((m_j & (o_max <= clean_hi[:, None])).to(tl.int32), 1)
        end = tl.maximum(end, start)
        start = tl.where(empty, 0, start)
        end = tl.where(empty, 0, end)
        a = tl.maximum(tl.minimum(a, end), start)
        b = tl.maximum(tl.minimum(tl.minimum(b, n // BO), end), a)
        mixed = tl.load(mixed_ptr + row * NB + o_b, mask=m_b, other=0)
        clean = ((o_b + 1) * B <= n) & (mixed == 0) & ~empty & CLEAN
        tl.store(start_ptr + row * NB + o_b, start, mask=m_b)
        tl.store(end_ptr + row * NB + o_b, end, mask=m_b)
        tl.store(lo_ptr + row * NB + o_b, tl.where(clean, a, end), mask=m_b)
        tl.store(hi_ptr + row * NB + o_b, tl.where(clean, b, end), mask=m_b)


@triton.jit
def bucket_blocks_kernel(pos_q_ptr, pos_k_ptr, bkt_q_ptr, bkt_k_ptr, count_ptr, qc_min_ptr, qc_max_ptr,
                         kc_min_ptr, kc_max_ptr, f_start_ptr, f_end_ptr, f_lo_ptr, f_hi_ptr, q_mixed_ptr, qmax_ptr,
                         b_start_ptr, b_end_ptr, b_lo_ptr, b_hi_ptr, k_mixed_ptr, kmin_ptr, none_ptr, T, NQ, NK,
                         BQ: tl.constexpr, BK: tl.constexpr, IS_CAUSAL: tl.constexpr, CLEAN: tl.constexpr,
                         BACKWARD: tl.constexpr, CHQ: tl.constexpr, CHK: tl.constexpr, CH: tl.constexpr):
    """One row of ``_composite_blocks`` over the sorted slots of :func:`bucket_place_kernel`: block extremes into
    the int64 scratch qc_*/kc_* [BH, NQ] / [BH, NK], then the runs. Output fields as in
    :func:`keep_blocks_kernel`; k_mixed_ptr is scratch [BH, NK] when not BACKWARD."""
    row = tl.program_id(0).to(tl.int64)
    n = tl.load(count_ptr + row)
    tl.store(none_ptr, 0)
    _block_extremes(pos_q_ptr, bkt_q_ptr, qc_min_ptr, qc_max_ptr, qmax_ptr, q_mixed_ptr, row, n, T, NQ, BQ, True,
                    CHQ)
    _block_extremes(pos_k_ptr, bkt_k_ptr, kc_min_ptr, kc_max_ptr, kmin_ptr, k_mixed_ptr, row, n, T, NK, BK, False,
                    CHK)
    tl.debug_barrier()  # every block's extremes before the runs read them
    _runs(qc_min_ptr, qc_max_ptr, q_mixed_ptr, kc_min_ptr, kc_max_ptr, f_start_ptr, f_end_ptr, f_lo_ptr, f_hi_ptr,
          row, n, T, NQ, NK, BQ, BK, True, IS_CAUSAL, CLEAN, CH, CH)
    if BACKWARD:
        _runs(kc_min_ptr, kc_max_ptr, k_mixed_ptr, qc_min_ptr, qc_max_ptr, b_start_ptr, b_end_ptr, b_lo_ptr,
              b_hi_ptr, row, n, T, NK, NQ, BK, BQ, False, IS_CAUSAL, CLEAN, CH, CH)


# -- host side ----------------------------------------------------------------------------------------------------
def _launch(kernel, grid, **kw):
    # one place that starts every kernel: fastattn.kernels.sparse.aot records the launches here to compile them
    kernel[grid](**kw)


def _fields(BH, NQ, NK, backward, device):
    """The int32 output fields of one tiling as views of one buffer (one allocation, no fill launch)."""
    names_q = ("fwd_start", "fwd_end", "fwd_clean_lo", "fwd_clean_hi", "q_mixed", "qmax")
    names_k = ("bwd_start", "bwd_end", "bwd_clean_lo", "bwd_clean_hi", "k_mixed", "kmin")
    buf = torch.empty(1 + BH * (6 * NQ + 6 * NK), dtype=torch.int32, device=device)
    out = {"none": buf[:1]}
    at = 1
    for name in names_q:
        out[name], at = buf[at:at + BH * NQ].view(BH, NQ), at + BH * NQ
    for name in names_k:
        out[name], at = buf[at:at + BH * NK].view(BH, NK), at + BH * NK
    return out


def _schedule(f, bq, bk, w, NQ, NK, backward, **order):
    from fastattn.kernels.sparse.schedule import Schedule  # schedule.py imports this module

    none = f["none"]
    bwd = {k: (f[k] if backward else none) for k in ("bwd_start", "bwd_end", "bwd_clean_lo", "bwd_clean_hi",
                                                     "k_mixed")}
    return Schedule(block_q=bq, block_k=bk, n_q=NQ, n_k=NK, warps=w, use_list=False, fwd_start=f["fwd_start"],
                    fwd_end=f["fwd_end"], fwd_clean_lo=f["fwd_clean_lo"], fwd_clean_hi=f["fwd_clean_hi"],
                    fwd_blocks=none, fwd_full=none, bwd_blocks=none, bwd_full=none, qmax=f["qmax"], kmin=f["kmin"],
                    q_mixed=f["q_mixed"], prims=none, has_backward=bool(backward), **bwd, **order)


def keep_schedules(BH, T, tiles, keep, *, is_causal=True, clean=True, backward=None):
    """Range-mode schedules of keep ([BH, T] bool) alone, one per (block_q, block_k, warps) in ``tiles``: equal
    field by field to ``schedule._compact_blocks``, in 1 + len(tiles) launches (CUDA tensors, or CPU ones under
    TRITON_INTERPRET=1).

    >>> s, = keep_schedules(2, 40, ((16, 16, 4),), torch.rand(2, 40) < 0.5)
    >>> s.pos_q.shape, s.fwd_end.shape
    (torch.Size([2, 40]), torch.Size([2, 3]))
    """
    backward = (True,) * len(tiles) if backward is None else tuple(backward)
    device = keep.device
    keep = keep.contiguous().view(torch.uint8)
    perm, slot = (torch.empty(BH, T, dtype=torch.int64, device=device) for _ in range(2))
    pos = torch.empty(BH, T, dtype=torch.int32, device=device)
    count = torch.empty(BH, dtype=torch.int32, device=device)
    _launch(keep_order_kernel, (BH,), keep_ptr=keep, perm_ptr=perm, pos_ptr=pos, slot_ptr=slot, count_ptr=count,
            T=T, BLOCK=1024, num_warps=4)
    out = []
    for (bq, bk, w), bwd in zip(tiles, backward):
        NQ, NK = -(-T // bq), -(-T // bk)
        f = _fields(BH, NQ, NK, bwd, device)
        _launch(keep_blocks_kernel, (BH,), count_ptr=count, pos_ptr=pos, f_start_ptr=f["fwd_start"],
                f_end_ptr=f["fwd_end"], f_lo_ptr=f["fwd_clean_lo"], f_hi_ptr=f["fwd_clean_hi"],
                q_mixed_ptr=f["q_mixed"], qmax_ptr=f["qmax"], b_start_ptr=f["bwd_start"], b_end_ptr=f["bwd_end"],
                b_lo_ptr=f["bwd_clean_lo"], b_hi_ptr=f["bwd_clean_hi"], k_mixed_ptr=f["k_mixed"], kmin_ptr=f["kmin"],
                none_ptr=f["none"], T=T, NQ=NQ, NK=NK, BQ=bq, BK=bk, IS_CAUSAL=bool(is_causal), CLEAN=bool(clean),
                BACKWARD=bool(bwd), BLOCK=256, num_warps=4)
        out.append(_schedule(f, bq, bk, w, NQ, NK, bwd, pos_q=pos, pos_k=pos, bkt_q=None, bkt_k=None, count=count,
                             perm_q=perm, perm_k=perm, slot_q=slot))
    return tuple(out)


def bucket_schedules(BH, T, tiles, buckets, keep=None, *, is_causal=True, clean=True, backward=None):
    """Range-mode schedules of buckets ((query ids, key ids), [BH, T] ints, any values) and an optional keep, one
    per tiling: equal field by field to ``schedule._composite_blocks``, in 5 + len(tiles) launches. Rows whose ids
    span 2T or more values (hashes rather than bucket numbers) are ranked by O(T^2) comparisons; the others'
    programs of those two launches return at once.

    >>> ids = torch.randint(0, 4, (2, 40))  # CUDA tensors, or CPU ones under TRITON_INTERPRET=1
    >>> s, = bucket_schedules(2, 40, ((16, 16, 4),), (ids, ids))
    >>> s.bkt_q.shape, s.bwd_end.shape
    (torch.Size([2, 40]), torch.Size([2, 3]))
    """
    backward = (True,) * len(tiles) if backward is None else tuple(backward)
    qid, kid = (x.contiguous() for x in buckets)
    device = qid.device
    has_keep = keep is not None
    R = 2 * T
    ids, first = (torch.empty(BH, R, dtype=torch.int32, device=device) for _ in range(2))
    wide = torch.empty(BH, dtype=torch.int32, device=device)
    hist = torch.empty(BH, 3, R, dtype=torch.int32, device=device)
    keep = keep.contiguous().view(torch.uint8) if has_keep else ids  # ids: a pointer never read
    _launch(bucket_ids_kernel, (BH,), qid_ptr=qid, kid_ptr=kid, ids_ptr=ids, wide_ptr=wide, hist_ptr=hist, T=T,
            BLOCK=1024, num_warps=4)
    grid = (triton.cdiv(R, 64), BH)
    _launch(wide_first_kernel, grid, qid_ptr=qid, kid_ptr=kid, wide_ptr=wide, first_ptr=first, T=T, BLOCK_I=64,
            BLOCK_J=64, num_warps=4)
    _launch(wide_rank_kernel, grid, qid_ptr=qid, kid_ptr=kid, wide_ptr=wide, first_ptr=first, ids_ptr=ids, T=T,
            BLOCK_I=64, BLOCK_J=64, num_warps=4)
    _launch(bucket_hist_kernel, (triton.cdiv(T, 1024), BH), ids_ptr=ids, keep_ptr=keep, hist_ptr=hist, T=T,
            HAS_KEEP=has_keep, BLOCK=1024, num_warps=4)
    perm_q, perm_k, slot = (torch.empty(BH, T, dtype=torch.int64, device=device) for _ in range(3))
    pos_q, pos_k, bkt_q, bkt_k = (torch.empty(BH, T, dtype=torch.int32, device=device) for _ in range(4))
    count = torch.empty(BH, dtype=torch.int32, device=device)
    # num_stages=1: the loop reads counters the previous iteration wrote; nothing may be fetched ahead of them
    _launch(bucket_place_kernel, (BH,), ids_ptr=ids, keep_ptr=keep, hist_ptr=hist, perm_q_ptr=perm_q,
            perm_k_ptr=perm_k, pos_q_ptr=pos_q, pos_k_ptr=pos_k, bkt_q_ptr=bkt_q, bkt_k_ptr=bkt_k, slot_ptr=slot,
            count_ptr=count, T=T, HAS_KEEP=has_keep, SCAN=1024, CHUNK=128, num_warps=8, num_stages=1)
    out = []
    for (bq, bk, w), bwd in zip(tiles, backward):
        NQ, NK = -(-T // bq), -(-T // bk)
        f = _fields(BH, NQ, NK, bwd, device)
        ext = torch.empty(2 * BH * (NQ + NK), dtype=torch.int64, device=device)  # block extremes, scratch
        qc_min, qc_max, kc_min, kc_max = ext.split((BH * NQ, BH * NQ, BH * NK, BH * NK))
        # forward-only tilings leave k_mixed out of the schedule; the kernel still writes it, to scratch
        k_mixed = f["k_mixed"] if bwd else torch.empty(BH, NK, dtype=torch.int32, device=device)
        _launch(bucket_blocks_kernel, (BH,), pos_q_ptr=pos_q, pos_k_ptr=pos_k, bkt_q_ptr=bkt_q, bkt_k_ptr=bkt_k,
                count_ptr=count, qc_min_ptr=qc_min, qc_max_ptr=qc_max, kc_min_ptr=kc_min, kc_max_ptr=kc_max,
                f_start_ptr=f["fwd_start"], f_end_ptr=f["fwd_end"], f_lo_ptr=f["fwd_clean_lo"],
                f_hi_ptr=f["fwd_clean_hi"], q_mixed_ptr=f["q_mixed"], qmax_ptr=f["qmax"], b_start_ptr=f["bwd_start"],
                b_end_ptr=f["bwd_end"], b_lo_ptr=f["bwd_clean_lo"], b_hi_ptr=f["bwd_clean_hi"], k_mixed_ptr=k_mixed,
                kmin_ptr=f["kmin"], none_ptr=f["none"], T=T, NQ=NQ, NK=NK, BQ=bq, BK=bk, IS_CAUSAL=bool(is_causal),
                CLEAN=bool(clean), BACKWARD=bool(bwd), CHQ=max(1, 2048 // bq), CHK=max(1, 2048 // bk), CH=64,
                num_warps=8, num_stages=1)
        out.append(_schedule(f, bq, bk, w, NQ, NK, bwd, pos_q=pos_q, pos_k=pos_k, bkt_q=bkt_q, bkt_k=bkt_k,
                             count=count, perm_q=perm_q, perm_k=perm_k, slot_q=slot))
    return tuple(out)
