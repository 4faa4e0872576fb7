"""Lambda's FilterCriteria: the value objects and the check of each pattern's shape."""

from __future__ import annotations

from dataclasses import dataclass

from ..policy._filters import INVALID_PATTERN_MESSAGE, PatternError, compile_pattern
from ..policy._patterns import MAX_PATTERN_DEPTH, nesting_depth
from ._errors import ConfigError, _constraint, _expect, _type_name

__all__ = [
    "MAX_FILTERS",
    "MAX_PATTERN_DEPTH",
    "MAX_PATTERN_LENGTH",
    "Filter",
    "FilterCriteria",
    "check_filter",
    "nesting_depth",
]

MAX_FILTERS = 5  # Lambda's default quota (raisable to 10 on AWS)
MAX_PATTERN_LENGTH = 4096


@dataclass(frozen=True, slots=True)
class Filter:
    pattern: str


@dataclass(frozen=True, slots=True)
class FilterCriteria:
    filters: tuple[Filter, ...] = ()


def check_filter(index: int, flt: object) -> None:
    name = f"filter_criteria.filters[{index}].pattern"
    if not isinstance(flt, Filter):
        raise ConfigError(f"must be a Filter, got {_type_name(flt)}", parameter=name[:-8])
    _expect(name, flt.pattern, (str,), "a string holding a JSON object")
    if len(flt.pattern) > MAX_PATTERN_LENGTH:
        member = f"filterCriteria.filters.{index + 1}.member.pattern"
        rule = f"Member must have length less than or equal to {MAX_PATTERN_LENGTH}"
        raise _constraint(name, f"'{flt.pattern}'", member, rule, f"at most {MAX_PATTERN_LENGTH}")
    if nesting_depth(flt.pattern, MAX_PATTERN_DEPTH) > MAX_PATTERN_DEPTH:
        hint = f"nested more than {MAX_PATTERN_DEPTH} deep"
        raise ConfigError("Invalid filter pattern definition.", parameter=name, hint=hint)
    try:  # the matcher's own compiler: what passes here is what the pipeline runs
        compile_pattern(flt.pattern)
    except PatternError as exc:
        raise ConfigError(INVALID_PATTERN_MESSAGE, parameter=name, hint=str(exc)) from None
