# >>> header
"""Polynomial linear attention, f(x) = x (the template's default; codegen replaces this block).

o_i = sum_{j in M(i)} f(s q_i.k_j) v_j  [ / sum_{j in M(i)} f(s q_i.k_j) ]
"""
COEFFS = {1: 1.0}
COEFFS_TEXT = "x"
POSITIVE_ON_REALS = False
POSITIVITY_REASON = "f(x) = x is negative for x < 0"
DEFAULTS = {"causal": True, "normalize": False, "scale": None, "normalizer_fix": None}
# <<< header
# This file is the template that fastattn.kernels.codegen fills in: the blocks between
# ">>> name" and "<<< name" markers are replaced by code generated from the coefficients
# of f; everything else is the same for every f. Layout top-down: spec-specific device
# functions, shared jit kernels, feature tables, host fwd/bwd, autograd Function, public
# function, nn.Module. It imports only torch and triton (plus the standard library).

import itertools
import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["COEFFS", "feature_tables", "feature_dim", "poly_attention", "PolyAttention", "PolyAttentionFunction"]


# >>> device_functions
@triton.jit
def _f(x):
    # f(x) = x by Horner on the tile
    y = x * 0.0 + 1.0
    y = y * x
    return y


@triton.jit
def _df(x):
    # f'(x) = 1 by Horner on the tile
    y = x * 0.0 + 1.0
    return y


@triton.jit
def _phi(b_x, m_t, p_idx, o_f, F_PAD, b_w, BD: tl.constexpr, PRECISION: tl.constexpr):
    # feature f of row t is b_w[f] * prod_m x[t, idx[m, f]] (symmetric basis, one slot per
    # factor); idx -1 means "no factor" and gives 1. The gather x[:, idx] is a matmul with
    # a one-hot [BD, BF] matrix: exact, on tensor cores, from the coalesced [BT, BD] tile.
    DT = b_x.dtype
    o_d = tl.arange(0, BD)
    i_0 = tl.load(p_idx + 0 * F_PAD + o_f)  # [BF]
    b_x0 = tl.dot(b_x, (o_d[:, None] == i_0[None, :]).to(DT), input_precision=PRECISION)  # [BT, BF]
    b_x0 += (i_0 < 0).to(tl.float32)[None, :]
    b_phi = b_x0 * b_w[None, :]  # [BT, BF]
    # padded rows must not leak into the running sums of psi (the normaliser state)
    return tl.where(m_t[:, None], b_phi, 0.0)


@triton.jit
def _phi_vjp(b_x, p_idx, o_f, F_PAD, b_w, b_dphi, BD: tl.constexpr, PRECISION: tl.constexpr):
    # d/dx[a] prod_m x[idx_m] = sum_m [idx_m == a] prod_{m' != m} x[idx_m']: the scatter onto
    # the head dim is a matmul with the transposed one-hot matrix (no atomics)
    DT = b_x.dtype
    o_d = tl.arange(0, BD)
    b_g = b_dphi * b_w[None, :]  # [BT, BF]
    i_0 = tl.load(p_idx + 0 * F_PAD + o_f)  # [BF]
    b_x0 = tl.dot(b_x, (o_d[:, None] == i_0[None, :]).to(DT), input_precision=PRECISION)  # [BT, BF]
    b_x0 += (i_0 < 0).to(tl.float32)[None, :]
    b_dx = tl.zeros([b_x.shape[0], BD], dtype=tl.float32)
    b_dx = tl.dot((b_g).to(DT), tl.trans((o_d[:, None] == i_0[None, :]).to(DT)), b_dx, input_precision=PRECISION)  # [BT, BD]
    return b_dx


@triton.jit
def _phi_ld(p_x, o_t, m_t, D, p_idx, o_f, F_PAD, b_w):
    # _phi gathered straight from memory: x[t, idx[m, f]] loaded per feature (the chunk's
    # [BT, D] rows are in L1 after the coalesced tile load), no one-hot matmuls or registers
    i_0 = tl.load(p_idx + 0 * F_PAD + o_f)  # [BF]
    b_x0 = tl.load(p_x + o_t[:, None] * D + i_0[None, :], mask=m_t[:, None] & (i_0 >= 0)[None, :], other=1.0).to(tl.float32)  # [BT, BF]
    b_phi = b_x0 * b_w[None, :]  # [BT, BF]
    return tl.where(m_t[:, None], b_phi, 0.0)
# <<< device_functions


# ----------------------------------------------------------------------------------------
# Block-Kronecker features for polynomials of degree 2 (shared by every f; the host picks
# them when the feature map is too large for the fused path). With x' = [x, 1],
#   a0 + a1 s (q.k) + a2 s^2 (q.k)^2 = sum over tiles of <phi_tile(q), psi_tile(k)>.
# The head dim is cut into blocks of KA columns; every pair of blocks h1 <= h2 is a "group" of
# KA x KA products x[h1] (x) x[h2] (weight 2 off the diagonal, since (q.k)^2 = sum over all
# pairs), and a tile packs KG groups: its ktab row lists the KG * KA columns of its left
# factors, then those of its right ones, so a tile is one broadcast product of two gathered
# [BT, KG * KA] slices (no one-hot matmuls). Columns from D on read as 0, except the first
# KA-aligned one past D, which reads as 1: the constant a0 is the group [1] (x) [1], and the
# padding groups sit past it. Every list is KG aligned runs of KA (the loads stay vectorised).
# Degree <= 1 terms ride on "low" tiles (ktab row (-1, c0)): columns c0 .. c0+BF of x'. The
# default group is 8 (one 8 x 8 product per 64-feature tile); groups of 4 fill the diagonal blocks'
# slots too (36 tiles instead of 38 at D = 64) but their 4-D broadcast costs as much as it saves
# (see _kron_group).
# ----------------------------------------------------------------------------------------
@triton.jit
def _cols(p_x, o_t, m_t, D, o_c, one):
    # columns o_c of the rows o_t of x (fp32): column `one` reads as 1, columns from D on as 0
    b_x = tl.load(p_x + o_t[:, None] * D + o_c[None, :], mask=m_t[:, None] & (o_c < D)[None, :],
                  other=0.0).to(tl.float32)  # [BT, len(o_c)]
    return tl.where(m_t[:, None] & (o_c == one)[None, :], 1.0, b_x)


@triton.jit
def _group_cols(ktab, off, KG: tl.constexpr, KA: tl.constexpr):
    # the KG * KA columns listed at ktab[off]: KG aligned runs of KA, which the hints tell the
    # compiler so the loads stay vectorised (one group: the run's start plus an arange)
    if KG == 1:
        c = tl.load(ktab + off) + tl.arange(0, KA)
    else:
        c = tl.max_contiguous(tl.multiple_of(tl.load(ktab + off + tl.arange(0, KG * KA)), KA), KA)
    return c


@triton.jit
def _kron_factors(p_x, ktab, o_t, m_t, D, I0, KG: tl.constexpr, KA: tl.constexpr):
    # the two [BT, KG * KA] factor slices of the Kronecker tile whose column lists start at
    # ktab[I0], and the lists themselves; the constant's column is the first aligned one past D
    c_l = _group_cols(ktab, I0, KG, KA)
    c_r = _group_cols(ktab, I0 + KG * KA, KG, KA)
    one = (D + KA - 1) // KA * KA
    return _cols(p_x, o_t, m_t, D, c_l, one), _cols(p_x, o_t, m_t, D, c_r, one), c_l, c_r


@triton.jit
def _add_cols(p_dx, o_t, m_t, D, o_c, b_g):
    # p_dx[o_t, o_c] += b_g by relaxed atomics (several tiles, and several groups of one tile, add
    # into the same columns; the sums are read only after the kernel), columns from D on dropped
    tl.atomic_add(p_dx + o_t[:, None] * D + o_c[None, :], b_g, mask=m_t[:, None] & (o_c < D)[None, :],
                  sem="relaxed")


@triton.jit
def _kron_phi(p_x, ktab, o_t, m_t, D, I0, J0, b_w, BT: tl.constexpr, KG: tl.constexpr, KA: tl.constexpr):
    # in the input dtype (the dot operand): products are formed in fp32 and rounded once, and
    # the 16-bit tile takes half the registers of an fp32 one
    DT = p_x.dtype.element_ty
    if I0 < 0:
        b_phi = (_cols(p_x, o_t, m_t, D, J0 + tl.arange(0, KG * KA * KA), D) * b_w[None, :]).to(DT)  # [BT, BF]
    else:
        b_l, b_r, c_l, c_r = _kron_factors(p_x, ktab, o_t, m_t, D, I0, KG, KA)
        if KG == 1:
            b_p = b_l[:, :, None] * b_r[:, None, :]
        else:
            b_p = tl.reshape(b_l, (BT, KG, KA))[:, :, :, None] * tl.reshape(b_r, (BT, KG, KA))[:, :, None, :]
        b_phi = (tl.reshape(b_p, (BT, KG * KA * KA)) * b_w[None, :]).to(DT)
    return b_phi


@triton.jit
def _kron_vjp_add(p_x, p_dx, ktab, o_t, m_t, D, I0, J0, b_w, b_dphi, dxg, dxl, i_bh, t0, BT: tl.constexpr,
                  KG: tl.constexpr, KA: tl.constexpr, TMA_ADD: tl.constexpr):
    # dx += J_phi(x)^T dphi for one tile, added by atomics into the fp32 rows of p_dx: a low
    # tile is the identity on its columns; in a group, d/dl_i = sum_j g_ij r_j and
    # d/dr_j = sum_i g_ij l_i (the two column lists may share columns). With TMA_ADD (one group
    # per tile) the adds are TMA reduces through dxl ([1, BT, BF] boxes) and dxg ([1, BT, KA]):
    # columns from D on (the constant's, the padding's) fall outside the descriptor and drop
    b_g = b_dphi * b_w[None, :]  # [BT, BF]
    if I0 < 0:
        if TMA_ADD:
            dxl.atomic_add([i_bh, t0, J0], b_g[None, :, :])
        else:
            _add_cols(p_dx, o_t, m_t, D, J0 + tl.arange(0, KG * KA * KA), b_g)
    else:
        b_l, b_r, c_l, c_r = _kron_factors(p_x, ktab, o_t, m_t, D, I0, KG, KA)
        if KG == 1:
            b_g3 = tl.reshape(b_g, (BT, KA, KA))
            b_dl = tl.sum(b_g3 * b_r[:, None, :], 2)  # [BT, KA]
            b_dr = tl.sum(b_g3 * b_l[:, :, None], 1)
            if TMA_ADD:
                dxg.atomic_add([i_bh, t0, tl.load(ktab + I0)], b_dl[None, :, :])
                dxg.atomic_add([i_bh, t0, tl.load(ktab + I0 + KA)], b_dr[None, :, :])
            else:
                _add_cols(p_dx, o_t, m_t, D, c_l, b_dl)
                _add_cols(p_dx, o_t, m_t, D, c_r, b_dr)
        else:
            b_g4 = tl.reshape(b_g, (BT, KG, KA, KA))
            b_dl = tl.sum(b_g4 * tl.reshape(b_r, (BT, KG, KA))[:, :, None, :], 3)  # [BT, KG, KA]
            b_dr = tl.sum(b_g4 * tl.reshape(b_l, (BT, KG, KA))[:, :, :, None], 2)
            _add_cols(p_dx, o_t, m_t, D, c_l, tl.reshape(b_dl, (BT, KG * KA)))
            _add_cols(p_dx, o_t, m_t, D, c_r, tl.reshape(b_dr, (BT, KG * KA)))


@triton.jit
def _tile_origin(ktab, i_f, KRON: tl.constexpr, KG: tl.constexpr, KA: tl.constexpr):
    # (I0, J0) of feature tile i_f on the Kronecker layout: (-1, c0) for a low tile, else the
    # offset in ktab of the tile's column lists (rows are 2 + 2 * KG * KA long); 0s otherwise
    if KRON:
        I0 = tl.load(ktab + (2 + 2 * KG * KA) * i_f)
        J0 = tl.load(ktab + (2 + 2 * KG * KA) * i_f + 1)
    else:
        I0 = i_f * 0
        J0 = i_f * 0
    return I0, J0


@triton.jit
def _feat(p_x, o_t, m_t, D, idx, o_f, F_PAD, b_w, I0, J0, BT: tl.constexpr, BD: tl.constexpr,
          PRECISION: tl.constexpr, KRON: tl.constexpr, KG: tl.constexpr, KA: tl.constexpr):
    # the [BT, BF] feature tile of rows o_t: Kronecker tiles, or the symmetric basis (_phi)
    if KRON:
        return _kron_phi(p_x, idx, o_t, m_t, D, I0, J0, b_w, BT, KG, KA)
    else:
        o_d = tl.arange(0, BD)
        b_x = tl.load(p_x + o_t[:, None] * D + o_d[None, :], mask=m_t[:, None] & (o_d < D)[None, :], other=0.0)
        return _phi(b_x, m_t, idx, o_f, F_PAD, b_w, BD, PRECISION)


@triton.jit
def _feat_vjp_add(p_x, p_dx, o_t, m_t, D, idx, o_f, F_PAD, b_w, b_dphi, I0, J0, dxg, dxl, i_bh, t0,
                  ATOMIC: tl.constexpr, TMA_ADD: tl.constexpr,
                  BT: tl.constexpr, BD: tl.constexpr, PRECISION: tl.constexpr, KRON: tl.constexpr,
                  KG: tl.constexpr, KA: tl.constexpr):
    # dx (fp32 rows at p_dx) += J_feat(x)^T dphi for the tile of _feat
    if KRON:
        _kron_vjp_add(p_x, p_dx, idx, o_t, m_t, D, I0, J0, b_w, b_dphi, dxg, dxl, i_bh, t0, BT, KG, KA, TMA_ADD)
    else:
        o_d = tl.arange(0, BD)
        m_x = m_t[:, None] & (o_d < D)[None, :]
        b_x = tl.load(p_x + o_t[:, None] * D + o_d[None, :], mask=m_x, other=0.0)
        b_dx = _phi_vjp(b_x, idx, o_f, F_PAD, b_w, b_dphi, BD, PRECISION)  # [BT, BD]
        _accumulate(p_dx + o_t[:, None] * D + o_d[None, :], b_dx, m_x, ATOMIC)


# ----------------------------------------------------------------------------------------
# Shared kernels. Per (batch*head) the sequence is cut into chunks of BT tokens.
#   intra: inside a chunk, f on the [BT, BT] score tile (Horner), masked, times V;
#          one program per (chunk, batch*head), all chunks in parallel.
#   inter: across chunks, the state S = sum_j psi(k_j) v_j^T (and z = sum_j psi(k_j)),
#          one program per (feature tile, v tile, batch*head) that keeps its [BF, BV] slice
#          of S in registers while it walks the chunks, so no state ever goes to HBM;
#          partial outputs from several feature tiles meet in an fp32 buffer by atomic adds.
# ----------------------------------------------------------------------------------------
@triton.jit
def _intra_fwd_kernel(q, k, v, o, z, vs, scale, T, D, DV, NC,
                      BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
                      NORMALIZE: tl.constexpr, PRECISION: tl.constexpr, CONST: tl.constexpr = False):
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64 = i_bh.to(tl.int64)
    o_t = (i_c * BT + tl.arange(0, BT)).to(tl.int64)
    m_t = o_t < T
    o_d = tl.arange(0, BD)
    o_v = tl.arange(0, BV)
    m_d = o_d < D
    m_v = o_v < DV
    p_q = q + i_bh64 * T * D + o_t[:, None] * D + o_d[None, :]
    p_k = k + i_bh64 * T * D + o_t[:, None] * D + o_d[None, :]
    p_v = v + i_bh64 * T * DV + o_t[:, None] * DV + o_v[None, :]
    b_q = tl.load(p_q, mask=m_t[:, None] & m_d[None, :], other=0.0)  # [BT, BD]
    b_k = tl.load(p_k, mask=m_t[:, None] & m_d[None, :], other=0.0)  # [BT, BD]
    b_v = tl.load(p_v, mask=m_t[:, None] & m_v[None, :], other=0.0)  # [BT, BV]
    b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * scale  # [BT, BT]
    m_a = (o_t[:, None] >= o_t[None, :]) & m_t[None, :]
    b_a = tl.where(m_a, _f(b_s), 0.0)  # [BT, BT]
    b_o = tl.dot(b_a.to(b_v.dtype), b_v, input_precision=PRECISION)  # [BT, BV]
    p_o = o + i_bh64 * T * DV + o_t[:, None] * DV + o_v[None, :]
    tl.store(p_o, b_o, mask=m_t[:, None] & m_v[None, :])
    if NORMALIZE:
        tl.store(z + i_bh64 * T + o_t, tl.sum(b_a, 1), mask=m_t)
    if CONST:
        # the chunk's sum of v, for the constant term the scans leave out (kron_const_out)
        tl.store(vs + (i_bh64 * NC + i_c) * DV + o_v, tl.sum(b_v.to(tl.float32), 0), mask=m_v)  # [BV]


