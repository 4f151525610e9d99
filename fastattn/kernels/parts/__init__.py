"""The parts of the kernel template, one idea per file, read in name order.

``fastattn.kernels.codegen.template_text`` joins them (each without its own opening docstring)
into the template, a module valid as is for f(x) = x, and ``render`` replaces its ``header`` and
``device_functions`` blocks with the text of one f. The parts are text, not modules: each uses the
names of the parts before it, so none is imported on its own (``conftest.py`` keeps pytest's
doctest collection away from them; their doctests run in ``tests/test_parts.py`` on the joined
module).

=================  =====================================================================
``00_header``      header block (f's docstring and constants), imports, ``__all__``
``10_features``    f's device functions block (``_f``, ``_df``, ``_phi``, ``_phi_vjp``),
                   block-Kronecker feature tiles
``20_tiles``       feature-tile dispatch, intra-chunk forward, row moves, normaliser MMAs
``30_scans``       segment sums, segment scan, the forward walk across chunks
``35_backward``    intra-chunk backward, the backward walks
``40_fused``       fused small-feature kernels, chunk-parallel forward, normaliser passes
``50_tables``      symmetric-basis feature tables (host)
``60_plan``        Kronecker predicates and tables, ``ROUTES``, ``TUNING``, ``Plan``, ``plan``
``65_state``       a carried state between the State's basis and a plan's layout (``state_map``)
``70_launch``      launchers, ``poly_attention_fwd`` / ``poly_attention_bwd``
``80_api``         output checks, autograd Function, ``poly_attention``, ``PolyAttention``
=================  =====================================================================
"""
