"""``/spaces/{id}/state.json``: the room state for listeners (speakers,
listener count, reaction totals), computed from the tallies of
``live/roomstate.py`` at most once per ``state_interval_ms`` per space.

However many clients ask, the first request after the document goes stale
computes it, concurrent requests await that same computation, and everyone
else gets the cached bytes with an ETag (``304`` on ``If-None-Match``) and a
``max-age`` of the interval, so caches in front absorb the rest.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from townhall import metrics
from townhall.errors import DatabaseUnavailable, NotFound, TooManyRequests
from townhall.live.program import state_fields
from townhall.live.roomstate import ListenerCounter, ReactionTotals
from townhall.live.seats import ROOM_OK, room_fields
from townhall.live.tracks import SpeakerStatus
from townhall.server.auth import PROBLEM_SCHEMA, client_host
from townhall.server.state_fast import STATE_REFUSED, not_modified, state_response
from townhall.store.recordings import served_copy

if TYPE_CHECKING:
    from townhall.server.services import Services


router = APIRouter(tags=["listener"])

LISTENER_COUNT_METHOD = (
    "who is listening now: distinct listener tokens that joined, renewed or said 'still "
    "here' (the page does every third of listener_presence_s) within the last one to two "
    "halves of listener_presence_s, counted with a HyperLogLog sketch (about 1.6% error), "
    "on this node; a room of more than twice presence_sample_target is counted through a "
    "sample of its tokens, scaled up (about 1/sqrt(presence_sample_target) more error)"
)
LISTENER_COUNT_METHOD_SHARED = (
    "who is listening now: distinct listener tokens that joined, renewed or said 'still "
    "here' within the last one to two halves of listener_presence_s on every node, counted "
    "with a Redis HyperLogLog (about 0.81% error) and flushed by each node once per state "
    "interval; while Redis is unreachable, the last count read (or, if larger, this node's "
    "own count of the listeners it saw meanwhile); a big room through a sample, as on one node"
)


async def compute_state(services: Services, space_id: str) -> bytes:
    """The state.json document of one space (one database read for the stage)."""
    metrics.STATE_COMPUTED.inc()
    space = await services.spaces.get(space_id)
    members = await services.spaces.stage(space_id) if space.state != "ended" else []
    room = services.rooms.get(space_id)
    scaleout = services.rooms.scaleout
    status: dict[str, SpeakerStatus] = {}
    fields: dict[str, Any]
    if room is not None:
        status = room.stage.speaker_status()
        fields = room_fields(room)
        if scaleout is not None:
            fields["room"] = dict(ROOM_OK)
    elif scaleout is not None and space.state == "live":
        # run on another node: its owner's seats, or why they cannot be told
        view = await scaleout.seat_view(space_id)
        status, fields = view.speakers, view.fields
    else:
        settings = services.settings
        recording = await served_copy(
            settings.recordings_dir, settings.recording_copy_dirs, space.id
        )
        fields = await state_fields(None, recording if space.state == "ended" else None)
    speakers = [speaker_entry(member, status.get(member.account.id)) for member in members]
    presence = services.presence
    key = presence.count_key(space_id) if presence is not None else space_id
    if services.shared is not None:
        tally = await services.shared.read(space_id)
        listener_count, reactions = tally.listener_count, tally.reactions
        if key != space_id:  # a sampled room: its sample's key (server/presence.py)
            listener_count = (await services.shared.read(key)).listener_count
        method = LISTENER_COUNT_METHOD_SHARED
    else:
        listener_count, reactions = _local_tallies(services, space_id, key)
        method = LISTENER_COUNT_METHOD
    if presence is not None:
        listener_count = presence.estimate(space_id, listener_count)
    doc = {
        "id": space.id,
        "title": space.title,
        "state": space.state,
        "speakers": speakers,
        "listener_count": listener_count,
        "listener_count_method": method,
        "presence_sample": presence.sampler.beat_below(space_id) if presence is not None else 1.0,
        "reactions": reactions,
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # captions (issue 13), program, recording; scaled out, room (issue 11)
        **fields,
    }
    return orjson.dumps(doc)


def speaker_entry(member: Any, st: SpeakerStatus | None) -> dict[str, Any]:
    """One seat of state.json: the member's account and role, and its status
    in the room (none known: not connected, not muted); the one rule of the
    owner's and the followers' documents."""
    return {
        "account_id": member.account.id,
        "username": member.account.username,
        "display_name": member.account.display_name,
        "role": member.role,
        "muted": bool(st.muted) if st else False,
        "speaking": bool(st.speaking) if st else False,
        "level": round(float(st.level), 3) if st else 0.0,
        "connected": bool(st.connected) if st else False,
    }


def _local_tallies(services: Services, space_id: str, key: str) -> tuple[int, dict[str, int]]:
    listeners, reactions = services.listeners, services.reactions
    count = listeners.count(key) if isinstance(listeners, ListenerCounter) else 0
    totals = reactions.totals(space_id) if isinstance(reactions, ReactionTotals) else {}
    return count, totals


STATE_EXAMPLE = {
    "id": "abcdefghijkl",
    "title": "Town hall",
    "state": "live",
    "speakers": [
        {
            "account_id": "mnopqrstuvwx",
            "username": "ada",
            "display_name": "Ada",
            "role": "host",
            "muted": False,
            "speaking": True,
            "level": 0.31,
            "connected": True,
        }
    ],
    "listener_count": 1234,
    "listener_count_method": LISTENER_COUNT_METHOD,
    "presence_sample": 1.0,
    "reactions": {"👏": 12},
    "updated_at": "2026-11-20T23:46:16Z",
}

STATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "title",
        "state",
        "speakers",
        "listener_count",
        "listener_count_method",
        "reactions",
        "updated_at",
    ],
    "properties": {
        "id": {"type": "string"},
        "title": {"type": "string"},
        "state": {"type": "string", "enum": ["scheduled", "live", "ended"]},
        "speakers": {"type": "array", "items": {"type": "object"}},
        "listener_count": {"type": "integer", "minimum": 0},
        "listener_count_method": {"type": "string"},
        "presence_sample": {
            "type": "number",
            "description": "Listener pages whose join answer's presence_rank is below this post presence beats (1: every page; a big room is counted through a sample).",
        },
        "reactions": {"type": "object", "additionalProperties": {"type": "integer"}},
        "updated_at": {"type": "string"},
        "stale": {
            "type": "boolean",
            "description": "Present (true) when the database cannot be reached and this is the last document computed.",
        },
        "stale_age_s": {"type": "number", "description": "How old a stale document is."},
        "room": {
            "type": "object",
            "description": "Scaled out, while live: what the speakers' status is worth on this node. ok: the status of the node that runs the room (this one, or published by it at most SEAT_STATUS_STALE_MS ago); starting: none published yet; moving: the room's node stopped answering or the room changed hands (every seat shows connected false, muted as last known; no program field); unknown: this node cannot reach Redis. With a sentence.",
            "properties": {
                "status": {"type": "string", "enum": ["ok", "starting", "moving", "unknown"]},
                "message": {"type": "string"},
            },
        },
        "program": {
            "type": "object",
            "description": "The live program (scaled out: of the node that runs the room, as it last published): status ok, recovering (restarting after an encoder failure) or failed, with a sentence.",
            "properties": {"status": {"type": "string"}, "message": {"type": "string"}},
        },
        "captions": {
            "type": "object",
            "description": "Live captions on this node: status off, starting, running or unavailable (engine missing or failed, or this node captions as many spaces as it may), with a sentence.",
            "properties": {"status": {"type": "string"}, "message": {"type": "string"}},
        },
        "recording": {
            "type": "object",
            "description": "The recording: status ok, failing (writes retried now), incomplete (part of the talk is missing: see missing) or failed, with a sentence.",
            "properties": {
                "status": {"type": "string"},
                "message": {"type": "string"},
                "missing_s": {"type": "number"},
                "missing": {"type": "array", "items": {"type": "object"}},
            },
        },
    },
}


@router.get(
    "/spaces/{space_id}/state.json",
    summary="Room state for listeners",
    description="Speakers, listener count and reaction totals; cacheable (max-age of the state interval, ETag).",
    response_class=Response,
    responses={
        200: {
            "description": "The room state.",
            "content": {"application/json": {"schema": STATE_SCHEMA, "example": STATE_EXAMPLE}},
        },
        304: {"description": "Not modified (If-None-Match matched the ETag)."},
        "default": {
            "description": "A problem.",
            "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
        },
    },
)
async def state_json(space_id: str, request: Request) -> Response:
    services = cast("Services", request.app.state.services)
    if services.spaces.index.get(space_id) is None:
        raise NotFound(f"There is no space '{space_id}'; check the link.")
    defense = services.defense
    if defense is not None and (  # issue 10: per-network bucket
        wait_s := defense.allow_state(space_id, client_host(request), time.monotonic())
    ):
        raise TooManyRequests(STATE_REFUSED.format(wait_s=wait_s), retry_after_s=wait_s)
    entry = await services.state.get(
        space_id, lambda: compute_state(services, space_id), stale_on=(DatabaseUnavailable,)
    )
    modified = not not_modified(request.headers.get("if-none-match"), entry.etag)
    return state_response(entry.body, entry.etag, services.state.interval_s, modified=modified)
