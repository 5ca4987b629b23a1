"""The app's lean API answers (issue 10), registered in one place for the
HTTP/1.1 driver's seam (``origin/lean_api.py``), each with the bytes, headers
and counting of the route it stands in for:

- every ``/api/`` request: a network, or a bearer token, whose requests keep
  being refused gets its cached 429 (``server/refusals.py``), before any work;
  a bearer token whose signature or expiry fails gets the auth shield's 401;
- ``GET /spaces/{id}/state.json`` while cached (``server/state_fast.py``),
  at most ``state_per_connection_per_10s`` per connection (a page polls it
  once per max-age; a flood pipelines it on one connection);
- ``POST /api/spaces/{id}/presence``: the beat (``api_queue.presence_beat``,
  the core of ``PresenceFront`` and of the documented route);
- ``POST /api/spaces/{id}/join``: the join gate and the join itself
  (``server/join.py``: ``join_front`` decides every refusal in memory; an
  admission is awaited in a task of the server, without the framework), with
  the auth shield's part (a network whose refusals are over its bound gets the
  shield's 429; a 401 or 429 answer counts as a refusal of the network).

Joins with an ``Authorization`` header (the shield decodes the token) and
requests carrying ``X-Forwarded-For``/``X-Forwarded-Proto`` (uvicorn's proxy
headers middleware rewrites the client in front of the app) are left to the
app, so each answer here is the app's by construction; ``lean_api_answers``
turns the presence and join answers off (tests compare both paths).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable
from functools import partial
from typing import TYPE_CHECKING, Any

from townhall import metrics, problems
from townhall.errors import TooManyRequests, TownhallError, Unauthorized
from townhall.origin.answers import Problem, Rendered, header_lines
from townhall.origin.asgi_cycle import Request
from townhall.origin.lean_api import ConnBudget, LeanApi
from townhall.policy.netbuckets import network_of
from townhall.problems import _internal_problem  # the 500 of problems.KeepAlive
from townhall.server.api_queue import _bearer, _body_token, presence_beat
from townhall.server.auth import base_url, forwarded_client, is_trusted, parse_networks
from townhall.server.join import JoinFront, answer_head, join_front, join_rest, parse_join_body
from townhall.server.refusals import REFUSED, bearer_key

if TYPE_CHECKING:
    from townhall.server.services import Services

log = logging.getLogger("townhall.access")

# a proxy's headers the lean answers leave to the app (X-Forwarded-For they
# read themselves: behind trusted_proxies, the client it names is the key)
_FORWARDED = (b"x-forwarded-proto",)
_PRESENCE = re.compile(r"/api/spaces/[^/]+/presence")  # PresenceFront's, before the shield
_NO_CONTENT = Rendered(204, b"cache-control: no-store\r\n", b"", "api")
_REFUSED_METRIC = metrics.RATE_LIMITED.labels(limit="refusals")
_PROBLEMS: dict[int, Any] = {}  # townhall_problems_total by status (labels() costs per call)


def _count_problem(status: int) -> None:
    counter = _PROBLEMS.get(status)
    if counter is None:
        counter = _PROBLEMS[status] = metrics.PROBLEMS.labels(status=str(status))
    counter.inc()


STATE_OVER_BUDGET = (
    "Too many state.json requests on one connection: the page asks it once per max-age "
    "(Cache-Control); wait the seconds Retry-After says."
)


PAGE_OVER_BUDGET = (
    "Too many page loads on one connection: wait the seconds Retry-After says, "
    "then load the page again."
)


class _OverBudget:
    """The 429 of a request over its connection's budget, rendered once per
    (path, Retry-After seconds): a flood refused thousands of times a second
    pays a dict lookup each. Bounded."""

    MAX_ENTRIES = 512

    def __init__(self, detail: str) -> None:
        self.detail = detail
        self._rendered: dict[tuple[str, int], Rendered] = {}

    def __call__(self, wait_s: float, path: str) -> Rendered:
        seconds = max(1, int(-(-wait_s // 1)))
        found = self._rendered.get((path, seconds))
        if found is None:
            if len(self._rendered) >= self.MAX_ENTRIES:
                self._rendered.clear()
            found = Problem(TooManyRequests(self.detail, retry_after_s=seconds)).render(path)
            self._rendered[(path, seconds)] = found
        return found


def lean_api_of(app: Any) -> LeanApi:
    """The lean answers of an app made by ``create_app`` (kept on ``app.state.lean_api``)."""
    lean = Lean(app)
    api = LeanApi()
    api.front(b"/api/", lean.refused)
    settings = app.state.settings
    per_10s = settings.state_per_connection_per_10s
    budget = None
    if per_10s:
        trusted = parse_networks(settings.trusted_proxies)
        budget = ConnBudget(
            per_10s,
            10.0,
            _OverBudget(STATE_OVER_BUDGET),
            exempt=partial(is_trusted, trusted) if trusted else None,
        )
    api.route((b"GET", b"HEAD"), b"/spaces/", b"/state.json", lean.state, body=False, budget=budget)
    api.route((b"POST",), b"/api/spaces/", b"/presence", lean.presence, body=True)
    api.route((b"POST",), b"/api/spaces/", b"/join", lean.join, body=True)
    if settings.pages_per_connection_per_10s:
        trusted = parse_networks(settings.trusted_proxies)
        pages = ConnBudget(
            settings.pages_per_connection_per_10s,
            10.0,
            _OverBudget(PAGE_OVER_BUDGET),
            exempt=partial(is_trusted, trusted) if trusted else None,
        )
        # the listener page itself (one segment after /spaces/): within the
        # budget the app renders it as before; registered last, so the
        # routes above keep their paths
        api.route((b"GET", b"HEAD"), b"/spaces/", b"", _app_answers, body=False, budget=pages)
    return api


def _app_answers(_peer: str | None, _req: Request, _key: str) -> None:
    """A route that only counts against its budget: the app answers."""
    return None


def _path(req: Request) -> str:
    return req.url.partition(b"?")[0].decode("latin-1")


def problem(error: TownhallError, path: str) -> Rendered:
    """A townhall error as the app's handler renders it on an /api/ route
    (``problems.install``; no CORS there), counted the same way."""
    if error.status >= 500:
        log.log(error.log_level, "townhall error on %s: %s", path, error.detail)
    _count_problem(error.status)
    response = problems.problem_response(
        error.to_problem(path), retry_after_s=error.retry_after_s, cache_control=error.cache_control
    )
    return Rendered.of(response, "api")


def internal(req: Request, path: str) -> Rendered:
    """An unexpected error, as ``problems.KeepAlive`` answers it (the connection stays)."""
    log.exception("unexpected error on %s %s", req.method.decode("latin-1"), path)
    metrics.PROBLEMS.labels(status="500").inc()
    return Rendered.of(problems.problem_response(_internal_problem(path)), "api")


class Lean:
    """The handlers; the app's services are found once its lifespan started."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = app

    def _services(self, *, answers: bool) -> Services | None:
        services: Services | None = getattr(self.app.state, "services", None)
        if services is None or services.defense is None:
            return None
        if answers and not services.settings.lean_api_answers:
            return None
        return services

    def refused(self, peer: str | None, req: Request) -> Rendered | None:
        services = self._services(answers=False)
        if services is None or services.defense is None:
            return None
        defense = services.defense
        found: Rendered | None = defense.refusals.early(peer, req.url, req.headers, defense.vouched)
        if found is None and services.settings.lean_api_answers:
            found = self._bad_bearer(services, peer, req)
        return found

    @staticmethod
    def _bad_bearer(services: Services, peer: str | None, req: Request) -> Rendered | None:
        """The auth shield's 401 for a bearer token whose signature or expiry
        fails (``server.defense.AuthFailureShield``: one decode, a refusal of
        the network), on every /api/ route the shield guards."""
        authorization: bytes | None = None
        for name, value in req.headers:
            if name == b"authorization":
                authorization = value if authorization is None else authorization
            elif name in _FORWARDED:
                return None
        if authorization is None or bearer_key(authorization) is None:
            return None
        path = _path(req)
        if "%" in path or (req.method == b"POST" and _PRESENCE.fullmatch(path)):
            return None  # decoded by the app; beats are answered before the shield
        assert services.defense is not None
        refusals = services.defense.refusals
        network = network_of(refusals.client(peer, req.headers))
        now = time.monotonic()
        if refusals.wait_s(network, now):
            return None  # the shield's refusal lets a host pass (an awaited lookup): the app's
        try:
            services.tokens.decode(authorization.decode("latin-1").partition(" ")[2].strip())
        except Unauthorized as exc:
            refusals.hit([network], now)
            return Rendered.of(problems.problem_response(exc.to_problem(path)), "api")
        return None

    def state(self, peer: str | None, req: Request, _space_id: str) -> Rendered | None:
        services = self._services(answers=False)
        if services is None or services.defense is None or not services.settings.fast_path:
            return None
        return services.defense.cached_state(services, peer, req)

    def presence(self, peer: str | None, req: Request, space_id: str) -> Rendered | None:
        services = self._services(answers=True)
        if services is None:
            return None
        token: str | None = None
        hops: list[str] = []
        for name, value in req.headers:
            if name == b"authorization":
                token = _bearer(value.decode("latin-1"))
            elif name == b"x-forwarded-for":
                hops.append(value.decode("latin-1"))
            elif name in _FORWARDED:
                return None
        if token is None:
            token = _body_token(bytes(req.body))
        path = _path(req)
        try:
            presence_beat(
                services, space_id, token, forwarded_client(peer, hops, services.trusted_proxies)
            )
        except TownhallError as exc:  # as PresenceFront renders it
            _count_problem(exc.status)
            return Rendered.of(
                problems.problem_response(exc.to_problem(path), retry_after_s=exc.retry_after_s),
                "api",
            )
        return _NO_CONTENT

    def join(
        self, peer: str | None, req: Request, space_id: str
    ) -> Rendered | Awaitable[Rendered | None] | None:
        services = self._services(answers=True)
        if services is None or services.defense is None:
            return None
        host = pow_answer = seen_mark = None
        hops: list[str] = []
        for name, value in req.headers:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"x-townhall-pow":
                pow_answer = value.decode("latin-1")
            elif name == b"x-townhall-seen":
                seen_mark = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                hops.append(value.decode("latin-1"))  # read below only from a trusted proxy
            elif name == b"authorization" or name in _FORWARDED:
                return None  # the shield and the scheme a proxy names: the app's path
        path = _path(req)
        refusals = services.defense.refusals
        network = network_of(refusals.client(peer, req.headers))
        wait_s = refusals.wait_s(network, time.monotonic())
        if wait_s:  # the auth shield's refusal (no bearer token: no host to let pass)
            _REFUSED_METRIC.inc()
            error = TooManyRequests(REFUSED, retry_after_s=wait_s)
            return Rendered.of(
                problems.problem_response(error.to_problem(path), retry_after_s=wait_s), "api"
            )
        try:
            token, ticket = parse_join_body(bytes(req.body))
            front = join_front(
                services,
                space_id,
                None,
                token,
                ticket,
                forwarded_client(peer, hops, services.trusted_proxies),
                pow_answer,
                seen_mark,
            )
        except TownhallError as exc:
            return self._refusal(services, exc, path, network)
        except Exception:
            return internal(req, path)
        return self._admit(services, front, base_url(services.settings, host, "http"), req, network)

    async def _admit(
        self, services: Services, front: JoinFront, base: str, req: Request, network: str
    ) -> Rendered:
        path = _path(req)
        try:
            answer = await join_rest(services, front, base)
        except TownhallError as exc:
            return self._refusal(services, exc, path, network)
        except Exception:
            return internal(req, path)
        return Rendered(answer.status, header_lines(answer_head(answer)), answer.body, "api")

    @staticmethod
    def _refusal(services: Services, exc: TownhallError, path: str, network: str) -> Rendered:
        rendered = problem(exc, path)
        if exc.status in (401, 429) and services.defense is not None:
            services.defense.refusals.hit([network], time.monotonic())  # as the shield counts
        return rendered
