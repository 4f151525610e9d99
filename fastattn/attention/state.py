"""The carried state of polynomial linear attention: what a prefill leaves and a decoding step reads.

With phi(q).psi(k) = f(s q.k) in the symmetric-tensor basis (the feature order of
``fastattn.feature_map(spec, dim=D)`` and :func:`fastattn.kernels.naive.symmetric_tables`), the
causal output at token t is o_t = phi(q_t).S_t / phi(q_t).z_t with

    S_t = sum_{i <= t} psi(k_i) v_i^T   [F, DV]        z_t = sum_{i <= t} psi(k_i)   [F]

so a model generates token by token in O(F DV) per token and head, whatever the context length.

>>> import torch
>>> st = init_state(batch=2, heads=4, features=15, head_dim_v=8)
>>> st.S.shape, st.z.shape, st.S.dtype, st.tokens.tolist()
(torch.Size([2, 4, 15, 8]), torch.Size([2, 4, 15]), torch.float32, [0, 0])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastattn.errors import KernelError

__all__ = ["State", "init_state", "state_dtype", "check_state"]


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
               dtype: torch.dtype = torch.float32) -> State:
    """The empty state (no token seen): zeros, in :func:`state_dtype` of ``dtype``.

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
    return State(torch.zeros(batch, heads, features, head_dim_v, device=device, dtype=sd),
                 torch.zeros(batch, heads, features, device=device, dtype=sd),
                 torch.zeros(batch, dtype=torch.int64, device=device))


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
