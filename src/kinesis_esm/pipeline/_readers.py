"""The two ways a shard is read, each one loop feeding the same consumer (lanes, batching,
failure policy, checkpoints are shared):

* polling (``poll_shard``): GetRecords at Lambda's base rate of one call per second, and again
  at once while a poll comes back full or behind, never faster than five calls per second
  (Kinesis's per-shard limit); a new iterator after expiry, after the last record read;
* enhanced fan-out (``subscribe_shard``): SubscribeToShard through a registered consumer; the
  subscriber resubscribes every 5 minutes from the last continuation, and is read only when the
  buffer has room, so a slow function stops the event stream instead of growing a queue.

Both wait while the shard's buffered records are at the bound (back-pressure).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .._backoff import Backoff
from .._errors import ExpiredIteratorError, SourceError, ThrottledError, TrimmedPositionError
from ..source import GetRecordsResult, IteratorPosition

if TYPE_CHECKING:
    from .._statistics import MappingCounters
    from ..events._record import Record
    from ..source import ChildShard, ShardInfo, StreamSource
    from ..source._subscribe import ShardSubscriber
    from ._budget import ShardReadBudget
    from ._ports import MappingIdentity
    from ._settings import PollSettings

__all__ = ["poll_shard", "read_statistics", "subscribe_shard"]

log = logging.getLogger("kinesis_esm.shard")


class ShardConsumer(Protocol):
    """What a reading loop needs of the shard it feeds (``_consumer.ShardConsumer``)."""

    identity: MappingIdentity
    source: StreamSource
    counters: MappingCounters
    poll_settings: PollSettings
    position: IteratorPosition
    shard: ShardInfo
    last_read_sequence: str | None
    read_budget: ShardReadBudget | None

    @property
    def room(self) -> int: ...

    async def wait_for_room(self) -> None: ...

    def resume_position(self) -> IteratorPosition: ...

    async def accept(self, records: list[Record], millis_behind_latest: int | None) -> None: ...

    def end(self, child_shards: list[ChildShard]) -> None: ...

    def restart_after_trim(self, position: IteratorPosition, exc: SourceError) -> None: ...

    async def source_failed(self, exc: SourceError, backoff: Backoff) -> None: ...


async def poll_shard(consumer: ShardConsumer) -> None:
    """Read the shard with GetRecords until its end (or until cancelled)."""
    settings = consumer.poll_settings
    source = consumer.source
    arn = consumer.identity.stream_arn
    shard_id = consumer.shard.shard_id
    counters = consumer.counters
    backoff = Backoff(settings.error_backoff_initial, settings.error_backoff_max)
    iterator: str | None = None
    last_call = -1e9
    while True:
        await consumer.wait_for_room()
        if iterator is None:
            position = consumer.resume_position()
            asked_at = time.time()
            try:
                iterator = await source.get_shard_iterator(arn, shard_id, position)
                if position.type == "LATEST":
                    # a later iterator (after an error or expiry, before any record was read)
                    # must not jump to a newer LATEST and skip what came meanwhile
                    consumer.position = IteratorPosition("AT_TIMESTAMP", timestamp=asked_at)
            except TrimmedPositionError as exc:
                consumer.restart_after_trim(position, exc)
                continue
            except SourceError as exc:
                await consumer.source_failed(exc, backoff)
                continue
        delay = last_call + settings.min_interval - time.monotonic()
        if delay > 0:
            await anyio.sleep(delay)
        if consumer.read_budget is not None:  # the shard's reads, shared with other mappings
            await consumer.read_budget.wait_turn(arn, shard_id, settings.min_interval)
        limit = min(settings.max_records_per_call, consumer.room)
        last_call = time.monotonic()
        counters.get_records_calls += 1
        try:
            result = await source.get_records(arn, iterator, limit)
        except ExpiredIteratorError:
            log.info("%s: iterator expired; resuming at %s", shard_id, consumer.resume_position())
            iterator = None
            continue
        except SourceError as exc:
            if not isinstance(exc, ThrottledError):
                iterator = None  # a broken connection may have spoiled it; take a fresh one
            await consumer.source_failed(exc, backoff)
            continue
        backoff.reset()
        records = result.records
        await consumer.accept(records, result.millis_behind_latest)
        iterator = result.next_iterator
        if iterator is None or _read_to_listed_end(consumer, result):
            consumer.end(result.child_shards)
            return
        more = len(records) >= limit or bool(result.millis_behind_latest)
        if not more:
            await anyio.sleep(max(0.0, last_call + settings.base_interval - time.monotonic()))


def _read_to_listed_end(consumer: ShardConsumer, result: GetRecordsResult) -> bool:
    """A closed shard read to its listed end, on servers whose closed shards never return a
    null NextShardIterator (moto): nothing more came and nothing is behind."""
    ending = consumer.shard.ending_sequence_number
    if ending is None or result.records or result.millis_behind_latest:
        return False
    last = consumer.last_read_sequence
    return last is None or int(last) >= int(ending)


async def subscribe_shard(consumer: ShardConsumer, subscriber: ShardSubscriber) -> None:
    """Read the shard through an enhanced fan-out subscription until its end."""
    settings = consumer.poll_settings
    backoff = Backoff(settings.error_backoff_initial, settings.error_backoff_max)
    async with subscriber:
        while True:
            await consumer.wait_for_room()  # flow control: the socket is read only on demand
            try:
                event = await subscriber.__anext__()
            except StopAsyncIteration:
                consumer.end([])
                return
            except TrimmedPositionError as exc:
                consumer.restart_after_trim(subscriber.position, exc)
                subscriber.reposition(IteratorPosition("TRIM_HORIZON"))
                continue
            except SourceError as exc:  # the subscriber keeps its position
                await consumer.source_failed(exc, backoff)
                continue
            backoff.reset()
            await consumer.accept(event.records, event.millis_behind_latest)
            if event.shard_ended:
                consumer.end(event.child_shards)
                return
            if not event.records and not event.millis_behind_latest and consumer.shard.is_closed:
                ended = await _confirm_end(consumer)
                if ended is not None:
                    consumer.end(ended.child_shards)
                    return


async def _confirm_end(consumer: ShardConsumer) -> GetRecordsResult | None:
    """A subscription caught up on a shard that ListShards shows closed, where the server never
    ends the subscription with ChildShards (kinesis-mock): one GetRecords after the last record
    read says whether the shard is at its end (the result), or not (None)."""
    arn, shard_id = consumer.identity.stream_arn, consumer.shard.shard_id
    try:
        iterator = await consumer.source.get_shard_iterator(
            arn, shard_id, consumer.resume_position()
        )
        result = await consumer.source.get_records(arn, iterator, 1)
    except SourceError as exc:
        log.info("%s: could not confirm the closed shard's end (%s)", shard_id, exc)
        return None
    if result.records:
        return None  # more to come through the subscription
    if result.next_iterator is None or _read_to_listed_end(consumer, result):
        return result
    return None


def read_statistics(consumer_arn: str | None, subscriber: ShardSubscriber | None) -> dict[str, Any]:
    """How a shard is read, for its statistics: polling, or a subscription (age, resubscribes)."""
    if subscriber is None:
        return {"read_mode": "subscribe" if consumer_arn else "polling"}
    stats = subscriber.statistics()
    return {
        "read_mode": "subscribe",
        "subscription_age_s": stats.subscription_age,
        "resubscriptions": stats.resubscriptions,
    }
