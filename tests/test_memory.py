"""Peak memory of a forward + backward on the general (scan) route, counted on the CPU.

``LiveBytes`` sees every storage an aten op allocates and when it dies, and keeps the peak of the
bytes alive. The peaks are compared with the accounting of fastattn/kernels/TUNING.md ("Memory of a
forward + backward"), which at B2 H16 T64K d64 bf16 is the H200's measured peak to the MiB: a change
that keeps one more [B, H, T, D] buffer alive at the peak fails here.
"""

from __future__ import annotations

import gc
import math

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fastattn.kernels.codegen import load_module
from fastattn.kernels.poly import poly_attention, polynomial

pytestmark = pytest.mark.usefixtures("kernel_env")


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages allocated under this mode and still alive; ``peak`` is their maximum.

    A storage counts from the op that returns it without having been given it (views, ``set_`` and
    in-place ops allocate nothing) until its last reference goes. The Triton interpreter holds its
    launch arguments in reference cycles, which a GPU launch does not: a new peak is only taken after
    ``gc.collect()``, so it is the peak under reference counting alone.
    """

    def __init__(self):
        super().__init__()
        self.live = {}
        self.peak = 0

    def now(self):
        self.live = {ptr: (ref, n) for ptr, (ref, n) in self.live.items() if not ref.expired()}
        return sum(n for _, n in self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = set()
        for a in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(a, torch.Tensor):
                given.add(a.untyped_storage().data_ptr())
            elif isinstance(a, torch.UntypedStorage):
                given.add(a.data_ptr())
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                if s.nbytes() and s.data_ptr() not in given:
                    self.live[s.data_ptr()] = (StorageWeakRef(s), s.nbytes())
        if self.now() > self.peak:
            gc.collect()
            self.peak = max(self.peak, self.now())
        return out


def scan_peaks(B, H, T, D, DV, elem, chunk, const, f_pad, segments):
    """(forward peak, backward peak) in bytes of what one call of the scan route allocates, the output
    included, the inputs and the upstream gradient not (the table of TUNING.md, "Memory")."""
    n, BH, NC = B * H * T, B * H, math.ceil(T / chunk)
    vec = 4 * n  # an fp32 [B, H, T]: z; in the backward also 1 / den and dz
    chunk_sums = 4 * BH * NC * DV if const else 0  # the constant's per-chunk sums: v's (fwd), dn's (bwd)
    states = 4 * BH * segments * f_pad * (DV + 1) if segments > 1 else 0  # one (S, Z) over the segments
    out = elem * n * DV
    fwd = 4 * n * DV + vec + chunk_sums + states + out  # fp32 o, z, sums, start states, o cast
    # the walks hold the fp32 sums of dq, dk, dv with 1 / den, dz, dn's sums and two start states; then
    # those are gone and the sums are cast one at a time (dq's first, while dk's and dv's are alive)
    grads = 4 * n * (2 * D + DV)
    bwd = out + vec + grads + max(elem * n * D, 2 * vec + chunk_sums + 2 * states)
    return fwd, bwd


# id, spec, B, H, T, D, DV, segments: the 64K rows' route (Kronecker scans, the constant outside them,
# one segment) and one with segment states and DV != D
CASES = [
    ("const-d64", "1 + x + x**2/2", 1, 2, 128, 64, 64, 1),
    ("segments-dv32", "x**2", 1, 2, 256, 16, 32, 2),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_scan_route_peak_is_the_accounting(case):
    _, spec, B, H, T, D, DV, segments = case
    dtype, scale, tuning = torch.float16, D ** -0.5, {"fused": False}
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, H, T, D, generator=g).mul(0.5).to(dtype).requires_grad_() for _ in range(2))
    v, do = (torch.randn(B, H, T, DV, generator=g).to(dtype) for _ in range(2))
    v.requires_grad_()
    mod = load_module(polynomial(spec))
    plans = [mod.plan(q.shape, v.shape, dtype, q.device, True, True, part, tuning, segments=segments)
             for part in ("fwd", "bwd")]
    assert [(p.route.split("/")[1], p.segments) for p in plans] == [("scan", segments)] * 2
    p = plans[1]
    for pl in plans:  # the feature tables are cached across calls: build them outside the count
        mod._tables(pl, D, scale, q.device)

    mem = LiveBytes()
    with mem:
        o = poly_attention(q, k, v, spec, scale=scale, tuning=tuning, segments=segments, check_output=False)
        fwd_peak, mem.peak = mem.peak, mem.now()
        o.backward(do)
    want_fwd, want_bwd = scan_peaks(B, H, T, D, DV, q.element_size(), p.chunk, p.const_out, p.f_pad, segments)
    got = f"forward {fwd_peak} B (accounting {want_fwd}), backward {mem.peak} B (accounting {want_bwd})"
    # one fp32 [B, H, T, D] more at a peak is 4 n D bytes; the accounting leaves no slack for it
    assert fwd_peak <= want_fwd and mem.peak <= want_bwd, got
    # the counter sees the buffers it is about: the fp32 sums of the three gradients are alive at the peak
    assert mem.peak >= 4 * B * H * T * (2 * D + DV), got
    assert q.grad.dtype == k.grad.dtype == v.grad.dtype == dtype
