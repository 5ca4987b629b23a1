"""HTTP workers on one machine without Redis: one primary, listener workers
that follow it (issue 11).

Without the scaled-out mode the control plane's state (admission lines, rate
buckets, presence, SQLite) lives in one process, so the supervisor
(``server/workers.py``) runs one **primary** worker, the whole server as one
process would be (its media process, its data directory ``DATA_DIR``), and
``http_workers - 1`` **listener workers** on the same port (SO_REUSEPORT):

- a listener worker answers the listener plane's hot requests (parts,
  playlists, blocking reloads, init segments) from its own copy of each live
  room's window, which it keeps exactly as a follower node does
  (:class:`~townhall.origin.follower.Follower` and ``FollowerState``: the
  same bytes, gaps restored from a snapshot), fed by the primary over
  loopback HTTP: ``GET /_townhall/local/{space}/snapshot`` and a long poll
  ``GET /_townhall/local/{space}/entries?after=SEQ`` (``block_ms``), both
  answered from the primary's media channel (:class:`EntryLog`, bounded) and
  only with the supervisor's secret (``X-Townhall-Local``; anything else is
  404, as a missing page);
- a connection whose first request is anything else (the API, pages,
  state.json, queue.json, live.aac) is handed to the primary whole
  (origin/handoff.py, server/handoff.py: its file descriptor over a Unix
  socket), which serves it from then on and sees the client's address;
- a later request of that kind on a connection that began with the listener
  plane's (and any while the handoff socket is not there: the primary
  restarting, ``http_handoff`` off), a request the copy cannot answer, a
  refused token (the primary says why) is passed on to the primary's
  loopback port, body bounded, answer streamed back, with X-Forwarded-For
  and the supervisor's secret (the primary believes loopback's
  X-Forwarded-For only with it: ``secret_proxies``), so the one process that
  holds the control plane's state answers it.

The primary publishes its loopback address in ``DATA_DIR/run/primary.json``
(``PRIMARY_FILE``); a listener worker reads it again when the primary does
not answer (it was restarted on another port). Pure parts are
:class:`EntryLog` and :func:`primary_url`; the rest is wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import pickle
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, Request
from starlette.datastructures import State
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from townhall import metrics
from townhall.config import Settings
from townhall.origin.bus import Entry, Snapshot
from townhall.origin.entry_log import EntryLog
from townhall.origin.fanout import ProgressiveHub
from townhall.origin.follower import Follower, FollowerState
from townhall.origin.handoff import SECRET_HEADER as LOCAL_SECRET
from townhall.server import forward

log = logging.getLogger("townhall.http")

SECRET_HEADER = LOCAL_SECRET.decode()
PRIMARY_FILE = Path("run") / "primary.json"
PREFIX = "/_townhall/local/"
_PICKLE = "application/x-townhall-pickle"
_ABSENT_S = 1.0  # a space the primary does not run is asked about again after this
_MAX_BLOCK_MS = 5_000


# -- the primary: its rooms' window calls (origin/entry_log.py), for the listener workers


def _authorized(request: Request) -> bool:
    secret = request.app.state.settings.local_bus_secret
    given = request.headers.get(SECRET_HEADER, "")
    return bool(secret) and hmac.compare_digest(given.encode(), secret.encode())


def _pickled(value: Any) -> Response:
    return Response(pickle.dumps(value), media_type=_PICKLE, headers={"Cache-Control": "no-store"})


router = APIRouter(include_in_schema=False)


@router.get(PREFIX + "{space_id}/snapshot")
async def local_snapshot(space_id: str, request: Request) -> Response:
    services = getattr(request.app.state, "services", None)
    rooms = getattr(services, "rooms", None)
    if not _authorized(request) or rooms is None or rooms.get(space_id) is None:
        return Response(status_code=404)
    snapshot = await rooms.call("snapshot", space_id)
    if snapshot is None:
        return Response(status_code=404)
    return _pickled((snapshot, _capped(services, space_id)))


@router.get(PREFIX + "{space_id}/entries")
async def local_entries(
    space_id: str, request: Request, after: int = 0, block_ms: int = 0
) -> Response:
    services = getattr(request.app.state, "services", None)
    entry_log: EntryLog | None = getattr(getattr(services, "rooms", None), "local_log", None)
    if not _authorized(request) or entry_log is None:
        return Response(status_code=404)
    block_s = max(0, min(block_ms, _MAX_BLOCK_MS)) / 1000
    found = await entry_log.wait_after(space_id, after, block_s)
    if found is None:
        return Response(status_code=404)
    return _pickled((found, _capped(services, space_id)))


def _capped(services: Any, space_id: str) -> bool:
    """Whether the primary gates this space's media (a listener worker gates alike)."""
    admission = getattr(services, "admission", None)
    return True if admission is None else bool(admission.capped(space_id))


def publish_primary(settings: Settings) -> None:
    """Write where the listener workers reach this primary (atomically)."""
    path = settings.data_dir / PRIMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(json.dumps({"url": settings.forward_url, "pid": os.getpid()}))
    os.replace(temp, path)


