"""townhall's own HTTP/1.1 driver: an asyncio Protocol on httptools that uvicorn
runs through its public seam, ``uvicorn.Config(http=protocol_for(...))``.

uvicorn keeps the sockets, workers, signals, the Date line and the lifespan;
this protocol does HTTP/1.1 and honours what uvicorn expects of one (it is
constructed with ``config=``, ``server_state=``, ``app_state=``; it joins
``server_state.connections`` and answers ``shutdown()``; app tasks join
``server_state.tasks``; requests add to ``server_state.total_requests``).

Each request goes one of two ways:

- the listener rules (``FastPath.decide`` in origin/rules.py) claim it: a
  :class:`Rendered` answer is written as one buffer (status line, the
  server's lines, pre-rendered header lines and body); a :class:`Wait` parks
  the request on the live window (reading paused) until its position is
  published or its timer fires; a :class:`Stream` (live.aac) gets its head and
  is attached to the progressive hub, which writes the audio itself;
- anything else, and any answer kind this driver does not know, is handed to
  the ASGI app (``config.loaded_app``) through origin/asgi_cycle.py.

Requests on one connection are answered in order; those parsed while one is
in progress wait in a queue, reading paused. The first layer of issue 10's
defense lives here: caps on the request head and body, header, body and
idle timeouts, requests per connection, and open connections per client
network and in all (origin/conn_limits.py); each refusal or cut is counted
(the limits and the connection's timer: origin/http1_limits.py). A
connection refused (429) while an earlier Retry-After still runs is not read,
nor its queued requests answered, until that wait is over
(origin/retry_penalty.py): a flood pipelined past its 429s costs a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from typing import Any, ClassVar, cast

import httptools

from townhall import metrics
from townhall.config import Settings
from townhall.origin.app_hooks import gate_of, limit_of
from townhall.origin.asgi_cycle import AppCycle, Request, scope_of
from townhall.origin.chunked import LAST_CHUNK
from townhall.origin.fast_answers import COUNTS as COUNTS
from townhall.origin.fast_answers import FastAnswers, decide
from townhall.origin.handoff import FALLBACKS, HandoffSender, SecretProxies, cut
from townhall.origin.handoff import HIGH_WATER_BYTES as HANDED_BODY_BYTES
from townhall.origin.http1_limits import CLOSED, REFUSAL, REFUSED, DriverLimits, LimitsMixin
from townhall.origin.lean_api import LeanAnswers, LeanApi, LeanCall
from townhall.origin.retry_penalty import RetryPenalty
from townhall.origin.rules import FastPath, Rendered, Stream, Wait, programs_of
from townhall.origin.wire import problem_bytes, problem_document

log = logging.getLogger("townhall.http")

HIGH_WATER_BYTES = 64 * 1024  # request body buffered before reading pauses (and handed over)
_GET = b"GET"
_HEAD = b"HEAD"
_FAST = (Rendered, Wait, Stream)


class _HandedOff(Exception):
    """Raised in the parser's callback once the connection is handed over:
    the parser stops there (the primary parses it all again)."""


def _address(value: object) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


class Http1Protocol(LimitsMixin, LeanAnswers, FastAnswers, asyncio.Protocol):
    """One HTTP/1.1 connection (see the module docstring). ``fast_path`` and
    ``limits`` are bound by :func:`protocol_for`."""

    fast_path: ClassVar[FastPath | None] = None
    limits: ClassVar[DriverLimits]
    # a listener worker: hand a connection whose first request is not the
    # listener plane's to the primary (origin/handoff.py)
    handoff: ClassVar[HandoffSender | None] = None
    secret_proxies: ClassVar[SecretProxies | None] = None

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], **_: Any) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.server_state = server_state
        self.app_state = app_state
        self.loop = asyncio.get_running_loop()
        self.parser: httptools.HttpRequestParser = None  # type: ignore[assignment]
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._admitted = False
        self._network = ""
        self._peer: str | None = None  # the TCP peer's address (listener rules' limits)
        self._plain = True
        self._current: Request | None = None  # the request being answered
        self._parsing: Request | None = None  # the request whose body is being read
        self._queue: deque[Request] = deque()  # parsed, waiting for their turn
        self._dispatching = False
        self._served = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect = False
        self._too_large = False
        self._head_bytes = 0
        self._header_bytes = 0
        self._head_since: float | None = None
        self._body_since: float | None = None
        self._idle_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._penalty: RetryPenalty | None = None  # made at the first 429
        self._pause_timer: asyncio.TimerHandle | None = None  # not read until it fires
        self._pause_end_s = 0.0  # a pause's end (its timer may fire sooner: peer_gone.py)
        self._budgets = None  # per-connection budgets of lean routes (origin/lean_api.py)
        self.preread = b""  # an adopted connection: what the listener worker read of it
        # what was read since a request's first byte (the first request's, or a
        # later one's that began with nothing else in flight), for a handoff
        self._read: list[bytes] | None = None
        self._read_bytes = 0
        self._handing = False
        self._vouch = False  # X-Forwarded-For counts only with the local secret

    # -- connection events ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport; they behave as one)
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and isinstance(peer[0], str) else None
        self._peer = host
        self._plain = not transport.get_extra_info("sslcontext")  # lean answers: plain HTTP
        limit = self.config.limit_concurrency
        if limit is not None and len(self.server_state.connections) >= limit:
            reason: str | None = "total"
        else:
            reason, self._network = self.limits.conns.admit(host)
        if reason is not None:
            REFUSED[reason].inc()
            transport.write(REFUSAL)
            transport.close()
            return
        self._admitted = True
        # the parser only for an admitted connection: a refusal stays cheap
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # httptools < 0.6.3
            # answer the first of pipelined requests sent with Connection: close
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        metrics.HTTP_CONNECTIONS_OPEN.inc()
        self.server_state.connections.add(self)
        self._idle_since = self.loop.time()
        self._arm(self.limits.idle_s)
        rule = self.secret_proxies
        self._vouch = rule is not None and rule.covers(host)
        if self.handoff is not None:
            self._read = []
        if self.preread:  # handed over by a listener worker: read as if it came now
            data, self.preread = self.preread, b""
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self.limits.conns.release(self._network)
        metrics.HTTP_CONNECTIONS_OPEN.dec()
        self.server_state.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None
        for req in (self._current, self._parsing):
            if req is not None:
                self._abandon(req)
                if req.cycle is not None:
                    req.cycle.gone()
        # release every buffer now: an abandoned connection keeps nothing
        self._current = self._parsing = None
        self._queue.clear()
        self._headers = []
        self._url = b""
        self.parser = None  # type: ignore[assignment]
        self.resume_writing()

    def eof_received(self) -> bool | None:
        return None  # close when the client closes its side

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drained = self._drained
        if drained is not None:
            self._drained = None
            if not drained.done():
                drained.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport takes writes again (or the client is gone)."""
        if self.write_paused:
            if self._drained is None:
                self._drained = self.loop.create_future()
            await self._drained

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close when idle, else after this answer
        (an endless live.aac stream ends now, cleanly)."""
        req = self._current
        if req is None:
            self.transport.close()
        elif req.sink is not None:
            self._abandon(req)
            self.transport.write(LAST_CHUNK)
            self.transport.close()
        else:
            req.keep_alive = False

    # -- reading -------------------------------------------------------------------

    def data_received(self, data: bytes | memoryview) -> None:
        if self._read is None and self._served and self.handoff is not None and self._between():
            self._read, self._read_bytes = [], 0  # a later request may be handed over too
        if self._read is not None:  # from a request's first byte: kept for a handoff
            self._read_bytes += len(data)
            if self._read_bytes > self.limits.max_head_bytes + HANDED_BODY_BYTES:
                self._read = None
                FALLBACKS["large"].inc()
            else:
                self._read.append(bytes(data))
        self._feed(data)

    def _between(self) -> bool:
        """Nothing of a request read, parsed, queued or still being written:
        what arrives now begins a request, and the connection could be handed
        over as it is."""
        return (
            self._current is None
            and self._parsing is None
            and self._head_since is None
            and not self._queue
            and not self._handing
            and self._pause_timer is None
            and self.transport.get_write_buffer_size() == 0
        )

    def _feed(self, data: bytes | memoryview) -> None:
        if self._handing:
            return
        rest: bytes | memoryview = b""
        if self._body_since is None:
            room = self.limits.max_head_bytes - self._head_bytes
            if len(data) > room:  # an unfinished head is parsed no further than the cap
                view = memoryview(data)
                data, rest = view[: room + 1], view[room + 1 :]
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._pause_reading()  # what follows is not HTTP; the request gets 501
            return
        except httptools.HttpParserCallbackError:
            if self._handing:
                return  # the primary has the connection now
            log.exception("the HTTP driver failed on a request; closing its connection")
            CLOSED["internal"].inc()
            self.transport.close()
            return
        except httptools.HttpParserError as exc:
            self._cut("bad_request", 400, "bad-request", "Bad request",
                      f"The request is not valid HTTP/1.1 ({exc}); fix the client.")  # fmt: skip
            return
        if self._head_since is not None and self._head_bytes > self.limits.max_head_bytes:
            self._cut(
                "head_too_large", 431, "headers-too-large", "Request header fields too large",
                self._head_detail(),
            )  # fmt: skip
        elif rest and not self.transport.is_closing():
            self._feed(rest)  # the head ended in time: the rest as usual

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._pause_timer is None:
            self._reading_paused = False
            self.transport.resume_reading()

    def want_body(self) -> None:
        """An app reads the body: let it come (unless requests queue behind)."""
        if not self._queue:
            self._resume_reading()

    # -- parser callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        now = self.loop.time()
        self._head_since = now
        self._url = b""
        self._headers = []
        self._expect = self._too_large = False
        self._header_bytes = 0
        timer = self._timer
        deadline = now + self.limits.header_timeout_s
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._check)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            if len(value) > 18 or int(value) > self.limits.max_body_bytes:
                self._too_large = True
        elif name == b"expect" and value.lower() == b"100-continue":
            self._expect = True
        self._header_bytes += len(name) + len(value)
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        if self._vouch and self.secret_proxies is not None:
            self._headers = self.secret_proxies.vouched(self._headers)
        version = parser.get_http_version()
        started_s = self._head_since or self.loop.time()
        req = Request(
            parser.get_method(),
            self._url,
            self._headers,
            version,
            version != "1.0" and parser.should_keep_alive(),
            started_s,
        )
        req.expect_continue = self._expect
        req.too_large = self._too_large
        # a whole head in one read is not caught by data_received's count
        req.head_too_large = len(self._url) + self._header_bytes > self.limits.max_head_bytes
        req.upgrade = parser.should_upgrade()
        self._head_since = None
        self._head_bytes = 0
        self._body_since = started_s
        self._parsing = req
        if self._current is None and not self._queue and self._pause_timer is None:
            self._start(req)
        else:
            self._queue.append(req)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        req = self._parsing
        if req is None or req.too_large:
            return
        req.body_bytes += len(body)
        if req.body_bytes > self.limits.max_body_bytes:
            req.too_large = True
            self._body_too_large(req)
            return
        cycle = req.cycle
        if isinstance(req.decision, LeanCall):
            self._lean_body(req, body)
            return
        if req.decision is not None or (cycle is not None and cycle.response_complete):
            return  # a GET's body, or the answer is out: nobody reads it
        req.body += body
        if len(req.body) > HIGH_WATER_BYTES:
            self._pause_reading()
        if cycle is not None:
            cycle.wake()

    def on_message_complete(self) -> None:
        req = self._parsing
        self._parsing = None
        self._body_since = None
        if req is None:
            return
        req.more_body = False
        if req is self._current:
            if req.cycle is not None:
                req.cycle.wake()
            elif req.decision is not None:
                self._answer(req)

    # -- one request after the other ------------------------------------------------

    def _start(self, req: Request) -> None:
        self._current = req
        read, self._read = self._read, None
        self._idle_since = None
        limits = self.limits
        if limits.max_requests and self._served + 1 >= limits.max_requests:
            req.keep_alive = False
            CLOSED["max_requests"].inc()
        if req.head_too_large:
            self._refuse(req, 431, "headers-too-large", "Request header fields too large",
                         self._head_detail(), "head_too_large")  # fmt: skip
            return
        if req.upgrade:
            self._refuse(req, 501, "upgrade-not-supported", "Upgrade not supported",
                         "This server does not upgrade connections (no WebSocket); send plain HTTP requests.",
                         "upgrade")  # fmt: skip
            return
        if req.too_large:
            self._refuse_too_large(req)
            return
        fast_path = self.fast_path
        method = req.method
        if fast_path is not None and method in (_GET, _HEAD):
            decision = decide(fast_path, method, req.url, req.headers, self._peer)
            if isinstance(decision, _FAST):
                req.decision = decision
                if not req.more_body:
                    self._answer(req)
                return
        if self.handoff is not None:
            if read is not None:
                if self._hand_off(req, b"".join(read)):
                    raise _HandedOff  # stops the parser: the primary reads it all again
            elif self._served:
                FALLBACKS["later"].inc()
        if self._plain and self._lean(req):  # issue 10: API answers before any ASGI work
            return
        self._to_app(req)

    def _current_is(self, req: Request) -> bool:
        return req is self._current

    def finish(self, req: Request) -> None:
        """``req``'s answer is complete: close, or go on with the next request."""
        if req is not self._current:
            return
        self._current = None
        self._served += 1
        self.server_state.total_requests += 1
        transport = self.transport
        if not req.keep_alive:
            transport.close()
            return
        if transport.is_closing():
            return
        if (
            req.retry_after_s or req.status == 401 or self._penalty is not None
        ) and self._paused_for_refusals(req):
            return  # it ignores Retry-After: not read until the wait is over
        if self._queue or self._dispatching:
            self._next()
            return
        # the common case, inline: nothing queued, wait for the next request
        if self._reading_paused:
            self._resume_reading()
        self._idle_since = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_later(self.limits.idle_s, self._check)

    def _next(self) -> None:
        if self._dispatching:
            return  # a fast answer inside the loop below: it goes on
        self._dispatching = True
        try:
            while (
                self._current is None
                and self._queue
                and self._pause_timer is None
                and not self.transport.is_closing()
            ):
                self._start(self._queue.popleft())
        finally:
            self._dispatching = False
        if self._current is None and self._pause_timer is None and not self.transport.is_closing():
            self._resume_reading()
            self._idle_since = self.loop.time()
            if self._timer is None:
                self._timer = self.loop.call_later(self.limits.idle_s, self._check)

    # -- a listener worker hands the connection to the primary (origin/handoff.py) ----

    def _hand_off(self, req: Request, read: bytes) -> bool:
        assert self.handoff is not None
        if not self._plain:
            FALLBACKS["tls"].inc()
            return False  # the TLS session is this process's
        sock = self.transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            return False
        reason = self.handoff.send(fd, read, lambda taken: self._handed(req, fd, taken))
        if reason is not None:
            FALLBACKS[reason].inc()
            return False
        self._handing = True
        self._pause_reading()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return True

    def _handed(self, req: Request, fd: int, taken: bool) -> None:
        """The primary took the connection (close this copy) or did not in
        time (answer 503 and shut it down for every copy)."""
        if self.transport.is_closing():
            return
        if not taken:
            path = req.url.partition(b"?")[0].decode("latin-1")
            document = problem_document(
                503, "handoff-timeout", "The server is busy",
                "This server's main process did not take the request in time; try again in a few seconds.",
                path,
            )  # fmt: skip
            self.transport.write(
                problem_bytes(document, self.server_state.default_headers, retry_after_s=2.0)
            )
            cut(fd)
        self.transport.close()

    # -- the app ---------------------------------------------------------------------

    def default_headers(self) -> list[tuple[bytes, bytes]]:
        return self.server_state.default_headers  # type: ignore[no-any-return]

    def _to_app(self, req: Request) -> None:
        transport = self.transport
        scope = scope_of(
            req,
            root_path=self.config.root_path,
            server=_address(transport.get_extra_info("sockname")),
            client=_address(transport.get_extra_info("peername")),
            scheme="https" if transport.get_extra_info("sslcontext") else "http",
            app_state=self.app_state,
        )
        cycle = req.cycle = AppCycle(self, req, scope)
        if getattr(self.config, "reset_contextvars", False):
            task = self.loop.create_task(cycle.run(self.app), context=contextvars.Context())
        else:
            task = self.loop.create_task(cycle.run(self.app))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def protocol_for(fast_path: FastPath | None, settings: Settings) -> type[Http1Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)``: the fast path (None:
    every request goes to the app) and the limits of ``settings``."""

    class TownhallHttp1(Http1Protocol):
        pass

    TownhallHttp1.fast_path = fast_path
    TownhallHttp1.limits = DriverLimits.of(settings)
    if settings.secret_proxies and settings.local_bus_secret:
        TownhallHttp1.secret_proxies = SecretProxies(
            settings.secret_proxies, settings.local_bus_secret
        )
    return TownhallHttp1


def protocol_for_app(app: Any, settings: Settings) -> type[Http1Protocol]:
    """The protocol for an app made by ``create_app`` (rooms found through its
    services once its lifespan has started); the fast path only if enabled."""
    fast_path = (
        FastPath(settings, programs_of(app), gate=gate_of(app), playlist_limit=limit_of(app))
        if settings.fast_path
        else None
    )
    protocol = protocol_for(fast_path, settings)
    # the API answers before the app (server/lean.py registers them on the app)
    lean = getattr(app.state, "lean_api", None)
    protocol.lean = lean if isinstance(lean, LeanApi) else None
    return protocol
