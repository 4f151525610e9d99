"""Sparse softmax attention kernels (see README.md): QK-dropping, hash buckets and static patterns.

* :mod:`~fastattn.kernels.sparse.naive`: the dense float64 masked-softmax references.
* :mod:`~fastattn.kernels.sparse.schedule`: token order and block schedules (torch).
* :mod:`~fastattn.kernels.sparse.flash`: the Triton forward / dq / dk-dv kernels and their autograd Function.

The public functions are :func:`fastattn.attention.sparse_attention` and
:func:`fastattn.attention.pattern_attention`.
"""

from fastattn.kernels.sparse.naive import allowed_pairs, gradient_terms, masked_attention
from fastattn.kernels.sparse.schedule import Schedule, list_schedule, range_schedule, range_schedules

__all__ = ["allowed_pairs", "masked_attention", "gradient_terms", "Schedule", "range_schedule", "range_schedules",
           "list_schedule"]
