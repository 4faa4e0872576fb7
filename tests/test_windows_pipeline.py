"""Tumbling windows through the whole pipeline (Engine, ShardConsumer, the real BatchProcessor)
on the in-memory stream, whose records carry arrival times chosen by the test.

The property test draws records spread over windows, a window length, the failure policy's
switches and a script of what each invocation does (succeed, raise after mutating its state,
answer without state, answer a partial batch response, answer a state over 1 MB), with a clean
restart from the checkpoint store thrown in. Whatever happens, every record reaches exactly one
window's final state, in order, and each invocation gets the state the last successful one
left (nothing lost, nothing applied twice).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinesis_esm import (
    Engine,
    EventSourceMappingConfig,
    MemoryCheckpointStore,
    MemoryStream,
    PollSettings,
    RetrySettings,
    SQLiteCheckpointStore,
    stable_uuid,
)
from kinesis_esm.config import ConfigError
from kinesis_esm.policy._windows import MAX_STATE_BYTES, WindowSnapshot, iso_seconds
from kinesis_esm.state import SHARD_END, CheckpointStore
from tests.support.kinesis import wait_for

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/windows"
FUNCTION = "windows"
UUID = stable_uuid(FUNCTION, ARN)
T0 = 1_607_497_440  # 2020-12-09T07:04:00Z: every window is long over, so closes never wait
FAST_RETRY = RetrySettings(initial=0.001, maximum=0.005)

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pipeline's wall clock, set by the test: ``clock[0] = ...``."""
    now = [T0 + 1000.0]
    monkeypatch.setattr("kinesis_esm.pipeline._processor.wall_clock", lambda: now[0])
    return now


def poll(idle_close: float = 0.0) -> PollSettings:
    return PollSettings(base_interval=0.01, min_interval=0.0, window_idle_close=idle_close)


def window_mapping(length: int, batch_size: int, **changes: Any) -> EventSourceMappingConfig:
    return EventSourceMappingConfig(
        function_name=FUNCTION,
        event_source_arn=ARN,
        starting_position="TRIM_HORIZON",
        batch_size=batch_size,
        tumbling_window_in_seconds=length,
        **changes,
    )


