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

import collections
import dataclasses
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
    # the token rows of chunk i_c: int32 (half the registers of every [BT, n] offset tile) unless
    # T * max(D, DV) reaches 2^31 (WIDE)
    if WIDE:
        o_t = (i_c * BT + tl.arange(0, BT)).to(tl.int64)
    else:
        o_t = i_c * BT + tl.arange(0, BT)
    return o_t


@triton.jit
def _ld_rows(p, desc, i_bh, t0, c0, o_t, m_t, o_v, m_v, DV, BT: tl.constexpr, BV: tl.constexpr, TMA: tl.constexpr):
    # the [BT, BV] tile (rows o_t = t0.., columns o_v = c0..) of one sequence's [T, DV] rows at p:
    # by a TMA descriptor over [batch*head, T, DV] (zeros past T; no [BT, BV] tile of 64-bit
    # addresses in registers), or by masked pointer loads
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
                          KRON: tl.constexpr = False, KG: tl.constexpr = 1,
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
                      PRECISION: tl.constexpr, WIDE: tl.constexpr = True):
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
        b_phi = _phi(b_q, m_t, idx, o_f, F_PAD, b_wq, BD, PRECISION)  # [BT, BF]
        b_o = tl.dot(b_phi.to(DT), b_S.to(DT), b_o, input_precision=PRECISION)  # [BT, BV]
        if NORMALIZE:
            b_z = tl.sum(b_a, 1) + tl.sum(b_phi * b_zs[None, :], 1)  # [BT]
            b_o = b_o / _den(b_z, eps, FIX_ABS)[:, None]
            tl.store(z + i_bh64 * T + o_t, b_z, mask=m_t)
        tl.store(p_o + o_t[:, None] * DV + o_v[None, :], b_o.to(DT), mask=m_vv)
        # chunk i_c enters the state after its own queries used it
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
                      PRECISION: tl.constexpr, WIDE: tl.constexpr = True):
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
            b_psi = _phi(b_k, m_t, idx, o_f, F_PAD, b_wk, BD, PRECISION)  # [BT, BF]
            b_S = tl.dot(tl.trans(b_psi).to(DT), b_v, b_S, input_precision=PRECISION)  # [BF, BV]
            b_zs += tl.sum(b_psi.to(tl.float32), 0)
        else:
            b_a = tl.where(m_a, _f(b_s), 0.0)  # [BT, BT]
            b_dk = tl.dot(tl.trans(b_ds).to(DT), b_q, input_precision=PRECISION)  # [BT, BD]
            b_dv = tl.dot(tl.trans(b_a).to(DT), b_dn.to(DT), input_precision=PRECISION)  # [BT, BV]
            b_psi = _phi(b_k, m_t, idx, o_f, F_PAD, b_wk, BD, PRECISION)  # [BT, BF]
            b_dv = tl.dot(b_psi.to(DT), b_S.to(DT), b_dv, input_precision=PRECISION)  # [BT, BV]
            tl.store(dv + o_vv, b_dv.to(DT), mask=m_vv)
            b_dpsi = tl.dot(b_v, tl.trans(b_S.to(DT)), input_precision=PRECISION)  # [BT, BF]
            if NORMALIZE:
                b_dpsi += b_zs[None, :]
            b_dk += _phi_vjp(b_k, idx, o_f, F_PAD, b_wk, b_dpsi, BD, PRECISION)  # [BT, BD]
            tl.store(dk + o_qk, b_dk.to(DT), mask=m_qk)
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
    """Group width: 8 (one 8 x 8 product per 64-feature tile) from block_f 64 on, else 4 (groups of 4 at
    block_f 64 lost to their 4-D broadcast: TUNING.md)."""
    return 8 if block_f >= 64 else 4


# the degree of f (the highest power with a nonzero coefficient)
_DEGREE = max((j for j, a in COEFFS.items() if a != 0), default=0)


def uses_kron(dim, causal=True, dim_v=None, part="fwd", T=0, tuning=None):
    """True when the general path's features for this pass (``part``: "fwd" or "bwd", on ``T`` tokens)
    are block-Kronecker tiles: f has degree 2 and the pass does not take the fused path (see :func:`plan`)."""
    t = _resolve(tuning)
    return _kron_on(t) and (not causal or _fused_tiles_dims(dim, dim if dim_v is None else dim_v, part, T, t) is None)


def _kron_on(t):
    # the block-Kronecker layout exists for degree 2 only; tuning kron=False keeps the symmetric basis
    return _DEGREE == 2 and t["kron"]


def _group_width(block_f, group=None):
    """Kronecker group width: ``group``, else :func:`_kron_group`."""
    return _kron_group(block_f) if group is None else int(group)


def kron_const_out(dim, block_f=64, group=None):
    """True when the constant a0 of a degree-2 f would take a Kronecker tile of its own (no free
    column in a low tile) and leaving it out saves that tile: the causal scans then leave it to
    the intra and finalize kernels: o += a0 times the prefix sum of v over the earlier chunks, z += a0
    times their token count, and in the backward dv += a0 times the suffix sum of dn = do / den.

    At head dim 64 and block_f 64 the scans walk 37 tiles instead of 38 (one wave fewer at B * H = 32
    on 132 SMs: TUNING.md).

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
    return -(-pairs // KG) < -(-(pairs + 1) // KG)


def kron_tables(dim, scale, device, block_f=64, group=None, const_out=False):
    """Tile and weight tables of the block-Kronecker basis of a degree-2 f(scale * q.k).

    The head dim is cut into blocks of ``group`` columns (None: 8 from block_f 64 on, 4 below). Every pair of blocks h1 <= h2 gives a group of group x group
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


def _kron_tiles(dim, block_f, const_out):
    """Feature tiles of :func:`kron_tables` (dim, block_f, default group, const_out), counted without building them."""
    KA = _kron_group(block_f)
    KG = block_f // (KA * KA)
    a0, a1, a2 = (float(COEFFS.get(j, 0.0)) for j in (0, 1, 2))
    const_low = a0 != 0.0 and a1 != 0.0 and dim % block_f != 0
    nb = _cdiv(dim, KA)
    groups = nb * (nb + 1) // 2 + (a0 != 0.0 and not const_low and not const_out) if a2 != 0.0 else 0
    return (_cdiv(dim, block_f) if a1 != 0.0 else 0) + _cdiv(groups, KG)


