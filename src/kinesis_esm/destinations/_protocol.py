"""What the processor needs of an on-failure destination, and what it hands one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .._errors import KinesisESMError

__all__ = ["Destination", "DestinationError", "FailureReport"]


class DestinationError(KinesisESMError):
    """A report could not be delivered: the destination is down, missing, or rejected it."""


@dataclass(frozen=True, slots=True)
class FailureReport:
    """One discarded batch: Lambda's on-failure record, and what S3 objects add to it."""

    record: dict[str, Any]  # the SQS message body / SNS message, as a JSON object
    event: dict[str, Any]  # the invocation event of the discarded records (S3's "payload")
    mapping_uuid: str
    shard_id: str
    timestamp: float  # when it was discarded (Unix seconds); the S3 key's date
    records: int  # how many records it describes


class Destination(Protocol):
    """Delivers failure reports. ``deliver`` raises DestinationError when it cannot."""

    target: str  # the ARN or file:// URL it was opened for

    async def deliver(self, report: FailureReport) -> None: ...

    async def aclose(self) -> None: ...
