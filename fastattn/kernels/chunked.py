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

The feature map is never written to HBM: a feature tile is the Kronecker block x[:, I] ⊗ x[:, J]
of two column blocks of width ``KB`` (pairs I ≤ J; the full square on the diagonal blocks, so the
weight is a2 s² there and 2 a2 s² off it), plus one "low" tile [x, 1] for a1 s x and a0. Weights
sit on the query side only, so the walks over k (forward) and over q (backward) share one kernel.

>>> import torch
>>> q, k, v = (torch.randn(1, 1, 8, 4, dtype=torch.float64) for _ in range(3))
>>> phi, psi = feature_map(q, (1.0, 1.0, 0.5), 0.5, "q"), feature_map(k, (1.0, 1.0, 0.5), 0.5, "k")
>>> x = 0.5 * q @ k.transpose(-1, -2)
>>> bool(torch.allclose(phi @ psi.transpose(-1, -2), 1 + x + x * x / 2))
True
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = ["chunked_poly_attention", "feature_map", "plan"]


# --------------------------------------------------------------------------------------- kernels

@triton.jit
def _pair_tile_t(x, rows, m_rows, I, J, D, KB: tl.constexpr):
    """ψ of one Kronecker tile, transposed: [KB², BT] = x[rows, I-block] ⊗ x[rows, J-block] in fp32."""
    o_b = tl.arange(0, KB)
    c_i, c_j = I * KB + o_b, J * KB + o_b
    b_xi = tl.load(x + rows[None, :] * D + c_i[:, None], mask=m_rows[None, :] & (c_i < D)[:, None],
                   other=0.0).to(tl.float32)  # [KB, BT]
    b_xj = tl.load(x + rows[None, :] * D + c_j[:, None], mask=m_rows[None, :] & (c_j < D)[:, None],
                   other=0.0).to(tl.float32)  # [KB, BT]
    return tl.reshape(b_xi[:, None, :] * b_xj[None, :, :], [KB * KB, rows.shape[0]])


@triton.jit
def _pair_tile(x, rows, m_rows, I, J, D, KB: tl.constexpr):
    """The Kronecker tile [BM, KB²] in fp32 and its two factors [BM, KB]."""
    o_b = tl.arange(0, KB)
    c_i, c_j = I * KB + o_b, J * KB + o_b
    b_xi = tl.load(x + rows[:, None] * D + c_i[None, :], mask=m_rows[:, None] & (c_i < D)[None, :],
                   other=0.0).to(tl.float32)  # [BM, KB]
    b_xj = tl.load(x + rows[:, None] * D + c_j[None, :], mask=m_rows[:, None] & (c_j < D)[None, :],
                   other=0.0).to(tl.float32)  # [BM, KB]
    return tl.reshape(b_xi[:, :, None] * b_xj[:, None, :], [rows.shape[0], KB * KB]), b_xi, b_xj


@triton.jit
def _pair_vjp(acc3, g, b_xi, b_xj, I, J, NB: tl.constexpr, KB: tl.constexpr):
    """Add the VJP of x_I ⊗ x_J against g [BM, KB²] into acc3 [BM, NB, KB] (column block I and J)."""
    b_g = tl.reshape(g, [g.shape[0], KB, KB])
    c_i = tl.sum(b_g * b_xj[:, None, :], 2)  # [BM, KB]
    c_j = tl.sum(b_g * b_xi[:, :, None], 1)  # [BM, KB]
    o_n = tl.arange(0, NB)
    acc3 += tl.where((o_n == I)[None, :, None], c_i[:, None, :], 0.0)
    acc3 += tl.where((o_n == J)[None, :, None], c_j[:, None, :], 0.0)
    return acc3


