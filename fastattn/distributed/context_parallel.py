"""Context parallelism: one long sequence split over the ranks of a ``torch.distributed`` group.

Linear attention needs only the feature state to cross a sequence boundary. Rank r holds the
contiguous tokens of slice r (rank order = sequence order, any length per rank, 0 included) and

1. sums its own keys into a local state, decayed to its own end when a gate g is given:
   S_r = sum_i exp(G_end - G_i) psi(k_i) v_i^T, z_r likewise, and L_r = sum of its g (log decay);
2. scans (S_r, z_r, L_r) over the ranks in ceil(log2 P) point-to-point rounds (``comm="scan"``,
   the default, :func:`exclusive_scan`; its backward is the same scan run from the last rank
   down), or all-gathers them (``comm="allgather"``; the backward is a reduce-scatter);
3. folds the earlier ranks' states, in the state dtype (fp32; fp64 for fp64 inputs), into its
   ``initial_state``: A <- exp(L_j) A + S_j for j = 0 .. r-1 (decays compose multiplicatively);
4. runs the local causal kernel (:func:`fastattn.attention.fast_attention`) from A.

The all-gather's backward is the reverse scan of dS for free: it sums, on each rank, the
gradients every later rank sent back to its state. Causal attention is the prefix case; with
``is_causal=False`` every rank starts from the sum of all other ranks' states (no gate), so each
query sees every key of the whole sequence (``comm="scan"`` then runs a prefix and a suffix scan).

Communication model
-------------------
:mod:`fastattn.distributed.cp_model` (re-exported here): one state per rank per layer,
(B·H_kv·(F·DV + F + 1) + 2)·4 bytes in fp32, 8.92 MB at d64, f = 1 + x + x²/2 (F = 2145,
DV = 64), B = 1, H_kv = 16. Forward + backward, the all-gather receives 2 (P - 1) states per rank,
the scan 2 ceil(log2 P); the local compute is linear in T/P, the exchange not in T at all, so CP
pays off once T/P is long enough to hide it. The constants below are **assumptions, not
measurements**: 26 ns per token and head of compute (the one-GPU H200 number of DESIGN.md,
fwd+bwd, the Triton kernel without a carried state), 50 GB/s per rank (one 400 Gb/s NIC per GPU)
and 10 µs per message; ``benchmarks/cp_scaling.py`` measures the first two on GPUs, and
:func:`cp_table` takes the measured values (times in ms per layer, shares in % of the compute):

>>> print(format_cp_table(cp_table(26.0, 50.0, 10.0, ranks=[8, 16, 64], tokens=[2**20, 2**24])))
| ranks P | tokens T | tokens / rank | compute / rank | all-gather | scan | all-gather % | scan % |
|---|---|---|---|---|---|---|---|
| 8 | 1M | 128K | 54.5 | 2.64 | 1.13 | 4.8 | 2.1 |
| 8 | 16M | 2M | 872.4 | 2.64 | 1.13 | 0.3 | 0.1 |
| 16 | 1M | 64K | 27.3 | 5.65 | 1.51 | 20.7 | 5.5 |
| 16 | 16M | 1M | 436.2 | 5.65 | 1.51 | 1.3 | 0.3 |
| 64 | 1M | 16K | 6.8 | 23.75 | 2.26 | 348.4 | 33.2 |
| 64 | 16M | 256K | 109.1 | 23.75 | 2.26 | 21.8 | 2.1 |

The compute column is the attention kernel alone (projections and MLP add compute that also
hides communication); a local call with an initial state runs the torch path until the Triton
kernels take a carried state, several times slower on a GPU. At 64 ranks and 1M tokens the
all-gather is 3.5× the attention and the scan a third of it. Neither exchange is overlapped
with compute (it could be: the intra-slice part of the local outputs needs no state).

GPU runs: NCCL works unchanged (``init_process_group("nccl")``); keep ``NCCL_NVLS_ENABLE=0``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from fastattn.attention.functional import check_gate, check_tensors, fast_attention
from fastattn.attention.layers import FastAttention
from fastattn.attention.state import State, state_dtype
from fastattn.distributed.cp_model import comm_estimate, cp_table, format_cp_table
from fastattn.errors import KernelError
from fastattn.kernels import naive
from fastattn.kernels.poly import check_normalizer, polynomial

__all__ = ["context_parallel_attention", "local_state", "exchange_states", "exclusive_scan", "ContextParallelAttention",
           "comm_estimate", "cp_table", "format_cp_table"]

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


class _AllGather(torch.autograd.Function):
    """All-gather of one flat tensor into [P, N]; the backward sums every rank's gradient of slot r on rank r.

    Not ``torch.distributed.nn.functional.all_gather``: on gloo its backward passes group ranks as
    global ranks (scatter with src = group rank), which fails on any group but the world.
    """

    @staticmethod
    def forward(ctx, x, group):
        out = x.new_empty((dist.get_world_size(group),) + x.shape)
        dist.all_gather(list(out.unbind(0)), x.contiguous(), group=group)
        ctx.group = group
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == "nccl":
            mine = grad.new_empty(grad.shape[1:])
            dist.reduce_scatter_tensor(mine, grad, group=ctx.group)
            return mine, None
        # gloo has no reduce-scatter: sum all slots everywhere (P states per rank; CPU runs are small)
        dist.all_reduce(grad, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


# -- the log-P scan ----------------------------------------------------------------------------------------
def _fold(earlier, later, rows, width):
    """a ⊕ b, a the earlier: packed buffers [x (rows × width), L (rows), extra]; x <- exp(L_b) x_a + x_b."""
    n = rows * width
    xa, La, ea = earlier[:n].view(rows, width), earlier[n:n + rows], earlier[n + rows:]
    xb, Lb, eb = later[:n].view(rows, width), later[n:n + rows], later[n + rows:]
    return torch.cat([(torch.exp(Lb)[:, None] * xa + xb).flatten(), La + Lb, ea + eb])


def exclusive_scan(x, log_decay, extra, *, group=None, reverse=False):
    """Exclusive prefix over the ranks of ``group`` of the elements (x_r, L_r, extra_r), in ceil(log2 P) rounds.

    Rank r gets E_r = x_0 ⊕ ... ⊕ x_{r-1} (the identity on rank 0), with (a ⊕ b).x = exp(L_b) a.x + b.x,
    (a ⊕ b).L = L_a + L_b, (a ⊕ b).extra = extra_a + extra_b; ``reverse`` scans from the last rank
    down (rank r gets the fold of ranks P-1 .. r+1). Hillis–Steele: in round k every rank sends its
    inclusive fold so far to the rank 2**k further on and folds what it receives from 2**k before
    into both its inclusive and its exclusive fold, one ``batch_isend_irecv`` per round. Not
    differentiable by itself (:class:`_ScanStates` is).

    Parameters
    ----------
    x : tensor [R, N]
        Decayed part (R rows, one decay each).
    log_decay : tensor [R]
    extra : tensor [E]
        Summed without decay (token counts).

    Returns
    -------
    x, log_decay, extra : the exclusive fold, same shapes and dtype.
    """
    group = dist.group.WORLD if group is None else group
    P, rank = dist.get_world_size(group), dist.get_rank(group)
    pos = P - 1 - rank if reverse else rank
    rows, width = x.shape
    inclusive = torch.cat([x.flatten(), log_decay, extra])
    exclusive = torch.zeros_like(inclusive)
    world = group is dist.group.WORLD

    def peer(p):
        r = P - 1 - p if reverse else p
        # older torch refuses the lookup on the world group, where group and global ranks agree
        return r if world else dist.get_global_rank(group, r)

    step = 1
    while step < P:
        ops, buf = [], None
        if pos + step < P:
            ops.append(dist.P2POp(dist.isend, inclusive, peer(pos + step), group))
        if pos - step >= 0:
            buf = torch.empty_like(inclusive)
            ops.append(dist.P2POp(dist.irecv, buf, peer(pos - step), group))
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()
        if buf is not None:
            exclusive = _fold(buf, exclusive, rows, width)
            # the inclusive fold is sent again only if a later round reaches a rank
            if pos + 2 * step < P:
                inclusive = _fold(buf, inclusive, rows, width)
        step *= 2
    n = rows * width
    return exclusive[:n].view(rows, width), exclusive[n:n + rows], exclusive[n + rows:]


class _ScanStates(torch.autograd.Function):
    """The exclusive scan of (S, z) with decays; its backward is the scan of the gradients the other way.

    With E_r = sum_{j<r} exp(L_{j+1} + ... + L_{r-1}) x_j and G_r = dLoss/dE_r, the gradient of x_j is
    H_j = sum_{r>j} exp(L_{j+1} + ... + L_{r-1}) G_r, the exclusive scan of (G, L) from the last rank
    down, and dLoss/dL_m = exp(L_m) <H_m, E_m>: local once H is known. Every rank runs the backward
    (a collective), whatever its gradients.
    """

    @staticmethod
    def forward(ctx, x, log_decay, extra, group, reverse):
        E, _, tokens = exclusive_scan(x, log_decay, extra, group=group, reverse=reverse)
        ctx.save_for_backward(log_decay, E)
        ctx.group, ctx.reverse = group, reverse
        ctx.mark_non_differentiable(tokens)
        return E, tokens

    @staticmethod
    def backward(ctx, grad_E, grad_tokens):
        log_decay, E = ctx.saved_tensors
        no_extra = log_decay.new_zeros(0)
        H, _, _ = exclusive_scan(grad_E.contiguous(), log_decay, no_extra, group=ctx.group, reverse=not ctx.reverse)
        grad_L = torch.exp(log_decay) * (H * E).sum(-1)
        return H, grad_L, None, None, None


def _scan_initial_state(S, z, L, count, group, causal):
    """This rank's initial (S, z, tokens) from the scan: the exclusive prefix (causal) or prefix + suffix."""
    B, H, F, DV = S.shape
    x = torch.cat([S.reshape(B * H, F * DV), z.reshape(B * H, F)], -1)
    if causal:
        E, tokens = _ScanStates.apply(x, L.reshape(B * H), count, group, False)
    else:
        zero = torch.zeros_like(L.reshape(B * H))
        E, tokens = _ScanStates.apply(x, zero, count, group, False)
        E_after, tokens_after = _ScanStates.apply(x, zero, count, group, True)
        E, tokens = E + E_after, tokens + tokens_after
    S0, z0 = E[:, :F * DV].reshape(B, H, F, DV), E[:, F * DV:].reshape(B, H, F)
    return S0, z0, tokens[0].detach().to(torch.int64) * _SPLIT + tokens[1].detach().to(torch.int64)


