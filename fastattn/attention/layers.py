"""torch.nn layers built from a spec: the attention core and a multi-head block with projections.

>>> import torch
>>> attn = FastAttention.from_spec("1 + x + x**2/2", head_dim=8)
>>> q = k = v = torch.randn(2, 4, 50, 8)
>>> attn(q, k, v).shape
torch.Size([2, 4, 50, 8])
>>> block = FastMultiheadAttention(32, 4, spec="1 + x + x**2/2")
>>> block(torch.randn(2, 50, 32)).shape
torch.Size([2, 50, 32])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fastattn.errors import KernelError
from fastattn.kernels.codegen import Polynomial
from fastattn.kernels.naive import is_finite_real, symmetric_tables
from fastattn.kernels.poly import check_feature_count, check_normalizer, choose_backend, poly_attention, polynomial

__all__ = ["FastAttention", "FastMultiheadAttention"]


class FastAttention(nn.Module):
    """Linear-time attention o_i = sum_{j in M(i)} f(s q_i.k_j) v_j [/ sum_j f], a drop-in for SDPA.

    Takes (q, k, v) of shapes [B, H, T, D], [B, H, T, D], [B, H, T, DV] like
    ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)`` and
    returns [B, H, T, DV]. CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``) run
    the Triton kernels generated for f; other tensors run the pure-torch chunkwise form.
    Build it with :meth:`from_spec`.

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
        check_normalizer(poly, normalize, normalizer_fix)
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
        idx, w_phi, w_psi = symmetric_tables(poly, head_dim, self.scale)
        self.register_buffer("_idx", idx, persistent=False)
        self.register_buffer("_w_phi", w_phi, persistent=False)
        self.register_buffer("_w_psi", w_psi, persistent=False)

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

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.dim() != 4 or q.shape[-1] != self.head_dim or k.shape != q.shape:
            raise KernelError(f"expected q, k of shape [B, H, T, {self.head_dim}]; got q {tuple(q.shape)}, "
                              f"k {tuple(k.shape)}")
        if v.dim() != 4 or v.shape[:3] != q.shape[:3] or v.shape[-1] != self.head_dim_v:
            raise KernelError(f"expected v of shape [B, H, T, {self.head_dim_v}] matching q {tuple(q.shape)}; "
                              f"got {tuple(v.shape)}")
        tables = (self._idx, self._w_phi, self._w_psi) if choose_backend(q, self.backend) == "torch" else None
        return poly_attention(q, k, v, self.poly, scale=self.scale, causal=self.causal, normalize=self.normalize,
                              normalizer_fix=self.normalizer_fix, eps=self.eps, chunk=self.chunk,
                              block_f=self.block_f, block_v=self.block_v, backend=self.backend, tables=tables,
                              check_output=self.check_output)

    def extra_repr(self) -> str:
        return (f"f(x)={self.poly.text}, head_dim={self.head_dim}, head_dim_v={self.head_dim_v}, "
                f"features={self.feature_dim}, causal={self.causal}, normalize={self.normalize}, "
                f"scale={self.scale:.4g}")


class FastMultiheadAttention(nn.Module):
    """Multi-head self-attention with input/output projections around :class:`FastAttention`.

    A block for a small transformer: ``forward(x)`` maps [B, T, embed_dim] to
    [B, T, embed_dim] (batch first), like ``nn.MultiheadAttention(..., batch_first=True)``
    used as ``attn(x, x, x, need_weights=False)[0]`` with a causal mask.

    Parameters
    ----------
    embed_dim, num_heads : int
        ``embed_dim`` must be divisible by ``num_heads``.
    spec : str, Spec, dict or Polynomial
        f; default ``"1 + x + x**2/2"`` (second-order Taylor of exp, positive on R).
    degree : int, optional
        Truncation degree for a non-polynomial f.
    causal, normalize, scale, normalizer_fix, eps, chunk, block_f, block_v, backend
        As in :class:`FastAttention`.
    bias : bool
        Biases in the projections.

    Examples
    --------
    >>> m = FastMultiheadAttention(16, 2, spec="(1+x)**3", normalize=False)
    >>> m(torch.randn(1, 7, 16)).shape
    torch.Size([1, 7, 16])
    """

    def __init__(self, embed_dim: int, num_heads: int, spec="1 + x + x**2/2", *, degree: int | None = None,
                 causal: bool = True, normalize: bool = True, scale: float | None = None,
                 normalizer_fix: str | None = None, eps: float = 1e-6, bias: bool = True, chunk: int | None = None,
                 block_f: int = 64, block_v: int | None = None, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        if num_heads < 1 or embed_dim % num_heads:
            raise KernelError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias, device=device, dtype=dtype)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, device=device, dtype=dtype)
        self.attn = FastAttention.from_spec(spec, self.head_dim, causal=causal, normalize=normalize, scale=scale,
                                            degree=degree, normalizer_fix=normalizer_fix, eps=eps, chunk=chunk,
                                            block_f=block_f, block_v=block_v, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise KernelError(f"expected x of shape [B, T, {self.embed_dim}]; got {tuple(x.shape)}")
        B, T, _ = x.shape
        # [B, T, 3, H, Dh] -> three [B, H, T, Dh]
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        o = self.attn(q, k, v)  # [B, H, T, Dh]
        return self.out_proj(o.transpose(1, 2).reshape(B, T, self.embed_dim))
