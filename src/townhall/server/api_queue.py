"""The waiting room over HTTP: ``/spaces/{id}/queue.json`` (one small document
per space, the same bytes for everyone, cacheable for at most a second) and
``POST /api/spaces/{id}/leave`` (a listener leaving frees its place at once),
and ``POST /api/spaces/{id}/presence`` (a listener saying "still here", which
keeps it in the listener count; answered by bare ASGI middleware in front of
the framework, with a sampled beat: server/presence.py).

A waiting client computes its own position from its ticket's number and the
document (``number - admitting_through``) and its ETA from ``free_places``,
``admit_rate_per_s`` and ``full_rate_per_s`` (``policy/eta.py``), so a crowd
in line is answered by the cache in front.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from townhall import metrics, problems
from townhall.errors import (
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    TownhallError,
    Unauthorized,
)
from townhall.server.auth import PROBLEM_RESPONSES, PROBLEM_SCHEMA, client_host, forwarded_client

if TYPE_CHECKING:
    from townhall.policy.tokens import Claims
    from townhall.server.services import Services

router = APIRouter(tags=["listener"])

QUEUE_SCHEMA = {
    "type": "object",
    "required": ["admitting_through", "waiting", "admit_rate_per_s", "updated_at"],
    "properties": {
        "space_id": {"type": "string"},
        "state": {"type": "string", "enum": ["scheduled", "live", "ended"]},
        "max_listeners": {"type": "integer", "description": "The cap; 0 means no limit."},
        "admitted": {"type": "integer", "description": "Listener tokens live now (exact)."},
        "admitting_through": {
            "type": "integer",
            "description": "The highest ticket number whose turn has come.",
        },
        "issued": {"type": "integer", "description": "Ticket numbers handed out."},
        "waiting": {"type": "integer", "description": "Tickets whose turn has not come."},
        "admit_rate_per_s": {
            "type": "number",
            "description": "Places called per second while places are free (the configured rate).",
        },
        "free_places": {
            "type": ["integer", "null"],
            "description": "Places free after the last move (null: no cap); called at admit_rate_per_s.",
        },
        "full_rate_per_s": {
            "type": ["number", "null"],
            "description": "The line's measured speed while the space is full (null until it first moved). ETA: policy/eta.py.",
        },
        "line_rate_per_s": {"type": "number", "description": "The line's recent speed."},
        "settled_rate_per_s": {
            "type": ["number", "null"],
            "description": "The speed the full line settles at: max_listeners / mean_listen_s (null until enough listeners left a full space). When known, the ETA's speed past the free places instead of full_rate_per_s.",
        },
        "settling": {
            "type": "boolean",
            "description": "The settled speed is being measured (the cap's places were all called from the line, too few have left yet): full_rate_per_s is not used for the ETA meanwhile.",
        },
        "mean_listen_s": {
            "type": ["number", "null"],
            "description": "How long admitted listeners stay, measured from the places that freed while the space was full (null with settled_rate_per_s).",
        },
        "max_admit_rate_per_s": {"type": "number"},
        "drawn": {
            "type": "boolean",
            "description": "Whether the places of arrivals before the start have been drawn (post your ticket to learn your number).",
        },
        "drawn_count": {"type": ["integer", "null"]},
        "opens_at": {"type": ["string", "null"]},
        "starts_at": {"type": ["string", "null"]},
        "released_places": {
            "type": "integer",
            "description": "Places called whose ticket never came, given on to the next in line.",
        },
        "claim_s": {
            "type": "number",
            "description": "Seconds a ticket whose turn came keeps its place.",
        },
        "interval_ms": {"type": "integer"},
        "updated_at": {"type": "string"},
    },
}


_QUEUE_200 = metrics.QUEUE_DOCUMENTS.labels(status="200")
_QUEUE_304 = metrics.QUEUE_DOCUMENTS.labels(status="304")


@router.get(
    "/spaces/{space_id}/queue.json",
    summary="The waiting room's state",
    description="Where the line of a space stands; the same bytes for everyone, recomputed once per queue interval, cacheable (max-age 1, ETag).",
    response_class=Response,
    responses={
        200: {
            "description": "The queue.",
            "content": {"application/json": {"schema": QUEUE_SCHEMA}},
        },
        304: {"description": "Not modified (If-None-Match matched the ETag)."},
        "default": {
            "description": "A problem.",
            "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
        },
    },
)
async def queue_json(space_id: str, request: Request) -> Response:
    services = cast("Services", request.app.state.services)
    entry = services.spaces.index.get(space_id)
    if entry is None:
        raise NotFound(f"There is no space '{space_id}'; check the link.")
    doc = await services.admission.document(space_id, entry)
    headers = {"Cache-Control": "public, max-age=1", "ETag": doc.etag}
    inm = request.headers.get("if-none-match")
    if inm is not None and (inm.strip() == "*" or doc.etag in {t.strip() for t in inm.split(",")}):
        _QUEUE_304.inc()
        return Response(status_code=304, headers=headers)
    _QUEUE_200.inc()
    return Response(doc.body, media_type="application/json", headers=headers)


@router.post(
    "/api/spaces/{space_id}/leave",
    status_code=204,
    tags=["spaces"],
    responses=PROBLEM_RESPONSES,
    summary="Leave (listener token): the place is free at once",
    description='The listener token in Authorization: Bearer, or in a body {"token": ...} (for navigator.sendBeacon, which cannot set headers).',
    response_class=Response,
)
async def leave(space_id: str, request: Request) -> Response:
    services = cast("Services", request.app.state.services)
    claims = await _listener_claims(services, space_id, request, "to leave")
    await services.admission.leave(space_id, claims)
    return Response(status_code=204)


def presence_beat(services: Services, space_id: str, token: str | None, client: str | None) -> None:
    """One "still here" (the core of both presence routes): the network's
    bucket, the token's signature, then the sampled count; memory only."""
    entry = services.spaces.index.get(space_id)
    if entry is None:
        raise NotFound(f"There is no space '{space_id}'; check the link.")
    if services.defense is not None:
        wait_s = services.defense.allow_presence(client, time.time())
        if wait_s:
            raise TooManyRequests(
                "Too many presence beats from your network; wait a moment.", retry_after_s=wait_s
            )
    if token is None:
        raise Unauthorized(_NO_TOKEN.format(purpose="to be counted as listening"))
    claims = services.tokens.verify(token, kind="listener", space_id=space_id)
    services.presence.beat(space_id, claims.token_id, entry.state == "live")  # type: ignore[union-attr]


