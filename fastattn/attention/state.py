"""The carried state of polynomial linear attention: what a prefill leaves and a decoding step reads.

With phi(q).psi(k) = f(s q.k) in the symmetric-tensor basis (the feature order of
``fastattn.feature_map(spec, dim=D)`` and :func:`fastattn.kernels.naive.symmetric_tables`), the
causal output at token t is o_t = phi(q_t).S_t / phi(q_t).z_t with

    S_t = sum_{i <= t} psi(k_i) v_i^T   [F, DV]        z_t = sum_{i <= t} psi(k_i)   [F]

so a model generates token by token in O(F DV) per token and head, whatever the context length.

:class:`ReadMostlyState` is the same sums kept for a decoding step that reads the state and does not write it:
a 16-bit read copy of S and a ring of the last tokens not yet folded into the float32 master
(``init_state(..., pending=R)``).

>>> import torch
>>> st = init_state(batch=2, heads=4, features=15, head_dim_v=8)
>>> st.S.shape, st.z.shape, st.S.dtype, st.tokens.tolist()
(torch.Size([2, 4, 15, 8]), torch.Size([2, 4, 15]), torch.float32, [0, 0])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastattn.errors import KernelError

__all__ = ["State", "ReadMostlyState", "init_state", "read_mostly", "read_dtype", "state_dtype", "check_state",
           "check_read_mostly"]


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a state is kept in for inputs of ``dtype``: float32 for 16- and 32-bit inputs, float64 for float64.

    >>> state_dtype(torch.bfloat16), state_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)


@dataclass
class State:
    """Sums over the tokens seen so far, per batch row and key/value head.

    Attributes
    ----------
    S : tensor [B, H_kv, F, DV]
        sum_i psi(k_i) v_i^T, features in the order of ``fastattn.feature_map(spec, dim=D)``.
    z : tensor [B, H_kv, F]
        sum_i psi(k_i), the normaliser's sum (phi(q).z = sum_i f(s q.k_i)).
    tokens : tensor [B] int64
        Keys that entered the sums per batch row (keys masked as padding are not counted).

    S and z are float32 (float64 when the inputs are float64: :func:`state_dtype`). H_kv is the
    number of key/value heads: with grouped-query attention the state is shared by the query heads
    of a group. The tensors keep their autograd history, so a loss can flow back through a carried
    state (truncated BPTT); call :meth:`detach` to cut it.

    For decoding that reads S once per token and writes it once per R tokens, see
    :class:`ReadMostlyState` (``init_state(..., pending=R)``, or :func:`read_mostly` of a prefill's State):
    a decoding step on a State reads and writes all of it every token.

    Examples
    --------
    >>> st = init_state(1, 2, features=6, head_dim_v=3, dtype=torch.float64)
    >>> st.detach().S.dtype
    torch.float64
    """

    S: torch.Tensor
    z: torch.Tensor
    tokens: torch.Tensor

    def detach(self) -> "State":
        """The same sums without autograd history."""
        return State(self.S.detach(), self.z.detach(), self.tokens)

    def to(self, device) -> "State":
        """The state on ``device`` (its dtype is kept)."""
        return State(self.S.to(device), self.z.to(device), self.tokens.to(device))


def init_state(batch: int, heads: int, features: int, head_dim_v: int, *, device=None,
               dtype: torch.dtype = torch.float32, pending: int | None = None, head_dim: int | None = None,
               tables: tuple | None = None):
    """The empty state (no token seen): zeros, in :func:`state_dtype` of ``dtype``.

    With ``pending=R`` (and ``head_dim``, the D of the keys) a :class:`ReadMostlyState` that folds
    every R tokens instead (``tables``: the decoding tables it folds with, see there).

    Parameters
    ----------
    batch, heads : int
        B and the number of key/value heads H_kv.
    features : int
        F, the size of the feature map (``FastAttention.feature_dim``).
    head_dim_v : int
        DV.
    device : torch.device, optional
    dtype : torch.dtype
        The dtype of the inputs the state will meet; the state is kept in ``state_dtype(dtype)``.

    Examples
    --------
    >>> init_state(1, 1, 3, 2, dtype=torch.float16).S.dtype
    torch.float32
    """
    for name, n in (("batch", batch), ("heads", heads), ("features", features), ("head_dim_v", head_dim_v)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise KernelError(f"init_state: {name}={n!r} must be an int >= 1")
    if not dtype.is_floating_point:
        raise KernelError(f"init_state: dtype={dtype} must be a floating dtype (the dtype of q, k, v)")
    sd = state_dtype(dtype)
    st = State(torch.zeros(batch, heads, features, head_dim_v, device=device, dtype=sd),
               torch.zeros(batch, heads, features, device=device, dtype=sd),
               torch.zeros(batch, dtype=torch.int64, device=device))
    if pending is None:
        return st
    if head_dim is None:
        raise KernelError("init_state(pending=R) keeps the pending keys: pass head_dim=D as well")
    return read_mostly(st, pending=pending, head_dim=head_dim, dtype=dtype, tables=tables)


def check_state(state, batch: int, heads: int, features: int, head_dim_v: int, dtype: torch.dtype,
                device: torch.device) -> None:
    """Refuse, by KernelError naming the mismatch, a state that does not fit inputs of these sizes.

    >>> st = init_state(1, 2, 6, 3)
    >>> check_state(st, 1, 4, 6, 3, torch.float32, torch.device("cpu"))
    Traceback (most recent call last):
    ...
    fastattn.errors.KernelError: state.S has shape (1, 2, 6, 3); these inputs need [B, H_kv, F, DV] = [1, 4, 6, 3]: build it with init_state(batch=1, heads=4, ...) or from a prefill of the same layer
    """
    if not isinstance(state, State):
        raise KernelError(f"state must be a fastattn.attention.State (from init_state or output_final_state=True); "
                          f"got {type(state).__name__}")
    want = (batch, heads, features, head_dim_v)
    if not isinstance(state.S, torch.Tensor) or tuple(state.S.shape) != want:
        got = tuple(state.S.shape) if isinstance(state.S, torch.Tensor) else type(state.S).__name__
        raise KernelError(f"state.S has shape {got}; these inputs need [B, H_kv, F, DV] = {list(want)}: build it "
                          f"with init_state(batch={batch}, heads={heads}, ...) or from a prefill of the same layer")
    if not isinstance(state.z, torch.Tensor) or tuple(state.z.shape) != want[:3]:
        got = tuple(state.z.shape) if isinstance(state.z, torch.Tensor) else type(state.z).__name__
        raise KernelError(f"state.z has shape {got}; these inputs need [B, H_kv, F] = {list(want[:3])}")
    if not isinstance(state.tokens, torch.Tensor) or tuple(state.tokens.shape) != (batch,):
        raise KernelError(f"state.tokens must be an int64 tensor of shape [{batch}]; got {state.tokens!r}")
    sd = state_dtype(dtype)
    if state.S.dtype != sd or state.z.dtype != sd:
        raise KernelError(f"state is {state.S.dtype}/{state.z.dtype}, but inputs of {dtype} carry a {sd} state: "
                          f"build it with init_state(..., dtype={dtype})")
    if state.S.device != device or state.z.device != device:
        raise KernelError(f"state is on {state.S.device}, the inputs on {device}: move it with state.to(device)")


def read_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a :class:`ReadMostlyState`'s read copy of S for inputs of ``dtype``: bfloat16 for 16-bit inputs
    (float16's range would overflow on a long context's sums), else ``state_dtype(dtype)``.

    >>> read_dtype(torch.float16), read_dtype(torch.float32)
    (torch.bfloat16, torch.float32)
    """
    return torch.bfloat16 if dtype in (torch.float16, torch.bfloat16) else state_dtype(dtype)


@dataclass
class ReadMostlyState:
    """A state for read-mostly decoding: the float32 master sums, a 16-bit read copy of S, and pending tokens.

    With ``pending=R``, a decoding step reads ``S_read`` (and ``z``) once and writes only its token into the ring
    (k, v, g): o = [exp(G) phi(q).S_read + sum_j exp(G_j) f(s q.k_j) v_j + f(s q.k) v] / [the same with z and 1 for
    v], with G the sum of the pending and current tokens' log gates and G_j those of the tokens after j (the
    products of exp(g) since each entered, so S_t = exp(g_t) S_{t-1} + psi(k_t) v_t^T holds exactly as on a
    :class:`State`). Every R-th token folds the ring and itself into the master (one read and write of S, z in
    float32) and rewrites ``S_read``: per token that is S_read + (2 S + S_read) / R bytes on average, not 2 S.
    The only rounding beyond the ordinary step's is ``S_read``'s (bf16 for 16-bit inputs, :func:`read_dtype`);
    the master, and so the state after a fold, is the ordinary float32 state up to float32 rounding.

    Attributes
    ----------
    S, z, tokens :
        The master sums up to the last fold ([B, H_kv, F, DV] and [B, H_kv, F], float32) and the tokens seen
        (all of them, pending ones included), as in :class:`State`.
    S_read : tensor [B, H_kv, F, DV]
        S rounded to :func:`read_dtype`, rewritten at every fold.
    k, v : tensor [B, H_kv, R - 1, D], [B, H_kv, R - 1, DV]
        The pending tokens' keys and values (slots < ``pending``), in the inputs' dtype.
    g : tensor [B, H_kv, R - 1] float32
        Their log gates (0 for a step without a gate; -inf, a reset, is allowed).
    pending : int
        Tokens in the ring (0 <= pending < R), kept on the host: the step it reaches R at folds. A CUDA graph
        therefore records a whole cycle, R steps from ``pending == 0``.
    tables : tuple, optional
        The decoding tables (:func:`fastattn.kernels.decode.decode_tables`) :meth:`flush` folds with.

    Examples
    --------
    >>> st = init_state(2, 4, features=15, head_dim_v=8, pending=16, head_dim=4, dtype=torch.bfloat16)
    >>> st.S_read.dtype, st.k.shape, st.pending, st.period
    (torch.bfloat16, torch.Size([2, 4, 15, 4]), 0, 16)
    """

    S: torch.Tensor
    z: torch.Tensor
    tokens: torch.Tensor
    S_read: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor
    pending: int = 0
    tables: tuple | None = None

    @property
    def period(self) -> int:
        """R: the ring holds R - 1 tokens, the R-th folds."""
        return self.k.shape[2] + 1

    def master(self) -> State:
        """The float32 sums up to the last fold as a :class:`State` (the same tensors, not copies)."""
        return State(self.S, self.z, self.tokens)

    def clone(self) -> "ReadMostlyState":
        """A copy that shares no tensor with this one."""
        return ReadMostlyState(self.S.clone(), self.z.clone(), self.tokens.clone(), self.S_read.clone(),
                               self.k.clone(), self.v.clone(), self.g.clone(), self.pending, self.tables)

    def to(self, device) -> "ReadMostlyState":
        """The state on ``device`` (dtypes kept; tables moved too)."""
        t = None if self.tables is None else tuple(x.to(device) for x in self.tables)
        return ReadMostlyState(*(x.to(device) for x in (self.S, self.z, self.tokens, self.S_read, self.k, self.v,
                                                         self.g)), self.pending, t)

    def flush(self, tables: tuple | None = None) -> State:
        """Fold the pending tokens into the master now (in place) and return it as a :class:`State`.

        The returned State shares the master's tensors: read it, or decode on with this object; an ordinary
        step on the State would leave ``S_read`` behind. On CUDA (or under ``TRITON_INTERPRET=1``) the fold
        kernel runs, else torch ops (:mod:`fastattn.kernels.read_mostly_naive`).

        >>> from fastattn.attention import FastAttention
        >>> attn = FastAttention.from_spec("1 + x + x**2/2", head_dim=2)
        >>> st = attn.init_state(1, 1, pending=4)
        >>> x = torch.ones(1, 1, 1, 2)
        >>> _, st = attn.step(x, x, x, st, inplace=True)
        >>> st.pending, st.S.abs().sum().item()
        (1, 0.0)
        >>> st.flush().S.abs().sum().item() > 0, st.pending
        (True, 0)
        """
        tables = self.tables if tables is None else tables
        if tables is None:
            raise KernelError("flush() needs the decoding tables: build the state with FastAttention.init_state(..., "
                              "pending=R) or pass tables=decode_tables(...)")
        if self.pending:
            import os

            if self.S.is_cuda or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
                from fastattn.kernels.read_mostly import fold_pending
            else:
                from fastattn.kernels.read_mostly_naive import fold_pending
            fold_pending(self, tables)
        return self.master()


def read_mostly(state: State, *, pending: int, head_dim: int, dtype: torch.dtype = torch.bfloat16,
                tables: tuple | None = None, read_copy: torch.dtype | None = None) -> ReadMostlyState:
    """A :class:`ReadMostlyState` holding ``state``'s sums (copied; e.g. a prefill's), for inputs of ``dtype``.

    ``pending`` is R (>= 2), ``head_dim`` the keys' D, ``read_copy`` the read copy's dtype (default
    :func:`read_dtype` of ``dtype``). Memory: the master plus a read copy (half of S in bf16) and
    R - 1 tokens' k, v.

    >>> st = read_mostly(init_state(1, 2, 6, 3), pending=8, head_dim=2)
    >>> st.S_read.dtype, st.v.shape
    (torch.bfloat16, torch.Size([1, 2, 7, 3]))
    """
    if isinstance(pending, bool) or not isinstance(pending, int) or pending < 2:
        raise KernelError(f"pending={pending!r} must be an int >= 2 (R: the ring keeps R - 1 tokens, the R-th folds)")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise KernelError(f"head_dim={head_dim!r} must be an int >= 1 (the D of the keys the ring keeps)")
    if not isinstance(state, State):
        raise KernelError(f"read_mostly takes a fastattn.attention.State; got {type(state).__name__}")
    B, H, F, DV = state.S.shape
    dev = state.S.device
    S = state.S.detach().to(state_dtype(dtype)).contiguous().clone()
    z = state.z.detach().to(state_dtype(dtype)).contiguous().clone()
    return ReadMostlyState(S, z, state.tokens.clone(), S.to(read_copy or read_dtype(dtype)),
                           torch.zeros(B, H, pending - 1, head_dim, device=dev, dtype=dtype),
                           torch.zeros(B, H, pending - 1, DV, device=dev, dtype=dtype),
                           torch.zeros(B, H, pending - 1, device=dev, dtype=torch.float32), 0, tables)


def check_read_mostly(state, batch: int, heads: int, features: int, head_dim: int, head_dim_v: int,
                      dtype: torch.dtype, device: torch.device) -> None:
    """:func:`check_state` for a :class:`ReadMostlyState` (its master, read copy and ring), by KernelError.

    >>> st = init_state(1, 2, 6, 3, pending=4, head_dim=2)
    >>> check_read_mostly(st, 1, 2, 6, 5, 3, torch.float32, torch.device("cpu"))
    Traceback (most recent call last):
    ...
    fastattn.errors.KernelError: the read-mostly state keeps keys of [B, H_kv, R - 1, D] = (1, 2, 3, 2); these inputs have D = 5
    """
    if not isinstance(state, ReadMostlyState):
        raise KernelError(f"expected a ReadMostlyState; got {type(state).__name__}")
    check_state(state.master(), batch, heads, features, head_dim_v, dtype, device)
    R1 = state.k.shape[2]
    if tuple(state.S_read.shape) != tuple(state.S.shape) or state.S_read.device != device:
        raise KernelError(f"state.S_read has shape {tuple(state.S_read.shape)} on {state.S_read.device}; it must "
                          f"match S {tuple(state.S.shape)} on {device}")
    if tuple(state.k.shape) != (batch, heads, R1, head_dim):
        raise KernelError(f"the read-mostly state keeps keys of [B, H_kv, R - 1, D] = {tuple(state.k.shape)}; these "
                          f"inputs have D = {head_dim}")
    if tuple(state.v.shape) != (batch, heads, R1, head_dim_v) or tuple(state.g.shape) != (batch, heads, R1):
        raise KernelError(f"the read-mostly state's ring has v {tuple(state.v.shape)} and g {tuple(state.g.shape)}; "
                          f"these inputs need [{batch}, {heads}, {R1}, {head_dim_v}] and [{batch}, {heads}, {R1}]")
    if state.g.dtype != torch.float32:
        raise KernelError(f"state.g must be float32; got {state.g.dtype}")
    if not 0 <= state.pending <= R1:
        raise KernelError(f"state.pending = {state.pending} must be in [0, {R1}] (R - 1 ring slots)")
