"""The benchmark harness on tiny data, and the GetRecords fast path against the botocore path.

Both paths must give identical Lambda events: checked on the replay server's data and on a real
emulator (kinesalite). The fast path's SigV4 signer must sign exactly as botocore's does.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from benchmarks import efo, throughput
from benchmarks.contenders import CONTENDERS
from benchmarks.replay import ReplayServer, StreamSpec
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from kinesis_esm import KinesisSource, build_event
from kinesis_esm._errors import SourceError, TransientSourceError
from kinesis_esm.events._lambda import EventSource
from kinesis_esm.source import IteratorPosition
from kinesis_esm.source._sigv4 import SigV4
from tests.support.emulators import Kinesalite, KinesisMock
from tests.support.kinesis import create_stream, kinesis_client, put_records

pytestmark = pytest.mark.timeout(60)

ROLE = "arn:aws:iam::123456789012:role/bench"


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    with ReplayServer() as server:
        yield server


async def _events_by_shard(url: str, arn: str, *, fast_parse: bool) -> dict[str, Any]:
    """Every shard drained from TRIM_HORIZON through one path, as Lambda events per page."""
    events: dict[str, Any] = {}
    async with KinesisSource(endpoint_url=url, region="us-east-1", fast_parse=fast_parse) as src:
        for shard in await src.list_shards(arn):
            position = IteratorPosition("TRIM_HORIZON")
            iterator: str | None = await src.get_shard_iterator(arn, shard.shard_id, position)
            pages = []
            for _ in range(100):  # bounded: a page each
                assert iterator is not None
                page = await src.get_records(arn, iterator, 1000)
                if not page.records:
                    break
                source = EventSource(arn, shard.shard_id, "us-east-1", ROLE)
                pages.append((build_event(source, page.records), [r.data for r in page.records]))
                iterator = page.next_iterator
            events[shard.shard_id] = pages
    return events


def test_throughput_harness_writes_json_and_markdown(tmp_path: Path) -> None:
    report = throughput.main(
        [
            "--shards=1,2",
            "--sizes=100",
            "--records=400",
            "--repetitions=1",
            "--time-limit=10",
            "--no-pin",
            f"--results-dir={tmp_path}",
        ]
    )
    document = json.loads((tmp_path / "throughput.json").read_text())
    assert document["name"] == "throughput"
    assert "replay server" in " ".join(document["notes"])
    cells = document["cells"]
    assert [(c["shards"], c["record_bytes"]) for c in cells] == [(1, 100), (2, 100)]
    for cell in cells:
        assert set(cell["contenders"]) == set(CONTENDERS)
        for result in cell["contenders"].values():
            assert result["complete"], result
            assert result["median_rate"] > 0
    assert {g["goal"] for g in document["goals"]} == {
        "esm-events >= 5x async-kinesis",
        "esm-events >= 3x raw-aiobotocore",
    }
    markdown = (tmp_path / "throughput.md").read_text()
    assert markdown == report.markdown()
    assert "| shards | record | records |" in markdown
    assert "replay server" in markdown
    assert (tmp_path / "throughput.png").stat().st_size > 0


@pytest.mark.anyio
async def test_fast_and_botocore_paths_give_identical_events_on_replayed_data(
    replay: ReplayServer,
) -> None:
    spec = StreamSpec(shards=2, record_bytes=700, records_per_shard=2500)
    fast = await _events_by_shard(replay.url, spec.arn, fast_parse=True)
    slow = await _events_by_shard(replay.url, spec.arn, fast_parse=False)
    assert sorted(fast) == ["shardId-000000000000", "shardId-000000000001"]
    assert sum(len(e["Records"]) for pages in fast.values() for e, _ in pages) == spec.total
    assert fast == slow


@pytest.mark.anyio
async def test_fast_and_botocore_paths_give_identical_events_on_kinesalite(
    kinesalite: Kinesalite, stream_name: str
) -> None:
    payloads = [b"", b"plain", bytes(range(256)), "ünïcödé".encode(), b"\x00" * 3000]
    records = [(f"k\u00e9y-{i % 7}", payloads[i % len(payloads)]) for i in range(600)]
    async with kinesis_client(kinesalite.endpoint_url) as client:
        arn = await create_stream(client, stream_name, 2)
        await put_records(client, stream_name, records)
    fast = await _events_by_shard(kinesalite.endpoint_url, arn, fast_parse=True)
    slow = await _events_by_shard(kinesalite.endpoint_url, arn, fast_parse=False)
    assert sum(len(e["Records"]) for pages in fast.values() for e, _ in pages) == len(records)
    assert fast == slow


@pytest.mark.anyio
async def test_fast_path_maps_server_errors_like_the_botocore_path(replay: ReplayServer) -> None:
    spec = StreamSpec(1, 100, 10)
    for fast_parse in (True, False):
        async with KinesisSource(
            endpoint_url=replay.url, region="us-east-1", fast_parse=fast_parse
        ) as source:
            with pytest.raises(SourceError) as caught:
                await source.get_records(spec.arn, "not-an-iterator", 10)
            assert caught.value.code == "InvalidArgumentException"
            assert not isinstance(caught.value, TransientSourceError)
    async with KinesisSource(endpoint_url="http://127.0.0.1:9", region="us-east-1") as source:
        with pytest.raises(TransientSourceError):
            await source.get_records(spec.arn, "x", 10)


@pytest.mark.parametrize("token", [None, "session/token+="])
@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:4567", "https://kinesis.eu-west-1.amazonaws.com", "http://localhost:80/"],
)
def test_sigv4_signs_exactly_as_botocore(url: str, token: str | None) -> None:
    credentials = ReadOnlyCredentials("AKIDEXAMPLE", "secret/key", token)
    body = b'{"ShardIterator":"AAAA","Limit":100}'
    target = "Kinesis_20131202.GetRecords"
    now = 1_700_000_000.25
    ours = SigV4(url, "eu-west-1").headers(credentials, target, body, now)
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
    )
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
        SigV4Auth(credentials, "kinesis", "eu-west-1").add_auth(request)
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-date"] == request.headers["X-Amz-Date"]


def test_efo_engine_drain_reads_every_record_by_subscription_and_by_polling(
    kinesis_mock: KinesisMock,
) -> None:
    drain = efo.measure_drain(kinesis_mock.endpoint_url, shards=1, count=200, rounds=1)
    assert set(drain) == {"efo", "polling"}
    for result in drain.values():
        assert result["records"] == 200
        assert 0 < result["first_record_s"] <= result["seconds"]
        assert result["cpu_us_per_record"] > 0
        assert math.isfinite(result["marginal_cpu_us_per_record"])
    table = "\n".join(efo._drain_markdown(drain, {}))
    assert "| efo | 200 |" in table
    assert "| polling | 200 |" in table


def test_efo_engine_latency_times_every_record_of_each_mapping(kinesis_mock: KinesisMock) -> None:
    latencies = efo.measure_engine_latency(
        kinesis_mock.endpoint_url, rate=20, duration=1.0, shards=1
    )
    assert set(latencies) == set(efo.ENGINE_KEYS)
    for values in latencies.values():
        assert len(values) == 20  # a record per 50 ms tick, each timed once
        assert all(0 < value < 5 for value in values)


def test_replay_pages_realign_after_a_mid_page_start_and_fragments_are_exact_size() -> None:
    from benchmarks.replay import MAX_LIMIT, _Shard

    shard = _Shard(StreamSpec(1, 100, 2 * MAX_LIMIT + 500), 0)
    assert shard.page_end(0, MAX_LIMIT) == MAX_LIMIT
    # a new owner resuming from a checkpoint mid-page gets a short answer up to the boundary
    assert shard.page_end(1234, MAX_LIMIT) == MAX_LIMIT
    assert shard.page_end(MAX_LIMIT, MAX_LIMIT) == 2 * MAX_LIMIT
    assert shard.page_end(2 * MAX_LIMIT + 10, MAX_LIMIT) == 2 * MAX_LIMIT + 500  # the end
    assert shard.page_end(5, 10) == 10
    assert (0, MAX_LIMIT) in shard.pages  # built with the stream: the first reader's pages
    # orjson's bytes keep their whole output buffer; the kept fragments must not
    assert all(sys.getsizeof(f) < len(f) + 64 for f in shard.fragments[:100])


def test_fleet_scale_rows_report_the_ratio_of_valid_interleaved_runs() -> None:
    from benchmarks.fleet_scale import ScaleRun, scale_ratio, scale_rows

    runs = [
        ScaleRun(1, 400_000, 1.0, [1.0], 0.05, False),
        ScaleRun(2, 760_000, 1.0, [0.9, 0.9], 0.05, False, moves=2),
        ScaleRun(2, 900_000, 1.0, [0.9, 0.9], 0.05, True),  # drained: left out
        ScaleRun(1, 420_000, 1.0, [1.0], 0.05, False),
    ]
    assert 1.7 < scale_ratio(runs) < 2.0
    cells = [cell for row in scale_rows(runs) for cell in row]
    assert any("760,000 records/s" in cell for cell in cells)
    assert any("hand-offs in the windows 2" in cell for cell in cells)
