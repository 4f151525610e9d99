"""Host side: the launchers. Each takes its Plan and the call's tensors and launches the kernels
of one route; ``poly_attention_fwd`` / ``poly_attention_bwd`` plan and dispatch. This docstring is
not copied into the generated module.
"""

# ----------------------------------------------------------------------------------------
# Launchers: each takes its Plan and the call's tensors.
# ----------------------------------------------------------------------------------------
def _took(route):
    # the route recorder: a set add per call, nothing on the GPU
    routes_taken.add(route)


def _empty(shape, device, dtype=torch.float32):
    # FASTATTN_NAN_FILL=1 (the tests) makes every fresh buffer NaN, so a row a kernel forgot to write
    # shows up as NaN instead of as stale memory
    if os.environ.get("FASTATTN_NAN_FILL", "0") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _aligned(*ts):
    """True when TMA can address these tensors: contiguous, 16-byte aligned (the plan checked the rest)."""
    return all(x.is_contiguous() and x.data_ptr() % 16 == 0 for x in ts)


def _descs(tma, BT, BV, *ts):
    """TMA descriptors over the [batch*head, T, C] rows of each [B, H, T, C] tensor, with
    [1, BT, BV] boxes, else Nones."""
    if not tma:
        return [None] * len(ts)
    from triton.tools.tensor_descriptor import TensorDescriptor
    return [TensorDescriptor(x, [x.shape[0] * x.shape[1], x.shape[2], x.shape[3]],
                             [x.shape[2] * x.shape[3], x.shape[3], 1], [1, BT, BV]) for x in ts]


def _tables(p, D, scale, device):
    """(idx, w_phi, w_psi, ktab, a0) of a plan's feature layout; a0 is the constant left to the caller
    (0.0 unless p.const_out). The kernels read the Kronecker tiles' column lists through idx too."""
    if p.kron:
        ktab, w_phi, w_psi, _ = kron_tables(D, scale, device, p.table_block_f, None, p.const_out)
        return ktab, w_phi, w_psi, ktab, float(COEFFS.get(0, 0.0)) if p.const_out else 0.0
    idx, w_phi, w_psi, _ = feature_tables(D, scale, device, p.table_block_f)
    return idx, w_phi, w_psi, idx, 0.0


def _side_by_side(first, second, device, together=True):
    """Run two independent launches, ``second`` on a side stream when ``together``, so the last wave of
    one pass shares the GPU with the other. The backward's two walks write disjoint gradients."""
    dev = torch.device(device)
    if not together or dev.type != "cuda":
        first()
        second()
        return
    main = torch.cuda.current_stream(dev)
    side = torch.cuda.Stream(device=dev)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        second()
    first()
    main.wait_stream(side)


def _segment_prefix(p, x, y, rden, cz, idx, w, ktab, normalize, scale_y, reverse, tma=False, init=None,
                    final=False):
    """(S0, Z0, SF, ZF): prefix (``reverse=False``) or suffix sums over segments of the per-segment states,
    S0[bh, s] = init + sum over segments before s (after s) of sum_t feat(x_t)^T y_t, and Z0 likewise
    (None unless ``normalize``). ``init``: (S, Z or None) [BH, f_pad, DV], [BH, f_pad] carried in at the
    start (the end when reversed), or None; with ``final`` also init + every segment's sum (SF, ZF), else
    Nones."""
    B, H, T, D = x.shape
    DV = y.shape[-1]
    BH, NSEG = B * H, p.segments
    S = torch.empty((BH, NSEG, p.f_pad, DV), dtype=torch.float32, device=x.device)
    Z = torch.empty((BH, NSEG, p.f_pad), dtype=torch.float32, device=x.device) if normalize else S
    g = p.seg_step_q if scale_y else p.seg_step
    chunk = p.chunk * g
    NF = p.f_pad // p.table_block_f
    yd, = _descs(tma, chunk, p.block_v, y)
    # the segments whose sums a prefix (suffix) uses: all but the last (first); a final state: all
    lo, n = (0, NSEG) if final else (int(reverse), NSEG - 1)
    if n:
        _segment_state_kernel[(NF * n, _cdiv(DV, p.block_v), BH)](
            x, y, yd, rden, cz, S, Z, idx, w, ktab, T, D, DV, p.f_pad, _cdiv(T, chunk), p.cps // g, NF, NSEG, lo,
            BT=chunk, BF=p.table_block_f, BV=p.block_v, BD=p.head_block, NORMALIZE=normalize, SCALE_Y=scale_y,
            PRECISION=p.precision, TMA_LD=tma, WIDE=p.wide, num_warps=p.seg_warps, **p.kron_kw)

    def exclusive(t, t0):
        # in-place exclusive scan over the segment axis (dim 1), forward or backward, from t0
        n = t[0, 0].numel()
        block = min(1024, _pow2(n))
        tf = t.new_empty((BH,) + tuple(t.shape[2:])) if final else None
        _segment_scan_kernel[(_cdiv(n, block), BH)](t, t if t0 is None else t0, t if tf is None else tf, n, NSEG,
                                                    REVERSE=reverse, BLOCK=block, HAS_INIT=t0 is not None,
                                                    FINAL=final, num_warps=4)
        return t, tf
    S0, Z0 = init if init is not None else (None, None)
    S, SF = exclusive(S, S0)
    Z, ZF = exclusive(Z, Z0) if normalize else (None, None)
    return S, Z, SF, ZF


