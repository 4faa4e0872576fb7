"""Lambda's event filtering for Kinesis: EventBridge patterns, compiled once, matched per record.

A pattern is parsed and validated once (:func:`compile_pattern`) into nested closures; matching a
record walks only the fields the pattern names. docs/filtering-and-windows.md is the user guide.

Semantics common to every pattern are in :mod:`._patterns`. For Kinesis, the pattern's top level
is the record's ``kinesis`` object. ``data`` (base64) is decoded and parsed as JSON, and its
clause must be an object pattern; the other keys are the metadata fields. A filter with a
``data`` clause never matches a record whose data is not JSON (Lambda drops it); a filter without
one sees only the metadata.

A library was weighed first: moto's ``EventPattern`` (a test dependency here) interprets the raw
pattern per event after re-serializing the event, compares numbers by value, and validates
little; LocalStack's matcher lives inside its server; PyPI's ``event-ruler`` (0.3.0, 2023) wraps
a Go matcher behind one call that rebuilds it per event and reports only "invalid pattern". None
is a fit, so this is a small matcher of our own, checked against the documented examples.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from ._pattern_compiler import PatternCompiler, nested_pattern
from ._patterns import (
    DATA_DECODER,
    INVALID_PATTERN_MESSAGE,
    MAX_PATTERN_DEPTH,
    MISSING,
    JsonNumber,
    PatternError,
    Pred,
    join_path,
    parse_pattern,
)

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

MAX_PATTERN_LENGTH = 4096  # Lambda's API limit on Filter.Pattern, in characters
# The fields of a record's kinesis object that a pattern may name, besides "data".
METADATA_KEYS = (
    "approximateArrivalTimestamp",
    "encryptionType",
    "kinesisSchemaVersion",
    "partitionKey",
    "sequenceNumber",
)

# Data that does not parse, data not parsed yet.
_NOT_JSON: Any = type("_NotJson", (), {"__repr__": lambda self: "NOT_JSON"})()
_UNSET: Any = object()

TopPred = Callable[[Any, Any], bool]  # (record, parsed data)


class _KinesisPatternCompiler(PatternCompiler):
    """A pattern's top level bound to a Kinesis record: data parsed as JSON, metadata fields."""

    def __init__(self) -> None:
        super().__init__()
        self.uses_data = False

    def top(self, obj: Any, path: str) -> TopPred:
        """The pattern's top level: the record's kinesis object, with data parsed."""
        if type(obj) is not dict:
            raise PatternError("a filter pattern must be a JSON object", path)
        if not obj:
            raise PatternError("empty objects are not allowed", path)
        checks: list[tuple[Callable[[Any], Any] | None, Pred]] = []
        ors: list[tuple[TopPred, ...]] = []
        for key, value in obj.items():
            at = join_path(path, key)
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
                checks.append((None, nested_pattern(self.node(value, ("data",), at))))
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


def _timestamp(record: Record) -> JsonNumber:
    # the event's number, as build_event writes it (orjson's shortest form of the rounded value)
    return JsonNumber(repr(round(record.approximate_arrival_timestamp, 3)))


def _encryption_type(record: Record) -> Any:
    return MISSING if record.encryption_type is None else record.encryption_type


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
        return DATA_DECODER.decode(record.data.decode("utf-8"))
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
        data = _parse_data(record) if self.uses_data else MISSING
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
    parsed = parse_pattern(text)
    compiler = _KinesisPatternCompiler()
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