@triton.jit
def _state_walk_kernel(x, y, c, S, Z, pairs, T, D, DV, NC, NS, NP, F_ROWS,
                       CHUNK: tl.constexpr, BT: tl.constexpr, KB: tl.constexpr, BD: tl.constexpr,
                       BV: tl.constexpr, CAUSAL: tl.constexpr, REVERSE: tl.constexpr, HAS_C: tl.constexpr,
                       NORMALIZE: tl.constexpr, PRECISION: tl.constexpr):
    """Per-chunk prefix (or, REVERSE, suffix) states of Σ feat(x)ᵀ y and Σ feat(x) c.

    x [BH, T, D], y [BH, T, DV] (input dtype), c [BH, T] fp32 (1 where not HAS_C); writes
    S [BH, NS, F_ROWS, DV] (input dtype) and Z [BH, NS, F_ROWS] fp32: with CAUSAL, slot c holds
    the sum over the chunks before c in walk order (NS = NC); else slot 0 holds the total (NS = 1).
    Grid (NP + 1, BH): program p < NP owns pair tile p (rows p·KB²...), program NP the low tile
    (rows NP·KB² + [0, BD): x; row NP·KB² + BD: the constant 1).
    """
    p = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    x += bh * T * D
    y += bh * T * DV
    c += bh * T
    S += bh * NS * F_ROWS * DV
    Z += bh * NS * F_ROWS
    o_t = tl.arange(0, BT)
    o_v = tl.arange(0, BV)
    m_v = o_v < DV
    if p < NP:
        I = tl.load(pairs + 2 * p)
        J = tl.load(pairs + 2 * p + 1)
        o_f = p * KB * KB + tl.arange(0, KB * KB)
        b_s = tl.zeros([KB * KB, BV], dtype=tl.float32)
        b_z = tl.zeros([KB * KB], dtype=tl.float32)
        for i in range(NC):
            if REVERSE:
                ci = NC - 1 - i
            else:
                ci = i
            if CAUSAL:
                tl.store(S + ci * F_ROWS * DV + o_f[:, None] * DV + o_v[None, :], b_s.to(S.dtype.element_ty),
                         mask=m_v[None, :])
                if NORMALIZE:
                    tl.store(Z + ci * F_ROWS + o_f, b_z)
            for r0 in range(ci * CHUNK, ci * CHUNK + CHUNK, BT):
                rows = r0 + o_t
                m_t = rows < T
                b_f = _pair_tile_t(x, rows, m_t, I, J, D, KB)  # [KB², BT]
                b_y = tl.load(y + rows[:, None] * DV + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                              other=0.0)  # [BT, BV]
                b_s += tl.dot(b_f.to(b_y.dtype), b_y, input_precision=PRECISION)
                if NORMALIZE:
                    if HAS_C:
                        b_c = tl.load(c + rows, mask=m_t, other=0.0)
                    else:
                        b_c = m_t.to(tl.float32)
                    b_z += tl.sum(b_f * b_c[None, :], 1)
        if not CAUSAL:
            tl.store(S + o_f[:, None] * DV + o_v[None, :], b_s.to(S.dtype.element_ty), mask=m_v[None, :])
            if NORMALIZE:
                tl.store(Z + o_f, b_z)
    else:
        o_d = tl.arange(0, BD)
        m_d = o_d < D
        f_lo = NP * KB * KB
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
                    tl.store(Z + ci * F_ROWS + f_lo + o_d, b_zl)
                    tl.store(Z + ci * F_ROWS + f_lo + BD, b_zc)
            for r0 in range(ci * CHUNK, ci * CHUNK + CHUNK, BT):
                rows = r0 + o_t
                m_t = rows < T
                b_xt = tl.load(x + rows[None, :] * D + o_d[:, None], mask=m_t[None, :] & m_d[:, None],
                               other=0.0)  # [BD, BT]
                b_y = tl.load(y + rows[:, None] * DV + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                              other=0.0)  # [BT, BV]
                b_sl += tl.dot(b_xt, b_y, input_precision=PRECISION)
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
                tl.store(Z + f_lo + o_d, b_zl)
                tl.store(Z + f_lo + BD, b_zc)


