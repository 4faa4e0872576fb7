"""The engine: runs event source mappings in one process, started and stopped with ``async with``.

A clean stop (leaving the ``async with``, or SIGTERM in the daemon) stops polling, lets in-flight
invocations finish (bounded by the function timeout), writes final checkpoints, and returns.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from .._redact import install_redaction
from .._statistics import EngineStatistics, MappingStatistics
from ..config import (
    CoordinationConfig,
    EventSourceMappingConfig,
    KinesisConfig,
    unsupported_features,
)
from ..functions import CallableFunction, Function
from ..pipeline._budget import ShardReadBudget
from ..pipeline._settings import PollSettings, RetrySettings
from ..source import KinesisSource, StreamSource
from ..source._consumers import FanOutClient
from ..state import CheckpointStore, MemoryCheckpointStore, SQLiteCheckpointStore
from ._fleet import Fleet
from ._fleet_mapping import FleetMappingRunner
from ._mapping import MappingRunner

__all__ = ["SUPPORTED_FEATURES", "Engine"]

log = logging.getLogger("kinesis_esm.engine")

# Parameters whose non-default values this build implements; the rest are rejected clearly.
SUPPORTED_FEATURES: frozenset[str] = frozenset(
    {
        "parallelization_factor",
        "maximum_retry_attempts",
        "maximum_record_age_in_seconds",
        "bisect_batch_on_function_error",
        "function_response_types",
        "destination_config",
        "filter_criteria",
        "consumer_arn",
        "tumbling_window_in_seconds",
    }
)


class Engine:
    """Runs mappings. ``async with Engine(...) as engine: await engine.add_mapping(...)``."""

    def __init__(
        self,
        *,
        kinesis: KinesisConfig | None = None,
        checkpoint_store: CheckpointStore | str | None = None,
        source: StreamSource | None = None,
        poll_settings: PollSettings | None = None,
        retry_settings: RetrySettings | None = None,
        shard_sync_interval: float = 60.0,
        stop_grace: float | None = None,
        coordination: CoordinationConfig | None = None,
    ) -> None:
        """``coordination``: ``backend = "dynamodb"`` makes this engine one worker of a fleet
        (its mappings' shards are leased through the DynamoDB table; see docs/fleet.md)."""
        install_redaction()  # no credential reaches a log line, embedded or in the daemon
        self.kinesis = kinesis or KinesisConfig()
        if isinstance(checkpoint_store, str):
            checkpoint_store = SQLiteCheckpointStore(checkpoint_store)
        self.store: CheckpointStore = checkpoint_store or MemoryCheckpointStore()
        self._source = source
        self._sources: dict[str | None, KinesisSource] = {}
        self._fan_outs: dict[str | None, FanOutClient] = {}  # enhanced fan-out, per region
        # every mapping of this engine reading one shard shares its five reads per second
        self.read_budget = ShardReadBudget()
        self.poll_settings = poll_settings or PollSettings()
        self.retry_settings = retry_settings or RetrySettings()
        self.shard_sync_interval = shard_sync_interval
        self._stop_grace = stop_grace
        self.coordination = coordination or CoordinationConfig()
        self.fleet = Fleet(self.coordination) if self.coordination.fleet else None
        self._mappings: dict[str, MappingRunner] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Engine:
        if self.fleet is not None:
            await self.fleet.start()  # the lease table: a missing permission fails here, once
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        assert tg is not None
        try:
            if exc_type is None:
                self._request_stop(tg)
            else:
                tg.cancel_scope.cancel()
            return await tg.__aexit__(exc_type, exc, tb)
        finally:
            for source in self._sources.values():
                with anyio.CancelScope(shield=True):
                    await source.aclose()
            self._sources.clear()
            for fan_out in self._fan_outs.values():
                with anyio.CancelScope(shield=True):
                    await fan_out.aclose()
            self._fan_outs.clear()
            if self.fleet is not None:
                with anyio.CancelScope(shield=True):
                    await self.fleet.aclose()

    def _request_stop(self, tg: anyio.abc.TaskGroup) -> None:
        runners = list(self._mappings.values())
        for runner in runners:
            runner.stop()
        grace = self._stop_grace
        if grace is None:
            grace = max((r.function.timeout for r in runners), default=0.0) + 5.0
            if self.fleet is not None:  # the hand-offs' final writes
                grace += 2 * self.fleet.call_timeout

        async def watchdog() -> None:
            with anyio.move_on_after(grace):
                for runner in runners:
                    await runner.stopped.wait()
                return
            log.error("in-flight invocations did not finish within %.1fs; cancelling", grace)
            tg.cancel_scope.cancel()

        tg.start_soon(watchdog)

    async def stop(self) -> None:
        """Stop every mapping gracefully and wait for them (the engine stays usable)."""
        runners = list(self._mappings.values())
        for runner in runners:
            runner.stop()
        for runner in runners:
            await runner.stopped.wait()

    def _source_for(self, config: EventSourceMappingConfig) -> StreamSource:
        if self._source is not None:
            return self._source
        region = self.kinesis.region or config.region
        source = self._sources.get(region)
        if source is None:
            source = KinesisSource(endpoint_url=self.kinesis.endpoint_url, region=region)
            self._sources[region] = source
        return source

    def _fan_out_for(self, config: EventSourceMappingConfig) -> FanOutClient | None:
        if config.consumer_arn is None and config.register_consumer is None:
            return None
        region = self.kinesis.region or config.region
        fan_out = self._fan_outs.get(region)
        if fan_out is None:
            endpoint = getattr(self._source, "endpoint_url", None) or self.kinesis.endpoint_url
            fan_out = FanOutClient(endpoint_url=endpoint, region=region)
            self._fan_outs[region] = fan_out
        return fan_out

    async def add_mapping(
        self,
        config: EventSourceMappingConfig,
        function: Function | Callable[..., Any],
        *,
        function_timeout: float = 3.0,
        invoke_identity_arn: str | None = None,
        owns_function: bool = False,
    ) -> str:
        """Start a mapping; returns its UUID. ``function`` may be a plain callable.

        ``owns_function``: the mapping closes the function (its ``aclose()``, if it has one)
        once it has stopped; otherwise the caller does."""
        if self._tg is None:
            raise RuntimeError("use the engine inside 'async with'")
        unsupported_features(config, SUPPORTED_FEATURES)
        if not hasattr(function, "invoke"):
            function = CallableFunction(
                function,
                name=config.function_name,
                timeout=function_timeout,
                arn=f"arn:aws:lambda:{config.region}:{config.account_id}:function:"
                f"{config.function_name}",
            )
        runner_class: Callable[..., MappingRunner] = MappingRunner
        if self.fleet is not None:
            runner_class = functools.partial(FleetMappingRunner, fleet=self.fleet)
        runner = runner_class(
            config,
            function,
            self._source_for(config),
            self.store,
            poll_settings=self.poll_settings,
            retry_settings=self.retry_settings,
            shard_sync_interval=self.shard_sync_interval,
            invoke_identity_arn=invoke_identity_arn,
            owns_function=owns_function,
            fan_out=self._fan_out_for(config),
            read_budget=self.read_budget,
        )
        if runner.uuid in self._mappings:
            raise ValueError(f"mapping {runner.uuid} is already running")
        self._mappings[runner.uuid] = runner
        if config.enabled:
            self._tg.start_soon(runner.run)
        else:
            runner.state = "Disabled"
            runner.stopped.set()  # nothing runs, so a stop has nothing to wait for
        return runner.uuid

    async def remove_mapping(self, uuid: str, *, delete_state: bool = False) -> MappingStatistics:
        """Stop one mapping cleanly; returns its final statistics."""
        runner = self._mappings.pop(uuid)
        runner.stop()
        await runner.stopped.wait()
        if delete_state:
            await self.store.delete_mapping(uuid)
            if self.fleet is not None:
                await self.fleet.forget(uuid)
        return runner.statistics()

    def mapping_statistics(self, uuid: str) -> MappingStatistics:
        return self._mappings[uuid].statistics()

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(tuple(r.statistics() for r in self._mappings.values()))
