"""Packed variable-length batches (``cu_seqlens``) on kernels that take a plain batch.

fla and FlashAttention pack N sequences into one row of length T with int offsets cu_seqlens[0 .. N]; no
token may see another sequence. The Triton kernels take [B, H, T, D] batches, so a packed call becomes:

* causal, no final state: the sequences are scattered into a zero-padded batch [N, H, L, D] (L the longest),
  one batched call runs, and the real rows are gathered back. Right padding is invisible to a causal real
  token (a padded key lies after every real one), so nothing needs masking; gradients flow through the
  scatter and gather. Taken when the padded batch is at most ``PAD_LIMIT`` times the packed one.
* otherwise (non-causal: padded keys would be seen; a final state: padded keys would enter its normaliser sum;
  very uneven lengths): one call per sequence, outputs concatenated, states stacked.

>>> import torch
>>> calls = []
>>> def run(q, k, v, g, keep, state, final):
...     calls.append(tuple(q.shape))
...     return q.cumsum(2)             # a causal stand-in for the attention
>>> x = torch.arange(10.0).reshape(1, 1, 10, 1)
>>> cu = torch.tensor([0, 3, 10])
>>> varlen_call(run, x, x, x, cu, is_causal=True).flatten().tolist()
[0.0, 1.0, 3.0, 3.0, 7.0, 12.0, 18.0, 25.0, 33.0, 42.0]
>>> calls                          # one padded batch of 2 sequences of up to 7 tokens
[(2, 1, 7, 1)]
"""

from __future__ import annotations

import torch

from fastattn.attention.state import State

__all__ = ["varlen_call", "PAD_LIMIT"]

#: The padded batch N x max length may be at most this many times the packed length T (else one call per sequence).
PAD_LIMIT = 2.0


def _pad(x, bounds, L):
    """[1, H, T, X] packed -> [N, H, L, X] zero-padded on the right (differentiable)."""
    parts = [torch.nn.functional.pad(x[:, :, a:b], (0, 0, 0, L - (b - a))) for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(parts, 0)


def _pad_last(x, bounds, L, value):
    """[1, ..., T] -> [N, ..., L], padded with ``value`` (g = 0: no decay; keep = False: no key)."""
    return torch.cat([torch.nn.functional.pad(x[..., a:b], (0, L - (b - a)), value=value)
                      for a, b in zip(bounds[:-1], bounds[1:])])


def varlen_call(run, query, key, value, cu_seqlens, *, is_causal, g=None, keep=None, initial_state=None,
                output_final_state=False, pad=True):
    """``run`` over the sequences packed in one row by ``cu_seqlens``, never letting one see another.

    Parameters
    ----------
    run : callable (q, k, v, g, keep, state, final) -> o, or (o, State) when ``final``
        One batched call of the attention (no cu_seqlens): q [N, H_q, L, D], k [N, H_kv, L, D],
        v [N, H_kv, L, DV], g [N, H_kv, L] or None, keep [N, L] or None, state a :class:`State` of N
        rows or None.
    query, key, value : tensor [1, H, T, X]
    cu_seqlens : int tensor [N + 1]
        Offsets 0 = c_0 <= ... <= c_N = T (already checked by the caller).
    is_causal : bool
    g : tensor [1, H_kv, T], optional
    keep : bool tensor [1, T], optional
        The keys that take part (a padding mask's complement); a padded batch pads it with False.
    initial_state : State of N rows, optional
        Sequence n starts from row n.
    output_final_state : bool
        Also return the State after each sequence (N rows).
    pad : bool
        Allow the padded batch (False: always one call per sequence).

    Returns
    -------
    o [1, H_q, T, DV], or (o, State) when ``output_final_state``.
    """
    bounds = [int(c) for c in cu_seqlens.tolist()]
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    N, T = len(lengths), bounds[-1]
    L = max(lengths, default=0)
    if pad and is_causal and not output_final_state and N * L <= PAD_LIMIT * max(T, 1) and L > 0:
        gp = None if g is None else _pad_last(g, bounds, L, 0.0)
        kp = None if keep is None else _pad_last(keep, bounds, L, False)
        o = run(_pad(query, bounds, L), _pad(key, bounds, L), _pad(value, bounds, L), gp, kp, initial_state, False)
        return torch.cat([o[n:n + 1, :, :m] for n, m in enumerate(lengths)], 2)
    outs, finals = [], []
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        st = None if initial_state is None else State(initial_state.S[n:n + 1], initial_state.z[n:n + 1],
                                                      initial_state.tokens[n:n + 1])
        part = lambda x: None if x is None else x[:, :, a:b]  # noqa: E731
        last = lambda x: None if x is None else x[..., a:b]  # noqa: E731
        out = run(part(query), part(key), part(value), last(g), last(keep), st, output_final_state)
        o, fin = out if output_final_state else (out, None)
        outs.append(o)
        finals.append(fin)
    o = torch.cat(outs, 2)
    if not output_final_state:
        return o
    return o, State(torch.cat([f.S for f in finals]), torch.cat([f.z for f in finals]),
                    torch.cat([f.tokens for f in finals]))
