"""Stream consumers for enhanced fan-out: ARNs, registration, and the client that subscribes.

:class:`FanOutClient` holds one aiobotocore client for the consumer calls (rare) and one aiohttp
session for the subscriptions (long-lived, one connection per subscribed shard; see
``_subscribe`` for why HTTP/1.1 and our own reader). :meth:`FanOutClient.register_consumer` is a
kinesis-esm extension: it registers a consumer by name when missing and waits until it is
ACTIVE. Nothing here deregisters a consumer on exit (docs/enhanced-fan-out.md says why).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import anyio
import orjson
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import NoCredentialsError

from .._errors import SourceError, StreamNotFoundError, ThrottledError, TransientSourceError
from ._kinesis import _client_error, map_error
from ._protocol import IteratorPosition
from ._sigv4 import SigV4
from ._subscribe import ShardSubscriber
from ._subscribe_events import ConsumerNotFoundError, SubscribeSettings, map_subscribe_error

__all__ = [
    "ConsumerArn",
    "ConsumerDescription",
    "FanOutClient",
    "is_consumer_arn",
]

_CONSUMER_ARN = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):kinesis:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"stream/(?P<stream>[a-zA-Z0-9_.-]{1,128})/consumer/(?P<consumer>[a-zA-Z0-9_.-]{1,128})"
    r":(?P<created>\d+)"
)
_CONSUMER_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,128}")
_ARN_FORM = "arn:aws:kinesis:REGION:ACCOUNT:stream/STREAM/consumer/CONSUMER:TIMESTAMP"
_TARGET = "Kinesis_20131202.SubscribeToShard"
_EVENT_STREAM = "application/vnd.amazon.eventstream"


@dataclass(frozen=True, slots=True)
class ConsumerArn:
    """A stream consumer's ARN, taken apart."""

    arn: str
    partition: str
    region: str
    account: str
    stream_name: str
    consumer_name: str
    creation_timestamp: int  # epoch seconds, as Kinesis puts it in the ARN

    @classmethod
    def parse(cls, arn: str, parameter: str = "consumer_arn") -> ConsumerArn:
        match = _CONSUMER_ARN.fullmatch(arn) if isinstance(arn, str) else None
        if match is None:
            raise ValueError(
                f"{parameter} must be a stream consumer ARN of the form {_ARN_FORM} "
                f"(names of 1-128 characters from a-z A-Z 0-9 _ . -), not {arn!r}"
            )
        return cls(
            arn,
            match["partition"],
            match["region"],
            match["account"],
            match["stream"],
            match["consumer"],
            int(match["created"]),
        )

    @property
    def stream_arn(self) -> str:
        return (
            f"arn:{self.partition}:kinesis:{self.region}:{self.account}:stream/{self.stream_name}"
        )


def is_consumer_arn(arn: str) -> bool:
    return isinstance(arn, str) and _CONSUMER_ARN.fullmatch(arn) is not None


@dataclass(frozen=True, slots=True)
class ConsumerDescription:
    consumer_name: str
    consumer_arn: str
    status: str  # CREATING | ACTIVE | DELETING
    stream_arn: str
    creation_timestamp: float | None


def _description(raw: dict[str, Any], stream_arn: str | None = None) -> ConsumerDescription:
    created = raw.get("ConsumerCreationTimestamp")
    return ConsumerDescription(
        str(raw["ConsumerName"]),
        str(raw["ConsumerARN"]),
        str(raw["ConsumerStatus"]),
        str(raw.get("StreamARN") or stream_arn or ""),
        float(created.timestamp()) if isinstance(created, datetime) else None,
    )


def _starting_position(position: IteratorPosition) -> dict[str, Any]:
    start: dict[str, Any] = {"Type": position.type}
    if position.sequence_number is not None:
        start["SequenceNumber"] = position.sequence_number
    if position.timestamp is not None:
        start["Timestamp"] = position.timestamp
    return start


