"""An example handler, shaped exactly like a Lambda Kinesis handler.

``kinesis-esm demo`` runs it; a config file names it as ``kinesis_esm.examples:handler``.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

__all__ = ["handler"]

log = logging.getLogger("kinesis_esm.examples")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Decode each record's JSON payload and total the order amounts, as a Lambda would."""
    total = 0.0
    for record in event["Records"]:
        payload = json.loads(base64.b64decode(record["kinesis"]["data"]))
        total += float(payload.get("amount", 0))
    log.debug("%s: %d records, total %.2f", context.aws_request_id, len(event["Records"]), total)
    return {"batchItemFailures": []}
