"""One request handed by the HTTP/1.1 driver (origin/http1.py) to the ASGI
app: the scope, ``receive`` (the body as it arrives, then ``http.disconnect``)
and ``send`` (the response written as uvicorn writes it, so an answer's bytes
do not depend on which server sent it).

The driver owns the connection; a cycle only writes to its transport and
tells the driver when the response is complete (``Host.finish``). A cycle
whose client went away drops what the app still sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httptools

from townhall import metrics
from townhall.origin.request_counts import COUNTS
from townhall.origin.wire import CHUNKED, CLOSE, CONTINUE, CRLF, STATUS_LINE, problem_document
from townhall.origin.wire import problem_bytes as _problem_bytes

log = logging.getLogger("townhall.http")

Message = dict[str, Any]
ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[object],
]


class Request:
    """One parsed request on a connection (its head, and its body as it comes)."""

    __slots__ = (
        "body",
        "body_bytes",
        "cycle",
        "decision",
        "expect_continue",
        "head_too_large",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "more_body",
        "retry_after_s",
        "sink",
        "started_s",
        "status",
        "too_large",
        "upgrade",
        "url",
        "waiter",
    )

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: str,
        keep_alive: bool,
        started_s: float,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.started_s = started_s
        self.expect_continue = False
        self.upgrade = False
        self.head_too_large = False
        self.too_large = False
        self.more_body = True
        self.body = bytearray()
        self.body_bytes = 0
        self.decision: object = None
        self.cycle: AppCycle | None = None
        self.waiter: Any = None
        self.sink: Any = None
        self.retry_after_s = 0.0  # a 429's Retry-After (origin/retry_penalty.py)
        self.status = 0  # the answer's, once it started


class Host(Protocol):
    """What a cycle needs from the driver's connection."""

    transport: asyncio.Transport
    write_paused: bool

    def default_headers(self) -> list[tuple[bytes, bytes]]: ...

    def want_body(self) -> None: ...

    async def drain(self) -> None: ...

    def finish(self, request: Request) -> None: ...


def scope_of(
    request: Request,
    *,
    root_path: str,
    server: tuple[str, int] | None,
    client: tuple[str, int] | None,
    scheme: str,
    app_state: dict[str, Any],
) -> dict[str, Any]:
    """The ASGI http scope (spec 2.3) of ``request``."""
    parsed = httptools.parse_url(request.url)
    raw_path = parsed.path
    path = raw_path.decode("ascii")
    if "%" in path:
        path = urllib.parse.unquote(path)
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version,
        "server": server,
        "client": client,
        "scheme": scheme,
        "method": request.method.decode("ascii"),
        "root_path": root_path,
        "path": root_path + path,
        "raw_path": root_path.encode("ascii") + raw_path,
        "query_string": parsed.query or b"",
        "headers": request.headers,
        "state": app_state.copy(),
    }


