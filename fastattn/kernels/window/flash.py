"""Sliding-window flash attention with an outside term: the window part of ``hybrid_attention``.

For query i (causal), window w >= 1, scores x_ij = s q_i.k_j and the outside sums (n_i [DV], z_i) of the keys
j <= i - w that the caller computed (``hybrid_attention`` takes them from the feature-map kernels),

    o_i = (sum_{i-w < j <= i} exp(x_ij) v_j + n_i) / (sum_{i-w < j <= i} exp(x_ij) + z_i),

a row with z_i <= 0 (none of its keys outside, or a sum rounded to <= 0) taking n_i = z_i = 0. The kernels
read only the key blocks that meet the window: O(T (w + BLOCK)) work, never T^2. ``lse_i`` (base 2) is
log2 of that whole denominator, so the backward is flash attention's on the window pairs with
p_ij = 2^(x_ij log2(e) - lse_i), and the outside gets dn_i = do_i 2^-lse_i, dz_i = -(do_i.o_i) 2^-lse_i.
README.md has the derivation and the stabilisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastattn.kernels.checks import empty as _empty

__all__ = ["Plan", "plan", "window_fwd", "window_bwd", "WindowAttention", "window_attention"]

LOG2E = 1.4426950408889634


@triton.jit
def _crosses_edge(m0, n0, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Whether the tile of queries m0 .. m0 + BM - 1 and keys n0 .. n0 + BN - 1 holds a pair outside the window:
    a key above the diagonal (keys past T lie there too) or one w or more behind a query."""
    return (n0 + BLOCK_N - 1 > m0) | (m0 + BLOCK_M - 1 - n0 >= window)


