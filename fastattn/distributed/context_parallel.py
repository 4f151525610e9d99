"""Context parallelism: one long sequence split over the ranks of a ``torch.distributed`` group.

Linear attention needs only the feature state to cross a sequence boundary. Rank r holds the
contiguous tokens of slice r (rank order = sequence order, any length per rank, 0 included) and

1. sums its own keys into a local state, decayed to its own end when a gate g is given:
   S_r = sum_i exp(G_end - G_i) psi(k_i) v_i^T, z_r likewise, and L_r = sum of its g (log decay);
2. all-gathers (S_r, z_r, L_r) with the differentiable ``torch.distributed.nn.functional.all_gather``;
3. folds the earlier ranks' states, in the state dtype (fp32; fp64 for fp64 inputs), into its
   ``initial_state``: A <- exp(L_j) A + S_j for j = 0 .. r-1 (decays compose multiplicatively);
4. runs the local causal kernel (:func:`fastattn.attention.fast_attention`) from A.

The backward is the reverse scan of dS for free: the all-gather's backward sums, on each rank,
the gradients every later rank sent back to its state. Causal attention is the prefix case; with
``is_causal=False`` every rank starts from the sum of all other ranks' states (no gate), so each
query sees every key of the whole sequence (a full sum: an all-reduce would move 2 states per rank
instead of P - 1; not built, the causal case is the one that matters for training).

Communication model
-------------------
One state per rank per layer: B·H_kv·F·DV·4 bytes (S) + B·H_kv·F·4 bytes (z) in fp32, plus
B·H_kv·4 (log decay) and 8 (the slice length). The all-gather delivers the P - 1 other states to every rank, so each rank receives
(P - 1)× that in the forward, and as much again in the backward (reduce-scatter on NCCL; an
all-to-all on gloo). The local compute is linear in the local length T/P, the communication is
not in T at all: CP pays off once T/P is long enough to hide it.

d64, f = 1 + x + x²/2 (F = 2145, DV = 64), B = 1, H_kv = 16: 8.92 MB of state per rank per layer.
Compute per rank from the one H200 number measured (DESIGN.md, fwd+bwd, B2 H16: 6.66 ms at 8K,
54.9 ms at 64K, i.e. ≈ 26 ns per token and head); communication = 2 (P - 1) × 8.92 MB / bandwidth.
**The bandwidth is an assumption, not a measurement**: 50 GB/s per rank (one 400 Gb/s NIC per
GPU across nodes); NVLink inside one node is several times faster. No multi-GPU run exists yet.

==========  ===========  ==============  =====================  =======================
 ranks P     tokens T     tokens / rank   compute / rank (ms)    all-gather fwd+bwd (ms)
==========  ===========  ==============  =====================  =======================
 8           1M           128K            54                     2.5
 8           16M          2M              870                    2.5
 16          1M           64K             27                     5.4
 16          16M          1M              436                    5.4
 64          1M           16K             6.8                    22.5
 64          16M          256K            109                    22.5
==========  ===========  ==============  =====================  =======================

The compute column is the attention kernel alone (projections and MLP add compute that also
hides communication) and assumes the Triton kernel; today a call with an initial state runs the
torch path (the Triton kernels take no carried state yet), several times slower on a GPU.

At 16M tokens the all-gather is ≤ 1.2 % of the attention up to 16 ranks and 21 % at 64; at 1M
tokens it is 5 % at 8 ranks, 20 % at 16 and 3.3× the attention at 64, where a log-P scan of
states (log2 P sends of one state instead of P - 1) is the remedy (not built yet). The
communication is not overlapped with compute (it could be: the local outputs' intra-slice part
needs no state). Measure on GPUs before trusting any row.

GPU runs: NCCL works unchanged (``init_process_group("nccl")``); keep ``NCCL_NVLS_ENABLE=0``.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from fastattn.attention.functional import check_gate, check_tensors, fast_attention
from fastattn.attention.layers import FastAttention
from fastattn.attention.state import State, state_dtype
from fastattn.errors import KernelError
from fastattn.kernels import naive
from fastattn.kernels.poly import check_normalizer, polynomial

__all__ = ["context_parallel_attention", "local_state", "ContextParallelAttention"]

# a local length travels as two floats (high and low part) so fp32 carries it exactly past 2**24
_SPLIT = 4096


def local_state(key, value, spec, *, scale=None, g=None, tables=None):
    """The state of this slice alone, (S, z, log decay): what it adds to the state, decayed to its end.

    Parameters
    ----------
    key : tensor [B, H_kv, T, D]
    value : tensor [B, H_kv, T, DV]
    spec : str, Spec, dict or Polynomial
    scale : float, optional
        s in f(s q.k); default 1/sqrt(D).
    g : tensor [B, H_kv, T], optional
        Log forget gate (<= 0).
    tables : tuple, optional
        :func:`fastattn.kernels.naive.symmetric_tables` for this f, D and scale.

    Returns
    -------
    S : tensor [B, H_kv, F, DV]
        sum_i exp(G_T - G_i) psi(k_i) v_i^T, with G = cumsum(g) (weight 1 without g).
    z : tensor [B, H_kv, F]
    log_decay : tensor [B, H_kv]
        sum of g over the slice (0 without g): the state before the slice is scaled by exp of it.

    All three are in :func:`fastattn.attention.state.state_dtype` of the inputs and differentiable;
    S, z equal the final state of a causal prefill from a zero state (without its outputs).

    Examples
    --------
    >>> k = v = torch.randn(1, 2, 9, 4, dtype=torch.float64)
    >>> S, z, L = local_state(k, v, "1 + x + x**2/2")
    >>> _, st = fast_attention(k, k, v, "1 + x + x**2/2", output_final_state=True)
    >>> bool(torch.allclose(S, st.S)), bool(torch.allclose(z, st.z)), L.abs().max().item()
    (True, True, 0.0)
    """
    poly = polynomial(spec)
    work = state_dtype(key.dtype)
    D = key.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    psi = naive.symmetric_features(key.to(work), poly, scale, "psi", tables)  # [B, H, T, F]
    if g is None:
        log_decay = torch.zeros(key.shape[:2], dtype=work, device=key.device)
    else:
        b = g.to(work).cumsum(-1)
        log_decay = b[..., -1] if b.shape[-1] else torch.zeros(key.shape[:2], dtype=work, device=key.device)
        # b_T - b_i <= 0: the weights never overflow
        psi = psi * torch.exp(log_decay[..., None] - b)[..., None]
    return psi.transpose(-1, -2) @ value.to(work), psi.sum(-2), log_decay


def _combine(parts, rank, causal):
    """Fold the gathered (S, z, L, tokens) of the other ranks into this rank's initial state."""
    S0, z0, _, _ = parts[rank]
    # a zero wired to the gathered tensors, so that every rank (rank 0 too) runs the all-gather's
    # backward, which is a collective; where, not a product, keeps an inf in a state out of it
    off = torch.zeros((), dtype=torch.bool, device=S0.device)
    S, z = torch.where(off, S0, 0.0), torch.where(off, z0, 0.0)
    tokens = torch.zeros((), dtype=torch.int64, device=S0.device)
    for j, (Sj, zj, Lj, tj) in enumerate(parts):
        if causal and j >= rank:
            break
        if j == rank:
            continue
        if causal:
            decay = torch.exp(Lj)
            S, z = decay[..., None, None] * S + Sj, decay[..., None] * z + zj
        else:
            S, z = S + Sj, z + zj
        tokens = tokens + tj
    return S, z, tokens


