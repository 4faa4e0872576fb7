"""Embedded engines as workers of one fleet (``Engine(coordination=...)``): leases in a
DynamoDB emulator's table, Kinesis from moto, checkpoints only in the leases."""

from __future__ import annotations

from typing import Any

from kinesis_esm import Engine, KinesisConfig, PollSettings
from kinesis_esm.config import CoordinationConfig
from kinesis_esm.state import MemoryCheckpointStore

__all__ = ["fleet_coordination", "fleet_engine"]


def fleet_coordination(
    dynamodb: str, table: str, worker: str, *, failover_time: float, **settings: Any
) -> CoordinationConfig:
    return CoordinationConfig(
        backend="dynamodb",
        table=table,
        worker_id=worker,
        failover_time=failover_time,
        endpoint_url=dynamodb,
        region="us-east-1",
        **settings,
    )


def fleet_engine(
    kinesis: str,
    dynamodb: str,
    table: str,
    worker: str,
    *,
    poll_settings: PollSettings,
    failover_time: float,
    shard_sync_interval: float = 2.0,
) -> Engine:
    return Engine(
        kinesis=KinesisConfig(endpoint_url=kinesis, region="us-east-1"),
        checkpoint_store=MemoryCheckpointStore(),
        poll_settings=poll_settings,
        shard_sync_interval=shard_sync_interval,
        coordination=fleet_coordination(dynamodb, table, worker, failover_time=failover_time),
    )
