"""A connection that ignores Retry-After is not read until the wait is over
(origin/retry_penalty.py in the HTTP/1.1 driver); one that waits as told is
never paused."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.origin.http1_helpers import driver, port_of, running
from tests.server.test_fastproto import Conn, request
from townhall import metrics
from townhall.config import Settings
from townhall.origin.answers import Rendered, header_lines, retry_after_of
from townhall.origin.retry_penalty import RetryPenalty


def pauses() -> float:
    return float(metrics.HTTP_REFUSED_PAUSES._value.get())


# -- pure ------------------------------------------------------------------------------------


def test_a_request_sent_during_a_wait_pauses_and_each_more_doubles() -> None:
    p = RetryPenalty(max_s=5.0)
    assert p.refused(started_s=0.0, now_s=0.0, retry_after_s=1.0) == 0.0  # told to wait to 1.0
    assert p.refused(started_s=0.1, now_s=0.1, retry_after_s=1.0) == pytest.approx(1.0)
    # the requests read before the pause were sent during a wait too
    assert p.refused(started_s=0.1, now_s=1.1, retry_after_s=1.0) == pytest.approx(2.0)
    assert p.refused(started_s=0.1, now_s=3.1, retry_after_s=1.0) == pytest.approx(4.0)
    assert p.refused(started_s=0.1, now_s=7.1, retry_after_s=1.0) == pytest.approx(5.0)  # max_s
    # answered without a refusal, but sent during the wait: the count stays
    p.answered(started_s=0.2)
    assert p.strikes == 4


def test_a_client_that_waits_is_never_paused() -> None:
    p = RetryPenalty(max_s=30.0)
    now = 0.0
    for _ in range(5):
        assert p.refused(started_s=now, now_s=now, retry_after_s=2.0) == 0.0
        now += 2.0  # it waits what it was told
    assert p.strikes == 0
    assert p.refused(started_s=now + 0.5, now_s=now + 0.5, retry_after_s=2.0) == 0.0
    assert p.refused(started_s=now + 1.0, now_s=now + 1.0, retry_after_s=2.0) > 0  # it did not
    # it waits, is refused again (not paused), ignores that one too: the pause doubled
    assert p.refused(started_s=now + 10.0, now_s=now + 10.0, retry_after_s=2.0) == 0.0
    assert p.refused(started_s=now + 10.1, now_s=now + 10.1, retry_after_s=2.0) == pytest.approx(
        4.0
    )
    p.answered(started_s=now + 20.0)  # then it waited and succeeded: the count starts over
    assert p.strikes == 0


def test_a_pause_is_stretched_by_up_to_half_at_random() -> None:
    p = RetryPenalty(max_s=30.0)
    p.refused(0.0, 0.0, 2.0)
    assert p.refused(0.1, 0.1, 2.0, spread=0.0) == pytest.approx(2.0)
    q = RetryPenalty(max_s=30.0)
    q.refused(0.0, 0.0, 2.0)
    assert q.refused(0.1, 0.1, 2.0, spread=0.99) == pytest.approx(2.99)
    r = RetryPenalty(max_s=3.0)
    r.refused(0.0, 0.0, 2.0)
    r.refused(0.1, 0.1, 2.0)
    assert r.refused(0.1, 2.1, 2.0, spread=0.99) == pytest.approx(3.0)  # never past max_s


def test_max_zero_never_pauses() -> None:
    p = RetryPenalty(max_s=0.0)
    assert [p.refused(0.0, 0.0, 1.0) for _ in range(4)] == [0.0] * 4


def test_rendered_429_carries_its_retry_after() -> None:
    head = header_lines([(b"Content-Type", b"application/problem+json"), (b"Retry-After", b"3")])
    assert Rendered(429, head, b"{}", "problem").retry_after_s == 3.0
    assert Rendered(503, head, b"{}", "problem").retry_after_s == 0.0  # only a 429 pauses
    assert Rendered(429, b"content-type: x\r\n", b"", "api").retry_after_s == 0.0
    assert retry_after_of(b"x-retry-after: 9\r\nretry-after: 2\r\n") == 2.0
    assert retry_after_of(b"x-retry-after: 9\r\n") == 0.0
    assert retry_after_of(b"retry-after: soon\r\n") == 0.0


# -- in the driver -------------------------------------------------------------------------------


class Busy:
    """/busy: 429 with Retry-After: 1; /denied: 401; anything else: 200."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            return
        self.calls += 1
        busy = scope["path"] == "/busy"
        status = 429 if busy else 401 if scope["path"] == "/denied" else 200
        body = b"busy\n" if busy else b"ok\n"
        headers = [(b"content-length", str(len(body)).encode())]
        if busy:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _pipelined(port: int, n: int, path: str = "/busy") -> list[float]:
    """Send ``n`` requests for ``path`` at once; the seconds until each answer."""
    conn = await Conn.open(port)
    started = time.monotonic()
    conn.send(*[request(path)] * n)
    times = []
    for _ in range(n):
        reply = await asyncio.wait_for(conn.reply(), 10)
        assert reply.status == (429 if path == "/busy" else 401)
        times.append(time.monotonic() - started)
    await conn.close()
    return times


