"""The Kinesis API through aiobotocore, with a fast path for GetRecords.

The fast path parses GetRecords bodies with orjson and keeps ``Data`` as the wire's base64
(botocore's parser costs 15-25 us per record, mostly datetimes and base64; orjson 1-3 us). It
also sends GetRecords itself, over the client's own aiohttp session (its connections, TLS and
proxy settings), signed once with a cached SigV4 key: aiobotocore spends 0.5-1 ms of CPU per
call on events, endpoint rules, user agent and signing, against about 0.15 ms this way, which
is most of the cost of polling idle shards (measured on benchmarks/replay.py). Credentials,
endpoint and region are the client's; every other operation goes through aiobotocore.
``fast_parse=False`` keeps the plain botocore path for GetRecords too; both produce identical
records.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
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
from ..events._record import Record
from ._protocol import ChildShard, GetRecordsResult, IteratorPosition, ShardInfo
from ._sigv4 import SigV4

__all__ = ["KinesisSource", "stream_name_from_arn"]

log = logging.getLogger("kinesis_esm.source")

_TARGET_PREFIX = "Kinesis_20131202."
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


def _client_error(status: int, body: bytes, operation: str) -> ClientError:
    """A failed JSON-protocol answer as botocore's ClientError, for ``map_error``."""
    try:
        error = orjson.loads(body)
    except orjson.JSONDecodeError:
        error = None
    if not isinstance(error, dict):
        error = {"message": body[:200].decode("utf-8", "replace")}
    code = str(error.get("__type") or "").rpartition("#")[2] or f"HTTP{status}"
    message = str(error.get("message") or error.get("Message") or "")
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, operation)


class _DirectCaller:
    """Sends one operation over aiobotocore's own aiohttp session, signed with its credentials.

    Sharing the client's session shares its connection pool, TLS settings (CA bundle, verify),
    proxy and timeouts. Should a future aiobotocore hide that session, a session of our own with
    the same pool size and timeouts is used instead.
    """

    def __init__(self, client: Any, credentials: Any) -> None:
        self.url = str(client.meta.endpoint_url)
        self._signer = SigV4(self.url, str(client.meta.region_name))
        self._credentials = credentials
        self._session: aiohttp.ClientSession | None = None
        self._proxy: str | None = None
        self._proxy_headers: dict[str, str] | None = None
        self._owned = False

    async def open(self, client: Any, max_connections: int, call_timeout: float) -> None:
        http = getattr(getattr(client, "_endpoint", None), "http_session", None)
        get_session = getattr(http, "_get_session", None)
        proxies = getattr(http, "_proxy_config", None)
        if get_session is not None and proxies is not None:
            self._proxy = proxies.proxy_url_for(self.url)
            self._proxy_headers = proxies.proxy_headers_for(self.url) or None
            self._session = await get_session(self._proxy)
            return
        log.debug("aiobotocore's aiohttp session is not reachable; GetRecords uses its own")
        self._owned = True
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            timeout=aiohttp.ClientTimeout(
                sock_connect=min(5.0, call_timeout), sock_read=call_timeout
            ),
            auto_decompress=False,
            skip_auto_headers=("Content-Type",),
            trust_env=True,
        )

    async def call(self, operation: str, params: dict[str, Any]) -> Any:
        session = self._session
        if session is None:
            raise RuntimeError("the GetRecords transport is not open")
        if self._credentials is None:
            raise NoCredentialsError()
        credentials = await self._credentials.get_frozen_credentials()
        body = orjson.dumps(params)
        headers = self._signer.headers(credentials, _TARGET_PREFIX + operation, body)
        headers["accept-encoding"] = "identity"
        async with session.post(
            self.url,
            data=body,
            headers=headers,
            proxy=self._proxy,
            proxy_headers=self._proxy_headers,
        ) as response:
            payload = await response.read()
            status = response.status
        if status != 200:
            raise _client_error(status, payload, operation)
        return orjson.loads(payload)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if self._owned and session is not None:
            await session.close()


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
    if isinstance(
        exc, BotoConnectionError | HTTPClientError | OSError | BotoCoreError | aiohttp.ClientError
    ):
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
        self._direct: _DirectCaller | None = None

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
            credentials = await session.get_credentials()  # the client's own, refreshed alike
            direct = _DirectCaller(self._client, credentials)
            stack.push_async_callback(direct.aclose)
            await direct.open(self._client, self._max_connections, self.call_timeout)
            self._direct = direct
        self._stack = stack

    async def aclose(self) -> None:
        stack, self._stack, self._client, self._direct = self._stack, None, None, None
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

    async def _get_records_direct(self, direct: _DirectCaller, params: dict[str, Any]) -> Any:
        try:
            with anyio.fail_after(self.call_timeout + 1.0):
                return await direct.call("GetRecords", params)
        except Exception as exc:
            raise map_error(exc, "get_records") from exc

    async def get_records(self, stream_arn: str, iterator: str, limit: int) -> GetRecordsResult:
        if self._client is None:
            await self.start()
        direct = self._direct
        body: Mapping[str, Any]
        if direct is not None:
            params = {"ShardIterator": iterator, "Limit": limit}
            body = await self._get_records_direct(direct, params)
            records = _records_from_raw(body.get("Records") or [])
        else:
            body = await self._call("get_records", ShardIterator=iterator, Limit=limit)
            records = _records_from_parsed(body.get("Records", []))
        return GetRecordsResult(
            records=records,
            next_iterator=body.get("NextShardIterator"),
            millis_behind_latest=body.get("MillisBehindLatest"),
            child_shards=_child_shards(body.get("ChildShards")),
        )
