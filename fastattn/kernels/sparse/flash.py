"""Flash attention over a block schedule: forward, dq and dk/dv Triton kernels for sparse softmax attention.

The kernels see one [BH, T, D] sequence per (batch, head) in *schedule order* (kept tokens compacted
first, or tokens sorted by bucket; :mod:`.schedule` builds it) with each token's original position, so
the causal test j <= i stays the one of the unsorted sequence. Each query block visits key blocks
``start[qb] <= it < end[qb]``; which ones, and whether a block needs its element mask, is data:

* range mode (keep / buckets): key block ``kb = it``; a query block that spans several buckets also skips
  the key blocks whose smallest original position lies above its largest (wholly above the diagonal);
* list mode (patterns): key block ``kb = blocks[it]``, with ``full[it]`` saying every pair is allowed.

Inside a block, allowed = valid & (pos_k <= pos_q if causal) & (bucket_q == bucket_k) & pattern. The
online softmax keeps base-2 logits; ``lse`` (base 2) is +inf on a row with no allowed key, so that the
backward's p = 2^(s - lse) is 0 there: the row outputs 0 with zero gradients, never NaN. README.md has
the derivation of the backward and of the block ranges.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastattn.errors import KernelError
from fastattn.kernels.checks import empty as _empty

__all__ = ["flash_fwd", "flash_bwd", "SparseFlash"]

# kinds of pattern primitives, rows of the int32 table [N, 3] = (kind, a, b) read by _pattern_mask
LOCAL, DILATED, STRIDED, BLOCKED, GLOBAL = 0, 1, 2, 3, 4


@triton.jit
def _pattern_mask(pos_q, pos_k, prims_ptr, N_PRIMS: tl.constexpr):
    """[BM, BN] bool: the union over the N_PRIMS primitives (kind, a, b) of the pairs each allows."""
    d = tl.abs(pos_q[:, None] - pos_k[None, :])  # [BM, BN]
    hit = d < 0
    for p in tl.static_range(N_PRIMS):
        kind = tl.load(prims_ptr + 3 * p)
        a = tl.load(prims_ptr + 3 * p + 1)
        b = tl.load(prims_ptr + 3 * p + 2)
        if kind == 0:  # local(window=a)
            hit = hit | (d < a)
        elif kind == 1:  # dilated(window=a, dilation=b)
            hit = hit | (((d % b) == 0) & (d < a * b))
        elif kind == 2:  # strided(stride=a)
            hit = hit | ((d % a) == 0)
        elif kind == 3:  # blocked(block=a)
            hit = hit | ((pos_q // a)[:, None] == (pos_k // a)[None, :])
        else:  # global_tokens(n=a)
            hit = hit | (pos_q < a)[:, None] | (pos_k < a)[None, :]
    return hit


@triton.jit
def _allowed(pos_q, pos_k, ok_q, ok_k, bkt_q, bkt_k, prims_ptr, need_mask,
             IS_CAUSAL: tl.constexpr, HAS_BUCKET: tl.constexpr, N_PRIMS: tl.constexpr):
    """[BM, BN] bool: the pairs of a tile that take part."""
    allowed = ok_q[:, None] & ok_k[None, :]
    if IS_CAUSAL:
        allowed = allowed & (pos_k[None, :] <= pos_q[:, None])
    if HAS_BUCKET:
        allowed = allowed & (bkt_q[:, None] == bkt_k[None, :])
    if N_PRIMS > 0:
        if need_mask:
            allowed = allowed & _pattern_mask(pos_q, pos_k, prims_ptr, N_PRIMS)
    return allowed


@triton.jit
def _run_bounds(run: tl.constexpr, start, clean_lo, clean_hi, end):
    """[lo, hi) of run 0 (masked, start..clean_lo), 1 (clean_lo..clean_hi, no mask) or 2 (masked, ..end)."""
    lo = start
    hi = clean_lo
    if run == 1:
        lo = clean_lo
        hi = clean_hi
    if run == 2:
        lo = clean_hi
        hi = end
    return lo, hi


@triton.jit
def _rows(ptr, bh, o_t, ok_t, o_c, C, T):
    """[BT, BC] tile of rows o_t (those with ok_t, others 0) of the [BH, T, C] tensor at ptr."""
    return tl.load(ptr + bh * T * C + o_t[:, None] * C + o_c[None, :], mask=ok_t[:, None] & (o_c < C)[None, :],
                   other=0.0)


@triton.jit
def _ids(pos_ptr, bkt_ptr, bh, o_t, T, stride_pos, HAS_BUCKET: tl.constexpr):
    """(original positions, bucket ids) of slots o_t; ids are the positions when there are no buckets."""
    pos = tl.load(pos_ptr + bh * stride_pos + o_t, mask=o_t < T, other=0)
    bkt = pos
    if HAS_BUCKET:
        bkt = tl.load(bkt_ptr + bh * T + o_t, mask=o_t < T, other=-1)
    return pos, bkt


@triton.jit
def _fwd_tile(acc, m_i, l_i, b_q, pos_q, bkt_q, ok_q, kb, need, bh, count, k_ptr, v_ptr, pos_k_ptr, bkt_k_ptr,
              prims_ptr, qk_scale, T, D, DV, stride_pos, IS_CAUSAL: tl.constexpr, HAS_BUCKET: tl.constexpr,
              N_PRIMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """The online-softmax step of one query block over key block kb: returns (acc, m_i, l_i) updated.
    MASKED=False: the schedule vouches that every pair of the tile takes part (no positions read)."""
    o_k = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    ok_k = o_k < count
    b_k = _rows(k_ptr, bh, o_k, ok_k, tl.arange(0, BLOCK_D), D, T)  # [BN, BD]
    b_v = _rows(v_ptr, bh, o_k, ok_k, tl.arange(0, BLOCK_DV), DV, T)  # [BN, BDV]
    s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * qk_scale  # [BM, BN]
    if MASKED:
        pos_k, bkt_k = _ids(pos_k_ptr, bkt_k_ptr, bh, o_k, T, stride_pos, HAS_BUCKET)
        allowed = _allowed(pos_q, pos_k, ok_q, ok_k, bkt_q, bkt_k, prims_ptr, need, IS_CAUSAL, HAS_BUCKET, N_PRIMS)
        s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # a row with nothing allowed yet keeps m = -inf: shift it by 0 so that 2^(-inf - shift) = 0, not NaN
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_use[:, None])  # [BM, BN]
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(b_v.dtype), b_v, input_precision=PRECISION)  # [BM, BDV]
    return acc, m_new, l_i


@triton.jit
def _dq_tile(dq, b_q, b_do, lse, delta, pos_q, bkt_q, ok_q, kb, need, bh, count, k_ptr, v_ptr, pos_k_ptr,
             bkt_k_ptr, prims_ptr, qk_scale, T, D, DV, stride_pos, IS_CAUSAL: tl.constexpr,
             HAS_BUCKET: tl.constexpr, N_PRIMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """dq (unscaled) of one query block plus key block kb's share: ds @ k with ds = p (dp - delta)."""
    o_k = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    ok_k = o_k < count
    b_k = _rows(k_ptr, bh, o_k, ok_k, tl.arange(0, BLOCK_D), D, T)  # [BN, BD]
    b_v = _rows(v_ptr, bh, o_k, ok_k, tl.arange(0, BLOCK_DV), DV, T)  # [BN, BDV]
    s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * qk_scale  # [BM, BN]
    p = tl.math.exp2(s - lse[:, None])  # [BM, BN]
    if MASKED:
        pos_k, bkt_k = _ids(pos_k_ptr, bkt_k_ptr, bh, o_k, T, stride_pos, HAS_BUCKET)
        allowed = _allowed(pos_q, pos_k, ok_q, ok_k, bkt_q, bkt_k, prims_ptr, need, IS_CAUSAL, HAS_BUCKET, N_PRIMS)
        p = tl.where(allowed, p, 0.0)
    dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)  # [BM, BN]
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(b_k.dtype), b_k, input_precision=PRECISION)  # [BM, BD]


