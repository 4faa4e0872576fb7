"""Smoke tests of the test support: real emulators on 127.0.0.1, the fault proxy, the helpers."""

from __future__ import annotations

import http.client
import socket
from collections.abc import AsyncIterator

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream
from botocore.exceptions import ReadTimeoutError

from tests.support.emulators import (
    HOST,
    EmulatorProcess,
    Kinesalite,
    KinesisMock,
    MotoServer,
    free_port,
    listening_addresses,
)
from tests.support.kinesis import (
    StreamRecord,
    create_stream,
    kinesis_client,
    list_shard_ids,
    put_records,
    read_all,
    wait_for,
    wait_until,
)
from tests.support.proxy import FaultProxy, ThreadedProxy

EMULATORS = [
    pytest.param("kinesis_mock", marks=pytest.mark.kinesis_mock),
    "kinesalite",
    "moto_server",
]


@pytest.fixture(params=EMULATORS)
def emulator(request: pytest.FixtureRequest) -> EmulatorProcess:
    server: EmulatorProcess = request.getfixturevalue(request.param)
    if isinstance(server, MotoServer):
        server.reset()
    return server


def connect_refused(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return True
        return False


def http_get(port: int, path: str = "/", timeout: float = 5.0) -> int:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A TCP echo server on 127.0.0.1, the proxy's target in the fault tests."""

    async def echo(stream: SocketStream) -> None:
        async with stream:
            try:
                async for chunk in stream:
                    await stream.send(chunk)
            except anyio.BrokenResourceError:
                pass

    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        yield listener.extra(SocketAttribute.local_port)
        tg.cancel_scope.cancel()


async def echo_once(stream: SocketStream, payload: bytes = b"ping") -> bytes:
    await stream.send(payload)
    with anyio.fail_after(5):
        return await stream.receive()


# Emulators.


@pytest.mark.anyio
async def test_roundtrip_through_real_emulator(emulator: EmulatorProcess, stream_name: str) -> None:
    async with kinesis_client(emulator.endpoint_url) as client:
        arn = await create_stream(client, stream_name, 2)
        assert arn.endswith(f":stream/{stream_name}")
        assert len(await list_shard_ids(client, stream_name)) == 2
        records = [(f"key-{i}", f"payload-{i}".encode()) for i in range(20)]
        written = await put_records(client, stream_name, records)
        assert [(r.partition_key, r.data) for r in written] == records
        read = await read_all(client, stream_name)
    assert sorted(read) == sorted(written)


def test_emulators_listen_on_loopback_only(emulator: EmulatorProcess) -> None:
    ports = emulator.ports()
    assert ports
    for port in ports:
        assert listening_addresses(port) == [HOST]
        # All of 127.0.0.0/8 reaches the machine: a wildcard listener would accept on 127.0.0.2.
        assert connect_refused("127.0.0.2", port)


@pytest.mark.kinesis_mock
def test_kinesis_mock_persistence_survives_kill(stream_name: str) -> None:
    with KinesisMock(persist=True, persist_interval_ms=100) as server:

        async def write() -> list[StreamRecord]:
            async with kinesis_client(server.endpoint_url) as client:
                await create_stream(client, stream_name, 1)
                return await put_records(client, stream_name, [("k", b"kept")])

        async def read() -> list[StreamRecord]:
            async with kinesis_client(server.endpoint_url) as client:
                return await read_all(client, stream_name)

        written = anyio.run(write)
        data_file = server.data_dir / "kinesis-data.json"
        # It saves every PERSIST_INTERVAL; record data is stored base64-encoded ("a2VwdA==").
        wait_until(
            lambda: data_file.is_file() and b"a2VwdA==" in data_file.read_bytes(),
            10,
            message="kinesis-mock to save the record",
        )
        server.kill()
        assert not server.running
        server.start()
        assert anyio.run(read) == written


def test_restart_keeps_the_endpoint() -> None:
    with Kinesalite() as server:
        endpoint = server.endpoint_url
        first_pid = server.pid
        server.restart()
        assert server.endpoint_url == endpoint
        assert server.pid != first_pid
        server.kill()
        assert connect_refused(HOST, server.port)
        server.start()
        assert server.running


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind((HOST, port))


# The fault proxy.


@pytest.mark.anyio
async def test_proxy_passes_kinesis_traffic(kinesalite: Kinesalite, stream_name: str) -> None:
    async with FaultProxy(HOST, kinesalite.port) as proxy:
        assert listening_addresses(proxy.port) == [HOST]
        async with kinesis_client(proxy.endpoint_url) as client:
            await create_stream(client, stream_name, 1)
            written = await put_records(client, stream_name, [("k", b"via proxy")])
            assert await read_all(client, stream_name) == written
        assert proxy.connections >= 1


@pytest.mark.anyio
async def test_proxy_reset_mode_and_reset_connections(echo_port: int) -> None:
    async with FaultProxy(HOST, echo_port) as proxy:
        established = await anyio.connect_tcp(HOST, proxy.port)
        async with established:
            assert await echo_once(established) == b"ping"
            await proxy.set_mode("reset")
            async with await anyio.connect_tcp(HOST, proxy.port) as refused_late:
                with pytest.raises(anyio.BrokenResourceError), anyio.fail_after(5):
                    await echo_once(refused_late)
            # Existing connections are untouched by the mode, until reset_connections().
            assert await echo_once(established) == b"ping"
            assert await proxy.reset_connections() == 1
            with pytest.raises(anyio.BrokenResourceError), anyio.fail_after(5):
                await echo_once(established)
        await proxy.set_mode("pass")
        async with await anyio.connect_tcp(HOST, proxy.port) as again:
            assert await echo_once(again) == b"ping"
        assert proxy.connections == 3


@pytest.mark.anyio
async def test_proxy_refuse_mode(echo_port: int) -> None:
    async with FaultProxy(HOST, echo_port) as proxy:
        port = proxy.port
        await proxy.set_mode("refuse")
        with pytest.raises(OSError):
            await anyio.connect_tcp(HOST, port)
        await proxy.set_mode("pass")
        assert proxy.port == port
        async with await anyio.connect_tcp(HOST, port) as stream:
            assert await echo_once(stream) == b"ping"


@pytest.mark.anyio
async def test_proxy_stall_times_out_a_client(kinesalite: Kinesalite) -> None:
    async with FaultProxy(HOST, kinesalite.port) as proxy:
        await proxy.set_mode("stall")
        async with kinesis_client(proxy.endpoint_url, max_attempts=1, read_timeout=0.3) as client:
            with anyio.fail_after(10), pytest.raises(ReadTimeoutError):
                await client.list_streams()
        await wait_for(lambda: proxy.connections >= 1, 5, message="the stalled connection")
        await proxy.set_mode("pass")
        async with kinesis_client(proxy.endpoint_url) as client:
            assert "StreamNames" in await client.list_streams()


@pytest.mark.anyio
async def test_proxy_stall_holds_established_connections(echo_port: int) -> None:
    async with (
        FaultProxy(HOST, echo_port) as proxy,
        await anyio.connect_tcp(HOST, proxy.port) as stream,
    ):
        assert await echo_once(stream) == b"ping"
        await proxy.set_mode("stall")
        await stream.send(b"held")
        with anyio.move_on_after(0.2) as waited:
            await stream.receive()
        assert waited.cancelled_caught  # nothing comes back while stalled
        await proxy.set_mode("pass")
        with anyio.fail_after(5):
            assert await stream.receive() == b"held"


@pytest.mark.anyio
async def test_proxy_outage(echo_port: int) -> None:
    async with FaultProxy(HOST, echo_port) as proxy, anyio.create_task_group() as tg:
        established = await anyio.connect_tcp(HOST, proxy.port)
        tg.start_soon(proxy.outage, 0.3)
        await wait_for(lambda: proxy.mode == "refuse", 5, message="the outage to begin")
        with pytest.raises(anyio.BrokenResourceError), anyio.fail_after(5):
            await echo_once(established)
        await established.aclose()
        await wait_for(lambda: proxy.mode == "pass", 5, message="the outage to end")
        async with await anyio.connect_tcp(HOST, proxy.port) as stream:
            assert await echo_once(stream) == b"ping"


def test_threaded_proxy_for_sync_callers(moto_server: MotoServer) -> None:
    with ThreadedProxy(HOST, moto_server.port) as proxy:
        assert listening_addresses(proxy.port) == [HOST]
        assert http_get(proxy.port, "/moto-api/data.json") == 200
        proxy.set_mode("refuse")
        assert connect_refused(HOST, proxy.port)
        proxy.set_mode("pass")
        assert http_get(proxy.port, "/moto-api/data.json") == 200
        assert proxy.connections == 2
    assert connect_refused(HOST, proxy.port)
