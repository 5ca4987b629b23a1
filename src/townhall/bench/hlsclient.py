"""The simulated player of ``townhall bench listeners``.

Three layers, the first two pure (no sockets, no event loop) and in their own
modules (``bench/hlsplaylist.py``, ``bench/playout.py``):

- ``parse_playlist``: an HLS media playlist (plain or Low-Latency) into a
  frozen ``MediaPlaylist``; ``next_part_after`` says which part a player asks
  for next.
- ``Playout``: a player's buffer on a timeline. Media arrives with a duration;
  playback starts once the startup buffer is full; a piece that arrives after
  the buffer ran dry is a stall (counted, and its stalled time summed).
  ``AdtsCounter`` turns a progressive ADTS byte stream into media seconds.
- ``HttpConnection`` (an ``asyncio.Protocol`` with httptools' C parser, one
  keep-alive HTTP/1.1 connection per listener) and the three listener loops:
  ``run_llhls`` (blocking reload with ``_HLS_msn``/``_HLS_part``, each part,
  the preload hint), ``run_plain_hls`` (reload every half target duration,
  each segment) and ``run_progressive`` (one long response).

Every request has a timeout; every loop ends when the run's deadline passes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast
from urllib.parse import urljoin, urlsplit

import httptools

from townhall.bench.hlsplaylist import (
    BenchError,
    live_start_parts,
    live_start_segments,
    next_part_after,
    parse_playlist_cached,
)
from townhall.bench.playout import AdtsCounter, Playout

Mode = Literal["llhls", "hls", "progressive"]


# -- one keep-alive HTTP/1.1 connection (thin I/O) ------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    keep_alive: bool
    body_bytes: int


class HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 connection; one request at a time. httptools parses the
    answers (C speed), so thousands of these fit on one core."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Response] | None = None
        self._chunks: list[bytes] = []
        self._body_bytes = 0
        self._on_body: Callable[[bytes], None] | None = None
        self._status = 0
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BenchError("protocol", "The server switched protocols."))
        except httptools.HttpParserError as exc:
            self._fail(BenchError("protocol", f"Malformed HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._on_body is not None and self._status == 200:
                # a stream read to its end (HTTP/1.0 style, e.g. Icecast)
                waiter.set_result(Response(200, b"", False, self._body_bytes))
            else:
                waiter.set_exception(BenchError("reset", "The server closed the connection."))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._chunks = []
        self._body_bytes = 0
        self._status = 0

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._on_body is not None and self._status == 200:
            self._on_body(body)
        else:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        keep_alive = self._parser.should_keep_alive()
        if waiter is not None and not waiter.done():
            body = b"".join(self._chunks)
            waiter.set_result(Response(self._status, body, keep_alive, self._body_bytes))
        if not keep_alive:
            self.close()

    def _fail(self, error: BenchError) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def send(
        self,
        request: bytes,
        on_body: Callable[[bytes], None] | None = None,
    ) -> asyncio.Future[Response]:
        """Write one request; the future resolves with its answer."""
        if self._transport is None or self.closed:
            raise BenchError("reset", "The connection is closed.")
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._on_body = on_body
        self._transport.write(request)
        return self._waiter


# -- listeners ------------------------------------------------------------------


@dataclass
class ListenerStats:
    """One listener's account, filled in by its loop. Times are monotonic seconds."""

    started_at_s: float
    playout: Playout
    first_audio_s: float | None = None
    join_s: float | None = None
    ended_at_s: float | None = None
    requests: int = 0
    bytes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    failed: bool = False


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """What every listener of a run shares."""

    host: str
    port: int
    path: str
    mode: Mode
    request_timeout_s: float = 10.0
    blocking_timeout_s: float = 12.0
    startup_s: float | None = None  # None: the playlist's hold-back (LL-HLS), 3 segments, 1 s
    retry_delay_s: float = 1.0
    max_retries: int = 20
    join_path: str | None = None
    use_preload_hint: bool = True