class AppCycle:
    """The ASGI app answering one request; ``run`` is the task's body."""

    __slots__ = (
        "body_done",
        "chunked",
        "disconnected",
        "event",
        "expected_length",
        "head_only",
        "host",
        "request",
        "response_complete",
        "response_started",
        "scope",
        "waiting_continue",
    )

    def __init__(self, host: Host, request: Request, scope: dict[str, Any]) -> None:
        self.host = host
        self.request = request
        self.scope = scope
        self.head_only = request.method == b"HEAD"
        self.event = asyncio.Event()
        self.disconnected = False
        self.waiting_continue = request.expect_continue
        self.body_done = False  # the last body message was handed to the app
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.expected_length = 0

    def wake(self) -> None:
        self.event.set()

    def gone(self) -> None:
        """The client went away (or the driver cut the request)."""
        self.disconnected = True
        self.event.set()

    async def run(self, app: ASGIApp) -> None:
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:  # the task's top level: log, count, answer
            metrics.HTTP_APP_ERRORS.inc()
            log.error("exception in the ASGI app on %s", self.scope["path"], exc_info=exc)
            if not self.response_started and not self.disconnected:
                self._internal_error()
            else:  # cut mid-answer, or answered (a 500 by the app's handler) and re-raised
                self.host.transport.close()
        else:
            if result is not None:
                log.error("the ASGI app returned %r instead of None", result)
                self.host.transport.close()
            elif not self.response_started and not self.disconnected:
                metrics.HTTP_APP_ERRORS.inc()
                log.error("the ASGI app returned without answering %s", self.scope["path"])
                self._internal_error()
            elif not self.response_complete and not self.disconnected:
                metrics.HTTP_APP_ERRORS.inc()
                log.error("the ASGI app returned without completing %s", self.scope["path"])
                self.host.transport.close()

    def _internal_error(self) -> None:
        document = problem_document(
            500,
            "internal",
            "Internal error",
            "The server failed to answer this request; try again, and report it if it persists.",
            self.scope["path"],
        )
        self.refuse(document)

    def refuse(self, document: dict[str, Any], retry_after_s: float | None = None) -> None:
        """Answer with a problem (before the app started a response) and close."""
        self.response_started = self.response_complete = True
        self.request.keep_alive = False
        COUNTS.app(self.scope["path"], int(document["status"]))
        self.host.transport.write(
            _problem_bytes(document, self.host.default_headers(), retry_after_s=retry_after_s)
        )
        self.event.set()
        self.host.finish(self.request)

    # -- ASGI ------------------------------------------------------------------------

    async def receive(self) -> Message:
        if self.waiting_continue:
            self.waiting_continue = False
            if not self.host.transport.is_closing():
                self.host.transport.write(CONTINUE)
        request = self.request
        while not (self.disconnected or self.response_complete):
            if not self.body_done and (request.body or not request.more_body):
                break
            if not self.body_done:
                self.host.want_body()
            self.event.clear()
            await self.event.wait()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body = bytes(request.body)
        request.body.clear()
        if not request.more_body:
            self.body_done = True
        else:
            self.host.want_body()
        return {"type": "http.request", "body": body, "more_body": request.more_body}

    async def send(self, message: Message) -> None:
        host = self.host
        if host.write_paused and not self.disconnected:
            await host.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected ASGI message 'http.response.start', got {kind!r}")
            self._start(message)
        elif not self.response_complete:
            if kind != "http.response.body":
                raise RuntimeError(f"expected ASGI message 'http.response.body', got {kind!r}")
            self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"ASGI message {kind!r} sent after the response was complete")

    def _start(self, message: Message) -> None:
        self.response_started = True
        self.waiting_continue = False
        status = int(message["status"])
        COUNTS.app(self.scope["path"], status)
        request = self.request
        request.status = status
        content = [STATUS_LINE.get(status) or b"HTTP/1.1 %d \r\n" % status]
        content.extend(name + b": " + value + CRLF for name, value in self.host.default_headers())
        has_close = False
        length_known = False
        for raw_name, value in message.get("headers", ()):
            name = raw_name.lower()
            if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
                raise RuntimeError("invalid HTTP header: it contains a line break")
            if name == b"content-length" and not length_known and not self.chunked:
                self.expected_length = int(value.decode())
                length_known = True
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_length = 0
                self.chunked = True
            elif name == b"retry-after" and status in (400, 429):  # a refusal with a wait
                with contextlib.suppress(ValueError):
                    request.retry_after_s = max(0.0, float(value))
            elif name == b"connection" and b"close" in (
                token.strip().lower() for token in value.split(b",")
            ):
                request.keep_alive = False
                has_close = True
            content.append(name + b": " + value + CRLF)
        if not request.keep_alive and not has_close:
            content.append(CLOSE)
        if (
            not length_known
            and not self.chunked
            and not self.head_only
            and status not in (204, 304)
        ):
            self.chunked = True
            content.append(CHUNKED)
        content.append(CRLF)
        self.host.transport.write(b"".join(content))

    def _body(self, body: bytes, more_body: bool) -> None:
        transport = self.host.transport
        if self.head_only:
            self.expected_length = 0
        elif self.chunked:
            if body:
                transport.write(
                    b"%x\r\n%b\r\n" % (len(body), body) + (b"" if more_body else b"0\r\n\r\n")
                )
            elif not more_body:
                transport.write(b"0\r\n\r\n")
        else:
            if len(body) > self.expected_length:
                raise RuntimeError("response content longer than Content-Length")
            self.expected_length -= len(body)
            if body:
                transport.write(body)
        if not more_body:
            if self.expected_length != 0:
                raise RuntimeError("response content shorter than Content-Length")
            self.response_complete = True
            self.event.set()
            self.host.finish(self.request)
