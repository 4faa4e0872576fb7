"""dynalite (npm): a DynamoDB on LevelDB, on 127.0.0.1, for lease tests that need real races.

Unlike moto's server, dynalite locks each item while it checks a condition and writes, so
concurrent conditional writes on one lease behave as on DynamoDB: exactly one of many takes
with the same counter wins. It answers AWS's exact validation messages, and with
``persist=True`` it keeps its tables in LevelDB under the workdir across restarts (a stop and
a start of the "DynamoDB outage" kind). Gaps: no ReturnValuesOnConditionCheckFailure item, no
IAM, no throttling.

It is found in scripts/emulators/node_modules/dynalite, or in the package folder named by the
environment variable KINESIS_ESM_DYNALITE (e.g. after `npm install dynalite@3 --prefix DIR`,
``KINESIS_ESM_DYNALITE=DIR/node_modules/dynalite``).
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.emulators import (
    FORCE_LOOPBACK_JS,
    HOST,
    NODE_MODULES,
    EmulatorProcess,
    _require_node_script,
)

__all__ = ["Dynalite", "dynalite", "dynalite_server", "dynamodb_answers"]


def dynamodb_answers(port: int, timeout: float = 1.0) -> bool:
    """True when an HTTP server on 127.0.0.1:`port` answers a DynamoDB ListTables POST."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request(
            "POST",
            "/",
            body=b"{}",
            headers={
                "X-Amz-Target": "DynamoDB_20120810.ListTables",
                "Content-Type": "application/x-amz-json-1.0",
            },
        )
        connection.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


class Dynalite(EmulatorProcess):
    """dynalite in memory (default) or on LevelDB in its workdir (``persist=True``)."""

    name = "dynalite"

    def __init__(
        self, *, port: int | None = None, persist: bool = False, startup_timeout: float = 60.0
    ) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout)
        self.persist = persist

    @staticmethod
    def package() -> Path:
        override = os.environ.get("KINESIS_ESM_DYNALITE")
        return Path(override) if override else NODE_MODULES / "dynalite"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def command(self) -> list[str]:
        cli_js = self.package() / "cli.js"
        node = _require_node_script(cli_js)
        command = [node, "-r", str(FORCE_LOOPBACK_JS), str(cli_js), "--port", str(self.port)]
        for option in ("--createTableMs", "--deleteTableMs", "--updateTableMs"):
            command += [option, "0"]
        if self.persist:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            command += ["--path", str(self.data_dir)]
        return command

    def is_ready(self) -> bool:
        return dynamodb_answers(self.port)


@pytest.fixture(scope="session")
def dynalite_server() -> Iterator[Dynalite]:
    """One in-memory dynalite for the session; prefer `dynalite`, which gives a fresh table."""
    with Dynalite() as server:
        yield server


@pytest.fixture
def dynalite(dynalite_server: Dynalite) -> str:
    """The endpoint URL of the session's dynalite (restarted if a test killed it). It is not
    reset between tests: use a table name of the test's own."""
    if not dynalite_server.running:
        dynalite_server.start()
    return dynalite_server.endpoint_url
