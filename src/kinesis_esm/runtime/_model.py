"""The runtime's data: a mapping's record and how its Lambda state and counters are derived,
resolved function ARNs, and invocation timing for /metrics."""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .._statistics import MappingStatistics, ShardStatistics, WorkerStatistics
from ..config import EventSourceMappingConfig, FunctionConfig
from ..functions import Function, InvokeResult
from ..leases import LeaseStatistics
from ..state._mappings import Origin, StoredMapping, config_to_dict

__all__ = [
    "DURATION_BUCKETS",
    "InvocationStats",
    "MappingError",
    "MappingRecord",
    "MappingStatus",
    "MappingView",
    "MeteredFunction",
    "function_arn",
]

RESOURCE_NOT_FOUND = "ResourceNotFoundException"
RESOURCE_CONFLICT = "ResourceConflictException"
RESOURCE_IN_USE = "ResourceInUseException"
SERVICE = "ServiceException"
USER_ACTION = "User action"
NO_RECORDS = "No records processed"
NOT_FOUND_MESSAGE = "The resource you requested does not exist."
UPDATING_MESSAGE = (
    "The operation cannot be performed at this time. "
    "The event source mapping is currently being updated."
)
DELETE_IN_USE_MESSAGE = "Cannot delete the event source mapping because it is in use."
# Upper bounds in seconds, up to Lambda's 900 s timeout.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
_SHARD_COUNTERS = ("records_polled", "records_invoked")
_FULL_ARN = re.compile(
    r"arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:\d{12}:function:[A-Za-z0-9_.-]+(?::[$A-Za-z0-9_-]+)?"
)
_PARTIAL = re.compile(
    r"(?:(?P<account>\d{12}):)?(?:function:)?(?P<name>[A-Za-z0-9_.-]+)"
    r"(?::(?P<qualifier>[$A-Za-z0-9_-]+))?"
)


class MappingError(Exception):
    """A request Lambda would refuse: ``code`` is Lambda's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def function_arn(config: EventSourceMappingConfig, fn: FunctionConfig | None) -> str:
    """Lambda's FunctionArn for the mapping's FunctionName: a full ARN as given; otherwise the
    stream's region and account (or the partial ARN's account), qualified when it was."""
    ref = config.function_name
    if _FULL_ARN.fullmatch(ref):
        return ref
    m = _PARTIAL.fullmatch(ref)
    account = (m and m["account"]) or config.account_id
    name = fn.name if fn is not None else (m["name"] if m else ref)
    qualifier = f":{m['qualifier']}" if m and m["qualifier"] else ""
    region = config.region
    partition = (
        "aws-cn" if region.startswith("cn-") else "aws-us-gov" if "-gov-" in region else "aws"
    )
    return f"arn:{partition}:lambda:{region}:{account}:function:{name}{qualifier}"


@dataclass(slots=True)
class InvocationStats:
    """Invocation count, function errors and a duration histogram (non-cumulative buckets)."""

    count: int = 0
    errors: int = 0
    duration_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))

    def observe(self, result: InvokeResult) -> None:
        self.count += 1
        self.errors += not result.ok
        self.duration_sum += result.duration
        self.buckets[bisect.bisect_left(DURATION_BUCKETS, result.duration)] += 1


class MeteredFunction:
    """Wraps a Function and records each invocation into ``stats``; otherwise transparent."""

    def __init__(self, inner: Function, stats: InvocationStats) -> None:
        self.inner = inner
        self.stats = stats
        self.name = inner.name
        self.arn = inner.arn
        self.timeout = inner.timeout
        self.input = inner.input
        self.enforces_timeout = getattr(inner, "enforces_timeout", False)

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()

    async def invoke(self, payload: Any) -> InvokeResult:
        result = await self.inner.invoke(payload)
        self.stats.observe(result)
        return result

    def __repr__(self) -> str:
        return f"MeteredFunction({self.inner!r})"


@dataclass(frozen=True, slots=True)
class MappingView:
    """What GetEventSourceMapping answers, in Python terms."""

    uuid: str
    config: EventSourceMappingConfig
    state: str
    state_transition_reason: str
    last_modified: float
    function_arn: str
    event_source_mapping_arn: str
    last_processing_result: str
    extras: Mapping[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class MappingStatus:
    """A view plus run-time figures; counters are totals over the mapping's runner restarts."""

    view: MappingView
    counters: Mapping[str, int]
    shards: tuple[ShardStatistics, ...]
    invocations: InvocationStats
    leases: LeaseStatistics | None = None  # in a fleet: this worker's leases of the mapping
    workers: tuple[WorkerStatistics, ...] = ()  # in a fleet: every worker of the mapping


