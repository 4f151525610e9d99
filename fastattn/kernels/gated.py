"""Gated causal feature-map attention on Triton: a log forget gate g <= 0 in the chunk kernels.

With G = cumsum(g), phi(q).psi(k) = f(s q.k) (:func:`fastattn.kernels.naive.symmetric_features`),

    o_t = sum_{i <= t} exp(G_t - G_i) (phi_t . psi_i) v_i,    S_t = exp(g_t) S_{t-1} + psi_t v_t^T

(the normaliser z_t is the same sum with v = 1: a column of ones rides on v). The feature maps are
materialised by torch, so torch's autograd carries dphi -> dq and dpsi -> dk; the kernels here are
"simple GLA" kernels with key dim F, in chunks of C tokens with b the chunk's local cumulative
gate (every exponent <= 0, so a strongly negative g cannot overflow):

* ``_fwd_states``: one program per (F tile, DV tile, key/value head) walks the chunks and writes the
  state before each, S_c = exp(b_last) S_{c-1} + sum_i exp(b_last - b_i) psi_i v_i^T (summed in fp32,
  stored in the inputs' dtype, which the readers' dots take), from S_0.
* ``_fwd_output``: one program per (DV tile, chunk, query head), reading its group's key/value head:
  o = exp(b) * (phi S_{c-1}) + (phi psi^T * exp(b_t - b_i), causal) v, summed over F tiles.
* ``_bwd_dstates``: the reverse walk of dS_c = exp(b'_last) dS_{c+1} + (exp(b') phi)^T dO (chunk c+1),
  from the final state's gradient; its last value is dS_0.
* ``_bwd_dv`` and ``_bwd_dfeat``: dv per (DV tile, chunk), dphi, dpsi per (F tile, chunk), and
  the per-tile parts of phi_t . dphi_t - psi_t . dpsi_t. Per key/value head, summing over the query
  heads of its group (grouped-query attention repeats nothing).
* ``_state_gate``: <dS_c, S_c> per chunk, what the chunk's last local gate gets from the state it decays.

The gate's gradient is taken per chunk: with b_t the chunk-local cumulative gate,
dL/db_t = phi_t . dphi_t - psi_t . dpsi_t, plus <dS_c, S_c> at the chunk's last token (<dS_T, S_T>
for the last chunk), and dg_m is the sum of dL/db_t over t >= m in m's chunk. Why: inside a chunk
b enters only through A_ti = exp(b_t - b_i) phi_t . psi_i (the previous state as exp(b_t) phi_t . S_{c-1},
an i before the chunk) and through S_c, whose every term carries exp(b_last); dA_ti/db_t = A_ti =
-dA_ti/db_i, phi_t . dphi_t = sum_i dA_ti A_ti, psi_i . dpsi_i = sum_t dA_ti A_ti (tests/test_gated.py
checks the global form of this identity against torch autograd in float64). The global form, a reverse
sum over all T of phi . dphi - psi . dpsi, gives the same numbers in exact arithmetic but sums T terms that
cancel: from bf16 chunk states (H200, B2 H8 T4096) its dg rel-RMS was 2.1-2.2e-2; a bf16 emulation of these
kernels gives 2.1e-2 / 4.7e-2 (x d64 / Based d16) with it and 5.1e-3 / 5.4e-3 with the chunk-local form.

Memory traffic (forward, per query head with G = 1): the walk reads psi (T F) once per DV tile and
v (T DV) once per F tile and writes the chunk states ((T/C) F DV); the output pass reads phi, psi
and the states once per DV tile (one tile up to DV = 128) and writes o (T DV, fp32). With G query
heads per key/value head the walk and the states are shared by the group. The backward moves
about twice that, plus dphi, dpsi (2 T F).

>>> import torch
>>> from fastattn.kernels import polynomial
>>> q, k, v = torch.randn(3, 1, 2, 20, 4)
>>> g = -torch.rand(1, 2, 20)
>>> o, _ = gated_attention(q, k, v, g, polynomial("1 + x + x**2/2"), scale=0.5)
>>> o.shape
torch.Size([1, 2, 20, 4])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import triton
import triton.language as tl

from fastattn.errors import KernelError
from fastattn.kernels import naive
from fastattn.kernels.checks import empty as _empty

__all__ = ["GATE_FLOOR", "Plan", "plan", "gated_chunk", "gated_attention"]

#: g is clamped at this floor: exp(-128) = 2.6e-56 is 0 in float32 already, and a finite floor keeps
#: b_t - b_i exact where g = -inf would give -inf - (-inf) = NaN (its gradient below the floor is 0).
GATE_FLOOR = -128.0


# -- kernels ------------------------------------------------------------------------------------------------------
@triton.jit
def _chunk_gate(g_ptr, i_bh, i_c, T, C: tl.constexpr):
    """Local cumulative gate b [C] of chunk i_c (tokens past T read 0) and its total, b's minimum (<= every b)."""
    o_t = i_c * C + tl.arange(0, C)
    b_g = tl.load(g_ptr + i_bh * T + o_t, mask=o_t < T, other=0.0).to(tl.float32)
    b_b = tl.cumsum(b_g, axis=0)  # [C]
    return b_b, tl.min(b_b, axis=0)


