"""Chunk-parallel kernels for degree-2 polynomial attention with large feature maps (TFLA style).

f(x) = a0 + a1 x + a2 x², x = s q·k, on head dims where the symmetric feature map has thousands of
features (2145 at D = 64). The derivation, the FLOP / byte count and the predicted times are in
CHUNKED.md beside this file. Four passes, every heavy step a tensor-core GEMM, no atomics:

* ``_state_walk_kernel``: one program per (feature tile, batch·head) walks the chunks and writes
  each chunk's exclusive prefix state S_c = Σ_{earlier chunks} ψ(k) vᵀ (fp32 sum, stored in the
  input dtype) and ζ_c = Σ ψ(k) (fp32); run backwards over (q, do/z, δ) it gives the backward's
  suffix states dS_c.
* ``_chunk_out_kernel``: one program per (block of rows, batch·head) reduces φ(Q)·S_c over all
  feature tiles in registers, adds the intra-chunk part f(s QKᵀ) ⊙ mask @ V as dense tiles, and
  divides by the normaliser.
* ``_chunk_dq_kernel`` / ``_chunk_dkv_kernel``: the same structure for dq and for dk, dv.

The feature map is never written to HBM: the quadratic features are grouped by the cyclic distance
d = (b − a) mod BD of their pair {a, b} (BD: the head dim padded to a power of two). Circulant tile
d = 0 .. BD/2 has BD columns, column c = x_c · x_{(c−d) mod BD}: the row tile times a copy of itself
with its columns turned by d (``tl.gather`` in registers, loads at turned offsets, or the contiguous
window BD − d of the doubled rows cat([x, x], −1) read by TMA or by pointer loads), no reshape and no
pair table: d is the program id or the loop counter. 2177 feature rows at D = 64. Weights a2 s²
on d = 0, 2 a2 s² on 0 < d < BD/2, and a2 s² on d = BD/2, whose columns c and c + BD/2 hold the same
pair. One "low" tile [x, 1] carries a1 s x and a0. Weights sit on the query side only, so the walks
over k (forward) and over q (backward) share one kernel.

>>> import torch
>>> q, k, v = (torch.randn(1, 1, 8, 4, dtype=torch.float64) for _ in range(3))
>>> phi, psi = feature_map(q, (1.0, 1.0, 0.5), 0.5, "q"), feature_map(k, (1.0, 1.0, 0.5), 0.5, "k")
>>> x = 0.5 * q @ k.transpose(-1, -2)
>>> bool(torch.allclose(phi @ psi.transpose(-1, -2), 1 + x + x * x / 2))
True
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["chunked_poly_attention", "feature_map", "plan"]


# --------------------------------------------------------------------------------------- kernels

@triton.jit
def _window(xx, bh, r0, s, T, BR: tl.constexpr, BD: tl.constexpr, ROTATE: tl.constexpr):
    """Rows r0 .. r0 + BR of the doubled tile cat([x, x], -1) [BH, T, 2 BD], columns s .. s + BD: [BR, BD].

    Column c is x_{(s + c) mod BD}: the row tile turned by −s, a contiguous window (zeros past T). ROTATE
    "tma": xx is a TMA descriptor with [1, BR, BD] boxes (no per-element pointers, no shuffles); "window":
    xx is the doubled tensor, read by pointer loads contiguous along the columns.
    """
    if ROTATE == "tma":
        b = tl.reshape(xx.load([bh.to(tl.int32), r0, s]), (BR, BD))
    else:
        rows = r0 + tl.arange(0, BR)
        p = xx + bh * T * (2 * BD) + rows[:, None] * (2 * BD) + s + tl.arange(0, BD)[None, :]
        b = tl.load(p, mask=(rows < T)[:, None], other=0.0)
    return b


@triton.jit
def _state_walk_kernel(x, xx, y, c, S, Z, T, D: tl.constexpr, DV, NC, NS, F_ROWS,
                       CHUNK: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
                       CAUSAL: tl.constexpr, REVERSE: tl.constexpr, HAS_C: tl.constexpr,
                       NORMALIZE: tl.constexpr, ROTATE: tl.constexpr, PRECISION: tl.constexpr):
    """Per-chunk prefix (or, REVERSE, suffix) states of Σ feat(x)ᵀ y and Σ feat(x) c.

    x [BH, T, D], y [BH, T, DV] (input dtype), c [BH, T] fp32 (1 where not HAS_C), xx the doubled x
    (see ``_window``; read with ROTATE "tma" / "window"); writes
    S [BH, NS, F_ROWS, DV] (input dtype) and Z [BH, NS, F_ROWS] fp32: with CAUSAL, slot c holds
    the sum over the chunks before c in walk order (NS = NC); else slot 0 holds the total (NS = 1).
    Grid (BD/2 + 2, BH, cdiv(DV, BV)): program d ≤ BD/2 owns circulant tile d (rows d·BD + c:
    x_c x_{(c−d) mod BD}), program BD/2 + 1 the low tile (rows (BD/2 + 1)·BD + [0, BD): x; the row
    after: the constant 1); the third axis splits the value columns into blocks of BV, and its first
    block writes Z.
    """
    d = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    iv = tl.program_id(2)
    # the first block of value columns writes Z (a mask as a tensor: the interpreter takes no scalar one)
    m_z = (tl.zeros([BD], dtype=tl.int32) + iv) == 0
    x += bh * T * D
    y += bh * T * DV
    c += bh * T
    S += bh * NS * F_ROWS * DV
    Z += bh * NS * F_ROWS
    NT: tl.constexpr = BD // 2 + 1
    o_t = tl.arange(0, BT)
    o_v = iv * BV + tl.arange(0, BV)
    o_d = tl.arange(0, BD)
    m_v, m_d = o_v < DV, o_d < D
    if d < NT:
        # column c of the turned copy is x_{(c−d) mod BD}: d is the program id, no table load
        o_r = (o_d - d) & (BD - 1)
        m_r = o_r < D
        o_f = d * BD + o_d
        p_s = S + o_f[:, None] * DV + o_v[None, :]  # [BD, BV]
        b_s = tl.zeros([BD, BV], dtype=tl.float32)
        b_z = tl.zeros([BD], dtype=tl.float32)
        for i in range(NC):
            if REVERSE:
                ci = NC - 1 - i
            else:
                ci = i
            if CAUSAL:
                tl.store(p_s + ci * F_ROWS * DV, b_s.to(S.dtype.element_ty), mask=m_v[None, :])
                if NORMALIZE:
                    tl.store(Z + ci * F_ROWS + o_f, b_z, mask=m_z)
            for r0 in range(ci * CHUNK, ci * CHUNK + CHUNK, BT):
                # pointer tiles built inside the loop: hoisted, [BD, BT] 64-bit pointers spilled (sm_90)
                rows = r0 + o_t
                m_t = rows < T
                if (ROTATE == "tma") | (ROTATE == "window"):
                    # both tiles as windows of the doubled rows: window BD − d is the tile turned by d
                    b_xw = _window(xx, bh, r0, 0, T, BT, BD, ROTATE)  # [BT, BD]
                    b_f = tl.trans(b_xw * _window(xx, bh, r0, (BD - d) & (BD - 1), T, BT, BD, ROTATE))
                else:
                    b_x = tl.load(x + rows[None, :] * D + o_d[:, None], mask=m_t[None, :] & m_d[:, None], other=0.0)
                    if ROTATE == "gather":
                        b_xr = tl.gather(b_x, tl.broadcast_to(o_r[:, None], [BD, BT]), 0)  # [BD, BT]
                    else:
                        # the same cache lines as the plain tile: an L1 hit
                        b_xr = tl.load(x + rows[None, :] * D + o_r[:, None], mask=m_t[None, :] & m_r[:, None],
                                       other=0.0)
                    # a product of two 16-bit numbers rounded once: the same as forming it in fp32 and casting
                    b_f = b_x * b_xr  # [BD, BT]
                b_y = tl.load(y + rows[:, None] * DV + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                              other=0.0)  # [BT, BV]
                b_s = tl.dot(b_f.to(b_y.dtype), b_y, b_s, input_precision=PRECISION)
                if NORMALIZE:
                    if HAS_C:
                        b_c = tl.load(c + rows, mask=m_t, other=0.0)
                    else:
                        b_c = m_t.to(tl.float32)
                    b_z += tl.sum(b_f.to(tl.float32) * b_c[None, :], 1)
        if not CAUSAL:
            tl.store(p_s, b_s.to(S.dtype.element_ty), mask=m_v[None, :])
            if NORMALIZE:
                tl.store(Z + o_f, b_z, mask=m_z)
    else:
        f_lo = NT * BD
        b_sl = tl.zeros([BD, BV], dtype=tl.float32)
        b_zl = tl.zeros([BD], dtype=tl.float32)
        b_sc = tl.zeros([BV], dtype=tl.float32)
        b_zc = tl.sum(tl.zeros([BT], dtype=tl.float32), 0)
        for i in range(NC):
            if REVERSE:
                ci = NC - 1 - i
            else:
                ci = i
            if CAUSAL:
                p_s = S + ci * F_ROWS * DV + f_lo * DV
                tl.store(p_s + o_d[:, None] * DV + o_v[None, :], b_sl.to(S.dtype.element_ty), mask=m_v[None, :])
                tl.store(p_s + BD * DV + o_v, b_sc.to(S.dtype.element_ty), mask=m_v)
                if NORMALIZE:
                    tl.store(Z + ci * F_ROWS + f_lo + o_d, b_zl, mask=m_z)
                    # the constant's row: one element, stored from a [BD] block to take the tensor mask
                    tl.store(Z + ci * F_ROWS + f_lo + BD + o_d, tl.where(o_d == 0, b_zc, 0.0),
                             mask=m_z & (o_d == 0))
            for r0 in range(ci * CHUNK, ci * CHUNK + CHUNK, BT):
                rows = r0 + o_t
                m_t = rows < T
                b_xt = tl.load(x + rows[None, :] * D + o_d[:, None], mask=m_t[None, :] & m_d[:, None],
                               other=0.0)  # [BD, BT]
                b_y = tl.load(y + rows[:, None] * DV + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                              other=0.0)  # [BT, BV]
                b_sl = tl.dot(b_xt, b_y, b_sl, input_precision=PRECISION)
                b_sc += tl.sum(b_y.to(tl.float32), 0)
                if NORMALIZE:
                    if HAS_C:
                        b_c = tl.load(c + rows, mask=m_t, other=0.0)
                    else:
                        b_c = m_t.to(tl.float32)
                    b_zl += tl.sum(b_xt.to(tl.float32) * b_c[None, :], 1)
                    b_zc += tl.sum(b_c, 0)
        if not CAUSAL:
            p_s = S + f_lo * DV
            tl.store(p_s + o_d[:, None] * DV + o_v[None, :], b_sl.to(S.dtype.element_ty), mask=m_v[None, :])
            tl.store(p_s + BD * DV + o_v, b_sc.to(S.dtype.element_ty), mask=m_v)
            if NORMALIZE:
                tl.store(Z + f_lo + o_d, b_zl, mask=m_z)
                tl.store(Z + f_lo + BD + o_d, tl.where(o_d == 0, b_zc, 0.0), mask=m_z & (o_d == 0))


@triton.jit
def _chunk_out_kernel(q, qq, k, v, S, Z, o, z, a0, a1, a2, scale, T, D: tl.constexpr, DV, NS, F_ROWS,
                      CHUNK: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
                      CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr, ROTATE: tl.constexpr,
                      PRECISION: tl.constexpr):
    """o = φ(Q)·S_c (all feature tiles) + f(s QKᵀ) ⊙ mask @ V inside the chunk, [/ z].

    q, k [BH, T, D], v [BH, T, DV], qq the doubled q (``_window``), S / Z as the walk writes them; writes
    o [BH, T, DV] (input dtype) and, with NORMALIZE, z [BH, T] fp32. Grid (cdiv(T, BM), BH, cdiv(DV, BV)): the
    third axis splits the value columns into blocks of BV (each program forms all of φ(Q) and z; the first writes z).
    """
    mb = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    iv = tl.program_id(2)
    q += bh * T * D
    k += bh * T * D
    v += bh * T * DV
    o += bh * T * DV
    z += bh * T
    r0 = mb * BM
    if CAUSAL:
        ci = r0 // CHUNK
    else:
        ci = 0
    S += (bh * NS + ci) * F_ROWS * DV
    Z += (bh * NS + ci) * F_ROWS
    NT: tl.constexpr = BD // 2 + 1
    o_m = tl.arange(0, BM)
    o_v = iv * BV + tl.arange(0, BV)
    o_d = tl.arange(0, BD)
    m_v, m_d = o_v < DV, o_d < D
    rows = r0 + o_m
    m_r = rows < T
    p_q = q + rows[:, None] * D  # [BM, 1]
    p_s = S + o_d[:, None] * DV + o_v[None, :]  # [BD, BV]
    b_q = tl.load(p_q + o_d[None, :], mask=m_r[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
    b_o = tl.zeros([BM, BV], dtype=tl.float32)
    b_z = tl.zeros([BM], dtype=tl.float32)
    for d in range(NT):
        o_r = (o_d - d) & (BD - 1)
        # weight 2 where the tile holds each pair once, 1 on the diagonal and the half turn (d = BD/2, whose
        # columns c and c + BD/2 hold the same pair): exact in any dtype, so a2 s² can come after the loop
        w = tl.where((d == 0) | (d == BD // 2), 1.0, 2.0)
        if ROTATE == "gather":
            b_qr = tl.gather(b_q, tl.broadcast_to(o_r[None, :], [BM, BD]), 1)
        elif ROTATE == "load":
            b_qr = tl.load(p_q + o_r[None, :], mask=m_r[:, None] & (o_r < D)[None, :], other=0.0)
        else:
            b_qr = _window(qq, bh, r0, (BD - d) & (BD - 1), T, BM, BD, ROTATE)
        b_phi = b_q * b_qr * w  # [BM, BD]
        b_st = tl.load(p_s + d * BD * DV, mask=m_v[None, :], other=0.0)  # [BD, BV]
        b_o = tl.dot(b_phi.to(b_st.dtype), b_st, b_o, input_precision=PRECISION)
        if NORMALIZE:
            b_z += tl.sum(b_phi.to(tl.float32) * tl.load(Z + d * BD + o_d)[None, :], 1)
    a2s = a2 * scale * scale
    b_o *= a2s
    f_lo = NT * BD
    b_sl = tl.load(S + (f_lo + o_d)[:, None] * DV + o_v[None, :], mask=m_v[None, :], other=0.0)  # [BD, BV]
    b_ql = b_q.to(tl.float32) * (a1 * scale)
    b_o = tl.dot(b_ql.to(b_sl.dtype), b_sl, b_o, input_precision=PRECISION)
    b_o += a0 * tl.load(S + (f_lo + BD) * DV + o_v, mask=m_v, other=0.0).to(tl.float32)[None, :]
    if NORMALIZE:
        b_z = b_z * a2s + tl.sum(b_ql * tl.load(Z + f_lo + o_d)[None, :], 1) + a0 * tl.load(Z + f_lo + BD)
    if CAUSAL:
        for c0 in range(ci * CHUNK, r0 + BM, BM):
            cols = c0 + o_m
            m_c = cols < T
            b_k = tl.load(k + cols[:, None] * D + o_d[None, :], mask=m_c[:, None] & m_d[None, :], other=0.0)
            b_v = tl.load(v + cols[:, None] * DV + o_v[None, :], mask=m_c[:, None] & m_v[None, :], other=0.0)
            b_x = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * scale  # [BM, BM]
            b_a = a0 + b_x * (a1 + a2 * b_x)
            b_a = tl.where((rows[:, None] >= cols[None, :]) & m_c[None, :], b_a, 0.0)
            b_o = tl.dot(b_a.to(b_v.dtype), b_v, b_o, input_precision=PRECISION)
            if NORMALIZE:
                b_z += tl.sum(b_a, 1)
    if NORMALIZE:
        b_o = b_o / b_z[:, None]
        # the first block of value columns writes z (a tensor mask: the interpreter takes no scalar one)
        tl.store(z + rows, b_z, mask=m_r & ((tl.zeros([BM], dtype=tl.int32) + iv) == 0))
    tl.store(o + rows[:, None] * DV + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_r[:, None] & m_v[None, :])


@triton.jit
def _circ_grad(b_a, S, Z, d, b_l, DV, BD: tl.constexpr, BV: tl.constexpr, HAS_L: tl.constexpr, VJP: tl.constexpr,
               PRECISION: tl.constexpr):
    """g = a S_dᵀ (+ l ζ_dᵀ) [BM, BD] and g' = g with its columns turned by +d (g'[:, c] = g[:, (c + d) mod BD]).

    b_a [BM, BV], S / Z the chunk's states, b_l [BM] (read with HAS_L). VJP "mma": g' is a second MMA
    against S_d's rows read turned by +d (the same cache lines); "gather": g' = tl.gather(g, ...).
    """
    o_d = tl.arange(0, BD)
    o_v = tl.arange(0, BV)
    m_v = o_v < DV
    p_s = S + d * BD * DV + o_v[None, :]  # [1, BV]
    b_st = tl.load(p_s + o_d[:, None] * DV, mask=m_v[None, :], other=0.0)  # [BD, BV]
    b_g = tl.dot(b_a, tl.trans(b_st), input_precision=PRECISION)  # [BM, BD]
    if HAS_L:
        b_g += b_l[:, None] * tl.load(Z + d * BD + o_d)[None, :]
    o_p = (o_d + d) & (BD - 1)
    if VJP == "gather":
        b_gp = tl.gather(b_g, tl.broadcast_to(o_p[None, :], b_g.shape), 1)
    else:
        b_sp = tl.load(p_s + o_p[:, None] * DV, mask=m_v[None, :], other=0.0)  # [BD, BV]
        b_gp = tl.dot(b_a, tl.trans(b_sp), input_precision=PRECISION)  # [BM, BD]
        if HAS_L:
            b_gp += b_l[:, None] * tl.load(Z + d * BD + o_p)[None, :]
    return b_g, b_gp


@triton.jit
def _chunk_dq_kernel(q, qq, k, v, dn, dl, S, Z, dq, a0, a1, a2, scale, T, D: tl.constexpr, DV, NS, F_ROWS,
                     CHUNK: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
                     CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr, ROTATE: tl.constexpr, VJP: tl.constexpr,
                     PRECISION: tl.constexpr):
    """dq = J_φᵀ (w ⊙ (S_c dn + ζ_c δ)) over all feature tiles + the intra-chunk flash backward.

    dn [BH, T, DV] = do / z (input dtype), dl [BH, T] = δ = −(do·o)/z fp32 (read with NORMALIZE);
    S / Z the forward's prefix states, qq the doubled q (``_window``); writes dq [BH, T, D]. Grid (cdiv(T, BM), BH).
    """
    mb = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    q += bh * T * D
    k += bh * T * D
    v += bh * T * DV
    dn += bh * T * DV
    dl += bh * T
    dq += bh * T * D
    r0 = mb * BM
    if CAUSAL:
        ci = r0 // CHUNK
    else:
        ci = 0
    S += (bh * NS + ci) * F_ROWS * DV
    Z += (bh * NS + ci) * F_ROWS
    NT: tl.constexpr = BD // 2 + 1
    o_m = tl.arange(0, BM)
    o_v = tl.arange(0, BV)
    o_d = tl.arange(0, BD)
    m_v, m_d = o_v < DV, o_d < D
    rows = r0 + o_m
    m_r = rows < T
    p_q = q + rows[:, None] * D  # [BM, 1]
    b_q = tl.load(p_q + o_d[None, :], mask=m_r[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
    b_dn = tl.load(dn + rows[:, None] * DV + o_v[None, :], mask=m_r[:, None] & m_v[None, :], other=0.0)
    if NORMALIZE:
        b_dl = tl.load(dl + rows, mask=m_r, other=0.0)
    else:
        b_dl = tl.zeros([BM], dtype=tl.float32)
    b_dq = tl.zeros([BM, BD], dtype=tl.float32)
    for d in range(NT):
        b_g, b_gp = _circ_grad(b_dn, S, Z, d, b_dl, DV, BD, BV, NORMALIZE, VJP, PRECISION)
        # φ_c = q_c q_{c−d}: column c gets g_c q_{c−d}, column c − d gets g_c q_c (the turned term)
        o_r, o_p = (o_d - d) & (BD - 1), (o_d + d) & (BD - 1)
        if ROTATE == "gather":
            b_qr = tl.gather(b_q, tl.broadcast_to(o_r[None, :], [BM, BD]), 1)
            b_qp = tl.gather(b_q, tl.broadcast_to(o_p[None, :], [BM, BD]), 1)
        elif ROTATE == "load":
            b_qr = tl.load(p_q + o_r[None, :], mask=m_r[:, None] & (o_r < D)[None, :], other=0.0)
            b_qp = tl.load(p_q + o_p[None, :], mask=m_r[:, None] & (o_p < D)[None, :], other=0.0)
        else:
            b_qr = _window(qq, bh, r0, (BD - d) & (BD - 1), T, BM, BD, ROTATE)
            b_qp = _window(qq, bh, r0, d, T, BM, BD, ROTATE)
        w = tl.where((d == 0) | (d == BD // 2), 1.0, 2.0)
        b_dq += w * (b_g * b_qr.to(tl.float32) + b_gp * b_qp.to(tl.float32))
    b_dq *= a2 * scale * scale
    f_lo = NT * BD
    b_sl = tl.load(S + (f_lo + o_d)[:, None] * DV + o_v[None, :], mask=m_v[None, :], other=0.0)  # [BD, BV]
    b_g = tl.dot(b_dn, tl.trans(b_sl), input_precision=PRECISION)  # [BM, BD]
    if NORMALIZE:
        b_g += b_dl[:, None] * tl.load(Z + f_lo + o_d)[None, :]
    b_dq += b_g * (a1 * scale)
    if CAUSAL:
        for c0 in range(ci * CHUNK, r0 + BM, BM):
            cols = c0 + o_m
            m_c = cols < T
            b_k = tl.load(k + cols[:, None] * D + o_d[None, :], mask=m_c[:, None] & m_d[None, :], other=0.0)
            b_v = tl.load(v + cols[:, None] * DV + o_v[None, :], mask=m_c[:, None] & m_v[None, :], other=0.0)
            b_x = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * scale  # [BM, BM]
            b_da = tl.dot(b_dn, tl.trans(b_v), input_precision=PRECISION)  # [BM, BM]
            if NORMALIZE:
                b_da += b_dl[:, None]
            b_dx = tl.where((rows[:, None] >= cols[None, :]) & m_c[None, :], scale * (a1 + 2 * a2 * b_x) * b_da, 0.0)
            b_dq = tl.dot(b_dx.to(b_k.dtype), b_k, b_dq, input_precision=PRECISION)
    tl.store(dq + rows[:, None] * D + o_d[None, :], b_dq.to(dq.dtype.element_ty), mask=m_r[:, None] & m_d[None, :])


@triton.jit
def _chunk_dkv_kernel(q, k, kk, v, dn, dl, dS, dZ, dk, dv, a0, a1, a2, scale, T, D: tl.constexpr, DV, NS, F_ROWS,
                      CHUNK: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
                      CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr, ROTATE: tl.constexpr, VJP: tl.constexpr,
                     PRECISION: tl.constexpr):
    """dv = (w ⊙ ψ(K)) dS_c, dk = J_ψᵀ (w ⊙ (V dS_cᵀ + dζ_c)) over all feature tiles + the intra part.

    dS / dZ: the backward walk's suffix states of Σ φ̂(q) dnᵀ and Σ φ̂(q) δ (unweighted features);
    kk: the doubled k (``_window``); writes dk [BH, T, D], dv [BH, T, DV]. Grid (cdiv(T, BM), BH).
    """
    mb = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    q += bh * T * D
    k += bh * T * D
    v += bh * T * DV
    dn += bh * T * DV
    dl += bh * T
    dk += bh * T * D
    dv += bh * T * DV
    r0 = mb * BM
    if CAUSAL:
        ci = r0 // CHUNK
    else:
        ci = 0
    dS += (bh * NS + ci) * F_ROWS * DV
    dZ += (bh * NS + ci) * F_ROWS
    NT: tl.constexpr = BD // 2 + 1
    o_m = tl.arange(0, BM)
    o_v = tl.arange(0, BV)
    o_d = tl.arange(0, BD)
    m_v, m_d = o_v < DV, o_d < D
    rows = r0 + o_m
    m_r = rows < T
    p_k = k + rows[:, None] * D  # [BM, 1]
    p_s = dS + o_d[:, None] * DV + o_v[None, :]  # [BD, BV]
    b_k = tl.load(p_k + o_d[None, :], mask=m_r[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
    b_v = tl.load(v + rows[:, None] * DV + o_v[None, :], mask=m_r[:, None] & m_v[None, :], other=0.0)  # [BM, BV]
    b_dk = tl.zeros([BM, BD], dtype=tl.float32)
    b_dv = tl.zeros([BM, BV], dtype=tl.float32)
    b_one = tl.full([BM], 1.0, dtype=tl.float32)
    for d in range(NT):
        w = tl.where((d == 0) | (d == BD // 2), 1.0, 2.0)
        o_r, o_p = (o_d - d) & (BD - 1), (o_d + d) & (BD - 1)
        if ROTATE == "gather":
            b_kr = tl.gather(b_k, tl.broadcast_to(o_r[None, :], [BM, BD]), 1)
            b_kp = tl.gather(b_k, tl.broadcast_to(o_p[None, :], [BM, BD]), 1)
        elif ROTATE == "load":
            b_kr = tl.load(p_k + o_r[None, :], mask=m_r[:, None] & (o_r < D)[None, :], other=0.0)
            b_kp = tl.load(p_k + o_p[None, :], mask=m_r[:, None] & (o_p < D)[None, :], other=0.0)
        else:
            b_kr = _window(kk, bh, r0, (BD - d) & (BD - 1), T, BM, BD, ROTATE)
            b_kp = _window(kk, bh, r0, d, T, BM, BD, ROTATE)
        b_st = tl.load(p_s + d * BD * DV, mask=m_v[None, :], other=0.0)  # [BD, BV]
        b_dv = tl.dot((b_k * b_kr * w).to(b_st.dtype), b_st, b_dv, input_precision=PRECISION)
        b_g, b_gp = _circ_grad(b_v, dS, dZ, d, b_one, DV, BD, BV, NORMALIZE, VJP, PRECISION)
        b_dk += w * (b_g * b_kr.to(tl.float32) + b_gp * b_kp.to(tl.float32))
    a2s = a2 * scale * scale
    b_dk *= a2s
    b_dv *= a2s
    f_lo = NT * BD
    b_sl = tl.load(dS + (f_lo + o_d)[:, None] * DV + o_v[None, :], mask=m_v[None, :], other=0.0)  # [BD, BV]
    b_g = tl.dot(b_v, tl.trans(b_sl), input_precision=PRECISION)  # [BM, BD]
    if NORMALIZE:
        b_g += tl.load(dZ + f_lo + o_d)[None, :]
    b_dk += b_g * (a1 * scale)
    b_kl = b_k.to(tl.float32) * (a1 * scale)
    b_dv = tl.dot(b_kl.to(b_sl.dtype), b_sl, b_dv, input_precision=PRECISION)
    b_dv += a0 * tl.load(dS + (f_lo + BD) * DV + o_v, mask=m_v, other=0.0).to(tl.float32)[None, :]
    if CAUSAL:
        for c0 in range(r0, tl.minimum(ci * CHUNK + CHUNK, T), BM):
            cols = c0 + o_m
            m_c = cols < T
            b_q = tl.load(q + cols[:, None] * D + o_d[None, :], mask=m_c[:, None] & m_d[None, :], other=0.0)
            b_dn = tl.load(dn + cols[:, None] * DV + o_v[None, :], mask=m_c[:, None] & m_v[None, :], other=0.0)
            m_a = (cols[None, :] >= rows[:, None]) & m_c[None, :]
            b_x = tl.dot(b_k, tl.trans(b_q), input_precision=PRECISION) * scale  # [BM keys, BM queries]
            b_a = tl.where(m_a, a0 + b_x * (a1 + a2 * b_x), 0.0)
            b_dv = tl.dot(b_a.to(b_dn.dtype), b_dn, b_dv, input_precision=PRECISION)
            b_da = tl.dot(b_v, tl.trans(b_dn), input_precision=PRECISION)  # [BM, BM]
            if NORMALIZE:
                b_da += tl.load(dl + cols, mask=m_c, other=0.0)[None, :]
            b_dx = tl.where(m_a, scale * (a1 + 2 * a2 * b_x) * b_da, 0.0)
            b_dk = tl.dot(b_dx.to(b_q.dtype), b_q, b_dk, input_precision=PRECISION)
    tl.store(dk + rows[:, None] * D + o_d[None, :], b_dk.to(dk.dtype.element_ty), mask=m_r[:, None] & m_d[None, :])
    tl.store(dv + rows[:, None] * DV + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_r[:, None] & m_v[None, :])


# ------------------------------------------------------------------------------------ host side

# how a circulant tile's turned copy is formed (CHUNKED.md): shuffles in registers, loads at turned offsets,
# or contiguous windows of the doubled rows cat([x, x], -1) read by TMA or by pointer loads
ROTATIONS = ("gather", "load", "tma", "window")


def _pow2(n: int, lo: int) -> int:
    return max(lo, 1 << (int(n) - 1).bit_length())


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _doubled(x, p):
    """cat([x, x], -1) of x [BH, T, D] padded with zero columns to BD: [BH, T, 2 BD], or None where the plan's
    rotation reads no windows. Column s + c of a row is x_{(s + c) mod BD}: the row turned by −s."""
    if p["kernel_rotate"] not in ("tma", "window"):
        return None
    xp = torch.nn.functional.pad(x, (0, p["BD"] - x.shape[-1]))
    return torch.cat([xp, xp], -1).contiguous()


def _windows(x, xx, rows, p):
    """The kernels' xx argument: a TMA descriptor over xx with [1, rows, BD] boxes ("tma"), xx ("window"),
    or x itself where the kernels read no windows (an unused argument)."""
    if xx is None:
        return x
    if p["kernel_rotate"] == "window":
        return xx
    from triton.tools.tensor_descriptor import TensorDescriptor
    return TensorDescriptor(xx, list(xx.shape), list(xx.stride()), [1, rows, p["BD"]])


def plan(T: int, D: int, DV: int, dtype: torch.dtype, *, tuning: dict | None = None) -> dict:
    """The tiling of one call: chunk, row block, walk step, padded dims, warps, stages, VJP variant.

    ``tuning`` overrides any entry (for sweeps). The chunk is the state granularity: 512 rows keeps
    the materialised states at ~1.1 KB per token and head at d64 (CHUNKED.md), the row block the
    query / key tile of the output and gradient programs. The feature rows are BD/2 + 1 circulant
    tiles of BD rows, the BD low rows and the constant.

    >>> p = plan(8192, 64, 64, torch.bfloat16)
    >>> p["ntiles"], p["feature_rows"]
    (33, 2177)
    """
    BD, BV = _pow2(D, 16), _pow2(DV, 16)
    # 8 warps at head dim 128: the low tile's [128, 128] fp32 state spilled ~1.6 KB per thread at 4 (sm_90)
    big = max(BD, BV) >= 128
    # sm_90 compile (triton 3.9, bf16, spill bytes per thread): 8 warps took d64 out / dq / dk,dv from 352 / 80 /
    # 1016 to 0 / 0 / 64; 64-row blocks took d128 out / dq / dk,dv from 880 / 1680 / 3720 to 312 / 296 / 904;
    # turning tiles by tl.gather spilled less than loads at turned offsets (d64 out 104 against 352, dq 80 / 568).
    # rotate "tma" / "window" (windows of the doubled rows): sm_90 registers and spills per kernel in CHUNKED.md
    # 3 walk stages at d128: 9.0 -> 7.1 ms in the Kronecker layout (H200, triton 3.6); not re-measured since.
    # 64 value columns per walk and output program: at d128 the walk's [128, 128] fp32 state spilled 632 B,
    # [128, 64] none; the output pass 312 B, none at 64 (the φ(Q) tiles and z are formed twice)
    # 1 stage at d128: with 2 the dk/dv kernel asked 245,760 B of shared memory on the H200 (triton 3.6), above 232,448
    p = dict(chunk=512, block=64, step=64, warps=8, walk_warps=8 if big else 4, stages=1 if big else 2,
             walk_stages=3 if big else 2, walk_cols=min(BV, 64), out_cols=min(BV, 64), rotate="gather",
             vjp="mma")
    p.update(tuning or {})
    if p["chunk"] % p["block"] or p["chunk"] % p["step"]:
        raise ValueError(f"plan: block {p['block']} and step {p['step']} must divide chunk {p['chunk']}; got {p}")
    if p["vjp"] not in ("mma", "gather") or p["rotate"] not in ROTATIONS:
        raise ValueError(f"plan: vjp must be 'mma' or 'gather' and rotate one of {ROTATIONS}; got vjp {p['vjp']!r}, "
                         f"rotate {p['rotate']!r}")
    ntiles = BD // 2 + 1
    # the interpreter refuses descriptor loads whose column offset is not 16-byte aligned (the turned windows
    # start at any column): there "tma" reads the same windows by pointer loads ("window")
    kernel_rotate = "window" if p["rotate"] == "tma" and _interpreting() else p["rotate"]
    p.update(BD=BD, BV=BV, ntiles=ntiles, feature_rows=ntiles * BD + BD + 1, kernel_rotate=kernel_rotate,
             precision="tf32x3" if dtype == torch.float32 else "tf32")
    return p


def _walk(x, y, c, p, *, causal, reverse, normalize, xx=None):
    """Launch the state walk over x [BH, T, D] and y [BH, T, DV] (xx: x doubled, see _doubled); returns S, Z."""
    BH, T, D = x.shape
    DV = y.shape[-1]
    nc = triton.cdiv(T, p["chunk"])
    ns = nc if causal else 1
    S = torch.empty(BH, ns, p["feature_rows"], DV, dtype=x.dtype, device=x.device)
    Z = torch.empty(BH, ns, p["feature_rows"] if normalize else 1, dtype=torch.float32, device=x.device)
    _state_walk_kernel[(p["ntiles"] + 1, BH, triton.cdiv(DV, p["walk_cols"]))](
        x=x, xx=_windows(x, xx, p["step"], p), y=y, c=x if c is None else c, S=S, Z=Z, T=T, D=D, DV=DV, NC=nc,
        NS=ns, F_ROWS=p["feature_rows"],
        CHUNK=p["chunk"], BT=p["step"], BD=p["BD"], BV=p["walk_cols"], CAUSAL=causal, REVERSE=reverse,
        HAS_C=c is not None, NORMALIZE=normalize, ROTATE=p["kernel_rotate"], PRECISION=p["precision"],
        num_warps=p["walk_warps"], num_stages=p["walk_stages"])
    return S, Z, ns


def _forward(q, k, v, coeffs, scale, causal, normalize, p, qq=None, kk=None):
    """o, z, S, Z of q, k [BH, T, D], v [BH, T, DV]; qq, kk: q, k doubled (_doubled) where the plan reads windows."""
    BH, T, D = q.shape
    DV = v.shape[-1]
    S, Z, ns = _walk(k, v, None, p, causal=causal, reverse=False, normalize=normalize, xx=kk)
    o = torch.empty(BH, T, DV, dtype=q.dtype, device=q.device)
    z = torch.empty(BH, T if normalize else 1, dtype=torch.float32, device=q.device)
    a0, a1, a2 = coeffs
    _chunk_out_kernel[(triton.cdiv(T, p["block"]), BH, triton.cdiv(DV, p["out_cols"]))](
        q=q, qq=_windows(q, qq, p["block"], p), k=k, v=v, S=S, Z=Z, o=o, z=z, a0=a0, a1=a1, a2=a2, scale=scale, T=T,
        D=D, DV=DV, NS=ns,
        F_ROWS=p["feature_rows"], CHUNK=p["chunk"], BM=p["block"], BD=p["BD"], BV=p["out_cols"], CAUSAL=causal,
        NORMALIZE=normalize, ROTATE=p["kernel_rotate"], PRECISION=p["precision"], num_warps=p["warps"],
        num_stages=p["stages"])
    return o, z, S, Z


def _backward(do, q, k, v, o, z, S, Z, coeffs, scale, causal, normalize, p, qq=None, kk=None):
    """dq, dk, dv from the forward's o, z, S, Z (qq, kk as in _forward)."""
    BH, T, D = q.shape
    DV = v.shape[-1]
    if normalize:
        # dL/df_ti = dn_t·v_i + δ_t: the normaliser's gradient rides on δ
        dn = (do.float() / z[..., None]).to(q.dtype)
        dl = -(do.float() * o.float()).sum(-1) / z
    else:
        dn, dl = do, None
    dS, dZ, ns = _walk(q, dn, dl, p, causal=causal, reverse=True, normalize=normalize, xx=qq)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    a0, a1, a2 = coeffs
    common = dict(a0=a0, a1=a1, a2=a2, scale=scale, T=T, D=D, DV=DV, NS=ns, F_ROWS=p["feature_rows"],
                  CHUNK=p["chunk"], BM=p["block"], BD=p["BD"], BV=p["BV"], CAUSAL=causal, NORMALIZE=normalize,
                  ROTATE=p["kernel_rotate"], VJP=p["vjp"], PRECISION=p["precision"],
                  num_warps=p["warps"], num_stages=p["stages"])
    grid = (triton.cdiv(T, p["block"]), BH)
    dl = z if dl is None else dl
    _chunk_dq_kernel[grid](q=q, qq=_windows(q, qq, p["block"], p), k=k, v=v, dn=dn, dl=dl, S=S, Z=Z, dq=dq, **common)
    _chunk_dkv_kernel[grid](q=q, k=k, kk=_windows(k, kk, p["block"], p), v=v, dn=dn, dl=dl, dS=dS, dZ=dZ, dk=dk,
                            dv=dv, **common)
    return dq, dk, dv


