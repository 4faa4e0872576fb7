"""``kinesis-esm status``: a live table of a running daemon's mappings and shards.

It reads the daemon's ``/status`` (JSON) every ``interval`` seconds; records/s are the
differences between two readings. With ``--config`` it finds the daemon's listener and
credentials in the daemon's own config file (a bearer token, or SigV4 with the configured key).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..config import ControlConfig

__all__ = ["StatusSource", "render", "run_status"]

DEFAULT_URL = "http://127.0.0.1:9001"
_STATE_STYLE = {"Enabled": "green", "Disabled": "yellow", "Deleting": "red"}


@dataclass(frozen=True, slots=True)
class StatusSource:
    """Where the daemon is and how to authenticate to it."""

    url: str = DEFAULT_URL
    token: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str = "us-east-1"

    @classmethod
    def from_control(cls, control: ControlConfig) -> StatusSource:
        host = control.host
        if host in ("0.0.0.0", "::", ""):  # listening everywhere: ask over loopback
            host = "127.0.0.1"
        port = control.port or 9001
        return cls(
            url=f"http://{f'[{host}]' if ':' in host else host}:{port}",
            token=control.token or os.environ.get("KINESIS_ESM_TOKEN"),
            access_key_id=control.access_key_id,
            secret_access_key=control.secret_access_key,
        )

    def headers(self, url: str) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.access_key_id and self.secret_access_key:
            from botocore.auth import SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials

            request = AWSRequest(method="GET", url=url)
            credentials = Credentials(self.access_key_id, self.secret_access_key)
            SigV4Auth(credentials, "lambda", self.region).add_auth(request)
            return dict(request.headers.items())
        return {}

    def fetch(self, timeout: float = 5.0) -> dict[str, Any]:
        url = f"{self.url.rstrip('/')}/status"
        request = urllib.request.Request(url, headers=self.headers(url))
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data: dict[str, Any] = json.loads(response.read())
        return data


def _age(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms} ms" if ms < 10_000 else f"{ms / 1000:,.0f} s"


def _rate(now: float, before: float | None, elapsed: float) -> str:
    if before is None or elapsed <= 0:
        return "-"
    return f"{max(now - before, 0) / elapsed:,.1f}"


def _short(sequence: str | None) -> str:
    if not sequence:
        return "-"
    return sequence if len(sequence) <= 14 else f"…{sequence[-12:]}"


def _table(title: str, columns: str) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    *fixed, last = columns.split()
    for column in fixed:
        table.add_column(column, no_wrap=True)
    table.add_column(last.replace("-", " "), overflow="fold", min_width=14)  # may wrap
    return table


def render(snapshot: Mapping[str, Any], previous: Mapping[str, Any] | None = None) -> Group:
    """Two tables: mappings, then shards. ``previous``: the reading before, for rates."""
    elapsed = snapshot["time"] - previous["time"] if previous else 0.0
    before = {m["UUID"]: m for m in (previous or {}).get("mappings", [])}
    mappings = _table(
        "Event source mappings",
        "UUID Function Stream State Batch PF rec/s Invocations Errors Age Last-result",
    )
    shards = _table("Shards", "Mapping Shard State rec/s Buffered Busy Age Behind Checkpoint")
    for m in snapshot.get("mappings", []):
        old = before.get(m["UUID"])
        counters = m.get("counters", {})
        done_before = old["counters"].get("succeeded_events") if old else None
        ages = [s["iterator_age_ms"] for s in m["shards"] if s["iterator_age_ms"] is not None]
        result = m["LastProcessingResult"]
        mappings.add_row(
            m["UUID"][:8],
            m.get("FunctionName", m["FunctionArn"].rpartition(":function:")[2]),
            m["EventSourceArn"].rpartition(":stream/")[2],
            Text(m["State"], style=_STATE_STYLE.get(m["State"], "cyan")),
            str(m["BatchSize"]),
            str(m["ParallelizationFactor"]),
            _rate(counters.get("succeeded_events", 0), done_before, elapsed),
            f"{counters.get('invocations', 0):,}",
            f"{counters.get('errors', 0):,}",
            _age(max(ages) if ages else None),
            Text(result, style="red" if result.startswith("PROBLEM") else ""),
        )
        old_shards = {s["shard_id"]: s for s in old["shards"]} if old else {}
        for s in sorted(m["shards"], key=lambda s: s["shard_id"]):
            was = old_shards.get(s["shard_id"])
            shards.add_row(
                m["UUID"][:8],
                s["shard_id"],
                s["state"],
                _rate(s["records_invoked"], was["records_invoked"] if was else None, elapsed),
                str(s["records_buffered"]),
                f"{s['lanes_busy']}/{s['lanes']}",
                _age(s["iterator_age_ms"]),
                _age(s["millis_behind_latest"]),
                _short(s["checkpoint"]),
            )
    return Group(mappings, shards)


def run_status(
    source: StatusSource,
    *,
    interval: float = 2.0,
    once: bool = False,
    console: Console | None = None,
) -> int:
    """Print the table once, or refresh it every ``interval`` seconds until Ctrl-C."""
    console = console or Console()
    try:
        snapshot = source.fetch()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"{exc.code} {exc.headers.get('x-amzn-ErrorType') or exc.reason}"
        console.print(f"kinesis-esm status: cannot read {source.url}/status: {reason}")
        return 1
    if once:
        console.print(render(snapshot))
        return 0
    try:
        with Live(render(snapshot), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                previous, snapshot = snapshot, source.fetch()
                live.update(render(snapshot, previous))
    except KeyboardInterrupt:
        return 0
    except (urllib.error.URLError, OSError, ValueError) as exc:
        console.print(f"kinesis-esm status: lost the daemon at {source.url}: {exc}")
        return 1
