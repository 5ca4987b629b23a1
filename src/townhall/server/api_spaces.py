"""Spaces: create, list, get, start, end; join (listener tokens), speaker
tokens and reactions.

Join, the hot path of a big night, has its core in ``server/join.py``: the
HTTP/1.1 driver answers it before the framework (``server/lean.py``), a bare
Starlette route placed before the documented FastAPI route serves it for other
drivers, and the documented route (the same core) is what OpenAPI shows.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.responses import Response
from starlette.routing import Route

from townhall import metrics
from townhall.errors import (
    Conflict,
    NotFound,
    ValidationFailed,
)
from townhall.policy import roles
from townhall.policy.ratelimit import Decision
from townhall.server.auth import (
    PROBLEM_RESPONSES,
    Bearer,
    Session,
    client_host,
    iso,
    iso_epoch,
    listener_urls,
    refuse_if,
    request_base,
    services_of,
    verify,
)
from townhall.server.join import JoinEndpoint, join
from townhall.server.space_cap import CAP_DOC, check_cap
from townhall.store.spaces import SpaceLimitReached, SpaceRateLimited, SpaceView

log = logging.getLogger("townhall.access")

router = APIRouter(prefix="/api", tags=["spaces"], responses=PROBLEM_RESPONSES)

SpaceId = Annotated[str, Field(min_length=1, max_length=64)]

# Reactions a listener may send (a fixed set keeps the totals small and safe to show).
EMOJIS: tuple[str, ...] = ("👏", "❤️", "😂", "🔥", "💯", "🙌", "😮", "👍")


# ---------------------------------------------------------------- models


class SpaceIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    title: str = Field(min_length=1, max_length=120)
    description: str = Field(default="", max_length=1000)
    visibility: Literal["public", "unlisted"] = "public"
    scheduled_for: datetime | None = Field(
        default=None,
        description="ISO 8601 time with a zone; leave out to go live now. At most max_schedule_ahead_days ahead.",
    )
    max_listeners: StrictInt | None = Field(default=None, description=CAP_DOC)


class HostOut(BaseModel):
    id: str
    username: str
    display_name: str


class UrlsOut(BaseModel):
    page: str
    master_m3u8: str = Field(
        description="Multivariant playlist (CODECS, BANDWIDTH) naming live_m3u8: give this to players."
    )
    live_m3u8: str
    plain_m3u8: str
    live_aac: str
    state_json: str
    recording_m4a: str


class SpaceOut(BaseModel):
    id: str
    title: str
    description: str
    visibility: str
    state: Literal["scheduled", "live", "ended"]
    host: HostOut
    scheduled_for: str | None
    started_at: str | None
    ended_at: str | None
    created_at: str
    max_listeners: int | None = Field(default=None, description=CAP_DOC)
    urls: UrlsOut


class SpaceListOut(BaseModel):
    spaces: list[SpaceOut]


class JoinIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    token: str | None = Field(
        default=None, max_length=4096, description="A listener token of this space, to renew it."
    )
    ticket: str | None = Field(
        default=None, max_length=512, description="A queue ticket (from a 202) to renew or use."
    )


class JoinOut(BaseModel):
    token: str
    role: Literal["listener"]
    expires_at: str
    urls: UrlsOut
    seen_mark: str | None = Field(
        default=None,
        description="A signed 'seen before' mark: send it back as X-Townhall-Seen on later joins for priority and less proof-of-work.",
    )
    delivery: Literal["llhls", "hls"] = Field(
        description="How to listen: llhls (live_m3u8), or hls (plain_m3u8, a few seconds more delay) when this node's LL-HLS budget is spent."
    )
    listen_url: str = Field(description="The playlist to play (live_m3u8 or plain_m3u8).")
    detail: str = Field(description="A sentence to show (e.g. why the delay is longer).")
    presence_interval_s: float | None = Field(description="POST presence this often (s).")
    presence_rank: float = Field(description="Beat only while this is below presence_sample.")
    presence_sample: float = Field(description="The sampled band (also in state.json); 1: all.")


class QueuedOut(BaseModel):
    ticket: str = Field(description='Your signed place in line; post it back as {"ticket": ...}.')
    expires_at: str = Field(description="When the ticket runs out unless renewed by posting it.")
    number: int | None = Field(
        description="Your number in the space's line (null before a scheduled start: places of early arrivals are drawn at random when it starts)."
    )
    position: int | None = Field(
        description="How many places are before yours: number - admitting_through of queue.json."
    )
    eta_s: float | None = Field(description="Seconds until your turn, estimated; null if unknown.")
    retry_after_s: float = Field(description="When to post the ticket again (also Retry-After).")
    queue_url: str = Field(description="The queue document (/spaces/{id}/queue.json).")
    reason: str = Field(description="Why you wait: full, before_start, not_your_turn, next, ...")
    detail: str = Field(description="A sentence to show.")


class SpeakerTokenOut(BaseModel):
    token: str
    role: Literal["host", "cohost", "speaker"]
    expires_at: str


class ReactionIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    emoji: str = Field(description="One of: " + " ".join(EMOJIS))


class AcceptedOut(BaseModel):
    accepted: bool = True


def space_out(space: SpaceView, base: str) -> SpaceOut:
    return SpaceOut(
        id=space.id,
        title=space.title,
        description=space.description,
        visibility=space.visibility,
        state=space.state,
        host=HostOut(**space.host.public()),
        scheduled_for=iso(space.scheduled_for),
        started_at=iso(space.started_at),
        ended_at=iso(space.ended_at),
        created_at=iso(space.created_at) or "",
        max_listeners=space.max_listeners,
        urls=UrlsOut(**listener_urls(base, space.id)),
    )


# ---------------------------------------------------------------- spaces


@router.post("/spaces", status_code=201, response_model=SpaceOut, summary="Create a space")
async def create_space(body: SpaceIn, claims: Session, request: Request) -> SpaceOut:
    services = services_of(request)
    check_cap(services.settings, body.max_listeners)
    try:
        space = await services.spaces.create(
            claims.subject, body.title, body.description, body.visibility, body.scheduled_for,
            body.max_listeners,
        )  # fmt: skip
    except SpaceLimitReached as exc:
        metrics.SPACE_LIMITS.labels(limit=exc.limit).inc()
        raise
    except SpaceRateLimited:
        metrics.SPACE_LIMITS.labels(limit="rate").inc()
        raise
    if space.state == "live":
        await services.rooms.start(space.id)
    log.info("space %s created (%s) by %s", space.id, space.state, claims.subject)
    return space_out(space, request_base(request))


@router.get("/spaces", response_model=SpaceListOut, summary="List public spaces")
async def list_spaces(
    request: Request,
    state: Annotated[Literal["scheduled", "live", "ended"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> SpaceListOut:
    services = services_of(request)
    spaces = await services.spaces.list_public(state, limit)
    base = request_base(request)
    return SpaceListOut(spaces=[space_out(s, base) for s in spaces])


@router.get("/spaces/{space_id}", response_model=SpaceOut, summary="One space")
async def get_space(space_id: SpaceId, request: Request) -> SpaceOut:
    space = await services_of(request).spaces.get(space_id)
    return space_out(space, request_base(request))


@router.post("/spaces/{space_id}/start", response_model=SpaceOut, summary="Go live (host)")
async def start_space(space_id: SpaceId, claims: Session, request: Request) -> SpaceOut:
    services = services_of(request)
    space = await services.spaces.start(space_id, claims.subject)
    await services.rooms.start(space_id)
    return space_out(space, request_base(request))


@router.post("/spaces/{space_id}/end", response_model=SpaceOut, summary="End the space (host)")
async def end_space(space_id: SpaceId, claims: Session, request: Request) -> SpaceOut:
    services = services_of(request)
    space = await services.spaces.end(space_id, claims.subject)
    await services.rooms.end(space_id)
    return space_out(space, request_base(request))


# ---------------------------------------------------------------- join (hot path: server/join.py)


@router.post(
    "/spaces/{space_id}/join",
    response_model=JoinOut,
    summary="Join as a listener (or renew a listener token, or exchange a queue ticket)",
    description=(
        "Anyone may join a public or unlisted space; a session token is optional (blocked "
        "accounts get 403). 200: admitted, with a listener token (and, for a space with a cap, "
        "a cookie carrying it to the media). 202: the space is full (or has not started): a "
        "queue ticket, the position, an ETA and queue_url, with Retry-After; post "
        '{"ticket": ...} again to renew the ticket or, once its turn has come, exchange it. '
        "A bad, forged, expired, wrong-space or reused ticket is a 4xx problem naming the reason; "
        "503 with Retry-After when the node is at capacity or the waiting room is not open yet."
    ),
    # the bearer token is optional: {} (no requirement) joins the generated one
    openapi_extra={"security": [{}]},
    responses={202: {"model": QueuedOut, "description": "Queued: a ticket and where it stands."}},
)
async def join_documented(
    space_id: SpaceId,
    request: Request,
    _credentials: Bearer,
    body: Annotated[JoinIn | None, Body()] = None,
) -> Response:
    services = services_of(request)
    answer = await join(
        services,
        space_id,
        request.headers.get("authorization"),
        body.token if body else None,
        request_base(request),
        body.ticket if body else None,
        client_host(request),
        request.headers.get("x-townhall-pow"),
        request.headers.get("x-townhall-seen"),
    )
    return Response(
        answer.body,
        status_code=answer.status,
        headers={k.decode(): v.decode("latin-1") for k, v in answer.headers},
    )


# Served first: same path and method as the documented route above.
router.routes.insert(
    0,
    Route("/api/spaces/{space_id}/join", JoinEndpoint(), methods=["POST"], include_in_schema=False),
)


# ---------------------------------------------------------------- speaker tokens, reactions


@router.post(
    "/spaces/{space_id}/speaker-token",
    response_model=SpeakerTokenOut,
    summary="A speaker token for the WebRTC offer (stage members only)",
)
async def speaker_token(space_id: SpaceId, claims: Session, request: Request) -> SpeakerTokenOut:
    services = services_of(request)
    role = await services.spaces.current_role(space_id, claims.subject)
    roles.check(role, "speaker_token")
    entry = services.spaces.index.get(space_id)
    if entry is not None and entry.state != "live":
        raise Conflict(
            "This space is not live; the host must start it before anyone can speak."
            if entry.state == "scheduled"
            else "This space has ended; nobody can speak in it any more."
        )
    assert role is not None
    token, issued = services.tokens.mint(
        "speaker",
        claims.subject,
        services.settings.speaker_token_ttl_s,
        space_id=space_id,
        role=role,
    )
    return SpeakerTokenOut(
        token=token,
        role=role,
        expires_at=iso_epoch(issued.expires_at),
    )


@router.post(
    "/spaces/{space_id}/reactions",
    status_code=202,
    response_model=AcceptedOut,
    summary="React (listener token)",
)
async def react(
    space_id: SpaceId, body: ReactionIn, request: Request, _credentials: Bearer
) -> AcceptedOut:
    services = services_of(request)
    entry = services.spaces.index.get(space_id)
    if entry is None:
        raise NotFound(f"There is no space '{space_id}'; check the link.")
    claims = verify(request, "listener", space_id)
    if body.emoji not in EMOJIS:
        raise ValidationFailed(
            f"Field 'emoji' is invalid: use one of {' '.join(EMOJIS)}.",
            extra={"errors": [{"field": "emoji", "message": "not an allowed reaction"}]},
        )
    if entry.state != "live":
        raise Conflict("Reactions are open only while the space is live.")
    refuse_if(
        await services.limits.reactions.hit(claims.token_id),
        "reactions",
        f"You can send {services.settings.reactions_per_token_per_10s} reactions per 10 seconds; wait a moment.",
    )
    if services.defense is not None:  # issue 10: totals a network's token flood cannot inflate
        refuse_if(
            Decision(False, wait_s)
            if (wait_s := services.defense.reaction_allowed(space_id, client_host(request)))
            else Decision(True, 0.0),
            "reactions-network",
            "Too many reactions from your network right now; wait a moment.",
        )
    services.reactions.add(space_id, body.emoji)
    metrics.REACTIONS.inc()
    return AcceptedOut()
