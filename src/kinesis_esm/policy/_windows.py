"""Lambda's tumbling windows for Kinesis, as pure logic: no I/O, no clock (time is passed in).

One :class:`ShardWindows` per shard says what to invoke next: a batch of the current window's
records (with the state so far), or the window's final invocation, or nothing until some time.
The caller reports each success; a failure changes nothing, so a retry gets the same state.
docs/filtering-and-windows.md is the user guide. Choices, where AWS documents nothing:

* **Assignment.** Windows are aligned to epoch multiples of the length (Lambda's examples show
  it) and a record belongs to the window containing its approximate arrival time, except that
  windows never go back: a record arriving after its window was closed, or with an earlier
  timestamp than the record before it, joins the current (or next) window. Windows are half-open,
  [start, end); a shard's windows form a contiguous run of its records each.
* **State.** The first invocation of a window gets ``{}``; each success replaces the state with
  the response's (a partial response's too: it is the state of the records it reports done).
  A response without ``state``, or whose ``state`` is not an object, is a function error;
  ``null`` counts as ``{}`` (what a Go function's nil map serializes to). The state is kept as its
  JSON bytes, so every invocation gets a fresh copy that a failed handler cannot have mutated.
* **Closing.** The final invocation carries no records, only the state, with
  ``isFinalInvokeForWindow``. It comes once the window has had records and either the next
  record belongs to a later window, the shard has ended, or the stream is idle: no records
  pending, the consumer caught up, and ``idle_close_seconds`` (Lambda's 2 minutes) past the
  window's end. Until it succeeds nothing else of the shard is invoked.
* **1 MB.** A response whose state serializes to more than 1 MiB ends the window early: the final
  invocation carries that state with ``isWindowTerminatedEarly``, then the same window goes on
  with ``{}`` (aws-lambda-go's reading of Lambda's behaviour). The limit is a parameter
  (``max_state_bytes``): a fleet, whose lease row must hold the state, sets a lower one.
* **Persistence.** :meth:`ShardWindows.snapshot` is what must be stored atomically with the
  checkpoint; restored, the window resumes from exactly the state that the checkpointed records
  produced, so a retry, a restart or a kill never applies a record to the state twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from kinesis_esm import Record

__all__ = [
    "EMPTY_STATE",
    "IDLE_CLOSE_SECONDS",
    "MAX_STATE_BYTES",
    "MAX_WINDOW_SECONDS",
    "ShardWindows",
    "Window",
    "WindowIdle",
    "WindowInvoke",
    "WindowResponse",
    "WindowSnapshot",
    "iso_seconds",
    "parse_window_response",
    "window_of",
]

MAX_WINDOW_SECONDS = 900  # TumblingWindowInSeconds: 0 (off) to 900
MAX_STATE_BYTES = 1024 * 1024  # "1 MB per shard", read as 1 MiB of serialized JSON
IDLE_CLOSE_SECONDS = 120.0  # Lambda waits up to 2 minutes for new records before closing
EMPTY_STATE = b"{}"


def iso_seconds(epoch: int) -> str:
    """ISO-8601 UTC to the second, as Lambda writes window bounds: 2020-12-09T07:04:00Z."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Window:
    """[start, end) in epoch seconds."""

    start: int
    end: int

    def as_event(self) -> dict[str, str]:
        return {"start": iso_seconds(self.start), "end": iso_seconds(self.end)}


