"""Helpers for testing Lambda Kinesis handlers in your own test suite.

Build what Lambda would pass a handler::

    records = make_records([("order-1", {"id": 1}), ("order-2", b"raw bytes")])
    event = make_event(records)          # Lambda's event, one shard
    context = make_context("orders")     # what handlers read from ``context``
    assert handler(event, context) == {"batchItemFailures": []}

Or run a handler through the whole policy layer (batching, retries, bisect, partial batch
responses, record age, on-failure reports, checkpoints) over an in-memory stream, and look at
what happened::

    result = await run_handler(
        handler, records, batch_size=4, bisect_batch_on_function_error=True,
        maximum_retry_attempts=1,
    )
    assert result.reported == (records[2].sequence_number,)  # reached the destination

``run_handler`` returns once every record is settled (succeeded, or discarded and reported),
and raises :class:`NotSettled` after ``wait`` seconds otherwise; a handler that keeps failing
with Lambda's default ``maximum_retry_attempts = -1`` retries forever, as on Lambda.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import anyio
import orjson

from . import (
    CallableFunction,
    DestinationConfig,
    Engine,
    EventSourceMappingConfig,
    InvokeResult,
    LambdaContext,
    MappingCounters,
    MappingStatistics,
    MemoryCheckpointStore,
    MemoryStream,
    OnFailure,
    PollSettings,
    Record,
    RetrySettings,
    build_event,
)
from .events import EventSource
from .functions import Function

__all__ = [
    "STREAM_ARN",
    "Failure",
    "Invocation",
    "NotSettled",
    "RunResult",
    "make_context",
    "make_event",
    "make_records",
    "run_handler",
    "sequence_numbers",
]

STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/test-stream"
SHARD_ID = "shardId-000000000000"
FIRST_SEQUENCE = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_800
FUNCTION_NAME = "test-function"

Data = bytes | str | dict[str, Any] | list[Any] | int | float | bool | None
Item = Record | tuple[str, Data] | Data

_FAST_POLL = PollSettings(base_interval=0.01, min_interval=0.0, error_backoff_initial=0.01)
_FAST_RETRY = RetrySettings(initial=0.001, maximum=0.01)


def _data_bytes(data: Data) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    return orjson.dumps(data)


def make_records(
    items: Iterable[Item],
    *,
    first_sequence: int = FIRST_SEQUENCE,
    arrival: float | None = None,
) -> list[Record]:
    """Records of one shard, in order. Each item is a ``Record`` (kept as is), a
    ``(partition_key, data)`` pair, or data alone (partition key ``key-<i>``). Data is bytes,
    text (UTF-8) or anything JSON (serialized). Sequence numbers count up from
    ``first_sequence``; every record arrived at ``arrival`` (default: now)."""
    now = time.time() if arrival is None else arrival
    records: list[Record] = []
    for index, item in enumerate(items):
        if isinstance(item, Record):
            records.append(item)
            continue
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[0], str):
                raise ValueError(f"item {index}: a tuple must be (partition_key, data)")
            key, data = item
        else:
            key, data = f"key-{index}", item
        if not 1 <= len(key) <= 256:
            raise ValueError(f"item {index}: a partition key has 1 to 256 characters")
        records.append(Record.from_bytes(str(first_sequence + index), key, _data_bytes(data), now))
    return records


def _as_records(records: Iterable[Item]) -> list[Record]:
    items = list(records)
    if all(isinstance(item, Record) for item in items):
        return [item for item in items if isinstance(item, Record)]
    return make_records(items)


def make_event(
    records: Iterable[Item],
    *,
    stream_arn: str = STREAM_ARN,
    shard_id: str = SHARD_ID,
    invoke_identity_arn: str | None = None,
) -> dict[str, Any]:
    """Lambda's Kinesis event for ``records`` (items as for :func:`make_records`)."""
    parts = stream_arn.split(":")
    if len(parts) < 6 or parts[2] != "kinesis":
        raise ValueError(f"{stream_arn!r} is not a Kinesis stream ARN")
    region, account = parts[3], parts[4]
    role = invoke_identity_arn or f"arn:aws:iam::{account}:role/kinesis-esm"
    source = EventSource(stream_arn, shard_id, region, role)
    return build_event(source, _as_records(records))


