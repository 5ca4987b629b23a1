"""The ASGI driver of the listener rules: the app's routes under
``/spaces/{space_id}/`` (outside ``/api/``).

URIs (relative in the playlists)::

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

What each request gets is decided by ``origin/rules.py``; this module only
performs the answer: it awaits a ``Wait``, reads what ``FromDisk`` names (in a
thread), subscribes a ``Stream`` listener and raises a ``Problem``'s error for
the app's problem+json handler. The HTTP/1.1 driver asks the same rules and
writes the answers it can itself, so both send the same bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, Response
from starlette.types import Receive, Scope, Send

from townhall import metrics
from townhall.config import Settings
from townhall.errors import NotFound, ServiceUnavailable
from townhall.live.program import Program
from townhall.origin.answers import (
    AAC,
    CORS_HEADERS,
    MP4,
    PROGRESSIVE_HEADERS,
    Answer,
    FromDisk,
    Problem,
    Rendered,
    Stream,
    Wait,
    progressive_head,
)
from townhall.origin.app_hooks import limit_of, talk_ended_of
from townhall.origin.fanout import ProgressiveHub, ProgressiveListener
from townhall.origin.follower import ListenerSource
from townhall.origin.gate import gate_of
from townhall.origin.rules import (
    FastPath,
    disk_media,
    disk_playlist,
    latest_epoch,
    programs_of,
)
from townhall.store.m4a import build_fragmented
from townhall.store.recordings import Manifest, RecordingNotFinal, RecordingStore, served_copy

router = APIRouter(include_in_schema=False)

_ROUTE_METHODS = ["GET", "HEAD"]


@router.api_route("/spaces/{space_id}/live.m3u8", methods=_ROUTE_METHODS)
@router.api_route("/spaces/{space_id}/plain.m3u8", methods=_ROUTE_METHODS)
@router.api_route("/spaces/{space_id}/init.mp4", methods=_ROUTE_METHODS)
@router.api_route("/spaces/{space_id}/init/{name}", methods=_ROUTE_METHODS)
@router.api_route("/spaces/{space_id}/part/{name}", methods=_ROUTE_METHODS)
@router.api_route("/spaces/{space_id}/seg/{name}", methods=_ROUTE_METHODS)
@router.api_route("/spaces/{space_id}/recording.m4a", methods=_ROUTE_METHODS)
@router.get("/spaces/{space_id}/live.aac")
async def listener(request: Request) -> Response:
    """Every listener URL: the rules' answer, performed. A recording asked for
    after the host ended the talk, while this node's copy has not heard the
    end yet (a follower a moment behind), waits for it
    (``recording_final_wait_s``), then 503 with Retry-After."""
    rules = _rules(request)
    waiting_until: float | None = None
    while True:
        try:
            return await _perform(request, rules)
        except RecordingNotFinal:
            now = time.monotonic()
            if waiting_until is None:
                if not await _talk_ended(request)(request.path_params["space_id"]):
                    raise  # live: 409, listen live
                waiting_until = now + _settings(request).recording_final_wait_s
            if now >= waiting_until:
                raise ServiceUnavailable(
                    "The talk has ended, and this server is still writing the last of its "
                    "recording. Try again in a few seconds.",
                    retry_after_s=2,
                ) from None
            await asyncio.sleep(_FINAL_POLL_S)


async def _perform(request: Request, rules: FastPath) -> Response:
    path = request.url.path
    cookie = request.headers.get("cookie")
    answer = rules.answer(
        request.method.encode(),
        path.encode(),
        request.scope.get("query_string"),
        None if cookie is None else cookie.encode("latin-1"),
        (request.client.host if request.client else None, request.scope["headers"]),
    )
    for _ in range(3):  # a Wait, then what follows it, then perhaps a disk read
        if isinstance(answer, Rendered):
            return _RenderedResponse(answer)
        if isinstance(answer, Problem):
            raise answer.error
        if isinstance(answer, Wait):
            if not await answer.window.wait_for(answer.position, answer.timeout_s):
                return _RenderedResponse(answer.timeout())
            answer = answer.then()
        elif isinstance(answer, FromDisk):
            if answer.what == "recording":
                return await _recording(_settings(request), answer.space_id)
            answer = await _read(_settings(request), answer, _rules(request).programs)
        elif isinstance(answer, Stream):
            return _ProgressiveResponse(answer.hub, answer.hub.subscribe())
        else:
            break
    raise NotFound("There is nothing at this address; check the link.")


_FINAL_POLL_S = 0.05


def _talk_ended(request: Request) -> Callable[[str], Awaitable[bool]]:
    state = request.app.state
    ended: Callable[[str], Awaitable[bool]] | None = getattr(state, "talk_ended", None)
    if ended is None:
        ended = state.talk_ended = talk_ended_of(request.app)
    return ended


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _rules(request: Request) -> FastPath:
    """One FastPath per app (made on first use, after the lifespan started)."""
    state = request.app.state
    rules: FastPath | None = getattr(state, "listener_rules", None)
    if rules is None:
        rules = state.listener_rules = FastPath(
            _settings(request),
            programs_of(request.app),
            gate=gate_of(request.app),
            playlist_limit=limit_of(request.app),
        )
    return rules


class _RenderedResponse(Response):
    """A rendered answer as a Starlette response (the same header lines)."""

    def __init__(self, rendered: Rendered) -> None:
        self.status_code = rendered.status
        self.body = rendered.body
        self.background = None
        self.raw_headers = rendered.headers()
        if rendered.kind != "problem":
            metrics.LISTENER_BYTES.labels(kind=rendered.kind).inc(len(rendered.body))


# -- disk ----------------------------------------------------------------------------


class _ManifestCache:
    """Recently read manifests of spaces not running here, keyed by mtime, with
    the playlists rendered from each."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[int, Manifest, dict[str, Rendered]]] = OrderedDict()

    async def get(self, store: RecordingStore) -> tuple[Manifest, dict[str, Rendered]] | None:
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


