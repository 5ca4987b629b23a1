"""The listener plane's fast path: which hot GETs can be answered without the
web framework, and with what bytes. Pure: no sockets, no event loop.

``FastPath.decide(method, path, query)`` looks at a request line and answers
one of:

- a :class:`Rendered` response, ready to write (status, header lines and body
  pre-rendered ONCE per immutable part / segment / init and once per playlist
  version and kind, memoised in the live window and evicted with it);
- a :class:`Wait`: park the request until ``position`` is published, then
  write ``answer()`` (or ``timeout()`` after ``timeout_s``);
- a :class:`Stream`: live.aac, write ``head`` and attach to ``hub``;
- None, "not mine": let the app answer. Every error (400, 404, ...), every
  request for a space not live on this node and everything served from disk
  goes to the app (``server/hls.py``), so each answer has one implementation.

The bytes are made by the same helpers the app's routes use (Starlette
``Response`` objects rendered once), so both paths send the same headers and
bodies; tests compare them byte for byte.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from starlette.responses import Response

from townhall import metrics, problems
from townhall.config import Settings
from townhall.origin import asgi as hls
from townhall.origin.follower import ListenerSource
from townhall.origin.window import LiveWindow, ProgressiveHub

log = logging.getLogger("townhall.access")

_MAX_DIGITS_MSN = 12
_MAX_DIGITS_PART = 4
_MAX_DIGITS_EPOCH = 6


@dataclass(frozen=True, slots=True)
class Rendered:
    """A whole response but the server's own lines (status line, Date): the
    app's header lines ``head`` (each ending CRLF) and ``body``; ``tail`` is
    ``head + CRLF + body``, what follows the server's lines on keep-alive."""

    status: int
    head: bytes
    body: bytes
    kind: str
    tail: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tail", self.head + b"\r\n" + self.body)

    @classmethod
    def of(cls, response: Response, kind: str) -> Rendered:
        return cls(
            response.status_code, header_lines(response.raw_headers), bytes(response.body), kind
        )


@dataclass(frozen=True, slots=True)
class Wait:
    """Park until ``window`` has ``position``; then ``answer()`` (None: hand the
    request to the app after all), or ``timeout()`` after ``timeout_s``."""

    window: LiveWindow
    position: tuple[int, int]
    timeout_s: float
    answer: Callable[[], Rendered | None]
    timeout: Callable[[], Rendered]


@dataclass(frozen=True, slots=True)
class Stream:
    """live.aac: write the status line and ``head`` (the app's header lines; the
    server adds Transfer-Encoding), then attach the transport to ``hub``."""

    hub: ProgressiveHub
    head: bytes


Decision = Rendered | Wait | Stream | None


def header_lines(raw_headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name.lower() + b": " + value + b"\r\n" for name, value in raw_headers)


def _number(raw: bytes, max_digits: int) -> int | None:
    if 0 < len(raw) <= max_digits and raw.isdigit():
        return int(raw)
    return None


class FastPath:
    """Decides requests for the live spaces of this process.

    ``programs(space_id)`` returns what answers a live space's listeners here
    (its running Program, or a followed room's copy; a dict lookup) or None.
    """

    def __init__(
        self, settings: Settings, programs: Callable[[str], ListenerSource | None]
    ) -> None:
        self.settings = settings
        self.programs = programs
        self.timeout_s = settings.blocking_reload_timeout_s
        self._stream_head = header_lines(hls.progressive_head())

    def decide(self, method: bytes, path: bytes, query: bytes | None) -> Decision:
        """``path`` as sent (percent-encoded), ``query`` without the '?'."""
        if not path.startswith(b"/spaces/") or b"%" in path or not path.isascii():
            return None
        slash = path.find(b"/", 8)
        if slash < 0:
            return None
        program = self.programs(path[8:slash].decode("ascii"))
        if program is None:
            return None
        window = program.window
        if window is None:
            return None
        name = path[slash + 1 :]
        if name.startswith(b"part/"):
            return self._part(window, name[5:], path)
        if name == b"live.m3u8":
            return self._playlist(window, query, path, plain=False)
        if name.startswith(b"seg/"):
            return self._segment(window, name[4:])
        if name == b"plain.m3u8":
            return self._playlist(window, query, path, plain=True)
        if name == b"live.aac":
            if method != b"GET" or window.closed or program.progressive.closed:
                return None
            return Stream(program.progressive, self._stream_head)
        if name == b"init.mp4":
            return _init(window)
        if (
            name.startswith(b"init/")
            and name.endswith(b".mp4")
            and _number(name[5:-4], _MAX_DIGITS_EPOCH) == window.epoch
        ):
            return _init(window)
        return None

    # -- media ---------------------------------------------------------------------

    def _part(self, window: LiveWindow, name: bytes, path: bytes) -> Decision:
        if not name.endswith(b".m4s"):
            return None
        msn_raw, dot, index_raw = name[:-4].partition(b".")
        msn = _number(msn_raw, _MAX_DIGITS_MSN)
        index = _number(index_raw, _MAX_DIGITS_PART)
        if not dot or msn is None or index is None or index >= window.segment_parts:
            return None
        ready = _part(window, msn, index)
        if ready is not None:
            return ready
        if window.has((msn, index)) or window.closed or msn > window.open_msn + 1:
            return None  # gone from the window, or too far ahead: the app says so
        # a preload-hinted part: answer as soon as it exists
        return Wait(
            window,
            (msn, index),
            self.timeout_s,
            partial(_part, window, msn, index),
            partial(timeout_response, path.decode("ascii")),
        )

    def _segment(self, window: LiveWindow, name: bytes) -> Decision:
        if not name.endswith(b".m4s"):
            return None
        msn = _number(name[:-4], _MAX_DIGITS_MSN)
        if msn is None:
            return None
        data = window.segment(msn)
        if data is None:
            return None  # older ones come from the recording on disk: the app
        return window.memo("seg", partial(_media, data, hls.MP4, hls.IMMUTABLE, "segment"), msn=msn)

    # -- playlists -------------------------------------------------------------------

    def _playlist(
        self, window: LiveWindow, query: bytes | None, path: bytes, *, plain: bool
    ) -> Decision:
        directives = _directives(query)
        if directives is None:
            return None
        msn, part, skip = directives
        if plain:
            msn, part, skip = None, None, False
        kind = "plain" if plain else ("ll-skip" if skip else "ll")
        if msn is not None and not window.closed:
            if window.is_far_future(msn):
                return None  # 400 from the app
            position = window.normalize(msn, part)
            answer = partial(_playlist, window, kind, True)
        elif window.version == 0:
            # nothing published yet in this run: hold the very first request
            position = (window.open_msn, 0)
            answer = partial(_playlist, window, kind, False)
        else:
            return _playlist(window, kind, False)
        if window.ready(position):
            return answer()
        return Wait(
            window, position, self.timeout_s, answer, partial(timeout_response, path.decode())
        )


