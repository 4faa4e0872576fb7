"""/metrics for a fleet: each mapping's leases as this worker holds them, labelled by worker.

Read at scrape time from the coordinators' counters (`LeaseStatistics`), like the rest of
/metrics. Nothing is exported for a mapping that is not leased (``backend = "local"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..runtime._model import MappingStatus

__all__ = ["LEASE_COUNTERS", "lease_metrics"]

PREFIX = "kinesis_esm"
_L = ["uuid", "function_name", "worker"]
# LeaseStatistics field -> (metric name without _total, help)
LEASE_COUNTERS = {
    "taken": ("leases_taken", "Unowned leases this worker took"),
    "stolen": ("leases_stolen", "Expired leases of another worker this worker took"),
    "received": ("leases_received", "Leases handed over to this worker on its request"),
    "handed_off": ("leases_handed_off", "Leases this worker gave up gracefully"),
    "finished": ("leases_finished", "Leases released at the end of their shard (SHARD_END)"),
    "lost": ("leases_lost", "Leases taken away before this worker released them (fenced)"),
    "renewal_failures": (
        "lease_renewal_failures",
        "Renewals, checkpoints and releases that failed on the way to the lease table",
    ),
    "read_failures": (
        "lease_read_failures",
        "Lease table reads, takes, hand-off requests and heartbeats that failed",
    ),
}


def lease_metrics(statuses: Iterable[MappingStatus]) -> Iterator[Metric]:
    held = GaugeMetricFamily(
        f"{PREFIX}_leases_held", "Leases this worker holds, per mapping", labels=_L
    )
    live = GaugeMetricFamily(
        f"{PREFIX}_fleet_live_workers",
        "Workers of the mapping's fleet this worker counts as live",
        labels=_L,
    )
    counters = {
        field: CounterMetricFamily(f"{PREFIX}_{name}", help_text, labels=_L)
        for field, (name, help_text) in LEASE_COUNTERS.items()
    }
    for status in statuses:
        leases = status.leases
        if leases is None:
            continue
        labels = [status.view.uuid, status.view.config.function_name, leases.worker_id]
        held.add_metric(labels, leases.held)
        live.add_metric(labels, leases.live_workers)
        for field, family in counters.items():
            family.add_metric(labels, getattr(leases, field))
    yield held
    yield live
    yield from counters.values()