class ChunkedPolyAttention(torch.autograd.Function):
    """Autograd over the four passes; the forward's prefix states are saved for the backward."""

    @staticmethod
    def forward(ctx, q, k, v, coeffs, scale, causal, normalize, p):
        B, H, T, D = q.shape
        DV = v.shape[-1]
        qf, kf, vf = (x.reshape(B * H, T, -1).contiguous() for x in (q, k, v))
        # the doubled rows, made once per call and kept for the backward (None unless the plan reads windows)
        qq, kk = _doubled(qf, p), _doubled(kf, p)
        o, z, S, Z = _forward(qf, kf, vf, coeffs, scale, causal, normalize, p, qq, kk)
        ctx.save_for_backward(qf, kf, vf, o, z, S, Z, qq, kk)
        ctx.coeffs, ctx.scale, ctx.causal, ctx.normalize, ctx.p, ctx.shape = coeffs, scale, causal, normalize, p, \
            (B, H, T, D, DV)
        return o.reshape(B, H, T, DV)

    @staticmethod
    def backward(ctx, do):
        qf, kf, vf, o, z, S, Z, qq, kk = ctx.saved_tensors
        B, H, T, D, DV = ctx.shape
        dof = do.reshape(B * H, T, DV).contiguous()
        dq, dk, dv = _backward(dof, qf, kf, vf, o, z, S, Z, ctx.coeffs, ctx.scale, ctx.causal, ctx.normalize,
                               ctx.p, qq, kk)
        return dq.reshape(B, H, T, D), dk.reshape(B, H, T, D), dv.reshape(B, H, T, DV), None, None, None, None, \
            None