def _directives(query: bytes | None) -> tuple[int | None, int | None, bool] | None:
    """(_HLS_msn, _HLS_part, _HLS_skip) of a plain query; None when anything is
    off (the app then answers, with its 400 where one is due)."""
    msn = part = None
    skip = False
    if not query:
        return msn, part, skip
    if b"%" in query or b"+" in query:
        return None
    seen: set[bytes] = set()
    for item in query.split(b"&"):
        key, _, value = item.partition(b"=")
        if key in seen:
            return None
        seen.add(key)
        if key == b"_HLS_msn":
            msn = _number(value, _MAX_DIGITS_MSN)
            if msn is None:
                return None
        elif key == b"_HLS_part":
            part = _number(value, _MAX_DIGITS_MSN)
            if part is None:
                return None
        elif key == b"_HLS_skip":
            if value not in (b"YES", b"v2"):
                return None
            skip = True
    if part is not None and msn is None:
        return None
    return msn, part, skip


def _media(data: bytes, media_type: str, cache: str, kind: str) -> Rendered:
    return Rendered.of(hls.media_response(data, media_type, cache), kind)


def _part(window: LiveWindow, msn: int, index: int) -> Rendered | None:
    data = window.part(msn, index)
    if data is None:
        return None
    return window.memo(
        ("part", index), partial(_media, data, hls.MP4, hls.IMMUTABLE, "part"), msn=msn
    )


def _init(window: LiveWindow) -> Rendered | None:
    data = window.init_segment
    if data is None:
        return None  # the app holds the request until the first part
    return window.memo("init", partial(_media, data, hls.MP4, hls.IMMUTABLE, "init"))


def _playlist(window: LiveWindow, kind: str, blocking: bool) -> Rendered:
    cache = hls.playlist_cache(window, blocking=blocking)
    return window.memo_versioned(
        (kind, cache),
        lambda: _media(window.playlist(kind).encode(), hls.M3U8, cache, "playlist"),
    )


def timeout_response(path: str) -> Rendered:
    """503 + Retry-After, as the app's error handler renders hls.blocking_timeout()."""
    error = hls.blocking_timeout()
    metrics.HLS_BLOCKING_TIMEOUTS.inc()
    metrics.PROBLEMS.labels(status=str(error.status)).inc()
    log.error("townhall error on %s: %s", path, error.detail)
    response = problems.problem_response(error.to_problem(path), retry_after_s=error.retry_after_s)
    return Rendered.of(response, "problem")


def programs_of(app: Any) -> Callable[[str], ListenerSource | None]:
    """The lookup of running programs in an app built by ``create_app`` (its
    services exist once the lifespan started)."""

    found: list[Any] = []

    def lookup(space_id: str) -> ListenerSource | None:
        if not found:
            rooms = getattr(getattr(app.state, "services", None), "rooms", None)
            if rooms is None:
                return None  # not started yet
            found.append(rooms)
        source: ListenerSource | None = found[0].listener_source(space_id)
        return source

    return lookup
