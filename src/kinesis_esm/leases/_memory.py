"""An in-memory LeaseStore with exactly the DynamoDB store's conditions, for unit tests and
single-process simulations. No I/O; every method completes without yielding mid-write, so a
condition check and its write are atomic, as in DynamoDB."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ._model import Checkpoint, Conflict, FleetSnapshot, Lease, LeaseLoad, WorkerRecord

__all__ = ["MemoryLeaseStore"]


class MemoryLeaseStore:
    def __init__(self) -> None:
        self._leases: dict[tuple[str, str], Lease] = {}
        self._workers: dict[tuple[str, str], int] = {}
        self.writes = 0  # successful and failed conditional writes, for request-rate tests

    async def read_fleet(self, mapping_uuid: str) -> FleetSnapshot:
        leases = tuple(
            lease for (mapping, _), lease in sorted(self._leases.items()) if mapping == mapping_uuid
        )
        workers = tuple(
            WorkerRecord(worker, beat)
            for (mapping, worker), beat in sorted(self._workers.items())
            if mapping == mapping_uuid
        )
        return FleetSnapshot(leases, workers)

    async def get_lease(self, mapping_uuid: str, shard_id: str) -> Lease | None:
        return self._leases.get((mapping_uuid, shard_id))

    async def create_lease(
        self,
        mapping_uuid: str,
        shard_id: str,
        parent_shard_ids: Sequence[str] = (),
        checkpoint: Checkpoint | None = None,
    ) -> bool:
        key = (mapping_uuid, shard_id)
        self.writes += 1
        if key in self._leases:
            return False
        self._leases[key] = Lease(
            mapping_uuid, shard_id, None, 0, checkpoint, tuple(sorted(parent_shard_ids))
        )
        return True

    def _current(self, lease: Lease) -> Lease | None:
        self.writes += 1
        return self._leases.get((lease.mapping_uuid, lease.shard_id))

    def _store(self, lease: Lease) -> Lease:
        self._leases[(lease.mapping_uuid, lease.shard_id)] = lease
        return lease

    async def renew(
        self, lease: Lease, *, checkpoint: Checkpoint | None = None, load: LeaseLoad | None = None
    ) -> Lease | Conflict:
        now = self._current(lease)
        if now is None or now.owner != lease.owner or now.counter != lease.counter:
            return Conflict(now)
        new = dataclasses.replace(now, counter=now.counter + 1)
        if checkpoint is not None:
            new = dataclasses.replace(new, checkpoint=checkpoint, owner_switches=0)
        if load is not None:
            new = dataclasses.replace(new, load=load)
        return self._store(new)

    async def take(self, lease: Lease, worker_id: str) -> Lease | Conflict:
        now = self._current(lease)
        if now is None or now.counter != lease.counter:
            return Conflict(now)
        return self._store(
            dataclasses.replace(
                now,
                owner=worker_id,
                counter=now.counter + 1,
                handoff_target=None,
                owner_switches=now.owner_switches + (now.owner != worker_id),
            )
        )

    async def request_handoff(self, lease: Lease, worker_id: str) -> bool:
        now = self._current(lease)
        if now is None or now.owner is None or now.owner != lease.owner:
            return False
        self._store(dataclasses.replace(now, handoff_target=worker_id))
        return True

    async def release(
        self, lease: Lease, *, to: str | None = None, checkpoint: Checkpoint | None = None
    ) -> Lease | Conflict:
        now = self._current(lease)
        if now is None or now.owner != lease.owner or now.counter != lease.counter:
            return Conflict(now)
        new = dataclasses.replace(
            now,
            owner=to,
            counter=now.counter + 1,
            handoff_target=None,
            owner_switches=now.owner_switches + (to is not None),
        )
        if checkpoint is not None:  # the checkpoint moves first, then the owner switches
            new = dataclasses.replace(
                new, checkpoint=checkpoint, owner_switches=int(to is not None)
            )
        return self._store(new)

    async def heartbeat(self, mapping_uuid: str, worker_id: str) -> None:
        key = (mapping_uuid, worker_id)
        self.writes += 1
        self._workers[key] = self._workers.get(key, 0) + 1

    async def deregister_worker(
        self, mapping_uuid: str, worker_id: str, *, heartbeat: int | None = None
    ) -> bool:
        key = (mapping_uuid, worker_id)
        self.writes += 1
        if key not in self._workers or heartbeat not in (None, self._workers[key]):
            return False
        del self._workers[key]
        return True

    async def delete_mapping(self, mapping_uuid: str) -> int:
        leases = [key for key in self._leases if key[0] == mapping_uuid]
        workers = [key for key in self._workers if key[0] == mapping_uuid]
        for key in leases:
            del self._leases[key]
        for key in workers:
            del self._workers[key]
        return len(leases) + len(workers)

    async def aclose(self) -> None:
        return None
