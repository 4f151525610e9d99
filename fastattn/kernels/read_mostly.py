"""Read-mostly decoding: a step that reads a 16-bit copy of the state and writes only its token; a fold every R tokens.

With a :class:`~fastattn.attention.state.ReadMostlyState` (fp32 master S, z as of the last fold; S_read, S rounded
to bf16 for 16-bit inputs; a ring of the n < R tokens since, k_j, v_j, log gates g_j) and the current token's
gate g, the ordinary step's S_t = exp(g_t) S_{t-1} + psi(k_t) v_t^T unrolls to

    S_t = exp(g + sum_j g_j) S + sum_j exp(G_j) psi(k_j) v_j^T + psi(k) v^T,   G_j = g + sum_{i > j} g_i

so o = phi(q).S_t / phi(q).z_t needs phi(q).S_read once and the scores phi(q).psi(k_j) = f(s q.k_j) of at most R
tokens (``_horner`` of a_j s^j, no features). :func:`_read_step_kernel` does that and writes the token into ring
slot n; the R-th token runs :func:`_fold_kernel` instead: the ring and the token into the master (one read and
write of it in fp32), S_read rewritten, and o from the new fp32 blocks. G_j is a masked sum, so a reset
(g = -inf) gives weight 0 and never -inf - (-inf).

Memory traffic per token and key/value head, F features, DV columns: a read step reads F DV 2 bytes (bf16 S_read)
and F 4 (z), plus O(R (D + DV)) for the ring; a fold reads and writes F (DV + 1) 4 and writes F DV 2. On average
((R - 1) (S_bf16 + z) + 2 (S_fp32 + z) + S_bf16) / R: at d64, 1 + x + x**2/2 (F = 2145), R = 16, 352 KB per head
against the ordinary step's 1,115 KB (a read and a write of the fp32 state), 3.2x fewer.

Grid and splits as :func:`fastattn.kernels.decode.plan` (the read step takes 128-feature tiles of a 16-bit copy,
16 KB like the fp32 step's 64); partials are summed by :func:`fastattn.kernels.decode._combine_kernel`. Races: in a
read step only program (0, bh) touches the ring's k, v and writes slot n, which no program of the launch reads
(they read the gates of slots < n); a fold reads the ring and writes only its own tiles.

The torch reference of both is :mod:`fastattn.kernels.read_mostly_naive`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastattn.attention.state import ReadMostlyState
from fastattn.errors import KernelError
from fastattn.kernels.decode import (_accumulators, _combine_kernel, _den_function, _emit, _features,
                                     _read_block, _reduced, _rows, plan)

__all__ = ["read_mostly_step", "fold_pending"]


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------
@triton.jit
def _horner(x, coef, DEG: tl.constexpr):
    # f(s x) = sum_j coef[j] x^j with coef[j] = a_j s^j: the score route to phi(q).psi(k)
    y = tl.zeros_like(x) + tl.load(coef + DEG)
    for i in tl.static_range(DEG):
        y = y * x + tl.load(coef + (DEG - 1 - i))
    return y


@triton.jit
def _ring_log_weights(p_G, g_cur, n_pend, BR: tl.constexpr):
    # (G_r [BR], log decay): G_r = g_cur + sum of the later slots' gates, a masked sum so that a reset
    # (g = -inf) gives -inf and never -inf - (-inf); the log decay of the master is g_cur + all slots
    o_r = tl.arange(0, BR)
    b_g = tl.load(p_G + o_r, mask=o_r < n_pend, other=0.0)  # [BR]
    b_lw = g_cur + tl.sum(tl.where(o_r[None, :] > o_r[:, None], b_g[None, :], 0.0), 1)  # [BR]
    return b_lw, g_cur + tl.sum(b_g, 0)


@triton.jit
def _read_step_kernel(q_ptr, k_ptr, v_ptr, g_ptr, Sr_ptr, z_ptr, K_ptr, V_ptr, Gr_ptr, tokens, o_ptr, zq_ptr,
                      part_n, part_z, idx, w_phi, coef, eps, n_pend, H_kv, G, F, D, DV, NB, BPS,
                      sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sg_b, sg_h, sSr_b, sSr_h, sSr_f, sz_b, sz_h,
                      sK_b, sK_h, sK_r, sV_b, sV_h, sV_r, sG_b, sG_h,
                      SLOTS: tl.constexpr, DEG: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
                      BG: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr, HAS_G: tl.constexpr,
                      NORMALIZE: tl.constexpr, FIX_ABS: tl.constexpr, DIRECT: tl.constexpr, DEFER: tl.constexpr,
                      DEN: tl.constexpr):
    """A read-only step of feature blocks [i_s BPS, (i_s + 1) BPS) of key/value head i_bh: S_read is read, not written.

    * Sr_ptr [B, H_kv, F, DV] (the read copy, any float dtype), z_ptr [B, H_kv, F] fp32 (the master's z).
    * K_ptr [B, H_kv, R - 1, D], V_ptr [B, H_kv, R - 1, DV], Gr_ptr [B, H_kv, R - 1] fp32: the ring, slots
      < n_pend pending. Program (0, i_bh) adds the pending and current tokens' scores
      f(s q.k_j) (``_horner`` of coef [DEG + 1]) and writes the current token into slot n_pend, which no
      program reads in this launch; its batch row's first head adds 1 to tokens.
    * q, k, v, g, o_ptr, zq_ptr, part_n, part_z, idx, w_phi: as in :func:`_decode_kernel`.
    """
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H_kv).to(tl.int64), (i_bh % H_kv).to(tl.int64)
    o_v = tl.arange(0, BV)
    m_v = o_v < DV
    o_g = tl.arange(0, BG)
    p_q = q_ptr + i_b * sq_b + i_h * G * sq_h  # the group's first query head
    p_K = K_ptr + i_b * sK_b + i_h * sK_h
    p_V = V_ptr + i_b * sV_b + i_h * sV_h
    p_G = Gr_ptr + i_b * sG_b + i_h * sG_h
    if HAS_G:
        g_cur = tl.load(g_ptr + i_b * sg_b + i_h * sg_h).to(tl.float32)
    else:
        g_cur = tl.sum(tl.zeros([1], dtype=tl.float32), 0)
    b_lw, b_lg = _ring_log_weights(p_G, g_cur, n_pend, BR)
    b_n = tl.zeros([BG, BV], dtype=tl.float32)
    b_zq = tl.zeros([BG], dtype=tl.float32)
    b_acc, b_accz = _accumulators(BF, BV, DEFER)
    p_S = Sr_ptr + i_b * sSr_b + i_h * sSr_h
    p_z = z_ptr + i_b * sz_b + i_h * sz_h
    for i_f in range(i_s * BPS, tl.minimum(i_s * BPS + BPS, NB)):
        o_f = i_f * BF + tl.arange(0, BF)
        m_f = o_f < F
        b_S = tl.load(p_S + o_f[:, None] * sSr_f + o_v[None, :], mask=m_f[:, None] & m_v[None, :],
                      other=0.0).to(tl.float32)  # [BF, BV]
        b_z = tl.load(p_z + o_f, mask=m_f, other=0.0)  # [BF]
        b_n, b_zq, b_acc, b_accz = _read_block(p_q, sq_h, idx, w_phi, o_f, m_f, F, D, G, o_g, b_S, b_z, b_n, b_zq,
                                               b_acc, b_accz, SLOTS, DEFER)
    b_n, b_zq = _reduced(b_n, b_zq, b_acc, b_accz, DEFER)
    # the read copy holds the master of the last fold: the gates since then decay it as one factor
    b_decay = tl.exp(b_lg)
    b_n = b_n * b_decay
    b_zq = b_zq * b_decay
    if i_s == 0:
        o_d = tl.arange(0, BD)
        m_d = o_d < D
        o_r = tl.arange(0, BR)
        m_r = o_r < n_pend
        p_k = k_ptr + i_b * sk_b + i_h * sk_h
        p_v = v_ptr + i_b * sv_b + i_h * sv_h
        b_K = tl.load(p_K + o_r[:, None] * sK_r + o_d[None, :], mask=m_r[:, None] & m_d[None, :],
                      other=0.0).to(tl.float32)  # [BR, BD]
        b_V = tl.load(p_V + o_r[:, None] * sV_r + o_v[None, :], mask=m_r[:, None] & m_v[None, :],
                      other=0.0).to(tl.float32)  # [BR, BV]
        b_w = tl.where(m_r, tl.exp(b_lw), 0.0)  # [BR]
        b_kc = tl.load(p_k + o_d, mask=m_d, other=0.0)  # [BD] in k's dtype
        b_vc = tl.load(p_v + o_v, mask=m_v, other=0.0)  # [BV]
        for j in range(G):
            b_qj = tl.load(p_q + j * sq_h + o_d, mask=m_d, other=0.0).to(tl.float32)  # [BD]
            b_p = b_w * _horner(tl.sum(b_K * b_qj[None, :], 1), coef, DEG)  # [BR]
            b_pc = _horner(tl.sum(b_kc.to(tl.float32) * b_qj, 0), coef, DEG)
            b_nj = tl.sum(b_p[:, None] * b_V, 0) + b_pc * b_vc.to(tl.float32)  # [BV]
            b_n = tl.where((o_g == j)[:, None], b_n + b_nj[None, :], b_n)
            b_zq = tl.where(o_g == j, b_zq + tl.sum(b_p, 0) + b_pc, b_zq)
        # the token joins the ring (slot n_pend: no program of this launch reads it)
        tl.store(p_K + n_pend * sK_r + o_d, b_kc.to(K_ptr.dtype.element_ty), mask=m_d)
        tl.store(p_V + n_pend * sV_r + o_v, b_vc.to(V_ptr.dtype.element_ty), mask=m_v)
        tl.store(p_G + n_pend, g_cur)
        if i_h == 0:
            tl.store(tokens + i_b, tl.load(tokens + i_b) + 1)
    _emit(o_ptr, zq_ptr, part_n, part_z, b_n, b_zq, eps, i_s, i_b, i_h, H_kv, G, DV, o_g, o_v, m_v,
          NORMALIZE, FIX_ABS, DIRECT, DEN)


@triton.jit
def _fold_kernel(q_ptr, k_ptr, v_ptr, g_ptr, S_ptr, z_ptr, Sr_ptr, K_ptr, V_ptr, Gr_ptr, tokens, o_ptr, zq_ptr,
                 part_n, part_z, idx, w_phi, w_psi, eps, n_pend, H_kv, G, F, D, DV, NB, BPS,
                 sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sg_b, sg_h, sS_b, sS_h, sS_f, sz_b, sz_h, sSr_b, sSr_h, sSr_f,
                 sK_b, sK_h, sK_r, sV_b, sV_h, sV_r, sG_b, sG_h,
                 SLOTS: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, BG: tl.constexpr, BR: tl.constexpr,
                 HAS_G: tl.constexpr, CUR: tl.constexpr, NORMALIZE: tl.constexpr, FIX_ABS: tl.constexpr,
                 DIRECT: tl.constexpr, DEFER: tl.constexpr, DEN: tl.constexpr):
    """Fold the ring's n_pend tokens (and, with CUR, the current token) into the master S, z of feature blocks
    [i_s BPS, (i_s + 1) BPS) of key/value head i_bh, in place, and write them rounded into the read copy.

    S <- exp(G) S + sum_r exp(G_r) psi(k_r) v_r^T [+ psi(k) v^T], z likewise (``_ring_log_weights``). With CUR the
    token's query heads read the new fp32 blocks, as in :func:`_decode_kernel` (o, zq or partials; tokens + 1);
    without it (a flush) q, k, v, g and the outputs are not touched.
    """
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H_kv).to(tl.int64), (i_bh % H_kv).to(tl.int64)
    o_v = tl.arange(0, BV)
    m_v = o_v < DV
    o_g = tl.arange(0, BG)
    o_r = tl.arange(0, BR)
    p_k = k_ptr + i_b * sk_b + i_h * sk_h
    p_q = q_ptr + i_b * sq_b + i_h * G * sq_h
    p_K = K_ptr + i_b * sK_b + i_h * sK_h
    p_V = V_ptr + i_b * sV_b + i_h * sV_h
    p_G = Gr_ptr + i_b * sG_b + i_h * sG_h
    if HAS_G:  # the host passes HAS_G only with CUR
        g_cur = tl.load(g_ptr + i_b * sg_b + i_h * sg_h).to(tl.float32)
    else:
        g_cur = tl.sum(tl.zeros([1], dtype=tl.float32), 0)
    b_lw, b_lg = _ring_log_weights(p_G, g_cur, n_pend, BR)
    b_decay = tl.exp(b_lg)
    if CUR:
        if (i_s == 0) & (i_h == 0):
            tl.store(tokens + i_b, tl.load(tokens + i_b) + 1)
        b_v = tl.load(v_ptr + i_b * sv_b + i_h * sv_h + o_v, mask=m_v, other=0.0).to(tl.float32)  # [BV]
    b_n = tl.zeros([BG, BV], dtype=tl.float32)
    b_zq = tl.zeros([BG], dtype=tl.float32)
    b_acc, b_accz = _accumulators(BF, BV, DEFER)
    p_S = S_ptr + i_b * sS_b + i_h * sS_h
    p_z = z_ptr + i_b * sz_b + i_h * sz_h
    p_Sr = Sr_ptr + i_b * sSr_b + i_h * sSr_h
    for i_f in range(i_s * BPS, tl.minimum(i_s * BPS + BPS, NB)):
        o_f = i_f * BF + tl.arange(0, BF)
        m_f = o_f < F
        m_fv = m_f[:, None] & m_v[None, :]
        b_S = b_decay * tl.load(p_S + o_f[:, None] * sS_f + o_v[None, :], mask=m_fv, other=0.0)  # [BF, BV]
        b_z = b_decay * tl.load(p_z + o_f, mask=m_f, other=0.0)  # [BF]
        for r in range(n_pend):
            b_wr = tl.exp(tl.sum(tl.where(o_r == r, b_lw, 0.0), 0))
            b_psi = b_wr * _features(p_K + r * sK_r, idx, w_psi, o_f, m_f, F, D, SLOTS)  # [BF]
            b_vr = tl.load(p_V + r * sV_r + o_v, mask=m_v, other=0.0).to(tl.float32)  # [BV]
            b_S += b_psi[:, None] * b_vr[None, :]
            b_z += b_psi
        if CUR:
            b_psi = _features(p_k, idx, w_psi, o_f, m_f, F, D, SLOTS)  # [BF]
            b_S += b_psi[:, None] * b_v[None, :]
            b_z += b_psi
        tl.store(p_S + o_f[:, None] * sS_f + o_v[None, :], b_S, mask=m_fv)
        tl.store(p_z + o_f, b_z, mask=m_f)
        tl.store(p_Sr + o_f[:, None] * sSr_f + o_v[None, :], b_S.to(Sr_ptr.dtype.element_ty), mask=m_fv)
        if CUR:
            b_n, b_zq, b_acc, b_accz = _read_block(p_q, sq_h, idx, w_phi, o_f, m_f, F, D, G, o_g, b_S, b_z, b_n,
                                                   b_zq, b_acc, b_accz, SLOTS, DEFER)
    if CUR:
        b_n, b_zq = _reduced(b_n, b_zq, b_acc, b_accz, DEFER)
        _emit(o_ptr, zq_ptr, part_n, part_z, b_n, b_zq, eps, i_s, i_b, i_h, H_kv, G, DV, o_g, o_v, m_v,
              NORMALIZE, FIX_ABS, DIRECT, DEN)


# ----------------------------------------------------------------------------------------
# Host
# ----------------------------------------------------------------------------------------
_COEF: dict = {}


def _scaled_coefficients(poly, scale: float, device) -> torch.Tensor:
    # coef[j] = a_j s^j, dense from j = 0 to the degree, fp32 (rounded once from float64): f(s x) by Horner's rule
    # keyed by identity (the entry keeps poly alive): hashing a Polynomial costs ~20 us, a step at batch 1 ~10
    key = (id(poly), float(scale), str(device))
    if key not in _COEF or _COEF[key][0] is not poly:
        from fastattn.kernels.naive import _coeffs

        c = _coeffs(poly)
        _COEF[key] = (poly, torch.tensor([c.get(j, 0.0) * float(scale) ** j for j in range(max(c) + 1)],
                                         dtype=torch.float64).to(device=device, dtype=torch.float32))
    return _COEF[key][1]


def _ring_args(state):
    K, V, Gr = state.k, state.v, state.g
    return dict(K_ptr=K, V_ptr=V, Gr_ptr=Gr, sK_b=K.stride(0), sK_h=K.stride(1), sK_r=K.stride(2), sV_b=V.stride(0),
                sV_h=V.stride(1), sV_r=V.stride(2), sG_b=Gr.stride(0), sG_h=Gr.stride(1))


def _check_read_mostly_layout(state):
    # the kernels read unit strides on D, DV, F and along the ring's slots of g
    for name, x in (("S", state.S), ("S_read", state.S_read), ("k", state.k), ("v", state.v), ("g", state.g),
                    ("z", state.z)):
        if x.stride(-1) != 1:
            raise KernelError(f"read-mostly decoding needs state.{name} with a unit last stride; got strides "
                              f"{x.stride()} (build it with init_state(..., pending=R) or read_mostly)")
    if state.S.dtype != torch.float32 or state.z.dtype != torch.float32:
        raise KernelError(f"the read-mostly kernels keep a float32 master; got {state.S.dtype}/{state.z.dtype}")


def read_mostly_step(q, k, v, state, poly, tables, scale, g, normalize, normalizer_fix, eps, inplace, tuning):
    """:func:`fastattn.kernels.decode.decode_step` on a ReadMostlyState (it dispatches here; same arguments and
    returns, ``scale`` required): a read step, or a fold step when the ring is full; the state is updated in
    place (a copy of it first unless ``inplace``)."""
    if scale is None:
        raise KernelError("decode_step on a ReadMostlyState needs scale= (the s of f(s q.k) the tables hold)")
    _check_read_mostly_layout(state)
    if not inplace:
        state = state.clone()
    B, Hq, _, D = q.shape
    Hk, DV = k.shape[1], v.shape[-1]
    F = state.S.shape[2]
    G = Hq // Hk
    n = state.pending
    fold = n == state.k.shape[2]  # the R-th token: ring and token into the master
    tuning = dict(tuning or {})
    if not fold and "block_f" not in tuning and state.S_read.element_size() == 2:
        # a 16-bit read copy: 128 x 64 tiles keep 16 KB in flight per block, as the fp32 step's 64 x 64 do
        tuning["block_f"] = max(16, min(128, 8192 // triton.next_power_of_2(DV)))
    p = plan(batch=B, heads_kv=Hk, group=G, features=F, head_dim_v=DV, device=q.device, tuning=tuning)
    q, sq_b, sq_h = _rows(q)
    k, sk_b, sk_h = _rows(k)
    v, sv_b, sv_h = _rows(v)
    has_g = g is not None
    if has_g:
        g = g.reshape(B, Hk)
        sg_b, sg_h = g.stride(0), g.stride(1)
    else:
        g, sg_b, sg_h = q, 0, 0  # never read
    o = torch.empty(B, Hq, 1, DV, device=q.device, dtype=q.dtype)
    zq = torch.empty(B, Hq, device=q.device, dtype=torch.float32)
    direct = p.splits == 1
    if direct:
        part_n, part_z = zq, zq  # never written
    else:
        part_n = torch.empty(p.splits, B * Hq, DV, device=q.device, dtype=torch.float32)
        part_z = torch.empty(p.splits, B * Hq, device=q.device, dtype=torch.float32)
    idx, w_phi, w_psi = tables
    den = _den_function(poly)
    fix_abs = normalizer_fix == "abs"
    S, z, Sr = state.S, state.z, state.S_read
    common = dict(q_ptr=q, k_ptr=k, v_ptr=v, g_ptr=g, z_ptr=z, Sr_ptr=Sr, tokens=state.tokens, o_ptr=o, zq_ptr=zq,
                  part_n=part_n, part_z=part_z, idx=idx, w_phi=w_phi, eps=float(eps), n_pend=n, H_kv=Hk, G=G, F=F,
                  D=D, DV=DV, NB=p.blocks, BPS=p.blocks_per_split, sq_b=sq_b, sq_h=sq_h, sk_b=sk_b, sk_h=sk_h,
                  sv_b=sv_b, sv_h=sv_h, sg_b=sg_b, sg_h=sg_h, sSr_b=Sr.stride(0), sSr_h=Sr.stride(1),
                  sSr_f=Sr.stride(2), sz_b=z.stride(0), sz_h=z.stride(1), **_ring_args(state), SLOTS=idx.shape[0],
                  BF=p.block_f, BV=p.block_v, BG=p.block_g, BR=triton.next_power_of_2(max(1, state.k.shape[2])),
                  HAS_G=has_g, NORMALIZE=bool(normalize), FIX_ABS=fix_abs, DIRECT=direct, DEFER=p.defer, DEN=den,
                  num_warps=p.num_warps)
    if fold:
        _fold_kernel[(p.splits, B * Hk)](S_ptr=S, w_psi=w_psi, sS_b=S.stride(0), sS_h=S.stride(1), sS_f=S.stride(2),
                                         CUR=True, **common)
        state.pending = 0
    else:
        coef = _scaled_coefficients(poly, scale, q.device)
        _read_step_kernel[(p.splits, B * Hk)](coef=coef, BD=triton.next_power_of_2(D), DEG=coef.numel() - 1, **common)
        state.pending = n + 1
    if not direct:
        _combine_kernel[(B * Hq,)](part_n=part_n, part_z=part_z, o_ptr=o, zq_ptr=zq, eps=float(eps), R=B * Hq,
                                   DV=DV, NS=p.splits, BV=p.block_v, NORMALIZE=bool(normalize), FIX_ABS=fix_abs,
                                   DEN=den, num_warps=1 if p.block_v <= 128 else 2)
    return o, state, zq


def fold_pending(state: ReadMostlyState, tables: tuple, *, tuning: dict | None = None) -> None:
    """Fold a :class:`~fastattn.attention.state.ReadMostlyState`'s pending tokens into its master, in place, and
    rewrite its read copy (the fold kernel without a current token); pending becomes 0. What ``state.flush()`` runs.

    Memory traffic: one read and write of the fp32 master and a write of the read copy.
    """
    _check_read_mostly_layout(state)
    n = state.pending
    if n == 0:
        return
    S, z, Sr = state.S, state.z, state.S_read
    B, Hk, F, DV = S.shape
    D = state.k.shape[-1]
    p = plan(batch=B, heads_kv=Hk, group=1, features=F, head_dim_v=DV, device=S.device, tuning=tuning)
    idx, w_phi, w_psi = tables
    _fold_kernel[(p.splits, B * Hk)](
        q_ptr=S, k_ptr=S, v_ptr=S, g_ptr=S, S_ptr=S, z_ptr=z, Sr_ptr=Sr, tokens=state.tokens, o_ptr=S, zq_ptr=z,
        part_n=S, part_z=z, idx=idx, w_phi=w_phi, w_psi=w_psi, eps=0.0, n_pend=n, H_kv=Hk, G=1, F=F, D=D, DV=DV,
        NB=p.blocks, BPS=p.blocks_per_split, sq_b=0, sq_h=0, sk_b=0, sk_h=0, sv_b=0, sv_h=0, sg_b=0, sg_h=0,
        sS_b=S.stride(0), sS_h=S.stride(1), sS_f=S.stride(2), sz_b=z.stride(0), sz_h=z.stride(1), sSr_b=Sr.stride(0),
        sSr_h=Sr.stride(1), sSr_f=Sr.stride(2), **_ring_args(state), SLOTS=idx.shape[0], BF=p.block_f,
        BV=p.block_v, BG=1, BR=triton.next_power_of_2(max(1, state.k.shape[2])), HAS_G=False, CUR=False,
        NORMALIZE=False, FIX_ABS=False, DIRECT=True, DEFER=True, DEN=None, num_warps=p.num_warps)
    state.pending = 0
