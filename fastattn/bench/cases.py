"""The ``spec:D:DV:normalize[:T]`` strings the benchmark scripts take for one of our rows."""

from __future__ import annotations

__all__ = ["parse_case"]


def parse_case(text, with_T=True):
    """(spec, D, DV, normalize, T) from "spec:D:DV:normalize:T" (without T: the first four).

    >>> parse_case("1 + x + x**2/2:16:64:1:8192")
    ('1 + x + x**2/2', 16, 64, True, 8192)
    >>> parse_case("x:64:64:0", with_T=False)
    ('x', 64, 64, False)
    """
    parts = text.rsplit(":", 4 if with_T else 3)
    form = "spec:D:DV:normalize" + (":T" if with_T else "")
    try:
        spec, *nums = parts
        if len(nums) != (4 if with_T else 3) or nums[2] not in ("0", "1"):
            raise ValueError
        D, DV, norm, *T = int(nums[0]), int(nums[1]), nums[2] == "1", *map(int, nums[3:])
    except ValueError:
        raise SystemExit(f"{text!r}: expected {form}, e.g. \"1 + x + x**2/2:16:64:1{':8192' if with_T else ''}\"")
    return (spec, D, DV, norm, *T)
