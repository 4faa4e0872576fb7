"""The Record type: one Kinesis record as read from a shard.

Kinesis sends ``Data`` as base64 on the wire and Lambda's event carries base64 too, so a record
keeps the wire's base64 text and decodes it only when a handler reads :attr:`Record.data`.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["Record"]


class Record:
    """One Kinesis record: the wire fields, with the payload decoded lazily."""

    __slots__ = (
        "_data",
        "approximate_arrival_timestamp",
        "data_b64",
        "encryption_type",
        "explicit_hash_key",
        "partition_key",
        "sequence_number",
        "sub_sequence_number",
    )

    def __init__(
        self,
        sequence_number: str,
        partition_key: str,
        data_b64: str,
        approximate_arrival_timestamp: float,
        encryption_type: str | None = None,
        sub_sequence_number: int | None = None,
        explicit_hash_key: str | None = None,
    ) -> None:
        self.sequence_number = sequence_number
        self.partition_key = partition_key
        self.data_b64 = data_b64
        self.approximate_arrival_timestamp = approximate_arrival_timestamp
        self.encryption_type = encryption_type
        # a user record of a KPL aggregate (deaggregate = true): its place in the aggregate
        self.sub_sequence_number = sub_sequence_number
        self.explicit_hash_key = explicit_hash_key
        self._data: bytes | None = None

    @classmethod
    def from_bytes(
        cls,
        sequence_number: str,
        partition_key: str,
        data: bytes,
        approximate_arrival_timestamp: float,
        encryption_type: str | None = None,
        sub_sequence_number: int | None = None,
        explicit_hash_key: str | None = None,
    ) -> Record:
        record = cls(
            sequence_number,
            partition_key,
            base64.b64encode(data).decode("ascii"),
            approximate_arrival_timestamp,
            encryption_type,
            sub_sequence_number,
            explicit_hash_key,
        )
        record._data = data
        return record

    @property
    def data(self) -> bytes:
        """The record's payload bytes (decoded from base64 on first access)."""
        data = self._data
        if data is None:
            try:
                data = base64.b64decode(self.data_b64, validate=True)
            except binascii.Error as exc:  # a malformed wire record; say which one
                raise ValueError(
                    f"record {self.sequence_number} carries invalid base64 data: {exc}"
                ) from exc
            self._data = data
        return data

    @property
    def record_id(self) -> str:
        """What names this record in a checkpoint, an eventID and a batchItemFailures item: its
        sequence number, or ``"<sequence>:<sub-sequence>"`` for a user record of an aggregate."""
        sub = self.sub_sequence_number
        return self.sequence_number if sub is None else f"{self.sequence_number}:{sub}"

    @property
    def sequence_int(self) -> int:
        return int(self.sequence_number)

    def __repr__(self) -> str:
        return (
            f"Record(sequence_number={self.sequence_number!r}, "
            f"partition_key={self.partition_key!r}, size={len(self.data_b64) * 3 // 4})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (
            self.sequence_number == other.sequence_number
            and self.partition_key == other.partition_key
            and self.data_b64 == other.data_b64
            and self.approximate_arrival_timestamp == other.approximate_arrival_timestamp
            and self.encryption_type == other.encryption_type
            and self.sub_sequence_number == other.sub_sequence_number
            and self.explicit_hash_key == other.explicit_hash_key
        )

    __hash__ = None  # type: ignore[assignment]  # mutable cache; equality is by value
