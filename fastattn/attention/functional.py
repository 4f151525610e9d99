"""``fast_attention``: the SDPA-shaped functional form of polynomial linear attention, with GQA,
a key padding mask, and a carried state (prefill from ``initial_state``, ``output_final_state``).

The torch path here computes, per chunk of C tokens (causal),

    o_c = [mask(f(s Q_c K_c^T)) V_c + phi(Q_c) S_{c-1}] / [row sums + phi(Q_c) z_{c-1}]

with S_{c-1} = S_0 + sum of psi(k) v^T over earlier chunks, S_0 the ``initial_state``; the
last S is the final state. Query heads of one GQA group read the same key/value features and
state: K and V are never repeated. Masked keys get psi = 0, so they enter neither the sums
nor the state.

>>> import torch
>>> q = torch.randn(1, 4, 10, 8); k = v = torch.randn(1, 2, 10, 8)
>>> o, st = fast_attention(q, k, v, "1 + x + x**2/2", enable_gqa=True, output_final_state=True)
>>> o.shape, st.S.shape
(torch.Size([1, 4, 10, 8]), torch.Size([1, 2, 45, 8]))
"""

from __future__ import annotations

import math

import torch

from fastattn.attention import varlen
from fastattn.attention.state import State, check_state, state_dtype
import fastattn.kernels.poly as poly_module
from fastattn.errors import KernelError
from fastattn.kernels import naive
from fastattn.kernels.codegen import load_module
from fastattn.kernels.gated import GATE_FLOOR
from fastattn.kernels.poly import check_feature_count, check_normalizer, choose_backend, polynomial

__all__ = ["fast_attention"]


def check_tensors(query, key, value, is_causal, enable_gqa):
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, torch.Tensor):
            raise KernelError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 4:
            raise KernelError(f"{name} must be [B, H, T, D] like scaled_dot_product_attention; got shape "
                              f"{tuple(x.shape)}")
    (B, Hq, Tq, D), (Bk, Hk, Tk, Dk), (Bv, Hv, Tv, DV) = query.shape, key.shape, value.shape
    if not (B == Bk == Bv):
        raise KernelError(f"batch sizes differ: query {B}, key {Bk}, value {Bv}")
    if Dk != D:
        raise KernelError(f"query head dim {D} != key head dim {Dk}: q.k needs one D")
    if (Hv, Tv) != (Hk, Tk):
        raise KernelError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must share [B, H_kv, T_k]")
    if D < 1 or DV < 1:
        raise KernelError(f"head dims must be >= 1; got D={D}, DV={DV}")
    if Hq != Hk:
        if not enable_gqa:
            raise KernelError(f"query has {Hq} heads and key/value {Hk}: pass enable_gqa=True for grouped-query "
                              "attention (H_q a multiple of H_kv)")
        if Hk < 1 or Hq % Hk:
            raise KernelError(f"enable_gqa=True needs H_q a multiple of H_kv; got H_q={Hq}, H_kv={Hk}")
    if is_causal and Tq != Tk:
        raise KernelError(f"is_causal=True needs as many queries as keys; got T_q={Tq}, T_k={Tk}: carry an earlier "
                          "prefix as initial_state, or pass is_causal=False")
    if not (query.dtype == key.dtype == value.dtype) or not query.dtype.is_floating_point:
        raise KernelError(f"query, key, value must share one real floating dtype; got {query.dtype}, {key.dtype}, "
                          f"{value.dtype}")
    if not (query.device == key.device == value.device):
        raise KernelError(f"query, key, value must be on one device; got {query.device}, {key.device}, "
                          f"{value.device}")


def _check_mask(mask, B, Tk, device):
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        what = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise KernelError(f"key_padding_mask must be a bool tensor [B, T_k] (True = padding, as in "
                          f"nn.MultiheadAttention); got {what}: an additive float mask has no meaning for f(s q.k), "
                          "pass mask == float('-inf') instead")
    if tuple(mask.shape) != (B, Tk):
        raise KernelError(f"key_padding_mask has shape {tuple(mask.shape)}; expected [B, T_k] = [{B}, {Tk}]")
    if mask.device != device:
        raise KernelError(f"key_padding_mask is on {mask.device}, the keys on {device}: move it with .to(device)")


