"""The app path through townhall's HTTP/1.1 driver, over real sockets: request
bodies (Content-Length and chunked), 413, Expect: 100-continue, keep-alive,
pipelining, HEAD, streaming answers, a client gone mid-request, app errors,
upgrades and malformed requests; and the same bytes as uvicorn's own protocol
for what both answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.origin.http1_helpers import App, driver, port_of, running, server
from tests.server.test_fastproto import Conn, request
from townhall.config import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
async def port(app: App, tmp_path: Path) -> AsyncIterator[int]:
    s = driver(app, Settings(data_dir=tmp_path, max_body_bytes=4096))
    async with running(s):
        yield port_of(s)


def post(path: str, body: bytes, *, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


def chunked(path: str, pieces: list[bytes]) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    return head + b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def test_post_bodies_with_length_and_chunked_on_one_connection(port: int) -> None:
    conn = await Conn.open(port)
    conn.send(post("/echo", b"hello driver"))
    reply = await conn.reply()
    assert (reply.status, reply.body) == (200, b"hello driver")
    assert reply.headers[b"x-method"] == b"POST" and reply.headers[b"content-type"] == b"text/plain"
    pieces = [b"a" * 1000, b"b" * 7, b"c" * 2000]
    conn.send(chunked("/sha", pieces))
    reply = await conn.reply()
    assert reply.body == hashlib.sha256(b"".join(pieces)).hexdigest().encode()
    # a body sent in slow pieces is read as it comes
    conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nabc")
    await asyncio.sleep(0.05)
    conn.send(b"def")
    assert (await conn.reply()).body == b"abcdef"
    assert (await conn.get("/hello")).status == 200  # and the connection goes on
    await conn.close()


async def test_body_over_the_limit_is_refused_413_before_the_app(app: App, port: int) -> None:
    conn = await Conn.open(port)
    conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
    reply = await conn.reply()
    assert reply.status == 413 and reply.headers[b"content-type"] == b"application/problem+json"
    assert "smaller body" in json.loads(reply.body)["detail"]
    assert reply.headers[b"connection"] == b"close" and await conn.at_eof()
    assert app.calls == 0
    # chunked: counted as it comes; the app had started reading, the driver answers
    conn = await Conn.open(port)
    conn.send(chunked("/sha", [b"x" * 3000, b"y" * 3000]))
    reply = await conn.reply()
    assert reply.status == 413 and await conn.at_eof()


async def test_expect_100_continue_is_answered_before_the_body(port: int) -> None:
    conn = await Conn.open(port)
    conn.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.send(b"ping")
    assert (await conn.reply()).body == b"ping"
    await conn.close()


async def test_pipelined_requests_answered_in_order(port: int) -> None:
    conn = await Conn.open(port)
    conn.send(
        post("/echo", b"first"),
        request("/stream"),
        request("/hello", method="HEAD"),
        chunked("/echo", [b"fourth"]),
        request("/missing"),
    )
    assert (await conn.reply()).body == b"first"
    stream = await conn.reply()
    assert stream.headers[b"transfer-encoding"] == b"chunked"
    assert stream.body == b"".join(b"piece %d\n" % i for i in range(5))
    head = await conn.reply(head_only=True)
    assert head.status == 200 and head.headers[b"content-length"] == b"6"
    assert (await conn.reply()).body == b"fourth"
    assert (await conn.reply()).status == 404
    assert (await conn.get("/hello")).body == b"hello\n"
    await conn.close()


async def test_head_has_no_body_and_keep_alive_goes_on(port: int) -> None:
    conn = await Conn.open(port)
    for _ in range(3):
        reply = await conn.get("/hello", method="HEAD")
        assert reply.status == 200 and reply.headers[b"content-length"] == b"6"
    head = await conn.get("/stream", method="HEAD")
    assert b"transfer-encoding" not in head.headers  # no body: no framing
    reply = await conn.get("/hello")
    assert reply.body == b"hello\n"  # nothing stray was left in between
    await conn.close()


async def test_client_gone_mid_request_the_app_hears_disconnect(app: App, port: int) -> None:
    conn = await Conn.open(port)
    conn.send(b"POST /hold HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\npartial")
    await asyncio.wait_for(app.held.wait(), 5)
    await conn.close()
    for _ in range(100):
        if app.disconnects:
            break
        await asyncio.sleep(0.02)
    assert app.disconnects == 1


async def test_app_errors(port: int) -> None:
    conn = await Conn.open(port)
    reply = await conn.get("/raise")
    assert reply.status == 500 and reply.headers[b"content-type"] == b"application/problem+json"
    problem = json.loads(reply.body)
    assert (
        problem["status"] == 500
        and problem["instance"] == "/raise"
        and "try again" in problem["detail"]
    )
    assert await conn.at_eof()
    conn = await Conn.open(port)
    conn.send(request("/raise-after"))
    head = await conn.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert await conn.reader.read() == b"12345"  # cut: closed mid-answer


async def test_scope_path_decoded_raw_path_kept(port: int) -> None:
    conn = await Conn.open(port)
    reply = await conn.get("/sc%6fpe?a=%20b")
    assert reply.body == b"/scope|b'/sc%6fpe'|b'a=%20b'|1.1|127.0.0.1|http"
    conn.send(request("/scope", version="1.0"))
    reply = await conn.reply()
    assert reply.body.split(b"|")[3] == b"1.0" and reply.headers[b"connection"] == b"close"


async def test_upgrade_and_malformed_requests_get_a_problem_and_close(port: int) -> None:
    conn = await Conn.open(port)
    conn.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    reply = await conn.reply()
    assert reply.status == 501 and "WebSocket" in json.loads(reply.body)["detail"]
    assert await conn.at_eof()
    conn = await Conn.open(port)
    conn.send(b"GET /hello HTTP/1.1\r\nHost t\r\n\r\n")
    reply = await conn.reply()
    assert reply.status == 400 and reply.headers[b"content-type"] == b"application/problem+json"
    assert await conn.at_eof()


async def test_same_bytes_as_uvicorns_own_protocol(app: App, tmp_path: Path) -> None:
    ours = driver(app, Settings(data_dir=tmp_path))
    theirs = server(app, "httptools")
    requests = [
        post("/echo", b"same bytes"),
        chunked("/sha", [b"1", b"22", b"333"]),
        request("/stream"),
        request("/hello", method="HEAD"),
        request("/stream", method="HEAD"),
        request("/missing"),
        request("/hello", extra="Connection: close\r\n"),
    ]
    async with running(ours, theirs):
        for raw in requests:
            got, want = b"", b""
            for port in (port_of(ours), port_of(theirs)):
                conn = await Conn.open(port)
                conn.send(raw)
                await asyncio.sleep(0.05)
                conn.send(request("/hello", extra="Connection: close\r\n"))
                data = re.sub(
                    rb"date: [^\r]*\r\n", b"", await asyncio.wait_for(conn.reader.read(), 5)
                )
                got, want = want, data
            assert got == want, raw


async def test_graceful_shutdown_closes_idle_connections(app: App, tmp_path: Path) -> None:
    s = driver(app, Settings(data_dir=tmp_path))
    async with running(s):
        conn = await Conn.open(port_of(s))
        assert (await conn.get("/hello")).status == 200
        connections = s.server_state.connections
        assert len(connections) == 1
        s.should_exit = True
        assert await asyncio.wait_for(conn.at_eof(), 5)
    assert not connections


def test_no_uvicorn_internals_in_src() -> None:
    for path in (ROOT / "src").rglob("*.py"):
        text = path.read_text()
        assert "uvicorn.protocols" not in text, path
        assert not re.search(r"uvicorn\.\w+\._", text), path