def start_of(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


@dataclass
class Call:
    """One invocation as the function saw it, and what it answered."""

    window: tuple[int, int]
    state_in: dict[str, Any]
    keys: list[str]
    final: bool
    early: bool
    action: str
    state_out: dict[str, Any] | None = None  # the state the pipeline should keep; None: none
    done: int = 0  # records the answer reports done


@dataclass
class WindowFunction:
    """Folds partition keys into ``state["ids"]`` and follows a script of misbehaviour."""

    script: list[tuple[str, int]]
    partial_responses: bool
    calls: list[Call] = field(default_factory=list)

    async def __call__(self, event: dict[str, Any], context: Any) -> Any:
        records = event["Records"]
        keys = [r["kinesis"]["partitionKey"] for r in records]
        window = (start_of(event["window"]["start"]), start_of(event["window"]["end"]))
        state_in = json.loads(json.dumps(event["state"]))
        index = len(self.calls)
        action, cut = self.script[index] if index < len(self.script) else ("ok", 0)
        final = event["isFinalInvokeForWindow"]
        if action == "partial" and (final or not self.partial_responses):
            action = "ok"
        if action == "big" and final:
            action = "ok"
        call = Call(window, state_in, keys, final, event["isWindowTerminatedEarly"], action)
        self.calls.append(call)
        ids = [*event["state"].get("ids", []), *keys]
        if action == "raise":
            event["state"]["ids"] = ids  # mutated, then failed: the retry must not see this
            raise RuntimeError("scripted failure")
        if action == "no_state":
            return {"batchItemFailures": []}
        if final:
            call.state_out = {}
            return {"state": {}}
        if action == "partial":
            done = cut % len(records)
            call.done = done
            kept = {"ids": [*event["state"].get("ids", []), *keys[:done]]}
            call.state_out = kept if done else None
            failed = records[done]["kinesis"]["sequenceNumber"]
            return {"state": kept, "batchItemFailures": [{"itemIdentifier": failed}]}
        state: dict[str, Any] = {"ids": ids}
        if action == "big":
            state["pad"] = "x" * MAX_STATE_BYTES  # over 1 MiB: the window ends early
        call.done = len(records)
        call.state_out = state
        return {"state": state}

    def finals(self) -> list[Call]:
        """Successful finals, in order."""
        return [c for c in self.calls if c.final and c.action == "ok"]

    def closed_ids(self) -> list[str]:
        return [i for c in self.finals() for i in c.state_in.get("ids", [])]


def put_spread(stream: MemoryStream, gaps: list[float]) -> list[tuple[str, float]]:
    """One record per gap, at T0 plus the running sum; (key, arrival) in order."""
    out, at = [], float(T0)
    for i, gap in enumerate(gaps):
        at += gap
        key = f"r{i:03d}"
        stream.put(key, b"{}", arrival=round(at, 3))
        out.append((key, round(at, 3)))
    return out


async def run_until(
    stream: MemoryStream,
    store: CheckpointStore,
    config: EventSourceMappingConfig,
    function: WindowFunction,
    done: Any,
    *,
    idle_close: float = 0.0,
    timeout: float = 15,  # noqa: ASYNC109 - the bound of the wait
) -> None:
    async with Engine(
        source=stream, checkpoint_store=store, poll_settings=poll(idle_close),
        retry_settings=FAST_RETRY,
    ) as engine:  # fmt: skip
        await engine.add_mapping(config, function)
        await wait_for(done, timeout, message="the windows to close")


def check_history(function: WindowFunction, records: list[tuple[str, float]], length: int) -> None:
    keys = [k for k, _ in records]
    arrival = dict(records)
    # every record in exactly one closed window's state, in order: nothing lost, nothing twice
    assert function.closed_ids() == keys
    expected: dict[str, Any] = {}
    for call in function.calls:
        # each invocation starts from what the last successful one left (a failed or mutated
        # attempt leaves nothing behind)
        assert call.state_in.get("ids", []) == expected.get("ids", []), call
        start, end = call.window
        assert end - start == length and start % length == 0
        if call.final:
            assert call.keys == []
            if call.action == "ok":
                expected = {}
            continue
        for key in call.keys:  # all stamped in the window (records are put ahead, in order)
            assert start <= arrival[key] < end, (key, call.window)
        if call.state_out is not None:
            expected = call.state_out
    # a window's final holds exactly its records; early finals only after a state over 1 MB
    for final in function.finals():
        start, end = final.window
        assert all(start <= arrival[k] < end for k in final.state_in.get("ids", []))
        assert final.early == ("pad" in final.state_in)


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["ok", "ok", "ok", "raise", "no_state", "partial", "partial", "big"]),
        st.integers(0, 9),
    ),
    max_size=30,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    length=st.sampled_from([1, 7, 60]),
    gaps=st.lists(st.floats(0, 150, allow_nan=False), min_size=1, max_size=25),
    batch_size=st.integers(1, 5),
    bisect=st.booleans(),
    partial_responses=st.booleans(),
    script=ACTIONS,
    restart_after=st.none() | st.integers(1, 20),
)
def test_window_assignment_and_state_carry_over_under_random_failures(
    length: int,
    gaps: list[float],
    batch_size: int,
    bisect: bool,
    partial_responses: bool,
    script: list[tuple[str, int]],
    restart_after: int | None,
) -> None:
    anyio.run(
        window_scenario, length, gaps, batch_size, bisect, partial_responses, script, restart_after
    )


