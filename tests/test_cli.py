"""The ``kinesis-esm`` command as a new user meets it: options, help, refusals, messages, the
handler check of ``validate``, and the exit past stuck handler threads. Messages are pinned."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kinesis_esm import __version__
from kinesis_esm.cli._main import _parser
from kinesis_esm.cli._main import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[1]
ARN = "arn:aws:kinesis:us-east-1:000000000000:stream/orders"


def config(handler: str = "kinesis_esm.examples:handler", mappings: int = 1) -> str:
    text = f'[functions.orders]\nhandler = "{handler}"\n'
    for i in range(mappings):
        text += (
            f'\n[[event_source_mappings]]\nfunction_name = "orders"\n'
            f'event_source_arn = "{ARN}-{i}"\nstarting_position = "LATEST"\n'
        )
    return text


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli_main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err.strip().splitlines()[-1]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"kinesis-esm {__version__}\n"


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["validate", "--config", "x.toml"], "INFO"),
        (["--log-level", "DEBUG", "validate", "--config", "x.toml"], "DEBUG"),
        (["validate", "--config", "x.toml", "--log-level", "WARNING"], "WARNING"),
        (["validate", "--log-level", "error", "--config", "x.toml"], "ERROR"),
        (["--log-level", "ERROR", "run", "--config", "x.toml", "--log-level", "debug"], "DEBUG"),
        (["--log-level", "warning", "status"], "WARNING"),
    ],
)
def test_log_level_before_or_after_the_command(argv: list[str], level: str) -> None:
    assert _parser().parse_args(argv).log_level == level


def test_a_bad_log_level_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(["validate", "--config", "x.toml", "--log-level", "LOUD"], capsys)
    assert line == (
        "kinesis-esm validate: error: argument --log-level: invalid choice: 'LOUD' "
        "(choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR')"
    )


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_has_help_and_shows_its_default() -> None:
    parsers = {"kinesis-esm": _parser(), **subcommands()}
    assert set(parsers) == {"kinesis-esm", "run", "validate", "demo", "status"}
    for name, parser in parsers.items():
        shown = " ".join(parser.format_help().split())  # unwrapped
        for action in parser._actions:
            if not action.option_strings or action.dest in ("help", "version"):
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in shown or "default" in action.help, (
                    name,
                    action.option_strings,
                )


def test_defaults_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    expected = {
        "demo": [
            "--seconds SECONDS how long to produce records, more than 0 (default: 20.0)",
            "--shards SHARDS shards of the demo stream, 1 to 100 (default: 4)",
            "--rate RATE records per second to produce, 1 to 5000 (default: 200)",
        ],
        "run": [
            "--config FILE the TOML config file (required)",
            "--log-interval SECONDS seconds between progress lines in the log; 0: none "
            "(default: 60.0)",
        ],
        "validate": ["--config FILE the TOML config file to check (required)"],
        "status": ["--interval SECONDS seconds between refreshes (default: 2.0)", "--json"],
    }
    for command, lines in expected.items():
        with pytest.raises(SystemExit):
            cli_main([command, "--help"])
        shown = " ".join(capsys.readouterr().out.split())
        for line in lines:
            assert line in shown, (command, line, shown)


def test_the_description_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    shown = capsys.readouterr().out
    assert "``" not in shown and ":class:" not in shown
    assert "Kinesis event source mapping" in shown
    for command in ("run", "validate", "demo", "status"):
        assert command in shown


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shards", "0"], "argument --shards: must be between 1 and 100, got 0"),
        (["--shards", "101"], "argument --shards: must be between 1 and 100, got 101"),
        (["--shards", "two"], "argument --shards: 'two' is not an integer"),
        (["--seconds", "-1"], "argument --seconds: must be greater than 0, got -1"),
        (["--seconds", "0"], "argument --seconds: must be greater than 0, got 0"),
        (["--seconds", "nan"], "argument --seconds: 'nan' is not a finite number"),
        (["--rate", "0"], "argument --rate: must be between 1 and 5000, got 0"),
        (["--rate", "5001"], "argument --rate: must be between 1 and 5000, got 5001"),
    ],
)
def test_demo_refuses_values_out_of_range(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert refused(["demo", *argv], capsys) == f"kinesis-esm demo: error: {message}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "--interval", "0"], "argument --interval: must be greater than 0, got 0"),
        (
            ["run", "--config", "x.toml", "--log-interval", "-5"],
            "argument --log-interval: must be at least 0, got -5",
        ),
    ],
)
def test_intervals_out_of_range_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert refused(argv, capsys) == f"kinesis-esm {argv[0]}: error: {message}"


@pytest.mark.parametrize(
    ("mappings", "summary"),
    [(0, "0 mappings, 1 function"), (1, "1 mapping, 1 function"), (2, "2 mappings, 1 function")],
)
def test_validate_counts_in_words(
    mappings: int, summary: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(config(mappings=mappings))
    assert cli_main(["validate", "--config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: OK ({summary})\n"


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (
            "no_such_module_for_validate:handler",
            "cannot import module 'no_such_module_for_validate' (working directory {cwd}): "
            "ModuleNotFoundError: No module named 'no_such_module_for_validate'",
        ),
        (
            "kinesis_esm.examples:no_such_handler",
            "module 'kinesis_esm.examples' has no attribute 'no_such_handler'",
        ),
    ],
)
def test_validate_imports_each_handler(
    handler: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "handlers.toml"
    path.write_text(config(handler))
    assert cli_main(["validate", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    prefix = f"kinesis-esm: {path}: functions.orders.handler: "
    assert captured.err.startswith(prefix), captured.err
    assert message.format(cwd=os.getcwd()) in captured.err
    assert captured.err.count("\n") == 1


def test_validate_imports_a_handler_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "validate_cwd_handlers.py").write_text("def handler(event, context):\n    pass\n")
    path = tmp_path / "cwd.toml"
    path.write_text(config("validate_cwd_handlers:handler"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_handler adds the directory
    assert cli_main(["validate", "--config", str(path)]) == 0, capsys.readouterr().err
    assert "OK (1 mapping, 1 function)" in capsys.readouterr().out


# The exit: only handler threads past their timeout are waited past

EXIT_SCRIPT = """\
import logging, sys, threading, time
import anyio
from kinesis_esm import CallableFunction
from kinesis_esm.cli._main import _exit_past_stuck_handlers

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
mode = sys.argv[1]

