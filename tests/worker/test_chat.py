"""The chat graph's arithmetic tool: numbers and operators only, bounded."""

from __future__ import annotations

import pytest

from switchboard.worker.chat import MAX_EXPRESSION, calculate, evaluate


def test_arithmetic_is_evaluated():
    assert evaluate("(17 + 4) * 3") == 63 and evaluate("-2 ** 3") == -8 and evaluate("7 // 2 % 3") == 0
    assert evaluate("1 / 4") == 0.25


@pytest.mark.parametrize("expression", ["__import__('os')", "a + 1", "len('x')", "[1, 2]", "True + 1", "'a' * 3"])
def test_anything_but_arithmetic_is_refused(expression):
    with pytest.raises((ValueError, SyntaxError)):
        evaluate(expression)


def test_the_bounds_hold_and_errors_are_answers_not_exceptions():
    with pytest.raises(ValueError, match="exponent"):
        evaluate("9 ** 9 ** 9")
    with pytest.raises(ValueError, match="longer"):
        evaluate("1+" * MAX_EXPRESSION + "1")
    assert calculate.invoke({"expression": "1 / 0"}).startswith("error:")
    assert calculate.invoke({"expression": "open('x')"}).startswith("error:")
