"""The long-running daemon behind ``kinesis-esm run``: config file in, engine and runtime
running, the control plane serving; clean stop on SIGTERM or SIGINT (exit 0)."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from .._errors import StreamNotFoundError
from .._redact import install_redaction
from .._statistics import EngineStatistics
from ..config import ConfigError, DaemonConfig, EventSourceMappingConfig, KinesisConfig
from ..control import ControlServer
from ..control._emf import run_emf
from ..engine import Engine
from ..engine._fleet import Fleet
from ..leases import LeaseStoreError, LeaseStoreUnavailableError
from ..runtime._fleet_sync import FleetMappingSync
from ..runtime._runtime import Runtime
from ..source import KinesisSource
from ..state import SQLiteCheckpointStore
from ..state._dynamodb import DynamoDBLeaseStore
from ..state._lock import StateFileLock
from ..state._mappings import MappingStore
from ..state._registry import MappingRegistry

__all__ = ["KinesisStreamCheck", "format_progress", "run_daemon"]

log = logging.getLogger("kinesis_esm.daemon")


def format_progress(stats: EngineStatistics, previous: dict[str, int], elapsed: float) -> str:
    """One line per mapping: records/s since the last line, and iterator age per shard."""
    lines = []
    for m in stats.mappings:
        done = m.counters.succeeded_events
        rate = (done - previous.get(m.uuid, done)) / elapsed if elapsed > 0 else 0.0
        previous[m.uuid] = done
        ages = " ".join(
            f"{s.shard_id[-4:]}:{s.iterator_age_ms if s.iterator_age_ms is not None else '-'}ms"
            for s in sorted(m.shards, key=lambda s: s.shard_id)
        )
        lines.append(
            f"{m.function_name} [{m.state}] {rate:,.0f} rec/s, {done:,} done, "
            f"{m.counters.errors:,} error{'' if m.counters.errors == 1 else 's'} | "
            f"iterator age {ages or '-'} | {m.last_processing_result}"
        )
    return "\n".join(lines)


class KinesisStreamCheck:
    """Whether a mapping's stream exists, for CreateEventSourceMapping's "Stream not found".
    Answers None (unknown) when Kinesis does not answer in time or fails otherwise."""

    def __init__(self, kinesis: KinesisConfig, timeout: float = 5.0) -> None:
        self.kinesis = kinesis
        self.timeout = timeout
        self._sources: dict[str, KinesisSource] = {}

    async def __call__(self, mapping: EventSourceMappingConfig) -> bool | None:
        region = self.kinesis.region or mapping.region
        source = self._sources.get(region)
        if source is None:
            source = KinesisSource(
                endpoint_url=self.kinesis.endpoint_url,
                region=region,
                call_timeout=self.timeout,
                fast_parse=False,
            )
            self._sources[region] = source
        with anyio.move_on_after(self.timeout + 1):
            try:
                await source.list_shards(mapping.stream_arn)
                return True
            except StreamNotFoundError:
                return False
            except Exception as exc:  # unknown: let the mapping report it while it runs
                log.warning("cannot check stream %s: %s", mapping.stream_arn, exc)
        return None

    async def aclose(self) -> None:
        for source in self._sources.values():
            await source.aclose()
        self._sources.clear()


async def run_daemon(
    config: DaemonConfig,
    *,
    log_interval: float = 60.0,
    stop_after: float | None = None,
    on_progress: Callable[[str], None] | None = None,
    handlers: Mapping[str, Callable[..., Any]] | None = None,
    shutdown: anyio.Event | None = None,
    handle_signals: bool = True,
    emf_interval: float = 0.0,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> int:
    """Run until SIGTERM / SIGINT (``handle_signals``), ``shutdown`` is set, or ``stop_after``
    seconds; then stop cleanly. ``task_status.started`` gets the control plane's URL.

    ``handlers`` replace importing the declared functions' handlers (embedding, tests).
    ``emf_interval`` > 0 writes CloudWatch metrics (Embedded Metric Format) to stdout.
    """
    install_redaction()  # an endpoint's error text may quote the request's credentials
    # One local worker per state file; a fleet's workers keep their checkpoints in DynamoDB.
    lock = StateFileLock(config.state.path)
    if not config.coordination.fleet:
        lock.acquire()  # StateFileInUseError (an OSError): one line, exit 2
    store = SQLiteCheckpointStore(config.state.path)
    stream_check = KinesisStreamCheck(config.kinesis)
    report = on_progress or log.info
    engine = Engine(
        kinesis=config.kinesis, checkpoint_store=store, coordination=config.coordination
    )
    sync = _mapping_sync(engine, config)
    runtime = Runtime(
        engine,
        config,
        store=MappingStore(store.connection),
        handlers=handlers,
        stream_check=stream_check,
        shared=sync,
    )
    try:
        if engine.fleet is not None and not await _join_fleet(engine.fleet):
            return 1
        # The port first: a busy one fails before any mapping starts. API calls before the
        # runtime is up, or while it stops, get a ServiceException.
        async with ControlServer(runtime, config.control) as server, engine, runtime:
            await runtime.reconcile()
            for view in runtime.mappings():
                log.info(
                    "mapping %s: %s -> %s (%s)",
                    view.uuid,
                    view.config.event_source_arn,
                    view.config.function_name,
                    "enabled" if view.config.enabled else "disabled",
                )
            log.info("control plane listening on %s", server.url)
            task_status.started(server.url)
            if emf_interval > 0:
                log.info("CloudWatch metrics (EMF) on stdout every %.0f s", emf_interval)
            await _serve(
                engine,
                runtime,
                sync,
                shutdown,
                handle_signals,
                (log_interval, emf_interval, stop_after),
                report,
            )
            log.info("stopping: finishing in-flight invocations, writing final checkpoints")
        log.info("stopped cleanly")
    finally:
        with anyio.CancelScope(shield=True):
            await stream_check.aclose()
            if engine.fleet is not None:
                await engine.fleet.aclose()
        await store.aclose()
        lock.release()
    return 0


def _mapping_sync(engine: Engine, config: DaemonConfig) -> FleetMappingSync | None:
    """A fleet's workers share their API mappings through the lease table (docs/fleet.md)."""
    if engine.fleet is None or not isinstance(engine.fleet.store, DynamoDBLeaseStore):
        return None
    interval = float(config.coordination.mapping_sync_interval)
    return FleetMappingSync(MappingRegistry(engine.fleet.store), interval=interval)


