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

One mapping per function and stream, fleet-wide: before a mapping's row is written with a
(canonical function ARN, stream ARN) it did not have, the mapping claims that key. A claim
held by another live mapping of the key is Lambda's ResourceConflictException (its message
names that UUID). A claim whose holder is deleted (a tombstone, a fence) is taken over; one
whose holder has no row yet, or a row of another key (a crash between claim and write, or a
write still under way), is first fenced so that the holder's pending write fails, then taken
over: of two creates at once exactly one succeeds. A delete releases the claim after writing
the tombstone. Config-file mappings have the same UUID on every worker, so their claims
coincide.

Tombstones are removed once their ``writtenAt`` (the deleting worker's wall clock) is
``tombstone_ttl`` old, 7 days by default (at least 10 poll intervals): every live worker has
applied them long before. A worker stopped for longer, started again with its old state
file, shares the API mappings it still has as new ones (each claims its key again).

The registry is the fleet's truth for API mappings. A mapping this worker holds locally but
that was never shared (created before the fleet existed) is published at the first poll.
Config-file mappings are reconciled from each worker's own file as without a fleet (they
share UUIDs through ``stable_uuid``); an API change of one is shared like any other, and
applied on each worker whose file declares it the same way.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

import anyio

from ..config import ConfigError
from ..config._daemon import FunctionRef
from ..leases import LeaseStoreError
from ..state._mappings import StoredMapping, config_from_dict
from ..state._registry import Fence, MappingRegistry, RegistryConflict, RegistryRow
from ._checks import duplicate_message
from ._model import RESOURCE_CONFLICT, RESOURCE_IN_USE, SERVICE, MappingError, MappingRecord
from ._references import canonical_arn
from ._runtime import Runtime

__all__ = [
    "CONFLICT_MESSAGE",
    "TOMBSTONE_TTL",
    "FleetMappingSync",
    "Verdict",
    "claim_key",
    "claim_verdict",
    "tombstone_expired",
]

log = logging.getLogger("kinesis_esm.fleet.mappings")

CONFLICT_MESSAGE = (
    "The event source mapping was changed by another worker of the fleet at the same time. "
    "Retry the request."
)
MIN_INTERVAL, MAX_INTERVAL = 0.1, 60.0
TOMBSTONE_TTL = 7 * 24 * 3600.0
_CLAIM_ATTEMPTS = 5  # each lost round means another worker moved the claim meanwhile


def _key(function_arn: str, stream_arn: str) -> str:
    return f"{canonical_arn(function_arn)} {stream_arn}"


def claim_key(row: StoredMapping) -> str | None:
    """The (canonical function ARN, stream ARN) a mapping row holds, as the runtime's
    duplicate check compares them; None for a row whose configuration is not valid."""
    try:
        config = config_from_dict(row.config)
    except (ConfigError, TypeError, KeyError, ValueError):
        return None
    ref = FunctionRef.parse(config.function_name)
    if ref is None:
        return None
    return _key(ref.arn(config.region, config.account_id), config.event_source_arn)


def _record_key(m: MappingRecord) -> str:
    return _key(m.function_arn, m.config.event_source_arn)


class Verdict(enum.Enum):
    """What a mapping that wants a key does about the claim another UUID holds."""

    OURS = "ours"  # the claim names this mapping already
    HELD = "held"  # a live mapping of the key holds it: ResourceConflictException
    TAKE = "take"  # the holder is deleted or fenced: take the claim over
    FENCE_MISSING = "fence missing"  # the holder has no row: fence it, then take over
    FENCE_MOVED = "fence moved"  # the holder's row has another key: bump it, then take over


def claim_verdict(
    key: str, claimant: str, holder: str, entry: RegistryRow | Fence | None
) -> Verdict:
    """Pure: ``entry`` is the holder's row, fence or None, as read after the claim."""
    if holder == claimant:
        return Verdict.OURS
    if entry is None:
        return Verdict.FENCE_MISSING
    if isinstance(entry, Fence) or entry.mapping.deleted:
        return Verdict.TAKE
    return Verdict.HELD if claim_key(entry.mapping) == key else Verdict.FENCE_MOVED


