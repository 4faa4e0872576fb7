"""Lambda's event filtering for Kinesis: EventBridge patterns, compiled once, matched per record.

A pattern is parsed and validated once (:func:`compile_pattern`) into nested closures; matching a
record walks only the fields the pattern names. docs/filtering-and-windows.md is the user guide.

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
* Kinesis: the pattern's top level is the record's ``kinesis`` object. ``data`` (base64) is
  decoded and parsed as JSON, and its clause must be an object pattern; the other keys are the
  metadata fields. A filter with a ``data`` clause never matches a record whose data is not JSON
  (Lambda drops it); a filter without one sees only the metadata.

A library was weighed first: moto's ``EventPattern`` (a test dependency here) interprets the raw
pattern per event after re-serializing the event, compares numbers by value, and validates
little; LocalStack's matcher lives inside its server; PyPI's ``event-ruler`` (0.3.0, 2023) wraps
a Go matcher behind one call that rebuilds it per event and reports only "invalid pattern". None
is a fit, so this is a small matcher of our own, checked against the documented examples.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kinesis_esm import Record

__all__ = [
    "INVALID_PATTERN_MESSAGE",
    "MAX_PATTERN_DEPTH",
    "MAX_PATTERN_LENGTH",
    "METADATA_KEYS",
    "CompiledPattern",
    "JsonNumber",
    "PatternError",
    "RecordFilter",
    "compile_pattern",
]

INVALID_PATTERN_MESSAGE = "Invalid filter pattern definition."  # Lambda's, for the API error
MAX_PATTERN_LENGTH = 4096  # Lambda's API limit on Filter.Pattern, in characters
MAX_PATTERN_DEPTH = 32  # brackets and braces; bounds the compiler's recursion
# The fields of a record's kinesis object that a pattern may name, besides "data".
METADATA_KEYS = (
    "approximateArrivalTimestamp",
    "encryptionType",
    "kinesisSchemaVersion",
    "partitionKey",
    "sequenceNumber",
)
# Operator names event-ruler refuses as field names inside $or.
_OPERATORS = "anything-but cidr equals-ignore-case exactly exists numeric prefix suffix wildcard"
_RESERVED_IN_OR = frozenset([*_OPERATORS.split(), "=", "<", "<=", ">", ">="])


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


# Sentinels: a field the event does not have, data that does not parse, data not parsed yet.
_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "MISSING"})()
_NOT_JSON: Any = type("_NotJson", (), {"__repr__": lambda self: "NOT_JSON"})()
_UNSET: Any = object()
_EMPTY: dict[str, Any] = {}  # what a nested pattern sees in place of a non-object

Pred = Callable[[Any], bool]
TopPred = Callable[[Any, Any], bool]  # (record, parsed data)


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


_PATTERN_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_pairs,
    parse_float=JsonNumber,
    parse_int=JsonNumber,
    parse_constant=_reject_constant,
)
_DATA_DECODER = json.JSONDecoder(
    parse_float=JsonNumber, parse_int=JsonNumber, parse_constant=_reject_constant
)


def _check_depth(text: str) -> None:
    """Refuse deep nesting before json sees it (its recursion would otherwise be the limit)."""
    depth = 0
    in_string = escaped = False
    for position, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_PATTERN_DEPTH:
                raise PatternError(
                    f"the pattern nests deeper than {MAX_PATTERN_DEPTH} levels "
                    f"(at character {position})"
                )
        elif char in "]}":
            depth -= 1


def _join(path: str, key: str) -> str:
    plain = key and all(c.isalnum() or c in "-_$@:" for c in key)
    name = key if plain else json.dumps(key)
    return f"{path}.{name}" if path and plain else f"{path}[{name}]" if path else name


def _leaf_values(values: list[Any]) -> list[Any]:
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


class _Leaf:
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
        at = _join(path, op)
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
                    values = _leaf_values(v)
                    if values:
                        return any(type(s) is str and s in strings for s in values)
                    return absent
                return absent if v is _MISSING or type(v) is dict else False

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
                if v is _MISSING or t is dict:
                    return absent
                if t is list:
                    values = _leaf_values(v)
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
            if v is _MISSING or t is dict:
                return absent
            if t is list:
                values = _leaf_values(v)
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
        folded = _string(arg["equals-ignore-case"], _join(path, "equals-ignore-case"), op).lower()
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
        at = _join(path, op)
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


class _Compiler:
    """One pattern's compilation: validation, and the leaf paths seen per $or alternative."""

    def __init__(self) -> None:
        self.uses_data = False
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
        leaf = _Leaf()
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
            at = _join(path, key)
            if key == "$or":
                alts = self.alternatives(value, at, lambda b, p: self.node(b, keys, p))
                ors.append(tuple(alts))
            elif self._choices and key in _RESERVED_IN_OR:  # inside some $or
                raise PatternError(f"{json.dumps(key)} is an operator, not a field, in $or", at)
            elif type(value) is dict:
                checks.append((key, _nested(self.node(value, (*keys, key), at))))
            elif type(value) is list:
                checks.append((key, self.leaf(value, (*keys, key), at)))
            else:
                raise PatternError(f"{json.dumps(key)} must be an object or an array", at)
        if len(checks) == 1 and not ors:
            ((only_key, only),) = checks
            return lambda d: only(d.get(only_key, _MISSING))
        return _all_of(tuple(checks), tuple(ors))

    def top(self, obj: Any, path: str) -> TopPred:
        """The pattern's top level: the record's kinesis object, with data parsed."""
        if type(obj) is not dict:
            raise PatternError("a filter pattern must be a JSON object", path)
        if not obj:
            raise PatternError("empty objects are not allowed", path)
        checks: list[tuple[Callable[[Any], Any] | None, Pred]] = []
        ors: list[tuple[TopPred, ...]] = []
        for key, value in obj.items():
            at = _join(path, key)
            if key == "$or":
                ors.append(tuple(self.alternatives(value, at, self.top)))
            elif key == "data":
                if type(value) is not dict:
                    raise PatternError(
                        "the data pattern must be a JSON object (Kinesis filters parse data as "
                        "JSON); a list of values cannot match it",
                        at,
                    )
                self.uses_data = True
                checks.append((None, _nested(self.node(value, ("data",), at))))
            elif key in _METADATA:
                if type(value) is not list:
                    raise PatternError(f"{key} is a value: its pattern must be an array", at)
                checks.append((_METADATA[key], self.leaf(value, (key,), at)))
            else:
                raise PatternError(
                    f"unknown key {json.dumps(key)}: a Kinesis filter matches data or the "
                    f"metadata fields {', '.join(METADATA_KEYS)}",
                    at,
                )
        checks.sort(key=lambda check: check[0] is None)  # metadata first: it is cheaper
        frozen_checks, frozen_ors = tuple(checks), tuple(ors)
        if len(checks) == 1 and checks[0][0] is None and not ors:
            data_only = checks[0][1]  # the common shape: {"data": {...}}
            return lambda record, data: data_only(data)

        def top(record: Any, data: Any) -> bool:
            for getter, pred in frozen_checks:
                if not pred(data if getter is None else getter(record)):
                    return False
            return all(any(alt(record, data) for alt in alts) for alts in frozen_ors)

        return top


