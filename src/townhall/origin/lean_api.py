"""The lean API answers of the HTTP/1.1 driver (origin/http1.py): the one seam
through which API requests are answered without the ASGI app (issue 10).

A :class:`LeanApi` holds, registered once (``server/lean.py`` builds the app's):

- *fronts*: checks run on every request whose target starts with a prefix
  (the early refusals of ``/api/``: a cached 429), first;
- *routes*: ``{prefix}{key}{suffix}`` for one method, ``key`` one path segment
  (a space id), each answered by a handler ``(peer, request, key)`` that
  returns a :class:`Rendered` answer, ``None`` (the app answers after all) or
  an awaitable of either (run as a task of the server). A route with
  ``body=True`` is called once the request body is in. A route with a
  :class:`ConnBudget` answers at most its rate per connection (a polled
  document: a page asks it once per max-age; a flood pipelines it on one
  connection): over it, the budget's 429, before the handler.

Everything here is driver-side and knows nothing of the app: the handlers are
the app's, found through it lazily. The documented FastAPI routes stay and
share the handlers' core functions, so both paths answer the same bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from townhall import metrics
from townhall.origin.answers import Rendered
from townhall.origin.asgi_cycle import Request
from townhall.origin.request_counts import COUNTS
from townhall.origin.wire import CONTINUE, problem_bytes, problem_document
from townhall.policy.netbuckets import NetBuckets

log = logging.getLogger("townhall.http")

LeanResult = Rendered | None | Awaitable[Rendered | None]
Handler = Callable[[str | None, Request, str], LeanResult]
Front = Callable[[str | None, Request], Rendered | None]
LEAN_MAX_BODY_BYTES = 16 * 1024  # a longer body goes on to the app as it comes
BUDGET_REFUSED = metrics.RATE_LIMITED.labels(limit="per-connection")


@dataclass(frozen=True, slots=True, eq=False)
class ConnBudget:
    """At most ``count`` requests of a route per ``period_s`` on one connection
    (burst ``count``); ``refuse(wait_s, path)`` renders the answer to one over it;
    ``exempt(peer)``: a peer whose connections carry many clients (a trusted proxy)."""

    count: int
    period_s: float
    refuse: Callable[[float, str], Rendered]
    exempt: Callable[[str | None], bool] | None = None


@dataclass(frozen=True, slots=True)
class LeanRoute:
    method: bytes
    prefix: bytes
    suffix: bytes
    handler: Handler
    body: bool
    budget: ConnBudget | None = None


@dataclass(frozen=True, slots=True)
class LeanCall:
    """A request claimed by a lean route, answered once its body is in."""

    route: LeanRoute
    key: str


class LeanApi:
    """The registry (see the module docstring); ``decide`` is the driver's one call."""

    def __init__(self) -> None:
        self._fronts: list[tuple[bytes, Front]] = []
        self._routes: dict[bytes, list[LeanRoute]] = {}

    def front(self, prefix: bytes, check: Front) -> None:
        """Run ``check`` first on every request whose target starts with ``prefix``."""
        self._fronts.append((prefix, check))

    def route(
        self,
        methods: tuple[bytes, ...],
        prefix: bytes,
        suffix: bytes,
        handler: Handler,
        *,
        body: bool,
        budget: ConnBudget | None = None,
    ) -> None:
        """Answer ``{prefix}{key}{suffix}`` (``key`` one segment, no escapes) by
        ``handler``, within ``budget`` per connection if given."""
        for method in methods:
            self._routes.setdefault(method, []).append(
                LeanRoute(method, prefix, suffix, handler, body, budget)
            )

    def decide(self, peer: str | None, req: Request) -> Rendered | LeanCall | None:
        """A front's answer, a claimed route, or None (not for the lean answers)."""
        url = req.url
        for prefix, check in self._fronts:
            if url.startswith(prefix) and (found := check(peer, req)) is not None:
                return found
        routes = self._routes.get(req.method)
        if not routes:
            return None
        path = url.partition(b"?")[0]
        for route in routes:
            prefix, suffix = route.prefix, route.suffix
            if (
                len(path) > len(prefix) + len(suffix)
                and path.startswith(prefix)
                and path.endswith(suffix)
            ):
                key = path[len(prefix) : len(path) - len(suffix)]
                if b"/" in key or b"%" in key or not key.isascii():
                    return None
                return LeanCall(route, key.decode("ascii"))
        return None


