"""The waiting room over HTTP: ``/spaces/{id}/queue.json`` (one small document
per space, the same bytes for everyone, cacheable for at most a second) and
``POST /api/spaces/{id}/leave`` (a listener leaving frees its place at once),
and ``POST /api/spaces/{id}/presence`` (a listener saying "still here", which
keeps it in the listener count).

A waiting client computes its own position from its ticket's number and the
document (``number - admitting_through``) and its ETA from ``free_places``,
``admit_rate_per_s`` and ``full_rate_per_s`` (``policy/eta.py``), so a crowd
in line is answered by the cache in front.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from townhall.errors import NotFound, Unauthorized
from townhall.server.auth import PROBLEM_RESPONSES, PROBLEM_SCHEMA

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
        return Response(status_code=304, headers=headers)
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


@router.post(
    "/api/spaces/{space_id}/presence",
    status_code=204,
    tags=["spaces"],
    responses=PROBLEM_RESPONSES,
    summary="Still listening (listener token): keeps this listener in the listener count",
    description=(
        "The listener page posts this every third of listener_presence_s (the join answer's "
        "presence_interval_s) while it plays; a listener who stops posting drops out of "
        "state.json's listener_count within listener_presence_s. Memory only, no database. "
        'The token as for leave: Authorization: Bearer, or a body {"token": ...}.'
    ),
    response_class=Response,
)
async def presence(space_id: str, request: Request) -> Response:
    services = cast("Services", request.app.state.services)
    claims = await _listener_claims(services, space_id, request, "to be counted as listening")
    entry = services.spaces.index.get(space_id)
    if entry is not None and entry.state == "live":
        services.listeners.add(space_id, claims.token_id)
    return Response(status_code=204)


async def _listener_claims(
    services: Services, space_id: str, request: Request, purpose: str
) -> Claims:
    """The verified listener token of a leave or presence request (Bearer, or a
    JSON body {"token": ...} for navigator.sendBeacon, which cannot set headers)."""
    if services.spaces.index.get(space_id) is None:
        raise NotFound(f"There is no space '{space_id}'; check the link.")
    token: str | None = None
    scheme, _, raw = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and raw.strip():
        token = raw.strip()
    else:
        try:
            data = orjson.loads(await request.body() or b"null")
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("token"), str):
            token = data["token"]
    if token is None:
        raise Unauthorized(
            f'Send your listener token (Authorization: Bearer, or a body {{"token": ...}}) {purpose}.'
        )
    return services.tokens.verify(token, kind="listener", space_id=space_id)
