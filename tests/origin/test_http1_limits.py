"""Issue 10's first layer, in the HTTP/1.1 driver: the head size cap, header,
body and idle timeouts, requests per connection, connections per client
network and in all; abandoned connections keep nothing. Plus the pure
bookkeeping of origin/conn_limits.py."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import resource
import socket
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from tests.live.test_program import feed, small_settings
from tests.origin.http1_helpers import App, driver, port_of, running
from tests.server.test_fastproto import BASE, Conn, request, serve, window_of
from townhall import metrics
from townhall.config import Settings
from townhall.media.signals import tone
from townhall.origin.conn_limits import ConnLimits, network_of, raise_fd_limit, total_cap


def closed(reason: str) -> float:
    return float(metrics.HTTP_CONNECTIONS_CLOSED.labels(reason=reason)._value.get())


def refused(reason: str) -> float:
    return float(metrics.HTTP_CONNECTIONS_REFUSED.labels(reason=reason)._value.get())


# -- pure bookkeeping ----------------------------------------------------------------------


def test_client_networks() -> None:
    assert network_of("10.1.2.3") == network_of("10.1.2.250") == "10.1.2"
    assert network_of("10.1.3.3") != network_of("10.1.2.3")
    assert network_of("::ffff:10.1.2.3") == "10.1.2"
    assert network_of("2001:db8:1:2::1") == network_of("2001:db8:1:2:ffff::9")
    assert network_of("2001:db8:1:3::1") != network_of("2001:db8:1:2::1")
    assert network_of("fe80::1%eth0") == network_of("fe80::2")


def test_caps_per_network_and_in_all() -> None:
    limits = ConnLimits(per_network=2, total=3, trusted_proxies="10.9.0.0/16")
    a1, a2, a3 = (limits.admit("10.0.0.1"), limits.admit("10.0.0.2"), limits.admit("10.0.0.3"))
    assert (a1[0], a2[0], a3[0]) == (None, None, "network")
    assert limits.admit("10.9.1.1")[0] is None  # a trusted proxy: only the total counts
    assert limits.admit("10.0.1.1") == ("total", "")
    assert limits.statistics().open == 3
    limits.release(a1[1])
    assert limits.admit("10.0.0.4")[0] is None
    assert limits.statistics().networks == 1


def test_total_cap_stays_below_the_descriptor_limit() -> None:
    assert total_cap(0, 20000) == 18000
    assert total_cap(50000, 20000) == 18000
    assert total_cap(100, 20000) == 100
    assert total_cap(0, 1024) == 768


def test_raise_fd_limit_to_the_hard_limit() -> None:
    before, now, hard = raise_fd_limit()
    assert before <= now and resource.getrlimit(resource.RLIMIT_NOFILE)[0] == now
    assert now == hard or hard == resource.RLIM_INFINITY


# -- over real sockets -----------------------------------------------------------------------


@pytest.fixture
def app() -> App:
    return App()


async def read_all(conn: Conn, timeout_s: float = 5) -> bytes:
    return await asyncio.wait_for(conn.reader.read(), timeout_s)


async def test_endless_header_is_cut_at_the_cap_while_a_listener_gets_parts(tmp_path: Path) -> None:
    origin, servers = await serve(small_settings(tmp_path, http_max_head_bytes=16384))
    try:
        await feed(origin.program, tone(1000, 1.0))
        window = window_of(servers)
        part = f"{BASE}/part/{window.history[-1].msn}.0.m4s"
        before = closed("head_too_large")
        attacker = await Conn.open(servers.fast_port)
        attacker.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        sent = 0
        legit = await Conn.open(servers.fast_port)
        latencies = []
        with contextlib.suppress(ConnectionError):
            while sent < 50_000_000 and not attacker.reader.at_eof():
                attacker.writer.write(b"a" * 8192)
                sent += 8192
                await attacker.writer.drain()
                if sent % (8192 * 4) == 0:
                    t0 = time.perf_counter()
                    assert (await legit.get(part)).status == 200
                    latencies.append(time.perf_counter() - t0)
                with contextlib.suppress(asyncio.TimeoutError):
                    if await asyncio.wait_for(attacker.reader.read(1), 0.001) == b"H":
                        break
        assert sent < 1_000_000, "the endless header was not cut"
        assert closed("head_too_large") == before + 1
        assert max(latencies, default=0) < 0.5
        t0 = time.perf_counter()
        assert (await legit.get(part)).status == 200 and time.perf_counter() - t0 < 0.5
        await legit.close()
    finally:
        await servers.stop()
        await origin.program.suspend()
        await origin.client.aclose()


async def test_head_over_the_cap_gets_431(app: App, tmp_path: Path) -> None:
    s = driver(app, Settings(data_dir=tmp_path, http_max_head_bytes=2048))
    async with running(s):
        conn = await Conn.open(port_of(s))
        conn.send(request("/hello", extra="X-Big: " + "b" * 4000 + "\r\n"))
        data = await read_all(conn)
        assert data.startswith(b"HTTP/1.1 431 ")
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["status"] == 431
        ok = await Conn.open(port_of(s))  # just under the cap is fine
        assert (await ok.get("/hello", extra="X-Big: " + "b" * 1500 + "\r\n")).status == 200
        await ok.close()
    assert app.calls == 1


async def test_slow_headers_and_slow_bodies_are_timed_out(app: App, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, http_header_timeout_s=0.3, http_body_timeout_s=0.6)
    s = driver(app, settings)
    heads, bodies = closed("header_timeout"), closed("body_timeout")
    async with running(s):
        slow_head = await Conn.open(port_of(s))
        slow_head.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n")
        slow_body = await Conn.open(port_of(s))
        slow_body.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        t0 = time.perf_counter()
        head_answer = await read_all(slow_head)
        head_s = time.perf_counter() - t0
        body_answer = await read_all(slow_body)
        body_s = time.perf_counter() - t0
    assert head_answer.startswith(b"HTTP/1.1 408 ") and 0.25 < head_s < 1.5
    assert body_answer.startswith(b"HTTP/1.1 408 ") and 0.5 < body_s < 2.0
    assert (closed("header_timeout"), closed("body_timeout")) == (heads + 1, bodies + 1)


async def test_four_hundred_idle_connections_are_closed(app: App, tmp_path: Path) -> None:
    s = driver(app, Settings(data_dir=tmp_path, http_keepalive_idle_s=3.0))
    before = closed("idle")
    async with running(s):
        t0 = time.perf_counter()
        conns = [await Conn.open(port_of(s)) for _ in range(400)]
        used = conns[-1]
        assert (await used.get("/hello")).status == 200  # idle after an answer too
        assert time.perf_counter() - t0 < 3.0, "too slow to open 400 connections here"
        assert len(s.server_state.connections) == 400
        ends = await asyncio.gather(*(read_all(c, 10) for c in conns))
        assert all(end == b"" for end in ends)
        assert time.perf_counter() - t0 < 7
        for _ in range(100):
            if not s.server_state.connections:
                break
            await asyncio.sleep(0.01)
        assert not s.server_state.connections
    assert closed("idle") == before + 400


async def test_max_requests_per_connection(app: App, tmp_path: Path) -> None:
    s = driver(app, Settings(data_dir=tmp_path, http_max_requests_per_connection=3))
    async with running(s):
        conn = await Conn.open(port_of(s))
        replies = [await conn.get("/hello") for _ in range(3)]
        assert [b"connection" in r.headers for r in replies] == [False, False, True]
        assert await conn.at_eof()


async def open_from(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def test_per_network_cap_refuses_the_next_connection(app: App, tmp_path: Path) -> None:
    s = driver(app, Settings(data_dir=tmp_path, http_max_connections_per_network=5))
    loop = asyncio.get_running_loop()
    before = refused("network")
    async with running(s):
        port = port_of(s)
        mine = [await open_from(port, f"127.0.0.{i + 2}") for i in range(5)]  # one /24
        while len(s.server_state.connections) < 5:
            await asyncio.sleep(0.01)
        extra = await open_from(port, "127.0.0.9")
        answer = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(extra, 4096), 5):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 5\r\n" in answer
        assert refused("network") == before + 1
        other = await Conn.open(port, local_addr=("127.0.1.2", 0))  # another network
        assert (await other.get("/hello")).status == 200
        mine[0].close()
        await asyncio.sleep(0.1)
        again = await Conn.open(port, local_addr=("127.0.0.20", 0))  # a seat is free again
        assert (await again.get("/hello")).status == 200
        for sock in [*mine[1:], extra]:
            sock.close()
        await other.close()
        await again.close()


async def test_abandoned_connections_release_their_buffers(app: App, tmp_path: Path) -> None:
    s = driver(app, Settings(data_dir=tmp_path, http_max_head_bytes=65536))
    async with running(s):
        conns = [await Conn.open(port_of(s)) for _ in range(200)]
        for conn in conns:  # each leaves 60 kB of an unfinished header behind
            conn.send(b"GET /hello HTTP/1.1\r\nX-Pad: " + b"p" * 60_000)
        await asyncio.sleep(0.2)
        protocols: list[weakref.ref[Any]] = [weakref.ref(p) for p in s.server_state.connections]
        assert len(protocols) == 200
        for conn in conns:
            await conn.close()
        for _ in range(200):
            if not s.server_state.connections:
                break
            await asyncio.sleep(0.01)
        del conn, conns
        gc.collect()
        alive = [ref() for ref in protocols if ref() is not None]
        assert not alive, f"{len(alive)} connections' state outlived them"
        assert s.server_state.connections == set()
