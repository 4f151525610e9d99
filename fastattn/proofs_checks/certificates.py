"""The common shape of a certificate: a claim, the numbers that prove it, the method, verify().

A certificate is data. Building one runs the search (points, primes, precision);
:meth:`Certificate.verify` recomputes the decisive numbers from the spec and the
stored witness by a separate code path and raises :class:`CertificateError` with the
numbers when they do not hold. ``to_json`` / ``str`` render it for people and tools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction

from fastattn.budget import limited
from fastattn.errors import FastAttnError

__all__ = ["Certificate", "CertificateError", "Undecided", "METHODS", "VERIFY_SECONDS"]

#: How a certificate's numbers were obtained.
METHODS = {
    "exact": "exact rational / integer arithmetic",
    "modular": "integer matrix; a non-zero determinant modulo a prime proves a non-zero integer determinant",
    "interval": "interval arithmetic (mpmath.iv) on exact rational inputs; residuals recomputed in exact integers",
    "high-precision": "high-precision floating point with a stated error margin (not interval)",
    "symbolic": "symbolic derivation from closure rules",
    "limit": "a one-sided limit computed by sympy, its growth checked in mpmath",
}

#: Wall-clock budget of one verify(), in seconds; beyond it SpecError names the certificate.
VERIFY_SECONDS = 4.0


class CertificateError(FastAttnError):
    """A certificate failed verification, or no certificate could be found for a claim."""


def _jsonable(v):
    if isinstance(v, Fraction):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return str(v)


@dataclass(eq=False)
class Certificate:
    """Base class. Subclasses fill :meth:`numbers` and implement :meth:`_verify`."""

    spec: str
    claim: str
    method: str
    #: True when the certificate proves the property named by :attr:`check`; False when it is a counter-example.
    holds: bool = True
    check: str = ""
    notes: list = field(default_factory=list)

    def numbers(self) -> dict:
        """The numbers that carry the proof (small enough to print)."""
        return {}

    def verify(self) -> bool:
        """Recompute the decisive numbers independently; True, or :class:`CertificateError` with the numbers.

        Runs within :data:`VERIFY_SECONDS` of wall time, else :class:`~fastattn.errors.SpecError`.
        """
        with limited(VERIFY_SECONDS, f"verifying the {self.check} certificate of {self.spec!r}"):
            self._verify()
        return True

    def _verify(self) -> None:
        raise NotImplementedError

    def to_dict(self, *, full: bool = False) -> dict:
        """A JSON-ready dict; ``full=True`` adds the bulky witness data (matrices)."""
        out = {
            "check": self.check,
            "spec": self.spec,
            "holds": self.holds,
            "claim": self.claim,
            "method": self.method,
            "method_detail": METHODS.get(self.method, self.method),
            "numbers": _jsonable(self.numbers()),
        }
        if self.notes:
            out["notes"] = list(self.notes)
        if full:
            out["witness"] = _jsonable(self.witness())
        return out

    def witness(self) -> dict:
        """The full witness (points, matrices) for independent checking elsewhere."""
        return {}

    def to_json(self, *, full: bool = False, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(full=full), indent=indent)

    def __str__(self) -> str:
        lines = [f"{self.check}: {self.claim}", f"  method: {self.method} ({METHODS.get(self.method, '')})"]
        for k, v in self.numbers().items():
            text = str(_jsonable(v))
            if len(text) > 160:
                text = text[:157] + "..."
            lines.append(f"  {k}: {text}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        rows = "\n".join(f"| {k} | `{str(_jsonable(v))[:120]}` |" for k, v in self.numbers().items())
        return f"**{self.check}** — {self.claim}\n\n*method*: {self.method}\n\n| number | value |\n|---|---|\n{rows}\n"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec!r}: {self.claim}>"

    def _fail(self, msg: str):
        raise CertificateError(f"{type(self).__name__} for {self.spec!r} does not verify: {msg}")


@dataclass(eq=False)
class Undecided:
    """The outcome when neither a proof nor a counter-example was found: says what was tried."""

    spec: str
    check: str
    reason: str
    holds: None = None

    def verify(self) -> bool:
        raise CertificateError(f"{self.check} for {self.spec!r} is undecided ({self.reason}); there is nothing to verify")

    def to_dict(self, *, full: bool = False) -> dict:
        return {"check": self.check, "spec": self.spec, "holds": None, "claim": "undecided", "method": None, "reason": self.reason}

    def to_json(self, *, full: bool = False, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        return f"{self.check}: undecided — {self.reason}"
