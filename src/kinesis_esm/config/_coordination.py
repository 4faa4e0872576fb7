"""``[coordination]``: how the workers that run the same mappings share their shards.

``backend = "local"`` (the default) is one worker with its checkpoints in the SQLite state
file, as before fleets existed. ``backend = "dynamodb"`` makes the process one worker of a
fleet: every mapping's shards are leased through a DynamoDB table (see docs/fleet.md), so any
number of processes, on one host or many, may run the same configuration.

``endpoint_url`` and ``region`` are the DynamoDB twins of ``[kinesis]``'s; left unset, the AWS
SDK's own settings apply (``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_ENDPOINT_URL``, the profile's
region). ``worker_id`` must be unique in the fleet; empty means host name and process id.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ._arn import REGION
from ._errors import VALIDATION, ConfigError, _expect, _in_range

__all__ = ["COORDINATION_BACKENDS", "CoordinationConfig"]

COORDINATION_BACKENDS = ("local", "dynamodb")
_TABLE_NAME = re.compile(r"[a-zA-Z0-9_.-]+")
_WORKER_ID = re.compile(r"[!-~]+")  # printable ASCII, no spaces: it is part of a row key
_URL = re.compile(r"https?://[^\s/]+(/\S*)?")
MAX_WORKER_ID = 256


@dataclass(frozen=True, slots=True)
class CoordinationConfig:
    backend: str = "local"
    table: str = "kinesis-esm"
    worker_id: str = ""  # empty: "<host name>-<pid>"
    failover_time: float = 10  # seconds without a renewal before another worker may take a lease
    endpoint_url: str | None = None
    region: str | None = None
    mapping_sync_interval: float = 2  # seconds between two reads of the shared mapping registry

    def __post_init__(self) -> None:
        _expect("backend", self.backend, (str,), "a string")
        if self.backend not in COORDINATION_BACKENDS:
            message = f"{self.backend!r} is not one of {', '.join(COORDINATION_BACKENDS)}"
            raise ConfigError(message, parameter="backend")
        _expect("table", self.table, (str,), "a string")
        if not 3 <= len(self.table) <= 255:
            message = (
                f"1 validation error detected: Value '{self.table[:300]}' at 'tableName' failed "
                "to satisfy constraint: Member must have length between 3 and 255"
            )
            raise ConfigError(message, parameter="table", code=VALIDATION, hint="3..255 characters")
        if not _TABLE_NAME.fullmatch(self.table):
            message = (
                f"1 validation error detected: Value '{self.table}' at 'tableName' failed to "
                "satisfy constraint: Member must satisfy regular expression pattern: "
                "[a-zA-Z0-9_.-]+"
            )
            raise ConfigError(message, parameter="table", code=VALIDATION)
        _expect("worker_id", self.worker_id, (str,), "a string")
        if len(self.worker_id) > MAX_WORKER_ID:
            message = f"must be at most {MAX_WORKER_ID} characters, got {len(self.worker_id)}"
            raise ConfigError(message, parameter="worker_id")
        if self.worker_id and not _WORKER_ID.fullmatch(self.worker_id):
            message = "must be printable ASCII without spaces (it is part of a DynamoDB key)"
            raise ConfigError(message, parameter="worker_id", hint='or "" for host name + pid')
        _in_range("failover_time", self.failover_time, 1.0, 3600.0)
        if not math.isfinite(self.failover_time):
            raise ConfigError("must be a finite number of seconds", parameter="failover_time")
        _in_range("mapping_sync_interval", self.mapping_sync_interval, 0.1, 60.0)
        if not math.isfinite(self.mapping_sync_interval):
            raise ConfigError(
                "must be a finite number of seconds", parameter="mapping_sync_interval"
            )
        if self.endpoint_url is not None:
            _expect("endpoint_url", self.endpoint_url, (str,), "a string")
            if not _URL.fullmatch(self.endpoint_url):
                message = f"{self.endpoint_url!r} is not an http:// or https:// URL"
                raise ConfigError(message, parameter="endpoint_url")
        if self.region is not None:
            _expect("region", self.region, (str,), "a string")
            if not re.fullmatch(REGION, self.region):
                message = f"{self.region!r} is not an AWS region name"
                raise ConfigError(message, parameter="region", hint="e.g. us-east-1")

    @property
    def fleet(self) -> bool:
        """True when shards are leased through a shared store (a fleet of workers)."""
        return self.backend != "local"
