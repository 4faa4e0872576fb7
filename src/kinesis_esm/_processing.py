"""Running one batch to completion: invoke, and on a function error retry with capped
exponential back-off until it succeeds (Lambda's default: infinite retries, infinite age).

The shard does not advance past a failing batch; other lanes and shards go on.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ._backoff import Backoff
from ._events import build_event
from ._lanes import Batch, Lane

if TYPE_CHECKING:
    from ._mapping import MappingRunner
    from ._shard import ShardConsumer

__all__ = ["BatchProcessor"]

log = logging.getLogger("kinesis_esm.processing")


class BatchProcessor:
    def __init__(self, mapping: MappingRunner) -> None:
        self.mapping = mapping

    def payload(self, shard: ShardConsumer, batch: Batch) -> Any:
        # built afresh for every attempt: a handler that mutates its event cannot taint a retry
        if self.mapping.function.input == "records":
            return list(batch.records)
        return build_event(shard.event_source, batch.records)

    async def process(self, shard: ShardConsumer, lane: Lane, batch: Batch) -> None:
        mapping = self.mapping
        counters = mapping.counters
        settings = mapping.retry_settings
        backoff = Backoff(settings.initial, settings.maximum)
        n = len(batch)
        while True:
            shard.iterator_age_ms = max(
                0, int((time.time() - batch.records[-1].approximate_arrival_timestamp) * 1000)
            )
            counters.invocations += 1
            counters.invoked_events += n
            result = await mapping.function.invoke(self.payload(shard, batch))
            if result.ok:
                counters.succeeded_events += n
                mapping.last_processing_result = "OK"
                lane.finish(batch)
                return
            counters.errors += 1
            counters.failed_invoke_events += n
            mapping.last_processing_result = "PROBLEM: Function call failed"
            delay = backoff.next_delay()
            log.warning(
                "%s %s: function %s failed on %d records %s..%s (%s: %s); retry %d in %.1fs",
                mapping.uuid,
                shard.shard.shard_id,
                mapping.function.name,
                n,
                batch.records[0].sequence_number,
                batch.records[-1].sequence_number,
                result.error_type,
                result.error_message,
                backoff.attempts,
                delay,
            )
            if await shard.sleep_unless_stopped(delay):
                return  # stopped: the batch stays unfinished and is delivered again later
