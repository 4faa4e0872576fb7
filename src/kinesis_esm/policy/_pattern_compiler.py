"""The compiler of object patterns: fields ANDed, ``$or`` alternatives, nested objects.

It validates as event-ruler does (no empty objects or arrays, no field matched twice within one
alternative, no operator name as a field in ``$or``) and builds nested closures, so matching an
event walks only the fields the pattern names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ._pattern_operators import FieldMatcher
from ._patterns import MISSING, JsonNumber, PatternError, Pred, join_path

__all__ = ["PatternCompiler", "nested_pattern"]

# Operator names event-ruler refuses as field names inside $or.
_OPERATORS = "anything-but cidr equals-ignore-case exactly exists numeric prefix suffix wildcard"
_RESERVED_IN_OR = frozenset([*_OPERATORS.split(), "=", "<", "<=", ">", ">="])
_EMPTY: dict[str, Any] = {}  # what a nested pattern sees in place of a non-object


def _objects(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [values]
    while stack:
        for v in stack.pop():
            t = type(v)
            if t is dict:
                out.append(v)
            elif t is list:
                stack.append(v)
    return out


class PatternCompiler:
    """One pattern's compilation: validation, and the leaf paths seen per $or alternative."""

    def __init__(self) -> None:
        self._leaves: dict[tuple[str, ...], list[tuple[tuple[int, int], ...]]] = {}
        self._choices: tuple[tuple[int, int], ...] = ()  # ($or id, branch) on the way here
        self._or_count = 0

    def _claim(self, keys: tuple[str, ...], path: str) -> None:
        """event-ruler refuses a field matched twice within one alternative of the pattern."""
        mine = dict(self._choices)
        for other in self._leaves.get(keys, ()):
            if all(mine.get(or_id, branch) == branch for or_id, branch in other):
                raise PatternError("this field is already matched elsewhere in the pattern", path)
        self._leaves.setdefault(keys, []).append(self._choices)

    def leaf(self, values: Any, keys: tuple[str, ...], path: str) -> Pred:
        if not values:
            raise PatternError("empty arrays are not allowed", path)
        self._claim(keys, path)
        leaf = FieldMatcher()
        for i, v in enumerate(values):
            t = type(v)
            if t is str:
                leaf.strings.add(v)
            elif t is JsonNumber:
                leaf.numbers.add(v)
            elif v is True or v is False or v is None:
                leaf.literals.append(v)
            elif t is dict:
                leaf.add_expression(v, f"{path}[{i}]")
            else:
                raise PatternError(
                    "a match value must be a string, number, true, false, null or an object "
                    "with one operator",
                    f"{path}[{i}]",
                )
        return leaf.compile()

    def branches(self, value: Any, path: str) -> list[dict[str, Any]]:
        if type(value) is not list or len(value) < 2:
            raise PatternError("$or must be an array of at least two objects", path)
        for i, branch in enumerate(value):
            if type(branch) is not dict:
                raise PatternError("each $or alternative must be an object", f"{path}[{i}]")
        return value

    def alternatives(self, value: Any, path: str, compile_one: Callable[..., Any]) -> list[Any]:
        or_id = self._or_count = self._or_count + 1
        outer, compiled = self._choices, []
        for i, branch in enumerate(self.branches(value, path)):
            self._choices = (*outer, (or_id, i))
            compiled.append(compile_one(branch, f"{path}[{i}]"))
        self._choices = outer
        return compiled

    def node(self, obj: dict[str, Any], keys: tuple[str, ...], path: str) -> Pred:
        """An object pattern, matched against an event object."""
        if not obj:
            raise PatternError("empty objects are not allowed", path)
        checks: list[tuple[str, Pred]] = []
        ors: list[tuple[Pred, ...]] = []
        for key, value in obj.items():
            at = join_path(path, key)
            if key == "$or":
                alts = self.alternatives(value, at, lambda b, p: self.node(b, keys, p))
                ors.append(tuple(alts))
            elif self._choices and key in _RESERVED_IN_OR:  # inside some $or
                raise PatternError(f"{json.dumps(key)} is an operator, not a field, in $or", at)
            elif type(value) is dict:
                checks.append((key, nested_pattern(self.node(value, (*keys, key), at))))
            elif type(value) is list:
                checks.append((key, self.leaf(value, (*keys, key), at)))
            else:
                raise PatternError(f"{json.dumps(key)} must be an object or an array", at)
        if len(checks) == 1 and not ors:
            ((only_key, only),) = checks
            return lambda d: only(d.get(only_key, MISSING))
        return _all_of(tuple(checks), tuple(ors))


def nested_pattern(node: Pred) -> Pred:
    """A nested object pattern applied to whatever the event has there."""

    def nested(v: Any) -> bool:
        t = type(v)
        if t is dict:
            return node(v)
        if t is list:
            objects = _objects(v)
            return any(map(node, objects)) if objects else node(_EMPTY)
        return node(_EMPTY)

    return nested


def _all_of(checks: tuple[tuple[str, Pred], ...], ors: tuple[tuple[Pred, ...], ...]) -> Pred:
    def all_of(d: Any) -> bool:
        get = d.get
        for key, pred in checks:
            if not pred(get(key, MISSING)):
                return False
        return not ors or all(any(alt(d) for alt in alts) for alts in ors)

    return all_of
