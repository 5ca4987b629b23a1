"""uvicorn's httptools protocol with the listener plane's fast path in front.

For each complete GET/HEAD request that ``FastPath.decide`` claims, the
protocol writes pre-rendered bytes straight to the transport: no ASGI scope, no
task, no framework. A blocking request is parked on the live window's shared
wake-up for its position (reading paused meanwhile) and answered by the one
publish of that part, or with 503 by the position's one timer. A live.aac
request gets its response head and is attached to the program's progressive
hub, which writes every batch of audio to the transport itself.

Everything else takes uvicorn's normal path, untouched. A fast request's
:class:`FastCycle` takes uvicorn's ``cycle`` slot (uvicorn keeps the newest
request there) and looks to uvicorn like a response still being sent, so
uvicorn's own pipelining logic queues what the client sends behind it and
starts that once the fast answer is complete. ``_fast`` is the fast request in
progress, whatever was parsed after it. The status line and uvicorn's default headers (Date) are written as
uvicorn would, so both paths send the same bytes.

Use ``protocol_for(fast_path)`` as ``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import urllib.parse
from functools import partial
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from townhall import metrics
from townhall.config import Settings
from townhall.origin.chunked import LAST_CHUNK
from townhall.origin.fanout import StreamSink
from townhall.origin.rules import Decision, FastPath, Rendered, Stream, Wait, programs_of
from townhall.origin.window import Waiter

log = logging.getLogger("townhall.access")

_CLOSE = b"connection: close\r\n"
_CHUNKED = b"transfer-encoding: chunked\r\n"
_KINDS = ("part", "segment", "init", "playlist", "problem", "progressive")
_BYTES = {kind: metrics.LISTENER_BYTES.labels(kind=kind) for kind in _KINDS[:4]}
_ANSWERED = {kind: metrics.FASTPATH_RESPONSES.labels(kind=kind) for kind in _KINDS}


class _Counts:
    """Answers and bytes counted as plain ints on the hot path and added to the
    Prometheus counters at most a second later (a locked ``inc`` per request
    costs more than the rest of the bookkeeping)."""

    def __init__(self) -> None:
        self.answered = dict.fromkeys(_KINDS, 0)
        self.bytes = dict.fromkeys(_KINDS, 0)
        self._timer: asyncio.TimerHandle | None = None

    def add(self, kind: str, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.answered[kind] += 1
        self.bytes[kind] += size
        if self._timer is None:
            self._timer = loop.call_later(1.0, self.flush)

    def flush(self) -> None:
        """Add what was counted to the Prometheus counters (tests call it too)."""
        self._timer = None
        for kind, n in self.answered.items():
            if n:
                _ANSWERED[kind].inc(n)
                self.answered[kind] = 0
        for kind, size in self.bytes.items():
            if size and kind in _BYTES:
                _BYTES[kind].inc(size)
            self.bytes[kind] = 0


COUNTS = _Counts()


class _NoEvent:
    """uvicorn sets its cycle's message_event on disconnect; nothing waits here."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


