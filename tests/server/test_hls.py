"""The listener-plane origin through HTTP: playlists, parts, blocking reload,
the progressive stream, VOD and the recording after the end, bad names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.live.test_program import SPACE, feed, small_settings
from tests.media.hls_validator import decode_pcm, validate
from townhall import problems
from townhall.config import Settings
from townhall.live.program import Program
from townhall.media.signals import dominant_frequency, tone
from townhall.origin import asgi as hls
from townhall.origin.cors import Cors, CorsMiddleware


class Rooms:
    """The part of RoomRegistry the router uses."""

    def __init__(self) -> None:
        self.rooms: dict[str, Any] = {}

    def get(self, space_id: str) -> Any:
        return self.rooms.get(space_id)

    def listener_source(self, space_id: str) -> Any:
        return getattr(self.rooms.get(space_id), "program", None)


def make_app(settings: Settings) -> tuple[FastAPI, Rooms]:
    app = FastAPI()
    problems.install(app)
    app.include_router(hls.router)
    # as create_app: CORS on every listener answer, problem+json included
    app.add_middleware(CorsMiddleware, cors=Cors.parse(settings.cors_origins))
    rooms = Rooms()
    app.state.settings = settings
    app.state.services = SimpleNamespace(settings=settings, rooms=rooms)
    return app, rooms


class Origin:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app, self.rooms = make_app(settings)
        self.program = Program(SPACE, settings)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://origin"
        )

    async def start(self) -> None:
        await self.program.start()
        self.rooms.rooms[SPACE] = SimpleNamespace(program=self.program)

    async def end(self) -> None:
        """As RoomRegistry.end: forget the room, then finish the program."""
        self.rooms.rooms.pop(SPACE, None)
        await self.program.finish()

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(f"/spaces/{SPACE}/{path}", **kwargs)


@pytest.fixture
def hls_settings(tmp_path: Path) -> Settings:
    return small_settings(tmp_path, blocking_reload_timeout_s=1.0, progressive_max_lag_ms=200)


@pytest.fixture
async def origin(hls_settings: Settings) -> AsyncIterator[Origin]:
    o = Origin(hls_settings)
    await o.start()
    try:
        yield o
    finally:
        await o.program.suspend()
        await o.client.aclose()


async def test_live_playlist_parts_and_segments_decode_to_the_tone(origin: Origin) -> None:
    await feed(origin.program, tone(1000, 3.0))
    response = await origin.get("live.m3u8")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert response.headers["cache-control"] == "public, max-age=1"
    playlist = validate(response.text, expect="ll")
    assert playlist.map_uris == ["init/0.mp4"]
    init = await origin.get("init/0.mp4")
    assert init.headers["content-type"] == "audio/mp4"
    assert "immutable" in init.headers["cache-control"]
    assert init.content == (await origin.get("init.mp4")).content
    segments = [await origin.get(s.uri) for s in playlist.segments]
    assert all(r.status_code == 200 for r in segments)  # old ones come from disk
    samples, _ = decode_pcm(init.content + b"".join(r.content for r in segments))
    assert dominant_frequency(samples[4800:]) == pytest.approx(1000, abs=5)
    parts = [await origin.get(p.uri) for p in playlist.all_parts]
    assert all(r.status_code == 200 for r in parts)
    samples, _ = decode_pcm(init.content + b"".join(r.content for r in parts))
    assert len(samples) == round(sum(p.duration_s for p in playlist.all_parts) * 48000)
    assert dominant_frequency(samples) == pytest.approx(1000, abs=5)
    plain = await origin.get("plain.m3u8")
    validate(plain.text, expect="plain")
    delta = await origin.get("live.m3u8", params={"_HLS_skip": "YES"})
    assert validate(delta.text, expect="ll").last_msn == playlist.last_msn


async def test_blocking_reload_waits_until_the_part_exists(origin: Origin) -> None:
    await feed(origin.program, tone(1000, 1.0))
    window = origin.program.window
    assert window is not None
    msn = window.open_msn
    want = {"_HLS_msn": str(msn + 1), "_HLS_part": "1"}
    request = asyncio.create_task(origin.get("live.m3u8", params=want))
    hinted = asyncio.create_task(origin.get(f"part/{msn + 1}.1.m4s"))
    await asyncio.sleep(0.2)
    assert not request.done() and not hinted.done()
    await feed(origin.program, tone(1000, 1.0))
    response = await request
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=6"
    parsed = validate(response.text, expect="ll")
    assert any(p.uri == f"part/{msn + 1}.1.m4s" for p in parsed.all_parts)
    part_response = await hinted
    assert part_response.status_code == 200
    assert part_response.content[4:8] == b"moof"


async def test_blocking_reload_times_out_with_503_and_retry_after(origin: Origin) -> None:
    await feed(origin.program, tone(1000, 0.5))
    window = origin.program.window
    assert window is not None
    response = await origin.get("live.m3u8", params={"_HLS_msn": str(window.open_msn + 1)})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "not ready yet" in response.json()["detail"]


async def test_far_future_msn_and_bad_directives_are_400(origin: Origin) -> None:
    await feed(origin.program, tone(1000, 0.5))
    window = origin.program.window
    assert window is not None
    response = await origin.get("live.m3u8", params={"_HLS_msn": str(window.open_msn + 3)})
    assert response.status_code == 400
    assert "more than two segments past the live edge" in response.json()["detail"]
    for params in ({"_HLS_msn": "abc"}, {"_HLS_part": "1"}, {"_HLS_msn": "9" * 20}):
        bad = await origin.get("live.m3u8", params=params)
        assert bad.status_code == 400, params
        assert bad.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "path",
    [
        f"/spaces/{SPACE}/seg/..%2Fmanifest.json",
        f"/spaces/{SPACE}/seg/manifest.json",
        f"/spaces/{SPACE}/seg/99999999999999999.m4s",
        f"/spaces/{SPACE}/init/..%2F..%2Fdata.mp4",
        f"/spaces/{SPACE}/part/1.m4s",
        f"/spaces/{SPACE}/part/1.99.m4s",
        f"/spaces/{SPACE}/seg/%2e%2e",
        "/spaces/..%2F..%2Fetc/live.m3u8",
        "/spaces/.../live.m3u8",
        "/spaces/UPPER-case/init.mp4",
        "/spaces/nosuchspace1/live.m3u8",
        "/spaces/nosuchspace1/recording.m4a",
    ],
)
async def test_bad_names_are_refused_with_a_sentence(origin: Origin, path: str) -> None:
    await feed(origin.program, tone(1000, 0.5))
    response = await origin.client.get(path)
    assert response.status_code in (400, 404), response.text
    body = response.json()
    assert body["detail"].endswith(".") and len(body["detail"]) > 20
    assert b'"epochs"' not in response.content  # never the manifest's content


async def test_vod_and_recording_after_the_end_served_from_disk(origin: Origin) -> None:
    await feed(origin.program, tone(1000, 2.0))
    early = await origin.get("recording.m4a")
    assert early.status_code == 409
    assert "still live" in early.json()["detail"]
    await origin.end()
    # the room is gone: everything below comes from the recording directory
    response = await origin.get("live.m3u8")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=86400"
    vod = validate(response.text, expect="vod")
    blocking = await origin.get("live.m3u8", params={"_HLS_msn": "1000"})
    assert blocking.status_code == 200 and "#EXT-X-ENDLIST" in blocking.text
    total_s = sum(s.duration_s for s in vod.segments)
    assert total_s >= 2.0
    m4a = await origin.get("recording.m4a")
    assert m4a.status_code == 200 and m4a.headers["content-type"] == "audio/mp4"
    samples, _ = decode_pcm(m4a.content)
    assert abs(len(samples) - total_s * 48000) < 2
    assert dominant_frequency(samples[4800:-4800]) == pytest.approx(1000, abs=5)
    again = await origin.get("recording.m4a")
    assert again.content == m4a.content  # built once, cached on disk
    plain = await origin.get("plain.m3u8")
    validate(plain.text, expect="vod")
    aac = await origin.get("live.aac")
    assert aac.status_code == 404


async def test_restarted_server_serves_a_suspended_space_without_blocking(
    hls_settings: Settings,
) -> None:
    first = Origin(hls_settings)
    await first.start()
    await feed(first.program, tone(1000, 1.0))
    await first.program.suspend()
    second = Origin(hls_settings)  # a new process: no room for the space yet
    try:
        response = await second.get("live.m3u8")
        assert response.status_code == 200
        validate(response.text, expect="plain")
        blocking = await second.get("live.m3u8", params={"_HLS_msn": "3"})
        assert blocking.status_code == 503 and "Retry-After" in blocking.headers
    finally:
        await first.client.aclose()
        await second.client.aclose()


# -- the progressive stream, driven at the ASGI level -----------------------------


def asgi_get(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"origin")],
        "client": ("127.0.0.1", 50000),
        "server": ("origin", 80),
    }


async def test_progressive_stream_slow_listener_dropped_fast_one_decodes(
    origin: Origin,
) -> None:
    path = f"/spaces/{SPACE}/live.aac"
    disconnect = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    fast_body: list[bytes] = []
    fast_start: list[dict[str, Any]] = []

    async def fast_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            fast_start.append(message)
        else:
            fast_body.append(message.get("body", b""))

    async def slow_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # a client that never reads

    app: Callable[..., Awaitable[None]] = origin.app
    slow = asyncio.create_task(app(asgi_get(path), receive, slow_send))
    fast = asyncio.create_task(app(asgi_get(path), receive, fast_send))
    while origin.program.progressive.statistics().listeners < 2:
        await asyncio.sleep(0.01)
    await feed(origin.program, tone(1000, 1.5), batch=2)
    await asyncio.wait_for(slow, timeout=5)  # dropped: its response was cut off
    assert origin.program.progressive.statistics().listeners == 1
    await origin.program.finish()
    await asyncio.wait_for(fast, timeout=5)  # the end of the space ends the stream
    assert fast_start[0]["status"] == 200
    headers = dict(fast_start[0]["headers"])
    assert headers[b"content-type"] == b"audio/aac"
    data = b"".join(fast_body)
    samples, rate = decode_pcm(data, format="aac")
    assert rate == 48000
    assert len(samples) >= 1.4 * 48000  # the fast listener lost nothing
    assert dominant_frequency(samples[4800:-4800]) == pytest.approx(1000, abs=5)
