"""The general path's backward kernels.

``_intra_bwd_kernel``: dq, dk, dv of the intra-chunk score tile; ``_inter_bwd_kernel``: the two
walks across chunks (forward for dq, backward for dk / dv). This docstring is not copied into the
generated module.
"""

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


