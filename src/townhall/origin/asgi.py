"""The listener plane's origin: LL-HLS playlists, init/part/segment bytes, the
progressive ADTS stream and the remuxed recording, all outside ``/api/``.

URIs under ``/spaces/{space_id}/`` (relative in the playlists)::

    live.m3u8              LL-HLS while live (blocking reload, delta updates);
                           VOD with ENDLIST once ended (from disk after a restart)
    plain.m3u8             the same without LL-HLS tags
    init.mp4, init/<epoch>.mp4    fMP4 init segments (one per run of the program)
    part/<msn>.<i>.m4s     parts near the live edge (preload-hinted ones block)
    seg/<msn>.m4s          segments (memory window, else the recording on disk)
    live.aac               progressive ADTS over chunked HTTP
    recording.m4a          the whole talk, remuxed once it has ended

Media bytes are immutable and cached for a year; live playlists for 1 s,
blocking-reload answers for 6 s (their URL names the version), VOD for a day.

These routes are the reference implementation. With ``fast_path`` on,
``server/fastpath.py`` + ``server/fastproto.py`` answer the hot GETs of a live
space (parts, segments, init, live playlists, blocking reloads, live.aac) below
the framework with the same bytes and headers, built with the helpers here;
every error and every cold path still ends up in these routes.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, Response
from starlette.types import Receive, Scope, Send

from townhall import metrics
from townhall.config import Settings
from townhall.errors import BadRequest, Conflict, NotFound, ServiceUnavailable
from townhall.live.program import Program
from townhall.media.cmaf import part_frames
from townhall.media.encoder import AAC_FRAME_SAMPLES
from townhall.origin.playlist import parse_blocking_query, render_ll, render_plain
from townhall.origin.window import LiveWindow, ProgressiveListener, records_view
from townhall.store.m4a import build_fragmented
from townhall.store.recordings import Manifest, RecordingStore

router = APIRouter(include_in_schema=False)

M3U8 = "application/vnd.apple.mpegurl"
MP4 = "audio/mp4"
AAC = "audio/aac"
IMMUTABLE = "public, max-age=31536000, immutable"
LIVE_PLAYLIST = "public, max-age=1"
BLOCKING_PLAYLIST = "public, max-age=6"
ENDED_PLAYLIST = "public, max-age=86400"
MAX_INDEX = 10**12

_PART_RE = re.compile(r"^(\d{1,12})\.(\d{1,4})\.m4s$")
_SEGMENT_RE = re.compile(r"^(\d{1,12})\.m4s$")
_INIT_RE = re.compile(r"^(\d{1,6})\.mp4$")


# -- lookups -------------------------------------------------------------------


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _program(request: Request, space_id: str) -> Program | None:
    services = getattr(request.app.state, "services", None)
    rooms = getattr(services, "rooms", None)
    room = rooms.get(space_id) if rooms is not None else None
    program = getattr(room, "program", None)
    if isinstance(program, Program) and program.window is not None:
        return program
    return None


def _store(request: Request, space_id: str) -> RecordingStore:
    return RecordingStore(_settings(request).recordings_dir, space_id)


class _ManifestCache:
    """Recently read manifests of spaces not running here, keyed by mtime."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[int, Manifest, dict[str, str]]] = OrderedDict()

    async def get(self, store: RecordingStore) -> tuple[Manifest, dict[str, str]] | None:
        key = str(store.dir)
        mtime = await asyncio.to_thread(store.manifest_mtime_ns)
        if mtime is None:
            return None
        hit = self._entries.get(key)
        if hit is not None and hit[0] == mtime:
            self._entries.move_to_end(key)
            return hit[1], hit[2]
        manifest = await asyncio.to_thread(store.load)
        if manifest is None:
            return None
        self._entries[key] = (mtime, manifest, {})
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return manifest, self._entries[key][2]


_manifests = _ManifestCache()


def _disk_playlist(
    settings: Settings, manifest: Manifest, rendered: dict[str, str], kind: str
) -> str:
    text = rendered.get(kind)
    if text is None:
        part_s = part_frames(settings.part_ms, settings.sample_rate_hz) * AAC_FRAME_SAMPLES
        view = records_view(
            manifest.segments,
            sample_rate_hz=manifest.sample_rate_hz,
            part_target_s=part_s / manifest.sample_rate_hz,
            segment_target_s=part_s * settings.segment_parts / manifest.sample_rate_hz,
            ended=manifest.ended,
        )
        # not running here: complete segments only, no parts, hints or blocking
        text = render_ll(view) if manifest.ended else render_plain(view)
        rendered[kind] = text
    return text


def media_response(data: bytes, media_type: str, cache: str) -> Response:
    """The response for listener bytes (the fast path renders the same one)."""
    return Response(data, media_type=media_type, headers={"Cache-Control": cache})


def _bytes(data: bytes, media_type: str, cache: str, kind: str) -> Response:
    metrics.LISTENER_BYTES.labels(kind=kind).inc(len(data))
    return media_response(data, media_type, cache)