def _nested(node: Pred) -> Pred:
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
            if not pred(get(key, _MISSING)):
                return False
        return not ors or all(any(alt(d) for alt in alts) for alts in ors)

    return all_of


def _timestamp(record: Record) -> JsonNumber:
    # the event's number, as build_event writes it (orjson's shortest form of the rounded value)
    return JsonNumber(repr(round(record.approximate_arrival_timestamp, 3)))


def _encryption_type(record: Record) -> Any:
    return _MISSING if record.encryption_type is None else record.encryption_type


_METADATA: dict[str, Callable[[Any], Any]] = {
    "approximateArrivalTimestamp": _timestamp,
    "encryptionType": _encryption_type,
    "kinesisSchemaVersion": lambda record: "1.0",
    "partitionKey": attrgetter("partition_key"),
    "sequenceNumber": attrgetter("sequence_number"),
}


def _parse_data(record: Record) -> Any:
    """The record's data as JSON (numbers as JsonNumber), or _NOT_JSON."""
    try:
        return _DATA_DECODER.decode(record.data.decode("utf-8"))
    except (ValueError, RecursionError):  # bad base64 or UTF-8, not JSON, NaN, absurdly deep
        return _NOT_JSON


class CompiledPattern:
    """One validated filter pattern, ready to match records."""

    __slots__ = ("_match", "text", "uses_data")

    def __init__(self, text: str, match: TopPred, uses_data: bool) -> None:
        self.text = text
        self._match = match
        self.uses_data = uses_data  # has a data clause: the record's data is parsed for it

    def matches(self, record: Record) -> bool:
        """Whether this one pattern matches (a RecordFilter shares the data parse instead)."""
        data = _parse_data(record) if self.uses_data else _MISSING
        return data is not _NOT_JSON and self._match(record, data)

    def __repr__(self) -> str:
        return f"CompiledPattern({self.text!r})"