async def _read(
    settings: Settings, want: FromDisk, programs: Callable[[str], ListenerSource | None]
) -> Answer:
    program = programs(want.space_id)
    recorder = program.recorder if isinstance(program, Program) else None
    if recorder is not None and want.what in ("segment", "init"):
        held = recorder.held(want.what, want.number)  # not on disk yet: from memory
        if held is not None:
            return disk_media(want, held)
    # this node's copy, or a more complete one on this machine (HTTP workers)
    store = await served_copy(settings.recordings_dir, settings.recording_copy_dirs, want.space_id)
    if want.what == "playlist":
        return disk_playlist(settings, want, await _manifests.get(store))
    if want.what == "segment":
        return disk_media(want, await asyncio.to_thread(store.read_segment, want.number))
    if want.what == "latest-init":
        hit = await _manifests.get(store)
        epoch = latest_epoch(hit[0] if hit is not None else None)
        if isinstance(epoch, Problem):
            return epoch
        want = FromDisk("init", want.space_id, epoch)
    return disk_media(want, await asyncio.to_thread(store.read_init, want.number))


# -- progressive stream ----------------------------------------------------------


class _ProgressiveResponse(Response):
    """Chunked ADTS for one listener. Sends from the listener's own queue; if
    the hub drops the listener (too far behind), the send is cancelled and the
    connection closed, whatever the client is doing."""

    media_type = AAC

    def __init__(self, hub: ProgressiveHub, listener: ProgressiveListener) -> None:
        super().__init__(content=None, media_type=AAC, headers=PROGRESSIVE_HEADERS)
        self.raw_headers = progressive_head()
        self.hub = hub
        self.listener = listener

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        listener = self.listener
        hub = self.hub

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


async def _recording(settings: Settings, space_id: str) -> Response:
    store = await served_copy(settings.recordings_dir, settings.recording_copy_dirs, space_id)
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
        headers={"Cache-Control": "public, max-age=86400", **CORS_HEADERS},
    )