@triton.jit
def _decay_tile(b_b, C: tl.constexpr):
    """exp(b_t - b_i) for i <= t, 0 above the diagonal (exp of -inf: nothing overflows there)."""
    o = tl.arange(0, C)
    causal = o[:, None] >= o[None, :]
    return tl.exp(tl.where(causal, b_b[:, None] - b_b[None, :], float("-inf")))  # [C, C]


# Addresses: an int64 base (i_bh is int64: bases pass 2**31) plus int32 tile offsets (F * DV < 2**31 is
# checked by plan). Block pointers are gone from Triton 3.9 and tensor descriptors need 16-byte row strides.
@triton.jit
def _rows_ptrs(ptr, i_bh, i_c, T, X, x0, C: tl.constexpr, BX: tl.constexpr):
    """Pointers and mask of rows [i_c C, (i_c + 1) C) and columns [x0, x0 + BX) of a [BH, T, X] tensor."""
    o_t, o_x = tl.arange(0, C), x0 + tl.arange(0, BX)
    p = ptr + (i_bh * T + i_c * C) * X + (o_t[:, None] * X + o_x[None, :])
    return p, ((i_c * C + o_t) < T)[:, None] & (o_x < X)[None, :]


@triton.jit
def _load_rows(ptr, i_bh, i_c, T, X, x0, C: tl.constexpr, BX: tl.constexpr):
    p, m = _rows_ptrs(ptr, i_bh, i_c, T, X, x0, C, BX)
    return tl.load(p, mask=m, other=0.0)  # [C, BX]


@triton.jit
def _store_rows(ptr, val, i_bh, i_c, T, X, x0, C: tl.constexpr, BX: tl.constexpr):
    p, m = _rows_ptrs(ptr, i_bh, i_c, T, X, x0, C, BX)
    tl.store(p, val.to(ptr.dtype.element_ty), mask=m)


@triton.jit
def _state_ptrs(ptr, i_bh, i_c, N, F, DV, f0, v0, BF: tl.constexpr, BV: tl.constexpr):
    """Pointers and mask of the [BF, BV] tile at (f0, v0) of state i_c in a [BH, N, F, DV] tensor."""
    o_f, o_v = f0 + tl.arange(0, BF), v0 + tl.arange(0, BV)
    p = ptr + (i_bh * N + i_c) * F * DV + (o_f[:, None] * DV + o_v[None, :])
    return p, (o_f < F)[:, None] & (o_v < DV)[None, :]


@triton.jit
def _load_state(ptr, i_bh, i_c, N, F, DV, f0, v0, BF: tl.constexpr, BV: tl.constexpr):
    p, m = _state_ptrs(ptr, i_bh, i_c, N, F, DV, f0, v0, BF, BV)
    return tl.load(p, mask=m, other=0.0)  # [BF, BV]


@triton.jit
def _store_state(ptr, val, i_bh, i_c, N, F, DV, f0, v0, BF: tl.constexpr, BV: tl.constexpr):
    p, m = _state_ptrs(ptr, i_bh, i_c, N, F, DV, f0, v0, BF, BV)
    tl.store(p, val.to(ptr.dtype.element_ty), mask=m)


@triton.jit
def _start_state(ptr, i_bh, F, DV, f0, v0, HAS: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr):
    """The fp32 [BF, BV] tile a state walk starts from: the given state's (HAS) or zeros."""
    if HAS:
        b = _load_state(ptr, i_bh, 0, 1, F, DV, f0, v0, BF, BV).to(tl.float32)
    else:
        b = tl.zeros([BF, BV], dtype=tl.float32)
    return b