@triton.jit
def _chunk_out_kernel(q, k, v, S, Z, pairs, o, z, a0, a1, a2, scale, T, D, DV, NS, NP, F_ROWS,
                      CHUNK: tl.constexpr, BM: tl.constexpr, KB: tl.constexpr, BD: tl.constexpr,
                      BV: tl.constexpr, CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr):
    """o = φ(Q)·S_c (all feature tiles) + f(s QKᵀ) ⊙ mask @ V inside the chunk, [/ z].

    q, k [BH, T, D], v [BH, T, DV], S / Z as the walk writes them; writes o [BH, T, DV] (input
    dtype) and, with NORMALIZE, z [BH, T] fp32. Grid (cdiv(T, BM), BH).
    """
    mb = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
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
    o_m = tl.arange(0, BM)
    o_v = tl.arange(0, BV)
    o_d = tl.arange(0, BD)
    m_v, m_d = o_v < DV, o_d < D
    rows = r0 + o_m
    m_r = rows < T
    b_q = tl.load(q + rows[:, None] * D + o_d[None, :], mask=m_r[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
    b_o = tl.zeros([BM, BV], dtype=tl.float32)
    b_z = tl.zeros([BM], dtype=tl.float32)
    a2s = a2 * scale * scale
    for p in range(NP):
        I = tl.load(pairs + 2 * p)
        J = tl.load(pairs + 2 * p + 1)
        o_f = p * KB * KB + tl.arange(0, KB * KB)
        b_phi, _, _ = _pair_tile(q, rows, m_r, I, J, D, KB)  # [BM, KB²]
        b_phi = b_phi * tl.where(I == J, a2s, 2 * a2s)
        b_st = tl.load(S + o_f[:, None] * DV + o_v[None, :], mask=m_v[None, :], other=0.0)  # [KB², BV]
        b_o += tl.dot(b_phi.to(b_st.dtype), b_st, input_precision=PRECISION)
        if NORMALIZE:
            b_z += tl.sum(b_phi * tl.load(Z + o_f)[None, :], 1)
    f_lo = NP * KB * KB
    b_sl = tl.load(S + (f_lo + o_d)[:, None] * DV + o_v[None, :], mask=m_v[None, :], other=0.0)  # [BD, BV]
    b_ql = b_q.to(tl.float32) * (a1 * scale)
    b_o += tl.dot(b_ql.to(b_sl.dtype), b_sl, input_precision=PRECISION)
    b_o += a0 * tl.load(S + (f_lo + BD) * DV + o_v, mask=m_v, other=0.0).to(tl.float32)[None, :]
    if NORMALIZE:
        b_z += tl.sum(b_ql * tl.load(Z + f_lo + o_d)[None, :], 1) + a0 * tl.load(Z + f_lo + BD)
    if CAUSAL:
        for c0 in range(ci * CHUNK, r0 + BM, BM):
            cols = c0 + o_m
            m_c = cols < T
            b_k = tl.load(k + cols[:, None] * D + o_d[None, :], mask=m_c[:, None] & m_d[None, :], other=0.0)
            b_v = tl.load(v + cols[:, None] * DV + o_v[None, :], mask=m_c[:, None] & m_v[None, :], other=0.0)
            b_x = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * scale  # [BM, BM]
            b_a = a0 + b_x * (a1 + a2 * b_x)
            b_a = tl.where((rows[:, None] >= cols[None, :]) & m_c[None, :], b_a, 0.0)
            b_o += tl.dot(b_a.to(b_v.dtype), b_v, input_precision=PRECISION)
            if NORMALIZE:
                b_z += tl.sum(b_a, 1)
    if NORMALIZE:
        b_o = b_o / b_z[:, None]
        tl.store(z + rows, b_z, mask=m_r)
    tl.store(o + rows[:, None] * DV + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_r[:, None] & m_v[None, :])


@triton.jit
def _chunk_dq_kernel(q, k, v, dn, dl, S, Z, pairs, dq, a0, a1, a2, scale, T, D, DV, NS, NP, F_ROWS,
                     CHUNK: tl.constexpr, BM: tl.constexpr, KB: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
                     CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr):
    """dq = J_φᵀ (w ⊙ (S_c dn + ζ_c δ)) over all feature tiles + the intra-chunk flash backward.

    dn [BH, T, DV] = do / z (input dtype), dl [BH, T] = δ = −(do·o)/z fp32 (read with NORMALIZE);
    S / Z the forward's prefix states; writes dq [BH, T, D]. Grid (cdiv(T, BM), BH).
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
    NB: tl.constexpr = BD // KB
    o_m = tl.arange(0, BM)
    o_v = tl.arange(0, BV)
    o_d = tl.arange(0, BD)
    m_v, m_d = o_v < DV, o_d < D
    rows = r0 + o_m
    m_r = rows < T
    b_q = tl.load(q + rows[:, None] * D + o_d[None, :], mask=m_r[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
    b_dn = tl.load(dn + rows[:, None] * DV + o_v[None, :], mask=m_r[:, None] & m_v[None, :], other=0.0)
    if NORMALIZE:
        b_dl = tl.load(dl + rows, mask=m_r, other=0.0)
    b_dq = tl.zeros([BM, BD], dtype=tl.float32)
    b_dq3 = tl.zeros([BM, NB, KB], dtype=tl.float32)
    a2s = a2 * scale * scale
    for p in range(NP):
        I = tl.load(pairs + 2 * p)
        J = tl.load(pairs + 2 * p + 1)
        o_f = p * KB * KB + tl.arange(0, KB * KB)
        b_st = tl.load(S + o_f[:, None] * DV + o_v[None, :], mask=m_v[None, :], other=0.0)  # [KB², BV]
        b_g = tl.dot(b_dn, tl.trans(b_st), input_precision=PRECISION)  # [BM, KB²]
        if NORMALIZE:
            b_g += b_dl[:, None] * tl.load(Z + o_f)[None, :]
        b_g = b_g * tl.where(I == J, a2s, 2 * a2s)
        _, b_xi, b_xj = _pair_tile(q, rows, m_r, I, J, D, KB)
        b_dq3 = _pair_vjp(b_dq3, b_g, b_xi, b_xj, I, J, NB, KB)
    f_lo = NP * KB * KB
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
            b_dq += tl.dot(b_dx.to(b_k.dtype), b_k, input_precision=PRECISION)
    b_dq += tl.reshape(b_dq3, [BM, BD])
    tl.store(dq + rows[:, None] * D + o_d[None, :], b_dq.to(dq.dtype.element_ty), mask=m_r[:, None] & m_d[None, :])


@triton.jit
def _chunk_dkv_kernel(q, k, v, dn, dl, dS, dZ, pairs, dk, dv, a0, a1, a2, scale, T, D, DV, NS, NP, F_ROWS,
                      CHUNK: tl.constexpr, BM: tl.constexpr, KB: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
                      CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr):
    """dv = (w ⊙ ψ(K)) dS_c, dk = J_ψᵀ (w ⊙ (V dS_cᵀ + dζ_c)) over all feature tiles + the intra part.

    dS / dZ: the backward walk's suffix states of Σ φ̂(q) dnᵀ and Σ φ̂(q) δ (unweighted features);
    writes dk [BH, T, D], dv [BH, T, DV]. Grid (cdiv(T, BM), BH).
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
    NB: tl.constexpr = BD // KB
    o_m = tl.arange(0, BM)
    o_v = tl.arange(0, BV)
    o_d = tl.arange(0, BD)
    m_v, m_d = o_v < DV, o_d < D
    rows = r0 + o_m
    m_r = rows < T
    b_k = tl.load(k + rows[:, None] * D + o_d[None, :], mask=m_r[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
    b_v = tl.load(v + rows[:, None] * DV + o_v[None, :], mask=m_r[:, None] & m_v[None, :], other=0.0)  # [BM, BV]
    b_dk = tl.zeros([BM, BD], dtype=tl.float32)
    b_dk3 = tl.zeros([BM, NB, KB], dtype=tl.float32)
    b_dv = tl.zeros([BM, BV], dtype=tl.float32)
    a2s = a2 * scale * scale
    for p in range(NP):
        I = tl.load(pairs + 2 * p)
        J = tl.load(pairs + 2 * p + 1)
        w = tl.where(I == J, a2s, 2 * a2s)
        o_f = p * KB * KB + tl.arange(0, KB * KB)
        b_st = tl.load(dS + o_f[:, None] * DV + o_v[None, :], mask=m_v[None, :], other=0.0)  # [KB², BV]
        b_psi, b_xi, b_xj = _pair_tile(k, rows, m_r, I, J, D, KB)  # [BM, KB²]
        b_dv += tl.dot((b_psi * w).to(b_st.dtype), b_st, input_precision=PRECISION)
        b_g = tl.dot(b_v, tl.trans(b_st), input_precision=PRECISION)  # [BM, KB²]
        if NORMALIZE:
            b_g += tl.load(dZ + o_f)[None, :]
        b_dk3 = _pair_vjp(b_dk3, b_g * w, b_xi, b_xj, I, J, NB, KB)
    f_lo = NP * KB * KB
    b_sl = tl.load(dS + (f_lo + o_d)[:, None] * DV + o_v[None, :], mask=m_v[None, :], other=0.0)  # [BD, BV]
    b_g = tl.dot(b_v, tl.trans(b_sl), input_precision=PRECISION)  # [BM, BD]
    if NORMALIZE:
        b_g += tl.load(dZ + f_lo + o_d)[None, :]
    b_dk += b_g * (a1 * scale)
    b_kl = b_k.to(tl.float32) * (a1 * scale)
    b_dv += tl.dot(b_kl.to(b_sl.dtype), b_sl, input_precision=PRECISION)
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
            b_dv += tl.dot(b_a.to(b_dn.dtype), b_dn, input_precision=PRECISION)
            b_da = tl.dot(b_v, tl.trans(b_dn), input_precision=PRECISION)  # [BM, BM]
            if NORMALIZE:
                b_da += tl.load(dl + cols, mask=m_c, other=0.0)[None, :]
            b_dx = tl.where(m_a, scale * (a1 + 2 * a2 * b_x) * b_da, 0.0)
            b_dk += tl.dot(b_dx.to(b_q.dtype), b_q, input_precision=PRECISION)
    b_dk += tl.reshape(b_dk3, [BM, BD])
    tl.store(dk + rows[:, None] * D + o_d[None, :], b_dk.to(dk.dtype.element_ty), mask=m_r[:, None] & m_d[None, :])
    tl.store(dv + rows[:, None] * DV + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_r[:, None] & m_v[None, :])


# ------------------------------------------------------------------------------------ host side

_PAIRS: dict = {}


def _pairs(nb: int, device) -> torch.Tensor:
    """The (I, J) column-block pairs I ≤ J, row-major, as an int32 [NP, 2] tensor (cached per device)."""
    key = (nb, str(device))
    if key not in _PAIRS:
        _PAIRS[key] = torch.tensor([(i, j) for i in range(nb) for j in range(i, nb)], dtype=torch.int32,
                                   device=device)
    return _PAIRS[key]


def _pow2(n: int, lo: int) -> int:
    return max(lo, 1 << (int(n) - 1).bit_length())


def plan(T: int, D: int, DV: int, dtype: torch.dtype, *, tuning: dict | None = None) -> dict:
    """The tiling of one call: chunk, row block, Kronecker block, walk step, padded dims, warps, stages.

    ``tuning`` overrides any entry (for sweeps). The chunk is the state granularity: 512 rows keeps
    the materialised states at ~1.2 KB per token and head at d64 (CHUNKED.md), the row block the
    query / key tile of the output and gradient programs.

    >>> plan(8192, 64, 64, torch.bfloat16)["feature_rows"]
    2369
    """
    BD, BV = _pow2(D, 16), _pow2(DV, 16)
    kb = 8 if BD >= 16 else BD
    # 8 warps at head dim 128: the low tile's [128, 128] fp32 state spilled ~1.6 KB per thread at 4 (sm_90)
    big = max(BD, BV) >= 128
    # d128 (H200, triton 3.6, B2 H8 16K): 3 stages took the walk from 9.0 to 7.1 ms, 128-row blocks the
    # output pass from 8.8 to 6.5 ms; at d64 neither was faster. 128-row blocks at 3 stages ask 256 KB of smem.
    p = dict(chunk=512, block=128 if big else 64, kb=kb, step=64, warps=8 if big else 4,
             walk_warps=8 if big else 4, stages=2, walk_stages=3 if big else 2)
    p.update(tuning or {})
    nb = BD // p["kb"]
    if BD % p["kb"] or p["chunk"] % p["block"] or p["chunk"] % p["step"]:
        raise ValueError(f"plan: kb {p['kb']} must divide the padded head dim {BD}, and block {p['block']} and "
                         f"step {p['step']} must divide chunk {p['chunk']}; got {p}")
    npairs = nb * (nb + 1) // 2
    p.update(BD=BD, BV=BV, npairs=npairs, feature_rows=npairs * p["kb"] ** 2 + BD + 1,
             precision="tf32x3" if dtype == torch.float32 else "tf32")
    return p


def _walk(x, y, c, p, *, causal, reverse, normalize):
    """Launch the state walk over x [BH, T, D] and y [BH, T, DV]; returns S, Z (see the kernel)."""
    BH, T, D = x.shape
    DV = y.shape[-1]
    nc = triton.cdiv(T, p["chunk"])
    ns = nc if causal else 1
    S = torch.empty(BH, ns, p["feature_rows"], DV, dtype=x.dtype, device=x.device)
    Z = torch.empty(BH, ns, p["feature_rows"] if normalize else 1, dtype=torch.float32, device=x.device)
    _state_walk_kernel[(p["npairs"] + 1, BH)](
        x=x, y=y, c=x if c is None else c, S=S, Z=Z, pairs=_pairs(p["BD"] // p["kb"], x.device), T=T, D=D, DV=DV,
        NC=nc, NS=ns, NP=p["npairs"], F_ROWS=p["feature_rows"], CHUNK=p["chunk"], BT=p["step"], KB=p["kb"],
        BD=p["BD"], BV=p["BV"], CAUSAL=causal, REVERSE=reverse, HAS_C=c is not None, NORMALIZE=normalize,
        PRECISION=p["precision"], num_warps=p["walk_warps"], num_stages=p["walk_stages"])
    return S, Z, ns


def _forward(q, k, v, coeffs, scale, causal, normalize, p):
    BH, T, D = q.shape
    DV = v.shape[-1]
    S, Z, ns = _walk(k, v, None, p, causal=causal, reverse=False, normalize=normalize)
    o = torch.empty(BH, T, DV, dtype=q.dtype, device=q.device)
    z = torch.empty(BH, T if normalize else 1, dtype=torch.float32, device=q.device)
    a0, a1, a2 = coeffs
    _chunk_out_kernel[(triton.cdiv(T, p["block"]), BH)](
        q=q, k=k, v=v, S=S, Z=Z, pairs=_pairs(p["BD"] // p["kb"], q.device), o=o, z=z, a0=a0, a1=a1, a2=a2,
        scale=scale, T=T, D=D, DV=DV, NS=ns, NP=p["npairs"], F_ROWS=p["feature_rows"], CHUNK=p["chunk"],
        BM=p["block"], KB=p["kb"], BD=p["BD"], BV=p["BV"], CAUSAL=causal, NORMALIZE=normalize,
        PRECISION=p["precision"], num_warps=p["warps"], num_stages=p["stages"])
    return o, z, S, Z


def _backward(do, q, k, v, o, z, S, Z, coeffs, scale, causal, normalize, p):
    BH, T, D = q.shape
    DV = v.shape[-1]
    if normalize:
        # dL/df_ti = dn_t·v_i + δ_t: the normaliser's gradient rides on δ
        dn = (do.float() / z[..., None]).to(q.dtype)
        dl = -(do.float() * o.float()).sum(-1) / z
    else:
        dn, dl = do, None
    dS, dZ, ns = _walk(q, dn, dl, p, causal=causal, reverse=True, normalize=normalize)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    a0, a1, a2 = coeffs
    pairs = _pairs(p["BD"] // p["kb"], q.device)
    common = dict(a0=a0, a1=a1, a2=a2, scale=scale, T=T, D=D, DV=DV, NS=ns, NP=p["npairs"],
                  F_ROWS=p["feature_rows"], CHUNK=p["chunk"], BM=p["block"], KB=p["kb"], BD=p["BD"], BV=p["BV"],
                  CAUSAL=causal, NORMALIZE=normalize, PRECISION=p["precision"],
                  num_warps=p["warps"], num_stages=p["stages"])
    grid = (triton.cdiv(T, p["block"]), BH)
    dl = z if dl is None else dl
    _chunk_dq_kernel[grid](q=q, k=k, v=v, dn=dn, dl=dl, S=S, Z=Z, pairs=pairs, dq=dq, **common)
    _chunk_dkv_kernel[grid](q=q, k=k, v=v, dn=dn, dl=dl, dS=dS, dZ=dZ, pairs=pairs, dk=dk, dv=dv, **common)
    return dq, dk, dv


class ChunkedPolyAttention(torch.autograd.Function):
    """Autograd over the four passes; the forward's prefix states are saved for the backward."""

    @staticmethod
    def forward(ctx, q, k, v, coeffs, scale, causal, normalize, p):
        B, H, T, D = q.shape
        DV = v.shape[-1]
        qf, kf, vf = (x.reshape(B * H, T, -1).contiguous() for x in (q, k, v))
        o, z, S, Z = _forward(qf, kf, vf, coeffs, scale, causal, normalize, p)
        ctx.save_for_backward(qf, kf, vf, o, z, S, Z)
        ctx.coeffs, ctx.scale, ctx.causal, ctx.normalize, ctx.p, ctx.shape = coeffs, scale, causal, normalize, p, \
            (B, H, T, D, DV)
        return o.reshape(B, H, T, DV)

    @staticmethod
    def backward(ctx, do):
        qf, kf, vf, o, z, S, Z = ctx.saved_tensors
        B, H, T, D, DV = ctx.shape
        dof = do.reshape(B * H, T, DV).contiguous()
        dq, dk, dv = _backward(dof, qf, kf, vf, o, z, S, Z, ctx.coeffs, ctx.scale, ctx.causal, ctx.normalize,
                               ctx.p)
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


def feature_map(x, coeffs, scale, side, *, kb=None):
    """The kernels' feature map in float64 torch, rows in the state order: φ (side "q", weighted) or ψ ("k").

    x [..., D] → [..., F_ROWS] with F_ROWS = NP·KB² + BD + 1: the pair tiles x_I ⊗ x_J (I ≤ J, the
    full square on the diagonal), the low tile x (padded to BD) and the constant 1; φ(q)·ψ(k) =
    a0 + a1 s q·k + a2 s² (q·k)². The reference for the kernels' layout, not a fast path.
    """
    if side not in ("q", "k"):
        raise ValueError(f"feature_map: side must be 'q' or 'k', got {side!r}")
    a0, a1, a2 = (float(a) for a in coeffs)
    D = x.shape[-1]
    BD = _pow2(D, 16)
    kb = (8 if BD >= 16 else BD) if kb is None else kb
    xp = torch.nn.functional.pad(x.double(), (0, BD - D))
    blocks = xp.unflatten(-1, (BD // kb, kb))
    tiles, low, const = [], xp, torch.ones_like(xp[..., :1])
    for i in range(BD // kb):
        for j in range(i, BD // kb):
            t = (blocks[..., i, :, None] * blocks[..., j, None, :]).flatten(-2)
            tiles.append(t * (a2 * scale * scale * (1 if i == j else 2)) if side == "q" else t)
    if side == "q":
        low, const = low * (a1 * scale), const * a0
    return torch.cat(tiles + [low, const], -1)
