"""Enhanced fan-out mappings end to end through kinesis-mock: a stream consumer's ARN as
event_source_arn reads by SubscribeToShard through the same pipeline as polling (lanes, per-key
order, checkpoints, statistics); ``register_consumer`` registers one; two mappings on two
consumers of one stream both get everything; a restart resumes after the checkpoint."""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kinesis_esm import Engine, EventSourceMappingConfig, KinesisConfig, SQLiteCheckpointStore
from kinesis_esm.source._consumers import FanOutClient
from tests.support.control import running_daemon
from tests.support.daemon_process import start_daemon
from tests.support.emulators import REPO_ROOT, KinesisMock
from tests.support.kinesis import (
    KinesisClient,
    StreamRecord,
    create_stream,
    kinesis_client,
    put_records,
    wait_for,
)
from tests.support.records_log import BLOCK_ENV, LOG_ENV, read_log
from tests.test_control_cli import aws_ok
from tests.test_resharding import (
    check_delivery,
    merge,
    open_shards,
    reshard_under_load,
    split,
)

pytestmark = pytest.mark.anyio
REGION = "us-east-1"


@pytest.fixture
async def client(kinesis_mock: KinesisMock) -> AsyncIterator[KinesisClient]:
    async with kinesis_client(kinesis_mock.endpoint_url) as c:
        yield c


class Collect:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> None:
        with self.lock:
            self.records.extend(event["Records"])

    def ids(self) -> list[str]:
        with self.lock:
            return [r["eventID"] for r in self.records]


def ids(written: list[StreamRecord]) -> set[str]:
    return {f"{w.shard_id}:{w.sequence_number}" for w in written}


def keyed(count: int, prefix: str = "r") -> list[tuple[str, bytes]]:
    return [(f"key-{i % 7}", f"{prefix}{i}".encode()) for i in range(count)]


@pytest.mark.parametrize("factor", [1, 4])
async def test_a_consumer_arn_mapping_delivers_everything_in_key_order(
    kinesis_mock: KinesisMock, client: KinesisClient, stream_name: str, factor: int
) -> None:
    arn = await create_stream(client, stream_name, 2)
    async with FanOutClient(endpoint_url=kinesis_mock.endpoint_url, region=REGION) as fan:
        consumer = await fan.register_consumer(arn, "esm")
    written = await put_records(client, stream_name, keyed(120))
    collect = Collect()
    config = EventSourceMappingConfig(
        function_name="f",
        event_source_arn=consumer,
        starting_position="TRIM_HORIZON",
        batch_size=10,
        parallelization_factor=factor,
    )
    kinesis = KinesisConfig(endpoint_url=kinesis_mock.endpoint_url, region=REGION)
    async with Engine(kinesis=kinesis) as engine:
        uuid = await engine.add_mapping(config, collect)
        await wait_for(lambda: ids(written) <= set(collect.ids()), 30, message="every record")
        stats = engine.mapping_statistics(uuid)
    assert sorted(collect.ids()) == sorted(ids(written))  # once each
    assert {s.read_mode for s in stats.shards} == {"subscribe"}
    assert stats.counters.get_records_calls == 0  # nothing polled
    for key in {k for k, _ in keyed(120)}:  # per shard and key, in sequence order
        for shard in {w.shard_id for w in written}:
            seqs = [
                int(r["kinesis"]["sequenceNumber"])
                for r in collect.records
                if r["kinesis"]["partitionKey"] == key and r["eventID"].startswith(shard)
            ]
            assert seqs == sorted(seqs)


async def test_register_consumer_and_two_mappings_on_two_consumers_both_get_everything(
    kinesis_mock: KinesisMock, client: KinesisClient, stream_name: str
) -> None:
    arn = await create_stream(client, stream_name, 1)
    written = await put_records(client, stream_name, keyed(40))
    one, two = Collect(), Collect()
    kinesis = KinesisConfig(endpoint_url=kinesis_mock.endpoint_url, region=REGION)
    async with Engine(kinesis=kinesis) as engine:
        for name, collect in (("one", one), ("two", two)):
            config = EventSourceMappingConfig(
                function_name=f"f-{name}",
                event_source_arn=arn,
                starting_position="TRIM_HORIZON",
                register_consumer=name,
            )
            await engine.add_mapping(config, collect)
        await wait_for(
            lambda: ids(written) <= set(one.ids()) and ids(written) <= set(two.ids()),
            30,
            message="both mappings have every record",
        )
    async with FanOutClient(endpoint_url=kinesis_mock.endpoint_url, region=REGION) as fan:
        for name in ("one", "two"):  # registered, and left in place
            consumer = await fan.register_consumer(arn, name)
            assert consumer.startswith(f"{arn}/consumer/{name}:")