def exchange_states(S, z, log_decay, tokens, *, group=None, is_causal=True, comm="scan"):
    """This rank's initial state from the other ranks' local states: the one communication step of CP.

    Parameters
    ----------
    S, z, log_decay : tensors [B, H_kv, F, DV], [B, H_kv, F], [B, H_kv]
        This rank's :func:`local_state`.
    tokens : int
        This rank's slice length (the state's token count of the other ranks is summed from these).
    group, is_causal, comm
        As in :func:`context_parallel_attention`.

    Returns
    -------
    State
        Causal: the fold of ranks 0 .. r-1 (A <- exp(L_j) A + S_j); otherwise the sum of all other
        ranks' states. Differentiable; its backward is a collective too.
    """
    if comm not in ("allgather", "scan"):
        raise KernelError(f"comm={comm!r}; use 'allgather' (one collective) or 'scan' (log2 P point-to-point rounds)")
    group = dist.group.WORLD if group is None else group
    B, H, F, DV = S.shape
    count = torch.tensor([tokens // _SPLIT, tokens % _SPLIT], dtype=S.dtype, device=S.device)
    if comm == "scan":
        S0, z0, seen = _scan_initial_state(S, z, log_decay, count, group, is_causal)
        return State(S0, z0, seen.expand(B).clone())
    # one buffer, one collective: S, z, the log decay and the local length
    packed = torch.cat([S.flatten(), z.flatten(), log_decay.flatten(), count])
    gathered = _AllGather.apply(packed, group).unbind(0)
    sizes = [B * H * F * DV, B * H * F, B * H, 2]
    parts = []
    for buf in gathered:
        Sj, zj, Lj, cj = torch.split(buf, sizes)
        tj = cj[0].detach().to(torch.int64) * _SPLIT + cj[1].detach().to(torch.int64)  # no host sync
        parts.append((Sj.view(B, H, F, DV), zj.view(B, H, F), Lj.view(B, H), tj))
    S0, z0, seen = _combine(parts, dist.get_rank(group), is_causal)
    return State(S0, z0, seen.expand(B).clone())


def context_parallel_attention(q, k, v, spec, *, group=None, g=None, scale=None, normalize=True, enable_gqa=False,
                               is_causal=True, normalizer_fix=None, eps=1e-6, chunk=None, backend="auto",
                               tables=None, comm="scan"):
    """:func:`fastattn.attention.fast_attention` over a sequence split across the ranks of ``group``.

    Each rank passes its own contiguous slice of the sequence (rank order = sequence order); the
    slices may differ in length (0 allowed), everything else (B, heads, dims, dtype, f, options)
    must agree across ranks. One exchange of the states per call, differentiable: call
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
    comm : "scan" or "allgather"
        How the states travel. "scan" (the default): a Hillis–Steele prefix with point-to-point
        sends, ceil(log2 P) rounds of at most one state in and one out per rank (twice that when
        ``is_causal=False``: a prefix and a suffix). "allgather": one all-gather, each rank receives
        the P - 1 other states and folds the earlier ones. Both give the same result up to rounding
        (the folds are ordered differently). On CPU (gloo, 2 shared cores, fwd+bwd of a 2.2 MB
        state, median of 20) the scan took 21 / 47 / 46 ms at P = 2 / 3 / 4, the all-gather 26 / 48
        / 84 ms; no GPU measurement decides between them yet (at P = 2 both move one state).

    Returns
    -------
    o : tensor [B, H_q, T_r, DV]
        This rank's slice of the output of the call on the whole sequence.

    Raises
    ------
    KernelError
        What :func:`fastattn.attention.fast_attention` refuses, a gate without ``is_causal``, an
        unknown ``comm``, or no initialised process group.

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
    if comm not in ("allgather", "scan"):
        raise KernelError(f"comm={comm!r}; use 'allgather' (one collective) or 'scan' (log2 P point-to-point rounds)")
    poly = polynomial(spec)
    check_normalizer(poly, normalize, normalizer_fix)
    # refuse bad inputs here, before the collective, with fast_attention's own messages
    check_tensors(q, k, v, is_causal, enable_gqa)
    if g is not None:
        check_gate(g, k.shape[0], k.shape[1], k.shape[2], k, is_causal)
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    S, z, L = local_state(k, v, poly, scale=scale, g=g, tables=tables)
    state = exchange_states(S, z, L, k.shape[2], group=group, is_causal=is_causal, comm=comm)
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
    comm : "allgather" or "scan"
        See :func:`context_parallel_attention`.

    Examples
    --------
    >>> core = FastAttention.from_spec("1 + x + x**2/2", head_dim=8)
    >>> cp = ContextParallelAttention(core)
    >>> cp.attn.feature_dim
    45
    >>> o = cp(q, k, v)  # in each process of a group  # doctest: +SKIP
    """

    def __init__(self, attn: FastAttention, group=None, comm="scan"):
        super().__init__()
        if not isinstance(attn, FastAttention):
            raise KernelError(f"ContextParallelAttention wraps a FastAttention; got {type(attn).__name__}")
        if comm not in ("allgather", "scan"):
            raise KernelError(f"comm={comm!r}; use 'allgather' or 'scan'")
        self.attn, self.group, self.comm = attn, group, comm

    def forward(self, q, k, v, *, g=None, enable_gqa=False):
        """This rank's slice of attention over the whole split sequence (see :func:`context_parallel_attention`)."""
        a = self.attn
        return context_parallel_attention(q, k, v, a.poly, group=self.group, g=g, scale=a.scale,
                                          normalize=a.normalize, enable_gqa=enable_gqa, is_causal=a.causal,
                                          normalizer_fix=a.normalizer_fix, eps=a.eps, chunk=a.chunk,
                                          backend=a.backend, tables=a._tables(a.scale), comm=self.comm)