@triton.jit
def _window_scores(b_q, k_ptr, bh, m0, n0, o_d, T, D, window, qk_scale, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """[BM, BN] scores of the queries from m0 against the keys from n0 in base-2 units, -inf off the window.

    Tiles wholly inside the window skip the mask (most of them for w >> BN); rows past T get finite
    scores there, which the callers never store (and whose do and delta are 0 in the backward)."""
    o_m = m0 + tl.arange(0, BLOCK_M)
    o_n = n0 + tl.arange(0, BLOCK_N)
    p_k = k_ptr + bh * T * D + o_n[None, :] * D + o_d[:, None]
    b_kt = tl.load(p_k, mask=(o_n < T)[None, :] & (o_d < D)[:, None], other=0.0)  # [BD, BN]
    s = tl.dot(b_q, b_kt, input_precision=PRECISION) * qk_scale  # [BM, BN]
    if _crosses_edge(m0, n0, window, BLOCK_M, BLOCK_N):
        inside = (o_n[None, :] <= o_m[:, None]) & (o_n[None, :] > o_m[:, None] - window) & (o_n < T)[None, :]
        s = tl.where(inside, s, float("-inf"))
    return s


@triton.jit
def window_fwd_kernel(q_ptr, k_ptr, v_ptr, out_ptr, o_ptr, lse_ptr, qk_scale, T, D, DV, window, out_rows,
                      HAS_OUTSIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """One query block of one (batch, head): online softmax over the window, then the outside term.

    q_ptr, k_ptr : [BH, T, D];  v_ptr : [BH, T, DV];  o_ptr : [BH, T, DV] (q's dtype)
    out_ptr : [BH, out_rows, DV + 1], the outside sums (n, z) of queries window .. T - 1 (row i - window)
    lse_ptr : [BH, T] float32, log2 of the whole denominator
    qk_scale : s log2(e)
    """
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    o_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    o_dv = tl.arange(0, BLOCK_DV)
    m_m = o_m < T
    b_q = tl.load(q_ptr + bh * T * D + o_m[:, None] * D + o_d[None, :], mask=m_m[:, None] & (o_d < D)[None, :],
                  other=0.0)  # [BM, BD]
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    lo = tl.maximum(pid_m * BLOCK_M - window + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum((pid_m + 1) * BLOCK_M, T)
    for start_n in range(lo, hi, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N)
        s = _window_scores(b_q, k_ptr, bh, pid_m * BLOCK_M, start_n, o_d, T, D, window, qk_scale, BLOCK_M, BLOCK_N,
                           PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row with no window key in the blocks so far keeps m = -inf: shift it by 0 so exp2 gives 0, not NaN
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_shift)
        p = tl.exp2(s - m_shift[:, None])  # [BM, BN]
        b_v = tl.load(v_ptr + bh * T * DV + o_n[:, None] * DV + o_dv[None, :],
                      mask=(o_n < T)[:, None] & (o_dv < DV)[None, :], other=0.0)  # [BN, BDV]
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(b_v.dtype), b_v, input_precision=PRECISION)
        m_i = m_new
    # rows past T saw no key (m = -inf, l = 0): give them finite numbers; they are not stored
    m_i = tl.where(m_m, m_i, 0.0)
    l_i = tl.where(m_m, l_i, 1.0)
    if HAS_OUTSIDE:
        # rows i >= window read their outside sums at row i - window; others have none
        m_out = m_m & (o_m >= window)
        p_out = out_ptr + bh * out_rows * (DV + 1) + (o_m - window)[:, None] * (DV + 1)
        n = tl.load(p_out + o_dv[None, :], mask=m_out[:, None] & (o_dv < DV)[None, :], other=0.0).to(tl.float32)
        z = tl.load(out_ptr + bh * out_rows * (DV + 1) + (o_m - window) * (DV + 1) + DV, mask=m_out,
                    other=0.0).to(tl.float32)
        pos = z > 0
        # M = max(m, log2 z): one part is 1 after the shift, the denominator lies in [1, window + 1]
        lz = tl.where(pos, tl.log2(tl.where(pos, z, 1.0)), float("-inf"))
        big = tl.maximum(m_i, lz)
        a = tl.exp2(m_i - big)
        b = tl.exp2(lz - big)  # 0 where z <= 0
        den = a * l_i + b
        # the outside enters as (n / z) 2^(log2 z - M), never n 2^-M, which could overflow
        num = acc * a[:, None] + (n / tl.where(pos, z, 1.0)[:, None]) * b[:, None]
        lse = big + tl.log2(den)
    else:
        den = l_i
        num = acc
        lse = m_i + tl.log2(l_i)
    o = num / den[:, None]
    tl.store(o_ptr + bh * T * DV + o_m[:, None] * DV + o_dv[None, :], o.to(o_ptr.dtype.element_ty),
             mask=m_m[:, None] & (o_dv < DV)[None, :])
    tl.store(lse_ptr + bh * T + o_m, lse, mask=m_m)


@triton.jit
def window_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, out_ptr, dout_ptr, qk_scale, scale, T,
                     D, DV, window, out_rows, HAS_OUTSIDE: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """dq of one query block: the forward's key walk, ds = p (do.v - delta), dq = s sum ds k; and the
    gradient of its rows' outside sums, dn = do 2^-lse, dz = -delta 2^-lse (0 where z <= 0).

    do_ptr : [BH, T, DV];  lse_ptr, delta_ptr : [BH, T] float32;  dq_ptr : [BH, T, D] (stored in its dtype)
    out_ptr, dout_ptr : [BH, out_rows, DV + 1], the outside sums (for z) and their gradient (same dtype)
    """
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    o_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    o_dv = tl.arange(0, BLOCK_DV)
    m_m = o_m < T
    b_q = tl.load(q_ptr + bh * T * D + o_m[:, None] * D + o_d[None, :], mask=m_m[:, None] & (o_d < D)[None, :],
                  other=0.0)  # [BM, BD]
    b_do = tl.load(do_ptr + bh * T * DV + o_m[:, None] * DV + o_dv[None, :],
                   mask=m_m[:, None] & (o_dv < DV)[None, :], other=0.0)  # [BM, BDV]
    lse = tl.load(lse_ptr + bh * T + o_m, mask=m_m, other=0.0)
    delta = tl.load(delta_ptr + bh * T + o_m, mask=m_m, other=0.0)
    if HAS_OUTSIDE:
        m_out = m_m & (o_m >= window)
        p_row = bh * out_rows * (DV + 1) + (o_m - window) * (DV + 1)
        z = tl.load(out_ptr + p_row + DV, mask=m_out, other=0.0).to(tl.float32)
        inv = tl.where(z > 0, tl.exp2(-lse), 0.0)  # 1 / L: o = (window sum + n) / L
        tl.store(dout_ptr + p_row[:, None] + o_dv[None, :], (b_do.to(tl.float32) * inv[:, None]).to(
            dout_ptr.dtype.element_ty), mask=m_out[:, None] & (o_dv < DV)[None, :])
        tl.store(dout_ptr + p_row + DV, (-delta * inv).to(dout_ptr.dtype.element_ty), mask=m_out)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo = tl.maximum(pid_m * BLOCK_M - window + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum((pid_m + 1) * BLOCK_M, T)
    for start_n in range(lo, hi, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N)
        s = _window_scores(b_q, k_ptr, bh, pid_m * BLOCK_M, start_n, o_d, T, D, window, qk_scale, BLOCK_M, BLOCK_N,
                           PRECISION)
        p = tl.exp2(s - lse[:, None])  # [BM, BN]
        b_vt = tl.load(v_ptr + bh * T * DV + o_n[None, :] * DV + o_dv[:, None],
                       mask=(o_n < T)[None, :] & (o_dv < DV)[:, None], other=0.0)  # [BDV, BN]
        dp = tl.dot(b_do, b_vt, input_precision=PRECISION)  # [BM, BN]
        ds = p * (dp - delta[:, None])
        b_k = tl.load(k_ptr + bh * T * D + o_n[:, None] * D + o_d[None, :],
                      mask=(o_n < T)[:, None] & (o_d < D)[None, :], other=0.0)  # [BN, BD]
        dq += tl.dot(ds.to(b_k.dtype), b_k, input_precision=PRECISION)
    tl.store(dq_ptr + bh * T * D + o_m[:, None] * D + o_d[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=m_m[:, None] & (o_d < D)[None, :])


@triton.jit
def window_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, qk_scale, scale, T, D, DV,
                       window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """dk, dv of one key block: walks the query blocks that hold it in their window (j <= i < j + window).

    dk_ptr : [BH, T, D], dv_ptr : [BH, T, DV] (stored in their dtype); the rest as in :func:`window_dq_kernel`.
    """
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    o_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    o_dv = tl.arange(0, BLOCK_DV)
    m_n = o_n < T
    b_k = tl.load(k_ptr + bh * T * D + o_n[:, None] * D + o_d[None, :], mask=m_n[:, None] & (o_d < D)[None, :],
                  other=0.0)  # [BN, BD]
    b_v = tl.load(v_ptr + bh * T * DV + o_n[:, None] * DV + o_dv[None, :],
                  mask=m_n[:, None] & (o_dv < DV)[None, :], other=0.0)  # [BN, BDV]
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    lo = pid_n * BLOCK_N // BLOCK_M * BLOCK_M
    hi = tl.minimum(pid_n * BLOCK_N + BLOCK_N - 1 + window, T)
    for start_m in range(lo, hi, BLOCK_M):
        o_m = start_m + tl.arange(0, BLOCK_M)
        m_m = o_m < T
        b_q = tl.load(q_ptr + bh * T * D + o_m[:, None] * D + o_d[None, :],
                      mask=m_m[:, None] & (o_d < D)[None, :], other=0.0)  # [BM, BD]
        b_do = tl.load(do_ptr + bh * T * DV + o_m[:, None] * DV + o_dv[None, :],
                       mask=m_m[:, None] & (o_dv < DV)[None, :], other=0.0)  # [BM, BDV]
        lse = tl.load(lse_ptr + bh * T + o_m, mask=m_m, other=0.0)
        delta = tl.load(delta_ptr + bh * T + o_m, mask=m_m, other=0.0)
        # the transposed tile: keys on rows, queries on columns
        st = tl.dot(b_k, tl.trans(b_q), input_precision=PRECISION) * qk_scale  # [BN, BM]
        if _crosses_edge(start_m, pid_n * BLOCK_N, window, BLOCK_M, BLOCK_N):
            inside = (o_n[:, None] <= o_m[None, :]) & (o_n[:, None] > o_m[None, :] - window)
            st = tl.where(inside, st, float("-inf"))
        pt = tl.exp2(st - lse[None, :])  # [BN, BM]
        dv += tl.dot(pt.to(b_do.dtype), b_do, input_precision=PRECISION)
        dpt = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION)  # [BN, BM]
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(b_q.dtype), b_q, input_precision=PRECISION)
    tl.store(dk_ptr + bh * T * D + o_n[:, None] * D + o_d[None, :], (dk * scale).to(dk_ptr.dtype.element_ty),
             mask=m_n[:, None] & (o_d < D)[None, :])
    tl.store(dv_ptr + bh * T * DV + o_n[:, None] * DV + o_dv[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=m_n[:, None] & (o_dv < DV)[None, :])


# -- host side ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Launch numbers of one call: query and key rows per tile for the forward / dq and for dk-dv, warps, stages."""

    block_m: int
    block_n: int
    bwd_block_m: int
    bwd_block_n: int
    warps: int
    stages: int


#: The private overrides :func:`plan` takes (``tuning=``, for sweeps and tests); None: decided by the shape.
TUNING = {"block_m": None, "block_n": None, "bwd_block_m": None, "bwd_block_n": None, "warps": None, "stages": None}


def plan(D, DV, dtype, tuning=None):
    """The :class:`Plan` of a call at head dims D, DV in ``dtype``, with ``tuning`` overrides (unknown keys refused).

    float32 takes smaller tiles: its exact ("ieee") dots run on FMA units with their operands in registers,
    which spill at the 16-bit tiles (sm_90 build: 14 KB of stack in the forward at 128 x 64).

    >>> plan(16, 64, torch.bfloat16)
    Plan(block_m=128, block_n=64, bwd_block_m=64, bwd_block_n=64, warps=4, stages=2)
    """
    tuning = dict(tuning or {})
    bad = sorted(set(tuning) - set(TUNING))
    if bad:
        raise ValueError(f"unknown tuning keys {bad}; known: {sorted(TUNING)}")
    wide = max(D, DV) > 64
    if dtype == torch.float32:
        base = dict(block_m=32, block_n=32, bwd_block_m=32, bwd_block_n=32, warps=4, stages=2)
    else:
        base = dict(block_m=128 if not wide else 64, block_n=64, bwd_block_m=64, bwd_block_n=64,
                    warps=4 if not wide else 8, stages=2)
    for key, value in tuning.items():
        if value is not None:
            if not isinstance(value, int) or value < 1 or (key.startswith(("block", "bwd")) and (
                    value < 16 or value & (value - 1))):
                raise ValueError(f"tuning {key}={value!r} must be an int (a power of two >= 16 for a block)")
            base[key] = value
    return Plan(**base)


def _dims(q, v):
    D, DV = q.shape[-1], v.shape[-1]
    return dict(D=D, DV=DV, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_DV=max(16, triton.next_power_of_2(DV)),
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32")


def window_fwd(q, k, v, outside, scale, window, pl):
    """o [BH, T, DV] (q's dtype) and lse [BH, T] (float32, base 2) for q, k [BH, T, D], v [BH, T, DV] contiguous
    and ``outside`` [BH, T - window, DV + 1] (n, z of queries window .. T - 1) or None (no query has an outside key)."""
    BH, T, _ = q.shape
    DV = v.shape[-1]
    o = _empty((BH, T, DV), q.device, q.dtype)
    lse = _empty((BH, T), q.device, torch.float32)
    has_out = outside is not None
    window_fwd_kernel[(triton.cdiv(T, pl.block_m), BH)](
        q_ptr=q, k_ptr=k, v_ptr=v, out_ptr=outside if has_out else o, o_ptr=o, lse_ptr=lse,
        qk_scale=scale * LOG2E, T=T, window=window, out_rows=outside.shape[1] if has_out else 0,
        HAS_OUTSIDE=has_out, BLOCK_M=pl.block_m, BLOCK_N=pl.block_n, num_warps=pl.warps, num_stages=pl.stages,
        **_dims(q, v))
    return o, lse


def window_bwd(q, k, v, o, lse, do, outside, scale, window, pl):
    """dq, dk, dv (in q's dtype, accumulated in float32) of :func:`window_fwd`, and the gradient of ``outside``
    (its dtype) or None."""
    BH, T, D = q.shape
    DV = v.shape[-1]
    delta = (o.float() * do.float()).sum(-1)  # [BH, T]
    dq = _empty((BH, T, D), q.device, q.dtype)
    dk = _empty((BH, T, D), q.device, q.dtype)
    dv = _empty((BH, T, DV), q.device, q.dtype)
    has_out = outside is not None
    dout = _empty(outside.shape, q.device, outside.dtype) if has_out else None
    common = dict(q_ptr=q, k_ptr=k, v_ptr=v, do_ptr=do, lse_ptr=lse, delta_ptr=delta, qk_scale=scale * LOG2E,
                  scale=scale, T=T, window=window, num_warps=pl.warps, num_stages=pl.stages, **_dims(q, v))
    window_dq_kernel[(triton.cdiv(T, pl.bwd_block_m), BH)](
        dq_ptr=dq, out_ptr=outside if has_out else dq, dout_ptr=dout if has_out else dq,
        out_rows=outside.shape[1] if has_out else 0, HAS_OUTSIDE=has_out, BLOCK_M=pl.bwd_block_m,
        BLOCK_N=pl.bwd_block_n, **common)
    window_dkdv_kernel[(triton.cdiv(T, pl.bwd_block_n), BH)](dk_ptr=dk, dv_ptr=dv, BLOCK_M=pl.bwd_block_m,
                                                             BLOCK_N=pl.bwd_block_n, **common)
    return dq, dk, dv, dout


class WindowAttention(torch.autograd.Function):
    """o of q, k [BH, T, D], v [BH, T, DV] and the outside sums ``outside`` [BH, T - window, DV + 1] (or None)."""

    @staticmethod
    def forward(ctx, q, k, v, outside, scale, window, pl):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        outside = None if outside is None else outside.contiguous()
        o, lse = window_fwd(q, k, v, outside, scale, window, pl)
        ctx.save_for_backward(q, k, v, o, lse, outside)
        ctx.scale, ctx.window, ctx.pl = scale, window, pl
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, outside = ctx.saved_tensors
        dq, dk, dv, dout = window_bwd(q, k, v, o, lse, do.contiguous(), outside, ctx.scale, ctx.window, ctx.pl)
        return dq, dk, dv, dout, None, None, None


def window_attention(q, k, v, outside, *, scale, window, tuning=None):
    """Causal softmax over the last ``window`` keys plus precomputed outside sums, under one normaliser.

    Parameters
    ----------
    q, k : tensor [B, H, T, D]
    v : tensor [B, H, T, DV]
        float32 or float16 (bfloat16 on a GPU), one device: CUDA, or the CPU under TRITON_INTERPRET=1.
    outside : tensor [B, H, T - window, DV + 1] or None
        Row r holds (n, z) = (sum f(x) v, sum f(x)) over the keys j <= r of query r + window; None when
        window >= T. Any float dtype (read as float32; its gradient comes back in it). Differentiable.
    scale : float
        s in x = s q.k.
    window : int
        w >= 1: query i takes exp(x_ij) for i - w < j <= i.
    tuning : dict, optional
        Private :data:`TUNING` overrides for sweeps and tests.

    Returns
    -------
    o : tensor [B, H, T, DV] in q's dtype.

    Examples
    --------
    >>> q = k = v = torch.randn(1, 2, 100, 16)   # CUDA, or the CPU under TRITON_INTERPRET=1
    >>> window_attention(q, k, v, None, scale=0.25, window=100).shape  # causal softmax
    torch.Size([1, 2, 100, 16])
    """
    B, H, T, D = q.shape
    DV = v.shape[-1]
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window={window!r} must be an int >= 1")
    rows = max(T - window, 0)
    if (outside is None) != (rows == 0) or (outside is not None and tuple(outside.shape) != (B, H, rows, DV + 1)):
        got = None if outside is None else tuple(outside.shape)
        raise ValueError(f"outside must be [B, H, T - window, DV + 1] = {[B, H, rows, DV + 1]} (None when window >= "
                         f"T); got {got}")
    pl = plan(D, DV, q.dtype, tuning)
    flat = lambda x: None if x is None else x.reshape((B * H,) + tuple(x.shape[2:]))  # noqa: E731
    o = WindowAttention.apply(flat(q), flat(k), flat(v), flat(outside), float(scale), int(window), pl)
    return o.reshape(B, H, T, DV)
