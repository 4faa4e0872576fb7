"""Running one batch to completion under Lambda's failure policy.

The policy itself (retry counting, bisect, partial responses, record age, the report) is pure
and lives in ``_failures``; this module does the awaiting: invoking, backing off, delivering
reports, and moving the lane's checkpoint as ranges of the batch settle. docs/failure-handling.md
describes the behaviour for users. The I/O-side choices:

* **Order and checkpoints.** A batch is worked front first, one range at a time. Whenever the
  settled prefix grows (success, a partial response's cut, a discard), ``lane.advance`` marks it
  and the shard commits, so the low-water checkpoint passes good records while a poison record
  further on is still being retried. The shard never passes a record that is not settled.
* **Back-off.** Retries of a range back off exponentially (``RetrySettings``), reset whenever
  the batch makes progress; a bisect split retries the first half at once. Every sleep ends
  early when the shard stops: the unsettled rest stays in flight and is read again later (so
  retry counts start afresh after a restart).
* **Could not invoke.** ``Function.invoke`` raising means the invocation was never made
  (throttling, an unreachable endpoint): retried with back-off, not counted against
  MaximumRetryAttempts, not an invocation; records still age out meanwhile.
* **Hangs.** An invoke that does not return within the function's timeout plus 5 s is abandoned
  and counted as a timed-out function error, so a broken function backend cannot stall a shard
  silently. Every failure is logged and shown in LastProcessingResult.
* **Nothing lost.** A discarded range goes to the on-failure destination; without one it is
  counted in DroppedEventCount and logged (logger ``kinesis_esm.dropped``) with its sequence
  range. When the destination cannot take a report, ``on_failure_delivery = "retry"`` (the
  default) counts a DestinationDeliveryFailure, backs off and tries again, and the shard waits;
  ``"drop"`` is Lambda's behaviour: count DestinationDeliveryFailures and DroppedEventCount, log,
  and go on.
* **Metrics** (Lambda's meanings): Invocations and InvokedEventCount per invocation made;
  Errors per function error; FailedInvokeEventCount for the records of a failed invocation
  (for a partial response, those from the lowest failed one on); DroppedEventCount;
  OnFailureDestinationDeliveredEventCount; DestinationDeliveryFailures per failed attempt.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from .._backoff import Backoff
from .._redact import redact
from .._statistics import MappingCounters
from ..destinations import Destination, FailureReport, open_destination
from ..events._lambda import build_event
from ..events._record import Record
from ..functions import Function, InvokeResult
from ..policy._failures import (
    BatchPlan,
    Discard,
    Step,
    expired_prefix,
    failure_report,
    parse_batch_response,
)
from ._failure_text import handler_traceback, retry_policy, span
from ._lanes import Batch, Lane
from ._ports import MappingIdentity, ShardHandle, StatusSink
from ._settings import RetrySettings

__all__ = ["INVOKE_GRACE", "BatchProcessor", "BatchRun", "invoke_bounded", "wall_clock"]

log = logging.getLogger("kinesis_esm.processing")
dropped_log = logging.getLogger("kinesis_esm.dropped")

# The wall clock record ages are measured with (a seam for tests: monkeypatch it).
wall_clock: Callable[[], float] = time.time
INVOKE_GRACE = 5.0  # beyond the function's own timeout, before an invoke is abandoned
REPORT_BATCH_ITEM_FAILURES = "ReportBatchItemFailures"

FUNCTION_CALL_FAILED = "PROBLEM: Function call failed"
# An environment's init failed (Lambda's error types): named in LastProcessingResult, since no
# retry can succeed until the function is fixed. Other function errors keep Lambda's text.
INIT_ERRORS = frozenset(
    {
        "Runtime.ImportModuleError",
        "Runtime.UserCodeSyntaxError",
        "Runtime.HandlerNotFound",
        "Runtime.MalformedHandlerName",
    }
)
BATCH_ITEM_FAILURES = "PROBLEM: Function reported batch item failures"
INVALID_RESPONSE = "PROBLEM: Function returned an invalid batch item failures response"
INVALID_WINDOW_RESPONSE = "PROBLEM: Function returned an invalid tumbling window response"
NOT_INVOKED = "PROBLEM: Function could not be invoked"
DELIVERY_FAILED = "PROBLEM: On-failure destination delivery failed"


class BatchProcessor:
    """One mapping's policy for its batches; ``process`` runs one lane batch to completion."""

    def __init__(
        self,
        identity: MappingIdentity,
        function: Function,
        *,
        counters: MappingCounters,
        status: StatusSink,
        retry_settings: RetrySettings,
    ) -> None:
        self.identity = identity
        self.function = function
        self.counters = counters
        self.status = status
        self.retry_settings = retry_settings
        cfg = identity.config
        self.config = cfg
        self.report_item_failures = REPORT_BATCH_ITEM_FAILURES in cfg.function_response_types
        # kinesis-esm's own setting; Lambda's behaviour is "drop" (validated by the config)
        self.delivery_mode = cfg.on_failure_delivery
        target = cfg.destination_config.on_failure.destination
        self.destination: Destination | None = (
            open_destination(target, region=identity.region) if target else None
        )

    async def aclose(self) -> None:
        if self.destination is not None:
            await self.destination.aclose()

    def payload(self, shard: ShardHandle, records: Sequence[Record]) -> Any:
        # built afresh for every attempt: a handler that mutates its event cannot taint a retry
        if self.function.input == "records":
            return list(records)
        return build_event(shard.event_source, records)

    async def process(self, shard: ShardHandle, lane: Lane, batch: Batch) -> None:
        await BatchRun(self, shard, lane, batch).run()


