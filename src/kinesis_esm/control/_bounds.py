"""Bounds on what a request may hold, checked before anything else looks at it: nesting, text
that cannot be stored, numbers that do not fit a float, and the members whose checks live only
on the wire (``Tags``, ``KMSKeyArn``, ``Marker``), with the limits of Lambda's API model.

Each check raises ``WireError`` with Lambda's code; none of them recurses, so no input can
exhaust the stack, and a refused request leaves nothing behind.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from ..policy._patterns import nesting_depth
from ._errors import WireError

__all__ = [
    "MAX_BODY_DEPTH",
    "MAX_MARKER_LENGTH",
    "MAX_TAGS",
    "check_depth",
    "check_kms_key_arn",
    "check_strings",
    "check_tags",
    "check_timestamp",
    "marker_parts",
]

# Lambda's deepest Kinesis request member is FilterCriteria.Filters[].Pattern: 4 levels (the
# pattern is a string). Room for unknown members, which are ignored as AWS services do.
MAX_BODY_DEPTH = 16
MAX_MARKER_LENGTH = 1024
MAX_TAGS = 50  # AWS's tag quota per resource
_TAG_KEY_LENGTH, _TAG_VALUE_LENGTH = 128, 256  # Lambda's model: TagKey, TagValue
_TAG_PUNCTUATION = frozenset("_.:/=+-@")
_KMS_KEY_ARN = re.compile(
    r"arn:aws(?:-cn|-us-gov)?:kms:[a-z]{2}(?:-[a-z]+)+-\d{1,2}:\d{12}:key/[A-Za-z0-9-]{1,128}"
)
_MAX_STRINGS = 10_000  # strings and containers looked at in one body (256 KiB bounds it anyway)


def _invalid(message: str) -> WireError:
    return WireError("InvalidParameterValueException", message)


def _shown(value: object, limit: int = 64) -> str:
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_depth(raw: bytes) -> None:
    """Refuse a body nested deeper than any Lambda request before it is parsed."""
    if nesting_depth(raw, MAX_BODY_DEPTH) > MAX_BODY_DEPTH:
        message = f"Could not parse request body into json: nested more than {MAX_BODY_DEPTH} deep"
        raise WireError("InvalidRequestContentException", message)


def check_strings(value: object) -> None:
    """Every string in a parsed body must be storable text: JSON's ``\\ud800`` escapes give
    lone surrogates, which neither SQLite nor a log line can encode. Iterative, so bounded."""
    pending: list[object] = [value]
    seen = 0
    while pending:
        item = pending.pop()
        seen += 1
        if seen > _MAX_STRINGS:
            message = "Could not parse request body into json: too many members"
            raise WireError("InvalidRequestContentException", message)
        if isinstance(item, str):
            texts: tuple[str, ...] = (item,)
        elif isinstance(item, Mapping):
            texts = tuple(str(k) for k in item)
            pending.extend(item.values())
        elif isinstance(item, list):
            texts = ()
            pending.extend(item)
        else:
            continue
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                message = "Could not parse request body into json: a string is not valid UTF-8"
                raise WireError("InvalidRequestContentException", message) from None


def check_timestamp(value: object) -> float | object:
    """StartingPositionTimestamp as Unix seconds (a float); other types are left to the
    configuration's type check. An integer too large for a float is refused here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0:
        message = f"StartingPositionTimestamp: must be a Unix time in seconds, got {_shown(value)}"
        raise _invalid(message)
    return seconds


def _tag_text_ok(text: str) -> bool:
    """Lambda's tag pattern ``[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*``: letters, separators, numbers."""
    return all(c in _TAG_PUNCTUATION or unicodedata.category(c)[0] in "LZN" for c in text)


def _tag_constraint(value: str, member: str, rule: str) -> WireError:
    message = f"1 validation error detected: Value '{_shown(value)}' at '{member}' failed to satisfy constraint: {rule}"  # noqa: E501
    return WireError("ValidationException", message)


def check_tags(tags: object) -> None:
    """``Tags``: a flat map of at most 50 string pairs within Lambda's lengths and pattern."""
    if not isinstance(tags, Mapping):
        raise _invalid("Tags must be an object of string keys and string values")
    if len(tags) > MAX_TAGS:
        raise _invalid(f"Tags: at most {MAX_TAGS} tags, got {len(tags)}")
    for key, value in tags.items():
        if not isinstance(value, str):
            kind = type(value).__name__ if not isinstance(value, (dict, list)) else "a container"
            raise _invalid(f"Tags: the value of {_shown(key)!r} must be a string, got {kind}")
        if not 1 <= len(key) <= _TAG_KEY_LENGTH:
            rule = f"Member must have length {'less than or equal to 128' if key else 'greater than or equal to 1'}"  # noqa: E501
            raise _tag_constraint(key, "tags.key", rule)
        if len(value) > _TAG_VALUE_LENGTH:
            rule = f"Member must have length less than or equal to {_TAG_VALUE_LENGTH}"
            raise _tag_constraint(value, "tags.value", rule)
        for text, member in ((key, "tags.key"), (value, "tags.value")):
            if not _tag_text_ok(text):
                rule = (
                    r"Member must satisfy regular expression pattern: [\p{L}\p{Z}\p{N}_.:/=+\-@]*"
                )
                raise _tag_constraint(text, member, rule)
        if key.lower().startswith("aws:"):
            raise _invalid(f"Tags: the prefix 'aws:' is reserved for AWS's own tags ({key!r})")


def check_kms_key_arn(value: object) -> None:
    """``KMSKeyArn``: empty (AWS's own key) or the ARN of a KMS key."""
    if not isinstance(value, str):
        raise _invalid("KMSKeyArn must be a string")
    if value and not _KMS_KEY_ARN.fullmatch(value):
        message = (
            f"KMSKeyArn: {_shown(value)!r} is not the ARN of a KMS key "
            "(arn:aws:kms:<region>:<12-digit account>:key/<key id>), nor empty"
        )
        raise _invalid(message)


def marker_parts(decoded: Any) -> tuple[float, str] | None:
    """A decoded Marker's (created, UUID), or None when it is not one of ours."""
    if not isinstance(decoded, list) or len(decoded) != 2:
        return None
    created, uuid = decoded
    if isinstance(created, bool) or not isinstance(created, (int, float)):
        return None
    if not isinstance(uuid, str) or len(uuid) > 64:
        return None
    try:
        return float(created), uuid
    except OverflowError:
        return None
