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
:class:`BlockPlan` once per (T, block, is_causal): for each query block the key blocks to visit and
whether each needs an element mask (a block whose pairs are all allowed needs none), the list the
kernels of :func:`fastattn.attention.pattern_attention` walk. :meth:`Pattern.dense` is the T x T
bool mask, for tests.

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

    def table(self):
        """int32 [N, 3]: rows (kind, a, b), the form the kernels read."""
        return torch.tensor([(p.kind, *p.params()) for p in self.parts()], dtype=torch.int32)

    def compile(self, T, *, block=64, is_causal=True, device=None):
        """The :class:`BlockPlan` of this pattern for sequences of T tokens in blocks of ``block`` (cached; the
        O(T^2) elementwise evaluation runs on ``device``, the CPU by default)."""
        _positive("T", T, "tokens")
        _positive("block", block, "tokens per block")
        return _compile(self, T, block, bool(is_causal), str(torch.device(device or "cpu")))


@dataclass(frozen=True)
class Local(Pattern):
    window: int
    kind = 0

    def params(self):
        return self.window, 1

    def _allows(self, i, j):
        return (i - j).abs() < self.window


@dataclass(frozen=True)
class Dilated(Pattern):
    window: int
    dilation: int
    kind = 1

    def params(self):
        return self.window, self.dilation

    def _allows(self, i, j):
        d = (i - j).abs()
        return (d < self.window * self.dilation) & (d % self.dilation == 0)


@dataclass(frozen=True)
class Strided(Pattern):
    stride: int
    kind = 2

    def params(self):
        return self.stride, 1

    def _allows(self, i, j):
        return (i - j).abs() % self.stride == 0


@dataclass(frozen=True)
class Blocked(Pattern):
    block: int
    kind = 3

    def params(self):
        return self.block, 1

    def _allows(self, i, j):
        return i // self.block == j // self.block


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

    state : int8 [NB, NB] per (query block, key block): 0 skip, 1 visit with the element mask, 2 visit,
        every pair allowed (bounds aside). visited / full count the blocks with state >= 1 / == 2.
    """

    pattern: Pattern
    T: int
    block: int
    is_causal: bool
    state: torch.Tensor

    @property
    def visited(self):
        return int((self.state > 0).sum())

    @property
    def full(self):
        return int((self.state == 2).sum())

    def covered(self):
        """The T x T bool mask the kernel computes from the list: full blocks whole, masked ones through the
        pattern's element mask (compare with :meth:`Pattern.dense`)."""
        which = torch.arange(self.T) // self.block
        blocks = self.state[which][:, which]  # [T, T] the state of each pair's block
        exact = self.pattern.dense(self.T, is_causal=self.is_causal)
        return (blocks == 2) | ((blocks == 1) & exact)

    def schedule(self, device, *, warps=4):
        """The kernels' list-mode schedule on ``device``, launched with ``warps`` per program (cached)."""
        return _schedule(self, str(torch.device(device)), warps)


@functools.lru_cache(maxsize=64)
def _compile(pattern, T, block, is_causal, device):
    # a band of query blocks at a time (about 2^22 pairs): O(2^22) memory, O(T^2) elementwise work once per
    # (pattern, T, block, is_causal); on a GPU that is milliseconds even at T = 64K
    NB = -(-T // block)
    step = block * max(1, (1 << 22) // (block * NB * block))
    j = torch.arange(NB * block, device=device)
    inside = j < T
    state = torch.zeros(NB, NB, dtype=torch.int8, device=device)
    for a in range(0, NB * block, step):
        i = torch.arange(a, min(a + step, NB * block), device=device)[:, None]
        ok = pattern.allows(i, j[None, :]) & inside[None, :] & (i < T)  # [rows, NB * block]
        if is_causal:
            ok = ok & (j[None, :] <= i)
        # a pair out of bounds never needs the element mask (the kernels bound-check every tile)
        out = ~inside[None, :] | (i >= T)
        rows = len(i) // block
        any_ = ok.view(rows, block, NB, block).any(3).any(1)
        all_ = (ok | out).view(rows, block, NB, block).all(3).all(1)
        state[a // block:a // block + rows] = torch.where(all_, 2, torch.where(any_, 1, 0)).to(torch.int8)
    return BlockPlan(pattern, T, block, is_causal, state.cpu())


@functools.lru_cache(maxsize=64)
def _schedule(plan, device, warps):
    from fastattn.kernels.sparse.schedule import list_schedule

    return list_schedule(plan.T, plan.block, plan.state, plan.pattern.table(), warps=warps, device=device)
