"""Static sparse attention patterns: local, dilated, strided, blocked and global tokens, united with ``|``.

A pattern says which (query i, key j) pairs may attend; causality (j <= i) is applied on top by the caller.
With d = |i - j|:

=========================  ====================================================
``local(window)``          d < window
``dilated(window, r)``     d < window * r and d % r == 0 (window keys each side, r apart)
``strided(stride)``        d % stride == 0
``blocked(block)``         i // block == j // block
``global_tokens(n)``       i < n or j < n (the first n tokens see and are seen by all)
=========================  ====================================================

``p | q`` allows a pair when either does. :meth:`Pattern.compile` turns a pattern into a
:class:`BlockPlan` once per (T, block, is_causal, device): for each query block the key blocks to visit and
whether each needs an element mask (a block whose pairs are all allowed needs none), the list the
kernels of :func:`fastattn.attention.pattern_attention` walk. It is decided per block pair from the
primitives' structure (offset intervals, cells cut at global and blocked boundaries) on the device, with
no host sync, and cached. :meth:`Pattern.dense` is the T x T bool mask, for tests.

>>> p = local(4) | global_tokens(2)
>>> plan = p.compile(100, block=16)
>>> plan.visited, plan.full      # of the 7 * 7 block pairs (28 on or below the diagonal)
(18, 0)
>>> bool((plan.covered() == p.dense(100)).all())
True
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from fastattn.errors import KernelError

__all__ = ["Pattern", "Local", "Dilated", "Strided", "Blocked", "GlobalTokens", "Union", "BlockPlan", "local",
           "dilated", "strided", "blocked", "global_tokens"]


def _positive(name, value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KernelError(f"{name}={value!r} must be an int >= 1 ({what})")
    return value


class Pattern:
    """Base of the patterns: a union of primitives, each with a ``kind`` and two int parameters (a, b)."""

    kind: int = -1

    def parts(self) -> tuple:
        return (self,)

    def params(self) -> tuple[int, int]:
        raise NotImplementedError

    def by_offset(self, ad):
        """Bool tensor like ``ad``: the pairs allowed at |i - j| = ad, for a primitive that depends on the offset
        alone; None for the others (blocked sizes above 1, global tokens)."""
        return None

    def allows(self, i, j):
        """Bool tensor: does the pattern allow query positions ``i`` with key positions ``j`` (broadcast)?"""
        out = None
        for p in self.parts():
            hit = p._allows(i, j)
            out = hit if out is None else out | hit
        return out

    def __or__(self, other):
        if not isinstance(other, Pattern):
            return NotImplemented
        parts = tuple(dict.fromkeys(self.parts() + other.parts()))
        return parts[0] if len(parts) == 1 else Union(parts)

    def dense(self, T, *, is_causal=True, device=None):
        """The T x T bool mask of allowed pairs (quadratic: for tests and small T)."""
        i = torch.arange(T, device=device)
        ok = self.allows(i[:, None], i[None, :])
        return ok & (i[None, :] <= i[:, None]) if is_causal else ok

    def table(self, device=None):
        """int32 [N, 3]: rows (kind, a, b), the form the kernels read, on ``device`` (filled there: no copy from
        the host, which would wait for the GPU)."""
        rows = [(p.kind, *p.params()) for p in self.parts()]
        out = torch.zeros(len(rows), 3, dtype=torch.int32, device=device)
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                out[r, c] = value
        return out

    def compile(self, T, *, block=64, block_k=None, is_causal=True, device=None):
        """The :class:`BlockPlan` of this pattern for sequences of T tokens in query blocks of ``block`` and key
        blocks of ``block_k`` (default ``block``), built on ``device`` (the CPU by default) from the primitives'
        structure, O(T + NQ NK) torch work and no host sync, and cached per (pattern, T, blocks, is_causal,
        device)."""
        _positive("T", T, "tokens")
        _positive("block", block, "tokens per block")
        block_k = block if block_k is None else _positive("block_k", block_k, "tokens per key block")
        return _compile(self, T, block, block_k, bool(is_causal), str(torch.device(device or "cpu")))


@dataclass(frozen=True)
class Local(Pattern):
    window: int
    kind = 0

    def params(self):
        return self.window, 1

    def _allows(self, i, j):
        return self.by_offset((i - j).abs())

    def by_offset(self, ad):
        return ad < self.window


@dataclass(frozen=True)
class Dilated(Pattern):
    window: int
    dilation: int
    kind = 1

    def params(self):
        return self.window, self.dilation

    def _allows(self, i, j):
        return self.by_offset((i - j).abs())

    def by_offset(self, ad):
        return (ad < self.window * self.dilation) & (ad % self.dilation == 0)


@dataclass(frozen=True)
class Strided(Pattern):
    stride: int
    kind = 2

    def params(self):
        return self.stride, 1

    def _allows(self, i, j):
        return self.by_offset((i - j).abs())

    def by_offset(self, ad):
        return ad % self.stride == 0


@dataclass(frozen=True)
class Blocked(Pattern):
    block: int
    kind = 3

    def params(self):
        return self.block, 1

    def _allows(self, i, j):
        return i // self.block == j // self.block

    def by_offset(self, ad):
        # blocks of one token are the diagonal; larger ones depend on where the pair sits
        return ad == 0 if self.block == 1 else None


@dataclass(frozen=True)
class GlobalTokens(Pattern):
    n: int
    kind = 4

    def params(self):
        return self.n, 1

    def _allows(self, i, j):
        return (i < self.n) | (j < self.n)


@dataclass(frozen=True)
class Union(Pattern):
    members: tuple

    def parts(self):
        return self.members


def local(window):
    """Keys within ``window`` positions: |i - j| < window (window=1 is the diagonal only)."""
    return Local(_positive("window", window, "keys with |i - j| < window"))


def dilated(window, dilation):
    """``window`` keys each side, ``dilation`` apart: |i - j| = m * dilation for 0 <= m < window."""
    return Dilated(_positive("window", window, "keys each side"), _positive("dilation", dilation, "spacing"))


def strided(stride):
    """Every ``stride``-th key, counted from the query: |i - j| % stride == 0."""
    return Strided(_positive("stride", stride, "spacing of the attended keys"))


def blocked(block):
    """Attention inside aligned blocks of ``block`` tokens: i // block == j // block."""
    return Blocked(_positive("block", block, "tokens per attention block"))


