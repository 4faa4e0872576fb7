"""KPL de-aggregation at the level of Kinesis records: each aggregate becomes its user records.

The wire format and its parser are in :mod:`._kpl_wire`. User record *i* (in protobuf order)
gets sub-sequence number *i* and shares the aggregate's sequence number, as in KCL; a plain
record, or an aggregate that does not parse, passes through whole. The pipeline calls
:func:`expand_all` once per GetRecords page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import NamedTuple

from ..events._record import Record
from ._kpl_wire import (
    MAGIC,
    DeaggregationError,
    UserRecord,
    deaggregate,
    decode_aggregate,
    is_aggregate,
)

__all__ = [
    "MAGIC",
    "DeaggregationError",
    "Expansion",
    "Pair",
    "UserRecord",
    "deaggregate",
    "expand",
    "expand_all",
    "is_aggregate",
    "parse_item_identifier",
    "user_record_id",
]

# Every base64 text of bytes that start with MAGIC starts with this (the 5th character holds
# the top 6 bits of the 4th byte): plain records are told apart without decoding them.
_MAGIC_B64 = "84maw"

Pair = tuple[Record, int | None]
"""A record and its sub-sequence number; None: a plain record (or an aggregate left whole)."""


def _user_records(record: Record) -> list[tuple[Record, int]] | None:
    """The user records of ``record`` as Records, or None if it is not an aggregate."""
    if not record.data_b64.startswith(_MAGIC_B64):
        return None
    data = record.data
    if not is_aggregate(data):
        return None
    keys, hash_keys, payloads = decode_aggregate(data)
    count = len(payloads)
    users = map(
        Record.from_bytes,
        repeat(record.sequence_number, count),
        keys,
        payloads,
        repeat(record.approximate_arrival_timestamp, count),
        repeat(record.encryption_type, count),
        range(count),
        hash_keys,
    )
    return list(zip(users, range(count), strict=True))


class Expansion(NamedTuple):
    """What one Kinesis record becomes: (record, sub-sequence number or None) pairs, in order.

    A plain record, and an aggregate that failed to de-aggregate, are one pair with sub-sequence
    None: the original record, unchanged. ``error`` is set in the second case (count it in
    ``deaggregation_errors`` and log it with the record's sequence number).
    """

    records: Sequence[Pair]
    error: DeaggregationError | None


def expand(record: Record) -> Expansion:
    """One Kinesis record as its user records (or as itself when it is not a valid aggregate).

    Each user record becomes a ``Record`` with its own partition key, explicit hash key (None
    when the aggregate has none for it), data and ``sub_sequence_number``, and the aggregate's
    sequence number, arrival time and encryption type; the pair carries its sub-sequence number.

    The identifier of a user record (in ``eventID`` and ``batchItemFailures``) is
    ``"<sequenceNumber>:<subSequenceNumber>"``: see :func:`user_record_id`. Nobody else defines
    one: KCL checkpoints the pair (its ``ExtendedSequenceNumber``, two lease attributes),
    aws-kinesis-agg and Firehose give ``sequenceNumber`` and ``subSequenceNumber`` as two fields,
    and Powertools reports the plain ``sequenceNumber``. A colon never occurs in a sequence
    number (decimal digits), and it matches Lambda's ``shardId:sequenceNumber`` eventID.

    All user records of an aggregate come from one call, so the last pair's sub-sequence number
    tells whether the aggregate is finished. The checkpoint is ``(sequence, None)`` once a
    plain record or a whole aggregate is done (resume AFTER_SEQUENCE_NUMBER), ``(sequence, s)``
    while only user records 0..*s* of an aggregate are (resume AT_SEQUENCE_NUMBER and drop the
    first record's user records up to *s*). KCL keys the same choice on *s* > 0, which
    cannot tell user record 0 of many done from a whole record done.
    """
    try:
        users = _user_records(record)
    except DeaggregationError as error:
        return Expansion(((record, None),), error)
    return Expansion(((record, None),) if users is None else users, None)


def expand_all(
    records: Iterable[Record],
) -> tuple[list[Pair], list[tuple[Record, DeaggregationError]]]:
    """:func:`expand` over a page of records: all pairs in order, and the aggregates left whole.

    The pipeline's entry point (one call per GetRecords page): a plain record costs one prefix
    test of its base64 text, about a third of a call to :func:`expand`.
    """
    pairs: list[Pair] = []
    errors: list[tuple[Record, DeaggregationError]] = []
    add = pairs.append
    for record in records:
        if not record.data_b64.startswith(_MAGIC_B64):
            add((record, None))
            continue
        try:
            users = _user_records(record)
        except DeaggregationError as error:
            errors.append((record, error))
            users = None
        if users is None:
            add((record, None))
        else:
            pairs += users
    return pairs, errors


def user_record_id(sequence_number: str, sub_sequence_number: int | None) -> str:
    """The identifier of a user record: ``"<sequence>:<sub>"``; a plain record's is its sequence."""
    if sub_sequence_number is None:
        return sequence_number
    return f"{sequence_number}:{sub_sequence_number}"


def parse_item_identifier(identifier: str) -> tuple[str, int | None]:
    """A ``batchItemFailures`` itemIdentifier as (sequence number, sub-sequence number or None).

    ``"<seq>:<sub>"`` names one user record; a plain ``"<seq>"`` names a plain record, or a whole
    aggregate (retry it from its first user record). Raises ValueError for anything else.
    """
    sequence, colon, sub = identifier.partition(":")
    if not sequence or (colon and not (sub.isascii() and sub.isdigit())):
        raise ValueError(
            f"itemIdentifier {identifier!r} is neither a sequence number nor "
            "'<sequenceNumber>:<subSequenceNumber>'"
        )
    return sequence, int(sub) if colon else None
