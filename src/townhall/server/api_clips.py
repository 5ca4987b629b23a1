"""Clips over HTTP: a listener cuts up to ``clips_max_s`` of what they heard
(live, from the window, or in the replay) into a clip with its own share page
(``/spaces/{id}/clips/{clip}``) and ``.m4a``; rate-limited per listener token
(live) or per network (replay); the host or a co-host can delete clips.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import FileResponse, HTMLResponse, Response

from townhall import metrics
from townhall.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from townhall.policy.ratelimit import Limit, MemoryLimiter
from townhall.server.auth import (
    PROBLEM_RESPONSES,
    Session,
    client_network,
    refuse_if,
    services_of,
    verify,
)
from townhall.server.pages import CACHE_SHORT, render
from townhall.store import clips
from townhall.store.recordings import Manifest, RecordingStore

router = APIRouter(tags=["clips"], responses=PROBLEM_RESPONSES)

_limiters: dict[tuple[int, float], MemoryLimiter] = {}


def _limiter(count: int, period_s: float) -> MemoryLimiter:
    key = (count, period_s)
    if key not in _limiters:
        _limiters[key] = MemoryLimiter(Limit(count, period_s))
    return _limiters[key]


class ClipIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start_s: float = Field(
        ge=0, description="Where the clip starts, in seconds from the start of the talk."
    )
    duration_s: float = Field(gt=0, description="How long the clip is, in seconds.")


class ClipOut(BaseModel):
    id: str
    space_id: str
    start_s: float
    duration_s: float
    page_url: str
    m4a_url: str


def _out(info: clips.ClipInfo) -> ClipOut:
    base = f"/spaces/{info.space_id}/clips/{info.id}"
    return ClipOut(
        id=info.id,
        space_id=info.space_id,
        start_s=info.start_s,
        duration_s=info.duration_s,
        page_url=base,
        m4a_url=base + ".m4a",
    )


@router.post(
    "/api/spaces/{space_id}/clips",
    status_code=201,
    response_model=ClipOut,
    summary="Cut a clip (listener token while live; anyone in the replay)",
)
async def create_clip(space_id: str, body: ClipIn, request: Request) -> ClipOut:
    services = services_of(request)
    settings = services.settings
    entry = services.spaces.index.get(space_id)
    if entry is None:
        raise NotFound(f"There is no space '{space_id}'; check the link.")
    if body.duration_s > settings.clips_max_s:
        raise ValidationFailed(
            f"A clip can be at most {settings.clips_max_s:g} s long.",
            extra={"errors": [{"field": "duration_s", "message": "too long"}]},
        )
    room = services.rooms.get(space_id)
    live = room is not None and room.program.window is not None
    if live:
        try:
            key = "token:" + verify(request, "listener", space_id).token_id
        except Unauthorized:
            raise Unauthorized(
                "Join the space first: clips while live need your listener token."
            ) from None
    else:
        key = "net:" + client_network(request.client.host if request.client else None)
    refuse_if(
        await _limiter(settings.clips_per_listener, settings.clips_period_s).hit(key),
        "clips",
        f"You can make {settings.clips_per_listener} clips per {settings.clips_period_s:g} s; wait a moment.",
    )
    store = RecordingStore(settings.recordings_dir, space_id)
    directory = clips.clips_dir(store.dir)
    clip_id = clips.new_clip_id()
    if live:
        assert room is not None and room.program.window is not None
        window = room.program.window
        manifest = Manifest(
            space_id=space_id,
            sample_rate_hz=settings.sample_rate_hz,
            ended=False,
            epochs=(),
            segments=tuple(window.history),
        )

        def read_segment(msn: int) -> bytes | None:
            return window.segment(msn) or store.read_segment(msn)

        def read_init(epoch: int) -> bytes | None:
            if epoch == window.epoch and window.init_segment is not None:
                return window.init_segment
            return store.read_init(epoch)
    else:
        loaded = await asyncio.to_thread(store.load)
        if loaded is None:
            raise NotFound("This space has no recording to clip.")
        manifest, read_segment, read_init = loaded, store.read_segment, store.read_init
    started = time.monotonic()
    duration_s = await asyncio.to_thread(
        clips.cut_clip,
        manifest,
        directory / f"{clip_id}.m4a",
        body.start_s,
        body.duration_s,
        read_init=read_init,
        read_segment=read_segment,
    )
    info = clips.ClipInfo(clip_id, space_id, body.start_s, round(duration_s, 3), time.time())
    await asyncio.to_thread(clips.save_info, directory, info)
    metrics.CLIPS_MADE.inc()
    metrics.CLIP_SECONDS.observe(time.monotonic() - started)
    return _out(info)


def _clip_dir(request: Request, space_id: str, clip_id: str | None = None) -> Path:
    """The clips folder of ``space_id`` on this node; with ``clip_id``, the
    one on this machine that holds that clip (HTTP workers: the worker that
    made it, ``recording_copies``), else this node's."""
    services = services_of(request)
    if services.spaces.index.get(space_id) is None:
        raise NotFound(f"There is no space '{space_id}'; check the link.")
    settings = services.settings
    own = clips.clips_dir(RecordingStore(settings.recordings_dir, space_id).dir)
    if clip_id is None or not settings.recording_copy_dirs:
        return own
    name = f"{clips.check_clip_id(clip_id)}.json"
    for folder in (settings.recordings_dir, *settings.recording_copy_dirs):
        directory = clips.clips_dir(folder / space_id)
        if (directory / name).is_file():
            return directory
    return own