class Client:
    """A listener's connection to the target: reconnects when the server closed
    it, counts requests and bytes, maps failures onto error kinds."""

    def __init__(
        self, config: ListenerConfig, stats: ListenerStats, source: str | None = None
    ) -> None:
        self.config = config
        self.stats = stats
        self.source = source  # a loopback address to bind to (one client per address)
        self._conn: HttpConnection | None = None
        self._host_header = f"Host: {config.host}:{config.port}\r\n".encode()

    async def _connection(self) -> HttpConnection:
        if self._conn is None or self._conn.closed:
            loop = asyncio.get_running_loop()
            try:
                _, proto = await loop.create_connection(
                    HttpConnection,
                    self.config.host,
                    self.config.port,
                    local_addr=None if self.source is None else (self.source, 0),
                )
            except OSError as exc:
                raise BenchError("connect", f"Could not connect: {exc}") from None
            self._conn = proto
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def request(
        self,
        path: str,
        *,
        timeout_s: float,
        method: str = "GET",
        body: bytes = b"",
        extra_headers: str = "",
        on_body: Callable[[bytes], None] | None = None,
    ) -> Response:
        conn = await self._connection()
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._host_header
        if body:
            extra_headers += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        head += extra_headers.encode() + b"User-Agent: townhall-bench\r\n\r\n"
        self.stats.requests += 1
        try:
            async with asyncio.timeout(timeout_s):
                response = await conn.send(head + body, on_body)
        except TimeoutError:
            self.close()
            raise BenchError("timeout", f"No answer to {path} in {timeout_s:g} s.") from None
        except BenchError:
            self.close()
            raise
        if on_body is None:  # streamed bodies are counted by their consumer
            self.stats.bytes += response.body_bytes
        if response.status >= 400 or response.status < 200:
            raise BenchError(f"http_{response.status}", f"{path} answered {response.status}.")
        return response

    async def get_media(self, uri: str, base: str, byterange: tuple[int, int] | None) -> Response:
        extra = ""
        if byterange is not None:
            length, offset = byterange
            extra = f"Range: bytes={offset}-{offset + length - 1}\r\n"
        return await self.request(
            resolve(base, uri), timeout_s=self.config.request_timeout_s, extra_headers=extra
        )


def resolve(base_path: str, uri: str) -> str:
    """A playlist URI as a request path on the same host (query kept)."""
    parts = urlsplit(urljoin(base_path, uri))
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _with_query(path: str, query: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}{query}"


async def join(client: Client, join_path: str) -> str | None:
    """POST the join; returns the path of the stream URL it hands out for the
    client's mode (None if the answer has none)."""
    import orjson

    t0 = time.monotonic()
    response = await client.request(
        join_path, method="POST", body=b"{}", timeout_s=client.config.request_timeout_s
    )
    client.stats.join_s = time.monotonic() - t0
    try:
        urls = orjson.loads(response.body).get("urls", {})
    except orjson.JSONDecodeError:
        raise BenchError("join", "The join answer is not JSON.") from None
    key = {"llhls": "live_m3u8", "hls": "plain_m3u8", "progressive": "live_aac"}[client.config.mode]
    url = urls.get(key)
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _mark_first_audio(stats: ListenerStats) -> None:
    if stats.first_audio_s is None and stats.playout.play_start_s is not None:
        stats.first_audio_s = stats.playout.play_start_s - stats.started_at_s


