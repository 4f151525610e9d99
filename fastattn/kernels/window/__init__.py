"""Sliding-window flash attention with an outside term (see README.md): the Triton part of ``hybrid_attention``.

* :mod:`~fastattn.kernels.window.naive`: the dense float64 reference of the window kernel.
* :mod:`~fastattn.kernels.window.flash`: the Triton forward / dq / dk-dv kernels, their plan and autograd Function.
* :mod:`~fastattn.kernels.window.aot`: their sm_90 build on the CPU (registers, spills, shared memory).

The public function is :func:`fastattn.attention.hybrid_attention`.
"""

from fastattn.kernels.window.naive import window_attention_reference

__all__ = ["window_attention_reference"]