def _bwd_prep(q, o, do, z, normalize, fix_abs, eps, chunk, const=False):
    """(1 / den, dz, dns) for an output o = n / den(z), in one pass over o and do: 1 / den and dz per
    token when normalised (else q, q as unused placeholders), and with ``const`` the prefix sums over
    chunks of each chunk's sum of dn = do / den, fp32 [B * H, NC, DV] (else None)."""
    if not normalize and not const:
        return q, q, None
    B, H, T, DV = do.shape
    NC = _cdiv(T, chunk)
    rden = _empty((B, H, T), q.device) if normalize else q
    dz = _empty((B, H, T), q.device) if normalize else q
    dns = _empty((B * H, NC, DV), q.device) if const else q
    _bwd_prep_kernel[(NC, B * H)](o, do, z if normalize else q, rden, dz, dns, float(eps), T, DV, NC, BT=chunk,
                                  BV=max(16, _pow2(DV)), FIX_ABS=fix_abs, NORMALIZE=normalize, CONST=const,
                                  num_warps=4)
    return rden, dz, (dns.cumsum_(1) if const else None)


def _start_states(p, k, v, z, idx, w_psi, ktab, normalize, init, final, tma=False):
    """(S0, Z0, final (SF, ZF) or None) of a causal forward: the segments' start states (placeholders when
    the walks start from zero) and, with ``final``, the state after the last key. A final state sums z
    even when not normalising (the State carries it)."""
    if p.segments == 1 and init is None and not final:
        return z, z, None
    S0, Z0, SF, ZF = _segment_prefix(p, k, v, z, z, idx, w_psi, ktab, normalize or final, False, reverse=False,
                                     tma=tma, init=init, final=final)
    return S0, (z if Z0 is None else Z0), ((SF, ZF) if final else None)


def _fused_fwd(p, q, k, v, scale, normalize, fix_abs, eps, init=None, final=False):
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, _, _ = _tables(p, D, scale, q.device)
    o = _empty((B, H, T, DV), q.device, q.dtype)
    z = _empty((B, H, T), q.device) if normalize else o
    S0, Z0, fin = _start_states(p, k, v, z, idx, w_psi, idx, normalize, init, final)
    _fused_fwd_kernel[(p.segments, B * H)](q, k, v, o, z, S0, Z0, idx, w_phi, w_psi, float(scale), float(eps), T, D,
                                           DV, p.f_pad, _cdiv(T, p.chunk), p.cps, BT=p.chunk, BF=p.block_f,
                                           BV=p.block_v, BD=p.head_block, NORMALIZE=normalize, FIX_ABS=fix_abs,
                                           USE_SEG=p.segments > 1 or init is not None, PRECISION=p.precision,
                                           WIDE=p.wide, num_warps=p.warps)
    return o, (z if normalize else None), ((S0, Z0, p.cps * p.chunk) if p.segments > 1 else None), fin