def primary_url(data_dir: Path) -> str | None:
    """The primary's loopback address as it published it, or None."""
    try:
        found = json.loads((data_dir / PRIMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    url = found.get("url") if isinstance(found, dict) else None
    return url if isinstance(url, str) and url.startswith("http://127.") else None


def wait_for_primary(data_dir: Path, timeout_s: float) -> bool:
    """Block until the primary published its address and answers on it (any
    status), at most ``timeout_s``: a listener worker joins the port only
    then, so that nothing it would pass on meets a primary still starting.
    False when it gave up waiting (it serves anyway, answering 503 for what
    it would pass on until the primary is there)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        url = primary_url(data_dir)
        if url is not None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(url + "/healthz", timeout=2.0, trust_env=False)
                return True
        time.sleep(0.1)
    log.warning("the primary worker did not answer in %.0f s; serving without it", timeout_s)
    return False


# -- a listener worker: copies of the primary's rooms ------------------------------


class RoomGone(Exception):
    """The primary does not run this room (any more)."""


class _Primary:
    """The listener worker's client of the primary (one pool of connections)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        timeout = settings.forward_timeout_s
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout + _MAX_BLOCK_MS / 1000, connect=min(timeout, 2.0)),
            limits=httpx.Limits(max_connections=settings.forward_max_connections),
            follow_redirects=False,
            trust_env=False,
        )
        self._url: str | None = None

    def url(self, fresh: bool = False) -> str | None:
        if fresh or self._url is None:
            self._url = primary_url(self.settings.data_dir)
        return self._url

    async def fetch(self, path: str) -> Any:
        """GET ``path`` on the primary, unpickled; RoomGone on 404."""
        url = self.url()
        if url is None:
            raise ConnectionError("the primary worker has not published its address yet")
        headers = {SECRET_HEADER: self.settings.local_bus_secret}
        try:
            response = await self.client.get(url + path, headers=headers)
        except httpx.TransportError:
            self.url(fresh=True)  # restarted elsewhere, maybe
            raise
        if response.status_code == 404:
            raise RoomGone(path)
        response.raise_for_status()
        return pickle.loads(response.content)  # our own primary, shown the secret

    async def aclose(self) -> None:
        await self.client.aclose()


class _LocalReader:
    """A room's :class:`~townhall.origin.follower.BusReader` on the primary."""

    def __init__(self, primary: _Primary, space_id: str) -> None:
        self.primary = primary
        self.space_id = space_id
        self.last_seq = 0
        self.gone = asyncio.Event()
        self.capped = True  # until the primary says (a gated request goes to it)

    async def snapshot(self) -> Snapshot:
        try:
            snapshot, self.capped = await self.primary.fetch(f"{PREFIX}{self.space_id}/snapshot")
        except RoomGone:
            self.gone.set()
            raise
        self.last_seq = snapshot.last_seq
        return snapshot  # type: ignore[no-any-return]

    async def read(self, block_ms: int) -> list[Entry]:
        try:
            entries, self.capped = await self.primary.fetch(
                f"{PREFIX}{self.space_id}/entries?after={self.last_seq}&block_ms={block_ms}"
            )
        except RoomGone:
            self.gone.set()
            raise
        if entries:
            self.last_seq = entries[-1].seq
        return entries  # type: ignore[no-any-return]


class LocalRoom:
    """A listener worker's copy of one room of the primary: what the fast
    path reads (``window``, ``progressive``, ``ended``)."""

    def __init__(self, space_id: str, settings: Settings, primary: _Primary) -> None:
        self.space_id = space_id
        self.reader = _LocalReader(primary, space_id)
        self.follower = Follower(
            space_id,
            FollowerState(window_segments=settings.window_segments),
            self.reader,
            block_ms=min(settings.bus_block_ms, _MAX_BLOCK_MS),
            retry_s=0.5,
        )
        # live.aac is the primary's: a closed hub sends it there
        self.progressive = ProgressiveHub(max_lag_ms=1000, burst_ms=0, frame_ms=21.333)
        self.progressive.close()

    @property
    def window(self) -> Any:
        return self.follower.window if not self.reader.gone.is_set() else None

    @property
    def ended(self) -> bool:
        window = self.follower.window
        return window is not None and window.ended


