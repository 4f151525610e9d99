"""Read-mostly decoding in torch ops: the reference of the kernels in :mod:`fastattn.kernels.read_mostly`.

A :class:`~fastattn.attention.state.ReadMostlyState` holds the float32 master S, z up to the last fold, a read copy
S_read of S, and the n < R pending tokens (k_j, v_j, g_j) since. With the current token's log gate g and
G_j = g + sum_{i > j} g_i (a masked sum: a reset g = -inf gives -inf, never -inf - (-inf)),

    S_t = exp(g + sum_j g_j) S + sum_j exp(G_j) psi(k_j) v_j^T + psi(k) v^T

which is the ordinary step S_t = exp(g_t) S_{t-1} + psi(k_t) v_t^T unrolled. A step reads S_read for the first
term and takes the others as scores, phi(q).psi(k_j) = f(s q.k_j); the R-th token folds all of it into S, z.
Here phi and psi are built from the decoding tables (no Horner's rule), so the kernels' score route is checked
against the feature route. Computed in the master's dtype (float32, float64 for float64 states).

>>> import torch
>>> from fastattn.attention.state import init_state
>>> from fastattn.kernels.decode import decode_tables
>>> from fastattn.kernels.naive import symmetric_tables
>>> tables = decode_tables(*symmetric_tables({0: 1.0, 1: 1.0}, 2, 1.0), device="cpu")
>>> st = init_state(1, 1, 3, 2, pending=2, head_dim=2, tables=tables)
>>> x = torch.ones(1, 1, 1, 2)
>>> o, zq = read_mostly_step(x, x, x, st, tables)
>>> o.flatten().tolist(), st.pending, zq.flatten().tolist()
([1.0, 1.0], 1, [3.0])
"""

from __future__ import annotations

import torch

from fastattn.kernels.naive import guarded_denominator

__all__ = ["features", "read_mostly_step", "fold_pending"]


def features(x: torch.Tensor, tables: tuple, side: str = "psi", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """phi(x) (``side="phi"``) or psi(x) [..., F] from the decoding tables (idx [SLOTS, F], w_phi, w_psi), in ``dtype``.

    >>> from fastattn.kernels.naive import symmetric_tables
    >>> t = symmetric_tables({0: 1.0, 2: 0.5}, 2, 1.0)
    >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> round(float(features(x, t, "phi", torch.float64) @ features(x, t, "psi", torch.float64)), 12)  # 1 + 5**2 / 2
    13.5
    """
    idx, w_phi, w_psi = tables
    w = (w_phi if side == "phi" else w_psi).to(device=x.device, dtype=dtype)
    x = x.to(dtype)
    xe = torch.cat([x, x.new_ones(x.shape[:-1] + (1,))], -1)  # index D reads as 1: "no factor"
    y = w.expand(x.shape[:-1] + w.shape).clone()
    for m in range(idx.shape[0]):
        y = y * xe[..., idx[m].to(device=x.device, dtype=torch.long)]
    return y


def _log_weights(gr: torch.Tensor, gc: torch.Tensor):
    # (G_j [B, H, n], the total log decay [B, H]) for ring gates gr [B, H, n] and current gates gc [B, H]
    n = gr.shape[-1]
    later = torch.ones(n, n, dtype=torch.bool, device=gr.device).triu(1)  # later[j, i]: i > j
    lw = gc[..., None] + torch.where(later, gr[..., None, :], torch.zeros_like(gr[..., None, :])).sum(-1)
    return lw, gc + gr.sum(-1)


def _fold(state, tables, k=None, v=None, gc=None):
    # the ring (and the current token k, v [B, H, D] with gate gc [B, H]) into the master; S_read rewritten
    n, wd = state.pending, state.S.dtype
    B, H = state.S.shape[:2]
    if gc is None:
        gc = torch.zeros(B, H, device=state.S.device, dtype=wd)
    lw, lg = _log_weights(state.g[..., :n].to(wd), gc.to(wd))
    decay = lg.exp()[..., None]
    S = decay[..., None] * state.S
    z = decay * state.z
    if n:
        psi = features(state.k[:, :, :n], tables, "psi", wd) * lw.exp()[..., None]  # [B, H, n, F]
        S = S + psi.transpose(-1, -2) @ state.v[:, :, :n].to(wd)
        z = z + psi.sum(-2)
    if k is not None:
        psi = features(k, tables, "psi", wd)  # [B, H, F]
        S = S + psi[..., None] * v.to(wd)[..., None, :]
        z = z + psi
    state.S.copy_(S)
    state.z.copy_(z)
    state.S_read.copy_(S)
    state.pending = 0


def fold_pending(state, tables: tuple) -> None:
    """Fold the pending tokens of ``state`` into its master (in place) and rewrite its read copy; pending becomes 0."""
    with torch.no_grad():
        _fold(state, tables)


def read_mostly_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state, tables: tuple, *,
                     g: torch.Tensor | None = None, normalize: bool = True, normalizer_fix: str | None = None,
                     eps: float = 1e-6):
    """One read-mostly step in torch ops: returns (o [B, H_q, 1, DV] in q's dtype, zq [B, H_q]); updates ``state``.

    q [B, H_q, 1, D], k [B, H_kv, 1, D], v [B, H_kv, 1, DV], g [B, H_kv, 1] or [B, H_kv] (optional). The token
    enters the ring, or, as the R-th, folds with it into the master; ``state.tokens`` grows by one.
    """
    B, Hq = q.shape[:2]
    Hk = k.shape[1]
    G, n, wd = Hq // Hk, state.pending, state.S.dtype
    with torch.no_grad():
        k1, v1 = k[:, :, 0], v[:, :, 0]
        gc = torch.zeros(B, Hk, device=q.device, dtype=wd) if g is None else g.reshape(B, Hk).to(wd)
        phi = features(q[:, :, 0], tables, "phi", wd).reshape(B, Hk, G, -1)  # [B, Hk, G, F]
        if n == state.k.shape[2]:
            _fold(state, tables, k1, v1, gc)
            num, zq = phi @ state.S, phi @ state.z[..., None]
        else:
            lw, lg = _log_weights(state.g[..., :n].to(wd), gc)
            decay = lg.exp()[..., None, None]
            num, zq = decay * (phi @ state.S_read.to(wd)), decay * (phi @ state.z[..., None])
            # pending and current tokens as scores: [B, Hk, G, n + 1]
            keys = torch.cat([state.k[:, :, :n].to(wd), k1[:, :, None].to(wd)], 2)
            vals = torch.cat([state.v[:, :, :n].to(wd), v1[:, :, None].to(wd)], 2)
            w = torch.cat([lw, lw.new_zeros(lw.shape[:-1] + (1,))], -1).exp()
            p = (phi @ features(keys, tables, "psi", wd).transpose(-1, -2)) * w[:, :, None, :]
            num, zq = num + p @ vals, zq + p.sum(-1, keepdim=True)
            state.k[:, :, n] = k1
            state.v[:, :, n] = v1
            state.g[:, :, n] = gc
            state.pending = n + 1
        state.tokens += 1
        o = num / guarded_denominator(zq, normalizer_fix, eps) if normalize else num
    return o.reshape(B, Hq, 1, -1).to(q.dtype), zq.reshape(B, Hq).to(torch.float32)