@triton.jit
def _accumulate(p, b, mask, ATOMIC: tl.constexpr):
    # add a partial result into an fp32 buffer: by atomics where several programs share the
    # slice (several feature or v tiles), else by a plain read-modify-write
    # (relaxed: the sums are read only after the kernel ends, so no ordering is needed, and
    # the default acq_rel fences every add)
    if ATOMIC:
        tl.atomic_add(p, b, mask=mask, sem="relaxed")
    else:
        tl.store(p, tl.load(p, mask=mask, other=0.0) + b, mask=mask)


@triton.jit
def _chunk_rows(i_c, BT: tl.constexpr, WIDE: tl.constexpr):
    # the token rows of chunk i_c: int32 unless T * max(D, DV) reaches 2^31 (WIDE). int32 rows
    # halve the registers of every [BT, n] offset tile (ptxas, triton 3.6, sm_90: the Kronecker
    # backward's dk / dv walk spilled 448 bytes per thread with int64 rows, 104 with int32)
    if WIDE:
        o_t = (i_c * BT + tl.arange(0, BT)).to(tl.int64)
    else:
        o_t = i_c * BT + tl.arange(0, BT)
    return o_t


@triton.jit
def _ld_rows(p, desc, i_bh, t0, c0, o_t, m_t, o_v, m_v, DV, BT: tl.constexpr, BV: tl.constexpr, TMA: tl.constexpr):
    # the [BT, BV] tile (rows o_t = t0.., columns o_v = c0..) of one sequence's [T, DV] rows at p:
    # by a TMA descriptor over [batch*head, T, DV] (zeros past T), or by masked pointer loads.
    # TMA keeps no [BT, BV] tile of 64-bit addresses in registers: ptxas (triton 3.6, sm_90)
    # put the Kronecker forward scan at 776 bytes of spills per thread with pointer loads and
    # atomics, 0 with descriptors
    if TMA:
        b = tl.reshape(desc.load([i_bh, t0, c0]), (BT, BV))
    else:
        b = tl.load(p + o_t[:, None] * DV + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
    return b


@triton.jit
def _add_rows(p, desc, i_bh, t0, c0, o_t, m_t, o_v, m_v, DV, b, ATOMIC: tl.constexpr, TMA: tl.constexpr):
    # the fp32 rows at p (as _ld_rows) += b: a TMA reduce-add (rows past T dropped), else _accumulate
    if TMA:
        desc.atomic_add([i_bh, t0, c0], b[None, :, :])
    else:
        _accumulate(p + o_t[:, None] * DV + o_v[None, :], b, m_t[:, None] & m_v[None, :], ATOMIC)


@triton.jit
def _hilo16(x, BR: tl.constexpr, DT):
    # [BR] fp32 -> [BR, 16] in the dot dtype: column 0 its rounding to DT, column 1 the remainder,
    # zeros elsewhere, so a row sum of an MMA against it keeps ~fp32 precision in 16-bit dots
    col = tl.arange(0, 16)[None, :]
    hi = x.to(DT).to(tl.float32)
    b = tl.where(col == 0, hi[:, None], tl.where(col == 1, (x - hi)[:, None], 0.0))
    return b.to(DT)


@triton.jit
def _zs_acc(b_zs, BF: tl.constexpr):
    # the [BF] normaliser state as the [BF, 16] MMA accumulator of _colsum_mma (every column the state)
    return b_zs[:, None] + tl.zeros([BF, 16], dtype=tl.float32)


@triton.jit
def _zs_of(b_acc):
    # the [BF] normaliser state held in column 0 of a _zs_acc accumulator
    return tl.sum(tl.where(tl.arange(0, 16)[None, :] == 0, b_acc, 0.0), 1)


@triton.jit
def _colsum_mma(b_feat, b_acc, BT: tl.constexpr, PRECISION: tl.constexpr):
    # b_acc [BF, 16] += feat^T 1: the column sums of a [BT, BF] feature tile (every column of
    # b_acc the same), by an MMA on the operand the state update already holds. A tl.sum of the
    # tile wants it in a second layout, and the compiler then built the Kronecker product twice
    return tl.dot(tl.trans(b_feat), tl.full([BT, 16], 1.0, b_feat.dtype), b_acc, input_precision=PRECISION)


@triton.jit
def _rowdot_mma(b_feat, b_acc, BF: tl.constexpr, PRECISION: tl.constexpr):
    # feat @ zs for a [BT, BF] tile and zs = column 0 of b_acc [BF, 16], by one MMA
    return tl.sum(tl.dot(b_feat, _hilo16(_zs_of(b_acc), BF, b_feat.dtype), input_precision=PRECISION), 1)


@triton.jit
def _carried_state(S0, Z0, o_seg, F_PAD, DV, o_f, o_v, m_v, m_z, BF: tl.constexpr, BV: tl.constexpr,
                   USE_SEG: tl.constexpr, NORMALIZE: tl.constexpr):
    # the [BF, BV] state slice and [BF] normaliser state a walk starts from: the state carried in
    # from the other segments (row o_seg of S0, Z0; Z0 only where m_z), else zeros. Z0 is read only
    # when normalising: otherwise the host passes a placeholder buffer.
    if USE_SEG:
        b_S = tl.load(S0 + (o_seg * F_PAD + o_f[:, None]) * DV + o_v[None, :], mask=m_v[None, :], other=0.0)
    else:
        b_S = tl.zeros([BF, BV], dtype=tl.float32)
    if USE_SEG and NORMALIZE:
        b_zs = tl.load(Z0 + o_seg * F_PAD + o_f, mask=m_z, other=0.0)
    else:
        b_zs = tl.zeros([BF], dtype=tl.float32)
    return b_S, b_zs


@triton.jit
def _segment_state_kernel(x, y, yd, rden, cz, S, Z, idx, w, ktab, T, D, DV, F_PAD, NC, CPS, NF, NSEG, S_LO,
                          BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr,
                          NORMALIZE: tl.constexpr, SCALE_Y: tl.constexpr, PRECISION: tl.constexpr,
                          LD: tl.constexpr = False, KRON: tl.constexpr = False, KG: tl.constexpr = 1,
                          KA: tl.constexpr = 1, TMA_LD: tl.constexpr = False, WIDE: tl.constexpr = True):
    # the first level of the two-level scan (TFLA): the sequence is cut into segments of CPS
    # chunks, and each program sums its segment's contribution to one [BF, BV] slice of a
    # state, S_seg = sum_t feat(x_t)^T y_t and Z_seg = sum_t feat(x_t) c_t, with
    # (x, y, c) = (k, v, 1) for the forward state and (q, do / den, dz) for the backward one.
    # The host turns the segment sums into prefix (or suffix) states; the scan kernels then
    # walk the segments in parallel from them. Axis 0 covers segments S_LO .. S_LO + NSEG - 2 of
    # NSEG: a prefix never needs the last segment's sum, a suffix never the first.
    i_fs, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_f = i_fs % NF
    i_s = i_fs // NF + S_LO
    i_bh64 = i_bh.to(tl.int64)
    DT = x.dtype.element_ty
    o_f = i_f * BF + tl.arange(0, BF)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    b_w = tl.load(w + o_f)  # [BF]
    I0, J0 = _tile_origin(ktab, i_f, KRON, KG, KA)
    p_x = x + i_bh64 * T * D
    p_y = y + i_bh64 * T * DV
    b_S = tl.zeros([BF, BV], dtype=tl.float32)
    b_zs = tl.zeros([BF], dtype=tl.float32)
    c_lo = i_s * CPS
    c_hi = tl.minimum(c_lo + CPS, NC)
    for i_c in range(c_lo, c_hi):
        o_t = _chunk_rows(i_c, BT, WIDE)
        m_t = o_t < T
        if LD:
            # the fused path's gather from memory (see _phi_ld)
            b_feat = _phi_ld(p_x, o_t, m_t, D, idx, o_f, F_PAD, b_w)  # [BT, BF]
        else:
            b_feat = _feat(p_x, o_t, m_t, D, idx, o_f, F_PAD, b_w, I0, J0, BT, BD, PRECISION, KRON, KG, KA)
        b_y = _ld_rows(p_y, yd, i_bh, i_c * BT, i_v * BV, o_t, m_t, o_v, m_v, DV, BT, BV, TMA_LD)
        if SCALE_Y:
            b_y = (b_y.to(tl.float32) * tl.load(rden + i_bh64 * T + o_t, mask=m_t, other=0.0)[:, None]).to(DT)
        b_S += tl.dot(tl.trans(b_feat).to(DT), b_y, input_precision=PRECISION)  # [BF, BV]
        if NORMALIZE:
            if SCALE_Y:
                b_c = tl.load(cz + i_bh64 * T + o_t, mask=m_t, other=0.0)  # [BT]
                b_zs += tl.sum(b_feat * b_c[:, None], 0)
            else:
                b_zs += tl.sum(b_feat.to(tl.float32), 0)
    o_seg = i_bh64 * NSEG + i_s
    tl.store(S + (o_seg * F_PAD + o_f[:, None]) * DV + o_v[None, :], b_S, mask=m_v[None, :])
    if NORMALIZE:
        # every v tile writes the same sums
        tl.store(Z + o_seg * F_PAD + o_f, b_zs)


@triton.jit
def _segment_scan_kernel(S, N, NSEG, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    # in place, per batch*head: S[s] <- sum of S[s'] over the segments s' before s (after s
    # when REVERSE), i.e. the exclusive scan that turns segment sums into carried states; the
    # last segment visited was never summed (see _segment_state_kernel) and is only written
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    o_n = i_n * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < N
    p_s = S + i_bh.to(tl.int64) * NSEG * N + o_n
    b_acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(NSEG):
        if REVERSE:
            i_s = NSEG - 1 - i
        else:
            i_s = i
        b_x = tl.load(p_s + i_s * N, mask=m_n & ((o_n * 0 + i) < NSEG - 1), other=0.0)
        tl.store(p_s + i_s * N, b_acc, mask=m_n)
        b_acc += b_x


@triton.jit
def _inter_fwd_kernel(q, k, v, vd, o, od, z, S0, Z0, idx, w_phi, w_psi, ktab, T, D, DV, F_PAD, NC, CPS, NF,
                      BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr,
                      CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr, ATOMIC: tl.constexpr,
                      USE_SEG: tl.constexpr, PRECISION: tl.constexpr, KRON: tl.constexpr = False,
                      KG: tl.constexpr = 1, KA: tl.constexpr = 1, TMA_LD: tl.constexpr = False,
                      TMA_ADD: tl.constexpr = False, WIDE: tl.constexpr = True):
    # batch*head is the slowest grid axis, so the programs running together share one
    # sequence's q, k, v in L2; axis 0 is (feature tile, segment): each program walks the
    # CPS chunks of its segment from the prefix state S0 of the segments before it
    i_fs, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_f = i_fs % NF
    i_s = i_fs // NF
    NSEG = tl.num_programs(0) // NF
    i_bh64 = i_bh.to(tl.int64)
    DT = v.dtype.element_ty
    o_f = i_f * BF + tl.arange(0, BF)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    b_wq = tl.load(w_phi + o_f)  # [BF]
    b_wk = tl.load(w_psi + o_f)  # [BF]
    I0, J0 = _tile_origin(ktab, i_f, KRON, KG, KA)
    p_q = q + i_bh64 * T * D
    p_k = k + i_bh64 * T * D
    p_v = v + i_bh64 * T * DV
    p_o = o + i_bh64 * T * DV
    b_S, b_zs = _carried_state(S0, Z0, i_bh64 * NSEG + i_s, F_PAD, DV, o_f, o_v, m_v, o_f >= 0, BF, BV, USE_SEG,
                               NORMALIZE)
    b_zs = _zs_acc(b_zs, BF)
    c_lo = i_s * CPS
    c_hi = tl.minimum(c_lo + CPS, NC)
    if not CAUSAL:
        # every query sees every key: build the whole state first
        for i_c in range(NC):
            o_t = _chunk_rows(i_c, BT, WIDE)
            m_t = o_t < T
            b_psi = _feat(p_k, o_t, m_t, D, idx, o_f, F_PAD, b_wk, I0, J0, BT, BD, PRECISION, KRON, KG, KA)
            b_v = _ld_rows(p_v, vd, i_bh, i_c * BT, i_v * BV, o_t, m_t, o_v, m_v, DV, BT, BV, TMA_LD)
            b_S += tl.dot(tl.trans(b_psi).to(DT), b_v, input_precision=PRECISION)  # [BF, BV]
            b_zs = _colsum_mma(b_psi.to(DT), b_zs, BT, PRECISION)
    for i_c in range(c_lo, c_hi):
        o_t = _chunk_rows(i_c, BT, WIDE)
        m_t = o_t < T
        b_phi = _feat(p_q, o_t, m_t, D, idx, o_f, F_PAD, b_wq, I0, J0, BT, BD, PRECISION, KRON, KG, KA)
        b_o = tl.dot(b_phi.to(DT), b_S.to(DT), input_precision=PRECISION)  # [BT, BV]
        _add_rows(p_o, od, i_bh, i_c * BT, i_v * BV, o_t, m_t, o_v, m_v, DV, b_o, ATOMIC, TMA_ADD)
        if NORMALIZE:
            # the normaliser is one column, owned by the first v tile (the mask is a tensor
            # op because the interpreter rejects a scalar bool in a mask)
            _accumulate(z + i_bh64 * T + o_t, _rowdot_mma(b_phi.to(DT), b_zs, BF, PRECISION),
                        m_t & ((o_t * 0 + i_v) == 0), ATOMIC)
        if CAUSAL:
            # chunk i_c enters the state only after its own queries used it
            b_psi = _feat(p_k, o_t, m_t, D, idx, o_f, F_PAD, b_wk, I0, J0, BT, BD, PRECISION, KRON, KG, KA)
            b_v = _ld_rows(p_v, vd, i_bh, i_c * BT, i_v * BV, o_t, m_t, o_v, m_v, DV, BT, BV, TMA_LD)
            b_S += tl.dot(tl.trans(b_psi).to(DT), b_v, input_precision=PRECISION)  # [BF, BV]
            b_zs = _colsum_mma(b_psi.to(DT), b_zs, BT, PRECISION)


@triton.jit
def _intra_bwd_kernel(q, k, v, do, rden, dz, dq, dk, dv, dns, a0, scale, T, D, DV, NC,
                      BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
                      NORMALIZE: tl.constexpr, PRECISION: tl.constexpr, CONST: tl.constexpr = False):
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64 = i_bh.to(tl.int64)
    o_t = (i_c * BT + tl.arange(0, BT)).to(tl.int64)
    m_t = o_t < T
    o_d = tl.arange(0, BD)
    o_v = tl.arange(0, BV)
    m_qk = m_t[:, None] & (o_d < D)[None, :]
    m_vv = m_t[:, None] & (o_v < DV)[None, :]
    o_qk = i_bh64 * T * D + o_t[:, None] * D + o_d[None, :]
    o_vv = i_bh64 * T * DV + o_t[:, None] * DV + o_v[None, :]
    b_q = tl.load(q + o_qk, mask=m_qk, other=0.0)  # [BT, BD]
    b_k = tl.load(k + o_qk, mask=m_qk, other=0.0)  # [BT, BD]
    b_v = tl.load(v + o_vv, mask=m_vv, other=0.0)  # [BT, BV]
    DT = b_v.dtype
    # dn = do / den is the gradient of the unnormalised output
    b_dn = tl.load(do + o_vv, mask=m_vv, other=0.0).to(tl.float32)  # [BT, BV]
    if NORMALIZE:
        b_dn = b_dn * tl.load(rden + i_bh64 * T + o_t, mask=m_t, other=0.0)[:, None]
    b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * scale  # [BT, BT]
    m_a = (o_t[:, None] >= o_t[None, :]) & m_t[None, :]
    b_a = tl.where(m_a, _f(b_s), 0.0)  # [BT, BT]
    b_da = tl.dot(b_dn.to(DT), tl.trans(b_v), input_precision=PRECISION)  # [BT, BT]
    if NORMALIZE:
        b_da += tl.load(dz + i_bh64 * T + o_t, mask=m_t, other=0.0)[:, None]
    b_ds = tl.where(m_a, _df(b_s) * b_da, 0.0) * scale  # [BT, BT]
    b_dq = tl.dot(b_ds.to(DT), b_k, input_precision=PRECISION)  # [BT, BD]
    b_dk = tl.dot(tl.trans(b_ds).to(DT), b_q, input_precision=PRECISION)  # [BT, BD]
    b_dv = tl.dot(tl.trans(b_a).to(DT), b_dn.to(DT), input_precision=PRECISION)  # [BT, BV]
    if CONST:
        # the constant term a0 of the later chunks' queries: a0 times their sum of dn, the total
        # less this chunk's inclusive prefix (dns holds the prefix sums over chunks)
        m_v = o_v < DV
        p_dns = dns + i_bh64 * NC * DV + o_v
        b_dv += a0 * (tl.load(p_dns + (NC - 1) * DV, mask=m_v, other=0.0)
                      - tl.load(p_dns + i_c * DV, mask=m_v, other=0.0))[None, :]
    tl.store(dq + o_qk, b_dq, mask=m_qk)
    tl.store(dk + o_qk, b_dk, mask=m_qk)
    tl.store(dv + o_vv, b_dv, mask=m_vv)


@triton.jit
def _inter_bwd_kernel(q, k, v, vd, do, dod, rden, dz, dq, dk, dv, dvd, dxg, dxl, S0, Z0, dS0, dZ0, idx, w_phi, w_psi,
                      ktab,
                      T, D, DV,
                      F_PAD, NC, CPS, NF,
                      BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr,
                      CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr, ATOMIC_QK: tl.constexpr,
                      ATOMIC_V: tl.constexpr, USE_SEG: tl.constexpr, PASS: tl.constexpr,
                      PRECISION: tl.constexpr, KRON: tl.constexpr = False, KG: tl.constexpr = 1,
                      KA: tl.constexpr = 1, TMA_LD: tl.constexpr = False, TMA_ADD: tl.constexpr = False,
                      WIDE: tl.constexpr = True, TMA_DX: tl.constexpr = False):
    # PASS 0 walks forward for dq, PASS 1 walks backward for dk and dv; the two share nothing,
    # so they are separate launches (each compiled with only its own registers). Axis 0 is
    # (feature tile, segment): pass 0 starts from the prefix state S0 of the earlier
    # segments, pass 1 from the suffix dS0 of the later ones
    i_fs, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_f = i_fs % NF
    i_s = i_fs // NF
    NSEG = tl.num_programs(0) // NF
    c_lo = i_s * CPS
    c_hi = tl.minimum(c_lo + CPS, NC)
    i_bh64 = i_bh.to(tl.int64)
    DT = v.dtype.element_ty
    o_f = i_f * BF + tl.arange(0, BF)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    b_wq = tl.load(w_phi + o_f)  # [BF]
    b_wk = tl.load(w_psi + o_f)  # [BF]
    I0, J0 = _tile_origin(ktab, i_f, KRON, KG, KA)
    p_q = q + i_bh64 * T * D
    p_k = k + i_bh64 * T * D
    p_v = v + i_bh64 * T * DV
    p_do = do + i_bh64 * T * DV
    p_dq = dq + i_bh64 * T * D
    p_dk = dk + i_bh64 * T * D
    p_dv = dv + i_bh64 * T * DV
    # the normaliser's gradient is one column, owned by the first v tile; masks below use
    # (o_t * 0 + i_v) == 0 because the interpreter rejects a scalar bool in a mask
    if PASS == 0:
        # dq_i = J_phi(q_i)^T (S dn_i + z_S dz_i), S = sum over keys visible to i
        b_S, b_zs = _carried_state(S0, Z0, i_bh64 * NSEG + i_s, F_PAD, DV, o_f, o_v, m_v, o_f >= 0, BF, BV,
                                   USE_SEG, NORMALIZE)
        b_zs = _zs_acc(b_zs, BF)
        if not CAUSAL:
            for i_c in range(NC):
                o_t = _chunk_rows(i_c, BT, WIDE)
                m_t = o_t < T
                b_psi = _feat(p_k, o_t, m_t, D, idx, o_f, F_PAD, b_wk, I0, J0, BT, BD, PRECISION, KRON, KG, KA)
                b_v = _ld_rows(p_v, vd, i_bh, i_c * BT, i_v * BV, o_t, m_t, o_v, m_v, DV, BT, BV, TMA_LD)
                b_S += tl.dot(tl.trans(b_psi).to(DT), b_v, input_precision=PRECISION)  # [BF, BV]
                b_zs = _colsum_mma(b_psi.to(DT), b_zs, BT, PRECISION)
        for i_c in range(c_lo, c_hi):
            o_t = _chunk_rows(i_c, BT, WIDE)
            m_t = o_t < T
            b_dn = _ld_rows(p_do, dod, i_bh, i_c * BT, i_v * BV, o_t, m_t, o_v, m_v, DV, BT, BV,
                            TMA_LD).to(tl.float32)  # [BT, BV]
            if NORMALIZE:
                b_dn = b_dn * tl.load(rden + i_bh64 * T + o_t, mask=m_t, other=0.0)[:, None]
            b_dphi = tl.dot(b_dn.to(DT), tl.trans(b_S.to(DT)), input_precision=PRECISION)  # [BT, BF]
            if NORMALIZE:
                b_dz = tl.load(dz + i_bh64 * T + o_t, mask=m_t & ((o_t * 0 + i_v) == 0), other=0.0)  # [BT]
                b_dphi += b_dz[:, None] * _zs_of(b_zs)[None, :]
            _feat_vjp_add(p_q, p_dq, o_t, m_t, D, idx, o_f, F_PAD, b_wq, b_dphi, I0, J0, dxg, dxl, i_bh, i_c * BT,
                          ATOMIC_QK, TMA_DX, BT, BD, PRECISION,
                          KRON, KG, KA)
            if CAUSAL:
                b_psi = _feat(p_k, o_t, m_t, D, idx, o_f, F_PAD, b_wk, I0, J0, BT, BD, PRECISION, KRON, KG, KA)
                b_v = _ld_rows(p_v, vd, i_bh, i_c * BT, i_v * BV, o_t, m_t, o_v, m_v, DV, BT, BV, TMA_LD)
                b_S += tl.dot(tl.trans(b_psi).to(DT), b_v, input_precision=PRECISION)  # [BF, BV]
                b_zs = _colsum_mma(b_psi.to(DT), b_zs, BT, PRECISION)
    else:
        # dS = sum over queries that see key j of phi(q_i) dn_i^T (and phi(q_i) dz_i):
        # dv_j = dS^T psi(k_j), dk_j = J_psi(k_j)^T (dS v_j + dz_S)
        # dzeta belongs to the first v tile only (dk sums over v tiles)
        b_dS, b_dzs = _carried_state(dS0, dZ0, i_bh64 * NSEG + i_s, F_PAD, DV, o_f, o_v, m_v, (o_f * 0 + i_v) == 0,
                                     BF, BV, USE_SEG, NORMALIZE)
        # dzeta as an MMA accumulator whose row sums are the state (see _colsum_mma)
        b_dzs = tl.where(tl.arange(0, 16)[None, :] == 0, b_dzs[:, None], 0.0)  # [BF, 16]
        if not CAUSAL:
            for i_c in range(NC):
                o_t = _chunk_rows(i_c, BT, WIDE)
                m_t = o_t < T
                b_phi = _feat(p_q, o_t, m_t, D, idx, o_f, F_PAD, b_wq, I0, J0, BT, BD, PRECISION, KRON, KG, KA)
                b_dn = _ld_rows(p_do, dod, i_bh, i_c * BT, i_v * BV, o_t, m_t, o_v, m_v, DV, BT, BV,
                                TMA_LD).to(tl.float32)  # [BT, BV]
                if NORMALIZE:
                    b_dn = b_dn * tl.load(rden + i_bh64 * T + o_t, mask=m_t, other=0.0)[:, None]
                    b_dz = tl.load(dz + i_bh64 * T + o_t, mask=m_t & ((o_t * 0 + i_v) == 0), other=0.0)  # [BT]
                    b_dzs = tl.dot(tl.trans(b_phi.to(DT)), _hilo16(b_dz, BT, DT), b_dzs, input_precision=PRECISION)
                b_dS += tl.dot(tl.trans(b_phi).to(DT), b_dn.to(DT), input_precision=PRECISION)  # [BF, BV]
        for i in range(0, c_hi - c_lo):
            if CAUSAL:
                i_c = c_hi - 1 - i
            else:
                i_c = c_lo + i
            o_t = _chunk_rows(i_c, BT, WIDE)
            m_t = o_t < T
            b_psi = _feat(p_k, o_t, m_t, D, idx, o_f, F_PAD, b_wk, I0, J0, BT, BD, PRECISION, KRON, KG, KA)
            b_v = _ld_rows(p_v, vd, i_bh, i_c * BT, i_v * BV, o_t, m_t, o_v, m_v, DV, BT, BV, TMA_LD)
            b_dv = tl.dot(b_psi.to(DT), b_dS.to(DT), input_precision=PRECISION)  # [BT, BV]
            _add_rows(p_dv, dvd, i_bh, i_c * BT, i_v * BV, o_t, m_t, o_v, m_v, DV, b_dv, ATOMIC_V, TMA_ADD)
            b_dpsi = tl.dot(b_v, tl.trans(b_dS.to(DT)), input_precision=PRECISION)  # [BT, BF]
            if NORMALIZE:
                b_dpsi += tl.sum(b_dzs, 1)[None, :]
            _feat_vjp_add(p_k, p_dk, o_t, m_t, D, idx, o_f, F_PAD, b_wk, b_dpsi, I0, J0, dxg, dxl, i_bh, i_c * BT,
                          ATOMIC_QK, TMA_DX, BT, BD, PRECISION,
                          KRON, KG, KA)
            if CAUSAL:
                # chunk i_c's queries see this chunk's keys through the intra kernel, and
                # every earlier chunk's keys through dS
                b_phi = _feat(p_q, o_t, m_t, D, idx, o_f, F_PAD, b_wq, I0, J0, BT, BD, PRECISION, KRON, KG, KA)
                b_dn = _ld_rows(p_do, dod, i_bh, i_c * BT, i_v * BV, o_t, m_t, o_v, m_v, DV, BT, BV,
                                TMA_LD).to(tl.float32)  # [BT, BV]
                if NORMALIZE:
                    b_dn = b_dn * tl.load(rden + i_bh64 * T + o_t, mask=m_t, other=0.0)[:, None]
                    b_dz = tl.load(dz + i_bh64 * T + o_t, mask=m_t & ((o_t * 0 + i_v) == 0), other=0.0)  # [BT]
                    b_dzs = tl.dot(tl.trans(b_phi.to(DT)), _hilo16(b_dz, BT, DT), b_dzs, input_precision=PRECISION)
                b_dS += tl.dot(tl.trans(b_phi).to(DT), b_dn.to(DT), input_precision=PRECISION)  # [BF, BV]


# ----------------------------------------------------------------------------------------
# Fused causal kernels for small feature maps (all features in one tile: F_pad * DV_pad <=
# 256 * 64, e.g. Based d16/v64 with 153 features, or f(x) = x at d64). One program per
# (segment, batch*head) holds the whole [F, DV] state, so intra-chunk, inter-chunk and the
# normaliser meet in registers: o is written once, in the input dtype, with no atomics
# and no fp32 partial buffers. The backward is two walks (dq forward, dk/dv backward), each
# recomputing the chunk's score tile, so dq, dk, dv are also written once.
# ----------------------------------------------------------------------------------------
@triton.jit
def _fused_fwd_kernel(q, k, v, o, z, S0, Z0, idx, w_phi, w_psi, scale, eps, T, D, DV, F_PAD, NC, CPS,
                      BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr,
                      NORMALIZE: tl.constexpr, FIX_ABS: tl.constexpr, USE_SEG: tl.constexpr,
                      PRECISION: tl.constexpr, LD: tl.constexpr, WIDE: tl.constexpr = True):
    i_s, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NSEG = tl.num_programs(0)
    i_bh64 = i_bh.to(tl.int64)
    DT = v.dtype.element_ty
    o_f = tl.arange(0, BF)
    o_v = i_v * BV + tl.arange(0, BV)
    o_d = tl.arange(0, BD)
    m_v = o_v < DV
    m_d = o_d < D
    b_wq = tl.load(w_phi + o_f)  # [BF]
    b_wk = tl.load(w_psi + o_f)  # [BF]
    p_q = q + i_bh64 * T * D
    p_k = k + i_bh64 * T * D
    p_v = v + i_bh64 * T * DV
    p_o = o + i_bh64 * T * DV
    b_S, b_zs = _carried_state(S0, Z0, i_bh64 * NSEG + i_s, F_PAD, DV, o_f, o_v, m_v, o_f >= 0, BF, BV, USE_SEG,
                               NORMALIZE)
    c_lo = i_s * CPS
    c_hi = tl.minimum(c_lo + CPS, NC)
    for i_c in range(c_lo, c_hi):
        o_t = _chunk_rows(i_c, BT, WIDE)
        m_t = o_t < T
        m_qk = m_t[:, None] & m_d[None, :]
        m_vv = m_t[:, None] & m_v[None, :]
        b_q = tl.load(p_q + o_t[:, None] * D + o_d[None, :], mask=m_qk, other=0.0)  # [BT, BD]
        b_k = tl.load(p_k + o_t[:, None] * D + o_d[None, :], mask=m_qk, other=0.0)  # [BT, BD]
        b_v = tl.load(p_v + o_t[:, None] * DV + o_v[None, :], mask=m_vv, other=0.0)  # [BT, BV]
        # intra: f on the causal score tile
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * scale  # [BT, BT]
        m_a = (o_t[:, None] >= o_t[None, :]) & m_t[None, :]
        b_a = tl.where(m_a, _f(b_s), 0.0)  # [BT, BT]
        b_o = tl.dot(b_a.to(DT), b_v, input_precision=PRECISION)  # [BT, BV]
        # inter: the state of every earlier chunk
        if LD:
            b_phi = _phi_ld(p_q, o_t, m_t, D, idx, o_f, F_PAD, b_wq)  # [BT, BF]
        else:
            b_phi = _phi(b_q, m_t, idx, o_f, F_PAD, b_wq, BD, PRECISION)  # [BT, BF]
        b_o = tl.dot(b_phi.to(DT), b_S.to(DT), b_o, input_precision=PRECISION)  # [BT, BV]
        if NORMALIZE:
            b_z = tl.sum(b_a, 1) + tl.sum(b_phi * b_zs[None, :], 1)  # [BT]
            b_o = b_o / _den(b_z, eps, FIX_ABS)[:, None]
            tl.store(z + i_bh64 * T + o_t, b_z, mask=m_t)
        tl.store(p_o + o_t[:, None] * DV + o_v[None, :], b_o.to(DT), mask=m_vv)
        # chunk i_c enters the state after its own queries used it
        if LD:
            b_psi = _phi_ld(p_k, o_t, m_t, D, idx, o_f, F_PAD, b_wk)  # [BT, BF]
        else:
            b_psi = _phi(b_k, m_t, idx, o_f, F_PAD, b_wk, BD, PRECISION)  # [BT, BF]
        b_S = tl.dot(tl.trans(b_psi).to(DT), b_v, b_S, input_precision=PRECISION)  # [BF, BV]
        b_zs += tl.sum(b_psi.to(tl.float32), 0)


@triton.jit
def _chunk_fwd_kernel(q, k, v, o, z, S0, Z0, idx, w_phi, ktab, scale, eps, T, D, DV, F_PAD, NC, CPS, NSEG, NF,
                      BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr,
                      NORMALIZE: tl.constexpr, FIX_ABS: tl.constexpr, PRECISION: tl.constexpr,
                      KRON: tl.constexpr = False, KG: tl.constexpr = 1, KA: tl.constexpr = 1):
    # The chunk-parallel causal forward: one program per (query chunk, v tile, batch*head), no
    # walk carried from chunk to chunk. Keys of the query's own segment (CPS chunks) enter
    # exactly, f on [BT, BT] score tiles; every earlier segment enters through the exclusive
    # prefix state S0 of the segment (from _segment_prefix), read tile by tile of BF features.
    # o is written once, normalised, in the input dtype.
    i_c, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_s = i_c // CPS
    i_bh64 = i_bh.to(tl.int64)
    DT = v.dtype.element_ty
    o_v = i_v * BV + tl.arange(0, BV)
    o_d = tl.arange(0, BD)
    m_v = o_v < DV
    m_d = o_d < D
    p_q = q + i_bh64 * T * D
    p_k = k + i_bh64 * T * D
    p_v = v + i_bh64 * T * DV
    o_t = (i_c * BT + tl.arange(0, BT)).to(tl.int64)
    m_t = o_t < T
    b_q = tl.load(p_q + o_t[:, None] * D + o_d[None, :], mask=m_t[:, None] & m_d[None, :], other=0.0)  # [BT, BD]
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_z = tl.zeros([BT], dtype=tl.float32)
    for j in range(i_s * CPS, i_c + 1):
        o_tk = (j * BT + tl.arange(0, BT)).to(tl.int64)
        m_tk = o_tk < T
        b_k = tl.load(p_k + o_tk[:, None] * D + o_d[None, :], mask=m_tk[:, None] & m_d[None, :], other=0.0)
        b_v = tl.load(p_v + o_tk[:, None] * DV + o_v[None, :], mask=m_tk[:, None] & m_v[None, :], other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * scale  # [BT, BT]
        b_a = tl.where((o_t[:, None] >= o_tk[None, :]) & m_tk[None, :], _f(b_s), 0.0)  # [BT, BT]
        b_o = tl.dot(b_a.to(DT), b_v, b_o, input_precision=PRECISION)  # [BT, BV]
        if NORMALIZE:
            b_z += tl.sum(b_a, 1)
    if i_s > 0:
        o_seg = i_bh64 * NSEG + i_s
        for i_f in range(NF):
            o_f = i_f * BF + tl.arange(0, BF)
            I0, J0 = _tile_origin(ktab, i_f, KRON, KG, KA)
            b_phi = _feat(p_q, o_t, m_t, D, idx, o_f, F_PAD, tl.load(w_phi + o_f), I0, J0, BT, BD, PRECISION, KRON,
                          KG, KA)  # [BT, BF]
            b_S = tl.load(S0 + (o_seg * F_PAD + o_f[:, None]) * DV + o_v[None, :], mask=m_v[None, :], other=0.0)
            b_o = tl.dot(b_phi.to(DT), b_S.to(DT), b_o, input_precision=PRECISION)  # [BT, BV]
            if NORMALIZE:
                b_z += tl.sum(b_phi.to(tl.float32) * tl.load(Z0 + o_seg * F_PAD + o_f)[None, :], 1)
    if NORMALIZE:
        b_o = b_o / _den(b_z, eps, FIX_ABS)[:, None]
        # every v tile computes the same z
        tl.store(z + i_bh64 * T + o_t, b_z, mask=m_t)
    tl.store(o + i_bh64 * T * DV + o_t[:, None] * DV + o_v[None, :], b_o.to(DT), mask=m_t[:, None] & m_v[None, :])


@triton.jit
def _den(b_z, eps, FIX_ABS: tl.constexpr):
    # the normaliser's denominator: z, or |z| + eps with normalizer_fix="abs" (naive._denominator); one
    # that is <= 0 or not finite becomes NaN, so no finite wrong quotient leaves a kernel
    if FIX_ABS:
        b_d = tl.abs(b_z) + eps
    else:
        b_d = b_z
    return tl.where((b_d > 0.0) & (b_d < float("inf")), b_d, float("nan"))


@triton.jit
def _finalize_kernel(o, z, out, vs, a0, eps, N, T, DV, NC, NORMALIZE: tl.constexpr, FIX_ABS: tl.constexpr,
                     BR: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr = 1, CONST: tl.constexpr = False):
    # out = o / den(z) in out's dtype, over the [N, DV] rows of the general path's fp32 o: one
    # pass instead of torch's division and cast (two reads and two writes of an fp32 o). With
    # CONST, first the constant term a0 of the earlier chunks' keys (kron_const_out): o += a0 times
    # their sum of v (the prefix sums over chunks in vs), z += a0 times their count (z written back,
    # the backward reads it)
    o_r = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    o_v = tl.arange(0, BV)
    m_r = o_r < N
    m = m_r[:, None] & (o_v < DV)[None, :]
    b_o = tl.load(o + o_r[:, None] * DV + o_v[None, :], mask=m, other=0.0)
    if NORMALIZE:
        b_z = tl.load(z + o_r, mask=m_r, other=1.0)
    if CONST:
        o_c = (o_r % T) // BT  # the row's chunk
        m_c = m_r & (o_c > 0)
        b_o += a0 * tl.load(vs + ((o_r // T) * NC + o_c - 1)[:, None] * DV + o_v[None, :],
                            mask=m_c[:, None] & m, other=0.0)
        if NORMALIZE:
            b_z += a0 * (o_c * BT).to(tl.float32)
            tl.store(z + o_r, b_z, mask=m_r)
    if NORMALIZE:
        b_o = b_o / _den(b_z, eps, FIX_ABS)[:, None]
    tl.store(out + o_r[:, None] * DV + o_v[None, :], b_o.to(out.dtype.element_ty), mask=m)


@triton.jit
def _bwd_prep_kernel(o, do, z, rden, dz, dns, eps, T, DV, NC,
                     BT: tl.constexpr, BV: tl.constexpr, FIX_ABS: tl.constexpr, NORMALIZE: tl.constexpr = True,
                     CONST: tl.constexpr = False):
    # o = n / den(z): rden = 1 / den, dz = -(do . o) den'(z) / den, one row per token; with CONST
    # also the chunk's sum of dn = do / den (do when not normalised) for the constant term
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64 = i_bh.to(tl.int64)
    o_t = (i_c * BT + tl.arange(0, BT)).to(tl.int64)
    m_t = o_t < T
    o_v = tl.arange(0, BV)
    m_v = o_v < DV
    m_vv = m_t[:, None] & m_v[None, :]
    p = i_bh64 * T * DV + o_t[:, None] * DV + o_v[None, :]
    b_do = tl.load(do + p, mask=m_vv, other=0.0).to(tl.float32)
    if NORMALIZE:
        b_o = tl.load(o + p, mask=m_vv, other=0.0).to(tl.float32)
        b_z = tl.load(z + i_bh64 * T + o_t, mask=m_t, other=1.0)
        b_r = 1.0 / _den(b_z, eps, FIX_ABS)
        b_dz = -tl.sum(b_do * b_o, 1) * b_r
        if FIX_ABS:
            b_dz = b_dz * tl.where(b_z > 0, 1.0, tl.where(b_z < 0, -1.0, 0.0))
        tl.store(rden + i_bh64 * T + o_t, b_r, mask=m_t)
        tl.store(dz + i_bh64 * T + o_t, b_dz, mask=m_t)
        b_do = b_do * b_r[:, None]
    if CONST:
        tl.store(dns + (i_bh64 * NC + i_c) * DV + o_v, tl.sum(b_do, 0), mask=m_v)  # [BV]


@triton.jit
def _fused_bwd_kernel(q, k, v, do, rden, dz, dq, dk, dv, S0, Z0, idx, w_phi, w_psi, scale, T, D, DV, F_PAD, NC,
                      CPS, BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr,
                      NORMALIZE: tl.constexpr, USE_SEG: tl.constexpr, PASS: tl.constexpr,
                      PRECISION: tl.constexpr, LD: tl.constexpr, WIDE: tl.constexpr = True):
    # PASS 0 walks forward from the prefix state (S0, Z0) of the earlier segments: dq.
    # PASS 1 walks backward from the suffix (S0, Z0) = (sum phi(q)^T dn, sum phi(q) dz) of
    # the later segments: dk and dv. Both add the chunk's own (intra) gradient.
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    NSEG = tl.num_programs(0)
    i_bh64 = i_bh.to(tl.int64)
    DT = v.dtype.element_ty
    o_f = tl.arange(0, BF)
    o_v = tl.arange(0, BV)
    o_d = tl.arange(0, BD)
    m_v = o_v < DV
    m_d = o_d < D
    b_wq = tl.load(w_phi + o_f)  # [BF]
    b_wk = tl.load(w_psi + o_f)  # [BF]
    p_q = q + i_bh64 * T * D
    p_k = k + i_bh64 * T * D
    b_S, b_zs = _carried_state(S0, Z0, i_bh64 * NSEG + i_s, F_PAD, DV, o_f, o_v, m_v, o_f >= 0, BF, BV, USE_SEG,
                               NORMALIZE)
    c_lo = i_s * CPS
    c_hi = tl.minimum(c_lo + CPS, NC)
    for i in range(0, c_hi - c_lo):
        if PASS == 0:
            i_c = c_lo + i
        else:
            i_c = c_hi - 1 - i
        o_t = _chunk_rows(i_c, BT, WIDE)
        m_t = o_t < T
        m_qk = m_t[:, None] & m_d[None, :]
        m_vv = m_t[:, None] & m_v[None, :]
        o_qk = i_bh64 * T * D + o_t[:, None] * D + o_d[None, :]
        o_vv = i_bh64 * T * DV + o_t[:, None] * DV + o_v[None, :]
        b_q = tl.load(q + o_qk, mask=m_qk, other=0.0)  # [BT, BD]
        b_k = tl.load(k + o_qk, mask=m_qk, other=0.0)  # [BT, BD]
        b_v = tl.load(v + o_vv, mask=m_vv, other=0.0)  # [BT, BV]
        b_dn = tl.load(do + o_vv, mask=m_vv, other=0.0).to(tl.float32)  # [BT, BV]
        if NORMALIZE:
            b_dn = b_dn * tl.load(rden + i_bh64 * T + o_t, mask=m_t, other=0.0)[:, None]
            b_dz = tl.load(dz + i_bh64 * T + o_t, mask=m_t, other=0.0)  # [BT]
        # intra: dA = dn v^T + dz, dS = s f'(s) dA on the causal tile
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * scale  # [BT, BT]
        m_a = (o_t[:, None] >= o_t[None, :]) & m_t[None, :]
        b_da = tl.dot(b_dn.to(DT), tl.trans(b_v), input_precision=PRECISION)  # [BT, BT]
        if NORMALIZE:
            b_da += b_dz[:, None]
        b_ds = tl.where(m_a, _df(b_s) * b_da, 0.0) * scale  # [BT, BT]
        if PASS == 0:
            b_dq = tl.dot(b_ds.to(DT), b_k, input_precision=PRECISION)  # [BT, BD]
            b_dphi = tl.dot(b_dn.to(DT), tl.trans(b_S.to(DT)), input_precision=PRECISION)  # [BT, BF]
            if NORMALIZE:
                b_dphi += b_dz[:, None] * b_zs[None, :]
            b_dq += _phi_vjp(b_q, idx, o_f, F_PAD, b_wq, b_dphi, BD, PRECISION)  # [BT, BD]
            tl.store(dq + o_qk, b_dq.to(DT), mask=m_qk)
            if LD:
                b_psi = _phi_ld(p_k, o_t, m_t, D, idx, o_f, F_PAD, b_wk)  # [BT, BF]
            else:
                b_psi = _phi(b_k, m_t, idx, o_f, F_PAD, b_wk, BD, PRECISION)  # [BT, BF]
            b_S = tl.dot(tl.trans(b_psi).to(DT), b_v, b_S, input_precision=PRECISION)  # [BF, BV]
            b_zs += tl.sum(b_psi.to(tl.float32), 0)
        else:
            b_a = tl.where(m_a, _f(b_s), 0.0)  # [BT, BT]
            b_dk = tl.dot(tl.trans(b_ds).to(DT), b_q, input_precision=PRECISION)  # [BT, BD]
            b_dv = tl.dot(tl.trans(b_a).to(DT), b_dn.to(DT), input_precision=PRECISION)  # [BT, BV]
            if LD:
                b_psi = _phi_ld(p_k, o_t, m_t, D, idx, o_f, F_PAD, b_wk)  # [BT, BF]
            else:
                b_psi = _phi(b_k, m_t, idx, o_f, F_PAD, b_wk, BD, PRECISION)  # [BT, BF]
            b_dv = tl.dot(b_psi.to(DT), b_S.to(DT), b_dv, input_precision=PRECISION)  # [BT, BV]
            tl.store(dv + o_vv, b_dv.to(DT), mask=m_vv)
            b_dpsi = tl.dot(b_v, tl.trans(b_S.to(DT)), input_precision=PRECISION)  # [BT, BF]
            if NORMALIZE:
                b_dpsi += b_zs[None, :]
            b_dk += _phi_vjp(b_k, idx, o_f, F_PAD, b_wk, b_dpsi, BD, PRECISION)  # [BT, BD]
            tl.store(dk + o_qk, b_dk.to(DT), mask=m_qk)
            if LD:
                b_phi = _phi_ld(p_q, o_t, m_t, D, idx, o_f, F_PAD, b_wq)  # [BT, BF]
            else:
                b_phi = _phi(b_q, m_t, idx, o_f, F_PAD, b_wq, BD, PRECISION)  # [BT, BF]
            b_S = tl.dot(tl.trans(b_phi).to(DT), b_dn.to(DT), b_S, input_precision=PRECISION)  # [BF, BV]
            if NORMALIZE:
                b_zs += tl.sum(b_phi * b_dz[:, None], 0)


# ----------------------------------------------------------------------------------------
# Feature tables: the symmetric-tensor basis of f, built once per (head dim, scale).
# ----------------------------------------------------------------------------------------
_TABLES = {}


def feature_dim(dim):
    """Number of features of f on head dimension ``dim``: sum over a_j != 0 of C(dim + j - 1, j)."""
    return sum(math.comb(dim + j - 1, j) for j, a in COEFFS.items() if a != 0)


def feature_tables(dim, scale, device, block_f=64):
    """Index and weight tables of the symmetric basis for f(scale * q.k) on head dim ``dim``.

    (q.k)^j = sum over multisets alpha of size j of (j! / alpha!) q^alpha k^alpha, so feature
    alpha of degree j carries the weight w = a_j scale^j j!/alpha!, split as
    phi = sign(w) sqrt|w| q^alpha and psi = sqrt|w| k^alpha (balanced magnitudes for 16-bit
    dots, and signs of a_j < 0 handled). Features are sorted by degree and padded with
    zero-weight features to a multiple of ``block_f``.

    Returns
    -------
    idx : int32 tensor [P, F_pad]
        idx[m, f] is the m-th head-dim index of feature f, -1 where f has degree < m + 1.
    w_phi, w_psi : float32 tensors [F_pad]
    n_features : int
    """
    key = (int(dim), float(scale), str(device), int(block_f))
    if key in _TABLES:
        return _TABLES[key]
    slots = max(1, max(COEFFS))
    rows, ws = [], []
    for j in sorted(COEFFS):
        a = float(COEFFS[j])
        if a == 0.0:
            continue
        for combo in itertools.combinations_with_replacement(range(dim), j):
            mult = math.factorial(j)
            for c in set(combo):
                mult //= math.factorial(combo.count(c))
            rows.append(list(combo) + [-1] * (slots - j))
            ws.append(a * float(scale) ** j * mult)
    n = len(rows)
    n_pad = max(block_f, -(-n // block_f) * block_f)
    idx = torch.full((slots, n_pad), -1, dtype=torch.int32)
    if n:
        idx[:, :n] = torch.tensor(rows, dtype=torch.int32).T
    w = torch.zeros(n_pad, dtype=torch.float64)
    w[:n] = torch.tensor(ws, dtype=torch.float64)
    w_psi = w.abs().sqrt()
    w_phi = torch.sign(w) * w_psi
    out = (idx.to(device), w_phi.to(torch.float32).to(device), w_psi.to(torch.float32).to(device), n)
    _TABLES[key] = out
    return out


def _kron_group(block_f):
    """Default group width: 8 (one 8 x 8 product per 64-feature tile) from block_f 64 on. Groups of 4
    pack the diagonal blocks' slots too (36 tiles instead of 38 at D = 64), but the 4-D broadcast
    they need made the scans slower (H100, d64 16K fwd+bwd 38.1 vs 27.9 ms, benchmarks/RESULTS.md)."""
    return 8 if block_f >= 64 else 4


# the degree of f (the highest power with a nonzero coefficient)
_DEGREE = max((j for j, a in COEFFS.items() if a != 0), default=0)


def _cdiv(a, b):
    # host-side ceil division: triton.cdiv is a constexpr function whose wrapper costs ~5 us a call
    return -(-a // b)


def _pow2(n):
    # host-side next power of two (as triton.next_power_of_2, without its wrapper's cost)
    return 1 << (int(n) - 1).bit_length() if n > 0 else 0


def _kron_degree():
    """True when f has degree 2 and FASTATTN_KRON is not 0: the block-Kronecker layout is available."""
    return _DEGREE == 2 and os.environ.get("FASTATTN_KRON", "1") != "0"


def uses_kron(dim, causal=True, dim_v=None, part="fwd", T=0):
    """True when f has degree 2 and the features of this pass (``part``: "fwd" or "bwd", on ``T``
    tokens) go through the block-Kronecker layout: every degree-2 f that does not take the fused
    path (see :func:`_fused_tiles_dims`), and FASTATTN_KRON is not 0."""
    if not _kron_degree():
        return False
    return not causal or _fused_tiles_dims(dim, dim if dim_v is None else dim_v, part, T) is None


def _group_width(block_f, group=None):
    """Kronecker group width: ``group``, else the FASTATTN_KRON_GROUP knob, else :func:`_kron_group`."""
    return _knob("FASTATTN_KRON_GROUP", _kron_group(block_f)) if group is None else int(group)


def kron_const_out(dim, block_f=64, group=None):
    """True when the constant a0 of a degree-2 f would take a Kronecker tile of its own (no free
    column in a low tile) and leaving it out saves that tile: the causal scans then leave it to
    the intra and finalize kernels: o += a0 times the prefix sum of v over the earlier chunks, z += a0
    times their token count, and in the backward dv += a0 times the suffix sum of dn = do / den.

    At head dim 64 and block_f 64 the scans walk 37 tiles instead of 38, and B * H = 32 sequences
    give 1184 programs: three waves of 3 programs on 132 SMs, where 1216 needed a fourth wave
    for 28 programs (benchmarks/RESULTS.md, the H200 wave probe).

    Examples
    --------
    >>> from fastattn.kernels.codegen import load_module
    >>> from fastattn.kernels.poly import polynomial
    >>> mod = load_module(polynomial("1 + x + x**2/2"))
    >>> mod.kron_const_out(64), mod.kron_const_out(24)  # at 24 the low tile of [x, 1] has room for it
    (True, False)
    """
    KA = _group_width(block_f, group)
    a0, a1, a2 = (float(COEFFS.get(j, 0.0)) for j in (0, 1, 2))
    if a0 == 0.0 or a2 == 0.0 or (a1 != 0.0 and dim % block_f != 0):
        return False
    KG = max(1, block_f // (KA * KA))
    nb = -(-dim // KA)
    pairs = nb * (nb + 1) // 2
    return _knob("FASTATTN_CONST_OUT", 1) != 0 and -(-pairs // KG) < -(-(pairs + 1) // KG)


def kron_tables(dim, scale, device, block_f=64, group=None, const_out=False):
    """Tile and weight tables of the block-Kronecker basis of a degree-2 f(scale * q.k).

    The head dim is cut into blocks of ``group`` columns (None: the FASTATTN_KRON_GROUP knob, else
    8 from block_f 64 on and 4 below). Every pair of blocks h1 <= h2 gives a group of group x group
    products x[h1] (x) x[h2], weighted a2 s^2 on the diagonal pairs and 2 a2 s^2 off it, since
    (q.k)^2 = sum over all pairs of blocks of sum_{i in h1, j in h2} q_i q_j k_i k_j. A tile of
    ``block_f`` features packs KG = block_f / group^2 groups. The constant a0 is the group
    [1] (x) [1] (the first group-aligned column past ``dim`` reads as 1 in a Kronecker tile), unless
    a low tile has a free column for it (column ``dim`` of x'), or ``const_out`` and
    :func:`kron_const_out` leave it to the caller. The linear terms ride on "low"
    tiles: columns of x' = [x, 1] with weights a1 s (and a0). Weights are split as in
    :func:`feature_tables`.

    Returns
    -------
    ktab : int32 tensor [NF, 2 + 2 KG group]
        per tile (-1, c0, 0...) for a low tile holding columns c0 .. c0 + block_f of x', else
        (offset, 0, left columns, right columns), offset being the flat index in ktab of the
        left column list: aligned runs of ``group`` columns; columns from dim on read as 0 except
        the first aligned one past dim, which reads as 1 (the constant's group).
    w_phi, w_psi : float32 tensors [NF * block_f]
    (KG, KA) : groups per tile and the group width.

    Examples
    --------
    >>> from fastattn.kernels.codegen import load_module
    >>> from fastattn.kernels.poly import polynomial
    >>> mod = load_module(polynomial("1 + x + x**2/2"))
    >>> ktab, w_phi, _, (KG, KA) = mod.kron_tables(64, 0.125, "cpu", 64)
    >>> ktab.shape[0], (KG, KA)  # 36 block pairs + the constant's group, + one low tile for x
    (38, (1, 8))
    >>> mod.kron_tables(64, 0.125, "cpu", 64, group=4)[0].shape[0]  # 136 pairs + 1 in 35 tiles, + 1
    36
    >>> mod.kron_tables(64, 0.125, "cpu", 64, const_out=True)[0].shape[0]  # a0 left to the caller
    37
    """
    KA = _group_width(block_f, group)
    if KA < 1 or KA & (KA - 1) or block_f % (KA * KA):
        raise ValueError(f"block_f={block_f} cannot hold groups of {KA} x {KA} products; use a power-of-two "
                         f"group width whose square divides block_f (e.g. 4 for block_f >= 16)")
    const_out = bool(const_out) and kron_const_out(dim, block_f, KA)
    key = ("kron", int(dim), float(scale), str(device), int(block_f), KA, const_out)
    if key in _TABLES:
        return _TABLES[key]
    KG = block_f // (KA * KA)
    width = 2 + 2 * KG * KA
    a0, a1, a2 = (float(COEFFS.get(j, 0.0)) for j in (0, 1, 2))
    rows, ws = [], []
    # the constant sits in the last low tile's free column when there is one
    const_low = a0 != 0.0 and a1 != 0.0 and dim % block_f != 0
    if a1 != 0.0:
        for c0 in range(0, dim, block_f):
            rows.append([-1, c0] + [0] * (width - 2))
            ws.append([a1 * scale if c < dim else (a0 if c == dim and const_low else 0.0)
                       for c in range(c0, c0 + block_f)])
    groups = []  # (left columns, right columns, weights)
    nb = -(-dim // KA)
    one = nb * KA  # the kernel reads this column as 1 in a Kronecker tile, and those after it as 0
    if a2 != 0.0:
        for h1 in range(nb):
            for h2 in range(h1, nb):
                wt = a2 * scale ** 2 * (1.0 if h1 == h2 else 2.0)
                # aligned runs (the kernel's load hints); columns from dim on read as 0
                groups.append((list(range(h1 * KA, h1 * KA + KA)), list(range(h2 * KA, h2 * KA + KA)),
                               [wt] * (KA * KA)))
        if a0 != 0.0 and not const_low and not const_out:
            groups.append((list(range(one, one + KA)), list(range(one, one + KA)), [a0] + [0.0] * (KA * KA - 1)))
    pad = (list(range(one + KA, one + 2 * KA)),) * 2 + ([0.0] * (KA * KA),)
    while len(groups) % KG:
        groups.append(pad)
    for t in range(0, len(groups), KG):
        tile = groups[t:t + KG]
        offset = len(rows) * width + 2
        rows.append([offset, 0] + [c for g in tile for c in g[0]] + [c for g in tile for c in g[1]])
        ws.append([x for g in tile for x in g[2]])
    w = torch.tensor(ws, dtype=torch.float64).reshape(-1)
    w_psi = w.abs().sqrt()
    w_phi = torch.sign(w) * w_psi
    out = (torch.tensor(rows, dtype=torch.int32).to(device), w_phi.to(torch.float32).to(device),
           w_psi.to(torch.float32).to(device), (KG, KA))
    _TABLES[key] = out
    return out


def _layout(q, v, scale, causal, block_f, part="fwd", kron=None, const_out=False):
    """The general path's features: (idx, w_phi, w_psi, ktab, block_f, kron kwargs, a0 left out);
    ``kron``: the caller's :func:`uses_kron` for this pass, when it has it; ``const_out``: the caller
    adds the constant term itself where :func:`kron_const_out` says it pays, and then a0 is returned
    (else 0.0)."""
    D = q.shape[-1]
    bf = block_f or 64
    if uses_kron(D, causal, v.shape[-1], part, q.shape[2]) if kron is None else kron:
        const_out = const_out and kron_const_out(D, bf)
        ktab, w_phi, w_psi, (KG, KA) = kron_tables(D, scale, q.device, bf, None, const_out)
        # the kernels read the Kronecker tiles' column lists through their idx argument
        a0 = float(COEFFS.get(0, 0.0)) if const_out else 0.0
        return ktab, w_phi, w_psi, ktab, bf, dict(KRON=True, KG=KG, KA=KA), a0
    idx, w_phi, w_psi, _ = feature_tables(D, scale, q.device, bf)
    return idx, w_phi, w_psi, idx, bf, {}, 0.0


# ----------------------------------------------------------------------------------------
# Host side.
# ----------------------------------------------------------------------------------------
#: Every route the host code can take, by name: pass / path (fused, chunk-parallel forward,
#: scans) / causal or full / feature layout (symmetric table, Kronecker tiles) / variant
#: (const: a0 outside the scans; segments: the fused path's segment states, saved by the
#: forward or rebuilt by the backward; ld: the fused path's features gathered by loads,
#: FASTATTN_FUSED_LD; v-tiles: the fused forward split over v, FASTATTN_FUSED_FWD_BV). A fused
#: call records its variants beside its route. tests/test_routes.py runs each one. The GPU-only
#: variants (TMA row moves, side streams) are checked on the device by benchmarks/check_gpu.py.
ROUTES = (
    "empty",
    "fwd/fused", "fwd/fused/segments", "fwd/fused/ld", "fwd/fused/v-tiles", "bwd/fused/ld",
    "fwd/chunk/fused-table", "fwd/chunk/symmetric", "fwd/chunk/kron",
    "fwd/scan/causal/symmetric", "fwd/scan/causal/kron", "fwd/scan/causal/kron/const",
    "fwd/scan/full/symmetric", "fwd/scan/full/kron",
    "bwd/fused", "bwd/fused/segments/saved", "bwd/fused/segments/rebuilt",
    "bwd/scan/causal/symmetric", "bwd/scan/causal/kron", "bwd/scan/causal/kron/const",
    "bwd/scan/full/symmetric", "bwd/scan/full/kron",
)
#: The routes taken in this process (a set of at most len(ROUTES) names: one add per call).
routes_taken = set()


def _took(route):
    # the route recorder: a set add per call, nothing on the GPU
    routes_taken.add(route)


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _empty(shape, device):
    # FASTATTN_NAN_FILL=1 (the tests) makes every fresh fp32 buffer NaN, so a row a kernel
    # forgot to write shows up as NaN instead of as stale memory
    if os.environ.get("FASTATTN_NAN_FILL", "0") == "1":
        return torch.full(shape, float("nan"), dtype=torch.float32, device=device)
    return torch.empty(shape, dtype=torch.float32, device=device)


def _dims(q, v):
    """BD (head dim, padded), BV (v head dim, padded) and the dot precision, shared by every path."""
    # BD at least 32: triton 3.6 miscompiles the [BT, BF] x [BF, 16] scatter dot of _phi_vjp on
    # sm_90 (compute-sanitizer: out-of-bounds shared-memory read, then an illegal address)
    BD = max(32, _pow2(q.shape[-1]))
    BV = max(16, _pow2(v.shape[-1]))
    # fp32 inputs keep fp32 accuracy through three tf32 passes; 16-bit inputs use their own MMA
    precision = "tf32x3" if q.dtype == torch.float32 else "tf32"
    return BD, BV, precision


def _blocks(q, v, block_f, block_v, kron=None):
    """Tile sizes: BD, BV and the dot precision (:func:`_dims`), BVs (v tile of the scan), and the
    warps of the scan kernels."""
    BD, BV, precision = _dims(q, v)
    BVs = BV if block_v is None else min(BV, block_v)
    # the scan holds a [BF, BV] fp32 state plus feature tiles; 8 warps keep a 64x64 state
    # out of local memory on sm_90 (ptxas: 4 warps spill ~600 bytes per thread)
    # the Kronecker tiles build features from two narrow slices instead of one-hot matmuls, and
    # run best small: 4 warps let several programs share an SM and hide each other's latency
    # (H100, degree 2 at d64, 32K fwd+bwd: 39 ms at block_f 64 / 4 warps, 62 at 256 / 8 warps)
    warps = _knob("FASTATTN_SCAN_WARPS", 0) or (4 if kron or block_f * BVs < 64 * 64 else 8)
    return BD, BV, BVs, precision, warps


def _intra_warps(chunk, BD, BV):
    # the intra backward holds [BT, BT] score tiles and [BT, BD], [BT, BV] operands: at
    # 64 x 64 it spills ~400 bytes per thread with 4 warps on sm_90 (ptxas), none with 8
    return 8 if chunk * max(BD, BV) >= 64 * 64 else 4


# the general path's causal scans choose their segments by waves (_wave_segments): a walk
# program's time is its chunk count whether or not it shares its SM (the walks are latency-bound),
# so the cost of a cut is (waves of walk programs) x (chunks per segment), plus the segment-sum
# pass at _SEG_STEP of a walk step per chunk (H200, Based d16/v64 forward: 2.05 vs 4.8 us)
_SEG_STEP = 0.45
# and each program costs about this many chunk steps more (its carried state read and written, the
# pipeline filled): without it the fused f = x forward at 32K took 57 segments of 9 chunks and ran
# 0.60 ms against 0.41 at 17 (H200, benchmarks/out/sweep29_x.txt)
_PROGRAM_STEPS = 2
_WAVE_CUTS = {}


_SM_COUNT = {}
# fused path: FASTATTN_FUSED_WAVES = programs per SM to cut segments for (the H100 default before
# the wave cuts was 4: 17 segments for B * H = 32, 544 programs, just over 4 waves of the 8-warp
# backward at one program per SM); unset, the fused path cuts by waves too (_fused_segments)
_FUSED_WAVES = 0.0


def _fused_segments(NC, BH, segments, device, walk_warps, seg_warps, passes=1, shared=True):
    """(segments, chunks per segment) of the fused path: by waves (:func:`_wave_segments`) with the
    walks' and the segment passes' warps, or for FASTATTN_FUSED_WAVES programs per SM when set.
    H200, f = x at d64: 8 segments instead of 17 took fwd+bwd at 64K from 3.41 to 2.92 ms."""
    waves = _knob("FASTATTN_FUSED_WAVES", _FUSED_WAVES)
    if waves:
        return _segments(NC, BH, segments, int(waves * _sm_count(device)))
    return _segments(NC, BH, segments, slots=(_slots(device, walk_warps), _slots(device, seg_warps)), passes=passes,
                     shared=shared)


def _knob(name, default):
    """A tuning override from the environment (read at call time, for sweeps), else ``default``."""
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        return type(default)(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {type(default).__name__}; unset it for the default "
                         f"({default!r})") from None


def _sm_count(device):
    key = str(device)
    if key not in _SM_COUNT:
        dev = torch.device(device)
        _SM_COUNT[key] = (torch.cuda.get_device_properties(dev).multi_processor_count
                          if dev.type == "cuda" else 132)
    return _SM_COUNT[key]


def _wide(T, D, DV):
    """True when a sequence's row offsets need int64 (see _chunk_rows)."""
    return T * max(D, DV, 1) >= 2**31 - 2**20


def _tma_ok(*ts):
    """True when the general path's scans can move [chunk, v tile] rows by TMA: CUDA sm_90+,
    not the interpreter (it has no TMA reduce), and 16-byte aligned rows."""
    t = ts[0]
    if not t.is_cuda or _interpreting():
        return False
    if torch.cuda.get_device_capability(t.device)[0] < 9:
        return False
    return all(x.is_contiguous() and x.data_ptr() % 16 == 0 and (x.shape[-1] * x.element_size()) % 16 == 0
               for x in ts)


# which [chunk, v tile] row moves of the general path's scans go by TMA: bit 0 the v / do loads,
# bit 1 the o / dv reduce-adds, bit 2 (backward, Kronecker tiles of one group) the dq / dk adds.
# H100, degree 2 at d64, 64K fwd+bwd (benchmarks/RESULTS.md, one run): pointers 75.2-77.4 ms, dv
# adds by TMA 70.0-72.3, loads too 75.2, dv + dq/dk adds 66.3 (16K: 17.2 -> 16.4); in the forward
# TMA v loads were slower (20.9 vs 20.3 ms) and o adds neutral until the normaliser sums moved onto
# MMAs (_colsum_mma), then faster (64K 18.3 -> 17.6 ms, 16K 4.47 -> 4.30)
_TMA_FWD = 2
_TMA_BWD = 6


def _regs(name, default, device):
    """Launch options of a general-path scan: knob ``name`` (else ``default``) caps its registers
    per thread (ptxas maxnreg; not in the interpreter)."""
    n = _knob(name, default)
    return {"maxnreg": n} if n and torch.device(device).type == "cuda" else {}


# the Kronecker forward scan capped at 168 registers: three 4-warp programs share an SM instead of
# two. H100, d64 degree 2 forward 16K 4.32 -> 3.87 ms, 64K 17.5 -> 15.3 (the backward walks
# slowed down with the cap: 63.1 vs 59.0 ms fwd+bwd at 64K with both capped)
_MAXNREG_FWD = 168


# below this much scan work (batch*head x tokens x feature tiles) the scans keep pointer loads and
# atomics: each TMA descriptor costs host time at every launch (the driver encodes it), which short
# calls do not hide. H100 (benchmarks/RESULTS.md v10): Based general forward at 8K (2^20) 0.51 ms with
# pointers vs 0.79 with a descriptor; d64 degree 2 at 2K (2.4 * 2^20) fwd+bwd 1.80 with TMA vs 2.09
_TMA_MIN_WORK = 2**21


def _tma_bits(name, default, work, *ts):
    """(loads, row adds, dq/dk adds) by TMA for one pass: the bits of knob ``name`` (else ``default``),
    where :func:`_tma_ok` allows it and the pass has ``work`` >= FASTATTN_TMA_MIN_WORK."""
    bits = _knob(name, default) if work >= _knob("FASTATTN_TMA_MIN_WORK", _TMA_MIN_WORK) else 0
    ok = bool(bits) and _tma_ok(*ts)
    return tuple(ok and bool(bits & b) for b in (1, 2, 4))


def _descs(tma, BT, BV, *ts):
    """TMA descriptors over the [batch*head, T, C] rows of each [B, H, T, C] tensor, with
    [1, BT, BV] boxes (``tma`` from :func:`_tma_ok`), else Nones."""
    if not tma:
        return [None] * len(ts)
    from triton.tools.tensor_descriptor import TensorDescriptor
    return [TensorDescriptor(x, [x.shape[0] * x.shape[1], x.shape[2], x.shape[3]],
                             [x.shape[2] * x.shape[3], x.shape[3], 1], [1, BT, BV]) for x in ts]


def _slots(device, warps, maxnreg=0):
    """Scan programs the GPU runs at once: SMs x programs per SM by registers (the scan kernels sit
    at their register cap, ptxas ``maxnreg`` or 255 per thread, allocated 8 at a time)."""
    regs = -(-(maxnreg or 255) // 8) * 8
    return _sm_count(device) * max(1, 65536 // (regs * 32 * warps))


def _wave_segments(NC, programs, walk_slots, seg_slots, passes=1, shared=True):
    """Segments for ``passes`` causal walks of NC chunks with ``programs`` programs per segment (on the
    GPU together when ``shared``, else one after the other): the fewest that minimise waves x chunks
    per segment over the walks and the segment-sum passes (all but one segment each), with
    ``walk_slots`` / ``seg_slots`` programs at once.

    H200, Based d16/v64 (benchmarks/RESULTS.md v11): the forward's 128 programs per segment fill 396
    slots at 3 segments (8K fwd 0.38 ms against 0.47 at 8), and the backward's two walks fill 264
    at one segment (32K backward 2.9 ms against 3.6 at 8); degree 2 at d64 (1184 programs) keeps one.
    """
    key = (NC, programs, walk_slots, seg_slots, passes, shared)
    if key not in _WAVE_CUTS:
        best, seen = None, set()
        for n in range(1, min(NC, 64) + 1):
            cps = _cdiv(NC, n)
            n = _cdiv(NC, cps)
            if n in seen:
                continue
            seen.add(n)
            walk = _cdiv(passes * n * programs, walk_slots) if shared else passes * _cdiv(n * programs, walk_slots)
            cost = (walk + _SEG_STEP * _cdiv(passes * (n - 1) * programs, seg_slots)) * (cps + _PROGRAM_STEPS)
            if best is None or cost < best[0]:
                best = (cost, n)
        _WAVE_CUTS[key] = best[1]
    return _WAVE_CUTS[key]


def _segments(NC, programs, segments, target=None, slots=None, passes=1, shared=True):
    """(number of segments, chunks per segment) for a causal scan of NC chunks.

    ``programs`` is the number of scan programs per segment (feature tiles x v tiles x
    batch*head); ``segments=None`` picks them by waves (:func:`_wave_segments`) when ``slots``
    = (walk slots, segment-pass slots) is given, else enough for about ``target`` programs.
    """
    if segments is None:
        if slots is not None:
            segments = _wave_segments(NC, max(1, programs), *slots, passes, shared)
        else:
            segments = -(-target // max(1, programs))
    segments = max(1, min(int(segments), NC))
    cps = -(-NC // segments)
    # chunks per segment a multiple of the segment pass's chunks per step (_seg_rows), so that
    # the pass steps over whole groups of chunks
    if segments > 1:
        g = _seg_rows()
        cps = -(-cps // g) * g
    return -(-NC // cps), cps


_SEG_ROWS = 2
_SEG_MAX_ROWS = 128


def _seg_rows():
    """Chunks the segment-sum pass takes per step (FASTATTN_SEG_ROWS): one MMA over their rows, half
    as many steps, each with twice the MMA work. H200, two chunks of 64 against one (same run,
    benchmarks/out/sweep31): Based 32K fwd 1.26 -> 1.20 ms, (1+x)^3 d16 32K fwd 5.09 -> 4.30; four
    chunks were slower (1.38 ms)."""
    return max(1, _knob("FASTATTN_SEG_ROWS", _SEG_ROWS))


def _seg_group(chunk, block_f, block_v, cps=None, scale_y=False):
    """The chunks one step of the segment-sum pass covers: :func:`_seg_rows`, halved until it divides
    ``cps`` (chunks per segment; None: any) and the step fits, tiles up to 64 x 64 and steps up to
    128 rows (x d64's fused pass at 256 rows asked for 237 KB of shared memory on sm_90,
    benchmarks/out/sweep31_x.txt). The sums of dn / den (``scale_y``) keep one chunk a step: ptxas
    spilled 192 bytes there at two."""
    if scale_y:
        return 1
    g = _seg_rows()
    while g > 1 and ((cps is not None and cps % g) or chunk * g > _SEG_MAX_ROWS or block_f * block_v > 64 * 64):
        g //= 2
    return g


def _segment_prefix(x, y, rden, cz, idx, w, T, D, DV, F_PAD, NC, CPS, NSEG, NF, NV, BH, chunk, block_f, BVs, BD,
                    normalize, scale_y, precision, warps, reverse, ld=False, ktab=None, kron=None, tma=False):
    """Prefix (``reverse=False``) or suffix sums over segments of the per-segment states:
    S0[bh, s] = sum over segments before s (after s) of sum_t feat(x_t)^T y_t, and Z0 likewise."""
    S = torch.empty((BH, NSEG, F_PAD, DV), dtype=torch.float32, device=x.device)
    Z = torch.empty((BH, NSEG, F_PAD), dtype=torch.float32, device=x.device) if normalize else S
    g = _seg_group(chunk, block_f, BVs, CPS, scale_y)
    chunk, NC, CPS = chunk * g, _cdiv(T, chunk * g), CPS // g
    warps = _knob("FASTATTN_SEG_WARPS", warps)
    yd, = _descs(tma, chunk, BVs, y)
    # the segments whose sums a prefix (suffix) uses: all but the last (first)
    _segment_state_kernel[(NF * (NSEG - 1), NV, BH)](x, y, yd, rden, cz, S, Z, idx, w, idx if ktab is None else ktab,
                                                     T, D, DV, F_PAD, NC, CPS, NF, NSEG, int(reverse),
                                                     BT=chunk, BF=block_f, BV=BVs, BD=BD,
                                                     NORMALIZE=normalize, SCALE_Y=scale_y, PRECISION=precision,
                                                     LD=ld, TMA_LD=tma, WIDE=_wide(T, D, DV), num_warps=warps,
                                                     **_regs("FASTATTN_MAXNREG_SEG", 0, x.device),
                                                     **(kron or {}))

    def exclusive(t):
        # in-place exclusive scan over the segment axis (dim 1), forward or backward
        n = t[0, 0].numel()
        block = min(1024, _pow2(n))
        _segment_scan_kernel[(_cdiv(n, block), BH)](t, n, NSEG, REVERSE=reverse, BLOCK=block, num_warps=4)
        return t
    return exclusive(S), (exclusive(Z) if normalize else None)


def _streams(device, worth=True):
    """True when a backward's two walks go side by side (:func:`_side_by_side`): CUDA, and the knob
    FASTATTN_BWD_STREAMS (default: ``worth``)."""
    return torch.device(device).type == "cuda" and bool(_knob("FASTATTN_BWD_STREAMS", int(worth)))


def _side_by_side(first, second, device, together=True):
    """Run two independent launches, ``second`` on a side stream when ``together`` (from
    :func:`_streams`), so the last wave of one pass shares the GPU with the other instead of idling
    it. The backward's two walks write disjoint gradients (dq; dk and dv) from the same inputs.
    H100: degree 2 at d64 64K fwd+bwd 77 -> 75 ms; f = x at d64 (short walks) 8K 1.0 -> 1.2 ms, so the
    fused path puts them together only for states above 64 x 64 (benchmarks/RESULTS.md, v5/v6)."""
    dev = torch.device(device)
    if not together:
        first()
        second()
        return
    main = torch.cuda.current_stream(dev)
    side = torch.cuda.Stream(device=dev)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        second()
    first()
    main.wait_stream(side)


def _bwd_prep(q, o, do, z, normalize, fix_abs, eps, chunk, const=False):
    """(1 / den, dz, dns) for an output o = n / den(z), in one pass over o and do: 1 / den and dz per
    token when normalised (else q, q as unused placeholders), and with ``const`` the prefix sums over
    chunks of each chunk's sum of dn = do / den, fp32 [B * H, NC, DV] (else None)."""
    if not normalize and not const:
        return q, q, None
    B, H, T, DV = do.shape
    NC = _cdiv(T, chunk)
    rden = _empty((B, H, T), q.device) if normalize else q
    dz = _empty((B, H, T), q.device) if normalize else q
    dns = _empty((B * H, NC, DV), q.device) if const else q
    _bwd_prep_kernel[(NC, B * H)](o, do, z if normalize else q, rden, dz, dns, float(eps), T, DV, NC, BT=chunk,
                                  BV=max(16, _pow2(DV)), FIX_ABS=fix_abs, NORMALIZE=normalize, CONST=const,
                                  num_warps=4)
    return rden, dz, (dns.cumsum_(1) if const else None)


# the fused path keeps the whole [F_pad, DV_pad] fp32 state of a sequence in one program
_FUSED_MAX_STATE = 256 * 64
# features of the fused path gathered by loads from memory (1) or by one-hot matmuls (0)
# (H100, Based d16/v64: loads were 1.2-2x slower in fwd and bwd, see benchmarks/RESULTS.md)
_FUSED_LD = os.environ.get("FASTATTN_FUSED_LD", "0") == "1"
# v columns per forward program of the fused path (0: all of them); a narrower tile halves
# the state's registers and doubles the programs, each recomputing phi and the normaliser
# (FASTATTN_FUSED_FWD_BV); warps of the fused forward (FASTATTN_FUSED_FWD_WARPS, 0: 8 for a
# state above 64 x 64, else 4: H100, f = x at d64, 32K fwd 0.43 ms at 4 warps vs 0.62 at 8).
# Both are read at call time in _fused_fwd.
#
# tokens per chunk when chunk=None: the fused path holds [chunk, F_pad] feature tiles beside
# the [F_pad, DV] state, so 32 where the state is large (ptxas sm_90: 64 spills ~2 KB per
# thread at F_pad 256, DV 64), 64 where it is small (f = x at d64: F_pad 64)
_CHUNK = 64


def _auto_chunk(tiles):
    if tiles is None:
        return _CHUNK
    return 32 if tiles[0] * tiles[1] > 64 * 64 else 64
_FUSED_LD_BWD = os.environ.get("FASTATTN_FUSED_LD_BWD", "1" if _FUSED_LD else "0") == "1"


# a degree-2 f whose features fit one tile takes the fused path below these lengths, the general
# Kronecker scans from them on. H200, Based d16/v64, same run, segments by waves (benchmarks/RESULTS.md
# v11): forward 4K 0.35 fused vs 0.52 general ms, 8K 0.53 vs 0.38; fwd+bwd 4K 1.51 vs 1.70, 8K 1.92
# vs 1.74 (on the H100 before the wave cuts the general backward won only from 16K on)
_FUSED_DEG2_BELOW = {"fwd": 8192, "bwd": 8192}


def _fused_tiles_dims(D, DV, part="fwd", T=0):
    # FASTATTN_FUSED=0 sends every shape down the general path; FASTATTN_FUSED_FWD / _BWD = 1 or 0
    # force one pass either way (default: by T for a degree-2 f, fused otherwise)
    default = int(T < _FUSED_DEG2_BELOW[part]) if _kron_degree() else 1
    if not _knob("FASTATTN_FUSED", 1) or not _knob(f"FASTATTN_FUSED_{part.upper()}", default):
        return None
    BF = max(16, _pow2(feature_dim(D)))
    BV = max(16, _pow2(DV))
    return (BF, BV) if BF * BV <= _FUSED_MAX_STATE else None


def _fused_tiles(q, v, causal, part="fwd"):
    """(BF, BV) of the fused causal path for this pass when all features fit one tile, else None."""
    return _fused_tiles_dims(q.shape[-1], v.shape[-1], part, q.shape[2]) if causal else None


def _empty_like_dtype(shape, dtype, device):
    if os.environ.get("FASTATTN_NAN_FILL", "0") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _fused_fwd(q, k, v, scale, normalize, fix_abs, eps, chunk, segments, BF, BV):
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, _ = feature_tables(D, scale, q.device, BF)
    F_PAD = idx.shape[1]
    BD, _, precision = _dims(q, v)
    NC = _cdiv(T, chunk)
    warps = 8 if BF * BV >= 64 * 64 else 4
    fwd_bv = _knob("FASTATTN_FUSED_FWD_BV", 0)
    BVt = BV if fwd_bv <= 0 else min(BV, max(16, fwd_bv))
    fwd_warps = _knob("FASTATTN_FUSED_FWD_WARPS", 0) or (8 if BF * BVt > 64 * 64 else 4)
    NSEG, CPS = _fused_segments(NC, B * H * (BV // BVt), segments, q.device, fwd_warps, warps)
    _took("fwd/fused/segments" if NSEG > 1 else "fwd/fused")
    if _FUSED_LD:
        _took("fwd/fused/ld")
    if BVt < BV:
        _took("fwd/fused/v-tiles")
    o = _empty_like_dtype((B, H, T, DV), q.dtype, q.device)
    z = _empty((B, H, T), q.device) if normalize else o
    S0 = Z0 = o
    if NSEG > 1:
        S0, Z0 = _segment_prefix(k, v, z, z, idx, w_psi, T, D, DV, F_PAD, NC, CPS, NSEG, 1, 1, B * H, chunk,
                                 BF, BV, BD, normalize, False, precision, warps, reverse=False, ld=_FUSED_LD)
        Z0 = o if Z0 is None else Z0
    _fused_fwd_kernel[(NSEG, BV // BVt, B * H)](q, k, v, o, z, S0, Z0, idx, w_phi, w_psi, float(scale), float(eps), T,
                                                D, DV, F_PAD, NC, CPS, BT=chunk, BF=BF, BV=BVt, BD=BD,
                                                NORMALIZE=normalize, FIX_ABS=fix_abs, USE_SEG=NSEG > 1,
                                                PRECISION=precision, LD=_FUSED_LD, WIDE=_wide(T, D, DV),
                                                num_warps=fwd_warps)
    return o, (z if normalize else None), ((S0, Z0, CPS * chunk) if NSEG > 1 else None)


def _fused_bwd(q, k, v, o, z, do, scale, normalize, fix_abs, eps, chunk, segments, BF, BV, state):
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, _ = feature_tables(D, scale, q.device, BF)
    F_PAD = idx.shape[1]
    BD, _, precision = _dims(q, v)
    NC = _cdiv(T, chunk)
    warps = 8 if BF * BV >= 64 * 64 else 4
    # side by side for large states, and for long walks: H200, f = x at d64 (64 x 64 state), 32K fwd+bwd
    # 1.73 -> 1.67 ms and 64K 3.41 -> 3.25 with them, 8K 1.00 -> 1.18 and 16K 0.96 -> 1.29 (sweep28_x)
    streams = _streams(q.device, BF * BV > 64 * 64 or NC >= 512)
    NSEG, CPS = _fused_segments(NC, B * H, segments, q.device, warps, warps, passes=2, shared=streams)
    if state is not None:
        # the forward's prefix states: segments of seg_tokens tokens, re-cut into this pass's chunks
        S0, Z0, seg_tokens = state
        if seg_tokens % chunk == 0 and _cdiv(NC, seg_tokens // chunk) == S0.shape[1]:
            CPS = seg_tokens // chunk
            NSEG = _cdiv(NC, CPS)
            state = (S0, Z0)
        else:
            state = None
    _took("bwd/fused" if NSEG == 1 else "bwd/fused/segments/rebuilt" if state is None else
          "bwd/fused/segments/saved")
    if _FUSED_LD_BWD:
        _took("bwd/fused/ld")
    rden, dz, _ = _bwd_prep(q, o, do, z, normalize, fix_abs, eps, chunk)
    dq = _empty_like_dtype(q.shape, q.dtype, q.device)
    dk = _empty_like_dtype(k.shape, k.dtype, q.device)
    dv = _empty_like_dtype(v.shape, v.dtype, q.device)
    S0 = Z0 = dS0 = dZ0 = dq
    if NSEG > 1:
        if state is None:
            S0, Z0 = _segment_prefix(k, v, dq, dq, idx, w_psi, T, D, DV, F_PAD, NC, CPS, NSEG, 1, 1, B * H, chunk,
                                     BF, BV, BD, normalize, False, precision, warps, reverse=False, ld=_FUSED_LD_BWD)
        else:
            S0, Z0 = state
        dS0, dZ0 = _segment_prefix(q, do, rden, dz, idx, w_phi, T, D, DV, F_PAD, NC, CPS, NSEG, 1, 1, B * H, chunk,
                                   BF, BV, BD, normalize, normalize, precision, warps, reverse=True, ld=_FUSED_LD_BWD)
        Z0 = dq if Z0 is None else Z0
        dZ0 = dq if dZ0 is None else dZ0
    def walk(pass_, s0, z0):
        _fused_bwd_kernel[(NSEG, B * H)](q, k, v, do, rden, dz, dq, dk, dv, s0, z0, idx, w_phi, w_psi, float(scale),
                                         T, D, DV, F_PAD, NC, CPS, BT=chunk, BF=BF, BV=BV, BD=BD,
                                         NORMALIZE=normalize, USE_SEG=NSEG > 1, PASS=pass_, PRECISION=precision,
                                         LD=_FUSED_LD_BWD, WIDE=_wide(T, D, DV), num_warps=warps)
    _side_by_side(lambda: walk(0, S0, Z0), lambda: walk(1, dS0, dZ0), q.device, streams)
    return dq, dk, dv


# the chunk-parallel forward (causal) keeps one fp32 [F_pad, DV] prefix state per segment of CPS
# chunks: segments are as short as this many MiB of states allow (FASTATTN_CHUNK_FWD_MIB), and at
# least FASTATTN_CHUNK_FWD_CPS chunks long. It serves the symmetric basis beyond the fused path
# (degree >= 3, or degree 2 with FASTATTN_KRON=0): H100, (1+x)^3 d16/v64 32K fwd 5.1 ms against 9.4
# for the atomic walk. The fused walk (Based, f = x) and the Kronecker walk stay faster where they
# apply (Based 8K 0.64 vs 0.84 ms at best, d64 16K 5.2 vs 5.3 ms; benchmarks/out/probe11.txt);
# FASTATTN_CHUNK_FWD=1 / 0 forces it on / off for every causal call.
_CHUNK_FWD_MIB = 256
_CHUNK_FWD_CPS = 4


def _chunk_fwd(q, k, v, scale, normalize, fix_abs, eps, chunk, block_f, tiles):
    """Causal forward by _chunk_fwd_kernel: (o in q.dtype, z or None, state for the fused backward or None);
    ``tiles`` as :func:`_fused_tiles` gives them."""
    B, H, T, D = q.shape
    DV = v.shape[-1]
    if tiles is not None:
        # one symmetric table: segment states built as one [F_pad, DV] tile, read back 64 rows at a time
        BFs = tiles[0]
        idx, w_phi, w_psi, _ = feature_tables(D, scale, q.device, BFs)
        ktab, kron, BF = idx, {}, min(64, BFs)
    else:
        idx, w_phi, w_psi, ktab, BFs, kron, _ = _layout(q, v, scale, True, block_f)
        BF = BFs
    _took("fwd/chunk/fused-table" if tiles is not None else "fwd/chunk/kron" if kron else "fwd/chunk/symmetric")
    F_PAD = w_phi.numel()
    BD, BV, _, precision, warps = _blocks(q, v, BFs, None, kron)
    NC = _cdiv(T, chunk)
    seg_bytes = B * H * F_PAD * BV * 4
    CPS = max(_knob("FASTATTN_CHUNK_FWD_CPS", _CHUNK_FWD_CPS),
              -(-NC * seg_bytes // (_knob("FASTATTN_CHUNK_FWD_MIB", _CHUNK_FWD_MIB) * 2**20)))
    CPS = min(CPS, NC)
    NSEG = _cdiv(NC, CPS)
    o = _empty_like_dtype((B, H, T, DV), q.dtype, q.device)
    z = _empty((B, H, T), q.device) if normalize else o
    S0 = Z0 = o
    if NSEG > 1:
        S0, Z0 = _segment_prefix(k, v, z, z, idx, w_psi, T, D, DV, F_PAD, NC, CPS, NSEG, F_PAD // BFs, 1, B * H,
                                 chunk, BFs, BV, BD, normalize, False, precision, warps, reverse=False, ktab=ktab,
                                 kron=kron)
        Z0 = o if Z0 is None else Z0
    _chunk_fwd_kernel[(NC, 1, B * H)](q, k, v, o, z, S0, Z0, idx, w_phi, ktab, float(scale), float(eps), T, D, DV,
                                      F_PAD, NC, CPS, NSEG, F_PAD // BF, BT=chunk, BF=BF, BV=BV, BD=BD,
                                      NORMALIZE=normalize, FIX_ABS=fix_abs, PRECISION=precision, num_warps=4,
                                      **kron)
    state = (S0, Z0 if normalize else o.new_empty(0), CPS * chunk) if NSEG > 1 and tiles is not None else None
    return o, (z if normalize else None), state


def poly_attention_fwd(q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v, segments=None):
    """Forward pass on contiguous [B, H, T, D] inputs; returns (o in q.dtype, z fp32 [B, H, T] or None)."""
    return _poly_attention_fwd(q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v,
                               segments)[:2]


def _poly_attention_fwd(q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v, segments=None):
    """(o, z, saved scan state or None); the fused path when all features fit one tile."""
    tiles = _fused_tiles(q, v, causal)
    # uses_kron for this pass, from the tiles already found (one read of each routing knob per call)
    kron = _kron_degree() and (not causal or tiles is None)
    if causal and _knob("FASTATTN_CHUNK_FWD", int(tiles is None and not kron)):
        return _chunk_fwd(q, k, v, scale, normalize, fix_abs, eps, chunk or _CHUNK, block_f, tiles)
    if chunk is None:
        chunk = _auto_chunk(tiles)
    if tiles is not None:
        return _fused_fwd(q, k, v, scale, normalize, fix_abs, eps, chunk, segments, *tiles)
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, ktab, block_f, kron, a0 = _layout(q, v, scale, causal, block_f, "fwd", kron, causal)
    _took(("fwd/scan/causal/kron/const" if a0 else "fwd/scan/causal/kron") if kron and causal else
          "fwd/scan/full/kron" if kron else "fwd/scan/causal/symmetric" if causal else "fwd/scan/full/symmetric")
    F_PAD = w_phi.numel()
    BD, BV, BVs, precision, warps = _blocks(q, v, block_f, block_v, kron)
    NC = _cdiv(T, chunk)
    o = _empty((B, H, T, DV), q.device)
    z = _empty((B, H, T), q.device) if normalize else o
    # the constant term outside the scans: each chunk's sum of v, turned into prefix sums below
    vs = _empty((B * H, NC, DV), q.device) if a0 else o
    if causal:
        _intra_fwd_kernel[(NC, B * H)](q, k, v, o, z, vs, float(scale), T, D, DV, NC,
                                       BT=chunk, BD=BD, BV=BV, NORMALIZE=normalize, PRECISION=precision,
                                       CONST=bool(a0), num_warps=_intra_warps(chunk, BD, BV))
    else:
        o.zero_()
        z.zero_()
    NF, NV = F_PAD // block_f, _cdiv(DV, BVs)
    maxnreg = _regs("FASTATTN_MAXNREG_FWD", _MAXNREG_FWD if kron else 0, q.device)
    slots = (_slots(q.device, warps, maxnreg.get("maxnreg", 0)),
             _slots(q.device, warps, _knob("FASTATTN_MAXNREG_SEG", 0)))
    NSEG, CPS = _segments(NC, NF * NV * B * H, segments, slots=slots) if causal else (1, NC)
    S0 = Z0 = o
    tma, tma_add, _ = _tma_bits("FASTATTN_TMA_FWD", _TMA_FWD, B * H * T * NF, v, o)
    (vd,), (od,) = _descs(tma, chunk, BVs, v), _descs(tma_add, chunk, BVs, o)
    if NSEG > 1:
        S0, Z0 = _segment_prefix(k, v, z, z, idx, w_psi, T, D, DV, F_PAD, NC, CPS, NSEG, NF, NV, B * H, chunk,
                                 block_f, BVs, BD, normalize, False, precision, warps, reverse=False, ktab=ktab,
                                 kron=kron, tma=tma)
        Z0 = o if Z0 is None else Z0
    _inter_fwd_kernel[(NF * NSEG, NV, B * H)](q, k, v, vd, o, od, z, S0, Z0, idx, w_phi, w_psi, ktab, T, D, DV,
                                              F_PAD, NC,
                                              CPS, NF, BT=chunk, BF=block_f, BV=BVs, BD=BD, CAUSAL=causal,
                                              NORMALIZE=normalize, ATOMIC=NF > 1, USE_SEG=NSEG > 1,
                                              PRECISION=precision, TMA_LD=tma, TMA_ADD=tma_add, WIDE=_wide(T, D, DV),
                                              num_warps=warps, **maxnreg, **kron)
    out = _empty_like_dtype((B, H, T, DV), q.dtype, q.device)
    N, BR = B * H * T, max(16, 4096 // BV)
    if a0:
        vs.cumsum_(1)
    _finalize_kernel[(_cdiv(N, BR),)](o, z, out, vs, a0, float(eps), N, T, DV, NC, NORMALIZE=normalize,
                                      FIX_ABS=fix_abs, BR=BR, BV=BV, BT=chunk, CONST=bool(a0), num_warps=4)
    return out, (z if normalize else None), None


def poly_attention_bwd(q, k, v, o, z, do, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v,
                       segments=None, state=None):
    """Backward pass: (dq, dk, dv) in the input dtypes, from the saved output ``o`` and normaliser ``z``
    (and, on the fused path, the forward's segment prefix states ``state``)."""
    tiles = _fused_tiles(q, v, causal, "bwd")
    if chunk is None:
        chunk = _auto_chunk(tiles)
    if tiles is not None:
        return _fused_bwd(q, k, v, o, z, do.contiguous(), scale, normalize, fix_abs, eps, chunk, segments, *tiles,
                          state)
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, ktab, block_f, kron, a0 = _layout(q, v, scale, causal, block_f, "bwd", _kron_degree(),
                                                          causal)
    _took(("bwd/scan/causal/kron/const" if a0 else "bwd/scan/causal/kron") if kron and causal else
          "bwd/scan/full/kron" if kron else "bwd/scan/causal/symmetric" if causal else "bwd/scan/full/symmetric")
    F_PAD = w_phi.numel()
    BD, BV, BVs, precision, warps = _blocks(q, v, block_f, block_v, kron)
    NC = _cdiv(T, chunk)
    do = do.contiguous()
    rden, dz, dns = _bwd_prep(q, o, do, z, normalize, fix_abs, eps, chunk, bool(a0))
    dq = _empty((B, H, T, D), q.device)
    dk = _empty((B, H, T, D), q.device)
    dv = _empty((B, H, T, DV), q.device)
    if causal:
        _intra_bwd_kernel[(NC, B * H)](q, k, v, do, rden, dz, dq, dk, dv, dq if dns is None else dns, a0,
                                       float(scale), T, D, DV, NC, BT=chunk, BD=BD, BV=BV, NORMALIZE=normalize,
                                       PRECISION=precision, CONST=bool(a0), num_warps=_intra_warps(chunk, BD, BV))
    else:
        dq.zero_()
        dk.zero_()
        dv.zero_()
    NF, NV = F_PAD // block_f, _cdiv(DV, BVs)
    # the two walks share the GPU when the second runs on a side stream (_side_by_side)
    regs = max(_knob(f"FASTATTN_MAXNREG_BWD{p}", _knob("FASTATTN_MAXNREG_BWD", 0)) or 255 for p in (0, 1))
    slots = (_slots(q.device, warps, regs), _slots(q.device, warps, _knob("FASTATTN_MAXNREG_SEG", 0)))
    streams = _streams(q.device)
    NSEG, CPS = _segments(NC, NF * NV * B * H, segments, slots=slots, passes=2, shared=streams) if causal else (1, NC)
    S0 = Z0 = dS0 = dZ0 = dq
    tma, tma_add, tma_dx = _tma_bits("FASTATTN_TMA_BWD", _TMA_BWD, B * H * T * NF, v, do, dv)
    (vd, dod), (dvd,) = _descs(tma, chunk, BVs, v, do), _descs(tma_add, chunk, BVs, dv)
    tma_dx = tma_dx and kron.get("KG") == 1 and _tma_ok(dq, dk)
    dxg = _descs(tma_dx, chunk, kron.get("KA"), dq, dk)
    dxl = _descs(tma_dx, chunk, block_f, dq, dk)
    if NSEG > 1:
        # pass 0 (dq) starts from the forward's prefix state; pass 1 (dk, dv) from the suffix
        # of sum phi(q)^T dn over later segments
        S0, Z0 = _segment_prefix(k, v, dq, dq, idx, w_psi, T, D, DV, F_PAD, NC, CPS, NSEG, NF, NV, B * H, chunk,
                                 block_f, BVs, BD, normalize, False, precision, warps, reverse=False, ktab=ktab,
                                 kron=kron, tma=tma)
        dS0, dZ0 = _segment_prefix(q, do, rden, dz, idx, w_phi, T, D, DV, F_PAD, NC, CPS, NSEG, NF, NV, B * H,
                                   chunk, block_f, BVs, BD, normalize, normalize, precision, warps, reverse=True,
                                   ktab=ktab, kron=kron, tma=tma)
        Z0 = dq if Z0 is None else Z0
        dZ0 = dq if dZ0 is None else dZ0
    def walk(pass_):
        _inter_bwd_kernel[(NF * NSEG, NV, B * H)](q, k, v, vd, do, dod, rden, dz, dq, dk, dv, dvd, dxg[pass_],
                                                  dxl[pass_], S0, Z0, dS0, dZ0,
                                                  idx, w_phi, w_psi, ktab, T, D, DV, F_PAD, NC, CPS, NF, BT=chunk,
                                                  BF=block_f, BV=BVs, BD=BD, CAUSAL=causal, NORMALIZE=normalize,
                                                  ATOMIC_QK=NF * NV > 1, ATOMIC_V=NF > 1, USE_SEG=NSEG > 1,
                                                  PASS=pass_, PRECISION=precision, TMA_LD=tma, TMA_ADD=tma_add,
                                                  WIDE=_wide(T, D, DV), TMA_DX=tma_dx,
                                                  **_regs(f"FASTATTN_MAXNREG_BWD{pass_}",
                                                          _knob("FASTATTN_MAXNREG_BWD", 0), q.device),
                                                  num_warps=warps, **kron)
    _side_by_side(lambda: walk(0), lambda: walk(1), q.device, streams)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _check_normalized(o, z, fix_abs, q, k, v):
    """ValueError where a normalised output cannot be right, instead of returning it: the normaliser
    z = sum_j f(s q_i.k_j) <= 0 or not finite where the denominator is z (f > 0 on R, so the feature
    sums lost it to 16-bit rounding or f overflowed), z not finite where it is |z| + eps, or o not
    finite (16-bit features that overflowed in the numerator). Non-finite inputs are the caller's
    (they propagate as in SDPA): nothing is raised then. Two reductions and one host sync, skipped
    while a CUDA graph is captured (fastattn.kernels.naive.check_normalized is the same rule)."""
    if not z.numel() or (z.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    lo, hi = torch.aminmax(z)
    lo, hi, o_ok = torch.stack([lo.double(), hi.double(), torch.isfinite(o).all().double()]).tolist()
    # NaN fails both comparisons
    z_ok = (lo > -math.inf if fix_abs else lo > 0) and hi < math.inf
    if (z_ok and o_ok) or not all(bool(torch.isfinite(x).all()) for x in (q, k, v)):
        return
    if not z_ok:
        bad = ~torch.isfinite(z) if fix_abs else ~(z > 0) | ~torch.isfinite(z)
        where = tuple(bad.nonzero()[0].tolist())
        what, fix = ("not finite", "") if fix_abs else ("<= 0 or not finite", ", or normalizer_fix='abs'")
        raise ValueError(f"normalize=True: the normaliser sum_j f(s q_i.k_j) is {z[where].item():.6g} at [b, h, t] "
                         f"= {list(where)} ({int(bad.sum())} of {z.numel()} rows {what}) although q, k, v are finite "
                         f"({q.dtype}): f(x) = {COEFFS_TEXT} overflowed or rounding lost the sum; use float32 inputs, "
                         f"a smaller scale or smaller inputs{fix}")
    bad = ~torch.isfinite(o)
    where = tuple(bad.nonzero()[0].tolist())
    raise ValueError(f"the output is {o[where].item()} at [b, h, t, c] = {list(where)} ({int(bad.sum())} of "
                     f"{o.numel()} entries not finite) although q, k, v are finite ({q.dtype}): the features of "
                     f"f(x) = {COEFFS_TEXT} overflowed the dtype; use float32 inputs, a smaller scale or smaller "
                     "inputs")


class PolyAttentionFunction(torch.autograd.Function):
    """Autograd wrapper of :func:`poly_attention_fwd` / :func:`poly_attention_bwd`."""

    @staticmethod
    def forward(ctx, q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v, segments,
                check_output=None):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o, z, state = _poly_attention_fwd(q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v,
                                          segments)
        if normalize and (check_output or (check_output is None and (not q.is_cuda or torch.is_anomaly_enabled()))):
            _check_normalized(o, z, fix_abs, q, k, v)
        empty = o.new_empty(0)
        S0, Z0, ctx.seg_tokens = state if state is not None else (empty, empty, 0)
        ctx.has_state = state is not None
        ctx.save_for_backward(q, k, v, o, z if z is not None else empty, S0, Z0)
        ctx.scale, ctx.causal, ctx.normalize, ctx.fix_abs, ctx.eps = scale, causal, normalize, fix_abs, eps
        ctx.chunk, ctx.block_f, ctx.block_v, ctx.segments = chunk, block_f, block_v, segments
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, z, S0, Z0 = ctx.saved_tensors
        state = (S0, Z0, ctx.seg_tokens) if ctx.has_state else None
        dq, dk, dv = poly_attention_bwd(q, k, v, o, z, do, ctx.scale, ctx.causal, ctx.normalize, ctx.fix_abs,
                                        ctx.eps, ctx.chunk, ctx.block_f, ctx.block_v, ctx.segments, state)
        return dq, dk, dv, None, None, None, None, None, None, None, None, None, None


def _finite(x):
    if isinstance(x, (bool, complex)):
        return False
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _check_pow2(name, value, lo):
    if not isinstance(value, int) or value < lo or value & (value - 1):
        raise ValueError(f"{name}={value!r} must be a power of two >= {lo}")


def poly_attention(q, k, v, scale=None, causal=True, normalize=True, normalizer_fix=None, eps=1e-6,
                   chunk=None, block_f=64, block_v=None, segments=None, check_output=None):
    """Linear attention with the polynomial f of this module (see the module docstring).

    Parameters
    ----------
    q, k : tensor [B, H, T, D]
    v : tensor [B, H, T, DV]
        fp32, fp16 or bf16 (one dtype, one device), on a CUDA device (or on the CPU under
        TRITON_INTERPRET=1, fp32 or fp16 only).
    scale : float, optional
        s in f(s q.k); default 1/sqrt(D) like torch SDPA.
    causal : bool
        Key j is visible to query i iff j <= i.
    normalize : bool
        Divide by sum_j f(s q_i.k_j). Refused when f can be <= 0 on the reals unless
        ``normalizer_fix="abs"``, which divides by |sum_j f(s q_i.k_j)| + eps instead.
    chunk, block_f, block_v : int
        Tokens per chunk (None: 32 on the fused path for small feature maps, else 64), features
        per tile (on the Kronecker layout of a degree-2 f: 16 to 256, see ``kron_tables``), v columns
        per tile (None: all of them).
    segments : int, optional
        Causal only: segments of the sequence scanned in parallel (None: enough to fill the
        GPU, see ``_segments``).
    check_output : bool or None
        With ``normalize``: the kernels always turn a denominator that is <= 0 or not finite into a
        NaN row, never a finite wrong one. ``check_output`` also reads the normaliser and the output
        back and raises where they cannot be right (see Raises), at the price of a host sync per
        call. None (default): on the CPU (the interpreter), and on CUDA only under
        ``torch.autograd.detect_anomaly()``; True: always; False: never.

    Returns
    -------
    tensor [B, H, T, DV] in q's dtype; T = 0 gives an empty one.

    Raises
    ------
    ValueError
        Bad arguments (shape, dtype, device, tiling, scale, eps; bfloat16 under
        TRITON_INTERPRET=1, whose bf16 dot is wrong), a normaliser f cannot make safe, or (when
        the output is checked) a denominator that comes out <= 0 or not finite, or an output
        that is not finite, from finite inputs (16-bit rounding of the feature sums, or f
        overflowing). Unchecked, such rows come back NaN.

    Examples
    --------
    >>> q = k = v = torch.randn(1, 2, 100, 16, device="cuda")  # doctest: +SKIP
    >>> poly_attention(q, k, v).shape  # doctest: +SKIP
    torch.Size([1, 2, 100, 16])
    """
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"expected q, k [B, H, T, D] and v [B, H, T, DV]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"q, k, v must share one dtype of float32/float16/bfloat16; got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")
    if q.dtype == torch.bfloat16 and _interpreting():
        raise ValueError("bfloat16 under TRITON_INTERPRET=1 is refused: the interpreter's bf16 dot gives wrong "
                         "results without an error; pass float32 or float16, run on a GPU, or use the pure-torch "
                         "path (fastattn.kernels.poly_attention(..., backend='torch'))")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if q.shape[-1] < 1 or v.shape[-1] < 1:
        raise ValueError(f"head dims must be >= 1; got D={q.shape[-1]}, DV={v.shape[-1]}")
    if q.shape[-1] > 256 or v.shape[-1] > 256:
        raise ValueError(f"head dims up to 256 are supported; got D={q.shape[-1]}, DV={v.shape[-1]}")
    if chunk is not None:
        _check_pow2("chunk", chunk, 16)
    _check_pow2("block_f", block_f, 16)
    if block_v is not None:
        _check_pow2("block_v", block_v, 16)
    if segments is not None and (not isinstance(segments, int) or segments < 1):
        raise ValueError(f"segments={segments!r} must be None or an int >= 1")
    if normalizer_fix not in (None, "abs"):
        raise ValueError(f"normalizer_fix={normalizer_fix!r}; use None or 'abs'")
    if normalize and not POSITIVE_ON_REALS and normalizer_fix is None:
        raise ValueError(f"normalize=True needs f > 0 on the reals, but {POSITIVITY_REASON}; pass "
                         "normalize=False, or normalizer_fix='abs' to divide by |sum_j f| + eps")
    if scale is not None and not _finite(scale):
        raise ValueError(f"scale={scale!r} must be a finite real number (or None for 1/sqrt(D))")
    if not (_finite(eps) and float(eps) > 0):
        raise ValueError(f"eps={eps!r} must be a finite real number > 0")
    if q.shape[2] == 0:
        # T = 0: an empty [B, H, 0, DV], still a function of q, k, v (zero gradients), as on the torch path
        _took("empty")
        return v[:, :, :0] + (q.sum() + k.sum()) * 0
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return PolyAttentionFunction.apply(q, k, v, scale, bool(causal), bool(normalize), normalizer_fix == "abs",
                                       float(eps), chunk, block_f, block_v, segments, check_output)


class PolyAttention(torch.nn.Module):
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=...)``.

    Examples
    --------
    >>> layer = PolyAttention(causal=True)  # doctest: +SKIP
    >>> q = k = v = torch.randn(1, 2, 100, 16, device="cuda")  # doctest: +SKIP
    >>> layer(q, k, v).shape  # doctest: +SKIP
    torch.Size([1, 2, 100, 16])
    """

    def __init__(self, causal=DEFAULTS["causal"], normalize=DEFAULTS["normalize"], scale=DEFAULTS["scale"],
                 normalizer_fix=DEFAULTS["normalizer_fix"], eps=1e-6, chunk=None, block_f=64, block_v=None,
                 check_output=None):
        super().__init__()
        self.causal, self.normalize, self.scale = causal, normalize, scale
        self.normalizer_fix, self.eps = normalizer_fix, eps
        self.chunk, self.block_f, self.block_v = chunk, block_f, block_v
        self.check_output = check_output

    def forward(self, q, k, v):
        return poly_attention(q, k, v, scale=self.scale, causal=self.causal, normalize=self.normalize,
                              normalizer_fix=self.normalizer_fix, eps=self.eps, chunk=self.chunk,
                              block_f=self.block_f, block_v=self.block_v, check_output=self.check_output)

    def extra_repr(self):
        return f"f(x) = {COEFFS_TEXT}, causal={self.causal}, normalize={self.normalize}, scale={self.scale}"
