"""Host side: routing. The Kronecker layout's predicates and tables (``uses_kron``, ``kron_const_out``,
``kron_tables``: they read plan's overrides), then ``ROUTES``, ``TUNING``, ``DeviceInfo``, the ``Plan``
record, ``plan`` and the wave model that cuts segments. This docstring is not copied into the
generated module.
"""

def _kron_group(block_f):
    """Group width: 8 (one 8 x 8 product per 64-feature tile) from block_f 64 on, else 4 (groups of 4 at
    block_f 64 lost to their 4-D broadcast: TUNING.md)."""
    return 8 if block_f >= 64 else 4


# the degree of f (the highest power with a nonzero coefficient)
_DEGREE = max((j for j, a in COEFFS.items() if a != 0), default=0)


def uses_kron(dim, causal=True, dim_v=None, part="fwd", T=0, tuning=None):
    """True when the general path's features for this pass (``part``: "fwd" or "bwd", on ``T`` tokens)
    are block-Kronecker tiles: f has degree 2 and the pass does not take the fused path (see :func:`plan`)."""
    t = _resolve(tuning)
    return _kron_on(t) and (not causal or _fused_tiles_dims(dim, dim if dim_v is None else dim_v, part, T, t) is None)


def _kron_on(t):
    # the block-Kronecker layout exists for degree 2 only; tuning kron=False keeps the symmetric basis
    return _DEGREE == 2 and t["kron"]


def _group_width(block_f, group=None):
    """Kronecker group width: ``group``, else :func:`_kron_group`."""
    return _kron_group(block_f) if group is None else int(group)