@router.get("/api/spaces/{space_id}/clips/{clip_id}", response_model=ClipOut, summary="A clip")
async def get_clip(space_id: str, clip_id: str, request: Request) -> ClipOut:
    directory = await asyncio.to_thread(_clip_dir, request, space_id, clip_id)
    info = await asyncio.to_thread(clips.load_info, directory, clip_id)
    if info is None:
        raise NotFound("There is no clip with this id (it may have been deleted).")
    return _out(info)


@router.delete(
    "/api/spaces/{space_id}/clips/{clip_id}",
    status_code=204,
    summary="Delete a clip (host, co-hosts)",
)
async def delete_clip(space_id: str, clip_id: str, claims: Session, request: Request) -> Response:
    services = services_of(request)
    directory = await asyncio.to_thread(_clip_dir, request, space_id, clip_id)
    role = await services.spaces.current_role(space_id, claims.subject)
    if role not in ("host", "cohost"):
        raise Forbidden("Only the host or a co-host can delete clips of this space.")
    if not await asyncio.to_thread(clips.delete_clip, directory, clip_id):
        raise NotFound("There is no clip with this id (it may have been deleted already).")
    return Response(status_code=204)


@router.get(
    "/spaces/{space_id}/clips/{clip_id}.m4a", summary="A clip's audio", response_class=Response
)
async def clip_audio(space_id: str, clip_id: str, request: Request) -> Response:
    directory = await asyncio.to_thread(_clip_dir, request, space_id, clip_id)
    path = directory / f"{clips.check_clip_id(clip_id)}.m4a"
    if not await asyncio.to_thread(path.is_file):
        raise NotFound("There is no clip with this id (it may have been deleted).")
    return FileResponse(
        path,
        media_type="audio/mp4",
        headers={"Cache-Control": "public, max-age=60"},
        filename=f"townhall-{space_id}-{clip_id}.m4a",
    )


@router.get("/spaces/{space_id}/clips/{clip_id}", include_in_schema=False)
async def clip_page(space_id: str, clip_id: str, request: Request) -> HTMLResponse:
    _clip_dir(request, space_id)
    clips.check_clip_id(clip_id)
    return render("clip", title="Clip · townhall", cache_control=CACHE_SHORT, space_id=space_id)
