"""pytest set-up shared by tests/ and the doctests of fastattn/: Triton's interpreter on a machine without a GPU.

Triton picks interpreter or compiler when it is first imported, so this runs before any test module or doctest
imports it; tests/conftest.py adds the rest of the test set-up.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