def blocking_timeout() -> ServiceUnavailable:
    """The error of a blocking request whose part did not come in time."""
    return ServiceUnavailable(
        "The requested part is not ready yet; the stream may be stalled. Reload the playlist in a moment.",
        retry_after_s=1,
    )


def playlist_cache(window: LiveWindow, *, blocking: bool) -> str:
    """Cache-Control of a live playlist answer (decided after any wait)."""
    if window.ended:
        return ENDED_PLAYLIST
    return BLOCKING_PLAYLIST if blocking else LIVE_PLAYLIST


# -- playlists -----------------------------------------------------------------


@router.api_route("/spaces/{space_id}/live.m3u8", methods=["GET", "HEAD"])
async def live_playlist(space_id: str, request: Request) -> Response:
    return await _playlist(space_id, request, plain=False)


@router.api_route("/spaces/{space_id}/plain.m3u8", methods=["GET", "HEAD"])
async def plain_playlist(space_id: str, request: Request) -> Response:
    return await _playlist(space_id, request, plain=True)


async def _playlist(space_id: str, request: Request, *, plain: bool) -> Response:
    store = _store(request, space_id)  # validates the id
    query = request.query_params
    directives = parse_blocking_query(
        query.get("_HLS_msn"), query.get("_HLS_part"), query.get("_HLS_skip")
    )
    program = _program(request, space_id)
    if program is None:
        return await _playlist_from_disk(
            request, store, plain=plain, blocking=directives.msn is not None
        )
    window = program.window
    assert window is not None
    settings = _settings(request)
    blocking = False
    if plain:
        directives = parse_blocking_query(None, None, None)
    if directives.msn is not None and not window.closed:
        if window.is_far_future(directives.msn):
            raise BadRequest(
                f"_HLS_msn={directives.msn} is more than two segments past the live edge "
                f"(segment {window.open_msn}); reload the playlist without it."
            )
        position = window.normalize(directives.msn, directives.part)
        await _wait(window, position, settings.blocking_reload_timeout_s)
        blocking = True
    elif window.version == 0:
        # nothing published yet in this run: hold the very first request
        await _wait(window, (window.open_msn, 0), settings.blocking_reload_timeout_s)
    cache = playlist_cache(window, blocking=blocking)
    kind = "plain" if plain else ("ll-skip" if directives.skip else "ll")
    text = window.playlist(kind)
    return _bytes(text.encode(), M3U8, cache, "playlist")


async def _wait(window: LiveWindow, position: tuple[int, int], timeout_s: float) -> None:
    if not await window.wait_for(position, timeout_s):
        metrics.HLS_BLOCKING_TIMEOUTS.inc()
        raise blocking_timeout()


async def _playlist_from_disk(
    request: Request, store: RecordingStore, *, plain: bool, blocking: bool
) -> Response:
    hit = await _manifests.get(store)
    if hit is None:
        raise NotFound("This space is not live and has no recording; check the link.")
    manifest, rendered = hit
    if not manifest.ended and blocking:
        raise ServiceUnavailable(
            "This space is not producing audio on this server right now; try again shortly.",
            retry_after_s=2,
        )
    text = _disk_playlist(_settings(request), manifest, rendered, "plain" if plain else "ll")
    cache = ENDED_PLAYLIST if manifest.ended else LIVE_PLAYLIST
    return _bytes(text.encode(), M3U8, cache, "playlist")


# -- media bytes ---------------------------------------------------------------


@router.api_route("/spaces/{space_id}/init.mp4", methods=["GET", "HEAD"])
async def latest_init(space_id: str, request: Request) -> Response:
    store = _store(request, space_id)
    program = _program(request, space_id)
    if program is not None and program.window is not None:
        window = program.window
        if window.init_segment is None:
            await _wait(window, (window.open_msn, 0), _settings(request).blocking_reload_timeout_s)
        if window.init_segment is not None:
            return _bytes(window.init_segment, MP4, IMMUTABLE, "init")
    hit = await _manifests.get(store)
    if hit is None or not hit[0].epochs:
        raise NotFound("This space has no audio yet; load live.m3u8 first.")
    return await _init_from_disk(store, hit[0].epochs[-1])


@router.api_route("/spaces/{space_id}/init/{name}", methods=["GET", "HEAD"])
async def epoch_init(space_id: str, name: str, request: Request) -> Response:
    store = _store(request, space_id)
    match = _INIT_RE.fullmatch(name)
    if match is None:
        raise NotFound("Init segments are named <epoch>.mp4, as the playlist lists them.")
    epoch = int(match.group(1))
    program = _program(request, space_id)
    if program is not None and program.window is not None:
        window = program.window
        if window.epoch == epoch and window.init_segment is not None:
            return _bytes(window.init_segment, MP4, IMMUTABLE, "init")
    return await _init_from_disk(store, epoch)


async def _init_from_disk(store: RecordingStore, epoch: int) -> Response:
    data = await asyncio.to_thread(store.read_init, epoch)
    if data is None:
        raise NotFound(f"There is no init segment {epoch} for this space.")
    return _bytes(data, MP4, IMMUTABLE, "init")