def make_context(
    function_name: str = FUNCTION_NAME,
    *,
    timeout: float = 3.0,
    memory_size: int = 128,
    request_id: str | None = None,
    arn: str | None = None,
) -> LambdaContext:
    """The context object a handler receives; its remaining time counts down from ``timeout``."""
    arn = arn or f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
    return LambdaContext(function_name, arn, memory_size, timeout, request_id)


@dataclass(frozen=True, slots=True)
class Invocation:
    """One invocation the mapping made: which records, and what came back."""

    sequence_numbers: tuple[str, ...]
    result: InvokeResult

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def response(self) -> Any:
        """The function's return value (None after a function error)."""
        return self.result.payload if self.result.ok else None

    @property
    def error(self) -> str | None:
        """``"<error type>: <message>"`` after a function error, else None."""
        if self.result.ok:
            return None
        return f"{self.result.error_type}: {self.result.error_message}"


@dataclass(frozen=True, slots=True)
class Failure:
    """One report that reached the on-failure destination (Lambda's record, S3 form)."""

    condition: str  # "RetryAttemptsExhausted" | "RecordAgeExceeded"
    sequence_numbers: tuple[str, ...]
    approximate_invoke_count: int
    function_error: str | None  # "Unhandled" for errors, None for response-driven failures
    report: dict[str, Any]  # the whole record, its "payload" (the event) decoded


@dataclass(frozen=True, slots=True)
class RunResult:
    records: tuple[Record, ...]
    invocations: tuple[Invocation, ...]
    not_invoked: tuple[tuple[str, ...], ...]  # invoke() raised: "could not invoke", retried
    checkpoints: tuple[str, ...]  # every checkpoint written, in order
    failures: tuple[Failure, ...]
    statistics: MappingStatistics
    settled: bool

    @property
    def counters(self) -> MappingCounters:
        return self.statistics.counters

    @property
    def batches(self) -> list[tuple[str, ...]]:
        """The sequence numbers of each invocation, in order."""
        return [i.sequence_numbers for i in self.invocations]

    @property
    def retried(self) -> tuple[str, ...]:
        """Sequence numbers invoked more than once, in stream order."""
        seen: dict[str, int] = {}
        for invocation in self.invocations:
            for seq in invocation.sequence_numbers:
                seen[seq] = seen.get(seq, 0) + 1
        return tuple(r.sequence_number for r in self.records if seen.get(r.sequence_number, 0) > 1)

    @property
    def reported(self) -> tuple[str, ...]:
        """Sequence numbers that reached the on-failure destination, in report order."""
        return tuple(seq for failure in self.failures for seq in failure.sequence_numbers)

    def invocations_of(self, sequence_number: str) -> list[Invocation]:
        return [i for i in self.invocations if sequence_number in i.sequence_numbers]


class NotSettled(TimeoutError):
    """Some records were neither done nor discarded within the wait; ``result`` has the rest."""

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result


class _RecordingFunction:
    """Wraps a Function: notes the records and result of each invocation."""

    def __init__(self, inner: Function) -> None:
        self.inner = inner
        self.name = inner.name
        self.arn = inner.arn
        self.timeout = inner.timeout
        self.input = inner.input
        self.enforces_timeout = bool(getattr(inner, "enforces_timeout", False))
        self.invocations: list[Invocation] = []
        self.not_invoked: list[tuple[str, ...]] = []

    async def invoke(self, payload: Any) -> InvokeResult:
        if isinstance(payload, dict):
            seqs = tuple(r["kinesis"]["sequenceNumber"] for r in payload["Records"])
        else:
            seqs = tuple(r.sequence_number for r in payload)
        try:
            result = await self.inner.invoke(payload)
        except Exception:
            self.not_invoked.append(seqs)
            raise
        self.invocations.append(Invocation(seqs, result))
        return result


class _HistoryStore(MemoryCheckpointStore):
    """Keeps every checkpoint written, and says when the last record's is."""

    def __init__(self, last: str) -> None:
        super().__init__()
        self.history: list[str] = []
        self.last = last
        self.reached_last = anyio.Event()

    async def set_checkpoint(self, mapping_uuid: str, shard_id: str, checkpoint: str) -> None:
        self.history.append(checkpoint)
        await super().set_checkpoint(mapping_uuid, shard_id, checkpoint)
        if checkpoint == self.last:
            self.reached_last.set()