def _fwd_states(psi_ptr, v_ptr, g_ptr, s0_ptr, h_ptr, sT_ptr, T, F, DV, N, HAS_S0: tl.constexpr,
                STORE_FINAL: tl.constexpr, C: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
                PRECISION: tl.constexpr):
    """The state before every chunk, h [BH, N, F, DV] in the inputs' dtype, and after the last, sT [BH, F, DV] fp32.

    psi [BH, T, F], v [BH, T, DV] (one dtype), g [BH, T] fp32, s0 [BH, F, DV] fp32 (HAS_S0).
    """
    i_f, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    f0, v0 = i_f * BF, i_v * BV
    b_s = _start_state(s0_ptr, i_bh, F, DV, f0, v0, HAS_S0, BF, BV)  # [BF, BV]
    for i_c in range(N):
        _store_state(h_ptr, b_s, i_bh, i_c, N, F, DV, f0, v0, BF, BV)
        b_psi = _load_rows(psi_ptr, i_bh, i_c, T, F, f0, C, BF)  # [C, BF]
        b_v = _load_rows(v_ptr, i_bh, i_c, T, DV, v0, C, BV)  # [C, BV]
        b_b, b_last = _chunk_gate(g_ptr, i_bh, i_c, T, C)
        b_k = (b_psi * tl.exp(b_last - b_b)[:, None]).to(b_v.dtype)  # [C, BF]
        b_s = b_s * tl.exp(b_last) + tl.dot(tl.trans(b_k), b_v, input_precision=PRECISION)  # [BF, BV]
    if STORE_FINAL:
        _store_state(sT_ptr, b_s, i_bh, 0, 1, F, DV, f0, v0, BF, BV)


def _fwd_output(phi_ptr, psi_ptr, v_ptr, g_ptr, h_ptr, o_ptr, T, F, DV, N, G, C: tl.constexpr, BF: tl.constexpr,
                BV: tl.constexpr, PRECISION: tl.constexpr):
    """o [BHq, T, DV] fp32 = exp(b) (phi h_{c-1}) + (phi psi^T * decay) v for one chunk, DV tile and query head.

    Query head i_bh reads key/value head i_bh // G (G query heads per group; psi, v, g, h are per key/value head).
    """
    i_v, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_kv = i_bh // G
    v0 = i_v * BV
    b_o = tl.zeros([C, BV], dtype=tl.float32)
    b_a = tl.zeros([C, C], dtype=tl.float32)
    for f0 in range(0, F, BF):
        b_phi = _load_rows(phi_ptr, i_bh, i_c, T, F, f0, C, BF)  # [C, BF]
        b_psi = _load_rows(psi_ptr, i_kv, i_c, T, F, f0, C, BF)  # [C, BF]
        b_h = _load_state(h_ptr, i_kv, i_c, N, F, DV, f0, v0, BF, BV).to(b_phi.dtype)  # [BF, BV]
        b_o += tl.dot(b_phi, b_h, input_precision=PRECISION)
        b_a += tl.dot(b_phi, tl.trans(b_psi), input_precision=PRECISION)  # [C, C]
    b_b, _ = _chunk_gate(g_ptr, i_kv, i_c, T, C)
    b_v = _load_rows(v_ptr, i_kv, i_c, T, DV, v0, C, BV)  # [C, BV]
    b_a = (b_a * _decay_tile(b_b, C)).to(b_v.dtype)
    b_o = b_o * tl.exp(b_b)[:, None] + tl.dot(b_a, b_v, input_precision=PRECISION)  # [C, BV]
    _store_rows(o_ptr, b_o, i_bh, i_c, T, DV, v0, C, BV)


