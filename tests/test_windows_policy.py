"""Tumbling windows, the pure policy: assignment, alignment, state, closing, 1 MB, responses.

The property tests drive ShardWindows the way a shard's pipeline would, with a function that
aggregates record ids into its state, and with failures, partial responses and crashes (the
policy restored from the last snapshot stored with the checkpoint) thrown in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kinesis_esm import Record
from kinesis_esm.policy._windows import (
    EMPTY_STATE,
    IDLE_CLOSE_SECONDS,
    MAX_STATE_BYTES,
    ShardWindows,
    Window,
    WindowIdle,
    WindowInvoke,
    WindowSnapshot,
    iso_seconds,
    parse_window_response,
    window_of,
)

SHARD = "shardId-000000000006"
ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/lambda-stream"
T0 = 1_607_497_440  # 2020-12-09T07:04:00Z, a multiple of 120


def rec(i: int, ts: float) -> Record:
    return Record.from_bytes(str(10**20 + i), f"k{i % 3}", b"{}", ts)


def ok(state: Any) -> Any:
    return parse_window_response({"state": state})


# alignment and the event


def test_lambdas_example_window() -> None:
    # the documented KinesisTimeWindowEvent: a record at 07:04:35 in a 120 s window
    w = window_of(1607497475.000, 120)
    assert w.as_event() == {"start": "2020-12-09T07:04:00Z", "end": "2020-12-09T07:06:00Z"}


@given(ts=st.floats(0, 4e9), length=st.integers(1, 900))
def test_windows_are_epoch_aligned_and_half_open(ts: float, length: int) -> None:
    w = window_of(ts, length)
    assert w.start % length == 0 and w.end - w.start == length
    assert w.start <= ts < w.end
    assert window_of(w.end, length).start == w.end
    assert window_of(w.start, length) == w


def test_iso_seconds() -> None:
    assert iso_seconds(0) == "1970-01-01T00:00:00Z"
    assert iso_seconds(T0) == "2020-12-09T07:04:00Z"


def test_the_event_has_lambdas_fields_in_lambdas_order() -> None:
    invoke = WindowInvoke(Window(T0, T0 + 120), b'{"1": 282, "2": 715}', 1)
    records = [{"kinesis": {"partitionKey": "1"}}]
    event = invoke.event({"Records": records}, shard_id=SHARD, stream_arn=ARN)
    assert list(event) == [
        "Records",
        "window",
        "state",
        "shardId",
        "eventSourceARN",
        "isFinalInvokeForWindow",
        "isWindowTerminatedEarly",
    ]
    assert event["Records"] is records
    assert event["window"] == {"start": "2020-12-09T07:04:00Z", "end": "2020-12-09T07:06:00Z"}
    assert event["state"] == {"1": 282, "2": 715}
    assert (event["shardId"], event["eventSourceARN"]) == (SHARD, ARN)
    assert event["isFinalInvokeForWindow"] is False
    assert event["isWindowTerminatedEarly"] is False
    event["state"]["1"] = 0  # a handler mutating its state does not touch the policy's copy
    assert invoke.state() == {"1": 282, "2": 715}


def test_a_final_event_has_no_records() -> None:
    final = WindowInvoke(Window(T0, T0 + 120), b"{}", 0, final=True, terminated_early=True)
    event = final.event({"Records": []}, shard_id=SHARD, stream_arn=ARN)
    assert event["Records"] == [] and event["isFinalInvokeForWindow"] is True
    assert event["isWindowTerminatedEarly"] is True
    with pytest.raises(ValueError, match="no records"):
        final.event({"Records": [{}]}, shard_id=SHARD, stream_arn=ARN)


# responses

RESPONSES: list[tuple[Any, bool, bytes]] = [
    ({"state": {"1": 282}, "batchItemFailures": []}, True, b'{"1":282}'),
    ({"state": {}}, True, b"{}"),
    ({"state": None}, True, b"{}"),  # a Go function's nil map
    ({"state": {1: "a"}}, True, b'{"1":"a"}'),  # keys become strings, as json.dumps does
    ({"state": {"nested": {"list": [1, 2.5, None]}}}, True, b'{"nested":{"list":[1,2.5,null]}}'),
    (None, False, b"{}"),
    ({}, False, b"{}"),
    ("", False, b"{}"),
    ({"batchItemFailures": []}, False, b"{}"),
    ({"State": {}}, False, b"{}"),
    ({"state": []}, False, b"{}"),
    ({"state": "x"}, False, b"{}"),
    ({"state": 3}, False, b"{}"),
    ({"state": {"x": object()}}, False, b"{}"),
    ([{"state": {}}], False, b"{}"),
]


@pytest.mark.parametrize(("payload", "good", "state"), RESPONSES)
def test_responses(payload: Any, good: bool, state: bytes) -> None:
    response = parse_window_response(payload)
    assert response.ok is good
    assert response.state_json == state
    assert bool(response.reason) is not good


def test_a_response_without_state_says_so() -> None:
    assert "needs state" in parse_window_response({"batchItemFailures": []}).reason
    assert "JSON object" in parse_window_response({"state": [1]}).reason
    assert "serializable" in parse_window_response({"state": {"x": {1, 2}}}).reason


# the state machine, step by step


def test_a_window_aggregates_then_closes_when_the_next_one_starts() -> None:
    windows = ShardWindows(120)
    pending = [rec(0, T0 + 1), rec(1, T0 + 50), rec(2, T0 + 119.999), rec(3, T0 + 120)]
    first = windows.plan(pending, now=T0 + 130)
    assert first == WindowInvoke(Window(T0, T0 + 120), EMPTY_STATE, 3)  # stops at the boundary
    windows.batch_succeeded(first, ok({"n": 3}))
    assert windows.window == Window(T0, T0 + 120)
    final = windows.plan(pending[3:], now=T0 + 130)
    assert final == WindowInvoke(Window(T0, T0 + 120), b'{"n":3}', 0, final=True)
    windows.final_succeeded(final)
    assert windows.window is None
    nxt = windows.plan(pending[3:], now=T0 + 130)
    assert nxt == WindowInvoke(Window(T0 + 120, T0 + 240), EMPTY_STATE, 1)


def test_state_carries_from_batch_to_batch_and_limit_bounds_the_count() -> None:
    windows = ShardWindows(60)
    pending = [rec(i, T0 + i) for i in range(10)]
    a = windows.plan(pending, T0 + 10, limit=4)
    assert isinstance(a, WindowInvoke) and a.count == 4
    windows.batch_succeeded(a, ok({"seen": [0, 1, 2, 3]}))
    b = windows.plan(pending[4:], T0 + 10, limit=100)
    assert isinstance(b, WindowInvoke)
    assert (b.count, b.state()) == (6, {"seen": [0, 1, 2, 3]})


def test_a_failure_leaves_the_state_as_it_was() -> None:
    windows = ShardWindows(60)
    pending = [rec(0, T0), rec(1, T0 + 1)]
    a = windows.plan(pending, T0 + 5)
    assert isinstance(a, WindowInvoke)
    windows.batch_succeeded(a, ok({"n": 2}))
    b = windows.plan([rec(2, T0 + 2)], T0 + 5)
    assert isinstance(b, WindowInvoke)
    # the function fails (or returns no state): nothing is reported, the retry gets the same state
    assert not parse_window_response({"batchItemFailures": []}).ok
    assert windows.plan([rec(2, T0 + 2)], T0 + 6) == b
    with pytest.raises(ValueError):
        windows.batch_succeeded(b, parse_window_response(None))


def test_idle_stream_closes_after_lambdas_wait() -> None:
    windows = ShardWindows(60)
    a = windows.plan([rec(0, T0 + 10)], T0 + 10)
    assert isinstance(a, WindowInvoke)
    windows.batch_succeeded(a, ok({"n": 1}))
    close_at = T0 + 60 + IDLE_CLOSE_SECONDS
    assert IDLE_CLOSE_SECONDS == 120
    assert windows.plan([], T0 + 61) == WindowIdle(close_at)
    assert windows.plan([], close_at - 0.001) == WindowIdle(close_at)
    assert windows.plan([], close_at, caught_up=False) == WindowIdle(close_at)  # records unread
    final = windows.plan([], close_at)
    assert final == WindowInvoke(Window(T0, T0 + 60), b'{"n":1}', 0, final=True)
    windows.final_succeeded(final)
    assert windows.plan([], close_at + 1000) == WindowIdle(None)


def test_idle_wait_is_a_setting() -> None:
    windows = ShardWindows(60, idle_close_seconds=0)
    a = windows.plan([rec(0, T0)], T0)
    assert isinstance(a, WindowInvoke)
    windows.batch_succeeded(a, ok({}))
    assert isinstance(windows.plan([], T0 + 59.9), WindowIdle)
    assert windows.plan([], T0 + 60) == WindowInvoke(Window(T0, T0 + 60), b"{}", 0, final=True)
    with pytest.raises(ValueError, match="idle_close_seconds"):
        ShardWindows(60, idle_close_seconds=-1)


def test_a_shards_end_closes_its_window() -> None:
    windows = ShardWindows(900)
    assert windows.plan([], T0, shard_ended=True) == WindowIdle(None)  # nothing to close
    a = windows.plan([rec(0, T0)], T0)
    assert isinstance(a, WindowInvoke)
    windows.batch_succeeded(a, ok({"n": 1}))
    final = windows.plan([], T0 + 1, shard_ended=True)  # no idle wait at a shard's end
    assert final == WindowInvoke(
        Window(T0 // 900 * 900, T0 // 900 * 900 + 900), b'{"n":1}', 0, True
    )
    windows.final_succeeded(final)
    assert windows.plan([], T0 + 1, shard_ended=True) == WindowIdle(None)


def test_a_failed_final_halts_the_shard_until_it_succeeds() -> None:
    windows = ShardWindows(60)
    a = windows.plan([rec(0, T0)], T0)
    assert isinstance(a, WindowInvoke)
    windows.batch_succeeded(a, ok({"n": 1}))
    later = [rec(1, T0 + 60), rec(2, T0 + 61)]
    final = windows.plan(later, T0 + 70)
    assert isinstance(final, WindowInvoke) and final.final
    for attempt in range(5):  # the final fails again and again: the later records wait
        assert windows.plan(later, T0 + 70 + attempt) == final
    windows.final_succeeded(final)
    nxt = windows.plan(later, T0 + 80)
    assert isinstance(nxt, WindowInvoke) and nxt.count == 2 and nxt.state() == {}


def test_state_over_1_mib_terminates_the_window_early() -> None:
    windows = ShardWindows(300)
    pending = [rec(i, T0 + i) for i in range(4)]
    a = windows.plan(pending[:2], T0 + 5)
    assert isinstance(a, WindowInvoke)
    exactly = {"x": "y" * (MAX_STATE_BYTES - len('{"x":""}'))}
    assert ok(exactly).size == MAX_STATE_BYTES
    windows.batch_succeeded(a, ok(exactly))
    b = windows.plan(pending[2:3], T0 + 5)
    assert isinstance(b, WindowInvoke) and not b.final  # 1 MiB is allowed
    big = {"x": "y" * MAX_STATE_BYTES}
    windows.batch_succeeded(b, ok(big))
    early = windows.plan(pending[3:], T0 + 5)
    assert isinstance(early, WindowInvoke)
    assert early.final and early.terminated_early and early.count == 0
    assert early.state() == big  # the function gets the oversized state to flush
    windows.final_succeeded(early)
    same = window_of(T0, 300)
    assert windows.window == same  # the same window goes on, from {}
    c = windows.plan(pending[3:], T0 + 5)
    assert c == WindowInvoke(same, EMPTY_STATE, 1)
    windows.batch_succeeded(c, ok({"n": 1}))
    last = windows.plan([], same.end + IDLE_CLOSE_SECONDS)
    assert isinstance(last, WindowInvoke) and last.final and not last.terminated_early


def test_after_an_early_end_with_nothing_more_no_second_final() -> None:
    windows = ShardWindows(60, max_state_bytes=10)
    a = windows.plan([rec(0, T0)], T0)
    assert isinstance(a, WindowInvoke)
    windows.batch_succeeded(a, ok({"long": "enough to pass ten bytes"}))
    early = windows.plan([rec(1, T0 + 60)], T0 + 61)
    assert isinstance(early, WindowInvoke) and early.terminated_early
    windows.final_succeeded(early)
    nxt = windows.plan([rec(1, T0 + 60)], T0 + 61)  # straight on into the next window
    assert nxt == WindowInvoke(Window(T0 + 60, T0 + 120), EMPTY_STATE, 1)
    windows.batch_succeeded(nxt, ok({}))
    assert windows.window == Window(T0 + 60, T0 + 120)


def test_records_never_go_back_to_an_earlier_window() -> None:
    windows = ShardWindows(60, idle_close_seconds=0)
    a = windows.plan([rec(0, T0 + 30)], T0 + 30)
    assert isinstance(a, WindowInvoke)
    windows.batch_succeeded(a, ok({}))
    # an earlier timestamp than the window's start joins the open window
    b = windows.plan([rec(1, T0 - 500)], T0 + 31)
    assert b == WindowInvoke(Window(T0, T0 + 60), b"{}", 1)
    windows.batch_succeeded(b, ok({"n": 2}))
    final = windows.plan([], T0 + 60)
    assert isinstance(final, WindowInvoke)
    windows.final_succeeded(final)
    # a record read after its window closed joins the next one
    late = windows.plan([rec(2, T0 + 59)], T0 + 70)
    assert late == WindowInvoke(Window(T0 + 60, T0 + 120), EMPTY_STATE, 1)


def test_a_partial_response_keeps_its_state_for_the_retry() -> None:
    windows = ShardWindows(60)
    pending = [rec(i, T0 + i) for i in range(3)]
    a = windows.plan(pending, T0 + 5)
    assert isinstance(a, WindowInvoke)
    # the function did record 0, failed on record 1: state {0}, batchItemFailures [1]
    windows.batch_succeeded(a, ok({"ids": [0]}))
    retry = windows.plan(pending[1:], T0 + 6)
    assert isinstance(retry, WindowInvoke)
    assert (retry.count, retry.state()) == (2, {"ids": [0]})


def test_snapshot_round_trip_and_restore() -> None:
    windows = ShardWindows(60, max_state_bytes=20)
    a = windows.plan([rec(0, T0)], T0)
    assert isinstance(a, WindowInvoke)
    windows.batch_succeeded(a, ok({"text": "more than twenty bytes"}))
    snap = windows.snapshot()
    assert snap.final_due and snap.terminated_early and snap.aggregated
    again = WindowSnapshot.from_json(snap.to_json())
    assert again == snap
    restored = ShardWindows(60, max_state_bytes=20, snapshot=again)
    assert restored.plan([], T0 + 1) == windows.plan([], T0 + 1)
    closed = WindowSnapshot(window=None, floor=T0 + 60)
    assert WindowSnapshot.from_json(closed.to_json()) == closed
    for bad in (b"", b"{}", b'{"window": [1]}', b"[]"):
        with pytest.raises(ValueError, match="not a window snapshot"):
            WindowSnapshot.from_json(bad)


def test_a_length_change_keeps_the_open_window_then_realigns() -> None:
    old = ShardWindows(120)
    a = old.plan([rec(0, T0 + 10)], T0 + 10)
    assert isinstance(a, WindowInvoke)
    old.batch_succeeded(a, ok({}))
    new = ShardWindows(50, snapshot=old.snapshot())
    b = new.plan([rec(1, T0 + 100)], T0 + 100)
    assert isinstance(b, WindowInvoke) and b.window == Window(T0, T0 + 120)
    new.batch_succeeded(b, ok({}))
    final = new.plan([rec(2, T0 + 125)], T0 + 126)
    assert isinstance(final, WindowInvoke) and final.final
    new.final_succeeded(final)
    nxt = new.plan([rec(2, T0 + 125)], T0 + 126)
    # the first window after the change starts where the old one ended, up to a 50 s boundary
    assert isinstance(nxt, WindowInvoke)
    assert nxt.window == Window(T0 + 120, (T0 + 120) // 50 * 50 + 50)
    assert nxt.window.end % 50 == 0


@pytest.mark.parametrize("length", [0, -1, 901])
def test_length_is_lambdas_range(length: int) -> None:
    with pytest.raises(ValueError, match="1-900"):
        ShardWindows(length)


# properties: a simulated shard


@dataclass
class Shard:
    """A shard's pipeline around ShardWindows: checkpoint and snapshot stored together."""

    records: list[Record]
    length: int
    max_state: int
    now: float
    batch_size: int = 4
    checkpoint: int = 0  # records before this index are done (stored)
    stored: bytes = field(default_factory=lambda: WindowSnapshot().to_json())
    windows: ShardWindows = field(init=False)
    finals: list[tuple[Window, tuple[str, ...], bool]] = field(default_factory=list)
    assigned: dict[str, Window] = field(default_factory=dict)  # record -> window, when stored
    incoming: list[tuple[Window, Any, int]] = field(default_factory=list)  # (.., first record)

    def __post_init__(self) -> None:
        self.restore()

    def restore(self) -> None:  # a restart: the policy from the stored snapshot
        snapshot = WindowSnapshot.from_json(self.stored)
        self.windows = ShardWindows(self.length, max_state_bytes=self.max_state, snapshot=snapshot)
        self.completed = self.checkpoint

    def pending(self) -> list[Record]:
        rest = self.records[self.checkpoint :]
        return [r for r in rest if r.approximate_arrival_timestamp <= self.now]

    def ended(self) -> bool:
        return self.checkpoint == len(self.records)

    def step(self, action: str, cut: int, tick: float) -> bool:
        """One plan and its outcome; False once the shard is finished."""
        step = self.windows.plan(
            self.pending(), self.now, limit=self.batch_size, shard_ended=self.ended()
        )
        if isinstance(step, WindowIdle):
            if step.wake_at is None and self.ended():
                return False
            upcoming = [
                r.approximate_arrival_timestamp
                for r in self.records[self.checkpoint :]
                if r.approximate_arrival_timestamp > self.now
            ]
            targets = [t for t in (step.wake_at, *upcoming[:1]) if t is not None]
            self.now = max(self.now + tick, min(targets)) if targets else self.now + tick
            return True
        self.now += tick
        state = step.state()
        if step.final:
            if action == "fail":
                return True
            self.finals.append((step.window, tuple(state.get("ids", [])), step.terminated_early))
            if action == "crash":
                self.restore()
                return True
            self.windows.final_succeeded(step)
            self.stored = self.windows.snapshot().to_json()
            return True
        self.incoming.append((step.window, state, self.checkpoint))
        batch = self.pending()[: step.count]
        assert batch and step.count <= self.batch_size
        if action == "fail":
            return True
        done = batch[: cut % len(batch)] if action == "partial" else batch
        ids = [*state.get("ids", []), *(r.sequence_number for r in done)]
        response = parse_window_response({"state": {"ids": ids}})
        if action == "crash":
            self.restore()
            return True
        self.windows.batch_succeeded(step, response)
        for r in done:
            self.assigned[r.sequence_number] = step.window
        self.checkpoint += len(done)
        self.stored = self.windows.snapshot().to_json()
        return True


