"""The fast path through real HTTP: one live program served by two uvicorn
servers on this test's loop, the reference (the app's routes, uvicorn's own
httptools protocol) and townhall's HTTP/1.1 driver (origin/http1.py); raw sockets compare their bytes and drive keep-alive,
pipelining, HEAD, Connection: close, parked requests and disconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.conftest import free_port
from tests.live.test_program import SPACE, feed, small_settings
from tests.server.test_hls import Origin
from townhall import metrics
from townhall.config import Settings
from townhall.media.signals import tone
from townhall.origin.http1 import COUNTS, protocol_for
from townhall.origin.rules import FastPath, programs_of

BASE = f"/spaces/{SPACE}"


@dataclass
class Reply:
    status: int
    head: bytes  # status line and headers, without the Date line
    headers: dict[bytes, bytes]
    body: bytes


class Conn:
    """One raw HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, **kwargs: Any) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, **kwargs)
        return cls(reader, writer)

    def send(self, *requests: bytes) -> None:
        self.writer.write(b"".join(requests))

    async def reply(self, *, head_only: bool = False) -> Reply:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        head = b"\r\n".join(line for line in lines if not line.startswith(b"date: "))
        body = b""
        if head_only:
            pass
        elif b"content-length" in headers:
            body = await self.reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                body += (await self.reader.readexactly(size + 2))[:-2]
                if size == 0:
                    break
        return Reply(int(lines[0].split()[1]), head, headers, body)

    async def get(self, path: str, *, method: str = "GET", extra: str = "") -> Reply:
        self.send(request(path, method=method, extra=extra))
        return await self.reply(head_only=method == "HEAD")

    async def at_eof(self) -> bool:
        return await self.reader.read() == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def request(path: str, *, method: str = "GET", extra: str = "", version: str = "1.1") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: t\r\n{extra}\r\n".encode()


