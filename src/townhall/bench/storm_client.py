"""The storm's I/O pieces: a listener's connection that posts JSON and keeps
the cookies join sets, the host's and the bench's own requests, and the
per-arrival records file."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from townhall.bench.hlsclient import Client, HttpConnection, ListenerConfig, ListenerStats, Response
from townhall.bench.hlsplaylist import BenchError
from townhall.bench.storm_report import Arrival


class CookieConnection(HttpConnection):
    """An HTTP/1.1 connection that keeps the cookies its answers set."""

    def __init__(self) -> None:
        super().__init__()
        self.cookies: dict[str, str] = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"set-cookie":
            pair = value.split(b";", 1)[0].decode("latin-1")
            key, _, val = pair.partition("=")
            self.cookies[key.strip()] = val.strip()


class StormClient(Client):
    """A listener's connection that also posts JSON without raising on 202/4xx
    and carries the cookies join sets (the listener token, and behind nginx's
    media gate the th_link/th_exp link), as a browser does."""

    cookie = ""

    def __init__(self, config: ListenerConfig, stats: ListenerStats) -> None:
        super().__init__(config, stats)
        self.jar: dict[str, str] = {}
        self._cookie_conn: CookieConnection | None = None

    async def _connection(self) -> HttpConnection:
        conn = self._cookie_conn
        if conn is None or conn.closed:
            loop = asyncio.get_running_loop()
            try:
                _, conn = await loop.create_connection(
                    CookieConnection, self.config.host, self.config.port
                )
            except OSError as exc:
                raise BenchError("connect", f"Could not connect: {exc}") from None
            self._cookie_conn = conn
        return conn

    def close(self) -> None:
        if self._cookie_conn is not None:
            self._cookie_conn.close()
            self._cookie_conn = None

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
        conn = await self._connection()
        data = orjson.dumps(body)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.config.host}:{self.config.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "User-Agent: townhall-bench-storm\r\n\r\n"
        ).encode()
        self.stats.requests += 1
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                answer: Response = await conn.send(head + data)
        except TimeoutError:
            self.close()
            raise BenchError("timeout", f"No answer to {path}.") from None
        except BenchError:
            self.close()
            raise
        if isinstance(conn, CookieConnection) and conn.cookies:
            self.jar.update(conn.cookies)
            conn.cookies.clear()
        try:
            parsed = orjson.loads(answer.body) if answer.body else {}
        except orjson.JSONDecodeError:
            parsed = {}
        return answer.status, parsed if isinstance(parsed, dict) else {}, ""

    async def request(self, path: str, *, extra_headers: str = "", **kw: Any) -> Response:
        if self.cookie:
            extra_headers += f"Cookie: {self.cookie}\r\n"
        return await super().request(path, extra_headers=extra_headers, **kw)


def write_records(
    path: Path, arrivals: list[Arrival], docs: Sequence[tuple[float, bytes]] = ()
) -> None:
    """One JSON line per arrival (times: time.time() seconds), for a look
    at single listeners beyond the summary's figures; and, in ``path``.docs,
    each queue.json read (``{"read_at": ..., "doc": {...}}``), so that an ETA
    model can be replayed against the same documents and looks."""
    with path.open("wb") as out:
        for a in arrivals:
            row = {
                "index": a.index,
                "number": a.number,
                "before_start": a.before_start,
                "arrived_at": a.arrived_at,
                "eta_at": a.eta_at,
                "eta_s": a.eta_s,
                "admitted_at": a.admitted_at,
                "first_audio_at": a.first_audio_at,
                "gave_up_at": a.gave_up_at,
                "ended_at_s": a.stats.ended_at_s,
                "stalled_s": round(a.stats.playout.stalled_s, 3),
                "stall_events": a.stats.playout.stall_events,
                "refusals": dict(a.refusals),
                "shown_etas": [(round(t, 2), round(e, 1)) for t, e in a.shown_etas],
            }
            out.write(orjson.dumps(row) + b"\n")
    if docs:
        with path.with_name(path.name + ".docs").open("wb") as out:
            for read_at, body in docs:
                out.write(b'{"read_at":%.3f,"doc":%s}\n' % (read_at, body))


async def scrape(http: httpx.AsyncClient) -> str:
    """The target's /metrics, or "" when it does not answer in time (the
    storm's figures then say so instead of the run failing)."""
    try:
        return (await http.get("/metrics")).text
    except httpx.HTTPError:
        return ""


async def host_post(http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> httpx.Response:
    """The host's POST; a kept-alive connection the server closed meanwhile
    (its idle timeout) is retried on a new one, as any client does (3 tries)."""
    for attempt in range(3):
        try:
            return await http.post(path, headers=headers)
        except httpx.TransportError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
