"""torch.nn attention layers built from a spec, the SDPA-shaped functional form, and reference attentions.

>>> from fastattn.attention import FastAttention
>>> FastAttention.from_spec("1 + x + x**2/2", head_dim=64).feature_dim
2145
"""

from fastattn.attention.functional import fast_attention
from fastattn.attention.hybrid import hybrid_attention
from fastattn.attention.layers import FastAttention, FastMultiheadAttention
from fastattn.attention.reference import quadratic_attention, softmax_attention
from fastattn.attention.sparse import lsh_buckets, pattern_attention, sparse_attention
from fastattn.attention.state import ReadMostlyState, State, init_state, read_mostly

__all__ = ["fast_attention", "hybrid_attention", "State", "ReadMostlyState", "init_state", "read_mostly", "FastAttention", "FastMultiheadAttention", "softmax_attention",
           "quadratic_attention", "sparse_attention", "pattern_attention", "lsh_buckets"]