def kron_const_out(dim, block_f=64, group=None):
    """True when the constant a0 of a degree-2 f would take a Kronecker tile of its own (no free
    column in a low tile) and leaving it out saves that tile: the causal scans then leave it to
    the intra and finalize kernels: o += a0 times the prefix sum of v over the earlier chunks, z += a0
    times their token count, and in the backward dv += a0 times the suffix sum of dn = do / den.

    At head dim 64 and block_f 64 the scans walk 37 tiles instead of 38 (one wave fewer at B * H = 32
    on 132 SMs: TUNING.md).

    Examples
    --------
    >>> from fastattn.kernels.codegen import load_module
    >>> from fastattn.kernels.poly import polynomial
    >>> mod = load_module(polynomial("1 + x + x**2/2"))
    >>> mod.kron_const_out(64), mod.kron_const_out(24)  # at 24 the low tile of [x, 1] has room for it
    (True, False)
    """
    KA = _group_width(block_f, group)
    a0, a1, a2 = (float(COEFFS.get(j, 0.0)) for j in (0, 1, 2))
    if a0 == 0.0 or a2 == 0.0 or (a1 != 0.0 and dim % block_f != 0):
        return False
    KG = max(1, block_f // (KA * KA))
    nb = -(-dim // KA)
    pairs = nb * (nb + 1) // 2
    return -(-pairs // KG) < -(-(pairs + 1) // KG)


def kron_tables(dim, scale, device, block_f=64, group=None, const_out=False):
    """Tile and weight tables of the block-Kronecker basis of a degree-2 f(scale * q.k).

    The head dim is cut into blocks of ``group`` columns (None: 8 from block_f 64 on, 4 below). Every pair of blocks h1 <= h2 gives a group of group x group
    products x[h1] (x) x[h2], weighted a2 s^2 on the diagonal pairs and 2 a2 s^2 off it, since
    (q.k)^2 = sum over all pairs of blocks of sum_{i in h1, j in h2} q_i q_j k_i k_j. A tile of
    ``block_f`` features packs KG = block_f / group^2 groups. The constant a0 is the group
    [1] (x) [1] (the first group-aligned column past ``dim`` reads as 1 in a Kronecker tile), unless
    a low tile has a free column for it (column ``dim`` of x'), or ``const_out`` and
    :func:`kron_const_out` leave it to the caller. The linear terms ride on "low"
    tiles: columns of x' = [x, 1] with weights a1 s (and a0). Weights are split as in
    :func:`feature_tables`.

    Returns
    -------
    ktab : int32 tensor [NF, 2 + 2 KG group]
        per tile (-1, c0, 0...) for a low tile holding columns c0 .. c0 + block_f of x', else
        (offset, 0, left columns, right columns), offset being the flat index in ktab of the
        left column list: aligned runs of ``group`` columns; columns from dim on read as 0 except
        the first aligned one past dim, which reads as 1 (the constant's group).
    w_phi, w_psi : float32 tensors [NF * block_f]
    (KG, KA) : groups per tile and the group width.

    Examples
    --------
    >>> from fastattn.kernels.codegen import load_module
    >>> from fastattn.kernels.poly import polynomial
    >>> mod = load_module(polynomial("1 + x + x**2/2"))
    >>> ktab, w_phi, _, (KG, KA) = mod.kron_tables(64, 0.125, "cpu", 64)
    >>> ktab.shape[0], (KG, KA)  # 36 block pairs + the constant's group, + one low tile for x
    (38, (1, 8))
    >>> mod.kron_tables(64, 0.125, "cpu", 64, group=4)[0].shape[0]  # 136 pairs + 1 in 35 tiles, + 1
    36
    >>> mod.kron_tables(64, 0.125, "cpu", 64, const_out=True)[0].shape[0]  # a0 left to the caller
    37
    """
    KA = _group_width(block_f, group)
    if KA < 1 or KA & (KA - 1) or block_f % (KA * KA):
        raise ValueError(f"block_f={block_f} cannot hold groups of {KA} x {KA} products; use a power-of-two "
                         f"group width whose square divides block_f (e.g. 4 for block_f >= 16)")
    const_out = bool(const_out) and kron_const_out(dim, block_f, KA)
    key = ("kron", int(dim), float(scale), str(device), int(block_f), KA, const_out)
    if key in _TABLES:
        return _TABLES[key]
    KG = block_f // (KA * KA)
    width = 2 + 2 * KG * KA
    a0, a1, a2 = (float(COEFFS.get(j, 0.0)) for j in (0, 1, 2))
    rows, ws = [], []
    # the constant sits in the last low tile's free column when there is one
    const_low = a0 != 0.0 and a1 != 0.0 and dim % block_f != 0
    if a1 != 0.0:
        for c0 in range(0, dim, block_f):
            rows.append([-1, c0] + [0] * (width - 2))
            ws.append([a1 * scale if c < dim else (a0 if c == dim and const_low else 0.0)
                       for c in range(c0, c0 + block_f)])
    groups = []  # (left columns, right columns, weights)
    nb = -(-dim // KA)
    one = nb * KA  # the kernel reads this column as 1 in a Kronecker tile, and those after it as 0
    if a2 != 0.0:
        for h1 in range(nb):
            for h2 in range(h1, nb):
                wt = a2 * scale ** 2 * (1.0 if h1 == h2 else 2.0)
                # aligned runs (the kernel's load hints); columns from dim on read as 0
                groups.append((list(range(h1 * KA, h1 * KA + KA)), list(range(h2 * KA, h2 * KA + KA)),
                               [wt] * (KA * KA)))
        if a0 != 0.0 and not const_low and not const_out:
            groups.append((list(range(one, one + KA)), list(range(one, one + KA)), [a0] + [0.0] * (KA * KA - 1)))
    pad = (list(range(one + KA, one + 2 * KA)),) * 2 + ([0.0] * (KA * KA),)
    while len(groups) % KG:
        groups.append(pad)
    for t in range(0, len(groups), KG):
        tile = groups[t:t + KG]
        offset = len(rows) * width + 2
        rows.append([offset, 0] + [c for g in tile for c in g[0]] + [c for g in tile for c in g[1]])
        ws.append([x for g in tile for x in g[2]])
    w = torch.tensor(ws, dtype=torch.float64).reshape(-1)
    w_psi = w.abs().sqrt()
    w_phi = torch.sign(w) * w_psi
    out = (torch.tensor(rows, dtype=torch.int32).to(device), w_phi.to(torch.float32).to(device),
           w_psi.to(torch.float32).to(device), (KG, KA))
    _TABLES[key] = out
    return out


def _kron_tiles(dim, block_f, const_out):
    """Feature tiles of :func:`kron_tables` (dim, block_f, default group, const_out), counted without building them."""
    KA = _kron_group(block_f)
    KG = block_f // (KA * KA)
    a0, a1, a2 = (float(COEFFS.get(j, 0.0)) for j in (0, 1, 2))
    const_low = a0 != 0.0 and a1 != 0.0 and dim % block_f != 0
    nb = _cdiv(dim, KA)
    groups = nb * (nb + 1) // 2 + (a0 != 0.0 and not const_low and not const_out) if a2 != 0.0 else 0
    return (_cdiv(dim, block_f) if a1 != 0.0 else 0) + _cdiv(groups, KG)


def _cdiv(a, b):
    # host-side ceil division: triton.cdiv is a constexpr function whose wrapper costs ~5 us a call
    return -(-a // b)


def _pow2(n):
    # host-side next power of two (as triton.next_power_of_2, without its wrapper's cost)
    return 1 << (int(n) - 1).bit_length() if n > 0 else 0


# ----------------------------------------------------------------------------------------
# Routing: plan() turns a call's shapes, device and overrides into a Plan record, and the
# launchers below take every number from it. Measurements behind the defaults: TUNING.md.
# ----------------------------------------------------------------------------------------
#: Every route the host code can take, by name: pass / path (fused, chunk-parallel forward,
#: scans) / causal or full / feature layout (symmetric table, Kronecker tiles) / variant
#: (const: a0 outside the scans; segments: the fused path's segment states, saved by the
#: forward or rebuilt by the backward). tests/test_routes.py runs each one. The GPU-only
#: variants (TMA row moves, side streams) are checked on the device by benchmarks/check_gpu.py.
ROUTES = (
    "empty",
    "fwd/fused", "fwd/fused/segments",
    "fwd/chunk/fused-table", "fwd/chunk/symmetric", "fwd/chunk/kron",
    "fwd/scan/causal/symmetric", "fwd/scan/causal/kron", "fwd/scan/causal/kron/const",
    "fwd/scan/full/symmetric", "fwd/scan/full/kron",
    "bwd/fused", "bwd/fused/segments/saved", "bwd/fused/segments/rebuilt",
    "bwd/scan/causal/symmetric", "bwd/scan/causal/kron", "bwd/scan/causal/kron/const",
    "bwd/scan/full/symmetric", "bwd/scan/full/kron",
)
#: The routes taken in this process (a set of at most len(ROUTES) names: one add per call).
routes_taken = set()

#: The private overrides :func:`plan` takes (``tuning=``, for sweeps and tests) and their defaults;
#: None: decided by the shape. FASTATTN_FUSED=0 in the environment sets "fused" to False.
TUNING = {
    "fused": True,          # False: every shape down the general path
    "fused_fwd": None,      # True / False: the fused forward on / off (default: by length for degree 2)
    "fused_bwd": None,      # the same for the backward
    "kron": True,           # False: a degree-2 f keeps the symmetric basis on the general path
    "const_out": True,      # False: a0 keeps a Kronecker tile of its own in the causal scans
    "chunk_fwd": None,      # True / False: the chunk-parallel causal forward on / off
    "chunk_fwd_cps": 4,     # its segments' least length in chunks
    "chunk_fwd_mib": 256,   # and the MiB of prefix states they may take
    "seg_rows": 2,          # chunks one step of the segment-sum pass over k, v takes
    "tma_fwd": 2,           # TMA bits of the general forward: 1 v loads, 2 o adds (sm_90+)
    "tma_bwd": 6,           # of the backward: 1 v / do loads, 2 dv adds, 4 dq / dk adds
    "tma_min_work": 2**21,  # least batch*head x tokens x feature tiles for TMA (descriptors cost host time)
    "bwd_streams": None,    # True / False: the backward's two walks side by side on two streams
}
_TUNING_BOOLS = ("fused", "fused_fwd", "fused_bwd", "kron", "const_out", "chunk_fwd", "bwd_streams")


def _resolve(tuning=None):
    """TUNING with the environment's FASTATTN_FUSED and ``tuning`` applied, each value checked."""
    t = dict(TUNING)
    env = os.environ.get("FASTATTN_FUSED", "")
    if env:
        if env not in ("0", "1"):
            raise ValueError(f"FASTATTN_FUSED={env!r}: use 0 (every shape down the general path) or 1, or unset it")
        t["fused"] = env == "1"
    if not tuning:
        return t
    if not isinstance(tuning, dict):
        raise ValueError(f"tuning={tuning!r} must be a dict of overrides (keys: {', '.join(TUNING)})")
    unknown = sorted(set(tuning) - set(TUNING))
    if unknown:
        raise ValueError(f"unknown tuning key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(TUNING)}")
    for key, value in tuning.items():
        if key in _TUNING_BOOLS:
            ok = isinstance(value, bool) or (value is None and TUNING[key] is None)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= (0 if "tma" in key else 1)
        if not ok:
            want = "True or False" + (" or None" if key in _TUNING_BOOLS and TUNING[key] is None else "")
            raise ValueError(f"tuning[{key!r}]={value!r}; use {want if key in _TUNING_BOOLS else 'an int >= 1'}"
                             if "tma" not in key else f"tuning[{key!r}]={value!r}; use an int >= 0")
    t.update(tuning)
    return t


#: What plan() needs of a device: its kind ("cuda", "cpu", ...), SM count and compute capability
#: major (anything but CUDA reads as 132 SMs, capability 0).
DeviceInfo = collections.namedtuple("DeviceInfo", "type sms major")
_DEVICES = {}


def _device_info(device):
    if isinstance(device, DeviceInfo):
        return device
    key = str(device)
    if key not in _DEVICES:
        dev = torch.device(device)
        if dev.type == "cuda":
            props = torch.cuda.get_device_properties(dev)
            _DEVICES[key] = DeviceInfo("cuda", props.multi_processor_count, props.major)
        else:
            _DEVICES[key] = DeviceInfo(dev.type, 132, 0)
    return _DEVICES[key]


@dataclasses.dataclass(frozen=True)
class Plan:
    """One pass of one call, as the launchers run it (see :func:`plan`).

    route: a name of ROUTES. chunk: tokens per chunk. block_f, block_v: features and v columns per
    walk program; table_block_f: the feature tables' tile (and the segment-sum pass's); f_pad: features
    with padding. head_block, v_pad: D and DV padded for the intra tiles. kron, group (KG, KA),
    const_out: the Kronecker layout, its groups, a0 outside the causal scans. segments, cps: the
    causal scan's cut (chunks per segment). warps (walks), seg_warps, intra_warps; maxnreg: the walks'
    register cap (0: none). seg_step, seg_step_q: chunks per step of the segment-sum passes over
    (k, v) and (q, dn). tma_ld, tma_add, tma_dx: row moves by TMA. streams: the backward's walks side
    by side. wide: int64 row offsets. saved: the fused backward reuses the forward's segment states.
    """
    route: str
    chunk: int
    block_f: int
    block_v: int
    table_block_f: int
    f_pad: int
    head_block: int
    v_pad: int
    precision: str
    kron: bool = False
    group: tuple = (1, 1)
    const_out: bool = False
    segments: int = 1
    cps: int = 1
    warps: int = 4
    seg_warps: int = 4
    intra_warps: int = 4
    maxnreg: int = 0
    seg_step: int = 1
    seg_step_q: int = 1
    tma_ld: bool = False
    tma_add: bool = False
    tma_dx: bool = False
    streams: bool = False
    wide: bool = False
    saved: bool = False

    @property
    def path(self):
        """"fused", "chunk" or "scan"."""
        return self.route.split("/")[1]

    @property
    def kron_kw(self):
        """The Kronecker constexprs of a kernel launch (none for the symmetric basis)."""
        return dict(KRON=True, KG=self.group[0], KA=self.group[1]) if self.kron else {}


_PLANS = {}


def plan(q_shape, v_shape, dtype, device, causal, normalize, part, tuning=None, *, chunk=None, block_f=64,
         block_v=None, segments=None, saved=None, state=False):
    """The route and every launch number of one pass (``part`` "fwd" or "bwd") as a :class:`Plan`.

    The only reader of overrides: FASTATTN_FUSED in the environment and the ``tuning`` dict (keys and
    defaults in TUNING; an unknown key is a ValueError). ``device``: a torch device or a
    :class:`DeviceInfo` (its SM count cuts the causal scans into segments, its capability allows TMA).
    ``chunk``, ``block_f``, ``block_v``, ``segments`` as :func:`poly_attention` takes them; ``saved``:
    (tokens per segment, segments) of the states the forward saved for a fused backward, or None; ``state``:
    the call carries a state in or out (then a degree-2 f's constant keeps its Kronecker tile: the state
    holds it like any feature).

    Examples
    --------
    >>> import torch
    >>> from fastattn.kernels.codegen import load_module
    >>> from fastattn.kernels.poly import polynomial
    >>> mod = load_module(polynomial("1 + x + x**2/2"))
    >>> h200 = mod.DeviceInfo("cuda", 132, 9)
    >>> p = mod.plan((2, 16, 8192, 16), (2, 16, 8192, 64), torch.bfloat16, h200, True, True, "fwd")
    >>> p.route, p.chunk, p.segments, p.warps, p.maxnreg  # Based at 8K: the Kronecker scans, 3 segments
    ('fwd/scan/causal/kron', 64, 3, 4, 168)
    >>> mod.plan((2, 16, 2048, 16), (2, 16, 2048, 64), torch.bfloat16, h200, True, True, "fwd").route
    'fwd/fused/segments'
    >>> mod.plan((1, 1, 64, 16), (1, 1, 64, 16), torch.float32, "cpu", True, False, "fwd", {"fused": False}).route
    'fwd/scan/causal/kron'
    """
    t = _resolve(tuning)
    dev = _device_info(device)
    key = (tuple(q_shape), tuple(v_shape), dtype, dev, bool(causal), bool(normalize), part, chunk, block_f, block_v,
           segments, saved, bool(state), tuple(t.items()), _interpreting())
    p = _PLANS.get(key)
    if p is None:
        p = _PLANS[key] = _plan(tuple(q_shape), tuple(v_shape), dtype, dev, bool(causal), bool(normalize), part, t,
                                chunk, block_f, block_v, segments, saved, bool(state))
    return p


def _route(part, path, causal, kron, const, segments, saved):
    """The ROUTES name of a pass."""
    if path == "fused":
        if part == "fwd":
            return "fwd/fused/segments" if segments > 1 else "fwd/fused"
        return "bwd/fused" if segments == 1 else "bwd/fused/segments/saved" if saved else "bwd/fused/segments/rebuilt"
    if path == "fused-table":
        return "fwd/chunk/fused-table"
    if path == "chunk":
        return "fwd/chunk/kron" if kron else "fwd/chunk/symmetric"
    if part == "fwd":
        if causal:
            return ("fwd/scan/causal/kron/const" if const else "fwd/scan/causal/kron") if kron else \
                "fwd/scan/causal/symmetric"
        return "fwd/scan/full/kron" if kron else "fwd/scan/full/symmetric"
    if causal:
        return ("bwd/scan/causal/kron/const" if const else "bwd/scan/causal/kron") if kron else \
            "bwd/scan/causal/symmetric"
    return "bwd/scan/full/kron" if kron else "bwd/scan/full/symmetric"


def _plan(q_shape, v_shape, dtype, dev, causal, normalize, part, t, chunk, block_f, block_v, segments, saved, state):
    B, H, T, D = q_shape
    DV = v_shape[-1]
    BH = B * H
    # BD at least 32: triton 3.6 on sm_90 miscompiled the [BT, BF] x [BF, 16] scatter dot of _phi_vjp
    BD, BV = max(32, _pow2(D)), max(16, _pow2(DV))
    # fp32 inputs keep fp32 accuracy through three tf32 passes; 16-bit inputs use their own MMA
    precision = "tf32x3" if dtype == torch.float32 else "tf32"
    base = dict(head_block=BD, v_pad=BV, precision=precision, wide=_wide(T, D, DV))
    cuda = dev.type == "cuda"
    tiles = _fused_tiles_dims(D, DV, part, T, t) if causal else None
    kron = _kron_on(t) and tiles is None
    chunk_fwd = t["chunk_fwd"] if t["chunk_fwd"] is not None else tiles is None and not kron
    if part == "fwd" and causal and chunk_fwd:
        # the chunk-parallel forward: per-segment prefix states (as many as chunk_fwd_mib MiB allow)
        chunk = chunk or _CHUNK
        if tiles is not None:
            # one symmetric table read as one [F_pad, DV] tile by the segment pass, 64 rows at a time by the walk
            tbf, bf, kron = tiles[0], min(64, tiles[0]), False
        else:
            tbf = bf = block_f or 64
        f_pad = _kron_tiles(D, tbf, False) * tbf if kron else _sym_pad(D, tbf)
        NC = _cdiv(T, chunk)
        cps = max(t["chunk_fwd_cps"], _cdiv(NC * BH * f_pad * BV * 4, t["chunk_fwd_mib"] * 2**20))
        cps = min(cps, NC)
        nseg = _cdiv(NC, cps)
        warps = _scan_warps(kron, tbf, BV)
        KA = _kron_group(tbf)
        return Plan(route=_route(part, "fused-table" if tiles is not None else "chunk", True, kron, False, nseg, False),
                    chunk=chunk, block_f=bf, block_v=BV, table_block_f=tbf, f_pad=f_pad, kron=kron,
                    group=(tbf // (KA * KA), KA) if kron else (1, 1), segments=nseg, cps=cps, warps=4,
                    seg_warps=warps, seg_step=_seg_group(chunk, tbf, BV, cps, False, t["seg_rows"]), **base)
    if tiles is not None:
        # the fused path: one program per (segment, batch*head) holds the whole [F_pad, DV] state
        BF, BVf = tiles
        chunk = chunk or _auto_chunk(tiles, dtype)
        NC = _cdiv(T, chunk)
        # 8 warps keep a state of 64 x 64 and more out of local memory; the forward walk wants 4 at 64 x 64
        seg_warps = 8 if BF * BVf >= 64 * 64 else 4
        if part == "fwd":
            warps, streams, passes = (8 if BF * BVf > 64 * 64 else 4), False, 1
        else:
            # side by side for large states and long walks (short ones lose the second stream's cost)
            warps, passes = seg_warps, 2
            streams = cuda and (t["bwd_streams"] if t["bwd_streams"] is not None else BF * BVf > 64 * 64 or NC >= 512)
        slots = (_slots(dev.sms, warps), _slots(dev.sms, seg_warps))
        nseg, cps = _segments(NC, BH, segments, slots=slots, passes=passes, shared=streams, seg_rows=t["seg_rows"])
        reuse = False
        if part == "bwd" and saved is not None:
            # the forward's prefix states, re-cut into this pass's chunks where their segments are whole chunks
            tokens, n = saved
            if tokens % chunk == 0 and _cdiv(NC, tokens // chunk) == n:
                cps, reuse = tokens // chunk, True
                nseg = _cdiv(NC, cps)
        return Plan(route=_route(part, "fused", True, False, False, nseg, reuse), chunk=chunk, block_f=BF,
                    block_v=BVf, table_block_f=BF, f_pad=_sym_pad(D, BF), segments=nseg, cps=cps, warps=warps,
                    seg_warps=seg_warps, seg_step=_seg_group(chunk, BF, BVf, cps, False, t["seg_rows"]),
                    seg_step_q=_seg_group(chunk, BF, BVf, cps, normalize, t["seg_rows"]), streams=streams,
                    saved=reuse, **base)
    # the general path: intra kernel, then scans over (feature tile, v tile, batch*head)
    chunk = chunk or _CHUNK
    bf = block_f or 64
    const = causal and kron and t["const_out"] and not state and kron_const_out(D, bf)
    f_pad = _kron_tiles(D, bf, const) * bf if kron else _sym_pad(D, bf)
    # fp32 operands at a 128-wide v tile ask 263,168 B of shared memory (sm_90 has 232,448): two v tiles instead
    BVs = (min(BV, 64) if dtype == torch.float32 else BV) if block_v is None else min(BV, block_v)
    warps = _scan_warps(kron, bf, BVs)
    NC, NF, NV = _cdiv(T, chunk), f_pad // bf, _cdiv(DV, BVs)
    if part == "fwd":
        # the Kronecker forward walk capped at _MAXNREG_FWD registers: three programs per SM instead of two
        maxnreg = _MAXNREG_FWD if kron and cuda else 0
        streams, passes, slots = False, 1, (_slots(dev.sms, warps, maxnreg), _slots(dev.sms, warps))
    else:
        maxnreg, passes, slots = 0, 2, (_slots(dev.sms, warps), _slots(dev.sms, warps))
        streams = cuda and (t["bwd_streams"] if t["bwd_streams"] is not None else True)
    nseg, cps = (_segments(NC, NF * NV * BH, segments, slots=slots, passes=passes, shared=streams,
                           seg_rows=t["seg_rows"]) if causal else (1, NC))
    # TMA row moves on sm_90+ (not the interpreter: no TMA reduce there), 16-byte rows, enough work
    bits = t["tma_" + part] if BH * T * NF >= t["tma_min_work"] else 0
    elem = torch.finfo(dtype).bits // 8
    ok = bool(bits) and cuda and dev.major >= 9 and not _interpreting() and (DV * elem) % 16 == 0 and DV % 4 == 0
    KA = _kron_group(bf)
    KG = bf // (KA * KA)
    return Plan(route=_route(part, "scan", causal, kron, const, nseg, False), chunk=chunk, block_f=bf, block_v=BVs,
                table_block_f=bf, f_pad=f_pad, kron=kron, group=(KG, KA) if kron else (1, 1), const_out=const,
                segments=nseg, cps=cps, warps=warps, seg_warps=warps, intra_warps=_intra_warps(chunk, BD, BV),
                maxnreg=maxnreg, seg_step=_seg_group(chunk, bf, BVs, cps, False, t["seg_rows"]),
                seg_step_q=_seg_group(chunk, bf, BVs, cps, normalize, t["seg_rows"]), tma_ld=ok and bool(bits & 1),
                tma_add=ok and bool(bits & 2), tma_dx=ok and bool(bits & 4) and kron and KG == 1 and D % 4 == 0,
                streams=streams, **base)


def _sym_pad(D, block_f):
    # features of the symmetric table, padded to whole tiles (feature_tables)
    return max(block_f, _cdiv(feature_dim(D), block_f) * block_f)


def _scan_warps(kron, block_f, block_v):
    # a [BF, BV] fp32 state of 64 x 64 stays out of local memory at 8 warps; the Kronecker walks run
    # best at 4 (several programs share an SM and hide each other's latency)
    return 4 if kron or block_f * block_v < 64 * 64 else 8


def _intra_warps(chunk, BD, BV):
    # the intra backward's [BT, BT] score tiles and [BT, BD], [BT, BV] operands spill at 64 x 64 with 4 warps
    return 8 if chunk * max(BD, BV) >= 64 * 64 else 4


# the fused path keeps the whole [F_pad, DV_pad] fp32 state of a sequence in one program
_FUSED_MAX_STATE = 256 * 64
# a degree-2 f whose features fit one tile takes the fused path below these lengths, the general
# Kronecker scans from them on (the crossing on the H200: TUNING.md)
_FUSED_DEG2_BELOW = {"fwd": 8192, "bwd": 8192}
# tokens per chunk when chunk=None: 32 where the fused state is above 64 x 64 (64 spills on sm_90), else 64
_CHUNK = 64


def _auto_chunk(tiles, dtype=None):
    if tiles is None:
        return _CHUNK
    # a 256-feature table at chunk 64 failed on the H200 even with a small state: fp32 asked 458,752 B of shared
    # memory, bf16 read out of bounds (Based d16 with v <= 16)
    if tiles[0] * tiles[1] <= 64 * 64 and tiles[0] <= 128:
        return 64
    # fp32 operands double the tiles: d16/v64 at 32 asked 237,568 B of shared memory (sm_90 has 232,448), 16 asks 188,672
    return 16 if dtype == torch.float32 else 32


def _fused_tiles_dims(D, DV, part="fwd", T=0, t=None):
    """(BF, BV) of the fused causal path for this pass when all features fit one tile, else None.
    Degree 2 takes it below _FUSED_DEG2_BELOW tokens; tuning fused / fused_fwd / fused_bwd force it."""
    t = _resolve() if t is None else t
    force = t["fused_" + part]
    if not t["fused"] or not (force if force is not None else (T < _FUSED_DEG2_BELOW[part] if _kron_on(t) else True)):
        return None
    BF = max(16, _pow2(feature_dim(D)))
    BV = max(16, _pow2(DV))
    return (BF, BV) if BF * BV <= _FUSED_MAX_STATE else None


# the causal scans choose their segments by waves (_wave_segments): a walk program's time is its chunk
# count whether or not it shares its SM, so a cut costs (waves of walk programs) x (chunks per segment),
# plus the segment-sum pass at _SEG_STEP of a walk step per chunk, plus _PROGRAM_STEPS steps per program
# for its carried state (both measured on the H200: TUNING.md)
_SEG_STEP = 0.45
_PROGRAM_STEPS = 2
_WAVE_CUTS = {}
# the Kronecker forward walk's register cap (ptxas maxnreg)
_MAXNREG_FWD = 168
# the segment-sum pass steps up to this many rows (x d64 at 256 asked for 237 KB of shared memory)
_SEG_MAX_ROWS = 128
# the chunk-parallel forward's defaults (tuning chunk_fwd_mib, chunk_fwd_cps)
_CHUNK_FWD_MIB = TUNING["chunk_fwd_mib"]
_CHUNK_FWD_CPS = TUNING["chunk_fwd_cps"]


def _slots(sms, warps, maxnreg=0):
    """Scan programs the GPU runs at once: SMs x programs per SM by registers (the scan kernels sit
    at their register cap, ptxas ``maxnreg`` or 255 per thread, allocated 8 at a time)."""
    regs = -(-(maxnreg or 255) // 8) * 8
    return sms * max(1, 65536 // (regs * 32 * warps))


def _wave_segments(NC, programs, walk_slots, seg_slots, passes=1, shared=True):
    """Segments for ``passes`` causal walks of NC chunks with ``programs`` programs per segment (on the
    GPU together when ``shared``, else one after the other): the fewest that minimise waves x chunks
    per segment over the walks and the segment-sum passes (all but one segment each), with
    ``walk_slots`` / ``seg_slots`` programs at once."""
    key = (NC, programs, walk_slots, seg_slots, passes, shared)
    if key not in _WAVE_CUTS:
        best, seen = None, set()
        for n in range(1, min(NC, 64) + 1):
            cps = _cdiv(NC, n)
            n = _cdiv(NC, cps)
            if n in seen:
                continue
            seen.add(n)
            walk = _cdiv(passes * n * programs, walk_slots) if shared else passes * _cdiv(n * programs, walk_slots)
            cost = (walk + _SEG_STEP * _cdiv(passes * (n - 1) * programs, seg_slots)) * (cps + _PROGRAM_STEPS)
            if best is None or cost < best[0]:
                best = (cost, n)
        _WAVE_CUTS[key] = best[1]
    return _WAVE_CUTS[key]


def _segments(NC, programs, segments, target=None, slots=None, passes=1, shared=True, seg_rows=TUNING["seg_rows"]):
    """(number of segments, chunks per segment) for a causal scan of NC chunks.

    ``programs`` is the number of scan programs per segment (feature tiles x v tiles x
    batch*head); ``segments=None`` picks them by waves (:func:`_wave_segments`) when ``slots``
    = (walk slots, segment-pass slots) is given, else enough for about ``target`` programs.
    Chunks per segment are a multiple of ``seg_rows`` (the segment pass steps over whole groups).
    """
    if segments is None:
        if slots is not None:
            segments = _wave_segments(NC, max(1, programs), *slots, passes, shared)
        else:
            segments = -(-target // max(1, programs))
    segments = max(1, min(int(segments), NC))
    cps = -(-NC // segments)
    if segments > 1:
        g = max(1, seg_rows)
        cps = -(-cps // g) * g
    return -(-NC // cps), cps


def _seg_group(chunk, block_f, block_v, cps=None, scale_y=False, seg_rows=TUNING["seg_rows"]):
    """The chunks one step of the segment-sum pass covers: ``seg_rows``, halved until it divides ``cps``
    (None: any) and the step fits (tiles up to 64 x 64, steps up to _SEG_MAX_ROWS rows). The sums of
    dn / den (``scale_y``) keep one chunk a step (ptxas spilled at two)."""
    if scale_y:
        return 1
    g = max(1, seg_rows)
    while g > 1 and ((cps is not None and cps % g) or chunk * g > _SEG_MAX_ROWS or block_f * block_v > 64 * 64):
        g //= 2
    return g


def _wide(T, D, DV):
    """True when a sequence's row offsets need int64 (see _chunk_rows)."""
    return T * max(D, DV, 1) >= 2**31 - 2**20


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