def chunked_poly_attention(q, k, v, coeffs=(1.0, 1.0, 0.5), *, scale=None, causal=True, normalize=True,
                           tuning=None):
    """Degree-2 polynomial attention o = Σ f(s q·k) v [/ Σ f(s q·k)] by the chunk-parallel kernels.

    Parameters
    ----------
    q, k : tensor [B, H, T, D]
    v : tensor [B, H, T, DV]
        fp32, fp16 or bf16 (all three the same), on a device Triton runs on; D, DV ≤ 128 (padded
        to a power of two ≥ 16 inside the kernels).
    coeffs : (a0, a1, a2)
        f(x) = a0 + a1 x + a2 x², a2 ≠ 0; a normalised f should be positive (1 + x + x²/2 is).
    scale : float, optional
        s; default 1/sqrt(D).
    causal, normalize : bool
    tuning : dict, optional
        Overrides of :func:`plan` (for sweeps).

    Returns
    -------
    tensor [B, H, T, DV] in the inputs' dtype.

    Example
    -------
    >>> import torch
    >>> q, k, v = (torch.randn(1, 2, 100, 16) for _ in range(3))
    >>> o = chunked_poly_attention(q, k, v, tuning=dict(chunk=32, block=16, step=16))  # doctest: +SKIP
    """
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"chunked_poly_attention: q, k must be [B, H, T, D] and v [B, H, T, DV] with the same "
                         f"B, H, T; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"chunked_poly_attention: q, k, v must share one of fp32, fp16, bf16; got {q.dtype}, "
                        f"{k.dtype}, {v.dtype}")
    D, DV = q.shape[-1], v.shape[-1]
    if D > 128 or DV > 128:
        raise ValueError(f"chunked_poly_attention: head dims up to 128 (D = {D}, DV = {DV}); split the heads "
                         f"or use fastattn.kernels.poly.poly_attention")
    a0, a1, a2 = (float(a) for a in coeffs)
    if a2 == 0.0:
        raise ValueError(f"chunked_poly_attention: a2 = 0 in coeffs {tuple(coeffs)}: the chunked kernels are for "
                         f"degree 2; use poly_attention for lower degrees")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    p = plan(q.shape[2], D, DV, q.dtype, tuning=tuning)
    return ChunkedPolyAttention.apply(q, k, v, (a0, a1, a2), scale, bool(causal), bool(normalize), p)


