"""``kinesis-esm status``: a live table of a running daemon's mappings and shards, and in a
fleet of the workers that share each mapping.

It reads the daemon's ``/status`` (JSON) every ``interval`` seconds; records/s are the
differences between two readings. With ``--config`` it finds the daemon's listener and
credentials in the daemon's own config file (a bearer token, or SigV4 with the configured key).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..config import ControlConfig

__all__ = ["StatusSource", "plain", "render", "rows", "run_status", "worker_rows"]

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


MAPPING_COLUMNS = (
    "UUID Function Stream State Batch PF rec/s Polled Filtered Invocations Errors Age Last-result"
)
SHARD_COLUMNS = "Mapping Shard State Read rec/s Buffered Busy Age Behind Checkpoint"
WORKER_COLUMNS = "Mapping Worker Live Leases Heartbeat"
MAPPINGS_TITLE, SHARDS_TITLE, WORKERS_TITLE = "Event source mappings", "Shards", "Workers"


def _read(shard: dict[str, Any]) -> str:
    """How the shard is read: GetRecords, or a subscription (its age, resubscriptions)."""
    if shard.get("read_mode") != "subscribe":
        return "poll"
    age = shard.get("subscription_age_s")
    shown = "-" if age is None else _age(int(age * 1000))
    return f"EFO {shown} r{shard.get('resubscriptions', 0)}"


def _state(shard: dict[str, Any]) -> str:
    """The shard's state; in a fleet, with its lease's owner and counter ("leased w2#41")."""
    owner = shard.get("owner")
    if owner is None and shard.get("lease_counter") is None:
        return str(shard["state"])
    return f"{shard['state']} {owner or '-'}#{shard.get('lease_counter')}"


def _headers(columns: str) -> list[str]:
    return [column.replace("-", " ") for column in columns.split()]


def rows(
    snapshot: Mapping[str, Any], previous: Mapping[str, Any] | None = None, *, short: bool = True
) -> tuple[list[list[str]], list[list[str]]]:
    """The cells of the two tables, mappings and shards. ``previous``: the reading before, for
    the rates; ``short``: checkpoints cut to their last digits."""
    elapsed = snapshot["time"] - previous["time"] if previous else 0.0
    before = {m["UUID"]: m for m in (previous or {}).get("mappings", [])}
    mappings: list[list[str]] = []
    shards: list[list[str]] = []
    for m in snapshot.get("mappings", []):
        old = before.get(m["UUID"])
        counters = m.get("counters", {})
        done_before = old["counters"].get("succeeded_events") if old else None
        ages = [s["iterator_age_ms"] for s in m["shards"] if s["iterator_age_ms"] is not None]
        mappings.append(
            [
                m["UUID"][:8],
                m.get("FunctionName", m["FunctionArn"].rpartition(":function:")[2]),
                m["EventSourceArn"].rpartition(":stream/")[2],
                m["State"],
                str(m["BatchSize"]),
                str(m["ParallelizationFactor"]),
                _rate(counters.get("succeeded_events", 0), done_before, elapsed),
                f"{counters.get('polled_events', 0):,}",  # Lambda's PolledEventCount
                f"{counters.get('filtered_out_events', 0):,}",  # FilteredOutEventCount
                f"{counters.get('invocations', 0):,}",
                f"{counters.get('errors', 0):,}",
                _age(max(ages) if ages else None),
                m["LastProcessingResult"],
            ]
        )
        old_shards = {s["shard_id"]: s for s in old["shards"]} if old else {}
        for s in sorted(m["shards"], key=lambda s: s["shard_id"]):
            was = old_shards.get(s["shard_id"])
            shards.append(
                [
                    m["UUID"][:8],
                    s["shard_id"],
                    _state(s),
                    _read(s),
                    _rate(s["records_invoked"], was["records_invoked"] if was else None, elapsed),
                    str(s["records_buffered"]),
                    f"{s['lanes_busy']}/{s['lanes']}",
                    _age(s["iterator_age_ms"]),
                    _age(s["millis_behind_latest"]),
                    _short(s["checkpoint"]) if short else s["checkpoint"] or "-",
                ]
            )
    return mappings, shards


def worker_rows(snapshot: Mapping[str, Any]) -> list[list[str]]:
    """The cells of the workers table: in a fleet, every worker of each mapping as this daemon
    last read the lease table (none outside a fleet)."""
    cells: list[list[str]] = []
    for m in snapshot.get("mappings", []):
        for w in m.get("workers", []):
            heartbeat = w.get("heartbeat")
            cells.append(
                [
                    m["UUID"][:8],
                    f"{w['worker_id']} (this)" if w.get("this_worker") else str(w["worker_id"]),
                    "yes" if w.get("live") else "no",
                    str(w.get("leases", 0)),
                    "-" if heartbeat is None else str(heartbeat),
                ]
            )
    return cells


def _table(title: str, columns: str) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    *fixed, last = _headers(columns)
    for column in fixed:
        table.add_column(column, no_wrap=True)
    table.add_column(last, overflow="fold", min_width=14)  # may wrap
    return table


def render(snapshot: Mapping[str, Any], previous: Mapping[str, Any] | None = None) -> Group:
    """The tables for a terminal: mappings, shards, then (in a fleet) workers."""
    mapping_rows, shard_rows = rows(snapshot, previous)
    mappings = _table(MAPPINGS_TITLE, MAPPING_COLUMNS)
    for row in mapping_rows:
        state, result = row[3], row[-1]
        mappings.add_row(
            *row[:3],
            Text(state, style=_STATE_STYLE.get(state, "cyan")),
            *row[4:-1],
            Text(result, style="red" if result.startswith("PROBLEM") else ""),
        )
    shards = _table(SHARDS_TITLE, SHARD_COLUMNS)
    for row in shard_rows:
        shards.add_row(*row)
    cells = worker_rows(snapshot)
    if not cells:
        return Group(mappings, shards)
    workers = _table(WORKERS_TITLE, WORKER_COLUMNS)
    for mapping, name, live, *rest in cells:
        workers.add_row(mapping, name, Text(live, style="" if live == "yes" else "red"), *rest)
    return Group(mappings, shards, workers)


def _plain_table(title: str, columns: str, cells: list[list[str]]) -> list[str]:
    headers = _headers(columns)
    widths = [max(len(row[i]) for row in [headers, *cells]) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))

    return [title, *(line(row).rstrip() for row in [headers, *cells])]


def plain(snapshot: Mapping[str, Any], previous: Mapping[str, Any] | None = None) -> str:
    """The tables as plain text, every row whole on one line whatever its width: for a pipe
    or a file (grep, logs), where a terminal's width means nothing."""
    mapping_rows, shard_rows = rows(snapshot, previous, short=False)
    stamp = datetime.fromtimestamp(snapshot["time"], UTC).isoformat(timespec="seconds")
    lines = [
        f"# {stamp.replace('+00:00', 'Z')}",
        *_plain_table(MAPPINGS_TITLE, MAPPING_COLUMNS, mapping_rows),
        "",
        *_plain_table(SHARDS_TITLE, SHARD_COLUMNS, shard_rows),
    ]
    cells = worker_rows(snapshot)
    if cells:  # a fleet: a daemon on its own prints what it always did
        lines += ["", *_plain_table(WORKERS_TITLE, WORKER_COLUMNS, cells)]
    return "\n".join(lines)


