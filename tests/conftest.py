"""Shared test set-up: the Triton interpreter on CPU, hypothesis profiles, NaN-filled fresh buffers."""

import os

import torch

# Triton picks interpreter or compiler when it is first imported, and the deterministic-
# algorithms switch below imports it: set the interpreter before that on a CPU machine.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fastattn.testing import load_profile  # noqa: E402

# Fresh torch buffers (torch.empty and friends) come back NaN-filled, so an output a
# kernel forgot to write cannot pass a comparison by being zero.
torch.use_deterministic_algorithms(True, warn_only=True)
torch.utils.deterministic.fill_uninitialized_memory = True

# Profiles ci (default here: few, derandomized examples), dev and thorough; pick with HYPOTHESIS_PROFILE.
load_profile(default="ci")


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Triton on the CPU, NaN-filled fresh kernel buffers, and generated files in a temporary cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        mp.setenv("FASTATTN_NAN_FILL", "1")
        mp.setenv("FASTATTN_CACHE", str(tmp_path_factory.mktemp("fastattn_cache")))
        yield