class Servers:
    """The reference server and the fast one, over the same origin."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.fast_path = FastPath(origin.settings, programs_of(origin.app))
        self.reference = self._server("httptools")
        self.fast = self._server(protocol_for(self.fast_path, origin.settings))
        self.tasks: list[asyncio.Task[None]] = []

    def _server(self, http: Any) -> uvicorn.Server:
        config = uvicorn.Config(
            self.origin.app,
            host="127.0.0.1",
            port=free_port(),
            log_level="warning",
            lifespan="off",
            http=http,
        )
        return uvicorn.Server(config)

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(s.serve()) for s in (self.reference, self.fast)]
        while not (self.reference.started and self.fast.started):
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        for server in (self.reference, self.fast):
            server.should_exit = True
        await asyncio.gather(*self.tasks)

    @property
    def fast_port(self) -> int:
        return int(self.fast.config.port)

    @property
    def reference_port(self) -> int:
        return int(self.reference.config.port)


async def serve(settings: Settings) -> tuple[Origin, Servers]:
    origin = Origin(settings)
    await origin.start()
    servers = Servers(origin)
    await servers.start()
    return origin, servers


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Servers]:
    origin, both = await serve(small_settings(tmp_path, blocking_reload_timeout_s=1.0))
    try:
        yield both
    finally:
        await both.stop()
        await origin.program.suspend()
        await origin.client.aclose()


def fast_answers() -> float:
    COUNTS.flush()
    return sum(
        sample.value
        for family in metrics.FASTPATH_RESPONSES.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def window_of(servers: Servers) -> Any:
    window = servers.origin.program.window
    assert window is not None
    return window


# -- same bytes ------------------------------------------------------------------------------


async def test_fast_and_app_paths_send_the_same_bytes(servers: Servers) -> None:
    await feed(servers.origin.program, tone(1000, 2.0))
    window = window_of(servers)
    last = window.history[-1].msn
    hot = [
        ("GET", "live.m3u8"),
        ("GET", "live.m3u8?_HLS_skip=YES"),
        ("GET", "plain.m3u8"),
        ("GET", f"live.m3u8?_HLS_msn={last}&_HLS_part=1"),  # blocking, already there
        ("GET", f"live.m3u8?_HLS_msn={last}&_HLS_part=1&_HLS_skip=v2"),
        ("GET", f"part/{last}.0.m4s"),
        ("GET", f"part/{window.open_msn}.0.m4s"),
        ("GET", f"seg/{last}.m4s"),
        ("GET", "init.mp4"),
        ("GET", "init/0.mp4"),
        ("HEAD", f"part/{last}.1.m4s"),
        ("HEAD", "live.m3u8"),
    ]
    cold = [
        ("GET", "live.m3u8?_HLS_msn=abc"),  # 400 from the app
        ("GET", f"live.m3u8?_HLS_msn={window.open_msn + 3}"),  # far future: 400
        ("GET", f"part/{last}.9.m4s"),  # 404
        ("GET", "part/0.0.m4s"),  # out of the window: 404
        ("GET", "seg/0.m4s"),  # from disk
        ("GET", "init/7.mp4"),  # 404
        ("GET", "recording.m4a"),  # 409 while live
        ("GET", "seg/%30.m4s"),  # percent-encoded: the app decides
        ("HEAD", "live.aac"),  # 405
    ]
    reference = await Conn.open(servers.reference_port)
    fast = await Conn.open(servers.fast_port)
    before = fast_answers()
    for method, path in hot + cold:
        want = await reference.get(f"{BASE}/{path}", method=method)
        got = await fast.get(f"{BASE}/{path}", method=method)
        assert (got.head, got.body) == (want.head, want.body), (method, path)
    assert fast_answers() - before == len(hot)
    statuses = [(await fast.get(f"{BASE}/{p}", method=m)).status for m, p in cold]
    assert statuses == [400, 400, 404, 404, 200, 404, 409, 200, 405]
    await reference.close()
    await fast.close()


async def test_vod_after_the_end_is_the_apps_on_both(servers: Servers) -> None:
    await feed(servers.origin.program, tone(1000, 1.0))
    await servers.origin.end()
    for path in ("live.m3u8", "plain.m3u8", "seg/0.m4s", "init.mp4", "live.aac"):
        want = await (await Conn.open(servers.reference_port)).get(f"{BASE}/{path}")
        got = await (await Conn.open(servers.fast_port)).get(f"{BASE}/{path}")
        assert (got.head, got.body) == (want.head, want.body), path
    vod = await (await Conn.open(servers.fast_port)).get(f"{BASE}/live.m3u8")
    assert b"#EXT-X-ENDLIST" in vod.body


# -- one connection -------------------------------------------------------------------------------


async def test_keep_alive_serves_many_requests_on_one_connection(servers: Servers) -> None:
    await feed(servers.origin.program, tone(1000, 1.0))
    window = window_of(servers)
    part = window.part(window.history[-1].msn, 0)
    conn = await Conn.open(servers.fast_port)
    for i in range(300):
        if i % 3 == 0:
            reply = await conn.get(f"{BASE}/part/{window.history[-1].msn}.0.m4s")
            assert reply.status == 200 and reply.body == part
        elif i % 3 == 1:
            reply = await conn.get(f"{BASE}/live.m3u8")
            assert reply.status == 200 and reply.body.startswith(b"#EXTM3U")
        else:
            reply = await conn.get(f"{BASE}/live.m3u8", method="HEAD")
            assert reply.status == 200 and int(reply.headers[b"content-length"]) > 100
        assert b"connection" not in reply.headers
    await conn.close()


async def test_pipelined_requests_are_answered_in_order(servers: Servers) -> None:
    await feed(servers.origin.program, tone(1000, 1.0))
    window = window_of(servers)
    msn = window.open_msn
    conn = await Conn.open(servers.fast_port)
    conn.send(
        request(f"{BASE}/live.m3u8?_HLS_msn={msn + 1}&_HLS_part=0"),  # parks
        request(f"{BASE}/part/{msn - 1}.0.m4s"),  # fast, but behind a parked one
        request(f"{BASE}/recording.m4a"),  # the app's 409
        request(f"{BASE}/part/{msn - 1}.1.m4s", method="HEAD"),
    )
    await asyncio.sleep(0.1)
    await feed(servers.origin.program, tone(1000, 1.0))
    blocking = await conn.reply()
    assert blocking.status == 200 and f"part/{msn + 1}.0.m4s".encode() in blocking.body
    assert blocking.headers[b"cache-control"] == b"public, max-age=6"
    part = await conn.reply()
    assert part.status == 200 and part.body == window.part(msn - 1, 0)
    conflict = await conn.reply()
    assert conflict.status == 409 and b"still live" in conflict.body
    head = await conn.reply(head_only=True)
    assert head.status == 200 and head.headers[b"content-type"] == b"audio/mp4"
    again = await conn.get(f"{BASE}/seg/{msn - 1}.m4s")  # and the connection goes on
    assert again.status == 200
    await conn.close()


async def test_connection_close_and_http_1_0_close_after_the_answer(servers: Servers) -> None:
    await feed(servers.origin.program, tone(1000, 1.0))
    path = f"{BASE}/part/{window_of(servers).history[-1].msn}.0.m4s"
    for port in (servers.reference_port, servers.fast_port):
        conn = await Conn.open(port)
        reply = await conn.get(path, extra="Connection: close\r\n")
        assert reply.status == 200 and reply.headers[b"connection"] == b"close"
        assert await conn.at_eof()
        conn = await Conn.open(port)
        conn.send(request(path, version="1.0"))
        reply = await conn.reply()
        assert reply.status == 200 and await conn.at_eof()
        if port == servers.fast_port:  # (uvicorn's own says so only from 0.5x on)
            assert reply.headers[b"connection"] == b"close"
        conn = await Conn.open(port)
        reply = await conn.get(path, method="HEAD", extra="Connection: close\r\n")
        assert reply.status == 200 and await conn.at_eof()


# -- parked requests -------------------------------------------------------------------------------


async def test_blocking_reload_answered_on_publish_then_503_after_the_timeout(
    servers: Servers,
) -> None:
    await feed(servers.origin.program, tone(1000, 0.5))
    window = window_of(servers)
    msn = window.open_msn
    conn = await Conn.open(servers.fast_port)
    conn.send(request(f"{BASE}/part/{msn + 1}.1.m4s"))  # a preload-hinted part
    pending = asyncio.create_task(conn.reply())
    await asyncio.sleep(0.2)
    assert not pending.done() and window.statistics().waiting == 1
    await feed(servers.origin.program, tone(1000, 1.0))
    hinted = await pending
    assert hinted.status == 200 and hinted.body == window.part(msn + 1, 1)
    # nothing is published any more: the same 503 as the app's after the timeout
    path = f"{BASE}/live.m3u8?_HLS_msn={window.open_msn + 1}"
    replies = await asyncio.gather(
        (await Conn.open(servers.reference_port)).get(path),
        conn.get(path),
    )
    want, got = replies
    assert got.status == 503 and got.headers[b"retry-after"] == b"1"
    assert b"not ready yet" in got.body
    assert (got.head, got.body) == (want.head, want.body)
    assert window.statistics().waiting == 0
    await conn.close()


async def test_client_gone_while_parked_leaks_nothing(servers: Servers) -> None:
    await feed(servers.origin.program, tone(1000, 0.5))
    window = window_of(servers)
    before = metrics.HLS_BLOCKING_WAITERS._value.get()
    path = f"{BASE}/live.m3u8?_HLS_msn={window.open_msn + 1}"
    conns = [await Conn.open(servers.fast_port) for _ in range(20)]
    for conn in conns:
        conn.send(request(path))
    while window.statistics().waiting < 20:
        await asyncio.sleep(0.01)
    connections = servers.fast.server_state.connections
    assert len(connections) == 20
    for conn in conns:
        await conn.close()
    await feed(servers.origin.program, tone(1000, 2.0))  # the wake-up writes to closed sockets
    for _ in range(200):
        if not connections:
            break
        await asyncio.sleep(0.01)
    assert not connections
    assert window.statistics().waiting == 0
    assert metrics.HLS_BLOCKING_WAITERS._value.get() == before
    fresh = await Conn.open(servers.fast_port)
    assert (await fresh.get(f"{BASE}/live.m3u8")).status == 200
    await fresh.close()


@pytest.mark.slow
async def test_a_thousand_parked_requests_answered_by_one_publish(servers: Servers) -> None:
    await feed(servers.origin.program, tone(1000, 0.5))
    window = window_of(servers)
    msn = window.open_msn
    path = f"{BASE}/live.m3u8?_HLS_msn={msn + 1}&_HLS_part=0"
    conns = [await Conn.open(servers.fast_port) for _ in range(1000)]
    for conn in conns:
        conn.send(request(path))
    while window.statistics().waiting < 1000:
        await asyncio.sleep(0.01)
    assert list(window._waiters) == [(msn + 1, 0)]  # one entry, one timer, for all
    turns = servers.origin.program.spreader.statistics().turns
    version = window.version
    await feed(servers.origin.program, tone(1000, 1.0))
    replies = await asyncio.gather(*(conn.reply() for conn in conns))
    assert {r.status for r in replies} == {200}
    # each answer is the playlist of its moment (the feed went on publishing),
    # rendered once per version, all with the awaited part
    assert len({r.body for r in replies}) <= 1 + window.version - version
    assert all(f"part/{msn + 1}.0.m4s".encode() in r.body for r in replies)
    # answered in slices of listener_wake_batch, the loop free between them
    batch = servers.origin.settings.listener_wake_batch
    assert servers.origin.program.spreader.statistics().turns - turns >= 1000 // batch
    await asyncio.gather(*(conn.close() for conn in conns))
