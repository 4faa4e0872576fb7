"""This process as one worker of a fleet: the lease store and worker id its mappings share.

With ``[coordination] backend = "dynamodb"`` the engine holds one `Fleet`: a
`DynamoDBLeaseStore` (the table is checked, or created, at start) for the mapping rows and the
registry, and, per mapping, a `LeaseCoordinator` built here for the mapping's runner
(`FleetMappingRunner`, in ``_fleet_mapping``). The coordinators run on the fleet's
`LeaseThread`, with a store client of their own there, so that a worker busy reading still
renews on time (see ``leases/_thread``). Checkpoints go through `LeaseCommitter`, fenced by
the lease.

A checkpoint's text (the pipeline's) and a lease's `Checkpoint` map one to one:
``"<sequence>"`` (the whole record done) is ``Checkpoint(sequence, 0)``; ``"<sequence>:<k>"``
(user records 0..k of a KPL aggregate done) is ``Checkpoint(sequence, k + 1)``, so that
"user record 0 done" and "the whole record done" stay apart.

Tumbling windows: the window state rides in the lease's `Checkpoint` (one conditional write
with it), so a hand-off or a take carries it to the next owner. A lease row is one DynamoDB
item of at most 400 KB, so a fleet ends a window early once its state passes
`WINDOW_STATE_LIMIT` (256 KiB), where Lambda allows 1 MB (docs/fleet.md).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Protocol

import anyio

from ..config import CoordinationConfig
from ..leases import (
    Checkpoint,
    CheckpointOutcome,
    CoordinatorSettings,
    LeaseConsumer,
    LeaseCoordinator,
    LeaseStore,
    LeaseStoreError,
    LeaseStoreUnavailableError,
    LeaseThread,
    MainLoopConsumer,
    ThreadedCoordinator,
)
from ..leases._model import MAX_WINDOW_STATE_BYTES
from ..state import SHARD_END
from ..state._dynamodb import DynamoDBLeaseStore

__all__ = [
    "WINDOW_STATE_LIMIT",
    "Fleet",
    "FleetStore",
    "LeaseCommitter",
    "default_worker_id",
    "lease_checkpoint",
    "text_checkpoint",
]

log = logging.getLogger("kinesis_esm.fleet")

START_TIMEOUT = 60.0  # how long a start waits for an unreachable lease table before giving up
# A window whose state (serialized JSON) passes this ends early, as Lambda's does at 1 MB: the
# state, with its snapshot around it, must fit in the lease row next to the checkpoint.
WINDOW_STATE_LIMIT = 256 * 1024


def default_worker_id() -> str:
    """Host name and pid: unique on a host, and across hosts with distinct host names."""
    return f"{socket.gethostname()}-{os.getpid()}"


def lease_checkpoint(text: str) -> Checkpoint:
    """The pipeline's checkpoint text as a lease checkpoint (see the module docstring)."""
    sequence, colon, within = text.partition(":")
    if colon and text != SHARD_END:
        return Checkpoint(sequence, int(within) + 1)
    return Checkpoint(text)


def text_checkpoint(checkpoint: Checkpoint | None) -> str | None:
    """A lease checkpoint as the pipeline's text; None for none."""
    if checkpoint is None:
        return None
    if checkpoint.sub_sequence == 0 or checkpoint.shard_end:
        return checkpoint.sequence
    return f"{checkpoint.sequence}:{checkpoint.sub_sequence - 1}"