async def invoke_bounded(function: Function, payload: Any) -> InvokeResult:
    """One invocation, abandoned (as a timed-out function error) past the function's timeout
    plus ``INVOKE_GRACE``, unless the function enforces its timeout itself."""
    if getattr(function, "enforces_timeout", False):
        return await function.invoke(payload)
    result: InvokeResult | None = None
    with anyio.move_on_after(function.timeout + INVOKE_GRACE):
        result = await function.invoke(payload)
    if result is None:
        message = f"no answer within {function.timeout + INVOKE_GRACE:.1f}s; abandoned"
        return InvokeResult(str(uuid.uuid4()), error_type="Unhandled", error_message=message)
    return result


class BatchRun:
    """The processing of one lane batch: the plan, its back-off, and the settled prefix.
    ``_windowed`` subclasses it (the window event; ``windowed`` turns on the two hooks)."""

    windowed = False

    def __init__(
        self, processor: BatchProcessor, shard: ShardHandle, lane: Lane, batch: Batch
    ) -> None:
        self.processor = processor
        self.shard = shard
        self.lane = lane
        self.batch = batch
        cfg = processor.config
        self.maximum_age = cfg.maximum_record_age_in_seconds
        self.plan = BatchPlan(
            len(batch),
            maximum_retry_attempts=cfg.maximum_retry_attempts,
            bisect=cfg.bisect_batch_on_function_error,
        )
        settings = processor.retry_settings
        self.backoff = Backoff(settings.initial, settings.maximum)
        self.settled = 0
        self.failures = 0  # function failures in a row: the first one's log has the traceback
        self.retry_note: tuple[str, str] | None = None  # the failure a retry line tells of

    async def run(self) -> None:
        plan, records = self.plan, self.batch.records
        while (current := plan.current) is not None:
            pending = records[current.start : current.end]
            expired = expired_prefix(pending, wall_clock(), self.maximum_age)
            outcome = plan.expire(expired) if expired else await self.attempt(pending)
            if outcome is None:  # the invocation could not be made
                if await self.shard.sleep_unless_stopped(self.backoff.next_delay()):
                    return
                continue
            if isinstance(outcome, Discard) and not await self.discard(outcome):
                return  # stopped while the destination was unreachable
            await self.settle()
            if outcome == "retry":
                delay = self.backoff.next_delay()
                self._say_retry(delay)
                if await self.shard.sleep_unless_stopped(delay):
                    return

    async def settle(self) -> None:
        """Mark the settled prefix finished in the lane, and let the checkpoint follow it."""
        done = self.plan.done
        if done == self.settled:
            return
        self.settled = done
        self.backoff.reset()
        if done >= len(self.batch):
            self.lane.finish(self.batch)  # the shard commits when process() returns
        else:
            self.lane.advance(self.batch, done)
            await self.shard.commit()

    def window_problem(self, payload: Any) -> str | None:
        """Why a successful invocation's response fails as a window response (None: it does
        not); only called when ``windowed``."""
        return None

    def folded(self, count: int) -> None:
        """The first ``count`` records of the last invocation succeeded (``windowed`` only)."""

    async def _invoke(self, records: Sequence[Record]) -> InvokeResult:
        function = self.processor.function
        payload = self.processor.payload(self.shard, records)
        if getattr(function, "enforces_timeout", False):
            return await function.invoke(payload)  # no second timer per batch on the hot path
        return await invoke_bounded(function, payload)

    async def attempt(self, records: Sequence[Record]) -> Step | Discard | None:
        """Invoke the function once with ``records``; what the plan says next (None: the
        invocation could not be made)."""
        processor, shard, counters = self.processor, self.shard, self.processor.counters
        n = len(records)
        age = wall_clock() - records[-1].approximate_arrival_timestamp
        shard.iterator_age_ms = max(0, int(age * 1000))
        try:
            result = await self._invoke(records)
        except Exception as exc:
            processor.status.processing_result(NOT_INVOKED)
            log.warning(
                "%s %s: could not invoke %s with %d records %s (%s: %s); not counted as a retry",
                processor.identity.uuid,
                shard.shard_id,
                processor.function.name,
                n,
                span(records),
                type(exc).__name__,
                redact(str(exc)),  # an endpoint's error text may quote the request
            )
            return None
        self.plan.invoked(result.request_id)
        counters.invocations += 1
        counters.invoked_events += n
        if not result.ok:
            counters.errors += 1
            counters.failed_invoke_events += n
            function_error = "Handled" if result.error_type == "Handled" else "Unhandled"
            outcome = self.plan.failed(function_error=function_error)
            detail = f"{result.error_type}: {result.error_message}"
            problem = FUNCTION_CALL_FAILED
            if result.error_type in INIT_ERRORS:  # the function cannot start: say why
                problem = f"{problem} ({result.error_type})"
            self._problem(problem, records, detail, outcome, handler_traceback(result))
            return outcome
        if self.windowed and (reason := self.window_problem(result.payload)) is not None:
            counters.failed_invoke_events += n
            outcome = self.plan.failed()
            self._problem(INVALID_WINDOW_RESPONSE, records, reason, outcome)
            return outcome
        if self.processor.report_item_failures:
            verdict = parse_batch_response(result.payload, records)
            if verdict.kind == "invalid":
                counters.failed_invoke_events += n
                outcome = self.plan.failed()
                self._problem(INVALID_RESPONSE, records, verdict.reason, outcome)
                return outcome
            if verdict.kind == "partial":
                done = verdict.failed_from
                counters.succeeded_events += done
                counters.failed_invoke_events += n - done
                failed = records[done].sequence_number
                if self.windowed and done:
                    self.folded(done)
                outcome = self.plan.failed(completed=done, whole=False)
                self._problem(
                    BATCH_ITEM_FAILURES, records, f"lowest failed record {failed}", outcome
                )
                return outcome
        counters.succeeded_events += n
        processor.status.processing_result("OK")
        if self.windowed:
            self.folded(n)
        self.plan.succeeded()
        self.failures = 0
        return "continue"

    def _problem(
        self,
        result: str,
        records: Sequence[Record],
        detail: str,
        outcome: Step | Discard,
        trace: str = "",
    ) -> None:
        """Say that an invocation failed and what comes next; the first failure in a row with
        the handler's traceback, a retry in the line that gives its back-off (``_say_retry``)."""
        self.processor.status.processing_result(result)
        self.failures += 1
        what = f"{result.removeprefix('PROBLEM: ')} on {len(records)} records {span(records)}"
        line = f"{self.processor.identity.uuid} {self.shard.shard_id}: {what} ({redact(detail)})"
        trace = redact(trace) if self.failures == 1 else ""
        if outcome == "retry":
            self.retry_note = (line, trace)
        elif outcome == "continue":  # bisect: the first half at once
            left = self.plan.current
            count = len(left) if left is not None else 0
            half = f"{count} record{'' if count == 1 else 's'}"
            log.warning("%s; bisecting: the first %s at once%s", line, half, trace)
        else:
            limit = self.processor.config.maximum_retry_attempts
            log.warning("%s; giving up (MaximumRetryAttempts %d)%s", line, limit, trace)

    def _say_retry(self, delay: float) -> None:
        if (note := self.retry_note) is None:
            return
        self.retry_note = None
        line, trace = note
        current = self.plan.current
        attempt = current.invocations if current is not None else self.failures
        log.warning(
            "%s; attempt %d failed, retry in %.2fs, %s%s",
            line,
            attempt,
            delay,
            retry_policy(self.processor.config, self.plan.current),
            trace,
        )

    async def discard(self, discard: Discard) -> bool:
        """Report (or drop) discarded records; False if the shard stopped before that."""
        processor, shard, counters = self.processor, self.shard, self.processor.counters
        uuid_, identity = processor.identity.uuid, processor.identity
        records = self.batch.records[discard.start : discard.end]
        n, shard_id, now = len(records), shard.shard_id, wall_clock()
        what = f"{n} records {span(records)} of {shard_id} ({discard.condition})"
        destination = self.processor.destination
        if destination is None:
            counters.dropped_events += n
            dropped_log.error("%s: dropped %s: no on-failure destination", uuid_, what)
            return True
        record = failure_report(
            discard,
            records,
            request_id=discard.request_id or str(uuid.uuid4()),
            function_arn=processor.function.arn,
            shard_id=shard_id,
            stream_arn=identity.stream_arn,
            now=now,
        )
        event = build_event(shard.event_source, records)
        report = FailureReport(record, event, uuid_, shard_id, now, n)
        settings = processor.retry_settings
        backoff = Backoff(settings.initial, settings.maximum)
        while True:
            try:
                await destination.deliver(report)
            except Exception as exc:
                counters.destination_delivery_failures += 1
                if self.processor.delivery_mode == "drop":
                    counters.dropped_events += n
                    dropped_log.error(
                        "%s: dropped %s: %s could not take the report: %s",
                        uuid_,
                        what,
                        destination.target,
                        exc,
                    )
                    return True
                processor.status.processing_result(DELIVERY_FAILED)
                delay = backoff.next_delay()
                log.warning(
                    "%s: cannot report %s to %s (%s); shard waits, retry in %.2fs",
                    uuid_,
                    what,
                    destination.target,
                    exc,
                    delay,
                )
                if await shard.sleep_unless_stopped(delay):
                    return False
                continue
            counters.on_failure_delivered_events += n
            log.warning("%s: discarded %s; reported to %s", uuid_, what, destination.target)
            return True
