"""The generated module's header: the f-specific block (docstring and coefficient constants), the
imports and ``__all__``.

codegen replaces the lines between "# >>> header" and "# <<< header" with the docstring and the
literal constants of f; the block below is the f(x) = x default. This docstring is the part's
own and is not copied into the generated module.
"""

# >>> header
"""Polynomial linear attention, f(x) = x (the template's default; codegen replaces this block).

o_i = sum_{j in M(i)} f(s q_i.k_j) v_j  [ / sum_{j in M(i)} f(s q_i.k_j) ]
"""
COEFFS = {1: 1.0}
COEFFS_TEXT = "x"
POSITIVE_ON_REALS = False
POSITIVITY_REASON = "f(x) = x is negative for x < 0"
DEFAULTS = {"causal": True, "normalize": False, "scale": None, "normalizer_fix": None}
# <<< header
# This file is the template that fastattn.kernels.codegen fills in: the blocks between
# ">>> name" and "<<< name" markers are replaced by code generated from the coefficients
# of f; everything else is the same for every f. Layout top-down: spec-specific device
# functions, shared jit kernels, feature tables, host fwd/bwd, autograd Function, public
# function, nn.Module. It imports only torch and triton (plus the standard library).

import collections
import dataclasses
import itertools
import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["COEFFS", "feature_tables", "feature_dim", "poly_attention", "PolyAttention", "PolyAttentionFunction"]