async def test_pipelined_past_a_429_is_not_read_until_the_wait_is_over(tmp_path: Path) -> None:
    app = Busy()
    before = pauses()
    s = driver(app, Settings(data_dir=tmp_path))
    async with running(s):
        times = await _pipelined(port_of(s), 3)
    # the first two at once (the second was sent during the first's wait: pause 1 s),
    # the third after the pause
    assert times[1] < 0.5 and times[2] >= 0.9, times
    assert pauses() >= before + 1


async def test_a_flood_of_bad_credentials_is_paused_too(tmp_path: Path) -> None:
    """A 401 is a refusal with a wait of 1 s: the next request sent with bad
    credentials within it pauses the connection."""
    before = pauses()
    s = driver(Busy(), Settings(data_dir=tmp_path))
    async with running(s):
        times = await _pipelined(port_of(s), 3, "/denied")
    assert times[1] < 0.5 and times[2] >= 0.9, times
    assert pauses() >= before + 1


async def test_without_the_pause_every_429_is_answered_at_once(tmp_path: Path) -> None:
    s = driver(Busy(), Settings(data_dir=tmp_path, http_refused_pause_max_s=0))
    async with running(s):
        times = await _pipelined(port_of(s), 3)
    assert times[2] < 0.5, times


async def test_a_client_that_waits_retry_after_is_answered_at_once(tmp_path: Path) -> None:
    before = pauses()
    s = driver(Busy(), Settings(data_dir=tmp_path))
    async with running(s):
        conn = await Conn.open(port_of(s))
        for path in ("/busy", "/busy", "/hello"):
            started = time.monotonic()
            reply = await asyncio.wait_for(conn.get(path), 5)
            assert time.monotonic() - started < 0.5
            assert reply.status == (429 if path == "/busy" else 200)
            await asyncio.sleep(1.05)  # Retry-After: 1
        await conn.close()
    assert pauses() == before


async def test_a_paused_connection_is_not_cut_for_its_unread_head(tmp_path: Path) -> None:
    """The header timeout does not run while the driver does not read: a
    request whose head came before the pause is answered after it."""
    s = driver(
        Busy(), Settings(data_dir=tmp_path, http_header_timeout_s=0.5, http_refused_pause_max_s=2)
    )
    async with running(s):
        conn = await Conn.open(port_of(s))
        conn.send(request("/busy"), request("/busy"), b"GET /hello HTTP/1.1\r\nHost: t\r\n")
        assert (await asyncio.wait_for(conn.reply(), 5)).status == 429
        assert (await asyncio.wait_for(conn.reply(), 5)).status == 429  # pause 1 s from here
        await asyncio.sleep(0.2)
        conn.send(b"\r\n")  # the head's end, read after the pause
        reply = await asyncio.wait_for(conn.reply(), 5)
        assert reply.status == 200
        await conn.close()
