"""What the listener rules answer (``origin/rules.py``), and the helpers both
drivers use to turn an answer into bytes: the answer types are frozen, slotted
dataclasses; nothing here does I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from starlette.responses import Response

from townhall import metrics, problems
from townhall.errors import ServiceUnavailable, TownhallError
from townhall.origin.cors import EXPOSE
from townhall.origin.fanout import ProgressiveHub
from townhall.origin.window import LiveWindow

log = logging.getLogger("townhall.access")

M3U8 = "application/vnd.apple.mpegurl"
MP4 = "audio/mp4"
AAC = "audio/aac"
IMMUTABLE = "public, max-age=31536000, immutable"
LIVE_PLAYLIST = "public, max-age=1"
BLOCKING_PLAYLIST = "public, max-age=6"
# a blocking reload released because the window closed before the asked part
# (the room moved to another node): not cached, so the player's next ask for
# that part reaches the new window instead of this answer for max-age
MOVED_PLAYLIST = "no-cache"
ENDED_PLAYLIST = "public, max-age=86400"
# Listener resources are public bytes (the link is the permission): any page
# may embed a player for them (issue 12), with cors_origins "*" (the default;
# a list of origins is written per request by origin/cors.py instead).
# Preflights are answered by the app.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": EXPOSE.decode(),
}
PROGRESSIVE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    **CORS_HEADERS,
}


# -- answers -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rendered:
    """A whole response but the server's own lines (status line, Date): the
    app's header lines ``head`` (each ending CRLF) and ``body``; ``tail`` is
    ``head + CRLF + body``, what follows the server's lines on keep-alive;
    ``count_key`` is how ``origin/request_counts.py`` counts it (made once);
    ``retry_after_s`` a 429's (or a 400's) Retry-After (0.0 otherwise: the driver pauses a
    connection that does not wait it out, origin/retry_penalty.py)."""

    status: int
    head: bytes
    body: bytes
    kind: str
    tail: bytes = field(init=False)
    count_key: str = field(init=False)
    retry_after_s: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tail", self.head + b"\r\n" + self.body)
        object.__setattr__(self, "count_key", f"{self.kind} {self.status}")
        object.__setattr__(
            self, "retry_after_s", retry_after_of(self.head) if self.status in (400, 429) else 0.0
        )

    @classmethod
    def of(cls, response: Response, kind: str) -> Rendered:
        return cls(
            response.status_code, header_lines(response.raw_headers), bytes(response.body), kind
        )

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``head`` as (name, value) pairs, for a driver that sends them apart."""
        pairs = []
        for line in self.head.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b": ")
                pairs.append((name, value))
        return pairs


@dataclass(frozen=True, slots=True)
class Wait:
    """Park until ``window`` has ``position``; then ``then()`` is the answer (a
    driver that only writes ``Rendered`` calls ``answer()``: None means "hand
    the request to the app after all"), or ``timeout()`` after ``timeout_s``."""

    window: LiveWindow
    position: tuple[int, int]
    timeout_s: float
    then: Callable[[], Answer]
    timeout: Callable[[], Rendered]

    def answer(self) -> Rendered | None:
        after = self.then()
        return after if isinstance(after, Rendered) else None


@dataclass(frozen=True, slots=True)
class Stream:
    """live.aac: write the status line and ``head`` (the app's header lines; the
    server adds Transfer-Encoding), then attach the transport to ``hub``."""

    hub: ProgressiveHub
    head: bytes


@dataclass(frozen=True, slots=True)
class Problem:
    """An error answer: ``error`` says status, sentence and Retry-After; the ASGI
    driver raises it (the app's handler renders it), others call ``render``."""

    error: TownhallError

    @property
    def status(self) -> int:
        return self.error.status

    def render(self, instance: str) -> Rendered:
        """problem+json exactly as the app's error handler renders it (and counted
        and logged the same way)."""
        error = self.error
        if error.status >= 500:
            log.log(error.log_level, "townhall error on %s: %s", instance, error.detail)
        metrics.PROBLEMS.labels(status=str(error.status)).inc()
        response = problems.problem_response(
            error.to_problem(instance),
            retry_after_s=error.retry_after_s,
            cache_control=error.cache_control,
        )
        # as origin/cors.py adds them to the app's problem+json (a player on
        # another origin reads why, and when to retry)
        response.raw_headers.extend(
            (name.lower().encode(), value.encode()) for name, value in CORS_HEADERS.items()
        )
        return Rendered.of(response, "problem")


DiskKind = Literal["playlist", "segment", "init", "latest-init", "recording"]


@dataclass(frozen=True, slots=True)
class FromDisk:
    """Read ``what`` of space ``space_id`` from its recording: ``number`` is the
    segment's msn or the init's epoch; ``plain`` / ``blocking`` / ``token``
    describe a playlist request."""

    what: DiskKind
    space_id: str
    number: int = 0
    plain: bool = False
    blocking: bool = False
    token: bytes | None = None  # a playlist request's ``t=`` (origin/token_uris.py)


Decision = Rendered | Wait | Stream | None
"""What the fast path writes itself (None: the app answers)."""

Answer = Rendered | Wait | Stream | Problem | FromDisk | None
"""Every answer of the rules (None: not a listener URL)."""


# -- helpers shared by the drivers ------------------------------------------------------


def retry_after_of(head: bytes) -> float:
    """The seconds of a ``retry-after`` line in ``head`` (lower-case names, as
    :func:`header_lines` writes them); 0.0 when absent or not a number."""
    at = head.find(b"retry-after: ")
    if at > 0 and head[at - 1] != 0x0A:  # inside another name: look for a line start
        at = head.find(b"\nretry-after: ")
        at = at + 1 if at >= 0 else -1
    if at < 0:
        return 0.0
    value = head[at + 13 : head.find(b"\r\n", at)]
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0


def header_lines(raw_headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name.lower() + b": " + value + b"\r\n" for name, value in raw_headers)


def media_response(data: bytes, media_type: str, cache: str) -> Response:
    """The response for listener bytes."""
    return Response(data, media_type=media_type, headers={"Cache-Control": cache, **CORS_HEADERS})


def progressive_head() -> list[tuple[bytes, bytes]]:
    """Headers of the live.aac response: an endless chunked body, so no
    Content-Length (Response adds 0 for no content); the server adds
    Transfer-Encoding."""
    response = Response(content=None, media_type=AAC, headers=PROGRESSIVE_HEADERS)
    return [(k, v) for k, v in response.raw_headers if k != b"content-length"]


def blocking_timeout() -> ServiceUnavailable:
    """The error of a blocking request whose part did not come in time."""
    return ServiceUnavailable(
        "The requested part is not ready yet; the stream may be stalled. Reload the playlist in a moment.",
        retry_after_s=1,
    )


def timeout_response(path: str) -> Rendered:
    """The 503 + Retry-After of a wait that timed out (counted)."""
    metrics.HLS_BLOCKING_TIMEOUTS.inc()
    return Problem(blocking_timeout()).render(path)


def playlist_cache(
    window: LiveWindow, *, blocking: bool, asked: tuple[int, int] | None = None
) -> str:
    """Cache-Control of a live playlist answer (decided after any wait;
    ``asked``: the position a blocking reload waited for)."""
    if window.ended:
        return ENDED_PLAYLIST
    if asked is not None and asked > window.position:
        return MOVED_PLAYLIST
    return BLOCKING_PLAYLIST if blocking else LIVE_PLAYLIST
