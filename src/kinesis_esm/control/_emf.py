"""CloudWatch metrics as the Embedded Metric Format: one JSON line per mapping per interval on
stdout, which the CloudWatch agent (or any log shipper into CloudWatch Logs) turns into metrics.

Lambda's names and units (reference section 6), per ``EventSourceMappingUUID`` and
``FunctionName``; counts are the differences over the interval. Like Lambda, nothing is
emitted for a disabled mapping, and IteratorAge only while records flow.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import anyio

from ..runtime._model import MappingStatus

__all__ = ["NAMESPACE", "emf_records", "run_emf"]

NAMESPACE = "kinesis-esm"
# Lambda's metric -> MappingCounters field
COUNTS = {
    "PolledEventCount": "polled_events",
    "FilteredOutEventCount": "filtered_out_events",
    "InvokedEventCount": "invoked_events",
    "FailedInvokeEventCount": "failed_invoke_events",
    "DroppedEventCount": "dropped_events",
    "OnFailureDestinationDeliveredEventCount": "on_failure_delivered_events",
    "DestinationDeliveryFailures": "destination_delivery_failures",
    "Invocations": "invocations",
    "Errors": "errors",
}

Totals = dict[str, tuple[dict[str, int], int, float]]  # uuid -> (counters, calls, seconds)


def emf_records(
    statuses: list[MappingStatus], previous: Totals, now: float | None = None
) -> tuple[list[dict[str, Any]], Totals]:
    """The EMF documents for one interval, and the totals to diff the next one against."""
    stamp = int((time.time() if now is None else now) * 1000)
    documents, totals = [], {}
    for status in statuses:
        view, inv = status.view, status.invocations
        counters = dict(status.counters)
        totals[view.uuid] = (counters, inv.count, inv.duration_sum)
        if view.state != "Enabled":
            continue
        before_counters, before_calls, before_seconds = previous.get(view.uuid, ({}, 0, 0.0))
        values: dict[str, float] = {
            name: counters.get(field, 0) - before_counters.get(field, 0)
            for name, field in COUNTS.items()
        }
        units = dict.fromkeys(values, "Count")
        calls = inv.count - before_calls
        if calls > 0:
            values["Duration"] = round((inv.duration_sum - before_seconds) / calls * 1000, 3)
            units["Duration"] = "Milliseconds"
        ages = [s.iterator_age_ms for s in status.shards if s.iterator_age_ms is not None]
        if ages and values["PolledEventCount"] > 0:
            values["IteratorAge"] = max(ages)
            units["IteratorAge"] = "Milliseconds"
        directive = {
            "Namespace": NAMESPACE,
            "Dimensions": [["EventSourceMappingUUID", "FunctionName"]],
            "Metrics": [{"Name": name, "Unit": unit} for name, unit in units.items()],
        }
        documents.append(
            {
                "_aws": {"Timestamp": stamp, "CloudWatchMetrics": [directive]},
                "EventSourceMappingUUID": view.uuid,
                "FunctionName": view.config.function_name,
                **values,
            }
        )
    return documents, totals


async def run_emf(
    statuses: Callable[[], list[MappingStatus]],
    interval: float,
    out: TextIO | None = None,
) -> None:
    """Every ``interval`` seconds, write one EMF line per enabled mapping to ``out``."""
    stream = out or sys.stdout
    _, totals = emf_records(statuses(), {})
    while True:
        await anyio.sleep(interval)
        documents, totals = emf_records(statuses(), totals)
        for document in documents:
            stream.write(json.dumps(document, separators=(",", ":")) + "\n")
        stream.flush()