def timestamps(length: int) -> Any:
    gaps = st.lists(st.floats(0, length * 2.5), min_size=1, max_size=30)
    return gaps.map(lambda g: [T0 + sum(g[: i + 1]) for i in range(len(g))])


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["ok", "ok", "ok", "fail", "partial", "crash"]),
        st.integers(0, 10),
        st.floats(0, 40),
    ),
    max_size=200,
)


def run(shard: Shard, actions: list[tuple[str, int, float]]) -> None:
    for action, cut, tick in actions:
        if not shard.step(action, cut, tick):
            return
    for _ in range(2000):  # then everything succeeds: the shard must finish
        if not shard.step("ok", 0, 1.0):
            return
    raise AssertionError("the shard did not finish")


def collapse(finals: list[Any]) -> list[Any]:
    """A crash after a final succeeded, before its snapshot was stored, repeats that final."""
    out: list[Any] = []
    for final in finals:
        if not out or out[-1] != final:
            out.append(final)
    return out


@settings(max_examples=250, deadline=None)
@given(
    length=st.sampled_from([1, 7, 60, 120]),
    data=st.data(),
    actions=ACTIONS,
    max_state=st.sampled_from([MAX_STATE_BYTES, 200, 40]),
)
def test_every_record_in_exactly_one_window_and_state_never_applied_twice(
    length: int, data: st.DataObject, actions: list[tuple[str, int, float]], max_state: int
) -> None:
    stamps = data.draw(timestamps(length))
    records = [rec(i, ts) for i, ts in enumerate(stamps)]
    shard = Shard(records, length, max_state, now=T0)
    run(shard, actions)
    finals = collapse(shard.finals)
    ids = [r.sequence_number for r in records]
    # each record's id reaches exactly one final state, in order: nothing lost, nothing twice
    assert [i for _, state_ids, _ in finals for i in state_ids] == ids
    # windows are aligned and go forward; every record is in one, and windows are contiguous runs
    assert set(shard.assigned) == set(ids)
    runs = [shard.assigned[i] for i in ids]
    for w in runs:
        assert w.start % length == 0 and w.end - w.start == length
    assert all(a.start <= b.start for a, b in pairwise(runs))
    for window, state_ids, _ in finals:
        assert all(shard.assigned[i] == window for i in state_ids)
    # timestamps only grow here, so each record is in the window of its own arrival time, unless
    # it was read after that window had closed (then it is in a later one)
    for r in records:
        own = window_of(r.approximate_arrival_timestamp, length)
        assert shard.assigned[r.sequence_number].start >= own.start
    # only the last final of a window may be a normal close; early ones come before it
    for (w1, _, early1), (w2, _, _) in pairwise(finals):
        assert early1 or w1.start < w2.start
        assert not early1 or w1 == w2 or w1.start < w2.start


