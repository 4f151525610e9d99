"""One comparison for kernel outputs against a reference: max-abs and relative-RMS error per dtype.

>>> import torch
>>> ref = torch.randn(100, dtype=torch.float64)
>>> _ = assert_close("o", ref, ref.float(), torch.float32)
>>> errors(ref, ref.float())["rel_rms"] < 1e-6
True
"""

from __future__ import annotations

import os

import torch

__all__ = ["TOLERANCES", "errors", "assert_close"]

# (relative RMS, max-abs relative to max |ref|). Measured on the interpreter (T <= 130,
# D <= 16, the four test specs): fp32 rel-RMS <= 3e-6, max 2e-5; fp16 rel-RMS up to 5.1e-3
# (T = 1, D = 1, (1+x)**3: four feature terms of mixed sign cancel into one output, each
# rounded to fp16 on its way into a dot), else <= 1.5e-3. bf16 (GPU only, H100, the four
# benchmark configurations at T = 4096 and 1 + x + x**2/2 at d64 for T = 16384): rel-RMS
# <= 3.5e-5, max <= 2.9e-4 (relative to the term sizes); the row keeps ~10x room.
TOLERANCES = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-5, 1e-4),
    torch.float16: (1e-2, 3e-2),
    torch.bfloat16: (1e-3, 3e-3),
}


def errors(ref: torch.Tensor, got: torch.Tensor, terms: torch.Tensor | None = None) -> dict:
    """{"max_abs", "max_rel", "rel_rms", "nonfinite"} of ``got`` against ``ref``.

    ``max_rel`` is max |got - ref| over max |ref| and ``rel_rms`` is ||got - ref|| over
    ||ref||; where ``ref`` is a sum of larger terms that cancel (e.g. the two paths of a
    normalised gradient), pass the size of those terms as ``terms`` (a tensor like ``ref``)
    and the larger of the two sizes is the denominator: rounding is relative to the terms,
    not to what is left after they cancel.
    """
    r = ref.detach().double()
    g = got.detach().double().to(r.device)
    d = g - r
    if not d.numel():
        return {"max_abs": 0.0, "max_rel": 0.0, "rel_rms": 0.0, "nonfinite": 0}
    big, norm = r.abs().max(), r.norm()
    if terms is not None:
        t = terms.detach().double().to(r.device)
        big, norm = torch.maximum(big, t.abs().max()), torch.maximum(norm, t.norm())
    return {
        "max_abs": d.abs().max().item(),
        "max_rel": (d.abs().max() / big.clamp_min(1e-30)).item(),
        "rel_rms": (d.norm() / norm.clamp_min(1e-30)).item(),
        "nonfinite": int((~torch.isfinite(g)).sum().item()),
    }


def assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, dtype: torch.dtype,
                 terms: torch.Tensor | None = None) -> dict:
    """Fail (AssertionError with both errors) unless ``got`` matches ``ref`` within ``TOLERANCES[dtype]``.

    ``dtype`` is the dtype the computation ran in (it picks the tolerance row); shapes must
    match exactly and every entry of ``got`` must be finite; ``terms`` as in :func:`errors`.
    Returns the errors.
    """
    if dtype not in TOLERANCES:
        raise KeyError(f"no tolerance for dtype {dtype}; known: {list(TOLERANCES)}")
    assert tuple(got.shape) == tuple(ref.shape), f"{name}: shape {tuple(got.shape)} != reference {tuple(ref.shape)}"
    e = errors(ref, got, terms)
    rms_tol, max_tol = TOLERANCES[dtype]
    msg = (f"{name} ({dtype}): max-abs {e['max_abs']:.3g} (relative {e['max_rel']:.3g}, tol {max_tol:g}), "
           f"rel-RMS {e['rel_rms']:.3g} (tol {rms_tol:g}), non-finite {e['nonfinite']}")
    assert e["nonfinite"] == 0 and e["rel_rms"] <= rms_tol and e["max_rel"] <= max_tol, msg
    return e


def empty(shape, device, dtype=torch.float32):
    """A fresh kernel buffer: ``torch.empty``, or NaN-filled under ``FASTATTN_NAN_FILL=1`` (the tests), so a row a
    kernel forgot to write cannot pass a comparison.

    >>> empty((2,), "cpu").shape
    torch.Size([2])
    """
    if os.environ.get("FASTATTN_NAN_FILL", "0") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
