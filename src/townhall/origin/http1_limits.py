"""The first layer of issue 10's defense in the HTTP/1.1 driver
(origin/http1.py): the per-connection limits of one server (:class:`DriverLimits`)
and the driver's one timer per connection (header, body and idle deadlines), with
the answers of a request or connection over a limit (408, 413, 431, 501, 400) and
the counters of each refusal or cut. A mixin of the driver's protocol.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar

from townhall import metrics
from townhall.config import Settings
from townhall.origin.asgi_cycle import Request
from townhall.origin.conn_limits import ConnLimits, CutAnswers, fd_soft_limit, total_cap
from townhall.origin.peer_gone import peer_closed
from townhall.origin.request_counts import COUNTS
from townhall.origin.retry_penalty import UNAUTHORIZED_WAIT_S, RetryPenalty
from townhall.origin.wire import problem_bytes, problem_document

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
    "peer_gone_paused",
)
CLOSED = {reason: metrics.HTTP_CONNECTIONS_CLOSED.labels(reason=reason) for reason in _REASONS}
REFUSED = {
    reason: metrics.HTTP_CONNECTIONS_REFUSED.labels(reason=reason)
    for reason in ("network", "total")
}
RETRY_AFTER_S = 5.0
REFUSED_PAUSES = metrics.HTTP_REFUSED_PAUSES
CUTS = CutAnswers()  # the answers of a cut connection, rendered once per Date line
# over a connection cap: no Date line, rendered once (the refusal must be cheap)
REFUSAL = problem_bytes(
    problem_document(
        503,
        "too-many-connections",
        "Too many connections",
        "Too many connections are open from your network or to this server; retry in a few seconds.",
        None,
    ),
    [],
    retry_after_s=RETRY_AFTER_S,
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
    refused_pause_max_s: float = 0.0
    refused_pause_check_s: float = 0.0

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
            refused_pause_max_s=settings.http_refused_pause_max_s,
            refused_pause_check_s=settings.http_refused_pause_check_s,
        )


class LimitsMixin:
    """The limits of one connection (mixed into the driver's protocol)."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    server_state: Any
    limits: ClassVar[DriverLimits]
    _timer: asyncio.TimerHandle | None
    _head_since: float | None
    _body_since: float | None
    _idle_since: float | None
    _current: Request | None
    _peer: str | None
    _parsing: Request | None
    _penalty: RetryPenalty | None
    _pause_timer: asyncio.TimerHandle | None
    _pause_end_s: float

    def finish(self, req: Request) -> None:
        raise NotImplementedError

    def _next(self) -> None:
        raise NotImplementedError

    def _pause_reading(self) -> None:
        raise NotImplementedError

    # -- a connection that ignores Retry-After (origin/retry_penalty.py) -------------

    def _paused_for_refusals(self, req: Request) -> bool:
        """After ``req``'s answer: stop reading the connection if ``req`` was
        refused (429, 401) while an earlier refusal's wait was running (True:
        paused; the requests already read wait, the pause's end goes on with them)."""
        penalty = self._penalty
        wait_s = req.retry_after_s or (UNAUTHORIZED_WAIT_S if req.status == 401 else 0.0)
        if not wait_s:
            if penalty is not None and req.status < 400:
                penalty.answered(req.started_s)
            return False
        max_s = self.limits.refused_pause_max_s
        if max_s <= 0:
            return False
        if penalty is None:
            # a trusted proxy's connection carries many clients: never paused
            # (its clients' own networks are limited by the buckets)
            peer = self._peer
            trusted = peer is not None and self.limits.conns.trusted_peer(peer)
            penalty = self._penalty = RetryPenalty(0.0 if trusted else max_s)
        pause_s = penalty.refused(req.started_s, self.loop.time(), wait_s, random.random())
        if pause_s <= 0:
            return False
        REFUSED_PAUSES.inc()
        self._pause_reading()
        if self._pause_timer is not None:
            self._pause_timer.cancel()
        self._pause_end_s = self.loop.time() + pause_s
        self._arm_pause()
        return True

    def _arm_pause(self) -> None:
        """The pause's timer: at its end, or sooner to look whether the peer has
        gone meanwhile (``refused_pause_check_s``; origin/peer_gone.py)."""
        left_s = max(0.0, self._pause_end_s - self.loop.time())
        check_s = self.limits.refused_pause_check_s
        if 0 < check_s < left_s:
            self._pause_timer = self.loop.call_later(check_s, self._pause_check)
        else:
            self._pause_timer = self.loop.call_later(left_s, self._unpause)

    def _pause_check(self) -> None:
        """A paused connection's peer closed (an attacker that reconnects): close
        it now, its unread requests and its buffers with it, instead of at the
        pause's end."""
        self._pause_timer = None
        if self.transport.is_closing():
            return
        if peer_closed(self.transport.get_extra_info("socket")):
            CLOSED["peer_gone_paused"].inc()
            self.transport.abort()
            return
        self._arm_pause()

    def _unpause(self) -> None:
        self._pause_timer = None
        if self.transport.is_closing():
            return
        # the connection's deadlines start over: it was not read meanwhile
        now = self.loop.time()
        if self._head_since is not None:
            self._head_since = now
        if self._body_since is not None:
            self._body_since = now
        if self._current is None:
            self._next()

    def _head_detail(self) -> str:
        return f"The request line and headers are over {self.limits.max_head_bytes} bytes; send fewer or shorter headers."

    def _arm(self, delay_s: float) -> None:
        self._timer = self.loop.call_later(delay_s, self._check)

    def _check(self) -> None:
        """The connection's one timer: header, body and idle deadlines."""
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self._pause_timer is not None:  # not read meanwhile: no deadline runs
            self._arm(max(0.0, self._pause_end_s - now) + 0.01)
            return
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
                CLOSED["idle"].inc()
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
        CLOSED[reason].inc()
        if self._current is None and not self.transport.is_closing():
            answer = CUTS.get(status, slug, title, detail, self.server_state.default_headers)
            self.transport.write(answer)
        self.transport.close()

    def _refuse(
        self, req: Request, status: int, slug: str, title: str, detail: str, reason: str
    ) -> None:
        CLOSED[reason].inc()
        COUNTS.refused(status, self.loop)
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
            CLOSED["body_too_large"].inc()
            detail = f"The request body is larger than {self.limits.max_body_bytes} bytes; send a smaller body."
            cycle.refuse(
                problem_document(
                    413, "payload-too-large", "Payload too large", detail, cycle.scope["path"]
                )
            )
        else:
            CLOSED["body_too_large"].inc()
            self.transport.close()

    def _body_timeout(self) -> None:
        CLOSED["body_timeout"].inc()
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
