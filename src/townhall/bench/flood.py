"""`townhall bench attack`'s request floods, cheap enough for one core to send
tens of thousands of requests per second from a thousand source addresses.

Each connection is bound to one loopback source address and sends HTTP/1.1
requests pipelined (up to ``pipeline`` in flight, written ``batch`` at a time
in one write: a legitimate client behaviour and cheap for the sender). The
requests are pre-built bytes; shapes that need a fresh value per request
(forged tokens, forged tickets) draw it from one ``os.urandom`` call per
batch. Answers are parsed by httptools (C) and only counted (status, and
success for the shapes where a success means the attacker got something).

One ticker paces the whole flood open-loop: every ``TICK_S`` it hands out the
requests due at the asked rate to connections with room in their pipeline,
round robin, so every source sends about the same. A connection the server
closes is opened again (after a short pause) until the deadline; requests
it had in flight are counted as ``unanswered``. Bounded: connections, rate,
pipeline depth, time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import cast

import httptools
import orjson

from townhall.policy.tickets import PREFIX as TICKET_PREFIX

TICK_S = 0.01
RECONNECT_S = 0.05
RECONNECT_MAX_S = 1.0
CONNECT_RAMP_PER_S = 2000.0  # connections opened per second at the start (finite backlog)

SUCCESS = {"join": 200, "ticket": 200, "forged": 202, "replay": 202, "signin": 200}
FLOOD_SHAPES = (
    "join",
    "ticket",
    "playlist",
    "state",
    "forged",
    "replay",
    "page",
    "reload",
    "signin",
)
# a blocking reload for a part that will not exist for years: 400 at once
FAR_MSN = 99_999_999


class Tally:
    """What the flood sent and got back (shared with ``attack_conn``'s shapes)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.successes = 0
        self.open_slow = 0
        self.statuses: Counter[str] = Counter()


RequestMaker = Callable[[int], bytes]


def request_maker(shape: str, space_id: str, host: str, token: str | None) -> RequestMaker:
    """A function n -> the bytes of n requests of ``shape``, ready to write."""
    common = f"Host: {host}\r\nUser-Agent: townhall-bench-attack\r\n"
    if shape in ("join", "playlist", "state", "replay", "page", "reload"):
        if shape == "page":  # the listener page, HTML
            one = f"GET /spaces/{space_id} HTTP/1.1\r\n{common}Accept: text/html\r\n\r\n"
        elif shape == "reload":
            one = (
                f"GET /spaces/{space_id}/live.m3u8?_HLS_msn={FAR_MSN}&_HLS_part=0 HTTP/1.1\r\n"
                f"{common}\r\n"
            )
        elif shape == "join":
            one = f"POST /api/spaces/{space_id}/join HTTP/1.1\r\n{common}Content-Length: 0\r\n\r\n"
        elif shape == "playlist":
            one = f"GET /spaces/{space_id}/live.m3u8 HTTP/1.1\r\n{common}\r\n"
        elif shape == "state":
            one = f"GET /spaces/{space_id}/state.json HTTP/1.1\r\n{common}\r\n"
        else:
            if not token:
                raise ValueError("The replay shape needs a real listener token.")
            one = _reaction(space_id, common, token)
        static = one.encode()
        cache: dict[int, bytes] = {}

        def same(n: int) -> bytes:
            found = cache.get(n)
            if found is None:
                found = cache[n] = static * n
            return found

        return same
    if shape == "forged":
        head, tail = _reaction(space_id, common, "\0").encode().split(b"\0")
        prefix, size = b"eyJhbGciOiJIUzI1NiJ9.", 54  # a JWT-looking header, a random rest
    elif shape == "signin":
        # sign-ins to made-up accounts, each its own name (a credential
        # stuffing run): the per-network and per-account limits, then the
        # bounded password-hashing pool, must hold them off
        body_len = len(orjson.dumps({"username": "u" * 17, "password": "correct horse battery"}))
        head = (
            f"POST /api/sessions HTTP/1.1\r\n{common}Content-Type: application/json\r\n"
            f'Content-Length: {body_len}\r\n\r\n{{"username":"u'
        ).encode()
        tail, prefix, size = b'","password":"correct horse battery"}', b"", 16
    elif shape == "ticket":
        # well-formed (the ticket prefix, a key id, a payload for this space,
        # a signature), forged: a random key id and signature, so each is
        # refused by its signature check (401), not by its shape (400)
        payload = base64.urlsafe_b64encode(
            orjson.dumps({"spc": space_id, "idx": 1, "iat": 0, "exp": 2**31})
        ).rstrip(b"=")
        forged = f"{TICKET_PREFIX}." + "a" * 8 + "." + payload.decode() + "." + "s" * 43
        body_len = len(orjson.dumps({"ticket": forged}))
        head = (
            f"POST /api/spaces/{space_id}/join HTTP/1.1\r\n{common}Content-Type: application/json\r\n"
            f'Content-Length: {body_len}\r\n\r\n{{"ticket":"{TICKET_PREFIX}.'
        ).encode()
        tail = ("." + payload.decode() + "." + "s" * 43 + '"}').encode()
        prefix, size = b"", 8
    else:
        raise ValueError(f"Unknown flood shape {shape!r}.")

    def fresh(n: int) -> bytes:
        # one urandom call per batch; each request gets its own random value
        raw = base64.urlsafe_b64encode(os.urandom(n * size * 3 // 4 + 3))
        return b"".join(head + prefix + raw[i * size : (i + 1) * size] + tail for i in range(n))

    return fresh


def _reaction(space_id: str, common: str, bearer: str) -> str:
    body = orjson.dumps({"emoji": "🔥"}).decode()
    return (
        f"POST /api/spaces/{space_id}/reactions HTTP/1.1\r\n{common}Authorization: Bearer {bearer}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body.encode())}\r\n\r\n{body}"
    )


class _Conn(asyncio.Protocol):
    """One pipelined connection: counts its answers, tells the flood when it closes."""

    def __init__(self, flood: Flood, source: str) -> None:
        self.flood = flood
        self.source = source
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.in_flight = 0
        self.answered_at = time.monotonic()  # the last answer (or the connect)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.flood.tally.statuses["malformed_answer"] += 1
            if self.transport is not None:
                self.transport.close()

    def on_headers_complete(self) -> None:
        # one callback per answer (a server that says Connection: close closes
        # the connection itself; what was in flight is then counted unanswered)
        codes = self.flood.codes
        status = self.parser.get_status_code()
        codes[status] = codes.get(status, 0) + 1
        self.in_flight -= 1
        self.answered_at = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.flood.lost(self)

    def send(self, n: int) -> None:
        if self.transport is not None:
            self.transport.write(self.flood.make(n))
            self.in_flight += n


class Flood:
    """``connections`` pipelined connections over ``sources`` sending ``rate_per_s``
    requests in all until ``deadline_s`` (monotonic)."""

    def __init__(
        self,
        *,
        port: int,
        sources: list[str],
        connections: int,
        make: RequestMaker,
        rate_per_s: float,
        pipeline: int,
        deadline_s: float,
        tally: Tally,
        success_status: int | None,
        churn_s: float | None = None,
    ) -> None:
        self.port = port
        self.sources = sources
        self.connections = connections
        self.make = make
        self.rate_per_s = rate_per_s
        self.pipeline = max(1, pipeline)
        self.batch = max(1, self.pipeline // 2)
        self.deadline_s = deadline_s
        self.tally = tally
        self.success_status = success_status
        self.churn_s = churn_s  # drop a full, unanswered connection after this long
        self.churned = 0
        self.live: list[_Conn] = []
        self.not_sent = 0  # requests due while every pipeline was full (the server lagged)
        self.peak_live = 0
        self.codes: dict[int, int] = {}  # answers by status (into the tally at the end)
        self._stopping = False
        self._pending: set[asyncio.Task[None]] = set()
        self._backoff: dict[str, float] = {}

    async def _open(self, source: str, delay_s: float) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if time.monotonic() >= self.deadline_s:
            return
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Conn(self, source), "127.0.0.1", self.port, local_addr=(source, 0)
                ),
                5.0,
            )
        except (OSError, TimeoutError):
            self.tally.statuses["connect_error"] += 1
            backoff = min(RECONNECT_MAX_S, 2 * self._backoff.get(source, RECONNECT_S))
            self._backoff[source] = backoff
            self._spawn(source, backoff)
            return
        self._backoff.pop(source, None)
        self.live.append(conn)
        self.peak_live = max(self.peak_live, len(self.live))

    def _spawn(self, source: str, delay_s: float) -> None:
        if time.monotonic() + delay_s >= self.deadline_s:
            return
        task = asyncio.get_running_loop().create_task(self._open(source, delay_s))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _churn(self, now: float) -> None:
        """Drop the connections the server stopped answering and open new ones
        (what an attacker does when its connections are paused)."""
        assert self.churn_s is not None
        for conn in [c for c in self.live if c.in_flight >= self.pipeline]:
            if now - conn.answered_at >= self.churn_s and conn.transport is not None:
                self.live.remove(conn)
                self.churned += 1
                self.tally.statuses["dropped_by_client"] += 1
                conn.in_flight = 0
                conn.transport.abort()
                self._spawn(conn.source, 0.0)

    def lost(self, conn: _Conn) -> None:
        if self._stopping:  # the flood's own close at the deadline
            return
        if conn.in_flight > 0:
            self.tally.statuses["unanswered"] += conn.in_flight
        conn.in_flight = 0
        try:
            self.live.remove(conn)
        except ValueError:
            return
        self.tally.statuses["closed_by_server"] += 1
        self._spawn(conn.source, RECONNECT_S)

    async def run(self) -> None:
        """Open the connections (ramped) and pace the requests until the deadline."""
        for i in range(self.connections):
            self._spawn(self.sources[i % len(self.sources)], i / CONNECT_RAMP_PER_S)
        start = time.monotonic()
        sent = 0
        cursor = 0
        try:
            while (now := time.monotonic()) < self.deadline_s:
                due = int((now - start) * self.rate_per_s) - sent
                cap = int(self.rate_per_s * 0.2) + self.batch  # a late tick sends 0.2 s at most
                if due > cap:
                    sent += due - cap
                    self.not_sent += due - cap
                    due = cap
                live = self.live
                tried = 0
                while due > 0 and live and tried < len(live):
                    cursor %= len(live)
                    conn = live[cursor]
                    cursor += 1
                    tried += 1
                    room = min(self.pipeline - conn.in_flight, self.batch, due)
                    if room > 0:
                        conn.send(room)
                        due -= room
                        sent += room
                        self.tally.attempts += room
                if due > 0:  # nothing could take them now: drop them from the schedule
                    sent += due
                    self.not_sent += due
                if self.churn_s is not None:
                    self._churn(now)
                await asyncio.sleep(TICK_S)
        finally:
            for code, count in self.codes.items():
                self.tally.statuses[str(code)] += count
            if self.success_status is not None:
                self.tally.successes += self.codes.get(self.success_status, 0)
            self._stopping = True
            for task in list(self._pending):
                task.cancel()
            for conn in self.live:
                if conn.transport is not None:
                    conn.transport.close()