@settings(max_examples=200, deadline=None)
@given(
    length=st.sampled_from([1, 10, 60]),
    stamps=st.lists(st.floats(T0 - 500, T0 + 500), min_size=1, max_size=40),
)
def test_a_burst_read_at_once_goes_by_the_running_maximum(length: int, stamps: list[float]) -> None:
    """All records read at once, timestamps in any order: record i is in the window of the
    largest timestamp up to i, so windows never go back and every record is in exactly one."""
    records = [rec(i, ts) for i, ts in enumerate(stamps)]
    shard = Shard(records, length, MAX_STATE_BYTES, now=T0 + 10_000, batch_size=1000)
    run(shard, [])
    top = -1e18
    for r in records:
        top = max(top, r.approximate_arrival_timestamp)
        assert shard.assigned[r.sequence_number] == window_of(top, length)
    assert [i for _, ids, _ in shard.finals for i in ids] == [r.sequence_number for r in records]


@settings(max_examples=100, deadline=None)
@given(actions=ACTIONS, data=st.data())
def test_each_invocation_sees_exactly_the_state_of_the_records_before_it(
    actions: list[tuple[str, int, float]], data: st.DataObject
) -> None:
    records = [rec(i, ts) for i, ts in enumerate(data.draw(timestamps(60)))]
    shard = Shard(records, 60, 120, now=T0)
    run(shard, actions)
    order = {r.sequence_number: i for i, r in enumerate(records)}
    assert shard.incoming
    for window, state, first in shard.incoming:
        # the state is that of the run of stored records just before this batch, each once
        positions = [order[i] for i in state.get("ids", [])]
        assert positions == list(range(first - len(positions), first))
        assert all(shard.assigned[records[p].sequence_number] == window for p in positions)