class LocalRooms:
    """Stands where the room registry stands in a listener worker: no room
    runs here; ``listener_source`` starts following a space on its first
    request (that request, and any until the copy is in step, goes to the
    primary) and forgets a space the primary does not run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.primary = _Primary(settings)
        self._rooms: dict[str, LocalRoom] = {}
        self._absent: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, space_id: str) -> None:
        return None

    def capped(self, space_id: str) -> bool:
        """As the primary last said (a space not followed yet: gated)."""
        room = self._rooms.get(space_id)
        return True if room is None else room.reader.capped

    def listener_source(self, space_id: str) -> LocalRoom | None:
        room = self._rooms.get(space_id)
        if room is not None:
            if room.reader.gone.is_set():
                self._forget(space_id)
                return None
            return room if room.window is not None else None
        now = time.monotonic()
        if self._absent.get(space_id, 0.0) > now:
            return None
        if len(self._rooms) >= self.settings.listener_worker_max_rooms:
            return None
        room = self._rooms[space_id] = LocalRoom(space_id, self.settings, self.primary)
        room.follower.start()
        watch = asyncio.create_task(self._watch(room), name=f"local-follow-{space_id}")
        self._tasks.add(watch)
        watch.add_done_callback(self._tasks.discard)
        metrics.FOLLOWED_ROOMS.inc()
        return None

    async def _watch(self, room: LocalRoom) -> None:
        """Stop following once the primary says the room is not there."""
        done = asyncio.create_task(room.reader.gone.wait())
        try:
            await done
        finally:
            done.cancel()
        self._forget(room.space_id)

    def _forget(self, space_id: str) -> None:
        room = self._rooms.pop(space_id, None)
        self._absent[space_id] = time.monotonic() + _ABSENT_S
        if len(self._absent) > 10_000:
            now = time.monotonic()
            self._absent = {k: v for k, v in self._absent.items() if v > now}
        if room is not None:
            metrics.FOLLOWED_ROOMS.dec()
            task = asyncio.create_task(room.follower.stop(), name=f"local-unfollow-{space_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def problems(self) -> list[dict[str, str]]:
        return []

    def followed(self) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        for space_id in list(self._rooms):
            room = self._rooms.pop(space_id)
            await room.follower.stop()
            metrics.FOLLOWED_ROOMS.dec()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.primary.aclose()


class _ListenerServices:
    """What the listener rules look up in a listener worker (``origin/app_hooks``)."""

    def __init__(self, settings: Settings) -> None:
        from townhall.policy.tokens import TokenSigner, load_keys

        self.rooms = LocalRooms(settings)
        self.tokens = TokenSigner(load_keys(settings.signing_keys, settings.data_dir))
        self.admission = self.rooms  # capped(space): as the primary says (origin/gate.py)
        self.defense = None


class ListenerApp:
    """The ASGI app of a listener worker: every request that reaches it (the
    driver's fast path answers the listener plane first) goes to the primary."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = State()
        self.state.settings = settings
        self.node_id = settings.node_id or "listener"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        services: _ListenerServices | None = getattr(self.state, "services", None)
        if services is None:
            await forward._problem(
                scope, send, 503, "starting", "Starting",
                "This server is starting; try again in a moment.", retry_after_s=1.0,
            )  # fmt: skip
            return
        await self._pass_on(services.rooms.primary, scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                self.state.services = _ListenerServices(self.settings)
                from townhall.server.worker_metrics import keep_writing

                writer = asyncio.create_task(keep_writing(self.settings), name="worker-metrics")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                writer.cancel()
                services = getattr(self.state, "services", None)
                if services is not None:
                    await services.rooms.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _pass_on(self, primary: _Primary, scope: Scope, receive: Receive, send: Send) -> None:
        body = await forward._read_body(receive, self.settings.max_body_bytes)
        if body is None:
            await forward._problem(
                scope, send, 413, "body-too-large", "Request body too large",
                f"The request body is over {self.settings.max_body_bytes} bytes; send a smaller one.",
            )  # fmt: skip
            return
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if query := scope.get("query_string", b""):
            path += "?" + query.decode("latin-1")
        # the secret vouches for the X-Forwarded-For line (a client's own is dropped)
        headers = forward.passed_on_headers(scope, self.node_id)
        headers.append((LOCAL_SECRET, self.settings.local_bus_secret.encode()))
        for attempt in (0, 1):
            url = primary.url(fresh=attempt > 0)
            if url is None:
                break
            request = primary.client.build_request(
                scope["method"], url + path, headers=headers, content=body
            )
            try:
                response = await primary.client.send(request, stream=True)
            except httpx.TimeoutException:
                metrics.FORWARDED.labels(outcome="timeout").inc()
                await forward._problem(
                    scope, send, 504, "primary-timeout", "The server did not answer",
                    "The server did not answer in time; try again shortly.", retry_after_s=2.0,
                )  # fmt: skip
                return
            except httpx.ConnectError as exc:  # nothing was sent: safe to try again
                log.info("the primary worker at %s cannot be reached (%s)", url, exc)
                continue  # its address may have changed (restarted): read it again, once
            except httpx.TransportError as exc:
                if scope["method"] in ("GET", "HEAD", "OPTIONS"):
                    continue  # e.g. a pooled connection it had just closed: ask again
                # a POST it may have acted on is not sent twice
                metrics.FORWARDED.labels(outcome="cut").inc()
                log.info("the primary worker at %s went away mid-request (%s)", url, exc)
                await forward._problem(
                    scope, send, 502, "primary-gone", "The server went away",
                    "This server's main process went away while answering; check the result "
                    "and try again if it is not there.", retry_after_s=2.0,
                )  # fmt: skip
                return
            metrics.FORWARDED.labels(outcome="answered").inc()
            await forward._relay(response, "primary", receive, send)
            return
        metrics.FORWARDED.labels(outcome="unreachable").inc()
        await forward._problem(
            scope, send, 503, "primary-unreachable", "The server is restarting",
            "This server is restarting its main process; try again in a few seconds.",
            retry_after_s=2.0,
        )  # fmt: skip
