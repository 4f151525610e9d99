"""Chunkwise linear-attention kernels generated from a polynomial f (see README.md here).

* :mod:`~fastattn.kernels.naive`: pure-torch quadratic and chunkwise references.
* :mod:`~fastattn.kernels.codegen`: Triton source from the coefficients of f, cached on disk.
* :mod:`~fastattn.kernels.poly`: spec -> :class:`Polynomial`, and :func:`poly_attention`.
* :mod:`~fastattn.kernels.generate`: the standalone module of ``fastattn generate``.

Nothing here imports triton until a kernel is first run.
"""

from fastattn.kernels.codegen import Polynomial, load_module, render
from fastattn.kernels.generate import write_module
from fastattn.kernels.naive import chunk_attention, quadratic_attention, symmetric_features, symmetric_tables
from fastattn.kernels.poly import check_normalizer, poly_attention, polynomial

__all__ = ["Polynomial", "render", "load_module", "write_module", "quadratic_attention", "chunk_attention",
           "symmetric_features", "symmetric_tables", "polynomial", "check_normalizer", "poly_attention"]