class FanOutClient:
    """Consumers and SubscribeToShard for one endpoint and region; ``async with`` or start()."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        settings: SubscribeSettings | None = None,
        read_bufsize: int = 64 * 1024,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.settings = settings or SubscribeSettings()
        self.read_bufsize = read_bufsize
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._credentials: Any = None
        self._http: aiohttp.ClientSession | None = None
        self._signer: SigV4 | None = None
        self._url = ""

    async def __aenter__(self) -> FanOutClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self._client is not None:
            return
        timeout = self.settings.call_timeout
        config = Config(
            connect_timeout=min(5.0, timeout),
            read_timeout=timeout,
            retries={"total_max_attempts": 1},  # callers own retries
        )
        stack = contextlib.AsyncExitStack()
        session = get_session()
        client = await stack.enter_async_context(
            session.create_client(
                "kinesis", region_name=self.region, endpoint_url=self.endpoint_url, config=config
            )
        )
        self._credentials = await session.get_credentials()
        self._url = str(client.meta.endpoint_url)
        self._signer = SigV4(self._url, str(client.meta.region_name))
        self._http = aiohttp.ClientSession(
            # no cap: each subscribed shard holds its connection for up to five minutes
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(5.0, timeout)),
            auto_decompress=False,
            read_bufsize=self.read_bufsize,
            trust_env=True,
        )
        stack.push_async_callback(self._http.close)
        self._client, self._stack = client, stack

    async def aclose(self) -> None:
        stack, self._stack, self._client, self._http = self._stack, None, None, None
        if stack is not None:
            await stack.aclose()

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        if self._client is None:
            await self.start()
        try:
            with anyio.fail_after(self.settings.call_timeout + 1.0):
                result: dict[str, Any] = await getattr(self._client, operation)(**params)
                return result
        except Exception as exc:
            raise map_error(exc, operation) from exc

    # consumers

    async def describe_consumer(self, consumer_arn: str) -> ConsumerDescription:
        ConsumerArn.parse(consumer_arn)
        try:
            result = await self._call("describe_stream_consumer", ConsumerARN=consumer_arn)
        except StreamNotFoundError as exc:
            raise ConsumerNotFoundError(str(exc), code=exc.code) from exc
        return _description(result["ConsumerDescription"])

    async def deregister_consumer(self, consumer_arn: str) -> None:
        """Deregister a consumer (its subscriptions end). kinesis-esm never calls this itself."""
        ConsumerArn.parse(consumer_arn)
        try:
            await self._call("deregister_stream_consumer", ConsumerARN=consumer_arn)
        except StreamNotFoundError as exc:
            raise ConsumerNotFoundError(str(exc), code=exc.code) from exc

    async def register_consumer(self, stream_arn: str, name: str, *, max_wait: float = 60.0) -> str:
        """The ARN of consumer `name` of the stream, registered if missing, once it is ACTIVE.

        Waits at most `max_wait` seconds. A consumer of that name that already exists is used
        as it is; one being deleted is waited out and registered again.
        """
        if not isinstance(name, str) or _CONSUMER_NAME.fullmatch(name) is None:
            raise ValueError(
                "register_consumer must be a consumer name of 1-128 characters from "
                f"a-z A-Z 0-9 _ . -, not {name!r}"
            )
        if not max_wait > 0:
            raise ValueError(f"max_wait must be > 0, not {max_wait!r}")
        deadline = time.monotonic() + max_wait
        pause = 0.1
        status = "unknown"
        while True:
            try:
                description = await self._register_or_describe(stream_arn, name)
                status = description.status
                if status == "ACTIVE":
                    return description.consumer_arn
            except ThrottledError:  # 5 registrations/s per account
                pause = max(pause, 1.0)
            except ConsumerNotFoundError:
                status = "gone"  # deleted between the two calls: register again
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransientSourceError(
                    f"register_consumer: consumer {name!r} of {stream_arn} is not ACTIVE after "
                    f"{max_wait:g} s (last status: {status})"
                )
            await anyio.sleep(min(pause, remaining))
            pause = min(1.0, pause * 2)

    async def _register_or_describe(self, stream_arn: str, name: str) -> ConsumerDescription:
        try:
            result = await self._call(
                "register_stream_consumer", StreamARN=stream_arn, ConsumerName=name
            )
            return _description(result["Consumer"], stream_arn)
        except SourceError as exc:
            if exc.code != "ResourceInUseException":  # not "it exists already"
                raise
        try:
            result = await self._call(
                "describe_stream_consumer", StreamARN=stream_arn, ConsumerName=name
            )
        except StreamNotFoundError as exc:
            raise ConsumerNotFoundError(str(exc), code=exc.code) from exc
        return _description(result["ConsumerDescription"], stream_arn)

    # subscriptions

    def subscriber(
        self,
        consumer_arn: str,
        shard_id: str,
        position: IteratorPosition,
        settings: SubscribeSettings | None = None,
    ) -> ShardSubscriber:
        """A reader of one shard through `consumer_arn`, starting at `position`."""
        ConsumerArn.parse(consumer_arn)
        return ShardSubscriber(self, consumer_arn, shard_id, position, settings or self.settings)

    async def open_subscription(
        self, consumer_arn: str, shard_id: str, position: IteratorPosition, call_timeout: float
    ) -> aiohttp.ClientResponse:
        """Send SubscribeToShard; the response once its headers say an event stream follows."""
        if self._client is None:
            await self.start()
        http, signer = self._http, self._signer
        assert http is not None and signer is not None
        body = orjson.dumps(
            {
                "ConsumerARN": consumer_arn,
                "ShardId": shard_id,
                "StartingPosition": _starting_position(position),
            }
        )
        try:
            if self._credentials is None:
                raise NoCredentialsError()
            credentials = await self._credentials.get_frozen_credentials()
            headers = signer.headers(credentials, _TARGET, body)
            headers["accept-encoding"] = "identity"
            with anyio.fail_after(call_timeout):
                response = await http.post(self._url, data=body, headers=headers)
        except Exception as exc:
            raise map_subscribe_error(exc) from exc
        if response.status == 200 and response.content_type == _EVENT_STREAM:
            return response
        try:
            with anyio.fail_after(call_timeout):
                payload = await response.read()
        except Exception:
            payload = b""
        finally:
            response.release()
        status = response.status if response.status != 200 else 502
        raise map_subscribe_error(_client_error(status, payload, "subscribe_to_shard"))
