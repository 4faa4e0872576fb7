"""Tumbling windows in a shard's pipeline: the lane loop of a windowed shard, the final
invocations, and the window hooks of a batch run.

What to invoke is decided by the pure policy (``policy._windows.ShardWindows``); this module
does the awaiting. docs/filtering-and-windows.md is the user guide. The I/O-side choices:

* **One lane.** Windows need ``parallelization_factor = 1`` (the config refuses more), so a
  windowed shard has one lane, and :class:`WindowedLanes` runs it instead of the plain lane
  loop: the policy plans each step from the lane's buffered records and the wall clock.
* **A batch never crosses a window boundary.** It is cut at ``min(step.count, batch_count)``
  (BatchSize, 6 MB, the boundary), and the batching window stops waiting at the boundary.
* **Every invocation gets the current state.** A batch runs under the failure policy like any
  other (``BatchRun``: retries, record age, bisect, partial responses, destinations); before
  each invocation of a range, the policy is asked again, so a retry or a bisect half gets the
  state as it is then, and an early-termination final (state over 1 MB, or the lower
  ``max_state_bytes`` a fleet sets) comes before the rest of the batch. The response must
  have ``state`` (else a function error under the policy), then ``batchItemFailures`` is read
  when ReportBatchItemFailures is on. Only records that
  succeeded move the state on, and the new state is stored with the checkpoint they allow
  (a partial response that completes no record changes nothing).
* **The final invocation** (no records, ``isFinalInvokeForWindow``) comes when the next record
  belongs to a later window, at the shard's end (before SHARD_END is written), or after the
  idle wait (``PollSettings.window_idle_close``; the lane wakes at that time). It is retried
  with back-off until it succeeds, and nothing else of the shard is invoked meanwhile; a stop
  ends the waiting. Its success is stored at once (the checkpoint with the closed state).
* **Payload.** A window invocation always sends Lambda's window event, also for a function
  declared with ``input = "records"`` (the state has nowhere else to go).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._backoff import Backoff
from .._redact import redact
from ..events._lambda import MAX_EVENT_BYTES, build_event
from ..events._record import Record
from ..functions import InvokeResult
from ..policy._failures import Discard, Step
from ..policy._windows import (
    MAX_STATE_BYTES,
    ShardWindows,
    WindowIdle,
    WindowInvoke,
    WindowResponse,
    WindowSnapshot,
    parse_window_response,
)
from . import _processor
from ._batching import batch_count, event_bytes
from ._lanes import Batch, Lane
from ._ports import WindowedShardHandle
from ._processor import (
    FUNCTION_CALL_FAILED,
    INVALID_WINDOW_RESPONSE,
    NOT_INVOKED,
    BatchProcessor,
    BatchRun,
    invoke_bounded,
)

__all__ = ["WindowedLanes", "WindowedRun"]

log = logging.getLogger("kinesis_esm.windows")

# Waiting for an idle close while the shard is not caught up: look again this often.
_RECHECK_SECONDS = 0.5


class WindowedLanes:
    """One shard's tumbling windows: the policy, and the lane loop that follows it."""

    def __init__(
        self,
        processor: BatchProcessor,
        length: int,
        *,
        idle_close_seconds: float,
        snapshot: WindowSnapshot | None = None,
        clock: Callable[[], float] | None = None,
        max_state_bytes: int = MAX_STATE_BYTES,
    ) -> None:
        """``max_state_bytes``: a response's state above this ends the window early."""
        self.processor = processor
        self.windows = ShardWindows(
            length,
            idle_close_seconds=idle_close_seconds,
            max_state_bytes=max_state_bytes,
            snapshot=snapshot,
        )
        self._clock = clock

    @classmethod
    def restore(
        cls,
        processor: BatchProcessor,
        length: int,
        stored: bytes | None,
        *,
        idle_close_seconds: float,
        shard_id: str,
        max_state_bytes: int = MAX_STATE_BYTES,
    ) -> WindowedLanes:
        """From the state stored with the shard's checkpoint (None: a fresh start)."""
        snapshot = None
        if stored is not None:
            try:
                snapshot = WindowSnapshot.from_json(stored)
            except ValueError as exc:  # never silently: the open window's aggregate is gone
                log.error(
                    "%s %s: the stored tumbling-window state cannot be read (%s); the shard "
                    "starts a fresh window, and the state aggregated so far is lost",
                    processor.identity.uuid,
                    shard_id,
                    exc,
                )
        return cls(
            processor,
            length,
            idle_close_seconds=idle_close_seconds,
            snapshot=snapshot,
            max_state_bytes=max_state_bytes,
        )

    def now(self) -> float:
        # the processor's wall clock unless given one: a single seam for tests
        return self._clock() if self._clock is not None else _processor.wall_clock()

    def stored_state(self) -> bytes:
        return self.windows.snapshot().to_json()

    async def run_lane(self, shard: WindowedShardHandle, lane: Lane) -> None:
        cfg = shard.config
        size, batching = cfg.batch_size, cfg.maximum_batching_window_in_seconds
        windows = self.windows
        batch_started = time.monotonic()
        while not shard.stopping:
            pending = lane.peek(size)
            reading_done = shard.polling_done
            step = windows.plan(
                pending,
                self.now(),
                limit=size,
                caught_up=not shard.millis_behind_latest,
                shard_ended=reading_done and shard.ended,
            )
            if isinstance(step, WindowIdle):
                if reading_done:
                    return  # nothing buffered, nothing to close, nothing more to come
                await shard.wait_lane(lane.number, self._delay(step.wake_at))
                continue
            if step.final:
                if not shard.holds_shard() or not await self.final(shard, step):
                    return
                continue
            if batching > 0 and not reading_done:
                remaining = batch_started + batching - time.monotonic()
                if remaining > 0 and not _batch_ready(lane, pending, step, size, shard.overhead):
                    await shard.wait_lane(lane.number, remaining)
                    continue
            if not shard.holds_shard():
                return  # a batch boundary: invoke nothing more for a shard not held
            n = min(step.count, batch_count(pending, size, shard.overhead))
            batch = lane.take(n)
            if n == 1 and event_bytes(batch.records, shard.overhead) > MAX_EVENT_BYTES:
                self.processor.counters.oversized_batches += 1
                log.warning(
                    "%s: record %s exceeds the 6 MB event limit; sending it alone",
                    shard.shard_id,
                    batch.records[0].sequence_number,
                )
            shard.records_invoked += n
            await WindowedRun(self, shard, lane, batch).run()
            batch_started = time.monotonic()
            await shard.commit()

    def _delay(self, wake_at: float | None) -> float | None:
        if wake_at is None:
            return None  # until records come (or the shard ends or stops)
        delay = wake_at - self.now()
        return delay if delay > 0 else _RECHECK_SECONDS  # due, but records are still unread

    async def final(self, shard: WindowedShardHandle, step: WindowInvoke) -> bool:
        """The window's final invocation, retried until it succeeds; False if the shard
        stopped first (the window stays open in the stored state)."""
        processor = self.processor
        counters, status = processor.counters, processor.status
        settings = processor.retry_settings
        backoff = Backoff(settings.initial, settings.maximum)
        failures = 0
        while not shard.stopping:
            event = step.event(
                {"Records": []}, shard_id=shard.shard_id, stream_arn=processor.identity.stream_arn
            )
            try:
                result = await invoke_bounded(processor.function, event)
            except Exception as exc:
                problem, detail = NOT_INVOKED, f"{type(exc).__name__}: {exc}"
            else:
                counters.invocations += 1
                response = parse_window_response(result.payload) if result.ok else None
                if response is not None and response.ok:
                    self.windows.final_succeeded(step)
                    status.processing_result("OK")
                    await shard.commit(force=True)
                    return True
                if response is not None:
                    problem, detail = INVALID_WINDOW_RESPONSE, response.reason
                else:
                    counters.errors += 1
                    problem = FUNCTION_CALL_FAILED
                    detail = f"{result.error_type}: {result.error_message}"
            failures += 1
            status.processing_result(problem)
            delay = backoff.next_delay()
            what = "early final" if step.terminated_early else "final"
            log.warning(
                "%s %s: the %s invocation of window %s failed, attempt %d (%s: %s); the shard "
                "waits for it, retry in %.2fs",
                processor.identity.uuid,
                shard.shard_id,
                what,
                step.window.as_event()["start"],
                failures,
                problem.removeprefix("PROBLEM: "),
                redact(detail),
                delay,
            )
            if await shard.sleep_unless_stopped(delay):
                return False
        return False


