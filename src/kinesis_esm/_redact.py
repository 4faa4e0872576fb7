"""Credentials out of logged text.

An endpoint's error text can hold the request it answered: a Kinesis (or Lambda, SQS, ...)
endpoint that echoes headers in a 500 would put the session token and the signature into every
log line that quotes the error. ``redact`` replaces the values of ``Authorization``,
``X-Amz-Security-Token``, ``X-Amz-Signature`` / ``Signature=``, ``X-Amz-Credential`` /
``Credential=``, and the secrets found in the environment, with ``<redacted>``; in header,
JSON, Python-repr and query-string spellings.

``install_redaction`` makes every record of the ``kinesis_esm`` loggers (and their children)
redacted when it is created, whatever handler takes it; ``RedactingFilter`` does the same for a
handler's records of any logger (the daemon puts it on its own handlers).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["REDACTED", "RedactingFilter", "install_redaction", "redact"]

REDACTED = "<redacted>"
# A value ends at whitespace, a quote, a separator or an escape.
_TOKEN = r"""[^\s"'`,;&\\<>)\]}]+"""
# Headers whose whole value is a credential: "Name: value", "Name=value", '"Name": "value"',
# "'Name': b'value'", and JSON escaped once more (\"Name\": \"value\").
_HEADER = re.compile(
    r"""(?P<name>\b(?:proxy-)?authorization|\bx-amz-security-token|\bx-amz-signature"""
    r"""|\bx-amz-credential)(?P<sep>\\?["']?\s*[:=]\s*)"""
    # quoted: to the closing quote, or to the end of the line when the text was cut short
    r"""(?:b?(?P<q>\\?["'])(?P<quoted>.*?)(?P<close>(?P=q)|(?=\n)|\Z)"""
    rf"""|(?P<scheme>(?:bearer|basic|token|aws4-hmac-sha256)\s+)?{_TOKEN})""",
    re.IGNORECASE,
)
# Parts of a SigV4 Authorization header or a presigned URL wherever they appear: "Name=value",
# or a quoted key '"Signature": "value"'.
_PART = re.compile(
    r"""(?P<name>\b(?:credential|signature))(?P<sep>\s*=\s*|\\?["']\s*:\s*\\?["']?)""" + _TOKEN,
    re.IGNORECASE,
)
_MARKERS = re.compile(r"authorization|security-token|signature|credential", re.IGNORECASE)
# Environment variables holding secrets; values this short are not looked for (they would
# redact ordinary words, such as the "testing" of test credentials).
_SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "KINESIS_ESM_TOKEN",
)
_MIN_SECRET = 16


def _header(match: re.Match[str]) -> str:
    head = match["name"] + match["sep"]
    if match["q"] is not None:
        return f"{head}{match['q']}{REDACTED}{match['close']}"
    return f"{head}{match['scheme'] or ''}{REDACTED}"


def _part(match: re.Match[str]) -> str:
    return f"{match['name']}{match['sep']}{REDACTED}"


def _environment_secrets() -> tuple[str, ...]:
    values = (os.environ.get(name, "") for name in _SECRET_VARIABLES)
    return tuple(sorted({v for v in values if len(v) >= _MIN_SECRET}, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credential values replaced by ``<redacted>``; ``secrets``: exact values
    to remove too (besides those of the environment's credential variables)."""
    known = [s for s in (*secrets, *_environment_secrets()) if len(s) >= _MIN_SECRET]
    if _MARKERS.search(text) is None and not any(s in text for s in known):
        return text  # the common case: nothing to do
    text = _HEADER.sub(_header, text)
    text = _PART.sub(_part, text)
    for secret in known:
        text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Redacts a record's message, exception and stack text in place; never drops a record."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def _redact_record(record: logging.LogRecord) -> None:
    if getattr(record, "_kinesis_esm_redacted", False):
        return
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: leave the record to logging's own error report
        return
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:  # what a Formatter would print, redacted
        record.exc_text = RedactingFilter._formatter.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    setattr(record, "_kinesis_esm_redacted", True)  # noqa: B010  # a private mark


_install_lock = threading.Lock()
_installed_prefixes: set[str] = set()


def install_redaction(logger_name: str = "kinesis_esm") -> None:
    """Redact every record of ``logger_name`` and its children when it is made (idempotent).

    A filter on a logger sees only the records logged to that very logger, not those of its
    children, so this wraps the log record factory instead: it costs a prefix check per record
    of other loggers, and one regular expression search per record of ours.
    """
    with _install_lock:
        if logger_name in _installed_prefixes:
            return
        _installed_prefixes.add(logger_name)
        previous = logging.getLogRecordFactory()
        prefix = f"{logger_name}."

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if record.name == logger_name or record.name.startswith(prefix):
                _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
