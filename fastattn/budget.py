"""A wall-clock budget for symbolic steps that have no size bound of their own (sympy series, solve, simplify).

Static limits (length, degree, digits, feature count) keep most inputs small; a step whose cost
cannot be bounded from the input runs under :func:`limited`, which turns an overrun into a
:class:`~fastattn.errors.SpecError` naming the step and the budget.

The timer is ``SIGALRM`` (POSIX, main thread only); elsewhere :func:`limited` only checks the
elapsed time after the step, so the static limits are the guard there.

>>> import time
>>> with limited(5, "a quick step"):
...     _ = sum(range(10))
>>> with limited(0.05, "a slow step"):
...     time.sleep(1)
Traceback (most recent call last):
...
fastattn.errors.SpecError: a slow step took longer than its budget of 0.05 s; simplify the spec (fewer nested functions, smaller degrees and constants)
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

from fastattn.errors import SpecError

__all__ = ["limited", "DEFAULT_SECONDS"]

#: Budget of one symbolic step unless the caller names another.
DEFAULT_SECONDS = 4.0


class _Overrun(BaseException):
    # BaseException, so no `except Exception` / `except ValueError` inside sympy swallows it
    pass


_deadline: list[float] = []


def _on_alarm(signum, frame):
    raise _Overrun()


def _arm(seconds: float) -> None:
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))


@contextlib.contextmanager
def limited(seconds: float = DEFAULT_SECONDS, what: str = "a symbolic step"):
    """Run the body within ``seconds`` of wall time, else raise SpecError naming ``what``.

    Nested budgets keep the earliest deadline; an outer budget still fires inside an inner one.
    """
    start = time.monotonic()
    deadline = start + seconds
    armed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not armed:
        yield
        if time.monotonic() > deadline:
            raise SpecError(f"{what} took longer than its budget of {seconds:g} s; simplify the spec "
                            "(fewer nested functions, smaller degrees and constants)")
        return
    outer = _deadline[-1] if _deadline else None
    previous = signal.signal(signal.SIGALRM, _on_alarm) if outer is None else None
    effective = min(deadline, outer) if outer is not None else deadline
    _deadline.append(effective)
    _arm(effective - time.monotonic())
    try:
        yield
    except _Overrun:
        if outer is not None and outer <= deadline:
            raise  # the outer budget ran out: let it report its own step
        raise SpecError(f"{what} took longer than its budget of {seconds:g} s; simplify the spec "
                        "(fewer nested functions, smaller degrees and constants)") from None
    finally:
        _deadline.pop()
        if outer is None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        elif outer - time.monotonic() > 0:
            _arm(outer - time.monotonic())