@triton.jit
def _dkdv_tile(dk, dv, b_k, b_v, pos_k, bkt_k, ok_k, qb, need, bh, count, q_ptr, do_ptr, lse_ptr, delta_ptr,
               pos_q_ptr, bkt_q_ptr, prims_ptr, qk_scale, T, D, DV, stride_pos, IS_CAUSAL: tl.constexpr,
               HAS_BUCKET: tl.constexpr, N_PRIMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """dk (unscaled), dv of one key block plus query block qb's share: ds^T @ q and p^T @ do."""
    o_q = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    ok_q = o_q < count
    b_q = _rows(q_ptr, bh, o_q, ok_q, tl.arange(0, BLOCK_D), D, T)  # [BM, BD]
    b_do = _rows(do_ptr, bh, o_q, ok_q, tl.arange(0, BLOCK_DV), DV, T)  # [BM, BDV]
    lse = tl.load(lse_ptr + bh * T + o_q, mask=ok_q, other=float("inf"))
    delta = tl.load(delta_ptr + bh * T + o_q, mask=ok_q, other=0.0)
    s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * qk_scale  # [BM, BN]
    p = tl.math.exp2(s - lse[:, None])  # [BM, BN]
    if MASKED:
        pos_q, bkt_q = _ids(pos_q_ptr, bkt_q_ptr, bh, o_q, T, stride_pos, HAS_BUCKET)
        allowed = _allowed(pos_q, pos_k, ok_q, ok_k, bkt_q, bkt_k, prims_ptr, need, IS_CAUSAL, HAS_BUCKET, N_PRIMS)
        p = tl.where(allowed, p, 0.0)
    dv += tl.dot(tl.trans(p).to(b_do.dtype), b_do, input_precision=PRECISION)  # [BN, BDV]
    dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)  # [BM, BN]
    ds = p * (dp - delta[:, None])
    dk += tl.dot(tl.trans(ds).to(b_q.dtype), b_q, input_precision=PRECISION)  # [BN, BD]
    return dk, dv


