"""Mappings shared by a fleet: API changes go through the registry, and every worker applies
the others' changes within one poll interval.

With ``[coordination] backend = "dynamodb"`` the `Runtime` is given a `FleetMappingSync` as
its ``shared``: a create, update or delete through the REST API of any worker is written to the
registry (`MappingRegistry`, conditional on the version this worker last saw) after the
runtime's own checks pass and before the API answers. A write that loses to another worker's
is Lambda's ResourceInUseException; the caller tries again, after this worker has applied the
winner's change. `run` polls the registry every ``interval`` seconds and hands each row whose
version this worker has not applied to `Runtime.apply_shared` (create, restart with the new
settings under the same UUID, or stop and delete).

The registry is the fleet's truth for API mappings. A mapping this worker holds locally but
that was never shared (created before the fleet existed) is published at the first poll.
Config-file mappings are reconciled from each worker's own file as without a fleet (they
share UUIDs through ``stable_uuid``); an API change of one is shared like any other, and
applied on each worker whose file declares it the same way.
"""

from __future__ import annotations

import logging

import anyio

from ..leases import LeaseStoreError
from ..state._mappings import StoredMapping
from ..state._registry import MappingRegistry, RegistryConflict
from ._model import RESOURCE_IN_USE, SERVICE, MappingError
from ._runtime import Runtime

__all__ = ["CONFLICT_MESSAGE", "FleetMappingSync"]

log = logging.getLogger("kinesis_esm.fleet.mappings")

CONFLICT_MESSAGE = (
    "The event source mapping was changed by another worker of the fleet at the same time. "
    "Retry the request."
)
MIN_INTERVAL, MAX_INTERVAL = 0.1, 60.0


class FleetMappingSync:
    """One worker's side of the registry: ``publish`` (the runtime's hook) and ``run``."""

    def __init__(self, registry: MappingRegistry, *, interval: float = 2.0) -> None:
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            message = f"interval must be {MIN_INTERVAL} to {MAX_INTERVAL} s, got {interval!r}"
            raise ValueError(message)
        self.registry = registry
        self.interval = interval
        self.applied: dict[str, int] = {}  # uuid -> the registry version this worker runs
        self.polls = 0

    async def publish(self, row: StoredMapping) -> None:
        """Write ``row`` over the version this worker last applied (SharedMappings)."""
        try:
            version = await self.registry.write(row, self.applied.get(row.uuid))
        except RegistryConflict:
            raise MappingError(RESOURCE_IN_USE, CONFLICT_MESSAGE) from None
        except LeaseStoreError as error:
            log.warning("mapping %s: the fleet registry refused the change: %s", row.uuid, error)
            message = "The fleet's mapping registry is not reachable: try again"
            raise MappingError(SERVICE, message) from None
        self.applied[row.uuid] = version

    async def poll_once(self, runtime: Runtime) -> None:
        """Apply every row not applied yet; publish local mappings the registry lacks."""
        rows = await self.registry.read_all()
        for uuid, row in rows.items():
            if self.applied.get(uuid) == row.version:
                continue
            if await runtime.apply_shared(row.mapping):
                self.applied[uuid] = row.version
        if self.polls == 0:
            await self._publish_unshared(runtime, set(rows))
        self.polls += 1

    async def _publish_unshared(self, runtime: Runtime, shared: set[str]) -> None:
        for m in runtime.records():
            if m.origin != "api" or m.uuid in shared:
                continue
            try:
                await self.publish(m.row())
            except MappingError as error:
                log.warning("mapping %s: not shared with the fleet yet: %s", m.uuid, error)

    async def run(self, runtime: Runtime) -> None:
        """Poll until cancelled; an unreachable registry is logged and polled again."""
        while True:
            if runtime.reconciled:
                try:
                    await self.poll_once(runtime)
                except LeaseStoreError as error:
                    log.warning("the fleet's mapping registry cannot be read: %s", error)
            await anyio.sleep(self.interval)
