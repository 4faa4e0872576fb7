"""/metrics: the runtime's figures in Prometheus's format, read at scrape time.

Nothing is counted on the hot path for this: the collector reads the mappings' counters and
shard statistics when Prometheus scrapes. Counters are totals over a mapping's live updates.
The execution environments' figures are per declared function (``function_name``), summed
over the function's mappings and kept across their restarts (``DeclaredFunctions``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..functions import EnvironmentStatistics
from ..functions._pool import INIT_BUCKETS
from ..runtime._model import DURATION_BUCKETS, MappingStatus
from ._fleet_metrics import lease_metrics

__all__ = ["COUNTERS", "RuntimeCollector", "environment_metrics", "registry_for"]

EnvironmentFigures = Callable[[], Mapping[str, EnvironmentStatistics]]

PREFIX = "kinesis_esm"
# MappingCounters field -> (metric name without _total, help). Unknown fields are exported too.
COUNTERS = {
    "polled_events": ("polled_events", "Records read from the stream (Lambda's PolledEventCount)"),
    "filtered_out_events": (
        "filtered_out_events",
        "Records dropped by the filter criteria (FilteredOutEventCount)",
    ),
    "invoked_events": (
        "invoked_events",
        "Records sent to the function, again on each retry (InvokedEventCount)",
    ),
    "failed_invoke_events": (
        "failed_invoke_events",
        "Records in invocations that failed (FailedInvokeEventCount)",
    ),
    "dropped_events": (
        "dropped_events",
        "Records discarded for record age or retry limits (DroppedEventCount)",
    ),
    "on_failure_delivered_events": (
        "on_failure_destination_delivered_events",
        "Records reported to the on-failure destination (OnFailureDestinationDeliveredEventCount)",
    ),
    "destination_delivery_failures": (
        "destination_delivery_failures",
        "Failed deliveries to the on-failure destination (DestinationDeliveryFailures)",
    ),
    "invocations": ("invocations", "Function invocations (Invocations)"),
    "errors": ("errors", "Invocations that ended in a function error (Errors)"),
    "succeeded_events": ("succeeded_events", "Records whose invocation succeeded"),
    "throttles": ("kinesis_throttles", "Kinesis calls throttled"),
    "get_records_calls": ("get_records_calls", "GetRecords calls"),
    "source_errors": ("source_errors", "Failed Kinesis calls"),
}
_M = ["uuid", "function_name"]
_S = [*_M, "shard_id"]
_F = ["function_name"]


def _cumulative(bounds: tuple[float, ...], counts: tuple[int, ...] | list[int]) -> list[Any]:
    """Prometheus's cumulative buckets from per-bound counts (the last one above every bound)."""
    total, buckets = 0, []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else str(bound), total))
    return buckets


def environment_metrics(figures: Mapping[str, EnvironmentStatistics]) -> Iterator[Metric]:
    """Execution environments (``isolation = "process"``, ``target = "runtime"``) per function."""
    alive = GaugeMetricFamily(
        f"{PREFIX}_environments_alive", "Execution environments alive (idle or busy)", labels=_F
    )
    busy = GaugeMetricFamily(
        f"{PREFIX}_environments_busy", "Execution environments running an invocation", labels=_F
    )
    started = CounterMetricFamily(
        f"{PREFIX}_environments_started", "Execution environments started (init run)", labels=_F
    )
    reclaimed = CounterMetricFamily(
        f"{PREFIX}_environments_reclaimed",
        "Execution environments closed after idle_timeout",
        labels=_F,
    )
    lost = CounterMetricFamily(
        f"{PREFIX}_environments_lost",
        "Execution environments lost: crashed, timed out or out of memory",
        labels=[*_F, "reason"],
    )
    init_errors = CounterMetricFamily(
        f"{PREFIX}_environment_init_errors", "Inits that failed", labels=_F
    )
    init = HistogramMetricFamily(
        f"{PREFIX}_environment_init_duration_seconds", "Successful inits' duration", labels=_F
    )
    for name, stats in sorted(figures.items()):
        labels = [name]
        alive.add_metric(labels, stats.environments)
        busy.add_metric(labels, stats.busy)
        started.add_metric(labels, stats.started)
        reclaimed.add_metric(labels, stats.reclaimed)
        lost.add_metric([name, "crash"], stats.crashes)
        lost.add_metric([name, "timeout"], stats.timeouts)
        lost.add_metric([name, "out_of_memory"], stats.out_of_memory)
        init_errors.add_metric(labels, stats.init_errors)
        buckets = _cumulative(INIT_BUCKETS, stats.init_buckets)
        init.add_metric(labels, buckets, stats.init_seconds)
    yield from (alive, busy, started, reclaimed, lost, init_errors, init)


