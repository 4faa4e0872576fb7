"""Execution environments under a mapping: an init failure (the handler's module does not
import) is a function error under the failure policy, shown in LastProcessingResult with
Lambda's error type, and the records are not lost (they wait, retried)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kinesis_esm import Engine, EventSourceMappingConfig, MemoryStream, RetrySettings
from kinesis_esm.functions import ProcessFunction
from tests.support.kinesis import wait_for

pytestmark = pytest.mark.anyio
ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/env"


async def test_an_init_failure_shows_in_last_processing_result(tmp_path: Path) -> None:
    (tmp_path / "broken_handler.py").write_text("import no_such_module_anywhere\n")
    stream = MemoryStream(ARN)
    for i in range(3):
        stream.put(f"k{i}", b"{}")
    function = ProcessFunction(
        "broken_handler:handler", name="broken", timeout=5, task_root=tmp_path
    )
    config = EventSourceMappingConfig(
        function_name="broken", event_source_arn=ARN, starting_position="TRIM_HORIZON"
    )
    async with Engine(source=stream, retry_settings=RetrySettings(0.05, 0.2)) as engine:
        uuid = await engine.add_mapping(config, function, owns_function=True)
        await wait_for(
            lambda: (
                engine.mapping_statistics(uuid).last_processing_result
                == "PROBLEM: Function call failed (Runtime.ImportModuleError)"
            ),
            30,
            message="the init error in LastProcessingResult",
        )
        stats = engine.mapping_statistics(uuid)
    assert stats.counters.errors >= 1
    assert stats.counters.succeeded_events == 0 and stats.counters.dropped_events == 0
    assert stats.shards[0].checkpoint is None  # nothing passed: the records wait