def _check_cu_seqlens(cu, B, Tq, Tk, device):
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.dtype not in (torch.int32, torch.int64) or len(cu) < 2:
        got = f"{tuple(cu.shape)} {cu.dtype}" if isinstance(cu, torch.Tensor) else type(cu).__name__
        raise KernelError(f"cu_seqlens must be a 1-D int32/int64 tensor of N + 1 offsets (0, ..., T); got {got}")
    if B != 1 or Tq != Tk:
        raise KernelError(f"cu_seqlens packs sequences into one row: needs B = 1 and T_q == T_k; got B={B}, "
                          f"T_q={Tq}, T_k={Tk}")
    if cu.device != device:
        raise KernelError(f"cu_seqlens is on {cu.device}, the keys on {device}: move it with .to(device)")
    c = cu.tolist()
    if c[0] != 0 or c[-1] != Tq or any(b < a for a, b in zip(c[:-1], c[1:])):
        raise KernelError(f"cu_seqlens={c} must start at 0, end at T={Tq} and never decrease")
    return len(c) - 1


def check_gate(g, B, Hk, Tk, key, is_causal, values=None):
    """Refuse a gate of the wrong shape, dtype or device, and (``values``) one with an entry > 0 or NaN. ``values``
    None reads g's values on the CPU and, on CUDA, under ``torch.autograd.detect_anomaly()``: that read is a host
    sync, which cost a gated x d64 call 25 % of its fwd+bwd time on an H200 (v20: 4.47 against 3.34 ms)."""
    if not is_causal:
        raise KernelError("g (a forget gate) needs is_causal=True: a decay orders the keys")
    if not isinstance(g, torch.Tensor) or not g.dtype.is_floating_point or tuple(g.shape) != (B, Hk, Tk):
        got = f"{tuple(g.shape)} {g.dtype}" if isinstance(g, torch.Tensor) else type(g).__name__
        raise KernelError(f"g must be a float tensor [B, H_kv, T_k] = [{B}, {Hk}, {Tk}] (one log gate per token and "
                          f"key/value head); got {got}")
    if g.device != key.device:
        raise KernelError(f"g is on {g.device}, the keys on {key.device}: move it with .to(device)")
    if values is False or (values is None and g.is_cuda and not torch.is_anomaly_enabled()):
        return
    bad = ~(g <= 0)  # NaN fails too
    if bool(bad.any()):
        where = tuple(bad.nonzero()[0].tolist())
        raise KernelError(f"g must be <= 0 and not NaN (a log forget gate, fla's convention); g{list(where)} = "
                          f"{g[where].item():.6g}: pass logsigmoid(x) or -softplus(x)")


