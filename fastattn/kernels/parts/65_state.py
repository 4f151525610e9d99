"""Host side: a carried state between the State's basis and a plan's feature layout.

A user's state (fastattn.attention.State) holds S = sum psi(k) v^T and z = sum psi(k) in the symmetric
basis, unpadded (F = feature_dim(D) features, the order of ``_symmetric_basis``). A kernel pass holds it
in its plan's layout: the same basis padded to f_pad (symmetric tables), or the block-Kronecker tiles of
a degree-2 f. Each kernel feature is a multiple of one State feature (or of none), so the change of basis
is a gather with weights, M, built once per layout and cached; M has orthonormal columns, so its
transpose takes a kernel state back and carries gradients both ways. This docstring is not copied into
the generated module.
"""

# ----------------------------------------------------------------------------------------
# State maps: kernel feature f of a plan's layout is ratio[f] * (State feature gather[f]); a
# monomial the layout splits over m features of equal weight has ratio 1/sqrt(m) on each, since
# psi_f = sqrt(w_f) k^alpha and the m weights sum to the State's w_alpha.
# ----------------------------------------------------------------------------------------
_STATE_MAPS = {}


def state_map(p, D, scale, device):
    """(gather [f_pad] int64, ratio [f_pad] fp32, back [m, F] int64, back_ratio [m, F] fp32) of plan ``p``'s
    feature layout on head dim ``D``: kernel feature f is ratio[f] times State feature gather[f] (F, a zero
    row, where f is none of them); State feature g sums back_ratio[i, g] times kernel feature back[i, g]
    over its m = at most 2 copies (f_pad, a zero row, past them). Raises ValueError for a layout whose
    features do not split the State's weights evenly (this map would not be exact)."""
    key = (bool(p.kron), int(p.table_block_f), int(p.f_pad), bool(p.const_out), int(D), float(scale), str(device))
    if key in _STATE_MAPS:
        return _STATE_MAPS[key]
    monos, ws = _symmetric_basis(D, scale)
    F = len(monos)
    feat = [-1] * p.f_pad
    if not p.kron:
        feat[:F] = range(F)
        w_k = [abs(w) for w in ws] + [0.0] * (p.f_pad - F)
    else:
        ktab, _, w_psi, (KG, KA) = kron_tables(D, scale, "cpu", p.table_block_f, None, p.const_out)
        index = {m: g for g, m in enumerate(monos)}
        w_k = (w_psi.double() ** 2).tolist()
        bf, one = p.table_block_f, _cdiv(D, KA) * KA
        for t, row in enumerate(ktab.tolist()):
            for c in range(bf):
                f = t * bf + c
                if w_k[f] == 0.0:
                    continue
                # a low tile reads columns of x' = [x, 1]; a Kronecker tile's column `one` reads as 1; every
                # other column from D on reads as 0, and its feature is 0 whatever its weight
                if row[0] < 0:
                    col = row[1] + c
                    pair, unit = (col,), D
                else:
                    i_g, a, b = c // (KA * KA), c // KA % KA, c % KA
                    pair, unit = (row[2 + i_g * KA + a], row[2 + KG * KA + i_g * KA + b]), one
                if any(x >= D and x != unit for x in pair):
                    continue
                cols = tuple(sorted(x for x in pair if x < D))
                if cols not in index:
                    raise ValueError(f"Kronecker feature {f} (columns {cols}) of block_f={bf} at D={D} has weight "
                                     f"{w_k[f]:.6g} but is no feature of the State's basis")
                feat[f] = index[cols]
    copies = [[] for _ in range(F)]
    for f, g in enumerate(feat):
        if g >= 0:
            copies[g].append(f)
    for g, fs in enumerate(copies):
        want = abs(ws[g])
        if want and not all(math.isclose(w_k[f] * len(fs), want, rel_tol=1e-5) for f in fs):
            raise ValueError(f"the kernel layout splits State feature {monos[g]} (weight {want:.6g}) into weights "
                             f"{[w_k[f] for f in fs]}: not an even split, no exact change of basis")
        if want and not fs:
            raise ValueError(f"State feature {monos[g]} has no feature in the kernel layout (block_f={p.table_block_f})")
    m = max(1, max((len(fs) for fs in copies), default=1))
    gather = torch.tensor([g if g >= 0 else F for g in feat], dtype=torch.int64)
    ratio = torch.tensor([1.0 / math.sqrt(len(copies[g])) if g >= 0 else 0.0 for g in feat], dtype=torch.float64)
    back = torch.full((m, F), p.f_pad, dtype=torch.int64)
    back_ratio = torch.zeros((m, F), dtype=torch.float64)
    for g, fs in enumerate(copies):
        for i, f in enumerate(fs):
            back[i, g], back_ratio[i, g] = f, 1.0 / math.sqrt(len(fs))
    out = tuple(x.to(device) for x in (gather, ratio.float(), back, back_ratio.float()))
    _STATE_MAPS[key] = out
    return out


def to_kernel(x, smap):
    """A State-basis tensor [BH, F, ...] in the kernel layout [BH, f_pad, ...] (fp32, contiguous): M x."""
    gather, ratio, _, _ = smap
    xz = torch.cat([x.float(), x.new_zeros((x.shape[0], 1) + tuple(x.shape[2:]), dtype=torch.float32)], 1)
    return (xz[:, gather] * ratio.view((1, -1) + (1,) * (x.dim() - 2))).contiguous()


def from_kernel(y, smap):
    """A kernel-layout tensor [BH, f_pad, ...] in the State basis [BH, F, ...]: M^T y (M's left inverse)."""
    _, _, back, back_ratio = smap
    yz = torch.cat([y, y.new_zeros((y.shape[0], 1) + tuple(y.shape[2:]))], 1)
    shape = (1, -1) + (1,) * (y.dim() - 2)
    out = yz[:, back[0]] * back_ratio[0].view(shape)
    for i in range(1, back.shape[0]):
        out = out + yz[:, back[i]] * back_ratio[i].view(shape)
    return out