def feature_map(x, coeffs, scale, side):
    """The kernels' feature map in float64 torch, rows in the state order: φ (side "q", weighted) or ψ ("k").

    x [..., D] → [..., F_ROWS] with F_ROWS = (BD/2 + 1)·BD + BD + 1 (BD: D padded to a power of two
    ≥ 16): circulant tile d = 0 .. BD/2 holds x_c x_{(c−d) mod BD} (c < BD), then the low tile x
    (padded to BD) and the constant 1; φ(q)·ψ(k) = a0 + a1 s q·k + a2 s² (q·k)². The reference for
    the kernels' layout, not a fast path.
    """
    if side not in ("q", "k"):
        raise ValueError(f"feature_map: side must be 'q' or 'k', got {side!r}")
    a0, a1, a2 = (float(a) for a in coeffs)
    D = x.shape[-1]
    BD = _pow2(D, 16)
    xp = torch.nn.functional.pad(x.double(), (0, BD - D))
    tiles, low, const = [], xp, torch.ones_like(xp[..., :1])
    for d in range(BD // 2 + 1):
        # torch.roll by d puts x_{(c−d) mod BD} in column c; pairs at distance BD/2 appear twice, once per column
        t = xp * torch.roll(xp, d, -1)
        tiles.append(t * (a2 * scale * scale * (1 if d in (0, BD // 2) else 2)) if side == "q" else t)
    if side == "q":
        low, const = low * (a1 * scale), const * a0
    return torch.cat(tiles + [low, const], -1)
