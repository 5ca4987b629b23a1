"""Requests only a room's owner can answer, passed on to the owner.

Scaled out, one node (or HTTP worker) runs each live room; the others follow
it. A WebRTC offer, live.aac, mute/unmute/demote, block and captions on/off
need the room itself. With HTTP workers the kernel, not a balancer, picks the
worker, so a worker that does not run the room passes such a request on to
the one that does instead of answering 503:

- each node publishes where it takes passed-on requests in Redis
  (``<prefix>node:<node_id>``: its ``forward_url`` and pid, renewed with a
  TTL), next to the room leases whose value names the holder's node;
- :class:`OwnerForward` (ASGI middleware in front of the app) sees an
  owner-only request (:func:`owner_only`) for a room not running here, finds
  the lease holder's address and relays the request there with httpx: the
  request body bounded by ``max_body_bytes``, the owner's answer streamed
  back, each wait bounded by ``forward_timeout_s``;
- a passed-on request carries ``X-Townhall-Forwarded`` and is never passed on
  again (the owner answers it itself, or 503 if it lost the room meanwhile);
  no owner known, or the app's own answer is due: the app answers as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
from typing import Any

import httpx
from starlette.types import Message, Receive, Scope, Send

from townhall import metrics
from townhall.config import Settings
from townhall.origin.handoff import SECRET_HEADER as LOCAL_SECRET
from townhall.origin.wire import problem_document
from townhall.problems import problem_response

log = logging.getLogger("townhall.http")

FORWARDED_HEADER = b"x-townhall-forwarded"
_OWNER_ONLY = re.compile(
    r"^/(?:api/spaces/(?P<api>[^/]+)/(?:webrtc/offer|speakers/[^/]+/(?:mute|unmute|demote)"
    r"|blocks|captions)|spaces/(?P<page>[^/]+)/live\.aac)$"
)
_METHODS = {"live.aac": ("GET", "HEAD"), "captions": ("PUT",)}
# not passed on either way (RFC 9110 7.6.1), plus what httpx sets itself
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"content-length",
    }
)
_REGISTER_PERIOD_S = 2.0
_REGISTER_TTL_MS = 10_000

_NOT_RELAYED = _HOP - {b"content-length"} | {b"date", b"server"}  # this server sets its own


_WINDOW = re.compile(
    r"^/spaces/(?P<space>[^/]+)/(?:live\.m3u8|plain\.m3u8|init\.mp4|init/[^/]+\.mp4|part/[^/]+\.m4s)$"
)


def window_request(method: str, path: str) -> str | None:
    """The space id of a request a copy of the live window answers (a
    playlist, a part, an init segment), else None: a node without a copy of
    that room yet (it went live a moment ago) passes it on to the owner
    instead of saying "not live"."""
    if method not in ("GET", "HEAD"):
        return None
    found = _WINDOW.match(path)
    return found["space"] if found is not None else None


def owner_only(method: str, path: str) -> str | None:
    """The space id of a request only the room's owner can answer, else None."""
    found = _OWNER_ONLY.match(path)
    if found is None:
        return None
    tail = path.rsplit("/", 1)[-1]
    if method not in _METHODS.get(tail, ("POST",)):
        return None  # the router answers 405 wherever it lands
    return found["api"] or found["page"]


def node_key(prefix: str, node_id: str) -> str:
    return f"{prefix}node:{node_id}"


def holder_node(token: str) -> str:
    """The node id in a lease value (``<n>:<node_id>``, store/lease.py)."""
    return token.split(":", 1)[1] if ":" in token else ""


def default_forward_url(settings: Settings) -> str:
    host = settings.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{settings.port}"


