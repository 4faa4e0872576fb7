"""Lambda's FilterCriteria: the value objects and the check of each pattern's shape."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ._errors import ConfigError, _constraint, _expect, _type_name

__all__ = ["MAX_FILTERS", "MAX_PATTERN_LENGTH", "Filter", "FilterCriteria", "check_filter"]

MAX_FILTERS = 5  # Lambda's default quota (raisable to 10 on AWS)
MAX_PATTERN_LENGTH = 4096


@dataclass(frozen=True, slots=True)
class Filter:
    pattern: str


@dataclass(frozen=True, slots=True)
class FilterCriteria:
    filters: tuple[Filter, ...] = ()


def _pattern_problem(node: object, path: str) -> str | None:
    """Why an EventBridge-style pattern is malformed (shape only: operators are the filter's)."""
    if isinstance(node, list):
        return None if node else f"{path} is an empty array"
    if not isinstance(node, dict) or not node:
        return f"{path} must be a non-empty object or an array of match values"
    if path == "pattern" and "data" in node and not isinstance(node["data"], dict):
        return "the data clause must be a JSON object (Kinesis data is matched as JSON)"
    problems = (_pattern_problem(child, f"{path}.{key}") for key, child in node.items())
    return next((why for why in problems if why), None)


def check_filter(index: int, flt: object) -> None:
    name = f"filter_criteria.filters[{index}].pattern"
    if not isinstance(flt, Filter):
        raise ConfigError(f"must be a Filter, got {_type_name(flt)}", parameter=name[:-8])
    _expect(name, flt.pattern, (str,), "a string holding a JSON object")
    if len(flt.pattern) > MAX_PATTERN_LENGTH:
        member = f"filterCriteria.filters.{index + 1}.member.pattern"
        rule = f"Member must have length less than or equal to {MAX_PATTERN_LENGTH}"
        raise _constraint(name, f"'{flt.pattern}'", member, rule, f"at most {MAX_PATTERN_LENGTH}")
    try:
        pattern = json.loads(flt.pattern)
        why = _pattern_problem(pattern, "pattern") if isinstance(pattern, dict) else None
        why = why or (None if isinstance(pattern, dict) else "a pattern must be a JSON object")
    except ValueError as exc:
        why = f"not JSON: {exc}"
    if why is not None:
        raise ConfigError("Invalid filter pattern definition.", parameter=name, hint=why)
