"""Faults between the consumer and Kinesis, through real kinesis-mock processes.

The consumer talks to the emulator through a fault proxy on 127.0.0.1 (TCP: resets, stalls,
refused connections; or HTTP: AWS error answers), while the producer writes straight to the
emulator, so records keep arriving while the consumer cannot read. After each fault the
consumer must recover by itself and every record must be delivered at least once.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from kinesis_esm import (
    Engine,
    EventSourceMappingConfig,
    KinesisSource,
    PollSettings,
    RetrySettings,
)
from kinesis_esm._statistics import MappingStatistics
from tests.support.emulators import KinesisMock
from tests.support.faulty_source import Deliveries
from tests.support.http_faults import (
    LIMIT_EXCEEDED,
    THROTTLED,
    Fault,
    KinesisFaultInjector,
    combine,
    max_calls_in_window,
    nth_calls,
)
from tests.support.kinesis import (
    KinesisClient,
    StreamRecord,
    create_stream,
    kinesis_client,
    put_records,
    wait_for,
)
from tests.support.proxy import FaultProxy

pytestmark = [pytest.mark.anyio, pytest.mark.kinesis_mock]

CALL_TIMEOUT = 1.0
POLL = PollSettings(
    base_interval=0.2,
    error_backoff_initial=0.05,
    error_backoff_max=1.0,
    problem_backoff_max=2.0,
)


class Writer:
    """Writes numbered records straight to the emulator and keeps what it wrote."""

    def __init__(self, client: KinesisClient, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.written: list[StreamRecord] = []

    async def put(self, n: int) -> list[StreamRecord]:
        start = len(self.written)
        records = [(f"key-{i % 10}", f"record-{i}".encode()) for i in range(start, start + n)]
        written = await put_records(self.client, self.stream, records)
        self.written.extend(written)
        return written

    def ids(self) -> set[tuple[str, str]]:
        return {(r.shard_id, r.sequence_number) for r in self.written}


@asynccontextmanager
async def consumer(
    endpoint_url: str,
    stream_arn: str,
    deliveries: Deliveries,
    *,
    poll: PollSettings = POLL,
    starting_position: str = "TRIM_HORIZON",
) -> AsyncIterator[Engine]:
    """An engine reading through ``endpoint_url`` with a short call timeout."""
    async with (
        KinesisSource(
            endpoint_url=endpoint_url, region="us-east-1", call_timeout=CALL_TIMEOUT
        ) as source,
        Engine(
            source=source,
            poll_settings=poll,
            retry_settings=RetrySettings(initial=0.05, maximum=0.5),
            shard_sync_interval=0.5,
        ) as engine,
    ):
        await engine.add_mapping(
            EventSourceMappingConfig(
                function_name="faults",
                event_source_arn=stream_arn,
                starting_position=starting_position,
                batch_size=10,
            ),
            deliveries,
            function_timeout=10.0,
        )
        yield engine


def stats(engine: Engine) -> MappingStatistics:
    return engine.statistics().mappings[0]


async def all_delivered(deliveries: Deliveries, writer: Writer, timeout: float = 20) -> None:  # noqa: ASYNC109
    expected = writer.ids()
    await wait_for(
        lambda: deliveries.ids() >= expected,
        timeout,
        message=f"{len(expected - deliveries.ids())} of {len(expected)} records",
    )


@asynccontextmanager
async def proxied_stream(
    kinesis_mock: KinesisMock, stream_name: str, shards: int = 2
) -> AsyncIterator[tuple[FaultProxy, Writer, str]]:
    """The consumer's path: TCP fault proxy -> plain HTTP forwarder -> kinesis-mock.

    The HTTP hop shields the emulator from the proxy's resets: kinesis-mock (kinesis-local
    0.6.2) stops listening for good, while its process lives on, after a single connection is
    reset before it sent a request, which the proxy does to its upstream connections. The
    forwarder only opens connections to send requests and never resets them.
    """
    async with (
        kinesis_client(kinesis_mock.endpoint_url) as client,
        KinesisFaultInjector(kinesis_mock.endpoint_url) as forwarder,
        FaultProxy("127.0.0.1", forwarder.port) as proxy,
    ):
        arn = await create_stream(client, stream_name, shards)
        yield proxy, Writer(client, stream_name), arn


# TCP faults through the proxy.


async def test_connection_resets_lose_nothing(kinesis_mock: KinesisMock, stream_name: str) -> None:
    deliveries = Deliveries()
    async with (
        proxied_stream(kinesis_mock, stream_name) as (proxy, writer, arn),
        consumer(proxy.endpoint_url, arn, deliveries) as engine,
    ):
        await writer.put(40)
        for _ in range(4):  # reset every connection, then check delivery goes on
            await wait_for(lambda: proxy.active_connections > 0, 5, message="a connection")
            await proxy.reset_connections()
            await writer.put(30)
            await all_delivered(deliveries, writer)
        # connections refused with a RST on accept, for a while
        await proxy.set_mode("reset")
        await proxy.reset_connections()  # the mode applies to new connections only
        errors = stats(engine).counters.source_errors
        await wait_for(
            lambda: stats(engine).counters.source_errors >= errors + 3, 10, message="errors"
        )
        await writer.put(30)
        await proxy.set_mode("pass")
        await all_delivered(deliveries, writer)
        assert proxy.connections > 4  # it reconnected after each reset


async def test_stall_longer_than_the_call_timeout(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    deliveries = Deliveries()
    async with (
        proxied_stream(kinesis_mock, stream_name) as (proxy, writer, arn),
        consumer(proxy.endpoint_url, arn, deliveries) as engine,
    ):
        await writer.put(40)
        await all_delivered(deliveries, writer)
        await proxy.set_mode("stall")  # accepted, then silence: only the timeout ends a call
        stalled_at = time.monotonic()
        errors = stats(engine).counters.source_errors
        await writer.put(40)
        # every shard's call times out, more than once: each took about CALL_TIMEOUT
        await wait_for(
            lambda: stats(engine).counters.source_errors >= errors + 4,
            15,
            message="timeouts",
        )
        assert time.monotonic() - stalled_at >= CALL_TIMEOUT
        await proxy.set_mode("pass")
        resumed_at = time.monotonic()
        await all_delivered(deliveries, writer)
        # recovery is bounded by the back-off cap and one call timeout, not by luck
        assert time.monotonic() - resumed_at < POLL.error_backoff_max + 2 * CALL_TIMEOUT + 3
        assert not stats(engine).last_processing_result.startswith("PROBLEM")


async def test_full_outage_of_ten_seconds(kinesis_mock: KinesisMock, stream_name: str) -> None:
    deliveries = Deliveries()
    async with (
        proxied_stream(kinesis_mock, stream_name) as (proxy, writer, arn),
        consumer(proxy.endpoint_url, arn, deliveries) as engine,
    ):
        await writer.put(40)
        await all_delivered(deliveries, writer)
        calls_before = stats(engine).counters.get_records_calls
        errors_before = stats(engine).counters.source_errors

        async def write_during_outage() -> None:
            await wait_for(
                lambda: stats(engine).counters.source_errors > errors_before,
                5,
                message="the consumer to notice",
            )
            await writer.put(50)

        async with anyio.create_task_group() as tg:
            tg.start_soon(write_during_outage)
            await proxy.outage(10.0)  # refused and reset, for 10 s
        ended_at = time.monotonic()
        await all_delivered(deliveries, writer)
        recovery = time.monotonic() - ended_at
        counters = stats(engine).counters
        failed = counters.source_errors - errors_before
        # bounded back-off: two shards retrying for 10 s with a 1 s cap, plus ListShards, make
        # a few dozen failures, not thousands; and it did keep retrying
        assert 4 <= failed <= 60, failed
        assert counters.get_records_calls - calls_before <= 80
        assert recovery < POLL.error_backoff_max + 2 * CALL_TIMEOUT + 3, recovery
        assert not stats(engine).last_processing_result.startswith("PROBLEM")


async def test_outage_before_the_first_record_at_latest_loses_nothing(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    deliveries = Deliveries()
    async with (
        proxied_stream(kinesis_mock, stream_name, shards=1) as (proxy, writer, arn),
        consumer(proxy.endpoint_url, arn, deliveries, starting_position="LATEST") as engine,
    ):
        await wait_for(lambda: stats(engine).counters.get_records_calls >= 2, 10, message="polls")
        await proxy.set_mode("refuse")
        await proxy.reset_connections()
        errors = stats(engine).counters.source_errors
        await wait_for(lambda: stats(engine).counters.source_errors > errors, 5, message="errors")
        await writer.put(20)  # producers still reach Kinesis; the consumer does not
        await wait_for(
            lambda: stats(engine).counters.source_errors > errors + 1, 5, message="retries"
        )
        await proxy.set_mode("pass")
        await all_delivered(deliveries, writer, timeout=8)


async def test_emulator_killed_and_restarted(stream_name: str) -> None:
    deliveries = Deliveries()
    with KinesisMock(persist=True, persist_interval_ms=100) as server:
        async with kinesis_client(server.endpoint_url, max_attempts=1) as client:
            arn = await create_stream(client, stream_name, 2)
            writer = Writer(client, stream_name)
            async with consumer(server.endpoint_url, arn, deliveries) as engine:
                await writer.put(40)
                await all_delivered(deliveries, writer)
                last = writer.written[-1].data
                data_file = server.data_dir / "kinesis-data.json"
                await wait_for(
                    lambda: (
                        data_file.is_file() and base64.b64encode(last) in data_file.read_bytes()
                    ),
                    10,
                    message="kinesis-mock to save the records",
                )
                errors = stats(engine).counters.source_errors
                server.kill()
                await wait_for(
                    lambda: stats(engine).counters.source_errors >= errors + 2,
                    10,
                    message="the consumer to notice",
                )
                await anyio.to_thread.run_sync(server.start)  # same port, data reloaded
                await writer.put(40)
                await all_delivered(deliveries, writer, timeout=30)
                assert not stats(engine).last_processing_result.startswith("PROBLEM")


# HTTP faults: AWS error answers from the injector.


async def test_throttling_backs_off_and_loses_nothing(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    rule = combine(
        # each shard's first GetShardIterator is refused once
        nth_calls({1}, Fault(LIMIT_EXCEEDED), operation="GetShardIterator"),
        # each shard's calls 3-5 are throttled in a row, then one in seven
        nth_calls(lambda n: 3 <= n <= 5 or n % 7 == 0, Fault(THROTTLED)),
        nth_calls({10}, Fault(LIMIT_EXCEEDED)),
    )
    poll = PollSettings(
        base_interval=0.05,  # asks for more than Kinesis allows: min_interval must hold it
        max_records_per_call=15,  # full pages: the poller asks again at once
        error_backoff_initial=0.2,
        error_backoff_max=2.0,
    )
    deliveries = Deliveries()
    async with (
        kinesis_client(kinesis_mock.endpoint_url) as client,
        KinesisFaultInjector(kinesis_mock.endpoint_url, rule=rule) as injector,
    ):
        arn = await create_stream(client, stream_name, 2)
        writer = Writer(client, stream_name)
        await writer.put(200)
        async with consumer(injector.endpoint_url, arn, deliveries, poll=poll) as engine:
            await all_delivered(deliveries, writer, timeout=30)
            # keep polling a little longer at the idle cadence
            calls = len(injector.calls_of("GetRecords"))
            await wait_for(
                lambda: len(injector.calls_of("GetRecords")) >= calls + 10, 10, message="polls"
            )
            counters = stats(engine).counters
            injected = injector.injected()
            assert counters.throttles == len(injected)
            assert counters.source_errors >= len(injected)
    shards = injector.shards_seen()
    assert len(shards) == 2
    assert injector.injected("GetShardIterator")
    for shard in shards:
        get_records = injector.calls_of("GetRecords", shard)
        times = [c.at for c in get_records]
        # Kinesis's limit: five GetRecords per second per shard, throttled ones included.
        # Arrival times at the proxy carry a few ms of jitter the poller's clock does not see.
        assert max_calls_in_window(times, 1.0 - 0.03) <= 5, (shard, times)
        # back-off with jitter after the 1st, 2nd and 3rd throttle in a row (calls 3, 4, 5)
        by_number = {c.number: c.at for c in get_records}
        for k, (throttled_call, next_call) in enumerate(((3, 4), (4, 5), (5, 6))):
            ceiling = poll.error_backoff_initial * 2**k
            gap = by_number[next_call] - by_number[throttled_call]
            assert ceiling / 2 - 0.03 <= gap <= ceiling + 0.3, (shard, k, gap)
    assert deliveries.duplicates() == 0


async def test_server_errors_are_retried(kinesis_mock: KinesisMock, stream_name: str) -> None:
    rule = combine(
        nth_calls({2, 3, 4}, Fault("InternalFailure", 500)),
        nth_calls({6}, Fault("ServiceUnavailable", 503)),
        nth_calls({1}, Fault("InternalFailure", 500), operation="ListShards"),
    )
    deliveries = Deliveries()
    async with (
        kinesis_client(kinesis_mock.endpoint_url) as client,
        KinesisFaultInjector(kinesis_mock.endpoint_url, rule=rule) as injector,
    ):
        arn = await create_stream(client, stream_name, 2)
        writer = Writer(client, stream_name)
        await writer.put(60)
        async with consumer(injector.endpoint_url, arn, deliveries) as engine:
            await all_delivered(deliveries, writer)
            await writer.put(40)
            await all_delivered(deliveries, writer)
            counters = stats(engine).counters
            assert counters.source_errors >= len(injector.injected()) - 1
            assert counters.throttles == 0
            assert not stats(engine).last_processing_result.startswith("PROBLEM")


# A deleted stream.


async def test_deleted_stream_is_a_visible_problem_not_a_crash_loop(
    kinesis_mock: KinesisMock, stream_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kinesis_esm")
    deliveries = Deliveries()
    async with kinesis_client(kinesis_mock.endpoint_url) as client:
        arn = await create_stream(client, stream_name, 2)
        writer = Writer(client, stream_name)
        await writer.put(30)
        async with consumer(kinesis_mock.endpoint_url, arn, deliveries) as engine:
            await all_delivered(deliveries, writer)
            await client.delete_stream(StreamName=stream_name, EnforceConsumerDeletion=True)
            await wait_for(
                lambda: (
                    engine.statistics().mappings[0].last_processing_result.startswith("PROBLEM")
                ),
                10,
                message="the problem state",
            )
            result = stats(engine).last_processing_result
            # Not a crash loop: the engine runs on, and retries are spaced by the back-off.
            # Once it has grown (after a few retries), each shard waits problem_backoff_max
            # (2 s here) between attempts: two shards make about one failure a second.
            errors = stats(engine).counters.source_errors
            await wait_for(
                lambda: stats(engine).counters.source_errors >= errors + 6, 15, message="retries"
            )
            started, errors = time.monotonic(), stats(engine).counters.source_errors
            await wait_for(
                lambda: stats(engine).counters.source_errors >= errors + 4,
                15,
                message="more retries",
            )
            assert time.monotonic() - started >= 1.0
            assert stats(engine).state == "Enabled"
            assert stats(engine).last_processing_result.startswith("PROBLEM")
    assert "not found" in result.lower() or "ResourceNotFound" in result, result
    assert any(r.levelno >= logging.ERROR for r in caplog.records)


async def test_missing_permission_is_a_visible_problem_and_recovers(
    kinesis_mock: KinesisMock, stream_name: str
) -> None:
    denied = False

    def deny(operation: str, shard_id: str | None, number: int) -> Fault | None:
        return Fault("AccessDeniedException", 400, "not authorized") if denied else None

    deliveries = Deliveries()
    async with (
        kinesis_client(kinesis_mock.endpoint_url) as client,
        KinesisFaultInjector(kinesis_mock.endpoint_url, rule=deny) as injector,
    ):
        arn = await create_stream(client, stream_name, 2)
        writer = Writer(client, stream_name)
        await writer.put(30)
        async with consumer(injector.endpoint_url, arn, deliveries) as engine:
            await all_delivered(deliveries, writer)
            denied = True  # e.g. the role lost kinesis:GetRecords
            await wait_for(
                lambda: (
                    stats(engine).last_processing_result.startswith("PROBLEM: ")
                    and "AccessDeniedException" in stats(engine).last_processing_result
                ),
                10,
                message="the problem state",
            )
            await writer.put(30)
            assert stats(engine).state == "Enabled"
            denied = False  # the permission is back
            await all_delivered(deliveries, writer)
            await wait_for(
                lambda: not stats(engine).last_processing_result.startswith("PROBLEM"),
                10,
                message="the problem to clear",
            )
    assert injector.injected()
