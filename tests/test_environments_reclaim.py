"""Idle execution environments are reclaimed, as Lambda reclaims idle sandboxes: the pure choice
(``functions._reclaim``), the pool's reaper on real worker processes, the settings, and the
figures /metrics exports per declared function."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from kinesis_esm import ConfigError, DaemonConfig, FunctionConfig
from kinesis_esm.control._metrics import registry_for
from kinesis_esm.functions._environments import ProcessFunction
from kinesis_esm.functions._pool import INIT_BUCKETS
from kinesis_esm.functions._reclaim import next_reclaim, reclaimable
from kinesis_esm.runtime._functions import DeclaredFunctions
from tests.support.control import Samples, scrape
from tests.support.environments import Factory
from tests.support.kinesis import wait_for
from tests.support.processes import alive

pytestmark = pytest.mark.anyio

# Each invocation answers its environment's pid; "hold" keeps it busy so that invocations
# running together need environments of their own.
HANDLER = """
    import os, time
    def handler(event, context):
        time.sleep(event.get("hold", 0))
        return os.getpid()
"""


async def warm(function: ProcessFunction, count: int) -> list[int]:
    """``count`` environments, each started by an invocation held until all have begun;
    their pids in the order they went idle."""
    pids: list[int] = []

    async def one() -> None:
        result = await function.invoke({"Records": [], "hold": 0.5})
        assert result.ok, result
        pids.append(result.payload)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for _ in range(count):
                group.start_soon(one)
    assert len(set(pids)) == count, "the invocations did not run side by side"
    return pids


# The choice (pure)

idle_lists = st.lists(st.floats(0, 1000, allow_nan=False), max_size=12)


@given(
    idle_lists,
    st.integers(0, 6),
    st.floats(0, 2000, allow_nan=False),
    st.floats(0.1, 500),
    st.integers(0, 10),
)
def test_only_expired_environments_go_least_recent_first_and_the_minimum_stays(
    idle_since: list[float], busy: int, now: float, timeout: float, minimum: int
) -> None:
    chosen = reclaimable(idle_since, busy=busy, now=now, timeout=timeout, minimum=minimum)
    assert len(set(chosen)) == len(chosen)
    assert all(idle_since[i] + timeout <= now for i in chosen)  # only the expired
    alive_after = len(idle_since) + busy - len(chosen)
    assert alive_after >= min(minimum, len(idle_since) + busy)  # the minimum stays
    expired = [i for i, since in enumerate(idle_since) if since + timeout <= now]
    room = max(0, len(idle_since) + busy - minimum)
    assert len(chosen) == min(len(expired), room)  # nothing expired is kept beyond that
    kept = [idle_since[i] for i in expired if i not in chosen]
    assert all(idle_since[i] <= k for i in chosen for k in kept)  # the least recent go


@given(idle_lists, st.integers(0, 6), st.floats(0.1, 500), st.integers(0, 10))
def test_the_next_look_is_exactly_when_one_becomes_reclaimable(
    idle_since: list[float], busy: int, timeout: float, minimum: int
) -> None:
    due = next_reclaim(idle_since, busy=busy, timeout=timeout, minimum=minimum)
    options = {"busy": busy, "timeout": timeout, "minimum": minimum}
    if due is None:
        assert reclaimable(idle_since, now=1e9, **options) == []  # never, however late
        return
    assert reclaimable(idle_since, now=due, **options) != []
    before = max(0.0, due - 0.01)
    if before < due:
        assert reclaimable(idle_since, now=before, **options) == []


def test_a_timeout_of_0_never_reclaims() -> None:
    assert reclaimable([0.0, 1.0], busy=0, now=1e9, timeout=0, minimum=0) == []
    assert next_reclaim([0.0, 1.0], busy=0, timeout=0, minimum=0) is None


# The reaper, on real worker processes


async def test_idle_environments_are_reclaimed_down_to_the_minimum_and_the_warm_one_serves(
    make: Factory,
) -> None:
    function = make(HANDLER, idle_timeout=0.5, min_environments=1)
    pids = await warm(function, 3)
    await wait_for(lambda: function.statistics().environments == 1, 20, message="two reclaimed")
    stats = function.statistics()
    assert (stats.reclaimed, stats.started, stats.inits) == (2, 3, 3)
    assert stats.crashes == stats.timeouts == stats.out_of_memory == 0  # not losses
    for pid in pids[:2]:  # the least recently used went; their processes ended
        await wait_for(lambda pid=pid: not alive(pid), 10, message=f"worker {pid} to end")
    assert alive(pids[2])
    with anyio.fail_after(30):
        again = await function.invoke({"Records": []})
    assert again.payload == pids[2]  # warm: no init for it
    assert function.statistics().inits == 3


async def test_with_a_minimum_of_0_all_go_and_the_next_invocation_starts_a_new_one(
    make: Factory,
) -> None:
    function = make(HANDLER, idle_timeout=0.3, min_environments=0)
    (pid,) = await warm(function, 1)
    await wait_for(lambda: function.statistics().environments == 0, 20, message="reclaimed")
    await wait_for(lambda: not alive(pid), 10, message="its worker to end")
    with anyio.fail_after(30):
        result = await function.invoke({"Records": []})
    assert result.ok and result.payload != pid
    stats = function.statistics()
    assert (stats.started, stats.inits, stats.reclaimed, stats.replacements) == (2, 2, 1, 0)


async def test_a_busy_environment_is_never_reclaimed_and_0_keeps_them_all(
    make: Factory,
) -> None:
    busy_one = make(HANDLER, idle_timeout=0.3, min_environments=0)
    kept = make(HANDLER, idle_timeout=0, min_environments=0)
    await warm(kept, 2)
    (first,) = await warm(busy_one, 1)
    async with anyio.create_task_group() as group:
        results: list[Any] = []

        async def hold() -> None:
            results.append(await busy_one.invoke({"Records": [], "hold": 1.5}))

        group.start_soon(hold)
        await wait_for(lambda: busy_one.statistics().busy == 1, 10, message="busy")
    # held for 5 idle timeouts: still the same environment, and it answered
    assert results[0].ok and results[0].payload == first
    assert busy_one.statistics().reclaimed == 0
    await wait_for(lambda: busy_one.statistics().reclaimed == 1, 20, message="reclaimed after")
    # the one that reclaims was idle longer than a 0.3 s timeout; 0 kept everything
    assert kept.statistics().environments == 2 and kept.statistics().reclaimed == 0


async def test_a_stop_while_the_reaper_waits_is_prompt_and_ends_every_worker(
    make: Factory,
) -> None:
    function = make(HANDLER, idle_timeout=3600, min_environments=0)
    pids = await warm(function, 2)
    with anyio.fail_after(10):
        await function.aclose()
    for pid in pids:
        await wait_for(lambda pid=pid: not alive(pid), 10, message=f"worker {pid} to end")
    assert function.closed and function.statistics().reclaimed == 0


# Settings


@pytest.mark.parametrize(
    ("fields", "parameter", "message"),
    [
        ({"idle_timeout": 5}, "idle_timeout", "must be 0 (never reclaim) or between 10 and 86400"),
        ({"idle_timeout": 86401}, "idle_timeout", "got 86401"),
        ({"idle_timeout": "300"}, "idle_timeout", "seconds"),
        ({"min_environments": -1}, "min_environments", "between 0 and 1000"),
        (
            {"min_environments": 3, "max_environments": 2},
            "min_environments",
            "must be at most max_environments (2), got 3",
        ),
        ({"target": "http", "url": "http://127.0.0.1:1/", "idle_timeout": 60}, "idle_timeout", ""),
    ],
)
def test_bad_reclaim_settings_name_the_parameter(
    fields: dict[str, Any], parameter: str, message: str
) -> None:
    base: dict[str, Any] = {"name": "fn"}
    if fields.get("target", "local") == "local":
        base["handler"] = "app:handler"
    with pytest.raises(ConfigError) as info:
        FunctionConfig(**(base | fields))
    assert info.value.parameter == parameter
    assert message in str(info.value)


def test_reclaim_settings_in_range_are_kept() -> None:
    fn = FunctionConfig("fn", "app:handler", idle_timeout=60, min_environments=2)
    assert (fn.idle_timeout, fn.min_environments) == (60.0, 2)
    assert FunctionConfig("fn", "app:handler", idle_timeout=0).idle_timeout == 0.0


# The figures


async def test_metrics_carry_each_functions_environments_and_keep_counts_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(HANDLER))
    monkeypatch.chdir(tmp_path)  # a declared local function's task root
    fn = FunctionConfig("orders", "app:handler", idle_timeout=10, min_environments=0)
    declared = DeclaredFunctions(DaemonConfig(functions=(fn,)))
    registry = registry_for(list, declared.environment_statistics)
    label = (("function_name", "orders"),)

    def scraped() -> Samples:
        return scrape(generate_latest(registry).decode())

    first = declared.build(fn, fn.arn("us-east-1", "123456789012"))
    assert isinstance(first, ProcessFunction) and first.idle_timeout == 10
    await warm(first, 2)
    now = scraped()
    assert now[("kinesis_esm_environments_alive", label)] == 2
    assert now[("kinesis_esm_environments_busy", label)] == 0
    assert now[("kinesis_esm_environments_started_total", label)] == 2
    assert now[("kinesis_esm_environment_init_duration_seconds_count", label)] == 2
    assert now[("kinesis_esm_environment_init_duration_seconds_sum", label)] > 0
    top = (*label, ("le", "+Inf"))
    assert now[("kinesis_esm_environment_init_duration_seconds_bucket", top)] == 2
    assert now[("kinesis_esm_environments_lost_total", (*label, ("reason", "crash")))] == 0
    with anyio.fail_after(30):
        await first.aclose()  # the mapping stopped (an update restarts it the same way)
    second = declared.build(fn, fn.arn("us-east-1", "123456789012"))
    try:
        await warm(second, 1)
        after = scraped()
    finally:
        with anyio.fail_after(30):
            await second.aclose()
    assert after[("kinesis_esm_environments_alive", label)] == 1  # the closed pool's are gone
    assert after[("kinesis_esm_environments_started_total", label)] == 3  # never goes back
    assert after[("kinesis_esm_environment_init_duration_seconds_count", label)] == 3
    buckets = [
        after[("kinesis_esm_environment_init_duration_seconds_bucket", (*label, ("le", str(b))))]
        for b in INIT_BUCKETS
    ]
    assert buckets == sorted(buckets) and buckets[-1] <= 3  # cumulative
