"""fastattn.budget: a step over its wall-clock budget becomes a SpecError naming it; nested budgets."""

import time

import pytest
import sympy as sp

from fastattn.budget import limited
from fastattn.errors import SpecError


def test_overrun_names_the_step_and_the_budget():
    with pytest.raises(SpecError, match=r"the sleeper took longer than its budget of 0.1 s"):
        with limited(0.1, "the sleeper"):
            time.sleep(2)


def test_overrun_is_not_swallowed_by_except_exception():
    def stubborn():
        for _ in range(100):
            try:
                time.sleep(0.05)
            except Exception:  # a library that swallows errors must not swallow the budget
                pass

    t0 = time.monotonic()
    with pytest.raises(SpecError):
        with limited(0.1, "stubborn"):
            stubborn()
    assert time.monotonic() - t0 < 1.0


def test_a_step_within_budget_returns_its_value_and_disarms():
    with limited(1.0, "quick"):
        value = sp.series(sp.exp(sp.Symbol("x")), sp.Symbol("x"), 0, 4).removeO()
    assert value.coeff(sp.Symbol("x"), 3) == sp.Rational(1, 6)
    time.sleep(1.2)  # a stale timer would fire here


def test_outer_budget_fires_inside_an_inner_one_and_reports_itself():
    with pytest.raises(SpecError, match="outer"):
        with limited(0.1, "outer"):
            with limited(10, "inner"):
                time.sleep(2)


def test_inner_budget_fires_first_and_outer_keeps_running():
    with limited(5, "outer"):
        with pytest.raises(SpecError, match="inner"):
            with limited(0.1, "inner"):
                time.sleep(2)
        time.sleep(0.2)
        done = True
    assert done
