"""How the HTTP/1.1 driver (origin/http1.py) answers what the listener rules
claimed (and the lean API answers, origin/lean_api.py): a :class:`Rendered` answer written as one buffer, a :class:`Wait`
parked on the live window (reading paused) until its position is published or
its timer fires, a :class:`Stream` (live.aac) attached to the progressive hub.
A mixin of the driver's protocol: it writes to the connection's transport and
tells the connection (``finish``) when an answer is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from functools import partial
from typing import Any, ClassVar

from townhall import metrics
from townhall.origin.asgi_cycle import Request
from townhall.origin.chunked import LAST_CHUNK
from townhall.origin.lean_api import LeanCall
from townhall.origin.request_counts import COUNTS as COUNTS
from townhall.origin.rules import FastPath, Rendered, Stream, Wait
from townhall.origin.wire import CHUNKED, CLOSE, CRLF, STATUS_LINE, server_lines

_HEAD = b"HEAD"


class FastAnswers:
    """The fast answers of one connection (mixed into the driver's protocol)."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    server_state: Any
    # status line + the server's lines per status; rebuilt when uvicorn renews
    # its default headers (the Date, once a second)
    _prefix_source: ClassVar[object] = None
    _prefixes: ClassVar[dict[int, bytes]] = {}

    def finish(self, req: Request) -> None:
        raise NotImplementedError

    def _current_is(self, req: Request) -> bool:
        raise NotImplementedError

    def _pause_reading(self) -> None:
        raise NotImplementedError

    def _to_app(self, req: Request) -> None:
        raise NotImplementedError

    def _lean_answer(self, req: Request, call: LeanCall) -> None:
        raise NotImplementedError

    def _answer(self, req: Request) -> None:
        decision = req.decision
        if isinstance(decision, Rendered):
            self._send(req, decision)
        elif isinstance(decision, Wait):
            if decision.window.ready(decision.position):
                self._respond(req, decision.answer())
            else:
                self._pause_reading()
                req.waiter = decision.window.park(
                    decision.position, partial(self._woken, req), decision.timeout_s
                )
        elif isinstance(decision, Stream):
            self._stream(req, decision)
        elif isinstance(decision, LeanCall):
            self._lean_answer(req, decision)

    def _woken(self, req: Request, published: bool) -> None:
        req.waiter = None
        if not self._current_is(req) or self.transport.is_closing():
            return
        decision = req.decision
        assert isinstance(decision, Wait)
        if published:
            self._respond(req, decision.answer())
        else:
            self._send(req, decision.timeout())

    def _respond(self, req: Request, rendered: Rendered | None) -> None:
        if rendered is None:
            # e.g. the awaited part never came because the space ended: the app says
            metrics.FASTPATH_FALLBACKS.inc()
            req.decision = None
            self._to_app(req)
        else:
            self._send(req, rendered)

    def _prefix(self, status: int) -> bytes:
        cls = type(self)
        defaults = self.server_state.default_headers
        if cls._prefix_source is not defaults:
            cls._prefix_source = defaults
            cls._prefixes = {}
        prefix = cls._prefixes.get(status)
        if prefix is None:
            prefix = cls._prefixes[status] = STATUS_LINE[status] + server_lines(defaults)
        return prefix

    def _send(self, req: Request, rendered: Rendered) -> None:
        prefix = self._prefix(rendered.status)
        head_only = req.method == _HEAD
        if req.keep_alive and not head_only:
            data = prefix + rendered.tail
        else:
            data = b"".join(
                (
                    prefix,
                    rendered.head,
                    b"" if req.keep_alive else CLOSE,
                    CRLF,
                    b"" if head_only else rendered.body,
                )
            )
        self.transport.write(data)
        COUNTS.add(rendered.count_key, rendered.kind, len(rendered.body), self.loop)
        req.retry_after_s = rendered.retry_after_s
        req.status = rendered.status
        self.finish(req)

    def _stream(self, req: Request, stream: Stream) -> None:
        head = (self._prefix(200), stream.head, b"" if req.keep_alive else CLOSE, CHUNKED, CRLF)
        self.transport.write(b"".join(head))
        # bound what the kernel holds for a listener too (it doubles the value)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, stream.hub.max_lag_bytes // 2)
        COUNTS.add("progressive 200", "progressive", 0, self.loop)
        req.sink = stream.hub.attach(self.transport, partial(self._stream_ended, req))
        if req.sink is None:  # the space ended meanwhile
            self.transport.write(LAST_CHUNK)
            self.finish(req)

    def _stream_ended(self, req: Request, dropped: bool) -> None:
        req.sink = None
        if not dropped:  # (dropped: the hub aborted the transport; connection_lost follows)
            self.finish(req)

    def _abandon(self, req: Request) -> None:
        if req.waiter is not None:
            req.waiter.cancel()
            req.waiter = None
        if req.sink is not None:
            stream = req.decision
            assert isinstance(stream, Stream)
            stream.hub.detach(req.sink)
            req.sink = None


_log = logging.getLogger("townhall.access")


def decide(
    fast_path: FastPath,
    method: bytes,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
    peer: str | None = None,
) -> object:
    """The rules' fast answer for a request target (origin-form only: anything
    else is not claimed); a rules failure is logged, counted and left to the app."""
    path, _, query = url.partition(b"?")
    if b"#" in query:
        query = query.partition(b"#")[0]
    try:
        cookie = None
        if fast_path.gate is not None:  # capped spaces: the listener token may be a cookie
            cookie = next((v for n, v in headers if n == b"cookie"), None)
        return fast_path.decide(method, path, query, cookie, (peer, headers))
    except Exception:
        _log.exception("fast path failed to decide on %r; the app answers", url)
        metrics.FASTPATH_FALLBACKS.inc()
        return None
