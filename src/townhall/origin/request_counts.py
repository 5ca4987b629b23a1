"""Requests the HTTP/1.1 driver answered, counted cheaply: plain ints on the
hot path, added to the Prometheus counters at most a second later (a locked
``inc`` on a labelled child per request costs more than the rest of a fast
answer's bookkeeping).

- ``townhall_http_requests_total{route, status}``: every answer the driver
  wrote. ``route`` is a class, not a path (bounded label values): the fast
  path's answer kinds (``part``, ``segment``, ``init``, ``playlist``,
  ``state``, ``progressive``, ``api`` for the lean join, ``problem`` for its
  refusals), the app's answers by where the path points (``app_api``,
  ``app_listener``, ``app_page``, ``app_static``, ``app_ops``), and
  ``refused`` for what the driver refused before any route (431, 413, 501);
- ``townhall_fastpath_responses_total{kind}`` and the listener bytes of the
  fast path's answers, from the same tally.

A request passed on to a room's owner (``server/forward.py``) is counted
where it was answered: here with the owner's status (the relay is an app
answer), and on the owner.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from townhall import metrics

KINDS = ("part", "segment", "init", "playlist", "problem", "progressive", "state", "api")
_BYTES = {kind: metrics.LISTENER_BYTES.labels(kind=kind) for kind in KINDS[:4]}
_ANSWERED = {kind: metrics.FASTPATH_RESPONSES.labels(kind=kind) for kind in KINDS}
_FLUSH_S = 1.0
_OPS = frozenset({"/healthz", "/metrics"})


def route_class(path: str) -> str:
    """The ``route`` label of an answer the app gave for ``path``."""
    if path.startswith("/api/"):
        return "app_api"
    if path.startswith("/static/"):
        return "app_static"
    if path in _OPS:
        return "app_ops"
    if path.startswith("/spaces/") and path.count("/") >= 3:
        return "app_listener"  # /spaces/{id}/<resource>: playlists, parts, documents
    return "app_page"


class RequestCounts:
    """The tally of one process (``COUNTS``); ``flush`` adds it to the counters."""

    def __init__(self) -> None:
        # "<kind or route class> <status>" -> answers since the last flush (a
        # string made once per answer object: its hash is cached, a tuple's is not)
        self.answered: defaultdict[str, int] = defaultdict(int)
        self.bytes = dict.fromkeys(KINDS, 0)
        self._timer: asyncio.TimerHandle | None = None
        self._requests: dict[str, Any] = {}  # labelled children, made once

    def add(self, key: str, kind: str, size: int, loop: asyncio.AbstractEventLoop) -> None:
        """A fast answer of ``kind`` (one of KINDS) with ``size`` body bytes;
        ``key`` is ``"<kind> <status>"`` (``Rendered.count_key``)."""
        self.answered[key] += 1
        self.bytes[kind] += size
        if self._timer is None:
            self._timer = loop.call_later(_FLUSH_S, self.flush)

    def app(self, path: str, status: int) -> None:
        """An answer the app (or the driver's ASGI cycle) started for ``path``."""
        self.answered[f"{route_class(path)} {status}"] += 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_FLUSH_S, self.flush)

    def refused(self, status: int, loop: asyncio.AbstractEventLoop) -> None:
        """A request the driver refused before any route."""
        self.answered[f"refused {status}"] += 1
        if self._timer is None:
            self._timer = loop.call_later(_FLUSH_S, self.flush)

    def flush(self) -> None:
        """Add what was counted to the Prometheus counters (tests call it too)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        answered, self.answered = self.answered, defaultdict(int)
        for key, n in answered.items():
            route, _, status = key.partition(" ")
            child = self._requests.get(key)
            if child is None:
                child = self._requests[key] = metrics.REQUESTS.labels(route=route, status=status)
            child.inc(n)
            fast = _ANSWERED.get(route)
            if fast is not None:
                fast.inc(n)
        for kind, size in self.bytes.items():
            if size and kind in _BYTES:
                _BYTES[kind].inc(size)
            self.bytes[kind] = 0


COUNTS = RequestCounts()
