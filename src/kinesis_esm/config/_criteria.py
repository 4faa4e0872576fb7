"""Lambda's FilterCriteria: the value objects and the check of each pattern's shape."""

from __future__ import annotations

from dataclasses import dataclass

from ..policy._filters import INVALID_PATTERN_MESSAGE, PatternError, compile_pattern
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
# Objects and arrays inside each other; ours (Lambda publishes none). Deep enough for any real
# record's fields, and far below what would exhaust Python's stack in the parser or the checks.
MAX_PATTERN_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Filter:
    pattern: str


@dataclass(frozen=True, slots=True)
class FilterCriteria:
    filters: tuple[Filter, ...] = ()


def nesting_depth(text: str | bytes, limit: int) -> int:
    """How deeply JSON ``text`` nests objects and arrays, counted without parsing it (brackets
    inside strings do not count), up to ``limit + 1``: a bound to check before ``json.loads``."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


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