@triton.jit
def sparse_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, pos_q_ptr, pos_k_ptr, bkt_q_ptr, bkt_k_ptr, count_ptr,
                      start_ptr, end_ptr, blocks_ptr, full_ptr, mixed_ptr, near_ptr, far_ptr, clean_lo_ptr,
                      clean_hi_ptr, prims_ptr, scale, T, D, DV, n_near, n_far, stride_pos, stride_count, stride_sched,
                      IS_CAUSAL: tl.constexpr, HAS_BUCKET: tl.constexpr, USE_LIST: tl.constexpr,
                      N_PRIMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """o and lse of one query block of one (b, h).

    q_ptr, k_ptr [BH, T, D]; v_ptr, o_ptr [BH, T, DV]; lse_ptr [BH, T] fp32 (base 2); pos_*_ptr int32
    [BH or 1, T] original positions (stride_pos 0 when shared); bkt_*_ptr int32 [BH, T] bucket ids;
    count_ptr int32 [BH or 1] tokens taking part (stride_count 0 => shared); start_ptr/end_ptr int32
    [BH or 1, NQ] each query block's entries (stride_sched 0 => shared); blocks_ptr/full_ptr int32 [nnz]
    (list mode); mixed_ptr int32 [BH, NQ] 1 where this block spans several buckets, near_ptr [BH, NQ =
    n_near] this block's largest position, far_ptr [BH, NK = n_far] every key block's smallest position
    (range mode, causal skip); clean_lo_ptr/clean_hi_ptr int32 [BH, NQ] the entries whose tiles have every
    pair allowed, run without a mask (range mode); prims_ptr int32 [N_PRIMS, 3] (list mode). Query blocks
    hold BLOCK_M slots, key blocks BLOCK_N; n_near = NQ programs run in reverse order.
    """
    # causal work grows with the query block: launch the longest first, so the last wave is short
    pid = n_near - 1 - tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    count = tl.load(count_ptr + bh * stride_count)
    o_q = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    ok_q = o_q < count
    b_q = _rows(q_ptr, bh, o_q, ok_q, tl.arange(0, BLOCK_D), D, T)  # [BM, BD]
    pos_q, bkt_q = _ids(pos_q_ptr, bkt_q_ptr, bh, o_q, T, stride_pos, HAS_BUCKET)
    start = tl.load(start_ptr + bh * stride_sched + pid)
    end = tl.load(end_ptr + bh * stride_sched + pid)
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    mixed = 0
    if IS_CAUSAL and HAS_BUCKET and not USE_LIST:
        mixed = tl.load(mixed_ptr + bh * n_near + pid)
    if USE_LIST:
        for it in range(start, end):
            kb = tl.load(blocks_ptr + it)
            need = tl.load(full_ptr + it) == 0
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, b_q, pos_q, bkt_q, ok_q, kb, need, bh, count, k_ptr, v_ptr,
                                      pos_k_ptr, bkt_k_ptr, prims_ptr, qk_scale, T, D, DV, stride_pos, IS_CAUSAL,
                                      HAS_BUCKET, N_PRIMS, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, PRECISION, True)
    elif mixed != 0:
        # a block spanning several buckets walks all of them: skip the key blocks wholly after it
        near = tl.load(near_ptr + bh * n_near + pid)
        for kb in range(start, end):
            if tl.load(far_ptr + bh * n_far + kb) <= near:
                acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, b_q, pos_q, bkt_q, ok_q, kb, False, bh, count, k_ptr,
                                          v_ptr, pos_k_ptr, bkt_k_ptr, prims_ptr, qk_scale, T, D, DV, stride_pos,
                                          IS_CAUSAL, HAS_BUCKET, N_PRIMS, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV,
                                          PRECISION, True)
    else:
        # three runs: masked, every pair allowed (the schedule's [clean_lo, clean_hi)), masked
        clean_lo = tl.load(clean_lo_ptr + bh * n_near + pid)
        clean_hi = tl.load(clean_hi_ptr + bh * n_near + pid)
        for run in tl.static_range(3):
            lo, hi = _run_bounds(run, start, clean_lo, clean_hi, end)
            for kb in range(lo, hi):
                acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, b_q, pos_q, bkt_q, ok_q, kb, False, bh, count, k_ptr,
                                          v_ptr, pos_k_ptr, bkt_k_ptr, prims_ptr, qk_scale, T, D, DV, stride_pos,
                                          IS_CAUSAL, HAS_BUCKET, N_PRIMS, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV,
                                          PRECISION, run != 1)
    has = l_i > 0
    acc = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.math.log2(tl.where(has, l_i, 1.0)), float("inf"))
    o_dv = tl.arange(0, BLOCK_DV)
    tl.store(o_ptr + bh * T * DV + o_q[:, None] * DV + o_dv[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=(o_q < T)[:, None] & (o_dv < DV)[None, :])
    tl.store(lse_ptr + bh * T + o_q, lse, mask=o_q < T)


@triton.jit
def sparse_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, pos_q_ptr, pos_k_ptr, bkt_q_ptr,
                     bkt_k_ptr, count_ptr, start_ptr, end_ptr, blocks_ptr, full_ptr, mixed_ptr, near_ptr, far_ptr,
                     clean_lo_ptr, clean_hi_ptr, prims_ptr, scale, T, D, DV, n_near, n_far, stride_pos,
                     stride_count, stride_sched, IS_CAUSAL: tl.constexpr, HAS_BUCKET: tl.constexpr,
                     USE_LIST: tl.constexpr, N_PRIMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """dq of one query block over the forward's schedule. do_ptr [BH, T, DV]; delta_ptr [BH, T] fp32 =
    rowsum(o * do); dq_ptr [BH, T, D] fp32; the rest as in :func:`sparse_fwd_kernel`."""
    # causal work grows with the query block: launch the longest first, so the last wave is short
    pid = n_near - 1 - tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    count = tl.load(count_ptr + bh * stride_count)
    o_q = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    ok_q = o_q < count
    b_q = _rows(q_ptr, bh, o_q, ok_q, o_d, D, T)  # [BM, BD]
    b_do = _rows(do_ptr, bh, o_q, ok_q, tl.arange(0, BLOCK_DV), DV, T)  # [BM, BDV]
    lse = tl.load(lse_ptr + bh * T + o_q, mask=ok_q, other=float("inf"))
    delta = tl.load(delta_ptr + bh * T + o_q, mask=ok_q, other=0.0)
    pos_q, bkt_q = _ids(pos_q_ptr, bkt_q_ptr, bh, o_q, T, stride_pos, HAS_BUCKET)
    start = tl.load(start_ptr + bh * stride_sched + pid)
    end = tl.load(end_ptr + bh * stride_sched + pid)
    qk_scale = scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    mixed = 0
    if IS_CAUSAL and HAS_BUCKET and not USE_LIST:
        mixed = tl.load(mixed_ptr + bh * n_near + pid)
    if USE_LIST:
        for it in range(start, end):
            kb = tl.load(blocks_ptr + it)
            need = tl.load(full_ptr + it) == 0
            dq = _dq_tile(dq, b_q, b_do, lse, delta, pos_q, bkt_q, ok_q, kb, need, bh, count, k_ptr, v_ptr,
                          pos_k_ptr, bkt_k_ptr, prims_ptr, qk_scale, T, D, DV, stride_pos, IS_CAUSAL, HAS_BUCKET,
                          N_PRIMS, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, PRECISION, True)
    elif mixed != 0:
        near = tl.load(near_ptr + bh * n_near + pid)
        for kb in range(start, end):
            if tl.load(far_ptr + bh * n_far + kb) <= near:
                dq = _dq_tile(dq, b_q, b_do, lse, delta, pos_q, bkt_q, ok_q, kb, False, bh, count, k_ptr, v_ptr,
                              pos_k_ptr, bkt_k_ptr, prims_ptr, qk_scale, T, D, DV, stride_pos, IS_CAUSAL,
                              HAS_BUCKET, N_PRIMS, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, PRECISION, True)
    else:
        clean_lo = tl.load(clean_lo_ptr + bh * n_near + pid)
        clean_hi = tl.load(clean_hi_ptr + bh * n_near + pid)
        for run in tl.static_range(3):
            lo, hi = _run_bounds(run, start, clean_lo, clean_hi, end)
            for kb in range(lo, hi):
                dq = _dq_tile(dq, b_q, b_do, lse, delta, pos_q, bkt_q, ok_q, kb, False, bh, count, k_ptr, v_ptr,
                              pos_k_ptr, bkt_k_ptr, prims_ptr, qk_scale, T, D, DV, stride_pos, IS_CAUSAL,
                              HAS_BUCKET, N_PRIMS, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, PRECISION, run != 1)
    tl.store(dq_ptr + bh * T * D + o_q[:, None] * D + o_d[None, :], dq * scale,
             mask=(o_q < T)[:, None] & (o_d < D)[None, :])


@triton.jit
def sparse_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, pos_q_ptr, pos_k_ptr,
                       bkt_q_ptr, bkt_k_ptr, count_ptr, start_ptr, end_ptr, blocks_ptr, full_ptr, mixed_ptr,
                       near_ptr, far_ptr, clean_lo_ptr, clean_hi_ptr, prims_ptr, scale, T, D, DV, n_near, n_far,
                       stride_pos, stride_count, stride_sched, IS_CAUSAL: tl.constexpr, HAS_BUCKET: tl.constexpr,
                       USE_LIST: tl.constexpr, N_PRIMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """dk, dv of one key block over the transposed schedule (the query blocks that visit it): here
    start/end/mixed/near are per key block ([BH, NK]), near_ptr is this key block's smallest position and
    far_ptr [BH, NQ] every query block's largest.
    dk_ptr [BH, T, D], dv_ptr [BH, T, DV] fp32; the rest as in :func:`sparse_dq_kernel`."""
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    count = tl.load(count_ptr + bh * stride_count)
    o_k = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    o_dv = tl.arange(0, BLOCK_DV)
    ok_k = o_k < count
    b_k = _rows(k_ptr, bh, o_k, ok_k, o_d, D, T)  # [BN, BD]
    b_v = _rows(v_ptr, bh, o_k, ok_k, o_dv, DV, T)  # [BN, BDV]
    pos_k, bkt_k = _ids(pos_k_ptr, bkt_k_ptr, bh, o_k, T, stride_pos, HAS_BUCKET)
    start = tl.load(start_ptr + bh * stride_sched + pid)
    end = tl.load(end_ptr + bh * stride_sched + pid)
    qk_scale = scale * 1.4426950408889634
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    mixed = 0
    if IS_CAUSAL and HAS_BUCKET and not USE_LIST:
        mixed = tl.load(mixed_ptr + bh * n_near + pid)
    if USE_LIST:
        for it in range(start, end):
            qb = tl.load(blocks_ptr + it)
            need = tl.load(full_ptr + it) == 0
            dk, dv = _dkdv_tile(dk, dv, b_k, b_v, pos_k, bkt_k, ok_k, qb, need, bh, count, q_ptr, do_ptr, lse_ptr,
                                delta_ptr, pos_q_ptr, bkt_q_ptr, prims_ptr, qk_scale, T, D, DV, stride_pos,
                                IS_CAUSAL, HAS_BUCKET, N_PRIMS, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, PRECISION, True)
    elif mixed != 0:
        near = tl.load(near_ptr + bh * n_near + pid)
        for qb in range(start, end):
            if tl.load(far_ptr + bh * n_far + qb) >= near:
                dk, dv = _dkdv_tile(dk, dv, b_k, b_v, pos_k, bkt_k, ok_k, qb, False, bh, count, q_ptr, do_ptr,
                                    lse_ptr, delta_ptr, pos_q_ptr, bkt_q_ptr, prims_ptr, qk_scale, T, D, DV,
                                    stride_pos, IS_CAUSAL, HAS_BUCKET, N_PRIMS, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV,
                                    PRECISION, True)
    else:
        clean_lo = tl.load(clean_lo_ptr + bh * n_near + pid)
        clean_hi = tl.load(clean_hi_ptr + bh * n_near + pid)
        for run in tl.static_range(3):
            lo, hi = _run_bounds(run, start, clean_lo, clean_hi, end)
            for qb in range(lo, hi):
                dk, dv = _dkdv_tile(dk, dv, b_k, b_v, pos_k, bkt_k, ok_k, qb, False, bh, count, q_ptr, do_ptr,
                                    lse_ptr, delta_ptr, pos_q_ptr, bkt_q_ptr, prims_ptr, qk_scale, T, D, DV,
                                    stride_pos, IS_CAUSAL, HAS_BUCKET, N_PRIMS, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV,
                                    PRECISION, run != 1)
    tl.store(dk_ptr + bh * T * D + o_k[:, None] * D + o_d[None, :], dk * scale,
             mask=(o_k < T)[:, None] & (o_d < D)[None, :])
    tl.store(dv_ptr + bh * T * DV + o_k[:, None] * DV + o_dv[None, :], dv,
             mask=(o_k < T)[:, None] & (o_dv < DV)[None, :])


# -- host side ----------------------------------------------------------------------------------------------------
def _pow2(n):
    return max(16, triton.next_power_of_2(n))


def _common(sched, q, v, scale, is_causal):
    """Kernel keywords shared by the three launches (everything but the tensors that differ)."""
    BH, T, D = q.shape
    s = sched
    return dict(pos_q_ptr=s.pos_q, pos_k_ptr=s.pos_k, bkt_q_ptr=s.bkt_q if s.bkt_q is not None else s.pos_q,
                bkt_k_ptr=s.bkt_k if s.bkt_k is not None else s.pos_k, count_ptr=s.count,
                prims_ptr=s.prims, scale=scale, T=T, D=D, DV=v.shape[-1],
                stride_pos=s.pos_q.shape[-1] if s.pos_q.shape[0] > 1 else 0, stride_count=int(s.count.shape[0] > 1),
                IS_CAUSAL=is_causal, HAS_BUCKET=s.bkt_q is not None, USE_LIST=s.use_list,
                N_PRIMS=s.prims.shape[0] if s.use_list else 0, BLOCK_M=s.block_q, BLOCK_N=s.block_k,
                BLOCK_D=_pow2(D), BLOCK_DV=_pow2(v.shape[-1]),
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=s.warps)


def _sides(sched, backward):
    """The schedule pointers of the forward (query blocks walk key blocks) or of its transpose."""
    s = sched
    if backward:
        return dict(start_ptr=s.bwd_start, end_ptr=s.bwd_end, blocks_ptr=s.bwd_blocks, full_ptr=s.bwd_full,
                    mixed_ptr=s.k_mixed, near_ptr=s.kmin, far_ptr=s.qmax, clean_lo_ptr=s.bwd_clean_lo,
                    clean_hi_ptr=s.bwd_clean_hi, n_near=s.n_k, n_far=s.n_q,
                    stride_sched=s.n_k if s.bwd_start.shape[0] > 1 else 0)
    return dict(start_ptr=s.fwd_start, end_ptr=s.fwd_end, blocks_ptr=s.fwd_blocks, full_ptr=s.fwd_full,
                mixed_ptr=s.q_mixed, near_ptr=s.qmax, far_ptr=s.kmin, clean_lo_ptr=s.fwd_clean_lo,
                clean_hi_ptr=s.fwd_clean_hi, n_near=s.n_q, n_far=s.n_k,
                stride_sched=s.n_q if s.fwd_start.shape[0] > 1 else 0)


def flash_fwd(q, k, v, sched, scale, is_causal):
    """o [BH, T, DV] (q's dtype), lse [BH, T] fp32 base 2, for q, k [BH, T, D], v [BH, T, DV] in schedule order."""
    BH, T, _ = q.shape
    o = _empty((BH, T, v.shape[-1]), q.device, q.dtype)
    lse = _empty((BH, T), q.device, torch.float32)
    sparse_fwd_kernel[(sched.n_q, BH)](q_ptr=q, k_ptr=k, v_ptr=v, o_ptr=o, lse_ptr=lse,
                                             **_sides(sched, False), **_common(sched, q, v, scale, is_causal))
    return o, lse


def flash_bwd(q, k, v, o, lse, do, sched, scale, is_causal):
    """dq, dk, dv (fp32, schedule order) of the forward :func:`flash_fwd` ran."""
    if not sched.has_backward:
        raise KernelError("this schedule was built forward-only (backward=False in range_schedules): build the "
                          "backward's tiling with backward=True")
    BH, T, D = q.shape
    delta = (o.float() * do.float()).sum(-1)  # [BH, T]
    dq = _empty((BH, T, D), q.device, torch.float32)
    dk = _empty((BH, T, D), q.device, torch.float32)
    dv = _empty((BH, T, v.shape[-1]), q.device, torch.float32)
    common = _common(sched, q, v, scale, is_causal)
    sparse_dq_kernel[(sched.n_q, BH)](q_ptr=q, k_ptr=k, v_ptr=v, do_ptr=do, lse_ptr=lse, delta_ptr=delta,
                                            dq_ptr=dq, **_sides(sched, False), **common)
    sparse_dkdv_kernel[(sched.n_k, BH)](q_ptr=q, k_ptr=k, v_ptr=v, do_ptr=do, lse_ptr=lse, delta_ptr=delta,
                                              dk_ptr=dk, dv_ptr=dv, **_sides(sched, True), **common)
    return dq, dk, dv


class SparseFlash(torch.autograd.Function):
    """o = sparse softmax attention of q, k [BH, T, D], v [BH, T, DV] already in schedule order.

    ``sched`` drives the forward, ``sched_bwd`` the dq and dk-dv launches: two tilings over the same slots (the
    same object when the tiles agree). The schedules (records of int32 index tensors, no gradient) ride on ctx
    rather than through save_for_backward: they are arguments like ``scale``, never outputs of the graph.
    """

    @staticmethod
    def forward(ctx, q, k, v, sched, sched_bwd, scale, is_causal):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o, lse = flash_fwd(q, k, v, sched, scale, is_causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.sched, ctx.scale, ctx.is_causal = sched_bwd, scale, is_causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_bwd(q, k, v, o, lse, do.contiguous(), ctx.sched, ctx.scale, ctx.is_causal)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def default_scale(D, scale):
    return 1.0 / math.sqrt(D) if scale is None else float(scale)
