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
network and in all (origin/conn_limits.py); each refusal or cut is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools

from townhall import metrics
from townhall.config import Settings
from townhall.origin.app_hooks import EarlyRefusal, gate_of, limit_of, refusal_of
from townhall.origin.asgi_cycle import AppCycle, Request, scope_of
from townhall.origin.chunked import LAST_CHUNK
from townhall.origin.conn_limits import ConnLimits, fd_soft_limit, total_cap
from townhall.origin.fast_answers import COUNTS as COUNTS
from townhall.origin.fast_answers import FastAnswers, decide
from townhall.origin.rules import FastPath, Rendered, Stream, Wait, programs_of
from townhall.origin.wire import problem_bytes, problem_document

log = logging.getLogger("townhall.http")

HIGH_WATER_BYTES = 64 * 1024  # request body buffered before reading pauses
_GET = b"GET"
_HEAD = b"HEAD"
_FAST = (Rendered, Wait, Stream)
_REASONS = (
    "head_too_large",
    "header_timeout",
    "body_timeout",
    "body_too_large",
    "idle",
    "max_requests",
    "bad_request",
    "upgrade",
    "internal",
)
_CLOSED = {reason: metrics.HTTP_CONNECTIONS_CLOSED.labels(reason=reason) for reason in _REASONS}
_REFUSED = {
    reason: metrics.HTTP_CONNECTIONS_REFUSED.labels(reason=reason)
    for reason in ("network", "total")
}
_RETRY_AFTER_S = 5.0
# over a connection cap: no Date line, rendered once (the refusal must be cheap)
_REFUSAL = problem_bytes(
    problem_document(
        503,
        "too-many-connections",
        "Too many connections",
        "Too many connections are open from your network or to this server; retry in a few seconds.",
        None,
    ),
    [],
    retry_after_s=_RETRY_AFTER_S,
)


@dataclass(frozen=True, slots=True)
class DriverLimits:
    """The per-connection limits of one server (from Settings) and its shared
    connection counts."""

    max_head_bytes: int
    max_body_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    idle_s: float
    max_requests: int
    conns: ConnLimits

    @classmethod
    def of(cls, settings: Settings) -> DriverLimits:
        return cls(
            max_head_bytes=settings.http_max_head_bytes,
            max_body_bytes=settings.max_body_bytes,
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            idle_s=settings.http_keepalive_idle_s,
            max_requests=settings.http_max_requests_per_connection,
            conns=ConnLimits(
                settings.http_max_connections_per_network,
                total_cap(settings.http_max_connections, fd_soft_limit()),
                settings.trusted_proxies,
            ),
        )


def _address(value: object) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


