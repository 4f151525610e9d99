"""The feature maps phi / psi on a row tile: f's device functions and the block-Kronecker tiles.

The "device_functions" block (``_f``, ``_df`` by Horner; ``_phi``, ``_phi_vjp``: the symmetric
basis gathered by one-hot matmuls) is replaced by codegen with f's own; the block below is the
f(x) = x default. Then the block-Kronecker features of a degree-2 f: column loads, group
columns, ``_kron_phi`` and its VJP ``_kron_vjp_add``. This docstring is not copied into the
generated module.
"""


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