async def run_llhls(client: Client, path: str, deadline_s: float) -> None:
    """Follow an LL-HLS playlist as a player does until ``deadline_s``: join at
    PART-HOLD-BACK behind the edge, then at the edge ask for the preload-hinted
    part (the origin answers when it exists) and reload the playlist blocking on
    the next part (``_HLS_msn``/``_HLS_part``)."""
    stats, cfg = client.stats, client.config
    response = await client.request(path, timeout_s=cfg.request_timeout_s)
    playlist = parse_playlist_cached(response.body)
    if not playlist.is_low_latency:
        raise BenchError("not_llhls", "The playlist has no EXT-X-PART-INF; it is not LL-HLS.")
    if playlist.map_uri:
        await client.get_media(playlist.map_uri, path, None)
    hold_back = playlist.part_hold_back_s or 3 * (playlist.part_target_s or 1.0)
    if stats.playout.play_start_s is None:
        stats.playout.startup_s = cfg.startup_s if cfg.startup_s is not None else hold_back
    start = live_start_parts(playlist, hold_back)
    last = (start[0].msn, start[0].index - 1) if start else (playlist.next_msn, -1)
    first = True
    while time.monotonic() < deadline_s and not playlist.ended:
        parts = playlist.all_parts()
        new = [p for p in parts if (p.msn, p.index) > last]
        if new and not first and (new[0].msn, new[0].index) != next_part_after(playlist, *last):
            raise BenchError("fell_behind", "The live window moved past this listener.")
        for part in new:
            await client.get_media(part.uri, path, part.byterange)
            stats.playout.add(part.duration_s, time.monotonic())
            last = (part.msn, part.index)
        if first:
            stats.playout.start_now(time.monotonic())
            first = False
        _mark_first_audio(stats)
        hint = playlist.preload_hint
        at_edge = not parts or last == (parts[-1].msn, parts[-1].index)
        if (
            cfg.use_preload_hint
            and at_edge
            and hint is not None
            and hint.type == "PART"
            and hint.byterange_start is None
            and time.monotonic() < deadline_s
        ):
            await client.request(resolve(path, hint.uri), timeout_s=cfg.blocking_timeout_s)
            stats.playout.add(playlist.part_target_s or 0.0, time.monotonic())
            last = next_part_after(playlist, *last) if parts else (playlist.next_msn, 0)
            # the playlist that lists the part just received names the next hint
            # (a player sends this reload alongside the hinted request)
            want = last
        else:
            want = next_part_after(playlist, *last)
        query = f"_HLS_msn={want[0]}&_HLS_part={want[1]}"
        if playlist.can_skip_until_s:
            query += "&_HLS_skip=YES"  # a delta update, as players ask when offered
        response = await client.request(_with_query(path, query), timeout_s=cfg.blocking_timeout_s)
        playlist = parse_playlist_cached(response.body)


async def run_plain_hls(client: Client, path: str, deadline_s: float) -> None:
    """Follow a plain HLS playlist: reload every half target duration, fetch
    each new segment."""
    stats, cfg = client.stats, client.config
    response = await client.request(path, timeout_s=cfg.request_timeout_s)
    playlist = parse_playlist_cached(response.body)
    if playlist.map_uri:
        await client.get_media(playlist.map_uri, path, None)
    start = live_start_segments(playlist)
    if stats.playout.play_start_s is None:
        startup = sum(s.duration_s for s in start)
        stats.playout.startup_s = cfg.startup_s if cfg.startup_s is not None else startup
    last_msn = playlist.media_sequence - 1
    for segment in start:
        await client.get_media(segment.uri, path, segment.byterange)
        stats.playout.add(segment.duration_s, time.monotonic())
        last_msn = segment.msn
    stats.playout.start_now(time.monotonic())
    _mark_first_audio(stats)
    while time.monotonic() < deadline_s and not playlist.ended:
        await asyncio.sleep(
            min(playlist.target_duration_s / 2, max(0.0, deadline_s - time.monotonic()))
        )
        if time.monotonic() >= deadline_s:
            break
        response = await client.request(path, timeout_s=cfg.request_timeout_s)
        playlist = parse_playlist_cached(response.body)
        if playlist.segments and playlist.media_sequence > last_msn + 1:
            raise BenchError("fell_behind", "The live window moved past this listener.")
        for segment in playlist.segments:
            if segment.msn > last_msn:
                await client.get_media(segment.uri, path, segment.byterange)
                stats.playout.add(segment.duration_s, time.monotonic())
                last_msn = segment.msn
        _mark_first_audio(stats)


async def run_progressive(client: Client, path: str, deadline_s: float) -> None:
    """Read a progressive ADTS stream; each chunk's frames feed the playout."""
    stats, cfg = client.stats, client.config
    counter = AdtsCounter()
    if stats.playout.play_start_s is None:
        stats.playout.startup_s = cfg.startup_s if cfg.startup_s is not None else 1.0

    def on_body(data: bytes) -> None:
        stats.bytes += len(data)
        frames = counter.feed(data)
        if frames and counter.sample_rate_hz:
            # the chunk arrived whole at this instant
            stats.playout.add(frames * 1024 / counter.sample_rate_hz, time.monotonic())
            _mark_first_audio(stats)

    remaining = deadline_s - time.monotonic()
    if remaining <= 0:
        return
    try:
        await client.request(path, timeout_s=remaining, on_body=on_body)
    except BenchError as exc:
        if exc.kind == "timeout" and time.monotonic() >= deadline_s - 0.1:
            return  # the run's deadline ended the stream: the normal way out
        raise
    raise BenchError("stream_ended", "The server ended the progressive stream.")