class Http1Protocol(FastAnswers, asyncio.Protocol):
    """One HTTP/1.1 connection (see the module docstring). ``fast_path`` and
    ``limits`` are bound by :func:`protocol_for`."""

    fast_path: ClassVar[FastPath | None] = None
    early_refusal: ClassVar[EarlyRefusal | None] = None  # issue 10: before any ASGI work
    limits: ClassVar[DriverLimits]

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], **_: Any) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.server_state = server_state
        self.app_state = app_state
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # httptools < 0.6.3
            # answer the first of pipelined requests sent with Connection: close
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._admitted = False
        self._network = ""
        self._peer: str | None = None  # the TCP peer's address (listener rules' limits)
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

    # -- connection events ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport; they behave as one)
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and isinstance(peer[0], str) else None
        self._peer = host
        limit = self.config.limit_concurrency
        if limit is not None and len(self.server_state.connections) >= limit:
            reason: str | None = "total"
        else:
            reason, self._network = self.limits.conns.admit(host)
        if reason is not None:
            _REFUSED[reason].inc()
            transport.write(_REFUSAL)
            transport.close()
            return
        self._admitted = True
        metrics.HTTP_CONNECTIONS_OPEN.inc()
        self.server_state.connections.add(self)
        self._idle_since = self.loop.time()
        self._arm(self.limits.idle_s)

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

    def data_received(self, data: bytes) -> None:
        if self._body_since is None:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._pause_reading()  # what follows is not HTTP; the request gets 501
        except httptools.HttpParserCallbackError:
            log.exception("the HTTP driver failed on a request; closing its connection")
            _CLOSED["internal"].inc()
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

    def _head_detail(self) -> str:
        return f"The request line and headers are over {self.limits.max_head_bytes} bytes; send fewer or shorter headers."

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused:
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
        if self._current is None and not self._queue:
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
        self._idle_since = None
        limits = self.limits
        if limits.max_requests and self._served + 1 >= limits.max_requests:
            req.keep_alive = False
            _CLOSED["max_requests"].inc()
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
        refuse = self.early_refusal
        if refuse is not None and (refused := refuse(self._peer, req)):
            req.decision = refused  # answered once the body is in (kept alive)
            if not req.more_body:
                self._answer(req)
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
            while self._current is None and self._queue and not self.transport.is_closing():
                self._start(self._queue.popleft())
        finally:
            self._dispatching = False
        if self._current is None and not self.transport.is_closing():
            self._resume_reading()
            self._idle_since = self.loop.time()
            if self._timer is None:
                self._timer = self.loop.call_later(self.limits.idle_s, self._check)

    # -- limits ----------------------------------------------------------------------

    def _arm(self, delay_s: float) -> None:
        self._timer = self.loop.call_later(delay_s, self._check)

    def _check(self) -> None:
        """The connection's one timer: header, body and idle deadlines."""
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        limits = self.limits
        left_s = math.inf
        if self._head_since is not None:
            left_s = self._head_since + limits.header_timeout_s - now
            if left_s <= 0:
                self._cut("header_timeout", 408, "request-timeout", "Request timeout",
                          f"The request headers did not arrive within {limits.header_timeout_s:g} s; send them at once.")  # fmt: skip
                return
        elif self._idle_since is not None:
            idle_left_s = self._idle_since + limits.idle_s - now
            if idle_left_s <= 0:
                _CLOSED["idle"].inc()
                self.transport.close()
                return
            left_s = idle_left_s
        if self._body_since is not None:
            body_left_s = self._body_since + limits.body_timeout_s - now
            if body_left_s <= 0:
                self._body_timeout()
                return
            left_s = min(left_s, body_left_s)
        if left_s != math.inf:
            self._arm(left_s)

    def _cut(self, reason: str, status: int, slug: str, title: str, detail: str) -> None:
        """Answer a problem with the connection (if no answer is in progress) and close."""
        _CLOSED[reason].inc()
        if self._current is None and not self.transport.is_closing():
            document = problem_document(status, slug, title, detail, None)
            self.transport.write(problem_bytes(document, self.server_state.default_headers))
        self.transport.close()

    def _refuse(
        self, req: Request, status: int, slug: str, title: str, detail: str, reason: str
    ) -> None:
        _CLOSED[reason].inc()
        req.keep_alive = False
        path = req.url.partition(b"?")[0].decode("latin-1")
        document = problem_document(status, slug, title, detail, path)
        self.transport.write(problem_bytes(document, self.server_state.default_headers))
        self.finish(req)

    def _refuse_too_large(self, req: Request) -> None:
        self._refuse(req, 413, "payload-too-large", "Payload too large",
                     f"The request body is larger than {self.limits.max_body_bytes} bytes; send a smaller body.",
                     "body_too_large")  # fmt: skip

    def _body_too_large(self, req: Request) -> None:
        cycle = req.cycle
        if req is not self._current:
            return  # refused when its turn comes
        if cycle is None:
            self._refuse_too_large(req)
        elif not cycle.response_started:
            _CLOSED["body_too_large"].inc()
            detail = f"The request body is larger than {self.limits.max_body_bytes} bytes; send a smaller body."
            cycle.refuse(
                problem_document(
                    413, "payload-too-large", "Payload too large", detail, cycle.scope["path"]
                )
            )
        else:
            _CLOSED["body_too_large"].inc()
            self.transport.close()

    def _body_timeout(self) -> None:
        _CLOSED["body_timeout"].inc()
        req = self._parsing
        cycle = req.cycle if req is not None else None
        if (
            req is not None
            and req is self._current
            and cycle is not None
            and not cycle.response_started
        ):
            detail = f"The request body did not arrive within {self.limits.body_timeout_s:g} s; send it at once."
            cycle.refuse(
                problem_document(
                    408, "request-timeout", "Request timeout", detail, cycle.scope["path"]
                )
            )
        self.transport.close()

    # -- the fast path -------------------------------------------------------------------

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
    protocol.early_refusal = refusal_of(app)  # API refusals before the app (server/defense.py)
    return protocol