def _cdiv(a, b):
    # host-side ceil division: triton.cdiv is a constexpr function whose wrapper costs ~5 us a call
    return -(-a // b)


def _pow2(n):
    # host-side next power of two (as triton.next_power_of_2, without its wrapper's cost)
    return 1 << (int(n) - 1).bit_length() if n > 0 else 0


# ----------------------------------------------------------------------------------------
# Routing: plan() turns a call's shapes, device and overrides into a Plan record, and the
# launchers below take every number from it. Measurements behind the defaults: TUNING.md.
# ----------------------------------------------------------------------------------------
#: Every route the host code can take, by name: pass / path (fused, chunk-parallel forward,
#: scans) / causal or full / feature layout (symmetric table, Kronecker tiles) / variant
#: (const: a0 outside the scans; segments: the fused path's segment states, saved by the
#: forward or rebuilt by the backward). tests/test_routes.py runs each one. The GPU-only
#: variants (TMA row moves, side streams) are checked on the device by benchmarks/check_gpu.py.
ROUTES = (
    "empty",
    "fwd/fused", "fwd/fused/segments",
    "fwd/chunk/fused-table", "fwd/chunk/symmetric", "fwd/chunk/kron",
    "fwd/scan/causal/symmetric", "fwd/scan/causal/kron", "fwd/scan/causal/kron/const",
    "fwd/scan/full/symmetric", "fwd/scan/full/kron",
    "bwd/fused", "bwd/fused/segments/saved", "bwd/fused/segments/rebuilt",
    "bwd/scan/causal/symmetric", "bwd/scan/causal/kron", "bwd/scan/causal/kron/const",
    "bwd/scan/full/symmetric", "bwd/scan/full/kron",
)
#: The routes taken in this process (a set of at most len(ROUTES) names: one add per call).
routes_taken = set()

#: The private overrides :func:`plan` takes (``tuning=``, for sweeps and tests) and their defaults;
#: None: decided by the shape. FASTATTN_FUSED=0 in the environment sets "fused" to False.
TUNING = {
    "fused": True,          # False: every shape down the general path
    "fused_fwd": None,      # True / False: the fused forward on / off (default: by length for degree 2)
    "fused_bwd": None,      # the same for the backward
    "kron": True,           # False: a degree-2 f keeps the symmetric basis on the general path
    "const_out": True,      # False: a0 keeps a Kronecker tile of its own in the causal scans
    "chunk_fwd": None,      # True / False: the chunk-parallel causal forward on / off
    "chunk_fwd_cps": 4,     # its segments' least length in chunks
    "chunk_fwd_mib": 256,   # and the MiB of prefix states they may take
    "seg_rows": 2,          # chunks one step of the segment-sum pass over k, v takes
    "tma_fwd": 2,           # TMA bits of the general forward: 1 v loads, 2 o adds (sm_90+)
    "tma_bwd": 6,           # of the backward: 1 v / do loads, 2 dv adds, 4 dq / dk adds
    "tma_min_work": 2**21,  # least batch*head x tokens x feature tiles for TMA (descriptors cost host time)
    "bwd_streams": None,    # True / False: the backward's two walks side by side on two streams
}
_TUNING_BOOLS = ("fused", "fused_fwd", "fused_bwd", "kron", "const_out", "chunk_fwd", "bwd_streams")


def _resolve(tuning=None):
    """TUNING with the environment's FASTATTN_FUSED and ``tuning`` applied, each value checked."""
    t = dict(TUNING)
    env = os.environ.get("FASTATTN_FUSED", "")
    if env:
        if env not in ("0", "1"):
            raise ValueError(f"FASTATTN_FUSED={env!r}: use 0 (every shape down the general path) or 1, or unset it")
        t["fused"] = env == "1"
    if not tuning:
        return t
    if not isinstance(tuning, dict):
        raise ValueError(f"tuning={tuning!r} must be a dict of overrides (keys: {', '.join(TUNING)})")
    unknown = sorted(set(tuning) - set(TUNING))
    if unknown:
        raise ValueError(f"unknown tuning key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(TUNING)}")
    for key, value in tuning.items():
        if key in _TUNING_BOOLS:
            ok = isinstance(value, bool) or (value is None and TUNING[key] is None)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= (0 if "tma" in key else 1)
        if not ok:
            want = "True or False" + (" or None" if key in _TUNING_BOOLS and TUNING[key] is None else "")
            raise ValueError(f"tuning[{key!r}]={value!r}; use {want if key in _TUNING_BOOLS else 'an int >= 1'}"
                             if "tma" not in key else f"tuning[{key!r}]={value!r}; use an int >= 0")
    t.update(tuning)
    return t


#: What plan() needs of a device: its kind ("cuda", "cpu", ...), SM count and compute capability
#: major (anything but CUDA reads as 132 SMs, capability 0).
DeviceInfo = collections.namedtuple("DeviceInfo", "type sms major")
_DEVICES = {}


def _device_info(device):
    if isinstance(device, DeviceInfo):
        return device
    key = str(device)
    if key not in _DEVICES:
        dev = torch.device(device)
        if dev.type == "cuda":
            props = torch.cuda.get_device_properties(dev)
            _DEVICES[key] = DeviceInfo("cuda", props.multi_processor_count, props.major)
        else:
            _DEVICES[key] = DeviceInfo(dev.type, 132, 0)
    return _DEVICES[key]


@dataclasses.dataclass(frozen=True)
class Plan:
    """One pass of one call, as the launchers run it (see :func:`plan`).

    route: a name of ROUTES. chunk: tokens per chunk. block_f, block_v: features and v columns per
    walk program; table_block_f: the feature tables' tile (and the segment-sum pass's); f_pad: features
    with padding. head_block, v_pad: D and DV padded for the intra tiles. kron, group (KG, KA),
    const_out: the Kronecker layout, its groups, a0 outside the causal scans. segments, cps: the
    causal scan's cut (chunks per segment). warps (walks), seg_warps, intra_warps; maxnreg: the walks'
    register cap (0: none). seg_step, seg_step_q: chunks per step of the segment-sum passes over
    (k, v) and (q, dn). tma_ld, tma_add, tma_dx: row moves by TMA. streams: the backward's walks side
    by side. wide: int64 row offsets. saved: the fused backward reuses the forward's segment states.
    """
    route: str
    chunk: int
    block_f: int
    block_v: int
    table_block_f: int
    f_pad: int
    head_block: int
    v_pad: int
    precision: str
    kron: bool = False
    group: tuple = (1, 1)
    const_out: bool = False
    segments: int = 1
    cps: int = 1
    warps: int = 4
    seg_warps: int = 4
    intra_warps: int = 4
    maxnreg: int = 0
    seg_step: int = 1
    seg_step_q: int = 1
    tma_ld: bool = False
    tma_add: bool = False
    tma_dx: bool = False
    streams: bool = False
    wide: bool = False
    saved: bool = False

    @property
    def path(self):
        """"fused", "chunk" or "scan"."""
        return self.route.split("/")[1]

    @property
    def kron_kw(self):
        """The Kronecker constexprs of a kernel launch (none for the symmetric basis)."""
        return dict(KRON=True, KG=self.group[0], KA=self.group[1]) if self.kron else {}


_PLANS = {}


def plan(q_shape, v_shape, dtype, device, causal, normalize, part, tuning=None, *, chunk=None, block_f=64,
         block_v=None, segments=None, saved=None):
    """The route and every launch number of one pass (``part`` "fwd" or "bwd") as a :class:`Plan`.

    The only reader of overrides: FASTATTN_FUSED in the environment and the ``tuning`` dict (keys and
    defaults in TUNING; an unknown key is a ValueError). ``device``: a torch device or a
    :class:`DeviceInfo` (its SM count cuts the causal scans into segments, its capability allows TMA).
    ``chunk``, ``block_f``, ``block_v``, ``segments`` as :func:`poly_attention` takes them; ``saved``:
    (tokens per segment, segments) of the states the forward saved for a fused backward, or None.

    Examples
    --------
    >>> import torch
    >>> from fastattn.kernels.codegen import load_module
    >>> from fastattn.kernels.poly import polynomial
    >>> mod = load_module(polynomial("1 + x + x**2/2"))
    >>> h200 = mod.DeviceInfo("cuda", 132, 9)
    >>> p = mod.plan((2, 16, 8192, 16), (2, 16, 8192, 64), torch.bfloat16, h200, True, True, "fwd")
    >>> p.route, p.chunk, p.segments, p.warps, p.maxnreg  # Based at 8K: the Kronecker scans, 3 segments
    ('fwd/scan/causal/kron', 64, 3, 4, 168)
    >>> mod.plan((2, 16, 2048, 16), (2, 16, 2048, 64), torch.bfloat16, h200, True, True, "fwd").route
    'fwd/fused/segments'
    >>> mod.plan((1, 1, 64, 16), (1, 1, 64, 16), torch.float32, "cpu", True, False, "fwd", {"fused": False}).route
    'fwd/scan/causal/kron'
    """
    t = _resolve(tuning)
    dev = _device_info(device)
    key = (tuple(q_shape), tuple(v_shape), dtype, dev, bool(causal), bool(normalize), part, chunk, block_f, block_v,
           segments, saved, tuple(t.items()), _interpreting())
    p = _PLANS.get(key)
    if p is None:
        p = _PLANS[key] = _plan(tuple(q_shape), tuple(v_shape), dtype, dev, bool(causal), bool(normalize), part, t,
                                chunk, block_f, block_v, segments, saved)
    return p


def _route(part, path, causal, kron, const, segments, saved):
    """The ROUTES name of a pass."""
    if path == "fused":
        if part == "fwd":
            return "fwd/fused/segments" if segments > 1 else "fwd/fused"
        return "bwd/fused" if segments == 1 else "bwd/fused/segments/saved" if saved else "bwd/fused/segments/rebuilt"
    if path == "fused-table":
        return "fwd/chunk/fused-table"
    if path == "chunk":
        return "fwd/chunk/kron" if kron else "fwd/chunk/symmetric"
    if part == "fwd":
        if causal:
            return ("fwd/scan/causal/kron/const" if const else "fwd/scan/causal/kron") if kron else \
                "fwd/scan/causal/symmetric"
        return "fwd/scan/full/kron" if kron else "fwd/scan/full/symmetric"
    if causal:
        return ("bwd/scan/causal/kron/const" if const else "bwd/scan/causal/kron") if kron else \
            "bwd/scan/causal/symmetric"
    return "bwd/scan/full/kron" if kron else "bwd/scan/full/symmetric"


def _plan(q_shape, v_shape, dtype, dev, causal, normalize, part, t, chunk, block_f, block_v, segments, saved):
    B, H, T, D = q_shape
    DV = v_shape[-1]
    BH = B * H
    # BD at least 32: triton 3.6 on sm_90 miscompiled the [BT, BF] x [BF, 16] scatter dot of _phi_vjp
    BD, BV = max(32, _pow2(D)), max(16, _pow2(DV))
    # fp32 inputs keep fp32 accuracy through three tf32 passes; 16-bit inputs use their own MMA
    precision = "tf32x3" if dtype == torch.float32 else "tf32"
    base = dict(head_block=BD, v_pad=BV, precision=precision, wide=_wide(T, D, DV))
    cuda = dev.type == "cuda"
    tiles = _fused_tiles_dims(D, DV, part, T, t) if causal else None
    kron = _kron_on(t) and tiles is None
    chunk_fwd = t["chunk_fwd"] if t["chunk_fwd"] is not None else tiles is None and not kron
    if part == "fwd" and causal and chunk_fwd:
        # the chunk-parallel forward: per-segment prefix states (as many as chunk_fwd_mib MiB allow)
        chunk = chunk or _CHUNK
        if tiles is not None:
            # one symmetric table read as one [F_pad, DV] tile by the segment pass, 64 rows at a time by the walk
            tbf, bf, kron = tiles[0], min(64, tiles[0]), False
        else:
            tbf = bf = block_f or 64
        f_pad = _kron_tiles(D, tbf, False) * tbf if kron else _sym_pad(D, tbf)
        NC = _cdiv(T, chunk)
        cps = max(t["chunk_fwd_cps"], _cdiv(NC * BH * f_pad * BV * 4, t["chunk_fwd_mib"] * 2**20))
        cps = min(cps, NC)
        nseg = _cdiv(NC, cps)
        warps = _scan_warps(kron, tbf, BV)
        KA = _kron_group(tbf)
        return Plan(route=_route(part, "fused-table" if tiles is not None else "chunk", True, kron, False, nseg, False),
                    chunk=chunk, block_f=bf, block_v=BV, table_block_f=tbf, f_pad=f_pad, kron=kron,
                    group=(tbf // (KA * KA), KA) if kron else (1, 1), segments=nseg, cps=cps, warps=4,
                    seg_warps=warps, seg_step=_seg_group(chunk, tbf, BV, cps, False, t["seg_rows"]), **base)
    if tiles is not None:
        # the fused path: one program per (segment, batch*head) holds the whole [F_pad, DV] state
        BF, BVf = tiles
        chunk = chunk or _auto_chunk(tiles)
        NC = _cdiv(T, chunk)
        # 8 warps keep a state of 64 x 64 and more out of local memory; the forward walk wants 4 at 64 x 64
        seg_warps = 8 if BF * BVf >= 64 * 64 else 4
        if part == "fwd":
            warps, streams, passes = (8 if BF * BVf > 64 * 64 else 4), False, 1
        else:
            # side by side for large states and long walks (short ones lose the second stream's cost)
            warps, passes = seg_warps, 2
            streams = cuda and (t["bwd_streams"] if t["bwd_streams"] is not None else BF * BVf > 64 * 64 or NC >= 512)
        slots = (_slots(dev.sms, warps), _slots(dev.sms, seg_warps))
        nseg, cps = _segments(NC, BH, segments, slots=slots, passes=passes, shared=streams, seg_rows=t["seg_rows"])
        reuse = False
        if part == "bwd" and saved is not None:
            # the forward's prefix states, re-cut into this pass's chunks where their segments are whole chunks
            tokens, n = saved
            if tokens % chunk == 0 and _cdiv(NC, tokens // chunk) == n:
                cps, reuse = tokens // chunk, True
                nseg = _cdiv(NC, cps)
        return Plan(route=_route(part, "fused", True, False, False, nseg, reuse), chunk=chunk, block_f=BF,
                    block_v=BVf, table_block_f=BF, f_pad=_sym_pad(D, BF), segments=nseg, cps=cps, warps=warps,
                    seg_warps=seg_warps, seg_step=_seg_group(chunk, BF, BVf, cps, False, t["seg_rows"]),
                    seg_step_q=_seg_group(chunk, BF, BVf, cps, normalize, t["seg_rows"]), streams=streams,
                    saved=reuse, **base)
    # the general path: intra kernel, then scans over (feature tile, v tile, batch*head)
    chunk = chunk or _CHUNK
    bf = block_f or 64
    const = causal and kron and t["const_out"] and kron_const_out(D, bf)
    f_pad = _kron_tiles(D, bf, const) * bf if kron else _sym_pad(D, bf)
    BVs = BV if block_v is None else min(BV, block_v)
    warps = _scan_warps(kron, bf, BVs)
    NC, NF, NV = _cdiv(T, chunk), f_pad // bf, _cdiv(DV, BVs)
    if part == "fwd":
        # the Kronecker forward walk capped at _MAXNREG_FWD registers: three programs per SM instead of two
        maxnreg = _MAXNREG_FWD if kron and cuda else 0
        streams, passes, slots = False, 1, (_slots(dev.sms, warps, maxnreg), _slots(dev.sms, warps))
    else:
        maxnreg, passes, slots = 0, 2, (_slots(dev.sms, warps), _slots(dev.sms, warps))
        streams = cuda and (t["bwd_streams"] if t["bwd_streams"] is not None else True)
    nseg, cps = (_segments(NC, NF * NV * BH, segments, slots=slots, passes=passes, shared=streams,
                           seg_rows=t["seg_rows"]) if causal else (1, NC))
    # TMA row moves on sm_90+ (not the interpreter: no TMA reduce there), 16-byte rows, enough work
    bits = t["tma_" + part] if BH * T * NF >= t["tma_min_work"] else 0
    elem = torch.finfo(dtype).bits // 8
    ok = bool(bits) and cuda and dev.major >= 9 and not _interpreting() and (DV * elem) % 16 == 0 and DV % 4 == 0
    KA = _kron_group(bf)
    KG = bf // (KA * KA)
    return Plan(route=_route(part, "scan", causal, kron, const, nseg, False), chunk=chunk, block_f=bf, block_v=BVs,
                table_block_f=bf, f_pad=f_pad, kron=kron, group=(KG, KA) if kron else (1, 1), const_out=const,
                segments=nseg, cps=cps, warps=warps, seg_warps=warps, intra_warps=_intra_warps(chunk, BD, BV),
                maxnreg=maxnreg, seg_step=_seg_group(chunk, bf, BVs, cps, False, t["seg_rows"]),
                seg_step_q=_seg_group(chunk, bf, BVs, cps, normalize, t["seg_rows"]), tma_ld=ok and bool(bits & 1),
                tma_add=ok and bool(bits & 2), tma_dx=ok and bool(bits & 4) and kron and KG == 1 and D % 4 == 0,
                streams=streams, **base)


def _sym_pad(D, block_f):
    # features of the symmetric table, padded to whole tiles (feature_tables)
    return max(block_f, _cdiv(feature_dim(D), block_f) * block_f)


def _scan_warps(kron, block_f, block_v):
    # a [BF, BV] fp32 state of 64 x 64 stays out of local memory at 8 warps; the Kronecker walks run
    # best at 4 (several programs share an SM and hide each other's latency)
    return 4 if kron or block_f * block_v < 64 * 64 else 8


def _intra_warps(chunk, BD, BV):
    # the intra backward's [BT, BT] score tiles and [BT, BD], [BT, BV] operands spill at 64 x 64 with 4 warps
    return 8 if chunk * max(BD, BV) >= 64 * 64 else 4


# the fused path keeps the whole [F_pad, DV_pad] fp32 state of a sequence in one program
_FUSED_MAX_STATE = 256 * 64
# a degree-2 f whose features fit one tile takes the fused path below these lengths, the general
# Kronecker scans from them on (the crossing on the H200: TUNING.md)
_FUSED_DEG2_BELOW = {"fwd": 8192, "bwd": 8192}
# tokens per chunk when chunk=None: 32 where the fused state is above 64 x 64 (64 spills on sm_90), else 64
_CHUNK = 64


def _auto_chunk(tiles):
    if tiles is None:
        return _CHUNK
    return 32 if tiles[0] * tiles[1] > 64 * 64 else 64


def _fused_tiles_dims(D, DV, part="fwd", T=0, t=None):
    """(BF, BV) of the fused causal path for this pass when all features fit one tile, else None.
    Degree 2 takes it below _FUSED_DEG2_BELOW tokens; tuning fused / fused_fwd / fused_bwd force it."""
    t = _resolve() if t is None else t
    force = t["fused_" + part]
    if not t["fused"] or not (force if force is not None else (T < _FUSED_DEG2_BELOW[part] if _kron_on(t) else True)):
        return None
    BF = max(16, _pow2(feature_dim(D)))
    BV = max(16, _pow2(DV))
    return (BF, BV) if BF * BV <= _FUSED_MAX_STATE else None


# the causal scans choose their segments by waves (_wave_segments): a walk program's time is its chunk
# count whether or not it shares its SM, so a cut costs (waves of walk programs) x (chunks per segment),
# plus the segment-sum pass at _SEG_STEP of a walk step per chunk, plus _PROGRAM_STEPS steps per program
# for its carried state (both measured on the H200: TUNING.md)
_SEG_STEP = 0.45
_PROGRAM_STEPS = 2
_WAVE_CUTS = {}
# the Kronecker forward walk's register cap (ptxas maxnreg)
_MAXNREG_FWD = 168
# the segment-sum pass steps up to this many rows (x d64 at 256 asked for 237 KB of shared memory)
_SEG_MAX_ROWS = 128
# the chunk-parallel forward's defaults (tuning chunk_fwd_mib, chunk_fwd_cps)
_CHUNK_FWD_MIB = TUNING["chunk_fwd_mib"]
_CHUNK_FWD_CPS = TUNING["chunk_fwd_cps"]


def _slots(sms, warps, maxnreg=0):
    """Scan programs the GPU runs at once: SMs x programs per SM by registers (the scan kernels sit
    at their register cap, ptxas ``maxnreg`` or 255 per thread, allocated 8 at a time)."""
    regs = -(-(maxnreg or 255) // 8) * 8
    return sms * max(1, 65536 // (regs * 32 * warps))


def _wave_segments(NC, programs, walk_slots, seg_slots, passes=1, shared=True):
    """Segments for ``passes`` causal walks of NC chunks with ``programs`` programs per segment (on the
    GPU together when ``shared``, else one after the other): the fewest that minimise waves x chunks
    per segment over the walks and the segment-sum passes (all but one segment each), with
    ``walk_slots`` / ``seg_slots`` programs at once."""
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


def _segments(NC, programs, segments, target=None, slots=None, passes=1, shared=True, seg_rows=TUNING["seg_rows"]):
    """(number of segments, chunks per segment) for a causal scan of NC chunks.

    ``programs`` is the number of scan programs per segment (feature tiles x v tiles x
    batch*head); ``segments=None`` picks them by waves (:func:`_wave_segments`) when ``slots``
    = (walk slots, segment-pass slots) is given, else enough for about ``target`` programs.
    Chunks per segment are a multiple of ``seg_rows`` (the segment pass steps over whole groups).
    """
    if segments is None:
        if slots is not None:
            segments = _wave_segments(NC, max(1, programs), *slots, passes, shared)
        else:
            segments = -(-target // max(1, programs))
    segments = max(1, min(int(segments), NC))
    cps = -(-NC // segments)
    if segments > 1:
        g = max(1, seg_rows)
        cps = -(-cps // g) * g
    return -(-NC // cps), cps


def _seg_group(chunk, block_f, block_v, cps=None, scale_y=False, seg_rows=TUNING["seg_rows"]):
    """The chunks one step of the segment-sum pass covers: ``seg_rows``, halved until it divides ``cps``
    (None: any) and the step fits (tiles up to 64 x 64, steps up to _SEG_MAX_ROWS rows). The sums of
    dn / den (``scale_y``) keep one chunk a step (ptxas spilled at two)."""
    if scale_y:
        return 1
    g = max(1, seg_rows)
    while g > 1 and ((cps is not None and cps % g) or chunk * g > _SEG_MAX_ROWS or block_f * block_v > 64 * 64):
        g //= 2
    return g


def _wide(T, D, DV):
    """True when a sequence's row offsets need int64 (see _chunk_rows)."""
    return T * max(D, DV, 1) >= 2**31 - 2**20


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ----------------------------------------------------------------------------------------
# Launchers: each takes its Plan and the call's tensors.
# ----------------------------------------------------------------------------------------
def _took(route):
    # the route recorder: a set add per call, nothing on the GPU
    routes_taken.add(route)


def _empty(shape, device, dtype=torch.float32):
    # FASTATTN_NAN_FILL=1 (the tests) makes every fresh buffer NaN, so a row a kernel forgot to write
    # shows up as NaN instead of as stale memory
    if os.environ.get("FASTATTN_NAN_FILL", "0") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _aligned(*ts):
    """True when TMA can address these tensors: contiguous, 16-byte aligned (the plan checked the rest)."""
    return all(x.is_contiguous() and x.data_ptr() % 16 == 0 for x in ts)


def _descs(tma, BT, BV, *ts):
    """TMA descriptors over the [batch*head, T, C] rows of each [B, H, T, C] tensor, with
    [1, BT, BV] boxes, else Nones."""
    if not tma:
        return [None] * len(ts)
    from triton.tools.tensor_descriptor import TensorDescriptor
    return [TensorDescriptor(x, [x.shape[0] * x.shape[1], x.shape[2], x.shape[3]],
                             [x.shape[2] * x.shape[3], x.shape[3], 1], [1, BT, BV]) for x in ts]


def _tables(p, D, scale, device):
    """(idx, w_phi, w_psi, ktab, a0) of a plan's feature layout; a0 is the constant left to the caller
    (0.0 unless p.const_out). The kernels read the Kronecker tiles' column lists through idx too."""
    if p.kron:
        ktab, w_phi, w_psi, _ = kron_tables(D, scale, device, p.table_block_f, None, p.const_out)
        return ktab, w_phi, w_psi, ktab, float(COEFFS.get(0, 0.0)) if p.const_out else 0.0
    idx, w_phi, w_psi, _ = feature_tables(D, scale, device, p.table_block_f)
    return idx, w_phi, w_psi, idx, 0.0


def _side_by_side(first, second, device, together=True):
    """Run two independent launches, ``second`` on a side stream when ``together``, so the last wave of
    one pass shares the GPU with the other. The backward's two walks write disjoint gradients."""
    dev = torch.device(device)
    if not together or dev.type != "cuda":
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


def _segment_prefix(p, x, y, rden, cz, idx, w, ktab, normalize, scale_y, reverse, tma=False):
    """Prefix (``reverse=False``) or suffix sums over segments of the per-segment states:
    S0[bh, s] = sum over segments before s (after s) of sum_t feat(x_t)^T y_t, and Z0 likewise."""
    B, H, T, D = x.shape
    DV = y.shape[-1]
    BH, NSEG = B * H, p.segments
    S = torch.empty((BH, NSEG, p.f_pad, DV), dtype=torch.float32, device=x.device)
    Z = torch.empty((BH, NSEG, p.f_pad), dtype=torch.float32, device=x.device) if normalize else S
    g = p.seg_step_q if scale_y else p.seg_step
    chunk = p.chunk * g
    NF = p.f_pad // p.table_block_f
    yd, = _descs(tma, chunk, p.block_v, y)
    # the segments whose sums a prefix (suffix) uses: all but the last (first)
    _segment_state_kernel[(NF * (NSEG - 1), _cdiv(DV, p.block_v), BH)](
        x, y, yd, rden, cz, S, Z, idx, w, ktab, T, D, DV, p.f_pad, _cdiv(T, chunk), p.cps // g, NF, NSEG, int(reverse),
        BT=chunk, BF=p.table_block_f, BV=p.block_v, BD=p.head_block, NORMALIZE=normalize, SCALE_Y=scale_y,
        PRECISION=p.precision, TMA_LD=tma, WIDE=p.wide, num_warps=p.seg_warps, **p.kron_kw)

    def exclusive(t):
        # in-place exclusive scan over the segment axis (dim 1), forward or backward
        n = t[0, 0].numel()
        block = min(1024, _pow2(n))
        _segment_scan_kernel[(_cdiv(n, block), BH)](t, n, NSEG, REVERSE=reverse, BLOCK=block, num_warps=4)
        return t
    return exclusive(S), (exclusive(Z) if normalize else None)


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


def _fused_fwd(p, q, k, v, scale, normalize, fix_abs, eps):
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, _, _ = _tables(p, D, scale, q.device)
    o = _empty((B, H, T, DV), q.device, q.dtype)
    z = _empty((B, H, T), q.device) if normalize else o
    S0 = Z0 = o
    if p.segments > 1:
        S0, Z0 = _segment_prefix(p, k, v, z, z, idx, w_psi, idx, normalize, False, reverse=False)
        Z0 = o if Z0 is None else Z0
    _fused_fwd_kernel[(p.segments, B * H)](q, k, v, o, z, S0, Z0, idx, w_phi, w_psi, float(scale), float(eps), T, D,
                                           DV, p.f_pad, _cdiv(T, p.chunk), p.cps, BT=p.chunk, BF=p.block_f,
                                           BV=p.block_v, BD=p.head_block, NORMALIZE=normalize, FIX_ABS=fix_abs,
                                           USE_SEG=p.segments > 1, PRECISION=p.precision, WIDE=p.wide,
                                           num_warps=p.warps)
    return o, (z if normalize else None), ((S0, Z0, p.cps * p.chunk) if p.segments > 1 else None)


def _fused_bwd(p, q, k, v, o, z, do, scale, normalize, fix_abs, eps, state):
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, _, _ = _tables(p, D, scale, q.device)
    rden, dz, _ = _bwd_prep(q, o, do, z, normalize, fix_abs, eps, p.chunk)
    dq = _empty(q.shape, q.device, q.dtype)
    dk = _empty(k.shape, q.device, k.dtype)
    dv = _empty(v.shape, q.device, v.dtype)
    S0 = Z0 = dS0 = dZ0 = dq
    if p.segments > 1:
        if p.saved:
            S0, Z0 = state[:2]
        else:
            S0, Z0 = _segment_prefix(p, k, v, dq, dq, idx, w_psi, idx, normalize, False, reverse=False)
        dS0, dZ0 = _segment_prefix(p, q, do, rden, dz, idx, w_phi, idx, normalize, normalize, reverse=True)
        Z0 = dq if Z0 is None else Z0
        dZ0 = dq if dZ0 is None else dZ0

    def walk(pass_, s0, z0):
        _fused_bwd_kernel[(p.segments, B * H)](q, k, v, do, rden, dz, dq, dk, dv, s0, z0, idx, w_phi, w_psi,
                                               float(scale), T, D, DV, p.f_pad, _cdiv(T, p.chunk), p.cps, BT=p.chunk,
                                               BF=p.block_f, BV=p.block_v, BD=p.head_block, NORMALIZE=normalize,
                                               USE_SEG=p.segments > 1, PASS=pass_, PRECISION=p.precision,
                                               WIDE=p.wide, num_warps=p.warps)
    _side_by_side(lambda: walk(0, S0, Z0), lambda: walk(1, dS0, dZ0), q.device, p.streams)
    return dq, dk, dv


def _chunk_fwd(p, q, k, v, scale, normalize, fix_abs, eps):
    """Causal forward by _chunk_fwd_kernel: (o in q.dtype, z or None, state for the fused backward or None)."""
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, ktab, _ = _tables(p, D, scale, q.device)
    o = _empty((B, H, T, DV), q.device, q.dtype)
    z = _empty((B, H, T), q.device) if normalize else o
    S0 = Z0 = o
    if p.segments > 1:
        S0, Z0 = _segment_prefix(p, k, v, z, z, idx, w_psi, ktab, normalize, False, reverse=False)
        Z0 = o if Z0 is None else Z0
    _chunk_fwd_kernel[(_cdiv(T, p.chunk), 1, B * H)](q, k, v, o, z, S0, Z0, idx, w_phi, ktab, float(scale), float(eps),
                                                     T, D, DV, p.f_pad, _cdiv(T, p.chunk), p.cps, p.segments,
                                                     p.f_pad // p.block_f, BT=p.chunk, BF=p.block_f, BV=p.block_v,
                                                     BD=p.head_block, NORMALIZE=normalize, FIX_ABS=fix_abs,
                                                     PRECISION=p.precision, num_warps=p.warps, **p.kron_kw)
    fused_table = p.route == "fwd/chunk/fused-table"
    state = (S0, Z0 if normalize else o.new_empty(0), p.cps * p.chunk) if p.segments > 1 and fused_table else None
    return o, (z if normalize else None), state


def _scan_fwd(p, q, k, v, scale, causal, normalize, fix_abs, eps):
    """The general forward: intra kernel (causal), scans over feature tiles into fp32 o, finalize."""
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, ktab, a0 = _tables(p, D, scale, q.device)
    NC, NF, NV = _cdiv(T, p.chunk), p.f_pad // p.block_f, _cdiv(DV, p.block_v)
    o = _empty((B, H, T, DV), q.device)
    z = _empty((B, H, T), q.device) if normalize else o
    # the constant term outside the scans: each chunk's sum of v, turned into prefix sums below
    vs = _empty((B * H, NC, DV), q.device) if a0 else o
    if causal:
        _intra_fwd_kernel[(NC, B * H)](q, k, v, o, z, vs, float(scale), T, D, DV, NC, BT=p.chunk, BD=p.head_block,
                                       BV=p.v_pad, NORMALIZE=normalize, PRECISION=p.precision, CONST=bool(a0),
                                       num_warps=p.intra_warps)
    else:
        o.zero_()
        z.zero_()
    S0 = Z0 = o
    ok = (p.tma_ld or p.tma_add) and _aligned(v, o)
    tma, tma_add = p.tma_ld and ok, p.tma_add and ok
    (vd,), (od,) = _descs(tma, p.chunk, p.block_v, v), _descs(tma_add, p.chunk, p.block_v, o)
    if p.segments > 1:
        S0, Z0 = _segment_prefix(p, k, v, z, z, idx, w_psi, ktab, normalize, False, reverse=False, tma=tma)
        Z0 = o if Z0 is None else Z0
    _inter_fwd_kernel[(NF * p.segments, NV, B * H)](q, k, v, vd, o, od, z, S0, Z0, idx, w_phi, w_psi, ktab, T, D, DV,
                                                    p.f_pad, NC, p.cps, NF, BT=p.chunk, BF=p.block_f, BV=p.block_v,
                                                    BD=p.head_block, CAUSAL=causal, NORMALIZE=normalize,
                                                    ATOMIC=NF > 1, USE_SEG=p.segments > 1, PRECISION=p.precision,
                                                    TMA_LD=tma, TMA_ADD=tma_add, WIDE=p.wide, num_warps=p.warps,
                                                    **({"maxnreg": p.maxnreg} if p.maxnreg else {}), **p.kron_kw)
    out = _empty((B, H, T, DV), q.device, q.dtype)
    N, BR = B * H * T, max(16, 4096 // p.v_pad)
    if a0:
        vs.cumsum_(1)
    _finalize_kernel[(_cdiv(N, BR),)](o, z, out, vs, a0, float(eps), N, T, DV, NC, NORMALIZE=normalize,
                                      FIX_ABS=fix_abs, BR=BR, BV=p.v_pad, BT=p.chunk, CONST=bool(a0), num_warps=4)
    return out, (z if normalize else None), None


def _scan_bwd(p, q, k, v, o, z, do, scale, causal, normalize, fix_abs, eps):
    """The general backward: intra kernel (causal), then the dq walk and the dk / dv walk."""
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, ktab, a0 = _tables(p, D, scale, q.device)
    NC, NF, NV = _cdiv(T, p.chunk), p.f_pad // p.block_f, _cdiv(DV, p.block_v)
    rden, dz, dns = _bwd_prep(q, o, do, z, normalize, fix_abs, eps, p.chunk, bool(a0))
    dq = _empty((B, H, T, D), q.device)
    dk = _empty((B, H, T, D), q.device)
    dv = _empty((B, H, T, DV), q.device)
    if causal:
        _intra_bwd_kernel[(NC, B * H)](q, k, v, do, rden, dz, dq, dk, dv, dq if dns is None else dns, a0,
                                       float(scale), T, D, DV, NC, BT=p.chunk, BD=p.head_block, BV=p.v_pad,
                                       NORMALIZE=normalize, PRECISION=p.precision, CONST=bool(a0),
                                       num_warps=p.intra_warps)
    else:
        dq.zero_()
        dk.zero_()
        dv.zero_()
    S0 = Z0 = dS0 = dZ0 = dq
    ok = (p.tma_ld or p.tma_add or p.tma_dx) and _aligned(v, do, dv)
    tma, tma_add, tma_dx = p.tma_ld and ok, p.tma_add and ok, p.tma_dx and ok and _aligned(dq, dk)
    (vd, dod), (dvd,) = _descs(tma, p.chunk, p.block_v, v, do), _descs(tma_add, p.chunk, p.block_v, dv)
    dxg = _descs(tma_dx, p.chunk, p.group[1], dq, dk)
    dxl = _descs(tma_dx, p.chunk, p.block_f, dq, dk)
    if p.segments > 1:
        # pass 0 (dq) starts from the forward's prefix state; pass 1 (dk, dv) from the suffix
        # of sum phi(q)^T dn over later segments
        S0, Z0 = _segment_prefix(p, k, v, dq, dq, idx, w_psi, ktab, normalize, False, reverse=False, tma=tma)
        dS0, dZ0 = _segment_prefix(p, q, do, rden, dz, idx, w_phi, ktab, normalize, normalize, reverse=True, tma=tma)
        Z0 = dq if Z0 is None else Z0
        dZ0 = dq if dZ0 is None else dZ0

    def walk(pass_):
        _inter_bwd_kernel[(NF * p.segments, NV, B * H)](q, k, v, vd, do, dod, rden, dz, dq, dk, dv, dvd, dxg[pass_],
                                                        dxl[pass_], S0, Z0, dS0, dZ0, idx, w_phi, w_psi, ktab, T, D,
                                                        DV, p.f_pad, NC, p.cps, NF, BT=p.chunk, BF=p.block_f,
                                                        BV=p.block_v, BD=p.head_block, CAUSAL=causal,
                                                        NORMALIZE=normalize, ATOMIC_QK=NF * NV > 1, ATOMIC_V=NF > 1,
                                                        USE_SEG=p.segments > 1, PASS=pass_, PRECISION=p.precision,
                                                        TMA_LD=tma, TMA_ADD=tma_add, WIDE=p.wide, TMA_DX=tma_dx,
                                                        num_warps=p.warps, **p.kron_kw)
    _side_by_side(lambda: walk(0), lambda: walk(1), q.device, p.streams)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _forward(p, q, k, v, scale, causal, normalize, fix_abs, eps):
    """(o, z, saved state or None) of the forward ``p`` plans."""
    _took(p.route)
    if p.path == "fused":
        return _fused_fwd(p, q, k, v, scale, normalize, fix_abs, eps)
    if p.path == "chunk":
        return _chunk_fwd(p, q, k, v, scale, normalize, fix_abs, eps)
    return _scan_fwd(p, q, k, v, scale, causal, normalize, fix_abs, eps)


def _backward(p, q, k, v, o, z, do, scale, causal, normalize, fix_abs, eps, state):
    """(dq, dk, dv) of the backward ``p`` plans."""
    _took(p.route)
    if p.path == "fused":
        return _fused_bwd(p, q, k, v, o, z, do, scale, normalize, fix_abs, eps, state)
    return _scan_bwd(p, q, k, v, o, z, do, scale, causal, normalize, fix_abs, eps)


def poly_attention_fwd(q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v, segments=None,
                       tuning=None):
    """Forward pass on contiguous [B, H, T, D] inputs; returns (o in q.dtype, z fp32 [B, H, T] or None)."""
    return _poly_attention_fwd(q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v,
                               segments, tuning)[:2]


def _poly_attention_fwd(q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v, segments=None,
                        tuning=None):
    """(o, z, saved segment states or None)."""
    p = plan(q.shape, v.shape, q.dtype, q.device, causal, normalize, "fwd", tuning, chunk=chunk, block_f=block_f,
             block_v=block_v, segments=segments)
    return _forward(p, q, k, v, scale, causal, normalize, fix_abs, eps)


def poly_attention_bwd(q, k, v, o, z, do, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v,
                       segments=None, state=None, tuning=None):
    """Backward pass: (dq, dk, dv) in the input dtypes, from the saved output ``o`` and normaliser ``z``
    (and, on the fused path, the forward's segment prefix states ``state``)."""
    saved = (state[2], state[0].shape[1]) if state is not None else None
    p = plan(q.shape, v.shape, q.dtype, q.device, causal, normalize, "bwd", tuning, chunk=chunk, block_f=block_f,
             block_v=block_v, segments=segments, saved=saved)
    return _backward(p, q, k, v, o, z, do.contiguous(), scale, causal, normalize, fix_abs, eps, state)


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
                check_output=None, tuning=None):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o, z, state = _poly_attention_fwd(q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v,
                                          segments, tuning)
        if normalize and (check_output or (check_output is None and (not q.is_cuda or torch.is_anomaly_enabled()))):
            _check_normalized(o, z, fix_abs, q, k, v)
        empty = o.new_empty(0)
        S0, Z0, ctx.seg_tokens = state if state is not None else (empty, empty, 0)
        ctx.has_state = state is not None
        ctx.save_for_backward(q, k, v, o, z if z is not None else empty, S0, Z0)
        ctx.scale, ctx.causal, ctx.normalize, ctx.fix_abs, ctx.eps = scale, causal, normalize, fix_abs, eps
        ctx.chunk, ctx.block_f, ctx.block_v, ctx.segments, ctx.tuning = chunk, block_f, block_v, segments, tuning
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, z, S0, Z0 = ctx.saved_tensors
        state = (S0, Z0, ctx.seg_tokens) if ctx.has_state else None
        dq, dk, dv = poly_attention_bwd(q, k, v, o, z, do, ctx.scale, ctx.causal, ctx.normalize, ctx.fix_abs,
                                        ctx.eps, ctx.chunk, ctx.block_f, ctx.block_v, ctx.segments, state, ctx.tuning)
        return dq, dk, dv, None, None, None, None, None, None, None, None, None, None, None


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
                   chunk=None, block_f=64, block_v=None, segments=None, check_output=None, tuning=None):
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
    tuning : dict, optional
        Private overrides of the routing and launch numbers, for sweeps and tests (keys and defaults:
        ``TUNING``; see ``plan``). An unknown key is a ValueError.

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
    _resolve(tuning)  # an unknown or bad tuning key is an error even where no pass runs
    if q.shape[2] == 0:
        # T = 0: an empty [B, H, 0, DV], still a function of q, k, v (zero gradients), as on the torch path
        _took("empty")
        return v[:, :, :0] + (q.sum() + k.sum()) * 0
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return PolyAttentionFunction.apply(q, k, v, scale, bool(causal), bool(normalize), normalizer_fix == "abs",
                                       float(eps), chunk, block_f, block_v, segments, check_output, tuning)


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
