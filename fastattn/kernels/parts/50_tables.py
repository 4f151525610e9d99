"""Host side: the symmetric-basis feature tables of f (index slots and weights), cached per
(head dim, scale, device). This docstring is not copied into the generated module.
"""

# ----------------------------------------------------------------------------------------
# Feature tables: the symmetric-tensor basis of f, built once per (head dim, scale).
# ----------------------------------------------------------------------------------------
_TABLES = {}


def feature_dim(dim):
    """Number of features of f on head dimension ``dim``: sum over a_j != 0 of C(dim + j - 1, j)."""
    return sum(math.comb(dim + j - 1, j) for j, a in COEFFS.items() if a != 0)


def _symmetric_basis(dim, scale):
    """The symmetric basis in its one order (by degree, then multisets in lexicographic order): the
    multisets of head-dim indices (tuples) and their weights a_j scale^j j!/alpha! (float64). The
    kernel tables and the State's features (fastattn.kernels.naive.symmetric_tables) share it."""
    rows, ws = [], []
    for j in sorted(COEFFS):
        a = float(COEFFS[j])
        if a == 0.0:
            continue
        for combo in itertools.combinations_with_replacement(range(dim), j):
            mult = math.factorial(j)
            for c in set(combo):
                mult //= math.factorial(combo.count(c))
            rows.append(combo)
            ws.append(a * float(scale) ** j * mult)
    return rows, ws


def feature_tables(dim, scale, device, block_f=64):
    """Index and weight tables of the symmetric basis for f(scale * q.k) on head dim ``dim``.

    (q.k)^j = sum over multisets alpha of size j of (j! / alpha!) q^alpha k^alpha, so feature
    alpha of degree j carries the weight w = a_j scale^j j!/alpha!, split as
    phi = sign(w) sqrt|w| q^alpha and psi = sqrt|w| k^alpha (balanced magnitudes for 16-bit
    dots, and signs of a_j < 0 handled). Features are sorted by degree and padded with
    zero-weight features to a multiple of ``block_f``.

    Returns
    -------
    idx : int32 tensor [P, F_pad]
        idx[m, f] is the m-th head-dim index of feature f, -1 where f has degree < m + 1.
    w_phi, w_psi : float32 tensors [F_pad]
    n_features : int
    """
    key = (int(dim), float(scale), str(device), int(block_f))
    if key in _TABLES:
        return _TABLES[key]
    slots = max(1, max(COEFFS))
    rows, ws = _symmetric_basis(dim, scale)
    rows = [list(combo) + [-1] * (slots - len(combo)) for combo in rows]
    n = len(rows)
    n_pad = max(block_f, -(-n // block_f) * block_f)
    idx = torch.full((slots, n_pad), -1, dtype=torch.int32)
    if n:
        idx[:, :n] = torch.tensor(rows, dtype=torch.int32).T
    w = torch.zeros(n_pad, dtype=torch.float64)
    w[:n] = torch.tensor(ws, dtype=torch.float64)
    w_psi = w.abs().sqrt()
    w_phi = torch.sign(w) * w_psi
    out = (idx.to(device), w_phi.to(torch.float32).to(device), w_psi.to(torch.float32).to(device), n)
    _TABLES[key] = out
    return out