class FleetStore(LeaseStore, Protocol):
    """A lease store that also keeps one row per mapping (`DynamoDBLeaseStore` does)."""

    async def start(self) -> None: ...

    async def claim_started_at(self, mapping_uuid: str, now: float) -> tuple[float, bool]: ...

    async def forget_mapping(self, mapping_uuid: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LeaseCommitter:
    """A `CheckpointCommitter` fenced by the shard's lease: False once the lease is lost.

    Checkpoints are recorded at once and written with the next renewal (SHARD_END at once), so
    the table's request rate does not grow with the record rate. A window state goes with its
    checkpoint. One too big for the lease row is the state that has just passed
    `WINDOW_STATE_LIMIT`, with the early final invocation still to come: that checkpoint is not
    recorded, so the one before stays (a loss replays the batch, which rebuilds the state),
    and the early final's own commit moves the checkpoint on, with the window's fresh state."""

    coordinator: ThreadedCoordinator

    async def commit(
        self, shard_id: str, sequence: str, *, window_state: bytes | None = None
    ) -> bool:
        if window_state is not None and len(window_state) > MAX_WINDOW_STATE_BYTES:
            log.debug(
                "%s: a window state of %d bytes waits for its early final, not stored",
                shard_id,
                len(window_state),
            )
            return self.coordinator.holds(shard_id)
        checkpoint = lease_checkpoint(sequence)
        outcome = await self.coordinator.checkpoint(
            shard_id, checkpoint.sequence, checkpoint.sub_sequence, window_state=window_state
        )
        return outcome is not CheckpointOutcome.LOST


class Fleet:
    """One worker's membership: its id, the lease store, and the coordinators' settings."""

    def __init__(
        self,
        coordination: CoordinationConfig,
        *,
        store: FleetStore | None = None,
        lease_store: LeaseStore | None = None,
    ) -> None:
        """``store``: the mapping rows' and the registry's (the main loop's); ``lease_store``:
        the coordinators' (the lease thread's; a client is bound to its loop, so not the same
        object); both default to the configured DynamoDB table."""
        if not coordination.fleet:
            raise ValueError(f"backend {coordination.backend!r} is not a fleet backend")
        self.config = coordination
        self.worker_id = coordination.worker_id or default_worker_id()
        failover = float(coordination.failover_time)
        self.settings = CoordinatorSettings(failover_time=failover)
        # A renewal round waits for its slowest call: keep one within a renewal interval.
        call_timeout = min(5.0, max(0.5, failover / 3))
        self.store: FleetStore = store or self._dynamodb(call_timeout)
        self.lease_store: LeaseStore = lease_store or self._dynamodb(call_timeout)
        self.call_timeout = call_timeout
        self.thread = LeaseThread(f"kinesis-esm-leases-{self.worker_id}")
        self._started = False

    def _dynamodb(self, call_timeout: float) -> DynamoDBLeaseStore:
        c = self.config
        return DynamoDBLeaseStore(
            c.table, endpoint_url=c.endpoint_url, region=c.region, call_timeout=call_timeout
        )

    async def start(self, *, timeout: float = START_TIMEOUT) -> None:  # noqa: ASYNC109
        """Open the store and check (or create) the table. An unreachable store is retried
        for `timeout` seconds; any other error (a missing permission) is raised at once."""
        if self._started:
            return
        delay = 0.5
        with anyio.move_on_after(timeout):
            while True:
                try:
                    await self.store.start()
                except LeaseStoreUnavailableError as error:
                    log.warning("lease table %s: %s; retrying in %.1f s", self.table, error, delay)
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                await self._start_thread()
                log.info(
                    "worker %s: leases in DynamoDB table %s (failover_time %s s)",
                    self.worker_id,
                    self.table,
                    self.config.failover_time,
                )
                self._started = True
                return
        raise LeaseStoreUnavailableError(
            f"the lease table {self.table!r} did not answer within {timeout:.0f} s"
        )

    async def _start_thread(self) -> None:
        if not self.thread.running:
            self.thread.start()
        start = getattr(self.lease_store, "start", None)
        if start is not None:  # the table is there by now: this opens the thread's client
            await self.thread.call(start)

    @property
    def table(self) -> str:
        return self.config.table

    async def aclose(self) -> None:
        self._started = False
        try:
            if self.thread.running:
                close = getattr(self.lease_store, "aclose", None)
                if close is not None:
                    with anyio.move_on_after(self.call_timeout + 1):
                        await self.thread.call(close)
                await self.thread.aclose()
        finally:
            await self.store.aclose()

    def coordinator(
        self, mapping_uuid: str, consumer: LeaseConsumer, *, function_timeout: float
    ) -> ThreadedCoordinator:
        # A hand-off waits for the in-flight batches: at most one function timeout.
        settings = CoordinatorSettings(
            failover_time=self.settings.failover_time,
            handoff_timeout=max(10.0, function_timeout + 5.0),
        )
        forward = MainLoopConsumer(consumer)
        # time.monotonic: one clock for both threads (holds() is asked on the main one)
        inner = LeaseCoordinator(
            self.lease_store, mapping_uuid, self.worker_id, forward, settings, clock=time.monotonic
        )
        return ThreadedCoordinator(self.thread, inner, forward)

    async def started_at(self, mapping_uuid: str, now: float) -> tuple[float, bool]:
        return await self.store.claim_started_at(mapping_uuid, now)

    async def forget(self, mapping_uuid: str) -> bool:
        """A mapping deleted here: delete its rows unless other workers still run it (they
        would restart its shards from the starting position). True when the rows went."""
        try:
            snapshot = await self.store.read_fleet(mapping_uuid)
            others = [w.worker_id for w in snapshot.workers if w.worker_id != self.worker_id]
            if others:
                log.warning(
                    "mapping %s deleted on worker %s, but %d other worker(s) still run it: its "
                    "leases and checkpoints are kept (delete it on every worker)",
                    mapping_uuid,
                    self.worker_id,
                    len(others),
                )
                return False
            await self.store.delete_mapping(mapping_uuid)
            await self.store.forget_mapping(mapping_uuid)
        except LeaseStoreError as error:
            log.error("mapping %s: deleting its leases failed: %s", mapping_uuid, error)
            return False
        return True
