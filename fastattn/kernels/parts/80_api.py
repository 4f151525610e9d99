"""The public API: output checks, the autograd Function, ``poly_attention`` and ``PolyAttention``.
This docstring is not copied into the generated module.
"""

def _check_normalized(o, z, fix_abs, q, k, v):
    """ValueError where a normalised output cannot be right, instead of returning it: the normaliser
    z = sum_j f(s q_i.k_j) <= 0 or not finite where the denominator is z (f > 0 on R, so the feature
    sums lost it to 16-bit rounding or f overflowed), z not finite where it is |z| + eps, or o not
    finite (16-bit features that overflowed in the numerator). Non-finite inputs are the caller's
    (they propagate as in SDPA): nothing is raised then. Two reductions and one host sync, skipped
    while a CUDA graph is captured (fastattn.kernels.naive.check_normalized is the same rule)."""
    if not z.numel() or (z.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    lo, hi = torch.aminmax(z)
    lo, hi, o_ok = torch.stack([lo.double(), hi.double(), torch.isfinite(o).all().double()]).tolist()
    # NaN fails both comparisons
    z_ok = (lo > -math.inf if fix_abs else lo > 0) and hi < math.inf
    if (z_ok and o_ok) or not all(bool(torch.isfinite(x).all()) for x in (q, k, v)):
        return
    if not z_ok:
        bad = ~torch.isfinite(z) if fix_abs else ~(z > 0) | ~torch.isfinite(z)
        where = tuple(bad.nonzero()[0].tolist())
        what, fix = ("not finite", "") if fix_abs else ("<= 0 or not finite", ", or normalizer_fix='abs'")
        raise ValueError(f"normalize=True: the normaliser sum_j f(s q_i.k_j) is {z[where].item():.6g} at [b, h, t] "
                         f"= {list(where)} ({int(bad.sum())} of {z.numel()} rows {what}) although q, k, v are finite "
                         f"({q.dtype}): f(x) = {COEFFS_TEXT} overflowed or rounding lost the sum; use float32 inputs, "
                         f"a smaller scale or smaller inputs{fix}")
    bad = ~torch.isfinite(o)
    where = tuple(bad.nonzero()[0].tolist())
    raise ValueError(f"the output is {o[where].item()} at [b, h, t, c] = {list(where)} ({int(bad.sum())} of "
                     f"{o.numel()} entries not finite) although q, k, v are finite ({q.dtype}): the features of "
                     f"f(x) = {COEFFS_TEXT} overflowed the dtype; use float32 inputs, a smaller scale or smaller "
                     "inputs")


class PolyAttentionFunction(torch.autograd.Function):
    """Autograd wrapper of :func:`poly_attention_fwd` / :func:`poly_attention_bwd`. With a carried state
    (``S_init``, ``z_init`` [B*H, F, DV], [B*H, F] in the State's basis, and / or ``final``) gradients flow
    to the initial state and from the final one, which comes back as two more outputs (S, z)."""

    @staticmethod
    def forward(ctx, q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v, segments,
                check_output=None, tuning=None, S_init=None, z_init=None, final=False):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        initial = None if S_init is None else (S_init, z_init)
        out = _poly_attention_fwd(q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v,
                                  segments, tuning, initial, final)
        o, z, state = out[:3]
        if normalize and (check_output or (check_output is None and (not q.is_cuda or torch.is_anomaly_enabled()))):
            _check_normalized(o, z, fix_abs, q, k, v)
        empty = o.new_empty(0)
        S0, Z0, ctx.seg_tokens = state if state is not None else (empty, empty, 0)
        ctx.has_state = state is not None
        ctx.has_init = initial is not None
        ctx.carried = initial is not None or final
        init = initial if initial is not None else (empty, empty)
        ctx.save_for_backward(q, k, v, o, z if z is not None else empty, S0, Z0, *init)
        ctx.scale, ctx.causal, ctx.normalize, ctx.fix_abs, ctx.eps = scale, causal, normalize, fix_abs, eps
        ctx.chunk, ctx.block_f, ctx.block_v, ctx.segments, ctx.tuning = chunk, block_f, block_v, segments, tuning
        if not final:
            return o
        # the unused outputs' gradients come back as None, not zeros: no pass for a final state nobody reads
        ctx.set_materialize_grads(False)
        return o, out[3][0], out[3][1]

    @staticmethod
    def backward(ctx, do, dS_final=None, dz_final=None):
        q, k, v, o, z, S0, Z0, S_init, z_init = ctx.saved_tensors
        state = (S0, Z0, ctx.seg_tokens) if ctx.has_state else None
        if do is None:
            do = torch.zeros_like(o)
        args = (q, k, v, o, z, do, ctx.scale, ctx.causal, ctx.normalize, ctx.fix_abs, ctx.eps, ctx.chunk, ctx.block_f,
                ctx.block_v, ctx.segments, state, ctx.tuning)
        if not ctx.carried:
            dq, dk, dv, _ = poly_attention_bwd(*args)
            return dq, dk, dv, None, None, None, None, None, None, None, None, None, None, None, None, None, None
        dfinal = None
        if dS_final is not None or dz_final is not None:
            BH, F, DV = q.shape[0] * q.shape[1], feature_dim(q.shape[-1]), v.shape[-1]
            dS = dS_final if dS_final is not None else q.new_zeros((BH, F, DV), dtype=torch.float32)
            dfinal = (dS.contiguous(), None if dz_final is None else dz_final.contiguous())
        want = ctx.has_init and (ctx.needs_input_grad[14] or ctx.needs_input_grad[15])
        dq, dk, dv, dinit = poly_attention_bwd(*args, initial=(S_init, z_init) if ctx.has_init else None,
                                               dfinal=dfinal, want_dinit=want)
        dS0, dz0 = dinit if dinit is not None else (None, None)
        return dq, dk, dv, None, None, None, None, None, None, None, None, None, None, None, dS0, dz0, None


def _finite(x):
    if isinstance(x, (bool, complex)):
        return False
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _check_pow2(name, value, lo):
    if not isinstance(value, int) or value < lo or value & (value - 1):
        raise ValueError(f"{name}={value!r} must be a power of two >= {lo}")


def poly_attention(q, k, v, scale=None, causal=True, normalize=True, normalizer_fix=None, eps=1e-6,
                   chunk=None, block_f=64, block_v=None, segments=None, check_output=None, tuning=None,
                   initial_state=None, output_final_state=False):
    """Linear attention with the polynomial f of this module (see the module docstring).

    Parameters
    ----------
    q, k : tensor [B, H, T, D]
    v : tensor [B, H, T, DV]
        fp32, fp16 or bf16 (one dtype, one device), on a CUDA device (or on the CPU under
        TRITON_INTERPRET=1, fp32 or fp16 only).
    scale : float, optional
        s in f(s q.k); default 1/sqrt(D) like torch SDPA.
    causal : bool
        Key j is visible to query i iff j <= i.
    normalize : bool
        Divide by sum_j f(s q_i.k_j). Refused when f can be <= 0 on the reals unless
        ``normalizer_fix="abs"``, which divides by |sum_j f(s q_i.k_j)| + eps instead.
    chunk, block_f, block_v : int
        Tokens per chunk (None: 32 on the fused path for small feature maps, else 64), features
        per tile (on the Kronecker layout of a degree-2 f: 16 to 256, see ``kron_tables``), v columns
        per tile (None: all of them).
    segments : int, optional
        Causal only: segments of the sequence scanned in parallel (None: enough to fill the
        GPU, see ``_segments``).
    check_output : bool or None
        With ``normalize``: the kernels always turn a denominator that is <= 0 or not finite into a
        NaN row, never a finite wrong one. ``check_output`` also reads the normaliser and the output
        back and raises where they cannot be right (see Raises), at the price of a host sync per
        call. None (default): on the CPU (the interpreter), and on CUDA only under
        ``torch.autograd.detect_anomaly()``; True: always; False: never.
    tuning : dict, optional
        Private overrides of the routing and launch numbers, for sweeps and tests (keys and defaults:
        ``TUNING``; see ``plan``). An unknown key is a ValueError.
    initial_state : (S, z), optional
        Sums over an earlier prefix that every query also sees: S = sum psi(k) v^T [B, H, F, DV] and
        z = sum psi(k) [B, H, F], float32, F = ``feature_dim(D)`` in the symmetric basis's order
        (``feature_tables``, unpadded; fastattn.attention.State). Differentiable.
    output_final_state : bool
        Also return the state after the last key, (S, z) as above, initial state included. Differentiable.

    Returns
    -------
    tensor [B, H, T, DV] in q's dtype; T = 0 gives an empty one. With ``output_final_state``:
    (o, (S, z)).

    Raises
    ------
    ValueError
        Bad arguments (shape, dtype, device, tiling, scale, eps; bfloat16 under
        TRITON_INTERPRET=1, whose bf16 dot is wrong), a normaliser f cannot make safe, or (when
        the output is checked) a denominator that comes out <= 0 or not finite, or an output
        that is not finite, from finite inputs (16-bit rounding of the feature sums, or f
        overflowing). Unchecked, such rows come back NaN.

    Examples
    --------
    >>> q = k = v = torch.randn(1, 2, 100, 16, device="cuda")  # doctest: +SKIP
    >>> poly_attention(q, k, v).shape  # doctest: +SKIP
    torch.Size([1, 2, 100, 16])
    """
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"expected q, k [B, H, T, D] and v [B, H, T, DV]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"q, k, v must share one dtype of float32/float16/bfloat16; got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")
    if q.dtype == torch.bfloat16 and _interpreting():
        raise ValueError("bfloat16 under TRITON_INTERPRET=1 is refused: the interpreter's bf16 dot gives wrong "
                         "results without an error; pass float32 or float16, run on a GPU, or use the pure-torch "
                         "path (fastattn.kernels.poly_attention(..., backend='torch'))")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if q.shape[-1] < 1 or v.shape[-1] < 1:
        raise ValueError(f"head dims must be >= 1; got D={q.shape[-1]}, DV={v.shape[-1]}")
    if q.shape[-1] > 256 or v.shape[-1] > 256:
        raise ValueError(f"head dims up to 256 are supported; got D={q.shape[-1]}, DV={v.shape[-1]}")
    if chunk is not None:
        _check_pow2("chunk", chunk, 16)
    _check_pow2("block_f", block_f, 16)
    if block_v is not None:
        _check_pow2("block_v", block_v, 16)
    if segments is not None and (not isinstance(segments, int) or segments < 1):
        raise ValueError(f"segments={segments!r} must be None or an int >= 1")
    if normalizer_fix not in (None, "abs"):
        raise ValueError(f"normalizer_fix={normalizer_fix!r}; use None or 'abs'")
    if normalize and not POSITIVE_ON_REALS and normalizer_fix is None:
        raise ValueError(f"normalize=True needs f > 0 on the reals, but {POSITIVITY_REASON}; pass "
                         "normalize=False, or normalizer_fix='abs' to divide by |sum_j f| + eps")
    if scale is not None and not _finite(scale):
        raise ValueError(f"scale={scale!r} must be a finite real number (or None for 1/sqrt(D))")
    if not (_finite(eps) and float(eps) > 0):
        raise ValueError(f"eps={eps!r} must be a finite real number > 0")
    _resolve(tuning)  # an unknown or bad tuning key is an error even where no pass runs
    B, H, T, D = q.shape
    F, DV = feature_dim(D), v.shape[-1]
    if initial_state is not None:
        S, z = initial_state
        if tuple(S.shape) != (B, H, F, DV) or tuple(z.shape) != (B, H, F):
            raise ValueError(f"initial_state (S, z) must be [B, H, F, DV] = {[B, H, F, DV]} and [B, H, F]; got "
                             f"{tuple(S.shape)}, {tuple(z.shape)}")
        if S.dtype != torch.float32 or z.dtype != torch.float32 or S.device != q.device or z.device != q.device:
            raise ValueError(f"initial_state must be float32 on {q.device}; got {S.dtype}/{z.dtype} on {S.device}")
    if T == 0:
        # T = 0: an empty [B, H, 0, DV], still a function of q, k, v (zero gradients), as on the torch path
        _took("empty")
        o = v[:, :, :0] + (q.sum() + k.sum()) * 0
        if not output_final_state:
            return o
        if initial_state is None:
            return o, (q.new_zeros((B, H, F, DV), dtype=torch.float32), q.new_zeros((B, H, F), dtype=torch.float32))
        return o, (initial_state[0] + 0, initial_state[1] + 0)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    S0 = z0 = None
    if initial_state is not None:
        S0, z0 = (x.reshape((B * H,) + tuple(x.shape[2:])).contiguous() for x in initial_state)
    out = PolyAttentionFunction.apply(q, k, v, scale, bool(causal), bool(normalize), normalizer_fix == "abs",
                                      float(eps), chunk, block_f, block_v, segments, check_output, tuning, S0, z0,
                                      bool(output_final_state))
    if not output_final_state:
        return out
    o, SF, zF = out
    return o, (SF.reshape(B, H, F, DV), zF.reshape(B, H, F))


class PolyAttention(torch.nn.Module):
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=...)``.

    Examples
    --------
    >>> layer = PolyAttention(causal=True)  # doctest: +SKIP
    >>> q = k = v = torch.randn(1, 2, 100, 16, device="cuda")  # doctest: +SKIP
    >>> layer(q, k, v).shape  # doctest: +SKIP
    torch.Size([1, 2, 100, 16])
    """

    def __init__(self, causal=DEFAULTS["causal"], normalize=DEFAULTS["normalize"], scale=DEFAULTS["scale"],
                 normalizer_fix=DEFAULTS["normalizer_fix"], eps=1e-6, chunk=None, block_f=64, block_v=None,
                 check_output=None):
        super().__init__()
        self.causal, self.normalize, self.scale = causal, normalize, scale
        self.normalizer_fix, self.eps = normalizer_fix, eps
        self.chunk, self.block_f, self.block_v = chunk, block_f, block_v
        self.check_output = check_output

    def forward(self, q, k, v):
        return poly_attention(q, k, v, scale=self.scale, causal=self.causal, normalize=self.normalize,
                              normalizer_fix=self.normalizer_fix, eps=self.eps, chunk=self.chunk,
                              block_f=self.block_f, block_v=self.block_v, check_output=self.check_output)

    def extra_repr(self):
        return f"f(x) = {COEFFS_TEXT}, causal={self.causal}, normalize={self.normalize}, scale={self.scale}"
