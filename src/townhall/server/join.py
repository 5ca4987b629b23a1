"""Join, the hot path of a big night: admit (200, a listener token), renew, or
queue (202, a ticket) one listener. It reads only memory (the space index, the
token keys) and writes nothing to the database for a space without a cap.

One core, in two steps, served three ways:

- :func:`join_front` (synchronous): the space, the defense layers (the
  network's bucket, proof-of-work, priority: ``server/defense.py``), the
  tokens and the ticket. Every refusal of a flood is decided here, in memory;
- :func:`join_rest` (awaits the admission: ``server/admission.py``): the
  answer's bytes;
- served by the HTTP/1.1 driver's lean answers (``server/lean.py``), by the
  bare ASGI route :class:`JoinEndpoint` (placed before the documented FastAPI
  route, for other drivers), and by the documented route
  (``server/api_spaces.py``, what OpenAPI shows).
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass

import orjson
from starlette.types import Receive, Scope, Send

from townhall import metrics
from townhall.errors import BadRequest, Forbidden, NotFound, Unauthorized, ValidationFailed
from townhall.policy.priority import Priority
from townhall.policy.tickets import Ticket, TicketMalformed
from townhall.policy.tokens import Claims
from townhall.server.admission import Queued
from townhall.server.auth import base_url, forwarded_client, iso_epoch, listener_urls
from townhall.server.defense import gate
from townhall.server.edge_link import edge_link_cookies
from townhall.server.services import Services
from townhall.store.space_index import IndexEntry

_JOIN_NEW = metrics.JOINS.labels(kind="new")
_JOIN_RENEWAL = metrics.JOINS.labels(kind="renewal")
_JOIN_QUEUED = metrics.JOINS.labels(kind="queued")

# The listener token also travels as a cookie scoped to the space's media, so
# players in a browser carry it on every playlist and part (the media gate).
LISTENER_COOKIE = "th_listener"
RAW_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


@dataclass(frozen=True, slots=True)
class JoinAnswer:
    status: int  # 200 admitted, 202 queued
    body: bytes
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class JoinFront:
    """A join that passed every check that needs no waiting."""

    space_id: str
    entry: IndexEntry
    network: str
    priority: Priority
    subject: str
    previous: Claims | None
    ticket: Ticket | None


def join_front(
    services: Services,
    space_id: str,
    authorization: str | None,
    renew_token: str | None,
    ticket_text: str | None = None,
    client: str | None = None,
    pow_answer: str | None = None,
    seen_mark: str | None = None,
) -> JoinFront:
    """The checks of a join, in memory: raises the refusal (404, 429, 401,
    400, 403), or returns what :func:`join_rest` needs. A malformed ticket
    counts as a refusal of its network (``server/refusals.py``), as a forged
    one (401) does through the auth shield."""
    entry = services.spaces.index.get(space_id)
    if entry is None:
        raise NotFound(f"There is no space '{space_id}'; check the link.")
    again = renew_token is not None or ticket_text is not None
    network, priority = gate(services, entry, space_id, client, pow_answer, seen_mark, again)
    tokens = services.tokens
    account_id: str | None = None
    if authorization is not None:
        scheme, _, raw = authorization.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
        account_id = tokens.verify(raw.strip(), kind="session").subject
    previous = None
    ticket = None
    subject: str
    if renew_token is not None:
        previous = tokens.verify(renew_token, kind="listener", space_id=space_id)
        subject = account_id or previous.subject
    else:
        subject = account_id or "anon-" + secrets.token_urlsafe(9)
        if ticket_text is not None:
            try:
                ticket = services.admission.tickets.verify(ticket_text, space_id)
            except TicketMalformed:
                if services.defense is not None:
                    services.defense.refusals.hit([network], time.monotonic())
                raise
    if not subject.startswith("anon-") and services.spaces.index.is_blocked(space_id, subject):
        raise Forbidden("You are blocked from this space.")
    return JoinFront(space_id, entry, network, priority, subject, previous, ticket)


async def join_rest(services: Services, front: JoinFront, base: str) -> JoinAnswer:
    """Admit or queue a join that passed :func:`join_front`; see server/admission.py."""
    space_id, entry, previous = front.space_id, front.entry, front.previous
    result = await services.admission.admit(
        space_id,
        entry,
        front.subject,
        renewal=previous,
        ticket=front.ticket,
        priority=front.priority,
    )
    urls = listener_urls(base, space_id)
    if isinstance(result, Queued):
        _JOIN_QUEUED.inc()
        body = orjson.dumps(
            {
                "ticket": result.ticket,
                "expires_at": iso_epoch(result.expires_at),
                "number": result.number,
                "position": result.position,
                "eta_s": result.eta_s,
                "retry_after_s": result.retry_after_s,
                "queue_url": f"{base}/spaces/{space_id}/queue.json",
                "reason": result.code,
                "detail": result.detail,
            }
        )
        retry = str(max(1, math.ceil(result.retry_after_s))).encode()
        return JoinAnswer(202, body, [*RAW_HEADERS, (b"retry-after", retry)])
    claims = result.claims
    defense = services.defense
    counted, seen = (
        defense.admitted(space_id, front.network) if defense is not None else (True, None)
    )
    presence = services.presence.admitted(space_id, claims.token_id, counted)  # type: ignore[union-attr]
    (_JOIN_RENEWAL if previous is not None else _JOIN_NEW).inc()
    listen_url = urls["live_m3u8"] if result.delivery == "llhls" else urls["plain_m3u8"]
    body = orjson.dumps(
        {
            "token": result.token,
            "role": "listener",
            "expires_at": iso_epoch(claims.expires_at),
            "urls": urls,
            "delivery": result.delivery,
            "listen_url": listen_url,
            "detail": result.detail,
            "seen_mark": seen,
            **presence,
        }
    )
    headers = list(RAW_HEADERS)
    if services.admission.cap_of(entry) > 0:
        cookie = (
            f"{LISTENER_COOKIE}={result.token}; Path=/spaces/{space_id}/; "
            f"Max-Age={services.settings.listener_token_ttl_s}; HttpOnly; SameSite=Lax"
        )
        headers.append((b"set-cookie", cookie.encode("latin-1")))
        secret = services.settings.edge_link_secret
        if secret:
            headers.extend(
                edge_link_cookies(
                    secret, space_id, claims.expires_at, services.settings.listener_token_ttl_s
                )
            )
    return JoinAnswer(200, body, headers)


async def join(
    services: Services,
    space_id: str,
    authorization: str | None,
    renew_token: str | None,
    base: str,
    ticket_text: str | None = None,
    client: str | None = None,
    pow_answer: str | None = None,
    seen_mark: str | None = None,
) -> JoinAnswer:
    """Admit, renew or queue one listener (:func:`join_front`, then :func:`join_rest`)."""
    front = join_front(
        services, space_id, authorization, renew_token, ticket_text, client, pow_answer, seen_mark
    )
    return await join_rest(services, front, base)


def parse_join_body(body: bytes) -> tuple[str | None, str | None]:
    """(listener token to renew, queue ticket to exchange) from a join body."""
    if not body.strip():
        return None, None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest(
            "The request body is not valid JSON; send a JSON object with the documented fields."
        ) from None
    if data is None:
        return None, None
    if not isinstance(data, dict):
        raise ValidationFailed(
            'Field \'body\' is invalid: send a JSON object such as {} or {"token": "..."}.',
            extra={"errors": [{"field": "body", "message": "not an object"}]},
        )
    token = data.get("token")
    if token is not None and not isinstance(token, str):
        raise ValidationFailed(
            "Field 'token' is invalid: it must be a string (a listener token) or left out.",
            extra={"errors": [{"field": "token", "message": "not a string"}]},
        )
    ticket = data.get("ticket")
    if ticket is not None and not isinstance(ticket, str):
        raise ValidationFailed(
            "Field 'ticket' is invalid: it must be a string (a queue ticket) or left out.",
            extra={"errors": [{"field": "ticket", "message": "not a string"}]},
        )
    return token, ticket


def answer_head(answer: JoinAnswer) -> list[tuple[bytes, bytes]]:
    """The header lines of a join answer as every path sends them."""
    return [*answer.headers, (b"content-length", str(len(answer.body)).encode())]


class JoinEndpoint:
    """The join route for drivers other than townhall's (the HTTP/1.1 driver
    answers joins itself, ``server/lean.py``): a bare ASGI app placed before
    the documented route. Errors are raised as townhall errors and rendered by
    the app's handlers like everywhere else; the body is bounded by the app's
    BodyLimit."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services = scope["app"].state.services
        authorization: str | None = None
        host: str | None = None
        pow_answer: str | None = None
        seen_mark: str | None = None
        forwarded: list[str] = []
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
            elif name == b"x-townhall-pow":
                pow_answer = value.decode("latin-1")
            elif name == b"x-townhall-seen":
                seen_mark = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
        peer = scope["client"][0] if scope.get("client") else None
        client = forwarded_client(peer, forwarded, services.trusted_proxies)
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        base = base_url(services.settings, host, scope["scheme"])
        token, ticket = parse_join_body(body)
        answer = await join(
            services,
            scope["path_params"]["space_id"],
            authorization,
            token,
            base,
            ticket,
            client,
            pow_answer,
            seen_mark,
        )
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": answer_head(answer)}
        )
        await send({"type": "http.response.body", "body": answer.body})