def _torch_attention(q, k, v, poly, scale, causal, normalize, fix, eps, chunk, tables, state, keep, check_output,
                     g=None):
    """The torch path (any real float dtype; 16-bit computed in float32): returns (o, final State)."""
    B, Hq, Tq, D = q.shape
    Hk, Tk, DV = k.shape[1], k.shape[2], v.shape[-1]
    G = Hq // Hk
    out_dtype, work = q.dtype, state_dtype(q.dtype)
    q0, k0, v0 = q, k, v
    q, k, v = q.to(work), k.to(work), v.to(work)
    phi = naive.symmetric_features(q, poly, scale, "phi", tables)
    F = phi.shape[-1]
    phi = phi.view(B, Hk, G, Tq, F)
    psi = naive.symmetric_features(k, poly, scale, "psi", tables)  # [B, Hk, Tk, F]
    if state is None:
        S0 = torch.zeros(B, Hk, F, DV, device=q.device, dtype=work)
        z0 = torch.zeros(B, Hk, F, device=q.device, dtype=work)
        seen = torch.zeros(B, dtype=torch.int64, device=q.device)
    else:
        S0, z0, seen = state.S, state.z, state.tokens
    if keep is not None:
        # where, not a product: a padded key or value that is inf must not turn 0 * inf into NaN
        psi = torch.where(keep[:, None, :, None], psi, 0.0)
        v = torch.where(keep[:, None, :, None], v, 0.0)
    real = keep.to(torch.int64) if keep is not None else torch.ones(B, Tk, dtype=torch.int64, device=q.device)
    if not causal:
        S1 = S0 + psi.transpose(-1, -2) @ v
        z1 = z0 + psi.sum(-2)
        n = phi @ S1[:, :, None]  # [B, Hk, G, Tq, DV]
        z = (phi @ z1[:, :, None, :, None])[..., 0]  # [B, Hk, G, Tq]
        visible = (seen + real.sum(-1))[:, None].expand(B, Tq)
    else:
        C = max(1, min(chunk, Tq))
        N = -(-Tq // C)
        pad = N * C - Tq

        def split(x):  # [..., T, X] -> [..., N, C, X]; padded keys have psi = 0, so they add nothing
            return torch.nn.functional.pad(x, (0, 0, 0, pad)).unflatten(-2, (N, C))

        qc, kc, vc, phic, psic = split(q.reshape(B, Hk, G, Tq, D)), split(k), split(v), split(phi), split(psi)
        if g is None:
            # S_0, then S_0 + chunk 1, ...: the state before each chunk, and after the last
            cum = torch.cat([S0[:, :, None], psic.transpose(-1, -2) @ vc], 2).cumsum(2)  # [B, Hk, N+1, F, DV]
            zcum = torch.cat([z0[:, :, None], psic.sum(-2)], 2).cumsum(2)  # [B, Hk, N+1, F]
        else:
            # decays within a chunk from its local cumulative gate b; a masked key's gate is 0 (padding decays nothing)
            # g = -inf (a reset) would make -inf - (-inf) = NaN in the differences below: the kernels' floor
            gw = g.to(work).clamp_min(GATE_FLOOR)
            gw = gw if keep is None else torch.where(keep[:, None, :], gw, 0.0)
            b = split(gw[..., None])[..., 0].cumsum(-1)  # [B, Hk, N, C]
            wk = torch.exp(b[..., -1:] - b)[..., None]  # key i's weight in its chunk's end state
            add, zadd = (psic * wk).transpose(-1, -2) @ vc, (psic * wk).sum(-2)
            cum, zcum = [S0], [z0]
            for c in range(N):  # the state scan: S_c = exp(b_last) S_{c-1} + sum_i exp(b_last - b_i) psi v^T
                decay = torch.exp(b[:, :, c, -1])
                cum.append(decay[..., None, None] * cum[-1] + add[:, :, c])
                zcum.append(decay[..., None] * zcum[-1] + zadd[:, :, c])
            cum, zcum = torch.stack(cum, 2), torch.stack(zcum, 2)
        S1, z1 = cum[:, :, N], zcum[:, :, N]
        valid = torch.arange(N * C, device=q.device).reshape(N, C) < Tq
        mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril() & valid[:, None, :]  # [N, C, C]
        if keep is not None:
            mask = mask & split(keep[..., None])[..., 0][:, None, None, :, None, :]  # [B, 1, 1, N, C, C]
        a = naive.horner(scale * (qc @ kc[:, :, None].transpose(-1, -2)), poly).masked_fill(~mask, 0.0)
        if g is not None:
            tri = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
            # exp(b_t - b_i) for i <= t; the upper triangle is -inf before exp so it cannot overflow
            a = a * torch.exp((b[..., :, None] - b[..., None, :]).masked_fill(~tri, -math.inf))[:, :, None]
            phic = phic * torch.exp(b)[:, :, None, ..., None]
        n = (a @ vc[:, :, None] + phic @ cum[:, :, None, :N]).flatten(-3, -2)[..., :Tq, :]
        z = (a.sum(-1) + (phic @ zcum[:, :, None, :N, :, None])[..., 0]).flatten(-2)[..., :Tq]
        visible = seen[:, None] + real.cumsum(-1)
    final = State(S1, z1, seen + real.sum(-1))
    n, z = n.reshape(B, Hq, Tq, DV), z.reshape(B, Hq, Tq)
    if not normalize:
        return n.to(out_dtype), final
    # a query that sees no key at all (every visible key masked) gets 0, not 0/0
    empty = (visible == 0)[:, None, :]
    d = torch.where(empty, torch.ones_like(z), naive.guarded_denominator(z, fix, eps))
    o = torch.where(empty[..., None], torch.zeros_like(n), n / d[..., None]).to(out_dtype)
    if check_output is not False:
        naive.check_normalized(o, torch.where(empty, torch.ones_like(z), z), fix, q0, k0, v0)
    return o, final


def _per_query_head(rep, tensors, initial_state):
    """``tensors`` (K, V, and g when given) and the initial state's (S, z) repeated ``rep`` times along the heads,
    so each query head of a group reads its own copy (autograd sums their gradients back)."""
    init = None if initial_state is None else (initial_state.S, initial_state.z)
    if rep == 1:
        return tensors, init
    return (tuple(x.repeat_interleave(rep, 1) for x in tensors),
            None if init is None else tuple(x.repeat_interleave(rep, 1) for x in init))


def _final_state(S, z, rep, initial_state, q, tokens):
    """The State after ``tokens`` more keys: (S, z) read from each group's first head when they were repeated
    ``rep`` times (every head of a group sums the same keys)."""
    seen = initial_state.tokens if initial_state is not None else torch.zeros(q.shape[0], dtype=torch.int64,
                                                                              device=q.device)
    return State(S[:, ::rep], z[:, ::rep], seen + tokens)


def _state_from_keys(k, v, g, poly, scale, tables=None, block=None):
    """The State after keys ``k``, values ``v`` (and gate ``g``, or None) from an empty start, in fp32 (the
    inputs' :func:`state_dtype`): S = sum_i w_i psi(k_i) v_i^T, z = sum_i w_i psi(k_i), w_i = exp(g_{i+1} + ... + g_T).

    What the quadratic flash kernels cannot give (they form no feature), by torch GEMMs over blocks of tokens
    whose features are recomputed in the backward (``torch.utils.checkpoint``): about 2 T F DV FLOPs and one
    block of features in memory (``block`` tokens; default: ~256 MB of them). Differentiable in k, v and g.

    >>> k, v = torch.randn(2, 1, 2, 9, 3)
    >>> st = _state_from_keys(k, v, None, polynomial("x"), 1.0)
    >>> bool(torch.allclose(st.S, k.transpose(-1, -2) @ v, atol=1e-5)), tuple(st.z.shape), st.tokens.tolist()
    (True, (1, 2, 3), [9])
    """
    from torch.utils.checkpoint import checkpoint

    B, H, T, D = k.shape
    DV = v.shape[-1]
    work = state_dtype(k.dtype)
    tables = naive.symmetric_tables(poly, D, scale) if tables is None else tables
    F = tables[0].shape[1]
    if g is None:
        w = torch.ones(B, H, T, device=k.device, dtype=work)
    else:
        # sum over m > i as a reverse cumulative sum in float64: T terms, no cancellation against G_T
        gw = g.to(torch.float64).clamp_min(GATE_FLOOR)
        w = torch.exp(gw.flip(-1).cumsum(-1).flip(-1) - gw).to(work)

    def part(kb, vb, wb):
        # the weights go on [v, 1] (DV + 1 columns), not on the F features: one GEMM gives S and z
        psi = naive.symmetric_features(kb.to(work), poly, scale, "psi", tables)
        sz = psi.transpose(-1, -2) @ torch.cat([vb.to(work) * wb[..., None], wb[..., None]], -1)
        return sz[..., :DV], sz[..., DV]

    S = torch.zeros(B, H, F, DV, device=k.device, dtype=work)
    z = torch.zeros(B, H, F, device=k.device, dtype=work)
    step = block or max(16, min(T, 2**26 // max(1, B * H * F)))
    grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (k, v, g))
    for t0 in range(0, T, step):
        args = (k[..., t0:t0 + step, :], v[..., t0:t0 + step, :], w[..., t0:t0 + step])
        dS, dz = checkpoint(part, *args, use_reentrant=False) if grad else part(*args)
        S, z = S + dS, z + dz
    return State(S, z, torch.full((B,), T, dtype=torch.int64, device=k.device))


def _triton_kernels(q, k, v, poly, scale, causal, normalize, fix, eps, chunk, check_output, initial_state,
                    output_final_state):
    """The Triton path, with or without a carried state (in the State's feature order): a large map at short T
    without a carried state runs on the quadratic flash kernels (:func:`fastattn.kernels.poly.quadratic_route`).
    Otherwise grouped-query heads are repeated here: the kernels' own GQA indexing failed its GPU check (H200: dk NaN on the Kronecker route
    at G = 2, T = 8192; 464 KB of shared memory asked by the fused backward of x d64 at G = 4)."""
    if initial_state is None and not output_final_state and poly_module.quadratic_route(
            poly, q, k, v, causal, check_output=check_output):
        # the flash kernels index a GQA group's key/value head themselves: nothing is repeated
        from fastattn.kernels.poly_flash import poly_flash_attention

        return poly_flash_attention(q, k, v, poly, scale=scale, is_causal=causal, normalize=normalize,
                                    normalizer_fix=fix, eps=eps)
    rep = q.shape[1] // k.shape[1]
    (k, v), init = _per_query_head(rep, (k, v), initial_state)
    try:
        out = load_module(poly).poly_attention(q, k, v, scale=scale, causal=causal, normalize=normalize,
                                               normalizer_fix=fix, eps=eps, chunk=chunk, check_output=check_output,
                                               initial_state=init, output_final_state=output_final_state)
    except ValueError as exc:
        if isinstance(exc, KernelError):
            raise
        raise KernelError(str(exc)) from exc
    if not output_final_state:
        return out
    o, (SF, zF) = out
    return o, _final_state(SF, zF, rep, initial_state, q, k.shape[2])


# The gated kernels passed their bf16 check on an H200 (run v19) at 64, 153 and 8,385 features (x d64, Based d16,
# 1 + x + x**2/2 d128: rel-RMS <= 4.5e-3) and failed it at 2,080 (x**2 d64: o 0.25): x**2's denominator has no
# floor (f(0) = 0), so after a strong gate a row's few terms are small against the bf16 rounding of its 2,080
# feature products. A positive f puts the row's own key, f(x_tt) >= min f > 0, in every denominator.
GATED_GPU_MAX_FEATURES = 256


def gated_flash_serves(positive, is_cuda):
    """Whether the gated quadratic flash kernels (``poly_flash_attention(..., g=g)``) may take a map on this device:
    any map on the CPU (the interpreter; the tests hold them to the float64 reference), and on CUDA an f proven
    positive. Their bf16 check on an H200 (v20, ``benchmarks/gated_check.py``, B2 H8 T4096 with a run of g = -5)
    passed for 1 + x + x**2/2 d64 (rel-RMS o 2.9e-3, dq 3.8e-3, dk 3.8e-3, dv 3.4e-3, dg 3.5e-3) and failed for
    x**2 (dq 0.10, dk 0.11 against 0.08): the same floorless denominator as above.

    >>> gated_flash_serves(True, True), gated_flash_serves(False, True), gated_flash_serves(False, False)
    (True, False, True)
    """
    return not is_cuda or bool(positive)


def gated_kernels_serve(features, is_cuda, positive=False):
    """Whether the gated Triton kernels take a map of ``features`` features on this device: any map on the CPU
    (fp32, the interpreter), and on CUDA a small map or one whose f is proven positive on the reals.

    >>> gated_kernels_serve(153, True), gated_kernels_serve(2080, True), gated_kernels_serve(2080, False)
    (True, False, True)
    >>> gated_kernels_serve(8385, True, positive=True)
    True
    """
    return not is_cuda or features <= GATED_GPU_MAX_FEATURES or bool(positive)


def _triton_gated(q, k, v, g, poly, scale, normalize, fix, eps, chunk, tables, check_output, initial_state,
                  output_final_state):
    """The gated Triton kernels (:mod:`fastattn.kernels.gated`); they read a GQA group's key/value head, g and
    state from each of its query heads, so nothing is repeated, except on CUDA: their GPU check ran at G = 1
    only, so there K, V, g and the state are repeated per group until a grouped run passes it."""
    from fastattn.kernels.gated import gated_attention

    rep = q.shape[1] // k.shape[1] if q.is_cuda else 1
    (k, v, g), init = _per_query_head(rep, (k, v, g), initial_state)
    o, final = gated_attention(q, k, v, g, poly, scale=scale, normalize=normalize, normalizer_fix=fix, eps=eps,
                               chunk=chunk, tables=tables, initial_state=init, output_final_state=output_final_state,
                               check_output=check_output)
    if not output_final_state:
        return o
    return o, _final_state(final[0], final[1], rep, initial_state, q, k.shape[2])


def fast_attention(query, key, value, spec, *, is_causal=True, scale=None, normalize=True, enable_gqa=False,
                   g=None, initial_state=None, output_final_state=False, cu_seqlens=None, key_padding_mask=None,
                   normalizer_fix=None, eps=1e-6, degree=None, chunk=None, backend="auto", tables=None,
                   check_output=None):
    """Polynomial linear attention o_i = sum_{j in M(i)} f(s q_i.k_j) v_j [/ sum_j f], shaped like SDPA.

    A drop-in for ``torch.nn.functional.scaled_dot_product_attention(query, key, value,
    is_causal=..., scale=..., enable_gqa=...)`` with f in place of exp, plus fla's carried state.

    Parameters
    ----------
    query : tensor [B, H_q, T_q, D]
    key : tensor [B, H_kv, T_k, D]
    value : tensor [B, H_kv, T_k, DV]
        One real floating dtype and one device.
    spec : str, Spec, dict or Polynomial
        f (see :func:`fastattn.kernels.polynomial`); ``degree`` truncates a non-polynomial f.
    is_causal : bool
        Query i sees keys j <= i (then T_q == T_k; an earlier prefix comes in as ``initial_state``).
        Non-causal attention allows T_q != T_k (cross-attention).
    scale : float, optional
        s in f(s q.k); default 1/sqrt(D).
    normalize : bool
        Divide by sum_j f (see :func:`fastattn.kernels.poly.check_normalizer` and ``normalizer_fix``).
    enable_gqa : bool
        As in SDPA: H_q a multiple of H_kv, query head h reads key/value head h // (H_q / H_kv). The
        torch path and the gated Triton kernels never copy K or V; the ungated Triton path repeats them
        (its kernels' own GQA indexing has not passed its GPU check), and a carried state with them.
    g : tensor [B, H_kv, T_k], optional
        Log forget gate per token and key/value head, <= 0 (fla's convention; a fixed per-head decay
        is a constant g): S_t = exp(g_t) S_{t-1} + psi(k_t) v_t^T, i.e. pair (t, i) weighs
        exp(g_{i+1} + ... + g_t). Causal only. A padded key's gate is taken as 0. g = -inf (a reset) is
        taken as :data:`fastattn.kernels.gated.GATE_FLOOR` = -128 (exp = 2.6e-56). Differentiable.
        Its values (<= 0, no NaN) are checked on the CPU (unless ``check_output=False``), and on CUDA with
        ``check_output=True`` or under ``torch.autograd.detect_anomaly()`` (a host sync); otherwise a
        positive entry there is taken as given (a growing state) and a NaN gives NaN outputs.
    initial_state : State, optional
        Sums over an earlier prefix (:func:`fastattn.attention.init_state`, or a previous call's
        final state); every query also sees those tokens. Shape [B, H_kv, F, DV], in
        :func:`fastattn.attention.state.state_dtype` of the inputs.
    output_final_state : bool
        Also return the state after the last key.
    cu_seqlens : int tensor [N + 1], optional
        Varlen packing as in fla and FlashAttention: B = 1 and sequence n is tokens
        cu_seqlens[n]:cu_seqlens[n + 1] (0 first, T last, non-decreasing); no token sees another
        sequence and no state crosses a boundary. ``initial_state`` and the final state then have
        one row per sequence ([N, H_kv, F, DV]). The torch path loops over the sequences.
    key_padding_mask : bool tensor [B, T_k], optional
        True marks a padding key, as in ``nn.MultiheadAttention``: it takes no part in any output nor
        in the state. A query that sees no key at all comes back as 0 (SDPA gives NaN).
    normalizer_fix, eps, chunk, check_output
        As in :func:`fastattn.kernels.poly.poly_attention`.
    backend : "auto", "triton" or "torch"
        The Triton kernels serve a carried state (``initial_state``, ``output_final_state``, gradients
        both ways) and a gate g (:mod:`fastattn.kernels.gated`: phi(q), psi(k) materialised by torch,
        chunk kernels with the decays, GQA without repeating K, V, g or the state; ``chunk`` a power
        of two >= 16; on CUDA up to ``GATED_GPU_MAX_FEATURES`` features, or any size for an f proven
        positive, what its GPU check passed; a gated map of >= 1000 features without ``initial_state``
        runs the quadratic flash kernels instead (on CUDA an f proven positive), its final state from
        torch GEMMs over the keys), and cu_seqlens (:mod:`fastattn.attention.varlen`: causal calls as
        one zero-padded batch, others one call per sequence), but neither a padding mask, T_q != T_k nor float64 inputs
        yet: with any of these, "auto" runs the torch path (CUDA tensors through torch ops) and
        "triton" raises KernelError naming the missing support.
    tables : tuple, optional
        Precomputed :func:`fastattn.kernels.naive.symmetric_tables` for this f, D and scale.

    Returns
    -------
    o : tensor [B, H_q, T_q, DV]
    state : State
        Only with ``output_final_state``.

    Raises
    ------
    KernelError
        Bad shapes (naming them), a GQA ratio that is not a whole number, a causal call with
        T_q != T_k, a mask or state of the wrong shape, dtype or device, an unsupported Triton
        request, or what :func:`fastattn.kernels.poly.poly_attention` refuses.

    Examples
    --------
    >>> q = k = v = torch.randn(1, 2, 12, 4)
    >>> o_a, st = fast_attention(q[:, :, :7], k[:, :, :7], v[:, :, :7], "1 + x + x**2/2", output_final_state=True)
    >>> o_b = fast_attention(q[:, :, 7:], k[:, :, 7:], v[:, :, 7:], "1 + x + x**2/2", initial_state=st)
    >>> o = fast_attention(q, k, v, "1 + x + x**2/2")
    >>> bool(torch.allclose(torch.cat([o_a, o_b], 2), o, atol=1e-5))
    True
    """
    poly = polynomial(spec, degree)
    fix = check_normalizer(poly, normalize, normalizer_fix)
    check_tensors(query, key, value, is_causal, enable_gqa)
    B, Hq, Tq, D = query.shape
    Hk, Tk, DV = key.shape[1], key.shape[2], value.shape[-1]
    check_feature_count(poly, D, DV)
    if scale is not None and not naive.is_finite_real(scale):
        raise KernelError(f"scale={scale!r} must be a finite real number (or None for 1/sqrt(D))")
    if not (naive.is_finite_real(eps) and float(eps) > 0):
        raise KernelError(f"eps={eps!r} must be a finite real number > 0")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise KernelError(f"chunk={chunk!r} must be None or an int >= 1 (tokens per chunk)")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if key_padding_mask is not None:
        _check_mask(key_padding_mask, B, Tk, key.device)
    if g is not None:
        check_gate(g, B, Hk, Tk, key, is_causal, values=check_output)
    n_seq = B if cu_seqlens is None else _check_cu_seqlens(cu_seqlens, B, Tq, Tk, key.device)
    F = poly.feature_dim(D)
    if initial_state is not None:
        check_state(initial_state, n_seq, Hk, F, DV, query.dtype, query.device)
    # a gated large map at short T: the quadratic flash kernels take the gate per pair (no feature products)
    # (a final state comes from torch GEMMs over the keys, _state_from_keys)
    gated_flash = (g is not None and initial_state is None
                   and gated_flash_serves(poly.positive, query.is_cuda)
                   and poly_module.quadratic_route(poly, query, key, value, is_causal, check_output=check_output,
                                                   gated=True))
    needs = [name for name, on in (("key_padding_mask", key_padding_mask is not None),
                                   (f"a gate g at {F} > {GATED_GPU_MAX_FEATURES} features of an f not proven positive on a GPU",
                                    g is not None and not gated_flash
                                    and not gated_kernels_serve(F, query.is_cuda, poly.positive)),
                                   (f"T_q={Tq} != T_k={Tk}", Tq != Tk),
                                   ("float64 inputs", query.dtype == torch.float64)) if on]
    route = choose_backend(query, backend)
    if route == "triton" and needs:
        if backend == "triton":
            raise KernelError(f"backend='triton': the Triton kernels do not support {', '.join(needs)} yet; "
                              "use backend='auto' or 'torch' (the torch path serves them)")
        route = "torch"
    if route == "triton":
        def run(q, k, v, gate, _keep, state, final):  # one batched Triton call; the inputs are checked above
            if gate is not None and gated_flash:
                from fastattn.kernels.poly_flash import poly_flash_attention

                o = poly_flash_attention(q, k, v, poly, scale=scale, is_causal=is_causal, normalize=normalize,
                                         normalizer_fix=fix, eps=eps, g=gate)
                return (o, _state_from_keys(k, v, gate, poly, scale, tables)) if final else o
            if gate is not None:
                return _triton_gated(q, k, v, gate, poly, scale, normalize, fix, eps, chunk, tables, check_output,
                                     state, final)
            return _triton_kernels(q, k, v, poly, scale, is_causal, normalize, fix, eps, chunk, check_output, state,
                                   final)

        if cu_seqlens is None:
            return run(query, key, value, g, None, initial_state, output_final_state)
        return varlen.varlen_call(run, query, key, value, cu_seqlens, is_causal=is_causal, g=g,
                                  initial_state=initial_state, output_final_state=output_final_state)
    keep = None if key_padding_mask is None else ~key_padding_mask
    chunk = 64 if chunk is None else chunk
    if cu_seqlens is None:
        o, final = _torch_attention(query, key, value, poly, scale, is_causal, normalize, fix, eps, chunk, tables,
                                    initial_state, keep, check_output, g)
        return (o, final) if output_final_state else o
    def run(q, k, v, gate, kept, state, final):  # one sequence on the torch path
        o, fin = _torch_attention(q, k, v, poly, scale, is_causal, normalize, fix, eps, chunk, tables, state, kept,
                                  check_output, gate)
        return (o, fin) if final else o

    return varlen.varlen_call(run, query, key, value, cu_seqlens, is_causal=is_causal, g=g, keep=keep,
                              initial_state=initial_state, output_final_state=output_final_state, pad=False)

