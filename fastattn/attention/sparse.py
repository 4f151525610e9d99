"""Sparse softmax attention: QK-dropping, hash buckets (Dynamic Sparse Flash Attention) and static patterns.

``sparse_attention`` restricts causal softmax attention to the pairs whose tokens are both kept and whose
bucket ids match; ``pattern_attention`` to the pairs a :mod:`fastattn.patterns` pattern allows. Both run
the flash kernels of :mod:`fastattn.kernels.sparse` (Triton, forward and backward), whose work follows
the pairs that take part: kept tokens are compacted, bucketed tokens sorted by (bucket, position), and
key blocks that cannot meet a query block are never visited. A query with no allowed key outputs 0.

>>> import torch
>>> q, k, v = torch.randn(3, 1, 2, 16, 8)   # CUDA tensors, or CPU ones under TRITON_INTERPRET=1
>>> keep = torch.rand(1, 2, 16) < 0.5
>>> sparse_attention(q, k, v, keep=keep).shape
torch.Size([1, 2, 16, 8])
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from fastattn.attention.functional import check_tensors
from fastattn.errors import KernelError
from fastattn.kernels import naive
from fastattn.kernels.sparse.flash import SparseFlash, default_scale
from fastattn.kernels.sparse.schedule import range_schedules
from fastattn.patterns import Pattern

__all__ = ["sparse_attention", "pattern_attention", "lsh_buckets", "plan_tiles", "SparseTiles"]


@dataclass(frozen=True)
class SparseTiles:
    """The sparse kernels' tiles: ``fwd`` and ``bwd`` are (block_q, block_k, warps) of the forward and of the
    dq / dk-dv launches (query and key slots per block, warps per program); ``clean`` says whether tiles with
    every pair allowed run without the element mask."""

    fwd: tuple
    bwd: tuple
    clean: bool = True


def _tile_size(name, n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 16 or n & (n - 1):
        raise KernelError(f"tuning {name}={n!r} must be a power of two >= 16 (tl.dot's smallest tile)")
    return n


def _warps(name, w):
    if w not in (1, 2, 4, 8, 16):
        raise KernelError(f"tuning {name}={w!r} must be 1, 2, 4, 8 or 16")
    return w


def plan_tiles(D, DV, device, dtype=torch.float32, tuning=None):
    """The :class:`SparseTiles` of one call.

    On a GPU the backward runs 64 x 64 with 4 warps (a [64, 64] score tile and [64, D] dk, dv accumulators per
    program; the sm_90 build at d64 holds them without spills: dq 164 registers, dk/dv 254, see the kernels'
    README). The forward of 16-bit inputs runs 128 query x 64 key slots with 8 warps, as flash attention does
    (half the programs re-reading K and V; sm_90 builds without spills up to d128: 214 registers); float32
    keeps 64 x 64 x 4, its tiles twice the bytes. The CPU interpreter runs 32 x 32. ``tuning`` (private, for
    tests and sweeps) overrides: "block" (both sizes), "block_q", "block_k", "warps" set every launch; "fwd"
    = (block_q, block_k, warps) the forward alone; "clean" as in :class:`SparseTiles`.

    >>> plan_tiles(64, 64, "cuda", torch.bfloat16)
    SparseTiles(fwd=(128, 64, 8), bwd=(64, 64, 4), clean=True)
    >>> plan_tiles(64, 64, "cuda", torch.float32).fwd
    (64, 64, 4)
    """
    gpu = torch.device(device).type == "cuda"
    tuning = dict(tuning or {})
    bad = set(tuning) - {"block", "block_q", "block_k", "warps", "clean", "fwd"}
    if bad:
        raise KernelError(f"tuning keys {sorted(bad)} unknown; use 'block', 'block_q', 'block_k', 'warps', 'fwd', "
                          "'clean'")
    block = tuning.get("block", 64 if gpu else 32)
    bq = _tile_size("block_q", tuning.get("block_q", block))
    bk = _tile_size("block_k", tuning.get("block_k", block))
    bwd = (bq, bk, _warps("warps", tuning.get("warps", 8 if max(bq, bk) >= 128 else 4)))
    fwd = bwd
    if gpu and dtype in (torch.float16, torch.bfloat16) and not set(tuning) & {"block", "block_q", "block_k", "warps"}:
        fwd = (128, 64, 8)
    if "fwd" in tuning:
        f = tuning["fwd"]
        if not isinstance(f, (tuple, list)) or len(f) != 3:
            raise KernelError(f"tuning fwd={f!r} must be (block_q, block_k, warps)")
        fwd = (_tile_size("fwd block_q", f[0]), _tile_size("fwd block_k", f[1]), _warps("fwd warps", f[2]))
    return SparseTiles(fwd=fwd, bwd=bwd, clean=bool(tuning.get("clean", True)))


def _check(query, key, value, scale):
    check_tensors(query, key, value, False, False)
    if query.shape[2] != key.shape[2]:
        raise KernelError(f"sparse attention selects tokens by index, so queries and keys must be one sequence: "
                          f"T_q={query.shape[2]} != T_k={key.shape[2]}")
    if max(query.shape[-1], value.shape[-1]) > 128:
        raise KernelError(f"head dims D={query.shape[-1]}, DV={value.shape[-1]}: the sparse kernels hold [block, D] "
                          "tiles in registers and take D, DV <= 128; split the heads")
    if query.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise KernelError(f"dtype {query.dtype}: the Triton kernels take float16, bfloat16 or float32; compare in "
                          "float64 with fastattn.kernels.sparse.masked_attention")
    if scale is not None and not naive.is_finite_real(scale):
        raise KernelError(f"scale={scale!r} must be a finite real number (or None for 1/sqrt(D))")


def _check_ids(name, x, shape, device):
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise KernelError(f"{name} must be a tensor [B, H, T] = {list(shape)}; got {got}")
    if x.device != device:
        raise KernelError(f"{name} is on {x.device}, the queries on {device}: move it with .to(device)")


def _check_restrictions(keep, buckets, shape, device):
    if keep is not None:
        _check_ids("keep", keep, shape, device)
        if keep.dtype != torch.bool:
            raise KernelError(f"keep must be a bool tensor (True = the token takes part); got {keep.dtype}")
    if buckets is not None:
        if not isinstance(buckets, (tuple, list)) or len(buckets) != 2:
            got = type(buckets).__name__ + (f" of length {len(buckets)}" if hasattr(buckets, "__len__") else "")
            raise KernelError(f"buckets must be a pair (query ids, key ids) of int tensors [B, H, T]; got {got}")
        for name, x in zip(("buckets[0] (query ids)", "buckets[1] (key ids)"), buckets):
            _check_ids(name, x, shape, device)
            # any integer values: the schedule renumbers them per row without a host sync
            if x.dtype.is_floating_point or x.dtype == torch.bool or x.dtype.is_complex:
                raise KernelError(f"{name} must hold integer ids; got {x.dtype}")


def _tilings(tiles, *inputs):
    """(tilings, backward flags): the distinct tilings a call needs, the forward's and, when a gradient can flow,
    the backward's; a flag says the dk-dv launch walks that tiling (the others skip its transposed runs)."""
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in inputs)):
        return (tiles.fwd,), (False,)
    if tiles.fwd == tiles.bwd:
        return (tiles.fwd,), (True,)
    return (tiles.fwd, tiles.bwd), (False, True)


