"""The long-running daemon behind ``kinesis-esm run``: config file in, engine running, clean
stop on SIGTERM or SIGINT (exit 0)."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable

import anyio

from ._config import DaemonConfig
from ._engine import Engine
from ._statistics import EngineStatistics
from .functions import CallableFunction, load_handler
from .state import SQLiteCheckpointStore

__all__ = ["build_functions", "format_progress", "run_daemon"]

log = logging.getLogger("kinesis_esm.daemon")


def build_functions(config: DaemonConfig) -> dict[str, CallableFunction]:
    """Load the handlers the mappings use; only functions declared in the file are loaded."""
    functions: dict[str, CallableFunction] = {}
    for mapping in config.event_source_mappings:
        declared = config.function(mapping.function_name)
        if declared is None:  # the config layer rejects this earlier; keep the guard honest
            raise ValueError(f"function {mapping.function_name!r} is not declared")
        if declared.name in functions:
            continue
        functions[declared.name] = CallableFunction(
            load_handler(declared.handler, function_name=declared.name),
            name=declared.name,
            timeout=declared.timeout,
            memory_size=declared.memory_size,
            arn=declared.arn(mapping.region, mapping.account_id),
        )
    return functions


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
            f"{m.counters.errors} errors | iterator age {ages or '-'} | {m.last_processing_result}"
        )
    return "\n".join(lines)


async def run_daemon(
    config: DaemonConfig,
    *,
    log_interval: float = 60.0,
    stop_after: float | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> int:
    functions = build_functions(config)
    store = SQLiteCheckpointStore(config.state.path)
    report = on_progress or log.info
    try:
        async with Engine(kinesis=config.kinesis, checkpoint_store=store) as engine:
            for mapping in config.event_source_mappings:
                declared = config.function(mapping.function_name)
                assert declared is not None
                uuid = await engine.add_mapping(
                    mapping, functions[declared.name], invoke_identity_arn=declared.role
                )
                log.info(
                    "mapping %s: %s -> %s (%s)",
                    uuid,
                    mapping.event_source_arn,
                    declared.name,
                    "enabled" if mapping.enabled else "disabled",
                )
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with anyio.create_task_group() as tg:

                    async def wait_for_signal() -> None:
                        async for signum in signals:
                            log.info("%s: stopping", signal.Signals(signum).name)
                            break
                        tg.cancel_scope.cancel()

                    async def progress() -> None:
                        previous: dict[str, int] = {}
                        last = time.monotonic()
                        while True:
                            await anyio.sleep(log_interval)
                            now = time.monotonic()
                            report(format_progress(engine.statistics(), previous, now - last))
                            last = now

                    tg.start_soon(wait_for_signal)
                    if log_interval > 0:
                        tg.start_soon(progress)
                    if stop_after is not None:
                        await anyio.sleep(stop_after)
                        tg.cancel_scope.cancel()
            log.info("stopping: finishing in-flight invocations, writing final checkpoints")
        log.info("stopped cleanly")
    finally:
        await store.aclose()
    return 0