class FastCycle:
    """One request answered by the fast path, in uvicorn's ``cycle`` slot."""

    __slots__ = (
        "decision",
        "disconnected",
        "head_only",
        "headers",
        "http_version",
        "keep_alive",
        "message_event",
        "method",
        "response_complete",
        "sink",
        "started",
        "url",
        "waiter",
    )

    def __init__(
        self,
        decision: Decision,
        method: bytes,
        http_version: str,
        keep_alive: bool,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.decision = decision
        self.method = method
        self.head_only = method == b"HEAD"
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.url = url
        self.headers = headers
        self.started = False
        self.response_complete = False
        self.disconnected = False
        self.message_event = _NO_EVENT
        self.waiter: Waiter | None = None
        self.sink: StreamSink | None = None


class FastHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring. ``fast_path`` is bound by ``protocol_for``."""

    fast_path: ClassVar[FastPath]
    # status line + uvicorn's default headers, per status; rebuilt when uvicorn
    # renews its default headers (the Date, once a second)
    _prefix_source: ClassVar[object] = None
    _prefixes: ClassVar[dict[int, bytes]] = {}

    # -- parser callbacks ------------------------------------------------------------

    _fast: FastCycle | None = None
    # keep-alive after fast answers: one lazy timer per connection that checks
    # the idle time, instead of uvicorn's call_later + cancel per request
    _idle_since: float | None = None
    _idle_timer: asyncio.TimerHandle | None = None

    def _unset_keepalive_if_required(self) -> None:
        super()._unset_keepalive_if_required()
        self._idle_since = None

    def _idle_check(self) -> None:
        self._idle_timer = None
        since = self._idle_since
        if since is None or self.transport.is_closing():
            return  # busy (re-armed when its answer is complete) or gone
        left_s = since + self.timeout_keep_alive - self.loop.time()
        if left_s <= 0:
            self.transport.close()
        else:
            self._idle_timer = self.loop.call_later(left_s, self._idle_check)

    def on_message_begin(self) -> None:
        # uvicorn builds the ASGI scope here; only requests for the app need one
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        cycle = self.cycle
        if (cycle is None or cycle.response_complete) and not self.pipeline:
            parser = self.parser
            method = parser.get_method()
            if (method == b"GET" or method == b"HEAD") and not parser.should_upgrade():
                decision = self._decide(method)
                if decision is not None:
                    version = parser.get_http_version()
                    keep_alive = version != "1.0" and parser.should_keep_alive()
                    fast = FastCycle(decision, method, version, keep_alive, self.url, self.headers)
                    self.cycle = self._fast = fast  # type: ignore[assignment]
                    return
        self.scope = self._new_scope()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if isinstance(self.cycle, FastCycle):
            return  # a GET's body means nothing here
        super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if isinstance(cycle, FastCycle):
            if not cycle.started:
                cycle.started = True
                self._answer(cycle)
            return
        super().on_message_complete()

    # -- connection events -----------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        cycle = self._fast
        if cycle is not None and not cycle.response_complete:
            self._abandon(cycle)
            cycle.disconnected = True
        super().connection_lost(exc)

    def shutdown(self) -> None:
        cycle = self._fast
        if cycle is not None and not cycle.response_complete:
            if cycle.sink is not None:
                # an endless stream: end it properly now rather than at the drain timeout
                self._abandon(cycle)
                cycle.response_complete = True
                self._fast = None
                self.transport.write(LAST_CHUNK)
                self.transport.close()
            else:
                cycle.keep_alive = False  # parked: answered soon, then closed
            return
        super().shutdown()

    # -- the fast path -----------------------------------------------------------------

    def _decide(self, method: bytes) -> Decision:
        path, _, query = self.url.partition(b"?")
        if b"#" in query:
            query = query.partition(b"#")[0]
        try:
            # origin-form only ("/spaces/..."); anything else is not claimed
            return self.fast_path.decide(method, path, query)
        except Exception:
            log.exception("fast path failed to decide on %r; the app answers", self.url)
            metrics.FASTPATH_FALLBACKS.inc()
            return None

    def _answer(self, cycle: FastCycle) -> None:
        decision = cycle.decision
        if isinstance(decision, Rendered):
            self._send(cycle, decision)
        elif isinstance(decision, Wait):
            if decision.window.ready(decision.position):
                self._respond(cycle, decision.answer())
            else:
                self.flow.pause_reading()
                cycle.waiter = decision.window.park(
                    decision.position, partial(self._woken, cycle), decision.timeout_s
                )
        elif isinstance(decision, Stream):
            self._stream(cycle, decision)

    def _woken(self, cycle: FastCycle, published: bool) -> None:
        cycle.waiter = None
        if cycle.response_complete or self.transport.is_closing():
            return
        decision = cycle.decision
        assert isinstance(decision, Wait)
        if published:
            self._respond(cycle, decision.answer())
        else:
            self._send(cycle, decision.timeout())

    def _respond(self, cycle: FastCycle, rendered: Rendered | None) -> None:
        if rendered is None:
            self._to_app(cycle)
        else:
            self._send(cycle, rendered)

    def _prefix(self, status: int) -> bytes:
        cls = type(self)
        defaults = self.server_state.default_headers
        if cls._prefix_source is not defaults:
            cls._prefix_source = defaults
            cls._prefixes = {}
        prefix = cls._prefixes.get(status)
        if prefix is None:
            lines = b"".join(name + b": " + value + b"\r\n" for name, value in defaults)
            prefix = cls._prefixes[status] = STATUS_LINE[status] + lines
        return prefix

    def _send(self, cycle: FastCycle, rendered: Rendered) -> None:
        prefix = self._prefix(rendered.status)
        if cycle.keep_alive and not cycle.head_only:
            data = prefix + rendered.tail
        else:
            data = b"".join(
                (
                    prefix,
                    rendered.head,
                    b"" if cycle.keep_alive else _CLOSE,
                    b"\r\n",
                    b"" if cycle.head_only else rendered.body,
                )
            )
        self.transport.write(data)
        COUNTS.add(rendered.kind, len(rendered.body), self.loop)
        self._complete(cycle)

    def _complete(self, cycle: FastCycle) -> None:
        """uvicorn's on_response_complete, with the lazy keep-alive timer."""
        cycle.response_complete = True
        self._fast = None
        if not cycle.keep_alive:
            self.transport.close()
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            app_cycle, app = self.pipeline.pop()
            self._start_asgi_task(app_cycle, app)
            return
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _stream(self, cycle: FastCycle, stream: Stream) -> None:
        self.transport.write(
            b"".join(
                (
                    self._prefix(200),
                    stream.head,
                    b"" if cycle.keep_alive else _CLOSE,
                    _CHUNKED,
                    b"\r\n",
                )
            )
        )
        # bound what the kernel holds for a listener too (it doubles the value)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, stream.hub.max_lag_bytes // 2)
        COUNTS.add("progressive", 0, self.loop)
        cycle.sink = stream.hub.attach(self.transport, partial(self._stream_ended, cycle))
        if cycle.sink is None:  # the space ended meanwhile
            self.transport.write(LAST_CHUNK)
            self._complete(cycle)

    def _stream_ended(self, cycle: FastCycle, dropped: bool) -> None:
        cycle.sink = None
        if dropped:  # the hub aborted the transport: connection_lost follows
            cycle.response_complete = True
            self._fast = None
        elif not cycle.response_complete:
            self._complete(cycle)

    def _abandon(self, cycle: FastCycle) -> None:
        if cycle.waiter is not None:
            cycle.waiter.cancel()
            cycle.waiter = None
        if cycle.sink is not None:
            stream = cycle.decision
            assert isinstance(stream, Stream)
            stream.hub.detach(cycle.sink)
            cycle.sink = None

    # -- handing a request to the app --------------------------------------------------

    def _new_scope(self) -> Any:
        """The scope uvicorn's on_message_begin makes (which ours skips)."""
        return {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }

    def _to_app(self, cycle: FastCycle) -> None:
        """A parked request the app answers after all (e.g. its part never came
        because the space ended): an ASGI cycle as uvicorn would have made."""
        self.headers = cycle.headers
        scope = self._new_scope()
        parsed = httptools.parse_url(cycle.url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope.update(
            {
                "method": cycle.method.decode("ascii"),
                "http_version": cycle.http_version,
                "path": self.root_path + path,
                "raw_path": self.root_path.encode("ascii") + raw_path,
                "query_string": parsed.query or b"",
            }
        )
        self.scope = scope
        app_cycle = RequestResponseCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=cycle.keep_alive,
            on_response=self.on_response_complete,
        )
        app_cycle.more_body = False
        cycle.response_complete = True
        self._fast = None
        current: object = self.cycle
        if current is cycle:  # else requests parsed later hold the slot (and wait)
            self.cycle = app_cycle
        metrics.FASTPATH_FALLBACKS.inc()
        self._start_asgi_task(app_cycle, self.app)


def protocol_for(fast_path: FastPath) -> type[FastHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` bound to ``fast_path``."""

    class TownhallHttpProtocol(FastHttpToolsProtocol):
        pass

    TownhallHttpProtocol.fast_path = fast_path
    return TownhallHttpProtocol


def protocol_for_app(app: Any, settings: Settings) -> type[FastHttpToolsProtocol]:
    """The protocol for an app made by ``create_app`` (rooms found through its
    services once its lifespan has started)."""
    return protocol_for(FastPath(settings, programs_of(app)))