def _body_token(body: bytes) -> str | None:
    try:
        data = orjson.loads(body or b"null")
    except orjson.JSONDecodeError:
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def _bearer(value: str) -> str | None:
    scheme, _, raw = value.partition(" ")
    return raw.strip() if scheme.lower() == "bearer" and raw.strip() else None


_NO_CONTENT = {
    "type": "http.response.start",
    "status": 204,
    "headers": [(b"cache-control", b"no-store")],
}
_PREFIX, _SUFFIX = "/api/spaces/", "/presence"


class PresenceFront:
    """ASGI middleware in front of the framework (server/app.py installs it
    inside KeepAlive, outside the auth shield and the router): a POST to
    ``/api/spaces/{id}/presence`` is answered here, so a beat costs one
    signature check, a bucket and a sketch update, not the framework's routing
    and middleware; everything else passes through. (townhall's HTTP/1.1
    driver answers beats before the app, ``server/lean.py``, with this same
    core; this middleware serves other drivers and ASGI clients.) The documented route below
    has the same core (``presence_beat``) and is what OpenAPI shows. A beat
    with a bad token is refused by this network's presence bucket before its
    signature is checked, so the auth shield is not needed here."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not path.endswith(_SUFFIX)
            or not path.startswith(_PREFIX)
            or "/" in (space_id := path[len(_PREFIX) : -len(_SUFFIX)])
            or not space_id
        ):
            await self.app(scope, receive, send)
            return
        try:
            if not await self._beat(scope, receive, space_id):
                return  # the client went away
        except TownhallError as exc:
            metrics.PROBLEMS.labels(status=str(exc.status)).inc()
            answer = problems.problem_response(
                exc.to_problem(path), retry_after_s=exc.retry_after_s
            )
            await answer(scope, receive, send)
            return
        await send(_NO_CONTENT)
        await send({"type": "http.response.body", "body": b""})

    async def _beat(self, scope: Scope, receive: Receive, space_id: str) -> bool:
        services: Services = scope["app"].state.services
        token: str | None = None
        forwarded: list[str] = []
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = _bearer(value.decode("latin-1"))
            elif name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                raise PayloadTooLarge(
                    f"The body is larger than {self.max_body_bytes} bytes; send only "
                    '{"token": ...} (or nothing, with Authorization: Bearer).'
                )
            if not message.get("more_body", False):
                break
        if token is None:
            token = _body_token(body)
        peer = scope["client"][0] if scope.get("client") else None
        client = forwarded_client(peer, forwarded, services.trusted_proxies)
        presence_beat(services, space_id, token, client)
        return True


@router.post(
    "/api/spaces/{space_id}/presence",
    status_code=204,
    tags=["spaces"],
    responses=PROBLEM_RESPONSES,
    summary="Still listening (listener token): keeps this listener in the listener count",
    description=(
        "The listener page posts this every presence_interval_s (a third of "
        "listener_presence_s, from the join answer) while it plays and its presence_rank is "
        "below presence_sample (join answer, then state.json): every page of a room of up to "
        "twice presence_sample_target listeners, a fixed-size sample of a bigger one, whose "
        "count is scaled up. A listener who stops posting drops out of state.json's "
        "listener_count within listener_presence_s. Memory only, no database; a beat outside "
        "the sample is accepted and ignored; 429 past presence_per_network_per_10s. "
        'The token as for leave: Authorization: Bearer, or a body {"token": ...}.'
    ),
    response_class=Response,
)
async def presence(space_id: str, request: Request) -> Response:
    services = cast("Services", request.app.state.services)
    token = _bearer(request.headers.get("authorization", "")) or _body_token(await request.body())
    presence_beat(services, space_id, token, client_host(request))
    return Response(status_code=204)


_NO_TOKEN = (
    'Send your listener token (Authorization: Bearer, or a body {{"token": ...}}) {purpose}.'
)


async def _listener_claims(
    services: Services, space_id: str, request: Request, purpose: str
) -> Claims:
    """The verified listener token of a leave request (Bearer, or a
    JSON body {"token": ...} for navigator.sendBeacon, which cannot set headers)."""
    if services.spaces.index.get(space_id) is None:
        raise NotFound(f"There is no space '{space_id}'; check the link.")
    token = _bearer(request.headers.get("authorization", "")) or _body_token(await request.body())
    if token is None:
        raise Unauthorized(_NO_TOKEN.format(purpose=purpose))
    return services.tokens.verify(token, kind="listener", space_id=space_id)