class RuntimeCollector(Collector):
    def __init__(
        self,
        statuses: Callable[[], list[MappingStatus]],
        environments: EnvironmentFigures | None = None,
    ) -> None:
        self._statuses = statuses
        self._environments = environments

    def collect(self) -> Iterator[Metric]:
        statuses = self._statuses()
        info = GaugeMetricFamily(
            f"{PREFIX}_mapping_info",
            "One per mapping: its event source and Lambda state",
            labels=[*_M, "event_source_arn", "state"],
        )
        enabled = GaugeMetricFamily(
            f"{PREFIX}_mapping_enabled", "1 when the mapping's state is Enabled", labels=_M
        )
        age = GaugeMetricFamily(
            f"{PREFIX}_iterator_age_milliseconds",
            "Lambda's IteratorAge: age of the last record of the latest batch, per shard",
            labels=_S,
        )
        mapping_age = GaugeMetricFamily(
            f"{PREFIX}_mapping_iterator_age_milliseconds",
            "The largest IteratorAge over the mapping's shards",
            labels=_M,
        )
        behind = GaugeMetricFamily(
            f"{PREFIX}_millis_behind_latest", "MillisBehindLatest of the last GetRecords", labels=_S
        )
        buffered = GaugeMetricFamily(
            f"{PREFIX}_buffered_records", "Records read and not yet handled, per shard", labels=_S
        )
        busy = GaugeMetricFamily(
            f"{PREFIX}_lanes_busy", "Lanes with an invocation in flight, per shard", labels=_S
        )
        read_mode = GaugeMetricFamily(
            f"{PREFIX}_shard_read_mode",
            "1 for how the shard is read: polling (GetRecords) or subscribe (enhanced fan-out)",
            labels=[*_S, "read_mode"],
        )
        subscription_age = GaugeMetricFamily(
            f"{PREFIX}_subscription_age_seconds",
            "Age of the shard's current SubscribeToShard (enhanced fan-out)",
            labels=_S,
        )
        resubscriptions = CounterMetricFamily(
            f"{PREFIX}_resubscriptions",
            "SubscribeToShard calls after the first, per shard (every 5 minutes, and on errors)",
            labels=_S,
        )
        shard_polled = CounterMetricFamily(
            f"{PREFIX}_shard_records_polled", "Records read, per shard", labels=_S
        )
        shard_invoked = CounterMetricFamily(
            f"{PREFIX}_shard_records_invoked", "Records sent to the function, per shard", labels=_S
        )
        counters: dict[str, CounterMetricFamily] = {}
        duration = HistogramMetricFamily(
            f"{PREFIX}_invocation_duration_seconds", "Function invocation duration", labels=_M
        )
        for status in statuses:
            view = status.view
            labels = [view.uuid, view.config.function_name]
            info.add_metric([*labels, view.config.event_source_arn, view.state], 1)
            enabled.add_metric(labels, 1 if view.state == "Enabled" else 0)
            ages = []
            for shard in status.shards:
                shard_labels = [*labels, shard.shard_id]
                if shard.iterator_age_ms is not None:
                    age.add_metric(shard_labels, shard.iterator_age_ms)
                    ages.append(shard.iterator_age_ms)
                if shard.millis_behind_latest is not None:
                    behind.add_metric(shard_labels, shard.millis_behind_latest)
                read_mode.add_metric([*shard_labels, shard.read_mode], 1)
                if shard.read_mode == "subscribe":
                    resubscriptions.add_metric(shard_labels, shard.resubscriptions)
                    if shard.subscription_age_s is not None:
                        subscription_age.add_metric(shard_labels, shard.subscription_age_s)
                buffered.add_metric(shard_labels, shard.records_buffered)
                busy.add_metric(shard_labels, shard.lanes_busy)
                shard_polled.add_metric(shard_labels, shard.records_polled)
                shard_invoked.add_metric(shard_labels, shard.records_invoked)
            if ages:
                mapping_age.add_metric(labels, max(ages))
            for field, value in sorted(status.counters.items()):
                name, help_text = COUNTERS.get(field, (field, f"MappingCounters.{field}"))
                family = counters.get(name)
                if family is None:
                    family = CounterMetricFamily(f"{PREFIX}_{name}", help_text, labels=_M)
                    counters[name] = family
                family.add_metric(labels, value)
            stats = status.invocations
            buckets = _cumulative(DURATION_BUCKETS, stats.buckets)
            duration.add_metric(labels, buckets, stats.duration_sum)
        yield from (info, enabled, age, mapping_age, behind, buffered, busy)
        yield from (read_mode, subscription_age, resubscriptions)
        yield from (shard_polled, shard_invoked, *counters.values(), duration)
        yield from lease_metrics(statuses)  # a fleet's leases, labelled by worker
        if self._environments is not None:
            yield from environment_metrics(self._environments())


def registry_for(
    statuses: Callable[[], list[MappingStatus]], environments: EnvironmentFigures | None = None
) -> CollectorRegistry:
    """A registry of its own (not the global one): the runtime's figures and the process's.
    ``environments``: the execution environments' figures per declared function."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(statuses, environments))
    ProcessCollector(registry=registry)
    return registry
