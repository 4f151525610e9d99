"""Decoding: one new token per (batch, head) against the carried state, in one read and one write of it.

With a key/value head's state S [F, DV], z [F] (features in the symmetric-basis order of
:func:`fastattn.kernels.naive.symmetric_tables`) and an optional log forget gate g <= 0,

    S <- exp(g) S + psi(k) v^T      z <- exp(g) z + psi(k)      o = phi(q).S  [/ den(phi(q).z)]

for every query head of the key/value head's group (grouped-query attention reads one state per
group, and updates it once). den is the layers' rule (z, or |z| + eps with
``normalizer_fix="abs"``; NaN where it cannot be right), taken from the generated kernels' ``_den``.

Memory traffic per key/value head: read F (DV + 1) fp32 numbers and write them once; q, k, v, g
and the index/weight tables are O(D + F) and o is O(DV). At d64 with 1 + x + x**2/2 (F = 2145,
DV = 64) that is 549 KB read and 549 KB written: a step costs a copy of the state, whatever the
context length. phi(q) and psi(k) never reach HBM: each feature is w[f] times at most ``degree``
entries of q or k, gathered from the row (cache-resident) by the index table.

Grid (splits, B * H_kv): program (s, bh) walks feature blocks s * BPS .. (s + 1) * BPS - 1 of
key/value head bh, updates them and accumulates phi(q).S and phi(q).z of the group's query heads.
With one split the program owns the whole head and writes o itself (one launch); with several
(small batches, where B * H_kv programs cannot fill the GPU) each writes fp32 partials
[splits, B * H_q, DV + 1] that a second kernel sums in a fixed order and divides. Partials, not
atomics: the sum is deterministic, the output needs no zeroing launch, and the division needs a
second pass anyway. Without GQA a program accumulates phi(q) S elementwise in its [BF, BV] tile and
reduces across threads once at the end; a group reduces per block, one query head at a time.

The new S, z go into new tensors or, with ``inplace``, over the old ones (safe: each tile is read
before it is written, and no two programs share a tile); in place keeps one copy of the state in
memory and fixed addresses for a CUDA graph. The index/weight tables (F (SLOTS + 2) 4-byte numbers,
26 KB at d64) are shared by every head and stay in L2.

>>> import torch
>>> p = plan(batch=1, heads_kv=16, group=1, features=2145, head_dim_v=64, device=torch.device("cpu"))
>>> p.block_f, p.blocks, p.splits
(64, 34, 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastattn.attention.state import ReadMostlyState, State
from fastattn.errors import KernelError

__all__ = ["Plan", "plan", "decode_tables", "decode_step", "compile_report"]


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------
@triton.jit
def _features(p_x, idx, w, o_f, m_f, F, D, SLOTS: tl.constexpr):
    # feature f of row x is w[f] * prod_m x[idx[m, f]], product in the torch reference's order;
    # idx == D means "no factor" and reads as 1, a masked feature has weight 0
    b_y = tl.load(w + o_f, mask=m_f, other=0.0)  # [BF]
    for m in tl.static_range(SLOTS):
        i_m = tl.load(idx + m * F + o_f, mask=m_f, other=D)  # [BF]
        b_y = b_y * tl.load(p_x + i_m, mask=i_m < D, other=1.0).to(tl.float32)
    return b_y


@triton.jit
def _accumulators(BF: tl.constexpr, BV: tl.constexpr, DEFER: tl.constexpr):
    # the elementwise [BF, BV] / [BF] sums of a one-head (DEFER) program; placeholders otherwise
    if DEFER:
        return tl.zeros([BF, BV], dtype=tl.float32), tl.zeros([BF], dtype=tl.float32)
    else:
        return tl.zeros([1, 1], dtype=tl.float32), tl.zeros([1], dtype=tl.float32)


@triton.jit
def _read_block(p_q, sq_h, idx, w_phi, o_f, m_f, F, D, G, o_g, b_S, b_z, b_n, b_zq, b_acc, b_accz,
                SLOTS: tl.constexpr, DEFER: tl.constexpr):
    # phi(q) . (S, z) of one feature block: elementwise into b_acc (one query head, one reduction at the
    # end) or reduced per query head of the group into rows of b_n, b_zq
    if DEFER:
        b_phi = _features(p_q, idx, w_phi, o_f, m_f, F, D, SLOTS)  # [BF]
        b_acc += b_phi[:, None] * b_S
        b_accz += b_phi * b_z
    else:
        for j in range(G):
            b_phi = _features(p_q + j * sq_h, idx, w_phi, o_f, m_f, F, D, SLOTS)  # [BF]
            b_n = tl.where((o_g == j)[:, None], b_n + tl.sum(b_phi[:, None] * b_S, 0)[None, :], b_n)
            b_zq = tl.where(o_g == j, b_zq + tl.sum(b_phi * b_z, 0), b_zq)
    return b_n, b_zq, b_acc, b_accz


@triton.jit
def _reduced(b_n, b_zq, b_acc, b_accz, DEFER: tl.constexpr):
    # (numerator [BG, BV], denominator [BG]) of a program, its elementwise sums reduced once (DEFER)
    if DEFER:
        b_n = tl.sum(b_acc, 0)[None, :]  # [1, BV]
        b_zq = tl.sum(b_accz[:, None], 0)  # [1]
    return b_n, b_zq


@triton.jit
def _emit(o_ptr, zq_ptr, part_n, part_z, b_n, b_zq, eps, i_s, i_b, i_h, H_kv, G, DV, o_g, o_v, m_v,
          NORMALIZE: tl.constexpr, FIX_ABS: tl.constexpr, DIRECT: tl.constexpr, DEN: tl.constexpr):
    # o (and the normaliser's sum) of the group's query heads, or this split's fp32 partials
    o_r = i_b * H_kv * G + i_h * G + o_g  # [BG] rows b * H_q + h_q of the group
    m_g = o_g < G
    m_gv = m_g[:, None] & m_v[None, :]
    if DIRECT:
        tl.store(zq_ptr + o_r, b_zq, mask=m_g)
        if NORMALIZE:
            b_n = b_n / DEN(b_zq, eps, FIX_ABS)[:, None]
        tl.store(o_ptr + o_r[:, None] * DV + o_v[None, :], b_n.to(o_ptr.dtype.element_ty), mask=m_gv)
    else:
        R = tl.num_programs(1).to(tl.int64) * G  # B * H_q
        tl.store(part_n + (i_s * R + o_r)[:, None] * DV + o_v[None, :], b_n, mask=m_gv)
        tl.store(part_z + i_s * R + o_r, b_zq, mask=m_g)


@triton.jit
def _decode_kernel(q_ptr, k_ptr, v_ptr, g_ptr, S_ptr, z_ptr, S_out, z_out, tokens, tokens_out, o_ptr, zq_ptr,
                   part_n, part_z, idx, w_phi, w_psi, eps, H_kv, G, F, D, DV, NB, BPS,
                   sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sg_b, sg_h,
                   sS_b, sS_h, sS_f, sz_b, sz_h, sSo_b, sSo_h, sSo_f, szo_b, szo_h,
                   SLOTS: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, BG: tl.constexpr,
                   HAS_G: tl.constexpr, NORMALIZE: tl.constexpr, FIX_ABS: tl.constexpr,
                   DIRECT: tl.constexpr, DEFER: tl.constexpr, DEN: tl.constexpr):
    """One decoding step of feature blocks [i_s BPS, (i_s + 1) BPS) of key/value head i_bh.

    * q_ptr [B, H_q, D], k_ptr [B, H_kv, D], v_ptr [B, H_kv, DV]: any float dtype, row stride 1;
      g_ptr [B, H_kv], read when HAS_G.
    * S_ptr / S_out [B, H_kv, F, DV], z_ptr / z_out [B, H_kv, F] fp32; tokens / tokens_out [B]
      int64. Outputs may alias inputs: a program reads each tile before writing it, tiles are
      disjoint, and one program per batch row adds 1 to its token count.
    * o_ptr [B H_q, DV] in q's dtype and zq_ptr [B H_q] fp32 (DIRECT), else the fp32 partials
      part_n [splits, B H_q, DV] and part_z [splits, B H_q].
    * idx [SLOTS, F] int32, w_phi / w_psi [F] fp32 (:func:`decode_tables`); DEN the denominator
      rule (``_den``).
    """
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    # int64 offsets: a state slice of a stacked prefill buffer can sit past 2**31 elements
    i_b, i_h = (i_bh // H_kv).to(tl.int64), (i_bh % H_kv).to(tl.int64)
    o_v = tl.arange(0, BV)
    m_v = o_v < DV
    o_g = tl.arange(0, BG)
    p_k = k_ptr + i_b * sk_b + i_h * sk_h
    p_q = q_ptr + i_b * sq_b + i_h * G * sq_h  # the group's first query head
    # the token count rides along: no separate launch for tokens + 1
    if (i_s == 0) & (i_h == 0):
        tl.store(tokens_out + i_b, tl.load(tokens + i_b) + 1)
    b_v = tl.load(v_ptr + i_b * sv_b + i_h * sv_h + o_v, mask=m_v, other=0.0).to(tl.float32)  # [BV]
    if HAS_G:
        b_decay = tl.exp(tl.load(g_ptr + i_b * sg_b + i_h * sg_h).to(tl.float32))
    b_n = tl.zeros([BG, BV], dtype=tl.float32)
    b_zq = tl.zeros([BG], dtype=tl.float32)
    # one query head (G = 1, DEFER): products accumulate elementwise, one cross-thread reduction at the end
    b_acc, b_accz = _accumulators(BF, BV, DEFER)
    # the head's base pointers in int64 once; offsets inside a head (F x DV) fit int32, which keeps the
    # per-element address arithmetic of the [BF, BV] tiles in 32 bits
    p_S = S_ptr + i_b * sS_b + i_h * sS_h
    p_So = S_out + i_b * sSo_b + i_h * sSo_h
    p_z = z_ptr + i_b * sz_b + i_h * sz_h
    p_zo = z_out + i_b * szo_b + i_h * szo_h
    for i_f in range(i_s * BPS, tl.minimum(i_s * BPS + BPS, NB)):
        o_f = i_f * BF + tl.arange(0, BF)
        m_f = o_f < F
        m_fv = m_f[:, None] & m_v[None, :]
        b_S = tl.load(p_S + o_f[:, None] * sS_f + o_v[None, :], mask=m_fv, other=0.0)  # [BF, BV]
        b_z = tl.load(p_z + o_f, mask=m_f, other=0.0)  # [BF]
        b_psi = _features(p_k, idx, w_psi, o_f, m_f, F, D, SLOTS)  # [BF]
        if HAS_G:
            b_S = b_decay * b_S + b_psi[:, None] * b_v[None, :]
            b_z = b_decay * b_z + b_psi
        else:
            b_S = b_S + b_psi[:, None] * b_v[None, :]
            b_z = b_z + b_psi
        tl.store(p_So + o_f[:, None] * sSo_f + o_v[None, :], b_S, mask=m_fv)
        tl.store(p_zo + o_f, b_z, mask=m_f)
        # the token sees itself: its query heads read the updated block
        b_n, b_zq, b_acc, b_accz = _read_block(p_q, sq_h, idx, w_phi, o_f, m_f, F, D, G, o_g, b_S, b_z, b_n, b_zq,
                                               b_acc, b_accz, SLOTS, DEFER)
    b_n, b_zq = _reduced(b_n, b_zq, b_acc, b_accz, DEFER)
    _emit(o_ptr, zq_ptr, part_n, part_z, b_n, b_zq, eps, i_s, i_b, i_h, H_kv, G, DV, o_g, o_v, m_v,
          NORMALIZE, FIX_ABS, DIRECT, DEN)


@triton.jit
def _combine_kernel(part_n, part_z, o_ptr, zq_ptr, eps, R, DV, NS, BV: tl.constexpr, NORMALIZE: tl.constexpr,
                    FIX_ABS: tl.constexpr, DEN: tl.constexpr):
    """o[r] = sum_s part_n[s, r] [/ DEN(sum_s part_z[s, r])] for row r = program 0, in o's dtype.

    part_n [NS, R, DV] and part_z [NS, R] fp32 from :func:`_decode_kernel`; o_ptr [R, DV]; zq_ptr [R]
    fp32 receives the normaliser's sum (for the host's output check).
    """
    i_r = tl.program_id(0).to(tl.int64)
    o_v = tl.arange(0, BV)
    m_v = o_v < DV
    o_1 = tl.arange(0, 1)
    b_n = tl.zeros([BV], dtype=tl.float32)
    b_z = tl.zeros([1], dtype=tl.float32)
    # a fixed order over the splits: the same inputs give the same bits
    for i_s in range(NS):
        b_n += tl.load(part_n + (i_s * R + i_r) * DV + o_v, mask=m_v, other=0.0)  # [BV]
        b_z += tl.load(part_z + i_s * R + i_r + o_1)  # [1]
    tl.store(zq_ptr + i_r + o_1, b_z)
    if NORMALIZE:
        b_n = b_n / DEN(b_z, eps, FIX_ABS)
    tl.store(o_ptr + i_r * DV + o_v, b_n.to(o_ptr.dtype.element_ty), mask=m_v)


# ----------------------------------------------------------------------------------------
# Routing
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """How one decoding step is launched: feature block, splits of the feature axis, warps.

    Attributes
    ----------
    block_f, block_v, block_g : int
        Features per tile, v columns per tile (DV padded to a power of two), query heads per group (padded).
    blocks : int
        Feature blocks per head, ceil(F / block_f).
    splits : int
        Programs per key/value head; 1 writes o directly (one launch), more add the combine kernel.
    blocks_per_split : int
    defer : bool
        One query head per state (no GQA): accumulate phi(q) S elementwise and reduce once per
        program, not once per feature block.
    num_warps : int
    """

    block_f: int
    block_v: int
    block_g: int
    blocks: int
    splits: int
    blocks_per_split: int
    defer: bool
    num_warps: int


_TUNING_KEYS = ("block_f", "splits", "defer", "num_warps")
_SM_COUNT: dict = {}
_PLANS: dict = {}  # a plan per shape: the host side of a step is on the critical path at batch 1


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a few programs per head, so tests cover the split path
    i = device.index if device.index is not None else torch.cuda.current_device()
    if i not in _SM_COUNT:
        _SM_COUNT[i] = torch.cuda.get_device_properties(i).multi_processor_count
    return _SM_COUNT[i]


def plan(*, batch: int, heads_kv: int, group: int, features: int, head_dim_v: int, device: torch.device,
         tuning: dict | None = None) -> Plan:
    """The launch of one step: the only place that reads ``tuning`` overrides (private; sweeps and tests).

    A tile holds 4096 fp32 numbers of the state (block_f x block_v; 16 KB read and written per
    block). Splits: enough programs for about 8 per SM, never more than the feature blocks. Three
    fit on an SM at once (147 registers at d64, sm_90 compiled on the CPU), so that is a few waves
    and the last one's idle SMs cost little; at batch 64 x 16 heads two splits, at batch 1 one
    feature block per program. The partials this adds are splits B H_q (DV + 1) fp32 numbers.

    Examples
    --------
    >>> p = plan(batch=1, heads_kv=16, group=1, features=2145, head_dim_v=64, device=torch.device("cpu"),
    ...          tuning={"splits": 17})
    >>> p.block_f, p.blocks, p.splits, p.blocks_per_split
    (64, 34, 17, 2)
    """
    key = (batch, heads_kv, group, features, head_dim_v, device, tuple(sorted((tuning or {}).items())))
    if key not in _PLANS:
        _PLANS[key] = _plan(batch, heads_kv, group, features, head_dim_v, device, tuning)
    return _PLANS[key]


def _plan(batch, heads_kv, group, features, head_dim_v, device, tuning):
    tuning = dict(tuning or {})
    unknown = sorted(set(tuning) - set(_TUNING_KEYS))
    if unknown:
        raise KernelError(f"decode tuning has unknown keys {unknown}; known: {list(_TUNING_KEYS)}")
    block_v = triton.next_power_of_2(head_dim_v)
    block_f = tuning.get("block_f", max(16, min(128, 4096 // block_v)))
    if not (isinstance(block_f, int) and block_f >= 16 and block_f & (block_f - 1) == 0):
        raise KernelError(f"decode tuning block_f={block_f!r} must be a power of two >= 16")
    blocks = -(-features // block_f)
    want = -(-8 * _sm_count(device) // (batch * heads_kv))
    splits = min(blocks, max(1, tuning.get("splits", want)))
    per = -(-blocks // splits)
    splits = -(-blocks // per)  # no empty program
    defer = group == 1 and bool(tuning.get("defer", True))
    num_warps = tuning.get("num_warps", 4)
    return Plan(block_f, block_v, triton.next_power_of_2(group), blocks, splits, per, defer, num_warps)


def decode_tables(idx: torch.Tensor, w_phi: torch.Tensor, w_psi: torch.Tensor, device) -> tuple:
    """The kernel's tables from :func:`fastattn.kernels.naive.symmetric_tables`: (idx [SLOTS, F] int32, w_phi
    [F] fp32, w_psi [F] fp32) on ``device``, contiguous. Build them once per layer and device.

    >>> from fastattn.kernels.naive import symmetric_tables
    >>> t = decode_tables(*symmetric_tables({0: 1.0, 2: 0.5}, 3, 1.0), device="cpu")
    >>> t[0].shape, t[0].dtype, t[1].dtype
    (torch.Size([2, 7]), torch.int32, torch.float32)
    """
    return (idx.to(device=device, dtype=torch.int32).contiguous(),
            w_phi.to(device=device, dtype=torch.float32).contiguous(),
            w_psi.to(device=device, dtype=torch.float32).contiguous())


_DEN: dict = {}


def _den_function(poly):
    # the generated kernels' denominator rule, one definition for every kernel (any f's module has the same);
    # kept per interpreter mode, as the module is, since hashing poly for load_module's memo costs ~20 us a step
    import os

    mode = os.environ.get("TRITON_INTERPRET", "0")
    if mode not in _DEN:
        from fastattn.kernels.codegen import load_module

        _DEN[mode] = load_module(poly)._den
    return _DEN[mode]


def _rows(x):
    # [B, H, 1, X] -> (tensor with unit stride on X, batch stride, head stride)
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x, x.stride(0), x.stride(1)


# ----------------------------------------------------------------------------------------
# Host
# ----------------------------------------------------------------------------------------
def decode_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: State, poly, tables: tuple, *,
                g: torch.Tensor | None = None, normalize: bool = True, normalizer_fix: str | None = None,
                eps: float = 1e-6, inplace: bool = False, tuning: dict | None = None, scale: float | None = None):
    """One decoding step on the Triton kernel: returns (o [B, H_q, 1, DV] in q's dtype, new State, zq [B, H_q] fp32).

    A :class:`~fastattn.attention.state.ReadMostlyState` runs the read-mostly step instead (it needs ``scale``,
    the s of f(s q.k) the tables were built with): S_read is read, the token joins the ring, and every R-th
    token folds the ring into the float32 master (:mod:`fastattn.kernels.read_mostly`).

    Parameters
    ----------
    q : tensor [B, H_q, 1, D]
    k : tensor [B, H_kv, 1, D]
    v : tensor [B, H_kv, 1, DV]
        fp32, fp16 or bf16, one device (CUDA, or CPU under ``TRITON_INTERPRET=1``); H_q a multiple
        of H_kv. Any strides with a unit stride on the last dim (else copied).
    state : State
        S [B, H_kv, F, DV], z [B, H_kv, F] float32 (S: batch/head/feature strides free, unit stride on DV;
        z: batch/head strides free, unit stride on F; others are copied, or refused when ``inplace``).
    poly : Polynomial
        f; only used to find the generated kernels' denominator rule.
    tables : tuple
        :func:`decode_tables` of f at this head dim and scale (the scale is in the weights).
    g : tensor [B, H_kv, 1] or [B, H_kv], optional
        Log forget gate (<= 0: not checked here, the caller's job).
    normalize : bool
    normalizer_fix : None or "abs"
        The rule :func:`fastattn.kernels.poly.check_normalizer` chose (not re-derived here).
    eps : float
    inplace : bool
        Write the new S, z into ``state``'s tensors (its tokens too) and return the same State; else
        into new tensors, leaving ``state`` as it was.
    tuning : dict, optional
        Private overrides for :func:`plan`.
    scale : float, optional
        Read-mostly states only: s, for the pending tokens' scores f(s q.k_j).

    Returns
    -------
    o, State, zq
        zq is phi(q).z, the normaliser's sum per query row (what a host-side check reads).

    Examples
    --------
    On a GPU, or on the CPU under ``TRITON_INTERPRET=1`` (as the test suite runs it):

    >>> import torch
    >>> from fastattn.kernels.naive import symmetric_tables
    >>> from fastattn.kernels.poly import polynomial
    >>> from fastattn.attention.state import init_state
    >>> dev = "cuda" if torch.cuda.is_available() else "cpu"
    >>> poly = polynomial("1 + x + x**2/2")
    >>> tables = decode_tables(*symmetric_tables(poly, 4, 0.5), device=dev)
    >>> x = torch.randn(1, 2, 1, 4, device=dev)
    >>> o, st, zq = decode_step(x, x, x, init_state(1, 2, 15, 4, device=dev), poly, tables)
    >>> o.shape, st.tokens.tolist()
    (torch.Size([1, 2, 1, 4]), [1])
    """
    if isinstance(state, ReadMostlyState):
        from fastattn.kernels.read_mostly import read_mostly_step

        return read_mostly_step(q, k, v, state, poly, tables, scale, g, normalize, normalizer_fix, eps, inplace,
                                tuning)
    B, Hq, _, D = q.shape
    Hk, DV = k.shape[1], v.shape[-1]
    S, z = state.S, state.z
    F = S.shape[2]
    if S.dtype != torch.float32 or z.dtype != torch.float32:
        raise KernelError(f"the decoding kernel keeps a float32 state; got {S.dtype}/{z.dtype} (float64 inputs "
                          "decode on the torch path)")
    if S.stride(-1) != 1:
        if inplace:
            raise KernelError(f"inplace decoding needs state.S with unit stride on DV; got strides {S.stride()}")
        S = S.contiguous()
    if z.stride(-1) != 1:
        # the kernel takes z's batch and head strides only: its feature axis must be dense
        if inplace:
            raise KernelError(f"inplace decoding needs state.z with unit stride on its features; got strides "
                              f"{z.stride()}")
        z = z.contiguous()
    G = Hq // Hk
    p = plan(batch=B, heads_kv=Hk, group=G, features=F, head_dim_v=DV, device=q.device, tuning=tuning)
    q, sq_b, sq_h = _rows(q)
    k, sk_b, sk_h = _rows(k)
    v, sv_b, sv_h = _rows(v)
    has_g = g is not None
    if has_g:
        g = g.reshape(B, Hk)
        sg_b, sg_h = g.stride(0), g.stride(1)
    else:
        g, sg_b, sg_h = q, 0, 0  # never read (HAS_G is False)
    if inplace:
        S_out, z_out, tokens_out = S, z, state.tokens
    else:
        S_out, z_out = (torch.empty(B, Hk, F, DV, device=S.device, dtype=S.dtype),
                        torch.empty(B, Hk, F, device=z.device, dtype=z.dtype))
        tokens_out = torch.empty_like(state.tokens)
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
    _decode_kernel[(p.splits, B * Hk)](
        q_ptr=q, k_ptr=k, v_ptr=v, g_ptr=g, S_ptr=S, z_ptr=z, S_out=S_out, z_out=z_out, tokens=state.tokens,
        tokens_out=tokens_out, o_ptr=o, zq_ptr=zq,
        part_n=part_n, part_z=part_z, idx=idx, w_phi=w_phi, w_psi=w_psi, eps=float(eps), H_kv=Hk, G=G, F=F, D=D,
        DV=DV, NB=p.blocks, BPS=p.blocks_per_split, sq_b=sq_b, sq_h=sq_h, sk_b=sk_b, sk_h=sk_h, sv_b=sv_b,
        sv_h=sv_h, sg_b=sg_b, sg_h=sg_h, sS_b=S.stride(0), sS_h=S.stride(1), sS_f=S.stride(2), sz_b=z.stride(0),
        sz_h=z.stride(1), sSo_b=S_out.stride(0), sSo_h=S_out.stride(1), sSo_f=S_out.stride(2),
        szo_b=z_out.stride(0), szo_h=z_out.stride(1), SLOTS=idx.shape[0], BF=p.block_f, BV=p.block_v,
        BG=p.block_g, HAS_G=has_g, NORMALIZE=bool(normalize), FIX_ABS=fix_abs, DIRECT=direct, DEFER=p.defer,
        DEN=den,
        num_warps=p.num_warps)
    if not direct:
        _combine_kernel[(B * Hq,)](part_n=part_n, part_z=part_z, o_ptr=o, zq_ptr=zq, eps=float(eps), R=B * Hq,
                                   DV=DV, NS=p.splits, BV=p.block_v, NORMALIZE=bool(normalize), FIX_ABS=fix_abs,
                                   DEN=den, num_warps=1 if p.block_v <= 128 else 2)
    if inplace:
        return o, state, zq
    return o, State(S_out, z_out, tokens_out), zq


# ----------------------------------------------------------------------------------------
# Compiling for a GPU without one
# ----------------------------------------------------------------------------------------
def compile_report(spec: str = "1 + x + x**2/2", *, head_dim: int = 64, head_dim_v: int = 64, batch: int = 64,
                   heads_q: int = 16, heads_kv: int = 16, gated: bool = False, normalize: bool = True,
                   tuning: dict | None = None, arch: int = 90, pending: int | None = None) -> dict:
    """Compile the kernels one bf16 step launches for ``sm_<arch>`` on the CPU: {kernel: "REG:n STACK:n ..."}.

    The launches are recorded on meta tensors (so the signatures are :func:`decode_step`'s own) with
    the divisibility the GPU launcher would see (pointers and ints that are multiples of 16), and
    compiled by Triton's own ptxas; the interpreter checks no registers or layouts. With ``pending=R`` the
    read-mostly kernels instead (a read step, a folding step, a flush; bf16 read copy). Run it without
    ``TRITON_INTERPRET`` (tests/test_decode.py runs it in a subprocess; a few seconds per kernel).

    For example, ``compile_report(batch=1, tuning={"splits": 4})`` gave ``{'_decode_kernel': 'REG:147 STACK:0
    SHARED:1024 warps:4', '_combine_kernel': 'REG:36 STACK:0 SHARED:0 warps:1'}`` with triton 3.9.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastattn.kernels.aot import _arg_type, _resources
    from fastattn.kernels.naive import symmetric_tables
    from fastattn.kernels.poly import check_normalizer, polynomial

    launches = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            def launch(**kw):
                opts = {"num_warps": kw.pop("num_warps")}
                sig, consts, attrs = {}, {}, {}
                for i, p in enumerate(self.fn.params):
                    value = kw[p.name]
                    if p.is_constexpr:
                        consts[p.name] = value
                        continue
                    sig[p.name] = _arg_type(value)
                    if isinstance(value, torch.Tensor) or (type(value) is int and value % 16 == 0):
                        attrs[(i,)] = [["tt.divisibility", 16]]
                launches.append((self.fn, sig, consts, attrs, opts))
            return launch

    poly = polynomial(spec)
    fix = check_normalizer(poly, normalize, None)
    tables = decode_tables(*symmetric_tables(poly, head_dim, 1.0 / math.sqrt(head_dim)), device="cpu")
    F = tables[0].shape[1]

    def meta(*shape, dtype=torch.bfloat16):
        return torch.empty(*shape, dtype=dtype, device="meta")

    st = State(meta(batch, heads_kv, F, head_dim_v, dtype=torch.float32), meta(batch, heads_kv, F, dtype=torch.float32),
               meta(batch, dtype=torch.int64))
    g = meta(batch, heads_kv, 1, dtype=torch.float32) if gated else None
    from fastattn.kernels import read_mostly as rmk

    global _decode_kernel, _combine_kernel
    kernels = (_decode_kernel, _combine_kernel, rmk._read_step_kernel, rmk._fold_kernel, rmk._combine_kernel)
    qkv = (meta(batch, heads_q, 1, head_dim), meta(batch, heads_kv, 1, head_dim), meta(batch, heads_kv, 1, head_dim_v))
    try:
        _decode_kernel, _combine_kernel, rmk._read_step_kernel, rmk._fold_kernel = (Recorder(kn) for kn in kernels[:4])
        rmk._combine_kernel = _combine_kernel
        if pending is None:
            decode_step(*qkv, st, poly, tables, g=g, normalize=normalize, normalizer_fix=fix, tuning=tuning)
        else:
            R1 = pending - 1
            rm = ReadMostlyState(st.S, st.z, st.tokens, meta(batch, heads_kv, F, head_dim_v),
                                 meta(batch, heads_kv, R1, head_dim), meta(batch, heads_kv, R1, head_dim_v),
                                 meta(batch, heads_kv, R1, dtype=torch.float32), 0, tables)
            for n in (0, R1):
                rm.pending = n
                decode_step(*qkv, rm, poly, tables, g=g, normalize=normalize, normalizer_fix=fix, tuning=tuning,
                            inplace=True, scale=1.0 / math.sqrt(head_dim))
            rm.pending = R1
            rmk.fold_pending(rm, tables, tuning=tuning)
    finally:
        _decode_kernel, _combine_kernel, rmk._read_step_kernel, rmk._fold_kernel, rmk._combine_kernel = kernels
    report = {}
    for fn, sig, consts, attrs, opts in launches:
        src = ASTSource(fn, dict(sig, **{n: "constexpr" for n in consts}), consts, attrs)
        kern = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
        name = fn.__name__ + (" (flush)" if consts.get("CUR") is False else "")
        report[name] = f"{_resources(kern.asm['cubin'])} warps:{opts['num_warps']}"
    return report