_INTERNAL = problem_document(
    500,
    "internal",
    "Internal error",
    "The server failed to answer this request; try again, and report it if it persists.",
    None,
)


class LeanAnswers:
    """The lean answers of one connection (mixed into the driver's protocol)."""

    lean: ClassVar[LeanApi | None] = None
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    server_state: Any
    _peer: str | None
    _budgets: dict[ConnBudget, NetBuckets | None] | None  # this connection's (None: exempt)

    if TYPE_CHECKING:  # the protocol's own, and FastAnswers' (origin/fast_answers.py)

        def finish(self, req: Request) -> None: ...

        def _current_is(self, req: Request) -> bool: ...

        def _to_app(self, req: Request) -> None: ...

        def _send(self, req: Request, rendered: Rendered) -> None: ...

        def _answer(self, req: Request) -> None: ...

    def _lean(self, req: Request) -> bool:
        """Claim ``req`` for the lean answers (True), or leave it to the app."""
        lean = self.lean
        if lean is None:
            return False
        decision = lean.decide(self._peer, req)
        if decision is None:
            return False
        if isinstance(decision, LeanCall) and decision.route.budget is not None:
            decision = self._within(decision.route.budget, req) or decision
        if isinstance(decision, LeanCall) and not decision.route.body and not req.more_body:
            return self._call(req, decision)
        req.decision = decision
        if not req.more_body:
            self._answer(req)
        elif isinstance(decision, LeanCall) and req.expect_continue:
            req.expect_continue = False
            self.transport.write(CONTINUE)
        return True

    def _within(self, budget: ConnBudget, req: Request) -> Rendered | None:
        """None when ``req`` is within this connection's ``budget`` (counted),
        else the budget's refusal."""
        budgets = self._budgets
        if budgets is None:
            budgets = self._budgets = {}
        if budget in budgets:
            buckets = budgets[budget]
        else:
            exempt = budget.exempt is not None and budget.exempt(self._peer)
            buckets = budgets[budget] = (
                None if exempt else NetBuckets(budget.count, budget.period_s, max_keys=1)
            )
        if buckets is None:
            return None
        wait_s = buckets.hit("", self.loop.time())
        if not wait_s:
            return None
        BUDGET_REFUSED.inc()
        return budget.refuse(wait_s, req.url.partition(b"?")[0].decode("latin-1"))

    def _lean_body(self, req: Request, body: bytes) -> None:
        """A body chunk of a claimed request: kept, or the app takes over."""
        req.body += body
        if len(req.body) > LEAN_MAX_BODY_BYTES:
            req.decision = None
            self._to_app(req)

    def _lean_answer(self, req: Request, call: LeanCall) -> None:
        """The body is in: the route answers (or hands the request to the app)."""
        if not self._call(req, call):
            req.decision = None
            self._to_app(req)

    def _call(self, req: Request, call: LeanCall) -> bool:
        try:
            result = call.route.handler(self._peer, req, call.key)
        except Exception:
            log.exception("a lean answer failed on %r; answered 500", req.url)
            self._internal(req)
            return True
        if result is None:
            return False
        if isinstance(result, Rendered):
            req.decision = result
            self._send(req, result)
            return True
        req.decision = call
        task = self.loop.create_task(self._later(req, result))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True

    async def _later(self, req: Request, pending: Awaitable[Rendered | None]) -> None:
        try:
            result = await pending
        except Exception:
            log.exception("a lean answer failed on %r; answered 500", req.url)
            if self._current_is(req) and not self.transport.is_closing():
                self._internal(req)
            return
        if not self._current_is(req) or self.transport.is_closing():
            return  # the client went away meanwhile
        if result is None:
            req.decision = None
            self._to_app(req)
        else:
            req.decision = result
            self._send(req, result)

    def _internal(self, req: Request) -> None:
        metrics.HTTP_APP_ERRORS.inc()
        COUNTS.add("api 500", "api", 0, self.loop)
        req.keep_alive = False
        self.transport.write(problem_bytes(_INTERNAL, self.server_state.default_headers))
        self.finish(req)
