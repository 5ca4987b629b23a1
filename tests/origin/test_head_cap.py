"""Issue 10's endless header and slow-loris costs in the HTTP/1.1 driver, over
real sockets: an unfinished head is parsed no further than the head cap
however large the read, a head that ends in time keeps what follows it in the
same read (its body, the next request), cut answers are rendered once per
Date line, and a refused connection gets no parser."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from tests.origin.http1_helpers import App, port_of, running, server
from tests.origin.test_http1_limits import closed
from tests.server.test_fastproto import Conn
from townhall.config import Settings
from townhall.origin.conn_limits import CutAnswers
from townhall.origin.http1 import Http1Protocol, protocol_for

CAP = 2048


class CountingParser:
    """The driver's httptools parser, counting the bytes it is fed."""

    def __init__(self, parser: Any, counts: list[int]) -> None:
        self._parser = parser
        self._counts = counts

    def feed_data(self, data: Any) -> None:
        self._counts[-1] += len(data)
        self._parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def counting(settings: Settings) -> tuple[type[Http1Protocol], list[int], list[int]]:
    """A driver class whose connections count their parsed bytes (one entry
    each) and whose refused connections are listed (1 if it had a parser)."""
    fed: list[int] = []
    refused: list[int] = []
    base = protocol_for(None, settings)

    class Counting(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if not self._admitted:
                refused.append(0 if self.parser is None else 1)
                return
            fed.append(0)
            self.parser = CountingParser(self.parser, fed)

    return Counting, fed, refused


def head(path: str, size: int, *, method: str = "GET", extra: str = "") -> bytes:
    """A request head of exactly ``size`` bytes (padded with one header)."""
    start = f"{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}X-Pad: "
    pad = size - len(start) - len("\r\n\r\n")
    assert pad > 0
    return (start + "p" * pad + "\r\n\r\n").encode()


async def test_an_endless_header_in_one_write_is_parsed_no_further_than_the_cap(
    tmp_path: Path,
) -> None:
    protocol, fed, _ = counting(Settings(data_dir=tmp_path, http_max_head_bytes=CAP))
    app = App()
    s = server(app, protocol)
    async with running(s):
        before = closed("head_too_large")
        conn = await Conn.open(port_of(s))
        conn.send(b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Endless: " + b"a" * 4_000_000)
        answer = b""
        # the 431, unless the close with the attacker's bytes unread reset it first
        with contextlib.suppress(ConnectionResetError):
            answer = await asyncio.wait_for(conn.reader.read(), 10)
        await conn.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert closed("head_too_large") == before + 1
    assert fed == [CAP + 1], "the parser saw more of the endless header than the cap"
    assert app.calls == 0


async def test_a_head_that_ends_in_time_keeps_its_body_and_the_next_request(
    tmp_path: Path,
) -> None:
    protocol, fed, _ = counting(Settings(data_dir=tmp_path, http_max_head_bytes=CAP))
    app = App()
    s = server(app, protocol)
    body = b"b" * 5000
    async with running(s):
        conn = await Conn.open(port_of(s))
        post = head("/echo", CAP, method="POST", extra=f"Content-Length: {len(body)}\r\n")
        # one write: a head of exactly the cap, its body, then a second request
        conn.send(post + body + head("/hello", CAP - 100))
        echoed = await conn.reply()
        hello = await conn.reply()
        conn.send(head("/hello", CAP + 2))  # over the cap, one byte past its end
        over = await asyncio.wait_for(conn.reader.read(), 10)
        await conn.close()
    assert (echoed.status, echoed.body) == (200, body)
    assert (hello.status, hello.body) == (200, b"hello\n")
    assert over.startswith(b"HTTP/1.1 431 ")
    assert fed == [CAP + len(body) + (CAP - 100) + CAP + 1]
    assert app.calls == 2


def test_cut_answers_are_rendered_once_per_date_line() -> None:
    cuts = CutAnswers()
    date = [(b"date", b"Tue, 01 Dec 2026 15:00:00 GMT")]
    first = cuts.get(408, "request-timeout", "Request timeout", "Send them at once.", date)
    assert cuts.get(408, "request-timeout", "Request timeout", "Send them at once.", date) is first
    assert first.startswith(b"HTTP/1.1 408 ") and b"date: Tue, 01 Dec 2026 15:00:00 GMT" in first
    assert json.loads(first.split(b"\r\n\r\n", 1)[1])["detail"] == "Send them at once."
    later = [(b"date", b"Tue, 01 Dec 2026 15:00:01 GMT")]
    again = cuts.get(408, "request-timeout", "Request timeout", "Send them at once.", later)
    assert again is not first and b"15:00:01" in again
    for i in range(CutAnswers.MAX_ENTRIES * 3):  # varying details stay bounded
        cuts.get(400, "bad-request", "Bad request", f"error {i}", later)
    assert len(cuts._rendered) <= CutAnswers.MAX_ENTRIES


async def test_a_refused_connection_gets_no_parser(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, http_max_connections_per_network=1)
    protocol, fed, refused = counting(settings)
    s = server(App(), protocol)
    async with running(s):
        port = port_of(s)
        held = await Conn.open(port, local_addr=("127.0.0.2", 0))
        assert (await held.get("/hello")).status == 200
        extra = await Conn.open(port, local_addr=("127.0.0.3", 0))  # the same /24
        answer = await asyncio.wait_for(extra.reader.read(), 5)
        other = await Conn.open(port, local_addr=("127.0.5.2", 0))  # a new network
        assert (await other.get("/hello")).status == 200
        for conn in (held, extra, other):
            await conn.close()
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert refused == [0] and len(fed) == 2