def _bwd_dstates(phi_ptr, do_ptr, g_ptr, dsT_ptr, dh_ptr, ds0_ptr, T, F, DV, N, G, HAS_DST: tl.constexpr,
                 C: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """dh [BHkv, N, F, DV] (the inputs' dtype): the gradient of the state after every chunk (what its keys feed),
    and dS_0 [BHkv, F, DV] fp32 (the walk itself sums in fp32), summed over the G query heads of the group.

    phi [BHq, T, F], do [BHq, T, DV] (one dtype), g [BHkv, T] fp32, dsT [BHkv, F, DV] fp32 (HAS_DST).
    """
    i_f, i_v, i_kv = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    f0, v0 = i_f * BF, i_v * BV
    b_ds = _start_state(dsT_ptr, i_kv, F, DV, f0, v0, HAS_DST, BF, BV)  # [BF, BV]
    for j in range(N):
        i_c = N - 1 - j
        _store_state(dh_ptr, b_ds, i_kv, i_c, N, F, DV, f0, v0, BF, BV)
        b_b, b_last = _chunk_gate(g_ptr, i_kv, i_c, T, C)
        b_ds = b_ds * tl.exp(b_last)
        for i_g in range(G):
            b_phi = _load_rows(phi_ptr, i_kv * G + i_g, i_c, T, F, f0, C, BF)  # [C, BF]
            b_do = _load_rows(do_ptr, i_kv * G + i_g, i_c, T, DV, v0, C, BV)  # [C, BV]
            b_q = (b_phi * tl.exp(b_b)[:, None]).to(b_do.dtype)  # [C, BF]
            b_ds += tl.dot(tl.trans(b_q), b_do, input_precision=PRECISION)  # [BF, BV]
    _store_state(ds0_ptr, b_ds, i_kv, 0, 1, F, DV, f0, v0, BF, BV)


def _bwd_dv(phi_ptr, psi_ptr, do_ptr, g_ptr, dh_ptr, dv_ptr, T, F, DV, N, G, C: tl.constexpr, BF: tl.constexpr,
            BV: tl.constexpr, PRECISION: tl.constexpr):
    """dv [BHkv, T, DV] = exp(b_last - b) (psi dh_c) + sum over the group's query heads of (psi phi^T * decay^T) dO,
    for one chunk and DV tile."""
    i_v, i_c, i_kv = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    v0 = i_v * BV
    b_b, b_last = _chunk_gate(g_ptr, i_kv, i_c, T, C)
    b_dv = tl.zeros([C, BV], dtype=tl.float32)
    for f0 in range(0, F, BF):
        b_psi = _load_rows(psi_ptr, i_kv, i_c, T, F, f0, C, BF)  # [C, BF]
        b_dh = _load_state(dh_ptr, i_kv, i_c, N, F, DV, f0, v0, BF, BV).to(b_psi.dtype)  # [BF, BV]
        b_dv += tl.dot(b_psi, b_dh, input_precision=PRECISION)
    b_dv = b_dv * tl.exp(b_last - b_b)[:, None]
    b_dt = tl.trans(_decay_tile(b_b, C))  # [C, C]
    for i_g in range(G):
        b_at = tl.zeros([C, C], dtype=tl.float32)
        for f0 in range(0, F, BF):
            b_phi = _load_rows(phi_ptr, i_kv * G + i_g, i_c, T, F, f0, C, BF)  # [C, BF]
            b_psi = _load_rows(psi_ptr, i_kv, i_c, T, F, f0, C, BF)  # [C, BF]
            b_at += tl.dot(b_psi, tl.trans(b_phi), input_precision=PRECISION)  # [C, C]: psi_i . phi_t
        b_do = _load_rows(do_ptr, i_kv * G + i_g, i_c, T, DV, v0, C, BV)  # [C, BV]
        b_dv += tl.dot((b_at * b_dt).to(b_do.dtype), b_do, input_precision=PRECISION)
    _store_rows(dv_ptr, b_dv, i_kv, i_c, T, DV, v0, C, BV)


def _bwd_dfeat(phi_ptr, psi_ptr, v_ptr, do_ptr, g_ptr, h_ptr, dh_ptr, dphi_ptr, dpsi_ptr, dgate_ptr, T, F, DV, N,
               BHkv, G, C: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """dphi [BHq, T, F] of the group's query heads, dpsi [BHkv, T, F], for one chunk and F tile, and this tile's
    part of dL/db (per key/value head: its query heads' phi . dphi less psi . dpsi), dgate [NF, BHkv, T] fp32.

    dphi = exp(b) (dO h_{c-1}^T) + (dO v^T * decay) psi,
    dpsi = exp(b_last - b) (v dh_c^T) + sum over query heads of (dO v^T * decay)^T phi.
    """
    i_f, i_c, i_kv = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    f0 = i_f * BF
    b_b, b_last = _chunk_gate(g_ptr, i_kv, i_c, T, C)
    b_d = _decay_tile(b_b, C)  # [C, C]
    b_dpsi = tl.zeros([C, BF], dtype=tl.float32)
    for v0 in range(0, DV, BV):
        b_v = _load_rows(v_ptr, i_kv, i_c, T, DV, v0, C, BV)  # [C, BV]
        b_dh = _load_state(dh_ptr, i_kv, i_c, N, F, DV, f0, v0, BF, BV).to(b_v.dtype)  # [BF, BV]
        b_dpsi += tl.dot(b_v, tl.trans(b_dh), input_precision=PRECISION)  # [C, BF]
    b_dpsi = b_dpsi * tl.exp(b_last - b_b)[:, None]
    b_psi = _load_rows(psi_ptr, i_kv, i_c, T, F, f0, C, BF)  # [C, BF]
    b_dg = tl.zeros([C], dtype=tl.float32)
    for i_g in range(G):
        i_q = i_kv * G + i_g
        b_dphi = tl.zeros([C, BF], dtype=tl.float32)
        b_da = tl.zeros([C, C], dtype=tl.float32)
        for v0 in range(0, DV, BV):
            b_do = _load_rows(do_ptr, i_q, i_c, T, DV, v0, C, BV)  # [C, BV]
            b_v = _load_rows(v_ptr, i_kv, i_c, T, DV, v0, C, BV)  # [C, BV]
            b_h = _load_state(h_ptr, i_kv, i_c, N, F, DV, f0, v0, BF, BV).to(b_do.dtype)  # [BF, BV]
            b_dphi += tl.dot(b_do, tl.trans(b_h), input_precision=PRECISION)  # [C, BF]
            b_da += tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)  # [C, C]: dO_t . v_i
        b_phi = _load_rows(phi_ptr, i_q, i_c, T, F, f0, C, BF)  # [C, BF]
        b_da = (b_da * b_d).to(b_phi.dtype)
        b_dphi = b_dphi * tl.exp(b_b)[:, None] + tl.dot(b_da, b_psi, input_precision=PRECISION)
        b_dpsi += tl.dot(tl.trans(b_da), b_phi, input_precision=PRECISION)
        _store_rows(dphi_ptr, b_dphi, i_q, i_c, T, F, f0, C, BF)
        # from the fp32 values before they are rounded
        b_dg += tl.sum(b_phi.to(tl.float32) * b_dphi, axis=1)  # [C]
    _store_rows(dpsi_ptr, b_dpsi, i_kv, i_c, T, F, f0, C, BF)
    b_dg -= tl.sum(b_psi.to(tl.float32) * b_dpsi, axis=1)
    o_t = i_c * C + tl.arange(0, C)
    tl.store(dgate_ptr + (i_f * BHkv + i_kv) * T + o_t, b_dg, mask=o_t < T)


@triton.jit
def _state_gate(h_ptr, dh_ptr, sgate_ptr, N, S, BS: tl.constexpr):
    """sgate [BH, N - 1] fp32: <dS_c, S_c> = <dh[c], h[c + 1]> for each chunk c but the last, over the S = F DV
    entries of a state (h, dh [BH, N, F, DV], one dtype): the state after chunk c decays with its last local gate."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    p_dh = dh_ptr + (i_bh * N + i_c) * S
    p_h = h_ptr + (i_bh * N + i_c + 1) * S
    b_acc = tl.zeros([BS], dtype=tl.float32)
    for x0 in range(0, S, BS):
        o_x = x0 + tl.arange(0, BS)
        m_x = o_x < S
        b_acc += tl.load(p_dh + o_x, mask=m_x, other=0.0).to(tl.float32) * \
            tl.load(p_h + o_x, mask=m_x, other=0.0).to(tl.float32)
    tl.store(sgate_ptr + i_bh * (N - 1) + i_c, tl.sum(b_acc, axis=0))


# Two builds of the five chunk kernels. "hinted": Triton specialises F and DV on their values (a multiple of 16 makes
# the rows 16-byte aligned, and the F loops then load through pipelined cp.async); "plain": it does not, so every F
# runs one code. On an H200 (Triton 3.6) the hinted code was wrong at F = 2080 (o rel-RMS 0.25, 33 F tiles) and right
# at x d64 (one F tile, one DV tile); F = 153 (Based d16, 3 tiles) is no multiple of 16, ran the plain code, was right.
_CHUNK_KERNELS = (_fwd_states, _fwd_output, _bwd_dstates, _bwd_dv, _bwd_dfeat)
_HINTED = SimpleNamespace(**{f.__name__: triton.jit(f) for f in _CHUNK_KERNELS})
_PLAIN = SimpleNamespace(**{f.__name__: triton.jit(do_not_specialize=["F", "DV"])(f) for f in _CHUNK_KERNELS})


# -- host side ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """How the gated kernels are launched: chunk (tokens), feature and value tiles, dot precision, warps, and
    whether the hinted build runs (F, DV specialised; only where every F and DV loop has one tile)."""

    chunk: int
    block_f: int
    block_v: int
    precision: str
    num_warps: int
    hinted: bool

    @property
    def kernels(self):
        return _HINTED if self.hinted else _PLAIN


def _pow2(n: int) -> int:
    # tl.dot needs every tile side >= 16
    return max(16, triton.next_power_of_2(n))


def plan(features: int, head_dim_v: int, dtype: torch.dtype, chunk: int | None = None) -> Plan:
    """The launch of the gated kernels for F features and DV value columns (v's ones column included).

    >>> plan(2145, 65, torch.bfloat16)
    Plan(chunk=64, block_f=64, block_v=128, precision='tf32', num_warps=8, hinted=False)
    >>> plan(64, 64, torch.bfloat16).hinted
    True
    >>> plan(5, 4, torch.float32, chunk=16).block_f
    16
    """
    chunk = 64 if chunk is None else chunk
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 16 or chunk & (chunk - 1):
        raise KernelError(f"chunk={chunk!r}: the gated Triton kernels need a power of two >= 16 (tokens per chunk)")
    if features * max(head_dim_v, chunk) >= 2**31:
        raise KernelError(f"F={features} features x {head_dim_v} value columns: the gated kernels address one state "
                          "with int32 offsets; lower the degree or the head dim")
    # fp32 inputs keep fp32 accuracy through three tf32 passes, as the ungated kernels do
    precision = "tf32x3" if dtype == torch.float32 else "tf32"
    # one value tile up to 128 columns (DV 64 plus the normaliser's column): the passes that loop over F
    # rebuild the [C, C] score tile once per value tile. fp32 (tf32x3) tiles of 128 ask for 164-328 KB of
    # shared memory on sm_90, above its 227 KB: 64 there.
    block_v = min(64 if dtype == torch.float32 else 128, _pow2(head_dim_v))
    # sm_90 compile (benchmarks/gated_check.py --compile), bf16: BV 128 at 4 warps spills in every pass
    # (256 B - 1 KB), at 8 only in the two state walks (104, 152 B); BV 64 at 4 warps spills nowhere
    warps = 8 if block_v > 64 or dtype == torch.float32 else 4
    block_f = min(64, _pow2(features))
    return Plan(chunk=chunk, block_f=block_f, block_v=block_v, precision=precision, num_warps=warps,
                hinted=features <= block_f and head_dim_v <= block_v)


def _cdiv(a, b):
    return -(-a // b)


def _gated_fwd(phi, psi, v, g, s0, want_final, p):
    BHq, T, F = phi.shape
    BH, DV = psi.shape[0], v.shape[-1]
    N = _cdiv(T, p.chunk)
    common = dict(T=T, F=F, DV=DV, N=N, C=p.chunk, BF=p.block_f, BV=p.block_v, PRECISION=p.precision,
                  num_warps=p.num_warps)
    # the chunk states in the inputs' dtype: every reader rounds them to it for its dot anyway
    h = _empty((BH, N, F, DV), phi.device, phi.dtype)
    sT = _empty((BH, F, DV), phi.device, torch.float32) if want_final else h
    k = p.kernels
    k._fwd_states[(_cdiv(F, p.block_f), _cdiv(DV, p.block_v), BH)](
        psi_ptr=psi, v_ptr=v, g_ptr=g, s0_ptr=h if s0 is None else s0, h_ptr=h, sT_ptr=sT, HAS_S0=s0 is not None,
        STORE_FINAL=want_final, **common)
    o = _empty((BHq, T, DV), phi.device, torch.float32)
    k._fwd_output[(_cdiv(DV, p.block_v), N, BHq)](phi_ptr=phi, psi_ptr=psi, v_ptr=v, g_ptr=g, h_ptr=h, o_ptr=o,
                                                  G=BHq // BH, **common)
    return o, h, (sT if want_final else None)


def _gated_bwd(phi, psi, v, g, h, do, dsT, p):
    """dphi, dpsi, dv, dL/db [BH, T] fp32 and dS_0: db is the gradient of each token's chunk-local cumulative gate b,
    every term but the final state's (<dS_T, S_T> at the last token)."""
    BHq, T, F = phi.shape
    BH, DV = psi.shape[0], v.shape[-1]
    N = _cdiv(T, p.chunk)
    NF, NV = _cdiv(F, p.block_f), _cdiv(DV, p.block_v)
    common = dict(T=T, F=F, DV=DV, N=N, G=BHq // BH, C=p.chunk, BF=p.block_f, BV=p.block_v, PRECISION=p.precision,
                  num_warps=p.num_warps)
    k = p.kernels
    dh = _empty((BH, N, F, DV), phi.device, phi.dtype)
    ds0 = _empty((BH, F, DV), phi.device, torch.float32)
    k._bwd_dstates[(NF, NV, BH)](phi_ptr=phi, do_ptr=do, g_ptr=g, dsT_ptr=dh if dsT is None else dsT, dh_ptr=dh,
                                 ds0_ptr=ds0, HAS_DST=dsT is not None, **common)
    dv = _empty(v.shape, v.device, v.dtype)
    k._bwd_dv[(NV, N, BH)](phi_ptr=phi, psi_ptr=psi, do_ptr=do, g_ptr=g, dh_ptr=dh, dv_ptr=dv, **common)
    dphi, dpsi = _empty(phi.shape, phi.device, phi.dtype), _empty(psi.shape, psi.device, psi.dtype)
    dgate = _empty((NF, BH, T), phi.device, torch.float32)
    k._bwd_dfeat[(NF, N, BH)](phi_ptr=phi, psi_ptr=psi, v_ptr=v, do_ptr=do, g_ptr=g, h_ptr=h, dh_ptr=dh,
                              dphi_ptr=dphi, dpsi_ptr=dpsi, dgate_ptr=dgate, BHkv=BH, **common)
    db = dgate.sum(0)
    if N > 1:
        sgate = _empty((BH, N - 1), phi.device, torch.float32)
        _state_gate[(N - 1, BH)](h_ptr=h, dh_ptr=dh, sgate_ptr=sgate, N=N, S=F * DV, BS=1024, num_warps=4)
        # the state after chunk c < N - 1 (a full chunk) decays with b at the chunk's last token
        db[:, p.chunk - 1:(N - 1) * p.chunk:p.chunk] += sgate
    return dphi, dpsi, dv, db, ds0


def _chunk_reverse_cumsum(x, chunk):
    """dL/dg from dL/db: g_m enters b_t for t >= m in its own chunk, so dg_m = sum over those t, x [BH, T]."""
    BH, T = x.shape
    pad = _cdiv(T, chunk) * chunk - T
    y = torch.nn.functional.pad(x, (0, pad)).reshape(BH, -1, chunk)
    return y.flip(-1).cumsum(-1).flip(-1).reshape(BH, -1)[:, :T]


class _GatedChunk(torch.autograd.Function):
    """(phi, psi, v, g, s0) -> (o fp32, final state fp32 or None); the backward gives all five gradients."""

    @staticmethod
    def forward(ctx, phi, psi, v, g, s0, want_final, p):
        o, h, sT = _gated_fwd(phi, psi, v, g, s0, want_final, p)
        ctx.save_for_backward(phi, psi, v, g, h, sT)
        ctx.p, ctx.has_s0 = p, s0 is not None
        return o if sT is None else (o, sT)

    @staticmethod
    def backward(ctx, do, dsT=None):
        phi, psi, v, g, h, sT = ctx.saved_tensors
        do = do.to(phi.dtype).contiguous()
        dsT = None if dsT is None else dsT.float().contiguous()
        dphi, dpsi, dv, db, ds0 = _gated_bwd(phi, psi, v, g, h, do, dsT, ctx.p)
        if dsT is not None:
            # the final state decays with the last chunk's whole gate: dS_T / db_last = S_T
            db[:, -1] += (dsT * sT).sum((-1, -2))
        dg = _chunk_reverse_cumsum(db, ctx.p.chunk)
        return dphi, dpsi, dv, dg, (ds0 if ctx.has_s0 else None), None, None


def gated_chunk(phi, psi, v, g, initial_state=None, output_final_state=False, chunk=None):
    """o_t = sum_{i <= t} exp(G_t - G_i) (phi_t . psi_i) v_i + exp(G_t) phi_t . S_0, G = cumsum(g), on Triton.

    Parameters
    ----------
    phi : tensor [BH_q, T, F]
    psi : tensor [BH, T, F]
    v : tensor [BH, T, DV]
        One dtype (float32, float16; bfloat16 on a GPU), one device. BH_q a multiple of BH (grouped
        queries: row r of phi reads row r // (BH_q / BH) of psi, v, g and the state; with [B, H] rows
        that is query head h reading key/value head h // G).
    g : tensor [BH, T]
        Log forget gate <= 0 (not checked here); clamped at :data:`GATE_FLOOR`.
    initial_state : tensor [BH, F, DV], optional
        S_0, float32.
    output_final_state : bool
        Also return S_T = exp(G_T) S_0 + sum_i exp(G_T - G_i) psi_i v_i^T [BH, F, DV] float32.
    chunk : int, optional
        Tokens per chunk, a power of two >= 16 (default 64).

    Returns
    -------
    o : tensor [BH_q, T, DV] float32, and S_T with ``output_final_state``. Differentiable in phi,
    psi, v, g and the initial state.

    Examples
    --------
    >>> phi, psi = torch.rand(2, 1, 30, 6)
    >>> v = torch.randn(1, 30, 3)
    >>> o, S = gated_chunk(phi, psi, v, torch.zeros(1, 30), output_final_state=True)
    >>> bool(torch.allclose(S, psi[0].T @ v[0], atol=1e-5))
    True
    """
    BHq, T, F = phi.shape
    if BHq % psi.shape[0] or psi.shape != (psi.shape[0], T, F) or v.shape[:2] != psi.shape[:2] or \
            g.shape != psi.shape[:2]:
        raise KernelError(f"gated_chunk needs phi [BH_q, T, F], psi [BH, T, F], v [BH, T, DV], g [BH, T] with BH_q a "
                          f"multiple of BH; got phi {tuple(phi.shape)}, psi {tuple(psi.shape)}, v {tuple(v.shape)}, "
                          f"g {tuple(g.shape)}")
    p = plan(F, v.shape[-1], phi.dtype, chunk)
    g = g.float().clamp_min(GATE_FLOOR).contiguous()
    s0 = None if initial_state is None else initial_state.float().contiguous()
    out = _GatedChunk.apply(phi.contiguous(), psi.contiguous(), v.contiguous(), g, s0, output_final_state, p)
    return out if output_final_state else (out, None)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def gated_attention(q, k, v, g, poly, *, scale, normalize=True, normalizer_fix=None, eps=1e-6, chunk=None,
                    tables=None, initial_state=None, output_final_state=False, check_output=None):
    """Causal gated polynomial attention on the gated Triton kernels (what ``fast_attention`` routes g to).

    Parameters
    ----------
    q : tensor [B, H_q, T, D]
    k : tensor [B, H, T, D]
    v : tensor [B, H, T, DV]
        float32 or float16 (bfloat16 on a GPU: the interpreter's bf16 dot is wrong). H_q a multiple
        of H: query head h reads key/value head h // (H_q / H), with no copy of K, V or the state.
    g : tensor [B, H, T]
        Log forget gate <= 0 per key/value head (checked by the caller).
    poly : Polynomial
    scale : float
    normalize, normalizer_fix, eps
        As in :func:`fastattn.kernels.poly.poly_attention` (``normalizer_fix`` already resolved by
        :func:`~fastattn.kernels.poly.check_normalizer`); the denominator is
        :func:`~fastattn.kernels.naive.guarded_denominator`, as on the torch path.
    chunk : int, optional
        A power of two >= 16 (default 64).
    tables : tuple, optional
        :func:`fastattn.kernels.naive.symmetric_tables` of (poly, D, scale).
    initial_state : (S [B, H, F, DV], z [B, H, F]), optional
    output_final_state : bool
    check_output : bool or None
        With ``normalize``: :func:`~fastattn.kernels.naive.check_normalized` (one host sync); None
        checks on the CPU, and on CUDA under ``torch.autograd.detect_anomaly()``.

    Returns
    -------
    (o [B, H_q, T, DV] in q's dtype, (S [B, H, F, DV], z [B, H, F]) float32 or None)
    """
    B, Hq, T, D = q.shape
    H, DV = k.shape[1], v.shape[-1]
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise KernelError(f"the gated Triton kernels take float32, float16 or bfloat16; got {q.dtype} (float64 "
                          "runs on the torch path: backend='torch')")
    if q.dtype == torch.bfloat16 and _interpreting() and not q.is_cuda:
        raise KernelError("bfloat16 under TRITON_INTERPRET=1 is refused: the interpreter's bf16 dot gives wrong "
                          "results; use float32 or float16 on the CPU, bfloat16 on a GPU")
    tables = naive.symmetric_tables(poly, D, scale) if tables is None else tables
    F = tables[0].shape[1]
    with_z = normalize or initial_state is not None or output_final_state
    if T == 0:
        o = naive.empty_output(q, k, v)
        if initial_state is not None:
            final = initial_state
        else:
            final = (q.new_zeros(B, H, F, DV, dtype=torch.float32), q.new_zeros(B, H, F, dtype=torch.float32))
        return o, (final if output_final_state else None)
    plan(F, DV + with_z, q.dtype, chunk)  # refuses a bad chunk before any work
    # f = c x (gated linear attention): phi = sign(c s) sqrt|c s| q, psi = sqrt|c s| k, so the kernels take q and k
    # as they are and the factors go on the outputs and states: no feature pass, no fp32 round trip
    c = dict(poly.coeffs)
    linear = set(c) == {1} and c[1] * scale != 0
    if linear:
        out_scale, psi_w = c[1] * scale, abs(c[1] * scale) ** 0.5
        phi, psi = q.reshape(B * Hq, T, D), k.reshape(B * H, T, D)
    else:
        # features in fp32, rounded once to the input dtype the kernels read
        phi = naive.symmetric_features(q.float(), poly, scale, "phi", tables).to(q.dtype).reshape(B * Hq, T, F)
        psi = naive.symmetric_features(k.float(), poly, scale, "psi", tables).to(q.dtype).reshape(B * H, T, F)
    vv = v.reshape(B * H, T, DV)
    if with_z:
        # z is the same sum with v = 1: one more value column
        vv = torch.cat([vv, torch.ones_like(vv[..., :1])], -1)
    s0 = None
    if initial_state is not None:
        S, z = initial_state
        s0 = torch.cat([S.float(), z.float()[..., None]], -1).reshape(B * H, F, DV + 1)
        s0 = s0 / psi_w if linear else s0
    out, sT = gated_chunk(phi, psi, vv, g.reshape(B * H, T), s0, output_final_state, chunk)
    out = out.reshape(B, Hq, T, -1)
    if linear:
        out = out * out_scale
    final = None
    if output_final_state:
        sT = sT.reshape(B, H, F, DV + 1) * (psi_w if linear else 1.0)
        # contiguous copies: a consumer may assume a unit feature stride on z (the decoding kernel does)
        final = (sT[..., :DV].contiguous(), sT[..., DV].contiguous())
    n = out[..., :DV]
    if not normalize:
        return n.to(q.dtype), final
    z = out[..., DV]
    o = (n / naive.guarded_denominator(z, normalizer_fix, eps)[..., None]).to(q.dtype)
    if check_output is True or (check_output is None and (not q.is_cuda or torch.is_anomaly_enabled())):
        naive.check_normalized(o, z, normalizer_fix, q, k, v)
    return o, final
