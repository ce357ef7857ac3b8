"""Branch conditions: `{var: score, ge: 4}` and friends, evaluated on the call's variables.

Variables are text. Comparisons (`lt`, `le`, `gt`, `ge`) are numeric: a value that is not a
number makes the condition false (and is logged), never an exception in the middle of a call.
`equals`/`in` compare numbers numerically when both sides are numbers ("4.0" equals 4), text
case-insensitively otherwise.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Mapping

from app.dialog.steps import Condition
from app.ops.logs import sensitive

log = logging.getLogger(__name__)

_COMPARE = {"lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge}


def holds(condition: Condition, variables: Mapping[str, str]) -> bool:
    value = variables.get(condition.variable)
    op, operand = condition.operator, condition.operand
    if op == "set":
        return bool(value) == operand
    if value is None:
        return op in ("not_equals", "not_in")
    if op == "equals":
        return _same(value, operand)
    if op == "not_equals":
        return not _same(value, operand)
    if op == "in":
        return any(_same(value, item) for item in operand)
    if op == "not_in":
        return not any(_same(value, item) for item in operand)
    if op == "matches":
        assert isinstance(operand, re.Pattern)
        return operand.fullmatch(value) is not None
    number = _number(value)
    if number is None:
        log.info("condition on %r: %r is not a number", condition.variable, sensitive(value))
        return False
    return _COMPARE[op](number, float(operand))


def _same(value: str, operand: str) -> bool:
    left, right = _number(value), _number(operand)
    if left is not None and right is not None:
        return left == right
    return value.strip().casefold() == operand.strip().casefold()


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