def stuck(event, context):
    time.sleep(30)

def quick(event, context):
    return "ok"

async def invoke():
    handler = stuck if mode == "stuck" else quick
    result = await CallableFunction(handler, name="f", timeout=1).invoke({})
    print("invoked:", result.error_message or result.payload, flush=True)

anyio.run(invoke)
if mode == "other-thread":  # not a handler: ends on its own, soon
    threading.Thread(target=time.sleep, args=(0.5,)).start()
_exit_past_stuck_handlers(0)
print("exited normally", flush=True)
"""


def run_exit(mode: str) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    return result, time.monotonic() - began


def test_exit_past_a_handler_thread_that_outlived_its_timeout() -> None:
    result, elapsed = run_exit("stuck")
    assert result.returncode == 0, result
    assert "invoked: Task timed out after 1.00 seconds" in result.stdout
    assert (
        "WARNING exiting past 1 handler thread still running after their timeout" in result.stderr
    ), result.stderr
    assert "exited normally" not in result.stdout  # left without waiting for the thread
    assert elapsed < 20, f"waited {elapsed:.0f}s for a stuck handler"


@pytest.mark.parametrize("mode", ["quick", "other-thread"])
def test_no_warning_when_no_handler_timed_out(mode: str) -> None:
    result, _ = run_exit(mode)
    assert result.returncode == 0, result
    assert "invoked: ok" in result.stdout
    assert "exiting past" not in result.stderr, result.stderr
    assert "exited normally" in result.stdout


def test_the_installed_command_prints_its_version() -> None:
    cli = Path(sys.executable).with_name("kinesis-esm")
    result = subprocess.run([str(cli), "--version"], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, f"kinesis-esm {__version__}\n")


def test_refusals_name_the_command_without_a_traceback() -> None:
    cli = Path(sys.executable).with_name("kinesis-esm")
    result = subprocess.run(
        [str(cli), "demo", "--shards", "0"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.endswith(
        "kinesis-esm demo: error: argument --shards: must be between 1 and 100, got 0\n"
    ), textwrap.shorten(result.stderr, 500)