@dataclass(eq=False, slots=True)
class MappingRecord:
    """One mapping as the runtime holds it; ``config`` is the desired configuration."""

    uuid: str
    origin: Origin
    config: EventSourceMappingConfig
    declared: dict[str, Any] | None  # origin "config": the file's declaration
    function: FunctionConfig | None  # None: a stored mapping whose function is gone
    function_arn: str
    extras: dict[str, Any]
    created_at: float
    last_modified: float
    pending: str | None = None  # the transitional state shown until it settles
    busy: bool = False  # an engine operation is running for it
    problem: str | None = None  # why it cannot run (shown as LastProcessingResult)
    carried_result: str | None = None  # LastProcessingResult across a runner restart
    counter_base: dict[str, int] = field(default_factory=dict)
    shard_base: dict[tuple[str, str], int] = field(default_factory=dict)
    invocations: InvocationStats = field(default_factory=InvocationStats)

    def row(self, *, deleted: bool = False) -> StoredMapping:
        config = config_to_dict(self.config)
        return StoredMapping(
            self.uuid, self.origin, config, self.declared, dict(self.extras),
            self.created_at, self.last_modified, deleted,
        )  # fmt: skip

    def last_result(self, stats: MappingStatistics | None) -> str:
        """LastProcessingResult: a fresh runner's "No records processed" does not hide the
        previous runner's result."""
        if self.problem is not None:
            return self.problem
        if stats is None:
            return self.carried_result or NO_RECORDS
        result = stats.last_processing_result
        if result != NO_RECORDS or stats.counters.invocations:
            self.carried_result = None
            return result
        return self.carried_result or result

    def state(self, stats: MappingStatistics | None, settled: Callable[[], None]) -> str:
        """Lambda's State; calls ``settled`` when a transitional state has just settled."""
        if self.pending == "Deleting":
            return "Deleting"
        if self.busy:
            return self.pending or "Updating"
        if not self.config.enabled or self.problem is not None:
            state = "Disabled"
        elif stats is not None and stats.state == "Enabled":
            state = "Enabled"
        else:
            return self.pending or "Creating"
        if self.pending is not None:
            self.pending = None
            settled()
        return state

    def carry(self, stats: MappingStatistics) -> None:
        """Before the runner is replaced: keep its totals and its last result."""
        self.carried_result = self.last_result(stats)
        for name in stats.counters.__slots__:
            self.counter_base[name] = self.counter_base.get(name, 0) + getattr(stats.counters, name)
        for s in stats.shards:
            for name in _SHARD_COUNTERS:
                key = (s.shard_id, name)
                self.shard_base[key] = self.shard_base.get(key, 0) + getattr(s, name)

    def status(self, view: MappingView, stats: MappingStatistics | None) -> MappingStatus:
        counters = dict(self.counter_base)
        shards: list[ShardStatistics] = []
        if stats is not None:
            for name in stats.counters.__slots__:
                counters[name] = counters.get(name, 0) + getattr(stats.counters, name)
            for s in stats.shards:
                base = self.shard_base
                totals = {n: getattr(s, n) + base.get((s.shard_id, n), 0) for n in _SHARD_COUNTERS}
                shards.append(replace(s, **totals))
        leases = None if stats is None else stats.leases
        workers = () if stats is None else stats.workers
        return MappingStatus(view, counters, tuple(shards), self.invocations, leases, workers)