async def test_a_restart_resubscribes_after_the_checkpoint(
    kinesis_mock: KinesisMock, client: KinesisClient, stream_name: str, tmp_path: Path
) -> None:
    arn = await create_stream(client, stream_name, 1)
    async with FanOutClient(endpoint_url=kinesis_mock.endpoint_url, region=REGION) as fan:
        consumer = await fan.register_consumer(arn, "esm")
    first = await put_records(client, stream_name, keyed(30, "a"))
    state = str(tmp_path / "state.db")
    config = EventSourceMappingConfig(
        function_name="f", event_source_arn=consumer, starting_position="TRIM_HORIZON"
    )
    kinesis = KinesisConfig(endpoint_url=kinesis_mock.endpoint_url, region=REGION)
    collect = Collect()
    async with Engine(kinesis=kinesis, checkpoint_store=state) as engine:
        uuid = await engine.add_mapping(config, collect)
        await wait_for(lambda: ids(first) <= set(collect.ids()), 30, message="the first records")
    checkpoint = (await SQLiteCheckpointStore(state).get_checkpoints(uuid))[first[-1].shard_id]
    assert checkpoint == first[-1].sequence_number
    second = await put_records(client, stream_name, keyed(20, "b"))
    again = Collect()
    async with Engine(kinesis=kinesis, checkpoint_store=state) as engine:
        await engine.add_mapping(config, again)
        await wait_for(lambda: ids(second) <= set(again.ids()), 30, message="the new records")
    assert set(again.ids()) == ids(second)  # after the checkpoint: nothing of the first again


async def test_metrics_show_the_read_mode_and_the_subscription(
    kinesis_mock: KinesisMock, client: KinesisClient, stream_name: str, tmp_path: Path
) -> None:
    arn = await create_stream(client, stream_name, 1)
    async with FanOutClient(endpoint_url=kinesis_mock.endpoint_url, region=REGION) as fan:
        consumer = await fan.register_consumer(arn, "esm")
    written = await put_records(client, stream_name, keyed(5))
    config = EventSourceMappingConfig(
        function_name="f", event_source_arn=consumer, starting_position="TRIM_HORIZON"
    )
    async with (
        running_daemon(tmp_path, kinesis_mock.endpoint_url, mappings=(config,)) as daemon,
        aiohttp.ClientSession() as http,
    ):
        await wait_for(
            lambda: {w.sequence_number for w in written} <= set(daemon.recorder.sequences()),
            30,
            message="the records delivered",
        )
        async with http.get(f"{daemon.url}/metrics") as response:
            text = await response.text()
    mode = re.search(r'kinesis_esm_shard_read_mode\{[^}]*read_mode="(\w+)"[^}]*\} 1\.0', text)
    assert mode is not None and mode.group(1) == "subscribe", text[:2000]
    assert re.search(r"kinesis_esm_subscription_age_seconds\{[^}]*\} \d", text)
    assert re.search(r"kinesis_esm_resubscriptions_total\{[^}]*\} \d", text)


