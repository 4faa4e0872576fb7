"""Shared fixtures: real emulator processes on 127.0.0.1, one per session, and dummy credentials."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

# Dummy credentials before anything imports botocore: tests never touch a real account.
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
for _variable in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
    os.environ.pop(_variable, None)

from tests.support.dynalite import dynalite, dynalite_server  # noqa: E402, F401 - fixtures
from tests.support.emulators import Kinesalite, KinesisMock, MotoServer  # noqa: E402
from tests.support.kinesis import KinesisClient, kinesis_client  # noqa: E402

# fixtures of support modules, for every test module
pytest_plugins = ("tests.support.environments",)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server process for the session; prefer the `moto` fixture, which resets it."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoServer) -> str:
    """The endpoint URL of the session's moto server, with all its state cleared first."""
    if not moto_server.running:  # a test killed it: bring it back
        moto_server.start()
    moto_server.reset()
    return moto_server.endpoint_url


@pytest.fixture
async def client(moto: str) -> AsyncIterator[KinesisClient]:
    """A Kinesis client of the `moto` server (a test on another emulator defines its own)."""
    async with kinesis_client(moto) as c:
        yield c


@pytest.fixture
def dynamodb(dynalite: str) -> str:  # noqa: F811 - the fixture imported above
    """DynamoDB for lease tests: dynalite, which locks an item between a condition and its
    write as DynamoDB does (moto does not); use a table name of the test's own."""
    return dynalite


@pytest.fixture(scope="session")
def kinesis_mock() -> Iterator[KinesisMock]:
    """One kinesis-mock process for the session, never reset: use `stream_name` for names.

    A test that kills or restarts an emulator should start its own `KinesisMock()` instead.
    """
    with KinesisMock() as server:
        yield server


@pytest.fixture(scope="session")
def kinesalite() -> Iterator[Kinesalite]:
    """One in-memory kinesalite process for the session, never reset: use `stream_name`."""
    with Kinesalite() as server:
        yield server


@pytest.fixture
def stream_name(request: pytest.FixtureRequest) -> str:
    """A stream name unique to this test run: the test's name and a random suffix."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:80].strip("-")
    return f"{base}-{uuid.uuid4().hex[:10]}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests using the kinesis-mock fixture get its marker: `-m "not kinesis_mock"` skips them."""
    for item in items:
        if "kinesis_mock" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kinesis_mock)
