"""Request authentication for a control plane bound to a non-loopback address.

SigV4 (what the AWS CLI, boto3, SAM and Terraform send) is verified against the configured
access key and secret: the canonical request is rebuilt from the request as received (AWS's
algorithm for services other than S3: path normalized and encoded again, query pairs sorted),
the signing key derived from the secret, the date within five minutes of now, and the payload
hash checked against the body. A bearer token is compared in constant time.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = ["AuthError", "Authenticator"]

MAX_SKEW = datetime.timedelta(minutes=5)
_ALGORITHM = "AWS4-HMAC-SHA256"
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)


class AuthError(Exception):
    """An unauthenticated request, with AWS's error code for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True, slots=True)
class Request:
    """What the verifier needs of an HTTP request (raw, undecoded path and query)."""

    method: str
    raw_path: str
    raw_query: str
    headers: Mapping[str, list[str]]  # lower-case names; every value of repeated headers
    body: bytes


def _normalize(path: str) -> str:
    if not path:
        return "/"
    normalized = posixpath.normpath(path)
    if path.endswith("/") and normalized != "/":
        normalized += "/"
    return "/" + normalized.lstrip("/")


def _query(raw: str) -> str:
    pairs = []
    for part in raw.split("&") if raw else ():
        key, _, value = part.partition("=")
        pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_request(request: Request, signed_headers: list[str], payload_hash: str) -> str:
    headers = "".join(
        f"{name}:{','.join(' '.join(v.split()) for v in request.headers.get(name, []))}\n"
        for name in signed_headers
    )
    return "\n".join(
        (
            request.method.upper(),
            quote(_normalize(request.raw_path), safe="/~"),
            _query(request.raw_query),
            headers,
            ";".join(signed_headers),
            payload_hash,
        )
    )


def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


class Authenticator:
    """Accepts a request carrying a valid SigV4 signature for ``access_key_id`` or a valid
    ``Authorization: Bearer <token>``, for whichever of them is configured."""

    def __init__(
        self,
        *,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        token: str | None = None,
    ) -> None:
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.token = token

    def check(self, request: Request, now: datetime.datetime | None = None) -> None:
        """Raise AuthError unless the request is authenticated."""
        authorization = (request.headers.get("authorization") or [""])[0]
        if not (authorization.isascii() and authorization.isprintable()):
            # before any comparison: a credential is ASCII, and nothing below has to encode it
            message = "The Authorization header must be printable ASCII text."
            raise AuthError("IncompleteSignatureException", message)
        scheme, _, rest = authorization.partition(" ")
        if scheme.lower() == "bearer" and self.token is not None:
            if not hmac.compare_digest(rest.strip().encode(), self.token.encode()):
                raise AuthError("AccessDeniedException", "The bearer token is not valid.")
            return
        if scheme == _ALGORITHM and self.secret_access_key is not None:
            try:
                self._check_sigv4(request, rest, now or datetime.datetime.now(datetime.UTC))
            except UnicodeError:  # a signed header or the path that is not text: unsignable
                raise AuthError("InvalidSignatureException", _MISMATCH) from None
            return
        raise AuthError("MissingAuthenticationTokenException", "Missing Authentication Token")

    def _check_sigv4(self, request: Request, params: str, now: datetime.datetime) -> None:
        fields = dict(part.strip().partition("=")[::2] for part in params.split(",") if "=" in part)
        try:
            credential, signed, signature = (
                fields["Credential"],
                fields["SignedHeaders"],
                fields["Signature"],
            )
            access_key, day, region, service, terminator = credential.split("/")
        except (KeyError, ValueError):
            message = (
                f"Authorization header requires Credential, SignedHeaders and Signature: {params}"
            )
            raise AuthError("IncompleteSignatureException", message) from None
        if access_key != self.access_key_id:
            message = "The security token included in the request is invalid."
            raise AuthError("UnrecognizedClientException", message)
        amz_date = (request.headers.get("x-amz-date") or [""])[0]
        try:
            when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
                tzinfo=datetime.UTC
            )
        except ValueError:
            message = "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."  # noqa: E501
            raise AuthError("IncompleteSignatureException", message) from None
        if abs(now - when) > MAX_SKEW or day != amz_date[:8] or terminator != "aws4_request":
            message = f"Signature expired: {amz_date} is not within 5 minutes of the server's time."
            raise AuthError("InvalidSignatureException", message)
        signed_headers = signed.split(";")
        if "host" not in signed_headers:
            raise AuthError("InvalidSignatureException", "The host header must be signed.")
        payload_hash = hashlib.sha256(request.body).hexdigest()
        claimed = (request.headers.get("x-amz-content-sha256") or [payload_hash])[0]
        if claimed != payload_hash:
            raise AuthError("InvalidSignatureException", _MISMATCH)
        canonical = canonical_request(request, signed_headers, payload_hash)
        scope = f"{day}/{region}/{service}/aws4_request"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"{_ALGORITHM}\n{amz_date}\n{scope}\n{digest}"
        assert self.secret_access_key is not None
        key = _signing_key(self.secret_access_key, day, region, service)
        expected = hmac.new(key, to_sign.encode(), "sha256").hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise AuthError("InvalidSignatureException", _MISMATCH)