async def window_scenario(
    length: int,
    gaps: list[float],
    batch_size: int,
    bisect: bool,
    partial_responses: bool,
    script: list[tuple[str, int]],
    restart_after: int | None,
) -> None:
    stream = MemoryStream(ARN)
    records = put_spread(stream, gaps)
    keys = [k for k, _ in records]
    store = MemoryCheckpointStore()
    function = WindowFunction(script, partial_responses)
    config = window_mapping(
        length,
        batch_size,
        bisect_batch_on_function_error=bisect,
        function_response_types=("ReportBatchItemFailures",) if partial_responses else (),
    )
    if restart_after is not None:  # a clean stop mid-way, then the rest from the store
        await run_until(
            stream,
            store,
            config,
            function,
            lambda: len(function.calls) >= restart_after or function.closed_ids() == keys,
        )
    await run_until(stream, store, config, function, lambda: function.closed_ids() == keys)
    check_history(function, records, length)
    stored = (await store.get_checkpoints(UUID))[stream.shard_ids[0]]
    assert stored == str(10**20 + len(records) - 1)
    snapshot = WindowSnapshot.from_json(store.window_states[UUID][stream.shard_ids[0]])
    # nothing left to close (after an early end with nothing more, the window stays open, empty)
    assert not snapshot.aggregated and not snapshot.final_due and snapshot.state_json == b"{}"


# the rules one by one, deterministically


async def test_a_batch_stops_at_the_window_boundary_and_state_carries_within_the_window() -> None:
    stream = MemoryStream(ARN)
    # window [T0, T0+60): 5 records; [T0+60, T0+120): 2 records
    records = put_spread(stream, [1, 10, 10, 10, 10, 30, 1])
    function = WindowFunction([], partial_responses=False)
    store = MemoryCheckpointStore()
    await run_until(
        stream, store, window_mapping(60, 3), function,
        lambda: function.closed_ids() == [k for k, _ in records],
    )  # fmt: skip
    shape = [(c.window[0] - T0, c.keys, c.state_in, c.final) for c in function.calls]
    assert shape == [
        (0, ["r000", "r001", "r002"], {}, False),
        (0, ["r003", "r004"], {"ids": ["r000", "r001", "r002"]}, False),  # cut at the boundary
        (0, [], {"ids": ["r000", "r001", "r002", "r003", "r004"]}, True),
        (60, ["r005", "r006"], {}, False),  # the next window starts fresh
        (60, [], {"ids": ["r005", "r006"]}, True),  # closed when the stream is idle
    ]


async def test_a_shards_end_closes_its_window_before_shard_end_and_children_start_fresh(
    clock: list[float],
) -> None:
    stream = MemoryStream(ARN)
    parent = stream.shard_ids[0]
    for i in range(3):
        stream.put(f"p{i}", b"{}", shard_id=parent, arrival=T0 + i)
    children = stream.split(parent)
    for i, child in enumerate(children):
        stream.put(f"c{i}", b"{}", shard_id=child, arrival=T0 + 10 + i)  # the same window
    function = WindowFunction([], partial_responses=False)
    store = MemoryCheckpointStore()
    checkpoints_at_parent_final: list[dict[str, str]] = []
    original = function.__call__

    async def spy(event: dict[str, Any], context: Any) -> Any:
        if event["isFinalInvokeForWindow"] and event["shardId"] == parent:
            checkpoints_at_parent_final.append(await store.get_checkpoints(UUID))
        return await original(event, context)

    async def closed() -> bool:
        cps = await store.get_checkpoints(UUID)
        return len(function.finals()) == 1 and cps.get(parent) == SHARD_END

    async with Engine(
        source=stream, checkpoint_store=store, poll_settings=poll(idle_close=3600),
        retry_settings=FAST_RETRY,
    ) as engine:  # fmt: skip
        await engine.add_mapping(window_mapping(900, 10), spy)
        await wait_for(closed, 10, message="the parent's final and SHARD_END")
        await wait_for(lambda: len(function.calls) == 4, 10, message="the children's batches")
    first, final, *rest = function.calls
    assert (first.keys, final.final, final.state_in) == (
        ["p0", "p1", "p2"],
        True,
        {"ids": ["p0", "p1", "p2"]},
    )
    assert checkpoints_at_parent_final[0][parent] != SHARD_END  # the final came first
    # the children's windows are the parent's window, but their state starts from {}
    assert sorted(c.keys[0] for c in rest) == ["c0", "c1"]
    assert all(c.state_in == {} and c.window == first.window and not c.final for c in rest)
    assert len(function.finals()) == 1  # the children's windows stay open (idle close 1 h)