def window_of(timestamp: float, length: int) -> Window:
    """The epoch-aligned window of ``length`` seconds containing ``timestamp``."""
    start = int(timestamp // length) * length
    return Window(start, start + length)


@dataclass(frozen=True, slots=True)
class WindowResponse:
    """A function's response to a window invocation, checked for its state."""

    ok: bool
    state_json: bytes = EMPTY_STATE  # the new state, serialized
    reason: str = ""  # why not ok: a function error, for the log and the destination

    @property
    def size(self) -> int:
        return len(self.state_json)


def parse_window_response(payload: Any) -> WindowResponse:
    """Check a response for ``state`` (batchItemFailures are the partial-response parser's)."""
    if not isinstance(payload, Mapping) or "state" not in payload:
        got = "no response" if payload is None else f"a {type(payload).__name__} without state"
        return WindowResponse(False, reason=f"a tumbling-window response needs state; got {got}")
    state = payload["state"]
    if state is None:
        return WindowResponse(True)
    if not isinstance(state, Mapping):
        return WindowResponse(
            False, reason=f"state must be a JSON object, not a {type(state).__name__}"
        )
    try:
        return WindowResponse(True, orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS))
    except TypeError as exc:  # also a dict nested too deep for orjson
        return WindowResponse(False, reason=f"state is not JSON-serializable: {exc}")


@dataclass(frozen=True, slots=True)
class WindowInvoke:
    """The next invocation: ``count`` records from the front of the pending ones, or the final."""

    window: Window
    state_json: bytes
    count: int  # 0 for a final invocation
    final: bool = False
    terminated_early: bool = False

    def state(self) -> Any:
        """A fresh copy of the state for the event."""
        return orjson.loads(self.state_json)

    def event(
        self, records_event: Mapping[str, Any], *, shard_id: str, stream_arn: str
    ) -> dict[str, Any]:
        """Lambda's window event: the standard event's Records plus the window fields."""
        records = records_event.get("Records", [])
        if self.final and records:
            raise ValueError("a final window invocation carries no records")
        return {
            "Records": records,
            "window": self.window.as_event(),
            "state": self.state(),
            "shardId": shard_id,
            "eventSourceARN": stream_arn,
            "isFinalInvokeForWindow": self.final,
            "isWindowTerminatedEarly": self.terminated_early,
        }


@dataclass(frozen=True, slots=True)
class WindowIdle:
    """Nothing to invoke now. Plan again when records arrive, or at ``wake_at`` (if any)."""

    wake_at: float | None


