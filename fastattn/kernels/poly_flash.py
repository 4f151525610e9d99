"""Quadratic-time polynomial attention as a flash kernel: f(s Q K^T) V evaluated tile by tile, no feature map.

For a polynomial f the feature kernels cost O(T F DV) with F = sum_j C(D + j - 1, j) features (2,145 for a
degree-2 f at D = 64, 8,385 at D = 128); evaluating f on the score tiles directly costs O(T^2 (D + DV))
(half of it causal) and wins below some T. The kernels are flash attention with f in place of exp:

* no running max: f is a polynomial, its values need no rescaling (a sum that overflows is lost either way);
* the normaliser z_i = sum_j f(s q_i.k_j) is summed in fp32 beside the fp32 accumulator;
* the scale rides in the coefficients: g(x) = f(s x) has g_j = a_j s^j, and dS = g'(q.k) dA is the
  gradient with respect to the raw score q.k.

Forward (one program per query block and query head): acc = sum_j g(x_ij) v_j, z = sum_j g(x_ij),
o = acc / den(z) where den(z) = z, or |z| + eps with ``normalizer_fix="abs"``; a den that is <= 0 or not
finite makes the row NaN (:func:`fastattn.kernels.naive.guarded_denominator`), never a finite wrong row.
Backward, with dn_i = do_i / den_i and delta_i = sign(z_i) dn_i.o_i (normalised; else dn = do, delta = 0):
dA_ij = dn_i.v_j - delta_i, dS_ij = g'(x_ij) dA_ij, dv_j = sum_i A_ij dn_i, dk_j = sum_i dS_ij q_i (one
program per key block and key/value head, looping over the G query heads of its group: no atomics),
dq_i = sum_j dS_ij k_j (one program per query block).

A tile needs its element mask only where it crosses the causal diagonal or the end of the sequence; every
loop runs its clean tiles without one. python -m fastattn.kernels.poly_flash --aot compiles the kernels for
sm_90 on the CPU and prints registers, spills and shared memory.

>>> import os, torch
>>> from fastattn.kernels.poly import polynomial
>>> q = k = v = torch.randn(1, 2, 40, 16)
>>> if os.environ.get("TRITON_INTERPRET") == "1":
...     o = poly_flash_attention(q, k, v, polynomial("1 + x + x**2/2"), scale=0.25)
...     assert o.shape == (1, 2, 40, 16)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastattn.errors import KernelError
from fastattn.kernels.checks import empty as _empty
from fastattn.kernels.poly import check_normalizer

__all__ = ["poly_flash_attention", "PolyFlash", "plan", "Plan", "cost", "coefficients", "compile_kernels"]

#: f's degree is at most 8 (``Polynomial``): 9 Horner coefficients ride as kernel scalars h0..h8.
MAX_DEGREE = 8


# -- device helpers -------------------------------------------------------------------------------------------------
@triton.jit
def _g(x, h0, h1, h2, h3, h4, h5, h6, h7, h8, DEGREE: tl.constexpr):
    """g(x) by Horner on a tile; h0 is the top coefficient g_DEGREE, h_DEGREE the constant g_0."""
    y = tl.zeros_like(x) + h0
    if DEGREE >= 1:
        y = y * x + h1
    if DEGREE >= 2:
        y = y * x + h2
    if DEGREE >= 3:
        y = y * x + h3
    if DEGREE >= 4:
        y = y * x + h4
    if DEGREE >= 5:
        y = y * x + h5
    if DEGREE >= 6:
        y = y * x + h6
    if DEGREE >= 7:
        y = y * x + h7
    if DEGREE >= 8:
        y = y * x + h8
    return y


@triton.jit
def _dg(x, h0, h1, h2, h3, h4, h5, h6, h7, h8, DEGREE: tl.constexpr):
    """g'(x) by Horner on a tile, from g's coefficients (top first): the coefficient of x^(DEGREE-1-m) is
    (DEGREE - m) h_m."""
    y = tl.zeros_like(x) + h0 * DEGREE
    if DEGREE >= 2:
        y = y * x + h1 * (DEGREE - 1)
    if DEGREE >= 3:
        y = y * x + h2 * (DEGREE - 2)
    if DEGREE >= 4:
        y = y * x + h3 * (DEGREE - 3)
    if DEGREE >= 5:
        y = y * x + h4 * (DEGREE - 4)
    if DEGREE >= 6:
        y = y * x + h5 * (DEGREE - 5)
    if DEGREE >= 7:
        y = y * x + h6 * (DEGREE - 6)
    if DEGREE >= 8:
        y = y * x + h7 * (DEGREE - 7)
    return y


@triton.jit
def _den(z, eps, FIX_ABS: tl.constexpr):
    # z, or |z| + eps with normalizer_fix="abs"; one that is <= 0 or not finite becomes NaN (a NaN row, never a
    # finite wrong one), as naive.guarded_denominator
    if FIX_ABS:
        d = tl.abs(z) + eps
    else:
        d = z
    return tl.where((d > 0.0) & (d < float("inf")), d, float("nan"))


@triton.jit
def _tile(ptr, o_t, o_c, n_rows, COLS: tl.constexpr, BLOCK_C: tl.constexpr, CHECK_ROWS: tl.constexpr):
    """[len(o_t), BLOCK_C] tile of rows o_t of the [n_rows, COLS] matrix at ptr; rows past n_rows (when
    CHECK_ROWS) and columns past COLS read as 0."""
    p = ptr + o_t[:, None] * COLS + o_c[None, :]
    if CHECK_ROWS:
        if COLS < BLOCK_C:
            b = tl.load(p, mask=(o_t < n_rows)[:, None] & (o_c < COLS)[None, :], other=0.0)
        else:
            b = tl.load(p, mask=(o_t < n_rows)[:, None], other=0.0)
    else:
        if COLS < BLOCK_C:
            b = tl.load(p, mask=(o_c < COLS)[None, :], other=0.0)
        else:
            b = tl.load(p)
    return b


@triton.jit
def _store(ptr, b, o_t, o_c, n_rows, COLS: tl.constexpr, BLOCK_C: tl.constexpr):
    p = ptr + o_t[:, None] * COLS + o_c[None, :]
    if COLS < BLOCK_C:
        tl.store(p, b.to(ptr.dtype.element_ty), mask=(o_t < n_rows)[:, None] & (o_c < COLS)[None, :])
    else:
        tl.store(p, b.to(ptr.dtype.element_ty), mask=(o_t < n_rows)[:, None])


@triton.jit
def _seen(o_m, o_n, Tq, Tk, IS_CAUSAL: tl.constexpr):
    """[BM, BN] bool: query o_m sees key o_n (both in range; causal: o_n <= o_m)."""
    m = (o_m < Tq)[:, None] & (o_n < Tk)[None, :]
    if IS_CAUSAL:
        m = m & (o_n[None, :] <= o_m[:, None])
    return m


@triton.jit
def _key_range(qb, Tk, n_kblocks, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(clean, end): query block qb visits key blocks [0, end); those below clean need no mask (every key in
    range and at or before the block's first query)."""
    if IS_CAUSAL:
        end = tl.minimum(tl.cdiv((qb + 1) * BLOCK_M, BLOCK_N), n_kblocks)
        clean = tl.minimum((qb * BLOCK_M + 1) // BLOCK_N, Tk // BLOCK_N)
    else:
        end = n_kblocks
        clean = Tk // BLOCK_N
    return tl.minimum(clean, end), end


@triton.jit
def _query_range(kb, Tq, Tk, n_qblocks, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(lo, a, b): key block kb is seen by query blocks [lo, n_qblocks); [a, b) of them need no mask (every
    query in range and at or after the block's last key), [lo, a) and [b, n_qblocks) do."""
    if IS_CAUSAL:
        lo = (kb * BLOCK_N) // BLOCK_M
        a = tl.minimum(tl.cdiv(kb * BLOCK_N + BLOCK_N - 1, BLOCK_M), n_qblocks)
    else:
        lo = 0
        a = 0
    clean_hi = Tq // BLOCK_M
    if (kb + 1) * BLOCK_N > Tk:
        clean_hi = 0
    return lo, a, tl.maximum(a, clean_hi)


@triton.jit
def _group_item(it, start, n, GROUP: tl.constexpr):
    """(query head g in the group, query block) of item it of a run of n blocks from start, over GROUP heads."""
    if GROUP == 1:
        g = 0
        qb = start + it
    else:
        g = it // n
        qb = start + it % n
    return g, qb


@triton.jit
def _decay(gq, gk_ptr, o_n, Tk, seen, MASKED: tl.constexpr):
    """[BM, BN] exp(G_i - G_j) for query rows with cumulative gates gq [BM] and keys o_n (G at gk_ptr): <= 1 where
    j <= i (g <= 0); a pair the mask drops gets exp(-inf) = 0, never exp of a positive difference."""
    if MASKED:
        gk = tl.load(gk_ptr + o_n, mask=o_n < Tk, other=0.0)
        diff = tl.where(seen, gq[:, None] - gk[None, :], float("-inf"))
    else:
        gk = tl.load(gk_ptr + o_n)
        diff = gq[:, None] - gk[None, :]
    return tl.exp(diff)


# -- forward --------------------------------------------------------------------------------------------------------
@triton.jit
def _fwd_tile(acc, z, b_q, o_m, kb, k_ptr, v_ptr, gq, gk_ptr, Tq, Tk, h0, h1, h2, h3, h4, h5, h6, h7, h8,
              DEGREE: tl.constexpr, IS_CAUSAL: tl.constexpr, GATED: tl.constexpr, HEAD_DIM: tl.constexpr,
              HEAD_DIM_V: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
              PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """acc += A v and z += rowsum A over key block kb, A = g(q k^T) (times exp(G_i - G_j) when GATED)."""
    o_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    b_k = _tile(k_ptr, o_n, tl.arange(0, BLOCK_D), Tk, HEAD_DIM, BLOCK_D, MASKED)  # [BN, BD]
    b_v = _tile(v_ptr, o_n, tl.arange(0, BLOCK_DV), Tk, HEAD_DIM_V, BLOCK_DV, MASKED)  # [BN, BDV]
    b_x = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)  # [BM, BN]
    b_a = _g(b_x, h0, h1, h2, h3, h4, h5, h6, h7, h8, DEGREE)  # [BM, BN]
    seen = _seen(o_m, o_n, Tq, Tk, IS_CAUSAL)
    if GATED:
        b_a = b_a * _decay(gq, gk_ptr, o_n, Tk, seen, MASKED)
    if MASKED:
        # a key past Tk reads as 0 and g(0) = a_0 is not 0: the mask keeps it out of z
        b_a = tl.where(seen, b_a, 0.0)
    z += tl.sum(b_a, 1)
    acc = tl.dot(b_a.to(b_v.dtype), b_v, acc, input_precision=PRECISION)  # [BM, BDV]
    return acc, z


@triton.jit
def poly_flash_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, z_ptr, gc_ptr, h0, h1, h2, h3, h4, h5, h6, h7, h8, eps, Tq,
                          Tk, n_qblocks, n_kblocks, GROUP: tl.constexpr, DEGREE: tl.constexpr,
                          IS_CAUSAL: tl.constexpr, GATED: tl.constexpr, NORMALIZE: tl.constexpr, FIX_ABS: tl.constexpr, HEAD_DIM: tl.constexpr,
                          HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """o (and z) of one query block of one query head.

    q_ptr [BH_q, Tq, HEAD_DIM]; k_ptr [BH_kv, Tk, HEAD_DIM]; v_ptr [BH_kv, Tk, HEAD_DIM_V]; o_ptr [BH_q, Tq,
    HEAD_DIM_V] (q's dtype); z_ptr [BH_q, Tq] fp32, the raw normaliser (written when NORMALIZE); h0..h8 g's
    coefficients, top first (:func:`coefficients`); query head bh reads key/value head bh // GROUP; gc_ptr
    [BH_kv, Tk] fp32 the cumulative log gates G (read when GATED, causal only). The 1-D grid holds n_qblocks * BH_q
    programs, the longest causal blocks first.
    """
    pid = tl.program_id(0)
    qb = n_qblocks - 1 - pid % n_qblocks
    bh = (pid // n_qblocks).to(tl.int64)
    kvh = bh // GROUP
    q_ptr += bh * Tq * HEAD_DIM
    k_ptr += kvh * Tk * HEAD_DIM
    v_ptr += kvh * Tk * HEAD_DIM_V
    o_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    b_q = _tile(q_ptr, o_m, tl.arange(0, BLOCK_D), Tq, HEAD_DIM, BLOCK_D, True)  # [BM, BD]
    gk_ptr = gc_ptr + kvh * Tk
    gq = tl.zeros([BLOCK_M], tl.float32)
    if GATED:
        gq = tl.load(gk_ptr + o_m, mask=o_m < Tq, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    z = tl.zeros([BLOCK_M], tl.float32)
    clean, end = _key_range(qb, Tk, n_kblocks, IS_CAUSAL, BLOCK_M, BLOCK_N)
    for kb in range(0, clean):
        acc, z = _fwd_tile(acc, z, b_q, o_m, kb, k_ptr, v_ptr, gq, gk_ptr, Tq, Tk, h0, h1, h2, h3, h4, h5, h6, h7,
                           h8, DEGREE, IS_CAUSAL, GATED, HEAD_DIM, HEAD_DIM_V, BLOCK_N, BLOCK_D, BLOCK_DV, PRECISION,
                           False)
    for kb in range(clean, end):
        acc, z = _fwd_tile(acc, z, b_q, o_m, kb, k_ptr, v_ptr, gq, gk_ptr, Tq, Tk, h0, h1, h2, h3, h4, h5, h6, h7,
                           h8, DEGREE, IS_CAUSAL, GATED, HEAD_DIM, HEAD_DIM_V, BLOCK_N, BLOCK_D, BLOCK_DV, PRECISION,
                           True)
    if NORMALIZE:
        acc = acc / _den(z, eps, FIX_ABS)[:, None]
        tl.store(z_ptr + bh * Tq + o_m, z, mask=o_m < Tq)
    _store(o_ptr + bh * Tq * HEAD_DIM_V, acc, o_m, tl.arange(0, BLOCK_DV), Tq, HEAD_DIM_V, BLOCK_DV)


# -- backward -------------------------------------------------------------------------------------------------------
@triton.jit
def poly_flash_prep_kernel(o_ptr, do_ptr, z_ptr, dn_ptr, delta_ptr, eps, T, n_blocks, FIX_ABS: tl.constexpr,
                           HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    """dn = do / den(z) (in do's dtype) and delta = sign(z) rowsum(dn * o) (fp32) of BLOCK_M rows.

    o_ptr, do_ptr, dn_ptr [BH_q, T, HEAD_DIM_V]; z_ptr, delta_ptr [BH_q, T] fp32; the grid holds n_blocks * BH_q
    programs. sign(z) is d den / dz: 1 for den = z (z > 0 where it is not NaN), sign(z) for |z| + eps.
    """
    pid = tl.program_id(0)
    rb = pid % n_blocks
    bh = (pid // n_blocks).to(tl.int64)
    o_m = rb * BLOCK_M + tl.arange(0, BLOCK_M)
    o_dv = tl.arange(0, BLOCK_DV)
    base = bh * T * HEAD_DIM_V
    b_o = _tile(o_ptr + base, o_m, o_dv, T, HEAD_DIM_V, BLOCK_DV, True).to(tl.float32)  # [BM, BDV]
    b_do = _tile(do_ptr + base, o_m, o_dv, T, HEAD_DIM_V, BLOCK_DV, True).to(tl.float32)  # [BM, BDV]
    z = tl.load(z_ptr + bh * T + o_m, mask=o_m < T, other=1.0)
    d = _den(z, eps, FIX_ABS)
    b_dn = b_do / d[:, None]
    delta = tl.sum(b_dn * b_o, 1)
    if FIX_ABS:
        delta = tl.where(z > 0, delta, tl.where(z < 0, -delta, 0.0))
    _store(dn_ptr + base, b_dn, o_m, o_dv, T, HEAD_DIM_V, BLOCK_DV)
    tl.store(delta_ptr + bh * T + o_m, delta, mask=o_m < T)


@triton.jit
def _dkdv_tile(dk, dv, dgk, b_k, b_v, o_n, qb, q_ptr, dn_ptr, delta_ptr, gk, gq_ptr, Tq, Tk, h0, h1, h2, h3, h4,
               h5, h6, h7, h8, DEGREE: tl.constexpr, IS_CAUSAL: tl.constexpr, GATED: tl.constexpr,
               NORMALIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """dv += A^T dn and dk += dS^T q over query block qb, computed transposed ([BN, BM] tiles); GATED: A and dS carry
    exp(G_i - G_j), and dgk [BN] -= sum_i dA_ij A_ij (what G_j gets from the pairs it decays)."""
    o_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    b_q = _tile(q_ptr, o_m, tl.arange(0, BLOCK_D), Tq, HEAD_DIM, BLOCK_D, MASKED)  # [BM, BD]
    b_dn = _tile(dn_ptr, o_m, tl.arange(0, BLOCK_DV), Tq, HEAD_DIM_V, BLOCK_DV, MASKED)  # [BM, BDV]
    b_xt = tl.dot(b_k, tl.trans(b_q), input_precision=PRECISION)  # [BN, BM]
    b_at = _g(b_xt, h0, h1, h2, h3, h4, h5, h6, h7, h8, DEGREE)  # [BN, BM]
    b_dat = tl.dot(b_v, tl.trans(b_dn), input_precision=PRECISION)  # [BN, BM]
    if NORMALIZE:
        if MASKED:
            delta = tl.load(delta_ptr + o_m, mask=o_m < Tq, other=0.0)
        else:
            delta = tl.load(delta_ptr + o_m)
        b_dat -= delta[None, :]
    b_dst = _dg(b_xt, h0, h1, h2, h3, h4, h5, h6, h7, h8, DEGREE) * b_dat  # [BN, BM]
    m_t = tl.trans(_seen(o_m, o_n, Tq, Tk, IS_CAUSAL))  # [BN, BM]
    if GATED:
        if MASKED:
            gq = tl.load(gq_ptr + o_m, mask=o_m < Tq, other=0.0)
            b_et = tl.exp(tl.where(m_t, gq[None, :] - gk[:, None], float("-inf")))
        else:
            b_et = tl.exp(tl.load(gq_ptr + o_m)[None, :] - gk[:, None])
        b_at = b_at * b_et
        b_dst = b_dst * b_et
    if MASKED:
        b_at = tl.where(m_t, b_at, 0.0)
        b_dst = tl.where(m_t, b_dst, 0.0)
    if GATED:
        dgk -= tl.sum(b_dat * b_at, 1)
    dv = tl.dot(b_at.to(b_dn.dtype), b_dn, dv, input_precision=PRECISION)  # [BN, BDV]
    dk = tl.dot(b_dst.to(b_q.dtype), b_q, dk, input_precision=PRECISION)  # [BN, BD]
    return dk, dv, dgk


@triton.jit
def poly_flash_dkdv_kernel(q_ptr, k_ptr, v_ptr, dn_ptr, delta_ptr, dk_ptr, dv_ptr, gc_ptr, dgc_ptr, h0, h1, h2, h3,
                           h4, h5, h6, h7, h8, Tq, Tk, n_qblocks, n_kblocks, GROUP: tl.constexpr,
                           DEGREE: tl.constexpr, IS_CAUSAL: tl.constexpr, GATED: tl.constexpr,
                           NORMALIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
                           HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """dk, dv of one key block of one key/value head, summed over the GROUP query heads that read it.

    q_ptr [BH_q, Tq, HEAD_DIM]; k_ptr, dk_ptr [BH_kv, Tk, HEAD_DIM]; v_ptr, dv_ptr [BH_kv, Tk, HEAD_DIM_V];
    dn_ptr [BH_q, Tq, HEAD_DIM_V] and delta_ptr [BH_q, Tq] fp32 from :func:`poly_flash_prep_kernel` (dn = do
    and no delta when not NORMALIZE); dk, dv stored in their tensors' dtype. GATED: gc_ptr [BH_kv, Tk] the
    cumulative gates, dgc_ptr [BH_kv, Tk] fp32 receives -sum_i dA_ij A_ij over the group's queries. The 1-D grid
    holds n_kblocks * BH_kv programs, key block 0 (the longest causal walk) first.
    """
    pid = tl.program_id(0)
    kb = pid % n_kblocks
    kvh = (pid // n_kblocks).to(tl.int64)
    o_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    o_dv = tl.arange(0, BLOCK_DV)
    b_k = _tile(k_ptr + kvh * Tk * HEAD_DIM, o_n, o_d, Tk, HEAD_DIM, BLOCK_D, True)  # [BN, BD]
    b_v = _tile(v_ptr + kvh * Tk * HEAD_DIM_V, o_n, o_dv, Tk, HEAD_DIM_V, BLOCK_DV, True)  # [BN, BDV]
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    dgk = tl.zeros([BLOCK_N], tl.float32)
    gq_ptr = gc_ptr + kvh * Tk
    gk = tl.zeros([BLOCK_N], tl.float32)
    if GATED:
        gk = tl.load(gq_ptr + o_n, mask=o_n < Tk, other=0.0)
    lo, a, b = _query_range(kb, Tq, Tk, n_qblocks, IS_CAUSAL, BLOCK_M, BLOCK_N)
    # three flat loops over (query head of the group, query block): nesting them in a loop over the group
    # spills at GROUP > 1 (576 B at D = 128)
    for run in tl.static_range(3):
        if run == 0:
            start, stop = lo, a
        elif run == 1:
            start, stop = a, b
        else:
            start, stop = b, n_qblocks
        n = stop - start
        for it in range(0, GROUP * n):
            g, qb = _group_item(it, start, n, GROUP)
            bh = kvh * GROUP + g
            dk, dv, dgk = _dkdv_tile(dk, dv, dgk, b_k, b_v, o_n, qb, q_ptr + bh * Tq * HEAD_DIM,
                                     dn_ptr + bh * Tq * HEAD_DIM_V, delta_ptr + bh * Tq, gk, gq_ptr, Tq, Tk, h0, h1,
                                     h2, h3, h4, h5, h6, h7, h8, DEGREE, IS_CAUSAL, GATED, NORMALIZE, HEAD_DIM,
                                     HEAD_DIM_V, BLOCK_M, BLOCK_D, BLOCK_DV, PRECISION, run != 1)
    if GATED:
        tl.store(dgc_ptr + kvh * Tk + o_n, dgk, mask=o_n < Tk)
    _store(dk_ptr + kvh * Tk * HEAD_DIM, dk, o_n, o_d, Tk, HEAD_DIM, BLOCK_D)
    _store(dv_ptr + kvh * Tk * HEAD_DIM_V, dv, o_n, o_dv, Tk, HEAD_DIM_V, BLOCK_DV)


@triton.jit
def _dq_tile(dq, dgq, b_q, b_dn, delta, o_m, kb, k_ptr, v_ptr, gq, gk_ptr, Tq, Tk, h0, h1, h2, h3, h4, h5, h6, h7,
             h8, DEGREE: tl.constexpr, IS_CAUSAL: tl.constexpr, GATED: tl.constexpr, NORMALIZE: tl.constexpr,
             HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """dq += dS k over key block kb; GATED: dS carries exp(G_i - G_j), and dgq [BM] += sum_j dA_ij A_ij (what G_i
    gets from the pairs its row sees)."""
    o_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    b_k = _tile(k_ptr, o_n, tl.arange(0, BLOCK_D), Tk, HEAD_DIM, BLOCK_D, MASKED)  # [BN, BD]
    b_v = _tile(v_ptr, o_n, tl.arange(0, BLOCK_DV), Tk, HEAD_DIM_V, BLOCK_DV, MASKED)  # [BN, BDV]
    b_x = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)  # [BM, BN]
    b_da = tl.dot(b_dn, tl.trans(b_v), input_precision=PRECISION)  # [BM, BN]
    if NORMALIZE:
        b_da -= delta[:, None]
    b_ds = _dg(b_x, h0, h1, h2, h3, h4, h5, h6, h7, h8, DEGREE) * b_da  # [BM, BN]
    seen = _seen(o_m, o_n, Tq, Tk, IS_CAUSAL)
    if GATED:
        b_e = _decay(gq, gk_ptr, o_n, Tk, seen, MASKED)
        b_ds = b_ds * b_e
        b_pa = b_da * _g(b_x, h0, h1, h2, h3, h4, h5, h6, h7, h8, DEGREE) * b_e
        if MASKED:
            b_pa = tl.where(seen, b_pa, 0.0)
        dgq += tl.sum(b_pa, 1)
    if MASKED:
        b_ds = tl.where(seen, b_ds, 0.0)
    return tl.dot(b_ds.to(b_k.dtype), b_k, dq, input_precision=PRECISION), dgq  # [BM, BD], [BM]


@triton.jit
def poly_flash_dq_kernel(q_ptr, k_ptr, v_ptr, dn_ptr, delta_ptr, dq_ptr, gc_ptr, dgr_ptr, h0, h1, h2, h3, h4, h5,
                         h6, h7, h8, Tq, Tk, n_qblocks, n_kblocks, GROUP: tl.constexpr, DEGREE: tl.constexpr,
                         IS_CAUSAL: tl.constexpr, GATED: tl.constexpr, NORMALIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """dq of one query block of one query head; dq_ptr [BH_q, Tq, HEAD_DIM] in its dtype; GATED: dgr_ptr [BH_q, Tq]
    fp32 receives sum_j dA_ij A_ij; the rest as in :func:`poly_flash_dkdv_kernel`; the grid as in
    :func:`poly_flash_fwd_kernel`."""
    pid = tl.program_id(0)
    qb = n_qblocks - 1 - pid % n_qblocks
    bh = (pid // n_qblocks).to(tl.int64)
    kvh = bh // GROUP
    k_ptr += kvh * Tk * HEAD_DIM
    v_ptr += kvh * Tk * HEAD_DIM_V
    o_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    b_q = _tile(q_ptr + bh * Tq * HEAD_DIM, o_m, o_d, Tq, HEAD_DIM, BLOCK_D, True)  # [BM, BD]
    b_dn = _tile(dn_ptr + bh * Tq * HEAD_DIM_V, o_m, tl.arange(0, BLOCK_DV), Tq, HEAD_DIM_V, BLOCK_DV,
                 True)  # [BM, BDV]
    delta = tl.zeros([BLOCK_M], tl.float32)
    if NORMALIZE:
        delta = tl.load(delta_ptr + bh * Tq + o_m, mask=o_m < Tq, other=0.0)
    gk_ptr = gc_ptr + kvh * Tk
    gq = tl.zeros([BLOCK_M], tl.float32)
    if GATED:
        gq = tl.load(gk_ptr + o_m, mask=o_m < Tq, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dgq = tl.zeros([BLOCK_M], tl.float32)
    clean, end = _key_range(qb, Tk, n_kblocks, IS_CAUSAL, BLOCK_M, BLOCK_N)
    for kb in range(0, clean):
        dq, dgq = _dq_tile(dq, dgq, b_q, b_dn, delta, o_m, kb, k_ptr, v_ptr, gq, gk_ptr, Tq, Tk, h0, h1, h2, h3, h4,
                           h5, h6, h7, h8, DEGREE, IS_CAUSAL, GATED, NORMALIZE, HEAD_DIM, HEAD_DIM_V, BLOCK_N, BLOCK_D,
                           BLOCK_DV, PRECISION, False)
    for kb in range(clean, end):
        dq, dgq = _dq_tile(dq, dgq, b_q, b_dn, delta, o_m, kb, k_ptr, v_ptr, gq, gk_ptr, Tq, Tk, h0, h1, h2, h3, h4,
                           h5, h6, h7, h8, DEGREE, IS_CAUSAL, GATED, NORMALIZE, HEAD_DIM, HEAD_DIM_V, BLOCK_N, BLOCK_D,
                           BLOCK_DV, PRECISION, True)
    if GATED:
        tl.store(dgr_ptr + bh * Tq + o_m, dgq, mask=o_m < Tq)
    _store(dq_ptr + bh * Tq * HEAD_DIM, dq, o_m, o_d, Tq, HEAD_DIM, BLOCK_D)


# -- host side ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Tiles of one call: (block_m, block_n, num_warps, num_stages) of the forward and of both backward kernels
    (block_m query rows, block_n key rows)."""

    fwd: tuple
    bwd: tuple


def plan(dtype, head_dim: int, head_dim_v: int, tuning: dict | None = None, gated: bool = False) -> Plan:
    """The tiles for ``dtype`` and the head dims; ``tuning`` {"fwd": (m, n, warps, stages), "bwd": ...} overrides
    them (sweeps and tests). fp32 tiles are smaller: its tiles take twice the bytes and its dots three passes.

    >>> plan(torch.bfloat16, 64, 64)
    Plan(fwd=(64, 64, 4, 3), bwd=(64, 64, 4, 3))
    """
    if dtype == torch.float32:
        # sm_90 compile without spills: 255 registers at D = 64 with these, and at D = 128 only with smaller tiles
        if max(head_dim, head_dim_v) > 64:
            p = Plan(fwd=(32, 32, 4, 1), bwd=(16, 16, 4, 1))
        else:
            p = Plan(fwd=(64, 32, 4, 2), bwd=(32, 16, 4, 2))
    else:
        # H200 sweep at 8K (RESULTS, run v19): forward 64-row tiles at d64 (0.55 ms against 0.61), 128 at d128
        p = Plan(fwd=(64, 64, 4, 3) if max(head_dim, head_dim_v) <= 64 else (128, 64, 8, 3), bwd=(64, 64, 4, 3))
        if gated and max(head_dim, head_dim_v) > 64:
            # sm_90 compile: the gated dk-dv kernel at d128 spills 192-240 B with 64 query rows (4 or 8 warps), none with 32
            p = Plan(fwd=p.fwd, bwd=(32, 64, 4, 3))
    tuning = dict(tuning or {})
    unknown = set(tuning) - {"fwd", "bwd"}
    if unknown:
        raise KernelError(f"tuning keys {sorted(unknown)} are not known; use 'fwd' and 'bwd'")
    for key, value in tuning.items():
        if (not isinstance(value, tuple) or len(value) != 4 or not all(isinstance(x, int) for x in value)
                or any(x < 1 for x in value) or any(x < 16 or x & (x - 1) for x in value[:2])):
            raise KernelError(f"tuning[{key!r}]={value!r} must be (block_m, block_n, warps, stages) with blocks "
                              "powers of two >= 16")
    return Plan(fwd=tuning.get("fwd", p.fwd), bwd=tuning.get("bwd", p.bwd))


def coefficients(poly, scale: float) -> tuple:
    """The nine Horner coefficients h0..h8 of g(x) = f(scale x), top first (h0 = a_p s^p), zero-padded, and p.

    >>> coefficients({0: 1.0, 1: 1.0, 2: 0.5}, 0.5)
    ((0.125, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), 2)
    """
    d = poly.as_dict() if hasattr(poly, "as_dict") else dict(poly)
    c = {int(j): float(a) for j, a in d.items() if float(a) != 0.0}
    p = max(c)
    if p > MAX_DEGREE:
        raise KernelError(f"f has degree {p} > {MAX_DEGREE}; the flash kernel takes at most {MAX_DEGREE + 1} "
                          "coefficients")
    h = [c.get(j, 0.0) * scale**j for j in range(p, -1, -1)]
    return tuple(h + [0.0] * (MAX_DEGREE + 1 - len(h))), p


def _pow2(n):
    return max(16, triton.next_power_of_2(n))


def _precision(dtype):
    # fp32 keeps fp32 accuracy through three tf32 passes on tensor cores (as the feature kernels' plan)
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _h(coefs):
    return {f"h{i}": c for i, c in enumerate(coefs)}


def _fwd_launch(q, k, v, o, z, coefs, degree, group, causal, normalize, fix_abs, eps, p: Plan, gc=None):
    """(kernel, grid, keywords) of the forward; q [BH_q, Tq, D], k [BH_kv, Tk, D], v [BH_kv, Tk, DV]; gc [BH_kv, Tk]
    fp32 cumulative log gates or None."""
    BHq, Tq, D = q.shape
    Tk, DV = k.shape[1], v.shape[-1]
    bm, bn, warps, stages = p.fwd
    nq, nk = triton.cdiv(Tq, bm), triton.cdiv(Tk, bn)
    kw = dict(q_ptr=q, k_ptr=k, v_ptr=v, o_ptr=o, z_ptr=z, gc_ptr=z if gc is None else gc, **_h(coefs),
              eps=float(eps), Tq=Tq, Tk=Tk, n_qblocks=nq, n_kblocks=nk, GROUP=group, DEGREE=degree, IS_CAUSAL=causal,
              GATED=gc is not None, NORMALIZE=normalize,
              FIX_ABS=fix_abs, HEAD_DIM=D, HEAD_DIM_V=DV, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=_pow2(D),
              BLOCK_DV=_pow2(DV), PRECISION=_precision(q.dtype), num_warps=warps, num_stages=stages)
    return poly_flash_fwd_kernel, (nq * BHq,), kw


def _prep_launch(o, do, z, dn, delta, fix_abs, eps):
    BHq, T, DV = o.shape
    bm = 64
    nb = triton.cdiv(T, bm)
    kw = dict(o_ptr=o, do_ptr=do, z_ptr=z, dn_ptr=dn, delta_ptr=delta, eps=float(eps), T=T, n_blocks=nb,
              FIX_ABS=fix_abs, HEAD_DIM_V=DV, BLOCK_M=bm, BLOCK_DV=_pow2(DV), num_warps=4)
    return poly_flash_prep_kernel, (nb * BHq,), kw


def _bwd_launches(q, k, v, dn, delta, dq, dk, dv, coefs, degree, group, causal, normalize, p: Plan, gc=None,
                  dgc=None, dgr=None):
    """[(kernel, grid, keywords)] of the dk-dv and dq kernels; with gates gc [BH_kv, Tk], the gate-gradient parts
    dgc [BH_kv, Tk] and dgr [BH_q, Tq] (fp32) they write."""
    BHq, Tq, D = q.shape
    BHk, Tk, DV = k.shape[0], k.shape[1], v.shape[-1]
    bm, bn, warps, stages = p.bwd
    nq, nk = triton.cdiv(Tq, bm), triton.cdiv(Tk, bn)
    common = dict(q_ptr=q, k_ptr=k, v_ptr=v, dn_ptr=dn, delta_ptr=delta, gc_ptr=delta if gc is None else gc,
                  **_h(coefs), Tq=Tq, Tk=Tk, n_qblocks=nq, n_kblocks=nk, GROUP=group, DEGREE=degree, IS_CAUSAL=causal,
                  GATED=gc is not None, NORMALIZE=normalize, HEAD_DIM=D,
                  HEAD_DIM_V=DV, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=_pow2(D), BLOCK_DV=_pow2(DV),
                  PRECISION=_precision(q.dtype), num_warps=warps, num_stages=stages)
    return [(poly_flash_dkdv_kernel, (nk * BHk,), dict(common, dk_ptr=dk, dv_ptr=dv,
                                                       dgc_ptr=delta if dgc is None else dgc)),
            (poly_flash_dq_kernel, (nq * BHq,), dict(common, dq_ptr=dq, dgr_ptr=delta if dgr is None else dgr))]


def _run(kernel, grid, kw):
    kernel[grid](**kw)


class PolyFlash(torch.autograd.Function):
    """o = f(s Q K^T) V [/ z] for q [BH_q, Tq, D], k [BH_kv, Tk, D], v [BH_kv, Tk, DV], contiguous; with a log gate
    g [BH_kv, Tk] (<= 0, causal) each pair (i, j) also carries exp(g_{j+1} + ... + g_i).

    ``coefs``, ``degree`` from :func:`coefficients`; ``group`` = BH_q / BH_kv; ``fix_abs`` divides by
    |z| + eps. Backward returns dq, dk, dv in the inputs' dtype and dg in g's.
    """

    @staticmethod
    def forward(ctx, q, k, v, g, coefs, degree, group, causal, normalize, fix_abs, eps, p):
        BHq, Tq, _ = q.shape
        o = _empty((BHq, Tq, v.shape[-1]), q.device, q.dtype)
        z = _empty((BHq, Tq) if normalize else (1,), q.device, torch.float32)
        gc = None if g is None else _cumulative(g)
        _run(*_fwd_launch(q, k, v, o, z, coefs, degree, group, causal, normalize, fix_abs, eps, p, gc))
        ctx.save_for_backward(q, k, v, o, z, gc)
        ctx.args = (coefs, degree, group, causal, normalize, fix_abs, eps, p, None if g is None else g.dtype)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, z, gc = ctx.saved_tensors
        coefs, degree, group, causal, normalize, fix_abs, eps, p, gdtype = ctx.args
        do = do.contiguous()
        if normalize:
            dn = _empty(do.shape, do.device, do.dtype)
            delta = _empty(z.shape, do.device, torch.float32)
            _run(*_prep_launch(o, do, z, dn, delta, fix_abs, eps))
        else:
            dn, delta = do, z
        dq, dk, dv = (_empty(x.shape, x.device, x.dtype) for x in (q, k, v))
        dgc = dgr = None
        if gc is not None:
            dgc = _empty(gc.shape, q.device, torch.float32)
            dgr = _empty(q.shape[:2], q.device, torch.float32)
        for launch in _bwd_launches(q, k, v, dn, delta, dq, dk, dv, coefs, degree, group, causal, normalize, p, gc,
                                    dgc, dgr):
            _run(*launch)
        dg = None
        if gc is not None:
            # dL/dG_t: what row t's pairs give (summed over the group's query heads) less what key t's pairs give;
            # G_t = g_1 + ... + g_t, so dg_m = sum_{t >= m} dL/dG_t
            dG = dgr.view(gc.shape[0], group, -1).sum(1) + dgc
            dg = dG.flip(-1).cumsum(-1).flip(-1).to(gdtype)
        return dq, dk, dv, dg, None, None, None, None, None, None, None, None


def _cumulative(g):
    """G = cumsum(max(g, GATE_FLOOR)) [BH, T] fp32, summed in float64: each G_t is then off by at most |G_t| 2^-24,
    so a pair's decay exp(G_i - G_j) by at most (|G_i| + |G_j|) 2^-24 relative."""
    from fastattn.kernels.gated import GATE_FLOOR

    return g.double().clamp_min(GATE_FLOOR).cumsum(-1).float().contiguous()


def _check(q, k, v, is_causal):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise KernelError(f"{name} must be a [B, H, T, D] tensor; got "
                              f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    (B, Hq, Tq, D), (Bk, Hk, Tk, Dk), (Bv, Hv, Tv, DV) = q.shape, k.shape, v.shape
    if not (B == Bk == Bv) or Dk != D or (Hv, Tv) != (Hk, Tk):
        raise KernelError(f"expected q [B, H_q, T_q, D], k [B, H_kv, T_k, D], v [B, H_kv, T_k, DV]; got q "
                          f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if Hk < 1 or Hq % Hk:
        raise KernelError(f"H_q={Hq} must be a multiple of H_kv={Hk} (query head h reads key head h // (H_q/H_kv))")
    if not (1 <= D <= 128 and 1 <= DV <= 128):
        raise KernelError(f"head dims D={D}, DV={DV} must lie in 1..128 for the flash kernel; use fast_attention")
    if is_causal and Tq != Tk:
        raise KernelError(f"is_causal=True needs T_q == T_k; got T_q={Tq}, T_k={Tk}: pass is_causal=False")
    if Tq and not Tk:
        raise KernelError(f"T_k=0: the {Tq} queries see no key; pass at least one key")
    if max(Tq, Tk) * max(D, DV) >= 2**31:
        raise KernelError(f"T * head dim = {max(Tq, Tk) * max(D, DV):,} >= 2**31: the in-head offsets are int32")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise KernelError(f"q, k, v must share one dtype of float32, float16, bfloat16; got {q.dtype}, {k.dtype}, "
                          f"{v.dtype}")
    if not (q.device == k.device == v.device):
        raise KernelError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if not (q.is_cuda or interpret):
        raise KernelError(f"the flash kernel needs CUDA tensors (got device {q.device}) or TRITON_INTERPRET=1")
    if interpret and q.dtype == torch.bfloat16:
        raise KernelError("bfloat16 under TRITON_INTERPRET=1: the interpreter's bf16 dot is wrong; use float32")


def poly_flash_attention(q, k, v, poly, *, scale=None, is_causal=True, normalize=True, normalizer_fix=None,
                         eps=1e-6, g=None, tuning=None):
    """o_i = sum_{j in M(i)} f(s q_i.k_j) v_j [/ sum_{j in M(i)} f(s q_i.k_j)], quadratic in T, flash-style.

    Parameters
    ----------
    q : tensor [B, H_q, T_q, D]
    k : tensor [B, H_kv, T_k, D]
    v : tensor [B, H_kv, T_k, DV]
        One dtype (float32, float16, bfloat16) on a CUDA device (or the CPU under ``TRITON_INTERPRET=1``, no
        bfloat16), D and DV <= 128; H_q a multiple of H_kv (query head h reads key/value head h // (H_q/H_kv)).
    poly : Polynomial or dict {j: a_j}
        f, of degree <= 8 (:func:`fastattn.kernels.poly.polynomial`).
    scale : float, optional
        s; default 1/sqrt(D).
    is_causal : bool
        Query i sees keys j <= i (then T_q == T_k); non-causal calls allow T_q != T_k.
    normalize, normalizer_fix, eps
        As in :func:`fastattn.attention.fast_attention`: the denominator is z, or |z| + eps
        (:func:`fastattn.kernels.poly.check_normalizer`, which refuses an f that is negative somewhere
        unless ``normalizer_fix="abs"``). A denominator that comes out <= 0 or not finite (rounding,
        overflow) gives a NaN row; no host-side check is made.
    g : tensor [B, H_kv, T], optional
        Log forget gate (<= 0; -inf and anything below :data:`fastattn.kernels.gated.GATE_FLOOR` count as the
        floor), causal only: pair (i, j) is weighted by exp(g_{j+1} + ... + g_i), as in
        :func:`fastattn.attention.fast_attention`. Differentiable. The cumulative sums are formed in float64 and
        kept in fp32, so a decay is off by at most (|G_i| + |G_j|) 2^-24 relative (G the cumulative gate).
    tuning : dict, optional
        Private tile overrides for sweeps and tests (:func:`plan`).

    Returns
    -------
    tensor [B, H_q, T_q, DV] in q's dtype.

    Examples
    --------
    >>> import os, torch
    >>> from fastattn.kernels.poly import polynomial
    >>> q, k, v = torch.randn(1, 4, 50, 16), torch.randn(1, 2, 50, 16), torch.randn(1, 2, 50, 8)
    >>> if os.environ.get("TRITON_INTERPRET") == "1":  # GQA: 4 query heads on 2 key/value heads
    ...     assert poly_flash_attention(q, k, v, polynomial("x**2"), scale=0.25).shape == (1, 4, 50, 8)
    """
    from fastattn.kernels.naive import is_finite_real
    from fastattn.kernels.poly import polynomial

    poly = polynomial(poly)
    fix = check_normalizer(poly, normalize, normalizer_fix)
    _check(q, k, v, is_causal)
    if scale is not None and not is_finite_real(scale):
        raise KernelError(f"scale={scale!r} must be a finite real number (or None for 1/sqrt(D))")
    if not (is_finite_real(eps) and float(eps) > 0):
        raise KernelError(f"eps={eps!r} must be a finite real number > 0")
    B, Hq, Tq, D = q.shape
    Hk, Tk, DV = k.shape[1], k.shape[2], v.shape[-1]
    if g is not None:
        if not is_causal:
            raise KernelError("a gate g needs is_causal=True (it decays what came before)")
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != (B, Hk, Tk) or not g.dtype.is_floating_point:
            raise KernelError(f"g must be a real float tensor [B, H_kv, T] = {(B, Hk, Tk)}; got "
                              f"{tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__}")
        if g.device != q.device:
            raise KernelError(f"g is on {g.device}, q on {q.device}: put them on one device")
    if Tq == 0:
        zero = (q.sum() + k.sum() + v.sum()) * 0 + (0 if g is None else g.sum() * 0)
        return q.new_zeros(B, Hq, 0, DV) + zero
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    coefs, degree = coefficients(poly, scale)
    p = plan(q.dtype, D, DV, tuning, gated=g is not None)
    o = PolyFlash.apply(q.reshape(B * Hq, Tq, D).contiguous(), k.reshape(B * Hk, Tk, D).contiguous(),
                        v.reshape(B * Hk, Tk, DV).contiguous(), None if g is None else g.reshape(B * Hk, Tk),
                        coefs, degree, Hq // Hk, bool(is_causal), bool(normalize), fix == "abs" and bool(normalize),
                        float(eps), p)
    return o.view(B, Hq, Tq, DV)


def cost(T: int, D: int, DV: int, causal: bool = True) -> dict:
    """Matmul FLOPs these kernels execute at T_q = T_k = T: {"fwd", "bwd", "fwdbwd"}.

    Forward: Q K^T and A V, 2 T^2 (D + DV). Backward: the dk-dv kernel recomputes Q K^T and forms dn V^T, A^T dn,
    dS^T Q; the dq kernel recomputes Q K^T and dn V^T and forms dS K: 2 T^2 (4 D + 3 DV). Causal counts the
    T (T + 1) / 2 pairs on or below the diagonal. The Horner steps (2 p FLOPs per pair and direction) are not
    counted.

    >>> cost(1024, 64, 64, causal=False)["fwd"] == 4 * 1024**2 * 64
    True
    """
    pairs = T * (T + 1) / 2 if causal else float(T * T)
    fwd = 2 * pairs * (D + DV)
    bwd = 2 * pairs * (4 * D + 3 * DV)
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}


# -- sm_90 compile check --------------------------------------------------------------------------------------------
def compile_kernels(*, head_dim=64, head_dim_v=64, dtype="bf16", causal=True, normalize=True, T=4096, group=1,
                    degree=2, tuning=None, arch=90, gated=False) -> dict:
    """{"kernel": "REG:n STACK:n SHARED:n SMEM:n"} for the four launches the host makes, compiled (not run) for
    sm_``arch`` from the same launch records (:func:`_fwd_launch`, :func:`_bwd_launches`)."""
    os.environ.pop("TRITON_INTERPRET", None)
    from fastattn.kernels.aot import _resources
    from fastattn.kernels.sparse.aot import _build

    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    q = torch.zeros(2 * group, T, head_dim, dtype=tdt)
    k = torch.zeros(2, T, head_dim, dtype=tdt)
    v = torch.zeros(2, T, head_dim_v, dtype=tdt)
    o = torch.zeros(2 * group, T, head_dim_v, dtype=tdt)
    row = torch.zeros(2 * group, T)
    coefs = tuple([0.5] * (MAX_DEGREE + 1))
    p = plan(tdt, head_dim, head_dim_v, tuning, gated=gated)
    gc = torch.zeros(2, T) if gated else None
    launches = [_fwd_launch(q, k, v, o, row, coefs, degree, group, causal, normalize, False, 1e-6, p, gc),
                _prep_launch(o, o, row, o, row, False, 1e-6)]
    launches += _bwd_launches(q, k, v, o, row, q, k, v, coefs, degree, group, causal, normalize, p, gc, gc, row)
    report = {}
    for kernel, grid, kw in launches:
        kern = _build(kernel, kw, arch)
        report[kernel.__name__] = f"{_resources(kern.asm['cubin'])} SMEM:{kern.metadata.shared}"
    return report


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="compile the polynomial flash kernels for sm_90 (no GPU needed)")
    ap.add_argument("--aot", action="store_true", help="compile and print registers, spills, shared memory")
    ap.add_argument("--dtype", nargs="+", default=["bf16", "fp32"], choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--head-dim", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--group", type=int, default=1)
    args = ap.parse_args(argv)
    if not args.aot:
        ap.print_help()
        return 0
    for dtype in args.dtype:
        for d in args.head_dim:
            for name, res in compile_kernels(head_dim=d, head_dim_v=d, dtype=dtype, group=args.group).items():
                print(f"{dtype} D=DV={d:<4d} {name:24s} {res}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