def _bwd_norm(q, o, do, z, normalize, fix_abs, eps, chunk, const, z_grad):
    """(normalise in the walks, 1 / den, dz, dns) as _bwd_prep gives them; an unnormalised call with a gradient
    on its final z walks as a normalised one with 1 / den = 1 and dz = 0, so that gradient rides the
    normaliser's lane into dk."""
    if normalize or not z_grad:
        return (normalize,) + _bwd_prep(q, o, do, z, normalize, fix_abs, eps, chunk, const)
    B, H, T, _ = q.shape
    ones = torch.ones((B, H, T), dtype=torch.float32, device=q.device)
    return True, ones, torch.zeros_like(ones), None


def _bwd_start_states(p, q, k, v, do, rden, dz, idx, w_phi, w_psi, ktab, nz, init, dfinal, want_dinit, saved=None,
                      tma=False):
    """(pass 0's start states, pass 1's, dinit): pass 0 (dq) starts from the forward's segment states
    (``saved``, or rebuilt from ``init``), pass 1 (dk, dv) from the suffix sums of phi(q)^T dn (and
    phi(q) dz) with the final state's gradient ``dfinal`` carried in; with ``want_dinit`` the initial
    state's gradient (dfinal + every query's sum), else None. None for a walk that starts from zero."""
    fwd = saved
    if fwd is None and (p.segments > 1 or init is not None):
        fwd = _segment_prefix(p, k, v, rden, rden, idx, w_psi, ktab, nz, False, reverse=False, tma=tma, init=init)[:2]
    bwd = dinit = None
    if p.segments > 1 or dfinal is not None or want_dinit:
        dS0, dZ0, dSF, dZF = _segment_prefix(p, q, do, rden, dz, idx, w_phi, ktab, nz, nz, reverse=True, tma=tma,
                                             init=dfinal, final=want_dinit)
        bwd, dinit = (dS0, dZ0), ((dSF, dZF) if want_dinit else None)
    return fwd, bwd, dinit


def _fused_bwd(p, q, k, v, o, z, do, scale, normalize, fix_abs, eps, state, init=None, dfinal=None,
               want_dinit=False):
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, _, _ = _tables(p, D, scale, q.device)
    nz, rden, dz, _ = _bwd_norm(q, o, do, z, normalize, fix_abs, eps, p.chunk, False,
                                dfinal is not None and dfinal[1] is not None)
    dq = _empty(q.shape, q.device, q.dtype)
    dk = _empty(k.shape, q.device, k.dtype)
    dv = _empty(v.shape, q.device, v.dtype)
    fwd, bwd, dinit = _bwd_start_states(p, q, k, v, do, rden, dz, idx, w_phi, w_psi, idx, nz, init, dfinal,
                                        want_dinit, saved=tuple(state[:2]) if p.saved else None)

    def walk(pass_, start):
        s0, z0 = start if start is not None else (dq, dq)
        _fused_bwd_kernel[(p.segments, B * H)](q, k, v, do, rden, dz, dq, dk, dv, s0, dq if z0 is None else z0, idx,
                                               w_phi, w_psi, float(scale), T, D, DV, p.f_pad, _cdiv(T, p.chunk), p.cps,
                                               BT=p.chunk, BF=p.block_f, BV=p.block_v, BD=p.head_block,
                                               NORMALIZE=nz, USE_SEG=start is not None, PASS=pass_,
                                               PRECISION=p.precision, WIDE=p.wide, num_warps=p.warps)
    _side_by_side(lambda: walk(0, fwd), lambda: walk(1, bwd), q.device, p.streams)
    return dq, dk, dv, dinit


def _chunk_fwd(p, q, k, v, scale, normalize, fix_abs, eps, init=None, final=False):
    """Causal forward by _chunk_fwd_kernel: (o in q.dtype, z or None, state for the fused backward or None,
    final state or None)."""
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, ktab, _ = _tables(p, D, scale, q.device)
    o = _empty((B, H, T, DV), q.device, q.dtype)
    z = _empty((B, H, T), q.device) if normalize else o
    S0, Z0, fin = _start_states(p, k, v, z, idx, w_psi, ktab, normalize, init, final)
    _chunk_fwd_kernel[(_cdiv(T, p.chunk), 1, B * H)](q, k, v, o, z, S0, Z0, idx, w_phi, ktab, float(scale), float(eps),
                                                     T, D, DV, p.f_pad, _cdiv(T, p.chunk), p.cps, p.segments,
                                                     p.f_pad // p.block_f, int(init is None), BT=p.chunk,
                                                     BF=p.block_f, BV=p.block_v,
                                                     BD=p.head_block, NORMALIZE=normalize, FIX_ABS=fix_abs,
                                                     PRECISION=p.precision, num_warps=p.warps, **p.kron_kw)
    fused_table = p.route == "fwd/chunk/fused-table"
    state = (S0, Z0 if normalize else o.new_empty(0), p.cps * p.chunk) if p.segments > 1 and fused_table else None
    return o, (z if normalize else None), state, fin


