"""The ``kinesis-esm`` command: run, validate, demo, status (the argument parser and the exit)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from .. import __version__
from .._redact import RedactingFilter, install_redaction
from ..config import ConfigError, DaemonConfig, load_config
from ..engine._gc import tune_gc
from ..functions._callable import abandoned_handlers_deadline, overdue_handler_threads

__all__ = ["main"]

DESCRIPTION = (
    "AWS Lambda's Kinesis event source mapping, run anywhere: reads Kinesis data streams and "
    "invokes your functions with Lambda's batching, retries, checkpoints and metrics."
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EXIT_JOIN_SECONDS = 5.0  # how long an exit waits for threads that are not handlers
log = logging.getLogger("kinesis_esm.daemon")


def _run_async(func: Callable[..., Awaitable[int]], *args: Any, **kwargs: Any) -> int:
    tune_gc()  # a long-running consumer: see _gc

    async def entry() -> int:
        return await func(*args, **kwargs)

    try:
        import uvloop  # noqa: F401
    except ImportError:
        options = {}
    else:
        options = {"use_uvloop": True}
    try:
        return anyio.run(entry, backend_options=options)
    except BaseExceptionGroup as group:  # anyio's task groups wrap even a lone exception
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, BaseExceptionGroup):
            raise
        raise leaf from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # An endpoint's error text may quote the request's credentials: ours are redacted as they
    # are made, any other library's on the way out.
    install_redaction()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    # botocore's debug output includes request headers; keep it quiet whatever our level
    for noisy in ("botocore", "aiobotocore", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# argument types: a clear argparse error for a value out of range


def _number(text: str, *, integer: bool) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _bounded(
    lo: float, hi: float | None, *, integer: bool, low_open: bool = False
) -> Callable[[str], float]:
    """An argparse type: a number in [lo, hi] (``low_open``: greater than lo)."""

    def parse(text: str) -> float:
        value = _number(text, integer=integer)
        too_low = value <= lo if low_open else value < lo
        if too_low or (hi is not None and value > hi):
            if hi is not None:
                allowed = f"between {lo:g} and {hi:g}"
            else:
                allowed = f"greater than {lo:g}" if low_open else f"at least {lo:g}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    parse.__name__ = "integer" if integer else "number"  # argparse's "invalid <name> value"
    return parse


POSITIVE_SECONDS = _bounded(0, None, integer=False, low_open=True)
SECONDS_OR_OFF = _bounded(0, None, integer=False)
DEMO_SHARDS = _bounded(1, 100, integer=True)
DEMO_RATE = _bounded(1, 5000, integer=True)  # one PutRecords call (500 records) per 0.1 s


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help, unless the help says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS)
        if action.option_strings and shown and "%(default)" not in text and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kinesis-esm", description=DESCRIPTION, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    log_level: dict[str, Any] = {
        "type": str.upper,
        "choices": LOG_LEVELS,
        "metavar": "LEVEL",
        "help": f"log level: {', '.join(LOG_LEVELS)}",
    }
    parser.add_argument("--log-level", default="INFO", **log_level)
    # Also after the subcommand; there, no default, so that one given before it stands.
    common = argparse.ArgumentParser(add_help=False)
    log_level["help"] += " (default: INFO, or the one given before the command)"
    common.add_argument("--log-level", default=argparse.SUPPRESS, **log_level)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            parents=[common],
            formatter_class=_HelpFormatter,
        )

    run = command("run", "run the daemon from a config file")
    run.add_argument(
        "--config", required=True, metavar="FILE", help="the TOML config file (required)"
    )
    run.add_argument(
        "--log-interval",
        type=SECONDS_OR_OFF,
        default=60.0,
        metavar="SECONDS",
        help="seconds between progress lines in the log; 0: none",
    )
    run.add_argument(
        "--emf-interval",
        type=SECONDS_OR_OFF,
        default=0.0,
        metavar="SECONDS",
        help="seconds between CloudWatch metrics in the Embedded Metric Format on stdout; "
        "0 (the default): none",
    )
    validate = command("validate", "check a config file, import its handlers, and exit")
    validate.add_argument(
        "--config", required=True, metavar="FILE", help="the TOML config file to check (required)"
    )
    demo = command("demo", "run on an embedded emulator with an example handler")
    demo.add_argument(
        "--seconds",
        type=POSITIVE_SECONDS,
        default=20.0,
        help="how long to produce records, more than 0",
    )
    demo.add_argument(
        "--shards", type=DEMO_SHARDS, default=4, help="shards of the demo stream, 1 to 100"
    )
    demo.add_argument(
        "--rate", type=DEMO_RATE, default=200, help="records per second to produce, 1 to 5000"
    )
    status = command("status", "show a running daemon's mappings and shards")
    status.add_argument(
        "--url",
        help="the daemon's control plane (default: from --config, else http://127.0.0.1:9001)",
    )
    status.add_argument(
        "--config",
        metavar="FILE",
        help="the daemon's config file, for its [control] listener and credentials",
    )
    status.add_argument(
        "--token", help="bearer token (default: $KINESIS_ESM_TOKEN, else the config's)"
    )
    status.add_argument(
        "--interval",
        type=POSITIVE_SECONDS,
        default=2.0,
        metavar="SECONDS",
        help="seconds between refreshes",
    )
    status.add_argument("--once", action="store_true", help="print once and exit")
    status.add_argument(
        "--json",
        action="store_true",
        help="print the daemon's /status as JSON, one line per refresh",
    )
    return parser


def _one_line(text: str) -> str:
    """An error for the terminal: one line whatever the values it quotes hold."""
    return "".join(
        char if char.isprintable() else repr(char)[1:-1] for char in text.replace("\r\n", "\n")
    )


def _error(exc: BaseException) -> int:
    print(f"kinesis-esm: {_one_line(str(exc))}", file=sys.stderr)
    return 2


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _status(args: argparse.Namespace) -> int:
    from ._status import StatusSource, run_status

    source = StatusSource()
    if args.config:
        source = StatusSource.from_control(load_config(args.config).control)
    if args.url:
        source = dataclasses.replace(source, url=args.url)
    token = args.token or os.environ.get("KINESIS_ESM_TOKEN")
    if token:
        source = dataclasses.replace(source, token=token)
    return run_status(source, interval=args.interval, once=args.once, as_json=args.json)


def check_handlers(config: DaemonConfig, source: str) -> None:
    """Import every declared handler the daemon would import (target ``local``); a failure is
    a ConfigError naming the file and the key, ``functions.<name>.handler``."""
    from ..functions import load_handler

    for fn in config.functions:
        handler = getattr(fn, "handler", None)
        if getattr(fn, "target", "local") != "local" or not handler:
            continue
        try:
            load_handler(handler, function_name=fn.name)
        except ImportError as exc:
            message = str(exc).removeprefix(f"function {fn.name!r}: ")
            parameter = f"functions.{fn.name}.handler"
            raise ConfigError(message, parameter=parameter, source=source) from None


def _validate(path: str) -> int:
    from ..config import unsupported_features
    from ..engine import SUPPORTED_FEATURES

    try:
        config = load_config(path)
        for i, mapping in enumerate(config.event_source_mappings):
            try:  # what run would refuse, validate refuses too
                unsupported_features(mapping, SUPPORTED_FEATURES)
            except ConfigError as err:
                raise err.under(f"event_source_mappings[{i}]", source=path) from None
        check_handlers(config, path)
    except ConfigError as exc:
        return _error(exc)
    mappings = _plural(len(config.event_source_mappings), "mapping")
    functions = _plural(len(config.functions), "function")
    print(f"{path}: OK ({mappings}, {functions})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.log_level)
    if args.command == "demo":
        from ._demo import run_demo

        return _run_async(run_demo, seconds=args.seconds, shards=args.shards, rate=args.rate)
    if args.command == "status":
        try:
            return _status(args)
        except ConfigError as exc:
            return _error(exc)
    if args.command == "validate":
        return _validate(args.config)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _error(exc)
    from ._daemon import run_daemon

    try:
        code = _run_async(
            run_daemon, config, log_interval=args.log_interval, emf_interval=args.emf_interval
        )
    except ConfigError as exc:
        return _error(exc)
    except (ImportError, OSError) as exc:  # a handler that does not import; a busy port
        return _error(exc)
    _exit_past_stuck_handlers(code)
    return code


def _exit_past_stuck_handlers(code: int) -> None:
    """A sync handler that outlived its timeout still runs in a thread nobody can kill; the
    interpreter would wait for it at exit. The stop is done (checkpoints written), so leave."""
    deadline = abandoned_handlers_deadline()
    at: float | None = None  # now
    try:  # a handler cut short before its timeout may still finish within it
        while deadline is not None and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))
            deadline = abandoned_handlers_deadline()
    except KeyboardInterrupt:  # Ctrl-C again: wait no more, count them all
        at = math.inf
    stuck = overdue_handler_threads(at)
    if stuck:
        what = _plural(stuck, "handler thread")
        log.warning("exiting past %s still running after their timeout", what)
        _leave(code)
    # Other threads (a thread pool's idle workers winding down) get a moment to end.
    until = time.monotonic() + EXIT_JOIN_SECONDS
    for thread in _lingering_threads():
        thread.join(max(0.0, until - time.monotonic()))
    if lingering := _lingering_threads():
        names = ", ".join(sorted({t.name for t in lingering}))
        log.warning("exiting past %s still running: %s", _plural(len(lingering), "thread"), names)
        _leave(code)


def _lingering_threads() -> list[threading.Thread]:
    main_thread = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main_thread and not t.daemon]


def _leave(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