@pytest.mark.kinesis_mock
async def test_split_then_merge_under_load_through_enhanced_fan_out(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    """The polling reshard test's scenario, read by SubscribeToShard (register_consumer):
    parent before child, per-key order, every record, every parent checkpointed SHARD_END."""

    async def split_first(client: KinesisClient) -> None:
        await split(client, stream_name, (await open_shards(client, stream_name))[0])

    async def merge_across_lineages(client: KinesisClient) -> None:
        lower, upper = (await open_shards(client, stream_name))[1:3]
        await merge(client, stream_name, lower["ShardId"], upper["ShardId"])

    producer, deliveries, checkpoints, shard_lineage = await reshard_under_load(
        kinesis_mock.endpoint_url,
        stream_name,
        2,
        [split_first, merge_across_lineages],
        per_step=60,
        register_consumer="esm",
    )
    assert len(shard_lineage) == 5
    check_delivery(producer, deliveries, checkpoints, shard_lineage)


async def test_kill_9_of_a_fan_out_daemon_then_restart_resubscribes_after_the_checkpoint(
    kinesis_mock: KinesisMock, client: KinesisClient, stream_name: str, tmp_path: Path
) -> None:
    """`kinesis-esm run` on a consumer ARN, killed with a batch in flight: the restart
    subscribes AFTER_SEQUENCE_NUMBER the checkpoint, so only the in-flight records and those
    after them come again."""
    arn = await create_stream(client, stream_name, 1)
    async with FanOutClient(endpoint_url=kinesis_mock.endpoint_url, region=REGION) as fan:
        consumer = await fan.register_consumer(arn, "esm")
    (tmp_path / "efo_handler.py").write_text("from tests.support.records_log import handler\n")
    config = tmp_path / "kinesis-esm.toml"
    config.write_text(
        f"""\
[kinesis]
endpoint_url = "{kinesis_mock.endpoint_url}"
region = "{REGION}"

[state]
path = "{tmp_path / "state.db"}"

[control]
port = 0

[functions.efo]
handler = "efo_handler:handler"
timeout = 30

[[event_source_mappings]]
function_name = "efo"
event_source_arn = "{consumer}"
starting_position = "TRIM_HORIZON"
batch_size = 5
"""
    )
    log, block = tmp_path / "records.log", tmp_path / "block"
    env = {
        **os.environ,
        LOG_ENV: str(log),
        BLOCK_ENV: str(block),
        "PYTHONPATH": str(REPO_ROOT),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }

    def done(pid: int | None = None) -> set[str]:
        return {
            i for e in read_log(log) if e.phase == "done" and pid in (None, e.pid) for i in e.ids
        }

    def started(pid: int) -> set[str]:
        return {i for e in read_log(log) if e.phase == "start" and e.pid == pid for i in e.ids}

    phase1 = await put_records(client, stream_name, keyed(10, "a"))
    first = start_daemon(config, env, tmp_path / "daemon.out")
    try:
        await wait_for(lambda: ids(phase1) <= done(first.pid), 30, message="phase 1 delivered")
        block.touch()
        phase2 = await put_records(client, stream_name, keyed(10, "b"))
        await wait_for(lambda: started(first.pid) - done(), 30, message="a batch in flight")
        in_flight = started(first.pid) - done()
        first.kill()
        assert first.wait(timeout=10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    block.unlink()
    second = start_daemon(config, env, tmp_path / "daemon.out")
    try:
        await wait_for(lambda: ids(phase2) <= done(second.pid), 30, message="the rest")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        if second.poll() is None:
            second.kill()
    again = started(second.pid)
    assert in_flight <= again  # the in-flight batch came again
    assert not (again & ids(phase1))  # nothing before the checkpoint
    assert again <= ids(phase2)


async def test_the_aws_cli_creates_a_mapping_on_a_consumer_arn(
    kinesis_mock: KinesisMock, client: KinesisClient, stream_name: str, tmp_path: Path
) -> None:
    arn = await create_stream(client, stream_name, 1)
    async with FanOutClient(endpoint_url=kinesis_mock.endpoint_url, region=REGION) as fan:
        consumer = await fan.register_consumer(arn, "cli")
    written = await put_records(client, stream_name, keyed(12))
    async with running_daemon(tmp_path, kinesis_mock.endpoint_url) as daemon:
        created = await aws_ok(
            tmp_path, daemon.url, "create-event-source-mapping", "--function-name", "f",
            "--event-source-arn", consumer, "--starting-position", "TRIM_HORIZON",
        )  # fmt: skip
        assert created["EventSourceArn"] == consumer
        await wait_for(
            lambda: {w.sequence_number for w in written} <= set(daemon.recorder.sequences()),
            30,
            message="the records, read through the consumer",
        )