def tombstone_expired(written_at: float | None, now: float, ttl: float) -> bool:
    """Pure: may a tombstone (or fence) written at ``written_at`` be removed at ``now``?"""
    return written_at is not None and now - written_at >= ttl


class FleetMappingSync:
    """One worker's side of the registry: ``publish`` (the runtime's hook) and ``run``."""

    def __init__(
        self,
        registry: MappingRegistry,
        *,
        interval: float = 2.0,
        tombstone_ttl: float = TOMBSTONE_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            message = f"interval must be {MIN_INTERVAL} to {MAX_INTERVAL} s, got {interval!r}"
            raise ValueError(message)
        if not tombstone_ttl >= 10 * interval:
            message = f"tombstone_ttl must be at least 10 intervals ({10 * interval} s)"
            raise ValueError(f"{message}, got {tombstone_ttl!r}")
        self.registry = registry
        self.interval = interval
        self.tombstone_ttl = tombstone_ttl
        self.clock = clock
        self.applied: dict[str, int] = {}  # uuid -> the registry version this worker runs
        self.keys: dict[str, str | None] = {}  # uuid -> the key of that version
        self.polls = 0

    async def publish(self, row: StoredMapping) -> None:
        """Write ``row`` over the version this worker last applied (SharedMappings), after
        claiming its function and stream when they are new for its UUID."""
        try:
            await self._publish(row)
        except LeaseStoreError as error:
            log.warning("mapping %s: the fleet registry refused the change: %s", row.uuid, error)
            message = "The fleet's mapping registry is not reachable: try again"
            raise MappingError(SERVICE, message) from None

    async def _publish(self, row: StoredMapping) -> None:
        key = None if row.deleted else claim_key(row)
        previous = self.keys.get(row.uuid)
        fresh = key if key is not None and key != previous else None
        if fresh is not None:
            await self._claim(fresh, row)
        try:
            version = await self.registry.write(
                row, self.applied.get(row.uuid), written_at=self.clock()
            )
        except RegistryConflict:
            raise await self._lost(row, fresh) from None
        self.applied[row.uuid] = version
        self.keys[row.uuid] = key
        # a delete gives its key back; an update that moved to a new key, the old one
        released = {previous, claim_key(row)} if row.deleted else {previous} if fresh else set()
        for old in released:
            if old is not None and old != key:
                await self._release(old, row.uuid)

    def _duplicate(self, row: StoredMapping, holder: str) -> MappingError:
        config = row.config
        arn, name = str(config.get("event_source_arn")), str(config.get("function_name"))
        return MappingError(RESOURCE_CONFLICT, duplicate_message(arn, name, holder))

    async def _claim(self, key: str, row: StoredMapping) -> None:
        """Make ``row.uuid`` the holder of ``key``, or raise Lambda's error."""
        for _ in range(_CLAIM_ATTEMPTS):
            if await self.registry.claim(key, row.uuid):
                return
            holder = await self.registry.read_claim(key)
            if holder is None:
                continue  # released meanwhile: claim it afresh
            entry = None if holder == row.uuid else await self.registry.read(holder)
            verdict = claim_verdict(key, row.uuid, holder, entry)
            if verdict is Verdict.OURS:
                return
            if verdict is Verdict.HELD:
                raise self._duplicate(row, holder)
            if verdict is Verdict.FENCE_MISSING:
                if not await self.registry.fence(holder, row.uuid, self.clock()):
                    continue  # its row appeared meanwhile: judge again
            elif verdict is Verdict.FENCE_MOVED:
                assert isinstance(entry, RegistryRow)
                try:  # the same document, one version up: its pending write fails
                    await self.registry.write(entry.mapping, entry.version, written_at=self.clock())
                except RegistryConflict:
                    continue
            if await self.registry.claim(key, row.uuid, previous=holder):
                log.info("mapping %s took the claim of %s from %s (%s)", row.uuid, key, holder,
                         verdict.value)  # fmt: skip
                return
        raise MappingError(RESOURCE_IN_USE, CONFLICT_MESSAGE)

    async def _lost(self, row: StoredMapping, fresh: str | None) -> MappingError:
        """The error for a write that lost, and the claim it took for it given back."""
        entry = await self.registry.read(row.uuid)
        if isinstance(entry, Fence):  # another create took the claim while this one wrote
            return self._duplicate(row, entry.superseded_by)
        live = entry if isinstance(entry, RegistryRow) and not entry.mapping.deleted else None
        if fresh is not None and (live is None or claim_key(live.mapping) != fresh):
            await self._release(fresh, row.uuid)  # not what its row holds: nobody's
        return MappingError(RESOURCE_IN_USE, CONFLICT_MESSAGE)

    async def _release(self, key: str, uuid: str) -> None:
        """Best effort: a claim left behind names a tombstone, and is taken over later."""
        try:
            await self.registry.release(key, uuid)
        except LeaseStoreError as error:
            log.warning("mapping %s: the claim of %s was not released: %s", uuid, key, error)

    async def poll_once(self, runtime: Runtime) -> None:
        """Apply every row not applied yet; publish local mappings the registry lacks;
        remove old tombstones."""
        before = dict(self.applied)
        contents = await self.registry.read_contents()
        rows = contents.rows
        for uuid, row in rows.items():
            if self.applied.get(uuid) == row.version:
                continue
            self._check_duplicate(runtime, row)
            if await runtime.apply_shared(row.mapping):
                self.applied[uuid] = row.version
                self.keys[uuid] = None if row.mapping.deleted else claim_key(row.mapping)
        for uuid, version in before.items():  # removed tombstones; not what was published since
            if uuid not in rows and self.applied.get(uuid) == version:
                del self.applied[uuid]
                self.keys.pop(uuid, None)
        if self.polls == 0:
            await self._publish_unshared(runtime, set(rows))
        self.polls += 1
        await self._sweep(list(rows.values()), list(contents.fences.values()))

    def _check_duplicate(self, runtime: Runtime, row: RegistryRow) -> None:
        """The claims should make this impossible; say so clearly if it happens anyway (a
        worker of an earlier version, a claim removed by hand). The runtime keeps the new
        mapping with a PROBLEM."""
        key = None if row.mapping.deleted else claim_key(row.mapping)
        if key is None:
            return
        for m in runtime.records():
            if m.uuid != row.mapping.uuid and m.pending != "Deleting" and _record_key(m) == key:
                log.error(
                    "mapping %s from the fleet's registry has the function and stream of "
                    "mapping %s, which this worker runs (%s): the registry's claim did not "
                    "prevent it; delete one of them",
                    row.mapping.uuid, m.uuid, key,
                )  # fmt: skip

    async def _publish_unshared(self, runtime: Runtime, shared: set[str]) -> None:
        for m in runtime.records():
            if m.origin != "api" or m.uuid in shared:
                continue
            try:
                await self.publish(m.row())
            except MappingError as error:
                log.warning("mapping %s: not shared with the fleet yet: %s", m.uuid, error)

    async def _sweep(self, rows: list[RegistryRow], fences: list[Fence]) -> None:
        """Remove tombstones and fences older than ``tombstone_ttl``; stamp a tombstone
        written without a time (by an earlier version) so that it can age."""
        now = self.clock()
        for row in rows:
            if not row.mapping.deleted:
                continue
            if row.written_at is None:
                await self.registry.stamp(row, now)
            elif tombstone_expired(row.written_at, now, self.tombstone_ttl) and (
                await self.registry.remove(row)
            ):
                log.info("mapping %s: its tombstone is removed", row.mapping.uuid)
        for fence in fences:
            if tombstone_expired(fence.written_at, now, self.tombstone_ttl):
                await self.registry.remove(fence)

    async def run(self, runtime: Runtime) -> None:
        """Poll until cancelled; an unreachable registry is logged and polled again."""
        while True:
            if runtime.reconciled:
                try:
                    await self.poll_once(runtime)
                except LeaseStoreError as error:
                    log.warning("the fleet's mapping registry cannot be read: %s", error)
            await anyio.sleep(self.interval)
