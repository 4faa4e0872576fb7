"""The mapping lifecycle over the Engine: Lambda's states, live changes, persistence, reconcile.

States (reference 1.4): create answers ``Creating`` (``Disabled`` with Enabled=false), an update
``Updating`` / ``Enabling`` / ``Disabling``, a delete ``Deleting``; each settles to ``Enabled``
(once the mapping has listed its shards) or ``Disabled``. While the runtime is still applying a
change to a mapping, another update or delete of it gets Lambda's ResourceInUseException.

A live update stops the mapping's runner (in-flight invocations finish, final checkpoints are
written) and starts a new one with the new settings and the same UUID, so it resumes after its
checkpoints. Disable keeps the checkpoints; delete removes them.

Persistence and reconcile: every mapping has a row in the MappingStore. At start, mappings
declared in the config file are applied; an API change to one of them is kept across restarts
as long as the file's declaration of it is unchanged (when it changes, the file wins). A
config-file mapping deleted through the API stays deleted until its declaration changes; one
removed from the file is dropped (its checkpoints are kept: re-adding it resumes). Mappings
created through the API are restored from their rows.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid as _uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import anyio
import anyio.abc

from ..config import (
    INVALID_PARAMETER_VALUE,
    ConfigError,
    DaemonConfig,
    EventSourceMappingConfig,
    stable_uuid,
)
from ..engine import Engine
from ..state._mappings import MappingStore, StoredMapping, config_from_dict, config_to_dict
from ._checks import check_capacity, check_conflict, check_supported
from ._destinations import DestinationPolicy
from ._functions import DeclaredFunctions
from ._model import (
    DELETE_IN_USE_MESSAGE,
    RESOURCE_IN_USE,
    SERVICE,
    UPDATING_MESSAGE,
    MappingError,
    MappingRecord,
    MappingStatus,
    MappingView,
    MeteredFunction,
    function_arn,
)
from ._queries import RuntimeQueries, SharedMappings, validated
from ._references import resolve_function

__all__ = ["MappingError", "MappingStatus", "MappingView", "Runtime", "SharedMappings"]

log = logging.getLogger("kinesis_esm.runtime")

StreamCheck = Callable[[EventSourceMappingConfig], Awaitable[bool | None]]


class Runtime(RuntimeQueries):
    """Owns the mappings of one Engine. ``async with Runtime(engine, config) as rt: ...``

    ``handlers`` replace importing the declared functions' handlers (embedding, tests); a
    function must still be declared in ``config``. ``stream_check`` answers False for a stream
    that does not exist (create then fails like Lambda's), None when it cannot tell.
    """

    def __init__(
        self,
        engine: Engine,
        config: DaemonConfig,
        *,
        store: MappingStore | None = None,
        handlers: Mapping[str, Callable[..., Any]] | None = None,
        stream_check: StreamCheck | None = None,
        settle_interval: float = 0.2,
        clock: Callable[[], float] = time.time,
        shared: SharedMappings | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.store = store or MappingStore.memory()
        self.functions = DeclaredFunctions(config, handlers)
        self._destinations = DestinationPolicy.of(config)
        self._stream_check = stream_check
        self._settle_interval = settle_interval
        self._clock = clock
        self._shared = shared
        self._mappings: dict[str, MappingRecord] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._closing = False
        self._settle_scope = anyio.CancelScope()
        self.reconciled = False

    async def __aenter__(self) -> Runtime:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._settle_loop)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        """Refuses new operations, lets the ones applying finish, and stops."""
        self._closing = True
        self._settle_scope.cancel()
        tg, self._tg = self._tg, None
        assert tg is not None
        try:
            return await tg.__aexit__(*exc_info)
        finally:
            # A disabled mapping's runner never ran, so it never reports "stopped": the
            # engine's graceful stop would wait out its grace period for it.
            with anyio.CancelScope(shield=True):
                for m in self._mappings.values():
                    if not m.config.enabled and self._stats(m) is not None:
                        await self.engine.remove_mapping(m.uuid)

    # operations

    async def create(
        self, fields: Mapping[str, Any], extras: Mapping[str, Any] | None = None
    ) -> MappingView:
        """Lambda's CreateEventSourceMapping: ``fields`` are EventSourceMappingConfig fields."""
        self._check_open()
        uuid = str(_uuid.uuid4())
        config = validated(lambda: EventSourceMappingConfig(**{**fields, "uuid": uuid}))
        resolved = resolve_function(self.config, config)
        fn, arn = resolved.config, resolved.arn
        check_conflict(self._mappings.values(), config, arn, None)
        check_supported(config)
        self._destinations.check(config.destination_config.on_failure.destination)
        check_capacity(self._mappings.values(), self.config.control.max_mappings)
        self.functions.check(fn)
        if self._stream_check is not None and await self._stream_check(config) is False:
            message = f"Stream not found: {config.event_source_arn}"
            raise MappingError(INVALID_PARAMETER_VALUE, message)
        # again: others may have been created while the stream check awaited
        check_conflict(self._mappings.values(), config, arn, None)
        check_capacity(self._mappings.values(), self.config.control.max_mappings)
        now = self._clock()
        m = MappingRecord(uuid, "api", config, None, fn, arn, dict(extras or {}), now, now)
        m.pending = "Creating" if config.enabled else "Disabled"
        await self._publish(m, m.row())
        self.store.put(m.row())  # first: a row that cannot be stored leaves nothing registered
        self._mappings[uuid] = m
        self._spawn(m, self._start(m))
        return self._view(m)

    async def update(
        self, uuid: str, changes: Mapping[str, Any], extras: Mapping[str, Any] | None = None
    ) -> MappingView:
        """Lambda's UpdateEventSourceMapping: fields not in ``changes`` keep their values."""
        self._check_open()
        m = self._find(uuid)
        if m.busy:
            raise MappingError(RESOURCE_IN_USE, UPDATING_MESSAGE)
        config = validated(lambda: m.config.replace(**changes))
        resolved = resolve_function(self.config, config)
        fn, arn = resolved.config, resolved.arn
        check_conflict(self._mappings.values(), config, arn, uuid)
        check_supported(config)
        destination = config.destination_config.on_failure.destination
        if destination != m.config.destination_config.on_failure.destination:
            self._destinations.check(destination)
        self.functions.check(fn)
        merged, modified = {**m.extras, **(extras or {})}, self._clock()
        changed = dataclasses.replace(
            m, config=config, function=fn, function_arn=arn, extras=merged, last_modified=modified
        )
        await self._publish(m, changed.row())
        self.store.put(changed.row())  # stored first, then applied: never half-applied
        was, now = m.config.enabled, config.enabled
        m.pending = "Disabling" if was > now else "Enabling" if now > was else "Updating"
        m.config, m.function, m.function_arn, m.problem = config, fn, arn, None
        m.extras, m.last_modified = merged, modified
        self._spawn(m, self._restart(m))
        return self._view(m)

    async def delete(self, uuid: str) -> MappingView:
        """Lambda's DeleteEventSourceMapping: stops the mapping and removes its checkpoints."""
        self._check_open()
        m = self._find(uuid)
        if m.busy:
            raise MappingError(RESOURCE_IN_USE, DELETE_IN_USE_MESSAGE)
        await self._publish(m, m.row(deleted=True))
        m.pending = "Deleting"
        m.last_modified = self._clock()
        self._spawn(m, self._delete(m))
        return self._view(m)

    async def reconcile(self) -> None:
        """Start the config file's mappings and the stored ones (see the module docstring)."""
        rows = {row.uuid: row for row in self.store.load()}
        now = self._clock()
        for declared_config in self.config.event_source_mappings:
            uuid = declared_config.uuid or stable_uuid(
                declared_config.function_name, declared_config.event_source_arn
            )
            declared_config = declared_config.replace(uuid=uuid)
            declared = config_to_dict(declared_config)
            row = rows.pop(uuid, None)
            if row is not None and row.origin == "config" and row.declared == declared:
                if row.deleted:
                    log.info("mapping %s was deleted through the API: not started", uuid)
                    continue
                await self._register(self._row_config(row) or declared_config, row, declared)
                continue
            if row is not None:
                log.info("mapping %s: its declaration in the config file changed; it wins", uuid)
            created = now if row is None else row.created_at
            fresh = StoredMapping(uuid, "config", declared, declared, {}, created, now)
            await self._register(declared_config, fresh, declared)
        for row in rows.values():
            if row.origin == "config":
                log.info("mapping %s is no longer in the config file: removed", row.uuid)
                self.store.delete(row.uuid)
            elif not row.deleted and (config := self._row_config(row)) is not None:
                await self._register(config, row, None)
        self.reconciled = True

    async def apply_shared(self, row: StoredMapping) -> bool:
        """Apply another worker's change from the fleet's registry without publishing it.
        False: not now (the mapping is busy, or the runtime is not running); ask again."""
        if self._closing or self._tg is None or not self.reconciled:
            return False
        m = self._mappings.get(row.uuid)
        if m is not None and m.busy:
            return False
        if row.deleted:
            if m is not None:
                m.pending, m.last_modified = "Deleting", row.last_modified
                self._spawn(m, self._delete(m))
            return True
        config = self._row_config(row)
        if config is None or (m is None and row.origin == "config"):
            return True  # a config-file mapping runs only where a file declares it
        if m is None:
            await self._register(config, row, None)
            return True
        if m.origin != row.origin or (m.origin == "config" and m.declared != row.declared):
            return True  # this worker's file declares it otherwise: the file wins here
        if config == m.config and row.extras == m.extras:
            return True
        try:
            resolved = resolve_function(self.config, config)
        except MappingError as err:  # e.g. a function this worker does not declare
            log.error("mapping %s: another worker's change cannot run here: %s", m.uuid, err)
            return True
        was, now = m.config.enabled, config.enabled
        m.pending = "Disabling" if was > now else "Enabling" if now > was else "Updating"
        m.config, m.function, m.function_arn = config, resolved.config, resolved.arn
        m.problem = None
        m.extras, m.last_modified = dict(row.extras), row.last_modified
        self.store.put(m.row())
        self._spawn(m, self._restart(m))
        return True

    # internals

    async def _publish(self, m: MappingRecord, row: StoredMapping) -> None:
        """Share a change with the fleet before applying it; busy meanwhile, so no second
        change of the same mapping starts while the write is under way."""
        if self._shared is None:
            return
        busy, m.busy = m.busy, True
        try:
            await self._shared.publish(row)
        finally:
            m.busy = busy

    def _check_open(self) -> None:
        if self._closing or self._tg is None:
            raise MappingError(SERVICE, "kinesis-esm is starting or stopping: try again")

    def _row_config(self, row: StoredMapping) -> EventSourceMappingConfig | None:
        try:
            return config_from_dict(row.config)
        except (ConfigError, TypeError, KeyError) as exc:
            log.error("mapping %s: its stored configuration is invalid (%s)", row.uuid, exc)
            return None

    async def _register(
        self, config: EventSourceMappingConfig, row: StoredMapping, declared: dict[str, Any] | None
    ) -> None:
        """Add a mapping at start; a stored API mapping that cannot run is kept, with a problem."""
        fn = self.config.function(config.function_name)
        arn = function_arn(config, fn)
        m = MappingRecord(
            row.uuid, row.origin, config, declared, fn, arn, dict(row.extras),
            row.created_at, row.last_modified,
        )  # fmt: skip
        try:
            resolved = resolve_function(self.config, config)
            fn, m.function_arn = resolved.config, resolved.arn
            check_conflict(self._mappings.values(), config, m.function_arn, m.uuid)
            check_supported(config)
            if m.origin == "api":  # the allow-list may have changed since it was created
                self._destinations.check(config.destination_config.on_failure.destination)
            self.functions.check(fn)
        except MappingError as err:
            if m.origin == "config":  # the daemon does not start, as with any config error
                where = f"event_source_mappings (uuid {m.uuid})"
                raise ConfigError(err.message, parameter=where, code=err.code) from None
            m.problem = f"PROBLEM: {err.message}"
            log.error("mapping %s not started: %s", m.uuid, err.message)
        self._mappings[m.uuid] = m
        self.store.put(m.row())
        if m.problem is None:
            await self._start(m)

    def _spawn(self, m: MappingRecord, operation: Coroutine[Any, Any, None]) -> None:
        assert self._tg is not None
        m.busy = True

        async def run() -> None:
            try:
                await operation
            except Exception:
                log.exception("mapping %s: applying %s failed", m.uuid, m.pending)
                m.problem = "PROBLEM: internal error applying the change (see the daemon's log)"
            finally:
                m.busy = False

        self._tg.start_soon(run)

    async def _start(self, m: MappingRecord) -> None:
        fn = m.function
        assert fn is not None
        function = MeteredFunction(self.functions.build(fn, m.function_arn), m.invocations)
        await self.engine.add_mapping(
            m.config, function, invoke_identity_arn=fn.role, owns_function=True
        )

    async def _stop(self, m: MappingRecord, *, delete_state: bool) -> None:
        stats = self._stats(m)
        if stats is not None:
            m.carry(stats)
            await self.engine.remove_mapping(m.uuid, delete_state=delete_state)
        elif delete_state:  # never started (a problem): its checkpoints may still be stored
            await self.engine.store.delete_mapping(m.uuid)

    async def _restart(self, m: MappingRecord) -> None:
        await self._stop(m, delete_state=False)
        await self._start(m)

    async def _delete(self, m: MappingRecord) -> None:
        await self._stop(m, delete_state=True)
        del self._mappings[m.uuid]
        if m.origin == "config":  # a tombstone: stays deleted until the declaration changes
            self.store.put(m.row(deleted=True))
        else:
            self.store.delete(m.uuid)

    async def _settle_loop(self) -> None:
        """Moves settled mappings out of their transitional states (and stamps LastModified)."""
        with self._settle_scope:
            while True:
                await anyio.sleep(self._settle_interval)
                for m in list(self._mappings.values()):
                    if m.pending is not None and m.pending != "Deleting" and not m.busy:
                        m.state(self._stats(m), self._settled(m))
