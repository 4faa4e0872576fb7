"""The match values and operators of one field of a filter pattern, compiled to a predicate.

Operators: ``exists``, ``numeric``, ``anything-but``, ``cidr``, ``prefix``, ``suffix``,
``equals-ignore-case`` and ``wildcard`` (no regex anywhere: no ReDoS).
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Callable
from typing import Any

from ._patterns import MISSING, JsonNumber, PatternError, Pred, join_path

__all__ = ["FieldMatcher", "leaf_values"]


def leaf_values(values: list[Any]) -> list[Any]:
    """The scalars of an event array, nested arrays flattened, objects skipped (no recursion)."""
    out: list[Any] = []
    stack = [values]
    while stack:
        for v in stack.pop():
            t = type(v)
            if t is list:
                stack.append(v)
            elif t is not dict:
                out.append(v)
    return out


def _string(value: Any, path: str, what: str) -> str:
    if type(value) is not str:
        raise PatternError(f"{what} must be a string", path)
    return value


def _strings(value: Any, path: str, what: str) -> list[str]:
    """One string, or a non-empty list of strings (anything-but's operator forms)."""
    if type(value) is not list:
        return [_string(value, path, what)]
    if not value:
        raise PatternError(f"{what} must not be an empty list", path)
    return [_string(v, f"{path}[{i}]", what) for i, v in enumerate(value)]


def _wildcard(text: str, path: str) -> Callable[[str], bool]:
    """'*' matches any run of characters; '\\*' and '\\\\' are literal. No regex: no ReDoS."""
    parts = [""]
    i = 0
    while i < len(text):
        char = text[i]
        if char == "*":
            if text.startswith("*", i + 1):
                raise PatternError(f"consecutive wildcard characters at position {i}", path)
            parts.append("")
        elif char == "\\":
            if i + 1 >= len(text) or text[i + 1] not in "*\\":
                raise PatternError(
                    f"invalid escape at position {i}: only \\* and \\\\ are allowed", path
                )
            parts[-1] += text[i + 1]
            i += 1
        else:
            parts[-1] += char
        i += 1
    if len(parts) == 1:
        exact = parts[0]
        return lambda s: s == exact
    head, *middle, tail = parts
    shortest = sum(map(len, parts))

    def match(s: str) -> bool:
        if len(s) < shortest or not s.startswith(head) or not s.endswith(tail):
            return False
        position, end = len(head), len(s) - len(tail)
        for segment in middle:  # leftmost placement of each segment is optimal for '*' globs
            found = s.find(segment, position, end)
            if found < 0:
                return False
            position = found + len(segment)
        return True

    return match


def _number(value: Any, path: str, what: str) -> float:
    if type(value) is not JsonNumber:
        raise PatternError(f"{what} must be a number", path)
    number = float(value)
    if not math.isfinite(number):
        raise PatternError(f"{what} {value} is out of range", path)
    return number


def _numeric(spec: Any, path: str) -> Pred:
    if type(spec) is not list or len(spec) not in (2, 4):
        raise PatternError(
            'numeric must be [operator, number] or [">" or ">=", number, "<" or "<=", number]',
            path,
        )
    first = spec[0]
    if first not in ("=", "<", "<=", ">", ">="):
        raise PatternError(f"unrecognized numeric operator {json.dumps(first)}", f"{path}[0]")
    value = _number(spec[1], f"{path}[1]", f"the value of {first}")
    low, low_closed, high, high_closed = -math.inf, False, math.inf, False
    if first == "=":
        low = high = value
        low_closed = high_closed = True
    elif first in ("<", "<="):
        high, high_closed = value, first == "<="
    else:
        low, low_closed = value, first == ">="
    if len(spec) == 4:
        second = spec[2]
        if first not in (">", ">=") or second not in ("<", "<="):
            raise PatternError(
                "a numeric range is a lower bound (> or >=) then an upper bound (< or <=)", path
            )
        high, high_closed = _number(spec[3], f"{path}[3]", f"the value of {second}"), second == "<="
        if not low < high:
            raise PatternError(f"numeric range: {spec[1]} is not below {spec[3]}", path)

    def numeric(s: Any) -> bool:
        x = float(s)
        return (x > low or (low_closed and x == low)) and (x < high or (high_closed and x == high))

    return numeric


class FieldMatcher:
    """The match values of one field, sorted by the type of event value they can match."""

    def __init__(self) -> None:
        self.strings: set[str] = set()
        self.numbers: set[str] = set()
        self.literals: list[Any] = []  # True, False, None
        self.string_preds: list[Callable[[str], bool]] = []
        self.number_preds: list[Pred] = []
        self.any_preds: list[Pred] = []  # anything-but: any present scalar
        self.exists_true = False
        self.exists_false = False

    def add_expression(self, expression: Any, path: str) -> None:
        if not expression:
            raise PatternError("an empty object is not a match expression", path)
        if len(expression) != 1:
            raise PatternError("only one key is allowed in a match expression", path)
        ((op, arg),) = expression.items()
        at = join_path(path, op)
        if op == "exists":
            if type(arg) is not bool:
                raise PatternError("exists must be true or false", at)
            if arg:
                self.exists_true = True
            else:
                self.exists_false = True
        elif op == "numeric":
            self.number_preds.append(_numeric(arg, at))
        elif op == "anything-but":
            self.any_preds.append(_anything_but(arg, at))
        elif op == "cidr":
            try:
                network = ipaddress.ip_network(_string(arg, at, "cidr"), strict=False)
            except ValueError as exc:
                raise PatternError(f"cidr: {exc}", at) from None
            self.string_preds.append(lambda s: _in_network(s, network))
        elif op in ("prefix", "suffix", "equals-ignore-case", "wildcard"):
            self.string_preds.append(_string_operator(op, arg, at))
        else:
            raise PatternError(f"unrecognized match type {json.dumps(op)}", at)

    def compile(self) -> Pred:
        strings, numbers, literals = frozenset(self.strings), frozenset(self.numbers), self.literals
        string_preds, number_preds = tuple(self.string_preds), tuple(self.number_preds)
        any_preds, exists_true, absent = tuple(self.any_preds), self.exists_true, self.exists_false

        if not (numbers or literals or string_preds or number_preds or any_preds or exists_true):

            def only_strings(v: Any) -> bool:  # the common case: a list of strings
                if type(v) is str:
                    return v in strings
                if type(v) is list:
                    values = leaf_values(v)
                    if values:
                        return any(type(s) is str and s in strings for s in values)
                    return absent
                return absent if v is MISSING or type(v) is dict else False

            return only_strings

        preds = (*string_preds, *number_preds, *any_preds)
        if len(preds) == 1 and not (strings or numbers or literals or exists_true):
            # one operator ([{"numeric": ...}], [{"prefix": ...}], ...): no dispatch per value
            (pred,) = preds
            kind = str if string_preds else JsonNumber if number_preds else None

            def test(s: Any) -> bool:
                return (kind is None or type(s) is kind) and pred(s)

            def one_operator(v: Any) -> bool:
                t = type(v)
                if v is MISSING or t is dict:
                    return absent
                if t is list:
                    values = leaf_values(v)
                    return any(map(test, values)) if values else absent
                return test(v)

            return one_operator

        def scalar(s: Any) -> bool:
            t = type(s)
            if t is str:
                if s in strings or any(p(s) for p in string_preds):
                    return True
            elif t is JsonNumber:
                if s in numbers or any(p(s) for p in number_preds):
                    return True
            elif any(s is literal for literal in literals):
                return True
            return any(p(s) for p in any_preds)

        def leaf(v: Any) -> bool:
            t = type(v)
            if v is MISSING or t is dict:
                return absent
            if t is list:
                values = leaf_values(v)
                if not values:
                    return absent
                return exists_true or any(map(scalar, values))
            return exists_true or scalar(v)

        return leaf


def _in_network(s: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        address = ipaddress.ip_address(s)
    except ValueError:
        return False
    return address.version == network.version and address in network


def _string_operator(op: str, arg: Any, path: str) -> Callable[[str], bool]:
    if op == "wildcard":
        return _wildcard(_string(arg, path, "wildcard"), path)
    if op == "equals-ignore-case":
        target = _string(arg, path, op).lower()
        return lambda s: s.lower() == target
    if type(arg) is dict:  # {"prefix": {"equals-ignore-case": "..."}}
        if list(arg) != ["equals-ignore-case"]:
            raise PatternError(f'{op} takes a string or {{"equals-ignore-case": string}}', path)
        folded = _string(
            arg["equals-ignore-case"], join_path(path, "equals-ignore-case"), op
        ).lower()
        if op == "prefix":
            return lambda s: s.lower().startswith(folded)
        return lambda s: s.lower().endswith(folded)
    text = _string(arg, path, op)
    if op == "prefix":
        return lambda s: s.startswith(text)
    return lambda s: s.endswith(text)


def _anything_but(arg: Any, path: str) -> Pred:
    if type(arg) is dict:
        if len(arg) != 1:
            raise PatternError("anything-but takes one operator", path)
        ((op, values),) = arg.items()
        at = join_path(path, op)
        if op not in ("prefix", "suffix", "equals-ignore-case", "wildcard"):
            raise PatternError(f"unsupported anything-but operator {json.dumps(op)}", at)
        texts = _strings(values, at, f"anything-but {op}")
        if op in ("prefix", "suffix") and "" in texts:
            raise PatternError(f"anything-but {op} must not be empty", at)
        if op == "prefix":
            starts = tuple(texts)
            return lambda s: not (type(s) is str and s.startswith(starts))
        if op == "suffix":
            ends = tuple(texts)
            return lambda s: not (type(s) is str and s.endswith(ends))
        if op == "equals-ignore-case":
            folded = frozenset(t.lower() for t in texts)
            return lambda s: not (type(s) is str and s.lower() in folded)
        globs = tuple(_wildcard(t, at) for t in texts)
        return lambda s: not (type(s) is str and any(g(s) for g in globs))
    values = arg if type(arg) is list else [arg]
    kinds = {type(v) for v in values}
    if not values or not kinds <= {str, JsonNumber} or len(kinds) != 1:
        raise PatternError(
            "anything-but takes a string, a number, or a non-empty list of only strings or "
            "only numbers",
            path,
        )
    excluded, kind = frozenset(values), kinds.pop()
    return lambda s: not (type(s) is kind and s in excluded)
