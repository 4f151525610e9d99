"""One comparison for kernel outputs against a reference: max-abs and relative-RMS error per dtype.

>>> import torch
>>> ref = torch.randn(100, dtype=torch.float64)
>>> assert_close("o", ref, ref.float(), torch.float32)
>>> errors(ref, ref.float())["rel_rms"] < 1e-6
True
"""

from __future__ import annotations

import torch

__all__ = ["TOLERANCES", "errors", "assert_close"]

# (relative RMS, max-abs relative to max |ref|). Measured on the interpreter (T <= 130,
# D <= 16, the four test specs): fp32 rel-RMS <= 3e-6 and max 2e-5 (normalised "x" with the
# abs fix, where |sum f| is small, is the worst); fp16 rel-RMS <= 1.5e-3, max 5e-3.
# bf16 (GPU only) has 8 mantissa bits against fp16's 11: 8x the fp16 rows.
TOLERANCES = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-5, 1e-4),
    torch.float16: (5e-3, 2e-2),
    torch.bfloat16: (4e-2, 1.2e-1),
}


def errors(ref: torch.Tensor, got: torch.Tensor) -> dict:
    """{"max_abs", "max_rel" (max-abs over max |ref|), "rel_rms", "nonfinite"} of ``got`` against ``ref``."""
    r = ref.detach().double()
    g = got.detach().double().to(r.device)
    d = g - r
    scale = r.abs().max().clamp_min(1e-30)
    return {
        "max_abs": d.abs().max().item() if d.numel() else 0.0,
        "max_rel": (d.abs().max() / scale).item() if d.numel() else 0.0,
        "rel_rms": (d.norm() / r.norm().clamp_min(1e-30)).item() if d.numel() else 0.0,
        "nonfinite": int((~torch.isfinite(g)).sum().item()),
    }


def assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, dtype: torch.dtype) -> dict:
    """Fail (AssertionError with both errors) unless ``got`` matches ``ref`` within ``TOLERANCES[dtype]``.

    ``dtype`` is the dtype the computation ran in (it picks the tolerance row); shapes must
    match exactly and every entry of ``got`` must be finite. Returns the errors.
    """
    if dtype not in TOLERANCES:
        raise KeyError(f"no tolerance for dtype {dtype}; known: {list(TOLERANCES)}")
    assert tuple(got.shape) == tuple(ref.shape), f"{name}: shape {tuple(got.shape)} != reference {tuple(ref.shape)}"
    e = errors(ref, got)
    rms_tol, max_tol = TOLERANCES[dtype]
    msg = (f"{name} ({dtype}): max-abs {e['max_abs']:.3g} (relative {e['max_rel']:.3g}, tol {max_tol:g}), "
           f"rel-RMS {e['rel_rms']:.3g} (tol {rms_tol:g}), non-finite {e['nonfinite']}")
    assert e["nonfinite"] == 0 and e["rel_rms"] <= rms_tol and e["max_rel"] <= max_tol, msg
    return e
