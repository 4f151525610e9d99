"""Linear attention over several processes: context parallelism by a scan of feature states.

A long sequence is split into contiguous slices, one per rank of a ``torch.distributed`` group;
only the F × DV state per head crosses a slice boundary (see :mod:`fastattn.distributed.context_parallel`
for the algorithm and its communication model).

>>> from fastattn.distributed import context_parallel_attention, ContextParallelAttention
>>> callable(context_parallel_attention)
True
"""

from fastattn.distributed.context_parallel import (ContextParallelAttention, context_parallel_attention,
                                                   exchange_states, exclusive_scan, local_state)
from fastattn.distributed.cp_model import comm_estimate, cp_table, format_cp_table

__all__ = ["context_parallel_attention", "ContextParallelAttention", "local_state", "exchange_states",
           "exclusive_scan", "comm_estimate", "cp_table", "format_cp_table"]