def _slots(x, perm):
    """[B, H, T, C] -> [BH, T, C] in schedule order (slot t holds token perm[bh, t])."""
    B, H, T, C = x.shape
    x = x.reshape(B * H, T, C)
    return x if perm is None else x.gather(1, perm[..., None].expand(-1, -1, C))


def sparse_attention(query, key, value, *, keep=None, buckets=None, is_causal=True, scale=None, tuning=None):
    """Softmax attention over the pairs whose tokens are both kept and share a bucket (causal by default).

    Pair (i, j) takes part when ``keep[b, h, i] and keep[b, h, j]`` (QK-dropping), ``qid[b, h, i] ==
    kid[b, h, j]`` (hash-sparse, ``buckets = (qid, kid)``) and, with ``is_causal``, j <= i in the original
    positions. o_i = sum_j softmax_j(s q_i.k_j) v_j over those pairs; a query with none (dropped, or its
    bucket holds only later keys) outputs zeros and passes back zero gradients.

    Parameters
    ----------
    query, key : tensor [B, H, T, D]
    value : tensor [B, H, T, DV]
        float16, bfloat16 or float32, one device (CUDA, or the CPU under ``TRITON_INTERPRET=1``).
    keep : bool tensor [B, H, T], optional
        Tokens that take part; the kernels run on the kept ones only, compacted in order.
    buckets : (int tensor [B, H, T], int tensor [B, H, T]), optional
        Query and key bucket ids (any integers), e.g. from :func:`lsh_buckets`; the kernels run over the
        tokens sorted by (bucket, position) and skip block pairs with no shared bucket.
    is_causal : bool
    scale : float, optional
        s; default 1/sqrt(D).
    tuning : dict, optional
        Private, for tests and sweeps: tile overrides, see :func:`plan_tiles`.

    Returns
    -------
    o : tensor [B, H, T, DV] in the inputs' dtype.

    Examples
    --------
    >>> q, k, v = torch.randn(3, 1, 2, 64, 16)
    >>> qid, kid = lsh_buckets(q, k, 4, seed=0)
    >>> sparse_attention(q, k, v, buckets=(qid, kid)).shape
    torch.Size([1, 2, 64, 16])
    """
    _check(query, key, value, scale)
    B, H, T, D = query.shape
    _check_restrictions(keep, buckets, (B, H, T), query.device)
    if T == 0:
        return naive.empty_output(query, key, value)
    tiles = plan_tiles(D, value.shape[-1], query.device, query.dtype, tuning)
    flat = lambda x: None if x is None else x.reshape(B * H, T)  # noqa: E731
    # one token order, tiled twice when the forward's tiles differ from the backward's and a backward may run
    tilings, backward = _tilings(tiles, query, key, value)
    scheds = range_schedules(B * H, T, tilings, keep=flat(keep),
                             buckets=None if buckets is None else tuple(map(flat, buckets)), is_causal=is_causal,
                             clean=tiles.clean, device=query.device, backward=backward)
    sched = scheds[0]
    sorted_ = keep is not None or buckets is not None
    perm_q, perm_k = (sched.perm_q, sched.perm_k) if sorted_ else (None, None)
    o = SparseFlash.apply(_slots(query, perm_q), _slots(key, perm_k), _slots(value, perm_k), sched, scheds[-1],
                          default_scale(D, scale), bool(is_causal))
    if perm_q is not None:
        o = o.gather(1, sched.slot_q[..., None].expand(-1, -1, o.shape[-1]))
    return o.reshape(B, H, T, -1)


