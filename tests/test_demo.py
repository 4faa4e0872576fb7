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
    r"produced (?P<produced>[\d,]+) records?; delivered (?P<delivered>[\d,]+) distinct in "
    r"(?P<invocations>[\d,]+) invocations?; missing (?P<missing>[\d,]+)"
)
REPO_ROOT = Path(__file__).resolve().parents[1]


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
    lines = result.stdout.splitlines()  # each step says what it does, as it begins
    assert lines[0] == "starting an in-process Kinesis emulator (moto) on 127.0.0.1..."
    assert lines[2] == "creating stream demo-orders with 4 shards..."
    assert lines[3] == (
        "stream demo-orders: 4 shards; producing ~200 records/s for 5s; Ctrl-C stops early"
    )
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


FAKE_PYTHON = """\
#!/usr/bin/env bash
# Plays python3 on a fresh machine: makes a virtualenv whose pip and kinesis-esm only log.
if [ "$1" = --version ]; then echo "Python 3.11.0"; exit 0; fi
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
  printf '#!/usr/bin/env bash\\necho "kinesis-esm $*"\\n' > "$3/bin/kinesis-esm"
  chmod +x "$3/bin/kinesis-esm"
  exit 0
fi
echo "python $*" >> "$(dirname "$0")/../../calls.log"
"""


def test_scripts_demo_says_what_it_does_on_a_fresh_machine(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("scripts/demo", "scripts/bootstrap", "pyproject.toml"):
        (checkout / name).write_bytes((REPO_ROOT / name).read_bytes())
        (checkout / name).chmod(0o755)
    python = tmp_path / "python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "PYTHON": str(python), "HOME": str(tmp_path)}

    def demo() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(checkout / "scripts/demo"), "--seconds", "5"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = demo()
    assert first.returncode == 0, first
    assert first.stderr.splitlines() == [
        "bootstrap: creating a virtualenv in .venv with Python 3.11.0",
        "bootstrap: upgrading pip in .venv",
        "bootstrap: installing kinesis-esm[demo] and its dependencies into .venv "
        "(a minute or two the first time)",
        "bootstrap: installed",
        "demo: running kinesis-esm demo --seconds 5 (Ctrl-C stops it cleanly)",
    ]
    assert first.stdout == "kinesis-esm demo --seconds 5\n"
    calls = (checkout / "calls.log").read_text().splitlines()
    assert any("pip install" in c and "-e .[demo]" in c for c in calls), calls
    again = demo()  # everything in place: only the demo's own line
    assert again.returncode == 0, again
    assert again.stderr.splitlines() == [
        "demo: running kinesis-esm demo --seconds 5 (Ctrl-C stops it cleanly)"
    ]
