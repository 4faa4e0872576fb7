"""`kinesis-esm demo`: the embedded default runs end to end and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kinesis import wait_until

CLI = Path(sys.executable).with_name("kinesis-esm")
SUMMARY = re.compile(
    r"produced (?P<produced>[\d,]+) records; delivered (?P<delivered>[\d,]+) distinct in "
    r"(?P<invocations>[\d,]+) invocations; missing (?P<missing>[\d,]+)"
)


def number(text: str) -> int:
    return int(text.replace(",", ""))


def demo_env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1")


def test_demo_delivers_every_record_and_exits_0(tmp_path: Path) -> None:
    began = time.monotonic()
    result = subprocess.run(
        [str(CLI), "demo", "--seconds", "5"],
        cwd=tmp_path,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stdout + result.stderr
    summary = SUMMARY.search(result.stdout)
    assert summary is not None, result.stdout
    produced = number(summary["produced"])
    assert produced > 0  # "missing 0" of nothing would prove nothing
    assert number(summary["missing"]) == 0
    assert number(summary["delivered"]) >= produced
    assert number(summary["invocations"]) > 0
    assert len(re.findall(r"rec/s", result.stdout)) >= 3, result.stdout  # progress as it goes
    assert "iterator age" in result.stdout
    assert elapsed < 60, f"a 5 s demo took {elapsed:.0f} s"


@pytest.fixture
def demo_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [str(CLI), "demo", "--seconds", "120"],
            cwd=tmp_path,
            env=demo_env(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield process, out
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def test_demo_stops_cleanly_on_ctrl_c(
    demo_process: tuple[subprocess.Popen[bytes], Path],
) -> None:
    process, out = demo_process
    wait_until(lambda: "rec/s" in out.read_text(errors="replace"), 30, message="progress")
    process.send_signal(signal.SIGINT)
    began = time.monotonic()
    wait_until(lambda: process.poll() is not None, 30, message="the demo to stop")
    text = out.read_text(errors="replace")
    assert time.monotonic() - began < 30
    assert "interrupted: stopping cleanly" in text, text
    assert process.returncode == 0, text
    summary = SUMMARY.search(text)
    assert summary is not None, text
    assert number(summary["missing"]) == 0, text