def context_parallel_attention(q, k, v, spec, *, group=None, g=None, scale=None, normalize=True, enable_gqa=False,
                               is_causal=True, normalizer_fix=None, eps=1e-6, chunk=None, backend="auto",
                               tables=None):
    """:func:`fastattn.attention.fast_attention` over a sequence split across the ranks of ``group``.

    Each rank passes its own contiguous slice of the sequence (rank order = sequence order); the
    slices may differ in length (0 allowed), everything else (B, heads, dims, dtype, f, options)
    must agree across ranks. One all-gather of the states per call, differentiable: call
    ``backward`` on every rank of the group (each rank's loss on its own outputs), as with any
    collective. Every rank must call this function the same number of times in the same order.

    Parameters
    ----------
    q : tensor [B, H_q, T_r, D]
    k : tensor [B, H_kv, T_r, D]
    v : tensor [B, H_kv, T_r, DV]
        This rank's slice; T_r may differ between ranks.
    spec : str, Spec, dict or Polynomial
        f (see :func:`fastattn.kernels.polynomial`).
    group : ProcessGroup, optional
        Default: the world group. ``torch.distributed`` must be initialised (gloo or NCCL).
    g : tensor [B, H_kv, T_r], optional
        Log forget gate <= 0 of this slice; decays compose across ranks. Causal only.
    scale, normalize, enable_gqa, normalizer_fix, eps, chunk, backend, tables
        As in :func:`fastattn.attention.fast_attention`. The local call carries an initial state,
        so "auto" runs the torch path until the Triton kernels take one.
    is_causal : bool
        True (the default): token t sees every token up to t of the whole sequence. False: every
        query sees every key of every rank (q and k slices may then differ in length).

    Returns
    -------
    o : tensor [B, H_q, T_r, DV]
        This rank's slice of the output of the call on the whole sequence.

    Raises
    ------
    KernelError
        What :func:`fastattn.attention.fast_attention` refuses, a gate without ``is_causal``, or no
        initialised process group.

    Examples
    --------
    In each of P processes of an initialised group (tests/test_distributed.py runs this on gloo),
    with q, k, v the rank's slice [B, H, T/P, D] of the whole sequence:

    >>> o = context_parallel_attention(q, k, v, "1 + x + x**2/2")  # doctest: +SKIP
    >>> o.shape == q.shape  # doctest: +SKIP
    True

    Without a process group it refuses:

    >>> x = torch.randn(1, 2, 8, 4)
    >>> context_parallel_attention(x, x, x, "1 + x + x**2/2")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fastattn.errors.KernelError: context_parallel_attention needs an initialised torch.distributed process group: ...
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise KernelError("context_parallel_attention needs an initialised torch.distributed process group: call "
                          "torch.distributed.init_process_group('nccl' or 'gloo') first (torchrun sets the rest)")
    poly = polynomial(spec)
    check_normalizer(poly, normalize, normalizer_fix)
    # refuse bad inputs here, before the collective, with fast_attention's own messages
    check_tensors(q, k, v, is_causal, enable_gqa)
    if g is not None:
        check_gate(g, k.shape[0], k.shape[1], k.shape[2], k, is_causal)
    group = dist.group.WORLD if group is None else group
    rank = dist.get_rank(group)
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    S, z, L = local_state(k, v, poly, scale=scale, g=g, tables=tables)
    B, H, F, DV = S.shape
    T = k.shape[2]
    count = torch.tensor([T // _SPLIT, T % _SPLIT], dtype=S.dtype, device=S.device)
    # one buffer, one collective: S, z, the log decay and the local length
    packed = torch.cat([S.flatten(), z.flatten(), L.flatten(), count])
    with warnings.catch_warnings():
        # torch 2.13 marks it deprecated in favour of a private module; it is the public differentiable one
        warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather", FutureWarning)
        gathered = dist_fn.all_gather(packed, group=group)
    sizes = [B * H * F * DV, B * H * F, B * H, 2]
    parts = []
    for buf in gathered:
        Sj, zj, Lj, cj = torch.split(buf, sizes)
        tj = cj[0].detach().to(torch.int64) * _SPLIT + cj[1].detach().to(torch.int64)  # no host sync
        parts.append((Sj.view(B, H, F, DV), zj.view(B, H, F), Lj.view(B, H), tj))
    S0, z0, seen = _combine(parts, rank, is_causal)
    state = State(S0, z0, seen.expand(B).clone())
    return fast_attention(q, k, v, poly, is_causal=is_causal, scale=scale, normalize=normalize,
                          enable_gqa=enable_gqa, g=g, initial_state=state, normalizer_fix=normalizer_fix, eps=eps,
                          chunk=chunk, backend=backend, tables=tables)


class ContextParallelAttention(nn.Module):
    """A :class:`fastattn.attention.FastAttention` whose sequence is split over a process group.

    ``forward(q, k, v)`` takes this rank's slice [B, H, T_r, D] and returns its slice of the
    output, as :func:`context_parallel_attention`; the layer's f, scale, normaliser, chunk and
    tables are those of ``attn``. It holds no parameters of its own, so it can sit in any model
    whose other layers act token by token (projections, MLPs, norms).

    Parameters
    ----------
    attn : FastAttention
        The attention core (causal or not).
    group : ProcessGroup, optional
        Default: the world group, looked up at call time.

    Examples
    --------
    >>> core = FastAttention.from_spec("1 + x + x**2/2", head_dim=8)
    >>> cp = ContextParallelAttention(core)
    >>> cp.attn.feature_dim
    45
    >>> o = cp(q, k, v)  # in each process of a group  # doctest: +SKIP
    """

    def __init__(self, attn: FastAttention, group=None):
        super().__init__()
        if not isinstance(attn, FastAttention):
            raise KernelError(f"ContextParallelAttention wraps a FastAttention; got {type(attn).__name__}")
        self.attn, self.group = attn, group

    def forward(self, q, k, v, *, g=None, enable_gqa=False):
        """This rank's slice of attention over the whole split sequence (see :func:`context_parallel_attention`)."""
        a = self.attn
        return context_parallel_attention(q, k, v, a.poly, group=self.group, g=g, scale=a.scale,
                                          normalize=a.normalize, enable_gqa=enable_gqa, is_causal=a.causal,
                                          normalizer_fix=a.normalizer_fix, eps=a.eps, chunk=a.chunk,
                                          backend=a.backend, tables=a._tables(a.scale))
