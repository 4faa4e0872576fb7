"""The ``kinesis-esm`` command: run, demo, validate, status."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from ..config import ConfigError, load_config
from ..engine._gc import tune_gc

__all__ = ["main"]


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
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # botocore's debug output includes request headers; keep it quiet whatever our level
    for noisy in ("botocore", "aiobotocore", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kinesis-esm", description=__doc__)
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon from a config file")
    run.add_argument("--config", required=True, help="TOML config file")
    run.add_argument(
        "--log-interval", type=float, default=60.0, help="seconds between progress logs"
    )
    run.add_argument(
        "--emf-interval",
        type=float,
        default=0.0,
        help="seconds between CloudWatch metrics in the Embedded Metric Format on stdout "
        "(default 0: off)",
    )
    validate = sub.add_parser("validate", help="check a config file and exit")
    validate.add_argument("--config", required=True)
    demo = sub.add_parser("demo", help="run on an embedded emulator with an example handler")
    demo.add_argument(
        "--seconds", type=float, default=20.0, help="how long to produce (default 20)"
    )
    demo.add_argument("--shards", type=int, default=4)
    demo.add_argument("--rate", type=int, default=200, help="records per second to produce")
    status = sub.add_parser("status", help="live table of a running daemon's mappings and shards")
    status.add_argument(
        "--url",
        help="the daemon's control plane (default: from --config, else http://127.0.0.1:9001)",
    )
    status.add_argument(
        "--config", help="the daemon's config file: its [control] listener and credentials"
    )
    status.add_argument(
        "--token", help="bearer token (default: $KINESIS_ESM_TOKEN, or the config's)"
    )
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    status.add_argument("--once", action="store_true", help="print the table once and exit")
    return parser


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
    return run_status(source, interval=args.interval, once=args.once)


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
            print(f"kinesis-esm: {exc}", file=sys.stderr)
            return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"kinesis-esm: {exc}", file=sys.stderr)
        return 2
    if args.command == "validate":
        from ..config import unsupported_features
        from ..engine import SUPPORTED_FEATURES

        try:  # what run would refuse, validate refuses too
            for i, mapping in enumerate(config.event_source_mappings):
                try:
                    unsupported_features(mapping, SUPPORTED_FEATURES)
                except ConfigError as err:
                    raise err.under(f"event_source_mappings[{i}]", source=args.config) from None
        except ConfigError as exc:
            print(f"kinesis-esm: {exc}", file=sys.stderr)
            return 2
        print(f"{args.config}: OK ({len(config.event_source_mappings)} mappings)")
        return 0
    from ._daemon import run_daemon

    try:
        code = _run_async(
            run_daemon, config, log_interval=args.log_interval, emf_interval=args.emf_interval
        )
    except ConfigError as exc:
        print(f"kinesis-esm: {exc}", file=sys.stderr)
        return 2
    except (ImportError, OSError) as exc:  # a handler that does not import; a busy port
        print(f"kinesis-esm: {exc}", file=sys.stderr)
        return 2
    _exit_past_stuck_handlers(code)
    return code


def _exit_past_stuck_handlers(code: int) -> None:
    """A sync handler that outlived its timeout still runs in a thread nobody can kill; the
    interpreter would wait for it at exit. The stop is done (checkpoints written), so leave."""
    stuck = [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive() and not t.daemon
    ]
    if stuck:
        logging.getLogger("kinesis_esm.daemon").warning(
            "exiting past %d handler thread(s) still running after their timeout", len(stuck)
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
