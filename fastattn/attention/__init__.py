"""torch.nn attention layers built from a spec, and reference attentions.

>>> from fastattn.attention import FastAttention
>>> FastAttention.from_spec("1 + x + x**2/2", head_dim=64).feature_dim
2145
"""

from fastattn.attention.layers import FastAttention, FastMultiheadAttention
from fastattn.attention.reference import quadratic_attention, softmax_attention

__all__ = ["FastAttention", "FastMultiheadAttention", "softmax_attention", "quadratic_attention"]
