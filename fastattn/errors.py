"""Exceptions raised by fastattn. Each message says what was wrong, with the value, and what to do."""

__all__ = ["FastAttnError", "SpecError", "FeatureMapError", "KernelError"]


class FastAttnError(ValueError):
    """Base class of every error fastattn raises on bad input."""


class SpecError(FastAttnError):
    """A function spec could not be parsed or is not allowed (see :func:`fastattn.spec`)."""


class FeatureMapError(FastAttnError):
    """A feature map was asked for with arguments that cannot work."""


class KernelError(FastAttnError):
    """A kernel or attention layer was asked for with arguments it cannot serve (shape, dtype, unsafe normaliser)."""