class _Output:
    """Where the readings go: a live table on a terminal; plain text or JSON lines elsewhere,
    one reading per refresh."""

    def __init__(self, console: Console, as_json: bool) -> None:
        self.console = console
        self.as_json = as_json
        self.live = console.is_terminal and not as_json

    def text(self, snapshot: Mapping[str, Any], previous: Mapping[str, Any] | None) -> str:
        if self.as_json:
            return json.dumps(snapshot, separators=(",", ":"))
        return plain(snapshot, previous)

    def write(self, snapshot: Mapping[str, Any], previous: Mapping[str, Any] | None) -> None:
        gap = "\n" if previous is not None and not self.as_json else ""  # between readings
        self.console.file.write(gap + self.text(snapshot, previous) + "\n")
        self.console.file.flush()

    def message(self, text: str) -> None:
        if self.live:
            self.console.print(text)
        else:
            print(text, file=sys.stderr)


def run_status(
    source: StatusSource,
    *,
    interval: float = 2.0,
    once: bool = False,
    as_json: bool = False,
    console: Console | None = None,
) -> int:
    """Print the tables once, or every ``interval`` seconds until Ctrl-C: a live table on a
    terminal; off a terminal (a pipe, a file) plain full-width rows, or with ``as_json`` the
    daemon's /status as one JSON line, per reading."""
    console = console or Console()
    output = _Output(console, as_json)
    try:
        snapshot = source.fetch()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"{exc.code} {exc.headers.get('x-amzn-ErrorType') or exc.reason}"
        output.message(f"kinesis-esm status: cannot read {source.url}/status: {reason}")
        return 1
    try:
        if not output.live:
            output.write(snapshot, None)
            while not once:
                time.sleep(interval)
                previous, snapshot = snapshot, source.fetch()
                output.write(snapshot, previous)
            return 0
        if once:
            console.print(render(snapshot))
            return 0
        with Live(render(snapshot), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                previous, snapshot = snapshot, source.fetch()
                live.update(render(snapshot, previous))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # | head: the reader has had enough
        return 0
    except (urllib.error.URLError, OSError, ValueError) as exc:
        output.message(f"kinesis-esm status: lost the daemon at {source.url}: {exc}")
        return 1
