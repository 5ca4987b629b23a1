"""Request helpers shared by the API routers: the services, the bearer token,
the client's address and network (for rate limits; X-Forwarded-For is read
only from trusted proxies), listener URLs (absolute only for a configured or
allowed Host), and the problem+json
response documentation for the OpenAPI schema."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from townhall import metrics
from townhall.errors import TooManyRequests, Unauthorized
from townhall.policy.ratelimit import Decision
from townhall.policy.tokens import Claims, Kind

if TYPE_CHECKING:
    from townhall.config import Settings
    from townhall.server.services import Services

_bearer = HTTPBearer(auto_error=False, description="A session, listener or speaker token.")

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "retry_after_s": {"type": "number"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}

# Every API operation may answer with a problem (400, 401, 403, 404, 409, 413,
# 422, 429, 503): documented once as the "default" response.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    "default": {
        "description": "A problem (RFC 9457): status and a sentence saying what to do.",
        "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
    }
}


def services_of(request: Request) -> Services:
    return cast("Services", request.app.state.services)


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, None when absent.

    A header that is present but not a bearer token is a 401."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
    return token.strip()


def verify(request: Request, kind: Kind, space_id: str | None = None) -> Claims:
    token = bearer_token(request)
    if token is None:
        if kind == "session":
            raise Unauthorized("Sign in first: send 'Authorization: Bearer <session token>'.")
        raise Unauthorized(
            f"Send 'Authorization: Bearer <{kind} token>'; get one from "
            + ("join." if kind == "listener" else "speaker-token.")
        )
    return services_of(request).tokens.verify(token, kind=kind, space_id=space_id)


async def _session(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Claims:
    return verify(request, "session")


async def _optional_session(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Claims | None:
    if bearer_token(request) is None:
        return None
    return verify(request, "session")


Session = Annotated[Claims, Depends(_session)]
OptionalSession = Annotated[Claims | None, Depends(_optional_session)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Networks = tuple[Network, ...]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(value: str) -> Networks:
    """Comma-separated addresses or CIDRs (``settings.trusted_proxies``).

    Raises ValueError naming the entry that is neither."""
    networks: list[Network] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR such as 10.0.0.0/8") from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    """An address as proxies write it: bare, ``[v6]``, ``[v6]:port`` or ``v4:port``."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: Networks) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def is_trusted(trusted: Networks, peer: str | None) -> bool:
    """Whether the TCP peer ``peer`` is one of the ``trusted`` proxies."""
    address = _address(peer) if peer else None
    return address is not None and _trusted(address, trusted)


def forwarded_client(
    peer: str | None, forwarded_for: Iterable[str], trusted: Networks
) -> str | None:
    """The client address a request should be keyed on.

    The peer (the TCP connection's address) unless it is a trusted proxy;
    then X-Forwarded-For (all its header lines, in order) read from the
    right: each trusted proxy appended the address it saw, so the first
    address that is not a trusted proxy is the client. Everything left of it
    was written by the client and is ignored. When every hop is trusted, the
    leftmost; when a hop is not an address, the last good hop (the proxy that
    forwarded it)."""
    if peer is None or not trusted:
        return peer
    address = _address(peer)
    if address is None or not _trusted(address, trusted):
        return peer
    hops = [hop for line in forwarded_for for hop in line.split(",") if hop.strip()]
    client = address
    for hop in reversed(hops):
        hop_address = _address(hop)
        if hop_address is None:
            break
        client = hop_address
        if not _trusted(hop_address, trusted):
            break
    return str(client)


def client_host(request: Request) -> str | None:
    """The client address of a request (see :func:`forwarded_client`)."""
    peer = request.client.host if request.client else None
    trusted = services_of(request).trusted_proxies
    if not trusted:
        return peer
    return forwarded_client(peer, request.headers.getlist("x-forwarded-for"), trusted)


def client_network(host: str | None) -> str:
    """The rate-limit key of a client address: its /24 (IPv4) or /64 (IPv6)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def refuse_if(decision: Decision, limit: str, detail: str) -> None:
    """Count and raise a 429 (with Retry-After) when ``decision`` refuses."""
    if not decision.allowed:
        metrics.RATE_LIMITED.labels(limit=limit).inc()
        raise TooManyRequests(detail, retry_after_s=decision.retry_after_s)


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@functools.lru_cache(maxsize=8)
def parse_allowed_hosts(value: str, bound_host: str) -> frozenset[str]:
    """The Host names share links may be built from (``settings.allowed_hosts``):
    the listed ones (lower case, brackets of IPv6 removed; an entry may carry a
    port), or when empty the bound address and the loopback names."""
    items = [part.strip().lower() for part in value.split(",") if part.strip()]
    if not items:
        items = [bound_host.lower(), *LOOPBACK_HOSTS]
    return frozenset(item.removeprefix("[").replace("]", "") for item in items)


def split_host(host: str) -> tuple[str, str] | None:
    """A Host header as (name, port), lower case, IPv6 without brackets, port
    "" when absent; None unless it is exactly a name and an optional numeric
    port (``[::1]:8000`` -> ``("::1", "8000")``)."""
    host = host.strip().lower()
    if host.startswith("["):
        name, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else ""
    elif host.count(":") <= 1:
        name, _, port = host.partition(":")
    else:
        return None
    if not name or (port and not (port.isdigit() and len(port) <= 5)) or host.endswith(":"):
        return None
    return name, port


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """Whether a Host header names one of ``allowed`` (by name, or name:port)."""
    parts = split_host(host) if host else None
    if parts is None:
        return False
    name, port = parts
    return name in allowed or (bool(port) and f"{name}:{port}" in allowed)


def public_url_warning(settings: Settings) -> str | None:
    """The warning ``serve`` logs at start when it listens on an address that
    is not loopback while ``public_url`` is empty (None when all is well)."""
    if settings.public_url:
        return None
    name = settings.host.strip().lower().removeprefix("[").replace("]", "")
    if name == "localhost":
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass
    allowed = ", ".join(sorted(parse_allowed_hosts(settings.allowed_hosts, settings.host)))
    return (
        f"listening on {settings.host} without public_url: share and listener links are built "
        f"from the request's Host only when it is one of {allowed} (allowed_hosts), and are "
        "relative otherwise; set --public-url to the address listeners use."
    )


def base_url(settings: Settings, host: str | None, scheme: str) -> str:
    """Where listeners reach this server: ``public_url``, else this request's
    scheme and Host when the Host is one this server answers for
    (``allowed_hosts``), else "" (the URLs are then relative), so a forged
    Host header never puts another site into a share link."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    if host_allowed(host, parse_allowed_hosts(settings.allowed_hosts, settings.host)):
        return f"{scheme}://{host}"
    return ""


def listener_urls(base: str, space_id: str) -> dict[str, str]:
    root = f"{base}/spaces/{space_id}"
    return {
        "page": root,
        "master_m3u8": f"{root}/master.m3u8",
        "live_m3u8": f"{root}/live.m3u8",
        "plain_m3u8": f"{root}/plain.m3u8",
        "live_aac": f"{root}/live.aac",
        "state_json": f"{root}/state.json",
        "recording_m4a": f"{root}/recording.m4a",
    }


def request_base(request: Request) -> str:
    return base_url(services_of(request).settings, request.headers.get("host"), request.url.scheme)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, whole seconds (docs/CONTRACTS.md)."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_epoch(epoch_s: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))