async def test_a_failing_final_halts_the_shard_until_it_succeeds() -> None:
    stream = MemoryStream(ARN)
    records = put_spread(stream, [1, 60, 1])  # r000 in one window, r001 and r002 in the next
    script = [("ok", 0), ("raise", 0), ("no_state", 0), ("raise", 0)]  # the first final fails
    function = WindowFunction(script, partial_responses=False)
    store = MemoryCheckpointStore()
    async with Engine(
        source=stream, checkpoint_store=store, poll_settings=poll(), retry_settings=FAST_RETRY
    ) as engine:
        uuid = await engine.add_mapping(window_mapping(60, 10), function)
        await wait_for(
            lambda: function.closed_ids() == [k for k, _ in records], 10, message="both windows"
        )
        counters = engine.mapping_statistics(uuid).counters
    kinds = [(c.final, c.action, c.keys) for c in function.calls]
    assert kinds[:5] == [
        (False, "ok", ["r000"]),
        (True, "raise", []),
        (True, "no_state", []),  # a final's answer needs state too
        (True, "raise", []),
        (True, "ok", []),  # nothing of the next window came before the final succeeded
    ]
    assert kinds[5] == (False, "ok", ["r001", "r002"])
    assert counters.errors == 2 and counters.invocations == len(function.calls)


async def test_a_clean_restart_resumes_the_open_window_from_the_sqlite_store(
    tmp_path: Path, clock: list[float]
) -> None:
    clock[0] = T0 + 30  # inside the window: it stays open
    stream = MemoryStream(ARN)
    shard = stream.shard_ids[0]
    stream.put("r000", b"{}", arrival=T0 + 1)
    stream.put("r001", b"{}", arrival=T0 + 2)
    function = WindowFunction([], partial_responses=False)
    path = tmp_path / "state.db"
    store = SQLiteCheckpointStore(path)
    config = window_mapping(60, 2)

    async def checkpointed() -> bool:
        return (await store.get_checkpoints(UUID)).get(shard) == str(10**20 + 1)

    await run_until(stream, store, config, function, checkpointed)
    await store.aclose()
    stored = SQLiteCheckpointStore(path)
    state = await stored.get_window_state(UUID, shard)
    assert state is not None
    snapshot = WindowSnapshot.from_json(state)
    assert json.loads(snapshot.state_json) == {"ids": ["r000", "r001"]}
    assert snapshot.window is not None and snapshot.window.start == T0
    stream.put("r002", b"{}", arrival=T0 + 3)
    stream.put("r003", b"{}", arrival=T0 + 4)
    clock[0] = T0 + 1000  # long past the window's end: it closes once the shard is idle
    await run_until(
        stream,
        stored,
        config,
        function,
        lambda: function.closed_ids() == [f"r00{i}" for i in range(4)],
    )
    await stored.aclose()
    assert [(c.keys, c.state_in) for c in function.calls] == [
        (["r000", "r001"], {}),
        (["r002", "r003"], {"ids": ["r000", "r001"]}),  # resumed from the stored state
        ([], {"ids": ["r000", "r001", "r002", "r003"]}),
    ]