def pattern_attention(query, key, value, pattern, *, is_causal=True, scale=None, tuning=None):
    """Softmax attention over the pairs a static pattern allows (and j <= i with ``is_causal``).

    The pattern is compiled once per (T, tiles, is_causal, device) to a list of key blocks per query block
    (:meth:`fastattn.patterns.Pattern.compile`); the kernels visit only those, and apply the element
    mask only in blocks the pattern covers partly. Arguments as in :func:`sparse_attention`, plus

    pattern : :class:`fastattn.patterns.Pattern`
        e.g. ``local(256) | global_tokens(4)`` or ``local(64) | strided(64)``.

    >>> from fastattn.patterns import local, global_tokens
    >>> q, k, v = torch.randn(3, 1, 2, 96, 16)
    >>> pattern_attention(q, k, v, local(32) | global_tokens(4)).shape
    torch.Size([1, 2, 96, 16])
    """
    _check(query, key, value, scale)
    if not isinstance(pattern, Pattern):
        raise KernelError(f"pattern must be a fastattn.patterns.Pattern (local(w), strided(s), ... joined with |); "
                          f"got {type(pattern).__name__}")
    B, H, T, D = query.shape
    if T == 0:
        return naive.empty_output(query, key, value)
    tiles = plan_tiles(D, value.shape[-1], query.device, query.dtype, tuning)
    scheds = [pattern.compile(T, block=bq, block_k=bk, is_causal=bool(is_causal), device=query.device)
              .schedule(query.device, warps=w) for bq, bk, w in _tilings(tiles, query, key, value)[0]]
    o = SparseFlash.apply(_slots(query, None), _slots(key, None), _slots(value, None), scheds[0], scheds[-1],
                          default_scale(D, scale), bool(is_causal))
    return o.reshape(B, H, T, -1)


@functools.lru_cache(maxsize=32)
def _rotation(seed, H, D, n, device):
    # drawn on the CPU (the same ids on every device), moved once: a copy from the host per call would wait
    # for the GPU to drain its queue
    g = torch.Generator().manual_seed(seed)
    return torch.randn(H, D, n, generator=g, dtype=torch.float32).to(device)


def lsh_buckets(query, key, n_buckets, *, seed):
    """Reformer-style angular LSH: ids argmax([xR, -xR]) with one random rotation R [D, n_buckets / 2] per head.

    Queries and keys share R, so a query and a key pointing the same way tend to share a bucket. The same
    ``seed`` gives the same R (drawn on the CPU, then moved, once per (seed, shape, device): cached), hence the
    same ids on any device.

    Parameters
    ----------
    query, key : tensor [B, H, T, D]
    n_buckets : int
        1, or an even number >= 2.
    seed : int

    Returns
    -------
    (query ids, key ids) : int64 tensors [B, H, T] in [0, n_buckets).

    >>> q = torch.randn(1, 2, 5, 8)
    >>> a, b = lsh_buckets(q, q, 4, seed=0)
    >>> bool((a == b).all()), a.shape, int(a.max()) < 4
    (True, torch.Size([1, 2, 5]), True)
    """
    if isinstance(n_buckets, bool) or not isinstance(n_buckets, int) or n_buckets < 1 or (n_buckets > 1
                                                                                          and n_buckets % 2):
        raise KernelError(f"n_buckets={n_buckets!r} must be 1 or an even int >= 2 (argmax over [xR, -xR])")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise KernelError(f"seed={seed!r} must be an int")
    for name, x in (("query", query), ("key", key)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise KernelError(f"{name} must be a tensor [B, H, T, D]")
    H, D = query.shape[1], query.shape[-1]
    if key.shape[1] != H or key.shape[-1] != D:
        raise KernelError(f"query {tuple(query.shape)} and key {tuple(key.shape)} must share H and D")
    if n_buckets == 1:
        return (torch.zeros(query.shape[:3], dtype=torch.long, device=query.device),
                torch.zeros(key.shape[:3], dtype=torch.long, device=key.device))
    R = _rotation(seed, H, D, n_buckets // 2, str(query.device))

    def ids(x):
        r = torch.einsum("bhtd,hdn->bhtn", x.float(), R)
        return torch.cat([r, -r], -1).argmax(-1)

    return ids(query), ids(key)