@dataclass(frozen=True, slots=True)
class WindowSnapshot:
    """A shard's window position, stored with its checkpoint."""

    window: Window | None = None  # the open window
    state_json: bytes = EMPTY_STATE
    aggregated: bool = False  # the open window has had a successful batch since (re)starting
    final_due: bool = False  # its final invocation must come next
    terminated_early: bool = False  # ... because the state passed the limit
    floor: int | None = None  # end of the last closed window: later windows start here or after

    def to_json(self) -> bytes:
        window = None if self.window is None else [self.window.start, self.window.end]
        return orjson.dumps(
            {
                "window": window,
                "state": orjson.Fragment(self.state_json),
                "aggregated": self.aggregated,
                "final_due": self.final_due,
                "terminated_early": self.terminated_early,
                "floor": self.floor,
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> WindowSnapshot:
        try:
            raw = orjson.loads(data)
            window = raw["window"]
            return cls(
                window=None if window is None else Window(int(window[0]), int(window[1])),
                state_json=orjson.dumps(raw["state"]),
                aggregated=bool(raw["aggregated"]),
                final_due=bool(raw["final_due"]),
                terminated_early=bool(raw["terminated_early"]),
                floor=None if raw["floor"] is None else int(raw["floor"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"not a window snapshot: {exc}") from None


class ShardWindows:
    """One shard's tumbling windows: which records go together, with which state, and when the
    window closes. Drive it with :meth:`plan`, then :meth:`batch_succeeded` or
    :meth:`final_succeeded` for what was invoked; persist :meth:`snapshot` with the checkpoint."""

    def __init__(
        self,
        length: int,
        *,
        idle_close_seconds: float = IDLE_CLOSE_SECONDS,
        max_state_bytes: int = MAX_STATE_BYTES,
        snapshot: WindowSnapshot | None = None,
    ) -> None:
        if not 1 <= length <= MAX_WINDOW_SECONDS:
            raise ValueError(f"window length {length} is outside 1-{MAX_WINDOW_SECONDS} seconds")
        if idle_close_seconds < 0:
            raise ValueError(f"idle_close_seconds must be >= 0, not {idle_close_seconds}")
        if not 2 <= max_state_bytes <= MAX_STATE_BYTES:  # 2: at least "{}"
            raise ValueError(
                f"max_state_bytes must be between 2 and {MAX_STATE_BYTES}, not {max_state_bytes}"
            )
        self.length = length
        self.idle_close_seconds = idle_close_seconds
        self.max_state_bytes = max_state_bytes
        s = snapshot or WindowSnapshot()
        self._window = s.window
        self._state = s.state_json
        self._aggregated = s.aggregated
        self._final_due = s.final_due
        self._early = s.terminated_early
        self._floor = s.floor

    @property
    def window(self) -> Window | None:
        """The open window, if any."""
        return self._window

    def snapshot(self) -> WindowSnapshot:
        return WindowSnapshot(
            self._window, self._state, self._aggregated, self._final_due, self._early, self._floor
        )

    def window_for(self, timestamp: float) -> Window:
        """The window a record arriving at ``timestamp`` joins now (never an earlier one)."""
        current = self._window
        if current is not None and timestamp < current.end:
            return current
        floor = current.end if current is not None else self._floor
        if floor is None:
            return window_of(timestamp, self.length)
        window = window_of(max(timestamp, floor), self.length)  # a late record joins the next
        if window.start < floor:  # the first window after a length change: from the old end
            return Window(floor, window.end)
        return window

    def plan(
        self,
        pending: Sequence[Record],
        now: float,
        *,
        limit: int | None = None,
        caught_up: bool = True,
        shard_ended: bool = False,
    ) -> WindowInvoke | WindowIdle:
        """What to invoke next, given the shard's pending records (in order, filtered, not yet
        invoked successfully) and the time. ``limit`` bounds the records looked at (the batch
        size); ``caught_up`` says no unread records remain; ``shard_ended`` that none will come."""
        current = self._window
        if self._final_due and current is not None:
            return WindowInvoke(current, self._state, 0, final=True, terminated_early=self._early)
        if pending:
            target = self.window_for(pending[0].approximate_arrival_timestamp)
            if target != current and self._aggregated and current is not None:
                return WindowInvoke(current, self._state, 0, final=True)
            end = target.end
            count = 0
            for record in pending if limit is None else pending[:limit]:
                if record.approximate_arrival_timestamp >= end:
                    break
                count += 1
            # a new window starts from {}: the state was reset when the last one closed
            return WindowInvoke(target, self._state, count)
        if current is None or not self._aggregated:
            return WindowIdle(None)
        if shard_ended:
            return WindowInvoke(current, self._state, 0, final=True)
        close_at = current.end + self.idle_close_seconds
        if caught_up and now >= close_at:
            return WindowInvoke(current, self._state, 0, final=True)
        return WindowIdle(close_at)

    def batch_succeeded(self, invoke: WindowInvoke, response: WindowResponse) -> None:
        """A batch of ``invoke`` succeeded (wholly or in part) with this response's state."""
        if invoke.final or not response.ok:
            raise ValueError("batch_succeeded takes a successful batch invocation")
        if invoke.window != self._window:
            if self._aggregated or self._final_due:
                raise ValueError(f"{invoke.window} is not the open window {self._window}")
            self._window = invoke.window  # a new window opens with its first success
        self._state = response.state_json
        self._aggregated = True
        if response.size > self.max_state_bytes:
            self._final_due = self._early = True

    def final_succeeded(self, invoke: WindowInvoke) -> None:
        """The final invocation of the open window succeeded: close it (or, after an early
        termination, go on in the same window with a fresh state)."""
        if not invoke.final or invoke.window != self._window:
            raise ValueError(f"final_succeeded takes the open window's final, not {invoke}")
        if not invoke.terminated_early:
            self._floor = invoke.window.end
            self._window = None
        self._state = EMPTY_STATE
        self._aggregated = self._final_due = self._early = False
