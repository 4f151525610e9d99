"""Per-tile building blocks of every chunkwise kernel, and the intra-chunk forward.

``_tile_origin`` / ``_feat`` / ``_feat_vjp_add`` pick the symmetric or the Kronecker feature tile;
``_intra_fwd_kernel`` computes f on the [BT, BT] score tile of each chunk; then the row helpers
(``_accumulate``, ``_chunk_rows``, ``_ld_rows``, ``_add_rows``: pointer or TMA row moves), the
normaliser sums as MMAs (``_hilo16``, ``_zs_acc``, ``_zs_of``, ``_colsum_mma``, ``_rowdot_mma``) and
``_carried_state`` (a segment's starting state). This docstring is not copied into the generated
module.
"""

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


