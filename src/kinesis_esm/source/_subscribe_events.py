"""What SubscribeToShard sends, read without I/O: its events parsed, its errors mapped.

A ``SubscribeToShardEvent`` payload becomes a :class:`SubscriptionEvent` (``Data`` kept as the
wire's base64); an ``exception`` or ``error`` message, or a failed call, becomes the
kinesis_esm error it stands for, with a subscription in use and a missing consumer told apart
from other failures. :func:`retry_delay` is the back-off rule between resubscriptions, and
:class:`SubscribeSettings` the knobs :class:`~kinesis_esm.source._subscribe.ShardSubscriber`
runs with.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import orjson

from .._errors import SourceError, StreamNotFoundError, ThrottledError, TransientSourceError
from ..events._record import Record
from ._eventstream import EventStreamMessage, EventStreamProtocolError
from ._kinesis import _child_shards, _client_error, _records_from_raw, map_error
from ._protocol import ChildShard

__all__ = [
    "ConsumerNotFoundError",
    "SubscribeSettings",
    "SubscriptionEvent",
    "SubscriptionInUseError",
    "map_subscribe_error",
    "parse_subscribe_event",
    "retry_delay",
]

_OPERATION = "subscribe_to_shard"


class SubscriptionInUseError(TransientSourceError):
    """ResourceInUseException: another subscription holds this consumer and shard (another
    worker, or one of ours the server has not noticed closing yet)."""


class ConsumerNotFoundError(StreamNotFoundError):
    """ResourceNotFoundException naming the consumer: it was never registered, or it was
    deregistered (or its stream deleted)."""


def map_subscribe_error(exc: BaseException, operation: str = _OPERATION) -> SourceError:
    """``map_error``, with ResourceInUse and a missing consumer told apart."""
    mapped = exc if isinstance(exc, SourceError) else map_error(exc, operation)
    if mapped.code == "ResourceInUseException":
        return SubscriptionInUseError(str(mapped), code=mapped.code)
    if mapped.code == "ResourceNotFoundException" and "consumer" in str(mapped).lower():
        return ConsumerNotFoundError(str(mapped), code=mapped.code)
    return mapped


@dataclass(frozen=True, slots=True)
class SubscribeSettings:
    min_subscribe_interval: float = 1.0  # Kinesis: 1 SubscribeToShard/s per consumer and shard
    call_timeout: float = 10.0  # connect and response headers
    event_timeout: float = 30.0  # silence between events that counts as a dead connection
    max_retries: int = 8  # transient failures in a row retried before the error is raised
    backoff_initial: float = 0.5
    backoff_max: float = 20.0

    def __post_init__(self) -> None:
        for name in ("min_subscribe_interval", "call_timeout", "event_timeout", "backoff_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {self.max_retries!r}")
        if not 0 <= self.backoff_initial <= self.backoff_max:
            raise ValueError(
                f"backoff_initial must be between 0 and backoff_max ({self.backoff_max}), "
                f"not {self.backoff_initial!r}"
            )


def retry_delay(
    error: SourceError, attempt: int, settings: SubscribeSettings, rng: random.Random
) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...) after a transient `error`.

    A dropped connection is retried at once the first time (the minimum interval between
    calls still applies); then capped exponential back-off with equal jitter. Throttling and
    a subscription in use wait at least 1 s.
    """
    floor = 1.0 if isinstance(error, ThrottledError | SubscriptionInUseError) else 0.0
    if attempt <= 1 and floor == 0.0:
        return 0.0
    ceiling = min(settings.backoff_max, settings.backoff_initial * 2.0 ** min(attempt - 1, 1000))
    return max(floor, ceiling / 2 + rng.uniform(0, ceiling / 2))


@dataclass(slots=True)
class SubscriptionEvent:
    """One SubscribeToShardEvent. ``continuation_sequence_number`` None: the shard is closed
    and fully read, and ``child_shards`` lists its children."""

    records: list[Record]
    continuation_sequence_number: str | None
    millis_behind_latest: int | None
    child_shards: list[ChildShard] = field(default_factory=list)

    @property
    def shard_ended(self) -> bool:
        return self.continuation_sequence_number is None


def parse_subscribe_event(payload: bytes) -> SubscriptionEvent:
    """A SubscribeToShardEvent's JSON payload, with ``Data`` kept as base64."""
    try:
        body = orjson.loads(payload)
        records = _records_from_raw(body.get("Records") or [])
        continuation = body.get("ContinuationSequenceNumber")
        behind = body.get("MillisBehindLatest")
        children = _child_shards(body.get("ChildShards"))
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise EventStreamProtocolError(f"malformed SubscribeToShardEvent: {exc!r}") from exc
    return SubscriptionEvent(
        records,
        None if continuation is None else str(continuation),
        None if behind is None else int(behind),
        children,
    )


def _message_error(message: EventStreamMessage) -> SourceError:
    """An ``exception`` or ``error`` message as the mapped error it stands for."""
    if message.header(":message-type") == "exception":
        code = message.header(":exception-type") or "UnknownException"
        try:
            detail = orjson.loads(message.payload)
            text = str(detail.get("message") or detail.get("Message") or "")
        except (orjson.JSONDecodeError, AttributeError):
            text = message.payload[:200].decode("utf-8", "replace")
    else:
        code = message.header(":error-code") or "UnknownError"
        text = message.header(":error-message") or ""
    status = 500 if code in ("InternalFailureException", "UnknownError") else 400
    error = _client_error(status, orjson.dumps({"__type": code, "message": text}), _OPERATION)
    return map_subscribe_error(error)