@router.api_route("/spaces/{space_id}/part/{name}", methods=["GET", "HEAD"])
async def part(space_id: str, name: str, request: Request) -> Response:
    _store(request, space_id)
    match = _PART_RE.fullmatch(name)
    if match is None:
        raise NotFound("Parts are named <msn>.<part>.m4s, as the playlist lists them.")
    msn, index = int(match.group(1)), int(match.group(2))
    program = _program(request, space_id)
    if program is None or program.window is None:
        raise NotFound("Parts exist only near the live edge of a live space; use the segments.")
    window = program.window
    if index >= window.segment_parts:
        raise NotFound(f"Segments have {window.segment_parts} parts; part {index} does not exist.")
    data = window.part(msn, index)
    if data is None and not window.has((msn, index)) and not window.closed:
        if msn > window.open_msn + 1:
            raise NotFound(
                f"Part {msn}.{index} is too far past the live edge; reload the playlist."
            )
        # a preload-hinted part: answer as soon as it exists (shared wake-up)
        await _wait(window, (msn, index), _settings(request).blocking_reload_timeout_s)
        data = window.part(msn, index)
    if data is None:
        raise NotFound(
            f"Part {msn}.{index} is not in the live window; fetch its segment seg/{msn}.m4s."
        )
    return _bytes(data, MP4, IMMUTABLE, "part")


@router.api_route("/spaces/{space_id}/seg/{name}", methods=["GET", "HEAD"])
async def segment(space_id: str, name: str, request: Request) -> Response:
    store = _store(request, space_id)
    match = _SEGMENT_RE.fullmatch(name)
    if match is None:
        raise NotFound("Segments are named <msn>.m4s, as the playlist lists them.")
    msn = int(match.group(1))
    program = _program(request, space_id)
    data = program.window.segment(msn) if program is not None and program.window else None
    if data is None:
        data = await asyncio.to_thread(store.read_segment, msn)
    if data is None:
        raise NotFound(f"Segment {msn} does not exist (yet); reload the playlist.")
    return _bytes(data, MP4, IMMUTABLE, "segment")


# -- progressive stream ----------------------------------------------------------


@router.get("/spaces/{space_id}/live.aac")
async def progressive(space_id: str, request: Request) -> Response:
    _store(request, space_id)
    program = _program(request, space_id)
    if program is None or program.window is None or program.window.closed:
        raise NotFound(
            "This space is not live on this server; once it ends, its recording is at recording.m4a."
        )
    return _ProgressiveResponse(program, program.progressive.subscribe())


PROGRESSIVE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def progressive_head() -> list[tuple[bytes, bytes]]:
    """Headers of the live.aac response: an endless chunked body, so no
    Content-Length (Response adds 0 for no content); the server adds
    Transfer-Encoding."""
    response = Response(content=None, media_type=AAC, headers=PROGRESSIVE_HEADERS)
    return [(k, v) for k, v in response.raw_headers if k != b"content-length"]


class _ProgressiveResponse(Response):
    """Chunked ADTS for one listener. Sends from the listener's own queue; if
    the hub drops the listener (too far behind), the send is cancelled and the
    connection closed, whatever the client is doing."""

    media_type = AAC

    def __init__(self, program: Program, listener: ProgressiveListener) -> None:
        super().__init__(content=None, media_type=AAC, headers=PROGRESSIVE_HEADERS)
        self.raw_headers = progressive_head()
        self.program = program
        self.listener = listener

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        listener = self.listener
        hub = self.program.progressive

        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            while True:
                chunk = await listener.next_chunk()
                if chunk is None:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                metrics.LISTENER_BYTES.labels(kind="progressive").inc(len(chunk))
            if not listener.dropped:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(pump()),
            asyncio.create_task(listener.gone.wait()),
            asyncio.create_task(disconnected()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            hub.unsubscribe(listener)


# -- recording -------------------------------------------------------------------

_build_locks: dict[str, asyncio.Lock] = {}


@router.api_route("/spaces/{space_id}/recording.m4a", methods=["GET", "HEAD"])
async def recording(space_id: str, request: Request) -> Response:
    store = _store(request, space_id)
    program = _program(request, space_id)
    if program is not None and not program.ended:
        raise Conflict(
            "The space is still live: the recording file is ready once the host ends it. Listen live at live.m3u8."
        )
    lock = _build_locks.setdefault(space_id, asyncio.Lock())
    try:
        async with lock:
            # served at once from the segments, whatever the talk's length (issue 12)
            path = await asyncio.to_thread(build_fragmented, store)
    finally:
        if not lock.locked():
            _build_locks.pop(space_id, None)
    size = path.stat().st_size
    metrics.LISTENER_BYTES.labels(kind="recording").inc(size)
    return FileResponse(
        path,
        media_type=MP4,
        filename=f"{space_id}.m4a",
        headers={"Cache-Control": "public, max-age=86400"},
    )