class NodeDirectory:
    """Where each node takes passed-on requests, in Redis (see the module doc)."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    async def register(self, node_id: str, url: str) -> None:
        value = json.dumps({"url": url, "pid": os.getpid()})
        await self.redis.set(node_key(self.prefix, node_id), value, px=_REGISTER_TTL_MS)

    async def unregister(self, node_id: str) -> None:
        await self.redis.delete(node_key(self.prefix, node_id))

    async def owner_url(self, space_id: str) -> tuple[str, str] | None:
        """(node id, url) of the room's lease holder, or None if nobody holds
        it or its node has not said where it listens."""
        from townhall.store.lease import lease_key

        token = await self.redis.get(lease_key(self.prefix, space_id))
        if token is None:
            return None
        node_id = holder_node(token.decode() if isinstance(token, bytes) else str(token))
        raw = await self.redis.get(node_key(self.prefix, node_id))
        if raw is None:
            return None
        url = json.loads(raw).get("url")
        return (node_id, url) if isinstance(url, str) and url else None

    async def keep_registered(self, node_id: str, url: str) -> None:
        """The registration task: renew until cancelled; never raises."""
        while True:
            try:
                await self.register(node_id, url)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the next round tries again
                metrics.BUS_FAILURES.labels(op="node-register").inc()
                log.warning("could not publish this node's forward address (%s)", exc)
            await asyncio.sleep(_REGISTER_PERIOD_S)


class OwnerForward:
    """ASGI middleware: owner-only requests for rooms run elsewhere go to the
    owner. ``app`` is the app made by ``create_app`` (its services are found
    once its lifespan started); the middleware starts and stops its
    registration with the app's lifespan."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.url = settings.forward_url or default_forward_url(settings)
        self._client: httpx.AsyncClient | None = None
        self._directory: NodeDirectory | None = None
        self._node_id = ""
        self._register: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), self._lifespan_send(send))
            return
        if scope["type"] == "http" and self._directory is not None and not _was_forwarded(scope):
            method, path = scope["method"], scope["path"]
            rooms = self.app.state.services.rooms
            space_id, window = owner_only(method, path), False
            if space_id is None:
                # the room's window, on a node whose copy is not there yet
                # (it follows from this request on): the owner has it now;
                # owner unreachable: this node answers as it can
                space_id, window = window_request(method, path), True
                if space_id is not None and rooms.listener_source(space_id) is not None:
                    space_id = None
            if (
                space_id is not None
                and rooms.get(space_id) is None
                and await self._forward(space_id, scope, receive, send, fallback=window)
            ):
                return
        await self.app(scope, receive, send)

    # -- lifespan: publish this node's address while the app runs ------------------

    def _lifespan_send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._started()
            await send(message)

        return wrapped

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self._stopping()
            return message

        return wrapped

    def _started(self) -> None:
        services = getattr(self.app.state, "services", None)
        scaleout = getattr(getattr(services, "rooms", None), "scaleout", None)
        if scaleout is None or not self.settings.forward_owner_only:
            return
        self._directory = NodeDirectory(scaleout.redis, self.settings.redis_prefix)
        self._node_id = scaleout.node_id
        timeout = self.settings.forward_timeout_s
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
            limits=httpx.Limits(max_connections=self.settings.forward_max_connections),
            follow_redirects=False,
            trust_env=False,
        )
        self._register = asyncio.create_task(
            self._directory.keep_registered(self._node_id, self.url), name="townhall-node-address"
        )
        log.info("node %s takes passed-on requests at %s", self._node_id, self.url)

    async def _stopping(self) -> None:
        directory, self._directory = self._directory, None
        if self._register is not None:
            self._register.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._register
            self._register = None
        if directory is not None:
            with contextlib.suppress(Exception):
                await directory.unregister(self._node_id)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- passing a request on -------------------------------------------------------

    async def _forward(
        self, space_id: str, scope: Scope, receive: Receive, send: Send, *, fallback: bool = False
    ) -> bool:
        """Relay the request to the room's owner; False when no owner is known
        or it is this node (the app answers, nothing read yet). ``fallback``
        (a GET or HEAD of the window): also False when the owner cannot be
        reached, nothing read or sent."""
        assert self._directory is not None and self._client is not None
        try:
            found = await self._directory.owner_url(space_id)
        except Exception as exc:
            metrics.FORWARDED.labels(outcome="unreachable").inc()
            log.warning("room %s: cannot ask Redis who runs it (%s)", space_id, exc)
            return False
        if found is None or found[0] == self._node_id or found[1] == self.url:
            return False
        node_id, url = found
        body = b"" if fallback else await _read_body(receive, self.settings.max_body_bytes)
        if body is None:
            await _problem(
                scope, send, 413, "body-too-large", "Request body too large",
                f"The request body is over {self.settings.max_body_bytes} bytes; send a smaller one.",
            )  # fmt: skip
            return True
        target = url + (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if query := scope.get("query_string", b""):
            target += "?" + query.decode("latin-1")
        request = self._client.build_request(
            scope["method"], target, headers=self._headers(scope, url), content=body
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            if not fallback:
                return await self._failed(exc, space_id, node_id, url, scope, send)
            metrics.FORWARDED.labels(outcome="unreachable").inc()
            log.info("room %s: owner %s unreachable (%s); answered here", space_id, node_id, exc)
            return False
        metrics.FORWARDED.labels(outcome="answered").inc()
        await _relay(response, node_id, receive, send)
        return True

    async def _failed(
        self, exc: httpx.HTTPError, space_id: str, node_id: str, url: str, scope: Scope, send: Send
    ) -> bool:
        """The answer when the owner could not be asked: 504 or 503."""
        if isinstance(exc, httpx.TimeoutException):
            metrics.FORWARDED.labels(outcome="timeout").inc()
            await _problem(
                scope, send, 504, "owner-timeout", "The room's server did not answer",
                "The server that runs this space's audio did not answer in time; try again shortly.",
                retry_after_s=2.0,
            )  # fmt: skip
            return True
        metrics.FORWARDED.labels(outcome="unreachable").inc()
        log.warning("room %s: its owner %s at %s is unreachable (%s)", space_id, node_id, url, exc)
        await _problem(
            scope, send, 503, "owner-unreachable", "The room's server cannot be reached",
            "The server that runs this space's audio cannot be reached right now (it may be "
            "moving to another server); try again in a few seconds.",
            retry_after_s=2.0,
        )  # fmt: skip
        return True

    def _headers(self, scope: Scope, url: str) -> list[tuple[bytes, bytes]]:
        headers = passed_on_headers(scope, self._node_id)
        secret = self.settings.local_bus_secret
        if secret and _on_loopback(url):  # another worker of this supervisor
            headers.append((LOCAL_SECRET, secret.encode()))  # its X-Forwarded-For counts
        return headers


def _on_loopback(url: str) -> bool:
    host = httpx.URL(url).host
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def passed_on_headers(scope: Scope, node_id: str) -> list[tuple[bytes, bytes]]:
    """The request's headers for the node it is passed on to: hop-by-hop
    ones left out (and a local secret a client sent), the client added to
    X-Forwarded-For, marked passed on."""
    headers = [(k, v) for k, v in scope["headers"] if k not in _HOP and k != LOCAL_SECRET]
    client = scope.get("client")
    if client:
        seen = [v for k, v in headers if k == b"x-forwarded-for"]
        headers = [(k, v) for k, v in headers if k != b"x-forwarded-for"]
        hops = b", ".join([*seen, client[0].encode("latin-1")])
        headers.append((b"x-forwarded-for", hops))
    headers.append((FORWARDED_HEADER, node_id.encode("latin-1", "replace")))
    return headers


def _was_forwarded(scope: Scope) -> bool:
    return any(k == FORWARDED_HEADER for k, _ in scope["headers"])


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it is over ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client left; the owner sees a short body
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _relay(response: httpx.Response, node_id: str, receive: Receive, send: Send) -> None:
    """Send the owner's answer on as it comes (a stream stops when either side
    leaves); marks it ``Via`` the owner's node."""
    headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in _NOT_RELAYED]
    headers.append((b"via", f"1.1 {node_id}".encode("latin-1", "replace")))

    async def pump() -> None:
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    relay = asyncio.create_task(pump())
    left = asyncio.create_task(gone())
    try:
        await asyncio.wait({relay, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (relay, left):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await response.aclose()
    if not relay.cancelled() and (exc := relay.exception()) is not None:
        if not isinstance(exc, httpx.HTTPError | OSError):
            raise exc
        metrics.FORWARDED.labels(outcome="cut").inc()  # the owner went away mid-answer
        log.info("a passed-on answer from %s was cut (%s)", node_id, exc)


async def _problem(
    scope: Scope,
    send: Send,
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    retry_after_s: float | None = None,
) -> None:
    response = problem_response(
        problem_document(status, slug, title, detail, scope["path"]), retry_after_s=retry_after_s
    )

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, nothing, send)
