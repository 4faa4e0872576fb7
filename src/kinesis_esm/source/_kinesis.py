"""The Kinesis API through aiobotocore, with a fast path for GetRecords.

The fast path parses GetRecords bodies with orjson and keeps ``Data`` as the wire's base64
(botocore's parser costs 15-25 us per record, mostly datetimes and base64; orjson 1-3 us).
``fast_parse=False`` keeps botocore's own parser; both produce identical records.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import anyio
import orjson
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from .._errors import (
    AccessDeniedError,
    ExpiredIteratorError,
    SourceError,
    StreamNotFoundError,
    ThrottledError,
    TransientSourceError,
    TrimmedPositionError,
)
from .._records import Record
from ._protocol import ChildShard, GetRecordsResult, IteratorPosition, ShardInfo

__all__ = ["KinesisSource", "stream_name_from_arn"]

log = logging.getLogger("kinesis_esm.source")

_RAW_KEY = "_kinesis_esm_raw"
_THROTTLE_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "LimitExceededException", "ThrottlingException"}
)
_ACCESS_CODES = frozenset(
    {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException"}
)
_MAX_LIST_SHARDS_PAGES = 1000


def stream_name_from_arn(stream_arn: str) -> str:
    # arn:aws:kinesis:region:account:stream/name[/consumer/...]
    resource = stream_arn.split(":", 5)[5]
    return resource.split("/")[1]


def _keep_raw_get_records_body(
    response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any
) -> None:
    # botocore emits this before parsing: parse a successful body ourselves and hand botocore an
    # empty object, so it skips its per-record datetime and base64 work.
    if response_dict.get("status_code") == 200:
        customized_response_dict[_RAW_KEY] = orjson.loads(response_dict["body"])
        response_dict["body"] = b"{}"


def _records_from_raw(raw: list[dict[str, Any]]) -> list[Record]:
    return [
        Record(
            r["SequenceNumber"],
            r["PartitionKey"],
            r["Data"],
            float(r["ApproximateArrivalTimestamp"]),
            r.get("EncryptionType"),
        )
        for r in raw
    ]


def _records_from_parsed(parsed: list[dict[str, Any]]) -> list[Record]:
    return [
        Record.from_bytes(
            r["SequenceNumber"],
            r["PartitionKey"],
            r["Data"],
            r["ApproximateArrivalTimestamp"].timestamp(),
            r.get("EncryptionType"),
        )
        for r in parsed
    ]


def _child_shards(items: list[Mapping[str, Any]] | None) -> list[ChildShard]:
    return [ChildShard(c["ShardId"], tuple(c.get("ParentShards", ()))) for c in items or ()]


def map_error(exc: BaseException, operation: str) -> SourceError:
    """Translate a transport error into the kinesis_esm hierarchy."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = f"{operation}: {code}: {error.get('Message', '')}"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code == "ExpiredIteratorException":
            return ExpiredIteratorError(message, code=code)
        if code in _THROTTLE_CODES or status == 429:
            return ThrottledError(message, code=code)
        if code == "ResourceNotFoundException":
            return StreamNotFoundError(message, code=code)
        if code in _ACCESS_CODES or status == 403:
            return AccessDeniedError(message, code=code)
        if code == "InvalidArgumentException" and "trim" in message.lower():
            return TrimmedPositionError(message, code=code)
        if status >= 500 or status == 0:
            return TransientSourceError(message, code=code)
        return SourceError(message, code=code)
    if isinstance(exc, NoCredentialsError):
        return AccessDeniedError(f"{operation}: {exc}")
    if isinstance(exc, TimeoutError):
        return TransientSourceError(f"{operation}: timed out")
    if isinstance(exc, BotoConnectionError | HTTPClientError | OSError | BotoCoreError):
        return TransientSourceError(f"{operation}: {type(exc).__name__}: {exc}")
    return TransientSourceError(f"{operation}: {type(exc).__name__}: {exc}")


class KinesisSource:
    """A StreamSource over aiobotocore. One client, one connection pool, created once."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        call_timeout: float = 10.0,
        fast_parse: bool = True,
        max_connections: int = 100,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.call_timeout = call_timeout
        self.fast_parse = fast_parse
        self._max_connections = max_connections
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    async def __aenter__(self) -> KinesisSource:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self._client is not None:
            return
        config = Config(
            connect_timeout=min(5.0, self.call_timeout),
            read_timeout=self.call_timeout,
            retries={"total_max_attempts": 1},  # the poller owns retries and back-off
            max_pool_connections=self._max_connections,
        )
        stack = contextlib.AsyncExitStack()
        session = get_session()
        self._client = await stack.enter_async_context(
            session.create_client(
                "kinesis", region_name=self.region, endpoint_url=self.endpoint_url, config=config
            )
        )
        if self.fast_parse:
            self._client.meta.events.register(
                "before-parse.kinesis.GetRecords", _keep_raw_get_records_body
            )
        self._stack = stack

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        if self._client is None:
            await self.start()
        method = getattr(self._client, operation)
        try:
            with anyio.fail_after(self.call_timeout + 1.0):
                result: dict[str, Any] = await method(**params)
                return result
        except SourceError:
            raise
        except Exception as exc:
            raise map_error(exc, operation) from exc

    async def list_shards(self, stream_arn: str) -> list[ShardInfo]:
        shards: list[ShardInfo] = []
        params: dict[str, Any] = {"StreamName": stream_name_from_arn(stream_arn)}
        for _ in range(_MAX_LIST_SHARDS_PAGES):
            page = await self._call("list_shards", **params)
            for s in page.get("Shards", ()):
                seq_range = s.get("SequenceNumberRange", {})
                shards.append(
                    ShardInfo(
                        shard_id=s["ShardId"],
                        parent_shard_id=s.get("ParentShardId"),
                        adjacent_parent_shard_id=s.get("AdjacentParentShardId"),
                        starting_sequence_number=seq_range.get("StartingSequenceNumber"),
                        ending_sequence_number=seq_range.get("EndingSequenceNumber"),
                    )
                )
            token = page.get("NextToken")
            if not token or not page.get("Shards"):
                break
            params = {"NextToken": token}
        unique = {s.shard_id: s for s in shards}  # servers that ignore NextToken repeat pages
        return list(unique.values())

    async def get_shard_iterator(
        self, stream_arn: str, shard_id: str, position: IteratorPosition
    ) -> str:
        params: dict[str, Any] = {
            "StreamName": stream_name_from_arn(stream_arn),
            "ShardId": shard_id,
            "ShardIteratorType": position.type,
        }
        if position.sequence_number is not None:
            params["StartingSequenceNumber"] = position.sequence_number
        if position.timestamp is not None:
            params["Timestamp"] = position.timestamp
        result = await self._call("get_shard_iterator", **params)
        return str(result["ShardIterator"])

    async def get_records(self, stream_arn: str, iterator: str, limit: int) -> GetRecordsResult:
        result = await self._call("get_records", ShardIterator=iterator, Limit=limit)
        raw = result.get(_RAW_KEY)
        if raw is not None:
            records = _records_from_raw(raw.get("Records", ()))
            body: Mapping[str, Any] = raw
        else:
            records = _records_from_parsed(result.get("Records", []))
            body = result
        return GetRecordsResult(
            records=records,
            next_iterator=body.get("NextShardIterator"),
            millis_behind_latest=body.get("MillisBehindLatest"),
            child_shards=_child_shards(body.get("ChildShards")),
        )
