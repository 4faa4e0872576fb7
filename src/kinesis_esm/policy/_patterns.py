"""The filter pattern language (EventBridge's, as Lambda uses it): its syntax and parsing.

Semantics (Lambda's and EventBridge's documentation, and aws/event-ruler where they are silent):

* Keys are ANDed, values in a list are ORed, ``$or`` (an array of two or more objects) ORs
  sub-patterns. A field named in a pattern must be present, except for ``exists: false``.
* Matching is literal: strings character by character, numbers by their JSON text, so ``300``,
  ``300.0`` and ``3.0e2`` are three different values (Lambda's documented rule; event-ruler
  itself also matches numerically equal numbers). Only ``numeric`` compares values.
* An array in the event matches when any element does; an array of objects matches a nested
  pattern when one element matches it as a whole (event-ruler's array consistency). A field whose
  value is an object, an empty array or absent has no leaf value: only ``exists: false`` matches.
* ``anything-but`` matches any present value that is not one of its values; with ``prefix``,
  ``suffix``, ``equals-ignore-case`` or ``wildcard`` it matches any value those do not match.

The operators of one field are in :mod:`._pattern_operators`, the compiler of object patterns in
:mod:`._pattern_compiler`, and the Kinesis binding (a record's data and metadata) in
:mod:`._filters`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = [
    "DATA_DECODER",
    "INVALID_PATTERN_MESSAGE",
    "MAX_PATTERN_DEPTH",
    "MISSING",
    "PATTERN_DECODER",
    "JsonNumber",
    "PatternError",
    "Pred",
    "check_depth",
    "join_path",
    "nesting_depth",
    "parse_pattern",
]

INVALID_PATTERN_MESSAGE = "Invalid filter pattern definition."  # Lambda's, for the API error
# Objects and arrays inside each other; ours (Lambda publishes none). Deep enough for any real
# record's fields, and far below what would exhaust Python's stack in the parser or the checks.
MAX_PATTERN_DEPTH = 32


class PatternError(ValueError):
    """A filter pattern that cannot be compiled: what is wrong, and where."""

    def __init__(self, reason: str, path: str = "", filter_index: int | None = None) -> None:
        self.reason = reason
        self.path = path  # where in the pattern, e.g. data.order.type[0].numeric
        self.filter_index = filter_index  # which of FilterCriteria.Filters
        where = [] if filter_index is None else [f"Filters[{filter_index}].Pattern"]
        if path:
            where.append(f"at {path}")
        super().__init__(f"{' '.join(where)}: {reason}" if where else reason)

    @property
    def api_message(self) -> str:
        """The InvalidParameterValueException message: Lambda's sentence, then the detail."""
        return f"{INVALID_PATTERN_MESSAGE} {self}"


class JsonNumber(str):
    """A JSON number kept as its source text: exact matching compares this text."""

    __slots__ = ()


# A field the event does not have.
MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "MISSING"})()

Pred = Callable[[Any], bool]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise PatternError(f"duplicate key {json.dumps(key)} in one object")
            seen.add(key)
    return result


PATTERN_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_pairs,
    parse_float=JsonNumber,
    parse_int=JsonNumber,
    parse_constant=_reject_constant,
)
DATA_DECODER = json.JSONDecoder(
    parse_float=JsonNumber, parse_int=JsonNumber, parse_constant=_reject_constant
)


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


def check_depth(text: str) -> None:
    """Refuse deep nesting before json sees it (its recursion would otherwise be the limit)."""
    if nesting_depth(text, MAX_PATTERN_DEPTH) > MAX_PATTERN_DEPTH:
        raise PatternError(f"the pattern nests deeper than {MAX_PATTERN_DEPTH} levels")


def parse_pattern(text: str) -> Any:
    """The pattern as JSON, numbers as JsonNumber, nesting checked first (raises PatternError)."""
    check_depth(text)
    try:
        return PATTERN_DECODER.decode(text)
    except PatternError:
        raise
    except ValueError as exc:  # json.JSONDecodeError, NaN / Infinity
        raise PatternError(f"the pattern is not valid JSON: {exc}") from None


def join_path(path: str, key: str) -> str:
    plain = key and all(c.isalnum() or c in "-_$@:" for c in key)
    name = key if plain else json.dumps(key)
    return f"{path}.{name}" if path and plain else f"{path}[{name}]" if path else name
