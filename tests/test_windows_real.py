"""Tumbling windows through a real Kinesis API (moto), driven through the Engine.

moto stamps ``ApproximateArrivalTimestamp`` when a record is put, so the tests put records at
chosen moments of short (2-3 s) epoch-aligned windows: they wait for the wall clock to reach
the start of a window (a condition, bounded), never for a fixed time. The idle close is
shortened with ``PollSettings.window_idle_close``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from kinesis_esm import (
    Engine,
    EventSourceMappingConfig,
    KinesisSource,
    MemoryCheckpointStore,
    PollSettings,
    RetrySettings,
)
from kinesis_esm.policy._windows import MAX_STATE_BYTES, window_of
from tests.support.kinesis import (
    KinesisClient,
    create_stream,
    put_records,
    wait_for,
)

pytestmark = pytest.mark.anyio

IDLE_CLOSE = 0.8
FAST_POLL = PollSettings(base_interval=0.1, min_interval=0.05, window_idle_close=IDLE_CLOSE)
FAST_RETRY = RetrySettings(initial=0.02, maximum=0.1)


def epoch(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


@dataclass
class Call:
    at: float  # wall clock when invoked
    window: tuple[int, int]
    state: dict[str, Any]
    keys: list[str]
    sequences: list[str]
    arrivals: list[float]
    final: bool
    early: bool


@dataclass
class Aggregator:
    """A window function folding partition keys into ``state["keys"]``; ``answer`` may be
    replaced to misbehave (it gets the event and the call number of this batch's records)."""

    calls: list[Call] = field(default_factory=list)
    attempts: dict[tuple[str, ...], int] = field(default_factory=dict)

    async def __call__(self, event: dict[str, Any], context: Any) -> Any:
        records = event["Records"]
        call = Call(
            time.time(),
            (epoch(event["window"]["start"]), epoch(event["window"]["end"])),
            json.loads(json.dumps(event["state"])),
            [r["kinesis"]["partitionKey"] for r in records],
            [r["kinesis"]["sequenceNumber"] for r in records],
            [r["kinesis"]["approximateArrivalTimestamp"] for r in records],
            event["isFinalInvokeForWindow"],
            event["isWindowTerminatedEarly"],
        )
        self.calls.append(call)
        seen = tuple(call.sequences)
        self.attempts[seen] = self.attempts.get(seen, 0) + 1
        return self.answer(event, call, self.attempts[seen])

    def answer(self, event: dict[str, Any], call: Call, attempt: int) -> Any:
        return {"state": {"keys": [*event["state"].get("keys", []), *call.keys]}}

    def finals(self) -> list[Call]:
        return [c for c in self.calls if c.final]

    def closed_keys(self) -> list[str]:
        return [k for c in self.finals() for k in c.state.get("keys", [])]


def mapping(arn: str, window: int, batch_size: int, **changes: Any) -> EventSourceMappingConfig:
    return EventSourceMappingConfig(
        function_name="windows",
        event_source_arn=arn,
        starting_position="TRIM_HORIZON",
        batch_size=batch_size,
        tumbling_window_in_seconds=window,
        **changes,
    )


async def window_start(length: int, within: float = 0.4) -> float:
    """Wait (bounded) until the wall clock is in the first ``within`` s of a window; its end."""
    await wait_for(lambda: time.time() % length < within, length + 1, interval=0.01)
    return window_of(time.time(), length).end


async def until(moment: float) -> None:
    await wait_for(lambda: time.time() >= moment, max(0.0, moment - time.time()) + 5, 0.01)


def keys(prefix: str, n: int) -> list[tuple[str, bytes]]:
    return [(f"{prefix}{i}", b"{}") for i in range(n)]


async def test_state_carries_within_a_window_starts_fresh_in_the_next_and_each_closes(
    moto: str, client: KinesisClient, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    function = Aggregator()
    store = MemoryCheckpointStore()
    async with (
        KinesisSource(endpoint_url=moto, region="us-east-1") as source,
        Engine(
            source=source, checkpoint_store=store, poll_settings=FAST_POLL,
            retry_settings=FAST_RETRY,
        ) as engine,
    ):  # fmt: skip
        uuid = await engine.add_mapping(mapping(arn, 2, 2), function)
        first_end = await window_start(2)
        first = await put_records(client, stream_name, keys("a", 5))
        await until(first_end + 0.05)  # the next window
        second = await put_records(client, stream_name, keys("b", 3))
        everything = [r.partition_key for r in first + second]
        await wait_for(
            lambda: function.closed_keys() == everything, 15, message="both windows closed"
        )
    counters = engine.mapping_statistics(uuid).counters  # after the clean stop: all written
    stored = store.window_states[uuid][first[0].shard_id]
    batches = [c for c in function.calls if not c.final]
    assert [k for c in batches for k in c.keys] == everything  # each record once, in order
    for call in batches:  # each record in the window of its arrival, aligned to 2 s
        assert all(window_of(ts, 2) == window_of(call.window[0], 2) for ts in call.arrivals)
        assert call.window[0] % 2 == 0 and call.window[1] - call.window[0] == 2
    first_window, second_window = (c.window for c in function.finals())
    assert first_window[1] <= second_window[0]
    in_first = [c for c in batches if c.window == first_window]
    assert len(in_first) >= 2  # five records in batches of two: the state carried across them
    carried: list[str] = []
    for call in in_first:
        assert call.state == ({"keys": carried} if carried else {})
        carried = [*carried, *call.keys]
    next_window = [c for c in batches if c.window == second_window]
    assert next_window[0].state == {}  # a new window starts from {}
    final_one, final_two = function.finals()
    assert (final_one.keys, final_one.state) == ([], {"keys": [r.partition_key for r in first]})
    assert final_two.state == {"keys": [r.partition_key for r in second]}
    assert not final_one.early and not final_two.early
    # the first final came before anything of the next window
    assert function.calls.index(final_one) < function.calls.index(next_window[0])
    assert counters.invocations == len(function.calls) and counters.errors == 0
    assert counters.polled_events == 8 and counters.invoked_events == 8
    assert b'"aggregated":false' in stored  # the last window's close is stored


async def test_an_idle_window_closes_after_the_idle_wait(
    moto: str, client: KinesisClient, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    function = Aggregator()
    async with (
        KinesisSource(endpoint_url=moto, region="us-east-1") as source,
        Engine(source=source, poll_settings=FAST_POLL, retry_settings=FAST_RETRY) as engine,
    ):
        await engine.add_mapping(mapping(arn, 2, 10), function)
        await window_start(2)
        written = await put_records(client, stream_name, keys("x", 2))
        await wait_for(function.finals, 10, message="the idle close")
    batch, final = function.calls
    assert batch.keys == ["x0", "x1"] and batch.state == {}
    assert final.final and final.keys == [] and final.state == {"keys": ["x0", "x1"]}
    assert final.window == batch.window
    # nothing arrived after the window: the final waited for its end plus the idle wait
    assert final.at >= batch.window[1] + IDLE_CLOSE
    assert final.at < batch.window[1] + IDLE_CLOSE + 5
    assert [r.partition_key for r in written] == final.state["keys"]


class NoStateFirst(Aggregator):
    """Answers without ``state`` on a batch's first attempt (a function error), then well; and
    never with a state for the record of key ``poison``."""

    def answer(self, event: dict[str, Any], call: Call, attempt: int) -> Any:
        if not call.final and (attempt == 1 or "poison" in call.keys):
            return {"batchItemFailures": []}
        return super().answer(event, call, attempt)


async def test_a_response_without_state_is_a_function_error_retried_with_the_same_state(
    moto: str, client: KinesisClient, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    function = NoStateFirst()
    records = [("k0", b"{}"), ("k1", b"{}"), ("poison", b"{}"), ("k3", b"{}")]
    async with (
        KinesisSource(endpoint_url=moto, region="us-east-1") as source,
        Engine(source=source, poll_settings=FAST_POLL, retry_settings=FAST_RETRY) as engine,
    ):
        uuid = await engine.add_mapping(mapping(arn, 2, 1, maximum_retry_attempts=2), function)
        await put_records(client, stream_name, records)
        await wait_for(function.finals, 15, message="the window's final")
    shapes = [(c.keys, c.state.get("keys")) for c in function.calls]
    assert shapes == [
        (["k0"], None),  # no state: retried with the same state
        (["k0"], None),
        (["k1"], ["k0"]),
        (["k1"], ["k0"]),
        (["poison"], ["k0", "k1"]),  # never a state: the failure policy gives up on it
        (["poison"], ["k0", "k1"]),
        (["poison"], ["k0", "k1"]),
        (["k3"], ["k0", "k1"]),
        (["k3"], ["k0", "k1"]),
        ([], ["k0", "k1", "k3"]),
    ]
    statistics = engine.mapping_statistics(uuid)
    counters = statistics.counters
    assert counters.errors == 0  # the function did not raise: Lambda's Errors stays 0
    assert counters.failed_invoke_events == 6  # k0, k1, poison three times, k3
    assert counters.dropped_events == 1 and counters.invocations == 10


class BigState(Aggregator):
    """The first batch answers a state over 1 MiB."""

    def answer(self, event: dict[str, Any], call: Call, attempt: int) -> Any:
        state = super().answer(event, call, attempt)
        if call.keys == ["b0", "b1"]:
            state["state"]["pad"] = "x" * MAX_STATE_BYTES
        return state


async def test_state_over_1_mib_ends_the_window_early_and_the_window_goes_on_fresh(
    moto: str, client: KinesisClient, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    function = BigState()
    async with (
        KinesisSource(endpoint_url=moto, region="us-east-1") as source,
        Engine(source=source, poll_settings=FAST_POLL, retry_settings=FAST_RETRY) as engine,
    ):
        await engine.add_mapping(mapping(arn, 3, 2), function)
        await window_start(3, within=1.0)
        await put_records(client, stream_name, keys("b", 4))
        await wait_for(lambda: len(function.finals()) == 2, 15, message="the early and last final")
    first, early, second, last = function.calls
    assert first.keys == ["b0", "b1"] and not first.final
    assert early.final and early.early and early.keys == []
    assert early.state["keys"] == ["b0", "b1"] and len(early.state["pad"]) == MAX_STATE_BYTES
    assert early.window == first.window
    assert second.keys == ["b2", "b3"] and second.state == {} and second.window == first.window
    assert last.final and not last.early and last.state == {"keys": ["b2", "b3"]}


class PartialOnce(Aggregator):
    """Reports the first record of key ``p`` failed the first time it sees it, keeping the
    state of the records before it."""

    failed_once = False

    def answer(self, event: dict[str, Any], call: Call, attempt: int) -> Any:
        if "p" in call.keys and not self.failed_once:
            self.failed_once = True
            cut = call.keys.index("p")
            state = {"keys": [*event["state"].get("keys", []), *call.keys[:cut]]}
            failure = {"itemIdentifier": call.sequences[cut]}
            return {"state": state, "batchItemFailures": [failure]}
        return super().answer(event, call, attempt)


async def test_partial_batch_responses_keep_the_state_of_the_records_done(
    moto: str, client: KinesisClient, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    function = PartialOnce()
    records = [("a", b"{}"), ("b", b"{}"), ("p", b"{}"), ("c", b"{}")]
    async with (
        KinesisSource(endpoint_url=moto, region="us-east-1") as source,
        Engine(source=source, poll_settings=FAST_POLL, retry_settings=FAST_RETRY) as engine,
    ):
        config = mapping(arn, 2, 10, function_response_types=("ReportBatchItemFailures",))
        uuid = await engine.add_mapping(config, function)
        await put_records(client, stream_name, records)
        await wait_for(function.finals, 15, message="the window's final")
    first, retry, final = function.calls
    assert first.keys == ["a", "b", "p", "c"] and first.state == {}
    assert retry.keys == ["p", "c"] and retry.state == {"keys": ["a", "b"]}
    assert final.final and final.state == {"keys": ["a", "b", "p", "c"]}  # each once
    counters = engine.mapping_statistics(uuid).counters
    assert counters.failed_invoke_events == 2  # p and c of the partial response
    assert counters.succeeded_events == 4


class MutateAndRaise(Aggregator):
    """Folds the records into ``event["state"]`` in place, then raises, on each batch's first
    attempt: a retry that saw the mutated state would count the records twice."""

    def answer(self, event: dict[str, Any], call: Call, attempt: int) -> Any:
        if attempt == 1 and not call.final:
            event["state"]["keys"] = [*event["state"].get("keys", []), *call.keys]
            raise RuntimeError("failed after folding")
        return super().answer(event, call, attempt)


async def test_retries_and_bisect_never_apply_state_twice(
    moto: str, client: KinesisClient, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    function = MutateAndRaise()
    async with (
        KinesisSource(endpoint_url=moto, region="us-east-1") as source,
        Engine(source=source, poll_settings=FAST_POLL, retry_settings=FAST_RETRY) as engine,
    ):
        config = mapping(arn, 2, 4, bisect_batch_on_function_error=True)
        uuid = await engine.add_mapping(config, function)
        await put_records(client, stream_name, keys("m", 4))
        await wait_for(function.finals, 15, message="the window's final")
    counters = engine.mapping_statistics(uuid).counters
    shapes = [(c.keys, c.state) for c in function.calls]
    assert shapes == [
        (["m0", "m1", "m2", "m3"], {}),  # raised: bisect
        (["m0", "m1"], {}),  # raised: a half of two, bisect again
        (["m0"], {}),  # raised, retried
        (["m0"], {}),
        (["m1"], {"keys": ["m0"]}),  # each half with the state as it is then
        (["m1"], {"keys": ["m0"]}),
        (["m2", "m3"], {"keys": ["m0", "m1"]}),
        (["m2"], {"keys": ["m0", "m1"]}),
        (["m2"], {"keys": ["m0", "m1"]}),
        (["m3"], {"keys": ["m0", "m1", "m2"]}),
        (["m3"], {"keys": ["m0", "m1", "m2"]}),
        ([], {"keys": ["m0", "m1", "m2", "m3"]}),  # each record folded once
    ]
    assert counters.errors == 7
