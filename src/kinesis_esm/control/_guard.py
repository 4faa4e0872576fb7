"""What a web page must not be able to do to the control plane, checked before anything else.

A page in the user's browser can send requests to 127.0.0.1 without the user's knowledge: a
"simple" cross-origin POST (``text/plain``, a form, a body with no type) goes out without a
CORS preflight, and DNS rebinding lets a page's own name resolve to 127.0.0.1 so the browser
reads the answers too. So:

* ``Host`` must name the daemon: its bound address, ``localhost`` and loopback addresses when
  it binds loopback, any IP address when it binds a wildcard address (IP literals cannot be
  rebound), or a name from ``[control] allowed_hosts``; any port.
* A request carrying ``Origin`` (browsers send it on every cross-origin POST) must come from the
  daemon's own origin: it serves no pages, so in practice a browser request is refused.
* A body must be JSON (``application/json`` is what botocore's rest-json serializer sends for
  Lambda; ``application/x-amz-json-1.x`` is accepted as other SDKs send it), a type no browser
  sends cross-origin without a preflight.
* A CORS preflight (``OPTIONS``) is never answered with ``Access-Control-*`` headers.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from ..config import ControlConfig
from ._errors import WireError

__all__ = ["JSON_CONTENT_TYPES", "HostPolicy", "check_request"]

log = logging.getLogger("kinesis_esm.control")

JSON_CONTENT_TYPES = frozenset(
    {"application/json", "application/x-amz-json-1.0", "application/x-amz-json-1.1"}
)
_WILDCARDS = ("0.0.0.0", "::")


def host_name(value: str) -> str | None:
    """The name in a ``Host`` header (lower case, no port, no brackets); None when malformed."""
    if not value.isascii() or not value.isprintable():
        return None
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        return value[1:end] or None
    name, colon, port = value.rpartition(":")
    if colon:
        if port and not port.isdigit():
            return None
        value = name
    if ":" in value or not value:
        return None
    return value.rstrip(".") or None


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which ``Host`` headers name this daemon."""

    names: frozenset[str]
    loopback: bool  # bound to loopback: localhost and every loopback address
    wildcard: bool  # bound to 0.0.0.0 or ::: every IP address, and localhost

    @classmethod
    def of(cls, control: ControlConfig) -> HostPolicy:
        bound = control.host.strip("[]").lower()
        ip = _ip(bound)
        names = {host_name(h) for h in (control.host, *control.allowed_hosts)}
        return cls(
            names=frozenset(n for n in names if n is not None),
            loopback=bound == "localhost" or (ip is not None and ip.is_loopback),
            wildcard=bound in _WILDCARDS,
        )

    def allows(self, header: str) -> bool:
        name = host_name(header)
        if name is None:
            return False
        if name in self.names:
            return True
        if name == "localhost":
            return self.loopback or self.wildcard
        ip = _ip(name)
        if ip is None:
            return False
        return self.wildcard or (self.loopback and ip.is_loopback)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else f"{value[:80]}...")


def check_request(
    policy: HostPolicy,
    method: str,
    host: str | None,
    origin: str | None,
    content_type: str | None,
    has_body: bool,
) -> None:
    """Raise WireError (Lambda's shape) for a request a browser could have been made to send.

    A refused Host or Origin is logged (one line: it is what an attack looks like); the rest
    are a client's mistake and are only answered."""
    if host is not None and not policy.allows(host):
        log.warning(
            "control plane: refused a request for Host %s (not this daemon's address nor in "
            "[control] allowed_hosts; a DNS rebinding page looks like this)",
            _shown(host),
        )
        message = (
            f"Host {_shown(host)} is not an address or name of this daemon: add the name to "
            "[control] allowed_hosts to use it"
        )
        raise WireError("AccessDeniedException", message)
    if origin is not None and (host is None or origin not in (f"http://{host}", f"https://{host}")):
        log.warning("control plane: refused a browser request from Origin %s", _shown(origin))
        message = f"Requests from web pages (Origin {_shown(origin)}) are not accepted"
        raise WireError("AccessDeniedException", message)
    if method == "OPTIONS":
        message = "OPTIONS: kinesis-esm does not answer CORS preflight requests"
        raise WireError("UnknownOperationException", message)
    if has_body:
        media = (content_type or "").partition(";")[0].strip().lower()
        if media not in JSON_CONTENT_TYPES:
            shown = _shown(content_type) if content_type else "none"
            message = (
                f"The content type of the request body is not JSON: {shown} (send "
                "Content-Type: application/json, as the AWS SDKs and CLI do)"
            )
            raise WireError("UnsupportedMediaTypeException", message)