async def _join_fleet(fleet: Fleet) -> bool:
    """Check the lease table before anything starts. A missing permission (or a table of
    another schema) is a ConfigError: one line, exit 2, nothing to retry. An unreachable
    table, after the fleet's own retries, is False: exit 1 (a supervisor may try again)."""
    try:
        await fleet.start()
    except LeaseStoreUnavailableError as error:
        log.error("coordination: %s", error)
        return False
    except LeaseStoreError as error:
        raise ConfigError(str(error), parameter="coordination") from None
    return True


async def _serve(
    engine: Engine,
    runtime: Runtime,
    sync: FleetMappingSync | None,
    shutdown: anyio.Event | None,
    handle_signals: bool,
    intervals: tuple[float, float, float | None],  # progress log, EMF, stop after
    report: Callable[[str], None],
) -> None:
    log_interval, emf_interval, stop_after = intervals
    async with anyio.create_task_group() as tg:

        async def wait_for_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("%s: stopping", signal.Signals(signum).name)
                    break
            tg.cancel_scope.cancel()

        async def wait_for_shutdown(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        async def progress() -> None:
            previous: dict[str, int] = {}
            last = time.monotonic()
            while True:
                await anyio.sleep(log_interval)
                now = time.monotonic()
                line = format_progress(engine.statistics(), previous, now - last)
                if line:  # nothing to say while no mapping exists
                    report(line)
                last = now

        if handle_signals:
            tg.start_soon(wait_for_signal)
        if shutdown is not None:
            tg.start_soon(wait_for_shutdown, shutdown)
        if log_interval > 0:
            tg.start_soon(progress)
        if sync is not None:
            tg.start_soon(sync.run, runtime)
        if emf_interval > 0:
            tg.start_soon(run_emf, runtime.statuses, emf_interval)
        if stop_after is not None:
            await anyio.sleep(stop_after)
            tg.cancel_scope.cancel()
