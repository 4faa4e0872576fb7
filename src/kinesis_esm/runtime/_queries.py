"""The runtime's queries (Lambda's Get and List, the statuses behind /metrics and /status),
the views they answer with, and the small contracts the runtime shares with its helpers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from .._statistics import MappingStatistics
from ..config import INVALID_PARAMETER_VALUE, ConfigError, DaemonConfig, EventSourceMappingConfig
from ..engine import Engine
from ..state._mappings import MappingStore, StoredMapping
from ._checks import config_error
from ._model import (
    NOT_FOUND_MESSAGE,
    RESOURCE_NOT_FOUND,
    USER_ACTION,
    MappingError,
    MappingRecord,
    MappingStatus,
    MappingView,
)
from ._references import function_filter

__all__ = ["RuntimeQueries", "SharedMappings", "validated"]


class SharedMappings(Protocol):
    """Where a fleet shares mapping changes (runtime/_fleet_sync): ``publish`` writes one
    before it is applied here, or raises MappingError (another worker changed it first)."""

    async def publish(self, row: StoredMapping) -> None: ...


def validated(build: Callable[[], EventSourceMappingConfig]) -> EventSourceMappingConfig:
    """The configuration ``build`` makes, or Lambda's error. The wire bounds every input; this
    is the net under it: no value may reach the API's answer as a 500."""
    try:
        return build()
    except ConfigError as err:
        raise config_error(err) from None
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        message = f"A parameter is not valid ({type(exc).__name__}: {str(exc)[:200]})"
        raise MappingError(INVALID_PARAMETER_VALUE, message) from None


class RuntimeQueries:
    """What the runtime answers about its mappings; the operations are in ``Runtime``."""

    engine: Engine
    config: DaemonConfig
    store: MappingStore
    _mappings: dict[str, MappingRecord]
    _clock: Callable[[], float]

    def get(self, uuid: str) -> MappingView:
        return self._view(self._find(uuid))

    def mappings(
        self, *, event_source_arn: str | None = None, function_name: str | None = None
    ) -> list[MappingView]:
        """Oldest first; ``function_name`` may be a name or ARN of a declared function."""
        wanted = None if function_name is None else function_filter(self.config, function_name)
        return [
            self._view(m)
            for m in sorted(self._mappings.values(), key=lambda m: (m.created_at, m.uuid))
            if (event_source_arn is None or m.config.event_source_arn == event_source_arn)
            and (wanted is None or wanted.matches(m.function, m.function_arn))
        ]

    def records(self) -> list[MappingRecord]:
        """The mappings as this runtime keeps them (the fleet's sync publishes from these)."""
        return list(self._mappings.values())

    def statuses(self) -> list[MappingStatus]:
        result = []
        for view in self.mappings():
            m = self._mappings[view.uuid]
            result.append(m.status(view, self._stats(m)))
        return result

    def _find(self, uuid: str) -> MappingRecord:
        m = self._mappings.get(uuid)
        if m is None:
            raise MappingError(RESOURCE_NOT_FOUND, NOT_FOUND_MESSAGE)
        return m

    def _stats(self, m: MappingRecord) -> MappingStatistics | None:
        try:
            return self.engine.mapping_statistics(m.uuid)
        except KeyError:
            return None

    def _settled(self, m: MappingRecord) -> Callable[[], None]:
        def settled() -> None:
            m.last_modified = self._clock()
            self.store.put(m.row())

        return settled

    def _view(self, m: MappingRecord) -> MappingView:
        stats = self._stats(m)
        return MappingView(
            uuid=m.uuid,
            config=m.config,
            state=m.state(stats, self._settled(m)),
            state_transition_reason=USER_ACTION,
            last_modified=m.last_modified,
            function_arn=m.function_arn,
            event_source_mapping_arn=re.sub(
                r":function:.*$", f":event-source-mapping:{m.uuid}", m.function_arn
            ),
            last_processing_result=m.last_result(stats),
            extras=dict(m.extras),
            created_at=m.created_at,
        )
