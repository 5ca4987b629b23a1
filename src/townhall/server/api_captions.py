"""Captions over HTTP: the WebVTT subtitles rendition (``captions.m3u8`` and
one ``captions/{msn}.vtt`` per audio segment), the page's live caption line
(``captions.json``, cacheable for a second), the transcript of an ended
space (``transcript.vtt`` / ``transcript.txt``), and the host's switch
(``PUT /api/spaces/{id}/captions``).

Everything a listener reads is the same bytes for all and cacheable; times
are on the audio's media timeline (``captions.json``, the playlist), or from
the recording's start (the transcript downloads).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from townhall.captions import track as render
from townhall.captions.live import TRANSCRIPT_FILE, LiveCaptions, load_lines
from townhall.captions.track import CaptionTrack, Line
from townhall.errors import Forbidden, NotFound
from townhall.server.api_stage import running_room
from townhall.server.auth import PROBLEM_RESPONSES, Session, services_of
from townhall.server.services import Services
from townhall.store.recordings import Manifest, RecordingStore, SegmentRecord, served_copy

router = APIRouter(tags=["captions"], responses=PROBLEM_RESPONSES)

VTT = "text/vtt; charset=utf-8"
M3U8 = "application/vnd.apple.mpegurl"


class CaptionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool


class CaptionsOut(BaseModel):
    enabled: bool
    status: str
    message: str


class _Ended:
    """Transcripts and manifests of ended spaces, re-read when the file changes."""

    def __init__(self, max_entries: int = 128) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[int, int, CaptionTrack, Manifest | None]] = (
            OrderedDict()
        )

    def get(self, directory: Path, store: RecordingStore) -> tuple[CaptionTrack, Manifest | None]:
        key = str(directory)
        stamp = (_mtime(directory / TRANSCRIPT_FILE), store.manifest_mtime_ns() or 0)
        entry = self._entries.get(key)
        if entry is not None and entry[:2] == stamp:
            self._entries.move_to_end(key)
            return entry[2], entry[3]
        track = CaptionTrack()
        lines = load_lines(directory)
        track.lines.extend(lines)
        track.done_s = lines[-1].end_s if lines else 0.0
        manifest = store.load()
        self._entries[key] = (*stamp, track, manifest)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return track, manifest


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


_ended = _Ended()
_names: dict[str, tuple[float, dict[str, str]]] = {}
NAMES_TTL_S = 30.0


async def _speaker_names(
    services: Services, space_id: str, lines: Sequence[Line]
) -> dict[str, str]:
    """Display names of the speakers in ``lines`` (cached per space for a while)."""
    ids = {ln.speaker for ln in lines if ln.speaker}
    cached = _names.get(space_id)
    if (
        cached is not None
        and time.monotonic() - cached[0] < NAMES_TTL_S
        and ids <= cached[1].keys()
    ):
        return cached[1]
    accounts = await services.accounts.by_ids(ids)
    names = {aid: acc.display_name or acc.username for aid, acc in accounts.items()}
    if len(_names) > 1024:
        _names.clear()
    _names[space_id] = (time.monotonic(), names)
    return names


async def _source(
    services: Services, space_id: str
) -> tuple[CaptionTrack, Sequence[SegmentRecord], bool, LiveCaptions | None]:
    """(track, audio segments, ended, live captions or None) of a space."""
    if services.spaces.index.get(space_id) is None:
        raise NotFound(f"There is no space '{space_id}'; check the link.")
    room = services.rooms.get(space_id)
    if room is not None and room.program.window is not None:
        window = room.program.window
        return room.captions.track, window.history, window.ended, room.captions
    settings = services.settings
    store = await served_copy(settings.recordings_dir, settings.recording_copy_dirs, space_id)
    track, manifest = await asyncio.to_thread(_ended.get, store.dir, store)
    if manifest is None:
        return track, (), False, None
    return track, manifest.segments, manifest.ended, None


def _status(live: LiveCaptions | None, track: CaptionTrack, ended: bool) -> tuple[str, str]:
    if live is not None:
        return live.status()
    if ended:
        return ("ended", "") if track.lines else ("off", "This space has no transcript.")
    return "off", "Captions are not running for this space on this server."


@router.get(
    "/spaces/{space_id}/captions.json",
    summary="The latest caption lines (for the listener page)",
    description="The last lines recognized, on the audio's media timeline, and whether captions run; max-age 1.",
    response_class=Response,
)
async def captions_json(space_id: str, request: Request) -> Response:
    services = services_of(request)
    track, _, ended, live = await _source(services, space_id)
    status, message = _status(live, track, ended)
    recent = track.recent(services.settings.captions_recent_lines)
    names = await _speaker_names(services, space_id, recent)
    doc = render.captions_document(
        track,
        status=status,
        message=message,
        count=services.settings.captions_recent_lines,
        names=names,
    )
    return Response(
        orjson.dumps(doc),
        media_type="application/json",
        headers={"Cache-Control": "public, max-age=1"},
    )


@router.get(
    "/spaces/{space_id}/captions.m3u8",
    summary="Subtitles playlist (WebVTT, one file per audio segment)",
    response_class=Response,
)
async def captions_playlist(space_id: str, request: Request) -> Response:
    services = services_of(request)
    track, records, ended, live = await _source(services, space_id)
    settings = services.settings
    rate = settings.sample_rate_hz
    shown = render.captioned_segments(
        records, track, rate, ended=ended and (live is None or live.captioner is None)
    )
    segment_s = settings.part_ms * settings.segment_parts / 1000
    body = render.subtitles_playlist(
        shown, rate, segment_target_s=segment_s, ended=ended and len(shown) == len(records)
    )
    max_age = 86400 if ended else 1
    return Response(body, media_type=M3U8, headers={"Cache-Control": f"public, max-age={max_age}"})


@router.get(
    "/spaces/{space_id}/captions/{msn}.vtt",
    summary="The captions of one audio segment (WebVTT)",
    response_class=Response,
)
async def captions_segment(space_id: str, msn: int, request: Request) -> Response:
    services = services_of(request)
    track, records, ended, live = await _source(services, space_id)
    rate = services.settings.sample_rate_hz
    record = next((r for r in records if r.msn == msn), None)
    if record is None:
        raise NotFound(f"Segment {msn} of space '{space_id}' does not exist (yet).")
    end_s = (record.start_samples + record.duration_samples) / rate
    final = (ended and live is None) or track.done_s >= end_s
    names = await _speaker_names(services, space_id, track.between(end_s - 60, end_s))
    body = render.segment_vtt(track, record, rate, names)
    cache = "public, max-age=31536000, immutable" if final else "public, max-age=1"
    return Response(body, media_type=VTT, headers={"Cache-Control": cache})


async def _transcript(space_id: str, request: Request, *, kind: str) -> Response:
    services = services_of(request)
    track, records, ended, _ = await _source(services, space_id)
    if not ended:
        raise NotFound("The transcript is ready once the space has ended.")
    lines = list(track.lines)
    names = await _speaker_names(services, space_id, lines)
    origin_s = records[0].start_samples / services.settings.sample_rate_hz if records else 0.0
    if kind == "vtt":
        body, media = render.transcript_vtt(lines, names, origin_s), VTT
    else:
        body, media = render.transcript_text(lines, names, origin_s), "text/plain; charset=utf-8"
    return Response(
        body,
        media_type=media,
        headers={
            "Cache-Control": "public, max-age=300",
            "Content-Disposition": f'inline; filename="{space_id}-transcript.{kind}"',
        },
    )


@router.get(
    "/spaces/{space_id}/transcript.vtt", summary="Transcript (WebVTT)", response_class=Response
)
async def transcript_vtt(space_id: str, request: Request) -> Response:
    return await _transcript(space_id, request, kind="vtt")


@router.get(
    "/spaces/{space_id}/transcript.txt", summary="Transcript (text)", response_class=Response
)
async def transcript_txt(space_id: str, request: Request) -> Response:
    return await _transcript(space_id, request, kind="txt")


@router.get(
    "/spaces/{space_id}/transcript.json",
    summary="Transcript lines with times from the recording's start (for the replay page)",
    response_class=Response,
)
async def transcript_json(space_id: str, request: Request) -> Response:
    services = services_of(request)
    track, records, ended, _ = await _source(services, space_id)
    if not ended:
        raise NotFound("The transcript is ready once the space has ended.")
    lines = list(track.lines)
    names = await _speaker_names(services, space_id, lines)
    origin_s = records[0].start_samples / services.settings.sample_rate_hz if records else 0.0
    doc = {"lines": [render.line_json(ln, names, origin_s) for ln in lines]}
    return Response(
        orjson.dumps(doc),
        media_type="application/json",
        headers={"Cache-Control": "public, max-age=300"},
    )


@router.put(
    "/api/spaces/{space_id}/captions",
    response_model=CaptionsOut,
    summary="Turn captions of a space on or off (host, co-hosts)",
)
async def set_captions(
    space_id: str, body: CaptionsIn, claims: Session, request: Request
) -> CaptionsOut:
    services = services_of(request)
    await services.spaces.get(space_id)
    role = await services.spaces.current_role(space_id, claims.subject)
    if role not in ("host", "cohost"):
        raise Forbidden("Only the host or a co-host can turn captions on or off.")
    room = running_room(services, space_id)  # live elsewhere, not passed on: 503
    if room is None:
        raise NotFound("Captions can be switched while the space is live.")
    await room.captions.set_enabled(body.enabled)
    status, message = room.captions.status()
    return CaptionsOut(enabled=body.enabled, status=status, message=message)
