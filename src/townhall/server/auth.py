"""Request helpers shared by the API routers: the services, the bearer token,
the client's network (for rate limits), absolute listener URLs, and the
problem+json response documentation for the OpenAPI schema."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from townhall.errors import TooManyRequests, Unauthorized
from townhall.policy.ratelimit import Decision
from townhall.policy.tokens import Claims, Kind
from townhall.server import metrics

if TYPE_CHECKING:
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


def base_url(settings_public_url: str, headers: Mapping[str, str], scheme: str) -> str:
    """Where listeners reach this server: the setting, else this request's host."""
    if settings_public_url:
        return settings_public_url.rstrip("/")
    host = headers.get("host") or "localhost"
    return f"{scheme}://{host}"


def listener_urls(base: str, space_id: str) -> dict[str, str]:
    root = f"{base}/spaces/{space_id}"
    return {
        "page": root,
        "live_m3u8": f"{root}/live.m3u8",
        "plain_m3u8": f"{root}/plain.m3u8",
        "live_aac": f"{root}/live.aac",
        "state_json": f"{root}/state.json",
        "recording_m4a": f"{root}/recording.m4a",
    }


def request_base(request: Request) -> str:
    return base_url(services_of(request).settings.public_url, request.headers, request.url.scheme)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, whole seconds (docs/CONTRACTS.md)."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_epoch(epoch_s: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))