async def test_an_idle_window_closes_only_after_the_idle_wait(clock: list[float]) -> None:
    clock[0] = T0 + 100  # 40 s past the window's end, the wait is an hour
    stream = MemoryStream(ARN)
    stream.put("r000", b"{}", arrival=T0 + 1)
    function = WindowFunction([], partial_responses=False)
    store = MemoryCheckpointStore()
    async with Engine(
        source=stream, checkpoint_store=store, poll_settings=poll(idle_close=3600),
        retry_settings=FAST_RETRY,
    ) as engine:  # fmt: skip
        uuid = await engine.add_mapping(window_mapping(60, 10), function)
        await wait_for(lambda: function.calls, 10, message="the batch")
        polls = engine.mapping_statistics(uuid).counters.get_records_calls

        def polled_on() -> bool:  # the shard keeps polling, idle, while the window waits
            return engine.mapping_statistics(uuid).counters.get_records_calls >= polls + 20

        await wait_for(polled_on, 10, message="polls after the batch")
        assert [c.final for c in function.calls] == [False]
        clock[0] = T0 + 60 + 3600  # the wait is over; the next plan (after a late record) sees it
        stream.put("r001", b"{}", arrival=T0 + 2)
        await wait_for(lambda: function.finals(), 10, message="the idle close")
    assert [(c.keys, c.state_in, c.final) for c in function.calls] == [
        (["r000"], {}, False),
        (["r001"], {"ids": ["r000"]}, False),
        ([], {"ids": ["r000", "r001"]}, True),
    ]


async def test_an_unreadable_stored_state_is_said_loudly_and_the_shard_goes_on_fresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = MemoryStream(ARN)
    records = put_spread(stream, [1, 1, 1])
    store = MemoryCheckpointStore()
    await store.set_window_checkpoint(UUID, stream.shard_ids[0], str(10**20), b"not json")
    function = WindowFunction([], partial_responses=False)
    with caplog.at_level(logging.ERROR, logger="kinesis_esm.windows"):
        await run_until(
            stream, store, window_mapping(60, 10), function,
            lambda: function.closed_ids() == [k for k, _ in records[1:]],
        )  # fmt: skip
    assert function.calls[0].keys == ["r001", "r002"] and function.calls[0].state_in == {}
    assert any("cannot be read" in r.getMessage() for r in caplog.records)


# the config and the store


def test_a_window_with_a_parallelization_factor_is_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as info:
        window_mapping(60, 10, parallelization_factor=2)
    err = info.value
    assert err.parameter == "tumbling_window_in_seconds"
    assert "parallelization_factor = 1" in err.message and "got 2" in err.message
    assert window_mapping(60, 10, parallelization_factor=1).tumbling_window_in_seconds == 60
    assert window_mapping(0, 10, parallelization_factor=2).parallelization_factor == 2


async def test_sqlite_adds_the_window_column_to_an_old_file_and_keeps_its_checkpoints(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE checkpoints (mapping_uuid TEXT NOT NULL, shard_id TEXT NOT NULL, "
        "checkpoint TEXT NOT NULL, updated_at REAL NOT NULL, "
        "PRIMARY KEY (mapping_uuid, shard_id));"
        "INSERT INTO checkpoints VALUES ('m', 's-0', '42', 0.0);"
    )
    db.commit()
    db.close()
    store = SQLiteCheckpointStore(path)
    assert await store.get_checkpoints("m") == {"s-0": "42"}
    assert await store.get_window_state("m", "s-0") is None
    await store.set_window_checkpoint("m", "s-0", "43", b'{"w": 1}')
    assert await store.get_checkpoints("m") == {"s-0": "43"}
    assert await store.get_window_state("m", "s-0") == b'{"w": 1}'
    await store.set_checkpoint("m", "s-0", "44")  # a checkpoint without state forgets it
    assert await store.get_window_state("m", "s-0") is None
    await store.set_window_checkpoint("m", "s-1", "7", b"{}")
    await store.delete_mapping("m")
    assert await store.get_window_state("m", "s-1") is None
    await store.aclose()
    SQLiteCheckpointStore(path).connection.close()  # opening a migrated file again is fine


async def test_memory_store_keeps_window_state_with_the_checkpoint() -> None:
    store = MemoryCheckpointStore()
    await store.set_window_checkpoint("m", "s", "1", b"{}")
    assert (await store.get_checkpoints("m"), await store.get_window_state("m", "s")) == (
        {"s": "1"},
        b"{}",
    )
    await store.set_checkpoint("m", "s", SHARD_END)
    assert await store.get_window_state("m", "s") is None
    assert iso_seconds(T0) == "2020-12-09T07:04:00Z"
