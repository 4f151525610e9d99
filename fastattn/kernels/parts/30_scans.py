"""The general path's forward across chunks: the two-level causal scan.

``_segment_state_kernel`` sums each segment's state, ``_segment_scan_kernel`` turns the sums into
carried states in place, and ``_inter_fwd_kernel`` walks the chunks of its segment with its
[BF, BV] slice of the state in registers. This docstring is not copied into the generated module.
"""

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
    # walk the segments in parallel from them. Axis 0 covers NF x (segments from S_LO on) of NSEG:
    # a prefix never needs the last segment's sum, a suffix never the first, a final state all.
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
def _segment_scan_kernel(S, init, final, N, NSEG, REVERSE: tl.constexpr, BLOCK: tl.constexpr,
                         HAS_INIT: tl.constexpr = False, FINAL: tl.constexpr = False):
    # in place, per batch*head: S[s] <- init + sum of S[s'] over the segments s' before s (after s
    # when REVERSE), i.e. the exclusive scan that turns segment sums into carried states. init [N]
    # per batch*head is a carried-in state (a user's initial state, or the gradient of the final
    # one); without FINAL the last segment visited was never summed (see _segment_state_kernel)
    # and is only written, with FINAL every segment was summed and init + all of them goes to final
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh64 = i_bh.to(tl.int64)
    o_n = i_n * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < N
    p_s = S + i_bh64 * NSEG * N + o_n
    if HAS_INIT:
        b_acc = tl.load(init + i_bh64 * N + o_n, mask=m_n, other=0.0)
    else:
        b_acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(NSEG):
        if REVERSE:
            i_s = NSEG - 1 - i
        else:
            i_s = i
        if FINAL:
            b_x = tl.load(p_s + i_s * N, mask=m_n, other=0.0)
        else:
            b_x = tl.load(p_s + i_s * N, mask=m_n & ((o_n * 0 + i) < NSEG - 1), other=0.0)
        tl.store(p_s + i_s * N, b_acc, mask=m_n)
        b_acc += b_x
    if FINAL:
        tl.store(final + i_bh64 * N + o_n, b_acc, mask=m_n)


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