def _read_failures(path: Path) -> list[Failure]:
    if not path.exists():
        return []
    failures = []
    for line in path.read_bytes().splitlines():
        report = orjson.loads(line)
        report["payload"] = event = orjson.loads(report["payload"])
        response = report.get("responseContext") or {}
        failures.append(
            Failure(
                condition=report["requestContext"]["condition"],
                sequence_numbers=tuple(r["kinesis"]["sequenceNumber"] for r in event["Records"]),
                approximate_invoke_count=report["requestContext"]["approximateInvokeCount"],
                function_error=response.get("functionError"),
                report=report,
            )
        )
    return failures


async def run_handler(
    handler: Callable[..., Any] | Function,
    records: Iterable[Item],
    *,
    function_name: str = FUNCTION_NAME,
    function_timeout: float = 3.0,
    input: Literal["event", "records"] = "event",
    stream_arn: str = STREAM_ARN,
    capture_failures: bool = True,
    wait: float = 10.0,
    **settings: Any,
) -> RunResult:
    """Run ``handler`` as a mapping's function over ``records`` on an in-memory shard.

    ``handler`` is ``handler(event, context)`` (sync or async; ``input="records"`` passes a list
    of :class:`Record` instead of the event) or any ``Function`` (an HttpFunction, say; it is
    not closed here). ``settings`` are EventSourceMappingConfig's parameters (``batch_size``,
    ``bisect_batch_on_function_error``, ``function_response_types``, ...). With
    ``capture_failures`` the mapping's on-failure destination is a file in a temporary folder,
    read back into ``RunResult.failures``; without it, discarded records are only counted
    (``result.counters.dropped_events``). Retries back off for milliseconds, not seconds.
    """
    batch = _as_records(records)
    if not batch:
        raise ValueError("records: give at least one record")
    for before, after in itertools.pairwise(batch):
        if after.sequence_int <= before.sequence_int:
            raise ValueError(
                f"records: sequence numbers must increase ({before.sequence_number} then "
                f"{after.sequence_number})"
            )
    if callable(getattr(handler, "invoke", None)):
        function = cast("Function", handler)
    else:
        function = CallableFunction(
            cast("Callable[..., Any]", handler),
            name=function_name,
            timeout=function_timeout,
            input=input,
            arn=f"arn:aws:lambda:{stream_arn.split(':')[3]}:123456789012:function:{function_name}",
        )
    recorder = _RecordingFunction(function)
    stream = MemoryStream(stream_arn, shard_count=1)
    shard_id = stream.shard_ids[0]
    stream.put_records(shard_id, batch)
    last = batch[-1].sequence_number
    store = _HistoryStore(last)
    with tempfile.TemporaryDirectory(prefix="kinesis-esm-test-") as folder:
        failures_path = Path(folder) / "failures.jsonl"
        if capture_failures:
            settings.setdefault(
                "destination_config", DestinationConfig(OnFailure(f"file://{failures_path}"))
            )
        config = EventSourceMappingConfig(
            function_name=function.name,
            event_source_arn=stream_arn,
            starting_position=settings.pop("starting_position", "TRIM_HORIZON"),
            **settings,
        )
        async with Engine(
            source=stream,
            checkpoint_store=store,
            poll_settings=_FAST_POLL,
            retry_settings=_FAST_RETRY,
            shard_sync_interval=3600.0,
        ) as engine:
            uuid = await engine.add_mapping(config, recorder)
            with anyio.move_on_after(wait):
                await store.reached_last.wait()
            settled = store.reached_last.is_set()
            statistics = await engine.remove_mapping(uuid)
        result = RunResult(
            records=tuple(batch),
            invocations=tuple(recorder.invocations),
            not_invoked=tuple(recorder.not_invoked),
            checkpoints=tuple(store.history),
            failures=tuple(_read_failures(failures_path)),
            statistics=statistics,
            settled=settled,
        )
    if not settled:
        checkpoint = store.checkpoints.get(uuid, {}).get(shard_id)
        raise NotSettled(
            f"not settled within {wait}s: checkpoint {checkpoint}, last record {last}, "
            f"{len(result.invocations)} invocations ({result.counters.errors} failed); a "
            "handler that keeps failing retries forever unless maximum_retry_attempts or "
            "maximum_record_age_in_seconds is set",
            result,
        )
    return result


def sequence_numbers(records: Sequence[Record]) -> tuple[str, ...]:
    """The sequence numbers of ``records``, for comparing with RunResult's fields."""
    return tuple(r.sequence_number for r in records)