def _scan_fwd(p, q, k, v, scale, causal, normalize, fix_abs, eps, init=None, final=False):
    """The general forward: intra kernel (causal), scans over feature tiles into fp32 o, finalize."""
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, ktab, a0 = _tables(p, D, scale, q.device)
    NC, NF, NV = _cdiv(T, p.chunk), p.f_pad // p.block_f, _cdiv(DV, p.block_v)
    o = _empty((B, H, T, DV), q.device)
    z = _empty((B, H, T), q.device) if normalize else o
    # the constant term outside the scans: each chunk's sum of v, turned into prefix sums below
    vs = _empty((B * H, NC, DV), q.device) if a0 else o
    if causal:
        _intra_fwd_kernel[(NC, B * H)](q, k, v, o, z, vs, float(scale), T, D, DV, NC, BT=p.chunk, BD=p.head_block,
                                       BV=p.v_pad, NORMALIZE=normalize, PRECISION=p.precision, CONST=bool(a0),
                                       num_warps=p.intra_warps)
    else:
        o.zero_()
        z.zero_()
    ok = (p.tma_ld or p.tma_add) and _aligned(v, o)
    tma, tma_add = p.tma_ld and ok, p.tma_add and ok
    (vd,), (od,) = _descs(tma, p.chunk, p.block_v, v), _descs(tma_add, p.chunk, p.block_v, o)
    S0, Z0, fin = _start_states(p, k, v, z, idx, w_psi, ktab, normalize, init, final, tma)
    _inter_fwd_kernel[(NF * p.segments, NV, B * H)](q, k, v, vd, o, od, z, S0, Z0, idx, w_phi, w_psi, ktab, T, D, DV,
                                                    p.f_pad, NC, p.cps, NF, BT=p.chunk, BF=p.block_f, BV=p.block_v,
                                                    BD=p.head_block, CAUSAL=causal, NORMALIZE=normalize,
                                                    ATOMIC=NF > 1, USE_SEG=p.segments > 1 or init is not None,
                                                    PRECISION=p.precision,
                                                    TMA_LD=tma, TMA_ADD=tma_add, WIDE=p.wide, num_warps=p.warps,
                                                    **({"maxnreg": p.maxnreg} if p.maxnreg else {}), **p.kron_kw)
    out = _empty((B, H, T, DV), q.device, q.dtype)
    N, BR = B * H * T, max(16, 4096 // p.v_pad)
    if a0:
        vs.cumsum_(1)
    _finalize_kernel[(_cdiv(N, BR),)](o, z, out, vs, a0, float(eps), N, T, DV, NC, NORMALIZE=normalize,
                                      FIX_ABS=fix_abs, BR=BR, BV=p.v_pad, BT=p.chunk, CONST=bool(a0), num_warps=4)
    return out, (z if normalize else None), None, fin


def _scan_bwd(p, q, k, v, o, z, do, scale, causal, normalize, fix_abs, eps, init=None, dfinal=None,
              want_dinit=False):
    """The general backward: intra kernel (causal), then the dq walk and the dk / dv walk."""
    B, H, T, D = q.shape
    DV = v.shape[-1]
    idx, w_phi, w_psi, ktab, a0 = _tables(p, D, scale, q.device)
    NC, NF, NV = _cdiv(T, p.chunk), p.f_pad // p.block_f, _cdiv(DV, p.block_v)
    nz, rden, dz, dns = _bwd_norm(q, o, do, z, normalize, fix_abs, eps, p.chunk, bool(a0),
                                  dfinal is not None and dfinal[1] is not None)
    dq = _empty((B, H, T, D), q.device)
    dk = _empty((B, H, T, D), q.device)
    dv = _empty((B, H, T, DV), q.device)
    if causal:
        _intra_bwd_kernel[(NC, B * H)](q, k, v, do, rden, dz, dq, dk, dv, dq if dns is None else dns, a0,
                                       float(scale), T, D, DV, NC, BT=p.chunk, BD=p.head_block, BV=p.v_pad,
                                       NORMALIZE=nz, PRECISION=p.precision, CONST=bool(a0),
                                       num_warps=p.intra_warps)
    else:
        dq.zero_()
        dk.zero_()
        dv.zero_()
    ok = (p.tma_ld or p.tma_add or p.tma_dx) and _aligned(v, do, dv)
    tma, tma_add, tma_dx = p.tma_ld and ok, p.tma_add and ok, p.tma_dx and ok and _aligned(dq, dk)
    (vd, dod), (dvd,) = _descs(tma, p.chunk, p.block_v, v, do), _descs(tma_add, p.chunk, p.block_v, dv)
    dxg = _descs(tma_dx, p.chunk, p.group[1], dq, dk)
    dxl = _descs(tma_dx, p.chunk, p.block_f, dq, dk)
    # pass 0 (dq) starts from the forward's prefix state; pass 1 (dk, dv) from the suffix
    # of sum phi(q)^T dn over later segments
    fwd, bwd, dinit = _bwd_start_states(p, q, k, v, do, rden, dz, idx, w_phi, w_psi, ktab, nz, init, dfinal,
                                        want_dinit, tma=tma)
    S0, Z0 = fwd if fwd is not None else (dq, dq)
    dS0, dZ0 = bwd if bwd is not None else (dq, dq)
    Z0, dZ0 = (dq if Z0 is None else Z0), (dq if dZ0 is None else dZ0)

    def walk(pass_):
        _inter_bwd_kernel[(NF * p.segments, NV, B * H)](q, k, v, vd, do, dod, rden, dz, dq, dk, dv, dvd, dxg[pass_],
                                                        dxl[pass_], S0, Z0, dS0, dZ0, idx, w_phi, w_psi, ktab, T, D,
                                                        DV, p.f_pad, NC, p.cps, NF, BT=p.chunk, BF=p.block_f,
                                                        BV=p.block_v, BD=p.head_block, CAUSAL=causal,
                                                        NORMALIZE=nz, ATOMIC_QK=NF * NV > 1, ATOMIC_V=NF > 1,
                                                        USE_SEG=(fwd, bwd)[pass_] is not None, PASS=pass_,
                                                        PRECISION=p.precision, TMA_LD=tma, TMA_ADD=tma_add,
                                                        WIDE=p.wide, TMA_DX=tma_dx, num_warps=p.warps, **p.kron_kw)
    _side_by_side(lambda: walk(0), lambda: walk(1), q.device, p.streams)
    # the fp32 sums go back in a list that holds the only references once this frame is gone:
    # _cast_each frees each one as soon as it is cast
    return [dq, dk, dv], dinit


def _cast_each(sums, dtypes):
    """The tensors of the list ``sums`` in ``dtypes``, cast one at a time, each dropped from the list as soon
    as it is cast: with no other reference to them, the peak holds every fp32 sum and one cast, not one
    cast of each (B2 H16 T64K d64 bf16: 512 MiB less; the accounting is in TUNING.md)."""
    out = []
    for i, dtype in enumerate(dtypes):
        out.append(sums[i].to(dtype))
        sums[i] = None
    return out


def _forward(p, q, k, v, scale, causal, normalize, fix_abs, eps):
    """(o, z, saved state or None) of the forward ``p`` plans."""
    return _forward_state(p, q, k, v, scale, causal, normalize, fix_abs, eps)[:3]


def _forward_state(p, q, k, v, scale, causal, normalize, fix_abs, eps, init=None, final=False):
    """(o, z, saved state or None, final state (S, Z) or None) of the forward ``p`` plans, with the initial
    state ``init`` (S, Z) in the plan's feature layout, or None."""
    _took(p.route)
    if p.path == "fused":
        return _fused_fwd(p, q, k, v, scale, normalize, fix_abs, eps, init, final)
    if p.path == "chunk":
        return _chunk_fwd(p, q, k, v, scale, normalize, fix_abs, eps, init, final)
    return _scan_fwd(p, q, k, v, scale, causal, normalize, fix_abs, eps, init, final)


def _backward(p, q, k, v, o, z, do, scale, causal, normalize, fix_abs, eps, state):
    """(dq, dk, dv) of the backward ``p`` plans."""
    return _backward_state(p, q, k, v, o, z, do, scale, causal, normalize, fix_abs, eps, state)[:3]


def _backward_state(p, q, k, v, o, z, do, scale, causal, normalize, fix_abs, eps, state, init=None, dfinal=None,
                    want_dinit=False):
    """(dq, dk, dv, gradient of the initial state or None) of the backward ``p`` plans; ``init`` and
    ``dfinal`` (the final state's gradient) in the plan's layout (Z None: no gradient on the final z)."""
    _took(p.route)
    if p.path == "fused":
        return _fused_bwd(p, q, k, v, o, z, do, scale, normalize, fix_abs, eps, state, init, dfinal, want_dinit)
    sums, dinit = _scan_bwd(p, q, k, v, o, z, do, scale, causal, normalize, fix_abs, eps, init, dfinal,
                            want_dinit)
    return (*_cast_each(sums, (q.dtype, k.dtype, v.dtype)), dinit)


def poly_attention_fwd(q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v, segments=None,
                       tuning=None):
    """Forward pass on contiguous [B, H, T, D] inputs; returns (o in q.dtype, z fp32 [B, H, T] or None)."""
    return _poly_attention_fwd(q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v,
                               segments, tuning)[:2]


def _poly_attention_fwd(q, k, v, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v, segments=None,
                        tuning=None, initial=None, final=False):
    """(o, z, saved segment states or None[, final state]). ``initial``: (S [B*H, F, DV], z [B*H, F]) in the
    State's basis (fp32), or None; with ``final`` a fourth entry, the state after the last key in that basis."""
    state = initial is not None or final
    p = plan(q.shape, v.shape, q.dtype, q.device, causal, normalize, "fwd", tuning, chunk=chunk, block_f=block_f,
             block_v=block_v, segments=segments, state=state)
    if not state:
        return _forward(p, q, k, v, scale, causal, normalize, fix_abs, eps)
    smap = state_map(p, q.shape[-1], scale, q.device)
    init = None if initial is None else (to_kernel(initial[0], smap), to_kernel(initial[1], smap))
    o, z, saved, fin = _forward_state(p, q, k, v, scale, causal, normalize, fix_abs, eps, init, final)
    return o, z, saved, (None if fin is None else (from_kernel(fin[0], smap), from_kernel(fin[1], smap)))


def poly_attention_bwd(q, k, v, o, z, do, scale, causal, normalize, fix_abs, eps, chunk, block_f, block_v,
                       segments=None, state=None, tuning=None, initial=None, dfinal=None, want_dinit=False):
    """Backward pass: (dq, dk, dv, dinit), dq, dk, dv in the input dtypes, from the saved output ``o`` and
    normaliser ``z`` (and, on the fused path, the forward's segment prefix states ``state``). dinit is the
    initial state's gradient (dS, dz) when ``want_dinit``, else None; a carried state comes in as ``initial``
    (S, z) and the final one's gradient as ``dfinal`` (dS, dz or None), in the State's basis."""
    carried = initial is not None or dfinal is not None or want_dinit
    # an unnormalised call with a gradient on its final z rebuilds the start states with their z sums
    if carried and not normalize and dfinal is not None and dfinal[1] is not None:
        state = None
    saved = (state[2], state[0].shape[1]) if state is not None else None
    p = plan(q.shape, v.shape, q.dtype, q.device, causal, normalize, "bwd", tuning, chunk=chunk, block_f=block_f,
             block_v=block_v, segments=segments, saved=saved, state=carried)
    if not carried:
        return (*_backward(p, q, k, v, o, z, do.contiguous(), scale, causal, normalize, fix_abs, eps, state), None)
    smap = state_map(p, q.shape[-1], scale, q.device)
    init = None if initial is None else (to_kernel(initial[0], smap), to_kernel(initial[1], smap))
    dfin = None
    if dfinal is not None:
        dfin = (to_kernel(dfinal[0], smap), None if dfinal[1] is None else to_kernel(dfinal[1], smap))
    dq, dk, dv, dinit = _backward_state(p, q, k, v, o, z, do.contiguous(), scale, causal, normalize, fix_abs, eps,
                                        state, init, dfin, want_dinit)
    if dinit is not None:
        dS = from_kernel(dinit[0], smap)
        dinit = (dS, from_kernel(dinit[1], smap) if dinit[1] is not None else dS.new_zeros(dS.shape[:2]))
    return dq, dk, dv, dinit
