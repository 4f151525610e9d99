"""torch.nn layers built from a spec: the attention core and a multi-head block with projections.

>>> import torch
>>> attn = FastAttention.from_spec("1 + x + x**2/2", head_dim=8)
>>> q = k = v = torch.randn(2, 4, 50, 8)
>>> attn(q, k, v).shape
torch.Size([2, 4, 50, 8])
>>> block = FastMultiheadAttention(32, 4, spec="1 + x + x**2/2")
>>> block(torch.randn(2, 50, 32))[0].shape
torch.Size([2, 50, 32])
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from fastattn.attention.functional import check_gate, check_tensors, fast_attention
from fastattn.attention.state import ReadMostlyState, State, check_read_mostly, check_state, init_state
from fastattn.errors import KernelError
from fastattn.kernels.codegen import Polynomial
from fastattn.kernels.naive import check_normalized, is_finite_real, symmetric_tables
from fastattn.kernels.poly import check_feature_count, check_normalizer, polynomial

__all__ = ["FastAttention", "FastMultiheadAttention"]


class FastAttention(nn.Module):
    """Linear-time attention o_i = sum_{j in M(i)} f(s q_i.k_j) v_j [/ sum_j f], a drop-in for SDPA.

    Takes (q, k, v) of shapes [B, H_q, T_q, D], [B, H_kv, T_k, D], [B, H_kv, T_k, DV] like
    ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)`` and
    returns [B, H_q, T_q, DV]; :meth:`forward` takes SDPA's and fla's keywords (GQA, a carried
    state), :meth:`step` decodes one token against a state. CUDA tensors (and CPU tensors under
    ``TRITON_INTERPRET=1``) run the Triton kernels generated for f where they serve the call;
    other tensors run the pure-torch chunkwise form. Build it with :meth:`from_spec`.

    Parameters
    ----------
    poly : Polynomial
        f, from :func:`fastattn.kernels.polynomial`.
    head_dim : int
        D of q and k.
    head_dim_v : int, optional
        DV of v (default ``head_dim``).
    causal, normalize : bool
    scale : float, optional
        s in f(s q.k); default 1/sqrt(head_dim).
    normalizer_fix : None or "abs"
        The denominator (:func:`fastattn.kernels.poly.check_normalizer`): for f > 0 on R it is
        sum_j f; for f >= 0 with real zeros (x**2, x**4: power attention) sum_j f + eps; an f
        negative somewhere is refused unless "abs", which divides by |sum_j f| + eps. A
        denominator that comes out <= 0 or not finite at run time raises KernelError (``check_output``).
    eps : float
        Finite and > 0.
    chunk, block_f, block_v : int
        Kernel tiling (tokens per chunk, features per tile, v columns per tile).
    backend : "auto", "triton" or "torch"
    check_output : bool or None
        Raise KernelError where a normalised forward's denominator or output comes out wrong
        (see :func:`fastattn.kernels.poly.poly_attention`: None checks on the CPU, and on CUDA
        under ``torch.autograd.detect_anomaly()``, where unchecked bad rows come back NaN).

    Raises
    ------
    KernelError
        At construction: a bad head dim, scale, eps, chunk or backend, an f that cannot be
        normalised, or a feature map above ``fastattn.kernels.poly.MAX_FEATURES`` (checked before
        anything is built).

    Examples
    --------
    >>> attn = FastAttention.from_spec("(1+x)**3", head_dim=4, normalize=False)
    >>> attn.feature_dim
    35
    """

    def __init__(self, poly: Polynomial, head_dim: int, head_dim_v: int | None = None, causal: bool = True,
                 normalize: bool = True, scale: float | None = None, normalizer_fix: str | None = None,
                 eps: float = 1e-6, chunk: int | None = None, block_f: int = 64, block_v: int | None = None,
                 backend: str = "auto", check_output: bool | None = None):
        super().__init__()
        if not isinstance(head_dim, int) or head_dim < 1:
            raise KernelError(f"head_dim={head_dim!r} must be a positive int")
        if head_dim_v is not None and (not isinstance(head_dim_v, int) or head_dim_v < 1):
            raise KernelError(f"head_dim_v={head_dim_v!r} must be a positive int or None")
        if backend not in ("auto", "triton", "torch"):
            raise KernelError(f"backend={backend!r}; use 'auto', 'triton' or 'torch'")
        if scale is not None and not is_finite_real(scale):
            raise KernelError(f"scale={scale!r} must be a finite real number (or None for 1/sqrt(head_dim))")
        if not (is_finite_real(eps) and float(eps) > 0):
            raise KernelError(f"eps={eps!r} must be a finite real number > 0")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise KernelError(f"chunk={chunk!r} must be None or an int >= 1 (tokens per chunk)")
        # the rule every path divides by (x**2 gets "abs"), kept for the decoding kernel
        self._fix = check_normalizer(poly, normalize, normalizer_fix)
        # before any table is built: (1+x)**8 at head dim 64 would be 1.2e10 features
        check_feature_count(poly, head_dim, head_dim_v)
        self.poly = poly
        self.head_dim, self.head_dim_v = head_dim, head_dim_v or head_dim
        self.causal, self.normalize = bool(causal), bool(normalize)
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        self.normalizer_fix, self.eps = normalizer_fix, float(eps)
        self.chunk, self.block_f, self.block_v, self.backend = chunk, block_f, block_v, backend
        self.check_output = None if check_output is None else bool(check_output)
        # the torch path's feature tables, built once; buffers so that .to(device) moves them
        # copies: symmetric_tables caches its tensors, and a module may change its buffers in place
        idx, w_phi, w_psi = (t.clone() for t in symmetric_tables(poly, head_dim, self.scale))
        self.register_buffer("_idx", idx, persistent=False)
        self.register_buffer("_w_phi", w_phi, persistent=False)
        self.register_buffer("_w_psi", w_psi, persistent=False)
        # the decoding kernel's int32/fp32 tables per device, built on first use; F read once (a step is ~us)
        self._decode_tables = {}
        self._feature_dim = poly.feature_dim(head_dim)

    @classmethod
    def from_spec(cls, spec, head_dim: int, head_dim_v: int | None = None, causal: bool = True,
                  normalize: bool = True, scale: float | None = None, degree: int | None = None,
                  **kwargs) -> "FastAttention":
        """Build the layer for ``spec`` (text, Spec, or coefficient dict).

        ``degree`` truncates a non-polynomial f (e.g. ``"exp(x)"``) to its Taylor polynomial;
        the other keywords are those of :class:`FastAttention`.

        Examples
        --------
        >>> FastAttention.from_spec("exp(x)", head_dim=16, degree=2).poly.text
        '1 + x + x**2/2'
        """
        return cls(polynomial(spec, degree), head_dim, head_dim_v=head_dim_v, causal=causal, normalize=normalize,
                   scale=scale, **kwargs)

    @property
    def feature_dim(self) -> int:
        """Size of the symmetric-tensor feature map on ``head_dim``."""
        return self.poly.feature_dim(self.head_dim)

    def _tables(self, scale):
        # the prebuilt tables hold this layer's scale; another scale rebuilds them for the call
        return (self._idx, self._w_phi, self._w_psi) if scale == self.scale else None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, is_causal: bool | None = None,
                scale: float | None = None, enable_gqa: bool = False, g: torch.Tensor | None = None,
                initial_state: State | None = None, output_final_state: bool = False,
                key_padding_mask: torch.Tensor | None = None):
        """Attention of q [B, H_q, T_q, D] over k [B, H_kv, T_k, D], v [B, H_kv, T_k, DV].

        The keywords are those of :func:`fastattn.attention.fast_attention`; ``is_causal`` and
        ``scale`` default to the layer's. Returns o [B, H_q, T_q, DV], or (o, state) with
        ``output_final_state``. A carried state, a padding mask or T_q != T_k run the torch path
        (CUDA tensors through torch ops) unless the layer was built with backend="triton",
        which refuses them.

        Examples
        --------
        >>> attn = FastAttention.from_spec("1 + x + x**2/2", head_dim=4)
        >>> q = torch.randn(1, 4, 6, 4); k = v = torch.randn(1, 2, 6, 4)
        >>> o, st = attn(q, k, v, enable_gqa=True, output_final_state=True)
        >>> o.shape, st.S.shape
        (torch.Size([1, 4, 6, 4]), torch.Size([1, 2, 15, 4]))
        """
        for name, x, d in (("q", q, self.head_dim), ("k", k, self.head_dim), ("v", v, self.head_dim_v)):
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[-1] != d:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise KernelError(f"expected {name} of shape [B, H, T, {d}]; got {name} {got}")
        scale = self.scale if scale is None else scale
        return fast_attention(q, k, v, self.poly, is_causal=self.causal if is_causal is None else bool(is_causal),
                              scale=scale, normalize=self.normalize, enable_gqa=enable_gqa, g=g,
                              initial_state=initial_state, output_final_state=output_final_state,
                              key_padding_mask=key_padding_mask, normalizer_fix=self.normalizer_fix, eps=self.eps,
                              chunk=self.chunk, backend=self.backend, tables=self._tables(scale),
                              check_output=self.check_output)

    def init_state(self, batch: int, heads: int, device=None, dtype: torch.dtype = torch.float32,
                   pending: int | None = None):
        """The empty carried state for ``heads`` key/value heads (:func:`fastattn.attention.init_state`).

        ``dtype`` is the dtype of the q, k, v that will meet it; the state is float32 (float64 for
        float64 inputs). ``pending=R`` gives a :class:`~fastattn.attention.state.ReadMostlyState` instead
        (read-mostly decoding: a step reads a bf16 copy of S and folds into the float32 sums every R tokens;
        :meth:`step` takes it, ``inplace=True`` keeps it in place).

        Examples
        --------
        >>> FastAttention.from_spec("x**2", head_dim=4).init_state(2, 3).S.shape
        torch.Size([2, 3, 10, 4])
        >>> FastAttention.from_spec("x**2", head_dim=4).init_state(2, 3, pending=16).k.shape
        torch.Size([2, 3, 15, 4])
        """
        if pending is None:
            return init_state(batch, heads, self.feature_dim, self.head_dim_v, device=device, dtype=dtype)
        tables = tuple(t.to(device) for t in symmetric_tables(self.poly, self.head_dim, self.scale))
        tables = (tables[0].to(torch.int32), tables[1].to(torch.float32), tables[2].to(torch.float32))
        return init_state(batch, heads, self.feature_dim, self.head_dim_v, device=device, dtype=dtype,
                          pending=pending, head_dim=self.head_dim, tables=tables)

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: State, g: torch.Tensor | None = None, *,
             enable_gqa: bool | None = None, inplace: bool = False, _kernel: bool | None = None,
             _tuning: dict | None = None) -> tuple[torch.Tensor, State]:
        """Decode one token: q [B, H_q, 1, D], k [B, H_kv, 1, D], v [B, H_kv, 1, DV] against ``state``.

        Returns (o [B, H_q, 1, DV], the state with this token added); the token sees itself and every
        token in the state, as the causal prefill of the whole sequence would. Cost O(F DV) per
        head, whatever the context length. Grouped-query heads are allowed when H_q != H_kv
        (``enable_gqa`` defaults to that). ``g`` [B, H_kv, 1] or [B, H_kv], a log forget gate <= 0,
        decays the state first: S <- exp(g) S + psi(k) v^T.

        CUDA tensors that need no gradient (none requires grad, or grad mode is off) run the fused
        decoding kernel (:mod:`fastattn.kernels.decode`: one read and one write of the state);
        float64 inputs and calls that need autograd run torch ops, as does every CPU call (a layer
        built with backend="triton" refuses what the kernel cannot serve). Both give the same
        numbers up to rounding. ``inplace=True`` writes the new sums into ``state``'s own tensors and
        returns that State (no second copy of the state in memory; what a CUDA graph replays);
        by default ``state`` is left as it was.

        A :class:`~fastattn.attention.state.ReadMostlyState` (``init_state(..., pending=R)``) runs read-mostly
        decoding (:mod:`fastattn.kernels.read_mostly`, torch ops off the GPU): the step reads a bf16 copy of S and
        writes only its token, every R-th token folds into the float32 sums. Inference only; pass
        ``inplace=True`` (out of place copies the whole state first).

        Examples
        --------
        >>> attn = FastAttention.from_spec("1 + x + x**2/2", head_dim=4)
        >>> st = attn.init_state(1, 2)
        >>> x = torch.randn(1, 2, 1, 4)
        >>> o, st = attn.step(x, x, x, st)
        >>> o.shape, st.tokens.tolist()
        (torch.Size([1, 2, 1, 4]), [1])
        """
        # _kernel (private, for tests): True runs the kernel on CPU tensors under TRITON_INTERPRET=1, False
        # forces torch ops; _tuning: the kernel's plan overrides
        for name, x in (("q", q), ("k", k), ("v", v)):
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[2] != 1:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise KernelError(f"step decodes one token: {name} must be [B, H, 1, D]; got {got} (use forward "
                                  "with initial_state for several tokens)")
        if state is None:
            raise KernelError("step needs a state: start from layer.init_state(batch, heads, device, dtype) or a "
                              "prefill's output_final_state=True")
        gqa = q.shape[1] != k.shape[1] if enable_gqa is None else enable_gqa
        if isinstance(g, torch.Tensor) and g.dim() == 2:
            g = g[..., None]
        if isinstance(state, ReadMostlyState):
            # read-mostly decoding (inference only): the kernels where the ordinary step would run them, else
            # their torch reference; out of place works on a copy of the whole state
            check_tensors(q, k, v, True, gqa)
            B, Hk = k.shape[:2]
            check_read_mostly(state, B, Hk, self._feature_dim, k.shape[-1], v.shape[-1], q.dtype, q.device)
            if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, g) if isinstance(x, torch.Tensor)):
                raise KernelError("read-mostly decoding does not serve autograd: call step under torch.no_grad()")
            if g is not None:
                # the value check syncs with the host: as for the ordinary step, only where check_output asks
                asked = self.check_output is True or (self.check_output is None
                                                      and (not q.is_cuda or torch.is_anomaly_enabled()))
                if asked and not (q.is_cuda and torch.cuda.is_current_stream_capturing()):
                    check_gate(g, B, Hk, 1, k, True)
                elif (not isinstance(g, torch.Tensor) or not g.dtype.is_floating_point
                      or tuple(g.shape) != (B, Hk, 1) or g.device != k.device):
                    raise KernelError(f"g must be a float tensor [B, H_kv, 1] = [{B}, {Hk}, 1] on {k.device}")
            route = self._step_route(q, k, v, g, state, _kernel)
            if not inplace:
                state = state.clone()
            if route == "kernel":
                from fastattn.kernels.decode import decode_step, decode_tables

                key = str(q.device)
                if key not in self._decode_tables:
                    self._decode_tables[key] = decode_tables(*symmetric_tables(self.poly, self.head_dim, self.scale),
                                                             q.device)
                o, state, zq = decode_step(q, k, v, state, self.poly, self._decode_tables[key], g=g,
                                           normalize=self.normalize, normalizer_fix=self._fix, eps=self.eps,
                                           inplace=True, tuning=_tuning, scale=self.scale)
            else:
                from fastattn.kernels.read_mostly_naive import read_mostly_step

                tables = state.tables or symmetric_tables(self.poly, self.head_dim, self.scale)
                o, zq = read_mostly_step(q, k, v, state, tables, g=g, normalize=self.normalize,
                                         normalizer_fix=self._fix, eps=self.eps)
            return o, state
        if self._step_route(q, k, v, g, state, _kernel) == "kernel":
            return self._kernel_step(q, k, v, state, g, gqa, inplace, _tuning)
        if inplace and torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, g, state.S, state.z)
                                                       if isinstance(x, torch.Tensor)):
            raise KernelError("inplace=True overwrites the state, which autograd needs: call it under "
                              "torch.no_grad(), or without inplace")
        o, new = fast_attention(q, k, v, self.poly, is_causal=True, scale=self.scale, normalize=self.normalize,
                                enable_gqa=gqa, g=g, initial_state=state, output_final_state=True,
                                normalizer_fix=self.normalizer_fix, eps=self.eps, chunk=1, backend="torch",
                                tables=self._tables(self.scale), check_output=self.check_output)
        if not inplace:
            return o, new
        state.S.copy_(new.S)
        state.z.copy_(new.z)
        state.tokens.copy_(new.tokens)
        return o, state

    def _step_route(self, q, k, v, g, state, force) -> str:
        # "kernel" or "torch" for one decoding step; backend="triton" (or force=True) refuses what the
        # kernel cannot serve
        if self.backend == "torch" or force is False:
            return "torch"
        interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
        want = self.backend == "triton" or force is True
        why = None
        if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, g, state.S, state.z)
                                           if isinstance(x, torch.Tensor)):
            why = "autograd (an input requires grad; run it under torch.no_grad())"
        elif q.dtype == torch.float64:
            why = "float64 inputs"
        elif not (q.is_cuda or (interpret and want)):
            why = f"tensors on {q.device} (CUDA, or TRITON_INTERPRET=1 with CPU tensors)"
        if why is None:
            return "kernel"
        if want:
            raise KernelError(f"the decoding kernel does not serve {why}; use backend='auto' or 'torch'")
        return "torch"

    def _kernel_step(self, q, k, v, state, g, gqa, inplace, tuning):
        # imported here: the decoding kernel's module imports triton, which a CPU model never needs
        from fastattn.kernels.decode import decode_step, decode_tables

        check_tensors(q, k, v, True, gqa)
        B, Hk = k.shape[:2]
        check_state(state, B, Hk, self._feature_dim, self.head_dim_v, q.dtype, q.device)
        # the value check of g and of the output costs a host sync: where check_output asks for it
        asked = self.check_output is True or (self.check_output is None
                                              and (not q.is_cuda or torch.is_anomaly_enabled()))
        check = asked and not (q.is_cuda and torch.cuda.is_current_stream_capturing())
        if g is not None:
            if check:
                check_gate(g, B, Hk, 1, k, True)
            elif (not isinstance(g, torch.Tensor) or not g.dtype.is_floating_point or tuple(g.shape) != (B, Hk, 1)
                  or g.device != k.device):
                got = f"{tuple(g.shape)} on {g.device}" if isinstance(g, torch.Tensor) else type(g).__name__
                raise KernelError(f"g must be a float tensor [B, H_kv, 1] = [{B}, {Hk}, 1] on {k.device}; got {got}")
        key = str(q.device)
        if key not in self._decode_tables:
            # rebuilt in float64, not read from the buffers: module.half() would have rounded those
            self._decode_tables[key] = decode_tables(*symmetric_tables(self.poly, self.head_dim, self.scale), q.device)
        o, new, zq = decode_step(q, k, v, state, self.poly, self._decode_tables[key], g=g, normalize=self.normalize,
                                 normalizer_fix=self._fix, eps=self.eps, inplace=inplace, tuning=tuning)
        if self.normalize and check:
            check_normalized(o, zq[..., None], self._fix, q, k, v)
        return o, new

    def extra_repr(self) -> str:
        return (f"f(x)={self.poly.text}, head_dim={self.head_dim}, head_dim_v={self.head_dim_v}, "
                f"features={self.feature_dim}, causal={self.causal}, normalize={self.normalize}, "
                f"scale={self.scale:.4g}")


class FastMultiheadAttention(nn.Module):
    """Multi-head attention with input/output projections around :class:`FastAttention`, shaped like
    ``nn.MultiheadAttention``.

    ``forward(query, key=None, value=None)`` maps [B, T, embed_dim] to [B, T, embed_dim]
    (``batch_first=True``; [T, B, E] otherwise) and returns ``(out, None)``, or ``(out, state)``
    with ``use_cache=True``, as ``nn.MultiheadAttention`` returns ``(out, weights)``: there are
    no attention weights to return, the second slot carries the decoding state instead. Without
    ``key``/``value`` it is self-attention; with them, cross-attention (non-causal).

    Parameters
    ----------
    embed_dim, num_heads : int
        ``embed_dim`` must be divisible by ``num_heads``.
    spec : str, Spec, dict or Polynomial
        f; default ``"1 + x + x**2/2"`` (second-order Taylor of exp, positive on R).
    num_kv_heads : int, optional
        Key/value heads for grouped-query attention (``num_heads`` a multiple of it; default
        ``num_heads``). The carried state has this many heads.
    batch_first : bool
        [B, T, E] (True, the default here) or [T, B, E].
    bias : bool
        Biases in the projections.
    dropout : float
        Probability of zeroing an entry of the attention output (per head, before ``out_proj``) in
        training. ``nn.MultiheadAttention`` drops attention weights instead, which a linear
        attention never forms; this is the nearest regulariser, not the same one.
    degree : int, optional
        Truncation degree for a non-polynomial f.
    causal, normalize, scale, normalizer_fix, eps, chunk, block_f, block_v, backend
        As in :class:`FastAttention`; ``causal`` is the default of ``forward``'s ``is_causal``.

    Notes
    -----
    The projections are one Linear ``qkv`` (query rows, then key rows, then value rows) and
    ``out_proj``, so a self-attention call makes one matrix product for q, k and v.

    Examples
    --------
    >>> m = FastMultiheadAttention(16, 2, spec="(1+x)**3", normalize=False)
    >>> out, _ = m(torch.randn(1, 7, 16))
    >>> out.shape
    torch.Size([1, 7, 16])
    """

    def __init__(self, embed_dim: int, num_heads: int, spec="1 + x + x**2/2", *, num_kv_heads: int | None = None,
                 batch_first: bool = True, bias: bool = True, dropout: float = 0.0, degree: int | None = None,
                 causal: bool = True, normalize: bool = True, scale: float | None = None,
                 normalizer_fix: str | None = None, eps: float = 1e-6, chunk: int | None = None, block_f: int = 64,
                 block_v: int | None = None, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        if num_heads < 1 or embed_dim % num_heads:
            raise KernelError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        kv = num_heads if num_kv_heads is None else num_kv_heads
        if isinstance(kv, bool) or not isinstance(kv, int) or kv < 1 or num_heads % kv:
            raise KernelError(f"num_kv_heads={num_kv_heads!r} must be an int >= 1 dividing num_heads={num_heads}")
        if not (is_finite_real(dropout) and 0.0 <= float(dropout) < 1.0):
            raise KernelError(f"dropout={dropout!r} must be a probability in [0, 1)")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, kv
        self.head_dim = embed_dim // num_heads
        self.batch_first, self.dropout = bool(batch_first), float(dropout)
        self.qkv = nn.Linear(embed_dim, (num_heads + 2 * kv) * self.head_dim, bias=bias, device=device, dtype=dtype)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, device=device, dtype=dtype)
        self.attn = FastAttention.from_spec(spec, self.head_dim, causal=causal, normalize=normalize, scale=scale,
                                            degree=degree, normalizer_fix=normalizer_fix, eps=eps, chunk=chunk,
                                            block_f=block_f, block_v=block_v, backend=backend)

    def _project(self, x, part):
        # rows of qkv: [query heads | key heads | value heads], each head_dim wide
        H, Hk, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        lo, n = {"q": (0, H), "k": (H * Dh, Hk), "v": ((H + Hk) * Dh, Hk)}[part]
        w = self.qkv.weight[lo:lo + n * Dh]
        b = None if self.qkv.bias is None else self.qkv.bias[lo:lo + n * Dh]
        B, T, _ = x.shape
        return nn.functional.linear(x, w, b).view(B, T, n, Dh).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None, *,
                key_padding_mask: torch.Tensor | None = None, is_causal: bool | None = None,
                past_state: State | None = None, use_cache: bool = False):
        """Attend ``query`` over ``key``/``value`` (default: ``query`` itself).

        Parameters
        ----------
        query : tensor [B, T_q, E] ([T_q, B, E] without ``batch_first``)
        key, value : tensor [B, T_k, E], optional
            Both or neither; without them, self-attention.
        key_padding_mask : bool tensor [B, T_k], optional
            True marks padding, as in ``nn.MultiheadAttention``: padded keys change no other token's
            output and do not enter the state. A query that sees no real key gets 0 before ``out_proj``.
        is_causal : bool, optional
            Default: the layer's ``causal``.
        past_state : State, optional
            The state a previous call returned with ``use_cache=True``: this call continues that
            sequence (prefill a prompt, then feed one token per call). A causal call of one token
            with no mask is a :meth:`FastAttention.step` (the fused decoding kernel on CUDA).
        use_cache : bool
            Return the state after this call's keys in the second slot.

        Returns
        -------
        (out, None), or (out, state) with ``use_cache``.

        Examples
        --------
        >>> m = FastMultiheadAttention(8, 2, num_kv_heads=1)
        >>> x = torch.randn(1, 5, 8)
        >>> _, st = m(x[:, :4], use_cache=True)
        >>> out, st = m(x[:, 4:], past_state=st, use_cache=True)
        >>> out.shape, st.tokens.tolist()
        (torch.Size([1, 1, 8]), [5])
        """
        if (key is None) != (value is None):
            raise KernelError("pass both key and value, or neither (self-attention)")
        key = query if key is None else key
        value = key if value is None else value
        for name, x in (("query", query), ("key", key), ("value", value)):
            if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.embed_dim:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                order = "[B, T, E]" if self.batch_first else "[T, B, E]"
                raise KernelError(f"expected {name} of shape {order} with E={self.embed_dim}; got {got}")
        if not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        if key.shape[:2] != value.shape[:2]:
            raise KernelError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must share batch and length")
        B, T, _ = query.shape
        if key is query and value is query:
            q, k, v = self.qkv(query).split([self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim,
                                             self.num_kv_heads * self.head_dim], dim=-1)
            q, k, v = (x.view(B, T, -1, self.head_dim).transpose(1, 2) for x in (q, k, v))
        else:
            q, k, v = self._project(query, "q"), self._project(key, "k"), self._project(value, "v")
        gqa = self.num_kv_heads != self.num_heads
        causal = self.attn.causal if is_causal is None else bool(is_causal)
        if past_state is not None and T == 1 and key_padding_mask is None and causal and key.shape[1] == 1:
            # one new token against the cache: the decoding step (its fused kernel on CUDA)
            o, state = self.attn.step(q, k, v, past_state, enable_gqa=gqa)
            state = state if use_cache else None
        else:
            o = self.attn(q, k, v, is_causal=is_causal, enable_gqa=gqa, initial_state=past_state,
                          output_final_state=use_cache, key_padding_mask=key_padding_mask)
            o, state = o if use_cache else (o, None)
        if self.dropout and self.training:
            o = nn.functional.dropout(o, self.dropout)
        out = self.out_proj(o.transpose(1, 2).reshape(B, T, self.embed_dim))
        return (out if self.batch_first else out.transpose(0, 1)), state