def compile_pattern(text: str) -> CompiledPattern:
    """Parse and validate one Kinesis filter pattern (raises PatternError)."""
    if not isinstance(text, str):
        raise PatternError(f"a filter pattern is a JSON string, not {type(text).__name__}")
    if len(text) > MAX_PATTERN_LENGTH:
        raise PatternError(
            f"the pattern is {len(text)} characters long; Lambda allows {MAX_PATTERN_LENGTH}"
        )
    _check_depth(text)
    try:
        parsed = _PATTERN_DECODER.decode(text)
    except PatternError:
        raise
    except ValueError as exc:  # json.JSONDecodeError, NaN / Infinity
        raise PatternError(f"the pattern is not valid JSON: {exc}") from None
    compiler = _Compiler()
    match = compiler.top(parsed, "")
    return CompiledPattern(text, match, compiler.uses_data)


class RecordFilter:
    """FilterCriteria: records pass when any pattern matches; no patterns pass everything."""

    __slots__ = ("_ordered", "patterns")

    def __init__(self, patterns: Sequence[CompiledPattern]) -> None:
        self.patterns = tuple(patterns)
        # metadata-only patterns first: a match there saves parsing the data (OR is commutative)
        ordered = sorted(self.patterns, key=attrgetter("uses_data"))
        self._ordered = tuple((p.uses_data, p._match) for p in ordered)

    @classmethod
    def compile(cls, patterns: Sequence[str]) -> RecordFilter:
        """Compile FilterCriteria's patterns; a PatternError names the failing filter's index."""
        compiled = []
        for index, text in enumerate(patterns):
            try:
                compiled.append(compile_pattern(text))
            except PatternError as exc:
                raise PatternError(exc.reason, exc.path, index) from None
        return cls(compiled)

    @property
    def passes_everything(self) -> bool:
        return not self.patterns

    def matches(self, record: Record) -> bool:
        if not self._ordered:
            return True
        data = _UNSET
        for uses_data, match in self._ordered:
            if uses_data:
                if data is _UNSET:
                    data = _parse_data(record)  # at most once per record
                if data is _NOT_JSON:
                    return False  # every remaining pattern has a data clause
            if match(record, data):
                return True
        return False

    def split(self, records: Sequence[Record]) -> tuple[list[Record], int]:
        """The records that pass, in order, and how many were filtered out."""
        if not self._ordered:
            return list(records), 0
        matches = self.matches
        kept = [record for record in records if matches(record)]
        return kept, len(records) - len(kept)

    def __repr__(self) -> str:
        return f"RecordFilter({[p.text for p in self.patterns]!r})"