def global_tokens(n):
    """The first ``n`` tokens attend to all and are attended by all."""
    return GlobalTokens(_positive("n", n, "global tokens"))


@dataclass(frozen=True, eq=False)
class BlockPlan:
    """A pattern compiled for T tokens in blocks of ``block``.

    state : int8 [NQ, NK] per (query block, key block), on the device it was compiled for: 0 skip, 1 visit with
        the element mask, 2 visit, every pair allowed (bounds aside). visited / full count the blocks with
        state >= 1 / == 2 (reading them back to the host: for inspection, not the call path).
    """

    pattern: Pattern
    T: int
    block: int
    is_causal: bool
    state: torch.Tensor
    block_k: int | None = None  # key block size where it differs from ``block``

    @property
    def visited(self):
        return int((self.state > 0).sum())

    @property
    def full(self):
        return int((self.state == 2).sum())

    def covered(self):
        """The T x T bool mask the kernel computes from the list: full blocks whole, masked ones through the
        pattern's element mask (compare with :meth:`Pattern.dense`)."""
        pos = torch.arange(self.T)
        blocks = self.state.cpu()[pos // self.block][:, pos // (self.block_k or self.block)]  # [T, T] pair -> block
        exact = self.pattern.dense(self.T, is_causal=self.is_causal)
        return (blocks == 2) | ((blocks == 1) & exact)

    def schedule(self, device, *, warps=4):
        """The kernels' list-mode schedule on ``device``, launched with ``warps`` per program (cached)."""
        return _schedule(self, str(torch.device(device)), warps)


def _states_by_pairs(pattern, T, block, is_causal, device="cpu", block_k=None):
    """int8 [NQ, NK] block states from every (i, j) pair, a band of query blocks at a time: O(T^2) work.

    The reference :func:`_block_states` is tested against; it loops over bands and reads nothing back.
    """
    block_k = block_k or block
    NQ, NB = -(-T // block), -(-T // block_k)
    step = block * max(1, (1 << 22) // (block * NB * block_k))
    j = torch.arange(NB * block_k, device=device)
    inside = j < T
    state = torch.zeros(NQ, NB, dtype=torch.int8, device=device)
    for a in range(0, NQ * block, step):
        i = torch.arange(a, min(a + step, NQ * block), device=device)[:, None]
        ok = pattern.allows(i, j[None, :]) & inside[None, :] & (i < T)  # [rows, NB * block_k]
        if is_causal:
            ok = ok & (j[None, :] <= i)
        # a pair out of bounds never needs the element mask (the kernels bound-check every tile)
        out = ~inside[None, :] | (i >= T)
        rows = len(i) // block
        any_ = ok.view(rows, block, NB, block_k).any(3).any(1)
        all_ = (ok | out).view(rows, block, NB, block_k).all(3).all(1)
        state[a // block:a // block + rows] = torch.where(all_, 2, torch.where(any_, 1, 0)).to(torch.int8)
    return state


def _diagonal_hits(parts, T, is_causal, device):
    """prefix [2T] int64: prefix[e] = how many offsets d = i - j in [-(T-1), -(T-1) + e) the union of the
    primitives that depend on d alone (local, dilated, strided, blocked(1)) allows, causality included."""
    d = torch.arange(-(T - 1), T, device=device)
    ad = d.abs()
    hit = torch.zeros_like(d, dtype=torch.bool)
    for p in parts:
        h = p.by_offset(ad)
        if h is not None:
            hit |= h
    if is_causal:
        hit &= d >= 0
    prefix = torch.zeros(2 * T, dtype=torch.int64, device=device)
    prefix[1:] = hit.long().cumsum(0)
    return prefix


def _count(prefix, T, lo, hi):
    """How many offsets in [lo, hi] (elementwise; lo <= hi + 1, both in [-(T-1), T-1] or an empty range) hit."""
    lo = lo.clamp(-(T - 1), T)
    hi = hi.clamp(-T, T - 1)
    return torch.where(hi >= lo, prefix[(hi + T).clamp(0, 2 * T - 1)] - prefix[(lo + T - 1).clamp(0, 2 * T - 1)], 0)


def _cuts(lo, hi, n, sizes, block):
    """[NB, M + 1] sorted cut points of each block [lo, hi]: lo, hi + 1, the global bound n and every multiple
    of a blocked size inside; consecutive cuts bound the block's cells, inside which "i < n" and i // a hold
    one value each (cells may be empty)."""
    parts = [lo[:, None], (hi + 1)[:, None], torch.where((lo < n) & (n <= hi), n, hi + 1)[:, None]]
    for a in sizes:
        m = (lo // a + 1)[:, None] * a + a * torch.arange(block // a + 1, device=lo.device)[None, :]
        parts.append(torch.where(m <= hi[:, None], m, (hi + 1)[:, None]))
    return torch.cat(parts, 1).sort(1).values


def _block_states(pattern, T, block, is_causal, device, block_k=None):
    """int8 [NQ, NK] block states on ``device`` from the primitives' structure, with torch ops and no host sync.

    A block pair is the rectangle i in [qlo, qhi], j in [klo, khi] (clipped to T); its offsets d = i - j fill the
    interval [qlo - khi, qhi - klo]. The d-only primitives are a hit vector over d (one prefix sum answers "any
    offset of an interval" and "every offset"); global tokens allow the rows i < n and columns j < n; blocked(a)
    the pairs with i // a == j // a. Visited (any allowed pair) is the union of per-primitive tests. Full (every
    in-bounds pair allowed) splits the rectangle at n and at the multiples of each blocked size into cells, in
    each of which the global and blocked tests are constant, and asks every cell to be allowed by one of them or
    by every offset of its interval. Cost O(T) for the hit vector plus O(NQ NK M^2) for M cells per block side
    (M = 2 without blocked primitives), in bands of query blocks that keep about 2^24 cells.
    """
    parts = pattern.parts()
    block_k = block_k or block
    NQ, NK = -(-T // block), -(-T // block_k)
    n = max([p.n for p in parts if isinstance(p, GlobalTokens)], default=0)
    sizes = sorted({p.block for p in parts if isinstance(p, Blocked) and p.block > 1})
    prefix = _diagonal_hits(parts, T, is_causal, device)

    def cells(nb, size):
        lo = torch.arange(nb, device=device) * size
        hi = (lo + size - 1).clamp(max=T - 1)
        cuts = _cuts(lo, hi, n, sizes, size)  # [nb, M + 1]
        return lo, hi, cuts[:, :-1], cuts[:, 1:] - 1  # cells [nb, M], empty where c_hi < c_lo

    lo, hi, c_lo, c_hi = cells(NQ, block)
    k_lo, k_hi, kc_lo, kc_hi = cells(NK, block_k)
    M, MK = c_lo.shape[1], kc_lo.shape[1]
    # keys: every block at once; queries: bands of rows
    k_lo, k_hi = k_lo[None, :], k_hi[None, :]
    kc_lo, kc_hi = kc_lo[:, None, :][None], kc_hi[:, None, :][None]  # [1, NK, 1, MK]
    rows = max(1, (1 << 24) // (NK * M * MK))
    state = torch.empty(NQ, NK, dtype=torch.int8, device=device)
    for r0 in range(0, NQ, rows):
        q_lo, q_hi = lo[r0:r0 + rows, None], hi[r0:r0 + rows, None]  # [R, 1]
        visit = _count(prefix, T, q_lo - k_hi, q_hi - k_lo) > 0
        for a in sizes:
            meet = (torch.maximum(q_lo // a, k_lo // a) <= torch.minimum(q_hi // a, k_hi // a))
            visit |= meet & (k_lo <= q_hi) if is_causal else meet
        if n:
            visit |= (q_lo < n) & (k_lo <= q_hi.clamp(max=n - 1)) if is_causal else q_lo < n
            visit |= (k_lo < n) & (k_lo <= q_hi) if is_causal else k_lo < n
        qc_lo, qc_hi = c_lo[r0:r0 + rows, None, :, None], c_hi[r0:r0 + rows, None, :, None]  # [R, 1, M, 1]
        dl, dh = qc_lo - kc_hi, qc_hi - kc_lo  # [R, NK, M, MK]
        ok = (qc_hi < qc_lo) | (kc_hi < kc_lo) | (qc_lo < n) | (kc_lo < n)
        for a in sizes:
            ok |= qc_lo // a == kc_lo // a
        ok |= _count(prefix, T, dl, dh) == dh - dl + 1
        full = ok.flatten(2).all(2) & visit
        if is_causal:
            full &= k_hi <= q_lo
        state[r0:r0 + rows] = torch.where(full, 2, torch.where(visit, 1, 0)).to(torch.int8)
    return state


@functools.lru_cache(maxsize=64)
def _compile(pattern, T, block, block_k, is_causal, device):
    # built on the inputs' device with no host sync; kept there, so a training loop pays it once per shape
    state = _block_states(pattern, T, block, is_causal, device, block_k=block_k)
    return BlockPlan(pattern, T, block, is_causal, state, None if block_k == block else block_k)


@functools.lru_cache(maxsize=64)
def _schedule(plan, device, warps):
    from fastattn.kernels.sparse.schedule import list_schedule

    return list_schedule(plan.T, plan.block, plan.state, plan.pattern.table(device), warps=warps, device=device,
                         block_k=plan.block_k)