def _batch_ready(
    lane: Lane, pending: Sequence[Record], step: WindowInvoke, size: int, overhead: int
) -> bool:
    """No point waiting for the batching window: the batch is full, reaches the window's end,
    or reaches the 6 MB cap."""
    if lane.count >= size or step.count < len(pending):
        return True
    return batch_count(pending, size, overhead) < len(pending)


class WindowedRun(BatchRun):
    """One batch of a window under the failure policy, each invocation with the current
    state; what succeeds moves the window's state on."""

    windowed = True

    def __init__(
        self, lanes: WindowedLanes, shard: WindowedShardHandle, lane: Lane, batch: Batch
    ) -> None:
        super().__init__(lanes.processor, shard, lane, batch)
        self.lanes = lanes
        self.windowed_shard = shard
        self.step: WindowInvoke | None = None
        self.response: WindowResponse | None = None

    async def attempt(self, records: Sequence[Record]) -> Step | Discard | None:
        lanes = self.lanes
        while True:
            step = lanes.windows.plan(records, lanes.now(), limit=len(records))
            if isinstance(step, WindowIdle):  # never, with records pending
                raise RuntimeError("the window policy has nothing to invoke for a batch")
            if not step.final:
                break
            # the state passed the limit within this batch: the early final, then the rest
            if not await lanes.final(self.windowed_shard, step):
                return None  # stopped: run() returns at its stop-aware back-off
        if step.count != len(records):
            raise RuntimeError(
                f"{step.count} of {len(records)} records of a batch are in window {step.window}"
            )
        self.step, self.response = step, None
        return await super().attempt(records)

    async def _invoke(self, records: Sequence[Record]) -> InvokeResult:
        step = self.step
        assert step is not None
        event = step.event(
            build_event(self.shard.event_source, records),
            shard_id=self.shard.shard_id,
            stream_arn=self.processor.identity.stream_arn,
        )
        return await invoke_bounded(self.processor.function, event)

    def window_problem(self, payload: Any) -> str | None:
        self.response = response = parse_window_response(payload)
        return None if response.ok else response.reason

    def folded(self, count: int) -> None:
        step, response = self.step, self.response
        assert step is not None and response is not None and count > 0
        self.lanes.windows.batch_succeeded(step, response)
