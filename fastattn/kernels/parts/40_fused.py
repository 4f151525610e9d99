"""Kernels that write their outputs once: the fused small-feature path, the chunk-parallel forward,
and the normaliser passes every path shares.

``_fused_fwd_kernel`` (one program per segment and batch*head: intra + inter + normaliser, o written
once), ``_chunk_fwd_kernel`` (one program per query chunk: its own segment exactly, the earlier ones
through their carried state), ``_den`` (the normaliser's denominator, NaN
where it cannot be right), ``_finalize_kernel`` (o / den in the input dtype), ``_bwd_prep_kernel``
(1 / den and dz) and ``_fused_bwd_kernel`` (the fused backward's two walks). This docstring is not
copied into the generated module.
"""

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
                      S_FIRST,
                      BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr,
                      NORMALIZE: tl.constexpr, FIX_ABS: tl.constexpr, PRECISION: tl.constexpr,
                      KRON: tl.constexpr = False, KG: tl.constexpr = 1, KA: tl.constexpr = 1):
    # The chunk-parallel causal forward: one program per (query chunk, v tile, batch*head), no
    # walk carried from chunk to chunk. Keys of the query's own segment (CPS chunks) enter
    # exactly, f on [BT, BT] score tiles; every earlier segment enters through the exclusive
    # prefix state S0 of the segment (from _segment_prefix), read tile by tile of BF features, from
    # segment S_FIRST on (0 when S0 carries an initial state in, else 1: segment 0's is zero).
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
    if i_s >= S_FIRST:
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
    # the normaliser's denominator: z, or |z| + eps with normalizer_fix="abs" (naive.guarded_denominator); one
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


